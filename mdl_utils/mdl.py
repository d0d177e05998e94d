"""The epsilon-MDL protocol applied to trained SAEs (section 4 of the paper brief).

Given SAEs that reach a loss tolerance epsilon, :func:`evaluate_mdl` finds each one's
effective precision (the coarsest quantisation of its latents whose test MSE stays at or
below epsilon) and measures its description length there; :func:`mdl_optimal` picks the SAE
with the smallest DL; :func:`regime_points` names the points A-D of the paper's MNIST figure.
Two feature statistics replace eyeballing decoder images: :func:`max_cosine_to_data`
(memorised whole digits score high) and :func:`pixel_coverage` (fragments score low, dense
blobs high).

This module sits on top of :mod:`mdl_utils.dl` (which takes plain arrays) and
:mod:`mdl_utils.sae` (which knows nothing about description length).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mdl_utils.array_types import Latents, Data
from mdl_utils.entropy import description_length
from mdl_utils.precision import effective_precision
from mdl_utils.resolution import optimum_index
from mdl_utils.sae import BatchTopKSAE

__all__ = [
    "MDLEvaluation",
    "latents",
    "decoder_fn",
    "evaluate_mdl",
    "mdl_optimal",
    "regime_points",
    "max_cosine_to_data",
    "pixel_coverage",
]


@dataclass(frozen=True)
class MDLEvaluation:
    """One SAE measured under the epsilon-MDL protocol on held-out data.

    Attributes:
        width: number of features D.
        k: the SAE's training k.
        mse: reconstruction MSE per input element with unquantised latents.
        bits: effective precision, bits per non-zero latent value.
        mse_quantised: MSE with the latents quantised at ``bits``.
        dl_bits: description length, bits per sample, at ``bits`` (sum of feature entropies).
        l0: mean number of active features per sample.
        upper_bound_bits: L0 * (bits + log2 D), bits per sample.
        dead_fraction: fraction of features that never fire on the data.
        epsilon: the tolerance used (MSE per input element).
    """

    width: int
    k: float
    mse: float
    bits: int
    mse_quantised: float
    dl_bits: float
    l0: float
    upper_bound_bits: float
    dead_fraction: float
    epsilon: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_tensor(x: Any) -> torch.Tensor:
    array = np.asarray(x, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"x must be a 2-D (samples, d_in) array, got shape {array.shape}")
    return torch.from_numpy(np.array(array))  # a writable copy: torch warns on read-only arrays


@torch.no_grad()
def latents(sae: BatchTopKSAE, x: Data, *, batch_size: int = 8192) -> np.ndarray:
    """Inference latents ``z_NF`` of inputs ``x`` (N, d_in), computed in batches, as numpy."""
    x_ND = _as_tensor(x)
    parts = [sae.encode(x_ND[i : i + batch_size]).numpy() for i in range(0, len(x_ND), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, sae.width), dtype=np.float32)


def decoder_fn(sae: BatchTopKSAE) -> Callable[[Latents], np.ndarray]:
    """The SAE's decoder as a function numpy latents (N, F) -> reconstructions (N, d_in)."""

    @torch.no_grad()
    def decode(z: Latents) -> np.ndarray:
        return sae.decode(torch.as_tensor(np.asarray(z), dtype=torch.float32)).numpy()

    return decode


def evaluate_mdl(sae: BatchTopKSAE, x: Data, *, epsilon: float) -> MDLEvaluation:
    """Effective precision and description length of ``sae`` on held-out inputs ``x``.

    Implements steps 3 and 4 of the protocol: the precision is the smallest number of bits
    per non-zero value (2**bits bins over each feature's range, see
    :func:`mdl_utils.quantize.quantize`) whose quantised reconstruction MSE is at most ``epsilon``;
    the DL is the sum of the features' entropies at that precision, bits per sample.

    Raises:
        ValueError: the SAE's unquantised MSE on ``x`` is already above ``epsilon``, or ``x``
            does not match the SAE (wrong shape, NaN).
    """
    z = latents(sae, x)
    x_np = np.asarray(x, dtype=np.float32)
    precision = effective_precision(z, decoder_fn(sae), x_np, tolerance=epsilon, mode="absolute")
    dl = description_length(z, bits=precision.bits)
    return MDLEvaluation(
        width=sae.width,
        k=sae.k,
        mse=precision.mse_unquantised,
        bits=int(precision.bits),  # type: ignore[arg-type]
        mse_quantised=precision.mse,
        dl_bits=dl.dl_bits,
        l0=dl.l0,
        upper_bound_bits=dl.upper_bound_bits,
        dead_fraction=float(np.mean(~(z > 0).any(axis=0))),
        epsilon=epsilon,
    )


