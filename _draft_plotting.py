from ksae_helpers import *  # noqa: F403 -- this file's body becomes section 10 of ksae_helpers.py
from ksae_helpers import _check_int  # private helper, already in scope once pasted

import functools
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: F401 -- importing pyplot hooks Jupyter's inline display of figures
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

# =====================================================================================================
# 10. Plotting
# =====================================================================================================
# Every function builds a ``matplotlib.figure.Figure`` (not registered with pyplot, so Jupyter shows it
# exactly once, when it is a cell's value or passed to ``display``; dropping it frees it), optionally
# saves it as a PNG (``save=path``; parent folders are created) and returns it. Signed quantities use a
# diverging colour map centred at 0 with a symmetric scale.

DPI = 110  # resolution of saved PNGs
IMAGE_SIDE = 28  # images are IMAGE_SIDE x IMAGE_SIDE pixels
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
ATLAS_COLUMNS = 8  # decoder atoms per row in the feature atlas
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
METHOD_COLORS = dict(zip(METHOD_LABELS, sns.color_palette("colorblind", len(METHOD_LABELS))))
CONTROL_STYLES = {"random": ("0.3", ":"), "intensity": ("0.5", "--"), "edges": ("0.65", "-.")}  # colour, dashes
CONTROL_LABELS = {"random": "Random order (control)", "intensity": "Pixel intensity (control)",
                  "edges": "Sobel edges (control)"}
QUADRATURE_LABELS = {"gausslegendre": "Gauss-Legendre", "riemann_trapezoid": "trapezoid",
                     "riemann_left": "left Riemann", "riemann_right": "right Riemann",
                     "riemann_middle": "midpoint"}
SHORT_LABELS = {"integrated": "IG", "simple": "Gradient", "smoothgrad": "SmoothGrad", "decoder": "Decoder-w."}
IMAGE_STATS = {"mean_abs": "mean |attr|", "max_abs": "max |attr|", "std": "std"}  # per-image statistics
PAIR_CORRELATIONS = {"spearman_signed": "Spearman, signed", "spearman_abs": "Spearman, |maps|",
                     "pearson_signed": "Pearson, signed", "pearson_abs": "Pearson, |maps|"}
K_SWEEP_PANELS = {"fvu": "FVU (test)", "dead_units": "dead units", "test_accuracy": "test accuracy",
                  "deletion_auc_integrated": "deletion AUC, IG (lower = better)"}


# --- shared helpers ----------------------------------------------------------------------------------


def _styled(fn):
    """Build (and save) a figure inside the module's seaborn style without changing global rcParams."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sns.axes_style(STYLE), sns.plotting_context(CONTEXT, font_scale=FONT_SCALE):
            return fn(*args, **kwargs)

    return wrapper


def _new_figure(width: float, height: float) -> Figure:
    """An empty constrained-layout figure of ``width`` x ``height`` inches."""
    return Figure(figsize=(width, height), layout="constrained")


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    """Save ``fig`` at ``DPI`` if ``save`` is a path (parent folders created); return ``fig``.

    Without ``save`` the figure is laid out once here, so its ticks are created in the module's style.
    """
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    else:
        fig.draw_without_rendering()
    return fig


def _message_figure(title: str, message: str) -> Figure:
    """A small figure that only says ``message`` (for inputs with nothing to plot)."""
    fig = _new_figure(6, 2)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return fig


def _numpy(values) -> np.ndarray:
    """A tensor or array-like as a float64 numpy array (detached, on the CPU)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _as_image(values, name: str = "image") -> np.ndarray:
    """``values: [784]`` (any shape holding 784 numbers) -> ``[28, 28]`` float64 array."""
    arr = _numpy(values)
    if arr.size != IMAGE_SIDE**2:
        raise ValueError(f"{name} must hold {IMAGE_SIDE**2} pixels, got shape {list(arr.shape)}")
    return arr.reshape(IMAGE_SIDE, IMAGE_SIDE)


def _as_maps(values, name: str, n: int | None = None) -> np.ndarray:
    """``values: [N, 784]`` (or ``[N, 28, 28]``...) -> ``[N, 784]`` float64 array; checks ``N == n``."""
    arr = _numpy(values)
    if arr.ndim < 2 or arr[0].size != IMAGE_SIDE**2:
        raise ValueError(f"{name} must have shape [N, {IMAGE_SIDE**2}], got {list(arr.shape)}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} holds {len(arr)} maps but there are {n} images")
    return arr.reshape(len(arr), -1)


