"""Path scans along the straight path: IG completeness and its decomposition into gradient
integral and the jumps of the autoencoder's activation (top-k swaps, threshold crossings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .._util import _check_float, _check_int
from ..attribution import ig_quadrature, integrated_gradients
from ..attribution_base import DEFAULT_INTERNAL_BATCH, _check_target, _output_fn, _prepare, _rows_per_pass, _score
from ..data import as_flat_images
from ..models import SparseCodePipeline
from ..stats import summarize

if TYPE_CHECKING:
    from ..models import SparseCodeClassifier
    from ..sae import SparseAutoencoder


COMPLETENESS_POINTS = 1024  # intervals of the dense straight path scanned by completeness_decomposition


MIN_COMPLETENESS_POINTS = 1000  # fewer intervals would merge switches the decomposition must see apart


COMPLETENESS_TOLERANCE = 0.01  # IG's error must equal minus the jump sum within this share of |F(x) - F(0)|


GAP_FLOOR = 1e-12  # |F(x) - F(0)| is clamped to at least this where it divides


MIN_SUBGRID_STEPS = 17  # smallest trapezoid rule read off the dense scan (its points are a subset of the scan's)


def _scan_path(model: nn.Module, x: torch.Tensor, target: torch.Tensor, alphas: torch.Tensor, output: str,
               rows: int, changes: bool = False) -> tuple[torch.Tensor, ...]:
    """F and dF/dalpha at ``alphas: [S]`` on the straight path from the zero image to each ``x: [B, D]``.

    For a model with an affine first layer (``affine_split() -> (A, c, head)``) the path is walked in that
    layer's output space, exactly: ``pre(alpha) = c + alpha x A^T`` and ``dF/dalpha = grad_pre F . x A^T``.
    Returns ``(values, slopes): [B, S]``; with ``changes`` (``model`` is then a ``SparseCodePipeline``) also
    ``(changes, jumps): [B, S-1]`` from the autoencoder's ``code_changes`` (top-k: swaps into the set; threshold
    kinds: units crossing a cutoff), between consecutive points in increasing alpha.
    """
    A, c, head = model.affine_split()
    with torch.no_grad():
        direction, c = F.linear(x, A.detach()), c.detach()  # [B, H], [H]
    alphas, order = alphas.to(x).sort()  # walked in increasing alpha (``path_code``), returned in the given order
    per = max(1, rows // len(alphas))
    values, slopes, found = [], [], []
    for i in range(0, len(x), per):
        d, t = direction[i:i + per], target[i:i + per].repeat_interleave(len(alphas))
        pre = (c + alphas[None, :, None] * d[:, None]).reshape(-1, d.shape[1])  # [b * S, H]
        if isinstance(model, SparseCodePipeline):
            score, slope, code, indices = _pipeline_slopes(model, pre.view(len(d), len(alphas), -1), d, t, output)
            if changes:
                found.append(model.sae.code_changes(code.view(len(d), len(alphas), -1),
                                                    indices.view(len(d), len(alphas), -1)))
        else:
            with torch.enable_grad():
                pre.requires_grad_(True)
                score = _score(head(pre), t, output)
                grad = torch.autograd.grad(score.sum(), pre)[0]
            slope = (grad.view(len(d), len(alphas), -1) * d[:, None]).sum(-1)
        values.append(score.detach().view(len(d), -1))
        slopes.append(slope.view(len(d), -1))
    unsort = order.argsort().to(x.device)
    out = (torch.cat(values)[:, unsort], torch.cat(slopes)[:, unsort])
    return out + tuple(torch.cat(part) for part in zip(*found)) if changes else out


def _pipeline_slopes(pipeline: SparseCodePipeline, pre: torch.Tensor, direction: torch.Tensor, target: torch.Tensor,
                     output: str) -> tuple[torch.Tensor, ...]:
    """``_scan_path``'s points for the pipeline: ``pre: [b, S, H]`` (S increasing alphas per image),
    ``direction: [b, H]``, ``target: [b * S]`` -> F and dF/dalpha ``[b * S]``, the active codes and their units
    ``[b * S, w]``.

    F depends on ``pre`` only through the active codes (every kind's active code is ``z_j = pre_j`` where
    ``z_j > 0``), so ``dF/dalpha = sum_j dF/dz_j [z_j > 0] direction_j`` over those units: a ``[b * S, w]``
    gradient instead of ``[b * S, H]``; the active sets come from the autoencoder's ``path_code`` (top-k:
    ``_path_top_k``). For a logit of a ReLU classifier that slope depends only on the point's
    activation pattern (``_activation_pattern``: the active set, which codes are > 0, which hidden units are > 0),
    so the slope is computed only on points whose pattern differs from the previous point's on the same path (a
    fifth of them on the default model; ``_relu_stack_slopes``) and the others take that point's slope."""
    code, indices = (v.flatten(0, 1) for v in pipeline.sae.path_code(pre.detach()))
    along = direction[torch.arange(len(direction), device=pre.device).repeat_interleave(pre.shape[1])[:, None],
                      indices] * (code > 0)  # [b * S, k]: dz_j / dalpha of each active code
    if output != "logit" or not _is_relu_stack(pipeline.clf):
        with torch.enable_grad():
            active = code.clone().requires_grad_(True)
            score = _score(pipeline.clf.forward_sparse(active, indices), target, output)
            grad = torch.autograd.grad(score.sum(), active)[0]
        return score.detach(), (grad * along).sum(-1), code, indices
    with torch.no_grad():
        logits, pattern = _activation_pattern(pipeline.clf, code, indices)
    new = torch.zeros(len(code), dtype=torch.bool, device=code.device)
    new[::pre.shape[1]] = True  # each path's first point
    for part in pattern:
        new[1:] |= (part[1:] != part[:-1]).any(1)
    rows = new.nonzero()[:, 0]
    slope = _relu_stack_slopes(pipeline.clf, indices[rows], along[rows], F.one_hot(target[rows], logits.shape[1]),
                               [part[rows] for part in pattern[2:]])
    return _score(logits, target, output), slope[new.cumsum(0) - 1], code, indices


