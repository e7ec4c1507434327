"""Finishing figures: palette PNGs, saving, and drawing figures side by side in forked workers."""

from __future__ import annotations

import copy
import functools
import gc
import io
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from .._util import _check_float, _check_instance, _check_int, _describe, atomic_write_bytes
from .style import (
    CAN_FORK,
    DPI,
    FIGURE_WORKERS,
    MESSAGE_LAYOUT,
    PNG_COLORS,
    PNG_COMPRESS_LEVEL,
    PNG_EXACT_COLORS,
    PNG_QUANTIZER,
    PNG_TOLERANCE,
    _check_timer,
    _figure_style,
    _grid_figure,
)


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``rgb: [..., 3]`` uint8 colours as one int32 each (for counting colours)."""
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]


def palette_png(rgb: np.ndarray, colors: int = PNG_COLORS) -> bytes:
    """``rgb: [H, W, 3]`` uint8 as a palette PNG of at most ``colors`` colours: a fast octree palette (large
    areas move by a few levels at most), plus ``PNG_EXACT_COLORS`` entries for the most frequent colours it
    would shift by more than ``PNG_TOLERANCE`` levels (a thin contour line or a legend patch keeps its colour)."""
    from PIL import Image, ImageChops

    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be a uint8 array of shape [H, W, 3], got {_describe(rgb)}")
    _check_int("colors", colors, low=PNG_EXACT_COLORS + 1, high=256, high_name="a PNG palette's size")
    original = Image.fromarray(rgb)
    quantized = original.quantize(colors - PNG_EXACT_COLORS, method=PNG_QUANTIZER, dither=Image.Dither.NONE)
    channels = ImageChops.difference(quantized.convert("RGB"), original).split()
    error = ImageChops.lighter(ImageChops.lighter(channels[0], channels[1]), channels[2])  # [H, W] max shift
    index = np.asarray(quantized).copy()
    palette = np.asarray(quantized.getpalette(), dtype=np.uint8).reshape(-1, 3)[:index.max() + 1]
    rows, cols = np.nonzero(np.asarray(error) > PNG_TOLERANCE)
    if len(rows):
        packed = _pack_rgb(rgb[rows, cols])
        values, counts = np.unique(packed, return_counts=True)
        for value in values[np.argsort(-counts, kind="stable")[:PNG_EXACT_COLORS]]:
            hit = packed == value
            index[rows[hit], cols[hit]] = len(palette)
            palette = np.vstack([palette, [(value >> 16) & 255, (value >> 8) & 255, value & 255]])
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def png_bytes(fig: Figure, dpi: float = DPI, colors: int = PNG_COLORS) -> bytes:
    """``fig`` rendered once at ``dpi`` and encoded by ``palette_png`` (a third of the size of a true-colour
    PNG; the figures are flat colours, text and 28 x 28 maps, so nothing visible is lost)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    _check_instance("fig", fig, Figure, "a matplotlib Figure")
    _check_float("dpi", dpi, low=0.0, low_open=True)
    _check_int("colors", colors, low=PNG_EXACT_COLORS + 1, high=256, high_name="a PNG palette's size")
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return palette_png(np.asarray(canvas.buffer_rgba())[..., :3], colors)


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    """Save ``fig`` at ``DPI`` if ``save`` is a path (parent folders created); return ``fig``, closed in pyplot
    (so a notebook displays it only when it is returned, not twice). A figure that is not saved is laid out by
    the plot function's wrapper (``_styled``) unless its caller renders it at once."""
    if save is not None:
        fig.saved_png = png_bytes(fig)  # rendered once: ``show`` displays these bytes
        atomic_write_bytes(save, fig.saved_png)
    plt.close(fig)
    return fig


