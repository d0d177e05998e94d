"""Chapter 3's MNIST MDL study under the resolved protocol, as one resumable job.

The job (section 5 of the paper brief, with the protocol of :mod:`mdl_utils.protocol`):

1. **Seed 0 at every width** of a doubling grid: for each width, BatchTopK SAEs are trained to
   convergence (plateau learning-rate schedule, early stopping on the validation split,
   data-initialised decoder, AuxK and resampling of dead features) on the grid
   ``k = 2**(j/4)``, until DL against k has a bracketed minimum
   (:func:`mdl_utils.protocol.next_k_index`). Every SAE is measured on the test digits at
   the continuous precision that puts its quantised MSE at epsilon.
2. **Fill-in widths**: the widths a factor sqrt(2) either side of the seed-0 optimum.
3. **More seeds**, widths closest to the optimum first, each seed's search starting at the
   seed-0 minimum and again run until bracketed.

Everything the job decides is a function of the rows it has already written, so a run that is
stopped (Ctrl-C, ``kill -9``, ``--budget-hours``) and started again continues where it was,
and a fresh clone continues from the *committed* rows without retraining them. Trained SAEs
are also cached by configuration (:mod:`mdl_utils.sweep`), and the DL-optimal SAE of each
(width, seed) is stored with float16 weights under ``saes/``; every measurement is taken on
those float16 weights, so reloading them reproduces the recorded numbers exactly.

Command line (resumable; progress on stderr)::

    python -m mdl_utils mnist-sweep --profile full [--out DIR] [--cache DIR]
        [--budget-hours H] [--shard I/N] [--device cpu|cuda] [--threads T]
        [--workers N | --ray-address HOST:PORT]
    python -m mdl_utils mnist-sweep --profile full --summary-only   # summary.json from the rows

``--shard I/N`` runs the I-th of N interleaved shares of the widths, so N processes (one per
core) can run side by side on the same output folder; each width's rows are written by one
process only. ``--workers N`` runs the trainings on a local Ray instance (N at once) and
``--ray-address`` on a Ray cluster (:mod:`mdl_utils.executors`); this process still measures
every SAE and writes every file.

Output folder (``results/full/mnist-mdl`` for the full profile):
``rows/w<width>.json`` (one row per trained SAE: settings, training summary, measurements),
``saes/w<width>-s<seed>.safetensors`` + ``.json`` (each (width, seed)'s DL-optimal SAE, once
its search has finished; until then it waits, uncommitted, in ``saes/pending/``),
``summary.json`` (per-width DL*, the resolution of the optimum, the rereads at other
tolerances, the points A-D, what remains to train, provenance).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdl_utils.profiles import cache_dir as default_cache_dir
from mdl_utils.profiles import choose, parse_job_args, provenance, read_results, write_results
from mdl_utils.protocol import (
    WidthSummary,
    bootstrap_weights,
    index_of_k,
    k_of_index,
    measure_sae,
    next_k_index,
    optimum_index,
    resolve_optimum,
    two_part_bits,
)
from mdl_utils.io import atomic_write_text
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.executors import (
    Executor,
    Progress,
    SerialExecutor,
    Task,
    TaskFailedError,
    add_executor_args,
    executor_from_args,
)
from mdl_utils.sweep import (
    DataSpec,
    SweepData,
    config_key,
    load_cached,
    load_cached_sae,
    prepare_data,
    TrainedPayload,
    store_trained,
    train_cached,
    train_payload,
)
from mdl_utils.train import TrainConfig, resolve_device

__all__ = [
    "StudySettings",
    "study_settings",
    "MSEMeasure",
    "default_measure",
    "run_study",
    "plan",
    "summarise",
    "load_rows",
    "load_study",
    "load_selected_sae",
    "main",
    "RESULTS_FORMAT_VERSION",
]

RESULTS_FORMAT_VERSION = 2


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

    def train_config(self, width: int, k: float, seed: int, device: str = "auto") -> TrainConfig:
        return TrainConfig(**{**self.train, "width": width, "k": k, "seed": seed, "device": device, "progress": False})


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


@dataclass(frozen=True)
class MSEMeasure:
    """How the study measures a trained SAE by default: chapter 3's MSE tolerance.

    A *measure* is any picklable callable ``measure(sae, x_test, boot_weights) -> dict`` whose
    dict has the keys of :class:`mdl_utils.protocol.SAEMeasurement` (its ``to_dict()``) (the study selects
    on ``dl_bits``, None when the SAE misses the tolerance); chapter 7 passes one that holds
    the classifier's cross-entropy to the tolerance instead
    (:class:`mdl_utils.downstream.DownstreamMeasure`). Ray workers receive it with each
    training, so it must pickle.

    Attributes:
        epsilon: the tolerance, test MSE per element.
        other_tolerances: tolerances at which the DL is also read (``dl_at``).
    """

    epsilon: float
    other_tolerances: tuple[float, ...] = ()

    def __call__(self, sae: BatchTopKSAE, x_test: Any, boot_weights: np.ndarray | None = None) -> dict[str, Any]:
        return measure_sae(
            sae, x_test, epsilon=self.epsilon, other_tolerances=self.other_tolerances, boot_weights=boot_weights
        ).to_dict()


Measure = Callable[[BatchTopKSAE, Any, "np.ndarray | None"], dict[str, Any]]


def default_measure(settings: StudySettings) -> MSEMeasure:
    """The study's MSE measure: ``settings.epsilon``, reread at ``settings.reread``."""
    return MSEMeasure(settings.epsilon, tuple(settings.epsilon * r for r in settings.reread))


