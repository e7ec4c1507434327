"""Validators shared by every module (one copy each), the image side, atomic writes, JSON-safe values."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


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


IMAGE_SIDE = 28  # images are IMAGE_SIDE x IMAGE_SIDE pixels


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


def _check_classes(classes) -> list[str]:
    """``classes`` as a non-empty list of names (strings)."""
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or len(classes) == 0:
        raise ValueError(f"classes must be a non-empty sequence of class names, got {classes!r}")
    return list(classes)


def _check_labels(labels, n: int, n_classes: int | None = None) -> np.ndarray:
    """``labels: [n]`` integer class ids (tensor or array) as an int64 array; with ``n_classes``, also in
    ``[0, n_classes)`` (one per class name). ``ValueError`` otherwise."""
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        shape = f"shape [{n}]" if n_classes is not None else f"shape [{n}], one per image"
        raise ValueError(f"labels must be {n} integer class ids ({shape}), got {lab.dtype} {list(lab.shape)}")
    if n_classes is not None and n and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes - 1}] (one per class name), got {lab.min()}..{lab.max()}")
    return lab.astype(np.int64)


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
