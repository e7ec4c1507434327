"""Our deletion curves and ROAD numbers against Quantus (test-only dependency), on a trained tiny model.

Conventions, and how they are matched here:

* **Curve points.** ``quantus.PixelFlipping`` records the prediction after each of its
  ``784 / features_in_step`` steps; ours also holds the untouched image as point 0, so its points
  ``1..T`` are compared. Both measure the target's softmax probability (Quantus' ``softmax=True``).
* **Baseline.** Quantus' ``perturb_baseline="black"`` is the *minimum* of the image being perturbed,
  ours (substrate "zero") is 0; the two agree because every image used here has a black pixel (asserted).
* **Order and ties.** Quantus sorts ``-a`` with numpy's unstable sort, we break ties at random (seeded),
  and float32 gradient maps do hold a few exact ties. So Quantus gets a tie-free map carrying our order:
  each pixel's value is ``784 - (its position in our order)``, with the real map's sign for the |value|
  ranking, where Quantus' ``abs=True`` must drop the sign to recover our order (``normalise=False`` keeps
  values as they are).
* **ROAD.** ``quantus.ROAD`` reports, per removal percentage, the *accuracy* (argmax = label) on images
  whose ``int(784 p / 100)`` most relevant pixels were imputed by ``noisy_linear_imputation`` (a direct
  sparse solve per image, noise from numpy's global generator). We impute all images at once by
  conjugate gradients to a tolerance and draw the noise from a seeded torch generator. So (1) without
  noise our ROAD curve equals the model on Quantus' imputed images up to the solver tolerance, and (2)
  with ROAD's noise (0.01) the accuracies agree within ``ROAD_ACCURACY_TOL``: the noise draws differ, so
  an image close to its decision boundary can flip. Percentages 25/50/75 remove 196/392/588 pixels,
  exactly 7/14/21 of our 28-pixel steps.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn

import ksae_helpers as kh

quantus = pytest.importorskip("quantus")  # requirements-test.txt pins it; skipped only where it is absent
pytestmark = pytest.mark.filterwarnings("ignore")

N_IMAGES = 50
STEP = 28
PERCENTAGES = [25, 50, 75]
EXACT_TOL = 2e-5  # float32: our curves update the pre-activations incrementally, Quantus runs full passes
NEAR_TIE_TOL = 1e-3  # ...which can swap the k-th and (k+1)-th unit where they nearly tie (seen: 1 point of 1400)
ROAD_ACCURACY_TOL = 0.1  # at most 5 of 50 images may flip between two independent noise draws
ROAD_PROB_TOL = 1e-4  # conjugate gradients (tolerance 1e-7 here) against an exact sparse solve


class ImageModel(nn.Module):
    """The pipeline on ``[N, 1, 28, 28]`` images, as Quantus feeds them."""

    def __init__(self, pipeline):
        super().__init__()
        self.pipeline = pipeline

    def forward(self, x):
        return self.pipeline(x.reshape(len(x), -1))


def order_map(order: torch.Tensor, maps: torch.Tensor, signed: bool) -> np.ndarray:
    """``[N, 1, 28, 28]`` map whose descending (or, if ``signed``, descending-|value|) order is ``order: [N, 784]``."""
    a = torch.empty_like(maps).scatter_(1, order, torch.arange(784, 0, -1, dtype=maps.dtype).expand_as(maps))
    return (a * torch.where(maps < 0, -1.0, 1.0) if signed else a).reshape(-1, 1, 28, 28).numpy()


@pytest.fixture(scope="module")
def trained(data):
    cfg = kh.Config(train_subset=3000, ae_epochs=3, clf_epochs=5)
    sae, clf, _ = kh.train_models(cfg, data, torch.device("cpu"))
    pipeline = kh.SparseCodePipeline(sae, clf).eval()
    x, y = data.x_test[:N_IMAGES], data.y_test[:N_IMAGES]
    maps = kh.simple_gradients(pipeline, x, y)
    assert (x.min(1).values == 0).all(), "Quantus' black baseline is the image minimum: it must be 0 here"
    return pipeline, x, y, maps


@pytest.mark.parametrize("use_abs", [False, True])
def test_zero_substrate_deletion_equals_quantus_pixel_flipping(trained, use_abs):
    pipeline, x, y, maps = trained
    order = kh.removal_order(maps.abs() if use_abs else maps)
    metric = quantus.PixelFlipping(features_in_step=STEP, perturb_baseline="black", normalise=False, abs=use_abs,
                                   disable_warnings=True)
    ref = np.asarray(metric(model=ImageModel(pipeline).eval(), x_batch=x.reshape(-1, 1, 28, 28).numpy(),
                            y_batch=y.numpy(), a_batch=order_map(order, maps, use_abs), softmax=True,
                            device="cpu", channel_first=True))
    ours = kh.removal_curves(pipeline, x, y, order[None], "zero", STEP)[0]
    assert ref.shape == (N_IMAGES, 784 // STEP)
    diff = np.abs(ours[:, 1:].numpy() - ref)
    assert (diff <= EXACT_TOL).mean() >= 0.99 and diff.max() <= NEAR_TIE_TOL, diff.max()


def test_road_equals_quantus_imputation_without_noise(trained):
    from quantus.functions.perturb_func import noisy_linear_imputation

    pipeline, x, y, maps = trained
    order = kh.removal_order(maps)
    ours = kh.removal_curves(pipeline, x, y, order[None], "road", STEP, road_noise=0.0, road_tol=1e-7)[0]
    for p in PERCENTAGES:
        n_removed = int(784 * p / 100)
        imputed = np.stack([noisy_linear_imputation(arr=img.reshape(1, 28, 28), indices=idx[:n_removed], noise=0.0)
                            for img, idx in zip(x.double().numpy(), order.numpy())])
        probs = pipeline(torch.from_numpy(imputed).float().reshape(N_IMAGES, -1)).softmax(1)[range(N_IMAGES), y]
        np.testing.assert_allclose(ours[:, n_removed // STEP].numpy(), probs.detach().numpy(), atol=ROAD_PROB_TOL)


def test_road_accuracy_agrees_with_quantus_road(trained):
    pipeline, x, y, maps = trained
    np.random.seed(0)  # Quantus draws its noise from numpy's global generator
    order = kh.removal_order(maps)
    metric = quantus.ROAD(percentages=PERCENTAGES, noise=kh.ROAD_NOISE, normalise=False, abs=False,
                          disable_warnings=True)
    metric(model=ImageModel(pipeline).eval(), x_batch=x.reshape(-1, 1, 28, 28).numpy(), y_batch=y.numpy(),
           a_batch=order_map(order, maps, False), device="cpu", channel_first=True)
    for p in PERCENTAGES:
        removed = torch.zeros_like(x, dtype=torch.bool).scatter_(1, order[:, :int(784 * p / 100)], True)
        with torch.no_grad():
            pred = pipeline(kh.road_impute(x, removed, seed=p)).argmax(1)
        ours = float((pred == y).double().mean())
        assert abs(ours - metric.evaluation_scores[p]) <= ROAD_ACCURACY_TOL, (p, ours, metric.evaluation_scores[p])
