"""README's findings block, as ``python -m ksae.docs`` writes it from the committed JSON: at most
``README_MAX_BULLETS`` short bullets in plain words, each with its number (its 95 % CI where it has one) and a link
to the figure or table that shows it, in the order a reader needs them: what the model does, which explanation to
trust and where, what the units are and are not, what sparsity buys. The full tables stay in docs/results.md.

``README_BULLETS`` is the ordered registry: each entry is ``fn(data) -> str | None`` over the docs' inputs (``None``:
nothing to say, the bullet is skipped). A study adds its finding as ``readme_bullet(data)`` in its own report module
and an entry ``_study(module, input name)`` here, at its place in the order; the entry is skipped while that module or
its results file is absent. Also the verdict grouping docs/results.md states the verdicts with.
"""

from __future__ import annotations

import importlib

from .attribution import METHOD_LABELS
from .checks.verdicts import _verdict_label, verdict_statements
from .config import Config
from .control_study import _CLAIM_PURITY
from .controls_report import _findings
from .stats import _ci_text

README_MAX_BULLETS = 12  # the findings block stays short: every bullet, the studies' included
FAMILIES = ("faithful_", "object_")  # per-substrate tests that verdict_statements states together
RESULTS_DOC_LINK = "docs/results.md"  # README's link to the full tables

# --- formatting ---------------------------------------------------------------------------------------------
_pct = lambda x, digits=2: "—" if x is None else f"{100 * x:.{digits}f} %"
_num = lambda x, fmt=".4f": "—" if x is None else f"{x:{fmt}}"
_family = lambda test: next((p for p in FAMILIES if test.startswith(p)), test)


def _pct_ci(summary: dict, digits: int = 1, mean: str = "mean") -> str:
    """'21.3 % [20.0, 22.5]' of a summary (``mean`` or ``value``, ``ci95``) of shares."""
    lo, hi = summary["ci95"]
    return f"{100 * summary[mean]:.{digits}f} % [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def _span(values: list[float], fmt) -> str:
    """'a–b %' of the smallest and largest value, formatted by ``fmt``; one value if they print the same."""
    lo, hi = fmt(min(values)), fmt(max(values))
    unit = next((u for u in (" %", " s") if lo.endswith(u) and hi.endswith(u)), "")
    return lo if lo == hi else f"{lo[:len(lo) - len(unit)]}–{hi}"


def _orderings_text(keys: list[str], every: list[str]) -> str:
    """'every ordering (12)', or 'Integrated gradients, SmoothGrad (signed and |value|); Simple gradients (|value|)':
    the methods grouped by the rankings named."""
    if sorted(keys) == sorted(every):
        return f"all {len(every)} orderings"
    rankings: dict[str, list[str]] = {}
    for key in keys:
        method, ranking = key.split("/")
        rankings.setdefault(method, []).append("|value|" if ranking == "abs" else ranking)
    groups: dict[str, list[str]] = {}
    for method, named in rankings.items():
        groups.setdefault(" and ".join(named), []).append(METHOD_LABELS.get(method, method))
    return "; ".join(f"{', '.join(methods)} ({named})" for named, methods in groups.items())


def _link(text: str, target: str) -> str:
    return f"[{text}]({target})"


def _anchor(heading: str) -> str:
    """``docs/results.md#the-default-run``: the link to a section of the results document (GitHub's anchors)."""
    slug = "".join(c for c in heading.lower() if c.isalnum() or c in " -_").replace(" ", "-")
    return f"{RESULTS_DOC_LINK}#{slug}"


# --- verdicts, in the project's own words ------------------------------------------------------------------
def seeds_of_this_run(data: dict) -> dict[str, list[dict]] | None:
    """``{seed: verdict rows}`` of the seeds file when it was measured with the default run's configuration (every
    field both record, but the seed and the knobs of other autoencoder kinds); None when it describes another
    configuration."""
    seeds, summary = data["seeds"], data["summary"]
    mine, theirs = summary["config"], seeds.get("config", {})
    other_kinds = set(Config.from_dict(mine, saved=True).not_applicable())  # knobs its kind never reads
    if all(mine[f] == theirs[f] for f in set(mine) & set(theirs) - {"seed"} - other_kinds):
        return {s: run["rows"] for s, run in seeds["per_seed"].items()}
    return None


