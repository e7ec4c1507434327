"""Figures of the faithfulness checks, randomization, unit deletion, object focus, the k sweep."""

from __future__ import annotations

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from .._util import _numpy
from ..checks.agreement import PIXEL_SETS
from ..checks.randomization import RANDOMIZATION_VARIANTS
from ..checks.unit_causality import UNIT_SCORES
from ..stats import _ci_text
from .axes import _ci_errors, _color, _label, _log_axis, _ordered
from .figure import _finish
from .maps import _colorbar_axis
from .style import (
    CI_ALPHA,
    COMPLETENESS_LAYOUT,
    COMPLETENESS_SWEEP_LAYOUT,
    CONTROL_STYLES,
    ERROR_BINS,
    FAITHFULNESS_LAYOUT,
    K_SWEEP_LAYOUT,
    K_SWEEP_PANELS,
    LOG_BIN_MARGIN,
    LOG_FLOOR,
    METHOD_COLORS,
    OBJECT_FOCUS_LAYOUT,
    QUADRATURE_LABELS,
    RANDOMIZATION_LAYOUT,
    RANDOMIZATION_ROW_INCHES,
    UNIT_DELETION_LAYOUT,
    _grid_figure,
    _styled,
    _suptitle,
)

# --- faithfulness checks -------------------------------------------------------------------------------
FAITH_CURVE_TITLES = {"morf": "MoRF: most relevant removed first (lower = better)",
                      "lerf": "LeRF: least relevant removed first (higher = better)"}


SUBSTRATE_LABELS = {"zero": "set to 0", "blur": "blurred", "road": "imputed (ROAD)"}  # what removed pixels become


ABS_HATCH = "//"  # bars of methods ranked by |value|


def _ordering_label(entry: dict) -> str:
    """'Integrated gradients', or 'Integrated gradients, |value|' for the |value| ranking."""
    return _label(entry["name"]) + (", |value|" if entry["ranking"] == "abs" else "")


def _faithfulness_curves(ax, entries: dict, which: str, substrate: str, n: int) -> None:
    """Mean ``which`` (morf/lerf) deletion curves: methods ranked by signed value solid, controls grey."""
    for entry in entries.values():
        if entry["ranking"] == "abs":
            continue
        y = np.asarray(entry["mean_curves"][which], dtype=np.float64)
        color, dashes = CONTROL_STYLES.get(entry["name"], (_color(entry["name"]), "-"))
        ax.plot(np.linspace(0, 1, len(y)), y, color=color, ls=dashes, lw=1.8 if dashes == "-" else 1.4,
                label=_ordering_label(entry))
    removed = SUBSTRATE_LABELS.get(substrate, substrate)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"fraction of pixels removed ({removed})",
           ylabel="target-class probability (mean)", title=f"{substrate}, {n} images — {FAITH_CURVE_TITLES[which]}")


def _faithfulness_gap_bars(ax, entries: dict, substrate: str) -> None:
    """LeRF - MoRF AUC gap (mean, 95 % CI) of every ordering; the random control's gap as a line."""
    keys = list(entries)
    means, err = _ci_errors([entries[k]["gap"] for k in keys])
    y = np.arange(len(keys))
    colors = [CONTROL_STYLES.get(entries[k]["name"], (_color(entries[k]["name"]),))[0] for k in keys]
    bars = ax.barh(y, means, 0.7, xerr=err, capsize=2, color=colors)
    for bar, k in zip(bars, keys):
        if entries[k]["ranking"] == "abs":
            bar.set_hatch(ABS_HATCH)
            bar.set_edgecolor("white")
    ax.axvline(entries["random"]["gap"]["mean"], color=CONTROL_STYLES["random"][0], ls=":", lw=1.2)
    ax.axvline(0.0, color="0.2", lw=0.8)
    marks = ["*" if entries[k]["vs_random"]["beats"] else "" for k in keys]
    ax.set_yticks(y, [f"{_ordering_label(entries[k])} {m}" for k, m in zip(keys, marks)])
    ax.invert_yaxis()
    ax.set(xlabel="LeRF AUC − MoRF AUC (95 % CI)", title=f"{substrate}: gap (* beats random, paired Wilcoxon)")


