"""Validators shared by every module (one copy each), the image side, atomic writes, JSON-safe values."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _describe(value) -> str:
    """What came, for an error message: ``None``, ``'integrted' (str)``, ``a dict with keys [...]``, ``a float64
    tensor of shape [6, 784]``, ``a KSparseAutoencoder``."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {list(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {list(value.shape)}"
    if isinstance(value, dict):
        keys = list(value)
        return f"a dict with keys {keys[:8]}" + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, (str, bytes, int, float, bool, np.generic, Path)):
        return f"{value!r} ({type(value).__name__})"
    return f"a {type(value).__name__}"


def _closest_option(value, options) -> str | None:
    """The option closest to a misspelt ``value`` (``difflib``'s ratio >= 0.6), or None."""
    if not isinstance(value, str):
        return None
    close = difflib.get_close_matches(value, [str(o) for o in options], n=1, cutoff=0.6)
    return close[0] if close else None


def _closest(value, options) -> str:
    """`` (did you mean 'x'?)`` naming the option closest to a misspelt ``value``, or ``""``."""
    close = _closest_option(value, options)
    return f" (did you mean {close!r}?)" if close else ""


def _check_choice(name: str, value, options) -> None:
    """``ValueError`` unless ``value`` is one of ``options`` (a closed set of names); a misspelt name is told
    the closest valid one."""
    try:
        ok = value in options and (value is None or isinstance(value, str))
    except TypeError:  # unhashable
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}{_closest(value, options)}")


def _check_choices(name: str, values, options, what: str = "a subset of", empty: bool = True) -> list:
    """``values`` (a list or tuple of names, not one name; not empty unless ``empty``) as a list, each one of
    ``options``; ``ValueError`` naming the unknown ones and the closest valid name of each."""
    if (isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, dict, type({}.keys())))
            or not (values or empty)):
        single = f" (one name: write [{values!r}])" if isinstance(values, str) and values in options else ""
        raise ValueError(f"{name} must be {what} {list(options)} given as a list, got {_describe(values)}{single}")
    values = list(values)
    unknown = [v for v in values if not isinstance(v, str) or v not in options]
    if unknown:
        hints = "".join(_closest(v, options) for v in unknown)
        raise ValueError(f"{name} must be {what} {list(options)}, got unknown {unknown}{hints}")
    return values


def _parts(value) -> list[tuple[str, object]]:
    """The named parts of a container: a dict's items, a module's children, a dataclass's fields."""
    if isinstance(value, dict):
        return [(f"[{k!r}]", v) for k, v in value.items()]
    if isinstance(value, torch.nn.Module):
        return [(f".{k}", v) for k, v in value.named_children()]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f".{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
    return []


def _part_hint(value, accepts, depth: int = 2) -> str:
    """``; pass its ['validation']['completeness']`` when ``value`` holds (up to ``depth`` levels down) a part
    that ``accepts(part)``: a whole result given where one of its parts is meant."""
    level = [("", value)]
    for _ in range(depth):
        level = [(path + p, v) for path, whole in level for p, v in _parts(whole)]
        found = next((path for path, v in level if accepts(v)), None)
        if found:
            return f"; pass its {found}"
    return ""


def _check_instance(name: str, value, cls, what: str | None = None) -> None:
    """``ValueError`` unless ``value`` is an instance of ``cls`` (a class or tuple); says what came and, when
    ``value`` holds one (``pipeline.sae``, ``summary['config']``...), which part to pass."""
    if not isinstance(value, cls):
        classes = cls if isinstance(cls, tuple) else (cls,)
        what = what or " or ".join(f"a {c.__name__}" for c in classes)
        hint = _part_hint(value, lambda v: isinstance(v, cls))
        if not hint and isinstance(value, dict) and "Config" in [c.__name__ for c in classes]:
            hint = "; build one with Config(**d) or Config.from_dict(d)"
        raise ValueError(f"{name} must be {what}, got {_describe(value)}{hint}")


def _check_result(name: str, value, keys, what: str) -> dict:
    """``value`` as the dict ``what`` names (a function's result, in memory or read back from JSON), holding
    every key of ``keys``; ``ValueError`` saying which keys it lacks and, for a whole result where one of its
    parts is meant (the summary for its ``validation``), which part to pass."""
    if not isinstance(value, dict) or any(k not in value for k in keys):
        holds = lambda v: isinstance(v, dict) and all(k in v for k in keys)  # noqa: E731
        lacks = [k for k in keys if k not in value] if isinstance(value, dict) else None
        raise ValueError(f"{name} must be {what} (a dict with keys {list(keys)}), got {_describe(value)}"
                         + (f", which lacks {lacks}" if lacks else "") + _part_hint(value, holds))
    return value


