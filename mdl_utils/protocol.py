"""The resolved epsilon-MDL protocol: equal loss, a minimum over k, and honest uncertainty.

Chapter 3 compares SAEs of different widths by their description length (DL) at one loss
tolerance epsilon (section 4 of the paper brief). Done naively, three things make the answer
an artefact of the measurement rather than of the SAEs; this module removes each:

- **Precision on a continuous scale** (:func:`continuous_precision`). With whole bits per
  value, one SAE may land just under epsilon at 3 bits while another is charged a fourth bit
  for missing it by 0.5%: a jump of several bits of DL. Here the bits are real-valued (bin
  width ``max_i / 2**b``, see :func:`mdl_utils.quantize.n_bins`) and found by bisection, so that
  every compared SAE's quantised MSE sits *at* the tolerance, within ``rel_band`` (0.1%)
  below it. Whole bits are still reported beside, as the paper's "B bits" reading.
- **A minimum over k, not a first hit** (:func:`next_k_index`). For a fixed width, lowering
  k raises the unquantised MSE, which leaves less room for quantisation (finer bins, more
  bits per value); raising k adds active features. DL against k therefore has a minimum,
  and DL*(width) is that minimum, searched on a fixed grid ``k = 2**(j/4)`` until both of
  its neighbours are known to be higher (an SAE whose MSE misses epsilon counts as
  infinitely long).
- **Uncertainty** (:func:`bootstrap_dl`, :func:`mdl_utils.resolution.resolve_optimum`). DL*(width) varies with
  the training seed and with the test digits it is measured on. The optimum is *resolved*
  only when every other width's DL* is higher by more than the combined uncertainty of the
  difference; otherwise the set of widths that cannot be told apart is reported.

Beside these, two readings that put our number in context: :func:`mdl_utils.entropy.two_part_bits` (the
decoder's own bits added, for N samples) and :func:`mdl_utils.entropy.saebench_dl` (the count used by
SAEBench's MDL evaluation, written from its description, on the same latents).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy import sparse

from mdl_utils.array_types import Data
from mdl_utils.entropy import description_length, saebench_dl
from mdl_utils.quantize import bin_widths, dequantize, quantize
from mdl_utils.sae import BatchTopKSAE

__all__ = [
    "REL_BAND",
    "BITS_RESOLUTION",
    "ContinuousPrecision",
    "SAEMeasurement",
    "k_of_index",
    "index_of_k",
    "next_k_index",
    "sparse_latents",
    "sparse_decode",
    "quantised_latents",
    "quantised_mse",
    "reconstruction_mse",
    "continuous_precision",
    "bisect_precision",
    "coarsest_whole_bits",
    "measure_sae",
    "bootstrap_dl",
    "bootstrap_weights",
]

#: Every compared SAE's quantised MSE lies in ``[(1 - REL_BAND) * eps, eps]``.
REL_BAND = 1e-3
#: Where the band cannot pin the precision (the unquantised MSE already lies in it, so every
#: precision meeting eps does), the bisection narrows its bracket to this many bits instead.
BITS_RESOLUTION = 1e-3
#: Steps of the k grid per doubling of k: ``k_j = 2**(j / K_STEPS_PER_DOUBLING)``.
K_STEPS_PER_DOUBLING = 4


# --------------------------------------------------------------------------------------------
# The k grid and the search for the minimum over k
# --------------------------------------------------------------------------------------------


def k_of_index(j: float) -> float:
    """The k of grid index ``j``: ``2**(j/4)`` rounded to 4 significant digits (j=12 -> 8.0).

    ``j`` is a whole number on the search's grid, or a half (``j = 11.5``) for the one
    refinement step at the tolerance's edge (see :func:`next_k_index`).
    """
    return float(f"{2.0 ** (j / K_STEPS_PER_DOUBLING):.4g}")


def index_of_k(k: float) -> int:
    """The whole grid index nearest to ``k`` (inverse of :func:`k_of_index` on whole indices)."""
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"k must be positive and finite, got {k!r}")
    return int(round(K_STEPS_PER_DOUBLING * math.log2(k)))


def next_k_index(
    dl_by_index: Mapping[float, float | None],
    *,
    start: int,
    j_max: int,
    j_min: int = 0,
    refine: bool = True,
) -> float | None:
    """The next grid index to train in the search for the minimum of DL over k, or ``None``.

    ``dl_by_index`` maps the indices trained so far to their DL (``None``: the SAE misses the
    tolerance even unquantised, i.e. infinitely long). The search is a pure function of what
    has been trained, so a resumed search retraces the same path. On the whole indices:

    1. nothing trained: ``start``;
    2. no SAE meets the tolerance yet: two steps up in k from the largest index tried (k too
       small misses epsilon), until ``j_max`` (k = width) has been tried;
    3. otherwise, at the best whole index ``b``: train ``b - 1`` and ``b + 1`` if missing
       (within ``[j_min, j_max]``). When both are known (or out of range) the minimum is
       bracketed on the grid.
    4. Refinement (``refine``): DL is usually smallest just above the k at which the SAE
       stops meeting the tolerance, where it also changes fastest. When ``b - 1`` misses the
       tolerance, the half step ``b - 1/2`` between them is trained once; the minimum over
       all trained indices is then bracketed by ``b - 1`` (infeasible) and ``b``.

    Returns ``None`` when the search is over, also when even ``j_max`` misses the tolerance
    (the width is unreachable).
    """
    whole = {j: v for j, v in dl_by_index.items() if float(j).is_integer()}
    if not whole:
        return min(max(start, j_min), j_max)
    feasible = {j: v for j, v in whole.items() if v is not None}
    if not feasible:
        top = max(whole)
        if top >= j_max:
            return None
        return min(top + 2, j_max)
    best = min(feasible, key=lambda j: (feasible[j], j))
    for neighbour in (best - 1, best + 1):
        if j_min <= neighbour <= j_max and neighbour not in whole:
            return neighbour
    half = best - 0.5
    if refine and best - 1 in whole and whole[best - 1] is None and half not in dl_by_index:
        return half
    return None


# --------------------------------------------------------------------------------------------
# Latents, quantised loss and the continuous precision
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sparse_latents(sae: BatchTopKSAE, x: Data, *, batch_size: int = 4096) -> sparse.csr_array:
    """The SAE's inference latents on ``x`` (N, d_in) as a scipy CSR array (float32)."""
    x_ND = _x_tensor(x)
    sae.check_input(x_ND)
    parts = []
    for start in range(0, len(x_ND), batch_size):
        acts = sae.encode(x_ND[start : start + batch_size]).numpy()
        parts.append(sparse.csr_array(acts))
    return sparse.vstack(parts, format="csr")


