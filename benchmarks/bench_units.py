"""Seconds for the unit atlas against the issue's targets: all unit statistics for every unit <= 15 s and
writing the HTML unit browser <= 10 s (2-core CPU, default model), plus each of its figures (< 1.5 s).

Run from the repository root with a trained default checkpoint (the notebook's, or any ``kh.save_checkpoint``):

    .venv/bin/python benchmarks/bench_units.py --checkpoint checkpoints/<name>.pt --out /tmp/units
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ksae_helpers as kh  # noqa: E402

TARGETS_S = {"unit_statistics": 15.0, "write_unit_browser": 10.0}  # the limits
FIGURE_TARGET_S = 1.5


def best_of(repeats: int, fn):
    """(best seconds, last result) of ``repeats`` calls of ``fn``."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by kh.save_checkpoint")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of each step (best is reported)")
    parser.add_argument("--out", default="", help="folder for the page and figures (default: a temp folder)")
    args = parser.parse_args()
    device = torch.device("cpu")
    data = kh.load_fashion_mnist("data", verbose=False)
    _, sae, clf, _, _ = kh.load_checkpoint(args.checkpoint, device)
    pipeline = kh.SparseCodePipeline(sae, clf).eval()
    out = Path(args.out or tempfile.mkdtemp())
    rows = {}
    rows["unit_statistics"], stats = best_of(args.repeats, lambda: kh.unit_statistics(pipeline, data, device))
    page = out / "unit_browser.html"
    rows["write_unit_browser"], _ = best_of(args.repeats, lambda: kh.write_unit_browser(stats, sae, data, page))
    units = kh.top_units_of_classes(stats, ["Trouser", "Sneaker", "Bag", "Shirt"])
    figures = {"firing_density": lambda: kh.plot_firing_density(stats, save=out / "unit_density.png"),
               "unit_dashboard (4 units)": lambda: kh.plot_unit_dashboard(stats, sae, data, units,
                                                                          save=out / "unit_dashboard.png"),
               "contribution_vs_ablation": lambda: kh.plot_contribution_vs_ablation(
                   stats, save=out / "unit_agreement.png")}
    for name, fn in figures.items():
        rows[name], _ = best_of(args.repeats, fn)
    print(f"torch threads {torch.get_num_threads()}; page {page.stat().st_size / 2**20:.2f} MiB at {page}")
    for name, seconds in rows.items():
        target = TARGETS_S.get(name, FIGURE_TARGET_S)
        print(f"{name:<28} {seconds:7.2f} s  (target <= {target:g} s: {'met' if seconds <= target else 'MISSED'})")
    print("agreement:", kh.contribution_ablation_agreement(stats))


if __name__ == "__main__":
    main()
