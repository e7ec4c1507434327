"""Tests for the perturbation attributions (ksae.perturbation): known answers on hand-built models, Captum's
implementations as the reference (exactly where the random draws can be shared, in distribution where they cannot),
Shapley's efficiency and exactness, the pipeline shortcut against the model's own forward, and bad arguments.

Everything runs on small float64 models on the CPU (seconds in all):

* ``linear`` -- a hand-built linear model F(x) = W x + c (no shortcut: the perturbed images go through it);
* ``split``  -- the same linear model exposing ``affine_split`` (the shortcut path);
* ``pipe``   -- a random top-k pipeline, KSparseAutoencoder(k=8, H=64) -> SparseCodeClassifier(64 -> 32 -> 16 -> 10).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import FeatureAblation, KernelShap, Lime, Occlusion, ShapleyValueSampling
from captum.attr._core.lime import get_exp_kernel_similarity_function
from helpers import SIDE, object_images

import ksae_helpers as kh
from ksae.perturbation import _random_coalitions

pytestmark = pytest.mark.filterwarnings("ignore:You are providing multiple inputs for Lime")
DT = torch.float64
D, B = SIDE * SIDE, 4
TARGETS = torch.tensor([0, 3, 7, 9])
QUADRANTS = (torch.arange(SIDE)[:, None] // 14) * 2 + torch.arange(SIDE)[None, :] // 14  # 4 features


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().to(DT).reshape(len(ref), -1), ref.detach().to(DT).reshape(len(ref), -1)
    return float((ours - ref).norm() / ref.norm())


class Linear(nn.Module):
    """F(x) = x W^T + c: every perturbation method's answer is known (``weights x input``, summed per feature)."""

    def __init__(self, seed: int = 0, n_classes: int = 10):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(n_classes, D, generator=g, dtype=DT))
        self.c = nn.Parameter(torch.randn(n_classes, generator=g, dtype=DT))

    def forward(self, x):
        return x @ self.W.T + self.c


class SplitLinear(Linear):
    """The same model through the shortcut: its first layer is all of it (``head`` the identity)."""

    def affine_split(self):
        return self.W, self.c, nn.Identity()


def make_pipe(seed: int = 0) -> kh.SparseCodePipeline:
    torch.manual_seed(seed)
    sae = kh.KSparseAutoencoder(k=8, d_hidden=64)
    clf = kh.SparseCodeClassifier(d_hidden=64, hidden=(32, 16), n_classes=10)
    return kh.SparseCodePipeline(sae, clf).to(DT).eval()


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


@pytest.fixture(scope="module")
def x():
    return object_images(B, seed=3, dtype=DT)


def captum_model(model):
    """Captum sees images ``[N, 28, 28]`` (its windows are 2-D); ours flattens them."""
    return lambda images: model(images.reshape(len(images), D))