def verdict_groups(rows_per_seed: dict[str, list[dict]]) -> dict[str, dict[tuple[str, str], list[str]]]:
    """``{"holds"|"fails"|"flips": {(family, claim): [ordering, ...]}}``: ``verdict_statements`` asked about each
    ordering and test family alone, its sentence's claim (the text after the ordering's label) grouped."""
    orderings = list(dict.fromkeys(r["ordering"] for rows in rows_per_seed.values() for r in rows))
    families = list(dict.fromkeys(_family(r["test"]) for rows in rows_per_seed.values() for r in rows))
    groups: dict[str, dict[tuple[str, str], list[str]]] = {"holds": {}, "fails": {}, "flips": {}}
    for family in families:
        for ordering in orderings:
            subset = {s: [r for r in rows if r["ordering"] == ordering and _family(r["test"]) == family]
                      for s, rows in rows_per_seed.items()}
            for kind, sentences in (verdict_statements(subset) if any(subset.values()) else {}).items():
                for sentence in sentences:
                    claim = sentence[len(_verdict_label(ordering)):].lstrip(": ").rstrip(".")
                    groups[kind].setdefault((family, claim), []).append(ordering)
    return groups


def first_places(stability: list[dict]) -> dict[str, list[str]]:
    """``{test: [orderings ranked 1st in every seed]}`` for the ranked (deletion) tests."""
    ranked = dict.fromkeys(e["test"] for e in stability if any(v is not None for v in e["rank"].values()))
    return {t: [e["ordering"] for e in stability if e["test"] == t and set(e["rank"].values()) == {1}]
            for t in ranked}


def _verdicts(data: dict) -> tuple[dict, list[str], str]:
    """``(verdict_groups, every ordering, 'in every training seed (0, 1, 2)' or 'in the default run')``."""
    per_seed = seeds_of_this_run(data)
    rows = per_seed or {"this run": data["summary"]["verdicts"]}
    every = list(dict.fromkeys(r["ordering"] for r in next(iter(rows.values()))))
    where = (f"in every training seed ({', '.join(map(str, data['seeds']['seeds']))})" if per_seed
             else "in the default run (the seeds file has another configuration)")
    return verdict_groups(rows), every, where


def _grouped(groups: dict, kind: str, family: str) -> dict[str, list[str]]:
    """``{claim: orderings}`` of one kind (holds, fails, flips) and test family."""
    return {claim: keys for (f, claim), keys in groups[kind].items() if f == family}


def _orderings(groups: dict, kind: str, family: str) -> list[str]:
    """Every ordering of one kind (holds, fails, flips) and test family, whatever its claim."""
    return [k for keys in _grouped(groups, kind, family).values() for k in keys]


# --- the bullets --------------------------------------------------------------------------------------------
SUBSTRATE_WORDS = {"zero": "set to 0", "blur": "blurred", "road": "imputed (ROAD)"}  # how a deleted pixel is filled


def _methods(keys: list[str]) -> str:
    """'Integrated gradients, SmoothGrad': the methods of some orderings, each once."""
    return ", ".join(dict.fromkeys(METHOD_LABELS.get(m, m) for m in (k.split("/")[0] for k in keys)))


