"""The "change k and rerun" loop: selection shortfalls, output folders per configuration, compact notebooks."""

import collections
import functools
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import ksae._util
import ksae.plots.axes
import ksae.plots.figure
import ksae.plots.maps
import ksae.plots.style
import ksae.runtime
import ksae.selection
import ksae_helpers as kh
from ksae.plots import figure as plot_figure

CLASSES = ("a", "b", "c", "d")


def _scenario():
    """Test set of 4 classes with hand-set predictions: (data, probabilities [N, 4]).

    a: 10 correct at 0.9; b: 2 correct at 0.9, correct at 0.5/0.6/0.7, one wrong;
    c: none above 0.8, correct at 0.3/0.7/0.6, wrong at 0.95; d: no correct image.
    """
    rows = ([(0, 0, 0.9)] * 10 + [(1, 1, 0.9)] * 2 + [(1, 1, 0.5), (1, 1, 0.6), (1, 1, 0.7), (1, 0, 0.9)]
            + [(2, 2, 0.3), (2, 2, 0.7), (2, 2, 0.6), (2, 1, 0.95)] + [(3, 0, 0.9), (3, 2, 0.9)])
    y = torch.tensor([r[0] for r in rows])
    probs = torch.zeros(len(rows), len(CLASSES))
    for i, (_, pred, conf) in enumerate(rows):
        probs[i] = (1 - conf) / (len(CLASSES) - 1)
        probs[i, pred] = conf
    x = torch.arange(len(rows), dtype=torch.float32)[:, None].expand(-1, 784).contiguous()
    data = kh.FashionMNIST(x[:0], y[:0], x, y, classes=CLASSES)
    return data, probs


@pytest.fixture
def scenario(monkeypatch):
    data, probs = _scenario()
    monkeypatch.setattr(ksae.selection, "predict", lambda sae, clf, x, device: probs)
    return data


def test_selection_takes_what_exists_and_falls_back_to_the_most_confident_correct(scenario):
    with pytest.warns(UserWarning) as record:
        sel = kh.select_high_confidence(None, None, scenario, "cpu", 4, threshold=0.8, seed=0)
    assert len(record) == 1  # one warning, one line, naming every short class with its count
    message = str(record[0].message)
    assert "\n" not in message and "b 2" in message and "c 1 (1 below the threshold)" in message
    assert "d 0 (no correct image" in message and "a " not in message.split("fewer for:")[1]
    assert sel.per_class(CLASSES) == {"a": 4, "b": 2, "c": 1, "d": 0}
    assert sel.indices[sel.y == 1].tolist() == [10, 11]  # the two passing, never the below-threshold ones
    assert sel.indices[sel.y == 2].tolist() == [17]  # class c's most confident correct image (0.7)
    assert sel.fallback.tolist() == [False] * 6 + [True]
    assert sel.shortfalls == {"b": {"passing": 2, "selected": 2, "fallback": 0},
                              "c": {"passing": 0, "selected": 1, "fallback": 1}}
    assert sel.skipped == ["d"] and sel.n_candidates == {"a": 10, "b": 2, "c": 0, "d": 0}
    assert torch.equal(sel.x[:, 0], sel.indices.float()) and torch.equal(sel.y, scenario.y_test[sel.indices])


def test_selection_min_per_class_tops_up_in_confidence_order(scenario):
    with pytest.warns(UserWarning):
        sel = kh.select_high_confidence(None, None, scenario, "cpu", 4, threshold=0.8, seed=0, min_per_class=3)
    assert sel.indices[sel.y == 1].tolist() == [10, 11, 14]  # 2 passing + the 0.7 one
    assert sel.indices[sel.y == 2].tolist() == [16, 17, 18]  # 0.3, 0.7, 0.6: all three (sorted by index)
    assert sel.indices[sel.y == 0].tolist() == sorted(sel.indices[sel.y == 0].tolist()) and (sel.y == 0).sum() == 4
    assert int(sel.fallback.sum()) == 1 + 3


