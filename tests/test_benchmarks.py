"""The FVU-vs-budget script measures what it says (tiny budget: a few hundred images, one or two epochs)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fvu_vs_budget_rows_follow_the_grid(capsys):
    fvu_vs_budget = _load("fvu_vs_budget")
    rows = fvu_vs_budget.main(["--epochs", "1", "3", "--batch-sizes", "64", "--train-subset", "512",
                               "--device", "cpu", "--threads", "1"])
    assert [(r["ae_epochs"], r["batch_size"], r["lr"]) for r in rows] == [(1, 64, 1e-3), (3, 64, 1e-3)]
    for r in rows:
        assert 0.0 < r["fvu"] < 1.0
        assert r["mean_l0"] <= 50.0
        assert 0 <= r["dead_units"] <= 1024
        assert r["seconds"] > 0
    assert rows[1]["fvu"] < rows[0]["fvu"]  # three epochs on the same images fit them better than one
    out = capsys.readouterr().out
    assert "target FVU <= 0.05" in out and out.count("missed") == 2


def test_fvu_vs_budget_rejects_bad_epochs():
    fvu_vs_budget = _load("fvu_vs_budget")
    with pytest.raises(ValueError, match="ae_epochs"):
        fvu_vs_budget.main(["--epochs", "0", "--train-subset", "256", "--device", "cpu"])
