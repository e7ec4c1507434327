"""``run_validation``: every check, timed."""

from __future__ import annotations

import time
from typing import Callable

import torch

from .._util import _as_maps, _check_finite, _check_int, _check_labels, _check_no_inference_mode, _check_pixels
from ..attribution import METHOD_FAMILIES, METHOD_LABELS, decoder_weighted
from ..config import Config
from ..data import as_flat_images
from ..models import SparseCodePipeline
from ..selection import Selection
from .agreement import cross_method_statistics, family_agreement
from .completeness import completeness_decomposition
from .deletion import faithfulness_suite, object_focus
from .randomization import randomization_check
from .unit_causality import unit_deletion_curves


def run_validation(pipeline: SparseCodePipeline, selection: Selection, cfg: Config, maps: dict[str, torch.Tensor],
                   contributions: torch.Tensor | None = None, n_subset: int = 300, n_completeness: int = 200,
                   n_randomization: int = 100, seed: int = 0, cross_method: dict | None = None) -> dict:
    """Every faithfulness check on ``selection`` (maps precomputed by ``attribute_all``; ``contributions:
    [N, H]`` from ``decoder_weighted(..., return_contributions=True)``, computed here if None; pass
    ``cross_method`` if ``cross_method_statistics(maps, seed, x, labels)`` was already computed).

    Pixel deletion/insertion (``faithfulness_suite``: zero substrate on all images, blur and ROAD on a
    class-balanced subset of ``n_subset``), object focus and unit-level causality use all selected images;
    the completeness decomposition and the randomization check use evenly spaced subsets of
    ``n_completeness`` and ``n_randomization`` images of the class-sorted selection, so each class keeps its
    share (equal shares unless some class fell short: ``Selection.shortfalls``). ``seconds`` holds each
    check's wall time. With maps of both families (``METHOD_FAMILIES``: two or more gradient methods and a
    perturbation method) ``family_agreement`` runs last: do the families agree across more than within?
    """
    _check_validation_inputs(pipeline, selection, cfg, maps, contributions, n_subset, n_completeness,
                             n_randomization, seed, cross_method)
    device = next(pipeline.parameters()).device
    x, y = selection.x.to(device), selection.y.to(device)
    if contributions is None:
        _, contributions = decoder_weighted(pipeline, x, y, return_contributions=True)
    sub_c = torch.linspace(0, len(x) - 1, min(n_completeness, len(x))).long()
    sub_r = torch.linspace(0, len(x) - 1, min(n_randomization, len(x))).long()
    checks = {
        "cross_method": lambda: cross_method or cross_method_statistics(maps, seed, x=x, labels=y),
        "faithfulness": lambda: faithfulness_suite(pipeline, x, y, maps, seed=seed, n_subset=n_subset),
        "object_focus": lambda: object_focus(maps, x, seed),
        "completeness": lambda: completeness_decomposition(pipeline, x[sub_c], y[sub_c], n_steps=cfg.ig_steps,
                                                           method=cfg.ig_method, seed=seed),
        "randomization": lambda: randomization_check(pipeline, x[sub_r], y[sub_r], cfg, tuple(maps), seed),
        "unit_deletion": lambda: unit_deletion_curves(pipeline, x, y, contributions.detach(), seed),
    }
    if _both_families(maps):
        checks["family_agreement"] = lambda: family_agreement(maps, x, y, METHOD_FAMILIES, seed)
    results, seconds = timed_checks(checks)
    return {"n_images": len(x), **results, "seconds": seconds}


def _both_families(maps: dict) -> bool:
    """``maps`` hold two or more gradient methods and a perturbation method (``family_agreement`` applies)."""
    gradient, perturbation = (sum(m in maps for m in METHOD_FAMILIES[f]) for f in ("gradient", "perturbation"))
    return gradient >= 2 and perturbation >= 1


def _check_validation_inputs(pipeline, selection, cfg, maps, contributions, n_subset, n_completeness,
                             n_randomization, seed, cross_method) -> None:
    """Every argument of ``run_validation`` checked before its first check runs (``ValueError`` naming it; a
    ``RuntimeError`` under ``torch.inference_mode()``), so a mistake costs seconds, not the checks before it."""
    _check_no_inference_mode("run_validation")
    if not isinstance(pipeline, SparseCodePipeline):
        raise ValueError(f"pipeline must be a SparseCodePipeline (autoencoder + classifier), got "
                         f"{type(pipeline).__name__}")
    if any(m.training for m in pipeline.modules()):
        raise ValueError("pipeline is in training mode (dropout active, so attributions would be random); call "
                         "pipeline.eval() first")
    if not isinstance(selection, Selection):
        raise ValueError(f"selection must be the Selection of select_high_confidence, got {type(selection).__name__}")
    x, _ = as_flat_images(selection.x, name="selection.x")
    _check_pixels("selection.x", x)
    n = len(x)
    _check_labels(selection.y, n, pipeline.clf.rest[-1].out_features)
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config, got {type(cfg).__name__}")
    if not isinstance(maps, dict) or not maps:
        raise ValueError(f"maps must be a non-empty dict of method name -> [N, 784] map (attribute_all), got "
                         f"{type(maps).__name__}")
    unknown = [m for m in maps if m not in METHOD_LABELS]
    if unknown:
        raise ValueError(f"maps must be keyed by methods of {list(METHOD_LABELS)}, got unknown {unknown}")
    for m, v in maps.items():
        _check_finite(f"maps[{m!r}]", _as_maps(v, f"maps[{m!r}]", n))
    if contributions is not None:
        h = pipeline.sae.d_hidden
        if not isinstance(contributions, torch.Tensor) or tuple(contributions.shape) != (n, h):
            raise ValueError(f"contributions must be a tensor of shape [{n}, {h}] (one per image and unit), got "
                             f"{getattr(contributions, 'shape', type(contributions).__name__)}")
        _check_finite("contributions", contributions)
    _check_int("n_subset", n_subset, low=1)
    _check_int("n_completeness", n_completeness, low=1)
    _check_int("n_randomization", n_randomization, low=2)
    _check_int("seed", seed, low=0)
    if cross_method is not None and not (isinstance(cross_method, dict) and "pairs" in cross_method):
        raise ValueError(f"cross_method must be None or the dict of cross_method_statistics, got "
                         f"{type(cross_method).__name__}")


def timed_checks(checks: dict[str, Callable[[], object]]) -> tuple[dict, dict[str, float]]:
    """Run ``checks`` (name -> zero-argument function) in order -> ``(results, seconds)``: each check's result
    and wall seconds by name, ``seconds["total"]`` their sum."""
    results, seconds = {}, {}
    for name, check in checks.items():
        t0 = time.perf_counter()
        results[name] = check()
        seconds[name] = time.perf_counter() - t0
    return results, {**seconds, "total": sum(seconds.values())}
