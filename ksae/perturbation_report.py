"""The perturbation family's generated text, from ``results/verdicts_across_seeds.json`` (every method of both families
measured with every check, per training seed): which verdicts the family changes, whether any method now passes every
substrate in every seed, and whether its maps agree with the gradient maps more than those agree with each other.
``perturbation_markdown`` (the notebook's and docs/results.md's section), ``readme_bullet`` (README's finding)."""

from __future__ import annotations

from .attribution import METHOD_FAMILIES
from .checks.agreement import AGREEMENT_KINDS, PIXEL_SETS
from .checks.verdicts import VERDICT_FAMILIES, VERDICT_NAMES, _verdict_label, verdict_statements
from .stats import _ci_text

_FAMILY_TESTS = {"faithful_": "deletion against the random order", "object_": "deletion against a random order over "
                 "object pixels"}  # the per-substrate test families of VERDICT_FAMILIES, in plain words
_VARIANTS = {f"spearman_{k}_{p}": f"{'signed' if k == 'signed' else '|maps|'}, {p} pixels" for k in AGREEMENT_KINDS
             for p in PIXEL_SETS}  # family_agreement's Spearman variants, in plain words
_PRIMARY = "spearman_signed_all"  # the variant README's bullet reports (the others are in the section)


def _family(ordering: str) -> str:
    """'gradient' or 'perturbation' for an ordering key such as 'occlusion/abs' (controls: 'control')."""
    method = ordering.split("/")[0]
    return next((f for f, methods in METHOD_FAMILIES.items() if method in methods), "control")


def _names(orderings: list[str]) -> str:
    """'Occlusion (signed and |value|), LIME (|value|)', or 'none'."""
    return _grouped_names(orderings) or "none"


def _check_data(data) -> dict:
    """``data``: the seeds file's JSON with per-seed rows of both families; ``ValueError`` otherwise."""
    if not isinstance(data, dict) or not isinstance(data.get("per_seed"), dict) or not data["per_seed"]:
        raise ValueError(f"data must be the JSON of benchmarks/verdicts_across_seeds.py (per_seed), got "
                         f"{type(data).__name__}")
    methods = {r["ordering"].split("/")[0] for run in data["per_seed"].values() for r in run["rows"]}
    if not methods & set(METHOD_FAMILIES["perturbation"]):
        raise ValueError("data has no perturbation method: re-run benchmarks/verdicts_across_seeds.py with both "
                         "families")
    return data


def _passing_everywhere(data: dict) -> dict[str, list[str]]:
    """``{test family prefix (and "both"): [orderings passing it on every substrate in every seed]}``."""
    rows = [r for run in data["per_seed"].values() for r in run["rows"]]
    orderings = list(dict.fromkeys(r["ordering"] for r in rows))
    out = {}
    for prefix in VERDICT_FAMILIES:
        out[prefix] = [o for o in orderings if all(r["passes"] for r in rows
                                                   if r["ordering"] == o and r["test"].startswith(prefix))
                       and any(r["ordering"] == o and r["test"].startswith(prefix) for r in rows)]
    out["both"] = [o for o in out["faithful_"] if o in out["object_"]]
    return out


def _first_places(data: dict) -> list[dict]:
    """Per substrate and ranking, the ordering with the largest deletion gap in each seed (``{seed: key}``), among
    all orderings and the controls (``now``) and among the gradient family's and the controls
    (``gradient_only``)."""
    out = []
    runs = data["per_seed"]
    first_run = next(iter(runs.values()))
    for sub in first_run["rankings"]:
        for ranking in first_run["rankings"][sub]:
            first = lambda keep: {s: next(k for k in run["rankings"][sub][ranking] if keep(k))  # noqa: B023
                                  for s, run in runs.items()}
            out.append({"substrate": sub, "ranking": ranking, "now": first(lambda k: True),
                        "gradient_only": first(lambda k: _family(k) != "perturbation")})
    return out


