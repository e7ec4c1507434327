"""The notebook: runs headless end to end in its smoke configuration, and the committed copy is clean."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "fashion_mnist_interpretability.ipynb"

# Chosen through the parameters cell, exactly as a user would override it (no separate code path).
SMOKE = {
    "TRAIN_SUBSET": 3000, "AE_EPOCHS": 3, "CLF_EPOCHS": 5, "SAMPLES_PER_CLASS": 3, "CONFIDENCE_THRESHOLD": 0.0,
    "IG_STEPS": 16, "SMOOTHGRAD_SAMPLES": 4, "COMPLETENESS_STEPS": [8, 16, 50], "N_COMPLETENESS": 10,
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
    summary = json.loads((tmp / "summary.json").read_text())
    assert summary["config"]["k"] == 50 and summary["config"]["train_subset"] == SMOKE["TRAIN_SUBSET"]
    assert summary["selection"]["n_images"] == 10 * SMOKE["SAMPLES_PER_CLASS"]
    assert 0.0 < summary["classifier"]["test_accuracy"] <= 1.0
    val = summary["validation"]
    assert set(val["deletion_insertion"]["deletion"]) >= {"integrated", "simple", "smoothgrad", "decoder", "random"}
    assert set(val["completeness"]["table"]["gausslegendre"]) == {str(n) for n in SMOKE["COMPLETENESS_STEPS"]}
    assert len(val["randomization"]["stages"]) == 5


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
