"""Training BatchTopK SAEs the way the field does (Bussmann et al. 2024; the recipe of
saprmarks/dictionary_learning), sized for MNIST on a CPU.

The recipe: Adam with a linear learning-rate warm-up; the decoder rows kept at unit norm (the
gradient's component along each row is removed before the step, and the rows are renormalised
after it); an auxiliary loss (AuxK, Gao et al. 2024) in which the *dead* features reconstruct
the main reconstruction's residual, which revives them; the inference threshold learned as a
running average of the smallest activation the batch top-k kept. Language-model trainers call
a feature dead after 10 million tokens without firing; here "dead" is relative to the data:
no firing in the last ``dead_after_samples`` training samples (default: one epoch).

Early stopping uses the validation split's MSE (a split carved from the training data, never
the test set) measured the way the SAE is used afterwards: inference mode, with the learned
threshold. The weights of the best validation epoch are returned.

A training step's loss and gradients are computed by hand from the sparse selection
(:mod:`mdl_utils.grads`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mdl_utils.grads import StepStats, compute_grads, project_decoder_grad_
from mdl_utils.live_features import geometric_median, init_decoder_from_data_, resample_dead_
from mdl_utils.sae import BatchTopKSAE, batch_topk, check_sae_shape, n_kept, sparse_decode

__all__ = [
    "TrainConfig",
    "EpochStats",
    "TrainHistory",
    "SAEMetrics",
    "train_sae",
    "evaluate_sae",
    "train_step",
    "LEGACY_DEFAULTS",
    "resolve_device",
    "device_label",
    "cpu_kernels",
    "as_tensor",
]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained SAE (with the data). All fields are JSON scalars.

    Attributes:
        width: number of features F.
        k: mean active features per sample in training (fractional allowed, below 1 too: batch
            top-k keeps ``round(k * batch_size)`` activations per batch; ``0 < k <= width``, and
            ``k * batch_size`` must keep at least one).
        seed: seeds the initialisation and the batch order.
        batch_size: samples per step B.
        max_epochs: hard limit on passes over the training split.
        patience: stop after this many epochs without a validation-MSE improvement.
        min_rel_improvement: an epoch improves when its validation MSE is below
            ``best * (1 - min_rel_improvement)``.
        lr: Adam learning rate; ``None`` uses dictionary_learning's rule
            ``2e-4 / sqrt(width / 2**14)``.
        warmup_steps: linear learning-rate warm-up from ``lr / warmup_steps`` to ``lr``.
        beta1, beta2: Adam's moment decay rates.
        aux_k: how many dead features (per sample) reconstruct the residual in AuxK;
            ``None`` means ``d_in // 2`` (Gao et al. 2024).
        aux_alpha: weight of the normalised AuxK loss (1/32 in Gao et al.); 0 disables it.
        dead_after_samples: a feature is dead once it has not been kept for this many
            training samples; ``None`` means the size of the training split (one epoch).
        threshold_beta: decay of the running average that learns the inference threshold.
        b_dec_init: ``"geometric_median"``, ``"mean"`` or ``"zeros"``: the decoder bias's start.
        bf16_encoder: run the encoder's matrix multiplication under bf16 autocast.
        eval_batch_size: samples per chunk when evaluating.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ...
        progress: show a progress bar (does not affect the result).
        lr_schedule: ``"constant"`` (after the warm-up; training stops after ``patience``
            epochs without improvement) or ``"plateau"``: after ``patience`` epochs without
            improvement the learning rate is multiplied by ``lr_factor``; once it has been cut
            ``lr_reductions`` times, the next such plateau ends training as converged
            (stop reason ``"converged"``). The best validation epoch's weights are returned.
        lr_factor: the plateau schedule's cut (0 < factor < 1).
        lr_reductions: how many cuts before a plateau ends training.
        decoder_init: ``"random"`` (unit-norm Gaussian rows) or ``"data"``: each decoder
            row is a randomly drawn training sample minus the decoder bias, at unit norm, so
            every feature starts pointing at real data (the encoder starts as its transpose
            divided by k, so that the first reconstructions do not overshoot).
        resample_every: every this many epochs (0: never), features that did not fire in
            the last ``dead_after_samples`` training samples are re-initialised, as in
            Anthropic's 2023 recipe: a training sample is drawn with probability proportional
            to its squared reconstruction error (from ``resample_pool`` random samples), the
            dead feature's decoder row becomes that sample's residual at unit norm, its encoder
            row the same direction scaled to 0.2 times the live features' mean encoder norm,
            its encoder bias 0, and Adam's moments for those rows are reset.
        resample_until: no resampling after this epoch (so training ends on a stable
            dictionary; ``0`` with ``resample_every > 0`` means "never stop resampling").
        resample_pool: samples scored for each resampling.
    """

    width: int
    k: float
    seed: int = 0
    batch_size: int = 1024
    max_epochs: int = 100
    patience: int = 10
    min_rel_improvement: float = 1e-4
    lr: float | None = None
    warmup_steps: int = 100
    beta1: float = 0.9
    beta2: float = 0.999
    aux_k: int | None = None
    aux_alpha: float = 1.0 / 32.0
    dead_after_samples: int | None = None
    threshold_beta: float = 0.99
    b_dec_init: str = "geometric_median"
    bf16_encoder: bool = False
    eval_batch_size: int = 8192
    device: str = "auto"
    progress: bool = True
    lr_schedule: str = "constant"
    lr_factor: float = 0.3
    lr_reductions: int = 3
    decoder_init: str = "random"
    resample_every: int = 0
    resample_until: int = 0
    resample_pool: int = 8192

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be an integer >= 1, got {self.width!r}")
        check_sae_shape(1, self.width, self.k)
        object.__setattr__(self, "k", float(self.k))  # 8 and 8.0 must give the same cache key
        if isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool) and self.batch_size >= 1:
            if n_kept(self.k, self.batch_size) < 1:
                raise ValueError(
                    f"k={self.k:g} keeps no activation in a batch of {self.batch_size}: "
                    f"round(k * batch_size) must be at least 1 (use k >= {0.5 / self.batch_size:g})"
                )
        positive_ints = ("batch_size", "max_epochs", "patience", "eval_batch_size")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        for name in ("beta1", "beta2", "threshold_beta"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.aux_alpha < 0:
            raise ValueError(f"aux_alpha must be >= 0, got {self.aux_alpha!r}")
        if self.aux_k is not None and (not isinstance(self.aux_k, int) or self.aux_k < 1):
            raise ValueError(f"aux_k must be an integer >= 1 or None, got {self.aux_k!r}")
        if self.dead_after_samples is not None and (
            not isinstance(self.dead_after_samples, int) or self.dead_after_samples < 1
        ):
            raise ValueError(f"dead_after_samples must be an integer >= 1 or None, got {self.dead_after_samples!r}")
        if self.b_dec_init not in {"geometric_median", "mean", "zeros"}:
            raise ValueError(f"b_dec_init must be 'geometric_median', 'mean' or 'zeros', got {self.b_dec_init!r}")
        if not 0 <= self.min_rel_improvement < 1:
            raise ValueError(f"min_rel_improvement must lie in [0, 1), got {self.min_rel_improvement!r}")
        if self.lr_schedule not in {"constant", "plateau"}:
            raise ValueError(f"lr_schedule must be 'constant' or 'plateau', got {self.lr_schedule!r}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must lie in (0, 1), got {self.lr_factor!r}")
        if self.decoder_init not in {"random", "data"}:
            raise ValueError(f"decoder_init must be 'random' or 'data', got {self.decoder_init!r}")
        for name in ("lr_reductions", "resample_every", "resample_until"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.resample_pool, bool) or not isinstance(self.resample_pool, int) or self.resample_pool < 1:
            raise ValueError(f"resample_pool must be an integer >= 1, got {self.resample_pool!r}")

    @property
    def learning_rate(self) -> float:
        """The learning rate used: ``lr``, or ``2e-4 / sqrt(width / 2**14)`` when unset."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.width / 2**14)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def semantic_dict(self) -> dict[str, Any]:
        """The fields that decide the trained SAE: all but ``progress``, and without the
        recipe fields added later while they keep their original defaults, so that the
        configurations trained before those fields existed keep their cache keys."""
        out = self.to_dict()
        out.pop("progress")
        for name, default in LEGACY_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


#: Fields added to :class:`TrainConfig` after SAEs were cached, with the defaults that reproduce
#: the earlier training exactly (left out of cache keys while they hold these values).
LEGACY_DEFAULTS: dict[str, Any] = {
    "lr_schedule": "constant",
    "lr_factor": 0.3,
    "lr_reductions": 3,
    "decoder_init": "random",
    "resample_every": 0,
    "resample_until": 0,
    "resample_pool": 8192,
}


@dataclass
class EpochStats:
    """One epoch of training. MSE is per input element (per pixel for MNIST)."""

    epoch: int
    train_mse: float  # mean over the epoch's steps, training mode (batch top-k)
    val_mse: float  # inference mode (threshold)
    val_l0: float  # mean active features per validation sample, inference mode
    dead_fraction: float  # features not kept in the last dead_after_samples training samples
    threshold: float
    lr: float
    seconds: float
    resampled: int = 0  # dead features re-initialised at the end of this epoch


@dataclass
class TrainHistory:
    """Per-epoch statistics and why training stopped."""

    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0  # 1-based epoch whose weights were returned
    stop_reason: str = ""  # "converged" (plateau schedule), "early_stopping" (constant) or "max_epochs"
    seconds: float = 0.0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SAEMetrics:
    """An SAE evaluated in inference mode on one split."""

    mse: float  # mean squared error per input element
    l0: float  # mean number of active features per sample
    dead_fraction: float  # fraction of features never active on the split
    n_samples: int


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """How results name the device that trained an SAE: ``cpu``, or ``cuda (NVIDIA H200)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def cpu_kernels(device: torch.device) -> str | None:
    """The vector kernels torch's CPU operations use in this process (``AVX2``, ``AVX512``, ...;
    ``ATEN_CPU_CAPABILITY`` pins them), for a training on the CPU; ``None`` on another device.
    Two kernel sets can end a training in different last digits, so results record it."""
    return str(torch.backends.cpu.get_cpu_capability()) if device.type == "cpu" else None


def as_tensor(x: Any, name: str, device: torch.device | str = "cpu") -> Tensor:
    """A float32 (N, D) tensor from an array, with clear errors for empty, NaN or non-2-D data."""
    if isinstance(x, Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable:  # e.g. load_mnist's read-only arrays; torch wants writable ones
            arr = arr.copy()
        t = torch.from_numpy(arr)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (samples, dimension) array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0")
    t = t.to(device=device, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t.contiguous()


def train_step(
    sae: BatchTopKSAE,
    optimizer: torch.optim.Optimizer,
    x_BD: Tensor,
    k: float,
    **grad_kwargs: Any,
) -> StepStats:
    """One optimisation step: gradients (:func:`mdl_utils.grads.compute_grads`), the decoder-norm projection,
    the optimiser's step, and the decoder rows renormalised to unit norm."""
    stats = compute_grads(sae, x_BD, k, **grad_kwargs)
    project_decoder_grad_(sae)
    optimizer.step()
    sae.normalize_decoder_()
    return stats


@torch.no_grad()
def evaluate_sae(sae: BatchTopKSAE, x: Any, *, batch_size: int = 8192, name: str = "x") -> SAEMetrics:
    """MSE per element, mean L0 and dead fraction of ``sae`` on ``x`` in inference mode."""
    device = sae.W_dec_FD.device
    x_ND = (
        x if isinstance(x, Tensor) and x.device == device and x.dtype == torch.float32 else as_tensor(x, name, device)
    )
    sae.check_input(x_ND, name)
    n, d_in = x_ND.shape
    sq_err = 0.0
    n_active = 0
    fired_F = torch.zeros(sae.width, dtype=torch.bool, device=device)
    for start in range(0, n, batch_size):
        chunk = x_ND[start : start + batch_size]
        pre_BF = sae.pre_activations(chunk)
        if sae.has_threshold:
            rows, cols = torch.nonzero(pre_BF > sae.threshold, as_tuple=True)
            vals = pre_BF[rows, cols]
        else:
            rows, cols, vals = batch_topk(pre_BF, sae.k)
            keep = vals > 0
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        x_hat = sparse_decode(rows, cols, vals, sae.W_dec_FD, chunk.shape[0]) + sae.b_dec_D
        sq_err += float((x_hat - chunk).pow(2).sum(dtype=torch.float64))
        n_active += int(rows.numel())
        fired_F[cols] = True
    return SAEMetrics(
        mse=sq_err / (n * d_in),
        l0=n_active / n,
        dead_fraction=1.0 - float(fired_F.float().mean()),
        n_samples=n,
    )


def train_sae(
    config: TrainConfig,
    train_x: Any,
    val_x: Any,
    *,
    init: BatchTopKSAE | None = None,
) -> tuple[BatchTopKSAE, TrainHistory]:
    """Train a BatchTopK SAE on ``train_x``, early-stopping on ``val_x``'s MSE.

    Args:
        config: the training configuration (see :class:`TrainConfig`).
        train_x: training samples, array-like (N, d_in); float32 on the chosen device.
        val_x: validation samples (M, d_in), a split of the training data (not the test set).
        init: start from a copy of this SAE instead of a fresh one (for constructed
            experiments; its shape must match ``config``). The decoder bias is then kept.

    Returns:
        ``(sae, history)``: the SAE of the best validation epoch (on the CPU, in eval mode,
        with ``sae.metadata`` holding the training summary) and the per-epoch history.

    Raises:
        ValueError: empty or non-finite data, dimensions that differ between the splits or
            from ``init``, or ``k`` larger than the width.
    """
    start_time = time.perf_counter()
    device = resolve_device(config.device)
    x_train = as_tensor(train_x, "train_x", device)
    x_val = as_tensor(val_x, "val_x", device)
    n_train, d_in = x_train.shape
    if x_val.shape[1] != d_in:
        raise ValueError(f"val_x has dimension {x_val.shape[1]} but train_x has dimension {d_in}")
    check_sae_shape(d_in, config.width, config.k)

    if init is not None:
        if (init.d_in, init.width) != (d_in, config.width):
            raise ValueError(
                f"init SAE has (d_in, width)=({init.d_in}, {init.width}), expected ({d_in}, {config.width})"
            )
        sae = copy.deepcopy(init).to(device)
        sae.k = float(config.k)
    else:
        sae = BatchTopKSAE(d_in, config.width, config.k, seed=config.seed).to(device)
        with torch.no_grad():
            if config.b_dec_init == "geometric_median":
                sae.b_dec_D.copy_(geometric_median(x_train))
            elif config.b_dec_init == "mean":
                sae.b_dec_D.copy_(x_train.mean(0))
            if config.decoder_init == "data":
                init_decoder_from_data_(sae, x_train, seed=config.seed)
    sae.threshold.fill_(-1.0)
    sae.train()

    lr = config.learning_rate
    params = [sae.W_enc_FD, sae.b_enc_F, sae.W_dec_FD, sae.b_dec_D]
    fused = device.type in {"cpu", "cuda"}
    optimizer = torch.optim.Adam(params, lr=lr, betas=(config.beta1, config.beta2), fused=fused)
    aux_k = config.aux_k if config.aux_k is not None else max(1, d_in // 2)
    dead_after = config.dead_after_samples if config.dead_after_samples is not None else n_train
    since_fired_F = torch.zeros(config.width, dtype=torch.long, device=device)
    order_gen = torch.Generator().manual_seed(config.seed + 1_000_003)

    history = TrainHistory(device=str(device))
    best_val, best_state, best_epoch, bad_epochs = math.inf, None, 0, 0
    n_cuts = 0
    resample_gen = torch.Generator().manual_seed(config.seed + 2_000_003)
    step, threshold, kth_prev = 0, -1.0, 0.0
    bar = None
    if config.progress:
        from tqdm import tqdm  # plain text bar: no widget dependency in notebooks

        bar = tqdm(total=config.max_epochs, desc=f"SAE width={config.width} k={config.k:g}", leave=False)
    try:
        for epoch in range(1, config.max_epochs + 1):
            epoch_start = time.perf_counter()
            perm = torch.randperm(n_train, generator=order_gen).to(device)
            sq_sum, n_seen = 0.0, 0
            for start in range(0, n_train, config.batch_size):
                x_BD = x_train[perm[start : start + config.batch_size]]
                for group in optimizer.param_groups:
                    group["lr"] = lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else lr
                dead_F = since_fired_F >= dead_after
                stats = train_step(
                    sae,
                    optimizer,
                    x_BD,
                    config.k,
                    dead_F=dead_F if config.aux_alpha > 0 else None,
                    aux_k=aux_k,
                    aux_alpha=config.aux_alpha,
                    lower_bound=0.5 * kth_prev,
                    bf16_encoder=config.bf16_encoder,
                )
                kth_prev = stats.kth_value
                if not math.isnan(stats.min_active):
                    b = config.threshold_beta
                    threshold = stats.min_active if threshold < 0 else b * threshold + (1 - b) * stats.min_active
                since_fired_F += x_BD.shape[0]
                since_fired_F[stats.fired_F] = 0
                sq_sum += stats.mse * x_BD.shape[0]
                n_seen += x_BD.shape[0]
                step += 1
            sae.threshold.fill_(threshold)
            sae.eval()
            val = evaluate_sae(sae, x_val, batch_size=config.eval_batch_size)
            sae.train()
            record = EpochStats(
                epoch=epoch,
                train_mse=sq_sum / n_seen,
                val_mse=val.mse,
                val_l0=val.l0,
                dead_fraction=float((since_fired_F >= dead_after).float().mean()),
                threshold=threshold,
                lr=optimizer.param_groups[0]["lr"],
                seconds=time.perf_counter() - epoch_start,
            )
            history.epochs.append(record)
            if val.mse < best_val * (1.0 - config.min_rel_improvement):
                best_val, best_epoch, bad_epochs = val.mse, epoch, 0
                best_state = {name: t.detach().clone() for name, t in sae.state_dict().items()}
            else:
                bad_epochs += 1
            resampling = config.resample_every > 0 and (config.resample_until == 0 or epoch <= config.resample_until)
            if resampling:
                bad_epochs = 0  # no cut and no stop while the dictionary is still being repaired
                if epoch % config.resample_every == 0:
                    record.resampled = resample_dead_(
                        sae,
                        optimizer,
                        x_train,
                        since_fired_F >= dead_after,
                        pool=config.resample_pool,
                        generator=resample_gen,
                    )
            if bad_epochs >= config.patience and config.lr_schedule == "plateau" and n_cuts < config.lr_reductions:
                lr *= config.lr_factor
                n_cuts += 1
                bad_epochs = 0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    train_mse=f"{record.train_mse:.5f}",
                    val_mse=f"{record.val_mse:.5f}",
                    L0=f"{record.val_l0:.2f}",
                    dead=f"{record.dead_fraction:.2f}",
                )
            if bad_epochs >= config.patience:
                history.stop_reason = "converged" if config.lr_schedule == "plateau" else "early_stopping"
                break
        else:
            history.stop_reason = "max_epochs"
    finally:
        if bar is not None:
            bar.close()

    assert best_state is not None
    sae.load_state_dict(best_state)
    sae.eval()
    sae = sae.to("cpu")
    history.best_epoch = best_epoch
    history.seconds = time.perf_counter() - start_time
    sae.metadata = {
        "train_config": config.to_dict(),
        "best_epoch": best_epoch,
        "epochs_run": len(history.epochs),
        "stop_reason": history.stop_reason,
        "best_val_mse": best_val,
    }
    return sae, history
