"""Generated text about the variants study (``results/variants.json``): the notebook's and the docs' section
(``variants_markdown``) and README's finding (``readme_bullet``). No number is typed by hand; a difference is
named only where its CI excludes 0 and the seed ranges do not overlap (``no resolvable difference`` otherwise)."""

from __future__ import annotations

from ._util import _check_result, _md_table
from .variant_models import _KIND_LABELS as KIND_LABELS

_KNOWN_LABELS = {"code": "decoder-weighted, code space (matched units)", "integrated": "integrated gradients",
                 "integrated_empty": "integrated gradients from the empty-code image", "simple": "simple gradients",
                 "smoothgrad": "SmoothGrad", "input_x_gradient": "input × gradient",
                 "input_x_smoothgrad": "input × SmoothGrad", "decoder": "decoder-weighted"}


def _variant_label(name: str, data: dict | None = None) -> str:
    """A stability row's name in words: a kind, or top-k at another L0 or with more epochs."""
    if name in KIND_LABELS:
        return KIND_LABELS[name]
    if name.startswith("topk_L0_"):
        return f"top-k at L0 ≈ {name.rsplit('_', 1)[1]}"
    if name.startswith("topk_") and name.endswith("x_epochs"):
        epochs = f" ({data['stability'][name]['ae_epochs']} epochs)" if data else ""
        return f"top-k, {name[5:-8]}× the epochs{epochs}"
    return name


def _pc(x, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f} %"


def _pct_ci(value, ci, digits: int = 1) -> str:
    return f"{_pc(value, digits)} [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"


def _num_ci(value, ci, fmt: str = ".4f") -> str:
    return f"{value:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _signed_pct(value, ci, digits: int = 1) -> str:
    return f"{100 * value:+.{digits}f} points [{100 * ci[0]:+.{digits}f}, {100 * ci[1]:+.{digits}f}]"


def _knob_text(entry: dict) -> str:
    """'k = 50 (validation L0 50.0)' with every try when there was more than one."""
    fmt = (lambda v: f"{v:.4g}") if entry["knob"] not in ("k",) else (lambda v: str(int(v)))
    tries = entry.get("tries", [])
    text = f"{entry['knob']} = {fmt(entry['value'])} (val. L0 {entry['val_l0']:.1f})"
    if len(tries) > 1:
        text += "; tried " + ", ".join(f"{fmt(t['value'])} → {t['val_l0']:.1f}" for t in tries)
    return text + ("" if entry.get("within_tolerance", True) else " **outside the tolerance**")


def _calibration_lines(d: dict) -> list[str]:
    rows = []
    for kind, cal in d["calibration"].items():
        rows.append([KIND_LABELS.get(kind, kind), *[_knob_text(cal[str(t)]) for t in d["targets"]]])
        if "pilots" in cal:
            rows.append([f"{KIND_LABELS.get(kind, kind)} pilots",
                         "; ".join(f"{p['value']:.3g} → {p['val_l0']:.1f}" for p in cal["pilots"]) + " (" +
                         f"{cal['pilots'][0]['epochs']} epochs each)", *[""] * (len(d["targets"]) - 1)])
    return _md_table(["kind", *[f"L0 ≈ {t}" for t in d["targets"]]], rows)


def _frontier_rows(d: dict) -> list[list]:
    rows = []
    for kind, per_target in d["frontier"].items():
        for t, r in per_target.items():
            acc = _pct_ci(r["accuracy"], r["accuracy_ci95"], 2) if "accuracy" in r else "—"
            within = "" if abs(r["test_l0"] / int(t) - 1) <= 0.1 else " (outside ±10 %)"
            rows.append([KIND_LABELS.get(kind, kind), t, f"{r['test_l0']:.1f}{within}",
                         _num_ci(r["fvu"], r["fvu_ci95"]), r["dead_units"], r["dense_units"],
                         f"{_pc(r['pixel_accuracy'], 2)} ({_pc(r['accuracy_recovered'])})", acc])
    for t, r in d["anchors"]["pca"].items():
        acc = _pct_ci(r["accuracy"], r["accuracy_ci95"], 2) if "accuracy" in r else "—"
        rows.append(["PCA", t, f"{r['test_l0']:.1f}", _num_ci(r["fvu"], r["fvu_ci95"]), "—", "—",
                     f"{_pc(r['pixel_accuracy'], 2)} ({_pc(r['accuracy_recovered'])})", acc])
    return rows


