"""ksae.checks.suite: the whole validation run end to end on a small trained model."""

import json

import torch

import ksae._util
import ksae_helpers as kh


def test_run_validation_end_to_end_and_its_verdicts_survive_json(small_pipeline):
    pipeline, data, cfg = small_pipeline
    sel = kh.select_high_confidence(pipeline.sae, pipeline.clf, data, torch.device("cpu"), 4, 0.0, 0)
    maps = kh.attribute_all(pipeline, sel.x, sel.y, cfg)
    val = kh.run_validation(pipeline, sel, cfg, maps, n_subset=20, n_completeness=6, n_randomization=6)
    assert set(val["seconds"]) == {"cross_method", "faithfulness", "object_focus", "completeness", "randomization",
                                   "unit_deletion", "family_agreement", "total"}  # both families: their agreement
    assert val["family_agreement"]["families"] == {f: list(m) for f, m in kh.METHOD_FAMILIES.items()}
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
    # results have the same shape in memory as after JSON, where every key is a string
    assert [key for key in _dict_keys(val) if not isinstance(key, str)] == []
    gradient = {m: maps[m] for m in kh.METHOD_FAMILIES["gradient"]}  # one family: no family agreement
    val = kh.run_validation(pipeline, sel, cfg, gradient, n_subset=20, n_completeness=6, n_randomization=6)
    assert "family_agreement" not in val and "family_agreement" not in val["seconds"]


def _dict_keys(obj):
    """Every key of every dict inside ``obj`` (through dicts, lists and tuples)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from _dict_keys(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _dict_keys(value)
