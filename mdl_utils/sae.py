"""BatchTopK sparse autoencoders (Bussmann et al. 2024): the dictionary, apart from its trainer.

An SAE maps an activation ``x`` (dimension ``d_in``) to feature activations ``z = Enc(x)``
(``width`` features, mostly zero) and back, ``x_hat = z @ W_dec + b_dec`` (section 1 of the
paper brief). The decoder's rows are the features' directions and are kept at unit norm, so a
feature's activation is its coefficient along that direction.

Encoder: ``pre = relu((x - b_dec) @ W_enc.T + b_enc)``. Which pre-activations survive depends
on the mode:

- *training* (:func:`batch_topk`): the ``round(k * B)`` largest pre-activations over the
  whole batch of ``B`` samples survive, so ``k`` is the batch's *mean* L0 and may be
  fractional (a search over ``k`` can then hit a target loss finely);
- *inference* (:meth:`BatchTopKSAE.encode`): a pre-activation survives when it exceeds one
  threshold learned during training (a running average of the smallest activation the batch
  top-k kept), so a sample's L0 varies around ``k`` and does not depend on the other samples.

This module knows nothing about training (see :mod:`mdl_utils.train`) nor description length.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mdl_utils.io import atomic_write_text

__all__ = [
    "BatchTopKSAE",
    "batch_topk",
    "n_kept",
    "check_sae_shape",
    "sorted_csr",
    "sparse_decode",
    "SAE_FORMAT_VERSION",
]

#: Bumped whenever the saved layout or the meaning of a saved field changes.
SAE_FORMAT_VERSION = 1


def check_sae_shape(d_in: int, width: int, k: float) -> None:
    """Raise a ``ValueError`` naming the problem when ``(d_in, width, k)`` is not a valid SAE."""
    for name, value in (("d_in", d_in), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
        raise ValueError(f"k must be a finite number, got {k!r}")
    if k <= 0:
        raise ValueError(f"k (the mean number of active features per sample) must be positive, got {k}")
    if k > width:
        raise ValueError(f"k={k} is larger than the SAE's width={width}: at most `width` features can be active")


def n_kept(k: float, batch_size: int) -> int:
    """How many activations batch top-k keeps in a batch: ``round(k * batch_size)``, halves up.

    Capped at ``width * batch_size`` implicitly by ``k <= width``.
    """
    return int(math.floor(k * batch_size + 0.5))


def sorted_csr(rows_N: Tensor, cols_N: Tensor, values_N: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from entries sorted by row (``rows_N`` non-decreasing)."""
    counts = torch.bincount(rows_N, minlength=shape[0])
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows_N.device)
    torch.cumsum(counts, 0, out=crow[1:])
    with warnings.catch_warnings():
        # torch flags CSR support as beta; the few operations used here are stable and tested.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols_N, values_N, size=shape)


def sparse_decode(rows_N: Tensor, cols_N: Tensor, values_N: Tensor, W_dec_FD: Tensor, n_rows: int) -> Tensor:
    """``acts_BF @ W_dec_FD`` for a sparse ``acts_BF`` given as row-sorted entries (no bias)."""
    if rows_N.numel() == 0:
        return W_dec_FD.new_zeros(n_rows, W_dec_FD.shape[1])
    return sorted_csr(rows_N, cols_N, values_N, (n_rows, W_dec_FD.shape[0])) @ W_dec_FD


