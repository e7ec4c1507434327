"""ksae.plots.controls: the two controls figures render from run_controls' result, every series and label inside."""

import json

import pytest
import torch
from test_plots_checks import assert_labels_inside

import ksae_helpers as kh

TINY = dict(k=4, d_hidden=32, clf_hidden=(16, 8), train_subset=600, ae_epochs=2, clf_epochs=10, n_val=500,
            batch_size=64, lr=5e-3, ig_steps=4, confidence_threshold=0.1)  # benchmarks/controls.py --tiny


@pytest.fixture(scope="module")
def controls(data, tmp_path_factory, one_torch_thread):
    """A tiny run of every control, as JSON would hold it."""
    result = kh.run_controls(data, kh.Config(**TINY), torch.device("cpu"), ckpt_dir=tmp_path_factory.mktemp("c"),
                             n_per_class=2, n_subset=6, n_randomization=4, n_unit_images=6, train_sae=True,
                             verbose=False)
    return json.loads(json.dumps(result))


def test_models_figure_draws_every_representation_with_cis(controls):
    fig = assert_labels_inside(kh.plot_controls_models(controls))
    assert len(fig.axes) == 8
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert names == [controls["labels"][r] for r in kh.REPRESENTATIONS]  # readable names, not keys
    assert fig.axes[1].texts[0].get_text() == "no decoder"  # raw pixels reconstruct nothing
    recovered = fig.axes[2]  # the pixel classifier on each code's reconstructions: a bar per code that has a decoder
    codes = ("sae", "pca", "untrained", "dense", "shuffled")
    assert [round(p.get_width(), 9) for p in recovered.patches] == [
        round(controls["accuracy_recovered"][r]["accuracy"], 9) for r in codes]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [controls["labels"][r] for r in ("sae", "pixels", "pca", "untrained", "dense")]
    faith = fig.axes[4]  # integrated gradients: a bar per explained representation and substrate, with its CI
    from matplotlib.container import ErrorbarContainer

    assert len(faith.patches) == 5 * 3 and sum(isinstance(c, ErrorbarContainer) for c in faith.containers) == 15
    sae_zero = controls["explanations"]["sae"]["faithfulness"]["zero"]["integrated/signed"]["excess"]["mean"]
    assert faith.patches[0].get_height() == pytest.approx(sae_zero)
    with pytest.raises(ValueError, match="ranking"):
        kh.plot_controls_models(controls, ranking="both")


def test_units_figure_says_which_claims_hold(controls):
    fig = assert_labels_inside(kh.plot_controls_units(controls))
    titles = [ax.get_title() for ax in fig.axes[:4]]
    for title, claim in zip(titles, controls["claims"].values()):
        assert title.endswith("held" if claim["held"] else "not held") and claim["label"] in title
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        controls["labels"][r] for r in ("sae", "untrained", "dense", "shuffled")]
    stability = fig.axes[5]  # the SAE's units' lowest matched cosine, trained seeds against untrained dictionaries
    legend = [t.get_text() for t in stability.get_legend().get_texts()]
    st = controls["stability"]
    assert legend[0] == f"trained seeds 1 and 2: {100 * st['share_stable']:.1f} % stable"
    assert legend[1].startswith("untrained dictionaries (control)")
    heights = stability.lines[0].get_ydata()[:-1]
    assert heights.sum() == pytest.approx(1.0)  # every unit in one bin
    none = kh.plot_controls_units({**controls, "stability": None})
    assert none.axes[5].texts[0].get_text() == "not measured"
    with pytest.raises(ValueError, match="controls must be"):
        kh.plot_controls_units({"models": {}})
    with pytest.raises(ValueError, match="no unit claims"):
        kh.plot_controls_units({**controls, "claims": {}})


def test_controls_markdown_reads_every_number_from_the_result(controls):
    text = kh.controls_markdown(controls)
    sae = controls["models"]["sae"]
    assert f"{100 * sae['test_accuracy']:.2f} %" in text
    for claim in controls["claims"].values():
        assert claim["label"][1:] in text
    planted = json.loads(json.dumps(controls))
    planted["models"]["pca"]["test_accuracy"] = 0.4321
    assert "43.21 %" in kh.controls_markdown(planted) and "43.21 %" not in text
    with pytest.raises(ValueError, match="controls must be"):
        kh.controls_markdown({"models": {}})
