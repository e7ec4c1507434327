"""Bad-input cases generated from the public API's signatures (``tests/test_bad_input.py`` joins them to its table).

Every callable of ``ksae_helpers.__all__`` is called with one wrong value at a time for each parameter, the others
valid. Which wrong values a parameter gets is read from its name and annotation (``family_of``): ``cfg`` or
``Config`` -> the config family (``None``, a dict), ``x``/``inputs`` -> images (``None``, an array, uint8, 0..255,
NaN, a wrong shape), ``seed`` -> seeds, an ``int`` -> counts (-1, 2.5, "3"), a ``bool`` -> flags ("False", 1), a
``str`` with a closed set of values -> a misspelt name (the error must name the closest valid one), ... A new
public function whose parameters use these names and annotations gets its cases with no entry here; a name needs
an entry in ``SPECIAL`` only when a parameter means something else than its name says, when a required parameter
has no family with a valid value, or when a value must fit another argument. ``NOT_COVERED`` lists the names that
cannot be called with bad arguments, and why; ``test_every_public_callable_has_cases`` fails for a new public name
that has neither cases nor a reason there.

Each case expects a ``ValueError`` (or ``TypeError``) raised by the package itself (not inside torch, numpy, scipy
or matplotlib), whose message names the parameter and says what was expected and what came.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
import torch

import ksae_helpers as kh

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
N, H, C, K = 6, 32, 3, 4  # images, code units, classes, active units of the tiny models


# --- the environment: one valid value of every kind ---------------------------------------------------------

def make_env(tmp: Path) -> dict:
    """Tiny untrained models (H = 32 units, 3 classes), N = 6 images in [0, 1] (8-bit steps), their maps and
    contributions, a selection, a dataset, unit statistics, the committed results (for the functions that read
    a result) and a scratch folder holding a file (``blocker``), a folder (``folder``) and readable outputs."""
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    cfg = kh.Config(k=K, d_hidden=H, clf_hidden=(16, 8), n_classes=C, ig_steps=4, smoothgrad_samples=2, n_val=0,
                    ae_epochs=1, clf_epochs=1)
    sae, clf = kh.KSparseAutoencoder.from_config(cfg).eval(), kh.SparseCodeClassifier.from_config(cfg).eval()
    pipe = kh.SparseCodePipeline(sae, clf).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.round(255 * torch.rand(N, 784, generator=g) * (torch.rand(N, 784, generator=g) > 0.4)) / 255
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    maps, contributions = kh.attribute_all(pipe, x, y, cfg, methods=["integrated", "simple"],
                                           return_contributions=True)
    data = kh.FashionMNIST(x, y, x, y, classes=("a", "b", "c"))
    values, indices = sae.encode_sparse(x)
    stats = kh.unit_statistics(pipe, data, CPU)
    read = lambda name: json.loads((ROOT / "results" / name).read_text())  # noqa: E731
    summary, controls, seeds = read("summary.json"), read("controls.json"), read("verdicts_across_seeds.json")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "blocker").write_text("a file where a folder is meant")
    (tmp / "folder").mkdir(exist_ok=True)
    fig = plt.figure()
    env = dict(
        cfg=cfg, sae=sae, clf=clf, pipe=pipe, x=x, y=y, maps=maps, contributions=contributions, data=data,
        values=values, indices=indices, stats=stats, tmp=tmp, summary=summary, controls=controls, seeds=seeds,
        sel=kh.Selection(torch.arange(N), x, y, torch.full((N,), 0.9), n_requested=2),
        history={"ae": {"fvu": [0.5, 0.4], "val_fvu": [0.5, 0.45], "aux_loss": [0.1, 0.1],
                        "dormant_fraction": [0.0, 0.0]},
                 "clf": {"loss": [1.0, 0.8], "acc": [0.5, 0.6], "val_acc": [0.5, 0.55]}},
        opt=kh.make_adam(sae.parameters(), 1e-3), fig=fig, png=kh.png_bytes(fig), rgb=np.zeros((4, 4, 3), np.uint8),
        watch=kh.Stopwatch(),
    )
    plt.close(fig)
    env["metrics_clf"] = kh.evaluate_classifier(sae, clf, data, CPU)
    env["summary_path"] = kh.write_summary(summary, tmp / "summary.json")
    env["checkpoint"] = kh.save_checkpoint(tmp / cfg.checkpoint_name(), cfg, sae, clf)
    env["unit_page"] = kh.write_unit_browser(stats, sae, data, tmp / "units.html")
    env["explorer_page"] = kh.write_explorer(pipe, data, tmp / "explorer.html", cfg, stats)
    env["notebook"] = tmp / "nb.ipynb"
    env["notebook"].write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    # the perturbation family: one perturbation method's maps beside the gradient maps, their statistics
    env["pmaps"] = {**maps, "occlusion": kh.occlusion(pipe, x, y, sliding_window_shapes=7, strides=7)}
    env["families"] = {"gradient": ["integrated", "simple"], "perturbation": ["occlusion"]}
    env["pcross"] = kh.cross_method_statistics(env["pmaps"], x=x, labels=y)
    env["family"] = kh.family_agreement(env["pmaps"], x, y, env["families"])
    # the planted shortcut: the N images as a Fashion-MNIST of its ten classes (Shirts, T-shirts, others), planted
    env["fmnist"] = kh.FashionMNIST(x, torch.tensor([6, 0, 6, 0, 1, 2]), x, torch.tensor([6, 0, 6, 0, 1, 2]))
    env["planted"] = kh.plant_shortcut(env["fmnist"], "certified")
    env["shortcut"] = _shortcut_result()
    # the variants study: a planted dictionary of 32 atoms (60 + 20 images, ten classes), the learned codes of its
    # test images, the study's result
    env["pd"] = kh.planted_dictionary("incoherent", n_atoms=32, mean_l0=4.0, n_train=60, n_test=20)
    env["pd_learned_codes"] = sae.encode(env["pd"].data.x_test).detach()
    env["variants"] = _variants_result()
    return env


def _shortcut_result() -> dict:
    """The committed planted-shortcut result (``results/shortcut.json``) once it exists; until then ``run_shortcut``'s
    top-level keys with nothing scored: enough for the door, which refuses every bad-input case before any of it is
    read (a real result comes from training dozens of models: ``tests/conftest.py``'s ``shortcut_tiny``)."""
    path = ROOT / "results" / "shortcut.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"schema_version": 1, "variants": list(kh.SHORTCUT_VARIANTS), "seeds": [0],
            "per_seed": {v: {} for v in kh.SHORTCUT_VARIANTS}, "summary": {}, "markers": {}, "sizes": {"ns": []},
            "planting": {v: {} for v in kh.SHORTCUT_VARIANTS}}


