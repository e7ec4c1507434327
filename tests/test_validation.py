"""The evaluation section on small synthetic models whose answers are known."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import ksae_helpers as kh

N, D, C = 200, 784, 10


class Linear(nn.Module):
    """``logits = x @ W.T``: the true pixel contributions to class c are ``W[c] * x``."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(C, D, generator=g, dtype=torch.float64) * 0.05)

    def forward(self, x):
        return x @ self.W.T


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


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, D, generator=g, dtype=torch.float64) * 0.6 + 0.2


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


def test_completeness_is_exact_on_a_smooth_model_and_flags_a_planted_jump(images):
    x, target = images[:20], torch.zeros(20, dtype=torch.long)
    smooth = kh.ig_completeness(Smooth().eval(), x, target, n_steps_list=(50,), methods=("gausslegendre",))
    entry = smooth["table"]["gausslegendre"][50]
    assert entry["median_rel_error"] < 1e-6 and entry["share_within_tolerance"] == 1.0
    step = kh.ig_completeness(Step().eval(), x, target, n_steps_list=(50, 500), methods=("gausslegendre",))
    for n in (50, 500):  # more steps do not help: IG never sees the jump
        assert step["table"]["gausslegendre"][n]["share_within_tolerance"] < 0.2


def test_path_switches_count_active_set_changes():
    sae = kh.KSparseAutoencoder(k=4, d_hidden=32)
    x = torch.rand(5, 784)
    counts = kh.count_path_switches(sae, x, n_points=64)
    assert counts.shape == (5,) and (counts >= 0).all()
    # A path that stays on one image never changes the active set.
    assert (kh.count_path_switches(sae, x, baseline=x, n_points=16) == 0).all()
    # k = d_hidden keeps every unit "selected"; only ReLU sign changes remain, and a path from x to itself has none.
    sae.set_k_(32)
    assert (kh.count_path_switches(sae, x, baseline=x) == 0).all()


@pytest.fixture(scope="module")
def small_pipeline(data):
    cfg = kh.Config(k=16, d_hidden=128, clf_hidden=(64, 32), train_subset=3000, ae_epochs=5, clf_epochs=30,
                    ig_steps=16, smoothgrad_samples=4)
    sae, clf, _ = kh.train_models(cfg, data, torch.device("cpu"))
    return kh.SparseCodePipeline(sae, clf).eval(), data, cfg


def test_randomizing_every_layer_destroys_gradient_similarity(small_pipeline):
    pipeline, data, cfg = small_pipeline
    x, y = data.x_test[:30], data.y_test[:30]
    result = kh.randomization_check(pipeline, x, y, cfg, methods=("simple", "decoder"))
    simple = [s["mean"] for s in result["spearman_abs"]["simple"]]
    assert len(simple) == len(result["stages"]) == 5
    assert simple[0] < 0.95  # re-initialising the logit layer already changes the gradient
    assert simple[-2] < 0.5  # after the encoder, little of the original map is left
    # Randomizing the decoder atoms changes nothing the model computes, only the decoder-weighted map.
    assert simple[-1] == pytest.approx(simple[-2])
    decoder = [s["mean"] for s in result["spearman_abs"]["decoder"]]
    assert decoder[-1] < decoder[-2]
    # The pipeline itself was not modified.
    torch.testing.assert_close(pipeline(x), kh.SparseCodePipeline(pipeline.sae, pipeline.clf)(x))


def test_bootstrap_ci_contains_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        sample = rng.normal(3.0, 1.0, size=100)
        lo, hi = kh.bootstrap_ci(sample, n_boot=1000, seed=i)
        hits += lo <= 3.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99
    lo, hi = kh.bootstrap_ci(rng.normal(3.0, 1.0, size=5000))
    assert lo < 3.0 < hi and hi - lo < 0.1
    with pytest.raises(ValueError):
        kh.bootstrap_ci([])


def test_rowwise_correlations_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 50))
    b = a + rng.normal(size=(5, 50))
    b[:, :10] = 0.0  # ties
    for i, r in enumerate(kh.rowwise_spearman(a, b)):
        assert r == pytest.approx(spearmanr(a[i], b[i]).statistic)
    for i, r in enumerate(kh._rowwise_pearson(a, b)):
        assert r == pytest.approx(pearsonr(a[i], b[i]).statistic)


def test_cross_method_statistics_on_identical_and_independent_maps():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(50, 784, generator=g)
    stats = kh.cross_method_statistics({"a": m, "b": m.clone(), "c": torch.randn(50, 784, generator=g)})
    same, indep = stats["pairs"]["a|b"], stats["pairs"]["a|c"]
    assert same["spearman_signed"]["mean"] == pytest.approx(1.0)
    assert same["top1pct_iou"]["mean"] == pytest.approx(1.0)
    assert abs(indep["pearson_signed"]["mean"]) < 0.02 and indep["pearson_signed"]["p_value"] > 0.01
    assert same["spearman_abs"]["p_value"] < 1e-6
    mat = kh.correlation_matrix(stats, ["a", "b", "c"])
    assert mat.shape == (3, 3) and mat[0, 1] == pytest.approx(1.0) and mat[1, 0] == mat[0, 1]


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


def test_select_high_confidence_is_balanced_deterministic_and_reports_shortfalls(small_pipeline):
    pipeline, data, _ = small_pipeline
    device = torch.device("cpu")
    sel = kh.select_high_confidence(pipeline.sae, pipeline.clf, data, device, 5, threshold=0.3, seed=0)
    again = kh.select_high_confidence(pipeline.sae, pipeline.clf, data, device, 5, threshold=0.3, seed=0)
    assert torch.equal(sel.indices, again.indices)
    assert torch.bincount(sel.y, minlength=10).tolist() == [5] * 10
    probs = kh.predict(pipeline.sae, pipeline.clf, sel.x, device)
    assert (probs.argmax(1) == sel.y).all() and (probs.max(1).values > 0.3).all()
    assert torch.equal(data.y_test[sel.indices], sel.y)
    assert sel.warning is None and sel.shortfalls == {} and not sel.fallback.any()
    with pytest.warns(UserWarning, match="fewer for"):  # asking for more than exists takes what exists
        big = kh.select_high_confidence(pipeline.sae, pipeline.clf, data, device, 5000, threshold=0.3)
    assert big.per_class(data.classes) == {n: s["selected"] for n, s in big.shortfalls.items()}
    with pytest.raises(ValueError):
        kh.select_high_confidence(pipeline.sae, pipeline.clf, data, device, 0)
