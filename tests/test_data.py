"""Tests for mdl_utils.data: MNIST layout, checksum checks and error messages."""

from __future__ import annotations

import gzip
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from mdl_utils import data
from mdl_utils.data import MNIST_FILES, MNISTDataError, load_mnist

# Published facts about MNIST, independent of this code: class counts of the test set and the
# first labels of each split.
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9]
FIRST_TEST_LABELS = [7, 2, 1, 0, 4]


def _copy_mnist(src: Path, dst: Path, *, gunzip: bool) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for stem in MNIST_FILES:
        gz, plain = src / f"{stem}.gz", src / stem
        if gunzip:
            raw = gzip.decompress(gz.read_bytes()) if gz.exists() else plain.read_bytes()
            (dst / stem).write_bytes(raw)
        else:
            shutil.copy(gz if gz.exists() else plain, dst / (gz.name if gz.exists() else plain.name))
    return dst


def test_splits_have_official_shapes_labels_and_range(mnist_source_dir):
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    assert x_train.shape == (60_000, 784) and x_test.shape == (10_000, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert list(y_train[:5]) == FIRST_TRAIN_LABELS
    assert list(y_test[:5]) == FIRST_TEST_LABELS
    assert list(np.bincount(y_test, minlength=10)) == TEST_CLASS_COUNTS
    # Pixels are bytes / 255: every value times 255 is an integer.
    assert np.allclose(x_test * 255, np.round(x_test * 255), atol=1e-4)


def test_uncompressed_files_give_the_same_arrays(mnist_source_dir, tmp_path, monkeypatch):
    folder = _copy_mnist(mnist_source_dir, tmp_path / "plain", gunzip=True)
    x_ref, y_ref = load_mnist("test")
    monkeypatch.setenv("MDL_MNIST_DIR", str(folder))
    x, y = load_mnist("test")
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_mnist("validation")  # type: ignore[arg-type]


@pytest.mark.parametrize("gunzip", [True, False], ids=["plain", "gzipped"])
def test_flipped_byte_names_the_file(mnist_source_dir, tmp_path, monkeypatch, gunzip):
    folder = _copy_mnist(mnist_source_dir, tmp_path / "mnist", gunzip=gunzip)
    victim = next(folder.glob("t10k-labels-idx1-ubyte*"))
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    monkeypatch.setenv("MDL_MNIST_DIR", str(folder))
    with pytest.raises(MNISTDataError, match=r"t10k-labels-idx1-ubyte.*(corrupt|truncated)"):
        load_mnist("test")


@pytest.mark.parametrize("gunzip", [True, False], ids=["plain", "gzipped"])
def test_truncated_file_names_the_file(mnist_source_dir, tmp_path, monkeypatch, gunzip):
    folder = _copy_mnist(mnist_source_dir, tmp_path / "mnist", gunzip=gunzip)
    victim = next(folder.glob("t10k-images-idx3-ubyte*"))
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 3])
    monkeypatch.setenv("MDL_MNIST_DIR", str(folder))
    with pytest.raises(MNISTDataError, match=r"t10k-images-idx3-ubyte.*(corrupt|truncated)"):
        load_mnist("test")


def test_missing_file_is_named(mnist_source_dir, tmp_path, monkeypatch):
    folder = _copy_mnist(mnist_source_dir, tmp_path / "mnist", gunzip=False)
    next(folder.glob("train-labels-idx1-ubyte*")).unlink()
    monkeypatch.setenv("MDL_MNIST_DIR", str(folder))
    with pytest.raises(MNISTDataError, match="lacks train-labels-idx1-ubyte"):
        load_mnist("test")


def _forbid_download(*args, **kwargs):
    raise AssertionError("the network must not be tried")


def test_empty_mnist_dir_says_how_to_get_the_data_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("MDL_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_download_with_torchvision", _forbid_download)
    with pytest.raises(MNISTDataError, match="holds no MNIST files.*How to get MNIST.*MDL_MNIST_DIR"):
        load_mnist("train")


class _OfflineMNIST:
    def __init__(self, root, train, download):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


class _MirrorMNIST:
    """Stands in for torchvision's downloader: 'downloads' from a local folder."""

    source: Path

    def __init__(self, root, train, download):
        assert download
        _copy_mnist(self.source, Path(root) / "MNIST" / "raw", gunzip=False)


def test_no_data_and_no_network_says_how_to_get_the_data(tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.delenv("MDL_MNIST_DIR", raising=False)
    monkeypatch.setenv("MDL_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(torchvision.datasets, "MNIST", _OfflineMNIST)
    with pytest.raises(MNISTDataError, match="downloading it failed.*URLError.*How to get MNIST"):
        load_mnist("train")
    with pytest.raises(MNISTDataError, match="How to get MNIST"):
        load_mnist("train", download=False)


def test_torchvision_download_is_used_when_no_folder_is_set(mnist_source_dir, tmp_path, monkeypatch):
    import torchvision.datasets

    _MirrorMNIST.source = mnist_source_dir
    monkeypatch.delenv("MDL_MNIST_DIR", raising=False)
    monkeypatch.setenv("MDL_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(torchvision.datasets, "MNIST", _MirrorMNIST)
    x, y = load_mnist("test")
    assert x.shape == (10_000, 784)
    assert (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").exists()
    # Second call finds the files and does not download again.
    monkeypatch.setattr(torchvision.datasets, "MNIST", _OfflineMNIST)
    assert load_mnist("test", download=False)[0].shape == (10_000, 784)
