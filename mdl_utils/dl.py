"""Description length (DL) of SAE latents: the paper's central measurement.

Implements section 3 and step 3-4 of section 4 of the paper brief (Ayonrinde, Pearce and
Sharkey 2024, arXiv:2410.11179):

1. :func:`quantize` turns latents ``z_ND`` (N samples x D features, non-negative) into integer
   codes. Zero is its own symbol (code 0) and stays exactly zero; only non-zero values are
   binned, either with an absolute bin width ``step`` (bins (0, s], (s, 2s], ...) or with
   ``bits`` (2**bits equal bins over each feature's range (0, max_i], the paper's "B bits per
   non-zero float"). :func:`dequantize` maps codes back to bin centres so the loss of the
   quantised latents can be measured.
2. :func:`feature_entropies` gives each feature's entropy H(p_i) in bits per sample, the value
   0 included; :func:`description_length` sums them: DL(z) = sum_i H(p_i) bits per sample
   (independent additivity, section 2: each feature is coded on its own).
3. :func:`dl_upper_bound` (L0 * (B + log2 D)) and :func:`dense_dl` (B * d) are the paper's
   distribution-free bound and dense baseline.
4. :func:`effective_precision` finds the coarsest quantisation whose reconstruction MSE stays
   within a tolerance.
   :func:`effective_precision_for_loss` does the same for any loss of the latents, such as
   the increase of a downstream model's cross-entropy (a downstream tolerance).
5. :func:`encode_latents` / :func:`decode_latents` (in :mod:`mdl_utils.coder`, re-exported
   here) are a real entropy coder showing that DL is achievable, not just a formula.
6. :func:`allocate_bits` goes beyond the paper's single precision: a greedy allocation of
   bits per feature under the same MSE ceiling (section 8 of the brief), with the cost of
   telling the decoder each feature's precision counted.

Inputs may be numpy arrays or torch tensors (dense), or scipy.sparse / torch sparse matrices.
Only the non-zero entries are ever counted: a feature's count of zeros is N minus its count
of non-zeros, which is what makes :func:`feature_entropies` fast on large sparse matrices.

Command line: ``python -m mdl_utils dl LATENTS (--bits B | --step S) [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mdl_utils.coder import EncodedLatents, decode_latents, encode_latents
from mdl_utils.latents import (
    NonZeros,
    is_scipy_sparse,
    nonzeros,
    scatter,
    smallest_int_dtype,
    torch_tensor_type,
    torch_to_numpy,
)

__all__ = [
    "BitAllocation",
    "DescriptionLength",
    "EffectivePrecision",
    "EncodedLatents",
    "LossPrecision",
    "MAX_BITS",
    "n_bins",
    "allocate_bits",
    "bin_widths",
    "codes_in_bins",
    "decode_latents",
    "dense_dl",
    "dequantize",
    "dequantize_per_feature",
    "description_length",
    "dl_upper_bound",
    "entropies_from_counts",
    "effective_precision",
    "effective_precision_for_loss",
    "encode_latents",
    "feature_entropies",
    "load_latents",
    "main",
    "quantize",
    "widths_from_max",
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


def _widths_from_nonzeros(nz: NonZeros, bits: float | None, step: float | None) -> np.ndarray:
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


def _codes_of_nonzeros(nz: NonZeros, widths: np.ndarray, bits: float | None) -> np.ndarray:
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


def bin_widths(z: Any, *, bits: float | None = None, step: float | None = None) -> np.ndarray:
    """Each feature's bin width, in activation units, for :func:`quantize` with these settings.

    Args:
        z: latents, (N samples, D features), non-negative.
        bits: 2**bits bins over (0, max_i]: width max_i / 2**bits (0 for a feature never active).
        step: the same absolute width for every feature.

    Returns:
        float64 array of shape (D,). Pass it to :func:`dequantize`.
    """
    return _widths_from_nonzeros(nonzeros(z, "latents"), bits, step)


def quantize(z: Any, *, bits: float | None = None, step: float | None = None) -> Any:
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
    widths = _widths_from_nonzeros(nz, bits, step)
    codes = _codes_of_nonzeros(nz, widths, bits)
    max_code = int(codes.max()) if codes.size else 0
    return scatter(nz, codes, smallest_int_dtype(max_code))


def dequantize(codes: Any, bin_width: float | np.ndarray) -> Any:
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
            f"bin_width must be a number or have one entry per feature ({nz.n_features}); "
            f"got shape {widths.shape}"
        )
    if not np.all(np.isfinite(widths)) or np.any(widths < 0):
        raise ValueError("bin_width must be finite and non-negative")
    centres = (nz.values.astype(np.float64) - 0.5) * widths[nz.cols]
    return scatter(nz, centres, np.float64)


# --------------------------------------------------------------------------------------------
# Entropies and description length
# --------------------------------------------------------------------------------------------


def _count_pairs(
    cols: np.ndarray, codes: np.ndarray, n_features: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (feature, code) pairs among the non-zero entries and how often each occurs.

    Returns (feature, code, count) arrays sorted by feature, then code.
    """
    if cols.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    codes = codes.astype(np.int64, copy=False)
    radix = int(codes.max()) + 1
    key_space = n_features * radix
    if key_space <= max(4 * cols.size, 1 << 22):
        # Small key space: one bincount, no sort.
        counts_by_key = np.bincount(cols * radix + codes, minlength=key_space)
        keys = np.flatnonzero(counts_by_key)
        counts = counts_by_key[keys]
    elif key_space < 2**62:
        keys, counts = np.unique(cols * radix + codes, return_counts=True)
    else:  # codes too large to combine with the feature index in one int64
        order = np.lexsort((codes, cols))
        c, v = cols[order], codes[order]
        starts = np.flatnonzero(np.r_[True, (c[1:] != c[:-1]) | (v[1:] != v[:-1])])
        counts = np.diff(np.r_[starts, c.size])
        return c[starts], v[starts], counts
    feature, code = np.divmod(keys, radix)
    return feature, code, counts


