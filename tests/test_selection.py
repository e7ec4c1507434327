"""ksae.selection: choosing high-confidence test images per class, with shortfalls, fallbacks and skipped
classes reported (on a hand-made test set), and on a small trained model.
"""

import warnings

import pytest
import torch
from helpers import CLASSES, SCENARIO_SCALE
from helpers import SCENARIO_MODELS as MODELS

import ksae.selection
import ksae_helpers as kh


def test_selection_takes_what_exists_and_falls_back_to_the_most_confident_correct(scenario):
    with pytest.warns(UserWarning) as record:
        sel = kh.select_high_confidence(*MODELS, scenario, "cpu", 4, threshold=0.8, seed=0)
    assert len(record) == 1  # one warning, one line, naming every short class with its count
    message = str(record[0].message)
    assert "\n" not in message and "b 2" in message and "c 1 (1 below the threshold)" in message
    assert "d 0 (no correct image" in message and "a " not in message.split("fewer for:")[1]
    assert sel.per_class(CLASSES) == {"a": 4, "b": 2, "c": 1, "d": 0}
    assert sel.indices[sel.y == 1].tolist() == [10, 11]  # the two passing, never the below-threshold ones
    assert sel.indices[sel.y == 2].tolist() == [17]  # class c's most confident correct image (0.7)
    assert sel.fallback.tolist() == [False] * 6 + [True]
    assert sel.shortfalls == {"b": {"passing": 2, "selected": 2, "fallback": 0},
                              "c": {"passing": 0, "selected": 1, "fallback": 1}}
    assert sel.skipped == ["d"] and sel.n_candidates == {"a": 10, "b": 2, "c": 0, "d": 0}
    assert torch.equal(sel.x[:, 0] * SCENARIO_SCALE, sel.indices.float())
    assert torch.equal(sel.y, scenario.y_test[sel.indices])


def test_selection_min_per_class_tops_up_in_confidence_order(scenario):
    with pytest.warns(UserWarning):
        sel = kh.select_high_confidence(*MODELS, scenario, "cpu", 4, threshold=0.8, seed=0, min_per_class=3)
    assert sel.indices[sel.y == 1].tolist() == [10, 11, 14]  # 2 passing + the 0.7 one
    assert sel.indices[sel.y == 2].tolist() == [16, 17, 18]  # 0.3, 0.7, 0.6: all three (sorted by index)
    assert sel.indices[sel.y == 0].tolist() == sorted(sel.indices[sel.y == 0].tolist()) and (sel.y == 0).sum() == 4
    assert int(sel.fallback.sum()) == 1 + 3


def test_selection_warns_only_about_what_falls_short(scenario):
    with pytest.warns(UserWarning) as record:
        sel = kh.select_high_confidence(*MODELS, scenario, "cpu", 1, threshold=0.0, seed=3)
    assert len(record) == 1 and str(record[0].message).endswith("fewer for: d 0 (no correct image: class left out)")
    assert sel.per_class(CLASSES) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert sel.skipped == ["d"] and sel.shortfalls == {} and not sel.fallback.any()
    data = kh.FashionMNIST(*[t[scenario.y_test < 3] for t in (scenario.x_test, scenario.y_test)] * 2,
                           classes=CLASSES[:3])
    probs = ksae.selection.predict(None, None, None, None)[scenario.y_test < 3, :3]
    ksae.selection.predict = lambda *args: probs  # restored by monkeypatch (the fixture patched this attribute)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel = kh.select_high_confidence(*MODELS, data, "cpu", 2, threshold=0.0, seed=3)
    assert sel.warning is None and sel.per_class(CLASSES[:3]) == {"a": 2, "b": 2, "c": 2}


def test_selection_rejects_bad_arguments(scenario):
    for kwargs in ({"n_per_class": 0}, {"n_per_class": 2.5}, {"threshold": 1.0}, {"min_per_class": 0}):
        args = {"n_per_class": 2, **kwargs}
        with pytest.raises(ValueError):
            kh.select_high_confidence(*MODELS, scenario, "cpu", **args)


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
