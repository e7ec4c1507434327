"""Generated text about the controls (``results/controls.json``): the notebook's and the docs' section
(``controls_markdown``), README's finding. No number is typed by hand; a claim is stated as the claim rule decides."""

from __future__ import annotations

from ._util import _describe
from .attribution import METHOD_LABELS
from .stats import _ci_text

_SUBSTRATE_NAMES = {"zero": "zero", "blur": "blur", "road": "ROAD"}
_COMPARED = ("pixels", "dense", "pca", "untrained")  # the representations the SAE's explanations are compared with
_WORDS = {"faithfulness": ("more faithful", "less faithful"),
          "object_focus": ("more focused on the object", "less focused on the object"),
          "gini": ("sparser (higher Gini)", "less sparse (lower Gini)"),
          "randomization": ("less changed by the randomization", "more changed by the randomization")}


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _num(x, fmt: str = ".4f") -> str:
    return "—" if x is None else f"{x:{fmt}}"


def _value_ci(v: dict, fmt: str = ".3f") -> str:
    return _ci_text({"mean": v["value"], "ci95": v["ci95"]}, fmt)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c).replace("|", "&#124;") for c in row) + " |" for row in rows]]


def _direction(summaries: list[dict]) -> int:
    """+1 if every CI lies above 0, -1 if every CI lies below 0, else 0."""
    if summaries and all(s["ci95"][0] > 0 for s in summaries):
        return 1
    if summaries and all(s["ci95"][1] < 0 for s in summaries):
        return -1
    return 0


def _model_rows(c: dict) -> list[list]:
    return [[c["labels"][r], _pct(m["test_accuracy"]), _pct(m["val_accuracy"]), _num(m["fvu"]), _num(m["val_fvu"]),
             f"{m['mean_l0']:.1f} of {m['d_code']}", m["dead_units"]] for r, m in c["models"].items()]


def _recovered(c: dict) -> list[str]:
    rec = c.get("accuracy_recovered")
    if not rec:
        return []
    parts = [f"{c['labels'][r]} {_pct(v['accuracy'])} ({100 * v['recovered']:.1f} % of it)"
             for r, v in rec.items() if r not in ("original", "shuffled")]
    return [f"**Accuracy recovered.** The raw-pixel classifier scores {_pct(rec['original'])} on the test images "
            f"and, on their reconstructions, {'; '.join(parts)}."]


def _explanation_rows(c: dict) -> list[list]:
    rows = []
    for r, e in c["explanations"].items():
        for m in e["methods"]:
            faith = [_ci_text(e["faithfulness"][s][f"{m}/signed"]["excess"]) for s in e["faithfulness"]]
            rand = e["randomization"]["final_minus_reference"][m]
            rows.append([c["labels"][r], METHOD_LABELS[m], *faith, _ci_text(e["object_focus"][m]),
                         _ci_text(e["gini"][m]), _ci_text(rand)])
    return rows


def _comparison_rows(c: dict) -> list[list]:
    """Per control and shared method: the paired differences SAE - control with CIs (signed ranking)."""
    rows = []
    for other, comp in ((r, c["comparisons"][r]) for r in _COMPARED if r in c.get("comparisons", {})):
        for m in (m for m in METHOD_LABELS if m in comp["gini"]):
            rows.append([c["labels"][other], METHOD_LABELS[m],
                         *[_ci_text(comp["faithfulness"][s][f"{m}/signed"]) for s in comp["faithfulness"]],
                         _ci_text(comp["object_focus"][m]), _ci_text(comp["gini"][m]),
                         _ci_text(comp["randomization"][m])])
    return rows


def _findings(comp: dict, m: str) -> list[str]:
    """What holds for method ``m`` against one control (``comparisons[control]``), as words; [] if nothing does."""
    subs, out = list(comp["faithfulness"]), []
    for ranking in ("signed", "abs"):
        key = f"{m}/{ranking}"
        if all(key in comp["faithfulness"][s] for s in subs):
            sign = _direction([comp["faithfulness"][s][key] for s in subs])
            if sign:
                out.append(f"{_WORDS['faithfulness'][sign < 0]} on every substrate (ranked by {ranking} value)")
    for kind in ("object_focus", "gini", "randomization"):
        sign = _direction([comp[kind][m]])
        if sign:
            out.append(("after the cascade " if kind == "randomization" else "") + _WORDS[kind][sign < 0])
    return out


