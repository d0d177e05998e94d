"""Keeping a dictionary's features alive: where training starts and how dead features return.

Wide SAEs lose features that never fire. Three parts of the training recipe
(:func:`mdl_utils.train.train_sae`) work against it, each from the literature:
:func:`geometric_median` (the decoder bias's start), :func:`init_decoder_from_data_`
(decoder rows initialised from training samples) and :func:`resample_dead_` (Anthropic's
2023 resampling of dead features towards badly reconstructed samples). The auxiliary loss
(AuxK) lives with the other gradients in :mod:`mdl_utils.grads`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdl_utils.sae import BatchTopKSAE, batch_topk, sparse_decode

__all__ = ["geometric_median", "init_decoder_from_data_", "resample_dead_"]


def geometric_median(x_ND: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """The geometric median of the rows of ``x_ND`` (Weiszfeld's algorithm), shape (D,).

    The point minimising the summed Euclidean distance to the samples; the decoder bias's
    usual start (robust to outliers, unlike the mean).
    """
    x = x_ND.double()
    median = x.mean(0)
    for _ in range(max_iter):
        dist = (x - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / dist
        new = (weights[:, None] * x).sum(0) / weights.sum()
        shift = (new - median).norm()
        median = new
        if shift <= tol * (median.norm() + 1e-12):
            break
    return median.to(x_ND.dtype)


@torch.no_grad()
def init_decoder_from_data_(sae: BatchTopKSAE, x_ND: Tensor, *, seed: int) -> None:
    """Decoder rows = random training samples minus the decoder bias, at unit norm; the encoder
    starts as the decoder's transpose divided by k. Rows that would be zero keep their random
    start."""
    gen = torch.Generator().manual_seed(seed + 3_000_017)
    idx = torch.randint(x_ND.shape[0], (sae.width,), generator=gen).to(x_ND.device)
    rows = x_ND[idx] - sae.b_dec_D
    norms = rows.norm(dim=1, keepdim=True)
    ok = norms.squeeze(1) > 1e-6
    sae.W_dec_FD[ok] = rows[ok] / norms[ok]
    # Along a data direction the pre-activation is about |x - b_dec|; with k such features
    # active the first reconstructions would overshoot k-fold, so the encoder starts at 1/k.
    sae.W_enc_FD.copy_(sae.W_dec_FD / max(1.0, sae.k))


@torch.no_grad()
def resample_dead_(
    sae: BatchTopKSAE,
    optimizer: torch.optim.Optimizer,
    x_ND: Tensor,
    dead_F: Tensor,
    *,
    pool: int = 8192,
    generator: torch.Generator | None = None,
) -> int:
    """Re-initialise the features marked in ``dead_F`` (Anthropic 2023's resampling).

    ``pool`` random training samples are reconstructed (batch top-k, as in training); for each
    dead feature one of them is drawn with probability proportional to its squared error; the
    feature's decoder row becomes that sample's residual ``x - x_hat`` at unit norm, its
    encoder row the same direction times 0.2 times the live features' mean encoder norm, its
    encoder bias 0; Adam's moment estimates for those rows are zeroed.

    Returns:
        How many features were re-initialised.
    """
    dead_idx = torch.nonzero(dead_F).squeeze(1)
    n_dead = int(dead_idx.numel())
    if n_dead == 0:
        return 0
    idx = torch.randint(x_ND.shape[0], (min(pool, x_ND.shape[0]),), generator=generator).to(x_ND.device)
    x_BD = x_ND[idx]
    rows, cols, vals = batch_topk(sae.pre_activations(x_BD), sae.k)
    err_BD = x_BD - (sparse_decode(rows, cols, vals, sae.W_dec_FD, x_BD.shape[0]) + sae.b_dec_D)
    weight_B = err_BD.pow(2).sum(1).double().cpu()
    if not float(weight_B.sum()) > 0:
        return 0
    pick = torch.multinomial(weight_B, n_dead, replacement=True, generator=generator).to(x_ND.device)
    dirs = err_BD[pick]
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead_F
    enc_norm = float(sae.W_enc_FD[alive].norm(dim=1).mean()) if bool(alive.any()) else 1.0
    sae.W_dec_FD[dead_idx] = dirs
    sae.W_enc_FD[dead_idx] = dirs * (0.2 * enc_norm)
    sae.b_enc_F[dead_idx] = 0.0
    for param in (sae.W_enc_FD, sae.b_enc_F, sae.W_dec_FD):
        state = optimizer.state.get(param, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                state[name][dead_idx] = 0.0
    return n_dead