def _variants_result() -> dict:
    """The committed variants result (``results/variants.json``) once it exists; until then ``run_variants``' top-level
    keys with nothing measured: enough for the door, which refuses every bad-input case before any of it is read (a
    real result comes from training dozens of models: ``tests/conftest.py``'s ``variants_tiny``)."""
    path = ROOT / "results" / "variants.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"schema_version": 1, "kinds": list(kh.SAE_KINDS), "targets": [], "stability_target": 0, "seeds": [0],
            "calibration": {}, "frontier": {}, "by_seed": {}, "anchors": {"pca": {}}, "stability": {}, "answer": {},
            "planted": {}}


# --- families: the wrong values of one kind of parameter ----------------------------------------------------

@dataclass
class Ctx:
    """Where a family is used: the function, the parameter, its default (``inspect.Parameter.empty`` if none)
    and whether ``None`` is a valid value."""

    fn: str
    param: str
    default: object
    optional: bool
    options: tuple = ()


@dataclass
class Family:
    """``bad(ctx)``: ``[(label, make(env) -> a wrong value, extra regex the message must also match)]``;
    ``valid(env, ctx)``: a valid value (for required parameters)."""

    bad: Callable[[Ctx], list]
    valid: Callable[[dict, Ctx], object] | None = None


def _none(ctx: Ctx) -> list:
    return [] if ctx.optional else [("None", lambda e: None, "")]


def _const(*items) -> Callable[[Ctx], list]:
    """Wrong values that do not depend on the env: ``(label, value, extra)``, plus None unless it is valid."""
    return lambda ctx: [*_none(ctx), *((label, (lambda e, v=value: v), extra) for label, value, extra in items)]


def _misspelt(name: str) -> str:
    return name[:-1] if len(name) > 3 else name + "x"


def _closed(ctx: Ctx) -> list:
    """A misspelt name (the error names the closest valid one), a number, None."""
    name = ctx.default if isinstance(ctx.default, str) else next(o for o in ctx.options if isinstance(o, str))
    return [("misspelt", lambda e: _misspelt(name), rf"did you mean '{re.escape(name)}'"),
            ("number", lambda e: 5, ""), *_none(ctx)]


def _closed_seq(ctx: Ctx) -> list:
    """A list with one misspelt name, one name not in a list, None."""
    name = ctx.options[0]
    return [("misspelt", lambda e: [name, _misspelt(name)], rf"did you mean '{re.escape(name)}'"),
            ("a-string", lambda e: name, ""), *_none(ctx)]


def _with_nan(t: torch.Tensor, index=(0, 3)) -> torch.Tensor:
    t = t.clone()
    t[index] = math.nan
    return t


IMAGES_BAD = [("array", lambda e: e["x"].numpy(), ""), ("uint8", lambda e: (e["x"] * 255).to(torch.uint8), "255"),
              ("0..255", lambda e: e["x"] * 255, "255"), ("nan", lambda e: _with_nan(e["x"]), "NaN"),
              ("shape", lambda e: e["x"][:, :783], "783")]


def _result(part: Callable[[dict], object]) -> Family:
    """A function's result dict (in memory or read back from JSON): wrong values None, a list, a dict of other keys,
    and (for a part of the summary) the whole summary."""
    def bad(ctx):
        out = [*_none(ctx), ("list", lambda e: [], ""), ("other-dict", lambda e: {"unexpected": 1}, "")]
        return out + ([("whole-summary", lambda e: e["summary"], "")] if part is not _summary else [])
    return Family(bad, lambda e, ctx: part(e))


def _summary(e):
    return e["summary"]


def _validation(key):
    return lambda e: e["summary"]["validation"][key]


MAPS_BAD = [("a-tensor", lambda e: e["maps"]["simple"], ""),
            ("nan", lambda e: {**e["maps"], "simple": _with_nan(e["maps"]["simple"])}, "NaN"),
            ("shape", lambda e: {m: v[:, :783] for m, v in e["maps"].items()}, "")]
LABELS_BAD = [("float", lambda e: e["y"].float(), ""), ("length", lambda e: e["y"][:-1], ""),
              ("out-of-range", lambda e: torch.full((N,), C), "")]


def _family(bad: list, valid=None) -> Family:
    return Family(lambda ctx: [*_none(ctx), *bad], valid)