@_styled
def plot_faithfulness(result: dict, save: str | None = None) -> Figure:
    """Per substrate (rows): mean MoRF and LeRF deletion curves (methods ranked by signed value solid,
    controls grey dashed) and the MoRF-LeRF AUC gap of every ordering with its 95 % CI (|value|
    rankings hatched; * = beats the random control). ``result``: ``faithfulness_suite`` output."""
    subs = result.get("substrates") if isinstance(result, dict) else None
    if not subs or any("orderings" not in s or "random" not in s["orderings"] for s in subs.values()):
        raise ValueError("result must be a faithfulness_suite result with at least one substrate (each with its "
                         f"orderings, the random control among them), got keys {list(subs or {})}")
    fig, axes = _grid_figure(20, 4.6 * len(subs), FAITHFULNESS_LAYOUT, len(subs), 3, width_ratios=[1, 1, 1.05])
    for row, (sub, res) in zip(axes, subs.items()):
        for ax, which in zip(row[:2], ("morf", "lerf")):
            _faithfulness_curves(ax, res["orderings"], which, sub, res["n_images"])
        _faithfulness_gap_bars(row[2], res["orderings"], sub)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(5, len(labels)), fontsize="small")
    steps = ", ".join(f"{sub} {res.get('pixels_per_step', result.get('pixels_per_step', '?'))}"
                      for sub, res in subs.items())
    _suptitle(fig, f"Faithfulness: deletion in both orders under {len(subs)} substrate(s); "
                 f"pixels per step: {steps}")
    return _finish(fig, save)


def _steps_table(rows: dict) -> tuple[np.ndarray, list[dict]]:
    """``{n_steps: entry}`` (int or, after JSON, str keys) -> sorted step counts ``[S]`` and entries."""
    items = sorted((int(n), entry) for n, entry in rows.items())
    return np.array([n for n, _ in items]), [entry for _, entry in items]


def _completeness_histogram(ax, errors: np.ndarray, tolerance: float | None, method: str, switches) -> None:
    """Histogram of per-image relative errors at 50 steps (log-spaced bins) with the path-switch summary."""
    errors = np.clip(errors, LOG_FLOOR, None)
    ends = np.log10([min(errors.min(), tolerance or np.inf), max(errors.max(), tolerance or 0.0)])
    bins = np.logspace(ends[0], ends[1] + LOG_BIN_MARGIN, ERROR_BINS)
    ax.hist(errors, bins=bins, color=sns.color_palette()[0])
    _log_axis(ax, "x")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if tolerance is not None:
        ax.axvline(tolerance, color="0.3", ls="--", label=f"tolerance {tolerance:g}")
        ax.legend(fontsize="small")
    ax.set(xlabel="relative completeness error", ylabel="images",
           title=f"Per-image error at 50 steps ({QUADRATURE_LABELS.get(method, method)})")
    if switches:
        lines = [f"active-set switches on the path: mean {switches['mean']:.1f}"]
        if "share_with_switches" in switches:
            lines.append(f"images with a switch: {switches['share_with_switches']:.0%}")
        if "spearman_with_error_50" in switches:
            lines.append(f"Spearman(switches, error): {switches['spearman_with_error_50']:+.2f}")
        ax.text(0.02, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize="small",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})


