"""Figures of the controls: the models and their explanations per representation; unit claims against controls."""

from __future__ import annotations

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from .._util import _check_choice, _check_path, _check_result
from ..attribution import METHOD_LABELS
from ..checks.substrates import SUBSTRATES
from .axes import _ci_errors
from .figure import _finish
from .style import CI_ALPHA, _grid_figure, _styled, _suptitle

_MODELS_LAYOUT = {"left": 2.35, "right": 0.15, "top": 0.75, "bottom": 0.95, "wspace": [1.0, 1.0, 1.0],
                  "hspace": 1.2}  # inches; representation names left of the first column
_UNITS_LAYOUT = {"left": 2.35, "right": 0.15, "top": 0.75, "bottom": 0.6, "wspace": 0.6, "hspace": 0.95}
_PALETTE = "colorblind"  # one colour per representation, in ``controls["representations"]`` order
_BAR_GROUP = 0.8  # share of a group's width its bars take
_STABILITY_BINS = 20  # histogram bins of the seed-stability panel on [0, 1]
_SUBSTRATE_LABELS = {"zero": "zero", "blur": "blur", "road": "ROAD"}


def _check_controls(controls) -> dict:
    keys = ("representations", "labels", "models", "explanations", "units", "claims")
    return _check_result("controls", controls, keys, "run_controls' result (results/controls.json)")


def _colors(controls: dict) -> dict:
    reps = controls["representations"]
    return dict(zip(reps, sns.color_palette(_PALETTE, len(reps))))


def _summary(value: dict) -> dict:
    """A claim's ``{"value", "ci95"}`` as a ``summarize``-like ``{"mean", "ci95"}``."""
    return {"mean": value["value"], "ci95": value["ci95"]}


def _hbars(ax, names: list[str], summaries: list[dict | None], controls: dict, xlabel: str, title: str) -> None:
    """Horizontal bars, one per representation (its label on the y-axis), CI error bars; None: 'not measured'."""
    colors, y = _colors(controls), np.arange(len(names))
    for i, (name, s) in enumerate(zip(names, summaries)):
        if s is None:
            ax.text(0.02, i, "no decoder" if "fvu" in xlabel.lower() else "not measured", va="center",
                    transform=ax.get_yaxis_transform(), fontsize="small", color="0.4")
            continue
        mean, err = _ci_errors([s])
        ax.barh(i, mean, xerr=err if np.any(err) else None, capsize=3, color=colors[name])
    ax.set_yticks(y, [controls["labels"][n] for n in names])
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)


def _grouped(ax, groups: list[str], group_labels: list[str], names: list[str], get, controls: dict, ylabel: str,
             title: str) -> None:
    """Bars grouped by ``groups`` (x), one per representation (hue); ``get(name, group) -> summary | None``."""
    colors, width = _colors(controls), _BAR_GROUP / max(len(names), 1)
    for j, name in enumerate(names):
        for i, group in enumerate(groups):
            s = get(name, group)
            if s is None:
                continue
            mean, err = _ci_errors([s])
            ax.bar(i - _BAR_GROUP / 2 + (j + 0.5) * width, mean, width, yerr=err, capsize=2, color=colors[name],
                   label=controls["labels"][name] if i == 0 or get(name, groups[0]) is None else None)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(groups)), group_labels)
    ax.set(ylabel=ylabel, title=title)


@_styled
def plot_controls_models(controls: dict, ranking: str = "signed", save: str | None = None) -> Figure:
    """The representations side by side (``run_controls``' result, or ``results/controls.json``): test accuracy
    (validation as a dot), FVU, the pixel classifier on each code's reconstructions, the cascading randomization
    (similarity left after the whole cascade minus the different-class reference), then on the common image set
    the LeRF - MoRF gap over the random order's for integrated and simple gradients (maps ranked by ``ranking``)
    per substrate, object focus and Gini sparseness per method. Error bars: bootstrap 95 % CIs."""
    controls = _check_controls(controls)
    _check_choice("ranking", ranking, ("signed", "abs"))
    reps, models, expl = controls["representations"], controls["models"], controls["explanations"]
    explained = [r for r in reps if r in expl]
    fig, axes = _grid_figure(19, 9.5, _MODELS_LAYOUT, 2, 4)
    point = lambda v: None if v is None else {"mean": v, "ci95": [v, v]}  # noqa: E731
    _hbars(axes[0, 0], reps, [point(models[r]["test_accuracy"]) for r in reps], controls, "test accuracy",
           "Accuracy (dot: validation)")
    axes[0, 0].plot([models[r]["val_accuracy"] or np.nan for r in reps], range(len(reps)), "o", color="0.15")
    axes[0, 0].set_xlim(0, 1)
    _hbars(axes[0, 1], reps, [point(models[r]["fvu"]) for r in reps], controls, "test FVU", "Reconstruction")
    axes[0, 1].set_yticklabels([])
    rec = controls.get("accuracy_recovered") or {}
    _hbars(axes[0, 2], reps, [point(rec[r]["accuracy"]) if r in rec else None for r in reps], controls,
           "pixel classifier's test accuracy", "Pixel classifier on reconstructions")
    if "original" in rec:
        axes[0, 2].axvline(rec["original"], color="0.3", ls="--", label="on the originals")
        axes[0, 2].legend(loc="lower left", fontsize="small")
    axes[0, 2].set_yticklabels([])
    axes[0, 2].set_xlim(0, 1)
    methods = [m for m in METHOD_LABELS if any(m in expl[r]["gini"] for r in explained)]
    _grouped(axes[0, 3], methods, [METHOD_LABELS[m] for m in methods], explained,
             lambda r, m: expl[r]["randomization"]["final_minus_reference"].get(m), controls,
             "Spearman |maps| minus reference", "Randomization: left after the cascade")
    subs = [s for s in SUBSTRATES if s in expl[explained[0]]["faithfulness"]]
    for ax, method in zip(axes[1, :2], ("integrated", "simple")):
        key = f"{method}/{ranking}"
        _grouped(ax, subs, [_SUBSTRATE_LABELS[s] for s in subs], explained,
                 lambda r, s, key=key: expl[r]["faithfulness"][s].get(key, {}).get("excess"), controls,
                 "LeRF - MoRF gap minus random's", f"Faithfulness: {METHOD_LABELS[method]} ({ranking})")
    _grouped(axes[1, 2], methods, [METHOD_LABELS[m] for m in methods], explained,
             lambda r, m: expl[r]["object_focus"].get(m), controls, "share of |map| on object pixels", "Object focus")
    base = controls["images"]["object_pixel_share"]
    axes[1, 2].axhline(base["mean"], color="0.3", ls="--", label="object pixels (uniform map)")
    axes[1, 2].axhspan(*base["ci95"], color="0.3", alpha=CI_ALPHA)
    axes[1, 2].set_ylim(0, 1)
    _grouped(axes[1, 3], methods, [METHOD_LABELS[m] for m in methods], explained,
             lambda r, m: expl[r]["gini"].get(m), controls, "Gini index of |map|", "Sparseness (Gini)")
    axes[1, 3].set_ylim(0, 1)
    handles, labels = axes[1, 3].get_legend_handles_labels()
    axes[1, 2].legend(fontsize="small", loc="lower left")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small", frameon=False)
    for ax in axes[:, 3].tolist() + axes[1, :3].tolist() + [axes[0, 3]]:
        ax.tick_params(axis="x", labelrotation=12)
    n = controls["images"]["n_images"]
    _suptitle(fig, f"What sparsity buys: models and their explanations ({n} common test images; 95 % CIs)")
    return _finish(fig, save)


