"""Colours, sizes, fixed layouts and the seaborn style every figure is built in."""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from ..attribution import METHOD_FAMILIES

# Every function builds a figure, optionally saves it as a PNG (``save=path``; parent folders are created)
# and returns it, already closed in pyplot: Jupyter shows it exactly once when it is a cell's value or is
# passed to ``display`` (``fig = plot_...(...)`` shows nothing), and dropping it frees it. Signed
# quantities use a diverging colour map centred at 0 with a symmetric scale.
DPI = 90  # resolution of saved PNGs (what the notebook shows: keeps the committed notebook under 2 MB)


PNG_COLORS = 256  # saved PNGs are palette images with at most this many colours (``png_bytes``)


PNG_EXACT_COLORS = 8  # of which this many are kept for rare colours the palette would shift (``palette_png``)


PNG_TOLERANCE = 24  # colour levels (of 255) a palette may shift a pixel before its colour gets an exact entry


PNG_QUANTIZER = 2  # PIL.Image.Quantize.FASTOCTREE: 7x faster than median cut, as good with the exact entries


PNG_COMPRESS_LEVEL = 9  # zlib level of saved PNGs: 7.5 % smaller than PIL's default 6 for ~50 ms a figure, which
# keeps the committed notebook (every figure inline) under 2 MB


DIVERGING_CMAP = "RdBu_r"  # signed attributions and decoder atoms: red > 0, white = 0, blue < 0


IMAGE_CMAP = "gray"  # pixel intensities (white object on black background, as in the data)


CONFUSION_CMAP = "Blues"  # row-normalised confusion matrix (values in [0, 1])


MAP_CLIP_PERCENTILE = 99.0  # a map's colour scale ends at this percentile of |values| (outliers saturate)


OVERLAY_ALPHA = 0.9  # opacity of an attribution overlay where |value| reaches the colour scale's end


OBJECT_CONTOUR_COLOR = "gold"  # outline of the object pixels (x > 0)


CI_ALPHA = 0.2  # opacity of confidence bands


PANEL_INCHES = 2.4  # size of one image panel in the attribution comparison


SMALL_PANEL_INCHES = 1.25  # size of one image panel in image grids


COMPARISON_MIN_WIDTH = 12.0  # inches; keeps the statistics row of a comparison readable with one method
# Fixed layout of the comparison figure: figure margins in inches, gaps as fractions of a panel


COMPARISON_MARGINS = {"left": 0.95, "right": 0.75, "top": 0.55, "bottom": 1.2, "wspace": 0.45, "hspace": 0.3,
                      "bottom_wspace": 0.55}


COLORBAR_INSET = (1.04, 0.0, 0.05, 1.0)  # colour bar beside an image panel, in the panel's axes fractions


MOSAIC_GAP = 1  # pixels between the images of a mosaic (``_mosaic``)


MOSAIC_TITLE_GAP = (9, 12)  # blank pixels above each row and between the columns of a titled mosaic


SIDE_COLORBAR_INCHES = (0.2, 0.15)  # colour bar right of an image grid: gap and width in inches


ATLAS_COLUMNS = 8  # decoder atoms per row in the feature atlas


ATLAS_HISTOGRAM_INCHES = (2.0, 0.65, 0.6)  # usage histogram under the atlas: height, room below and above it


USAGE_BINS = 50  # histogram bins for unit usage


ERROR_BINS = 30  # log-spaced histogram bins for per-image completeness errors


LOG_BIN_MARGIN = 1e-6  # widens the last log bin so the largest value falls inside it


LOG_BAR_MARGIN = 2.0  # a log-scale bar chart starts this factor below its smallest bar


LEGEND_HEADROOM = 8.0  # factor above the tallest bar on a log axis that keeps a top legend clear


LOG_MINOR_SUBS = (2.0, 5.0)  # labelled minor ticks on log axes: 2x and 5x each power of 10


LOG_FLOOR = 1e-12  # values drawn on a log axis are clipped to at least this (exact zeros would vanish)


STYLE = "whitegrid"  # seaborn axes style, applied while a figure is built and saved


