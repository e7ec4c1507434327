"""Validation checks of section 9 on hand-built models whose answers are known by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ksae.checks.completeness
import ksae.checks.randomization
import ksae.plots.style
import ksae.stats
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


# --- unit-level causality -----------------------------------------------------------------------------

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


# --- agreement against a different-image null -------------------------------------------------------------

def test_partner_images_pair_within_and_across_classes():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    same = kh.partner_images(labels, same_class=True, seed=1)
    assert (same != np.arange(9)).all() and (labels.numpy()[same] == labels.numpy()).all()
    assert sorted(same) == list(range(9))  # a cycle per class: every image is a partner once
    other = kh.partner_images(labels, same_class=False, seed=1)
    assert (labels.numpy()[other] != labels.numpy()).all()
    assert (kh.partner_images(labels, True, seed=1) == same).all()
    with pytest.raises(ValueError, match="at least 2 per class"):
        kh.partner_images(torch.tensor([0, 0, 1]), same_class=True)
    with pytest.raises(ValueError, match="at least 2 classes"):
        kh.partner_images(torch.tensor([0, 0, 0]), same_class=False)
    with pytest.raises(ValueError, match="integer class ids"):
        kh.partner_images(torch.tensor([0.0, 1.0]), same_class=False)


def test_rowwise_spearman_on_masked_pixels_matches_scipy_on_the_subset():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 60))
    b = a + rng.normal(size=(5, 60))
    b[:, :10] = 0.0  # ties
    mask = rng.random((5, 60)) > 0.4
    for i, r in enumerate(kh.rowwise_spearman(a, b, mask)):
        assert r == pytest.approx(spearmanr(a[i, mask[i]], b[i, mask[i]]).statistic)


def test_row_ranks_are_scipys_average_ranks_with_ties_and_masks():
    from scipy.stats import rankdata

    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(6, 40)).astype(float)  # many ties
    a[0] = 2.0  # one run of ties over the whole row
    a[1] = np.arange(40)[::-1]  # no ties
    a[2, :3] = [-np.inf, np.inf, np.inf]
    mask = rng.random((6, 40)) > 0.5
    mask[3] = False  # nothing ranked
    mask[4] = True
    np.testing.assert_array_equal(ksae.stats._row_ranks(a), rankdata(a, axis=1))
    expected = rankdata(np.where(mask, a, np.nan), axis=1, nan_policy="omit")
    np.testing.assert_array_equal(ksae.stats._row_ranks(a, mask), expected)
    assert np.isnan(ksae.stats._row_ranks(a, mask)[3]).all() and ksae.stats._row_ranks(a[:, :1]).tolist() == [[1.0]] * 6


def gaussian_spearman(r):
    """Spearman's rho of a bivariate normal with Pearson correlation r."""
    return 6 / np.pi * np.arcsin(r / 2)


def test_agreement_excess_over_the_same_class_null():
    # maps = class template + image-specific part (+ method noise), each of variance 1
    g = torch.Generator().manual_seed(0)
    n, labels = 400, torch.arange(400) % 4
    template, own = torch.randn(4, 784, generator=g)[labels], torch.randn(n, 784, generator=g)
    noise = [torch.randn(n, 784, generator=g) for _ in range(4)]
    maps = {"a": template + own + noise[0], "b": template + own + noise[1],  # share the image: value 2/3, null 1/3
            "c": template + noise[2], "d": template + noise[3]}  # share only the class: value = null = 1/2
    x = torch.rand(n, 784, generator=g) + 0.01  # every pixel is an object pixel: both pixel sets agree
    stats = kh.cross_method_statistics(maps, seed=0, x=x, labels=labels)
    shared = stats["pairs"]["a|b"]["vs_null"]["spearman_signed_all"]
    assert shared["value"]["mean"] == pytest.approx(gaussian_spearman(2 / 3), abs=0.01)
    assert shared["null"]["mean"] == pytest.approx(gaussian_spearman(1 / 3), abs=0.01)
    assert shared["excess"]["p_value"] < 1e-6 and shared["excess"]["ci95"][0] > 0.25
    class_only = stats["pairs"]["c|d"]["vs_null"]["spearman_signed_all"]
    assert class_only["value"]["mean"] == pytest.approx(gaussian_spearman(1 / 2), abs=0.01)
    assert abs(class_only["excess"]["mean"]) < 0.01 and class_only["excess"]["ci95"][0] < 0 < class_only[
        "excess"]["ci95"][1]
    obj = stats["pairs"]["a|b"]["vs_null"]["spearman_signed_object"]
    assert obj["excess"]["mean"] == pytest.approx(shared["excess"]["mean"])
    mat = kh.correlation_matrix(stats, ["a", "b", "c"], "spearman_signed_all", "excess")
    assert mat[0, 1] == mat[1, 0] == pytest.approx(shared["excess"]["mean"]) and np.isnan(mat[0, 0])


