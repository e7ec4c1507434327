"""Figures of the data, the training curves, the autoencoder and the classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .._util import IMAGE_SIDE, _as_image, _check_classes, _check_int, _check_labels, _numpy
from .axes import _first_per_class, _mosaic, _show_image, _show_mosaic, _show_signed, _side_colorbar, _symmetric_limit
from .figure import _finish, _message_figure
from .maps import _annotated_heatmap
from .style import (
    ATLAS_COLUMNS,
    ATLAS_HISTOGRAM_INCHES,
    CONFUSION_CMAP,
    CONFUSION_LAYOUT,
    MOSAIC_GAP,
    SMALL_PANEL_INCHES,
    TRAINING_LAYOUT,
    USAGE_BINS,
    _fixed_grid,
    _grid_figure,
    _styled,
    _suptitle,
)

if TYPE_CHECKING:
    from ..data import FashionMNIST
    from ..sae import SparseAutoencoder


# --- data and training ---------------------------------------------------------------------------------
@_styled
def plot_class_examples(data: FashionMNIST, n_per_class: int = 8, save: str | None = None) -> Figure:
    """The first ``n_per_class`` training images of every class; one row per class, named on the left.

    ``data``: FashionMNIST with ``x_train: [N, 784]``, ``y_train: [N]`` and ``classes: [C]`` names.
    """
    _check_int("n_per_class", n_per_class, low=1)
    classes = list(data.classes)
    idx = _first_per_class(data.y_train, len(classes), n_per_class, classes)
    images = data.x_train[idx.reshape(-1)].reshape(len(classes), n_per_class, IMAGE_SIDE, IMAGE_SIDE)
    width, height = 2.5 + SMALL_PANEL_INCHES * n_per_class, 0.6 + SMALL_PANEL_INCHES * len(classes)
    fig = plt.figure(figsize=(width, height))  # fixed layout: 1.3 in left for names, 1.2 in right, 0.5 in top
    ax = fig.add_axes((1.3 / width, 0.1 / height, 1 - 2.5 / width, 1 - 0.6 / height))
    im = _show_image(ax, _mosaic(_numpy(images)))  # one image for the whole grid: one artist, not C x n axes
    ax.set_yticks(np.arange(len(classes)) * (IMAGE_SIDE + MOSAIC_GAP) + MOSAIC_GAP + IMAGE_SIDE / 2 - 0.5, classes)
    ax.tick_params(axis="y", length=0)
    ax.spines[:].set_visible(False)
    _side_colorbar(fig, im, [ax], "pixel intensity", shrink=0.4)
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(series) > 1:
            ax.legend()
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)


def _plot_fvu_aux(ax, ae: dict) -> None:
    """Autoencoder FVU per epoch on ``ax`` and the kind's auxiliary term (``aux_name``: AuxK loss for top-k) on a
    twin y-axis."""
    _plot_epochs(ax, {"train": ae.get("fvu"), "validation": ae.get("val_fvu")}, "Autoencoder reconstruction", "FVU")
    aux, name = ae.get("aux_loss") or [], ae.get("aux_name", "AuxK loss")  # the kind's auxiliary term
    if aux:
        twin = ax.twinx()
        color = sns.color_palette()[2]  # not the validation curve's colour
        twin.plot(np.arange(1, len(aux) + 1), aux, marker="s", ls="--", color=color, label=f"{name} (right)")
        twin.set_ylabel(f"{name} (dashed)", color=color)
        twin.grid(False)
        if ax.get_legend() is not None:  # one legend for both axes, on the twin (drawn above the curves), where
            ax.get_legend().remove()  # the falling FVU and the saturating AuxK loss leave room
        twin.legend(handles=ax.get_lines() + twin.get_lines(), loc="center right")


@_styled
def plot_training_history(history: dict, save: str | None = None) -> Figure:
    """Per-epoch training curves from ``train_models``: autoencoder FVU (+ AuxK loss), dead fraction,
    classifier loss, and classifier train vs validation accuracy (the test set is never looked at per epoch).

    ``history``: ``{"ae": {"loss", "fvu", "aux_loss", "dormant_fraction", "val_fvu": [E]}, "clf": {"loss", "train_acc",
    "val_acc": [E]}, "seconds": {"ae", "clf"}}``; missing or empty parts are shown as 'no data', an
    empty history (e.g. from a checkpoint saved without one) as a short note.
    """
    history = history or {}
    ae, clf = history.get("ae") or {}, history.get("clf") or {}
    if not any(ae.values()) and not any(clf.values()):
        note = "This run has no training history (e.g. the models came from a checkpoint saved without one)."
        return _finish(_message_figure("Training history", note), save)
    fig, (axes,) = _grid_figure(17, 3.6, TRAINING_LAYOUT, 1, 4)
    _plot_fvu_aux(axes[0], ae)
    criterion = "AuxK criterion" if ae.get("aux_name", "AuxK loss") == "AuxK loss" else "no firing in dead_after images"
    _plot_epochs(axes[1], {"dormant": ae.get("dormant_fraction")}, f"Dormant units ({criterion})",
                 "fraction of units")
    _plot_epochs(axes[2], {"loss": clf.get("loss")}, "Classifier loss", "cross-entropy (train)")
    _plot_epochs(axes[3], {"train": clf.get("train_acc"), "validation": clf.get("val_acc")},
                 "Classifier accuracy", "accuracy")
    seconds = history.get("seconds") or {}
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    _suptitle(fig, "Training history" + (f" (wall time: {timing})" if timing else ""))
    return _finish(fig, save)


# --- autoencoder ---------------------------------------------------------------------------------------
@_styled
def plot_reconstructions(sae: SparseAutoencoder, data: FashionMNIST, device: torch.device,
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
    fig, axes = _fixed_grid(2 * n_per_class, len(classes), (0.12, 0.4), (0.45, 1.3, 0.75, 0.35))
    for c, name in enumerate(classes):
        axes[0, c].set_title(name)
        for i in range(n_per_class):
            im = _show_image(axes[2 * i, c], _as_image(x[c, i]))
            _show_image(axes[2 * i + 1, c], _as_image(x_hat[c, i].clamp(0, 1)))
            axes[2 * i + 1, c].set_xlabel(f"MSE {mse[c, i]:.4f}")
    for i in range(n_per_class):
        axes[2 * i, 0].set_ylabel("original")
        axes[2 * i + 1, 0].set_ylabel("reconstruction")
    _side_colorbar(fig, im, axes, "pixel intensity\n(reconstructions clipped to [0, 1])", shrink=0.7)
    fig.suptitle(f"Reconstructions with {sae.activation_label()} (mean MSE of these images {mse.mean():.4f})")
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
def plot_feature_atlas(sae: SparseAutoencoder, usage, n_units: int = 32, save: str | None = None) -> Figure:
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
    hist_inches = ATLAS_HISTOGRAM_INCHES
    fig, axes = _fixed_grid(n_rows, n_cols, (0.1, 0.45), (0.95, 1.3, 0.85, sum(hist_inches)))
    for ax in axes.flat[n_units:]:
        ax.remove()
    for ax, unit in zip(axes.flat, order):
        im = _show_signed(ax, atoms_all[unit].reshape(IMAGE_SIDE, IMAGE_SIDE), limit)
        ax.set_title(f"unit {unit}\n{100 * usage[unit]:.1f} %", fontsize="small")
    _side_colorbar(fig, im, axes.flat[:n_units], "decoder weight", shrink=0.6)
    width, height = fig.get_size_inches()
    grid_box = axes[0, 0].get_position()
    _usage_histogram(fig.add_axes((grid_box.x0, hist_inches[1] / height, 1 - grid_box.x0 - 1.3 / width,
                                   hist_inches[0] / height)), usage)
    fig.suptitle(f"Decoder atoms of the {n_units} most used units (title: unit id, % of training images)")
    return _finish(fig, save)


def _top_units_per_class(contrib: np.ndarray, labels: np.ndarray, n_classes: int, n_units: int) -> dict:
    """``{class: [(unit, mean contribution)] * n_units}`` from ``contrib: [N, H]``, ``labels: [N]``
    (classes without images are left out)."""
    top = {}
    for c in range(n_classes):
        if (labels == c).any():
            mean = contrib[labels == c].mean(0)
            top[c] = [(int(j), float(mean[j])) for j in np.argsort(-mean, kind="stable")[:n_units]]
    return top


@_styled
def plot_class_units(contributions: torch.Tensor, labels: torch.Tensor, sae: SparseAutoencoder,
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
    top = _top_units_per_class(contrib, lab, len(classes), n_units)
    limit = _symmetric_limit(atoms[[j for units in top.values() for j, _ in units]]) if top else 1.0
    images = np.full((len(classes), n_units, IMAGE_SIDE, IMAGE_SIDE), np.nan)
    titles = [[""] * n_units for _ in classes]
    for c, units in top.items():
        for i, (j, value) in enumerate(units):
            images[c, i] = atoms[j].reshape(IMAGE_SIDE, IMAGE_SIDE)
            titles[c][i] = f"unit {j}, c̄ = {value:+.2f}"
    panel_w, panel_h = 1.35 * SMALL_PANEL_INCHES, 1.2 * SMALL_PANEL_INCHES
    width, height = 2.8 + panel_w * n_units, 0.75 + panel_h * len(classes)
    fig = plt.figure(figsize=(width, height))  # fixed layout: class names left, colour bar right, title on top
    ax = fig.add_axes((1.6 / width, 0.1 / height, panel_w * n_units / width, panel_h * len(classes) / height))
    row_labels = [f"{name}\n(n = {(lab == c).sum()})" for c, name in enumerate(classes)]
    im = _show_mosaic(ax, images, limit, titles, row_labels)
    if top:
        _side_colorbar(fig, im, [ax], "decoder weight", shrink=0.4)
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
    fig, ((ax_cm, ax_bar),) = _grid_figure(15, 7, CONFUSION_LAYOUT, 1, 2, width_ratios=[2.15, 1])
    _annotated_heatmap(ax_cm, rates, classes, classes, CONFUSION_CMAP, (0, 1), ".2f",
                       "share of the true class's test images", fontsize="x-small")
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
