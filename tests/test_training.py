"""ksae.training: training keeps the decoder atoms unit-norm, tied init and AuxK revive dead units,
reproducibility, the classifier's mirrored and shifted views, learning-rate schedules, the validation split
during training, and the graph-safe (fixed-shape) pieces of a training step.

Runs on the CPU: every training run uses a few thousand images and 1-4 epochs, and the module- and
session-scoped fixtures train once and are reused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CPU, TINY, kind_config, state_dicts_equal

import ksae.training
import ksae_helpers as kh

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def test_decoder_atoms_unit_norm_after_training(trained):
    cfg, sae, _, history, w_dec_init = trained
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones(cfg.d_hidden), atol=1e-5), (norms.min(), norms.max())
    # and training really moved the atoms (so the check above is not vacuous)
    assert (sae.W_dec.detach() - w_dec_init).abs().max() > 1e-3
    assert not torch.equal(sae.W_enc, sae.W_dec)
    # the loss went down
    assert history["ae"]["fvu"][-1] < history["ae"]["fvu"][0] < 1.0


# --- dead units: tied init + AuxK revive them ---------------------------------------------------------------
# A short run that makes many units die without the fix: 2000 images, k=20, batches of 64, 4 epochs at a
# constant learning rate, "dead" after 500 images without firing. Measured never-active units on those
# 2000 images (seeds 0..4; this test uses seed 0):
#     plain init (W_enc drawn independently of W_dec), no AuxK:  414 454 433 455 451
#     tied init, no AuxK (aux_k=0):                              286 260 261 298 269
#     tied init + AuxK (aux_k=256):                              173 189 178 167 171
# NB the AuxK effect needs enough steps at a useful learning rate: with the default cosine schedule
# (which decays to 0 within these 4 epochs) AuxK did *not* reduce dead units in this small setting
# (k=20, batch 64, 4 epochs, seeds 0..3: 253/278/273/283 without AuxK vs 293/291/297/310 with it),
# hence a constant autoencoder learning rate here.

DEAD_RUN = dict(train_subset=2000, k=20, batch_size=64, ae_epochs=4, dead_after=500, seed=0, ae_lr_schedule="constant")
AUXK_ON = 256  # Gao et al.'s AuxK setting (the default too: Config.aux_k)


def never_active_units(sae: kh.KSparseAutoencoder, x: torch.Tensor) -> int:
    """Units that fire on none of the images ``x`` (evaluate_autoencoder's definition, on ``x``)."""
    values, indices = kh.encode_dataset(sae, x, CPU)
    active = torch.zeros(sae.d_hidden, dtype=torch.bool)
    active[indices[values > 0]] = True
    return int((~active).sum())


@pytest.fixture(scope="module")
def dead_runs(data):
    x = data.x_train[:DEAD_RUN["train_subset"]]
    out = {}
    for name, aux_k, plain in (("plain", 0, True), ("tied", 0, False), ("tied+auxk", AUXK_ON, False)):
        cfg = kh.Config(**DEAD_RUN, aux_k=aux_k)
        torch.manual_seed(cfg.seed)
        sae = kh.KSparseAutoencoder.from_config(cfg)
        if plain:  # the usual independent initialisation of the encoder
            w = torch.randn(sae.W_enc.shape, generator=torch.Generator().manual_seed(1000))
            with torch.no_grad():
                sae.W_enc.copy_(w / w.norm(dim=1, keepdim=True))
        history = kh.train_autoencoder(sae, x, cfg, CPU)
        out[name] = (never_active_units(sae, x), history)
    return out


def test_auxk_revives_dead_units(dead_runs):
    without, hist_without = dead_runs["tied"]
    with_auxk, hist_with = dead_runs["tied+auxk"]
    print(f"never-active units: plain {dead_runs['plain'][0]}, tied {without}, tied + AuxK {with_auxk}")
    assert without >= 100  # the setting really produces dead units without the fix
    assert with_auxk <= 0.8 * without and without - with_auxk >= 40, (without, with_auxk)
    # the auxiliary loss is off without AuxK and active (dead units exist) with it
    assert all(v == 0.0 for v in hist_without["aux_loss"])
    assert all(v > 0.0 for v in hist_with["aux_loss"][1:])
    # reconstruction is not worse for it
    assert hist_with["fvu"][-1] <= hist_without["fvu"][-1] + 0.01


def test_tied_init_and_auxk_beat_plain_init(dead_runs):
    plain, tied, fixed = dead_runs["plain"][0], dead_runs["tied"][0], dead_runs["tied+auxk"][0]
    assert plain > tied > fixed
    assert fixed <= 0.6 * plain, (plain, fixed)


# --- reproducibility and the classifier's views -------------------------------------------------------------


def test_same_seed_same_weights_different_seed_different_weights(data):
    cfg = kh.Config(**TINY)
    sae_a, clf_a, hist_a = kh.train_models(cfg, data, CPU)
    sae_b, clf_b, hist_b = kh.train_models(kh.Config(**TINY), data, CPU)
    assert state_dicts_equal(sae_a, sae_b) and state_dicts_equal(clf_a, clf_b)
    assert hist_a["ae"] == hist_b["ae"] and hist_a["clf"] == hist_b["clf"]
    sae_c, clf_c, _ = kh.train_models(kh.Config(**{**TINY, "seed": 1}), data, CPU)
    assert not torch.equal(sae_a.W_dec, sae_c.W_dec) and not torch.equal(sae_a.W_enc, sae_c.W_enc)
    assert not torch.equal(clf_a.W1, clf_c.W1)
    assert not torch.equal(clf_a.rest[-1].weight, clf_c.rest[-1].weight)


def _shift_by_loop(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference for shift_images: out[r, c] = image[r - dy, c - dx] where that is inside, else 0."""
    out = torch.zeros_like(image)
    for r in range(28):
        for c in range(28):
            if 0 <= r - dy < 28 and 0 <= c - dx < 28:
                out[r, c] = image[r - dy, c - dx]
    return out


@pytest.mark.parametrize("dy,dx", [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (2, -3), (-27, 5)])
def test_shift_images_moves_pixels_and_fills_zeros(dy, dx, data):
    x = data.x_test[:3]
    moved = kh.shift_images(x, dy, dx)
    assert moved.shape == x.shape
    for image, got in zip(x.reshape(-1, 28, 28), moved.reshape(-1, 28, 28)):
        assert torch.equal(got, _shift_by_loop(image, dy, dx))


def test_shift_images_rejects_shifts_off_the_image():
    with pytest.raises(ValueError, match="image side"):
        kh.shift_images(torch.zeros(1, 784), 28, 0)


def test_classifier_views_are_mirrors_and_shifts(data):
    x = data.x_test[:4]
    views = list(kh.classifier_views(x, kh.Config(clf_shift=2)))
    assert len(views) == 10
    assert torch.equal(views[0], x) and torch.equal(views[1], kh.hflip(x))
    offsets = [(2, 0), (-2, 0), (0, 2), (0, -2)]
    for i, (base, (dy, dx)) in enumerate([(b, o) for b in (x, kh.hflip(x)) for o in offsets]):
        assert torch.equal(views[2 + i], kh.shift_images(base, dy, dx))
    assert len(list(kh.classifier_views(x, kh.Config(clf_shift=0)))) == 2
    assert len(list(kh.classifier_views(x, kh.Config(clf_hflip=False)))) == 5
    only = list(kh.classifier_views(x, kh.Config(clf_shift=0, clf_hflip=False)))
    assert len(only) == 1 and torch.equal(only[0], x)


def test_classifier_trains_on_the_shifted_views(data, monkeypatch):
    seen = []
    original = kh.classifier_views
    monkeypatch.setattr(ksae.training, "classifier_views",
                        lambda x, cfg: seen.append(cfg.clf_shift) or original(x, cfg))
    weights = {}
    for shift in (0, 1):
        cfg = kh.Config(**{**TINY, "clf_shift": shift})
        torch.manual_seed(0)
        sae = kh.KSparseAutoencoder.from_config(cfg)
        clf = kh.SparseCodeClassifier.from_config(cfg)
        x, y = kh.train_subset(data, cfg.train_subset)
        kh.train_classifier(clf, sae, x, y, cfg, torch.device("cpu"))
        weights[shift] = clf.W1.detach().clone()
    assert seen == [0, 1]
    assert not torch.equal(weights[0], weights[1])  # same seed, same batches: only the views differ


@pytest.mark.parametrize("hflip, shift", [(True, 1), (False, 2), (True, 0)])
def test_view_of_matches_classifier_views(hflip, shift):
    cfg = kh.Config(clf_hflip=hflip, clf_shift=shift)
    x = torch.rand(12, 784, generator=torch.Generator().manual_seed(0))
    views = list(kh.classifier_views(x, cfg))
    assert len(views) == kh.n_classifier_views(cfg)
    view = torch.arange(12) % len(views)
    expected = torch.stack([views[v][i] for i, v in enumerate(view.tolist())])
    assert torch.equal(kh.view_of(x, view, cfg), expected)


def test_view_codes_held_or_per_batch_agree():
    cfg = kh.Config(k=7, d_hidden=64, clf_shift=1)
    torch.manual_seed(0)
    sae = kh.KSparseAutoencoder(7, 784, 64)
    x = torch.rand(40, 784, generator=torch.Generator().manual_seed(1))
    held = kh.ViewCodes(sae, x, cfg, torch.device("cpu"))
    lazy = kh.ViewCodes(sae, x, cfg, torch.device("cpu"), budget=held.nbytes - 1)
    assert held.held and not lazy.held and held.nbytes == 10 * 40 * 7 * 8
    assert held.indices.dtype == torch.int32
    view, idx = torch.randint(10, (25,)), torch.randint(40, (25,))
    (hv, hi), (lv, li) = held.batch(view, idx), lazy.batch(view, idx)
    order_h, order_l = hi.long().sort(1), li.sort(1)  # same active set, same values (order may differ)
    assert torch.equal(order_h.values, order_l.values)
    torch.testing.assert_close(hv.gather(1, order_h.indices), lv.gather(1, order_l.indices))
    z = sae.encode(kh.view_of(x[idx], view, cfg))  # independent reference: the dense code
    torch.testing.assert_close(torch.zeros_like(z).scatter(1, hi.long(), hv), z)


def test_view_codes_at_k_1024_stay_within_the_memory_budget():
    cfg = kh.Config(k=1024)
    sae = kh.KSparseAutoencoder(1024, 784, 1024)
    codes = kh.ViewCodes(sae, torch.zeros(60_000, 784), cfg, torch.device("cpu"))
    assert not codes.held and not hasattr(codes, "values")  # 4.9 GB would not be held; only x is kept
    assert kh.ViewCodes(sae, torch.zeros(3, 784), kh.Config(k=50), "cpu").nbytes == 10 * 3 * 1024 * 8
    assert 10 * 60_000 * 50 * 8 <= kh.CODE_MEMORY_BUDGET  # the default k = 50 keeps the fast held path


# --- schedules and the validation split ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", sorted(kh.DECAY_SCHEDULES))
def test_decay_schedules_hold_the_peak_then_fall_linearly_to_zero(schedule):
    total, share = 1000, kh.DECAY_SCHEDULES[schedule]
    start = round(total * (1 - share))
    factors = np.array([kh.lr_factor(schedule, step, total) for step in range(total + 1)])
    assert kh.Config(ae_lr_schedule=schedule, clf_lr_schedule=schedule).ae_lr_schedule == schedule
    assert np.allclose(factors[:start + 1], 1.0) and factors[-1] == 0.0
    assert np.allclose(np.diff(factors[start:]), -1 / (share * total))


def test_set_lr_fills_a_tensor_learning_rate_in_place():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=torch.tensor(1e-3))
    lr = opt.param_groups[0]["lr"]
    kh.set_lr_(opt, 2.5e-4)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(2.5e-4)
    plain = kh.make_adam([p], 1e-3)
    kh.set_lr_(plain, 5e-4)
    assert plain.param_groups[0]["lr"] == 5e-4


def test_training_never_reads_the_test_set(data):
    """Per-epoch monitoring uses the validation split: poisoning the test images changes nothing in training."""
    cfg = kh.Config(**TINY, n_val=500)
    poisoned = kh.FashionMNIST(data.x_train, data.y_train, torch.zeros_like(data.x_test), data.y_test.flip(0))
    _, _, h1 = kh.train_models(cfg, data, torch.device("cpu"))
    _, _, h2 = kh.train_models(cfg, poisoned, torch.device("cpu"))
    assert h1["ae"]["val_fvu"] == h2["ae"]["val_fvu"] and h1["clf"]["val_acc"] == h2["clf"]["val_acc"]
    assert len(h1["ae"]["val_fvu"]) == cfg.ae_epochs and len(h1["clf"]["val_acc"]) == cfg.clf_epochs


# --- graph-safe steps: fixed shapes, no host sync -----------------------------------------------------------


@pytest.mark.parametrize("n_dead", [0, 3, 40, 64])
def test_static_auxk_equals_dynamic_auxk(n_dead):
    """Value and gradients (pre-activations, atoms) of the fixed-shape AuxK equal the dynamic one's, with no,
    few, more than ``aux_k`` and all units dead."""
    torch.manual_seed(n_dead)
    sae = kh.KSparseAutoencoder(k=4, d_input=20, d_hidden=64)
    residual = torch.randn(8, 20)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64)[:n_dead]] = True
    results = []
    for static in (False, True):
        sae.zero_grad()
        pre = torch.randn(8, 64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss = kh.auxk_loss(sae, pre, residual, dead, aux_k=16, graph_safe=static)
        if loss.requires_grad:  # the dynamic loss with no dead unit is a constant 0
            loss.backward()
        grads = [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in (pre, sae.W_dec)]
        results.append((loss.detach(), *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert (results[0][0] > 0) == (n_dead > 0)


def _compiles_whole(fn, *args) -> bool:
    torch._dynamo.reset()
    try:
        torch.compile(fn, fullgraph=True, backend="eager")(*args)
        return True
    except Exception:  # noqa: BLE001 -- dynamo reports a graph break as one of several error types
        return False


@pytest.mark.parametrize("kind", kh.SAE_KINDS)
def test_static_forward_pass_traces_as_one_graph(kind):
    """What a CUDA graph cannot hold (a host sync such as ``int(dead.sum())``, a shape that depends on data)
    also breaks a ``fullgraph`` trace: every kind's static pass must trace whole; top-k's dynamic one must not
    (its AuxK reads the number of dormant units)."""
    cfg = kind_config(kind, d_input=20, aux_k=16) if kind in kh.SAE_KNOBS["aux_k"] else kind_config(kind, d_input=20)
    sae = kh.autoencoder_from_config(cfg).train()
    xb, dead = torch.rand(8, 20), torch.rand(64) < 0.3
    since_fired = torch.zeros(64, dtype=torch.long)

    def context(graph_safe):
        return kh.TrainingContext(cfg, torch.tensor(3.0), 100, graph_safe)

    def static_pass(xb, dead, since_fired):
        terms = sae.training_terms(xb, dead, context(True))
        since_fired.add_(len(xb)).masked_fill_(terms.fired > 0, 0)
        return terms.loss

    assert _compiles_whole(static_pass, xb, dead, since_fired)
    if kind == "topk":
        dynamic_pass = lambda xb, dead: sae.training_terms(xb, dead, context(False)).loss  # noqa: E731
        assert not _compiles_whole(dynamic_pass, xb, dead)
