"""ksae.checks.unit_causality: unit deletion and insertion curves in code space, on a hand-built pipeline
whose unit contributions are known by hand.
"""

import numpy as np
import pytest
import torch
from helpers import PIXEL, hand_pipeline

import ksae_helpers as kh

UNIT_Z = [0.5, 1.0, 2.0, 1.5, -1.0]  # pre-activations of the image; the last is in the top-5 but z = 0
UNIT_W = [4.0, 1.0, 0.2, 0.5, 3.0]  # class-0 logit weights: contributions w * z = 2.0, 1.0, 0.4, 0.75, 0


def trapezoid_auc(curve):
    curve = np.asarray(curve, dtype=np.float64)
    return float(((curve[1:] + curve[:-1]) / 2).mean())


def test_unit_deletion_follows_the_contribution_order_by_hand():
    pipe = hand_pipeline(bias=UNIT_Z, slope=[0.0] * 5, weights=UNIT_W, k=5)
    x, target = PIXEL.repeat(8, 1), torch.zeros(8, dtype=torch.long)
    _, contrib = kh.decoder_weighted(pipe, x, target, return_contributions=True)
    torch.testing.assert_close(contrib[0], torch.tensor([2.0, 1.0, 0.4, 0.75, 0.0], dtype=torch.float64))
    res = kh.unit_deletion_curves(pipe, x, target, contrib)
    by_contribution = [4.15, 2.15, 1.15, 0.4, 0.0, 0.0]  # delete units 0, 1, 3, 2, then the inactive 4
    by_activation = [4.15, 3.75, 3.0, 2.0, 0.0, 0.0]  # delete units 2, 3, 1, 0, then 4
    dele = res["curves"]["deletion"]["logit"]
    np.testing.assert_allclose(dele["contribution"]["mean"], by_contribution, atol=1e-12)
    np.testing.assert_allclose(dele["activation"]["mean"], by_activation, atol=1e-12)
    np.testing.assert_allclose(res["curves"]["insertion"]["logit"]["contribution"]["mean"],
                               [0.0, 2.0, 3.0, 3.75, 4.15, 4.15], atol=1e-12)
    np.testing.assert_allclose(res["curves"]["deletion"]["probability"]["contribution"]["mean"],
                               1 / (1 + np.exp(-np.array(by_contribution))), atol=1e-12)  # softmax of (logit, 0)
    auc = res["auc"]["deletion"]["logit"]
    assert auc["contribution"]["mean"] == pytest.approx(trapezoid_auc(by_contribution))
    test = res["tests"]["deletion"]["logit"]["vs_activation"]
    assert test["mean_diff"] == pytest.approx(trapezoid_auc(by_contribution) - trapezoid_auc(by_activation))
    assert test["p_value"] < 0.01  # the same negative difference on all 8 images
    assert res["mean_active_units"] == 4.0


def test_unit_deletion_random_order_is_uniform_and_inactive_units_come_last():
    pipe = hand_pipeline(bias=UNIT_Z, slope=[0.0] * 5, weights=UNIT_W, k=5)
    x, target = PIXEL.repeat(600, 1), torch.zeros(600, dtype=torch.long)
    _, contrib = kh.decoder_weighted(pipe, x, target, return_contributions=True)
    res = kh.unit_deletion_curves(pipe, x, target, contrib, seed=3)
    random = np.array(res["curves"]["deletion"]["logit"]["random"]["mean"])
    # each active unit is gone after t of 4 steps with probability t / 4: expected logit 4.15 (1 - t / 4)
    np.testing.assert_allclose(random[:5], 4.15 * (1 - np.arange(5) / 4), atol=0.1)
    assert random[4] == pytest.approx(0.0, abs=1e-12)  # the inactive unit is last in the random order too
    lo, hi = res["curves"]["deletion"]["logit"]["random"]["lo"], res["curves"]["deletion"]["logit"]["random"]["hi"]
    assert lo[2] < random[2] < hi[2]


@pytest.mark.parametrize("bad, match", [
    (lambda c: c[:, :3], r"contributions must be a tensor of shape \[4, 5\]"),
    (lambda c: c.numpy(), "contributions must be a tensor"),
    (lambda c: c * float("nan"), "NaN"),
])
def test_unit_deletion_rejects_bad_contributions(bad, match):
    pipe = hand_pipeline(bias=UNIT_Z, slope=[0.0] * 5, weights=UNIT_W, k=5)
    x, target = PIXEL.repeat(4, 1), torch.zeros(4, dtype=torch.long)
    contrib = torch.zeros(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        kh.unit_deletion_curves(pipe, x, target, bad(contrib))
    with pytest.raises(ValueError, match="SparseCodePipeline"):
        kh.unit_deletion_curves(pipe.clf, x, target, contrib)
    with pytest.raises(ValueError, match="target"):
        kh.unit_deletion_curves(pipe, x, torch.zeros(3, dtype=torch.long), contrib)
