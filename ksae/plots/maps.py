"""Attribution maps: one image (the three-row comparison) and many images (class averages,
agreement)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure

from .._util import IMAGE_SIDE, _as_image, _as_maps, _check_classes, _check_int, _check_labels, _numpy
from ..attribution import METHOD_FAMILIES
from ..checks.agreement import AGREEMENT_KINDS, PIXEL_SETS, correlation_matrix
from ..stats import rowwise_spearman
from .axes import (
    _ci_errors,
    _color,
    _image_axis,
    _label,
    _log_axis,
    _resolve_methods,
    _show_image,
    _show_signed,
    _side_colorbar,
    _slug,
    _symmetric_limit,
)
from .figure import _finish, render_figures
from .style import (
    COLORBAR_INSET,
    COMPARISON_MARGINS,
    COMPARISON_MIN_WIDTH,
    CORRELATION_LAYOUT,
    DIVERGING_CMAP,
    FALLBACK_NOTE,
    FAMILY_GROUP_COLORS,
    FAMILY_LAYOUT,
    HEATMAP_DARK,
    IMAGE_STATS,
    LEGEND_HEADROOM,
    LOG_BAR_MARGIN,
    LOG_FLOOR,
    MAP_CLIP_PERCENTILE,
    NULL_CORRELATIONS,
    OBJECT_CONTOUR_COLOR,
    OVERLAY_ALPHA,
    PAIR_CORRELATIONS,
    PANEL_INCHES,
    SHORT_LABELS,
    _fixed_grid,
    _grid_figure,
    _styled,
    _suptitle,
)

if TYPE_CHECKING:
    from ..selection import Selection


# --- attribution maps: one image -------------------------------------------------------------------------
def image_attribution_stats(image: torch.Tensor, maps: dict, methods=None) -> dict:
    """Per-method statistics of one image's maps: ``image: [784]``, ``maps``: method -> ``[784]``.

    Returns ``{method: {"mean_abs", "max_abs", "std", "object_share"}}``; ``object_share`` is the share
    of sum |attr| on object pixels (``image > 0``), as in ``object_focus``.
    """
    methods = _resolve_methods(methods, maps)
    obj = _as_image(image).ravel() > 0
    stats = {}
    for m in methods:
        a = _as_image(maps[m], f"maps[{m!r}]").ravel()
        total = np.abs(a).sum()
        stats[m] = {"mean_abs": float(np.abs(a).mean()), "max_abs": float(np.abs(a).max()), "std": float(a.std()),
                    "object_share": float(np.abs(a[obj]).sum() / total) if total > 0 else 0.0}
    return stats


def _image_spearman(maps: dict, methods: list[str]) -> np.ndarray:
    """``[M, M]`` Spearman correlations of the absolute maps (``[784]`` each) of one image."""
    arrays = [np.abs(_as_image(maps[m]).ravel())[None] for m in methods]
    corr = np.eye(len(methods))
    for i in range(len(methods)):
        for j in range(i + 1, len(methods)):
            corr[i, j] = corr[j, i] = rowwise_spearman(arrays[i], arrays[j])[0]
    return corr


def _colorbar_axis(ax):
    """An axis for a colour bar just right of ``ax`` (fixed layouts: no layout engine to place it)."""
    return ax.inset_axes(COLORBAR_INSET)


def _comparison_maps(fig, grid, image: np.ndarray, maps: dict, methods: list[str]) -> None:
    """Rows 1-2 of the comparison: the image and each signed map, then the object outline and overlays
    (drawn on row 1's colour scales; row 1's colour bars say so)."""
    mask = image > 0
    ax = fig.add_subplot(grid[0, 0])
    fig.colorbar(_show_image(ax, image, "Input image"), cax=_colorbar_axis(ax), label="pixel intensity (both rows)")
    ax = fig.add_subplot(grid[1, 0])  # row 2 is drawn on row 1's colour scales: one colour bar serves both
    _show_image(ax, image, f"Object pixels (x > 0): {mask.mean():.0%}")
    ax.contour(mask, levels=[0.5], colors=OBJECT_CONTOUR_COLOR, linewidths=1.2)
    for col, m in enumerate(methods, start=1):
        a = _as_image(maps[m], f"maps[{m!r}]")
        limit = _symmetric_limit(a, MAP_CLIP_PERCENTILE)
        ax = fig.add_subplot(grid[0, col])
        fig.colorbar(_show_signed(ax, a, limit, _label(m)), cax=_colorbar_axis(ax), label="attribution (both rows)")
        ax = fig.add_subplot(grid[1, col])
        _show_image(ax, image, f"{_label(m)} on image")
        alpha = OVERLAY_ALPHA * np.clip(np.abs(a) / limit, 0, 1)
        ax.imshow(a, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, alpha=alpha, interpolation="nearest")


def _comparison_stat_bars(ax_mag, ax_obj, stats: dict, methods: list[str], object_share: float) -> None:
    """Row 3 left: magnitude statistics per method (log scale) and the share of |attr| on the object."""
    x, width = np.arange(len(methods)), 0.8 / len(IMAGE_STATS)
    shades = sns.color_palette("Greys", len(IMAGE_STATS) + 1)[1:]
    values = np.array([[max(stats[m][key], LOG_FLOOR) for m in methods] for key in IMAGE_STATS])  # [S, M]
    for i, name in enumerate(IMAGE_STATS.values()):
        ax_mag.bar(x + (i - (len(IMAGE_STATS) - 1) / 2) * width, values[i], width, color=shades[i], label=name)
    _log_axis(ax_mag)
    ax_mag.set_ylim(values.min() / LOG_BAR_MARGIN, values.max() * LEGEND_HEADROOM)
    ax_mag.legend(fontsize="small", ncol=len(IMAGE_STATS), loc="upper center")
    ax_mag.set(ylabel="value (log scale)", title="Map statistics (this image)")
    ax_obj.bar(x, [stats[m]["object_share"] for m in methods], 0.6, color=[_color(m) for m in methods])
    ax_obj.axhline(object_share, color="0.3", ls="--", label=f"object pixels {object_share:.0%}")
    ax_obj.set(ylim=(0, 1), ylabel="share of |attr| on object", title="Attribution on the object")
    ax_obj.legend(fontsize="small", loc="upper right")
    for ax in (ax_mag, ax_obj):
        ax.set_xlim(-0.75, len(methods) - 0.25)
        ax.set_xticks(x, [_label(m) for m in methods], rotation=30, ha="right")


def _annotated_heatmap(ax, values: np.ndarray, xlabels, ylabels, cmap: str, limits: tuple[float, float],
                       fmt: str, cbar_label: str, cbar_kws: dict | None = None, fontsize="medium"):
    """``values: [R, C]`` as square cells with the value written in each (white on dark cells) and a colour
    bar (``cbar_kws`` go to ``fig.colorbar``, e.g. ``cax``). One image and R x C texts: no extra draw."""
    im = ax.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
    rgba = im.cmap(im.norm(values))
    luminance = rgba[..., :3] @ np.array([0.2126, 0.7152, 0.0722])  # relative luminance (sRGB weights)
    for (r, c), value in np.ndenumerate(values):
        ax.text(c, r, format(value, fmt), ha="center", va="center", fontsize=fontsize,
                color="white" if luminance[r, c] < HEATMAP_DARK else "0.15")
    ax.set_xticks(range(values.shape[1]), xlabels)
    ax.set_yticks(range(values.shape[0]), ylabels)
    ax.tick_params(length=0)
    ax.grid(False)
    ax.spines[:].set_visible(False)
    ax.figure.colorbar(im, ax=ax, label=cbar_label, **(cbar_kws or {"shrink": 0.8}))
    return im


def _correlation_heatmap(ax, corr: np.ndarray, methods: list[str], title: str, cbar_kws: dict | None = None) -> None:
    """Annotated ``[M, M]`` correlation heatmap on [-1, 1] with the diverging map."""
    _annotated_heatmap(ax, corr, [SHORT_LABELS.get(m, m) for m in methods], [_label(m) for m in methods],
                       DIVERGING_CMAP, (-1, 1), ".2f", "Spearman ρ", cbar_kws)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(title)


@_styled
def plot_attribution_comparison(image: torch.Tensor, maps: dict, label: str, confidence: float,
                                stats: dict | None = None, methods=None, save: str | None = None) -> Figure:
    """The three-row comparison of one image's attribution maps.

    Row 1: the image and each method's signed map; row 2: the object outline (x > 0) and each map over
    the grey image; row 3: per-method statistics and the Spearman matrix of |maps| between methods.
    ``image: [784]``; ``maps``: method -> ``[784]``; ``label``: class name; ``confidence``: softmax
    probability; ``stats``: ``image_attribution_stats`` output (computed when None); ``methods``: a
    subset of ``maps`` (default: all), 1 to 4 names from METHOD_LABELS.
    """
    methods = _resolve_methods(methods, maps)
    img = _as_image(image)
    stats = image_attribution_stats(img, maps, methods) if stats is None else stats
    missing = [m for m in methods if m not in stats]
    if missing:
        raise ValueError(f"stats has no entry for method(s) {missing}")
    n_cols = len(methods) + 1
    width, height = max(COMPARISON_MIN_WIDTH, PANEL_INCHES * 1.25 * n_cols), 3.6 * PANEL_INCHES
    fig = plt.figure(figsize=(width, height))  # fixed layout (margins in inches): no layout engine, one draw
    m = COMPARISON_MARGINS
    grid = fig.add_gridspec(3, n_cols, height_ratios=[1, 1, 1.5], left=m["left"] / width,
                            right=1 - m["right"] / width, top=1 - m["top"] / height, bottom=m["bottom"] / height,
                            wspace=m["wspace"], hspace=m["hspace"])
    _comparison_maps(fig, grid, img, maps, methods)
    ratios = [1.2, 0.9, 1.2][:3 if len(methods) > 1 else 2]
    bottom = grid[2, :].subgridspec(1, len(ratios), width_ratios=ratios, wspace=m["bottom_wspace"])
    _comparison_stat_bars(fig.add_subplot(bottom[0]), fig.add_subplot(bottom[1]), stats, methods,
                          float((img > 0).mean()))
    if len(methods) > 1:  # one method has no agreement to show
        ax = fig.add_subplot(bottom[2])
        _correlation_heatmap(ax, _image_spearman(maps, methods), methods, "Agreement: Spearman ρ of |maps|",
                             {"cax": _colorbar_axis(ax)})
    fig.suptitle(f"{label} (model confidence {confidence:.1%}); row 2: each map over the image, opacity ~ |attr|",
                 fontsize="large")
    return _finish(fig, save)


def _comparison_jobs(selection: Selection, maps: dict, classes, methods, max_samples_per_class: int,
                     save_dir: str | None) -> list[dict]:
    """Keyword arguments of ``plot_attribution_comparison`` for the first ``max_samples_per_class`` selected
    images of each class (numpy arrays: drawing them needs no CUDA tensor)."""
    classes = _check_classes(classes)
    _check_int("max_samples_per_class", max_samples_per_class, low=1)
    methods = _resolve_methods(methods, maps)
    arrays = {m: _as_maps(maps[m], f"maps[{m!r}]", len(selection.x)) for m in methods}
    labels = _check_labels(selection.y, len(selection.x), len(classes))
    jobs = []
    for c, name in enumerate(classes):
        for i, idx in enumerate(np.flatnonzero(labels == c)[:max_samples_per_class]):
            fallback = selection.fallback is not None and bool(selection.fallback[idx])
            jobs.append({"image": _numpy(selection.x[idx]), "maps": {m: a[idx] for m, a in arrays.items()},
                         "label": name + FALLBACK_NOTE * fallback, "confidence": float(selection.confidence[idx]),
                         "methods": methods,
                         "save": None if save_dir is None else Path(save_dir) / f"comparison_{_slug(name)}_{i}.png"})
    return jobs


def plot_comparison_grid(selection: Selection, maps: dict, classes, methods=None,
                         max_samples_per_class: int = 1, save_dir: str | None = None) -> list[Figure]:
    """``plot_attribution_comparison`` for the first ``max_samples_per_class`` selected images of each class.

    ``selection``: ``Selection`` (``x: [N, 784]``, ``y: [N]``, ``confidence: [N]``); ``maps``: method ->
    ``[N, 784]``; ``classes: [C]`` names. A fallback image (``Selection.fallback``) says so in its title.
    With ``save_dir`` each figure is saved as
    ``{save_dir}/comparison_{class-slug}_{i}.png``. Returns the figures (class order);
    ``render_comparison_grid`` draws the same figures side by side in several processes.
    """
    return [plot_attribution_comparison(**job)
            for job in _comparison_jobs(selection, maps, classes, methods, max_samples_per_class, save_dir)]


def render_comparison_grid(selection: Selection, maps: dict, classes, methods=None, max_samples_per_class: int = 1,
                           save_dir: str | None = None, workers: int | None = None, timer=None) -> list[bytes]:
    """The figures of ``plot_comparison_grid`` (same arguments), drawn side by side by ``render_figures``
    (``workers`` processes, default ``figure_workers``) and returned as PNG bytes for ``show`` (saved under
    ``save_dir`` too); ``timer``: a ``Stopwatch`` that gets each figure's seconds."""
    jobs = _comparison_jobs(selection, maps, classes, methods, max_samples_per_class, save_dir)  # numpy only
    return render_figures([functools.partial(plot_attribution_comparison, **job) for job in jobs], workers,
                          cuda_free=True, timer=timer)


