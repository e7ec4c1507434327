"""Validators shared by every module (one copy each), the image side, atomic writes, JSON-safe values."""

from __future__ import annotations

import functools
import glob
import math
import os
import tempfile
import time
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


def _check_bool(name, value):
    """``ValueError`` unless ``value`` is ``True`` or ``False`` (not a string such as ``"False"``, not 0/1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def _python_number(value):
    """A numpy integer or floating scalar as the Python ``int``/``float`` it holds; anything else unchanged (so a
    value validated by ``_check_int``/``_check_float`` serialises to JSON like a Python number)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


PIXEL_TOLERANCE = 1e-6  # pixel values may stray this far outside [0, 1] (rounding) before images are refused


def _check_pixels(name: str, x) -> None:
    """``ValueError`` unless every value of the images ``x`` (tensor or array) is finite and in [0, 1]:
    images scaled 0..255 (or normalised to mean 0) would be explained and scored without a word."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.numel() == 0:
        return
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -PIXEL_TOLERANCE or hi > 1 + PIXEL_TOLERANCE:
        hint = " (images scaled 0..255? divide by 255)" if hi > 1 + PIXEL_TOLERANCE and hi <= 255 + 1e-3 else ""
        raise ValueError(f"{name} must hold pixel values in [0, 1], got values from {lo:g} to {hi:g}{hint}")


def _check_finite(name: str, values) -> None:
    """``ValueError`` if ``values`` (a tensor, array or number) holds NaN or inf: a statistic computed from it
    would come out as a number that means nothing (a deletion verdict with a p-value, say)."""
    if isinstance(values, torch.Tensor):
        ok = bool(torch.isfinite(values.detach()).all()) if values.is_floating_point() else True
    else:
        arr = np.asarray(values)
        ok = bool(np.isfinite(arr).all()) if np.issubdtype(arr.dtype, np.number) else True
    if not ok:
        raise ValueError(f"{name} contains NaN or inf values; expected finite numbers")


def _check_no_inference_mode(what: str) -> None:
    """``RuntimeError`` under ``torch.inference_mode()``: gradients (and so every gradient method) cannot be
    computed there."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} needs gradients, which torch.inference_mode() disables; call it outside "
                           f"the inference_mode block (torch.no_grad() around it is fine)")


def _keeps_mode(fn):
    """Decorator: every ``torch.nn.Module`` passed to ``fn`` (positionally or by keyword) ends the call in the
    train/eval mode it had before, submodule by submodule, even if ``fn`` switches it to eval mode."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        modules = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.nn.Module)]
        saved = [(m, m.training) for module in modules for m in module.modules()]
        try:
            return fn(*args, **kwargs)
        finally:
            for m, training in saved:
                m.training = training

    return wrapper


def _check_path(name: str, value, kind: str, allow_empty: bool = False) -> Path | None:
    """``value`` (a ``str`` or path) as a ``Path`` of the given ``kind``, ``"folder"`` or ``"file"``, or
    ``None`` when it is empty and ``allow_empty``. ``ValueError`` naming ``name`` for a non-path, an empty
    one, a folder that is an existing file, a file path that is an existing folder or ends in a separator,
    and for a location whose nearest existing folder cannot be written."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path (a string), got {value!r} ({type(value).__name__})")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a path (a string), got {value!r}")
    if not text.strip():
        if allow_empty:
            return None
        raise ValueError(f"{name} must be a non-empty path, got {value!r}")
    path = Path(text)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ValueError(f"{name} must be a folder, got {text!r}, which is an existing file")
    if kind == "file":
        if path.is_dir():
            raise ValueError(f"{name} must be a file path, got {text!r}, which is an existing folder")
        if text.endswith(("/", os.sep)):
            raise ValueError(f"{name} must be a file path, got {text!r}, which names a folder")
    existing = path if kind == "folder" else path.parent
    where = "a writable folder" if kind == "folder" else "a file in a writable folder"
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{name} must be {where}, got {text!r}: {str(existing)!r} is a file, not a folder")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name} must be {where}, got {text!r}: {str(existing)!r} is not writable")
    return path


def _check_writable_folder(name: str, folder) -> Path:
    """Create ``folder`` (and parents) and prove a file can be written there (a temporary file, removed);
    ``ValueError`` naming ``name`` if not."""
    path = _check_path(name, folder, "folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"{name} must be a writable folder, got {str(folder)!r}: {exc}") from exc
    return path


IMAGE_SIDE = 28  # images are IMAGE_SIDE x IMAGE_SIDE pixels


STALE_TMP_SECONDS = 60  # a temporary file of atomic_write_bytes older than this is a killed run's leftover


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str = "*.tmp",
                             older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete the temporary files ``atomic_write_bytes`` leaves when a run is killed mid-write: files in
    ``folder`` matching ``pattern`` (``<name>*.tmp`` for one target) older than ``older_than`` seconds (younger
    ones may belong to a write in progress). Returns the deleted paths; a missing folder deletes nothing."""
    removed = []
    for tmp in map(Path, glob.glob(str(Path(glob.escape(str(folder))) / pattern))):
        try:
            if tmp.is_file() and time.time() - tmp.stat().st_mtime > older_than:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to delete: leave it
            continue
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename: readers see the old
    file or the new one, never half of one. Parent folders are created. The file gets the permissions a
    plain ``open(path, "w")`` would give (``mkstemp``'s own are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, f"{glob.escape(path.name)}*.tmp")
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
    _check_finite(name, arr)
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
    """Tensors and numpy values -> plain Python, recursively; NaN and inf (anywhere, numpy's included) -> None
    (JSON's null: an undefined statistic)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _plain(value):
    """A parameter value comparable across list/tuple spellings: sequences become lists."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines of the studies' reports; a literal | in a cell is escaped so that it does not split it."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c).replace("|", "&#124;") for c in row) + " |" for row in rows]]
