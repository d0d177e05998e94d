"""Activation matrices on disk, read in chunks: ``.npy``, ``.pt``/``.pth`` and ``.safetensors``.

Scoring an SAE (:mod:`mdl_utils.scoring`) reads its activations more than once (once to encode,
then once per precision tried), so a large file is never loaded whole: ``.npy`` files are
memory-mapped, ``.safetensors`` tensors are sliced from the file, and ``.pt`` files are
memory-mapped by ``torch.load(mmap=True)``. A 10 million x 768 float16 matrix (15 GB) is
thus read a chunk at a time, each chunk converted to float32 and checked for NaN and inf.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ActivationFile", "open_activations"]

_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


@dataclass
class ActivationFile:
    """An (N, d) activation matrix, read lazily.

    Attributes:
        path: the file.
        key: the tensor's name inside a ``.safetensors`` or dict-of-tensors ``.pt`` file.
        shape: ``(N, d)``.
        dtype: the stored dtype's name (``"float16"``, ``"float32"``, ...).
    """

    path: Path
    key: str | None
    shape: tuple[int, int]
    dtype: str
    _source: Any

    @property
    def n_samples(self) -> int:
        return self.shape[0]

    @property
    def d(self) -> int:
        return self.shape[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a float32 array; NaN or inf is a ValueError naming the row."""
        stop = min(stop, self.n_samples)
        try:
            if isinstance(self._source, np.ndarray):
                block = np.asarray(self._source[start:stop], dtype=np.float32)
            elif isinstance(self._source, torch.Tensor):
                block = self._source[start:stop].to(torch.float32).numpy()
            else:  # a safetensors slice
                part = self._source[start:stop]
                block = np.asarray(part.float().numpy() if isinstance(part, torch.Tensor) else part, dtype=np.float32)
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{self.path}: could not read rows {start}-{stop} (truncated or corrupt file?): {err}"
            ) from err
        if block.shape != (stop - start, self.d):
            raise ValueError(
                f"{self.path}: rows {start}-{stop} came back with shape {block.shape} (truncated or corrupt file?)"
            )
        finite = np.isfinite(block)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite.all(axis=1))[0])
            raise ValueError(f"{self.path}: activations contain NaN or inf (first at row {row})")
        return block

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` for consecutive blocks of at most ``chunk_size`` rows."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, self.n_samples, chunk_size):
            yield start, self.read(start, start + chunk_size)


def _pick(tensors: dict[str, Any], key: str | None, path: Path) -> tuple[str | None, Any]:
    if key is not None:
        if key not in tensors:
            raise ValueError(f"{path}: no tensor named {key!r}; it holds {sorted(tensors)[:10]}")
        return key, tensors[key]
    if len(tensors) != 1:
        raise ValueError(
            f"{path}: holds {len(tensors)} tensors {sorted(tensors)[:10]}; name the "
            "activations with key= (--key on the command line)"
        )
    return next(iter(tensors.items()))


def open_activations(path: str | Path, *, key: str | None = None) -> ActivationFile:
    """Open an (N, d) activation matrix without reading it (see :class:`ActivationFile`).

    Raises:
        ValueError: missing file, unknown suffix, a file that cannot be parsed (truncated,
            corrupt), several tensors and no ``key``, or a tensor that is not 2-D with at least
            one row; the message names the file and the problem.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"{path}: unknown activation file type {suffix!r}; expected one of {', '.join(_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            source: Any = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors import safe_open

            handle = safe_open(str(path), framework="pt")
            names = list(handle.keys())
            key, _ = _pick({n: None for n in names}, key, path)
            source = handle.get_slice(key)
            shape = tuple(source.get_shape())
            dtype = str(source.get_dtype()).lower()
            dtype = {"f16": "float16", "f32": "float32", "bf16": "bfloat16", "f64": "float64"}.get(dtype, dtype)
            return _checked(ActivationFile(path, key, _shape2(shape, path), dtype, source))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(obj, dict):
                key, obj = _pick({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, key, path)
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"{path}: holds a {type(obj).__name__}, not an activation tensor")
            source = obj
    except Exception as err:  # every reader raises its own types for a damaged file
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise  # already says what is wrong with which file
        raise ValueError(
            f"{path}: not a readable {suffix} file (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err
    dtype = str(source.dtype).removeprefix("torch.")
    return _checked(ActivationFile(path, key, _shape2(tuple(source.shape), path), dtype, source))


def _shape2(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"{path}: activations must be a 2-D (samples, d) matrix, got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{path}: empty activation matrix, shape {shape}")
    return int(shape[0]), int(shape[1])


def _checked(acts: ActivationFile) -> ActivationFile:
    if not (acts.dtype.startswith("float") or acts.dtype.startswith("bfloat")):
        raise ValueError(f"{acts.path}: activations must be floating point, got dtype {acts.dtype}")
    # Touch the last row, so a truncated file fails here rather than mid-way through scoring.
    acts.read(acts.n_samples - 1, acts.n_samples)
    return acts
