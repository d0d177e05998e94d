"""MNIST loading: the four official IDX files, checked byte for byte.

The MNIST case study of the paper (section 5 of the brief) scales pixels to [0, 1] and
measures reconstruction error per pixel. :func:`load_mnist` returns exactly that layout.

Where the files come from, in order:

1. the folder named by the environment variable ``MDL_MNIST_DIR`` (gzipped or plain IDX
   files). When the variable is set the network is never tried;
2. otherwise ``<data root>/MNIST/raw``, where torchvision's downloader puts them on first use.
   The data root is ``MDL_DATA_DIR`` when set, else ``~/.cache/mdl-sae``.

Every file is checked against the official MD5 of its *uncompressed* content, so a flipped
byte or a truncated download is reported by name instead of turning into wrong numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "MNISTDataError",
    "load_mnist",
    "mnist_dir",
    "MNIST_FILES",
    "N_PIXELS",
    "DataSpec",
    "SweepData",
    "data_fingerprint",
    "prepare_data",
]

N_PIXELS = 28 * 28

#: File stem -> MD5 of the uncompressed file (the official values).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLIT_SIZES = {"train": 60_000, "test": 10_000}

HOW_TO_GET_DATA = (
    "How to get MNIST: either (a) run with a network connection and leave MDL_MNIST_DIR unset, "
    "so torchvision downloads the files into MDL_DATA_DIR (default ~/.cache/mdl-sae), or "
    "(b) put the four official files {files} (gzipped or not) in a folder and set "
    "MDL_MNIST_DIR=/path/to/that/folder."
).format(files=", ".join(MNIST_FILES))


class MNISTDataError(RuntimeError):
    """MNIST is missing, truncated or corrupt; the message names the file and the remedy."""


def _data_root() -> Path:
    return Path(os.environ.get("MDL_DATA_DIR", Path.home() / ".cache" / "mdl-sae")).expanduser()


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        path = folder / name
        if path.is_file():
            return path
    return None


def _download_with_torchvision(root: Path) -> Path:
    """Fetch MNIST with torchvision's downloader; return the folder holding the raw files."""
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(root=str(root), train=train, download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError on no network
        raise MNISTDataError(
            f"MNIST is not in {root / 'MNIST' / 'raw'} and downloading it failed "
            f"({type(err).__name__}: {err}). {HOW_TO_GET_DATA}"
        ) from err
    return root / "MNIST" / "raw"


def mnist_dir(*, download: bool = True) -> Path:
    """The folder the MNIST files are read from (see the module docstring for the order).

    Raises :class:`MNISTDataError` with instructions when ``MDL_MNIST_DIR`` is set but lacks a
    file, or when the files are absent and ``download`` is false or the download fails.
    """
    env = os.environ.get("MDL_MNIST_DIR")
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise MNISTDataError(f"MDL_MNIST_DIR={env} is not a folder. {HOW_TO_GET_DATA}")
        missing = [stem for stem in MNIST_FILES if _find_file(folder, stem) is None]
        if len(missing) == len(MNIST_FILES):
            raise MNISTDataError(f"MDL_MNIST_DIR={env} holds no MNIST files. {HOW_TO_GET_DATA}")
        if missing:
            raise MNISTDataError(f"MDL_MNIST_DIR={env} lacks {', '.join(missing)} (gzipped or not). {HOW_TO_GET_DATA}")
        return folder
    raw = _data_root() / "MNIST" / "raw"
    if all(_find_file(raw, stem) is not None for stem in MNIST_FILES):
        return raw
    if not download:
        raise MNISTDataError(f"MNIST is not in {raw}. {HOW_TO_GET_DATA}")
    return _download_with_torchvision(_data_root())


def _read_checked(path: Path, stem: str) -> bytes:
    """The uncompressed bytes of one IDX file, after checking its official MD5."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (EOFError, OSError, zlib.error) as err:
        raise MNISTDataError(
            f"MNIST file {path} is truncated or corrupt ({type(err).__name__}: {err}); "
            f"replace it with a fresh copy. {HOW_TO_GET_DATA}"
        ) from err
    digest = hashlib.md5(data).hexdigest()
    if digest != MNIST_FILES[stem]:
        raise MNISTDataError(
            f"MNIST file {path} is corrupt or truncated: MD5 of its uncompressed content is "
            f"{digest}, expected {MNIST_FILES[stem]}; replace it with a fresh copy. {HOW_TO_GET_DATA}"
        )
    return data


def _parse_idx(data: bytes, ndim: int) -> np.ndarray:
    # IDX: two zero bytes, a type byte (0x08 = uint8), ndim, then ndim big-endian uint32 sizes.
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


@lru_cache(maxsize=4)
def _load_cached(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _SPLIT_STEMS[split]
    image_path = _find_file(Path(folder), image_stem)
    label_path = _find_file(Path(folder), label_stem)
    assert image_path is not None and label_path is not None  # mnist_dir checked
    images = _parse_idx(_read_checked(image_path, image_stem), ndim=3)
    labels = _parse_idx(_read_checked(label_path, label_stem), ndim=1)
    pixels = images.reshape(len(images), N_PIXELS).astype(np.float32) / np.float32(255.0)
    pixels.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return pixels, labels


def load_mnist(split: Literal["train", "test"], *, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split.

    Args:
        split: ``"train"`` (60,000 digits) or ``"test"`` (10,000 digits).
        download: whether torchvision may download the files when they are not found
            (never tried when ``MDL_MNIST_DIR`` is set).

    Returns:
        ``(pixels_ND, labels_N)``: pixels as read-only ``float32`` in [0, 1] with shape
        (N, 784), row-major 28x28 images; labels as ``int64`` digits 0-9.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        MNISTDataError: a file is missing, truncated or corrupt (the message names it), or
            there is no data and no way to download it (the message says how to get it).
    """
    if split not in _SPLIT_STEMS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    pixels, labels = _load_cached(str(mnist_dir(download=download).resolve()), split)
    assert len(pixels) == _SPLIT_SIZES[split]
    return pixels, labels


# --------------------------------------------------------------------------------------------
# Training data for sweeps and studies: train / validation / test splits and their fingerprint
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """Which data a sweep or study trains on: MNIST (its first ``n_train`` / ``n_test`` digits)
    or a pair of ``.npy`` files, and how the validation split is carved from the training data
    (the ``"data"`` section of a sweep config, see :mod:`mdl_utils.sweep`)."""

    source: str = "mnist"
    n_train: int | None = None
    n_test: int | None = None
    train_path: str | None = None
    test_path: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in {"mnist", "npy"}:
            raise ValueError(f"data.source must be 'mnist' or 'npy', got {self.source!r}")
        if self.source == "npy" and not self.train_path:
            raise ValueError("data.source='npy' needs data.train_path")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must lie in (0, 1), got {self.val_fraction!r}")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{name} must be a positive integer or null, got {value!r}")


