"""Bad notebook parameters, given through papermill as a user would (``-p NAME VALUE``): the run stops in the
configuration cell, before data, training or any output, with a ``ValueError`` that names the parameter; no
checkpoint is written and the committed outputs are untouched. Each case is a real papermill run (seconds
each), so they are a sample; ``tests/test_bad_input.py`` covers every parameter of the spec through
``check_parameters``, the function the configuration cell calls."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "fashion_mnist_interpretability.ipynb"

# (case id, parameters, regex the error message must match: it names the parameter)
NOTEBOOK_CASES = [
    ("samples-per-class-0", {"SAMPLES_PER_CLASS": 0}, r"SAMPLES_PER_CLASS must be an integer >= 1 .*got 0"),
    ("misspelled-name", {"SAMPLES_PER_CLAS": 3},
     r"unknown parameter 'SAMPLES_PER_CLAS' \(did you mean SAMPLES_PER_CLASS"),
    ("n-subset-0", {"N_SUBSET": 0}, r"N_SUBSET must be an integer >= 1"),
    ("n-completeness-negative", {"N_COMPLETENESS": -5}, r"N_COMPLETENESS must be an integer >= 1"),
    ("n-randomization-1", {"N_RANDOMIZATION": 1}, r"N_RANDOMIZATION must be an integer >= 2"),
    ("k-0", {"K": 0}, r"K must be an integer in \[1, 1024\]"),
    ("retrain-string", {"RETRAIN": "False"}, r"RETRAIN must be True or False, got 'False'"),
    ("threshold-percent", {"CONFIDENCE_THRESHOLD": 80}, r"CONFIDENCE_THRESHOLD must be a number in \[0, 1\)"),
    ("k-sweep-above-d-hidden", {"K_SWEEP": [5, 5000]}, r"K_SWEEP must hold integers in \[1, 1024\]"),
    ("checkpoint-dir-a-file", {"CHECKPOINT_DIR": "{blocker}"}, r"CHECKPOINT_DIR must be a folder"),
    ("summary-path-a-folder", {"SUMMARY_PATH": "{folder}"}, r"SUMMARY_PATH must be a file path"),
    ("figure-dir-under-a-file", {"FIGURE_DIR": "{blocker}/figures"}, r"FIGURE_DIR must be a writable folder"),
]


def _committed_outputs() -> dict:
    paths = sorted((ROOT / "figures").glob("*")) + sorted((ROOT / "results").glob("*.json"))
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


@pytest.mark.parametrize("params, pattern", [c[1:] for c in NOTEBOOK_CASES], ids=[c[0] for c in NOTEBOOK_CASES])
def test_bad_parameter_stops_the_notebook_before_anything_runs(tmp_path, params, pattern):
    papermill = pytest.importorskip("papermill")
    (tmp_path / "blocker").write_text("a file where a folder is meant")
    (tmp_path / "folder").mkdir()
    ckpt = tmp_path / "ckpt"
    spots = {"blocker": tmp_path / "blocker", "folder": tmp_path / "folder"}
    params = {k: v.format(**spots) if isinstance(v, str) else v for k, v in params.items()}
    run = {"CHECKPOINT_DIR": str(ckpt), "FIGURE_DIR": str(tmp_path / "fig"),
           "SUMMARY_PATH": str(tmp_path / "summary.json"), **params}
    before = _committed_outputs()
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=run, cwd=str(ROOT), progress_bar=False,
                                   kernel_name="python3")
    error = info.value
    assert error.ename == "ValueError"
    assert re.search(pattern, error.evalue), error.evalue
    assert "kh.check_parameters(" in error.source  # stopped in the configuration cell, before the data cell
    executed = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code" and c["execution_count"]]
    assert len(executed) == 3  # the parameters cell, papermill's injected one, the configuration cell
    assert not list(ckpt.glob("*.pt")) and not (tmp_path / "summary.json").exists()
    if isinstance(run["CHECKPOINT_DIR"], str) and Path(run["CHECKPOINT_DIR"]).is_dir():
        assert list(Path(run["CHECKPOINT_DIR"]).iterdir()) == []
    assert _committed_outputs() == before