# --- attribution maps: many images ----------------------------------------------------------------------
@_styled
def plot_class_average_maps(maps: dict, labels: torch.Tensor, classes, methods=None,
                            save: str | None = None) -> Figure:
    """Mean signed map of every class (columns) for every method (rows); one symmetric colour scale
    and colour bar per row.

    ``maps``: method -> ``[N, 784]``; ``labels: [N]`` class ids; ``classes: [C]`` names.
    """
    methods = _resolve_methods(methods, maps)
    classes = _check_classes(classes)
    n = len(_as_maps(maps[methods[0]], f"maps[{methods[0]!r}]"))
    lab = _check_labels(labels, n, len(classes))
    fig, axes = _fixed_grid(len(methods), len(classes), (0.08, 0.2), (1.5, 1.35, 0.9, 0.1))
    for r, m in enumerate(methods):
        arr = _as_maps(maps[m], f"maps[{m!r}]", n)
        means = {c: arr[lab == c].mean(0) for c in range(len(classes)) if (lab == c).any()}
        limit = _symmetric_limit(np.stack(list(means.values()))) if means else 1.0
        for c, ax in enumerate(axes[r]):
            _image_axis(ax)
            if c in means:
                im = _show_signed(ax, means[c].reshape(IMAGE_SIDE, IMAGE_SIDE), limit)
            if r == 0:
                ax.set_title(f"{classes[c]}\n(n = {(lab == c).sum()})", fontsize="small")
        axes[r, 0].set_ylabel(_label(m).replace(" ", "\n", 1), rotation=0, ha="right", va="center")
        if means:
            _side_colorbar(fig, im, axes[r, :], "mean attribution", shrink=0.9)
    fig.suptitle("Class-average signed attribution maps (one colour scale per method)")
    return _finish(fig, save)


