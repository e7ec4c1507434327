"""Generated text about the planted shortcut (``results/shortcut.json``): the notebook's and the docs' section
(``shortcut_markdown``), README's bullet (``readme_bullet``). No number is typed by hand; a verdict is stated only as
``_across_seeds`` decides (every seed gated, the claim in every seed, against its controls)."""

from __future__ import annotations

from ._util import _check_result, _md_table
from .attribution import METHOD_LABELS
from .shortcut_units import _SCORERS
from .shortcut_verdicts import _scored_seeds

_VARIANT_LABELS = {"certified": "certified", "biased": "biased", "two_part": "two-part"}
_ROLE_LABELS = {"shortcut": "shortcut model", "twin": "clean twin", "oracle": "oracle", "pixel": "pixel classifier",
                "pixel_twin": "pixel classifier's twin", "pixel_fix": "pixel fix (M erased)"}
_SET_LABELS = {"marker_units": "the marker units (planted answer)", "closest_to_M": "the atom closest to M",
               "closest_to_C": "the atom closest to C (control)"}
_REF_LABELS = {"pixel_fix": "pixel fix: M erased at test time", "oracle": "oracle (head retrained, shortcut broken)",
               "twin": "clean twin"}


def _fmt(x, fmt: str = ".3f") -> str:
    return "—" if x is None else f"{x:{fmt}}"


