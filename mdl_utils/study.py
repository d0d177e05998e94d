"""Chapter 3's MNIST MDL study under the resolved protocol, as one resumable job.

The job (section 5 of the paper brief, with the protocol of :mod:`mdl_utils.protocol`):

1. **Seed 0 at every width** of a doubling grid: for each width, BatchTopK SAEs are trained to
   convergence (plateau learning-rate schedule, early stopping on the validation split,
   data-initialised decoder, AuxK and resampling of dead features) on the grid
   ``k = 2**(j/4)``, until DL against k has a bracketed minimum
   (:func:`mdl_utils.protocol.next_k_index`, planned by :mod:`mdl_utils.study_plan`). Every SAE is measured on the test digits at
   the continuous precision that puts its quantised MSE at epsilon.
2. **Fill-in widths**: the widths a factor sqrt(2) either side of the seed-0 optimum.
3. **More seeds**, widths closest to the optimum first, each seed's search starting at the
   seed-0 minimum and again run until bracketed.

Everything the job decides is a function of the rows it has already written, so a run that is
stopped (Ctrl-C, ``kill -9``, ``--budget-hours``) and started again continues where it was,
and a fresh clone continues from the *committed* rows without retraining them. Trained SAEs
are also cached by configuration (:mod:`mdl_utils.cache`), and the DL-optimal SAE of each
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

The settings and the plan of the searches are in :mod:`mdl_utils.study_plan`, the summary
in :mod:`mdl_utils.study_summary`; this module trains, measures and writes.

Output folder (``results/full/mnist-mdl`` for the full profile):
``rows/w<width>.json`` (one row per trained SAE: settings, training summary, measurements),
``saes/w<width>-s<seed>.safetensors`` + ``.json`` (each (width, seed)'s DL-optimal SAE, once
its search has finished; until then it waits, uncommitted, in ``saes/pending/``),
``summary.json`` (per-width DL*, the resolution of the optimum, the rereads at other
tolerances, the points A-D, what remains to train, provenance).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdl_utils.profiles import cache_dir as default_cache_dir
from mdl_utils.jobs import job_parser, parse_job, run_job, training_options
from mdl_utils.profiles import provenance, write_results
from mdl_utils.protocol import (
    REL_BAND,
    bootstrap_weights,
    k_of_index,
    measure_sae,
    next_k_index,
)
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.executors import (
    Executor,
    Progress,
    ProgressMode,
    SerialExecutor,
    Task,
    TaskFailedError,
    check_progress_mode,
)
from mdl_utils.cache import (
    TrainedPayload,
    config_key,
    load_cached,
    load_cached_sae,
    store_trained,
    train_cached,
    train_payload,
)
from mdl_utils.data import DataSpec, SweepData, prepare_data
from mdl_utils.study_plan import (
    StudySettings,
    best_index,
    j_max,
    j_min,
    plan,
    possible_narrower_widths,
    search_done,
    search_state,
    start_index,
    study_settings,
)
from mdl_utils.study_store import (
    STORED_SAE_LIMIT_BYTES,
    compact,
    load_rows,
    sae_stem,
    save_compact,
    stored_sae_bytes,
    write_rows,
)
from mdl_utils.study_summary import summarise
from mdl_utils.train import TrainConfig, device_label, resolve_device

__all__ = [
    "PRECISION_RULE",
    "MSEMeasure",
    "stale_precision",
    "default_measure",
    "run_study",
    "main",
]


@dataclass(frozen=True)
class MSEMeasure:
    """How the study measures a trained SAE by default: chapter 3's MSE tolerance.

    A *measure* is any picklable callable ``measure(sae, x_test, boot_weights) -> dict`` whose
    dict has the keys of :class:`mdl_utils.protocol.SAEMeasurement` (its ``to_dict()``) (the study selects
    on ``dl_bits``, None when the SAE misses the tolerance); chapter 7 passes one that holds
    the classifier's cross-entropy to the tolerance instead
    (:class:`mdl_utils.downstream_measure.DownstreamMeasure`). Ray workers receive it with each
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