def _figure_png(call: Callable[[], Figure]) -> bytes:
    """``call()``'s figure as PNG bytes: the bytes it was saved as, else drawn now in the module's style. A plot
    function (``_styled``) is told to skip its layout pass: the figure is rendered here at once."""
    plot = getattr(call, "func", call)
    fig = call(layout=False) if getattr(plot, "is_plot_function", False) else call()
    png = getattr(fig, "saved_png", None)
    if png is None:
        with _figure_style():  # the style it was built in, as a saved figure is drawn
            png = png_bytes(fig)
    plt.close(fig)
    return png


def _call_name(call) -> str:
    """The plot function's name of ``call`` (a ``functools.partial`` or a function), for timings."""
    return getattr(getattr(call, "func", call), "__name__", "figure")


def _figure_worker(calls: list, connection) -> None:
    """A forked worker: draws ``calls[i]`` for each index ``i`` it receives and sends back ``(i, PNG bytes,
    seconds)``, or ``(i, None, the exception)``; stops at ``None``. ``calls`` are inherited through the fork,
    never pickled. Torch runs on one thread here: a forked child must not use the parent's thread pools; what
    the child inherits goes to the collector's permanent generation (``gc.freeze``): never walked, nor copied
    on write."""
    gc.freeze()
    torch.set_num_threads(1)
    while (i := connection.recv()) is not None:
        t0 = time.perf_counter()
        try:
            connection.send((i, _figure_png(calls[i]), time.perf_counter() - t0))
        except Exception as exc:  # noqa: BLE001 -- raised again in the parent
            try:
                connection.send((i, None, exc))
            except Exception:  # noqa: BLE001 -- an exception that cannot be pickled: its text
                connection.send((i, None, RuntimeError(f"{type(exc).__name__}: {exc}")))
    connection.close()


def _draw_in_workers(calls: list, workers: int) -> list[tuple[bytes, float]]:
    """``calls`` drawn by ``workers`` forked processes, each given the next figure as soon as it is free:
    ``[(PNG bytes, seconds drawing)]`` in order. An error in a figure is raised here; a worker that dies (e.g.
    killed for memory) raises ``RuntimeError`` at once instead of leaving the caller waiting."""
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("fork")
    pipes = [context.Pipe() for _ in range(workers)]
    procs = [context.Process(target=_figure_worker, args=(calls, child), daemon=True) for _, child in pipes]
    for proc in procs:
        proc.start()
    for _, child in pipes:
        child.close()
    results: list = [None] * len(calls)
    todo = list(range(len(calls)))[::-1]
    busy = {}  # connection -> (process, figure index)
    finished = False
    try:
        for (parent, _), proc in zip(pipes, procs):
            if todo:
                parent.send(i := todo.pop())
                busy[parent] = (proc, i)
        while busy:
            ended = {proc.sentinel: connection for connection, (proc, _) in busy.items()}  # a worker's exit
            for ready in wait([*busy, *ended]):
                ready = ended.get(ready, ready)
                if ready not in busy:
                    continue  # its result and its exit both woke this wait: handled
                proc, i = busy.pop(ready)
                try:  # a busy worker that ended without a result died (its pipe may be open in a sibling)
                    if not ready.poll():
                        raise EOFError
                    j, png, outcome = ready.recv()
                except EOFError:
                    proc.join()
                    raise RuntimeError(f"a figure worker (pid {proc.pid}) died while drawing figure {i} "
                                       f"({_call_name(calls[i])}), exit code {proc.exitcode}") from None
                if png is None:
                    raise outcome
                results[j] = (png, outcome)
                if todo:
                    ready.send(i := todo.pop())
                    busy[ready] = (proc, i)
        for parent, _ in pipes:
            parent.send(None)  # all drawn: the workers end
        finished = True
    finally:
        for (parent, _), proc in zip(pipes, procs):
            if not finished:  # stopped by an error: the other figures are not needed
                proc.terminate()
            parent.close()
            proc.join()
    return results


def figure_workers(n_jobs: int) -> int:
    """Processes to draw ``n_jobs`` figures with: one per usable core, at most ``FIGURE_WORKERS`` and
    ``n_jobs``; 1 (draw here) where the platform cannot fork safely (``CAN_FORK``: Linux only)."""
    _check_int("n_jobs", n_jobs, low=0)
    if not CAN_FORK:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n_jobs, cores, FIGURE_WORKERS))


