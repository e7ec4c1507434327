"""ksae.stats: partner images for the null, row-wise rank correlations against scipy, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ksae.stats
import ksae_helpers as kh


def test_partner_images_pair_within_and_across_classes():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    same = kh.partner_images(labels, same_class=True, seed=1)
    assert (same != np.arange(9)).all() and (labels.numpy()[same] == labels.numpy()).all()
    assert sorted(same) == list(range(9))  # a cycle per class: every image is a partner once
    other = kh.partner_images(labels, same_class=False, seed=1)
    assert (labels.numpy()[other] != labels.numpy()).all()
    assert (kh.partner_images(labels, True, seed=1) == same).all()
    with pytest.raises(ValueError, match="at least 2 per class"):
        kh.partner_images(torch.tensor([0, 0, 1]), same_class=True)
    with pytest.raises(ValueError, match="at least 2 classes"):
        kh.partner_images(torch.tensor([0, 0, 0]), same_class=False)
    with pytest.raises(ValueError, match="integer class ids"):
        kh.partner_images(torch.tensor([0.0, 1.0]), same_class=False)


def test_rowwise_spearman_on_masked_pixels_matches_scipy_on_the_subset():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 60))
    b = a + rng.normal(size=(5, 60))
    b[:, :10] = 0.0  # ties
    mask = rng.random((5, 60)) > 0.4
    for i, r in enumerate(kh.rowwise_spearman(a, b, mask)):
        assert r == pytest.approx(spearmanr(a[i, mask[i]], b[i, mask[i]]).statistic)


def test_row_ranks_are_scipys_average_ranks_with_ties_and_masks():
    from scipy.stats import rankdata

    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(6, 40)).astype(float)  # many ties
    a[0] = 2.0  # one run of ties over the whole row
    a[1] = np.arange(40)[::-1]  # no ties
    a[2, :3] = [-np.inf, np.inf, np.inf]
    mask = rng.random((6, 40)) > 0.5
    mask[3] = False  # nothing ranked
    mask[4] = True
    np.testing.assert_array_equal(ksae.stats._row_ranks(a), rankdata(a, axis=1))
    expected = rankdata(np.where(mask, a, np.nan), axis=1, nan_policy="omit")
    np.testing.assert_array_equal(ksae.stats._row_ranks(a, mask), expected)
    assert np.isnan(ksae.stats._row_ranks(a, mask)[3]).all() and ksae.stats._row_ranks(a[:, :1]).tolist() == [[1.0]] * 6


def test_rowwise_correlations_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 50))
    b = a + rng.normal(size=(5, 50))
    b[:, :10] = 0.0  # ties
    for i, r in enumerate(kh.rowwise_spearman(a, b)):
        assert r == pytest.approx(spearmanr(a[i], b[i]).statistic)
    for i, r in enumerate(ksae.stats._rowwise_pearson(a, b)):
        assert r == pytest.approx(pearsonr(a[i], b[i]).statistic)


def test_bootstrap_ci_contains_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        sample = rng.normal(3.0, 1.0, size=100)
        lo, hi = kh.bootstrap_ci(sample, n_boot=1000, seed=i)
        hits += lo <= 3.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99
    lo, hi = kh.bootstrap_ci(rng.normal(3.0, 1.0, size=5000))
    assert lo < 3.0 < hi and hi - lo < 0.1
    with pytest.raises(ValueError):
        kh.bootstrap_ci([])


def test_bootstrap_ci_of_the_mean_is_the_mean_of_the_seeded_resamples():
    # the mean's fast path (cached draw counts times the values) is the index resampling it replaces
    rng = np.random.default_rng(1)
    for n, seed in [(1, 0), (7, 3), (300, 5), (300, 5), (1000, 2)]:
        values = rng.normal(size=n)
        draws = np.random.default_rng(seed).integers(0, n, size=(500, n))
        means = values[draws].mean(1)
        expected = np.quantile(means, 0.05), np.quantile(means, 0.95)
        np.testing.assert_allclose(kh.bootstrap_ci(values, n_boot=500, level=0.9, seed=seed), expected, rtol=1e-12)
        both = np.stack([values, values], 1)  # [N, 2] rows: the general path, same draws
        np.testing.assert_allclose(kh.bootstrap_ci(both, n_boot=500, level=0.9, seed=seed,
                                                   statistic=lambda r: r[..., 0].mean(1)), expected, rtol=1e-12)
    assert not ksae.stats._bootstrap_counts(7, 500, 3).flags.writeable


def test_bootstrap_ci_of_a_statistic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    pairs = np.stack([x, x + rng.normal(scale=1.0, size=400)], axis=1)  # true correlation 1/sqrt(2)
    lo, hi = kh.bootstrap_ci(pairs, statistic=lambda r: ksae.stats._rowwise_pearson(r[..., 0], r[..., 1]))
    assert lo < 2 ** -0.5 < hi and hi - lo < 0.15
