"""Fixtures shared by every test module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ksae_helpers as kh  # noqa: E402


@pytest.fixture(scope="session")
def data() -> kh.FashionMNIST:
    """The real dataset, loaded once per test session (offline: ``download=False``). The tests need it
    (CI installs ``dataset-fashion-mnist``): if it is absent they fail, they never skip."""
    try:
        return kh.load_fashion_mnist(download=False, verbose=False)
    except kh.DatasetNotFoundError as exc:
        pytest.fail(f"these tests need the real Fashion-MNIST files (CI installs them with "
                    f"`apt-get install dataset-fashion-mnist`):\n{exc}")