@_styled
def _stability_panel(ax, stability: dict | None, colors: dict) -> None:
    """Histogram of each SAE unit's lowest matched cosine in the other seeds (``run_seed_stability``), against the
    same matching to untrained dictionaries; the stability threshold as a line. Says so when not measured."""
    ax.set(title="Seed stability of the SAE's units", xlabel="lowest matched cosine in the other seeds",
           ylabel="share of units", xlim=(-0.05, 1.05))
    if not stability:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.4")
        return
    edges = np.linspace(0, 1, _STABILITY_BINS + 1)
    series = [("trained seeds " + " and ".join(map(str, stability["seeds"])), stability["min_cosine"], colors["sae"],
               "-", stability["share_stable"])]
    if stability.get("control"):
        series.append(("untrained dictionaries (control)", stability["control"]["min_cosine"], "0.45", "--",
                       stability["control"]["share_stable"]))
    for label, values, color, ls, share in series:
        hist = np.histogram(np.clip(values, 0, 1), bins=edges)[0] / len(values)
        ax.step(edges, np.append(hist, hist[-1]), where="post", color=color, ls=ls,
                label=f"{label}: {100 * share:.1f} % stable")
    ax.axvline(stability["threshold"], color="0.2", lw=0.8, ls=":", label=f"stable: cosine >= {stability['threshold']}")
    ax.legend(fontsize="small")


def plot_controls_units(controls: dict, save: str | None = None) -> Figure:
    """Unit claims of the trained SAE against the controls (``run_controls``' result): one panel per claim, a bar per
    model with its bootstrap 95 % CI, the title saying whether the claim is held (the SAE beats every control with a
    CI of the difference above 0); then the purity distribution of the live units, and the seed stability of the
    SAE's dictionary (``_stability_panel``)."""
    if save is not None:  # not a @_styled function (its decorator sits on _stability_panel): checked here
        _check_path("save", save, "file")
    controls = _check_controls(controls)
    claims, units = controls["claims"], controls["units"]
    if not claims:
        raise ValueError("controls holds no unit claims (run_controls needs the SAE and at least one unit control)")
    names = [r for r in controls["representations"] if r in units]
    fig, axes = _grid_figure(17, 8, _UNITS_LAYOUT, 2, 3)
    for ax, (claim, c) in zip(axes.ravel(), claims.items()):
        values = {"sae": c["trained"], **c["controls"]}
        _hbars(ax, names, [_summary(values[r]) if r in values else None for r in names], controls,
               c["label"].split(",")[0] if claim == "deletion_gap" else "value",
               f"{c['label']}\n{'held' if c['held'] else 'not held'}")
        ax.title.set_fontsize("small")
        ax.axvline(0, color="0.3", lw=0.8)
    ax = axes[1, 1]
    colors = _colors(controls)
    edges = np.linspace(0, 1, len(units[names[0]]["purity_hist"]) + 1)
    for r in names:
        hist = np.asarray(units[r]["purity_hist"], dtype=np.float64)
        ax.step(edges, np.append(hist, hist[-1]) / max(hist.sum(), 1), where="post", color=colors[r],
                ls="--" if r == "shuffled" else "-", label=controls["labels"][r] + (" (the SAE's code)" if r ==
                                                                                   "shuffled" else ""))
    ax.set(xlabel="purity (share of the majority class)", ylabel="share of live units",
           title="Purity of the live units")
    ax.legend(fontsize="small")
    _stability_panel(axes[1, 2], controls.get("stability"), colors)
    for ax in (axes[0, 1], axes[0, 2]):
        ax.set_yticklabels([])  # the same rows as the first column's; colours as in the purity legend
    _suptitle(fig, "Unit claims of the trained SAE against its controls (95 % CIs)")
    return _finish(fig, save)