CONTEXT = "notebook"  # seaborn plotting context


FONT_SCALE = 0.85  # seaborn font scale
# Titles at a fixed height above the axes: matplotlib's automatic placement (clearing top tick labels, which
# no figure here has) measured every axis of a figure again at each draw, a third of a comparison's time


RC_FAST = {"axes.titley": 1.0}
# Fixed layouts of the plot figures (``_grid_figure``), in inches: margins ``left``, ``right`` (room for tick and
# axis labels, a twin axis, a legend outside the axes), ``top`` (suptitle and panel titles), ``bottom`` (x labels, a
# figure legend); gaps ``wspace`` between columns and ``hspace`` between rows (one number, or one per gap). They are
# the places constrained layout chose for the default run's labels (which it measured twice per figure: half of a
# figure's time, e.g. 0.47 of plot_faithfulness' 1.1 s), widened where a y-axis may carry tick labels of up to six
# characters ("0.0001", "−0.025"): tests/plots/test_plots_checks.py checks on other data that no label leaves the
# figure.


TRAINING_LAYOUT = {"left": 0.7, "right": 0.1, "top": 0.5, "bottom": 0.52, "wspace": [1.45, 0.75, 0.8]}  # twin axis


CONFUSION_LAYOUT = {"left": 3.2, "right": 0.04, "top": 0.25, "bottom": 0.91, "wspace": 0.72}


CORRELATION_LAYOUT = {"left": 1.8, "right": 1.25, "top": 0.5, "bottom": 0.52, "wspace": [0.34, 1.65]}


FAITHFULNESS_LAYOUT = {"left": 0.61, "right": 0.04, "top": 0.5, "bottom": 1.01, "wspace": [0.81, 2.54],
                       "hspace": 0.77}  # gap bars' ordering names left of the third column, the legend below


COMPLETENESS_LAYOUT = {"left": 0.87, "right": 0.07, "top": 0.5, "bottom": 0.52, "wspace": [0.75, 0.9, 1.6]}


COMPLETENESS_SWEEP_LAYOUT = {"left": 0.87, "right": 0.07, "top": 0.5, "bottom": 0.52, "wspace": 0.8}


RANDOMIZATION_ROW_INCHES = 5.0  # figure height per randomization variant drawn


RANDOMIZATION_LAYOUT = {"left": 0.65, "right": 2.97, "top": 0.5, "bottom": 1.3, "wspace": 0.39, "hspace": 1.57}


UNIT_DELETION_LAYOUT = {"left": 0.8, "right": 0.04, "top": 0.5, "bottom": 0.52, "wspace": 1.0, "hspace": 0.78}


OBJECT_FOCUS_LAYOUT = {"left": 0.72, "right": 0.04, "top": 0.25, "bottom": 0.79}


K_SWEEP_LAYOUT = {"left": 0.68, "right": 0.04, "top": 0.5, "bottom": 0.52, "wspace": [0.52, 0.72, 0.64]}


DENSITY_LAYOUT = {"left": 0.55, "right": 0.07, "top": 0.25, "bottom": 0.52}


AGREEMENT_LAYOUT = {"left": 0.59, "right": 1.75, "top": 0.39, "bottom": 0.52}  # class legend right of the axes


FAMILY_LAYOUT = {"left": 2.15, "right": 0.3, "top": 0.75, "bottom": 1.45, "wspace": 2.3, "cell": 0.5,
                 "points": 6.0}  # the families' agreement: inches, a matrix cell's side, the right panel's width


FAMILY_GROUP_COLORS = {"within": "0.55", "across": "#7b3294", "within_second": "#008837"}  # the agreement groups


MESSAGE_LAYOUT = {"left": 0.1, "right": 0.1, "top": 0.4, "bottom": 0.1}


SUPTITLE_PAD = 0.04  # inches between the top of a ``_grid_figure`` and its suptitle


FIGURE_WORKERS = 8  # most processes that draw figures side by side (render_figures)


CAN_FORK = sys.platform.startswith("linux")  # forked figure workers are safe here (elsewhere: drawn in-process)


