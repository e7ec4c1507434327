"""ksae.checks.randomization: model randomization (cascading and independent) against different-class
references, on a small random pipeline and on a small trained one.
"""

import pytest
import torch

import ksae.checks.randomization
import ksae_helpers as kh


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
