"""Power laws in the tolerance, fitted per seed, with intervals and a verdict that can fail.

Chapter 6 (:mod:`mdl_utils.epsilon_scan`) asks whether the optimal width, its L0 and its DL
follow ``y = c * eps**alpha``. :func:`fit_scan` fits the law to each seed's own optima and
puts a t interval over the seeds' exponents; a law is *supported* only when that interval
excludes zero and the optimum is resolved (and not at the grid's edge, and no width's DL* only
an upper bound from a capped k search) at every tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["ExponentInterval", "PowerLawFit", "fit_power_law", "fit_scan"]


@dataclass(frozen=True)
class ExponentInterval:
    """The exponent alpha of ``y = c * eps**alpha`` with a 95% interval, and the verdict.

    Attributes:
        quantity: ``"width"``, ``"l0"`` or ``"dl_bits"`` (of the optimum).
        exponents: the exponent fitted to each seed's own optima (seed -> alpha).
        mean: their mean (with one seed: that seed's exponent).
        low, high: the 95% interval: a t interval over the seeds' exponents with two or
            more seeds; with one seed, the least-squares standard error of its fit (t with
            n - 2 degrees of freedom); None when neither exists.
        method: ``"seeds"`` or ``"one seed, least-squares error"``.
        n_epsilons: tolerances used per seed (those where the seed has an optimum).
        excludes_zero: the interval lies wholly on one side of zero.
        supported: ``excludes_zero`` and every tolerance used is complete, resolved, not
            at the edge of the width grid, and has no width whose DL* is only an upper bound.
        reasons: why not supported (empty when supported).
    """

    quantity: str
    exponents: dict[str, float]
    mean: float | None
    low: float | None
    high: float | None
    method: str
    n_epsilons: int
    excludes_zero: bool
    supported: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExponentInterval:
        """Read the form ``to_dict()`` writes (as ``scan.json`` holds it)."""
        return cls(
            quantity=str(d["quantity"]),
            exponents={str(s): float(a) for s, a in d["exponents"].items()},
            mean=d["mean"],
            low=d["low"],
            high=d["high"],
            method=str(d["method"]),
            n_epsilons=int(d["n_epsilons"]),
            excludes_zero=bool(d["excludes_zero"]),
            supported=bool(d["supported"]),
            reasons=tuple(d["reasons"]),
        )


def _fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Least-squares exponent of ``y = c * x**alpha``: (alpha, its standard error, n)."""

    fit = fit_power_law(x, y)
    return fit.exponent, fit.exponent_stderr, fit.n_points


@dataclass(frozen=True)
class PowerLawFit:
    """y = prefactor * x**exponent, fitted by least squares on log y against log x.

    Attributes:
        exponent: the power alpha.
        prefactor: c.
        exponent_stderr: standard error of alpha (NaN with fewer than 3 points).
        r_squared: R^2 of the log-log fit (NaN when log y does not vary).
        n_points: points used.
    """

    exponent: float
    prefactor: float
    exponent_stderr: float
    r_squared: float
    n_points: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLawFit:
    """Fit y = c * x**alpha: ordinary least squares of log y on log x.

    Raises:
        ValueError: fewer than 2 points, non-positive values, or x all equal.
    """
    x_a, y_a = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x_a.shape != y_a.shape or x_a.ndim != 1 or x_a.size < 2:
        raise ValueError("need at least 2 (x, y) pairs of the same length")
    if np.any(x_a <= 0) or np.any(y_a <= 0) or not np.all(np.isfinite(x_a * y_a)):
        raise ValueError("a power law needs finite, positive x and y")
    lx, ly = np.log(x_a), np.log(y_a)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    if sxx == 0:
        raise ValueError("x must take at least two different values")
    alpha = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
    intercept = float(ly.mean() - alpha * lx.mean())
    resid = ly - (intercept + alpha * lx)
    sst = float(np.sum((ly - ly.mean()) ** 2))
    sse = float(np.sum(resid**2))
    r2 = 1.0 - sse / sst if np.ptp(ly) > 0 else math.nan
    n = x_a.size
    stderr = math.sqrt(sse / (n - 2) / sxx) if n > 2 else math.nan
    return PowerLawFit(alpha, math.exp(intercept), stderr, r2, n)


def fit_scan(entries: Sequence[dict[str, Any]], *, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Fit the optimal width, L0 and DL against epsilon, per seed, with intervals and verdicts.

    ``entries`` are :func:`mdl_utils.epsilon_scan.scan_entry` results. For each seed, its own optimum at every
    tolerance where it has one gives the points; a seed needs at least two tolerances (three
    for a standard error). See :class:`ExponentInterval` for the interval and the verdict.
    """
    reasons: list[str] = []
    for e in entries:
        tag = f"eps={e['epsilon']:g}"
        if not e["complete"]:
            reasons.append(f"{tag}: study not finished ({e['n_remaining']} searches left)")
        if e["resolution"] is None:
            reasons.append(f"{tag}: no optimum yet")
            continue
        if not e["resolution"]["resolved"]:
            if e["resolution"].get("provisional") and len(e["resolution"]["tie_set"]) == 1:
                reasons.append(f"{tag}: optimum provisional until the study is finished")
            else:
                reasons.append(f"{tag}: optimum not resolved (tie set {list(e['resolution']['tie_set'])})")
        if e["at_edge"]:
            reasons.append(f"{tag}: optimum at the edge of the width grid")
        if e.get("widths_capped"):
            reasons.append(
                f"{tag}: DL* only an upper bound at width(s) {list(e['widths_capped'])} "
                "(k search used up its trainings with DL still falling)"
            )
    seeds = sorted({s for e in entries for s in e["seed_optima"]}, key=int)
    out: dict[str, dict[str, Any]] = {}
    for quantity in ("width", "l0", "dl_bits"):
        exponents: dict[str, float] = {}
        one_seed_se: tuple[float, float, int] | None = None
        n_eps = 0
        for seed in seeds:
            pts = [(e["epsilon"], e["seed_optima"][seed][quantity]) for e in entries if seed in e["seed_optima"]]
            if len(pts) < 2:
                continue
            try:
                alpha, se, n = _fit([p[0] for p in pts], [p[1] for p in pts])
            except ValueError:
                continue
            exponents[seed] = alpha
            n_eps = max(n_eps, n)
            if one_seed_se is None:
                one_seed_se = (alpha, se, n)
        low = high = mean = None
        method = "seeds"
        if len(exponents) >= 2:
            vals = np.array(list(exponents.values()))
            mean = float(vals.mean())
            half = float(stats.t.ppf(0.5 + level / 2, len(vals) - 1) * vals.std(ddof=1) / math.sqrt(len(vals)))
            low, high = mean - half, mean + half
        elif len(exponents) == 1 and one_seed_se is not None:
            method = "one seed, least-squares error"
            alpha, se, n = one_seed_se
            mean = alpha
            if n > 2 and math.isfinite(se):
                half = float(stats.t.ppf(0.5 + level / 2, n - 2) * se)
                low, high = alpha - half, alpha + half
        excludes = low is not None and high is not None and (low > 0 or high < 0)
        why = list(reasons)
        if low is None:
            why.append("no interval (too few seeds or tolerances)")
        elif not excludes:
            why.append(f"the interval [{low:.3g}, {high:.3g}] includes zero")
        out[quantity] = ExponentInterval(
            quantity=quantity,
            exponents=exponents,
            mean=mean,
            low=low,
            high=high,
            method=method,
            n_epsilons=n_eps,
            excludes_zero=excludes,
            supported=excludes and not reasons and bool(entries),
            reasons=tuple(why),
        ).to_dict()
    return out
