"""What sparsity buys: every representation of ``ksae.controls`` trained (or loaded), scored, its pixel explanations
checked on one common image set, its units measured, and the SAE's unit claims held against the controls
(``run_controls``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ._util import (
    _check_bool,
    _check_choice,
    _check_device,
    _check_float,
    _check_images,
    _check_instance,
    _check_int,
    _check_ints,
    _check_path,
    _check_result,
    _describe,
    _jsonable,
    _model_dtype,
)
from .attribution import _check_pipeline, _check_target, decoder_weighted, integrated_gradients, simple_gradients
from .checks.across_models import cascading_randomization, faithfulness_gaps, unit_deletion_gaps
from .checks.sparseness import gini_index, object_share
from .checks.substrates import SUBSTRATES
from .config import Config
from .controls import (
    _EXPLAINED,
    _REPRESENTATION_LABELS,
    _UNIT_REPRESENTATIONS,
    REPRESENTATIONS,
    _accuracy_recovered,
    _check_representations,
    _control_checkpoint_name,
    _evaluate_representation,
    _explained_model,
    _load_or_train_control,
    _load_sae,
    _relabelling_null,
)
from .data import FashionMNIST
from .models import SparseCodePipeline
from .runtime import device_name
from .stability import run_seed_stability
from .stats import _rowwise_pearson, bootstrap_estimates, percentile_interval, summarize
from .units import contribution_ablation_agreement, unit_statistics

_CLAIM_PURITY = 0.9  # a unit is class-pure when at least this share of the test images it fires on is one class


_PURITY_BINS = 10  # the purity distribution: counts of live units in this many equal bins of [0, 1]


_N_BOOT = 2000  # bootstrap resamples of the claims and their differences (as ``bootstrap_ci``)


_CLAIMS = ("pure_share", "lowers_share", "agreement", "deletion_gap")  # the unit claims held against the controls


_CLAIM_LABELS = {"pure_share": f"share of live units that are class-pure (purity >= {_CLAIM_PURITY:.0%})",
                "lowers_share": "share of live units whose ablation lowers their class's logit",
                "agreement": "Pearson correlation of unit contribution and ablation drop",
                "deletion_gap": "unit-deletion AUC gap, random order minus contribution order (target logit)"}


_CODE_CLAIMS = ("pure_share",)  # claims about the code alone: the shuffled-label control shares the SAE's code, so
# it gives the same value by construction and is no control for them (reported, marked "applies": False)


def _representation_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Config) -> dict[str, torch.Tensor]:
    """Integrated gradients and simple gradients of any pixels -> logits ``model`` for ``x: [N, 784]``,
    ``y: [N]``, plus decoder-weighted where the model has a decoder (``SparseCodePipeline``): ``{method: [N, 784]}``."""
    maps = {"integrated": integrated_gradients(model, x, y, n_steps=cfg.ig_steps, method=cfg.ig_method).detach(),
            "simple": simple_gradients(model, x, y).detach()}
    if isinstance(model, SparseCodePipeline):
        maps["decoder"] = decoder_weighted(model, x, y).detach()
    return maps


@torch.no_grad()
def common_images(models: dict[str, nn.Module], data: FashionMNIST, threshold: float, n_per_class: int,
                  seed: int = 0) -> dict:
    """The test images that *every* model in ``models`` classifies correctly with softmax confidence >
    ``threshold``, ``n_per_class`` per class drawn at random (seeded; a class with fewer keeps all):
    ``{"indices": [N] sorted by class then index, "candidates": {class: n}, "per_class": {class: n}}``. The rule
    and its numbers are fixed beforehand (``Config.confidence_threshold``); no result on these images chooses it."""
    if not isinstance(models, dict) or not models or not all(isinstance(m, nn.Module) for m in models.values()):
        raise ValueError(f"models must be a non-empty dict of name -> model (torch.nn.Module), got "
                         f"{_describe(models)}")
    _check_instance("data", data, FashionMNIST)
    _check_float("threshold", threshold, low=0.0, high=1.0, high_open=True)
    _check_int("n_per_class", n_per_class, low=1)
    _check_int("seed", seed, low=0)
    ok = torch.ones(len(data.y_test), dtype=torch.bool)
    for model in models.values():
        device = next(model.parameters()).device
        probs = torch.cat([model(data.x_test[i:i + 4096].to(device)).softmax(1).cpu()
                           for i in range(0, len(data.x_test), 4096)])
        conf, pred = probs.max(1)
        ok &= (pred == data.y_test) & (conf > threshold)
    gen = torch.Generator().manual_seed(seed)
    picks, candidates = [], {}
    for c, name in enumerate(data.classes):
        members = torch.nonzero(ok & (data.y_test == c))[:, 0]
        candidates[name] = len(members)
        picks.append(members[torch.randperm(len(members), generator=gen)[:n_per_class]].sort().values)
    idx = torch.cat(picks)
    if sum(len(p) > 0 for p in picks) < 2:
        raise ValueError(f"the common image set needs images of at least 2 classes (the randomization's reference "
                         f"pairs different classes), got {candidates} images per class correct and above the "
                         f"threshold {threshold} for every model")
    return {"indices": idx, "candidates": candidates,
            "per_class": {name: len(p) for name, p in zip(data.classes, picks)}}


def _excess(gaps: dict) -> dict:
    """Per-image gap of every method ordering minus the random order's, per substrate."""
    return {sub: {k: v - g["random"] for k, v in g.items() if k not in ("images", "random")} for sub, g in gaps.items()}