def _x_tensor(x: Any) -> torch.Tensor:
    """``x`` as a writable float32 tensor (a copy: torch refuses read-only arrays)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu()
    return torch.from_numpy(np.array(x, dtype=np.float32))


def sparse_decode(sae: BatchTopKSAE, z: sparse.csr_array) -> torch.Tensor:
    """The SAE's decoding of the sparse latents ``z`` (N, width) with a sparse product:
    ``z @ W_dec + b_dec`` as a float32 tensor (N, d_in)."""
    z = sparse.csr_array(z)
    crow = torch.from_numpy(z.indptr.astype(np.int64))
    col = torch.from_numpy(z.indices.astype(np.int64))
    val = torch.from_numpy(z.data.astype(np.float32))
    W = sae.W_dec_FD.detach().float().cpu()
    if val.numel():
        with warnings.catch_warnings():
            # torch flags CSR support as beta; the product used here is stable and tested.
            warnings.simplefilter("ignore", UserWarning)
            z_t = torch.sparse_csr_tensor(crow, col, val, size=z.shape)
        x_hat = (z_t @ W) + sae.b_dec_D.detach().float().cpu()
    else:
        x_hat = sae.b_dec_D.detach().float().cpu().expand(z.shape[0], -1)
    return x_hat


def _decode_mse(sae: BatchTopKSAE, z: sparse.csr_array, x_ND: torch.Tensor) -> float:
    """MSE per element of ``decode(z)`` against ``x_ND``, with a sparse decoder."""
    x_hat = sparse_decode(sae, z)
    return float((x_hat - x_ND).pow(2).sum(dtype=torch.float64)) / x_ND.numel()


def quantised_latents(z: sparse.csr_array, bits: float) -> sparse.csr_array:
    """``z`` quantised at ``bits`` and read back at the bin centres (the round trip every
    precision search uses)."""
    return dequantize(quantize(z, bits=bits), bin_widths(z, bits=bits))


def reconstruction_mse(sae: BatchTopKSAE, z: sparse.csr_array, x: Data) -> float:
    """Test MSE per element of the SAE's decoding of the latents ``z`` (unquantised)."""
    return _decode_mse(sae, z, _x_tensor(x))