HEATMAP_DARK = 0.408  # heatmap cells darker than this relative luminance get white text (seaborn's rule)


METHOD_COLORS = {  # the gradient family in seaborn's colourblind palette; the perturbation family in darker hues
    **dict(zip(METHOD_FAMILIES["gradient"], sns.color_palette("colorblind", len(METHOD_FAMILIES["gradient"])))),
    **dict(zip(METHOD_FAMILIES["perturbation"], [sns.color_palette("dark")[3], sns.color_palette("dark")[8],
                                                 sns.color_palette("dark")[0], sns.color_palette("colorblind")[9],
                                                 sns.color_palette("dark")[6]])),
}


CONTROL_STYLES = {"random": ("0.3", ":"), "random_object": ("0.15", (0, (1, 1))), "intensity": ("0.5", "--"),
                  "edges": ("0.65", "-.")}  # colour, dashes


CONTROL_LABELS = {"random": "Random order (control)", "random_object": "Random object pixels (control)",
                  "intensity": "Pixel intensity (control)",
                  "edges": "Sobel edges (control)"}


QUADRATURE_LABELS = {"gausslegendre": "Gauss-Legendre", "riemann_trapezoid": "trapezoid",
                     "riemann_left": "left Riemann", "riemann_right": "right Riemann",
                     "riemann_middle": "midpoint"}


FALLBACK_NOTE = ", below the confidence threshold (its class had none above)"  # title of a fallback image


SHORT_LABELS = {"integrated": "IG", "simple": "Gradient", "smoothgrad": "SmoothGrad", "decoder": "Decoder-w.",
                "input_x_gradient": "In×Grad", "input_x_smoothgrad": "In×SG", "occlusion": "Occlusion",
                "feature_ablation": "Ablation", "shapley": "Shapley", "kernel_shap": "KernelSHAP", "lime": "LIME"}


IMAGE_STATS = {"mean_abs": "mean |attr|", "max_abs": "max |attr|", "std": "std"}  # per-image statistics


NULL_CORRELATIONS = {"spearman_signed_all": "signed, all pixels", "spearman_abs_all": "|maps|, all pixels",
                     "spearman_signed_object": "signed, object pixels", "spearman_abs_object": "|maps|, object pixels"}


PAIR_CORRELATIONS = {"spearman_signed": "Spearman, signed", "spearman_abs": "Spearman, |maps|",
                     "pearson_signed": "Pearson, signed", "pearson_abs": "Pearson, |maps|"}


K_SWEEP_PANELS = {  # panel title -> [(row key, line label)]; a panel with one line needs no legend
    "FVU (test)": [("fvu", "test FVU")],
    "dead units (of d_hidden)": [("dead_units", "dead units")],
    "test accuracy": [("test_accuracy", "test accuracy")],
    "deletion AUC, zero substrate (lower = better)": [
        ("deletion_auc_integrated", "Integrated gradients"), ("deletion_auc_decoder", "Decoder-weighted"),
        ("deletion_auc_random", "Random order (control)")],
}


# --- shared helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _figure_style():
    """The module's seaborn style and plotting context (and ``RC_FAST``), for building and drawing a figure."""
    with sns.axes_style(STYLE), sns.plotting_context(CONTEXT, font_scale=FONT_SCALE), plt.rc_context(RC_FAST):
        yield


