"""The planted-shortcut figures draw the numbers of the result they are given: each map's title its relevance mass on
M, the bars the seeds' mean scores, the removal curves the scorers' values; a variant whose gate failed says so."""

from __future__ import annotations

import numpy as np
import pytest

import ksae_helpers as kh
from ksae.shortcuts import _MARKER


@pytest.fixture(scope="module")
def result(shortcut_tiny):
    return shortcut_tiny["result"]


def test_maps_figure_shows_the_shortcut_model_beside_its_twin(result):
    fig = kh.plot_shortcut_maps(result, "certified")
    example = result["per_seed"]["certified"]["0"]["localisation"]["example"]
    axes = [ax for ax in fig.axes if ax.get_title() or ax.get_ylabel()]
    methods = list(example["shortcut"])
    assert len(fig.axes) == 2 * (len(methods) + 1)
    assert [ax.get_ylabel() for ax in fig.axes[::len(methods) + 1]] == ["shortcut model", "clean twin"]
    for role, row in (("shortcut", 0), ("twin", 1)):
        for c, m in enumerate(methods, start=1):
            mass = kh.relevance_mass_accuracy(np.asarray(example[role][m])[None], _MARKER.mask())[0]
            assert fig.axes[row * (len(methods) + 1) + c].get_title().endswith(f"mass on M {mass:.2f}")
    assert axes
    with pytest.raises(ValueError, match="variant must be one of"):
        kh.plot_shortcut_maps(result, "certifed")


def test_localisation_figure_draws_the_seed_means_and_says_where_a_gate_failed(result):
    fig = kh.plot_shortcut_localisation(result)
    variants = result["variants"]
    for c, v in enumerate(variants):
        ax = fig.axes[c]
        run = result["per_seed"][v]["0"]
        if not run["scored"]:
            assert any("gate failed" in t.get_text() for t in ax.texts)
            continue
        first = next(iter(run["localisation"]["models"]["shortcut"]))
        heights = [p.get_height() for p in ax.patches]
        assert heights[0] == pytest.approx(run["localisation"]["models"]["shortcut"][first]["mass"]["M"]["mean"])
    with pytest.raises(ValueError, match="score must be"):
        kh.plot_shortcut_localisation(result, score="area")
    with pytest.raises(ValueError, match="run_shortcut's result"):
        kh.plot_shortcut_localisation({"variants": []})


def test_removal_figure_draws_each_scorer_from_the_result(result):
    fig = kh.plot_shortcut_removal(result)
    v = "certified" if result["per_seed"]["certified"]["0"]["scored"] else None
    if v is None:
        pytest.skip("the tiny certified model failed its gate")
    run, ax = result["per_seed"][v]["0"], fig.axes[0]
    line = next(li for li in ax.get_lines() if li.get_label() == "contribution")
    want = [run["models"]["shortcut"]["test"]["acc_two"]["mean"]] + [
        run["units"]["removal"]["scorers"]["contribution"][str(n)]["metrics"]["acc_two"]["mean"]
        for n in result["sizes"]["ns"]]
    np.testing.assert_allclose(line.get_ydata(), want)
