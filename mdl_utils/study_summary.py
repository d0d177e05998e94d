"""Chapter 3's study, part 2: what its rows say, computed from the rows alone.

:func:`summarise` gives everything chapter 3 reads: per (width, seed) the DL-optimal SAE of
its k search and how it trained; DL*(width) over seeds with its spread and a bootstrap
interval over test digits; the resolution of the optimum
(:func:`mdl_utils.resolution.resolve_optimum`), also at the reread tolerances; the points A-D;
and what remains to train. It is a pure function of the rows, so ``--summary-only`` rewrites
the committed ``summary.json`` from the committed rows, byte for byte
(:func:`rewrite_summary`, which keeps the training run's record). Chapters 6, 7 and 8 use it
for their own studies.

:class:`StudySummary` is the same summary as typed records (:class:`SeedSearch` per
(width, seed) with its :class:`Selection`, :class:`DLStar` per width, :class:`mdl_utils.resolution.Resolution`), with one
JSON reader (:func:`read_summary`) and the dict form back (:meth:`StudySummary.to_dict`, key
for key what :func:`summarise` writes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mdl_utils.profiles import load_json_object, read_record, write_results
from mdl_utils.entropy import two_part_bits
from mdl_utils.resolution import (
    Bracket,
    OptimumVerdict,
    Resolution,
    WidthSummary,
    bracket_optimum,
    judge_optimum,
    resolve_optimum,
)
from mdl_utils.study_plan import (
    StudySettings,
    j_max,
    j_min,
    plan,
    search_done,
    start_index,
    narrower_widths,
    widths_not_searched,
    widths_below_min_width,
    widths_one_seed,
)

__all__ = [
    "RESULTS_FORMAT_VERSION",
    "RULE_KEYS",
    "summarise",
    "rewrite_summary",
    "points_from",
    "StudySummary",
    "SeedSearch",
    "Selection",
    "DLStar",
    "read_summary",
]

#: The version of the study's ``summary.json`` (and rows) format.
RESULTS_FORMAT_VERSION = 2


def _dl_at(row: dict[str, Any], key: str) -> float | None:
    """A row's DL re-read at the tolerance ``key`` (``None`` when it misses that tolerance)."""
    value = row["measure"]["dl_at"].get(key)
    return None if value is None else float(value)


def _width_summaries(
    settings: StudySettings,
    rows: Sequence[dict[str, Any]],
    dl_of: Callable[[dict[str, Any]], float | None],
    *,
    complete_only: bool = True,
) -> list[WidthSummary]:
    out = []
    for width in sorted({r["width"] for r in rows}):
        dl_by_seed: dict[int, float] = {}
        boot_by_seed: dict[int, list[float]] = {}
        for seed in settings.seeds:
            if complete_only and not search_done(settings, rows, width, seed, start_index(settings, rows, width, seed)):
                continue
            mine = [r for r in rows if r["width"] == width and r["seed"] == seed and dl_of(r) is not None]
            if not mine:
                continue
            best = min(mine, key=lambda r: (dl_of(r), r["k_index"]))
            dl_by_seed[seed] = float(dl_of(best))  # type: ignore[arg-type]
            boot_by_seed[seed] = list(best["measure"].get("boot") or [])
        if dl_by_seed:
            out.append(WidthSummary(width, dl_by_seed, boot_by_seed))
    return out


