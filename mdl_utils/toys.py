"""Toy models where MDL and L0 disagree: feature splitting and hierarchical codes.

Implements sections 6 and 7 of the paper brief (Ayonrinde, Pearce and Sharkey 2024,
arXiv:2410.11179), first exactly (entropies of boolean features) and then as seeded synthetic
data on which real SAEs can be trained.

All description lengths are in **bits per sample** and count each feature on its own
(independent additivity): a boolean feature that fires with probability q costs the binary
entropy H(q) bits per sample.

Feature splitting (section 6). Two boolean features A and B with directions v_A, v_B:

- the *unsplit* code has features A and B: L0 = p_A + p_B, DL = H(p_A) + H(p_B);
- the *split* code has features A-and-not-B, B-and-not-A and A-and-B (directions v_A, v_B and
  v_A + v_B), of which at most one fires: L0 = p_A + p_B - p_AB,
  DL = H(p_A - p_AB) + H(p_B - p_AB) + H(p_AB).

With p_A = p_B = p and Pearson correlation rho, p_AB = p^2 + rho p (1 - p).
:func:`splitting_boundary` finds the rho at which the two DLs are equal.

Hierarchical codes (section 7). A parent P ("animal") and a child C ("bird") with C => P:

- the *flat* code has features C and P-and-not-C, never both on: L0 = p_P,
  DL = H(p_C) + H(p_P - p_C);
- the *tree* code sends P, and "is it C?" only when P fires:
  L0 = p_P + p_C, DL = H(p_P) + p_P H(p_C / p_P).

The tree code's DL is the entropy of the three outcomes {neither, P only, both}; the flat
code's DL is a sum of two marginal entropies of those outcomes, which is never smaller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeAlias, overload

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq

if TYPE_CHECKING:
    from mdl_utils.sae import BatchTopKSAE

__all__ = [
    "HierarchicalData",
    "HierarchyCodes",
    "Probability",
    "SplitCodes",
    "ToyData",
    "best_cosines",
    "binary_entropy",
    "correlated_pair_data",
    "correlation_range",
    "dictionary_sae",
    "hierarchical_data",
    "hierarchy_dl",
    "joint_probability",
    "pair_codes",
    "splitting_boundary",
    "splitting_dl",
    "splitting_l0",
]

_LN2 = math.log(2.0)

Probability: TypeAlias = npt.ArrayLike
"""A probability or an array of them; functions taking one return the same shape (a float for
a number)."""


# --------------------------------------------------------------------------------------------
# Entropy of a boolean feature
# --------------------------------------------------------------------------------------------


@overload
def binary_entropy(q: float) -> float: ...
@overload
def binary_entropy(q: Probability) -> float | np.ndarray: ...
def binary_entropy(q: Probability) -> float | np.ndarray:
    """H(q) = -q log2 q - (1 - q) log2(1 - q), in bits, with H(0) = H(1) = 0.

    The cost, in bits per sample, of coding on its own a boolean feature that fires with
    probability ``q``. Accepts a number or an array (returns the same shape).

    Raises:
        ValueError: ``q`` outside [0, 1] or not finite.
    """
    q_arr = np.asarray(q, dtype=np.float64)
    if not np.all(np.isfinite(q_arr)) or np.any((q_arr < 0) | (q_arr > 1)):
        raise ValueError(f"probabilities must lie in [0, 1]; got {q!r}")
    inside = (q_arr > 0) & (q_arr < 1)
    safe = np.where(inside, q_arr, 0.5)
    # log1p keeps (1 - q) log2(1 - q) accurate for tiny q.
    h = -(safe * np.log2(safe) + (1.0 - safe) * np.log1p(-safe) / _LN2)
    h = np.where(inside, h, 0.0)
    return float(h) if h.ndim == 0 else h


# --------------------------------------------------------------------------------------------
# Feature splitting (section 6)
# --------------------------------------------------------------------------------------------


class SplitCodes(NamedTuple):
    """One quantity (L0, or DL in bits per sample) for the unsplit and the split code."""

    unsplit: float | np.ndarray
    split: float | np.ndarray


def _check_pair(p_a: Probability, p_b: Probability, p_ab: Probability) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate (p_A, p_B, p_AB) as the probabilities of a joint distribution of two booleans."""
    p_a, p_b, p_ab = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (p_a, p_b, p_ab)))
    for name, value in (("p_a", p_a), ("p_b", p_b), ("p_ab", p_ab)):
        if not np.all(np.isfinite(value)) or np.any((value < 0) | (value > 1)):
            raise ValueError(f"{name} must lie in [0, 1]; got {value.tolist()}")
    # A small slack absorbs rounding in p_ab computed from a correlation.
    tol = 1e-12
    if np.any(p_ab > np.minimum(p_a, p_b) + tol):
        raise ValueError(
            "p_ab (both fire) cannot exceed p_a or p_b; "
            f"got p_a={p_a.tolist()}, p_b={p_b.tolist()}, p_ab={p_ab.tolist()}"
        )
    if np.any(p_a + p_b - p_ab > 1 + tol):
        raise ValueError(
            "p_a + p_b - p_ab (either fires) cannot exceed 1; "
            f"got p_a={p_a.tolist()}, p_b={p_b.tolist()}, p_ab={p_ab.tolist()}"
        )
    return p_a, p_b, p_ab


