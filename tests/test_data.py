"""ksae.data: loading Fashion-MNIST (search order, contents, checksums, helpful errors), the training subset
and the validation split.

The real Fashion-MNIST files are needed (CI installs the ``dataset-fashion-mnist`` package); if they are
absent the tests fail, they never skip.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from helpers import N_TEST, N_TRAIN, D

import ksae.data
import ksae_helpers as kh

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


NAMES = tuple(kh.FASHION_MNIST_SHA256)  # the four IDX files, without extension


@pytest.fixture(scope="module")
def raw_bytes(data) -> dict[str, bytes]:
    """Decompressed bytes of the four real IDX files (read from wherever ``data`` came from)."""
    return {name: ksae.data._read_idx_bytes(Path(data.source), name) for name in NAMES}


def write_dataset(folder: Path, raw_bytes: dict[str, bytes], extracted: bool = False) -> Path:
    """Write the four files into ``folder`` as ``.gz`` (default) or extracted IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in raw_bytes.items():
        if extracted:
            (folder / name).write_bytes(payload)
        else:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload, compresslevel=1))
    return folder


@pytest.fixture(scope="module")
def system_dir(tmp_path_factory, raw_bytes) -> Path:
    """A valid stand-in for /usr/share/datasets/fashion-mnist (same files, in a temp folder)."""
    return write_dataset(tmp_path_factory.mktemp("system"), raw_bytes)


# --- search order and contents ------------------------------------------------------------------------------