#: The continuous-precision rule a row's measurement used, kept in its ``measure`` dict. Rule 1
#: (rows without the key) stopped the bisection at 40 bits at once when the unquantised loss
#: already lay within ``REL_BAND`` below the tolerance; rule 2 bisects there too, to where the
#: quantised loss crosses the tolerance (:func:`mdl_utils.protocol.bisect_precision`).
#: Elsewhere the two rules agree.
PRECISION_RULE = 2

#: Which measurement key holds the unquantised loss that the tolerance applies to, by the
#: measure's ``loss`` (rows without one hold the reconstruction MSE to it).
_RAW_LOSS_KEYS = {"mse": "mse", "ce": "ce_increase", "embedding": "embedding_change"}


def stale_precision(row: dict[str, Any]) -> bool:
    """Whether a row was measured under precision rule 1 at a tolerance where rule 2 differs:
    its unquantised loss lies within ``REL_BAND`` below its tolerance or below one of the
    tolerances it rereads (``dl_at``), and it lacks ``precision_rule`` 2. Such rows recorded
    a DL at 40 bits there, and :func:`run_study` measures them again."""
    m = row["measure"]
    if int(m.get("precision_rule", 1)) >= PRECISION_RULE:
        return False
    key = _RAW_LOSS_KEYS.get(str(m.get("loss", "mse")))
    if key is None or m.get(key) is None:
        return False
    raw = float(m[key])
    # ``dl_at`` keys hold the tolerance to 6 significant digits: a row that rounding puts at the
    # band's edge is measured again, which costs time but changes nothing when rule 1 was right.
    tolerances = [float(m["epsilon"]), *(float(t) for t in m.get("dl_at") or {})]
    return any((1.0 - REL_BAND) * t <= raw <= t for t in tolerances)


