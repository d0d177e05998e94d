"""The epsilon-MDL protocol with a downstream tolerance: SAEs judged by the model's own loss.

Section 4 of the paper brief, step 1, allows two tolerances. Chapter 3 uses the first
(reconstruction MSE); this module implements the second on MNIST: the SAEs reconstruct the
first hidden layer of a small classifier (:mod:`mdl_utils.models`), and the loss is the
increase of the classifier's test cross-entropy, in nats per sample, when the SAE's
reconstruction replaces the real activations (:func:`mdl_utils.models.splice_loss`).

The protocol, per tolerance epsilon, with a share ``q`` of it (default a tenth) set aside for
quantisation:

1. for each width, :func:`search_k` trains BatchTopK SAEs (cached, through
   :func:`mdl_utils.sweep.train_cached`) until one's unquantised test loss lands in
   ``[band_low * (1 - q) * epsilon, (1 - q) * epsilon]``;
2. the selected SAE's effective precision is the coarsest quantisation of its latents that
   raises its loss by at most ``q * epsilon``, so the quantised loss stays within epsilon
   (:func:`mdl_utils.dl.effective_precision_for_loss` for the downstream loss,
   :func:`mdl_utils.dl.effective_precision` for MSE), and its DL is measured there;
3. the epsilon-MDL-optimal SAE is the width with the smallest DL.

Why a fixed quantisation budget rather than "quantised loss <= epsilon": an SAE that lands at
the top of the search band would otherwise have almost no room for quantisation and one at the
bottom a lot, so the effective precision, and with it the DL, would depend on where in the
band the search happened to stop. The cross-entropy increase is noisy enough (a few
thousandths of a nat between SAEs trained at neighbouring k) that this decides the optimum.

:func:`run_downstream` does this under the cross-entropy tolerance and, on the same
activations, under an MSE tolerance *calibrated to be equally strict*: ``(1 - q) * epsilon_MSE``
is the median test MSE of the SAEs the cross-entropy search selected. The two selections then demand
the same fidelity in the typical case, and differ only in which errors they count.

Command line (resumable: rerun after an interruption; progress on stderr)::

    python -m mdl_utils.downstream --profile full [--out results/full/downstream] [--threads 1]

Output folder: ``downstream.json`` (settings, provenance, the classifier's metrics, one row
per width and tolerance, the optima), ``classifier.safetensors`` + ``.json`` (float32), and
``saes/<tolerance>.safetensors`` + ``.json`` (float16) for the two optima, whose rows
``stored`` are measured again from the saved weights so that a test can reproduce them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdl_utils.dl import description_length, effective_precision, effective_precision_for_loss
from mdl_utils.mdl import MDLEvaluation, decoder_fn, evaluate_mdl, latents
from mdl_utils.models import (
    ClassifierConfig,
    MLPClassifier,
    hidden_activations,
    load_classifier,
    save_classifier,
    splice_loss,
    train_or_load_classifier,
)
from mdl_utils.profiles import cache_dir as default_cache_dir
from mdl_utils.profiles import choose, parse_job_args, provenance, read_results, write_results
from mdl_utils.protocol import optimum_index
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.sweep import DataSpec, SweepData, load_cached_sae, prepare_data, train_cached
from mdl_utils.train import TrainConfig

__all__ = [
    "DownstreamSettings",
    "DownstreamEvaluation",
    "settings_for",
    "activation_data",
    "search_k",
    "sae_reconstruction",
    "evaluate_downstream",
    "evaluate_mse",
    "precision_curve",
    "run_downstream",
    "load_downstream",
    "main",
]

RESULTS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DownstreamSettings:
    """What the downstream-tolerance experiment trains and how it selects SAEs.

    Attributes:
        classifier: the MNIST classifier whose first hidden layer the SAEs reconstruct.
        n_train: training digits whose activations train the SAEs (first n; ``None`` = all
            60,000); a tenth is held out as the validation split for early stopping.
        n_test: test digits on which losses and DL are measured (``None`` = all 10,000).
        widths: SAE widths, narrow to wide.
        epsilon_ce: the downstream tolerance, increase of test cross-entropy (nats per sample).
        quantisation_share: the share q of each tolerance set aside for quantising the latents:
            the search aims the unquantised loss at ``(1 - q) * eps`` and the effective
            precision may add at most ``q * eps``.
        band_low: a search hits when the unquantised loss lies in ``[band_low, 1] * (1 - q) * eps``.
        max_epochs, patience, batch_size: SAE training (epochs, early-stopping patience, samples).
        max_trials: trainings per width and tolerance in the search over k.
        k_start: the first k tried at the narrowest width (later widths start at the previous
            width's result).
        seed: SAE training seed.
    """

    n_train: int | None
    n_test: int | None
    widths: tuple[int, ...]
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(epochs=10))
    epsilon_ce: float = 0.03
    quantisation_share: float = 0.1
    band_low: float = 0.9
    max_epochs: int = 20
    patience: int = 3
    batch_size: int = 256
    max_trials: int = 6
    k_start: float = 24.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths!r}")
        if not (self.epsilon_ce > 0 and math.isfinite(self.epsilon_ce)):
            raise ValueError(f"epsilon_ce must be positive, got {self.epsilon_ce!r}")
        if not 0 < self.band_low < 1:
            raise ValueError(f"band_low must lie in (0, 1), got {self.band_low!r}")
        if not 0 < self.quantisation_share < 1:
            raise ValueError(f"quantisation_share must lie in (0, 1), got {self.quantisation_share!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classifier"] = self.classifier.to_dict()
        d["widths"] = list(self.widths)
        return d


def settings_for(profile: str) -> DownstreamSettings:
    """Settings for a run profile: ``quick`` (about two minutes here) or ``full`` (about a quarter of an hour)."""
    return choose(
        profile,
        quick=DownstreamSettings(
            n_train=20_000, n_test=2_000, widths=(16, 64, 256, 1024),
            max_epochs=10, patience=3, batch_size=128, max_trials=5,
        ),
        full=DownstreamSettings(
            n_train=None, n_test=None, widths=(16, 32, 64, 128, 256, 512, 1024),
            max_epochs=20, patience=3, batch_size=256, max_trials=6,
        ),
    )


@dataclass(frozen=True)
class DownstreamEvaluation:
    """One SAE measured under the downstream (cross-entropy) tolerance on held-out data.

    Attributes:
        width, k: the SAE's width and training k.
        ce_increase: increase of test cross-entropy with the unquantised reconstruction
            spliced in (nats per sample).
        mse: reconstruction MSE per hidden unit (unquantised).
        bits: effective precision (bits per non-zero latent) under the tolerance.
        ce_increase_quantised: the increase with latents quantised at ``bits``.
        ceiling: the largest ``ce_increase_quantised`` allowed (nats per sample).
        accuracy_spliced: test accuracy with the quantised reconstruction spliced in.
        dl_bits: description length at ``bits`` (bits per sample).
        l0: mean active features per sample.
        upper_bound_bits: L0 * (bits + log2 width).
        dead_fraction: features that never fire on the test samples.
        epsilon: the tolerance (nats per sample).
    """

    width: int
    k: float
    ce_increase: float
    mse: float
    bits: int
    ce_increase_quantised: float
    ceiling: float
    accuracy_spliced: float
    dl_bits: float
    l0: float
    upper_bound_bits: float
    dead_fraction: float
    epsilon: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Data: the classifier's hidden activations, in the sweep runner's format
# --------------------------------------------------------------------------------------------


def activation_data(
    model: MLPClassifier, n_train: int | None, n_test: int | None, folder: str | os.PathLike[str]
) -> tuple[SweepData, np.ndarray]:
    """The hidden activations of the first ``n_train`` / ``n_test`` MNIST digits, ready to sweep.

    Writes them as ``train.npy`` / ``test.npy`` in ``folder`` and loads them through
    :func:`mdl_utils.sweep.prepare_data` (source ``"npy"``), which carves the validation split
    the same way as for pixels. Returns the data and the test digits' labels.
    """
    from mdl_utils.data import load_mnist

    x_train, _ = load_mnist("train")
    x_test, y_test = load_mnist("test")
    x_train = x_train[:n_train] if n_train is not None else x_train
    x_test, y_test = (x_test[:n_test], y_test[:n_test]) if n_test is not None else (x_test, y_test)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in (("train", x_train), ("test", x_test)):
        h = hidden_activations(model, x)
        path = folder / f"{name}.npy"
        if not path.is_file() or not np.array_equal(np.load(path), h):
            tmp = folder / f".{name}.{os.getpid()}.npy"
            np.save(tmp, h)
            os.replace(tmp, path)
    data = prepare_data(DataSpec(source="npy", train_path=str(folder / "train.npy"),
                                 test_path=str(folder / "test.npy")))
    return data, np.array(y_test)


# --------------------------------------------------------------------------------------------
# The target-loss search over k, for any loss
# --------------------------------------------------------------------------------------------


def search_k(
    loss_at: Callable[[float], float],
    *,
    width: int,
    epsilon: float,
    band_low: float = 0.9,
    k_start: float | None = None,
    k_min: float = 1.0,
    max_trials: int = 6,
    k_digits: int = 3,
) -> dict[str, Any]:
    """Search k so that ``loss_at(k)`` lies in ``[band_low * epsilon, epsilon]``.

    The generalisation of :func:`mdl_utils.sweep.search_k_for_target` to any loss that falls
    as k rises (MSE, or the downstream cross-entropy increase, which may be <= 0): a secant
    step in log-log space, kept inside the bracket once a k above and a k below the band are
    known (bisection in log k when the step is poor or a bracket end has a loss <= 0),
    unbracketed steps capped at a factor 4.

    Args:
        loss_at: trains (or loads) the SAE of this width at k and returns its test loss.
        width: the SAE width (k is searched in ``[k_min, width]``).
        k_start: the first k (default ``min(width, 16)``).
        k_digits: significant digits k is rounded to (so trials share cache entries).

    Returns:
        ``{"width", "status", "k", "loss", "n_trials", "tried"}``. ``status``: ``"hit"``;
        ``"unreachable"`` (loss above epsilon even at k = width); ``"below_band"`` (below the
        band even at k_min; then k = k_min); or ``"not_converged"`` (trials ran out; then k is
        the smallest tried k meeting epsilon, if any). ``tried``: ``[k, loss]`` in search order.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be positive, got {epsilon!r}")
    if not 0 < band_low < 1:
        raise ValueError(f"band_low must lie in (0, 1), got {band_low!r}")
    if k_min < 1 or k_min > width:
        raise ValueError(f"k_min={k_min} must lie in [1, width={width}]")
    if max_trials < 1:
        raise ValueError(f"max_trials must be at least 1, got {max_trials!r}")
    low, k_max = band_low * epsilon, float(width)
    aim = math.log(0.5 * (low + epsilon))
    floor = 1e-3 * low  # losses at or below 0 are "far below the band" for the log-log steps

    def clip(k: float) -> float:
        rounded = float(f"{k:.{k_digits}g}")
        return min(k_max, max(k_min, rounded))

    def log_loss(value: float) -> float:
        return math.log(max(value, floor))

    tried: dict[float, float] = {}
    k = clip(k_start if k_start is not None else min(width, 16.0))
    status = "not_converged"
    for _ in range(max_trials):
        loss = float(loss_at(k))
        tried[k] = loss
        if low <= loss <= epsilon:
            status = "hit"
            break
        if loss > epsilon and k >= k_max:
            status = "unreachable"
            break
        if loss < low and k <= k_min:
            status = "below_band"
            break
        above = [kk for kk, v in tried.items() if v > epsilon]  # k too small
        below = [kk for kk, v in tried.items() if v < low]  # k too large
        k_lo = max(above) if above else None
        k_hi = min(below) if below else None
        bracketed = k_lo is not None and k_hi is not None and k_lo < k_hi
        if bracketed:
            points = [(k_lo, tried[k_lo]), (k_hi, tried[k_hi])]
        else:
            points = sorted(tried.items(), key=lambda item: abs(log_loss(item[1]) - aim))[:2]
        slope = -0.5  # a prior for d log(loss) / d log(k) until two points are known
        if len(points) == 2 and points[0][0] != points[1][0]:
            (ka, la), (kb, lb) = points
            fitted = (log_loss(la) - log_loss(lb)) / (math.log(ka) - math.log(kb))
            if fitted < -1e-3:
                slope = fitted
        ref_k, ref_loss = points[0] if bracketed else (k, loss)
        proposal = math.exp(math.log(ref_k) + (aim - log_loss(ref_loss)) / slope)
        if bracketed:
            lo_l, hi_l = math.log(k_lo), math.log(k_hi)  # type: ignore[arg-type]
            margin = 0.1 * (hi_l - lo_l)
            p_l = math.log(proposal)
            # A loss at or below zero has no logarithm: the secant through the floor is
            # meaningless there, so bisect instead.
            floored = min(tried[k_lo], tried[k_hi]) <= floor  # type: ignore[index]
            if floored or not lo_l + margin <= p_l <= hi_l - margin:
                p_l = 0.5 * (lo_l + hi_l)
            proposal = math.exp(p_l)
        else:
            proposal = min(max(proposal, k / 4), k * 4)
        new_k = clip(proposal)
        if new_k in tried:
            new_k = clip(math.sqrt((k_lo or k_min) * (k_hi or k_max)))
            if new_k in tried:
                if k_lo is None and k_max not in tried:
                    new_k = k_max
                elif k_hi is None and k_min not in tried:
                    new_k = k_min
                else:
                    break  # the rounding grid is exhausted inside the bracket
        k = new_k
    if status == "hit":
        chosen: float | None = k
    elif status == "below_band":
        chosen = k_min
    else:
        meeting = [kk for kk, v in tried.items() if v <= epsilon]
        chosen = min(meeting) if meeting else None
    return {
        "width": width,
        "status": status,
        "k": chosen,
        "loss": None if chosen is None else tried[chosen],
        "n_trials": len(tried),
        "tried": [[kk, v] for kk, v in tried.items()],
    }


# --------------------------------------------------------------------------------------------
# Measuring an SAE under the downstream tolerance
# --------------------------------------------------------------------------------------------


def sae_reconstruction(sae: BatchTopKSAE, h: Any) -> np.ndarray:
    """The SAE's inference reconstruction of activations ``h`` (N, d_in), as numpy."""
    return sae.decode(torch.from_numpy(latents(sae, h))).detach().numpy()


def evaluate_downstream(
    sae: BatchTopKSAE, model: MLPClassifier, h: Any, y: Any, *, epsilon: float,
    budget: float | None = None,
) -> DownstreamEvaluation:
    """Effective precision and DL of ``sae`` under the cross-entropy tolerance ``epsilon``.

    The precision is the fewest bits per non-zero latent (2**bits bins over each feature's
    range) for which the classifier's cross-entropy on ``(h, y)``, with the reconstruction from
    the quantised latents spliced in, exceeds the clean cross-entropy by at most ``epsilon``
    nats per sample (``budget=None``), or exceeds the unquantised reconstruction's by at most
    ``budget`` nats (a fixed quantisation budget; see the module docstring); the DL is the sum
    of the features' entropies there (bits per sample).

    Raises:
        ValueError: the unquantised reconstruction already costs more than ``epsilon``.
    """
    h_np = np.asarray(h, dtype=np.float32)
    z = latents(sae, h_np)

    @torch.no_grad()
    def ce_increase(z_q: Any) -> float:
        h_hat = sae.decode(torch.as_tensor(np.asarray(z_q), dtype=torch.float32))
        return splice_loss(model, h_np, h_hat, y).ce_increase

    if budget is None:
        precision = effective_precision_for_loss(z, ce_increase, tolerance=epsilon, mode="absolute")
    else:
        precision = effective_precision_for_loss(z, ce_increase, tolerance=budget, mode="increase")
        if precision.loss_unquantised > epsilon:
            raise ValueError(f"the unquantised reconstruction already costs {precision.loss_unquantised:.6g} "
                             f"nats, above the tolerance {epsilon:.6g}")
    dl = description_length(z, bits=precision.bits)
    z_q = _quantised(z, int(precision.bits))  # type: ignore[arg-type]
    with torch.no_grad():
        spliced = splice_loss(model, h_np, sae.decode(torch.from_numpy(z_q)), y)
        mse = float(np.mean((sae_reconstruction(sae, h_np).astype(np.float64) - h_np) ** 2))
    return DownstreamEvaluation(
        width=sae.width,
        k=sae.k,
        ce_increase=precision.loss_unquantised,
        mse=mse,
        bits=int(precision.bits),  # type: ignore[arg-type]
        ce_increase_quantised=precision.loss,
        ceiling=precision.loss_ceiling,
        accuracy_spliced=spliced.accuracy_spliced,
        dl_bits=dl.dl_bits,
        l0=dl.l0,
        upper_bound_bits=dl.upper_bound_bits,
        dead_fraction=float(np.mean(~(z > 0).any(axis=0))),
        epsilon=epsilon,
    )


def evaluate_mse(sae: BatchTopKSAE, h: Any, *, epsilon: float, budget: float | None = None) -> MDLEvaluation:
    """:func:`mdl_utils.mdl.evaluate_mdl` (MSE tolerance ``epsilon``), optionally with a fixed
    quantisation budget: the precision may raise the MSE by at most ``budget`` over the
    unquantised MSE, which must itself be at most ``epsilon``."""
    if budget is None:
        return evaluate_mdl(sae, h, epsilon=epsilon)
    h_np = np.asarray(h, dtype=np.float32)
    z = latents(sae, h_np)
    precision = effective_precision(z, decoder_fn(sae), h_np, tolerance=budget, mode="increase")
    if precision.mse_unquantised > epsilon:
        raise ValueError(f"the unquantised MSE {precision.mse_unquantised:.6g} is above the tolerance {epsilon:.6g}")
    dl = description_length(z, bits=precision.bits)
    return MDLEvaluation(
        width=sae.width, k=sae.k, mse=precision.mse_unquantised, bits=int(precision.bits),  # type: ignore[arg-type]
        mse_quantised=precision.mse, dl_bits=dl.dl_bits, l0=dl.l0, upper_bound_bits=dl.upper_bound_bits,
        dead_fraction=float(np.mean(~(z > 0).any(axis=0))), epsilon=epsilon,
    )


def precision_curve(
    sae: BatchTopKSAE, model: MLPClassifier, h: Any, y: Any, bits: Sequence[int] = tuple(range(1, 11))
) -> dict[str, list[float]]:
    """Both losses of ``sae`` with its latents quantised at each of ``bits`` (bits per non-zero value).

    Returns ``{"bits", "ce_increase" (nats per sample), "mse" (per hidden unit), "dl_bits"}``,
    one entry per precision: the data behind both effective precisions, for a figure.
    """
    h_np = np.asarray(h, dtype=np.float32)
    z = latents(sae, h_np)
    curve: dict[str, list[float]] = {"bits": [], "ce_increase": [], "mse": [], "dl_bits": []}
    for b in bits:
        with torch.no_grad():
            h_hat = sae.decode(torch.from_numpy(_quantised(z, int(b))))
        result = splice_loss(model, h_np, h_hat, y)
        curve["bits"].append(int(b))
        curve["ce_increase"].append(result.ce_increase)
        curve["mse"].append(result.mse)
        curve["dl_bits"].append(description_length(z, bits=int(b)).dl_bits)
    return curve


def _quantised(z: np.ndarray, bits: int) -> np.ndarray:
    from mdl_utils.dl import bin_widths, dequantize, quantize

    return np.asarray(dequantize(quantize(z, bits=bits), bin_widths(z, bits=bits)), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _save_compact(sae: BatchTopKSAE, path: Path) -> BatchTopKSAE:
    compact = copy.deepcopy(sae).half()
    compact.save(path)
    return BatchTopKSAE.load(path)


def _optimum(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    best = optimum_index([r.get("dl_bits") for r in rows], [r["width"] for r in rows])
    return None if best is None else rows[best]


def run_downstream(
    settings: DownstreamSettings,
    out_dir: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume, from the cache) the experiment; write ``out_dir/downstream.json``.

    Trains (or loads) the classifier, searches k per width under the cross-entropy tolerance,
    calibrates the MSE tolerance to the median MSE of those SAEs (divided by ``1 - q``, so that
    the MSE search aims at that median), searches again under it,
    measures every selected SAE under both its own tolerance and the other's loss, and saves
    the classifier and the two optimal SAEs. Returns the contents of ``downstream.json``.
    """
    out = Path(out_dir)
    cache_path = Path(cache) if cache is not None else default_cache_dir()
    started = time.time()
    model, clf_meta = train_or_load_classifier(settings.classifier, cache_path)
    _log(progress, f"classifier: test accuracy {clf_meta['test_accuracy']:.4f}, CE {clf_meta['test_ce']:.4f}")
    act_key = hashlib.sha256(json.dumps([settings.classifier.key(), settings.n_train, settings.n_test])
                             .encode()).hexdigest()[:16]
    data, y_test = activation_data(model, settings.n_train, settings.n_test, cache_path / f"activations-{act_key}")
    h_test = data.split("test")
    sae_cache = cache_path / "downstream-saes"
    base = {"max_epochs": settings.max_epochs, "patience": settings.patience,
            "batch_size": settings.batch_size, "seed": settings.seed, "progress": False}
    trained: dict[str, dict[str, Any]] = {}

    def train_at(width: int, k: float) -> tuple[dict[str, Any], BatchTopKSAE]:
        row = train_cached(TrainConfig(**{**base, "width": width, "k": k}), data, sae_cache)
        trained[row["key"]] = row
        return row, load_cached_sae(sae_cache, row["key"])

    def ce_at(width: int, k: float) -> float:
        row, sae = train_at(width, k)
        value = splice_loss(model, h_test, sae_reconstruction(sae, h_test), y_test).ce_increase
        _log(progress, f"  width {width} k {k}: CE increase {value:.4f} nats, MSE {row['mse_test']:.4f}")
        return value

    def mse_at(width: int, k: float) -> float:
        row, _ = train_at(width, k)
        _log(progress, f"  width {width} k {k}: MSE {row['mse_test']:.4f}")
        return float(row["mse_test"])

    q = settings.quantisation_share

    def sweep(loss: Callable[[int, float], float], epsilon: float, name: str) -> list[dict[str, Any]]:
        results, k_prev = [], settings.k_start
        for width in settings.widths:
            _log(progress, f"{name} tolerance {epsilon:.5g} (search target {(1 - q) * epsilon:.5g}): width {width}")
            found = search_k(lambda k, w=width: loss(w, k), width=width, epsilon=(1 - q) * epsilon,
                             band_low=settings.band_low, k_start=min(k_prev, width),
                             max_trials=settings.max_trials)
            if found["k"] is not None:
                k_prev = found["k"]
            results.append(found)
        return results

    # 1. The downstream tolerance.
    ce_search = sweep(ce_at, settings.epsilon_ce, "cross-entropy")
    ce_rows: list[dict[str, Any]] = []
    saes: dict[tuple[str, int], BatchTopKSAE] = {}
    for found in ce_search:
        row = {key: found[key] for key in ("width", "status", "k", "n_trials", "tried")}
        if found["k"] is not None and found["loss"] <= (1 - q) * settings.epsilon_ce:
            _, sae = train_at(found["width"], found["k"])
            saes[("ce", found["width"])] = sae
            row.update(evaluate_downstream(sae, model, h_test, y_test, epsilon=settings.epsilon_ce,
                                           budget=q * settings.epsilon_ce).to_dict())
            # For comparison, the protocol without the reserve: quantised loss <= epsilon.
            plain = evaluate_downstream(sae, model, h_test, y_test, epsilon=settings.epsilon_ce)
            row.update(bits_without_reserve=plain.bits, dl_bits_without_reserve=plain.dl_bits)
        else:
            row.update(dl_bits=None)
        ce_rows.append(row)
    mses = [r["mse"] for r in ce_rows if r.get("dl_bits") is not None]
    if not mses:
        raise RuntimeError(f"no width reaches the cross-entropy tolerance {settings.epsilon_ce}")
    epsilon_mse = float(f"{float(np.median(mses)) / (1 - q):.3g}")

    # 2. The MSE tolerance, equally strict in the median, on the same activations.
    mse_search = sweep(mse_at, epsilon_mse, "MSE")
    mse_rows: list[dict[str, Any]] = []
    for found in mse_search:
        row = {key: found[key] for key in ("width", "status", "k", "n_trials", "tried")}
        if found["k"] is not None and found["loss"] <= (1 - q) * epsilon_mse:
            _, sae = train_at(found["width"], found["k"])
            saes[("mse", found["width"])] = sae
            row.update(evaluate_mse(sae, h_test, epsilon=epsilon_mse, budget=q * epsilon_mse).to_dict())
            spliced = splice_loss(model, h_test, sae_reconstruction(sae, h_test), y_test)
            row.update(ce_increase=spliced.ce_increase, accuracy_spliced_unquantised=spliced.accuracy_spliced)
        else:
            row.update(dl_bits=None)
        mse_rows.append(row)

    # 3. Optima, saved compactly and measured again from the saved weights.
    optima: dict[str, Any] = {}
    (out / "saes").mkdir(parents=True, exist_ok=True)
    for name, rows in (("ce", ce_rows), ("mse", mse_rows)):
        best = _optimum(rows)
        if best is None:
            continue
        reloaded = _save_compact(saes[(name, best["width"])], out / "saes" / name)
        if name == "ce":
            stored = evaluate_downstream(reloaded, model, h_test, y_test, epsilon=settings.epsilon_ce,
                                         budget=q * settings.epsilon_ce).to_dict()
        else:
            stored = evaluate_mse(reloaded, h_test, epsilon=epsilon_mse, budget=q * epsilon_mse).to_dict()
            stored["ce_increase"] = splice_loss(model, h_test, sae_reconstruction(reloaded, h_test),
                                                y_test).ce_increase
        optima[name] = {"width": best["width"], "k": best["k"], "dl_bits": best["dl_bits"],
                        "path": f"saes/{name}", "stored": stored}
    save_classifier(model, out / "classifier", metadata=clf_meta)

    trained_rows = list(trained.values())
    payload = {
        "format_version": RESULTS_FORMAT_VERSION,
        "settings": settings.to_dict(),
        "classifier": {"path": "classifier", "test_accuracy": clf_meta["test_accuracy"],
                       "test_ce": clf_meta["test_ce"], "train_seconds": clf_meta["train_seconds"]},
        "epsilon_ce": settings.epsilon_ce,
        "epsilon_mse": epsilon_mse,
        "activation_variance": float(h_test.var(axis=0).mean()),
        "ce_rows": ce_rows,
        "mse_rows": mse_rows,
        "optima": optima,
        **provenance(started),
        "training_time_s": round(sum(r["train_seconds"] for r in trained_rows), 1),
        "n_saes_trained": len(trained_rows),
    }
    write_results(out / "downstream.json", payload)
    return payload


def load_downstream(
    out_dir: str | os.PathLike[str],
) -> tuple[dict[str, Any], MLPClassifier, dict[str, BatchTopKSAE]]:
    """Read a finished run: ``downstream.json``, the classifier, and the two optimal SAEs.

    Raises:
        FileNotFoundError: ``out_dir`` holds no ``downstream.json`` (the message says how to make it).
        ValueError: the file was written by another results format.
    """
    out = Path(out_dir)
    payload = read_results(
        out / "downstream.json", version=RESULTS_FORMAT_VERSION,
        how_to_make=f"run `python -m mdl_utils.downstream --profile full --out {out}` (or the "
                    "chapter with retrain=True) to compute it",
    )
    model, _ = load_classifier(out / payload["classifier"]["path"])
    saes = {name: BatchTopKSAE.load(out / o["path"]) for name, o in payload["optima"].items()}
    return payload, model, saes


def main(argv: list[str] | None = None) -> int:
    """``python -m mdl_utils.downstream``: run or resume the downstream-tolerance experiment."""
    args = parse_job_args(argv, prog="python -m mdl_utils downstream", doc=__doc__, out_subdir="downstream")
    out = args.out
    try:
        payload = run_downstream(settings_for(args.profile), out, cache=args.cache, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    optima = ", ".join(f"{name}: width {o['width']}" for name, o in payload["optima"].items())
    print(f"wrote {out / 'downstream.json'}: optima {optima}; wall time {payload['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