def check_contents(d: kh.FashionMNIST, reference: kh.FashionMNIST | None = None) -> None:
    assert d.x_train.shape == (N_TRAIN, D) and d.x_test.shape == (N_TEST, D)
    assert d.y_train.shape == (N_TRAIN,) and d.y_test.shape == (N_TEST,)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    for x in (d.x_train, d.x_test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # pixels are k/255: no value in between the 256 levels
    assert torch.allclose(d.x_test * 255, (d.x_test * 255).round(), atol=1e-4)
    assert set(d.y_train.unique().tolist()) == set(range(10)) == set(d.y_test.unique().tolist())
    # Fashion-MNIST is balanced: 6000 train and 1000 test images per class
    assert torch.bincount(d.y_train).tolist() == [6000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    assert len(d.classes) == 10 and d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    if reference is not None:
        assert torch.equal(d.x_train, reference.x_train) and torch.equal(d.y_test, reference.y_test)


def test_real_dataset_contents(data):
    check_contents(data)
    # first training label of the official file is 9 (ankle boot), first test label 9 as well
    assert int(data.y_train[0]) == 9 and int(data.y_test[0]) == 9


def test_loader_prefers_local_folder_over_system_dir(tmp_path, raw_bytes, system_dir, data):
    local = write_dataset(tmp_path / "FashionMNIST" / "raw", raw_bytes)
    d = kh.load_fashion_mnist(root=tmp_path, system_dir=system_dir, download=False, verbose=False)
    assert Path(d.source) == local  # system_dir is valid too, but the local folder comes first
    check_contents(d, reference=data)


def test_loader_falls_back_to_system_dir(tmp_path, system_dir, data):
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)  # local folder exists but is empty
    d = kh.load_fashion_mnist(root=tmp_path, system_dir=system_dir, download=False, verbose=False)
    assert Path(d.source) == system_dir
    check_contents(d, reference=data)


def test_loader_reads_extracted_files(tmp_path, raw_bytes, data):
    local = write_dataset(tmp_path / "FashionMNIST" / "raw", raw_bytes, extracted=True)
    assert not list(local.glob("*.gz"))
    d = kh.load_fashion_mnist(root=tmp_path, system_dir=tmp_path / "nowhere", download=False, verbose=False)
    assert Path(d.source) == local
    check_contents(d, reference=data)


def test_loader_skips_corrupt_local_copy_when_system_dir_is_valid(tmp_path, raw_bytes, system_dir):
    bad = dict(raw_bytes)
    labels = bytearray(bad["train-labels-idx1-ubyte"])
    labels[100] = (labels[100] + 1) % 10  # still a valid label: only the checksum can tell
    bad["train-labels-idx1-ubyte"] = bytes(labels)
    write_dataset(tmp_path / "FashionMNIST" / "raw", bad)
    d = kh.load_fashion_mnist(root=tmp_path, system_dir=system_dir, download=False, verbose=False)
    assert Path(d.source) == system_dir


# --- errors -------------------------------------------------------------------------------------------------


def assert_helpful_error(excinfo, local: Path, *fragments: str) -> str:
    """The message names the three ways to get the data, and the error is raised by the loader itself."""
    msg = str(excinfo.value)
    assert str(local) in msg  # way 1: the local folder, by its path
    assert "apt-get install dataset-fashion-mnist" in msg  # way 2
    assert "download=True" in msg  # way 3
    for fragment in fragments:
        assert fragment.lower() in msg.lower(), f"{fragment!r} not in error message:\n{msg}"
    # not a deep parser/numpy traceback: the innermost frame is in ksae/data.py, outside the IDX parser,
    # and the exception is not chained to a low-level error
    last = excinfo.traceback[-1]
    assert Path(str(last.path)).name == "data.py" and "parse" not in last.name
    assert excinfo.value.__cause__ is None
    return msg


def corrupt(raw_bytes: dict[str, bytes], name: str, how: str) -> dict[str, bytes]:
    out = dict(raw_bytes)
    payload = bytearray(out[name])
    if how == "flip":
        for offset in (16, 5000, len(payload) - 1):
            payload[offset] ^= 0xFF
    elif how == "truncate":
        payload = payload[: len(payload) // 3]  # the parser would fail to reshape this
    out[name] = bytes(payload)
    return out


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corrupt_file_without_fallback_raises_checksum_error(tmp_path, raw_bytes, how):
    local = write_dataset(tmp_path / "FashionMNIST" / "raw", corrupt(raw_bytes, "train-images-idx3-ubyte", how),
                          extracted=True)
    with pytest.raises(kh.DatasetNotFoundError) as excinfo:
        kh.load_fashion_mnist(root=tmp_path, system_dir=tmp_path / "nowhere", download=False, verbose=False)
    msg = assert_helpful_error(excinfo, local, "checksum", "SHA-256")
    assert "train-images-idx3-ubyte" in msg  # says which file failed
    assert "cannot reshape" not in msg


def test_truncated_gz_without_fallback_raises(tmp_path, raw_bytes):
    local = write_dataset(tmp_path / "FashionMNIST" / "raw", raw_bytes)
    gz = local / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(kh.DatasetNotFoundError) as excinfo:
        kh.load_fashion_mnist(root=tmp_path, system_dir=tmp_path / "nowhere", download=False, verbose=False)
    assert_helpful_error(excinfo, local, "failed")


def test_missing_everywhere_raises(tmp_path):
    with pytest.raises(kh.DatasetNotFoundError) as excinfo:
        kh.load_fashion_mnist(root=tmp_path, system_dir=tmp_path / "nowhere", download=False, verbose=False)
    assert isinstance(excinfo.value, FileNotFoundError)  # catchable as the built-in too
    msg = assert_helpful_error(excinfo, tmp_path / "FashionMNIST" / "raw", "not found")
    assert str(tmp_path / "nowhere") in msg  # says where it looked
    assert "download:" not in msg  # download=False: no download was attempted


# --- training subset and validation split -------------------------------------------------------------------


def test_train_subset_range(data):
    x, y = kh.train_subset(data, 0)
    assert len(x) == len(y) == N_TRAIN
    x, y = kh.train_subset(data, 123)
    assert torch.equal(x, data.x_train[:123]) and torch.equal(y, data.y_train[:123])
    assert len(kh.train_subset(data, N_TRAIN)[0]) == N_TRAIN
    for bad in (-1, N_TRAIN + 1, 10**9):
        with pytest.raises(ValueError, match="train_subset"):
            kh.train_subset(data, bad)


def test_validation_split_is_stratified_fixed_and_disjoint(data):
    cfg = kh.Config()
    x_tr, y_tr, x_val, y_val = kh.train_val_split(data, cfg)
    assert len(y_val) == cfg.n_val and len(y_tr) == N_TRAIN - cfg.n_val
    assert torch.bincount(y_val, minlength=10).tolist() == [cfg.n_val // 10] * 10  # stratified
    idx = kh.validation_indices(data.y_train, cfg.n_val, 10)
    assert torch.equal(x_val, data.x_train[idx]) and torch.equal(y_val, data.y_train[idx])
    rest = torch.ones(N_TRAIN, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(x_tr, data.x_train[rest])  # disjoint, order kept
    # the same split for every training seed (seeds vary training, not the held-out images)
    assert torch.equal(kh.train_val_split(data, kh.Config(seed=3))[3], y_val)
    # train_subset takes the first images of the training part; the validation split is unchanged
    x_small, _, x_val_small, _ = kh.train_val_split(data, kh.Config(train_subset=100))
    assert torch.equal(x_small, x_tr[:100]) and torch.equal(x_val_small, x_val)
    assert len(kh.validation_indices(data.y_train, 13, 10)) == 13  # remainder goes to the first classes
    with pytest.raises(ValueError, match="n_val"):
        kh.validation_indices(data.y_train, -1, 10)
