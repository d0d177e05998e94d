"""The training loss's gradients, written by hand from the sparse selection.

Speed: a training step has one dense matrix multiplication, the encoder's. Everything after
the batch top-k is sparse (``round(k * B)`` kept entries out of ``B * width``): the decoder,
its gradient, and the encoder's gradient are CSR products, and the gradients are written by
hand (checked against autograd in ``tests/test_train.py``), which also avoids the full
``(B, width) @ (width, d_in)`` product autograd would spend on the decoder bias's gradient.
:mod:`mdl_utils.train` takes its steps with these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from mdl_utils.sae import BatchTopKSAE, batch_topk, sorted_csr, sparse_decode

__all__ = ["StepStats", "compute_grads", "project_decoder_grad_", "HasUnitDecoder"]


class HasUnitDecoder(Protocol):
    """Any SAE whose decoder rows ``W_dec_FD`` (features x inputs) are kept at unit norm."""

    W_dec_FD: nn.Parameter


@dataclass
class StepStats:
    """What one training step measured (training mode)."""

    loss: float  # the objective: per-sample squared error summed over inputs + aux term
    mse: float  # per input element
    aux_loss: float  # normalised AuxK loss (before the aux_alpha weight)
    n_active: int  # non-zero activations in the batch
    min_active: float  # smallest positive kept activation (the threshold's target); nan if none
    kth_value: float  # smallest kept activation (a bound for the next batch's selection)
    fired_F: Tensor  # bool, features with a positive kept activation


def compute_grads(
    sae: BatchTopKSAE,
    x_BD: Tensor,
    k: float,
    *,
    dead_F: Tensor | None = None,
    aux_k: int = 1,
    aux_alpha: float = 0.0,
    lower_bound: float = 0.0,
    bf16_encoder: bool = False,
) -> StepStats:
    """One training step's loss and gradients, written into the parameters' ``.grad``.

    The objective (dictionary_learning's BatchTopK trainer): the per-sample squared error
    ``||x - x_hat||^2`` averaged over the batch, with ``x_hat`` from the batch top-k
    activations, plus ``aux_alpha`` times the normalised AuxK loss when ``dead_F`` marks dead
    features: the per-sample top ``aux_k`` dead pre-activations reconstruct the residual
    ``x - x_hat`` (no decoder bias), divided by the residual's variance.

    Gradients are computed by hand from the sparse selection (the formulas are checked against
    autograd in the tests). The decoder-norm projection is *not* applied here; see
    :func:`project_decoder_grad_`.
    """
    n_batch, d_in = x_BD.shape
    W_enc, W_dec, b_dec = sae.W_enc_FD.detach(), sae.W_dec_FD.detach(), sae.b_dec_D.detach()
    width = W_enc.shape[0]
    bias_F = sae.b_enc_F.detach() - W_enc @ b_dec
    if bf16_encoder:
        with torch.autocast(device_type=x_BD.device.type, dtype=torch.bfloat16):
            pre_BF = torch.addmm(bias_F, x_BD, W_enc.T)
        pre_BF = torch.relu_(pre_BF.float())
    else:
        pre_BF = torch.relu_(torch.addmm(bias_F, x_BD, W_enc.T))

    rows, cols, vals = batch_topk(pre_BF, k, lower_bound=lower_bound)
    x_hat_BD = sparse_decode(rows, cols, vals, W_dec, n_batch) + b_dec
    err_BD = x_hat_BD - x_BD
    sq_err = float(err_BD.pow(2).sum(dtype=torch.float64))
    recon_loss = sq_err / n_batch
    g_BD = err_BD * (2.0 / n_batch)

    # Sort the kept entries by feature once: the transposed CSR gives the per-feature sums.
    g_W_enc, g_b_enc, g_W_dec, g_b_dec = _sparse_backward(rows, cols, vals, g_BD, x_BD, W_dec, width)
    g_b_dec += g_BD.sum(0)

    aux_loss = 0.0
    if dead_F is not None and aux_alpha > 0:
        dead_idx = torch.nonzero(dead_F).squeeze(1)
        if dead_idx.numel() > 0:
            resid_BD = -err_BD
            var = float((resid_BD - resid_BD.mean(0)).pow(2).sum(dtype=torch.float64)) / n_batch
            if var > 0:
                n_aux = min(aux_k, dead_idx.numel())
                aux_vals_BA, aux_pos_BA = torch.topk(pre_BF[:, dead_idx], n_aux, dim=1, sorted=False)
                aux_cols_BA = dead_idx[aux_pos_BA]
                aux_cols_BA, order = torch.sort(aux_cols_BA, dim=1)
                aux_vals_BA = torch.gather(aux_vals_BA, 1, order)
                aux_rows = torch.arange(n_batch, device=x_BD.device).repeat_interleave(n_aux)
                aux_cols, aux_vals = aux_cols_BA.reshape(-1), aux_vals_BA.reshape(-1)
                # Zero (relu-clipped) entries add nothing to e_hat and get no gradient: drop them.
                positive = aux_vals > 0
                aux_rows, aux_cols, aux_vals = aux_rows[positive], aux_cols[positive], aux_vals[positive]
                e_hat_BD = sparse_decode(aux_rows, aux_cols, aux_vals, W_dec, n_batch)
                aux_err_BD = e_hat_BD - resid_BD
                aux_loss = float(aux_err_BD.pow(2).sum(dtype=torch.float64)) / n_batch / var
                g_aux_BD = aux_err_BD * (2.0 * aux_alpha / (n_batch * var))
                a_W_enc, a_b_enc, a_W_dec, a_b_dec = _sparse_backward(
                    aux_rows, aux_cols, aux_vals, g_aux_BD, x_BD, W_dec, width
                )
                g_W_enc += a_W_enc
                g_b_enc += a_b_enc
                g_W_dec += a_W_dec
                g_b_dec += a_b_dec

    # The encoder saw (x - b_dec): fold b_dec's share of the encoder gradient in.
    g_W_enc -= torch.outer(g_b_enc, b_dec)
    g_b_dec -= g_b_enc @ W_enc
    sae.W_enc_FD.grad = g_W_enc
    sae.b_enc_F.grad = g_b_enc
    sae.W_dec_FD.grad = g_W_dec
    sae.b_dec_D.grad = g_b_dec

    positive = vals > 0
    fired_F = torch.zeros(width, dtype=torch.bool, device=x_BD.device)
    fired_F[cols[positive]] = True
    n_active = int(positive.sum())
    return StepStats(
        loss=recon_loss + aux_alpha * aux_loss,
        mse=sq_err / (n_batch * d_in),
        aux_loss=aux_loss,
        n_active=n_active,
        min_active=float(vals[positive].min()) if n_active else math.nan,
        kth_value=float(vals.min()) if vals.numel() else 0.0,
        fired_F=fired_F,
    )


def _sparse_backward(
    rows: Tensor, cols: Tensor, vals: Tensor, g_BD: Tensor, x_BD: Tensor, W_dec_FD: Tensor, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``<g, A @ W_dec>`` for the sparse activations ``A`` (entries rows/cols/vals)
    with ``A = relu(x @ W_enc.T + c)`` on the kept entries.

    Returns ``(dW_enc_FD, dc_F, dW_dec_FD, zeros_D)``; ``dW_enc`` excludes the ``-b_dec`` term,
    which the caller adds once for all losses.
    """
    n_batch = g_BD.shape[0]
    if rows.numel() == 0:
        zeros = torch.zeros_like(W_dec_FD)
        return zeros, W_dec_FD.new_zeros(width), zeros.clone(), W_dec_FD.new_zeros(W_dec_FD.shape[1])
    pattern = sorted_csr(rows, cols, torch.zeros_like(vals), (n_batch, width))
    # dL/dA at the kept entries: <g_b, W_dec_f>, a sampled dense-dense product.
    g_vals = torch.sparse.sampled_addmm(pattern, g_BD, W_dec_FD.T).values()
    g_vals = g_vals * (vals > 0)  # relu passes gradient only where the activation is positive
    order = torch.argsort(cols, stable=True)
    cols_sorted, rows_by_col = cols[order], rows[order]
    dW_dec = sorted_csr(cols_sorted, rows_by_col, vals[order], (width, n_batch)) @ g_BD
    dW_enc = sorted_csr(cols_sorted, rows_by_col, g_vals[order], (width, n_batch)) @ x_BD
    dc = torch.zeros(width, dtype=g_vals.dtype, device=g_vals.device).index_add_(0, cols_sorted, g_vals[order])
    return dW_enc, dc, dW_dec, W_dec_FD.new_zeros(W_dec_FD.shape[1])


@torch.no_grad()
def project_decoder_grad_(sae: HasUnitDecoder) -> None:
    """Remove from each decoder row's gradient its component along that (unit-norm) row.

    For any SAE with unit-norm decoder rows ``W_dec_FD`` (flat or tree-structured).

    With unit-norm rows this is the tangent direction of the sphere, so the step changes the
    feature's direction, not its norm (renormalisation then fixes the second-order drift).
    """
    W, G = sae.W_dec_FD, sae.W_dec_FD.grad
    assert G is not None
    G -= (G * W).sum(dim=1, keepdim=True) * W
