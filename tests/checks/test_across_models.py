"""The model-comparing checks are the project's checks: per-image faithfulness gaps average to faithfulness_suite's,
the generic cascade draws randomization_check's weights, the unit-deletion gaps are unit_deletion_curves' difference."""

import pytest
import torch

import ksae_helpers as kh
from ksae.checks.across_models import _randomization_groups


def test_faithfulness_gaps_average_to_the_suites(small):
    pipe, x, y, maps = small["pipe"], small["x"], small["y"], small["maps"]
    maps = {m: maps[m] for m in ("integrated", "simple")}
    suite = kh.faithfulness_suite(pipe, x, y, maps, n_subset=6, seed=3)
    gaps = kh.faithfulness_gaps(pipe, x, y, maps, n_subset=6, seed=3)
    for sub, entry in suite["substrates"].items():
        assert len(gaps[sub]["images"]) == entry["n_images"]
        keys = [k for k, e in entry["orderings"].items() if e["kind"] == "method"] + ["random"]
        assert sorted(k for k in gaps[sub] if k != "images") == sorted(keys)
        for key in keys:
            assert gaps[sub][key].mean() == pytest.approx(entry["orderings"][key]["gap"]["mean"], abs=1e-6), (sub, key)


def test_cascading_randomization_draws_the_weights_randomization_check_draws(small):
    pipe, x, y, cfg = small["pipe"], small["x"], small["y"], small["cfg"]
    methods = ("integrated", "simple")
    before = {k: v.clone() for k, v in pipe.state_dict().items()}
    ref = kh.randomization_check(pipe, x, y, cfg, methods, seed=2, variants=("cascading",))
    fn = lambda m: {"integrated": kh.integrated_gradients(m, x, y, n_steps=cfg.ig_steps, method=cfg.ig_method),  # noqa
                    "simple": kh.simple_gradients(m, x, y)}
    ours, per_image = kh.cascading_randomization(pipe, x, y, fn, seed=2)
    assert ours["stages"] == ref["stages"][:len(ours["stages"])] and ours["stages"][-1] == "encoder"
    for m in methods:
        for s in range(len(ours["stages"])):
            assert ours["similarity"][m][s]["mean"] == pytest.approx(ref["variants"]["cascading"]["all"][m][s]["mean"],
                                                                     abs=1e-9)
        assert ours["reference"][m]["mean"] == pytest.approx(ref["reference"][m]["all"]["mean"], abs=1e-9)
        assert ours["final_minus_reference"][m]["mean"] == pytest.approx(
            (per_image[m]["final"] - per_image[m]["reference"]).mean())
    assert all(torch.equal(before[k], v) for k, v in pipe.state_dict().items())  # the model itself is untouched


def test_randomization_groups_of_each_model_kind(small):
    pipe = small["pipe"]
    names = [n for n, _ in _randomization_groups(pipe)]
    assert names == ["classifier layer 3 (logits)", "classifier layer 2", "classifier layer 1", "encoder"]
    pixels = kh.LinearCodePipeline(kh.LinearCode(None), kh.SparseCodeClassifier(784, (8, 4), 3, 0.0)).eval()
    assert [n for n, _ in _randomization_groups(pixels)][-1] == "classifier layer 1"  # no code weights to randomise
    pca = kh.LinearCodePipeline(kh.LinearCode(torch.eye(5, 784)), kh.SparseCodeClassifier(5, (8, 4), 3, 0.0))
    assert _randomization_groups(pca)[-1][1][0] is pca.code.components
    with pytest.raises(ValueError, match="model must be"):
        _randomization_groups(torch.nn.Linear(784, 3))


def test_unit_deletion_gaps_are_unit_deletion_curves_difference(small):
    pipe, x, y = small["pipe"], small["x"], small["y"]
    _, contributions = kh.decoder_weighted(pipe, x, y, return_contributions=True)
    gaps = kh.unit_deletion_gaps(pipe, x, y, contributions, seed=4)
    ref = kh.unit_deletion_curves(pipe, x, y, contributions, seed=4)
    assert gaps.shape == (len(x),)
    assert gaps.mean() == pytest.approx(-ref["tests"]["deletion"]["logit"]["vs_random"]["mean_diff"], abs=1e-5)
    with pytest.raises(ValueError, match="contributions must be a tensor of shape"):
        kh.unit_deletion_gaps(pipe, x, y, contributions[:, :3])
    with pytest.raises(ValueError, match="pipeline must be a SparseCodePipeline"):
        kh.unit_deletion_gaps(pipe.clf, x, y, contributions)