def patch_sums(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each pixel's feature total of ``values: [B, 784]`` under ``mask: [28, 28]`` (the known answer of a linear
    model: weights x input, up to the grid)."""
    ids = mask.reshape(-1)
    totals = torch.zeros(len(values), int(ids.max()) + 1, dtype=values.dtype).index_add_(1, ids, values)
    return totals[:, ids]


def score(model, images, target):
    with torch.no_grad():
        return model(images).gather(1, target[:, None])[:, 0]


# --------------------------------------------------------------------------------------------------------------
# Known answers: a linear model, an ignored patch
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_cls", [Linear, SplitLinear])
def test_linear_model_every_method_recovers_weights_times_input(model_cls, x):
    model = model_cls().eval()
    grid = kh.superpixel_grid(4)
    expected = patch_sums(model.W[TARGETS].detach() * x, grid)  # baseline 0: F(x) - F(x without f) = sum_f w x
    maps = {
        "feature_ablation": kh.feature_ablation(model, x, TARGETS),
        "occlusion (window = stride = patch)": kh.occlusion(model, x, TARGETS, (4, 4), 4),
        "shapley (one order)": kh.shapley_value_sampling(model, x, TARGETS, n_samples=1, seed=0),
        "kernel_shap": kh.kernel_shap(model, x, TARGETS, n_samples=60, seed=0),
        "lime (no ridge penalty)": kh.lime(model, x, TARGETS, n_samples=200, alpha=0.0, seed=0),
    }
    for name, attr in maps.items():
        assert rel(attr, expected) <= 1e-10, name
    # LIME's default ridge penalty (alpha = 1 against ~1200 x 0.25 x weight of signal per feature) shrinks a little
    assert 1e-4 < rel(kh.lime(model, x, TARGETS, seed=0), expected) < 2e-2
    # occlusion with overlapping windows: each pixel gets the mean of the sums of the windows covering it
    w = (model.W[TARGETS].detach() * x).reshape(B, 1, SIDE, SIDE)
    window_sums = torch.nn.functional.conv2d(w, torch.ones(1, 1, 3, 3, dtype=DT))  # [B, 1, 26, 26], stride 1
    covered = torch.nn.functional.conv_transpose2d(torch.ones_like(window_sums), torch.ones(1, 1, 3, 3, dtype=DT))
    mean = torch.nn.functional.conv_transpose2d(window_sums, torch.ones(1, 1, 3, 3, dtype=DT)) / covered
    assert rel(kh.occlusion(model, x, TARGETS, (3, 3)), mean.reshape(B, D)) <= 1e-12


def test_a_patch_the_model_ignores_gets_nothing(x):
    pipe = make_pipe(1)
    with torch.no_grad():
        ignored = kh.superpixel_grid(4).reshape(-1) == 8  # rows 4-7, columns 4-7
        pipe.sae.W_enc[:, ignored] = 0  # the encoder never reads these pixels
    image = x.clone()
    image[:, ignored] = 1.0  # bright pixels there: a map that follows the input would not be zero
    for attr in (kh.occlusion(pipe, image, TARGETS, (4, 4), 4), kh.feature_ablation(pipe, image, TARGETS),
                 kh.shapley_value_sampling(pipe, image, TARGETS, n_samples=5, seed=0)):
        assert (attr[:, ignored] == 0).all()  # the null player gets exactly 0
        assert (attr[:, ~ignored] != 0).any()
    occluded = kh.occlusion(pipe, image, TARGETS, (4, 4), 1)
    inside = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    inside[4:8, 4:8] = True  # only the window exactly on the patch lies inside it: every other one also
    assert (occluded[:, inside.reshape(-1)] != 0).any()  # covers pixels the model reads
    kernel = kh.kernel_shap(pipe, image, TARGETS, n_samples=600, seed=0)  # a regression: near 0, not exactly
    assert kernel[:, ignored].abs().max() < 0.1 * kernel.abs().max()


# --------------------------------------------------------------------------------------------------------------
# Shapley: efficiency, exactness by enumeration, convergence
# --------------------------------------------------------------------------------------------------------------


def exact_shapley(model, x, target, mask, baseline=None):
    """Shapley values of the features of ``mask`` by enumerating every coalition: ``[B, M]``."""
    ids = mask.reshape(-1)
    m = int(ids.max()) + 1
    base = torch.zeros_like(x) if baseline is None else baseline
    value = {}
    for bits in itertools.product((0, 1), repeat=m):
        keep = torch.tensor(bits, dtype=torch.bool)[ids]
        value[bits] = score(model, torch.where(keep, x, base), target)
    phi = torch.zeros(len(x), m, dtype=DT)
    for f in range(m):
        for bits in value:
            if bits[f]:
                continue
            k = sum(bits)
            weight = math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m)
            phi[:, f] += weight * (value[bits[:f] + (1,) + bits[f + 1:]] - value[bits])
    return phi


def test_shapley_values_are_efficient(pipe, x):
    delta = score(pipe, x, TARGETS) - score(pipe, torch.zeros_like(x), TARGETS)
    per_feature = lambda attr: attr.reshape(B, SIDE, SIDE)[:, ::4, ::4].sum((1, 2))
    for attr in (kh.shapley_value_sampling(pipe, x, TARGETS, n_samples=3, seed=1),
                 kh.kernel_shap(pipe, x, TARGETS, n_samples=80, seed=1)):
        assert (per_feature(attr) - delta).abs().max() <= 1e-10 * delta.abs().max()
    baseline = torch.full((D,), 0.25, dtype=DT)  # any baseline: the sum is F(x) - F(baseline)
    attr = kh.shapley_value_sampling(pipe, x, TARGETS, baselines=baseline, n_samples=2, seed=1)
    delta_b = score(pipe, x, TARGETS) - score(pipe, baseline.expand(B, D), TARGETS)
    assert (per_feature(attr) - delta_b).abs().max() <= 1e-10 * delta_b.abs().max()
    lime_sum = per_feature(kh.lime(pipe, x, TARGETS, n_samples=200, seed=1))
    assert (lime_sum - delta).abs().max() > 1e-3  # LIME makes no such promise


def test_shapley_exact_on_a_small_feature_count(pipe, x):
    exact = exact_shapley(pipe, x, TARGETS, QUADRANTS)
    # KernelSHAP with every coalition (2^4 = 16 samples) and the kernel's weights: the exact Shapley values
    ks = kh.kernel_shap(pipe, x, TARGETS, feature_mask=QUADRANTS, n_samples=16)
    assert rel(ks.reshape(B, SIDE, SIDE)[:, ::14, ::14].reshape(B, 4), exact) <= 1e-10
    # Shapley value sampling: unbiased; its mean over many orders converges to the exact values
    runs = torch.stack([kh.shapley_value_sampling(pipe, x, TARGETS, feature_mask=QUADRANTS, n_samples=6, seed=s)
                        .reshape(B, SIDE, SIDE)[:, ::14, ::14].reshape(B, 4) for s in range(60)])
    t = (runs.mean(0) - exact) / (runs.std(0) / math.sqrt(len(runs))).clamp_min(1e-12)
    assert t.abs().max() < 4.5
    assert (runs.std(0) > 0).any()  # the draws differ: the test above has power


# --------------------------------------------------------------------------------------------------------------
# Equal to Captum
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_kind", ["pipeline", "mlp"])
@pytest.mark.parametrize("window, strides, baselines", [((4, 4), None, None), ((4, 4), 2, 0.3), ((5, 3), (3, 2), None),
                                                         ((7, 7), 7, "image")])
def test_occlusion_equals_captum(model_kind, window, strides, baselines, pipe, x):
    torch.manual_seed(0)
    model = pipe if model_kind == "pipeline" else nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 10)).to(
        DT).eval()
    if baselines == "image":
        baselines = object_images(1, seed=9, dtype=DT)
    ours = kh.occlusion(model, x, TARGETS, window, strides, baselines=baselines)
    ref_base = baselines.reshape(1, SIDE, SIDE) if isinstance(baselines, torch.Tensor) else baselines
    ref = Occlusion(captum_model(model)).attribute(x.reshape(B, SIDE, SIDE), sliding_window_shapes=window,
                                                    strides=strides, baselines=ref_base, target=TARGETS)
    assert rel(ours, ref) <= 1e-6  # Captum divides by the window counts in float32


@pytest.mark.parametrize("per_image", [False, True])
def test_feature_ablation_equals_captum(per_image, pipe, x):
    g = torch.Generator().manual_seed(4)
    mask = torch.randint(0, 30, (B if per_image else 1, SIDE, SIDE), generator=g)  # irregular features, ids 0..29
    ours = kh.feature_ablation(pipe, x, TARGETS, feature_mask=mask if per_image else mask[0])
    ref = FeatureAblation(captum_model(pipe)).attribute(x.reshape(B, SIDE, SIDE), target=TARGETS, feature_mask=mask)
    assert rel(ours, ref) <= 1e-12
    ours_p = kh.feature_ablation(pipe, x, TARGETS, output="probability")
    ref_p = FeatureAblation(lambda i: pipe(i.reshape(len(i), D)).softmax(1)).attribute(
        x.reshape(B, SIDE, SIDE), target=TARGETS, feature_mask=kh.superpixel_grid()[None])
    assert rel(ours_p, ref_p) <= 1e-12


def shared_draws(seed: int, n_images: int, draw):
    g = torch.Generator().manual_seed(seed)
    return [draw(g) for _ in range(n_images)]


def test_shapley_value_sampling_equals_captum_with_the_same_orders(pipe, x):
    ours = kh.shapley_value_sampling(pipe, x, TARGETS, n_samples=7, seed=5)
    orders = shared_draws(5, B, lambda g: torch.rand(7, 49, generator=g, dtype=DT).argsort(1).tolist())
    ref = []
    for i in range(B):
        sv = ShapleyValueSampling(captum_model(pipe))
        sv.permutation_generator = lambda n, s, o=orders[i]: iter(o)  # Captum's own loop, our orders
        ref.append(sv.attribute(x[i:i + 1].reshape(1, SIDE, SIDE), target=TARGETS[i:i + 1],
                                feature_mask=kh.superpixel_grid()[None], n_samples=7))
    assert rel(ours, torch.cat(ref)) <= 1e-6  # Captum accumulates in float32


def test_kernel_shap_equals_captum_with_the_same_coalitions(pipe, x):
    ours = kh.kernel_shap(pipe, x, TARGETS, n_samples=150, seed=6)
    weights = torch.tensor([48 / (k * (49 - k)) for k in range(1, 49)], dtype=DT)
    draws = shared_draws(6, B, lambda g: _random_coalitions(49, 148, weights, g))
    ref = []
    for i in range(B):
        ks = KernelShap(captum_model(pipe))

        def coalitions(inputs, d=draws[i], **kwargs):  # Captum's order: all features, none, then the draws
            yield torch.ones(1, 49, dtype=torch.long)
            yield torch.zeros(1, 49, dtype=torch.long)
            yield from (row[None] for row in d)

        ks.perturb_func = coalitions
        ref.append(ks.attribute(x[i:i + 1].reshape(1, SIDE, SIDE), target=TARGETS[i:i + 1],
                                feature_mask=kh.superpixel_grid()[None], n_samples=150))
    # Captum holds the endpoints by a 1e6 weight and fits in float32; ours holds them exactly in float64
    assert rel(ours, torch.cat(ref)) <= 5e-3


@pytest.mark.parametrize("distance_mode, kernel_width", [("cosine", 1.0), ("euclidean", 3.0)])
def test_lime_equals_captum_with_the_same_coalitions(distance_mode, kernel_width, pipe, x):
    ours = kh.lime(pipe, x, TARGETS, n_samples=120, distance_mode=distance_mode, kernel_width=kernel_width,
                   alpha=0.5, seed=7)
    draws = shared_draws(7, B, lambda g: (torch.rand(120, 49, generator=g, dtype=DT) < 0.5).long())
    ref = []
    for i in range(B):

        def coalitions(inputs, d=draws[i], **kwargs):
            yield from (row[None] for row in d)

        lime = Lime(captum_model(pipe), interpretable_model=SkLearnRidge(alpha=0.5),
                    similarity_func=get_exp_kernel_similarity_function(distance_mode, kernel_width),
                    perturb_func=coalitions)
        ref.append(lime.attribute(x[i:i + 1].reshape(1, SIDE, SIDE), target=TARGETS[i:i + 1],
                                  feature_mask=kh.superpixel_grid()[None], n_samples=120))
    assert rel(ours, torch.cat(ref)) <= 1e-5  # Captum fits in float32


def means_agree(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    """The largest |t| of the per-feature difference of two sets of independent runs' means."""
    a, b = torch.stack(ours), torch.stack(theirs)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    return float(((a.mean(0) - b.mean(0)) / se.clamp_min(1e-12)).abs().max())