@dataclass
class SweepData:
    """The arrays a sweep trains and evaluates on, and their fingerprint (part of every key)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    fingerprint: str

    def split(self, name: str) -> np.ndarray:
        arr = {"train": self.train, "val": self.val, "test": self.test}[name]
        if arr is None:
            raise ValueError(f"the sweep's data has no {name!r} split")
        return arr


def data_fingerprint(*arrays: np.ndarray | None) -> str:
    """SHA-256 over the shapes, dtypes and bytes of the arrays (``None`` counts as absent)."""
    digest = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            digest.update(b"none;")
            continue
        arr = np.ascontiguousarray(arr)
        digest.update(f"{arr.dtype.str}{arr.shape};".encode())
        digest.update(arr.data.cast("B"))
    return digest.hexdigest()


def prepare_data(spec: DataSpec) -> SweepData:
    """Load the data a :class:`DataSpec` names and carve the validation split from training.

    The validation split is a random ``val_fraction`` of the training samples (seeded by
    ``split_seed``); the test split is never used for training or early stopping.
    """
    test: np.ndarray | None
    if spec.source == "mnist":
        train_all = load_mnist("train")[0]
        test = load_mnist("test")[0][: spec.n_test]  # [:None] keeps every test digit
        if spec.n_train is not None:
            train_all = train_all[: spec.n_train]
    else:
        assert spec.train_path is not None  # DataSpec checks that npy data names its training file
        train_all = np.load(spec.train_path)
        test = np.load(spec.test_path) if spec.test_path else None
    train_all = np.asarray(train_all, dtype=np.float32)
    if train_all.ndim != 2 or len(train_all) < 2:
        raise ValueError(f"training data must be a 2-D array with at least 2 samples, got shape {train_all.shape}")
    if not np.isfinite(train_all).all():
        raise ValueError("training data contains NaN or infinite values")
    if test is not None:
        test = np.asarray(test, dtype=np.float32)
        if test.ndim != 2 or test.shape[1] != train_all.shape[1]:
            raise ValueError(f"test data has shape {test.shape}, expected (N, {train_all.shape[1]})")
        if len(test) == 0:
            raise ValueError("test data is empty (0 samples)")
        if not np.isfinite(test).all():
            raise ValueError("test data contains NaN or infinite values")
    n_val = max(1, int(round(spec.val_fraction * len(train_all))))
    if n_val >= len(train_all):
        raise ValueError(f"val_fraction={spec.val_fraction} leaves no training samples")
    perm = np.random.default_rng(spec.split_seed).permutation(len(train_all))
    val = np.ascontiguousarray(train_all[np.sort(perm[:n_val])])
    train = np.ascontiguousarray(train_all[np.sort(perm[n_val:])])
    return SweepData(train=train, val=val, test=test, fingerprint=data_fingerprint(train, val, test))
