"""Where code runs and how a notebook shows things: the device (chosen once), seeding, ``show``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def pick_device(verbose: bool = True) -> torch.device:
    """CUDA if present, then Apple MPS, then CPU. Call once and pass the result around."""
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
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """Human-readable name of ``device`` (for summaries and the README's performance table)."""
    device = torch.device(device)
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
    jupyter = _jupyter_display()
    png = fig if isinstance(fig, bytes) else getattr(fig, "saved_png", None)  # rendered already: no second render
    if jupyter is not None:
        display, ipd = jupyter
        display(fig if png is None else ipd.Image(data=png))
    if not isinstance(fig, bytes):
        plt.close(fig)


def seed_everything(seed: int) -> None:
    """Seed Python-side RNGs used by this module (torch, numpy)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def show_markdown(text: str) -> None:
    """Render ``text`` as Markdown under Jupyter; print it elsewhere (the notebook also runs as a script)."""
    jupyter = _jupyter_display()
    if jupyter is None:
        print(text)
    else:
        display, ipd = jupyter
        display(ipd.Markdown(text))


def print_table(rows: Sequence[tuple[str, str]]) -> None:
    """Print (name, value) rows as an aligned two-column table."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
