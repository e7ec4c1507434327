"""The sparsity sweep, run for real: one model pair per k with the default recipe (or the given epochs).

For every k: test FVU, validation FVU, dead units, mean L0, test and validation accuracy, training seconds,
and the zero-substrate deletion AUC of integrated gradients, decoder-weighted and a random order on
confident correct test images (``ksae_helpers.run_k_sweep``). Models are cached in ``checkpoints/`` under their
configuration's name, so a rerun only measures. Writes ``results/k_sweep.json``; the notebook's section 8 and
docs/results.md draw from that file. Run from the repository root:

    .venv/bin/python benchmarks/k_sweep.py                                # k = 5..200, default epochs (~30 min CPU)
    .venv/bin/python benchmarks/k_sweep.py --ks 8 16 --epochs 1 1 --train-subset 1000 --out /tmp/k.json
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

DEFAULT_KS = (5, 10, 20, 50, 100, 200)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="values of k to train")
    parser.add_argument("--epochs", type=int, nargs=2, default=None, metavar=("AE", "CLF"),
                        help="autoencoder and classifier epochs (default: the Config's)")
    parser.add_argument("--train-subset", type=int, default=0, help="train on the first N images (0 = all)")
    parser.add_argument("--n-per-class", type=int, default=20, help="explained test images per class")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: kh.pick_device())")
    parser.add_argument("--ckpt-dir", default="checkpoints")
    parser.add_argument("--out", default="results/k_sweep.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else kh.pick_device()
    cfg = kh.Config(train_subset=args.train_subset)
    data = kh.load_fashion_mnist("data", verbose=False)
    t0 = time.perf_counter()
    rows = kh.run_k_sweep(data, cfg, device, args.ks, args.epochs, args.ckpt_dir, args.n_per_class)
    result = {"device": kh.device_name(device), "config": {**cfg.to_dict(), "k": None},
              "epochs": list(args.epochs) if args.epochs else [cfg.ae_epochs, cfg.clf_epochs],
              "seconds": time.perf_counter() - t0, "rows": rows}
    kh.atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    for r in rows:
        print(f"k={r['k']:>4}  FVU {r['fvu']:.4f}  dead {r['dead_units']:>4}  L0 {r['mean_l0']:6.1f}  "
              f"acc {100 * r['test_accuracy']:.2f} %  deletion AUC IG {r['deletion_auc_integrated']:.3f} "
              f"decoder {r['deletion_auc_decoder']:.3f} random {r['deletion_auc_random']:.3f}  "
              f"train {r['train_seconds']['ae'] or 0:.0f}+{r['train_seconds']['clf'] or 0:.0f} s")
    return result


if __name__ == "__main__":
    main()
