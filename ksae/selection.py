"""Which test images are explained: confident, correct, balanced per class (``Selection``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ._util import _check_float, _check_int, _check_pixels, _keeps_mode
from .metrics import predict

if TYPE_CHECKING:
    from .data import FashionMNIST
    from .models import SparseCodeClassifier
    from .sae import SparseAutoencoder


@dataclass
class Selection:
    """Correctly classified test images, preferably above the confidence threshold, sorted by class.

    Balanced over classes when every class has ``n_requested`` images above the threshold; otherwise a
    class keeps what passes, a class with none passing keeps its most confident correct images (below the
    threshold, flagged in ``fallback``), and a class with no correct image at all is left out
    (``skipped``). ``shortfalls`` and ``warning`` record all of it (JSON-able, for ``build_summary``).
    """

    indices: torch.Tensor  # [N] indices into the test set
    x: torch.Tensor  # [N, 784] images
    y: torch.Tensor  # [N] labels (= predictions)
    confidence: torch.Tensor  # [N] softmax probability of the label
    n_candidates: dict = field(default_factory=dict)  # class name -> images passing the filter
    n_requested: int = 0  # images asked for per class
    fallback: torch.Tensor | None = None  # [N] bool: correct but at or below the threshold (class had none above)
    shortfalls: dict = field(default_factory=dict)  # class name -> {"passing", "selected", "fallback"} (short ones)
    skipped: list = field(default_factory=list)  # class names with no correctly classified test image
    warning: str | None = None  # the one-line warning issued for the shortfalls (None when balanced)

    def per_class(self, classes) -> dict:
        """Class name -> number of selected images, for every name in ``classes``."""
        counts = torch.bincount(self.y, minlength=len(classes)).tolist()
        return dict(zip(classes, counts))


def _pick_class(passing: torch.Tensor, correct: torch.Tensor, confidence: torch.Tensor, n_per_class: int,
                min_per_class: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """One class's picks: up to ``n_per_class`` random ``passing`` indices ``[P]``; if fewer than
    ``min_per_class`` pass, topped up with the most confident of the ``correct`` indices ``[Q]`` that do
    not pass. Returns (sorted indices, number of top-ups)."""
    picked = passing[torch.randperm(len(passing), generator=gen)[:n_per_class]]
    n_fill = max(0, min(min_per_class, n_per_class) - len(picked))
    rest = correct[~torch.isin(correct, passing)]
    fill = rest[confidence[rest].argsort(descending=True, stable=True)[:n_fill]]
    return torch.cat([picked, fill]).sort().values, len(fill)


def _shortfall_warning(shortfalls: dict, skipped: list, n_per_class: int, threshold: float) -> str | None:
    """One line naming every class with fewer than ``n_per_class`` images, or None."""
    if not shortfalls and not skipped:
        return None
    parts = [f"{name} {s['selected']}" + (f" ({s['fallback']} below the threshold)" if s["fallback"] else "")
             for name, s in shortfalls.items()]
    parts += [f"{name} 0 (no correct image: class left out)" for name in skipped]
    return (f"selection: asked for {n_per_class} correct images per class with confidence > {threshold}; "
            f"fewer for: {', '.join(parts)}")


@_keeps_mode
def select_high_confidence(sae: SparseAutoencoder, clf: SparseCodeClassifier, data: FashionMNIST,
                           device: torch.device, n_per_class: int, threshold: float = 0.8,
                           seed: int = 0, min_per_class: int = 1) -> Selection:
    """``n_per_class`` random (seeded) test images per class that are classified correctly with
    softmax confidence > ``threshold``.

    A class with fewer passing images keeps them all; one with fewer than ``min_per_class`` (default 1)
    is topped up with its most confident correct images below the threshold (``Selection.fallback``);
    one with no correct image is left out. Any shortfall issues one ``UserWarning`` naming the classes
    and counts, also kept in ``Selection.warning`` / ``shortfalls`` / ``skipped``.
    """
    _check_int("n_per_class", n_per_class, low=1)
    _check_int("min_per_class", min_per_class, low=1)
    _check_float("threshold", threshold, low=0.0, high=1.0, high_open=True)
    _check_int("seed", seed, low=0)
    _check_pixels("data.x_test", data.x_test)
    probs = predict(sae, clf, data.x_test, device).cpu()
    confidence, pred = probs.max(1)
    correct_mask = pred == data.y_test
    gen = torch.Generator().manual_seed(seed)
    chosen, fills, counts, shortfalls, skipped = [], [], {}, {}, []
    for c, name in enumerate(data.classes):
        correct = torch.nonzero(correct_mask & (data.y_test == c))[:, 0]
        passing = correct[confidence[correct] > threshold]
        counts[name] = len(passing)
        if len(correct) == 0:
            skipped.append(name)
            continue
        idx, n_fill = _pick_class(passing, correct, confidence, n_per_class, min_per_class, gen)
        if len(idx) < n_per_class:
            shortfalls[name] = {"passing": len(passing), "selected": len(idx), "fallback": n_fill}
        chosen.append(idx)
        fills.append(~torch.isin(idx, passing))
    if not chosen:
        raise ValueError("no test image is classified correctly: nothing to explain (is the model trained?)")
    warning = _shortfall_warning(shortfalls, skipped, n_per_class, threshold)
    if warning:
        warnings.warn(warning, stacklevel=3)  # the caller of _keeps_mode's wrapper
    idx = torch.cat(chosen)
    return Selection(idx, data.x_test[idx], data.y_test[idx], confidence[idx], counts, n_per_class,
                     torch.cat(fills), shortfalls, skipped, warning)
