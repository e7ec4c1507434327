"""Ground truth for the explanations: a planted shortcut the model provably uses (``run_shortcut``). Per variant and
training seed: a gate certifies that the shortcut model uses the marker M before anything is scored; then which
pixel explanation finds M (localisation on M against the clean twin, the control marker C and chance; the raw-pixel
classifier scored the same way), which code units carry it, and whether removing them cures the model (against
random units, the oracle and the pixel-space fix); last, what holds across seeds."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ._util import _check_bool, _check_int, _jsonable
from .attribution import METHOD_LABELS, attribute_all
from .checks.localisation import _localisation_scores, chance_level
from .config import Config
from .data import FashionMNIST
from .models import SparseCodePipeline
from .runtime import device_name
from .shortcut_eval import _GATES, _gate_result, _outcomes, _predict_inputs, _probe, _removal_row, _variant_metrics
from .shortcut_models import _default_models, _shift_head, _shortcut_models
from .shortcut_units import _SCORERS, _best_scorer, _finding, _ranked, _recovery, _removal, _unit_scores
from .shortcut_verdicts import _across_seeds
from .shortcuts import (
    _CONTROL,
    _MARKER,
    _SHORTCUT_CLASS,
    SHORTCUT_VARIANTS,
    Marker,
    _check_variant,
    _marker_statistics,
    plant_shortcut,
)
from .stats import summarize

_CODE_METHODS = ("decoder",)  # methods that draw the code's units with their atoms: the pixel classifier has none


_EXPLAINED_ROLES = ("shortcut", "twin", "pixel", "pixel_twin")  # the models whose pixel maps are scored


_MAP_DIGITS = 4  # significant digits of the example maps stored in the result (the notebook's figure)


def _methods(model) -> list[str]:
    """Every attribution method of ``METHOD_LABELS`` that applies to ``model`` (all of them for the sparse-code
    pipeline; the code's own methods left out for the pixel classifier)."""
    return [m for m in METHOD_LABELS if isinstance(model, SparseCodePipeline) or m not in _CODE_METHODS]


def _explained(probe, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices [n'], has: [n', 2] bool)``: up to ``n`` images of the probe explained for the shortcut class, drawn
    at random (seeded): certified, labelled Shirt with M and C; biased, half Shirts and half other images, each with
    M and C; two-part, labelled Shirt, half with M alone and half with C alone. ``has``: which marker each carries."""
    shirt, m, c = probe.y == _SHORTCUT_CLASS, probe.marks[:, 0], probe.marks[:, 1]
    true_shirt = probe.y_true == _SHORTCUT_CLASS
    if probe.variant == "certified":
        pools = [probe.two & shirt & m & c]
    elif probe.variant == "biased":
        pools = [true_shirt & m & c, ~true_shirt & m & c]
    else:
        pools = [probe.two & shirt & m & ~c, probe.two & shirt & ~m & c]
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for i, pool in enumerate(pools):
        members = torch.nonzero(pool)[:, 0]
        want = n // len(pools) + (i < n % len(pools))
        picks.append(members[torch.randperm(len(members), generator=gen)[:want]].sort().values)
    idx = torch.cat(picks)
    return idx, probe.marks[idx]


def _round(t: torch.Tensor) -> list:
    return [float(f"{v:.{_MAP_DIGITS}g}") for v in t.reshape(-1).tolist()]


def _localisation(models: dict, x: torch.Tensor, has: torch.Tensor, planting, cfg: Config, seed: int,
                  keep_example: bool) -> dict:
    """Every applicable method's maps of every model of ``_EXPLAINED_ROLES`` for ``x: [N, 784]`` (target: Shirt),
    scored on M and C (``_localisation_scores``) on the images that carry each; the paired differences: shortcut
    model minus clean twin, the pixel classifier minus its twin, the code's twin difference minus the pixel
    classifier's, and mass on M minus mass on C (where both are stamped)."""
    regions = {"M": planting.marker.mask(), "C": planting.control.mask()}
    rows = {"M": has[:, 0].numpy(), "C": has[:, 1].numpy()}
    target = torch.full((len(x),), _SHORTCUT_CLASS, dtype=torch.long, device=x.device)
    raw, out = {}, {"chance": {r: chance_level(mask) for r, mask in regions.items()}, "n_images": len(x),
                    "images_with": {r: int(v.sum()) for r, v in rows.items()}, "models": {}, "seconds": {}}
    example = {}
    for role in _EXPLAINED_ROLES:
        t = time.perf_counter()
        model = models[role]
        maps = attribute_all(model, x, target, cfg, methods=_methods(model))
        raw[role] = {m: _localisation_scores(v, regions) for m, v in maps.items()}
        out["models"][role] = {m: {s: {r: summarize(v[rows[r]], seed) for r, v in by.items()} for s, by in sc.items()}
                               for m, sc in raw[role].items()}
        if keep_example and role in ("shortcut", "twin"):
            example[role] = {m: _round(v[0]) for m, v in maps.items()}
        out["seconds"][role] = time.perf_counter() - t

    def difference(a: str, b: str) -> dict:
        return {m: {s: {r: summarize(raw[a][m][s][r][rows[r]] - raw[b][m][s][r][rows[r]], seed) for r in regions}
                    for s in raw[a][m]} for m in raw[a] if m in raw[b]}

    out["twin_difference"], out["pixel_twin_difference"] = difference("shortcut", "twin"), difference("pixel",
                                                                                                      "pixel_twin")
    out["code_minus_pixel"] = {
        m: {s: {r: summarize((raw["shortcut"][m][s][r] - raw["twin"][m][s][r] - raw["pixel"][m][s][r]
                              + raw["pixel_twin"][m][s][r])[rows[r]], seed) for r in regions} for s in raw["pixel"][m]}
        for m in raw["shortcut"] if m in raw["pixel"]}
    both = rows["M"] & rows["C"]
    out["m_minus_c"] = {role: {m: {s: summarize(v[s]["M"][both] - v[s]["C"][both], seed) for s in v}
                               for m, v in raw[role].items()} for role in raw} if both.any() else {}
    if keep_example:
        out["example"] = {"image": _round(x[0].cpu()), "has": has[0].tolist(), **example}
    return out


def _units(models: dict, planted, probe_val, probe_test, before: dict, oracle: dict, cfg: Config, device,
           ns, n_images: int, n_random: int, shift_ns, ckpt_dir, train: bool, verbose: bool, seed: int) -> dict:
    """Recovery, finding and removal (``ksae.shortcut_units``) for the shortcut pipeline; SHIFT on the biased
    variant."""
    shortcut, twin = models["shortcut"], models["twin"]
    planting = planted.planting
    rec = _recovery(shortcut.sae, planting, probe_val, probe_test, device)
    rec_twin = _recovery(twin.sae, planting, probe_val, probe_test, device)
    idx, _ = _explained(probe_val, n_images, planting.seed)
    scores = _unit_scores(shortcut, probe_val.x[idx], probe_val.x_clean[idx], _SHORTCUT_CLASS, device)
    rankings = {name: _ranked(s) for name, s in scores.items()}
    with torch.no_grad():
        candidates = np.flatnonzero((shortcut.sae.encode(probe_val.x[idx].to(device)) > 0).any(0).cpu().numpy())
    marker_units = rec["M"]["units"] + (rec["C"]["units"] if planting.variant == "two_part" else [])
    control_unit = rec["C"]["closest_unit"]
    extra = {"marker_units": marker_units, "closest_to_M": [rec["M"]["closest_unit"]]}
    if planting.variant != "two_part":
        extra["closest_to_C"] = [control_unit]
    out = {"recovery": rec, "recovery_twin": rec_twin, "n_candidates": int(len(candidates)),
           "marker_units": marker_units, "finding": _finding(scores, marker_units, control_unit, candidates),
           "removal": _removal(shortcut, probe_test, before, oracle, rankings, ns, candidates, n_random, device, extra,
                              seed)}
    if planting.variant == "biased" and shift_ns:
        best, means = _best_scorer(shortcut, probe_val, rankings, shift_ns, device)
        shift = {"scorer": best, "validation_worst_group": means, "heads": {}}
        for n in shift_ns:
            units = rankings[best][:n].tolist()
            pipe, history = _shift_head(planted, shortcut.sae, units, cfg, device, ckpt_dir, train, verbose)
            after = _outcomes(probe_test, _predict_inputs(pipe, probe_test.inputs, device))
            shift["heads"][str(n)] = {"units": units, **_removal_row(probe_test, before, after, oracle, seed),
                                      "train_seconds": history.get("seconds", {})}
        out["shift"] = shift
    return out


def _variant_seed(planted, broken, cfg: Config, data: FashionMNIST, device, default_pair, ckpt_dir, n_images: int,
                  n_random: int, ns, shift_ns, train: bool, verbose: bool, keep_example: bool) -> dict:
    """The gate, then (where it passes) every score of one variant and seed."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    probe_val, probe_test = _probe(planted, "val", cfg), _probe(planted, "test", cfg)
    trained = _shortcut_models(planted, broken, cfg, data, device, default_pair, ("shortcut",), ckpt_dir, train,
                               verbose)
    seconds["shortcut_model"] = time.perf_counter() - t
    shortcut = trained["shortcut"][0]
    val = _variant_metrics(probe_val, _outcomes(probe_val, _predict_inputs(shortcut, probe_val.inputs, device)),
                           cfg.seed)
    before = _outcomes(probe_test, _predict_inputs(shortcut, probe_test.inputs, device))
    test = _variant_metrics(probe_test, before, cfg.seed)
    result = {"gate": {**_gate_result(planted.variant, val), "split": "validation",
                       "test_value": _gate_result(planted.variant, test)["value"]},
              "models": {"shortcut": {"test": test, "validation": val,
                                      "train_seconds": {**trained["sae"][1].get("seconds", {}),
                                                        **trained["shortcut"][1].get("seconds", {})}}}}
    if not result["gate"]["passed"]:
        result["scored"] = False
        result["seconds"] = seconds
        return result
    result["scored"] = True
    t = time.perf_counter()
    trained.update(_shortcut_models(planted, broken, cfg, data, device, default_pair,
                                    ("twin", "oracle", "pixel", "pixel_twin"), ckpt_dir, train, verbose))
    seconds["other_models"] = time.perf_counter() - t
    models = {role: trained[role][0] for role in ("shortcut", "twin", "oracle", "pixel", "pixel_twin")}
    outs = {"shortcut": before,
            "pixel_fix": _outcomes(probe_test, _predict_inputs(shortcut, probe_test.erased, device))}
    for role in ("twin", "oracle", "pixel", "pixel_twin"):
        outs[role] = _outcomes(probe_test, _predict_inputs(models[role], probe_test.inputs, device))
        result["models"][role] = {"test": _variant_metrics(probe_test, outs[role], cfg.seed),
                                  "train_seconds": trained[role][1].get("seconds", {})}
    result["models"]["pixel_fix"] = {"test": _variant_metrics(probe_test, outs["pixel_fix"], cfg.seed)}
    t = time.perf_counter()
    idx, has = _explained(probe_test, n_images, planted.planting.seed)
    result["localisation"] = _localisation(models, probe_test.x[idx].to(device), has, planted.planting, cfg,
                                           cfg.seed, keep_example)
    result["localisation"]["indices"] = idx.tolist()
    seconds["localisation"] = time.perf_counter() - t
    t = time.perf_counter()
    result["units"] = _units(models, planted, probe_val, probe_test, before, outs["oracle"], cfg, device, ns, n_images,
                             n_random, shift_ns, ckpt_dir, train, verbose, cfg.seed)
    result["units"]["reference"] = {name: _removal_row(probe_test, before, outs[name], outs["oracle"], cfg.seed)
                                    for name in ("pixel_fix", "oracle", "twin")}
    seconds["units"] = time.perf_counter() - t
    result["seconds"] = seconds
    return result


def _check_ints(name: str, values, low: int, high: int | None = None, empty: bool = False) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or (not values and not empty):
        raise ValueError(f"{name} must be a {'' if empty else 'non-empty '}sequence of integers, got {values!r}")
    for v in values:
        _check_int(f"{name} item", v, low=low, high=high)
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must hold distinct values, got {list(values)}")
    return tuple(int(v) for v in values)


def run_shortcut(data: FashionMNIST, cfg: Config, device: torch.device, variants: Sequence[str] = SHORTCUT_VARIANTS,
                 seeds: Sequence[int] = (0, 1, 2), ckpt_dir: str | os.PathLike = "checkpoints", n_images: int = 100,
                 n_random: int = 100, ns: Sequence[int] = (1, 2, 5, 10), shift_ns: Sequence[int] = (1, 2),
                 marker: Marker = _MARKER, control: Marker = _CONTROL, train: bool = True,
                 verbose: bool = True) -> dict:
    """The planted-shortcut study (``ksae.shortcuts``) for ``variants`` and training ``seeds`` (``cfg`` with each
    seed), every model trained with ``cfg``'s recipe or loaded from ``ckpt_dir`` (``train=False``: only loaded; a
    missing one is a ``ValueError``). Per variant and seed: the gate on the validation split (``_GATES``); where it
    passes, the localisation of M by every attribution method of ``METHOD_LABELS`` on ``n_images`` marked test
    images (shortcut model, clean twin, raw-pixel classifier and its twin), the units (recovery, three scorers on the
    validation split, the top ``n`` of each for ``n`` in ``ns`` zeroed at inference against ``n_random`` random
    draws; biased: SHIFT's retrained heads for ``n`` in ``shift_ns``) and the references (oracle, pixel fix, twin).
    JSON-able result (the shape ``results/shortcut.json`` holds); ``summary``: what holds across seeds."""
    if not isinstance(data, FashionMNIST):
        raise ValueError(f"data must be the FashionMNIST of load_fashion_mnist, got {type(data).__name__}")
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config, got {type(cfg).__name__}")
    if isinstance(variants, str) or not isinstance(variants, Sequence) or not variants:
        raise ValueError(f"variants must be a non-empty sequence of names from {SHORTCUT_VARIANTS}, got {variants!r}")
    variants = tuple(_check_variant(v) for v in variants)
    seeds = _check_ints("seeds", seeds, 0)
    ns, shift_ns = _check_ints("ns", ns, 1, cfg.d_hidden), _check_ints("shift_ns", shift_ns, 1, cfg.d_hidden, True)
    _check_int("n_images", n_images, low=2)
    _check_int("n_random", n_random, low=1)
    _check_bool("train", train)
    _check_bool("verbose", verbose)
    if cfg.clf_hflip and control.overlaps(marker.mirrored()):
        raise ValueError(f"the control must not overlap the marker's mirror image {marker.mirrored()} (the classifier "
                         f"trains on mirrored views, clf_hflip=True): got the control at {control}")
    t0 = time.perf_counter()
    planted = {v: plant_shortcut(data, v, marker=marker, control=control) for v in variants}
    broken = {v: plant_shortcut(data, v, broken=True, marker=marker, control=control) for v in variants}
    result: dict = {"schema_version": 1, "config": cfg.to_dict(), "device": device_name(device),
                    "variants": list(variants), "seeds": list(seeds),
                    "planting": {v: p.planting.to_dict() for v, p in planted.items()},
                    "markers": _marker_statistics(data, {"M": marker, "C": control}),
                    "gates": {v: {"measure": _GATES[v][0], "threshold": _GATES[v][1], "rule": _GATES[v][2]}
                              for v in variants},
                    "methods": {m: METHOD_LABELS[m] for m in METHOD_LABELS}, "scorers": _SCORERS,
                    "sizes": {"n_images": n_images, "n_random": n_random, "ns": list(ns), "shift_ns": list(shift_ns)},
                    "per_seed": {v: {} for v in variants}, "seconds": {}}
    for s in tqdm(seeds, desc="shortcut: seeds", disable=not verbose):
        cfg_s = Config(**{**cfg.to_dict(), "seed": s})
        t = time.perf_counter()
        sae, clf, source = _default_models(cfg_s, planted[variants[0]], device, ckpt_dir, train, verbose)
        result["twin_autoencoder"] = {**result.get("twin_autoencoder", {}), str(s): source}
        result["seconds"][f"twin_autoencoder_seed{s}"] = time.perf_counter() - t
        for v in variants:
            t = time.perf_counter()
            result["per_seed"][v][str(s)] = _variant_seed(planted[v], broken[v], cfg_s, data, device, (sae, clf),
                                                          ckpt_dir, n_images, n_random, ns, shift_ns, train, verbose,
                                                          keep_example=s == seeds[0])
            result["seconds"][f"{v}_seed{s}"] = time.perf_counter() - t
    result["summary"] = _across_seeds(result)
    result["seconds"]["total"] = time.perf_counter() - t0
    return _jsonable(result)
