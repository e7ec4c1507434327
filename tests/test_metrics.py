"""ksae.metrics: the autoencoder's and the classifier's test-set metrics, checked by hand, and firing counts."""

from __future__ import annotations

import pytest
import torch
from helpers import CPU, N_TEST, fresh_sae

import ksae_helpers as kh

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def metrics(trained, data):
    cfg, sae, clf, _, _ = trained
    return kh.evaluate_autoencoder(sae, data, CPU), kh.evaluate_classifier(sae, clf, data, CPU)


def test_evaluate_autoencoder(trained, metrics, data):
    cfg, sae, _, _, _ = trained
    m, _ = metrics
    assert {"k", "test_mse_per_pixel", "fvu", "mean_l0", "dead_units", "d_hidden", "unit_usage_train"} <= set(m)
    assert m["k"] == cfg.k and m["d_hidden"] == cfg.d_hidden
    assert 0.0 < m["fvu"] < 1.0
    assert 0.0 < m["mean_l0"] <= cfg.k
    assert isinstance(m["dead_units"], int) and 0 <= m["dead_units"] <= cfg.d_hidden
    # recompute by hand
    with torch.no_grad():
        x = data.x_test
        x_hat = sae(x)
        assert m["test_mse_per_pixel"] == pytest.approx(float((x_hat - x).pow(2).mean()), rel=1e-4)
        fvu = float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        assert m["fvu"] == pytest.approx(fvu, rel=1e-4)
        assert m["mean_l0"] == pytest.approx(float((sae.encode(x) != 0).sum(1).float().mean()), abs=1e-4)
        active = torch.zeros(cfg.d_hidden, dtype=torch.bool)
        for xs in (data.x_train, data.x_test):
            for i in range(0, len(xs), 10_000):
                active |= (sae.encode(xs[i:i + 10_000]) > 0).any(0)
        assert m["dead_units"] == int((~active).sum())
    usage = torch.tensor(m["unit_usage_train"])
    assert usage.shape == (cfg.d_hidden,) and bool(((usage >= 0) & (usage <= 1)).all())
    assert 0 < float(usage.sum()) <= cfg.k + 1e-4  # mean number of active units per train image


@torch.no_grad()
def test_evaluate_autoencoder_counts_dead_units(data):
    """Units silenced on purpose are counted as dead, on train and test images together."""
    small = kh.FashionMNIST(data.x_train[:1500], data.y_train[:1500], data.x_test[:500], data.y_test[:500])
    sae = fresh_sae(20, data, seed=2)
    sae.b_enc[:100] = -1e3  # these 100 units can never be positive
    m = kh.evaluate_autoencoder(sae, small, CPU)
    active = (sae.encode(torch.cat([small.x_train, small.x_test])) > 0).any(0)
    assert m["dead_units"] == int((~active).sum()) >= 100
    usage = torch.tensor(m["unit_usage_train"])
    assert bool((usage[:100] == 0).all())
    manual_usage = (sae.encode(small.x_train) > 0).float().mean(0)
    assert torch.allclose(usage, manual_usage, atol=1e-6)
    assert m["mean_l0"] == pytest.approx(20.0)  # every row keeps k=20 positive units at init


def test_evaluate_classifier(trained, metrics, data):
    cfg, sae, clf, _, _ = trained
    _, m = metrics
    assert {"test_accuracy", "per_class_accuracy", "confusion_matrix"} <= set(m)
    with torch.no_grad():
        logits_dense = clf(sae.encode(data.x_test))
        logits_sparse = kh.SparseCodePipeline(sae, clf)(data.x_test)
    pred = logits_sparse.argmax(1)
    assert m["test_accuracy"] == pytest.approx(int((pred == data.y_test).sum()) / N_TEST, abs=1e-6)
    dense_acc = float((logits_dense.argmax(1) == data.y_test).float().mean())
    assert abs(m["test_accuracy"] - dense_acc) <= 2 / N_TEST  # same function; allow a float near-tie
    assert m["test_accuracy"] > 0.5  # well above chance (0.1) after two epochs on 3000 images
    cm = torch.tensor(m["confusion_matrix"])
    assert cm.shape == (10, 10) and int(cm.sum()) == N_TEST
    assert cm.sum(1).tolist() == [1000] * 10  # rows are the true class
    manual = torch.zeros(10, 10, dtype=torch.long)
    manual.index_put_((data.y_test, pred), torch.ones(N_TEST, dtype=torch.long), accumulate=True)
    assert torch.equal(cm, manual)
    assert float(cm.trace()) / N_TEST == pytest.approx(m["test_accuracy"], abs=1e-6)
    assert list(m["per_class_accuracy"]) == list(data.classes)
    per_class = torch.tensor(list(m["per_class_accuracy"].values()))
    assert torch.allclose(per_class, cm.diag().float() / cm.sum(1).float(), atol=1e-7)


def test_firing_counts_count_images_with_a_positive_value():
    values = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, 0.0]])
    indices = torch.tensor([[0, 1, 2], [0, 3, 1]], dtype=torch.int32)
    assert kh.firing_counts(values, indices, 5).tolist() == [2.0, 0.0, 1.0, 1.0, 0.0]
    assert kh.firing_frequency(values, indices, 5).tolist() == [1.0, 0.0, 0.5, 0.5, 0.0]