def test_selection_warns_only_about_what_falls_short(scenario):
    with pytest.warns(UserWarning) as record:
        sel = kh.select_high_confidence(None, None, scenario, "cpu", 1, threshold=0.0, seed=3)
    assert len(record) == 1 and str(record[0].message).endswith("fewer for: d 0 (no correct image: class left out)")
    assert sel.per_class(CLASSES) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert sel.skipped == ["d"] and sel.shortfalls == {} and not sel.fallback.any()
    data = kh.FashionMNIST(*[t[scenario.y_test < 3] for t in (scenario.x_test, scenario.y_test)] * 2,
                           classes=CLASSES[:3])
    probs = ksae.selection.predict(None, None, None, None)[scenario.y_test < 3, :3]
    ksae.selection.predict = lambda *args: probs  # restored by monkeypatch (the fixture patched this attribute)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel = kh.select_high_confidence(None, None, data, "cpu", 2, threshold=0.0, seed=3)
    assert sel.warning is None and sel.per_class(CLASSES[:3]) == {"a": 2, "b": 2, "c": 2}


def test_selection_summary_records_the_shortfall_as_json(scenario):
    with pytest.warns(UserWarning):
        sel = kh.select_high_confidence(None, None, scenario, "cpu", 4, threshold=0.8)
    block = json.loads(json.dumps(ksae._util._jsonable(kh.selection_summary(sel, 0.8))))
    assert block["n_images"] == 7 and block["n_per_class"] == 4 and block["n_fallback"] == 1
    assert block["selected_per_class"] == {"a": 4, "b": 2, "c": 1, "d": 0}
    assert block["skipped_classes"] == ["d"] and block["warning"] == sel.warning
    assert block["shortfalls"]["c"] == {"passing": 0, "selected": 1, "fallback": 1}


def test_selection_rejects_bad_arguments(scenario):
    for kwargs in ({"n_per_class": 0}, {"n_per_class": 2.5}, {"threshold": 1.0}, {"min_per_class": 0}):
        args = {"n_per_class": 2, **kwargs}
        with pytest.raises(ValueError):
            kh.select_high_confidence(None, None, scenario, "cpu", **args)


# --- output folders per configuration ---------------------------------------------------------------


def test_default_configuration_keeps_the_committed_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kh.run_name(kh.Config()) == "default"
    assert kh.run_name(kh.Config(), samples_per_class=100, n_subset=300) == "default"
    assert kh.output_paths(kh.Config()) == ("figures", "results/summary.json")
    assert (tmp_path / "figures").is_dir() and (tmp_path / "results").is_dir()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []  # the write check leaves nothing


def test_other_configurations_write_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kh.output_paths(kh.Config(k=20)) == ("runs/k20/figures", "runs/k20/summary.json")
    cfg = kh.Config(k=1, ae_epochs=3, train_subset=3000, confidence_threshold=0.5)
    name = "k1_ae_epochs3_train_subset3000_confidence_threshold0.5_samples_per_class3_n_subset20"
    assert kh.run_name(cfg, samples_per_class=3, n_subset=20) == (
        name[:71] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8])
    assert kh.run_name(kh.Config(seed=2), samples_per_class=3) == "seed2_samples_per_class3"
    assert kh.run_name(kh.Config(), n_subset=9, samples_per_class=3) == kh.run_name(
        kh.Config(), samples_per_class=3, n_subset=9)  # the notebook and the tests may name them in any order
    # paths the user chose are kept; "" (save no figures) stays ""
    assert kh.output_paths(kh.Config(k=20), "figs", "out/s.json") == ("figs", "out/s.json")
    assert kh.output_paths(kh.Config(k=20), "", runs_dir="elsewhere") == ("", "elsewhere/k20/summary.json")
    assert (tmp_path / "runs" / "k20" / "figures").is_dir() and (tmp_path / "out").is_dir()


def test_output_paths_reject_bad_input_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(ValueError, match="blocker.*writable folder"):
        kh.output_paths(kh.Config(k=20), runs_dir="blocker")
    with pytest.raises(ValueError, match="blocker"):
        kh.output_paths(kh.Config(), "blocker/figures")
    with pytest.raises(ValueError, match="unknown run parameter"):
        kh.output_paths(kh.Config(), samples_per_klass=3)
    with pytest.raises(ValueError, match="must be a Config"):
        kh.run_name({"k": 20})


