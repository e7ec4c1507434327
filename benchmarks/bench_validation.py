#!/usr/bin/env python3
"""Time the validation suite on the default run's inputs, and the previous round's validation content.

Issue 10 asks for the validation "at today's content" (the checks of the code it was filed against, 22-27 s on
this CPU then) in <= 10 s, and for the whole suite in <= 75 s. On the default run's inputs (the trained default
checkpoint, ``--samples-per-class`` confident correct test images per class, the six attribution maps) this
times, in one process:

* ``suite``: ``run_validation`` as the notebook calls it, each check's seconds;
* ``previous content``: the previous round's checks run by today's functions -- zero-substrate deletion and
  insertion (MoRF and LeRF; insertion is LeRF read backwards) of integrated gradients, gradient, SmoothGrad
  and decoder-weighted (signed) and the random, intensity and edge controls on every image; object focus of
  those four maps; IG completeness at 16..500 steps (Gauss-Legendre and trapezoid) and the path switches (256
  points) on ``N_COMPLETENESS`` images; the cascading randomization on ``N_RANDOMIZATION`` images;
* with ``--reference REV`` (default ``13a4d9a``, the code issue 10 was filed against; ``none`` skips it):
  that revision's ``run_validation`` on the same weights, images and the same four maps.

Wall seconds, best of ``--repeats``; the previous content's ratio reference / current.

    python benchmarks/bench_validation.py
    python benchmarks/bench_validation.py --reference none --repeats 1 --json /tmp/validation_times.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_figures import load_reference, notebook_inputs  # noqa: E402

import ksae._util  # noqa: E402
import ksae_helpers as kh  # noqa: E402

PREVIOUS_METHODS = ("integrated", "simple", "smoothgrad", "decoder")  # the maps the previous round validated
PREVIOUS_CONTROLS = ("random", "intensity", "edges")  # its control orders
PREVIOUS_STEPS = (16, 32, 50, 100, 200, 500)  # its IG completeness sweep
PREVIOUS_SWITCH_POINTS = 256  # its path-switch scan (points on the straight path)
N_COMPLETENESS, N_RANDOMIZATION = 200, 100  # the notebook's subsets (then and now)
ISSUE_REVISION = "13a4d9a"  # the last commit before issue 10's round


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="trained checkpoint (default: checkpoints/<Config().checkpoint_name()>)")
    p.add_argument("--samples-per-class", type=int, default=100, help="images per class (default 100, the notebook's)")
    p.add_argument("--reference", default=ISSUE_REVISION,
                   help=f"git revision whose run_validation is timed too (default {ISSUE_REVISION}; 'none': skip)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each part; the minimum is reported")
    p.add_argument("--json", default=None, help="also write the timings to this JSON file")
    return p.parse_args(argv)


def suite_seconds(inputs: dict) -> dict[str, float]:
    """``run_validation`` as the notebook calls it -> its per-check seconds (and ``total``)."""
    cfg = inputs["cfg"]
    result = kh.run_validation(inputs["pipeline"], inputs["selection"], cfg, inputs["maps"], inputs["contributions"],
                               n_completeness=N_COMPLETENESS, n_randomization=N_RANDOMIZATION, seed=cfg.seed,
                               cross_method=inputs["stats"])
    return result["seconds"]


def previous_content_seconds(inputs: dict) -> dict[str, float]:
    """The previous round's checks with today's functions -> seconds per check (and ``total``)."""
    cfg, pipeline, sel = inputs["cfg"], inputs["pipeline"], inputs["selection"]
    x, y, seed = sel.x, sel.y, cfg.seed
    maps = {m: inputs["maps"][m] for m in PREVIOUS_METHODS}
    sub_c = torch.linspace(0, len(x) - 1, min(N_COMPLETENESS, len(x))).long()
    sub_r = torch.linspace(0, len(x) - 1, min(N_RANDOMIZATION, len(x))).long()

    def deletion_insertion():
        orderings = kh.faithfulness_orderings(maps, x, seed)
        keys = [f"{m}/signed" for m in PREVIOUS_METHODS] + list(PREVIOUS_CONTROLS)
        morf = torch.stack([kh.removal_order(orderings[key]["scores"], seed) for key in keys])
        return kh.removal_curves(pipeline, x, y, torch.cat([morf, morf.flip(-1)]), "zero", seed=seed)

    checks = {
        "deletion_insertion": deletion_insertion,
        "object_focus": lambda: kh.object_focus(maps, x, seed),
        "completeness": lambda: (kh.ig_completeness(pipeline, x[sub_c], y[sub_c], PREVIOUS_STEPS),
                                 kh.count_path_switches(pipeline.sae, x[sub_c], PREVIOUS_SWITCH_POINTS)),
        "randomization": lambda: kh.randomization_check(pipeline, x[sub_r], y[sub_r], cfg, PREVIOUS_METHODS, seed,
                                                        variants=("cascading",)),
    }
    return kh.timed_checks(checks)[1]


def reference_seconds(module, inputs: dict) -> float:
    """``module.run_validation`` (``load_reference``: an older revision's own code) on the same weights, images
    and four maps."""
    cfg = module.Config()
    build = getattr(module.KSparseAutoencoder, "from_config", None)  # revisions before it: config=
    sae = build(cfg) if build else module.KSparseAutoencoder(config=cfg)
    sae.load_state_dict(inputs["sae"].state_dict())
    clf = module.SparseCodeClassifier.from_config(cfg)
    clf.load_state_dict(inputs["clf"].state_dict())
    pipeline = module.SparseCodePipeline(sae, clf).eval()
    sel = inputs["selection"]
    selection = module.Selection(sel.indices, sel.x, sel.y, sel.confidence)
    maps = {m: inputs["maps"][m] for m in PREVIOUS_METHODS}
    t0 = time.perf_counter()
    module.run_validation(pipeline, selection, cfg, maps, seed=cfg.seed)
    return time.perf_counter() - t0


def best_of(repeats: int, fn) -> dict[str, float]:
    """Per-key minimum over ``repeats`` calls of ``fn() -> {name: seconds}``."""
    runs = [fn() for _ in range(repeats)]
    return {key: min(run[key] for run in runs) for key in runs[0]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    ksae._util._check_int("repeats", args.repeats, low=1)
    ksae._util._check_int("samples-per-class", args.samples_per_class, low=1)
    checkpoint = Path(args.checkpoint or ROOT / "checkpoints" / kh.Config().checkpoint_name())
    inputs = notebook_inputs(checkpoint, args.samples_per_class)
    reference = None if args.reference.lower() == "none" else load_reference(args.reference)
    result = {"n_images": len(inputs["selection"].y), "device": kh.device_name(torch.device("cpu")),
              "suite": best_of(args.repeats, lambda: suite_seconds(inputs)),
              "previous_content": best_of(args.repeats, lambda: previous_content_seconds(inputs))}
    if reference is not None:
        result["reference"] = {"revision": args.reference, **best_of(
            args.repeats, lambda: {"total": reference_seconds(reference, inputs)})}
        result["ratio"] = result["reference"]["total"] / result["previous_content"]["total"]
    print(f"{result['n_images']} images, {result['device']}; wall seconds, best of {args.repeats}")
    for part in ("suite", "previous_content"):
        print(f"| {part} | " + " | ".join(f"{k} {v:.2f}" for k, v in result[part].items()) + " |")
    if reference is not None:
        print(f"| previous content, code of {args.reference} | total {result['reference']['total']:.2f} | "
              f"ratio {result['ratio']:.2f}x |")
    if args.json:
        kh.atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())
    return result


if __name__ == "__main__":
    main()
