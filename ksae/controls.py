"""Controls for the code: the representations a classifier is trained on (the trained top-k SAE, raw pixels, PCA,
an untrained dictionary, a dense ReLU autoencoder, the SAE with shuffled labels), each with the default recipe,
cached in ``checkpoints/``, and evaluated the same way."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import atomic_write_bytes
from .checkpoints import load_checkpoint
from .config import SAE_KNOBS, Config
from .data import train_val_split
from .metrics import fvu
from .models import SparseCodeClassifier, SparseCodePipeline
from .sae import SparseAutoencoder, autoencoder_from_config
from .training import train_autoencoder, train_classifier

if TYPE_CHECKING:
    from .data import FashionMNIST


REPRESENTATIONS = ("sae", "pixels", "pca", "untrained", "dense", "shuffled")  # what each classifier reads


_REPRESENTATION_LABELS = {
    "sae": "trained top-k SAE",
    "pixels": "raw pixels",
    "pca": "PCA (k components)",
    "untrained": "untrained dictionary (top-k)",
    "dense": "dense ReLU autoencoder",
    "shuffled": "SAE, shuffled labels",
}


_EXPLAINED = ("sae", "pixels", "pca", "untrained", "dense")  # representations whose pixel explanations are compared


_UNIT_REPRESENTATIONS = ("sae", "untrained", "dense", "shuffled")  # representations with code units to compare


_SHUFFLE_SEED_OFFSET = 7919  # the shuffled labels' permutation is drawn from Config.seed + this


_CONTROL_FORMAT = "ksae-control-v1"  # what a control checkpoint says it is


def _check_representations(names) -> tuple[str, ...]:
    """``names`` as a tuple of known representation names, in ``REPRESENTATIONS`` order; ``ValueError`` naming
    the unknown ones (the SAE, ``"sae"``, is always included: every control is compared with it)."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"representations must be a non-empty sequence of names from {REPRESENTATIONS}, "
                         f"got {names!r}")
    unknown = [n for n in names if n not in REPRESENTATIONS]
    if unknown:
        raise ValueError(f"representations must be among {REPRESENTATIONS}, got unknown {unknown}")
    return tuple(n for n in REPRESENTATIONS if n in names or n == "sae")


class LinearCode(nn.Module):
    """A dense linear code of the images: ``z = (x - mean) @ components.T: [B, d]``, decoded as
    ``x_hat = z @ components + mean``. ``components: [d, D]`` (orthonormal rows for PCA); ``None`` is the
    identity: the raw pixels (``d = D``, no decoder: ``reconstructs`` is False).

    Quacks like the autoencoder where the classifier's training needs it: ``k`` (entries per code, all of them),
    ``d_hidden`` and ``encode_sparse`` (the whole code with indices ``0..d-1``)."""

    def __init__(self, components: torch.Tensor | None = None, mean: torch.Tensor | None = None,
                 d_input: int = 784):
        super().__init__()
        if components is not None and (components.ndim != 2 or components.shape[1] != d_input):
            raise ValueError(f"components must have shape [d, {d_input}], got {list(components.shape)}")
        self.register_buffer("components", None if components is None else components.detach().clone())
        self.register_buffer("mean", torch.zeros(d_input) if mean is None else mean.detach().clone())
        self.reconstructs = components is not None
        self.k = self.d_hidden = d_input if components is None else len(components)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, D]`` -> ``z: [B, d]``."""
        return x - self.mean if self.components is None else F.linear(x - self.mean, self.components)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z: [B, d]`` -> ``x_hat: [B, D]``."""
        return (z if self.components is None else z @ self.components) + self.mean

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [B, D]`` -> ``(values: [B, d], indices: [B, d])``: every entry, in order."""
        z = self.encode(x)
        return z, torch.arange(self.d_hidden, device=z.device).expand(len(z), -1)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W: [d, D], b: [d])`` with ``encode(x) = x W^T + b``."""
        if self.components is None:
            return torch.eye(len(self.mean), device=self.mean.device), -self.mean
        return self.components, -self.components @ self.mean


