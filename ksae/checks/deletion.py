"""Deletion and insertion curves (MoRF, LeRF) under each substrate, the controls, object focus."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .._util import _as_maps, _check_finite, _check_float, _check_int, _check_pixels
from ..attribution_base import _check_classifier, _check_target, _class_count, _score
from ..data import as_flat_images
from ..stats import _wilcoxon_p, summarize
from .substrates import (
    BLUR_SIGMA,
    FAITH_ALPHA,
    FAITH_ROWS,
    RANKINGS,
    ROAD_NOISE,
    ROAD_PIXELS_PER_STEP,
    ROAD_TOL,
    SUBSTRATES,
    _substrate,
    road_impute,
)


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of each image, ``[N, 784]`` -> ``[N, 784]`` (a model-free control map)."""
    img = x.reshape(-1, 1, 28, 28)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([sobel, sobel.T])[:, None]  # [2, 1, 3, 3]
    g = F.conv2d(img, kernels, padding=1)
    return g.pow(2).sum(1).sqrt().reshape(len(x), -1)


def control_maps(x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Orderings that know nothing about the model, each ``[N, 784]`` and non-negative: random over all
    pixels; random over object pixels only (``random_object``: the object pixels, x > 0, first in random
    order, then the rest in random order); pixel intensity |x|; Sobel edges."""
    gen = torch.Generator().manual_seed(seed)
    random = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    return {"random": random, "random_object": random + (x > 0).to(x.dtype), "intensity": x.abs(),
            "edges": edge_map(x)}


def removal_order(scores: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Pixel indices ``[N, P]`` by descending ``scores: [N, P]`` (most relevant first, MoRF); reversed
    (``.flip(1)``) it is least relevant first (LeRF).

    Ties are broken at random (seeded): the columns are shuffled, then sorted stably, so a constant map
    behaves exactly like a random ordering rather than a raster scan.
    """
    gen = torch.Generator().manual_seed(seed)
    shuffle = torch.rand(scores.shape, generator=gen).argsort(dim=1).to(scores.device)  # [N, P] per-row shuffle
    return shuffle.gather(1, scores.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))


@torch.no_grad()
def perturbation_curves(model: nn.Module, x: torch.Tensor, target: torch.Tensor, scores: torch.Tensor,
                        mode: str = "deletion", pixels_per_step: int = 28, seed: int = 0) -> torch.Tensor:
    """Target-class probability as pixels are removed (``deletion``: set to 0, most important first)
    or added to a zero image (``insertion``), ``pixels_per_step`` at a time: ``removal_curves`` on the zero
    substrate for one ordering (insertion = deletion least-relevant-first, read backwards).

    ``x, scores: [N, 784]``, ``target: [N]`` -> ``[N, n_points]`` with ``n_points = 784/pixels_per_step + 1``
    (the first point is the untouched image for deletion, the zero image for insertion).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    order = removal_order(scores.to(x.device), seed)
    if mode == "insertion":
        order = order.flip(1)
    curves = removal_curves(model, x, target, order[None], "zero", pixels_per_step, seed)[0]
    return curves if mode == "deletion" else curves.flip(1)


def curve_auc(curves: torch.Tensor) -> np.ndarray:
    """Area under each curve ``[N, T]`` on a [0, 1] x-axis (trapezoid rule) -> ``[N]``."""
    y = curves.double().cpu().numpy()
    return ((y[:, 1:] + y[:, :-1]) / 2).mean(1)


def object_focus(maps: dict[str, torch.Tensor], x: torch.Tensor, seed: int = 0) -> dict:
    """Share of total |attribution| on object pixels (x > 0) per method, against the share of object
    pixels in the image (what a uniform map would give). An all-zero map has no share: undefined (left out of
    the summary and counted, ``summarize``). ``ValueError`` for maps with NaN or inf."""
    if not isinstance(maps, dict) or not maps:
        raise ValueError(f"maps must be a non-empty dict of method name -> [N, 784] map, got {type(maps).__name__}")
    x, _ = as_flat_images(x, name="x")
    obj = (x.reshape(len(x), -1) > 0).double().cpu().numpy()
    result = {"object_pixel_share": summarize(obj.mean(1), seed)}
    for m, v in maps.items():
        a = np.abs(_as_maps(v, f"maps[{m!r}]", len(x)))
        total = a.sum(1)
        share = np.divide((a * obj).sum(1), total, out=np.full(len(a), np.nan), where=total > 0)
        result[m] = summarize(share, seed)
    return result


def balanced_subset(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``n`` items of ``y: [N]`` (class ids), as balanced over classes as possible:
    each class's items in a seeded random order, taken class by class in turn. ``n >= N``: all of them."""
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point():
        raise ValueError(f"y must be a 1-D integer tensor of class ids, got {getattr(y, 'shape', type(y).__name__)}")
    _check_int("n", n, low=1)
    if n >= len(y):
        return torch.arange(len(y))
    gen = torch.Generator().manual_seed(seed)
    y = y.cpu()
    turn = torch.empty(len(y), dtype=torch.long)  # position of each item within its class's random order
    for c in y.unique():
        idx = torch.nonzero(y == c)[:, 0]
        turn[idx[torch.randperm(len(idx), generator=gen)]] = torch.arange(len(idx))
    key = turn * (int(y.max()) + 1) + y  # round-robin over classes
    return key.argsort()[:n].sort().values