def _symmetric_limit(values, percentile: float = 100.0) -> float:
    """Half-width of a colour scale centred at 0: the ``percentile`` of |values| (1.0 if all zero)."""
    magnitude = np.abs(_numpy(values)).ravel()
    limit = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    if limit <= 0:
        limit = float(magnitude.max(initial=0.0))
    return limit if limit > 0 else 1.0


def _log_axis(ax, which: str = "y") -> None:
    """Log scale on ``ax``'s ``which`` axis ('x' or 'y') with plain-number labels at 1-2-5 steps."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=LOG_MINOR_SUBS))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _image_axis(ax) -> None:
    """Strip ticks and grid from an axis that shows an image."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _show_image(ax, image: np.ndarray, title: str | None = None):
    """Draw ``image: [28, 28]`` in grey on [0, 1]; returns the image artist."""
    im = ax.imshow(image, cmap=IMAGE_CMAP, vmin=0.0, vmax=1.0)
    _image_axis(ax)
    if title:
        ax.set_title(title)
    return im


def _show_signed(ax, image: np.ndarray, limit: float, title: str | None = None):
    """Draw signed ``image: [28, 28]`` with the diverging map on ``[-limit, limit]``; returns the artist."""
    im = ax.imshow(image, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit)
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
    """Validated method names. ``methods=None`` means every method of ``available`` (METHOD_LABELS order).

    Raises ValueError for names not in METHOD_LABELS, names missing from ``available``, duplicates or none.
    """
    available = list(available)
    if methods is None:
        chosen = [m for m in METHOD_LABELS if m in available]
    else:
        chosen = [methods] if isinstance(methods, str) else list(methods)
        unknown = [m for m in chosen if m not in METHOD_LABELS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; methods must be among {list(METHOD_LABELS)}")
        missing = [m for m in chosen if m not in available]
        if missing:
            raise ValueError(f"method(s) {missing} are not in the {what} (which hold {available})")
    if not chosen:
        raise ValueError("methods is empty" if methods is not None else
                         f"no methods to plot: the {what} hold {available}, none of them in {list(METHOD_LABELS)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"methods contains duplicates: {chosen}")
    return chosen


def _check_classes(classes) -> list[str]:
    """``classes`` as a non-empty list of names (strings)."""
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or len(classes) == 0:
        raise ValueError(f"classes must be a non-empty sequence of class names, got {classes!r}")
    return list(classes)


def _check_labels(labels, n: int, n_classes: int) -> np.ndarray:
    """``labels: [n]`` integer class ids in ``[0, n_classes)`` as an int64 array."""
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be {n} integer class ids (shape [{n}]), got {lab.dtype} {list(lab.shape)}")
    if n and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes - 1}] (one per class name), got {lab.min()}..{lab.max()}")
    return lab.astype(np.int64)


