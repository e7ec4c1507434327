"""ksae.checks.completeness: IG's completeness gap split into the gradient integral and the jumps of the
activation (top-k swaps, threshold crossings; none for ReLU), on hand-built pipelines whose answers are known by
hand, and the path scan against the direct computation.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import PIXEL, TARGET, hand_pipeline

import ksae.checks.completeness
import ksae_helpers as kh

D, C = 784, 10


def gl_step_error(cross, slope_before, n=50):
    """Gauss-Legendre's error on int_0^1 of a slope that is ``slope_before`` up to ``cross``, then 0."""
    nodes, weights = kh.ig_quadrature(n)
    return float(slope_before * (weights[nodes < cross].sum() - cross))


@pytest.mark.parametrize("kind, threshold, jump", [("jumprelu", 0.4, 0.4), ("batchtopk", 0.4, 0.4),
                                                   ("relu_l1", 0.0, 0.0)])
def test_planted_threshold_crossing_is_the_jump(kind, threshold, jump):
    """One unit whose pre-activation rises as 2 alpha crosses its threshold at alpha = threshold / 2: F (3 z)
    jumps by 3 * threshold there (JumpReLU, BatchTopK), and ReLU's crossing at 0 is continuous (no jump)."""
    sae = kh.autoencoder_from_config(kh.Config(sae_kind=kind, d_hidden=2, **(
        {"k": 1} if kind == "batchtopk" else {"target_l0": 1.0} if kind == "jumprelu" else {})))
    pipe = hand_pipeline(bias=[0.0, -1.0], slope=[2.0, 0.0], weights=[3.0, 0.0], k=1, sae=sae)
    with torch.no_grad():
        if kind != "relu_l1":
            pipe.sae.threshold.fill_(threshold)
    comp = kh.completeness_decomposition(pipe, PIXEL, TARGET)
    got = {name: values[0] for name, values in comp["per_image"].items()}
    assert got["gap"] == pytest.approx(3.0 * 2.0)
    assert got["jump_sum"] == pytest.approx(3.0 * jump, abs=1e-2)
    assert got["switches"] == (1 if jump else 0) and got["continuous_changes"] == (0 if jump else 1)
    assert abs(got["ig_error"] + got["jump_sum"]) <= 1e-2 * got["gap"]  # IG misses exactly the jump
    assert kh.count_path_switches(pipe.sae, PIXEL).tolist() == [1 if jump else 0]


def test_planted_swap_is_the_jump_and_ig_misses_exactly_it():
    # units 0 and 1 swap at alpha = 0.3, where both are 0.7 > 0: z jumps from (0.7, 0) to (0, 0.7)
    pipe = hand_pipeline(bias=[1.0, 0.7], slope=[-1.0, 0.0], weights=[1.0, 3.0], k=1)
    comp = kh.completeness_decomposition(pipe, PIXEL, TARGET)
    got = {name: values[0] for name, values in comp["per_image"].items()}
    assert got["gap"] == pytest.approx(3.0 * 0.7 - 1.0)
    assert got["jump_sum"] == pytest.approx(0.7 * (3.0 - 1.0), abs=1e-3)  # F's jump 0.7 -> 2.1
    assert got["smooth"] == pytest.approx(-0.3, abs=1e-3)  # slope -1 up to the swap, 0 after
    assert got["switches"] == 1 and got["continuous_changes"] == 0
    assert abs(got["residual"]) < 1e-9  # F is linear between the scan points away from the swap
    # IG's error is minus the jump plus its own quadrature error on the step in the slope
    _, delta = kh.integrated_gradients(pipe, PIXEL, TARGET, return_convergence_delta=True)
    assert got["ig_error"] == pytest.approx(float(delta[0]), abs=1e-12)
    assert got["ig_error"] == pytest.approx(-1.4 + gl_step_error(0.3, -1.0), abs=1e-3)
    assert kh.count_path_switches(pipe.sae, PIXEL).tolist() == [1]


