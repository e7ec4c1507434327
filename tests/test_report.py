"""ksae.report: run names and output folders per configuration, the notebook's run defaults, compact notebooks,
and the summary's tables and texts (selection shortfalls, unit table, figure timings, verdict markdown).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import SCENARIO_MODELS, _fake_validation
from planted_units import N_HIDDEN, PLANTED_CLASS

import ksae._util
import ksae_helpers as kh


def test_default_configuration_keeps_the_committed_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kh.run_name(kh.Config()) == "default"
    assert kh.run_name(kh.Config(), samples_per_class=100, n_subset=300) == "default"
    assert kh.output_paths(kh.Config()) == ("figures", "results/summary.json")
    assert (tmp_path / "figures").is_dir() and (tmp_path / "results").is_dir()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []  # the write check leaves nothing


def test_other_configurations_write_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kh.output_paths(kh.Config(k=20)) == ("runs/k20/figures", "runs/k20/summary.json")
    cfg = kh.Config(k=1, ae_epochs=3, train_subset=3000, confidence_threshold=0.5)
    name = "k1_ae_epochs3_train_subset3000_confidence_threshold0.5_samples_per_class3_n_subset20"
    assert kh.run_name(cfg, samples_per_class=3, n_subset=20) == (
        name[:71] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8])
    assert kh.run_name(kh.Config(seed=2), samples_per_class=3) == "seed2_samples_per_class3"
    assert kh.run_name(kh.Config(), n_subset=9, samples_per_class=3) == kh.run_name(
        kh.Config(), samples_per_class=3, n_subset=9)  # the notebook and the tests may name them in any order
    # paths the user chose are kept; "" (save no figures) stays ""
    assert kh.output_paths(kh.Config(k=20), "figs", "out/s.json") == ("figs", "out/s.json")
    assert kh.output_paths(kh.Config(k=20), "", runs_dir="elsewhere") == ("", "elsewhere/k20/summary.json")
    assert (tmp_path / "runs" / "k20" / "figures").is_dir() and (tmp_path / "out").is_dir()


def test_output_paths_reject_bad_input_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(ValueError, match="runs_dir must be a folder, got 'blocker', which is an existing file"):
        kh.output_paths(kh.Config(k=20), runs_dir="blocker")
    with pytest.raises(ValueError, match="blocker"):
        kh.output_paths(kh.Config(), "blocker/figures")
    with pytest.raises(ValueError, match="unknown run parameter"):
        kh.output_paths(kh.Config(), samples_per_klass=3)
    with pytest.raises(ValueError, match="must be a Config"):
        kh.run_name({"k": 20})


def test_run_defaults_match_the_notebook_parameters_cell():
    nb = json.loads((Path(kh.__file__).parent / "fashion_mnist_interpretability.ipynb").read_text())
    params = {}
    exec("".join(nb["cells"][next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")]["source"]),
         {}, params)
    assert params["SAMPLES_PER_CLASS"] == kh.RUN_DEFAULTS["samples_per_class"]
    assert params["N_COMPLETENESS"] == kh.RUN_DEFAULTS["n_completeness"]
    assert params["N_RANDOMIZATION"] == kh.RUN_DEFAULTS["n_randomization"]
    assert params["N_SUBSET"] == kh.RUN_DEFAULTS["n_subset"]
    assert (params["K"], params["AE_EPOCHS"], params["CLF_EPOCHS"], params["SEED"]) == (50, 30, 50, 0)
    assert (params["FIGURE_DIR"], params["SUMMARY_PATH"]) == (kh.DEFAULT_FIGURE_DIR, kh.DEFAULT_SUMMARY_PATH)


# --- compact notebooks --------------------------------------------------------------------------------------


def _stream(name, text):
    return {"output_type": "stream", "name": name, "text": text}


def test_compact_notebook_keeps_the_last_state_of_each_progress_bar(tmp_path):
    image = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}, "metadata": {}}
    outputs = [_stream("stderr", "\rtrain:   0%| 0/9"), _stream("stderr", ["\rtrain:  50%| 4/9", "\rtrain: 100%| 9/9"]),
               _stream("stderr", "\n"), _stream("stdout", "loss 0.5\n"), _stream("stderr", "\r\rdone 1/2\rdone 2/2\n"),
               image, _stream("stdout", "a\r\n"), _stream("stdout", "\r")]
    code = {"cell_type": "code", "id": "c", "source": "print(1)", "metadata": {}, "outputs": outputs,
            "execution_count": 1}
    nb = {"cells": [{"cell_type": "markdown", "id": "m", "source": "# x", "metadata": {}}, code],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}}, "nbformat": 4,
          "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    before, after = kh.compact_notebook(path)
    assert before == len(json.dumps(nb)) and after == path.stat().st_size
    out = json.loads(path.read_text())
    for o in out["cells"][1]["outputs"]:  # written as Jupyter does: multi-line text as a list of lines
        o.update({"text": "".join(o["text"])} if "text" in o else {})
    assert out["cells"][1]["outputs"] == [_stream("stderr", "train: 100%| 9/9\n"), _stream("stdout", "loss 0.5\n"),
                                          _stream("stderr", "done 2/2\n"), image, _stream("stdout", "a\n\r")]
    assert out["cells"][0] == {**nb["cells"][0], "source": ["# x"]} and out["metadata"] == nb["metadata"]
    assert kh.compact_notebook(path)[0] == kh.compact_notebook(path)[1] == after  # idempotent


def test_compact_notebook_rejects_what_is_not_a_notebook(tmp_path):
    (tmp_path / "bad.ipynb").write_text("{not json")
    for path in (tmp_path / "bad.ipynb", tmp_path / "missing.ipynb"):
        with pytest.raises(ValueError, match="readable .ipynb"):
            kh.compact_notebook(path)


# --- summary blocks -----------------------------------------------------------------------------------------


def test_selection_summary_records_the_shortfall_as_json(scenario):
    with pytest.warns(UserWarning):
        sel = kh.select_high_confidence(*SCENARIO_MODELS, scenario, "cpu", 4, threshold=0.8)
    block = json.loads(json.dumps(ksae._util._jsonable(kh.selection_summary(sel, 0.8))))
    assert block["n_images"] == 7 and block["n_per_class"] == 4 and block["n_fallback"] == 1
    assert block["selected_per_class"] == {"a": 4, "b": 2, "c": 1, "d": 0}
    assert block["skipped_classes"] == ["d"] and block["warning"] == sel.warning
    assert block["shortfalls"]["c"] == {"passing": 0, "selected": 1, "fallback": 1}


def test_unit_table_summary_counts(planted):
    _, _, stats = planted
    rows = dict(kh.unit_table_summary({"table": kh.unit_table(stats)}))
    assert rows["units"] == str(N_HIDDEN) and rows["dead (no training or test image)"] == "1"
    assert rows["zeroing lowers its class logit"] == f"1 of {N_HIDDEN - 1}"  # only A feeds a logit
    assert rows["units whose majority class is Dress"] == str(1 + (stats.majority[2:] == PLANTED_CLASS).sum())
    with pytest.raises(ValueError, match="non-empty 'table'"):
        kh.unit_table_summary({"table": []})


def test_figure_timings_sum_up_the_calls():
    t = kh.figure_timings({"plot_a": [0.5, 0.25], "plot_b": [1.0], "plot_c": []})
    assert t["total"] == pytest.approx(1.75) and t["n_figures"] == 3 and t["slowest"] == ["plot_b", 1.0]
    assert t["per_function"]["plot_a"] == {"calls": 2, "total": 0.75, "max": 0.5} and "plot_c" not in t["per_function"]
    assert kh.figure_timings({}) == {"total": 0, "n_figures": 0, "slowest": [None, 0.0], "per_function": {}}


def test_verdict_markdown_marks_passes_ranks_and_seeds(tmp_path):
    rows = kh.verdict_table(_fake_validation())
    text = kh.verdict_markdown(rows)
    ig_line = next(line for line in text.splitlines() if line.startswith("| Integrated gradients (signed)"))
    cells = [c.strip() for c in ig_line.strip("|").split("|")]
    assert cells[1:4] == ["✓ (rank 1)", "✓ (rank 1)", "✗ (rank 1)"] and cells[-1] == "—"  # no unit causality
    assert "this run only" in text
    assert "| Integrated gradients (&#124;value&#124;) |" in kh.verdict_markdown(
        [{**r, "ordering": "integrated/abs"} for r in rows])  # no bare | inside a table cell
    seeds = {"seeds": [0, 1], "stability": [{"ordering": "integrated/signed", "test": "faithful_zero",
                                             "passes": {"0": True, "1": False}}],
             "statements": {"holds": [], "fails": ["X fails."], "flips": []}}
    text = kh.verdict_markdown(rows, seeds)
    assert "✓ (rank 1) · seeds ✓✗" in text and "- X fails." in text and "2 training seeds" in text
    # the seed file is used only for the configuration it was measured with
    path = tmp_path / "v.json"
    path.write_text(json.dumps({**seeds, "config": {**kh.Config().to_dict(), "seed": None}}))
    assert kh.seeds_for_config(path, kh.Config(seed=5)) is not None
    assert kh.seeds_for_config(path, kh.Config(k=20)) is None
    assert kh.seeds_for_config(tmp_path / "missing.json", kh.Config()) is None
    # an execution field changes no result: a file written without it (or with another value) still matches
    config = {k: v for k, v in kh.Config().to_dict().items() if k != "cuda_graphs"}
    path.write_text(json.dumps({**seeds, "config": {**config, "seed": None}}))
    assert kh.seeds_for_config(path, kh.Config(cuda_graphs=False)) is not None
    assert kh.seeds_for_config(path, kh.Config(ig_steps=20)) is None  # an attribution setting does
