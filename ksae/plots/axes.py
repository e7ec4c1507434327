"""Small drawing helpers shared by the plot modules (images, signed maps, mosaics, labels)."""

from __future__ import annotations

import re

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .._util import IMAGE_SIDE, _check_choices, _describe, _numpy
from ..attribution import METHOD_LABELS
from .style import (
    CONTROL_LABELS,
    CONTROL_STYLES,
    DIVERGING_CMAP,
    IMAGE_CMAP,
    LOG_MINOR_SUBS,
    METHOD_COLORS,
    MOSAIC_GAP,
    MOSAIC_TITLE_GAP,
    SIDE_COLORBAR_INCHES,
)


def _mosaic(images: np.ndarray, row_gap: int = MOSAIC_GAP, col_gap: int = MOSAIC_GAP) -> np.ndarray:
    """``images: [R, C, 28, 28]`` (NaN: no image) as one ``[R * (28 + row_gap), C * (28 + col_gap)]`` array;
    each row starts with ``row_gap`` blank pixel rows (room for titles: ``_show_mosaic``), columns are
    ``col_gap`` apart. Gaps are NaN: drawn in the axes' background colour."""
    rows, cols = images.shape[:2]
    height, width = IMAGE_SIDE + row_gap, IMAGE_SIDE + col_gap
    out = np.full((rows * height, cols * width), np.nan)
    for r, c in np.ndindex(rows, cols):
        out[r * height + row_gap:(r + 1) * height, c * width:c * width + IMAGE_SIDE] = images[r, c]
    return out


def _show_mosaic(ax, images: np.ndarray, limit: float, titles, row_labels) -> object:
    """Signed ``images: [R, C, 28, 28]`` as one mosaic image on ``ax`` (diverging map on ``[-limit, limit]``),
    ``titles[r][c]`` above each panel ("" for none) and ``row_labels[r]`` left of each row. One artist
    instead of R x C axes; returns the image artist."""
    row_gap, col_gap = MOSAIC_TITLE_GAP
    im = _show_signed(ax, _mosaic(images, row_gap, col_gap), limit)
    height, width = IMAGE_SIDE + row_gap, IMAGE_SIDE + col_gap
    for (r, c), title in np.ndenumerate(np.asarray(titles, dtype=object)):
        if title:
            ax.text(c * width + IMAGE_SIDE / 2 - 0.5, r * height + row_gap - 1.5, title, ha="center", va="bottom",
                    fontsize="small")
    ax.set_yticks(np.arange(len(row_labels)) * height + row_gap + IMAGE_SIDE / 2 - 0.5, row_labels)
    ax.tick_params(axis="y", length=0)
    ax.spines[:].set_visible(False)
    return im


def _side_colorbar(fig: Figure, im, axes, label: str, shrink: float = 1.0) -> None:
    """A colour bar for ``im`` right of the block of ``axes`` (fixed layouts), ``shrink`` of its height."""
    from matplotlib.transforms import Bbox

    block = Bbox.union([ax.get_position() for ax in np.ravel(axes)])
    width_in = fig.get_size_inches()[0]
    height = block.height * shrink
    cax = fig.add_axes((block.x1 + SIDE_COLORBAR_INCHES[0] / width_in, block.y0 + (block.height - height) / 2,
                        SIDE_COLORBAR_INCHES[1] / width_in, height))
    fig.colorbar(im, cax=cax, label=label)


def _symmetric_limit(values, percentile: float = 100.0) -> float:
    """Half-width of a colour scale centred at 0: the ``percentile`` of |values| (1.0 if all zero)."""
    magnitude = np.abs(_numpy(values)).ravel()
    limit = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    if limit <= 0:
        limit = float(magnitude.max(initial=0.0))
    return limit if limit > 0 else 1.0


def _plain_number(value: float, _position=None) -> str:
    """A tick label as plain ``{value:g}`` text (a hyphen minus, as ``f"{value:g}"`` writes it)."""
    return f"{value:g}"


