"""Latent matrices as their non-zero entries: the input side of every DL computation.

The book's measurements (:mod:`mdl_utils.dl`, :mod:`mdl_utils.coder`) accept latents as numpy
arrays or torch tensors (dense), or as scipy.sparse / torch sparse matrices. :func:`nonzeros`
validates any of these (2-D, not empty, real numbers or integer codes, finite, non-negative)
with an error naming the problem, and reduces it to its non-zero entries (:class:`NonZeros`):
only those are ever counted, since a feature's count of zeros is N minus its count of
non-zeros. :func:`scatter` goes back the other way, keeping the input's kind (sparse in,
scipy CSR out; dense in, numpy out).
"""

from __future__ import annotations

from functools import cached_property
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import sparse as scipy_sparse

__all__ = [
    "NonZeros",
    "nonzeros",
    "scatter",
    "smallest_int_dtype",
    "is_scipy_sparse",
    "decoded",
    "torch_to_numpy",
    "like_latents",
    "finite_float_array",
]


# --------------------------------------------------------------------------------------------
# Input handling: every public function reduces its input to the non-zero entries.
# --------------------------------------------------------------------------------------------


class NonZeros:
    """The non-zero entries of an (N, D) matrix: their values, feature and sample indices.

    For dense input the entries are found as flat indices and the (row, column) split is done
    on first use, since entropies need only the columns.
    """

    def __init__(
        self,
        n_samples: int,
        n_features: int,
        values: np.ndarray,
        *,
        sparse: bool,
        rows: np.ndarray | None = None,
        cols: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        transposed: bool = False,
    ) -> None:
        self.n_samples = n_samples
        self.n_features = n_features
        self.values = values  # (nnz,), the input's dtype
        self.sparse = sparse  # whether the input was a sparse matrix
        self._rows, self._cols = rows, cols
        self._flat = flat  # flat index into the C-ordered matrix (or its transpose)
        self._transposed = transposed

    @cached_property
    def rows(self) -> np.ndarray:
        if self._rows is not None:
            return self._rows
        assert self._flat is not None
        return self._flat % self.n_samples if self._transposed else self._flat // self.n_features

    @cached_property
    def cols(self) -> np.ndarray:
        if self._cols is not None:
            return self._cols
        assert self._flat is not None
        return self._flat // self.n_samples if self._transposed else self._flat % self.n_features


def is_scipy_sparse(x: object) -> bool:
    """Whether ``x`` is a scipy.sparse matrix or array."""
    return bool(scipy_sparse.issparse(x))