@torch.no_grad()
def _relu_stack_slopes(clf: SparseCodeClassifier, indices: torch.Tensor, along: torch.Tensor, target: torch.Tensor,
                       relu_masks: list[torch.Tensor]) -> torch.Tensor:
    """d(target . logits)/dalpha of ``clf`` (``_is_relu_stack``; ``target: [n, C]``, e.g.
    one-hot) at points with active units ``indices: [n, k]`` moving at ``along: [n, k]`` per unit alpha and the
    ReLU masks ``relu_masks`` (each ReLU's input > 0, ``[n, width]``, in layer order) -> ``[n]``: ``target``
    back through each Linear and ReLU mask (a vector-Jacobian product, no autograd), dotted with the first
    layer's output velocity ``sum_j along_j W1[unit_j]``."""
    masks = iter(reversed(relu_masks))
    grad = target.to(along)
    for layer in reversed(list(clf.rest)):
        if isinstance(layer, nn.Linear):
            grad = grad @ layer.weight
        elif isinstance(layer, nn.ReLU):
            grad = grad * next(masks)
    velocity = F.embedding_bag(indices, clf.W1, per_sample_weights=along, mode="sum")
    return (grad * velocity).sum(-1)


def _is_relu_stack(clf: SparseCodeClassifier) -> bool:
    """True when ``clf.rest`` is an evaluation-mode stack of Linear, ReLU and Dropout layers: then a logit's
    gradient depends only on the ReLU masks (``_activation_pattern``), nothing else could change it."""
    return not any(m.training for m in clf.modules()) and all(
        isinstance(layer, (nn.Linear, nn.ReLU, nn.Dropout)) for layer in clf.rest)