def summarise(
    settings: StudySettings, rows: Sequence[dict[str, Any]], *, d_in: int = 784, extra_fields: Sequence[str] = ()
) -> dict[str, Any]:
    """Everything the chapter reads, computed from the rows alone (see the module docstring).

    ``d_in`` is the data's dimension (784 for MNIST pixels), which the two-part total needs;
    ``extra_fields`` are further keys of the selected rows' measurements copied into each
    (width, seed) entry (chapter 7 adds its cross-entropy readings).
    """
    seed0 = settings.seeds[0]
    widths = sorted({r["width"] for r in rows})
    per_width = []
    for width in widths:
        entry: dict[str, Any] = {"width": width, "seeds": {}}
        for seed in settings.seeds:
            mine = [r for r in rows if r["width"] == width and r["seed"] == seed]
            if not mine:
                continue
            done = search_done(settings, rows, width, seed, start_index(settings, rows, width, seed))
            feasible = [r for r in mine if r["measure"]["dl_bits"] is not None]
            sel = min(feasible, key=lambda r: (r["measure"]["dl_bits"], r["k_index"])) if feasible else None
            capped = [r for r in mine if r["train"]["stop_reason"] == "max_epochs"]
            seed_entry: dict[str, Any] = {
                "complete": done,
                "n_trained": len(mine),
                "n_at_epoch_cap": len(capped),
                "reachable": sel is not None,
            }
            if sel is not None:
                m = sel["measure"]
                seed_entry.update(
                    k=sel["k"],
                    k_index=sel["k_index"],
                    dl_bits=m["dl_bits"],
                    mse=m["mse"],
                    mse_quantised=m["precision"]["mse_quantised"],
                    bits=m["precision"]["bits"],
                    precision_status=m["precision"]["status"],
                    whole_bits=m["whole_bits"],
                    whole_dl_bits=m["whole_dl_bits"],
                    l0=m["l0"],
                    n_live=m["n_live"],
                    dead_fraction=m["dead_fraction"],
                    upper_bound_bits=m["upper_bound_bits"],
                    saebench_bits=m["saebench_bits"],
                    two_part_bits=two_part_bits(m["dl_bits"], width, d_in),
                    epochs=sel["train"]["epochs"],
                    best_epoch=sel["train"]["best_epoch"],
                    stop_reason=sel["train"]["stop_reason"],
                    bracketed=_bracketed(mine, sel["k_index"], width, j_min(settings)),
                )
                seed_entry.update({f: m.get(f) for f in extra_fields})
            entry["seeds"][str(seed)] = seed_entry
        per_width.append(entry)

    summaries = _width_summaries(settings, rows, lambda r: r["measure"]["dl_bits"])
    resolution = resolve_optimum(summaries) if summaries else None
    rereads: dict[str, Resolution | None] = {}
    for ratio in settings.reread:
        key = f"{settings.epsilon * ratio:.6g}"
        at = _width_summaries(settings, rows, functools.partial(_dl_at, key=key))
        rereads[key] = resolve_optimum(at) if at else None
    table = [
        {
            "width": s.width,
            "n_seeds": s.n_seeds,
            "mean": s.mean,
            "seed_std": s.seed_std,
            "boot_ci": _boot_ci(s),
            "dl_by_seed": {str(k): v for k, v in s.dl_by_seed.items()},
        }
        for s in summaries
    ]
    remaining = [
        (w, s)
        for (w, s) in plan(settings, rows)
        if not search_done(settings, rows, w, s, start_index(settings, rows, w, s))
    ]

    def final(res: Resolution | None) -> dict[str, Any] | None:
        # Widths or seeds still to come can change the optimum: never final before they are in.
        if res is None:
            return None
        return replace(res, provisional=bool(remaining), resolved=res.resolved and not remaining).to_dict()

    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "settings": settings.to_dict(),
        "epsilon": settings.epsilon,
        "n_saes_trained": len(rows),
        "training_time_s": round(sum(r["train"]["train_seconds"] or 0.0 for r in rows), 1),
        "devices": sorted({r.get("device", "cpu") for r in rows}),
        "widths": per_width,
        "dl_star": table,
        "resolution": final(resolution),
        "rereads": {key: final(res) for key, res in rereads.items()},
        "points": points_from(per_width, final(resolution), seed0),
        "remaining": [list(t) for t in remaining],
        "complete": not remaining,
        # Only where the width rule is on (the epsilon scan), so chapter 3's files are unchanged.
        **({} if settings.stop_widening is None else {"widths_not_searched": widths_not_searched(settings, rows)}),
        # Likewise only where the grid may grow at its narrow end (the epsilon scan).
        **({} if settings.extend_down_to is None else {"widths_below_grid": narrower_widths(settings, rows)}),
        # Likewise only where the further seeds skip the widths far from the best (the scan).
        **({} if settings.replicate_within is None else {"widths_one_seed": widths_one_seed(settings, rows)}),
        # And where a floor on the width is set (chapter 8's MSE tolerances, from the rank bound).
        **({} if settings.min_width is None else {"widths_below_min_width": widths_below_min_width(settings)}),
    }


