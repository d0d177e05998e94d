"""Chapter 3's study, part 1: its settings, and which SAE to train next, read from the rows.

The study (:mod:`mdl_utils.study`) writes one row per trained SAE; everything it decides is
a function of the rows already written, so a stopped job resumes where it was. This module
holds those decisions: for each (width, seed) the state of its k search (the DL of each grid
index trained so far), whether the search is over (:func:`mdl_utils.protocol.next_k_index`
has nothing left to try), where a further seed's search starts (seed 0's minimum), and the
plan: every width's seed 0, then the fill-in widths around the seed-0 optimum, then the
other seeds, widths closest to the optimum first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mdl_utils.profiles import choose
from mdl_utils.protocol import index_of_k, next_k_index
from mdl_utils.resolution import optimum_index
from mdl_utils.train import TrainConfig

__all__ = [
    "StudySettings",
    "RECIPE",
    "QUICK_RECIPE",
    "study_settings",
    "j_max",
    "j_min",
    "search_state",
    "best_index",
    "best_dl",
    "search_done",
    "start_index",
    "doubling_widths",
    "narrower_widths",
    "possible_narrower_widths",
    "seed0_dl_star",
    "optimal_width",
    "widths_not_searched",
    "widths_one_seed",
    "widths_below_min_width",
    "plan",
]


@dataclass(frozen=True)
class StudySettings:
    """What the study trains and how it selects and compares SAEs.

    Attributes:
        n_train, n_test: MNIST digits used (first n; ``None``: all); a tenth of the training
            digits is the validation split that decides early stopping.
        widths: the doubling grid of widths, always run.
        fill_widths: add the widths a factor sqrt(2) either side of the seed-0 optimum.
        epsilon: the tolerance, test MSE per pixel.
        reread: other tolerances, as multiples of epsilon, at which the same SAEs are reread.
        seeds: training seeds; the first is run at every width before any other.
        k_start: first k tried at every width (snapped to the grid ``2**(j/4)``).
        k_min: the smallest k the search may try (snapped to the grid). BatchTopK's k is a
            batch average, so k below 1 is meaningful (``round(k * batch_size)`` activations
            per batch); loose tolerances need it (chapter 6's epsilon scan).
        n_boot: bootstrap replicates over test digits.
        max_trainings_per_search: cap on the k search of one (width, seed).
        train: TrainConfig fields shared by every SAE (width, k, seed are set per SAE).
        stop_widening: ``None`` (chapter 3): every doubling width is searched. Otherwise (the
            epsilon scan, to keep its cost within reach of a CPU) seed 0's doubling widths are
            searched narrowest first, and once two consecutive ones have a finished seed-0
            DL* above ``(1 + stop_widening)`` times the smallest DL* of the narrower widths,
            no wider doubling width is searched (:func:`doubling_widths`).
        extend_down_to: ``None`` (chapter 3): the doubling grid is ``widths``. Otherwise (the
            epsilon scan) the grid is extended at its narrow end until it brackets the
            optimum: once every planned doubling width has its seed-0 search finished, if the
            narrowest of them is seed 0's optimum, half that width is searched too, and so on,
            down to this width at the narrowest (:func:`narrower_widths`).
        replicate_within: ``None`` (chapter 3): the further seeds search every reachable
            width. Otherwise (the epsilon scan, for cost) they search only the widths whose
            finished seed-0 DL* is at most ``(1 + replicate_within)`` times the smallest
            finished seed-0 DL*; the others keep one seed (:func:`widths_one_seed`), and the
            optimum's comparison lends them the pooled seed spread
            (:func:`mdl_utils.resolution.resolve_optimum`).
        min_width: ``None``: every width may be searched. Otherwise no width below it is
            searched, doubling, fill-in or below the grid (:func:`widths_below_min_width`).
            Meant for a width no SAE can reach: chapter 8 sets it, for an MSE tolerance, to
            the narrowest width whose rank bound (:func:`mdl_utils.bounds.rank_mse_bound`, a
            floor under the test MSE of every SAE of that width) is within the tolerance, so
            that no training is spent confirming a miss the bound already proves.
    """

    n_train: int | None
    n_test: int | None
    widths: tuple[int, ...]
    fill_widths: bool = True
    epsilon: float = 0.015
    reread: tuple[float, ...] = (0.98, 1.02)
    seeds: tuple[int, ...] = (0, 1, 2)
    k_start: float = 11.31
    n_boot: int = 200
    k_min: float = 1.0
    max_trainings_per_search: int = 12
    train: dict[str, Any] = field(default_factory=dict)
    stop_widening: float | None = None
    extend_down_to: int | None = None
    replicate_within: float | None = None
    min_width: int | None = None

    def __post_init__(self) -> None:
        for name in ("stop_widening", "replicate_within"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
            ):
                raise ValueError(f"{name} must be None or a positive number, got {value!r}")
        if self.min_width is not None and not (
            isinstance(self.min_width, int) and not isinstance(self.min_width, bool) and self.min_width >= 1
        ):
            raise ValueError(f"min_width must be None or a positive whole number, got {self.min_width!r}")
        if self.extend_down_to is not None and not (
            isinstance(self.extend_down_to, int) and 1 <= self.extend_down_to <= min(self.widths)
        ):
            raise ValueError(
                f"extend_down_to must be None or a whole number from 1 to the narrowest width "
                f"({min(self.widths)}), got {self.extend_down_to!r}"
            )

    def train_config(self, width: int, k: float, seed: int, device: str = "auto") -> TrainConfig:
        return TrainConfig(**{**self.train, "width": width, "k": k, "seed": seed, "device": device, "progress": False})

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict form, as results files record it (``stop_widening``,
        ``extend_down_to``, ``replicate_within`` and ``min_width`` only when set, so that files
        written before they existed read and write back unchanged)."""
        out = asdict(self)
        for name in ("stop_widening", "extend_down_to", "replicate_within", "min_width"):
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySettings:
        """Read the form :meth:`to_dict` writes (lists back to tuples)."""
        settings = dict(d)
        for name in ("widths", "reread", "seeds"):
            settings[name] = tuple(settings[name])
        return cls(**settings)


#: The training recipe of the study (see :class:`mdl_utils.train.TrainConfig`).
RECIPE: dict[str, Any] = {
    "batch_size": 1024,
    "max_epochs": 300,
    "patience": 5,
    "min_rel_improvement": 1e-3,
    "lr_schedule": "plateau",
    "lr_factor": 0.3,
    "lr_reductions": 3,
    "decoder_init": "data",
    "resample_every": 5,
    "resample_until": 25,
}


#: The quick profile's recipe (CI): smaller batches and looser convergence thresholds.
QUICK_RECIPE: dict[str, Any] = {
    **RECIPE,
    "batch_size": 256,
    "max_epochs": 150,
    "patience": 3,
    "lr_reductions": 2,
    "min_rel_improvement": 2e-3,
    "resample_every": 5,
    "resample_until": 10,
}


def study_settings(profile: str) -> StudySettings:
    """The study's settings for a profile: ``quick`` (minutes, CI) or ``full`` (paper scale)."""
    return choose(
        profile,
        quick=StudySettings(
            n_train=6_000,
            n_test=2_000,
            widths=(64, 128, 256),
            fill_widths=False,
            seeds=(0, 1),
            k_start=16.0,
            n_boot=100,
            train=dict(QUICK_RECIPE),
        ),
        full=StudySettings(
            n_train=None,
            n_test=None,
            widths=(32, 64, 128, 256, 512, 1024, 2048, 4096),
            train=dict(RECIPE),
        ),
    )


# --------------------------------------------------------------------------------------------
# The search state, derived from rows
# --------------------------------------------------------------------------------------------


def j_max(width: int) -> int:
    """The largest grid index a width's search may try (k = width)."""
    return int(math.floor(4 * math.log2(width) + 1e-9))


def j_min(settings: StudySettings) -> int:
    """The smallest grid index any search may try (``settings.k_min`` on the grid)."""
    return index_of_k(settings.k_min)


def search_state(rows: Sequence[dict[str, Any]], width: int, seed: int) -> dict[float, float | None]:
    """The grid indices trained for ``(width, seed)`` and their DL (``None``: missed epsilon)."""
    return {r["k_index"]: r["measure"]["dl_bits"] for r in rows if r["width"] == width and r["seed"] == seed}


def best_index(state: Mapping[float, float | None], *, whole_only: bool = False) -> float | None:
    """The grid index with the smallest DL (ties: the smaller index); ``whole_only`` ignores
    the half steps; ``None`` when no SAE met the tolerance."""
    feasible = {j: v for j, v in state.items() if v is not None and (not whole_only or float(j).is_integer())}
    return min(feasible, key=lambda j: (feasible[j], j)) if feasible else None


def best_dl(state: Mapping[float, float | None]) -> float | None:
    """The smallest DL in a search's state (``None`` when no SAE met the tolerance)."""
    feasible = [v for v in state.values() if v is not None]
    return min(feasible) if feasible else None


def search_done(settings: StudySettings, rows: Sequence[dict[str, Any]], width: int, seed: int, start: int) -> bool:
    """Whether the k search of ``(width, seed)`` begun at ``start`` is over (bracketed,
    unreachable, or at ``settings.max_trainings_per_search``)."""
    state = search_state(rows, width, seed)
    if len(state) >= settings.max_trainings_per_search:
        return True
    return bool(state) and next_k_index(state, start=start, j_max=j_max(width), j_min=j_min(settings)) is None


def start_index(settings: StudySettings, rows: Sequence[dict[str, Any]], width: int, seed: int) -> int:
    """The first grid index of a search: seed 0's best whole index for later seeds (once
    known), else ``settings.k_start`` on the grid."""
    if seed != settings.seeds[0]:
        # Further seeds start at seed 0's best whole grid index (then search and refine alike).
        best = best_index(search_state(rows, width, settings.seeds[0]), whole_only=True)
        if best is not None:
            return int(best)
    return max(min(index_of_k(settings.k_start), j_max(width)), j_min(settings))


def _width_rule(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> tuple[list[int], bool]:
    """The doubling widths planned so far, and whether the width rule has fired."""
    widths = sorted(w for w in settings.widths if w >= (settings.min_width or 1))
    if settings.stop_widening is None:
        return widths, False
    seed = settings.seeds[0]
    out: list[int] = []
    low = math.inf
    rises = 0
    pending = 0
    for w in widths:
        if rises >= 2:
            return out, True
        if pending >= 2:
            break
        out.append(w)
        if pending or not search_done(settings, rows, w, seed, start_index(settings, rows, w, seed)):
            pending += 1
            continue
        dl = best_dl(search_state(rows, w, seed))
        if dl is None:
            continue
        rises = rises + 1 if dl > (1 + settings.stop_widening) * low else 0
        low = min(low, dl)
    return out, False


def doubling_widths(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> list[int]:
    """The doubling widths whose seed-0 searches are planned, narrowest first.

    Every width of ``settings.widths`` when ``settings.stop_widening`` is None. Otherwise the
    widths up to the point where two consecutive finished seed-0 searches each gave a DL*
    above ``(1 + stop_widening)`` times the smallest DL* among the widths before it (an
    unreachable width, which misses the tolerance at every k, never counts as a rise). While
    a narrower width's search is unfinished the rule cannot be read past it, so at most one
    further width runs ahead of it. Preceded by the widths below the grid that
    :func:`narrower_widths` adds (``settings.extend_down_to``).
    """
    kept = _width_rule(settings, rows)[0]
    return narrower_widths(settings, rows, kept) + kept


def narrower_widths(
    settings: StudySettings, rows: Sequence[dict[str, Any]], planned: Sequence[int] | None = None
) -> list[int]:
    """The widths below ``settings.widths`` that extend the grid until it brackets seed 0's
    optimum, narrowest first ([] when ``settings.extend_down_to`` is None).

    Once every planned width (``planned``, default the width rule's, :func:`doubling_widths`
    without this extension) has its seed-0 search finished, and the narrowest planned width
    is seed 0's optimum among them (the smallest DL*, ties to the narrower, as
    :func:`mdl_utils.resolution.optimum_index`), half that width is added; and again once it
    has finished, down to ``extend_down_to``. An unreachable narrowest width (it misses the
    tolerance at every k) is not an optimum, so the grid is then already bracketed.
    """
    floor = settings.extend_down_to
    if floor is None:
        return []
    grid = sorted(_width_rule(settings, rows)[0] if planned is None else planned)
    added: list[int] = []
    while grid:
        dl = seed0_dl_star(settings, rows, grid)
        if not dl:
            return added
        half = grid[0] // 2
        if optimal_width(dl) != grid[0] or half < max(floor, settings.min_width or 1):
            return added
        added.insert(0, half)
        grid.insert(0, half)
    return added


def possible_narrower_widths(settings: StudySettings) -> list[int]:
    """Every width :func:`narrower_widths` could ever add: ``settings.widths``' narrowest
    halved repeatedly down to ``settings.extend_down_to``, narrowest first ([] when off)."""
    floor = settings.extend_down_to
    below: list[int] = []
    if floor is None:
        return below
    w = min(settings.widths) // 2
    while w >= max(floor, settings.min_width or 1):
        below.insert(0, w)
        w //= 2
    return below


def seed0_dl_star(
    settings: StudySettings, rows: Sequence[dict[str, Any]], widths: Sequence[int]
) -> dict[int, float] | None:
    """Seed 0's DL* (smallest DL over k) at each of ``widths`` that met the tolerance, once
    every one of their seed-0 searches has finished; ``None`` while one is unfinished.
    Unreachable widths (no k met the tolerance) are left out, so the dict may be empty."""
    dl, all_finished = _finished_seed0_dl(settings, rows, widths)
    return dl if all_finished else None


def _finished_seed0_dl(
    settings: StudySettings, rows: Sequence[dict[str, Any]], widths: Sequence[int]
) -> tuple[dict[int, float], bool]:
    """Seed 0's DL* at those of ``widths`` whose seed-0 search has finished and met the
    tolerance, and whether every one of their searches has finished."""
    seed = settings.seeds[0]
    dl: dict[int, float] = {}
    all_finished = True
    for w in widths:
        if not search_done(settings, rows, w, seed, start_index(settings, rows, w, seed)):
            all_finished = False
            continue
        best = best_dl(search_state(rows, w, seed))
        if best is not None:
            dl[w] = best
    return dl, all_finished


def optimal_width(dl_star: Mapping[int, float]) -> int:
    """The width with the smallest DL* (ties to the narrower, as
    :func:`mdl_utils.resolution.optimum_index`); ``dl_star`` must not be empty."""
    if not dl_star:
        raise ValueError("optimal_width needs at least one width with a DL*")
    widths = sorted(dl_star)
    best_at = optimum_index([dl_star[w] for w in widths], widths)
    assert best_at is not None  # every width has a DL
    return widths[best_at]


def widths_not_searched(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> list[int]:
    """The doubling widths the width rule has ruled out: none while it is off or has not
    fired (widths merely waiting for a narrower search to finish are not listed). A width
    whose seed-0 search ran ahead and trained before the rule fired is listed as well: no
    further seed trains it, though its rows stay."""
    kept, fired = _width_rule(settings, rows)
    allowed = [w for w in sorted(settings.widths) if w not in widths_below_min_width(settings)]
    return [w for w in allowed if w not in kept] if fired else []


def widths_below_min_width(settings: StudySettings) -> list[int]:
    """The doubling widths below ``settings.min_width``, never searched ([] when unset)."""
    return [w for w in sorted(settings.widths) if settings.min_width is not None and w < settings.min_width]


def _fill_widths(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Widths a factor sqrt(2) either side of the seed-0 optimum, once every planned doubling
    width (:func:`doubling_widths`) has its seed-0 search finished; [] before that or when
    ``fill_widths`` is off."""
    if not settings.fill_widths:
        return []
    doubling = doubling_widths(settings, rows)
    dl_star = seed0_dl_star(settings, rows, doubling)
    if not dl_star:
        return []
    opt = optimal_width(dl_star)
    fills = []
    for w in (int(round(opt / math.sqrt(2))), int(round(opt * math.sqrt(2)))):
        if min(doubling) < w < max(doubling) and w not in settings.widths:
            fills.append(w)
    return fills


def plan(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """The (width, seed) searches of the study in priority order (finished ones included)."""
    seed0 = settings.seeds[0]
    fills = _fill_widths(settings, rows)
    doubling = doubling_widths(settings, rows)
    tasks = [(w, seed0) for w in doubling] + [(w, seed0) for w in fills]
    widths = sorted(set(doubling) | set(fills))
    # Further seeds: reachable widths only, the ones whose seed-0 DL* is closest to the best first.
    dl0, replicated = _replicated(settings, rows, widths)
    if replicated:
        low = min(dl0.values())
        order = sorted(replicated, key=lambda w: (dl0[w] - low, w))
        tasks += [(w, s) for s in settings.seeds[1:] for w in order]
    return tasks


def _replicated(
    settings: StudySettings, rows: Sequence[dict[str, Any]], widths: Sequence[int]
) -> tuple[dict[int, float], list[int]]:
    """Seed 0's DL* at the ``widths`` whose seed-0 search has finished and met the
    tolerance, and those of them the further seeds search (all, or those within
    ``settings.replicate_within`` of the smallest), narrowest first."""
    # Further seeds start from seed 0's minimum, so only once that search has finished.
    dl0 = _finished_seed0_dl(settings, rows, widths)[0]
    if not dl0 or settings.replicate_within is None:
        return dl0, sorted(dl0)
    bound = (1 + settings.replicate_within) * min(dl0.values())
    return dl0, sorted(w for w in dl0 if dl0[w] <= bound)


def widths_one_seed(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> list[int]:
    """The reachable widths the further seeds do not search because their seed-0 DL* is more
    than ``settings.replicate_within`` above the smallest (narrowest first; [] when the rule
    is off). Read against the finished seed-0 searches so far, so the list can grow as they
    finish; rows a further seed trained before a width left the list stay in the results."""
    if settings.replicate_within is None:
        return []
    widths = sorted(set(doubling_widths(settings, rows)) | set(_fill_widths(settings, rows)))
    dl0, replicated = _replicated(settings, rows, widths)
    return [w for w in sorted(dl0) if w not in replicated]