def _decomposition_steps(ax_err, ax_share, dec: dict) -> None:
    """IG's median completeness error and its median mismatch with minus the jump sum against n_steps
    (log-log, with the median jump size as a line), and the share of images whose mismatch is within
    the tolerance."""
    all_steps = []
    for i, (method, rows) in enumerate(dec["table"].items()):
        steps, entries = _steps_table(rows)
        rule, color = QUADRATURE_LABELS.get(method, method), sns.color_palette()[i]
        ax_err.plot(steps, [max(e["median_rel_error"], LOG_FLOOR) for e in entries], marker="o", color=color,
                    label=f"|IG error|, {rule}")
        ax_err.plot(steps, [max(e["median_mismatch"], LOG_FLOOR) for e in entries], marker="s", ls="--",
                    color=color, label=f"|IG error + jump sum|, {rule}")
        ax_share.plot(steps, [e["share_within_tolerance"] for e in entries], marker="s", color=color, label=rule)
        all_steps += list(steps)
    steps = np.unique(all_steps)
    jumps = np.median(np.abs(_numpy(dec["per_image"]["jump_sum"]) / _numpy(dec["per_image"]["gap"])))
    ax_err.axhline(jumps, color="0.3", ls=":", label=f"|jump sum| ({dec['n_points']}-interval scan)")
    ax_err.axhline(dec["tolerance"], color="0.3", ls="--", label=f"tolerance {dec['tolerance']:g}")
    _log_axis(ax_err, "y")
    ax_share.legend(fontsize="small")
    for ax in (ax_err, ax_share):
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.xaxis.set_minor_locator(NullLocator())
    ax_err.set(xlabel="IG steps", ylabel="median, relative to |F(x) − F(0)|", title="IG's error is the jumps")
    ax_err.legend(fontsize="small")
    ax_share.set(xlabel="IG steps", ylabel="share of images", ylim=(0, 1.02),
                 title=f"|IG error + jump sum| within {dec['tolerance']:g} of |F(x) − F(0)|")


def _decomposition_scatter(ax, dec: dict) -> None:
    """Per image: IG's completeness error against minus the jump sum (both / |F(x) - F(0)|), coloured by
    the number of discontinuous swaps, with the identity line."""
    per = {k: _numpy(v) for k, v in dec["per_image"].items()}
    scale = np.abs(per["gap"])
    jumps, errors = -per["jump_sum"] / scale, per["ig_error"] / scale
    points = ax.scatter(jumps, errors, c=per["switches"], cmap="viridis", s=14)
    ends = [min(jumps.min(), errors.min()), max(jumps.max(), errors.max())]
    ax.plot(ends, ends, color="0.3", ls="--", lw=1, label="IG error = − jump sum")
    ax.figure.colorbar(points, cax=_colorbar_axis(ax), label="discontinuous top-k swaps on the path")
    rule = QUADRATURE_LABELS.get(dec["method"], dec["method"])
    ax.set(xlabel="− jump sum / |F(x) − F(0)|", ylabel="IG completeness error / |F(x) − F(0)|",
           title=f"Per image at {dec['n_steps']} steps ({rule})")
    ax.legend(fontsize="small", loc="upper left")


def _mismatch_histogram(ax, dec: dict) -> None:
    """Histogram of |IG error + jump sum| / |F(x) - F(0)| per image (log bins) with the tolerance line."""
    mismatch = np.clip(_numpy(dec["per_image"]["mismatch"]), LOG_FLOOR, None)
    tol = dec["tolerance"]
    bins = np.logspace(np.log10(min(mismatch.min(), tol)), np.log10(max(mismatch.max(), tol)) + LOG_BIN_MARGIN,
                       ERROR_BINS)
    ax.hist(mismatch, bins=bins, color=sns.color_palette()[0])
    _log_axis(ax, "x")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axvline(tol, color="0.3", ls="--", label=f"tolerance {tol:g}: {dec['share_within_tolerance']:.0%} within")
    res = dec["relative"]["residual"]["mean"]
    ax.set(xlabel="|IG error + jump sum| / |F(x) − F(0)|", ylabel="images",
           title=f"Mismatch at {dec['n_steps']} steps (scan residual {res:.1e})")
    ax.legend(fontsize="small")