@pytest.mark.parametrize("method", ["shapley", "kernel_shap", "lime"])
def test_sampling_methods_equal_captum_in_distribution(method, pipe, x):
    """Independent draws (ours from a seed, Captum's from torch's global generator), the same sample counts:
    the mean maps over repeated runs agree within their standard errors (16 features of 7 x 7)."""
    mask, image, target = kh.superpixel_grid(7), x[:1], TARGETS[:1]
    features = lambda attr: attr.reshape(SIDE, SIDE)[::7, ::7].reshape(-1)
    ours_fn = {"shapley": lambda s: kh.shapley_value_sampling(pipe, image, target, feature_mask=mask, n_samples=4,
                                                              seed=s),
               "kernel_shap": lambda s: kh.kernel_shap(pipe, image, target, feature_mask=mask, n_samples=40, seed=s),
               "lime": lambda s: kh.lime(pipe, image, target, feature_mask=mask, n_samples=40, seed=s)}[method]
    captum = {"shapley": (ShapleyValueSampling(captum_model(pipe)), 4),
              "kernel_shap": (KernelShap(captum_model(pipe)), 40),
              "lime": (Lime(captum_model(pipe), interpretable_model=SkLearnRidge(alpha=1.0)), 40)}[method]
    runs = 150
    ours = [features(ours_fn(s)) for s in range(runs)]
    theirs = []
    for s in range(runs):
        torch.manual_seed(1000 + s)
        theirs.append(features(captum[0].attribute(image.reshape(1, SIDE, SIDE), target=target, feature_mask=mask[None],
                                                   n_samples=captum[1]).double()))
    assert means_agree(ours, theirs) < 4.5
    spread = torch.stack(ours).std(0)
    assert spread.max() > 1e-3  # the methods do sample: agreement is not trivial


