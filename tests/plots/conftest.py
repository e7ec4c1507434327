"""Fixtures shared by the figure test modules."""

import pytest
import torch

import ksae_helpers as kh


@pytest.fixture(scope="module")
def uneven():
    """A selection with 3, 0, 1 images of classes a, b, c, and maps whose class means are known."""
    y = torch.tensor([0, 0, 0, 2])
    x = torch.rand(4, 784, generator=torch.Generator().manual_seed(0))
    maps = {"simple": torch.arange(4, dtype=torch.float32)[:, None].expand(-1, 784) - 1.5,
            "decoder": torch.ones(4, 784)}
    sel = kh.Selection(torch.arange(4), x, y, torch.full((4,), 0.9), {"a": 3, "b": 0, "c": 1}, 2,
                       torch.tensor([False, False, False, True]), {"b": {"passing": 0, "selected": 0, "fallback": 0}})
    return sel, maps
