"""Figures of the unit atlas: firing density, dashboards, contribution against ablation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure

from .._util import IMAGE_SIDE, _check_int, _numpy
from ..units import (
    UNIT_BAND_SAMPLES,
    UNIT_HIST_BINS,
    UNIT_QUANTILE_BANDS,
    UNIT_TOP_IMAGES,
    _check_stats,
    _percent,
    contribution_ablation_agreement,
)
from .axes import _color, _image_axis, _log_axis, _mosaic, _show_signed, _symmetric_limit
from .figure import _finish, _message_figure
from .style import AGREEMENT_LAYOUT, DENSITY_LAYOUT, IMAGE_CMAP, LOG_BIN_MARGIN, MOSAIC_GAP, _grid_figure, _styled

if TYPE_CHECKING:
    from ..data import FashionMNIST
    from ..sae import SparseAutoencoder
    from ..units import UnitStats


# --- the unit atlas ------------------------------------------------------------------------------------
DENSITY_BINS = 40  # log-spaced bins of the firing-density histogram


DASHBOARD_TOP_COLUMNS = 8  # top-activating images per row of a dashboard's mosaic


MOSAIC_GAP_COLOR = "white"  # gaps between the images of a unit's mosaic


DASHBOARD_ROW_INCHES = 3.1  # height of one unit's row in the dashboard


@_styled
def plot_firing_density(stats: UnitStats, save: str | None = None) -> Figure:
    """Histogram of every unit's firing frequency (log-spaced bins; train and test overlaid), the standard
    'feature density' view of a sparse autoencoder. Units that never fire are counted in the title."""
    stats = _check_stats(stats)
    live = np.concatenate([stats.freq_train, stats.freq_test])
    live = live[live > 0]
    if live.size == 0:
        return _finish(_message_figure("Firing density", "no unit fires on any image"), save)
    fig, ((ax,),) = _grid_figure(8, 3.6, DENSITY_LAYOUT)
    bins = np.geomspace(live.min(), live.max() * (1 + LOG_BIN_MARGIN), DENSITY_BINS + 1)
    for name, freq, color in (("train", stats.freq_train, sns.color_palette()[0]),
                              ("test", stats.freq_test, sns.color_palette()[1])):
        ax.hist(freq[freq > 0], bins=bins, histtype="step", lw=1.8, color=color,
                label=f"{name} ({int((freq == 0).sum())} units never fire)")
    _log_axis(ax, "x", minor_labels=False)  # five decades: 1-2-5 labels would run into each other
    ax.axvline(np.median(stats.freq_test), color="0.3", ls=":", label="median (test)")
    ax.set(xlabel="firing frequency: fraction of images on which the unit fires (log scale)", ylabel="units")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"Firing density of all {len(stats.freq_test)} units ({int(stats.dead.sum())} dead: "
                 "never fire on a training or test image)")
    return _finish(fig, save)


def _unit_mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """``images: [n, 784]`` (NaN rows for empty cells) -> one ``[rows * 29 - 1, columns * 29 - 1]`` array,
    ``columns`` images a row, with NaN gaps (``_mosaic`` without its title room above the first row)."""
    rows = -(-len(images) // columns)
    grid = np.full((rows * columns, IMAGE_SIDE, IMAGE_SIDE), np.nan)
    grid[:len(images)] = images.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return _mosaic(grid.reshape(rows, columns, IMAGE_SIDE, IMAGE_SIDE))[MOSAIC_GAP:, :-MOSAIC_GAP]


def _test_images(data: FashionMNIST, ids: np.ndarray) -> np.ndarray:
    """``ids: [n]`` test ids (-1 = empty) -> ``[n, 784]`` images with NaN rows for the empty ones."""
    images = np.full((len(ids), IMAGE_SIDE**2), np.nan)
    valid = ids >= 0
    images[valid] = _numpy(data.x_test[torch.from_numpy(ids[valid])])
    return images


def _show_unit_mosaic(ax, mosaic: np.ndarray, title: str) -> None:
    """A grey-scale ``_unit_mosaic`` on ``ax``, gaps in ``MOSAIC_GAP_COLOR``."""
    cmap = plt.get_cmap(IMAGE_CMAP).with_extremes(bad=MOSAIC_GAP_COLOR)
    ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0)
    _image_axis(ax)
    ax.set_title(title, fontsize="small")


def _dashboard_bars(ax_cls, ax_eff, stats: UnitStats, unit: int, legend: bool) -> None:
    """Class distribution of the images ``unit`` fires on; its mean contribution to and the logit drop
    when zeroed, per class."""
    y = np.arange(len(stats.classes))
    ax_cls.barh(y, stats.class_counts[unit], color=sns.color_palette()[0])
    ax_cls.set_yticks(y, stats.classes, fontsize="small")
    ax_cls.invert_yaxis()
    ax_cls.set(xlabel="test images it fires on", title=f"purity {stats.purity[unit]:.0%}, "
               f"recall {stats.recall[unit]:.0%}")
    height = 0.4
    ax_eff.barh(y - height / 2, stats.contribution[unit], height, label="mean contribution", color=_color("decoder"))
    ax_eff.barh(y + height / 2, -stats.ablation[unit], height, label="logit drop when zeroed", color="0.45")
    ax_eff.axvline(0, color="0.2", lw=0.8)
    ax_eff.set_yticks(y, [])
    ax_eff.invert_yaxis()
    ax_eff.set(xlabel="class logit", title="contribution vs ablation")
    if legend:
        ax_eff.legend(fontsize="x-small", loc="lower right")


def _dashboard_row(fig, cells, stats: UnitStats, sae: SparseAutoencoder, data: FashionMNIST, unit: int,
                   legend: bool):
    """One unit's dashboard in ``cells`` (a row of 7 gridspec cells); returns the encoder row's image artist."""
    atoms = [_numpy(sae.W_dec[unit]), _numpy(sae.W_enc[unit])]
    for col, (values, name) in enumerate(zip(atoms, ("decoder atom", "encoder row"))):
        limit = _symmetric_limit(values)  # each drawn on its own scale, +-limit -> +-1 (one shared colour bar)
        im = _show_signed(fig.add_subplot(cells[col]), values.reshape(IMAGE_SIDE, IMAGE_SIDE) / limit, 1.0,
                          f"{name} (±{limit:.2g})")
    ax = fig.add_subplot(cells[2])
    _show_unit_mosaic(ax, _unit_mosaic(_test_images(data, stats.top_images[unit]), DASHBOARD_TOP_COLUMNS),
                 f"top {UNIT_TOP_IMAGES} test images (largest activation {stats.hist_max[unit]:.2f})")
    ax.set_ylabel(f"unit {unit}", fontsize="large", fontweight="bold")
    _show_unit_mosaic(fig.add_subplot(cells[3]), _unit_mosaic(_test_images(data, stats.band_images[unit][::-1].ravel()),
                                                   UNIT_BAND_SAMPLES),
                 "random per quantile band: " + " / ".join(f"{100 * lo:.0f}–{100 * hi:.0f}" for lo, hi
                                                           in UNIT_QUANTILE_BANDS[::-1]) + " %")
    ax = fig.add_subplot(cells[4])
    edges = np.linspace(0, stats.hist_max[unit], UNIT_HIST_BINS + 1)
    ax.stairs(stats.hist[unit], edges, fill=True, color=sns.color_palette()[0])
    ax.set(xlabel="activation", ylabel="test images", title=f"fires on {_percent(stats.freq_test[unit])} of test")
    _dashboard_bars(fig.add_subplot(cells[5]), fig.add_subplot(cells[6]), stats, unit, legend)
    return im


@_styled
def plot_unit_dashboard(stats: UnitStats, sae: SparseAutoencoder, data: FashionMNIST, units: Sequence[int],
                        save: str | None = None) -> Figure:
    """A dashboard row per unit of ``units``: decoder atom and encoder row (diverging, centred at 0), its 16
    top-activating test images, 4 random test images from each activation quantile band (top band first),
    activation histogram, class distribution, and mean contribution against ablation per class logit.
    The unit's one-line description heads its row."""
    stats = _check_stats(stats)
    units = [units] if isinstance(units, (int, np.integer)) else list(units)
    if not units:
        raise ValueError("units is empty: pass the ids of the units to show")
    for j in units:
        _check_int("unit", j, low=0, high=len(stats.freq_test) - 1, high_name="the last unit id")
    # a fixed grid, not constrained layout: laying out ~7 axes per unit was most of the figure's time
    fig = plt.figure(figsize=(24, DASHBOARD_ROW_INCHES * len(units)))
    grid = fig.add_gridspec(len(units), 7, width_ratios=[1, 1, 3.3, 1.7, 1.5, 1.6, 1.6], left=0.07, right=0.99,
                            bottom=0.9 / (DASHBOARD_ROW_INCHES * len(units)),
                            top=1 - 0.75 / (DASHBOARD_ROW_INCHES * len(units)), wspace=0.45, hspace=0.95)
    for row, j in enumerate(units):
        im = _dashboard_row(fig, [grid[row, col] for col in range(7)], stats, sae, data, int(j), legend=row == 0)
        top = grid[row, 0].get_position(fig).y1
        fig.text(0.07, top + 0.42 / fig.get_figheight(), f"unit {j}: {stats.descriptions[j]}", fontsize="medium",
                 fontweight="bold")
    # one colour bar: every atom and encoder row is drawn on the same relative scale
    first = grid[0, 0].get_position(fig)
    fig.colorbar(im, cax=fig.add_axes([0.02, first.y0, 0.006, first.height]), label="weight ÷ its max |weight|")
    return _finish(fig, save)


