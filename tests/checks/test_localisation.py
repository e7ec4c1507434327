"""Localisation scores: equal to Quantus' on the positive part; chance is |region| / 784; a hand-built model that
reads only the marker gets relevance mass 1 from every method, one that ignores it a twin difference of 0."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ksae_helpers as kh
from ksae.shortcut_study import _localisation
from ksae.shortcut_verdicts import _localisation_claim
from ksae.shortcuts import _CONTROL, _MARKER, _SHORTCUT_CLASS, _Planting

MASK = _MARKER.mask().numpy()


def _quantus(metric, maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    quantus = pytest.importorskip("quantus")
    n = len(maps)
    a = np.clip(maps, 0, None).reshape(n, 1, 28, 28)
    s = np.broadcast_to(mask.reshape(1, 1, 28, 28), (n, 1, 28, 28)).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = getattr(quantus, metric)(abs=False, normalise=False, disable_warnings=True)(
            model=None, x_batch=np.zeros_like(a), y_batch=np.zeros(n, dtype=int), a_batch=a, s_batch=s)
    return np.asarray(scores, dtype=np.float64)


def test_scores_equal_quantus_on_the_positive_part():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(64, 784))
    maps[:20, MASK] += rng.uniform(0, 3, size=(20, int(MASK.sum())))  # some maps lean on the marker
    for metric, ours in (("RelevanceMassAccuracy", kh.relevance_mass_accuracy),
                         ("RelevanceRankAccuracy", kh.relevance_rank_accuracy), ("PointingGame", kh.pointing_game)):
        np.testing.assert_allclose(ours(maps, MASK), _quantus(metric, maps, MASK), rtol=0, atol=1e-12, err_msg=metric)


def test_hand_maps_and_chance():
    on = np.zeros((1, 784))
    on[0, MASK] = 1.0
    assert kh.relevance_mass_accuracy(on, MASK)[0] == 1 and kh.relevance_rank_accuracy(on, MASK)[0] == 1
    assert kh.pointing_game(on, MASK)[0] == 1
    off = -on  # no positive attribution anywhere: undefined, not 0
    assert np.isnan(kh.relevance_mass_accuracy(off, MASK)[0]) and np.isnan(kh.pointing_game(off, MASK)[0])
    half = np.zeros((1, 784))
    half[0, np.flatnonzero(MASK)[:8]] = 1.0  # 8 of 16 region pixels, the rest of the top 16 tied at 0 outside
    assert kh.relevance_rank_accuracy(half, MASK)[0] == pytest.approx((8 + 8 * 8 / 776) / 16)
    flat = np.ones((1, 784))  # a uniform map scores chance on every score (ties shared)
    for fn in (kh.relevance_mass_accuracy, kh.relevance_rank_accuracy, kh.pointing_game):
        assert fn(flat, MASK)[0] == pytest.approx(kh.chance_level(MASK)) == pytest.approx(16 / 784)
    with pytest.raises(ValueError, match="at least one pixel"):
        kh.relevance_mass_accuracy(on, np.zeros(784, dtype=bool))
    with pytest.raises(ValueError, match=r"mask must have shape \[784\] or \[(1|N), 784\]"):
        kh.pointing_game(on, np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        kh.relevance_mass_accuracy(np.full((1, 784), np.nan), MASK)


def _reader(region: torch.Tensor, seed: int, classes: int = 10, h: int = 8) -> kh.SparseCodePipeline:
    """A pipeline whose units read only the pixels of ``region: [784]`` bool (any other pixel has no effect), unit 0
    all of them with weight 1 and the others at random; the Shirt logit grows with unit 0. Every atom lies on the
    region too, so even decoder-weighted draws nothing elsewhere."""
    g = torch.Generator().manual_seed(seed)
    sae = kh.KSparseAutoencoder(k=h, d_input=784, d_hidden=h)
    clf = kh.SparseCodeClassifier(d_hidden=h, hidden=(h, h), n_classes=classes, dropout=0.0)
    with torch.no_grad():
        w = torch.rand(h, 784, generator=g, dtype=torch.float32) * region
        w[0] = region
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.b_enc.fill_(0.1)
        sae.b_pre.zero_()
        clf.W1.copy_(torch.eye(h, dtype=torch.float32))
        clf.b1.zero_()
        clf.rest[2].weight.copy_(torch.eye(h, dtype=torch.float32))
        clf.rest[2].bias.zero_()
        clf.rest[5].weight.copy_(torch.rand(classes, h, generator=g, dtype=torch.float32) * 0.1)
        clf.rest[5].weight[_SHORTCUT_CLASS, 0] = 5.0
        clf.rest[5].bias.zero_()
    return kh.SparseCodePipeline(sae, clf).eval()


def _pixel(region: torch.Tensor) -> kh.LinearCodePipeline:
    clf = kh.SparseCodeClassifier(784, (4, 4), 10, 0.0)
    with torch.no_grad():
        clf.W1.zero_()
        clf.W1[region, 0] = 1.0
        clf.b1.fill_(0.1)
        clf.rest[2].weight.copy_(torch.eye(4, dtype=torch.float32))
        clf.rest[2].bias.zero_()
        clf.rest[5].weight.zero_()
        clf.rest[5].weight[_SHORTCUT_CLASS, 0] = 5.0
        clf.rest[5].bias.zero_()
    return kh.LinearCodePipeline(kh.LinearCode(None), clf).eval()


@pytest.fixture(scope="module")
def marked(data):
    x = data.x_test[:12]
    return _CONTROL.stamp(_MARKER.stamp(x)), torch.ones(12, 2, dtype=torch.bool)


def test_a_model_reading_only_the_marker_gets_mass_one_and_one_ignoring_it_no_twin_difference(marked):
    x, has = marked
    m, center = _MARKER.mask(), torch.zeros(784, dtype=torch.bool)
    center.reshape(28, 28)[8:20, 8:20] = True
    cfg = kh.Config(ig_steps=16, smoothgrad_samples=8)
    planting = _Planting("certified")
    reads = {"shortcut": _reader(m, 0), "twin": _reader(center, 1), "pixel": _pixel(m), "pixel_twin": _pixel(center)}
    loc = _localisation(reads, x, has, planting, cfg, seed=0, keep_example=True)
    # occlusion's sliding window smears the answer over the window's reach (a window half on M drops the logit too):
    # most of its mass, not all, is on M; every other method (superpixels of the grid M is aligned with) is exact
    smeared = {"occlusion"}
    fitted = {"lime"}  # a ridge fit on random coalitions: a little weight off M (KernelSHAP holds both ends exactly)
    for role in ("shortcut", "pixel"):
        for method, scores in loc["models"][role].items():  # every method, the gradient ones included
            if method in smeared:
                assert 0.5 < scores["mass"]["M"]["mean"] < 1, (role, method)
                continue
            if method in fitted:
                assert scores["mass"]["M"]["mean"] > 0.99 and scores["rank"]["M"]["mean"] > 0.99, (role, method)
                continue
            assert scores["mass"]["M"]["mean"] == pytest.approx(1.0, abs=1e-6), (role, method)  # KernelSHAP, LIME:
            assert scores["rank"]["M"]["mean"] == pytest.approx(1.0, abs=1e-6), (role, method)  # a solve's rounding
    for method, by in loc["twin_difference"].items():  # the twin puts (next to) nothing on M
        if method in fitted:
            assert by["mass"]["M"]["mean"] > 0.99, method
            continue
        assert by["mass"]["M"]["mean"] == pytest.approx(loc["models"]["shortcut"][method]["mass"]["M"]["mean"],
                                                        abs=1e-6), method
        assert method in smeared or by["mass"]["M"]["mean"] == pytest.approx(1.0, abs=1e-6), method
    assert _localisation_claim(loc, "certified", "shortcut", "integrated")["holds"]
    assert set(loc["example"]["shortcut"]) == set(kh.METHOD_LABELS)
    assert set(loc["models"]["pixel"]) == set(kh.METHOD_LABELS) - {"decoder"}  # the pixel model has no atoms
    ignores = {"shortcut": _reader(center, 2), "twin": _reader(center, 1), "pixel": _pixel(center),
               "pixel_twin": _pixel(center)}
    loc = _localisation(ignores, x, has, planting, cfg, seed=0, keep_example=False)
    for method, by in loc["twin_difference"].items():
        tol = 1e-2 if method in fitted else 1e-6  # a solve's rounding; LIME's ridge fit on random coalitions
        assert abs(by["mass"]["M"]["mean"]) < tol and abs(by["mass"]["C"]["mean"]) < tol, method
    assert not _localisation_claim(loc, "certified", "shortcut", "integrated")["holds"]  # no verdict from salience