def quantised_mse(sae: BatchTopKSAE, z: sparse.csr_array, x: Data, bits: float) -> float:
    """Test MSE per element when the latents ``z`` are quantised at ``bits`` (whole or
    fractional; :func:`mdl_utils.quantize.quantize`) and decoded from the bin centres."""
    return _quantised_mse(sae, z, _x_tensor(x), bits)


def _quantised_mse(sae: BatchTopKSAE, z: sparse.csr_array, x_ND: torch.Tensor, bits: float) -> float:
    """The one quantise -> bin centres -> decode round trip every precision search uses."""
    return _decode_mse(sae, quantised_latents(z, bits), x_ND)


@dataclass(frozen=True)
class ContinuousPrecision:
    """The effective precision on the continuous scale (see :func:`continuous_precision`).

    Attributes:
        bits: fractional bits per non-zero value (bin width ``max_i / 2**bits``).
        mse_quantised: test MSE with the latents quantised at ``bits``. Under another loss
            (chapter 7's cross-entropy increase, :mod:`mdl_utils.downstream`) the two ``mse``
            fields hold that loss: they are whatever the tolerance counts.
        mse: test MSE with the latents as they are.
        epsilon: the tolerance.
        status: ``"in_band"`` (``mse_quantised`` in ``[(1 - rel_band) eps, eps]``),
            ``"coarsest"`` (even the coarsest precision tried stays below the band: the SAE
            over-delivers, and ``bits`` is that coarsest precision), or ``"band_missed"``
            (the bisection closed on a jump in the MSE across the band; ``bits`` is the finer
            end, whose MSE is below the band).
        n_evaluations: MSE evaluations the bisection used.
    """

    bits: float
    mse_quantised: float
    mse: float
    epsilon: float
    status: str
    n_evaluations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContinuousPrecision:
        """Read the form ``to_dict()`` writes."""
        return cls(
            bits=float(d["bits"]),
            mse_quantised=float(d["mse_quantised"]),
            mse=float(d["mse"]),
            epsilon=float(d["epsilon"]),
            status=str(d["status"]),
            n_evaluations=int(d["n_evaluations"]),
        )


