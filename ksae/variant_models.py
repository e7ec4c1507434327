"""The variants study's models: an autoencoder of any kind trained (or loaded from its checkpoint) at a sparsity
whose knob is chosen on the validation split (``_calibrate``), with or without its classifier head, and measured
the same way for every kind (``_measure``: test FVU, L0, dead and dense units, accuracies).

Caching: a model pair (autoencoder and head) is the file ``load_or_train`` would write, under the same name (the
default configuration's pair *is* the default checkpoint), and is written by the same code path (``train_models``'
initialisation, ``train_classifier``); an autoencoder without a head is ``ae_<name>`` in the same folder, trained
exactly as ``train_models`` trains the autoencoder. Models trained on other data than Fashion-MNIST (the planted
dictionaries) carry a tag before the name. Every model is saved as soon as it is trained: a stopped run resumes."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._util import atomic_write_bytes
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .config import SAE_KINDS, SAE_KNOBS, Config
from .data import train_val_split
from .metrics import evaluate_models, fvu
from .models import SparseCodeClassifier
from .sae import SparseAutoencoder, autoencoder_from_config
from .stats import bootstrap_estimates, percentile_interval
from .training import train_autoencoder, train_classifier

if TYPE_CHECKING:
    from .data import FashionMNIST


_KINDS = SAE_KINDS  # the autoencoder kinds the study trains
_KNOBS = {"topk": ("k", "count"), "batchtopk": ("k", "count"), "matryoshka": ("k", "count"),
          "jumprelu": ("target_l0", "target"), "relu_l1": ("l1_coef", "penalty")}  # kind -> (its sparsity knob in
# Config, how it moves L0): "count" sets how many units a row keeps in training (L0 rises with it, about one for one;
# BatchTopK's and Matryoshka's thresholded inference L0 differs), "target" is a target L0 the loss pulls toward
# (the same), "penalty" a sparsity penalty (L0 falls as it rises, by a law found by pilot runs)


_KIND_LABELS = {"topk": "top-k", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU", "relu_l1": "ReLU + L1",
                "matryoshka": "Matryoshka"}  # the autoencoder kinds' names in text and figures


_L0_TOLERANCE = 0.07  # a knob is accepted when the validation L0 is within this relative distance of the target:
# the bar is 10 % on the test set, and validation and test L0 differ by well under 1 % (same distribution)


_MAX_TRIES = 3  # full-length models trained per (kind, target) at most while searching its knob


_PILOT_EPOCHS = 5  # a penalty knob's pilot runs: this many autoencoder epochs (the schedule compressed)


_MAX_PILOTS = 7  # pilot runs at most per kind while bracketing the targets


_PILOT_FACTOR = 4.0  # a pilot's penalty is the previous one's times or divided by this until the targets are bracketed


_MAX_STEP = {"count": 2.0, "target": 2.0, "penalty": 8.0}  # a knob moves by at most this factor per try (a kind
# whose L0 hardly follows its knob would otherwise send the search far off)


_PILOT_START = Config.l1_coef  # the first pilot's penalty: the kind's default


_DENSE_SHARE = 0.1  # a unit is dense when it fires on more than this share of the test images


_MEASURE_BATCH = 2048  # images per forward pass in the measurements


_AE_FORMAT = "ksae-ae-v1"  # what an autoencoder-only checkpoint says it is


_MEASURE_BOOT = 2000  # bootstrap resamples of the measurements' CIs


def _new_autoencoder(cfg: Config) -> SparseAutoencoder:
    """The untrained autoencoder of ``cfg`` (its kind's class), drawn from the current random state."""
    return autoencoder_from_config(cfg)


_DEFAULTS = Config()  # the knobs a kind does not read go back to these


def _kind_config(base: Config, kind: str, value, **over) -> Config:
    """``base``'s recipe with the autoencoder ``kind`` at sparsity knob ``value`` (and ``over``'s fields): the
    knobs ``kind`` does not read at their defaults (``Config`` refuses them otherwise); Matryoshka's prefixes, when
    the default sizes do not fit a smaller dictionary, scaled to it."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    knob, how = _KNOBS[kind]
    fields = {**base.to_dict(), "sae_kind": kind}
    for name, readers in SAE_KNOBS.items():
        if kind not in readers:
            fields[name] = getattr(_DEFAULTS, name)
    if kind == "matryoshka" and max(_DEFAULTS.matryoshka_prefixes) >= base.d_hidden:
        scaled = sorted({max(1, p * base.d_hidden // _DEFAULTS.d_hidden) for p in _DEFAULTS.matryoshka_prefixes})
        fields["matryoshka_prefixes"] = [p for p in scaled if p < base.d_hidden] or [1]
    fields[knob] = int(round(value)) if how == "count" else float(value)
    return Config(**{**fields, **over})


def _knob_value(cfg: Config):
    """The value of ``cfg``'s own sparsity knob."""
    return getattr(cfg, _KNOBS[_kind(cfg)][0])


def _kind(cfg: Config) -> str:
    return cfg.sae_kind


# --- checkpoints ----------------------------------------------------------------------------------------------
def _pair_path(ckpt_dir, cfg: Config, tag: str = "") -> Path:
    return Path(ckpt_dir) / f"{tag}{cfg.checkpoint_name()}"


def _ae_path(ckpt_dir, cfg: Config, tag: str = "") -> Path:
    return Path(ckpt_dir) / f"ae_{tag}{cfg.checkpoint_name()}"


def _same_training(stored: Config, cfg: Config, path: Path) -> None:
    if stored.training_key() != cfg.training_key():
        diff = {k: (v, stored.training_key().get(k)) for k, v in cfg.training_key().items()
                if stored.training_key().get(k) != v}
        raise ValueError(f"{path} was trained with another configuration than asked (field: (expected, got)): {diff}")


def _train_autoencoder_alone(cfg: Config, data: FashionMNIST, device: torch.device):
    """The autoencoder ``train_models(cfg, data, device)`` trains, bit for bit, without its classifier:
    ``(sae, {"ae": history, "seconds": {"ae": s}})``."""
    x_train, _, x_val, _ = train_val_split(data, cfg)
    torch.manual_seed(cfg.seed)
    sae = _new_autoencoder(cfg)
    t0 = time.perf_counter()
    history = train_autoencoder(sae, x_train, cfg, device, x_val if len(x_val) else None)
    return sae.eval(), {"ae": history, "seconds": {"ae": time.perf_counter() - t0}}


def _load_autoencoder(path: Path, cfg: Config, device: torch.device):
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _AE_FORMAT:
        raise CheckpointError(f"{path} is not a {_AE_FORMAT} checkpoint")
    stored = Config.from_dict(payload["config"])
    _same_training(stored, cfg, path)
    sae = _new_autoencoder(stored)
    sae.load_state_dict(payload["sae"])
    return sae.to(device).eval(), payload["history"]


def _note(ledger: list | None, path: Path, history: dict, trained_now: bool) -> None:
    """Record a model the study used in ``ledger`` (a caller's list): its file, training seconds, whether trained
    by this call."""
    if ledger is not None:
        ledger.append({"file": path.name, "seconds": _training_seconds(history), "trained_now": trained_now})


def _autoencoder(cfg: Config, data: FashionMNIST, device: torch.device, ckpt_dir, tag: str = "",
                 verbose: bool = True, ledger: list | None = None):
    """``(sae, history, trained_now)``: from the model pair's checkpoint when there is one, else from the
    autoencoder-only checkpoint, else trained (``_train_autoencoder_alone``) and saved as ``ae_<name>``."""
    pair = _pair_path(ckpt_dir, cfg, tag)
    if pair.exists():
        stored, sae, _, history, _ = load_checkpoint(pair, device)
        _same_training(stored, cfg, pair)
        history = {"ae": history.get("ae", {}), "seconds": {"ae": history.get("seconds", {}).get("ae", 0.0)}}
        _note(ledger, pair, history, False)  # the autoencoder's part of the pair: as if read from its own file
        return sae, history, False
    path = _ae_path(ckpt_dir, cfg, tag)
    if path.exists():
        sae, history = _load_autoencoder(path, cfg, device)
        _note(ledger, path, history, False)
        return sae, history, False
    sae, history = _train_autoencoder_alone(cfg, data, device)
    _note(ledger, path, history, True)
    payload = {"format": _AE_FORMAT, "config": cfg.to_dict(), "history": history,
               "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    if verbose:
        print(f"Saved {path} ({history['seconds']['ae']:.0f} s)")
    return sae, history, True


def _model_pair(cfg: Config, data: FashionMNIST, device: torch.device, ckpt_dir, tag: str = "",
                verbose: bool = True, ledger: list | None = None):
    """``(sae, clf, history, trained_now)``: the pair ``train_models`` would train, from its checkpoint, or its
    autoencoder (``_autoencoder``) and a classifier trained on it as ``train_models`` trains it (same initial
    weights, same call), saved under the pair's name with ``evaluate_models``' metrics, as ``load_or_train`` does."""
    pair = _pair_path(ckpt_dir, cfg, tag)
    if pair.exists():
        stored, sae, clf, history, _ = load_checkpoint(pair, device)
        _same_training(stored, cfg, pair)
        _note(ledger, pair, history, False)
        return sae, clf, history, False
    sae, ae_history, _ = _autoencoder(cfg, data, device, ckpt_dir, tag, verbose, ledger)
    x_train, y_train, x_val, y_val = train_val_split(data, cfg)
    torch.manual_seed(cfg.seed)  # train_models draws the autoencoder, then the classifier
    _new_autoencoder(cfg)
    clf = SparseCodeClassifier.from_config(cfg)
    t0 = time.perf_counter()
    clf_history = train_classifier(clf, sae, x_train, y_train, cfg, device, *((x_val, y_val) if len(x_val) else ()))
    history = {"ae": ae_history["ae"], "clf": clf_history,
               "seconds": {"ae": ae_history["seconds"]["ae"], "clf": time.perf_counter() - t0}}
    save_checkpoint(pair, cfg, sae, clf.eval(), history, evaluate_models(sae, clf, data, cfg, device))
    _ae_path(ckpt_dir, cfg, tag).unlink(missing_ok=True)  # the pair holds the autoencoder now
    _note(ledger, pair, {"seconds": {"clf": history["seconds"]["clf"]}}, True)
    if verbose:
        print(f"Saved {pair} (classifier {history['seconds']['clf']:.0f} s)")
    return sae, clf.eval(), history, True


# --- measurements ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _codes_l0(sae, x: torch.Tensor, device: torch.device) -> float:
    """Mean number of active units per image of ``x: [N, D]`` (``sae.encode`` > 0)."""
    sae.eval()
    counts = [(sae.encode(x[i:i + _MEASURE_BATCH].to(device)) > 0).sum(1).cpu()
              for i in range(0, len(x), _MEASURE_BATCH)]
    return float(torch.cat(counts).double().mean())


def _ratio_ci(num: np.ndarray, den: np.ndarray, seed: int) -> list[float]:
    """Bootstrap 95 % CI of ``sum(num) / sum(den)`` with the images resampled (the same draws for both: the
    same ``N`` and seed)."""
    est = bootstrap_estimates(num, None, _MEASURE_BOOT, seed) / bootstrap_estimates(den, None, _MEASURE_BOOT, seed)
    return list(percentile_interval(est))


def _share_ci(flags: np.ndarray, seed: int) -> list[float]:
    return list(percentile_interval(bootstrap_estimates(flags.astype(np.float64), None, _MEASURE_BOOT, seed)))


@torch.no_grad()
def _predict_correct(model, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> np.ndarray:
    """``[N]`` bool: ``model``'s argmax on ``x: [N, 784]`` equals ``y``."""
    pred = torch.cat([model(x[i:i + _MEASURE_BATCH].to(device)).argmax(1).cpu()
                      for i in range(0, len(x), _MEASURE_BATCH)])
    return (pred == y).numpy()


@torch.no_grad()
def _measure(code, data: FashionMNIST, cfg: Config, device: torch.device, model=None, pixel_model=None,
             seed: int = 0) -> tuple[dict, dict]:
    """The frontier's quantities for one code (an autoencoder of any kind, or a ``LinearCode``): on the test set
    (scored once) the FVU with a bootstrap 95 % CI over images, mean L0, dead units (firing on no test image),
    dense units (firing on more than ``_DENSE_SHARE`` of them); on the validation split the L0 and FVU. With
    ``model`` (pixels -> logits: the code's classifier head on it) the test accuracy (CI over images) and the
    validation accuracy; with ``pixel_model`` (the pixel classifier) its accuracy on the test reconstructions and
    ``accuracy_recovered`` (that over its accuracy on the originals). ``(row, raw)``: ``raw`` holds the per-image
    values the study compares models with (``sse``, ``ss``, ``correct``, ``recovered_correct``)."""
    code.eval()
    x, y = data.x_test, data.y_test
    mean = x.double().mean(0)
    sse, l0, fires = [], [], torch.zeros(code.d_hidden, dtype=torch.float64)
    correct_rec = []
    for i in range(0, len(x), _MEASURE_BATCH):
        xb = x[i:i + _MEASURE_BATCH].to(device)
        z = code.encode(xb)
        hat = code.decode(z)
        sse.append((hat - xb).double().pow(2).sum(1).cpu())
        active = (z != 0).cpu()
        l0.append(active.sum(1))
        fires += active.double().sum(0)
        if pixel_model is not None:
            correct_rec.append(pixel_model(hat).argmax(1).cpu() == y[i:i + _MEASURE_BATCH])
    sse = torch.cat(sse).numpy()
    ss = (x.double() - mean).pow(2).sum(1).numpy()
    share = (fires / len(x)).numpy()
    _, _, x_val, y_val = train_val_split(data, cfg)
    row = {"fvu": float(sse.sum() / ss.sum()), "fvu_ci95": _ratio_ci(sse, ss, seed),
           "test_l0": float(torch.cat(l0).double().mean()), "dead_units": int((share == 0).sum()),
           "dense_units": int((share > _DENSE_SHARE).sum()), "d_code": int(code.d_hidden)}
    if len(x_val):
        hats = torch.cat([code.decode(code.encode(x_val[i:i + _MEASURE_BATCH].to(device))).cpu()
                          for i in range(0, len(x_val), _MEASURE_BATCH)])
        row["val_fvu"] = float(fvu(hats, x_val))
        row["val_l0"] = _codes_l0(code, x_val, device)
    raw = {"sse": sse, "ss": ss}
    if model is not None:
        raw["correct"] = _predict_correct(model.eval(), x, y, device)
        row["accuracy"] = float(raw["correct"].mean())
        row["accuracy_ci95"] = _share_ci(raw["correct"], seed)
        if len(x_val):
            row["val_accuracy"] = float(_predict_correct(model, x_val, y_val, device).mean())
    if pixel_model is not None:
        raw["recovered_correct"] = torch.cat(correct_rec).numpy()
        original = _predict_correct(pixel_model, x, y, device).mean()
        row["pixel_accuracy"] = float(raw["recovered_correct"].mean())
        row["accuracy_recovered"] = float(raw["recovered_correct"].mean() / original) if original else None
    return row, raw


# --- the knob ------------------------------------------------------------------------------------------------
def _next_value(kind: str, tries: list[dict], target: float, slope: float, d_hidden: int):
    """The next knob value after ``tries`` (``{"value", "val_l0"}``): a secant step in log L0 against log knob
    through the last two tries, or from the last try with ``slope`` (d log L0 / d log knob), by at most
    ``_MAX_STEP``; None when it would repeat a tried value."""
    how = _KNOBS[kind][1]
    last = tries[-1]
    if len(tries) >= 2 and tries[-2]["val_l0"] > 0 and last["val_l0"] > 0 and tries[-2]["value"] != last["value"]:
        s = (math.log(last["val_l0"]) - math.log(tries[-2]["val_l0"])) / (
            math.log(last["value"]) - math.log(tries[-2]["value"]))
        slope = s if s * slope > 0 else slope  # a secant of the wrong sign is noise: keep the prior law
    step = (math.log(target) - math.log(max(last["val_l0"], 1e-3))) / slope
    limit = math.log(_MAX_STEP[how])
    value = math.exp(math.log(last["value"]) + min(max(step, -limit), limit))
    if how == "count":
        value = min(max(int(round(value)), 1), d_hidden)
        if value == last["value"]:
            value = last["value"] + (1 if last["val_l0"] < target else -1)
        value = min(max(value, 1), d_hidden)
    if any(abs(t["value"] - value) <= 1e-12 * abs(value) for t in tries):
        return None
    return value


def _pilot_points(pilots: list[dict]) -> list[tuple[float, float]]:
    """The pilots as ``(log penalty, log val L0)`` points, by increasing penalty."""
    return sorted((math.log(p["value"]), math.log(max(p["val_l0"], 1e-3))) for p in pilots)


def _segment(points: list[tuple[float, float]], coord: int, at: float) -> tuple[tuple, tuple]:
    """The two neighbouring points whose ``coord`` brackets ``at`` (else the two nearest to it)."""
    for a, b in zip(points, points[1:]):
        if min(a[coord], b[coord]) <= at <= max(a[coord], b[coord]) and a[coord] != b[coord]:
            return a, b
    near = sorted(sorted(points, key=lambda p: abs(p[coord] - at))[:2])
    return near[0], near[-1]


def _penalty_law(pilots: list[dict], target: float) -> tuple[float, float]:
    """``(value, slope)``: the penalty at which the pilots' log L0 against log penalty, linearly interpolated
    between the two pilots that bracket ``target`` (or extrapolated from the nearest two), reaches it; and that
    segment's slope (d log L0 / d log penalty, negative)."""
    (x0, y0), (x1, y1) = _segment(_pilot_points(pilots), 1, math.log(target))
    slope = (y1 - y0) / (x1 - x0) if x1 != x0 and y1 != y0 else -1.0
    slope = min(slope, -1e-3)
    return math.exp(x0 + (math.log(target) - y0) / slope), slope


def _pilot_l0(pilots: list[dict], value: float) -> float:
    """The pilots' L0 at penalty ``value`` (log-log interpolation, extrapolated beyond them)."""
    (x0, y0), (x1, y1) = _segment(_pilot_points(pilots), 0, math.log(value))
    slope = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.0
    return math.exp(y0 + slope * (math.log(value) - x0))


def _pilots(base: Config, kind: str, targets, data: FashionMNIST, device: torch.device, ckpt_dir, tag: str,
            verbose: bool, ledger: list | None = None) -> list[dict]:
    """Short runs (``_PILOT_EPOCHS`` epochs, cached) of a penalty knob, each ``_PILOT_FACTOR`` apart, until the
    validation L0 of one is above the largest target and of another below the smallest (or ``_MAX_PILOTS``)."""
    x_val = train_val_split(data, base)[2]
    pilots, value = [], _PILOT_START
    lo, hi = min(targets), max(targets)
    for _ in range(_MAX_PILOTS):
        cfg = _kind_config(base, kind, value, ae_epochs=min(_PILOT_EPOCHS, base.ae_epochs))
        sae, history, _ = _autoencoder(cfg, data, device, ckpt_dir, tag, verbose, ledger)
        pilots.append({"value": value, "val_l0": _codes_l0(sae, x_val, device), "epochs": cfg.ae_epochs,
                       "seconds": history["seconds"]["ae"]})
        l0s = [p["val_l0"] for p in pilots]
        if max(l0s) > hi * (1 + _L0_TOLERANCE) and min(l0s) < lo * (1 - _L0_TOLERANCE):
            break
        too_sparse = pilots[-1]["val_l0"] < lo  # a larger penalty gives fewer active units
        value = min(p["value"] for p in pilots) / _PILOT_FACTOR if too_sparse else \
            max(p["value"] for p in pilots) * _PILOT_FACTOR
    return pilots


def _calibrate(base: Config, kind: str, targets, data: FashionMNIST, device: torch.device, ckpt_dir, tag: str = "",
               verbose: bool = True, ledger: list | None = None) -> dict:
    """Choose ``kind``'s sparsity knob for each mean L0 in ``targets`` on the **validation split**: full-length
    models (cached) are trained from a first guess until the validation L0 is within ``_L0_TOLERANCE`` of the
    target, at most ``_MAX_TRIES`` per target; the try closest to the target is kept. First guesses: a "count"
    or "target" knob starts at the target times the L0-per-knob ratio the previous target ended with (1 at first);
    a "penalty" knob at the log-log interpolation of pilot runs (``_pilots``), aimed at the target divided by the
    ratio of the previous target's full-length L0 to the pilots' L0 at the same penalty. Next guesses: secant
    steps in log-log (``_next_value``). ``{str(target): {"knob", "value", "val_l0", "tries", "cfg"}}``."""
    knob, how = _KNOBS[kind]
    pilots = _pilots(base, kind, targets, data, device, ckpt_dir, tag, verbose, ledger) if how == "penalty" else []
    x_val = train_val_split(data, base)[2]
    out, ratio, shift = {}, 1.0, 1.0
    for target in sorted(targets):
        if how == "penalty":  # the pilots' law, aimed at the target divided by how far full runs sat from it
            value, slope = _penalty_law(pilots, target / shift)
        else:  # the ratio the previous target ended with, within the step limit
            value, slope = target / min(max(ratio, 1 / _MAX_STEP[how]), _MAX_STEP[how]), 1.0
        tries = []
        while value is not None and len(tries) < _MAX_TRIES:
            cfg = _kind_config(base, kind, value)
            value = _knob_value(cfg)
            sae, history, _ = _autoencoder(cfg, data, device, ckpt_dir, tag, verbose, ledger)
            tries.append({"value": value, "val_l0": _codes_l0(sae, x_val, device),
                          "seconds": history["seconds"]["ae"]})
            if abs(tries[-1]["val_l0"] / target - 1) <= _L0_TOLERANCE:
                break
            value = _next_value(kind, tries, target, slope, base.d_hidden)
        best = min(tries, key=lambda t: abs(math.log(max(t["val_l0"], 1e-3) / target)))
        if how == "penalty":
            shift = max(best["val_l0"], 1e-3) / _pilot_l0(pilots, best["value"])
        else:
            ratio = best["val_l0"] / best["value"] if best["val_l0"] > 0 else 1.0
        out[str(target)] = {"knob": knob, "value": best["value"], "val_l0": best["val_l0"], "tries": tries,
                            "within_tolerance": abs(best["val_l0"] / target - 1) <= _L0_TOLERANCE,
                            "cfg": _kind_config(base, kind, best["value"])}
    if pilots:
        out["pilots"] = pilots
    return out


def _training_seconds(history: dict) -> dict:
    return {k: float(v) for k, v in history.get("seconds", {}).items()}


def _configs_for(cfg: Config, seeds, **over) -> list[Config]:
    return [Config(**{**cfg.to_dict(), "seed": int(s), **over}) for s in seeds]
