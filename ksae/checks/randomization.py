"""Cascading and independent model-parameter randomization (Adebayo et al. 2018)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .._util import _check_choices, _check_images, _check_instance, _check_int, _check_labels, _model_dtype
from ..attribution import METHOD_LABELS, _check_pipeline, _check_target, attribute_all
from ..config import Config
from ..models import SparseCodeClassifier
from ..stats import partner_images, rowwise_spearman, summarize
from .agreement import PIXEL_SETS

if TYPE_CHECKING:
    from ..models import SparseCodePipeline


def randomization_stages(clf: SparseCodeClassifier) -> list[str]:
    """Cascade order for the randomization check: classifier layers top (logits) down, then the
    encoder, then the decoder atoms (which only the decoder-weighted map reads)."""
    _check_instance("clf", clf, SparseCodeClassifier)
    n_linear = 1 + sum(isinstance(m, nn.Linear) for m in clf.rest)
    return [f"classifier layer {i}" + (" (logits)" if i == n_linear else "") for i in range(n_linear, 0, -1)] + [
        "encoder", "decoder atoms"]


RANDOMIZATION_VARIANTS = ("cascading", "independent")  # stages randomised cumulatively / one at a time


RANDOMIZATION_SEED_OFFSET = 12345  # stage s draws its weights from seed + offset + s (same in both variants)


DECODER_STAGE = "decoder atoms"  # the stage the model's output never reads (only decoder-weighted maps do)


READS_DECODER = ("decoder",)  # methods whose maps change when only the decoder atoms are randomised


@torch.no_grad()
def _randomize_stage_(pipeline: SparseCodePipeline, stage_index: int, gen: torch.Generator) -> None:
    """Re-initialise one cascade stage in place: Gaussian weights with each tensor's original std."""
    linears = [(pipeline.clf.W1, pipeline.clf.b1)] + [(m.weight, m.bias) for m in pipeline.clf.rest
                                                       if isinstance(m, nn.Linear)]
    groups = [list(p) for p in reversed(linears)] + [[pipeline.sae.W_enc, pipeline.sae.b_enc], [pipeline.sae.W_dec]]
    for p in groups[stage_index]:
        p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * p.std().clamp_min(1e-6))
    if stage_index == len(groups) - 1:
        pipeline.sae.unit_norm_decoder_()


def _abs_map_similarity(a: np.ndarray, b: np.ndarray, obj: np.ndarray, seed: int) -> dict:
    """Spearman of ``|a|`` and ``|b|`` (``[N, P]`` maps) per row on all pixels and on ``obj: [N, P]``,
    summarised: ``{"all": summary, "object": summary}``."""
    a, b = np.abs(a), np.abs(b)
    return {"all": summarize(rowwise_spearman(a, b), seed), "object": summarize(rowwise_spearman(a, b, obj), seed)}


def randomization_check(pipeline: SparseCodePipeline, x: torch.Tensor, target: torch.Tensor, cfg: Config,
                        methods: Sequence[str] = tuple(METHOD_LABELS), seed: int = 0, labels=None,
                        variants: Sequence[str] = RANDOMIZATION_VARIANTS) -> dict:
    """Model-parameter randomization (Adebayo et al. 2018), cascading and independent.

    Stages (``randomization_stages``): the classifier's layers from the logits down, the encoder, the
    decoder atoms. ``cascading`` re-initialises them cumulatively; ``independent`` one at a time on a fresh
    copy of the trained model (stage s gets the same random weights in both). After each stage every map
    is recomputed and compared with the trained model's: Spearman of |maps| per image (mean, 95 % CI) on
    all pixels and on the image's object pixels (x > 0), in ``variants[variant][pixels][method]: [S]``.

    ``reference[method][pixels]``: the same statistic between the trained model's maps of two images of
    *different* classes (``labels: [N]``, default ``target``; seeded ``partner_images``), on all pixels and
    on the pixels that are object in both images. A faithful method's similarity should fall to about
    this reference once the model is destroyed. ``x: [N, 784]``, ``target: [N]``. ``variants``: which of
    ``RANDOMIZATION_VARIANTS`` to run (both by default).
    """
    _check_pipeline(pipeline)
    x = _check_images("x", x, dtype=_model_dtype(pipeline), flat=True)
    _check_target(target, len(x), pipeline.clf.rest[-1].out_features, x.device)
    _check_instance("cfg", cfg, Config)
    methods = _check_choices("methods", methods, METHOD_LABELS)
    _check_int("seed", seed, low=0)
    if labels is not None:
        _check_labels(labels, len(x))
    variants = _check_choices("variants", variants, RANDOMIZATION_VARIANTS, "a non-empty sequence of", empty=False)
    original = attribute_all(pipeline, x, target, cfg, methods, seed=seed)
    obj = x.cpu().numpy() > 0
    partner = partner_images(_check_labels(target if labels is None else labels, len(x)), False, seed)
    orig = {m: v.reshape(len(x), -1).double().cpu().numpy() for m, v in original.items()}
    stages = randomization_stages(pipeline.clf)
    result = {"stages": stages, "methods": list(methods), "n_images": len(x),
              "reference": {m: _abs_map_similarity(v, v[partner], obj & obj[partner], seed) for m, v in orig.items()},
              "variants": {v: {p: {m: [] for m in methods} for p in PIXEL_SETS} for v in variants}}
    for variant in variants:
        model, maps = copy.deepcopy(pipeline).eval(), original
        for stage in tqdm(range(len(stages)), desc=f"randomization ({variant})", mininterval=2.0):
            if variant == "independent":
                model, maps = copy.deepcopy(pipeline).eval(), original
            _randomize_stage_(model, stage, torch.Generator().manual_seed(seed + RANDOMIZATION_SEED_OFFSET + stage))
            # the decoder atoms change no model output: the other maps are those of the model before this stage
            changed = [m for m in methods if stages[stage] != DECODER_STAGE or m in READS_DECODER]
            maps = {**maps, **attribute_all(model, x, target, cfg, changed, seed=seed)}
            for m in methods:
                sim = _abs_map_similarity(orig[m], maps[m].reshape(len(x), -1).double().cpu().numpy(), obj, seed)
                for pixels in PIXEL_SETS:
                    result["variants"][variant][pixels][m].append(sim[pixels])
    return result
