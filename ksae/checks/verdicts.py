"""Pass/fail and ranks per ordering and test; what holds across substrates and seeds."""

from __future__ import annotations

from .._util import _check_result, _describe
from ..attribution import METHOD_LABELS
from .agreement import PIXEL_SETS
from .randomization import DECODER_STAGE, READS_DECODER
from .substrates import FAITH_ALPHA

# --- verdicts ------------------------------------------------------------------------------------------
# One row per (method ordering, test): does the method pass, and where does it rank? A verdict is stated
# only where it holds across every protocol measured (substrates here, seeds in
# benchmarks/verdicts_across_seeds.py); ``verdict_statements`` says where it flips.
VERDICT_TESTS = {  # test -> what passing means
    "faithful_zero": "MoRF-LeRF gap larger than the random order's (paired Wilcoxon p < alpha), zero substrate",
    "faithful_blur": "the same, blurred-copy substrate",
    "faithful_road": "the same, ROAD noisy-linear-imputation substrate",
    "object_zero": "gap larger than a random order over object pixels (paired Wilcoxon p < alpha), zero substrate",
    "object_blur": "the same, blurred-copy substrate",
    "object_road": "the same, ROAD substrate",
    "randomization_cascading": "after the whole model is re-initialised, |map| similarity (all and object pixels) "
                               "is not above the different-class reference (CI lower bound <= reference CI upper)",
    "randomization_independent": "the same after re-initialising each layer alone (every layer the method reads)",
    "completeness": "median |sum(attr) - (F(x) - F(0))| / |F(x) - F(0)| <= the completeness tolerance",
    "unit_causality": "zeroing units by contribution beats random and largest-activation orders "
                      "(deletion and insertion, logit and probability; Wilcoxon p < alpha)",
}


VERDICT_NAMES = {"faithful_zero": "deletion, zero substrate", "faithful_blur": "deletion, blur substrate",
                 "faithful_road": "deletion, ROAD substrate", "object_zero": "object-pixel control, zero",
                 "object_blur": "object-pixel control, blur", "object_road": "object-pixel control, ROAD",
                 "randomization_cascading": "the cascading randomization check",
                 "randomization_independent": "the layer-by-layer randomization check",
                 "completeness": "completeness", "unit_causality": "unit-level causality"}


def _not_above_reference(similarity: dict, reference: dict) -> bool:
    """``similarity`` (a ``summarize`` dict) has fallen to ``reference``: its CI starts at or below the
    reference's CI end."""
    return similarity["ci95"][0] <= reference["ci95"][1]


def _randomization_verdicts(rand: dict, method: str) -> dict[str, bool]:
    ref = rand["reference"][method]
    stages = [i for i, s in enumerate(rand["stages"]) if s != DECODER_STAGE or method in READS_DECODER]
    last = {p: rand["variants"]["cascading"][p][method][stages[-1]] for p in PIXEL_SETS}
    return {"randomization_cascading": all(_not_above_reference(last[p], ref[p]) for p in PIXEL_SETS),
            "randomization_independent": all(
                _not_above_reference(rand["variants"]["independent"][p][method][i], ref[p])
                for p in PIXEL_SETS for i in stages)}


def _unit_causality_passes(unit: dict, alpha: float = FAITH_ALPHA) -> bool:
    ok = True
    for mode, better in (("deletion", -1), ("insertion", 1)):
        for tests in unit["tests"][mode].values():
            ok &= all(t["p_value"] < alpha and better * t["mean_diff"] > 0 for t in tests.values())
    return bool(ok)


def verdict_table(validation: dict) -> list[dict]:
    """Rows ``{"ordering", "method", "ranking", "test", "passes", "rank", "value"}`` from ``run_validation``'s
    result: every attribution ordering (``"<method>/signed"`` or ``"/abs"``) against every test of
    ``VERDICT_TESTS`` that applies to it (completeness: integrated gradients; unit causality:
    decoder-weighted). ``rank``: position by LeRF-MoRF gap among the orderings of the same ranking (signed or |value|)
    and the controls (1 = best)."""
    validation = _check_result("validation", validation, ("faithfulness",), "the dict run_validation returns")
    faith = _check_result("validation['faithfulness']", validation["faithfulness"], ("substrates", "verdicts"),
                          "faithfulness_suite's result")
    rows = []
    for key, v in faith["verdicts"].items():
        method, ranking = key.split("/")
        base = {"ordering": key, "method": method, "ranking": ranking}
        for sub in faith["substrates"]:
            gap = faith["substrates"][sub]["orderings"][key]["gap"]["mean"]
            rows.append({**base, "test": f"faithful_{sub}", "passes": bool(v["beats_random"][sub]),
                         "rank": v["rank"][sub], "value": gap})
        rows += [{**base, "test": f"object_{sub}", "passes": bool(v["beats_random_object"][sub]), "rank": None,
                  "value": faith["substrates"][sub]["orderings"][key]["vs_random_object"]["mean_diff"]}
                 for sub in faith["substrates"]]
        rand = validation.get("randomization")
        if rand and method in rand["reference"]:
            rows += [{**base, "test": t, "passes": p, "rank": None, "value": None}
                     for t, p in _randomization_verdicts(rand, method).items()]
        comp = validation.get("completeness")
        if comp and method == "integrated":
            median = comp["table"][comp["method"]][str(comp["n_steps"])]["median_rel_error"]  # keys: str, as JSON
            rows.append({**base, "test": "completeness", "passes": median <= comp["tolerance"], "rank": None,
                         "value": median})
        if validation.get("unit_deletion") and method == "decoder":
            passes = _unit_causality_passes(validation["unit_deletion"])
            rows.append({**base, "test": "unit_causality", "passes": passes, "rank": None, "value": None})
    return rows


