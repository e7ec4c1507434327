"""ksae.checks.deletion: deletion and insertion curves under three substrates (zero, blur, ROAD), MoRF and
LeRF, the control maps and orderings, the faithfulness suite, and object focus, on models whose answers are
known (a linear model's exact contributions). Reference images are assembled pixel by pixel with numpy
masks. The cross-check against Quantus is ``test_deletion_quantus.py``.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import DT, D, N, make_pipeline, object_images, road_direct

import ksae_helpers as kh

C = 10


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


def images_after_removal(x, order, t, step, fill):
    """Reference image (numpy) after removing the first ``t * step`` pixels of ``order`` -> ``fill``."""
    out = x.copy()
    gone = order[: t * step]
    out[gone] = fill[gone]
    return out


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


def test_deletion_auc_of_true_weights_beats_random(images):
    model = Linear().eval()
    target = model(images).argmax(1)
    perfect = model.W.detach()[target] * images  # exact contribution of each pixel to the target logit
    curve = kh.perturbation_curves(model, images, target, perfect)
    scores = torch.rand(images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    random = kh.perturbation_curves(model, images, target, scores)
    auc_perfect, auc_random = kh.curve_auc(curve), kh.curve_auc(random)
    assert auc_perfect.mean() < auc_random.mean() - 0.1
    assert (auc_perfect < auc_random).mean() > 0.95
    # Insertion: the perfect order also wins.
    ins = kh.curve_auc(kh.perturbation_curves(model, images, target, perfect, mode="insertion"))
    ins_random = kh.curve_auc(kh.perturbation_curves(model, images, target, scores, mode="insertion"))
    assert ins.mean() > ins_random.mean() + 0.1


def test_constant_map_equals_random_in_expectation(images):
    model = Linear().eval()
    target = model(images).argmax(1)
    g = torch.Generator().manual_seed(0)
    constant, random = [], []
    for seed in range(8):  # ties broken at random: a constant map is a random order, seed after seed
        constant.append(kh.curve_auc(kh.perturbation_curves(model, images, target, torch.ones_like(images),
                                                            seed=seed)).mean())
        scores = torch.rand(images.shape, generator=g, dtype=torch.float64)
        random.append(kh.curve_auc(kh.perturbation_curves(model, images, target, scores, seed=100 + seed)).mean())
    assert abs(np.mean(constant) - np.mean(random)) < 3 * np.std(random) / np.sqrt(8) + 1e-3
    # ... and not a raster scan: a constant map with a fixed tie-break seed differs from one with another seed
    assert constant[0] != constant[1]


def test_curves_start_and_end_where_they_should(images):
    model = Linear().eval()
    target = model(images).argmax(1)
    scores = torch.rand(images.shape, dtype=torch.float64)
    dele = kh.perturbation_curves(model, images, target, scores)
    ins = kh.perturbation_curves(model, images, target, scores, mode="insertion")
    p_full = model(images).softmax(1).gather(1, target[:, None])[:, 0]
    p_zero = model(torch.zeros_like(images)).softmax(1).gather(1, target[:, None])[:, 0]
    assert dele.shape == (N, 29)
    torch.testing.assert_close(dele[:, 0], p_full)
    torch.testing.assert_close(dele[:, -1], p_zero)
    torch.testing.assert_close(ins[:, 0], p_zero)
    torch.testing.assert_close(ins[:, -1], p_full)
    with pytest.raises(ValueError, match="deletion"):
        kh.perturbation_curves(model, images, target, scores, mode="sideways")


def test_object_focus_counts_attribution_on_object_pixels():
    x = torch.zeros(4, 784)
    x[:, :392] = 1.0  # object = first half
    on_object = torch.zeros(4, 784)
    on_object[:, :10] = 1.0
    uniform = torch.ones(4, 784)
    focus = kh.object_focus({"on": on_object, "uniform": uniform}, x)
    assert focus["on"]["mean"] == pytest.approx(1.0)
    assert focus["uniform"]["mean"] == pytest.approx(0.5)
    assert focus["object_pixel_share"]["mean"] == pytest.approx(0.5)


# --- bad input -> ValueError saying what was expected and what came -----------------------------------------


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
