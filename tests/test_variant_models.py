"""The variants study's models: cached models are what ``train_models`` trains, the knob search lands where it
should, and the measurements equal their direct computation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ksae.variant_models as vm
import ksae_helpers as kh
from ksae.variant_study import _ledger_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py
CPU = torch.device("cpu")
TINY = dict(k=4, d_hidden=32, clf_hidden=(16, 8), train_subset=400, ae_epochs=1, clf_epochs=1, n_val=500,
            batch_size=64)


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cached_models_are_what_train_models_trains(data, tmp_path):
    cfg = kh.Config(**TINY, seed=3)
    sae_ref, clf_ref, _ = kh.train_models(cfg, data, CPU)
    ledger = []
    sae, history, trained = vm._autoencoder(cfg, data, CPU, tmp_path, verbose=False, ledger=ledger)
    assert trained and _states_equal(sae, sae_ref) and (tmp_path / f"ae_{cfg.checkpoint_name()}").is_file()
    sae2, clf, _, trained = vm._model_pair(cfg, data, CPU, tmp_path, verbose=False, ledger=ledger)
    assert trained and _states_equal(sae2, sae_ref) and _states_equal(clf, clf_ref)
    assert not (tmp_path / f"ae_{cfg.checkpoint_name()}").exists()  # the pair holds the autoencoder now
    # the pair is the file load_or_train writes and reads: same name, same models
    sae3, clf3, _, metrics = kh.load_or_train(cfg, data, CPU, tmp_path, verbose=False)
    assert _states_equal(sae3, sae_ref) and _states_equal(clf3, clf_ref) and "classifier" in metrics
    again = vm._autoencoder(cfg, data, CPU, tmp_path, verbose=False, ledger=ledger)  # read from the pair
    assert not again[2] and _states_equal(again[0], sae_ref)
    assert again[1] == {"ae": history["ae"], "seconds": history["seconds"]}  # the pair's autoencoder part
    summary = _ledger_summary(ledger)
    pair_seconds = torch.load(tmp_path / cfg.checkpoint_name(), weights_only=True)["history"]["seconds"]
    assert summary["models"] == 1 and summary["trained_now"] == 1
    assert summary["train_seconds_now"] == pytest.approx(pair_seconds["ae"] + pair_seconds["clf"])


def test_a_cached_model_of_another_recipe_is_refused(data, tmp_path):
    cfg = kh.Config(**TINY)
    vm._autoencoder(cfg, data, CPU, tmp_path, verbose=False)
    path = tmp_path / f"ae_{cfg.checkpoint_name()}"
    payload = torch.load(path, weights_only=True)
    payload["config"]["lr"] = 0.5
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"another configuration.*'lr': \(0\.001, 0\.5\)"):
        vm._autoencoder(cfg, data, CPU, tmp_path, verbose=False)


def test_measure_equals_the_direct_computation(data):
    cfg = kh.Config(**TINY)
    sae, clf, _ = kh.train_models(cfg, data, CPU)
    pixel = kh.LinearCodePipeline(kh.LinearCode(None), kh.SparseCodeClassifier(784, (16, 8))).eval()
    row, raw = vm._measure(sae, data, cfg, CPU, kh.SparseCodePipeline(sae, clf), pixel, seed=0)
    with torch.no_grad():
        z = sae.encode(data.x_test)
        hat = sae.decode(z)
        pred = kh.SparseCodePipeline(sae, clf)(data.x_test).argmax(1)
        pix_orig = pixel(data.x_test).argmax(1)
        pix_rec = pixel(hat).argmax(1)
    assert row["fvu"] == pytest.approx(float(kh.fvu(hat, data.x_test)), rel=1e-5)
    assert row["fvu"] == pytest.approx(kh.dataset_fvu(sae, data.x_test, CPU), rel=1e-5)
    assert row["fvu_ci95"][0] < row["fvu"] < row["fvu_ci95"][1]
    fires = (z > 0).double().mean(0)
    assert row["test_l0"] == pytest.approx(float((z > 0).sum(1).double().mean()))
    assert row["dead_units"] == int((fires == 0).sum()) and row["dense_units"] == int((fires > 0.1).sum())
    assert row["accuracy"] == pytest.approx(float((pred == data.y_test).double().mean()))
    assert row["pixel_accuracy"] == pytest.approx(float((pix_rec == data.y_test).double().mean()))
    assert row["accuracy_recovered"] == pytest.approx(row["pixel_accuracy"] / float((pix_orig == data.y_test)
                                                                                   .double().mean()))
    _, _, x_val, _ = kh.train_val_split(data, cfg)
    assert row["val_l0"] == pytest.approx(float((sae.encode(x_val) > 0).sum(1).double().mean()))
    assert raw["correct"].mean() == row["accuracy"] and len(raw["sse"]) == len(data.x_test)


def _fake_training(monkeypatch, law, knob="k", how="count"):
    """Replace training by a model whose validation L0 is ``law(knob value, epochs)``; returns the calls."""
    calls = []

    def fake_autoencoder(cfg, data, device, ckpt_dir, tag="", verbose=True, ledger=None):
        calls.append((getattr(cfg, knob), cfg.ae_epochs))
        return SimpleNamespace(l0=law(getattr(cfg, knob), cfg.ae_epochs)), {"seconds": {"ae": 1.0}}, True

    monkeypatch.setattr(vm, "_autoencoder", fake_autoencoder)
    monkeypatch.setattr(vm, "_codes_l0", lambda sae, x, device: sae.l0)
    return calls


def test_count_knob_search_corrects_a_thresholded_l0(monkeypatch, data):
    """A kind whose validation L0 is 1.2 k (BatchTopK's threshold at inference differs from k): the first try at
    k = target misses by 20 %; one step of the log-log law lands within 5 %; the next target starts from the
    ratio found and needs one try."""
    calls = _fake_training(monkeypatch, lambda k, e: 1.2 * k)
    out = vm._calibrate(kh.Config(**{**TINY, "d_hidden": 128}), "topk", [20, 50], data, CPU, "unused", verbose=False)
    assert [t["value"] for t in out["20"]["tries"]] == [20, 17]
    assert out["20"]["value"] == 17 and out["20"]["val_l0"] == pytest.approx(20.4) and out["20"]["within_tolerance"]
    assert [t["value"] for t in out["50"]["tries"]] == [42]  # 50 / 1.2: right at once
    assert out["50"]["cfg"].k == 42 and len(calls) == 3


def test_penalty_knob_search_brackets_with_pilots_then_interpolates(monkeypatch, data):
    """A penalty whose L0 falls as lambda^-0.8, and full-length runs 10 % sparser than the pilots: pilots bracket
    the targets, interpolation gives the first guess, the gap to the full run is carried to the next target."""
    law = lambda lam, epochs: 3.0 * lam ** -0.8 * (0.9 if epochs > vm._PILOT_EPOCHS else 1.0)  # noqa: E731
    monkeypatch.setitem(vm._KNOBS, "topk", ("lr", "penalty"))  # any float field stands for the penalty here
    monkeypatch.setattr(vm, "_kind_config", lambda base, kind, value, **over: kh.Config(
        **{**base.to_dict(), "lr": float(value), **over}))
    calls = _fake_training(monkeypatch, law, knob="lr")
    base = kh.Config(**{**TINY, "ae_epochs": 30})
    out = vm._calibrate(base, "topk", [20, 50, 100], data, CPU, "unused", verbose=False)
    pilots = out["pilots"]
    assert all(p["epochs"] == vm._PILOT_EPOCHS for p in pilots)
    l0s = [p["val_l0"] for p in pilots]
    assert max(l0s) > 105 and min(l0s) < 19  # the targets are bracketed
    for target in ("20", "50", "100"):
        assert abs(out[target]["val_l0"] / int(target) - 1) <= vm._L0_TOLERANCE
    assert len(out["20"]["tries"]) == 2  # the pilots' law is 10 % off for full runs: one correction
    assert len(out["50"]["tries"]) == 1 and len(out["100"]["tries"]) == 1  # the gap carried over: right at once
    assert out["50"]["value"] == pytest.approx((0.9 * 3.0 / 50) ** (1 / 0.8), rel=0.02)
    assert len(calls) == len(pilots) + 4


def test_next_value_steps_in_log_space_and_never_repeats():
    tries = [{"value": 50, "val_l0": 60.0}]
    assert vm._next_value("topk", tries, 50, 1.0, 1024) == 42
    tries = [{"value": 50, "val_l0": 49.0}]
    assert vm._next_value("topk", tries, 50, 1.0, 1024) == 51  # rounding would repeat 50: one step up
    tries = [{"value": 50, "val_l0": 45.0}, {"value": 51, "val_l0": 46.0}]
    assert vm._next_value("topk", tries, 50, 1.0, 1024) == 55  # the secant through the two tries
    assert vm._next_value("topk", [{"value": 1024, "val_l0": 900.0}], 1000, 1.0, 1024) is None  # at the cap


def test_penalty_law_interpolates_in_log_log():
    pilots = [{"value": 1e-3, "val_l0": 200.0}, {"value": 4e-3, "val_l0": 50.0}, {"value": 1.6e-2, "val_l0": 12.5}]
    value, slope = vm._penalty_law(pilots, 100.0)
    assert slope == pytest.approx(-1.0) and value == pytest.approx(2e-3)
    assert vm._pilot_l0(pilots, 2e-3) == pytest.approx(100.0)
    assert vm._penalty_law(pilots, 400.0)[0] == pytest.approx(5e-4)  # extrapolated from the nearest two
    assert math.isfinite(vm._penalty_law([{"value": 1e-3, "val_l0": 0.0}, {"value": 1e-4, "val_l0": 10.0}], 5)[0])


def test_measure_of_a_linear_code_counts_its_components(data):
    cfg = kh.Config(**TINY)
    x_train = kh.train_val_split(data, cfg)[0]
    code = kh.LinearCode(*kh.fit_pca(x_train, 6))
    row, _ = vm._measure(code, data, cfg, CPU)
    assert row["test_l0"] == pytest.approx(6.0, abs=0.01) and row["d_code"] == 6 and "accuracy" not in row
    assert 0 < row["fvu"] < 1 and np.isfinite(row["val_fvu"])


def test_a_knob_moves_by_a_bounded_factor_per_try():
    """A kind whose L0 hardly follows its knob (20 times off) is stepped at most a factor 2 (count, target) or 8
    (penalty) per try, not sent to the far end of the range."""
    assert vm._next_value("topk", [{"value": 50, "val_l0": 1000.0}], 50, 1.0, 1024) == 25
    assert vm._next_value("jumprelu", [{"value": 50.0, "val_l0": 2.0}], 50, 1.0, 1024) == pytest.approx(100.0)
    assert vm._next_value("relu_l1", [{"value": 1e-2, "val_l0": 1000.0}], 50, -1.0, 1024) == pytest.approx(8e-2)


def test_kind_config_sets_the_kind_its_knob_and_resets_the_others():
    base = kh.Config(k=4, d_hidden=64, ae_epochs=3)
    jump = vm._kind_config(base, "jumprelu", 8)
    assert jump.sae_kind == "jumprelu" and jump.target_l0 == 8.0 and jump.k == kh.Config().k and jump.ae_epochs == 3
    l1 = vm._kind_config(base, "relu_l1", 0.02)
    assert l1.l1_coef == 0.02 and l1.aux_k == kh.Config().aux_k
    mat = vm._kind_config(base, "matryoshka", 5.4)
    assert mat.k == 5 and max(mat.matryoshka_prefixes) < 64  # the default prefixes scaled to 64 units
    assert vm._kind_config(kh.Config(), "matryoshka", 50).matryoshka_prefixes == kh.Config().matryoshka_prefixes
    assert vm._knob_value(jump) == 8.0 and vm._knob_value(mat) == 5
    with pytest.raises(ValueError, match="kind must be one of"):
        vm._kind_config(base, "sparse", 4)
