"""Fixtures shared by the checks' test modules."""

import pytest
import torch
from helpers import D, N


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, D, generator=g, dtype=torch.float64) * 0.6 + 0.2
