"""Figures of the planted shortcut (``run_shortcut``'s result, or ``results/shortcut.json``): a marked image with each
method's map for the shortcut model and its clean twin; localisation scores with chance and false alarms; accuracy,
false positives and false negatives against the units removed, per scorer, against random units and references."""

from __future__ import annotations

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .._util import IMAGE_SIDE
from ..checks.localisation import relevance_mass_accuracy
from ..shortcut_verdicts import _scored_seeds
from ..shortcuts import Marker
from .axes import _color, _label, _show_image, _show_signed, _symmetric_limit
from .figure import _finish
from .style import CI_ALPHA, CONTROL_STYLES, MAP_CLIP_PERCENTILE, _grid_figure, _styled, _suptitle

_VARIANT_TITLES = {"certified": "certified", "biased": "biased", "two_part": "two-part"}
_MAPS_LAYOUT = {"left": 1.3, "right": 0.2, "top": 0.9, "bottom": 0.25, "wspace": 0.25, "hspace": 0.55}
_SCORES_LAYOUT = {"left": 0.8, "right": 0.2, "top": 0.8, "bottom": 1.45, "wspace": 0.55, "hspace": 1.45}
_REMOVAL_LAYOUT = {"left": 1.0, "right": 0.2, "top": 0.8, "bottom": 1.6, "wspace": 1.1, "hspace": 0.75}
_MARKER_STYLES = {"M": ("gold", "-"), "C": ("limegreen", "--")}  # outlines of the markers on images and maps
_BARS = (("model", "M", "on M"), ("twin", "M", "twin, on M"), ("model", "C", "on C"), ("twin", "C", "twin, on C"))
_BAR_COLORS = dict(zip([b[2] for b in _BARS], sns.color_palette("Paired", 4)[::-1]))
_REFERENCES = {"before": ("shortcut model (nothing removed)", "0.1", "-"), "oracle": ("oracle", "tab:green", "--"),
               "pixel_fix": ("pixel fix (M erased)", "tab:purple", "-."), "twin": ("clean twin", "tab:brown", ":")}
_ROWS = (("key", "{key}"), ("fp", "false positives (other classes with M\ntaken for Shirt)"),
         ("fn", "false negatives (Shirts without M\nnot taken for Shirt)"))


def _check_shortcut(shortcut) -> dict:
    keys = ("variants", "per_seed", "summary", "planting", "sizes")
    if not isinstance(shortcut, dict) or any(k not in shortcut for k in keys):
        raise ValueError(f"shortcut must be run_shortcut's result (results/shortcut.json) with keys {keys}, got "
                         f"{sorted(shortcut) if isinstance(shortcut, dict) else type(shortcut).__name__}")
    return shortcut


def _not_scored(ax, shortcut: dict, variant: str) -> None:
    gates = ", ".join(f"seed {s}: {p['gate']['value']:.3f}" for s, p in shortcut["per_seed"][variant].items())
    ax.text(0.5, 0.5, f"gate failed: not scored\n({gates})", ha="center", va="center", transform=ax.transAxes,
            color="0.3", fontsize="small")
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax, marker: dict, name: str) -> None:
    color, ls = _MARKER_STYLES[name]
    ax.add_patch(Rectangle((marker["col"] - 0.5, marker["row"] - 0.5), marker["size"], marker["size"], fill=False,
                           ec=color, ls=ls, lw=1.5))


