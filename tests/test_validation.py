"""The evaluation section on small synthetic models whose answers are known."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import ksae._util
import ksae.checks.verdicts
import ksae.stats
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
    cascade, single = result["variants"]["cascading"]["all"], result["variants"]["independent"]["all"]
    simple = [s["mean"] for s in cascade["simple"]]
    assert len(simple) == len(result["stages"]) == 5
    assert simple[0] < 0.95  # re-initialising the logit layer already changes the gradient
    assert simple[-2] < 0.5  # after the encoder, little of the original map is left
    # Randomizing the decoder atoms changes nothing the model computes, only the decoder-weighted map.
    assert simple[-1] == pytest.approx(simple[-2])
    decoder = [s["mean"] for s in cascade["decoder"]]
    assert decoder[-1] < decoder[-2]
    # Independent: stage s alone, with the same random weights as the cascade's stage s
    assert single["simple"][0]["mean"] == pytest.approx(simple[0])
    assert single["simple"][-1]["mean"] == pytest.approx(1.0)  # the decoder atoms alone change no gradient
    assert single["decoder"][-1]["mean"] < 0.9
    # References pair images of different classes; each pixel set has its own
    ref = result["reference"]["simple"]
    assert set(ref) == {"all", "object"} and ref["all"]["n"] == 30
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


def test_bootstrap_ci_of_the_mean_is_the_mean_of_the_seeded_resamples():
    # the mean's fast path (cached draw counts times the values) is the index resampling it replaces
    rng = np.random.default_rng(1)
    for n, seed in [(1, 0), (7, 3), (300, 5), (300, 5), (1000, 2)]:
        values = rng.normal(size=n)
        draws = np.random.default_rng(seed).integers(0, n, size=(500, n))
        means = values[draws].mean(1)
        expected = np.quantile(means, 0.05), np.quantile(means, 0.95)
        np.testing.assert_allclose(kh.bootstrap_ci(values, n_boot=500, level=0.9, seed=seed), expected, rtol=1e-12)
        both = np.stack([values, values], 1)  # [N, 2] rows: the general path, same draws
        np.testing.assert_allclose(kh.bootstrap_ci(both, n_boot=500, level=0.9, seed=seed,
                                                   statistic=lambda r: r[..., 0].mean(1)), expected, rtol=1e-12)
    assert not ksae.stats._bootstrap_counts(7, 500, 3).flags.writeable


def test_rowwise_correlations_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 50))
    b = a + rng.normal(size=(5, 50))
    b[:, :10] = 0.0  # ties
    for i, r in enumerate(kh.rowwise_spearman(a, b)):
        assert r == pytest.approx(spearmanr(a[i], b[i]).statistic)
    for i, r in enumerate(ksae.stats._rowwise_pearson(a, b)):
        assert r == pytest.approx(pearsonr(a[i], b[i]).statistic)


def test_cross_method_statistics_on_identical_and_independent_maps():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(50, 784, generator=g)
    stats = kh.cross_method_statistics({"a": m, "b": m.clone(), "c": torch.randn(50, 784, generator=g)})
    same, indep = stats["pairs"]["a|b"], stats["pairs"]["a|c"]
    assert same["spearman_signed"]["mean"] == pytest.approx(1.0)
    assert same["top1pct_iou"]["mean"] == pytest.approx(1.0)
    assert abs(indep["pearson_signed"]["mean"]) < 0.02
    assert indep["pearson_signed"]["ci95"][0] < 0 < indep["pearson_signed"]["ci95"][1]
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


def _summary(mean, half=0.01):
    return {"mean": mean, "ci95": [mean - half, mean + half], "std": 0.0, "n": 10}


def _fake_validation(ig_zero=True, ig_road=False, seedless=False):
    """A hand-made ``run_validation`` result: IG beats random on zero and blur but (optionally) not on ROAD;
    simple gradients falls to its randomization reference, IG does not; decoder-weighted's unit order wins."""
    subs = ("zero", "blur", "road")
    beats = {"integrated/signed": {"zero": ig_zero, "blur": True, "road": ig_road},
             "simple/signed": {s: False for s in subs}}
    obj = {s: s == "zero" for s in subs}  # beats the object-pixel random order on the zero substrate only
    faith = {"substrates": {s: {"orderings": {k: {"gap": _summary(0.5 if b[s] else -0.1),
                                                  "vs_random_object": {"mean_diff": 0.2 if obj[s] else -0.2}}
                                              for k, b in beats.items()}} for s in subs},
             "verdicts": {k: {"beats_random": b, "rank": {s: 1 + (k != "integrated/signed") for s in subs},
                              "beats_random_object": obj} for k, b in beats.items()}}
    stages = ["classifier layer 3 (logits)", "encoder", "decoder atoms"]
    sim = {"integrated": 0.8, "simple": 0.02}  # similarity to the original map after each stage
    rand = {"stages": stages, "reference": {m: {p: _summary(0.05) for p in ("all", "object")} for m in sim},
            "variants": {v: {p: {m: [_summary(s)] * 3 for m, s in sim.items()} for p in ("all", "object")}
                         for v in ("cascading", "independent")}}
    comp = {"method": "gausslegendre", "n_steps": 50, "tolerance": 0.01,
            "table": {"gausslegendre": {"50": {"median_rel_error": 0.2}}}}
    return {"faithfulness": faith, "randomization": rand, "completeness": comp}


