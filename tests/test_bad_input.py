"""Bad input, as a careless or hurried user gives it, through the public API (``ksae_helpers``): every case is
refused at the entry point with the error type and a message naming the argument (``CASES``); and the
behaviours that keep a run, its results and the committed outputs safe (checkpoint folder settled before
training, rescued saves, no stray temporary files, output folders compared by location, undefined statistics
reported as undefined, summaries that always serialise, models left in their mode, no endless wait)."""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from api_cases import NOT_COVERED, SPECIAL, families, make_env, not_covered, plan, public_callables, valid_kwargs

import ksae
import ksae.checkpoints
import ksae.checks.suite
import ksae_helpers as kh

CPU = torch.device("cpu")
N, D, H, C = 6, 784, 32, 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny untrained pipeline (H = 32 code units, 3 classes), images in [0, 1], maps, contributions, a
    selection, a small dataset, unit statistics, the committed results and a scratch folder holding a file
    (``blocker``) and a folder (``folder``): ``api_cases.make_env``."""
    return make_env(tmp_path_factory.mktemp("bad_input"))


def _with(maps: dict, name: str, index: int, value: float) -> dict:
    """``maps`` with one pixel of ``maps[name]`` set to ``value``."""
    bad = maps[name].clone()
    bad[0, index] = value
    return {**maps, name: bad}


def _inference(fn):
    """``fn()`` called under ``torch.inference_mode()``."""
    with torch.inference_mode():
        return fn()


def _train_mode(e):
    """A copy of the pipeline in training mode (the shared one stays in eval mode)."""
    return copy.deepcopy(e["pipe"]).train()


V = ValueError
GENERATED, UNRESOLVED = plan()  # cases generated from the API's signatures (tests/api_cases.py)
# (case id, call(env), expected exception type, regex the message must match: it names the argument); the hand-made
# cases, then the generated ones
CASES = [
    # --- Config: kinds and ranges; numpy scalars accepted like Python numbers, bools are not numbers ---
    ("config-k-0", lambda e: kh.Config(k=0), V, r"k must be >= 1, got 0"),
    ("config-k-above-d_hidden", lambda e: kh.Config(k=2000), V, r"k must be <= d_hidden"),
    ("config-k-float", lambda e: kh.Config(k=20.0), V, r"k must be an integer, got 20\.0"),
    ("config-k-bool", lambda e: kh.Config(k=True), V, r"k must be an integer"),
    ("config-seed-negative", lambda e: kh.Config(seed=-1), V, r"seed must be >= 0"),
    ("config-seed-string", lambda e: kh.Config(seed="0"), V, r"seed must be an integer"),
    ("config-batch_size-0", lambda e: kh.Config(batch_size=0), V, r"batch_size must be >= 1"),
    ("config-ae_epochs-numpy-float", lambda e: kh.Config(ae_epochs=np.float64(3)), V, r"ae_epochs must be an integer"),
    ("config-threshold-1", lambda e: kh.Config(confidence_threshold=1.0), V, r"confidence_threshold must be in"),
    ("config-threshold-nan", lambda e: kh.Config(confidence_threshold=math.nan), V, r"confidence_threshold"),
    ("config-noise-negative", lambda e: kh.Config(smoothgrad_noise=-0.1), V, r"smoothgrad_noise must be in"),
    ("config-hflip-string", lambda e: kh.Config(clf_hflip="False"), V, r"clf_hflip must be True or False"),
    ("config-cuda_graphs-int", lambda e: kh.Config(cuda_graphs=1), V, r"cuda_graphs must be True or False"),
    ("config-ig_method", lambda e: kh.Config(ig_method="trapezoid"), V, r"ig_method must be one of"),
    ("config-schedule", lambda e: kh.Config(ae_lr_schedule="linear"), V, r"ae_lr_schedule must be one of"),
    ("config-clf_hidden-empty", lambda e: kh.Config(clf_hidden=()), V, r"clf_hidden must be a non-empty"),
    ("config-train_subset-negative", lambda e: kh.Config(train_subset=-5), V, r"train_subset must be >= 0"),
    ("config-lr-0", lambda e: kh.Config(lr=0), V, r"lr must be in \(0"),
    ("config-dropout-1", lambda e: kh.Config(dropout=1.0), V, r"dropout must be in"),
    # --- the notebook's parameters, checked by the function its configuration cell calls ---
    *[(f"param-{name}-{value!r}", functools.partial(lambda e, n, v: kh.check_parameters({n: v}), n=name, v=value),
       V, rf"^{name} must") for name, value in [
        ("SAMPLES_PER_CLASS", 0), ("SAMPLES_PER_CLASS", 2.5), ("SAMPLES_PER_CLASS", "3"), ("K", 0), ("K", 1025),
        ("K", True), ("AE_EPOCHS", -1), ("CLF_EPOCHS", 0), ("BATCH_SIZE", 0), ("SEED", -1), ("SEED", 1.5),
        ("TRAIN_SUBSET", -1), ("CONFIDENCE_THRESHOLD", 1.0), ("CONFIDENCE_THRESHOLD", -0.1),
        ("CONFIDENCE_THRESHOLD", "0.8"), ("CONFIDENCE_THRESHOLD", math.nan), ("IG_STEPS", 0),
        ("SMOOTHGRAD_SAMPLES", 0), ("SMOOTHGRAD_NOISE", -0.1), ("SMOOTHGRAD_NOISE", math.inf), ("N_SUBSET", 0),
        ("N_COMPLETENESS", 0), ("N_RANDOMIZATION", 1), ("N_RANDOMIZATION", None), ("RETRAIN", "False"),
        ("RETRAIN", 0), ("RUN_K_SWEEP", "yes"), ("RUN_CONTROLS", 1), ("RUN_VARIANTS", "no"), ("K_SWEEP", []),
        ("K_SWEEP", [5, 0]),
        ("K_SWEEP", [5, 2000]), ("K_SWEEP", "5,10"), ("K_SWEEP", [5, 5]), ("K_SWEEP", [5.0]),
        ("CHECKPOINT_DIR", ""), ("CHECKPOINT_DIR", None), ("FIGURE_DIR", 5), ("SUMMARY_PATH", ""),
        ("SUMMARY_PATH", "results/")]],
    ("param-CHECKPOINT_DIR-a-file", lambda e: kh.check_parameters({"CHECKPOINT_DIR": str(e["tmp"] / "blocker")}), V,
     r"^CHECKPOINT_DIR must be a folder, got .*blocker.*existing file"),
    ("param-CHECKPOINT_DIR-under-a-file",
     lambda e: kh.check_parameters({"CHECKPOINT_DIR": str(e["tmp"] / "blocker" / "ckpt")}), V,
     r"^CHECKPOINT_DIR must be a writable folder, .*is a file"),
    ("param-FIGURE_DIR-a-file", lambda e: kh.check_parameters({"FIGURE_DIR": str(e["tmp"] / "blocker")}), V,
     r"^FIGURE_DIR must be a folder"),
    ("param-SUMMARY_PATH-a-folder", lambda e: kh.check_parameters({"SUMMARY_PATH": str(e["tmp"] / "folder")}), V,
     r"^SUMMARY_PATH must be a file path, .*existing folder"),
    ("param-SUMMARY_PATH-under-a-file",
     lambda e: kh.check_parameters({"SUMMARY_PATH": str(e["tmp"] / "blocker" / "s.json")}), V,
     r"^SUMMARY_PATH must be a file in a writable folder"),
    ("param-unknown-SAMPLES_PER_CLAS", lambda e: kh.check_parameters({"K": 50, "SAMPLES_PER_CLAS": 3}), V,
     r"unknown parameter 'SAMPLES_PER_CLAS' \(did you mean SAMPLES_PER_CLASS\?\)"),
    ("param-unknown-N_RANDOMISATION", lambda e: kh.check_parameters({"N_RANDOMISATION": 3}), V,
     r"did you mean N_RANDOMIZATION\?"),
    ("param-unknown-CHECKPOINTS_DIR", lambda e: kh.check_parameters({"CHECKPOINTS_DIR": "c"}), V,
     r"did you mean CHECKPOINT_DIR\?"),
    ("param-unknown-unlike-any", lambda e: kh.check_parameters({"FOO": 1}), V, r"unknown parameter 'FOO'; the"),
    ("param-not-a-dict", lambda e: kh.check_parameters([("K", 5)]), V, r"params must be a dict"),
    # --- attribution: pixel range, the model, inference mode, training mode ---
    ("ig-pixels-0-255", lambda e: kh.integrated_gradients(e["pipe"], e["x"] * 255, e["y"]), V,
     r"inputs must hold pixel values in \[0, 1\], got values from 0 to 2\d\d.*divide by 255"),
    ("simple-pixels-centred", lambda e: kh.simple_gradients(e["pipe"], e["x"] - 0.5, e["y"]), V,
     r"inputs must hold pixel values in \[0, 1\]"),
    ("smoothgrad-pixels-0-255", lambda e: kh.smoothgrad(e["pipe"], e["x"] * 255, e["y"], seed=0), V,
     r"inputs must hold pixel values"),
    ("decoder-pixels-0-255", lambda e: kh.decoder_weighted(e["pipe"], e["x"] * 255, e["y"]), V,
     r"inputs must hold pixel values"),
    ("attribute_all-pixels-0-255", lambda e: kh.attribute_all(e["pipe"], e["x"] * 255, e["y"], e["cfg"]), V,
     r"inputs must hold pixel values"),
    ("ig-nan-pixel", lambda e: kh.integrated_gradients(e["pipe"], _with({"x": e["x"]}, "x", 3, math.nan)["x"], 0),
     V, r"inputs contains NaN"),
    ("ig-autoencoder-as-model", lambda e: kh.integrated_gradients(e["sae"], e["x"], e["y"]), V,
     r"model must map images to class scores, got the autoencoder"),
    ("simple-classifier-as-model", lambda e: kh.simple_gradients(e["clf"], e["x"], e["y"]), V,
     r"model must map images \[B, 784\] to class scores \[B, C\]; it failed on one image"),
    ("ig-one-output-model", lambda e: kh.integrated_gradients(nn.Linear(D, 1).eval(), e["x"], 0), V,
     r"model must map images .* C >= 2, got output \[1, 1\]"),
    ("simple-under-inference-mode", lambda e: _inference(lambda: kh.simple_gradients(e["pipe"], e["x"], e["y"])),
     RuntimeError, r"attribution needs gradients, which torch.inference_mode\(\) disables"),
    ("attribute_all-under-inference-mode",
     lambda e: _inference(lambda: kh.attribute_all(e["pipe"], e["x"], e["y"], e["cfg"])), RuntimeError,
     r"inference_mode"),
    ("ig-model-in-training-mode", lambda e: kh.integrated_gradients(_train_mode(e), e["x"], e["y"]), V,
     r"training mode"),
    ("smoothgrad-nt_samples-0", lambda e: kh.smoothgrad(e["pipe"], e["x"], e["y"], nt_samples=0), V,
     r"nt_samples must be >= 1"),
    ("attribute_all-unknown-method",
     lambda e: kh.attribute_all(e["pipe"], e["x"], e["y"], e["cfg"], methods=["integrated", "grad_cam"]), V,
     r"unknown \['grad_cam'\]"),
    ("ig-target-out-of-range", lambda e: kh.integrated_gradients(e["pipe"], e["x"], 7), V, r"target classes"),
    # --- models: a pipeline of two models that do not fit ---
    ("pipeline-d_hidden-mismatch",
     lambda e: kh.SparseCodePipeline(e["sae"], kh.SparseCodeClassifier(d_hidden=64, hidden=(8,), n_classes=C)), V,
     r"clf must read the autoencoder's 32 code units, got a classifier of 64 inputs"),
    ("pipeline-arguments-swapped", lambda e: kh.SparseCodePipeline(e["clf"], e["sae"]), V,
     r"needs a sparse autoencoder .* and a SparseCodeClassifier, got SparseCodeClassifier and KSparseAutoencoder"),
    # --- selection and predictions ---
    ("select-pixels-0-255", lambda e: kh.select_high_confidence(  # refused where the dataset is made
        e["sae"], e["clf"], kh.FashionMNIST(e["x"], e["y"], e["x"] * 255, e["y"], classes=("a", "b", "c")), CPU, 2),
     V, r"x_test must hold pixel values in \[0, 1\].*divide by 255"),
    ("select-n_per_class-0", lambda e: kh.select_high_confidence(e["sae"], e["clf"], e["data"], CPU, 0), V,
     r"n_per_class must be >= 1"),
    ("select-n_per_class-numpy-float",
     lambda e: kh.select_high_confidence(e["sae"], e["clf"], e["data"], CPU, np.float64(3)), V,
     r"n_per_class must be an integer"),
    ("select-seed-negative", lambda e: kh.select_high_confidence(e["sae"], e["clf"], e["data"], CPU, 2, seed=-1), V,
     r"seed must be >= 0"),
    ("select-threshold-above-1",
     lambda e: kh.select_high_confidence(e["sae"], e["clf"], e["data"], CPU, 2, threshold=1.5), V, r"threshold"),
    ("predict-pixels-0-255", lambda e: kh.predict(e["sae"], e["clf"], e["x"] * 255, CPU), V,
     r"x must hold pixel values"),
    # --- checks: NaN and inf in maps, contributions and statistics ---
    ("agreement-nan-map", lambda e: kh.cross_method_statistics(_with(e["maps"], "simple", 5, math.nan)), V,
     r"maps\['simple'\] contains NaN or inf"),
    ("agreement-inf-map", lambda e: kh.cross_method_statistics(_with(e["maps"], "integrated", 5, math.inf)), V,
     r"maps\['integrated'\] contains NaN or inf"),
    ("faithfulness-nan-map", lambda e: kh.faithfulness_suite(e["pipe"], e["x"], e["y"],
                                                             _with(e["maps"], "simple", 0, math.nan)), V,
     r"maps\['simple'\] contains NaN"),
    ("faithfulness-pixels-0-255", lambda e: kh.faithfulness_suite(e["pipe"], e["x"] * 255, e["y"], e["maps"]), V,
     r"x must hold pixel values"),
    ("object_focus-nan-map", lambda e: kh.object_focus(_with(e["maps"], "integrated", 9, math.nan), e["x"]), V,
     r"maps\['integrated'\] contains NaN"),
    ("unit_deletion-nan-contributions", lambda e: kh.unit_deletion_curves(
        e["pipe"], e["x"], e["y"], e["contributions"].index_fill(1, torch.tensor([0]), math.nan)), V,
     r"contributions contains NaN"),
    ("faithfulness-autoencoder-as-model", lambda e: kh.faithfulness_suite(e["sae"], e["x"], e["y"], e["maps"]), V,
     r"model must map images to class scores, got the autoencoder"),
    ("removal_curves-classifier-as-model", lambda e: kh.removal_curves(
        e["clf"], e["x"], e["y"], kh.removal_order(e["maps"]["simple"])[None]), V,
     r"model must map images \[B, 784\] to class scores"),
    ("smoothgrad-seed-negative", lambda e: kh.smoothgrad(e["pipe"], e["x"], e["y"], seed=-1), V, r"seed must be >= 0"),
    ("unit_statistics-seed-string", lambda e: kh.unit_statistics(e["pipe"], e["data"], CPU, seed="0"), V,
     r"seed must be an integer"),
    ("summarize-inf", lambda e: kh.summarize([0.1, math.inf]), V, r"values contains inf"),
    ("bootstrap-nan", lambda e: kh.bootstrap_ci([0.1, math.nan]), V, r"values contains NaN"),
    # --- run_validation: every argument before the first check ---
    *[(f"validation-{name}", fn, exc, pattern) for name, fn, exc, pattern in [
        ("n_subset-0", lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], e["maps"], n_subset=0), V,
         r"n_subset must be >= 1"),
        ("n_completeness-float",
         lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], e["maps"], n_completeness=2.0), V,
         r"n_completeness must be an integer"),
        ("n_randomization-1", lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], e["maps"], n_randomization=1),
         V, r"n_randomization must be >= 2"),
        ("seed-negative", lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], e["maps"], seed=-1), V,
         r"seed must be >= 0"),
        ("unknown-method", lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], {"gradcam": e["maps"]["simple"]}),
         V, r"maps must be keyed by methods of .* unknown \['gradcam'\]"),
        ("nan-map", lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], _with(e["maps"], "simple", 1, math.nan)),
         V, r"maps\['simple'\] contains NaN"),
        ("maps-of-other-images", lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"],
                                                             {m: v[:3] for m, v in e["maps"].items()}), V,
         r"maps\['integrated'\] holds 3 maps but there are 6 images"),
        ("contributions-shape", lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], e["maps"],
                                                            e["contributions"][:, :5]), V,
         r"contributions must be a tensor of shape \[6, 32\]"),
        ("contributions-nan",
         lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], e["maps"], e["contributions"] * math.nan), V,
         r"contributions contains NaN"),
        ("selection-0-255", lambda e: kh.run_validation(e["pipe"], kh.Selection(
            torch.arange(N), e["x"] * 255, e["y"], torch.ones(N)), e["cfg"], e["maps"]), V,
         r"x must hold pixel values"),  # refused where the Selection is made
        ("selection-not-a-Selection", lambda e: kh.run_validation(e["pipe"], (e["x"], e["y"]), e["cfg"], e["maps"]), V,
         r"selection must be the Selection"),
        ("autoencoder-as-pipeline", lambda e: kh.run_validation(e["sae"], e["sel"], e["cfg"], e["maps"]), V,
         r"pipeline must be a SparseCodePipeline"),
        ("pipeline-in-training-mode", lambda e: kh.run_validation(_train_mode(e), e["sel"], e["cfg"], e["maps"]), V,
         r"pipeline is in training mode"),
        ("cfg-a-dict", lambda e: kh.run_validation(e["pipe"], e["sel"], {"k": 4}, e["maps"]), V,
         r"cfg must be a Config"),
        ("cross_method-a-list", lambda e: kh.run_validation(e["pipe"], e["sel"], e["cfg"], e["maps"], cross_method=[]),
         V, r"cross_method must be None or the dict"),
        ("under-inference-mode", lambda e: _inference(lambda: kh.run_validation(e["pipe"], e["sel"], e["cfg"],
                                                                               e["maps"])), RuntimeError,
         r"run_validation needs gradients"),
    ]],
    # --- summaries, output folders, checkpoints ---
    ("write_summary-unserialisable", lambda e: kh.write_summary({"a": {"b": object()}}, e["tmp"] / "s.json"), V,
     r"summary\['a'\]\['b'\] \(object"),
    ("write_summary-path-a-folder", lambda e: kh.write_summary({"a": 1}, e["tmp"] / "folder"), V,
     r"path must be a file path"),
    ("write_summary-not-a-dict", lambda e: kh.write_summary([1], e["tmp"] / "s.json"), V, r"summary must be a dict"),
    ("read_summary-missing", lambda e: kh.read_summary(e["tmp"] / "missing.json"), V,
     r"summary file '.*missing.json' does not exist"),
    ("read_summary-bad-json", lambda e: kh.read_summary(e["tmp"] / "blocker"), V,
     r"summary file '.*blocker' must be readable JSON"),
    ("read_summary-a-folder", lambda e: kh.read_summary(e["tmp"] / "folder"), V, r"summary file '.*folder'"),
    ("output_paths-figure_dir-a-file",
     lambda e: kh.output_paths(kh.Config(k=20), e["tmp"] / "blocker", e["tmp"] / "s.json"), V,
     r"figure_dir must be a folder"),
    ("output_paths-summary-a-folder", lambda e: kh.output_paths(kh.Config(k=20), "", e["tmp"] / "folder"), V,
     r"summary_path must be a file path"),
    ("run_name-n_subset-0", lambda e: kh.run_name(kh.Config(), n_subset=0), V, r"n_subset must be >= 1"),
    ("run_name-n_randomization-1", lambda e: kh.run_name(kh.Config(), n_randomization=1), V,
     r"n_randomization must be >= 2"),
    ("load_or_train-ckpt_dir-a-file", lambda e: kh.load_or_train(e["cfg"], e["data"], CPU, e["tmp"] / "blocker"), V,
     r"ckpt_dir \(the notebook's CHECKPOINT_DIR\) must be a folder"),
    ("load_or_train-ckpt_dir-under-a-file",
     lambda e: kh.load_or_train(e["cfg"], e["data"], CPU, e["tmp"] / "blocker" / "c"), V, r"ckpt_dir .*is a file"),
    ("load_or_train-ckpt_dir-empty", lambda e: kh.load_or_train(e["cfg"], e["data"], CPU, ""), V,
     r"ckpt_dir .*must be a non-empty path"),
    ("load_or_train-retrain-string", lambda e: kh.load_or_train(e["cfg"], e["data"], CPU, e["tmp"] / "c",
                                                                retrain="False"), V, r"retrain must be True or False"),
    ("load_or_train-cfg-a-dict", lambda e: kh.load_or_train({"k": 4}, e["data"], CPU, e["tmp"] / "c"), V,
     r"cfg must be a Config"),
    *[(c.id, c.call, (ValueError, TypeError), c.pattern) for c in GENERATED],
]
PACKAGE = Path(ksae.__file__).resolve().parent


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_the_argument(env, monkeypatch, call, error, pattern):
    def no_training(*args, **kwargs):
        raise AssertionError("trained despite bad input")

    monkeypatch.setattr(ksae.checkpoints, "train_models", no_training)
    monkeypatch.chdir(env["tmp"])  # a default path (checkpoints/, results/) never reaches the repository's
    with pytest.raises(error, match=pattern) as caught:
        call(env)
    raised_in = Path(caught.traceback[-1].path).resolve()  # the package refused it, not torch, numpy or matplotlib
    assert raised_in.is_relative_to(PACKAGE), f"raised in {raised_in}: {caught.value!r}"


def test_there_are_at_least_80_cases():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)


def test_every_public_callable_has_cases():
    """A new public name fails here until its parameters map to families (tests/api_cases.py) or it is listed in
    NOT_COVERED with the reason it cannot be called with bad arguments."""
    covered = {c.fn for c in GENERATED}
    missing = {name for name in kh.__all__ if callable(getattr(kh, name))} - covered - set(not_covered())
    assert not missing, f"public callables without bad-input cases: {sorted(missing)} (tests/api_cases.py)"
    assert not UNRESOLVED, f"parameters without a family (add to SPECIAL in tests/api_cases.py): {UNRESOLVED}"
    assert set(NOT_COVERED) <= {name for name in kh.__all__}, "NOT_COVERED names a name that is not public"
    assert not set(NOT_COVERED) & covered, "a name in NOT_COVERED has cases: drop it from NOT_COVERED"
    assert set(SPECIAL) <= set(kh.__all__), "SPECIAL names a name that is not public"


MODEL_FAMILIES = {"model", "pipeline", "autoencoder", "encoder"}
CAST = [fn for fn, obj in public_callables().items() if fn not in not_covered()  # images that enter a model
        and (fams := families(fn)) and "images" in fams.values() and MODEL_FAMILIES & set(fams.values())]


def _same(a, b) -> bool:
    """Equal results, bit for bit (tensors, arrays, numbers, and containers of them), wall times aside."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a if k != "seconds")
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b if not hasattr(a, "__dict__") else _same(vars(a), vars(b))


