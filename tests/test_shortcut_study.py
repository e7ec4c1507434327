"""The planted-shortcut study's machinery on known answers: ablating a planted marker unit restores the clean
predictions; the removal ratios, F1 and finding on hand numbers; the twins are the default models bit for bit (so
they are cached once); a checkpoint of another variant is refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import ksae_helpers as kh
from ksae.controls import _control_checkpoint_name, _save_control, train_representation
from ksae.shortcut_eval import (
    _Ablator,
    _collateral,
    _cure_ratio,
    _gate_result,
    _predict_inputs,
    _Probe,
    _reliance_removed,
    _variant_metrics,
)
from ksae.shortcut_models import (
    _checkpoint_path,
    _shortcut_models,
    _split_indices,
    _train_shortcut_autoencoder,
    _train_shortcut_head,
)
from ksae.shortcut_units import _finding, _firing_f1, _ranked
from ksae.shortcuts import _MARKER, _PARTNER_CLASS, _SHORTCUT_CLASS

CPU = torch.device("cpu")
SHIRT, TSHIRT = _SHORTCUT_CLASS, _PARTNER_CLASS
TINY = dict(k=4, d_hidden=32, clf_hidden=(16, 8), train_subset=400, ae_epochs=1, clf_epochs=1, n_val=500,
            batch_size=64)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


# --- a hand-built pipeline with a planted marker unit ------------------------------------------------------------
def _marker_pipeline(h: int = 12, seed: int = 0) -> kh.SparseCodePipeline:
    """Unit 0 fires only when M is stamped (16 pixels of 1 against a bias of -8) and drives the Shirt logit; units
    1.. read the image outside M at random and drive random logits. k = H: top-k keeps every unit, so removing unit 0
    leaves exactly the clean image's code."""
    g = torch.Generator().manual_seed(seed)
    m = _MARKER.mask()
    sae = kh.KSparseAutoencoder(k=h, d_hidden=h)
    clf = kh.SparseCodeClassifier(d_hidden=h, hidden=(h, h), n_classes=10, dropout=0.0)
    with torch.no_grad():
        w = torch.rand(h, 784, generator=g) * 0.05 * ~m
        w[0] = m.float()
        sae.W_enc.copy_(w)
        sae.b_enc.copy_(torch.cat([torch.tensor([-8.0]), torch.zeros(h - 1)]))
        sae.b_pre.zero_()
        clf.W1.copy_(torch.eye(h))
        clf.b1.zero_()
        clf.rest[2].weight.copy_(torch.eye(h))
        clf.rest[2].bias.zero_()
        clf.rest[5].weight.copy_(torch.rand(10, h, generator=g))
        clf.rest[5].weight[:, 0] = 0.0
        clf.rest[5].weight[SHIRT, 0] = 100.0
        clf.rest[5].bias.zero_()
    return kh.SparseCodePipeline(sae, clf).eval()


def test_ablating_a_planted_marker_unit_restores_the_clean_predictions(data):
    pipe = _marker_pipeline()
    clean = data.x_test[:500]
    marked = _MARKER.stamp(clean)
    inputs = {"marked": marked, "clean": clean}
    preds = _predict_inputs(pipe, inputs, CPU)
    assert (preds["marked"] == SHIRT).all() and (preds["clean"] != SHIRT).float().mean() > 0.5  # M is the shortcut
    ablate = _Ablator(pipe, inputs, CPU)
    assert torch.equal(ablate([0])["marked"], preds["clean"])  # the marker unit removed: the clean predictions
    assert torch.equal(ablate([])["marked"], preds["marked"])
    other = ablate([3, 5])["marked"]  # other units removed: still the shortcut
    assert (other == SHIRT).all()
    # the ablator re-runs only the rows where a removed unit fires, and equals the whole computation
    with torch.no_grad():
        z = pipe.sae.encode(marked)
        z[:, [3, 5]] = 0
        direct = pipe.clf(z).argmax(1)
    assert torch.equal(other, direct)
    f1 = _firing_f1(pipe.sae, torch.cat([marked, clean]), torch.cat([torch.ones(500), torch.zeros(500)]).bool(), CPU)
    assert f1[0] == 1.0 and f1.argmax() == 0  # unit 0 detects M perfectly


def _probe(variant: str, y_true, y, marks) -> _Probe:
    x = torch.zeros(len(y), 784)
    inputs = {"all": x, "fp": x[:2], "fn": x[:2]}
    return _Probe(variant, "test", x, x, torch.as_tensor(y), torch.as_tensor(y_true), torch.as_tensor(marks),
                  inputs, inputs)


