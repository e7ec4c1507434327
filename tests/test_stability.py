"""Seed stability: Hungarian matching of decoder atoms, the untrained control, group comparisons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted_units import PLANTED_CLASS, UNIT_A

import ksae_helpers as kh


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, d))
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _noisy(a: np.ndarray, noise: float, seed: int) -> np.ndarray:
    b = a + noise * np.random.default_rng(seed).normal(size=a.shape) / np.sqrt(a.shape[1])
    return b / np.linalg.norm(b, axis=1, keepdims=True)


def test_match_atoms_recovers_a_planted_permutation_of_noisy_atoms():
    a = _unit_rows(64, 784, 0)
    perm = np.random.default_rng(1).permutation(64)
    b = _noisy(a, 0.3, 2)[perm]  # unit i of a is row where(perm == i) of b
    match, cosine = kh.match_atoms(torch.from_numpy(a).float(), b)
    assert (match == np.argsort(perm)).all()
    np.testing.assert_allclose(cosine, (a * b[match]).sum(1), rtol=1e-6)
    assert cosine.min() > 0.9


def test_match_atoms_is_one_to_one_where_greedy_matching_is_not():
    # unit 0 of a is closest to b[0] (0.9), but b[0] is unit 1's only good partner: the assignment that
    # maximises the total gives b[1] to unit 0 (0.8) and b[0] to unit 1 (0.85); greedy would pair 0-0 first
    a = np.eye(3)
    b = np.array([[0.9, 0.85, 0.0], [0.8, 0.0, 0.6], [0.0, 0.0, 1.0]])
    match, _ = kh.match_atoms(a, b / np.linalg.norm(b, axis=1, keepdims=True))
    assert sorted(match.tolist()) == [0, 1, 2]
    assert match[1] == 0


def test_seed_stability_counts_only_units_that_recur_in_every_seed():
    ref = _unit_rows(40, 784, 0)
    seed1 = _noisy(ref, 0.1, 1)[::-1].copy()  # every unit recurs (permuted)
    seed2 = _noisy(ref, 0.1, 2)
    seed2[20:] = _unit_rows(20, 784, 3)  # half of the units are new in seed 2
    out = kh.seed_stability({0: ref, 1: seed1, 2: seed2}, control={1: _unit_rows(40, 784, 4)})
    assert out["seeds"] == [1, 2]
    assert out["matched"]["1"] == list(range(39, -1, -1))
    assert out["stable"][:20] == [True] * 20 and out["stable"][20:] == [False] * 20
    assert out["share_stable"] == 0.5
    np.testing.assert_allclose(out["min_cosine"], np.minimum(out["cosine"]["1"], out["cosine"]["2"]))
    assert out["control"]["share_stable"] == 0.0 and out["control"]["max_cosine"] < 0.5


def test_untrained_atoms_are_the_initialisation_training_starts_from(monkeypatch):
    import ksae.training as training

    cfg = kh.Config(seed=3, k=8, d_hidden=32, n_val=50, train_subset=100, ae_epochs=1, clf_epochs=1)
    seen = {}

    class Stop(Exception):
        pass

    def capture(sae, *args, **kwargs):
        seen["W_dec"] = sae.W_dec.detach().clone()
        raise Stop

    monkeypatch.setattr(training, "train_autoencoder", capture)
    x = torch.rand(300, 784)
    y = torch.arange(300) % 10
    with pytest.raises(Stop):
        training.train_models(cfg, kh.FashionMNIST(x, y, x[:20], y[:20]), torch.device("cpu"))
    atoms = kh.untrained_atoms(cfg, 3)
    torch.testing.assert_close(atoms, seen["W_dec"], rtol=0, atol=1e-6)  # renormalised, as the first step does
    assert torch.equal(atoms, kh.untrained_autoencoder(cfg, None).W_dec)
    assert not torch.allclose(kh.untrained_atoms(cfg, 4), seen["W_dec"], atol=1e-2)


def test_untrained_atoms_leave_the_global_random_state_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    kh.untrained_atoms(kh.Config(k=4, d_hidden=16), 0)
    assert torch.equal(torch.rand(3), expected)


def test_compare_stability_finds_a_planted_difference_and_not_a_planted_equality():
    rng = np.random.default_rng(0)
    c = np.concatenate([rng.uniform(0.92, 1.0, 50), rng.uniform(0.2, 0.95, 200)])
    group = np.arange(250) < 50
    out = kh.compare_stability(c, group, ~group)
    assert out["more_stable"] is True
    assert out["group"]["share_stable"] == 1.0 and out["share_stable_difference"]["ci95"][0] > 0
    same = rng.uniform(0.5, 1.0, 400)
    half = np.arange(400) % 2 == 0
    assert kh.compare_stability(same, half, ~half)["more_stable"] is None
    assert kh.compare_stability(c, ~group, group)["more_stable"] is False


def test_unit_groups_on_the_planted_units(planted):
    _, _, stats = planted
    groups = kh.unit_groups(stats, 0.9)
    assert groups["class-pure"][UNIT_A] and groups["causal"][UNIT_A]
    assert stats.majority[UNIT_A] == PLANTED_CLASS
    fires = stats.n_fire > 0
    for name in ("class-pure", "causal"):
        assert not (groups[name] & groups[f"not {name}"]).any()
        assert ((groups[name] | groups[f"not {name}"]) == fires).all()
    assert not groups["class-pure"][fires & (np.arange(len(fires)) != UNIT_A)].all()


def test_stability_by_group_reports_an_empty_group_as_undefined(planted):
    _, pipeline, stats = planted
    atoms = pipeline.sae.W_dec.detach().double()
    stability = kh.seed_stability({0: atoms, 1: atoms.flip(0)})
    none_pure = kh.stability_by_group(stability, stats, purity_threshold=0.0)  # every firing unit is "pure"
    assert none_pure["class-pure"]["undefined"] == "no firing unit outside the group"
    assert none_pure["class-pure"]["more_stable"] is None and none_pure["class-pure"]["rest"]["n"] == 0


@pytest.mark.parametrize("call, message", [
    (lambda: kh.match_atoms(np.ones((3, 4)), np.ones((4, 4))), "same shape"),
    (lambda: kh.match_atoms(np.zeros((3, 4)), np.ones((3, 4))), "all-zero atoms"),
    (lambda: kh.match_atoms([[1.0]], np.ones((1, 1))), "atoms_a must be"),
    (lambda: kh.match_atoms(np.full((2, 3), np.nan), np.ones((2, 3))), "NaN"),
    (lambda: kh.seed_stability({0: np.eye(3)}), "at least two seeds"),
    (lambda: kh.seed_stability({1: np.eye(3), 2: np.eye(3)}), "reference seed 0 is not among"),
    (lambda: kh.seed_stability({0: np.eye(3), 1: np.eye(3)}, threshold=2.0), "threshold"),
    (lambda: kh.compare_stability(np.ones(3), np.zeros(3, bool), np.ones(3, bool)), "group selects no unit"),
    (lambda: kh.compare_stability(np.ones(3), np.ones(2, bool), np.ones(3, bool)), "group must be a boolean"),
    (lambda: kh.untrained_atoms(kh.Config(), -1), "seed"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()



def _checkpoint(folder, cfg):
    torch.manual_seed(cfg.seed + 100)
    sae, clf = kh.KSparseAutoencoder.from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    kh.save_checkpoint(folder / cfg.checkpoint_name(), cfg, sae, clf, {}, {})
    return sae


def test_seed_dictionaries_read_checkpoints_and_refuse_missing_or_mismatched_ones(tmp_path):
    import dataclasses

    cfg = kh.Config(k=4, d_hidden=16, clf_hidden=(8, 4), n_val=50)
    saes = {s: _checkpoint(tmp_path, dataclasses.replace(cfg, seed=s)) for s in (0, 1)}
    atoms = kh.seed_dictionaries(cfg, None, torch.device("cpu"), [0, 1], tmp_path)
    assert sorted(atoms) == [0, 1] and all(torch.equal(atoms[s], saes[s].W_dec) for s in atoms)
    with pytest.raises(ValueError, match="no checkpoint for seed 2: expected .*seed2"):
        kh.seed_dictionaries(cfg, None, torch.device("cpu"), [0, 2], tmp_path)
    other = dataclasses.replace(cfg, seed=1, ae_epochs=3)  # stored under seed 1's file name of cfg
    sae = kh.KSparseAutoencoder.from_config(other)
    kh.save_checkpoint(tmp_path / dataclasses.replace(cfg, seed=1).checkpoint_name(), other, sae,
                       kh.SparseCodeClassifier.from_config(other), {}, {})
    with pytest.raises(ValueError, match="trained with another configuration than seed 1"):
        kh.seed_dictionaries(cfg, None, torch.device("cpu"), [0, 1], tmp_path)
    for bad, message in (([], "non-empty sequence"), ([0, 0], "distinct"), ([0, -1], "seeds"), ("01", "sequence")):
        with pytest.raises(ValueError, match=message):
            kh.seed_dictionaries(cfg, None, torch.device("cpu"), bad, tmp_path)
    with pytest.raises(ValueError, match="reference seed cfg.seed = 0 must be among seeds"):
        kh.run_seed_stability(cfg, None, torch.device("cpu"), None, 0.9, seeds=(1, 2), ckpt_dir=tmp_path)


def test_recurrence_recovers_planted_permutations_of_decoders_and_encoders():
    dec0, enc0 = _unit_rows(48, 784, 10), _unit_rows(48, 784, 11)
    p1, p2 = np.random.default_rng(1).permutation(48), np.random.default_rng(2).permutation(48)
    dec = {0: dec0, 1: _noisy(dec0, 0.2, 3)[p1], 2: _noisy(dec0, 0.2, 4)[p2]}
    enc = {0: enc0, 1: _noisy(enc0, 0.2, 5)[p1], 2: _noisy(enc0, 0.2, 6)[p2]}
    enc[2][np.argsort(p2)[:12]] = _unit_rows(12, 784, 7)  # units 0..11: the encoder row is new in seed 2
    out = kh.recurrence(dec, enc, n_boot=200)
    assert out["seeds"] == [0, 1, 2] and out["references"] == [0, 1, 2] and out["n_units"] == 48
    st = out["statistics"]
    assert st["decoder>=0.9"]["per_reference"] == [1.0, 1.0, 1.0] and st["decoder>=0.9"]["ci95"] == [1.0, 1.0]
    assert st["encoder>=0.9"]["value"] == 0.75 and st["shared"]["value"] == 0.75
    assert out["units"]["shared"] == [False] * 12 + [True] * 36
    assert st["shared"]["per_reference"][1] == 0.75  # seed 1's units that are 0..11 in seed 0 are not shared
    assert st["shared"]["ci95"][0] < 0.75 < st["shared"]["ci95"][1]
    assert st["median_decoder"]["value"] > 0.9 and st["median_decoder"]["range"][0] > 0.9


def test_recurrence_shared_needs_the_same_partner_and_follows_the_threshold():
    dec0 = _unit_rows(30, 784, 0)
    perm = np.random.default_rng(3).permutation(30)
    shift = np.roll(np.arange(30), 1)
    dec = {0: dec0, 1: dec0[perm]}
    enc = {0: dec0, 1: dec0[perm][shift]}  # the encoder rows match other partners: nothing is shared
    out = kh.recurrence(dec, enc, references=[0], n_boot=50)
    assert out["references"] == [0] and out["statistics"]["decoder>=0.9"]["value"] == 1.0
    assert out["statistics"]["encoder>=0.9"]["value"] == 1.0 and out["statistics"]["shared"]["value"] == 0.0
    loose = kh.recurrence({0: dec0, 1: _noisy(dec0, 1.2, 1)}, thresholds=(0.3, 0.99), n_boot=50)
    st = loose["statistics"]
    assert "shared" not in st and "encoder>=0.3" not in st
    assert st["decoder>=0.3"]["value"] > st["decoder>=0.99"]["value"] == 0.0


@pytest.mark.parametrize("args, match", [
    (({0: np.eye(3, 784)},), "at least two seeds"),
    (({0: np.eye(3, 784), 1: np.eye(3, 784)}, {0: np.eye(3, 784)}), "same seeds"),
    (({0: np.eye(3, 784), 1: np.eye(4, 784)},), "same shape"),
    (({0: np.eye(3, 784), 1: np.eye(3, 784)}, None, [5]), "references must be among"),
])
def test_recurrence_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        kh.recurrence(*args)