def _pair_entries(cross_stats: dict, methods: list[str]) -> list[tuple[str, dict]]:
    """``[(display label, entry)]`` of every method pair in ``cross_stats["pairs"]``, in ``methods`` order."""
    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            entry = cross_stats["pairs"].get(f"{a}|{b}") or cross_stats["pairs"].get(f"{b}|{a}")
            if entry is None:
                raise ValueError(f"cross_stats has no statistics for the pair {a!r} / {b!r}")
            out.append((f"{_label(a)}\nvs {_label(b)}", entry))
    return out


def _pair_correlation_points(ax, pairs: list[tuple[str, dict]]) -> None:
    """Mean per-image correlations with 95 % CIs, one row per pair, one marker per correlation kind."""
    offsets = np.linspace(-0.3, 0.3, len(PAIR_CORRELATIONS))
    for off, (key, name) in zip(offsets, PAIR_CORRELATIONS.items()):
        means, err = _ci_errors([entry[key] for _, entry in pairs])
        ax.errorbar(means, np.arange(len(pairs)) + off, xerr=err, fmt="o", capsize=3, label=name)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(range(len(pairs)), [label for label, _ in pairs])
    ax.invert_yaxis()
    ax.set(xlim=(-1, 1), xlabel="mean per-image correlation (95 % CI)", title="Correlation between methods")
    ax.legend(fontsize="small", loc="lower left")


