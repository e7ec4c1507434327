"""The unit atlas: statistics of every code unit (``unit_statistics``)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._util import (
    _check_choices,
    _check_classes,
    _check_device,
    _check_float,
    _check_fractions,
    _check_images,
    _check_instance,
    _check_int,
    _check_labels,
    _describe,
    _keeps_mode,
    _model_dtype,
    _numpy,
)
from .attribution import _check_pipeline, rescale_contributions
from .data import FashionMNIST
from .metrics import encode_dataset, firing_frequency
from .models import SparseCodeClassifier, SparseCodePipeline, densify
from .sae.base import _check_codes
from .stats import _rowwise_pearson, bootstrap_ci, rowwise_spearman

# --- the unit atlas: statistics of every code unit -------------------------------------------------------
UNIT_TOP_IMAGES = 16  # test images with the largest activation kept per unit


UNIT_QUANTILE_BANDS = ((0.0, 0.5), (0.5, 0.9), (0.9, 1.0))  # bands of a unit's activations on the images it
# fires on (quantile ranges: the lower half, the next 40 %, the top 10 %)


UNIT_BAND_SAMPLES = 4  # random test images drawn from each band (stratified: distinct when the band allows)


UNIT_HIST_BINS = 20  # activation histogram bins per unit, on [0, its largest test activation]


UNIT_COFIRING = 5  # co-firing units listed per unit (largest Jaccard overlap of the test images they fire on)


UNIT_ABLATION_ROWS = 16_384  # head evaluations per batch in the ablation (images x their active units)


UNIT_NEGLIGIBLE_LOGIT = 1e-3  # a unit's description calls a smaller mean logit change "unchanged"


UNIT_CONTRIBUTION_ROWS = 2048  # test images per batch when computing per-unit contributions


@dataclass
class UnitStats:
    """Statistics of every code unit (``H`` units, ``C`` classes), from the codes of the ``N`` test images
    unless a field says train. Image ids index the test set; ``-1`` pads where a unit fires on too few images.
    A unit *fires* on an image when its top-k activation is > 0. NaN marks a value undefined for a unit that
    fires on no test image."""

    classes: list[str]  # [C] class names
    freq_train: np.ndarray  # [H] fraction of training images on which the unit fires
    freq_test: np.ndarray  # [H] fraction of test images on which it fires
    n_fire: np.ndarray  # [H] number of test images on which it fires
    hist: np.ndarray  # [H, UNIT_HIST_BINS] counts of its non-zero test activations, bins on [0, hist_max]
    hist_max: np.ndarray  # [H] largest test activation (0 if it never fires on a test image)
    top_images: np.ndarray  # [H, UNIT_TOP_IMAGES] test ids, largest activation first
    top_values: np.ndarray  # [H, UNIT_TOP_IMAGES] their activations (0 where padded)
    band_images: np.ndarray  # [H, len(UNIT_QUANTILE_BANDS), UNIT_BAND_SAMPLES] random test ids per band
    class_counts: np.ndarray  # [H, C] test images it fires on, per true class
    majority: np.ndarray  # [H] most frequent true class among them (-1 if none)
    purity: np.ndarray  # [H] share of them in the majority class (its precision)
    recall: np.ndarray  # [H] share of the majority class's test images on which it fires
    contribution: np.ndarray  # [H, C] mean decoder-weighted contribution to each class logit (Rescale share of
    # G(z) - G(0), `rescale_contributions`), over the test images where the unit fires
    ablation: np.ndarray  # [H, C] mean change of each class logit when the unit is zeroed, same images
    ablation_accuracy: np.ndarray  # [H] change of accuracy (fraction) on the same images when it is zeroed
    cofiring: np.ndarray  # [H, UNIT_COFIRING] unit ids with the largest Jaccard overlap (-1 pads)
    cofiring_jaccard: np.ndarray  # [H, UNIT_COFIRING] those overlaps
    dead: np.ndarray  # [H] bool: fires on no training and no test image
    descriptions: list[str]  # [H] one line per unit, generated from the numbers above
    seconds: float = 0.0  # wall time of `unit_statistics`

    def __post_init__(self):
        """What travels together is checked together: every per-unit array has one row per unit (H, from
        ``freq_test``), the per-class ones one column per class name, the firing frequencies are fractions."""
        classes = _check_classes(self.classes)
        h = len(_check_fractions("freq_test", self.freq_test))
        if len(_check_fractions("freq_train", self.freq_train)) != h:
            raise ValueError(f"freq_train and freq_test must hold one value per unit each, got {len(self.freq_train)} "
                             f"and {h}")
        shapes = {"n_fire": (h,), "hist": (h, None), "hist_max": (h,), "top_images": (h, None), "top_values": (h, None),
                  "band_images": (h, None, None), "class_counts": (h, len(classes)), "majority": (h,), "purity": (h,),
                  "recall": (h,), "contribution": (h, len(classes)), "ablation": (h, len(classes)),
                  "ablation_accuracy": (h,), "cofiring": (h, None), "cofiring_jaccard": (h, None), "dead": (h,)}
        for name, shape in shapes.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.ndim != len(shape) or any(
                    size is not None and size != got for size, got in zip(shape, a.shape)):
                dims = ", ".join("any" if d is None else str(d) for d in shape)
                raise ValueError(f"{name} must be an array of shape [{dims}] (H = {h} units as in freq_test, "
                                 f"C = {len(classes)} classes), got {_describe(a)}")
        if not isinstance(self.descriptions, list) or len(self.descriptions) not in (0, h):
            raise ValueError(f"descriptions must be a list of {h} lines (or empty), got {_describe(self.descriptions)}")
        _check_float("seconds", self.seconds, low=0.0)

    def n_test_images(self) -> int | None:
        """How many test images these statistics were computed on (``n_fire / freq_test`` of a unit that fires; None
        if none does): what ``_check_stats`` holds against a dataset."""
        fires = np.flatnonzero(self.n_fire > 0)
        return None if not len(fires) else int(round(self.n_fire[fires[0]] / self.freq_test[fires[0]]))

    def majority_value(self, table: np.ndarray) -> np.ndarray:
        """``table: [H, C]`` read at each unit's majority class -> ``[H]`` (NaN for units without one)."""
        rows = np.arange(len(self.majority))
        return np.where(self.majority >= 0, table[rows, np.maximum(self.majority, 0)], np.nan)