def test_run_defaults_match_the_notebook_parameters_cell():
    nb = json.loads((Path(kh.__file__).parent / "fashion_mnist_interpretability.ipynb").read_text())
    params = {}
    exec("".join(nb["cells"][next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")]["source"]),
         {}, params)
    assert params["SAMPLES_PER_CLASS"] == kh.RUN_DEFAULTS["samples_per_class"]
    assert params["N_COMPLETENESS"] == kh.RUN_DEFAULTS["n_completeness"]
    assert params["N_RANDOMIZATION"] == kh.RUN_DEFAULTS["n_randomization"]
    assert params["N_SUBSET"] == kh.RUN_DEFAULTS["n_subset"]
    assert (params["K"], params["AE_EPOCHS"], params["CLF_EPOCHS"], params["SEED"]) == (50, 30, 50, 0)
    assert (params["FIGURE_DIR"], params["SUMMARY_PATH"]) == (kh.DEFAULT_FIGURE_DIR, kh.DEFAULT_SUMMARY_PATH)


# --- compact notebooks ------------------------------------------------------------------------------


def _stream(name, text):
    return {"output_type": "stream", "name": name, "text": text}


def test_compact_notebook_keeps_the_last_state_of_each_progress_bar(tmp_path):
    image = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}, "metadata": {}}
    outputs = [_stream("stderr", "\rtrain:   0%| 0/9"), _stream("stderr", ["\rtrain:  50%| 4/9", "\rtrain: 100%| 9/9"]),
               _stream("stderr", "\n"), _stream("stdout", "loss 0.5\n"), _stream("stderr", "\r\rdone 1/2\rdone 2/2\n"),
               image, _stream("stdout", "a\r\n"), _stream("stdout", "\r")]
    code = {"cell_type": "code", "id": "c", "source": "print(1)", "metadata": {}, "outputs": outputs,
            "execution_count": 1}
    nb = {"cells": [{"cell_type": "markdown", "id": "m", "source": "# x", "metadata": {}}, code],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}}, "nbformat": 4,
          "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    before, after = kh.compact_notebook(path)
    assert before == len(json.dumps(nb)) and after == path.stat().st_size
    out = json.loads(path.read_text())
    for o in out["cells"][1]["outputs"]:  # written as Jupyter does: multi-line text as a list of lines
        o.update({"text": "".join(o["text"])} if "text" in o else {})
    assert out["cells"][1]["outputs"] == [_stream("stderr", "train: 100%| 9/9\n"), _stream("stdout", "loss 0.5\n"),
                                          _stream("stderr", "done 2/2\n"), image, _stream("stdout", "a\n\r")]
    assert out["cells"][0] == {**nb["cells"][0], "source": ["# x"]} and out["metadata"] == nb["metadata"]
    assert kh.compact_notebook(path)[0] == kh.compact_notebook(path)[1] == after  # idempotent


def test_compact_notebook_rejects_what_is_not_a_notebook(tmp_path):
    (tmp_path / "bad.ipynb").write_text("{not json")
    for path in (tmp_path / "bad.ipynb", tmp_path / "missing.ipynb"):
        with pytest.raises(ValueError, match="readable .ipynb"):
            kh.compact_notebook(path)


# --- classifier codes at large k ----------------------------------------------------------------------


@pytest.mark.parametrize("hflip, shift", [(True, 1), (False, 2), (True, 0)])
def test_view_of_matches_classifier_views(hflip, shift):
    cfg = kh.Config(clf_hflip=hflip, clf_shift=shift)
    x = torch.rand(12, 784, generator=torch.Generator().manual_seed(0))
    views = list(kh.classifier_views(x, cfg))
    assert len(views) == kh.n_classifier_views(cfg)
    view = torch.arange(12) % len(views)
    expected = torch.stack([views[v][i] for i, v in enumerate(view.tolist())])
    assert torch.equal(kh.view_of(x, view, cfg), expected)


def test_view_codes_held_or_per_batch_agree():
    cfg = kh.Config(k=7, d_hidden=64, clf_shift=1)
    torch.manual_seed(0)
    sae = kh.KSparseAutoencoder(7, 784, 64)
    x = torch.rand(40, 784, generator=torch.Generator().manual_seed(1))
    held = kh.ViewCodes(sae, x, cfg, torch.device("cpu"))
    lazy = kh.ViewCodes(sae, x, cfg, torch.device("cpu"), budget=held.nbytes - 1)
    assert held.held and not lazy.held and held.nbytes == 10 * 40 * 7 * 8
    assert held.indices.dtype == torch.int32
    view, idx = torch.randint(10, (25,)), torch.randint(40, (25,))
    (hv, hi), (lv, li) = held.batch(view, idx), lazy.batch(view, idx)
    order_h, order_l = hi.long().sort(1), li.sort(1)  # same active set, same values (order may differ)
    assert torch.equal(order_h.values, order_l.values)
    torch.testing.assert_close(hv.gather(1, order_h.indices), lv.gather(1, order_l.indices))
    z = sae.encode(kh.view_of(x[idx], view, cfg))  # independent reference: the dense code
    torch.testing.assert_close(torch.zeros_like(z).scatter(1, hi.long(), hv), z)