def test_kernel_shap_coalitions_are_drawn_as_captums():
    """The coalition sizes and the features in them, ours against Captum's own generator (torch's global one)."""
    n, count = 12, 20000
    weights = torch.tensor([(n - 1) / (k * (n - k)) for k in range(1, n)], dtype=DT)
    ours = _random_coalitions(n, count, weights, torch.Generator().manual_seed(0)).double()
    ks = KernelShap(lambda v: v.sum(1))
    sizes = torch.arange(n, dtype=torch.float)
    probs = (n - 1) / (sizes * (n - sizes))
    probs[0] = 0.0
    torch.manual_seed(0)
    gen = ks.kernel_shap_perturb_generator(torch.zeros(1, n), num_interp_features=n,
                                           num_select_distribution=torch.distributions.Categorical(probs))
    next(gen), next(gen)  # all features, then none: ours are not drawn but held exactly
    theirs = torch.cat([next(gen) for _ in range(count)]).double()
    hist = lambda c: torch.bincount(c.sum(1).long(), minlength=n + 1).double() / count
    assert (hist(ours) - hist(theirs)).abs().max() < 0.015  # ~3 standard errors of the largest bin
    assert (ours.mean(0) - theirs.mean(0)).abs().max() < 0.02  # every feature equally likely
    assert hist(ours)[0] == hist(ours)[n] == 0


