"""The sparsity sweep: one model pair per k."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .attribution import decoder_weighted, integrated_gradients
from .checkpoints import load_or_train
from .checks.deletion import control_maps, curve_auc, perturbation_curves
from .config import SAE_KNOBS, Config
from .models import SparseCodePipeline
from .runtime import device_name
from .selection import select_high_confidence

if TYPE_CHECKING:
    from .data import FashionMNIST


def run_k_sweep(data: FashionMNIST, cfg: Config, device: torch.device, ks: Sequence[int],
                epochs: Sequence[int] | None = None, ckpt_dir: str | os.PathLike = "checkpoints",
                n_per_class: int = 20) -> list[dict]:
    """Train (or load) one model pair per ``k`` with ``cfg``'s recipe (``epochs = (ae_epochs, clf_epochs)``
    overrides its epochs) and measure FVU, dead units, mean L0, test accuracy, training seconds, and the
    zero-substrate deletion AUC of integrated gradients, decoder-weighted and a random order on ``n_per_class``
    confident correct test images per class (fewer where a class has fewer: ``select_high_confidence``)."""
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config, got {type(cfg).__name__}")
    if "k" not in cfg.reads():
        raise ValueError(f"run_k_sweep varies k, which sae_kind {cfg.sae_kind!r} does not read (k is read by "
                         f"{', '.join(SAE_KNOBS['k'])}); expected a configuration of one of those kinds")
    if not ks:
        raise ValueError("ks must name at least one k")
    if epochs is not None and (len(epochs) != 2 or any(isinstance(e, bool) or e < 1 for e in epochs)):
        raise ValueError(f"epochs must be (ae_epochs, clf_epochs), two integers >= 1, got {epochs!r}")
    rows = []
    for k in ks:
        over = {"k": k} if epochs is None else {"k": k, "ae_epochs": epochs[0], "clf_epochs": epochs[1]}
        kcfg = Config(**{**cfg.to_dict(), **over})
        sae, clf, history, metrics = load_or_train(kcfg, data, device, ckpt_dir)
        pipeline = SparseCodePipeline(sae, clf).eval()
        sel = select_high_confidence(sae, clf, data, device, n_per_class, kcfg.confidence_threshold, kcfg.seed)
        x, y = sel.x.to(device), sel.y.to(device)
        orders = {"integrated": integrated_gradients(pipeline, x, y, n_steps=kcfg.ig_steps, method=kcfg.ig_method),
                  "decoder": decoder_weighted(pipeline, x, y), "random": control_maps(x, kcfg.seed)["random"]}
        ae, seconds = metrics["autoencoder"], history.get("seconds", {})
        rows.append({"k": int(k), "fvu": ae["fvu"], "val_fvu": ae.get("val_fvu"), "dead_units": ae["dead_units"],
                     "mean_l0": ae["mean_l0"], "test_accuracy": metrics["classifier"]["test_accuracy"],
                     "val_accuracy": metrics["classifier"].get("val_accuracy"), "n_images": len(y),
                     "train_seconds": {"ae": seconds.get("ae"), "clf": seconds.get("clf")},
                     "device": device_name(device),
                     **{f"deletion_auc_{name}": float(curve_auc(perturbation_curves(pipeline, x, y, scores)).mean())
                        for name, scores in orders.items()}})
    return rows
