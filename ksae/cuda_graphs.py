"""A training step replayed as one captured CUDA graph (``GraphedStep``); eager elsewhere."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Callable

import torch

from ._util import _check_callable, _check_device, _check_instance, _check_int, _describe
from .config import Config

GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before a CUDA graph is captured (PyTorch's recipe)


class CudaGraphBackend:
    """One ``torch.cuda.CUDAGraph``: capture, replay, and the side stream that warm-up steps run on."""

    def __init__(self):
        self.graph, self.stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()

    @contextlib.contextmanager
    def side_stream(self):
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, fn: Callable[[], None]) -> None:
        torch.cuda.synchronize()
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


def graph_backend(cfg: Config, device: torch.device) -> CudaGraphBackend | None:
    """A fresh ``CudaGraphBackend`` if ``cfg.cuda_graphs`` and ``device`` is CUDA, else ``None`` (eager)."""
    _check_instance("cfg", cfg, Config)
    return CudaGraphBackend() if cfg.cuda_graphs and _check_device("device", device).type == "cuda" else None


def _check_backend(backend) -> None:
    """``None`` (eager) or a backend with ``side_stream``, ``capture`` and ``replay`` (``CudaGraphBackend``, or a
    stand-in that records)."""
    if backend is not None and not all(callable(getattr(backend, m, None)) for m in ("side_stream", "capture",
                                                                                    "replay")):
        raise ValueError(f"backend must be None or a CudaGraphBackend (side_stream, capture, replay), got "
                         f"{_describe(backend)}")


class GraphedStep:
    """A training step ``step(*batch)``, run eagerly or captured once and replayed as one CUDA graph.

    ``step`` does all its work in place (parameters, optimiser state, running sums) and returns nothing; it
    reads only its ``batch`` tensors and tensors that outlive the loop. With a ``backend``: the first
    ``warmup`` batches of ``rows`` rows run eagerly on the backend's side stream, the next is captured into
    static copies of its tensors, and every later batch of that shape is copied into them and replayed. A
    batch of another shape (an epoch's short last batch) runs eagerly. If capture fails, one warning says why
    and every later step runs eagerly. Without a backend, calling it is calling ``step``. ``replays`` counts
    the graph's replays.
    """

    def __init__(self, step: Callable[..., None], rows: int, backend=None, warmup: int = GRAPH_WARMUP_STEPS):
        _check_callable("step", step)
        _check_int("rows", rows, low=1)
        _check_backend(backend)
        _check_int("warmup", warmup, low=0)
        self.step, self.rows, self.backend, self.warmup = step, rows, backend, warmup
        self.static: list[torch.Tensor] | None = None
        self.warmed = self.replays = 0

    def __call__(self, *batch: torch.Tensor) -> None:
        if self.backend is None or batch[0].shape[0] != self.rows:
            return self.step(*batch)
        if self.warmed < self.warmup:
            self.warmed += 1
            with self.backend.side_stream():
                return self.step(*batch)
        if self.static is None and not self._capture(batch):
            return self.step(*batch)
        for buffer, b in zip(self.static, batch):
            buffer.copy_(b)
        self.backend.replay()
        self.replays += 1

    def _capture(self, batch: Sequence[torch.Tensor]) -> bool:
        self.static = [b.clone() for b in batch]
        try:
            self.backend.capture(lambda: self.step(*self.static))
            return True
        except RuntimeError as exc:
            warnings.warn(f"CUDA graph capture failed, training continues eagerly: {exc}", RuntimeWarning,
                          stacklevel=3)
            self.backend = self.static = None
            return False
