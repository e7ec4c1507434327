"""Agreement between methods, as the excess over a same-class different-image null."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._util import _as_maps, _check_labels
from ..stats import (
    _row_ranks,
    _rowwise_pearson,
    _wilcoxon_p,
    partner_images,
    summarize,
    top_fraction_iou,
)

AGREEMENT_KINDS = {"signed": lambda v: v, "abs": np.abs}  # map transform before the rank correlation


PIXEL_SETS = ("all", "object")  # all 784 pixels; object pixels (x > 0) of the image(s) compared


def _agreement_ranks(v: np.ndarray, obj: np.ndarray, partner: np.ndarray) -> dict:
    """Row ranks of one method's transformed maps ``v: [N, P]`` that the agreement statistics need, on each
    image's object pixels ``obj: [N, P]`` and (own rows and partner rows) on the pixels that are object in
    both an image and its ``partner: [N]`` (all-pixel ranks come from ``cross_method_statistics``)."""
    both = obj & obj[partner]
    return {"object": _row_ranks(v, obj), "both": _row_ranks(v, both),
            "both_partner": _row_ranks(v[partner], both)}


def _value_and_null(ra: dict, rb: dict, obj: np.ndarray, partner: np.ndarray) -> dict[str, tuple]:
    """Per image, Spearman of methods A and B on all and on object pixels and its different-image null, from
    ``_agreement_ranks`` of each (``ra``, ``rb``): ``{pixels: (value: [N], null: [N])}``.

    The value on object pixels uses image i's mask ``obj: [N, P]``; the null pairs A on image i with B on its
    same-class partner j and B on i with A on j (``partner: [N]``, averaged), on the pixels object in both.
    """
    both = obj & obj[partner]
    out = {}
    for pixels in PIXEL_SETS:
        if pixels == "all":
            value = _rowwise_pearson(ra["all"], rb["all"])
            null = (_rowwise_pearson(ra["all"], rb["all"][partner]) + _rowwise_pearson(ra["all"][partner], rb["all"]))
        else:
            value = _rowwise_pearson(ra["object"], rb["object"], obj)
            null = (_rowwise_pearson(ra["both"], rb["both_partner"], both)
                    + _rowwise_pearson(ra["both_partner"], rb["both"], both))
        out[pixels] = (value, null / 2)
    return out


def _agreement_against_null(ra: dict, rb: dict, obj: np.ndarray, partner: np.ndarray, seed: int) -> dict:
    """``_value_and_null`` summarised: ``{pixels: {"value", "null", "excess"}}`` (the excess over the null with a
    paired Wilcoxon p-value)."""
    out = {}
    for pixels, (value, null) in _value_and_null(ra, rb, obj, partner).items():
        excess = value - null
        out[pixels] = {"value": summarize(value, seed), "null": summarize(null, seed),
                       "excess": {**summarize(excess, seed), "p_value": _wilcoxon_p(excess)}}
    return out


def cross_method_statistics(maps: dict[str, torch.Tensor], seed: int = 0, x: torch.Tensor | None = None,
                            labels=None) -> dict:
    """Agreement between every pair of methods, per image then summarised over images.

    ``maps``: method -> ``[N, 784]``. For each pair: Spearman and Pearson correlation on signed and on
    absolute maps (mean, bootstrap 95 % CI) and the IoU of the top-1 % pixels. For each method: mean, max
    and std of the map (per image, averaged).

    With the images ``x: [N, 784]`` and their ``labels: [N]``, each pair also gets ``vs_null``: Spearman
    signed and of |maps| (``spearman_{signed,abs}_{all,object}``), on all pixels and on object pixels
    (x > 0), each next to a *different-image null* -- the same statistic between method A's map of image
    i and method B's map of a different image j of the same class (seeded ``partner_images``; averaged
    with B on i vs A on j; object pixels: those of both images) -- and the excess over that null with its
    CI and a paired Wilcoxon p-value against the null (not against 0). The null keeps what the two
    methods share regardless of the image (their smoothness, their background handling, the class's
    typical shape) and removes only "the same image": the excess is what A and B agree on about *this* image.
    An image that is the only one of its class here has no partner: value and null alike are measured on the
    others (``null_n_images`` counts them); with none left, ``vs_null`` is left out.
    """
    if not isinstance(maps, dict) or len(maps) < 2:
        raise ValueError(f"maps must be a dict of at least two methods' maps, got {type(maps).__name__} "
                         f"with {len(maps) if isinstance(maps, dict) else 0} entries")
    arrays = {m: _as_maps(v, f"maps[{m!r}]") for m, v in maps.items()}
    n = len(next(iter(arrays.values())))
    if any(len(v) != n for v in arrays.values()):
        raise ValueError(f"every method needs maps of the same images, got {[len(v) for v in arrays.values()]}")
    if (x is None) != (labels is None):
        raise ValueError("pass both x and labels (for the different-image null) or neither")
    ranks = {(m, kind): _row_ranks(f(v)) for m, v in arrays.items() for kind, f in AGREEMENT_KINDS.items()}
    null, n_null = None, 0
    if x is not None:
        lab = _check_labels(labels, n)
        _, cls, class_size = np.unique(lab, return_inverse=True, return_counts=True)
        keep = class_size[cls] >= 2
        n_null = int(keep.sum())  # images with a same-class partner: value and null are both measured on them
        if n_null:
            obj = _as_maps(x, "x", n)[keep] > 0
            partner = partner_images(lab[keep], same_class=True, seed=seed)
            null_ranks = {(m, kind): {"all": r[keep], **_agreement_ranks(AGREEMENT_KINDS[kind](arrays[m][keep]),
                                                                          obj, partner)}
                          for (m, kind), r in ranks.items()}
            null = (obj, partner, null_ranks)
    pairs = {}
    names = list(arrays)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            entry = {}
            for kind, f in AGREEMENT_KINDS.items():
                entry[f"spearman_{kind}"] = summarize(_rowwise_pearson(ranks[a, kind], ranks[b, kind]), seed)
                entry[f"pearson_{kind}"] = summarize(_rowwise_pearson(f(arrays[a]), f(arrays[b])), seed)
            entry["top1pct_iou"] = summarize(top_fraction_iou(arrays[a], arrays[b]), seed)
            if null is not None:
                obj, partner, null_ranks = null
                entry["vs_null"] = {f"spearman_{kind}_{pixels}": stats for kind in AGREEMENT_KINDS for pixels, stats
                                    in _agreement_against_null(null_ranks[a, kind], null_ranks[b, kind], obj,
                                                               partner, seed).items()}
            pairs[f"{a}|{b}"] = entry
    per_method = {m: {"mean": float(v.mean(1).mean()), "max": float(v.max(1).mean()),
                      "std": float(v.std(1).mean()), "mean_abs": float(np.abs(v).mean(1).mean())}
                  for m, v in arrays.items()}
    return {"pairs": pairs, "per_method": per_method, **({"null_n_images": n_null} if x is not None else {})}


def correlation_matrix(stats: dict, methods: Sequence[str], key: str = "spearman_abs",
                       statistic: str | None = None) -> np.ndarray:
    """``[M, M]`` matrix of the mean per-image correlation ``key`` from ``cross_method_statistics``; with
    ``statistic`` ("value", "null" or "excess") ``key`` names a ``vs_null`` entry (e.g. "spearman_signed_object");
    the diagonal is 1 for correlations and NaN (undefined, drawn blank) for the null and the excess."""
    if statistic not in (None, "value", "null", "excess"):
        raise ValueError(f"statistic must be None, 'value', 'null' or 'excess', got {statistic!r}")
    m = np.eye(len(methods)) if statistic in (None, "value") else np.diag(np.full(len(methods), np.nan))
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            pair = stats["pairs"].get(f"{a}|{b}") or stats["pairs"].get(f"{b}|{a}")
            if i != j and pair is not None:
                m[i, j] = (pair[key] if statistic is None else pair["vs_null"][key][statistic])["mean"]
    return m


def family_agreement(maps: dict[str, torch.Tensor], x: torch.Tensor, labels, families: dict[str, Sequence[str]],
                     seed: int = 0) -> dict:
    """Do two families of methods agree with each other more than the first family's maps agree among themselves?

    ``families``: two names -> methods (e.g. ``METHOD_FAMILIES``: gradient, perturbation), each of ``maps``
    (method -> ``[N, 784]``); ``x: [N, 784]``, ``labels: [N]``. Per image and method pair: the excess of Spearman
    over the different-image null (as ``cross_method_statistics``'s ``vs_null``; signed and of |maps|, all and
    object pixels). Per image, the mean excess over the pairs within the first family (``within_<first>``), across
    the families (``across``) and within the second (``within_<second>``, with two or more of its methods);
    ``across_minus_within_<first>``: the paired per-image difference, summarised (mean, bootstrap 95 % CI) with a
    Wilcoxon p-value. Images alone in their class (no partner) are left out (``n_images`` counts the others; with
    none left, ``statistics`` is empty).
    """
    if not isinstance(maps, dict):
        raise ValueError(f"maps must be a dict of method name -> [N, 784] map, got {type(maps).__name__}")
    if not isinstance(families, dict) or len(families) != 2 or any(isinstance(m, str) for m in families.values()):
        raise ValueError(f"families must map two names to their methods, got {families!r}")
    (first, a), (second, b) = ((f, [m for m in ms if m in maps]) for f, ms in families.items())
    if len(a) < 2 or not b:
        raise ValueError(f"maps must hold at least two {first} methods and one {second} method, got {list(maps)}")
    arrays = {m: _as_maps(maps[m], f"maps[{m!r}]") for m in a + b}
    n = len(next(iter(arrays.values())))
    lab = _check_labels(labels, n)
    _, cls, class_size = np.unique(lab, return_inverse=True, return_counts=True)
    keep = class_size[cls] >= 2
    out = {"families": {first: a, second: b}, "n_images": int(keep.sum()), "statistics": {}}
    if not keep.any():  # no image has a same-class partner: no null, nothing to compare
        return out
    obj = _as_maps(x, "x", n)[keep] > 0
    partner = partner_images(lab[keep], same_class=True, seed=seed)
    ranks = {(m, kind): {"all": _row_ranks(f(v[keep])), **_agreement_ranks(f(v[keep]), obj, partner)}
             for m, v in arrays.items() for kind, f in AGREEMENT_KINDS.items()}
    groups = {f"within_{first}": [(p, q) for i, p in enumerate(a) for q in a[i + 1:]],
              "across": [(p, q) for p in a for q in b],
              **({f"within_{second}": [(p, q) for i, p in enumerate(b) for q in b[i + 1:]]} if len(b) > 1 else {})}
    for kind in AGREEMENT_KINDS:
        excess = {pair: {pixels: value - null for pixels, (value, null) in
                         _value_and_null(ranks[pair[0], kind], ranks[pair[1], kind], obj, partner).items()}
                  for pairs in groups.values() for pair in pairs}
        for pixels in PIXEL_SETS:
            means = {g: _nanmean_rows([excess[pair][pixels] for pair in pairs]) for g, pairs in groups.items()}
            diff = means["across"] - means[f"within_{first}"]
            out["statistics"][f"spearman_{kind}_{pixels}"] = {
                **{g: summarize(v, seed) for g, v in means.items()},
                f"across_minus_within_{first}": {**summarize(diff, seed), "p_value": _wilcoxon_p(diff)}}
    return out


def _nanmean_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Per image, the mean of the defined values of ``rows`` (each ``[N]``); NaN where none is defined."""
    stacked = np.stack(rows)
    count = (~np.isnan(stacked)).sum(0)
    total = np.nansum(stacked, 0)
    return np.divide(total, count, out=np.full(stacked.shape[1], np.nan), where=count > 0)
