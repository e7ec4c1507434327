"""Atomic checkpoint save, safe load, ``load_or_train``."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._util import _check_bool, _check_writable_folder, atomic_write_bytes, remove_stale_temporaries
from .config import Config
from .metrics import evaluate_models
from .models import SparseCodeClassifier
from .sae import SparseAutoencoder, autoencoder_from_config
from .training import train_models

if TYPE_CHECKING:
    from .data import FashionMNIST


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used (corrupt, truncated or of another format)."""


CHECKPOINT_FORMAT = "ksae-v1"


class _WrongKind(ValueError):
    """A readable checkpoint of another autoencoder kind than asked for (a ``ValueError``, not a corrupt file)."""


def save_checkpoint(path: str | os.PathLike, cfg: Config, sae: SparseAutoencoder, clf: SparseCodeClassifier,
                    history: dict | None = None, metrics: dict | None = None) -> Path:
    """Write config, the autoencoder's kind, both state dicts (the kind's inference state, e.g. thresholds,
    included), history and metrics atomically (temp file + rename). ``ValueError`` if ``sae`` is not of
    ``cfg.sae_kind``."""
    if getattr(sae, "kind", None) != cfg.sae_kind:
        raise ValueError(f"sae must be the {cfg.sae_kind} autoencoder cfg describes, got a "
                         f"{getattr(sae, 'kind', None) or type(sae).__name__} one")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "sae_kind": sae.kind,
        "config": cfg.to_dict(),
        "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
        "clf": {k: v.detach().cpu() for k, v in clf.state_dict().items()},
        "history": history or {},
        "metrics": metrics or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _stored_kind(payload: dict) -> str:
    """The autoencoder kind a checkpoint's ``payload`` holds (files written before the variants: "topk")."""
    return payload.get("sae_kind", payload.get("config", {}).get("sae_kind", "topk"))


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu", sae_kind: str | None = None):
    """Load ``(cfg, sae, clf, history, metrics)`` from ``path`` (``weights_only=True``, eval mode); the
    autoencoder is built as the stored kind (``autoencoder_from_config``).

    Raises ``CheckpointError`` naming the file if it cannot be read or is not one of ours, and ``ValueError``
    saying what was expected and what came when ``sae_kind`` is given and the file holds another kind.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint")
        kind = _stored_kind(payload)
        if sae_kind is not None and kind != sae_kind:
            raise _WrongKind(f"checkpoint {path}: expected a {sae_kind!r} autoencoder, got a {kind!r} one")
        cfg = Config.from_dict(payload["config"])
        if cfg.sae_kind != kind:
            raise ValueError(f"its autoencoder is {kind!r} but its config says {cfg.sae_kind!r}")
        sae = autoencoder_from_config(cfg)
        sae.load_state_dict(payload["sae"])
        clf = SparseCodeClassifier.from_config(cfg)
        clf.load_state_dict(payload["clf"])
    except (FileNotFoundError, _WrongKind):
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

    A corrupt checkpoint is reported (with its path) and replaced by a fresh training run. Where the checkpoint
    goes is settled before training: ``ckpt_dir`` is created and a file written there, else ``ValueError``
    naming it; temporary files a killed save left there are removed. If the save still fails after training,
    the models are saved in a new folder under the system's temporary folder instead (``_save_or_rescue``; a
    warning says where) and returned all the same. A file there holding another autoencoder kind than
    ``cfg.sae_kind`` is refused (``ValueError`` naming both), never overwritten.
    """
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config, got {type(cfg).__name__}")
    _check_bool("retrain", retrain)
    _check_writable_folder("ckpt_dir (the notebook's CHECKPOINT_DIR)", ckpt_dir)
    remove_stale_temporaries(ckpt_dir, "*.pt*.tmp")  # a killed save's leftovers
    path = Path(ckpt_dir) / cfg.checkpoint_name()
    if path.exists() and not retrain:
        try:
            stored, sae, clf, history, metrics = load_checkpoint(path, device, sae_kind=cfg.sae_kind)
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
    saved = _save_or_rescue(path, cfg, sae, clf, history, metrics)
    if verbose and saved == path:
        print(f"Saved {path}")
    return sae, clf, history, metrics


RESCUE_PREFIX = "ksae-rescued-"  # folder (under the system's temporary folder) for models whose save failed


def _save_or_rescue(path: Path, cfg: Config, sae: SparseAutoencoder, clf: SparseCodeClassifier, history: dict,
                    metrics: dict) -> Path | None:
    """``save_checkpoint`` to ``path``; if that fails (disk full, folder removed or made read-only during
    training), to a new ``RESCUE_PREFIX`` folder under the system's temporary folder, with a ``UserWarning``
    saying why and where. Returns where the models were saved (None if nowhere: the warning says so)."""
    try:
        return save_checkpoint(path, cfg, sae, clf, history, metrics)
    except (OSError, RuntimeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    try:
        rescued = save_checkpoint(Path(tempfile.mkdtemp(prefix=RESCUE_PREFIX)) / path.name, cfg, sae, clf, history,
                                  metrics)
    except (OSError, RuntimeError) as exc:
        warnings.warn(f"could not save the trained models to {path} ({error}) nor to the temporary folder "
                      f"({type(exc).__name__}: {exc}); they are only in memory (returned)", stacklevel=3)
        return None
    warnings.warn(f"could not save the trained models to {path} ({error}); saved them to {rescued} instead: move "
                  f"that file into your checkpoint folder to reuse it", stacklevel=3)
    return rescued