# --------------------------------------------------------------------------------------------------------------
# The shortcut, batching, shapes
# --------------------------------------------------------------------------------------------------------------

CALLS = {
    "occlusion": lambda m, x, **kw: kh.occlusion(m, x, TARGETS, (4, 4), 2, **kw),
    "feature_ablation": lambda m, x, **kw: kh.feature_ablation(m, x, TARGETS, **kw),
    "shapley": lambda m, x, **kw: kh.shapley_value_sampling(m, x, TARGETS, n_samples=3, seed=2, **kw),
    "kernel_shap": lambda m, x, **kw: kh.kernel_shap(m, x, TARGETS, n_samples=70, seed=2, **kw),
    "lime": lambda m, x, **kw: kh.lime(m, x, TARGETS, n_samples=50, seed=2, **kw),
}


@pytest.mark.parametrize("method", CALLS)
def test_the_pipeline_shortcut_is_the_models_own_forward(method, pipe, x):
    """Through ``affine_split`` (first-layer partial sums) and through the model's forward on the perturbed images
    (the pipeline wrapped so that it has no ``affine_split``): the same maps, up to rounding."""
    direct = nn.Sequential(pipe).eval()
    assert not hasattr(direct, "affine_split")
    assert rel(CALLS[method](pipe, x), CALLS[method](direct, x)) <= 1e-12


@pytest.mark.parametrize("method", CALLS)
def test_maps_do_not_depend_on_perturbations_per_eval_or_shape(method, pipe, x):
    full = CALLS[method](pipe, x)
    assert rel(CALLS[method](pipe, x, perturbations_per_eval=7), full) <= 1e-12
    images = CALLS[method](pipe, x.reshape(B, 1, SIDE, SIDE))
    assert images.shape == (B, 1, SIDE, SIDE) and rel(images.reshape(B, D), full) <= 1e-12
    assert full.dtype == x.dtype and not full.requires_grad


def test_sampling_is_seeded_per_image(pipe, x):
    a = kh.lime(pipe, x, TARGETS, n_samples=50, seed=3)
    assert torch.equal(a, kh.lime(pipe, x, TARGETS, n_samples=50, seed=3))
    assert not torch.equal(a, kh.lime(pipe, x, TARGETS, n_samples=50, seed=4))
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(a, kh.lime(pipe, x, TARGETS, n_samples=50, generator=gen))
    state = torch.random.get_rng_state()
    kh.shapley_value_sampling(pipe, x, TARGETS, n_samples=2)  # fresh entropy: torch's global generator untouched
    assert torch.equal(state, torch.random.get_rng_state())


# --------------------------------------------------------------------------------------------------------------
# Bad arguments: ValueError naming the argument
# --------------------------------------------------------------------------------------------------------------

