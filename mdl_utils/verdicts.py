"""The paper's claims (chapter 3) and chapter 7's, as directional tests with fixed thresholds.

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

from mdl_utils.resolution import Bracket, Resolution, judge_optimum

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
    "HARM_SPREAD",
    "RANK_P",
    "INTERVAL",
    "t_interval",
    "optimum_resolved",
    "optimum_moves",
    "shorter_description",
    "unequal_harm",
    "harm_rises_with_width",
    "spearman_p_increasing",
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
#: Chapter 7: "equal MSE is not equal harm" when the MSE-selected SAEs' cross-entropy increases
#: differ between two widths by more than this fraction of the cross-entropy tolerance.
HARM_SPREAD = 0.25
#: Chapter 7: a rank trend counts when its exact one-sided permutation p-value is below this.
RANK_P = 0.05
#: Two-sided coverage of the t intervals over seeds used by chapter 7's rules.
INTERVAL = 0.95


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


def u_shape(resolution: Resolution | None, reachable_widths: Sequence[int]) -> Verdict:
    """DL*(width) is U-shaped: the optimum sits strictly inside, both ends distinguishably above.

    "no" when the optimum is the narrowest or the widest reachable width (the curve is
    monotone there); "not resolved" when the optimum is inside but an end cannot be told apart
    from it.
    """
    claim = "DL against width is U-shaped (minimum strictly inside the widths)"
    rule = (
        "yes: the optimum's tie set excludes the narrowest and the widest reachable width, "
        "both distinguishably longer; no: the optimum is an end width"
    )
    widths = sorted(reachable_widths)
    if resolution is None or len(widths) < 3:
        return Verdict(claim, "not resolved", rule, f"{len(widths)} reachable widths measured")
    opt, tie, margins = resolution.optimum, list(resolution.tie_set), resolution.margins
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
    rule = (
        f"yes when at least {MEMORISED_FRACTION:.0%} of A's feature usage is by features at least "
        "as close to a training digit as the median test digit is to its nearest training digit"
    )
    evidence = (
        f"usage-weighted fraction {frac:.3f} at or above the baseline cosine {base:.3f}; "
        f"mean feature cosine {_weighted_mean(cosine_F, usage_F):.3f}"
    )
    return Verdict(claim, "yes" if frac >= MEMORISED_FRACTION else "no", rule, evidence)


def pca_like(coverage_F: Any, usage_F: Any, pca_coverage: Any) -> Verdict:
    """Narrow SAEs (D) have dense, PCA-like features."""
    claim = "narrow SAEs (D) have dense, PCA-like features"
    cov = _weighted_mean(coverage_F, usage_F)
    ref = float(np.mean(np.asarray(pca_coverage, dtype=np.float64)))
    rule = (
        f"yes when D's usage-weighted pixel coverage is at least {PCA_LIKE_RATIO} times the mean "
        "coverage of the training digits' top 10 principal components"
    )
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
    rule = (
        f"yes when the Spearman correlation of L0 (at each width's DL-optimal k) with width is "
        f"at most {L0_SPEARMAN} and the widest SAE's L0 is below the narrowest's"
    )
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
    rule = (
        f"yes when the narrowest width with more than {DEAD_RISE:.0%} dead features (never firing on "
        "test digits) is within a factor 2 of the optimum's width; no when none has, or it is farther"
    )
    order = np.argsort(widths)
    w, d = np.asarray(widths)[order], np.asarray(dead_fraction, dtype=np.float64)[order]
    over = w[d > DEAD_RISE]
    if over.size == 0:
        return Verdict(claim, "no", rule, f"no width has more than {DEAD_RISE:.0%} dead (max {d.max():.3f})")
    rise = int(over[0])
    near = abs(math.log2(rise / optimum)) <= 1.0
    evidence = f"dead fraction first above {DEAD_RISE:.0%} at width {rise}; optimum at width {optimum}"
    return Verdict(claim, "yes" if near else "no", rule, evidence)


# --------------------------------------------------------------------------------------------
# Chapter 7: the downstream tolerance against the MSE tolerance
# --------------------------------------------------------------------------------------------


def t_interval(values: Sequence[float], coverage: float = INTERVAL) -> tuple[float, float] | None:
    """The two-sided t interval of the mean of ``values`` (None with fewer than two values)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    half = float(t.ppf(0.5 + coverage / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean()) - half, float(v.mean()) + half


def optimum_resolved(name: str, resolution: Resolution | None, bracket: Bracket | None) -> Verdict:
    """The optimum under one tolerance is resolved, by the library's one rule
    (:func:`mdl_utils.resolution.judge_optimum`; ``bracket`` is the study's, ``None`` only
    before any search has finished)."""
    claim = f"the {name} optimum is resolved"
    rule = (
        "yes when every search has finished, the minimum is bracketed (a measured width on each "
        "side, or narrower widths that cannot meet the tolerance, and no width's DL* only an upper "
        "bound from a k search stopped at its cap) and every other width's mean DL* exceeds the "
        "optimum's by more than the combined uncertainty (seeds and test-digit bootstrap)"
    )
    if resolution is None:
        return Verdict(claim, "not resolved", rule, "no finished search yet")
    if bracket is None or bracket.optimum != resolution.optimum:
        raise ValueError(f"the {name} optimum needs the bracket of its own minimum (width {resolution.optimum})")
    verdict = judge_optimum(resolution, bracket)
    evidence = f"optimum width {resolution.optimum}, tie set {list(resolution.tie_set)}; {verdict}"
    return Verdict(claim, "yes" if verdict.resolved else "no", rule, evidence)


def optimum_moves(
    res_ce: Resolution | None,
    res_mse: Resolution | None,
    brackets: tuple[Bracket | None, Bracket | None],
) -> Verdict:
    """The epsilon-MDL-optimal width differs between the two tolerances.

    ``brackets`` are the two studies' (:func:`mdl_utils.resolution.bracket_optimum`): "no"
    needs both minima bracketed, since an optimum at an end of the widths measured may lie
    further out; "yes" needs every DL* measured (no capped width, see
    :class:`mdl_utils.resolution.Bracket`), since a capped width may be shorter than its bound
    says and so be the true optimum.
    """
    claim = "the optimal width moves when the tolerance is the classifier's loss"
    rule = (
        "yes when both studies are finished, no width's DL* is only an upper bound and the two tie "
        "sets share no width; no when both optima are resolved, bracketed and equal; not resolved "
        "otherwise (searches still to run, a capped width, the tie sets overlap, or a minimum is "
        "not bracketed)"
    )
    if res_ce is None or res_mse is None:
        return Verdict(claim, "not resolved", rule, "an arm has no finished search yet")
    ce, mse = set(res_ce.tie_set), set(res_mse.tie_set)
    evidence = f"cross-entropy tie set {sorted(ce)}, MSE tie set {sorted(mse)}"
    if res_ce.provisional or res_mse.provisional:
        # A tie set read before every seed and width is in can only shrink by accident.
        return Verdict(claim, "not resolved", rule, evidence + " (searches still to run)")
    capped = [f"{n} at width(s) {list(b.capped)}" for n, b in zip(("cross-entropy", "MSE"), brackets) if b and b.capped]
    if capped:
        return Verdict(claim, "not resolved", rule, evidence + f" (DL* only an upper bound: {'; '.join(capped)})")
    if not ce & mse:
        return Verdict(claim, "yes", rule, evidence)
    open_arms = [n for n, b in zip(("cross-entropy", "MSE"), brackets) if b is None or not b.bracketed]
    if open_arms:
        return Verdict(claim, "not resolved", rule, evidence + f" (not bracketed: {', '.join(open_arms)})")
    if res_ce.resolved and res_mse.resolved and res_ce.optimum == res_mse.optimum:
        return Verdict(claim, "no", rule, evidence)
    return Verdict(claim, "not resolved", rule, evidence)


def shorter_description(dl_ce: Mapping[int, Mapping[int, float]], dl_mse: Mapping[int, Mapping[int, float]]) -> Verdict:
    """At equal typical strictness, the downstream tolerance gives a shorter description.

    ``dl_ce[width][seed]`` and ``dl_mse[width][seed]`` are DL* per width and seed. At each
    width measured under both with at least two common seeds, the paired difference (same
    seed) gets a t interval (:data:`INTERVAL`): shorter when it lies below zero, longer when
    above, unresolved otherwise.
    """
    claim = "at equal typical strictness, the cross-entropy tolerance gives a shorter description at every width"
    rule = (
        f"per width, the {INTERVAL:.0%} t interval of DL*(CE) - DL*(MSE) over paired seeds; yes when it lies "
        "below zero at every width; no when it lies above zero at some width; not resolved otherwise"
    )
    shorter, longer, unresolved = [], [], []
    for w in sorted(set(dl_ce) & set(dl_mse)):
        seeds = sorted(set(dl_ce[w]) & set(dl_mse[w]))
        ci = t_interval([dl_ce[w][s] - dl_mse[w][s] for s in seeds])
        if ci is None:
            unresolved.append(w)
        elif ci[1] < 0:
            shorter.append(w)
        elif ci[0] > 0:
            longer.append(w)
        else:
            unresolved.append(w)
    evidence = f"shorter at widths {shorter}, longer at {longer}, not resolved at {unresolved}"
    if longer:
        return Verdict(claim, "no", rule, evidence)
    if shorter and not unresolved:
        return Verdict(claim, "yes", rule, evidence)
    return Verdict(claim, "not resolved", rule, evidence)


def unequal_harm(harm: Mapping[int, Mapping[int, float]], epsilon_ce: float) -> Verdict:
    """Equal MSE is not equal harm: SAEs selected under the MSE tolerance differ in the
    cross-entropy increase they cause by more than :data:`HARM_SPREAD` of ``epsilon_ce``.

    ``harm[width][seed]`` is the cross-entropy increase of the MSE-selected SAE (at its
    precision). The widths with the largest and smallest mean harm are compared; the
    difference's t interval (Welch standard error, the smaller sample's degrees of freedom)
    decides.
    """
    from scipy.stats import t

    claim = "equal MSE is not equal harm (MSE-selected SAEs differ in the classifier's loss)"
    bar = HARM_SPREAD * epsilon_ce
    rule = (
        f"yes when the {INTERVAL:.0%} interval of the difference between the most and the least harmful "
        f"width's mean cross-entropy increase lies above {HARM_SPREAD} epsilon_CE = {bar:.4g} nats; no when "
        "it lies below; not resolved otherwise or with fewer than two seeds at either width"
    )
    means = {w: float(np.mean(list(v.values()))) for w, v in harm.items() if v}
    if len(means) < 2:
        return Verdict(claim, "not resolved", rule, f"{len(means)} widths measured")
    hi, lo = max(means, key=means.get), min(means, key=means.get)  # type: ignore[arg-type]
    diff = means[hi] - means[lo]
    a, b = list(harm[hi].values()), list(harm[lo].values())
    evidence = f"width {hi}: {means[hi]:.4f} nats, width {lo}: {means[lo]:.4f} nats (difference {diff:.4f})"
    if min(len(a), len(b)) < 2:
        return Verdict(claim, "not resolved", rule, evidence + "; one seed")
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    half = float(t.ppf(0.5 + INTERVAL / 2, min(len(a), len(b)) - 1)) * se
    evidence += f" +/- {half:.4f}"
    if diff - half > bar:
        return Verdict(claim, "yes", rule, evidence)
    if diff + half < bar:
        return Verdict(claim, "no", rule, evidence)
    return Verdict(claim, "not resolved", rule, evidence)


def spearman_p_increasing(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho of ``y`` against ``x`` and its exact one-sided p-value for an increasing
    trend: the share of the ``n!`` orderings of ``y`` whose rho is at least the observed one
    (n at most 8; beyond that 20,000 random orderings with a fixed seed)."""
    import itertools

    if len(x) != len(y) or len(x) < 3:
        raise ValueError("need two sequences of the same length, at least 3")
    rho = spearman(x, y)
    y = list(y)
    if len(y) <= 8:
        perms = itertools.permutations(y)
        values = [spearman(x, list(p)) for p in perms]
    else:
        rng = np.random.default_rng(0)
        values = [spearman(x, list(rng.permutation(y))) for _ in range(20_000)]
    p = float(np.mean(np.asarray(values) >= rho - 1e-12))
    return rho, p


def harm_rises_with_width(widths: Sequence[int], harm: Sequence[float]) -> Verdict:
    """At equal MSE, wider SAEs harm the classifier more."""
    claim = "at equal MSE, wider SAEs harm the classifier more"
    rule = (
        f"yes when the Spearman correlation of the mean cross-entropy increase with width is positive with an "
        f"exact one-sided permutation p-value below {RANK_P}; no when it is zero or negative; not resolved "
        "otherwise"
    )
    if len(widths) < 3:
        return Verdict(claim, "not resolved", rule, f"{len(widths)} widths")
    rho, p = spearman_p_increasing([float(w) for w in widths], harm)
    evidence = f"Spearman {rho:.2f} over {len(widths)} widths, one-sided p = {p:.3f}"
    if rho <= 0:
        return Verdict(claim, "no", rule, evidence)
    return Verdict(claim, "yes" if p < RANK_P else "not resolved", rule, evidence)
