"""Interpretable k-sparse autoencoders on Fashion-MNIST: everything the notebook calls.

Sections
--------
1. Config          -- one dataclass with every knob, saved inside every checkpoint.
2. Device          -- chosen once (CUDA, then Apple MPS, then CPU).
3. Data            -- offline Fashion-MNIST loader with SHA-256 checks.
4. Models          -- top-k sparse autoencoder, classifier on its codes, the end-to-end pipeline.
5. Training        -- flat loops over on-device tensors, seeded, with tqdm bars.
6. Checkpoints     -- atomic save, safe load, ``load_or_train``.
7. Metrics         -- reconstruction, sparsity, dead units, accuracy.
8. Attribution     -- integrated gradients, simple gradients, SmoothGrad, decoder-weighted.
9. Evaluation      -- sample selection, cross-method statistics, faithfulness checks, statistics of every
                      code unit (the unit atlas: ``unit_statistics``).
10. Plotting       -- every figure of the notebook.
11. Summary        -- ``results/summary.json`` (with the per-unit ``unit_table``) and the HTML unit browser
                      (``write_unit_browser``, from ``templates/unit_browser.html``).

Shapes are written as ``x: [batch, 784]``; ``D`` is the input size (784), ``H`` the code size (1024),
``C`` the number of classes (10).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
from tqdm import tqdm

# =====================================================================================================
# 1. Config
# =====================================================================================================


@dataclass
class Config:
    """Every knob of the project, with the seed's defaults. Saved inside every checkpoint."""

    # --- sparse autoencoder ---
    k: int = 50  # active code units kept per image (top-k)
    d_input: int = 784  # pixels per image (28 x 28)
    d_hidden: int = 1024  # code units (dictionary size)
    aux_k: int = 0  # AuxK (Gao et al. 2024): dead units that reconstruct the residual; 0 = off (README: no
    # measurable effect at full scale, a quarter of each step's time); 256 is the literature's choice
    aux_coef: float = 1 / 32  # AuxK: weight of the auxiliary loss
    dead_after: int = 20_000  # AuxK: a unit that fired on none of the last this-many images is "dead"
    # --- classifier on the codes ---
    clf_hidden: tuple[int, int] = (512, 256)  # hidden widths of the MLP head
    n_classes: int = 10  # Fashion-MNIST classes
    dropout: float = 0.3  # dropout after each hidden ReLU
    # --- optimisation ---
    batch_size: int = 256  # images per step, both models
    lr: float = 1e-3  # Adam learning rate, both models (the peak of a decaying schedule)
    ae_lr_schedule: str = "decay20"  # autoencoder: "constant", "cosine" (to 0), "decay20" (to 0 in the last 20 %)
    clf_lr_schedule: str = "cosine"  # classifier: same choices
    ae_epochs: int = 30  # autoencoder epochs
    clf_epochs: int = 50  # classifier epochs
    clf_hflip: bool = True  # classifier sees each image or its mirror image at random (labels unchanged)
    clf_shift: int = 1  # classifier also sees each such view moved this many pixels up, down, left or right
    # (one of the five positions at random per step; 0 = off). README: +0.6 to +1.0 points of accuracy, 3 seeds
    ae_hflip: bool = False  # autoencoder sees each image or its mirror image at random
    train_subset: int = 0  # use only the first N training images (0 = all 60 000); for smoke runs
    seed: int = 0  # seeds initialisation, batch order, dropout and sample selection
    # --- attribution ---
    ig_steps: int = 50  # integrated-gradients steps from a zero image
    ig_method: str = "gausslegendre"  # IG quadrature (Captum's names)
    smoothgrad_samples: int = 25  # SmoothGrad noisy copies per image
    smoothgrad_noise: float = 0.1  # SmoothGrad noise std (pixels are in [0, 1])
    confidence_threshold: float = 0.8  # explain only correct predictions above this softmax confidence

    # The fields above "attribution" change the trained weights: a checkpoint is reused only if all of them
    # match (``training_key``). These do not:
    ATTRIBUTION_FIELDS = ("ig_steps", "ig_method", "smoothgrad_samples", "smoothgrad_noise", "confidence_threshold")

    def __post_init__(self):
        if not isinstance(self.clf_hidden, (tuple, list)) or not self.clf_hidden:
            raise ValueError(f"clf_hidden must be a non-empty sequence of positive widths, got {self.clf_hidden!r}")
        for width in self.clf_hidden:
            _check_int("clf_hidden width", width, low=1)
        self.clf_hidden = tuple(int(w) for w in self.clf_hidden)
        for name in ("d_input", "d_hidden", "n_classes", "batch_size", "ae_epochs", "clf_epochs", "ig_steps",
                     "smoothgrad_samples"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("k", self.k, low=1, high=self.d_hidden, high_name="d_hidden")
        _check_int("train_subset", self.train_subset, low=0)
        _check_int("clf_shift", self.clf_shift, low=0, high=IMAGE_SIDE - 1, high_name="the image side minus 1")
        _check_int("aux_k", self.aux_k, low=0)
        _check_int("dead_after", self.dead_after, low=1)
        _check_float("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        _check_float("lr", self.lr, low=0.0, low_open=True)
        _check_float("smoothgrad_noise", self.smoothgrad_noise, low=0.0)
        _check_float("aux_coef", self.aux_coef, low=0.0)
        _check_float("confidence_threshold", self.confidence_threshold, low=0.0, high=1.0, high_open=True)
        for name in ("clf_hflip", "ae_hflip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("ae_lr_schedule", "clf_lr_schedule"):
            if getattr(self, name) not in LR_SCHEDULES:
                raise ValueError(f"{name} must be one of {LR_SCHEDULES}, got {getattr(self, name)!r}")
        if self.ig_method not in IG_METHODS:
            raise ValueError(f"ig_method must be one of {sorted(IG_METHODS)}, got {self.ig_method!r}")

    def to_dict(self) -> dict:
        """All fields as plain Python values (what a checkpoint stores)."""
        d = asdict(self)
        d["clf_hidden"] = list(self.clf_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def training_key(self) -> dict:
        """The fields that determine the trained weights."""
        d = self.to_dict()
        return {name: value for name, value in d.items() if name not in self.ATTRIBUTION_FIELDS}

    def checkpoint_name(self) -> str:
        """A file name that says what was trained, plus a short hash of every training field."""
        digest = hashlib.sha256(json.dumps(self.training_key(), sort_keys=True).encode()).hexdigest()[:8]
        subset = f"_n{self.train_subset}" if self.train_subset else ""
        return (f"ksae_k{self.k}_h{self.d_hidden}_clf{'x'.join(map(str, self.clf_hidden))}"
                f"_ae{self.ae_epochs}_clf{self.clf_epochs}{subset}_seed{self.seed}_{digest}.pt")


def _check_float(name, value, low=None, high=None, low_open=False, high_open=False):
    """``ValueError`` unless ``value`` is a finite real number in the given (half-)open interval."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not real or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    interval = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, " \
               f"{high if high is not None else 'inf'}{')' if high_open or high is None else ']'}"
    if (low is not None and (value < low or (low_open and value == low))) or (
            high is not None and (value > high or (high_open and value == high))):
        raise ValueError(f"{name} must be in {interval}, got {value}")


def _check_int(name, value, low, high=None, high_name=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high_name or high} ({high}), got {value}")


# =====================================================================================================
# 2. Device
# =====================================================================================================


def pick_device(verbose: bool = True) -> torch.device:
    """CUDA if present, then Apple MPS, then CPU. Call once and pass the result around."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
        name = torch.cuda.get_device_name(device)
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device, name = torch.device("mps"), "Apple MPS"
    else:
        device, name = torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads)"
    if verbose:
        print(f"Using device: {device} — {name}")
    return device


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (for honest wall-clock timings; no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """Human-readable name of ``device`` (for summaries and the README's performance table)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def show(fig) -> None:
    """Display ``fig`` inline when running under Jupyter, then close it (a no-op display elsewhere,
    so the notebook also runs as a plain script)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        if get_ipython() is not None:
            saved = getattr(fig, "saved_png", None)  # already rendered when it was saved: no second render
            display(fig if saved is None else Image(data=saved))
    except ImportError:
        pass
    plt.close(fig)


def seed_everything(seed: int) -> None:
    """Seed Python-side RNGs used by this module (torch, numpy)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


# =====================================================================================================
# 3. Data
# =====================================================================================================

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# SHA-256 of the *decompressed* IDX files.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SYSTEM_DATA_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SIDE = 28  # images are IMAGE_SIDE x IMAGE_SIDE pixels


class DatasetNotFoundError(FileNotFoundError):
    """Fashion-MNIST could not be found (or was corrupt) in every place we looked."""


@dataclass
class FashionMNIST:
    """The whole dataset as tensors. Images are float32 in [0, 1]; labels are int64."""

    x_train: torch.Tensor  # [60000, 784]
    y_train: torch.Tensor  # [60000]
    x_test: torch.Tensor  # [10000, 784]
    y_test: torch.Tensor  # [10000]
    classes: tuple[str, ...] = CLASS_NAMES  # class names, index = label
    source: str = ""  # the folder the files were read from


def _read_idx_bytes(folder: Path, name: str) -> bytes:
    """Decompressed bytes of ``name`` from ``folder`` (``name.gz`` or the extracted ``name``)."""
    gz, raw = folder / f"{name}.gz", folder / name
    if gz.exists():
        with gzip.open(gz, "rb") as fh:
            return fh.read()
    if raw.exists():
        return raw.read_bytes()
    raise FileNotFoundError(f"{gz} (or {raw}) not found")


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    """Parse an IDX file (the MNIST format): magic, dimension sizes, then uint8 values."""
    n_dims = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=n_dims, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(tuple(dims))


def _load_from_folder(folder: Path) -> FashionMNIST:
    """Read and verify the four files in ``folder``; raises FileNotFoundError or ValueError."""
    arrays = {}
    for name, expected in FASHION_MNIST_SHA256.items():
        data = _read_idx_bytes(folder, name)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ValueError(f"{folder / name}: SHA-256 {actual[:16]}… does not match {expected[:16]}…")
        arrays[name] = _parse_idx(data, name)

    def images(a):
        return torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / 255.0)

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    return FashionMNIST(
        images(arrays["train-images-idx3-ubyte"]), labels(arrays["train-labels-idx1-ubyte"]),
        images(arrays["t10k-images-idx3-ubyte"]), labels(arrays["t10k-labels-idx1-ubyte"]),
        source=str(folder),
    )  # fmt: skip


def _torchvision_download(root: Path) -> Path:
    """Last resort for users with internet: torchvision's own download into ``root``."""
    from torchvision.datasets import FashionMNIST as TVFashionMNIST

    for train in (True, False):
        TVFashionMNIST(root=str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def load_fashion_mnist(root: str | os.PathLike = "data", system_dir: str | os.PathLike = SYSTEM_DATA_DIR,
                       download: bool = True, verbose: bool = True) -> FashionMNIST:
    """Load Fashion-MNIST as ``[N, 784]`` float32 images in [0, 1] and int64 labels.

    Looks, in order, in ``root/FashionMNIST/raw/`` (torchvision's layout, ``.gz`` or extracted),
    ``system_dir`` (Debian/Ubuntu package ``dataset-fashion-mnist``), then (if ``download``)
    torchvision's download into ``root``. Every file's SHA-256 is checked. If nothing works, one
    ``DatasetNotFoundError`` says what was tried and the three ways to get the data.
    """
    root = Path(root)
    candidates = [("local", lambda: root / "FashionMNIST" / "raw"), ("system", lambda: Path(system_dir))]
    if download:
        candidates.append(("download", lambda: _torchvision_download(root)))
    problems = []
    for label, folder_fn in candidates:
        try:
            folder = folder_fn()
            data = _load_from_folder(folder)
        except Exception as exc:  # noqa: BLE001 -- every failure is reported below, none swallowed
            problems.append(f"  - {label}: {type(exc).__name__}: {exc}")
            continue
        if verbose:
            print(f"Fashion-MNIST: {len(data.x_train)} train / {len(data.x_test)} test images from {data.source}")
        return data
    raise DatasetNotFoundError(
        "Fashion-MNIST was not found or failed its checksum. Tried:\n" + "\n".join(problems) + "\n"
        "Get it one of three ways:\n"
        f"  1. put the four .gz files in {root / 'FashionMNIST' / 'raw'}/\n"
        "  2. sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; files land in "
        f"{SYSTEM_DATA_DIR}/)\n"
        "  3. load_fashion_mnist(download=True) with internet access (torchvision's download)"
    )


def train_subset(data: FashionMNIST, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images and labels (all of them when ``n`` is 0)."""
    _check_int("train_subset", n, low=0, high=len(data.x_train), high_name="the training set size")
    if n == 0:
        return data.x_train, data.y_train
    return data.x_train[:n], data.y_train[:n]


def as_flat_images(x: torch.Tensor, name: str = "inputs") -> tuple[torch.Tensor, tuple[int, ...]]:
    """Validate images and flatten them to ``[B, 784]``; also returns the original shape.

    Accepts ``[B, 784]``, ``[B, 28, 28]`` or ``[B, 1, 28, 28]`` floating tensors with finite values.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float32/float64), got dtype {x.dtype}")
    shape = tuple(x.shape)
    if not (shape[1:] in ((784,), (28, 28), (1, 28, 28)) and len(shape) >= 2 and shape[0] >= 1):
        raise ValueError(f"{name} must have shape [B, 784], [B, 28, 28] or [B, 1, 28, 28] with B >= 1, "
                         f"got {list(shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x.reshape(shape[0], 784), shape


# =====================================================================================================
# 4. Models
# =====================================================================================================


class KSparseAutoencoder(nn.Module):
    """Top-k sparse autoencoder (Makhzani & Frey 2013; training recipe of Gao et al. 2024).

    Forward maths, for ``x: [B, D]``::

        pre   = W_enc (x - b_pre) + b_enc              pre: [B, H]
        z     = TopK_k(ReLU(pre))                     z:   [B, H], at most k non-zeros per row
        x_hat = W_dec z + b_pre                       x_hat: [B, D]

    ``W_dec`` is stored as ``[H, D]``: row ``j`` is unit ``j``'s dictionary atom ``d_j`` (so
    ``W_dec z`` above is ``z @ W_dec`` in code). Atoms have unit L2 norm, kept so by
    ``unit_norm_decoder_`` after every step; ``W_enc: [H, D]`` starts equal to ``W_dec`` (the
    transpose, in the maths' layout) and ``b_pre`` as the mean training image (``init_pre_bias_``).
    Decoding uses only the k active atoms (an embedding-bag sum over contiguous rows).
    """

    def __init__(self, k: int = 50, d_input: int = 784, d_hidden: int = 1024, config: Config | None = None):
        super().__init__()
        if config is not None:
            k, d_input, d_hidden = config.k, config.d_input, config.d_hidden
        _check_int("d_input", d_input, low=1)
        _check_int("d_hidden", d_hidden, low=1)
        self.d_input, self.d_hidden = d_input, d_hidden
        self.set_k_(k)
        w_dec = torch.randn(d_hidden, d_input)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)  # [H, D], row j = atom d_j
        self.W_enc = nn.Parameter(w_dec.clone())  # [H, D]
        self.b_enc = nn.Parameter(torch.zeros(d_hidden))  # [H]
        self.b_pre = nn.Parameter(torch.zeros(d_input))  # [D]

    def set_k_(self, k: int) -> None:
        """Change how many units stay active (e.g. to probe a trained model at another sparsity)."""
        _check_int("k", k, low=1, high=self.d_hidden, high_name="d_hidden")
        self.k = k

    @torch.no_grad()
    def init_pre_bias_(self, x: torch.Tensor) -> None:
        """Set ``b_pre`` to the mean of ``x: [N, D]`` (the data's centre)."""
        self.b_pre.copy_(x.mean(dim=0))

    @torch.no_grad()
    def unit_norm_decoder_(self) -> None:
        """Rescale every atom (row of ``W_dec``) to unit L2 norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the part of ``W_dec.grad`` parallel to each atom (it would only change the atom's norm)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, D]`` -> ``pre: [B, H]``, the encoder's affine map.

        Computed as ``x W_enc^T + (b_enc - W_enc b_pre)``: the same function, but its backward needs no
        ``[B, H] x [H, D]`` product for the input (a third of a training step's time on the CPU).
        """
        return F.linear(x, self.W_enc, self.encoder_bias())

    def encoder_bias(self) -> torch.Tensor:
        """The folded encoder bias ``b_enc - W_enc b_pre: [H]``, so ``pre = x W_enc^T + encoder_bias()``."""
        return self.b_enc - self.W_enc @ self.b_pre

    def top_k(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pre: [B, H]`` -> ``(values: [B, k], indices: [B, k])``: the k largest, through ReLU."""
        values, indices = torch.topk(pre, self.k, dim=1, sorted=False)
        return F.relu(values), indices

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [B, D]`` -> ``(values: [B, k], indices: [B, k])`` of the top-k ReLU activations."""
        return self.top_k(self.pre_activations(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, D]`` -> dense code ``z: [B, H]`` with at most k non-zeros per row."""
        values, indices = self.encode_sparse(x)
        return torch.zeros(x.shape[0], self.d_hidden, dtype=values.dtype, device=x.device).scatter(
            1, indices, values)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` -> ``x_hat: [B, D]``, summing only the active atoms."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_pre

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Dense code ``z: [B, H]`` -> ``x_hat: [B, D]``."""
        return z @ self.W_dec + self.b_pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, D]`` -> reconstruction ``x_hat: [B, D]``."""
        return self.decode_sparse(*self.encode_sparse(x))


class SparseCodeClassifier(nn.Module):
    """MLP on sparse codes: ``z: [B, H]`` -> logits ``[B, C]``.

    ``H -> 512 -> 256 -> C`` with ReLU and dropout after each hidden layer (widths from the config).
    ``forward_sparse`` computes the same function from the k active units only (used in training).
    """

    def __init__(self, d_hidden: int = 1024, hidden: Sequence[int] = (512, 256), n_classes: int = 10,
                 dropout: float = 0.3):
        super().__init__()
        _check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        first = nn.Linear(d_hidden, hidden[0])  # for PyTorch's default initialisation
        self.W1 = nn.Parameter(first.weight.detach().T.contiguous())  # [H, hidden0], row j = unit j's fan-out
        self.b1 = nn.Parameter(first.bias.detach().clone())  # [hidden0]
        layers: list[nn.Module] = [nn.ReLU(), nn.Dropout(dropout)]
        for w_in, w_out in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden[-1], n_classes))
        self.rest = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: Config) -> SparseCodeClassifier:
        return cls(cfg.d_hidden, cfg.clf_hidden, cfg.n_classes, cfg.dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z: [B, H]`` -> logits ``[B, C]``."""
        return self.rest(z @ self.W1 + self.b1)

    def affine_split(self):
        """``(A: [hidden0, H], c: [hidden0], head)`` with ``forward(z) = head(z A^T + c)`` (see attribution)."""
        return self.W1.T, self.b1, self.rest

    def first_layer_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` (the active units) -> first-layer pre-activations ``[B, hidden0]``."""
        return F.embedding_bag(indices, self.W1, per_sample_weights=values, mode="sum") + self.b1

    def forward_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` (the active units) -> logits ``[B, C]``; equals ``forward``."""
        return self.rest(self.first_layer_sparse(values, indices))


class SparseCodePipeline(nn.Module):
    """The model being explained: pixels -> encoder -> top-k -> classifier -> logits.

    ``forward(x: [B, 784]) -> logits: [B, C]``; ``F(x)`` in the attribution docs is one of these logits.
    """

    def __init__(self, sae: KSparseAutoencoder, clf: SparseCodeClassifier):
        super().__init__()
        self.sae, self.clf = sae, clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_pre(self.sae.pre_activations(x))

    def logits_from_pre(self, pre: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``pre: [B, H]`` -> logits ``[B, C]`` (top-k, then the classifier)."""
        return self.clf.forward_sparse(*self.sae.top_k(pre))

    def affine_split(self):
        """``(A: [H, D], c: [H], head)`` with ``forward(x) = head(x A^T + c)``: the encoder is affine, so
        attribution along a straight path can move through code space instead of pixel space."""
        return self.sae.W_enc, self.sae.encoder_bias(), self.logits_from_pre


# =====================================================================================================
# 5. Training
# =====================================================================================================


def normalized_mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batch fraction of variance unexplained: ``sum((x_hat - x)^2) / sum((x - mean(x))^2)``."""
    return (x_hat - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Random-permutation index slices covering ``range(n)`` once (last batch may be short)."""
    perm = torch.randperm(n, generator=generator).to(device)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this PyTorch supports it (on this CPU: 0.5 ms against 8 ms per step)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older PyTorch, or a device without a fused kernel
        return torch.optim.Adam(params, lr=lr)


LR_SCHEDULES = ("constant", "cosine", "decay20")
DECAY_FRACTION = 0.2  # "decay20": share of the steps over which the learning rate falls linearly to 0


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total_steps``."""
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "decay20":
        return min(1.0, (1 - progress) / DECAY_FRACTION)
    return 1.0


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    """Per-step learning-rate schedule (see ``lr_factor``)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(schedule, step, total_steps))


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror ``x: [N, 784]`` images left-right."""
    return x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).flip(2).reshape(len(x), -1)


def shift_images(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move ``x: [N, 784]`` images ``dy`` pixels down and ``dx`` right (negative: up, left); what moves in is 0."""
    if max(abs(dy), abs(dx)) >= IMAGE_SIDE:
        raise ValueError(f"shift must be smaller than the image side {IMAGE_SIDE}, got dy={dy}, dx={dx}")
    pad = max(abs(dy), abs(dx))
    padded = F.pad(x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), (pad, pad, pad, pad))
    moved = padded[:, pad - dy:pad - dy + IMAGE_SIDE, pad - dx:pad - dx + IMAGE_SIDE]
    return moved.reshape(len(x), -1)


def classifier_views(x: torch.Tensor, cfg: Config) -> Iterator[torch.Tensor]:
    """Yield, one at a time (only one shifted copy in memory), the versions of ``x: [N, 784]`` the classifier
    trains on: the images, their mirror images if ``cfg.clf_hflip``, then each of those moved
    ``cfg.clf_shift`` pixels down, up, right and left (images first, then mirror images)."""
    bases = [x, hflip(x)] if cfg.clf_hflip else [x]
    yield from bases
    s = cfg.clf_shift
    if s:
        for base in bases:
            for dy, dx in ((s, 0), (-s, 0), (0, s), (0, -s)):
                yield shift_images(base, dy, dx)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", mininterval=2.0, dynamic_ncols=True)


def auxk_loss(sae: KSparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """AuxK loss (Gao et al. 2024): the top ``aux_k`` *dead* units must reconstruct the residual.

    ``pre: [B, H]`` encoder pre-activations, ``residual: [B, D]`` = x - x_hat (treated as a target),
    ``dead: [H]`` bool. Gives dead units a gradient that points them at what the live units miss.
    """
    n_dead = int(dead.sum())
    if n_dead == 0 or aux_k == 0:
        return pre.new_zeros(())
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = torch.topk(masked, min(aux_k, n_dead), dim=1, sorted=False)
    residual_hat = F.embedding_bag(indices, sae.W_dec, per_sample_weights=F.relu(values), mode="sum")
    return normalized_mse(residual_hat, residual.detach())


def train_autoencoder(sae: KSparseAutoencoder, x_train: torch.Tensor, cfg: Config,
                      device: torch.device) -> dict[str, list[float]]:
    """Train ``sae`` on ``x_train: [N, D]`` with Adam, unit-norm atoms and AuxK. Returns per-epoch history.

    Loss = batch FVU + ``aux_coef`` * AuxK. Deterministic on CPU for a fixed ``cfg.seed``.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = x_train.to(device)
    sae.to(device).train()
    sae.init_pre_bias_(x)
    sae.unit_norm_decoder_()
    opt = make_adam(sae.parameters(), cfg.lr)
    steps = math.ceil(len(x) / cfg.batch_size)
    sched = make_scheduler(opt, cfg.ae_lr_schedule, cfg.ae_epochs * steps)
    since_fired = torch.zeros(sae.d_hidden, dtype=torch.long, device=device)  # images since last active
    history = {"loss": [], "fvu": [], "aux_loss": [], "dead_fraction": []}
    bar = _progress(cfg.ae_epochs * steps, "autoencoder")
    for epoch in range(cfg.ae_epochs):
        sums = torch.zeros(3, device=device)
        for idx in _batches(len(x), cfg.batch_size, gen, device):
            xb = x[idx]
            if cfg.ae_hflip:
                flip = torch.rand(len(idx), generator=gen).to(device) < 0.5
                xb = torch.where(flip[:, None], hflip(xb), xb)
            pre = sae.pre_activations(xb)
            values, indices = sae.top_k(pre)
            x_hat = sae.decode_sparse(values, indices)
            fvu = normalized_mse(x_hat, xb)
            dead = since_fired >= cfg.dead_after
            aux = auxk_loss(sae, pre, xb - x_hat, dead, cfg.aux_k)
            loss = fvu + cfg.aux_coef * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grad_()
            opt.step()
            sched.step()
            sae.unit_norm_decoder_()
            fired = torch.zeros_like(dead).index_fill_(0, indices[values > 0], True)
            since_fired = torch.where(fired, 0, since_fired + len(xb))
            sums += torch.stack([loss.detach(), fvu.detach(), aux.detach()]) * len(xb)
            bar.update()
        mean = (sums / len(x)).tolist()
        dead_fraction = float((since_fired >= cfg.dead_after).float().mean())
        for key, value in zip(("loss", "fvu", "aux_loss", "dead_fraction"), mean + [dead_fraction]):
            history[key].append(value)
        bar.set_postfix(epoch=epoch + 1, loss=f"{mean[0]:.4f}", fvu=f"{mean[1]:.4f}", dead=f"{dead_fraction:.3f}")
    bar.close()
    sae.eval()
    return history


@torch.no_grad()
def encode_dataset(sae: KSparseAutoencoder, x: torch.Tensor, device: torch.device,
                   batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of ``x: [N, D]`` as ``(values: [N, k], indices: [N, k])`` on ``device``."""
    sae.eval()
    parts = [sae.encode_sparse(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def encode_views(sae: KSparseAutoencoder, x: torch.Tensor, cfg: Config,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of every ``classifier_views`` view of ``x: [N, D]``: ``(values, indices)``, each
    ``[V, N, k]`` on ``device`` (what ``train_classifier`` computes once before its first epoch)."""
    n_views = (1 + cfg.clf_hflip) * (1 + 4 * (cfg.clf_shift > 0))
    values = torch.empty(n_views, len(x), sae.k, device=device)
    indices = torch.empty(n_views, len(x), sae.k, dtype=torch.long, device=device)
    for i, view in enumerate(classifier_views(x, cfg)):  # filled in place: the codes are held once
        values[i], indices[i] = encode_dataset(sae, view, device)
    assert i == n_views - 1, "classifier_views and n_views disagree"
    return values, indices


@torch.no_grad()
def _accuracy_sparse(clf: SparseCodeClassifier, values, indices, y, batch_size: int = 8192) -> float:
    clf.eval()
    correct = sum(
        (clf.forward_sparse(values[i:i + batch_size], indices[i:i + batch_size]).argmax(1)
         == y[i:i + batch_size]).sum().item()
        for i in range(0, len(y), batch_size)
    )
    return correct / len(y)


def train_classifier(clf: SparseCodeClassifier, sae: KSparseAutoencoder, x_train: torch.Tensor,
                     y_train: torch.Tensor, cfg: Config, device: torch.device,
                     x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None) -> dict[str, list]:
    """Train ``clf`` on the frozen autoencoder's codes of ``x_train: [N, D]`` (labels ``y_train: [N]``).

    Codes are computed once and kept sparse (``[V, N, k]`` values and indices for the ``V`` views of
    ``classifier_views``: mirror images, shifted copies); each step takes a random view per image and
    touches only the k active rows of the first layer. Returns per-epoch loss, train accuracy and (if
    given) accuracy on ``x_val`` (monitoring only: nothing is selected on it).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    values, indices = encode_views(sae, x_train, cfg, device)
    y = y_train.to(device)
    val = None if x_val is None else (*encode_dataset(sae, x_val, device), y_val.to(device))
    clf.to(device)
    opt = make_adam(clf.parameters(), cfg.lr)
    steps = math.ceil(len(y) / cfg.batch_size)
    sched = make_scheduler(opt, cfg.clf_lr_schedule, cfg.clf_epochs * steps)
    history = {"loss": [], "train_acc": [], "val_acc": []}
    bar = _progress(cfg.clf_epochs * steps, "classifier")
    for epoch in range(cfg.clf_epochs):
        clf.train()
        sums = torch.zeros(2, device=device)
        for idx in _batches(len(y), cfg.batch_size, gen, device):
            view = torch.randint(len(values), (len(idx),), generator=gen).to(device)
            logits = clf.forward_sparse(values[view, idx], indices[view, idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += torch.stack([loss.detach() * len(idx), (logits.argmax(1) == y[idx]).sum()])
            bar.update()
        loss_mean, acc = (sums / len(y)).tolist()
        history["loss"].append(loss_mean)
        history["train_acc"].append(acc)
        if val is not None:
            history["val_acc"].append(_accuracy_sparse(clf, *val))
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_mean:.4f}", acc=f"{acc:.3f}",
                        **({"test_acc": f"{history['val_acc'][-1]:.3f}"} if val is not None else {}))
    bar.close()
    clf.eval()
    return history



# =====================================================================================================
# 6. Checkpoints
# =====================================================================================================


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename: readers see the old
    file or the new one, never half of one. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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
        sae = KSparseAutoencoder(config=cfg)
        sae.load_state_dict(payload["sae"])
        clf = SparseCodeClassifier.from_config(cfg)
        clf.load_state_dict(payload["clf"])
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 -- unpickling/format errors all mean "unusable file"
        raise CheckpointError(f"checkpoint {path} is unusable ({type(exc).__name__}: {exc}); "
                              f"delete it or retrain with retrain=True") from exc
    return cfg, sae.to(device).eval(), clf.to(device).eval(), payload["history"], payload["metrics"]


def train_models(cfg: Config, data: FashionMNIST, device: torch.device):
    """Train the autoencoder, then the classifier on its codes. Returns ``(sae, clf, history)``."""
    x_train, y_train = train_subset(data, cfg.train_subset)
    torch.manual_seed(cfg.seed)
    sae = KSparseAutoencoder(config=cfg)
    clf = SparseCodeClassifier.from_config(cfg)
    t0 = time.perf_counter()
    ae_history = train_autoencoder(sae, x_train, cfg, device)
    t1 = time.perf_counter()
    clf_history = train_classifier(clf, sae, x_train, y_train, cfg, device, data.x_test, data.y_test)
    t2 = time.perf_counter()
    history = {"ae": ae_history, "clf": clf_history, "seconds": {"ae": t1 - t0, "clf": t2 - t1}}
    return sae.eval(), clf.eval(), history


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
    metrics = {"autoencoder": evaluate_autoencoder(sae, data, device),
               "classifier": evaluate_classifier(sae, clf, data, device)}
    save_checkpoint(path, cfg, sae, clf, history, metrics)
    if verbose:
        print(f"Saved {path}")
    return sae, clf, history, metrics


# =====================================================================================================
# 7. Metrics
# =====================================================================================================


@torch.no_grad()
def evaluate_autoencoder(sae: KSparseAutoencoder, data: FashionMNIST, device: torch.device) -> dict:
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
        "fvu": float(sse / (x - x.mean(dim=0)).pow(2).sum()),
        "mean_l0": float((values > 0).sum(dim=1).float().mean()),
        "dead_units": int((~ever_active).sum()),
        "d_hidden": sae.d_hidden,
        "unit_usage_train": usage.cpu().tolist(),  # fraction of train images on which each unit fires
    }


def firing_frequency(values: torch.Tensor, indices: torch.Tensor, d_hidden: int) -> torch.Tensor:
    """Fraction ``[H]`` of images on which each unit fires (value > 0); ``values, indices: [N, k]`` sparse codes."""
    return torch.bincount(indices[values > 0], minlength=d_hidden).float() / len(values)


@torch.no_grad()
def predict(sae: KSparseAutoencoder, clf: SparseCodeClassifier, x: torch.Tensor, device: torch.device,
            batch_size: int = 4096) -> torch.Tensor:
    """Class probabilities ``[N, C]`` for images ``x: [N, 784]`` (eval mode, batched)."""
    pipeline = SparseCodePipeline(sae, clf).eval()
    return torch.cat([pipeline(x[i:i + batch_size].to(device)).softmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate_classifier(sae: KSparseAutoencoder, clf: SparseCodeClassifier, data: FashionMNIST,
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

# =====================================================================================================
# 8. Attribution
# =====================================================================================================
# All four methods explain F(x) = the target class's *logit* of ``model(x)`` (``output="probability"``
# explains its softmax probability instead). They accept images as [B, 784], [B, 28, 28] or
# [B, 1, 28, 28] and return attributions of the same shape. Names follow Captum's ``attribute()``.

IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
OUTPUTS = ("logit", "probability")
DEFAULT_INTERNAL_BATCH = 4096  # rows per forward/backward pass when internal_batch_size is None
METHOD_LABELS = {
    "integrated": "Integrated gradients",
    "simple": "Simple gradients",
    "smoothgrad": "SmoothGrad",
    "decoder": "Decoder-weighted",
}


def ig_quadrature(n_steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``alphas: [n_steps]`` in [0, 1] and weights ``[n_steps]`` for integrating over [0, 1].

    ``gausslegendre`` and the ``riemann_left/right/middle`` rules equal Captum's. ``riemann_trapezoid``
    is the textbook rule (spacing 1/(n-1), ends halved, weights sum to 1); Captum's weights sum to
    (n-1)/n, so its trapezoid attributions are ours times (n-1)/n.
    """
    _check_int("n_steps", n_steps, low=1)
    if method not in IG_METHODS:
        raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")
    n = n_steps
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * w)
    if n < 2:
        raise ValueError(f"n_steps must be >= 2 for {method}, got {n}")
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=torch.float64), weights
    start = {"riemann_left": 0.0, "riemann_right": 1.0 / n, "riemann_middle": 0.5 / n}[method]
    return start + torch.arange(n, dtype=torch.float64) / n, weights


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
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
    """Shared validation: returns ``(x: [B, D], shape, target: [B], fn)``."""
    _check_model(model)
    x, shape = as_flat_images(inputs)
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point() and param.dtype != x.dtype:
        raise ValueError(f"inputs have dtype {x.dtype} but the model's parameters are {param.dtype}; "
                         f"convert one of them (e.g. inputs.to({param.dtype}))")
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    return x, shape, _check_target(target, len(x), n_classes, x.device), _output_fn(model, output)


def _rows_per_pass(internal_batch_size: int | None) -> int:
    if internal_batch_size is None:
        return DEFAULT_INTERNAL_BATCH
    _check_int("internal_batch_size", internal_batch_size, low=1)
    return internal_batch_size


def _grad(fn, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d fn(x)[i] / d x[i]`` for every row: ``x: [N, D]`` -> ``[N, D]``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(fn(x, target).sum(), x)[0]


def _line_integral(fn, start: torch.Tensor, direction: torch.Tensor, target: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor, rows: int) -> torch.Tensor:
    """``sum_s w_s * grad fn(start + alpha_s * direction)`` for ``start, direction: [B, P]`` -> ``[B, P]``.

    The path points of a chunk of images go through one batched forward/backward of at most ``rows`` rows.
    """
    alphas, weights = alphas.to(start), weights.to(start)
    total = torch.zeros_like(start)
    imgs_per = max(1, rows // len(alphas))
    steps_per = max(1, rows // min(imgs_per, len(start)))
    for i in range(0, len(start), imgs_per):
        s0, d, t = start[i:i + imgs_per], direction[i:i + imgs_per], target[i:i + imgs_per]
        for s in range(0, len(alphas), steps_per):
            a, w = alphas[s:s + steps_per], weights[s:s + steps_per]
            points = s0 + a[:, None, None] * d  # [steps, images, P]
            g = _grad(fn, points.reshape(-1, start.shape[1]), t.repeat(len(a)))
            total[i:i + imgs_per] += torch.einsum("s,sbp->bp", w, g.view(len(a), len(s0), -1))
    return total


def _path_integral(model: nn.Module, output: str, x: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor, rows: int) -> torch.Tensor:
    """``sum_s w_s * grad F(baseline + alpha_s (x - baseline))`` for ``x, baseline: [B, D]`` -> ``[B, D]``.

    Models with an affine first layer (``affine_split() -> (A, c, head)``, ``F(x) = head(x A^T + c)``:
    our pipeline and classifier) are integrated in that layer's output space, exactly: the path maps to
    the straight line ``pre(b) + alpha (x - b) A^T`` and ``grad_x F = grad_pre F @ A``, so ``A`` is
    applied twice per image instead of twice per path point. Other models use plain autograd.
    """
    split = getattr(model, "affine_split", None)
    if split is None:
        return _line_integral(_output_fn(model, output), baseline, x - baseline, target, alphas, weights, rows)
    A, c, head = split()
    with torch.no_grad():
        A, c = A.detach(), c.detach()
        start, direction = F.linear(baseline, A, c), F.linear(x - baseline, A)
    g_pre = _line_integral(lambda p, t: _score(head(p), t, output), start, direction, target, alphas, weights, rows)
    return g_pre @ A


def integrated_gradients(model: nn.Module, inputs: torch.Tensor, target, baselines: torch.Tensor | None = None,
                         n_steps: int = 50, method: str = "gausslegendre", output: str = "logit",
                         internal_batch_size: int | None = None, return_convergence_delta: bool = False):
    """Integrated gradients (Sundararajan et al. 2017) of the target logit, from a zero image by default.

    ``attr = (x - x0) * sum_s w_s grad F(x0 + alpha_s (x - x0))`` with the quadrature of ``method``.
    ``inputs: [B, 784]`` (or image-shaped), ``target``: int or ``[B]``, ``baselines``: same shape as
    ``inputs`` or one image (default zeros). With ``return_convergence_delta`` also returns, per image,
    ``delta: [B] = sum(attr) - (F(x) - F(x0))``; top-k makes F discontinuous along the path, so delta
    need not vanish as n_steps grows.
    """
    x, shape, target, fn = _prepare(model, inputs, target, output)
    base = torch.zeros_like(x) if baselines is None else _baseline(baselines, x)
    alphas, weights = ig_quadrature(n_steps, method)
    grads = _path_integral(model, output, x, base, target, alphas, weights, _rows_per_pass(internal_batch_size))
    attr = (x - base) * grads
    if not return_convergence_delta:
        return attr.reshape(shape)
    with torch.no_grad():
        delta = attr.sum(1) - (fn(x, target) - fn(base, target))
    return attr.reshape(shape), delta


def _baseline(baselines: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A baseline of one image or one per image, flattened and broadcast to ``x: [B, D]``."""
    if isinstance(baselines, torch.Tensor) and baselines.numel() == x.shape[1]:
        baselines = baselines.reshape(1, -1)
    b, _ = as_flat_images(baselines, name="baselines")
    if len(b) not in (1, len(x)):
        raise ValueError(f"baselines must hold 1 or {len(x)} images, got {len(b)}")
    return b.to(x).expand_as(x)


def simple_gradients(model: nn.Module, inputs: torch.Tensor, target, abs: bool = False,  # noqa: A002
                     output: str = "logit", internal_batch_size: int | None = None) -> torch.Tensor:
    """Gradient of the target logit w.r.t. each pixel, ``dF/dx: [B, 784]`` (signed; ``abs=True`` for |.|)."""
    x, shape, target, fn = _prepare(model, inputs, target, output)
    rows = _rows_per_pass(internal_batch_size)
    g = torch.cat([_grad(fn, x[i:i + rows], target[i:i + rows]) for i in range(0, len(x), rows)])
    return (g.abs() if abs else g).reshape(shape)


def smoothgrad(model: nn.Module, inputs: torch.Tensor, target, nt_samples: int = 25, stdevs: float = 0.1,
               abs: bool = False, output: str = "logit", generator: torch.Generator | None = None,  # noqa: A002
               seed: int | None = None, internal_batch_size: int | None = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): mean gradient over ``nt_samples`` copies of each image with
    Gaussian noise of std ``stdevs`` (pixels are in [0, 1]). Pass ``seed`` or ``generator`` for
    reproducible noise; noise is drawn on the CPU in float32 (then cast to the inputs' dtype),
    image-major (``[B, nt_samples, D]``), so it is the same on every device and in every precision.
    ``abs=True`` averages absolute gradients (Captum's Saliency default).
    """
    x, shape, target, fn = _prepare(model, inputs, target, output)
    _check_int("nt_samples", nt_samples, low=1)
    if isinstance(stdevs, bool) or not (isinstance(stdevs, (int, float)) and math.isfinite(stdevs) and stdevs >= 0):
        raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs!r}")
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # fresh entropy; torch's global RNG is left alone
        else:
            generator.manual_seed(seed)
    rows = _rows_per_pass(internal_batch_size)
    imgs_per = max(1, rows // nt_samples)
    # Signed maps of a model with an affine first layer average the gradient in that layer's output
    # space and map the mean back once per image (the mean commutes with the linear map A).
    split = None if abs else getattr(model, "affine_split", None)
    if split is not None:
        A, c, head = split()
        A, c = A.detach(), c.detach()
    out = []
    for i in range(0, len(x), imgs_per):
        xi, ti = x[i:i + imgs_per], target[i:i + imgs_per].repeat_interleave(nt_samples)
        noise = torch.randn((len(xi), nt_samples, x.shape[1]), generator=generator, dtype=torch.float32)
        noisy = (xi[:, None] + stdevs * noise.to(xi)).reshape(-1, x.shape[1])
        if split is None:
            g = _grad(fn, noisy, ti).view(len(xi), nt_samples, -1)
            out.append((g.abs() if abs else g).mean(1))
            continue
        with torch.no_grad():
            pre = F.linear(noisy, A, c)
        g_pre = _grad(lambda p, t: _score(head(p), t, output), pre, ti)
        out.append(g_pre.view(len(xi), nt_samples, -1).mean(1) @ A)
    return torch.cat(out).reshape(shape)


UNIT_RULES = ("rescale", "integrated")


@torch.no_grad()
def rescale_contributions(clf: SparseCodeClassifier, z: torch.Tensor, target: torch.Tensor, output: str = "logit",
                          n_steps: int = 50, rows: int = DEFAULT_INTERNAL_BATCH) -> torch.Tensor:
    """Exact per-unit shares of ``G(z) - G(0)`` for the ReLU head ``G``: DeepLIFT's Rescale rule
    (Shrikumar et al. 2017) with the all-zero code as reference.

    ``z: [B, H]``, ``target: [B]`` -> ``c: [B, H]`` with ``sum_j c_j = G(z) - G(0)`` exactly: every
    activation ``f`` (the head is linear layers, dropout and elementwise activations) passes back the
    multiplier ``(f(h) - f(h0)) / (h - h0)`` (its derivative where ``h == h0``), every linear layer its
    weights. For ``output="probability"`` the softmax, a smooth function of the
    logits, is integrated from the reference logits to the image's with ``n_steps`` Gauss-Legendre points.
    """
    pres, h, h0 = [], z @ clf.W1 + clf.b1, clf.b1.expand(len(z), -1)
    for layer in clf.rest:  # forward at z and at the reference, keeping each activation's two inputs
        if not isinstance(layer, (nn.Linear, nn.Dropout)):
            pres.append((h, h0))
        h, h0 = layer(h), layer(h0)
    m = F.one_hot(target, h.shape[1]).to(h)  # multipliers of the logits
    if output == "probability":
        alphas, weights = ig_quadrature(n_steps, "gausslegendre")
        m = _line_integral(lambda logits, t: _score(logits, t, output), h0, h - h0, target, alphas, weights,
                           rows=rows)
    for layer in reversed(clf.rest):
        if isinstance(layer, nn.Linear):
            m = m @ layer.weight
        elif not isinstance(layer, nn.Dropout):  # an elementwise activation (ReLU in our head)
            m = m * _rescale_slope(layer, *pres.pop())
    return z * (m @ clf.W1.T)


def _rescale_slope(activation: nn.Module, a: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
    """Rescale multiplier of an elementwise activation ``f``: ``(f(a) - f(a0)) / (a - a0)``, or ``f'(a)``
    where the two inputs (nearly) coincide."""
    delta = a - a0
    far = delta.abs() > RESCALE_EPS
    with torch.enable_grad():
        a_req = a.detach().requires_grad_(True)
        derivative = torch.autograd.grad(activation(a_req).sum(), a_req)[0]
    ratio = (activation(a) - activation(a0)) / torch.where(far, delta, torch.ones_like(delta))
    return torch.where(far, ratio, derivative)


RESCALE_EPS = 1e-12  # below this |h - h0| a ReLU passes back its gradient instead of the finite ratio


def decoder_weighted(pipeline: SparseCodePipeline, inputs: torch.Tensor, target, output: str = "logit",
                     rule: str = "rescale", n_steps: int = 50, method: str = "gausslegendre",
                     internal_batch_size: int | None = None, return_contributions: bool = False):
    """Decoder-weighted attribution: what each active code unit contributes, drawn with its atom.

    For ``z = encode(x)`` and the classifier head ``G`` (so ``F(x) = G(z)``):

    * unit contributions ``c: [B, H]``, shares of ``G(z) - G(0)`` (reference: the empty code). Only
      active units (``z_j > 0``) get non-zero ``c_j``. ``rule="rescale"`` (default) uses DeepLIFT's
      Rescale rule (``rescale_contributions``): ``sum_j c_j = G(z) - G(0)`` *exactly*.
      ``rule="integrated"`` uses integrated gradients in code space, ``c_j = z_j int_0^1 dG(a z)/dz_j da``
      with ``n_steps``/``method`` quadrature; the ReLU head makes the integrand piecewise constant, so its
      sum misses ``G(z) - G(0)`` by a quadrature error of about 1 % at 50 steps, shrinking like 1/n_steps;
    * pixel map ``attr = sum_j c_j d_j = c @ W_dec`` with ``d_j`` unit ``j``'s unit-norm decoder atom.

    Returns ``attr`` shaped like ``inputs`` and, with ``return_contributions``, also ``c: [B, H]``.
    """
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"decoder_weighted needs a SparseCodePipeline (autoencoder + classifier), "
                         f"got {type(pipeline).__name__}")
    if rule not in UNIT_RULES:
        raise ValueError(f"rule must be one of {UNIT_RULES}, got {rule!r}")
    x, shape, target, _ = _prepare(pipeline, inputs, target, output)
    alphas, weights = ig_quadrature(n_steps, method)
    rows = _rows_per_pass(internal_batch_size)
    with torch.no_grad():
        z = pipeline.sae.encode(x)
    if rule == "rescale":
        contributions = rescale_contributions(pipeline.clf, z, target, output, n_steps, rows)
    else:
        contributions = z * _path_integral(pipeline.clf, output, z, torch.zeros_like(z), target, alphas, weights, rows)
    attr = (contributions @ pipeline.sae.W_dec.detach()).reshape(shape)
    return (attr, contributions) if return_contributions else attr


def attribute_all(pipeline: SparseCodePipeline, inputs: torch.Tensor, target, cfg: Config,
                  methods: Sequence[str] = tuple(METHOD_LABELS), seed: int | None = None) -> dict[str, torch.Tensor]:
    """Every requested method's ``[B, 784]`` map for ``inputs`` with the config's settings."""
    unknown = [m for m in methods if m not in METHOD_LABELS]
    if unknown:
        raise ValueError(f"methods must be a subset of {list(METHOD_LABELS)}, got unknown {unknown}")
    seed = cfg.seed if seed is None else seed
    run = {
        "integrated": lambda: integrated_gradients(pipeline, inputs, target, n_steps=cfg.ig_steps,
                                                   method=cfg.ig_method),
        "simple": lambda: simple_gradients(pipeline, inputs, target),
        "smoothgrad": lambda: smoothgrad(pipeline, inputs, target, nt_samples=cfg.smoothgrad_samples,
                                         stdevs=cfg.smoothgrad_noise, seed=seed),
        "decoder": lambda: decoder_weighted(pipeline, inputs, target),
    }
    return {m: run[m]().detach() for m in methods}


# =====================================================================================================
# 9. Evaluation: sample selection, cross-method statistics, faithfulness checks
# =====================================================================================================


@dataclass
class Selection:
    """High-confidence, correctly classified test images, balanced over classes (sorted by class)."""

    indices: torch.Tensor  # [N] indices into the test set
    x: torch.Tensor  # [N, 784] images
    y: torch.Tensor  # [N] labels (= predictions)
    confidence: torch.Tensor  # [N] softmax probability of the label
    n_candidates: dict = field(default_factory=dict)  # class name -> images passing the filter


def select_high_confidence(sae: KSparseAutoencoder, clf: SparseCodeClassifier, data: FashionMNIST,
                           device: torch.device, n_per_class: int, threshold: float = 0.8,
                           seed: int = 0) -> Selection:
    """``n_per_class`` random (seeded) test images per class that are classified correctly with
    softmax confidence > ``threshold``. Raises ``ValueError`` naming any class with too few."""
    _check_int("n_per_class", n_per_class, low=1)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    probs = predict(sae, clf, data.x_test, device).cpu()
    confidence, pred = probs.max(1)
    ok = (pred == data.y_test) & (confidence > threshold)
    gen = torch.Generator().manual_seed(seed)
    chosen, counts = [], {}
    for c, name in enumerate(data.classes):
        candidates = torch.nonzero(ok & (data.y_test == c))[:, 0]
        counts[name] = len(candidates)
        if len(candidates) < n_per_class:
            raise ValueError(f"class {name!r} has only {len(candidates)} correctly classified test images with "
                             f"confidence > {threshold}; asked for n_per_class={n_per_class}")
        chosen.append(candidates[torch.randperm(len(candidates), generator=gen)[:n_per_class]].sort().values)
    idx = torch.cat(chosen)
    return Selection(idx, data.x_test[idx], data.y_test[idx], confidence[idx], counts)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``[N, P]`` -> ``[N]``)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.divide((a * b).sum(1), denom, out=np.zeros(len(a)), where=denom > 0)


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per row (average ranks for ties): ``[N, P], [N, P]`` -> ``[N]``."""
    from scipy.stats import rankdata

    return _rowwise_pearson(rankdata(a, axis=1), rankdata(b, axis=1))


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values: [N]``, or of
    ``statistic(resamples: [n_boot, N, ...]) -> [n_boot]`` for ``values: [N, ...]`` (rows resampled)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    resamples = values[rng.integers(0, len(values), size=(n_boot, len(values)))]
    estimates = resamples.mean(1) if statistic is None else statistic(resamples)
    alpha = (1 - level) / 2
    return float(np.quantile(estimates, alpha)), float(np.quantile(estimates, 1 - alpha))


def summarize(values, seed: int = 0) -> dict:
    """Mean, bootstrap 95 % CI, std and n of per-image values."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": float(values.mean()), "ci95": [lo, hi], "std": float(values.std()), "n": int(values.size)}


def _wilcoxon_p(values) -> float:
    """Two-sided Wilcoxon signed-rank p-value that ``values`` are centred at 0 (1.0 if all zero)."""
    from scipy.stats import wilcoxon

    values = np.asarray(values, dtype=np.float64)
    if np.allclose(values, 0):
        return 1.0
    return float(wilcoxon(values).pvalue)


def top_fraction_iou(a: np.ndarray, b: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """IoU of the ``fraction`` most important pixels (by |attribution|) of two maps, per row."""
    n_top = max(1, int(round(fraction * a.shape[1])))
    top_a = np.argsort(-np.abs(a), axis=1)[:, :n_top]
    top_b = np.argsort(-np.abs(b), axis=1)[:, :n_top]
    inter = np.array([len(np.intersect1d(ra, rb)) for ra, rb in zip(top_a, top_b)])
    return inter / (2 * n_top - inter)


def cross_method_statistics(maps: dict[str, torch.Tensor], seed: int = 0) -> dict:
    """Agreement between every pair of methods, per image then summarised over images.

    For each pair: Spearman and Pearson correlation on signed and on absolute maps (mean, bootstrap
    95 % CI, Wilcoxon p-value against 0) and the IoU of the top-1 % pixels. For each method: mean, max
    and std of the map (per image, averaged). ``maps``: method -> ``[N, 784]``.
    """
    arrays = {m: v.detach().reshape(len(v), -1).double().cpu().numpy() for m, v in maps.items()}
    pairs = {}
    names = list(arrays)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            entry = {}
            for kind, f in (("signed", lambda v: v), ("abs", np.abs)):
                for corr_name, corr in (("spearman", rowwise_spearman), ("pearson", _rowwise_pearson)):
                    r = corr(f(arrays[a]), f(arrays[b]))
                    entry[f"{corr_name}_{kind}"] = {**summarize(r, seed), "p_value": _wilcoxon_p(r)}
            entry["top1pct_iou"] = summarize(top_fraction_iou(arrays[a], arrays[b]), seed)
            pairs[f"{a}|{b}"] = entry
    per_method = {m: {"mean": float(v.mean(1).mean()), "max": float(v.max(1).mean()),
                      "std": float(v.std(1).mean()), "mean_abs": float(np.abs(v).mean(1).mean())}
                  for m, v in arrays.items()}
    return {"pairs": pairs, "per_method": per_method}


def correlation_matrix(stats: dict, methods: Sequence[str], key: str = "spearman_abs") -> np.ndarray:
    """``[M, M]`` matrix of the mean per-image correlation ``key`` from ``cross_method_statistics``."""
    m = np.eye(len(methods))
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            pair = stats["pairs"].get(f"{a}|{b}") or stats["pairs"].get(f"{b}|{a}")
            if i != j and pair is not None:
                m[i, j] = pair[key]["mean"]
    return m


def count_path_switches(sae: KSparseAutoencoder, x: torch.Tensor, baseline: torch.Tensor | None = None,
                        n_points: int = 256) -> torch.Tensor:
    """How often the active set (top-k units) changes along the straight path from ``baseline`` to ``x``.

    ``x: [B, 784]`` -> ``[B]`` counts over ``n_points`` evenly spaced path points. Every change is a
    jump of the otherwise piecewise-smooth model that integrated gradients cannot see.
    """
    x, _ = as_flat_images(x)
    base = torch.zeros_like(x) if baseline is None else _baseline(baseline, x)
    alphas = torch.linspace(0, 1, n_points, dtype=x.dtype, device=x.device)
    counts = torch.zeros(len(x), dtype=torch.long, device=x.device)
    with torch.no_grad():
        previous = None
        for a in alphas:
            values, indices = sae.encode_sparse(base + a * (x - base))
            active = torch.zeros(len(x), sae.d_hidden, dtype=torch.bool, device=x.device)
            active.scatter_(1, indices, values > 0)
            if previous is not None:
                counts += (active != previous).any(1)
            previous = active
    return counts.cpu()


def ig_completeness(model: nn.Module, x: torch.Tensor, target,
                    n_steps_list: Sequence[int] = (16, 32, 50, 100, 200, 500),
                    methods: Sequence[str] = ("gausslegendre", "riemann_trapezoid"), tolerance: float = 0.05,
                    output: str = "logit", reference_steps: int = 50) -> dict:
    """Relative completeness error of IG, ``|sum(attr) - (F(x) - F(0))| / |F(x) - F(0)|`` per image,
    for every quadrature ``method`` and ``n_steps``; reports the median and the share within ``tolerance``.
    Returns ``{"table": {method: {n_steps: {...}}}}`` plus ``"per_image_50"``: per-image errors of the
    first method at ``reference_steps`` (None if that n_steps was not run).
    """
    x, _ = as_flat_images(x)
    fn = _output_fn(model, output)
    with torch.no_grad():
        target = _check_target(target, len(x), model(x[:1]).shape[1], x.device)
        gap = (fn(x, target) - fn(torch.zeros_like(x), target)).abs().clamp_min(1e-12)
    table, per_image = {}, None
    for method in methods:
        table[method] = {}
        for n in tqdm(n_steps_list, desc=f"completeness ({method})", mininterval=2.0):
            _, delta = integrated_gradients(model, x, target, n_steps=n, method=method, output=output,
                                            return_convergence_delta=True)
            rel = (delta.abs() / gap).cpu().numpy()
            table[method][int(n)] = {"median_rel_error": float(np.median(rel)), "mean_rel_error": float(rel.mean()),
                                     "share_within_tolerance": float((rel <= tolerance).mean())}
            if method == methods[0] and n == reference_steps:
                per_image = rel
    return {"tolerance": tolerance, "table": table, "reference_steps": reference_steps,
            "per_image_50": None if per_image is None else per_image.tolist()}


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of each image, ``[N, 784]`` -> ``[N, 784]`` (a model-free control map)."""
    img = x.reshape(-1, 1, 28, 28)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([sobel, sobel.T])[:, None]  # [2, 1, 3, 3]
    g = F.conv2d(img, kernels, padding=1)
    return g.pow(2).sum(1).sqrt().reshape(len(x), -1)


def control_maps(x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Orderings that know nothing about the model: random, pixel intensity |x|, and edges."""
    gen = torch.Generator().manual_seed(seed)
    return {"random": torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device),
            "intensity": x.abs(), "edges": edge_map(x)}


@torch.no_grad()
def perturbation_curves(model: nn.Module, x: torch.Tensor, target: torch.Tensor, scores: torch.Tensor,
                        mode: str = "deletion", pixels_per_step: int = 28, batch_size: int = 8192,
                        seed: int = 0) -> torch.Tensor:
    """Target-class probability as pixels are removed (``deletion``: set to 0, most important first)
    or added to a zero image (``insertion``), ``pixels_per_step`` at a time.

    ``x, scores: [N, 784]``, ``target: [N]`` -> ``[N, n_points]`` with ``n_points = 784/pixels_per_step + 1``
    (the first point is the untouched image for deletion, the zero image for insertion).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    n_pix = x.shape[1]
    _check_int("pixels_per_step", pixels_per_step, low=1, high=n_pix, high_name="the number of pixels")
    if n_pix % pixels_per_step:
        raise ValueError(f"pixels_per_step must divide the {n_pix} pixels (even steps for the AUC), "
                         f"got {pixels_per_step}")
    # Ties are broken at random (seeded): shuffle the columns, then sort stably. A constant map thus
    # behaves exactly like a random ordering rather than a raster scan.
    gen = torch.Generator().manual_seed(seed)
    shuffle = torch.rand(scores.shape, generator=gen).argsort(dim=1).to(x.device)  # [N, P] per-row shuffle
    order = shuffle.gather(1, scores.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    rank = torch.empty_like(scores, dtype=torch.long)
    rank.scatter_(1, order, torch.arange(n_pix, device=x.device).expand_as(scores).contiguous())
    counts = list(range(0, n_pix, pixels_per_step)) + [n_pix]
    curves = []
    for c in counts:
        keep = rank >= c if mode == "deletion" else rank < c
        xs = x * keep
        probs = torch.cat([model(xs[i:i + batch_size]).softmax(1) for i in range(0, len(xs), batch_size)])
        curves.append(probs.gather(1, target[:, None])[:, 0])
    return torch.stack(curves, dim=1)


def curve_auc(curves: torch.Tensor) -> np.ndarray:
    """Area under each curve ``[N, T]`` on a [0, 1] x-axis (trapezoid rule) -> ``[N]``."""
    y = curves.double().cpu().numpy()
    return ((y[:, 1:] + y[:, :-1]) / 2).mean(1)


def deletion_insertion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: dict[str, torch.Tensor],
                       pixels_per_step: int = 28, seed: int = 0) -> dict:
    """Deletion and insertion AUCs per method and per control ordering, with CIs and paired Wilcoxon
    tests against the random ordering. Lower deletion AUC and higher insertion AUC are better.

    Attribution maps are ranked by their signed value (strongest positive evidence first).
    """
    controls = control_maps(x, seed)
    orderings = {**{m: v.reshape(len(x), -1) for m, v in maps.items()}, **controls}
    result = {"pixels_per_step": pixels_per_step, "n_images": len(x), "methods": list(maps),
              "controls": list(controls), "deletion": {}, "insertion": {}, "curves": {"deletion": {}, "insertion": {}}}
    aucs = {}
    for mode in ("deletion", "insertion"):
        for name, scores in tqdm(orderings.items(), desc=mode, mininterval=2.0):
            curves = perturbation_curves(model, x, target, scores.to(x), mode, pixels_per_step, seed=seed)
            aucs[mode, name] = curve_auc(curves)
            result["curves"][mode][name] = curves.mean(0).cpu().tolist()
        for name in orderings:
            diff = aucs[mode, name] - aucs[mode, "random"]
            result[mode][name] = {**summarize(aucs[mode, name], seed), "mean_diff_vs_random": float(diff.mean()),
                                  "p_value_vs_random": _wilcoxon_p(diff)}
    return result


def object_focus(maps: dict[str, torch.Tensor], x: torch.Tensor, seed: int = 0) -> dict:
    """Share of total |attribution| on object pixels (x > 0) per method, against the share of object
    pixels in the image (what a uniform map would give)."""
    obj = (x.reshape(len(x), -1) > 0).double().cpu().numpy()
    result = {"object_pixel_share": summarize(obj.mean(1), seed)}
    for m, v in maps.items():
        a = v.reshape(len(x), -1).abs().double().cpu().numpy()
        share = (a * obj).sum(1) / np.maximum(a.sum(1), 1e-12)
        result[m] = summarize(share, seed)
    return result


def randomization_stages(clf: SparseCodeClassifier) -> list[str]:
    """Cascade order for the randomization check: classifier layers top (logits) down, then the
    encoder, then the decoder atoms (which only the decoder-weighted map reads)."""
    n_linear = 1 + sum(isinstance(m, nn.Linear) for m in clf.rest)
    return [f"classifier layer {i}" + (" (logits)" if i == n_linear else "") for i in range(n_linear, 0, -1)] + [
        "encoder", "decoder atoms"]


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


def randomization_check(pipeline: SparseCodePipeline, x: torch.Tensor, target: torch.Tensor, cfg: Config,
                        methods: Sequence[str] = tuple(METHOD_LABELS), seed: int = 0) -> dict:
    """Cascading model-parameter randomization (Adebayo et al. 2018).

    Re-initialises the classifier's layers from the logits down, then the encoder, then the decoder
    atoms, cumulatively; after each stage recomputes every map and reports the Spearman correlation of
    absolute maps with the original ones (mean and CI over images), over all pixels (``spearman_abs``)
    and over object pixels only (``spearman_abs_object``: integrated gradients from a black image is 0
    on every background pixel of any model, which alone keeps its all-pixel similarity high).
    Reference: the same correlation between maps of *different* images under the trained model. A
    faithful method's similarity should fall to about that reference once the model is destroyed.
    """
    import copy

    original = attribute_all(pipeline, x, target, cfg, methods, seed=seed)
    perm = torch.roll(torch.arange(len(x)), 1)
    result = {"stages": randomization_stages(pipeline.clf), "spearman_abs": {m: [] for m in methods},
              "spearman_abs_object": {m: [] for m in methods},
              "random_pair_reference": {m: summarize(rowwise_spearman(
                  original[m].abs().cpu().numpy(), original[m][perm].abs().cpu().numpy()), seed) for m in methods}}
    model = copy.deepcopy(pipeline).eval()
    gen = torch.Generator().manual_seed(seed + 12345)
    obj = (x > 0).cpu().numpy()
    for stage in tqdm(range(len(result["stages"])), desc="randomization", mininterval=2.0):
        _randomize_stage_(model, stage, gen)
        maps = attribute_all(model, x, target, cfg, methods, seed=seed)
        for m in methods:
            a, b = original[m].abs().cpu().numpy(), maps[m].abs().cpu().numpy()
            result["spearman_abs"][m].append(summarize(rowwise_spearman(a, b), seed))
            on_object = [float(rowwise_spearman(a[i:i + 1, o], b[i:i + 1, o])[0]) for i, o in enumerate(obj)]
            result["spearman_abs_object"][m].append(summarize(on_object, seed))
    return result


def path_switch_summary(sae: KSparseAutoencoder, x: torch.Tensor, errors: Sequence[float] | None,
                        seed: int = 0) -> dict:
    """Active-set switches along each image's IG path, and their rank correlation with IG's
    completeness errors ``errors: [N]`` (None to skip the correlation)."""
    from scipy.stats import spearmanr

    switches = count_path_switches(sae, x).numpy()
    result = {**summarize(switches, seed), "share_with_switches": float((switches > 0).mean())}
    if errors is not None and switches.std() > 0 and np.std(errors) > 0:
        result["spearman_with_error_50"] = float(spearmanr(switches, np.asarray(errors)).statistic)
    return result


def run_validation(pipeline: SparseCodePipeline, selection: Selection, cfg: Config, maps: dict[str, torch.Tensor],
                   n_completeness: int = 200, n_randomization: int = 100,
                   n_steps_list: Sequence[int] = (16, 32, 50, 100, 200, 500), seed: int = 0,
                   cross_method: dict | None = None) -> dict:
    """Every faithfulness check on ``selection`` (maps precomputed by ``attribute_all``; pass
    ``cross_method`` if ``cross_method_statistics(maps, seed)`` was already computed).

    Deletion/insertion and object focus use all selected images; the completeness sweep and the
    randomization check (both many attribution passes per image) use evenly spaced subsets of
    ``n_completeness`` and ``n_randomization`` images, balanced over classes since the selection is.
    """
    t0 = time.perf_counter()
    device = next(pipeline.parameters()).device
    x, y = selection.x.to(device), selection.y.to(device)
    if cross_method is None:
        cross_method = cross_method_statistics(maps, seed)
    out = {"n_images": len(x), "cross_method": cross_method}
    out["deletion_insertion"] = deletion_insertion(pipeline, x, y, maps, seed=seed)
    out["object_focus"] = object_focus(maps, x, seed)
    sub = torch.linspace(0, len(x) - 1, min(n_completeness, len(x))).long()
    out["completeness"] = ig_completeness(pipeline, x[sub], y[sub], n_steps_list)
    out["completeness"]["path_switches"] = path_switch_summary(pipeline.sae, x[sub],
                                                               out["completeness"]["per_image_50"], seed)
    sub = torch.linspace(0, len(x) - 1, min(n_randomization, len(x))).long()
    out["randomization"] = randomization_check(pipeline, x[sub], y[sub], cfg, tuple(maps), seed)
    out["seconds"] = time.perf_counter() - t0
    return out



def run_k_sweep(data: FashionMNIST, cfg: Config, device: torch.device, ks: Sequence[int],
                epochs: Sequence[int] = (10, 15), ckpt_dir: str | os.PathLike = "checkpoints",
                n_per_class: int = 20) -> list[dict]:
    """Train (or load) one model pair per ``k`` with ``epochs = (ae_epochs, clf_epochs)`` and measure FVU,
    dead units, accuracy and the deletion AUC of integrated gradients (and of random order) on
    ``n_per_class`` high-confidence images per class."""
    rows = []
    for k in ks:
        kcfg = Config(**{**cfg.to_dict(), "k": int(k), "ae_epochs": int(epochs[0]), "clf_epochs": int(epochs[1])})
        sae, clf, _, metrics = load_or_train(kcfg, data, device, ckpt_dir)
        pipeline = SparseCodePipeline(sae, clf).eval()
        sel = select_high_confidence(sae, clf, data, device, n_per_class, kcfg.confidence_threshold, kcfg.seed)
        x, y = sel.x.to(device), sel.y.to(device)
        ig = integrated_gradients(pipeline, x, y, n_steps=kcfg.ig_steps, method=kcfg.ig_method)
        random_scores = control_maps(x, kcfg.seed)["random"]
        ae = metrics["autoencoder"]
        rows.append({"k": int(k), "fvu": ae["fvu"], "dead_units": ae["dead_units"], "mean_l0": ae["mean_l0"],
                     "test_accuracy": metrics["classifier"]["test_accuracy"],
                     "deletion_auc_integrated": float(curve_auc(perturbation_curves(pipeline, x, y, ig)).mean()),
                     "deletion_auc_random": float(curve_auc(perturbation_curves(pipeline, x, y, random_scores)).mean()),
                     })
    return rows

# --- the unit atlas: statistics of every code unit -------------------------------------------------------

UNIT_TOP_IMAGES = 16  # test images with the largest activation kept per unit
UNIT_QUANTILE_BANDS = ((0.0, 0.5), (0.5, 0.9), (0.9, 1.0))  # bands of a unit's activations on the images it
# fires on (quantile ranges: the lower half, the next 40 %, the top 10 %)
UNIT_BAND_SAMPLES = 4  # random test images drawn from each band (stratified: distinct when the band allows)
UNIT_HIST_BINS = 20  # activation histogram bins per unit, on [0, its largest test activation]
UNIT_COFIRING = 5  # co-firing units listed per unit (largest Jaccard overlap of the test images they fire on)
UNIT_ABLATION_ROWS = 16_384  # head evaluations per batch in the ablation (images x their active units)
UNIT_NEGLIGIBLE_LOGIT = 1e-3  # a unit's description calls a smaller mean logit change "unchanged"
UNIT_CONTRIBUTION_ROWS = 2048  # test images per batch when computing per-unit contributions


@dataclass
class UnitStats:
    """Statistics of every code unit (``H`` units, ``C`` classes), from the codes of the ``N`` test images
    unless a field says train. Image ids index the test set; ``-1`` pads where a unit fires on too few images.
    A unit *fires* on an image when its top-k activation is > 0. NaN marks a value undefined for a unit that
    fires on no test image."""

    classes: list[str]  # [C] class names
    freq_train: np.ndarray  # [H] fraction of training images on which the unit fires
    freq_test: np.ndarray  # [H] fraction of test images on which it fires
    n_fire: np.ndarray  # [H] number of test images on which it fires
    hist: np.ndarray  # [H, UNIT_HIST_BINS] counts of its non-zero test activations, bins on [0, hist_max]
    hist_max: np.ndarray  # [H] largest test activation (0 if it never fires on a test image)
    top_images: np.ndarray  # [H, UNIT_TOP_IMAGES] test ids, largest activation first
    top_values: np.ndarray  # [H, UNIT_TOP_IMAGES] their activations (0 where padded)
    band_images: np.ndarray  # [H, len(UNIT_QUANTILE_BANDS), UNIT_BAND_SAMPLES] random test ids per band
    class_counts: np.ndarray  # [H, C] test images it fires on, per true class
    majority: np.ndarray  # [H] most frequent true class among them (-1 if none)
    purity: np.ndarray  # [H] share of them in the majority class (its precision)
    recall: np.ndarray  # [H] share of the majority class's test images on which it fires
    contribution: np.ndarray  # [H, C] mean decoder-weighted contribution to each class logit (Rescale share of
    # G(z) - G(0), `rescale_contributions`), over the test images where the unit fires
    ablation: np.ndarray  # [H, C] mean change of each class logit when the unit is zeroed, same images
    ablation_accuracy: np.ndarray  # [H] change of accuracy (fraction) on the same images when it is zeroed
    cofiring: np.ndarray  # [H, UNIT_COFIRING] unit ids with the largest Jaccard overlap (-1 pads)
    cofiring_jaccard: np.ndarray  # [H, UNIT_COFIRING] those overlaps
    dead: np.ndarray  # [H] bool: fires on no training and no test image
    descriptions: list[str]  # [H] one line per unit, generated from the numbers above
    seconds: float = 0.0  # wall time of `unit_statistics`

    def majority_value(self, table: np.ndarray) -> np.ndarray:
        """``table: [H, C]`` read at each unit's majority class -> ``[H]`` (NaN for units without one)."""
        rows = np.arange(len(self.majority))
        return np.where(self.majority >= 0, table[rows, np.maximum(self.majority, 0)], np.nan)


def _firing_entries(values: torch.Tensor, indices: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse codes ``values, indices: [N, k]`` -> ``(units, images, activations)``, each ``[E]``, one entry per
    (image, firing unit), sorted by unit, then by activation (largest first)."""
    values, indices = values.detach().cpu().numpy(), indices.detach().cpu().numpy()
    images = np.broadcast_to(np.arange(len(values))[:, None], values.shape)
    fires = values > 0
    units, images, acts = indices[fires], images[fires], values[fires]
    order = np.lexsort((-acts, units))
    return units[order], images[order], acts[order]


def _segment_positions(starts: np.ndarray, counts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Positions ``starts[:, None] + offsets`` (``offsets: [H, n]``) where the offset is inside the unit's
    segment of length ``counts``, else -1."""
    inside = (offsets >= 0) & (offsets < counts[:, None])
    return np.where(inside, starts[:, None] + offsets, -1)


def _gather(array: np.ndarray, positions: np.ndarray, fill) -> np.ndarray:
    """``array[positions]`` with ``fill`` where ``positions == -1``."""
    return np.where(positions >= 0, array[np.maximum(positions, 0)], fill)


def _band_offsets(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[H, bands, samples]`` offsets into each unit's segment (largest activation first): stratified random
    draws from each quantile band of ``UNIT_QUANTILE_BANDS``; repeats (bands shorter than the sample) are -1."""
    out = np.full((len(counts), len(UNIT_QUANTILE_BANDS), UNIT_BAND_SAMPLES), -1)
    strata = np.arange(UNIT_BAND_SAMPLES)
    for b, (low, high) in enumerate(UNIT_QUANTILE_BANDS):
        first = counts - np.round(counts * high).astype(np.int64)  # segments run from the largest activation down
        length = np.round(counts * high).astype(np.int64) - np.round(counts * low).astype(np.int64)
        u = rng.random((len(counts), UNIT_BAND_SAMPLES))
        offsets = first[:, None] + np.floor((strata + u) * length[:, None] / UNIT_BAND_SAMPLES).astype(np.int64)
        repeat = np.concatenate([np.zeros((len(counts), 1), bool), np.diff(offsets, axis=1) == 0], axis=1)
        out[:, b] = np.where((length[:, None] > 0) & ~repeat, offsets, -1)
    return out


def _activation_histograms(units: np.ndarray, acts: np.ndarray, hist_max: np.ndarray) -> np.ndarray:
    """``[H, UNIT_HIST_BINS]`` counts of each unit's activations ``acts: [E]`` on ``[0, hist_max[unit]]``."""
    scale = np.where(hist_max > 0, hist_max, 1.0)[units]
    bins = np.minimum((acts / scale * UNIT_HIST_BINS).astype(np.int64), UNIT_HIST_BINS - 1)
    counts = np.bincount(units * UNIT_HIST_BINS + bins, minlength=len(hist_max) * UNIT_HIST_BINS)
    return counts.reshape(len(hist_max), UNIT_HIST_BINS)


def _class_purity(class_counts: np.ndarray, class_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``class_counts: [H, C]``, ``class_sizes: [C]`` -> majority class ``[H]`` (-1 if none), purity, recall."""
    n_fire = class_counts.sum(1)
    majority = np.where(n_fire > 0, class_counts.argmax(1), -1)
    top = class_counts.max(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.where(n_fire > 0, top / n_fire, np.nan)
        recall = np.where(n_fire > 0, top / class_sizes[np.maximum(majority, 0)], np.nan)
    return majority, purity, recall


def _cofiring(units: np.ndarray, images: np.ndarray, n_images: int, d_hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``UNIT_COFIRING`` partners of every unit by Jaccard overlap of the images they fire on:
    ``(ids: [H, n], jaccard: [H, n])``, ids -1 where the overlap is 0."""
    entries = torch.from_numpy(np.stack([units, images]))
    fires = torch.sparse_coo_tensor(entries, torch.ones(len(units)), (d_hidden, n_images),
                                    check_invariants=True).coalesce()
    both = torch.sparse.mm(fires, fires.to_dense().T).numpy()  # [H, H] images on which both fire
    n = np.diag(both).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.nan_to_num(both / (n[:, None] + n[None, :] - both))
    np.fill_diagonal(jaccard, -1.0)
    n_top = min(UNIT_COFIRING, d_hidden - 1)
    ids = np.argsort(-jaccard, axis=1, kind="stable")[:, :n_top]
    top = np.take_along_axis(jaccard, ids, axis=1)
    return np.where(top > 0, ids, -1), np.maximum(top, 0.0)


@torch.no_grad()
def unit_contribution_sums(clf: SparseCodeClassifier, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``[H, C]``: each unit's decoder-weighted contribution (``rescale_contributions``) to each class logit,
    summed over the images of the sparse codes ``values, indices: [N, k]``."""
    clf.eval()
    d_hidden, n_classes = clf.W1.shape[0], clf.rest[-1].out_features
    sums = torch.zeros(d_hidden, n_classes, device=values.device)
    for i in range(0, len(values), UNIT_CONTRIBUTION_ROWS):
        v, idx = values[i:i + UNIT_CONTRIBUTION_ROWS], indices[i:i + UNIT_CONTRIBUTION_ROWS]
        z = torch.zeros(len(v), d_hidden, device=v.device).scatter(1, idx, v)
        for c in range(n_classes):
            target = torch.full((len(v),), c, dtype=torch.long, device=v.device)
            sums[:, c] += rescale_contributions(clf, z, target).sum(0)
    return sums


@torch.no_grad()
def unit_ablation_sums(clf: SparseCodeClassifier, values: torch.Tensor, indices: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero each firing unit of each image, one at a time (the other units stay as they are), and sum the
    effects per unit: ``(logit change: [H, C], correct-prediction change: [H])`` over the images where it fires.

    ``values, indices: [N, k]`` sparse codes, ``y: [N]`` labels. All ``N * k`` ablated codes go through the
    head in batches: the first layer is updated by subtracting the unit's row, ``h - z_j W1[j]``.
    """
    clf.eval()
    d_hidden, k = clf.W1.shape[0], values.shape[1]
    n_classes = clf.rest[-1].out_features
    dlogit = torch.zeros(d_hidden, n_classes, device=values.device)
    dcorrect = torch.zeros(d_hidden, device=values.device)
    step = max(1, UNIT_ABLATION_ROWS // k)
    for i in range(0, len(values), step):
        v, idx, yb = values[i:i + step], indices[i:i + step], y[i:i + step]
        h = clf.first_layer_sparse(v, idx)  # [b, hidden0]
        base = clf.rest(h)  # [b, C]
        ablated = clf.rest((h[:, None, :] - v[..., None] * clf.W1[idx]).flatten(0, 1)).view(len(v), k, -1)
        correct = (ablated.argmax(-1) == yb[:, None]).float() - (base.argmax(-1) == yb).float()[:, None]
        fires = v > 0
        dlogit.index_add_(0, idx[fires], (ablated - base[:, None, :])[fires])
        dcorrect.index_add_(0, idx[fires], correct[fires])
    return dlogit, dcorrect


def _percent(fraction: float) -> str:
    """'9.1 %', '0.013 %': a fraction as a percentage with two significant digits."""
    return f"{100 * fraction:.2g} %"


def describe_unit(stats: UnitStats, unit: int) -> str:
    """One line about ``unit`` from its statistics, e.g. 'fires on 9.1 % of test images, 92 % of them Trouser;
    zeroing it lowers the Trouser logit by 1.8 (accuracy on them -3.5 points)'."""
    if stats.dead[unit]:
        return "dead: fires on no training and no test image"
    if stats.n_fire[unit] == 0:
        return f"fires on {_percent(stats.freq_train[unit])} of training images and on no test image"
    c = int(stats.majority[unit])
    name = stats.classes[c]
    change = float(stats.ablation[unit, c])
    effect = (f"leaves the {name} logit unchanged" if abs(change) < UNIT_NEGLIGIBLE_LOGIT else
              f"{'lowers' if change < 0 else 'raises'} the {name} logit by {abs(change):.2g}")
    return (f"fires on {_percent(stats.freq_test[unit])} of test images, {stats.purity[unit]:.0%} of them {name}; "
            f"zeroing it {effect} "
            f"(accuracy on them {100 * stats.ablation_accuracy[unit]:+.1f} points)")


@torch.no_grad()
def unit_statistics(pipeline: SparseCodePipeline, data: FashionMNIST, device: torch.device,
                    usage_train=None, seed: int = 0) -> UnitStats:
    """Every statistic of ``UnitStats`` for all units, from the codes of ``data.x_test: [N, 784]`` (and
    ``data.x_train`` for the training frequency, unless ``usage_train: [H]`` passes it in, e.g.
    ``evaluate_autoencoder(...)["unit_usage_train"]``). ``seed`` draws the quantile-band samples."""
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"unit_statistics needs a SparseCodePipeline, got {type(pipeline).__name__}")
    t0 = time.perf_counter()
    sae, clf = pipeline.sae.eval(), pipeline.clf.eval()
    classes = _check_classes(data.classes)
    if len(data.x_test) == 0:
        raise ValueError("unit_statistics needs at least one test image, got none")
    _check_labels(data.y_test, len(data.x_test), len(classes))
    values, indices = encode_dataset(sae, data.x_test, device)
    y = data.y_test.to(device)
    if usage_train is None:
        usage_train = firing_frequency(*encode_dataset(sae, data.x_train, device), sae.d_hidden)
    freq_train = _numpy(usage_train)
    if freq_train.shape != (sae.d_hidden,):
        raise ValueError(f"usage_train must hold one value per unit ({sae.d_hidden}), got {list(freq_train.shape)}")
    units, images, acts = _firing_entries(values, indices)
    n_fire = np.bincount(units, minlength=sae.d_hidden)
    starts = np.cumsum(n_fire) - n_fire
    rng = np.random.default_rng(seed)
    top = _segment_positions(starts, n_fire, np.broadcast_to(np.arange(UNIT_TOP_IMAGES), (sae.d_hidden,
                                                                                          UNIT_TOP_IMAGES)))
    bands = _band_offsets(n_fire, rng)
    band_pos = _segment_positions(starts, n_fire, bands.reshape(sae.d_hidden, -1)).reshape(bands.shape)
    band_pos[bands < 0] = -1
    hist_max = np.zeros(sae.d_hidden, dtype=np.float64)
    np.maximum.at(hist_max, units, acts)
    labels = data.y_test.numpy()
    class_counts = np.bincount(units * len(classes) + labels[images], minlength=sae.d_hidden * len(classes))
    class_counts = class_counts.reshape(sae.d_hidden, len(classes))
    majority, purity, recall = _class_purity(class_counts, np.bincount(labels, minlength=len(classes)))
    denominator = np.where(n_fire > 0, n_fire, np.nan)
    dlogit, dcorrect = unit_ablation_sums(clf, values, indices, y)
    cofiring, jaccard = _cofiring(units, images, len(labels), sae.d_hidden)
    stats = UnitStats(
        classes=classes, freq_train=freq_train, freq_test=n_fire / len(labels), n_fire=n_fire,
        hist=_activation_histograms(units, acts, hist_max), hist_max=hist_max,
        top_images=_gather(images, top, -1), top_values=_gather(acts, top, 0.0),
        band_images=_gather(images, band_pos, -1), class_counts=class_counts,
        majority=majority, purity=purity, recall=recall,
        contribution=_numpy(unit_contribution_sums(clf, values, indices)) / denominator[:, None],
        ablation=_numpy(dlogit) / denominator[:, None], ablation_accuracy=_numpy(dcorrect) / denominator,
        cofiring=cofiring, cofiring_jaccard=jaccard, dead=(n_fire == 0) & (freq_train == 0), descriptions=[])
    stats.descriptions = [describe_unit(stats, j) for j in range(sae.d_hidden)]
    stats.seconds = time.perf_counter() - t0
    return stats


def contribution_ablation_agreement(stats: UnitStats, seed: int = 0) -> dict:
    """How the mean decoder-weighted contribution of each unit to its majority class's logit agrees with the
    logit drop when the unit is zeroed (minus the ablation change), across every unit that fires on a test
    image: Pearson and Spearman correlation with bootstrap 95 % CIs (units resampled), and ``n`` units."""
    contribution = stats.majority_value(stats.contribution)
    drop = -stats.majority_value(stats.ablation)
    keep = np.isfinite(contribution) & np.isfinite(drop)
    pairs = np.stack([contribution[keep], drop[keep]], axis=1)  # [n, 2]
    if len(pairs) < 3:
        raise ValueError(f"the agreement needs at least 3 units that fire on a test image, got {len(pairs)}")
    out = {"n_units": int(len(pairs))}
    for name, corr in (("pearson", _rowwise_pearson), ("spearman", rowwise_spearman)):
        value = float(corr(pairs[None, :, 0], pairs[None, :, 1])[0])
        lo, hi = bootstrap_ci(pairs, seed=seed, statistic=lambda r, corr=corr: corr(r[..., 0], r[..., 1]))
        out[name] = {"value": value, "ci95": [lo, hi]}
    out["same_sign"] = float(np.mean(np.sign(pairs[:, 0]) == np.sign(pairs[:, 1])))
    return out


# =====================================================================================================
# 10. Plotting
# =====================================================================================================
# Every function builds a figure, optionally saves it as a PNG (``save=path``; parent folders are created)
# and returns it, already closed in pyplot: Jupyter shows it exactly once when it is a cell's value or is
# passed to ``display`` (``fig = plot_...(...)`` shows nothing), and dropping it frees it. Signed
# quantities use a diverging colour map centred at 0 with a symmetric scale.

DPI = 110  # resolution of saved PNGs
DIVERGING_CMAP = "RdBu_r"  # signed attributions and decoder atoms: red > 0, white = 0, blue < 0
IMAGE_CMAP = "gray"  # pixel intensities (white object on black background, as in the data)
CONFUSION_CMAP = "Blues"  # row-normalised confusion matrix (values in [0, 1])
MAP_CLIP_PERCENTILE = 99.0  # a map's colour scale ends at this percentile of |values| (outliers saturate)
OVERLAY_ALPHA = 0.9  # opacity of an attribution overlay where |value| reaches the colour scale's end
OBJECT_CONTOUR_COLOR = "gold"  # outline of the object pixels (x > 0)
CI_ALPHA = 0.2  # opacity of confidence bands
PANEL_INCHES = 2.4  # size of one image panel in the attribution comparison
SMALL_PANEL_INCHES = 1.25  # size of one image panel in image grids
COMPARISON_MIN_WIDTH = 12.0  # inches; keeps the statistics row of a comparison readable with one method
ATLAS_COLUMNS = 8  # decoder atoms per row in the feature atlas
USAGE_BINS = 50  # histogram bins for unit usage
ERROR_BINS = 30  # log-spaced histogram bins for per-image completeness errors
LOG_BIN_MARGIN = 1e-6  # widens the last log bin so the largest value falls inside it
LOG_BAR_MARGIN = 2.0  # a log-scale bar chart starts this factor below its smallest bar
LEGEND_HEADROOM = 8.0  # factor above the tallest bar on a log axis that keeps a top legend clear
LOG_MINOR_SUBS = (2.0, 5.0)  # labelled minor ticks on log axes: 2x and 5x each power of 10
LOG_FLOOR = 1e-12  # values drawn on a log axis are clipped to at least this (exact zeros would vanish)
STYLE = "whitegrid"  # seaborn axes style, applied while a figure is built and saved
CONTEXT = "notebook"  # seaborn plotting context
FONT_SCALE = 0.85  # seaborn font scale
METHOD_COLORS = dict(zip(METHOD_LABELS, sns.color_palette("colorblind", len(METHOD_LABELS))))
CONTROL_STYLES = {"random": ("0.3", ":"), "intensity": ("0.5", "--"), "edges": ("0.65", "-.")}  # colour, dashes
CONTROL_LABELS = {"random": "Random order (control)", "intensity": "Pixel intensity (control)",
                  "edges": "Sobel edges (control)"}
QUADRATURE_LABELS = {"gausslegendre": "Gauss-Legendre", "riemann_trapezoid": "trapezoid",
                     "riemann_left": "left Riemann", "riemann_right": "right Riemann",
                     "riemann_middle": "midpoint"}
SHORT_LABELS = {"integrated": "IG", "simple": "Gradient", "smoothgrad": "SmoothGrad", "decoder": "Decoder-w."}
IMAGE_STATS = {"mean_abs": "mean |attr|", "max_abs": "max |attr|", "std": "std"}  # per-image statistics
PAIR_CORRELATIONS = {"spearman_signed": "Spearman, signed", "spearman_abs": "Spearman, |maps|",
                     "pearson_signed": "Pearson, signed", "pearson_abs": "Pearson, |maps|"}
K_SWEEP_PANELS = {"fvu": "FVU (test)", "dead_units": "dead units", "test_accuracy": "test accuracy",
                  "deletion_auc_integrated": "deletion AUC (lower = better)"}
# panel -> (label of its line, key of a dashed reference line, label of that line)
K_SWEEP_REFERENCES = {
    "deletion_auc_integrated": ("Integrated gradients", "deletion_auc_random", CONTROL_LABELS["random"]),
}


# --- shared helpers ----------------------------------------------------------------------------------


def _styled(fn):
    """Build (and save) a figure inside the module's seaborn style without changing global rcParams."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sns.axes_style(STYLE), sns.plotting_context(CONTEXT, font_scale=FONT_SCALE):
            return fn(*args, **kwargs)

    return wrapper


def _new_figure(width: float, height: float) -> Figure:
    """An empty constrained-layout figure of ``width`` x ``height`` inches (``_finish`` closes it in pyplot)."""
    return plt.figure(figsize=(width, height), layout="constrained")


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    """Save ``fig`` at ``DPI`` if ``save`` is a path (parent folders created); return ``fig``.

    Without ``save`` the figure is laid out once here, so its ticks are created in the module's style.
    The figure is closed in pyplot, so a notebook displays it only when it is returned (not twice).
    """
    if save is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        fig.saved_png = buffer.getvalue()  # rendered once: ``show`` displays these bytes
        atomic_write_bytes(save, fig.saved_png)
    else:
        fig.draw_without_rendering()
    plt.close(fig)
    return fig


def _message_figure(title: str, message: str) -> Figure:
    """A small figure that only says ``message`` (for inputs with nothing to plot)."""
    fig = _new_figure(6, 2)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return fig


def _numpy(values) -> np.ndarray:
    """A tensor or array-like as a float64 numpy array (detached, on the CPU)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _as_image(values, name: str = "image") -> np.ndarray:
    """``values: [784]`` (any shape holding 784 numbers) -> ``[28, 28]`` float64 array."""
    arr = _numpy(values)
    if arr.size != IMAGE_SIDE**2:
        raise ValueError(f"{name} must hold {IMAGE_SIDE**2} pixels, got shape {list(arr.shape)}")
    return arr.reshape(IMAGE_SIDE, IMAGE_SIDE)


def _as_maps(values, name: str, n: int | None = None) -> np.ndarray:
    """``values: [N, 784]`` (or ``[N, 28, 28]``...) -> ``[N, 784]`` float64 array; checks ``N == n``."""
    arr = _numpy(values)
    if arr.ndim < 2 or arr[0].size != IMAGE_SIDE**2:
        raise ValueError(f"{name} must have shape [N, {IMAGE_SIDE**2}], got {list(arr.shape)}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} holds {len(arr)} maps but there are {n} images")
    return arr.reshape(len(arr), -1)


def _symmetric_limit(values, percentile: float = 100.0) -> float:
    """Half-width of a colour scale centred at 0: the ``percentile`` of |values| (1.0 if all zero)."""
    magnitude = np.abs(_numpy(values)).ravel()
    limit = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    if limit <= 0:
        limit = float(magnitude.max(initial=0.0))
    return limit if limit > 0 else 1.0


def _log_axis(ax, which: str = "y") -> None:
    """Log scale on ``ax``'s ``which`` axis ('x' or 'y') with plain-number labels at 1-2-5 steps."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=LOG_MINOR_SUBS))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _image_axis(ax) -> None:
    """Strip ticks and grid from an axis that shows an image."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _show_image(ax, image: np.ndarray, title: str | None = None):
    """Draw ``image: [28, 28]`` in grey on [0, 1]; returns the image artist."""
    im = ax.imshow(image, cmap=IMAGE_CMAP, vmin=0.0, vmax=1.0)
    _image_axis(ax)
    if title:
        ax.set_title(title)
    return im


def _show_signed(ax, image: np.ndarray, limit: float, title: str | None = None):
    """Draw signed ``image: [28, 28]`` with the diverging map on ``[-limit, limit]``; returns the artist."""
    im = ax.imshow(image, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit)
    _image_axis(ax)
    if title:
        ax.set_title(title)
    return im


def _label(name: str) -> str:
    """Display name of a method or control ordering."""
    return METHOD_LABELS.get(name, CONTROL_LABELS.get(name, name))


def _color(name: str):
    """Plot colour of a method (controls get their grey)."""
    return METHOD_COLORS.get(name, CONTROL_STYLES.get(name, ("0.5", "-"))[0])


def _ordered(names) -> list[str]:
    """``names`` with methods first (in METHOD_LABELS order), then controls, then anything else."""
    names = list(names)
    known = list(METHOD_LABELS) + list(CONTROL_STYLES)
    return [n for n in known if n in names] + [n for n in names if n not in known]


def _resolve_methods(methods, available, what: str = "maps") -> list[str]:
    """Validated method names. ``methods=None`` means every method of ``available`` (METHOD_LABELS order).

    Raises ValueError for names not in METHOD_LABELS, names missing from ``available``, duplicates or none.
    """
    available = list(available)
    if methods is None:
        chosen = [m for m in METHOD_LABELS if m in available]
    else:
        chosen = [methods] if isinstance(methods, str) else list(methods)
        unknown = [m for m in chosen if m not in METHOD_LABELS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; methods must be among {list(METHOD_LABELS)}")
        missing = [m for m in chosen if m not in available]
        if missing:
            raise ValueError(f"method(s) {missing} are not in the {what} (which hold {available})")
    if not chosen:
        raise ValueError("methods is empty" if methods is not None else
                         f"no methods to plot: the {what} hold {available}, none of them in {list(METHOD_LABELS)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"methods contains duplicates: {chosen}")
    return chosen


def _check_classes(classes) -> list[str]:
    """``classes`` as a non-empty list of names (strings)."""
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or len(classes) == 0:
        raise ValueError(f"classes must be a non-empty sequence of class names, got {classes!r}")
    return list(classes)


def _check_labels(labels, n: int, n_classes: int) -> np.ndarray:
    """``labels: [n]`` integer class ids in ``[0, n_classes)`` as an int64 array."""
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be {n} integer class ids (shape [{n}]), got {lab.dtype} {list(lab.shape)}")
    if n and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes - 1}] (one per class name), got {lab.min()}..{lab.max()}")
    return lab.astype(np.int64)


def _slug(name: str) -> str:
    """File-name-safe version of a class name: 'T-shirt/top' -> 't-shirt-top'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _ci_errors(summaries) -> tuple[np.ndarray, np.ndarray]:
    """Means ``[n]`` and error-bar half-widths ``[2, n]`` from ``summarize`` dicts (``mean``, ``ci95``)."""
    means = np.array([s["mean"] for s in summaries], dtype=np.float64)
    ci = np.array([s["ci95"] for s in summaries], dtype=np.float64).reshape(-1, 2)
    return means, np.clip(np.stack([means - ci[:, 0], ci[:, 1] - means]), 0.0, None)


def _ci_text(summary: dict, fmt: str = ".3f") -> str:
    """'0.123 [0.100, 0.150]' from a ``summarize`` dict."""
    lo, hi = summary["ci95"]
    return f"{summary['mean']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _first_per_class(labels: torch.Tensor, n_classes: int, n: int, names) -> torch.Tensor:
    """Indices ``[n_classes, n]`` of the first ``n`` items of each class in ``labels: [N]``."""
    rows = []
    for c in range(n_classes):
        idx = torch.nonzero(labels == c)[:n, 0]
        if len(idx) < n:
            raise ValueError(f"class {names[c]!r} has only {len(idx)} images, asked for {n}")
        rows.append(idx)
    return torch.stack(rows)


# --- data and training ---------------------------------------------------------------------------------


@_styled
def plot_class_examples(data: FashionMNIST, n_per_class: int = 8, save: str | None = None) -> Figure:
    """The first ``n_per_class`` training images of every class; one row per class, named on the left.

    ``data``: FashionMNIST with ``x_train: [N, 784]``, ``y_train: [N]`` and ``classes: [C]`` names.
    """
    _check_int("n_per_class", n_per_class, low=1)
    classes = list(data.classes)
    idx = _first_per_class(data.y_train, len(classes), n_per_class, classes)
    fig = _new_figure(SMALL_PANEL_INCHES * n_per_class + 2.5, SMALL_PANEL_INCHES * len(classes) + 0.5)
    axes = fig.subplots(len(classes), n_per_class, squeeze=False)
    for c, name in enumerate(classes):
        for ax, i in zip(axes[c], idx[c]):
            im = _show_image(ax, _as_image(data.x_train[i]))
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.colorbar(im, ax=axes, shrink=0.4, label="pixel intensity")
    fig.suptitle(f"Fashion-MNIST: the first {n_per_class} training images of each class")
    return _finish(fig, save)


def _plot_epochs(ax, series: dict, title: str, ylabel: str) -> None:
    """Per-epoch curves ``series: {label: [E] values}`` on ``ax``; says 'no data' when all are empty."""
    n_epochs = max((len(v) for v in series.values() if v), default=0)
    for label, values in series.items():
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=label)
    if n_epochs == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    else:
        ax.set_xlim(0.5, n_epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(series) > 1:
            ax.legend()
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)


def _plot_fvu_aux(ax, ae: dict) -> None:
    """Autoencoder FVU per epoch on ``ax`` and the AuxK loss on a twin y-axis."""
    _plot_epochs(ax, {"FVU": ae.get("fvu")}, "Autoencoder reconstruction", "FVU (train)")
    aux = ae.get("aux_loss") or []
    if aux:
        twin = ax.twinx()
        color = sns.color_palette()[1]
        twin.plot(np.arange(1, len(aux) + 1), aux, marker="s", ls="--", color=color)
        twin.set_ylabel("AuxK loss (dashed)", color=color)
        twin.grid(False)


@_styled
def plot_training_history(history: dict, save: str | None = None) -> Figure:
    """Per-epoch training curves from ``train_models``: autoencoder FVU (+ AuxK loss), dead fraction,
    classifier loss, and classifier train vs test accuracy.

    ``history``: ``{"ae": {"loss", "fvu", "aux_loss", "dead_fraction": [E]}, "clf": {"loss", "train_acc",
    "val_acc": [E]}, "seconds": {"ae", "clf"}}``; missing or empty parts are shown as 'no data', an
    empty history (e.g. from a checkpoint saved without one) as a short note.
    """
    history = history or {}
    ae, clf = history.get("ae") or {}, history.get("clf") or {}
    if not any(ae.values()) and not any(clf.values()):
        note = "This run has no training history (e.g. the models came from a checkpoint saved without one)."
        return _finish(_message_figure("Training history", note), save)
    fig = _new_figure(17, 3.6)
    axes = fig.subplots(1, 4)
    _plot_fvu_aux(axes[0], ae)
    _plot_epochs(axes[1], {"dead": ae.get("dead_fraction")}, "Dead units (AuxK criterion)", "fraction of units")
    _plot_epochs(axes[2], {"loss": clf.get("loss")}, "Classifier loss", "cross-entropy (train)")
    _plot_epochs(axes[3], {"train": clf.get("train_acc"), "test": clf.get("val_acc")},
                 "Classifier accuracy", "accuracy")
    seconds = history.get("seconds") or {}
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    fig.suptitle("Training history" + (f" (wall time: {timing})" if timing else ""))
    return _finish(fig, save)


# --- autoencoder ---------------------------------------------------------------------------------------


@_styled
def plot_reconstructions(sae: KSparseAutoencoder, data: FashionMNIST, device: torch.device,
                         n_per_class: int = 2, save: str | None = None) -> Figure:
    """The first ``n_per_class`` test images of every class (one column per class), each above its
    reconstruction, with the per-image MSE (mean over 784 pixels).

    ``sae``: the autoencoder (on ``device``); ``data``: FashionMNIST (``x_test: [N, 784]``, ``y_test: [N]``).
    """
    _check_int("n_per_class", n_per_class, low=1)
    classes = list(data.classes)
    idx = _first_per_class(data.y_test, len(classes), n_per_class, classes)  # [C, n]
    x = data.x_test[idx.reshape(-1)]
    with torch.no_grad():
        x_hat = sae(x.to(device)).cpu().reshape(len(classes), n_per_class, -1)
    x = x.reshape(len(classes), n_per_class, -1)
    mse = (x_hat - x).pow(2).mean(-1)  # [C, n]
    fig = _new_figure(SMALL_PANEL_INCHES * len(classes) + 2.5, 2.4 * SMALL_PANEL_INCHES * n_per_class + 0.6)
    axes = fig.subplots(2 * n_per_class, len(classes), squeeze=False)
    for c, name in enumerate(classes):
        axes[0, c].set_title(name)
        for i in range(n_per_class):
            im = _show_image(axes[2 * i, c], _as_image(x[c, i]))
            _show_image(axes[2 * i + 1, c], _as_image(x_hat[c, i].clamp(0, 1)))
            axes[2 * i + 1, c].set_xlabel(f"MSE {mse[c, i]:.4f}")
    for i in range(n_per_class):
        axes[2 * i, 0].set_ylabel("original")
        axes[2 * i + 1, 0].set_ylabel("reconstruction")
    fig.colorbar(im, ax=axes, shrink=0.5, label="pixel intensity (reconstructions clipped to [0, 1])")
    fig.suptitle(f"Reconstructions with k = {sae.k} active units (mean MSE of these images {mse.mean():.4f})")
    return _finish(fig, save)


def _usage_histogram(ax, usage: np.ndarray) -> None:
    """Histogram of unit usage ``usage: [H]`` (fractions) on ``ax``, counts on a log scale."""
    ax.hist(100 * usage, bins=USAGE_BINS, color=sns.color_palette()[0])
    ax.set_yscale("log")
    n_never = int((usage == 0).sum())
    ax.set(xlabel="unit usage: % of training images on which the unit fires", ylabel="units (log scale)",
           title=f"Usage of all {len(usage)} units ({n_never} never fire on a training image; "
                 f"median usage {100 * np.median(usage):.2f} %)")


@_styled
def plot_feature_atlas(sae: KSparseAutoencoder, usage, n_units: int = 32, save: str | None = None) -> Figure:
    """Decoder atoms (rows of ``sae.W_dec: [H, 784]``) of the ``n_units`` most used units, shared
    diverging scale, titled with unit id and usage; below them a histogram of every unit's usage.

    ``usage: [H]`` fraction of training images on which each unit fires
    (``evaluate_autoencoder(...)["unit_usage_train"]``).
    """
    usage = _numpy(usage)
    atoms_all = _numpy(sae.W_dec)
    if usage.shape != (len(atoms_all),):
        raise ValueError(f"usage must hold one value per unit ({len(atoms_all)}), got shape {list(usage.shape)}")
    _check_int("n_units", n_units, low=1, high=len(atoms_all), high_name="the number of units")
    order = np.argsort(-usage, kind="stable")[:n_units]
    limit = _symmetric_limit(atoms_all[order])
    n_cols = min(ATLAS_COLUMNS, n_units)
    n_rows = -(-n_units // n_cols)
    fig = _new_figure(SMALL_PANEL_INCHES * n_cols + 1.5, 1.45 * SMALL_PANEL_INCHES * n_rows + 3.0)
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1] * n_rows + [1.6])
    atom_axes = []
    for i, unit in enumerate(order):
        ax = fig.add_subplot(grid[i // n_cols, i % n_cols])
        im = _show_signed(ax, atoms_all[unit].reshape(IMAGE_SIDE, IMAGE_SIDE), limit)
        ax.set_title(f"unit {unit}\n{100 * usage[unit]:.1f} %", fontsize="small")
        atom_axes.append(ax)
    fig.colorbar(im, ax=atom_axes, shrink=0.6, label="decoder weight")
    _usage_histogram(fig.add_subplot(grid[n_rows, :]), usage)
    fig.suptitle(f"Decoder atoms of the {n_units} most used units (title: unit id, % of training images)")
    return _finish(fig, save)


def _top_units_per_class(contrib: np.ndarray, labels: np.ndarray, n_classes: int, n_units: int) -> dict:
    """``{class: [(unit, mean contribution)] * n_units}`` from ``contrib: [N, H]``, ``labels: [N]``
    (classes without images are left out)."""
    top = {}
    for c in range(n_classes):
        if (labels == c).any():
            mean = contrib[labels == c].mean(0)
            top[c] = [(int(j), float(mean[j])) for j in np.argsort(-mean, kind="stable")[:n_units]]
    return top


@_styled
def plot_class_units(contributions: torch.Tensor, labels: torch.Tensor, sae: KSparseAutoencoder,
                     classes, n_units: int = 5, save: str | None = None) -> Figure:
    """For every class, the atoms of the ``n_units`` units with the largest mean contribution over
    that class's images; one row per class, titled 'unit j, c̄ = +value'.

    ``contributions: [N, H]`` per-unit contributions to the target logit
    (``decoder_weighted(..., return_contributions=True)[1]``); ``labels: [N]`` class ids; ``classes: [C]`` names.
    """
    contrib = _numpy(contributions)
    atoms = _numpy(sae.W_dec)
    if contrib.ndim != 2 or contrib.shape[1] != len(atoms):
        raise ValueError(f"contributions must have shape [N, {len(atoms)}], got {list(contrib.shape)}")
    classes = _check_classes(classes)
    lab = _check_labels(labels, len(contrib), len(classes))
    _check_int("n_units", n_units, low=1, high=len(atoms), high_name="the number of units")
    top = _top_units_per_class(contrib, lab, len(classes), n_units)
    limit = _symmetric_limit(atoms[[j for units in top.values() for j, _ in units]]) if top else 1.0
    fig = _new_figure(1.35 * SMALL_PANEL_INCHES * n_units + 2.8, 1.2 * SMALL_PANEL_INCHES * len(classes) + 0.6)
    axes = fig.subplots(len(classes), n_units, squeeze=False)
    for c, name in enumerate(classes):
        for i, ax in enumerate(axes[c]):
            _image_axis(ax)
            if c in top:
                j, value = top[c][i]
                im = _show_signed(ax, atoms[j].reshape(IMAGE_SIDE, IMAGE_SIDE), limit)
                ax.set_title(f"unit {j}, c̄ = {value:+.2f}", fontsize="small")
        axes[c, 0].set_ylabel(f"{name}\n(n = {(lab == c).sum()})", rotation=0, ha="right", va="center")
    if top:
        fig.colorbar(im, ax=axes, shrink=0.4, label="decoder weight")
    fig.suptitle(f"Top {n_units} units per class by mean contribution c̄ to the class logit (decoder atoms)")
    return _finish(fig, save)


# --- classifier --------------------------------------------------------------------------------------


def _per_class_accuracy(metrics_clf: dict, classes: list[str], confusion: np.ndarray) -> np.ndarray:
    """Per-class accuracy ``[C]`` in ``classes`` order (from the metrics, else from the confusion matrix)."""
    stored = metrics_clf.get("per_class_accuracy") or {}
    if all(name in stored for name in classes):
        return np.array([stored[name] for name in classes], dtype=np.float64)
    return np.diag(confusion) / np.maximum(confusion.sum(1), 1)


@_styled
def plot_confusion_matrix(metrics_clf: dict, classes, save: str | None = None) -> Figure:
    """Row-normalised confusion matrix (rows = true class) as an annotated heatmap, and per-class accuracy.

    ``metrics_clf``: ``evaluate_classifier`` output (``confusion_matrix: [C][C]`` counts, ``test_accuracy``,
    ``per_class_accuracy: {name: acc}``); ``classes: [C]`` names.
    """
    classes = _check_classes(classes)
    confusion = np.asarray(metrics_clf["confusion_matrix"], dtype=np.float64)
    if confusion.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion_matrix must be {len(classes)} x {len(classes)} (one row per class name), "
                         f"got {list(confusion.shape)}")
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig = _new_figure(15, 7)
    ax_cm, ax_bar = fig.subplots(1, 2, width_ratios=[2.6, 1])
    sns.heatmap(rates, ax=ax_cm, annot=True, fmt=".2f", cmap=CONFUSION_CMAP, vmin=0, vmax=1, square=True,
                xticklabels=classes, yticklabels=classes, annot_kws={"size": "x-small"},
                cbar_kws={"label": "share of the true class's test images", "shrink": 0.8})
    ax_cm.set(xlabel="predicted class", ylabel="true class")
    ax_cm.tick_params(axis="x", labelrotation=45)
    accuracy = metrics_clf.get("test_accuracy", float(np.trace(confusion) / max(confusion.sum(), 1)))
    ax_cm.set_title(f"Confusion matrix, row-normalised (test accuracy {accuracy:.1%})")
    per_class = _per_class_accuracy(metrics_clf, classes, confusion)
    ax_bar.barh(classes, per_class, color=sns.color_palette()[0])
    ax_bar.invert_yaxis()
    ax_bar.axvline(accuracy, color="0.3", ls="--", label=f"overall {accuracy:.1%}")
    for y, value in enumerate(per_class):
        ax_bar.text(value, y, f" {value:.1%}", va="center", fontsize="small")
    ax_bar.set(xlim=(0, 1.15), xlabel="accuracy", title="Per-class test accuracy")
    ax_bar.legend(loc="lower right")
    return _finish(fig, save)


# --- attribution maps: one image -------------------------------------------------------------------------


def image_attribution_stats(image: torch.Tensor, maps: dict, methods=None) -> dict:
    """Per-method statistics of one image's maps: ``image: [784]``, ``maps``: method -> ``[784]``.

    Returns ``{method: {"mean_abs", "max_abs", "std", "object_share"}}``; ``object_share`` is the share
    of sum |attr| on object pixels (``image > 0``), as in ``object_focus``.
    """
    methods = _resolve_methods(methods, maps)
    obj = _as_image(image).ravel() > 0
    stats = {}
    for m in methods:
        a = _as_image(maps[m], f"maps[{m!r}]").ravel()
        total = np.abs(a).sum()
        stats[m] = {"mean_abs": float(np.abs(a).mean()), "max_abs": float(np.abs(a).max()), "std": float(a.std()),
                    "object_share": float(np.abs(a[obj]).sum() / total) if total > 0 else 0.0}
    return stats


def _image_spearman(maps: dict, methods: list[str]) -> np.ndarray:
    """``[M, M]`` Spearman correlations of the absolute maps (``[784]`` each) of one image."""
    arrays = [np.abs(_as_image(maps[m]).ravel())[None] for m in methods]
    corr = np.eye(len(methods))
    for i in range(len(methods)):
        for j in range(i + 1, len(methods)):
            corr[i, j] = corr[j, i] = rowwise_spearman(arrays[i], arrays[j])[0]
    return corr


def _comparison_maps(fig, grid, image: np.ndarray, maps: dict, methods: list[str]) -> None:
    """Rows 1-2 of the comparison: the image and each signed map, then the object outline and overlays."""
    mask = image > 0
    cbar = {"shrink": 0.85, "pad": 0.02}
    ax = fig.add_subplot(grid[0, 0])
    fig.colorbar(_show_image(ax, image, "Input image"), ax=ax, label="pixel intensity", **cbar)
    ax = fig.add_subplot(grid[1, 0])
    im = _show_image(ax, image, f"Object pixels (x > 0): {mask.mean():.0%}")
    ax.contour(mask, levels=[0.5], colors=OBJECT_CONTOUR_COLOR, linewidths=1.2)
    fig.colorbar(im, ax=ax, label="pixel intensity", **cbar)
    for col, m in enumerate(methods, start=1):
        a = _as_image(maps[m], f"maps[{m!r}]")
        limit = _symmetric_limit(a, MAP_CLIP_PERCENTILE)
        ax = fig.add_subplot(grid[0, col])
        fig.colorbar(_show_signed(ax, a, limit, _label(m)), ax=ax, label="attribution", **cbar)
        ax = fig.add_subplot(grid[1, col])
        _show_image(ax, image, f"{_label(m)} on image")
        alpha = OVERLAY_ALPHA * np.clip(np.abs(a) / limit, 0, 1)
        overlay = ax.imshow(a, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, alpha=alpha)
        fig.colorbar(overlay, ax=ax, label="attribution (opacity ~ |attr|)", **cbar)


def _comparison_stat_bars(ax_mag, ax_obj, stats: dict, methods: list[str], object_share: float) -> None:
    """Row 3 left: magnitude statistics per method (log scale) and the share of |attr| on the object."""
    x, width = np.arange(len(methods)), 0.8 / len(IMAGE_STATS)
    shades = sns.color_palette("Greys", len(IMAGE_STATS) + 1)[1:]
    values = np.array([[max(stats[m][key], LOG_FLOOR) for m in methods] for key in IMAGE_STATS])  # [S, M]
    for i, name in enumerate(IMAGE_STATS.values()):
        ax_mag.bar(x + (i - (len(IMAGE_STATS) - 1) / 2) * width, values[i], width, color=shades[i], label=name)
    _log_axis(ax_mag)
    ax_mag.set_ylim(values.min() / LOG_BAR_MARGIN, values.max() * LEGEND_HEADROOM)
    ax_mag.legend(fontsize="small", ncol=len(IMAGE_STATS), loc="upper center")
    ax_mag.set(ylabel="value (log scale)", title="Map statistics (this image)")
    ax_obj.bar(x, [stats[m]["object_share"] for m in methods], 0.6, color=[_color(m) for m in methods])
    ax_obj.axhline(object_share, color="0.3", ls="--", label=f"object pixels {object_share:.0%}")
    ax_obj.set(ylim=(0, 1), ylabel="share of |attr| on object", title="Attribution on the object")
    ax_obj.legend(fontsize="small", loc="upper right")
    for ax in (ax_mag, ax_obj):
        ax.set_xlim(-0.75, len(methods) - 0.25)
        ax.set_xticks(x, [_label(m) for m in methods], rotation=30, ha="right")


def _correlation_heatmap(ax, corr: np.ndarray, methods: list[str], title: str) -> None:
    """Annotated ``[M, M]`` correlation heatmap on [-1, 1] with the diverging map."""
    sns.heatmap(corr, ax=ax, vmin=-1, vmax=1, center=0, cmap=DIVERGING_CMAP, annot=True, fmt=".2f", square=True,
                xticklabels=[SHORT_LABELS.get(m, m) for m in methods], yticklabels=[_label(m) for m in methods],
                cbar_kws={"label": "Spearman ρ", "shrink": 0.8})
    ax.tick_params(axis="x", labelrotation=30)
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_title(title)


@_styled
def plot_attribution_comparison(image: torch.Tensor, maps: dict, label: str, confidence: float,
                                stats: dict | None = None, methods=None, save: str | None = None) -> Figure:
    """The three-row comparison of one image's attribution maps.

    Row 1: the image and each method's signed map; row 2: the object outline (x > 0) and each map over
    the grey image; row 3: per-method statistics and the Spearman matrix of |maps| between methods.
    ``image: [784]``; ``maps``: method -> ``[784]``; ``label``: class name; ``confidence``: softmax
    probability; ``stats``: ``image_attribution_stats`` output (computed when None); ``methods``: a
    subset of ``maps`` (default: all), 1 to 4 names from METHOD_LABELS.
    """
    methods = _resolve_methods(methods, maps)
    img = _as_image(image)
    stats = image_attribution_stats(img, maps, methods) if stats is None else stats
    missing = [m for m in methods if m not in stats]
    if missing:
        raise ValueError(f"stats has no entry for method(s) {missing}")
    n_cols = len(methods) + 1
    fig = _new_figure(max(COMPARISON_MIN_WIDTH, PANEL_INCHES * 1.25 * n_cols), 3.6 * PANEL_INCHES)
    grid = fig.add_gridspec(3, n_cols, height_ratios=[1, 1, 1.5])
    _comparison_maps(fig, grid, img, maps, methods)
    ratios = [1.2, 0.9, 1.2][:3 if len(methods) > 1 else 2]
    bottom = grid[2, :].subgridspec(1, len(ratios), width_ratios=ratios)
    _comparison_stat_bars(fig.add_subplot(bottom[0]), fig.add_subplot(bottom[1]), stats, methods,
                          float((img > 0).mean()))
    if len(methods) > 1:  # one method has no agreement to show
        _correlation_heatmap(fig.add_subplot(bottom[2]), _image_spearman(maps, methods), methods,
                             "Agreement: Spearman ρ of |maps|")
    fig.suptitle(f"{label} (model confidence {confidence:.1%})", fontsize="large")
    return _finish(fig, save)


def plot_comparison_grid(selection: Selection, maps: dict, classes, methods=None,
                         max_samples_per_class: int = 1, save_dir: str | None = None) -> list[Figure]:
    """``plot_attribution_comparison`` for the first ``max_samples_per_class`` selected images of each class.

    ``selection``: ``Selection`` (``x: [N, 784]``, ``y: [N]``, ``confidence: [N]``); ``maps``: method ->
    ``[N, 784]``; ``classes: [C]`` names. With ``save_dir`` each figure is saved as
    ``{save_dir}/comparison_{class-slug}_{i}.png``. Returns the figures (class order).
    """
    classes = _check_classes(classes)
    _check_int("max_samples_per_class", max_samples_per_class, low=1)
    methods = _resolve_methods(methods, maps)
    arrays = {m: _as_maps(maps[m], f"maps[{m!r}]", len(selection.x)) for m in methods}
    labels = _check_labels(selection.y, len(selection.x), len(classes))
    figures = []
    for c, name in enumerate(classes):
        for i, idx in enumerate(np.flatnonzero(labels == c)[:max_samples_per_class]):
            save = None if save_dir is None else Path(save_dir) / f"comparison_{_slug(name)}_{i}.png"
            figures.append(plot_attribution_comparison(
                selection.x[idx], {m: a[idx] for m, a in arrays.items()}, name,
                float(selection.confidence[idx]), methods=methods, save=save))
    return figures


# --- attribution maps: many images ----------------------------------------------------------------------


@_styled
def plot_class_average_maps(maps: dict, labels: torch.Tensor, classes, methods=None,
                            save: str | None = None) -> Figure:
    """Mean signed map of every class (columns) for every method (rows); one symmetric colour scale
    and colour bar per row.

    ``maps``: method -> ``[N, 784]``; ``labels: [N]`` class ids; ``classes: [C]`` names.
    """
    methods = _resolve_methods(methods, maps)
    classes = _check_classes(classes)
    n = len(_as_maps(maps[methods[0]], f"maps[{methods[0]!r}]"))
    lab = _check_labels(labels, n, len(classes))
    fig = _new_figure(SMALL_PANEL_INCHES * len(classes) + 3.2, 1.35 * SMALL_PANEL_INCHES * len(methods) + 0.8)
    axes = fig.subplots(len(methods), len(classes), squeeze=False)
    for r, m in enumerate(methods):
        arr = _as_maps(maps[m], f"maps[{m!r}]", n)
        means = {c: arr[lab == c].mean(0) for c in range(len(classes)) if (lab == c).any()}
        limit = _symmetric_limit(np.stack(list(means.values()))) if means else 1.0
        for c, ax in enumerate(axes[r]):
            _image_axis(ax)
            if c in means:
                im = _show_signed(ax, means[c].reshape(IMAGE_SIDE, IMAGE_SIDE), limit)
            if r == 0:
                ax.set_title(f"{classes[c]}\n(n = {(lab == c).sum()})", fontsize="small")
        axes[r, 0].set_ylabel(_label(m).replace(" ", "\n", 1), rotation=0, ha="right", va="center")
        if means:
            fig.colorbar(im, ax=axes[r, :], shrink=0.9, pad=0.01, label="mean attribution")
    fig.suptitle("Class-average signed attribution maps (one colour scale per method)")
    return _finish(fig, save)


def _pair_entries(cross_stats: dict, methods: list[str]) -> list[tuple[str, dict]]:
    """``[(display label, entry)]`` of every method pair in ``cross_stats["pairs"]``, in ``methods`` order."""
    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            entry = cross_stats["pairs"].get(f"{a}|{b}") or cross_stats["pairs"].get(f"{b}|{a}")
            if entry is None:
                raise ValueError(f"cross_stats has no statistics for the pair {a!r} / {b!r}")
            out.append((f"{_label(a)}\nvs {_label(b)}", entry))
    return out


def _pair_correlation_points(ax, pairs: list[tuple[str, dict]]) -> None:
    """Mean per-image correlations with 95 % CIs, one row per pair, one marker per correlation kind."""
    offsets = np.linspace(-0.3, 0.3, len(PAIR_CORRELATIONS))
    for off, (key, name) in zip(offsets, PAIR_CORRELATIONS.items()):
        means, err = _ci_errors([entry[key] for _, entry in pairs])
        ax.errorbar(means, np.arange(len(pairs)) + off, xerr=err, fmt="o", capsize=3, label=name)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(range(len(pairs)), [label for label, _ in pairs])
    ax.invert_yaxis()
    ax.set(xlim=(-1, 1), xlabel="mean per-image correlation (95 % CI)", title="Correlation between methods")
    ax.legend(fontsize="small", loc="lower left")


@_styled
def plot_correlation_summary(cross_stats: dict, methods, save: str | None = None) -> Figure:
    """Agreement between methods over all images: per pair the mean Spearman and Pearson correlation
    (signed and on |maps|) with 95 % CIs, the top-1 % pixel IoU, and the matrix of Spearman on |maps|.

    ``cross_stats``: ``cross_method_statistics`` output; ``methods``: at least two names from METHOD_LABELS.
    """
    methods = _resolve_methods(methods, cross_stats.get("per_method", {}), "cross-method statistics")
    if len(methods) < 2:
        raise ValueError(f"plot_correlation_summary needs at least two methods, got {methods}")
    pairs = _pair_entries(cross_stats, methods)
    fig = _new_figure(18, max(5.0, 1.0 * len(pairs) + 2))
    ax_corr, ax_iou, ax_mat = fig.subplots(1, 3, width_ratios=[1.5, 0.8, 1.1])
    _pair_correlation_points(ax_corr, pairs)
    means, err = _ci_errors([entry["top1pct_iou"] for _, entry in pairs])
    ax_iou.barh(np.arange(len(pairs)), means, xerr=err, capsize=3, color=sns.color_palette()[4])
    ax_iou.set_yticks(range(len(pairs)), [])
    ax_iou.invert_yaxis()
    ax_iou.set(xlim=(0, 1), xlabel="IoU of the top 1 % pixels (95 % CI)", title="Top-pixel overlap")
    _correlation_heatmap(ax_mat, correlation_matrix(cross_stats, methods, "spearman_abs"), methods,
                         "Mean Spearman ρ of |maps|")
    n = pairs[0][1]["spearman_abs"].get("n")
    fig.suptitle("Agreement between attribution methods" + (f" over {n} images" if n else ""))
    return _finish(fig, save)


# --- faithfulness checks -------------------------------------------------------------------------------


def _perturbation_panel(ax, di: dict, mode: str, names: list[str]) -> None:
    """Mean target-probability curve of every ordering in ``names`` for ``mode`` on ``ax``."""
    for name in names:
        y = np.asarray(di["curves"][mode][name], dtype=np.float64)
        color, dashes = CONTROL_STYLES.get(name, (_color(name), "-"))
        ax.plot(np.linspace(0, 1, len(y)), y, color=color, ls=dashes, lw=1.8 if dashes == "-" else 1.4,
                label=f"{_label(name)}: AUC {_ci_text(di[mode][name])}")
    verb = "removed (set to 0)" if mode == "deletion" else "added to a black image"
    better = "lower" if mode == "deletion" else "higher"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"fraction of pixels {verb}, most important first",
           ylabel="target-class probability (mean)", title=f"{mode.capitalize()} ({better} AUC = better)")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16))


def _auc_bars(ax, di: dict, names: list[str]) -> None:
    """Deletion and insertion AUC (mean, 95 % CI) per ordering as grouped horizontal bars."""
    y = np.arange(len(names))
    for off, mode in zip((-0.2, 0.2), ("deletion", "insertion")):
        means, err = _ci_errors([di[mode][name] for name in names])
        ax.barh(y + off, means, 0.4, xerr=err, capsize=2, label=mode)
    ax.set_yticks(y, [_label(n) for n in names])
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="AUC (95 % CI)", title="Area under the curves")
    ax.legend(fontsize="small", loc="lower right")


@_styled
def plot_deletion_insertion(di: dict, save: str | None = None) -> Figure:
    """Deletion and insertion curves (methods solid, control orderings dashed grey) with AUC and CI in
    the legend, and the AUCs of both modes as bars with 95 % CIs.

    ``di``: ``deletion_insertion`` output: ``curves[mode][name]: [T]`` mean curves and
    ``{mode}[name]`` AUC summaries (``mean``, ``ci95``) for mode in ('deletion', 'insertion').
    """
    names = _ordered(di["curves"]["deletion"])
    for mode in ("deletion", "insertion"):
        missing = [n for n in names if n not in di["curves"][mode] or n not in di[mode]]
        if missing:
            raise ValueError(f"deletion_insertion result lacks {mode} curves or AUCs for {missing}")
    fig = _new_figure(19, 5.2 + 0.22 * len(names))
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.9])
    _perturbation_panel(axes[0], di, "deletion", names)
    _perturbation_panel(axes[1], di, "insertion", names)
    _auc_bars(axes[2], di, names)
    n = di.get("n_images")
    fig.suptitle("Faithfulness: deletion and insertion" + (f" ({n} images, " if n else " (")
                 + f"{di.get('pixels_per_step', '?')} pixels per step)")
    return _finish(fig, save)


def _steps_table(rows: dict) -> tuple[np.ndarray, list[dict]]:
    """``{n_steps: entry}`` (int or, after JSON, str keys) -> sorted step counts ``[S]`` and entries."""
    items = sorted((int(n), entry) for n, entry in rows.items())
    return np.array([n for n, _ in items]), [entry for _, entry in items]


def _completeness_histogram(ax, errors: np.ndarray, tolerance: float | None, method: str, switches) -> None:
    """Histogram of per-image relative errors at 50 steps (log-spaced bins) with the path-switch summary."""
    errors = np.clip(errors, LOG_FLOOR, None)
    ends = np.log10([min(errors.min(), tolerance or np.inf), max(errors.max(), tolerance or 0.0)])
    bins = np.logspace(ends[0], ends[1] + LOG_BIN_MARGIN, ERROR_BINS)
    ax.hist(errors, bins=bins, color=sns.color_palette()[0])
    _log_axis(ax, "x")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if tolerance is not None:
        ax.axvline(tolerance, color="0.3", ls="--", label=f"tolerance {tolerance:g}")
        ax.legend(fontsize="small")
    ax.set(xlabel="relative completeness error", ylabel="images",
           title=f"Per-image error at 50 steps ({QUADRATURE_LABELS.get(method, method)})")
    if switches:
        lines = [f"active-set switches on the path: mean {switches['mean']:.1f}"]
        if "share_with_switches" in switches:
            lines.append(f"images with a switch: {switches['share_with_switches']:.0%}")
        if "spearman_with_error_50" in switches:
            lines.append(f"Spearman(switches, error): {switches['spearman_with_error_50']:+.2f}")
        ax.text(0.02, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize="small",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})


@_styled
def plot_completeness(comp: dict, save: str | None = None) -> Figure:
    """Integrated-gradients completeness vs the number of steps: median relative error (log-log) and
    share of images within tolerance per quadrature rule, plus (if present) the per-image errors at 50 steps.

    ``comp``: ``ig_completeness`` output: ``table[method][n_steps] = {"median_rel_error",
    "share_within_tolerance", ...}``, ``tolerance``, ``per_image_50: [N] | None``, optional ``path_switches``.
    """
    table, tolerance = comp["table"], comp.get("tolerance")
    per_image = comp.get("per_image_50")
    fig = _new_figure(6 * (2 + (per_image is not None)), 4.6)
    axes = fig.subplots(1, 2 + (per_image is not None))
    for method, rows in table.items():
        steps, entries = _steps_table(rows)
        label = QUADRATURE_LABELS.get(method, method)
        axes[0].plot(steps, [max(e["median_rel_error"], LOG_FLOOR) for e in entries], marker="o", label=label)
        axes[1].plot(steps, [e["share_within_tolerance"] for e in entries], marker="o", label=label)
    _log_axis(axes[0], "y")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.xaxis.set_minor_locator(NullLocator())
    if tolerance is not None:
        axes[0].axhline(tolerance, color="0.3", ls="--", label=f"tolerance {tolerance:g}")
    axes[0].set(xlabel="integration steps", ylabel="median |Σ attr − ΔF| / |ΔF|", title="Completeness error")
    axes[1].set(xlabel="integration steps", ylabel="share of images", ylim=(0, 1.02),
                title=f"Images within tolerance{f' ({tolerance:g})' if tolerance is not None else ''}")
    for ax in axes[:2]:
        ax.legend(fontsize="small")
    if per_image is not None:
        _completeness_histogram(axes[2], _numpy(per_image), tolerance, next(iter(table)), comp.get("path_switches"))
    fig.suptitle("Integrated gradients: does the attribution sum to F(x) − F(0)?")
    return _finish(fig, save)


@_styled
def plot_randomization(rand: dict, save: str | None = None) -> Figure:
    """Cascading randomization: Spearman correlation of |maps| with the trained model's maps after each
    cumulative randomization stage (1.0 at 'original'), with 95 % CI bands; dashed lines mark each
    method's reference (maps of different images under the trained model).

    ``rand``: ``randomization_check`` output: ``stages: [S]`` labels, ``spearman_abs[method]: [S]`` summaries,
    ``random_pair_reference[method]`` summary.
    """
    stages = ["original"] + list(rand["stages"])
    x = np.arange(len(stages))
    fig = _new_figure(12.5, 5.5)
    ax = fig.add_subplot()
    for m in _ordered(rand["spearman_abs"]):
        summaries = rand["spearman_abs"][m]
        if len(summaries) != len(stages) - 1:
            raise ValueError(f"randomization result for {m!r} has {len(summaries)} stages, expected {len(stages) - 1}")
        means, err = _ci_errors(summaries)
        means = np.concatenate([[1.0], means])
        err = np.concatenate([[[0.0], [0.0]], err], axis=1)
        ax.plot(x, means, marker="o", color=_color(m), label=_label(m))
        ax.fill_between(x, means - err[0], means + err[1], color=_color(m), alpha=CI_ALPHA)
        ref = rand.get("random_pair_reference", {}).get(m)
        if ref is not None:
            ax.axhline(ref["mean"], color=_color(m), ls="--", lw=1)
    ax.plot([], [], color="0.3", ls="--", lw=1, label="reference: maps of different images")
    ax.set_xticks(x, stages, rotation=30, ha="right")
    ax.set(ylim=(min(-0.05, ax.get_ylim()[0]), 1.05), xlabel="randomised up to (cumulative, top layer first)",
           ylabel="Spearman ρ of |maps| with the original", title="Model-parameter randomization check")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(fig, save)


@_styled
def plot_object_focus(focus: dict, save: str | None = None) -> Figure:
    """Share of |attribution| on object pixels (x > 0) per method with 95 % CIs, against the share of
    object pixels (what a uniform map would give), drawn as a dashed line with its CI band.

    ``focus``: ``object_focus`` output: ``object_pixel_share`` and one summary (``mean``, ``ci95``) per method.
    """
    methods = _ordered(k for k in focus if k != "object_pixel_share")
    if not methods:
        raise ValueError("focus holds no method results (only 'object_pixel_share')")
    means, err = _ci_errors([focus[m] for m in methods])
    fig = _new_figure(7, 4.8)
    ax = fig.add_subplot()
    ax.bar(range(len(methods)), means, yerr=err, capsize=4, color=[_color(m) for m in methods])
    base = focus["object_pixel_share"]
    ax.axhline(base["mean"], color="0.3", ls="--", label=f"object pixels: {_ci_text(base, '.2f')}")
    ax.axhspan(*base["ci95"], color="0.3", alpha=CI_ALPHA)
    ax.set_xticks(range(len(methods)), [_label(m) for m in methods], rotation=20, ha="right")
    ax.set(ylim=(0, 1), ylabel="share of |attribution| on object pixels",
           title=f"Attribution on the object ({base.get('n', '?')} images; 95 % CI)")
    ax.legend(loc="lower right", fontsize="small")
    return _finish(fig, save)


@_styled
def plot_k_sweep(rows: list, save: str | None = None) -> Figure:
    """FVU, dead units, test accuracy and IG deletion AUC against the sparsity k (log x-axis).

    ``rows: [R]`` dicts (``run_k_sweep`` output) with ``k`` and any of ``fvu``, ``dead_units``,
    ``test_accuracy``, ``deletion_auc_integrated`` and its reference ``deletion_auc_random`` (drawn
    dashed); ``None`` or missing values are skipped.
    """
    if not rows or any("k" not in r for r in rows):
        raise ValueError("rows must be a non-empty list of dicts, each with a 'k' entry")
    rows = sorted(rows, key=lambda r: r["k"])
    ks = [r["k"] for r in rows]
    fig = _new_figure(16, 3.8)
    for ax, (key, title) in zip(fig.subplots(1, len(K_SWEEP_PANELS)), K_SWEEP_PANELS.items()):
        points = [(r["k"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=K_SWEEP_REFERENCES.get(key, (title,))[0])
        else:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        _, ref_key, ref_label = K_SWEEP_REFERENCES.get(key, (None, None, None))
        ref = [(r["k"], r[ref_key]) for r in rows if r.get(ref_key) is not None]
        if ref:
            ax.plot(*zip(*ref), marker="s", ls="--", color=CONTROL_STYLES["random"][0], label=ref_label)
            ax.legend(fontsize="small")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(xlabel="k (active units per image)", ylabel=title, title=title)
    fig.suptitle("Sparsity sweep")
    return _finish(fig, save)


# --- the unit atlas ------------------------------------------------------------------------------------

DENSITY_BINS = 40  # log-spaced bins of the firing-density histogram
DASHBOARD_TOP_COLUMNS = 8  # top-activating images per row of a dashboard's mosaic
MOSAIC_GAP = 1  # pixels between the images of a mosaic
MOSAIC_GAP_COLOR = "white"
DASHBOARD_ROW_INCHES = 3.1  # height of one unit's row in the dashboard


def _check_stats(stats) -> UnitStats:
    if not isinstance(stats, UnitStats):
        raise ValueError(f"stats must be the UnitStats of unit_statistics, got {type(stats).__name__}")
    return stats


@_styled
def plot_firing_density(stats: UnitStats, save: str | None = None) -> Figure:
    """Histogram of every unit's firing frequency (log-spaced bins; train and test overlaid), the standard
    'feature density' view of a sparse autoencoder. Units that never fire are counted in the title."""
    stats = _check_stats(stats)
    fig = _new_figure(8, 3.6)
    ax = fig.add_subplot()
    live = np.concatenate([stats.freq_train, stats.freq_test])
    live = live[live > 0]
    if live.size == 0:
        return _finish(_message_figure("Firing density", "no unit fires on any image"), save)
    bins = np.geomspace(live.min(), live.max() * (1 + LOG_BIN_MARGIN), DENSITY_BINS + 1)
    for name, freq, color in (("train", stats.freq_train, sns.color_palette()[0]),
                              ("test", stats.freq_test, sns.color_palette()[1])):
        ax.hist(freq[freq > 0], bins=bins, histtype="step", lw=1.8, color=color,
                label=f"{name} ({int((freq == 0).sum())} units never fire)")
    _log_axis(ax, "x")
    ax.axvline(np.median(stats.freq_test), color="0.3", ls=":", label="median (test)")
    ax.set(xlabel="firing frequency: fraction of images on which the unit fires (log scale)", ylabel="units")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"Firing density of all {len(stats.freq_test)} units ({int(stats.dead.sum())} dead: "
                 "never fire on a training or test image)")
    return _finish(fig, save)


def _mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """``images: [n, 784]`` (NaN rows for empty cells) -> one ``[rows * 29 - 1, columns * 29 - 1]`` array
    with NaN gaps (drawn in ``MOSAIC_GAP_COLOR``)."""
    rows = -(-len(images) // columns)
    cell = IMAGE_SIDE + MOSAIC_GAP
    out = np.full((rows * cell - MOSAIC_GAP, columns * cell - MOSAIC_GAP), np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[r * cell:r * cell + IMAGE_SIDE, c * cell:c * cell + IMAGE_SIDE] = image.reshape(IMAGE_SIDE, IMAGE_SIDE)
    return out


def _test_images(data: FashionMNIST, ids: np.ndarray) -> np.ndarray:
    """``ids: [n]`` test ids (-1 = empty) -> ``[n, 784]`` images with NaN rows for the empty ones."""
    images = np.full((len(ids), IMAGE_SIDE**2), np.nan)
    valid = ids >= 0
    images[valid] = _numpy(data.x_test[torch.from_numpy(ids[valid])])
    return images


def _show_mosaic(ax, mosaic: np.ndarray, title: str) -> None:
    cmap = plt.get_cmap(IMAGE_CMAP).with_extremes(bad=MOSAIC_GAP_COLOR)
    ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0)
    _image_axis(ax)
    ax.set_title(title, fontsize="small")


def _dashboard_bars(ax_cls, ax_eff, stats: UnitStats, unit: int, legend: bool) -> None:
    """Class distribution of the images ``unit`` fires on; its mean contribution to and the logit drop
    when zeroed, per class."""
    y = np.arange(len(stats.classes))
    ax_cls.barh(y, stats.class_counts[unit], color=sns.color_palette()[0])
    ax_cls.set_yticks(y, stats.classes, fontsize="small")
    ax_cls.invert_yaxis()
    ax_cls.set(xlabel="test images it fires on", title=f"purity {stats.purity[unit]:.0%}, "
               f"recall {stats.recall[unit]:.0%}")
    height = 0.4
    ax_eff.barh(y - height / 2, stats.contribution[unit], height, label="mean contribution", color=_color("decoder"))
    ax_eff.barh(y + height / 2, -stats.ablation[unit], height, label="logit drop when zeroed", color="0.45")
    ax_eff.axvline(0, color="0.2", lw=0.8)
    ax_eff.set_yticks(y, [])
    ax_eff.invert_yaxis()
    ax_eff.set(xlabel="class logit", title="contribution vs ablation")
    if legend:
        ax_eff.legend(fontsize="x-small", loc="lower right")


def _dashboard_row(fig, cells, stats: UnitStats, sae: KSparseAutoencoder, data: FashionMNIST, unit: int,
                   legend: bool):
    """One unit's dashboard in ``cells`` (a row of 7 gridspec cells); returns the encoder row's image artist."""
    atoms = [_numpy(sae.W_dec[unit]), _numpy(sae.W_enc[unit])]
    for col, (values, name) in enumerate(zip(atoms, ("decoder atom", "encoder row"))):
        limit = _symmetric_limit(values)  # each drawn on its own scale, +-limit -> +-1 (one shared colour bar)
        im = _show_signed(fig.add_subplot(cells[col]), values.reshape(IMAGE_SIDE, IMAGE_SIDE) / limit, 1.0,
                          f"{name} (±{limit:.2g})")
    ax = fig.add_subplot(cells[2])
    _show_mosaic(ax, _mosaic(_test_images(data, stats.top_images[unit]), DASHBOARD_TOP_COLUMNS),
                 f"top {UNIT_TOP_IMAGES} test images (largest activation {stats.hist_max[unit]:.2f})")
    ax.set_ylabel(f"unit {unit}", fontsize="large", fontweight="bold")
    _show_mosaic(fig.add_subplot(cells[3]), _mosaic(_test_images(data, stats.band_images[unit][::-1].ravel()),
                                                   UNIT_BAND_SAMPLES),
                 "random per quantile band: " + " / ".join(f"{100 * lo:.0f}–{100 * hi:.0f}" for lo, hi
                                                           in UNIT_QUANTILE_BANDS[::-1]) + " %")
    ax = fig.add_subplot(cells[4])
    edges = np.linspace(0, stats.hist_max[unit], UNIT_HIST_BINS + 1)
    ax.stairs(stats.hist[unit], edges, fill=True, color=sns.color_palette()[0])
    ax.set(xlabel="activation", ylabel="test images", title=f"fires on {_percent(stats.freq_test[unit])} of test")
    _dashboard_bars(fig.add_subplot(cells[5]), fig.add_subplot(cells[6]), stats, unit, legend)
    return im


@_styled
def plot_unit_dashboard(stats: UnitStats, sae: KSparseAutoencoder, data: FashionMNIST, units: Sequence[int],
                        save: str | None = None) -> Figure:
    """A dashboard row per unit of ``units``: decoder atom and encoder row (diverging, centred at 0), its 16
    top-activating test images, 4 random test images from each activation quantile band (top band first),
    activation histogram, class distribution, and mean contribution against ablation per class logit.
    The unit's one-line description heads its row."""
    stats = _check_stats(stats)
    units = [units] if isinstance(units, (int, np.integer)) else list(units)
    if not units:
        raise ValueError("units is empty: pass the ids of the units to show")
    for j in units:
        _check_int("unit", j, low=0, high=len(stats.freq_test) - 1, high_name="the last unit id")
    # a fixed grid, not constrained layout: laying out ~7 axes per unit was most of the figure's time
    fig = plt.figure(figsize=(24, DASHBOARD_ROW_INCHES * len(units)))
    grid = fig.add_gridspec(len(units), 7, width_ratios=[1, 1, 3.3, 1.7, 1.5, 1.6, 1.6], left=0.07, right=0.99,
                            bottom=0.9 / (DASHBOARD_ROW_INCHES * len(units)),
                            top=1 - 0.75 / (DASHBOARD_ROW_INCHES * len(units)), wspace=0.45, hspace=0.95)
    for row, j in enumerate(units):
        im = _dashboard_row(fig, [grid[row, col] for col in range(7)], stats, sae, data, int(j), legend=row == 0)
        top = grid[row, 0].get_position(fig).y1
        fig.text(0.07, top + 0.42 / fig.get_figheight(), f"unit {j}: {stats.descriptions[j]}", fontsize="medium",
                 fontweight="bold")
    # one colour bar: every atom and encoder row is drawn on the same relative scale
    first = grid[0, 0].get_position(fig)
    fig.colorbar(im, cax=fig.add_axes([0.02, first.y0, 0.006, first.height]), label="weight ÷ its max |weight|")
    return _finish(fig, save)


@_styled
def plot_contribution_vs_ablation(stats: UnitStats, agreement: dict | None = None,
                                  save: str | None = None) -> Figure:
    """Every unit that fires on a test image: its mean decoder-weighted contribution to its majority class's
    logit against the drop of that logit when it is zeroed, coloured by that class, with the y = x line and
    the correlations (bootstrap 95 % CIs) of ``contribution_ablation_agreement`` (computed if not given)."""
    stats = _check_stats(stats)
    agreement = agreement or contribution_ablation_agreement(stats)
    x, y = stats.majority_value(stats.contribution), -stats.majority_value(stats.ablation)
    fig = _new_figure(7.5, 5.5)
    ax = fig.add_subplot()
    palette = sns.color_palette("tab10", len(stats.classes))
    for c, name in enumerate(stats.classes):
        mine = stats.majority == c
        if mine.any():
            ax.scatter(x[mine], y[mine], s=10, alpha=0.7, color=palette[c], label=f"{name} ({mine.sum()})")
    finite = np.isfinite(x) & np.isfinite(y)
    lo, hi = min(x[finite].min(), y[finite].min()), max(x[finite].max(), y[finite].max())
    ax.plot([lo, hi], [lo, hi], color="0.3", ls="--", lw=1, label="y = x")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.axvline(0, color="0.6", lw=0.6)
    ax.set(xlabel="mean contribution to its majority class's logit (Rescale share, where it fires)",
           ylabel="drop of that logit when the unit is zeroed")
    ax.legend(title="majority class (units)", fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    p, s = agreement["pearson"], agreement["spearman"]
    ax.set_title(f"Contribution vs ablation, {agreement['n_units']} units: Pearson {p['value']:.3f} "
                 f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}], Spearman {s['value']:.3f} "
                 f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]\nsame sign for {agreement['same_sign']:.0%} of units",
                 fontsize="small")
    return _finish(fig, save)


def top_units_of_classes(stats: UnitStats, classes: Sequence[str], n: int = 1) -> list[int]:
    """For each class name, the ``n`` units with that majority class that carry most of its logit: largest
    mean contribution times the number of test images they fire on (a rare unit with a large mean does not
    win). The units a dashboard shows first."""
    stats = _check_stats(stats)
    _check_int("n", n, low=1)
    contribution = stats.majority_value(stats.contribution) * stats.n_fire
    units = []
    for name in classes:
        if name not in stats.classes:
            raise ValueError(f"unknown class {name!r}; classes are {stats.classes}")
        mine = np.flatnonzero(stats.majority == stats.classes.index(name))
        units += mine[np.argsort(-contribution[mine], kind="stable")[:n]].tolist()
    return units


# =====================================================================================================
# 11. Summary: results/summary.json
# =====================================================================================================
# Keys (documented in README.md, "results/summary.json"):
#   schema_version, created, config, device, torch_version, timings_s{phase: seconds},
#   autoencoder{k, test_mse_per_pixel, fvu, mean_l0, dead_units, d_hidden},
#   classifier{test_accuracy, per_class_accuracy{class: acc}, confusion_matrix[[...]]},
#   selection{n_images, n_per_class, threshold, candidates_per_class},
#   validation{n_images, cross_method, deletion_insertion, object_focus, completeness, randomization, seconds}
#   units{table[{unit, freq_train, freq_test, majority_class, purity, recall, mean_contribution, ablation_effect,
#         ablation_accuracy, dead}], agreement{n_units, pearson, spearman, same_sign}, seconds} (passed as extra)

SUMMARY_SCHEMA_VERSION = 1


def _jsonable(obj):
    """Tensors and numpy values -> plain Python, recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def build_summary(cfg: Config, device: torch.device, metrics: dict, timings: dict,
                  selection: Selection | None = None, validation: dict | None = None, **extra) -> dict:
    """Everything a reader or a script needs to check the notebook's claims, as one dict."""
    ae = {k: v for k, v in metrics["autoencoder"].items() if k != "unit_usage_train"}
    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": cfg.to_dict(),
        "device": device_name(device),
        "torch_version": torch.__version__,
        "timings_s": timings,
        "autoencoder": ae,
        "classifier": metrics["classifier"],
    }
    if selection is not None:
        summary["selection"] = {"n_images": len(selection.y), "threshold": cfg.confidence_threshold,
                                "n_per_class": len(selection.y) // len(selection.n_candidates),
                                "candidates_per_class": selection.n_candidates}
    if validation is not None:
        summary["validation"] = validation
    summary.update(extra)
    return _jsonable(summary)


def write_summary(summary: dict, path: str | os.PathLike = "results/summary.json") -> Path:
    """Write ``summary`` as indented JSON, atomically."""
    return atomic_write_bytes(path, json.dumps(summary, indent=1, allow_nan=False).encode())


def headline_table(summary: dict) -> list[tuple[str, str]]:
    """The headline numbers of a summary as (name, value) rows, for the notebook's closing table."""
    ae, clf = summary["autoencoder"], summary["classifier"]
    rows = [("k (active units)", f"{ae['k']}"), ("Test FVU", f"{ae['fvu']:.4f}"),
            ("Test MSE / pixel", f"{ae['test_mse_per_pixel']:.5f}"), ("Mean L0", f"{ae['mean_l0']:.1f}"),
            ("Dead units", f"{ae['dead_units']} / {ae['d_hidden']}"),
            ("Test accuracy", f"{100 * clf['test_accuracy']:.2f} %")]
    val = summary.get("validation")
    if val:
        for mode in ("deletion", "insertion"):
            for m, v in val["deletion_insertion"][mode].items():
                rows.append((f"{mode} AUC: {m}", f"{v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"))
        comp = val["completeness"]["table"]
        for method, table in comp.items():
            entry = table.get("50")  # summaries are JSON-shaped: n_steps keys are strings
            if entry:
                rows.append((f"IG completeness within 5 % ({method}, 50 steps)",
                             f"{100 * entry['share_within_tolerance']:.0f} %"))
    rows += [(f"time: {k}", f"{v:.1f} s") for k, v in summary.get("timings_s", {}).items()]
    return rows



def read_summary(path: str | os.PathLike = "results/summary.json") -> dict:
    """Load a summary written by ``write_summary``."""
    return json.loads(Path(path).read_text())


def print_table(rows: Sequence[tuple[str, str]]) -> None:
    """Print (name, value) rows as an aligned two-column table."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def figure_path_fn(folder: str | os.PathLike | None) -> Callable[[str], str | None]:
    """``fn(name) -> "folder/name.png"``, or ``None`` for every name when ``folder`` is empty."""
    return lambda name: str(Path(folder) / f"{name}.png") if folder else None


def randomization_table(rand: dict) -> list[tuple[str, str]]:
    """Rows "method: all pixels / object pixels" of the randomization check's similarity after the last
    stage that changes the model (the encoder), next to the different-image reference."""
    stage = rand["stages"].index("encoder")
    rows = [("after randomizing everything up to the encoder", "Spearman |maps|: all pixels / object pixels / "
             "different-image reference")]
    for m, series in rand["spearman_abs"].items():
        obj = rand["spearman_abs_object"][m][stage]["mean"]
        rows.append((METHOD_LABELS.get(m, m), f"{series[stage]['mean']:.3f} / {obj:.3f} / "
                     f"{rand['random_pair_reference'][m]['mean']:.3f}"))
    return rows


# --- the unit atlas: per-unit table and the HTML unit browser ---------------------------------------------

UNIT_TABLE_DIGITS = 4  # significant digits of the floats in the per-unit table and the browser's data
UNIT_BROWSER_TEMPLATE = Path(__file__).resolve().parent / "templates" / "unit_browser.html"
SIGNED_TILE_ZERO = 127  # grey level of 0 in a signed (atom, encoder-row) sprite tile; +-scale maps to 254 / 0


def _rounded(values):
    """Floats (scalar or nested arrays) to ``UNIT_TABLE_DIGITS`` significant digits; NaN -> None."""
    if isinstance(values, (np.ndarray, list, tuple)):
        return [_rounded(v) for v in values]
    value = float(values)
    return float(f"{value:.{UNIT_TABLE_DIGITS}g}") if math.isfinite(value) else None


def unit_table(stats: UnitStats) -> list[dict]:
    """One compact row per unit for ``results/summary.json``: frequencies, majority class (name, None if it
    fires on no test image), purity, recall, mean contribution to and ablation change of its majority class's
    logit, change of accuracy on the images where it fires, dead flag."""
    contribution, ablation = stats.majority_value(stats.contribution), stats.majority_value(stats.ablation)
    return [{"unit": j, "freq_train": _rounded(stats.freq_train[j]), "freq_test": _rounded(stats.freq_test[j]),
             "majority_class": stats.classes[stats.majority[j]] if stats.majority[j] >= 0 else None,
             "purity": _rounded(stats.purity[j]), "recall": _rounded(stats.recall[j]),
             "mean_contribution": _rounded(contribution[j]), "ablation_effect": _rounded(ablation[j]),
             "ablation_accuracy": _rounded(stats.ablation_accuracy[j]), "dead": bool(stats.dead[j])}
            for j in range(len(stats.freq_test))]


def _png_sprite(tiles: np.ndarray) -> tuple[str, int]:
    """``tiles: [n, 784]`` uint8 grey images -> (base64 PNG of a near-square sheet of 28 x 28 tiles, columns)."""
    from PIL import Image  # Pillow: installed with matplotlib

    n = max(len(tiles), 1)
    columns = math.ceil(math.sqrt(n))
    sheet = np.zeros((math.ceil(n / columns) * columns, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    sheet[:len(tiles)] = tiles.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    sheet = sheet.reshape(-1, columns, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 1, 3).reshape(-1, columns * IMAGE_SIDE)
    buffer = io.BytesIO()
    Image.fromarray(sheet, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii"), columns


def _signed_tiles(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows: [n, 784]`` signed -> (uint8 tiles with 0 at ``SIGNED_TILE_ZERO``, each row scaled by its own
    max |value|; those scales ``[n]``)."""
    scale = np.abs(rows).max(1)
    scale = np.where(scale > 0, scale, 1.0)
    return np.round(SIGNED_TILE_ZERO * (1 + rows / scale[:, None])).astype(np.uint8), scale


def _diverging_lut() -> list[list[int]]:
    """RGB of the diverging colour map for every grey level of a signed tile (``SIGNED_TILE_ZERO`` = white)."""
    t = np.clip((np.arange(256) - SIGNED_TILE_ZERO) / SIGNED_TILE_ZERO, -1, 1)
    return np.round(255 * plt.get_cmap(DIVERGING_CMAP)((t + 1) / 2)[:, :3]).astype(int).tolist()


def _hex(rgb) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb[:3])


def unit_browser_data(stats: UnitStats, sae: KSparseAutoencoder, data: FashionMNIST) -> tuple[dict, str, str]:
    """The browser's data (``unit_table`` rows plus every per-unit detail; image ids index the test set) and
    its two base64 PNG sprites: the test images it shows, and every unit's atom then encoder row."""
    image_ids = np.unique(np.concatenate([stats.top_images.ravel(), stats.band_images.ravel()]))
    image_ids = image_ids[image_ids >= 0]
    images = np.round(255 * _numpy(data.x_test[torch.from_numpy(image_ids)]).reshape(len(image_ids), -1))
    image_sprite, image_columns = _png_sprite(images.astype(np.uint8))
    tiles, scales = _signed_tiles(np.concatenate([_numpy(sae.W_dec), _numpy(sae.W_enc)]))
    atom_sprite, atom_columns = _png_sprite(tiles)
    n_units = len(stats.freq_test)
    units = []
    for row in unit_table(stats):
        j = row["unit"]
        top = stats.top_images[j] >= 0
        row.update(n_fire=int(stats.n_fire[j]), description=stats.descriptions[j],
                   top_images=stats.top_images[j][top].tolist(), top_values=_rounded(stats.top_values[j][top]),
                   band_images=[band[band >= 0].tolist() for band in stats.band_images[j]],
                   hist=stats.hist[j].tolist(), hist_max=_rounded(stats.hist_max[j]),
                   class_counts=stats.class_counts[j].tolist(), contribution=_rounded(stats.contribution[j]),
                   ablation=_rounded(stats.ablation[j]), cofiring=[int(u) for u in stats.cofiring[j] if u >= 0],
                   cofiring_jaccard=_rounded(stats.cofiring_jaccard[j][stats.cofiring[j] >= 0]),
                   atom_scale=_rounded(scales[j]), encoder_scale=_rounded(scales[n_units + j]))
        units.append(row)
    cmap = plt.get_cmap(DIVERGING_CMAP)
    payload = {"classes": stats.classes, "tile": IMAGE_SIDE, "units": units, "image_ids": image_ids.tolist(),
               "image_columns": image_columns, "atom_columns": atom_columns, "cmap": _diverging_lut(),
               "positive_color": _hex(cmap(0.85)), "negative_color": _hex(cmap(0.15)),
               "band_samples": UNIT_BAND_SAMPLES, "band_labels": [
                   f"activation quantiles {100 * lo:.0f}–{100 * hi:.0f} %" for lo, hi in UNIT_QUANTILE_BANDS]}
    return payload, image_sprite, atom_sprite


def write_unit_browser(stats: UnitStats, sae: KSparseAutoencoder, data: FashionMNIST,
                       path: str | os.PathLike) -> Path:
    """Write the self-contained HTML unit browser (``templates/unit_browser.html`` filled with the data of
    ``unit_browser_data``: no server, no network access). Returns the path."""
    if not isinstance(stats, UnitStats):
        raise ValueError(f"stats must be the UnitStats of unit_statistics, got {type(stats).__name__}")
    if sae.d_hidden != len(stats.freq_test):
        raise ValueError(f"stats describe {len(stats.freq_test)} units but the autoencoder has {sae.d_hidden}")
    payload, image_sprite, atom_sprite = unit_browser_data(stats, sae, data)
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    html = UNIT_BROWSER_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in (("{{IMAGE_SPRITE}}", image_sprite), ("{{ATOM_SPRITE}}", atom_sprite),
                               ("{{UNIT_DATA}}", text)):
        assert html.count(placeholder) == 1, f"the template must hold {placeholder} once"
        html = html.replace(placeholder, value)
    return atomic_write_bytes(path, html.encode("utf-8"))


def read_unit_browser_data(path: str | os.PathLike) -> dict:
    """The JSON data embedded in a page written by ``write_unit_browser`` (for checks and other tools)."""
    html = Path(path).read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="unit-data">(.*?)</script>', html, re.S)
    if match is None:
        raise ValueError(f"{path} holds no unit-data script: not a page written by write_unit_browser")
    return json.loads(match.group(1))


UNIT_PURE = 0.9  # a unit is "class-pure" in the summary when at least this share of its firing images is one class


def unit_table_summary(units: dict) -> list[tuple[str, str]]:
    """(name, value) rows about the units from ``summary["units"]`` (``{"table": unit_table(...),
    "agreement": contribution_ablation_agreement(...)}``), for the notebook's text about the units."""
    if not isinstance(units, dict) or not isinstance(units.get("table"), list) or not units["table"]:
        raise ValueError(f"units must be a dict with a non-empty 'table' (rows of unit_table), got {units!r:.80}")
    table = units["table"]
    live = [row for row in table if row["majority_class"] is not None]
    freq = np.array([row["freq_test"] for row in table])
    pure = [row for row in live if row["purity"] >= UNIT_PURE]
    lowers = [row for row in live if row["ablation_effect"] < 0]
    rows = [("units", f"{len(table)}"), ("dead (no training or test image)", f"{sum(r['dead'] for r in table)}"),
            ("fire on no test image", f"{len(table) - len(live)}"),
            ("median firing frequency (test)", _percent(float(np.median(freq)))),
            (f"class-pure units (purity >= {UNIT_PURE:.0%})", f"{len(pure)} of {len(live)}"),
            ("zeroing lowers its class logit", f"{len(lowers)} of {len(live)}")]
    counts: dict[str, int] = {}
    for row in live:
        counts[row["majority_class"]] = counts.get(row["majority_class"], 0) + 1
    rows += [(f"units whose majority class is {name}", f"{n}") for name, n in sorted(counts.items())]
    agreement = units.get("agreement")
    if agreement:
        for name in ("pearson", "spearman"):
            lo, hi = agreement[name]["ci95"]
            rows.append((f"contribution vs ablation: {name}", f"{agreement[name]['value']:.3f} [{lo:.3f}, {hi:.3f}]"))
        rows.append(("contribution and ablation drop of the same sign", f"{agreement['same_sign']:.0%} of units"))
    return rows