def _check_callable(name: str, value) -> None:
    if not callable(value):
        raise ValueError(f"{name} must be a function (callable), got {_describe(value)}")


def _check_text(name: str, value, allow_empty: bool = False) -> None:
    """``ValueError`` unless ``value`` is a string (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str) or not (value or allow_empty):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}string, got {_describe(value)}")


def _check_device(name: str, device) -> torch.device:
    """``device`` (a ``torch.device`` or a name such as ``"cpu"``, ``"cuda:0"``) as a ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        try:
            return torch.device(device)
        except (RuntimeError, ValueError):
            pass
    raise ValueError(f"{name} must be a torch.device or a device name such as 'cpu' or 'cuda', got "
                     f"{_describe(device)}")


def _check_tensor(name: str, value, shape=None, dtype: str | None = None) -> torch.Tensor:
    """``ValueError`` unless ``value`` is a tensor of ``shape`` (``None`` entries match any size; names in the
    message come from ``shape`` items given as ``(size, "label")``) and of ``dtype`` kind: ``"float"``,
    ``"int"`` (integer, not bool) or ``"bool"``. Shapes and dtypes only: no value is read (no host sync)."""
    sizes = None if shape is None else [s[0] if isinstance(s, tuple) else s for s in shape]
    labels = None if shape is None else [s[1] if isinstance(s, tuple) else ("any" if s is None else str(s))
                                         for s in shape]
    ok = isinstance(value, torch.Tensor)
    if ok and sizes is not None:
        ok = value.ndim == len(sizes) and all(s is None or s == v for s, v in zip(sizes, value.shape))
    kinds = {"float": lambda t: t.is_floating_point(), "bool": lambda t: t.dtype == torch.bool,
             "int": lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool}
    if ok and dtype is not None:
        ok = kinds[dtype](value)
    if not ok:
        kind = (f"{dtype} " if dtype else "") + "tensor"
        expected = ("an " if kind[0] in "aeiou" else "a ") + kind + (
            f" of shape [{', '.join(labels)}]" if labels is not None else "")
        raise ValueError(f"{name} must be {expected}, got {_describe(value)}")
    return value


def _check_same_shape(names: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """``ValueError`` naming both (``names``: "values and indices") unless ``a`` and ``b`` have one shape."""
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {list(a.shape)} and {list(b.shape)}")


def _as_numbers(name: str, values, ndim: int | None = None, nan: bool = False, empty: bool = False) -> np.ndarray:
    """``values`` (tensor, array or list of numbers) as a float64 array of ``ndim`` dimensions (any if None), not
    empty (unless ``empty``), finite (NaN allowed where ``nan``: an undefined statistic). ``ValueError`` naming
    ``name`` otherwise."""
    arr = None
    if values is not None and not isinstance(values, (str, bytes, dict)):
        try:
            arr = _numpy(values)
        except (TypeError, ValueError):
            arr = None
    if arr is None or (ndim is not None and arr.ndim != ndim) or (arr.size == 0 and not empty):
        dims = f"a {ndim}-D " if ndim else "a non-empty "
        raise ValueError(f"{name} must be {dims}array of numbers, got {_describe(values)}")
    bad = np.isinf(arr) if nan else ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} contains {'inf' if nan else 'NaN or inf'} values; expected finite numbers"
                         + (" (NaN marks an undefined statistic)" if nan else ""))
    return arr


def _check_page_address(name: str, value) -> None:
    """A page's relative address (``"explorer.html"``): a non-empty string without quotes, ``<``, ``>`` or ``#``
    (it goes into the other page's links)."""
    if not isinstance(value, str) or not value or any(c in value for c in "\"'<>#"):
        raise ValueError(f"{name} must be the page's relative address (e.g. 'unit_browser.html'), got {value!r}")


def _check_top_contributions(name: str, value, n_units: int, n_images: int) -> None:
    """``unit_top_contributions``' ``(ids, values)``, both ``[H, n]``, ids of the ``n_images`` test images (-1 pads)."""
    pair = isinstance(value, (tuple, list)) and len(value) == 2
    ids = np.asarray(value[0]) if pair else None
    if not pair or ids.shape[:1] != (n_units,) or np.shape(value[1]) != ids.shape:
        shapes = [list(np.shape(v)) for v in value] if isinstance(value, (tuple, list)) else _describe(value)
        raise ValueError(f"{name} must be unit_top_contributions's (ids, values), both [H = {n_units}, n], got "
                         f"shapes {shapes}")
    if ids.size and ids.max() >= n_images:
        raise ValueError(f"{name} must name test images of this dataset ({n_images}), got image ids up to "
                         f"{ids.max()} (computed on another image set?)")