def _check_shape(shape: tuple[int, ...], what: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(
            f"{what} must be a 2-D matrix (samples x features); got {len(shape)}-D with shape {tuple(shape)}"
        )
    n, d = int(shape[0]), int(shape[1])
    if n == 0 or d == 0:
        raise ValueError(f"{what} are empty: shape {(n, d)} (need at least 1 sample and 1 feature)")
    return n, d


def _check_dtype(dtype: np.dtype, what: str, *, integer: bool) -> None:
    if integer and dtype.kind not in "biu":
        raise ValueError(
            f"{what} must be an integer array (use quantize() to turn latents into codes); got dtype {dtype}"
        )
    if dtype.kind not in "biuf":
        raise ValueError(f"{what} must be real numbers; got dtype {dtype}")


def _check_nonzero_values(values: np.ndarray, what: str) -> None:
    """Finiteness and sign of the non-zero entries (zeros are always valid).

    NaN, inf and negative numbers all differ from 0, so checking the non-zeros checks the matrix.
    """
    if values.size == 0 or values.dtype.kind == "b":
        return
    lo, hi = values.min(), values.max()
    if values.dtype.kind == "f":
        if np.isnan(lo) or np.isnan(hi):
            raise ValueError(f"{what} contain NaN")
        if np.isinf(hi) and hi > 0:
            raise ValueError(f"{what} contain infinite values (+inf)")
        if np.isinf(lo):
            raise ValueError(f"{what} contain infinite values (-inf)")
    if lo < 0:
        raise ValueError(f"{what} must be non-negative; the smallest value is {lo}")
    if values.dtype.kind == "u" and int(hi) >= 2**63:
        raise ValueError(f"{what} must be below 2**63; the largest is {hi}")


_CHUNK_WORDS = 1 << 20  # 8 MiB per chunk: the comparison's output stays in cache


def _flat_nonzero(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending indices and values of the non-zero entries of a contiguous 1-D array.

    Memory bandwidth bound, so it reads the data once in 8-byte words: entries narrower than
    8 bytes are screened a word at a time (a word with any bit set is a candidate), then the
    candidate words are split back into entries and compared with 0 numerically (so -0.0
    counts as zero). Chunks reuse one small mask buffer instead of allocating one of the
    matrix's size.
    """
    group = 8 // flat.itemsize if flat.itemsize in (1, 2, 4) else 1
    head = flat.size - flat.size % group
    words = flat[:head].view(np.uint64) if group > 1 else flat
    buffer = np.empty(min(_CHUNK_WORDS, words.size), dtype=bool)
    found = []
    for start in range(0, words.size, _CHUNK_WORDS):
        block = words[start : start + _CHUNK_WORDS]
        mask = buffer[: block.size]
        np.not_equal(block, 0, out=mask)
        found.append(np.flatnonzero(mask) + start)
    index = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    if group == 1:
        return index, flat[index]
    entries = words[index].view(flat.dtype)  # the candidate words' entries, in memory order
    index = (index[:, None] * group + np.arange(group)).ravel()
    keep = entries != 0
    tail = head + np.flatnonzero(flat[head:] != 0)
    return np.concatenate([index[keep], tail]), np.concatenate([entries[keep], flat[tail]])


def nonzeros(x: Any, what: str = "latents", *, integer: bool = False) -> NonZeros:
    """Validate an (N, D) matrix and return its non-zero entries.

    Accepts numpy arrays, torch tensors (dense or sparse) and scipy.sparse matrices.
    ``integer`` demands integer codes instead of real-valued latents.
    """
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            n, d = _check_shape(tuple(x.shape), what)
            coo = x.detach().cpu().to_sparse_coo().coalesce()  # sums duplicate entries
            indices = coo.indices().numpy().astype(np.int64)
            return _from_triplets(n, d, indices[0], indices[1], torch_to_numpy(coo.values()), what, integer)
        x = torch_to_numpy(x.detach().cpu())
    elif is_scipy_sparse(x):
        n, d = _check_shape(tuple(x.shape), what)
        csr = x.tocsr()
        if not csr.has_canonical_format:  # duplicates mean their sum, as in scipy
            csr = csr.copy()
            csr.sum_duplicates()
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(csr.indptr))
        return _from_triplets(n, d, rows, csr.indices.astype(np.int64), np.asarray(csr.data), what, integer)
    array = np.asarray(x)
    n, d = _check_shape(array.shape, what)
    _check_dtype(array.dtype, what, integer=integer)
    transposed = not array.flags.c_contiguous and array.flags.f_contiguous
    # Walk a Fortran-ordered matrix in memory order (as its transpose) instead of copying it.
    memory = array.T if transposed else np.ascontiguousarray(array)
    raveled = memory.reshape(-1)
    flat, values = _flat_nonzero(raveled)
    _check_nonzero_values(values, what)
    return NonZeros(n, d, values, sparse=False, flat=flat, transposed=transposed)


def _from_triplets(
    n: int, d: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, what: str, integer: bool
) -> NonZeros:
    _check_dtype(values.dtype, what, integer=integer)
    keep = values != 0  # sparse formats may store explicit zeros
    values = values[keep]
    _check_nonzero_values(values, what)
    return NonZeros(n, d, values, sparse=True, rows=rows[keep], cols=cols[keep])


def torch_to_numpy(t: Any) -> np.ndarray:
    """A CPU torch tensor as numpy (half and bfloat16 widened to float32: numpy has no bfloat16)."""
    if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
        t = t.to(torch.float32)
    return t.numpy()


def smallest_int_dtype(max_code: int) -> type[np.signedinteger]:
    """int32 when codes up to ``max_code`` fit in it, else int64."""
    return np.int32 if max_code < 2**31 else np.int64


def scatter(nz: NonZeros, values: np.ndarray, dtype: Any) -> np.ndarray | scipy_sparse.csr_array:
    """A matrix of ``nz``'s shape holding ``values`` at ``nz``'s entries (zeros elsewhere).

    Sparse in, scipy.sparse CSR out; dense in, dense numpy out.
    """
    if nz.sparse:
        return scipy_sparse.csr_array(
            (values.astype(dtype, copy=False), (nz.rows, nz.cols)),
            shape=(nz.n_samples, nz.n_features),
        )
    out = np.zeros((nz.n_samples, nz.n_features), dtype=dtype)
    out[nz.rows, nz.cols] = values
    return out


def like_latents(values: np.ndarray, z: Any) -> Any:
    """Dense float64 latents converted to the kind of ``z``: torch (same dtype, device and
    layout), scipy.sparse CSR, or numpy (same float dtype)."""
    if isinstance(z, torch.Tensor):
        dtype = z.dtype if z.dtype.is_floating_point else torch.float32
        out = torch.as_tensor(values, dtype=dtype, device=z.device)
        return out.to_sparse() if z.layout != torch.strided else out
    if is_scipy_sparse(z):
        return scipy_sparse.csr_array(values.astype(z.dtype if z.dtype.kind == "f" else np.float64))
    return values.astype(z.dtype if np.asarray(z).dtype.kind == "f" else np.float64)


def decoded(decode: Callable[[Any], Any], z: Any) -> np.ndarray:
    """``decode(z)`` as a float64 numpy array, run under ``torch.no_grad()`` when ``z`` is a
    torch tensor (a torch result is moved to the CPU first)."""
    if isinstance(z, torch.Tensor):
        with torch.no_grad():
            out = decode(z)
    else:
        out = decode(z)
    if isinstance(out, torch.Tensor):
        out = torch_to_numpy(out.detach().cpu())
    return np.asarray(out, dtype=np.float64)


def finite_float_array(x: Any, what: str) -> np.ndarray:
    """``x`` (numpy or torch) as a float64 array; ValueError naming ``what`` when it is empty or
    holds NaN or infinite values."""
    if isinstance(x, torch.Tensor):
        x = torch_to_numpy(x.detach().cpu())
    array = np.asarray(x, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array