def test_agreement_null_leaves_out_images_alone_in_their_class():
    # a class with one selected image (a selection fallback) has no same-class partner: value and null are
    # measured on the other images only, so both sides of the comparison see the same images
    g = torch.Generator().manual_seed(2)
    n, labels = 61, torch.cat([torch.arange(60) % 3, torch.tensor([3])])
    maps = {"a": torch.randn(n, 784, generator=g), "b": torch.randn(n, 784, generator=g)}
    maps["b"][-1] = maps["a"][-1]  # the lone image's maps agree perfectly: it must not enter the value
    x = torch.rand(n, 784, generator=g) + 0.01
    stats = kh.cross_method_statistics(maps, seed=0, x=x, labels=labels)
    assert stats["null_n_images"] == 60
    value = stats["pairs"]["a|b"]["vs_null"]["spearman_signed_all"]["value"]["mean"]
    reference = kh.cross_method_statistics({m: v[:60] for m, v in maps.items()}, seed=0, x=x[:60], labels=labels[:60])
    assert value == pytest.approx(reference["pairs"]["a|b"]["vs_null"]["spearman_signed_all"]["value"]["mean"])
    assert abs(value) < 0.05  # independent maps; with the lone image it would be about 1/61 higher
    alone = kh.cross_method_statistics(maps, seed=0, x=x, labels=torch.arange(n))  # every class has one image
    assert alone["null_n_images"] == 0 and "vs_null" not in alone["pairs"]["a|b"]
    assert alone["pairs"]["a|b"]["spearman_signed"]["mean"] > value  # the plain statistic still uses all images


def test_agreement_null_uses_pixels_that_are_object_in_both_images():
    # method maps equal the image itself: on object pixels only the ranks of intensities remain
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 784, generator=g)
    x[:3, 392:] = 0.0  # class 0: object is the first half
    x[3:, :392] = 0.0  # class 1: object is the second half
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    stats = kh.cross_method_statistics({"a": x, "b": x.clone()}, x=x, labels=labels)
    entry = stats["pairs"]["a|b"]["vs_null"]["spearman_signed_object"]
    assert entry["value"]["mean"] == pytest.approx(1.0)
    # independent uniform intensities on the shared object half: null near 0, not the all-pixel null
    assert abs(entry["null"]["mean"]) < 0.15
    assert stats["pairs"]["a|b"]["vs_null"]["spearman_signed_all"]["null"]["mean"] > 0.3  # zeros shared
    with pytest.raises(ValueError, match="both x and labels"):
        kh.cross_method_statistics({"a": x, "b": x}, x=x)


# --- randomization and figures on a small random pipeline ---------------------------------------------------

@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    sae = kh.KSparseAutoencoder(k=4, d_hidden=32)
    clf = kh.SparseCodeClassifier(d_hidden=32, hidden=(16, 8), n_classes=3)
    pipe = kh.SparseCodePipeline(sae, clf).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 784, generator=g) * (torch.rand(12, 784, generator=g) > 0.5)
    y = torch.arange(12) % 3
    cfg = kh.Config(k=4, d_hidden=32, clf_hidden=(16, 8), n_classes=3, ig_steps=8, smoothgrad_samples=2)
    maps = kh.attribute_all(pipe, x, y, cfg)
    _, contrib = kh.decoder_weighted(pipe, x, y, return_contributions=True)
    return {"pipe": pipe, "x": x, "y": y, "cfg": cfg, "maps": maps,
            "rand": kh.randomization_check(pipe, x, y, cfg),
            "stats": kh.cross_method_statistics(maps, x=x, labels=y),
            "units": kh.unit_deletion_curves(pipe, x, y, contrib.detach()),
            "comp": kh.ig_completeness(pipe, x, y, n_steps_list=(8, 16)),
            "dec": kh.completeness_decomposition(pipe, x, y, n_steps_list=(8, 200))}