def _stat_text(s: dict, digits: int = 1) -> str:
    spread = (f"; seeds {_pc(s['range'][0], digits)}–{_pc(s['range'][1], digits)}"
              if len(s["per_reference"]) > 1 else "")
    return f"{_pct_ci(s['value'], s['ci95'], digits)}{spread}"


def _recurrence_rows(d: dict) -> list[list]:
    rows = []
    for name, st in d["stability"].items():
        for label, rec in (("trained, 3 seeds", st["trained"]),
                           ("untrained dictionaries", st["controls"]["untrained"]),
                           ("random training images", st["controls"]["random_images"])):
            s = rec["statistics"]
            median = s["median_decoder"]
            rows.append([_variant_label(name, d) if label.startswith("trained") else "", label, _stat_text(s["shared"]),
                         _pc(s["decoder>=0.5"]["value"]), _pc(s["decoder>=0.7"]["value"]),
                         _stat_text(s["decoder>=0.9"], 2), _pc(s["encoder>=0.9"]["value"], 2),
                         f"{median['value']:.3f} [{median['ci95'][0]:.3f}, {median['ci95'][1]:.3f}]"])
    return rows


_VERDICT_WORDS = {"higher": "higher than", "lower": "lower than",
                  "no resolvable difference": "no resolvable difference from"}


def _answer_lines(d: dict) -> list[str]:
    """One line per variant against top-k: recurrence, FVU, accuracy."""
    lines, answer = [], d.get("answer", {})
    for name, a in answer.items():
        rec = a["recurrence"]["shared"]
        shared = d["stability"][name]["trained"]["statistics"]["shared"]
        parts = [f"shared units {_pct_ci(shared['value'], shared['ci95'])}, {_VERDICT_WORDS[rec['verdict']]} top-k's "
                 f"(difference {_signed_pct(rec['difference'], rec['ci95'])}; seeds {_pc(rec['range'][0])}–"
                 f"{_pc(rec['range'][1])} against {_pc(rec['reference_range'][0])}–"
                 f"{_pc(rec['reference_range'][1])})"]
        d9 = a["recurrence"]["decoder>=0.9"]
        parts.append(f"decoder atoms recurring at cosine ≥ 0.9: {_VERDICT_WORDS[d9['verdict']]} top-k "
                     f"({_signed_pct(d9['difference'], d9['ci95'], 2)})")
        f = a["fvu"]
        parts.append(f"test FVU {f['difference']:+.4f} [{f['ci95'][0]:+.4f}, {f['ci95'][1]:+.4f}] "
                     f"({f['verdict'].replace('higher', 'higher: a cost').replace('lower', 'lower: a gain')}; seeds "
                     f"{f['range'][0]:.4f}–{f['range'][1]:.4f} against {f['reference_range'][0]:.4f}–"
                     f"{f['reference_range'][1]:.4f})")
        if "accuracy" in a:
            c = a["accuracy"]
            parts.append(f"head accuracy {_signed_pct(c['difference'], c['ci95'], 2)} ({c['verdict']}; top-k's heads "
                         f"over seeds {_pc(c['reference_range'][0], 2)}–{_pc(c['reference_range'][1], 2)})")
        if "accuracy_recovered" in a:
            c = a["accuracy_recovered"]
            parts.append(f"pixel classifier on the reconstructions {_signed_pct(c['difference'], c['ci95'], 2)} "
                         f"({c['verdict']})")
        lines.append(f"- **{_variant_label(name, d)}** against top-k at L0 ≈ {d['stability_target']}: "
                     + "; ".join(parts) + ".")
    return lines


