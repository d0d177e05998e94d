"""Per-feature precision against uniform precision, compared at exactly equal MSE.

:func:`allocate_bits` gives every feature its own whole number of bits by a
greedy that removes precision where it costs the least MSE per bit of DL saved. Two questions
decide whether that is worth the extra machinery:

1. **Does it beat uniform precision at the same loss?** The greedy stops when no removal fits
   under the ceiling, usually a little below it; the paper's uniform precision on the
   continuous scale (:func:`mdl_utils.protocol.continuous_precision`) can be put at *any*
   MSE. :func:`compare_at_equal_mse` therefore measures the uniform code at exactly the MSE
   the per-feature code reached (within ``1e-4`` relative by default), so the two are compared with
   nothing but the precision rule differing.
2. **Is the greedy's answer a local optimum?** :func:`swap_refine` tries the one move a
   removal-only greedy cannot make: one feature's bins finer and another's coarser at once.
   Each candidate pair's MSE change is exact (the decoder is affine, ``x_hat = z W + b``, so
   the change is a sum over the samples each feature fires on, plus the pair's cross term on
   the samples both fire on); a swap is taken when it lowers the DL and keeps the MSE at or
   below the ceiling. It reports how much the swaps gain over the greedy, which may be nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import sparse

from mdl_utils.entropy import entropies_from_counts, entropies_of_nonzeros
from mdl_utils.latents import decoded, finite_float_array, like_latents, nonzeros
from mdl_utils.quantize import MAX_BITS, codes_in_bins

__all__ = [
    "BitAllocation",
    "allocate_bits",
    "dequantize_per_feature",
    "SwapResult",
    "swap_refine",
    "compare_at_equal_mse",
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
    from scipy import sparse

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


# --------------------------------------------------------------------------------------------
# Checks of the greedy: equal-MSE comparison and the swap move
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwapResult:
    """Result of :func:`swap_refine`.

    Attributes:
        bits: each feature's precision after the swaps, shape (F,) (dead features: as given).
        entropy_bits, entropy_bits_before: the DL (sum of feature entropies, bits per
            sample) after and before the swaps.
        mse, mse_before: reconstruction MSE per element after and before (float64, through
            ``z W + b`` with the latents at their bin centres).
        ceiling: the MSE that no accepted swap may exceed.
        n_swaps: swaps (or single coarsenings) taken.
        n_pairs_evaluated: candidate moves whose exact MSE change was computed.
        gain_bits: ``entropy_bits_before - entropy_bits`` (>= 0).
    """

    bits: np.ndarray
    entropy_bits: float
    entropy_bits_before: float
    mse: float
    mse_before: float
    ceiling: float
    n_swaps: int
    n_pairs_evaluated: int

    @property
    def gain_bits(self) -> float:
        return self.entropy_bits_before - self.entropy_bits

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bits"] = [int(b) for b in self.bits]
        out["gain_bits"] = self.gain_bits
        return out


def _codes(values: np.ndarray, vmax: float, level: int) -> np.ndarray:
    """Codes of a feature's non-zero values at ``level`` bits (as :func:`mdl_utils.quantize.quantize`)."""
    return codes_in_bins(values, np.zeros(values.size, dtype=np.int64), np.array([math.ldexp(vmax, -level)]), level)


def _centres(codes: np.ndarray, vmax: float, level: int) -> np.ndarray:
    return (codes - 0.5) * math.ldexp(vmax, -level)


def _entropy(codes: np.ndarray, n_samples: int) -> float:
    """H(p) of one feature, bits per sample: its codes, and zero on the other samples."""
    _, counts = np.unique(codes, return_counts=True)
    return float(
        entropies_from_counts(n_samples, np.zeros(counts.size, dtype=np.int64), counts, np.array([codes.size]))[0]
    )