def _log_axis(ax, which: str = "y", minor_labels: bool = True) -> None:
    """Log scale on ``ax``'s ``which`` axis ('x' or 'y') with plain-number labels at 1-2-5 steps (at powers of
    10 only without ``minor_labels``: for axes spanning many decades, where 1-2-5 labels would collide)."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=LOG_MINOR_SUBS))
    axis.set_major_formatter(FuncFormatter(_plain_number))
    axis.set_minor_formatter(FuncFormatter(_plain_number) if minor_labels else NullFormatter())


def _image_axis(ax) -> None:
    """Strip ticks and grid from an axis that shows an image."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _show_image(ax, image: np.ndarray, title: str | None = None):
    """Draw ``image: [28, 28]`` in grey on [0, 1]; returns the image artist."""
    im = ax.imshow(image, cmap=IMAGE_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    _image_axis(ax)
    if title:
        ax.set_title(title)
    return im


def _show_signed(ax, image: np.ndarray, limit: float, title: str | None = None):
    """Draw signed ``image: [28, 28]`` with the diverging map on ``[-limit, limit]``; returns the artist."""
    im = ax.imshow(image, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    _image_axis(ax)
    if title:
        ax.set_title(title)
    return im


def _label(name: str) -> str:
    """Display name of a method or control ordering."""
    return METHOD_LABELS.get(name, CONTROL_LABELS.get(name, name))


def _color(name: str):
    """Plot colour of a method (controls get their grey)."""
    return METHOD_COLORS.get(name, CONTROL_STYLES.get(name, ("0.5", "-"))[0])


def _ordered(names) -> list[str]:
    """``names`` with methods first (in METHOD_LABELS order), then controls, then anything else."""
    names = list(names)
    known = list(METHOD_LABELS) + list(CONTROL_STYLES)
    return [n for n in known if n in names] + [n for n in names if n not in known]


def _resolve_methods(methods, available, what: str = "maps") -> list[str]:
    """Validated method names. ``methods=None`` means every method of ``available`` (``maps``, a dict keyed by
    method; METHOD_LABELS order).

    Raises ValueError for ``available`` that is not a dict, names not in METHOD_LABELS (naming the closest),
    names missing from ``available``, duplicates or none.
    """
    if not isinstance(available, dict):
        raise ValueError(f"{what} must be a dict of method name -> map, got {_describe(available)}")
    available = list(available)
    if methods is None:
        chosen = [m for m in METHOD_LABELS if m in available]
    else:
        chosen = _check_choices("methods", [methods] if isinstance(methods, str) else methods, METHOD_LABELS,
                                "among")
        missing = [m for m in chosen if m not in available]
        if missing:
            raise ValueError(f"methods must be among the {what}'s, got {missing}, which the {what} lack (they hold "
                             f"{available})")
    if not chosen:
        raise ValueError(f"methods must not be empty, got {_describe(methods)}" if methods is not None else
                         f"{what} must hold a method to plot, got {available}, none of them in {list(METHOD_LABELS)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"methods must be distinct, got duplicates: {chosen}")
    return chosen


def _slug(name: str) -> str:
    """File-name-safe version of a class name: 'T-shirt/top' -> 't-shirt-top'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _ci_errors(summaries) -> tuple[np.ndarray, np.ndarray]:
    """Means ``[n]`` and error-bar half-widths ``[2, n]`` from ``summarize`` dicts (``mean``, ``ci95``)."""
    means = np.array([s["mean"] for s in summaries], dtype=np.float64)
    ci = np.array([s["ci95"] for s in summaries], dtype=np.float64).reshape(-1, 2)
    return means, np.clip(np.stack([means - ci[:, 0], ci[:, 1] - means]), 0.0, None)


def _first_per_class(labels: torch.Tensor, n_classes: int, n: int, names) -> torch.Tensor:
    """Indices ``[n_classes, n]`` of the first ``n`` items of each class in ``labels: [N]``."""
    rows = []
    for c in range(n_classes):
        idx = torch.nonzero(labels == c)[:n, 0]
        if len(idx) < n:
            raise ValueError(f"class {names[c]!r} has only {len(idx)} images, asked for {n}")
        rows.append(idx)
    return torch.stack(rows)
