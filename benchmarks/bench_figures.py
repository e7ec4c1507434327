#!/usr/bin/env python3
"""Time every figure of the notebook's default run, as the notebook draws them (``save=`` PNGs).

Inputs are those of the default run: a trained default checkpoint, ``SAMPLES_PER_CLASS`` (100) images per
class, the four attribution maps, the cross-method statistics and ``run_validation``'s results. Computing
them takes minutes on a CPU, so they are cached (``--cache``, default ``/tmp/bench_figures_inputs.pt``).

With ``--reference REV`` the same figures are also drawn by the code of git revision ``REV`` (its own
``ksae_helpers.py`` and, since the split, its own ``ksae`` package: ``load_reference``) in the same process
(alternating, best of ``--repeats``), and the table shows the ratio.

    python benchmarks/bench_figures.py --checkpoint checkpoints/ksae_k50_....pt
    python benchmarks/bench_figures.py --checkpoint CKPT --reference HEAD~3 --out /tmp/figs
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ksae_helpers as kh  # noqa: E402

SAMPLES_PER_CLASS = 100  # the notebook's default


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="trained checkpoint (default: checkpoints/<Config().checkpoint_name()>)")
    p.add_argument("--cache", default="/tmp/bench_figures_inputs.pt", help="cache of the computed inputs")
    p.add_argument("--reference", default=None, help="git revision whose own code is timed alongside")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per figure; the minimum is reported")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: a temporary folder)")
    return p.parse_args(argv)


def notebook_inputs(checkpoint: Path, samples_per_class: int = SAMPLES_PER_CLASS) -> dict:
    """The notebook's model and explanations (CPU): ``cfg``, ``sae``, ``clf``, ``history``, ``metrics``, ``data``,
    ``pipeline``, ``selection``, the six ``maps``, decoder-weighted ``contributions`` and the agreement ``stats``."""
    device = torch.device("cpu")
    cfg, sae, clf, history, metrics = kh.load_checkpoint(checkpoint, device)
    data = kh.load_fashion_mnist("data", verbose=False)
    pipeline = kh.SparseCodePipeline(sae, clf).eval()
    sel = kh.select_high_confidence(sae, clf, data, device, samples_per_class, cfg.confidence_threshold, cfg.seed)
    gradient = [m for m in kh.METHOD_FAMILIES["gradient"] if m != "decoder"]  # the notebook's six, decoder below
    maps = kh.attribute_all(pipeline, sel.x, sel.y, cfg, methods=gradient)
    maps["decoder"], contributions = kh.decoder_weighted(pipeline, sel.x, sel.y, return_contributions=True)
    stats = kh.cross_method_statistics(maps, seed=cfg.seed, x=sel.x, labels=sel.y)
    return {"cfg": cfg, "sae": sae, "clf": clf, "history": history, "metrics": metrics, "data": data,
            "pipeline": pipeline, "selection": sel, "maps": maps, "contributions": contributions, "stats": stats}


def compute_inputs(checkpoint: Path) -> dict:
    """Everything the figures need, computed as the notebook does (CPU)."""
    inputs = notebook_inputs(checkpoint)
    cfg, pipeline, sel, metrics = inputs["cfg"], inputs["pipeline"], inputs["selection"], inputs["metrics"]
    validation = kh.run_validation(pipeline, sel, cfg, inputs["maps"], inputs["contributions"], seed=cfg.seed,
                                   cross_method=inputs["stats"])
    units = kh.unit_statistics(pipeline, inputs["data"], torch.device("cpu"),
                               usage_train=metrics["autoencoder"]["unit_usage_train"], seed=cfg.seed)
    k_sweep = ROOT / "results" / "k_sweep.json"
    perturbation = kh.attribute_all(pipeline, sel.x, sel.y, cfg, methods=kh.METHOD_FAMILIES["perturbation"])
    both = {**inputs["maps"], **perturbation}
    both_stats = kh.cross_method_statistics(both, seed=cfg.seed, x=sel.x, labels=sel.y)  # the notebook's section 7b
    family = kh.family_agreement(both, sel.x, sel.y, kh.METHOD_FAMILIES, cfg.seed)
    return {"history": inputs["history"], "metrics": metrics, "selection": sel, "maps": inputs["maps"],
            "both": both, "both_stats": both_stats, "family": family,
            "contributions": inputs["contributions"], "stats": inputs["stats"], "validation": validation,
            "units": units, "agreement": kh.contribution_ablation_agreement(units, seed=cfg.seed),
            "k_sweep": kh.read_summary(k_sweep)["rows"] if k_sweep.is_file() else []}


def load_inputs(checkpoint: Path, cache: Path) -> dict:
    if cache.exists():
        return torch.load(cache, weights_only=False)
    inputs = compute_inputs(checkpoint)
    torch.save(inputs, cache)
    return inputs


COMPARED_METHODS = ["integrated", "simple", "smoothgrad", "decoder"]  # the notebook's comparison figures


def module_units(kh_mod, units):
    """The cached ``UnitStats`` as an instance of ``kh_mod``'s own class (a reference revision's plot functions
    check ``isinstance`` against their module's ``UnitStats``, which the unpickled cache is not)."""
    if kh_mod is kh or not dataclasses.is_dataclass(getattr(kh_mod, "UnitStats", None)):
        return units
    return kh_mod.UnitStats(**{f.name: getattr(units, f.name) for f in dataclasses.fields(units)})