def _either(words: list[str]) -> str:
    """'a, b or c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def model_bullet(data: dict) -> str:
    """What the model does: the reconstruction, the accuracy from the code alone, their spread across seeds."""
    s = data["summary"]
    cfg, ae, clf = s["config"], s["autoencoder"], s["classifier"]
    per_seed = seeds_of_this_run(data) and data["seeds"]["per_seed"].values()
    spread = (f" ({_span([r['test_accuracy'] for r in per_seed], _pct)} across training seeds "
              f"{', '.join(map(str, data['seeds']['seeds']))})" if per_seed else "")
    return (f"- **What the model does.** It rebuilds each test image from {cfg['k']} of {cfg['d_hidden']} code units, "
            f"leaving {_pct(ae['fvu'], 1)} of the pixel variance unexplained (FVU {ae['fvu']:.4f}; "
            f"{ae['dead_units']} dead units), and a classifier that reads only that code gets "
            f"{_pct(clf['test_accuracy'])} of the test images right{spread} — "
            f"{_link('reconstructions', 'figures/reconstructions.png')}, "
            f"{_link('confusion matrix', 'figures/confusion_matrix.png')}.")


def deletion_bullet(data: dict) -> str:
    """Which maps pass the deletion test on every substrate and in every seed, which on some, and the largest gap."""
    groups, every, where = _verdicts(data)
    faith = data["summary"]["validation"]["faithfulness"]
    holds = _orderings(groups, "holds", "faithful_")
    flips = "".join(f" For {_orderings_text(keys, every)}: {claim}."
                    for claim, keys in _grouped(groups, "flips", "faithful_").items())
    filled = _either([SUBSTRATE_WORDS.get(name, name) for name in faith["substrates"]])
    zero = faith["substrates"].get("zero")
    best = ""
    if zero:
        top = zero["ranking"]["signed"][0]
        best = (f" Largest gap (pixels set to 0): {_verdict_label(top)} {_ci_text(zero['orderings'][top]['gap'])}, "
                f"random order {_ci_text(zero['orderings']['random']['gap'])}.")
    return (f"- **Which maps are faithful.** Deleting the pixels a map ranks first lowers the prediction faster than "
            f"deleting random pixels — deleted pixels {filled}, {where} — for "
            f"{_orderings_text(holds, every) if holds else 'no map'}.{flips}{best} "
            f"{_link('Deletion curves', 'figures/faithfulness.png')}, "
            f"{_link('verdicts', _anchor('Verdicts: what survives a change of protocol'))}.")


def object_bullet(data: dict) -> str:
    """Whether any map beats knowing where the object is (the random order over object pixels), and how much of
    the least object-focused map lies on the object."""
    groups, every, where = _verdicts(data)
    holds = _orderings(groups, "holds", "object_")
    focus = dict(data["summary"]["validation"]["object_focus"])
    share = focus.pop("object_pixel_share")
    least = min(focus, key=lambda m: focus[m]["mean"])
    verdict = f"Only {_orderings_text(holds, every)} beat" if holds else "No map beats"
    return (f"- **Beyond finding the object.** {verdict} deleting the object's own pixels (x > 0) in random order on "
            f"every substrate {where}. The least object-focused map ({METHOD_LABELS.get(least, least)}) puts "
            f"{_pct_ci(focus[least])} of its |attribution| on the object, which covers {_pct_ci(share)} of the image "
            f"— {_link('object focus', 'figures/object_focus.png')}.")


def randomization_bullet(data: dict) -> str:
    """The model-randomization sanity check: which maps stay the same once every weight is redrawn."""
    groups, every, where = _verdicts(data)
    passes, fails = (_orderings(groups, kind, "randomization_cascading") for kind in ("holds", "fails"))
    layer = _orderings(groups, "fails", "randomization_independent")
    rand = data["summary"]["validation"]["randomization"]
    if fails:
        m = fails[0].split("/")[0]
        text = (f"The maps of {_orderings_text(fails, every)} stay close to the trained model's when every weight is "
                f"redrawn ({METHOD_LABELS.get(m, m)}: Spearman "
                f"{_ci_text(rand['variants']['cascading']['all'][m][rand['stages'].index('encoder')])}, against "
                f"{_ci_text(rand['reference'][m]['all'])} between two images of different classes), so they fail the "
                f"check {where}")
    else:
        text = f"No map fails the check {where}"
    text += f"; {_orderings_text(passes, every)} pass it" if passes else ""
    text += f". Redrawn one layer at a time, {_orderings_text(layer, every)} fail" if layer else ""
    return (f"- **Randomization check.** {text} — {_link('randomization figure', 'figures/randomization.png')}, "
            f"{_link('table', _anchor('Randomization'))}.")


def completeness_bullet(data: dict) -> str:
    """Integrated gradients' completeness, and the top-k jumps that explain its error."""
    groups, _, _ = _verdicts(data)
    comp = data["summary"]["validation"]["completeness"]
    rel = comp["relative"]
    fails = any(f == "completeness" for f, _ in groups["fails"])
    return (f"- **Integrated gradients {'does not add' if fails else 'adds'} up to the prediction.** Along its path "
            f"from a black image the top-k code switches units on and off; those jumps carry "
            f"{_pct_ci(rel['jump_sum'])} of F(x) − F(0) and IG misses {_pct_ci(rel['ig_error'])}: the miss equals "
            f"minus the jumps within {_pct(comp['tolerance'], 0)} for {_pct(comp['share_within_tolerance'], 0)} of "
            f"{comp['summary']['gap']['n']} images — {_link('completeness figure', 'figures/completeness.png')}.")