FAMILIES: dict[str, Family] = {
    "config": Family(_const(("dict", {"k": K}, r"Config\(")), lambda e, c: e["cfg"]),
    "autoencoder": _family([("classifier", lambda e: e["clf"], ""), ("pipeline", lambda e: e["pipe"], r"\.sae")],
                           lambda e, c: e["sae"]),
    "classifier": _family([("autoencoder", lambda e: e["sae"], ""), ("pipeline", lambda e: e["pipe"], r"\.clf")],
                          lambda e, c: e["clf"]),
    "pipeline": _family([("autoencoder", lambda e: e["sae"], ""), ("classifier", lambda e: e["clf"], "")],
                        lambda e, c: e["pipe"]),
    "model": _family([("string", lambda e: "model", ""), ("autoencoder", lambda e: e["sae"], "(?i:autoencoder)"),
                      ("classifier-on-codes", lambda e: e["clf"], "")], lambda e, c: e["pipe"]),
    "dataset": _family([("dict", lambda e: {"x_test": e["x"]}, ""), ("tuple", lambda e: (e["x"], e["y"]), "")],
                       lambda e, c: e["data"]),
    "dataset_or_none": Family(lambda c: [("dict", lambda e: {"x_test": e["x"]}, ""),
                                         ("tuple", lambda e: (e["x"], e["y"]), "")], lambda e, c: e["data"]),
    "device": Family(_const(("number", 5, ""), ("unknown", "gpu", "")), lambda e, c: CPU),
    "seed": Family(_const(("negative", -1, ""), ("float", 1.5, ""), ("string", "0", "")), lambda e, c: 0),
    "count": Family(_const(("negative", -1, ""), ("float", 2.5, ""), ("string", "3", ""), ("bool", True, "")),
                    lambda e, c: 2),
    "number": Family(_const(("nan", math.nan, ""), ("string", "0.5", "")), lambda e, c: 0.5),
    "fraction": Family(_const(("nan", math.nan, ""), ("above-1", 1.5, ""), ("string", "0.5", "")), lambda e, c: 0.5),
    "flag": Family(_const(("string", "False", ""), ("int", 1, "")), lambda e, c: False),
    "closed": Family(_closed, lambda e, c: c.default if isinstance(c.default, str) else c.options[0]),
    "closed_seq": Family(_closed_seq, lambda e, c: list(c.options)),
    "methods": Family(lambda c: _closed_seq(Ctx(c.fn, c.param, c.default, c.optional, tuple(kh.METHOD_LABELS))),
                      lambda e, c: ["integrated", "simple"]),
    "images": _family(IMAGES_BAD, lambda e, c: e["x"]),
    "batch": _family([("int", lambda e: (e["x"] * 255).long(), ""), ("shape", lambda e: e["x"][:, :783], "")],
                     lambda e, c: e["x"]),
    "image": _family([("shape", lambda e: e["x"][0, :700], "784"), ("0..255", lambda e: e["x"][0] * 255, "")],
                     lambda e, c: e["x"][0]),
    "labels": _family(LABELS_BAD, lambda e, c: e["y"]),
    "label_ids": _family([b for b in LABELS_BAD if b[0] != "length"], lambda e, c: e["y"]),
    "labels_n": _family([b for b in LABELS_BAD if b[0] != "out-of-range"], lambda e, c: e["y"]),
    "maps": _family(MAPS_BAD, lambda e, c: e["maps"]),
    "contributions": _family([("shape", lambda e: e["contributions"][:, :5], ""),
                              ("nan", lambda e: _with_nan(e["contributions"]), "NaN")],
                             lambda e, c: e["contributions"]),
    "selection": _family([("tuple", lambda e: (e["x"], e["y"]), "")], lambda e, c: e["sel"]),
    "unit_stats": _family([("dict", lambda e: {"classes": ["a"]}, ""), ("table", lambda e: kh.unit_table(e["stats"]),
                                                                         "")], lambda e, c: e["stats"]),
    "classes": Family(_const(("string", "abc", ""), ("numbers", [1, 2, 3], "")), lambda e, c: list(e["data"].classes)),
    "save": Family(lambda c: [("number", lambda e: 5, ""), ("a-folder", lambda e: str(e["tmp"] / "folder"),
                                                             "folder")]),
    "folder": _family([("number", lambda e: 5, ""), ("a-file", lambda e: str(e["tmp"] / "blocker"), "file")],
                      lambda e, c: str(e["tmp"] / "out")),
    "out_path": _family([("number", lambda e: 5, ""), ("a-folder", lambda e: str(e["tmp"] / "folder"), "folder")],
                        lambda e, c: str(e["tmp"] / "out.bin")),
    "in_path": _family([("number", lambda e: 5, ""), ("a-folder", lambda e: str(e["tmp"] / "folder"), "folder")]),
    "timer": Family(lambda c: [("number", lambda e: 5, ""), ("string", lambda e: "watch", "")]),
    "callable": Family(_const(("number", 5, "")), lambda e, c: (lambda *a: None)),
    "text": Family(_const(("number", 5, "")), lambda e, c: "text"),
    "int_list": Family(_const(("string", "5", ""), ("negative", [2, -1], ""), ("float", [2.5], "")),
                       lambda e, c: [2]),
    "generator": Family(lambda c: [("number", lambda e: 5, "")]),
    "optimizer": _family([("module", lambda e: e["sae"], "")], lambda e, c: e["opt"]),
    "figure": Family(_const(("number", 5, "")), lambda e, c: e["fig"]),
    "fractions": Family(_const(("nan", np.full(H, math.nan), "NaN"), ("counts", np.full(H, 3.0), "counts"),
                               ("length", np.full(H + 1, 0.5), "")), lambda e, c: np.full(H, 0.5)),
    "widths": Family(_const(("empty", (), ""), ("negative", (16, -1), ""), ("string", "16", "")), lambda e, c: (16, 8)),
    "dict": Family(_const(("number", 5, ""), ("list", [], "")), lambda e, c: {}),
    "list": Family(_const(("number", 5, ""), ("string", "abc", "")), lambda e, c: []),
    "bytes": Family(_const(("string", "text", "")), lambda e, c: b"bytes"),
    "numbers": Family(_const(("nan", [0.1, math.nan], "NaN"), ("inf", [0.1, math.inf], "inf"), ("string", "abc", ""),
                             ("empty", [], "")), lambda e, c: [0.1, 0.2, 0.3]),
    "matrix": _family([("nan", lambda e: _with_nan(e["maps"]["simple"]).numpy(), "NaN"),
                       ("shape", lambda e: e["maps"]["simple"][:, :783].numpy(), "")],
                      lambda e, c: e["maps"][{"a": "simple", "b": "integrated"}.get(c.param, "simple")].numpy()),
    "numbers_or_nan": Family(_const(("inf", [0.1, math.inf], "inf"), ("string", "abc", "")),
                             lambda e, c: [0.1, math.nan]),
    "label_vector": _family([("float", lambda e: e["y"].float(), "")], lambda e, c: e["y"]),
    "mask": Family(_const(("float", np.ones((N, 784)), ""), ("shape", np.ones((N, 783), bool), ""))),
    "codes_values": _family([("shape", lambda e: e["values"][:, :2], ""), ("int", lambda e: e["indices"], "")],
                            lambda e, c: e["values"]),
    "codes_indices": _family([("shape", lambda e: e["indices"][:, :2], ""), ("float", lambda e: e["values"], "")],
                             lambda e, c: e["indices"]),
    "codes": _family([("shape", lambda e: torch.zeros(N, H - 1), "")], lambda e, c: e["sae"].encode(e["x"]).detach()),
    "unit_mask": _family([("float", lambda e: torch.zeros(H), ""),
                          ("shape", lambda e: torch.zeros(H - 1, dtype=torch.bool), "")],
                         lambda e, c: torch.zeros(H, dtype=torch.bool)),
    "pre": _family([("shape", lambda e: torch.zeros(N, H - 1), "")], lambda e, c: torch.zeros(N, H)),
    "backend": Family(_const(("number", 5, ""))),
    "parameters": Family(_const(("number", 5, ""), ("empty", [], "")), lambda e, c: list(e["sae"].parameters())),
    "view_ids": _family([("float", lambda e: torch.zeros(N), ""),
                         ("shape", lambda e: torch.zeros(N - 1, dtype=torch.long), "")],
                        lambda e, c: torch.zeros(N, dtype=torch.long)),
    "baselines": Family(lambda c: [("nan", lambda e: _with_nan(e["x"][:1], (0, 2)), "NaN"),
                                   ("count", lambda e: e["x"][:2], ""), ("0..255", lambda e: e["x"] * 255, "255")]),
    "removed": _family([("float", lambda e: torch.zeros_like(e["x"]), ""), ("shape", lambda e: torch.zeros(N, 783,
                                                                                                        dtype=torch.bool),
                                                                            "")], lambda e, c: e["x"] == 0),
    "scores": _family([("nan", lambda e: _with_nan(e["maps"]["simple"]), "NaN"), ("shape", lambda e: e["x"][:, :783],
                                                                                    "")],
                      lambda e, c: e["maps"]["simple"]),
    "map_rows": _family([("dict", lambda e: e["maps"], ""), ("nan", lambda e: _with_nan(e["maps"]["simple"]), "NaN"),
                         ("shape", lambda e: e["maps"]["simple"][:, :783], "")],
                        lambda e, c: e["x"] if c.param == "x" else e["maps"]["simple"]),
    "history_plot": Family(lambda c: [("list", lambda e: [], ""), ("other-dict", lambda e: {"unexpected": 1}, ""),
                                      ("whole-summary", lambda e: e["summary"], "")], lambda e, c: e["history"]),
    "plot_methods": Family(lambda c: [("misspelt", lambda e: ["integrated", "simpl"], "did you mean 'simple'"),
                                      ("misspelt-name", lambda e: "simpl", "did you mean 'simple'")],
                           lambda e, c: ["integrated", "simple"]),
    "image_maps": _family([("a-tensor", lambda e: e["maps"]["simple"][0], ""),
                           ("nan", lambda e: {m: _with_nan(v[0], 3) for m, v in e["maps"].items()}, "NaN"),
                           ("shape", lambda e: {m: v[0, :700] for m, v in e["maps"].items()}, "784")],
                          lambda e, c: {m: v[0] for m, v in e["maps"].items()}),
    "training_context": _family([("dict", lambda e: {"cfg": e["cfg"]}, "")],
                                lambda e, c: kh.TrainingContext(e["cfg"], torch.zeros(()), 10, False)),
    "init": Family(_const(("nan", torch.full((N, 784), math.nan), "NaN"), ("shape", torch.zeros(2, 784), ""))),
    "score_rows": _family([("nan", lambda e: _with_nan(e["maps"]["simple"]), "NaN"),
                           ("1-D", lambda e: e["maps"]["simple"][0], "")], lambda e, c: e["maps"]["simple"]),
    "orders": _family([("float", lambda e: torch.rand(1, N, 784), ""), ("shape", lambda e: torch.zeros(N, 784,
                                                                                                    dtype=torch.long),
                                                                         "")],
                      lambda e, c: kh.removal_order(e["maps"]["simple"])[None]),
    "curves": _family([("nan", lambda e: torch.full((N, 5), math.nan), "NaN"), ("1-D", lambda e: torch.zeros(5), "")],
                      lambda e, c: torch.rand(N, 5)),
    "rgb": _family([("float", lambda e: np.zeros((4, 4, 3)), ""), ("shape", lambda e: np.zeros((4, 4), np.uint8), "")],
                   lambda e, c: e["rgb"]),
    "calls": Family(_const(("number", 5, ""), ("not-callable", [5], "")), lambda e, c: []),
    "pairs": Family(_const(("string", "ab", ""), ("short-row", [("a",)], "")), lambda e, c: [("a", "b")]),
    "offset": Family(_const(("float", 1.5, ""), ("string", "1", ""), ("too-far", 28, "")), lambda e, c: 1),
    "unit_array": _family([("length", lambda e: e["stats"].freq_test[:-1], "")]),
    "encoder": _family([("number", lambda e: 5, ""), ("classifier", lambda e: e["clf"], "")], lambda e, c: e["sae"]),
    "seed_rows": _result(lambda e: {s: run["rows"] for s, run in e["seeds"]["per_seed"].items()}),
    "verdict_rows": Family(_const(("dict", {"unexpected": 1}, ""), ("rows-without-keys", [{"ordering": "x"}], "")),
                           lambda e, c: e["summary"]["verdicts"]),
    "k_sweep_rows": Family(_const(("dict", {"rows": []}, ""), ("rows-without-k", [{"fvu": 0.1}], "")),
                           lambda e, c: json.loads((ROOT / "results" / "k_sweep.json").read_text())["rows"]),
    "checks": Family(_const(("list", [], ""), ("not-callable", {"a": 5}, "")), lambda e, c: {}),
    "timings": Family(_const(("list", [], ""), ("not-a-number", {"data": "x"}, "")), lambda e, c: {"total": 1.0}),
    "figure_seconds": Family(_const(("list", [], ""), ("not-numbers", {"plot": ["x"]}, "")),
                             lambda e, c: {"plot_x": [0.5]}),
    "metrics": _result(lambda e: {"autoencoder": kh.evaluate_autoencoder(e["sae"], e["data"], CPU),
                                  "classifier": e["metrics_clf"]}),
    "image_stats": _result(lambda e: kh.image_attribution_stats(e["x"][0], {m: v[0] for m, v in e["maps"].items()})),
    "agreement": _result(lambda e: kh.contribution_ablation_agreement(e["stats"])),
    "stability": _result(lambda e: kh.seed_stability({0: e["sae"].W_dec.detach(), 1: e["sae"].W_dec.detach().flip(0)})),
    "top_contributions": Family(_const(("one-array", (np.zeros((H, 2)),), ""), ("shape", (np.zeros((H - 1, 2)),
                                                                                          np.zeros((H - 1, 2))), ""))),
    "atoms": _family([("nan", lambda e: np.full((H, 784), math.nan), "NaN"),
                      ("shape", lambda e: np.ones((H, 700)), "")],
                     lambda e, c: e["sae"].W_dec.detach()),
    "atoms_map": _family([("list", lambda e: [e["sae"].W_dec.detach()], ""), ("one-seed", lambda e: {0: e["sae"]}, "")],
                         lambda e, c: {0: e["sae"].W_dec.detach(), 1: e["sae"].W_dec.detach().flip(0)}),
    "atoms_control": Family(lambda c: [("list", lambda e: [e["sae"].W_dec.detach()], "")]),
    "cosines": _family([("nan", lambda e: np.full(H, math.nan), "NaN"), ("2-D", lambda e: np.zeros((H, 2)), "")],
                       lambda e, c: np.linspace(0, 1, H)),
    "unit_flags": _family([("float", lambda e: np.zeros(H), ""), ("length", lambda e: np.ones(H - 1, bool), "")],
                          lambda e, c: np.arange(H) % 2 == (c.param == "group")),
    "components": Family(_const(("shape", torch.zeros(3, 700), ""), ("nan", torch.full((3, 784), math.nan), "NaN"))),
    "mean_image": Family(_const(("shape", torch.zeros(700), ""), ("nan", torch.full((784,), math.nan), "NaN"))),
    "linear_code": _family([("autoencoder", lambda e: e["sae"], "")], lambda e, c: kh.LinearCode()),
    "models": _family([("list", lambda e: [e["pipe"]], ""), ("not-a-model", lambda e: {"a": 5}, "")],
                      lambda e, c: {"pipe": e["pipe"]}),
    "index_tensor": _family([("float", lambda e: torch.zeros(N), ""), ("length", lambda e: torch.arange(N - 1), "")],
                            lambda e, c: torch.arange(N)),
    "fraction_tensor": _family([("nan", lambda e: torch.full((N,), math.nan), "NaN"),
                                ("length", lambda e: torch.full((N - 1,), 0.9), "")],
                               lambda e, c: torch.full((N,), 0.9)),
    "flags_tensor": Family(_const(("float", torch.zeros(N), ""), ("length", torch.zeros(N - 1, dtype=torch.bool), ""))),
    "text_or_none": Family(_const(("number", 5, ""))),
    "param_name": Family(lambda c: [("misspelt", lambda e: "SAMPLES_PER_CLAS", "did you mean 'SAMPLES_PER_CLASS'"),
                                    ("number", lambda e: 5, "")], lambda e, c: "K"),
    "param_kind": Family(lambda c: [("misspelt", lambda e: "in", "did you mean 'int'"), ("number", lambda e: 5, "")],
                         lambda e, c: "int"),
    "page_name": Family(_const(("number", 5, ""), ("quote", "a'b.html", "")), lambda e, c: "page.html"),
    # the perturbation family
    "perturbation_maps": _family([("a-tensor", lambda e: e["pmaps"]["occlusion"], ""),
                                  ("nan", lambda e: {**e["pmaps"], "occlusion": _with_nan(e["pmaps"]["occlusion"])},
                                   "NaN"),
                                  ("shape", lambda e: {m: v[:, :783] for m, v in e["pmaps"].items()}, "")],
                                 lambda e, c: e["pmaps"]),
    "method_families": _family([("one-family", lambda e: {"gradient": ["integrated", "simple"]}, ""),
                                ("a-name", lambda e: {**e["families"], "perturbation": "occlusion"}, ""),
                                ("list", lambda e: list(e["families"].values()), "")],
                               lambda e, c: e["families"]),
    "feature_mask": Family(lambda c: [("float", lambda e: kh.superpixel_grid().float(), ""),
                                      ("shape", lambda e: torch.zeros(27, 28, dtype=torch.long), ""),
                                      ("negative", lambda e: torch.full((784,), -1), ""), ("number", lambda e: 5, "")]),
    "window": Family(_const(("zero", 0, ""), ("too-big", 29, ""), ("three", (4, 4, 4), ""), ("string", "4", ""))),
    "choices": Family(_const(("string", "topk", ""), ("numbers", (1, 2), ""))),
    # the planted shortcut
    "region_mask": _family([("float", lambda e: np.full(784, 0.5), ""),
                            ("shape", lambda e: torch.ones(783, dtype=torch.bool), "783"),
                            ("string", lambda e: "abc", "")],
                           lambda e, c: kh.Marker(0, 0).mask()),
    "marker": _family([("list", lambda e: [0, 0, 4], ""), ("dict", lambda e: {"row": 0, "col": 0}, "")]),
    "planting": _family([("dict", lambda e: e["planted"].planting.to_dict(), "")]),
    "marks": _family([("float", lambda e: torch.zeros(N, 2), ""),
                      ("shape", lambda e: torch.zeros(N, 3, dtype=torch.bool), "")]),
    "true_classes": _family([("float", lambda e: torch.zeros(N), ""),
                             ("length", lambda e: torch.zeros(N - 1, dtype=torch.long), "")]),
    "coins": _family([("shape", lambda e: torch.rand(N, 3, dtype=torch.float64), ""),
                      ("int", lambda e: torch.zeros(N, 4, dtype=torch.long), "")]),
    "shortcut": _result(lambda e: e["shortcut"]),
    "family_stats": _result(lambda e: e["family"]),
    # the variants study
    "planted_atoms": _family([("1-D", lambda e: e["pd"].atoms[0], ""), ("string", lambda e: "atoms", ""),
                              ("nan", lambda e: _with_nan(e["pd"].atoms), "NaN")], lambda e, c: e["pd"].atoms),
    "learned_atoms": _family([("fewer", lambda e: e["sae"].W_dec.detach()[:4], ""), ("string", lambda e: "atoms", ""),
                              ("nan", lambda e: _with_nan(e["sae"].W_dec.detach()), "NaN")],
                             lambda e, c: e["sae"].W_dec.detach()),
    "code_rows": _family([("rows", lambda e: e["pd"].codes_test[:-1], ""), ("1-D", lambda e: e["pd"].codes_test[0], ""),
                          ("string", lambda e: "codes", "")]),
    "planted_codes": Family(lambda c: [*_none(c), ("columns", lambda e, p=c.param: getattr(e["pd"], p)[:, :-1], ""),
                                       ("rows", lambda e, p=c.param: getattr(e["pd"], p)[:-1], ""),
                                       ("int", lambda e, p=c.param: getattr(e["pd"], p).long(), "")]),
    "firing_rates": _family([("length", lambda e: e["pd"].firing_rates[:-1], ""),
                             ("above-1", lambda e: torch.full((32,), 1.5, dtype=torch.float64), ""),
                             ("array", lambda e: e["pd"].firing_rates.numpy(), "")]),
    "rule": _family([("shape", lambda e: e["pd"].rule[:-1], ""), ("int", lambda e: e["pd"].rule.long(), "")]),
    "label_atoms": _family([("float", lambda e: e["pd"].label_atoms.float(), ""),
                            ("out-of-range", lambda e: torch.full_like(e["pd"].label_atoms, 32), "")]),
    "atoms_maps": _family([("list", lambda e: [e["sae"].W_dec.detach()], ""), ("one-seed", lambda e: {0: e["sae"]}, ""),
                           ("nan", lambda e: {0: e["sae"].W_dec.detach(), 1: _with_nan(e["sae"].W_dec.detach())},
                            "NaN")], lambda e, c: {0: e["sae"].W_dec.detach(), 1: e["sae"].W_dec.detach().flip(0)}),
    "cosine_list": Family(_const(("string", "0.5", ""), ("above-1", [1.5], ""), ("nan", [math.nan], ""),
                                 ("empty", [], "")), lambda e, c: [0.5]),
    "planted_sizes": Family(_const(("number", 5, ""), ("list", [], ""),
                                   ("misspelt", {"n_atom": 32}, "did you mean 'n_atoms'"),
                                   ("negative", {"n_train": -1}, "n_train"),
                                   ("nan", {"mean_l0": math.nan}, "mean_l0"))),
    "variants_result": _result(lambda e: e["variants"]),
    # results, in memory or read back from results/*.json
    "summary": _result(_summary),
    "validation": _result(lambda e: e["summary"]["validation"]),
    **{key: _result(_validation(key)) for key in ("faithfulness", "completeness", "randomization", "object_focus",
                                                  "unit_deletion", "cross_method")},
    "units_summary": _result(lambda e: e["summary"]["units"]),
    "controls": _result(lambda e: e["controls"]),
    "seeds": _result(lambda e: e["seeds"]),
    "classifier_metrics": _result(lambda e: e["metrics_clf"]),
    "history": _result(lambda e: e["history"]),
}