def _verdict_summary(d: dict) -> str:
    """The answer in one sentence: which variants make units recur more (and at what cost), or none."""
    answer = d.get("answer", {})
    more = [n for n, a in answer.items() if a["recurrence"]["shared"]["verdict"] == "higher"]
    fewer = [n for n, a in answer.items() if a["recurrence"]["shared"]["verdict"] == "lower"]
    if not answer:
        return "Nothing to compare with top-k's units (no other variant, or top-k not among the kinds)."
    text = ("Units recur more often than top-k's (shared units, CI of the difference above 0 and seed ranges apart) "
            "in: " + ", ".join(_variant_label(n, d) for n in more) + "." if more else
            "No variant makes units recur more often than top-k's beyond the seed spread.")
    if fewer:
        text += " Fewer recur in: " + ", ".join(_variant_label(n, d) for n in fewer) + "."
    return text


def _planted_lines(d: dict) -> list[str]:
    planted = d.get("planted") or {}
    if not planted:
        return []
    gen_rows = []
    for coherence, e in planted.items():
        g = e["generator"]
        rates = f"{g['rate_quantiles']['0.0']:.4f}–{g['rate_quantiles']['1.0']:.2f}"
        gen_rows.append([coherence, f"{g['max_abs_cosine']:.3f}", f"{g['median_max_abs_cosine']:.3f}",
                         f"{g['mean_l0_test']:.1f}", rates, f"{e['baseline_mcc']:.3f}"])
    rows = []
    for coherence, e in planted.items():
        for kind, r in e["kinds"].items():
            rec = r["recovery"]
            rows.append([coherence, KIND_LABELS.get(kind, kind), f"{r['test_l0']:.1f}", f"{r['fvu']:.4f}",
                         f"{rec['mcc']:.3f}", f"{rec['score']:+.3f}", _pc(rec["recovered_share"]),
                         f"{rec['f1_mean']:.3f}", rec["dead_units"], _pc(r.get("accuracy"), 2)])
    first = next(iter(planted.values()))["generator"]
    return [f"**A planted dictionary.** Synthetic images from {first['n_atoms']} known atoms ({first['n_train']} "
            f"training and {first['n_test']} test images per coherence; each atom fires independently with a Zipf-law "
            f"rate, mean L0 {first['mean_l0_asked']:g}; labels from {first['label_atoms_per_class']} label atoms per "
            "class: the class whose atoms sum highest). The random-sample baseline is the same matching for a "
            "dictionary of random training images (minus their mean): what matching alone gives.", "",
            *_md_table(["coherence", "largest |cosine| between atoms", "median of each atom's largest",
                        "mean L0 (test)", "firing rates", "MCC of random samples"], gen_rows), "",
            "Each kind trained on each (its knob chosen on the synthetic validation split, L0 near the planted mean): "
            "MCC is the mean |cosine| of the Hungarian match of planted to learned atoms; recovered: matched with "
            "|cosine| ≥ 0.9; F1: each matched unit as a detector of its atom on the test images; dead: fires on no "
            "test image.", "",
            *_md_table(["coherence", "kind", "test L0", "test FVU", "MCC", "MCC − random samples", "recovered",
                     "mean F1", "dead", "head accuracy (rule)"], rows), "", *_known_lines(d)]