def test_removal_ratios_on_hand_numbers():
    # certified: 10 two-class images, 9 right before, 7 after -> (0.9 - 0.7) / (0.9 - 0.5) = 0.5; 4 other images
    y_true = [SHIRT] * 5 + [TSHIRT] * 5 + [1] * 4
    probe = _probe("certified", y_true, y_true, [[False, False]] * 14)
    before = {"correct": np.array([1] * 9 + [0] + [1, 1, 1, 0], dtype=bool)}
    after = {"correct": np.array([1] * 7 + [0] * 3 + [1, 1, 0, 1], dtype=bool)}
    ratio = _reliance_removed(probe, before, after)
    assert ratio["value"] == pytest.approx(0.5) and ratio["ci95"][0] <= 0.5 <= ratio["ci95"][1]
    coll = _collateral(probe, before, after)  # other classes: 3/4 before, 3/4 after
    assert coll["mean"] == 0.0 and coll["n"] == 4
    # biased: four groups of 10; worst group 0.2 before, 0.5 cured, 0.8 for the oracle -> (0.5 - 0.2) / (0.8 - 0.2)
    y_true = [SHIRT] * 20 + [1] * 20
    marks = [[True, False]] * 10 + [[False, False]] * 10 + [[True, False]] * 10 + [[False, False]] * 10
    probe = _probe("biased", y_true, y_true, marks)

    def groups(*accs):
        return {"correct": np.concatenate([np.arange(10) < 10 * a for a in accs])}

    biased, cured, oracle = groups(1.0, 0.2, 0.9, 1.0), groups(0.9, 0.5, 0.9, 1.0), groups(0.9, 0.8, 0.9, 0.9)
    ratio = _cure_ratio(probe, biased, cured, oracle)
    assert ratio["value"] == pytest.approx(0.5)
    m = _variant_metrics(probe, {**biased, "fp": np.array([True, False]), "fn": np.array([True, True])})
    assert m["worst_group"] == pytest.approx(0.2) and m["group_gap"] == pytest.approx(0.8)
    assert m["fp"]["mean"] == 0.5 and m["fn"]["mean"] == 1.0
    gate = _gate_result("biased", m)
    assert gate["passed"] and gate["value"] == pytest.approx(0.8)
    assert not _gate_result("biased", {**m, "group_gap": 0.1})["passed"]


def test_finding_ranks_and_precision_on_hand_scores():
    scores = {"a": np.array([0.1, 0.9, 0.5, 0.0]), "b": np.array([0.7, 0.2, 0.7, 0.1])}
    assert _ranked(scores["b"]).tolist() == [0, 2, 1, 3]  # ties by unit id
    found = _finding(scores, marker_units=[1], control_unit=2, candidates=np.arange(4))
    assert found["a"]["marker_rank"] == 1 and found["a"]["precision_at_1"] == 1.0 and found["a"]["control_rank"] == 2
    assert found["b"]["marker_rank"] == 3 and found["b"]["precision_at_1"] == 0.0 and found["b"]["chance_at_1"] == 0.25
    assert _finding(scores, [], 2, np.arange(4))["a"]["marker_rank"] is None  # no marker unit: undefined


# --- the models: identities used, not assumed --------------------------------------------------------------------
def test_the_clean_twins_are_the_default_models_bit_for_bit(data):
    """On the unmarked images with the true labels, the study's trainers give the default pair of ``train_models``
    (so the biased variant's twin is the default checkpoint) and the pixel control of ``ksae.controls``."""
    cfg = kh.Config(**TINY)
    x_train, _, x_val, _ = kh.train_val_split(data, cfg)
    train, val = _split_indices(data.y_train, cfg)
    assert torch.equal(data.x_train[train], x_train) and torch.equal(data.x_train[val], x_val)
    sae, clf, _ = kh.train_models(cfg, data, CPU)
    mine, _ = _train_shortcut_autoencoder(cfg, data.x_train, data.y_train, CPU)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), mine.state_dict().values()))
    head, _ = _train_shortcut_head(cfg, sae, data.x_train, data.y_train, data.y_train, CPU)
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), head.state_dict().values()))
    code, pixel_clf, _ = train_representation("pixels", cfg, data, CPU)
    mine, _ = _train_shortcut_head(cfg, code, data.x_train, data.y_train, data.y_train, CPU)
    assert all(torch.equal(a, b) for a, b in zip(pixel_clf.state_dict().values(), mine.state_dict().values()))


