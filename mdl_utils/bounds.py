"""What no SAE of a given width can do: the rank bound on its reconstruction error.

An SAE of width ``w`` reconstructs every sample as ``b + W_dec f``: whatever its codes ``f``
(sparse, quantised or not), the reconstructions lie in an affine subspace of dimension at most
``w``. The affine subspace of dimension ``w`` closest to a set of samples (in summed squared
distance) is the one through their mean spanned by their top ``w`` principal directions, and
its squared error is the sum of the covariance's ``d - w`` smallest eigenvalues. So

    MSE per element of any width-w SAE on x  >=  (lambda_{w+1} + ... + lambda_d) / d,

with ``lambda`` the eigenvalues of x's own covariance (divided by n, not n - 1), largest
first, and the bound is 0 once ``w >= d``. A width whose bound is above a tolerance cannot
meet it at any k: its search can only miss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mdl_utils.array_types import FloatArray

__all__ = ["rank_mse_bound"]


def rank_mse_bound(x: FloatArray, widths: Sequence[int]) -> dict[int, float]:
    """The smallest MSE per element that any SAE of each width can reach on the samples ``x``.

    Args:
        x: (n, d) samples, n >= 2, all finite (computed in float64).
        widths: SAE widths (positive whole numbers).

    Returns:
        width -> the bound (MSE per element; 0.0 from ``w >= d`` on).

    Raises:
        ValueError: ``x`` not 2-D, fewer than two samples, a NaN or infinite value, or a width
            that is not a positive whole number.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"x must be a 2-D (samples, dimensions) array, got shape {arr.shape}")
    n, d = arr.shape
    if n < 2 or d < 1:
        raise ValueError(f"x needs at least two samples and one dimension, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"x must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("x holds NaN or infinite values")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise ValueError(f"widths must be positive whole numbers, got {w!r}")
    centred = arr - arr.mean(axis=0)
    cov = centred.T @ centred / n
    eig = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)  # largest first; round-off below 0 is 0
    # tail[w] = sum of the eigenvalues after the first w (tail[d] = 0).
    tail = np.concatenate([np.cumsum(eig[::-1])[::-1], [0.0]])
    return {int(w): float(tail[min(int(w), d)] / d) for w in widths}