class LinearCodePipeline(nn.Module):
    """Pixels -> linear code (``LinearCode``) -> classifier -> logits ``[B, C]``: the explained model of the
    pixel and PCA controls (``forward(x: [B, 784])``)."""

    def __init__(self, code: LinearCode, clf: SparseCodeClassifier):
        super().__init__()
        self.code, self.clf = code, clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(self.code.encode(x))

    def affine_split(self):
        """``(A: [hidden0, D], c: [hidden0], head)`` with ``forward(x) = head(x A^T + c)``: the code and the
        classifier's first layer are one affine map (attribution and deletion curves use it)."""
        W, b = self.code.affine()
        return self.clf.W1.T @ W, b @ self.clf.W1 + self.clf.b1, self.clf.rest


def fit_pca(x: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of ``x: [N, D]`` (fit it on the training split only): ``(components: [n, D],
    mean: [D])``, float32, rows orthonormal, by decreasing variance, each signed so that its largest-|.| entry
    is positive. From the eigenvectors of the float64 covariance (``D x D``)."""
    if not isinstance(n_components, int) or not 1 <= n_components <= min(x.shape):
        raise ValueError(f"n_components must be an integer in [1, {min(x.shape)}], got {n_components!r}")
    x64 = x.detach().double().cpu()
    mean = x64.mean(0)
    centred = x64 - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    comps = vectors.flip(1)[:, :n_components].T.contiguous()
    sign = comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()
    return (comps * sign).float(), mean.float()


def untrained_autoencoder(cfg: Config, x_train: torch.Tensor | None) -> SparseAutoencoder:
    """The autoencoder ``train_models`` starts from for ``cfg.seed``, bit for bit: built right after
    ``torch.manual_seed(cfg.seed)``, pre-encoder bias at the mean of ``x_train: [N, D]`` (the training split;
    ``None`` leaves it at zero, for a caller that wants only the atoms), atoms renormalised, as
    ``train_autoencoder`` does before its first step. Eval mode, on the CPU."""
    torch.manual_seed(cfg.seed)
    sae = autoencoder_from_config(cfg)
    if x_train is not None:
        sae.prepare_training_(x_train)
    else:
        sae.unit_norm_decoder_()
    return sae.eval()


def _dense_config(cfg: Config) -> Config:
    """``cfg`` as a top-k autoencoder with ``k = d_hidden``: top-k keeps every unit, so the code is a plain ReLU
    code (whatever ``cfg.sae_kind``: the other kinds' knobs back at their defaults)."""
    others = {name: getattr(Config(), name) for name, kinds in SAE_KNOBS.items() if "topk" not in kinds}
    return Config(**{**cfg.to_dict(), **others, "sae_kind": "topk", "k": cfg.d_hidden})


def _representation_config(cfg: Config, name: str) -> Config:
    """The configuration a representation's models are trained with (the dense autoencoder's k = d_hidden)."""
    return _dense_config(cfg) if name == "dense" else cfg


def _shuffled_labels(y: torch.Tensor, seed: int) -> torch.Tensor:
    """``y: [N]`` in a seeded random order (``seed + _SHUFFLE_SEED_OFFSET``): class frequencies kept, every link
    between image and label broken (Adebayo et al. 2018's data randomization)."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + _SHUFFLE_SEED_OFFSET))
    return y[perm]


def _initial_classifier(cfg: Config, d_code: int) -> SparseCodeClassifier:
    """A classifier on ``d_code`` inputs drawn where ``train_models`` draws the SAE's: seed, then the autoencoder
    (discarded here), then the classifier. For a code of ``d_hidden`` units it is the SAE classifier's start."""
    torch.manual_seed(cfg.seed)
    autoencoder_from_config(cfg)
    return SparseCodeClassifier(d_code, cfg.clf_hidden, cfg.n_classes, cfg.dropout)


def train_representation(name: str, cfg: Config, data: FashionMNIST, device: torch.device,
                         sae: SparseAutoencoder | None = None):
    """Train the models of control ``name`` with ``cfg``'s recipe on the training split (validation split for the
    per-epoch curves; the test set is not read). ``sae``: the trained SAE (``"shuffled"`` reuses it).
    Returns ``(code, clf, history)``; ``code`` is a ``SparseAutoencoder`` or a ``LinearCode``."""
    if name not in REPRESENTATIONS or name == "sae":
        raise ValueError(f"name must be a control among {REPRESENTATIONS[1:]}, got {name!r}")
    rcfg = _representation_config(cfg, name)
    x_train, y_train, x_val, y_val = train_val_split(data, rcfg)
    val = (x_val, y_val) if len(x_val) else ()
    history: dict = {"seconds": {}}
    t0 = time.perf_counter()
    if name == "pixels":
        code, dense = LinearCode(None, d_input=rcfg.d_input), True
    elif name == "pca":
        code, dense = LinearCode(*fit_pca(x_train, rcfg.k)), True
    elif name == "untrained":
        code, dense = untrained_autoencoder(rcfg, x_train), False
    elif name == "shuffled":
        if sae is None:
            raise ValueError("the shuffled-label control needs the trained sae, got None")
        code, dense, y_train = sae.eval(), False, _shuffled_labels(y_train, rcfg.seed)
    else:  # dense: the autoencoder and its classifier, exactly as train_models builds them
        torch.manual_seed(rcfg.seed)
        code, dense = autoencoder_from_config(rcfg), True
        history["ae"] = train_autoencoder(code, x_train, rcfg, device, x_val if len(x_val) else None)
    history["seconds"]["code"] = time.perf_counter() - t0
    clf = _initial_classifier(rcfg, code.d_hidden)  # dense: SparseCodeClassifier.from_config(rcfg)'s start
    t1 = time.perf_counter()
    history["clf"] = train_classifier(clf, code.to(device), x_train, y_train, rcfg, device, *val, dense=dense)
    history["seconds"]["clf"] = time.perf_counter() - t1
    return code.eval(), clf.eval(), history


def _explained_model(code, clf: SparseCodeClassifier) -> nn.Module:
    """The pixels -> logits model of a representation: ``SparseCodePipeline`` for an autoencoder's code,
    ``LinearCodePipeline`` for a linear one (eval mode)."""
    pipe = SparseCodePipeline(code, clf) if isinstance(code, SparseAutoencoder) else LinearCodePipeline(code, clf)
    return pipe.eval()


# --- checkpoints --------------------------------------------------------------------------------------------
def _control_checkpoint_name(cfg: Config, name: str) -> str:
    """``control_<name>_<the representation's Config.checkpoint_name()>``: the file a control is cached in."""
    return f"control_{name}_{_representation_config(cfg, name).checkpoint_name()}"


def _code_state(code) -> dict:
    return {k: v.detach().cpu() for k, v in code.state_dict().items()}


def _save_control(path: str | os.PathLike, name: str, cfg: Config, code, clf: SparseCodeClassifier,
                 history: dict) -> Path:
    """Write a control's models atomically: format, representation, config, code and classifier state."""
    payload = {"format": _CONTROL_FORMAT, "representation": name, "config": _representation_config(cfg, name).to_dict(),
               "code": None if name == "shuffled" else _code_state(code), "clf": _code_state(clf),
               "history": history}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _config_difference(stored: dict, expected: Config) -> str:
    """'field: expected A, got B; ...' over the training fields that differ."""
    want, got = expected.training_key(), Config.from_dict(stored).training_key()
    return "; ".join(f"{k}: expected {want.get(k, getattr(expected, k))!r}, got {got.get(k, stored.get(k))!r}"
                     for k in {**want, **got} if want.get(k) != got.get(k))


def _load_control(path: str | os.PathLike, name: str, cfg: Config, sae: SparseAutoencoder | None = None,
                 device: torch.device | str = "cpu"):
    """``(code, clf, history)`` of control ``name`` from ``path``; ``ValueError`` saying what was expected and
    what the file holds when its representation or its training configuration differs."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _CONTROL_FORMAT:
        raise ValueError(f"{path}: expected a {_CONTROL_FORMAT} checkpoint, got "
                         f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}")
    if payload["representation"] != name:
        raise ValueError(f"{path}: expected representation {name!r}, got {payload['representation']!r}")
    rcfg = _representation_config(cfg, name)
    diff = _config_difference(payload["config"], rcfg)
    if diff:
        raise ValueError(f"{path} was trained with another configuration than asked: {diff}")
    if name == "shuffled":
        if sae is None:
            raise ValueError("the shuffled-label control needs the trained sae, got None")
        code = sae
    elif name in ("untrained", "dense"):
        code = autoencoder_from_config(rcfg)
        code.load_state_dict(payload["code"])
    else:
        state = payload["code"]
        code = LinearCode(state.get("components"), state["mean"], rcfg.d_input)
    clf = SparseCodeClassifier(code.d_hidden, rcfg.clf_hidden, rcfg.n_classes, rcfg.dropout)
    clf.load_state_dict(payload["clf"])
    return code.to(device).eval(), clf.to(device).eval(), payload["history"]


def _load_sae(cfg: Config, ckpt_dir: str | os.PathLike, device: torch.device | str = "cpu"):
    """The trained SAE pair of ``cfg`` from ``ckpt_dir`` (never trained here): ``(sae, clf, history, metrics)``.
    ``ValueError`` naming the expected file, and the seeds that do have a checkpoint of this configuration,
    when it is missing; or naming the fields that differ when the file was trained with another configuration."""
    path = Path(ckpt_dir) / cfg.checkpoint_name()
    if not path.exists():
        prefix = cfg.checkpoint_name().split("_seed")[0]
        seeds = sorted({p.name.split("_seed")[1].split("_")[0] for p in Path(ckpt_dir).glob(f"{prefix}_seed*.pt")})
        raise ValueError(f"expected the trained SAE checkpoint {path} (seed {cfg.seed}), got no such file; "
                         f"seeds with a checkpoint of this configuration there: {seeds or 'none'}")
    stored, sae, clf, history, metrics = load_checkpoint(path, device)
    if stored.training_key() != cfg.training_key():
        raise ValueError(f"{path} was trained with another configuration than asked: "
                         f"{_config_difference(stored.to_dict(), cfg)}")
    return sae, clf, history, metrics


def _load_or_train_control(name: str, cfg: Config, data: FashionMNIST, device: torch.device,
                          ckpt_dir: str | os.PathLike = "checkpoints", sae: SparseAutoencoder | None = None,
                          verbose: bool = True):
    """``(code, clf, history)`` of control ``name``: loaded from ``ckpt_dir/_control_checkpoint_name`` when it is
    there (``_load_control``: a mismatched file is a ``ValueError``), else trained and saved."""
    path = Path(ckpt_dir) / _control_checkpoint_name(cfg, name)
    if path.exists():
        code, clf, history = _load_control(path, name, cfg, sae, device)
        if verbose:
            print(f"Loaded {path}")
        return code, clf, history
    code, clf, history = train_representation(name, cfg, data, device, sae)
    _save_control(path, name, cfg, code, clf, history)
    if verbose:
        print(f"Saved {path}")
    return code.to(device).eval(), clf.to(device).eval(), history


# --- evaluation ---------------------------------------------------------------------------------------------
_EVAL_BATCH = 4096  # images per forward pass in the evaluation


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Share of ``x: [N, 784]`` whose argmax logit is ``y: [N]``."""
    pred = torch.cat([model(x[i:i + _EVAL_BATCH].to(device)).argmax(1).cpu() for i in range(0, len(x), _EVAL_BATCH)])
    return int((pred == y).sum()) / len(y)


_NULL_DRAWS = 10_000  # random relabellings of the classes in the shuffled-label control's null


@torch.no_grad()
def _relabelling_null(model: nn.Module, data: FashionMNIST, device: torch.device, seed: int = 0) -> dict:
    """Chance for a classifier whose predictions follow the images but not their labels: its test accuracy
    against the accuracy its predictions get when the class names are permuted at random (``_NULL_DRAWS`` seeded
    permutations of the confusion matrix's columns). ``{"accuracy", "null_mean", "null_q95", "p_value"}``,
    ``p_value``: share of relabellings that score at least as high (a learned link to the labels gives ~0)."""
    pred = torch.cat([model(data.x_test[i:i + _EVAL_BATCH].to(device)).argmax(1).cpu()
                      for i in range(0, len(data.x_test), _EVAL_BATCH)])
    n = len(data.classes)
    confusion = torch.bincount(data.y_test * n + pred, minlength=n * n).reshape(n, n).double()
    gen = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(_NULL_DRAWS)])  # [draws, n]
    null = confusion[torch.arange(n), perms].sum(1) / len(pred)  # trace of the relabelled confusion matrix
    acc = float(confusion.trace() / len(pred))
    return {"accuracy": acc, "null_mean": float(null.mean()), "null_q95": float(null.quantile(0.95)),
            "p_value": float((null >= acc - 1e-12).double().mean())}


