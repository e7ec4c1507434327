"""Which sparse autoencoder? Every autoencoder kind on one frontier, its units' recurrence across training seeds,
and its recovery of a planted dictionary (``ksae_helpers.run_variants``).

Every model is cached in ``--ckpt-dir`` as soon as it is trained (a pair under the name ``load_or_train`` gives it:
the default pair *is* the default checkpoint; an autoencoder alone as ``ae_<name>``; planted-data models with their
data's tag), so a stopped run resumes where it stopped and a rerun only measures. Writes ``results/variants.json``;
the notebook's section "Which sparse autoencoder?" and docs/results.md draw from that file. From the repository root:

    .venv/bin/python benchmarks/variants.py                  # default configuration (about two hours on 2 CPU cores)
    .venv/bin/python benchmarks/variants.py --tiny --ckpt-dir /tmp/v --out /tmp/variants.json   # CI: a minute
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

TINY = dict(k=4, d_hidden=64, clf_hidden=(16, 8), train_subset=600, ae_epochs=2, clf_epochs=2, n_val=500,
            batch_size=64, lr=5e-3, ig_steps=4, smoothgrad_samples=2, confidence_threshold=0.1)  # CI: every stage
# runs in seconds; the models learn little
TINY_TARGETS = (2, 4, 8)
TINY_PLANTED = dict(n_atoms=32, mean_l0=4.0, n_train=600, n_test=200)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CI's tiny configuration")
    parser.add_argument("--kinds", nargs="+", default=None, help="autoencoder kinds (default: every kind)")
    parser.add_argument("--targets", type=int, nargs="+", default=None, help="mean L0 of the frontier's models")
    parser.add_argument("--coherences", nargs="*", default=None, help="planted-dictionary coherences (none: skip)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: kh.pick_device())")
    parser.add_argument("--ckpt-dir", default="checkpoints")
    parser.add_argument("--out", default="results/variants.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else kh.pick_device(verbose=False)
    cfg = kh.Config(**(TINY if args.tiny else {}))
    targets = args.targets or (TINY_TARGETS if args.tiny else None)
    coherences = tuple(kh.PLANTED_COHERENCES) if args.coherences is None else tuple(args.coherences)
    data = kh.load_fashion_mnist("data", verbose=False)
    t0 = time.perf_counter()
    result = kh.run_variants(data, cfg, device, args.ckpt_dir, kinds=args.kinds, targets=targets,
                             planted=TINY_PLANTED if args.tiny else None, coherences=coherences)
    result["wall_seconds"] = time.perf_counter() - t0
    kh.atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    for kind, rows in result["frontier"].items():
        for target, row in rows.items():
            acc = f"  head {100 * row['accuracy']:.2f} %" if "accuracy" in row else ""
            print(f"{kind:>10} L0~{target:>3}: {row['knob']['knob']}={row['knob']['value']:.4g}  val L0 "
                  f"{row['val_l0']:.1f}  test L0 {row['test_l0']:.1f}  FVU {row['fvu']:.4f}  dead {row['dead_units']}  "
                  f"dense {row['dense_units']}  recovered {100 * row['accuracy_recovered']:.1f} %{acc}")
    for name, st in result["stability"].items():
        s = st["trained"]["statistics"]
        print(f"recurrence {name:>16}: shared {100 * s['shared']['mean']:.2f} %  decoder>=0.9 "
              f"{100 * s['decoder>=0.9']['mean']:.2f} %  median lowest cosine {s['median_decoder']['mean']:.3f}")
    for coherence, entry in result["planted"].items():
        for kind, row in entry["kinds"].items():
            rec = row["recovery"]
            print(f"planted {coherence:>10} {kind:>10}: MCC {rec['mcc']:.3f} (data samples {rec['baseline_mcc']:.3f}) "
                  f"F1 {rec['f1_mean']:.3f} dead {rec['dead_units']}")
    print(f"wall {result['wall_seconds']:.0f} s; stages: " +
          ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()))
    return result


if __name__ == "__main__":
    main()
