"""The notebook's parameters (its papermill-tagged first code cell): name, kind, range, default and meaning of
each, and ``check_parameters``, which the configuration cell calls before anything expensive runs."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np

from ._util import _check_bool, _check_choice, _check_float, _check_path, _check_text, _closest_option, _describe
from .config import SAE_KINDS, Config


@dataclass(frozen=True)
class Parameter:
    """One notebook parameter: ``kind`` is ``"int"``, ``"float"``, ``"bool"``, ``"int_list"`` (a non-empty list
    of distinct integers), ``"choice"`` (one of ``choices``), ``"folder"`` or ``"file"`` (paths); ``low``/``high``
    bound numbers (and each item of an ``int_list``), open at an end where ``low_open``/``high_open``; a path may
    be ``""`` where ``allow_empty``."""

    kind: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow_empty: bool = False
    choices: tuple = ()

    def __post_init__(self):
        _check_choice("kind", self.kind, _PARAMETER_KINDS)
        _check_text("help", self.help)
        for name in ("low", "high"):
            if getattr(self, name) is not None:
                _check_float(name, getattr(self, name))
        for name in ("low_open", "high_open", "allow_empty"):
            _check_bool(name, getattr(self, name))
        if not isinstance(self.choices, tuple) or not all(isinstance(c, str) for c in self.choices):
            raise ValueError(f"choices must be a tuple of names (strings), got {_describe(self.choices)}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"choices must name the values of a 'choice' parameter (and only of one), got "
                             f"{self.choices!r} for kind {self.kind!r}")


_PARAMETER_KINDS = ("int", "float", "bool", "int_list", "choice", "folder", "file")


MAX_K = Config.d_hidden  # K (and every k of K_SWEEP) is at most the number of code units


NOTEBOOK_PARAMETERS = {  # a parameter that is a Config field takes its default from Config (one copy)
    "SAE_KIND": Parameter("choice", Config.sae_kind, "which sparse autoencoder (its activation and training "
                          "recipe)", choices=SAE_KINDS),
    "K": Parameter("int", Config.k, "active code units per image (topk; batchtopk and matryoshka: on average in "
                   "training)", low=1, high=MAX_K),
    "TARGET_L0": Parameter("float", Config.target_l0, "jumprelu: the mean number of active units it trains toward",
                           low=0.0, high=MAX_K, low_open=True),
    "L1_COEF": Parameter("float", Config.l1_coef, "relu_l1: weight of the L1 penalty (larger: fewer active units)",
                         low=0.0, low_open=True),
    "AE_EPOCHS": Parameter("int", Config.ae_epochs, "autoencoder epochs", low=1),
    "CLF_EPOCHS": Parameter("int", Config.clf_epochs, "classifier epochs", low=1),
    "BATCH_SIZE": Parameter("int", Config.batch_size, "images per training step", low=1),
    "SEED": Parameter("int", Config.seed, "seeds training, sample selection and SmoothGrad noise", low=0),
    "TRAIN_SUBSET": Parameter("int", Config.train_subset, "train on the first N training images; 0 means all", low=0),
    "SAMPLES_PER_CLASS": Parameter("int", 100, "high-confidence test images per class", low=1),
    "CONFIDENCE_THRESHOLD": Parameter("float", Config.confidence_threshold,
                                      "softmax confidence an explained prediction must exceed", low=0.0, high=1.0,
                                      high_open=True),
    "IG_STEPS": Parameter("int", Config.ig_steps, "integrated-gradients steps", low=1),
    "SMOOTHGRAD_SAMPLES": Parameter("int", Config.smoothgrad_samples, "SmoothGrad noisy copies per image", low=1),
    "SMOOTHGRAD_NOISE": Parameter("float", Config.smoothgrad_noise, "SmoothGrad noise std (pixels are in [0, 1])",
                                  low=0.0),
    "N_SUBSET": Parameter("int", 300, "images for the blur and ROAD deletion substrates", low=1),
    "N_COMPLETENESS": Parameter("int", 200, "images in the completeness decomposition", low=1),
    "N_RANDOMIZATION": Parameter("int", 100, "images in the randomization check (its different-class reference "
                                 "pairs images, so at least 2)", low=2),
    "RETRAIN": Parameter("bool", False, "ignore a matching checkpoint and train again"),
    "RUN_K_SWEEP": Parameter("bool", False, "train every k in K_SWEEP here"),
    "K_SWEEP": Parameter("int_list", [5, 10, 20, 50, 100, 200], "the k values of the sparsity sweep", low=1,
                         high=MAX_K),
    "RUN_CONTROLS": Parameter("bool", False, "train every control here"),
    "RUN_VARIANTS": Parameter("bool", False, "train every sparse-autoencoder variant of the variants study here"),
    "RUN_SHORTCUT": Parameter("bool", False, "train every model of the planted-shortcut study here (three variants, "
                              "three seeds)"),
    "CHECKPOINT_DIR": Parameter("folder", "checkpoints", "folder for the trained models' checkpoints"),
    "FIGURE_DIR": Parameter("folder", "figures", "folder for the figures (\"\" saves none)", allow_empty=True),
    "SUMMARY_PATH": Parameter("file", "results/summary.json", "the run's summary JSON file"),
}


def _interval(p: Parameter) -> str:
    """'>= 1', 'in [1, 1024]', 'in [0, 1)' for a parameter's bounds."""
    if p.high is None:
        return f"{'>' if p.low_open else '>='} {p.low:g}" if p.low is not None else "a number"
    return f"in {'(' if p.low_open else '['}{p.low:g}, {p.high:g}{')' if p.high_open else ']'}"


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _in_range(p: Parameter, value) -> bool:
    return not ((p.low is not None and (value < p.low or (p.low_open and value == p.low)))
                or (p.high is not None and (value > p.high or (p.high_open and value == p.high))))


