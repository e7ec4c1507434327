"""Interpretable k-sparse autoencoders on Fashion-MNIST: everything the notebook calls.

Sections
--------
1. Config          -- one dataclass with every knob, saved inside every checkpoint.
2. Device          -- chosen once (CUDA, then Apple MPS, then CPU).
3. Data            -- offline Fashion-MNIST loader with SHA-256 checks.
4. Models          -- top-k sparse autoencoder, classifier on its codes, the end-to-end pipeline.
5. Training        -- flat loops over on-device tensors, seeded, with tqdm bars; on CUDA every step replays one
                      captured CUDA graph (``GraphedStep``).
6. Checkpoints     -- atomic save, safe load, ``load_or_train``.
7. Metrics         -- reconstruction, sparsity, dead units, accuracy.
8. Attribution     -- integrated gradients, simple gradients, SmoothGrad, decoder-weighted, input x gradient,
                      input x SmoothGrad.
9. Evaluation      -- sample selection, agreement against a different-image null, faithfulness checks
                      (deletion/insertion under zero, blur and ROAD substrates, MoRF and LeRF; completeness
                      decomposition; randomization; unit-level causality), verdicts, the k sweep, statistics of
                      every code unit (the unit atlas: ``unit_statistics``).
10. Plotting       -- every figure of the notebook; figures shown together are drawn side by side in forked
                      worker processes (``render_figures``, ``render_comparison_grid``).
11. Summary        -- ``results/summary.json`` (with the per-unit ``unit_table`` and ``figure_timings``), the
                      HTML unit browser (``write_unit_browser``, from ``templates/unit_browser.html``), output
                      folders per configuration (``runs/<name>/``), ``compact_notebook``.

Shapes are written as ``x: [batch, 784]``; ``D`` is the input size (784), ``H`` the code size (1024),
``C`` the number of classes (10).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import gc
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator
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
    aux_k: int = 256  # AuxK (Gao et al. 2024): top this-many dead units reconstruct the residual (0 = off).
    # Keeps the dictionary alive below k = 50 (README, k sweep); chosen on the validation split
    aux_coef: float = 1 / 32  # AuxK: weight of the auxiliary loss
    dead_after: int = 20_000  # AuxK: a unit that fired on none of the last this-many images is "dead"
    # --- classifier on the codes ---
    clf_hidden: tuple[int, int] = (512, 256)  # hidden widths of the MLP head
    n_classes: int = 10  # Fashion-MNIST classes
    dropout: float = 0.3  # dropout after each hidden ReLU
    # --- optimisation ---
    batch_size: int = 256  # images per step, both models
    lr: float = 1e-3  # Adam learning rate, both models (the peak of a decaying schedule)
    ae_lr_schedule: str = "decay20"  # autoencoder: "constant", "cosine" (to 0), "decay10"/"decay20"/"decay50"
    # (linear to 0 over the last 10/20/50 % of steps)
    clf_lr_schedule: str = "cosine"  # classifier: same choices
    ae_epochs: int = 30  # autoencoder epochs
    clf_epochs: int = 50  # classifier epochs
    clf_hflip: bool = True  # classifier sees each image or its mirror image at random (labels unchanged)
    clf_shift: int = 1  # classifier also sees each such view moved this many pixels up, down, left or right
    # (one of the five positions at random per step; 0 = off). README: +0.6 to +1.0 points of accuracy, 3 seeds
    ae_hflip: bool = False  # autoencoder sees each image or its mirror image at random
    n_val: int = 5000  # training images held out as the validation split (class-stratified, fixed seed
    # VAL_SPLIT_SEED); every recipe choice and per-epoch curve uses it, the test set is evaluated once
    train_subset: int = 0  # train on only the first N images of the training split (0 = all); for smoke runs
    seed: int = 0  # seeds initialisation, batch order, dropout and sample selection
    # --- attribution ---
    ig_steps: int = 50  # integrated-gradients steps from a zero image
    ig_method: str = "gausslegendre"  # IG quadrature (Captum's names)
    smoothgrad_samples: int = 25  # SmoothGrad noisy copies per image
    smoothgrad_noise: float = 0.1  # SmoothGrad noise std (pixels are in [0, 1])
    confidence_threshold: float = 0.8  # explain only correct predictions above this softmax confidence
    # --- execution ---
    cuda_graphs: bool = True  # on CUDA, replay each training step as one captured CUDA graph (same maths, no
    # per-kernel launch cost; ``GraphedStep``); ignored on other devices

    # The fields above "attribution" change the trained weights: a checkpoint is reused only if all of them
    # match (``training_key``). The attribution and execution fields do not:
    ATTRIBUTION_FIELDS = ("ig_steps", "ig_method", "smoothgrad_samples", "smoothgrad_noise", "confidence_threshold")
    NON_TRAINING_FIELDS = ATTRIBUTION_FIELDS + ("cuda_graphs",)

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
        _check_int("n_val", self.n_val, low=0)
        _check_int("seed", self.seed, low=0)
        _check_int("clf_shift", self.clf_shift, low=0, high=IMAGE_SIDE - 1, high_name="the image side minus 1")
        _check_int("aux_k", self.aux_k, low=0)
        _check_int("dead_after", self.dead_after, low=1)
        _check_float("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        _check_float("lr", self.lr, low=0.0, low_open=True)
        _check_float("smoothgrad_noise", self.smoothgrad_noise, low=0.0)
        _check_float("aux_coef", self.aux_coef, low=0.0)
        _check_float("confidence_threshold", self.confidence_threshold, low=0.0, high=1.0, high_open=True)
        for name in ("clf_hflip", "ae_hflip", "cuda_graphs"):
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
        return {name: value for name, value in d.items() if name not in self.NON_TRAINING_FIELDS}

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


def _jupyter_display():
    """IPython's ``(display, module of display classes)`` inside a Jupyter kernel, else None (plain script)."""
    try:
        import IPython.display as ipd
        from IPython import get_ipython
    except ImportError:
        return None
    return (ipd.display, ipd) if get_ipython() is not None else None


def show(fig) -> None:
    """Display ``fig`` (a figure, or PNG bytes such as ``render_figures``') inline when running under
    Jupyter, then close it (a no-op display elsewhere, so the notebook also runs as a plain script)."""
    jupyter = _jupyter_display()
    png = fig if isinstance(fig, bytes) else getattr(fig, "saved_png", None)  # rendered already: no second render
    if jupyter is not None:
        display, ipd = jupyter
        display(fig if png is None else ipd.Image(data=png))
    if not isinstance(fig, bytes):
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


VAL_SPLIT_SEED = 0  # the validation split is the same for every Config.seed (seeds vary training, not the split)


def validation_indices(y_train: torch.Tensor, n_val: int, n_classes: int) -> torch.Tensor:
    """Sorted indices of a class-stratified validation split of ``n_val`` images, fixed by ``VAL_SPLIT_SEED``.

    ``y_train: [N]`` labels. Each class gives ``n_val // n_classes`` images (the remainder goes to the first
    classes), drawn at random without replacement."""
    _check_int("n_val", n_val, low=0, high=len(y_train) - n_classes, high_name="the training set size minus a class")
    gen = torch.Generator().manual_seed(VAL_SPLIT_SEED)
    picks = []
    for c in range(n_classes):
        members = torch.nonzero(y_train == c)[:, 0]
        n_c = n_val // n_classes + (c < n_val % n_classes)
        if n_c > len(members):
            raise ValueError(f"n_val={n_val} asks {n_c} validation images of class {c}, which has {len(members)}")
        picks.append(members[torch.randperm(len(members), generator=gen)[:n_c]])
    return torch.cat(picks).sort().values


def train_val_split(data: FashionMNIST, cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)``: the validation split (``cfg.n_val`` images, stratified) and the
    rest of the training set, of which the first ``cfg.train_subset`` images (0 = all) are trained on."""
    val = validation_indices(data.y_train, cfg.n_val, len(data.classes))
    keep = torch.ones(len(data.y_train), dtype=torch.bool)
    keep[val] = False
    rest = FashionMNIST(data.x_train[keep], data.y_train[keep], data.x_test, data.y_test, data.classes, data.source)
    x_train, y_train = train_subset(rest, cfg.train_subset)
    return x_train, y_train, data.x_train[val], data.y_train[val]


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


def densify(values: torch.Tensor, indices: torch.Tensor, d_hidden: int) -> torch.Tensor:
    """Sparse codes ``values, indices: [B, k]`` (distinct indices per row) -> dense ``z: [B, H]``."""
    return torch.zeros(len(values), d_hidden, dtype=values.dtype, device=values.device).scatter(
        1, indices.long(), values)


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
        return densify(*self.encode_sparse(x), self.d_hidden)

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


def make_adam(params, lr: float, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam, fused where this PyTorch supports it (on this CPU: 0.5 ms against 8 ms per step).

    ``capturable=True`` (CUDA graphs): the learning rate is a device tensor (``set_lr_`` fills it without a
    host sync) and the step count lives on the device, so ``step()`` can be replayed inside a graph.
    """
    params = list(params)
    if capturable:
        lr_tensor = torch.tensor(lr, device=params[0].device)
        try:
            return torch.optim.Adam(params, lr=lr_tensor, fused=True, capturable=True)
        except (RuntimeError, TypeError, ValueError):  # PyTorch without fused capturable Adam
            return torch.optim.Adam(params, lr=lr_tensor, capturable=True)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older PyTorch, or a device without a fused kernel
        return torch.optim.Adam(params, lr=lr)


