"""Chapter 7's measurement: one SAE under both losses, the classifier's and the MSE.

:func:`measure_downstream` measures an SAE on held-out hidden activations under one arm's
tolerance: the reconstruction MSE (chapter 3's measurement, :func:`mdl_utils.protocol.measure_sae`)
or the increase of the classifier's cross-entropy when the SAE's reconstruction replaces the
real activations (:func:`mdl_utils.models.splice_loss`), with the precision found by
bisection on that loss. :class:`DownstreamMeasure` is the study's measure for one arm
(:mod:`mdl_utils.downstream` runs the study); :func:`precision_curve` gives both losses and
the DL against precision, for a figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mdl_utils.downstream_results import ARMS
from mdl_utils.entropy import description_length
from mdl_utils.loss_measure import measure_under_loss
from mdl_utils.models import MLPClassifier, splice_loss
from mdl_utils.protocol import (
    REL_BAND,
    measure_sae,
    quantised_latents,
    quantised_mse,
    reconstruction_mse,
    sparse_decode,
    sparse_latents,
)
from mdl_utils.sae import BatchTopKSAE

__all__ = ["DownstreamMeasure", "measure_downstream", "precision_curve"]


def _ce_of(
    model: MLPClassifier, sae: BatchTopKSAE, z: Any, h_ND: torch.Tensor, y: np.ndarray
) -> tuple[float, float, float]:
    """(cross-entropy increase, spliced accuracy, clean cross-entropy) for the latents ``z``."""
    with torch.no_grad():
        result = splice_loss(model, h_ND, sparse_decode(sae, z), y)
    return result.ce_increase, result.accuracy_spliced, result.ce_clean


def measure_downstream(
    sae: BatchTopKSAE,
    model: MLPClassifier,
    h: Any,
    y: Any,
    *,
    loss: str,
    epsilon: float,
    other_tolerances: Sequence[float] = (),
    boot_weights: np.ndarray | None = None,
    rel_band: float = REL_BAND,
) -> dict[str, Any]:
    """Measure ``sae`` on held-out activations ``h`` (labels ``y``) under one arm's tolerance.

    ``loss="mse"``: :func:`mdl_utils.protocol.measure_sae` (chapter 3's measurement), plus
    the classifier's readings at the SAE's precision. ``loss="ce"``: the same measurement with
    the cross-entropy increase in place of the MSE: feasible when the unquantised increase is
    at most ``epsilon``; the continuous precision is the coarsest at which the quantised
    increase meets ``epsilon`` (:func:`mdl_utils.protocol.bisect_precision`; the
    ``precision`` entry's ``mse`` fields then hold the cross-entropy increase, as do
    ``whole_mse_quantised`` and the rereads ``dl_at``).

    Returns a dict with the keys of :class:`mdl_utils.protocol.SAEMeasurement` (its ``to_dict()``) (so the
    study selects and summarises it as it does chapter 3's), and: ``loss`` (the arm),
    ``ce_clean`` (nats per digit), ``ce_increase`` (unquantised), ``ce_increase_quantised``,
    ``mse_quantised`` (per hidden unit) and ``accuracy_spliced``, all at the SAE's precision
    (None when it misses the tolerance).
    """
    if loss not in ARMS:
        raise ValueError(f"loss must be one of {ARMS}, got {loss!r}")
    y_np = np.asarray(y)
    h_ND = torch.from_numpy(np.array(h, dtype=np.float32))
    if h_ND.ndim != 2 or len(y_np) != len(h_ND):
        raise ValueError(f"h has shape {tuple(h_ND.shape)} and y {y_np.shape}: need (N, d) and (N,)")
    z = sparse_latents(sae, h_ND)
    ce_raw, _, ce_clean = _ce_of(model, sae, z, h_ND, y_np)

    def readings(bits: float | None, mse_q: float | None = None) -> dict[str, Any]:
        """The classifier's readings at ``bits``, and the quantised MSE (unless known)."""
        if bits is None:
            return {"ce_increase_quantised": None, "mse_quantised": None, "accuracy_spliced": None}
        ce_q, acc, _ = _ce_of(model, sae, quantised_latents(z, bits), h_ND, y_np)
        mse_q = quantised_mse(sae, z, h_ND, bits) if mse_q is None else mse_q
        return {"ce_increase_quantised": ce_q, "mse_quantised": mse_q, "accuracy_spliced": acc}

    if loss == "mse":
        out = measure_sae(
            sae, h_ND, epsilon=epsilon, other_tolerances=other_tolerances, boot_weights=boot_weights, rel_band=rel_band
        ).to_dict()
        p = out["precision"]
        extra = readings(None) if p is None else readings(p["bits"], p["mse_quantised"])
        out.update(loss="mse", ce_clean=ce_clean, ce_increase=ce_raw, **extra)
        return out

    def ce_at(bits: float) -> float:
        return _ce_of(model, sae, quantised_latents(z, bits), h_ND, y_np)[0]

    out = measure_under_loss(
        z,
        ce_at,
        raw_loss=ce_raw,
        mse=reconstruction_mse(sae, z, h_ND),
        width=sae.width,
        k=sae.k,
        epsilon=epsilon,
        other_tolerances=other_tolerances,
        boot_weights=boot_weights,
        rel_band=rel_band,
    )
    p = out["precision"]
    out.update(loss="ce", ce_clean=ce_clean, ce_increase=ce_raw, **readings(None if p is None else p["bits"]))
    return out


@dataclass(frozen=True, eq=False)
class DownstreamMeasure:
    """The study's measure for one arm (see :class:`mdl_utils.study.MSEMeasure`): the
    classifier and the test labels travel with it to Ray workers."""

    model: MLPClassifier
    y_test: np.ndarray
    loss: str
    epsilon: float
    other_tolerances: tuple[float, ...] = ()

    def __call__(self, sae: BatchTopKSAE, x_test: Any, boot_weights: np.ndarray | None = None) -> dict[str, Any]:
        return measure_downstream(
            sae,
            self.model,
            x_test,
            self.y_test,
            loss=self.loss,
            epsilon=self.epsilon,
            other_tolerances=self.other_tolerances,
            boot_weights=boot_weights,
        )


def precision_curve(
    sae: BatchTopKSAE, model: MLPClassifier, h: Any, y: Any, bits: Sequence[float] = tuple(np.arange(1.0, 10.5, 0.5))
) -> dict[str, list[float]]:
    """Both losses and the DL of ``sae`` with its latents quantised at each of ``bits``.

    Returns ``{"bits", "ce_increase" (nats per digit), "mse" (per hidden unit), "dl_bits"}``,
    one entry per precision (fractional bits allowed), for a figure.
    """
    h_ND = torch.from_numpy(np.array(h, dtype=np.float32))
    y_np = np.asarray(y)
    z = sparse_latents(sae, h_ND)
    curve: dict[str, list[float]] = {"bits": [], "ce_increase": [], "mse": [], "dl_bits": []}
    for b in bits:
        zq = quantised_latents(z, float(b))
        curve["bits"].append(float(b))
        curve["ce_increase"].append(_ce_of(model, sae, zq, h_ND, y_np)[0])
        curve["mse"].append(quantised_mse(sae, z, h_ND, float(b)))
        curve["dl_bits"].append(description_length(z, bits=float(b)).dl_bits)
    return curve
