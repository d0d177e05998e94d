"""Checks of the greedy per-feature allocation: equal-MSE comparison and the swap move.

:func:`mdl_utils.allocation.allocate_bits` gives every feature its own whole number of bits.
Two questions decide whether that is worth the extra machinery:

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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import sparse

from mdl_utils.allocation import allocate_bits
from mdl_utils.entropy import entropies_from_counts
from mdl_utils.quantize import codes_in_bins

__all__ = ["SwapResult", "swap_refine", "compare_at_equal_mse"]


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
