"""ksae.sae: every autoencoder kind's activation and loss terms against a direct implementation on hand-made
pre-activations (BatchTopK keeps exactly k x batch in training and applies its threshold at inference, JumpReLU's
straight-through gradients are the rectangle-kernel formula, Matryoshka's prefix losses, ReLU + L1's penalty), the
seam every consumer asks (path changes, padded codes), kinds refused where they do not belong (knobs, checkpoints),
and the default configuration's key, unchanged by the variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import kind_config, kind_pipeline, object_images

import ksae_helpers as kh

H, D, B = 64, 20, 6


def _pre(seed: int = 0, rows: int = B) -> torch.Tensor:
    """Hand-made pre-activations ``[rows, H]``: distinct values, row 0 much larger than the others (so a batch
    top-k gives it more than k units and the other rows fewer)."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(rows, H, generator=g, dtype=torch.float64)
    pre[0] += 2.0
    return pre


def _context(cfg, graph_safe=False, step=0.0, total=100):
    return kh.TrainingContext(cfg, torch.tensor(float(step)), total, graph_safe)


def _tiny(kind: str, **over):
    cfg = kind_config(kind, d_input=D, **over)
    torch.manual_seed(0)
    return cfg, kh.autoencoder_from_config(cfg).double()


# --- the registry and the fixed names ------------------------------------------------------------------------

def test_every_kind_has_its_class_and_the_builder_returns_it():
    assert kh.SAE_KINDS == ("topk", "batchtopk", "jumprelu", "relu_l1", "matryoshka")
    for kind in kh.SAE_KINDS:
        sae = kh.autoencoder_from_config(kind_config(kind))
        assert type(sae) is kh.SAE_CLASSES[kind] and sae.kind == kind and isinstance(sae, kh.SparseAutoencoder)
    assert type(kh.KSparseAutoencoder.from_config(kh.Config())) is kh.KSparseAutoencoder
    with pytest.raises(ValueError, match="cfg must be a Config"):
        kh.autoencoder_from_config({"sae_kind": "topk"})


def test_the_default_configuration_keeps_its_key_and_checkpoint_name():
    """Checkpoints and results of the default run, written before the variants, keep matching."""
    cfg = kh.Config()
    assert cfg.checkpoint_name() == "ksae_k50_h1024_clf512x256_ae30_clf50_seed0_5777d37e.pt"
    assert set(cfg.training_key()) & {"sae_kind", "target_l0", "l1_coef", "matryoshka_prefixes"} == set()
    other = kh.Config(sae_kind="jumprelu")
    assert other.training_key()["sae_kind"] == "jumprelu" and "target_l0" in other.training_key()
    assert other.checkpoint_name().startswith("ksae_jumprelu_l0-50_")
    assert kh.Config(sae_kind="batchtopk").checkpoint_name() != cfg.checkpoint_name()


def test_topk_training_terms_are_the_seed_recipe():
    """Top-k's loss = batch FVU of the sparse decode + aux_coef * AuxK, as before the seam existed."""
    cfg, sae = _tiny("topk", aux_k=16)
    x, dormant = torch.rand(B, D, dtype=torch.float64), torch.rand(H) < 0.5
    terms = sae.training_terms(x, dormant, _context(cfg))
    pre = sae.pre_activations(x)
    values, indices = torch.topk(pre, cfg.k, dim=1)
    x_hat = kh.densify(F.relu(values), indices, H) @ sae.W_dec + sae.b_pre
    aux = kh.auxk_loss(sae, pre, x - x_hat, dormant, 16)
    torch.testing.assert_close(terms.loss, kh.fvu(x_hat, x) + cfg.aux_coef * aux)
    assert float(terms.l0) == cfg.k and terms.fired.sum() == B * cfg.k


# --- BatchTopK -------------------------------------------------------------------------------------------------

