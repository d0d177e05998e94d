"""Per-feature precision: a greedy allocation of whole bits to each feature.

:func:`allocate_bits` gives every feature its own whole number of bits by a greedy that
removes precision where it costs the least MSE per bit of DL saved, until no removal fits
under the MSE ceiling; :func:`dequantize_per_feature` reads latents back at those
precisions. Whether this beats the paper's uniform precision at equal loss, and whether the
greedy's answer is a local optimum, is checked in :mod:`mdl_utils.allocation_checks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import sparse

from mdl_utils.entropy import entropies_of_nonzeros
from mdl_utils.latents import decoded, finite_float_array, like_latents, nonzeros
from mdl_utils.quantize import MAX_BITS

__all__ = [
    "BitAllocation",
    "allocate_bits",
    "dequantize_per_feature",
]


# --------------------------------------------------------------------------------------------
# Per-feature precision: a greedy bit allocation (beyond the paper; paper brief section 8)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BitAllocation:
    """Result of :func:`allocate_bits`: one precision per feature and the DL it gives.

    Attributes:
        bits: bits per non-zero value of each feature, shape (D,): 2**bits equal bins over the
            feature's range (0, max_i], as in :func:`~mdl_utils.quantize.quantize`; 0 bits means a single bin, so
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
            meeting the ceiling, as :func:`~mdl_utils.precision.effective_precision` would choose it; None if none
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


def _affine_decoder(
    decode: Callable[[Any], Any], z: Any, n_features: int, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's bias b (d,) and rows W (D, d), read off by decoding 0 and each unit vector."""
    bias = decoded(decode, like_latents(np.zeros((1, n_features)), z))[0]
    rows = []
    for start in range(0, n_features, chunk):
        eye = np.zeros((min(chunk, n_features - start), n_features))
        eye[np.arange(eye.shape[0]), start + np.arange(eye.shape[0])] = 1.0
        rows.append(decoded(decode, like_latents(eye, z)) - bias)
    return np.concatenate(rows), bias


def _sparse_matmul(n: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, W: np.ndarray) -> np.ndarray:

    return sparse.csr_array((values, (rows, cols)), shape=(n, W.shape[0])) @ W


def _dequantized(codes: np.ndarray, vmax: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Bin centres (k - 1/2) * max / 2**bits of codes k >= 1, elementwise."""
    return (codes - 0.5) * np.ldexp(vmax, -bits)


def _codes_at(values: np.ndarray, vmax: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Codes of non-zero values at the given bits, exactly as :func:`~mdl_utils.quantize.quantize` computes them."""
    codes = np.ceil(values / np.ldexp(vmax, -bits))
    return np.clip(codes, 1.0, np.ldexp(1.0, bits)).astype(np.int64)


def dequantize_per_feature(z: Any, bits: Sequence[int] | np.ndarray) -> np.ndarray:
    """Latents quantised with one precision per feature, mapped back to bin centres.

    Feature i is binned as :func:`~mdl_utils.quantize.quantize` bins it with ``bits=bits[i]`` (2**bits[i] bins over
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

    The paper gives every feature the same precision (:func:`~mdl_utils.precision.effective_precision`); some
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
        decode: latents -> reconstruction, as for :func:`~mdl_utils.precision.effective_precision`.
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
        raise ValueError(f"tolerance must be finite and {'> 0' if mode == 'absolute' else '>= 0'}; got {tolerance}")
    if not (isinstance(start_bits, (int, np.integer)) and 1 <= start_bits <= 30):
        raise ValueError(f"start_bits must be an integer in 1..30; got {start_bits!r}")
    if not (isinstance(min_bits, (int, np.integer)) and 0 <= min_bits <= start_bits):
        raise ValueError(f"min_bits must be an integer in 0..start_bits; got {min_bits!r}")
    nz = nonzeros(z, "latents")
    n, n_features = nz.n_samples, nz.n_features
    x_np = finite_float_array(x, "x")
    x_hat = decoded(decode, z)
    if x_hat.shape != x_np.shape or x_hat.ndim != 2 or x_hat.shape[0] != n:
        raise ValueError(f"decode returned shape {x_hat.shape}, but x has shape {x_np.shape}")
    mse_raw = float(np.mean((x_hat - x_np) ** 2))
    if mode == "absolute":
        if mse_raw > tolerance:
            raise ValueError(
                f"the unquantised latents already have MSE {mse_raw:.6g}, above the absolute tolerance {tolerance:.6g}"
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
        h_levels[:, level] = entropies_of_nonzeros(n, n_features, cols, (codes_top + (1 << shift) - 1) >> shift)

    def decoded_mse(level_of: np.ndarray) -> float:
        """The MSE through ``decode`` itself with feature i at ``level_of[i]`` bits."""
        dense = np.zeros((n, n_features))
        dense[rows, cols] = _dequantized(_codes_at(values, vmax_e, level_of[cols]), vmax_e, level_of[cols])
        return float(np.mean((decoded(decode, like_latents(dense, z)) - x_np) ** 2))

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
        run_bits = entropies_of_nonzeros(n, n_features, cols, run[1])
        if best is None or float(run_bits.sum()) < float(best[1].sum()) - 1e-12:
            best = (name, run_bits, run)
    assert best is not None  # starting_points is never empty (start is checked above)
    started_from, feature_bits, (bits, codes, history, path_h, path_mse, mse) = best
    uniform_entropy = None if uniform_level is None else float(h_levels[:, uniform_level][live].sum())
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
