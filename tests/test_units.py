"""The unit atlas: statistics of every code unit, checked on a hand-built model with planted units and
against independent references (dense forward passes, ``decoder_weighted``) on a tiny trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ksae.stats
import ksae_helpers as kh

N_CLASSES = 10
PLANTED_CLASS = 3  # unit A fires only on images of this class and feeds this class's logit
UNIT_A, UNIT_B = 0, 1  # A: planted; B: never fires (dead)
N_HIDDEN = 12  # code units of the hand-built autoencoder
MARK = slice(0, 10)  # pixels set to 1 in every image of PLANTED_CLASS (0 elsewhere)
NOISE = slice(100, 400)  # pixels holding uniform noise in every image
A_GAIN = 2.0  # logit of PLANTED_CLASS = A_GAIN * z_A
NOISE_WEIGHT = 0.1  # encoder weight of a noise unit on its 30 noise pixels: pre-activations in [0, 3)
MARK_BIAS = -5.0  # unit A's bias: pre_A = 10 - 5 = 5 on planted images, -5 elsewhere


def _planted_data(n_train: int = 300, n_test: int = 400, seed: int = 0) -> kh.FashionMNIST:
    """Random images of 10 classes; images of PLANTED_CLASS carry the mark."""
    gen = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % N_CLASSES
        x = torch.zeros(n, 784)
        x[:, NOISE] = torch.rand(n, NOISE.stop - NOISE.start, generator=gen)
        x[y == PLANTED_CLASS, MARK] = 1.0
        return x, y

    (x_tr, y_tr), (x_te, y_te) = split(n_train), split(n_test)
    return kh.FashionMNIST(x_tr, y_tr, x_te, y_te)


def _planted_pipeline(seed: int = 0) -> kh.SparseCodePipeline:
    """Unit A reads the mark; unit B has a zero encoder row and a negative bias (never fires); the other
    units each read their own block of noise (pre-activations in [0, 3): they fire, below A's 5). The
    classifier routes A alone into PLANTED_CLASS's logit through one path of hidden units."""
    gen = torch.Generator().manual_seed(seed)
    sae = kh.KSparseAutoencoder(k=3, d_hidden=N_HIDDEN)
    clf = kh.SparseCodeClassifier(N_HIDDEN, (4, 3), N_CLASSES, dropout=0.0)
    with torch.no_grad():
        for p in list(sae.parameters()) + list(clf.parameters()):
            p.zero_()
        sae.W_enc[UNIT_A, MARK] = 1.0
        sae.b_enc[UNIT_A] = MARK_BIAS
        sae.b_enc[UNIT_B] = -1.0
        width = (NOISE.stop - NOISE.start) // (N_HIDDEN - 2)
        for j in range(2, N_HIDDEN):  # each noise unit reads its own block of noise pixels
            sae.W_enc[j, NOISE.start + width * (j - 2):NOISE.start + width * (j - 1)] = NOISE_WEIGHT
        sae.W_dec.copy_(torch.randn(N_HIDDEN, 784, generator=gen))
        sae.unit_norm_decoder_()
        clf.W1[UNIT_A, 0] = 1.0
        clf.rest[2].weight[0, 0] = 1.0
        clf.rest[5].weight[PLANTED_CLASS, 0] = A_GAIN
    return kh.SparseCodePipeline(sae, clf).eval()


@pytest.fixture(scope="module")
def planted():
    data = _planted_data()
    pipeline = _planted_pipeline()
    return data, pipeline, kh.unit_statistics(pipeline, data, torch.device("cpu"))


def test_planted_unit_is_found_with_its_class_purity_and_ablation_sign(planted):
    data, pipeline, stats = planted
    is_planted = (data.y_test == PLANTED_CLASS).numpy()
    assert stats.majority[UNIT_A] == PLANTED_CLASS
    assert stats.purity[UNIT_A] == 1.0 and stats.recall[UNIT_A] == 1.0
    assert stats.n_fire[UNIT_A] == is_planted.sum()
    assert stats.freq_test[UNIT_A] == pytest.approx(is_planted.mean())
    z_a = 10.0 + MARK_BIAS  # its activation on every planted image
    assert stats.top_values[UNIT_A, 0] == pytest.approx(z_a)
    expected = np.zeros(N_CLASSES)
    expected[PLANTED_CLASS] = -A_GAIN * z_a  # zeroing A removes its whole logit
    np.testing.assert_allclose(stats.ablation[UNIT_A], expected, atol=1e-5)
    expected[PLANTED_CLASS] = A_GAIN * z_a  # ... which is exactly its Rescale share
    np.testing.assert_allclose(stats.contribution[UNIT_A], expected, atol=1e-5)
    # every planted image is predicted PLANTED_CLASS (the only non-zero logit); with A zeroed all logits tie
    # at 0 and argmax picks class 0: accuracy on them falls from 1 to 0
    assert stats.ablation_accuracy[UNIT_A] == pytest.approx(-1.0)
    assert set(data.y_test[stats.top_images[UNIT_A][stats.top_images[UNIT_A] >= 0]].tolist()) == {PLANTED_CLASS}
    assert "Dress" in stats.descriptions[UNIT_A] and "lowers the Dress logit by 10" in stats.descriptions[UNIT_A]


def test_unused_unit_is_reported_dead(planted):
    _, _, stats = planted
    assert stats.dead[UNIT_B] and stats.freq_train[UNIT_B] == 0 and stats.n_fire[UNIT_B] == 0
    assert stats.majority[UNIT_B] == -1 and np.isnan(stats.purity[UNIT_B]) and stats.hist_max[UNIT_B] == 0
    assert (stats.top_images[UNIT_B] == -1).all() and (stats.band_images[UNIT_B] == -1).all()
    assert stats.descriptions[UNIT_B].startswith("dead")
    assert not stats.dead[2:].any()  # the noise units fire
    assert UNIT_B not in stats.cofiring


def _dense_codes(pipeline, x):
    return pipeline.sae.encode(x)


def test_frequencies_histograms_and_class_counts_match_dense_codes(planted):
    data, pipeline, stats = planted
    z = _dense_codes(pipeline, data.x_test).detach().numpy()  # [N, H] independent of the sparse path
    fires = z > 0
    np.testing.assert_allclose(stats.freq_test, fires.mean(0))
    z_train = _dense_codes(pipeline, data.x_train).detach().numpy()
    np.testing.assert_allclose(stats.freq_train, (z_train > 0).mean(0), atol=1e-7)
    labels = data.y_test.numpy()
    for j in range(N_HIDDEN):
        np.testing.assert_array_equal(stats.class_counts[j], np.bincount(labels[fires[:, j]], minlength=N_CLASSES))
        if fires[:, j].any():
            hist, _ = np.histogram(z[fires[:, j], j], bins=kh.UNIT_HIST_BINS, range=(0, z[:, j].max()))
            np.testing.assert_array_equal(stats.hist[j], hist)
            order = np.argsort(-z[:, j], kind="stable")[:kh.UNIT_TOP_IMAGES]
            np.testing.assert_allclose(stats.top_values[j], z[order, j], rtol=1e-6)


def test_quantile_band_samples_lie_in_their_bands(planted):
    data, pipeline, stats = planted
    z = _dense_codes(pipeline, data.x_test).detach().numpy()
    for j in range(2, N_HIDDEN):
        acts = np.sort(z[z[:, j] > 0, j])  # ascending
        n = len(acts)
        for b, (low, high) in enumerate(kh.UNIT_QUANTILE_BANDS):
            ids = stats.band_images[j, b]
            assert (ids >= 0).all() and len(set(ids.tolist())) == len(ids)  # bands here hold >= 4 images
            band = acts[int(round(n * low)):int(round(n * high))]
            assert np.isin(z[ids, j], band).all()


def test_cofiring_is_the_largest_jaccard_overlap(planted):
    data, pipeline, stats = planted
    fires = _dense_codes(pipeline, data.x_test).detach().numpy() > 0
    both = fires.T.astype(float) @ fires
    n = fires.sum(0)
    jaccard = both / np.maximum(n[:, None] + n[None, :] - both, 1)
    for j in range(2, N_HIDDEN):
        others = np.delete(jaccard[j], j)
        assert stats.cofiring_jaccard[j, 0] == pytest.approx(others.max())
        assert jaccard[j, stats.cofiring[j, 0]] == pytest.approx(others.max())
        assert (np.diff(stats.cofiring_jaccard[j]) <= 1e-12).all()


@pytest.fixture(scope="module")
def tiny(data):
    cfg = kh.Config(train_subset=2000, ae_epochs=2, clf_epochs=2, k=10)
    sae, clf, _ = kh.train_models(cfg, data, torch.device("cpu"))
    small = kh.FashionMNIST(data.x_train[:500], data.y_train[:500], data.x_test[:300], data.y_test[:300])
    pipeline = kh.SparseCodePipeline(sae, clf).eval()
    return small, pipeline, kh.unit_statistics(pipeline, small, torch.device("cpu"), seed=1)


def test_ablation_matches_dense_zeroing(tiny):
    """Reference: zero the unit in the dense code and run the plain ``forward`` on the images where it fires."""
    small, pipeline, stats = tiny
    with torch.no_grad():
        z = pipeline.sae.encode(small.x_test)
        base = pipeline.clf(z)
        for j in np.argsort(-stats.n_fire)[:5]:
            rows = z[:, j] > 0
            zeroed = z[rows].clone()
            zeroed[:, j] = 0
            logits = pipeline.clf(zeroed)
            np.testing.assert_allclose(stats.ablation[j], (logits - base[rows]).mean(0).numpy(), atol=2e-5)
            y = small.y_test[rows]
            change = (logits.argmax(1) == y).float().mean() - (base[rows].argmax(1) == y).float().mean()
            assert stats.ablation_accuracy[j] == pytest.approx(float(change), abs=1e-6)


def test_contribution_matches_decoder_weighted(tiny):
    """Reference: ``decoder_weighted``'s unit contributions for one class, averaged over the firing images."""
    small, pipeline, stats = tiny
    target = torch.full((len(small.x_test),), 7)
    _, c = kh.decoder_weighted(pipeline, small.x_test, target, return_contributions=True)
    fires = (pipeline.sae.encode(small.x_test) > 0).numpy()
    c = c.detach().numpy()
    live = fires.any(0)
    np.testing.assert_allclose(stats.contribution[live, 7], c[:, live].sum(0) / fires[:, live].sum(0), atol=1e-5)
    assert np.isnan(stats.contribution[~live]).all()


def test_agreement_correlation_and_its_ci(tiny):
    from scipy.stats import pearsonr, spearmanr

    _, _, stats = tiny
    agreement = kh.contribution_ablation_agreement(stats)
    x, y = stats.majority_value(stats.contribution), -stats.majority_value(stats.ablation)
    keep = np.isfinite(x)
    assert agreement["n_units"] == keep.sum()
    assert agreement["pearson"]["value"] == pytest.approx(pearsonr(x[keep], y[keep])[0])
    assert agreement["spearman"]["value"] == pytest.approx(spearmanr(x[keep], y[keep])[0])
    for key in ("pearson", "spearman"):
        lo, hi = agreement[key]["ci95"]
        assert lo <= agreement[key]["value"] <= hi


def test_bootstrap_ci_of_a_statistic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    pairs = np.stack([x, x + rng.normal(scale=1.0, size=400)], axis=1)  # true correlation 1/sqrt(2)
    lo, hi = kh.bootstrap_ci(pairs, statistic=lambda r: ksae.stats._rowwise_pearson(r[..., 0], r[..., 1]))
    assert lo < 2 ** -0.5 < hi and hi - lo < 0.15


def test_unit_statistics_rejects_bad_inputs(planted):
    data, pipeline, _ = planted
    with pytest.raises(ValueError, match="SparseCodePipeline"):
        kh.unit_statistics(pipeline.clf, data, torch.device("cpu"))
    with pytest.raises(ValueError, match="one value per unit"):
        kh.unit_statistics(pipeline, data, torch.device("cpu"), usage_train=np.zeros(3))
    bad = kh.FashionMNIST(data.x_train, data.y_train, data.x_test, data.y_test[:5])
    with pytest.raises(ValueError, match="labels must be"):
        kh.unit_statistics(pipeline, bad, torch.device("cpu"))


def test_unit_table_rows(planted):
    data, _, stats = planted
    table = kh.unit_table(stats)
    assert len(table) == N_HIDDEN
    a, b = table[UNIT_A], table[UNIT_B]
    assert a == {"unit": UNIT_A, "freq_train": pytest.approx((data.y_train == PLANTED_CLASS).float().mean().item()),
                 "freq_test": 0.1, "majority_class": "Dress", "purity": 1.0, "recall": 1.0,
                 "mean_contribution": 10.0, "ablation_effect": -10.0, "ablation_accuracy": -1.0, "dead": False}
    assert b["dead"] and b["majority_class"] is None and b["mean_contribution"] is None and b["freq_test"] == 0.0
    assert kh.top_units_of_classes(stats, ["Dress"]) == [UNIT_A]
    with pytest.raises(ValueError, match="unknown class"):
        kh.top_units_of_classes(stats, ["Hat"])


def test_unit_figures(planted):
    data, pipeline, stats = planted
    fig = kh.plot_firing_density(stats)
    assert "1 dead" in fig.axes[0].get_title()
    fig.canvas.draw()  # frequencies span decades: labels at powers of 10 only, the 2x and 5x ticks unlabelled
    assert not any(t.get_text() for t in fig.axes[0].get_xticklabels(minor=True))
    assert any(t.get_text() for t in fig.axes[0].get_xticklabels())
    fig = kh.plot_unit_dashboard(stats, pipeline.sae, data, [UNIT_A, 2])
    assert len(fig.axes) == 2 * 7 + 1  # 7 panels per unit and one colour bar
    assert any(stats.descriptions[UNIT_A] in t.get_text() for t in fig.texts)
    agreement = kh.contribution_ablation_agreement(stats)
    fig = kh.plot_contribution_vs_ablation(stats, agreement)
    assert f"Pearson {agreement['pearson']['value']:.3f}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="unit must be <="):
        kh.plot_unit_dashboard(stats, pipeline.sae, data, [N_HIDDEN])
    with pytest.raises(ValueError, match="units is empty"):
        kh.plot_unit_dashboard(stats, pipeline.sae, data, [])
    with pytest.raises(ValueError, match="UnitStats"):
        kh.plot_firing_density({})


def test_unit_table_summary_counts(planted):
    _, _, stats = planted
    rows = dict(kh.unit_table_summary({"table": kh.unit_table(stats)}))
    assert rows["units"] == str(N_HIDDEN) and rows["dead (no training or test image)"] == "1"
    assert rows["zeroing lowers its class logit"] == f"1 of {N_HIDDEN - 1}"  # only A feeds a logit
    assert rows["units whose majority class is Dress"] == str(1 + (stats.majority[2:] == PLANTED_CLASS).sum())
    with pytest.raises(ValueError, match="non-empty 'table'"):
        kh.unit_table_summary({"table": []})


def test_training_history_figure_one_legend_for_fvu_and_auxk():
    history = {"ae": {"fvu": [0.2, 0.1, 0.08], "val_fvu": [0.21, 0.12, 0.09], "aux_loss": [0.0, 0.5, 1.0],
                      "dormant_fraction": [0.0, 0.01, 0.02]},
               "clf": {"loss": [1.0, 0.5], "train_acc": [0.7, 0.8], "val_acc": [0.69, 0.78]}, "seconds": {"ae": 3.0}}
    fig = kh.plot_training_history(history)
    fvu, twin = fig.axes[0], fig.axes[-1]
    assert fvu.get_legend() is None and twin.get_ylabel() == "AuxK loss (dashed)"
    assert [t.get_text() for t in twin.get_legend().get_texts()] == ["train", "validation", "AuxK loss (right)"]
    validation, aux = fvu.get_lines()[1], twin.get_lines()[0]
    assert validation.get_color() != aux.get_color()  # the AuxK curve is not mistaken for the validation FVU
    assert "ae 3 s" in fig.texts[0].get_text()
    fig = kh.plot_training_history({**history, "ae": {**history["ae"], "aux_loss": []}})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train", "validation"]
    assert "no training history" in kh.plot_training_history({}).axes[0].texts[0].get_text()