def _check_fractions(name: str, values, n: int | None = None) -> np.ndarray:
    """``values: [n]`` (tensor, array or list) as a float64 array of finite fractions in [0, 1]; counts (values
    above 1) are refused with a hint."""
    arr = _numpy(values) if isinstance(values, (torch.Tensor, np.ndarray, list, tuple)) else None
    if arr is None or arr.ndim != 1 or (n is not None and len(arr) != n):
        raise ValueError(f"{name} must hold one value per unit{f' ({n})' if n is not None else ''}, a fraction in "
                         f"[0, 1], got {_describe(values)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values; expected fractions in [0, 1]")
    if len(arr) and (arr.min() < 0 or arr.max() > 1):
        hint = " (counts? divide by the number of images)" if arr.max() > 1 else ""
        raise ValueError(f"{name} must hold fractions in [0, 1], got values from {arr.min():g} to {arr.max():g}"
                         f"{hint}")
    return arr


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


def _check_ints(name: str, values, low: int, empty: bool = False) -> list[int]:
    """``values`` (a list or tuple of integers, each >= ``low``; non-empty unless ``empty``) as a list of ints."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not (values or empty):
        raise ValueError(f"{name} must be a {'' if empty else 'non-empty '}list of integers >= {low}, got "
                         f"{_describe(values)}")
    for value in values:
        _check_int(f"{name} entry", value, low=low)
    return [int(v) for v in values]


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
        raise ValueError(f"{name} contains NaN or inf values; expected finite pixel values in [0, 1]")
    lo, hi = float(t.min()), float(t.max())
    if lo < -PIXEL_TOLERANCE or hi > 1 + PIXEL_TOLERANCE:
        hint = " (images scaled 0..255? divide by 255)" if hi > 1 + PIXEL_TOLERANCE and hi <= 255 + 1e-3 else ""
        raise ValueError(f"{name} must hold pixel values in [0, 1], got values from {lo:g} to {hi:g}{hint}")


_IMAGE_SHAPES = ((784,), (28, 28), (1, 28, 28))  # one image: flat, square, or with a channel


def _check_images(name: str, x, dtype: torch.dtype | None = None, pixels: bool = True,
                  empty: bool = False, flat: bool = False) -> torch.Tensor:
    """Images at the door: a floating tensor ``[B, 784]`` (or ``[B, 28, 28]``, ``[B, 1, 28, 28]``), B >= 1, finite,
    and (``pixels``) every value in [0, 1] (``_check_pixels``). Returns ``x``, cast to ``dtype`` when that is
    given and differs (a model's dtype, ``_model_dtype``: float64 images into a float32 model are used, not
    refused; integer images are refused, 0..255 being ambiguous). ``empty``: B = 0 is allowed (a dataset's
    split); ``flat``: returned as ``[B, 784]``."""
    if not isinstance(x, torch.Tensor):
        hint = "; torch.from_numpy(...) converts an array" if isinstance(x, np.ndarray) else ""
        raise ValueError(f"{name} must be a torch.Tensor of images [B, 784], got {_describe(x)}{hint}")
    if not x.is_floating_point():
        hint = " (8-bit images 0..255? use x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(f"{name} must be a floating-point tensor (float32/float64), got dtype {x.dtype}{hint}")
    shape = tuple(x.shape)
    if not (shape[1:] in _IMAGE_SHAPES and len(shape) >= 2 and shape[0] >= (0 if empty else 1)):
        raise ValueError(f"{name} must have shape [B, 784], [B, 28, 28] or [B, 1, 28, 28] with B >= "
                         f"{0 if empty else 1}, got {list(shape)}")
    if pixels:
        _check_pixels(name, x)
    elif not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values; expected finite numbers")
    x = x.reshape(len(x), IMAGE_SIDE**2) if flat else x
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def _model_dtype(model) -> torch.dtype | None:
    """The dtype of ``model``'s first floating-point parameter (what its inputs are cast to), or None."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return None if param is None else param.dtype


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