def _explain_representation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Config, n_subset: int,
                            n_randomization: int, seed: int,
                            substrates: Sequence[str] = SUBSTRATES) -> tuple[dict, dict]:
    """Faithfulness gaps (against the random order), cascading randomization, object focus and Gini sparseness of
    ``model``'s maps of ``x: [N, 784]`` (targets ``y``): ``(summary, per_image)``."""
    maps = _representation_maps(model, x, y, cfg)
    gaps = faithfulness_gaps(model, x, y, maps, substrates, n_subset=n_subset, seed=seed)
    excess = _excess(gaps)
    sub = torch.linspace(0, len(x) - 1, min(n_randomization, len(x))).long()
    rand, rand_images = cascading_randomization(model, x[sub], y[sub],
                                                lambda m: _representation_maps(m, x[sub], y[sub], cfg), seed)
    obj = {m: object_share(v, x) for m, v in maps.items()}
    gini = {m: gini_index(v) for m, v in maps.items()}
    summary = {"methods": list(maps),
               "faithfulness": {s: {k: {"gap": summarize(gaps[s][k], seed), "excess": summarize(excess[s][k], seed)}
                                    for k in excess[s]} | {"random": {"gap": summarize(gaps[s]["random"], seed)},
                                                           "n_images": len(gaps[s]["images"])}
                                for s in gaps},
               "randomization": rand, "object_focus": {m: summarize(v, seed) for m, v in obj.items()},
               "gini": {m: summarize(v, seed) for m, v in gini.items()}}
    return summary, {"excess": excess, "randomization": rand_images, "object_focus": obj, "gini": gini}


def _compare_explanations(per_image: dict, reference: str = "sae", seed: int = 0) -> dict:
    """Paired per-image differences ``reference - other`` (same images) for every other representation:
    faithfulness excess over random per substrate and ordering, object share, Gini, and the similarity left after
    the whole cascading randomization (lower = more sensitive to the weights). ``{other: {...: summary}}``."""
    ref = per_image[reference]
    out = {}
    for name, other in per_image.items():
        if name == reference:
            continue
        methods = [m for m in ref["gini"] if m in other["gini"]]
        out[name] = {
            "faithfulness": {s: {k: summarize(ref["excess"][s][k] - other["excess"][s][k], seed)
                                 for k in ref["excess"][s] if k in other["excess"][s]} for s in ref["excess"]},
            "object_focus": {m: summarize(ref["object_focus"][m] - other["object_focus"][m], seed) for m in methods},
            "gini": {m: summarize(ref["gini"][m] - other["gini"][m], seed) for m in methods},
            "randomization": {m: summarize(ref["randomization"][m]["final"] - other["randomization"][m]["final"], seed)
                              for m in methods}}
    return out


