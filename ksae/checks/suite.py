"""``run_validation``: every check, timed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import torch

from ..attribution import decoder_weighted
from .agreement import cross_method_statistics
from .completeness import completeness_decomposition
from .deletion import faithfulness_suite, object_focus
from .randomization import randomization_check
from .unit_causality import unit_deletion_curves

if TYPE_CHECKING:
    from ..config import Config
    from ..models import SparseCodePipeline
    from ..selection import Selection


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
    check's wall time.
    """
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
    results, seconds = timed_checks(checks)
    return {"n_images": len(x), **results, "seconds": seconds}


def timed_checks(checks: dict[str, Callable[[], object]]) -> tuple[dict, dict[str, float]]:
    """Run ``checks`` (name -> zero-argument function) in order -> ``(results, seconds)``: each check's result
    and wall seconds by name, ``seconds["total"]`` their sum."""
    results, seconds = {}, {}
    for name, check in checks.items():
        t0 = time.perf_counter()
        results[name] = check()
        seconds[name] = time.perf_counter() - t0
    return results, {**seconds, "total": sum(seconds.values())}