def _boot_ci(s: WidthSummary) -> list[float] | None:
    boot = s.boot_mean()
    if boot is None:
        return None
    return [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def _bracketed(mine: Sequence[dict[str, Any]], j: float, width: int, j_min: int = 0) -> bool:
    """The selected k has a trained neighbour on each side that is not shorter (or misses the
    tolerance), or sits at the end of the grid (k = ``k_min`` or k = width) on that side."""
    by_j = {r["k_index"]: r["measure"]["dl_bits"] for r in mine}
    dl = by_j[j]
    below = [i for i in by_j if i < j]
    above = [i for i in by_j if i > j]

    def holds(nearest: float | None, at_edge: bool) -> bool:
        if nearest is None:
            return at_edge
        return by_j[nearest] is None or by_j[nearest] >= dl

    return holds(max(below) if below else None, j <= j_min) and holds(min(above) if above else None, j >= j_max(width))


def points_from(
    per_width: Sequence[dict[str, Any]], resolution: dict[str, Any] | None, seed: int
) -> dict[str, dict[str, Any]]:
    """The points A-D as four distinct SAEs of ``seed`` (each a (width, seed) DL-optimal SAE),
    chosen by rule: B the optimum width; A the widest reachable width; D the narrowest
    reachable width; C the reachable width strictly between D and B nearest (in log width) to
    their geometric mean. A point whose rule has no distinct candidate is left out."""
    if resolution is None:
        return {}
    reach = sorted(
        e["width"]
        for e in per_width
        if e["seeds"].get(str(seed), {}).get("reachable") and e["seeds"][str(seed)].get("complete")
    )
    if not reach:
        return {}
    b = resolution["optimum"]
    if b not in reach:
        return {}
    picks: dict[str, int] = {"B": b}
    if reach[-1] != b:
        picks["A"] = reach[-1]
    if reach[0] != b:
        picks["D"] = reach[0]
        between = [w for w in reach if reach[0] < w < b]
        if between:
            target = 0.5 * (math.log2(reach[0]) + math.log2(b))
            picks["C"] = min(between, key=lambda w: (abs(math.log2(w) - target), w))
    return {name: {"width": w, "seed": seed} for name, w in sorted(picks.items())}


# --------------------------------------------------------------------------------------------
# The summary as typed records, with one JSON read and write
# --------------------------------------------------------------------------------------------

#: Keys of a (width, seed) entry that exist only when its search found an SAE within epsilon.
_SELECTION_KEYS: tuple[str, ...] = (
    "k", "k_index", "dl_bits", "mse", "mse_quantised", "bits", "precision_status", "whole_bits",
    "whole_dl_bits", "l0", "n_live", "dead_fraction", "upper_bound_bits", "saebench_bits",
    "two_part_bits", "epochs", "best_epoch", "stop_reason", "bracketed",
)  # fmt: skip
#: The keys of every (width, seed) entry, reachable or not.
_SEARCH_KEYS: tuple[str, ...] = ("complete", "n_trained", "n_at_epoch_cap", "reachable")
#: The keys :func:`summarise` writes; anything else in a summary file is the writer's metadata.
_SUMMARY_KEYS: tuple[str, ...] = (
    "format_version", "settings", "epsilon", "n_saes_trained", "training_time_s", "devices", "widths",
    "dl_star", "resolution", "rereads", "points", "remaining", "complete",
)  # fmt: skip
#: The keys :func:`summarise` writes only where the matching rule of the settings is on.
RULE_KEYS: tuple[str, ...] = ("widths_not_searched", "widths_below_grid", "widths_one_seed", "widths_below_min_width")


@dataclass(frozen=True)
class Selection:
    """The DL-optimal SAE of one (width, seed) search and its readings.

    Attributes:
        k, k_index: its k and grid index (``k = 2**(k_index/4)``).
        dl_bits: its description length at the tolerance, bits per sample.
        mse, mse_quantised: test MSE per element, unquantised and at precision ``bits``.
        bits, precision_status: the continuous precision found and how the bisection ended.
        whole_bits, whole_dl_bits: the paper's whole-bit reading and the DL there.
        l0, n_live, dead_fraction: test L0, live features, features never firing on test.
        upper_bound_bits, saebench_bits, two_part_bits: the bound, SAEBench's count and the
            whole two-part code (decoder included), bits per sample.
        epochs, best_epoch, stop_reason: how its training ended.
        bracketed: both grid neighbours of its k were trained and are not shorter.
        extra: further readings the study's measure added (chapter 7's cross-entropy).
    """

    k: float
    k_index: float
    dl_bits: float
    mse: float
    mse_quantised: float
    bits: float
    precision_status: str
    whole_bits: int | None
    whole_dl_bits: float | None
    l0: float
    n_live: int
    dead_fraction: float
    upper_bound_bits: float
    saebench_bits: float | None
    two_part_bits: float
    epochs: int
    best_epoch: int | None
    stop_reason: str
    bracketed: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Selection:
        missing = [k for k in _SELECTION_KEYS if k not in d]
        if missing:
            raise KeyError(f"a selected SAE's entry lacks {missing}")
        return cls(**{k: d[k] for k in _SELECTION_KEYS}, extra={k: v for k, v in d.items() if k not in _SELECTION_KEYS})

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _SELECTION_KEYS}, **self.extra}


