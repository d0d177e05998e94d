"""Toy models where MDL and L0 disagree: feature splitting and hierarchical codes.

Implements sections 6 and 7 of the paper brief (Ayonrinde, Pearce and Sharkey 2024,
arXiv:2410.11179) exactly, from the entropies of boolean features. The same models as seeded
synthetic data, on which real SAEs are trained, are in :mod:`mdl_utils.toy_data`.

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
from typing import NamedTuple, TypeAlias, overload

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq

__all__ = [
    "HierarchyCodes",
    "Probability",
    "SplitCodes",
    "binary_entropy",
    "correlation_range",
    "hierarchy_dl",
    "joint_probability",
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
