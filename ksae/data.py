"""Offline Fashion-MNIST with SHA-256 checks, the validation split, image shapes."""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._util import (
    _check_bool,
    _check_classes,
    _check_images,
    _check_instance,
    _check_int,
    _check_labels,
    _check_path,
    _check_text,
)

if TYPE_CHECKING:
    from .config import Config


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

    def __post_init__(self):
        """Images and labels that travel together are checked together: pixel values, one label per image,
        every label naming a class."""
        classes = _check_classes(self.classes)
        for split in ("train", "test"):
            x = _check_images(f"x_{split}", getattr(self, f"x_{split}"), empty=True)
            _check_labels(getattr(self, f"y_{split}"), len(x), len(classes), name=f"y_{split}")
        _check_text("source", self.source, allow_empty=True)


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
    root = _check_path("root", root, "folder", writable=False)
    _check_path("system_dir", system_dir, "folder", writable=False)
    _check_bool("download", download)
    _check_bool("verbose", verbose)
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
    _check_instance("data", data, FashionMNIST)
    _check_int("n (train_subset)", n, low=0, high=len(data.x_train), high_name="the training set size")
    if n == 0:
        return data.x_train, data.y_train
    return data.x_train[:n], data.y_train[:n]


VAL_SPLIT_SEED = 0  # the validation split is the same for every Config.seed (seeds vary training, not the split)


def validation_indices(y_train: torch.Tensor, n_val: int, n_classes: int) -> torch.Tensor:
    """Sorted indices of a class-stratified validation split of ``n_val`` images, fixed by ``VAL_SPLIT_SEED``.

    ``y_train: [N]`` labels. Each class gives ``n_val // n_classes`` images (the remainder goes to the first
    classes), drawn at random without replacement."""
    _check_int("n_classes", n_classes, low=1)
    _check_labels(y_train, n_classes=n_classes, name="y_train")
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
    from .config import Config

    _check_instance("data", data, FashionMNIST)
    _check_instance("cfg", cfg, Config)
    val = validation_indices(data.y_train, cfg.n_val, len(data.classes))
    keep = torch.ones(len(data.y_train), dtype=torch.bool)
    keep[val] = False
    rest = FashionMNIST(data.x_train[keep], data.y_train[keep], data.x_test, data.y_test, data.classes, data.source)
    x_train, y_train = train_subset(rest, cfg.train_subset)
    return x_train, y_train, data.x_train[val], data.y_train[val]


def as_flat_images(x: torch.Tensor, name: str = "inputs") -> tuple[torch.Tensor, tuple[int, ...]]:
    """Validate images and flatten them to ``[B, 784]``; also returns the original shape.

    Accepts ``[B, 784]``, ``[B, 28, 28]`` or ``[B, 1, 28, 28]`` floating tensors of pixel values in [0, 1]
    (``_check_images``; ``name`` is the argument's name in its messages).
    """
    _check_text("name", name)
    x = _check_images(name, x)
    return x.reshape(x.shape[0], 784), tuple(x.shape)