def _pair_excess_points(ax, pairs: list[tuple[str, dict]]) -> None:
    """Excess of each Spearman variant over its different-image null (mean, 95 % CI), one row per pair;
    the signed all-pixel value and its null are written at the right of each row."""
    offsets = np.linspace(-0.3, 0.3, len(NULL_CORRELATIONS))
    for off, (key, name) in zip(offsets, NULL_CORRELATIONS.items()):
        means, err = _ci_errors([entry["vs_null"][key]["excess"] for _, entry in pairs])
        ax.errorbar(means, np.arange(len(pairs)) + off, xerr=err, fmt="o", capsize=3, label=name)
    for y, (_, entry) in enumerate(pairs):
        s = entry["vs_null"]["spearman_signed_all"]
        ax.annotate(f"signed: {s['value']['mean']:.2f} vs null {s['null']['mean']:.2f}", (1, y), xycoords=(
            "axes fraction", "data"), xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
            fontsize="x-small", color="0.35")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(range(len(pairs)), [label for label, _ in pairs])
    ax.invert_yaxis()
    ax.set(xlim=(-0.5, 1), xlabel="Spearman ρ minus the different-image null (95 % CI)",
           title="Agreement beyond maps of another image of the same class")
    ax.legend(fontsize="small", loc="lower left")


