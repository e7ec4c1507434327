"""Faithfulness under three substrates (zero, blur, ROAD), MoRF and LeRF, and the x-input methods.

References are built independently of the code under test: images are assembled pixel by pixel with
numpy masks, the ROAD imputation is a direct scipy.sparse solve written from the paper's definition,
the blur a numpy outer product of a hand-written Gaussian, and the x-input maps Captum's.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import ksae.checks.deletion
import ksae.checks.substrates
import ksae_helpers as kh

D, C, SIDE = 784, 10, 28
DT = torch.float64


class Linear(nn.Module):
    """``logits = x @ W.T``: the true pixel contributions to class c are ``W[c] * x``."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(C, D, generator=g, dtype=DT) * 0.05)

    def forward(self, x):
        return x @ self.W.T


class Wrapped(nn.Module):
    """The same function as ``model`` but without ``affine_split`` (forces full forward passes)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def make_pipeline(seed=0):
    torch.manual_seed(seed)
    cfg = kh.Config(k=8, d_hidden=64, clf_hidden=(32, 16))
    sae, clf = kh.KSparseAutoencoder.from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    return kh.SparseCodePipeline(sae, clf).eval()


def object_images(n, seed=0, dtype=torch.float32):
    """Hand-made images: a bright random rectangle (the object) on a black background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, SIDE, SIDE, dtype=dtype)
    for i in range(n):
        r0, c0 = torch.randint(2, 10, (2,), generator=g).tolist()
        h, w = torch.randint(8, 16, (2,), generator=g).tolist()
        x[i, r0:r0 + h, c0:c0 + w] = 0.3 + 0.7 * torch.rand(h, w, generator=g, dtype=dtype)
    return x.reshape(n, D)