@pytest.mark.parametrize("fn", CAST)
def test_float64_images_are_cast_to_the_models_dtype(env, monkeypatch, fn):
    """Float images can be used, so they are: every function that runs a model casts its images to the model's dtype
    at the door (one rule everywhere, _check_images), and float64 images give the float32 images' results exactly."""
    monkeypatch.chdir(env["tmp"])
    obj, images = getattr(kh, fn), [p for p, f in families(fn).items() if f == "images"]
    kwargs = valid_kwargs(env, fn)
    if "seed" in inspect.signature(obj).parameters:
        kwargs.setdefault("seed", 0)  # SmoothGrad's noise
    results = []
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        fresh = copy.deepcopy(kwargs)  # training changes the models: each call gets its own copy
        results.append(obj(**{**fresh, **{p: env["x"].to(dtype) for p in images if p in kwargs}}))
    assert _same(*results), fn


def test_names_without_cases_are_listed_with_a_reason():
    for name, why in not_covered().items():
        print(f"not covered: {name}: {why}")
        assert why


def test_run_validation_checks_every_argument_before_its_first_check(env, monkeypatch):
    ran = []
    monkeypatch.setattr(ksae.checks.suite, "timed_checks", lambda checks: ran.append(list(checks)))
    monkeypatch.setattr(ksae.checks.suite, "decoder_weighted", lambda *a, **k: ran.append("decoder"))
    with pytest.raises(ValueError, match="n_randomization"):
        kh.run_validation(env["pipe"], env["sel"], env["cfg"], env["maps"], n_randomization=1)
    assert ran == []