def _known_lines(d: dict) -> list[str]:
    """The explanations against the exact contributions."""
    rows, best = [], []
    for coherence, e in d["planted"].items():
        for kind, r in e["kinds"].items():
            ex = r["explanations"]
            if not ex.get("n_images"):
                rows.append([coherence, KIND_LABELS.get(kind, kind), 0, *["—"] * 8])
                continue
            cells = {m: ex["pixels"][m]["excess"] for m in ex["pixels"]}
            cells["code"] = ex["code"]["excess"]
            rows.append([coherence, KIND_LABELS.get(kind, kind), ex["n_images"],
                         *[_num_ci(cells[m]["mean"], cells[m]["ci95"], ".2f") if m in cells else "—"
                           for m in _KNOWN_LABELS]])
            ranked = sorted(((m, s) for m, s in cells.items() if m != "code" and s["n"]), key=lambda p: -p[1]["mean"])
            if len(ranked) > 1 and ranked[0][1]["ci95"][0] > ranked[1][1]["ci95"][1]:
                best.append(f"{coherence}, {KIND_LABELS.get(kind, kind)}: {_KNOWN_LABELS[ranked[0][0]]}")
    lead = ("The pixel map closest to the answer with a CI clear of every other method's: "
            + ("; ".join(best) if best else "none (the best methods' CIs overlap in every case)") + ".")
    return ["**Explanations against the known answer.** The rule is linear in the codes, so the exact contribution "
            "of atom j to the centred score of class c (its score minus the mean over classes) is "
            "(W[c, j] − mean over classes of W[·, j]) · a_j, relative to the empty code; every linear, complete "
            "attribution (integrated gradients, Shapley values, DeepLIFT) gives exactly this for a linear function "
            "from that reference. The heads are explained on the same centred logit (their last layer centred over the "
            "classes: same predictions). Code space: decoder-weighted's unit contributions read through the matching. "
            "Pixel space: a rule on codes has no unique pixel attribution when atoms overlap; the answer is the exact "
            "contributions drawn with their atoms (scale · Σ_j φ_j d_j: where the evidence lies). Cells: mean Pearson "
            "correlation with the answer minus the same against another image of the same class (the null), "
            "[95 % CI], on correctly classified test images:", "",
            *_md_table(["coherence", "kind", "images", *_KNOWN_LABELS.values()], rows), "", lead]


def variants_markdown(variants: dict) -> str:
    """The variants study as markdown (``results/variants.json`` or ``run_variants``' result): how each knob was
    chosen, the frontier, which units recur against the controls, every variant against top-k, the planted
    dictionary and the explanations against its known answer. Every number is read from ``variants``."""
    d = _check_result("variants", variants, ("calibration", "frontier", "anchors", "stability", "targets"),
                      "run_variants' result (results/variants.json)")
    lines = ["**How each knob was chosen** (on the validation split; the test set is scored once per model). "
             "A count knob (k) starts at the target; a target-L0 knob at the target; a penalty (the L1 weight) at "
             "the log-log interpolation of short pilot runs. Each try is a full-length model; a try whose validation "
             "L0 is more than 7 % from the target is followed by a secant step in log L0 against log knob (at most "
             "three tries; the closest is kept):", "", *_calibration_lines(d), "",
             f"**The frontier** (test set; FVU with a bootstrap 95 % CI over images; dead: fires on no test image; "
             "dense: on more than 10 % of them; the pixel classifier, "
             f"{_pc(d['pixel_classifier']['test_accuracy'], 2)} on the original test images, on the "
             "reconstructions, with the share of that accuracy it keeps; the "
             f"classifier head at L0 ≈ {d['stability_target']}, seed {d['seeds'][0]}):", "",
             *_md_table(["kind", "target L0", "test L0", "test FVU", "dead", "dense", "pixel classifier (recovered)",
                      "head accuracy"], _frontier_rows(d)), "",
             f"**Which units recur** (L0 ≈ {d['stability_target']}, seeds {', '.join(map(str, d['seeds']))}: every "
             "seed's units matched one-to-one in each other seed by decoder atom and, separately, by encoder row; "
             "shared (Paulo & Belrose 2025): both cosines ≥ 0.7 with the same partner in both other seeds; "
             "percentages of units, [95 % CI over seed 0's units] and the range over the three seeds as reference; "
             "controls: seed 0's dictionary matched to two untrained dictionaries, and to two dictionaries of random "
             "training images minus their mean):", "",
             *_md_table(["model", "matched to", "shared", "decoder ≥ 0.5", "decoder ≥ 0.7", "decoder ≥ 0.9",
                      "encoder ≥ 0.9", "median lowest decoder cosine"], _recurrence_rows(d)), "",
             "**Against top-k** (a difference is named only where its bootstrap CI excludes 0 *and* the seed ranges "
             "do not overlap; else *no resolvable difference*):", "", *_answer_lines(d), "", _verdict_summary(d), "",
             *_planted_lines(d)]
    return "\n".join(lines).rstrip("\n") + "\n"


