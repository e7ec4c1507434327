"""ksae.config: what a configuration accepts and rejects, and which fields name its checkpoint."""

from __future__ import annotations

import math

import pytest
from helpers import TINY

import ksae_helpers as kh

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def test_checkpoint_name_tracks_training_fields():
    base = kh.Config(**TINY)
    assert kh.Config(**TINY).checkpoint_name() == base.checkpoint_name()
    for change in ({"lr": 2e-3}, {"k": 20}, {"seed": 1}, {"aux_k": 64}, {"dropout": 0.1}, {"dead_after": 500},
                   {"clf_shift": 2}, {"clf_hflip": False}):
        assert kh.Config(**{**TINY, **change}).checkpoint_name() != base.checkpoint_name(), change
    assert kh.Config(**TINY, smoothgrad_samples=3).checkpoint_name() == base.checkpoint_name()
    # how a step is launched is not part of the recipe: a checkpoint trained with CUDA graphs serves without
    assert kh.Config(**TINY, cuda_graphs=False).checkpoint_name() == base.checkpoint_name()
    assert kh.Config(**TINY, cuda_graphs=False).training_key() == base.training_key()
    assert kh.Config.from_dict(base.to_dict()) == base


BAD_CONFIGS = [
    {"k": 0}, {"k": -1}, {"k": 1025}, {"k": 2.5}, {"k": "50"}, {"k": None}, {"k": True},
    {"k": 65, "d_hidden": 64},
    {"ae_epochs": 0}, {"ae_epochs": -2}, {"ae_epochs": 1.5}, {"clf_epochs": 0}, {"clf_epochs": -1},
    {"batch_size": 0}, {"batch_size": -256}, {"batch_size": 256.0},
    {"dropout": -0.1}, {"dropout": 1.0}, {"dropout": 1.5}, {"dropout": math.nan},
    {"ig_method": "simpson"}, {"ig_method": ""}, {"ig_method": "GaussLegendre"},
    {"lr": 0}, {"lr": 0.0}, {"lr": -1e-3}, {"lr": math.nan}, {"lr": math.inf},
    {"smoothgrad_noise": -0.1}, {"smoothgrad_noise": math.inf},
    {"confidence_threshold": -0.01}, {"confidence_threshold": 1.0}, {"confidence_threshold": 1.5},
    {"confidence_threshold": math.nan},
    {"train_subset": -1}, {"aux_k": -1}, {"dead_after": 0},
    {"clf_shift": -1}, {"clf_shift": 28}, {"clf_shift": 1.0}, {"clf_shift": True},
    {"ae_lr_schedule": "linear"}, {"clf_lr_schedule": "linear"}, {"cuda_graphs": 1}, {"cuda_graphs": "yes"},
]


@pytest.mark.parametrize("kwargs", BAD_CONFIGS, ids=lambda kw: ",".join(f"{k}={v!r}" for k, v in kw.items()))
def test_bad_config_raises_value_error(kwargs):
    with pytest.raises(ValueError) as excinfo:
        kh.Config(**kwargs)
    assert next(iter(kwargs)) in str(excinfo.value) or "d_hidden" in str(excinfo.value)


@pytest.mark.parametrize("kwargs", [
    {"k": 1}, {"k": 1024}, {"k": 64, "d_hidden": 64}, {"dropout": 0.0}, {"dropout": 0.99},
    {"confidence_threshold": 0.0}, {"confidence_threshold": 0.999}, {"smoothgrad_noise": 0.0},
    {"ig_method": "riemann_trapezoid"}, {"aux_k": 0}, {"train_subset": 60000}, {"clf_shift": 0}, {"clf_shift": 27},
])
def test_edge_configs_accepted(kwargs):
    cfg = kh.Config(**kwargs)
    for key, value in kwargs.items():
        assert getattr(cfg, key) == value


# --- Config.from_dict: unknown keys refused, older versions' keys upgraded ----------------------------------------