def swap_refine(
    z: Any,
    W_dec: Any,
    b_dec: Any,
    x: Any,
    bits: Any,
    *,
    ceiling: float,
    min_bits: int = 0,
    max_bits: int = 12,
    n_candidates: int = 24,
    max_swaps: int = 1000,
) -> SwapResult:
    """Improve a per-feature allocation by swaps: one feature one bit finer, another coarser.

    Each round evaluates, exactly, every pair (i finer by one bit, j coarser to its next
    precision whose entropy is lower) among the ``n_candidates`` features whose refinement
    buys the most MSE per bit of DL and the ``n_candidates`` whose coarsening saves the most
    DL per unit of MSE, together with the plain coarsenings of the latter; it takes the move
    that lowers the DL most while keeping the MSE at or below ``ceiling``, and stops when no
    move lowers it.

    Args:
        z: latents (N, F), non-negative; dense numpy or scipy.sparse.
        W_dec: decoder rows (F, D); ``b_dec``: decoder bias (D,).
        x: targets (N, D).
        bits: the starting precision of each feature (integers, shape (F,)), e.g.
            ``allocate_bits(...).bits``.
        ceiling: the MSE per element no move may exceed (the starting allocation must meet it).
        min_bits, max_bits: the precisions a feature may take.

    Raises:
        ValueError: shapes that do not match, NaN, bits outside ``[min_bits, max_bits]``, or a
            starting allocation above the ceiling.
    """
    zc = sparse.csr_array(z)
    W = np.asarray(W_dec, dtype=np.float64)
    b = np.asarray(b_dec, dtype=np.float64)
    x_np = np.asarray(x, dtype=np.float64)
    n, n_features = zc.shape
    if W.ndim != 2 or W.shape[0] != n_features:
        raise ValueError(f"W_dec has shape {W.shape}, expected ({n_features}, D) for {n_features} features")
    if b.shape != (W.shape[1],) or x_np.shape != (n, W.shape[1]):
        raise ValueError(f"b_dec {b.shape} and x {x_np.shape} must be ({W.shape[1]},) and ({n}, {W.shape[1]})")
    if not (np.isfinite(zc.data).all() and np.isfinite(W).all() and np.isfinite(x_np).all()):
        raise ValueError("z, W_dec and x must be finite (found NaN or inf)")
    if zc.data.size and zc.data.min() < 0:
        raise ValueError("latents must be non-negative")
    level = np.asarray(bits).astype(np.int64).copy()
    if level.shape != (n_features,):
        raise ValueError(f"bits must have shape ({n_features},), got {level.shape}")
    if not 0 <= min_bits <= max_bits:
        raise ValueError(f"need 0 <= min_bits <= max_bits, got {min_bits}, {max_bits}")
    if not (ceiling > 0 and math.isfinite(ceiling)):
        raise ValueError(f"ceiling must be positive and finite, got {ceiling!r}")

    coo = zc.tocoo()
    order = np.lexsort((coo.row, coo.col))
    rows = coo.row[order].astype(np.int64)
    cols = coo.col[order].astype(np.int64)
    values = coo.data[order].astype(np.float64)
    keep = values > 0
    rows, cols, values = rows[keep], cols[keep], values[keep]
    starts = np.searchsorted(cols, np.arange(n_features + 1))
    vmax = np.zeros(n_features)
    np.maximum.at(vmax, cols, values)
    live = np.flatnonzero(vmax > 0)
    bad = [int(i) for i in live if not min_bits <= level[i] <= max_bits]
    if bad:
        raise ValueError(f"bits of features {bad[:5]} lie outside [{min_bits}, {max_bits}]")

    seg = {int(i): slice(starts[i], starts[i + 1]) for i in live}
    h_cache: dict[tuple[int, int], float] = {}

    def h(i: int, lv: int) -> float:
        key = (i, lv)
        if key not in h_cache:
            h_cache[key] = _entropy(_codes(values[seg[i]], vmax[i], lv), n)
        return h_cache[key]

    def centres(i: int, lv: int) -> np.ndarray:
        return _centres(_codes(values[seg[i]], vmax[i], lv), vmax[i], lv)

    current = np.zeros_like(values)
    for feature in live.tolist():
        current[seg[feature]] = centres(feature, int(level[feature]))
    recon = sparse.csr_array((current, (rows, cols)), shape=(n, n_features)) @ W + b
    residual = x_np - recon
    n_entries = residual.size
    limit = ceiling * n_entries
    sse = float(np.sum(residual**2))
    if sse > limit * (1 + 1e-12):
        raise ValueError(f"the starting allocation has MSE {sse / n_entries:.6g}, above the ceiling {ceiling:.6g}")
    norm2 = np.einsum("fd,fd->f", W, W)
    h_before = float(sum(h(int(i), int(level[i])) for i in live))
    sse_before = sse

    def coarser_level(i: int) -> int:
        """The highest precision below i's current one at which its entropy drops (-1: none)."""
        for lv in range(int(level[i]) - 1, min_bits - 1, -1):
            if h(i, lv) < h(i, int(level[i])) - 1e-12:
                return lv
        return -1

    n_swaps = n_evaluated = 0
    while n_swaps < max_swaps:
        # Single moves of every live feature: finer by one bit (up), coarser (down).
        up: dict[int, tuple[np.ndarray, float, float]] = {}
        down: dict[int, tuple[np.ndarray, float, float, int]] = {}
        for i in live.tolist():
            s = seg[i]
            r_dot = residual[rows[s]] @ W[i]
            if level[i] < max_bits:
                d = centres(i, int(level[i]) + 1) - current[s]
                up[i] = (
                    d,
                    norm2[i] * float(d @ d) - 2.0 * float(d @ r_dot),
                    h(i, int(level[i]) + 1) - h(i, int(level[i])),
                )
            lv = coarser_level(i)
            if lv >= 0:
                d = centres(i, lv) - current[s]
                down[i] = (d, norm2[i] * float(d @ d) - 2.0 * float(d @ r_dot), h(i, lv) - h(i, int(level[i])), lv)
        ups = sorted((i for i in up if up[i][1] < 0), key=lambda i: (up[i][2] / -up[i][1], i))[
            :n_candidates
        ]  # DL paid per SSE removed
        downs = sorted(down, key=lambda j: (max(down[j][1], 0.0) / -down[j][2], j))[:n_candidates]
        best: tuple[float, float, int | None, int] | None = None  # (dH, dSSE, i, j)
        for j in downs:
            dj, sse_j, hj, _ = down[j]
            if sse + sse_j <= limit and hj < -1e-12:  # a plain coarsening that now fits
                n_evaluated += 1
                if best is None or (hj, sse_j) < best[:2]:
                    best = (hj, sse_j, None, j)
            for i in ups:
                if i == j:
                    continue
                di, sse_i, hi = up[i]
                dh = hi + hj
                if dh >= -1e-12 or (best is not None and dh > best[0]):
                    continue
                _, ia, ja = np.intersect1d(rows[seg[i]], rows[seg[j]], assume_unique=True, return_indices=True)
                cross = 2.0 * float(W[i] @ W[j]) * float(di[ia] @ dj[ja]) if ia.size else 0.0
                d_sse = sse_i + sse_j + cross
                n_evaluated += 1
                if sse + d_sse <= limit and (best is None or (dh, d_sse) < best[:2]):
                    best = (dh, d_sse, i, j)
        if best is None:
            break
        _, _, i_up, j_down = best
        moves = [(j_down, int(level[j_down]), down[j_down][3], down[j_down][0])]
        if i_up is not None:
            moves.append((i_up, int(level[i_up]), int(level[i_up]) + 1, up[i_up][0]))
        for f, _, lv, d in moves:
            s = seg[f]
            residual[rows[s]] -= d[:, None] * W[f]
            current[s] += d
            level[f] = lv
        new_sse = float(np.sum(residual**2))
        if new_sse > limit:  # float rounding of the exact update: undo and stop
            for f, old, _, d in moves:
                s = seg[f]
                residual[rows[s]] += d[:, None] * W[f]
                current[s] -= d
                level[f] = old
            break
        sse = new_sse
        n_swaps += 1
    h_after = float(sum(h(int(i), int(level[i])) for i in live))
    return SwapResult(
        bits=level,
        entropy_bits=h_after,
        entropy_bits_before=h_before,
        mse=sse / n_entries,
        mse_before=sse_before / n_entries,
        ceiling=float(ceiling),
        n_swaps=n_swaps,
        n_pairs_evaluated=n_evaluated,
    )