@_styled
def plot_contribution_vs_ablation(stats: UnitStats, agreement: dict | None = None,
                                  save: str | None = None) -> Figure:
    """Every unit that fires on a test image: its mean decoder-weighted contribution to its majority class's
    logit against the drop of that logit when it is zeroed, coloured by that class, with the y = x line and
    the correlations (bootstrap 95 % CIs) of ``contribution_ablation_agreement`` (computed if not given)."""
    stats = _check_stats(stats)
    agreement = agreement or contribution_ablation_agreement(stats)
    x, y = stats.majority_value(stats.contribution), -stats.majority_value(stats.ablation)
    fig, ((ax,),) = _grid_figure(7.5, 5.5, AGREEMENT_LAYOUT)
    palette = sns.color_palette("tab10", len(stats.classes))
    for c, name in enumerate(stats.classes):
        mine = stats.majority == c
        if mine.any():
            ax.scatter(x[mine], y[mine], s=10, alpha=0.7, color=palette[c], label=f"{name} ({mine.sum()})")
    finite = np.isfinite(x) & np.isfinite(y)
    lo, hi = min(x[finite].min(), y[finite].min()), max(x[finite].max(), y[finite].max())
    ax.plot([lo, hi], [lo, hi], color="0.3", ls="--", lw=1, label="y = x")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.axvline(0, color="0.6", lw=0.6)
    ax.set(xlabel="mean contribution to its majority class's logit (Rescale share, where it fires)",
           ylabel="drop of that logit when the unit is zeroed")
    ax.legend(title="majority class (units)", fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    p, s = agreement["pearson"], agreement["spearman"]
    ax.set_title(f"Contribution vs ablation, {agreement['n_units']} units: Pearson {p['value']:.3f} "
                 f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}], Spearman {s['value']:.3f} "
                 f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]\nsame sign for {agreement['same_sign']:.0%} of units",
                 fontsize="small")
    return _finish(fig, save)