def test_verdict_table_reads_every_test_from_the_results():
    rows = {(r["ordering"], r["test"]): r for r in kh.verdict_table(_fake_validation())}
    ig, grad = "integrated/signed", "simple/signed"
    assert [rows[ig, f"faithful_{s}"]["passes"] for s in ("zero", "blur", "road")] == [True, True, False]
    assert rows[ig, "faithful_zero"]["rank"] == 1 and rows[grad, "faithful_zero"]["rank"] == 2
    assert rows[ig, "faithful_blur"]["value"] == 0.5
    assert [rows[ig, f"object_{s}"]["passes"] for s in ("zero", "blur", "road")] == [True, False, False]
    assert rows[ig, "object_road"]["value"] == -0.2
    assert not rows[ig, "randomization_cascading"]["passes"] and not rows[ig, "randomization_independent"]["passes"]
    assert rows[grad, "randomization_cascading"]["passes"] and rows[grad, "randomization_independent"]["passes"]
    assert not rows[ig, "completeness"]["passes"] and rows[ig, "completeness"]["value"] == 0.2
    assert (grad, "completeness") not in rows  # completeness is a claim only integrated gradients makes


def test_unit_causality_verdict_needs_every_order_and_score_to_win():
    win = {"p_value": 1e-6}
    unit = {"tests": {"deletion": {"logit": {"vs_random": {**win, "mean_diff": -1.0},
                                             "vs_activation": {**win, "mean_diff": -0.5}}},
                      "insertion": {"logit": {"vs_random": {**win, "mean_diff": 2.0},
                                              "vs_activation": {**win, "mean_diff": 1.0}}}}}
    assert ksae.checks.verdicts._unit_causality_passes(unit)
    unit["tests"]["insertion"]["logit"]["vs_activation"]["mean_diff"] = -1.0  # worse than activation order
    assert not ksae.checks.verdicts._unit_causality_passes(unit)


def test_verdict_statements_say_where_a_verdict_flips():
    per_seed = {0: kh.verdict_table(_fake_validation()), 1: kh.verdict_table(_fake_validation(ig_zero=False)),
                2: kh.verdict_table(_fake_validation(ig_road=True))}
    said = kh.verdict_statements(per_seed)
    ig = [s for s in said["flips"] if s.startswith("Integrated gradients (signed):")]
    assert ig == ["Integrated gradients (signed): beats the random order on blur; depends on the seed on zero, road.",
                  "Integrated gradients (signed): beats a random order over object pixels on zero; not on blur, road."]
    assert "Simple gradients (signed) does not beat the random order on any substrate." in said["fails"]
    assert "Simple gradients (signed) passes the cascading randomization check in every seed." in said["holds"]
    assert any(s.startswith("Integrated gradients (signed) fails completeness") for s in said["fails"])
    assert not any(s.startswith("Integrated gradients") for s in said["holds"])
    # a family with no test among the rows is not stated at all (not "holds on every substrate" of none)
    no_object = {seed: [r for r in rows if not r["test"].startswith("object_")] for seed, rows in per_seed.items()}
    assert not any("over object pixels" in s for kind in kh.verdict_statements(no_object).values() for s in kind)
    same = kh.verdict_statements({0: kh.verdict_table(_fake_validation(ig_road=True))})
    assert any(s.startswith("Integrated gradients (signed) beats the random order on every substrate")
               for s in same["holds"])


