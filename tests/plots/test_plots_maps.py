"""ksae.plots.maps: attribution-map figures (annotated heatmaps, unequal class counts, the comparison grid
drawn in worker processes).
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import ksae.plots.maps
import ksae_helpers as kh


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


def test_perturbation_figures_show_both_families(small):
    from test_plots_checks import assert_labels_inside

    x, y, maps = small["x"], small["y"], small["maps"]
    sel = kh.Selection(torch.arange(len(y)), x, y, torch.full((len(y),), 0.9), {}, 4)
    fig = assert_labels_inside(kh.plot_perturbation_maps(sel, maps, ["a", "b", "c"]))
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:-1]  # the last axes: the colour bar
    assert len(panels) == 3 * (2 + len(kh.METHOD_FAMILIES["perturbation"]))  # a row per class: image, IG, five maps
    assert [ax.get_title() for ax in panels[:7]] == ["image", "IG", "Occlusion", "Ablation", "Shapley", "KernelSHAP",
                                                     "LIME"]
    signed = panels[2].images[0].get_array()
    assert signed.min() >= -1 and signed.max() <= 1 and np.abs(signed).max() == pytest.approx(1)  # own scale
    fam = kh.family_agreement(maps, x, y, kh.METHOD_FAMILIES)
    fig = assert_labels_inside(kh.plot_family_agreement(small["stats"], fam))
    matrix, points = fig.axes[0], fig.axes[1]  # (the colour bar is an inset of the matrix)
    assert matrix.images[0].get_array().shape == (len(kh.METHOD_LABELS),) * 2
    assert len(points.get_yticklabels()) == 4 and "across − within" in points.texts[0].get_text()
    with pytest.raises(ValueError, match="family_stats must be the result of family_agreement"):
        kh.plot_family_agreement(small["stats"], {"families": fam["families"], "statistics": {}})
