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
9. Evaluation      -- sample selection, cross-method statistics, faithfulness checks.
10. Plotting       -- every figure of the notebook.
11. Summary        -- ``results/summary.json``.

Shapes are written as ``x: [batch, 784]``; ``D`` is the input size (784), ``H`` the code size (1024),
``C`` the number of classes (10).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
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
    aux_k: int = 256  # AuxK: dead units used to reconstruct the residual (Gao et al. 2024)
    aux_coef: float = 1 / 32  # AuxK: weight of the auxiliary loss
    dead_after: int = 20_000  # AuxK: a unit that fired on none of the last this-many images is "dead"
    # --- classifier on the codes ---
    clf_hidden: tuple[int, int] = (512, 256)  # hidden widths of the MLP head
    n_classes: int = 10  # Fashion-MNIST classes
    dropout: float = 0.3  # dropout after each hidden ReLU
    # --- optimisation ---
    batch_size: int = 256  # images per step, both models
    lr: float = 1e-3  # Adam learning rate, both models (the peak when lr_schedule is "cosine")
    lr_schedule: str = "cosine"  # "cosine": decay to 0 over each model's training; "constant": no decay
    ae_epochs: int = 30  # autoencoder epochs
    clf_epochs: int = 50  # classifier epochs
    clf_hflip: bool = True  # classifier sees each image or its mirror image at random (labels unchanged)
    train_subset: int = 0  # use only the first N training images (0 = all 60 000); for smoke runs
    seed: int = 0  # seeds initialisation, batch order, dropout and sample selection
    # --- attribution ---
    ig_steps: int = 50  # integrated-gradients steps from a zero image
    ig_method: str = "gausslegendre"  # IG quadrature (Captum's names)
    smoothgrad_samples: int = 25  # SmoothGrad noisy copies per image
    smoothgrad_noise: float = 0.1  # SmoothGrad noise std (pixels are in [0, 1])
    confidence_threshold: float = 0.8  # explain only correct predictions above this softmax confidence

    # Fields that change the trained weights; a checkpoint is reused only if all of them match.
    TRAINING_FIELDS = (
        "k", "d_input", "d_hidden", "aux_k", "aux_coef", "dead_after", "clf_hidden", "n_classes",
        "dropout", "batch_size", "lr", "lr_schedule", "ae_epochs", "clf_epochs", "clf_hflip", "train_subset",
        "seed",
    )  # fmt: skip

    def __post_init__(self):
        self.clf_hidden = tuple(int(w) for w in self.clf_hidden)
        _check_int("k", self.k, low=1, high=self.d_hidden, high_name="d_hidden")
        for name in ("d_input", "d_hidden", "n_classes", "batch_size", "ae_epochs", "clf_epochs"):
            _check_int(name, getattr(self, name), low=1)
        for name in ("ig_steps", "smoothgrad_samples"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("train_subset", self.train_subset, low=0)
        _check_int("aux_k", self.aux_k, low=0)
        _check_int("dead_after", self.dead_after, low=1)
        if len(self.clf_hidden) == 0 or min(self.clf_hidden) < 1:
            raise ValueError(f"clf_hidden must be positive widths, got {self.clf_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("lr", "smoothgrad_noise", "aux_coef"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.confidence_threshold < 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1), got {self.confidence_threshold}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.ig_method not in IG_METHODS:
            raise ValueError(f"ig_method must be one of {sorted(IG_METHODS)}, got {self.ig_method!r}")

    def to_dict(self) -> dict:
        """All fields as plain Python values (what a checkpoint stores)."""
        d = asdict(self)
        d["clf_hidden"] = list(self.clf_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def training_key(self) -> dict:
        """The fields that determine the trained weights."""
        d = self.to_dict()
        return {name: d[name] for name in self.TRAINING_FIELDS}

    def checkpoint_name(self) -> str:
        """A file name that says what was trained, plus a short hash of every training field."""
        digest = hashlib.sha256(json.dumps(self.training_key(), sort_keys=True).encode()).hexdigest()[:8]
        subset = f"_n{self.train_subset}" if self.train_subset else ""
        return (f"ksae_k{self.k}_h{self.d_hidden}_clf{'x'.join(map(str, self.clf_hidden))}"
                f"_ae{self.ae_epochs}_clf{self.clf_epochs}{subset}_seed{self.seed}_{digest}.pt")


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
    import matplotlib.pyplot as plt

    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(fig)
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
    if n == 0:
        return data.x_train, data.y_train
    if not 0 < n <= len(data.x_train):
        raise ValueError(f"train_subset must be in [0, {len(data.x_train)}], got {n}")
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
        _check_int("k", k, low=1, high=d_hidden, high_name="d_hidden")
        self.k, self.d_input, self.d_hidden = k, d_input, d_hidden
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
        return F.linear(x, self.W_enc, self.b_enc - self.W_enc @ self.b_pre)

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [B, D]`` -> ``(values: [B, k], indices: [B, k])`` of the top-k ReLU activations."""
        values, indices = torch.topk(self.pre_activations(x), self.k, dim=1, sorted=False)
        return F.relu(values), indices

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
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        first = nn.Linear(d_hidden, hidden[0])  # for PyTorch's default initialisation
        self.W1 = nn.Parameter(first.weight.detach().T.contiguous())  # [H, hidden0], row j = unit j's fan-out
        self.b1 = nn.Parameter(first.bias.detach().clone())  # [hidden0]
        layers: list[nn.Module] = [nn.ReLU(), nn.Dropout(dropout)]
        for w_in, w_out in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden[-1], n_classes))
        self.rest = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: Config) -> "SparseCodeClassifier":
        return cls(cfg.d_hidden, cfg.clf_hidden, cfg.n_classes, cfg.dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z: [B, H]`` -> logits ``[B, C]``."""
        return self.rest(z @ self.W1 + self.b1)

    def forward_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` (the active units) -> logits ``[B, C]``; equals ``forward``."""
        h = F.embedding_bag(indices, self.W1, per_sample_weights=values, mode="sum")
        return self.rest(h + self.b1)


class SparseCodePipeline(nn.Module):
    """The model being explained: pixels -> encoder -> top-k -> classifier -> logits.

    ``forward(x: [B, 784]) -> logits: [B, C]``; ``F(x)`` in the attribution docs is one of these logits.
    """

    def __init__(self, sae: KSparseAutoencoder, clf: SparseCodeClassifier):
        super().__init__()
        self.sae, self.clf = sae, clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf.forward_sparse(*self.sae.encode_sparse(x))


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


LR_SCHEDULES = ("cosine", "constant")


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int):
    """Per-step learning-rate schedule: cosine decay from the optimizer's lr to 0, or constant."""
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror ``x: [N, 784]`` images left-right."""
    return x.reshape(-1, 28, 28).flip(2).reshape(len(x), -1)


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
    sched = make_scheduler(opt, cfg.lr_schedule, cfg.ae_epochs * steps)
    since_fired = torch.zeros(sae.d_hidden, dtype=torch.long, device=device)  # images since last active
    history = {"loss": [], "fvu": [], "aux_loss": [], "dead_fraction": []}
    bar = _progress(cfg.ae_epochs * steps, "autoencoder")
    for epoch in range(cfg.ae_epochs):
        sums = torch.zeros(3, device=device)
        for idx in _batches(len(x), cfg.batch_size, gen, device):
            xb = x[idx]
            pre = sae.pre_activations(xb)
            values, indices = torch.topk(pre, sae.k, dim=1, sorted=False)
            values = F.relu(values)
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

    Codes are computed once and kept sparse (``[V, N, k]`` values and indices for the ``V`` views: the
    images, and their mirror images if ``cfg.clf_hflip``); each step takes a random view per image and
    touches only the k active rows of the first layer. Returns per-epoch loss, train accuracy and (if
    given) accuracy on ``x_val`` (monitoring only: nothing is selected on it).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    views = [x_train, hflip(x_train)] if cfg.clf_hflip else [x_train]
    codes = [encode_dataset(sae, v, device) for v in views]
    values, indices = torch.stack([c[0] for c in codes]), torch.stack([c[1] for c in codes])
    y = y_train.to(device)
    val = None if x_val is None else (*encode_dataset(sae, x_val, device), y_val.to(device))
    clf.to(device)
    opt = make_adam(clf.parameters(), cfg.lr)
    steps = math.ceil(len(y) / cfg.batch_size)
    sched = make_scheduler(opt, cfg.lr_schedule, cfg.clf_epochs * steps)
    history = {"loss": [], "train_acc": [], "val_acc": []}
    bar = _progress(cfg.clf_epochs * steps, "classifier")
    for epoch in range(cfg.clf_epochs):
        clf.train()
        sums = torch.zeros(2, device=device)
        for idx in _batches(len(y), cfg.batch_size, gen, device):
            view = torch.randint(len(views), (len(idx),), generator=gen).to(device)
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


def save_checkpoint(path: str | os.PathLike, cfg: Config, sae: KSparseAutoencoder, clf: SparseCodeClassifier,
                    history: dict | None = None, metrics: dict | None = None) -> Path:
    """Write config, both state dicts, history and metrics atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
        "clf": {k: v.detach().cpu() for k, v in clf.state_dict().items()},
        "history": history or {},
        "metrics": metrics or {},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


CHECKPOINT_FORMAT = "ksae-v1"


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
            print(f"{path} was trained with another configuration; retraining")
        except CheckpointError as exc:
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
    usage = torch.bincount(tr_indices[tr_values > 0], minlength=sae.d_hidden).float() / len(tr_values)
    return {
        "k": sae.k,
        "test_mse_per_pixel": float(sse / x.numel()),
        "fvu": float(sse / (x - x.mean(dim=0)).pow(2).sum()),
        "mean_l0": float((values > 0).sum(dim=1).float().mean()),
        "dead_units": int((~ever_active).sum()),
        "d_hidden": sae.d_hidden,
        "unit_usage_train": usage.cpu().tolist(),  # fraction of train images on which each unit fires
    }


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
        "test_accuracy": float((pred == data.y_test).float().mean()),
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
    if model.training:
        raise ValueError("model is in training mode (dropout active, so attributions would be random); "
                         "call model.eval() first")


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

    def fn(x, target):
        logits = model(x)
        scores = logits.softmax(dim=1) if output == "probability" else logits
        return scores.gather(1, target[:, None])[:, 0]

    return fn


def _prepare(model, inputs, target, output):
    """Shared validation: returns ``(x: [B, D], shape, target: [B], fn)``."""
    _check_model(model)
    x, shape = as_flat_images(inputs)
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


def _path_integral(fn, x, baseline, target, alphas, weights, rows: int) -> torch.Tensor:
    """``sum_s w_s * grad fn(baseline + alpha_s (x - baseline))`` for ``x, baseline: [B, D]``.

    All path points of a chunk of images go through one batched forward/backward.
    """
    alphas, weights = alphas.to(x), weights.to(x)
    total = torch.zeros_like(x)
    imgs_per = max(1, rows // len(alphas))
    steps_per = max(1, rows // min(imgs_per, len(x)))
    for i in range(0, len(x), imgs_per):
        xi, bi, ti = x[i:i + imgs_per], baseline[i:i + imgs_per], target[i:i + imgs_per]
        for s in range(0, len(alphas), steps_per):
            a, w = alphas[s:s + steps_per], weights[s:s + steps_per]
            points = bi + a[:, None, None] * (xi - bi)  # [s, b, D]
            g = _grad(fn, points.reshape(-1, x.shape[1]), ti.repeat(len(a)))
            total[i:i + imgs_per] += torch.einsum("s,sbd->bd", w, g.view(len(a), len(xi), -1))
    return total


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
    grads = _path_integral(fn, x, base, target, alphas, weights, _rows_per_pass(internal_batch_size))
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
    reproducible noise; noise is drawn on the CPU, image-major (``[B, nt_samples, D]``), so it is the
    same on every device. ``abs=True`` averages absolute gradients (Captum's Saliency default).
    """
    x, shape, target, fn = _prepare(model, inputs, target, output)
    _check_int("nt_samples", nt_samples, low=1)
    if not (isinstance(stdevs, (int, float)) and math.isfinite(stdevs) and stdevs >= 0):
        raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**63)
    rows = _rows_per_pass(internal_batch_size)
    imgs_per = max(1, rows // nt_samples)
    out = []
    for i in range(0, len(x), imgs_per):
        xi, ti = x[i:i + imgs_per], target[i:i + imgs_per]
        noise = torch.randn((len(xi), nt_samples, x.shape[1]), generator=generator, dtype=torch.float64)
        noisy = (xi[:, None] + stdevs * noise.to(xi)).reshape(-1, x.shape[1])
        g = _grad(fn, noisy, ti.repeat_interleave(nt_samples)).view(len(xi), nt_samples, -1)
        out.append((g.abs() if abs else g).mean(1))
    return torch.cat(out).reshape(shape)


def decoder_weighted(pipeline: SparseCodePipeline, inputs: torch.Tensor, target, n_steps: int = 50,
                     method: str = "gausslegendre", output: str = "logit",
                     internal_batch_size: int | None = None, return_contributions: bool = False):
    """Decoder-weighted attribution: what each active code unit contributes, drawn with its atom.

    For ``z = encode(x)`` and the classifier head ``G`` (so ``F(x) = G(z)``):

    * unit contributions ``c: [B, H]`` = integrated gradients *in code space* from ``z = 0`` to ``z``:
      ``c_j = z_j * int_0^1 dG(a z)/dz_j da``. Only active units (``z_j > 0``) get non-zero ``c_j``, and
      ``sum_j c_j = G(z) - G(0)`` (completeness; exact up to quadrature, G is a ReLU MLP so smooth
      enough that 50 Gauss-Legendre points suffice);
    * pixel map ``attr = sum_j c_j d_j = W_dec c`` with ``d_j`` unit ``j``'s unit-norm decoder atom.

    Returns ``attr`` shaped like ``inputs`` and, with ``return_contributions``, also ``c: [B, H]``.
    """
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"decoder_weighted needs a SparseCodePipeline (autoencoder + classifier), "
                         f"got {type(pipeline).__name__}")
    x, shape, target, _ = _prepare(pipeline, inputs, target, output)
    head = _output_fn(pipeline.clf, output)
    with torch.no_grad():
        z = pipeline.sae.encode(x)
    alphas, weights = ig_quadrature(n_steps, method)
    contributions = z * _path_integral(head, z, torch.zeros_like(z), target, alphas, weights,
                                       _rows_per_pass(internal_batch_size))
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
        "decoder": lambda: decoder_weighted(pipeline, inputs, target, n_steps=cfg.ig_steps, method=cfg.ig_method),
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


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values: [N]``."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


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


def ig_completeness(model: nn.Module, x: torch.Tensor, target, n_steps_list: Sequence[int] = (16, 32, 50, 100, 200, 500),
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
    return {"tolerance": tolerance, "table": table,
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
    orderings = {**{m: v.reshape(len(x), -1) for m, v in maps.items()}, **control_maps(x, seed)}
    result = {"pixels_per_step": pixels_per_step, "n_images": len(x), "deletion": {}, "insertion": {},
              "curves": {"deletion": {}, "insertion": {}}}
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
    absolute maps with the original ones (mean and CI over images). Reference: the same correlation
    between maps of *different* images under the trained model. A faithful method's similarity should
    fall to about that reference once the model is destroyed.
    """
    import copy

    original = attribute_all(pipeline, x, target, cfg, methods, seed=seed)
    perm = torch.roll(torch.arange(len(x)), 1)
    result = {"stages": randomization_stages(pipeline.clf), "spearman_abs": {m: [] for m in methods},
              "random_pair_reference": {m: summarize(rowwise_spearman(
                  original[m].abs().cpu().numpy(), original[m][perm].abs().cpu().numpy()), seed) for m in methods}}
    model = copy.deepcopy(pipeline).eval()
    gen = torch.Generator().manual_seed(seed + 12345)
    for stage in tqdm(range(len(result["stages"])), desc="randomization", mininterval=2.0):
        _randomize_stage_(model, stage, gen)
        maps = attribute_all(model, x, target, cfg, methods, seed=seed)
        for m in methods:
            r = rowwise_spearman(original[m].abs().cpu().numpy(), maps[m].abs().cpu().numpy())
            result["spearman_abs"][m].append(summarize(r, seed))
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
                   n_steps_list: Sequence[int] = (16, 32, 50, 100, 200, 500), seed: int = 0) -> dict:
    """Every faithfulness check on ``selection`` (maps precomputed by ``attribute_all``).

    Deletion/insertion and object focus use all selected images; the completeness sweep and the
    randomization check (both many attribution passes per image) use evenly spaced subsets of
    ``n_completeness`` and ``n_randomization`` images, balanced over classes since the selection is.
    """
    t0 = time.perf_counter()
    device = next(pipeline.parameters()).device
    x, y = selection.x.to(device), selection.y.to(device)
    out = {"n_images": len(x), "cross_method": cross_method_statistics(maps, seed)}
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
        rows.append({"k": int(k), "fvu": metrics["autoencoder"]["fvu"], "dead_units": metrics["autoencoder"]["dead_units"],
                     "mean_l0": metrics["autoencoder"]["mean_l0"],
                     "test_accuracy": metrics["classifier"]["test_accuracy"],
                     "deletion_auc_integrated": float(curve_auc(perturbation_curves(pipeline, x, y, ig)).mean()),
                     "deletion_auc_random": float(curve_auc(perturbation_curves(pipeline, x, y, random_scores)).mean())})
    return rows

# =====================================================================================================
# 11. Summary: results/summary.json
# =====================================================================================================
# Keys (documented in README.md, "results/summary.json"):
#   schema_version, created, config, device, torch_version, timings_s{phase: seconds},
#   autoencoder{k, test_mse_per_pixel, fvu, mean_l0, dead_units, d_hidden},
#   classifier{test_accuracy, per_class_accuracy{class: acc}, confusion_matrix[[...]]},
#   selection{n_images, n_per_class, threshold, candidates_per_class},
#   validation{n_images, cross_method, deletion_insertion, object_focus, completeness, randomization, seconds}

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, allow_nan=False))
    os.replace(tmp, path)
    return path


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
            if 50 in table or "50" in table:
                entry = table.get(50, table.get("50"))
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
