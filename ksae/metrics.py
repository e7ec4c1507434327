"""Codes of a dataset, reconstruction (FVU: ``fvu`` and ``firing_counts`` live in ``ksae.sae.base``), firing
frequency, predictions, the test-set evaluation."""

from __future__ import annotations

import torch

from ._util import (
    _check_device,
    _check_images,
    _check_instance,
    _check_int,
    _describe,
    _keeps_mode,
    _model_dtype,
    _part_hint,
)
from .config import Config
from .data import FashionMNIST, train_val_split
from .models import SparseCodeClassifier, SparseCodePipeline
from .sae import SparseAutoencoder
from .sae.base import _cat_codes, firing_counts, fvu


def _check_encoder(name: str, sae) -> None:
    """An encoder of images into sparse codes: a ``SparseAutoencoder`` or a stand-in with ``k``, ``eval()`` and
    ``encode_sparse(x) -> (values, indices)`` (the controls' pixel and PCA codes, ``LinearCode``)."""
    if not all(hasattr(sae, attr) for attr in ("k", "eval", "encode_sparse")):
        hint = _part_hint(sae, lambda v: isinstance(v, SparseAutoencoder))
        raise ValueError(f"{name} must be an encoder with k, eval() and encode_sparse (a SparseAutoencoder), got "
                         f"{_describe(sae)}{hint}")


def _check_model_input(sae, x, device, encoder: bool = False) -> torch.Tensor:
    """The autoencoder (any encoder where ``encoder``), its images ``x`` (flattened, cast to the model's dtype) and
    the device, at the door."""
    if encoder:
        _check_encoder("sae", sae)
    else:
        _check_instance("sae", sae, SparseAutoencoder, "a sparse autoencoder (a SparseAutoencoder)")
    _check_device("device", device)
    dtype = _model_dtype(sae) if isinstance(sae, torch.nn.Module) else None
    return _check_images("x", x, dtype=dtype, flat=True)


def _check_model_data(sae, clf, data, device) -> None:
    """The autoencoder, the classifier on its codes (unless None), the dataset and the device, at the door."""
    _check_instance("sae", sae, SparseAutoencoder, "a sparse autoencoder (a SparseAutoencoder)")
    if clf is not None:
        SparseCodePipeline(sae, clf)  # the classifier must read the autoencoder's code units
    _check_instance("data", data, FashionMNIST)
    _check_device("device", device)


@_keeps_mode
@torch.no_grad()
def dataset_fvu(sae: SparseAutoencoder, x: torch.Tensor, device: torch.device) -> float:
    """Fraction of variance of ``x: [N, D]`` that the reconstruction misses (whole-set FVU; eval mode)."""
    x = _check_model_input(sae, x, device).to(device)
    x_hat = sae.eval().decode_sparse(*encode_dataset(sae, x, device))
    return float(fvu(x_hat, x))


@_keeps_mode
@torch.no_grad()
def encode_dataset(sae: SparseAutoencoder, x: torch.Tensor, device: torch.device,
                   batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of ``x: [N, D]`` as ``(values: [N, w], indices: [N, w])`` on ``device`` (``w = k`` for top-k;
    kinds with a varying number of active units pad every row to the widest, ``_cat_codes``)."""
    x = _check_model_input(sae, x, device, encoder=True)
    _check_int("batch_size", batch_size, low=1)
    sae.eval()
    parts = [sae.encode_sparse(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    if len({p[0].shape[1] for p in parts}) > 1:
        return _cat_codes(parts, sae.d_hidden)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@_keeps_mode
@torch.no_grad()
def evaluate_autoencoder(sae: SparseAutoencoder, data: FashionMNIST, device: torch.device) -> dict:
    """Test MSE per pixel, FVU, mean L0, and dead units (never active on any train or test image)."""
    _check_model_data(sae, None, data, device)
    sae.eval()
    x = data.x_test.to(device)
    values, indices = encode_dataset(sae, x, device)
    x_hat = sae.decode_sparse(values, indices)
    sse = (x_hat - x).pow(2).sum()
    ever_active = torch.zeros(sae.d_hidden, dtype=torch.bool, device=device)
    ever_active[indices[values > 0]] = True
    tr_values, tr_indices = encode_dataset(sae, data.x_train, device)
    ever_active[tr_indices[tr_values > 0]] = True
    usage = firing_frequency(tr_values, tr_indices, sae.d_hidden)
    return {
        "k": sae.k,
        "test_mse_per_pixel": float(sse / x.numel()),
        "fvu": float(fvu(x_hat, x)),
        "mean_l0": float((values > 0).sum(dim=1).float().mean()),
        "dead_units": int((~ever_active).sum()),
        "d_hidden": sae.d_hidden,
        "unit_usage_train": usage.cpu().tolist(),  # fraction of train images on which each unit fires
    }


@_keeps_mode
def evaluate_models(sae: SparseAutoencoder, clf: SparseCodeClassifier, data: FashionMNIST, cfg: Config,
                    device: torch.device) -> dict:
    """The one evaluation of the test set (after training), plus the same metrics on the validation split."""
    _check_model_data(sae, clf, data, device)
    _check_instance("cfg", cfg, Config)
    _, _, x_val, y_val = train_val_split(data, cfg)
    metrics = {"autoencoder": evaluate_autoencoder(sae, data, device),
               "classifier": evaluate_classifier(sae, clf, data, device)}
    if len(y_val):
        metrics["autoencoder"]["val_fvu"] = dataset_fvu(sae, x_val, device)
        val_pred = predict(sae, clf, x_val, device).argmax(1).cpu()
        metrics["classifier"]["val_accuracy"] = float((val_pred == y_val).float().mean())
    return metrics


def firing_frequency(values: torch.Tensor, indices: torch.Tensor, d_hidden: int) -> torch.Tensor:
    """Fraction ``[H]`` of images on which each unit fires (value > 0); ``values, indices: [N, k]`` sparse codes."""
    return firing_counts(values, indices, d_hidden) / len(values)


@_keeps_mode
@torch.no_grad()
def predict(sae: SparseAutoencoder, clf: SparseCodeClassifier, x: torch.Tensor, device: torch.device,
            batch_size: int = 4096) -> torch.Tensor:
    """Class probabilities ``[N, C]`` for images ``x: [N, 784]`` (eval mode, batched)."""
    pipeline = SparseCodePipeline(sae, clf).eval()
    x = _check_model_input(sae, x, device)
    _check_int("batch_size", batch_size, low=1)
    return torch.cat([pipeline(x[i:i + batch_size].to(device)).softmax(1) for i in range(0, len(x), batch_size)])


@_keeps_mode
@torch.no_grad()
def evaluate_classifier(sae: SparseAutoencoder, clf: SparseCodeClassifier, data: FashionMNIST,
                        device: torch.device) -> dict:
    """Test accuracy, per-class accuracy (by class name) and the confusion matrix (rows = true class)."""
    _check_model_data(sae, clf, data, device)
    pred = predict(sae, clf, data.x_test, device).argmax(1).cpu()
    n = len(data.classes)
    confusion = torch.bincount(data.y_test * n + pred, minlength=n * n).reshape(n, n)
    sizes = confusion.sum(1)  # a class with no test image has no accuracy: NaN (null in JSON), never 0
    per_class = torch.where(sizes > 0, confusion.diag() / sizes.clamp_min(1), torch.nan).tolist()
    return {
        "test_accuracy": int((pred == data.y_test).sum()) / len(data.y_test),
        "per_class_accuracy": dict(zip(data.classes, per_class)),
        "confusion_matrix": confusion.tolist(),
    }