def test_view_codes_at_k_1024_stay_within_the_memory_budget():
    cfg = kh.Config(k=1024)
    sae = kh.KSparseAutoencoder(1024, 784, 1024)
    codes = kh.ViewCodes(sae, torch.zeros(60_000, 784), cfg, torch.device("cpu"))
    assert not codes.held and not hasattr(codes, "values")  # 4.9 GB would not be held; only x is kept
    assert kh.ViewCodes(sae, torch.zeros(3, 784), kh.Config(k=50), "cpu").nbytes == 10 * 3 * 1024 * 8
    assert 10 * 60_000 * 50 * 8 <= kh.CODE_MEMORY_BUDGET  # the default k = 50 keeps the fast held path


# --- figures: rendering, heatmaps, unequal class counts --------------------------------------------------


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


def test_annotated_heatmap_writes_each_value_legibly():
    fig = plt.figure()
    ax = fig.add_subplot()
    values = np.array([[0.0, 1.0], [0.5, 0.25]])
    ksae.plots.maps._annotated_heatmap(ax, values, ["a", "b"], ["c", "d"], "Blues", (0, 1), ".2f", "share")
    texts = {t.get_text(): t.get_color() for t in ax.texts}
    assert set(texts) == {"0.00", "1.00", "0.50", "0.25"}
    assert texts["1.00"] == "white" and texts["0.00"] == "0.15"  # dark cell: white text; light: dark text
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"] and len(fig.axes) == 2  # + colour bar
    plt.close(fig)


@pytest.fixture(scope="module")
def uneven():
    """A selection with 3, 0, 1 images of classes a, b, c, and maps whose class means are known."""
    y = torch.tensor([0, 0, 0, 2])
    x = torch.rand(4, 784, generator=torch.Generator().manual_seed(0))
    maps = {"simple": torch.arange(4, dtype=torch.float32)[:, None].expand(-1, 784) - 1.5,
            "decoder": torch.ones(4, 784)}
    sel = kh.Selection(torch.arange(4), x, y, torch.full((4,), 0.9), {"a": 3, "b": 0, "c": 1}, 2,
                       torch.tensor([False, False, False, True]), {"b": {"passing": 0, "selected": 0, "fallback": 0}})
    return sel, maps


def test_figures_cope_with_unequal_class_counts(uneven, tmp_path):
    sel, maps = uneven
    figs = kh.plot_comparison_grid(sel, maps, ["a", "b", "c"], max_samples_per_class=2, save_dir=str(tmp_path))
    assert [f._suptitle.get_text().rsplit(" (model", 1)[0] for f in figs] == ["a", "a", "c" + kh.FALLBACK_NOTE]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["comparison_a_0.png", "comparison_a_1.png",
                                                              "comparison_c_0.png"]
    fig = kh.plot_class_average_maps(maps, sel.y, ["a", "b", "c"])
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles == ["a\n(n = 3)", "b\n(n = 0)", "c\n(n = 1)"]
    simple_row = fig.axes[:3]
    assert len(simple_row[1].images) == 0 and simple_row[0].images[0].get_array().mean() == pytest.approx(-0.5)
    assert simple_row[2].images[0].get_array().mean() == pytest.approx(1.5)
    sae = kh.KSparseAutoencoder(4, 784, 16)
    contrib = torch.zeros(4, 16)
    contrib[:3, 5], contrib[3, 7] = 1.0, 2.0
    fig = kh.plot_class_units(contrib, sel.y, sae, ["a", "b", "c"], n_units=2)
    titles = [t.get_text() for t in fig.axes[0].texts]  # one mosaic: titles row by row, none for class b
    assert len(titles) == 4 and titles[0].startswith("unit 5,") and titles[2].startswith("unit 7,")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a\n(n = 3)", "b\n(n = 0)", "c\n(n = 1)"]
    mosaic, height = np.ma.getdata(fig.axes[0].images[0].get_array()), 28 + kh.MOSAIC_TITLE_GAP[0]
    assert np.isnan(mosaic[height:2 * height]).all() and np.isfinite(mosaic[:height]).any()  # class b: blank