def test_run_validation_end_to_end_and_its_verdicts_survive_json(small_pipeline):
    pipeline, data, cfg = small_pipeline
    sel = kh.select_high_confidence(pipeline.sae, pipeline.clf, data, torch.device("cpu"), 4, 0.0, 0)
    maps = kh.attribute_all(pipeline, sel.x, sel.y, cfg)
    val = kh.run_validation(pipeline, sel, cfg, maps, n_subset=20, n_completeness=6, n_randomization=6)
    assert set(val["seconds"]) == {"cross_method", "faithfulness", "object_focus", "completeness", "randomization",
                                   "unit_deletion", "total"}
    assert val["faithfulness"]["substrates"]["zero"]["n_images"] == len(sel.y)
    assert val["faithfulness"]["substrates"]["road"]["n_images"] == 20
    assert val["completeness"]["n_steps"] == cfg.ig_steps and val["randomization"]["n_images"] == 6
    rows = kh.verdict_table(val)
    tests = {r["test"] for r in rows}
    assert tests == set(kh.VERDICT_TESTS)
    assert {r["method"] for r in rows} == set(maps)
    # the summary is JSON (string keys): the verdicts read from it are the same
    again = kh.verdict_table(json.loads(json.dumps(ksae._util._jsonable(val))))
    assert again == json.loads(json.dumps(rows))


def test_verdict_markdown_marks_passes_ranks_and_seeds(tmp_path):
    rows = kh.verdict_table(_fake_validation())
    text = kh.verdict_markdown(rows)
    ig_line = next(line for line in text.splitlines() if line.startswith("| Integrated gradients (signed)"))
    cells = [c.strip() for c in ig_line.strip("|").split("|")]
    assert cells[1:4] == ["✓ (rank 1)", "✓ (rank 1)", "✗ (rank 1)"] and cells[-1] == "—"  # no unit causality
    assert "this run only" in text
    assert "| Integrated gradients (&#124;value&#124;) |" in kh.verdict_markdown(
        [{**r, "ordering": "integrated/abs"} for r in rows])  # no bare | inside a table cell
    seeds = {"seeds": [0, 1], "stability": [{"ordering": "integrated/signed", "test": "faithful_zero",
                                             "passes": {"0": True, "1": False}}],
             "statements": {"holds": [], "fails": ["X fails."], "flips": []}}
    text = kh.verdict_markdown(rows, seeds)
    assert "✓ (rank 1) · seeds ✓✗" in text and "- X fails." in text and "2 training seeds" in text
    # the seed file is used only for the configuration it was measured with
    path = tmp_path / "v.json"
    path.write_text(json.dumps({**seeds, "config": {**kh.Config().to_dict(), "seed": None}}))
    assert kh.seeds_for_config(path, kh.Config(seed=5)) is not None
    assert kh.seeds_for_config(path, kh.Config(k=20)) is None
    assert kh.seeds_for_config(tmp_path / "missing.json", kh.Config()) is None
    # an execution field changes no result: a file written without it (or with another value) still matches
    config = {k: v for k, v in kh.Config().to_dict().items() if k != "cuda_graphs"}
    path.write_text(json.dumps({**seeds, "config": {**config, "seed": None}}))
    assert kh.seeds_for_config(path, kh.Config(cuda_graphs=False)) is not None
    assert kh.seeds_for_config(path, kh.Config(ig_steps=20)) is None  # an attribution setting does
