"""The planted shortcut's generated text reads every number from the result: a planted change shows up, a verdict
is stated only as the across-seed rule decides, README's bullet is one line."""

from __future__ import annotations

import copy

import pytest

import ksae_helpers as kh
from ksae import shortcut_report


def test_markdown_follows_the_result(shortcut_tiny):
    result = shortcut_tiny["result"]
    text = kh.shortcut_markdown(result)
    for v in result["variants"]:
        gate = result["per_seed"][v]["0"]["gate"]
        assert f"{gate['value']:.3f} / {gate['test_value']:.3f}" in text
    planted = copy.deepcopy(result)
    planted["markers"]["M"]["contrast"] = 0.123456
    assert "M 0.123" in kh.shortcut_markdown(planted) and "M 0.123" not in text
    failed = copy.deepcopy(result)
    for run in failed["per_seed"]["certified"].values():
        run["gate"]["passed"], run["scored"] = False, False
    failed["summary"]["certified"] = {"gates": {"0": False}, "all_gated": False}
    assert "gate failed in seed(s) 0" in kh.shortcut_markdown(failed)
    with pytest.raises(ValueError, match="run_shortcut's result"):
        kh.shortcut_markdown({"models": {}})


def test_readme_bullet_is_one_line_from_the_result_or_the_docs_inputs(shortcut_tiny):
    result = shortcut_tiny["result"]
    bullet = shortcut_report.readme_bullet(result)
    assert bullet.startswith("- **A planted shortcut") and "\n" not in bullet
    assert "](figures/shortcut_localisation.png)" in bullet and "](docs/results.md#planted-shortcut)" in bullet
    assert shortcut_report.readme_bullet({"shortcut": result}) == bullet
    for v in result["variants"]:
        s = result["summary"][v]
        label = shortcut_report._VARIANT_LABELS[v]
        if s["all_gated"]:
            methods = s["localisation"]["shortcut"]
            n, found = len(methods), sum(c["finds"] for c in methods.values())
            assert f"{label}: " + (f"all {n} methods find it" if found == n else f"{found} of {n} methods") in bullet
        else:
            assert f"{label}: its gate failed" in bullet
    with pytest.raises(ValueError, match="results/shortcut.json"):
        shortcut_report.readme_bullet({"summary": None, "per_seed": {}})