def _firing_entries(values: torch.Tensor, indices: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse codes ``values, indices: [N, k]`` -> ``(units, images, activations)``, each ``[E]``, one entry per
    (image, firing unit), sorted by unit, then by activation (largest first)."""
    values, indices = values.detach().cpu().numpy(), indices.detach().cpu().numpy()
    images = np.broadcast_to(np.arange(len(values))[:, None], values.shape)
    fires = values > 0
    units, images, acts = indices[fires], images[fires], values[fires]
    order = np.lexsort((-acts, units))
    return units[order], images[order], acts[order]


def _segment_positions(starts: np.ndarray, counts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Positions ``starts[:, None] + offsets`` (``offsets: [H, n]``) where the offset is inside the unit's
    segment of length ``counts``, else -1."""
    inside = (offsets >= 0) & (offsets < counts[:, None])
    return np.where(inside, starts[:, None] + offsets, -1)


def _gather(array: np.ndarray, positions: np.ndarray, fill) -> np.ndarray:
    """``array[positions]`` with ``fill`` where ``positions == -1``."""
    return np.where(positions >= 0, array[np.maximum(positions, 0)], fill)


def _band_offsets(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[H, bands, samples]`` offsets into each unit's segment (largest activation first): stratified random
    draws from each quantile band of ``UNIT_QUANTILE_BANDS``; repeats (bands shorter than the sample) are -1."""
    out = np.full((len(counts), len(UNIT_QUANTILE_BANDS), UNIT_BAND_SAMPLES), -1)
    strata = np.arange(UNIT_BAND_SAMPLES)
    for b, (low, high) in enumerate(UNIT_QUANTILE_BANDS):
        first = counts - np.round(counts * high).astype(np.int64)  # segments run from the largest activation down
        length = np.round(counts * high).astype(np.int64) - np.round(counts * low).astype(np.int64)
        u = rng.random((len(counts), UNIT_BAND_SAMPLES))
        offsets = first[:, None] + np.floor((strata + u) * length[:, None] / UNIT_BAND_SAMPLES).astype(np.int64)
        repeat = np.concatenate([np.zeros((len(counts), 1), bool), np.diff(offsets, axis=1) == 0], axis=1)
        out[:, b] = np.where((length[:, None] > 0) & ~repeat, offsets, -1)
    return out


def _activation_histograms(units: np.ndarray, acts: np.ndarray, hist_max: np.ndarray) -> np.ndarray:
    """``[H, UNIT_HIST_BINS]`` counts of each unit's activations ``acts: [E]`` on ``[0, hist_max[unit]]``."""
    scale = np.where(hist_max > 0, hist_max, 1.0)[units]
    bins = np.minimum((acts / scale * UNIT_HIST_BINS).astype(np.int64), UNIT_HIST_BINS - 1)
    counts = np.bincount(units * UNIT_HIST_BINS + bins, minlength=len(hist_max) * UNIT_HIST_BINS)
    return counts.reshape(len(hist_max), UNIT_HIST_BINS)


def _class_purity(class_counts: np.ndarray, class_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``class_counts: [H, C]``, ``class_sizes: [C]`` -> majority class ``[H]`` (-1 if none), purity, recall."""
    n_fire = class_counts.sum(1)
    majority = np.where(n_fire > 0, class_counts.argmax(1), -1)
    top = class_counts.max(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.where(n_fire > 0, top / n_fire, np.nan)
        recall = np.where(n_fire > 0, top / class_sizes[np.maximum(majority, 0)], np.nan)
    return majority, purity, recall


def _cofiring(units: np.ndarray, images: np.ndarray, n_images: int, d_hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``UNIT_COFIRING`` partners of every unit by Jaccard overlap of the images they fire on:
    ``(ids: [H, n], jaccard: [H, n])``, ids -1 where the overlap is 0."""
    entries = torch.from_numpy(np.stack([units, images]))
    fires = torch.sparse_coo_tensor(entries, torch.ones(len(units)), (d_hidden, n_images),
                                    check_invariants=True).coalesce()
    both = torch.sparse.mm(fires, fires.to_dense().T).numpy()  # [H, H] images on which both fire
    n = np.diag(both).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.nan_to_num(both / (n[:, None] + n[None, :] - both))
    np.fill_diagonal(jaccard, -1.0)
    n_top = min(UNIT_COFIRING, d_hidden - 1)
    ids = np.argsort(-jaccard, axis=1, kind="stable")[:, :n_top]
    top = np.take_along_axis(jaccard, ids, axis=1)
    return np.where(top > 0, ids, -1), np.maximum(top, 0.0)


@_keeps_mode
@torch.no_grad()
def unit_contribution_sums(clf: SparseCodeClassifier, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``[H, C]``: each unit's decoder-weighted contribution (``rescale_contributions``) to each class logit,
    summed over the images of the sparse codes ``values, indices: [N, k]``."""
    _check_instance("clf", clf, SparseCodeClassifier)
    _check_codes(values, indices)
    clf.eval()
    d_hidden, n_classes = clf.W1.shape[0], clf.rest[-1].out_features
    sums = torch.zeros(d_hidden, n_classes, device=values.device)
    for i in range(0, len(values), UNIT_CONTRIBUTION_ROWS):
        v, idx = values[i:i + UNIT_CONTRIBUTION_ROWS], indices[i:i + UNIT_CONTRIBUTION_ROWS]
        z = densify(v, idx, d_hidden)
        for c in range(n_classes):
            target = torch.full((len(v),), c, dtype=torch.long, device=v.device)
            sums[:, c] += rescale_contributions(clf, z, target).sum(0)
    return sums


UNIT_TOP_CONTRIBUTIONS = 8  # test images kept per unit where it contributes most to the predicted class's logit


UNIT_BROWSER_PAGE = "unit_browser.html"  # file names of the two sibling pages (written side by side; each links
EXPLORER_PAGE = "explorer.html"  # to the other: a unit's atlas entry, unit_browser.html#unit-<j>; an image,
# explorer.html#image-<test id>)


@_keeps_mode
@torch.no_grad()
def unit_top_contributions(pipeline: SparseCodePipeline, x: torch.Tensor, device: torch.device,
                           n: int = UNIT_TOP_CONTRIBUTIONS) -> tuple[np.ndarray, np.ndarray]:
    """For every unit, the ``n`` images of ``x: [N, 784]`` (e.g. the test set) where it contributes most to
    the predicted class's logit (decoder-weighted, ``rescale_contributions``), among those where it fires.

    Returns ``(ids: [H, n], contributions: [H, n])``, largest first; ``-1`` and 0 pad a unit firing on fewer
    than ``n`` images. Feeds the unit browser's links to the explorer and the explorer's "a unit's images".
    """
    _check_pipeline(pipeline)
    x = _check_images("x", x, dtype=_model_dtype(pipeline), flat=True)
    _check_device("device", device)
    _check_int("n", n, low=1)
    sae, clf = pipeline.sae.eval(), pipeline.clf.eval()
    values, indices = encode_dataset(sae, x, device)
    n = min(n, len(values))
    best = torch.full((n, sae.d_hidden), -torch.inf, device=values.device)
    best_ids = torch.full((n, sae.d_hidden), -1, dtype=torch.long, device=values.device)
    for i in range(0, len(values), UNIT_CONTRIBUTION_ROWS):
        z = densify(values[i:i + UNIT_CONTRIBUTION_ROWS], indices[i:i + UNIT_CONTRIBUTION_ROWS], sae.d_hidden)
        c = rescale_contributions(clf, z, clf(z).argmax(1)).masked_fill(z <= 0, -torch.inf)
        ids = torch.arange(i, i + len(z), device=z.device)[:, None].expand_as(c)
        top, where = torch.cat([best, c]).topk(n, dim=0)
        best, best_ids = top, torch.cat([best_ids, ids]).gather(0, where)
    fires = torch.isfinite(best)
    return (_numpy(torch.where(fires, best_ids, -1).T).astype(np.int64),
            _numpy(torch.where(fires, best, 0.0).T).astype(np.float64))


@_keeps_mode
@torch.no_grad()
def unit_ablation_sums(clf: SparseCodeClassifier, values: torch.Tensor, indices: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero each firing unit of each image, one at a time (the other units stay as they are), and sum the
    effects per unit: ``(logit change: [H, C], correct-prediction change: [H])`` over the images where it fires.

    ``values, indices: [N, k]`` sparse codes, ``y: [N]`` labels. All ``N * k`` ablated codes go through the
    head in batches: the first layer is updated by subtracting the unit's row, ``h - z_j W1[j]``.
    """
    _check_instance("clf", clf, SparseCodeClassifier)
    _check_codes(values, indices)
    _check_labels(y, len(values), clf.rest[-1].out_features, name="y")
    clf.eval()
    d_hidden, k = clf.W1.shape[0], values.shape[1]
    n_classes = clf.rest[-1].out_features
    dlogit = torch.zeros(d_hidden, n_classes, device=values.device)
    dcorrect = torch.zeros(d_hidden, device=values.device)
    step = max(1, UNIT_ABLATION_ROWS // k)
    for i in range(0, len(values), step):
        v, idx, yb = values[i:i + step], indices[i:i + step], y[i:i + step]
        h = clf.first_layer_sparse(v, idx)  # [b, hidden0]
        base = clf.rest(h)  # [b, C]
        ablated = clf.rest((h[:, None, :] - v[..., None] * clf.W1[idx]).flatten(0, 1)).view(len(v), k, -1)
        correct = (ablated.argmax(-1) == yb[:, None]).float() - (base.argmax(-1) == yb).float()[:, None]
        fires = v > 0
        dlogit.index_add_(0, idx[fires], (ablated - base[:, None, :])[fires])
        dcorrect.index_add_(0, idx[fires], correct[fires])
    return dlogit, dcorrect


def _percent(fraction: float) -> str:
    """'9.1 %', '0.013 %': a fraction as a percentage with two significant digits."""
    return f"{100 * fraction:.2g} %"


def describe_unit(stats: UnitStats, unit: int) -> str:
    """One line about ``unit`` from its statistics, e.g. 'fires on 9.1 % of test images, 92 % of them Trouser;
    zeroing it lowers the Trouser logit by 1.8 (accuracy on them -3.5 points)'."""
    _check_stats(stats)
    _check_int("unit", unit, low=0, high=len(stats.freq_test) - 1, high_name="the last unit id")
    if stats.dead[unit]:
        return "dead: fires on no training and no test image"
    if stats.n_fire[unit] == 0:
        return f"fires on {_percent(stats.freq_train[unit])} of training images and on no test image"
    c = int(stats.majority[unit])
    name = stats.classes[c]
    change = float(stats.ablation[unit, c])
    effect = (f"leaves the {name} logit unchanged" if abs(change) < UNIT_NEGLIGIBLE_LOGIT else
              f"{'lowers' if change < 0 else 'raises'} the {name} logit by {abs(change):.2g}")
    return (f"fires on {_percent(stats.freq_test[unit])} of test images, {stats.purity[unit]:.0%} of them {name}; "
            f"zeroing it {effect} "
            f"(accuracy on them {100 * stats.ablation_accuracy[unit]:+.1f} points)")


@_keeps_mode
@torch.no_grad()
def unit_statistics(pipeline: SparseCodePipeline, data: FashionMNIST, device: torch.device,
                    usage_train=None, seed: int = 0) -> UnitStats:
    """Every statistic of ``UnitStats`` for all units, from the codes of ``data.x_test: [N, 784]`` (and
    ``data.x_train`` for the training frequency, unless ``usage_train: [H]`` passes it in, e.g.
    ``evaluate_autoencoder(...)["unit_usage_train"]``). ``seed`` draws the quantile-band samples."""
    _check_pipeline(pipeline)
    _check_instance("data", data, FashionMNIST)
    _check_device("device", device)
    if usage_train is not None:
        _check_fractions("usage_train", usage_train, pipeline.sae.d_hidden)
    _check_int("seed", seed, low=0)
    t0 = time.perf_counter()
    sae, clf = pipeline.sae.eval(), pipeline.clf.eval()
    classes = _check_classes(data.classes)
    if len(data.x_test) == 0:
        raise ValueError("unit_statistics needs at least one test image, got none")
    _check_labels(data.y_test, len(data.x_test), len(classes))
    values, indices = encode_dataset(sae, data.x_test, device)
    y = data.y_test.to(device)
    if usage_train is None:
        usage_train = firing_frequency(*encode_dataset(sae, data.x_train, device), sae.d_hidden)
    freq_train = _numpy(usage_train)
    if freq_train.shape != (sae.d_hidden,):
        raise ValueError(f"usage_train must hold one value per unit ({sae.d_hidden}), got {list(freq_train.shape)}")
    units, images, acts = _firing_entries(values, indices)
    n_fire = np.bincount(units, minlength=sae.d_hidden)
    starts = np.cumsum(n_fire) - n_fire
    rng = np.random.default_rng(seed)
    top = _segment_positions(starts, n_fire, np.broadcast_to(np.arange(UNIT_TOP_IMAGES), (sae.d_hidden,
                                                                                          UNIT_TOP_IMAGES)))
    bands = _band_offsets(n_fire, rng)
    band_pos = _segment_positions(starts, n_fire, bands.reshape(sae.d_hidden, -1)).reshape(bands.shape)
    band_pos[bands < 0] = -1
    hist_max = np.zeros(sae.d_hidden, dtype=np.float64)
    np.maximum.at(hist_max, units, acts)
    labels = data.y_test.numpy()
    class_counts = np.bincount(units * len(classes) + labels[images], minlength=sae.d_hidden * len(classes))
    class_counts = class_counts.reshape(sae.d_hidden, len(classes))
    majority, purity, recall = _class_purity(class_counts, np.bincount(labels, minlength=len(classes)))
    denominator = np.where(n_fire > 0, n_fire, np.nan)
    dlogit, dcorrect = unit_ablation_sums(clf, values, indices, y)
    cofiring, jaccard = _cofiring(units, images, len(labels), sae.d_hidden)
    stats = UnitStats(
        classes=classes, freq_train=freq_train, freq_test=n_fire / len(labels), n_fire=n_fire,
        hist=_activation_histograms(units, acts, hist_max), hist_max=hist_max,
        top_images=_gather(images, top, -1), top_values=_gather(acts, top, 0.0),
        band_images=_gather(images, band_pos, -1), class_counts=class_counts,
        majority=majority, purity=purity, recall=recall,
        contribution=_numpy(unit_contribution_sums(clf, values, indices)) / denominator[:, None],
        ablation=_numpy(dlogit) / denominator[:, None], ablation_accuracy=_numpy(dcorrect) / denominator,
        cofiring=cofiring, cofiring_jaccard=jaccard, dead=(n_fire == 0) & (freq_train == 0), descriptions=[])
    stats.descriptions = [describe_unit(stats, j) for j in range(sae.d_hidden)]
    stats.seconds = time.perf_counter() - t0
    return stats


def contribution_ablation_agreement(stats: UnitStats, seed: int = 0) -> dict:
    """How the mean decoder-weighted contribution of each unit to its majority class's logit agrees with the
    logit drop when the unit is zeroed (minus the ablation change), across every unit that fires on a test
    image: Pearson and Spearman correlation with bootstrap 95 % CIs (units resampled), and ``n`` units."""
    _check_stats(stats)
    _check_int("seed", seed, low=0)
    contribution = stats.majority_value(stats.contribution)
    drop = -stats.majority_value(stats.ablation)
    keep = np.isfinite(contribution) & np.isfinite(drop)
    pairs = np.stack([contribution[keep], drop[keep]], axis=1)  # [n, 2]
    if len(pairs) < 3:
        raise ValueError(f"the agreement needs at least 3 units that fire on a test image, got {len(pairs)}")
    out = {"n_units": int(len(pairs))}
    for name, corr in (("pearson", _rowwise_pearson), ("spearman", rowwise_spearman)):
        value = float(corr(pairs[None, :, 0], pairs[None, :, 1])[0])
        lo, hi = bootstrap_ci(pairs, seed=seed, statistic=lambda r, corr=corr: corr(r[..., 0], r[..., 1]))
        out[name] = {"value": value, "ci95": [lo, hi]}
    out["same_sign"] = float(np.mean(np.sign(pairs[:, 0]) == np.sign(pairs[:, 1])))
    return out


def _check_stats(stats, name: str = "stats", sae=None, data=None) -> UnitStats:
    """``stats`` as ``unit_statistics``' ``UnitStats``; with the autoencoder ``sae`` and the dataset ``data`` they
    travel with, also of that many units, class names and test images (statistics of another model or image
    set would be shown as this one's)."""
    _check_instance(name, stats, UnitStats, "the UnitStats of unit_statistics")
    n_units = len(stats.freq_test)
    if sae is not None and getattr(sae, "d_hidden", n_units) != n_units:
        raise ValueError(f"{name} must describe the autoencoder's units: {name} describe {n_units} units but the "
                         f"autoencoder has {sae.d_hidden} (another model?)")
    if data is not None:
        n, classes = stats.n_test_images(), list(getattr(data, "classes", []))
        if stats.classes != classes:
            raise ValueError(f"{name} must describe the classes of data, got {stats.classes} for data's {classes}")
        if n is not None and n != len(data.x_test):
            raise ValueError(f"{name} must come from data's {len(data.x_test)} test images, got statistics of {n} "
                             f"images (another image set?)")
        ids = np.concatenate([stats.top_images.ravel(), stats.band_images.ravel()])
        if ids.size and ids.max() >= len(data.x_test):
            raise ValueError(f"{name} must index data's {len(data.x_test)} test images, got image ids up to "
                             f"{ids.max()} (another image set?)")
    return stats


def top_units_of_classes(stats: UnitStats, classes: Sequence[str], n: int = 1) -> list[int]:
    """For each class name, the ``n`` units with that majority class that carry most of its logit: largest
    mean contribution times the number of test images they fire on (a rare unit with a large mean does not
    win). The units a dashboard shows first."""
    stats = _check_stats(stats)
    classes = _check_choices("classes", classes, stats.classes, "a list of the class names of stats:")
    _check_int("n", n, low=1)
    contribution = stats.majority_value(stats.contribution) * stats.n_fire
    units = []
    for name in classes:
        mine = np.flatnonzero(stats.majority == stats.classes.index(name))
        units += mine[np.argsort(-contribution[mine], kind="stable")[:n]].tolist()
    return units


# --- the unit atlas: per-unit table and the HTML unit browser ---------------------------------------------
UNIT_TABLE_DIGITS = 4  # significant digits of the floats in the per-unit table and the browser's data


def _rounded(values):
    """Floats (scalar or nested arrays) to ``UNIT_TABLE_DIGITS`` significant digits; NaN -> None."""
    if isinstance(values, (np.ndarray, list, tuple)):
        return [_rounded(v) for v in values]
    value = float(values)
    return float(f"{value:.{UNIT_TABLE_DIGITS}g}") if math.isfinite(value) else None


def unit_table(stats: UnitStats) -> list[dict]:
    """One compact row per unit for ``results/summary.json``: frequencies, majority class (name, None if it
    fires on no test image), purity, recall, mean contribution to and ablation change of its majority class's
    logit, change of accuracy on the images where it fires, dead flag."""
    _check_stats(stats)
    contribution, ablation = stats.majority_value(stats.contribution), stats.majority_value(stats.ablation)
    return [{"unit": j, "freq_train": _rounded(stats.freq_train[j]), "freq_test": _rounded(stats.freq_test[j]),
             "majority_class": stats.classes[stats.majority[j]] if stats.majority[j] >= 0 else None,
             "purity": _rounded(stats.purity[j]), "recall": _rounded(stats.recall[j]),
             "mean_contribution": _rounded(contribution[j]), "ablation_effect": _rounded(ablation[j]),
             "ablation_accuracy": _rounded(stats.ablation_accuracy[j]), "dead": bool(stats.dead[j])}
            for j in range(len(stats.freq_test))]
