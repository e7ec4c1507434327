"""The controls' rows are the real models: PCA is the PCA, the untrained dictionary is the SAE's initialisation, the
shuffled-label classifier is at chance; mismatched checkpoints and unknown names are refused; the claim rule keeps a
planted class-pure code and drops a random one."""

from __future__ import annotations

import pytest
import torch

import ksae.training
import ksae_helpers as kh
from ksae.controls import (
    _accuracy_recovered,
    _check_representations,
    _control_checkpoint_name,
    _evaluate_representation,
    _explained_model,
    _initial_classifier,
    _load_or_train_control,
    _load_sae,
    _relabelling_null,
    _save_control,
    _shuffled_labels,
)

CPU = torch.device("cpu")
TINY = dict(k=4, d_hidden=32, clf_hidden=(16, 8), train_subset=400, ae_epochs=1, clf_epochs=1, n_val=500,
            batch_size=64, clf_hflip=False, clf_shift=0)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_pca_equals_a_direct_svd(data):
    x = data.x_train[:2000]
    comps, mean = kh.fit_pca(x, 12)
    x64 = x.double()
    _, s, vh = torch.linalg.svd(x64 - x64.mean(0), full_matrices=False)
    assert torch.allclose(mean.double(), x64.mean(0), atol=1e-6)
    cos = (comps.double() * vh[:12]).sum(1)
    assert torch.allclose(cos.abs(), torch.ones(12, dtype=torch.float64), atol=1e-4), cos  # same axes, any sign
    assert torch.allclose(comps.double() @ comps.double().T, torch.eye(12, dtype=torch.float64), atol=1e-5)
    code = kh.LinearCode(comps, mean)  # its reconstruction misses exactly the variance of the other axes
    expected = float((s[12:] ** 2).sum() / (s ** 2).sum())
    assert kh.fvu(code.decode(code.encode(x)), x).item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="n_components"):
        kh.fit_pca(x, 0)


def test_linear_pipeline_is_one_affine_map_then_the_head(data):
    comps, mean = kh.fit_pca(data.x_train[:500], 6)
    clf = kh.SparseCodeClassifier(6, (8, 4), 10, 0.0).eval()
    for code in (kh.LinearCode(comps, mean), kh.LinearCode(None)):
        clf_ = clf if code.d_hidden == 6 else kh.SparseCodeClassifier(784, (8, 4), 10, 0.0).eval()
        pipe = kh.LinearCodePipeline(code, clf_).eval()
        A, c, head = pipe.affine_split()
        x = data.x_test[:7]
        assert torch.allclose(head(x @ A.T + c), pipe(x), atol=1e-5)
        assert torch.allclose(pipe(x), clf_(code.encode(x)), atol=1e-6)
    assert torch.equal(kh.LinearCode(None).encode(data.x_test[:3]), data.x_test[:3])  # raw pixels: the image itself