def batch_topk(pre_BF: Tensor, k: float, *, lower_bound: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Select the ``round(k * B)`` largest entries of ``pre_BF`` over the whole batch.

    Args:
        pre_BF: non-negative pre-activations, shape (B, F).
        k: mean number of features kept per sample (may be fractional).
        lower_bound: a value believed to lie below the selection's smallest entry (for example
            a fraction of the previous batch's). Only entries above it are ranked, which makes
            the selection several times faster; when fewer than ``round(k * B)`` entries exceed
            it the whole batch is ranked, so the result never depends on the bound's quality.

    Returns:
        ``(rows_N, cols_N, values_N)``: the kept entries, sorted row-major (by sample, then
        feature), ``N = round(k * B)``.
    """
    n_rows, width = pre_BF.shape
    n_keep = min(n_kept(k, n_rows), pre_BF.numel())
    flat = pre_BF.reshape(-1)
    candidates = None
    if lower_bound > 0.0:
        candidates = torch.nonzero(flat > lower_bound).squeeze(1)
        if candidates.numel() < n_keep:
            candidates = None
    if candidates is None:
        _, flat_idx = torch.topk(flat, n_keep, sorted=False)
    else:
        _, pos = torch.topk(flat[candidates], n_keep, sorted=False)
        flat_idx = candidates[pos]
    flat_idx = torch.sort(flat_idx).values
    return flat_idx // width, flat_idx % width, flat[flat_idx]


class BatchTopKSAE(nn.Module):
    """A BatchTopK sparse autoencoder with ``width`` features over ``d_in``-dimensional inputs.

    Parameters (shape suffixes: D = ``d_in``, F = ``width``):
        ``W_enc_FD``: encoder rows, one per feature (initialised to the decoder rows, i.e. the
        encoder matrix is the decoder's transpose); ``b_enc_F``; ``W_dec_FD``: decoder rows,
        unit norm, one per feature; ``b_dec_D``. Buffer ``threshold``: the inference
        threshold (negative until training has set it).

    Args:
        d_in: input dimension (784 for MNIST).
        width: number of features (dictionary size).
        k: mean number of active features per sample during training (fractional allowed).
        seed: seed of the random unit-norm decoder initialisation (``None``: torch's global RNG).
    """

    threshold: Tensor  # registered buffer (declared here for type checkers)

    def __init__(self, d_in: int, width: int, k: float, *, seed: int | None = None) -> None:
        super().__init__()
        check_sae_shape(d_in, width, k)
        self.d_in, self.width, self.k = d_in, width, float(k)
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        W_dec_FD = torch.randn(width, d_in, generator=gen)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
        self.W_dec_FD = nn.Parameter(W_dec_FD)
        self.W_enc_FD = nn.Parameter(W_dec_FD.clone())
        self.b_enc_F = nn.Parameter(torch.zeros(width))
        self.b_dec_D = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.metadata: dict[str, Any] = {}

    # --- checks --------------------------------------------------------------------------
    def check_input(self, x_BD: Tensor, name: str = "x") -> None:
        """Raise a ``ValueError`` when ``x_BD`` is not a non-empty (B, d_in) finite batch."""
        if x_BD.ndim != 2:
            raise ValueError(f"{name} must be a 2-D (samples, d_in) array, got shape {tuple(x_BD.shape)}")
        if x_BD.shape[1] != self.d_in:
            raise ValueError(f"{name} has dimension {x_BD.shape[1]} but the SAE expects d_in={self.d_in}")
        if x_BD.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        if not torch.isfinite(x_BD).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    # --- the code ------------------------------------------------------------------------
    def pre_activations(self, x_BD: Tensor) -> Tensor:
        """``relu((x - b_dec) @ W_enc.T + b_enc)``, shape (B, F).

        Computed as ``x @ W_enc.T + (b_enc - W_enc @ b_dec)``, the same value, so that the
        trainer's gradient for ``b_dec`` is a vector-matrix product, not a full matmul.
        """
        bias_F = self.b_enc_F - self.W_enc_FD @ self.b_dec_D
        return torch.relu_(torch.addmm(bias_F, x_BD, self.W_enc_FD.T))

    @property
    def has_threshold(self) -> bool:
        """Whether training has set the inference threshold."""
        return bool(self.threshold >= 0)

    def encode(self, x_BD: Tensor, *, use_threshold: bool = True) -> Tensor:
        """Feature activations ``acts_BF`` for inputs ``x_BD``.

        With ``use_threshold`` (inference, the default) each pre-activation above the learned
        threshold is kept; an SAE whose threshold was never set (untrained) falls back to
        batch top-k, as does ``use_threshold=False``.
        """
        self.check_input(x_BD)
        pre_BF = self.pre_activations(x_BD)
        if use_threshold and self.has_threshold:
            return pre_BF * (pre_BF > self.threshold)
        rows, cols, vals = batch_topk(pre_BF, self.k)
        acts_BF = torch.zeros_like(pre_BF)
        acts_BF[rows, cols] = vals
        return acts_BF

    def decode(self, acts_BF: Tensor) -> Tensor:
        """Reconstruction ``x_hat_BD = acts_BF @ W_dec + b_dec``."""
        if acts_BF.ndim != 2 or acts_BF.shape[1] != self.width:
            raise ValueError(f"acts must have shape (samples, width={self.width}), got {tuple(acts_BF.shape)}")
        return torch.addmm(self.b_dec_D, acts_BF, self.W_dec_FD)

    def forward(self, x_BD: Tensor) -> Tensor:
        """Inference reconstruction ``decode(encode(x))``, computed with a sparse decoder.

        Equal to ``decode(encode(x))`` up to float rounding (the sum runs over the active
        features only).
        """
        self.check_input(x_BD)
        pre_BF = self.pre_activations(x_BD)
        if self.has_threshold:
            rows, cols = torch.nonzero(pre_BF > self.threshold, as_tuple=True)
            vals = pre_BF[rows, cols]
        else:
            rows, cols, vals = batch_topk(pre_BF, self.k)
        return sparse_decode(rows, cols, vals, self.W_dec_FD, x_BD.shape[0]) + self.b_dec_D

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm, in place."""
        self.W_dec_FD.div_(self.W_dec_FD.norm(dim=1, keepdim=True))

    # --- persistence ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this SAE's shape."""
        return {"d_in": self.d_in, "width": self.width, "k": self.k}

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (config, metadata).

        ``path`` may end in ``.safetensors``. Each file is written to a temporary name and
        moved into place, so a reader never sees a half-written file.

        Returns:
            The two paths written.
        """
        stem = Path(path)
        if stem.suffix == ".safetensors":
            stem = stem.with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        weights_path = stem.parent / (stem.name + ".safetensors")
        json_path = stem.parent / (stem.name + ".json")
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{stem.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, weights_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        meta = {
            "format_version": SAE_FORMAT_VERSION,
            "class": type(self).__name__,
            "config": self.config(),
            "metadata": self.metadata,
        }
        atomic_write_text(json_path, json.dumps(meta, indent=2, sort_keys=True))
        return weights_path, json_path

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> BatchTopKSAE:
        """Read an SAE written by :meth:`save`; its outputs are bit-identical to the saved one's."""
        stem = Path(path)
        if stem.suffix in {".safetensors", ".json"}:
            stem = stem.with_suffix("")
        json_path = stem.parent / (stem.name + ".json")
        weights_path = stem.parent / (stem.name + ".safetensors")
        meta = json.loads(json_path.read_text())
        if meta.get("format_version") != SAE_FORMAT_VERSION:
            raise ValueError(
                f"{json_path} has SAE format version {meta.get('format_version')}, "
                f"this code reads version {SAE_FORMAT_VERSION}"
            )
        cfg = meta["config"]
        sae = cls(int(cfg["d_in"]), int(cfg["width"]), float(cfg["k"]), seed=0)
        sae.load_state_dict(load_file(str(weights_path)))
        sae.metadata = meta.get("metadata", {})
        return sae.to(device)
