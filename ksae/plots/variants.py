"""Figures of the variants study (``run_variants``' result, or ``results/variants.json``): the frontier, which units
recur against their controls, and the recovery of a planted dictionary with the explanations against its answer."""

from __future__ import annotations

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .._util import _check_result
from ..variant_models import _KIND_LABELS
from .figure import _finish
from .style import _grid_figure, _styled, _suptitle

_FRONTIER_LAYOUT = {"left": 0.75, "right": 0.15, "top": 0.55, "bottom": 1.1, "wspace": 0.75}  # inches; legend below
_STABILITY_LAYOUT = {"left": 2.6, "right": 0.2, "top": 0.55, "bottom": 0.65, "wspace": [0.35, 0.9, 0.85]}
_RECOVERY_LAYOUT = {"left": 0.75, "right": 0.15, "top": 0.55, "bottom": 1.35, "wspace": 0.7, "hspace": 1.25}
_VARIANT_PALETTE = "colorblind"  # one colour per stability row (the kinds first, in the study's order)
_CHANCE_COLORS = {"untrained": "0.55", "random_images": "0.8"}
_CHANCE_LABELS = {"untrained": "untrained dictionaries", "random_images": "random training images"}
_KNOWN_SHORT = {"code": "code space", "integrated": "IG", "integrated_empty": "IG (empty)", "simple": "gradient",
                "smoothgrad": "SmoothGrad", "input_x_gradient": "x × grad.", "input_x_smoothgrad": "x × SG",
                "decoder": "decoder-w."}
_GROUP_WIDTH = 0.8  # share of a group's width its bars take


def _check_variants_result(variants) -> dict:
    return _check_result("variants", variants, ("frontier", "stability", "anchors", "targets", "kinds"),
                         "run_variants' result (results/variants.json)")


def _variant_row_label(name: str) -> str:
    if name in _KIND_LABELS:
        return _KIND_LABELS[name]
    if name.startswith("topk_L0_"):
        return f"top-k, L0 ≈ {name.rsplit('_', 1)[1]}"
    return f"top-k, {name[5:-8]}× epochs" if name.endswith("x_epochs") else name


def _variant_colors(variants: dict) -> dict:
    names = list(dict.fromkeys([*variants["kinds"], *variants["stability"]]))
    return dict(zip(names, sns.color_palette(_VARIANT_PALETTE, len(names))))


def _log_l0_axis(ax, targets) -> None:
    ax.set_xscale("log")
    ax.set_xticks(targets, [str(t) for t in targets])
    ax.xaxis.set_minor_locator(NullLocator())


