"""A tree-structured SAE: children may fire only where their parent fires (section 7).

The paper brief's section 7: a hierarchical (variable-length) code sends a parent feature
("animal"), and a child feature ("bird") only when its parent is on. The child then costs its
entropy *conditional on the parent being active*, on the fraction of samples where the parent
fires, and nothing elsewhere, so the tree code can be shorter than a flat code even though
its L0 is higher. Encoder and decoder must share the tree for the saving to exist.

:class:`TreeSAE` is the dictionary (P parents, each with C children; a linear decoder, so
independent additivity holds); :func:`train_tree_sae` is its trainer, kept apart from it;
:func:`tree_description_length` counts its latents' DL the tree way, with the quantisation
of :mod:`mdl_utils.dl`.

Feature order everywhere: the P parents first, then parent 0's C children, parent 1's, and so
on; child j (0-based among the children) has parent j // C.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mdl_utils.entropy import feature_entropies
from mdl_utils.grads import project_decoder_grad_
from mdl_utils.quantize import quantize
from mdl_utils.sae import n_kept

__all__ = [
    "TreeDescriptionLength",
    "TreeSAE",
    "TreeTrainConfig",
    "TreeTrainHistory",
    "train_tree_sae",
    "tree_description_length",
]


def _batch_topk_mask(pre_BF: Tensor, k: float) -> Tensor:
    """Boolean mask of the round(k * B) largest positive entries of ``pre_BF`` over the batch."""
    n_keep = min(n_kept(k, pre_BF.shape[0]), pre_BF.numel())
    mask = torch.zeros_like(pre_BF, dtype=torch.bool)
    if n_keep > 0:
        _, idx = torch.topk(pre_BF.reshape(-1), n_keep, sorted=False)
        mask.view(-1)[idx] = True
    return mask & (pre_BF > 0)


class TreeSAE(nn.Module):
    """An SAE whose features form a two-level tree: P parents, each with C children.

    Encoder: ``pre = relu((x - b_dec) @ W_enc.T + b_enc)`` for all P + P*C features. A parent
    is active when its pre-activation survives the selection; a child's pre-activation is
    zeroed wherever its parent is inactive *before* the children are selected, so a child can
    never fire without its parent. Selection, per level: in training, BatchTopK (the
    ``round(k * B)`` largest over the batch, ``k_parents`` for parents and ``k_children`` for
    children); at inference, one learned threshold per level (the buffer ``thresholds``).

    Decoder: ``x_hat = acts @ W_dec + b_dec`` with unit-norm rows, as in a flat SAE.

    Parameters (F = P + P*C features, D = ``d_in``): ``W_enc_FD``, ``b_enc_F``, ``W_dec_FD``,
    ``b_dec_D``; buffer ``thresholds`` (2,) for (parents, children), negative until trained.

    Args:
        d_in: input dimension.
        n_parents: P.
        children_per_parent: C.
        k_parents, k_children: mean number of active parents / children per sample in training
            (fractional allowed, > 0).
        seed: seed of the random unit-norm initialisation (encoder = decoder transpose).
    """

    # registered buffers (declared here for type checkers)
    thresholds: Tensor
    parent_of_child: Tensor

    def __init__(
        self, d_in: int, n_parents: int, children_per_parent: int, *, k_parents: float, k_children: float, seed: int = 0
    ) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("n_parents", n_parents), ("children_per_parent", children_per_parent)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if not (k_parents > 0 and math.isfinite(k_parents)) or k_parents > n_parents:
            raise ValueError(f"k_parents must lie in (0, n_parents={n_parents}]; got {k_parents!r}")
        n_children = n_parents * children_per_parent
        if not (k_children > 0 and math.isfinite(k_children)) or k_children > n_children:
            raise ValueError(f"k_children must lie in (0, {n_children}]; got {k_children!r}")
        self.d_in, self.n_parents, self.children_per_parent = d_in, n_parents, children_per_parent
        self.n_children = n_children
        self.width = n_parents + n_children
        self.k_parents, self.k_children = float(k_parents), float(k_children)
        gen = torch.Generator().manual_seed(seed)
        W_dec_FD = torch.randn(self.width, d_in, generator=gen)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
        self.W_dec_FD = nn.Parameter(W_dec_FD)
        self.W_enc_FD = nn.Parameter(W_dec_FD.clone())
        self.b_enc_F = nn.Parameter(torch.zeros(self.width))
        self.b_dec_D = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("thresholds", torch.full((2,), -1.0))
        self.register_buffer("parent_of_child", torch.arange(n_parents).repeat_interleave(children_per_parent))

    @property
    def has_thresholds(self) -> bool:
        """Whether training has set the inference thresholds."""
        return bool((self.thresholds >= 0).all())

    def pre_activations(self, x_BD: Tensor) -> Tensor:
        """``relu((x - b_dec) @ W_enc.T + b_enc)``, shape (B, F)."""
        if x_BD.ndim != 2 or x_BD.shape[1] != self.d_in:
            raise ValueError(f"x must have shape (samples, d_in={self.d_in}); got {tuple(x_BD.shape)}")
        return torch.relu((x_BD - self.b_dec_D) @ self.W_enc_FD.T + self.b_enc_F)

    def encode(self, x_BD: Tensor, *, use_threshold: bool = True) -> Tensor:
        """Feature activations ``acts_BF`` (parents, then children); children only under active parents.

        With ``use_threshold`` and trained thresholds, each level keeps the pre-activations above
        its threshold; otherwise (training, or an untrained SAE) each level uses batch top-k.
        """
        pre_BF = self.pre_activations(x_BD)
        pre_parents_BP, pre_children_BC = pre_BF[:, : self.n_parents], pre_BF[:, self.n_parents :]
        threshold = use_threshold and self.has_thresholds
        if threshold:
            parent_on_BP = pre_parents_BP > self.thresholds[0]
        else:
            parent_on_BP = _batch_topk_mask(pre_parents_BP, self.k_parents)
        gated_BC = pre_children_BC * parent_on_BP[:, self.parent_of_child]
        if threshold:
            child_on_BC = gated_BC > self.thresholds[1]
        else:
            child_on_BC = _batch_topk_mask(gated_BC, self.k_children)
        return torch.cat([pre_parents_BP * parent_on_BP, gated_BC * child_on_BC], dim=1)

    def decode(self, acts_BF: Tensor) -> Tensor:
        """Reconstruction ``x_hat_BD = acts_BF @ W_dec + b_dec``."""
        if acts_BF.ndim != 2 or acts_BF.shape[1] != self.width:
            raise ValueError(f"acts must have shape (samples, width={self.width}); got {tuple(acts_BF.shape)}")
        return acts_BF @ self.W_dec_FD + self.b_dec_D

    def forward(self, x_BD: Tensor) -> Tensor:
        """``decode(encode(x))`` in the current mode's selection."""
        return self.decode(self.encode(x_BD))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm, in place."""
        self.W_dec_FD.div_(self.W_dec_FD.norm(dim=1, keepdim=True))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeTrainConfig:
    """Settings of :func:`train_tree_sae`.

    Attributes:
        lr: Adam learning rate.
        batch_size: samples per step.
        max_epochs: passes over the training data at most.
        patience: stop after this many epochs without a validation-MSE improvement.
        threshold_beta: decay of the running averages that learn the inference thresholds.
        parent_epochs: the tree is grown top-down: for this many epochs only the parents are
            trained (children held at 0), then every child is started on the residual of a sample
            where its parent fires, so it begins inside its parent's part of the data.
        resample_epochs: during the first this-many epochs, a feature that fired on no training
            sample in an epoch is restarted on the residual of a badly reconstructed sample
            (for a child: one where its parent fired), the resampling remedy for dead features.
        seed: seeds the batch order and the resampling.
    """

    lr: float = 3e-3
    batch_size: int = 256
    max_epochs: int = 60
    patience: int = 8
    threshold_beta: float = 0.99
    parent_epochs: int = 10
    resample_epochs: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.parent_epochs < self.max_epochs:
            raise ValueError(
                f"parent_epochs ({self.parent_epochs}) must lie in [0, max_epochs = {self.max_epochs}): the "
                "children need at least one epoch of training after the parents-only phase"
            )


@dataclass
class TreeTrainHistory:
    """Per-epoch validation MSE (per entry, inference mode), the epoch kept, restarts made."""

    val_mse: list[float] = field(default_factory=list)
    best_epoch: int = 0
    restarts: int = 0  # dead features restarted by resampling
    seconds: float = 0.0


@torch.no_grad()
def _resample_dead_(sae: TreeSAE, x_ND: Tensor, fired_F: Tensor, gen: torch.Generator) -> int:
    """Restart features that never fired on the residuals of badly reconstructed samples.

    A dead parent gets the residual of a sample drawn with probability proportional to its
    squared error; a dead child the same, among samples where its parent is active (so it can
    fire there). Encoder row = decoder row scaled to 0.2, bias 0. Returns how many restarted.
    """
    dead = torch.nonzero(~fired_F).squeeze(1)
    if dead.numel() == 0:
        return 0
    acts_NF = sae.encode(x_ND, use_threshold=False)
    resid_ND = x_ND - sae.decode(acts_NF)
    weight_N = resid_ND.pow(2).sum(1)
    restarted = 0
    for f in dead.tolist():
        w = weight_N.clone()
        if f >= sae.n_parents:
            w *= acts_NF[:, int(sae.parent_of_child[f - sae.n_parents])] > 0
        if float(w.sum()) <= 0:
            continue
        i = int(torch.multinomial(w, 1, generator=gen))
        direction = resid_ND[i] / resid_ND[i].norm().clamp_min(1e-12)
        sae.W_dec_FD[f] = direction
        sae.W_enc_FD[f] = 0.2 * direction
        sae.b_enc_F[f] = 0.0
        restarted += 1
    return restarted


def _mse(sae: TreeSAE, x_ND: Tensor) -> float:
    with torch.no_grad():
        return float(((sae(x_ND) - x_ND) ** 2).mean())


def train_tree_sae(
    sae: TreeSAE, x_train: Any, x_val: Any, config: TreeTrainConfig = TreeTrainConfig()
) -> tuple[TreeSAE, TreeTrainHistory]:
    """Train a copy of ``sae`` to reconstruct ``x_train``; early-stop on ``x_val``'s MSE.

    Objective: squared reconstruction error per sample, with each level's batch top-k
    selection. Decoder rows are kept at unit norm (gradient projected onto the sphere's
    tangent, then renormalised). Each level's inference threshold is a running average of the
    smallest activation its batch top-k kept. Training grows the tree top-down (parents alone
    for ``config.parent_epochs`` epochs, then children started inside their parents' data) and
    restarts dead features by resampling. The weights of the best validation epoch after the
    children are grown, measured in inference mode (thresholds), are returned.

    Args:
        sae: the (untrained) tree SAE; it is not modified.
        x_train, x_val: arrays (N, d_in) and (M, d_in).
        config: :class:`TreeTrainConfig`.

    Returns:
        ``(trained_sae, history)``; the SAE is in eval mode.
    """
    start = time.perf_counter()
    x_tr = torch.as_tensor(np.asarray(x_train), dtype=torch.float32)
    x_va = torch.as_tensor(np.asarray(x_val), dtype=torch.float32)
    if x_tr.ndim != 2 or x_tr.shape[0] == 0 or not torch.isfinite(x_tr).all():
        raise ValueError("x_train must be a non-empty, finite 2-D array")
    sae = copy.deepcopy(sae)
    with torch.no_grad():
        sae.b_dec_D.copy_(x_tr.mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    thresholds = [-1.0, -1.0]
    history = TreeTrainHistory()
    best, best_state, bad = math.inf, None, 0
    for epoch in range(1, config.max_epochs + 1):
        sae.train()
        fired_F = torch.zeros(sae.width, dtype=torch.bool)
        parents_only = epoch <= config.parent_epochs
        if epoch == config.parent_epochs + 1 and config.parent_epochs > 0:
            # Grow the children: start each on the residual of a sample where its parent fires.
            all_children = torch.arange(sae.width) >= sae.n_parents
            history.restarts += _resample_dead_(sae, x_tr, ~all_children, gen)
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), config.batch_size):
            x_BD = x_tr[perm[i : i + config.batch_size]]
            acts_BF = sae.encode(x_BD, use_threshold=False)
            if parents_only:
                acts_BF = torch.cat([acts_BF[:, : sae.n_parents], torch.zeros_like(acts_BF[:, sae.n_parents :])], 1)
            loss = ((sae.decode(acts_BF) - x_BD) ** 2).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            project_decoder_grad_(sae)
            optimizer.step()
            sae.normalize_decoder_()
            with torch.no_grad():
                fired_F |= (acts_BF > 0).any(0)
                for level, cols in enumerate((slice(0, sae.n_parents), slice(sae.n_parents, None))):
                    kept = acts_BF[:, cols]
                    kept = kept[kept > 0]
                    if kept.numel():
                        low = float(kept.min())
                        b = config.threshold_beta
                        thresholds[level] = low if thresholds[level] < 0 else b * thresholds[level] + (1 - b) * low
        if parents_only:
            fired_F[sae.n_parents :] = True  # children are not trained yet: nothing to resample
        if epoch <= config.resample_epochs:
            history.restarts += _resample_dead_(sae, x_tr, fired_F, gen)
        sae.thresholds.copy_(torch.tensor(thresholds))
        sae.eval()
        val = _mse(sae, x_va)
        history.val_mse.append(val)
        if parents_only:
            continue  # the tree is not grown yet: its MSE says nothing about the final SAE
        if val < best * (1 - 1e-4):
            best, bad, history.best_epoch = val, 0, epoch
            best_state = copy.deepcopy(sae.state_dict())
        else:
            bad += 1
            if bad >= config.patience:
                break
    assert best_state is not None
    sae.load_state_dict(best_state)
    sae.eval()
    history.seconds = time.perf_counter() - start
    return sae, history


# --------------------------------------------------------------------------------------------
# Description length of a tree code
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeDescriptionLength:
    """DL of tree-structured latents, bits per sample.

    Attributes:
        dl_bits: sum of the parents' entropies plus, for each child, P(parent active) times the
            child's entropy among the samples where its parent is active.
        parent_bits: H(p_i) of each parent, shape (P,).
        child_bits: each child's conditional cost (already weighted), shape (P*C,).
        flat_dl_bits: the same quantised latents coded flat, every feature on its own
            (:func:`mdl_utils.entropy.description_length`'s count), for comparison.
        l0: mean number of active features per sample (parents and children).
    """

    dl_bits: float
    parent_bits: np.ndarray
    child_bits: np.ndarray
    flat_dl_bits: float
    l0: float


def tree_description_length(
    acts_NF: Any, n_parents: int, children_per_parent: int, *, bits: int | None = None, step: float | None = None
) -> TreeDescriptionLength:
    """DL of latents of a two-level tree, each child counted conditionally on its parent.

    The latents are quantised once with :func:`mdl_utils.quantize.quantize` (``bits`` or ``step``,
    as there). A parent costs its entropy H(p_i). A child is sent only where its parent is
    active, so it costs P(parent active) * H(child's codes | parent active); where the parent is
    off the receiver already knows the child is 0. A child that fires without its parent
    breaks the tree and is an error.

    Args:
        acts_NF: latents (N samples, P + P*C features: parents first, then each parent's
            children in order), non-negative.
        n_parents, children_per_parent: P and C.
        bits, step: the quantisation, exactly one of them (see :func:`mdl_utils.quantize.quantize`).

    Returns:
        :class:`TreeDescriptionLength`.
    """
    if isinstance(acts_NF, Tensor):
        acts_NF = acts_NF.detach().cpu().numpy()
    acts = np.asarray(acts_NF, dtype=np.float64)
    width = n_parents + n_parents * children_per_parent
    if acts.ndim != 2 or acts.shape[1] != width:
        raise ValueError(
            f"latents must have shape (N, {width}) for {n_parents} parents with "
            f"{children_per_parent} children each; got {acts.shape}"
        )
    codes = np.asarray(quantize(acts, bits=bits, step=step))
    n = codes.shape[0]
    parent_codes, child_codes = codes[:, :n_parents], codes[:, n_parents:]
    parent_of_child = np.repeat(np.arange(n_parents), children_per_parent)
    parent_on = parent_codes > 0
    orphans = (child_codes > 0) & ~parent_on[:, parent_of_child]
    if orphans.any():
        raise ValueError(
            f"{int(orphans.sum())} child activations occur where their parent is off: these latents are not a tree code"
        )
    parent_bits = feature_entropies(parent_codes)
    child_bits = np.zeros(child_codes.shape[1])
    for j, parent in enumerate(parent_of_child):
        rows = parent_on[:, parent]
        if rows.any():
            child_bits[j] = rows.mean() * feature_entropies(child_codes[rows][:, [j]])[0]
    flat = float(feature_entropies(codes).sum())
    return TreeDescriptionLength(
        dl_bits=float(parent_bits.sum() + child_bits.sum()),
        parent_bits=parent_bits,
        child_bits=child_bits,
        flat_dl_bits=flat,
        l0=float((codes > 0).sum() / n),
    )