def continuous_precision(
    sae: BatchTopKSAE,
    z: sparse.csr_array,
    x: Any,
    *,
    epsilon: float,
    rel_band: float = REL_BAND,
    min_bits: float = 0.05,
    max_bits: float = 40.0,
    max_evaluations: int = 80,
) -> ContinuousPrecision:
    """The coarsest real-valued precision at which the quantised MSE still meets ``epsilon``.

    Bisection on ``bits`` in ``[min_bits, max_bits]``: the coarse end's MSE is above
    epsilon (else the answer is ``min_bits``, status ``"coarsest"``), the fine end's at or
    below it; the bracket halves until the fine end's MSE lies in ``[(1 - rel_band) eps,
    eps]``. Where the unquantised MSE itself already lies in that band, every precision that
    meets epsilon does too and the band pins nothing: the bracket then halves until it is
    :data:`BITS_RESOLUTION` bits wide. The quantised MSE need not fall monotonically with the
    bits: the bisection only keeps a bracket whose ends lie on either side of epsilon.

    Raises:
        ValueError: the unquantised MSE already exceeds ``epsilon``; bad ``epsilon`` or
            ``rel_band``.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon!r}")
    if not 0 < rel_band < 1:
        raise ValueError(f"rel_band must lie in (0, 1), got {rel_band!r}")
    x_ND = _x_tensor(x)
    if x_ND.ndim != 2 or x_ND.shape != (z.shape[0], sae.d_in):
        raise ValueError(f"x has shape {tuple(x_ND.shape)}, expected ({z.shape[0]}, {sae.d_in})")
    mse_raw = _decode_mse(sae, z, x_ND)
    if mse_raw > epsilon:
        raise ValueError(
            f"the unquantised test MSE {mse_raw:.6g} is above epsilon {epsilon:.6g}: no "
            "precision can meet the tolerance"
        )
    if z.nnz == 0:
        return ContinuousPrecision(min_bits, mse_raw, mse_raw, epsilon, "coarsest", 0)

    def mse_at(b: float) -> float:
        return _quantised_mse(sae, z, x_ND, b)

    return bisect_precision(
        mse_at,
        mse_raw,
        epsilon=epsilon,
        rel_band=rel_band,
        min_bits=min_bits,
        max_bits=max_bits,
        max_evaluations=max_evaluations,
    )


def bisect_precision(
    mse_at: Callable[[float], float],
    mse_raw: float,
    *,
    epsilon: float,
    rel_band: float = REL_BAND,
    min_bits: float = 0.05,
    max_bits: float = 40.0,
    max_evaluations: int = 80,
    bits_resolution: float = BITS_RESOLUTION,
) -> ContinuousPrecision:
    """The bisection of :func:`continuous_precision` for any quantised-MSE function.

    ``mse_at(bits)`` returns the reconstruction MSE with the latents quantised at ``bits``;
    ``mse_raw`` is the unquantised MSE, at or below ``epsilon``. Used by
    :func:`continuous_precision` (latents and data in memory) and by :mod:`mdl_utils.scoring`
    (latents and activations streamed in chunks).

    The bisection stops once the fine end's MSE lies in the band ``[(1 - rel_band) eps, eps]``.
    When it already does at ``max_bits`` (the unquantised MSE lies in the band), that test
    holds for every precision meeting epsilon, so the bracket is halved until it is
    ``bits_resolution`` bits wide: the answer is where the quantised MSE crosses epsilon, as
    elsewhere, not ``max_bits``. (Where the quantised MSE is not monotonic in the bits, a
    coarser precision may meet epsilon too; the whole-bit reading,
    :func:`coarsest_whole_bits`, scans from the coarse end.)
    """
    low_edge = (1.0 - rel_band) * epsilon
    n = 1
    coarse, fine = min_bits, max_bits
    coarse_mse = mse_at(coarse)
    if coarse_mse <= epsilon:
        return ContinuousPrecision(coarse, coarse_mse, mse_raw, epsilon, "coarsest", n)
    fine_mse = mse_at(fine)
    n += 1
    if fine_mse > epsilon:  # rounding at 40 bits cannot add this much; guard anyway
        raise ValueError(f"even {max_bits} bits give MSE {fine_mse:.6g} > epsilon {epsilon:.6g}")
    # The band pins the answer only where the unquantised MSE lies below it; otherwise the
    # bracket's width does (see the docstring).
    pin_by_width = fine_mse >= low_edge
    while (
        (fine_mse < low_edge or (pin_by_width and fine - coarse > bits_resolution))
        and n < max_evaluations
        and fine - coarse > 1e-9
    ):
        mid = 0.5 * (coarse + fine)
        value = mse_at(mid)
        n += 1
        if value > epsilon:
            coarse = mid
        else:
            fine, fine_mse = mid, value
    status = "in_band" if fine_mse >= low_edge else "band_missed"
    return ContinuousPrecision(fine, fine_mse, mse_raw, epsilon, status, n)


# --------------------------------------------------------------------------------------------
# One SAE measured
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAEMeasurement:
    """One SAE measured on held-out data under the protocol.

    Attributes:
        width, k: the SAE's width and training k.
        mse: unquantised test MSE per element; ``feasible`` is ``mse <= epsilon``.
        l0: mean active features per test sample; ``n_live`` features fire at least once on
            the test data and ``dead_fraction`` is ``1 - n_live / width``.
        precision: the continuous precision (None when not feasible).
        dl_bits, upper_bound_bits: DL and its bound ``L0 (b + log2 D)`` at that precision.
        whole_bits, whole_mse_quantised, whole_dl_bits: the paper's reading, the coarsest whole
            number of bits meeting epsilon, and the DL there.
        dl_at: DL at the continuous precision for other tolerances (key: the tolerance as
            text), None where the SAE misses that tolerance.
        boot: bootstrap replicates of the DL over test samples (:func:`bootstrap_dl`).
        saebench_bits: :func:`mdl_utils.entropy.saebench_dl` at ``2**whole_bits`` bins.
    """

    width: int
    k: float
    epsilon: float
    mse: float
    feasible: bool
    l0: float
    n_live: int
    dead_fraction: float
    precision: ContinuousPrecision | None
    dl_bits: float | None
    upper_bound_bits: float | None
    whole_bits: int | None
    whole_mse_quantised: float | None
    whole_dl_bits: float | None
    dl_at: dict[str, float | None]
    boot: list[float]
    saebench_bits: float | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["precision"] = None if self.precision is None else self.precision.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEMeasurement:
        """Read the form ``to_dict()`` writes; keys it does not know are ignored (a study's
        measure may add readings: chapter 7's cross-entropy)."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise KeyError(f"a measurement lacks {missing}")
        values = {n: d[n] for n in names}
        values["precision"] = None if d["precision"] is None else ContinuousPrecision.from_dict(d["precision"])
        return cls(**values)


def bootstrap_weights(n_samples: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """How often each sample appears in each bootstrap replicate, shape (n_boot, n_samples).

    The same ``(n_samples, n_boot, seed)`` gives the same replicates, so DLs of different
    SAEs measured on the same data are bootstrapped *paired* (same resampled digits).
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_samples, np.full(n_samples, 1.0 / n_samples), size=n_boot).astype(np.float64)


def bootstrap_dl(z: sparse.csr_array, bits: float, weights: np.ndarray) -> np.ndarray:
    """DL of ``z`` at ``bits`` on each bootstrap replicate of its rows (bits per sample).

    The codes and bin widths are those of the full data (the precision is held fixed); each
    replicate reweights the samples by ``weights[r]`` (see :func:`bootstrap_weights`), and
    each feature's entropy is recomputed from the reweighted counts, zeros included.
    """
    z = sparse.csr_array(z)
    n_samples, n_features = z.shape
    if weights.ndim != 2 or weights.shape[1] != n_samples:
        raise ValueError(f"weights must have shape (n_boot, {n_samples}), got {weights.shape}")
    codes = sparse.csr_array(quantize(z, bits=bits))
    rows = np.repeat(np.arange(n_samples), np.diff(codes.indptr))
    cols = codes.indices.astype(np.int64)
    vals = codes.data.astype(np.int64)
    radix = int(vals.max()) + 1 if vals.size else 1
    pair_ids, pair_of_entry = np.unique(cols * radix + vals, return_inverse=True)
    out = np.empty(len(weights))
    for r, w in enumerate(weights):
        total = w.sum()
        entry_w = w[rows]
        pair_counts = np.bincount(pair_of_entry, weights=entry_w, minlength=len(pair_ids))
        p = pair_counts[pair_counts > 0] / total
        h = -np.sum(p * np.log2(p))
        active = np.bincount(cols, weights=entry_w, minlength=n_features)
        p0 = (total - active) / total
        p0 = p0[p0 > 0]
        h -= np.sum(p0 * np.log2(p0))
        out[r] = h
    return out


def measure_sae(
    sae: BatchTopKSAE,
    x: Any,
    *,
    epsilon: float,
    other_tolerances: Sequence[float] = (),
    boot_weights: np.ndarray | None = None,
    rel_band: float = REL_BAND,
) -> SAEMeasurement:
    """Measure ``sae`` on held-out ``x`` under the protocol (see :class:`SAEMeasurement`)."""
    z = sparse_latents(sae, x)
    x_ND = _x_tensor(x)
    x_np = x_ND.numpy()
    mse = _decode_mse(sae, z, x_ND)
    n_samples = z.shape[0]
    l0 = z.nnz / n_samples
    n_live = int(np.unique(z.indices).size)
    feasible = mse <= epsilon
    precision = dl_bits = bound = whole_bits = whole_mse = whole_dl = sb = None
    boot: list[float] = []
    dl_at: dict[str, float | None] = {}
    if feasible:
        precision = continuous_precision(sae, z, x_np, epsilon=epsilon, rel_band=rel_band)
        dl = description_length(z, bits=precision.bits)
        dl_bits, bound = dl.dl_bits, dl.upper_bound_bits
        whole_bits, whole_mse = _whole_bits(sae, z, x_ND, epsilon)
        whole_dl = description_length(z, bits=whole_bits).dl_bits
        sb = saebench_dl(z, num_bins=2**whole_bits)
        if boot_weights is not None:
            boot = [round(float(v), 4) for v in bootstrap_dl(z, precision.bits, boot_weights)]
    for tol in other_tolerances:
        key = f"{tol:.6g}"
        if mse <= tol:
            p = continuous_precision(sae, z, x_np, epsilon=tol, rel_band=rel_band)
            dl_at[key] = description_length(z, bits=p.bits).dl_bits
        else:
            dl_at[key] = None
    return SAEMeasurement(
        width=sae.width,
        k=sae.k,
        epsilon=epsilon,
        mse=mse,
        feasible=feasible,
        l0=l0,
        n_live=n_live,
        dead_fraction=1.0 - n_live / sae.width,
        precision=precision,
        dl_bits=dl_bits,
        upper_bound_bits=bound,
        whole_bits=whole_bits,
        whole_mse_quantised=whole_mse,
        whole_dl_bits=whole_dl,
        dl_at=dl_at,
        boot=boot,
        saebench_bits=sb,
    )


def coarsest_whole_bits(loss_at: Callable[[float], float], epsilon: float) -> tuple[int, float] | None:
    """The paper's whole-bit reading for any loss: the coarsest whole number of bits (1..24)
    at which ``loss_at(bits)`` (the loss of the quantised latents) meets ``epsilon``, and that
    loss; None when none does."""
    for bits in range(1, 25):
        value = loss_at(bits)
        if value <= epsilon:
            return bits, value
    return None


def _whole_bits(sae: BatchTopKSAE, z: sparse.csr_array, x_ND: torch.Tensor, epsilon: float) -> tuple[int, float]:
    """The coarsest whole number of bits (1..24) whose quantised MSE meets ``epsilon``."""
    found = coarsest_whole_bits(lambda b: _quantised_mse(sae, z, x_ND, b), epsilon)
    if found is None:
        raise ValueError(f"no whole number of bits up to 24 meets epsilon {epsilon}")
    return found