# Parameter names that mean the same thing in every function (checked before the annotation).
NAMES = {
    "cfg": "config", "sae": "autoencoder", "clf": "classifier", "pipeline": "pipeline", "model": "model",
    "data": "dataset", "device": "device", "seed": "seed", "selection": "selection",
    "x": "images", "inputs": "images", "x_train": "images", "x_val": "images", "image": "image",
    "y": "labels", "labels": "labels", "target": "labels", "y_train": "labels", "y_val": "labels",
    "maps": "maps", "contributions": "contributions", "methods": "methods", "classes": "classes",
    "save": "save", "save_dir": "folder", "ckpt_dir": "folder", "folder": "folder", "root": "folder",
    "system_dir": "folder", "runs_dir": "folder", "figure_dir": "folder", "timer": "timer",
    "generator": "generator", "opt": "optimizer", "fig": "figure", "validation": "validation",
    "comp": "completeness", "rand": "randomization", "focus": "object_focus", "cross_stats": "cross_method",
    "controls": "controls", "history": "history", "metrics_clf": "classifier_metrics", "usage": "fractions",
    "usage_train": "fractions", "stats": "unit_stats",
    "threshold": "fraction", "level": "fraction", "fraction": "fraction", "confidence": "fraction",
    "purity_threshold": "fraction", "values": "codes_values", "indices": "codes_indices", "z": "codes",
    "backend": "backend", "dormant": "unit_mask", "since_fired": "unit_mask", "sums": "pre", "pre": "pre",
    "ctx": "training_context", "params": "parameters", "view": "view_ids", "baselines": "baselines",
    "removed": "removed", "scores": "scores", "orders": "orders", "curves": "curves", "rows_per_seed": "seed_rows",
    "cross_method": "cross_method", "checks": "checks", "min_cosine": "cosines", "group": "unit_flags",
    "rest": "unit_flags", "atoms_a": "atoms", "atoms_b": "atoms", "atoms": "atoms_map", "control": "atoms_control",
    "stability": "stability", "components": "components", "mean": "mean_image", "code": "linear_code",
    "models": "models", "rgb": "rgb", "calls": "calls", "agreement": "agreement", "metrics": "metrics",
    "timings": "timings",
    "top_contributions": "top_contributions", "explorer": "page_name", "unit_browser": "page_name",
    "label": "text", "help": "text", "pattern": "text", "text": "text", "name": "text", "source": "text",
}

