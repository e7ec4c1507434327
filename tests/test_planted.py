"""The planted dictionary: the generator makes what it is asked for, and the recovery scores give full recovery for
the planted atoms (up to order and sign) and the chance level for random atoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ksae_helpers as kh
from ksae.planted import _LABEL_ATOMS_PER_CLASS, _MAX_RATE, _match_abs_cosine, _planted_atoms, _zipf_rates

SMALL = dict(n_atoms=256, mean_l0=20.0, n_train=6000, n_test=1000)


@pytest.fixture(scope="module")
def planted():
    return kh.planted_dictionary("smooth", **SMALL, seed=3)


def test_zipf_rates_sum_to_the_asked_l0_under_the_cap():
    rates = _zipf_rates(1024, 50.0)
    assert rates.sum() == pytest.approx(50.0, rel=1e-12)
    assert rates.max() == pytest.approx(_MAX_RATE) and (np.diff(rates) <= 1e-15).all()
    uncapped = rates < _MAX_RATE
    ratio = rates[uncapped][:-1] / rates[uncapped][1:]  # ~ 1 / (i + 1): ratio (i + 2) / (i + 1)
    i = np.flatnonzero(uncapped)[:-1]
    np.testing.assert_allclose(ratio, (i + 2) / (i + 1), rtol=1e-12)
    with pytest.raises(ValueError, match="mean_l0 must be in"):
        _zipf_rates(10, 5.0)  # 10 atoms at a cap of 0.3 cannot give 5 per image


def test_atoms_are_unit_norm_seeded_and_their_coherence_rises_with_the_level():
    worst = []
    for name in kh.PLANTED_COHERENCES:
        atoms = _planted_atoms(256, name, seed=0)
        assert atoms.shape == (256, 784)
        torch.testing.assert_close(atoms.norm(dim=1), torch.ones(256, dtype=torch.float64))
        assert torch.equal(atoms, _planted_atoms(256, name, seed=0))
        assert not torch.allclose(atoms, _planted_atoms(256, name, seed=1))
        cos = (atoms @ atoms.T).abs().fill_diagonal_(0)
        worst.append(float(cos.max()))
    assert worst[0] < 0.2 < worst[1] < 0.4 < 0.8 < worst[2], worst  # white noise, blurred, windowed


def test_generator_gives_the_asked_firing_rates_l0_and_images(planted):
    p = planted
    d = p.describe()
    n = len(p.codes_train)
    factor = np.ones(SMALL["n_atoms"])
    factor[p.label_atoms.reshape(-1).numpy()] = p.label_rate_factor  # label atoms: conditioned on a label existing
    expected = p.firing_rates.numpy() * factor
    measured = (p.codes_train > 0).double().mean(0).numpy()
    sd = np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(measured - expected) < 5 * sd).all()  # every atom within 5 binomial standard deviations
    assert p.firing_rates.sum().item() == pytest.approx(SMALL["mean_l0"], rel=1e-9)
    assert d["mean_l0_train"] == pytest.approx(SMALL["mean_l0"] + (expected - p.firing_rates.numpy()).sum(), abs=0.25)
    assert 1.0 < p.label_rate_factor < 1.2
    x = torch.cat([p.data.x_train, p.data.x_test])
    codes = torch.cat([p.codes_train, p.codes_test]).double()
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    torch.testing.assert_close(x.double(), p.offset + p.scale * codes @ p.atoms.double(), atol=2e-6, rtol=0)
    assert d["max_abs_cosine"] == pytest.approx(_match_check(p.atoms))
    again = kh.planted_dictionary("smooth", **SMALL, seed=3)
    assert torch.equal(again.data.x_train, p.data.x_train) and again.fingerprint() == p.fingerprint()
    assert kh.planted_dictionary("smooth", **SMALL, seed=4).fingerprint() != p.fingerprint()


def _match_check(atoms: torch.Tensor) -> float:
    a = atoms.double()
    return float((a @ a.T).abs().fill_diagonal_(0).max())


def test_labels_follow_the_rule_and_contributions_are_exact(planted):
    p = planted
    codes, y = p.codes_test.double(), p.data.y_test
    scores = codes @ p.rule.T
    assert (scores.max(1).values > 0).all()  # every image has a label atom
    assert torch.equal(scores.argmax(1), y)
    assert (p.rule.sum(1) == _LABEL_ATOMS_PER_CLASS).all() and len(p.label_atoms.reshape(-1).unique()) == p.rule.sum()
    phi = p.contributions(codes, y)
    centred = scores - scores.mean(1, keepdim=True)
    torch.testing.assert_close(phi.sum(1), centred[torch.arange(len(y)), y])  # completeness of the linear rule
    own = phi[y == 0][:, p.label_atoms[0]]
    assert (own >= 0).all() and (own > 0).any()  # a class's own atoms count for it (weight 1 - 1/C)
    assert (phi[y != 0][:, p.label_atoms[0]] <= 0).all()  # and against the others (weight -1/C)
    other = torch.ones(SMALL["n_atoms"], dtype=torch.bool)
    other[p.label_atoms.reshape(-1)] = False
    assert (phi[:, other] == 0).all()  # atoms the rule does not read contribute nothing
    torch.testing.assert_close(p.evidence(phi), p.scale * phi @ p.atoms.double())
    counts = torch.bincount(p.data.y_train, minlength=10)
    assert counts.min() > 0.5 * counts.float().mean()  # classes roughly balanced (label atoms of equal rates)


def test_training_code_takes_the_planted_data(planted):
    cfg = kh.Config(k=8, d_hidden=64, clf_hidden=(16, 8), train_subset=0, n_val=500, ae_epochs=1, clf_epochs=1,
                    batch_size=256, clf_hflip=False, clf_shift=0)
    x_train, y_train, x_val, y_val = kh.train_val_split(planted.data, cfg)
    assert len(x_val) == 500 and len(x_train) == len(planted.codes_train) - 500
    assert torch.bincount(y_val, minlength=10).min() == 50  # stratified by the rule's classes


def test_recovery_is_full_for_the_planted_atoms_up_to_order_and_sign(planted):
    p = planted
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(SMALL["n_atoms"], generator=g)
    sign = torch.where(torch.rand(SMALL["n_atoms"], generator=g) < 0.5, -1.0, 1.0)
    extra = torch.randn(16, 784, generator=g)  # a learned dictionary may be wider than the planted one
    learned = torch.cat([p.atoms[perm] * sign[:, None], extra])
    learned_codes = torch.cat([p.codes_test[:, perm], torch.zeros(len(p.codes_test), 16)], 1)
    base = kh.random_image_atoms(p.data.x_train, SMALL["n_atoms"], seed=1)
    r = kh.recovery_scores(p.atoms, learned, p.codes_test, learned_codes, baseline=base)
    assert r["mcc"] == pytest.approx(1.0) and r["recovered_share"] == 1.0
    assert r["match"] == torch.argsort(perm).tolist()
    assert r["f1_mean"] == pytest.approx(1.0) and r["dead_units"] == 16 and r["units"] == 272
    assert r["score"] == pytest.approx(1.0 - r["baseline_mcc"])
    assert 0.2 < r["baseline_mcc"] < 0.6  # data samples of smooth atoms match them part of the way


def test_random_atoms_score_the_baseline_and_half_recovered_atoms_count_half(planted):
    p = planted
    base = kh.random_image_atoms(p.data.x_train, SMALL["n_atoms"], seed=1)
    other = kh.random_image_atoms(p.data.x_train, SMALL["n_atoms"], seed=2)
    r = kh.recovery_scores(p.atoms, other, baseline=base)
    assert abs(r["score"]) < 0.02 and r["recovered_share"] == 0.0
    half = p.atoms.clone()
    half[::2] = other[::2]
    r = kh.recovery_scores(p.atoms, half, baseline=base)
    assert r["recovered_share"] == 0.5
    assert r["mcc"] == pytest.approx(0.5 + 0.5 * np.mean(_match_abs_cosine(p.atoms[::2], other[::2])[1]), abs=0.02)


def test_f1_counts_misses_and_false_alarms():
    atoms = torch.eye(3, 784)
    codes = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    learned_codes = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 0]])  # unit 0 misses one, 1 false alarm
    r = kh.recovery_scores(atoms, atoms, codes, learned_codes)
    assert r["f1"][0] == pytest.approx(2 / 3) and r["f1"][1] == pytest.approx(2 / 3)
    assert np.isnan(r["f1"][2]) and r["f1_mean"] == pytest.approx(2 / 3) and r["dead_units"] == 1


@pytest.mark.parametrize("call, match", [
    (lambda: kh.planted_dictionary("noisy"), "coherence must be one of"),
    (lambda: kh.planted_dictionary(n_atoms=10), "n_atoms must be >= 30"),
    (lambda: kh.planted_dictionary(seed=-1), "seed must be >= 0"),
    (lambda: kh.recovery_scores(torch.randn(8, 784), torch.randn(4, 784)), "at least as many atoms"),
    (lambda: kh.recovery_scores(torch.randn(4, 784), "atoms"), "learned must be"),
    (lambda: kh.recovery_scores(torch.randn(4, 784), torch.randn(4, 784), torch.ones(3, 4)), "come together"),
    (lambda: kh.random_image_atoms(torch.rand(5, 784), 6, 0), "n must be <="),
])
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