def _claims(data: dict) -> dict[tuple[str, str], list[str]]:
    """``{(kind, claim): [orderings]}``: ``verdict_statements`` asked about each perturbation ordering and test
    family (or test) alone, over every seed, its sentence's claim (the text after the ordering's label) grouped."""
    rows = [r for run in data["per_seed"].values() for r in run["rows"] if _family(r["ordering"]) == "perturbation"]
    group = lambda test: next((p for p in VERDICT_FAMILIES if test.startswith(p)), test)
    out: dict[tuple[str, str], list[str]] = {}
    for ordering in dict.fromkeys(r["ordering"] for r in rows):
        for test_group in dict.fromkeys(group(r["test"]) for r in rows):
            subset = {s: [r for r in run["rows"] if r["ordering"] == ordering and group(r["test"]) == test_group]
                      for s, run in data["per_seed"].items()}
            if not any(subset.values()):
                continue
            for kind, sentences in verdict_statements(subset).items():
                for sentence in sentences:
                    claim = sentence[len(_verdict_label(ordering)):].lstrip(": ").rstrip(".")
                    out.setdefault((kind, claim), []).append(ordering)
    return out


def _grouped_names(orderings: list[str]) -> str:
    """'Occlusion (signed and |value|), LIME (signed)'."""
    by_method: dict[str, list[str]] = {}
    for key in orderings:
        method, ranking = key.split("/")
        by_method.setdefault(method, []).append("|value|" if ranking == "abs" else ranking)
    return ", ".join(f"{_verdict_label(m + '/signed').rsplit(' (', 1)[0]} ({' and '.join(r)})"
                     for m, r in by_method.items())


def _ordering_text(per_seed: dict[str, str]) -> str:
    """One ordering's label (or a control's) when every seed has the same, else the seeds' in turn."""
    label = lambda key: _verdict_label(key) if "/" in key else f"the {key.replace('_', ' ')} control"
    if len(set(per_seed.values())) == 1:
        return f"{label(next(iter(per_seed.values())))} in every seed"
    return ", ".join(f"{label(k)} in seed {s}" for s, k in per_seed.items())


def _agreement_lines(data: dict) -> list[str]:
    """A table: per Spearman variant and seed, the mean per-image excess over the different-image null within the
    gradient family, across the families and within the perturbation family (95 % CIs), and the paired difference
    across - within the gradient family with its Wilcoxon p."""
    lines = ["| Spearman | seed | within gradient | across the families | within perturbation | across − within "
             "gradient | p |", "|---|---|---|---|---|---|---|"]
    for variant, words in _VARIANTS.items():
        for seed, run in data["per_seed"].items():
            s = run["agreement"]["statistics"][variant]
            d = s["across_minus_within_gradient"]
            cells = [_ci_text(s[g], ".2f") for g in ("within_gradient", "across", "within_perturbation")]
            lines.append(f"| {words} | {seed} | {' | '.join(cells)} | {_ci_text(d, '+.2f')} | {d['p_value']:.0e} |")
    return [line.replace("|maps|", "&#124;maps&#124;") for line in lines]


def _agreement_outcome(data: dict, variant: str = _PRIMARY) -> str:
    """'less', 'more' (the CI of across - within below / above 0 in every seed) or 'no resolvable difference'."""
    signs = set()
    for run in data["per_seed"].values():
        lo, hi = run["agreement"]["statistics"][variant]["across_minus_within_gradient"]["ci95"]
        signs.add("less" if hi < 0 else "more" if lo > 0 else "none")
    return signs.pop() if len(signs) == 1 and "none" not in signs else "no resolvable difference"


