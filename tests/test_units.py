"""ksae.units: the unit atlas, statistics of every code unit, checked on a hand-built model with planted units
(``planted_units.py``) and against independent references (dense forward passes, ``decoder_weighted``) on a
tiny trained model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted_units import A_GAIN, MARK_BIAS, N_CLASSES, N_HIDDEN, PLANTED_CLASS, UNIT_A, UNIT_B

import ksae_helpers as kh


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


def test_unit_statistics_rejects_bad_inputs(planted):
    data, pipeline, _ = planted
    with pytest.raises(ValueError, match="SparseCodePipeline"):
        kh.unit_statistics(pipeline.clf, data, torch.device("cpu"))
    with pytest.raises(ValueError, match="one value per unit"):
        kh.unit_statistics(pipeline, data, torch.device("cpu"), usage_train=np.zeros(3))
    with pytest.raises(ValueError, match="y_test must be 400 integer class ids"):  # refused where it is made
        kh.FashionMNIST(data.x_train, data.y_train, data.x_test, data.y_test[:5])


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
    with pytest.raises(ValueError, match=r"classes must be .* got unknown \['Hat'\]"):
        kh.top_units_of_classes(stats, ["Hat"])