def test_untrained_dictionary_is_the_sae_initialisation_bit_for_bit(data, monkeypatch):
    """The SAE's state where ``train_autoencoder`` starts its first step (recorded when it builds its optimiser)
    equals ``untrained_autoencoder``; the control classifiers on a code of its width start where the SAE's did."""
    cfg = kh.Config(**TINY)
    starts = []
    real = ksae.training.make_adam

    def recording(params, *args, **kwargs):
        params = list(params)
        starts.append([p.detach().clone() for p in params])
        return real(params, *args, **kwargs)

    monkeypatch.setattr(ksae.training, "make_adam", recording)
    kh.train_models(cfg, data, CPU)
    x_train, _, _, _ = kh.train_val_split(data, cfg)
    untrained = kh.untrained_autoencoder(cfg, x_train)
    assert len(starts[0]) == len(list(untrained.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(starts[0], untrained.parameters()))
    clf = _initial_classifier(cfg, cfg.d_hidden)
    assert all(torch.equal(a, b) for a, b in zip(starts[1], clf.parameters()))
    # the control trained from it really starts there: its code is the untrained dictionary, unchanged
    code, _, _ = kh.train_representation("untrained", cfg, data, CPU)
    assert all(torch.equal(a, b) for a, b in zip(code.state_dict().values(), untrained.state_dict().values()))


def test_shuffled_labels_give_chance_accuracy(trained, data):
    """The trained SAE's code, a classifier on shuffled labels: chance on the test set; on true labels, far above."""
    cfg, sae, clf, _, _ = trained
    _, y_train, _, _ = kh.train_val_split(data, cfg)
    shuffled = _shuffled_labels(y_train, cfg.seed)
    assert torch.equal(torch.bincount(shuffled), torch.bincount(y_train)) and (shuffled != y_train).float().mean() > 0.8
    code, sclf, history = kh.train_representation("shuffled", cfg, data, CPU, sae=sae)
    assert code is sae
    row = _evaluate_representation(_explained_model(code, sclf), code, data, cfg, CPU)
    true = _evaluate_representation(_explained_model(sae, clf), sae, data, cfg, CPU)
    # chance: what the same predictions score when the class names are permuted (the predictions follow the
    # images, so whole classes land on one label: the accuracy varies by class, not by image, around 0.1)
    null = _relabelling_null(_explained_model(code, sclf), data, CPU)
    assert null["accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-6) and null["p_value"] > 0.01, null
    assert abs(null["null_mean"] - 0.1) < 0.01
    real = _relabelling_null(_explained_model(sae, clf), data, CPU)
    assert true["test_accuracy"] > 0.6 and real["p_value"] == 0.0  # a learned link is far above every relabelling
    assert row["fvu"] == true["fvu"]  # the same code


def test_rows_are_the_real_models(trained, data):
    """The SAE row's accuracy and FVU are evaluate_models'; the pixel code has no FVU and its L0 is the images'."""
    cfg, sae, clf, _, _ = trained
    row = _evaluate_representation(_explained_model(sae, clf), sae, data, cfg, CPU)
    ref = kh.evaluate_models(sae, clf, data, cfg, CPU)
    assert row["test_accuracy"] == pytest.approx(ref["classifier"]["test_accuracy"], abs=1e-9)
    assert row["val_accuracy"] == pytest.approx(ref["classifier"]["val_accuracy"], abs=1e-6)
    assert row["fvu"] == pytest.approx(ref["autoencoder"]["fvu"], rel=1e-4)
    assert row["mean_l0"] == pytest.approx(ref["autoencoder"]["mean_l0"], abs=1e-6)
    assert row["dead_units"] == ref["autoencoder"]["dead_units"]
    pixels = _evaluate_representation(_explained_model(kh.LinearCode(None), kh.SparseCodeClassifier(
        784, (8, 4), 10, 0.0)), kh.LinearCode(None), data, cfg, CPU)
    assert pixels["fvu"] is None and pixels["d_code"] == 784
    assert pixels["mean_l0"] == pytest.approx(float((data.x_test > 0).sum(1).float().mean()))
    recovered = _accuracy_recovered(_explained_model(sae, clf), {"sae": sae}, data, CPU)
    assert recovered["sae"]["recovered"] == pytest.approx(recovered["sae"]["accuracy"] / recovered["original"])


def test_unknown_names_and_mismatched_checkpoints_are_refused(tmp_path, data):
    with pytest.raises(ValueError, match=r"unknown \['sparse'\]"):
        _check_representations(["sae", "sparse"])
    with pytest.raises(ValueError, match="representations must be"):
        _check_representations("pca")
    cfg = kh.Config(**TINY)
    code, clf = kh.LinearCode(*kh.fit_pca(data.x_train[:300], cfg.k)), _initial_classifier(cfg, cfg.k)
    path = tmp_path / _control_checkpoint_name(cfg, "pca")
    _save_control(path, "pca", kh.Config(**{**TINY, "lr": 5e-3}), code, clf, {})  # another recipe, the same name
    with pytest.raises(ValueError, match=r"lr: expected 0\.001, got 0\.005"):
        _load_or_train_control("pca", cfg, data, CPU, tmp_path)
    _save_control(path, "pixels", cfg, code, clf, {})
    with pytest.raises(ValueError, match="expected representation 'pca', got 'pixels'"):
        _load_or_train_control("pca", cfg, data, CPU, tmp_path)
    with pytest.raises(ValueError, match=r"seed 3.*seeds with a checkpoint of this configuration there: none"):
        _load_sae(kh.Config(**{**TINY, "seed": 3}), tmp_path)
    with pytest.raises(ValueError, match="name must be a control"):
        kh.train_representation("sae", cfg, data, CPU)


# --- the claim rule on planted codes ------------------------------------------------------------------------
N_CLASSES, MARK, NOISE_START, NOISE_WIDTH = 10, 10, 200, 30


def _marked_data(n: int = 400, seed: int = 0) -> kh.FashionMNIST:
    """Images of 10 classes: class c carries a mark on pixels [10 c, 10 c + 10); noise on 300 other pixels."""
    gen = torch.Generator().manual_seed(seed)

    def split(m):
        y = torch.arange(m) % N_CLASSES
        x = torch.zeros(m, 784)
        x[:, NOISE_START:NOISE_START + 10 * NOISE_WIDTH] = torch.rand(m, 10 * NOISE_WIDTH, generator=gen)
        for c in range(N_CLASSES):
            x[y == c, MARK * c:MARK * (c + 1)] = 1.0
        return x, y

    return kh.FashionMNIST(*split(n), *split(n))


def _planted(n_pure: int, n_units: int = 20) -> kh.SparseCodePipeline:
    """Units 0..n_pure-1 read their class's mark (fire only on it) and feed its logit; the others read noise."""
    sae = kh.KSparseAutoencoder(k=3, d_hidden=n_units)
    clf = kh.SparseCodeClassifier(n_units, (n_units, n_units), N_CLASSES, dropout=0.0)
    with torch.no_grad():
        for p in list(sae.parameters()) + list(clf.parameters()):
            p.zero_()
        for j in range(n_units):
            if j < n_pure:
                c = j % N_CLASSES
                sae.W_enc[j, MARK * c:MARK * (c + 1)] = 1.0
                sae.b_enc[j] = -5.0
                clf.rest[5].weight[c, j] = 2.0
            else:
                start = NOISE_START + NOISE_WIDTH * (j % 10)
                sae.W_enc[j, start:start + NOISE_WIDTH] = 0.1
            clf.W1[j, j] = 1.0
            clf.rest[2].weight[j, j] = 1.0
        sae.W_dec.copy_(torch.randn(n_units, 784, generator=torch.Generator().manual_seed(n_pure)))
        sae.unit_norm_decoder_()
    return kh.SparseCodePipeline(sae, clf).eval()


def test_a_planted_class_pure_code_survives_the_claim_rule_and_a_random_one_does_not():
    data = _marked_data()
    x, y = data.x_test[:60], data.y_test[:60]
    raw = {}
    for name, n_pure in (("sae", 10), ("random", 0), ("untrained", 0)):
        summary, raw[name] = kh.unit_measures(_planted(n_pure), data, CPU, x, y)
        assert summary["n_live"] == 20 and summary["dead"] == 0
    assert raw["sae"]["pure"].sum() == 10 and raw["untrained"]["pure"].sum() == 0
    held = kh.unit_claims({"sae": raw["sae"], "untrained": raw["untrained"]})
    assert held["pure_share"]["held"] and held["pure_share"]["controls"]["untrained"]["difference"]["ci95"][0] > 0
    assert held["lowers_share"]["held"] and held["deletion_gap"]["held"]
    dropped = kh.unit_claims({"sae": raw["random"], "untrained": raw["untrained"]})  # a random code as "trained"
    assert not dropped["pure_share"]["held"] and not dropped["lowers_share"]["held"]
    assert dropped["pure_share"]["trained"]["value"] == 0.0
    shuffled = kh.unit_claims({"sae": raw["sae"], "shuffled": raw["sae"]})  # the same code: never a control for purity
    assert shuffled["pure_share"]["controls"]["shuffled"]["applies"] is False
    assert not shuffled["pure_share"]["held"]  # no control that applies: nothing is held
    assert not shuffled["lowers_share"]["held"]  # the same units and classifier: not beaten
    with pytest.raises(ValueError, match="at least one control"):
        kh.unit_claims({"sae": raw["sae"]})