def _check_verdict_rows(name: str, rows) -> list[dict]:
    """``rows`` as ``verdict_table``'s rows (a list of dicts with ``ordering``, ``test`` and ``passes``, in memory
    or read back from JSON); ``ValueError`` naming ``name`` otherwise."""
    keys = ("ordering", "test", "passes")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in keys) for r in rows):
        bad = next((r for r in rows if not (isinstance(r, dict) and all(k in r for k in keys))), None) \
            if isinstance(rows, list) else None
        raise ValueError(f"{name} must be verdict_table's rows (dicts with keys {list(keys)}), got {_describe(rows)}"
                         + (f" holding {_describe(bad)}" if bad is not None else ""))
    return rows


VERDICT_FAMILIES = {"faithful_": "the random order", "object_": "a random order over object pixels"}  # per substrate


def verdict_statements(rows_per_seed: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Plain sentences from ``{seed: verdict_table rows}``: ``holds`` (passes in every seed and substrate),
    ``fails`` (fails everywhere) and ``flips`` (where it flips: which substrates or seeds). Per-substrate
    tests (``VERDICT_FAMILIES``) are stated together, naming the substrates where they hold."""
    if not isinstance(rows_per_seed, dict) or not rows_per_seed:
        raise ValueError(f"rows_per_seed must be a non-empty dict {{seed: verdict_table rows}}, got "
                         f"{_describe(rows_per_seed)}")
    for seed, rows in rows_per_seed.items():
        _check_verdict_rows(f"rows_per_seed[{seed!r}]", rows)
    seeds = list(rows_per_seed)
    by_key: dict[tuple, dict] = {}
    for seed, rows in rows_per_seed.items():
        for r in rows:
            by_key.setdefault((r["ordering"], r["test"]), {})[seed] = r["passes"]
    out = {"holds": [], "fails": [], "flips": []}
    for ordering in dict.fromkeys(k[0] for k in by_key):
        label = _verdict_label(ordering)
        for prefix, against in VERDICT_FAMILIES.items():
            family = {t[len(prefix):]: per for (o, t), per in by_key.items() if o == ordering and t.startswith(prefix)}
            if not family:  # the rows hold no test of this family for this ordering: nothing to state
                continue
            passed = [s for s, per in family.items() if all(per.values())]
            failed = [s for s, per in family.items() if not any(per.values())]
            mixed = [s for s in family if s not in passed and s not in failed]
            if len(passed) == len(family):
                out["holds"].append(f"{label} beats {against} on every substrate, in every seed ({len(seeds)}).")
            elif len(failed) == len(family):
                out["fails"].append(f"{label} does not beat {against} on any substrate.")
            else:
                parts = [f"beats {against} on {', '.join(passed)}" if passed else "",
                         f"not on {', '.join(failed)}" if failed else "",
                         f"depends on the seed on {', '.join(mixed)}" if mixed else ""]
                out["flips"].append(f"{label}: " + "; ".join(p for p in parts if p) + ".")
        for (o, t), per in by_key.items():
            if o != ordering or t.startswith(tuple(VERDICT_FAMILIES)):
                continue
            if all(per.values()):
                out["holds"].append(f"{label} passes {VERDICT_NAMES[t]} in every seed.")
            elif not any(per.values()):
                out["fails"].append(f"{label} fails {VERDICT_NAMES[t]} ({VERDICT_TESTS[t]}).")
            else:
                bad = [str(s) for s, ok in per.items() if not ok]
                out["flips"].append(f"{label}: {VERDICT_NAMES[t]} fails in seed(s) {', '.join(bad)} only.")
    return out


def _verdict_label(ordering: str) -> str:
    """'Integrated gradients (signed)' from the ordering key 'integrated/signed'."""
    method, ranking = ordering.split("/")
    return f"{METHOD_LABELS.get(method, method)} ({'|value|' if ranking == 'abs' else 'signed'})"