def compare_at_equal_mse(
    sae: Any, x: Any, *, epsilon: float, swaps: bool = True, rel_band: float = 1e-4, **swap_options: Any
) -> dict[str, Any]:
    """Per-feature precision (greedy, then swaps) against uniform precision at the same MSE.

    For the SAE's latents on ``x``: the uniform continuous precision at ``epsilon`` (the
    protocol's DL); :func:`mdl_utils.allocation.allocate_bits` at ceiling ``epsilon``; the uniform
    continuous precision at exactly the MSE the allocation reached; :func:`swap_refine` from
    the allocation (same ceiling); and the uniform precision at the MSE the swaps reached.
    DLs are bits per sample; ``greedy_saving`` and ``swap_saving`` are the relative DL saved
    by per-feature precision against uniform precision *at equal MSE* (entropy only; the
    allocation's table of precisions is reported beside as ``table_bits_per_sample``). Each
    uniform reading carries the bisection's ``status``: ``"in_band"`` means its MSE is within
    ``rel_band`` below the target; ``"band_missed"`` (the quantised MSE jumps across the band,
    which happens on few samples) means it is lower still, which favours the per-feature code.
    """
    from mdl_utils.entropy import description_length
    from mdl_utils.mdl import decoder_fn
    from mdl_utils.protocol import continuous_precision, sparse_latents

    z = sparse_latents(sae, x)
    x_np = np.asarray(x, dtype=np.float32)

    def uniform(at: float) -> dict[str, Any]:
        p = continuous_precision(sae, z, x_np, epsilon=at, rel_band=rel_band)
        # status "in_band": MSE within rel_band below ``at``; "band_missed": the quantised MSE
        # jumps across the band (few samples), and the uniform code sits a little lower.
        return {
            "bits": p.bits,
            "mse": p.mse_quantised,
            "status": p.status,
            "dl_bits": description_length(z, bits=p.bits).dl_bits,
        }

    at_eps = uniform(epsilon)
    alloc = allocate_bits(z.toarray(), decoder_fn(sae), x_np, tolerance=epsilon)
    greedy = {
        "entropy_bits": alloc.entropy_bits,
        "dl_bits": alloc.dl_bits,
        "mse": alloc.mse,
        "table_bits_per_sample": alloc.table_bits / alloc.n_samples,
        "started_from": alloc.started_from,
    }
    same = uniform(alloc.mse)
    out: dict[str, Any] = {
        "width": int(sae.width),
        "epsilon": float(epsilon),
        "uniform_at_epsilon": at_eps,
        "greedy": greedy,
        "uniform_at_greedy_mse": same,
        "greedy_saving": 1.0 - alloc.entropy_bits / same["dl_bits"],
        "swaps": None,
        "uniform_at_swap_mse": None,
        "swap_saving": None,
    }
    if swaps:
        W = sae.W_dec_FD.detach().double().cpu().numpy()
        b = sae.b_dec_D.detach().double().cpu().numpy()
        res = swap_refine(
            z,
            W,
            b,
            x_np,
            alloc.bits,
            ceiling=epsilon,
            min_bits=alloc.min_bits,
            max_bits=alloc.start_bits,
            **swap_options,
        )
        out["swaps"] = {k: v for k, v in res.to_dict().items() if k != "bits"}
        after = uniform(res.mse)
        out["uniform_at_swap_mse"] = after
        out["swap_saving"] = 1.0 - res.entropy_bits / after["dl_bits"]
    return out
