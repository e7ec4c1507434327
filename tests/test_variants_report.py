"""ksae.variants_report: the generated text reads every number from the result and words a difference only as the
rule allows."""

import copy

import pytest

import ksae_helpers as kh
from ksae import variants_report


def test_markdown_holds_every_table_and_numbers_from_the_result(variants_tiny):
    result = variants_tiny[0]
    text = kh.variants_markdown(result)
    row = result["frontier"]["topk"]["4"]
    assert f"{row['fvu']:.4f} [{row['fvu_ci95'][0]:.4f}, {row['fvu_ci95'][1]:.4f}]" in text
    assert "| top-k | k = 2 (val. L0 2.0) | k = 4 (val. L0 4.0) | k = 8 (val. L0 8.0) |" in text
    for coherence, entry in result["planted"].items():
        assert f"| {coherence} | {entry['generator']['max_abs_cosine']:.3f} |" in text
    assert text.count("| top-k at L0 ≈ 2 | trained, 3 seeds |") == 1


def test_the_answer_names_a_difference_only_where_the_rule_allows(variants_tiny):
    result = copy.deepcopy(variants_tiny[0])
    name = "topk_3x_epochs"
    answer = result["answer"][name]["recurrence"]["shared"]
    answer.update(verdict="higher", difference=0.2, ci95=[0.1, 0.3], range=[0.3, 0.4], reference_range=[0.1, 0.15])
    text = kh.variants_markdown(result)
    assert "Units recur more often than top-k's" in text and "top-k, 3× the epochs (6 epochs)" in text
    assert "higher than top-k's (difference +20.0 points [+10.0, +30.0]" in text
    answer["verdict"] = "no resolvable difference"
    none = "No variant makes units recur more often than top-k's beyond the seed spread."
    assert none in kh.variants_markdown(result)
    bullet = variants_report.readme_bullet(result)
    assert bullet.count("\n") == 0 and "results/variants.json" in bullet


def test_markdown_refuses_another_result():
    with pytest.raises(ValueError, match="run_variants' result"):
        kh.variants_markdown({"models": {}})