BAD = [
    (lambda m, x: kh.superpixel_grid(0), r"patch_size must be >= 1"),
    (lambda m, x: kh.superpixel_grid(29), r"patch_size must be <= the image side"),
    (lambda m, x: kh.superpixel_grid(2.5), r"patch_size must be an integer"),
    (lambda m, x: kh.Config(patch_size=0), r"patch_size must be >= 1"),
    (lambda m, x: kh.Config(occlusion_stride=5), r"occlusion_stride must be <= patch_size"),
    (lambda m, x: kh.Config(kernel_shap_samples=40), r"kernel_shap_samples must be >= 50"),
    (lambda m, x: kh.occlusion(m, x, 0, (0, 4)), r"sliding_window_shapes must be >= 1"),
    (lambda m, x: kh.occlusion(m, x, 0, (29, 4)), r"sliding_window_shapes must be <= the image side"),
    (lambda m, x: kh.occlusion(m, x, 0, (4, 4, 1)), r"sliding_window_shapes must be an integer or a pair"),
    (lambda m, x: kh.occlusion(m, x, 0, (4, 4), 5), r"strides must be at most sliding_window_shapes"),
    (lambda m, x: kh.occlusion(m, x, 0, (4, 4), 0), r"strides must be >= 1"),
    (lambda m, x: kh.feature_ablation(m, x, 0, feature_mask=torch.zeros(27, 27, dtype=torch.long)),
     r"feature_mask must cover the 28 x 28 image.*got shape \[27, 27\]"),
    (lambda m, x: kh.feature_ablation(m, x, 0, feature_mask=torch.zeros(3, SIDE, SIDE, dtype=torch.long)),
     r"feature_mask must cover the 28 x 28 image"),
    (lambda m, x: kh.feature_ablation(m, x, 0, feature_mask=torch.zeros(SIDE, SIDE)),
     r"feature_mask must hold integer feature ids, got dtype torch.float32"),
    (lambda m, x: kh.feature_ablation(m, x, 0, feature_mask=-torch.ones(SIDE, SIDE, dtype=torch.long)),
     r"feature_mask must give every pixel a feature id >= 0"),
    (lambda m, x: kh.feature_ablation(m, x, 0, feature_mask=[[0] * SIDE] * SIDE), r"feature_mask must be an integer"),
    (lambda m, x: kh.kernel_shap(m, x, 0, n_samples=30), r"n_samples must be at least the number of features \+ 1 \("
     r"50"),
    (lambda m, x: kh.kernel_shap(m, x, 0, n_samples=49), r"n_samples must be at least the number of features \+ 1"),
    (lambda m, x: kh.lime(m, x, 0, distance_mode="manhattan"), r"distance_mode .* must be one of"),
    (lambda m, x: kh.lime(m, x, 0, kernel_width=0.0), r"kernel_width must be in \(0.0, inf\)"),
    (lambda m, x: kh.lime(m, x, 0, alpha=-1.0), r"alpha must be in \[0.0, inf\)"),
    (lambda m, x: kh.shapley_value_sampling(m, x, 0, n_samples=0), r"n_samples must be >= 1"),
    (lambda m, x: kh.lime(m, x, 0, n_samples=2.0), r"n_samples must be an integer"),
    (lambda m, x: kh.shapley_value_sampling(m, x, 0, seed=-1), r"seed must be >= 0"),
    (lambda m, x: kh.lime(m, x, 0, generator=3), r"generator must be a torch.Generator"),
    (lambda m, x: kh.feature_ablation(m, x, 0, perturbations_per_eval=0), r"perturbations_per_eval must be >= 1"),
    (lambda m, x: kh.feature_ablation(m, x, 0, baselines=torch.zeros(3, D, dtype=DT)), r"baselines must hold 1 or 4"),
    (lambda m, x: kh.occlusion(m, x, 0, baselines=float("nan")), r"baselines must be a finite number"),
    (lambda m, x: kh.feature_ablation(m, x, 0, output="prob"), r"output must be one of"),
    (lambda m, x: kh.feature_ablation(m, x, 12), r"target classes must be in \[0, 9\]"),
    (lambda m, x: kh.lime(m, x * 255, 0), r"inputs must hold pixel values in \[0, 1\]"),
    (lambda m, x: kh.occlusion(m.sae, x, 0), r"got the autoencoder"),
]  # fmt: skip


@pytest.mark.parametrize("call, match", BAD)
def test_bad_arguments_raise_naming_them(call, match, pipe, x):
    with pytest.raises(ValueError, match=match):
        call(pipe, x)


def test_training_mode_refused_and_left_alone(x):
    pipe = make_pipe().train()
    with pytest.raises(ValueError, match="training mode"):
        kh.lime(pipe, x, TARGETS, n_samples=10)
    assert pipe.training