CLOSED = {  # closed sets of names: parameter -> the valid names (the first one is used as the valid value)
    "method": kh.IG_METHODS, "output": kh.OUTPUTS, "rule": kh.UNIT_RULES, "substrate": kh.SUBSTRATES,
    "mode": ("deletion", "insertion"), "ranking": ("signed", "abs"), "schedule": kh.LR_SCHEDULES,
    "dtype": kh.EXPLORER_DTYPES, "statistic": (None, "value", "null", "excess"), "ig_method": kh.IG_METHODS,
    "ae_lr_schedule": kh.LR_SCHEDULES, "clf_lr_schedule": kh.LR_SCHEDULES, "sae_kind": kh.SAE_KINDS,
    "distance_mode": ("cosine", "euclidean"),
}
CLOSED_SEQ = {"substrates": kh.SUBSTRATES, "variants": kh.RANDOMIZATION_VARIANTS,
              "representations": kh.REPRESENTATIONS}

ANNOTATIONS = [  # (regex on the annotation without "| None", family), first match wins
    (r"^Config$", "config"), (r"^KSparseAutoencoder$", "autoencoder"), (r"^SparseCodeClassifier$", "classifier"),
    (r"^SparseCodePipeline$", "pipeline"), (r"^(nn|torch\.nn)\.Module$", "model"), (r"^FashionMNIST$", "dataset"),
    (r"^torch\.device$", "device"), (r"^UnitStats$", "unit_stats"), (r"^Selection$", "selection"),
    (r"^bool$", "flag"), (r"^int$", "count"), (r"^float$", "number"),
    (r"^(Sequence\[int\]|tuple\[int, \.\.\.\])$", "int_list"),
    (r"^Callable", "callable"), (r"^str \| os\.PathLike$", "out_path"),
]


