"""Which verdicts about the attribution methods survive a change of training seed?

For every seed: train (or load from ``checkpoints/``) the default models with that seed, select confident
correct test images (the same rule as the notebook), compute every attribution method (both families, each
timed), run the whole validation suite (``ksae_helpers.run_validation``) and read its verdicts (``verdict_table``).
Writes ``results/verdicts_across_seeds.json``: per seed the value, pass/fail and rank of every method x test, the
orderings by deletion gap per substrate (``rankings``) and the families' agreement (``agreement``,
``family_agreement``), and per method x test whether pass/fail and rank are the same in every seed, plus
``verdict_statements`` (what holds everywhere, what fails everywhere, where it flips). The notebook's verdict
table, README's findings, docs/results.md and its perturbation section (``ksae.perturbation_report``) read this file.
Run from the repository root (on 2 CPU cores: ~5 minutes per seed to train, ~5 minutes to validate):

    .venv/bin/python benchmarks/verdicts_across_seeds.py                  # seeds 0 1 2, default recipe
    .venv/bin/python benchmarks/verdicts_across_seeds.py --seeds 0 1 --train-subset 600 --epochs 1 1 --n-per-class 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ksae._util  # noqa: E402
import ksae_helpers as kh  # noqa: E402


def verdicts_for_seed(cfg: kh.Config, data: kh.FashionMNIST, device: torch.device, args) -> dict:
    """Train or load ``cfg``'s models, validate them on confident correct test images, return the verdicts."""
    sae, clf, _, metrics = kh.load_or_train(cfg, data, device, args.ckpt_dir)
    pipeline = kh.SparseCodePipeline(sae, clf).eval()
    sel = kh.select_high_confidence(sae, clf, data, device, args.n_per_class, cfg.confidence_threshold, cfg.seed)
    x, y = sel.x.to(device), sel.y.to(device)
    t0 = time.perf_counter()
    maps, attribution_seconds = {}, {}
    for method in kh.METHOD_LABELS:  # one at a time, timed (each map is the one attribute_all computes with all)
        t = time.perf_counter()
        maps.update(kh.attribute_all(pipeline, x, y, cfg, [method]))
        attribution_seconds[method] = time.perf_counter() - t
    _, contributions = kh.decoder_weighted(pipeline, x, y, return_contributions=True)
    validation = kh.run_validation(pipeline, sel, cfg, maps, contributions, n_subset=args.n_subset,
                                   n_completeness=args.n_completeness, n_randomization=args.n_randomization,
                                   seed=cfg.seed)
    faith = validation["faithfulness"]["substrates"]
    return {"test_accuracy": metrics["classifier"]["test_accuracy"], "fvu": metrics["autoencoder"]["fvu"],
            "n_images": len(y), "seconds": time.perf_counter() - t0, "attribution_seconds": attribution_seconds,
            "check_seconds": validation["seconds"], "rows": kh.verdict_table(validation),
            "rankings": {sub: faith[sub]["ranking"] for sub in faith},  # orderings and controls by gap, largest first
            "agreement": validation.get("family_agreement")}


def stability(per_seed: dict) -> list[dict]:
    """Per (ordering, test): pass/fail and rank in every seed, and whether each is the same in all."""
    table: dict[tuple, dict] = {}
    for seed, result in per_seed.items():
        for r in result["rows"]:
            entry = table.setdefault((r["ordering"], r["test"]), {"ordering": r["ordering"], "test": r["test"],
                                                                   "passes": {}, "rank": {}, "value": {}})
            entry["passes"][seed], entry["rank"][seed], entry["value"][seed] = r["passes"], r["rank"], r["value"]
    for e in table.values():
        e["stable"] = len(set(e["passes"].values())) == 1 and len(e["passes"]) == len(per_seed)
        e["rank_stable"] = len(set(e["rank"].values())) == 1
    return list(table.values())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs=2, default=None, metavar=("AE", "CLF"))
    parser.add_argument("--train-subset", type=int, default=0)
    parser.add_argument("--n-per-class", type=int, default=100, help="explained test images per class")
    parser.add_argument("--threshold", type=float, default=kh.Config.confidence_threshold,
                        help="explain correct predictions above this softmax confidence")
    parser.add_argument("--n-subset", type=int, default=300, help="images for the blur and ROAD substrates")
    parser.add_argument("--n-completeness", type=int, default=200)
    parser.add_argument("--n-randomization", type=int, default=100)
    parser.add_argument("--device", default=None)
    parser.add_argument("--ckpt-dir", default="checkpoints")
    parser.add_argument("--out", default="results/verdicts_across_seeds.json")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error("--seeds needs at least two different seeds")
    device = torch.device(args.device) if args.device else kh.pick_device()
    epochs = {} if args.epochs is None else {"ae_epochs": args.epochs[0], "clf_epochs": args.epochs[1]}
    configs = {s: kh.Config(seed=s, train_subset=args.train_subset, confidence_threshold=args.threshold,
                            **epochs) for s in args.seeds}  # checked first
    data = kh.load_fashion_mnist("data", verbose=False)
    per_seed = {}
    for seed, cfg in configs.items():
        per_seed[seed] = verdicts_for_seed(cfg, data, device, args)
        print(f"seed {seed}: accuracy {100 * per_seed[seed]['test_accuracy']:.2f} %, "
              f"validation {per_seed[seed]['seconds']:.0f} s", flush=True)
    result = {"device": kh.device_name(device), "config": {**configs[args.seeds[0]].to_dict(), "seed": None},
              "seeds": args.seeds, "n_per_class": args.n_per_class, "per_seed": per_seed,
              "stability": stability(per_seed),
              "statements": kh.verdict_statements({s: r["rows"] for s, r in per_seed.items()})}
    result = ksae._util._jsonable(result)
    kh.atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    for kind in ("holds", "fails", "flips"):
        print(f"\n{kind}:\n  " + "\n  ".join(result["statements"][kind]))
    return result


if __name__ == "__main__":
    main()
