"""The models of the planted-shortcut study, each trained with the default recipe (or loaded from ``checkpoints/``):
per variant and seed the shortcut pipeline (autoencoder and classifier trained on the marked training split), its
clean twin (the default autoencoder of the seed, a classifier on the unmarked images with the variant's labels), the
oracle (a classifier on the shortcut autoencoder's codes with the shortcut broken), the raw-pixel classifier on the
marked images and its clean twin, and SHIFT's heads (a classifier retrained on codes with some units zeroed).

Models trained on the same images and labels are the same model and are cached once: a checkpoint's name carries a
hash of what it was trained on (``ShortcutData.digest``). Two identities are used, not assumed (tests check them
bit for bit): the clean twin of the biased variant is the default pair of its seed, and its pixel twin is the pixel
control of ``ksae.controls``."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ._util import _check_writable_folder, atomic_write_bytes
from .config import Config
from .controls import LinearCode, LinearCodePipeline, _config_difference, _initial_classifier, _load_or_train_control
from .data import validation_indices
from .models import KSparseAutoencoder, SparseCodeClassifier, SparseCodePipeline
from .training import train_autoencoder, train_classifier

if TYPE_CHECKING:
    from .data import FashionMNIST
    from .shortcuts import ShortcutData


_FORMAT = "ksae-shortcut-v1"  # what a checkpoint of this study says it is


_CLASSIFIER_FIELDS = ("clf_hidden", "n_classes", "dropout", "clf_lr_schedule", "clf_epochs", "clf_hflip", "clf_shift")
# Config fields that only the classifier reads: train_models builds and trains the autoencoder before and apart from
# the classifier (tests/test_shortcut_study.py checks it), so checkpoints that differ only here share the autoencoder


def _ae_config(cfg: Config) -> Config:
    """``cfg`` with the classifier's fields at their defaults: what an autoencoder's checkpoint is named and checked
    by (the same autoencoder serves every classifier recipe)."""
    return Config(**{**cfg.to_dict(), **{f: getattr(Config, f) for f in _CLASSIFIER_FIELDS}})


def _split_indices(y_true: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train: [N_train], val: [n_val])`` indices into the training set: the default split of ``train_val_split``
    (stratified by the *true* classes ``y_true: [60000]``, so every variant shares it) and its first
    ``cfg.train_subset`` training images."""
    val = validation_indices(y_true, cfg.n_val, int(y_true.max()) + 1)
    keep = torch.ones(len(y_true), dtype=torch.bool)
    keep[val] = False
    train = torch.nonzero(keep)[:, 0]
    return (train[:cfg.train_subset] if cfg.train_subset else train), val


class _AblatedCode(nn.Module):
    """The autoencoder's code with the units ``units`` set to 0 after top-k (the other units stay; top-k is not
    re-run): what SHIFT's retrained head reads. Quacks like the autoencoder where ``train_classifier`` needs it
    (``k``, ``d_hidden``, ``encode_sparse``, ``eval``)."""

    def __init__(self, sae: KSparseAutoencoder, units):
        super().__init__()
        self.sae, self.k, self.d_hidden = sae, sae.k, sae.d_hidden
        self.register_buffer("keep", torch.ones(sae.d_hidden, device=sae.W_dec.device))
        self.keep[torch.as_tensor(list(units), dtype=torch.long)] = 0.0

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [B, D]`` -> ``(values: [B, k], indices: [B, k])``, the ablated units' values 0."""
        values, indices = self.sae.encode_sparse(x)
        return values * self.keep[indices], indices


class _AblatedPipeline(nn.Module):
    """Pixels -> ``_AblatedCode`` -> classifier -> logits ``[B, C]`` (``forward(x: [B, 784])``)."""

    def __init__(self, code: _AblatedCode, clf: SparseCodeClassifier):
        super().__init__()
        self.code, self.clf = code, clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf.forward_sparse(*self.code.encode_sparse(x))


def _split_data(x: torch.Tensor, y: torch.Tensor, y_true: torch.Tensor, cfg: Config):
    train, val = _split_indices(y_true, cfg)
    return x[train], y[train], x[val], y[val]


