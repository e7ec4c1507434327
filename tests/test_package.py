"""The package behind the facade: ``ksae_helpers.py`` only re-exports, modules stay small, and the split of the
old single module into ``ksae/`` was a move, not a rewrite (each moved definition is unchanged, line numbers
aside, against the pre-split revision)."""

import ast
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ksae_helpers as kh

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ksae"
PRE_SPLIT = "07ecf4b"  # the last revision with the whole implementation in ksae_helpers.py
FINGERPRINTS = Path(__file__).parent / "data" / "pre_split_fingerprints.json"
MAX_MODULE_LINES = 600
MAX_FACADE_LINES = 320  # grows only with the public API (the table of contents, the re-exports); never logic
PROTOCOL = {"readme_bullet"}  # a function every study's report module defines under this name (the README finding,
# looked up per module by the docs command): not re-exported, may be defined once per module
COMMANDS = {"docs.py"}  # modules run as commands (python -m ksae.docs): not the notebook's API, not re-exported

# Top-level definitions of the pre-split module that were changed on purpose after the move, and why. Every
# other definition must be found in the package unchanged. The test also fails if a name here is unchanged.
_STATE = "no process-wide state: figure timings in a caller-owned Stopwatch, layout an argument, workers by pipes"
_BUILD = "both models built from the config one way (from_config); no silently ignored config argument"
_FVU = "one fvu() for every reconstruction error"
_DORMANT = "AuxK's units are 'dormant' (dead = fires on no image); static= is graph_safe="
_LABELS = "one label validator (_check_labels) instead of two copies"
_KEYS = "completeness tables keyed by str in memory too: the same shape before and after JSON"
_X_INPUT = "attribute_all returns unit contributions on request; one definition of the x-input maps"
_BAD_INPUT = "issue 24: bad input refused at the entry point (pixel range, NaN, model, paths by location, sizes)"
_UNDEFINED = "issue 24: degenerate maps give undefined (NaN) statistics, left out and counted, never agreement"
_MODE = "issue 24: the caller's model is left in the train/eval mode it was found in (_keeps_mode)"
_VARIANTS = "issue 31: any autoencoder kind (a SparseAutoencoder; its activation, code width, loss terms, path changes)"
EDITED = {
    "UNIT_BROWSER_TEMPLATE": "the template path is found from ksae/, one folder further down (same file)",
    **dict.fromkeys(["FIGURE_SECONDS", "_figure_depth", "_styled", "_gc_paused", "_finish", "_figure_png",
                     "_forked_figure", "_FORKED_CALLS", "_RENDERING_NOW", "render_figures", "render_comparison_grid",
                     "figure_timings"], _STATE),
    **dict.fromkeys(["KSparseAutoencoder", "SparseCodeClassifier", "train_autoencoder_on_split", "train_models"],
                    _BUILD),
    "load_checkpoint": _BUILD + "; checkpoints with the old history key are read with the new one",
    **dict.fromkeys(["normalized_mse", "dataset_fvu", "evaluate_autoencoder"], _FVU),
    **dict.fromkeys(["auxk_loss", "autoencoder_losses", "autoencoder_step", "classifier_step", "train_autoencoder",
                     "train_classifier", "plot_training_history"], _DORMANT),
    **dict.fromkeys(["_check_labels", "_check_pairing_labels", "partner_images", "cross_method_statistics",
                     "randomization_check"], _LABELS),
    **dict.fromkeys(["completeness_decomposition", "ig_completeness", "verdict_table"], _KEYS),
    **dict.fromkeys(["attribute_all", "input_x_gradient", "input_x_smoothgrad"], _X_INPUT),
    **dict.fromkeys(["removal_curves", "_curves_chunk"], "ROAD's noise and tolerance are arguments (the constants as "
                    "defaults): tests pass them instead of patching module globals"),
    "train_classifier": _DORMANT + "; dense=True (the controls' dense codes): the first layer as a matmul, the default "
                        "path unchanged",
    "device_name": "docstring only: the performance table moved from README to docs/performance.md",
    "seeds_for_config": "bug: a seeds file written before cuda_graphs existed never matched (execution fields ignored)",
    "verdict_statements": "bug: a test family absent from the rows was stated as holding on every substrate",
    **dict.fromkeys(["Config", "SparseCodePipeline", "_as_maps", "_check_model", "_prepare", "faithfulness_orderings",
                     "faithfulness_suite", "object_focus", "predict", "select_high_confidence", "run_validation",
                     "run_name", "output_paths", "_check_writable", "load_or_train", "bootstrap_ci", "write_summary",
                     "read_summary", "smoothgrad"], _BAD_INPUT),
    **dict.fromkeys(["_rowwise_pearson", "top_fraction_iou", "summarize", "_wilcoxon_p"], _UNDEFINED),
    **dict.fromkeys(["encode_dataset", "evaluate_classifier", "evaluate_models", "unit_ablation_sums",
                     "unit_contribution_sums", "unit_statistics"], _MODE),
    **dict.fromkeys(["METHOD_LABELS", "METHOD_COLORS", "SHORT_LABELS"], "issue 28: the perturbation family (occlusion, "
                    "feature ablation, Shapley value sampling, KernelSHAP, LIME) joins the methods"),
    "_agreement_against_null": "issue 28: its per-image part (_value_and_null) serves family_agreement too (the same "
                               "numbers, checked against the previous code)",
    "plot_object_focus": "issue 28: eleven methods widen the figure (six: unchanged)",
    "palette_png": "zlib level 9 (PNG_COMPRESS_LEVEL): every figure 7.5 % smaller, the notebook under 2 MB",
    "atomic_write_bytes": "issue 24: a killed run's stale temporary files next to the target are removed",
    **dict.fromkeys(["ViewCodes", "_dashboard_row", "_pipeline_slopes", "_scan_path", "count_path_switches",
                     "encode_views", "plot_class_units", "plot_feature_atlas", "plot_reconstructions",
                     "plot_unit_dashboard", "save_checkpoint", "_name_part", "_plot_fvu_aux", "headline_table",
                     "run_k_sweep", "unit_deletion_curves"], _VARIANTS),
    "_jsonable": "issue 24: numpy NaN/inf (and inside tensors) become null, so a summary always serialises",
    **dict.fromkeys(["unit_browser_data", "write_unit_browser"], "a unit lists the images where it contributes "
                    "most, linking to the explorer page (issue 23)"),
}

