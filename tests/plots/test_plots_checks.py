"""ksae.plots.checks: the validation checks' figures render with their series, inside the figure, and reject
results that do not fit.
"""

import pytest

import ksae.plots.style
import ksae_helpers as kh


def assert_labels_inside(fig):
    """Every axes' labels, titles and legends, the suptitle and figure legends lie inside ``fig`` (fixed layouts
    clip nothing); returns ``fig``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    with ksae.plots.style._figure_style():
        canvas.draw()
        renderer = canvas.get_renderer()
        tolerance = 2  # pixels
        for artist in [*fig.axes, *fig.legends, *([fig._suptitle] if fig._suptitle else [])]:
            box = artist.get_tightbbox(renderer) if artist in fig.axes else artist.get_window_extent(renderer)
            assert box.x0 >= -tolerance and box.y0 >= -tolerance, (artist, box)
            assert box.x1 <= fig.bbox.x1 + tolerance and box.y1 <= fig.bbox.y1 + tolerance, (artist, box)
    return fig


def test_figures_render_with_their_series(small):
    import time

    t0 = time.perf_counter()
    fig = assert_labels_inside(kh.plot_randomization(small["rand"]))
    axes = fig.axes
    assert len(axes) == 4 and "Independent, object pixels" in axes[3].get_title()
    dashed = [line for line in axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == len(kh.METHOD_LABELS)  # one reference per method
    fig = assert_labels_inside(kh.plot_unit_deletion(small["units"]))
    assert len(fig.axes) == 4 and "Deletion" in fig.axes[0].get_title()
    assert len(fig.axes[0].get_legend().get_texts()) == 3
    fig = assert_labels_inside(kh.plot_completeness(small["dec"]))
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 4
    sweep = assert_labels_inside(kh.plot_completeness(small["comp"]))  # the ig_completeness sweep (no 50 steps)
    assert len(sweep.axes) == 2  # its old figure
    fig = assert_labels_inside(kh.plot_correlation_summary(small["stats"], list(small["maps"])))
    assert "null" in fig.axes[0].get_xlabel()
    assert time.perf_counter() - t0 < 15  # generous: four figures, each well under the 1.5 s target alone


def test_figures_reject_results_that_do_not_fit(small):
    with pytest.raises(ValueError, match="lacks"):
        kh.plot_unit_deletion({"curves": {}})
    broken = {**small["rand"], "stages": small["rand"]["stages"][:-1]}
    with pytest.raises(ValueError, match="stages, expected"):
        kh.plot_randomization(broken)


def test_object_focus_widens_for_both_families(small):
    """Eleven methods (both families): the figure widens and every label stays inside; six keep the old size."""
    focus = kh.object_focus(small["maps"], small["x"])
    fig = assert_labels_inside(kh.plot_object_focus(focus))
    assert len(fig.axes[0].patches) == len(kh.METHOD_LABELS) + 1 and fig.get_figwidth() > 7  # + the CI band
    gradient = {m: small["maps"][m] for m in kh.METHOD_FAMILIES["gradient"]}
    assert kh.plot_object_focus(kh.object_focus(gradient, small["x"])).get_figwidth() == 7