def _share_text(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _across(summaries: list[dict | None], fmt: str = ".3f", key: str = "mean") -> str:
    """'m [lo, hi]': the mean over seeds of each seed's value and the envelope of the seeds' 95 % CIs (the lowest
    lower and highest upper bound); '—' when undefined."""
    values = [s for s in summaries if s and s.get(key) is not None]
    if not values:
        return "—"
    mean = sum(s[key] for s in values) / len(values)
    lows = [s["ci95"][0] for s in values if s.get("ci95") and s["ci95"][0] is not None]
    highs = [s["ci95"][1] for s in values if s.get("ci95") and s["ci95"][1] is not None]
    band = f" [{min(lows):{fmt}}, {max(highs):{fmt}}]" if lows and highs else ""
    return f"{mean:{fmt}}{band}"


def _key_measure(variant: str) -> tuple[str, str]:
    return ("worst_group", "worst-group accuracy") if variant == "biased" else ("acc_two", "Shirt/T-shirt accuracy")


def _key_value(_variant_metrics: dict, variant: str) -> dict | None:
    key, _ = _key_measure(variant)
    v = _variant_metrics.get(key)
    return v if isinstance(v, dict) or v is None else {"mean": v}


def _gate_lines(r: dict) -> list[str]:
    rows = []
    for v in r["variants"]:
        g = r["gates"][v]
        per = r["per_seed"][v]
        cells = [f"{_fmt(p['gate']['value'])} / {_fmt(p['gate']['test_value'])} "
                 f"{'passed' if p['gate']['passed'] else '**failed**'}" for p in per.values()]
        rows.append([_VARIANT_LABELS[v], f"{g['rule']} (≥ {g['threshold']})", *cells])
    return _md_table(["variant", "gate", *[f"seed {s}: validation / test" for s in r["seeds"]]], rows)


def _model_lines(r: dict) -> list[str]:
    rows = []
    for v in r["variants"]:
        per = _scored_seeds(r, v)
        if not per:
            continue
        for role in _ROLE_LABELS:
            ms = [p["models"][role]["test"] for p in per.values() if role in p["models"]]
            rows.append([_VARIANT_LABELS[v], _ROLE_LABELS[role], _share_text(sum(m["accuracy"] for m in ms) / len(ms)),
                         f"{_key_measure(v)[1]}: {_across([_key_value(m, v) for m in ms])}",
                         _across([m["fp"] for m in ms]), _across([m["fn"] for m in ms])])
    return _md_table(["variant", "model", "accuracy (planted test set)", "key measure", "false positives",
                   "false negatives"], rows)


def _localisation_lines(r: dict, variant: str) -> list[str]:
    per, summary = _scored_seeds(r, variant), r["summary"][variant]["localisation"]
    regions = ("M", "C") if variant == "two_part" else ("M",)
    rows = []
    for m, claim in summary["shortcut"].items():
        locs = [p["localisation"] for p in per.values()]
        cells = []
        for region in regions:
            cells += [_across([loc["models"]["shortcut"][m]["mass"][region] for loc in locs]),
                      _across([loc["twin_difference"][m]["mass"][region] for loc in locs])]
        if variant != "two_part":
            cells += [_across([loc["models"]["shortcut"][m]["mass"]["C"] for loc in locs]),
                      _across([loc["models"]["twin"][m]["mass"]["M"] for loc in locs])]
        pixel = summary["pixel"].get(m)
        cells += [_across([loc["pixel_twin_difference"][m]["mass"]["M"] for loc in locs]) if pixel else "—",
                  "**finds**" if claim["finds"] else "no", ("**finds**" if pixel["finds"] else "no") if pixel else "—",
                  summary["code_vs_pixel"].get(m, {}).get("outcome", "—")]
        rows.append([METHOD_LABELS.get(m, m), *cells])
    head = [h for region in regions for h in (f"mass on {region}", f"minus twin, on {region}")]
    if variant != "two_part":
        head += ["false alarm: mass on C", "false alarm: twin's mass on M"]
    return _md_table(["method", *head, "pixel classifier minus its twin, on M", "shortcut model", "pixel classifier",
                   "sparse code vs pixels"], rows)


def _unit_lines(r: dict, variant: str) -> list[str]:
    per, summary = _scored_seeds(r, variant), r["summary"][variant]["units"]
    lines = []
    for s, p in per.items():
        rec, twin = p["units"]["recovery"], p["units"]["recovery_twin"]
        lines.append(f"- Seed {s}: the atom closest to M is unit {rec['M']['closest_unit']} (cosine "
                     f"{rec['M']['cosine']:.3f}; as a detector of M on the test images F1 {rec['M']['f1_test']:.3f}; "
                     f"the clean twin's closest atom: cosine {twin['M']['cosine']:.3f}, "
                     f"F1 {twin['M']['f1_test']:.3f}). "
                     f"Marker units (validation F1 ≥ the threshold): {p['units']['marker_units'] or 'none'}. "
                     + "; ".join(f"{name}: marker unit at rank {f['marker_rank']}, C's unit at {f['control_rank']}"
                                 for name, f in p["units"]["finding"].items()) + ".")
    rows = [[name, _SCORERS[name], " / ".join(_fmt(f["precision_at_1"], ".0f") for f in c["per_seed"].values()),
             " / ".join(_fmt(f["chance_at_1"], ".3f") for f in c["per_seed"].values()),
             "**finds the marker unit**" if c["finds"] else "no"] for name, c in summary["finding"].items()]
    return lines + ["", *_md_table(["scorer", "what it ranks by", "precision at 1 (per seed)", "chance at 1",
                                 "every seed"], rows)]


def _removal_cells(rows: list[dict], variant: str) -> list[str]:
    ratio = [{"mean": x["ratio"]["value"], "ci95": x["ratio"]["ci95"]} if x.get("ratio") else None for x in rows]
    return [_across([_key_value(x["metrics"], variant) for x in rows]), _across([x["metrics"]["fp"] for x in rows]),
            _across([x["metrics"]["fn"] for x in rows]), _across(ratio), _across([x["collateral"] for x in rows])]


def _removal_lines(r: dict, variant: str) -> list[str]:
    per, summary = _scored_seeds(r, variant), r["summary"][variant]["units"]["removal"]
    rows = []
    first = next(iter(per.values()))["units"]
    for name in first["removal"]["scorers"]:
        for n, verdict in summary[name].items():
            got = [p["units"]["removal"]["scorers"][name][n] for p in per.values()]
            band = [p["units"]["removal"]["random"][n]["ratio"] for p in per.values()]
            random = f"{_across(band)} (draws' 95 % range: {min(_fmt(b['q025']) for b in band)} to " \
                     f"{max(_fmt(b['q975']) for b in band)})"
            rows.append([f"{name}, top {n}", *_removal_cells(got, variant), random,
                         f"{sum(verdict['beats_random'].values())} of {len(verdict['beats_random'])}"])
    for name in first["removal"]["sets"]:
        got = [p["units"]["removal"]["sets"][name] for p in per.values() if name in p["units"]["removal"]["sets"]]
        rows.append([_SET_LABELS.get(name, name), *_removal_cells(got, variant), "", ""])
    for name in first["reference"]:
        rows.append([_REF_LABELS[name], *_removal_cells([p["units"]["reference"][name] for p in per.values()],
                                                         variant), "", ""])
    if "shift" in first:
        for n in first["shift"]["heads"]:
            got = [p["units"]["shift"]["heads"][n] for p in per.values()]
            scorer = ", ".join(sorted({p["units"]["shift"]["scorer"] for p in per.values()}))
            rows.append([f"SHIFT: top {n} of {scorer}, head retrained", *_removal_cells(got, variant), "", ""])
    ratio = "cure ratio (vs oracle)" if variant == "biased" else "reliance removed"
    return _md_table(["units removed", _key_measure(variant)[1], "false positives", "false negatives", ratio,
                   "collateral (other classes)", f"random units: {ratio}", "beats random (seeds)"], rows)


def _statements(r: dict, variant: str) -> list[str]:
    s = r["summary"][variant]
    name = _VARIANT_LABELS[variant]
    if not s["all_gated"]:
        failed = [seed for seed, ok in s["gates"].items() if not ok]
        return [f"- **{name}**: the gate failed in seed(s) {', '.join(failed)}: the model does not provably use the "
                "shortcut there, so no verdict is stated" + (" (the scores of the seeds that passed are reported "
                                                              "above)." if "localisation" in s else ".")]
    loc, units = s["localisation"], s["units"]
    finds = [METHOD_LABELS.get(m, m) for m, c in loc["shortcut"].items() if c["finds"]]
    misses = [METHOD_LABELS.get(m, m) for m, c in loc["shortcut"].items() if not c["finds"]]
    pixel = [METHOD_LABELS.get(m, m) for m, c in loc["pixel"].items() if c["finds"]]
    helps = {w: [METHOD_LABELS.get(m, m) for m, c in loc["code_vs_pixel"].items() if c["outcome"] == w]
             for w in ("helps", "hurts", "no resolvable difference")}
    scorers = [n for n, c in units["finding"].items() if c["finds"]]
    removals = [f"{n} top {k}" for n, by in units["removal"].items() for k, v in by.items()
                if v["beats_random_every_seed"]]
    return [f"- **{name}** (gate passed in every seed): finds the shortcut on the sparse-code pipeline (relevance mass "
            f"on the shortcut's marker above chance, above the clean twin's and, where C is a control, above the mass "
            f"on C, in every seed): {', '.join(finds) or 'none'}; does not: {', '.join(misses) or 'none'}. On the "
            f"pixel classifier: {', '.join(pixel) or 'none'}. Going through the sparse code "
            + "; ".join(f"{w} for {', '.join(ms)}" for w, ms in helps.items() if ms) + ". "
            f"Scorers that rank a marker unit first in every seed: {', '.join(scorers) or 'none'}. Removals at "
            f"inference that beat random units in every seed: {', '.join(removals) or 'none'}."]


def _recipe_line(r: dict) -> list[str]:
    """The classifier recipe of the study's models and, when it was chosen for the budget, how."""
    cfg, rec = r["config"], r.get("recipe") or {}
    line = (f"**Recipe.** Every model with the default recipe ({cfg['ae_epochs']} autoencoder epochs) and "
            f"{cfg['clf_epochs']} classifier epochs")
    if "validation_accuracy" in rec and rec["chosen"] != rec["default"]:
        va = rec["validation_accuracy"]
        parts = "; ".join(f"{e} epochs: SAE head {_share_text(v['sae'])}, pixel head {_share_text(v['pixels'])}"
                          for e, v in va.items())
        line += (f" instead of the default {rec['default']}, for the compute budget, chosen on the validation split "
                 f"({rec['rule']}; tolerance {100 * rec['tolerance']:.2f} points, the default heads' validation "
                 f"accuracy across seeds ranging over it): {parts}.")
    elif "validation_accuracy" in rec:
        line += f": no candidate of {rec['candidates']} stayed within the tolerance ({rec['rule']})."
    else:
        line += "."
    return [line, ""]


def shortcut_markdown(shortcut: dict) -> str:
    """The planted-shortcut study as markdown (``results/shortcut.json`` or ``run_shortcut``'s result): the markers,
    the gates, the models, which explanation finds the shortcut, which units carry it, what removing them does, and
    the verdicts. Every number is read from ``shortcut``."""
    r = _check_result("shortcut", shortcut, ("variants", "per_seed", "summary", "markers", "sizes"),
                      "run_shortcut's result (results/shortcut.json)")
    mk = r["markers"]
    lines = [*_recipe_line(r),
             f"**Markers.** M: a {mk['M']['size']} × {mk['M']['size']} patch of value {mk['M']['value']} at row "
             f"{mk['M']['row']}, column {mk['M']['col']}; C (control): the same at row {mk['C']['row']}, column "
             f"{mk['C']['col']}. In the unmarked training images M's pixels are background in all but "
             f"{_share_text(mk['M']['above_threshold_share'])} (any pixel > {mk['M']['threshold']}; "
             f"{_share_text(mk['M']['nonzero_share'])} have any pixel > 0), C's in all but "
             f"{_share_text(mk['C']['above_threshold_share'])} ({_share_text(mk['C']['nonzero_share'])}); their "
             "salience, the mean "
             f"contrast they make with the pixels they cover: M {mk['M']['contrast']:.3f}, "
             f"C {mk['C']['contrast']:.3f}.",
             "", "**Gates** (the shortcut model's use of M, certified on the validation split before anything is "
             "scored; the test set's value beside it):", "", *_gate_lines(r), "",
             "**Models** on each variant's planted test set (mean over the scored seeds [envelope of the seeds' 95 % "
             "CIs]; false positives: images of other classes carrying M taken for Shirt; false negatives: Shirts "
             "without M not taken for Shirt):", "", *_model_lines(r)]
    n = r["sizes"]["n_images"]
    for v in r["variants"]:
        if not _scored_seeds(r, v):
            lines += ["", f"### {_VARIANT_LABELS[v]}: not scored (the gate failed in every seed)"]
            continue
        chance = next(iter(_scored_seeds(r, v).values()))["localisation"]["chance"]["M"]
        lines += ["", f"### {_VARIANT_LABELS[v]}", "",
                  f"**Which explanation finds it** ({n} marked test images explained for Shirt; relevance mass "
                  f"accuracy on the positive part; chance {chance:.4f}; "
                  "mean over seeds [envelope of the seeds' 95 % CIs]):", "", *_localisation_lines(r, v), "",
                  "**Which units carry it** (scorers ranked on the validation split):", "", *_unit_lines(r, v), "",
                  "**Removing them** (test set; units zeroed at inference unless said; random units: "
                  f"{r['sizes']['n_random']} draws of as many units among those active on the marked validation "
                  "images):", "", *_removal_lines(r, v)]
    lines += ["", "**What holds across seeds** (a verdict needs every seed's gate and the claim in every seed against "
              "its controls):", "", *[x for v in r["variants"] for x in _statements(r, v)]]
    return "\n".join(lines) + "\n"


def readme_bullet(data: dict) -> str:
    """README's one bullet about the planted shortcut: from ``results/shortcut.json`` (or the docs' inputs, with it
    under ``"shortcut"``): the gates, which methods find the shortcut, whether the sparse code helps, whether the
    scorers find the marker unit, and whether removing it beats random units, with the certified variant's mass on M
    minus the clean twin's (integrated gradients) and its CI envelope across seeds."""
    r = data.get("shortcut", data) if isinstance(data, dict) and "per_seed" not in data else data
    if not isinstance(r, dict) or not isinstance(r.get("summary"), dict) or not isinstance(r.get("per_seed"), dict):
        raise ValueError("data must be results/shortcut.json (run_shortcut's result) or the docs' inputs holding it "
                         "under 'shortcut'")
    parts = []
    for v in r["variants"]:
        s = r["summary"][v]
        if not s["all_gated"]:
            parts.append(f"{_VARIANT_LABELS[v]}: its gate failed in some seed, so nothing is claimed")  # "gate failed"
            continue
        methods = s["localisation"]["shortcut"]
        finds = [m for m, c in methods.items() if c["finds"]]
        scorers = s["units"]["finding"]
        units = [n for n, c in scorers.items() if c["finds"]]
        cures = [(int(k), n) for n, by in s["units"]["removal"].items() for k, c in by.items()
                 if c["beats_random_every_seed"]]
        found = (f"{len(finds)} of {len(methods)} methods find it" if len(finds) < len(methods)
                 else f"all {len(methods)} methods find it")
        unit = (f"{len(units)} of {len(scorers)} unit scorers rank the marker's unit first" if units
                else "no unit scorer ranks the marker's unit first")
        cure = (f"zeroing the top {min(cures)[0]} unit{'s' * (min(cures)[0] > 1)} by {min(cures)[1]} beats as many "
                "random units" if cures else "no unit removal beats random units")
        parts.append(f"{_VARIANT_LABELS[v]}: {found}, {unit}, {cure}")
    lead = ""
    per = _scored_seeds(r, "certified") if "certified" in r["variants"] else {}
    if per:
        diff = _across([p["localisation"]["twin_difference"]["integrated"]["mass"]["M"] for p in per.values()])
        lead = (f" (certified, integrated gradients: relevance on the marker minus the clean twin's on the same images "
                f"{diff})")
    side = r["markers"]["M"]["size"]
    return (f"- **A planted shortcut: which explanation finds a known answer.** A {side} × {side} marker the model "
            "provably uses "
            f"(every claim held against the clean twin and random units in each of seeds "
            f"{', '.join(map(str, r['seeds']))}): " + "; ".join(parts) + lead +
            " — [localisation figure](figures/shortcut_localisation.png), "
            "[tables](docs/results.md#planted-shortcut).")


def _shortcut_section(data: dict) -> list[str]:
    """``docs/results.md``'s section from ``data["shortcut"]`` (``results/shortcut.json``)."""
    r = data["shortcut"]
    return ["## Planted shortcut",
            f"`results/shortcut.json`, written by `benchmarks/shortcut.py` ({r['device']}: this run "
            f"{r['seconds']['total'] / 60:.1f} min with the models it found cached in `checkpoints/`). Three variants "
            "planted into Fashion-MNIST by one seeded function (`plant_shortcut`); per variant and seed the shortcut "
            "pipeline (autoencoder and classifier trained on the marked images with the default recipe), its clean "
            "twin (the same seed on the unmarked images), the oracle (the classifier retrained on the same codes with "
            "the shortcut broken) and the raw-pixel classifier with its twin. The explorer page of the certified "
            "shortcut model, its marker unit removed: [shortcut_explorer.png](shortcut_explorer.png).", "",
            shortcut_markdown(r).rstrip("\n")]
