"""The checks in a form that compares models on the same images: per-image LeRF - MoRF gaps, a cascading
randomization of any pixels -> logits model, per-image unit-deletion gaps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .._util import _check_int, _check_labels
from ..attribution_base import _check_target
from ..controls import LinearCodePipeline
from ..data import as_flat_images
from ..models import SparseCodeClassifier, SparseCodePipeline, densify
from ..stats import partner_images, rowwise_spearman, summarize
from .deletion import balanced_subset, curve_auc, faithfulness_orderings, removal_curves, removal_order
from .randomization import RANDOMIZATION_SEED_OFFSET
from .substrates import ROAD_PIXELS_PER_STEP, SUBSTRATES
from .unit_causality import _unit_ranks

_RANDOM_CONTROL = "random"  # the model-free ordering every method's gap is measured against


@torch.no_grad()
def faithfulness_gaps(model: nn.Module, x: torch.Tensor, target, maps: dict[str, torch.Tensor],
                      substrates: Sequence[str] = SUBSTRATES, n_subset: int = 300, pixels_per_step: int = 28,
                      road_pixels_per_step: int = ROAD_PIXELS_PER_STEP, seed: int = 0) -> dict:
    """Per-image LeRF AUC - MoRF AUC, exactly as ``faithfulness_suite`` computes them, for every method ordering
    (``"<method>/signed"``, ``"<method>/abs"``) and the random control: ``{substrate: {"images": [n] indices into
    x, key: [n] gaps}}``. ``x: [N, 784]``, ``target: [N]``, ``maps[m]: [N, 784]``; zero substrate on every image,
    blur and ROAD on the class-balanced seeded subset of ``n_subset`` (``balanced_subset``): the same images for
    every model explained on the same ``x``, ``target`` and ``seed``."""
    flat, _ = as_flat_images(x, name="x")
    if isinstance(substrates, str) or not substrates or any(s not in SUBSTRATES for s in substrates):
        raise ValueError(f"substrates must be a non-empty sequence of {SUBSTRATES}, got {substrates!r}")
    target = _check_target(target, len(flat), model(flat[:1]).shape[1], flat.device)
    _check_int("n_subset", n_subset, low=1)
    orderings = {k: o for k, o in faithfulness_orderings(maps, flat, seed).items()
                 if o["kind"] == "method" or k == _RANDOM_CONTROL}
    out = {}
    for substrate in substrates:
        idx = torch.arange(len(flat)) if substrate == "zero" else balanced_subset(target.cpu(), n_subset, seed)
        dev = idx.to(flat.device)
        morf = torch.stack([removal_order(o["scores"][dev], seed) for o in orderings.values()])
        step = road_pixels_per_step if substrate == "road" else pixels_per_step
        curves = removal_curves(model, flat[dev], target[dev], torch.cat([morf, morf.flip(-1)]), substrate, step,
                                seed).cpu()
        gaps = {key: curve_auc(curves[len(morf) + i]) - curve_auc(curves[i]) for i, key in enumerate(orderings)}
        out[substrate] = {"images": idx.numpy(), **gaps}
    return out


def _randomization_groups(model: nn.Module) -> list[tuple[str, list[torch.Tensor]]]:
    """The cascade of ``model``, top (logits) down: ``[(stage name, tensors)]``. The classifier's linear layers
    (as ``randomization_stages`` names them), then the code's map from pixels where it has weights: the
    autoencoder's encoder (``W_enc``, ``b_enc``) or the PCA components; raw pixels have none."""
    if isinstance(model, SparseCodeClassifier):
        clf, encoder = model, []
    elif isinstance(model, SparseCodePipeline):
        clf, encoder = model.clf, [model.sae.W_enc, model.sae.b_enc]
    elif isinstance(model, LinearCodePipeline):
        clf = model.clf
        encoder = [] if model.code.components is None else [model.code.components]
    else:
        raise ValueError(f"model must be a SparseCodePipeline, LinearCodePipeline or SparseCodeClassifier, "
                         f"got {type(model).__name__}")
    linears = [[clf.W1, clf.b1]] + [[m.weight, m.bias] for m in clf.rest if isinstance(m, nn.Linear)]
    names = [f"classifier layer {i}" + (" (logits)" if i == len(linears) else "") for i in range(len(linears), 0, -1)]
    return list(zip(names, reversed(linears))) + ([("encoder", encoder)] if encoder else [])


@torch.no_grad()
def _randomize_(tensors: list[torch.Tensor], gen: torch.Generator) -> None:
    """Gaussian weights with each tensor's original std, in place (as ``randomization_check``)."""
    for p in tensors:
        p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * p.std().clamp_min(1e-6))