@_styled
def plot_completeness(comp: dict, save: str | None = None) -> Figure:
    """Integrated gradients' completeness.

    ``comp`` from ``completeness_decomposition``: IG's error and its mismatch with minus the jump sum
    against the number of steps, the share of images within tolerance, and per image at the configured
    steps the error against the jumps and the histogram of the mismatch. ``comp`` from ``ig_completeness``
    (``table[method][n_steps] = {"median_rel_error", "share_within_tolerance", ...}``, ``tolerance``,
    ``per_image_50: [N] | None``, optional ``path_switches``): the error and the share within tolerance
    per quadrature rule, and (if present) the per-image errors at 50 steps.
    """
    if "per_image" in comp:
        fig, (axes,) = _grid_figure(23, 4.8, COMPLETENESS_LAYOUT, 1, 4)
        _decomposition_steps(axes[0], axes[1], comp)
        _decomposition_scatter(axes[2], comp)
        _mismatch_histogram(axes[3], comp)
        _suptitle(fig, f"Integrated gradients: F(x) − F(0) = gradient integral + jumps at top-k swaps "
                     f"({len(comp['per_image']['gap'])} images; mean {comp['summary']['switches']['mean']:.0f} "
                     f"discontinuous swaps per path)")
        return _finish(fig, save)
    table, tolerance = comp["table"], comp.get("tolerance")
    per_image = comp.get("per_image_50")
    n_panels = 2 + (per_image is not None)
    fig, (axes,) = _grid_figure(6 * n_panels, 4.6, COMPLETENESS_SWEEP_LAYOUT, 1, n_panels)
    for method, rows in table.items():
        steps, entries = _steps_table(rows)
        label = QUADRATURE_LABELS.get(method, method)
        axes[0].plot(steps, [max(e["median_rel_error"], LOG_FLOOR) for e in entries], marker="o", label=label)
        axes[1].plot(steps, [e["share_within_tolerance"] for e in entries], marker="o", label=label)
    _log_axis(axes[0], "y")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.xaxis.set_minor_locator(NullLocator())
    if tolerance is not None:
        axes[0].axhline(tolerance, color="0.3", ls="--", label=f"tolerance {tolerance:g}")
    axes[0].set(xlabel="integration steps", ylabel="median |Σ attr − ΔF| / |ΔF|", title="Completeness error")
    axes[1].set(xlabel="integration steps", ylabel="share of images", ylim=(0, 1.02),
                title=f"Images within tolerance{f' ({tolerance:g})' if tolerance is not None else ''}")
    for ax in axes[:2]:
        ax.legend(fontsize="small")
    if per_image is not None:
        _completeness_histogram(axes[2], _numpy(per_image), tolerance, next(iter(table)), comp.get("path_switches"))
    _suptitle(fig, "Integrated gradients: does the attribution sum to F(x) − F(0)?")
    return _finish(fig, save)


def _randomization_panel(ax, rand: dict, variant: str, pixels: str) -> None:
    """One variant's similarity curves on one pixel set: a line with a 95 % CI band per method, and each
    method's different-class reference on the same pixel set as a dashed line."""
    stages = ["original"] + list(rand["stages"])
    x = np.arange(len(stages))
    series = rand["variants"][variant][pixels]
    for m in _ordered(series):
        if len(series[m]) != len(stages) - 1:
            raise ValueError(f"randomization result for {m!r} ({variant}, {pixels}) has {len(series[m])} stages, "
                             f"expected {len(stages) - 1}")
        means, err = _ci_errors(series[m])
        means, err = np.concatenate([[1.0], means]), np.concatenate([[[0.0], [0.0]], err], axis=1)
        ax.plot(x, means, marker="o", color=_color(m), label=_label(m))
        ax.fill_between(x, means - err[0], means + err[1], color=_color(m), alpha=CI_ALPHA)
        ax.axhline(rand["reference"][m][pixels]["mean"], color=_color(m), ls="--", lw=1)
    ax.set_xticks(x, stages, rotation=30, ha="right")
    where = "all pixels" if pixels == "all" else "object pixels (x > 0)"
    how = "cumulative, top layer first" if variant == "cascading" else "one stage at a time"
    ax.set(ylim=(min(-0.05, ax.get_ylim()[0]), 1.05), xlabel=f"randomised stage ({how})",
           ylabel="Spearman ρ of |maps| with the original", title=f"{variant.capitalize()}, {where}")