def perturbation_markdown(data: dict) -> str:
    """The section: the perturbation family's verdicts beside the gradient family's, in every seed of ``data`` (the
    seeds file's JSON), and the families' agreement, every number read from ``data``."""
    data = _check_data(data)
    cfg, seeds = data.get("config", {}), list(data["per_seed"])
    everywhere = _passing_everywhere(data)
    by_family = lambda keys, fam: [k for k in keys if _family(k) == fam]
    lines = [f"Occlusion ({cfg.get('patch_size')} × {cfg.get('patch_size')} window, stride "
             f"{cfg.get('occlusion_stride')}), feature ablation, Shapley value sampling ({cfg.get('shapley_samples')} "
             f"orders), KernelSHAP ({cfg.get('kernel_shap_samples')} coalitions) and LIME ({cfg.get('lime_samples')}) "
             f"over a grid of {cfg.get('patch_size')} × {cfg.get('patch_size')} superpixels from a zero image, "
             f"measured with every check beside the gradient family in seeds {', '.join(seeds)} "
             f"(`results/verdicts_across_seeds.json`, {next(iter(data['per_seed'].values()))['n_images']} images "
             "per seed).", "", "**Does any method now pass every substrate in every seed?**", ""]
    for prefix, words in _FAMILY_TESTS.items():
        keys = everywhere[prefix]
        substrates = ", ".join(t[len(prefix):] for t in VERDICT_NAMES if t.startswith(prefix))
        lines.append(f"- {words.capitalize()} ({substrates}): gradient family: "
                     f"{_names(by_family(keys, 'gradient'))}; perturbation family: "
                     f"{_names(by_family(keys, 'perturbation'))}.")
    lines.append(f"- Both, on every substrate and in every seed: {_names(everywhere['both'])}.")
    lines += ["", "The perturbation family's verdicts (`verdict_statements` over the seeds, grouped):"]
    claims = _claims(data)
    for kind, title in (("holds", "Holds"), ("fails", "Fails everywhere"), ("flips", "Depends on the protocol")):
        found = [f"- {claim}: {_grouped_names(keys)}." for (k, claim), keys in claims.items() if k == kind]
        lines += ["", f"**{title}:**", "", *found] if found else []
    changed = [p for p in _first_places(data) if p["now"] != p["gradient_only"]]
    ranked = lambda p: f"{p['substrate']} substrate, ranked by " + ("signed value" if p["ranking"] == "signed"
                                                                      else "|value|")
    lines += ["", "**Largest deletion gap** (rank 1 among the orderings of a ranking and the controls): "
              + ("; ".join(f"{ranked(p)}: {_ordering_text(p['gradient_only'])} with the gradient family alone; with "
                           f"both families {_ordering_text(p['now'])}" for p in changed) + ". Elsewhere the "
                 "perturbation family takes no first place" if changed else
                 "the same ordering with the perturbation family as without it, on every substrate and ranking, in "
                 "every seed") + "."]
    outcome = _agreement_outcome(data)
    lines += ["", "**Do perturbation maps agree with the gradient maps more than the gradient maps agree with each "
              f"other?** Signed Spearman on all pixels: {_outcome_words(outcome)}. Per image, the excess of Spearman "
              "over the different-image null (the same statistic between maps of two images of the same class), "
              "averaged over the method pairs within each family and across them:", "", *_agreement_lines(data)]
    return "\n".join(lines)


def _outcome_words(outcome: str) -> str:
    return {"less": "less, in every seed (the CI of the difference is below 0)",
            "more": "more, in every seed (the CI of the difference is above 0)"}.get(
        outcome, "no resolvable difference (the CIs of the difference do not exclude 0 in every seed, or point "
                 "different ways)")


def readme_bullet(data: dict) -> str:
    """README's one finding about the perturbation family: whether any method passes every substrate in every seed,
    and the families' agreement with its CIs (signed Spearman, all pixels), linking docs/results.md's section."""
    data = _check_data(data)
    both = _passing_everywhere(data)["both"]
    diffs = [run["agreement"]["statistics"][_PRIMARY]["across_minus_within_gradient"]
             for run in data["per_seed"].values()]
    outcome = _agreement_outcome(data)
    agree = {"less": "agree with the gradient maps less than those agree with each other",
             "more": "agree with the gradient maps more than those agree with each other"}.get(
        outcome, "agree with the gradient maps neither resolvably more nor less than those agree with each other")
    return (f"- **Perturbation attributions** (occlusion, feature ablation, Shapley sampling, KernelSHAP, LIME; "
            f"seeds {', '.join(data['per_seed'])}): "
            + (f"{_names(both)} pass{'es' if len(both) == 1 else ''} both deletion tests on every substrate in every "
               "seed; " if both else "no method of either family passes both deletion tests on every substrate in "
                                     "every seed; ")
            + f"perturbation maps {agree} (signed Spearman excess over the null, across − within the gradient family: "
            + ", ".join(_ci_text(d, "+.2f") for d in diffs)
            + ") — [docs/results.md](docs/results.md#the-perturbation-family).")


def _perturbation_section(docs_data: dict) -> list[str]:
    """docs/results.md's section (``ksae.docs`` calls it with its inputs; the seeds file is ``docs_data["seeds"]``);
    a seeds file measured without the family says so."""
    seeds = docs_data["seeds"]
    methods = {r["ordering"].split("/")[0] for run in seeds.get("per_seed", {}).values() for r in run["rows"]}
    if not methods & set(METHOD_FAMILIES["perturbation"]):
        return ["## The perturbation family", "Not measured: `results/verdicts_across_seeds.json` holds no "
                "perturbation method (run `benchmarks/verdicts_across_seeds.py`)."]
    return ["## The perturbation family", perturbation_markdown(seeds)]