def _pre_and_head(model: nn.Module):
    """``(pre_fn, head)`` with ``model(x) = head(pre_fn(x))``; ``pre_fn`` is the affine first layer
    (``affine_split``) when the model has one, else the identity (then nothing is incremental)."""
    split = getattr(model, "affine_split", None)
    if split is None:
        return None, model
    A, c, head = split()
    A, c = A.detach(), c.detach()
    return (A, c), head


@torch.no_grad()
def removal_curves(model: nn.Module, x: torch.Tensor, target: torch.Tensor, orders: torch.Tensor,
                   substrate: str = "zero", pixels_per_step: int = 28, seed: int = 0,
                   road_noise: float = ROAD_NOISE, road_tol: float = ROAD_TOL) -> torch.Tensor:
    """Target-class probability as pixels are removed in the given orders, ``pixels_per_step`` at a time,
    each removed pixel replaced by ``substrate`` (``SUBSTRATES``).

    ``x: [N, 784]``, ``target: [N]``, ``orders: [M, N, 784]`` (a permutation of the pixels per row, first
    removed first; e.g. ``removal_order(scores)`` for MoRF, ``.flip(-1)`` for LeRF) ->
    ``[M, N, T + 1]``, ``T = 784 / pixels_per_step``; point 0 is the image, point T the fully removed one.

    Fixed substrates (zero, blur) on a model with an affine first layer (``affine_split``, our pipeline)
    run incrementally: a step changes ``pixels_per_step`` pixels, so the first layer's output moves by as
    many columns of ``A`` (an embedding-bag sum) and only the head runs per step, on the rows whose step
    changed a pixel (removing a pixel that already equals the substrate, such as black background under the
    zero substrate, leaves the image as it was); the fully removed image is the substrate itself, evaluated
    once per image. ROAD imputes every step's image (``road_impute``, warm-started from the previous step's
    solution, solved to ``road_tol``). Its noise (std ``road_noise``, seeded by ``seed``) is one field per image
    and step, shared by every order: paired comparisons between orders see the same noise (common random
    numbers).
    """
    x, _ = as_flat_images(x, name="x")
    if substrate not in SUBSTRATES:
        raise ValueError(f"substrate must be one of {SUBSTRATES}, got {substrate!r}")
    n, n_pix = x.shape
    _check_int("pixels_per_step", pixels_per_step, low=1, high=n_pix, high_name="the number of pixels")
    if n_pix % pixels_per_step:
        raise ValueError(f"pixels_per_step must divide the {n_pix} pixels, got {pixels_per_step}")
    if not isinstance(orders, torch.Tensor) or orders.ndim != 3 or orders.shape[1:] != (n, n_pix):
        raise ValueError(f"orders must be a tensor of shape [M, {n}, {n_pix}], got {getattr(orders, 'shape', orders)}")
    in_range = orders.dtype == torch.long and orders.numel() and 0 <= orders.min() and orders.max() < n_pix
    if not (in_range and torch.zeros_like(orders, dtype=torch.bool).scatter_(2, orders, True).all()):
        raise ValueError(f"orders must hold an int64 permutation of 0..{n_pix - 1} in every row")
    _check_float("road_noise", road_noise, low=0.0)
    _check_float("road_tol", road_tol, low=0.0, low_open=True)
    _check_classifier(model)
    target = _check_target(target, n, _class_count(model, x), x.device)
    fill = _substrate(x, substrate)
    per_chunk = max(1, FAITH_ROWS // n)
    chunks = [_curves_chunk(model, x, target, orders[i:i + per_chunk].to(x.device), fill, pixels_per_step,
                            torch.Generator().manual_seed(seed), road_noise, road_tol)
              for i in range(0, len(orders), per_chunk)]
    return torch.cat(chunks).view(len(orders), n, -1)


def _curves_chunk(model, x, target, orders, fill, step, gen, road_noise: float, road_tol: float) -> torch.Tensor:
    """``removal_curves`` for ``orders: [m, N, P]`` -> ``[m * N, T + 1]`` (rows ordering-major); ``fill``:
    ``[N, P]`` fixed substrate or None (ROAD: noise of std ``road_noise`` from ``gen``, solved to ``road_tol``)."""
    m, (n, n_pix) = len(orders), x.shape
    order = orders.reshape(m * n, n_pix)
    xs, ts = x.repeat(m, 1), target.repeat(m)
    affine, head = _pre_and_head(model)
    incremental = affine is not None and fill is not None
    points = [_score(model(x), target, "probability").repeat(m)]
    removed, u = torch.zeros_like(order, dtype=torch.bool), xs
    if incremental:
        A, c = affine
        columns = A.T.contiguous()  # [P, H]: column j of A is pixel j's effect on the first layer
        pre, delta = F.linear(x, A, c).repeat(m, 1), (fill - x).repeat(m, 1)
    n_steps = n_pix // step
    for t in range(1, n_steps + 1):
        changed = order[:, (t - 1) * step:t * step]  # [R, step]
        removed.scatter_(1, changed, True)
        if fill is not None and t == n_steps:  # every pixel removed: the substrate image, the same for all orders
            points.append(_score(model(fill), target, "probability").repeat(m))
            continue
        if incremental:
            points.append(_incremental_step(head, pre, columns, changed, delta.gather(1, changed), ts, points[-1]))
            continue
        if fill is not None:
            points.append(_score(model(torch.where(removed, fill.repeat(m, 1), xs)), ts, "probability"))
            continue
        u = road_impute(xs, removed, noise=0.0, init=u, tol=road_tol)  # noise-free, warm-starts the next step
        eps = torch.randn((n, n_pix), generator=gen, dtype=torch.float32).to(u).repeat(m, 1)
        points.append(_score(model(u + road_noise * removed * eps), ts, "probability"))
    return torch.stack(points, dim=1)


def _incremental_step(head, pre: torch.Tensor, columns: torch.Tensor, changed: torch.Tensor, weights: torch.Tensor,
                      target: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """One step of ``_curves_chunk``'s incremental path: moves ``pre: [R, H]`` in place by ``weights: [R, step]``
    times the ``columns: [P, H]`` of the ``changed: [R, step]`` pixels and returns the target probability
    ``[R]``. Rows whose changed pixels all equal the substrate (``weights`` 0: e.g. background under the zero
    substrate) keep their image and ``previous: [R]``: the head runs only on the others (a quarter of the rows
    of the default run's zero-substrate curves)."""
    pre += F.embedding_bag(changed, columns, per_sample_weights=weights, mode="sum")
    moved = weights.ne(0).any(1)
    if bool(moved.all()):
        return _score(head(pre), target, "probability")
    rows = moved.nonzero()[:, 0]
    out = previous.clone()
    out[rows] = _score(head(pre[rows]), target[rows], "probability")
    return out


def faithfulness_orderings(maps: dict[str, torch.Tensor], x: torch.Tensor, seed: int = 0) -> dict[str, dict]:
    """Every ordering the suite measures: ``{key: {"name", "kind", "ranking", "scores": [N, 784]}}``.

    Methods are ranked by signed value (``"<method>/signed"``: strongest positive evidence first) and, if
    a map has negative values, also by |value| (``"<method>/abs"``). Controls (``control_maps``) are
    non-negative, so both rankings coincide: random over all pixels, random over object pixels first,
    intensity, Sobel edges.
    """
    flat, _ = as_flat_images(x, name="x")
    if not isinstance(maps, dict) or not maps:
        raise ValueError(f"maps must be a non-empty dict of method name -> [N, 784] map, got {type(maps).__name__}")
    out = {}
    for name, v in maps.items():
        if not isinstance(v, torch.Tensor) or v.numel() != flat.numel():
            raise ValueError(f"maps[{name!r}] must be a tensor holding {len(flat)} maps of 784 pixels, "
                             f"got {getattr(v, 'shape', type(v).__name__)}")
        _check_finite(f"maps[{name!r}]", v)
        scores = v.detach().reshape(flat.shape).to(flat)
        out[f"{name}/signed"] = {"name": name, "kind": "method", "ranking": "signed", "scores": scores}
        if (scores < 0).any():
            out[f"{name}/abs"] = {"name": name, "kind": "method", "ranking": "abs", "scores": scores.abs()}
    for name, scores in control_maps(flat, seed).items():
        out[name] = {"name": name, "kind": "control", "ranking": "signed", "scores": scores}
    return out


def _gap_test(gap: np.ndarray, reference: np.ndarray) -> dict:
    """Paired comparison of per-image gaps with a control's: mean difference, Wilcoxon p, verdict."""
    diff = gap - reference
    p = _wilcoxon_p(diff)
    return {"mean_diff": float(diff.mean()), "p_value": p, "beats": bool(diff.mean() > 0 and p < FAITH_ALPHA)}


def _substrate_summary(orderings: dict, morf: torch.Tensor, lerf: torch.Tensor, seed: int) -> dict:
    """Per-ordering AUC summaries from ``morf, lerf: [K, n, T + 1]`` curves (K orderings in dict order)."""
    auc_m = {key: curve_auc(c) for key, c in zip(orderings, morf)}
    auc_l = {key: curve_auc(c) for key, c in zip(orderings, lerf)}
    gaps = {key: auc_l[key] - auc_m[key] for key in orderings}
    out = {}
    for (key, info), cm, cl in zip(orderings.items(), morf, lerf):
        out[key] = {"name": info["name"], "kind": info["kind"], "ranking": info["ranking"],
                    "morf_auc": summarize(auc_m[key], seed), "lerf_auc": summarize(auc_l[key], seed),
                    "insertion_auc": summarize(auc_l[key], seed),
                    "gap": {**summarize(gaps[key], seed), "p_value": _wilcoxon_p(gaps[key])},
                    "vs_random": _gap_test(gaps[key], gaps["random"]),
                    "vs_random_object": _gap_test(gaps[key], gaps["random_object"]),
                    "mean_curves": {"morf": cm.mean(0).tolist(), "lerf": cl.mean(0).tolist()}}
    return out


def _rankings(entries: dict) -> dict[str, list[str]]:
    """Per ranking, the keys of methods (that ranking) and controls by mean MoRF-LeRF gap, largest first."""
    out = {}
    for ranking in RANKINGS:
        keys = [k for k, e in entries.items() if e["kind"] == "control" or e["ranking"] == ranking]
        if any(entries[k]["kind"] == "method" and entries[k]["ranking"] == ranking for k in keys):
            out[ranking] = sorted(keys, key=lambda k: -entries[k]["gap"]["mean"])
    return out


def faithfulness_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, maps: dict[str, torch.Tensor],
                       seed: int = 0, n_subset: int = 300, substrates: Sequence[str] = SUBSTRATES,
                       pixels_per_step: int = 28, road_pixels_per_step: int = ROAD_PIXELS_PER_STEP) -> dict:
    """Deletion MoRF and LeRF (and insertion) under every substrate, for every method and control.

    ``x: [N, 784]`` images, ``y: [N]`` the class explained (target), ``maps[name]: [N, 784]``. The zero
    substrate uses all N images, blur and ROAD a class-balanced seeded subset of ``n_subset``
    (``balanced_subset``). Curves are the target-class softmax probability (``removal_curves``), removing
    ``pixels_per_step`` pixels a step, ROAD ``road_pixels_per_step`` (it imputes a new image every step;
    ROAD's own protocol also reads a few removal percentages); AUCs on a [0, 1] axis (fraction removed)
    by the trapezoid rule, so they are comparable across step sizes. Each substrate's entry records its
    ``pixels_per_step``, ``n_images`` and ``seconds``. Per substrate and ordering key
    (``faithfulness_orderings``):

    * ``morf_auc`` (lower = more faithful), ``lerf_auc`` (higher = more faithful), ``insertion_auc``
      (identical to ``lerf_auc`` by construction, see the section note), each mean / 95 % CI / std / n;
    * ``gap`` = LeRF AUC - MoRF AUC per image (the larger, the better the order separates relevant from
      irrelevant pixels), summarised, with the Wilcoxon p that it is centred at 0;
    * ``vs_random`` / ``vs_random_object``: the gap against that control's on the same images; ``beats``
      is the verdict rule: mean difference > 0 **and** paired two-sided Wilcoxon p < ``FAITH_ALPHA``;
    * ``mean_curves``: mean MoRF and LeRF deletion curves (``T + 1`` points; insertion = LeRF reversed).

    ``ranking[r]``: keys by mean gap (largest first) with methods ranked by ``r`` (signed / abs) and the
    controls. ``verdicts[key]``: ``beats_random`` / ``beats_random_object`` and ``rank`` per substrate,
    and whether beating random holds on every substrate (a verdict only holds if it holds everywhere).
    """
    flat, _ = as_flat_images(x, name="x")
    _check_pixels("x", flat)
    unknown = [s for s in substrates if s not in SUBSTRATES] if not isinstance(substrates, str) else [substrates]
    if unknown or not substrates:
        raise ValueError(f"substrates must be a non-empty sequence of {SUBSTRATES}, got {substrates!r}")
    _check_classifier(model)
    target = _check_target(y, len(flat), _class_count(model, flat), flat.device)
    _check_int("n_subset", n_subset, low=1)
    orderings = faithfulness_orderings(maps, flat, seed)
    result = {"pixels_per_step": pixels_per_step, "seed": seed, "alpha": FAITH_ALPHA, "substrates": {},
              "blur_sigma": BLUR_SIGMA, "road_noise": ROAD_NOISE, "orderings": list(orderings)}
    for substrate in substrates:
        t0 = time.perf_counter()
        idx = torch.arange(len(flat)) if substrate == "zero" else balanced_subset(target, n_subset, seed)
        idx = idx.to(flat.device)
        morf = torch.stack([removal_order(o["scores"][idx], seed) for o in orderings.values()])
        step = road_pixels_per_step if substrate == "road" else pixels_per_step
        curves = removal_curves(model, flat[idx], target[idx], torch.cat([morf, morf.flip(-1)]), substrate,
                                step, seed).cpu()
        entries = _substrate_summary(orderings, curves[:len(morf)], curves[len(morf):], seed)
        result["substrates"][substrate] = {"n_images": len(idx), "pixels_per_step": step, "orderings": entries,
                                           "ranking": _rankings(entries), "seconds": time.perf_counter() - t0}
    result["verdicts"] = _verdicts(result["substrates"])
    return result


def _verdicts(per_substrate: dict) -> dict:
    """``{key: {"beats_random": {substrate: bool}, "beats_random_object": ..., "rank": {substrate: int},
    "beats_random_everywhere": bool}}`` for every method ordering."""
    out = {}
    first = next(iter(per_substrate.values()))["orderings"]
    for key, entry in first.items():
        if entry["kind"] != "method":
            continue
        v = {"beats_random": {}, "beats_random_object": {}, "rank": {}}
        for sub, res in per_substrate.items():
            e = res["orderings"][key]
            v["beats_random"][sub] = e["vs_random"]["beats"]
            v["beats_random_object"][sub] = e["vs_random_object"]["beats"]
            v["rank"][sub] = res["ranking"][entry["ranking"]].index(key) + 1
        v["beats_random_everywhere"] = all(v["beats_random"].values())
        v["beats_random_object_everywhere"] = all(v["beats_random_object"].values())
        out[key] = v
    return out