def unit_causality_bullet(data: dict) -> str:
    """Zeroing code units in the order of their contribution against random order."""
    groups, _, where = _verdicts(data)
    passes = _orderings(groups, "holds", "unit_causality")
    u = data["summary"]["validation"]["unit_deletion"]
    auc = u["auc"]["deletion"]["logit"]
    verdict = (f"lowers its logit faster than random order, {where}" if passes
               else f"does not lower its logit faster than random order {where}")
    return (f"- **Unit contributions are {'' if passes else 'not shown to be '}causal.** Zeroing a prediction's "
            f"active units in the order of their {_methods(passes) if passes else 'decoder-weighted'} contribution, "
            f"largest first, {verdict}: "
            f"area under the logit curve {_ci_text(auc['contribution'], '.2f')} against "
            f"{_ci_text(auc['random'], '.2f')} ({u['n_images']} images) — "
            f"{_link('unit deletion figure', 'figures/unit_deletion.png')}.")


def _same_as(c: dict, name: str) -> list[str]:
    """The controls that give the same as the trained SAE for claim ``name``."""
    return [c["labels"][n] for n, v in c["claims"][name]["controls"].items() if v["applies"] and not v["beaten"]]


def units_bullet(data: dict) -> str | None:
    """What a unit is (class-pure, its contribution predicts its ablation) and is not (specific to sparsity where a
    control gives the same; stable across training seeds), from the controls."""
    c, units = data.get("controls"), data["summary"]["units"]
    if not c or "pure_share" not in c.get("claims", {}):
        return None
    pure, pearson, agree = c["claims"]["pure_share"], units["agreement"]["pearson"], c["claims"].get("agreement")
    in_the = lambda claim: "in the " + " and in the ".join(_same_as(c, claim))
    text = (f"- **What a unit is and is not.** {_pct_ci(pure['trained'], mean='value')} of the live units are "
            f"class-pure (≥ {_pct(_CLAIM_PURITY, 0)} of the images they fire on share a class), "
            + ("more than in every control" if pure["held"] else "as " + in_the("pure_share"))
            + "; a unit's mean contribution predicts how much its class's logit drops when it is zeroed (Pearson "
            f"{_ci_text({**pearson, 'mean': pearson['value']})}, {units['agreement']['n_units']} units)")
    if agree:
        text += (", more than in every control" if agree["held"] else
                 f", but it does as well {in_the('agreement')}: not a property of the sparse code")
    st = c.get("stability")
    if st:
        control = st.get("control", {}).get("share_stable")
        text += (f"; only {_pct(st['share_stable'])} of the units recur (cosine ≥ {st['threshold']}) when the training "
                 f"seed changes" + (f" (untrained dictionaries: {_pct(control)})" if control is not None else ""))
    return text + (f" — {_link('unit browser', 'figures/unit_browser.html')}, "
                   f"{_link('controls figure', 'figures/controls_units.png')}.")


