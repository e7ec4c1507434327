"""What holds across training seeds in the planted-shortcut study (``_across_seeds``): a verdict ("finds the
shortcut", "finds the marker unit", "beats random units") is stated only where every seed passed its gate and the
claim holds in every seed, against its controls (the clean twin, C, chance, random units), and agrees with the planted
answer (M, the marker units)."""

from __future__ import annotations


def _scored_seeds(result: dict, variant: str) -> dict:
    """``{seed: result}`` of the seeds of ``variant`` whose gate passed (and were scored)."""
    return {s: p for s, p in result["per_seed"][variant].items() if p.get("scored")}


def _low(summary: dict | None):
    """The lower end of a summary's 95 % CI, or None (undefined)."""
    return None if not summary or summary.get("ci95") is None else summary["ci95"][0]


def _above(summary: dict | None, level: float) -> bool:
    low = _low(summary)
    return low is not None and low > level


def _ci_direction(summary: dict | None) -> int:
    """+1 when the CI lies above 0, -1 below, 0 when it includes 0 (or is undefined)."""
    if not summary or summary.get("ci95") is None or None in summary["ci95"]:
        return 0
    lo, hi = summary["ci95"]
    return 1 if lo > 0 else -1 if hi < 0 else 0


def _shortcut_regions(variant: str) -> tuple[str, ...]:
    """The regions that carry the shortcut: M, and in the two-part variant M and C."""
    return ("M", "C") if variant == "two_part" else ("M",)


def _localisation_claim(loc: dict, variant: str, role: str, method: str, score: str = "mass") -> dict:
    """Does ``method`` find the shortcut for model ``role`` (``shortcut`` or ``pixel``) on one seed: for every region
    of ``_shortcut_regions``, ``score`` on it above chance and above the twin's (paired CI above 0), and (certified,
    biased) above the same model's score on C (paired CI above 0)."""
    diff_key = "twin_difference" if role == "shortcut" else "pixel_twin_difference"
    parts = {}
    for region in _shortcut_regions(variant):
        value = loc["models"][role][method][score][region]
        twin = loc[diff_key][method][score][region]
        checks = {"above_chance": _above(value, loc["chance"][region]), "above_twin": _above(twin, 0.0)}
        if variant != "two_part":
            checks["above_C"] = _above(loc["m_minus_c"].get(role, {}).get(method, {}).get(score), 0.0)
        parts[region] = {"value": value and value["mean"], "twin_difference": twin and twin["mean"], **checks,
                         "holds": all(checks.values())}
    return {"regions": parts, "holds": all(p["holds"] for p in parts.values())}


def _localisation_verdicts(per: dict, scored: list[str], variant: str, all_gated: bool) -> dict:
    out: dict = {"shortcut": {}, "pixel": {}, "code_vs_pixel": {}}
    first = per[scored[0]]["localisation"]
    for role in ("shortcut", "pixel"):
        for method in first["models"][role]:
            seeds = {s: _localisation_claim(per[s]["localisation"], variant, role, method) for s in scored}
            out[role][method] = {"per_seed": seeds, "finds": all_gated and all(c["holds"] for c in seeds.values())}
    for method in first["code_minus_pixel"]:
        dirs = {s: {r: _ci_direction(per[s]["localisation"]["code_minus_pixel"][method]["mass"][r])
                    for r in _shortcut_regions(variant)} for s in scored}
        flat = [d for by in dirs.values() for d in by.values()]
        word = ("helps" if all(d > 0 for d in flat) else "hurts" if all(d < 0 for d in flat)
                else "no resolvable difference")
        out["code_vs_pixel"][method] = {"per_seed": dirs, "outcome": word if all_gated else "not every seed gated"}
    return out


def _unit_verdicts(per: dict, scored: list[str], all_gated: bool) -> dict:
    first = per[scored[0]]["units"]
    out: dict = {"recovery": {s: {k: per[s]["units"]["recovery"]["M"][k] for k in ("closest_unit", "cosine",
                                                                                    "f1_test", "best_f1_val")}
                              for s in scored},
                 "marker_units": {s: per[s]["units"]["marker_units"] for s in scored}, "finding": {}, "removal": {}}
    has_units = all(per[s]["units"]["marker_units"] for s in scored)
    for scorer in first["finding"]:
        seeds = {s: per[s]["units"]["finding"][scorer] for s in scored}
        out["finding"][scorer] = {"per_seed": seeds, "finds": bool(all_gated and has_units and all(
            f["precision_at_1"] == 1.0 and f["chance_at_1"] < 1.0 for f in seeds.values()))}
    for scorer, rows in first["removal"]["scorers"].items():
        out["removal"][scorer] = {}
        for n in rows:
            seeds = {s: per[s]["units"]["removal"]["scorers"][scorer][n] for s in scored}
            out["removal"][scorer][n] = {"beats_random": {s: r["beats_random"] for s, r in seeds.items()},
                                         "beats_random_every_seed": all_gated and all(r["beats_random"]
                                                                                      for r in seeds.values())}
    return out


def _across_seeds(result: dict) -> dict:
    """Per variant: the gates per seed; which methods find the shortcut (``_localisation_claim`` in every seed; the
    shortcut model and the pixel classifier), whether the sparse code helps (its twin difference minus the pixel
    classifier's, CI above 0 in every seed); the marker units per seed and which scorers rank one first in every
    seed (precision at 1 = 1, above chance); which removals beat random units in every seed."""
    out = {}
    for variant in result["variants"]:
        per = result["per_seed"][variant]
        seeds = list(per)
        scored = [s for s in seeds if per[s].get("scored")]
        all_gated = bool(seeds) and len(scored) == len(seeds)
        row = {"gates": {s: per[s]["gate"]["passed"] for s in seeds}, "all_gated": all_gated}
        if scored:
            row["localisation"] = _localisation_verdicts(per, scored, variant, all_gated)
            row["units"] = _unit_verdicts(per, scored, all_gated)
        out[variant] = row
    return out
