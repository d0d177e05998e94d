"""Across widths: which epsilon-MDL optimum the data can tell apart from the rest.

DL*(width) varies with the training seed and with the test digits it is measured on
(:func:`mdl_utils.protocol.bootstrap_dl`). :func:`resolve_optimum` calls the width with the
smallest mean DL* *resolved* only when every other width's DL* is higher by more than the
combined uncertainty of the difference; otherwise it reports the set of widths that cannot be
told apart. :func:`optimum_index` is the selection rule itself (smallest DL, ties to the
narrower width), written once for the whole library. :func:`bracket_optimum` says whether the
smallest DL* is a minimum the grid can show at all: a measured width on each side of it, and
every width's DL* a minimum over k rather than the last k a capped search reached.
:func:`judge_optimum` combines the two into the one verdict every chapter prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "WidthSummary",
    "Resolution",
    "Bracket",
    "OptimumVerdict",
    "optimum_index",
    "resolve_optimum",
    "bracket_optimum",
    "judge_optimum",
]


@dataclass(frozen=True)
class WidthSummary:
    """DL*(width) over seeds: each seed's minimum over k, and their bootstrap replicates.

    Attributes:
        width: the SAE width.
        dl_by_seed: each seed's DL*, the minimum over k (seed -> bits per sample).
        boot_by_seed: the bootstrap replicates of each seed's DL* SAE (seed -> array).
    """

    width: int
    dl_by_seed: dict[int, float]
    boot_by_seed: dict[int, list[float]]

    @property
    def n_seeds(self) -> int:
        return len(self.dl_by_seed)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.dl_by_seed.values())))

    @property
    def seed_std(self) -> float | None:
        """Sample standard deviation over seeds (None with fewer than 2 seeds)."""
        if self.n_seeds < 2:
            return None
        return float(np.std(list(self.dl_by_seed.values()), ddof=1))

    def boot_mean(self) -> np.ndarray | None:
        """The seed-mean DL* on each bootstrap replicate (None without replicates)."""
        arrays = [np.asarray(v) for v in self.boot_by_seed.values() if len(v)]
        if len(arrays) != self.n_seeds or not arrays:
            return None
        return np.mean(arrays, axis=0)


@dataclass(frozen=True)
class Resolution:
    """Which width is the epsilon-MDL optimum, and whether the data can say so.

    Attributes:
        optimum: the width with the smallest mean DL*.
        resolved: every other width's mean DL* exceeds the optimum's by more than
            ``z`` combined standard errors of the difference.
        tie_set: the widths not distinguishable from the optimum (the optimum included).
        margins: for each other width, (difference of mean DL*, its combined uncertainty
            ``z * se``), bits per sample.
        pooled_rel_seed_std: the relative seed spread used for widths with one seed.
        z: the multiplier (2: about 95% for a normal difference).
        seed_spread_known: False when some width has one seed and no width has two, so the
            training noise is unknown; the margins then hold the test-digit noise alone and
            the optimum is never called resolved.
        provisional: searches that can still change the optimum remain (a study's summary
            sets it; :func:`resolve_optimum` leaves it False); a provisional optimum is
            never resolved.
    """

    optimum: int
    resolved: bool
    tie_set: tuple[int, ...]
    margins: dict[int, tuple[float, float]]
    pooled_rel_seed_std: float | None
    z: float
    seed_spread_known: bool = True
    provisional: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict form (margins keyed by the width as text), as summaries store it."""
        out = asdict(self)
        out["margins"] = {str(w): list(v) for w, v in self.margins.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resolution:
        """Read the form :meth:`Resolution.to_dict` writes."""
        return cls(
            optimum=int(d["optimum"]),
            resolved=bool(d["resolved"]),
            tie_set=tuple(int(w) for w in d["tie_set"]),
            margins={int(w): (float(v[0]), float(v[1])) for w, v in d["margins"].items()},
            pooled_rel_seed_std=d["pooled_rel_seed_std"],
            z=float(d["z"]),
            seed_spread_known=bool(d.get("seed_spread_known", True)),
            provisional=bool(d.get("provisional", False)),
        )


def optimum_index(dl_bits: Sequence[float | None], widths: Sequence[int]) -> int | None:
    """The epsilon-MDL rule, written once: the index of the smallest DL, ties to the narrower
    width, among the entries that have a DL (None: the SAE misses the tolerance).

    Returns None when no entry has a DL. Every selection in the library goes through it.
    """
    if len(dl_bits) != len(widths):
        raise ValueError(f"dl_bits and widths differ in length ({len(dl_bits)} and {len(widths)})")
    have = [i for i, v in enumerate(dl_bits) if v is not None]
    return min(have, key=lambda i: (dl_bits[i], widths[i])) if have else None


def resolve_optimum(summaries: Sequence[WidthSummary], *, z: float = 2.0) -> Resolution:
    """Decide whether the width with the smallest mean DL* is distinguishable from the rest.

    For widths a (the optimum) and b, the difference of mean DL* has two sources of
    uncertainty, added in quadrature: training seeds (``s_a**2 / n_a + s_b**2 / n_b``, with
    each width's sample standard deviation over seeds; a width with one seed borrows the
    pooled *relative* spread of the widths with several) and the test digits (the variance
    of the difference over paired bootstrap replicates, when both have them). Width b is
    distinguishable when the difference exceeds ``z`` times the combined standard error.

    The optimum is never called resolved when it is the only width, or when the training
    noise is unknown (see :attr:`Resolution.seed_spread_known`).

    Raises:
        ValueError: no summaries, or a summary without seeds.
    """
    if not summaries:
        raise ValueError("no widths to compare")
    for s in summaries:
        if s.n_seeds == 0:
            raise ValueError(f"width {s.width} has no measured seed")
    rel = [s.seed_std / s.mean for s in summaries if s.seed_std is not None and s.mean > 0]
    pooled = float(np.sqrt(np.mean(np.square(rel)))) if rel else None
    best_at = optimum_index([s.mean for s in summaries], [s.width for s in summaries])
    assert best_at is not None  # every summary has a mean
    best = summaries[best_at]

    def seed_var(s: WidthSummary) -> float:
        std = s.seed_std
        if std is None:
            std = (pooled or 0.0) * s.mean
        return std**2 / s.n_seeds

    best_boot = best.boot_mean()
    margins: dict[int, tuple[float, float]] = {}
    tie = [best.width]
    for s in summaries:
        if s.width == best.width:
            continue
        diff = s.mean - best.mean
        var = seed_var(s) + seed_var(best)
        other_boot = s.boot_mean()
        if best_boot is not None and other_boot is not None and len(other_boot) == len(best_boot):
            var += float(np.var(other_boot - best_boot, ddof=1))
        unc = z * math.sqrt(var)
        margins[s.width] = (diff, unc)
        if diff <= unc:
            tie.append(s.width)
    known = pooled is not None or all(s.seed_std is not None for s in summaries)
    return Resolution(
        optimum=best.width,
        resolved=len(tie) == 1 and len(summaries) > 1 and known,
        tie_set=tuple(sorted(tie)),
        margins=margins,
        pooled_rel_seed_std=pooled,
        z=z,
        seed_spread_known=known,
    )


@dataclass(frozen=True)
class Bracket:
    """Whether the smallest DL* has evidence on both sides that it is a minimum.

    A smallest DL* at an end of the widths measured may only be where the grid stopped: the
    curve can go on falling past it. The minimum is *bracketed* on the wide side by a wider
    width with a DL*, and on the narrow side by a narrower width with a DL* or by narrower
    widths that cannot meet the tolerance at all (a finished search that missed it at every
    k, or a width the rank bound rules out), since then nothing narrower can be shorter.

    Each DL* must itself be a minimum over k. A k search that stopped at its cap on trainings
    while DL was still falling (its selected k not bracketed) gives only an upper bound on that
    width's DL*: at the optimum the number is not measured, and at any other width the true DL*
    may lie below the optimum's. Such *capped* widths leave the minimum unbracketed, wherever
    they are.

    Attributes:
        optimum: the width with the smallest mean DL*.
        wider, narrower: the nearest widths with a DL* on each side (``None``: none).
        narrower_infeasible: narrower widths that cannot meet the tolerance, narrow to wide.
        grid_widest: the widest width of the grid fixed before the run.
        capped: widths whose DL* is only an upper bound (some seed's k search ended before its
            minimum over k was bracketed), narrow to wide.
    """

    optimum: int
    wider: int | None
    narrower: int | None
    narrower_infeasible: tuple[int, ...]
    grid_widest: int
    capped: tuple[int, ...] = ()

    @property
    def wide_closed(self) -> bool:
        """A wider width has a DL* (longer than the optimum's, since it is the minimum)."""
        return self.wider is not None

    @property
    def narrow_closed(self) -> bool:
        """A narrower width has a DL*, or narrower widths cannot meet the tolerance."""
        return self.narrower is not None or bool(self.narrower_infeasible)

    @property
    def bracketed(self) -> bool:
        """Both sides are closed and no width's DL* is only an upper bound."""
        return self.wide_closed and self.narrow_closed and not self.capped

    @property
    def at_infeasible_edge(self) -> bool:
        """The optimum is the narrowest width that meets the tolerance: its narrow side is
        closed by widths that cannot meet it, not by a longer DL*."""
        return self.narrower is None and bool(self.narrower_infeasible)

    def open_sides(self) -> list[str]:
        """Why the minimum is not bracketed, one phrase per open side and one for the capped
        widths (empty when it is bracketed)."""
        out = []
        if not self.wide_closed:
            if self.optimum >= self.grid_widest:
                out.append(f"it is the grid's widest width ({self.grid_widest}) and nothing wider is searched")
            else:
                out.append("no wider width has a DL*")
        if not self.narrow_closed:
            out.append("nothing narrower was searched")
        if self.capped:
            widths = ", ".join(str(w) for w in self.capped)
            one = len(self.capped) == 1
            out.append(
                f"the k search{'' if one else 'es'} at width{'' if one else 's'} {widths} reached the cap on "
                f"trainings per search while DL was still falling, so {'its' if one else 'their'} DL* "
                f"{'is' if one else 'are'} only an upper bound"
            )
        return out


def bracket_optimum(
    optimum: int,
    reachable: Sequence[int],
    grid: Sequence[int],
    infeasible: Sequence[int] = (),
    capped: Sequence[int] = (),
) -> Bracket:
    """Whether ``optimum`` is bracketed (see :class:`Bracket`).

    Args:
        optimum: the width with the smallest mean DL*.
        reachable: every width with a DL* (the optimum among them).
        grid: the widths fixed before the run (its widest bounds the search).
        infeasible: widths known not to meet the tolerance (missed at every k, or ruled out
            by a bound); only the narrower ones count.
        capped: widths with a DL* that is only an upper bound (a k search stopped before its
            minimum over k was bracketed); any one leaves the minimum unbracketed.

    Raises:
        ValueError: ``optimum`` is not among ``reachable``, ``grid`` is empty, a width is
            both reachable and infeasible, or a capped width has no DL*.
    """
    reach = sorted({int(w) for w in reachable})
    if optimum not in reach:
        raise ValueError(f"the optimum {optimum} is not among the widths with a DL* {reach}")
    if not grid:
        raise ValueError("the grid has no widths")
    both = sorted(set(reach) & {int(w) for w in infeasible})
    if both:
        raise ValueError(f"widths {both} are given both as having a DL* and as unable to meet the tolerance")
    stray = sorted({int(w) for w in capped} - set(reach))
    if stray:
        raise ValueError(f"widths {stray} are given as capped but have no DL* (widths with one: {reach})")
    wider = [w for w in reach if w > optimum]
    narrower = [w for w in reach if w < optimum]
    return Bracket(
        optimum=optimum,
        wider=wider[0] if wider else None,
        narrower=narrower[-1] if narrower else None,
        narrower_infeasible=tuple(sorted({int(w) for w in infeasible if w < optimum})),
        grid_widest=max(int(w) for w in grid),
        capped=tuple(sorted({int(w) for w in capped})),
    )


@dataclass(frozen=True)
class OptimumVerdict:
    """What the data say about the epsilon-MDL optimum, as every chapter prints it.

    Attributes:
        optimum: the width with the smallest mean DL*.
        status: ``"resolved"``, ``"not resolved"`` or ``"provisional"`` (searches that can
            change the optimum remain).
        reason: why, as a phrase (the first that applies, see :func:`judge_optimum`).
    """

    optimum: int
    status: Literal["resolved", "not resolved", "provisional"]
    reason: str

    @property
    def resolved(self) -> bool:
        return self.status == "resolved"

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


def judge_optimum(resolution: Resolution, bracket: Bracket) -> OptimumVerdict:
    """The one rule that calls an epsilon-MDL optimum resolved.

    In order, the first that applies: *provisional* while searches that can change it remain;
    *not resolved* when the minimum is not bracketed (an open side in width, or a width whose
    DL* is only an upper bound, see :class:`Bracket`); *resolved* when every other width's
    mean DL* is longer by more than the combined uncertainty (:func:`resolve_optimum`); *not
    resolved* when no width has two seeds (the training noise is unknown) or when other widths
    cannot be told apart from it.

    Raises:
        ValueError: ``bracket`` is of another width than ``resolution``'s optimum.
    """
    if bracket.optimum != resolution.optimum:
        raise ValueError(
            f"the bracket is of width {bracket.optimum}, the resolution's optimum is width {resolution.optimum}"
        )
    opt = resolution.optimum
    if resolution.provisional:
        return OptimumVerdict(opt, "provisional", "searches that can change it remain")
    if not bracket.bracketed:
        return OptimumVerdict(
            opt, "not resolved", "the minimum is not bracketed, since " + " and ".join(bracket.open_sides())
        )
    if resolution.resolved:
        return OptimumVerdict(opt, "resolved", "every other width is longer by more than the combined uncertainty")
    if not resolution.seed_spread_known:
        return OptimumVerdict(opt, "not resolved", "one seed per width, so the training noise is unknown")
    rivals = ", ".join(str(w) for w in resolution.tie_set if w != opt)
    return OptimumVerdict(opt, "not resolved", f"it cannot be told apart from width(s) {rivals}")