@_styled
def plot_shortcut_maps(shortcut: dict, variant: str | None = None, save: str | None = None) -> Figure:
    """One marked test image of ``variant`` (default: the first variant that was scored; its first explained image
    of the first scored seed) and every method's map of
    the Shirt logit, for the shortcut model (top row) and its clean twin (bottom row) on the same image; M outlined
    solid, C dashed; each column on one colour scale (symmetric, the ``MAP_CLIP_PERCENTILE`` of both maps' |values|),
    each title the map's relevance mass accuracy on M."""
    shortcut = _check_shortcut(shortcut)
    if variant is None:
        variant = next((v for v in shortcut["variants"] if _scored_seeds(shortcut, v)), shortcut["variants"][0])
    if variant not in shortcut["variants"]:
        raise ValueError(f"variant must be one of {shortcut['variants']}, got {variant!r}")
    per = _scored_seeds(shortcut, variant)
    example = next((p["localisation"].get("example") for p in per.values() if p["localisation"].get("example")), None)
    if example is None:
        raise ValueError(f"the {variant} variant has no example maps (its gate failed, or no seed kept an example)")
    planting = shortcut["planting"][variant]
    mask = Marker(**{k: planting["marker"][k] for k in ("row", "col", "size", "value")}).mask()
    methods = list(example["shortcut"])
    fig, axes = _grid_figure(1.3 + 0.2 + 2.0 * (len(methods) + 1) + 0.25 * len(methods), 5.3, _MAPS_LAYOUT, 2,
                             len(methods) + 1)
    image = np.asarray(example["image"]).reshape(IMAGE_SIDE, IMAGE_SIDE)
    for r, role in enumerate(("shortcut", "twin")):
        _show_image(axes[r, 0], image, "marked image" if r == 0 else None)
        axes[r, 0].set_ylabel("shortcut model" if role == "shortcut" else "clean twin", fontsize="large")
        for c, m in enumerate(methods, start=1):
            both = np.asarray([example["shortcut"][m], example["twin"][m]])
            limit = _symmetric_limit(both, MAP_CLIP_PERCENTILE) or 1.0
            values = np.asarray(example[role][m])
            mass = relevance_mass_accuracy(values[None], mask)[0]
            _show_signed(axes[r, c], values.reshape(IMAGE_SIDE, IMAGE_SIDE), limit,
                         f"{_label(m)}\nmass on M {mass:.2f}" if np.isfinite(mass) else _label(m))
            axes[r, c].title.set_fontsize("small")
        for ax in axes[r]:
            for name in ("M", "C"):
                _outline(ax, planting["marker" if name == "M" else "control"], name)
    _suptitle(fig, f"A marked test image ({_VARIANT_TITLES[variant]}), maps of the Shirt logit: the shortcut model "
                   "beside its clean twin (M solid, C dashed; red = for Shirt)")
    return _finish(fig, save)


def _envelope(summaries: list[dict]) -> tuple[float, float, float, list[float]]:
    """Mean over seeds, the envelope of their CIs, and each seed's mean."""
    means = [s["mean"] for s in summaries if s and s.get("mean") is not None]
    lows = [s["ci95"][0] for s in summaries if s and s.get("ci95") and s["ci95"][0] is not None]
    highs = [s["ci95"][1] for s in summaries if s and s.get("ci95") and s["ci95"][1] is not None]
    if not means:
        return np.nan, np.nan, np.nan, []
    return float(np.mean(means)), min(lows, default=np.nan), max(highs, default=np.nan), means


@_styled
def plot_shortcut_localisation(shortcut: dict, score: str = "mass", save: str | None = None) -> Figure:
    """Per variant (columns) and model family (rows: the sparse-code pipeline, the raw-pixel classifier), for every
    method: the ``score`` (``mass``, ``rank`` or ``pointing``) on M and on C of the shortcut model and of its clean
    twin, on the same marked test images (bars: mean over seeds; error bars: the envelope of the seeds' 95 % CIs;
    dots: each seed); chance (|marker| / 784) dashed. In the certified and biased variants the bars on C and the
    twin's bars are false alarms; in the two-part variant both markers carry the shortcut."""
    shortcut = _check_shortcut(shortcut)
    if score not in ("mass", "rank", "pointing"):
        raise ValueError(f"score must be 'mass', 'rank' or 'pointing', got {score!r}")
    variants = shortcut["variants"]
    fig, axes = _grid_figure(6.2 * len(variants) + 1.0, 8.6, _SCORES_LAYOUT, 2, len(variants))
    for c, variant in enumerate(variants):
        per = _scored_seeds(shortcut, variant)
        for r, (model, twin, family) in enumerate((("shortcut", "twin", "sparse-code pipeline"),
                                                   ("pixel", "pixel_twin", "raw-pixel classifier"))):
            ax = axes[r, c]
            ax.set_title(f"{_VARIANT_TITLES[variant]}: {family}")
            if not per:
                _not_scored(ax, shortcut, variant)
                continue
            locs = [p["localisation"] for p in per.values()]
            methods = list(locs[0]["models"][model])
            width = 0.8 / len(_BARS)
            for b, (which, region, label) in enumerate(_BARS):
                role = model if which == "model" else twin
                for i, m in enumerate(methods):
                    mean, lo, hi, seeds = _envelope([loc["models"][role][m][score][region] for loc in locs])
                    x = i - 0.4 + (b + 0.5) * width
                    ax.bar(x, mean, width, color=_BAR_COLORS[label], label=label if i == 0 else None,
                           yerr=[[max(mean - lo, 0)], [max(hi - mean, 0)]] if np.isfinite(lo) else None, capsize=2)
                    ax.plot([x] * len(seeds), seeds, "o", ms=2.5, color="0.15")
            ax.axhline(locs[0]["chance"]["M"], color="0.3", ls="--", lw=1, label="chance (|marker| / 784)")
            ax.set_xticks(range(len(methods)), [_label(m) for m in methods], rotation=30, ha="right")
            ax.set(ylim=(0, 1), ylabel={"mass": "relevance mass accuracy", "rank": "relevance rank accuracy",
                                        "pointing": "pointing game"}[score])
            ax.legend(fontsize="x-small", loc="upper right", ncol=2)
    _suptitle(fig, f"Which explanation finds the planted marker ({shortcut['sizes']['n_images']} marked test images "
                   f"per seed, explained for Shirt; seeds {', '.join(map(str, shortcut['seeds']))})")
    return _finish(fig, save)