@_styled
def plot_correlation_summary(cross_stats: dict, methods, save: str | None = None) -> Figure:
    """Agreement between methods over all images. With the different-image null (``vs_null``, from
    ``cross_method_statistics(..., x=, labels=)``): per pair the excess of Spearman (signed and |maps|,
    all and object pixels) over the null with 95 % CIs, the top-1 % pixel IoU, and the matrix of the
    signed all-pixel excess. Without it: the plain correlations and the matrix of Spearman on |maps|.

    ``cross_stats``: ``cross_method_statistics`` output; ``methods``: at least two names from METHOD_LABELS.
    """
    methods = _resolve_methods(methods, cross_stats.get("per_method", {}), "cross-method statistics")
    if len(methods) < 2:
        raise ValueError(f"plot_correlation_summary needs at least two methods, got {methods}")
    pairs = _pair_entries(cross_stats, methods)
    with_null = all("vs_null" in entry for _, entry in pairs)
    fig, ((ax_corr, ax_iou, ax_mat),) = _grid_figure(18, max(5.0, 1.0 * len(pairs) + 2), CORRELATION_LAYOUT, 1, 3,
                                                     width_ratios=[1.5, 0.8, 1.1])
    (_pair_excess_points if with_null else _pair_correlation_points)(ax_corr, pairs)
    means, err = _ci_errors([entry["top1pct_iou"] for _, entry in pairs])
    ax_iou.barh(np.arange(len(pairs)), means, xerr=err, capsize=3, color=sns.color_palette()[4])
    ax_iou.set_yticks(range(len(pairs)), [])
    ax_iou.invert_yaxis()
    ax_iou.set(xlim=(0, 1), xlabel="IoU of the top 1 % pixels (95 % CI)", title="Top-pixel overlap")
    if with_null:
        matrix = correlation_matrix(cross_stats, methods, "spearman_signed_all", "excess")
        title = "Signed Spearman ρ minus the null"
    else:
        matrix, title = correlation_matrix(cross_stats, methods, "spearman_abs"), "Mean Spearman ρ of |maps|"
    _correlation_heatmap(ax_mat, matrix, methods, title, {"cax": _colorbar_axis(ax_mat)})
    n = pairs[0][1]["spearman_abs"].get("n")
    _suptitle(fig, "Agreement between attribution methods" + (f" over {n} images" if n else ""))
    return _finish(fig, save)


