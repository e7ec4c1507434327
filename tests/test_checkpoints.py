"""ksae.checkpoints: saving and loading a checkpoint, its errors, and load_or_train's decision to load or train."""

from __future__ import annotations

import pytest
import torch
from helpers import CPU, TINY, state_dicts_equal

import ksae.checkpoints
import ksae_helpers as kh

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def test_checkpoint_round_trip(tmp_path, trained, data):
    cfg, sae, clf, history, _ = trained
    metrics = {"autoencoder": {"fvu": 0.25, "dead_units": 3}, "classifier": {"test_accuracy": 0.7}}
    path = kh.save_checkpoint(tmp_path / "sub" / "model.pt", cfg, sae, clf, history, metrics)
    assert path.exists() and not list(path.parent.glob("*.tmp"))  # atomic write left no temp file
    cfg2, sae2, clf2, history2, metrics2 = kh.load_checkpoint(path)
    assert cfg2 == cfg and cfg2.training_key() == cfg.training_key()
    assert state_dicts_equal(sae, sae2) and state_dicts_equal(clf, clf2)
    assert history2 == history and metrics2 == metrics
    assert not sae2.training and not clf2.training
    assert sae2.k == cfg.k
    x = data.x_test[:50]
    with torch.no_grad():
        assert torch.equal(kh.SparseCodePipeline(sae, clf)(x), kh.SparseCodePipeline(sae2, clf2)(x))


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        kh.load_checkpoint(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(kh.CheckpointError) as excinfo:
        kh.load_checkpoint(junk)
    assert str(junk) in str(excinfo.value)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "config": {}}, other)
    with pytest.raises(kh.CheckpointError, match="other.pt"):
        kh.load_checkpoint(other)


def test_load_or_train_trains_once_then_loads_and_retrains_when_needed(tmp_path, data, monkeypatch):
    cfg = kh.Config(**TINY)
    calls = []
    real_train = kh.train_models

    def counting_train(*args, **kwargs):
        calls.append(args[0])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ksae.checkpoints, "train_models", counting_train)
    sae, clf, history, metrics = kh.load_or_train(cfg, data, CPU, ckpt_dir=tmp_path, verbose=False)
    path = tmp_path / cfg.checkpoint_name()
    assert len(calls) == 1 and path.exists()
    assert set(metrics) == {"autoencoder", "classifier"}
    assert 0.0 < metrics["autoencoder"]["fvu"] < 1.0

    # second call: loads, never trains
    def must_not_train(*args, **kwargs):
        raise AssertionError("train_models was called although a matching checkpoint exists")

    monkeypatch.setattr(ksae.checkpoints, "train_models", must_not_train)
    sae2, clf2, history2, metrics2 = kh.load_or_train(cfg, data, CPU, ckpt_dir=tmp_path, verbose=False)
    assert state_dicts_equal(sae, sae2) and state_dicts_equal(clf, clf2)
    assert metrics2 == metrics and history2 == history
    # a non-training field (attribution settings) does not invalidate the checkpoint
    cfg_ig = kh.Config(**TINY, ig_steps=7)
    assert cfg_ig.checkpoint_name() == cfg.checkpoint_name()
    kh.load_or_train(cfg_ig, data, CPU, ckpt_dir=tmp_path, verbose=False)

    # From here on "training" returns the models above instantly and the (slow) metrics are stubbed:
    # what is tested is *whether* load_or_train retrains, and what it writes.
    calls.clear()
    monkeypatch.setattr(ksae.checkpoints, "train_models", lambda c, d, dev: (calls.append(c), (sae, clf, history))[1])
    monkeypatch.setattr(ksae.checkpoints, "evaluate_models",
                        lambda *a, **k: {"autoencoder": {"fvu": 0.5}, "classifier": {"test_accuracy": 0.5}})

    # a checkpoint stored under cfg's name but trained with another training field is never used
    other = kh.Config(**{**TINY, "lr": 5e-3})
    assert other.training_key() != cfg.training_key()
    kh.save_checkpoint(path, other, sae, clf, {"marker": "other"}, {"marker": "other"})
    _, _, history3, metrics3 = kh.load_or_train(cfg, data, CPU, ckpt_dir=tmp_path, verbose=False)
    assert len(calls) == 1 and calls[0] == cfg
    assert history3 != {"marker": "other"} and metrics3 != {"marker": "other"}
    assert kh.load_checkpoint(path)[0].training_key() == cfg.training_key()  # overwritten

    # a corrupt file is reported and replaced by a fresh run
    path.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(kh.CheckpointError, match=str(path).replace("\\", "\\\\")):
        kh.load_checkpoint(path)
    calls.clear()
    kh.load_or_train(cfg, data, CPU, ckpt_dir=tmp_path, verbose=False)
    assert len(calls) == 1
    stored_cfg, sae4, _, _, metrics4 = kh.load_checkpoint(path)
    assert stored_cfg == cfg and state_dicts_equal(sae4, sae)
    assert metrics4 == {"autoencoder": {"fvu": 0.5}, "classifier": {"test_accuracy": 0.5}}

    # retrain=True trains even though the checkpoint is fine
    calls.clear()
    kh.load_or_train(cfg, data, CPU, ckpt_dir=tmp_path, retrain=True, verbose=False)
    assert len(calls) == 1


def test_a_checkpoint_with_the_old_history_key_loads_with_the_new_one(tmp_path):
    """AuxK's state was called "dead_fraction" before "dead" and "dormant" got a word each: old checkpoints load
    with ``dormant_fraction`` (and a checkpoint written today keeps its keys)."""
    cfg = kh.Config(k=4, d_hidden=16, clf_hidden=(8, 4))
    sae, clf = kh.KSparseAutoencoder.from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    old = kh.save_checkpoint(tmp_path / "old.pt", cfg, sae, clf, {"ae": {"dead_fraction": [0.5, 0.25]}, "clf": {}})
    assert kh.load_checkpoint(old)[3]["ae"] == {"dormant_fraction": [0.5, 0.25]}
    new = kh.save_checkpoint(tmp_path / "new.pt", cfg, sae, clf, {"ae": {"dormant_fraction": [0.1]}, "clf": {}})
    assert kh.load_checkpoint(new)[3]["ae"] == {"dormant_fraction": [0.1]}