def figure_calls(kh_mod, inputs: dict, sae, data, folder: Path) -> dict:
    """Figure name -> zero-argument function drawing it with ``kh_mod`` exactly as the notebook does (every
    ``kh.plot_*`` call of the notebook; ``tests/test_benchmarks.py`` checks that none is missing)."""
    device = torch.device("cpu")
    p = kh_mod.figure_path_fn(folder)
    sel, maps, val, metrics, units = (inputs[k] for k in ("selection", "maps", "validation", "metrics", "units"))
    dashboard = kh.top_units_of_classes(units, ["Trouser", "Sneaker", "Bag", "Shirt"])
    units = module_units(kh_mod, units)
    calls = {
        "examples": lambda: kh_mod.plot_class_examples(data, save=p("examples")),
        "training_history": lambda: kh_mod.plot_training_history(inputs["history"], save=p("training_history")),
        "reconstructions": lambda: kh_mod.plot_reconstructions(sae, data, device, save=p("reconstructions")),
        "feature_atlas": lambda: kh_mod.plot_feature_atlas(sae, metrics["autoencoder"]["unit_usage_train"],
                                                           save=p("feature_atlas")),
        "confusion_matrix": lambda: kh_mod.plot_confusion_matrix(metrics["classifier"], data.classes,
                                                                 save=p("confusion_matrix")),
        "class_units": lambda: kh_mod.plot_class_units(inputs["contributions"], sel.y, sae, data.classes,
                                                       save=p("class_units")),
        "comparisons (10)": lambda: kh_mod.render_comparison_grid(sel, maps, data.classes, methods=COMPARED_METHODS,
                                                                  max_samples_per_class=1, save_dir=str(folder)),
        "class_average_maps": lambda: kh_mod.plot_class_average_maps(maps, sel.y, data.classes,
                                                                     methods=COMPARED_METHODS,
                                                                     save=p("class_average_maps")),
        "correlations": lambda: kh_mod.plot_correlation_summary(inputs["stats"], list(maps), save=p("correlations")),
        "faithfulness": lambda: kh_mod.plot_faithfulness(val["faithfulness"], save=p("faithfulness")),
        "unit_deletion": lambda: kh_mod.plot_unit_deletion(val["unit_deletion"], save=p("unit_deletion")),
        "completeness": lambda: kh_mod.plot_completeness(val["completeness"], save=p("completeness")),
        "randomization": lambda: kh_mod.plot_randomization(val["randomization"], save=p("randomization")),
        "object_focus": lambda: kh_mod.plot_object_focus(val["object_focus"], save=p("object_focus")),
        "k_sweep": lambda: kh_mod.plot_k_sweep(inputs["k_sweep"], save=p("k_sweep")),
        "unit_density": lambda: kh_mod.plot_firing_density(units, save=p("unit_density")),
        "unit_dashboard": lambda: kh_mod.plot_unit_dashboard(units, sae, data, dashboard, save=p("unit_dashboard")),
        "unit_agreement": lambda: kh_mod.plot_contribution_vs_ablation(units, inputs["agreement"],
                                                                       save=p("unit_agreement")),
    }
    if "both" in inputs and hasattr(kh_mod, "plot_perturbation_maps"):  # the perturbation family (section 7)
        calls["perturbation_maps"] = lambda: kh_mod.plot_perturbation_maps(sel, inputs["both"], data.classes,
                                                                           save=p("perturbation_maps"))
        calls["family_agreement"] = lambda: kh_mod.plot_family_agreement(inputs["both_stats"], inputs["family"],
                                                                         save=p("family_agreement"))
    shortcut_json = ROOT / "results" / "shortcut.json"  # sections 11 and 12 draw the committed files, as here
    if shortcut_json.is_file() and hasattr(kh_mod, "plot_shortcut_maps"):
        shortcut = kh.read_summary(shortcut_json)
        calls["shortcut_maps"] = lambda: kh_mod.plot_shortcut_maps(shortcut, save=p("shortcut_maps"))
        calls["shortcut_localisation"] = lambda: kh_mod.plot_shortcut_localisation(shortcut,
                                                                                   save=p("shortcut_localisation"))
        calls["shortcut_removal"] = lambda: kh_mod.plot_shortcut_removal(shortcut, save=p("shortcut_removal"))
    variants_json = ROOT / "results" / "variants.json"
    if variants_json.is_file() and hasattr(kh_mod, "plot_variants_frontier"):
        variants = kh.read_summary(variants_json)
        calls["variants_frontier"] = lambda: kh_mod.plot_variants_frontier(variants, save=p("variants_frontier"))
        calls["variants_stability"] = lambda: kh_mod.plot_variants_stability(variants, save=p("variants_stability"))
        calls["variants_recovery"] = lambda: kh_mod.plot_variants_recovery(variants, save=p("variants_recovery"))
    controls_json = ROOT / "results" / "controls.json"  # section 10 draws the committed file, as here
    if controls_json.is_file():
        controls = kh.read_summary(controls_json)
        calls["controls_models"] = lambda: kh_mod.plot_controls_models(controls, save=p("controls_models"))
        calls["controls_units"] = lambda: kh_mod.plot_controls_units(controls, save=p("controls_units"))
    return calls


