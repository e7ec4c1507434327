"""Unit-level causality: deleting code units in contribution order against random."""

from __future__ import annotations

import math

import torch

from ..attribution_base import _prepare
from ..models import SparseCodePipeline
from ..stats import _wilcoxon_p, summarize
from .deletion import curve_auc

UNIT_ORDERS = ("contribution", "random", "activation")  # unit orders of unit_deletion_curves (the first is tested)


UNIT_SCORES = ("logit", "probability")  # what the unit-deletion curves follow for the target class


Z_95 = 1.959963984540054  # two-sided 95 % quantile of the normal distribution (pointwise bands of mean curves)


def _unit_ranks(values: torch.Tensor, contributions: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Position of each top-k slot in each order of ``UNIT_ORDERS``: ``values, contributions: [N, k]`` ->
    ``{order: [N, k]}`` ranks (0 = first). Slots with a zero activation go last in every order."""
    gen = torch.Generator().manual_seed(seed)
    keys = {"contribution": contributions, "random": torch.rand(values.shape, generator=gen, dtype=torch.float64),
            "activation": values}
    active = (values > 0).cpu()
    ranks = {}
    for name, key in keys.items():
        key = torch.where(active, key.detach().to(torch.float64).cpu(), torch.tensor(-math.inf, dtype=torch.float64))
        order = key.argsort(dim=1, descending=True, stable=True)
        ranks[name] = order.argsort(dim=1).to(values.device)
    return ranks


@torch.no_grad()
def unit_deletion_curves(pipeline: SparseCodePipeline, x: torch.Tensor, target, contributions: torch.Tensor,
                         seed: int = 0) -> dict:
    """Unit-level causality in code space: do the units with the largest contributions matter most?

    For each image's code (``encode_sparse``: its k top-k units; for a threshold kind its active units, padded
    to the batch's widest code with units at z = 0, which go last and change nothing) the active units are zeroed
    one per step
    (``deletion``, from the full code) or switched on one per step (``insertion``, from the empty code) in
    three orders: ``contribution`` (most positive ``contributions`` first: what decoder-weighted claims),
    ``random`` (seeded) and ``activation`` (largest z first); units with z = 0 go last in every order.
    After each step the classifier (``clf.forward_sparse``) gives the target logit and probability.

    ``x: [N, 784]``, ``target``: int or ``[N]``, ``contributions: [N, H]`` unit contributions
    (``decoder_weighted(..., return_contributions=True)[1]``). Returns mean curves ``[k + 1]`` with
    pointwise 95 % bands, per-image AUCs (x-axis: share of the k slots) summarised with CIs, and paired
    Wilcoxon tests of the contribution order against random and activation order (deletion: lower AUC
    is better; insertion: higher).
    """
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"unit_deletion_curves needs a SparseCodePipeline, got {type(pipeline).__name__}")
    x, _, target, _ = _prepare(pipeline, x, target, "logit")
    h = pipeline.sae.d_hidden
    if not isinstance(contributions, torch.Tensor) or contributions.shape != (len(x), h):
        shape = list(contributions.shape) if isinstance(contributions, torch.Tensor) else type(contributions).__name__
        raise ValueError(f"contributions must be a tensor of shape [{len(x)}, {h}] (one per image and unit), "
                         f"got {shape}")
    if not torch.isfinite(contributions).all():
        raise ValueError("contributions contains NaN or inf values")
    values, indices = pipeline.sae.encode_sparse(x)
    ranks = _unit_ranks(values, contributions.to(values.device).gather(1, indices), seed)
    k = values.shape[1]
    result = {"n_images": len(x), "k": k, "orders": list(UNIT_ORDERS),
              "mean_active_units": float((values > 0).sum(1).double().mean()), "curves": {}, "auc": {}, "tests": {}}
    for mode in ("deletion", "insertion"):
        aucs = {}
        for order, rank in ranks.items():
            steps = [pipeline.clf.forward_sparse(values * ((rank >= t) if mode == "deletion" else (rank < t)), indices)
                     for t in range(k + 1)]
            logits = torch.stack(steps, dim=1)  # [N, k + 1, C]
            for score in UNIT_SCORES:
                s = logits.softmax(-1) if score == "probability" else logits
                curves = s.gather(2, target[:, None, None].expand(-1, k + 1, 1))[..., 0].double().cpu()
                std = curves.std(0) / math.sqrt(len(x)) if len(x) > 1 else torch.zeros(k + 1, dtype=torch.float64)
                mean = curves.mean(0)
                result["curves"].setdefault(mode, {}).setdefault(score, {})[order] = {
                    "mean": mean.tolist(), "lo": (mean - Z_95 * std).tolist(), "hi": (mean + Z_95 * std).tolist()}
                aucs[score, order] = curve_auc(curves)
        for score in UNIT_SCORES:
            result["auc"].setdefault(mode, {})[score] = {o: summarize(aucs[score, o], seed) for o in UNIT_ORDERS}
            result["tests"].setdefault(mode, {})[score] = {
                f"vs_{o}": {"mean_diff": float((aucs[score, UNIT_ORDERS[0]] - aucs[score, o]).mean()),
                            "p_value": _wilcoxon_p(aucs[score, UNIT_ORDERS[0]] - aucs[score, o])}
                for o in UNIT_ORDERS[1:]}
    return result
