"""The notebook: runs headless end to end in its smoke configuration, and the committed copy is clean."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

import ksae_helpers as kh

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "fashion_mnist_interpretability.ipynb"

# Chosen through the parameters cell, exactly as a user would override it (no separate code path).
SMOKE = {
    "TRAIN_SUBSET": 3000, "AE_EPOCHS": 3, "CLF_EPOCHS": 5, "SAMPLES_PER_CLASS": 3, "CONFIDENCE_THRESHOLD": 0.0,
    "IG_STEPS": 16, "SMOOTHGRAD_SAMPLES": 4, "N_SUBSET": 20, "N_COMPLETENESS": 10,
    "N_RANDOMIZATION": 10,
}


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _png_count(nb):
    return sum("image/png" in o.get("data", {}) for c in _code_cells(nb) for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    papermill = pytest.importorskip("papermill")
    tmp = tmp_path_factory.mktemp("notebook")
    params = {**SMOKE, "CHECKPOINT_DIR": str(tmp / "ckpt"), "FIGURE_DIR": str(tmp / "fig"),
              "SUMMARY_PATH": str(tmp / "summary.json")}
    out = tmp / "out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=params, cwd=str(ROOT), progress_bar=False,
                               kernel_name="python3")
    return json.loads(out.read_text()), tmp


def test_smoke_run_finishes_without_errors(smoke_run):
    nb, _ = smoke_run
    errors = [o for c in _code_cells(nb) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    counts = [c["execution_count"] for c in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1))


def test_smoke_run_produces_figures_and_summary(smoke_run):
    nb, tmp = smoke_run
    # examples, history, reconstructions, atlas (+usage), confusion, class units, 10 comparisons,
    # class averages, correlations, deletion/insertion, completeness, randomization, object focus
    assert _png_count(nb) >= 20
    saved = sorted(p.name for p in (tmp / "fig").glob("*.png"))
    assert len([n for n in saved if n.startswith("comparison_")]) == 10
    assert {"controls_models.png", "controls_units.png"} <= set(saved)  # section 10 draws results/controls.json
    summary = json.loads((tmp / "summary.json").read_text())
    assert summary["config"]["k"] == 50 and summary["config"]["train_subset"] == SMOKE["TRAIN_SUBSET"]
    assert summary["selection"]["n_images"] == 10 * SMOKE["SAMPLES_PER_CLASS"]
    assert 0.0 < summary["classifier"]["test_accuracy"] <= 1.0
    val = summary["validation"]
    zero = val["faithfulness"]["substrates"]["zero"]
    assert zero["n_images"] == summary["selection"]["n_images"]
    assert val["faithfulness"]["substrates"]["road"]["n_images"] == SMOKE["N_SUBSET"]
    assert {"integrated/signed", "decoder/signed", "input_x_gradient/signed", "random", "random_object"} <= set(
        zero["orderings"])
    assert val["completeness"]["n_steps"] == SMOKE["IG_STEPS"] and len(val["randomization"]["stages"]) == 5
    assert {r["test"] for r in summary["verdicts"]} == set(kh.VERDICT_TESTS)
    assert len(summary["units"]["table"]) == 1024 and (tmp / "fig" / "unit_browser.html").is_file()
    explorer = tmp / "fig" / kh.EXPLORER_PAGE  # the image explorer, beside the unit browser it links to
    assert 0 < explorer.stat().st_size <= kh.EXPLORER_MAX_BYTES


def test_notebook_has_no_magics_and_a_parameters_cell():
    nb = json.loads(NOTEBOOK.read_text())
    code = _code_cells(nb)
    assert "parameters" in code[0]["metadata"].get("tags", [])
    for cell in code:
        source = "".join(cell["source"])
        assert not re.search(r"^\s*[%!]", source, re.M), f"IPython magic or shell escape in: {source[:80]}"


def test_committed_notebook_is_one_clean_run():
    nb = json.loads(NOTEBOOK.read_text())
    counts = [c["execution_count"] for c in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), "commit the outputs of one top-to-bottom run"
    assert not [o for c in _code_cells(nb) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert _png_count(nb) >= 20
    summary = json.loads((ROOT / "results" / "summary.json").read_text())
    assert summary["config"]["train_subset"] == 0, "the committed summary must come from the full default run"


def _committed_outputs() -> dict:
    """SHA-256 of every committed output of the default run (figures/*, results/summary.json)."""
    paths = sorted((ROOT / "figures").glob("*")) + [ROOT / "results" / "summary.json"]
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def _smoke_config(**fields):
    """The notebook's smoke configuration as a ``Config``, with ``fields`` changed."""
    import ksae_helpers as kh

    return kh.Config(ae_epochs=SMOKE["AE_EPOCHS"], clf_epochs=SMOKE["CLF_EPOCHS"], train_subset=SMOKE["TRAIN_SUBSET"],
                     ig_steps=SMOKE["IG_STEPS"], smoothgrad_samples=SMOKE["SMOOTHGRAD_SAMPLES"],
                     confidence_threshold=SMOKE["CONFIDENCE_THRESHOLD"], **fields)


def _smoke_run_name(cfg) -> str:
    """The runs/ folder the smoke configuration ``cfg`` writes into (the notebook's ``kh.run_name``)."""
    import ksae_helpers as kh

    return kh.run_name(cfg, samples_per_class=SMOKE["SAMPLES_PER_CLASS"], n_completeness=SMOKE["N_COMPLETENESS"],
                       n_randomization=SMOKE["N_RANDOMIZATION"], n_subset=SMOKE["N_SUBSET"])


@pytest.mark.parametrize("k", [1, 2, 1024])
def test_smoke_run_at_any_k_writes_its_own_run_folder(k, tmp_path):
    """The smoke configuration at k = 1, 2 and 1024 (= d_hidden) runs top to bottom without overriding
    FIGURE_DIR / SUMMARY_PATH: its outputs go to runs/<name>/ and the committed ones stay byte-identical."""
    papermill = pytest.importorskip("papermill")

    cfg = _smoke_config(k=k)
    run = ROOT / "runs" / _smoke_run_name(cfg)
    shutil.rmtree(run, ignore_errors=True)
    before = _committed_outputs()
    try:
        out = tmp_path / "out.ipynb"
        papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={**SMOKE, "K": k,
                                   "CHECKPOINT_DIR": str(tmp_path / "ckpt")}, cwd=str(ROOT), progress_bar=False,
                                   kernel_name="python3")
        assert _committed_outputs() == before
        summary = json.loads((run / "summary.json").read_text())
        sel = summary["selection"]
        assert summary["config"]["k"] == k and summary["autoencoder"]["mean_l0"] <= k
        assert sum(sel["selected_per_class"].values()) == sel["n_images"] > 0
        assert {c for c, n in sel["selected_per_class"].items() if n == 0} == set(sel["skipped_classes"])
        comparisons = list((run / "figures").glob("comparison_*.png"))
        assert len(comparisons) == sum(n > 0 for n in sel["selected_per_class"].values())
        assert len(list((run / "figures").glob("*.png"))) >= len(comparisons) + 10
    finally:
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.parametrize("kind", ["batchtopk", "jumprelu", "relu_l1", "matryoshka"])
def test_smoke_run_of_every_kind_writes_its_own_run_folder(kind, tmp_path):
    """``-p SAE_KIND <kind>``: the smoke configuration of every other autoencoder kind runs top to bottom (its
    classifier, attribution maps, checks, unit atlas and pages), into runs/<kind>_.../, the committed outputs
    untouched; its summary, figures and explorer page are that kind's."""
    papermill = pytest.importorskip("papermill")
    import ksae_helpers as kh

    cfg = _smoke_config(sae_kind=kind)
    name = _smoke_run_name(cfg)
    assert name.startswith(f"{kind}_")
    run = ROOT / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    before = _committed_outputs()
    try:
        out = tmp_path / "out.ipynb"
        papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={**SMOKE, "SAE_KIND": kind,
                                   "CHECKPOINT_DIR": str(tmp_path / "ckpt")}, cwd=str(ROOT), progress_bar=False,
                                   kernel_name="python3")
        assert _committed_outputs() == before
        nb = json.loads(out.read_text())
        assert [o for c in _code_cells(nb) for o in c.get("outputs", []) if o.get("output_type") == "error"] == []
        summary = json.loads((run / "summary.json").read_text())
        assert summary["config"]["sae_kind"] == kind and summary["autoencoder"]["mean_l0"] > 0
        assert (tmp_path / "ckpt" / cfg.checkpoint_name()).is_file()
        assert len(list((run / "figures").glob("*.png"))) >= 20
        manifest, _ = kh.read_explorer_data(run / "figures" / kh.EXPLORER_PAGE)
        assert manifest["activation"]["kind"] == kind
    finally:
        shutil.rmtree(run, ignore_errors=True)
