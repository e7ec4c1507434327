"""Localisation against a known region (a planted marker), in Quantus' names: relevance mass accuracy, relevance rank
accuracy and the pointing game, on the positive part of each map; chance for each is |region| / pixels."""

from __future__ import annotations

import numpy as np
import torch

from .._util import _as_maps, _numpy

_LOCALISATION_SCORES = {  # score -> what it measures (for tables and figures)
    "mass": "relevance mass accuracy (share of positive attribution on the region)",
    "rank": "relevance rank accuracy (share of the |region| highest pixels on the region)",
    "pointing": "pointing game (the highest pixel lies on the region)",
}


def _inputs(maps, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """``maps: [N, 784]`` as float64, positive part; ``mask: [784]`` or ``[N, 784]`` as bool ``[N, 784]``."""
    a = torch.from_numpy(_as_maps(maps, "maps")).clamp_min(0.0)
    m = torch.as_tensor(_numpy(mask) if not isinstance(mask, torch.Tensor) else mask.detach().cpu())
    if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must be boolean (or 0/1): True on the region's pixels")
    m = m.to(torch.bool)
    if m.shape == (a.shape[1],):
        m = m.expand_as(a)
    if m.shape != a.shape:
        raise ValueError(f"mask must have shape [{a.shape[1]}] or [{len(a)}, {a.shape[1]}] (one per map), got "
                         f"{list(m.shape)}")
    if not bool(m.any(1).all()):
        raise ValueError("mask must mark at least one pixel of every map (an empty region scores nothing)")
    return a, m


def chance_level(mask) -> float:
    """What a map that ranks the pixels at random scores on every score here: ``|region| / pixels`` (``mask:
    [784]``)."""
    m = torch.as_tensor(_numpy(mask)).reshape(-1)
    return float((m != 0).sum() / m.numel())


def relevance_mass_accuracy(maps, mask) -> np.ndarray:
    """Share of each map's positive attribution that lies on the region (Arras et al. 2022; Quantus'
    ``RelevanceMassAccuracy`` on the positive part): ``maps: [N, 784]``, ``mask: [784]`` or ``[N, 784]`` -> ``[N]``,
    NaN where a map has no positive value (undefined)."""
    a, m = _inputs(maps, mask)
    total = a.sum(1)
    within = (a * m).sum(1)
    return torch.where(total > 0, within / torch.where(total > 0, total, 1.0), torch.nan).numpy()


def relevance_rank_accuracy(maps, mask) -> np.ndarray:
    """Share of each map's ``|region|`` highest positive pixels that lie on the region (Quantus'
    ``RelevanceRankAccuracy`` on the positive part, k = |region|): ``[N]``. Pixels tied with the k-th highest value
    count by the share of the tie on the region (what a random order among them gives; Quantus takes numpy's sort
    order, so the two agree wherever there is no tie at the boundary). NaN where a map has no positive value."""
    a, m = _inputs(maps, mask)
    k = m.sum(1)
    out = torch.full((len(a),), torch.nan, dtype=torch.float64)
    for size in k.unique().tolist():
        rows = torch.nonzero(k == size)[:, 0]
        ar, mr = a[rows], m[rows]
        kth = ar.topk(size, dim=1).values[:, -1:]  # the k-th highest value of each map
        above, tied = ar > kth, ar == kth
        hits = (above & mr).sum(1) + (size - above.sum(1)) * (tied & mr).sum(1) / tied.sum(1)
        out[rows] = hits.double() / size
    return torch.where(a.amax(1) > 0, out, torch.nan).numpy()


def pointing_game(maps, mask) -> np.ndarray:
    """1 where each map's highest positive value lies on the region, else 0 (Zhang et al. 2018; Quantus'
    ``PointingGame``): ``[N]``. A maximum shared by several pixels counts by the share of them on the region
    (Quantus counts a hit if any of them is on it: the two agree when the maximum is one pixel). NaN where a map has
    no positive value."""
    a, m = _inputs(maps, mask)
    top = a == a.amax(1, keepdim=True)
    share = (top & m).sum(1).double() / top.sum(1)
    return torch.where(a.amax(1) > 0, share, torch.nan).numpy()


_SCORE_FUNCTIONS = {"mass": relevance_mass_accuracy, "rank": relevance_rank_accuracy, "pointing": pointing_game}


def _localisation_scores(maps, regions: dict) -> dict[str, dict[str, np.ndarray]]:
    """Every score of ``_LOCALISATION_SCORES`` for every region: ``maps: [N, 784]``, ``regions``: name -> mask
    (``[784]`` or ``[N, 784]``) -> ``{score: {region: [N]}}``."""
    if not isinstance(regions, dict) or not regions:
        raise ValueError(f"regions must be a non-empty dict of region name -> mask, got {type(regions).__name__}")
    return {score: {name: fn(maps, mask) for name, mask in regions.items()} for score, fn in _SCORE_FUNCTIONS.items()}