def test_batchtopk_keeps_exactly_k_times_batch_in_training():
    cfg, sae = _tiny("batchtopk")
    pre = _pre()
    values, flat = sae.batch_top_k(pre)
    direct = F.relu(pre).flatten().sort(descending=True).values[:cfg.k * B]
    assert len(values) == cfg.k * B
    torch.testing.assert_close(values.sort(descending=True).values, direct)
    per_row = torch.bincount(flat // H, minlength=B)
    assert per_row.sum() == cfg.k * B and per_row[0] > cfg.k and per_row[1:].min() < cfg.k  # varies per image
    # the training pass decodes exactly those entries
    x = torch.rand(B, D, dtype=torch.float64)
    sae.train()
    terms = sae.training_terms(x, torch.zeros(H, dtype=torch.bool), _context(cfg))
    kept = F.relu(sae.pre_activations(x)).flatten().topk(cfg.k * B)
    z = torch.zeros(B * H, dtype=torch.float64).scatter(0, kept.indices, kept.values).view(B, H)
    torch.testing.assert_close(terms.fvu, kh.fvu(sae.decode(z), x))
    assert terms.fired.sum() == (kept.values > 0).sum() and float(terms.l0) == (kept.values > 0).sum() / B


def test_batchtopk_estimates_its_threshold_during_training_and_applies_it_at_inference():
    cfg, sae = _tiny("batchtopk")
    x = torch.rand(B, D, dtype=torch.float64)
    sae.train()
    assert float(sae.threshold) < 0  # not estimated yet
    sae.training_terms(x, torch.zeros(H, dtype=torch.bool), _context(cfg))
    first = F.relu(sae.pre_activations(x)).flatten().topk(cfg.k * B).values.detach()
    assert float(sae.threshold) == pytest.approx(float(first[first > 0].min()), rel=1e-6)  # started at the batch's
    x2 = torch.rand(B, D, dtype=torch.float64)
    sae.training_terms(x2, torch.zeros(H, dtype=torch.bool), _context(cfg))
    second = F.relu(sae.pre_activations(x2)).flatten().topk(cfg.k * B).values.detach()
    expect = (1 - cfg.batchtopk_threshold_rate) * float(first[first > 0].min()) + \
        cfg.batchtopk_threshold_rate * float(second[second > 0].min())
    assert float(sae.threshold) == pytest.approx(expect, rel=1e-6)  # the EMA step
    sae.eval()
    sae.training_terms(x2, torch.zeros(H, dtype=torch.bool), _context(cfg))
    assert float(sae.threshold) == pytest.approx(expect, rel=1e-6)  # evaluation does not move it
    # inference: every unit above the threshold (and 0), whatever the count per row
    pre = _pre(1)
    with torch.no_grad():
        sae.threshold.fill_(0.8)
    values, indices = sae.activation(pre)
    z = kh.densify(values, indices, H)
    torch.testing.assert_close(z, torch.where(pre > 0.8, pre, torch.zeros_like(pre)))
    counts = (z > 0).sum(1)
    assert values.shape[1] == counts.max() and counts.min() < counts.max()  # padded with zeros to the widest


# --- JumpReLU --------------------------------------------------------------------------------------------------

def test_jumprelu_straight_through_gradients_are_the_rectangle_kernel_formula():
    """dz/dtheta = -(theta / eps) K((pre - theta) / eps) and dL0/dtheta = -(1 / eps) K(...), K the rectangle
    of width 1; dz/dpre = H(pre - theta); no gradient of the count to pre."""
    cfg, sae = _tiny("jumprelu")
    eps = 0.05
    with torch.no_grad():
        sae.bandwidth.fill_(eps)
        sae.threshold.copy_(torch.linspace(0.1, 1.0, H, dtype=torch.float64))
    theta = sae.threshold.detach()
    pre = (theta + eps * torch.linspace(-0.9, 0.9, B, dtype=torch.float64)[:, None]).requires_grad_()
    grad_out = torch.randn(B, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    from ksae.sae.jumprelu import _JumpReLU, _Step
    z = _JumpReLU.apply(pre, sae.threshold, sae.bandwidth)
    g_pre, g_theta = torch.autograd.grad((z * grad_out).sum(), (pre, sae.threshold))
    inside = ((pre.detach() - theta).abs() < eps / 2).double()
    torch.testing.assert_close(z.detach(), pre.detach() * (pre.detach() > theta))
    torch.testing.assert_close(g_pre, (pre.detach() > theta).double() * grad_out)
    torch.testing.assert_close(g_theta, (-(theta / eps) * inside * grad_out).sum(0))
    count = _Step.apply(pre, sae.threshold, sae.bandwidth)
    g_theta = torch.autograd.grad((count * grad_out).sum(), sae.threshold)[0]
    torch.testing.assert_close(g_theta, (-(1 / eps) * inside * grad_out).sum(0))
    assert 0 < inside.sum() < inside.numel()  # both sides of the window were exercised


def test_jumprelu_sparse_training_pass_has_the_dense_gradients():
    """Training decodes only the active units and those within half a bandwidth below their threshold: the
    loss and every gradient (thresholds included) equal the dense pass's, and the target-L0 term is
    lambda * (L0 / target - 1)^2 with the step applied to the pre-activation."""
    cfg, sae = _tiny("jumprelu", target_l0=5.0, sparsity_warmup=0.0)
    x = torch.rand(16, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        sae.bandwidth.fill_(0.1)
        pre = sae.pre_activations(x)
        sae.threshold.copy_(pre.quantile(0.9, dim=0))
        selected = pre > sae.threshold - 0.05
    from ksae.sae.base import _DENSE_DECODE_SHARE
    assert (pre > sae.threshold).any(0).sum() < selected.sum() < _DENSE_DECODE_SHARE * selected.numel()  # sparse
    grads = []
    for graph_safe in (False, True):  # graph_safe decodes densely
        sae.zero_grad()
        terms = sae.training_terms(x, torch.zeros(H, dtype=torch.bool), _context(cfg, graph_safe))
        terms.loss.backward()
        grads.append([terms.loss.detach()] + [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec,
                                                                        sae.threshold)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    assert grads[0][4].abs().sum() > 0  # the thresholds learn
    active = (pre > sae.threshold.detach()).double()
    l0 = active.sum(1).mean()
    z = pre * active
    expect = kh.fvu(z @ sae.W_dec.detach() + sae.b_pre.detach(), x) + cfg.jumprelu_l0_coef * (l0 / 5.0 - 1) ** 2
    torch.testing.assert_close(grads[0][0], expect.detach())


def test_jumprelu_bandwidth_and_thresholds_are_scaled_to_the_data():
    cfg, sae = _tiny("jumprelu", jumprelu_bandwidth=0.01)
    x = torch.rand(200, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sae.prepare_training_(x)
    rms = (x - x.mean(0)).pow(2).sum(1).mean().sqrt()
    assert float(sae.bandwidth) == pytest.approx(0.01 * float(rms), rel=1e-6)
    active = (sae.pre_activations(x) > sae.threshold).double().sum(1).mean()  # started near the target L0
    assert active == pytest.approx(cfg.target_l0, rel=0.2)


# --- Matryoshka ------------------------------------------------------------------------------------------------

def test_matryoshka_prefix_losses_are_the_nested_reconstructions():
    cfg, sae = _tiny("matryoshka", aux_k=16)
    x = torch.rand(B, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sae.train()
    dormant = torch.rand(H, generator=torch.Generator().manual_seed(7)) < 0.3
    terms = sae.training_terms(x, dormant, _context(cfg))
    pre = sae.pre_activations(x)
    kept = F.relu(pre).flatten().topk(cfg.k * B)
    z = torch.zeros(B * H, dtype=torch.float64).scatter(0, kept.indices, kept.values).view(B, H)
    prefixes = (*cfg.matryoshka_prefixes, H)
    fvus = [kh.fvu(z[:, :m] @ sae.W_dec[:m] + sae.b_pre, x) for m in prefixes]
    full = z @ sae.W_dec + sae.b_pre
    aux = kh.auxk_loss(sae, pre, x - full, dormant, 16)
    torch.testing.assert_close(terms.loss, torch.stack(fvus).mean() + cfg.aux_coef * aux)  # averaged, not summed
    torch.testing.assert_close(terms.fvu, kh.fvu(full, x))
    assert len({float(f.detach()) for f in fvus}) == len(prefixes)  # each prefix reconstructs differently
    # the graph-safe pass is the same function
    terms_safe = sae.eval().training_terms(x, dormant, _context(cfg, graph_safe=True))
    torch.testing.assert_close(terms_safe.loss, terms.loss)


# --- ReLU + L1 -------------------------------------------------------------------------------------------------

def test_relu_l1_penalty_is_weighted_by_decoder_norms_and_warms_up():
    cfg, sae = _tiny("relu_l1", l1_coef=0.1, sparsity_warmup=0.5)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, H, dtype=torch.float64)[:, None])  # unconstrained norms
    x = torch.rand(B, D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    z = F.relu(sae.pre_activations(x))
    penalty = (z * sae.W_dec.norm(dim=1)).sum(1).mean()
    x_hat = z @ sae.W_dec + sae.b_pre
    for step, weight in ((0, 0.0), (25, 0.5), (50, 1.0), (90, 1.0)):  # warm-up over half of 100 steps
        terms = sae.training_terms(x, torch.zeros(H, dtype=torch.bool), _context(cfg, step=step, total=100))
        torch.testing.assert_close(terms.aux, penalty)
        torch.testing.assert_close(terms.loss, kh.fvu(x_hat, x) + 0.1 * weight * penalty)
    norms = sae.W_dec.norm(dim=1).clone()
    sae.W_dec.grad = torch.ones_like(sae.W_dec)
    sae.constrain_grads_()
    sae.after_step_()
    assert torch.equal(sae.W_dec.grad, torch.ones_like(sae.W_dec)) and torch.equal(sae.W_dec.norm(dim=1), norms)


def test_relu_l1_resamples_dormant_units_and_resets_their_adam_state():
    cfg, sae = _tiny("relu_l1", dead_after=10, ae_epochs=4)
    x = torch.rand(300, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae(x[:32]).pow(2).sum().backward()
    opt.step()
    since = torch.zeros(H, dtype=torch.long)
    since[:5] = 50  # five dormant units
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    sae.end_epoch_(x, since, opt, _context(cfg), epoch=0)
    assert (since == 0).all()
    torch.testing.assert_close(sae.W_dec[:5].norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert (sae.b_enc[:5] == 0).all() and not torch.equal(sae.W_enc[:5], before["W_enc"][:5])
    assert torch.equal(sae.W_enc[5:], before["W_enc"][5:]) and torch.equal(sae.W_dec[5:], before["W_dec"][5:])
    assert (opt.state[sae.W_enc]["exp_avg"][:5] == 0).all() and (opt.state[sae.W_enc]["exp_avg"][5:] != 0).any()
    since[:5] = 50
    sae.end_epoch_(x, since, opt, _context(cfg), epoch=2)  # after the first half of training: left alone
    assert (since[:5] == 50).all()


# --- the seam: every kind answers the same questions -----------------------------------------------------------

@pytest.mark.parametrize("kind", kh.SAE_KINDS)
def test_path_code_and_changes_agree_with_the_activation_at_every_point(kind):
    """``path_code`` gives the activation at every point of a straight path; ``code_changes`` counts the units
    that change, and marks a jump only where the code is discontinuous (a top-k swap of positive codes, a
    crossing of a cutoff > 0; never for ReLU)."""
    sae = kind_pipeline(kind, dtype=torch.float64).sae
    x = object_images(2, seed=3, dtype=torch.float64)
    alphas = torch.linspace(0, 1, 201, dtype=torch.float64)
    pre = sae.encoder_bias().detach() + alphas[None, :, None] * F.linear(x, sae.W_enc.detach())[:, None]
    values, indices = sae.path_code(pre)
    for i in range(2):
        z = kh.densify(*sae.activation(pre[i]), H)
        torch.testing.assert_close(kh.densify(values[i], indices[i], H), z)
    changes, jumps = sae.code_changes(values, indices)
    member = torch.stack([kh.densify(values[i], indices[i], H) > 0 for i in range(2)])
    if kind == "topk":
        assert torch.equal(changes, (member[:, 1:] & ~member[:, :-1]).sum(-1))
    else:
        assert torch.equal(changes, (member[:, 1:] ^ member[:, :-1]).sum(-1))
    assert changes.sum() > 0
    if kind == "relu_l1":
        assert not jumps.any()
    else:
        assert jumps.any() and (changes[jumps] > 0).all()


@pytest.mark.parametrize("kind", [k for k in kh.SAE_KINDS if k != "topk"])
def test_kinds_without_k_at_inference_refuse_set_k(kind):
    sae = kh.autoencoder_from_config(kind_config(kind))
    with pytest.raises(ValueError, match=f"a {kind} autoencoder keeps no fixed number of units per image"):
        sae.set_k_(5)


# --- refused: knobs, kinds, checkpoints of another kind ---------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(sae_kind="jumpReLU"), r"sae_kind must be one of .* got 'jumpReLU' \(did you mean 'jumprelu'\?\)"),
    (dict(sae_kind="batch_topk"), r"did you mean 'batchtopk'\?"),
    (dict(l1_coef=0.1), r"l1_coef is read only by sae_kind relu_l1; sae_kind 'topk' does not read it: expected "
                        r"the default 0.0055, got 0.1"),
    (dict(sae_kind="jumprelu", k=20), r"k is read only by sae_kind topk, batchtopk, matryoshka; sae_kind "
                                      r"'jumprelu' does not read it.*\(its sparsity knob is target_l0\)"),
    (dict(sae_kind="relu_l1", aux_k=0), r"aux_k is read only by"),
    (dict(sae_kind="batchtopk", matryoshka_prefixes=(8, 16)), r"matryoshka_prefixes is read only by sae_kind "
                                                              r"matryoshka"),
    (dict(target_l0=20.0), r"target_l0 is read only by sae_kind jumprelu"),
    (dict(sae_kind="matryoshka", matryoshka_prefixes=(64, 32)), r"matryoshka_prefixes must increase"),
    (dict(sae_kind="matryoshka", matryoshka_prefixes=(32, 2048)), r"matryoshka_prefixes entry must be <= d_hidden"),
    (dict(sae_kind="jumprelu", target_l0=0), r"target_l0 must be in"),
    (dict(sae_kind="relu_l1", sparsity_warmup=1.0), r"sparsity_warmup must be in"),
])
def test_unknown_kinds_and_knobs_of_another_kind_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kh.Config(**kwargs)


def test_a_knob_at_its_default_is_accepted_for_any_kind():
    assert kh.Config(sae_kind="relu_l1", k=50, target_l0=50).sae_kind == "relu_l1"
    assert kh.Config(sae_kind="jumprelu", target_l0=50).training_key() == kh.Config(
        sae_kind="jumprelu", target_l0=50.0).training_key()


def test_a_checkpoint_of_another_kind_is_refused_by_name(tmp_path):
    cfg = kind_config("jumprelu", train_subset=10, ae_epochs=1, clf_epochs=1)
    sae, clf = kh.autoencoder_from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    path = kh.save_checkpoint(tmp_path / "j.pt", cfg, sae, clf)
    stored, loaded = kh.load_checkpoint(path)[:2]
    assert stored.sae_kind == "jumprelu" and type(loaded) is kh.JumpReLUAutoencoder
    assert torch.equal(loaded.threshold, sae.threshold) and torch.equal(loaded.bandwidth, sae.bandwidth)
    with pytest.raises(ValueError, match=r"expected a 'topk' autoencoder, got a 'jumprelu' one"):
        kh.load_checkpoint(path, sae_kind="topk")
    topk = kind_config("topk", train_subset=10, ae_epochs=1, clf_epochs=1)
    (tmp_path / topk.checkpoint_name()).write_bytes(path.read_bytes())  # a file of another kind under its name
    with pytest.raises(ValueError, match=r"expected a 'topk' autoencoder, got a 'jumprelu' one"):
        kh.load_or_train(topk, None, torch.device("cpu"), tmp_path, verbose=False)
    with pytest.raises(ValueError, match=r"sae must be the topk autoencoder cfg describes, got a jumprelu one"):
        kh.save_checkpoint(tmp_path / "x.pt", topk, sae, clf)


def test_stored_configs_survive_a_change_of_another_kinds_default(tmp_path):
    """A checkpoint records every field; the knobs its kind does not read are ignored when it is read back, so a
    later change of such a default (e.g. relu_l1's l1_coef) neither breaks nor retrains a top-k checkpoint."""
    stored = kh.Config().to_dict() | {"l1_coef": 0.001, "matryoshka_prefixes": [3, 2], "target_l0": 7.0}
    assert kh.Config.from_dict(stored).training_key() == kh.Config().training_key()
    own = kh.Config(sae_kind="relu_l1", l1_coef=0.02).to_dict()
    assert kh.Config.from_dict(own).l1_coef == 0.02  # its own knob is kept
    cfg = kind_config("topk", train_subset=10, ae_epochs=1, clf_epochs=1)
    sae, clf = kh.autoencoder_from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    path = kh.save_checkpoint(tmp_path / cfg.checkpoint_name(), cfg, sae, clf)
    payload = torch.load(path, weights_only=True)
    payload["config"]["l1_coef"] = 0.001  # as if written when relu_l1's default was another
    torch.save(payload, path)
    assert kh.load_checkpoint(path)[0].training_key() == cfg.training_key()
