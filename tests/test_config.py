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