@torch.no_grad()
def _code_metrics(code, data: FashionMNIST, cfg: Config, device: torch.device) -> dict:
    """Test and validation FVU (None when the code has no decoder), mean L0 on the test set (non-zero entries per
    code), code width, and dead units (zero on every training and test image, as ``evaluate_autoencoder``)."""
    reconstructs = getattr(code, "reconstructs", True)
    _, _, x_val, _ = train_val_split(data, cfg)
    ever = torch.zeros(code.d_hidden, dtype=torch.bool)
    l0, sse = [], {}
    for split, x in (("test", data.x_test), ("train", data.x_train), ("val", x_val)):
        hats = []
        for i in range(0, len(x), _EVAL_BATCH):
            z = code.encode(x[i:i + _EVAL_BATCH].to(device))
            if split != "val":
                ever |= (z != 0).any(0).cpu()
            if split == "test":
                l0.append((z != 0).sum(1).cpu())
            if reconstructs and split != "train":
                hats.append(code.decode(z).cpu())
        if hats:
            sse[split] = float(fvu(torch.cat(hats), x)) if len(x) else None
    return {"fvu": sse.get("test"), "val_fvu": sse.get("val"), "mean_l0": float(torch.cat(l0).float().mean()),
            "d_code": int(code.d_hidden), "dead_units": int((~ever).sum())}