def _styled(fn):
    """Build (and save) a figure inside the module's seaborn style without changing global rcParams, with the
    garbage collector paused (``_gc_paused``). The wrapped plot function takes two more keyword arguments:
    ``timer`` (a ``Stopwatch``; the call's seconds go to ``timer.figures[fn.__name__]``) and ``layout`` (True:
    a figure that was not saved is laid out once here, in the module's style, as a notebook will show it; False
    when the caller renders it at once, as ``render_figures`` does)."""

    @functools.wraps(fn)
    def wrapper(*args, timer=None, layout: bool = True, **kwargs):
        t0 = time.perf_counter()
        with _gc_paused(), _figure_style():
            fig = fn(*args, **kwargs)
            if layout and isinstance(fig, Figure) and getattr(fig, "saved_png", None) is None:
                fig.draw_without_rendering()
        if timer is not None:
            timer.add_figure(fn.__name__, time.perf_counter() - t0)
        return fig

    wrapper.is_plot_function = True  # render_figures passes layout=False to these
    return wrapper


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector off inside (if it was on), back on after, even on an error; a nested
    pause leaves it to the outer one.
    Building and drawing a figure allocates many objects and frees them by reference counting, so collector
    passes find next to nothing: they were ~15 % of a comparison figure's time. The figure's own cycles are
    collected by the next pass after it (``_finish`` closes it in pyplot)."""
    pause = gc.isenabled()
    if pause:
        gc.disable()
    try:
        yield
    finally:
        if pause:
            gc.enable()


def _panel_spans(total: float, start: float, end: float, gaps, ratios) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths (inches) of ``len(ratios)`` panels sharing ``total`` inches in ``ratios``, less the
    margins ``start`` and ``end`` and the ``gaps`` between panels (one number, or one per gap)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    gaps = np.broadcast_to(np.asarray(gaps, dtype=np.float64), (len(ratios) - 1,))
    lengths = (total - start - end - gaps.sum()) * ratios / ratios.sum()
    return start + np.concatenate([[0.0], np.cumsum(lengths[:-1] + gaps)]), lengths


def _grid_figure(width: float, height: float, layout: dict, n_rows: int = 1, n_cols: int = 1, width_ratios=None,
                 height_ratios=None, sharey: bool = False) -> tuple[Figure, np.ndarray]:
    """A ``width`` x ``height`` inch figure with axes ``[n_rows, n_cols]`` at fixed positions: no layout engine,
    so the figure is measured and drawn once (``_finish`` closes it in pyplot). ``layout``: inches, as in
    ``TRAINING_LAYOUT``; the panels share what is left in ``width_ratios`` / ``height_ratios`` (default equal).
    ``sharey``: every panel shares the first one's y-axis, whose tick labels only the first column shows."""
    fig = plt.figure(figsize=(width, height))
    xs, ws = _panel_spans(width, layout["left"], layout["right"], layout.get("wspace", 0.0),
                          width_ratios or [1] * n_cols)
    ys, hs = _panel_spans(height, layout["top"], layout["bottom"], layout.get("hspace", 0.0),
                          height_ratios or [1] * n_rows)
    axes = np.empty((n_rows, n_cols), dtype=object)
    for r, c in np.ndindex(n_rows, n_cols):
        box = (xs[c] / width, 1 - (ys[r] + hs[r]) / height, ws[c] / width, hs[r] / height)
        axes[r, c] = fig.add_axes(box, sharey=axes[0, 0] if sharey and (r or c) else None)
        if sharey and c:
            axes[r, c].tick_params(labelleft=False)
    return fig, axes


def _suptitle(fig: Figure, title: str) -> None:
    """``title`` above all panels of a ``_grid_figure``, ``SUPTITLE_PAD`` inches below its top edge."""
    fig.suptitle(title, y=1 - SUPTITLE_PAD / fig.get_figheight())


def _fixed_grid(n_rows: int, n_cols: int, gap: tuple[float, float], margins: tuple[float, float, float, float],
                panel: float = SMALL_PANEL_INCHES) -> tuple[Figure, np.ndarray]:
    """A figure of ``n_rows`` x ``n_cols`` square image panels at fixed positions (no layout engine: the
    figure is drawn once, however many panels). ``panel``: side in inches; ``gap``: (horizontal, vertical)
    inches between panels (room for titles and labels); ``margins``: (left, right, top, bottom) inches.
    Returns the figure and its axes ``[n_rows, n_cols]`` (a ``_grid_figure`` sized to fit the panels)."""
    left, right, top, bottom = margins
    width = left + right + n_cols * panel + (n_cols - 1) * gap[0]
    height = top + bottom + n_rows * panel + (n_rows - 1) * gap[1]
    layout = {"left": left, "right": right, "top": top, "bottom": bottom, "wspace": gap[0], "hspace": gap[1]}
    return _grid_figure(width, height, layout, n_rows, n_cols)