def check_parameter(name: str, value) -> None:
    """``ValueError`` naming the parameter ``name`` unless ``value`` is of its kind and in its range
    (``NOTEBOOK_PARAMETERS``); paths are checked for their form and that their nearest existing folder is
    writable (nothing is created)."""
    _check_choice("name", name, NOTEBOOK_PARAMETERS)
    p = NOTEBOOK_PARAMETERS[name]
    got = f"got {value!r} ({type(value).__name__})"
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, {got}")
    elif p.kind == "int":
        if not _is_int(value) or not _in_range(p, value):
            raise ValueError(f"{name} must be an integer {_interval(p)} ({p.help}), {got}")
    elif p.kind == "float":
        real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        if not real or not math.isfinite(value) or not _in_range(p, value):
            raise ValueError(f"{name} must be a number {_interval(p)} ({p.help}), {got}")
    elif p.kind == "choice":
        if value not in p.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in p.choices], n=1, cutoff=0.0)
            raise ValueError(f"{name} must be one of {', '.join(map(repr, p.choices))} ({p.help}), {got}"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
    elif p.kind == "int_list":
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{name} must be a non-empty list of integers {_interval(p)} ({p.help}), {got}")
        bad = [v for v in value if not _is_int(v) or not _in_range(p, v)]
        if bad:
            raise ValueError(f"{name} must hold integers {_interval(p)} ({p.help}), got {value!r} "
                             f"(not allowed: {bad!r})")
        if len(set(int(v) for v in value)) != len(value):
            raise ValueError(f"{name} must hold distinct values, got {value!r}")
    else:
        _check_path(name, value, p.kind, allow_empty=p.allow_empty)


def check_parameters(params: dict) -> None:
    """Check the notebook's parameters before anything expensive runs: ``params`` maps names to values, e.g.
    ``{name: value for name, value in globals().items() if name.isupper()}`` in the configuration cell.

    ``ValueError`` naming the parameter for a value of the wrong kind or out of range (``check_parameter``)
    and for a name the notebook does not know (papermill adds a misspelled ``-p SAMPLES_PER_CLAS 3`` as a new
    variable and the run would use the default): the message names the closest known parameter. Parameters
    not in ``params`` are not checked.
    """
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of parameter name -> value, got {type(params).__name__}")
    unknown = [name for name in params if name not in NOTEBOOK_PARAMETERS]
    if unknown:
        hints = []
        for name in unknown:
            close = _closest_option(str(name).upper(), NOTEBOOK_PARAMETERS)
            hints.append(f"{name!r}" + (f" (did you mean {close}?)" if close else ""))
        raise ValueError(f"unknown parameter {', '.join(hints)}; the notebook's parameters are "
                         f"{', '.join(NOTEBOOK_PARAMETERS)}")
    for name, value in params.items():
        check_parameter(name, value)