def _scalar_or_array(value: np.ndarray) -> float | np.ndarray:
    return float(value) if value.ndim == 0 else value


def splitting_l0(p_a: Probability, p_b: Probability, p_ab: Probability) -> SplitCodes:
    """Mean number of active features per sample for the unsplit and the split code.

    Unsplit (A, B): p_A + p_B. Split (A and not B, B and not A, A and B): p_A + p_B - p_AB,
    never more than the unsplit code, which is why L0 always favours splitting.

    Args:
        p_a, p_b: firing probabilities of A and B (numbers or broadcastable arrays).
        p_ab: probability that both fire.

    Raises:
        ValueError: the three numbers are not the probabilities of a joint distribution
            (outside [0, 1], p_ab > min(p_a, p_b), or p_a + p_b - p_ab > 1).
    """
    p_a, p_b, p_ab = _check_pair(p_a, p_b, p_ab)
    return SplitCodes(_scalar_or_array(p_a + p_b), _scalar_or_array(p_a + p_b - p_ab))


def splitting_dl(p_a: Probability, p_b: Probability, p_ab: Probability) -> SplitCodes:
    """Description length, bits per sample, of the unsplit and the split code (section 6).

    Unsplit: H(p_A) + H(p_B). Split: H(p_A - p_AB) + H(p_B - p_AB) + H(p_AB), with H the binary
    entropy; each boolean feature is coded on its own. Same arguments and errors as
    :func:`splitting_l0`.
    """
    p_a, p_b, p_ab = _check_pair(p_a, p_b, p_ab)
    # Clip the rounding slack allowed by _check_pair so the entropies see valid probabilities.
    only_a = np.clip(p_a - p_ab, 0.0, 1.0)
    only_b = np.clip(p_b - p_ab, 0.0, 1.0)
    unsplit = binary_entropy(p_a) + binary_entropy(p_b)
    split = binary_entropy(only_a) + binary_entropy(only_b) + binary_entropy(p_ab)
    return SplitCodes(_scalar_or_array(np.asarray(unsplit)), _scalar_or_array(np.asarray(split)))


def joint_probability(p: Probability, rho: Probability) -> float | np.ndarray:
    """P(A and B) for two booleans that each fire with probability p and have correlation rho.

    p_AB = p^2 + rho p (1 - p): the Pearson correlation of two boolean variables with equal
    rates p is (p_AB - p^2) / (p (1 - p)). Numbers or broadcastable arrays.

    Raises:
        ValueError: p outside (0, 1), or rho outside :func:`correlation_range` (p).
    """
    p_arr, rho_arr = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(rho, dtype=np.float64))
    if not np.all(np.isfinite(p_arr)) or np.any((p_arr <= 0) | (p_arr >= 1)):
        raise ValueError(f"p must lie strictly between 0 and 1; got {p!r}")
    lo, hi = correlation_range(p_arr)
    if not np.all(np.isfinite(rho_arr)) or np.any((rho_arr < lo - 1e-12) | (rho_arr > hi + 1e-12)):
        raise ValueError(
            f"rho={rho!r} is impossible for two booleans with rate p={p!r}: "
            f"it must lie in [{np.min(lo):.6g}, {np.max(hi):.6g}]"
        )
    p_ab = np.clip(p_arr**2 + rho_arr * p_arr * (1 - p_arr), np.maximum(0.0, 2 * p_arr - 1), p_arr)
    return _scalar_or_array(p_ab)


def correlation_range(p: Probability) -> tuple[float | np.ndarray, float | np.ndarray]:
    """The attainable Pearson correlations (rho_min, rho_max) of two booleans with rate p.

    p_AB must lie in [max(0, 2p - 1), p]; rho_max = 1 (the two always fire together) and
    rho_min = (max(0, 2p - 1) - p^2) / (p (1 - p)), which is -p / (1 - p) for p <= 1/2.
    """
    p_arr = np.asarray(p, dtype=np.float64)
    if not np.all(np.isfinite(p_arr)) or np.any((p_arr <= 0) | (p_arr >= 1)):
        raise ValueError(f"p must lie strictly between 0 and 1; got {p!r}")
    lo = (np.maximum(0.0, 2 * p_arr - 1) - p_arr**2) / (p_arr * (1 - p_arr))
    hi = np.ones_like(p_arr)
    return _scalar_or_array(lo), _scalar_or_array(hi)