def test_randomization_variants_and_references(small):
    rand, pipe, x, y = small["rand"], small["pipe"], small["x"], small["y"]
    cascade, single = rand["variants"]["cascading"], rand["variants"]["independent"]
    for pixels in ("all", "object"):
        # stage 0 is the same re-initialisation in both variants
        assert single[pixels]["simple"][0]["mean"] == pytest.approx(cascade[pixels]["simple"][0]["mean"])
        # the decoder atoms alone change no gradient-based map, only the decoder-weighted one
        assert single[pixels]["integrated"][-1]["mean"] == pytest.approx(1.0)
        assert single[pixels]["decoder"][-1]["mean"] < 1.0
    # the reference pairs each image with one of another class, on all pixels and on shared object pixels
    partner = kh.partner_images(y, same_class=False, seed=0)
    a = small["maps"]["simple"].abs().double().numpy()
    obj = x.numpy() > 0
    expected_all = kh.rowwise_spearman(a, a[partner]).mean()
    expected_obj = kh.rowwise_spearman(a, a[partner], obj & obj[partner]).mean()
    assert rand["reference"]["simple"]["all"]["mean"] == pytest.approx(expected_all)
    assert rand["reference"]["simple"]["object"]["mean"] == pytest.approx(expected_obj)
    torch.testing.assert_close(pipe(x), kh.SparseCodePipeline(pipe.sae, pipe.clf)(x))  # model untouched
    # the check reuses the other maps at the decoder stage: the model's output must not read the atoms
    import copy

    model = copy.deepcopy(pipe)
    stage = rand["stages"].index(kh.DECODER_STAGE)
    ksae.checks.randomization._randomize_stage_(model, stage, torch.Generator().manual_seed(0))
    assert not torch.equal(model.sae.W_dec, pipe.sae.W_dec) and torch.equal(model(x), pipe(x))
    rows = kh.randomization_table(rand)
    assert len(rows) == 1 + len(kh.METHOD_LABELS) and rows[1][0] == "Integrated gradients"