def _activation_pattern(clf: SparseCodeClassifier, values: torch.Tensor,
                        indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``clf.forward_sparse(values, indices)`` (``values, indices: [N, k]``; ``clf`` an ``_is_relu_stack``) ->
    ``(logits: [N, C], pattern)``, ``pattern`` a list of ``[N, *]`` tensors: each point's active units (sorted),
    which of their codes are > 0 and which inputs of each ReLU are > 0; points equal in every part have equal
    logit gradients."""
    hidden = clf.first_layer_sparse(values, indices)
    units, order = indices.sort(dim=1)
    parts = [units, values.gather(1, order) > 0]
    for layer in clf.rest:
        if isinstance(layer, nn.ReLU):
            parts.append(hidden > 0)
        hidden = layer(hidden)
    return hidden, parts


def _ig_sums(model: nn.Module, x: torch.Tensor, target: torch.Tensor, rules: Sequence[tuple[str, int]],
             output: str, rows: int) -> dict[tuple[str, int], torch.Tensor]:
    """``sum(attr)`` of integrated gradients from 0 for every ``(method, n_steps)`` rule: ``x: [B, D]`` ->
    ``{rule: [B]}``. With ``affine_split`` all rules share one scan of the head (``sum(attr)`` is the
    quadrature of dF/dalpha); other models run ``integrated_gradients`` once per rule."""
    if getattr(model, "affine_split", None) is None:
        return {(m, n): integrated_gradients(model, x, target, n_steps=n, method=m, output=output,
                                             internal_batch_size=rows).sum(1) for m, n in rules}
    nodes = [ig_quadrature(n, m) for m, n in rules]
    _, slopes = _scan_path(model, x, target, torch.cat([a for a, _ in nodes]), output, rows)
    sums, start = {}, 0
    for rule, (a, w) in zip(rules, nodes):
        sums[rule] = slopes[:, start:start + len(a)] @ w.to(slopes)
        start += len(a)
    return sums


def count_path_switches(sae: SparseAutoencoder, x: torch.Tensor, n_points: int = COMPLETENESS_POINTS) -> torch.Tensor:
    """Discontinuous changes of the activation on the straight path from the zero image to each ``x: [B, 784]``
    -> ``[B]``: top-k swaps, or threshold crossings at a cutoff > 0 (0 for a ReLU code, which has none).

    Scans ``n_points`` intervals of the encoder's pre-activations (``sae.code_changes``): ReLU zero-crossings
    and swaps below 0 are continuous and not counted; several changes inside one interval all count.
    """
    x, _ = as_flat_images(x)
    _check_int("n_points", n_points, low=1)
    alphas = torch.linspace(0, 1, n_points + 1, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        start, direction = sae.encoder_bias(), F.linear(x, sae.W_enc)
        counts = [(swaps * jumps).sum(1) for swaps, jumps in
                  (sae.code_changes(*sae.path_code(start + alphas[None, :, None] * direction[i:i + 1, None]))
                   for i in range(len(x)))]
    return torch.cat(counts).cpu()


def completeness_decomposition(pipeline: SparseCodePipeline, x: torch.Tensor, target,
                               n_points: int = COMPLETENESS_POINTS, n_steps: int = 50, method: str = "gausslegendre",
                               output: str = "logit", tolerance: float = COMPLETENESS_TOLERANCE,
                               n_steps_list: Sequence[int] = (), internal_batch_size: int | None = None,
                               seed: int = 0) -> dict:
    """Completeness measured directly on a dense straight path from the zero image to each ``x: [N, 784]``.

    F and dF/dalpha are evaluated at ``n_points + 1`` evenly spaced points (in pre-activation space, exact),
    and ``F(x) - F(0)`` is split into

    * ``smooth``: the gradient integral (trapezoid rule on every interval): what IG approximates;
    * ``jump_sum``: over intervals where the active code changes discontinuously (the autoencoder's
      ``code_changes``: a top-k swap of positive codes, a unit crossing a threshold > 0; a ReLU code has none, so
      its jump sum is 0 and IG's error is the quadrature's alone), F's change minus the gradient integral of that
      interval;
    * ``residual = F(x) - F(0) - smooth - jump_sum``: the trapezoid's error on continuous intervals (kinks
      of the ReLU head), reported to show the scan is dense enough.

    IG's completeness error at ``n_steps`` (``sum(attr) - (F(x) - F(0))``, quadrature ``method``) should
    then equal ``-jump_sum``: ``mismatch = |ig_error + jump_sum| / |F(x) - F(0)|`` per image and the share
    within ``tolerance``. ``target``: int or ``[N]``. Per-image lists plus ``summarize`` dicts.

    ``table[rule][n]``: IG's median relative completeness error ``|ig_error| / |F(x) - F(0)|``, the median
    mismatch and the share within ``tolerance`` -- the error stays at the jumps' size while the mismatch
    shrinks with n -- for ``method`` at ``n_steps`` and every count in ``n_steps_list`` (one extra scan of
    that many points), and for free for the trapezoid rule at every n with ``n - 1`` dividing
    ``n_points`` (its points are scan points: 17, 33, ..., n_points + 1 for n_points = 1024).
    """
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"completeness_decomposition needs a SparseCodePipeline, got {type(pipeline).__name__}")
    x, _, target, _ = _prepare(pipeline, x, target, output)
    _check_int("n_points", n_points, low=MIN_COMPLETENESS_POINTS)
    _check_float("tolerance", tolerance, low=0.0, low_open=True)
    rows = _rows_per_pass(internal_batch_size)
    alphas = torch.linspace(0, 1, n_points + 1, dtype=torch.float64)
    values, slopes, swaps, jumps = _scan_path(pipeline, x, target, alphas, output, rows, changes=True)
    smooth = (slopes[:, 1:] + slopes[:, :-1]) / (2 * n_points)  # [N, n_points] gradient integral per interval
    jump = torch.where(jumps, values[:, 1:] - values[:, :-1] - smooth, torch.zeros_like(smooth))
    gap = values[:, -1] - values[:, 0]
    for n in n_steps_list:
        _check_int("n_steps_list entry", n, low=1)
    steps = sorted({n_steps, *map(int, n_steps_list)})
    errors = {rule: s - gap for rule, s in _ig_sums(pipeline, x, target, [(method, n) for n in steps], output,
                                                     rows).items()}
    errors.update({("riemann_trapezoid", n): _subgrid_trapezoid(slopes, n) - gap for n in _subgrid_steps(n_points)})
    ig_error = errors[method, n_steps]
    parts = {"gap": gap, "smooth": smooth.sum(1), "jump_sum": jump.sum(1), "ig_error": ig_error,
             "switches": (swaps * jumps).sum(1), "continuous_changes": (swaps * ~jumps).sum(1)}
    parts["residual"] = gap - parts["smooth"] - parts["jump_sum"]
    scale = gap.abs().clamp_min(GAP_FLOOR)
    parts["mismatch"] = (ig_error + parts["jump_sum"]).abs() / scale
    per_image = {name: v.double().cpu().numpy() for name, v in parts.items()}
    table = {}
    for (rule, n), err in errors.items():
        rel = (err.abs() / scale).double().cpu().numpy()
        mismatch = ((err + parts["jump_sum"]).abs() / scale).double().cpu().numpy()
        table.setdefault(rule, {})[str(n)] = {"median_rel_error": float(np.median(rel)),
                                         "median_mismatch": float(np.median(mismatch)),
                                         "share_within_tolerance": float((mismatch <= tolerance).mean())}
    return {"n_points": n_points, "n_steps": n_steps, "method": method, "tolerance": tolerance, "table": table,
            "share_within_tolerance": float((per_image["mismatch"] <= tolerance).mean()),
            "share_with_switches": float((per_image["switches"] > 0).mean()),
            "summary": {name: summarize(v, seed) for name, v in per_image.items()},
            "relative": {name: summarize(np.abs(per_image[name]) / scale.double().cpu().numpy(), seed)
                         for name in ("jump_sum", "residual", "ig_error")},
            "per_image": {name: v.tolist() for name, v in per_image.items()}}


def _subgrid_steps(n_points: int) -> list[int]:
    """Trapezoid step counts ``n >= MIN_SUBGRID_STEPS`` whose points are a subset of ``n_points + 1``
    evenly spaced scan points (``n - 1`` divides ``n_points``)."""
    return [d + 1 for d in range(MIN_SUBGRID_STEPS - 1, n_points + 1) if n_points % d == 0]


def _subgrid_trapezoid(slopes: torch.Tensor, n: int) -> torch.Tensor:
    """IG's ``sum(attr)`` by the trapezoid rule with ``n`` steps from scan slopes ``[B, n_points + 1]``."""
    _, weights = ig_quadrature(n, "riemann_trapezoid")
    return slopes[:, ::(slopes.shape[1] - 1) // (n - 1)] @ weights.to(slopes)


def ig_completeness(model: nn.Module, x: torch.Tensor, target,
                    n_steps_list: Sequence[int] = (16, 32, 50, 100, 200, 500),
                    methods: Sequence[str] = ("gausslegendre", "riemann_trapezoid"), tolerance: float = 0.05,
                    output: str = "logit", reference_steps: int = 50) -> dict:
    """Relative completeness error of IG, ``|sum(attr) - (F(x) - F(0))| / |F(x) - F(0)|`` per image,
    for every quadrature ``method`` and ``n_steps``; reports the median and the share within ``tolerance``.
    Returns ``{"table": {method: {n_steps: {...}}}}`` plus ``"per_image_50"``: per-image errors of the
    first method at ``reference_steps`` (None if that n_steps was not run). Models with ``affine_split``
    compute every rule in one scan of the head (``_ig_sums``).
    """
    x, _ = as_flat_images(x)
    fn = _output_fn(model, output)
    with torch.no_grad():
        target = _check_target(target, len(x), model(x[:1]).shape[1], x.device)
        gap = fn(x, target) - fn(torch.zeros_like(x), target)
    rules = [(m, int(n)) for m in methods for n in n_steps_list]
    sums = _ig_sums(model, x, target, rules, output, DEFAULT_INTERNAL_BATCH)
    table, per_image = {m: {} for m in methods}, None
    for (method, n), total in sums.items():
        rel = ((total - gap).abs() / gap.abs().clamp_min(GAP_FLOOR)).detach().cpu().numpy()
        table[method][str(n)] = {"median_rel_error": float(np.median(rel)), "mean_rel_error": float(rel.mean()),
                            "share_within_tolerance": float((rel <= tolerance).mean())}
        if method == methods[0] and n == reference_steps:
            per_image = rel
    return {"tolerance": tolerance, "table": table, "reference_steps": reference_steps,
            "per_image_50": None if per_image is None else per_image.tolist()}
