"""What every attribution method (gradient and perturbation) shares: the checks at the door (model, target,
images, baselines) and the explained score ``F``: the target's logit, or its softmax probability."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ._util import _check_int, _check_no_inference_mode, _check_pixels
from .data import as_flat_images
from .sae import SparseAutoencoder

OUTPUTS = ("logit", "probability")


DEFAULT_INTERNAL_BATCH = 4096  # rows per forward/backward pass when internal_batch_size is None


def _check_classifier(model: nn.Module) -> None:
    """``ValueError`` unless ``model`` is a module and not the autoencoder (whose output, a reconstruction
    ``[B, 784]``, would pass for 784 class scores)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, SparseAutoencoder):
        raise ValueError(f"model must map images to class scores, got the autoencoder ({type(model).__name__}), "
                         f"whose output is a reconstruction; pass SparseCodePipeline(sae, clf)")


def _check_model(model: nn.Module) -> None:
    _check_classifier(model)
    if any(m.training for m in model.modules()):
        raise ValueError("model (or one of its submodules) is in training mode (dropout active, so attributions "
                         "would be random); call model.eval() first")


def _check_target(target, batch: int, n_classes: int, device: torch.device) -> torch.Tensor:
    """``target`` (int or ``[B]`` integer tensor) -> ``[B]`` int64 tensor on ``device``."""
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        target = torch.full((batch,), int(target), dtype=torch.long)
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must be an int or an integer tensor of shape [{batch}], got {target!r}")
    if target.shape != (batch,):
        raise ValueError(f"target must have shape [{batch}] (one class per image), got {list(target.shape)}")
    if target.numel() and (target.min() < 0 or target.max() >= n_classes):
        raise ValueError(f"target classes must be in [0, {n_classes - 1}], got values "
                         f"from {int(target.min())} to {int(target.max())}")
    return target.to(device=device, dtype=torch.long)


def _output_fn(model: nn.Module, output: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(x: [N, D], target: [N]) -> [N]``: the target class's logit or probability."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")

    return lambda x, target: _score(model(x), target, output)


def _score(logits: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """``logits: [N, C]`` -> ``[N]``: the target's logit, or its softmax probability."""
    scores = logits.softmax(dim=1) if output == "probability" else logits
    return scores.gather(1, target[:, None])[:, 0]


def _prepare(model, inputs, target, output):
    """Shared validation of the gradient methods (``RuntimeError`` under ``torch.inference_mode()``, where no gradient
    can be taken): returns ``(x: [B, D], shape, target: [B], fn)``."""
    _check_no_inference_mode("attribution")
    return _prepare_inputs(model, inputs, target, output)


def _prepare_inputs(model, inputs, target, output):
    """Shared validation of every attribution method: the model (a classifier in eval mode), the images (finite, in
    [0, 1], the model's dtype), the target -> ``(x: [B, D], shape, target: [B], fn)``."""
    _check_model(model)
    x, shape = as_flat_images(inputs)
    _check_pixels("inputs", x)
    x = x.clone() if x.is_inference() else x  # made under inference_mode: autograd cannot save it
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point() and param.dtype != x.dtype:
        raise ValueError(f"inputs have dtype {x.dtype} but the model's parameters are {param.dtype}; "
                         f"convert one of them (e.g. inputs.to({param.dtype}))")
    n_classes = _class_count(model, x)
    return x, shape, _check_target(target, len(x), n_classes, x.device), _output_fn(model, output)


def _class_count(model: nn.Module, x: torch.Tensor) -> int:
    """``C`` for a model that maps images ``x: [B, 784]`` to class scores ``[B, C]`` (C >= 2), tried on one image;
    ``ValueError`` for a model that fails on them or returns anything else."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"model must map images [B, {x.shape[1]}] to class scores [B, C]; it failed on one image: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must map images [B, {x.shape[1]}] to class scores [B, C] with C >= 2, got output "
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