# --- the perturbation family -----------------------------------------------------------------------------------
@_styled
def plot_perturbation_maps(selection: Selection, maps: dict, classes, methods=None, reference=("integrated",),
                           save: str | None = None) -> Figure:
    """The perturbation family's maps beside gradient maps, one selected image per class (rows): the image, each of
    ``reference`` (gradient methods, default integrated gradients; those missing from ``maps`` are skipped), then
    each of ``methods`` (default: every perturbation method of ``maps``). The families' maps are in different units,
    so each map is divided by its own ``MAP_CLIP_PERCENTILE`` of |value| and drawn on one diverging scale [-1, 1].

    ``selection``: ``Selection`` (``x: [N, 784]``, ``y: [N]``); ``maps``: method -> ``[N, 784]``; ``classes: [C]``.
    """
    classes = _check_classes(classes)
    if not hasattr(selection, "x") or not hasattr(selection, "y"):
        raise ValueError(f"selection must be the Selection of select_high_confidence, got {type(selection).__name__}")
    if not isinstance(maps, dict):
        raise ValueError(f"maps must be a dict of method name -> [N, 784] map, got {type(maps).__name__}")
    if isinstance(reference, str):
        reference = [reference]
    if methods is None:
        methods = [m for m in METHOD_FAMILIES["perturbation"] if m in maps]
    columns = [m for m in reference if m in maps] + _resolve_methods(methods, maps)
    _resolve_methods(columns, maps)  # known, present, no duplicates
    labels = _check_labels(selection.y, len(selection.x), len(classes))
    arrays = {m: _as_maps(maps[m], f"maps[{m!r}]", len(selection.x)) for m in columns}
    rows = [(c, int(np.flatnonzero(labels == c)[0])) for c in range(len(classes)) if (labels == c).any()]
    fig, axes = _fixed_grid(len(rows), len(columns) + 1, (0.08, 0.08), (1.25, 1.45, 0.85, 0.12))
    for r, (c, i) in enumerate(rows):
        _show_image(axes[r, 0], _as_image(selection.x[i]))
        axes[r, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center")
        for col, m in enumerate(columns, start=1):
            a = arrays[m][i].reshape(IMAGE_SIDE, IMAGE_SIDE)
            im = _show_signed(axes[r, col], np.clip(a / _symmetric_limit(a, MAP_CLIP_PERCENTILE), -1, 1), 1.0)
    for col, name in enumerate(["image", *(SHORT_LABELS.get(m, m) for m in columns)]):
        axes[0, col].set_title(name, fontsize="small")
    _side_colorbar(fig, im, axes, "attribution / its own\n99th-percentile |value|")
    _suptitle(fig, "Gradient and perturbation maps (red: evidence for the class)")
    return _finish(fig, save)


_FAMILY_GROUPS = ("within", "across", "within_second")  # the three agreement groups of ``family_agreement``


@_styled
def plot_family_agreement(cross_stats: dict, family_stats: dict, save: str | None = None) -> Figure:
    """Do the two families agree across more than within? Left: the matrix of the signed all-pixel Spearman excess
    over the different-image null between every pair of methods (``cross_method_statistics`` with ``x`` and
    ``labels``), the families split by lines. Right: per Spearman variant, the mean excess (95 % CI) over the pairs
    within the first family, across the families and within the second (``family_agreement``), with the paired
    difference across - within written beside it.
    """
    if not isinstance(cross_stats, dict) or "pairs" not in cross_stats:
        raise ValueError(f"cross_stats must be the result of cross_method_statistics, got {type(cross_stats).__name__}")
    families = family_stats.get("families") if isinstance(family_stats, dict) else None
    if not families or not family_stats.get("statistics"):
        raise ValueError("family_stats must be the result of family_agreement with its statistics, got "
                         f"{type(family_stats).__name__}")
    (first, a), (second, b) = families.items()
    methods = _resolve_methods([*a, *b], cross_stats.get("per_method", {}), "cross-method statistics")
    n = len(methods)
    lay, cell = FAMILY_LAYOUT, FAMILY_LAYOUT["cell"]
    width = lay["left"] + cell * n + lay["wspace"] + lay["points"] + lay["right"]
    fig, ((ax_mat, ax_pts),) = _grid_figure(width, lay["top"] + cell * n + lay["bottom"], lay, 1, 2,
                                            width_ratios=[cell * n, lay["points"]])
    matrix = correlation_matrix(cross_stats, methods, "spearman_signed_all", "excess")
    _correlation_heatmap(ax_mat, matrix, methods, "Signed Spearman ρ minus the null", {"cax": _colorbar_axis(ax_mat)})
    for pos in (len(a) - 0.5,):
        ax_mat.axhline(pos, color="0.1", lw=1.5)
        ax_mat.axvline(pos, color="0.1", lw=1.5)
    stats = family_stats["statistics"]
    keys = {"within": f"within_{first}", "across": "across", "within_second": f"within_{second}"}
    names = {"within": f"within {first}", "across": f"{first} × {second}", "within_second": f"within {second}"}
    variants = [f"spearman_{k}_{p}" for k in AGREEMENT_KINDS for p in PIXEL_SETS]
    offsets = np.linspace(-0.25, 0.25, len(_FAMILY_GROUPS))
    for off, group in zip(offsets, _FAMILY_GROUPS):
        present = [v for v in variants if keys[group] in stats[v]]
        if not present:
            continue
        means, err = _ci_errors([stats[v][keys[group]] for v in present])
        ax_pts.errorbar(means, [variants.index(v) + off for v in present], xerr=err, fmt="o", capsize=3,
                        color=FAMILY_GROUP_COLORS[group], label=names[group])
    for y, v in enumerate(variants):
        d = stats[v][f"across_minus_within_{first}"]
        ax_pts.annotate(f"across − within: {d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]", (1, y + 0.42),
                        xycoords=("axes fraction", "data"), xytext=(-4, 0), textcoords="offset points", ha="right",
                        va="center", fontsize="x-small", color="0.3")
    ax_pts.axvline(0, color="0.3", lw=0.8)
    ax_pts.set_yticks(range(len(variants)), [v.replace("spearman_", "").replace("_", ", ") for v in variants])
    ax_pts.set_ylim(len(variants) - 0.4, -0.6)
    ax_pts.set(xlim=(-0.3, 1), xlabel="mean Spearman ρ minus the null, per image (95 % CI)",
               title="Agreement within and across the families")
    ax_pts.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(_FAMILY_GROUPS))
    _suptitle(fig, f"Do {second} maps agree with {first} maps? ({family_stats['n_images']} images)")
    return _finish(fig, save)