def _comparison_lines(c: dict) -> list[str]:
    comps, models = c.get("comparisons", {}), c["models"]
    lines = []
    for other in (r for r in _COMPARED if r in comps):
        gap = models["sae"]["test_accuracy"] - models[other]["test_accuracy"]
        found = [f"{METHOD_LABELS[m]}: {', '.join(f)}" for m in METHOD_LABELS if m in comps[other]["gini"]
                 for f in [_findings(comps[other], m)] if f]
        lines.append(f"- Against the **{c['labels'][other]}** (test accuracy {_pct(models[other]['test_accuracy'])}; "
                     f"the SAE {100 * gap:+.2f} points), the SAE's maps are "
                     + ("; ".join(found) if found else "no different on any measure (every CI includes 0)")
                     + (". Everything else: no difference with a CI that excludes 0." if found else "."))
    return lines


def _claim_lines(c: dict) -> list[str]:
    lines = []
    for claim in c["claims"].values():
        trained = _value_ci(claim["trained"])
        same = [n for n, v in claim["controls"].items() if v["applies"] and not v["beaten"]]
        if claim["held"]:
            text = (f"**held**: the trained SAE gives {trained}, above every control with a CI of the difference above "
                    "0 (" + "; ".join(f"{c['labels'][n]}: {_value_ci(v)}, difference {_ci_text(v['difference'])}"
                                      for n, v in claim["controls"].items() if v["applies"]) + ")")
        else:
            text = (f"**not held**: the trained SAE gives {trained}; "
                    + "; ".join(f"the {c['labels'][n]} gives "
                                + ("more" if claim["controls"][n]["difference"]["ci95"][1] < 0 else
                                   "the same within the CI") + f" ({_value_ci(claim['controls'][n])}, difference "
                                f"{_ci_text(claim['controls'][n]['difference'])})" for n in same))
        skipped = [n for n, v in claim["controls"].items() if not v["applies"]]
        if skipped:
            text += (f" (the {', '.join(c['labels'][n] for n in skipped)} shares the SAE's code, so it gives the same "
                     "by construction: no control for a claim about the code)")
        lines.append(f"- {claim['label'][0].upper()}{claim['label'][1:]}: {text}.")
    return lines


_STABILITY_WORDS = {True: "more stable than", False: "less stable than", None: "no more stable than (CI includes 0)"}