def cascading_randomization(model: nn.Module, x: torch.Tensor, target, maps_fn: Callable[[nn.Module], dict],
                            seed: int = 0, labels=None) -> tuple[dict, dict]:
    """Cascading model-parameter randomization (Adebayo et al. 2018) of any model ``_randomization_groups``
    knows, with the weights ``randomization_check`` draws (stage s from ``seed + RANDOMIZATION_SEED_OFFSET + s``).

    ``maps_fn(model) -> {method: [N, 784]}`` computes the maps of ``x: [N, 784]`` (targets ``target: [N]``).
    After each stage: Spearman of |maps| with the trained model's per image (all pixels). ``reference``: the
    same statistic between the trained model's maps of two images of different classes (``labels``, default
    ``target``; seeded ``partner_images``). Returns ``(summary, per_image)``: ``summary = {"stages",
    "similarity": {method: [summary per stage]}, "reference": {method: summary}, "head_minus_reference",
    "final_minus_reference": {method: summary of per-image differences}}`` (head: after the last classifier
    stage; final: after the whole cascade) and ``per_image = {method: {"head", "final", "reference": [N]}}``."""
    import copy

    flat, _ = as_flat_images(x, name="x")
    groups = _randomization_groups(model)
    n_head = sum(name.startswith("classifier") for name, _ in groups)
    original = {m: v.reshape(len(flat), -1).double().cpu().numpy() for m, v in maps_fn(model).items()}
    partner = partner_images(_check_labels(target if labels is None else labels, len(flat)), False, seed)
    reference = {m: rowwise_spearman(np.abs(v), np.abs(v[partner])) for m, v in original.items()}
    per_stage = {m: [] for m in original}
    work = copy.deepcopy(model).eval()
    for s in range(len(groups)):
        _, tensors = _randomization_groups(work)[s]
        _randomize_(tensors, torch.Generator().manual_seed(seed + RANDOMIZATION_SEED_OFFSET + s))
        for m, v in maps_fn(work).items():
            per_stage[m].append(rowwise_spearman(np.abs(original[m]), np.abs(v.reshape(len(flat), -1).double()
                                                                               .cpu().numpy())))
    per_image = {m: {"head": per_stage[m][n_head - 1], "final": per_stage[m][-1], "reference": reference[m]}
                 for m in original}
    summary = {"stages": [name for name, _ in groups], "n_images": len(flat),
               "similarity": {m: [summarize(v, seed) for v in per_stage[m]] for m in original},
               "reference": {m: summarize(reference[m], seed) for m in original},
               "head_minus_reference": {m: summarize(p["head"] - p["reference"], seed) for m, p in per_image.items()},
               "final_minus_reference": {m: summarize(p["final"] - p["reference"], seed)
                                         for m, p in per_image.items()}}
    return summary, per_image


@torch.no_grad()
def unit_deletion_gaps(pipeline: SparseCodePipeline, x: torch.Tensor, target, contributions: torch.Tensor,
                       seed: int = 0) -> np.ndarray:
    """Per image, the target-logit deletion AUC of a random unit order minus that of the contribution order
    (``unit_deletion_curves``' deletion/logit curves, the same seeded orders; positive: deleting the units with
    the largest contributions first lowers the logit faster). ``x: [N, 784]``, ``target: [N]``,
    ``contributions: [N, H]``. The head runs on the densified code (a matmul: wide dense codes stay fast)."""
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"unit_deletion_gaps needs a SparseCodePipeline, got {type(pipeline).__name__}")
    flat, _ = as_flat_images(x, name="x")
    h = pipeline.sae.d_hidden
    if not isinstance(contributions, torch.Tensor) or contributions.shape != (len(flat), h):
        raise ValueError(f"contributions must be a tensor of shape [{len(flat)}, {h}], got "
                         f"{getattr(contributions, 'shape', type(contributions).__name__)}")
    target = _check_target(target, len(flat), pipeline.clf.rest[-1].out_features, flat.device)
    values, indices = pipeline.sae.encode_sparse(flat)
    ranks = _unit_ranks(values, contributions.to(values.device).gather(1, indices), seed)
    aucs = {}
    for order in ("contribution", "random"):
        steps = [pipeline.clf(densify(values * (ranks[order] >= t), indices, h)).gather(1, target[:, None])[:, 0]
                 for t in range(values.shape[1] + 1)]
        aucs[order] = curve_auc(torch.stack(steps, dim=1))
    return aucs["random"] - aucs["contribution"]