@dataclass(frozen=True)
class SeedSearch:
    """One (width, seed) k search.

    Attributes:
        complete: the search is over (its minimum is bracketed or the width is unreachable).
        n_trained: SAEs trained in it; ``n_at_epoch_cap``: how many stopped at the epoch cap.
        reachable: some SAE met the tolerance; then ``selected`` is the DL-optimal one.
    """

    complete: bool
    n_trained: int
    n_at_epoch_cap: int
    reachable: bool
    selected: Selection | None = None

    @property
    def dl_bits(self) -> float | None:
        """The selected SAE's DL, bits per sample (``None``: unreachable)."""
        return None if self.selected is None else self.selected.dl_bits

    @property
    def capped(self) -> bool:
        """The search is over but its selected k is not bracketed: it used up
        ``max_trainings_per_search`` with DL still falling, so its DL is only an upper bound."""
        return self.complete and self.selected is not None and not self.selected.bracketed

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeedSearch:
        return cls(
            complete=bool(d["complete"]),
            n_trained=int(d["n_trained"]),
            n_at_epoch_cap=int(d["n_at_epoch_cap"]),
            reachable=bool(d["reachable"]),
            selected=Selection.from_dict({k: v for k, v in d.items() if k not in _SEARCH_KEYS})
            if d["reachable"]
            else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "complete": self.complete,
            "n_trained": self.n_trained,
            "n_at_epoch_cap": self.n_at_epoch_cap,
            "reachable": self.reachable,
        }
        if self.selected is not None:
            out.update(self.selected.to_dict())
        return out


