"""What every attribution method (gradient and perturbation) shares: the checks at the door (model, target,
images, baselines) and the explained score ``F``: the target's logit, or its softmax probability."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ._util import (
    _check_choice,
    _check_images,
    _check_instance,
    _check_int,
    _check_no_inference_mode,
    _describe,
    _model_dtype,
)
from .data import as_flat_images
from .models import SparseCodeClassifier, SparseCodePipeline
from .sae import SparseAutoencoder

OUTPUTS = ("logit", "probability")


DEFAULT_INTERNAL_BATCH = 4096  # rows per forward/backward pass when internal_batch_size is None


def _check_classifier(model: nn.Module, name: str = "model") -> None:
    """``ValueError`` unless ``model`` is a module and not the autoencoder (whose output, a reconstruction
    ``[B, 784]``, would pass for 784 class scores)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module, got {_describe(model)}")
    if isinstance(model, SparseAutoencoder):
        raise ValueError(f"{name} must map images to class scores, got the autoencoder ({type(model).__name__}), "
                         f"whose output is a reconstruction; pass SparseCodePipeline(sae, clf)")


def _check_model(model: nn.Module, name: str = "model") -> None:
    _check_classifier(model, name)
    if any(m.training for m in model.modules()):
        raise ValueError(f"{name} (or one of its submodules) is in training mode (dropout active, so attributions "
                         "would be random); call model.eval() first")


def _check_pipeline(pipeline) -> None:
    _check_instance("pipeline", pipeline, SparseCodePipeline, "a SparseCodePipeline (autoencoder + classifier)")


def _check_target(target, batch: int, n_classes: int, device: torch.device, name: str = "target") -> torch.Tensor:
    """``target`` (int or ``[B]`` integer tensor) -> ``[B]`` int64 tensor on ``device``."""
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        target = torch.full((batch,), int(target), dtype=torch.long)
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"{name} must be an int or an integer tensor of shape [{batch}], got {_describe(target)}")
    if target.shape != (batch,):
        raise ValueError(f"{name} must have shape [{batch}] (one class per image), got {list(target.shape)}")
    if target.numel() and (target.min() < 0 or target.max() >= n_classes):
        raise ValueError(f"{name} classes must be in [0, {n_classes - 1}], got values "
                         f"from {int(target.min())} to {int(target.max())}")
    return target.to(device=device, dtype=torch.long)


def _output_fn(model: nn.Module, output: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(x: [N, D], target: [N]) -> [N]``: the target class's logit or probability."""
    _check_choice("output", output, OUTPUTS)

    return lambda x, target: _score(model(x), target, output)


def _score(logits: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """``logits: [N, C]`` -> ``[N]``: the target's logit, or its softmax probability."""
    scores = logits.softmax(dim=1) if output == "probability" else logits
    return scores.gather(1, target[:, None])[:, 0]


def _prepare(model, inputs, target, output, name: str = "model", inputs_name: str = "inputs"):
    """Shared validation of the gradient methods (``RuntimeError`` under ``torch.inference_mode()``, where no gradient
    can be taken): returns ``(x: [B, D], shape, target: [B], fn)``."""
    _check_no_inference_mode("attribution")
    return _prepare_inputs(model, inputs, target, output, name, inputs_name)


def _prepare_inputs(model, inputs, target, output, name: str = "model", inputs_name: str = "inputs"):
    """Shared validation of every attribution method: the model (a classifier in eval mode), the images (finite, in
    [0, 1]; float images are cast to the model's dtype, as everywhere: ``_check_images``), the target ->
    ``(x: [B, D], shape, target: [B], fn)``."""
    _check_model(model, name)
    x = _check_images(inputs_name, inputs, dtype=_model_dtype(model))
    shape = tuple(x.shape)
    x = x.reshape(len(x), -1)
    x = x.clone() if x.is_inference() else x  # made under inference_mode: autograd cannot save it
    fn = _output_fn(model, output)
    n_classes = _class_count(model, x, name)
    return x, shape, _check_target(target, len(x), n_classes, x.device), fn


def _class_count(model: nn.Module, x: torch.Tensor, name: str = "model") -> int:
    """``C`` for a model that maps images ``x: [B, 784]`` to class scores ``[B, C]`` (C >= 2), tried on one image;
    ``ValueError`` for a model that fails on them or returns anything else."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except (RuntimeError, ValueError, TypeError) as exc:
        hint = (" (it reads codes, not pixels: pass SparseCodePipeline(sae, clf))"
                if isinstance(model, SparseCodeClassifier) else "")
        raise ValueError(f"{name} must map images [B, {x.shape[1]}] to class scores [B, C]; it failed on one image: "
                         f"{type(exc).__name__}: {exc}; got {_describe(model)}{hint}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must map images [B, {x.shape[1]}] to class scores [B, C] with C >= 2, got output "
                         f"{got} for one image")
    return out.shape[1]


def _rows_per_pass(internal_batch_size: int | None) -> int:
    if internal_batch_size is None:
        return DEFAULT_INTERNAL_BATCH
    _check_int("internal_batch_size", internal_batch_size, low=1)
    return internal_batch_size


def _baseline(baselines: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A baseline of one image or one per image, flattened and broadcast to ``x: [B, D]``."""
    if isinstance(baselines, torch.Tensor) and baselines.numel() == x.shape[1]:
        baselines = baselines.reshape(1, -1)
    b, _ = as_flat_images(baselines, name="baselines")
    if len(b) not in (1, len(x)):
        raise ValueError(f"baselines must hold 1 or {len(x)} images, got {len(b)}")
    return b.to(x).expand_as(x)
