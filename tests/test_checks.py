"""Validation checks of section 9 on hand-built models whose answers are known by hand."""

import numpy as np
import pytest
import torch

import ksae_helpers as kh


def hand_pipeline(bias, slope, weights, k):
    """Pipeline whose path from 0 to ``PIXEL`` has pre-activations ``bias + alpha * slope`` and whose target
    logit (class 0) is ``weights . z`` (identity hidden layers; z >= 0 passes every ReLU)."""
    h = len(bias)
    sae = kh.KSparseAutoencoder(k=k, d_hidden=h).double()
    clf = kh.SparseCodeClassifier(d_hidden=h, hidden=(h, h), n_classes=2, dropout=0.0).double()
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = torch.tensor(slope, dtype=torch.float64)
        sae.b_enc.copy_(torch.tensor(bias, dtype=torch.float64))
        sae.b_pre.zero_()
        clf.W1.copy_(torch.eye(h, dtype=torch.float64))
        clf.b1.zero_()
        clf.rest[2].weight.copy_(torch.eye(h, dtype=torch.float64))
        clf.rest[2].bias.zero_()
        clf.rest[5].weight.zero_()
        clf.rest[5].weight[0] = torch.tensor(weights, dtype=torch.float64)
        clf.rest[5].bias.zero_()
    return kh.SparseCodePipeline(sae, clf).eval()


PIXEL = torch.zeros(1, 784, dtype=torch.float64)
PIXEL[0, 0] = 1.0
TARGET = torch.zeros(1, dtype=torch.long)


def gl_step_error(cross, slope_before, n=50):
    """Gauss-Legendre's error on int_0^1 of a slope that is ``slope_before`` up to ``cross``, then 0."""
    nodes, weights = kh.ig_quadrature(n)
    return float(slope_before * (weights[nodes < cross].sum() - cross))


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
            assert comp["table"][method][n]["median_rel_error"] == pytest.approx(np.median(rel), rel=1e-8)


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
