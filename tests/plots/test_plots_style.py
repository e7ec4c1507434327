"""ksae.plots.style: fixed layouts in inches, and what every plot function's wrapper does (timer, garbage
collector paused).
"""

import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import ksae.plots.maps
import ksae.plots.style
import ksae_helpers as kh
from ksae.plots import figure as plot_figure


def test_grid_figure_places_panels_at_fixed_inches():
    layout = {"left": 1.0, "right": 0.5, "top": 0.5, "bottom": 1.0, "wspace": [1.0, 0.5], "hspace": 0.5}
    fig, axes = ksae.plots.style._grid_figure(10, 5, layout, 2, 3, width_ratios=[2, 1, 1], sharey=True)
    assert fig.get_layout_engine() is None and axes.shape == (2, 3)  # no layout engine: measured once, at draw
    inches = np.array([[np.array(ax.get_position().bounds) * [10, 5, 10, 5] for ax in row] for row in axes])
    np.testing.assert_allclose(inches[0, :, 0], [1.0, 5.5, 7.75])  # 7 inches of panels 2:1:1, gaps 1 and 0.5
    np.testing.assert_allclose(inches[0, :, 2], [3.5, 1.75, 1.75])
    np.testing.assert_allclose(inches[:, 0, 1], [3.0, 1.0])  # rows of 1.5 inches, 0.5 apart, 1 inch from the bottom
    np.testing.assert_allclose(inches[:, :, 3], 1.5)
    assert all(ax.get_shared_y_axes().joined(axes[0, 0], ax) for ax in axes.flat)
    assert [ax.yaxis.get_tick_params()["labelleft"] for ax in axes[1]] == [True, False, False]
    plt.close(fig)
    ksae.plots.style._suptitle(fig, "title")
    assert fig._suptitle.get_position()[1] == pytest.approx(1 - kh.SUPTITLE_PAD / 5)


def test_a_stopwatch_gets_the_figures_it_is_given(uneven, monkeypatch):
    """A plot function's seconds go to the ``Stopwatch`` it is given, once per call (a plot function called
    inside another without the timer is not counted again), and the times are real (a slowed figure shows it).
    No timer, no record anywhere: timings are the caller's object, not process state."""
    sel, maps = uneven
    watch, other = kh.Stopwatch(), kh.Stopwatch()
    kh.plot_comparison_grid(sel, maps, ["a", "b", "c"], max_samples_per_class=2)  # no timer
    kh.plot_class_average_maps(maps, sel.y, ["a", "b", "c"], timer=watch)
    inner = kh.plot_class_average_maps

    @ksae.plots.style._styled
    def outer():
        return inner(maps, sel.y, ["a", "b", "c"])

    slow = plot_figure._finish
    monkeypatch.setattr(ksae.plots.maps, "_finish", lambda fig, save: (time.sleep(0.2), slow(fig, save))[1])
    outer(timer=other)
    assert list(watch.figures) == ["plot_class_average_maps"] and len(watch.figures["plot_class_average_maps"]) == 1
    assert list(other.figures) == ["outer"] and len(other.figures["outer"]) == 1 and other.figures["outer"][0] >= 0.2
    assert watch.figures["plot_class_average_maps"][0] > 0 and watch.phases == {} == other.phases


def test_figures_pause_the_garbage_collector_and_leave_no_figure_behind(uneven):
    import gc

    sel, maps = uneven
    seen = []

    @ksae.plots.style._styled
    def probe():
        seen.append(gc.isenabled())
        return kh.plot_class_average_maps(maps, sel.y, ["a", "b", "c"])

    def figures_alive():
        gc.collect()
        return sum(type(o) is Figure for o in gc.get_objects())  # type(): isinstance warns on torch shims

    alive = figures_alive()
    for _ in range(3):
        probe()
    assert seen == [False] * 3 and gc.isenabled()  # paused inside, back on after
    assert figures_alive() == alive  # every figure's cycles collected once the collector runs again
    with pytest.raises(ValueError, match="lacks"):
        kh.plot_unit_deletion({"curves": {}})
    assert gc.isenabled()  # back on after an error too
    gc.disable()
    try:
        probe()
        assert not gc.isenabled()  # a caller's disabled collector stays disabled
    finally:
        gc.enable()