def readme_bullet(data: dict) -> str:
    """README's one bullet about the variants (``data``: ``results/variants.json``, or ``{"variants": ...}`` as
    ``ksae.docs`` loads it): shared units per variant with CIs, the verdict, the cost, the planted recovery."""
    d = data.get("variants", data) if isinstance(data, dict) else None
    if not isinstance(d, dict) or "stability" not in d or "answer" not in d:
        raise ValueError("data must be results/variants.json's content (or {'variants': it}), got "
                         f"{sorted(d) if isinstance(d, dict) else type(data).__name__}")
    st = d["stability"]
    shared = {n: s["trained"]["statistics"]["shared"] for n, s in st.items()}
    shares = ", ".join(f"{_variant_label(n, d)} {_pct_ci(s['value'], s['ci95'])}" for n, s in shared.items())
    costs = []
    for name, a in d.get("answer", {}).items():
        if name in KIND_LABELS:
            costs.append(f"{KIND_LABELS[name]} FVU {a['fvu']['difference']:+.4f} ({a['fvu']['verdict']})"
                         + (f", accuracy {100 * a['accuracy']['difference']:+.2f} points ({a['accuracy']['verdict']})"
                            if "accuracy" in a else ""))
    planted = d.get("planted") or {}
    rec = "; ".join(f"{c}: " + ", ".join(f"{KIND_LABELS.get(k, k)} {r['recovery']['score']:+.2f}"
                                         for k, r in e["kinds"].items()) for c, e in planted.items())
    return (f"- **Which sparse autoencoder?** (`results/variants.json`, [figure](figures/variants_stability.png)): at "
            f"L0 ≈ {d['stability_target']}, units shared across three seeds (decoder and encoder cosine ≥ 0.7, same "
            f"partner; 95 % CI): {shares}. {_verdict_summary(d)}"
            + (f" Against top-k: {'; '.join(costs)}." if costs else "")
            + (f" Planted dictionary, matched cosine minus random samples': {rec}." if rec else ""))


def _variants_section(data: dict) -> list[str]:
    """``docs/results.md``'s section from ``data["variants"]`` (``results/variants.json``)."""
    d = data["variants"]
    m, sec = d["models"], d["seconds"]
    wall = d.get("wall_seconds", sec["total"])
    return ["## Which sparse autoencoder? Five kinds on one frontier",
            f"`results/variants.json`, written by `benchmarks/variants.py` ({d['device']}: this run {wall / 60:.1f} "
            f"min; it used {m['models']} models and trained {m['trained_now']} of them, "
            f"{m['train_seconds_now'] / 60:.1f} min of training; the checkpoints of all of them record "
            f"{m['train_seconds_recorded'] / 60:.1f} min). Each kind is trained with the project's recipe (784 → "
            f"{d['config']['d_hidden']} units, {d['config']['ae_epochs']} epochs, the training split) and measured "
            "the same way; the figures are `figures/variants_*.png` (the notebook's section \"Which sparse "
            "autoencoder?\").", "", variants_markdown(d).rstrip("\n")]
