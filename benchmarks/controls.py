"""Controls for the code, run for real: what sparsity buys (``ksae_helpers.run_controls``).

Six representations, each with its own classifier trained with the default recipe on the training split: the
trained top-k SAE (the default checkpoint, loaded), raw pixels, PCA with k components, the top-k codes of the
SAE's untrained initialisation, a dense ReLU autoencoder of the same width, and the SAE with a classifier trained
on shuffled labels. Per representation: accuracy, FVU, L0, dead units; the pixel explanations' faithfulness,
randomization, object focus and sparseness on one common image set; unit claims against the controls. Control
models are cached in ``checkpoints/`` (``control_<name>_<config>.pt``), so a rerun only measures. Writes
``results/controls.json``; the notebook's section 10 and docs/results.md draw from that file. From the repository
root:

    .venv/bin/python benchmarks/controls.py       # default configuration: ~25 min on 2 CPU cores, cached: minutes
    .venv/bin/python benchmarks/controls.py --tiny --ckpt-dir /tmp/c --out /tmp/controls.json   # CI: seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ksae_helpers as kh  # noqa: E402

TINY = dict(k=4, d_hidden=32, clf_hidden=(16, 8), train_subset=600, ae_epochs=2, clf_epochs=10, n_val=500,
            batch_size=64, lr=5e-3, ig_steps=4, confidence_threshold=0.1)  # CI's configuration: every stage runs in
# seconds; its models learn little, so "confident" is any correct prediction (its untrained control rarely passes 0.2)
TINY_SIZES = dict(n_per_class=2, n_subset=8, n_randomization=6, n_unit_images=8)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CI's tiny configuration (trains its own SAE too)")
    parser.add_argument("--representations", nargs="+", default=None, help=f"subset of {kh.REPRESENTATIONS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-per-class", type=int, default=100, help="explained test images per class")
    parser.add_argument("--n-subset", type=int, default=300, help="images of the blur and ROAD substrates")
    parser.add_argument("--n-randomization", type=int, default=100, help="images of the randomization check")
    parser.add_argument("--n-unit-images", type=int, default=500, help="images of the unit-deletion gaps")
    parser.add_argument("--train-sae", action="store_true", help="train the SAE (and the other seeds' SAEs of the "
                        "stability study) if a checkpoint is missing")
    parser.add_argument("--stability-seeds", type=int, nargs="*", default=None,
                        help="training seeds whose dictionaries are matched to --seed's (default: it and the next "
                             "two; none: skip the stability study)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: kh.pick_device())")
    parser.add_argument("--ckpt-dir", default="checkpoints")
    parser.add_argument("--out", default="results/controls.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else kh.pick_device(verbose=False)
    cfg = kh.Config(**(TINY if args.tiny else {}), seed=args.seed)
    sizes = TINY_SIZES if args.tiny else dict(n_per_class=args.n_per_class, n_subset=args.n_subset,
                                              n_randomization=args.n_randomization, n_unit_images=args.n_unit_images)
    data = kh.load_fashion_mnist("data", verbose=False)
    t0 = time.perf_counter()
    result = kh.run_controls(data, cfg, device, args.representations, args.ckpt_dir, train_sae=args.tiny or
                             args.train_sae, stability_seeds=args.stability_seeds, **sizes)
    result["wall_seconds"] = time.perf_counter() - t0
    kh.atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    for name, row in result["models"].items():
        fvu = "—" if row["fvu"] is None else f"{row['fvu']:.4f}"
        print(f"{name:>10}: test acc {100 * row['test_accuracy']:.2f} %  val acc {100 * row['val_accuracy']:.2f} %  "
              f"FVU {fvu}  L0 {row['mean_l0']:.1f}  dead {row['dead_units']}")
    for claim, c in result["claims"].items():
        print(f"claim {claim}: {'held' if c['held'] else 'not held'}")
    if result["stability"]:
        st = result["stability"]
        print(f"seed stability: {100 * st['share_stable']:.2f} % of units recur (cosine >= {st['threshold']}) in seeds "
              f"{st['seeds']}; untrained control {100 * st['control']['share_stable']:.2f} %")
    print(f"wall {result['wall_seconds']:.0f} s; stages: " +
          ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()))
    return result


if __name__ == "__main__":
    main()