def _train_shortcut_autoencoder(cfg: Config, x: torch.Tensor, y_true: torch.Tensor,
                               device: torch.device) -> tuple[KSparseAutoencoder, dict]:
    """An autoencoder trained as ``train_models`` trains it (seed, build, ``train_autoencoder``) on the training split
    of ``x: [60000, 784]`` (split by the true classes ``y_true``), validation FVU per epoch."""
    x_train, _, x_val, _ = _split_data(x, y_true, y_true, cfg)
    torch.manual_seed(cfg.seed)
    sae = KSparseAutoencoder.from_config(cfg)
    t0 = time.perf_counter()
    history = train_autoencoder(sae, x_train, cfg, device, x_val if len(x_val) else None)
    return sae.eval(), {"ae": history, "seconds": {"ae": time.perf_counter() - t0}}


def _train_shortcut_head(cfg: Config, code, x: torch.Tensor, y: torch.Tensor, y_true: torch.Tensor,
                        device: torch.device) -> tuple[SparseCodeClassifier, dict]:
    """A classifier trained as ``train_models`` trains the SAE's (the same start, ``train_classifier``) on ``code``'s
    codes of the training split of ``x: [60000, 784]`` with labels ``y: [60000]`` (split by ``y_true``); ``code``: an
    autoencoder, an ``_AblatedCode`` or ``LinearCode(None)`` (raw pixels: the first layer as a matmul)."""
    x_train, y_train, x_val, y_val = _split_data(x, y, y_true, cfg)
    clf = _initial_classifier(cfg, code.d_hidden)
    val = (x_val, y_val) if len(x_val) else ()
    t0 = time.perf_counter()
    history = train_classifier(clf, code.to(device), x_train, y_train, cfg, device, *val,
                               dense=isinstance(code, LinearCode))
    return clf.eval(), {"clf": history, "seconds": {"clf": time.perf_counter() - t0}}


# --- checkpoints --------------------------------------------------------------------------------------------
def _checkpoint_path(ckpt_dir, role: str, digest: str, cfg: Config, units=()) -> Path:
    suffix = "_units" + "-".join(map(str, units)) if units else ""
    return Path(ckpt_dir) / f"shortcut_{role}{suffix}_{digest}_{cfg.checkpoint_name()}"


