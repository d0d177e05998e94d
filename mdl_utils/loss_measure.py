"""One SAE measured under any loss of its latents, not only the reconstruction MSE.

Section 4 of the paper brief allows the tolerance to be the model's own loss with the SAE
spliced in. :func:`measure_under_loss` is chapter 3's measurement
(:func:`mdl_utils.protocol.measure_sae`) with the MSE replaced by ``loss_at(bits)``, the loss
when the latents are quantised at ``bits`` (and ``raw_loss``, the loss of the latents as they
are): an SAE is feasible when ``raw_loss <= epsilon``; its continuous precision is the
coarsest at which the quantised loss meets ``epsilon``
(:func:`mdl_utils.protocol.bisect_precision`); its DL, bound, whole-bit reading, SAEBench
count, bootstrap and rereads at other tolerances are taken there. Chapter 7 passes a
classifier's cross-entropy increase (:mod:`mdl_utils.downstream_measure`), chapter 8 a
sentence encoder's embedding change (:mod:`mdl_utils.text_study`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import sparse

from mdl_utils.entropy import description_length, saebench_dl
from mdl_utils.protocol import REL_BAND, ContinuousPrecision, bisect_precision, bootstrap_dl, coarsest_whole_bits

__all__ = ["measure_under_loss"]


def measure_under_loss(
    z: sparse.csr_array,
    loss_at: Callable[[float], float],
    *,
    raw_loss: float,
    mse: float,
    width: int,
    k: float,
    epsilon: float,
    other_tolerances: Sequence[float] = (),
    boot_weights: np.ndarray | None = None,
    rel_band: float = REL_BAND,
) -> dict[str, Any]:
    """The measurement of an SAE whose latents on held-out data are ``z``, under a loss.

    Args:
        z: the SAE's latents (N x width, sparse).
        loss_at: the loss with the latents quantised at ``bits`` (fractional bits allowed).
        raw_loss: the loss with the latents as they are; ``mse``: their reconstruction MSE.
        width, k: the SAE's.
        epsilon: the tolerance on the loss.
        other_tolerances: tolerances at which the DL is also read (``dl_at``).
        boot_weights: bootstrap weights over the samples (:func:`mdl_utils.protocol.bootstrap_weights`).

    Returns:
        The keys of :class:`mdl_utils.protocol.SAEMeasurement` (its ``to_dict()``); the
        ``precision`` entry's ``mse`` fields and ``whole_mse_quantised`` hold the loss.
    """

    def precision_for(eps: float) -> ContinuousPrecision | None:
        if raw_loss > eps:
            return None
        if z.nnz == 0:
            return ContinuousPrecision(0.05, raw_loss, raw_loss, eps, "coarsest", 0)
        return bisect_precision(loss_at, raw_loss, epsilon=eps, rel_band=rel_band)

    precision = precision_for(epsilon)
    dl_bits = bound = whole_bits = whole_loss = whole_dl = sb = None
    boot: list[float] = []
    if precision is not None:
        dl = description_length(z, bits=precision.bits)
        dl_bits, bound = dl.dl_bits, dl.upper_bound_bits
        found = coarsest_whole_bits(loss_at, epsilon)
        if found is not None:
            whole_bits, whole_loss = found
            whole_dl = description_length(z, bits=whole_bits).dl_bits
            sb = saebench_dl(z, num_bins=2**whole_bits)
        if boot_weights is not None:
            boot = [round(float(v), 4) for v in bootstrap_dl(z, precision.bits, boot_weights)]
    dl_at: dict[str, float | None] = {}
    for tol in other_tolerances:
        p = precision_for(tol)
        dl_at[f"{tol:.6g}"] = None if p is None else description_length(z, bits=p.bits).dl_bits
    n_live = int(np.unique(z.indices).size)
    return {
        "width": width,
        "k": k,
        "epsilon": epsilon,
        "mse": mse,
        "feasible": precision is not None,
        "l0": z.nnz / z.shape[0],
        "n_live": n_live,
        "dead_fraction": 1.0 - n_live / width,
        "precision": None if precision is None else precision.to_dict(),
        "dl_bits": dl_bits,
        "upper_bound_bits": bound,
        "whole_bits": whole_bits,
        "whole_mse_quantised": whole_loss,
        "whole_dl_bits": whole_dl,
        "dl_at": dl_at,
        "boot": boot,
        "saebench_bits": sb,
    }