@dataclass(frozen=True)
class DLStar:
    """DL*(width) over seeds: each seed's minimum over k, their mean and spread, and the 95%
    bootstrap interval over test digits of the seed mean (``None`` without replicates)."""

    width: int
    n_seeds: int
    mean: float
    seed_std: float | None
    boot_ci: tuple[float, float] | None
    dl_by_seed: dict[int, float]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DLStar:
        ci = d["boot_ci"]
        return cls(
            width=int(d["width"]),
            n_seeds=int(d["n_seeds"]),
            mean=float(d["mean"]),
            seed_std=d["seed_std"],
            boot_ci=None if ci is None else (float(ci[0]), float(ci[1])),
            dl_by_seed={int(s): float(v) for s, v in d["dl_by_seed"].items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "n_seeds": self.n_seeds,
            "mean": self.mean,
            "seed_std": self.seed_std,
            "boot_ci": None if self.boot_ci is None else list(self.boot_ci),
            "dl_by_seed": {str(s): v for s, v in self.dl_by_seed.items()},
        }


@dataclass(frozen=True)
class StudySummary:
    """A study's ``summary.json`` as typed records (what :func:`summarise` computes).

    Attributes:
        settings: the :class:`mdl_utils.study_plan.StudySettings` the rows were trained with.
        epsilon: the tolerance (test MSE per element).
        n_saes_trained, training_time_s, devices: what the rows cost and where they trained.
        searches: (width, seed) -> :class:`SeedSearch`, for every search with a row.
        dl_star: :class:`DLStar` per width with a finished search, narrow to wide.
        resolution: the optimum and whether it is resolved (``None`` before any search has
            finished); provisional while searches remain.
        rereads: the same at the reread tolerances (keyed by the tolerance as written).
        points: the points A-D, name -> (width, seed).
        remaining: the (width, seed) searches still to finish; ``complete``: none remain.
        widths_not_searched, widths_below_grid, widths_one_seed, widths_below_min_width: the
            widths the width rule ruled out, those the narrow-end rule added, those the further
            seeds skip, and the doubling widths below the settings' ``min_width``
            (:func:`mdl_utils.study_plan.widths_not_searched`, :func:`~mdl_utils.study_plan.narrower_widths`,
            :func:`~mdl_utils.study_plan.widths_one_seed`,
            :func:`~mdl_utils.study_plan.widths_below_min_width`); ``None`` where the rule is off.
        metadata: what the writer added: the run's provenance (machine, date, wall time,
            code version, budget stop; :func:`mdl_utils.profiles.provenance`) and any other
            key (chapter 7's arm ``name``); empty for a summary computed in memory.
    """

    format_version: int
    settings: StudySettings
    epsilon: float
    n_saes_trained: int
    training_time_s: float
    devices: tuple[str, ...]
    searches: dict[tuple[int, int], SeedSearch]
    dl_star: tuple[DLStar, ...]
    resolution: Resolution | None
    rereads: dict[str, Resolution | None]
    points: dict[str, tuple[int, int]]
    remaining: tuple[tuple[int, int], ...]
    complete: bool
    widths_not_searched: tuple[int, ...] | None = None
    widths_below_grid: tuple[int, ...] | None = None
    widths_one_seed: tuple[int, ...] | None = None
    widths_below_min_width: tuple[int, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        """Every width with a row, narrow to wide."""
        return sorted({w for w, _ in self.searches})

    def dl_star_of(self, width: int) -> DLStar:
        """The :class:`DLStar` of ``width`` (KeyError naming the widths that have one)."""
        for entry in self.dl_star:
            if entry.width == width:
                return entry
        raise KeyError(f"width {width} has no finished search; widths with DL*: {[e.width for e in self.dl_star]}")

    @property
    def widths_infeasible(self) -> list[int]:
        """Widths that cannot meet the tolerance: a finished search at the width missed it at
        every k, or the rank bound rules the width out (``widths_below_min_width``)."""
        missed = {w for (w, _), s in self.searches.items() if s.complete and not s.reachable}
        missed -= {d.width for d in self.dl_star}
        return sorted(missed | set(self.widths_below_min_width or ()))

    @property
    def widths_capped(self) -> list[int]:
        """Widths whose DL* is only an upper bound: some seed's finished k search counted in it
        reached ``settings.max_trainings_per_search`` with its selected k not bracketed (DL
        still falling towards k not tried)."""
        out = set()
        for d in self.dl_star:
            for seed in d.dl_by_seed:
                search = self.searches.get((d.width, seed))
                if search is not None and search.capped:
                    out.add(d.width)
        return sorted(out)

    @property
    def bracket(self) -> Bracket | None:
        """Whether the smallest DL* is bracketed (:func:`mdl_utils.resolution.bracket_optimum`),
        ``None`` before any search has finished."""
        if self.resolution is None:
            return None
        return bracket_optimum(
            self.resolution.optimum,
            [d.width for d in self.dl_star],
            self.settings.widths,
            self.widths_infeasible,
            self.widths_capped,
        )

    @property
    def verdict(self) -> OptimumVerdict | None:
        """The optimum's verdict (:func:`mdl_utils.resolution.judge_optimum`), ``None`` before
        any search has finished."""
        bracket = self.bracket  # computed once: it reads every search
        if self.resolution is None or bracket is None:
            return None
        return judge_optimum(self.resolution, bracket)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySummary:
        """Read the dict form (as :func:`summarise` returns it or ``summary.json`` holds it)."""
        res = d["resolution"]
        return cls(
            format_version=int(d["format_version"]),
            settings=StudySettings.from_dict(d["settings"]),
            epsilon=float(d["epsilon"]),
            n_saes_trained=int(d["n_saes_trained"]),
            training_time_s=float(d["training_time_s"]),
            devices=tuple(d["devices"]),
            searches={
                (int(e["width"]), int(s)): SeedSearch.from_dict(v) for e in d["widths"] for s, v in e["seeds"].items()
            },
            dl_star=tuple(DLStar.from_dict(e) for e in d["dl_star"]),
            resolution=None if res is None else Resolution.from_dict(res),
            rereads={k: None if v is None else Resolution.from_dict(v) for k, v in d["rereads"].items()},
            points={name: (int(p["width"]), int(p["seed"])) for name, p in d["points"].items()},
            remaining=tuple((int(w), int(s)) for w, s in d["remaining"]),
            complete=bool(d["complete"]),
            **{k: tuple(int(w) for w in d[k]) for k in RULE_KEYS if k in d},
            metadata={k: v for k, v in d.items() if k not in _SUMMARY_KEYS + RULE_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The dict form, key for key as :func:`summarise` writes it (JSON-ready)."""

        def resolution(r: Resolution | None) -> dict[str, Any] | None:
            return None if r is None else r.to_dict()

        widths = []
        for width in self.widths:
            seeds = {str(s): v.to_dict() for (w, s), v in sorted(self.searches.items()) if w == width}
            widths.append({"width": width, "seeds": seeds})
        return {
            "format_version": self.format_version,
            "settings": self.settings.to_dict(),
            "epsilon": self.epsilon,
            "n_saes_trained": self.n_saes_trained,
            "training_time_s": self.training_time_s,
            "devices": list(self.devices),
            "widths": widths,
            "dl_star": [e.to_dict() for e in self.dl_star],
            "resolution": resolution(self.resolution),
            "rereads": {k: resolution(v) for k, v in self.rereads.items()},
            "points": {name: {"width": w, "seed": s} for name, (w, s) in self.points.items()},
            "remaining": [list(t) for t in self.remaining],
            "complete": self.complete,
            **{k: list(v) for k in RULE_KEYS if (v := getattr(self, k)) is not None},
            **self.metadata,
        }


def read_summary(path: str | os.PathLike[str], *, how_to_make: str | None = None) -> StudySummary:
    """A study's ``summary.json`` as a :class:`StudySummary`, its format checked.

    Raises:
        FileNotFoundError: no such file (the message says how to make it).
        ValueError: another results format, or a file that lacks what a summary holds.
    """
    return read_record(
        path,
        StudySummary.from_dict,
        version=RESULTS_FORMAT_VERSION,
        how_to_make=how_to_make or "run `python -m mdl_utils mnist-sweep --profile full --summary-only` to compute it",
        what="a study summary",
    )


def rewrite_summary(
    path: str | os.PathLike[str], summary: Mapping[str, Any], *, record: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``summary`` (what :func:`summarise` computed from a study's rows, perhaps with a
    few keys of the caller's) over the study's ``summary.json`` at ``path``, keeping what the
    run that trained the rows recorded there.

    The keys of the earlier file that ``summary`` lacks (machine, date, wall time, code
    version, budget stop, executor) follow ``summary``'s keys unchanged, except the
    :data:`RULE_KEYS`: :func:`summarise` writes one exactly when its rule is on, so an earlier
    one it did not write is stale. Where there is no earlier file, ``record`` (say this call's
    :func:`mdl_utils.profiles.provenance`) stands in for it. A rewrite of an unchanged summary
    therefore changes no byte of the file.

    Returns:
        What was written.
    """
    target = Path(path)
    before = load_json_object(target) if target.is_file() else dict(record or {})
    written = {**summary, **{k: v for k, v in before.items() if k not in summary and k not in RULE_KEYS}}
    write_results(target, written)
    return written