def _state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _save(path: Path, role: str, planted: ShortcutData, digest: str, cfg: Config, module: nn.Module, history: dict,
          units=()) -> None:
    payload = {"format": _FORMAT, "role": role, "variant": planted.variant, "digest": digest,
               "planting": planted.planting.to_dict(), "config": cfg.to_dict(), "units": list(units),
               "state": _state(module), "history": history}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path, role: str, planted: ShortcutData, digest: str, cfg: Config, units=()) -> dict:
    """The payload at ``path``, checked: ``ValueError`` saying what was expected and what the file holds when it is
    not a checkpoint of this study, holds another role, was trained on another variant's data or with another
    configuration."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: expected a {_FORMAT} checkpoint, got {got!r}")
    if payload["role"] != role or list(payload["units"]) != list(units):
        raise ValueError(f"{path}: expected the {role} model (units {list(units)}), got the {payload['role']} model "
                         f"(units {payload['units']})")
    if payload["digest"] != digest:
        raise ValueError(f"{path}: expected a model trained on the {planted.variant} variant's data (planting "
                         f"{planted.planting.to_dict()}, data hash {digest}), got one of the {payload['variant']} "
                         f"variant (planting {payload['planting']}, data hash {payload['digest']})")
    diff = _config_difference(payload["config"], cfg)
    if diff:
        raise ValueError(f"{path} was trained with another configuration than asked: {diff}")
    return payload


def _cached(path: Path, role: str, planted: ShortcutData, digest: str, cfg: Config, build, train, allow_train: bool,
            verbose: bool, units=()):
    """``(module, history)``: loaded from ``path`` into ``build()``, or trained (``train() -> (module, history)``)
    and saved; ``ValueError`` naming the file when it is missing and ``allow_train`` is False."""
    if path.exists():
        payload = _load(path, role, planted, digest, cfg, units)
        module = build()
        module.load_state_dict(payload["state"])
        if verbose:
            print(f"Loaded {path}")
        return module.eval(), payload["history"]
    if not allow_train:
        raise ValueError(f"expected the cached {role} model of the {planted.variant} variant at {path}, got no such "
                         "file (pass train=True, or run benchmarks/shortcut.py, to train it)")
    module, history = train()
    _save(path, role, planted, digest, cfg, module, history, units)
    if verbose:
        print(f"Saved {path}")
    return module.eval(), history


def _shortcut_models(planted: ShortcutData, broken: ShortcutData, cfg: Config, data: FashionMNIST,
                    device: torch.device, default_pair, roles=("shortcut", "twin", "oracle", "pixel", "pixel_twin"),
                    ckpt_dir: str | os.PathLike = "checkpoints", train: bool = True, verbose: bool = True) -> dict:
    """The study's models of one variant and seed (``cfg.seed``), each loaded from ``ckpt_dir`` or trained and saved:
    ``{role: (explained model, history)}`` for every role of ``roles`` (``shortcut``, ``twin``, ``oracle``: a
    ``SparseCodePipeline``; ``pixel``, ``pixel_twin``: a ``LinearCodePipeline``). ``planted``: the variant;
    ``broken``: the same variant with the shortcut cut (the oracle's data); ``default_pair``: ``_default_models``'
    ``(sae, clf or None)`` (the clean twin's autoencoder; the clf, where it is ``cfg``'s, is the biased variant's
    twin: true labels on the unmarked images); ``data``: the unmarked dataset."""
    if train:
        _check_writable_folder("ckpt_dir", ckpt_dir)
    default_sae, default_clf = default_pair
    y_true = planted.true_train
    out: dict = {}

    def head(role, code, source: FashionMNIST, digest):
        path = _checkpoint_path(ckpt_dir, role, digest, cfg)
        return _cached(path, role, planted, digest, cfg,
                       lambda: SparseCodeClassifier(code.d_hidden, cfg.clf_hidden, cfg.n_classes, cfg.dropout),
                       lambda: _train_shortcut_head(cfg, code, source.x_train, source.y_train, y_true, device),
                       train, verbose)

    needs_sae = {"shortcut", "oracle"} & set(roles)
    if needs_sae:
        ae_digest, ae_cfg = planted.digest(labels=False), _ae_config(cfg)
        sae, ae_history = _cached(_checkpoint_path(ckpt_dir, "ae", ae_digest, ae_cfg), "ae", planted, ae_digest,
                                  ae_cfg, lambda: KSparseAutoencoder.from_config(ae_cfg),
                                  lambda: _train_shortcut_autoencoder(ae_cfg, planted.data.x_train, y_true, device),
                                  train, verbose)
        sae = sae.to(device)
        out["sae"] = (sae, ae_history)
    if "shortcut" in roles:
        clf, history = head("head", sae, planted.data, planted.digest())
        out["shortcut"] = (SparseCodePipeline(sae, clf.to(device)).eval(), history)
    if "oracle" in roles:
        if broken.data.x_train.shape != planted.data.x_train.shape or not broken.planting.broken:
            raise ValueError("broken must be plant_shortcut(..., broken=True) of the same variant")
        clf, history = head("oracle", sae, broken.data, f"{broken.digest()}-{ae_digest[:8]}")
        out["oracle"] = (SparseCodePipeline(sae, clf.to(device)).eval(), history)
    clean_digest = "clean" + planted.digest(marks=False)
    if "twin" in roles:
        if planted.variant == "biased" and default_clf is not None:  # true labels, unmarked images: the default pair
            out["twin"] = (SparseCodePipeline(default_sae, default_clf).eval(), {})
        else:
            clf, history = head("twin", default_sae, planted.clean, clean_digest)
            out["twin"] = (SparseCodePipeline(default_sae, clf.to(device)).eval(), history)
    pixels = LinearCode(None, d_input=cfg.d_input).to(device)
    if "pixel" in roles:
        clf, history = head("pixel", pixels, planted.data, planted.digest())
        out["pixel"] = (LinearCodePipeline(pixels, clf.to(device)).eval(), history)
    if "pixel_twin" in roles:
        if planted.variant == "biased":  # true labels on the unmarked images: the pixel control of ksae.controls
            code, clf, history = _load_or_train_control("pixels", cfg, data, device, ckpt_dir, verbose=verbose) \
                if train else _load_control_or_fail(cfg, data, device, ckpt_dir)
            out["pixel_twin"] = (LinearCodePipeline(code, clf).eval(), history)
        else:
            clf, history = head("pixel_twin", pixels, planted.clean, clean_digest)
            out["pixel_twin"] = (LinearCodePipeline(pixels, clf.to(device)).eval(), history)
    return out


def _default_models(cfg: Config, planted: ShortcutData, device: torch.device, ckpt_dir, train: bool,
                    verbose: bool):
    """The clean twin's autoencoder for ``cfg`` (unmarked images, the same seed): ``(sae, clf or None, source)``.
    Taken from ``cfg``'s own default pair (``Config.checkpoint_name``) in ``ckpt_dir``, with its classifier, else
    from the default pair of ``cfg`` with the classifier fields at their defaults (the same autoencoder), else
    trained on the unmarked training split and cached (``shortcut_ae_clean_...``), bit for bit what ``train_models``
    would give."""
    from .checkpoints import load_checkpoint

    ref = _ae_config(cfg)
    for candidate in (cfg, ref):  # cfg's own default pair, else the default recipe's of the same autoencoder
        path = Path(ckpt_dir) / candidate.checkpoint_name()
        if path.exists():
            stored, sae, clf, _, _ = load_checkpoint(path, device)
            if stored.training_key() == candidate.training_key():
                if verbose:
                    print(f"Loaded {path} (the clean twin's autoencoder)")
                return sae, (clf if candidate is cfg else None), path.name
    sae, _ = _cached(_checkpoint_path(ckpt_dir, "ae", "clean", ref), "ae", planted, "clean", ref,
                     lambda: KSparseAutoencoder.from_config(ref),
                     lambda: _train_shortcut_autoencoder(ref, planted.clean.x_train, planted.true_train, device),
                     train, verbose)
    return sae.to(device), None, _checkpoint_path(ckpt_dir, "ae", "clean", ref).name


def _load_control_or_fail(cfg: Config, data: FashionMNIST, device: torch.device, ckpt_dir):
    from .controls import _control_checkpoint_name, _load_control

    path = Path(ckpt_dir) / _control_checkpoint_name(cfg, "pixels")
    if not path.exists():
        raise ValueError(f"expected the pixel control {path} (the biased variant's pixel twin), got no such file "
                         "(pass train=True, or run benchmarks/shortcut.py, to train it)")
    return _load_control(path, "pixels", cfg, device=device)


def _shift_head(planted: ShortcutData, sae: KSparseAutoencoder, units, cfg: Config, device: torch.device,
               ckpt_dir: str | os.PathLike = "checkpoints", train: bool = True, verbose: bool = True):
    """SHIFT's second step (Marks et al. 2024): a classifier retrained, with the default recipe, on the codes of the
    same marked training split with ``units`` zeroed (``_AblatedCode``). Returns ``(_AblatedPipeline, history)``."""
    units = sorted(int(u) for u in units)
    code = _AblatedCode(sae, units).to(device)
    digest = planted.digest()
    path = _checkpoint_path(ckpt_dir, "shift", digest, cfg, units)
    clf, history = _cached(path, "shift", planted, digest, cfg,
                           lambda: SparseCodeClassifier(sae.d_hidden, cfg.clf_hidden, cfg.n_classes, cfg.dropout),
                           lambda: _train_shortcut_head(cfg, code, planted.data.x_train, planted.data.y_train,
                                                       planted.true_train, device), train, verbose, units)
    return _AblatedPipeline(code, clf.to(device)).eval(), history