def _on_cpu(obj):
    """``obj`` with every tensor, module and device inside it (through dicts, lists, tuples and dataclasses)
    on the CPU: CUDA ones copied there, everything else shared as it is. What a forked figure worker, which
    cannot use its parent's CUDA context, can draw from."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, torch.device):
        return torch.device("cpu")
    if isinstance(obj, nn.Module):
        on_cuda = any(t.is_cuda for t in [*obj.parameters(), *obj.buffers()])
        return copy.deepcopy(obj).cpu() if on_cuda else obj
    if isinstance(obj, dict):
        return {key: _on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):  # named tuples are left as they are
        return type(obj)(_on_cpu(value) for value in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: _on_cpu(getattr(obj, f.name)) for f in fields(obj) if f.init})
    return obj


def _cpu_calls(calls: list) -> list | None:
    """``calls`` (``functools.partial`` objects) with their arguments ``_on_cpu``; None if any call is not a
    partial (its inputs cannot be seen)."""
    if not all(isinstance(call, functools.partial) for call in calls):
        return None
    return [functools.partial(call.func, *_on_cpu(call.args), **_on_cpu(call.keywords)) for call in calls]


def render_figures(calls: Sequence[Callable[[], Figure]], workers: int | None = None,
                   cuda_free: bool = False, timer=None) -> list[bytes]:
    """Draw figures side by side. Each of ``calls`` builds one figure (e.g. ``functools.partial(
    kh.plot_completeness, result, save=path)``); they run in ``workers`` forked processes (default
    ``figure_workers``; 1: here, one after another) and come back, in order, as PNG bytes for ``show`` -- byte
    for byte what drawing them here gives. Workers inherit the calls (nothing is sent to them), so any inputs
    work. A forked child cannot use this process's CUDA context: once CUDA is in use here, the workers get
    the calls with their arguments moved to the CPU (``_on_cpu``: tensors, modules, devices), unless
    ``cuda_free`` promises that the calls touch no CUDA tensor; calls that are not ``functools.partial``
    objects are then drawn here. ``timer`` (a ``Stopwatch``) gets each figure's share of the wall time (in
    proportion to its drawing time in its worker) under its plot function's name."""
    if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence) or not all(callable(c) for c in calls):
        raise ValueError(f"calls must be a list of functions that each build a figure (functools.partial of a "
                         f"plot function), got {_describe(calls)}")
    _check_timer(timer)
    calls = list(calls)
    workers = figure_workers(len(calls)) if workers is None else workers
    _check_int("workers", workers, low=1)
    if not isinstance(cuda_free, bool):
        raise ValueError(f"cuda_free must be True or False, got {cuda_free!r}")
    here = workers == 1 or len(calls) < 2 or not CAN_FORK
    if not here and not cuda_free and torch.cuda.is_available() and torch.cuda.is_initialized():
        cpu_calls = _cpu_calls(calls)
        here, calls = (True, calls) if cpu_calls is None else (False, cpu_calls)
    t0 = time.perf_counter()
    if here:
        results = []
        for call in calls:
            start = time.perf_counter()
            results.append((_figure_png(call), time.perf_counter() - start))
    else:
        results = _draw_in_workers(calls, min(workers, len(calls)))
    if timer is not None:
        wall, drawing = time.perf_counter() - t0, sum(seconds for _, seconds in results) or 1.0
        for call, (_, seconds) in zip(calls, results):
            timer.add_figure(_call_name(call), wall * seconds / drawing)
    return [png for png, _ in results]


def _message_figure(title: str, message: str) -> Figure:
    """A small figure that only says ``message`` (for inputs with nothing to plot)."""
    fig, ((ax,),) = _grid_figure(6, 2, MESSAGE_LAYOUT)
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return fig