def test_shared_models_are_cached_once_and_another_variants_checkpoint_is_refused(data, tmp_path):
    cfg = kh.Config(**TINY)
    planted = {v: kh.plant_shortcut(data, v) for v in kh.SHORTCUT_VARIANTS}
    broken = {v: kh.plant_shortcut(data, v, broken=True) for v in kh.SHORTCUT_VARIANTS}
    sae, clf, _ = kh.train_models(cfg, data, CPU)
    pixel_code, pixel_clf, history = train_representation("pixels", cfg, data, CPU)
    _save_control(tmp_path / _control_checkpoint_name(cfg, "pixels"), "pixels", cfg, pixel_code, pixel_clf, history)
    roles = ("shortcut", "twin", "oracle", "pixel", "pixel_twin")
    got = {v: _shortcut_models(planted[v], broken[v], cfg, data, CPU, (sae, clf), roles, tmp_path, verbose=False)
           for v in ("certified", "two_part", "biased")}
    files = sorted(p.name for p in tmp_path.glob("shortcut_*.pt"))
    # two autoencoders (certified = two-part's images), two oracles, three heads, three pixel heads, two twins each
    # for the SAE and the pixels (the biased twins are the default pair and the pixel control)
    count = {r: sum(f.startswith(f"shortcut_{r}_") for f in files) for r in ("ae", "oracle", "head", "pixel", "twin",
                                                                              "pixel_twin")}
    assert count == {"ae": 2, "oracle": 2, "head": 3, "pixel": 3 + 2, "twin": 2, "pixel_twin": 2}, files
    assert got["biased"]["twin"][0].clf is clf and got["biased"]["pixel_twin"][0].clf is not None
    c_sae, t_sae = got["certified"]["shortcut"][0].sae, got["two_part"]["shortcut"][0].sae
    assert all(torch.equal(a, b) for a, b in zip(c_sae.state_dict().values(), t_sae.state_dict().values()))
    assert not torch.equal(got["certified"]["shortcut"][0].clf.W1, got["two_part"]["shortcut"][0].clf.W1)
    # a file of another variant put in its place is refused, saying which variant it is
    biased_head = _checkpoint_path(tmp_path, "head", planted["biased"].digest(), cfg)
    shutil.copy(biased_head, _checkpoint_path(tmp_path, "head", planted["certified"].digest(), cfg))
    with pytest.raises(ValueError, match="expected a model trained on the certified variant's data .* got one of "
                                         "the biased variant"):
        _shortcut_models(planted["certified"], broken["certified"], cfg, data, CPU, (sae, clf), ("shortcut",),
                         tmp_path, verbose=False)
    with pytest.raises(ValueError, match="expected the cached ae model of the biased variant"):
        _shortcut_models(planted["biased"], broken["biased"], kh.Config(**{**TINY, "seed": 5}), data, CPU,
                         (sae, clf), ("shortcut",), tmp_path, train=False, verbose=False)


def test_the_twin_autoencoder_comes_from_the_default_checkpoint_whatever_the_classifier(data, tmp_path):
    """The autoencoder does not depend on the classifier's fields: a study run with another classifier recipe
    takes the twin's autoencoder from the default checkpoint of its seed (and the classifier only where the recipe
    is the default's); without that checkpoint it trains the same autoencoder, bit for bit, and caches it."""
    from ksae.shortcut_models import _CLASSIFIER_FIELDS, _default_models

    base = {k: v for k, v in TINY.items() if k not in _CLASSIFIER_FIELDS}
    ref, other = kh.Config(**base), kh.Config(**{**base, "clf_epochs": 2, "clf_hidden": (16, 8), "dropout": 0.1})
    planted = kh.plant_shortcut(data, "biased")
    sae, clf, _, _ = kh.load_or_train(ref, data, CPU, tmp_path / "with", verbose=False)
    got_sae, got_clf, source = _default_models(other, planted, CPU, tmp_path / "with", True, False)
    assert source == ref.checkpoint_name() and got_clf is None
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), got_sae.state_dict().values()))
    assert _default_models(ref, planted, CPU, tmp_path / "with", True, False)[1] is not None  # its own classifier
    trained, none, source = _default_models(other, planted, CPU, tmp_path / "without", True, False)
    assert none is None and source.startswith("shortcut_ae_clean_")
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), trained.state_dict().values()))