def _entropies_from_nonzeros(
    n_samples: int, n_features: int, cols: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """H(p_i) in bits for each feature, from the non-zero entries only."""
    feature, _, counts = _count_pairs(cols, codes, n_features)
    return entropies_from_counts(n_samples, feature, counts, np.bincount(cols, minlength=n_features))


def entropies_from_counts(n_samples: int, feature: np.ndarray, counts: np.ndarray,
                          nonzeros_per_feature: np.ndarray) -> np.ndarray:
    """H(p_i) in bits per sample for each feature, from counted (feature, code) pairs.

    ``feature[j]`` and ``counts[j]``: the feature and the number of samples of the j-th
    distinct non-zero (feature, code) pair; ``nonzeros_per_feature[i]``: how many samples
    feature i is non-zero on (its zeros are the other ``n_samples - nonzeros_per_feature[i]``,
    counted as one more symbol). The one entropy count behind :func:`feature_entropies` and
    the streamed scorer (:mod:`mdl_utils.scoring`).
    """
    n_features = len(nonzeros_per_feature)
    p = counts / n_samples
    entropy = np.bincount(feature, weights=-p * np.log2(p), minlength=n_features).astype(np.float64)
    n_zero = n_samples - np.asarray(nonzeros_per_feature)
    has_zero = n_zero > 0
    p_zero = n_zero[has_zero] / n_samples
    entropy[has_zero] -= p_zero * np.log2(p_zero)
    return entropy


def feature_entropies(codes: Any) -> np.ndarray:
    """Entropy of each feature's code distribution, in bits per sample (section 3).

    For feature i, H(p_i) = -sum_v p_i(v) log2 p_i(v) over all its values *including 0*.
    Equivalently H(p_i) = H_b(f_i) + f_i * H(values | active), with f_i the firing rate.
    Only the non-zero entries are counted; the zeros' count is N minus theirs.

    Args:
        codes: (N samples, D features) non-negative integer codes (see :func:`quantize`);
            dense numpy/torch or sparse.

    Returns:
        float64 array of shape (D,), bits per sample for each feature.
    """
    nz = nonzeros(codes, "codes", integer=True)
    return _entropies_from_nonzeros(nz.n_samples, nz.n_features, nz.cols, nz.values)


@dataclass(frozen=True)
class DescriptionLength:
    """The description length of a latent matrix and what it was computed from.

    Attributes:
        dl_bits: DL(z) = sum_i H(p_i), bits per sample.
        feature_bits: H(p_i) for each feature, bits per sample, shape (D,).
        l0: mean number of non-zero features per sample.
        width: D, the number of features.
        n_samples: N.
        bits: the ``bits`` setting used (whole or fractional), or None.
        step: the ``step`` setting used (activation units), or None.
        bits_per_value: B in the bound: ``bits``; with ``step``, ceil(log2(largest code)),
            the bits needed to name the bin of any non-zero value.
        upper_bound_bits: L0 * (B + log2 D), bits per sample (:func:`dl_upper_bound`).
    """

    dl_bits: float
    feature_bits: np.ndarray
    l0: float
    width: int
    n_samples: int
    bits: float | None
    step: float | None
    bits_per_value: float
    upper_bound_bits: float


def description_length(
    z: Any, *, bits: float | None = None, step: float | None = None
) -> DescriptionLength:
    """The paper's description length of SAE latents, bits per sample (section 3).

    Quantises ``z`` as :func:`quantize` does, then sums the per-feature entropies: each
    feature is coded on its own (independent additivity), so DL(z) = sum_i H(p_i).
    Never builds the dense code matrix: only the non-zero entries are quantised and counted.

    Args:
        z: latents (N samples, D features), non-negative, finite; numpy, torch or sparse.
        bits: bits per non-zero value (2**bits bins over each feature's range).
        step: absolute bin width instead. Exactly one of the two.

    Returns:
        A :class:`DescriptionLength` carrying DL, the per-feature entropies, L0, the width,
        the precision used and the bound L0 * (B + log2 D).
    """
    nz = nonzeros(z, "latents")
    widths = _widths_from_nonzeros(nz, bits, step)
    codes = _codes_of_nonzeros(nz, widths, bits)
    entropies = _entropies_from_nonzeros(nz.n_samples, nz.n_features, nz.cols, codes)
    l0 = nz.values.size / nz.n_samples
    if bits is not None:
        bits_per_value = float(bits)
    else:
        max_code = int(codes.max()) if codes.size else 1
        bits_per_value = float(math.ceil(math.log2(max_code))) if max_code > 1 else 0.0
    return DescriptionLength(
        dl_bits=float(entropies.sum()),
        feature_bits=entropies,
        l0=l0,
        width=nz.n_features,
        n_samples=nz.n_samples,
        bits=None if bits is None else (int(bits) if float(bits).is_integer() else float(bits)),
        step=None if step is None else float(step),
        bits_per_value=bits_per_value,
        upper_bound_bits=dl_upper_bound(l0, nz.n_features, bits_per_value),
    )


def dl_upper_bound(l0: float, width: int, bits_per_value: float) -> float:
    """The distribution-free bound DL <= L0 * (B + log2 D), bits per sample (section 3).

    Each of the L0 active features costs log2 D bits to name and B bits for its value.
    ``dl_upper_bound(65, 25_000, 7)`` is 1404.6, the paper's "1405 bits/token" for a GPT-2 SAE.

    Args:
        l0: mean number of non-zero features per sample (>= 0).
        width: D, the number of features (>= 1).
        bits_per_value: B, bits per non-zero value (>= 0).
    """
    if not (math.isfinite(l0) and l0 >= 0):
        raise ValueError(f"l0 must be finite and >= 0; got {l0}")
    if width < 1:
        raise ValueError(f"width must be >= 1; got {width}")
    if not (math.isfinite(bits_per_value) and bits_per_value >= 0):
        raise ValueError(f"bits_per_value must be finite and >= 0; got {bits_per_value}")
    return float(l0) * (float(bits_per_value) + math.log2(width))


def dense_dl(d: int, bits_per_value: float) -> float:
    """Bits per sample to send a d-dimensional activation densely at B bits each: B * d.

    ``dense_dl(768, 7)`` is 5376, the paper's baseline for GPT-2 small without an SAE.
    """
    if d < 1:
        raise ValueError(f"d must be >= 1; got {d}")
    if not (math.isfinite(bits_per_value) and bits_per_value >= 0):
        raise ValueError(f"bits_per_value must be finite and >= 0; got {bits_per_value}")
    return float(bits_per_value) * float(d)


# --------------------------------------------------------------------------------------------
# Effective precision (section 4, step 3)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectivePrecision:
    """Result of :func:`effective_precision`.

    Attributes:
        bits: the chosen bits per non-zero value (when searching bits), else None.
        step: the chosen bin width in activation units (when searching steps), else None.
        mse: reconstruction MSE (mean over all entries) with latents quantised at that precision.
        mse_unquantised: the MSE with the latents as given.
        mse_ceiling: the largest MSE allowed (the absolute tolerance, or unquantised + increase).
        tried: (precision, mse) for every precision evaluated, coarsest first.
    """

    bits: int | None
    step: float | None
    mse: float
    mse_unquantised: float
    mse_ceiling: float
    tried: tuple[tuple[float, float], ...]


def _reconstruction_mse(decode: Callable[[Any], Any], z: Any, x: np.ndarray) -> float:
    tensor_type = torch_tensor_type()
    if tensor_type is not None and isinstance(z, tensor_type):
        with torch.no_grad():
            out = decode(z)
        out = torch_to_numpy(out.detach().cpu()) if isinstance(out, tensor_type) else out
    else:
        out = decode(z)
    out = np.asarray(out, dtype=np.float64)
    if out.shape != x.shape:
        raise ValueError(f"decode returned shape {out.shape}, but x has shape {x.shape}")
    return float(np.mean((out - x) ** 2))


def _like(values: np.ndarray, z: Any) -> Any:
    """Dense float64 latents converted to the kind of ``z``: torch (same dtype, device and
    layout), scipy.sparse CSR, or numpy (same float dtype)."""
    tensor_type = torch_tensor_type()
    if tensor_type is not None and isinstance(z, tensor_type):
        dtype = z.dtype if z.dtype.is_floating_point else torch.float32
        out = torch.as_tensor(values, dtype=dtype, device=z.device)
        return out.to_sparse() if z.layout != torch.strided else out
    if is_scipy_sparse(z):
        from scipy import sparse

        return sparse.csr_array(values.astype(z.dtype if z.dtype.kind == "f" else np.float64))
    return values.astype(z.dtype if np.asarray(z).dtype.kind == "f" else np.float64)


def effective_precision(
    z: Any,
    decode: Callable[[Any], Any],
    x: Any,
    *,
    tolerance: float,
    mode: Literal["absolute", "increase"] = "absolute",
    search: Literal["bits", "step"] = "bits",
    candidates: Iterable[float] | None = None,
) -> EffectivePrecision:
    """The coarsest quantisation of ``z`` whose reconstruction loss stays within a tolerance.

    Section 4, step 3 of the paper: coarsen the latents' precision until the loss would exceed
    the tolerance. The loss is the per-entry MSE, mean((decode(z_q) - x)**2) over all samples
    and all entries (e.g. MSE per pixel). The ceiling is

    - ``mode="absolute"``: ``tolerance`` itself (e.g. the paper's test MSE 0.0150);
    - ``mode="increase"``: the unquantised MSE plus ``tolerance`` (the paper: ~5 bits changed the
      test MSE by about 0.0001).

    The search walks the candidates from coarsest to finest (bits ascending, steps descending),
    quantising with :func:`quantize`, dequantising to bin centres and decoding, and returns the
    first that meets the ceiling. It does not assume the MSE falls monotonically as precision
    rises: the answer is by construction the coarsest candidate that passes.

    Args:
        z: latents (N, D), non-negative; numpy, torch or scipy.sparse.
        decode: latents -> reconstruction, given the quantised latents in ``z``'s kind
            (a torch tensor with ``z``'s dtype and device, a scipy CSR array, or a numpy
            array); called under ``torch.no_grad()`` for torch inputs.
        x: the targets, same shape as decode's output.
        tolerance: the MSE ceiling (absolute, > 0) or the allowed increase (>= 0).
        mode: ``"absolute"`` or ``"increase"``, see above.
        search: ``"bits"`` (2**bits bins per feature range) or ``"step"`` (absolute bin width).
        candidates: precisions to try. Default: bits 1..16; steps max(z) * 2**-k for k = 1..20.

    Returns:
        :class:`EffectivePrecision` with the chosen bits or step, the MSE there, the
        unquantised MSE, the ceiling, and every (precision, MSE) evaluated.

    Raises:
        ValueError: a bad tolerance, mode or candidate; the unquantised MSE already exceeds an
            absolute tolerance; or even the finest candidate misses the ceiling.
    """
    _check_mode(mode, search)
    if not math.isfinite(tolerance) or tolerance < 0 or (mode == "absolute" and tolerance == 0):
        raise ValueError(
            f"tolerance must be finite and {'> 0' if mode == 'absolute' else '>= 0'}; got {tolerance}"
        )
    x_np = _as_float_array(x, "x")
    bits, step, mse, mse_raw, ceiling, tried = _coarsest_precision(
        z, lambda latents: _reconstruction_mse(decode, latents, x_np),
        tolerance=tolerance, mode=mode, search=search, candidates=candidates, what="MSE",
    )
    return EffectivePrecision(bits, step, mse, mse_raw, ceiling, tried)


def _check_mode(mode: str, search: str) -> None:
    if mode not in ("absolute", "increase"):
        raise ValueError(f"mode must be 'absolute' or 'increase'; got {mode!r}")
    if search not in ("bits", "step"):
        raise ValueError(f"search must be 'bits' or 'step'; got {search!r}")


def _coarsest_precision(
    z: Any,
    evaluate: Callable[[Any], float],
    *,
    tolerance: float,
    mode: str,
    search: str,
    candidates: Iterable[float] | None,
    what: str,
) -> tuple[int | None, float | None, float, float, float, tuple[tuple[float, float], ...]]:
    """The search shared by :func:`effective_precision` and :func:`effective_precision_for_loss`.

    ``evaluate`` maps latents (in ``z``'s kind) to the loss; ``what`` names the loss in
    messages. Returns ``(bits, step, loss, loss_unquantised, ceiling, tried)``.
    """
    nz = nonzeros(z, "latents")
    loss_raw = evaluate(z)
    if mode == "absolute":
        if loss_raw > tolerance:
            raise ValueError(
                f"the unquantised latents already have {what} {loss_raw:.6g}, above the absolute "
                f"tolerance {tolerance:.6g}; quantising them cannot be expected to meet it"
            )
        ceiling = float(tolerance)
    else:
        ceiling = loss_raw + float(tolerance)

    if search == "bits":
        grid: list[float] = list(range(1, 17)) if candidates is None else sorted(set(candidates))
    else:
        top = float(nz.values.max()) if nz.values.size else 1.0
        default = [top * 2.0**-k for k in range(1, 21)]
        grid = sorted(set(default if candidates is None else candidates), reverse=True)
    if not grid:
        raise ValueError("candidates is empty")

    tried: list[tuple[float, float]] = []
    for precision in grid:
        bits = int(precision) if search == "bits" else None
        if search == "bits" and bits != precision:
            raise ValueError(f"bits candidates must be integers; got {precision}")
        step = float(precision) if search == "step" else None
        widths = _widths_from_nonzeros(nz, bits, step)
        centres = (_codes_of_nonzeros(nz, widths, bits) - 0.5) * widths[nz.cols]
        dense = np.zeros((nz.n_samples, nz.n_features))
        dense[nz.rows, nz.cols] = centres
        value = evaluate(_like(dense, z))
        tried.append((precision, value))
        if value <= ceiling:
            return bits, step, value, loss_raw, ceiling, tuple(tried)
    finest, finest_value = tried[-1]
    raise ValueError(
        f"no candidate precision meets the {what} ceiling {ceiling:.6g}: the finest tried "
        f"({search}={finest}) gives {what} {finest_value:.6g}; try finer candidates or a looser tolerance"
    )


@dataclass(frozen=True)
class LossPrecision:
    """Result of :func:`effective_precision_for_loss`: like :class:`EffectivePrecision`, for any loss.

    Attributes:
        bits: the chosen bits per non-zero value (when searching bits), else None.
        step: the chosen bin width in activation units (when searching steps), else None.
        loss: the loss with latents quantised at that precision (the caller's units).
        loss_unquantised: the loss with the latents as given.
        loss_ceiling: the largest loss allowed (the absolute tolerance, or unquantised + increase).
        tried: (precision, loss) for every precision evaluated, coarsest first.
    """

    bits: int | None
    step: float | None
    loss: float
    loss_unquantised: float
    loss_ceiling: float
    tried: tuple[tuple[float, float], ...]


def effective_precision_for_loss(
    z: Any,
    loss: Callable[[Any], float],
    *,
    tolerance: float,
    mode: Literal["absolute", "increase"] = "absolute",
    search: Literal["bits", "step"] = "bits",
    candidates: Iterable[float] | None = None,
) -> LossPrecision:
    """The coarsest quantisation of ``z`` whose loss, computed by ``loss``, stays within a tolerance.

    :func:`effective_precision` with the reconstruction MSE replaced by any loss of the
    latents: section 4, step 3 of the paper under a *downstream* tolerance, where the loss is
    e.g. the increase of a model's cross-entropy when the SAE's reconstruction from the
    quantised latents replaces its activations (nats per sample). The ceiling is
    ``tolerance`` (``mode="absolute"``) or ``loss(z) + tolerance`` (``mode="increase"``).
    Candidates are walked from coarsest to finest and the first that meets the ceiling is
    returned; the loss need not fall monotonically with precision, and may be negative.

    Args:
        z: latents (N, D), non-negative; numpy, torch or scipy.sparse.
        loss: latents -> a finite real number; given the quantised latents in ``z``'s kind
            (see :func:`effective_precision`), under ``torch.no_grad()`` for torch inputs.
        tolerance: the loss ceiling (absolute; any finite number) or allowed increase (>= 0).
        mode, search, candidates: as in :func:`effective_precision`.

    Raises:
        ValueError: a bad tolerance, mode or candidate; a non-finite loss; the unquantised
            loss already exceeds an absolute tolerance; or even the finest candidate misses.
    """
    _check_mode(mode, search)
    if not math.isfinite(tolerance) or (mode == "increase" and tolerance < 0):
        raise ValueError(f"tolerance must be finite{' and >= 0' if mode == 'increase' else ''}; got {tolerance}")
    if not callable(loss):
        raise ValueError(f"loss must be a callable latents -> float; got {type(loss).__name__}")

    def evaluate(latents: Any) -> float:
        tensor_type = torch_tensor_type()
        if tensor_type is not None and isinstance(latents, tensor_type):
            with torch.no_grad():
                value = loss(latents)
        else:
            value = loss(latents)
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"loss returned a non-finite value ({value})")
        return value

    bits, step, value, loss_raw, ceiling, tried = _coarsest_precision(
        z, evaluate, tolerance=tolerance, mode=mode, search=search, candidates=candidates,
        what="loss",
    )
    return LossPrecision(bits, step, value, loss_raw, ceiling, tried)


