"""Names for the kinds of arrays the library takes and returns, for annotations.

The measurements accept latents in whichever form a user's SAE produces them; these aliases
say so in signatures instead of ``Any``. They are plain :data:`typing.TypeAlias` unions, so
any value of a member type is accepted (no wrapping, no conversion).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from scipy import sparse

__all__ = ["FloatArray", "IntArray", "BoolArray", "Latents", "Data"]

FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]
"""A numpy array of floats (any precision)."""

IntArray: TypeAlias = npt.NDArray[np.integer[Any]]
"""A numpy array of integers (codes, indices, counts)."""

BoolArray: TypeAlias = npt.NDArray[np.bool_]
"""A numpy array of booleans (masks)."""

Latents: TypeAlias = np.ndarray | torch.Tensor | sparse.sparray | sparse.spmatrix
"""An (N, D) matrix of latents or integer codes: a numpy array, a torch tensor (dense or
sparse) or a scipy.sparse matrix/array. Functions that take it validate it
(:func:`mdl_utils.latents.nonzeros`) and name the problem when it is not one."""

Data: TypeAlias = npt.ArrayLike | torch.Tensor
"""Samples, shape (N, d_in): a torch tensor or anything numpy can turn into an array."""