def _stability_lines(c: dict) -> list[str]:
    """The seed-stability paragraph (``run_seed_stability`` in ``c["stability"]``), or nothing without one."""
    st = c.get("stability")
    if not st:
        return []
    n_alive, min_cos = sum(st["alive"]), st["min_cosine"]
    median = sorted(min_cos)[len(min_cos) // 2]
    others = " and ".join(str(s) for s in st["seeds"])
    lines = [f"**Seed stability.** The decoder atoms of seed {st['reference']} matched one-to-one to those of seeds "
             f"{others} (Hungarian assignment on cosine): {_pct(st['share_stable'])} of its {len(min_cos)} units "
             f"({sum(st['stable'])}) recur with cosine ≥ {st['threshold']} in every other seed "
             f"({_pct(st['share_stable_alive'])} of the {n_alive} that fire on a test image); the median unit's "
             f"lowest matched cosine is {median:.3f}."]
    if st.get("control"):
        ctl = st["control"]
        lines[0] += (f" Matched to the untrained dictionaries of the same seeds instead, {_pct(ctl['share_stable'])} "
                     f"recur (largest lowest cosine {ctl['max_cosine']:.3f}).")
    for name, g in st.get("groups", {}).items():
        if "undefined" in g:
            lines.append(f"- {name[0].upper()}{name[1:]} units against the rest: undefined ({g['undefined']}).")
            continue
        d = g["share_stable_difference"]
        grp, rest = g["group"], g["rest"]
        lines.append(f"- {name[0].upper()}{name[1:]} units ({grp['n']}) are {_STABILITY_WORDS[g['more_stable']]} "
                     f"the other firing units ({rest['n']}): stable {_pct(grp['share_stable'])} against "
                     f"{_pct(rest['share_stable'])}, difference {_ci_text({'mean': d['value'], 'ci95': d['ci95']})}; "
                     f"mean lowest cosine {grp['mean_cosine']:.3f} against {rest['mean_cosine']:.3f}.")
    return ["", *lines]


def _unit_rows(c: dict) -> list[list]:
    return [[c["labels"][r], f"{u['n_live']} / {u['dead']}", f"{u['n_pure']} ({_value_ci(u['pure_share'])})",
             f"{u['purity_quantiles']['0.5']:.2f}", _value_ci(u["lowers_share"]),
             _ci_text({"mean": u["agreement"]["pearson"]["value"], "ci95": u["agreement"]["pearson"]["ci95"]}),
             _ci_text(u["deletion_gap"])] for r, u in c["units"].items()]


def controls_markdown(controls: dict) -> str:
    """The controls' results as markdown (``results/controls.json`` or ``run_controls``' result): the models, accuracy
    recovered, the explanations per representation and the SAE's against each control (paired on the same images),
    and the unit claims with the rule's outcome. Every number is read from ``controls``."""
    if not isinstance(controls, dict) or "models" not in controls or "sae" not in controls.get("models", {}):
        raise ValueError("controls must be run_controls' result (results/controls.json) with the SAE's row, got "
                         f"{sorted(controls) if isinstance(controls, dict) else _describe(controls)}")
    c, img = controls, controls["images"]
    subs = list(next(iter(c["explanations"].values()))["faithfulness"]) if c["explanations"] else []
    counts = list(img["per_class"].values())
    lines = ["**Models** (test set scored once; validation split held out of training):", "",
             *_table(["representation", "test acc.", "val. acc.", "test FVU", "val. FVU", "mean L0", "dead units"],
                     _model_rows(c)), "", *_recovered(c), "",
             f"**Explanations** on {img['n_images']} test images ({img['rule']}; threshold {img['threshold']}, "
             f"{min(counts)}–{max(counts)} per class; blur and ROAD on {img['n_subset']} of them, randomization on "
             f"{img['n_randomization']}). Faithfulness: LeRF − MoRF AUC gap minus the random order's, maps ranked by "
             "signed value; object focus: share of |map| on object pixels (a uniform map: "
             f"{_ci_text(img['object_pixel_share'])}; integrated gradients from a black image is 0 wherever the pixel "
             "is, so its share is 1 by construction); Gini of |map| (Quantus' Sparseness); randomization: Spearman "
             "|maps| after the whole cascade minus a different-class reference. Mean [95 % CI]:", "",
             *_table(["representation", "method", *[f"faithfulness, {_SUBSTRATE_NAMES[s]}" for s in subs],
                      "object focus", "Gini", "randomization"], _explanation_rows(c)), "",
             "**The SAE's pixel explanations against the controls'**: differences SAE − control, paired per image "
             "(faithfulness: signed ranking), mean [95 % CI]:", "",
             *_table(["control", "method", *[f"faithfulness, {_SUBSTRATE_NAMES[s]}" for s in subs], "object focus",
                      "Gini", "randomization"], _comparison_rows(c)), "",
             "Read with the CIs (a difference is named only where its CI excludes 0, on every substrate for "
             "faithfulness):", "", *_comparison_lines(c), "",
             f"**Unit claims** (test set; unit-deletion gaps on {img['n_unit_images']} of the images, in each model's "
             "own logit units, the x-axis the share of its k code slots). A claim is held only where the trained SAE "
             "beats every control with a bootstrap CI of the difference above 0:", "",
             *_table(["representation", "live / dead units", "class-pure units (share)", "median purity",
                      "ablation lowers its class logit", "contribution–ablation Pearson", "unit-deletion gap"],
                     _unit_rows(c)), "", *_claim_lines(c), *_stability_lines(c)]
    return "\n".join(lines) + "\n"


def _controls_section(data: dict) -> list[str]:
    """``docs/results.md``'s section from ``data["controls"]`` (``results/controls.json``)."""
    c = data["controls"]
    train = {r: sum(v.get("train_seconds", {}).values()) / 60 for r, v in c["models"].items()}
    return ["## Controls: what sparsity buys",
            f"`results/controls.json`, written by `benchmarks/controls.py` ({c['device']}: this run "
            f"{c['seconds']['total'] / 60:.1f} min, with the models it found cached in `checkpoints/`; training the "
            f"controls took {sum(v for r, v in train.items() if r != 'sae'):.1f} min and the SAE pair "
            f"{train.get('sae', 0.0):.1f} min, as their checkpoints record). Six representations of the "
            "same images, each with its own 512 → 256 → C classifier trained with the default recipe on the training "
            "split: the trained SAE (the default checkpoint), raw pixels, PCA with k components (fit on the training "
            "split), the SAE's own untrained initialisation (top-k), a dense ReLU autoencoder of the same width "
            "(k = d_hidden), and the SAE with a classifier trained on shuffled labels.", "",
            controls_markdown(c).rstrip("\n")]