DECAY_SCHEDULES = {"decay10": 0.1, "decay20": 0.2, "decay50": 0.5}  # share of the last steps over which the
# learning rate falls linearly to 0 (constant before); decay20 is the autoencoder's default (README, recipe choices)
LR_SCHEDULES = ("constant", "cosine", *DECAY_SCHEDULES)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total_steps``."""
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule in DECAY_SCHEDULES:
        return min(1.0, (1 - progress) / DECAY_SCHEDULES[schedule])
    return 1.0


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    """Per-step learning-rate schedule (see ``lr_factor``) as a PyTorch scheduler (the benchmarks' reference
    loops; ours call ``set_lr_`` before every step, which also works for a capturable optimiser's tensor lr)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(schedule, step, total_steps))


def set_lr_(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr`` (a tensor learning rate is filled in place, with no
    host sync: what a CUDA graph's captured ``opt.step()`` reads)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


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


SHIFT_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # down, up, right, left: classifier_views' order


def classifier_views(x: torch.Tensor, cfg: Config) -> Iterator[torch.Tensor]:
    """Yield, one at a time (only one shifted copy in memory), the versions of ``x: [N, 784]`` the classifier
    trains on: the images, their mirror images if ``cfg.clf_hflip``, then each of those moved
    ``cfg.clf_shift`` pixels down, up, right and left (images first, then mirror images)."""
    bases = [x, hflip(x)] if cfg.clf_hflip else [x]
    yield from bases
    s = cfg.clf_shift
    if s:
        for base in bases:
            for dy, dx in SHIFT_DIRECTIONS:
                yield shift_images(base, dy * s, dx * s)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", mininterval=2.0, dynamic_ncols=True)


GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before a CUDA graph is captured (PyTorch's recipe)


class CudaGraphBackend:
    """One ``torch.cuda.CUDAGraph``: capture, replay, and the side stream that warm-up steps run on."""

    def __init__(self):
        self.graph, self.stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()

    @contextlib.contextmanager
    def side_stream(self):
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, fn: Callable[[], None]) -> None:
        torch.cuda.synchronize()
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


def graph_backend(cfg: Config, device: torch.device) -> CudaGraphBackend | None:
    """A fresh ``CudaGraphBackend`` if ``cfg.cuda_graphs`` and ``device`` is CUDA, else ``None`` (eager)."""
    return CudaGraphBackend() if cfg.cuda_graphs and torch.device(device).type == "cuda" else None


class GraphedStep:
    """A training step ``step(*batch)``, run eagerly or captured once and replayed as one CUDA graph.

    ``step`` does all its work in place (parameters, optimiser state, running sums) and returns nothing; it
    reads only its ``batch`` tensors and tensors that outlive the loop. With a ``backend``: the first
    ``warmup`` batches of ``rows`` rows run eagerly on the backend's side stream, the next is captured into
    static copies of its tensors, and every later batch of that shape is copied into them and replayed. A
    batch of another shape (an epoch's short last batch) runs eagerly. If capture fails, one warning says why
    and every later step runs eagerly. Without a backend, calling it is calling ``step``. ``replays`` counts
    the graph's replays.
    """

    def __init__(self, step: Callable[..., None], rows: int, backend=None, warmup: int = GRAPH_WARMUP_STEPS):
        self.step, self.rows, self.backend, self.warmup = step, rows, backend, warmup
        self.static: list[torch.Tensor] | None = None
        self.warmed = self.replays = 0

    def __call__(self, *batch: torch.Tensor) -> None:
        if self.backend is None or batch[0].shape[0] != self.rows:
            return self.step(*batch)
        if self.warmed < self.warmup:
            self.warmed += 1
            with self.backend.side_stream():
                return self.step(*batch)
        if self.static is None and not self._capture(batch):
            return self.step(*batch)
        for buffer, b in zip(self.static, batch):
            buffer.copy_(b)
        self.backend.replay()
        self.replays += 1

    def _capture(self, batch: Sequence[torch.Tensor]) -> bool:
        self.static = [b.clone() for b in batch]
        try:
            self.backend.capture(lambda: self.step(*self.static))
            return True
        except RuntimeError as exc:
            warnings.warn(f"CUDA graph capture failed, training continues eagerly: {exc}", RuntimeWarning,
                          stacklevel=3)
            self.backend = self.static = None
            return False


def auxk_loss(sae: KSparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
              aux_k: int, static: bool = False) -> torch.Tensor:
    """AuxK loss (Gao et al. 2024): the top ``aux_k`` *dead* units must reconstruct the residual.

    ``pre: [B, H]`` encoder pre-activations, ``residual: [B, D]`` = x - x_hat (treated as a target),
    ``dead: [H]`` bool. Gives dead units a gradient that points them at what the live units miss.
    ``static=True`` computes the same loss with fixed shapes and no host sync (for a CUDA graph): it always
    takes ``aux_k`` units, live ones at weight 0, multiplies the loss by "any unit dead", and decodes densely
    (``embedding_bag``'s CUDA backward may sync with the host, which a capture forbids).
    """
    if aux_k == 0:
        return pre.new_zeros(())
    n_take = min(aux_k, pre.shape[1])
    if not static:
        n_take = min(n_take, int(dead.sum()))
        if n_take == 0:
            return pre.new_zeros(())
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = torch.topk(masked, n_take, dim=1, sorted=False)
    if static:
        residual_hat = densify(F.relu(values), indices, sae.d_hidden) @ sae.W_dec
    else:
        residual_hat = F.embedding_bag(indices, sae.W_dec, per_sample_weights=F.relu(values), mode="sum")
    loss = normalized_mse(residual_hat, residual.detach())
    return loss * dead.any() if static else loss


def autoencoder_losses(sae: KSparseAutoencoder, xb: torch.Tensor, dead: torch.Tensor, cfg: Config,
                       static: bool = False) -> tuple[torch.Tensor, ...]:
    """Forward pass of a training step on ``xb: [B, D]`` with dead units ``dead: [H]``: ``(loss, fvu, aux,
    values, indices)`` with loss = batch FVU + ``aux_coef`` * AuxK and the batch's codes ``values, indices:
    [B, k]``. ``static``: fixed-shape AuxK (``auxk_loss``) and a dense decode, so the whole pass can be
    captured in a CUDA graph (``embedding_bag``'s CUDA backward may sync with the host)."""
    pre = sae.pre_activations(xb)
    values, indices = sae.top_k(pre)
    x_hat = sae.decode(densify(values, indices, sae.d_hidden)) if static else sae.decode_sparse(values, indices)
    fvu = normalized_mse(x_hat, xb)
    aux = auxk_loss(sae, pre, xb - x_hat, dead, cfg.aux_k, static=static)
    return fvu + cfg.aux_coef * aux, fvu, aux, values, indices


def autoencoder_step(sae: KSparseAutoencoder, opt: torch.optim.Optimizer, cfg: Config, since_fired: torch.Tensor,
                     sums: torch.Tensor, static: bool = False) -> Callable[[torch.Tensor], None]:
    """The autoencoder's training step for ``GraphedStep``: ``step(xb: [B, D])`` takes one Adam step on
    ``autoencoder_losses``, keeps the atoms at unit norm, and updates in place ``since_fired: [H]`` (images
    since each unit last fired) and ``sums: [3]`` (loss, FVU and AuxK loss, each summed over images)."""
    def step(xb: torch.Tensor) -> None:
        loss, fvu, aux, values, indices = autoencoder_losses(sae, xb, since_fired >= cfg.dead_after, cfg, static)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad_()
        opt.step()
        sae.unit_norm_decoder_()
        since_fired.add_(len(xb)).masked_fill_(firing_counts(values, indices, sae.d_hidden) > 0, 0)
        sums.add_(torch.stack([loss.detach(), fvu.detach(), aux.detach()]) * len(xb))
    return step


def train_autoencoder(sae: KSparseAutoencoder, x_train: torch.Tensor, cfg: Config,
                      device: torch.device, x_val: torch.Tensor | None = None,
                      backend: CudaGraphBackend | None = None) -> dict[str, list[float]]:
    """Train ``sae`` on ``x_train: [N, D]`` with Adam, unit-norm atoms and AuxK. Returns per-epoch history,
    with the FVU of the validation images ``x_val: [M, D]`` after every epoch if they are given.

    Loss = batch FVU + ``aux_coef`` * AuxK (``autoencoder_step``). On CUDA with ``cfg.cuda_graphs`` every
    full batch replays one CUDA graph (``GraphedStep``; ``backend`` overrides ``graph_backend``, for tests).
    Deterministic on CPU for a fixed ``cfg.seed``.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = x_train.to(device)
    sae.to(device).train()
    sae.init_pre_bias_(x)
    sae.unit_norm_decoder_()
    backend = backend or graph_backend(cfg, device)
    opt = make_adam(sae.parameters(), cfg.lr, capturable=backend is not None and x.is_cuda)
    steps = math.ceil(len(x) / cfg.batch_size)
    since_fired = torch.zeros(sae.d_hidden, dtype=torch.long, device=device)  # images since last active
    sums = torch.zeros(3, device=device)
    step = GraphedStep(autoencoder_step(sae, opt, cfg, since_fired, sums, static=backend is not None),
                       cfg.batch_size, backend)
    history = {"loss": [], "fvu": [], "aux_loss": [], "dead_fraction": [], "val_fvu": []}
    bar = _progress(cfg.ae_epochs * steps, "autoencoder")
    for epoch in range(cfg.ae_epochs):
        sums.zero_()
        for i, idx in enumerate(_batches(len(x), cfg.batch_size, gen, device)):
            set_lr_(opt, cfg.lr * lr_factor(cfg.ae_lr_schedule, epoch * steps + i, cfg.ae_epochs * steps))
            xb = x[idx]
            if cfg.ae_hflip:
                flip = torch.rand(len(idx), generator=gen).to(device) < 0.5
                xb = torch.where(flip[:, None], hflip(xb), xb)
            step(xb)
            bar.update()
        mean = (sums / len(x)).tolist()
        dead_fraction = float((since_fired >= cfg.dead_after).float().mean())
        for key, value in zip(("loss", "fvu", "aux_loss", "dead_fraction"), mean + [dead_fraction]):
            history[key].append(value)
        if x_val is not None:
            history["val_fvu"].append(dataset_fvu(sae, x_val, device))
            sae.train()
        bar.set_postfix(epoch=epoch + 1, loss=f"{mean[0]:.4f}", fvu=f"{mean[1]:.4f}", dead=f"{dead_fraction:.3f}",
                        **({"val_fvu": f"{history['val_fvu'][-1]:.4f}"} if x_val is not None else {}))
    bar.close()
    sae.eval()
    return history


@torch.no_grad()
def dataset_fvu(sae: KSparseAutoencoder, x: torch.Tensor, device: torch.device) -> float:
    """Fraction of variance of ``x: [N, D]`` that the reconstruction misses (whole-set FVU; eval mode)."""
    x = x.to(device)
    x_hat = sae.eval().decode_sparse(*encode_dataset(sae, x, device))
    return float((x_hat - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12))


@torch.no_grad()
def encode_dataset(sae: KSparseAutoencoder, x: torch.Tensor, device: torch.device,
                   batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of ``x: [N, D]`` as ``(values: [N, k], indices: [N, k])`` on ``device``."""
    sae.eval()
    parts = [sae.encode_sparse(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


CODE_MEMORY_BUDGET = 2 * 2**30  # bytes: the classifier's view codes are held up to this size, else encoded per batch


def n_classifier_views(cfg: Config) -> int:
    """How many views ``classifier_views`` yields for ``cfg``."""
    return (1 + cfg.clf_hflip) * (1 + len(SHIFT_DIRECTIONS) * (cfg.clf_shift > 0))


def view_of(x: torch.Tensor, view: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Each image of ``x: [B, D]`` as its view number ``view: [B]`` of ``classifier_views`` (same order)."""
    n_bases = 1 + cfg.clf_hflip
    out = torch.empty_like(x)
    for v in view.unique().tolist():
        rows = view == v
        b = v if v < n_bases else (v - n_bases) // len(SHIFT_DIRECTIONS)
        base = x[rows] if b == 0 else hflip(x[rows])
        if v >= n_bases:
            dy, dx = SHIFT_DIRECTIONS[(v - n_bases) % len(SHIFT_DIRECTIONS)]
            base = shift_images(base, dy * cfg.clf_shift, dx * cfg.clf_shift)
        out[rows] = base
    return out


def encode_views(sae: KSparseAutoencoder, x: torch.Tensor, cfg: Config,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of every ``classifier_views`` view of ``x: [N, D]``: ``(values, indices)``, each
    ``[V, N, k]`` on ``device``, indices int32 (what ``ViewCodes`` holds when it fits)."""
    n_views = n_classifier_views(cfg)
    values = torch.empty(n_views, len(x), sae.k, device=device)
    indices = torch.empty(n_views, len(x), sae.k, dtype=torch.int32, device=device)
    for i, view in enumerate(classifier_views(x, cfg)):  # filled in place: the codes are held once
        values[i], indices[i] = encode_dataset(sae, view, device)
    assert i == n_views - 1, "classifier_views and n_classifier_views disagree"
    return values, indices


class ViewCodes:
    """Sparse codes of the classifier's views of ``x: [N, D]``: encoded once and held (``[V, N, k]``
    values and int32 indices) when they fit in ``budget`` bytes, else encoded batch by batch (large k:
    at k = 1024 the held codes would take 4.9 GB)."""

    def __init__(self, sae: KSparseAutoencoder, x: torch.Tensor, cfg: Config, device: torch.device,
                 budget: int | None = None):
        self.n_views = n_classifier_views(cfg)
        self.nbytes = self.n_views * len(x) * sae.k * 8  # float32 value + int32 index per active unit
        self.held = self.nbytes <= (CODE_MEMORY_BUDGET if budget is None else budget)
        if self.held:
            self.values, self.indices = encode_views(sae, x, cfg, device)
        else:
            self.sae, self.x, self.cfg = sae.eval(), x.to(device), cfg

    @torch.no_grad()
    def batch(self, view: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``(values: [B, k], indices: [B, k])`` of images ``idx: [B]``, each as view ``view: [B]``."""
        if self.held:
            return self.values[view, idx], self.indices[view, idx]
        return self.sae.encode_sparse(view_of(self.x[idx], view, self.cfg))


@torch.no_grad()
def _accuracy_sparse(clf: SparseCodeClassifier, values, indices, y, batch_size: int = 8192) -> float:
    clf.eval()
    correct = sum(
        (clf.forward_sparse(values[i:i + batch_size], indices[i:i + batch_size]).argmax(1)
         == y[i:i + batch_size]).sum().item()
        for i in range(0, len(y), batch_size)
    )
    return correct / len(y)


def classifier_step(clf: SparseCodeClassifier, opt: torch.optim.Optimizer, sums: torch.Tensor,
                    static: bool = False) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """The classifier's training step for ``GraphedStep``: ``step(values, indices: [B, k], yb: [B])`` takes one
    Adam step on the cross-entropy of the sparse codes' logits and adds (loss summed over images, correct
    predictions) to ``sums: [2]`` in place. ``static``: the first layer on the dense code (graph-safe)."""
    def step(values: torch.Tensor, indices: torch.Tensor, yb: torch.Tensor) -> None:
        logits = clf(densify(values, indices, clf.W1.shape[0])) if static else clf.forward_sparse(values, indices)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums.add_(torch.stack([loss.detach() * len(yb), (logits.argmax(1) == yb).sum()]))
    return step


def train_classifier(clf: SparseCodeClassifier, sae: KSparseAutoencoder, x_train: torch.Tensor,
                     y_train: torch.Tensor, cfg: Config, device: torch.device,
                     x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
                     backend: CudaGraphBackend | None = None) -> dict[str, list]:
    """Train ``clf`` on the frozen autoencoder's codes of ``x_train: [N, D]`` (labels ``y_train: [N]``).

    Codes are kept sparse (``ViewCodes``: ``[V, N, k]`` values and indices for the ``V`` views of
    ``classifier_views``, mirror images and shifted copies, computed once, or per batch when they would
    exceed ``CODE_MEMORY_BUDGET``); each step takes a random view per image and
    touches only the k active rows of the first layer (``classifier_step``; a CUDA graph as in
    ``train_autoencoder``). Returns per-epoch loss, train accuracy and (if
    given) accuracy on the validation images ``x_val: [M, D]`` (never the test set).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    codes = ViewCodes(sae, x_train, cfg, device)
    y = y_train.to(device)
    val = None if x_val is None else (*encode_dataset(sae, x_val, device), y_val.to(device))
    clf.to(device)
    backend = backend or graph_backend(cfg, device)
    opt = make_adam(clf.parameters(), cfg.lr, capturable=backend is not None and y.is_cuda)
    steps = math.ceil(len(y) / cfg.batch_size)
    sums = torch.zeros(2, device=device)
    step = GraphedStep(classifier_step(clf, opt, sums, static=backend is not None), cfg.batch_size, backend)
    history = {"loss": [], "train_acc": [], "val_acc": []}
    bar = _progress(cfg.clf_epochs * steps, "classifier")
    for epoch in range(cfg.clf_epochs):
        clf.train()
        sums.zero_()
        batches = _batches(len(y), cfg.batch_size, gen, device)
        # one view per image, drawn for the whole epoch (the same numbers as a draw per step): one host-to-device
        # copy per epoch, none per step, so the host never waits for the GPU inside the epoch
        views = torch.randint(codes.n_views, (len(y),), generator=gen).to(device).split(cfg.batch_size)
        for i, (idx, view) in enumerate(zip(batches, views)):
            set_lr_(opt, cfg.lr * lr_factor(cfg.clf_lr_schedule, epoch * steps + i, cfg.clf_epochs * steps))
            step(*codes.batch(view, idx), y[idx])
            bar.update()
        loss_mean, acc = (sums / len(y)).tolist()
        history["loss"].append(loss_mean)
        history["train_acc"].append(acc)
        if val is not None:
            history["val_acc"].append(_accuracy_sparse(clf, *val))
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_mean:.4f}", acc=f"{acc:.3f}",
                        **({"val_acc": f"{history['val_acc'][-1]:.3f}"} if val is not None else {}))
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
    file or the new one, never half of one. Parent folders are created. The file gets the permissions a
    plain ``open(path, "w")`` would give (``mkstemp``'s own are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~umask)
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


def train_autoencoder_on_split(cfg: Config, data: FashionMNIST,
                               device: torch.device) -> tuple[KSparseAutoencoder, float]:
    """A fresh autoencoder trained with ``cfg`` on the training split (``train_val_split``), and the seconds it
    took (device synchronised): what the benchmarks compare recipes with."""
    x_train, _, _, _ = train_val_split(data, cfg)
    torch.manual_seed(cfg.seed)
    sae = KSparseAutoencoder(config=cfg)
    t0 = time.perf_counter()
    train_autoencoder(sae, x_train, cfg, device)
    synchronize(device)
    return sae, time.perf_counter() - t0


def train_models(cfg: Config, data: FashionMNIST, device: torch.device):
    """Train the autoencoder, then the classifier on its codes. Returns ``(sae, clf, history)``."""
    x_train, y_train, x_val, y_val = train_val_split(data, cfg)
    torch.manual_seed(cfg.seed)
    sae = KSparseAutoencoder(config=cfg)
    clf = SparseCodeClassifier.from_config(cfg)
    t0 = time.perf_counter()
    ae_history = train_autoencoder(sae, x_train, cfg, device, x_val if len(x_val) else None)
    t1 = time.perf_counter()
    clf_history = train_classifier(clf, sae, x_train, y_train, cfg, device, *((x_val, y_val) if len(x_val) else ()))
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
    metrics = evaluate_models(sae, clf, data, cfg, device)
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


def evaluate_models(sae: KSparseAutoencoder, clf: SparseCodeClassifier, data: FashionMNIST, cfg: Config,
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


def firing_counts(values: torch.Tensor, indices: torch.Tensor, d_hidden: int) -> torch.Tensor:
    """Number ``[H]`` (float) of images on which each unit fires (value > 0); ``values, indices: [N, k]`` sparse
    codes. Fixed shapes, no boolean indexing: it runs inside a CUDA graph (``autoencoder_step``)."""
    fired = (values.detach() > 0).reshape(-1).to(torch.float32)
    return torch.zeros(d_hidden, device=values.device).index_add_(0, indices.reshape(-1), fired)


def firing_frequency(values: torch.Tensor, indices: torch.Tensor, d_hidden: int) -> torch.Tensor:
    """Fraction ``[H]`` of images on which each unit fires (value > 0); ``values, indices: [N, k]`` sparse codes."""
    return firing_counts(values, indices, d_hidden) / len(values)


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
# All methods explain F(x) = the target class's *logit* of ``model(x)`` (``output="probability"``
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
    "input_x_gradient": "Input × gradient",
    "input_x_smoothgrad": "Input × SmoothGrad",
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


def input_x_gradient(model: nn.Module, inputs: torch.Tensor, target, output: str = "logit",
                     internal_batch_size: int | None = None) -> torch.Tensor:
    """Input times gradient (Shrikumar et al. 2016; Captum's ``InputXGradient``): ``x * dF/dx``, shaped
    like ``inputs: [B, 784]`` (or image-shaped). Separates the x-input factor of IG from the gradient's."""
    return inputs * simple_gradients(model, inputs, target, output=output, internal_batch_size=internal_batch_size)


def input_x_smoothgrad(model: nn.Module, inputs: torch.Tensor, target, nt_samples: int = 25, stdevs: float = 0.1,
                       output: str = "logit", generator: torch.Generator | None = None, seed: int | None = None,
                       internal_batch_size: int | None = None) -> torch.Tensor:
    """Input times signed SmoothGrad: ``x * smoothgrad(x)``, shaped like ``inputs: [B, 784]`` (same noise
    as ``smoothgrad`` with the same ``seed``/``generator``)."""
    return inputs * smoothgrad(model, inputs, target, nt_samples=nt_samples, stdevs=stdevs, output=output,
                               generator=generator, seed=seed, internal_batch_size=internal_batch_size)


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
    maps: dict[str, torch.Tensor] = {}

    def get(m: str) -> torch.Tensor:  # each map computed once; the x-input maps reuse their gradient's
        if m not in maps:
            maps[m] = run[m]().detach()
        return maps[m]

    run = {
        "integrated": lambda: integrated_gradients(pipeline, inputs, target, n_steps=cfg.ig_steps,
                                                   method=cfg.ig_method),
        "simple": lambda: simple_gradients(pipeline, inputs, target),
        "smoothgrad": lambda: smoothgrad(pipeline, inputs, target, nt_samples=cfg.smoothgrad_samples,
                                         stdevs=cfg.smoothgrad_noise, seed=seed),
        "decoder": lambda: decoder_weighted(pipeline, inputs, target),
        "input_x_gradient": lambda: inputs * get("simple"),  # = input_x_gradient(pipeline, inputs, target)
        "input_x_smoothgrad": lambda: inputs * get("smoothgrad"),  # = input_x_smoothgrad(..., seed=seed)
    }
    return {m: get(m) for m in methods}


# =====================================================================================================
# 9. Evaluation: sample selection, cross-method statistics, faithfulness checks
# =====================================================================================================


@dataclass
class Selection:
    """Correctly classified test images, preferably above the confidence threshold, sorted by class.

    Balanced over classes when every class has ``n_requested`` images above the threshold; otherwise a
    class keeps what passes, a class with none passing keeps its most confident correct images (below the
    threshold, flagged in ``fallback``), and a class with no correct image at all is left out
    (``skipped``). ``shortfalls`` and ``warning`` record all of it (JSON-able, for ``build_summary``).
    """

    indices: torch.Tensor  # [N] indices into the test set
    x: torch.Tensor  # [N, 784] images
    y: torch.Tensor  # [N] labels (= predictions)
    confidence: torch.Tensor  # [N] softmax probability of the label
    n_candidates: dict = field(default_factory=dict)  # class name -> images passing the filter
    n_requested: int = 0  # images asked for per class
    fallback: torch.Tensor | None = None  # [N] bool: correct but at or below the threshold (class had none above)
    shortfalls: dict = field(default_factory=dict)  # class name -> {"passing", "selected", "fallback"} (short ones)
    skipped: list = field(default_factory=list)  # class names with no correctly classified test image
    warning: str | None = None  # the one-line warning issued for the shortfalls (None when balanced)

    def per_class(self, classes) -> dict:
        """Class name -> number of selected images, for every name in ``classes``."""
        counts = torch.bincount(self.y, minlength=len(classes)).tolist()
        return dict(zip(classes, counts))


def _pick_class(passing: torch.Tensor, correct: torch.Tensor, confidence: torch.Tensor, n_per_class: int,
                min_per_class: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """One class's picks: up to ``n_per_class`` random ``passing`` indices ``[P]``; if fewer than
    ``min_per_class`` pass, topped up with the most confident of the ``correct`` indices ``[Q]`` that do
    not pass. Returns (sorted indices, number of top-ups)."""
    picked = passing[torch.randperm(len(passing), generator=gen)[:n_per_class]]
    n_fill = max(0, min(min_per_class, n_per_class) - len(picked))
    rest = correct[~torch.isin(correct, passing)]
    fill = rest[confidence[rest].argsort(descending=True, stable=True)[:n_fill]]
    return torch.cat([picked, fill]).sort().values, len(fill)


def _shortfall_warning(shortfalls: dict, skipped: list, n_per_class: int, threshold: float) -> str | None:
    """One line naming every class with fewer than ``n_per_class`` images, or None."""
    if not shortfalls and not skipped:
        return None
    parts = [f"{name} {s['selected']}" + (f" ({s['fallback']} below the threshold)" if s["fallback"] else "")
             for name, s in shortfalls.items()]
    parts += [f"{name} 0 (no correct image: class left out)" for name in skipped]
    return (f"selection: asked for {n_per_class} correct images per class with confidence > {threshold}; "
            f"fewer for: {', '.join(parts)}")


def select_high_confidence(sae: KSparseAutoencoder, clf: SparseCodeClassifier, data: FashionMNIST,
                           device: torch.device, n_per_class: int, threshold: float = 0.8,
                           seed: int = 0, min_per_class: int = 1) -> Selection:
    """``n_per_class`` random (seeded) test images per class that are classified correctly with
    softmax confidence > ``threshold``.

    A class with fewer passing images keeps them all; one with fewer than ``min_per_class`` (default 1)
    is topped up with its most confident correct images below the threshold (``Selection.fallback``);
    one with no correct image is left out. Any shortfall issues one ``UserWarning`` naming the classes
    and counts, also kept in ``Selection.warning`` / ``shortfalls`` / ``skipped``.
    """
    _check_int("n_per_class", n_per_class, low=1)
    _check_int("min_per_class", min_per_class, low=1)
    _check_float("threshold", threshold, low=0.0, high=1.0, high_open=True)
    probs = predict(sae, clf, data.x_test, device).cpu()
    confidence, pred = probs.max(1)
    correct_mask = pred == data.y_test
    gen = torch.Generator().manual_seed(seed)
    chosen, fills, counts, shortfalls, skipped = [], [], {}, {}, []
    for c, name in enumerate(data.classes):
        correct = torch.nonzero(correct_mask & (data.y_test == c))[:, 0]
        passing = correct[confidence[correct] > threshold]
        counts[name] = len(passing)
        if len(correct) == 0:
            skipped.append(name)
            continue
        idx, n_fill = _pick_class(passing, correct, confidence, n_per_class, min_per_class, gen)
        if len(idx) < n_per_class:
            shortfalls[name] = {"passing": len(passing), "selected": len(idx), "fallback": n_fill}
        chosen.append(idx)
        fills.append(~torch.isin(idx, passing))
    if not chosen:
        raise ValueError("no test image is classified correctly: nothing to explain (is the model trained?)")
    warning = _shortfall_warning(shortfalls, skipped, n_per_class, threshold)
    if warning:
        warnings.warn(warning, stacklevel=2)
    idx = torch.cat(chosen)
    return Selection(idx, data.x_test[idx], data.y_test[idx], confidence[idx], counts, n_per_class,
                     torch.cat(fills), shortfalls, skipped, warning)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``[N, P]`` -> ``[N]``), over the
    entries where ``mask: [N, P]`` is True (all if None); 0 where a row is constant."""
    if mask is None:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    else:
        count = np.maximum(mask.sum(1, keepdims=True), 1)
        a = np.where(mask, a - np.where(mask, a, 0.0).sum(1, keepdims=True) / count, 0.0)
        b = np.where(mask, b - np.where(mask, b, 0.0).sum(1, keepdims=True) / count, 0.0)
    denom = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    return np.divide(np.einsum("ij,ij->i", a, b), denom, out=np.zeros(len(a)), where=denom > 0)


def _row_ranks(a: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) within each row of ``a: [N, P]``; with ``mask:
    [N, P]`` only the True entries are ranked (the others are NaN). ``scipy.stats.rankdata(a, axis=1)`` (with
    ``nan_policy="omit"`` for the mask), from one torch sort per row (a third faster here)."""
    values = torch.from_numpy(np.asarray(a, dtype=np.float64))
    dropped = None if mask is None else ~torch.from_numpy(np.asarray(mask, dtype=bool))
    if dropped is not None:
        values = values.masked_fill(dropped, math.nan)  # sorted last
    ordered, order = values.sort(dim=1)
    n, p = ordered.shape
    starts = torch.ones_like(ordered, dtype=torch.bool)  # first entry of a run of equal values
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)  # last entry of such a run
    ends[:, :-1] = starts[:, 1:]
    pos = torch.arange(p).expand(n, p)
    first = torch.where(starts, pos, 0).cummax(1).values
    last = torch.where(ends, pos, p - 1).flip(1).cummin(1).values.flip(1)
    ranks = torch.empty_like(ordered).scatter_(1, order, (first + last).double() / 2 + 1)
    if dropped is not None:
        ranks.masked_fill_(dropped, math.nan)
    return ranks.numpy()


def rowwise_spearman(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Spearman rank correlation per row (average ranks for ties): ``[N, P], [N, P]`` -> ``[N]``, over the
    entries where ``mask: [N, P]`` is True (all if None; entries outside it are neither ranked nor compared)."""
    return _rowwise_pearson(_row_ranks(a, mask), _row_ranks(b, mask), mask)


BOOTSTRAP_CACHE = 4  # (n, seed) draw-count tables bootstrap_ci keeps (16 MB each at n = 1000, 2000 resamples)


@functools.lru_cache(maxsize=BOOTSTRAP_CACHE)
def _bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]``: how often each of ``n`` values is drawn in each of ``bootstrap_ci``'s resamples (the
    same seeded draws), kept for the next call with the same ``n`` and seed (hundreds per validation run)."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.bincount((draws + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    counts = counts.reshape(n_boot, n).astype(np.float64)
    counts.flags.writeable = False
    return counts


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values: [N]``, or of
    ``statistic(resamples: [n_boot, N, ...]) -> [n_boot]`` for ``values: [N, ...]`` (rows resampled)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if statistic is None and values.ndim == 1:  # the mean of each resample: its draw counts times the values
        estimates = _bootstrap_counts(len(values), n_boot, seed) @ values / len(values)
    else:
        resamples = values[np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))]
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


def _check_pairing_labels(labels, n: int) -> np.ndarray:
    """``labels: [n]`` integer class ids (tensor or array) as an int64 array; ``ValueError`` otherwise."""
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be {n} integer class ids (shape [{n}], one per image), "
                         f"got {lab.dtype} {list(lab.shape)}")
    return lab.astype(np.int64)


def partner_images(labels, same_class: bool, seed: int = 0) -> np.ndarray:
    """A seeded partner ``j != i`` for every image ``i``: ``labels: [N]`` -> ``partner: [N]`` indices.

    ``same_class=True``: a different image of the same class (each class's images in a random cycle, so
    every image is some image's partner once); ``same_class=False``: an image of a different class, drawn
    uniformly. Raises ``ValueError`` if a class has one image only (same) or there is one class (different).
    """
    if not isinstance(same_class, bool):
        raise ValueError(f"same_class must be True or False, got {same_class!r}")
    lab = _check_pairing_labels(labels, len(labels))
    rng = np.random.default_rng(seed)
    partner = np.empty(len(lab), dtype=np.int64)
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        if same_class:
            if len(idx) < 2:
                raise ValueError(f"class {c} has {len(idx)} image; a same-class partner needs at least 2 per class")
            cycle = rng.permutation(idx)
            partner[cycle] = np.roll(cycle, -1)
        else:
            others = np.flatnonzero(lab != c)
            if len(others) == 0:
                raise ValueError(f"every image is of class {c}; a different-class partner needs at least 2 classes")
            partner[idx] = rng.choice(others, size=len(idx))
    return partner


AGREEMENT_KINDS = {"signed": lambda v: v, "abs": np.abs}  # map transform before the rank correlation
PIXEL_SETS = ("all", "object")  # all 784 pixels; object pixels (x > 0) of the image(s) compared


def _agreement_ranks(v: np.ndarray, obj: np.ndarray, partner: np.ndarray) -> dict:
    """Row ranks of one method's transformed maps ``v: [N, P]`` that the agreement statistics need, on each
    image's object pixels ``obj: [N, P]`` and (own rows and partner rows) on the pixels that are object in
    both an image and its ``partner: [N]`` (all-pixel ranks come from ``cross_method_statistics``)."""
    both = obj & obj[partner]
    return {"object": _row_ranks(v, obj), "both": _row_ranks(v, both),
            "both_partner": _row_ranks(v[partner], both)}


def _agreement_against_null(ra: dict, rb: dict, obj: np.ndarray, partner: np.ndarray, seed: int) -> dict:
    """Spearman of methods A and B on all and on object pixels against the different-image null, from
    ``_agreement_ranks`` of each (``ra``, ``rb``): ``{pixels: {"value", "null", "excess"}}``.

    The value on object pixels uses image i's mask ``obj: [N, P]``; the null pairs A on image i with B on its
    same-class partner j and B on i with A on j (``partner: [N]``, averaged), on the pixels object in both.
    """
    both = obj & obj[partner]
    out = {}
    for pixels in PIXEL_SETS:
        if pixels == "all":
            value = _rowwise_pearson(ra["all"], rb["all"])
            null = (_rowwise_pearson(ra["all"], rb["all"][partner]) + _rowwise_pearson(ra["all"][partner], rb["all"]))
        else:
            value = _rowwise_pearson(ra["object"], rb["object"], obj)
            null = (_rowwise_pearson(ra["both"], rb["both_partner"], both)
                    + _rowwise_pearson(ra["both_partner"], rb["both"], both))
        excess = value - null / 2
        out[pixels] = {"value": summarize(value, seed), "null": summarize(null / 2, seed),
                       "excess": {**summarize(excess, seed), "p_value": _wilcoxon_p(excess)}}
    return out


def cross_method_statistics(maps: dict[str, torch.Tensor], seed: int = 0, x: torch.Tensor | None = None,
                            labels=None) -> dict:
    """Agreement between every pair of methods, per image then summarised over images.

    ``maps``: method -> ``[N, 784]``. For each pair: Spearman and Pearson correlation on signed and on
    absolute maps (mean, bootstrap 95 % CI) and the IoU of the top-1 % pixels. For each method: mean, max
    and std of the map (per image, averaged).

    With the images ``x: [N, 784]`` and their ``labels: [N]``, each pair also gets ``vs_null``: Spearman
    signed and of |maps| (``spearman_{signed,abs}_{all,object}``), on all pixels and on object pixels
    (x > 0), each next to a *different-image null* -- the same statistic between method A's map of image
    i and method B's map of a different image j of the same class (seeded ``partner_images``; averaged
    with B on i vs A on j; object pixels: those of both images) -- and the excess over that null with its
    CI and a paired Wilcoxon p-value against the null (not against 0). The null keeps what the two
    methods share regardless of the image (their smoothness, their background handling, the class's
    typical shape) and removes only "the same image": the excess is what A and B agree on about *this* image.
    An image that is the only one of its class here has no partner: value and null alike are measured on the
    others (``null_n_images`` counts them); with none left, ``vs_null`` is left out.
    """
    if not isinstance(maps, dict) or len(maps) < 2:
        raise ValueError(f"maps must be a dict of at least two methods' maps, got {type(maps).__name__} "
                         f"with {len(maps) if isinstance(maps, dict) else 0} entries")
    arrays = {m: _as_maps(v, f"maps[{m!r}]") for m, v in maps.items()}
    n = len(next(iter(arrays.values())))
    if any(len(v) != n for v in arrays.values()):
        raise ValueError(f"every method needs maps of the same images, got {[len(v) for v in arrays.values()]}")
    if (x is None) != (labels is None):
        raise ValueError("pass both x and labels (for the different-image null) or neither")
    ranks = {(m, kind): _row_ranks(f(v)) for m, v in arrays.items() for kind, f in AGREEMENT_KINDS.items()}
    null, n_null = None, 0
    if x is not None:
        lab = _check_pairing_labels(labels, n)
        _, cls, class_size = np.unique(lab, return_inverse=True, return_counts=True)
        keep = class_size[cls] >= 2
        n_null = int(keep.sum())  # images with a same-class partner: value and null are both measured on them
        if n_null:
            obj = _as_maps(x, "x", n)[keep] > 0
            partner = partner_images(lab[keep], same_class=True, seed=seed)
            null_ranks = {(m, kind): {"all": r[keep], **_agreement_ranks(AGREEMENT_KINDS[kind](arrays[m][keep]),
                                                                          obj, partner)}
                          for (m, kind), r in ranks.items()}
            null = (obj, partner, null_ranks)
    pairs = {}
    names = list(arrays)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            entry = {}
            for kind, f in AGREEMENT_KINDS.items():
                entry[f"spearman_{kind}"] = summarize(_rowwise_pearson(ranks[a, kind], ranks[b, kind]), seed)
                entry[f"pearson_{kind}"] = summarize(_rowwise_pearson(f(arrays[a]), f(arrays[b])), seed)
            entry["top1pct_iou"] = summarize(top_fraction_iou(arrays[a], arrays[b]), seed)
            if null is not None:
                obj, partner, null_ranks = null
                entry["vs_null"] = {f"spearman_{kind}_{pixels}": stats for kind in AGREEMENT_KINDS for pixels, stats
                                    in _agreement_against_null(null_ranks[a, kind], null_ranks[b, kind], obj,
                                                               partner, seed).items()}
            pairs[f"{a}|{b}"] = entry
    per_method = {m: {"mean": float(v.mean(1).mean()), "max": float(v.max(1).mean()),
                      "std": float(v.std(1).mean()), "mean_abs": float(np.abs(v).mean(1).mean())}
                  for m, v in arrays.items()}
    return {"pairs": pairs, "per_method": per_method, **({"null_n_images": n_null} if x is not None else {})}


def correlation_matrix(stats: dict, methods: Sequence[str], key: str = "spearman_abs",
                       statistic: str | None = None) -> np.ndarray:
    """``[M, M]`` matrix of the mean per-image correlation ``key`` from ``cross_method_statistics``; with
    ``statistic`` ("value", "null" or "excess") ``key`` names a ``vs_null`` entry (e.g. "spearman_signed_object");
    the diagonal is 1 for correlations and NaN (undefined, drawn blank) for the null and the excess."""
    if statistic not in (None, "value", "null", "excess"):
        raise ValueError(f"statistic must be None, 'value', 'null' or 'excess', got {statistic!r}")
    m = np.eye(len(methods)) if statistic in (None, "value") else np.diag(np.full(len(methods), np.nan))
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            pair = stats["pairs"].get(f"{a}|{b}") or stats["pairs"].get(f"{b}|{a}")
            if i != j and pair is not None:
                m[i, j] = (pair[key] if statistic is None else pair["vs_null"][key][statistic])["mean"]
    return m


COMPLETENESS_POINTS = 1024  # intervals of the dense straight path scanned by completeness_decomposition
PATH_TOPK_STRIDE = 4  # path scans find the top-k set every this many points, and between two that differ
MIN_COMPLETENESS_POINTS = 1000  # fewer intervals would merge switches the decomposition must see apart
COMPLETENESS_TOLERANCE = 0.01  # IG's error must equal minus the jump sum within this share of |F(x) - F(0)|
GAP_FLOOR = 1e-12  # |F(x) - F(0)| is clamped to at least this where it divides
MIN_SUBGRID_STEPS = 17  # smallest trapezoid rule read off the dense scan (its points are a subset of the scan's)


def _topk_changes(values: torch.Tensor, indices: torch.Tensor,
                  d_hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k set changes between consecutive path points: the ReLU'd top-k ``values`` and their unit
    ``indices: [B, S, k]`` at each point (any order, as ``_path_top_k`` gives them) -> ``(swaps, jumps): [B, S-1]``.

    ``swaps`` counts the units that enter the top-k set in each interval (as many leave), so several swaps
    inside one interval all count. A swap exchanges two units where their pre-activations are equal; the code
    jumps by that common value after ReLU, so F jumps only if it is > 0. ``jumps`` marks intervals with a swap
    where the k-th largest pre-activation (the value at which units swap) is > 0 at both ends (the smallest
    ReLU'd value is > 0 exactly then); a swap at or below 0 exchanges two zeros (continuous), and a ReLU
    zero-crossing changes no top-k set at all.
    """
    member = torch.zeros((*indices.shape[:-1], d_hidden), dtype=torch.bool, device=indices.device)
    member.scatter_(-1, indices, True)
    swaps = (member[:, 1:] & ~member[:, :-1]).sum(-1)
    kth_positive = values.min(-1).values > 0  # [B, S]
    return swaps, (swaps > 0) & kth_positive[:, 1:] & kth_positive[:, :-1]


def _path_top_k(sae: KSparseAutoencoder, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sae.top_k`` at every point of straight paths: ``pre: [b, S, H]``, linear in a parameter that increases
    along S (``pre = c + alpha d``, alphas sorted) -> ``(values, indices): [b, S, k]``.

    Two units' pre-activations are lines in alpha and cross at most once, so a top-k set found at two points is
    the set at every point between them. ``torch.topk`` runs every ``PATH_TOPK_STRIDE`` points (and at the last)
    and on the points between two of those whose sets differ; the other points take the set and read its values
    (the default model's top-k set changes at ~80 of 1024 intervals of a path).
    """
    b, n_points, d_hidden = pre.shape

    def top_indices(p: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., k]
        return sae.top_k(p.reshape(-1, d_hidden))[1].view(*p.shape[:-1], -1)

    coarse = torch.unique(torch.cat([torch.arange(0, n_points, PATH_TOPK_STRIDE), torch.tensor([n_points - 1])]))
    ends = top_indices(pre[:, coarse.to(pre.device)]).sort(-1).values  # [b, C, k]
    same = (ends[:, 1:] == ends[:, :-1]).all(-1)  # [b, C - 1]: the interval's two ends have one set
    interval = (torch.arange(n_points) // PATH_TOPK_STRIDE).clamp(max=max(len(coarse) - 2, 0)).to(pre.device)
    indices = ends[:, interval]  # [b, S, k]: each point takes its interval's first set
    redo = ~same[:, interval] if len(coarse) > 1 else torch.zeros(b, n_points, dtype=torch.bool, device=pre.device)
    if bool(redo.any()):
        indices[redo] = top_indices(pre[redo])
    return F.relu(pre.gather(-1, indices)), indices


def _scan_path(model: nn.Module, x: torch.Tensor, target: torch.Tensor, alphas: torch.Tensor, output: str,
               rows: int, k: int | None = None) -> tuple[torch.Tensor, ...]:
    """F and dF/dalpha at ``alphas: [S]`` on the straight path from the zero image to each ``x: [B, D]``.

    For a model with an affine first layer (``affine_split() -> (A, c, head)``) the path is walked in that
    layer's output space, exactly: ``pre(alpha) = c + alpha x A^T`` and ``dF/dalpha = grad_pre F . x A^T``.
    Returns ``(values, slopes): [B, S]``; with ``k`` (the top-k size; ``model`` is then a
    ``SparseCodePipeline``) also ``(swaps, jumps): [B, S-1]`` from ``_topk_changes``, between consecutive
    points in increasing alpha.
    """
    A, c, head = model.affine_split()
    with torch.no_grad():
        direction, c = F.linear(x, A.detach()), c.detach()  # [B, H], [H]
    alphas, order = alphas.to(x).sort()  # walked in increasing alpha (``_path_top_k``), returned in the given order
    per = max(1, rows // len(alphas))
    values, slopes, changes = [], [], []
    for i in range(0, len(x), per):
        d, t = direction[i:i + per], target[i:i + per].repeat_interleave(len(alphas))
        pre = (c + alphas[None, :, None] * d[:, None]).reshape(-1, d.shape[1])  # [b * S, H]
        if isinstance(model, SparseCodePipeline):
            score, slope, code, indices = _pipeline_slopes(model, pre.view(len(d), len(alphas), -1), d, t, output)
            if k is not None:
                changes.append(_topk_changes(code.view(len(d), len(alphas), -1),
                                             indices.view(len(d), len(alphas), -1), pre.shape[1]))
        else:
            with torch.enable_grad():
                pre.requires_grad_(True)
                score = _score(head(pre), t, output)
                grad = torch.autograd.grad(score.sum(), pre)[0]
            slope = (grad.view(len(d), len(alphas), -1) * d[:, None]).sum(-1)
        values.append(score.detach().view(len(d), -1))
        slopes.append(slope.view(len(d), -1))
    unsort = order.argsort().to(x.device)
    out = (torch.cat(values)[:, unsort], torch.cat(slopes)[:, unsort])
    return out if k is None else out + tuple(torch.cat(part) for part in zip(*changes))


def _pipeline_slopes(pipeline: SparseCodePipeline, pre: torch.Tensor, direction: torch.Tensor, target: torch.Tensor,
                     output: str) -> tuple[torch.Tensor, ...]:
    """``_scan_path``'s points for the pipeline: ``pre: [b, S, H]`` (S increasing alphas per image),
    ``direction: [b, H]``, ``target: [b * S]`` -> F and dF/dalpha ``[b * S]``, the active codes and their units
    ``[b * S, k]``.

    F depends on ``pre`` only through the k active codes ``z_j = ReLU(pre_j)``, so ``dF/dalpha = sum_j dF/dz_j
    [z_j > 0] direction_j`` over those k units: a ``[b * S, k]`` gradient instead of ``[b * S, H]``; the top-k
    sets come from ``_path_top_k``. For a logit of a ReLU classifier that slope depends only on the point's
    activation pattern (``_activation_pattern``: the active set, which codes are > 0, which hidden units are > 0),
    so the slope is computed only on points whose pattern differs from the previous point's on the same path (a
    fifth of them on the default model; ``_relu_stack_slopes``) and the others take that point's slope."""
    code, indices = (v.flatten(0, 1) for v in _path_top_k(pipeline.sae, pre.detach()))
    along = direction[torch.arange(len(direction), device=pre.device).repeat_interleave(pre.shape[1])[:, None],
                      indices] * (code > 0)  # [b * S, k]: dz_j / dalpha of each active code
    if output != "logit" or not _is_relu_stack(pipeline.clf):
        with torch.enable_grad():
            active = code.clone().requires_grad_(True)
            score = _score(pipeline.clf.forward_sparse(active, indices), target, output)
            grad = torch.autograd.grad(score.sum(), active)[0]
        return score.detach(), (grad * along).sum(-1), code, indices
    with torch.no_grad():
        logits, pattern = _activation_pattern(pipeline.clf, code, indices)
    new = torch.zeros(len(code), dtype=torch.bool, device=code.device)
    new[::pre.shape[1]] = True  # each path's first point
    for part in pattern:
        new[1:] |= (part[1:] != part[:-1]).any(1)
    rows = new.nonzero()[:, 0]
    slope = _relu_stack_slopes(pipeline.clf, indices[rows], along[rows], F.one_hot(target[rows], logits.shape[1]),
                               [part[rows] for part in pattern[2:]])
    return _score(logits, target, output), slope[new.cumsum(0) - 1], code, indices


@torch.no_grad()
def _relu_stack_slopes(clf: SparseCodeClassifier, indices: torch.Tensor, along: torch.Tensor, target: torch.Tensor,
                       relu_masks: list[torch.Tensor]) -> torch.Tensor:
    """d(target . logits)/dalpha of ``clf`` (``_is_relu_stack``; ``target: [n, C]``, e.g.
    one-hot) at points with active units ``indices: [n, k]`` moving at ``along: [n, k]`` per unit alpha and the
    ReLU masks ``relu_masks`` (each ReLU's input > 0, ``[n, width]``, in layer order) -> ``[n]``: ``target``
    back through each Linear and ReLU mask (a vector-Jacobian product, no autograd), dotted with the first
    layer's output velocity ``sum_j along_j W1[unit_j]``."""
    masks = iter(reversed(relu_masks))
    grad = target.to(along)
    for layer in reversed(list(clf.rest)):
        if isinstance(layer, nn.Linear):
            grad = grad @ layer.weight
        elif isinstance(layer, nn.ReLU):
            grad = grad * next(masks)
    velocity = F.embedding_bag(indices, clf.W1, per_sample_weights=along, mode="sum")
    return (grad * velocity).sum(-1)


def _is_relu_stack(clf: SparseCodeClassifier) -> bool:
    """True when ``clf.rest`` is an evaluation-mode stack of Linear, ReLU and Dropout layers: then a logit's
    gradient depends only on the ReLU masks (``_activation_pattern``), nothing else could change it."""
    return not any(m.training for m in clf.modules()) and all(
        isinstance(layer, (nn.Linear, nn.ReLU, nn.Dropout)) for layer in clf.rest)


def _activation_pattern(clf: SparseCodeClassifier, values: torch.Tensor,
                        indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``clf.forward_sparse(values, indices)`` (``values, indices: [N, k]``; ``clf`` an ``_is_relu_stack``) ->
    ``(logits: [N, C], pattern)``, ``pattern`` a list of ``[N, *]`` tensors: each point's active units (sorted),
    which of their codes are > 0 and which inputs of each ReLU are > 0; points equal in every part have equal
    logit gradients."""
    hidden = clf.first_layer_sparse(values, indices)
    units, order = indices.sort(dim=1)
    parts = [units, values.gather(1, order) > 0]
    for layer in clf.rest:
        if isinstance(layer, nn.ReLU):
            parts.append(hidden > 0)
        hidden = layer(hidden)
    return hidden, parts


def _ig_sums(model: nn.Module, x: torch.Tensor, target: torch.Tensor, rules: Sequence[tuple[str, int]],
             output: str, rows: int) -> dict[tuple[str, int], torch.Tensor]:
    """``sum(attr)`` of integrated gradients from 0 for every ``(method, n_steps)`` rule: ``x: [B, D]`` ->
    ``{rule: [B]}``. With ``affine_split`` all rules share one scan of the head (``sum(attr)`` is the
    quadrature of dF/dalpha); other models run ``integrated_gradients`` once per rule."""
    if getattr(model, "affine_split", None) is None:
        return {(m, n): integrated_gradients(model, x, target, n_steps=n, method=m, output=output,
                                             internal_batch_size=rows).sum(1) for m, n in rules}
    nodes = [ig_quadrature(n, m) for m, n in rules]
    _, slopes = _scan_path(model, x, target, torch.cat([a for a, _ in nodes]), output, rows)
    sums, start = {}, 0
    for rule, (a, w) in zip(rules, nodes):
        sums[rule] = slopes[:, start:start + len(a)] @ w.to(slopes)
        start += len(a)
    return sums


def count_path_switches(sae: KSparseAutoencoder, x: torch.Tensor, n_points: int = COMPLETENESS_POINTS) -> torch.Tensor:
    """Discontinuous top-k swaps on the straight path from the zero image to each ``x: [B, 784]`` -> ``[B]``.

    Scans ``n_points`` intervals of the encoder's pre-activations (``_topk_changes``): ReLU zero-crossings
    and swaps below 0 are continuous and not counted; several swaps inside one interval all count.
    """
    x, _ = as_flat_images(x)
    _check_int("n_points", n_points, low=1)
    alphas = torch.linspace(0, 1, n_points + 1, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        start, direction = sae.encoder_bias(), F.linear(x, sae.W_enc)
        counts = [(swaps * jumps).sum(1) for swaps, jumps in
                  (_topk_changes(*_path_top_k(sae, start + alphas[None, :, None] * direction[i:i + 1, None]),
                                 sae.d_hidden) for i in range(len(x)))]
    return torch.cat(counts).cpu()


def completeness_decomposition(pipeline: SparseCodePipeline, x: torch.Tensor, target,
                               n_points: int = COMPLETENESS_POINTS, n_steps: int = 50, method: str = "gausslegendre",
                               output: str = "logit", tolerance: float = COMPLETENESS_TOLERANCE,
                               n_steps_list: Sequence[int] = (), internal_batch_size: int | None = None,
                               seed: int = 0) -> dict:
    """Completeness measured directly on a dense straight path from the zero image to each ``x: [N, 784]``.

    F and dF/dalpha are evaluated at ``n_points + 1`` evenly spaced points (in pre-activation space, exact),
    and ``F(x) - F(0)`` is split into

    * ``smooth``: the gradient integral (trapezoid rule on every interval): what IG approximates;
    * ``jump_sum``: over intervals where the top-k set changes discontinuously (``_topk_changes``), F's
      change minus the gradient integral of that interval;
    * ``residual = F(x) - F(0) - smooth - jump_sum``: the trapezoid's error on continuous intervals (kinks
      of the ReLU head), reported to show the scan is dense enough.

    IG's completeness error at ``n_steps`` (``sum(attr) - (F(x) - F(0))``, quadrature ``method``) should
    then equal ``-jump_sum``: ``mismatch = |ig_error + jump_sum| / |F(x) - F(0)|`` per image and the share
    within ``tolerance``. ``target``: int or ``[N]``. Per-image lists plus ``summarize`` dicts.

    ``table[rule][n]``: IG's median relative completeness error ``|ig_error| / |F(x) - F(0)|``, the median
    mismatch and the share within ``tolerance`` -- the error stays at the jumps' size while the mismatch
    shrinks with n -- for ``method`` at ``n_steps`` and every count in ``n_steps_list`` (one extra scan of
    that many points), and for free for the trapezoid rule at every n with ``n - 1`` dividing
    ``n_points`` (its points are scan points: 17, 33, ..., n_points + 1 for n_points = 1024).
    """
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"completeness_decomposition needs a SparseCodePipeline, got {type(pipeline).__name__}")
    x, _, target, _ = _prepare(pipeline, x, target, output)
    _check_int("n_points", n_points, low=MIN_COMPLETENESS_POINTS)
    _check_float("tolerance", tolerance, low=0.0, low_open=True)
    rows = _rows_per_pass(internal_batch_size)
    alphas = torch.linspace(0, 1, n_points + 1, dtype=torch.float64)
    values, slopes, swaps, jumps = _scan_path(pipeline, x, target, alphas, output, rows, pipeline.sae.k)
    smooth = (slopes[:, 1:] + slopes[:, :-1]) / (2 * n_points)  # [N, n_points] gradient integral per interval
    jump = torch.where(jumps, values[:, 1:] - values[:, :-1] - smooth, torch.zeros_like(smooth))
    gap = values[:, -1] - values[:, 0]
    for n in n_steps_list:
        _check_int("n_steps_list entry", n, low=1)
    steps = sorted({n_steps, *map(int, n_steps_list)})
    errors = {rule: s - gap for rule, s in _ig_sums(pipeline, x, target, [(method, n) for n in steps], output,
                                                     rows).items()}
    errors.update({("riemann_trapezoid", n): _subgrid_trapezoid(slopes, n) - gap for n in _subgrid_steps(n_points)})
    ig_error = errors[method, n_steps]
    parts = {"gap": gap, "smooth": smooth.sum(1), "jump_sum": jump.sum(1), "ig_error": ig_error,
             "switches": (swaps * jumps).sum(1), "continuous_changes": (swaps * ~jumps).sum(1)}
    parts["residual"] = gap - parts["smooth"] - parts["jump_sum"]
    scale = gap.abs().clamp_min(GAP_FLOOR)
    parts["mismatch"] = (ig_error + parts["jump_sum"]).abs() / scale
    per_image = {name: v.double().cpu().numpy() for name, v in parts.items()}
    table = {}
    for (rule, n), err in errors.items():
        rel = (err.abs() / scale).double().cpu().numpy()
        mismatch = ((err + parts["jump_sum"]).abs() / scale).double().cpu().numpy()
        table.setdefault(rule, {})[n] = {"median_rel_error": float(np.median(rel)),
                                         "median_mismatch": float(np.median(mismatch)),
                                         "share_within_tolerance": float((mismatch <= tolerance).mean())}
    return {"n_points": n_points, "n_steps": n_steps, "method": method, "tolerance": tolerance, "table": table,
            "share_within_tolerance": float((per_image["mismatch"] <= tolerance).mean()),
            "share_with_switches": float((per_image["switches"] > 0).mean()),
            "summary": {name: summarize(v, seed) for name, v in per_image.items()},
            "relative": {name: summarize(np.abs(per_image[name]) / scale.double().cpu().numpy(), seed)
                         for name in ("jump_sum", "residual", "ig_error")},
            "per_image": {name: v.tolist() for name, v in per_image.items()}}


def _subgrid_steps(n_points: int) -> list[int]:
    """Trapezoid step counts ``n >= MIN_SUBGRID_STEPS`` whose points are a subset of ``n_points + 1``
    evenly spaced scan points (``n - 1`` divides ``n_points``)."""
    return [d + 1 for d in range(MIN_SUBGRID_STEPS - 1, n_points + 1) if n_points % d == 0]


def _subgrid_trapezoid(slopes: torch.Tensor, n: int) -> torch.Tensor:
    """IG's ``sum(attr)`` by the trapezoid rule with ``n`` steps from scan slopes ``[B, n_points + 1]``."""
    _, weights = ig_quadrature(n, "riemann_trapezoid")
    return slopes[:, ::(slopes.shape[1] - 1) // (n - 1)] @ weights.to(slopes)


def ig_completeness(model: nn.Module, x: torch.Tensor, target,
                    n_steps_list: Sequence[int] = (16, 32, 50, 100, 200, 500),
                    methods: Sequence[str] = ("gausslegendre", "riemann_trapezoid"), tolerance: float = 0.05,
                    output: str = "logit", reference_steps: int = 50) -> dict:
    """Relative completeness error of IG, ``|sum(attr) - (F(x) - F(0))| / |F(x) - F(0)|`` per image,
    for every quadrature ``method`` and ``n_steps``; reports the median and the share within ``tolerance``.
    Returns ``{"table": {method: {n_steps: {...}}}}`` plus ``"per_image_50"``: per-image errors of the
    first method at ``reference_steps`` (None if that n_steps was not run). Models with ``affine_split``
    compute every rule in one scan of the head (``_ig_sums``).
    """
    x, _ = as_flat_images(x)
    fn = _output_fn(model, output)
    with torch.no_grad():
        target = _check_target(target, len(x), model(x[:1]).shape[1], x.device)
        gap = fn(x, target) - fn(torch.zeros_like(x), target)
    rules = [(m, int(n)) for m in methods for n in n_steps_list]
    sums = _ig_sums(model, x, target, rules, output, DEFAULT_INTERNAL_BATCH)
    table, per_image = {m: {} for m in methods}, None
    for (method, n), total in sums.items():
        rel = ((total - gap).abs() / gap.abs().clamp_min(GAP_FLOOR)).detach().cpu().numpy()
        table[method][n] = {"median_rel_error": float(np.median(rel)), "mean_rel_error": float(rel.mean()),
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
    """Orderings that know nothing about the model, each ``[N, 784]`` and non-negative: random over all
    pixels; random over object pixels only (``random_object``: the object pixels, x > 0, first in random
    order, then the rest in random order); pixel intensity |x|; Sobel edges."""
    gen = torch.Generator().manual_seed(seed)
    random = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    return {"random": random, "random_object": random + (x > 0).to(x.dtype), "intensity": x.abs(),
            "edges": edge_map(x)}


def removal_order(scores: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Pixel indices ``[N, P]`` by descending ``scores: [N, P]`` (most relevant first, MoRF); reversed
    (``.flip(1)``) it is least relevant first (LeRF).

    Ties are broken at random (seeded): the columns are shuffled, then sorted stably, so a constant map
    behaves exactly like a random ordering rather than a raster scan.
    """
    gen = torch.Generator().manual_seed(seed)
    shuffle = torch.rand(scores.shape, generator=gen).argsort(dim=1).to(scores.device)  # [N, P] per-row shuffle
    return shuffle.gather(1, scores.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))


@torch.no_grad()
def perturbation_curves(model: nn.Module, x: torch.Tensor, target: torch.Tensor, scores: torch.Tensor,
                        mode: str = "deletion", pixels_per_step: int = 28, seed: int = 0) -> torch.Tensor:
    """Target-class probability as pixels are removed (``deletion``: set to 0, most important first)
    or added to a zero image (``insertion``), ``pixels_per_step`` at a time: ``removal_curves`` on the zero
    substrate for one ordering (insertion = deletion least-relevant-first, read backwards).

    ``x, scores: [N, 784]``, ``target: [N]`` -> ``[N, n_points]`` with ``n_points = 784/pixels_per_step + 1``
    (the first point is the untouched image for deletion, the zero image for insertion).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    order = removal_order(scores.to(x.device), seed)
    if mode == "insertion":
        order = order.flip(1)
    curves = removal_curves(model, x, target, order[None], "zero", pixels_per_step, seed)[0]
    return curves if mode == "deletion" else curves.flip(1)


def curve_auc(curves: torch.Tensor) -> np.ndarray:
    """Area under each curve ``[N, T]`` on a [0, 1] x-axis (trapezoid rule) -> ``[N]``."""
    y = curves.double().cpu().numpy()
    return ((y[:, 1:] + y[:, :-1]) / 2).mean(1)


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


# --- faithfulness under three substrates, MoRF and LeRF --------------------------------------------------
# Removing pixel set S from image x replaces x[S] by a substrate: "zero" (black, which is also IG's
# baseline), "blur" (a Gaussian-blurred copy of x) or "road" (ROAD's noisy linear imputation, Rong et
# al. 2022: the removed pixels solve "each equals the weighted mean of its in-image neighbours", plus
# noise). Orders: most relevant first (MoRF) and least relevant first (LeRF). Insertion of the top n
# pixels into the substrate's start image is the same image as removing the other P - n pixels, so the
# insertion curve of an order is its LeRF deletion curve read backwards (and has the same AUC).

SUBSTRATES = ("zero", "blur", "road")
RANKINGS = ("signed", "abs")  # order maps by signed value or by |value|
BLUR_SIGMA = 2.0  # pixels; std of the Gaussian blur substrate
BLUR_TRUNCATE = 3.0  # the blur kernel ends at this many sigmas
ROAD_NOISE = 0.01  # std of the Gaussian noise added to ROAD-imputed pixels (ROAD's and Quantus' default)
ROAD_DIRECT_WEIGHT = 1 / 6  # ROAD's weight of each of the 4 direct neighbours
ROAD_DIAGONAL_WEIGHT = 1 / 12  # ROAD's weight of each of the 4 diagonal neighbours
# ROAD solver stops when every removed pixel is within ROAD_TOL of its neighbours' weighted mean. Measured on
# the trained model (30 images, 32 orderings, 98 pixels per step) against a 1e-7 solve: imputed pixels off
# by 2e-5 on average (max 3e-3), per-curve AUCs by 6e-4 rms (bias 1e-5), while redrawing ROAD's own noise
# (std ROAD_NOISE) moves them by 1e-2 rms. 1e-3 would be 10-20 % faster but AUCs off by up to 3e-2.
ROAD_TOL = 1e-4
ROAD_MAX_ITER = 1000  # ROAD solver: conjugate-gradient iterations at most (a cap; convergence is checked)
ROAD_COMPACT = 4  # ROAD solver: converged rows are dropped once they are 1 / this of those left
ROAD_CHECK_EVERY_CUDA = 8  # ROAD solver on CUDA: convergence is read (a host sync) every this many iterations
ROAD_GRID = IMAGE_SIDE + 2  # ROAD solver: side of its zero-bordered grids
ROAD_CHUNK = 256  # ROAD solver: images solved together (~0.8 MB per [R, 28, 28] array: the solve stays in cache)
ROAD_CHUNK_CUDA = 16384  # ROAD solver on CUDA: images solved together (launches, not cache, bound it there)
ROAD_PIXELS_PER_STEP = 98  # faithfulness_suite's ROAD step: 12.5 % of the pixels (ROAD evaluates ~10 % steps)
FAITH_ROWS = 8192  # rows (image x ordering) evaluated together in the faithfulness curves
FAITH_ALPHA = 0.05  # significance level of the "beats the random control" verdicts


def blur_images(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Gaussian blur (std ``sigma`` pixels, reflected borders) of every image: ``x: [N, 784]`` -> ``[N, 784]``."""
    flat, _ = as_flat_images(x, name="x")
    _check_float("sigma", sigma, low=0.0, low_open=True)
    radius = min(IMAGE_SIDE - 1, max(1, math.ceil(BLUR_TRUNCATE * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=flat.dtype, device=flat.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    img = F.pad(flat.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE), (radius,) * 4, mode="reflect")
    img = F.conv2d(img, kernel.reshape(1, 1, 1, -1))
    return F.conv2d(img, kernel.reshape(1, 1, -1, 1)).reshape(len(flat), -1)


def _road_pad(v: torch.Tensor) -> torch.Tensor:
    """Images ``v: [R, 784]`` -> zero-bordered grids ``[R, ROAD_GRID ** 2]`` (flat), the solver's layout."""
    return F.pad(v.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), (1, 1, 1, 1)).reshape(len(v), -1)


def _road_unpad(v: torch.Tensor) -> torch.Tensor:
    """Zero-bordered grids ``v: [R, ROAD_GRID ** 2]`` -> images ``[R, 784]``."""
    return v.view(-1, ROAD_GRID, ROAD_GRID)[:, 1:-1, 1:-1].reshape(len(v), -1)


def _road_neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """ROAD's weighted neighbour sum of zero-bordered grids ``v: [R, ROAD_GRID ** 2]`` (``_road_pad``;
    outside the image counts as absent) -> ``[R, ROAD_GRID ** 2]``, meaningless on the border.

    The weights (1/6 direct, 1/12 diagonal) are ``(b b^T - 4 e e^T) / 12`` with ``b = (1, 2, 1)``: a
    separable pass, minus the centre. On the whole batch as one flat array a step to the next column is
    an offset of 1 and to the next row one of ``ROAD_GRID``, so every term is a contiguous slice.
    """
    assert ROAD_DIRECT_WEIGHT == 2 * ROAD_DIAGONAL_WEIGHT, "the separable form needs direct = 2 x diagonal"
    q, g = v.reshape(-1), ROAD_GRID
    rows = torch.add(q[:-2] + q[2:], q[1:-1], alpha=2)  # centred on q[1:-1]
    both = torch.add(rows[:-2 * g] + rows[2 * g:], rows[g:-g], alpha=2)  # centred on q[g + 1:-g - 1]
    return F.pad((both - 4 * q[g + 1:-g - 1]) * ROAD_DIAGONAL_WEIGHT, (g + 1, g + 1)).view(v.shape)


def _check_removed(removed, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool:
        raise ValueError(f"removed must be a bool tensor, got {getattr(removed, 'dtype', type(removed).__name__)}")
    if removed.shape != x.shape:
        raise ValueError(f"removed must have the images' shape {list(x.shape)}, got {list(removed.shape)}")
    return removed.to(x.device)


def _road_cg(kept: torch.Tensor, free: torch.Tensor, v: torch.Tensor, tol: float, max_iter: int,
             check_every: int | None = None) -> torch.Tensor:
    """Jacobi-preconditioned conjugate gradients for ROAD's system ``D v - free * W v = free * W kept``
    (``kept, free, v: [R, 784]``: kept pixels (0 where removed), 1 on the removed pixels, the start (0
    off ``free``)) -> ``v: [R, 784]``. A row leaves the iteration once every pixel's residual over its
    degree is at most ``tol``, so one slow row does not keep the others iterating. Convergence is read every
    ``check_every`` iterations (default: each on the CPU, ``ROAD_CHECK_EVERY_CUDA`` on CUDA, where each read
    waits for the GPU; a converged row iterating on only moves closer to the solution)."""
    check_every = check_every or (ROAD_CHECK_EVERY_CUDA if v.is_cuda else 1)
    interior = _road_pad(torch.ones_like(v[:1]))
    degree = _road_neighbour_sum(interior)  # total in-image neighbour weight of each pixel
    inv_degree = torch.where(interior > 0, 1 / degree, 0)
    kept, free, v = _road_pad(kept), _road_pad(free), _road_pad(v)
    out, rows = v.clone(), torch.arange(len(v), device=v.device)
    r = free * _road_neighbour_sum(kept) - (degree * v - free * _road_neighbour_sum(v))
    z = r * inv_degree
    p, rz = z, torch.linalg.vecdot(r, z)
    for iteration in range(max_iter):
        done = z.abs().amax(1) <= tol if iteration % check_every == 0 else None
        if done is not None and done.sum() * ROAD_COMPACT >= len(rows):  # drop converged rows: a fair share
            out[rows[done]] = v[done]
            left = ~done
            rows, free, v, r, z, p, rz = rows[left], free[left], v[left], r[left], z[left], p[left], rz[left]
            if not len(rows):
                break
        ap = degree * p - free * _road_neighbour_sum(p)
        pap = torch.linalg.vecdot(p, ap)
        alpha = torch.where(pap > 0, rz / torch.where(pap > 0, pap, 1), 0)[:, None]
        v, r = torch.addcmul(v, alpha, p), torch.addcmul(r, -alpha, ap)
        z = r * inv_degree
        rz_new = torch.linalg.vecdot(r, z)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1), 0)[:, None]
        p, rz = torch.addcmul(z, beta, p), rz_new
    out[rows] = v  # rows left after max_iter iterations (their last one may have converged them)
    return _road_unpad(out)


@torch.no_grad()
def road_impute(x: torch.Tensor, removed: torch.Tensor, noise: float = ROAD_NOISE, seed: int = 0,
                init: torch.Tensor | None = None, tol: float = ROAD_TOL, max_iter: int = ROAD_MAX_ITER,
                generator: torch.Generator | None = None, chunk: int | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022), all images at once: ``x: [N, 784]``,
    ``removed: [N, 784]`` bool -> ``[N, 784]`` with kept pixels unchanged and every removed pixel the
    weighted mean of its in-image neighbours (1/6 direct, 1/12 diagonal, renormalised at the border),
    removed or not, plus Gaussian noise of std ``noise`` (CPU generator: ``generator``, else ``seed``).

    The removed pixels solve a sparse symmetric positive definite system (``D v - W v = W x_kept``),
    solved by Jacobi-preconditioned conjugate gradients (``_road_cg``) in chunks of ``chunk`` images (default
    ``ROAD_CHUNK`` on the CPU, ``ROAD_CHUNK_CUDA`` on CUDA) until each image's every residual is below
    ``tol`` (``init: [N, 784]``, e.g. the previous step's imputation, warm-starts it). An image with every
    pixel removed has nothing to impute from: it gets the system's minimum-norm solution, 0 (plus noise).
    """
    flat, _ = as_flat_images(x, name="x")
    removed = _check_removed(removed, flat)
    _check_float("noise", noise, low=0.0)
    _check_float("tol", tol, low=0.0, low_open=True)
    _check_int("max_iter", max_iter, low=1)
    chunk = (ROAD_CHUNK_CUDA if flat.is_cuda else ROAD_CHUNK) if chunk is None else chunk
    _check_int("chunk", chunk, low=1)
    if init is not None and (not isinstance(init, torch.Tensor) or init.shape != flat.shape):
        raise ValueError(f"init must be a tensor of shape {list(flat.shape)}, got {getattr(init, 'shape', init)}")
    free = removed.to(flat.dtype)  # 1 on the unknowns
    kept = flat * (1 - free)
    v = torch.zeros_like(free) if init is None else init.to(flat) * free
    v = v * (free.sum(1, keepdim=True) < free.shape[1]).to(v)  # nothing kept: start (and stay) at 0
    for i in range(0, len(v), chunk):
        part = slice(i, i + chunk)
        v[part] = _road_cg(kept[part], free[part], v[part], tol, max_iter)
    if noise > 0:
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        v = v + noise * torch.randn(v.shape, generator=generator, dtype=torch.float32).to(v)
    return kept + free * v


def balanced_subset(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``n`` items of ``y: [N]`` (class ids), as balanced over classes as possible:
    each class's items in a seeded random order, taken class by class in turn. ``n >= N``: all of them."""
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point():
        raise ValueError(f"y must be a 1-D integer tensor of class ids, got {getattr(y, 'shape', type(y).__name__)}")
    _check_int("n", n, low=1)
    if n >= len(y):
        return torch.arange(len(y))
    gen = torch.Generator().manual_seed(seed)
    y = y.cpu()
    turn = torch.empty(len(y), dtype=torch.long)  # position of each item within its class's random order
    for c in y.unique():
        idx = torch.nonzero(y == c)[:, 0]
        turn[idx[torch.randperm(len(idx), generator=gen)]] = torch.arange(len(idx))
    key = turn * (int(y.max()) + 1) + y  # round-robin over classes
    return key.argsort()[:n].sort().values


def _substrate(x: torch.Tensor, substrate: str) -> torch.Tensor | None:
    """What removed pixels become, ``[N, 784]``, for the fixed substrates; None for ROAD (mask-dependent)."""
    return {"zero": lambda: torch.zeros_like(x), "blur": lambda: blur_images(x), "road": lambda: None}[substrate]()


def _pre_and_head(model: nn.Module):
    """``(pre_fn, head)`` with ``model(x) = head(pre_fn(x))``; ``pre_fn`` is the affine first layer
    (``affine_split``) when the model has one, else the identity (then nothing is incremental)."""
    split = getattr(model, "affine_split", None)
    if split is None:
        return None, model
    A, c, head = split()
    A, c = A.detach(), c.detach()
    return (A, c), head


@torch.no_grad()
def removal_curves(model: nn.Module, x: torch.Tensor, target: torch.Tensor, orders: torch.Tensor,
                   substrate: str = "zero", pixels_per_step: int = 28, seed: int = 0) -> torch.Tensor:
    """Target-class probability as pixels are removed in the given orders, ``pixels_per_step`` at a time,
    each removed pixel replaced by ``substrate`` (``SUBSTRATES``).

    ``x: [N, 784]``, ``target: [N]``, ``orders: [M, N, 784]`` (a permutation of the pixels per row, first
    removed first; e.g. ``removal_order(scores)`` for MoRF, ``.flip(-1)`` for LeRF) ->
    ``[M, N, T + 1]``, ``T = 784 / pixels_per_step``; point 0 is the image, point T the fully removed one.

    Fixed substrates (zero, blur) on a model with an affine first layer (``affine_split``, our pipeline)
    run incrementally: a step changes ``pixels_per_step`` pixels, so the first layer's output moves by as
    many columns of ``A`` (an embedding-bag sum) and only the head runs per step, on the rows whose step
    changed a pixel (removing a pixel that already equals the substrate, such as black background under the
    zero substrate, leaves the image as it was); the fully removed image is the substrate itself, evaluated
    once per image. ROAD imputes every step's image (``road_impute``, warm-started from the previous step's
    solution). Its noise (std ``ROAD_NOISE``, seeded by ``seed``) is one field per image and step, shared by
    every order: paired comparisons between orders see the same noise (common random numbers).
    """
    x, _ = as_flat_images(x, name="x")
    if substrate not in SUBSTRATES:
        raise ValueError(f"substrate must be one of {SUBSTRATES}, got {substrate!r}")
    n, n_pix = x.shape
    _check_int("pixels_per_step", pixels_per_step, low=1, high=n_pix, high_name="the number of pixels")
    if n_pix % pixels_per_step:
        raise ValueError(f"pixels_per_step must divide the {n_pix} pixels, got {pixels_per_step}")
    if not isinstance(orders, torch.Tensor) or orders.ndim != 3 or orders.shape[1:] != (n, n_pix):
        raise ValueError(f"orders must be a tensor of shape [M, {n}, {n_pix}], got {getattr(orders, 'shape', orders)}")
    in_range = orders.dtype == torch.long and orders.numel() and 0 <= orders.min() and orders.max() < n_pix
    if not (in_range and torch.zeros_like(orders, dtype=torch.bool).scatter_(2, orders, True).all()):
        raise ValueError(f"orders must hold an int64 permutation of 0..{n_pix - 1} in every row")
    target = _check_target(target, n, model(x[:1]).shape[1], x.device)
    fill = _substrate(x, substrate)
    per_chunk = max(1, FAITH_ROWS // n)
    chunks = [_curves_chunk(model, x, target, orders[i:i + per_chunk].to(x.device), fill, pixels_per_step,
                            torch.Generator().manual_seed(seed)) for i in range(0, len(orders), per_chunk)]
    return torch.cat(chunks).view(len(orders), n, -1)


def _curves_chunk(model, x, target, orders, fill, step, gen) -> torch.Tensor:
    """``removal_curves`` for ``orders: [m, N, P]`` -> ``[m * N, T + 1]`` (rows ordering-major); ``fill``:
    ``[N, P]`` fixed substrate or None (ROAD, noise from ``gen``)."""
    m, (n, n_pix) = len(orders), x.shape
    order = orders.reshape(m * n, n_pix)
    xs, ts = x.repeat(m, 1), target.repeat(m)
    affine, head = _pre_and_head(model)
    incremental = affine is not None and fill is not None
    points = [_score(model(x), target, "probability").repeat(m)]
    removed, u = torch.zeros_like(order, dtype=torch.bool), xs
    if incremental:
        A, c = affine
        columns = A.T.contiguous()  # [P, H]: column j of A is pixel j's effect on the first layer
        pre, delta = F.linear(x, A, c).repeat(m, 1), (fill - x).repeat(m, 1)
    n_steps = n_pix // step
    for t in range(1, n_steps + 1):
        changed = order[:, (t - 1) * step:t * step]  # [R, step]
        removed.scatter_(1, changed, True)
        if fill is not None and t == n_steps:  # every pixel removed: the substrate image, the same for all orders
            points.append(_score(model(fill), target, "probability").repeat(m))
            continue
        if incremental:
            points.append(_incremental_step(head, pre, columns, changed, delta.gather(1, changed), ts, points[-1]))
            continue
        if fill is not None:
            points.append(_score(model(torch.where(removed, fill.repeat(m, 1), xs)), ts, "probability"))
            continue
        u = road_impute(xs, removed, noise=0.0, init=u, tol=ROAD_TOL)  # noise-free, warm-starts the next step
        eps = torch.randn((n, n_pix), generator=gen, dtype=torch.float32).to(u).repeat(m, 1)
        points.append(_score(model(u + ROAD_NOISE * removed * eps), ts, "probability"))
    return torch.stack(points, dim=1)


def _incremental_step(head, pre: torch.Tensor, columns: torch.Tensor, changed: torch.Tensor, weights: torch.Tensor,
                      target: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """One step of ``_curves_chunk``'s incremental path: moves ``pre: [R, H]`` in place by ``weights: [R, step]``
    times the ``columns: [P, H]`` of the ``changed: [R, step]`` pixels and returns the target probability
    ``[R]``. Rows whose changed pixels all equal the substrate (``weights`` 0: e.g. background under the zero
    substrate) keep their image and ``previous: [R]``: the head runs only on the others (a quarter of the rows
    of the default run's zero-substrate curves)."""
    pre += F.embedding_bag(changed, columns, per_sample_weights=weights, mode="sum")
    moved = weights.ne(0).any(1)
    if bool(moved.all()):
        return _score(head(pre), target, "probability")
    rows = moved.nonzero()[:, 0]
    out = previous.clone()
    out[rows] = _score(head(pre[rows]), target[rows], "probability")
    return out


def faithfulness_orderings(maps: dict[str, torch.Tensor], x: torch.Tensor, seed: int = 0) -> dict[str, dict]:
    """Every ordering the suite measures: ``{key: {"name", "kind", "ranking", "scores": [N, 784]}}``.

    Methods are ranked by signed value (``"<method>/signed"``: strongest positive evidence first) and, if
    a map has negative values, also by |value| (``"<method>/abs"``). Controls (``control_maps``) are
    non-negative, so both rankings coincide: random over all pixels, random over object pixels first,
    intensity, Sobel edges.
    """
    flat, _ = as_flat_images(x, name="x")
    if not isinstance(maps, dict) or not maps:
        raise ValueError(f"maps must be a non-empty dict of method name -> [N, 784] map, got {type(maps).__name__}")
    out = {}
    for name, v in maps.items():
        if not isinstance(v, torch.Tensor) or v.numel() != flat.numel():
            raise ValueError(f"maps[{name!r}] must be a tensor holding {len(flat)} maps of 784 pixels, "
                             f"got {getattr(v, 'shape', type(v).__name__)}")
        scores = v.detach().reshape(flat.shape).to(flat)
        out[f"{name}/signed"] = {"name": name, "kind": "method", "ranking": "signed", "scores": scores}
        if (scores < 0).any():
            out[f"{name}/abs"] = {"name": name, "kind": "method", "ranking": "abs", "scores": scores.abs()}
    for name, scores in control_maps(flat, seed).items():
        out[name] = {"name": name, "kind": "control", "ranking": "signed", "scores": scores}
    return out


def _gap_test(gap: np.ndarray, reference: np.ndarray) -> dict:
    """Paired comparison of per-image gaps with a control's: mean difference, Wilcoxon p, verdict."""
    diff = gap - reference
    p = _wilcoxon_p(diff)
    return {"mean_diff": float(diff.mean()), "p_value": p, "beats": bool(diff.mean() > 0 and p < FAITH_ALPHA)}


def _substrate_summary(orderings: dict, morf: torch.Tensor, lerf: torch.Tensor, seed: int) -> dict:
    """Per-ordering AUC summaries from ``morf, lerf: [K, n, T + 1]`` curves (K orderings in dict order)."""
    auc_m = {key: curve_auc(c) for key, c in zip(orderings, morf)}
    auc_l = {key: curve_auc(c) for key, c in zip(orderings, lerf)}
    gaps = {key: auc_l[key] - auc_m[key] for key in orderings}
    out = {}
    for (key, info), cm, cl in zip(orderings.items(), morf, lerf):
        out[key] = {"name": info["name"], "kind": info["kind"], "ranking": info["ranking"],
                    "morf_auc": summarize(auc_m[key], seed), "lerf_auc": summarize(auc_l[key], seed),
                    "insertion_auc": summarize(auc_l[key], seed),
                    "gap": {**summarize(gaps[key], seed), "p_value": _wilcoxon_p(gaps[key])},
                    "vs_random": _gap_test(gaps[key], gaps["random"]),
                    "vs_random_object": _gap_test(gaps[key], gaps["random_object"]),
                    "mean_curves": {"morf": cm.mean(0).tolist(), "lerf": cl.mean(0).tolist()}}
    return out


def _rankings(entries: dict) -> dict[str, list[str]]:
    """Per ranking, the keys of methods (that ranking) and controls by mean MoRF-LeRF gap, largest first."""
    out = {}
    for ranking in RANKINGS:
        keys = [k for k, e in entries.items() if e["kind"] == "control" or e["ranking"] == ranking]
        if any(entries[k]["kind"] == "method" and entries[k]["ranking"] == ranking for k in keys):
            out[ranking] = sorted(keys, key=lambda k: -entries[k]["gap"]["mean"])
    return out


def faithfulness_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, maps: dict[str, torch.Tensor],
                       seed: int = 0, n_subset: int = 300, substrates: Sequence[str] = SUBSTRATES,
                       pixels_per_step: int = 28, road_pixels_per_step: int = ROAD_PIXELS_PER_STEP) -> dict:
    """Deletion MoRF and LeRF (and insertion) under every substrate, for every method and control.

    ``x: [N, 784]`` images, ``y: [N]`` the class explained (target), ``maps[name]: [N, 784]``. The zero
    substrate uses all N images, blur and ROAD a class-balanced seeded subset of ``n_subset``
    (``balanced_subset``). Curves are the target-class softmax probability (``removal_curves``), removing
    ``pixels_per_step`` pixels a step, ROAD ``road_pixels_per_step`` (it imputes a new image every step;
    ROAD's own protocol also reads a few removal percentages); AUCs on a [0, 1] axis (fraction removed)
    by the trapezoid rule, so they are comparable across step sizes. Each substrate's entry records its
    ``pixels_per_step``, ``n_images`` and ``seconds``. Per substrate and ordering key
    (``faithfulness_orderings``):

    * ``morf_auc`` (lower = more faithful), ``lerf_auc`` (higher = more faithful), ``insertion_auc``
      (identical to ``lerf_auc`` by construction, see the section note), each mean / 95 % CI / std / n;
    * ``gap`` = LeRF AUC - MoRF AUC per image (the larger, the better the order separates relevant from
      irrelevant pixels), summarised, with the Wilcoxon p that it is centred at 0;
    * ``vs_random`` / ``vs_random_object``: the gap against that control's on the same images; ``beats``
      is the verdict rule: mean difference > 0 **and** paired two-sided Wilcoxon p < ``FAITH_ALPHA``;
    * ``mean_curves``: mean MoRF and LeRF deletion curves (``T + 1`` points; insertion = LeRF reversed).

    ``ranking[r]``: keys by mean gap (largest first) with methods ranked by ``r`` (signed / abs) and the
    controls. ``verdicts[key]``: ``beats_random`` / ``beats_random_object`` and ``rank`` per substrate,
    and whether beating random holds on every substrate (a verdict only holds if it holds everywhere).
    """
    flat, _ = as_flat_images(x, name="x")
    unknown = [s for s in substrates if s not in SUBSTRATES] if not isinstance(substrates, str) else [substrates]
    if unknown or not substrates:
        raise ValueError(f"substrates must be a non-empty sequence of {SUBSTRATES}, got {substrates!r}")
    target = _check_target(y, len(flat), model(flat[:1]).shape[1], flat.device)
    _check_int("n_subset", n_subset, low=1)
    orderings = faithfulness_orderings(maps, flat, seed)
    result = {"pixels_per_step": pixels_per_step, "seed": seed, "alpha": FAITH_ALPHA, "substrates": {},
              "blur_sigma": BLUR_SIGMA, "road_noise": ROAD_NOISE, "orderings": list(orderings)}
    for substrate in substrates:
        t0 = time.perf_counter()
        idx = torch.arange(len(flat)) if substrate == "zero" else balanced_subset(target, n_subset, seed)
        idx = idx.to(flat.device)
        morf = torch.stack([removal_order(o["scores"][idx], seed) for o in orderings.values()])
        step = road_pixels_per_step if substrate == "road" else pixels_per_step
        curves = removal_curves(model, flat[idx], target[idx], torch.cat([morf, morf.flip(-1)]), substrate,
                                step, seed).cpu()
        entries = _substrate_summary(orderings, curves[:len(morf)], curves[len(morf):], seed)
        result["substrates"][substrate] = {"n_images": len(idx), "pixels_per_step": step, "orderings": entries,
                                           "ranking": _rankings(entries), "seconds": time.perf_counter() - t0}
    result["verdicts"] = _verdicts(result["substrates"])
    return result


def _verdicts(per_substrate: dict) -> dict:
    """``{key: {"beats_random": {substrate: bool}, "beats_random_object": ..., "rank": {substrate: int},
    "beats_random_everywhere": bool}}`` for every method ordering."""
    out = {}
    first = next(iter(per_substrate.values()))["orderings"]
    for key, entry in first.items():
        if entry["kind"] != "method":
            continue
        v = {"beats_random": {}, "beats_random_object": {}, "rank": {}}
        for sub, res in per_substrate.items():
            e = res["orderings"][key]
            v["beats_random"][sub] = e["vs_random"]["beats"]
            v["beats_random_object"][sub] = e["vs_random_object"]["beats"]
            v["rank"][sub] = res["ranking"][entry["ranking"]].index(key) + 1
        v["beats_random_everywhere"] = all(v["beats_random"].values())
        v["beats_random_object_everywhere"] = all(v["beats_random_object"].values())
        out[key] = v
    return out


def randomization_stages(clf: SparseCodeClassifier) -> list[str]:
    """Cascade order for the randomization check: classifier layers top (logits) down, then the
    encoder, then the decoder atoms (which only the decoder-weighted map reads)."""
    n_linear = 1 + sum(isinstance(m, nn.Linear) for m in clf.rest)
    return [f"classifier layer {i}" + (" (logits)" if i == n_linear else "") for i in range(n_linear, 0, -1)] + [
        "encoder", "decoder atoms"]


RANDOMIZATION_VARIANTS = ("cascading", "independent")  # stages randomised cumulatively / one at a time
RANDOMIZATION_SEED_OFFSET = 12345  # stage s draws its weights from seed + offset + s (same in both variants)
DECODER_STAGE = "decoder atoms"  # the stage the model's output never reads (only decoder-weighted maps do)
READS_DECODER = ("decoder",)  # methods whose maps change when only the decoder atoms are randomised


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


def _abs_map_similarity(a: np.ndarray, b: np.ndarray, obj: np.ndarray, seed: int) -> dict:
    """Spearman of ``|a|`` and ``|b|`` (``[N, P]`` maps) per row on all pixels and on ``obj: [N, P]``,
    summarised: ``{"all": summary, "object": summary}``."""
    a, b = np.abs(a), np.abs(b)
    return {"all": summarize(rowwise_spearman(a, b), seed), "object": summarize(rowwise_spearman(a, b, obj), seed)}


def randomization_check(pipeline: SparseCodePipeline, x: torch.Tensor, target: torch.Tensor, cfg: Config,
                        methods: Sequence[str] = tuple(METHOD_LABELS), seed: int = 0, labels=None,
                        variants: Sequence[str] = RANDOMIZATION_VARIANTS) -> dict:
    """Model-parameter randomization (Adebayo et al. 2018), cascading and independent.

    Stages (``randomization_stages``): the classifier's layers from the logits down, the encoder, the
    decoder atoms. ``cascading`` re-initialises them cumulatively; ``independent`` one at a time on a fresh
    copy of the trained model (stage s gets the same random weights in both). After each stage every map
    is recomputed and compared with the trained model's: Spearman of |maps| per image (mean, 95 % CI) on
    all pixels and on the image's object pixels (x > 0), in ``variants[variant][pixels][method]: [S]``.

    ``reference[method][pixels]``: the same statistic between the trained model's maps of two images of
    *different* classes (``labels: [N]``, default ``target``; seeded ``partner_images``), on all pixels and
    on the pixels that are object in both images. A faithful method's similarity should fall to about
    this reference once the model is destroyed. ``x: [N, 784]``, ``target: [N]``. ``variants``: which of
    ``RANDOMIZATION_VARIANTS`` to run (both by default).
    """
    if isinstance(variants, str) or not variants or any(v not in RANDOMIZATION_VARIANTS for v in variants):
        raise ValueError(f"variants must be a non-empty sequence of {RANDOMIZATION_VARIANTS}, got {variants!r}")
    x, _ = as_flat_images(x)
    original = attribute_all(pipeline, x, target, cfg, methods, seed=seed)
    obj = x.cpu().numpy() > 0
    partner = partner_images(_check_pairing_labels(target if labels is None else labels, len(x)), False, seed)
    orig = {m: v.reshape(len(x), -1).double().cpu().numpy() for m, v in original.items()}
    stages = randomization_stages(pipeline.clf)
    result = {"stages": stages, "methods": list(methods), "n_images": len(x),
              "reference": {m: _abs_map_similarity(v, v[partner], obj & obj[partner], seed) for m, v in orig.items()},
              "variants": {v: {p: {m: [] for m in methods} for p in PIXEL_SETS} for v in variants}}
    for variant in variants:
        model, maps = copy.deepcopy(pipeline).eval(), original
        for stage in tqdm(range(len(stages)), desc=f"randomization ({variant})", mininterval=2.0):
            if variant == "independent":
                model, maps = copy.deepcopy(pipeline).eval(), original
            _randomize_stage_(model, stage, torch.Generator().manual_seed(seed + RANDOMIZATION_SEED_OFFSET + stage))
            # the decoder atoms change no model output: the other maps are those of the model before this stage
            changed = [m for m in methods if stages[stage] != DECODER_STAGE or m in READS_DECODER]
            maps = {**maps, **attribute_all(model, x, target, cfg, changed, seed=seed)}
            for m in methods:
                sim = _abs_map_similarity(orig[m], maps[m].reshape(len(x), -1).double().cpu().numpy(), obj, seed)
                for pixels in PIXEL_SETS:
                    result["variants"][variant][pixels][m].append(sim[pixels])
    return result


UNIT_ORDERS = ("contribution", "random", "activation")  # unit orders of unit_deletion_curves (the first is tested)
UNIT_SCORES = ("logit", "probability")  # what the unit-deletion curves follow for the target class
Z_95 = 1.959963984540054  # two-sided 95 % quantile of the normal distribution (pointwise bands of mean curves)


def _unit_ranks(values: torch.Tensor, contributions: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Position of each top-k slot in each order of ``UNIT_ORDERS``: ``values, contributions: [N, k]`` ->
    ``{order: [N, k]}`` ranks (0 = first). Slots with a zero activation go last in every order."""
    gen = torch.Generator().manual_seed(seed)
    keys = {"contribution": contributions, "random": torch.rand(values.shape, generator=gen, dtype=torch.float64),
            "activation": values}
    active = (values > 0).cpu()
    ranks = {}
    for name, key in keys.items():
        key = torch.where(active, key.detach().to(torch.float64).cpu(), torch.tensor(-math.inf, dtype=torch.float64))
        order = key.argsort(dim=1, descending=True, stable=True)
        ranks[name] = order.argsort(dim=1).to(values.device)
    return ranks


@torch.no_grad()
def unit_deletion_curves(pipeline: SparseCodePipeline, x: torch.Tensor, target, contributions: torch.Tensor,
                         seed: int = 0) -> dict:
    """Unit-level causality in code space: do the units with the largest contributions matter most?

    For each image's code (its k top-k units, ``encode_sparse``) the active units are zeroed one per step
    (``deletion``, from the full code) or switched on one per step (``insertion``, from the empty code) in
    three orders: ``contribution`` (most positive ``contributions`` first: what decoder-weighted claims),
    ``random`` (seeded) and ``activation`` (largest z first); units with z = 0 go last in every order.
    After each step the classifier (``clf.forward_sparse``) gives the target logit and probability.

    ``x: [N, 784]``, ``target``: int or ``[N]``, ``contributions: [N, H]`` unit contributions
    (``decoder_weighted(..., return_contributions=True)[1]``). Returns mean curves ``[k + 1]`` with
    pointwise 95 % bands, per-image AUCs (x-axis: share of the k slots) summarised with CIs, and paired
    Wilcoxon tests of the contribution order against random and activation order (deletion: lower AUC
    is better; insertion: higher).
    """
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"unit_deletion_curves needs a SparseCodePipeline, got {type(pipeline).__name__}")
    x, _, target, _ = _prepare(pipeline, x, target, "logit")
    h = pipeline.sae.d_hidden
    if not isinstance(contributions, torch.Tensor) or contributions.shape != (len(x), h):
        shape = list(contributions.shape) if isinstance(contributions, torch.Tensor) else type(contributions).__name__
        raise ValueError(f"contributions must be a tensor of shape [{len(x)}, {h}] (one per image and unit), "
                         f"got {shape}")
    if not torch.isfinite(contributions).all():
        raise ValueError("contributions contains NaN or inf values")
    values, indices = pipeline.sae.encode_sparse(x)
    ranks = _unit_ranks(values, contributions.to(values.device).gather(1, indices), seed)
    k = values.shape[1]
    result = {"n_images": len(x), "k": k, "orders": list(UNIT_ORDERS),
              "mean_active_units": float((values > 0).sum(1).double().mean()), "curves": {}, "auc": {}, "tests": {}}
    for mode in ("deletion", "insertion"):
        aucs = {}
        for order, rank in ranks.items():
            steps = [pipeline.clf.forward_sparse(values * ((rank >= t) if mode == "deletion" else (rank < t)), indices)
                     for t in range(k + 1)]
            logits = torch.stack(steps, dim=1)  # [N, k + 1, C]
            for score in UNIT_SCORES:
                s = logits.softmax(-1) if score == "probability" else logits
                curves = s.gather(2, target[:, None, None].expand(-1, k + 1, 1))[..., 0].double().cpu()
                std = curves.std(0) / math.sqrt(len(x)) if len(x) > 1 else torch.zeros(k + 1, dtype=torch.float64)
                mean = curves.mean(0)
                result["curves"].setdefault(mode, {}).setdefault(score, {})[order] = {
                    "mean": mean.tolist(), "lo": (mean - Z_95 * std).tolist(), "hi": (mean + Z_95 * std).tolist()}
                aucs[score, order] = curve_auc(curves)
        for score in UNIT_SCORES:
            result["auc"].setdefault(mode, {})[score] = {o: summarize(aucs[score, o], seed) for o in UNIT_ORDERS}
            result["tests"].setdefault(mode, {})[score] = {
                f"vs_{o}": {"mean_diff": float((aucs[score, UNIT_ORDERS[0]] - aucs[score, o]).mean()),
                            "p_value": _wilcoxon_p(aucs[score, UNIT_ORDERS[0]] - aucs[score, o])}
                for o in UNIT_ORDERS[1:]}
    return result


def run_validation(pipeline: SparseCodePipeline, selection: Selection, cfg: Config, maps: dict[str, torch.Tensor],
                   contributions: torch.Tensor | None = None, n_subset: int = 300, n_completeness: int = 200,
                   n_randomization: int = 100, seed: int = 0, cross_method: dict | None = None) -> dict:
    """Every faithfulness check on ``selection`` (maps precomputed by ``attribute_all``; ``contributions:
    [N, H]`` from ``decoder_weighted(..., return_contributions=True)``, computed here if None; pass
    ``cross_method`` if ``cross_method_statistics(maps, seed, x, labels)`` was already computed).

    Pixel deletion/insertion (``faithfulness_suite``: zero substrate on all images, blur and ROAD on a
    class-balanced subset of ``n_subset``), object focus and unit-level causality use all selected images;
    the completeness decomposition and the randomization check use evenly spaced subsets of
    ``n_completeness`` and ``n_randomization`` images of the class-sorted selection, so each class keeps its
    share (equal shares unless some class fell short: ``Selection.shortfalls``). ``seconds`` holds each
    check's wall time.
    """
    device = next(pipeline.parameters()).device
    x, y = selection.x.to(device), selection.y.to(device)
    if contributions is None:
        _, contributions = decoder_weighted(pipeline, x, y, return_contributions=True)
    sub_c = torch.linspace(0, len(x) - 1, min(n_completeness, len(x))).long()
    sub_r = torch.linspace(0, len(x) - 1, min(n_randomization, len(x))).long()
    checks = {
        "cross_method": lambda: cross_method or cross_method_statistics(maps, seed, x=x, labels=y),
        "faithfulness": lambda: faithfulness_suite(pipeline, x, y, maps, seed=seed, n_subset=n_subset),
        "object_focus": lambda: object_focus(maps, x, seed),
        "completeness": lambda: completeness_decomposition(pipeline, x[sub_c], y[sub_c], n_steps=cfg.ig_steps,
                                                           method=cfg.ig_method, seed=seed),
        "randomization": lambda: randomization_check(pipeline, x[sub_r], y[sub_r], cfg, tuple(maps), seed),
        "unit_deletion": lambda: unit_deletion_curves(pipeline, x, y, contributions.detach(), seed),
    }
    results, seconds = timed_checks(checks)
    return {"n_images": len(x), **results, "seconds": seconds}


def timed_checks(checks: dict[str, Callable[[], object]]) -> tuple[dict, dict[str, float]]:
    """Run ``checks`` (name -> zero-argument function) in order -> ``(results, seconds)``: each check's result
    and wall seconds by name, ``seconds["total"]`` their sum."""
    results, seconds = {}, {}
    for name, check in checks.items():
        t0 = time.perf_counter()
        results[name] = check()
        seconds[name] = time.perf_counter() - t0
    return results, {**seconds, "total": sum(seconds.values())}


# --- verdicts ------------------------------------------------------------------------------------------
# One row per (method ordering, test): does the method pass, and where does it rank? A verdict is stated
# only where it holds across every protocol measured (substrates here, seeds in
# benchmarks/verdicts_across_seeds.py); ``verdict_statements`` says where it flips.

VERDICT_TESTS = {  # test -> what passing means
    "faithful_zero": "MoRF-LeRF gap larger than the random order's (paired Wilcoxon p < alpha), zero substrate",
    "faithful_blur": "the same, blurred-copy substrate",
    "faithful_road": "the same, ROAD noisy-linear-imputation substrate",
    "object_zero": "gap larger than a random order over object pixels (paired Wilcoxon p < alpha), zero substrate",
    "object_blur": "the same, blurred-copy substrate",
    "object_road": "the same, ROAD substrate",
    "randomization_cascading": "after the whole model is re-initialised, |map| similarity (all and object pixels) "
                               "is not above the different-class reference (CI lower bound <= reference CI upper)",
    "randomization_independent": "the same after re-initialising each layer alone (every layer the method reads)",
    "completeness": "median |sum(attr) - (F(x) - F(0))| / |F(x) - F(0)| <= the completeness tolerance",
    "unit_causality": "zeroing units by contribution beats random and largest-activation orders "
                      "(deletion and insertion, logit and probability; Wilcoxon p < alpha)",
}


VERDICT_NAMES = {"faithful_zero": "deletion, zero substrate", "faithful_blur": "deletion, blur substrate",
                 "faithful_road": "deletion, ROAD substrate", "object_zero": "object-pixel control, zero",
                 "object_blur": "object-pixel control, blur", "object_road": "object-pixel control, ROAD",
                 "randomization_cascading": "the cascading randomization check",
                 "randomization_independent": "the layer-by-layer randomization check",
                 "completeness": "completeness", "unit_causality": "unit-level causality"}


def _not_above_reference(similarity: dict, reference: dict) -> bool:
    """``similarity`` (a ``summarize`` dict) has fallen to ``reference``: its CI starts at or below the
    reference's CI end."""
    return similarity["ci95"][0] <= reference["ci95"][1]


def _randomization_verdicts(rand: dict, method: str) -> dict[str, bool]:
    ref = rand["reference"][method]
    stages = [i for i, s in enumerate(rand["stages"]) if s != DECODER_STAGE or method in READS_DECODER]
    last = {p: rand["variants"]["cascading"][p][method][stages[-1]] for p in PIXEL_SETS}
    return {"randomization_cascading": all(_not_above_reference(last[p], ref[p]) for p in PIXEL_SETS),
            "randomization_independent": all(
                _not_above_reference(rand["variants"]["independent"][p][method][i], ref[p])
                for p in PIXEL_SETS for i in stages)}


def _unit_causality_passes(unit: dict, alpha: float = FAITH_ALPHA) -> bool:
    ok = True
    for mode, better in (("deletion", -1), ("insertion", 1)):
        for tests in unit["tests"][mode].values():
            ok &= all(t["p_value"] < alpha and better * t["mean_diff"] > 0 for t in tests.values())
    return bool(ok)


def verdict_table(validation: dict) -> list[dict]:
    """Rows ``{"ordering", "method", "ranking", "test", "passes", "rank", "value"}`` from ``run_validation``'s
    result: every attribution ordering (``"<method>/signed"`` or ``"/abs"``) against every test of
    ``VERDICT_TESTS`` that applies to it (completeness: integrated gradients; unit causality:
    decoder-weighted). ``rank``: position by LeRF-MoRF gap among the orderings of the same ranking (signed or |value|)
    and the controls (1 = best)."""
    faith = validation["faithfulness"]
    rows = []
    for key, v in faith["verdicts"].items():
        method, ranking = key.split("/")
        base = {"ordering": key, "method": method, "ranking": ranking}
        for sub in faith["substrates"]:
            gap = faith["substrates"][sub]["orderings"][key]["gap"]["mean"]
            rows.append({**base, "test": f"faithful_{sub}", "passes": bool(v["beats_random"][sub]),
                         "rank": v["rank"][sub], "value": gap})
        rows += [{**base, "test": f"object_{sub}", "passes": bool(v["beats_random_object"][sub]), "rank": None,
                  "value": faith["substrates"][sub]["orderings"][key]["vs_random_object"]["mean_diff"]}
                 for sub in faith["substrates"]]
        rand = validation.get("randomization")
        if rand and method in rand["reference"]:
            rows += [{**base, "test": t, "passes": p, "rank": None, "value": None}
                     for t, p in _randomization_verdicts(rand, method).items()]
        comp = validation.get("completeness")
        if comp and method == "integrated":
            steps = comp["table"][comp["method"]]  # int keys in memory, str keys once read back from JSON
            median = (steps.get(comp["n_steps"]) or steps[str(comp["n_steps"])])["median_rel_error"]
            rows.append({**base, "test": "completeness", "passes": median <= comp["tolerance"], "rank": None,
                         "value": median})
        if validation.get("unit_deletion") and method == "decoder":
            passes = _unit_causality_passes(validation["unit_deletion"])
            rows.append({**base, "test": "unit_causality", "passes": passes, "rank": None, "value": None})
    return rows


VERDICT_FAMILIES = {"faithful_": "the random order", "object_": "a random order over object pixels"}  # per substrate


def verdict_statements(rows_per_seed: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Plain sentences from ``{seed: verdict_table rows}``: ``holds`` (passes in every seed and substrate),
    ``fails`` (fails everywhere) and ``flips`` (where it flips: which substrates or seeds). Per-substrate
    tests (``VERDICT_FAMILIES``) are stated together, naming the substrates where they hold."""
    seeds = list(rows_per_seed)
    by_key: dict[tuple, dict] = {}
    for seed, rows in rows_per_seed.items():
        for r in rows:
            by_key.setdefault((r["ordering"], r["test"]), {})[seed] = r["passes"]
    out = {"holds": [], "fails": [], "flips": []}
    for ordering in dict.fromkeys(k[0] for k in by_key):
        label = _verdict_label(ordering)
        for prefix, against in VERDICT_FAMILIES.items():
            family = {t[len(prefix):]: per for (o, t), per in by_key.items() if o == ordering and t.startswith(prefix)}
            passed = [s for s, per in family.items() if all(per.values())]
            failed = [s for s, per in family.items() if not any(per.values())]
            mixed = [s for s in family if s not in passed and s not in failed]
            if len(passed) == len(family):
                out["holds"].append(f"{label} beats {against} on every substrate, in every seed ({len(seeds)}).")
            elif len(failed) == len(family):
                out["fails"].append(f"{label} does not beat {against} on any substrate.")
            else:
                parts = [f"beats {against} on {', '.join(passed)}" if passed else "",
                         f"not on {', '.join(failed)}" if failed else "",
                         f"depends on the seed on {', '.join(mixed)}" if mixed else ""]
                out["flips"].append(f"{label}: " + "; ".join(p for p in parts if p) + ".")
        for (o, t), per in by_key.items():
            if o != ordering or t.startswith(tuple(VERDICT_FAMILIES)):
                continue
            if all(per.values()):
                out["holds"].append(f"{label} passes {VERDICT_NAMES[t]} in every seed.")
            elif not any(per.values()):
                out["fails"].append(f"{label} fails {VERDICT_NAMES[t]} ({VERDICT_TESTS[t]}).")
            else:
                bad = [str(s) for s, ok in per.items() if not ok]
                out["flips"].append(f"{label}: {VERDICT_NAMES[t]} fails in seed(s) {', '.join(bad)} only.")
    return out


def _verdict_label(ordering: str) -> str:
    """'Integrated gradients (signed)' from the ordering key 'integrated/signed'."""
    method, ranking = ordering.split("/")
    return f"{METHOD_LABELS.get(method, method)} ({'|value|' if ranking == 'abs' else 'signed'})"


def run_k_sweep(data: FashionMNIST, cfg: Config, device: torch.device, ks: Sequence[int],
                epochs: Sequence[int] | None = None, ckpt_dir: str | os.PathLike = "checkpoints",
                n_per_class: int = 20) -> list[dict]:
    """Train (or load) one model pair per ``k`` with ``cfg``'s recipe (``epochs = (ae_epochs, clf_epochs)``
    overrides its epochs) and measure FVU, dead units, mean L0, test accuracy, training seconds, and the
    zero-substrate deletion AUC of integrated gradients, decoder-weighted and a random order on ``n_per_class``
    confident correct test images per class (fewer where a class has fewer: ``select_high_confidence``)."""
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
        z = densify(v, idx, d_hidden)
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

DPI = 90  # resolution of saved PNGs (what the notebook shows: keeps the committed notebook under 2 MB)
PNG_COLORS = 256  # saved PNGs are palette images with at most this many colours (``png_bytes``)
PNG_EXACT_COLORS = 8  # of which this many are kept for rare colours the palette would shift (``palette_png``)
PNG_TOLERANCE = 24  # colour levels (of 255) a palette may shift a pixel before its colour gets an exact entry
PNG_QUANTIZER = 2  # PIL.Image.Quantize.FASTOCTREE: 7x faster than median cut, as good with the exact entries
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
# Fixed layout of the comparison figure: figure margins in inches, gaps as fractions of a panel
COMPARISON_MARGINS = {"left": 0.95, "right": 0.75, "top": 0.55, "bottom": 1.2, "wspace": 0.45, "hspace": 0.3,
                      "bottom_wspace": 0.55}
COLORBAR_INSET = (1.04, 0.0, 0.05, 1.0)  # colour bar beside an image panel, in the panel's axes fractions
MOSAIC_GAP = 1  # pixels between the images of a mosaic (``_mosaic``)
MOSAIC_TITLE_GAP = (9, 12)  # blank pixels above each row and between the columns of a titled mosaic
SIDE_COLORBAR_INCHES = (0.2, 0.15)  # colour bar right of an image grid: gap and width in inches
ATLAS_COLUMNS = 8  # decoder atoms per row in the feature atlas
ATLAS_HISTOGRAM_INCHES = (2.0, 0.65, 0.6)  # usage histogram under the atlas: height, room below and above it
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
# Titles at a fixed height above the axes: matplotlib's automatic placement (clearing top tick labels, which
# no figure here has) measured every axis of a figure again at each draw, a third of a comparison's time
RC_FAST = {"axes.titley": 1.0}
# Fixed layouts of the plot figures (``_grid_figure``), in inches: margins ``left``, ``right`` (room for tick and
# axis labels, a twin axis, a legend outside the axes), ``top`` (suptitle and panel titles), ``bottom`` (x labels, a
# figure legend); gaps ``wspace`` between columns and ``hspace`` between rows (one number, or one per gap). They are
# the places constrained layout chose for the default run's labels (which it measured twice per figure: half of a
# figure's time, e.g. 0.47 of plot_faithfulness' 1.1 s), widened where a y-axis may carry tick labels of up to six
# characters ("0.0001", "−0.025"): tests/test_checks.py checks on other data that no label leaves the figure.
TRAINING_LAYOUT = {"left": 0.7, "right": 0.1, "top": 0.5, "bottom": 0.52, "wspace": [1.45, 0.75, 0.8]}  # twin axis
CONFUSION_LAYOUT = {"left": 3.2, "right": 0.04, "top": 0.25, "bottom": 0.91, "wspace": 0.72}
CORRELATION_LAYOUT = {"left": 1.8, "right": 1.25, "top": 0.5, "bottom": 0.52, "wspace": [0.34, 1.65]}
FAITHFULNESS_LAYOUT = {"left": 0.61, "right": 0.04, "top": 0.5, "bottom": 1.01, "wspace": [0.81, 2.54],
                       "hspace": 0.77}  # gap bars' ordering names left of the third column, the legend below
COMPLETENESS_LAYOUT = {"left": 0.87, "right": 0.07, "top": 0.5, "bottom": 0.52, "wspace": [0.75, 0.9, 1.6]}
COMPLETENESS_SWEEP_LAYOUT = {"left": 0.87, "right": 0.07, "top": 0.5, "bottom": 0.52, "wspace": 0.8}
RANDOMIZATION_ROW_INCHES = 5.0  # figure height per randomization variant drawn
RANDOMIZATION_LAYOUT = {"left": 0.65, "right": 2.97, "top": 0.5, "bottom": 1.3, "wspace": 0.39, "hspace": 1.57}
UNIT_DELETION_LAYOUT = {"left": 0.8, "right": 0.04, "top": 0.5, "bottom": 0.52, "wspace": 1.0, "hspace": 0.78}
OBJECT_FOCUS_LAYOUT = {"left": 0.72, "right": 0.04, "top": 0.25, "bottom": 0.79}
K_SWEEP_LAYOUT = {"left": 0.68, "right": 0.04, "top": 0.5, "bottom": 0.52, "wspace": [0.52, 0.72, 0.64]}
DENSITY_LAYOUT = {"left": 0.55, "right": 0.07, "top": 0.25, "bottom": 0.52}
AGREEMENT_LAYOUT = {"left": 0.59, "right": 1.75, "top": 0.39, "bottom": 0.52}  # class legend right of the axes
MESSAGE_LAYOUT = {"left": 0.1, "right": 0.1, "top": 0.4, "bottom": 0.1}
SUPTITLE_PAD = 0.04  # inches between the top of a ``_grid_figure`` and its suptitle
FIGURE_WORKERS = 8  # most processes that draw figures side by side (render_figures)
CAN_FORK = sys.platform.startswith("linux")  # forked figure workers are safe here (elsewhere: drawn in-process)
HEATMAP_DARK = 0.408  # heatmap cells darker than this relative luminance get white text (seaborn's rule)
METHOD_COLORS = dict(zip(METHOD_LABELS, sns.color_palette("colorblind", len(METHOD_LABELS))))
CONTROL_STYLES = {"random": ("0.3", ":"), "random_object": ("0.15", (0, (1, 1))), "intensity": ("0.5", "--"),
                  "edges": ("0.65", "-.")}  # colour, dashes
CONTROL_LABELS = {"random": "Random order (control)", "random_object": "Random object pixels (control)",
                  "intensity": "Pixel intensity (control)",
                  "edges": "Sobel edges (control)"}
QUADRATURE_LABELS = {"gausslegendre": "Gauss-Legendre", "riemann_trapezoid": "trapezoid",
                     "riemann_left": "left Riemann", "riemann_right": "right Riemann",
                     "riemann_middle": "midpoint"}
FALLBACK_NOTE = ", below the confidence threshold (its class had none above)"  # title of a fallback image
SHORT_LABELS = {"integrated": "IG", "simple": "Gradient", "smoothgrad": "SmoothGrad", "decoder": "Decoder-w.",
                "input_x_gradient": "In×Grad", "input_x_smoothgrad": "In×SG"}
IMAGE_STATS = {"mean_abs": "mean |attr|", "max_abs": "max |attr|", "std": "std"}  # per-image statistics
NULL_CORRELATIONS = {"spearman_signed_all": "signed, all pixels", "spearman_abs_all": "|maps|, all pixels",
                     "spearman_signed_object": "signed, object pixels", "spearman_abs_object": "|maps|, object pixels"}
PAIR_CORRELATIONS = {"spearman_signed": "Spearman, signed", "spearman_abs": "Spearman, |maps|",
                     "pearson_signed": "Pearson, signed", "pearson_abs": "Pearson, |maps|"}
K_SWEEP_PANELS = {  # panel title -> [(row key, line label)]; a panel with one line needs no legend
    "FVU (test)": [("fvu", "test FVU")],
    "dead units (of d_hidden)": [("dead_units", "dead units")],
    "test accuracy": [("test_accuracy", "test accuracy")],
    "deletion AUC, zero substrate (lower = better)": [
        ("deletion_auc_integrated", "Integrated gradients"), ("deletion_auc_decoder", "Decoder-weighted"),
        ("deletion_auc_random", "Random order (control)")],
}


# --- shared helpers ----------------------------------------------------------------------------------


FIGURE_SECONDS: dict[str, list[float]] = {}  # plot function -> seconds of each call (outermost calls only), this
# process; the notebook clears it at the start and reports the sum (building, laying out and saving figures)
_figure_depth = [0]  # plot functions running now (a grid calls a plot function per figure: counted once)


@contextlib.contextmanager
def _figure_style():
    """The module's seaborn style and plotting context (and ``RC_FAST``), for building and drawing a figure."""
    with sns.axes_style(STYLE), sns.plotting_context(CONTEXT, font_scale=FONT_SCALE), plt.rc_context(RC_FAST):
        yield


def _styled(fn):
    """Build (and save) a figure inside the module's seaborn style without changing global rcParams; the time
    of each outermost call is appended to ``FIGURE_SECONDS[fn.__name__]``. The garbage collector pauses while
    an outermost call runs (``_gc_paused``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        _figure_depth[0] += 1
        try:
            with _gc_paused(_figure_depth[0] == 1), _figure_style():
                return fn(*args, **kwargs)
        finally:
            _figure_depth[0] -= 1
            if _figure_depth[0] == 0:
                FIGURE_SECONDS.setdefault(fn.__name__, []).append(time.perf_counter() - t0)

    return wrapper


@contextlib.contextmanager
def _gc_paused(pause: bool = True):
    """Python's cyclic garbage collector off inside (if ``pause`` and it was on), back on after, even on an error.
    Building and drawing a figure allocates many objects and frees them by reference counting, so collector
    passes find next to nothing: they were ~15 % of a comparison figure's time. The figure's own cycles are
    collected by the next pass after it (``_finish`` closes it in pyplot)."""
    pause = pause and gc.isenabled()
    if pause:
        gc.disable()
    try:
        yield
    finally:
        if pause:
            gc.enable()


def _panel_spans(total: float, start: float, end: float, gaps, ratios) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths (inches) of ``len(ratios)`` panels sharing ``total`` inches in ``ratios``, less the
    margins ``start`` and ``end`` and the ``gaps`` between panels (one number, or one per gap)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    gaps = np.broadcast_to(np.asarray(gaps, dtype=np.float64), (len(ratios) - 1,))
    lengths = (total - start - end - gaps.sum()) * ratios / ratios.sum()
    return start + np.concatenate([[0.0], np.cumsum(lengths[:-1] + gaps)]), lengths


def _grid_figure(width: float, height: float, layout: dict, n_rows: int = 1, n_cols: int = 1, width_ratios=None,
                 height_ratios=None, sharey: bool = False) -> tuple[Figure, np.ndarray]:
    """A ``width`` x ``height`` inch figure with axes ``[n_rows, n_cols]`` at fixed positions: no layout engine,
    so the figure is measured and drawn once (``_finish`` closes it in pyplot). ``layout``: inches, as in
    ``TRAINING_LAYOUT``; the panels share what is left in ``width_ratios`` / ``height_ratios`` (default equal).
    ``sharey``: every panel shares the first one's y-axis, whose tick labels only the first column shows."""
    fig = plt.figure(figsize=(width, height))
    xs, ws = _panel_spans(width, layout["left"], layout["right"], layout.get("wspace", 0.0),
                          width_ratios or [1] * n_cols)
    ys, hs = _panel_spans(height, layout["top"], layout["bottom"], layout.get("hspace", 0.0),
                          height_ratios or [1] * n_rows)
    axes = np.empty((n_rows, n_cols), dtype=object)
    for r, c in np.ndindex(n_rows, n_cols):
        box = (xs[c] / width, 1 - (ys[r] + hs[r]) / height, ws[c] / width, hs[r] / height)
        axes[r, c] = fig.add_axes(box, sharey=axes[0, 0] if sharey and (r or c) else None)
        if sharey and c:
            axes[r, c].tick_params(labelleft=False)
    return fig, axes


def _suptitle(fig: Figure, title: str) -> None:
    """``title`` above all panels of a ``_grid_figure``, ``SUPTITLE_PAD`` inches below its top edge."""
    fig.suptitle(title, y=1 - SUPTITLE_PAD / fig.get_figheight())


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``rgb: [..., 3]`` uint8 colours as one int32 each (for counting colours)."""
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]


def palette_png(rgb: np.ndarray, colors: int = PNG_COLORS) -> bytes:
    """``rgb: [H, W, 3]`` uint8 as a palette PNG of at most ``colors`` colours: a fast octree palette (large
    areas move by a few levels at most), plus ``PNG_EXACT_COLORS`` entries for the most frequent colours it
    would shift by more than ``PNG_TOLERANCE`` levels (a thin contour line or a legend patch keeps its colour)."""
    from PIL import Image, ImageChops

    original = Image.fromarray(rgb)
    quantized = original.quantize(colors - PNG_EXACT_COLORS, method=PNG_QUANTIZER, dither=Image.Dither.NONE)
    channels = ImageChops.difference(quantized.convert("RGB"), original).split()
    error = ImageChops.lighter(ImageChops.lighter(channels[0], channels[1]), channels[2])  # [H, W] max shift
    index = np.asarray(quantized).copy()
    palette = np.asarray(quantized.getpalette(), dtype=np.uint8).reshape(-1, 3)[:index.max() + 1]
    rows, cols = np.nonzero(np.asarray(error) > PNG_TOLERANCE)
    if len(rows):
        packed = _pack_rgb(rgb[rows, cols])
        values, counts = np.unique(packed, return_counts=True)
        for value in values[np.argsort(-counts, kind="stable")[:PNG_EXACT_COLORS]]:
            hit = packed == value
            index[rows[hit], cols[hit]] = len(palette)
            palette = np.vstack([palette, [(value >> 16) & 255, (value >> 8) & 255, value & 255]])
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return buffer.getvalue()


def png_bytes(fig: Figure, dpi: float = DPI, colors: int = PNG_COLORS) -> bytes:
    """``fig`` rendered once at ``dpi`` and encoded by ``palette_png`` (a third of the size of a true-colour
    PNG; the figures are flat colours, text and 28 x 28 maps, so nothing visible is lost)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return palette_png(np.asarray(canvas.buffer_rgba())[..., :3], colors)


def _fixed_grid(n_rows: int, n_cols: int, gap: tuple[float, float], margins: tuple[float, float, float, float],
                panel: float = SMALL_PANEL_INCHES) -> tuple[Figure, np.ndarray]:
    """A figure of ``n_rows`` x ``n_cols`` square image panels at fixed positions (no layout engine: the
    figure is drawn once, however many panels). ``panel``: side in inches; ``gap``: (horizontal, vertical)
    inches between panels (room for titles and labels); ``margins``: (left, right, top, bottom) inches.
    Returns the figure and its axes ``[n_rows, n_cols]`` (a ``_grid_figure`` sized to fit the panels)."""
    left, right, top, bottom = margins
    width = left + right + n_cols * panel + (n_cols - 1) * gap[0]
    height = top + bottom + n_rows * panel + (n_rows - 1) * gap[1]
    layout = {"left": left, "right": right, "top": top, "bottom": bottom, "wspace": gap[0], "hspace": gap[1]}
    return _grid_figure(width, height, layout, n_rows, n_cols)


def _mosaic(images: np.ndarray, row_gap: int = MOSAIC_GAP, col_gap: int = MOSAIC_GAP) -> np.ndarray:
    """``images: [R, C, 28, 28]`` (NaN: no image) as one ``[R * (28 + row_gap), C * (28 + col_gap)]`` array;
    each row starts with ``row_gap`` blank pixel rows (room for titles: ``_show_mosaic``), columns are
    ``col_gap`` apart. Gaps are NaN: drawn in the axes' background colour."""
    rows, cols = images.shape[:2]
    height, width = IMAGE_SIDE + row_gap, IMAGE_SIDE + col_gap
    out = np.full((rows * height, cols * width), np.nan)
    for r, c in np.ndindex(rows, cols):
        out[r * height + row_gap:(r + 1) * height, c * width:c * width + IMAGE_SIDE] = images[r, c]
    return out


def _show_mosaic(ax, images: np.ndarray, limit: float, titles, row_labels) -> object:
    """Signed ``images: [R, C, 28, 28]`` as one mosaic image on ``ax`` (diverging map on ``[-limit, limit]``),
    ``titles[r][c]`` above each panel ("" for none) and ``row_labels[r]`` left of each row. One artist
    instead of R x C axes; returns the image artist."""
    row_gap, col_gap = MOSAIC_TITLE_GAP
    im = _show_signed(ax, _mosaic(images, row_gap, col_gap), limit)
    height, width = IMAGE_SIDE + row_gap, IMAGE_SIDE + col_gap
    for (r, c), title in np.ndenumerate(np.asarray(titles, dtype=object)):
        if title:
            ax.text(c * width + IMAGE_SIDE / 2 - 0.5, r * height + row_gap - 1.5, title, ha="center", va="bottom",
                    fontsize="small")
    ax.set_yticks(np.arange(len(row_labels)) * height + row_gap + IMAGE_SIDE / 2 - 0.5, row_labels)
    ax.tick_params(axis="y", length=0)
    ax.spines[:].set_visible(False)
    return im


def _side_colorbar(fig: Figure, im, axes, label: str, shrink: float = 1.0) -> None:
    """A colour bar for ``im`` right of the block of ``axes`` (fixed layouts), ``shrink`` of its height."""
    from matplotlib.transforms import Bbox

    block = Bbox.union([ax.get_position() for ax in np.ravel(axes)])
    width_in = fig.get_size_inches()[0]
    height = block.height * shrink
    cax = fig.add_axes((block.x1 + SIDE_COLORBAR_INCHES[0] / width_in, block.y0 + (block.height - height) / 2,
                        SIDE_COLORBAR_INCHES[1] / width_in, height))
    fig.colorbar(im, cax=cax, label=label)


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    """Save ``fig`` at ``DPI`` if ``save`` is a path (parent folders created); return ``fig``.

    Without ``save`` the figure is laid out once here, so its ticks are created in the module's style (not
    when ``_figure_png`` is building it: that renders it at once, in the same style). The figure is closed in
    pyplot, so a notebook displays it only when it is returned (not twice).
    """
    if save is not None:
        fig.saved_png = png_bytes(fig)  # rendered once: ``show`` displays these bytes
        atomic_write_bytes(save, fig.saved_png)
    elif not _RENDERING_NOW:
        fig.draw_without_rendering()
    plt.close(fig)
    return fig


_FORKED_CALLS: list[Callable[[], Figure]] = []  # render_figures' calls, set just before its workers fork
_RENDERING_NOW = False  # True while ``_figure_png`` builds a figure that it renders straight away


def _figure_png(call: Callable[[], Figure]) -> bytes:
    """``call()``'s figure as PNG bytes: the bytes it was saved as, else drawn now in the module's style."""
    global _RENDERING_NOW
    _RENDERING_NOW = True
    try:
        fig = call()
    finally:
        _RENDERING_NOW = False
    png = getattr(fig, "saved_png", None)
    if png is None:
        with _figure_style():  # the style it was built in, as a saved figure is drawn
            png = png_bytes(fig)
    plt.close(fig)
    return png


def _forked_figure(i: int) -> tuple[bytes, str, float]:
    """In a worker: ``_FORKED_CALLS[i]`` drawn -> (PNG bytes, plot function's name, seconds). Torch runs on
    one thread here: a forked child must not use the parent's thread pools."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    call = _FORKED_CALLS[i]
    png = _figure_png(call)
    return png, getattr(getattr(call, "func", call), "__name__", "figure"), time.perf_counter() - t0


def figure_workers(n_jobs: int) -> int:
    """Processes to draw ``n_jobs`` figures with: one per usable core, at most ``FIGURE_WORKERS`` and
    ``n_jobs``; 1 (draw here) where the platform cannot fork safely (``CAN_FORK``: Linux only)."""
    if not CAN_FORK:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n_jobs, cores, FIGURE_WORKERS))


def _on_cpu(obj):
    """``obj`` with every tensor, module and device inside it (through dicts, lists, tuples and dataclasses)
    on the CPU: CUDA ones copied there, everything else shared as it is. What a forked figure worker, which
    cannot use its parent's CUDA context, can draw from."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, torch.device):
        return torch.device("cpu")
    if isinstance(obj, nn.Module):
        on_cuda = any(t.is_cuda for t in [*obj.parameters(), *obj.buffers()])
        return copy.deepcopy(obj).cpu() if on_cuda else obj
    if isinstance(obj, dict):
        return {key: _on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):  # named tuples are left as they are
        return type(obj)(_on_cpu(value) for value in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: _on_cpu(getattr(obj, f.name)) for f in fields(obj) if f.init})
    return obj


def _cpu_calls(calls: list) -> list | None:
    """``calls`` (``functools.partial`` objects) with their arguments ``_on_cpu``; None if any call is not a
    partial (its inputs cannot be seen)."""
    if not all(isinstance(call, functools.partial) for call in calls):
        return None
    return [functools.partial(call.func, *_on_cpu(call.args), **_on_cpu(call.keywords)) for call in calls]


def render_figures(calls: Sequence[Callable[[], Figure]], workers: int | None = None,
                   cuda_free: bool = False) -> list[bytes]:
    """Draw figures side by side. Each of ``calls`` builds one figure (e.g. ``functools.partial(
    kh.plot_completeness, result, save=path)``); they run in ``workers`` forked processes (default
    ``figure_workers``; 1: here, one after another) and come back, in order, as PNG bytes for ``show`` -- byte
    for byte what drawing them here gives. Workers inherit the calls (nothing is sent to them), so any inputs
    work. A forked child cannot use this process's CUDA context: once CUDA is in use here, the workers get
    the calls with their arguments moved to the CPU (``_on_cpu``: tensors, modules, devices), unless
    ``cuda_free`` promises that the calls touch no CUDA tensor; calls that are not ``functools.partial``
    objects are then drawn here. ``FIGURE_SECONDS`` gets each figure's share of the wall time (in proportion
    to its drawing time in its worker) under its plot function's name."""
    calls = list(calls)
    workers = figure_workers(len(calls)) if workers is None else workers
    _check_int("workers", workers, low=1)
    if not isinstance(cuda_free, bool):
        raise ValueError(f"cuda_free must be True or False, got {cuda_free!r}")
    here = workers == 1 or len(calls) < 2 or not CAN_FORK
    if not here and not cuda_free and torch.cuda.is_available() and torch.cuda.is_initialized():
        cpu_calls = _cpu_calls(calls)
        here, calls = (True, calls) if cpu_calls is None else (False, cpu_calls)
    if here:
        return [_figure_png(call) for call in calls]
    t0 = time.perf_counter()
    _FORKED_CALLS[:] = calls
    try:
        # each worker moves what it inherits to the collector's permanent generation (gc.freeze): the collector
        # never walks (nor copies on write) the parent's objects
        with multiprocessing.get_context("fork").Pool(min(workers, len(calls)), initializer=gc.freeze) as pool:
            results = pool.map(_forked_figure, range(len(calls)), chunksize=1)
    finally:
        _FORKED_CALLS.clear()
    wall, drawing = time.perf_counter() - t0, sum(seconds for _, _, seconds in results) or 1.0
    for _, name, seconds in results:
        FIGURE_SECONDS.setdefault(name, []).append(wall * seconds / drawing)
    return [png for png, _, _ in results]


def _message_figure(title: str, message: str) -> Figure:
    """A small figure that only says ``message`` (for inputs with nothing to plot)."""
    fig, ((ax,),) = _grid_figure(6, 2, MESSAGE_LAYOUT)
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


def _plain_number(value: float, _position=None) -> str:
    """A tick label as plain ``{value:g}`` text (a hyphen minus, as ``f"{value:g}"`` writes it)."""
    return f"{value:g}"


def _log_axis(ax, which: str = "y", minor_labels: bool = True) -> None:
    """Log scale on ``ax``'s ``which`` axis ('x' or 'y') with plain-number labels at 1-2-5 steps (at powers of
    10 only without ``minor_labels``: for axes spanning many decades, where 1-2-5 labels would collide)."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=LOG_MINOR_SUBS))
    axis.set_major_formatter(FuncFormatter(_plain_number))
    axis.set_minor_formatter(FuncFormatter(_plain_number) if minor_labels else NullFormatter())


def _image_axis(ax) -> None:
    """Strip ticks and grid from an axis that shows an image."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _show_image(ax, image: np.ndarray, title: str | None = None):
    """Draw ``image: [28, 28]`` in grey on [0, 1]; returns the image artist."""
    im = ax.imshow(image, cmap=IMAGE_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    _image_axis(ax)
    if title:
        ax.set_title(title)
    return im


def _show_signed(ax, image: np.ndarray, limit: float, title: str | None = None):
    """Draw signed ``image: [28, 28]`` with the diverging map on ``[-limit, limit]``; returns the artist."""
    im = ax.imshow(image, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
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
    images = data.x_train[idx.reshape(-1)].reshape(len(classes), n_per_class, IMAGE_SIDE, IMAGE_SIDE)
    width, height = 2.5 + SMALL_PANEL_INCHES * n_per_class, 0.6 + SMALL_PANEL_INCHES * len(classes)
    fig = plt.figure(figsize=(width, height))  # fixed layout: 1.3 in left for names, 1.2 in right, 0.5 in top
    ax = fig.add_axes((1.3 / width, 0.1 / height, 1 - 2.5 / width, 1 - 0.6 / height))
    im = _show_image(ax, _mosaic(_numpy(images)))  # one image for the whole grid: one artist, not C x n axes
    ax.set_yticks(np.arange(len(classes)) * (IMAGE_SIDE + MOSAIC_GAP) + MOSAIC_GAP + IMAGE_SIDE / 2 - 0.5, classes)
    ax.tick_params(axis="y", length=0)
    ax.spines[:].set_visible(False)
    _side_colorbar(fig, im, [ax], "pixel intensity", shrink=0.4)
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
    _plot_epochs(ax, {"train": ae.get("fvu"), "validation": ae.get("val_fvu")}, "Autoencoder reconstruction", "FVU")
    aux = ae.get("aux_loss") or []
    if aux:
        twin = ax.twinx()
        color = sns.color_palette()[2]  # not the validation curve's colour
        twin.plot(np.arange(1, len(aux) + 1), aux, marker="s", ls="--", color=color, label="AuxK loss (right)")
        twin.set_ylabel("AuxK loss (dashed)", color=color)
        twin.grid(False)
        if ax.get_legend() is not None:  # one legend for both axes, on the twin (drawn above the curves), where
            ax.get_legend().remove()  # the falling FVU and the saturating AuxK loss leave room
        twin.legend(handles=ax.get_lines() + twin.get_lines(), loc="center right")


@_styled
def plot_training_history(history: dict, save: str | None = None) -> Figure:
    """Per-epoch training curves from ``train_models``: autoencoder FVU (+ AuxK loss), dead fraction,
    classifier loss, and classifier train vs validation accuracy (the test set is never looked at per epoch).

    ``history``: ``{"ae": {"loss", "fvu", "aux_loss", "dead_fraction", "val_fvu": [E]}, "clf": {"loss", "train_acc",
    "val_acc": [E]}, "seconds": {"ae", "clf"}}``; missing or empty parts are shown as 'no data', an
    empty history (e.g. from a checkpoint saved without one) as a short note.
    """
    history = history or {}
    ae, clf = history.get("ae") or {}, history.get("clf") or {}
    if not any(ae.values()) and not any(clf.values()):
        note = "This run has no training history (e.g. the models came from a checkpoint saved without one)."
        return _finish(_message_figure("Training history", note), save)
    fig, (axes,) = _grid_figure(17, 3.6, TRAINING_LAYOUT, 1, 4)
    _plot_fvu_aux(axes[0], ae)
    _plot_epochs(axes[1], {"dead": ae.get("dead_fraction")}, "Dead units (AuxK criterion)", "fraction of units")
    _plot_epochs(axes[2], {"loss": clf.get("loss")}, "Classifier loss", "cross-entropy (train)")
    _plot_epochs(axes[3], {"train": clf.get("train_acc"), "validation": clf.get("val_acc")},
                 "Classifier accuracy", "accuracy")
    seconds = history.get("seconds") or {}
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    _suptitle(fig, "Training history" + (f" (wall time: {timing})" if timing else ""))
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
    fig, axes = _fixed_grid(2 * n_per_class, len(classes), (0.12, 0.4), (0.45, 1.3, 0.75, 0.35))
    for c, name in enumerate(classes):
        axes[0, c].set_title(name)
        for i in range(n_per_class):
            im = _show_image(axes[2 * i, c], _as_image(x[c, i]))
            _show_image(axes[2 * i + 1, c], _as_image(x_hat[c, i].clamp(0, 1)))
            axes[2 * i + 1, c].set_xlabel(f"MSE {mse[c, i]:.4f}")
    for i in range(n_per_class):
        axes[2 * i, 0].set_ylabel("original")
        axes[2 * i + 1, 0].set_ylabel("reconstruction")
    _side_colorbar(fig, im, axes, "pixel intensity\n(reconstructions clipped to [0, 1])", shrink=0.7)
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
    hist_inches = ATLAS_HISTOGRAM_INCHES
    fig, axes = _fixed_grid(n_rows, n_cols, (0.1, 0.45), (0.95, 1.3, 0.85, sum(hist_inches)))
    for ax in axes.flat[n_units:]:
        ax.remove()
    for ax, unit in zip(axes.flat, order):
        im = _show_signed(ax, atoms_all[unit].reshape(IMAGE_SIDE, IMAGE_SIDE), limit)
        ax.set_title(f"unit {unit}\n{100 * usage[unit]:.1f} %", fontsize="small")
    _side_colorbar(fig, im, axes.flat[:n_units], "decoder weight", shrink=0.6)
    width, height = fig.get_size_inches()
    grid_box = axes[0, 0].get_position()
    _usage_histogram(fig.add_axes((grid_box.x0, hist_inches[1] / height, 1 - grid_box.x0 - 1.3 / width,
                                   hist_inches[0] / height)), usage)
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
    images = np.full((len(classes), n_units, IMAGE_SIDE, IMAGE_SIDE), np.nan)
    titles = [[""] * n_units for _ in classes]
    for c, units in top.items():
        for i, (j, value) in enumerate(units):
            images[c, i] = atoms[j].reshape(IMAGE_SIDE, IMAGE_SIDE)
            titles[c][i] = f"unit {j}, c̄ = {value:+.2f}"
    panel_w, panel_h = 1.35 * SMALL_PANEL_INCHES, 1.2 * SMALL_PANEL_INCHES
    width, height = 2.8 + panel_w * n_units, 0.75 + panel_h * len(classes)
    fig = plt.figure(figsize=(width, height))  # fixed layout: class names left, colour bar right, title on top
    ax = fig.add_axes((1.6 / width, 0.1 / height, panel_w * n_units / width, panel_h * len(classes) / height))
    row_labels = [f"{name}\n(n = {(lab == c).sum()})" for c, name in enumerate(classes)]
    im = _show_mosaic(ax, images, limit, titles, row_labels)
    if top:
        _side_colorbar(fig, im, [ax], "decoder weight", shrink=0.4)
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
    fig, ((ax_cm, ax_bar),) = _grid_figure(15, 7, CONFUSION_LAYOUT, 1, 2, width_ratios=[2.15, 1])
    _annotated_heatmap(ax_cm, rates, classes, classes, CONFUSION_CMAP, (0, 1), ".2f",
                       "share of the true class's test images", fontsize="x-small")
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


def _colorbar_axis(ax):
    """An axis for a colour bar just right of ``ax`` (fixed layouts: no layout engine to place it)."""
    return ax.inset_axes(COLORBAR_INSET)


def _comparison_maps(fig, grid, image: np.ndarray, maps: dict, methods: list[str]) -> None:
    """Rows 1-2 of the comparison: the image and each signed map, then the object outline and overlays
    (drawn on row 1's colour scales; row 1's colour bars say so)."""
    mask = image > 0
    ax = fig.add_subplot(grid[0, 0])
    fig.colorbar(_show_image(ax, image, "Input image"), cax=_colorbar_axis(ax), label="pixel intensity (both rows)")
    ax = fig.add_subplot(grid[1, 0])  # row 2 is drawn on row 1's colour scales: one colour bar serves both
    _show_image(ax, image, f"Object pixels (x > 0): {mask.mean():.0%}")
    ax.contour(mask, levels=[0.5], colors=OBJECT_CONTOUR_COLOR, linewidths=1.2)
    for col, m in enumerate(methods, start=1):
        a = _as_image(maps[m], f"maps[{m!r}]")
        limit = _symmetric_limit(a, MAP_CLIP_PERCENTILE)
        ax = fig.add_subplot(grid[0, col])
        fig.colorbar(_show_signed(ax, a, limit, _label(m)), cax=_colorbar_axis(ax), label="attribution (both rows)")
        ax = fig.add_subplot(grid[1, col])
        _show_image(ax, image, f"{_label(m)} on image")
        alpha = OVERLAY_ALPHA * np.clip(np.abs(a) / limit, 0, 1)
        ax.imshow(a, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, alpha=alpha, interpolation="nearest")


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


def _annotated_heatmap(ax, values: np.ndarray, xlabels, ylabels, cmap: str, limits: tuple[float, float],
                       fmt: str, cbar_label: str, cbar_kws: dict | None = None, fontsize="medium"):
    """``values: [R, C]`` as square cells with the value written in each (white on dark cells) and a colour
    bar (``cbar_kws`` go to ``fig.colorbar``, e.g. ``cax``). One image and R x C texts: no extra draw."""
    im = ax.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
    rgba = im.cmap(im.norm(values))
    luminance = rgba[..., :3] @ np.array([0.2126, 0.7152, 0.0722])  # relative luminance (sRGB weights)
    for (r, c), value in np.ndenumerate(values):
        ax.text(c, r, format(value, fmt), ha="center", va="center", fontsize=fontsize,
                color="white" if luminance[r, c] < HEATMAP_DARK else "0.15")
    ax.set_xticks(range(values.shape[1]), xlabels)
    ax.set_yticks(range(values.shape[0]), ylabels)
    ax.tick_params(length=0)
    ax.grid(False)
    ax.spines[:].set_visible(False)
    ax.figure.colorbar(im, ax=ax, label=cbar_label, **(cbar_kws or {"shrink": 0.8}))
    return im


def _correlation_heatmap(ax, corr: np.ndarray, methods: list[str], title: str, cbar_kws: dict | None = None) -> None:
    """Annotated ``[M, M]`` correlation heatmap on [-1, 1] with the diverging map."""
    _annotated_heatmap(ax, corr, [SHORT_LABELS.get(m, m) for m in methods], [_label(m) for m in methods],
                       DIVERGING_CMAP, (-1, 1), ".2f", "Spearman ρ", cbar_kws)
    ax.tick_params(axis="x", labelrotation=30)
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
    width, height = max(COMPARISON_MIN_WIDTH, PANEL_INCHES * 1.25 * n_cols), 3.6 * PANEL_INCHES
    fig = plt.figure(figsize=(width, height))  # fixed layout (margins in inches): no layout engine, one draw
    m = COMPARISON_MARGINS
    grid = fig.add_gridspec(3, n_cols, height_ratios=[1, 1, 1.5], left=m["left"] / width,
                            right=1 - m["right"] / width, top=1 - m["top"] / height, bottom=m["bottom"] / height,
                            wspace=m["wspace"], hspace=m["hspace"])
    _comparison_maps(fig, grid, img, maps, methods)
    ratios = [1.2, 0.9, 1.2][:3 if len(methods) > 1 else 2]
    bottom = grid[2, :].subgridspec(1, len(ratios), width_ratios=ratios, wspace=m["bottom_wspace"])
    _comparison_stat_bars(fig.add_subplot(bottom[0]), fig.add_subplot(bottom[1]), stats, methods,
                          float((img > 0).mean()))
    if len(methods) > 1:  # one method has no agreement to show
        ax = fig.add_subplot(bottom[2])
        _correlation_heatmap(ax, _image_spearman(maps, methods), methods, "Agreement: Spearman ρ of |maps|",
                             {"cax": _colorbar_axis(ax)})
    fig.suptitle(f"{label} (model confidence {confidence:.1%}); row 2: each map over the image, opacity ~ |attr|",
                 fontsize="large")
    return _finish(fig, save)


def _comparison_jobs(selection: Selection, maps: dict, classes, methods, max_samples_per_class: int,
                     save_dir: str | None) -> list[dict]:
    """Keyword arguments of ``plot_attribution_comparison`` for the first ``max_samples_per_class`` selected
    images of each class (numpy arrays: drawing them needs no CUDA tensor)."""
    classes = _check_classes(classes)
    _check_int("max_samples_per_class", max_samples_per_class, low=1)
    methods = _resolve_methods(methods, maps)
    arrays = {m: _as_maps(maps[m], f"maps[{m!r}]", len(selection.x)) for m in methods}
    labels = _check_labels(selection.y, len(selection.x), len(classes))
    jobs = []
    for c, name in enumerate(classes):
        for i, idx in enumerate(np.flatnonzero(labels == c)[:max_samples_per_class]):
            fallback = selection.fallback is not None and bool(selection.fallback[idx])
            jobs.append({"image": _numpy(selection.x[idx]), "maps": {m: a[idx] for m, a in arrays.items()},
                         "label": name + FALLBACK_NOTE * fallback, "confidence": float(selection.confidence[idx]),
                         "methods": methods,
                         "save": None if save_dir is None else Path(save_dir) / f"comparison_{_slug(name)}_{i}.png"})
    return jobs


def plot_comparison_grid(selection: Selection, maps: dict, classes, methods=None,
                         max_samples_per_class: int = 1, save_dir: str | None = None) -> list[Figure]:
    """``plot_attribution_comparison`` for the first ``max_samples_per_class`` selected images of each class.

    ``selection``: ``Selection`` (``x: [N, 784]``, ``y: [N]``, ``confidence: [N]``); ``maps``: method ->
    ``[N, 784]``; ``classes: [C]`` names. A fallback image (``Selection.fallback``) says so in its title.
    With ``save_dir`` each figure is saved as
    ``{save_dir}/comparison_{class-slug}_{i}.png``. Returns the figures (class order);
    ``render_comparison_grid`` draws the same figures side by side in several processes.
    """
    return [plot_attribution_comparison(**job)
            for job in _comparison_jobs(selection, maps, classes, methods, max_samples_per_class, save_dir)]


def render_comparison_grid(selection: Selection, maps: dict, classes, methods=None, max_samples_per_class: int = 1,
                           save_dir: str | None = None, workers: int | None = None) -> list[bytes]:
    """The figures of ``plot_comparison_grid`` (same arguments), drawn side by side by ``render_figures``
    (``workers`` processes, default ``figure_workers``) and returned as PNG bytes for ``show`` (saved under
    ``save_dir`` too)."""
    jobs = _comparison_jobs(selection, maps, classes, methods, max_samples_per_class, save_dir)  # numpy only
    return render_figures([functools.partial(plot_attribution_comparison, **job) for job in jobs], workers,
                          cuda_free=True)


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
    fig, axes = _fixed_grid(len(methods), len(classes), (0.08, 0.2), (1.5, 1.35, 0.9, 0.1))
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
            _side_colorbar(fig, im, axes[r, :], "mean attribution", shrink=0.9)
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


def _pair_excess_points(ax, pairs: list[tuple[str, dict]]) -> None:
    """Excess of each Spearman variant over its different-image null (mean, 95 % CI), one row per pair;
    the signed all-pixel value and its null are written at the right of each row."""
    offsets = np.linspace(-0.3, 0.3, len(NULL_CORRELATIONS))
    for off, (key, name) in zip(offsets, NULL_CORRELATIONS.items()):
        means, err = _ci_errors([entry["vs_null"][key]["excess"] for _, entry in pairs])
        ax.errorbar(means, np.arange(len(pairs)) + off, xerr=err, fmt="o", capsize=3, label=name)
    for y, (_, entry) in enumerate(pairs):
        s = entry["vs_null"]["spearman_signed_all"]
        ax.annotate(f"signed: {s['value']['mean']:.2f} vs null {s['null']['mean']:.2f}", (1, y), xycoords=(
            "axes fraction", "data"), xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
            fontsize="x-small", color="0.35")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(range(len(pairs)), [label for label, _ in pairs])
    ax.invert_yaxis()
    ax.set(xlim=(-0.5, 1), xlabel="Spearman ρ minus the different-image null (95 % CI)",
           title="Agreement beyond maps of another image of the same class")
    ax.legend(fontsize="small", loc="lower left")


@_styled
def plot_correlation_summary(cross_stats: dict, methods, save: str | None = None) -> Figure:
    """Agreement between methods over all images. With the different-image null (``vs_null``, from
    ``cross_method_statistics(..., x=, labels=)``): per pair the excess of Spearman (signed and |maps|,
    all and object pixels) over the null with 95 % CIs, the top-1 % pixel IoU, and the matrix of the
    signed all-pixel excess. Without it: the plain correlations and the matrix of Spearman on |maps|.

    ``cross_stats``: ``cross_method_statistics`` output; ``methods``: at least two names from METHOD_LABELS.
    """
    methods = _resolve_methods(methods, cross_stats.get("per_method", {}), "cross-method statistics")
    if len(methods) < 2:
        raise ValueError(f"plot_correlation_summary needs at least two methods, got {methods}")
    pairs = _pair_entries(cross_stats, methods)
    with_null = all("vs_null" in entry for _, entry in pairs)
    fig, ((ax_corr, ax_iou, ax_mat),) = _grid_figure(18, max(5.0, 1.0 * len(pairs) + 2), CORRELATION_LAYOUT, 1, 3,
                                                     width_ratios=[1.5, 0.8, 1.1])
    (_pair_excess_points if with_null else _pair_correlation_points)(ax_corr, pairs)
    means, err = _ci_errors([entry["top1pct_iou"] for _, entry in pairs])
    ax_iou.barh(np.arange(len(pairs)), means, xerr=err, capsize=3, color=sns.color_palette()[4])
    ax_iou.set_yticks(range(len(pairs)), [])
    ax_iou.invert_yaxis()
    ax_iou.set(xlim=(0, 1), xlabel="IoU of the top 1 % pixels (95 % CI)", title="Top-pixel overlap")
    if with_null:
        matrix = correlation_matrix(cross_stats, methods, "spearman_signed_all", "excess")
        title = "Signed Spearman ρ minus the null"
    else:
        matrix, title = correlation_matrix(cross_stats, methods, "spearman_abs"), "Mean Spearman ρ of |maps|"
    _correlation_heatmap(ax_mat, matrix, methods, title, {"cax": _colorbar_axis(ax_mat)})
    n = pairs[0][1]["spearman_abs"].get("n")
    _suptitle(fig, "Agreement between attribution methods" + (f" over {n} images" if n else ""))
    return _finish(fig, save)


# --- faithfulness checks -------------------------------------------------------------------------------


FAITH_CURVE_TITLES = {"morf": "MoRF: most relevant removed first (lower = better)",
                      "lerf": "LeRF: least relevant removed first (higher = better)"}
SUBSTRATE_LABELS = {"zero": "set to 0", "blur": "blurred", "road": "imputed (ROAD)"}  # what removed pixels become
ABS_HATCH = "//"  # bars of methods ranked by |value|


def _ordering_label(entry: dict) -> str:
    """'Integrated gradients', or 'Integrated gradients, |value|' for the |value| ranking."""
    return _label(entry["name"]) + (", |value|" if entry["ranking"] == "abs" else "")


def _faithfulness_curves(ax, entries: dict, which: str, substrate: str, n: int) -> None:
    """Mean ``which`` (morf/lerf) deletion curves: methods ranked by signed value solid, controls grey."""
    for entry in entries.values():
        if entry["ranking"] == "abs":
            continue
        y = np.asarray(entry["mean_curves"][which], dtype=np.float64)
        color, dashes = CONTROL_STYLES.get(entry["name"], (_color(entry["name"]), "-"))
        ax.plot(np.linspace(0, 1, len(y)), y, color=color, ls=dashes, lw=1.8 if dashes == "-" else 1.4,
                label=_ordering_label(entry))
    removed = SUBSTRATE_LABELS.get(substrate, substrate)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"fraction of pixels removed ({removed})",
           ylabel="target-class probability (mean)", title=f"{substrate}, {n} images — {FAITH_CURVE_TITLES[which]}")


def _faithfulness_gap_bars(ax, entries: dict, substrate: str) -> None:
    """LeRF - MoRF AUC gap (mean, 95 % CI) of every ordering; the random control's gap as a line."""
    keys = list(entries)
    means, err = _ci_errors([entries[k]["gap"] for k in keys])
    y = np.arange(len(keys))
    colors = [CONTROL_STYLES.get(entries[k]["name"], (_color(entries[k]["name"]),))[0] for k in keys]
    bars = ax.barh(y, means, 0.7, xerr=err, capsize=2, color=colors)
    for bar, k in zip(bars, keys):
        if entries[k]["ranking"] == "abs":
            bar.set_hatch(ABS_HATCH)
            bar.set_edgecolor("white")
    ax.axvline(entries["random"]["gap"]["mean"], color=CONTROL_STYLES["random"][0], ls=":", lw=1.2)
    ax.axvline(0.0, color="0.2", lw=0.8)
    marks = ["*" if entries[k]["vs_random"]["beats"] else "" for k in keys]
    ax.set_yticks(y, [f"{_ordering_label(entries[k])} {m}" for k, m in zip(keys, marks)])
    ax.invert_yaxis()
    ax.set(xlabel="LeRF AUC − MoRF AUC (95 % CI)", title=f"{substrate}: gap (* beats random, paired Wilcoxon)")


@_styled
def plot_faithfulness(result: dict, save: str | None = None) -> Figure:
    """Per substrate (rows): mean MoRF and LeRF deletion curves (methods ranked by signed value solid,
    controls grey dashed) and the MoRF-LeRF AUC gap of every ordering with its 95 % CI (|value|
    rankings hatched; * = beats the random control). ``result``: ``faithfulness_suite`` output."""
    subs = result.get("substrates") if isinstance(result, dict) else None
    if not subs or any("orderings" not in s or "random" not in s["orderings"] for s in subs.values()):
        raise ValueError("result must be a faithfulness_suite result with at least one substrate (each with its "
                         f"orderings, the random control among them), got keys {list(subs or {})}")
    fig, axes = _grid_figure(20, 4.6 * len(subs), FAITHFULNESS_LAYOUT, len(subs), 3, width_ratios=[1, 1, 1.05])
    for row, (sub, res) in zip(axes, subs.items()):
        for ax, which in zip(row[:2], ("morf", "lerf")):
            _faithfulness_curves(ax, res["orderings"], which, sub, res["n_images"])
        _faithfulness_gap_bars(row[2], res["orderings"], sub)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(5, len(labels)), fontsize="small")
    steps = ", ".join(f"{sub} {res.get('pixels_per_step', result.get('pixels_per_step', '?'))}"
                      for sub, res in subs.items())
    _suptitle(fig, f"Faithfulness: deletion in both orders under {len(subs)} substrate(s); "
                 f"pixels per step: {steps}")
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


def _decomposition_steps(ax_err, ax_share, dec: dict) -> None:
    """IG's median completeness error and its median mismatch with minus the jump sum against n_steps
    (log-log, with the median jump size as a line), and the share of images whose mismatch is within
    the tolerance."""
    all_steps = []
    for i, (method, rows) in enumerate(dec["table"].items()):
        steps, entries = _steps_table(rows)
        rule, color = QUADRATURE_LABELS.get(method, method), sns.color_palette()[i]
        ax_err.plot(steps, [max(e["median_rel_error"], LOG_FLOOR) for e in entries], marker="o", color=color,
                    label=f"|IG error|, {rule}")
        ax_err.plot(steps, [max(e["median_mismatch"], LOG_FLOOR) for e in entries], marker="s", ls="--",
                    color=color, label=f"|IG error + jump sum|, {rule}")
        ax_share.plot(steps, [e["share_within_tolerance"] for e in entries], marker="s", color=color, label=rule)
        all_steps += list(steps)
    steps = np.unique(all_steps)
    jumps = np.median(np.abs(_numpy(dec["per_image"]["jump_sum"]) / _numpy(dec["per_image"]["gap"])))
    ax_err.axhline(jumps, color="0.3", ls=":", label=f"|jump sum| ({dec['n_points']}-interval scan)")
    ax_err.axhline(dec["tolerance"], color="0.3", ls="--", label=f"tolerance {dec['tolerance']:g}")
    _log_axis(ax_err, "y")
    ax_share.legend(fontsize="small")
    for ax in (ax_err, ax_share):
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.xaxis.set_minor_locator(NullLocator())
    ax_err.set(xlabel="IG steps", ylabel="median, relative to |F(x) − F(0)|", title="IG's error is the jumps")
    ax_err.legend(fontsize="small")
    ax_share.set(xlabel="IG steps", ylabel="share of images", ylim=(0, 1.02),
                 title=f"|IG error + jump sum| within {dec['tolerance']:g} of |F(x) − F(0)|")


def _decomposition_scatter(ax, dec: dict) -> None:
    """Per image: IG's completeness error against minus the jump sum (both / |F(x) - F(0)|), coloured by
    the number of discontinuous swaps, with the identity line."""
    per = {k: _numpy(v) for k, v in dec["per_image"].items()}
    scale = np.abs(per["gap"])
    jumps, errors = -per["jump_sum"] / scale, per["ig_error"] / scale
    points = ax.scatter(jumps, errors, c=per["switches"], cmap="viridis", s=14)
    ends = [min(jumps.min(), errors.min()), max(jumps.max(), errors.max())]
    ax.plot(ends, ends, color="0.3", ls="--", lw=1, label="IG error = − jump sum")
    ax.figure.colorbar(points, cax=_colorbar_axis(ax), label="discontinuous top-k swaps on the path")
    rule = QUADRATURE_LABELS.get(dec["method"], dec["method"])
    ax.set(xlabel="− jump sum / |F(x) − F(0)|", ylabel="IG completeness error / |F(x) − F(0)|",
           title=f"Per image at {dec['n_steps']} steps ({rule})")
    ax.legend(fontsize="small", loc="upper left")


def _mismatch_histogram(ax, dec: dict) -> None:
    """Histogram of |IG error + jump sum| / |F(x) - F(0)| per image (log bins) with the tolerance line."""
    mismatch = np.clip(_numpy(dec["per_image"]["mismatch"]), LOG_FLOOR, None)
    tol = dec["tolerance"]
    bins = np.logspace(np.log10(min(mismatch.min(), tol)), np.log10(max(mismatch.max(), tol)) + LOG_BIN_MARGIN,
                       ERROR_BINS)
    ax.hist(mismatch, bins=bins, color=sns.color_palette()[0])
    _log_axis(ax, "x")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axvline(tol, color="0.3", ls="--", label=f"tolerance {tol:g}: {dec['share_within_tolerance']:.0%} within")
    res = dec["relative"]["residual"]["mean"]
    ax.set(xlabel="|IG error + jump sum| / |F(x) − F(0)|", ylabel="images",
           title=f"Mismatch at {dec['n_steps']} steps (scan residual {res:.1e})")
    ax.legend(fontsize="small")


@_styled
def plot_completeness(comp: dict, save: str | None = None) -> Figure:
    """Integrated gradients' completeness.

    ``comp`` from ``completeness_decomposition``: IG's error and its mismatch with minus the jump sum
    against the number of steps, the share of images within tolerance, and per image at the configured
    steps the error against the jumps and the histogram of the mismatch. ``comp`` from ``ig_completeness``
    (``table[method][n_steps] = {"median_rel_error", "share_within_tolerance", ...}``, ``tolerance``,
    ``per_image_50: [N] | None``, optional ``path_switches``): the error and the share within tolerance
    per quadrature rule, and (if present) the per-image errors at 50 steps.
    """
    if "per_image" in comp:
        fig, (axes,) = _grid_figure(23, 4.8, COMPLETENESS_LAYOUT, 1, 4)
        _decomposition_steps(axes[0], axes[1], comp)
        _decomposition_scatter(axes[2], comp)
        _mismatch_histogram(axes[3], comp)
        _suptitle(fig, f"Integrated gradients: F(x) − F(0) = gradient integral + jumps at top-k swaps "
                     f"({len(comp['per_image']['gap'])} images; mean {comp['summary']['switches']['mean']:.0f} "
                     f"discontinuous swaps per path)")
        return _finish(fig, save)
    table, tolerance = comp["table"], comp.get("tolerance")
    per_image = comp.get("per_image_50")
    n_panels = 2 + (per_image is not None)
    fig, (axes,) = _grid_figure(6 * n_panels, 4.6, COMPLETENESS_SWEEP_LAYOUT, 1, n_panels)
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
    _suptitle(fig, "Integrated gradients: does the attribution sum to F(x) − F(0)?")
    return _finish(fig, save)


def _randomization_panel(ax, rand: dict, variant: str, pixels: str) -> None:
    """One variant's similarity curves on one pixel set: a line with a 95 % CI band per method, and each
    method's different-class reference on the same pixel set as a dashed line."""
    stages = ["original"] + list(rand["stages"])
    x = np.arange(len(stages))
    series = rand["variants"][variant][pixels]
    for m in _ordered(series):
        if len(series[m]) != len(stages) - 1:
            raise ValueError(f"randomization result for {m!r} ({variant}, {pixels}) has {len(series[m])} stages, "
                             f"expected {len(stages) - 1}")
        means, err = _ci_errors(series[m])
        means, err = np.concatenate([[1.0], means]), np.concatenate([[[0.0], [0.0]], err], axis=1)
        ax.plot(x, means, marker="o", color=_color(m), label=_label(m))
        ax.fill_between(x, means - err[0], means + err[1], color=_color(m), alpha=CI_ALPHA)
        ax.axhline(rand["reference"][m][pixels]["mean"], color=_color(m), ls="--", lw=1)
    ax.set_xticks(x, stages, rotation=30, ha="right")
    where = "all pixels" if pixels == "all" else "object pixels (x > 0)"
    how = "cumulative, top layer first" if variant == "cascading" else "one stage at a time"
    ax.set(ylim=(min(-0.05, ax.get_ylim()[0]), 1.05), xlabel=f"randomised stage ({how})",
           ylabel="Spearman ρ of |maps| with the original", title=f"{variant.capitalize()}, {where}")


@_styled
def plot_randomization(rand: dict, save: str | None = None) -> Figure:
    """Model-parameter randomization, cascading (top row) and independent (bottom row; a row per variant
    the check ran), on all pixels (left) and object pixels (right): Spearman of |maps| with the trained
    model's maps after each stage (1.0 at 'original') with 95 % CI bands; dashed lines: each method's
    reference, the same statistic between maps of two images of different classes on the same pixel set.

    ``rand``: ``randomization_check`` output: ``stages: [S]``, ``variants[variant][pixels][method]: [S]``
    summaries, ``reference[method][pixels]`` summaries.
    """
    variants = [v for v in RANDOMIZATION_VARIANTS if v in rand["variants"]]
    fig, axes = _grid_figure(15, RANDOMIZATION_ROW_INCHES * len(variants), RANDOMIZATION_LAYOUT, len(variants),
                             len(PIXEL_SETS), sharey=True)
    for r, variant in enumerate(variants):
        for c, pixels in enumerate(PIXEL_SETS):
            _randomization_panel(axes[r, c], rand, variant, pixels)
    axes[0, -1].plot([], [], color="0.3", ls="--", lw=1, label="reference: images of different classes")
    axes[0, -1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    n = rand.get("n_images")
    _suptitle(fig, "Model-parameter randomization check" + (f" ({n} images)" if n else ""))
    return _finish(fig, save)


UNIT_ORDER_STYLES = {"contribution": (METHOD_COLORS["decoder"], "-"), "random": CONTROL_STYLES["random"],
                     "activation": ("0.45", "--")}  # colour, dashes of each unit order
UNIT_ORDER_LABELS = {"contribution": "largest contribution first (decoder-weighted)", "random": "random order",
                     "activation": "largest activation first"}


def _unit_curve_panel(ax, result: dict, mode: str, score: str) -> None:
    """Mean curves of every unit order with pointwise 95 % bands and AUCs (CI) in the legend."""
    for order in result["orders"]:
        curve = result["curves"][mode][score][order]
        mean = np.asarray(curve["mean"])
        steps = np.arange(len(mean))
        color, dashes = UNIT_ORDER_STYLES.get(order, ("0.5", "-"))
        ax.plot(steps, mean, color=color, ls=dashes,
                label=f"{UNIT_ORDER_LABELS.get(order, order)}: AUC {_ci_text(result['auc'][mode][score][order])}")
        ax.fill_between(steps, curve["lo"], curve["hi"], color=color, alpha=CI_ALPHA)
    verb = "zeroed (from the full code)" if mode == "deletion" else "switched on (from the empty code)"
    test = result["tests"][mode][score]
    p = ", ".join(f"p vs {name[3:]} {t['p_value']:.1e}" for name, t in test.items())
    ax.set(xlabel=f"active units {verb}", ylabel=f"target {score} (mean, 95 % band)",
           title=f"{mode.capitalize()} ({'lower' if mode == 'deletion' else 'higher'} AUC = better; {p})")
    ax.legend(fontsize="x-small", loc="best")


@_styled
def plot_unit_deletion(result: dict, save: str | None = None) -> Figure:
    """Unit-level causality: the target logit (top) and probability (bottom) as active code units are
    zeroed (left) or switched on (right) one per step, largest decoder-weighted contribution first vs
    random order vs largest activation first; mean curves with 95 % bands, AUCs and Wilcoxon p-values.

    ``result``: ``unit_deletion_curves`` output.
    """
    missing = [key for key in ("orders", "curves", "auc", "tests") if key not in result]
    if missing:
        raise ValueError(f"result must be unit_deletion_curves output; it lacks {missing}")
    fig, axes = _grid_figure(15, 9.5, UNIT_DELETION_LAYOUT, len(UNIT_SCORES), 2)
    for r, score in enumerate(UNIT_SCORES):
        for c, mode in enumerate(("deletion", "insertion")):
            _unit_curve_panel(axes[r, c], result, mode, score)
    _suptitle(fig, f"Unit-level causality in code space ({result['n_images']} images, k = {result['k']}, "
                 f"{result['mean_active_units']:.1f} active units on average)")
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
    fig, ((ax,),) = _grid_figure(7, 4.8, OBJECT_FOCUS_LAYOUT)
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
    """FVU, dead units, test accuracy and deletion AUCs (IG, decoder-weighted, random order) against k.

    ``rows: [R]`` dicts (``run_k_sweep`` output, or ``results/k_sweep.json``'s rows) with ``k`` and any of the
    keys in ``K_SWEEP_PANELS``; ``None`` or missing values are skipped. Log-2 x-axis.
    """
    if not rows or any("k" not in r for r in rows):
        raise ValueError("rows must be a non-empty list of dicts, each with a 'k' entry")
    rows = sorted(rows, key=lambda r: r["k"])
    ks = [r["k"] for r in rows]
    fig, (axes,) = _grid_figure(17, 3.8, K_SWEEP_LAYOUT, 1, len(K_SWEEP_PANELS))
    for ax, (title, lines) in zip(axes, K_SWEEP_PANELS.items()):
        drawn = 0
        for key, label in lines:
            points = [(r["k"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                style = CONTROL_STYLES["random"] if key.endswith("_random") else (None, "-")
                ax.plot(*zip(*points), marker="o", color=style[0], ls=style[1], label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        elif len(lines) > 1:
            ax.legend(fontsize="small")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(xlabel="k (active units per image)", ylabel=lines[0][1] if len(lines) == 1 else "AUC", title=title)
    _suptitle(fig, "Sparsity sweep")
    return _finish(fig, save)


# --- the unit atlas ------------------------------------------------------------------------------------

DENSITY_BINS = 40  # log-spaced bins of the firing-density histogram
DASHBOARD_TOP_COLUMNS = 8  # top-activating images per row of a dashboard's mosaic
MOSAIC_GAP_COLOR = "white"  # gaps between the images of a unit's mosaic
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
    live = np.concatenate([stats.freq_train, stats.freq_test])
    live = live[live > 0]
    if live.size == 0:
        return _finish(_message_figure("Firing density", "no unit fires on any image"), save)
    fig, ((ax,),) = _grid_figure(8, 3.6, DENSITY_LAYOUT)
    bins = np.geomspace(live.min(), live.max() * (1 + LOG_BIN_MARGIN), DENSITY_BINS + 1)
    for name, freq, color in (("train", stats.freq_train, sns.color_palette()[0]),
                              ("test", stats.freq_test, sns.color_palette()[1])):
        ax.hist(freq[freq > 0], bins=bins, histtype="step", lw=1.8, color=color,
                label=f"{name} ({int((freq == 0).sum())} units never fire)")
    _log_axis(ax, "x", minor_labels=False)  # five decades: 1-2-5 labels would run into each other
    ax.axvline(np.median(stats.freq_test), color="0.3", ls=":", label="median (test)")
    ax.set(xlabel="firing frequency: fraction of images on which the unit fires (log scale)", ylabel="units")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"Firing density of all {len(stats.freq_test)} units ({int(stats.dead.sum())} dead: "
                 "never fire on a training or test image)")
    return _finish(fig, save)


def _unit_mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """``images: [n, 784]`` (NaN rows for empty cells) -> one ``[rows * 29 - 1, columns * 29 - 1]`` array,
    ``columns`` images a row, with NaN gaps (``_mosaic`` without its title room above the first row)."""
    rows = -(-len(images) // columns)
    grid = np.full((rows * columns, IMAGE_SIDE, IMAGE_SIDE), np.nan)
    grid[:len(images)] = images.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return _mosaic(grid.reshape(rows, columns, IMAGE_SIDE, IMAGE_SIDE))[MOSAIC_GAP:, :-MOSAIC_GAP]


def _test_images(data: FashionMNIST, ids: np.ndarray) -> np.ndarray:
    """``ids: [n]`` test ids (-1 = empty) -> ``[n, 784]`` images with NaN rows for the empty ones."""
    images = np.full((len(ids), IMAGE_SIDE**2), np.nan)
    valid = ids >= 0
    images[valid] = _numpy(data.x_test[torch.from_numpy(ids[valid])])
    return images


def _show_unit_mosaic(ax, mosaic: np.ndarray, title: str) -> None:
    """A grey-scale ``_unit_mosaic`` on ``ax``, gaps in ``MOSAIC_GAP_COLOR``."""
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
    _show_unit_mosaic(ax, _unit_mosaic(_test_images(data, stats.top_images[unit]), DASHBOARD_TOP_COLUMNS),
                 f"top {UNIT_TOP_IMAGES} test images (largest activation {stats.hist_max[unit]:.2f})")
    ax.set_ylabel(f"unit {unit}", fontsize="large", fontweight="bold")
    _show_unit_mosaic(fig.add_subplot(cells[3]), _unit_mosaic(_test_images(data, stats.band_images[unit][::-1].ravel()),
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
    fig, ((ax,),) = _grid_figure(7.5, 5.5, AGREEMENT_LAYOUT)
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
#   selection{n_images, n_per_class, threshold, candidates_per_class, selected_per_class, n_fallback,
#             shortfalls{class: {passing, selected, fallback}}, skipped_classes, warning},
#   validation{n_images, cross_method, faithfulness, object_focus, completeness, randomization, unit_deletion,
#              seconds{check: s}}, verdicts[{ordering, method, ranking, test, passes, rank, value}],
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


def selection_summary(selection: Selection, threshold: float) -> dict:
    """The ``selection`` block of the summary: sizes, per-class counts and any shortfall."""
    classes = list(selection.n_candidates)
    fallback = selection.fallback
    return {"n_images": len(selection.y), "threshold": threshold,
            "n_per_class": selection.n_requested or len(selection.y) // max(len(classes), 1),
            "candidates_per_class": selection.n_candidates, "selected_per_class": selection.per_class(classes),
            "n_fallback": int(fallback.sum()) if fallback is not None else 0,
            "shortfalls": selection.shortfalls, "skipped_classes": selection.skipped, "warning": selection.warning}


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
        summary["selection"] = selection_summary(selection, cfg.confidence_threshold)
    if validation is not None:
        summary["validation"] = validation
    summary.update(extra)
    return _jsonable(summary)


def figure_timings(seconds: dict[str, list[float]] | None = None) -> dict:
    """Figure-drawing time (``FIGURE_SECONDS`` unless ``seconds`` is given) summed up, in seconds: ``{"total",
    "n_figures", "slowest": [function, s], "per_function": {function: {"calls", "total", "max"}}}``."""
    seconds = FIGURE_SECONDS if seconds is None else seconds
    per = {name: {"calls": len(t), "total": sum(t), "max": max(t)} for name, t in seconds.items() if t}
    slowest = max(per, key=lambda name: per[name]["max"], default=None)
    return {"total": sum(p["total"] for p in per.values()), "n_figures": sum(p["calls"] for p in per.values()),
            "slowest": [slowest, per[slowest]["max"] if slowest else 0.0], "per_function": per}


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
    sel = summary.get("selection")
    if sel:
        short = f"; fewer for {len(sel.get('shortfalls', {})) + len(sel.get('skipped_classes', []))} classes"
        rows.append(("Explained images", f"{sel['n_images']} ({sel['n_per_class']} asked per class"
                     f"{short if sel.get('warning') else ''}, {sel.get('n_fallback', 0)} below the threshold)"))
    val = summary.get("validation")
    if val:
        for sub, res in val["faithfulness"]["substrates"].items():
            for key, e in res["orderings"].items():
                rows.append((f"LeRF-MoRF gap, {sub}: {key}", _ci_text(e["gap"])))
        comp = val["completeness"]
        rows.append((f"IG completeness error = jump sum within {100 * comp['tolerance']:.0f} % "
                     f"({comp['n_steps']} steps)", f"{100 * comp['share_within_tolerance']:.0f} % of images"))
    rows += [(f"time: {k}", f"{v:.1f} s") for k, v in summary.get("timings_s", {}).items()]
    figures = summary.get("figures")
    if figures and figures["n_figures"]:
        rows.append((f"time: {figures['n_figures']} figures (drawn and saved)",
                     f"{figures['total']:.1f} s, slowest {figures['slowest'][1]:.2f} s ({figures['slowest'][0]})"))
    return rows



def show_markdown(text: str) -> None:
    """Render ``text`` as Markdown under Jupyter; print it elsewhere (the notebook also runs as a script)."""
    jupyter = _jupyter_display()
    if jupyter is None:
        print(text)
    else:
        display, ipd = jupyter
        display(ipd.Markdown(text))


def seeds_for_config(path: str | os.PathLike, cfg: Config) -> dict | None:
    """``benchmarks/verdicts_across_seeds.py``'s result at ``path`` if it was measured with ``cfg``'s
    configuration (every field but the seed), else None (missing file, or another configuration)."""
    path = Path(path)
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    mine = {**cfg.to_dict(), "seed": None}
    theirs = {**result.get("config", {}), "seed": None}
    return result if json.dumps(mine, sort_keys=True) == json.dumps(theirs, sort_keys=True) else None


def verdict_markdown(rows: list[dict], seeds: dict | None = None) -> str:
    """A Markdown table, one row per attribution ordering and one column per test of ``VERDICT_TESTS``:
    ✓ / ✗ (pass / fail in this run), the rank among all orderings where there is one, and, if ``seeds``
    (``seeds_for_config``) is given, ``seeds: ✓✓✗`` with the outcome in each seed (— when a test does not
    apply). Then the plain statements: from ``seeds`` when given, else from this run alone."""
    tests = list(VERDICT_TESTS)
    stability = {(e["ordering"], e["test"]): e for e in (seeds or {}).get("stability", [])}
    table = {}
    for r in rows:
        cell = ("✓" if r["passes"] else "✗") + (f" (rank {r['rank']})" if r["rank"] is not None else "")
        e = stability.get((r["ordering"], r["test"]))
        if e:
            cell += " · seeds " + "".join("✓" if ok else "✗" for ok in e["passes"].values())
        table.setdefault(r["ordering"], {})[r["test"]] = cell
    lines = ["| ordering | " + " | ".join(VERDICT_NAMES[t] for t in tests) + " |",
             "|---" * (len(tests) + 1) + "|"]
    lines += [f"| {_verdict_label(o).replace('|', '&#124;')} | " + " | ".join(cells.get(t, "—") for t in tests) + " |"
              for o, cells in table.items()]  # a literal | would split the cell
    statements = seeds["statements"] if seeds else verdict_statements({"this run": rows})
    where = f"{len(seeds['seeds'])} training seeds" if seeds else "this run only (no seed file for this configuration)"
    for kind, title in (("holds", "Holds on every substrate"), ("fails", "Fails everywhere"),
                        ("flips", "Depends on the protocol")):
        if statements[kind]:
            lines += ["", f"**{title}** ({where}):", *[f"- {s}" for s in statements[kind]]]
    return "\n".join(lines)


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


DEFAULT_FIGURE_DIR = "figures"  # the committed default run's figures
DEFAULT_SUMMARY_PATH = "results/summary.json"  # the committed default run's summary
RUNS_DIR = "runs"  # every other configuration writes under runs/<run_name>/ (git-ignored)
# The notebook's run parameters that are not Config fields, at their defaults (its parameters cell).
RUN_DEFAULTS = {"samples_per_class": 100, "n_subset": 300, "n_completeness": 200, "n_randomization": 100}
RUN_NAME_MAX = 80  # longer run names are cut and given a hash of the full name


def _name_part(name: str, value) -> str:
    """'k20', 'train_subset3000', 'n_subset50' for one non-default setting."""
    if isinstance(value, (list, tuple)):
        value = "-".join(map(str, value))
    elif isinstance(value, float):
        value = f"{value:g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}{value}")


def _plain(value):
    """A parameter value comparable across list/tuple spellings: sequences become lists."""
    return list(value) if isinstance(value, (list, tuple)) else value


def run_name(cfg: Config, **run_params) -> str:
    """``"default"`` for ``Config()`` with ``RUN_DEFAULTS``, else the settings that differ, e.g. ``"k20"``
    or ``"k1_ae_epochs3_train_subset3000_samples_per_class3"`` (Config fields first, in field order).

    ``run_params``: notebook parameters named in ``RUN_DEFAULTS`` (others raise ``ValueError``).
    """
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config, got {type(cfg).__name__}")
    unknown = sorted(set(run_params) - set(RUN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown run parameter(s) {unknown}; expected some of {sorted(RUN_DEFAULTS)}")
    default = Config().to_dict()
    settings = {**{n: v for n, v in cfg.to_dict().items() if v != default[n]},
                **{n: run_params[n] for n in RUN_DEFAULTS  # in RUN_DEFAULTS' order: the name ignores argument order
                   if n in run_params and _plain(run_params[n]) != _plain(RUN_DEFAULTS[n])}}
    if not settings:
        return "default"
    name = "_".join(_name_part(n, v) for n, v in settings.items())
    if len(name) > RUN_NAME_MAX:
        name = f"{name[:RUN_NAME_MAX - 9]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def _check_writable(folder: Path) -> None:
    """Create ``folder`` (and parents) and prove a file can be written there; ``ValueError`` if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"output folder {str(folder)!r} must be a writable folder, got: {exc}") from exc


def output_paths(cfg: Config, figure_dir: str | os.PathLike | None = DEFAULT_FIGURE_DIR,
                 summary_path: str | os.PathLike = DEFAULT_SUMMARY_PATH, runs_dir: str | os.PathLike = RUNS_DIR,
                 **run_params) -> tuple[str, str]:
    """Where this run saves its figures and summary, checked writable (call it before training).

    The default configuration (``run_name(cfg, **run_params) == "default"``) keeps ``figure_dir`` and
    ``summary_path``. Any other configuration that would write to the default ``figures/`` or
    ``results/summary.json`` writes to ``runs/<run_name>/figures`` and ``runs/<run_name>/summary.json``
    instead, so it never overwrites the committed default run; paths a user chose are kept.
    ``figure_dir`` empty or None (save no figures) stays as it is. Raises ``ValueError`` for a folder that
    cannot be created or written.
    """
    name = run_name(cfg, **run_params)
    figures = str(figure_dir) if figure_dir else ""
    summary = str(summary_path)
    if name != "default":
        run = Path(runs_dir) / name
        if figures and Path(figures) == Path(DEFAULT_FIGURE_DIR):
            figures = str(run / "figures")
        if Path(summary) == Path(DEFAULT_SUMMARY_PATH):
            summary = str(run / "summary.json")
    for folder in ([Path(figures)] if figures else []) + [Path(summary).parent]:
        _check_writable(folder)
    return figures, summary


_CARRIAGE_RETURN = re.compile(r".*\r(?=[^\n])")  # text a later \r on the same line overwrote


def _coalesce_streams(outputs: list) -> list:
    """Merge consecutive stream outputs of the same name and apply carriage returns (as a terminal shows
    them, like nbconvert's ``coalesce_streams``); drop streams left empty."""
    merged = []
    for out in outputs:
        if out.get("output_type") == "stream":
            text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
            if merged and merged[-1].get("output_type") == "stream" and merged[-1]["name"] == out["name"]:
                merged[-1]["text"] += text
                continue
            out = {**out, "text": text}
        merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream":
            out["text"] = _CARRIAGE_RETURN.sub("", out["text"].replace("\r\n", "\n"))
    return [o for o in merged if not (o.get("output_type") == "stream" and not o["text"])]


def compact_notebook(path: str | os.PathLike) -> tuple[int, int]:
    """Rewrite an executed notebook in place with each cell's progress-bar updates collapsed to their last
    state (``_coalesce_streams``); everything else is kept. Returns the file size (bytes) before and after.

    Run it after papermill: ``papermill nb.ipynb nb.ipynb && python -c "import ksae_helpers as kh;
    kh.compact_notebook('nb.ipynb')"``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        nb = json.loads(raw)
        cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"path must be a readable .ipynb notebook (JSON with 'cells'), got {str(path)!r}: "
                         f"{exc}") from exc
    for cell in cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = _coalesce_streams(cell.get("outputs", []))
    import nbformat  # comes with jupyter; writes the file exactly as Jupyter and papermill do

    data = nbformat.writes(nbformat.from_dict(nb), version=nbformat.NO_CONVERT).encode()
    atomic_write_bytes(path, data)
    return len(raw), len(data)


def randomization_table(rand: dict) -> list[tuple[str, str]]:
    """Rows "method: all pixels / object pixels" of the randomization check's similarity after the last
    stage that changes the model (the encoder: cascading, and the encoder alone: independent), next to
    the different-class reference on the same pixel sets."""
    stage = rand["stages"].index("encoder")
    rows = [("Spearman |maps| with the original (all pixels / object pixels)",
             "cascading to the encoder | encoder alone | different-class reference")]
    for m in rand["reference"]:
        cells = [rand["variants"][v][p][m][stage]["mean"] for v in RANDOMIZATION_VARIANTS for p in PIXEL_SETS]
        ref = [rand["reference"][m][p]["mean"] for p in PIXEL_SETS]
        rows.append((METHOD_LABELS.get(m, m), f"{cells[0]:.3f} / {cells[1]:.3f} | {cells[2]:.3f} / {cells[3]:.3f} | "
                     f"{ref[0]:.3f} / {ref[1]:.3f}"))
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