def sparsity_bullet(data: dict) -> str | None:
    """What the sparse code buys against the controls: accuracy from each representation, and how the SAE's
    integrated-gradients maps differ from the raw-pixel and dense models' (paired differences whose CI excludes 0)."""
    c = data.get("controls")
    if not c or "sae" not in c.get("models", {}):
        return None
    models, labels, comps = c["models"], c["labels"], c.get("comparisons", {})
    accuracy = ", ".join(f"{labels[r]} {_pct(models[r]['test_accuracy'])}"
                         for r in ("pixels", "pca", "dense", "untrained") if r in models)
    maps = []
    for other in ("pixels", "dense"):
        comp = comps.get(other)
        if comp and "integrated" in comp.get("gini", {}):
            gini = f" (Gini difference {_ci_text(comp['gini']['integrated'], '.4f')})" if other == "pixels" else ""
            maps.append(f"against a classifier on the {labels[other]}{gini}: "
                        + (", ".join(_findings(comp, "integrated")) or "no different"))
    return (f"- **What sparsity buys.** A classifier reading the sparse code gets "
            f"{_pct(models['sae']['test_accuracy'])} of the test images right; reading {accuracy}."
            + (f" The SAE's integrated-gradients maps, paired on the same images: {'; '.join(maps)}." if maps else "")
            + f" {_link('Controls figure', 'figures/controls_models.png')}, "
            f"{_link('tables', _anchor('Controls: what sparsity buys'))}.")


def k_sweep_bullet(data: dict) -> str:
    """Reconstruction, accuracy and dead units across the sparsity sweep."""
    rows = sorted(data["k_sweep"]["rows"], key=lambda r: r["k"])
    return (f"- **How many active units.** From k = {rows[0]['k']} to k = {rows[-1]['k']} active units: test FVU "
            f"{_num(rows[0]['fvu'])} → {_num(rows[-1]['fvu'])}, test accuracy "
            f"{_span([r['test_accuracy'] for r in rows], _pct)}, at most {max(r['dead_units'] for r in rows)} dead "
            f"units — {_link('k sweep figure', 'figures/k_sweep.png')}, {_link('table', _anchor('The k sweep'))}.")


def _study(module: str, name: str, part: str | None = None):
    """The bullet of another study: ``ksae.<module>.readme_bullet`` over the docs' inputs (``part``: over that input
    alone); skipped (None) while the module or its results (``data[name]``, an entry of ``docs.INPUTS``) is absent."""
    def bullet(data: dict) -> str | None:
        if data.get(name) is None:
            return None
        try:
            found = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError:
            return None
        return found.readme_bullet(data[part] if part else data)

    bullet.__name__ = bullet.__qualname__ = f"{module}.readme_bullet"
    return bullet


README_BULLETS = (  # in the order a reader needs them; each fn(docs' inputs) -> one line "- ..." or None
    model_bullet,  # what the model does
    deletion_bullet, object_bullet, randomization_bullet, completeness_bullet,  # which explanation to trust, where
    _study("perturbation_report", "seeds", part="seeds"),  # occlusion, SHAP, LIME (the seeds file holds them)
    _study("shortcut_report", "shortcut"),  # a planted shortcut: an answer known in advance
    unit_causality_bullet, units_bullet,  # what the units are and are not
    _study("variants_report", "variants"),  # other sparse autoencoders
    sparsity_bullet, k_sweep_bullet,  # what sparsity buys
)


def findings_block(data: dict, bullets=README_BULLETS) -> str:
    """README's findings: one line per bullet function of ``bullets`` that has something to say (at most
    ``README_MAX_BULLETS``); ``ValueError`` if a bullet is not one line starting with ``- ``."""
    bullets = [text for fn in bullets if (text := fn(data)) is not None]
    for text in bullets:
        if not text.startswith("- ") or "\n" in text.strip():
            raise ValueError(f"a README bullet must be one line starting with '- ', got {text[:80]!r}")
    if len(bullets) > README_MAX_BULLETS:
        raise ValueError(f"README's findings hold at most {README_MAX_BULLETS} bullets, got {len(bullets)}")
    return "\n".join(bullets)
