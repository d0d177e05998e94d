"""Entropies and description length of quantised latents.

Section 3 of the paper brief: :func:`feature_entropies` gives each feature's entropy H(p_i)
in bits per sample, the value 0 included; :func:`description_length` sums them,
DL(z) = sum_i H(p_i) bits per sample (independent additivity: each feature is coded on its
own). :func:`dl_upper_bound` (L0 * (B + log2 D)) and :func:`dense_dl` (B * d) are the paper's
distribution-free bound and dense baseline. :func:`two_part_bits` adds the decoder's own bits
(the whole two-part code); :func:`saebench_dl` counts as SAEBench's MDL evaluation does. Only non-zero entries are counted: a feature's
count of zeros is N minus its count of non-zeros, which keeps this fast on sparse matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from mdl_utils.array_types import Latents
from mdl_utils.latents import nonzeros
from mdl_utils.quantize import codes_of_nonzeros, widths_of_nonzeros

__all__ = [
    "DescriptionLength",
    "description_length",
    "feature_entropies",
    "entropies_from_counts",
    "entropies_of_nonzeros",
    "dl_upper_bound",
    "dense_dl",
    "two_part_bits",
    "saebench_dl",
]

# --------------------------------------------------------------------------------------------
# Entropies and description length
# --------------------------------------------------------------------------------------------


def _count_pairs(cols: np.ndarray, codes: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def entropies_of_nonzeros(n_samples: int, n_features: int, cols: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """H(p_i) in bits for each feature, from the non-zero entries only."""
    feature, _, counts = _count_pairs(cols, codes, n_features)
    return entropies_from_counts(n_samples, feature, counts, np.bincount(cols, minlength=n_features))


def entropies_from_counts(
    n_samples: int, feature: np.ndarray, counts: np.ndarray, nonzeros_per_feature: np.ndarray
) -> np.ndarray:
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


def feature_entropies(codes: Latents) -> np.ndarray:
    """Entropy of each feature's code distribution, in bits per sample (section 3).

    For feature i, H(p_i) = -sum_v p_i(v) log2 p_i(v) over all its values *including 0*.
    Equivalently H(p_i) = H_b(f_i) + f_i * H(values | active), with f_i the firing rate.
    Only the non-zero entries are counted; the zeros' count is N minus theirs.

    Args:
        codes: (N samples, D features) non-negative integer codes (see :func:`~mdl_utils.quantize.quantize`);
            dense numpy/torch or sparse.

    Returns:
        float64 array of shape (D,), bits per sample for each feature.
    """
    nz = nonzeros(codes, "codes", integer=True)
    return entropies_of_nonzeros(nz.n_samples, nz.n_features, nz.cols, nz.values)


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


def description_length(z: Latents, *, bits: float | None = None, step: float | None = None) -> DescriptionLength:
    """The paper's description length of SAE latents, bits per sample (section 3).

    Quantises ``z`` as :func:`~mdl_utils.quantize.quantize` does, then sums the per-feature entropies: each
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
    widths = widths_of_nonzeros(nz, bits, step)
    codes = codes_of_nonzeros(nz, widths, bits)
    entropies = entropies_of_nonzeros(nz.n_samples, nz.n_features, nz.cols, codes)
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
# Context: the whole two-part code, and SAEBench's count
# --------------------------------------------------------------------------------------------


def two_part_bits(
    dl_bits: float, width: int, d_in: int, *, n_samples: int = 60_000, bits_per_weight: int = 16
) -> float:
    """The two-part code per sample: DL plus the decoder's bits shared over ``n_samples``.

    The decoder (``width * d_in`` weights and ``d_in`` biases) is sent once at
    ``bits_per_weight`` bits each (float16 by default, as the book stores SAEs), so the
    per-sample total is ``dl_bits + (width + 1) * d_in * bits_per_weight / n_samples``.
    """
    if n_samples < 1 or width < 1 or d_in < 1 or bits_per_weight < 1:
        raise ValueError("n_samples, width, d_in and bits_per_weight must be >= 1")
    return float(dl_bits) + (width + 1) * d_in * bits_per_weight / n_samples


def saebench_dl(z: np.ndarray | sparse.sparray | sparse.spmatrix, *, num_bins: int, max_floor: float = 100.0) -> float:
    """The description length as SAEBench's MDL evaluation counts it, bits per sample.

    Written here independently (none of SAEBench's code is copied). Per feature: the entropy of
    "fires or not", plus the firing rate times the entropy of a value histogram with
    ``num_bins`` equal bins over ``[0, max_i]``, where ``max_i`` is the feature's largest
    activation but never less than ``max_floor`` (the running maximum starts at 100), and the
    histogram counts *all* samples, zeros included (they fall in the first bin). Ours
    (:func:`mdl_utils.entropy.description_length`) bins only the non-zero values, over each
    feature's own range.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}")
    matrix: Any = z  # scipy's stubs type csr_array() per input kind, not for their union
    z = sparse.csc_array(sparse.csr_array(matrix))
    n_samples, n_features = z.shape
    total = 0.0
    for i in range(n_features):
        values = z.data[z.indptr[i] : z.indptr[i + 1]]
        values = values[values > 0]
        rate = values.size / n_samples
        if rate in (0.0, 1.0):
            h_fire = 0.0
        else:
            h_fire = -rate * math.log2(rate) - (1 - rate) * math.log2(1 - rate)
        top = max(float(values.max()) if values.size else 0.0, max_floor)
        width = top / num_bins
        idx = np.clip(np.ceil(values / width).astype(np.int64) - 1, 0, num_bins - 1)
        # Zeros land in the first bin [0, width], together with the smallest values.
        counts = np.bincount(idx, minlength=num_bins).astype(np.float64)
        counts[0] += n_samples - values.size
        p = counts / n_samples
        p = p[(p > 0) & (p < 1)]
        h_value = float(-np.sum(p * np.log2(p))) if p.size else 0.0
        total += h_fire + rate * h_value
    return total