def _remeasure_stale(
    settings: StudySettings,
    out: Path,
    widths: set[int],
    *,
    data: SweepData,
    cache_path: Path,
    device: str,
    measure: Measure,
    weights: np.ndarray,
    say: Callable[[str], None],
    name: str,
) -> None:
    """Measure again the rows of ``widths`` that :func:`stale_precision` flags, and drop a
    stored SAE that the new DLs no longer select (the job stores the right one when it
    finalises the search).

    The SAE measured is the search's stored one (``saes/``, or its pending copy) where that is
    the row's k, else the cached one, trained again where the cache lacks it (training is
    deterministic on one thread of one machine type). It must give the row's test MSE. A row
    whose SAE cannot be had here (stored nowhere and trained on another kind of device, or
    retraining gives another test MSE) stands, and a RuntimeWarning names it."""
    x_test = data.split("test")
    here = resolve_device(device).type
    for row in [r for r in load_rows(out) if r["width"] in widths and stale_precision(r)]:
        width, seed, k = int(row["width"]), int(row["seed"]), float(row["k"])
        what = f"width {width} seed {seed} k={k:g}"
        stems = [sae_stem(out, width, seed), sae_stem(out, width, seed, pending=True)]
        stored = [BatchTopKSAE.load(p) for p in stems if p.with_suffix(".json").is_file()]
        sae = next((compact(s) for s in stored if math.isclose(s.k, k, rel_tol=1e-9)), None)
        source = "its stored SAE"
        if sae is None:
            config = settings.train_config(width, k, seed, device=device)
            if device_kind(row.get("device", "cpu")) != here or config_key(config, data.fingerprint) != row["key"]:
                warnings.warn(
                    f"{what}: measured under precision rule 1 at the edge of a tolerance, but its SAE "
                    f"(trained on {row.get('device', 'cpu')}, not stored) cannot be reproduced here; "
                    "the row stands",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            train_cached(config, data, cache_path)
            sae = compact(load_cached_sae(cache_path, row["key"]))
            source = "its SAE trained here"
        m = measure(sae, x_test, weights)
        if not math.isclose(m["mse"], row["measure"]["mse"], rel_tol=1e-9):
            warnings.warn(
                f"{what}: {source} gives test MSE {m['mse']}, but its row records "
                f"{row['measure']['mse']} (trained on another machine type); the row stands",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        m["precision_rule"] = PRECISION_RULE
        width_rows = [r for r in load_rows(out) if r["width"] == width]
        for r in width_rows:
            if r["seed"] == seed and r["k_index"] == row["k_index"]:
                r["measure"] = m
        write_rows(out, width, width_rows)
        old, new = row["measure"]["dl_bits"], m["dl_bits"]
        say(f"[{name}] {what}: measured again (precision rule {PRECISION_RULE}): DL {old} -> {new} bits")
        final = sae_stem(out, width, seed)
        feasible = [r for r in width_rows if r["seed"] == seed and r["measure"]["dl_bits"] is not None]
        if final.with_suffix(".json").is_file() and feasible:
            best = min(feasible, key=lambda r: (r["measure"]["dl_bits"], r["k_index"]))
            if BatchTopKSAE.load(final).k != best["k"]:
                for suffix in (".safetensors", ".json"):
                    final.with_suffix(suffix).unlink(missing_ok=True)


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
    configuration is trained again (training is deterministic on one thread) and stored only
    when its DL equals the row's. Otherwise the row stands and no SAE is stored: when the row
    came from another kind of device (a GPU row whose search finishes on a CPU, never
    retrained), when the SAE is over the repository's file limit (:data:`STORED_SAE_LIMIT_BYTES`,
    never retrained), and when the retrained DL differs (a row from another type of CPU; a
    RuntimeWarning says so).
    """
    final = sae_stem(out, width, seed)
    mine = [r for r in rows if r["width"] == width and r["seed"] == seed and r["measure"]["dl_bits"] is not None]
    if not mine or final.with_suffix(".json").is_file():
        return
    best = min(mine, key=lambda r: (r["measure"]["dl_bits"], r["k_index"]))
    pending = sae_stem(out, width, seed, pending=True)
    if pending.with_suffix(".json").is_file() and BatchTopKSAE.load(pending).k == best["k"]:
        final.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            os.replace(pending.with_suffix(suffix), final.with_suffix(suffix))
        return
    if device_kind(best.get("device", "cpu")) != resolve_device(device).type:
        # Another kind of device sums in another order: retraining here cannot give the same
        # weights, so the row stands and its SAE is reported as not stored (like the SAEs
        # over the repository's file limit).
        return
    if stored_sae_bytes(width, int(data.split("test").shape[1])) > STORED_SAE_LIMIT_BYTES:
        # Over the repository's file limit, it would not be committed: retraining it only to
        # keep it on this machine costs as much as training it did (tens of minutes).
        return
    config = settings.train_config(width, best["k"], seed, device=device)
    train_cached(config, data, cache_path)
    sae = compact(load_cached_sae(cache_path, config_key(config, data.fingerprint)))
    measure = measure if measure is not None else default_measure(settings)
    again = measure(sae, data.split("test"), None)["dl_bits"]
    if again is None or not math.isclose(again, best["measure"]["dl_bits"], rel_tol=1e-9):
        # Another type of CPU (torch picks AVX2 or AVX-512 kernels) also sums in another order.
        # Storing these weights would put an SAE beside a row it does not match, and stopping
        # the job would stall every other search: the row stands, unstored, and the log says so.
        warnings.warn(
            f"width {width} seed {seed}: retraining k={best['k']} here gives DL {again} bits, but its row "
            f"records {best['measure']['dl_bits']} (trained on another machine type); the row stands "
            "and its SAE is not stored (delete the row to retrain it on this machine)",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    save_compact(sae, final)


def device_kind(label: str) -> str:
    """The device type (``cpu``, ``cuda``) of a row's device as :func:`device_label` wrote it
    (older rows say ``cpu`` or ``cuda:0``)."""
    return torch.device(str(label).split(" ")[0]).type


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _row(
    config: TrainConfig,
    key: str,
    trained: dict[str, Any],
    measure: dict[str, Any],
    j: float,
    device: str,
    cpu_kernels: str | None = None,
) -> dict[str, Any]:
    return {
        "width": config.width,
        "seed": config.seed,
        "k_index": j,
        "k": config.k,
        "key": key,
        "device": device,
        # Only where known: a CPU training whose cache entry recorded its kernels.
        **({} if cpu_kernels is None else {"cpu_kernels": cpu_kernels}),
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
    progress: ProgressMode = True,
    data: SweepData | None = None,
    log: Callable[[str], None] | None = None,
    threads: int | None = 1,
    executor: Executor | None = None,
    measure: Measure | None = None,
    name: str = "mnist-mdl",
    extra_fields: Sequence[str] = (),
    summary_seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study and write its rows, stored SAEs and ``summary.json``.

    Args:
        settings: what to train (see :func:`mdl_utils.study_plan.study_settings`).
        out_dir: the output folder (rows, saes, summary).
        cache: the trained-SAE cache (default: :func:`mdl_utils.profiles.cache_dir`).
        budget_hours: stop starting new trainings after this much wall time (None: no limit);
            finished rows are kept, and the next run continues.
        shard: ``(i, n)``: this process handles the widths whose position in the sorted
            list of all candidate widths is ``i`` modulo ``n``.
        device: the training device (``"auto"``: CUDA when present).
        progress: ``True``: a progress display for the job (parallel runs) and a line per
            trained SAE on stderr; ``"lines"``: the lines alone, no display (for a log
            file); ``False``: nothing.
        data: the prepared data (default: loaded from the settings).
        log: where the per-SAE lines go instead (e.g. prefixed; overrides ``progress``'s lines).
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
        extra_fields: further measurement keys the summary copies (see :func:`mdl_utils.study_summary.summarise`).
        summary_seeds: the seeds of the study that ``summary.json`` describes (default:
            ``settings.seeds``; it must include them, first seed first). A job that runs a
            study in phases (its first seed, then every seed; chapters 6, 7 and 8) trains with
            ``settings.seeds`` the phase's seeds and passes the study's own here, so the file
            on disk never reads as a finished study of fewer seeds while the rest remain, even
            when the job stops between its phases.

    Returns:
        The summary written to ``out_dir/summary.json`` (of ``summary_seeds``).

    Raises:
        ValueError: ``summary_seeds`` leaves out a seed of ``settings`` or starts with another.
    """
    described = settings
    if summary_seeds is not None:
        wanted = tuple(int(seed) for seed in summary_seeds)
        if not set(settings.seeds) <= set(wanted) or wanted[:1] != tuple(settings.seeds)[:1]:
            raise ValueError(
                f"summary_seeds {list(wanted)} must start with the first seed and include every seed "
                f"run ({list(settings.seeds)})"
            )
        described = replace(settings, seeds=wanted)
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
            described=described,
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
    progress: ProgressMode,
    data: SweepData | None,
    log: Callable[[str], None] | None,
    executor: Executor | None = None,
    measure: Measure | None = None,
    name: str = "mnist-mdl",
    extra_fields: Sequence[str] = (),
    described: StudySettings | None = None,
) -> dict[str, Any]:
    progress = check_progress_mode(progress)
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
    # trainings running, failed, time left), with the per-SAE lines printed above it; with
    # ``"lines"`` the lines alone (the display disabled prints them plainly).
    display = Progress(0, desc=name, unit="search", enabled=progress is True and log is None and not serial)
    if log is not None:
        say = log
    elif progress:
        say = display.write
    else:

        def say(msg: str) -> None:
            return None

    data_ref = data if serial else executor.put(data)
    device_name = device_label(resolve_device(device))
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
        sae = compact(load_cached_sae(cache_path, key))
        if measured is None:
            measured = measure(sae, x_test, weights)
        m = {**measured, "precision_rule": PRECISION_RULE}
        entry = json.loads((cache_path / key / "entry.json").read_text())
        history = entry.get("history", {})
        # Where the SAE trained, as its cache entry recorded it (a configuration another study
        # trained earlier, perhaps on another device); entries from before that: this run's.
        row = _row(config, key, trained, m, j, entry.get("trained_on") or trained_on, entry.get("cpu_kernels"))
        row["train"]["curve"] = {
            name: [round(float(e[name]), 7) for e in history.get("epochs", [])]
            for name in ("train_mse", "val_mse", "dead_fraction")
        }
        width_rows = [r for r in load_rows(out) if r["width"] == width] + [row]
        write_rows(out, width, width_rows)
        new_state = search_state(width_rows, width, seed)
        if best_index(new_state) == j:
            save_compact(sae, sae_stem(out, width, seed, pending=True))
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

    _remeasure_stale(
        settings,
        out,
        mine,
        data=data,
        cache_path=cache_path,
        device=device,
        measure=measure,
        weights=weights,
        say=say,
        name=name,
    )
    try:
        while True:
            rows = load_rows(out)
            tasks = [(w, s) for (w, s) in plan(settings, rows) if w in mine]
            done = [(w, s) for (w, s) in tasks if search_done(settings, rows, w, s, start_index(settings, rows, w, s))]
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
                start = start_index(settings, rows, width, seed)
                j = next_k_index(
                    search_state(rows, width, seed), start=start, j_max=j_max(width), j_min=j_min(settings)
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

    summary = summarise(described or settings, load_rows(out), d_in=int(x_test.shape[1]), extra_fields=extra_fields)
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
    return payload, measure(compact(payload.sae), x_test, bootstrap_weights(len(x_test), n_boot, seed=0))


def _unpack(value: Any) -> tuple[TrainedPayload, dict[str, Any] | None]:
    return (value[0], value[1]) if isinstance(value, tuple) else (value, None)


def _shard_widths(settings: StudySettings, shard_i: int, shard_n: int) -> set[int]:
    """The widths one shard trains: every n-th of the doubling grid (with the widths below it
    that ``settings.extend_down_to`` may add) and every n-th of the possible sqrt(2) fill-ins,
    so that shards share the cheap and the costly widths."""
    grid = possible_narrower_widths(settings) + sorted(settings.widths)
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
# Reading a finished (or partial) study
# --------------------------------------------------------------------------------------------


def _report(summary: dict[str, Any], path: Path) -> str:
    res = summary["resolution"]
    verdict = (
        "none yet"
        if res is None
        else (f"width {res['optimum']} ({'resolved' if res['resolved'] else 'tie set ' + str(res['tie_set'])})")
    )
    state = "complete" if summary["complete"] else f"{len(summary['remaining'])} searches remain"
    return f"wrote {path}: {summary['n_saes_trained']} SAEs; optimum {verdict}; {state}"


def main(argv: list[str] | None = None) -> int:
    """``python -m mdl_utils mnist-sweep``: run or resume the chapter-3 study."""
    parser = job_parser(prog="python -m mdl_utils mnist-sweep", doc=__doc__, out_subdir="mnist-mdl")
    parser.add_argument("--shard", default="0/1", help="I/N: run the I-th of N shares of the widths")
    args = parse_job(parser, argv)
    try:
        shard_i, shard_n = (int(p) for p in args.shard.split("/"))
    except ValueError:
        parser.error(f"--shard must look like I/N (e.g. 0/2), got {args.shard!r}")
    settings = study_settings(args.profile)
    out = Path(args.out)
    return run_job(
        args,
        train=lambda executor: run_study(
            settings, out, shard=(shard_i, shard_n), executor=executor, **training_options(args)
        ),
        summarise=lambda: summarise(settings, load_rows(out)),
        summary_path=out / "summary.json",
        report=lambda summary: _report(summary, out / "summary.json"),
    )