# --------------------------------------------------------------------------------------------
# Rows on disk
# --------------------------------------------------------------------------------------------


def _rows_path(out: Path, width: int) -> Path:
    return out / "rows" / f"w{width:05d}.json"


def load_rows(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row the study has written under ``out_dir`` (all widths), narrow to wide."""
    rows: list[dict[str, Any]] = []
    for path in sorted((Path(out_dir) / "rows").glob("w*.json")):
        rows.extend(json.loads(path.read_text()))
    return rows


def _write_rows(out: Path, width: int, rows: list[dict[str, Any]]) -> None:
    path = _rows_path(out, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: (r["seed"], r["k_index"]))
    atomic_write_text(path, json.dumps(ordered, indent=1))


def _sae_stem(out: Path, width: int, seed: int, *, pending: bool = False) -> Path:
    """Where the DL-optimal SAE of ``(width, seed)`` is stored: ``saes/`` once its search has
    finished, ``saes/pending/`` (not committed) while the best SAE may still change."""
    return out / "saes" / ("pending" if pending else "") / f"w{width:05d}-s{seed}"


def _finalise_selected(
    settings: StudySettings,
    out: Path,
    rows: Sequence[dict[str, Any]],
    width: int,
    seed: int,
    *,
    data: SweepData,
    cache_path: Path,
    device: str,
    measure: Measure | None = None,
) -> None:
    """Store the DL-optimal SAE of a finished (width, seed) search under ``saes/``.

    It is normally the pending copy the job saved when that row was trained. When the pending
    copy is missing (the rows came from a commit, the SAE from another machine), the row's
    configuration is trained again (training is deterministic on one thread) and its DL must
    equal the row's, or the rows and the weights would disagree: then a ValueError says so.
    """
    final = _sae_stem(out, width, seed)
    mine = [r for r in rows if r["width"] == width and r["seed"] == seed and r["measure"]["dl_bits"] is not None]
    if not mine or final.with_suffix(".json").is_file():
        return
    best = min(mine, key=lambda r: (r["measure"]["dl_bits"], r["k_index"]))
    pending = _sae_stem(out, width, seed, pending=True)
    if pending.with_suffix(".json").is_file() and BatchTopKSAE.load(pending).k == best["k"]:
        final.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            os.replace(pending.with_suffix(suffix), final.with_suffix(suffix))
        return
    config = settings.train_config(width, best["k"], seed, device=device)
    train_cached(config, data, cache_path)
    sae = _compact(load_cached_sae(cache_path, config_key(config, data.fingerprint)))
    measure = measure if measure is not None else default_measure(settings)
    again = measure(sae, data.split("test"), None)["dl_bits"]
    if again is None or not math.isclose(again, best["measure"]["dl_bits"], rel_tol=1e-9):
        raise ValueError(
            f"retraining width {width} seed {seed} at k={best['k']} gives DL {again}, but its row "
            f"records {best['measure']['dl_bits']}: this machine does not reproduce that row; "
            "delete the row to retrain it here"
        )
    _save_compact(sae, final)


def load_selected_sae(out_dir: str | os.PathLike[str], width: int, seed: int) -> BatchTopKSAE:
    """The stored DL-optimal SAE of ``(width, seed)`` (float16 weights, as measured)."""
    stem = _sae_stem(Path(out_dir), width, seed)
    if not stem.with_suffix(".json").is_file():
        raise FileNotFoundError(f"no stored SAE for width {width}, seed {seed} under {out_dir}")
    return BatchTopKSAE.load(stem)


def _compact(sae: BatchTopKSAE) -> BatchTopKSAE:
    """The SAE with its weights rounded to float16 (as stored), in float32 for computing."""
    out = copy.deepcopy(sae)
    with torch.no_grad():
        for t in out.state_dict().values():
            t.copy_(t.half().float())
    return out


def _save_compact(sae: BatchTopKSAE, stem: Path) -> None:
    half = copy.deepcopy(sae).half()
    half.save(stem)


# --------------------------------------------------------------------------------------------
# The search state, derived from rows
# --------------------------------------------------------------------------------------------


def _j_max(width: int) -> int:
    return int(math.floor(4 * math.log2(width) + 1e-9))


def _j_min(settings: StudySettings) -> int:
    return index_of_k(settings.k_min)


def _search_state(rows: Sequence[dict[str, Any]], width: int, seed: int) -> dict[int, float | None]:
    return {r["k_index"]: r["measure"]["dl_bits"] for r in rows if r["width"] == width and r["seed"] == seed}


def _best_index(state: dict[float, float | None], *, whole_only: bool = False) -> float | None:
    feasible = {j: v for j, v in state.items() if v is not None and (not whole_only or float(j).is_integer())}
    return min(feasible, key=lambda j: (feasible[j], j)) if feasible else None


def _search_done(settings: StudySettings, rows: Sequence[dict[str, Any]], width: int, seed: int, start: int) -> bool:
    state = _search_state(rows, width, seed)
    if len(state) >= settings.max_trainings_per_search:
        return True
    return bool(state) and next_k_index(state, start=start, j_max=_j_max(width), j_min=_j_min(settings)) is None


def _start_index(settings: StudySettings, rows: Sequence[dict[str, Any]], width: int, seed: int) -> int:
    if seed != settings.seeds[0]:
        # Further seeds start at seed 0's best whole grid index (then search and refine alike).
        best = _best_index(_search_state(rows, width, settings.seeds[0]), whole_only=True)
        if best is not None:
            return int(best)
    return max(min(index_of_k(settings.k_start), _j_max(width)), _j_min(settings))


def _fill_widths(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Widths a factor sqrt(2) either side of the seed-0 optimum, once every doubling width
    has its seed-0 search finished; [] before that or when ``fill_widths`` is off."""
    if not settings.fill_widths:
        return []
    seed = settings.seeds[0]
    dl_star = {}
    for w in settings.widths:
        if not _search_done(settings, rows, w, seed, _start_index(settings, rows, w, seed)):
            return []
        best = _best_index(_search_state(rows, w, seed))
        if best is not None:
            dl_star[w] = _search_state(rows, w, seed)[best]
    if not dl_star:
        return []
    widths = sorted(dl_star)
    opt = widths[optimum_index([dl_star[w] for w in widths], widths)]  # type: ignore[index]
    fills = []
    for w in (int(round(opt / math.sqrt(2))), int(round(opt * math.sqrt(2)))):
        if min(settings.widths) < w < max(settings.widths) and w not in settings.widths:
            fills.append(w)
    return fills


def plan(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """The (width, seed) searches of the study in priority order (finished ones included)."""
    seed0 = settings.seeds[0]
    fills = _fill_widths(settings, rows)
    tasks = [(w, seed0) for w in settings.widths] + [(w, seed0) for w in fills]
    widths = sorted(set(settings.widths) | set(fills))
    # Further seeds: reachable widths only, the ones whose seed-0 DL* is closest to the best first.
    dl0 = {}
    for w in widths:
        # Further seeds start from seed 0's minimum, so only once that search has finished.
        if not _search_done(settings, rows, w, seed0, _start_index(settings, rows, w, seed0)):
            continue
        best = _best_index(_search_state(rows, w, seed0))
        if best is not None:
            dl0[w] = _search_state(rows, w, seed0)[best]
    if dl0:
        low = min(dl0.values())
        order = sorted(dl0, key=lambda w: (dl0[w] - low, w))
        tasks += [(w, s) for s in settings.seeds[1:] for w in order]
    return tasks


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _row(
    config: TrainConfig, key: str, trained: dict[str, Any], measure: dict[str, Any], j: float, device: str
) -> dict[str, Any]:
    return {
        "width": config.width,
        "seed": config.seed,
        "k_index": j,
        "k": config.k,
        "key": key,
        "device": device,
        "train": {
            name: trained.get(name)
            for name in (
                "epochs",
                "best_epoch",
                "stop_reason",
                "train_seconds",
                "mse_train",
                "mse_val",
                "dead_fraction",
            )
        },
        "measure": measure,
    }


def run_study(
    settings: StudySettings,
    out_dir: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    budget_hours: float | None = None,
    shard: tuple[int, int] = (0, 1),
    device: str = "auto",
    progress: bool = True,
    data: SweepData | None = None,
    log: Callable[[str], None] | None = None,
    threads: int | None = 1,
    executor: Executor | None = None,
    measure: Measure | None = None,
    name: str = "mnist-mdl",
    extra_fields: Sequence[str] = (),
) -> dict[str, Any]:
    """Run (or resume) the study and write its rows, stored SAEs and ``summary.json``.

    Args:
        settings: what to train (see :func:`study_settings`).
        out_dir: the output folder (rows, saes, summary).
        cache: the trained-SAE cache (default: :func:`mdl_utils.profiles.cache_dir`).
        budget_hours: stop starting new trainings after this much wall time (None: no limit);
            finished rows are kept, and the next run continues.
        shard: ``(i, n)``: this process handles the widths whose position in the sorted
            list of all candidate widths is ``i`` modulo ``n``.
        device: the training device (``"auto"``: CUDA when present).
        progress: a progress line per trained SAE on stderr.
        data: the prepared data (default: loaded from the settings).
        threads: torch CPU threads while the job runs (restored afterwards; None: leave as
            is). One thread per process is the default: floating-point sums then do not depend
            on the machine's core count, so the same command gives the same rows on any
            machine of the same kind, and the book's small SAEs train faster on one thread
            than split over two. Use ``shard`` or ``executor`` to spread the job over cores.
        executor: where the trainings run (default: serial, in this process); with a
            :class:`~mdl_utils.executors.RayExecutor`, the next training of every waiting
            search runs side by side (widths and seeds are independent; one search's trainings
            stay in order). This process alone measures the SAEs and writes rows, SAEs and
            the summary, which are the same as a serial run's.
        measure: how each trained SAE is measured on the test split (default:
            :func:`default_measure`, chapter 3's MSE tolerance; see :class:`MSEMeasure`).
        name: the job's name in progress lines.
        extra_fields: further measurement keys the summary copies (see :func:`summarise`).

    Returns:
        The summary (also written to ``out_dir/summary.json``).
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_study(
            settings,
            Path(out_dir),
            cache=cache,
            budget_hours=budget_hours,
            shard=shard,
            device=device,
            progress=progress,
            data=data,
            log=log,
            executor=executor,
            measure=measure,
            name=name,
            extra_fields=extra_fields,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _run_study(
    settings: StudySettings,
    out: Path,
    *,
    cache: str | os.PathLike[str] | None,
    budget_hours: float | None,
    shard: tuple[int, int],
    device: str,
    progress: bool,
    data: SweepData | None,
    log: Callable[[str], None] | None,
    executor: Executor | None = None,
    measure: Measure | None = None,
    name: str = "mnist-mdl",
    extra_fields: Sequence[str] = (),
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cache_path = Path(cache) if cache is not None else default_cache_dir()
    started = time.time()
    deadline = None if budget_hours is None else started + 3600 * budget_hours
    if data is None:
        data = prepare_data(DataSpec(source="mnist", n_train=settings.n_train, n_test=settings.n_test))
    x_test = data.split("test")
    weights = bootstrap_weights(len(x_test), settings.n_boot, seed=0)
    measure = measure if measure is not None else default_measure(settings)
    shard_i, shard_n = shard
    if not (shard_n >= 1 and 0 <= shard_i < shard_n):
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {shard_i}/{shard_n}")
    executor = executor if executor is not None else SerialExecutor()
    serial = isinstance(executor, SerialExecutor)
    # Parallel runs show one progress display for the whole job (searches done / total,
    # trainings running, failed, time left), with the per-SAE lines printed above it.
    display = Progress(0, desc=name, unit="search", enabled=progress and log is None and not serial)
    if log is not None:
        say = log
    elif progress:
        say = display.write
    else:

        def say(msg: str) -> None:
            return None

    data_ref = data if serial else executor.put(data)
    device_name = str(resolve_device(device))
    mine = _shard_widths(settings, shard_i, shard_n)
    stopped_by_budget = False
    # (width, seed) -> (task, config, grid index, start time): at most one training per search
    in_flight: dict[tuple[int, int], tuple[Task, TrainConfig, float, float]] = {}
    n_failed = 0

    def record(
        width: int,
        seed: int,
        config: TrainConfig,
        j: float,
        trained: dict[str, Any],
        trained_on: str,
        t0: float,
        measured: dict[str, Any] | None = None,
    ) -> None:
        """Measure a trained SAE (unless a worker did: ``measured``) and write its row (the
        driver alone writes rows and SAEs)."""
        key = config_key(config, data.fingerprint)
        sae = _compact(load_cached_sae(cache_path, key))
        if measured is None:
            measured = measure(sae, x_test, weights)
        m = measured
        history = json.loads((cache_path / key / "entry.json").read_text()).get("history", {})
        row = _row(config, key, trained, m, j, trained_on)
        row["train"]["curve"] = {
            name: [round(float(e[name]), 7) for e in history.get("epochs", [])]
            for name in ("train_mse", "val_mse", "dead_fraction")
        }
        width_rows = [r for r in load_rows(out) if r["width"] == width] + [row]
        _write_rows(out, width, width_rows)
        new_state = _search_state(width_rows, width, seed)
        if _best_index(new_state) == j:
            _save_compact(sae, _sae_stem(out, width, seed, pending=True))
        dl = "misses eps" if m["dl_bits"] is None else f"DL {m['dl_bits']:.2f} bits"
        say(
            f"[{name}] width {width} seed {seed} k={config.k:g}: MSE {m['mse']:.5f}, {dl}, "
            f"L0 {m['l0']:.2f}, live {m['n_live']}/{width}, epochs {trained['epochs']} "
            f"(best {trained['best_epoch']}, {trained['stop_reason']}), {time.time() - t0:.0f} s"
        )

    def collect(finished: Sequence[Task]) -> TaskFailedError | None:
        """Store and record the finished trainings; return the first failure, if any."""
        nonlocal n_failed
        first_error = None
        for (width, seed), (task, config, j, t0) in list(in_flight.items()):
            if task not in finished:
                continue
            del in_flight[(width, seed)]
            try:
                payload, measured = _unpack(executor.result(task))
            except TaskFailedError as err:
                n_failed += 1
                first_error = first_error or err
                continue
            trained = store_trained(cache_path, config, data.fingerprint, payload)
            record(width, seed, config, j, trained, device_name if serial else payload.device, t0, measured)
        return first_error

    try:
        while True:
            rows = load_rows(out)
            tasks = [(w, s) for (w, s) in plan(settings, rows) if w in mine]
            done = [
                (w, s) for (w, s) in tasks if _search_done(settings, rows, w, s, _start_index(settings, rows, w, s))
            ]
            for w, s in done:
                _finalise_selected(
                    settings, out, rows, w, s, data=data, cache_path=cache_path, device=device, measure=measure
                )
            todo = [t for t in tasks if t not in done]
            display.update(total=len(tasks), done=len(done), running=len(in_flight), failed=n_failed, trained=len(rows))
            if not todo and not in_flight:
                break
            over = deadline is not None and time.time() > deadline
            if over:
                stopped_by_budget = True
                if not in_flight:
                    break
            # Start the next training of each waiting search, highest priority first.
            recorded = False
            for width, seed in [] if over else todo:
                if len(in_flight) >= executor.capacity:
                    break
                if (width, seed) in in_flight:
                    continue
                start = _start_index(settings, rows, width, seed)
                j = next_k_index(
                    _search_state(rows, width, seed), start=start, j_max=_j_max(width), j_min=_j_min(settings)
                )
                assert j is not None
                config = settings.train_config(width, k_of_index(j), seed, device=device)
                say(f"[{name}] width {width} seed {seed}: training k={config.k:g} (grid index {j})")
                t0 = time.time()
                cached = load_cached(cache_path, config, data.fingerprint)
                if cached is not None:
                    record(width, seed, config, j, cached, device_name, t0)
                    recorded = True
                    break  # the rows changed: plan again
                if serial:
                    task = executor.submit(train_payload, config, data_ref, tag=(width, seed, config.k))
                else:  # the worker also measures the SAE, so the driver is never the bottleneck
                    task = executor.submit(
                        _train_and_measure, config, data_ref, measure, settings.n_boot, tag=(width, seed, config.k)
                    )
                in_flight[(width, seed)] = (task, config, j, t0)
                if serial:
                    break  # serial: one training, then plan again (as the job always did)
            if recorded or not in_flight:
                continue
            display.update(total=len(tasks), done=len(done), running=len(in_flight), failed=n_failed, trained=len(rows))
            first_error = collect(executor.wait([t for (t, _, _, _) in in_flight.values()]))
            if first_error is not None:
                # Keep what the other trainings finish, then report the failure.
                while in_flight:
                    collect(executor.wait([t for (t, _, _, _) in in_flight.values()]))
                raise first_error
    finally:
        display.close()

    summary = summarise(settings, load_rows(out), d_in=int(x_test.shape[1]), extra_fields=extra_fields)
    summary.update(provenance(started))
    summary["stopped_by_budget"] = stopped_by_budget
    summary["executor"] = executor.describe()
    write_results(out / "summary.json", summary)
    return summary


def _train_and_measure(
    config: TrainConfig, data: SweepData, measure: Measure, n_boot: int
) -> tuple[TrainedPayload, dict[str, Any]]:
    """A worker's task: train, then measure the float16-rounded SAE on the test split exactly
    as the driver would (same bootstrap replicates), so the rows do not depend on who measured."""
    payload = train_payload(config, data)
    x_test = data.split("test")
    return payload, measure(_compact(payload.sae), x_test, bootstrap_weights(len(x_test), n_boot, seed=0))


def _unpack(value: Any) -> tuple[TrainedPayload, dict[str, Any] | None]:
    return (value[0], value[1]) if isinstance(value, tuple) else (value, None)


def _shard_widths(settings: StudySettings, shard_i: int, shard_n: int) -> set[int]:
    """The widths one shard trains: every n-th of the doubling grid and every n-th of the
    possible sqrt(2) fill-ins, so that shards share the cheap and the costly widths."""
    grid = sorted(settings.widths)
    fills = sorted(
        {
            c
            for w in grid
            for c in (int(round(w / math.sqrt(2))), int(round(w * math.sqrt(2))))
            if grid[0] < c < grid[-1] and c not in grid
        }
    )
    return {w for i, w in enumerate(grid) if i % shard_n == shard_i} | {
        w for i, w in enumerate(fills) if i % shard_n == shard_i
    }


# --------------------------------------------------------------------------------------------
# Summary: DL* per width, resolution, rereads, points
# --------------------------------------------------------------------------------------------


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
            if complete_only and not _search_done(
                settings, rows, width, seed, _start_index(settings, rows, width, seed)
            ):
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
            done = _search_done(settings, rows, width, seed, _start_index(settings, rows, width, seed))
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
                    bracketed=_bracketed(mine, sel["k_index"], width, _j_min(settings)),
                )
                seed_entry.update({f: m.get(f) for f in extra_fields})
            entry["seeds"][str(seed)] = seed_entry
        per_width.append(entry)

    summaries = _width_summaries(settings, rows, lambda r: r["measure"]["dl_bits"])
    resolution = resolve_optimum(summaries).to_dict() if summaries else None
    rereads = {}
    for ratio in settings.reread:
        key = f"{settings.epsilon * ratio:.6g}"
        at = _width_summaries(settings, rows, lambda r, key=key: r["measure"]["dl_at"].get(key))
        rereads[key] = resolve_optimum(at).to_dict() if at else None
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
        if not _search_done(settings, rows, w, s, _start_index(settings, rows, w, s))
    ]
    for res in [resolution, *rereads.values()]:
        if res is not None:
            # Widths or seeds still to come can change the optimum: never final before they are in.
            res["provisional"] = bool(remaining)
            res["resolved"] = res["resolved"] and not remaining
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "settings": asdict(settings),
        "epsilon": settings.epsilon,
        "n_saes_trained": len(rows),
        "training_time_s": round(sum(r["train"]["train_seconds"] or 0.0 for r in rows), 1),
        "devices": sorted({r.get("device", "cpu") for r in rows}),
        "widths": per_width,
        "dl_star": table,
        "resolution": resolution,
        "rereads": rereads,
        "points": points_from(per_width, resolution, seed0),
        "remaining": [list(t) for t in remaining],
        "complete": not remaining,
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

    return holds(max(below) if below else None, j <= j_min) and holds(min(above) if above else None, j >= _j_max(width))


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
# Reading a finished (or partial) study
# --------------------------------------------------------------------------------------------


def load_study(out_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The study's ``summary.json`` and all its rows.

    Raises:
        FileNotFoundError: no summary (the message says how to make it).
        ValueError: another results format.
    """
    out = Path(out_dir)
    summary = read_results(
        out / "summary.json",
        version=RESULTS_FORMAT_VERSION,
        how_to_make=f"run `python -m mdl_utils mnist-sweep --profile full --out {out}` to compute it",
    )
    return summary, load_rows(out)


def main(argv: list[str]) -> int:
    """``python -m mdl_utils mnist-sweep``: run or resume the chapter-3 study."""

    def extra(parser: Any) -> None:
        parser.add_argument(
            "--budget-hours",
            type=float,
            default=None,
            help="stop starting new trainings after this many hours (resumable)",
        )
        parser.add_argument("--shard", default="0/1", help="I/N: run the I-th of N shares of the widths")
        parser.add_argument("--device", default="auto", help="training device: auto, cpu or cuda")
        parser.add_argument(
            "--summary-only", action="store_true", help="only rewrite summary.json from the rows on disk (no training)"
        )
        add_executor_args(parser)

    args = parse_job_args(
        argv, prog="python -m mdl_utils mnist-sweep", doc=__doc__, out_subdir="mnist-mdl", extra=extra
    )
    try:
        shard_i, shard_n = (int(p) for p in args.shard.split("/"))
    except ValueError:
        print(f"error: --shard must look like I/N (e.g. 0/2), got {args.shard!r}", file=sys.stderr)
        return 2
    if args.summary_only:
        started = time.time()
        summary = summarise(study_settings(args.profile), load_rows(args.out))
        summary.update(provenance(started))
        summary["stopped_by_budget"] = False
        write_results(Path(args.out) / "summary.json", summary)
        print(f"wrote {Path(args.out) / 'summary.json'} from {summary['n_saes_trained']} rows")
        return 0
    threads = args.threads if args.threads is not None else 1
    try:
        executor = executor_from_args(args, device=args.device, threads=threads)
    except (ValueError, ConnectionError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with executor:
            summary = run_study(
                study_settings(args.profile),
                args.out,
                cache=args.cache,
                budget_hours=args.budget_hours,
                shard=(shard_i, shard_n),
                device=args.device,
                progress=not args.no_progress,
                threads=threads,
                executor=executor,
            )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    res = summary["resolution"]
    verdict = (
        "none yet"
        if res is None
        else (f"width {res['optimum']} ({'resolved' if res['resolved'] else 'tie set ' + str(res['tie_set'])})")
    )
    print(
        f"wrote {Path(args.out) / 'summary.json'}: {summary['n_saes_trained']} SAEs; optimum {verdict}; "
        f"{'complete' if summary['complete'] else str(len(summary['remaining'])) + ' searches remain'}"
    )
    return 0