# --- the parameter spec is the notebook's ---

def test_parameter_spec_lists_every_notebook_parameter_with_its_default():
    nb = json.loads((Path(kh.__file__).parent / "fashion_mnist_interpretability.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    params: dict = {}
    exec("".join(cell["source"]), {}, params)
    assert list(params) == list(kh.NOTEBOOK_PARAMETERS)
    assert params == {name: p.default for name, p in kh.NOTEBOOK_PARAMETERS.items()}
    kh.check_parameters(params)  # the defaults pass
    for name, value in kh.RUN_DEFAULTS.items():
        assert kh.NOTEBOOK_PARAMETERS[name.upper()].default == value


def test_parameters_accept_numpy_scalars_and_paths_like_python_values(tmp_path):
    kh.check_parameters({"K": np.int64(20), "SEED": np.int32(1), "SMOOTHGRAD_NOISE": np.float32(0.2),
                         "CONFIDENCE_THRESHOLD": 0, "K_SWEEP": (np.int64(5), 10), "FIGURE_DIR": "",
                         "CHECKPOINT_DIR": tmp_path / "new" / "ckpt", "SUMMARY_PATH": tmp_path / "s.json"})
    assert not (tmp_path / "new").exists()  # checking creates nothing
    cfg = kh.Config(k=np.int64(20), seed=np.int32(1), smoothgrad_noise=np.float32(0.2))
    assert type(cfg.k) is int and type(cfg.seed) is int and type(cfg.smoothgrad_noise) is float
    assert cfg.checkpoint_name() == kh.Config(k=20, seed=1, smoothgrad_noise=float(np.float32(0.2))).checkpoint_name()
    assert json.loads(json.dumps(cfg.to_dict()))["k"] == 20


# --- committed outputs protected by location ---

@pytest.mark.parametrize("spelling", ["relative", "dot-dot", "absolute", "symlink", "inside"])
def test_output_paths_protect_the_committed_folders_however_they_are_written(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link_fig").symlink_to(tmp_path / "figures")
    (tmp_path / "link_res").symlink_to(tmp_path / "results")
    figures, summary = {
        "relative": ("./figures/", "results/./summary.json"),
        "dot-dot": ("sub/../figures", "sub/../results/summary.json"),
        "absolute": (str(tmp_path / "figures"), str(tmp_path / "results" / "summary.json")),
        "symlink": ("link_fig", "link_res/summary.json"),
        "inside": ("figures/k20", "results/k20.json"),
    }[spelling]
    fig_out, sum_out = kh.output_paths(kh.Config(k=20), figures, summary)
    assert Path(fig_out).resolve() == (tmp_path / "runs" / "k20" / "figures").resolve()
    assert Path(sum_out).resolve().parent == (tmp_path / "runs" / "k20").resolve()
    for protected in ("figures", "results"):
        assert not os.path.commonpath([Path(sum_out).resolve(), (tmp_path / protected).resolve()]).endswith(protected)
    # the default configuration keeps them as written
    assert kh.output_paths(kh.Config(), figures, summary) == (figures, summary)


def test_output_paths_keep_paths_outside_the_committed_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kept = ("figures_k20", "results_k20/s.json")
    assert kh.output_paths(kh.Config(k=20), *kept) == kept
    assert any(p == (Path(kh.__file__).parent / "figures").resolve() for p in kh.protected_folders())


# --- trained work is never lost ---

def _tiny_models(cfg):
    return kh.KSparseAutoencoder.from_config(cfg).eval(), kh.SparseCodeClassifier.from_config(cfg).eval(), {"ae": {}}


def test_checkpoint_folder_is_settled_before_training(env, tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(ksae.checkpoints, "train_models", lambda *a: trained.append(1) or _tiny_models(env["cfg"]))
    monkeypatch.setattr(ksae.checkpoints, "evaluate_models", lambda *a: {})
    (tmp_path / "ckpt").write_text("not a folder")
    with pytest.raises(ValueError, match="ckpt_dir"):
        kh.load_or_train(env["cfg"], env["data"], CPU, tmp_path / "ckpt", verbose=False)
    assert trained == []
    kh.load_or_train(env["cfg"], env["data"], CPU, tmp_path / "new" / "ckpt", verbose=False)
    assert trained == [1] and (tmp_path / "new" / "ckpt" / env["cfg"].checkpoint_name()).is_file()


def test_a_save_that_fails_after_training_keeps_the_models_and_says_where(env, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"

    def train_then_lose_the_folder(cfg, data, device):
        ckpt.rmdir()
        ckpt.write_text("the folder was replaced by a file during training")
        return _tiny_models(cfg)

    monkeypatch.setattr(ksae.checkpoints, "train_models", train_then_lose_the_folder)
    monkeypatch.setattr(ksae.checkpoints, "evaluate_models", lambda *a: {"autoencoder": {"fvu": 0.5}})
    with pytest.warns(UserWarning, match=r"could not save the trained models to .*ckpt.*saved them to (\S+) instead"
                      ) as record:
        sae, clf, history, metrics = kh.load_or_train(env["cfg"], env["data"], CPU, ckpt, verbose=False)
    rescued = Path(str(record[0].message).split("saved them to ")[1].split(" instead")[0])
    try:
        assert rescued.is_file() and rescued.parent.name.startswith(kh.RESCUE_PREFIX)
        cfg2, sae2, clf2, _, metrics2 = kh.load_checkpoint(rescued)
        assert cfg2.training_key() == env["cfg"].training_key() and metrics2 == metrics == {"autoencoder": {"fvu": 0.5}}
        assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), sae2.state_dict().values()))
    finally:
        rescued.unlink(missing_ok=True)
        rescued.parent.rmdir()


def test_a_killed_save_leaves_no_temporary_file_behind_on_the_next_run(env, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    name = env["cfg"].checkpoint_name()
    kh.save_checkpoint(ckpt / name, env["cfg"], env["sae"], env["clf"])
    stale = ckpt / f"{name}abc123.tmp"  # what atomic_write_bytes leaves when the process is killed mid-write
    stale.write_bytes(b"half a checkpoint")
    old = time.time() - 2 * kh.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    fresh = ckpt / f"{name}def456.tmp"  # a write in progress in another process right now: left alone
    fresh.write_bytes(b"being written")
    other = ckpt / "notes.tmp"  # not a checkpoint's temporary file: left alone however old
    other.write_bytes(b"the user's")
    os.utime(other, (old, old))
    kh.load_or_train(env["cfg"], env["data"], CPU, ckpt, verbose=False)  # loads (no write) and cleans up
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([name, fresh.name, other.name])
    os.utime(fresh, (old, old))  # the next write of the same file removes its own stale temporaries only
    kh.save_checkpoint(ckpt / name, env["cfg"], env["sae"], env["clf"])
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([name, other.name])
    # a failed write (here: the rename) removes its own temporary file at once
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        kh.atomic_write_bytes(tmp_path / "out.json", b"{}")
    assert not list(tmp_path.glob("out.json*.tmp"))


# --- degenerate maps: undefined, never perfect agreement ---

def test_all_zero_maps_do_not_agree_perfectly(env):
    zero = torch.zeros(N, D)
    stats = kh.cross_method_statistics({"a": zero, "b": zero.clone(), "c": env["maps"]["simple"]})
    ab = stats["pairs"]["a|b"]
    for key in ("spearman_signed", "spearman_abs", "pearson_signed", "top1pct_iou"):
        assert ab[key]["n"] == 0 and ab[key]["n_undefined"] == N and math.isnan(ab[key]["mean"])
    ac = stats["pairs"]["a|c"]
    assert ac["spearman_abs"]["n"] == 0 and math.isnan(ac["top1pct_iou"]["mean"])
    one_zero = env["maps"]["simple"].clone()
    one_zero[2] = 0  # one degenerate image among defined ones: left out and counted
    mixed = kh.cross_method_statistics({"s": one_zero, "i": env["maps"]["integrated"]})["pairs"]["s|i"]
    assert mixed["spearman_abs"]["n"] == N - 1 and mixed["spearman_abs"]["n_undefined"] == 1
    assert np.isnan(kh.top_fraction_iou(np.zeros((1, D)), np.zeros((1, D)))).all()
    assert kh.top_fraction_iou(np.arange(D)[None] * 1.0, np.arange(D)[None] * 2.0)[0] == 1.0
    focus = kh.object_focus({"zero": zero, "simple": env["maps"]["simple"]}, env["x"])
    assert focus["zero"]["n"] == 0 and focus["simple"]["n"] == N


def test_summaries_with_nan_and_inf_serialise_as_null(tmp_path):
    summary = {"a": np.float64("nan"), "b": [np.float32("inf"), 1.5], "c": {"d": torch.tensor([math.nan, 2.0])},
               "e": kh.summarize([math.nan, math.nan]), "f": np.int64(3)}
    path = kh.write_summary(summary, tmp_path / "s.json")
    back = kh.read_summary(path)
    assert back == {"a": None, "b": [None, 1.5], "c": {"d": [None, 2.0]},
                    "e": {"mean": None, "ci95": [None, None], "std": None, "n": 0, "n_undefined": 2}, "f": 3}


# --- models are left in the mode they were found in ---

def test_functions_leave_the_callers_model_in_its_mode(env):
    sae, clf = env["sae"], env["clf"]
    data = kh.FashionMNIST(env["x"], env["y"], env["x"], kh.predict(sae, clf, env["x"], CPU).argmax(1),
                           classes=("a", "b", "c"))
    for module in (sae, clf):
        module.train()
    modes = {id(m): m.training for m in (*sae.modules(), *clf.modules())}
    kh.predict(sae, clf, env["x"], CPU)
    kh.encode_dataset(sae, env["x"], CPU)
    kh.dataset_fvu(sae, env["x"], CPU)
    kh.evaluate_models(sae, clf, data, kh.Config(k=4, d_hidden=H, clf_hidden=(16, 8), n_classes=C, n_val=0), CPU)
    kh.select_high_confidence(sae, clf, data, CPU, 1, threshold=0.0)
    pipe = kh.SparseCodePipeline(sae, clf).train()
    kh.unit_statistics(pipe, data, CPU)
    assert {id(m): m.training for m in (*sae.modules(), *clf.modules())} == modes and all(modes.values())
    sae.eval()
    clf.eval()


# --- nothing hangs ---

def _killed():
    """A figure call whose process is killed (SIGKILL, as the out-of-memory killer does)."""
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.skipif(not kh.CAN_FORK, reason="figure workers are forked processes (Linux)")
def test_a_figure_worker_killed_by_a_signal_raises_within_seconds():
    calls = [functools.partial(_killed) for _ in range(3)]
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"died while drawing figure \d .*exit code -9"):
        kh.render_figures(calls, workers=2)
    assert time.perf_counter() - t0 < 30


# --- no silent numbers: a statistic that cannot be computed is an error or NaN, never a plausible 0 or 1 ---

def test_a_correlation_of_a_method_the_statistics_do_not_hold_is_an_error_naming_the_closest(env):
    stats = kh.cross_method_statistics(env["maps"], x=env["x"], labels=env["y"])
    matrix = kh.correlation_matrix(stats, ["integrated", "simple"])
    assert matrix.shape == (2, 2) and matrix[0, 0] == 1 and -1 <= matrix[0, 1] <= 1
    with pytest.raises(ValueError, match=r"methods must be .*got unknown \['integrted'\] \(did you mean 'integrated'"):
        kh.correlation_matrix(stats, ["integrated", "integrted"])  # was: a correlation of 0.0
    with pytest.raises(ValueError, match=r"key must be one of .*got 'spearman_ab' \(did you mean 'spearman_abs'"):
        kh.correlation_matrix(stats, ["integrated", "simple"], key="spearman_ab")  # was: KeyError
    plain = kh.cross_method_statistics(env["maps"])  # no null measured: a null statistic is an error, not 0
    with pytest.raises(ValueError, match="statistic must be None for statistics without the different-image null"):
        kh.correlation_matrix(plain, ["integrated", "simple"], "spearman_signed_all", "excess")


def test_shares_and_accuracies_of_nothing_are_undefined(env):
    zero = torch.zeros(2, 784)
    assert np.isnan(kh.object_share(zero, env["x"][:2])).all()  # was 0.0
    assert math.isnan(kh.image_attribution_stats(env["x"][0], {"simple": zero[0]})["simple"]["object_share"])
    data = kh.FashionMNIST(env["x"], env["y"], env["x"][:4], env["y"][:4], classes=("a", "b", "c"))  # no test "c"
    per_class = kh.evaluate_classifier(env["sae"], env["clf"], data, CPU)["per_class_accuracy"]
    assert math.isnan(per_class["c"]) and not math.isnan(per_class["a"])  # was 0.0
    assert json.loads(json.dumps(ksae._util._jsonable(per_class)))["c"] is None  # null in the summary


# --- what travels together is checked together ---

def test_the_unit_browser_refuses_statistics_of_another_image_set_or_model(env):
    stats, sae, data, path = env["stats"], env["sae"], env["data"], env["tmp"] / "units2.html"
    fewer = kh.FashionMNIST(env["x"], env["y"], env["x"][:4], env["y"][:4], classes=("a", "b", "c"))
    with pytest.raises(ValueError, match=r"stats must come from data's 4 test images, got statistics of 6 images"):
        kh.write_unit_browser(stats, sae, fewer, path)
    renamed = kh.FashionMNIST(env["x"], env["y"], env["x"], env["y"], classes=("x", "y", "z"))
    with pytest.raises(ValueError, match=r"stats must describe the classes of data"):
        kh.write_unit_browser(stats, sae, renamed, path)
    with pytest.raises(ValueError, match=r"stats describe 32 units but the autoencoder has 64"):
        kh.write_unit_browser(stats, kh.KSparseAutoencoder(k=4, d_hidden=64), data, path)
    with pytest.raises(ValueError, match=r"top_contributions must name test images of this dataset \(6\)"):
        kh.write_unit_browser(stats, sae, data, path, top_contributions=(np.full((H, 2), 9), np.zeros((H, 2))))
    assert not path.exists()


def test_usage_fractions_are_fractions(env):
    good = np.full(H, 0.25)
    kh.plot_feature_atlas(env["sae"], good, n_units=2)
    for usage, message in ((np.full(H, math.nan), "usage contains NaN"),
                           (np.full(H, 3.0), r"fractions in \[0, 1\], got values from 3 to 3 \(counts\? divide"),
                           (good[:-1], "usage must hold one value per unit")):
        with pytest.raises(ValueError, match=message):
            kh.plot_feature_atlas(env["sae"], usage, n_units=2)
        with pytest.raises(ValueError, match=message.replace("usage", "usage_train")):
            kh.unit_statistics(env["pipe"], env["data"], CPU, usage_train=usage)
    bad = copy.copy(env["stats"])
    with pytest.raises(ValueError, match="freq_test contains NaN"):
        kh.UnitStats(**{**vars(bad), "freq_test": np.full(H, math.nan)})