def test_mosaic_places_each_image_with_a_gap():
    images = np.arange(2 * 3 * 28 * 28, dtype=float).reshape(2, 3, 28, 28)
    out = ksae.plots.axes._mosaic(images)
    side = 28 + kh.MOSAIC_GAP
    assert out.shape == (2 * side, 3 * side)
    gap = kh.MOSAIC_GAP  # rows: gap first (room for titles), then the image; columns: image, then gap
    np.testing.assert_array_equal(out[side + gap:2 * side, 2 * side:2 * side + 28], images[1, 2])
    assert np.isnan(out[:gap]).all() and np.isnan(out[:, 28:side]).all()
    titled = ksae.plots.axes._mosaic(images, row_gap=5, col_gap=3)
    assert titled.shape == (2 * 33, 3 * 31) and np.isnan(titled[33:38]).all()
    np.testing.assert_array_equal(titled[38:66, 31:59], images[1, 1])
    assert np.isfinite(out).sum() == images.size


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


def test_stopwatch_phases_add_up_and_survive_errors():
    watch = kh.Stopwatch()
    with watch.phase("data"):
        time.sleep(0.05)
    with pytest.raises(KeyError), watch.phase("load"):
        raise KeyError("x")
    with watch.phase("data"):
        time.sleep(0.05)
    timings = watch.timings()
    assert list(timings) == ["data", "load", "total"] and timings["data"] >= 0.1
    assert timings["total"] >= timings["data"] + timings["load"]
    with pytest.raises(ValueError, match="phase name"):
        with watch.phase(""):
            pass


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


def test_render_comparison_grid_draws_the_same_pngs_in_worker_processes(uneven, tmp_path, monkeypatch):
    sel, maps = uneven
    figs = kh.plot_comparison_grid(sel, maps, ["a", "b", "c"], max_samples_per_class=2, save_dir=str(tmp_path / "here"))
    watch = kh.Stopwatch()
    pngs = kh.render_comparison_grid(sel, maps, ["a", "b", "c"], max_samples_per_class=2,
                                     save_dir=str(tmp_path / "workers"), workers=2, timer=watch)
    assert len(pngs) == 3 and pngs == [f.saved_png for f in figs]  # byte for byte what one process draws
    for name in ("comparison_a_0.png", "comparison_a_1.png", "comparison_c_0.png"):
        assert (tmp_path / "workers" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
    assert list(watch.figures) == ["plot_attribution_comparison"]  # in the parent, from the workers' times
    assert len(watch.figures["plot_attribution_comparison"]) == 3
    watch = kh.Stopwatch()
    assert kh.render_comparison_grid(sel, maps, ["a", "b", "c"], max_samples_per_class=2, workers=1,
                                     timer=watch) == pngs  # unsaved
    assert len(watch.figures["plot_attribution_comparison"]) == 3  # drawn here: counted per figure, once
    assert 1 <= kh.figure_workers(10) <= kh.FIGURE_WORKERS and kh.figure_workers(1) == 1
    with pytest.raises(ValueError, match="workers"):
        kh.render_comparison_grid(sel, maps, ["a", "b", "c"], workers=0)


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
    with pytest.raises(ValueError, match="not in the cross-method statistics"):  # raised in a worker
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


def test_show_displays_png_bytes_once(monkeypatch):
    shown = []
    monkeypatch.setattr(ksae.runtime, "_jupyter_display", lambda: (shown.append, type("ipd", (), {"Image": dict})))
    kh.show(b"\x89PNG fake")
    assert shown == [{"data": b"\x89PNG fake"}]


def test_figure_timings_sum_up_the_calls():
    t = kh.figure_timings({"plot_a": [0.5, 0.25], "plot_b": [1.0], "plot_c": []})
    assert t["total"] == pytest.approx(1.75) and t["n_figures"] == 3 and t["slowest"] == ["plot_b", 1.0]
    assert t["per_function"]["plot_a"] == {"calls": 2, "total": 0.75, "max": 0.5} and "plot_c" not in t["per_function"]
    assert kh.figure_timings({}) == {"total": 0, "n_figures": 0, "slowest": [None, 0.0], "per_function": {}}