PACKAGE = "ksae"  # the package behind the facade (since the split; before it ksae_helpers.py was all the code)


def _is_package_module(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


class _PackageRedirect(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """While a reference facade is imported: ``ksae`` and ``ksae.*`` are the reference tree's package, imported
    under ``prefix`` (the facade's absolute ``from ksae.x import ...``; the package itself imports relatively)."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if _is_package_module(name) else None

    def create_module(self, spec):
        return None  # a blank module, replaced in exec_module

    def exec_module(self, module):
        # the import system returns what sys.modules holds under the name once this returns: the aliased module
        sys.modules[module.__name__] = importlib.import_module(self.prefix + module.__name__)


def extract_tree(rev: str, root: str | Path = ROOT) -> tuple[str, Path]:
    """``(commit, folder)``: git revision ``rev``'s whole tree (``git archive``) in a temporary folder, removed
    when this process exits."""
    def git(*args) -> bytes:
        return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True).stdout

    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    folder = Path(tempfile.mkdtemp(prefix=f"ksae_reference_{commit[:12]}_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(git("archive", "--format=tar", commit))) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12, backported to 3.9.17+/3.10.12+/3.11.4+
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder)
    return commit, folder


def load_reference(rev: str, root: str | Path = ROOT):
    """``ksae_helpers`` as of git revision ``rev`` of the repository at ``root``: that revision's own code.

    The revision's whole tree is extracted (``git archive``) into a temporary folder (kept until this process
    exits: templates are read and modules may be imported when a function runs) and imported as the package
    ``ksae_reference_<commit>_<n>``: its facade as ``<that>.ksae_helpers`` and its ``ksae`` package (since the
    split; a revision before it has none) as ``<that>.ksae``, so nothing of the working tree's ``ksae`` leaks into
    it. Functions and classes keep referring to those modules, which stay in ``sys.modules`` under those names
    (dataclasses look their module up while a class is built; forked figure workers unpickle functions by
    name). The working tree's ``ksae`` modules are out of ``sys.modules`` only while the facade is imported and
    are exactly as before when this returns."""
    commit, folder = extract_tree(rev, root)
    if not (folder / "ksae_helpers.py").is_file():
        raise FileNotFoundError(f"revision {rev} ({commit[:12]}) has no ksae_helpers.py")
    n = 0
    while f"ksae_reference_{commit[:12]}_{n}" in sys.modules:
        n += 1
    name = f"ksae_reference_{commit[:12]}_{n}"
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]  # its submodules are the tree's top-level files and folders
    sys.modules[name] = importlib.util.module_from_spec(spec)
    current = {key: module for key, module in sys.modules.items() if _is_package_module(key)}
    redirect = _PackageRedirect(name + ".")
    for key in current:
        del sys.modules[key]
    sys.meta_path.insert(0, redirect)
    try:
        return importlib.import_module(name + ".ksae_helpers")
    except BaseException:
        for key in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            del sys.modules[key]
        raise
    finally:
        sys.meta_path.remove(redirect)
        for key in [key for key in sys.modules if _is_package_module(key)]:  # the reference's, under ksae.*
            del sys.modules[key]
        sys.modules.update(current)


def timed(fn) -> float:
    """Seconds ``fn`` takes; NaN if it needs a function the timed version of ``ksae_helpers`` lacks."""
    t0 = time.perf_counter()
    try:
        fn()
    except (AttributeError, TypeError):  # an older reference revision without this figure (or argument)
        return float("nan")
    return time.perf_counter() - t0


def main(argv=None):
    args = parse_args(argv)
    checkpoint = Path(args.checkpoint or ROOT / "checkpoints" / kh.Config().checkpoint_name())
    inputs = load_inputs(checkpoint, Path(args.cache))
    _, sae, _, _, _ = kh.load_checkpoint(checkpoint, "cpu")
    data = kh.load_fashion_mnist("data", verbose=False)
    out = Path(args.out or tempfile.mkdtemp())
    versions = {"current": (kh, out)}
    if args.reference:
        versions["reference"] = (load_reference(args.reference), out / "reference")
    calls = {v: figure_calls(mod, inputs, sae, data, folder) for v, (mod, folder) in versions.items()}
    for v in calls:  # warm-up: fonts, colour maps, seaborn styles
        calls[v]["object_focus"]()
    best = {v: {name: float("inf") for name in calls[v]} for v in calls}
    for _ in range(args.repeats):
        for name in calls["current"]:
            for v in calls:
                t = timed(calls[v][name])
                best[v][name] = t if t != t or t < best[v][name] else best[v][name]  # NaN: not in that version
    print("| figure | current (s) |" + (" reference (s) | ratio |" if args.reference else ""))
    print("|---|---:|" + ("---:|---:|" if args.reference else ""))
    for name in calls["current"]:
        row = f"| {name} | {best['current'][name]:.2f} |"
        if args.reference:
            row += f" {best['reference'][name]:.2f} | {best['reference'][name] / best['current'][name]:.1f}x |"
        print(row)
    totals = {v: sum(t for t in best[v].values() if t == t) for v in best}  # figures the version has
    print(f"| **total** | {totals['current']:.2f} |" + (
        f" {totals['reference']:.2f} | {totals['reference'] / totals['current']:.1f}x |" if args.reference else ""))
    sizes = sorted(out.glob("*.png"))
    print(f"PNGs in {out}: {len(sizes)} files, {sum(p.stat().st_size for p in sizes) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