def _measured(m: dict, key: str) -> float | None:
    v = m.get(key)
    return v["mean"] if isinstance(v, dict) else v


def _row_value(row: dict, quantity: str, key: str) -> float | None:
    return _measured(row["metrics"], key if quantity == "key" else quantity)


@_styled
def plot_shortcut_removal(shortcut: dict, save: str | None = None) -> Figure:
    """Per variant (columns): the variant's key measure (Shirt/T-shirt accuracy; biased: worst-group accuracy), the
    false positives and the false negatives (rows) against the number of units zeroed at inference, per scorer (mean
    over seeds; thin lines: each seed), against as many random units (band: the draws' 95 % range, mean over seeds)
    and the references: nothing removed, the oracle, the pixel fix, the clean twin; biased: SHIFT's retrained heads
    (stars)."""
    shortcut = _check_shortcut(shortcut)
    variants, ns = shortcut["variants"], [str(n) for n in shortcut["sizes"]["ns"]]
    fig, axes = _grid_figure(5.6 * len(variants) + 1.2, 12.0, _REMOVAL_LAYOUT, len(_ROWS), len(variants))
    x = np.arange(len(ns) + 1)
    colors = dict(zip(shortcut["scorers"], sns.color_palette("colorblind", len(shortcut["scorers"]))))
    for c, variant in enumerate(variants):
        per = _scored_seeds(shortcut, variant)
        key, key_label = ("worst_group", "worst-group accuracy") if variant == "biased" else (
            "acc_two", "Shirt / T-shirt accuracy")
        for r, (quantity, label) in enumerate(_ROWS):
            ax = axes[r, c]
            if r == 0:
                ax.set_title(_VARIANT_TITLES[variant])
            if not per:
                _not_scored(ax, shortcut, variant)
                continue
            before = [_measured(p["models"]["shortcut"]["test"], key if quantity == "key" else quantity)
                      for p in per.values()]
            for name in shortcut["scorers"]:
                ys = [[before[i]] + [_row_value(p["units"]["removal"]["scorers"][name][n], quantity, key) for n in ns]
                      for i, p in enumerate(per.values())]
                for y in ys:
                    ax.plot(x, y, color=colors[name], lw=0.6, alpha=0.5)
                ax.plot(x, np.nanmean(np.asarray(ys, dtype=float), 0), "o-", color=colors[name], label=name)
            rkey = "key" if quantity == "key" else quantity
            band = [[p["units"]["removal"]["random"][n][key if rkey == "key" else rkey] for n in ns]
                    for p in per.values()]
            mean = np.nanmean([[b["mean"] for b in seed] for seed in band], 0)
            lo = np.nanmean([[b["q025"] for b in seed] for seed in band], 0)
            hi = np.nanmean([[b["q975"] for b in seed] for seed in band], 0)
            color, ls = CONTROL_STYLES["random"]
            ax.plot(x[1:], mean, color=color, ls=ls, label="random units")
            ax.fill_between(x[1:], lo, hi, color=color, alpha=CI_ALPHA)
            refs = {"before": before, **{name: [_measured(p["units"]["reference"][name]["metrics"],
                                                         key if quantity == "key" else quantity)
                                                for p in per.values()] for name in ("oracle", "pixel_fix", "twin")}}
            for name, values in refs.items():
                text, color, ls = _REFERENCES[name]
                ax.axhline(np.nanmean(np.asarray(values, dtype=float)), color=color, ls=ls, lw=1, label=text)
            shift = [p["units"].get("shift") for p in per.values() if p["units"].get("shift")]
            if shift:
                for n in shift[0]["heads"]:
                    vals = [_row_value(s["heads"][n], quantity, key) for s in shift]
                    ax.plot(ns.index(n) + 1 if n in ns else int(n), np.nanmean(np.asarray(vals, dtype=float)), "*",
                            ms=12, color=_color("decoder"), label="SHIFT: head retrained" if n == "1" else None)
            ax.set_xticks(x, ["0", *ns])
            ax.set(ylim=(-0.02, 1.02), ylabel=label.format(key=key_label),
                   xlabel="units removed (top of each scorer)" if r == len(_ROWS) - 1 else None)
    handles = {}
    for ax in axes.ravel():
        for handle, text in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(text, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=5, fontsize="small", frameon=False)
    _suptitle(fig, "Removing the units a scorer finds, at inference: against random units, the oracle and the pixel "
                   "fix (test set; mean over seeds)")
    return _finish(fig, save)
