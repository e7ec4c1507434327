#!/usr/bin/env python3
"""Run All and ``import ksae_helpers``: today's tree against git revision ``REV``'s own tree, in one run.

Each version runs the notebook headless (papermill, in its own tree, on its own code) with the same data, the
same checkpoint folder (``--checkpoints``; cached models are reused, so this is "Run All, cached"; with
``--scratch`` every run trains into an empty folder) and its figures and summary in a temporary folder; the
versions alternate and the best of ``--repeats`` wall times counts. The import is timed the same way in fresh
processes. The table shows the ratio reference / current (above 1: today's code is faster).

    python benchmarks/bench_runall.py --reference 07ecf4b                       # cached Run All + import
    python benchmarks/bench_runall.py --reference 07ecf4b --scratch -p AE_EPOCHS 2 -p CLF_EPOCHS 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_figures import extract_tree  # noqa: E402

NOTEBOOK = "fashion_mnist_interpretability.ipynb"
IMPORT = "import time; t = time.perf_counter(); import ksae_helpers; print(time.perf_counter() - t)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="git revision whose own tree is timed alongside")
    p.add_argument("--repeats", type=int, default=2, help="runs per version; the minimum is reported")
    p.add_argument("--imports", type=int, default=5, help="timed imports per version; the minimum is reported")
    p.add_argument("--checkpoints", default=str(ROOT / "checkpoints"), help="checkpoint folder both versions use")
    p.add_argument("--scratch", action="store_true", help="train every run into an empty checkpoint folder")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter for both versions (papermill -p)")
    p.add_argument("--json", default=None, help="also write the result here")
    return p.parse_args(argv)


def _env(tree: Path) -> dict:
    """The environment of a run of ``tree``: its own code first on the import path."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def import_seconds(tree: Path) -> float:
    """Seconds to import ``ksae_helpers`` from ``tree`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", IMPORT], cwd=tree, env=_env(tree), check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def run_all_seconds(tree: Path, checkpoints: Path, parameters: list) -> tuple[float, float]:
    """(wall seconds of the papermill process, the summary's own ``timings_s.total``) for one Run All of
    ``tree``'s notebook; figures and summary go to a temporary folder."""
    with tempfile.TemporaryDirectory() as out:
        params = [("CHECKPOINT_DIR", str(checkpoints)), ("FIGURE_DIR", f"{out}/figures"),
                  ("SUMMARY_PATH", f"{out}/summary.json"), *parameters]
        command = [sys.executable, "-m", "papermill", NOTEBOOK, f"{out}/run.ipynb", "--cwd", str(tree), "-k",
                   "python3", "--log-level", "WARNING"]
        for name, value in params:
            command += ["-p", name, value]
        t0 = time.perf_counter()
        subprocess.run(command, cwd=tree, env=_env(tree), check=True, capture_output=True)
        wall = time.perf_counter() - t0
        total = json.loads(Path(f"{out}/summary.json").read_text())["timings_s"]["total"]
    return wall, total


def main(argv=None) -> dict:
    args = parse_args(argv)
    _, reference = extract_tree(args.reference, ROOT)
    trees = {"current": ROOT, "reference": reference}
    result = {"reference": args.reference, "scratch": args.scratch, "parameters": args.parameter,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "created": time.strftime("%Y-%m-%d"),
              "import": {v: min(import_seconds(t) for _ in range(args.imports)) for v, t in trees.items()}}
    runs = {v: [] for v in trees}
    for _ in range(args.repeats):
        for version, tree in trees.items():
            with tempfile.TemporaryDirectory(prefix="bench_runall_ckpt_") as empty:  # --scratch trains into it
                folder = Path(empty if args.scratch else args.checkpoints).resolve()
                runs[version].append(run_all_seconds(tree, folder, args.parameter))
    result["run_all_wall"] = {v: min(w for w, _ in r) for v, r in runs.items()}
    result["run_all_kernel"] = {v: min(t for _, t in r) for v, r in runs.items()}
    print(f"reference {args.reference}; {'from scratch' if args.scratch else 'cached'}; best of {args.repeats}")
    print("| | current (s) | reference (s) | reference / current |")
    print("|---|---:|---:|---:|")
    for key in ("import", "run_all_wall", "run_all_kernel"):
        cur, ref = result[key]["current"], result[key]["reference"]
        result[key]["ratio"] = ref / cur
        print(f"| {key} | {cur:.2f} | {ref:.2f} | {ref / cur:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