def road_direct(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's imputation by a direct sparse solve: every removed pixel equals the weighted mean of its
    in-image neighbours (1/6 direct, 1/12 diagonal, weights renormalised over the in-image ones)."""
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    idx = np.flatnonzero(removed)
    var = -np.ones(D, dtype=int)
    var[idx] = np.arange(len(idx))
    a, b = lil_matrix((len(idx), len(idx))), np.zeros(len(idx))
    for n, i in enumerate(idx):
        r, c = divmod(i, SIDE)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr, dc) == (0, 0) or not (0 <= rr < SIDE and 0 <= cc < SIDE):
                    continue
                w = 1 / 12 if dr and dc else 1 / 6
                a[n, n] += w
                j = rr * SIDE + cc
                if var[j] >= 0:
                    a[n, var[j]] -= w
                else:
                    b[n] += w * img[j]
    out = img.copy()
    out[idx] = spsolve(a.tocsc(), b)
    return out


def images_after_removal(x, order, t, step, fill):
    """Reference image (numpy) after removing the first ``t * step`` pixels of ``order`` -> ``fill``."""
    out = x.copy()
    gone = order[: t * step]
    out[gone] = fill[gone]
    return out


# ------------------------------------------------------------------------------------------------
# x-input methods
# ------------------------------------------------------------------------------------------------


def test_input_x_gradient_equals_captum_and_input_times_smoothgrad():
    from captum.attr import InputXGradient

    pipe = make_pipeline().to(DT)
    x = object_images(4, dtype=DT)
    target = torch.tensor([0, 3, 5, 9])
    ours = kh.input_x_gradient(pipe, x, target)
    ref = InputXGradient(pipe).attribute(x.clone().requires_grad_(True), target=target).detach()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    sg = kh.smoothgrad(pipe, x.reshape(4, SIDE, SIDE), target, nt_samples=3, seed=4)
    ixsg = kh.input_x_smoothgrad(pipe, x.reshape(4, SIDE, SIDE), target, nt_samples=3, seed=4)
    assert ixsg.shape == (4, SIDE, SIDE)
    torch.testing.assert_close(ixsg, x.reshape(4, SIDE, SIDE) * sg, rtol=0, atol=0)
    assert (ixsg.reshape(4, D)[x == 0] == 0).all()  # background pixels get nothing: the x-input effect


def test_x_input_methods_reject_bad_inputs():
    pipe = make_pipeline()
    with pytest.raises(ValueError, match="shape"):
        kh.input_x_gradient(pipe, torch.rand(2, 700), 0)
    with pytest.raises(ValueError, match="nt_samples"):
        kh.input_x_smoothgrad(pipe, torch.rand(2, D), 0, nt_samples=0)


# ------------------------------------------------------------------------------------------------
# Substrates
# ------------------------------------------------------------------------------------------------


def test_blur_of_a_point_is_the_gaussian_and_a_constant_stays_constant():
    sigma = 1.5
    x = torch.zeros(2, D, dtype=DT)
    x[0, 14 * SIDE + 13] = 1.0
    x[1] = 0.4
    out = kh.blur_images(x, sigma).numpy()
    radius = int(np.ceil(kh.BLUR_TRUNCATE * sigma))
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    g /= g.sum()
    expected = np.zeros((SIDE, SIDE))
    expected[14 - radius:14 + radius + 1, 13 - radius:13 + radius + 1] = np.outer(g, g)
    np.testing.assert_allclose(out[0].reshape(SIDE, SIDE), expected, atol=1e-12)
    np.testing.assert_allclose(out[1], 0.4, atol=1e-12)


def test_road_imputation_matches_a_direct_sparse_solve():
    x = object_images(3, seed=2, dtype=DT)
    g = torch.Generator().manual_seed(0)
    removed = torch.rand(3, D, generator=g) < torch.tensor([[0.3], [0.7], [0.97]])  # sparse holes to nearly all
    removed[0, :SIDE] = True  # a whole border row: renormalised weights
    ours = kh.road_impute(x, removed, noise=0.0, tol=1e-12)
    for i in range(3):
        ref = road_direct(x[i].numpy(), removed[i].numpy())
        np.testing.assert_allclose(ours[i].numpy(), ref, atol=1e-9)
    # A warm start changes nothing but the iterations; kept pixels are untouched.
    warm = kh.road_impute(x, removed, noise=0.0, tol=1e-12, init=torch.rand(3, D, dtype=DT))
    np.testing.assert_allclose(warm.numpy(), ours.numpy(), atol=1e-9)
    assert torch.equal(ours[~removed], x[~removed])


def test_road_solver_reading_convergence_less_often_reaches_the_same_solution():
    # CUDA reads convergence every ROAD_CHECK_EVERY_CUDA iterations (each read waits for the GPU); rows then
    # iterate a few steps past convergence, which only moves them closer to the solution
    x = object_images(40, seed=3, dtype=DT)
    removed = torch.rand(40, D, generator=torch.Generator().manual_seed(1)) < torch.linspace(0.05, 0.95, 40)[:, None]
    free = removed.to(DT)
    kept, start = x * (1 - free), torch.zeros_like(free)
    exact = torch.stack([torch.as_tensor(road_direct(x[i].numpy(), removed[i].numpy())) for i in range(40)])
    each = ksae.checks.substrates._road_cg(kept, free, start, 1e-6, 1000, check_every=1)
    sparse = ksae.checks.substrates._road_cg(kept, free, start, 1e-6, 1000, check_every=kh.ROAD_CHECK_EVERY_CUDA)
    assert kh.ROAD_CHECK_EVERY_CUDA > 1
    err_each, err_sparse = ((each - exact) * free).abs().amax(), ((sparse - exact) * free).abs().amax()
    assert err_sparse <= err_each and err_each < 1e-4 and not torch.equal(each, sparse)


def test_road_chunks_solve_the_same_system():
    # CUDA solves ROAD_CHUNK_CUDA images together (launch-bound there), the CPU ROAD_CHUNK (cache-bound): the
    # chunking changes which rows iterate together, never the solution
    x = object_images(12, seed=4, dtype=DT)
    removed = torch.rand(12, D, generator=torch.Generator().manual_seed(2)) < torch.linspace(0.1, 0.9, 12)[:, None]
    exact = torch.stack([torch.as_tensor(road_direct(x[i].numpy(), removed[i].numpy())) for i in range(12)])
    for chunk in (1, 5, 12, 100):
        out = kh.road_impute(x, removed, noise=0.0, tol=1e-12, chunk=chunk)
        np.testing.assert_allclose(out.numpy(), exact.numpy(), atol=1e-9)
    assert kh.ROAD_CHUNK_CUDA > kh.ROAD_CHUNK
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="chunk must be"):
            kh.road_impute(x, removed, chunk=bad)


def test_road_hand_cases_and_noise():
    x = torch.zeros(2, D, dtype=DT)
    x[0] = torch.arange(D, dtype=DT) / D
    removed = torch.zeros(2, D, dtype=torch.bool)
    removed[0, 0] = True  # a corner: neighbours right (1/6), below (1/6), diagonal (1/12), renormalised
    removed[0, 5 * SIDE + 5] = True  # an interior pixel surrounded by kept ones
    removed[1] = True  # nothing kept: the minimum-norm solution 0
    out = kh.road_impute(x, removed, noise=0.0, tol=1e-13)
    corner = (x[0, 1] / 6 + x[0, SIDE] / 6 + x[0, SIDE + 1] / 12) / (5 / 12)
    assert float(out[0, 0]) == pytest.approx(float(corner), abs=1e-12)
    centre = 5 * SIDE + 5
    nb = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    mean = sum(x[0, centre + dr * SIDE + dc] * (1 / 12 if dr and dc else 1 / 6) for dr, dc in nb)
    assert float(out[0, centre]) == pytest.approx(float(mean), abs=1e-12)
    assert (out[1] == 0).all()
    noisy = kh.road_impute(x, removed, noise=0.05, seed=3, tol=1e-13)
    assert float((noisy[1] - out[1]).std()) == pytest.approx(0.05, rel=0.1)
    assert torch.equal(noisy[~removed], x[~removed])
    assert torch.equal(noisy, kh.road_impute(x, removed, noise=0.05, seed=3, tol=1e-13))  # seeded


# ------------------------------------------------------------------------------------------------
# Orders and curves
# ------------------------------------------------------------------------------------------------


def test_removal_order_is_morf_and_breaks_ties_at_random():
    scores = torch.tensor([[0.1, 0.9, -0.5, 0.3]])
    assert kh.removal_order(scores).tolist() == [[1, 3, 0, 2]]
    assert kh.removal_order(scores).flip(1).tolist() == [[2, 0, 3, 1]]  # LeRF
    flat = torch.zeros(1, D)
    a, b = kh.removal_order(flat, seed=0), kh.removal_order(flat, seed=1)
    assert sorted(a[0].tolist()) == list(range(D))
    assert not torch.equal(a, b) and not torch.equal(a[0], torch.arange(D))
    assert torch.equal(a, kh.removal_order(flat, seed=0))


@pytest.mark.parametrize("substrate", ["zero", "blur"])
def test_curves_match_images_built_by_hand(substrate):
    pipe = make_pipeline()
    x, step = object_images(6), 112
    target = torch.arange(6)
    orders = torch.stack([kh.removal_order(torch.randn(6, D, generator=torch.Generator().manual_seed(s)))
                          for s in range(2)])
    curves = kh.removal_curves(pipe, x, target, orders, substrate, pixels_per_step=step)  # incremental path
    assert curves.shape == (2, 6, D // step + 1)
    fill = np.zeros((6, D), np.float32) if substrate == "zero" else kh.blur_images(x).numpy()
    for m in range(2):
        for i in range(6):
            imgs = np.stack([images_after_removal(x[i].numpy(), orders[m, i].numpy(), t, step, fill[i])
                             for t in range(D // step + 1)])
            ref = pipe(torch.from_numpy(imgs)).softmax(1)[:, i]
            torch.testing.assert_close(curves[m, i], ref, rtol=0, atol=2e-5)
    full = kh.removal_curves(Wrapped(pipe).eval(), x, target, orders, substrate, pixels_per_step=step)
    torch.testing.assert_close(curves, full, rtol=0, atol=2e-5)


def test_incremental_curves_skip_unchanged_rows_exactly():
    """Background-first orders (intensity LeRF) change nothing under the zero substrate for many steps: those
    rows keep their previous point (the head skips them) and every point still equals a full forward pass."""
    pipe = make_pipeline(1)
    x, step = object_images(5, seed=3), 28
    target = torch.arange(5)
    background_first = kh.removal_order(x, seed=0).flip(-1)  # least intense first: black pixels lead
    orders = torch.stack([background_first, kh.removal_order(x, seed=1)])  # with an order that moves every step
    curves = kh.removal_curves(pipe, x, target, orders, "zero", pixels_per_step=step)
    n_black = (x == 0).sum(1)
    unchanged_steps = int(n_black.min()) // step
    assert unchanged_steps >= 10  # the skip is exercised for at least ten steps of every image
    assert torch.equal(curves[0, :, :unchanged_steps + 1],
                       curves[0, :, :1].expand(-1, unchanged_steps + 1))  # exactly the image's point
    full = kh.removal_curves(Wrapped(pipe).eval(), x, target, orders, "zero", pixels_per_step=step)
    torch.testing.assert_close(curves, full, rtol=0, atol=2e-5)
    assert not torch.allclose(curves[1, :, 1], curves[1, :, 0])  # the object-first order moved at step 1


def test_road_curves_are_the_model_on_imputed_images():
    model = Linear()
    x, step = object_images(4, dtype=DT), 196
    target = torch.tensor([1, 2, 3, 4])
    orders = kh.removal_order(torch.randn(4, D, generator=torch.Generator().manual_seed(0), dtype=DT))[None]
    curves = kh.removal_curves(model, x, target, orders, "road", pixels_per_step=step, road_noise=0.0, road_tol=1e-9)
    for t in range(1, D // step):
        removed = torch.zeros(4, D, dtype=torch.bool).scatter_(1, orders[0, :, :t * step], True)
        ref = torch.stack([torch.from_numpy(road_direct(x[i].numpy(), removed[i].numpy())) for i in range(4)])
        expected = model(ref).softmax(1).gather(1, target[:, None])[:, 0]
        torch.testing.assert_close(curves[0, :, t], expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(curves[0, :, -1], model(torch.zeros(4, D, dtype=DT)).softmax(1)[range(4), target])


def test_insertion_is_lerf_deletion_read_backwards():
    """Insertion of the top n pixels into the start image (built here directly) equals deleting the rest."""
    model = Linear()
    x, step = object_images(5, dtype=DT), 28
    target = model(x).argmax(1)
    scores = model.W.detach()[target] * x
    morf = kh.removal_order(scores)
    lerf = kh.removal_curves(model, x, target, morf.flip(1)[None], "blur", step)[0]
    fill = kh.blur_images(x)
    for t in (0, 3, 17, 28):
        inserted = fill.clone()
        top = morf[:, :t * step]
        inserted.scatter_(1, top, x.gather(1, top))
        prob = model(inserted).softmax(1).gather(1, target[:, None])[:, 0]
        torch.testing.assert_close(lerf[:, D // step - t], prob, rtol=0, atol=1e-12)


def test_true_contributions_beat_random_and_their_negation_loses_on_every_substrate(monkeypatch):
    """On a linear model the exact contributions ``W[c] * x`` are the most faithful map: MoRF drops the
    target fastest, LeRF slowest, on every substrate; the negated map reverses MoRF and LeRF, but its
    |value| ranking is the true one's."""
    model = Linear()
    x = object_images(40, dtype=DT)
    y = model(x).argmax(1)
    truth = model.W.detach()[y] * x
    res = kh.faithfulness_suite(model, x, y, {"integrated": truth, "simple": -truth}, n_subset=20)
    json.dumps(res)  # JSON-able, bounded (no per-image arrays)
    assert res["substrates"]["zero"]["n_images"] == 40 and res["substrates"]["road"]["n_images"] == 20
    for sub in kh.SUBSTRATES:
        e = res["substrates"][sub]["orderings"]
        good, bad = e["integrated/signed"], e["simple/signed"]
        assert good["gap"]["mean"] > e["random"]["gap"]["mean"] + 0.05
        assert good["vs_random"]["beats"] and good["vs_random"]["p_value"] < 0.05
        assert bad["gap"]["mean"] == pytest.approx(-good["gap"]["mean"], abs=0.05)  # the order reversed
        assert not bad["vs_random"]["beats"]
        assert e["simple/abs"]["gap"]["mean"] == pytest.approx(e["integrated/abs"]["gap"]["mean"], abs=1e-12)
        assert res["substrates"][sub]["ranking"]["signed"][0] == "integrated/signed"
        assert e["random"]["gap"]["mean"] == pytest.approx(0.0, abs=0.05)  # the null: no order, no gap
        assert e["random"]["vs_random"]["p_value"] == 1.0
        assert good["insertion_auc"] == good["lerf_auc"]
        step = 28 if sub != "road" else kh.ROAD_PIXELS_PER_STEP
        assert res["substrates"][sub]["pixels_per_step"] == step
        assert len(good["mean_curves"]["morf"]) == D // step + 1
    fig = kh.plot_faithfulness(res)
    assert len(fig.axes) == 3 * len(kh.SUBSTRATES)
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes[::3])
    assert "*" in fig.axes[2].get_yticklabels()[0].get_text()  # the winner is marked as beating random
    v = res["verdicts"]
    assert v["integrated/signed"]["beats_random_everywhere"] and not v["simple/signed"]["beats_random_everywhere"]
    assert set(v) == {"integrated/signed", "integrated/abs", "simple/signed", "simple/abs"}