# --- units and the claims ---------------------------------------------------------------------------------
def unit_measures(pipeline: SparseCodePipeline, data: FashionMNIST, device: torch.device, x: torch.Tensor,
                  y: torch.Tensor, seed: int = 0) -> tuple[dict, dict]:
    """The unit claims' quantities for one model (``unit_statistics`` on the test set; the unit-deletion gaps on
    ``x: [N, 784]``, ``y: [N]``): ``(summary, raw)`` with ``raw`` the per-unit and per-image values the claims
    resample: ``pure``, ``lowers`` (``[live units]`` 0/1), ``pairs`` (``[units, 2]`` contribution, ablation drop),
    ``gaps`` (``[N]``), and ``stats``, the model's ``UnitStats``."""
    _check_pipeline(pipeline)
    x = _check_images("x", x, dtype=_model_dtype(pipeline), flat=True)
    _check_target(y, len(x), pipeline.clf.rest[-1].out_features, x.device, name="y")
    stats = unit_statistics(pipeline, data, device, seed=seed)
    live = stats.n_fire > 0
    purity = stats.purity[live]
    contribution, drop = stats.majority_value(stats.contribution), -stats.majority_value(stats.ablation)
    keep = np.isfinite(contribution) & np.isfinite(drop)
    _, contributions = decoder_weighted(pipeline, x, y, return_contributions=True)
    raw = {"pure": (purity >= _CLAIM_PURITY).astype(np.float64), "lowers": (drop[live] > 0).astype(np.float64),
           "pairs": np.stack([contribution[keep], drop[keep]], axis=1),
           "gaps": unit_deletion_gaps(pipeline, x, y, contributions.detach(), seed), "stats": stats}
    hist = np.histogram(purity, bins=_PURITY_BINS, range=(0.0, 1.0))[0]
    summary = {"n_units": int(len(live)), "n_live": int(live.sum()), "dead": int(stats.dead.sum()),
               "n_pure": int(raw["pure"].sum()), "pure_share": _share(raw["pure"], seed),
               "purity_hist": hist.tolist(), "purity_quantiles": {str(q): float(np.quantile(purity, q))
                                                                  for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
               "lowers_share": _share(raw["lowers"], seed), "agreement": contribution_ablation_agreement(stats, seed),
               "deletion_gap": summarize(raw["gaps"], seed), "median_freq_test": float(np.median(stats.freq_test)),
               "seconds": stats.seconds}
    return summary, raw


def _ci(estimates: np.ndarray) -> list[float]:
    return list(percentile_interval(estimates))


def _share(flags: np.ndarray, seed: int) -> dict:
    est = bootstrap_estimates(flags, _mean, _N_BOOT, seed)
    return {"value": float(flags.mean()), "ci95": _ci(est)}


_mean = lambda r: r.mean(1)  # noqa: E731 -- a resample statistic: [n_boot, n] -> [n_boot]
_pearson = lambda r: _rowwise_pearson(r[..., 0], r[..., 1])  # noqa: E731 -- [n_boot, n, 2] -> [n_boot]
_CLAIM_STATISTICS: dict[str, tuple[str, Callable]] = {"pure_share": ("pure", _mean), "lowers_share": ("lowers", _mean),
                                                     "agreement": ("pairs", _pearson)}  # unpaired: units differ


def unit_claims(raw: dict[str, dict], trained: str = "sae", seed: int = 0) -> dict:
    """Each claim of ``_CLAIMS`` for the ``trained`` model against every other model in ``raw`` (``unit_measures``'
    raw values per representation). The difference trained - control gets a bootstrap 95 % CI: units resampled
    independently in each model for the shares and the correlation, images paired for the deletion gap (the same
    images). A control is *beaten* when that CI lies above 0; a claim is *held* only when every control is beaten
    (otherwise the generated text says which control gives the same). The shuffled-label control shares the
    SAE's code: for a claim about the code alone (``_CODE_CLAIMS``: purity) it is reported with ``"applies":
    False`` and left out of the rule."""
    if not isinstance(raw, dict):
        raise ValueError(f"raw must be a dict of representation -> unit_measures' raw values, got {_describe(raw)}")
    _check_choice("trained", trained, list(raw))
    if len(raw) < 2:
        raise ValueError(f"raw must hold the trained model {trained!r} and at least one control, got {list(raw)}")
    _check_int("seed", seed, low=0)
    for name, values in raw.items():
        _check_result(f"raw[{name!r}]", values, ("pure", "lowers", "pairs", "gaps"), "unit_measures' raw values")
    out = {}
    for claim in _CLAIMS:
        a = raw[trained]
        if claim == "deletion_gap":
            value = lambda r: (float(r["gaps"].mean()), _ci(bootstrap_estimates(r["gaps"], _mean, _N_BOOT, seed)))  # noqa: E731
        else:
            key, stat = _CLAIM_STATISTICS[claim]
            value = lambda r, key=key, stat=stat: (float(stat(r[key][None])[0]),  # noqa: E731
                                                   _ci(bootstrap_estimates(r[key], stat, _N_BOOT, seed)))
        mean, ci = value(a)
        controls = {}
        for name, b in raw.items():
            if name == trained:
                continue
            applies = not (claim in _CODE_CLAIMS and name == "shuffled")
            if claim == "deletion_gap":
                diff = a["gaps"] - b["gaps"]
                d_mean, d_ci = float(diff.mean()), _ci(bootstrap_estimates(diff, _mean, _N_BOOT, seed))
            else:
                d_est = (bootstrap_estimates(a[key], stat, _N_BOOT, seed)
                         - bootstrap_estimates(b[key], stat, _N_BOOT, seed + 1))
                d_mean, d_ci = float(stat(a[key][None])[0] - stat(b[key][None])[0]), _ci(d_est)
            b_mean, b_ci = value(b)
            controls[name] = {"value": b_mean, "ci95": b_ci, "difference": {"mean": d_mean, "ci95": d_ci},
                              "beaten": bool(d_ci[0] > 0), "applies": applies}
        out[claim] = {"label": _CLAIM_LABELS[claim], "trained": {"value": mean, "ci95": ci}, "controls": controls,
                      "held": _held(controls)}
    return out


def _held(controls: dict) -> bool:
    """The claim rule: at least one control applies, and the trained model beats every one that does."""
    applies = [c for c in controls.values() if c["applies"]]
    return bool(applies) and all(c["beaten"] for c in applies)


# --- the study ----------------------------------------------------------------------------------------------
def run_controls(data: FashionMNIST, cfg: Config, device: torch.device, representations=None,
                 ckpt_dir: str | os.PathLike = "checkpoints", n_per_class: int = 100, n_subset: int = 300,
                 n_randomization: int = 100, n_unit_images: int = 500, train_sae: bool = False,
                 stability_seeds: Sequence[int] | None = None, verbose: bool = True) -> dict:
    """Train (or load from ``ckpt_dir``) the model of every representation (``ksae.controls``), score it, check
    its pixel explanations on one common image set, measure its units, and hold the SAE's unit claims against
    the controls. The SAE pair of ``cfg`` is loaded from ``ckpt_dir`` (``_load_sae``: a ``ValueError`` when it is
    missing) unless ``train_sae``. Image set: ``common_images`` (``n_per_class`` per class, correct and above
    ``cfg.confidence_threshold`` for every explained model); blur and ROAD on ``n_subset`` of them, the
    randomization on ``n_randomization``, the unit-deletion gaps on ``n_unit_images``. With the SAE among the
    representations, also the seed stability of its dictionary (``run_seed_stability``) against the SAEs of
    ``stability_seeds`` (default: ``cfg.seed`` and the next two; ``()`` skips it), read from ``ckpt_dir`` (a
    missing one is a ``ValueError`` unless ``train_sae``, which trains it). JSON-able result (the shape
    ``results/controls.json`` holds)."""
    _check_instance("data", data, FashionMNIST)
    _check_instance("cfg", cfg, Config)
    _check_device("device", device)
    reps = _check_representations(REPRESENTATIONS if representations is None else representations)
    _check_path("ckpt_dir", ckpt_dir, "folder")
    for name, value, low in (("n_per_class", n_per_class, 1), ("n_subset", n_subset, 1),
                             ("n_randomization", n_randomization, 2), ("n_unit_images", n_unit_images, 1)):
        _check_int(name, value, low=low)
    _check_bool("train_sae", train_sae)
    if stability_seeds is not None:
        _check_ints("stability_seeds", stability_seeds, low=0, empty=True)
    _check_bool("verbose", verbose)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if train_sae:
        from .checkpoints import load_or_train

        sae, clf, history, _ = load_or_train(cfg, data, device, ckpt_dir, verbose=verbose)
    else:
        sae, clf, history, _ = _load_sae(cfg, ckpt_dir, device)
    codes, models, histories = {"sae": sae}, {"sae": _explained_model(sae, clf)}, {"sae": history}
    seconds["load_sae"] = time.perf_counter() - t0
    for name in tqdm([r for r in reps if r != "sae"], desc="controls: models", disable=not verbose):
        t = time.perf_counter()
        code, rclf, histories[name] = _load_or_train_control(name, cfg, data, device, ckpt_dir, sae, verbose)
        codes[name], models[name] = code, _explained_model(code, rclf)
        seconds[f"model_{name}"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = {name: {**_evaluate_representation(models[name], codes[name], data, cfg, device),
                   "label": _REPRESENTATION_LABELS[name],
                   "checkpoint": cfg.checkpoint_name() if name == "sae" else _control_checkpoint_name(cfg, name),
                   "train_seconds": histories[name].get("seconds", {})} for name in reps}
    if "shuffled" in rows:
        rows["shuffled"]["relabelling_null"] = _relabelling_null(models["shuffled"], data, device, cfg.seed)
    recovered = _accuracy_recovered(models["pixels"], codes, data, device) if "pixels" in reps else None
    seconds["evaluate"] = time.perf_counter() - t
    explained = [r for r in reps if r in _EXPLAINED]
    images = common_images({r: models[r] for r in explained}, data, cfg.confidence_threshold, n_per_class, cfg.seed)
    x, y = data.x_test[images["indices"]].to(device), data.y_test[images["indices"]].to(device)
    summaries, per_image = {}, {}
    for name in tqdm(explained, desc="controls: explanations", disable=not verbose):
        t = time.perf_counter()
        summaries[name], per_image[name] = _explain_representation(models[name], x, y, cfg, n_subset,
                                                                  n_randomization, cfg.seed)
        seconds[f"explain_{name}"] = time.perf_counter() - t
    unit_summary, unit_raw = {}, {}
    unit_sub = torch.linspace(0, len(x) - 1, min(n_unit_images, len(x))).long()
    for name in tqdm([r for r in reps if r in _UNIT_REPRESENTATIONS], desc="controls: units", disable=not verbose):
        t = time.perf_counter()
        unit_summary[name], unit_raw[name] = unit_measures(models[name], data, device, x[unit_sub], y[unit_sub],
                                                           cfg.seed)
        seconds[f"units_{name}"] = time.perf_counter() - t
    seeds = (cfg.seed, cfg.seed + 1, cfg.seed + 2) if stability_seeds is None else tuple(stability_seeds)
    stability = None
    if seeds and "sae" in unit_raw:
        t = time.perf_counter()
        stability = run_seed_stability(cfg, data, device, unit_raw["sae"]["stats"], _CLAIM_PURITY, seeds, ckpt_dir,
                                       train=train_sae)
        seconds["stability"] = time.perf_counter() - t
    result = {
        "schema_version": 1, "config": cfg.to_dict(), "device": device_name(device), "representations": list(reps),
        "labels": {r: _REPRESENTATION_LABELS[r] for r in reps}, "models": rows, "accuracy_recovered": recovered,
        "images": {"rule": "test images every explained model classifies correctly with confidence above the "
                           "threshold, n_per_class per class at random (seeded)",
                   "threshold": cfg.confidence_threshold, "n_per_class": n_per_class, "n_images": len(y),
                   "candidates": images["candidates"], "per_class": images["per_class"], "n_subset": n_subset,
                   "n_randomization": min(n_randomization, len(y)), "n_unit_images": len(unit_sub),
                   "object_pixel_share": summarize((x > 0).double().mean(1).cpu().numpy(), cfg.seed),
                   "indices": images["indices"]},
        "explanations": summaries, "comparisons": _compare_explanations(per_image, seed=cfg.seed) if
        "sae" in per_image else {},
        "units": unit_summary, "claims": unit_claims(unit_raw, seed=cfg.seed) if len(unit_raw) > 1 else {},
        "stability": stability,
    }
    seconds["total"] = time.perf_counter() - t0
    result["seconds"] = seconds
    return _jsonable(result)
