"""Where code runs and how a notebook shows things: the device (chosen once), seeding, ``show``, and the
``Stopwatch`` a run keeps its timings in."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._util import _check_bool, _check_device, _check_int, _check_text, _describe


def pick_device(verbose: bool = True) -> torch.device:
    """CUDA if present, then Apple MPS, then CPU. Call once and pass the result around."""
    _check_bool("verbose", verbose)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        name = torch.cuda.get_device_name(device)
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device, name = torch.device("mps"), "Apple MPS"
    else:
        device, name = torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads)"
    if verbose:
        print(f"Using device: {device} — {name}")
    return device


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (for honest wall-clock timings; no-op on CPU)."""
    device = _check_device("device", device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """Human-readable name of ``device`` (for summaries and docs/performance.md)."""
    device = _check_device("device", device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _jupyter_display():
    """IPython's ``(display, module of display classes)`` inside a Jupyter kernel, else None (plain script)."""
    try:
        import IPython.display as ipd
        from IPython import get_ipython
    except ImportError:
        return None
    return (ipd.display, ipd) if get_ipython() is not None else None


def show(fig) -> None:
    """Display ``fig`` (a figure, or PNG bytes such as ``render_figures``') inline when running under
    Jupyter, then close it (a no-op display elsewhere, so the notebook also runs as a plain script)."""
    if not isinstance(fig, (bytes, plt.Figure)):
        raise ValueError(f"fig must be a matplotlib Figure or PNG bytes (render_figures'), got {_describe(fig)}")
    jupyter = _jupyter_display()
    png = fig if isinstance(fig, bytes) else getattr(fig, "saved_png", None)  # rendered already: no second render
    if jupyter is not None:
        display, ipd = jupyter
        display(fig if png is None else ipd.Image(data=png))
    if not isinstance(fig, bytes):
        plt.close(fig)


def seed_everything(seed: int) -> None:
    """Seed Python-side RNGs used by this module (torch, numpy)."""
    _check_int("seed", seed, low=0, high=2**32 - 1)
    torch.manual_seed(seed)
    np.random.seed(seed)


def show_markdown(text: str) -> None:
    """Render ``text`` as Markdown under Jupyter; print it elsewhere (the notebook also runs as a script)."""
    _check_text("text", text, allow_empty=True)
    jupyter = _jupyter_display()
    if jupyter is None:
        print(text)
    else:
        display, ipd = jupyter
        display(ipd.Markdown(text))


def print_table(rows: Sequence[tuple[str, str]]) -> None:
    """Print (name, value) rows as an aligned two-column table."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (list, tuple)) or any(
            not isinstance(r, (list, tuple)) or len(r) != 2 for r in rows):
        raise ValueError(f"rows must be a list of (name, value) pairs, got {_describe(rows)}"
                         + (f": {rows!r:.60}" if isinstance(rows, (list, tuple)) else ""))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


class Stopwatch:
    """Seconds per phase of a run and per figure, kept by whoever runs (the notebook makes one per run): no
    process-wide state, so two runs in one process never mix their timings.

    ``with watch.phase("data"): ...`` adds the block's wall time to ``phases["data"]``; plot functions given
    ``timer=watch`` (and ``render_figures(..., timer=watch)``) append each figure's seconds to
    ``figures[plot function name]``; ``timings()`` is the phases plus the total since the watch was made.
    """

    def __init__(self):
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}  # phase -> seconds (summed over its blocks)
        self.figures: dict[str, list[float]] = {}  # plot function -> seconds of each figure it drew

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under ``name`` (added to earlier blocks of that name), also when it raises."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a phase name must be a non-empty string, got {name!r}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def add_figure(self, name: str, seconds: float) -> None:
        """Record that plot function ``name`` drew one figure in ``seconds``."""
        self.figures.setdefault(name, []).append(float(seconds))

    def timings(self) -> dict[str, float]:
        """``{phase: seconds, ..., "total": seconds since the watch was made}`` (the summary's ``timings_s``)."""
        return {**self.phases, "total": time.perf_counter() - self.started}