def mdl_optimal(evaluations: Sequence[MDLEvaluation]) -> int:
    """Index of the epsilon-MDL-optimal SAE: the smallest DL among those within tolerance.

    Raises:
        ValueError: no evaluation has ``mse_quantised <= epsilon``.
    """
    best = optimum_index(
        [e.dl_bits if e.mse_quantised <= e.epsilon else None for e in evaluations], [e.width for e in evaluations]
    )
    if best is None:
        raise ValueError("no SAE reaches the tolerance: there is no epsilon-MDL-optimal SAE")
    return best


def regime_points(widths: Sequence[int], dl_bits: Sequence[float]) -> dict[str, int]:
    """The paper's marked points on a DL-against-width curve, as indices into ``widths``.

    ``B`` is the DL minimum; ``A`` the widest SAE (very wide and sparse); ``D`` the narrowest
    and ``C`` the one halfway (in log width) between ``D`` and ``B`` (narrow, high L0). Points
    coincide when the curve has too few widths on a side; every index is still valid.
    """
    if len(widths) != len(dl_bits) or not widths:
        raise ValueError("widths and dl_bits must be non-empty and of the same length")
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    b = optimum_index(dl_bits, widths)
    assert b is not None
    narrow = order[: order.index(b) + 1]  # from the narrowest up to B
    d = narrow[0]
    target = 0.5 * (np.log2(widths[d]) + np.log2(widths[b]))
    inner = narrow[1:-1] or narrow
    c = min(inner, key=lambda i: abs(np.log2(widths[i]) - target))
    return {"A": order[-1], "B": b, "C": c, "D": d}


def max_cosine_to_data(W_dec_FD: Data, x_ND: Data, *, batch_size: int = 8192) -> np.ndarray:
    """For each feature, the largest cosine similarity between its decoder row and any input.

    Near 1 when a feature is (a copy of) one whole training example; low for strokes and
    fragments that are part of many inputs but equal to none. Shape (F,).
    """
    W = torch.from_numpy(np.array(W_dec_FD, dtype=np.float32))  # a copy: torch warns on read-only arrays
    X = _as_tensor(x_ND)
    if W.ndim != 2 or W.shape[1] != X.shape[1]:
        raise ValueError(f"decoder rows {tuple(W.shape)} and inputs {tuple(X.shape)} disagree")
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = torch.full((W.shape[0],), -1.0)
    for i in range(0, len(X), batch_size):
        chunk = X[i : i + batch_size]
        chunk = chunk / chunk.norm(dim=1, keepdim=True).clamp_min(1e-12)
        best = torch.maximum(best, (W @ chunk.T).max(dim=1).values)
    return best.numpy()


def pixel_coverage(W_dec_FD: Data) -> np.ndarray:
    """Fraction of input pixels each feature spreads over: the participation ratio.

    For a decoder row w of length d, ``(sum w^2)^2 / (d * sum w^4)``: 1/d when all weight
    sits on one pixel, 1 when it is spread evenly over all pixels, and m/d for a row with
    m equal non-zero entries. Low means a small fragment; high means a dense blob. Shape (F,).
    """
    W = np.asarray(W_dec_FD, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"decoder rows must be 2-D (features, d_in), got shape {W.shape}")
    squares = W**2
    fourth = (squares**2).sum(axis=1)
    ratio = squares.sum(axis=1) ** 2 / (W.shape[1] * np.where(fourth > 0, fourth, np.inf))
    return ratio
