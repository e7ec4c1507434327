"""How concentrated a map is: the Gini index (Quantus' ``Sparseness``) and the share of |attribution| on the
object's pixels, per image."""

from __future__ import annotations

import numpy as np

from .._util import _as_maps, _check_bool

_GINI_EPS = 1e-7  # added to every |attribution| before the Gini index, as Quantus' Sparseness does


def gini_index(maps, normalise: bool = True) -> np.ndarray:
    """Gini index of ``|maps|`` per image, ``maps: [N, 784]`` -> ``[N]`` in [0, 1): 0 for a uniform map, near 1
    when one pixel holds everything (Chalasani et al. 2020; Quantus' ``Sparseness`` with its defaults: |.|,
    each map divided by its largest |value| unless it is all zero (``normalise``), ``_GINI_EPS`` added, then
    ``sum_i (2 i - P - 1) a_(i) / (P sum_i a_i)`` over the sorted values ``a_(1) <= ... <= a_(P)``)."""
    a = np.abs(_as_maps(maps, "maps"))
    _check_bool("normalise", normalise)
    if normalise:
        peak = a.max(1, keepdims=True)
        a = np.divide(a, peak, out=a.copy(), where=peak > 0)
    a = np.sort(a + _GINI_EPS, axis=1)
    p = a.shape[1]
    weights = 2 * np.arange(1, p + 1) - p - 1
    return (a * weights).sum(1) / (p * a.sum(1))


def object_share(maps, x) -> np.ndarray:
    """Share of each map's total |attribution| on the image's object pixels (x > 0): ``maps, x: [N, 784]`` ->
    ``[N]`` (what ``object_focus`` summarises; NaN for an all-zero map, which has no share: undefined, never 0)."""
    a = np.abs(_as_maps(maps, "maps"))
    obj = _as_maps(x, "x", len(a)) > 0
    total = a.sum(1)
    return np.divide((a * obj).sum(1), total, out=np.full(len(a), np.nan), where=total > 0)
