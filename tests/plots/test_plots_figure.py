"""ksae.plots.figure: palette PNGs, and drawing figures in worker processes (same bytes, inputs moved to the
CPU, a dying worker raises, unsaved figures laid out once).
"""

import collections
import functools
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import ksae_helpers as kh
from ksae.plots import figure as plot_figure


def test_png_bytes_is_one_palette_png_of_the_figure():
    import io

    from PIL import Image

    fig = plt.figure(figsize=(2, 1), facecolor=(1.0, 0.0, 0.0))
    image = Image.open(io.BytesIO(kh.png_bytes(fig, dpi=50)))
    assert image.format == "PNG" and image.mode == "P" and image.size == (100, 50)
    assert image.convert("RGB").getcolors() == [(5000, (255, 0, 0))]
    plt.close(fig)
    values = torch.linspace(-1, 1, 784)  # a smooth map: the palette keeps it recognisable
    fig = kh.plot_attribution_comparison(values.abs(), {"simple": values, "integrated": -values}, "x", 0.5,
                                         save=None)
    rgb = np.asarray(Image.open(io.BytesIO(kh.png_bytes(fig))).convert("RGB"), dtype=float)
    fig.set_dpi(kh.DPI)
    fig.canvas.draw()
    reference = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    assert rgb.shape == reference.shape and np.abs(rgb - reference).mean() < 2.0  # on a 0-255 scale


def _dies():
    """A figure call whose process ends at once (as a worker killed for memory would)."""
    os._exit(3)


def test_a_worker_that_dies_raises_at_once(uneven):
    sel, maps = uneven
    calls = [functools.partial(kh.plot_class_average_maps, maps, sel.y, ["a", "b", "c"]), functools.partial(_dies)]
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="died while drawing figure 1"):
        kh.render_figures(calls, workers=2)
    assert time.perf_counter() - t0 < 30


def _traced_figure(folder, device, nested, module):
    """A figure that records which process drew it and checks that its inputs reached it on the CPU."""
    assert device == torch.device("cpu") and nested["w"][0].device.type == "cpu"
    assert all(not p.is_cuda for p in module.parameters())
    (folder / str(os.getpid())).touch()
    return plot_figure._message_figure("traced", "drawn")


def test_on_cpu_moves_devices_and_keeps_cpu_objects():
    sae = kh.KSparseAutoencoder(4, 784, 16)
    t = torch.ones(3)
    Point = collections.namedtuple("Point", "x y")
    out = plot_figure._on_cpu({"device": torch.device("cuda", 1), "items": [t, (sae, 2)], "point": Point(t, 1),
                               "text": "a"})
    assert out["device"] == torch.device("cpu") and out["text"] == "a"
    assert out["items"][0] is t and out["items"][1][0] is sae and out["point"].x is t  # on the CPU already: shared
    assert isinstance(out["items"][1], tuple) and isinstance(out["point"], Point)
    sel = kh.Selection(torch.arange(2), torch.rand(2, 784), torch.tensor([0, 1]), torch.rand(2), n_requested=1)
    moved = plot_figure._on_cpu(sel)
    assert isinstance(moved, kh.Selection) and moved.x is sel.x and moved.n_requested == 1
    assert plot_figure._cpu_calls([functools.partial(print, torch.device("cuda"))])[0].args == (torch.device("cpu"),)
    assert plot_figure._cpu_calls([functools.partial(print), lambda: None]) is None


def test_render_figures_in_workers_any_inputs_same_bytes_and_wall_time(uneven, tmp_path, monkeypatch):
    # inputs with torch tensors and a module (inherited by the forked workers, never pickled), order kept,
    # errors raised in the parent, and the timer gets the wall time split among the figures
    sel, maps = uneven
    sae = kh.KSparseAutoencoder(4, 784, 16)
    calls = [functools.partial(kh.plot_class_average_maps, maps, sel.y, ["a", "b", "c"]),
             functools.partial(kh.plot_feature_atlas, sae, torch.rand(16), n_units=8, save=tmp_path / "atlas.png"),
             functools.partial(kh.plot_class_average_maps, maps, sel.y, ["a", "b", "c"], methods=["decoder"])]
    here = kh.render_figures(calls, workers=1)
    watch = kh.Stopwatch()
    t0 = time.perf_counter()
    forked = kh.render_figures(calls, workers=2, timer=watch)
    wall = time.perf_counter() - t0
    assert forked == here and len(set(forked)) == 3 and (tmp_path / "atlas.png").read_bytes() == forked[1]
    assert sorted(watch.figures) == ["plot_class_average_maps", "plot_feature_atlas"]
    assert 0 < sum(sum(v) for v in watch.figures.values()) <= wall
    # a forked child cannot use CUDA: with CUDA in use here, figures are drawn here unless promised CUDA-free
    ran_here = []

    def noted(call):
        return lambda: (ran_here.append(call), call())[1]

    assert kh.render_figures([noted(c) for c in calls], workers=2) == here and ran_here == []  # in workers
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert kh.render_figures([noted(c) for c in calls], workers=2) == here and len(ran_here) == 3  # not partials: here
    # partials go to the workers with their arguments moved to the CPU (tensors, modules, devices)
    pids = tmp_path / "pids"
    pids.mkdir()
    traced = [functools.partial(_traced_figure, pids, torch.device("cuda"), {"w": [torch.ones(2)]}, sae)] * 2
    assert kh.render_figures(traced + calls, workers=2)[2:] == here and len(ran_here) == 3
    seen = sorted(p.name for p in pids.iterdir())
    assert seen and str(os.getpid()) not in seen
    assert kh.render_figures([noted(c) for c in calls], workers=2, cuda_free=True) == here and len(ran_here) == 3
    with pytest.raises(ValueError, match="cuda_free"):
        kh.render_figures(calls, cuda_free="yes")
    with pytest.raises(ValueError, match="cross_stats must be the dict cross_method_statistics"):  # in a worker
        kh.render_figures([calls[0], functools.partial(kh.plot_correlation_summary, {"pairs": {}}, ["simple"])],
                          workers=2)


def test_unsaved_figures_are_laid_out_once_and_match_saved_ones(uneven, tmp_path, monkeypatch):
    # without save a figure gets one layout pass (so a notebook shows it in the module's style), except when
    # render_figures builds it: that renders it at once, and the bytes equal those of the saved figure
    sel, maps = uneven
    plot = functools.partial(kh.plot_class_average_maps, maps, sel.y, ["a", "b", "c"])
    saved = kh.render_figures([functools.partial(plot, save=tmp_path / "maps.png")], workers=1)
    layouts = []
    monkeypatch.setattr(Figure, "draw_without_rendering", lambda fig: layouts.append(fig))
    assert kh.render_figures([plot, plot], workers=1) == saved * 2 and layouts == []
    assert saved[0] == (tmp_path / "maps.png").read_bytes()
    plot()
    assert len(layouts) == 1
    kh.plot_class_average_maps(maps, sel.y, ["a", "b", "c"], layout=False)  # its caller renders it at once
    assert len(layouts) == 1