def test_from_dict_refuses_unknown_keys_naming_the_closest_field():
    with pytest.raises(ValueError, match=r"got unknown 'ig_mehtod' \(did you mean 'ig_method'\?\)"):
        kh.Config.from_dict({"k": 20, "ig_mehtod": "riemann_left"})  # was: the default ig_method, silently
    with pytest.raises(ValueError, match=r"unknown 'train_subst' \(did you mean 'train_subset'\?\), 'zzz'$"):
        kh.Config.from_dict({"train_subst": 3000, "zzz": 1})
    with pytest.raises(ValueError, match=r"d must be a dict of Config fields, got None"):
        kh.Config.from_dict(None)
    assert kh.Config.from_dict({"k": 20}) == kh.Config(k=20)  # a partial dict: the rest at their defaults


# The first release's Config (fields it had; later ones came with the revisions named in config.py's _ADDED_FIELDS).
FIRST_RELEASE = {"k": 50, "d_input": 784, "d_hidden": 1024, "aux_k": 256, "aux_coef": 1 / 32, "dead_after": 20000,
                 "clf_hidden": [512, 256], "n_classes": 10, "dropout": 0.3, "batch_size": 256, "lr": 1e-3,
                 "ae_epochs": 30, "clf_epochs": 50, "train_subset": 0, "seed": 0, "ig_steps": 50,
                 "ig_method": "gausslegendre", "smoothgrad_samples": 25, "smoothgrad_noise": 0.1,
                 "confidence_threshold": 0.8}


def test_older_records_are_upgraded_to_what_they_were_trained_with():
    first = kh.Config.from_dict(FIRST_RELEASE, saved=True)
    assert (first.ae_lr_schedule, first.clf_lr_schedule) == ("constant", "constant")  # no schedule yet
    assert (first.clf_hflip, first.ae_hflip, first.clf_shift, first.n_val) == (False, False, 0, 0)
    assert first.sae_kind == "topk" and first.checkpoint_name() != kh.Config().checkpoint_name()
    # the revision with one learning-rate schedule for both models (renamed to two fields since)
    cosine = kh.Config.from_dict({**FIRST_RELEASE, "lr_schedule": "cosine", "clf_hflip": True}, saved=True)
    assert (cosine.ae_lr_schedule, cosine.clf_lr_schedule, cosine.clf_hflip) == ("cosine", "cosine", True)
    # without saved=True missing fields take today's defaults (a dict a user writes by hand)
    assert kh.Config.from_dict(FIRST_RELEASE).ae_lr_schedule == kh.Config().ae_lr_schedule
    # today's record reads back as itself either way
    today = kh.Config(k=20, seed=3)
    assert kh.Config.from_dict(today.to_dict(), saved=True) == today


def test_an_old_checkpoint_is_read_as_it_was_trained(tmp_path):
    import io

    import torch

    cfg = kh.Config.from_dict({**FIRST_RELEASE, "k": 4, "d_hidden": 16, "clf_hidden": [8, 4], "lr_schedule": "cosine"},
                              saved=True)
    sae, clf = kh.KSparseAutoencoder.from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    stored = {**FIRST_RELEASE, "k": 4, "d_hidden": 16, "clf_hidden": [8, 4], "lr_schedule": "cosine"}
    payload = {"format": kh.CHECKPOINT_FORMAT, "config": stored, "sae": sae.state_dict(), "clf": clf.state_dict(),
               "history": {}, "metrics": {}}  # what that revision's save_checkpoint wrote
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    (tmp_path / "old.pt").write_bytes(buffer.getvalue())
    loaded = kh.load_checkpoint(tmp_path / "old.pt")[0]
    assert loaded == cfg and loaded.ae_lr_schedule == "cosine" and loaded.clf_shift == 0
    # so it is never mistaken for today's recipe at the same sizes (load_or_train compares training keys)
    today = kh.Config(k=4, d_hidden=16, clf_hidden=(8, 4))
    assert loaded.training_key() != today.training_key()
