"""ksae.plots.variants: the three figures of the variants study render from its result, every series inside."""

import pytest
from test_plots_checks import assert_labels_inside

import ksae_helpers as kh


def test_frontier_draws_every_kind_and_the_pca_anchor(variants_tiny):
    result = variants_tiny[0]
    fig = assert_labels_inside(kh.plot_variants_frontier(result))
    assert len(fig.axes) == 4 and fig.axes[0].get_xscale() == "log"
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    pca = lines["PCA (L0 components)"]
    assert list(pca.get_ydata()) == [result["anchors"]["pca"][str(t)]["fvu"] for t in result["targets"]]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "top-k" and "PCA (L0 components)" in legend
    topk = [c for c in fig.axes[0].containers if c.get_label() == "top-k"][0]
    assert list(topk.lines[0].get_ydata()) == [result["frontier"]["topk"][str(t)]["fvu"] for t in result["targets"]]


def test_stability_draws_each_row_against_its_controls(variants_tiny):
    result = variants_tiny[0]
    fig = assert_labels_inside(kh.plot_variants_stability(result))
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert names[0] == "top-k" and len(names) == len(result["stability"])
    shared = [p.get_width() for p in fig.axes[0].patches]
    assert len(shared) == 3 * len(names)  # trained, untrained, random images per row
    first = result["stability"][list(result["stability"])[0]]
    assert shared[:3] == pytest.approx([first["trained"]["statistics"]["shared"]["value"],
                                        first["controls"]["untrained"]["statistics"]["shared"]["value"],
                                        first["controls"]["random_images"]["statistics"]["shared"]["value"]])


def test_recovery_draws_every_coherence_and_method(variants_tiny):
    result = variants_tiny[0]
    fig = assert_labels_inside(kh.plot_variants_recovery(result))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(result["planted"])
    mcc = [p.get_height() for p in fig.axes[0].patches]  # kind by kind, each over the coherences
    assert mcc == pytest.approx([result["planted"][c]["kinds"][k]["recovery"]["mcc"] for k in result["kinds"]
                                 for c in result["planted"]])
    assert "image-like" in fig.axes[6].get_title()


def test_figures_refuse_a_result_that_is_not_the_study():
    with pytest.raises(ValueError, match="run_variants' result"):
        kh.plot_variants_frontier({"frontier": {}})
    with pytest.raises(ValueError, match="no planted"):
        kh.plot_variants_recovery({"frontier": {}, "stability": {}, "anchors": {}, "targets": [], "kinds": [],
                                   "planted": {}})
