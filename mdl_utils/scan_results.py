"""Chapter 6's results as typed records, with one JSON read and write.

``scan.json`` (written by :func:`mdl_utils.epsilon_scan.summarise_scan`) holds, for every
tolerance, what its study found (:class:`ScanEntry`: the optimum, each seed's own optimum,
DL*(width)); the power laws fitted across tolerances
(:class:`mdl_utils.power_law.ExponentInterval`); the rate-distortion curves of the reference
study's SAEs (:class:`RDCurve`) and the crossings between widths (:class:`Crossing`); and
per-feature against uniform precision at equal MSE (:class:`AllocationComparison`).
:class:`ScanResults` reads the file (:meth:`ScanResults.from_dict`, :func:`read_scan`) and
writes it back key for key (:meth:`ScanResults.to_dict`), so a rewrite is byte for byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from mdl_utils.power_law import ExponentInterval
from mdl_utils.resolution import Resolution
from mdl_utils.study_plan import StudySettings
from mdl_utils.study_summary import DLStar

__all__ = [
    "SCAN_FORMAT_VERSION",
    "UniformReading",
    "GreedyReading",
    "SwapReading",
    "AllocationComparison",
    "RDCurve",
    "Crossing",
    "SeedOptimum",
    "ScanOptimum",
    "ScanEntry",
    "ScanResults",
    "read_scan",
]

#: The version of the ``scan.json`` format (the study's results format, whose summaries it embeds).
SCAN_FORMAT_VERSION = 1

_R = TypeVar("_R")


def _jsonable(value: Any) -> Any:
    """Tuples as lists, all the way down (the form ``json.loads`` gives back)."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _flat(cls: type[_R], d: dict[str, Any], what: str) -> _R:
    """A record of plain fields from its dict form; KeyError naming what the dict lacks."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    missing = [n for n in names if n not in d]
    if missing:
        raise KeyError(f"{what} lacks {missing}")
    return cls(**{n: d[n] for n in names})


def _flat_dict(record: Any) -> dict[str, Any]:
    return {f.name: _jsonable(getattr(record, f.name)) for f in fields(record)}


def _optional(value: dict[str, Any] | None, read: Any) -> Any:
    return None if value is None else read(value)


@dataclass(frozen=True)
class UniformReading:
    """The uniform code at one target MSE: its continuous precision ``bits``, the quantised
    ``mse`` it reached, how the bisection ended (``status``: ``"in_band"`` or
    ``"band_missed"``) and its DL, bits per sample."""

    bits: float
    mse: float
    status: str
    dl_bits: float


@dataclass(frozen=True)
class GreedyReading:
    """The greedy per-feature allocation: its entropy (the DL without the table), its DL,
    the MSE it reached, its table of precisions per sample, and where it started."""

    entropy_bits: float
    dl_bits: float
    mse: float
    table_bits_per_sample: float
    started_from: str


@dataclass(frozen=True)
class SwapReading:
    """The swap refinement after the greedy (:func:`mdl_utils.allocation_checks.swap_refine`)."""

    entropy_bits: float
    entropy_bits_before: float
    mse: float
    mse_before: float
    ceiling: float
    n_swaps: int
    n_pairs_evaluated: int
    gain_bits: float


@dataclass(frozen=True)
class AllocationComparison:
    """Per-feature against uniform precision at equal MSE for one stored SAE
    (:func:`mdl_utils.allocation_checks.compare_at_equal_mse`); the savings are relative DL saved
    by the per-feature code (negative: it is longer). The swap fields are None when the
    comparison ran without swaps."""

    seed: int
    sae_sha256: str
    width: int
    epsilon: float
    uniform_at_epsilon: UniformReading
    greedy: GreedyReading
    uniform_at_greedy_mse: UniformReading
    greedy_saving: float
    swaps: SwapReading | None
    uniform_at_swap_mse: UniformReading | None
    swap_saving: float | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AllocationComparison:
        def uniform(v: dict[str, Any]) -> UniformReading:
            return _flat(UniformReading, v, "a uniform reading")

        return cls(
            seed=int(d["seed"]),
            sae_sha256=str(d["sae_sha256"]),
            width=int(d["width"]),
            epsilon=float(d["epsilon"]),
            uniform_at_epsilon=uniform(d["uniform_at_epsilon"]),
            greedy=_flat(GreedyReading, d["greedy"], "a greedy allocation"),
            uniform_at_greedy_mse=uniform(d["uniform_at_greedy_mse"]),
            greedy_saving=float(d["greedy_saving"]),
            swaps=_optional(d["swaps"], lambda v: _flat(SwapReading, v, "a swap refinement")),
            uniform_at_swap_mse=_optional(d["uniform_at_swap_mse"], uniform),
            swap_saving=d["swap_saving"],
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = _flat_dict(value) if hasattr(value, "__dataclass_fields__") else value
        return out


@dataclass(frozen=True)
class RDCurve:
    """One stored SAE's DL as the tolerance it must meet varies
    (:func:`mdl_utils.rate_distortion.rate_distortion_curves`): ``dl_bits`` and ``bits`` are
    aligned with ``tolerances`` (None where the unquantised MSE is above the tolerance);
    ``mse`` is its unquantised test MSE."""

    width: int
    seed: int
    k: float
    mse: float
    tolerances: tuple[float, ...]
    dl_bits: tuple[float | None, ...]
    bits: tuple[float | None, ...]
    sae_sha256: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RDCurve:
        c = _flat(cls, d, "a rate-distortion curve")
        return cls(**{**c.__dict__, "tolerances": tuple(c.tolerances), "dl_bits": tuple(c.dl_bits),
                      "bits": tuple(c.bits)})  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return _flat_dict(self)


@dataclass(frozen=True)
class Crossing:
    """Two widths' curves compared tolerance by tolerance
    (:func:`mdl_utils.rate_distortion.curve_crossings_with_spread`): ``order`` is ``"a"``,
    ``"b"``, ``"tie"`` or ``"missing"`` per tolerance; ``raw_crossings`` are the sign changes
    of the mean difference, ``crossings`` those that survive the seed spread, each as the
    pair of tolerances that brackets it."""

    widths: tuple[int, int]
    tolerances: tuple[float, ...]
    order: tuple[str, ...]
    mean_difference: tuple[float | None, ...]
    raw_crossings: tuple[tuple[float, float], ...]
    crossings: tuple[tuple[float, float], ...]
    depends_on_tolerance: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Crossing:
        a, b = d["widths"]
        return cls(
            widths=(int(a), int(b)),
            tolerances=tuple(d["tolerances"]),
            order=tuple(d["order"]),
            mean_difference=tuple(d["mean_difference"]),
            raw_crossings=tuple((lo, hi) for lo, hi in d["raw_crossings"]),
            crossings=tuple((lo, hi) for lo, hi in d["crossings"]),
            depends_on_tolerance=bool(d["depends_on_tolerance"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return _flat_dict(self)


@dataclass(frozen=True)
class SeedOptimum:
    """One seed's own optimum at one tolerance: its width, DL* (bits per sample), L0 and k,
    and whether it sits at an edge of the reachable widths or of the grid."""

    width: int
    dl_bits: float
    l0: float
    k: float
    at_edge: bool

    def value(self, quantity: str) -> float:
        """``width``, ``l0`` or ``dl_bits`` by name (the quantities the power laws fit)."""
        if quantity not in ("width", "l0", "dl_bits", "k"):
            raise KeyError(f"no quantity {quantity!r}; one of width, l0, dl_bits, k")
        return float(getattr(self, quantity))


@dataclass(frozen=True)
class ScanOptimum:
    """The optimum across seeds at one tolerance: its width, mean DL* with the seed spread,
    seed count and bootstrap interval, mean L0 and k over its seeds, and the verdict (tie set,
    resolved, provisional while searches remain)."""

    width: int
    dl_bits: float
    seed_std: float | None
    n_seeds: int
    boot_ci: tuple[float, float] | None
    l0: float
    k: float
    tie_set: tuple[int, ...]
    resolved: bool
    provisional: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanOptimum:
        o = _flat(cls, d, "an optimum")
        ci = o.boot_ci
        return cls(**{**o.__dict__, "boot_ci": None if ci is None else (ci[0], ci[1]),
                      "tie_set": tuple(int(w) for w in o.tie_set)})  # fmt: skip

    @property
    def verdict(self) -> str:
        """``"resolved"``, ``"provisional"`` (one width ahead while searches remain),
        ``"tie set 128, 181"``, or ``"tie set 362, 512 so far"`` (while searches remain: more
        seeds or widths can still split or widen it)."""
        if self.resolved:
            return "resolved"
        if self.provisional and len(self.tie_set) == 1:
            return "provisional"
        return "tie set " + ", ".join(str(w) for w in self.tie_set) + (" so far" if self.provisional else "")


@dataclass(frozen=True)
class ScanEntry:
    """One tolerance's study (:func:`mdl_utils.epsilon_scan.scan_entry`).

    Attributes:
        epsilon, k_min, k_start: the study's tolerance and where its k searches start and stop.
        complete, n_remaining: whether searches remain (``n_remaining`` None: not run yet).
        n_saes_trained, training_time_s, devices: what it cost and where it trained.
        resolution: :func:`mdl_utils.resolution.resolve_optimum` on the seed-mean DL*
            (None before any search has finished).
        dl_star: DL*(width) over seeds.
        seed_optima: each seed's own optimum (keyed by the seed as text, as in the file).
        optimum: the optimum across seeds (None with no resolution).
        at_edge: the optimum is the narrowest or widest reachable width searched.
        widths_not_searched: doubling widths the scan's width rule ruled out
            (:func:`mdl_utils.study_plan.doubling_widths`); empty at chapter 3's tolerance. A
            width that trained before the rule fired is listed too (its seed-0 DL* stays in
            ``dl_star``; no further seed trains it).
        widths_below_grid: widths below the grid searched because the narrowest width was
            seed 0's optimum (:func:`mdl_utils.study_plan.narrower_widths`); empty at chapter
            3's tolerance and in files written before the rule.
        widths_one_seed: reachable widths the further seeds skip, their seed-0 DL* being more
            than :data:`mdl_utils.epsilon_scan.REPLICATE_WITHIN` above the smallest
            (:func:`mdl_utils.study_plan.widths_one_seed`); empty at chapter 3's tolerance
            and in files written before the rule.
        widths_capped: widths whose DL* is only an upper bound, a k search having used up its
            trainings with DL still falling
            (:attr:`mdl_utils.study_summary.StudySummary.widths_capped`); empty in files
            written before the rule.
    """

    epsilon: float
    k_min: float
    k_start: float
    complete: bool
    n_remaining: int | None
    n_saes_trained: int
    training_time_s: float
    devices: tuple[str, ...]
    resolution: Resolution | None
    dl_star: tuple[DLStar, ...]
    seed_optima: dict[str, SeedOptimum]
    optimum: ScanOptimum | None
    at_edge: bool | None
    widths_not_searched: tuple[int, ...] = ()
    widths_below_grid: tuple[int, ...] = ()
    widths_one_seed: tuple[int, ...] = ()
    widths_capped: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanEntry:
        return cls(
            epsilon=float(d["epsilon"]),
            k_min=float(d["k_min"]),
            k_start=float(d["k_start"]),
            complete=bool(d["complete"]),
            n_remaining=d["n_remaining"],
            n_saes_trained=int(d["n_saes_trained"]),
            training_time_s=float(d["training_time_s"]),
            devices=tuple(d["devices"]),
            resolution=_optional(d["resolution"], Resolution.from_dict),
            dl_star=tuple(DLStar.from_dict(e) for e in d["dl_star"]),
            seed_optima={s: _flat(SeedOptimum, v, "a seed's optimum") for s, v in d["seed_optima"].items()},
            optimum=_optional(d["optimum"], ScanOptimum.from_dict),
            at_edge=d["at_edge"],
            widths_not_searched=tuple(int(w) for w in d.get("widths_not_searched", ())),
            widths_below_grid=tuple(int(w) for w in d.get("widths_below_grid", ())),
            widths_one_seed=tuple(int(w) for w in d.get("widths_one_seed", ())),
            widths_capped=tuple(int(w) for w in d.get("widths_capped", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "k_min": self.k_min,
            "k_start": self.k_start,
            "complete": self.complete,
            "n_remaining": self.n_remaining,
            "n_saes_trained": self.n_saes_trained,
            "training_time_s": self.training_time_s,
            "devices": list(self.devices),
            "resolution": None if self.resolution is None else self.resolution.to_dict(),
            "dl_star": [e.to_dict() for e in self.dl_star],
            "seed_optima": {s: _flat_dict(v) for s, v in self.seed_optima.items()},
            "optimum": None if self.optimum is None else _flat_dict(self.optimum),
            "at_edge": self.at_edge,
            "widths_not_searched": list(self.widths_not_searched),
            "widths_below_grid": list(self.widths_below_grid),
            "widths_one_seed": list(self.widths_one_seed),
            "widths_capped": list(self.widths_capped),
        }

    @property
    def state(self) -> str:
        """``"complete"``, ``"not run yet"`` or ``"N searches left"``."""
        if self.complete:
            return "complete"
        return "not run yet" if not self.n_saes_trained else f"{self.n_remaining} searches left"


#: The keys the scan writes; anything else in the file is the writer's metadata (provenance).
_KEYS: tuple[str, ...] = (
    "format_version", "reference_epsilon", "settings", "entries", "fits", "complete",
    "n_saes_trained", "training_time_s", "curves", "crossings", "allocations",
)  # fmt: skip


@dataclass(frozen=True)
class ScanResults:
    """``scan.json`` as typed records.

    Attributes:
        reference_epsilon: chapter 3's tolerance, whose study's SAEs give the curves and
            the allocation comparisons; ``settings``: that study's settings.
        entries: one :class:`ScanEntry` per tolerance, loose to tight as run.
        fits: quantity (``width``, ``l0``, ``dl_bits``) -> its power law in epsilon.
        complete, n_saes_trained, training_time_s: over all tolerances.
        curves, crossings, allocations: the reference study's SAEs read at other tolerances,
            the crossings between widths, per-feature against uniform precision.
        metadata: the run's provenance (machine, date, wall time, code version).
    """

    format_version: int
    reference_epsilon: float
    settings: StudySettings
    entries: tuple[ScanEntry, ...]
    fits: dict[str, ExponentInterval]
    complete: bool
    n_saes_trained: int
    training_time_s: float
    curves: tuple[RDCurve, ...] = ()
    crossings: tuple[Crossing, ...] = ()
    allocations: tuple[AllocationComparison, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanResults:
        """Read the dict form (as ``scan.json`` holds it)."""
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise KeyError(f"the scan lacks {missing}")
        return cls(
            format_version=int(d["format_version"]),
            reference_epsilon=float(d["reference_epsilon"]),
            settings=StudySettings.from_dict(d["settings"]),
            entries=tuple(ScanEntry.from_dict(e) for e in d["entries"]),
            fits={q: ExponentInterval.from_dict(f) for q, f in d["fits"].items()},
            complete=bool(d["complete"]),
            n_saes_trained=int(d["n_saes_trained"]),
            training_time_s=float(d["training_time_s"]),
            curves=tuple(RDCurve.from_dict(c) for c in d["curves"]),
            crossings=tuple(Crossing.from_dict(c) for c in d["crossings"]),
            allocations=tuple(AllocationComparison.from_dict(a) for a in d["allocations"]),
            metadata={k: v for k, v in d.items() if k not in _KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The dict form, key for key as ``scan.json`` holds it (JSON-ready)."""
        return {
            "format_version": self.format_version,
            "reference_epsilon": self.reference_epsilon,
            "settings": self.settings.to_dict(),
            "entries": [e.to_dict() for e in self.entries],
            "fits": {q: _jsonable(f.to_dict()) for q, f in self.fits.items()},
            "complete": self.complete,
            "n_saes_trained": self.n_saes_trained,
            "training_time_s": self.training_time_s,
            "curves": [c.to_dict() for c in self.curves],
            "crossings": [c.to_dict() for c in self.crossings],
            "allocations": [a.to_dict() for a in self.allocations],
            **self.metadata,
        }

    def entry(self, epsilon: float) -> ScanEntry:
        """The entry at ``epsilon`` (KeyError naming the tolerances there are)."""
        for e in self.entries:
            if e.epsilon == epsilon:
                return e
        raise KeyError(f"no entry at epsilon {epsilon}; the scan has {[e.epsilon for e in self.entries]}")


def read_scan(path: str | os.PathLike[str], *, how_to_make: str | None = None) -> ScanResults:
    """``scan.json`` as :class:`ScanResults`, its format checked.

    Raises:
        FileNotFoundError: no such file (the message says how to make it).
        ValueError: another results format, or a file that lacks what a scan holds.
    """
    from mdl_utils.profiles import read_record

    return read_record(
        path,
        ScanResults.from_dict,
        version=SCAN_FORMAT_VERSION,
        how_to_make=how_to_make or "run `python -m mdl_utils epsilon-scan --profile full`",
        what="an epsilon scan",
    )
