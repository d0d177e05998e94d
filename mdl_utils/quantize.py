"""Quantisation of SAE latents: integer codes, bin widths, and the way back to values.

Section 3 of the paper brief: zero is its own symbol (code 0) and stays exactly zero; only
non-zero values are binned, either with an absolute bin width ``step`` (bins (0, s],
(s, 2s], ...) or with ``bits`` (2**bits equal bins over each feature's range (0, max_i], the
paper's "B bits per non-zero float"; ``bits`` may be fractional, the continuous scale of
:mod:`mdl_utils.protocol`). :func:`dequantize` maps codes back to bin centres, so the loss of
the quantised latents can be measured.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
from scipy import sparse

from mdl_utils.array_types import Latents
from mdl_utils.latents import NonZeros, nonzeros, scatter, smallest_int_dtype

__all__ = [
    "MAX_BITS",
    "n_bins",
    "bin_widths",
    "quantize",
    "dequantize",
    "widths_from_max",
    "codes_in_bins",
    "widths_of_nonzeros",
    "codes_of_nonzeros",
]

#: Largest ``bits`` accepted: 2**52 bins already resolve a float64 to its last mantissa bit.
MAX_BITS = 52
#: Largest code accepted (step mode): codes above 2**53 are no longer exact in float64.
_MAX_CODE = 2**53


# --------------------------------------------------------------------------------------------
# Quantisation
# --------------------------------------------------------------------------------------------


def _check_precision(bits: float | None, step: float | None) -> None:
    if (bits is None) == (step is None):
        raise ValueError(
            "give exactly one of bits (2**bits bins over each feature's range) or step "
            f"(an absolute bin width); got bits={bits!r}, step={step!r}"
        )
    if bits is not None:
        if isinstance(bits, bool) or not isinstance(bits, (int, float, np.integer, np.floating)):
            raise ValueError(f"bits must be a number; got {bits!r}")
        if not math.isfinite(bits) or not 0 < bits <= MAX_BITS:
            raise ValueError(f"bits must be between 0 (exclusive) and {MAX_BITS}; got {bits}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float, np.integer, np.floating)):
            raise ValueError(f"step must be a number; got {step!r}")
        if not math.isfinite(step) or step <= 0:
            raise ValueError(f"step (the bin width) must be finite and > 0; got {step}")


def widths_of_nonzeros(nz: NonZeros, bits: float | None, step: float | None) -> np.ndarray:
    _check_precision(bits, step)
    if step is not None:
        widths = np.full(nz.n_features, float(step))
        if nz.values.size:
            top = float(nz.values.max()) / float(step)
            if top > _MAX_CODE:
                raise ValueError(
                    f"step={step} is too small: the largest latent ({float(nz.values.max())}) "
                    f"would get code {top:.3g} > 2**53, beyond exact float64 integers"
                )
        return widths
    feature_max = np.zeros(nz.n_features)
    np.maximum.at(feature_max, nz.cols, nz.values.astype(np.float64, copy=False))
    assert bits is not None  # _check_precision: exactly one of bits and step
    widths = widths_from_max(feature_max, bits)
    if np.any((widths == 0) & (feature_max > 0)):
        raise ValueError(f"bits={bits}: a feature's range is so small that its bin width underflows")
    return widths


def widths_from_max(feature_max: np.ndarray, bits: float) -> np.ndarray:
    """Per-feature bin widths ``max_i / 2**bits`` from each feature's largest value.

    The one rule behind :func:`bin_widths` and the streamed scorer
    (:mod:`mdl_utils.scoring`): whole bits scale by an exact power of two.
    """
    if float(bits).is_integer():
        return np.ldexp(feature_max, -int(bits))  # exact: a power-of-two scaling
    return feature_max * 2.0 ** -float(bits)


def codes_in_bins(values: np.ndarray, cols: np.ndarray, widths: np.ndarray, bits: float | None) -> np.ndarray:
    """Codes (int64, >= 1) of non-zero ``values`` of features ``cols``: bin k of feature i
    covers ``((k-1) w_i, k w_i]``; with ``bits``, codes stop at the top bin ``n_bins(bits)``.

    The one rule behind :func:`quantize` and the streamed scorer (:mod:`mdl_utils.scoring`).
    """
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    codes = np.ceil(values.astype(np.float64, copy=False) / widths[cols])
    # A positive value never becomes code 0, and the feature maximum lands in the top bin.
    upper = float(n_bins(bits)) if bits is not None else None
    np.clip(codes, 1.0, upper, out=codes)
    return codes.astype(np.int64)


def codes_of_nonzeros(nz: NonZeros, widths: np.ndarray, bits: float | None) -> np.ndarray:
    """Codes (int64, >= 1) of the non-zero entries: bin k covers ((k-1)w, kw]."""
    return codes_in_bins(nz.values, nz.cols, widths, bits)


def n_bins(bits: float) -> int:
    """How many bins ``bits`` bits per non-zero value give: ``ceil(2**bits)``.

    Whole bits give the paper's ``2**B`` bins. Fractional bits (the continuous precision
    scale of :mod:`mdl_utils.protocol`) give a bin width ``max_i / 2**bits`` that varies
    continuously; the top bin is then cut at the feature's maximum, so ``ceil(2**bits)`` bins
    cover ``(0, max_i]``.
    """
    return int(math.ceil(2.0 ** float(bits) - 1e-9))


def bin_widths(z: Latents, *, bits: float | None = None, step: float | None = None) -> np.ndarray:
    """Each feature's bin width, in activation units, for :func:`quantize` with these settings.

    Args:
        z: latents, (N samples, D features), non-negative.
        bits: 2**bits bins over (0, max_i]: width max_i / 2**bits (0 for a feature never active).
        step: the same absolute width for every feature.

    Returns:
        float64 array of shape (D,). Pass it to :func:`dequantize`.
    """
    return widths_of_nonzeros(nonzeros(z, "latents"), bits, step)


@overload
def quantize(
    z: sparse.sparray | sparse.spmatrix, *, bits: float | None = None, step: float | None = None
) -> sparse.csr_array: ...
@overload
def quantize(z: Latents, *, bits: float | None = None, step: float | None = None) -> np.ndarray | sparse.csr_array: ...
def quantize(z: Latents, *, bits: float | None = None, step: float | None = None) -> np.ndarray | sparse.csr_array:
    """Quantise SAE latents to integer codes (section 3 of the paper: effective precision).

    Zero is its own symbol: code 0 means exactly 0, and only non-zero values are binned.
    Non-zero value v of feature i gets code k >= 1 with v in ((k-1)*w_i, k*w_i], where the
    bin width w_i is

    - ``step`` (activation units) for every feature, when ``step`` is given; or
    - max_i / 2**bits, when ``bits`` is given: 2**bits equal bins spanning (0, max_i], so codes
      run 1..2**bits and the feature's maximum lands in the top bin ("B bits per non-zero float").

    Args:
        z: latents of shape (N samples, D features), non-negative and finite; numpy array,
            torch tensor, or a scipy.sparse / torch sparse matrix.
        bits: bits per non-zero value, in (0, 52]; fractional values give ``ceil(2**bits)``
            bins of width ``max_i / 2**bits`` (see :func:`n_bins`). Exactly one of ``bits``
            and ``step``.
        step: absolute bin width (> 0).

    Returns:
        The codes: a dense numpy array (int32, or int64 when codes need it) for dense input, a
        scipy.sparse CSR array for sparse input. Use :func:`bin_widths` for the widths.

    Raises:
        ValueError: bad latents (NaN, inf, negative, not 2-D, empty) or bad precision
            (both or neither of bits/step, bits < 1, step <= 0); the message names the problem.
    """
    nz = nonzeros(z, "latents")
    widths = widths_of_nonzeros(nz, bits, step)
    codes = codes_of_nonzeros(nz, widths, bits)
    max_code = int(codes.max()) if codes.size else 0
    return scatter(nz, codes, smallest_int_dtype(max_code))


@overload
def dequantize(codes: sparse.sparray | sparse.spmatrix, bin_width: float | np.ndarray) -> sparse.csr_array: ...
@overload
def dequantize(codes: Latents, bin_width: float | np.ndarray) -> np.ndarray | sparse.csr_array: ...
def dequantize(codes: Latents, bin_width: float | np.ndarray) -> np.ndarray | sparse.csr_array:
    """Map codes back to latents at bin centres: code k > 0 -> (k - 1/2) * w_i, code 0 -> 0.

    Args:
        codes: (N, D) non-negative integer codes from :func:`quantize` (dense or sparse).
        bin_width: one width for all features, or one per feature (shape (D,)), in activation
            units, as returned by :func:`bin_widths`.

    Returns:
        float64 latents of shape (N, D): a dense numpy array for dense codes, scipy.sparse
        CSR for sparse codes.
    """
    nz = nonzeros(codes, "codes", integer=True)
    widths = np.asarray(bin_width, dtype=np.float64)
    if widths.ndim == 0:
        widths = np.full(nz.n_features, float(widths))
    if widths.shape != (nz.n_features,):
        raise ValueError(
            f"bin_width must be a number or have one entry per feature ({nz.n_features}); got shape {widths.shape}"
        )
    if not np.all(np.isfinite(widths)) or np.any(widths < 0):
        raise ValueError("bin_width must be finite and non-negative")
    centres = (nz.values.astype(np.float64) - 0.5) * widths[nz.cols]
    return scatter(nz, centres, np.float64)