def family_of(fn: str, param: inspect.Parameter) -> tuple[str | None, Ctx]:
    """The family of ``param`` of ``fn`` (``SPECIAL`` first, then its name, then its annotation), and its context."""
    ann = param.annotation if isinstance(param.annotation, str) else ""
    optional = param.default is None or "None" in ann
    core = re.sub(r"\s*\|\s*None$", "", re.sub(r"^None\s*\|\s*", "", ann)).strip()
    ctx = Ctx(fn, param.name, param.default, optional)
    special = SPECIAL.get(fn, {}).get("families", {})
    if param.name in special:
        name = special[param.name]
        if isinstance(name, tuple):  # (family, options)
            name, ctx.options = name
        return name, ctx
    if param.name in CLOSED and (not ann or "str" in ann):
        ctx.options = CLOSED[param.name]
        return "closed", ctx
    if param.name in CLOSED_SEQ:
        ctx.options = CLOSED_SEQ[param.name]
        return "closed_seq", ctx
    if param.name in NAMES:
        return NAMES[param.name], ctx
    for pattern, name in ANNOTATIONS:
        if re.search(pattern, core):
            return name, ctx
    return None, ctx


# --- names that need an entry -------------------------------------------------------------------------------

SPECIAL: dict[str, dict] = {  # name -> {"families": {param: family or (family, options)}, "valid": env -> kwargs,
    #                                    "skip": {param: why it gets no case}}
    # --- configuration and notebook parameters
    "Config": {"families": {"clf_hidden": "widths", "confidence_threshold": "fraction", "dropout": "fraction"}},
    "check_parameter": {"families": {"name": "param_name"}, "valid": lambda e: {"value": 5},
                        "skip": {"value": "its kind depends on name: the hand-made cases cover every parameter"}},
    "check_parameters": {"families": {"params": "dict"}},
    "Parameter": {"families": {"kind": "param_kind", "choices": "choices"}, "valid": lambda e: {"default": 1},
                  "skip": {"default": "any value (the parameter's default)"}},
    "print_table": {"families": {"rows": "pairs"}},
    "as_flat_images": {"valid": lambda e: {"name": "x"}},  # its messages name the argument its caller names
    # --- data, models, training
    "FashionMNIST": {"families": {"x_test": "images", "y_test": "labels"},
                     "valid": lambda e: {"classes": e["data"].classes}},
    "validation_indices": {"families": {"y_train": "label_ids"}, "valid": lambda e: {"n_classes": C}},
    **dict.fromkeys(["densify", "firing_counts", "firing_frequency"], {"valid": lambda e: {"d_hidden": H}}),
    **{fn: {"families": {"x": "batch"}} for fn in ("classifier_views", "hflip", "view_of")},  # inside training steps:
    "fvu": {"families": {"x_hat": "batch", "x": "batch"}},  # kinds and shapes only (a value check is a host sync)
    "shift_images": {"families": {"x": "batch", "dy": "offset", "dx": "offset"}},
    "auxk_loss": {"families": {"residual": "batch"}},
    "autoencoder_step": {"valid": lambda e: {"since_fired": torch.zeros(H, dtype=torch.long), "sums": torch.zeros(4)}},
    "classifier_step": {"valid": lambda e: {"sums": torch.zeros(2)}},
    "train_classifier": {"families": {"sae": "encoder"}},
    "MatryoshkaAutoencoder": {"valid": lambda e: {"d_hidden": H, "k": K, "prefixes": (4, 16)}},
    "LinearCodePipeline": {"valid": lambda e: {"clf": kh.SparseCodeClassifier(d_hidden=784, hidden=(8,), n_classes=C)}},
    "save_checkpoint": {"families": {"history": "dict", "metrics": "dict"}},
    # --- statistics
    **{fn: {"families": {"values": "numbers"}} for fn in ("bootstrap_ci", "bootstrap_estimates")},
    **{fn: {"families": {"a": "matrix", "b": "matrix", "mask": "mask"}} for fn in ("rowwise_spearman",
                                                                                "top_fraction_iou")},
    "percentile_interval": {"families": {"estimates": "numbers_or_nan"}},  # NaN: a statistic undefined in a resample
    "summarize": {"families": {"values": "numbers_or_nan"}},  # NaN: an undefined statistic, left out and counted
    **{fn: {"families": {"labels": "label_vector", "y": "label_vector"}}  # labels without a class count
       for fn in ("partner_images", "balanced_subset")},
    **{fn: {"families": {"labels": "labels_n"}} for fn in ("randomization_check", "cascading_randomization")},
    # --- checks
    "correlation_matrix": {"families": {"stats": "cross_method", "key": ("closed", ("spearman_abs",))}},
    "ig_completeness": {"families": {"methods": ("closed_seq", kh.IG_METHODS)}},
    "road_impute": {"families": {"init": "init"}},
    "removal_order": {"families": {"scores": "score_rows"}},  # any number of pixels
    "gini_index": {"families": {"maps": "map_rows"}},
    "object_share": {"families": {"maps": "map_rows", "x": "map_rows"}},
    "cascading_randomization": {"families": {"labels": "labels_n"}, "valid": lambda e: {
        "maps_fn": lambda m: {"simple": kh.simple_gradients(m, e["x"], e["y"])}}},
    # --- units, stability, controls
    "Selection": {"families": {"y": "labels_n", "indices": "index_tensor", "confidence": "fraction_tensor",
                               "n_candidates": "dict", "fallback": "flags_tensor", "shortfalls": "dict",
                               "skipped": "list", "warning": "text_or_none"}},
    "UnitStats": {"families": dict.fromkeys([
        "freq_train", "freq_test", "n_fire", "hist", "hist_max", "top_images", "top_values", "band_images",
        "class_counts", "majority", "purity", "recall", "contribution", "ablation", "ablation_accuracy", "cofiring",
        "cofiring_jaccard", "dead", "descriptions"], "unit_array"),
        "valid": lambda e: {f: getattr(e["stats"], f) for f in e["stats"].__dataclass_fields__}},
    **{fn: {"families": {"data": "dataset_or_none"}, "valid": lambda e: {"seeds": [0]}}  # data: read only to train
       for fn in ("run_seed_stability", "seed_dictionaries")},
    "train_representation": {"families": {"name": ("closed", kh.REPRESENTATIONS[1:])}},
    "unit_claims": {"families": {"raw": "dict", "trained": ("closed", ("sae",))},
                    "valid": lambda e: {"raw": {"sae": {}, "pixels": {}}}},
    # --- figures
    "plot_faithfulness": {"families": {"result": "faithfulness"}},
    "plot_unit_deletion": {"families": {"result": "unit_deletion"}},
    "plot_training_history": {"families": {"history": "history_plot"}},  # None and {}: "no history" notes
    "plot_k_sweep": {"families": {"rows": "k_sweep_rows"}},
    **{fn: {"families": {"methods": "plot_methods"}} for fn in (  # one name alone is accepted here
        "plot_class_average_maps", "plot_comparison_grid", "render_comparison_grid", "plot_correlation_summary")},
    **{fn: {"families": {"maps": "image_maps", "methods": "plot_methods", "stats": "image_stats"},
            "valid": lambda e: {"maps": {m: v[0] for m, v in e["maps"].items()}}}
       for fn in ("plot_attribution_comparison", "image_attribution_stats")},
    "plot_unit_dashboard": {"valid": lambda e: {"units": [0]}},
    # --- reports and pages
    "build_summary": {"skip": {"extra": "any further summary entries"}},
    "headline_table": {"families": {"summary": "summary"}},
    "figure_timings": {"families": {"seconds": "figure_seconds"}},
    "unit_table_summary": {"families": {"units": "units_summary"}},
    "verdict_markdown": {"families": {"rows": "verdict_rows", "seeds": "seeds"}},
    "write_summary": {"families": {"summary": "dict"}, "valid": lambda e: {"summary": {"a": 1}}},
    **{fn: {"families": {"path": "in_path"}, "valid": lambda e, key=key: {"path": e[key]}} for fn, key in (
        ("load_checkpoint", "checkpoint"), ("read_summary", "summary_path"), ("read_unit_browser_data", "unit_page"),
        ("read_explorer_data", "explorer_page"), ("compact_notebook", "notebook"),
        ("stability_for_config", "summary_path"), ("seeds_for_config", "summary_path"))},
    **{fn: {"skip": {"run_params": "the notebook's run parameters: any of RUN_DEFAULTS' names"}}
       for fn in ("output_paths", "run_name")},
    "atomic_write_bytes": {"families": {"data": "bytes"}},
    # --- the perturbation family
    **{fn: {"families": {"feature_mask": "feature_mask"}} for fn in (
        "feature_ablation", "shapley_value_sampling", "kernel_shap", "lime")},
    "occlusion": {"families": {"sliding_window_shapes": "window", "strides": "window"}},
    "family_agreement": {"families": {"maps": "perturbation_maps", "families": "method_families",
                                      "labels": "labels_n"}},  # labels: any class ids (same-class partners)
    "plot_perturbation_maps": {"families": {"maps": "perturbation_maps", "reference": "plot_methods"}},
    "plot_family_agreement": {"families": {"family_stats": "family_stats"},
                              "valid": lambda e: {"cross_stats": e["pcross"]}},
    # --- the planted shortcut
    **{fn: {"families": {"variant": ("closed", kh.SHORTCUT_VARIANTS), "marker": "marker", "control": "marker",
                         "variants": ("closed_seq", kh.SHORTCUT_VARIANTS)}, "valid": lambda e: {"data": e["fmnist"]}}
       for fn in ("plant_shortcut", "run_shortcut")},
    "ShortcutData": {"families": {"planting": "planting", "clean": "dataset", "marks_train": "marks",
                                  "marks_test": "marks", "true_train": "true_classes", "true_test": "true_classes",
                                  "coins_train": "coins", "coins_test": "coins"},
                     "valid": lambda e: {f: getattr(e["planted"], f) for f in e["planted"].__dataclass_fields__}},
    **{fn: {"families": {"maps": "map_rows", "mask": "region_mask"}} for fn in (
        "relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game", "chance_level")},
    **{fn: {"families": {"shortcut": "shortcut", "variant": ("closed", kh.SHORTCUT_VARIANTS),
                         "score": ("closed", ("mass", "rank", "pointing"))}} for fn in (
        "shortcut_markdown", "plot_shortcut_maps", "plot_shortcut_localisation", "plot_shortcut_removal")},
    # --- the variants study
    "planted_dictionary": {"families": {"coherence": ("closed", tuple(kh.PLANTED_COHERENCES))},
                           "valid": lambda e: dict(n_atoms=32, mean_l0=4.0, n_train=60, n_test=20)},
    "PlantedDictionary": {"families": {"atoms": "planted_atoms", "codes_train": "planted_codes",
                                       "codes_test": "planted_codes", "firing_rates": "firing_rates", "rule": "rule",
                                       "label_atoms": "label_atoms",
                                       "coherence": ("closed", tuple(kh.PLANTED_COHERENCES))},
                          "valid": lambda e: {f: getattr(e["pd"], f) for f in e["pd"].__dataclass_fields__}},
    "recovery_scores": {"families": {"atoms": "planted_atoms", "learned": "learned_atoms", "baseline": "learned_atoms",
                                     "codes": "code_rows", "learned_codes": "code_rows"},
                        "valid": lambda e: {"codes": e["pd"].codes_test, "learned_codes": e["pd_learned_codes"]}},
    "recurrence": {"families": {"decoders": "atoms_maps", "encoders": "atoms_maps", "thresholds": "cosine_list"},
                   "valid": lambda e: {"n_boot": 10}},
    "run_variants": {"families": {"kinds": ("closed_seq", kh.SAE_KINDS), "planted": "planted_sizes",
                                  "coherences": ("closed_seq", tuple(kh.PLANTED_COHERENCES))},
                     "valid": lambda e: {"targets": [2, 4, 8]}},  # mean L0 targets within the tiny d_hidden
    **{fn: {"families": {"variants": "variants_result"}} for fn in (
        "variants_markdown", "plot_variants_frontier", "plot_variants_stability", "plot_variants_recovery")},
}


