"""ksae.perturbation_report: the perturbation family's generated text says what the seeds file holds, whichever way
it goes (a planted seeds file with known answers)."""

from __future__ import annotations

import copy

import pytest

import ksae_helpers as kh
from ksae import perturbation_report
from ksae.perturbation_report import _agreement_outcome, _first_places, _passing_everywhere

SUBSTRATES = ("zero", "blur", "road")


def summary(mean, lo, hi, p=None):
    return {"mean": mean, "ci95": [lo, hi], "std": 0.1, "n": 100, **({} if p is None else {"p_value": p})}


def rows(passes: dict) -> list[dict]:
    """Verdict rows: ``passes[ordering][test family] = bool`` on every substrate."""
    out = []
    for ordering, tests in passes.items():
        method, ranking = ordering.split("/")
        for family, ok in tests.items():
            out += [{"ordering": ordering, "method": method, "ranking": ranking, "test": f"{family}_{s}",
                     "passes": ok, "rank": None, "value": 0.1} for s in SUBSTRATES]
    return out


def planted(diff_ci=(-0.3, -0.2)) -> dict:
    passes = {"integrated/signed": {"faithful": True, "object": False},
              "occlusion/signed": {"faithful": True, "object": True},
              "lime/signed": {"faithful": False, "object": False}}
    stats = {"within_gradient": summary(0.4, 0.35, 0.45), "across": summary(0.1, 0.08, 0.12),
             "within_perturbation": summary(0.2, 0.15, 0.25),
             "across_minus_within_gradient": summary(sum(diff_ci) / 2, *diff_ci, p=1e-9)}
    agreement = {"families": {f: list(m) for f, m in kh.METHOD_FAMILIES.items()}, "n_images": 100,
                 "statistics": {f"spearman_{k}_{p}": stats for k in kh.AGREEMENT_KINDS for p in kh.PIXEL_SETS}}
    run = {"n_images": 100, "rows": rows(passes), "agreement": agreement,
           "rankings": {s: {"signed": ["occlusion/signed", "integrated/signed", "random", "lime/signed"]}
                        for s in SUBSTRATES}}
    return {"config": kh.Config().to_dict(), "seeds": [0, 1], "per_seed": {"0": run, "1": copy.deepcopy(run)}}


def test_the_text_says_what_the_seeds_file_holds():
    data = planted()
    assert _passing_everywhere(data) == {"faithful_": ["integrated/signed", "occlusion/signed"],
                                        "object_": ["occlusion/signed"], "both": ["occlusion/signed"]}
    assert _first_places(data)[0] == {"substrate": "zero", "ranking": "signed",
                                      "now": {"0": "occlusion/signed", "1": "occlusion/signed"},
                                      "gradient_only": {"0": "integrated/signed", "1": "integrated/signed"}}
    text = kh.perturbation_markdown(data)
    assert "Both, on every substrate and in every seed: Occlusion (signed)." in text
    assert "object pixels (zero, blur, road): gradient family: none; perturbation family: Occlusion (signed)" in text
    assert ("zero substrate, ranked by signed value: Integrated gradients (signed) in every seed with the gradient "
            "family alone; with both families Occlusion (signed) in every seed" in text)
    data["per_seed"]["1"]["rankings"]["blur"]["signed"] = ["integrated/signed", "occlusion/signed", "random"]
    assert ("blur substrate, ranked by signed value: Integrated gradients (signed) in every seed with the gradient "
            "family alone; with both families Occlusion (signed) in seed 0, Integrated gradients (signed) in seed 1"
            in kh.perturbation_markdown(data))
    assert "beats the random order on every substrate, in every seed (2): Occlusion (signed)." in text
    assert "does not beat the random order on any substrate: LIME (signed)." in text
    assert "Signed Spearman on all pixels: less, in every seed" in text
    assert text.count("| -0.25 [-0.30, -0.20] | 1e-09 |") == 8  # four variants x two seeds
    bullet = perturbation_report.readme_bullet(data)
    assert bullet.startswith("- **Perturbation attributions**") and "\n" not in bullet
    assert "Occlusion (signed) passes both deletion tests" in bullet and "less than those agree" in bullet


@pytest.mark.parametrize("cis, outcome", [([(0.1, 0.2), (0.05, 0.3)], "more"), ([(-0.3, -0.1), (-0.1, 0.05)],
                                                                                "no resolvable difference"),
                                          ([(-0.3, -0.1), (0.1, 0.2)], "no resolvable difference")])
def test_agreement_is_stated_only_where_every_seed_agrees(cis, outcome):
    data = planted()
    for run, ci in zip(data["per_seed"].values(), cis):
        run["agreement"] = copy.deepcopy(run["agreement"])
        run["agreement"]["statistics"]["spearman_signed_all"]["across_minus_within_gradient"]["ci95"] = list(ci)
    assert _agreement_outcome(data) == outcome
    words = {"more": "agree with the gradient maps more", "no resolvable difference": "neither resolvably"}[outcome]
    assert words in perturbation_report.readme_bullet(data)


def test_nothing_passing_everywhere_is_said_plainly():
    data = planted()
    for run in data["per_seed"].values():
        for r in run["rows"]:
            r["passes"] = r["passes"] and not r["ordering"].startswith("occlusion") or r["test"] == "faithful_zero"
    assert _passing_everywhere(data)["both"] == []
    assert "no method of either family passes both deletion tests" in perturbation_report.readme_bullet(data)


def test_a_seeds_file_without_the_family_is_refused():
    data = planted()
    for run in data["per_seed"].values():
        run["rows"] = [r for r in run["rows"] if not r["ordering"].startswith(("occlusion", "lime"))]
    with pytest.raises(ValueError, match="no perturbation method"):
        kh.perturbation_markdown(data)
    with pytest.raises(ValueError, match="data must be the JSON"):
        perturbation_report.readme_bullet({"per_seed": {}})