def test_controls_and_orderings():
    x = object_images(3)
    controls = kh.control_maps(x, seed=0)
    assert list(controls) == ["random", "random_object", "intensity", "edges"]
    obj = x > 0
    order = kh.removal_order(controls["random_object"])
    n_obj = obj.sum(1)
    for i in range(3):  # object pixels come first, then the background
        assert obj[i, order[i, :n_obj[i]]].all() and not obj[i, order[i, n_obj[i]:]].any()
    orderings = kh.faithfulness_orderings({"a": x.abs(), "b": x - 0.5}, x)
    assert list(orderings) == ["a/signed", "b/signed", "b/abs", *controls]  # |value| only where it differs
    assert torch.equal(orderings["b/abs"]["scores"], (x - 0.5).abs())


def test_balanced_subset():
    y = torch.arange(10).repeat_interleave(torch.tensor([50, 40, 30, 30, 30, 30, 30, 30, 30, 30]))
    idx = kh.balanced_subset(y, 205, seed=1)
    counts = torch.bincount(y[idx], minlength=10)
    assert len(idx) == 205 and len(idx.unique()) == 205 and counts.max() - counts.min() <= 1
    assert torch.equal(idx, idx.sort().values) and torch.equal(idx, kh.balanced_subset(y, 205, seed=1))
    assert not torch.equal(idx, kh.balanced_subset(y, 205, seed=2))
    # Beyond the smallest classes' size, those are taken whole and the rest comes from the larger ones.
    assert torch.bincount(y[kh.balanced_subset(y, 305)], minlength=10).tolist() == [33, 32] + [30] * 8
    assert torch.equal(kh.balanced_subset(y, 10_000), torch.arange(len(y)))