NOT_COVERED: dict[str, str] = {  # public callables without generated cases, and why
    "TrainingContext": "a NamedTuple record the training loop builds for the kind; checked where it is used "
                       "(autoencoder_step)",
    "TrainingTerms": "a NamedTuple record a kind's training_terms returns to the loop, not built by users",
}


# --- the cases ----------------------------------------------------------------------------------------------

def public_callables() -> dict[str, object]:
    return {name: getattr(kh, name) for name in kh.__all__ if callable(getattr(kh, name))}


def not_covered() -> dict[str, str]:
    """Public callables without generated cases, and why: ``NOT_COVERED``, exception classes and callables that
    take no argument."""
    out = dict(NOT_COVERED)
    for name, obj in public_callables().items():
        if isinstance(obj, type) and issubclass(obj, BaseException):
            out[name] = "an exception class: raised by the package, not called by users"
        elif (sig := _signature(obj)) is not None and not sig.parameters:
            out[name] = "takes no argument"
    return out


def _signature(obj) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _pattern(param: str, extra: str) -> str:
    """The message names the parameter, says what was expected (must/expected) and what came."""
    name = re.escape(param)
    return rf"(?s)(?=.*\b{name}\b)(?=.*\b(must|expected|needs)\b)(?=.*\b(got|contains|holds|has)\b)" + (
        f"(?=.*{extra})" if extra else "")


