"""ksae.models: top-k encoding (dense and sparse paths), unit-norm decoder atoms, the sparse classifier path."""

from __future__ import annotations

import pytest
import torch
from helpers import D, fresh_sae

import ksae_helpers as kh

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.mark.parametrize("k", [1, 7, 50, 100, 1024])
@torch.no_grad()
def test_encode_keeps_top_k_nonnegative(k, data):
    sae = fresh_sae(k, data)
    assert sae.k == k
    x = data.x_test[:128]
    z = sae.encode(x)
    assert z.shape == (128, 1024)
    nnz = (z != 0).sum(dim=1)
    assert int(nnz.max()) <= k and bool((z >= 0).all())
    if k <= 100:  # at init about half the pre-activations are positive, so the top k are all > 0
        assert bool((nnz == k).all())
    # the kept units are exactly the k largest pre-activations, with ReLU applied
    pre = sae.pre_activations(x)
    top = pre.topk(k, dim=1)
    expected = torch.zeros_like(pre).scatter(1, top.indices, top.values.clamp_min(0))
    assert torch.allclose(z, expected, atol=1e-6)
    # pre_activations is the documented affine map W_enc (x - b_pre) + b_enc
    assert torch.allclose(pre, (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc, atol=1e-4)


@pytest.mark.parametrize("k", [1, 50, 100])
@torch.no_grad()
def test_sparse_path_equals_dense_path(k, data):
    sae = fresh_sae(k, data, seed=1)
    x = data.x_test[:64]
    values, indices = sae.encode_sparse(x)
    assert values.shape == indices.shape == (64, k)
    z = sae.encode(x)
    assert torch.equal(torch.zeros_like(z).scatter(1, indices, values), z)
    assert torch.allclose(sae.decode_sparse(values, indices), sae.decode(z), atol=1e-5)
    assert torch.allclose(sae(x), z @ sae.W_dec + sae.b_pre, atol=1e-5)


@torch.no_grad()
def test_set_k_changes_sparsity(data):
    sae = fresh_sae(50, data)
    x = data.x_test[:32]
    assert int((sae.encode(x) != 0).sum(1).max()) == 50
    sae.set_k_(5)
    assert sae.k == 5
    assert int((sae.encode(x) != 0).sum(1).max()) == 5
    assert sae.encode_sparse(x)[0].shape == (32, 5)
    for bad in (0, -3, 1025, 2.0, True):
        with pytest.raises(ValueError):
            sae.set_k_(bad)
    assert sae.k == 5  # a rejected value leaves k alone


def test_k100_autoencoder_forward_and_backward(data):
    sae = kh.KSparseAutoencoder(k=100)
    x = data.x_test[:16]
    x_hat = sae(x)
    assert x_hat.shape == (16, D) and torch.isfinite(x_hat).all()
    kh.fvu(x_hat, x).backward()
    assert sae.W_enc.grad is not None and sae.W_dec.grad is not None
    # only the active atoms receive a decoder gradient
    active = torch.zeros(1024, dtype=torch.bool)
    active[sae.encode_sparse(x)[1].flatten()] = True
    assert bool((sae.W_dec.grad[~active] == 0).all()) and bool((sae.W_dec.grad[active] != 0).any())


def test_decoder_atoms_unit_norm_at_init():
    torch.manual_seed(3)
    sae = kh.KSparseAutoencoder(k=50, d_hidden=512)
    assert sae.W_dec.shape == (512, D)  # rows are atoms: [H, D]
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(512), atol=1e-5)
    assert torch.equal(sae.W_enc, sae.W_dec)  # tied initialisation


def test_remove_parallel_grad_leaves_norm_unchanged_to_first_order():
    torch.manual_seed(0)
    sae = kh.KSparseAutoencoder(k=10, d_hidden=64)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_grad_()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(64), atol=1e-5)


@torch.no_grad()
def test_forward_sparse_equals_forward_on_dense_code(trained, data):
    _, sae, clf, _, _ = trained
    clf.eval()
    x = data.x_test[:500]
    values, indices = sae.encode_sparse(x)
    assert torch.allclose(clf.forward_sparse(values, indices), clf(sae.encode(x)), atol=1e-5)


@torch.no_grad()
def test_forward_sparse_equals_forward_untrained_random_codes():
    torch.manual_seed(0)
    clf = kh.SparseCodeClassifier(d_hidden=256, hidden=(64, 32), n_classes=10, dropout=0.3).eval()
    values = torch.rand(40, 12)
    indices = torch.stack([torch.randperm(256)[:12] for _ in range(40)])
    z = torch.zeros(40, 256).scatter(1, indices, values)
    out = clf.forward_sparse(values, indices)
    assert out.shape == (40, 10)
    assert torch.allclose(out, clf(z), atol=1e-5)
    # eval mode is deterministic (dropout off)
    assert torch.equal(out, clf.forward_sparse(values, indices))


def test_both_models_are_built_from_the_config_one_way():
    cfg = kh.Config(k=7, d_hidden=48, clf_hidden=(16, 8), dropout=0.2)
    torch.manual_seed(0)
    sae, clf = kh.KSparseAutoencoder.from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    assert (sae.k, sae.d_input, sae.d_hidden) == (7, 784, 48) and clf.W1.shape == (48, 16)
    torch.manual_seed(0)
    direct = kh.KSparseAutoencoder(7, 784, 48)  # the same initialisation from the same seed
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), direct.state_dict().values()))
    with pytest.raises(TypeError):  # no config argument that would silently override k
        kh.KSparseAutoencoder(k=3, config=cfg)