@_styled
def plot_variants_frontier(variants: dict, save: str | None = None) -> Figure:
    """The frontier: test FVU, the pixel classifier's accuracy on the reconstructions, the classifier head's test
    accuracy and the dead and dense units, each against the mean test L0 (log axis), one line per autoencoder kind;
    PCA with L0 components as the anchor (black crosses). Error bars: bootstrap 95 % CIs over test images."""
    v = _check_variants_result(variants)
    colors, targets = _variant_colors(v), v["targets"]
    fig, (axes,) = _grid_figure(18, 4.6, _FRONTIER_LAYOUT, 1, 4)
    pca = [v["anchors"]["pca"][str(t)] for t in targets]
    for kind in v["kinds"]:
        rows = [v["frontier"][kind][str(t)] for t in targets]
        l0 = [r["test_l0"] for r in rows]
        fvu = np.array([r["fvu"] for r in rows])
        err = np.abs(np.array([r["fvu_ci95"] for r in rows]).T - fvu)
        axes[0].errorbar(l0, fvu, yerr=err, marker="o", color=colors[kind], label=_KIND_LABELS.get(kind, kind))
        axes[1].plot(l0, [r["pixel_accuracy"] for r in rows], marker="o", color=colors[kind])
        for r in rows:
            if "accuracy" in r:
                lo, hi = r["accuracy_ci95"]
                axes[2].errorbar([r["test_l0"]], [r["accuracy"]], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]],
                                 marker="o", color=colors[kind], capsize=3)
        axes[3].plot(l0, [r["dead_units"] for r in rows], marker="o", color=colors[kind])
        axes[3].plot(l0, [r["dense_units"] for r in rows], marker="s", ls=":", color=colors[kind])
    style = dict(color="0.1", marker="x", ls="--", lw=1)
    axes[0].plot([r["test_l0"] for r in pca], [r["fvu"] for r in pca], label="PCA (L0 components)", **style)
    axes[1].plot([r["test_l0"] for r in pca], [r["pixel_accuracy"] for r in pca], **style)
    axes[1].axhline(v["pixel_classifier"]["test_accuracy"], color="0.3", ls=":", lw=1, label="on the originals")
    axes[1].legend(fontsize="small", loc="lower right")
    for r in pca:
        if "accuracy" in r:
            axes[2].errorbar([r["test_l0"]], [r["accuracy"]], yerr=[[r["accuracy"] - r["accuracy_ci95"][0]],
                                                                    [r["accuracy_ci95"][1] - r["accuracy"]]],
                             capsize=3, **{**style, "ls": "none"})
    topk = v.get("by_seed", {}).get("topk", [])
    accs = [r["accuracy"] for r in topk if "accuracy" in r]
    if len(accs) > 1:
        axes[2].axhspan(min(accs), max(accs), color=colors.get("topk", "0.5"), alpha=0.2,
                        label=f"top-k's heads, seeds {min(r['seed'] for r in topk)}–{max(r['seed'] for r in topk)}")
        axes[2].legend(fontsize="small", loc="lower right")
    axes[3].plot([], [], color="0.3", marker="o", label="dead (no test image)")
    axes[3].plot([], [], color="0.3", marker="s", ls=":", label="dense (> 10 % of test images)")
    axes[3].set_yscale("symlog", linthresh=1)
    axes[3].legend(fontsize="small")
    titles = [("test FVU", "Reconstruction"),
              ("pixel classifier's test accuracy", "Pixel classifier on reconstructions"),
              ("head's test accuracy", f"Classifier head (L0 ≈ {v['stability_target']})"),
              ("units (of the code)", "Dead and dense units")]
    for ax, (ylabel, title) in zip(axes, titles):
        _log_l0_axis(ax, targets)
        ax.set(xlabel="mean test L0 (log)", ylabel=ylabel, title=title)
    handles = dict(zip(*axes[0].get_legend_handles_labels()[::-1]))
    order = [_KIND_LABELS.get(k, k) for k in v["kinds"]] + ["PCA (L0 components)"]  # the kinds first, the anchor last
    fig.legend([handles[n] for n in order], order, loc="lower center", ncol=len(order), fontsize="small",
               frameon=False)
    _suptitle(fig, "Which sparse autoencoder? One frontier (knobs chosen on the validation split; 95 % CIs)")
    return _finish(fig, save)


def _recurrence_bars(ax, names: list[str], variants: dict, statistic: str, colors: dict, title: str) -> None:
    """Per stability row: the trained share (CI error bar, the seed range as a black bar) and its two controls."""
    height = _GROUP_WIDTH / 3
    for i, name in enumerate(names):
        st = variants["stability"][name]
        s = st["trained"]["statistics"][statistic]
        ax.barh(i - height, s["value"], height, color=colors[name],
                xerr=[[s["value"] - s["ci95"][0]], [s["ci95"][1] - s["value"]]], capsize=2)
        ax.plot(s["range"], [i - height] * 2, color="0.1", lw=3, solid_capstyle="butt")
        for j, control in enumerate(("untrained", "random_images")):
            c = st["controls"][control]["statistics"][statistic]
            ax.barh(i + j * height, c["value"], height, color=_CHANCE_COLORS[control],
                    label=_CHANCE_LABELS[control] if i == 0 else None)
    ax.set_yticks(range(len(names)), [_variant_row_label(n) for n in names])
    ax.invert_yaxis()
    ax.set(xlabel="share of units", title=title)
    ax.set_xlim(0, None)


