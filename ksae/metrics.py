"""Codes of a dataset, reconstruction (FVU: ``fvu`` and ``firing_counts`` live in ``ksae.sae.base``), firing
frequency, predictions, the test-set evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._util import _check_pixels, _keeps_mode
from .data import train_val_split
from .models import SparseCodePipeline
from .sae.base import _cat_codes, firing_counts, fvu

if TYPE_CHECKING:
    from .config import Config
    from .data import FashionMNIST
    from .models import SparseCodeClassifier
    from .sae import SparseAutoencoder


@_keeps_mode
@torch.no_grad()
def dataset_fvu(sae: SparseAutoencoder, x: torch.Tensor, device: torch.device) -> float:
    """Fraction of variance of ``x: [N, D]`` that the reconstruction misses (whole-set FVU; eval mode)."""
    x = x.to(device)
    x_hat = sae.eval().decode_sparse(*encode_dataset(sae, x, device))
    return float(fvu(x_hat, x))


@_keeps_mode
@torch.no_grad()
def encode_dataset(sae: SparseAutoencoder, x: torch.Tensor, device: torch.device,
                   batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of ``x: [N, D]`` as ``(values: [N, w], indices: [N, w])`` on ``device`` (``w = k`` for top-k;
    kinds with a varying number of active units pad every row to the widest, ``_cat_codes``)."""
    sae.eval()
    parts = [sae.encode_sparse(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    if len({p[0].shape[1] for p in parts}) > 1:
        return _cat_codes(parts, sae.d_hidden)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@_keeps_mode
@torch.no_grad()
def evaluate_autoencoder(sae: SparseAutoencoder, data: FashionMNIST, device: torch.device) -> dict:
    """Test MSE per pixel, FVU, mean L0, and dead units (never active on any train or test image)."""
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
    _check_pixels("x", x)
    pipeline = SparseCodePipeline(sae, clf).eval()
    return torch.cat([pipeline(x[i:i + batch_size].to(device)).softmax(1) for i in range(0, len(x), batch_size)])


@_keeps_mode
@torch.no_grad()
def evaluate_classifier(sae: SparseAutoencoder, clf: SparseCodeClassifier, data: FashionMNIST,
                        device: torch.device) -> dict:
    """Test accuracy, per-class accuracy (by class name) and the confusion matrix (rows = true class)."""
    pred = predict(sae, clf, data.x_test, device).argmax(1).cpu()
    n = len(data.classes)
    confusion = torch.bincount(data.y_test * n + pred, minlength=n * n).reshape(n, n)
    per_class = (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist()
    return {
        "test_accuracy": int((pred == data.y_test).sum()) / len(data.y_test),
        "per_class_accuracy": dict(zip(data.classes, per_class)),
        "confusion_matrix": confusion.tolist(),
    }