def _as_float_array(x: Any, what: str) -> np.ndarray:
    tensor_type = torch_tensor_type()
    if tensor_type is not None and isinstance(x, tensor_type):
        x = torch_to_numpy(x.detach().cpu())
    array = np.asarray(x, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


# --------------------------------------------------------------------------------------------
# Per-feature precision: a greedy bit allocation (beyond the paper; paper brief section 8)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BitAllocation:
    """Result of :func:`allocate_bits`: one precision per feature and the DL it gives.

    Attributes:
        bits: bits per non-zero value of each feature, shape (D,): 2**bits equal bins over the
            feature's range (0, max_i], as in :func:`quantize`; 0 bits means a single bin, so
            the feature only says "on" (decoded at max_i / 2). 0 for dead features.
        live: which features fire at least once, shape (D,).
        feature_bits: H(p_i) of each feature at its precision, bits per sample, shape (D,).
        entropy_bits: sum of ``feature_bits``, bits per sample (the paper's DL at these
            precisions).
        table_bits: the once-per-dataset cost of telling the decoder each live feature's
            precision: ``table_bits_per_feature`` bits each (a dead feature's range is 0,
            so it needs none).
        table_bits_per_feature: ceil(log2(start_bits - min_bits + 1)), a fixed-length code
            for a precision in ``min_bits..start_bits``.
        dl_bits: ``entropy_bits + table_bits / n_samples``, bits per sample with the table
            amortised over the samples it describes.
        mse: reconstruction MSE (per entry) through ``decode`` at these precisions.
        mse_unquantised: the MSE with the latents as given.
        mse_ceiling: the largest MSE allowed.
        n_samples: N.
        width: D.
        start_bits: the precision every live feature started at.
        min_bits: the lowest precision a feature may reach.
        n_steps: removals made by the greedy (each of one or more bits of one feature).
        path_entropy_bits: ``entropy_bits`` after 0, 1, ..., n_steps removals, shape
            (n_steps + 1,): the greedy's rate-distortion path.
        path_mse: the MSE along the same path (from the affine model of the decoder,
            float64), shape (n_steps + 1,).
        started_from: ``"generous"`` (every live feature at ``start_bits``) or ``"uniform"``
            (every live feature at ``uniform_bits``): the start whose greedy gave the answer.
        uniform_bits: the coarsest single precision (1..start_bits, not below ``min_bits``)
            meeting the ceiling, as :func:`effective_precision` would choose it; None if none
            does.
        uniform_entropy_bits: the DL at ``uniform_bits`` (every feature at that precision),
            bits per sample; ``entropy_bits`` is never above it when the uniform start ran.
        uniform_mse: the MSE at ``uniform_bits``, measured through ``decode``.
    """

    bits: np.ndarray
    live: np.ndarray
    feature_bits: np.ndarray
    entropy_bits: float
    table_bits: float
    table_bits_per_feature: int
    dl_bits: float
    mse: float
    mse_unquantised: float
    mse_ceiling: float
    n_samples: int
    width: int
    start_bits: int
    min_bits: int
    n_steps: int
    path_entropy_bits: np.ndarray
    path_mse: np.ndarray
    started_from: str
    uniform_bits: int | None
    uniform_entropy_bits: float | None
    uniform_mse: float | None


def _decoded(decode: Callable[[Any], Any], z: Any) -> np.ndarray:
    """decode(z) as a float64 numpy array (under torch.no_grad() for torch latents)."""
    tensor_type = torch_tensor_type()
    if tensor_type is not None and isinstance(z, tensor_type):
        with torch.no_grad():
            out = decode(z)
    else:
        out = decode(z)
    if tensor_type is not None and isinstance(out, tensor_type):
        out = torch_to_numpy(out.detach().cpu())
    return np.asarray(out, dtype=np.float64)


def _affine_decoder(
    decode: Callable[[Any], Any], z: Any, n_features: int, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's bias b (d,) and rows W (D, d), read off by decoding 0 and each unit vector."""
    bias = _decoded(decode, _like(np.zeros((1, n_features)), z))[0]
    rows = []
    for start in range(0, n_features, chunk):
        eye = np.zeros((min(chunk, n_features - start), n_features))
        eye[np.arange(eye.shape[0]), start + np.arange(eye.shape[0])] = 1.0
        rows.append(_decoded(decode, _like(eye, z)) - bias)
    return np.concatenate(rows), bias


def _sparse_matmul(n: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, W: np.ndarray) -> np.ndarray:
    from scipy import sparse

    return sparse.csr_array((values, (rows, cols)), shape=(n, W.shape[0])) @ W


def _dequantized(codes: np.ndarray, vmax: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Bin centres (k - 1/2) * max / 2**bits of codes k >= 1, elementwise."""
    return (codes - 0.5) * np.ldexp(vmax, -bits)


def _codes_at(values: np.ndarray, vmax: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Codes of non-zero values at the given bits, exactly as :func:`quantize` computes them."""
    codes = np.ceil(values / np.ldexp(vmax, -bits))
    return np.clip(codes, 1.0, np.ldexp(1.0, bits)).astype(np.int64)


def dequantize_per_feature(z: Any, bits: Sequence[int] | np.ndarray) -> np.ndarray:
    """Latents quantised with one precision per feature, mapped back to bin centres.

    Feature i is binned as :func:`quantize` bins it with ``bits=bits[i]`` (2**bits[i] bins over
    (0, max_i]; 0 bits is one bin) and each non-zero value becomes its bin's centre; zeros stay
    0. With every entry of ``bits`` equal to B this equals
    ``dequantize(quantize(z, bits=B), bin_widths(z, bits=B))``.

    Returns:
        dense float64 array (N, D).
    """
    nz = nonzeros(z, "latents")
    bits_D = np.asarray(bits)
    if bits_D.shape != (nz.n_features,) or bits_D.dtype.kind not in "iu":
        raise ValueError(f"bits must be integers, one per feature ({nz.n_features}); got shape {bits_D.shape}")
    if bits_D.size and (bits_D.min() < 0 or bits_D.max() > MAX_BITS):
        raise ValueError(f"bits must be between 0 and {MAX_BITS}")
    bits_D = bits_D.astype(np.int64)
    values = nz.values.astype(np.float64, copy=False)
    vmax = np.zeros(nz.n_features)
    np.maximum.at(vmax, nz.cols, values)
    codes = _codes_at(values, vmax[nz.cols], bits_D[nz.cols])
    out = np.zeros((nz.n_samples, nz.n_features))
    out[nz.rows, nz.cols] = _dequantized(codes, vmax[nz.cols], bits_D[nz.cols])
    return out


def allocate_bits(
    z: Any,
    decode: Callable[[Any], Any],
    x: Any,
    *,
    tolerance: float,
    mode: Literal["absolute", "increase"] = "absolute",
    start_bits: int = 12,
    min_bits: int = 0,
    start: Literal["best", "generous", "uniform"] = "best",
) -> BitAllocation:
    """Greedy per-feature precision: the fewest bits of DL for a reconstruction MSE ceiling.

    The paper gives every feature the same precision (:func:`effective_precision`); some
    features are nearly binary and some need fine values. Here each live feature starts at
    ``start_bits`` bits per non-zero value; then, repeatedly, precision is taken from the
    feature whose loss of it raises the MSE least per bit of DL saved (the DL saved is the drop
    in that feature's entropy H(p_i), bits per sample), among the removals that keep the MSE at
    or below the ceiling. It stops when no removal does. Each feature's candidate removal is
    one bit, or several when the bits in between would save nothing (its values stay in the
    same groups there): the greedy then cannot stall on a feature whose next bit is free of
    DL. A feature whose entropy never drops (one that takes a single value) keeps
    ``start_bits``: its precision costs nothing.

    A greedy is not optimal, and from the generous start it can end above the uniform
    precision's DL at the same ceiling. With ``start="best"`` (the default) the greedy
    therefore also runs from the uniform allocation (every live feature at the coarsest single
    precision meeting the ceiling, ``uniform_bits``) and the lower DL wins; since removals
    never raise a feature's entropy, the answer's ``entropy_bits`` is then never above the
    uniform DL. ``start="generous"`` or ``"uniform"`` runs one of the two only.

    Halving a feature's precision merges its bins in pairs (the bin edges are nested), so a
    removal never raises that feature's entropy. The precisions themselves are part of the
    code: each live feature's costs ``table_bits_per_feature`` bits once, which ``dl_bits``
    amortises over the N samples.

    The search needs the decoder to be affine, x_hat = z W + b, as an SAE's is (independent
    additivity, section 2): W and b are read off ``decode`` by decoding 0 and the unit
    vectors, the affinity is checked on ``z``, and the MSE change of every candidate removal is
    then exact and cheap. The final MSE is measured through ``decode`` itself; should float
    rounding put it above the ceiling, the last removals are undone.

    Args:
        z: latents (N, D), non-negative; numpy, torch or scipy.sparse.
        decode: latents -> reconstruction, as for :func:`effective_precision`.
        x: targets, the shape of decode's output.
        tolerance: the MSE ceiling (``mode="absolute"``) or the allowed increase over the
            unquantised MSE (``mode="increase"``).
        start_bits: the generous precision every live feature starts at (1..30).
        min_bits: the lowest precision allowed (0 = on/off only).
        start: where the greedy starts: ``"best"`` (both starts below, the lower DL wins),
            ``"generous"`` (``start_bits`` everywhere) or ``"uniform"`` (``uniform_bits``).

    Returns:
        A :class:`BitAllocation`.

    Raises:
        ValueError: bad arguments; a decoder that is not affine; the unquantised MSE above an
            absolute tolerance; or the start precision already above the ceiling.
    """
    if mode not in ("absolute", "increase"):
        raise ValueError(f"mode must be 'absolute' or 'increase'; got {mode!r}")
    if start not in ("best", "generous", "uniform"):
        raise ValueError(f"start must be 'best', 'generous' or 'uniform'; got {start!r}")
    if not math.isfinite(tolerance) or tolerance < 0 or (mode == "absolute" and tolerance == 0):
        raise ValueError(
            f"tolerance must be finite and {'> 0' if mode == 'absolute' else '>= 0'}; got {tolerance}"
        )
    if not (isinstance(start_bits, (int, np.integer)) and 1 <= start_bits <= 30):
        raise ValueError(f"start_bits must be an integer in 1..30; got {start_bits!r}")
    if not (isinstance(min_bits, (int, np.integer)) and 0 <= min_bits <= start_bits):
        raise ValueError(f"min_bits must be an integer in 0..start_bits; got {min_bits!r}")
    nz = nonzeros(z, "latents")
    n, n_features = nz.n_samples, nz.n_features
    x_np = _as_float_array(x, "x")
    x_hat = _decoded(decode, z)
    if x_hat.shape != x_np.shape or x_hat.ndim != 2 or x_hat.shape[0] != n:
        raise ValueError(f"decode returned shape {x_hat.shape}, but x has shape {x_np.shape}")
    mse_raw = float(np.mean((x_hat - x_np) ** 2))
    if mode == "absolute":
        if mse_raw > tolerance:
            raise ValueError(
                f"the unquantised latents already have MSE {mse_raw:.6g}, above the absolute "
                f"tolerance {tolerance:.6g}"
            )
        ceiling = float(tolerance)
    else:
        ceiling = mse_raw + float(tolerance)
    n_entries = x_np.size

    # Non-zero entries grouped by feature: feature i owns positions starts[i]:starts[i+1].
    order = np.argsort(nz.cols, kind="stable")
    cols = nz.cols[order].astype(np.int64)
    rows = nz.rows[order].astype(np.int64)
    values = nz.values[order].astype(np.float64)
    starts = np.searchsorted(cols, np.arange(n_features + 1))
    vmax = np.zeros(n_features)
    np.maximum.at(vmax, cols, values)
    live = vmax > 0
    vmax_e = vmax[cols]
    # The same entries grouped by sample, to find the features sharing a sample with feature j.
    by_row = np.argsort(rows, kind="stable")
    row_starts = np.searchsorted(rows[by_row], np.arange(n + 1))

    W, bias = _affine_decoder(decode, z, n_features)
    if W.shape[1] != x_np.shape[1]:
        raise ValueError(f"decode maps to dimension {W.shape[1]}, but x has {x_np.shape[1]}")
    affine = bias + _sparse_matmul(n, rows, cols, values, W)
    scale = max(1.0, float(np.abs(x_hat).max()))
    if float(np.abs(affine - x_hat).max()) > 1e-4 * scale:
        raise ValueError(
            "allocate_bits needs an affine decoder (x_hat = z W + b, as an SAE's is): decoding z "
            "differs from z W + b by up to "
            f"{float(np.abs(affine - x_hat).max()):.3g}"
        )
    norm2 = np.einsum("fd,fd->f", W, W)
    # The Gram matrix <w_i, w_j>, precomputed while it is small (at most 128 MiB).
    gram = W @ W.T if n_features <= 4096 else None

    # H(p_i) of every feature at every precision 0..start_bits: bins are nested (each bit
    # removed merges bins in pairs), so the codes at l bits are the start codes halved.
    codes_top = _codes_at(values, vmax_e, np.full(values.size, int(start_bits)))
    h_levels = np.empty((n_features, int(start_bits) + 1))
    for level in range(int(start_bits) + 1):
        shift = int(start_bits) - level
        h_levels[:, level] = _entropies_from_nonzeros(
            n, n_features, cols, (codes_top + (1 << shift) - 1) >> shift
        )

    def decoded_mse(level_of: np.ndarray) -> float:
        """The MSE through ``decode`` itself with feature i at ``level_of[i]`` bits."""
        dense = np.zeros((n, n_features))
        dense[rows, cols] = _dequantized(_codes_at(values, vmax_e, level_of[cols]), vmax_e, level_of[cols])
        return float(np.mean((_decoded(decode, _like(dense, z)) - x_np) ** 2))

    # The uniform reference: the coarsest single precision (1..start_bits bits, not below
    # min_bits) whose MSE, measured through decode as effective_precision measures it, meets
    # the ceiling.
    uniform_level, uniform_mse = None, None
    for level in range(max(1, int(min_bits)), int(start_bits) + 1):
        value = decoded_mse(np.where(live, level, 0).astype(np.int64))
        if value <= ceiling:
            uniform_level, uniform_mse = level, value
            break

    def greedy(init_level: int, *, must_fit: bool) -> tuple[np.ndarray, np.ndarray, list, list, list, float]:
        """Remove precision greedily from every live feature at ``init_level`` bits.

        ``must_fit``: the start itself must meet the ceiling (the generous start; the uniform
        one was chosen through decode to meet it).
        """
        bits = np.where(live, int(init_level), 0).astype(np.int64)
        codes = _codes_at(values, vmax_e, bits[cols])
        current = _dequantized(codes, vmax_e, bits[cols])
        residual = x_np - bias - _sparse_matmul(n, rows, cols, current, W)  # x - x_hat, (N, d)
        sse = float(np.sum(residual**2))
        if must_fit and sse / n_entries > ceiling:
            raise ValueError(
                f"at start_bits={start_bits} the MSE is {sse / n_entries:.6g}, above the "
                f"ceiling {ceiling:.6g}; raise start_bits"
            )
        h_cur = h_levels[:, int(init_level)].copy()

        def target_level(i: int) -> int:
            """The highest precision below feature i's current one at which its entropy drops.

            Levels in between leave the grouping of i's values unchanged (merging two occupied
            bins always lowers the entropy), so removing a single bit there saves nothing and
            a one-bit-at-a-time greedy would stall; the candidate jumps straight past them.
            """
            lower = np.flatnonzero(h_levels[i, min_bits : bits[i]] < h_cur[i] - 1e-12)
            return int(min_bits + lower[-1]) if lower.size else -1

        # The candidate move of each feature (down to its target precision): the change of
        # each of its values (delta), and the two sums giving the SSE change exactly:
        # dSSE_i = |w_i|^2 sum_n delta_n^2 - 2 sum_n delta_n <r_n, w_i>.
        target = np.full(n_features, -1, dtype=np.int64)
        delta = np.zeros_like(values)
        s1 = np.zeros(n_features)
        s2 = np.zeros(n_features)
        h_next = h_cur.copy()

        def prepare(i: int) -> None:
            seg = slice(starts[i], starts[i + 1])
            target[i] = target_level(i)
            if target[i] < 0:
                delta[seg] = 0.0
                s1[i] = s2[i] = 0.0
                h_next[i] = h_cur[i]
                return
            moved = _codes_at(values[seg], vmax_e[seg], np.full(seg.stop - seg.start, target[i]))
            delta[seg] = _dequantized(moved, vmax_e[seg], target[i]) - current[seg]
            h_next[i] = h_levels[i, target[i]]
            s1[i] = float(delta[seg] @ delta[seg])
            s2[i] = float(delta[seg] @ (residual[rows[seg]] @ W[i]))

        for i in np.flatnonzero(live):
            prepare(int(i))

        path_h = [float(h_cur.sum())]
        path_mse = [sse / n_entries]
        history: list[tuple[int, int]] = []  # (feature, precision before the move)
        row_delta = np.zeros(n)
        while True:
            d_sse = norm2 * s1 - 2.0 * s2
            d_h = h_cur - h_next
            feasible = (target >= 0) & ((sse + d_sse) / n_entries <= ceiling)
            if not feasible.any():
                break
            score = np.full(n_features, np.inf)
            score[feasible] = d_sse[feasible] / d_h[feasible]
            j = int(np.argmin(score))
            seg = slice(starts[j], starts[j + 1])
            rows_j, delta_j = rows[seg], delta[seg]
            # Apply: the residual of j's samples moves by -delta * w_j.
            residual[rows_j] -= delta_j[:, None] * W[j]
            sse += float(d_sse[j])
            # Other features active on those samples see <r_n, w_i> change by -delta_n <w_j, w_i>.
            lo, hi = row_starts[rows_j], row_starts[rows_j + 1]
            lengths = hi - lo
            shared = by_row[np.repeat(lo - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())]
            row_delta[rows_j] = delta_j
            touched_w = np.bincount(cols[shared], weights=row_delta[rows[shared]] * delta[shared], minlength=n_features)
            row_delta[rows_j] = 0.0
            touched = np.flatnonzero(touched_w)
            overlap = gram[j, touched] if gram is not None else W[touched] @ W[j]
            s2[touched] -= overlap * touched_w[touched]
            history.append((j, int(bits[j])))
            current[seg] += delta_j
            bits[j] = target[j]
            codes[seg] = _codes_at(values[seg], vmax_e[seg], np.full(seg.stop - seg.start, bits[j]))
            h_cur[j] = h_next[j]
            prepare(j)
            path_h.append(float(h_cur.sum()))
            path_mse.append(sse / n_entries)

        # The MSE through decode itself; undo the last removals should rounding have crossed
        # the ceiling.
        while True:
            mse = decoded_mse(bits)
            if mse <= ceiling or not history:
                break
            j, before = history.pop()
            bits[j] = before
            seg = slice(starts[j], starts[j + 1])
            codes[seg] = _codes_at(values[seg], vmax_e[seg], np.full(seg.stop - seg.start, bits[j]))
            path_h.pop()
            path_mse.pop()
        return bits, codes, history, path_h, path_mse, mse

    starting_points = []
    if start in ("generous", "best"):
        starting_points.append(("generous", int(start_bits)))
    if start in ("uniform", "best"):
        if uniform_level is None:
            raise ValueError(
                f"no uniform precision of {max(1, int(min_bits))}..{start_bits} bits meets the "
                f"ceiling {ceiling:.6g}; raise start_bits"
            )
        starting_points.append(("uniform", uniform_level))
    best = None
    for name, level in starting_points:
        run = greedy(level, must_fit=name == "generous")
        run_bits = _entropies_from_nonzeros(n, n_features, cols, run[1])
        if best is None or float(run_bits.sum()) < float(best[1].sum()) - 1e-12:
            best = (name, run_bits, run)
    started_from, feature_bits, (bits, codes, history, path_h, path_mse, mse) = best
    uniform_entropy = (
        None if uniform_level is None else float(h_levels[:, uniform_level][live].sum())
    )
    per_feature = int(math.ceil(math.log2(start_bits - min_bits + 1)))
    table = float(per_feature * int(live.sum()))
    entropy = float(feature_bits.sum())
    return BitAllocation(
        bits=bits,
        live=live,
        feature_bits=feature_bits,
        entropy_bits=entropy,
        table_bits=table,
        table_bits_per_feature=per_feature,
        dl_bits=entropy + table / n,
        mse=mse,
        mse_unquantised=mse_raw,
        mse_ceiling=ceiling,
        n_samples=n,
        width=n_features,
        start_bits=int(start_bits),
        min_bits=int(min_bits),
        n_steps=len(history),
        path_entropy_bits=np.asarray(path_h),
        path_mse=np.asarray(path_mse),
        started_from=started_from,
        uniform_bits=uniform_level,
        uniform_entropy_bits=uniform_entropy,
        uniform_mse=uniform_mse,
    )


# --------------------------------------------------------------------------------------------
# Command line: python -m mdl_utils dl LATENTS --bits B
# --------------------------------------------------------------------------------------------

_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


def load_latents(path: str | Path, *, key: str | None = None) -> Any:
    """Read a latent matrix from ``.npy``, ``.pt``/``.pth`` (torch) or ``.safetensors``.

    A torch file may hold a tensor or a dict of tensors; a dict (and a safetensors file) must
    hold exactly one tensor unless ``key`` names one. Only the container is checked here;
    :func:`description_length` checks the values.

    Raises:
        ValueError: unknown suffix, unreadable file, or contents that are not one matrix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"{path}: unknown file type {suffix!r}; expected one of {', '.join(_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            obj: Any = np.load(path, allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # every reader has its own error types; report them uniformly
        raise ValueError(f"{path}: not a readable {suffix} file ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
        if key is not None:
            if key not in tensors:
                raise ValueError(f"{path}: no tensor named {key!r}; it holds {sorted(tensors)}")
            obj = tensors[key]
        elif len(tensors) == 1:
            obj = next(iter(tensors.values()))
        else:
            raise ValueError(
                f"{path}: not a latent matrix: holds {len(tensors)} tensors {sorted(tensors)[:10]}; "
                "name one with --key"
            )
    if not hasattr(obj, "shape") or not hasattr(obj, "dtype"):
        raise ValueError(f"{path}: not a latent matrix (holds a {type(obj).__name__})")
    return obj


def _report(path: str, result: DescriptionLength, coded: dict[str, Any] | None, dense_dim: int) -> str:
    precision = (
        f"{result.bits} bits per non-zero value (2**{result.bits} bins over each feature's range)"
        if result.bits is not None
        else f"bin width {result.step:g} (B = {result.bits_per_value:g} bits to name the largest bin)"
    )
    lines = [
        f"latents: {path} ({result.n_samples} samples x {result.width} features)",
        f"precision: {precision}",
        f"description length: {result.dl_bits:.3f} bits/sample",
        f"L0: {result.l0:.3f} non-zero features/sample",
        f"width: {result.width} features",
        f"upper bound L0*(B + log2 D): {result.upper_bound_bits:.3f} bits/sample",
        f"dense baseline B*d (d = {dense_dim}): {dense_dl(dense_dim, result.bits_per_value):.3f} bits/sample",
    ]
    if coded is not None:
        lines.append(
            f"coded size: payload {coded['payload_bits_per_sample']:.3f} bits/sample "
            f"({_ratio(coded['payload_over_n_dl'])} x N*DL), tables {coded['table_bits']} bits, "
            f"header {coded['header_bits']} bits, total {coded['total_bits']} bits; "
            f"round trip {'exact' if coded['round_trip_exact'] else 'FAILED'}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python -m mdl_utils dl LATENTS (--bits B | --step S) [--json] ...``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m mdl_utils dl",
        description="Description length (bits/sample) of an SAE latent matrix (N samples x D features).",
    )
    parser.add_argument("latents", help="latent matrix: .npy, .pt/.pth or .safetensors")
    precision = parser.add_mutually_exclusive_group(required=True)
    precision.add_argument("--bits", type=int, help="bits per non-zero value (2**B bins per feature range)")
    precision.add_argument("--step", type=float, help="absolute bin width, in activation units")
    parser.add_argument("--key", help="tensor name, for files holding several tensors")
    parser.add_argument(
        "--input-dim",
        type=int,
        default=None,
        help="d for the dense baseline B*d (the activation dimension); default: the width D",
    )
    parser.add_argument("--no-code", action="store_true", help="skip the entropy coder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its message
        return int(exit_.code or 0)
    if args.input_dim is not None and args.input_dim < 1:
        print(f"error: --input-dim must be >= 1; got {args.input_dim}", file=sys.stderr)
        return 1
    try:
        z = load_latents(args.latents, key=args.key)  # its messages name the file
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        result = description_length(z, bits=args.bits, step=args.step)
        dense_dim = result.width if args.input_dim is None else args.input_dim
        coded = None
        if not args.no_code:
            codes = quantize(z, bits=args.bits, step=args.step)
            encoded = encode_latents(codes)
            decoded = decode_latents(encoded.blob, sparse=is_scipy_sparse(codes))
            exact = _codes_equal(codes, decoded)
            n_dl = result.n_samples * result.dl_bits
            coded = {
                "payload_bits": encoded.payload_bits,
                "payload_bits_per_sample": encoded.payload_bits / result.n_samples,
                "payload_over_n_dl": encoded.payload_bits / n_dl if n_dl > 0 else None,
                "table_bits": encoded.table_bits,
                "header_bits": encoded.header_bits,
                "total_bits": encoded.total_bits,
                "round_trip_exact": exact,
            }
    except ValueError as err:
        print(f"error: {args.latents}: {err}", file=sys.stderr)
        return 1
    if args.json:
        payload = {
            "latents": args.latents,
            "n_samples": result.n_samples,
            "width": result.width,
            "bits": result.bits,
            "step": result.step,
            "bits_per_value": result.bits_per_value,
            "dl_bits_per_sample": result.dl_bits,
            "l0": result.l0,
            "upper_bound_bits_per_sample": result.upper_bound_bits,
            "dense_dim": dense_dim,
            "dense_bits_per_sample": dense_dl(dense_dim, result.bits_per_value),
            "coded": coded,
        }
        print(json.dumps(payload))
    else:
        print(_report(args.latents, result, coded, dense_dim))
    if coded is not None and not coded["round_trip_exact"]:
        print("error: the entropy coder's round trip was not exact", file=sys.stderr)
        return 3
    return 0


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _codes_equal(a: Any, b: Any) -> bool:
    if is_scipy_sparse(a):
        a = a.toarray()
    if is_scipy_sparse(b):
        b = b.toarray()
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