@_styled
def plot_variants_stability(variants: dict, save: str | None = None) -> Figure:
    """Which units recur across three training seeds, per autoencoder kind (and top-k at a lower L0 and with more
    epochs), against the controls (the same matching to untrained dictionaries and to random training images):
    the share of "shared" units (decoder and encoder cosine >= 0.7, same partner, in both other seeds), the share
    whose decoder atom recurs at cosine >= 0.9, the distribution of each unit's lowest matched decoder cosine, and
    the trade-off: shared units against test FVU (each point a kind; bars: the range over seeds)."""
    v = _check_variants_result(variants)
    names, colors = list(v["stability"]), _variant_colors(v)
    fig, (axes,) = _grid_figure(19, 0.55 * len(names) + 2.3, _STABILITY_LAYOUT, 1, 4, width_ratios=[1, 1, 1.2, 1.2])
    _recurrence_bars(axes[0], names, v, "shared", colors, "Shared (decoder and encoder ≥ 0.7)")
    _recurrence_bars(axes[1], names, v, "decoder>=0.9", colors, "Decoder atom recurs at cosine ≥ 0.9")
    axes[1].set_yticklabels([])
    axes[0].plot([], [], color="0.1", lw=3, label="range over the 3 seeds")
    axes[0].legend(fontsize="small", loc="lower right")
    ax = axes[2]
    first = v["stability"][names[0]]
    edges = np.linspace(0, 1, len(first["trained"]["histograms"]["decoder"]) + 1)
    for name in names:
        hist = np.asarray(v["stability"][name]["trained"]["histograms"]["decoder"], dtype=np.float64)
        ax.step(edges, np.append(hist, hist[-1]) / hist.sum(), where="post", color=colors[name],
                label=_variant_row_label(name))
    for control in ("untrained", "random_images"):
        hist = np.asarray(first["controls"][control]["histograms"]["decoder"], dtype=np.float64)
        ax.step(edges, np.append(hist, hist[-1]) / hist.sum(), where="post", color=_CHANCE_COLORS[control], ls="--",
                label=f"{_variant_row_label(names[0])}: {_CHANCE_LABELS[control]}")
    ax.axvline(0.9, color="0.2", lw=0.8, ls=":")
    ax.set(xlabel="lowest matched decoder cosine in the other seeds", ylabel="share of units (seed 0)",
           title="Each unit's lowest matched cosine")
    ax.legend(fontsize="x-small")
    ax = axes[3]
    for name in names:
        seeds = v.get("by_seed", {}).get(name)
        if not seeds:
            continue
        fvu = [r["fvu"] for r in seeds]
        s = v["stability"][name]["trained"]["statistics"]["shared"]
        ax.errorbar([np.mean(fvu)], [s["mean"]], xerr=[[np.mean(fvu) - min(fvu)], [max(fvu) - np.mean(fvu)]],
                    yerr=[[s["mean"] - s["range"][0]], [s["range"][1] - s["mean"]]], marker="o", color=colors[name],
                    capsize=3, label=_variant_row_label(name))
    ax.set(xlabel="test FVU (mean over seeds)", ylabel="shared units (mean over reference seeds)",
           title="What recurrence costs")
    ax.legend(fontsize="x-small")
    _suptitle(fig, f"Which units recur across seeds {', '.join(map(str, v['seeds']))} "
                   f"(L0 ≈ {v['stability_target']}; 95 % CIs over seed 0's units)")
    return _finish(fig, save)


def _kind_bars(ax, groups: list[str], kinds: list[str], get, colors: dict, labels: list[str] | None = None) -> None:
    """Bars grouped by ``groups`` (x, named ``labels``), one per kind; ``get(group, kind) -> (value, (lo, hi) or
    None) | None``."""
    width = _GROUP_WIDTH / max(len(kinds), 1)
    for j, kind in enumerate(kinds):
        for i, group in enumerate(groups):
            got = get(group, kind)
            if got is None or got[0] is None:
                continue
            value, ci = got
            yerr = None if ci is None else [[value - ci[0]], [ci[1] - value]]
            ax.bar(i - _GROUP_WIDTH / 2 + (j + 0.5) * width, value, width, yerr=yerr, capsize=2, color=colors[kind],
                   label=_KIND_LABELS.get(kind, kind) if i == 0 else None)
    ax.set_xticks(range(len(groups)), labels or groups)


