"""The paper's claims about the MNIST sweep as directional tests with fixed thresholds.

Each function takes measurements and returns a :class:`Verdict`: ``"yes"``, ``"no"`` or
``"not resolved"``, the rule (threshold and baseline, fixed here before any data are read),
and the evidence in numbers. The thresholds are constants of this module, so a reader can
check that no rule was tuned to the data it judges; ``tests/test_verdicts.py`` gives every
rule data on which it must answer "no".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "Verdict",
    "MEMORISED_FRACTION",
    "PCA_LIKE_RATIO",
    "FRAGMENT_RATIO",
    "L0_SPEARMAN",
    "DEAD_RISE",
    "u_shape",
    "memorised_digits",
    "pca_like",
    "fragments",
    "l0_falls_with_width",
    "dead_rise_near_turn",
    "spearman",
]

#: A's features are "memorised digits" when at least this usage-weighted fraction of them is as
#: close to some training digit as a typical (median) test digit is to its nearest one.
MEMORISED_FRACTION = 0.5
#: D's features are "dense, PCA-like" when their usage-weighted pixel coverage is at least this
#: fraction of the mean coverage of the training digits' top 10 principal components.
PCA_LIKE_RATIO = 0.8
#: C's features are "fragments" when their usage-weighted pixel coverage is below this fraction
#: of B's (smaller parts than the optimum's strokes).
FRAGMENT_RATIO = 0.9
#: "L0 falls with width" needs a Spearman rank correlation of L0 with width at or below this.
L0_SPEARMAN = -0.8
#: A width's dictionary "has dead features" when more than this fraction never fires on test data.
DEAD_RISE = 0.05


@dataclass(frozen=True)
class Verdict:
    """One claim judged: the answer, the rule it was judged by, and the numbers."""

    claim: str
    answer: str
    rule: str
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weighted_mean(values: Any, weights: Any) -> float:
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape or v.size == 0:
        raise ValueError(f"values and weights must be non-empty and of one shape, got {v.shape} and {w.shape}")
    if w.sum() <= 0:
        raise ValueError("weights must have a positive sum")
    return float(np.sum(v * w) / np.sum(w))


def u_shape(resolution: Mapping[str, Any] | None, reachable_widths: Sequence[int]) -> Verdict:
    """DL*(width) is U-shaped: the optimum sits strictly inside, both ends distinguishably above.

    ``resolution`` is the dict form of a :class:`mdl_utils.protocol.Resolution` (its
    ``to_dict()``). "no" when the
    optimum is the narrowest or the widest reachable width (the curve is monotone there);
    "not resolved" when the optimum is inside but an end cannot be told apart from it.
    """
    claim = "DL against width is U-shaped (minimum strictly inside the widths)"
    rule = ("yes: the optimum's tie set excludes the narrowest and the widest reachable width, "
            "both distinguishably longer; no: the optimum is an end width")
    widths = sorted(reachable_widths)
    if resolution is None or len(widths) < 3:
        return Verdict(claim, "not resolved", rule, f"{len(widths)} reachable widths measured")
    opt, tie = int(resolution["optimum"]), [int(w) for w in resolution["tie_set"]]
    margins = {int(w): v for w, v in resolution["margins"].items()}
    evidence = f"optimum width {opt}, tie set {tie}, reachable widths {widths[0]}..{widths[-1]}"
    if opt in (widths[0], widths[-1]):
        return Verdict(claim, "no", rule, evidence)
    ends_apart = all(w in margins and margins[w][0] > margins[w][1] for w in (widths[0], widths[-1]))
    if ends_apart and widths[0] not in tie and widths[-1] not in tie:
        return Verdict(claim, "yes", rule, evidence)
    return Verdict(claim, "not resolved", rule, evidence)


def memorised_digits(cosine_F: Any, usage_F: Any, baseline_N: Any) -> Verdict:
    """Very wide SAEs (A) memorise whole digits.

    Args:
        cosine_F: each live feature's largest cosine with any training digit.
        usage_F: each feature's firing rate on the test digits (the weights).
        baseline_N: each of some test digits' largest cosine with any training digit (how
            close a real, unseen digit gets to the training set).
    """
    claim = "very wide SAEs (A) memorise whole digits"
    base = float(np.median(np.asarray(baseline_N, dtype=np.float64)))
    close = (np.asarray(cosine_F, dtype=np.float64) >= base).astype(np.float64)
    frac = _weighted_mean(close, usage_F)
    rule = (f"yes when at least {MEMORISED_FRACTION:.0%} of A's feature usage is by features at least "
            "as close to a training digit as the median test digit is to its nearest training digit")
    evidence = (f"usage-weighted fraction {frac:.3f} at or above the baseline cosine {base:.3f}; "
                f"mean feature cosine {_weighted_mean(cosine_F, usage_F):.3f}")
    return Verdict(claim, "yes" if frac >= MEMORISED_FRACTION else "no", rule, evidence)


def pca_like(coverage_F: Any, usage_F: Any, pca_coverage: Any) -> Verdict:
    """Narrow SAEs (D) have dense, PCA-like features."""
    claim = "narrow SAEs (D) have dense, PCA-like features"
    cov = _weighted_mean(coverage_F, usage_F)
    ref = float(np.mean(np.asarray(pca_coverage, dtype=np.float64)))
    rule = (f"yes when D's usage-weighted pixel coverage is at least {PCA_LIKE_RATIO} times the mean "
            "coverage of the training digits' top 10 principal components")
    evidence = f"D coverage {cov:.3f}; principal components {ref:.3f} (threshold {PCA_LIKE_RATIO * ref:.3f})"
    return Verdict(claim, "yes" if cov >= PCA_LIKE_RATIO * ref else "no", rule, evidence)


def fragments(coverage_C: float, coverage_B: float) -> Verdict:
    """Features of a narrow, high-L0 SAE (C) are fragments, smaller than the optimum's (B)."""
    claim = "narrow, high-L0 SAEs (C) have small fragments, smaller than the optimum's strokes (B)"
    rule = f"yes when C's usage-weighted pixel coverage is below {FRAGMENT_RATIO} times B's"
    evidence = f"coverage C {coverage_C:.3f}, B {coverage_B:.3f}"
    return Verdict(claim, "yes" if coverage_C < FRAGMENT_RATIO * coverage_B else "no", rule, evidence)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties)."""
    from scipy.stats import spearmanr

    if len(a) != len(b) or len(a) < 2:
        raise ValueError("need two sequences of the same length, at least 2")
    value = float(spearmanr(a, b).statistic)
    return value if math.isfinite(value) else 0.0


def l0_falls_with_width(widths: Sequence[int], l0: Sequence[float]) -> Verdict:
    """At equal loss, wider SAEs use fewer active features."""
    claim = "at equal loss, L0 falls as the width grows"
    rule = (f"yes when the Spearman correlation of L0 (at each width's DL-optimal k) with width is "
            f"at most {L0_SPEARMAN} and the widest SAE's L0 is below the narrowest's")
    if len(widths) < 3:
        return Verdict(claim, "not resolved", rule, f"{len(widths)} widths")
    order = np.argsort(widths)
    w, v = np.asarray(widths)[order], np.asarray(l0, dtype=np.float64)[order]
    rho = spearman(list(w), list(v))
    evidence = f"Spearman {rho:.2f}; L0 {v[0]:.2f} at width {w[0]}, {v[-1]:.2f} at width {w[-1]}"
    return Verdict(claim, "yes" if rho <= L0_SPEARMAN and v[-1] < v[0] else "no", rule, evidence)


def dead_rise_near_turn(widths: Sequence[int], dead_fraction: Sequence[float], optimum: int) -> Verdict:
    """The width where dead features start to rise is close to where DL turns up."""
    claim = "dead features start to rise near the width where DL turns up"
    rule = (f"yes when the narrowest width with more than {DEAD_RISE:.0%} dead features (never firing on "
            "test digits) is within a factor 2 of the optimum's width; no when none has, or it is farther")
    order = np.argsort(widths)
    w, d = np.asarray(widths)[order], np.asarray(dead_fraction, dtype=np.float64)[order]
    over = w[d > DEAD_RISE]
    if over.size == 0:
        return Verdict(claim, "no", rule, f"no width has more than {DEAD_RISE:.0%} dead (max {d.max():.3f})")
    rise = int(over[0])
    near = abs(math.log2(rise / optimum)) <= 1.0
    evidence = f"dead fraction first above {DEAD_RISE:.0%} at width {rise}; optimum at width {optimum}"
    return Verdict(claim, "yes" if near else "no", rule, evidence)
