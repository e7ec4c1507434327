"""Atomic checkpoint save, safe load, ``load_or_train``."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._util import atomic_write_bytes
from .config import Config
from .metrics import evaluate_models
from .models import KSparseAutoencoder, SparseCodeClassifier
from .training import train_models

if TYPE_CHECKING:
    from .data import FashionMNIST


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used (corrupt, truncated or of another format)."""


CHECKPOINT_FORMAT = "ksae-v1"


def save_checkpoint(path: str | os.PathLike, cfg: Config, sae: KSparseAutoencoder, clf: SparseCodeClassifier,
                    history: dict | None = None, metrics: dict | None = None) -> Path:
    """Write config, both state dicts, history and metrics atomically (temp file + rename)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
        "clf": {k: v.detach().cpu() for k, v in clf.state_dict().items()},
        "history": history or {},
        "metrics": metrics or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """Load ``(cfg, sae, clf, history, metrics)`` from ``path`` (``weights_only=True``, eval mode).

    Raises ``CheckpointError`` naming the file if it cannot be read or is not one of ours.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint")
        cfg = Config.from_dict(payload["config"])
        sae = KSparseAutoencoder.from_config(cfg)
        sae.load_state_dict(payload["sae"])
        clf = SparseCodeClassifier.from_config(cfg)
        clf.load_state_dict(payload["clf"])
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 -- unpickling/format errors all mean "unusable file"
        raise CheckpointError(f"checkpoint {path} is unusable ({type(exc).__name__}: {exc}); "
                              f"delete it or retrain with retrain=True") from exc
    return cfg, sae.to(device).eval(), clf.to(device).eval(), _upgrade_history(payload["history"]), payload["metrics"]


_RENAMED_HISTORY_KEYS = {"dead_fraction": "dormant_fraction"}  # old name -> name (the AuxK state is "dormant")


def _upgrade_history(history: dict) -> dict:
    """``history`` of a checkpoint written before a history key was renamed, with today's key names."""
    ae = history.get("ae") if isinstance(history, dict) else None
    for old, new in _RENAMED_HISTORY_KEYS.items():
        if isinstance(ae, dict) and old in ae and new not in ae:
            ae[new] = ae.pop(old)
    return history


def load_or_train(cfg: Config, data: FashionMNIST, device: torch.device, ckpt_dir: str | os.PathLike = "checkpoints",
                  retrain: bool = False, verbose: bool = True):
    """Reuse ``ckpt_dir/<cfg.checkpoint_name()>`` if its stored training config equals ``cfg``'s;
    otherwise train both models, evaluate them and save. Returns ``(sae, clf, history, metrics)``.

    A corrupt checkpoint is reported (with its path) and replaced by a fresh training run.
    """
    path = Path(ckpt_dir) / cfg.checkpoint_name()
    if path.exists() and not retrain:
        try:
            stored, sae, clf, history, metrics = load_checkpoint(path, device)
            if stored.training_key() == cfg.training_key():
                if verbose:
                    print(f"Loaded {path} (trained earlier with this exact configuration)")
                return sae, clf, history, metrics
            if verbose:
                print(f"{path} was trained with another configuration; retraining")
        except CheckpointError as exc:
            if verbose:
                print(f"{exc}\n-> retraining and overwriting it")
    sae, clf, history = train_models(cfg, data, device)
    metrics = evaluate_models(sae, clf, data, cfg, device)
    save_checkpoint(path, cfg, sae, clf, history, metrics)
    if verbose:
        print(f"Saved {path}")
    return sae, clf, history, metrics