def test_relu_zero_crossing_and_swap_below_zero_are_continuous():
    # unit 0 crosses 0 at alpha = 0.2 (ReLU kink), then swaps with unit 1 at alpha = 0.5 where both are < 0
    pipe = hand_pipeline(bias=[0.2, -0.3], slope=[-1.0, 0.0], weights=[1.0, 3.0], k=1)
    comp = kh.completeness_decomposition(pipe, PIXEL, TARGET)
    got = {name: values[0] for name, values in comp["per_image"].items()}
    assert got["switches"] == 0 and got["continuous_changes"] == 1
    assert got["jump_sum"] == 0.0
    assert got["smooth"] == pytest.approx(got["gap"], abs=1e-3) and got["gap"] == pytest.approx(-0.2)
    assert kh.count_path_switches(pipe.sae, PIXEL).tolist() == [0]


def test_two_swaps_inside_one_interval_both_count():
    # units 0, 1 fall below units 2, 3 between alpha = 0.29998 and 0.30001: one scan interval, two swaps
    pipe = hand_pipeline(bias=[1.0, 1.0 + 1e-5, 0.7, 0.7 + 2e-5], slope=[-1.0, -1.0, 0.0, 0.0],
                         weights=[1.0, 2.0, 3.0, 5.0], k=2)
    comp = kh.completeness_decomposition(pipe, PIXEL, TARGET)
    got = {name: values[0] for name, values in comp["per_image"].items()}
    assert got["switches"] == 2
    assert got["jump_sum"] == pytest.approx(0.7 * (3 + 5 - 1 - 2), abs=2e-3)
    assert kh.count_path_switches(pipe.sae, PIXEL).tolist() == [2]


def test_ig_completeness_scan_equals_pixel_space_ig():
    g = torch.Generator().manual_seed(0)
    sae = kh.KSparseAutoencoder(k=4, d_hidden=32).double()
    clf = kh.SparseCodeClassifier(d_hidden=32, hidden=(16, 8), n_classes=3).double()
    pipe = kh.SparseCodePipeline(sae, clf).eval()
    x = torch.rand(6, 784, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    comp = kh.ig_completeness(pipe, x, target, n_steps_list=(16, 50), methods=("gausslegendre", "riemann_left"))
    with torch.no_grad():
        gap = (pipe(x) - pipe(torch.zeros_like(x))).gather(1, target[:, None])[:, 0]
    for method in ("gausslegendre", "riemann_left"):
        for n in (16, 50):
            attr = kh.integrated_gradients(pipe, x, target, n_steps=n, method=method)
            rel = ((attr.sum(1) - gap).abs() / gap.abs()).detach().numpy()
            assert comp["table"][method][str(n)]["median_rel_error"] == pytest.approx(np.median(rel), rel=1e-8)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_points": 100}, "n_points must be >= 1000"),
    ({"tolerance": 0.0}, "tolerance must be in"),
    ({"n_steps": 0}, "n_steps must be >= 1"),
    ({"method": "simpson"}, "method must be one of"),
    ({"output": "margin"}, "output must be one of"),
])
def test_completeness_decomposition_rejects_bad_input(kwargs, match):
    pipe = hand_pipeline(bias=[1.0, 0.7], slope=[-1.0, 0.0], weights=[1.0, 3.0], k=1)
    with pytest.raises(ValueError, match=match):
        kh.completeness_decomposition(pipe, PIXEL, TARGET, **kwargs)
    with pytest.raises(ValueError, match="SparseCodePipeline"):
        kh.completeness_decomposition(pipe.clf, PIXEL, TARGET)