@torch.no_grad()
def _evaluate_representation(model: nn.Module, code, data: FashionMNIST, cfg: Config, device: torch.device) -> dict:
    """Test accuracy (the test set's one scoring), validation accuracy, and ``_code_metrics``."""
    _, _, x_val, y_val = train_val_split(data, cfg)
    return {"test_accuracy": _accuracy(model, data.x_test, data.y_test, device),
            "val_accuracy": _accuracy(model, x_val, y_val, device) if len(y_val) else None,
            **_code_metrics(code, data, cfg, device)}


@torch.no_grad()
def _accuracy_recovered(pixel_model: nn.Module, codes: dict, data: FashionMNIST, device: torch.device) -> dict:
    """The pixel classifier on each code's test reconstructions against on the originals: ``{"original": acc,
    name: {"accuracy", "recovered" (= accuracy / original)}}`` for every code in ``codes`` that reconstructs."""
    original = _accuracy(pixel_model, data.x_test, data.y_test, device)
    out: dict = {"original": original}
    for name, code in codes.items():
        if not getattr(code, "reconstructs", True):
            continue
        hats = torch.cat([code.decode(code.encode(data.x_test[i:i + _EVAL_BATCH].to(device))).cpu()
                          for i in range(0, len(data.x_test), _EVAL_BATCH)])
        acc = _accuracy(pixel_model, hats, data.y_test, device)
        out[name] = {"accuracy": acc, "recovered": acc / original if original else None}
    return out