@_styled
def plot_randomization(rand: dict, save: str | None = None) -> Figure:
    """Model-parameter randomization, cascading (top row) and independent (bottom row; a row per variant
    the check ran), on all pixels (left) and object pixels (right): Spearman of |maps| with the trained
    model's maps after each stage (1.0 at 'original') with 95 % CI bands; dashed lines: each method's
    reference, the same statistic between maps of two images of different classes on the same pixel set.

    ``rand``: ``randomization_check`` output: ``stages: [S]``, ``variants[variant][pixels][method]: [S]``
    summaries, ``reference[method][pixels]`` summaries.
    """
    variants = [v for v in RANDOMIZATION_VARIANTS if v in rand["variants"]]
    fig, axes = _grid_figure(15, RANDOMIZATION_ROW_INCHES * len(variants), RANDOMIZATION_LAYOUT, len(variants),
                             len(PIXEL_SETS), sharey=True)
    for r, variant in enumerate(variants):
        for c, pixels in enumerate(PIXEL_SETS):
            _randomization_panel(axes[r, c], rand, variant, pixels)
    axes[0, -1].plot([], [], color="0.3", ls="--", lw=1, label="reference: images of different classes")
    axes[0, -1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    n = rand.get("n_images")
    _suptitle(fig, "Model-parameter randomization check" + (f" ({n} images)" if n else ""))
    return _finish(fig, save)


UNIT_ORDER_STYLES = {"contribution": (METHOD_COLORS["decoder"], "-"), "random": CONTROL_STYLES["random"],
                     "activation": ("0.45", "--")}  # colour, dashes of each unit order


UNIT_ORDER_LABELS = {"contribution": "largest contribution first (decoder-weighted)", "random": "random order",
                     "activation": "largest activation first"}


def _unit_curve_panel(ax, result: dict, mode: str, score: str) -> None:
    """Mean curves of every unit order with pointwise 95 % bands and AUCs (CI) in the legend."""
    for order in result["orders"]:
        curve = result["curves"][mode][score][order]
        mean = np.asarray(curve["mean"])
        steps = np.arange(len(mean))
        color, dashes = UNIT_ORDER_STYLES.get(order, ("0.5", "-"))
        ax.plot(steps, mean, color=color, ls=dashes,
                label=f"{UNIT_ORDER_LABELS.get(order, order)}: AUC {_ci_text(result['auc'][mode][score][order])}")
        ax.fill_between(steps, curve["lo"], curve["hi"], color=color, alpha=CI_ALPHA)
    verb = "zeroed (from the full code)" if mode == "deletion" else "switched on (from the empty code)"
    test = result["tests"][mode][score]
    p = ", ".join(f"p vs {name[3:]} {t['p_value']:.1e}" for name, t in test.items())
    ax.set(xlabel=f"active units {verb}", ylabel=f"target {score} (mean, 95 % band)",
           title=f"{mode.capitalize()} ({'lower' if mode == 'deletion' else 'higher'} AUC = better; {p})")
    ax.legend(fontsize="x-small", loc="best")


@_styled
def plot_unit_deletion(result: dict, save: str | None = None) -> Figure:
    """Unit-level causality: the target logit (top) and probability (bottom) as active code units are
    zeroed (left) or switched on (right) one per step, largest decoder-weighted contribution first vs
    random order vs largest activation first; mean curves with 95 % bands, AUCs and Wilcoxon p-values.

    ``result``: ``unit_deletion_curves`` output.
    """
    missing = [key for key in ("orders", "curves", "auc", "tests") if key not in result]
    if missing:
        raise ValueError(f"result must be unit_deletion_curves output; it lacks {missing}")
    fig, axes = _grid_figure(15, 9.5, UNIT_DELETION_LAYOUT, len(UNIT_SCORES), 2)
    for r, score in enumerate(UNIT_SCORES):
        for c, mode in enumerate(("deletion", "insertion")):
            _unit_curve_panel(axes[r, c], result, mode, score)
    _suptitle(fig, f"Unit-level causality in code space ({result['n_images']} images, k = {result['k']}, "
                 f"{result['mean_active_units']:.1f} active units on average)")
    return _finish(fig, save)


_OBJECT_FOCUS_WIDE = 8  # plot_object_focus: above this many methods the figure widens (0.75 inch a bar)


@_styled
def plot_object_focus(focus: dict, save: str | None = None) -> Figure:
    """Share of |attribution| on object pixels (x > 0) per method with 95 % CIs, against the share of
    object pixels (what a uniform map would give), drawn as a dashed line with its CI band.

    ``focus``: ``object_focus`` output: ``object_pixel_share`` and one summary (``mean``, ``ci95``) per method.
    """
    methods = _ordered(k for k in focus if k != "object_pixel_share")
    if not methods:
        raise ValueError("focus holds no method results (only 'object_pixel_share')")
    means, err = _ci_errors([focus[m] for m in methods])
    wide = len(methods) > _OBJECT_FOCUS_WIDE  # more bars than the layout was drawn for: wider, steeper labels
    layout = {**OBJECT_FOCUS_LAYOUT, "left": 1.3, "bottom": 1.45} if wide else OBJECT_FOCUS_LAYOUT
    fig, ((ax,),) = _grid_figure(0.75 * len(methods) + 1.5 if wide else 7, 5.4 if wide else 4.8, layout)
    ax.bar(range(len(methods)), means, yerr=err, capsize=4, color=[_color(m) for m in methods])
    base = focus["object_pixel_share"]
    ax.axhline(base["mean"], color="0.3", ls="--", label=f"object pixels: {_ci_text(base, '.2f')}")
    ax.axhspan(*base["ci95"], color="0.3", alpha=CI_ALPHA)
    ax.set_xticks(range(len(methods)), [_label(m) for m in methods], rotation=40 if wide else 20, ha="right")
    ax.set(ylim=(0, 1), ylabel="share of |attribution| on object pixels",
           title=f"Attribution on the object ({base.get('n', '?')} images; 95 % CI)")
    ax.legend(loc="lower right", fontsize="small")
    return _finish(fig, save)


@_styled
def plot_k_sweep(rows: list, save: str | None = None) -> Figure:
    """FVU, dead units, test accuracy and deletion AUCs (IG, decoder-weighted, random order) against k.

    ``rows: [R]`` dicts (``run_k_sweep`` output, or ``results/k_sweep.json``'s rows) with ``k`` and any of the
    keys in ``K_SWEEP_PANELS``; ``None`` or missing values are skipped. Log-2 x-axis.
    """
    if not rows or any("k" not in r for r in rows):
        raise ValueError("rows must be a non-empty list of dicts, each with a 'k' entry")
    rows = sorted(rows, key=lambda r: r["k"])
    ks = [r["k"] for r in rows]
    fig, (axes,) = _grid_figure(17, 3.8, K_SWEEP_LAYOUT, 1, len(K_SWEEP_PANELS))
    for ax, (title, lines) in zip(axes, K_SWEEP_PANELS.items()):
        drawn = 0
        for key, label in lines:
            points = [(r["k"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                style = CONTROL_STYLES["random"] if key.endswith("_random") else (None, "-")
                ax.plot(*zip(*points), marker="o", color=style[0], ls=style[1], label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        elif len(lines) > 1:
            ax.legend(fontsize="small")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(xlabel="k (active units per image)", ylabel=lines[0][1] if len(lines) == 1 else "AUC", title=title)
    _suptitle(fig, "Sparsity sweep")
    return _finish(fig, save)