for _name in ["KSparseAutoencoder", "SparseCodePipeline", "Config", "train_autoencoder_on_split", "train_models",
              "train_autoencoder", "train_classifier", "autoencoder_step", "autoencoder_losses", "auxk_loss",
              "load_checkpoint", "load_or_train", "dataset_fvu", "encode_dataset", "evaluate_autoencoder",
              "evaluate_classifier", "evaluate_models", "predict", "completeness_decomposition",
              "select_high_confidence", "unit_browser_data", "write_unit_browser"]:  # edited again for the variants
    EDITED[_name] += "; " + _VARIANTS


def _definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """Top-level functions, classes and assignments of ``tree`` by name."""
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        out[name.id] = node
    return out


def fingerprint(node: ast.AST) -> str:
    """A line-number-free fingerprint of a definition: its syntax tree without positions (names, code,
    docstrings and decorators all count)."""
    return hashlib.sha256(ast.dump(node, include_attributes=False).encode()).hexdigest()


def pre_split_fingerprints() -> dict[str, str]:
    """Fingerprints of the pre-split module's definitions: from git where the revision is there, else the
    committed copy (made by ``python tests/test_package.py``) when it was made by this Python version."""
    try:
        source = subprocess.run(["git", "show", f"{PRE_SPLIT}:ksae_helpers.py"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        stored = json.loads(FINGERPRINTS.read_text())
        if stored["python"] != list(sys.version_info[:2]):
            pytest.skip(f"no git history of {PRE_SPLIT}, and the stored fingerprints are of Python {stored['python']}")
        return stored["fingerprints"]
    return {name: fingerprint(node) for name, node in _definitions(ast.parse(source)).items()}


def package_definitions() -> dict[str, tuple[str, ast.AST]]:
    """Every top-level definition of the package's library modules (not its commands): name -> (module path,
    node). A name is defined once: the facade re-exports one flat namespace."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in COMMANDS:
            continue
        for name, node in _definitions(ast.parse(path.read_text())).items():
            if name in PROTOCOL:
                continue
            assert name not in out or name == "__all__", f"{name} defined in {out[name][0]} and {path}"
            out[name] = (str(path.relative_to(ROOT)), node)
    return out


def test_the_split_moved_every_definition_unchanged():
    old = pre_split_fingerprints()
    new = package_definitions()
    changed = {name for name, print_ in old.items() if name not in new or fingerprint(new[name][1]) != print_}
    assert changed - set(EDITED) == set(), "changed or lost in the move (add to EDITED with a reason, or undo)"
    assert set(EDITED) - changed == set(), "listed as edited but unchanged: drop from EDITED"
    assert len(old) > 400  # the whole pre-split module was compared


def test_stored_fingerprints_match_the_pre_split_revision():
    stored = json.loads(FINGERPRINTS.read_text())
    try:
        subprocess.run(["git", "cat-file", "-e", f"{PRE_SPLIT}^{{commit}}"], cwd=ROOT, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"no git history of {PRE_SPLIT}")
    if stored["python"] != list(sys.version_info[:2]):
        pytest.skip(f"stored fingerprints are of Python {stored['python']}")
    assert stored["fingerprints"] == pre_split_fingerprints()


def test_a_planted_edit_is_seen():
    source = "def f(x):\n    return x + 1\n"
    moved = "\n\n\ndef f(x):\n    return x + 1\n"  # other line numbers: same fingerprint
    edited = "def f(x):\n    return x + 2\n"
    print_ = fingerprint(_definitions(ast.parse(source))["f"])
    assert print_ == fingerprint(_definitions(ast.parse(moved))["f"])
    assert print_ != fingerprint(_definitions(ast.parse(edited))["f"])


def test_facade_is_a_table_of_contents():
    source = (ROOT / "ksae_helpers.py").read_text()
    tree = ast.parse(source)
    assert len(source.splitlines()) <= MAX_FACADE_LINES
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds  # docstring, re-exports, __all__: no logic
    (all_node,) = [node for node in tree.body if isinstance(node, ast.Assign)]
    assert [t.id for t in all_node.targets] == ["__all__"]
    exported = ast.literal_eval(all_node.value)  # a literal list
    imported = [a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names]
    assert sorted(exported) == sorted(imported) and len(set(exported)) == len(exported)
    modules = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    for module in modules:  # the docstring names every module it re-exports from
        assert module in tree.body[0].value.value, module
    # every public name of the package is reachable through the facade
    public = {name for name in package_definitions() if not name.startswith("_")}
    assert public - set(exported) == set()


def test_every_name_the_notebook_readme_and_benchmarks_use_exists():
    texts = [(ROOT / "README.md").read_text()]
    texts += [p.read_text() for p in (ROOT / "benchmarks").glob("*.py")]
    notebook = json.loads((ROOT / "fashion_mnist_interpretability.ipynb").read_text())
    texts += ["".join(cell["source"]) for cell in notebook["cells"]]
    used = {name for text in texts for name in re.findall(r"\bkh\.([A-Za-z_]\w*)\b(?!\*)", text)}
    assert used and {name for name in used if not hasattr(kh, name)} == set()


def test_modules_are_small():
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, path


def write_fingerprints() -> None:
    """Store the pre-split fingerprints (for clones without the git history)."""
    source = subprocess.run(["git", "show", f"{PRE_SPLIT}:ksae_helpers.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    prints = {name: fingerprint(node) for name, node in _definitions(ast.parse(source)).items()}
    FINGERPRINTS.write_text(json.dumps({"revision": PRE_SPLIT, "python": list(sys.version_info[:2]),
                                        "fingerprints": prints}, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_fingerprints()
