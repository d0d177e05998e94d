"""Seeded synthetic data with known features, for the toy models of :mod:`mdl_utils.toys`.

:func:`correlated_pair_data` draws pairs of boolean features with a given correlation
(feature splitting, chapter 4) and :func:`hierarchical_data` parents with children that imply
them (hierarchical codes, chapter 5), each as activations with known directions
(:class:`ToyData`). :func:`pair_codes` builds the intended split or unsplit code from the
truth; :func:`best_cosines` measures how well a learned dictionary matches known directions;
:func:`dictionary_sae` makes an SAE from a given dictionary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mdl_utils.toys import joint_probability

if TYPE_CHECKING:
    from mdl_utils.sae import BatchTopKSAE

__all__ = [
    "HierarchicalData",
    "ToyData",
    "best_cosines",
    "correlated_pair_data",
    "dictionary_sae",
    "hierarchical_data",
    "pair_codes",
]


# --------------------------------------------------------------------------------------------
# Synthetic data with known features
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyData:
    """Synthetic activations built from known features.

    Attributes:
        x_ND: the data, N samples x d dimensions: features_NF @ directions_FD + noise.
        features_NF: the true feature activations (0 where a feature is off).
        directions_FD: the true feature directions, unit norm.
        noise_std: standard deviation of the Gaussian noise added to every entry.
    """

    x_ND: np.ndarray
    features_NF: np.ndarray
    directions_FD: np.ndarray
    noise_std: float


def _random_unit_directions(rng: np.random.Generator, n: int, d: int, *, orthogonal: bool) -> np.ndarray:
    if orthogonal:
        if n > d:
            raise ValueError(f"cannot have {n} orthogonal directions in {d} dimensions")
        q, _ = np.linalg.qr(rng.standard_normal((d, n)))
        return q.T.copy()
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _check_n_d_noise(n: int, d: int, noise_std: float) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n (samples) must be a positive integer; got {n!r}")
    if int(d) != d or d < 1:
        raise ValueError(f"d (dimensions) must be a positive integer; got {d!r}")
    if not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be finite and >= 0; got {noise_std!r}")


def correlated_pair_data(
    n: int,
    p: float,
    rho: float,
    *,
    n_pairs: int = 1,
    d: int = 8,
    noise_std: float = 0.01,
    extra_rates: tuple[float, ...] = (),
    directions_FD: np.ndarray | None = None,
    seed: int = 0,
) -> ToyData:
    """Samples x = sum over pairs of (A v_A + B v_B) (+ extra features) + noise (section 6's toy).

    In every pair, A and B are booleans that each fire with probability ``p`` and have Pearson
    correlation ``rho``: the four outcomes (neither, A only, B only, both) are drawn with
    probabilities (1 - 2p + p_AB, p - p_AB, p - p_AB, p_AB), p_AB = :func:`mdl_utils.toys.joint_probability`.
    Different pairs are independent copies, so an SAE's description length is ``n_pairs``
    times the single-pair value (several pairs let a BatchTopK SAE, whose mean L0 must be at
    least 1, learn the toy). Each ``extra_rates`` entry adds one more boolean feature,
    independent of everything else, firing with that probability (used for the fixed-width
    choice between a new feature and an AND).

    Args:
        n: number of samples.
        p: firing probability of every A and B, in (0, 1).
        rho: correlation within a pair, within :func:`mdl_utils.toys.correlation_range` (p).
        n_pairs: number of independent (A, B) pairs.
        d: dimension of the data.
        noise_std: standard deviation of i.i.d. Gaussian noise on every entry.
        extra_rates: firing probabilities of extra independent boolean features.
        directions_FD: the feature directions (F = 2 n_pairs + len(extra_rates) rows, d
            columns); normalised to unit length. Default: random orthonormal directions (random
            unit directions when F > d) drawn from ``seed``.
        seed: seed of the random generator (directions, features and noise).

    Returns:
        :class:`ToyData`; features_NF columns are A_1, B_1, A_2, B_2, ..., then the extras
        (values 0 or 1).
    """
    _check_n_d_noise(n, d, noise_std)
    if int(n_pairs) != n_pairs or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive integer; got {n_pairs!r}")
    p_ab = joint_probability(p, rho)
    for rate in extra_rates:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"extra_rates must lie in [0, 1]; got {rate!r}")
    n_features = 2 * n_pairs + len(extra_rates)
    rng = np.random.default_rng(seed)
    if directions_FD is None:
        directions_FD = _random_unit_directions(rng, n_features, d, orthogonal=n_features <= d)
    else:
        directions_FD = np.asarray(directions_FD, dtype=np.float64)
        if directions_FD.shape != (n_features, d):
            raise ValueError(f"directions_FD must have shape {(n_features, d)}; got {directions_FD.shape}")
        directions_FD = directions_FD / np.linalg.norm(directions_FD, axis=1, keepdims=True)
    outcome_probs = np.clip(np.array([1 - 2 * p + p_ab, p - p_ab, p - p_ab, p_ab]), 0.0, None)
    outcome_NP = rng.choice(4, size=(n, n_pairs), p=outcome_probs / outcome_probs.sum())
    features_NF = np.zeros((n, n_features))
    features_NF[:, 0 : 2 * n_pairs : 2] = (outcome_NP == 1) | (outcome_NP == 3)
    features_NF[:, 1 : 2 * n_pairs : 2] = (outcome_NP == 2) | (outcome_NP == 3)
    for j, rate in enumerate(extra_rates):
        features_NF[:, 2 * n_pairs + j] = rng.random(n) < rate
    x_ND = features_NF @ directions_FD + noise_std * rng.standard_normal((n, d))
    return ToyData(x_ND.astype(np.float32), features_NF, directions_FD, float(noise_std))


@dataclass(frozen=True)
class HierarchicalData(ToyData):
    """:class:`ToyData` whose features form a two-level tree.

    Features 0..P-1 are parents; then each parent's C children in order, so child j (counting
    from 0 among the children) is feature P + j with parent j // C.

    Attributes:
        n_parents: P.
        children_per_parent: C.
    """

    n_parents: int = 0
    children_per_parent: int = 0

    @property
    def parent_of_child(self) -> np.ndarray:
        """For each child (in order), the index of its parent."""
        return np.repeat(np.arange(self.n_parents), self.children_per_parent)


def hierarchical_data(
    n: int,
    *,
    n_parents: int = 4,
    children_per_parent: int = 3,
    d: int = 32,
    p_parent: float = 0.15,
    p_child_given_parent: float = 0.6,
    magnitude_range: tuple[float, float] = (0.5, 1.5),
    noise_std: float = 0.01,
    seed: int = 0,
) -> HierarchicalData:
    """Samples from a two-level tree of features (section 7's toy, with magnitudes).

    Each parent fires independently with probability ``p_parent``. When a parent fires, with
    probability ``p_child_given_parent`` exactly one of its children fires too (chosen uniformly),
    otherwise none does; a child never fires without its parent. Every active feature gets a
    magnitude drawn uniformly from ``magnitude_range``, independently. Then
    x = sum over active features of magnitude * direction + Gaussian noise. Directions are
    random unit vectors, orthonormal when there are no more features than dimensions.

    Returns:
        :class:`HierarchicalData`; features_NF holds the magnitudes (0 where off).
    """
    _check_n_d_noise(n, d, noise_std)
    if n_parents < 1 or children_per_parent < 1:
        raise ValueError(f"need at least one parent and one child per parent; got {n_parents}, {children_per_parent}")
    for name, rate in (("p_parent", p_parent), ("p_child_given_parent", p_child_given_parent)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; got {rate!r}")
    lo, hi = magnitude_range
    if not 0.0 < lo <= hi:
        raise ValueError(f"magnitude_range must satisfy 0 < low <= high; got {magnitude_range!r}")
    n_children = n_parents * children_per_parent
    n_features = n_parents + n_children
    rng = np.random.default_rng(seed)
    directions_FD = _random_unit_directions(rng, n_features, d, orthogonal=n_features <= d)
    parent_on_NP = rng.random((n, n_parents)) < p_parent
    has_child_NP = parent_on_NP & (rng.random((n, n_parents)) < p_child_given_parent)
    which_child_NP = rng.integers(children_per_parent, size=(n, n_parents))
    child_on_NPC = np.zeros((n, n_parents, children_per_parent), dtype=bool)
    rows, parents = np.nonzero(has_child_NP)
    child_on_NPC[rows, parents, which_child_NP[rows, parents]] = True
    on_NF = np.concatenate([parent_on_NP, child_on_NPC.reshape(n, n_children)], axis=1)
    features_NF = on_NF * rng.uniform(lo, hi, size=(n, n_features))
    x_ND = features_NF @ directions_FD + noise_std * rng.standard_normal((n, d))
    return HierarchicalData(
        x_ND.astype(np.float32),
        features_NF,
        directions_FD,
        float(noise_std),
        n_parents=int(n_parents),
        children_per_parent=int(children_per_parent),
    )


# --------------------------------------------------------------------------------------------
# Known codes for the toy data, and how well a learned dictionary matches known directions
# --------------------------------------------------------------------------------------------


def pair_codes(
    data: ToyData,
    n_pairs: int,
    *,
    split: bool | tuple[bool, ...],
    keep_extras: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The intended latents and dictionary of :func:`correlated_pair_data`, built from the truth.

    For each pair, the unsplit code has latents A and B with directions v_A, v_B; the split
    code has A-and-not-B, B-and-not-A and A-and-B with directions v_A, v_B and the unit vector
    along v_A + v_B, the AND latent carrying the norm of v_A + v_B so that a unit-norm decoder
    row reproduces v_A + v_B. Then the extra features listed in ``keep_extras`` follow, each
    with its own direction; extras not listed are left out (their signal is not reconstructed).

    Args:
        data: the output of :func:`correlated_pair_data`.
        n_pairs: how many (A, B) pairs ``data`` was drawn with.
        split: one flag for all pairs, or one per pair: use the split code for that pair.
        keep_extras: indices (0-based, among the extras) of the extra features to include.

    Returns:
        ``(z_NF, W_FD)``: latents (N x F, non-negative) and unit-norm decoder rows (F x d);
        z_NF @ W_FD reconstructs the represented part of the noiseless data exactly.
    """
    features_NF, directions_FD = data.features_NF, data.directions_FD
    n_extra = features_NF.shape[1] - 2 * n_pairs
    if n_extra < 0:
        raise ValueError(f"data has {features_NF.shape[1]} features, fewer than 2 * n_pairs = {2 * n_pairs}")
    flags = (split,) * n_pairs if isinstance(split, (bool, np.bool_)) else tuple(split)
    if len(flags) != n_pairs:
        raise ValueError(f"split needs one flag per pair ({n_pairs}); got {len(flags)}")
    if any(not 0 <= j < n_extra for j in keep_extras):
        raise ValueError(f"keep_extras must index the {n_extra} extra features; got {keep_extras}")
    latents, rows = [], []
    for i, split_pair in enumerate(flags):
        a, b = features_NF[:, 2 * i], features_NF[:, 2 * i + 1]
        v_a, v_b = directions_FD[2 * i], directions_FD[2 * i + 1]
        if split_pair:
            both = v_a + v_b
            norm = float(np.linalg.norm(both))
            latents += [a * (1 - b), b * (1 - a), a * b * norm]
            rows += [v_a, v_b, both / norm]
        else:
            latents += [a, b]
            rows += [v_a, v_b]
    for j in keep_extras:
        latents.append(features_NF[:, 2 * n_pairs + j])
        rows.append(directions_FD[2 * n_pairs + j])
    return np.stack(latents, axis=1), np.stack(rows)


def best_cosines(learned_FD: np.ndarray, true_GD: np.ndarray) -> np.ndarray:
    """For each true direction, the largest cosine similarity with any learned direction.

    The mean of the result is the usual "mean best cosine" measure of feature recovery: 1
    when every true direction appears (up to scale) in the learned dictionary.

    Args:
        learned_FD: learned directions (F x d), e.g. an SAE's decoder rows.
        true_GD: true directions (G x d).

    Returns:
        float64 array of shape (G,), values in [-1, 1].
    """
    learned = np.asarray(learned_FD, dtype=np.float64)
    true = np.asarray(true_GD, dtype=np.float64)
    if learned.ndim != 2 or true.ndim != 2 or learned.shape[1] != true.shape[1]:
        raise ValueError(f"need two matrices with the same number of columns; got {learned.shape}, {true.shape}")
    learned = learned / np.maximum(np.linalg.norm(learned, axis=1, keepdims=True), 1e-12)
    true = true / np.maximum(np.linalg.norm(true, axis=1, keepdims=True), 1e-12)
    return (true @ learned.T).max(axis=1)


def dictionary_sae(W_FD: np.ndarray, k: float, *, seed: int = 0) -> BatchTopKSAE:
    """A :class:`mdl_utils.sae.BatchTopKSAE` whose decoder (and tied encoder) is ``W_FD``.

    Used to start training from an intended dictionary, to test whether it is a stable
    optimum of the training objective. Rows are normalised to unit length; biases start at 0.

    Args:
        W_FD: dictionary rows (F features x d dimensions).
        k: the SAE's mean number of active features per sample in training (>= 1).
        seed: passed to the SAE's constructor (its own initialisation is overwritten).
    """
    import torch

    from mdl_utils.sae import BatchTopKSAE

    W = np.asarray(W_FD, dtype=np.float64)
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    sae = BatchTopKSAE(W.shape[1], W.shape[0], float(k), seed=seed)
    with torch.no_grad():
        rows = torch.as_tensor(W, dtype=torch.float32)
        sae.W_dec_FD.copy_(rows)
        sae.W_enc_FD.copy_(rows)
        sae.b_enc_F.zero_()
        sae.b_dec_D.zero_()
    return sae
