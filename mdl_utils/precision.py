"""The effective precision on whole bits (section 4, step 3 of the paper brief).

:func:`effective_precision` finds the coarsest quantisation whose reconstruction MSE stays
within a tolerance; :func:`effective_precision_for_loss` does the same for any loss of the
latents. Both search whole bits (or multiples of a step), the paper's reading. The protocol
of chapters 3, 6 and 7 uses the continuous scale instead
(:func:`mdl_utils.protocol.continuous_precision`, :func:`mdl_utils.protocol.bisect_precision`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mdl_utils.array_types import Latents, Data
from mdl_utils.latents import decoded, finite_float_array, like_latents, nonzeros
from mdl_utils.quantize import codes_of_nonzeros, widths_of_nonzeros

__all__ = ["EffectivePrecision", "LossPrecision", "effective_precision", "effective_precision_for_loss"]

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


def _reconstruction_mse(decode: Callable[[Any], Any], z: Latents, x: np.ndarray) -> float:
    out = decoded(decode, z)
    if out.shape != x.shape:
        raise ValueError(f"decode returned shape {out.shape}, but x has shape {x.shape}")
    return float(np.mean((out - x) ** 2))


def effective_precision(
    z: Latents,
    decode: Callable[[Any], Any],
    x: Data,
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
    quantising with :func:`~mdl_utils.quantize.quantize`, dequantising to bin centres and decoding, and returns the
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
        raise ValueError(f"tolerance must be finite and {'> 0' if mode == 'absolute' else '>= 0'}; got {tolerance}")
    x_np = finite_float_array(x, "x")
    bits, step, mse, mse_raw, ceiling, tried = _coarsest_precision(
        z,
        lambda latents: _reconstruction_mse(decode, latents, x_np),
        tolerance=tolerance,
        mode=mode,
        search=search,
        candidates=candidates,
        what="MSE",
    )
    return EffectivePrecision(bits, step, mse, mse_raw, ceiling, tried)


def _check_mode(mode: str, search: str) -> None:
    if mode not in ("absolute", "increase"):
        raise ValueError(f"mode must be 'absolute' or 'increase'; got {mode!r}")
    if search not in ("bits", "step"):
        raise ValueError(f"search must be 'bits' or 'step'; got {search!r}")


def _coarsest_precision(
    z: Latents,
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
        widths = widths_of_nonzeros(nz, bits, step)
        centres = (codes_of_nonzeros(nz, widths, bits) - 0.5) * widths[nz.cols]
        dense = np.zeros((nz.n_samples, nz.n_features))
        dense[nz.rows, nz.cols] = centres
        value = evaluate(like_latents(dense, z))
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
    z: Latents,
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
        if isinstance(latents, torch.Tensor):
            with torch.no_grad():
                value = loss(latents)
        else:
            value = loss(latents)
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"loss returned a non-finite value ({value})")
        return value

    bits, step, value, loss_raw, ceiling, tried = _coarsest_precision(
        z,
        evaluate,
        tolerance=tolerance,
        mode=mode,
        search=search,
        candidates=candidates,
        what="loss",
    )
    return LossPrecision(bits, step, value, loss_raw, ceiling, tried)