class Smooth(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W1 = nn.Parameter(torch.randn(32, D, generator=g, dtype=torch.float64) * 0.05)
        self.W2 = nn.Parameter(torch.randn(C, 32, generator=g, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(x @ self.W1.T) @ self.W2.T


class Step(Smooth):
    """Smooth plus a planted jump: +3 on every logit once the mean pixel passes 0.2."""

    def forward(self, x):
        return super().forward(x) + 3.0 * (x.mean(1, keepdim=True) > 0.2).to(x.dtype)


def test_completeness_is_exact_on_a_smooth_model_and_flags_a_planted_jump(images):
    x, target = images[:20], torch.zeros(20, dtype=torch.long)
    smooth = kh.ig_completeness(Smooth().eval(), x, target, n_steps_list=(50,), methods=("gausslegendre",))
    entry = smooth["table"]["gausslegendre"]["50"]  # keys are str, in memory as in the JSON summary
    assert entry["median_rel_error"] < 1e-6 and entry["share_within_tolerance"] == 1.0
    step = kh.ig_completeness(Step().eval(), x, target, n_steps_list=(50, 500), methods=("gausslegendre",))
    for n in (50, 500):  # more steps do not help: IG never sees the jump
        assert step["table"]["gausslegendre"][str(n)]["share_within_tolerance"] < 0.2


@pytest.mark.parametrize("n_points", [1, 2, 9, 50, 257])
def test_path_top_k_finds_the_same_sets_as_topk_at_every_point(n_points):
    """Straight paths whose top-k sets change many times (k = 4 of 32 units): the strided search with
    re-checks between differing sets gives every point's exact set and ReLU'd values."""
    sae = kh.KSparseAutoencoder(k=4, d_hidden=32)
    g = torch.Generator().manual_seed(n_points)
    c, d = torch.randn(3, 1, 32, generator=g), 3 * torch.randn(3, 1, 32, generator=g)
    alphas = torch.rand(n_points, generator=g).sort().values
    pre = c + alphas[None, :, None] * d  # [3, S, 32]
    values, indices = sae.path_code(pre)
    positive = values.min(-1).values > 0  # what _topk_changes reads off the values
    ref_values, ref_indices = torch.topk(pre, 4, dim=-1)
    assert torch.equal(indices.sort(-1).values, ref_indices.sort(-1).values)
    assert torch.equal(values.sort(-1).values, F.relu(ref_values).sort(-1).values)
    assert torch.equal(positive, ref_values.min(-1).values > 0)
    if n_points == 257:  # the sets do change along these paths, so the re-checks were needed
        changed = (ref_indices.sort(-1).values[:, 1:] != ref_indices.sort(-1).values[:, :-1]).any(-1)
        assert changed.sum() >= 3


def test_scan_path_returns_points_in_the_order_given(small):
    """Unsorted alphas (several quadrature rules' nodes) come back in the order asked for."""
    pipe, x, y = small["pipe"], small["x"][:3], small["y"][:3]
    alphas = torch.tensor([0.7, 0.1, 1.0, 0.0, 0.4])
    values, slopes = ksae.checks.completeness._scan_path(pipe, x, y, alphas, "logit", 64)
    for j, a in enumerate(alphas.tolist()):
        one_v, one_s = ksae.checks.completeness._scan_path(pipe, x, y, torch.tensor([a]), "logit", 64)
        torch.testing.assert_close(values[:, j], one_v[:, 0])
        torch.testing.assert_close(slopes[:, j], one_s[:, 0])


def _slope_reference(pipe, x, target, alphas):
    """dF/dalpha of the target logit on the straight path, by autograd in pixel space at every point."""
    out = torch.empty(len(x), len(alphas), dtype=x.dtype)
    for j, a in enumerate(alphas.tolist()):
        point = (a * x).requires_grad_(True)
        logit = pipe(point).gather(1, target[:, None]).sum()
        out[:, j] = (torch.autograd.grad(logit, point)[0] * x).sum(1)
    return out


@pytest.mark.parametrize("rest", ["relu", "tanh", "training", "one dropout training", "probability"])
def test_path_slopes_share_a_gradient_only_within_an_activation_pattern(rest, monkeypatch):
    # for a logit of a ReLU classifier, points with one activation pattern have one slope: it is computed (a
    # vector-Jacobian product through the stack) once per pattern change along each path; any other classifier
    # or output takes autograd's gradient at every point
    torch.manual_seed(1)
    sae = kh.KSparseAutoencoder(k=4, d_hidden=32).double()
    clf = kh.SparseCodeClassifier(d_hidden=32, hidden=(16, 8), n_classes=3).double()
    if rest == "tanh":
        clf.rest[0] = torch.nn.Tanh()
    pipe = kh.SparseCodePipeline(sae, clf).eval()
    if rest == "one dropout training":
        clf.rest[4].train()
        clf.rest[4].p = 0.0
    if rest == "training":
        clf.train()
        for layer in clf.rest:
            if isinstance(layer, torch.nn.Dropout):
                layer.p = 0.0  # training mode, but a deterministic reference below
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 784, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    alphas = torch.linspace(0, 1, 200, dtype=torch.float64)
    calls, shared = [], []
    forward_sparse, relu_stack_slopes = clf.forward_sparse, ksae.checks.completeness._relu_stack_slopes
    monkeypatch.setattr(clf, "forward_sparse", lambda v, i: (calls.append(len(v)), forward_sparse(v, i))[1])
    monkeypatch.setattr(ksae.checks.completeness, "_relu_stack_slopes",
                        lambda c, i, *more: (shared.append(len(i)), relu_stack_slopes(c, i, *more))[1])
    output = "probability" if rest == "probability" else "logit"
    values, slopes = ksae.checks.completeness._scan_path(pipe, x, target, alphas, output, 10_000)
    scan_calls = list(calls)  # the scan's forward passes (not the reference's below)
    if output == "logit":
        torch.testing.assert_close(slopes, _slope_reference(pipe, x, target, alphas), rtol=1e-9, atol=1e-9)
        with torch.no_grad():
            torch.testing.assert_close(values, torch.stack([pipe(a * x).gather(1, target[:, None])[:, 0]
                                                            for a in alphas.tolist()], 1))
    if rest == "relu":  # once per pattern, not per point, and no autograd pass
        assert scan_calls == [] and len(shared) == 1 and len(x) < shared[0] < len(x) * len(alphas) // 2
    else:
        assert scan_calls == [len(x) * len(alphas)] and shared == []


def test_decomposition_table_over_steps(small):
    dec, pipe, x, y = small["dec"], small["pipe"], small["x"], small["y"]
    gl, trapezoid = dec["table"]["gausslegendre"], dec["table"]["riemann_trapezoid"]
    assert sorted(gl, key=int) == ["8", "50", "200"]  # str keys, in memory as in the JSON summary
    assert sorted(trapezoid, key=int) == ["17", "33", "65", "129", "257", "513", "1025"]
    gap = np.abs(np.array(dec["per_image"]["gap"]))
    for table, method, n in ((gl, "gausslegendre", 200), (trapezoid, "riemann_trapezoid", 33)):
        _, delta = kh.integrated_gradients(pipe, x, y, n_steps=n, method=method, return_convergence_delta=True)
        rel = np.abs(delta.detach().double().numpy()) / gap
        assert table[str(n)]["median_rel_error"] == pytest.approx(np.median(rel), rel=1e-4)
        mismatch = np.abs(delta.detach().double().numpy() + np.array(dec["per_image"]["jump_sum"])) / gap
        assert table[str(n)]["share_within_tolerance"] == pytest.approx((mismatch <= 0.01).mean())
    assert gl["50"]["median_mismatch"] == pytest.approx(np.median(dec["per_image"]["mismatch"]))
    # the trapezoid on every scan point is the scan's own gradient integral: its mismatch is the residual
    assert trapezoid["1025"]["median_mismatch"] == pytest.approx(
        np.median(np.abs(dec["per_image"]["residual"]) / gap), abs=1e-6)