@_styled
def plot_variants_recovery(variants: dict, save: str | None = None) -> Figure:
    """The planted dictionary per coherence: each kind's matched cosine (MCC, the random-sample baseline as a black
    line), share of atoms recovered (|cosine| >= 0.9), mean F1 of matched units as detectors of their atoms, and
    the coherence of the planted atoms; then, per coherence, how well each explanation method matches the rule's
    exact contributions (correlation minus a same-class null; 95 % CIs)."""
    v = _check_variants_result(variants)
    planted = v.get("planted") or {}
    if not planted:
        raise ValueError("variants holds no planted-dictionary results (run_variants with coherences)")
    coherences, kinds, colors = list(planted), list(v["kinds"]), _variant_colors(v)
    n_bottom = max(len(coherences), 4)
    fig, axes = _grid_figure(19, 8.6, _RECOVERY_LAYOUT, 2, n_bottom)
    rec = lambda c, k: planted[c]["kinds"][k]["recovery"] if k in planted[c]["kinds"] else None  # noqa: E731
    _kind_bars(axes[0, 0], coherences, kinds, lambda c, k: rec(c, k) and (rec(c, k)["mcc"], None), colors)
    for i, c in enumerate(coherences):
        axes[0, 0].plot([i - _GROUP_WIDTH / 2, i + _GROUP_WIDTH / 2], [planted[c]["baseline_mcc"]] * 2, color="0.1",
                        label="random training images" if i == 0 else None)
    axes[0, 0].set(ylabel="mean matched |cosine| (MCC)", title="Matched cosine", ylim=(0, 1.12))
    baseline = [h for h, label in zip(*axes[0, 0].get_legend_handles_labels()) if label == "random training images"]
    axes[0, 0].legend(baseline, ["random training images (the baseline)"], fontsize="x-small", loc="upper right")
    _kind_bars(axes[0, 1], coherences, kinds, lambda c, k: rec(c, k) and (rec(c, k)["recovered_share"], None), colors)
    axes[0, 1].set(ylabel="share of planted atoms", title="Recovered (|cosine| ≥ 0.9)", ylim=(0, 1))
    _kind_bars(axes[0, 2], coherences, kinds, lambda c, k: rec(c, k) and (rec(c, k)["f1_mean"], None), colors)
    axes[0, 2].set(ylabel="mean F1", title="Matched unit as detector of its atom", ylim=(0, 1))
    gens = [planted[c]["generator"] for c in coherences]
    axes[0, 3].bar(np.arange(len(coherences)) - 0.2, [g["max_abs_cosine"] for g in gens], 0.4, color="0.3",
                   label="largest")
    axes[0, 3].bar(np.arange(len(coherences)) + 0.2, [g["median_max_abs_cosine"] for g in gens], 0.4, color="0.7",
                   label="median of each atom's largest")
    axes[0, 3].set_xticks(range(len(coherences)), coherences)
    axes[0, 3].set(ylabel="|cosine| between planted atoms", title="Coherence of the planted atoms", ylim=(0, 1))
    axes[0, 3].legend(fontsize="x-small")
    for ax, c in zip(axes[1], coherences):
        def get(m, k, c=c):
            ex = planted[c]["kinds"].get(k, {}).get("explanations", {})
            if not ex.get("n_images"):
                return None
            s = ex["code"]["excess"] if m == "code" else ex["pixels"].get(m, {}).get("excess")
            return None if s is None or s["mean"] is None else (s["mean"], s["ci95"])

        _kind_bars(ax, list(_KNOWN_SHORT), kinds, get, colors, list(_KNOWN_SHORT.values()))
        ax.axhline(0, color="0.3", lw=0.8)
        ax.tick_params(axis="x", labelrotation=35)
        ax.set(ylabel="correlation minus null", title=f"Explanations against the answer: {c}")
    for ax in axes[1, len(coherences):]:
        ax.set_axis_off()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    names = [_KIND_LABELS.get(k, k) for k in kinds if _KIND_LABELS.get(k, k) in by_label]
    fig.legend([by_label[n] for n in names], names, loc="lower center", ncol=len(names), fontsize="small",
               frameon=False)
    _suptitle(fig, "A planted dictionary: recovery per coherence, and which explanation is right")
    return _finish(fig, save)