def assert_labels_inside(fig):
    """Every axes' labels, titles and legends, the suptitle and figure legends lie inside ``fig`` (fixed layouts
    clip nothing); returns ``fig``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    with ksae.plots.style._figure_style():
        canvas.draw()
        renderer = canvas.get_renderer()
        tolerance = 2  # pixels
        for artist in [*fig.axes, *fig.legends, *([fig._suptitle] if fig._suptitle else [])]:
            box = artist.get_tightbbox(renderer) if artist in fig.axes else artist.get_window_extent(renderer)
            assert box.x0 >= -tolerance and box.y0 >= -tolerance, (artist, box)
            assert box.x1 <= fig.bbox.x1 + tolerance and box.y1 <= fig.bbox.y1 + tolerance, (artist, box)
    return fig


def test_figures_render_with_their_series(small):
    import time

    t0 = time.perf_counter()
    fig = assert_labels_inside(kh.plot_randomization(small["rand"]))
    axes = fig.axes
    assert len(axes) == 4 and "Independent, object pixels" in axes[3].get_title()
    dashed = [line for line in axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == len(kh.METHOD_LABELS)  # one reference per method
    fig = assert_labels_inside(kh.plot_unit_deletion(small["units"]))
    assert len(fig.axes) == 4 and "Deletion" in fig.axes[0].get_title()
    assert len(fig.axes[0].get_legend().get_texts()) == 3
    fig = assert_labels_inside(kh.plot_completeness(small["dec"]))
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 4
    sweep = assert_labels_inside(kh.plot_completeness(small["comp"]))  # the ig_completeness sweep (no 50 steps)
    assert len(sweep.axes) == 2  # its old figure
    fig = assert_labels_inside(kh.plot_correlation_summary(small["stats"], list(small["maps"])))
    assert "null" in fig.axes[0].get_xlabel()
    assert time.perf_counter() - t0 < 15  # generous: four figures, each well under the 1.5 s target alone


def test_figures_reject_results_that_do_not_fit(small):
    with pytest.raises(ValueError, match="lacks"):
        kh.plot_unit_deletion({"curves": {}})
    broken = {**small["rand"], "stages": small["rand"]["stages"][:-1]}
    with pytest.raises(ValueError, match="stages, expected"):
        kh.plot_randomization(broken)


@pytest.mark.parametrize("n_points", [1, 2, 9, 50, 257])
def test_path_top_k_finds_the_same_sets_as_topk_at_every_point(n_points):
    """Straight paths whose top-k sets change many times (k = 4 of 32 units): the strided search with
    re-checks between differing sets gives every point's exact set and ReLU'd values."""
    sae = kh.KSparseAutoencoder(k=4, d_hidden=32)
    g = torch.Generator().manual_seed(n_points)
    c, d = torch.randn(3, 1, 32, generator=g), 3 * torch.randn(3, 1, 32, generator=g)
    alphas = torch.rand(n_points, generator=g).sort().values
    pre = c + alphas[None, :, None] * d  # [3, S, 32]
    values, indices = ksae.checks.completeness._path_top_k(sae, pre)
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


def test_randomization_runs_only_the_variants_asked_for(small):
    pipe, x, y, cfg = small["pipe"], small["x"], small["y"], small["cfg"]
    only = kh.randomization_check(pipe, x, y, cfg, methods=("simple",), variants=("cascading",))
    assert list(only["variants"]) == ["cascading"]
    full = small["rand"]["variants"]["cascading"]
    for pixels in ("all", "object"):  # the same cascade as the default run's
        assert [s["mean"] for s in only["variants"]["cascading"][pixels]["simple"]] == pytest.approx(
            [s["mean"] for s in full[pixels]["simple"]])
    fig = kh.plot_randomization(only)  # one row of panels: the variant that ran
    assert len(fig.axes) == len(kh.PIXEL_SETS) and fig.get_figheight() == kh.RANDOMIZATION_ROW_INCHES
    for bad in ("cascading", (), ("cascading", "shuffled")):
        with pytest.raises(ValueError, match="variants must be a non-empty sequence"):
            kh.randomization_check(pipe, x, y, cfg, methods=("simple",), variants=bad)


def test_agreement_functions_reject_bad_input(small):
    maps, x, y = small["maps"], small["x"], small["y"]
    with pytest.raises(ValueError, match="at least two methods"):
        kh.cross_method_statistics({"simple": maps["simple"]})
    with pytest.raises(ValueError, match="integer class ids"):
        kh.cross_method_statistics(maps, x=x, labels=y[:5])
    with pytest.raises(ValueError, match="x holds 5 maps but there are 12 images"):
        kh.cross_method_statistics(maps, x=x[:5], labels=y)
    with pytest.raises(ValueError, match="same_class must be True or False"):
        kh.partner_images(y, same_class="yes")
    with pytest.raises(ValueError, match="statistic must be"):
        kh.correlation_matrix(small["stats"], list(maps), "spearman_signed_all", "median")
    with pytest.raises(ValueError, match="integer class ids"):
        kh.randomization_check(small["pipe"], x, y, small["cfg"], methods=("simple",), labels=y[:3])


def test_decomposition_table_over_steps(small):
    dec, pipe, x, y = small["dec"], small["pipe"], small["x"], small["y"]
    gl, trapezoid = dec["table"]["gausslegendre"], dec["table"]["riemann_trapezoid"]
    assert sorted(gl) == [8, 50, 200] and sorted(trapezoid) == [17, 33, 65, 129, 257, 513, 1025]
    gap = np.abs(np.array(dec["per_image"]["gap"]))
    for table, method, n in ((gl, "gausslegendre", 200), (trapezoid, "riemann_trapezoid", 33)):
        _, delta = kh.integrated_gradients(pipe, x, y, n_steps=n, method=method, return_convergence_delta=True)
        rel = np.abs(delta.detach().double().numpy()) / gap
        assert table[n]["median_rel_error"] == pytest.approx(np.median(rel), rel=1e-4)
        mismatch = np.abs(delta.detach().double().numpy() + np.array(dec["per_image"]["jump_sum"])) / gap
        assert table[n]["share_within_tolerance"] == pytest.approx((mismatch <= 0.01).mean())
    assert gl[50]["median_mismatch"] == pytest.approx(np.median(dec["per_image"]["mismatch"]))
    # the trapezoid on every scan point is the scan's own gradient integral: its mismatch is the residual
    assert trapezoid[1025]["median_mismatch"] == pytest.approx(
        np.median(np.abs(dec["per_image"]["residual"]) / gap), abs=1e-6)
