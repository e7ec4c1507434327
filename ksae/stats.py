"""Row-wise rank correlations, bootstrap confidence intervals, Wilcoxon tests, partner images (nulls)."""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch

from ._util import _as_numbers, _check_bool, _check_callable, _check_float, _check_int, _check_labels, _describe


def _rowwise_pearson(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``[N, P]`` -> ``[N]``), over the
    entries where ``mask: [N, P]`` is True (all if None); NaN (undefined, never "no correlation" or "perfect
    agreement") where a row of either is constant, e.g. an all-zero map, or has fewer than two entries."""
    if mask is None:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    else:
        count = np.maximum(mask.sum(1, keepdims=True), 1)
        a = np.where(mask, a - np.where(mask, a, 0.0).sum(1, keepdims=True) / count, 0.0)
        b = np.where(mask, b - np.where(mask, b, 0.0).sum(1, keepdims=True) / count, 0.0)
    denom = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    return np.divide(np.einsum("ij,ij->i", a, b), denom, out=np.full(len(a), np.nan), where=denom > 0)


def _row_ranks(a: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) within each row of ``a: [N, P]``; with ``mask:
    [N, P]`` only the True entries are ranked (the others are NaN). ``scipy.stats.rankdata(a, axis=1)`` (with
    ``nan_policy="omit"`` for the mask), from one torch sort per row (a third faster here)."""
    values = torch.from_numpy(np.asarray(a, dtype=np.float64))
    dropped = None if mask is None else ~torch.from_numpy(np.asarray(mask, dtype=bool))
    if dropped is not None:
        values = values.masked_fill(dropped, math.nan)  # sorted last
    ordered, order = values.sort(dim=1)
    n, p = ordered.shape
    starts = torch.ones_like(ordered, dtype=torch.bool)  # first entry of a run of equal values
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)  # last entry of such a run
    ends[:, :-1] = starts[:, 1:]
    pos = torch.arange(p).expand(n, p)
    first = torch.where(starts, pos, 0).cummax(1).values
    last = torch.where(ends, pos, p - 1).flip(1).cummin(1).values.flip(1)
    ranks = torch.empty_like(ordered).scatter_(1, order, (first + last).double() / 2 + 1)
    if dropped is not None:
        ranks.masked_fill_(dropped, math.nan)
    return ranks.numpy()


def _check_rows(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two ``[N, P]`` arrays of finite numbers, row i of one compared with row i of the other."""
    a, b = _as_numbers("a", a, ndim=2), _as_numbers("b", b, ndim=2)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape [N, P], got {list(a.shape)} and {list(b.shape)}")
    return a, b


def rowwise_spearman(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Spearman rank correlation per row (average ranks for ties): ``[N, P], [N, P]`` -> ``[N]``, over the
    entries where ``mask: [N, P]`` is True (all if None; entries outside it are neither ranked nor compared)."""
    a, b = _check_rows(a, b)
    if mask is not None:
        m = np.asarray(mask) if not isinstance(mask, (str, dict)) else None
        if m is None or m.dtype != bool or m.shape != a.shape:
            raise ValueError(f"mask must be None or a bool array of shape {list(a.shape)}, got {_describe(mask)}")
    return _rowwise_pearson(_row_ranks(a, mask), _row_ranks(b, mask), mask)


BOOTSTRAP_CACHE = 4  # (n, seed) draw-count tables bootstrap_ci keeps (16 MB each at n = 1000, 2000 resamples)


@functools.lru_cache(maxsize=BOOTSTRAP_CACHE)
def _bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]``: how often each of ``n`` values is drawn in each of ``bootstrap_ci``'s resamples (the
    same seeded draws), kept for the next call with the same ``n`` and seed (hundreds per validation run)."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.bincount((draws + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    counts = counts.reshape(n_boot, n).astype(np.float64)
    counts.flags.writeable = False
    return counts


def bootstrap_estimates(values, statistic: Callable[[np.ndarray], np.ndarray] | None = None, n_boot: int = 2000,
                        seed: int = 0) -> np.ndarray:
    """``[n_boot]`` bootstrap estimates: the mean of each seeded resample of ``values: [N]``, or
    ``statistic(resamples: [n_boot, N, ...]) -> [n_boot]`` for ``values: [N, ...]`` (rows drawn with
    replacement; the same draws for the same ``N`` and ``seed``). The one resampling of the package: CIs of a
    difference subtract two of these."""
    if values is not None and np.size(values) == 0 and not isinstance(values, (str, dict)):
        raise ValueError("values must hold at least one number (bootstrap_ci needs at least one value), got none")
    values = _as_numbers("values", values)
    if statistic is not None:
        _check_callable("statistic", statistic)
    _check_int("n_boot", n_boot, low=1)
    _check_int("seed", seed, low=0)
    if statistic is None and values.ndim == 1:  # the mean of each resample: its draw counts times the values
        return _bootstrap_counts(len(values), n_boot, seed) @ values / len(values)
    resamples = values[np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))]
    return resamples.mean(1) if statistic is None else statistic(resamples)


def percentile_interval(estimates, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``estimates: [n_boot]`` (percentile method; NaN when an estimate
    is NaN, a statistic undefined in a resample)."""
    estimates = _as_numbers("estimates", estimates, nan=True)
    _check_float("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    alpha = (1 - level) / 2
    return float(np.quantile(estimates, alpha)), float(np.quantile(estimates, 1 - alpha))


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values: [N]``, or of
    ``statistic(resamples: [n_boot, N, ...]) -> [n_boot]`` for ``values: [N, ...]`` (rows resampled)."""
    _check_float("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    return percentile_interval(bootstrap_estimates(values, statistic, n_boot, seed), level)


def summarize(values, seed: int = 0) -> dict:
    """Mean, bootstrap 95 % CI, std and n of per-image values ``[N]``. NaN values (a statistic undefined for that
    image, e.g. the correlation of a constant map) are left out and counted in ``n_undefined`` (present only
    when some are); with none left every number is NaN (null in JSON) and ``n`` is 0. Inf raises ``ValueError``."""
    values = _as_numbers("values", values, nan=True, empty=True).ravel()
    _check_int("seed", seed, low=0)
    defined = values[~np.isnan(values)]
    undefined = {"n_undefined": int(values.size - defined.size)} if defined.size < values.size else {}
    if defined.size == 0:
        return {"mean": math.nan, "ci95": [math.nan, math.nan], "std": math.nan, "n": 0, **undefined}
    lo, hi = bootstrap_ci(defined, seed=seed)
    return {"mean": float(defined.mean()), "ci95": [lo, hi], "std": float(defined.std()), "n": int(defined.size),
            **undefined}


def _wilcoxon_p(values) -> float:
    """Two-sided Wilcoxon signed-rank p-value that ``values`` are centred at 0 (1.0 if all zero), NaN values
    (undefined statistics) left out; NaN when none is left."""
    from scipy.stats import wilcoxon

    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan
    if np.allclose(values, 0):
        return 1.0
    return float(wilcoxon(values).pvalue)


def top_fraction_iou(a: np.ndarray, b: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """IoU of the ``fraction`` most important pixels (by |attribution|) of two maps ``a, b: [N, P]``, per row;
    NaN where either map's |values| are all equal (an all-zero map has no most important pixels: its top set
    would be the first pixels by position, and two such maps would "agree perfectly")."""
    a, b = _check_rows(a, b)
    _check_float("fraction", fraction, low=0.0, high=1.0, low_open=True)
    n_top = max(1, int(round(fraction * a.shape[1])))
    top_a = np.argsort(-np.abs(a), axis=1)[:, :n_top]
    top_b = np.argsort(-np.abs(b), axis=1)[:, :n_top]
    inter = np.array([len(np.intersect1d(ra, rb)) for ra, rb in zip(top_a, top_b)])
    flat = (np.ptp(np.abs(a), axis=1) == 0) | (np.ptp(np.abs(b), axis=1) == 0)
    return np.where(flat, np.nan, inter / (2 * n_top - inter))


def partner_images(labels, same_class: bool, seed: int = 0) -> np.ndarray:
    """A seeded partner ``j != i`` for every image ``i``: ``labels: [N]`` -> ``partner: [N]`` indices.

    ``same_class=True``: a different image of the same class (each class's images in a random cycle, so
    every image is some image's partner once); ``same_class=False``: an image of a different class, drawn
    uniformly. Raises ``ValueError`` if a class has one image only (same) or there is one class (different).
    """
    _check_bool("same_class", same_class)
    lab = _check_labels(labels)
    _check_int("seed", seed, low=0)
    rng = np.random.default_rng(seed)
    partner = np.empty(len(lab), dtype=np.int64)
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        if same_class:
            if len(idx) < 2:
                raise ValueError(f"class {c} has {len(idx)} image; a same-class partner needs at least 2 per class")
            cycle = rng.permutation(idx)
            partner[cycle] = np.roll(cycle, -1)
        else:
            others = np.flatnonzero(lab != c)
            if len(others) == 0:
                raise ValueError(f"every image is of class {c}; a different-class partner needs at least 2 classes")
            partner[idx] = rng.choice(others, size=len(idx))
    return partner


def _ci_text(summary: dict, fmt: str = ".3f") -> str:
    """'0.123 [0.100, 0.150]' from a ``summarize`` dict."""
    lo, hi = summary["ci95"]
    return f"{summary['mean']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"