# ------------------------------------------------------------------------------------------------
# Bad input -> ValueError saying what was expected and what came
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors():
    x, model = object_images(2), make_pipeline()
    orders = kh.removal_order(torch.rand(2, D))[None]
    removed = torch.zeros(2, D, dtype=torch.bool)
    cases = [
        (lambda: kh.blur_images(x, sigma=0), "sigma must be in"),
        (lambda: kh.blur_images(torch.rand(2, 5)), "shape"),
        (lambda: kh.road_impute(x, removed.float()), "removed must be a bool tensor"),
        (lambda: kh.road_impute(x, removed[:1]), r"removed must have the images' shape \[2, 784\]"),
        (lambda: kh.road_impute(x, removed, noise=-1), "noise must be in"),
        (lambda: kh.road_impute(x, removed, init=torch.zeros(3, D)), r"init must be a tensor of shape \[2, 784\]"),
        (lambda: kh.balanced_subset(torch.rand(5), 2), "y must be a 1-D integer tensor"),
        (lambda: kh.balanced_subset(torch.arange(5), 0), "n must be >= 1"),
        (lambda: kh.removal_curves(model, x, 0, orders, "noise"), "substrate must be one of"),
        (lambda: kh.removal_curves(model, x, 0, orders, pixels_per_step=30), "must divide the 784"),
        (lambda: kh.removal_curves(model, x, 0, orders[0]), r"orders must be a tensor of shape \[M, 2, 784\]"),
        (lambda: kh.removal_curves(model, x, 0, torch.zeros_like(orders)), "permutation"),
        (lambda: kh.removal_curves(model, x, 11, orders), "target classes must be in"),
        (lambda: kh.faithfulness_suite(model, x, torch.zeros(2, dtype=torch.long), {"a": x}, substrates=["x"]),
         "substrates must be"),
        (lambda: kh.faithfulness_suite(model, x, torch.zeros(2, dtype=torch.long), {"a": x}, n_subset=0),
         "n_subset must be >= 1"),
        (lambda: kh.faithfulness_orderings({}, x), "maps must be a non-empty dict"),
        (lambda: kh.faithfulness_orderings({"a": x[:1]}, x), r"maps\['a'\] must be a tensor holding 2 maps"),
        (lambda: kh.plot_faithfulness({"substrates": {}}), "faithfulness_suite result"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message):
            fn()