def _slug(name: str) -> str:
    """File-name-safe version of a class name: 'T-shirt/top' -> 't-shirt-top'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _ci_errors(summaries) -> tuple[np.ndarray, np.ndarray]:
    """Means ``[n]`` and error-bar half-widths ``[2, n]`` from ``summarize`` dicts (``mean``, ``ci95``)."""
    means = np.array([s["mean"] for s in summaries], dtype=np.float64)
    ci = np.array([s["ci95"] for s in summaries], dtype=np.float64).reshape(-1, 2)
    return means, np.clip(np.stack([means - ci[:, 0], ci[:, 1] - means]), 0.0, None)


def _ci_text(summary: dict, fmt: str = ".3f") -> str:
    """'0.123 [0.100, 0.150]' from a ``summarize`` dict."""
    lo, hi = summary["ci95"]
    return f"{summary['mean']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _first_per_class(labels: torch.Tensor, n_classes: int, n: int, names) -> torch.Tensor:
    """Indices ``[n_classes, n]`` of the first ``n`` items of each class in ``labels: [N]``."""
    rows = []
    for c in range(n_classes):
        idx = torch.nonzero(labels == c)[:n, 0]
        if len(idx) < n:
            raise ValueError(f"class {names[c]!r} has only {len(idx)} images, asked for {n}")
        rows.append(idx)
    return torch.stack(rows)


# --- data and training ---------------------------------------------------------------------------------


@_styled
def plot_class_examples(data: FashionMNIST, n_per_class: int = 8, save: str | None = None) -> Figure:
    """The first ``n_per_class`` training images of every class; one row per class, named on the left.

    ``data``: FashionMNIST with ``x_train: [N, 784]``, ``y_train: [N]`` and ``classes: [C]`` names.
    """
    _check_int("n_per_class", n_per_class, low=1)
    classes = list(data.classes)
    idx = _first_per_class(data.y_train, len(classes), n_per_class, classes)
    fig = _new_figure(SMALL_PANEL_INCHES * n_per_class + 2.5, SMALL_PANEL_INCHES * len(classes) + 0.5)
    axes = fig.subplots(len(classes), n_per_class, squeeze=False)
    for c, name in enumerate(classes):
        for ax, i in zip(axes[c], idx[c]):
            im = _show_image(ax, _as_image(data.x_train[i]))
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.colorbar(im, ax=axes, shrink=0.4, label="pixel intensity")
    fig.suptitle(f"Fashion-MNIST: the first {n_per_class} training images of each class")
    return _finish(fig, save)


def _plot_epochs(ax, series: dict, title: str, ylabel: str) -> None:
    """Per-epoch curves ``series: {label: [E] values}`` on ``ax``; says 'no data' when all are empty."""
    n_epochs = max((len(v) for v in series.values() if v), default=0)
    for label, values in series.items():
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=label)
    if n_epochs == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    else:
        ax.set_xlim(0.5, n_epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(series) > 1:
            ax.legend()
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)


def _plot_fvu_aux(ax, ae: dict) -> None:
    """Autoencoder FVU per epoch on ``ax`` and the AuxK loss on a twin y-axis."""
    _plot_epochs(ax, {"FVU": ae.get("fvu")}, "Autoencoder reconstruction", "FVU (train)")
    aux = ae.get("aux_loss") or []
    if aux:
        twin = ax.twinx()
        color = sns.color_palette()[1]
        twin.plot(np.arange(1, len(aux) + 1), aux, marker="s", ls="--", color=color)
        twin.set_ylabel("AuxK loss (dashed)", color=color)
        twin.grid(False)


@_styled
def plot_training_history(history: dict, save: str | None = None) -> Figure:
    """Per-epoch training curves from ``train_models``: autoencoder FVU (+ AuxK loss), dead fraction,
    classifier loss, and classifier train vs test accuracy.

    ``history``: ``{"ae": {"loss", "fvu", "aux_loss", "dead_fraction": [E]}, "clf": {"loss", "train_acc",
    "val_acc": [E]}, "seconds": {"ae", "clf"}}``; missing or empty parts are shown as 'no data', an
    empty history (e.g. from a checkpoint saved without one) as a short note.
    """
    history = history or {}
    ae, clf = history.get("ae") or {}, history.get("clf") or {}
    if not any(ae.values()) and not any(clf.values()):
        note = "This run has no training history (e.g. the models came from a checkpoint saved without one)."
        return _finish(_message_figure("Training history", note), save)
    fig = _new_figure(17, 3.6)
    axes = fig.subplots(1, 4)
    _plot_fvu_aux(axes[0], ae)
    _plot_epochs(axes[1], {"dead": ae.get("dead_fraction")}, "Dead units (AuxK criterion)", "fraction of units")
    _plot_epochs(axes[2], {"loss": clf.get("loss")}, "Classifier loss", "cross-entropy (train)")
    _plot_epochs(axes[3], {"train": clf.get("train_acc"), "test": clf.get("val_acc")},
                 "Classifier accuracy", "accuracy")
    seconds = history.get("seconds") or {}
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    fig.suptitle("Training history" + (f" (wall time: {timing})" if timing else ""))
    return _finish(fig, save)


# --- autoencoder ---------------------------------------------------------------------------------------


@_styled
def plot_reconstructions(sae: KSparseAutoencoder, data: FashionMNIST, device: torch.device,
                         n_per_class: int = 2, save: str | None = None) -> Figure:
    """The first ``n_per_class`` test images of every class (one column per class), each above its
    reconstruction, with the per-image MSE (mean over 784 pixels).

    ``sae``: the autoencoder (on ``device``); ``data``: FashionMNIST (``x_test: [N, 784]``, ``y_test: [N]``).
    """
    _check_int("n_per_class", n_per_class, low=1)
    classes = list(data.classes)
    idx = _first_per_class(data.y_test, len(classes), n_per_class, classes)  # [C, n]
    x = data.x_test[idx.reshape(-1)]
    with torch.no_grad():
        x_hat = sae(x.to(device)).cpu().reshape(len(classes), n_per_class, -1)
    x = x.reshape(len(classes), n_per_class, -1)
    mse = (x_hat - x).pow(2).mean(-1)  # [C, n]
    fig = _new_figure(SMALL_PANEL_INCHES * len(classes) + 2.5, 2.4 * SMALL_PANEL_INCHES * n_per_class + 0.6)
    axes = fig.subplots(2 * n_per_class, len(classes), squeeze=False)
    for c, name in enumerate(classes):
        axes[0, c].set_title(name)
        for i in range(n_per_class):
            im = _show_image(axes[2 * i, c], _as_image(x[c, i]))
            _show_image(axes[2 * i + 1, c], _as_image(x_hat[c, i].clamp(0, 1)))
            axes[2 * i + 1, c].set_xlabel(f"MSE {mse[c, i]:.4f}")
    for i in range(n_per_class):
        axes[2 * i, 0].set_ylabel("original")
        axes[2 * i + 1, 0].set_ylabel("reconstruction")
    fig.colorbar(im, ax=axes, shrink=0.5, label="pixel intensity (reconstructions clipped to [0, 1])")
    fig.suptitle(f"Reconstructions with k = {sae.k} active units (mean MSE of these images {mse.mean():.4f})")
    return _finish(fig, save)


def _usage_histogram(ax, usage: np.ndarray) -> None:
    """Histogram of unit usage ``usage: [H]`` (fractions) on ``ax``, counts on a log scale."""
    ax.hist(100 * usage, bins=USAGE_BINS, color=sns.color_palette()[0])
    ax.set_yscale("log")
    n_never = int((usage == 0).sum())
    ax.set(xlabel="unit usage: % of training images on which the unit fires", ylabel="units (log scale)",
           title=f"Usage of all {len(usage)} units ({n_never} never fire on a training image; "
                 f"median usage {100 * np.median(usage):.2f} %)")


@_styled
def plot_feature_atlas(sae: KSparseAutoencoder, usage, n_units: int = 32, save: str | None = None) -> Figure:
    """Decoder atoms (rows of ``sae.W_dec: [H, 784]``) of the ``n_units`` most used units, shared
    diverging scale, titled with unit id and usage; below them a histogram of every unit's usage.

    ``usage: [H]`` fraction of training images on which each unit fires
    (``evaluate_autoencoder(...)["unit_usage_train"]``).
    """
    usage = _numpy(usage)
    atoms_all = _numpy(sae.W_dec)
    if usage.shape != (len(atoms_all),):
        raise ValueError(f"usage must hold one value per unit ({len(atoms_all)}), got shape {list(usage.shape)}")
    _check_int("n_units", n_units, low=1, high=len(atoms_all), high_name="the number of units")
    order = np.argsort(-usage, kind="stable")[:n_units]
    limit = _symmetric_limit(atoms_all[order])
    n_cols = min(ATLAS_COLUMNS, n_units)
    n_rows = -(-n_units // n_cols)
    fig = _new_figure(SMALL_PANEL_INCHES * n_cols + 1.5, 1.45 * SMALL_PANEL_INCHES * n_rows + 3.0)
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1] * n_rows + [1.6])
    atom_axes = []
    for i, unit in enumerate(order):
        ax = fig.add_subplot(grid[i // n_cols, i % n_cols])
        im = _show_signed(ax, atoms_all[unit].reshape(IMAGE_SIDE, IMAGE_SIDE), limit)
        ax.set_title(f"unit {unit}\n{100 * usage[unit]:.1f} %", fontsize="small")
        atom_axes.append(ax)
    fig.colorbar(im, ax=atom_axes, shrink=0.6, label="decoder weight")
    _usage_histogram(fig.add_subplot(grid[n_rows, :]), usage)
    fig.suptitle(f"Decoder atoms of the {n_units} most used units (title: unit id, % of training images)")
    return _finish(fig, save)


@_styled
def plot_class_units(contributions: torch.Tensor, labels: torch.Tensor, sae: KSparseAutoencoder,
                     classes, n_units: int = 5, save: str | None = None) -> Figure:
    """For every class, the atoms of the ``n_units`` units with the largest mean contribution over
    that class's images; one row per class, titled 'unit j, c̄ = +value'.

    ``contributions: [N, H]`` per-unit contributions to the target logit
    (``decoder_weighted(..., return_contributions=True)[1]``); ``labels: [N]`` class ids; ``classes: [C]`` names.
    """
    contrib = _numpy(contributions)
    atoms = _numpy(sae.W_dec)
    if contrib.ndim != 2 or contrib.shape[1] != len(atoms):
        raise ValueError(f"contributions must have shape [N, {len(atoms)}], got {list(contrib.shape)}")
    classes = _check_classes(classes)
    lab = _check_labels(labels, len(contrib), len(classes))
    _check_int("n_units", n_units, low=1, high=len(atoms), high_name="the number of units")
    top = {}
    for c in range(len(classes)):
        if (lab == c).any():
            mean = contrib[lab == c].mean(0)
            top[c] = [(int(j), float(mean[j])) for j in np.argsort(-mean, kind="stable")[:n_units]]
    limit = _symmetric_limit(atoms[[j for units in top.values() for j, _ in units]]) if top else 1.0
    fig = _new_figure(1.35 * SMALL_PANEL_INCHES * n_units + 2.8, 1.2 * SMALL_PANEL_INCHES * len(classes) + 0.6)
    axes = fig.subplots(len(classes), n_units, squeeze=False)
    for c, name in enumerate(classes):
        for i, ax in enumerate(axes[c]):
            _image_axis(ax)
            if c in top:
                j, value = top[c][i]
                im = _show_signed(ax, atoms[j].reshape(IMAGE_SIDE, IMAGE_SIDE), limit)
                ax.set_title(f"unit {j}, c̄ = {value:+.2f}", fontsize="small")
        axes[c, 0].set_ylabel(f"{name}\n(n = {(lab == c).sum()})", rotation=0, ha="right", va="center")
    if top:
        fig.colorbar(im, ax=axes, shrink=0.4, label="decoder weight")
    fig.suptitle(f"Top {n_units} units per class by mean contribution c̄ to the class logit (decoder atoms)")
    return _finish(fig, save)


# --- classifier --------------------------------------------------------------------------------------


def _per_class_accuracy(metrics_clf: dict, classes: list[str], confusion: np.ndarray) -> np.ndarray:
    """Per-class accuracy ``[C]`` in ``classes`` order (from the metrics, else from the confusion matrix)."""
    stored = metrics_clf.get("per_class_accuracy") or {}
    if all(name in stored for name in classes):
        return np.array([stored[name] for name in classes], dtype=np.float64)
    return np.diag(confusion) / np.maximum(confusion.sum(1), 1)


@_styled
def plot_confusion_matrix(metrics_clf: dict, classes, save: str | None = None) -> Figure:
    """Row-normalised confusion matrix (rows = true class) as an annotated heatmap, and per-class accuracy.

    ``metrics_clf``: ``evaluate_classifier`` output (``confusion_matrix: [C][C]`` counts, ``test_accuracy``,
    ``per_class_accuracy: {name: acc}``); ``classes: [C]`` names.
    """
    classes = _check_classes(classes)
    confusion = np.asarray(metrics_clf["confusion_matrix"], dtype=np.float64)
    if confusion.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion_matrix must be {len(classes)} x {len(classes)} (one row per class name), "
                         f"got {list(confusion.shape)}")
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig = _new_figure(15, 7)
    ax_cm, ax_bar = fig.subplots(1, 2, width_ratios=[2.6, 1])
    sns.heatmap(rates, ax=ax_cm, annot=True, fmt=".2f", cmap=CONFUSION_CMAP, vmin=0, vmax=1, square=True,
                xticklabels=classes, yticklabels=classes, annot_kws={"size": "x-small"},
                cbar_kws={"label": "share of the true class's test images", "shrink": 0.8})
    ax_cm.set(xlabel="predicted class", ylabel="true class")
    ax_cm.tick_params(axis="x", labelrotation=45)
    accuracy = metrics_clf.get("test_accuracy", float(np.trace(confusion) / max(confusion.sum(), 1)))
    ax_cm.set_title(f"Confusion matrix, row-normalised (test accuracy {accuracy:.1%})")
    per_class = _per_class_accuracy(metrics_clf, classes, confusion)
    ax_bar.barh(classes, per_class, color=sns.color_palette()[0])
    ax_bar.invert_yaxis()
    ax_bar.axvline(accuracy, color="0.3", ls="--", label=f"overall {accuracy:.1%}")
    for y, value in enumerate(per_class):
        ax_bar.text(value, y, f" {value:.1%}", va="center", fontsize="small")
    ax_bar.set(xlim=(0, 1.15), xlabel="accuracy", title="Per-class test accuracy")
    ax_bar.legend(loc="lower right")
    return _finish(fig, save)


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


def _comparison_maps(fig, grid, image: np.ndarray, maps: dict, methods: list[str]) -> None:
    """Rows 1-2 of the comparison: the image and each signed map, then the object outline and overlays."""
    mask = image > 0
    cbar = {"shrink": 0.85, "pad": 0.02}
    ax = fig.add_subplot(grid[0, 0])
    fig.colorbar(_show_image(ax, image, "Input image"), ax=ax, label="pixel intensity", **cbar)
    ax = fig.add_subplot(grid[1, 0])
    im = _show_image(ax, image, f"Object pixels (x > 0): {mask.mean():.0%}")
    ax.contour(mask, levels=[0.5], colors=OBJECT_CONTOUR_COLOR, linewidths=1.2)
    fig.colorbar(im, ax=ax, label="pixel intensity", **cbar)
    for col, m in enumerate(methods, start=1):
        a = _as_image(maps[m], f"maps[{m!r}]")
        limit = _symmetric_limit(a, MAP_CLIP_PERCENTILE)
        ax = fig.add_subplot(grid[0, col])
        fig.colorbar(_show_signed(ax, a, limit, _label(m)), ax=ax, label="attribution", **cbar)
        ax = fig.add_subplot(grid[1, col])
        _show_image(ax, image, f"{_label(m)} on image")
        alpha = OVERLAY_ALPHA * np.clip(np.abs(a) / limit, 0, 1)
        overlay = ax.imshow(a, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, alpha=alpha)
        fig.colorbar(overlay, ax=ax, label="attribution (opacity ~ |attr|)", **cbar)


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


def _correlation_heatmap(ax, corr: np.ndarray, methods: list[str], title: str) -> None:
    """Annotated ``[M, M]`` correlation heatmap on [-1, 1] with the diverging map."""
    sns.heatmap(corr, ax=ax, vmin=-1, vmax=1, center=0, cmap=DIVERGING_CMAP, annot=True, fmt=".2f", square=True,
                xticklabels=[SHORT_LABELS.get(m, m) for m in methods], yticklabels=[_label(m) for m in methods],
                cbar_kws={"label": "Spearman ρ", "shrink": 0.8})
    ax.tick_params(axis="x", labelrotation=30)
    ax.tick_params(axis="y", labelrotation=0)
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
    fig = _new_figure(max(COMPARISON_MIN_WIDTH, PANEL_INCHES * 1.25 * n_cols), 3.6 * PANEL_INCHES)
    grid = fig.add_gridspec(3, n_cols, height_ratios=[1, 1, 1.5])
    _comparison_maps(fig, grid, img, maps, methods)
    ratios = [1.2, 0.9, 1.2][:3 if len(methods) > 1 else 2]
    bottom = grid[2, :].subgridspec(1, len(ratios), width_ratios=ratios)
    _comparison_stat_bars(fig.add_subplot(bottom[0]), fig.add_subplot(bottom[1]), stats, methods,
                          float((img > 0).mean()))
    if len(methods) > 1:  # one method has no agreement to show
        _correlation_heatmap(fig.add_subplot(bottom[2]), _image_spearman(maps, methods), methods,
                             "Agreement: Spearman ρ of |maps|")
    fig.suptitle(f"{label}: predicted correctly with confidence {confidence:.1%}", fontsize="large")
    return _finish(fig, save)


def plot_comparison_grid(selection: Selection, maps: dict, classes, methods=None,
                         max_samples_per_class: int = 1, save_dir: str | None = None) -> list[Figure]:
    """``plot_attribution_comparison`` for the first ``max_samples_per_class`` selected images of each class.

    ``selection``: ``Selection`` (``x: [N, 784]``, ``y: [N]``, ``confidence: [N]``); ``maps``: method ->
    ``[N, 784]``; ``classes: [C]`` names. With ``save_dir`` each figure is saved as
    ``{save_dir}/comparison_{class-slug}_{i}.png``. Returns the figures (class order).
    """
    classes = _check_classes(classes)
    _check_int("max_samples_per_class", max_samples_per_class, low=1)
    methods = _resolve_methods(methods, maps)
    arrays = {m: _as_maps(maps[m], f"maps[{m!r}]", len(selection.x)) for m in methods}
    labels = _check_labels(selection.y, len(selection.x), len(classes))
    figures = []
    for c, name in enumerate(classes):
        for i, idx in enumerate(np.flatnonzero(labels == c)[:max_samples_per_class]):
            save = None if save_dir is None else Path(save_dir) / f"comparison_{_slug(name)}_{i}.png"
            figures.append(plot_attribution_comparison(
                selection.x[idx], {m: a[idx] for m, a in arrays.items()}, name,
                float(selection.confidence[idx]), methods=methods, save=save))
    return figures


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
    fig = _new_figure(SMALL_PANEL_INCHES * len(classes) + 3.2, 1.35 * SMALL_PANEL_INCHES * len(methods) + 0.8)
    axes = fig.subplots(len(methods), len(classes), squeeze=False)
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
            fig.colorbar(im, ax=axes[r, :], shrink=0.9, pad=0.01, label="mean attribution")
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


@_styled
def plot_correlation_summary(cross_stats: dict, methods, save: str | None = None) -> Figure:
    """Agreement between methods over all images: per pair the mean Spearman and Pearson correlation
    (signed and on |maps|) with 95 % CIs, the top-1 % pixel IoU, and the matrix of Spearman on |maps|.

    ``cross_stats``: ``cross_method_statistics`` output; ``methods``: at least two names from METHOD_LABELS.
    """
    methods = _resolve_methods(methods, cross_stats.get("per_method", {}), "cross-method statistics")
    if len(methods) < 2:
        raise ValueError(f"plot_correlation_summary needs at least two methods, got {methods}")
    pairs = _pair_entries(cross_stats, methods)
    fig = _new_figure(18, max(5.0, 1.0 * len(pairs) + 2))
    ax_corr, ax_iou, ax_mat = fig.subplots(1, 3, width_ratios=[1.5, 0.8, 1.1])
    _pair_correlation_points(ax_corr, pairs)
    means, err = _ci_errors([entry["top1pct_iou"] for _, entry in pairs])
    ax_iou.barh(np.arange(len(pairs)), means, xerr=err, capsize=3, color=sns.color_palette()[4])
    ax_iou.set_yticks(range(len(pairs)), [])
    ax_iou.invert_yaxis()
    ax_iou.set(xlim=(0, 1), xlabel="IoU of the top 1 % pixels (95 % CI)", title="Top-pixel overlap")
    _correlation_heatmap(ax_mat, correlation_matrix(cross_stats, methods, "spearman_abs"), methods,
                         "Mean Spearman ρ of |maps|")
    n = pairs[0][1]["spearman_abs"].get("n")
    fig.suptitle("Agreement between attribution methods" + (f" over {n} images" if n else ""))
    return _finish(fig, save)


# --- faithfulness checks -------------------------------------------------------------------------------


def _perturbation_panel(ax, di: dict, mode: str, names: list[str]) -> None:
    """Mean target-probability curve of every ordering in ``names`` for ``mode`` on ``ax``."""
    for name in names:
        y = np.asarray(di["curves"][mode][name], dtype=np.float64)
        color, dashes = CONTROL_STYLES.get(name, (_color(name), "-"))
        ax.plot(np.linspace(0, 1, len(y)), y, color=color, ls=dashes, lw=1.8 if dashes == "-" else 1.4,
                label=f"{_label(name)}: AUC {_ci_text(di[mode][name])}")
    verb = "removed (set to 0)" if mode == "deletion" else "added to a black image"
    better = "lower" if mode == "deletion" else "higher"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"fraction of pixels {verb}, most important first",
           ylabel="target-class probability (mean)", title=f"{mode.capitalize()} ({better} AUC = better)")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16))


def _auc_bars(ax, di: dict, names: list[str]) -> None:
    """Deletion and insertion AUC (mean, 95 % CI) per ordering as grouped horizontal bars."""
    y = np.arange(len(names))
    for off, mode in zip((-0.2, 0.2), ("deletion", "insertion")):
        means, err = _ci_errors([di[mode][name] for name in names])
        ax.barh(y + off, means, 0.4, xerr=err, capsize=2, label=mode)
    ax.set_yticks(y, [_label(n) for n in names])
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="AUC (95 % CI)", title="Area under the curves")
    ax.legend(fontsize="small", loc="lower right")


@_styled
def plot_deletion_insertion(di: dict, save: str | None = None) -> Figure:
    """Deletion and insertion curves (methods solid, control orderings dashed grey) with AUC and CI in
    the legend, and the AUCs of both modes as bars with 95 % CIs.

    ``di``: ``deletion_insertion`` output: ``curves[mode][name]: [T]`` mean curves and
    ``{mode}[name]`` AUC summaries (``mean``, ``ci95``) for mode in ('deletion', 'insertion').
    """
    names = _ordered(di["curves"]["deletion"])
    for mode in ("deletion", "insertion"):
        missing = [n for n in names if n not in di["curves"][mode] or n not in di[mode]]
        if missing:
            raise ValueError(f"deletion_insertion result lacks {mode} curves or AUCs for {missing}")
    fig = _new_figure(19, 5.2 + 0.22 * len(names))
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.9])
    _perturbation_panel(axes[0], di, "deletion", names)
    _perturbation_panel(axes[1], di, "insertion", names)
    _auc_bars(axes[2], di, names)
    n = di.get("n_images")
    fig.suptitle("Faithfulness: deletion and insertion" + (f" ({n} images, " if n else " (")
                 + f"{di.get('pixels_per_step', '?')} pixels per step)")
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
        ax.text(0.02, 0.97, f"active-set switches on the path: mean {switches['mean']:.1f}\n"
                f"images with a switch: {switches.get('share_with_switches', float('nan')):.0%}\n"
                f"Spearman(switches, error): {switches.get('spearman_with_error_50', float('nan')):+.2f}",
                transform=ax.transAxes, va="top", fontsize="small",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})


@_styled
def plot_completeness(comp: dict, save: str | None = None) -> Figure:
    """Integrated-gradients completeness vs the number of steps: median relative error (log-log) and
    share of images within tolerance per quadrature rule, plus (if present) the per-image errors at 50 steps.

    ``comp``: ``ig_completeness`` output: ``table[method][n_steps] = {"median_rel_error",
    "share_within_tolerance", ...}``, ``tolerance``, ``per_image_50: [N] | None``, optional ``path_switches``.
    """
    table, tolerance = comp["table"], comp.get("tolerance")
    per_image = comp.get("per_image_50")
    fig = _new_figure(6 * (2 + (per_image is not None)), 4.6)
    axes = fig.subplots(1, 2 + (per_image is not None))
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
    fig.suptitle("Integrated gradients: does the attribution sum to F(x) − F(0)?")
    return _finish(fig, save)


@_styled
def plot_randomization(rand: dict, save: str | None = None) -> Figure:
    """Cascading randomization: Spearman correlation of |maps| with the trained model's maps after each
    cumulative randomization stage (1.0 at 'original'), with 95 % CI bands; dashed lines mark each
    method's reference (maps of different images under the trained model).

    ``rand``: ``randomization_check`` output: ``stages: [S]`` labels, ``spearman_abs[method]: [S]`` summaries,
    ``random_pair_reference[method]`` summary.
    """
    stages = ["original"] + list(rand["stages"])
    x = np.arange(len(stages))
    fig = _new_figure(12.5, 5.5)
    ax = fig.add_subplot()
    for m in _ordered(rand["spearman_abs"]):
        summaries = rand["spearman_abs"][m]
        if len(summaries) != len(stages) - 1:
            raise ValueError(f"randomization result for {m!r} has {len(summaries)} stages, expected {len(stages) - 1}")
        means, err = _ci_errors(summaries)
        means = np.concatenate([[1.0], means])
        err = np.concatenate([[[0.0], [0.0]], err], axis=1)
        ax.plot(x, means, marker="o", color=_color(m), label=_label(m))
        ax.fill_between(x, means - err[0], means + err[1], color=_color(m), alpha=CI_ALPHA)
        ref = rand.get("random_pair_reference", {}).get(m)
        if ref is not None:
            ax.axhline(ref["mean"], color=_color(m), ls="--", lw=1)
    ax.plot([], [], color="0.3", ls="--", lw=1, label="reference: maps of different images")
    ax.set_xticks(x, stages, rotation=30, ha="right")
    ax.set(ylim=(min(-0.05, ax.get_ylim()[0]), 1.05), xlabel="randomised up to (cumulative, top layer first)",
           ylabel="Spearman ρ of |maps| with the original", title="Model-parameter randomization check")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(fig, save)


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
    fig = _new_figure(7, 4.8)
    ax = fig.add_subplot()
    ax.bar(range(len(methods)), means, yerr=err, capsize=4, color=[_color(m) for m in methods])
    base = focus["object_pixel_share"]
    ax.axhline(base["mean"], color="0.3", ls="--", label=f"object pixels: {_ci_text(base, '.2f')}")
    ax.axhspan(*base["ci95"], color="0.3", alpha=CI_ALPHA)
    ax.set_xticks(range(len(methods)), [_label(m) for m in methods], rotation=20, ha="right")
    ax.set(ylim=(0, 1), ylabel="share of |attribution| on object pixels",
           title=f"Attribution on the object ({base.get('n', '?')} images; 95 % CI)")
    ax.legend(loc="lower right", fontsize="small")
    return _finish(fig, save)


@_styled
def plot_k_sweep(rows: list, save: str | None = None) -> Figure:
    """FVU, dead units, test accuracy and IG deletion AUC against the sparsity k (log x-axis).

    ``rows: [R]`` dicts with ``k`` and any of ``fvu``, ``dead_units``, ``test_accuracy``,
    ``deletion_auc_integrated`` (``None`` or missing values are skipped).
    """
    if not rows or any("k" not in r for r in rows):
        raise ValueError("rows must be a non-empty list of dicts, each with a 'k' entry")
    rows = sorted(rows, key=lambda r: r["k"])
    ks = [r["k"] for r in rows]
    fig = _new_figure(16, 3.8)
    for ax, (key, title) in zip(fig.subplots(1, len(K_SWEEP_PANELS)), K_SWEEP_PANELS.items()):
        points = [(r["k"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o")
        else:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(xlabel="k (active units per image)", ylabel=title, title=title)
    fig.suptitle("Sparsity sweep")
    return _finish(fig, save)