def splitting_boundary(p: float) -> float:
    """The correlation rho* at which splitting A, B into three features stops costing bits.

    For p_A = p_B = p and p_AB = p^2 + rho p (1 - p), returns the rho* in (rho_min, 1) where
    the split and the unsplit code have equal description length (section 6); for rho > rho*
    the split code is shorter. For small p, rho* ~ (e - 1) p ~ 1.72 p.

    Method: in terms of q = p_AB, the DL difference
    f(q) = 2 H(p - q) + H(q) - 2 H(p) is concave (a sum of concave functions of q), is >= 0 at
    the smallest feasible q (0 at q = 0, where the AND feature never fires, H(2p - 1) > 0 for
    p > 1/2), rises with infinite slope from q = 0, and equals -H(p) < 0 at q = p. So it has
    exactly one crossing strictly inside, which Brent's method finds in q; rho* follows.

    Raises:
        ValueError: p not a finite number strictly between 0 and 1, or (numerically) no sign
            change of the DL difference inside the feasible range.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise ValueError(f"p must be a number; got {p!r}")
    p = float(p)
    if not math.isfinite(p) or not 0.0 < p < 1.0:
        raise ValueError(f"p must lie strictly between 0 and 1 (a firing probability); got {p}")
    q_min = max(0.0, 2.0 * p - 1.0)

    def dl_difference(q: float) -> float:
        return 2.0 * binary_entropy(p - q) + binary_entropy(q) - 2.0 * binary_entropy(p)

    # At q = 0 the difference is exactly 0 (a trivial, meaningless "crossing"); start just
    # inside, far below the small-p root q ~ e p^2, where the infinite slope makes it positive.
    lower = q_min if q_min > 0.0 else 1e-3 * p * p
    upper = p
    f_lower, f_upper = dl_difference(lower), dl_difference(upper)
    if not (f_lower > 0.0 and f_upper < 0.0):
        raise ValueError(
            f"no crossing of the split and unsplit description lengths found for p={p}: "
            f"DL difference {f_lower:.3g} bits at p_AB={lower:.3g}, {f_upper:.3g} bits at p_AB={upper:.3g}"
        )
    q_star = brentq(dl_difference, lower, upper, xtol=1e-14 * p * p, rtol=4 * np.finfo(float).eps, maxiter=500)
    return (q_star - p * p) / (p * (1.0 - p))


# --------------------------------------------------------------------------------------------
# Hierarchical codes (section 7)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HierarchyCodes:
    """Flat and tree codes for a parent feature and one child that implies it (section 7).

    Attributes:
        flat_dl_bits: H(p_child) + H(p_parent - p_child), bits per sample.
        tree_dl_bits: H(p_parent) + p_parent * H(p_child / p_parent), bits per sample.
        flat_l0: p_parent (child and parent-without-child never fire together).
        tree_l0: p_parent + p_child (the parent fires whenever the child does).
    """

    flat_dl_bits: float | np.ndarray
    tree_dl_bits: float | np.ndarray
    flat_l0: float | np.ndarray
    tree_l0: float | np.ndarray


def hierarchy_dl(p_parent: Probability, p_child: Probability) -> HierarchyCodes:
    """Description length and L0 of the flat and the tree code for a parent and its child.

    The child (e.g. "bird") implies the parent (e.g. "animal"), so 0 <= p_child <= p_parent.
    The flat code has features child and parent-without-child; the tree code sends the parent,
    and the child only when the parent fires, so the child costs its entropy conditional on the
    parent, H(p_child / p_parent), on a fraction p_parent of the samples. Numbers or
    broadcastable arrays.

    Raises:
        ValueError: probabilities outside [0, 1], or p_child > p_parent.
    """
    p_parent, p_child = np.broadcast_arrays(
        np.asarray(p_parent, dtype=np.float64), np.asarray(p_child, dtype=np.float64)
    )
    for name, value in (("p_parent", p_parent), ("p_child", p_child)):
        if not np.all(np.isfinite(value)) or np.any((value < 0) | (value > 1)):
            raise ValueError(f"{name} must lie in [0, 1]; got {value.tolist()}")
    if np.any(p_child > p_parent):
        raise ValueError(
            "the child implies the parent, so p_child cannot exceed p_parent; "
            f"got p_parent={p_parent.tolist()}, p_child={p_child.tolist()}"
        )
    flat = binary_entropy(p_child) + binary_entropy(p_parent - p_child)
    ratio = np.divide(p_child, p_parent, out=np.zeros_like(p_child), where=p_parent > 0)
    tree = binary_entropy(p_parent) + p_parent * binary_entropy(np.clip(ratio, 0.0, 1.0))
    return HierarchyCodes(
        flat_dl_bits=_scalar_or_array(np.asarray(flat)),
        tree_dl_bits=_scalar_or_array(np.asarray(tree)),
        flat_l0=_scalar_or_array(p_parent.copy()),
        tree_l0=_scalar_or_array(p_parent + p_child),
    )


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
    probabilities (1 - 2p + p_AB, p - p_AB, p - p_AB, p_AB), p_AB = :func:`joint_probability`.
    Different pairs are independent copies, so an SAE's description length is ``n_pairs``
    times the single-pair value (several pairs let a BatchTopK SAE, whose mean L0 must be at
    least 1, learn the toy). Each ``extra_rates`` entry adds one more boolean feature,
    independent of everything else, firing with that probability (used for the fixed-width
    choice between a new feature and an AND).

    Args:
        n: number of samples.
        p: firing probability of every A and B, in (0, 1).
        rho: correlation within a pair, within :func:`correlation_range` (p).
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
