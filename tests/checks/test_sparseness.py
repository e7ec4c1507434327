"""The Gini index equals Quantus' Sparseness, map by map; the object share is what object_focus summarises."""

import numpy as np
import pytest
import torch

import ksae_helpers as kh

quantus = pytest.importorskip("quantus")  # requirements-test.txt pins it; skipped only where it is absent


def _maps(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(6, 784)).astype(np.float32)
    a[1] = rng.random(784)  # non-negative
    a[2] *= rng.random(784) > 0.9  # mostly zero: sparse
    a[3] = np.abs(a[3]) * 1e-3  # small scale (the index is scale-free up to GINI_EPS)
    a[4, :] = 0.0
    a[4, 100] = 5.0  # one pixel holds everything
    return a


def test_gini_index_equals_quantus_sparseness_map_by_map():
    a = _maps()
    metric = quantus.Sparseness(disable_warnings=True)
    x = np.random.default_rng(1).random((len(a), 1, 28, 28)).astype(np.float32)
    # Quantus divides a batch by its largest |value| over the whole batch, so a map's score depends on its batch:
    # one map per call is the per-map index
    ref = np.array([metric(model=None, x_batch=x[i:i + 1], y_batch=np.zeros(1, int),
                           a_batch=a[i:i + 1].reshape(1, 1, 28, 28).copy(), channel_first=True)[0]
                    for i in range(len(a))])
    ours = kh.gini_index(a)
    assert ours.shape == (len(a),)
    np.testing.assert_allclose(ours, ref, atol=1e-5)  # Quantus adds its epsilon in float32
    assert ours[4] > 0.99 and ours[2] > ours[0] and 0 < ours[1] < 0.5


def test_gini_index_extremes_and_bad_input():
    assert kh.gini_index(np.ones((2, 784))) == pytest.approx([0.0, 0.0], abs=1e-9)
    assert kh.gini_index(np.zeros((1, 784)))[0] == pytest.approx(0.0, abs=1e-9)  # all-zero map: nothing to rank
    signed = np.random.default_rng(2).normal(size=(3, 784))
    assert np.allclose(kh.gini_index(signed), kh.gini_index(np.abs(signed) * 7.0))  # |.|, scale-free
    with pytest.raises(ValueError, match="maps must have shape"):
        kh.gini_index(np.ones((2, 10)))
    with pytest.raises(ValueError, match="normalise"):
        kh.gini_index(np.ones((2, 784)), normalise=1)


def test_object_share_is_what_object_focus_summarises(small):
    x, maps = small["x"], small["maps"]
    focus = kh.object_focus(maps, x)
    for m, v in maps.items():
        share = kh.object_share(v, x)
        assert share.shape == (len(x),) and ((share >= 0) & (share <= 1 + 1e-12)).all()
        assert share.mean() == pytest.approx(focus[m]["mean"], abs=1e-12)
    with pytest.raises(ValueError, match="holds 2 maps but there are 3 images"):
        kh.object_share(torch.ones(3, 784), torch.ones(2, 784))