def _check_path(name: str, value, kind: str, allow_empty: bool = False, writable: bool = True) -> Path | None:
    """``value`` (a ``str`` or path) as a ``Path`` of the given ``kind``, ``"folder"`` or ``"file"``, or
    ``None`` when it is empty and ``allow_empty``. ``ValueError`` naming ``name`` for a non-path, an empty
    one, a folder that is an existing file, a file path that is an existing folder or ends in a separator,
    and (``writable``) for a location whose nearest existing folder cannot be written."""
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
    if not writable:
        return path
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
    _check_path("folder", folder, "folder")
    _check_text("pattern", pattern)
    _check_float("older_than", older_than, low=0.0)
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
    path = _check_path("path", path, "file")
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"data must be bytes, got {_describe(data)}")
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


def _unit_norm_atoms(name: str, atoms) -> np.ndarray:
    """``atoms: [n, D]`` (a tensor or array of numbers, or an autoencoder: its decoder atoms ``W_dec``) as float64
    unit-norm rows, for cosines between dictionaries; ``ValueError`` naming ``name`` otherwise."""
    if hasattr(atoms, "W_dec"):
        atoms = atoms.W_dec
    if not isinstance(atoms, (torch.Tensor, np.ndarray)) or (isinstance(atoms, np.ndarray)
                                                              and not np.issubdtype(atoms.dtype, np.number)):
        raise ValueError(f"{name} must be a [units, pixels] tensor or array of atoms (or an autoencoder), got "
                         f"{_describe(atoms)}")
    a = _numpy(atoms)
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"{name} must have shape [units, pixels], got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values; expected finite atoms")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has {int((norms == 0).sum())} all-zero atoms: their cosine is undefined")
    return a / norms


def _as_image(values, name: str = "image") -> np.ndarray:
    """``values: [784]`` (any shape holding 784 numbers) -> ``[28, 28]`` float64 array."""
    if not isinstance(values, (torch.Tensor, np.ndarray, list, tuple)):
        raise ValueError(f"{name} must hold {IMAGE_SIDE**2} pixels (a tensor or array), got {_describe(values)}")
    arr = _numpy(values)
    if arr.size != IMAGE_SIDE**2:
        raise ValueError(f"{name} must hold {IMAGE_SIDE**2} pixels, got shape {list(arr.shape)}")
    _check_finite(name, arr)
    return arr.reshape(IMAGE_SIDE, IMAGE_SIDE)


def _as_maps(values, name: str, n: int | None = None) -> np.ndarray:
    """``values: [N, 784]`` (or ``[N, 28, 28]``...) -> ``[N, 784]`` float64 array; checks ``N == n``."""
    if not isinstance(values, (torch.Tensor, np.ndarray, list, tuple)):
        raise ValueError(f"{name} must be an array of maps [N, {IMAGE_SIDE**2}], got {_describe(values)}")
    arr = _numpy(values)
    if arr.ndim < 2 or arr[0].size != IMAGE_SIDE**2:
        raise ValueError(f"{name} must have shape [N, {IMAGE_SIDE**2}], got {list(arr.shape)}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} holds {len(arr)} maps but there are {n} images")
    _check_finite(name, arr)
    return arr.reshape(len(arr), -1)


def _check_classes(classes, name: str = "classes", n: int | None = None) -> list[str]:
    """``classes`` as a non-empty list of names (strings); with ``n``, exactly ``n`` of them."""
    if (isinstance(classes, str) or not isinstance(classes, (list, tuple)) or not classes
            or not all(isinstance(c, str) for c in classes)):
        raise ValueError(f"{name} must be a non-empty sequence of class names, got {classes!r}")
    if n is not None and len(classes) != n:
        raise ValueError(f"{name} must name the {n} classes, got {len(classes)} names {list(classes)}")
    return list(classes)


def _check_labels(labels, n: int | None = None, n_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """``labels: [n]`` integer class ids (tensor or array; any length when ``n`` is None) as an int64 array; with
    ``n_classes``, also in ``[0, n_classes)`` (one per class name). ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(labels, (torch.Tensor, np.ndarray, list, tuple)):
        raise ValueError(f"{name} must be a 1-D tensor of integer class ids, got {_describe(labels)}")
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    n = len(lab) if n is None and lab.ndim == 1 else n
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        shape = f"shape [{n}]" if n_classes is not None else f"shape [{n}], one per image"
        raise ValueError(f"{name} must be {n} integer class ids ({shape}), got {lab.dtype} {list(lab.shape)}")
    if n_classes is not None and n and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(f"{name} must be in [0, {n_classes - 1}] (one per class name), got {lab.min()}..{lab.max()}")
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
