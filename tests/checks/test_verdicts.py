"""ksae.checks.verdicts: pass/fail per ordering and test, and the statements over seeds, read from a hand-made
validation result (``helpers._fake_validation``).
"""

from helpers import _fake_validation

import ksae.checks.verdicts
import ksae_helpers as kh


def test_verdict_table_reads_every_test_from_the_results():
    rows = {(r["ordering"], r["test"]): r for r in kh.verdict_table(_fake_validation())}
    ig, grad = "integrated/signed", "simple/signed"
    assert [rows[ig, f"faithful_{s}"]["passes"] for s in ("zero", "blur", "road")] == [True, True, False]
    assert rows[ig, "faithful_zero"]["rank"] == 1 and rows[grad, "faithful_zero"]["rank"] == 2
    assert rows[ig, "faithful_blur"]["value"] == 0.5
    assert [rows[ig, f"object_{s}"]["passes"] for s in ("zero", "blur", "road")] == [True, False, False]
    assert rows[ig, "object_road"]["value"] == -0.2
    assert not rows[ig, "randomization_cascading"]["passes"] and not rows[ig, "randomization_independent"]["passes"]
    assert rows[grad, "randomization_cascading"]["passes"] and rows[grad, "randomization_independent"]["passes"]
    assert not rows[ig, "completeness"]["passes"] and rows[ig, "completeness"]["value"] == 0.2
    assert (grad, "completeness") not in rows  # completeness is a claim only integrated gradients makes


def test_unit_causality_verdict_needs_every_order_and_score_to_win():
    win = {"p_value": 1e-6}
    unit = {"tests": {"deletion": {"logit": {"vs_random": {**win, "mean_diff": -1.0},
                                             "vs_activation": {**win, "mean_diff": -0.5}}},
                      "insertion": {"logit": {"vs_random": {**win, "mean_diff": 2.0},
                                              "vs_activation": {**win, "mean_diff": 1.0}}}}}
    assert ksae.checks.verdicts._unit_causality_passes(unit)
    unit["tests"]["insertion"]["logit"]["vs_activation"]["mean_diff"] = -1.0  # worse than activation order
    assert not ksae.checks.verdicts._unit_causality_passes(unit)


def test_verdict_statements_say_where_a_verdict_flips():
    per_seed = {0: kh.verdict_table(_fake_validation()), 1: kh.verdict_table(_fake_validation(ig_zero=False)),
                2: kh.verdict_table(_fake_validation(ig_road=True))}
    said = kh.verdict_statements(per_seed)
    ig = [s for s in said["flips"] if s.startswith("Integrated gradients (signed):")]
    assert ig == ["Integrated gradients (signed): beats the random order on blur; depends on the seed on zero, road.",
                  "Integrated gradients (signed): beats a random order over object pixels on zero; not on blur, road."]
    assert "Simple gradients (signed) does not beat the random order on any substrate." in said["fails"]
    assert "Simple gradients (signed) passes the cascading randomization check in every seed." in said["holds"]
    assert any(s.startswith("Integrated gradients (signed) fails completeness") for s in said["fails"])
    assert not any(s.startswith("Integrated gradients") for s in said["holds"])
    # a family with no test among the rows is not stated at all (not "holds on every substrate" of none)
    no_object = {seed: [r for r in rows if not r["test"].startswith("object_")] for seed, rows in per_seed.items()}
    assert not any("over object pixels" in s for kind in kh.verdict_statements(no_object).values() for s in kind)
    same = kh.verdict_statements({0: kh.verdict_table(_fake_validation(ig_road=True))})
    assert any(s.startswith("Integrated gradients (signed) beats the random order on every substrate")
               for s in same["holds"])