@dataclass
class Case:
    id: str
    fn: str
    param: str
    call: Callable[[dict], object]
    pattern: str


def _valid_kwargs(env: dict, fn: str, sig: inspect.Signature) -> dict:
    """Keyword arguments of a valid call: ``SPECIAL[fn]["valid"]`` first, then each required parameter's
    family's valid value."""
    kwargs = {k: v for k, v in SPECIAL.get(fn, {}).get("valid", lambda e: {})(env).items() if k in sig.parameters}
    for p in sig.parameters.values():
        if p.name in kwargs or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        family, ctx = family_of(fn, p)
        if family is None or FAMILIES[family].valid is None:
            raise LookupError(f"{fn}: no valid value for required parameter {p.name!r} (add SPECIAL[{fn!r}]['valid'])")
        kwargs[p.name] = FAMILIES[family].valid(env, ctx)
    return kwargs


def families(fn: str) -> dict[str, str | None]:
    """``{parameter: family}`` of public callable ``fn``."""
    sig = _signature(getattr(kh, fn))
    return {p.name: family_of(fn, p)[0] for p in sig.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def valid_kwargs(env: dict, fn: str) -> dict:
    """A valid call's keyword arguments for public callable ``fn`` (its required parameters)."""
    return _valid_kwargs(env, fn, _signature(getattr(kh, fn)))


def plan() -> tuple[list[Case], dict[str, list[str]]]:
    """Every generated case (values made lazily from the env) and, per public callable, the parameters left
    without a family (``unresolved``)."""
    cases, unresolved = [], {}
    for fn, obj in public_callables().items():
        sig = _signature(obj)
        if fn in not_covered() or sig is None:
            continue
        skip = SPECIAL.get(fn, {}).get("skip", {})
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in skip:
                continue
            family, ctx = family_of(fn, p)
            if family is None:
                unresolved.setdefault(fn, []).append(p.name)
                continue
            for label, make, extra in FAMILIES[family].bad(ctx):
                cases.append(Case(f"gen-{fn}-{p.name}-{label}", fn, p.name, _caller(obj, fn, sig, p.name, make),
                                  _pattern(p.name, extra)))
    return cases, unresolved


def _caller(obj, fn: str, sig: inspect.Signature, param: str, make):
    def call(env):
        kwargs = _valid_kwargs(env, fn, sig)
        kwargs[param] = make(env)
        return obj(**kwargs)
    return call
