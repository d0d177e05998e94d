"""Resumable sweeps of BatchTopK SAEs: a grid runner and a target-loss search over k.

Every trained SAE is cached on disk by its full training configuration and the data
(:mod:`mdl_utils.cache`), so rerunning a sweep skips finished SAEs, and a sweep killed at any
moment (even ``kill -9``) resumes without retraining them and without a corrupt file; the
results tables are written to a temporary file and moved into place likewise.

Two modes (section 4 of the paper brief, step 2: "train a family of SAEs that reach loss < eps"):

- *grid*: every combination of the listed values (width, k, seed, any training field);
- *target loss*: for each width (and seed), search ``k`` until the SAE's MSE on the chosen
  split lands in ``[band_low * epsilon, epsilon]``, or record that no ``k`` reaches it.
  The search is a safeguarded secant in log-log space (MSE against k is close to a power law):
  once a ``k`` above and a ``k`` below the band are known it never leaves that bracket, and it
  falls back to bisection in ``log k`` when the secant step is poor. Each trial is an ordinary
  cached training of its own configuration (no weights pass between trials), so the search's
  path is a function of the cached results and a resumed search retraces it from the cache.

Command line: ``python -m mdl_utils sweep --config FILE [--no-progress] [--threads N]
[--workers N | --ray-address HOST:PORT]`` (trainings on Ray: see :mod:`mdl_utils.executors`).

Config file (JSON). Relative paths are relative to the config file's folder::

    {
      "out_dir": "results/quick",          # tables go here; the cache in out_dir/cache
      "cache_dir": null,                   # optional: a cache shared between sweeps
      "data": {
        "source": "mnist",                 # or "npy"
        "n_train": 10000,                  # mnist: first n training digits (null: all 60,000)
        "n_test": 2000,                    # mnist: first n test digits (null: all 10,000)
        "train_path": null, "test_path": null,  # npy: (N, D) float arrays; test optional
        "val_fraction": 0.1,               # validation split carved from the training data
        "split_seed": 0                    # seeds which training samples go to validation
      },
      "train": {"max_epochs": 50, "patience": 5},   # fixed TrainConfig fields
      "grid": {"width": [64, 128], "k": [8, 16], "seed": [0]},  # lists, combined
      "target": {                           # optional; then "grid" must not list k
        "epsilon": 0.015, "band_low": 0.95, "split": "test",
        "k_start": 32, "k_min": 1, "max_trials": 8
      }
    }

Outputs beside the cache (``out_dir``): ``results.csv`` / ``results.json`` (one row per SAE:
width, k, seed, MSE per split, mean L0 per split, dead fraction, epochs, training time, key)
and, in target mode, ``targets.csv`` / ``targets.json`` (one row per width and seed: the
status and the selected SAE). The cache's layout: :mod:`mdl_utils.cache`.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


from mdl_utils.executors import (
    Executor,
    SerialExecutor,
    TaskFailedError,
    add_executor_args,
    executor_from_args,
)
from mdl_utils.cache import CacheMismatchError, TrainedPayload, clean_stale_tmp, train_cached, train_payload
from mdl_utils.data import DataSpec, SweepData, prepare_data
from mdl_utils.io import atomic_write_text
from mdl_utils.train import TrainConfig

__all__ = [
    "TargetSpec",
    "SweepConfig",
    "SweepResult",
    "load_sweep_config",
    "search_k_for_target",
    "run_sweep",
    "main",
]

#: Columns of results.csv, in order (grid fields that vary are appended).
RESULT_COLUMNS = [
    "width", "k", "seed", "mse_train", "mse_val", "mse_test", "l0_train", "l0_val", "l0_test",
    "dead_fraction", "threshold", "epochs", "best_epoch", "stop_reason", "train_seconds", "key",
]  # fmt: skip
TARGET_COLUMNS = ["width", "seed", "status", "k", "mse", "split", "epsilon", "n_trials", "key"]


@dataclass(frozen=True)
class TargetSpec:
    """The target-loss search over k (per width): MSE on ``split`` in [band_low*eps, eps].

    Attributes:
        epsilon: the loss tolerance (MSE per input element).
        band_low: the band's lower edge as a fraction of epsilon.
        split: ``"test"``, ``"val"`` or ``"train"``: whose MSE must land in the band.
        k_start: first k tried at the first width (null: min(width, 16)); later widths start
            from the previous width's result.
        k_min: the smallest k tried (>= 1).
        max_trials: trainings per width before giving up ("not_converged").
        k_digits: significant digits k is rounded to (keeps cache keys readable).
    """

    epsilon: float
    band_low: float = 0.95
    split: str = "test"
    k_start: float | None = None
    k_min: float = 1.0
    max_trials: int = 8
    k_digits: int = 4

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"target.epsilon must be positive, got {self.epsilon!r}")
        if not 0 < self.band_low < 1:
            raise ValueError(f"target.band_low must lie in (0, 1), got {self.band_low!r}")
        if self.split not in {"test", "val", "train"}:
            raise ValueError(f"target.split must be 'test', 'val' or 'train', got {self.split!r}")
        if self.k_min < 1:
            raise ValueError(f"target.k_min must be at least 1, got {self.k_min!r}")
        if self.max_trials < 1:
            raise ValueError(f"target.max_trials must be at least 1, got {self.max_trials!r}")


@dataclass
class SweepConfig:
    """A parsed sweep config file (see the module docstring)."""

    out_dir: Path
    data: DataSpec
    train: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    target: TargetSpec | None = None
    cache_dir: Path | None = None
    progress: bool = True

    @property
    def cache_path(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.out_dir / "cache"

    def __post_init__(self) -> None:
        known = {f.name for f in fields(TrainConfig)}
        for section, keys in (("train", self.train), ("grid", self.grid)):
            unknown = sorted(set(keys) - known)
            if unknown:
                raise ValueError(f"{section} has unknown TrainConfig field(s): {', '.join(unknown)}")
        overlap = sorted(set(self.train) & set(self.grid))
        if overlap:
            raise ValueError(f"field(s) {', '.join(overlap)} appear in both 'train' and 'grid'")
        for name, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{name} must be a non-empty list, got {values!r}")
        if "width" not in self.grid and "width" not in self.train:
            raise ValueError("the sweep needs a width: list it in 'grid' (or fix it in 'train')")
        if self.target is not None and ("k" in self.grid or "k" in self.train):
            raise ValueError("target mode searches k: do not list k in 'grid' or 'train'")
        if self.target is None and "k" not in self.grid and "k" not in self.train:
            raise ValueError("grid mode needs k in 'grid' (or 'train'), or a 'target' section")


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: the results rows and, in target mode, one row per width."""

    rows: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    out_dir: Path


def load_sweep_config(path: str | os.PathLike[str]) -> SweepConfig:
    """Parse a sweep config JSON file; relative paths are resolved against its folder."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    base = path.resolve().parent
    allowed = {"out_dir", "cache_dir", "data", "train", "grid", "target", "progress"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    if "out_dir" not in raw:
        raise ValueError(f"{path}: 'out_dir' is required")

    def resolve(p: str | None) -> str | None:
        return None if p is None else str((base / p) if not Path(p).is_absolute() else Path(p))

    data_raw = dict(raw.get("data", {}))
    unknown = sorted(set(data_raw) - {f.name for f in fields(DataSpec)})
    if unknown:
        raise ValueError(f"{path}: unknown data key(s) {', '.join(unknown)}")
    for key in ("train_path", "test_path"):
        data_raw[key] = resolve(data_raw.get(key))
    target = None
    if raw.get("target") is not None:
        unknown = sorted(set(raw["target"]) - {f.name for f in fields(TargetSpec)})
        if unknown:
            raise ValueError(f"{path}: unknown target key(s) {', '.join(unknown)}")
        target = TargetSpec(**raw["target"])
    return SweepConfig(
        out_dir=Path(resolve(raw["out_dir"])),  # type: ignore[arg-type]
        cache_dir=Path(resolve(raw["cache_dir"])) if raw.get("cache_dir") else None,  # type: ignore[arg-type]
        data=DataSpec(**data_raw),
        train=dict(raw.get("train", {})),
        grid={name: list(v) if isinstance(v, list) else v for name, v in raw.get("grid", {}).items()},
        target=target,
        progress=bool(raw.get("progress", True)),
    )


def _round_sig(x: float, digits: int) -> float:
    if x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def search_k_for_target(
    base: dict[str, Any],
    width: int,
    data: SweepData,
    cache_dir: str | os.PathLike[str],
    target: TargetSpec,
    *,
    k_start: float | None = None,
    on_row: Any = None,
    trainer: Callable[[TrainConfig], TrainedPayload] | None = None,
) -> dict[str, Any]:
    """Search k so that the SAE's MSE on ``target.split`` lies in ``[band_low*eps, eps]``.

    Args:
        base: TrainConfig fields other than ``width`` and ``k``.
        width: the SAE width (k is searched in ``[target.k_min, width]``).
        k_start: the first k tried (default ``target.k_start``, else ``min(width, 16)``).
        on_row: called with each trial's results row (e.g. to record progress).
        trainer: where trainings run (see :func:`mdl_utils.cache.train_cached`; default: here).

    Returns:
        One targets row: ``status`` is ``"hit"`` (in the band), ``"unreachable"`` (MSE above
        eps even at k = width), ``"below_band"`` (MSE below the band even at k = k_min: the
        tolerance is met but the band cannot be hit), or ``"not_converged"`` (trials ran out;
        then ``k`` is the smallest tried k meeting eps, if any). Also the selected ``k``,
        ``mse``, number of trials and cache ``key``.
    """
    eps, low = target.epsilon, target.band_low * target.epsilon
    aim = math.log(0.5 * (low + eps))
    k_max = float(width)
    if target.k_min > k_max:
        raise ValueError(f"target.k_min={target.k_min} exceeds width={width}")
    mse_col = f"mse_{target.split}"
    tried: dict[float, dict[str, Any]] = {}

    def clip(k: float) -> float:
        return min(k_max, max(target.k_min, _round_sig(k, target.k_digits)))

    k = clip(k_start if k_start is not None else (target.k_start or min(width, 16.0)))
    status = "not_converged"
    for _ in range(target.max_trials):
        config = TrainConfig(**{**base, "width": width, "k": k})
        row = train_cached(config, data, cache_dir, trainer=trainer)
        tried[k] = row
        if on_row is not None:
            on_row(row)
        mse = row[mse_col]
        if mse is None:
            raise ValueError(f"target split {target.split!r} has no MSE (is the split missing?)")
        if low <= mse <= eps:
            status = "hit"
            break
        too_high = {kk: r[mse_col] for kk, r in tried.items() if r[mse_col] > eps}  # k too small
        too_low = {kk: r[mse_col] for kk, r in tried.items() if r[mse_col] < low}  # k too large
        if mse > eps and k >= k_max:
            status = "unreachable"
            break
        if mse < low and k <= target.k_min:
            status = "below_band"
            break
        k_lo = max(too_high) if too_high else None  # largest k still above the band
        k_hi = min(too_low) if too_low else None  # smallest k already below the band
        if k_lo is not None and k_hi is not None:
            points = [(k_lo, too_high[k_lo]), (k_hi, too_low[k_hi])]
        else:
            ks = sorted(tried, key=lambda kk: abs(math.log(tried[kk][mse_col]) - aim))[:2]
            points = [(kk, tried[kk][mse_col]) for kk in ks]
        slope = -0.5  # a prior for d log(MSE) / d log(k) until two points are known
        if len(points) == 2 and points[0][0] != points[1][0]:
            (ka, ma), (kb, mb) = points
            fitted = (math.log(ma) - math.log(mb)) / (math.log(ka) - math.log(kb))
            if fitted < -1e-3:
                slope = fitted
        ref_k, ref_m = (k, mse)
        proposal = math.exp(math.log(ref_k) + (aim - math.log(ref_m)) / slope)
        if k_lo is not None and k_hi is not None:
            lo_l, hi_l = math.log(k_lo), math.log(k_hi)
            p_l = math.log(proposal)
            margin = 0.1 * (hi_l - lo_l)
            if not (lo_l + margin <= p_l <= hi_l - margin):
                p_l = 0.5 * (lo_l + hi_l)
            proposal = math.exp(p_l)
        else:
            proposal = min(max(proposal, k / 4), k * 4)  # cap unbracketed steps
        new_k = clip(proposal)
        if new_k in tried:
            candidates = [c for c in (clip(math.sqrt((k_lo or target.k_min) * (k_hi or k_max))),) if c not in tried]
            if not candidates:
                if k_lo is None and k_max not in tried:
                    candidates = [k_max]
                elif k_hi is None and target.k_min not in tried:
                    candidates = [target.k_min]
                else:
                    break  # the rounding grid is exhausted between the bracket's ends
            new_k = candidates[0]
        k = new_k

    if status == "hit":
        chosen_k = k
    else:
        meeting = [kk for kk, r in tried.items() if r[mse_col] <= eps]
        if status == "below_band":
            chosen_k = target.k_min
        elif meeting:
            chosen_k = min(meeting)
        else:
            chosen_k = None
    chosen = tried[chosen_k] if chosen_k is not None else None
    return {
        "width": width,
        "seed": base.get("seed", 0),
        "status": status,
        "k": chosen_k,
        "mse": chosen[mse_col] if chosen else None,
        "split": target.split,
        "epsilon": eps,
        "n_trials": len(tried),
        "key": chosen["key"] if chosen else None,
    }


def _grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def _table_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return buf.getvalue()


def _write_tables(out_dir: Path, rows: list[dict[str, Any]], targets: list[dict[str, Any]], extra: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = RESULT_COLUMNS + [c for c in extra if c not in RESULT_COLUMNS]
    atomic_write_text(out_dir / "results.csv", _table_text(rows, columns))
    atomic_write_text(out_dir / "results.json", json.dumps(rows, indent=1))
    if targets:
        atomic_write_text(out_dir / "targets.csv", _table_text(targets, TARGET_COLUMNS))
        atomic_write_text(out_dir / "targets.json", json.dumps(targets, indent=1))


def run_sweep(config: SweepConfig, data: SweepData | None = None, *, executor: Executor | None = None) -> SweepResult:
    """Run (or resume) a sweep; write its tables beside the cache; return them.

    Rows appear in the sweep's deterministic order (grid order; in target mode widths in the
    grid's order, each width's trials in search order), so a resumed run writes the same
    table as an uninterrupted one (apart from ``train_seconds``, which records the run that
    trained each SAE).

    ``executor`` (default: serial, in this process) runs the trainings; with a
    :class:`~mdl_utils.executors.RayExecutor` independent trainings run side by side: every
    grid point in grid mode; in target mode the series (the grid's values other than width,
    e.g. seeds), while the widths of one series stay in order because each width's search
    starts from the previous width's k. The tables are the same as a serial run's.
    """
    if data is None:
        data = prepare_data(config.data)
    cache = config.cache_path
    cache.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(cache)
    executor = executor if executor is not None else SerialExecutor()
    if executor.capacity > 1:
        return _run_sweep_parallel(config, data, executor)
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    extra = [name for name in config.grid if name not in {"width", "k", "seed"}]
    points = _grid_points(config.grid)
    bar = None
    if config.progress:
        from tqdm import tqdm  # plain text bar: no widget dependency in notebooks

        bar = tqdm(total=len(points), desc="sweep", unit="cfg" if config.target is None else "width")

    def record(row: dict[str, Any], point: dict[str, Any]) -> None:
        rows.append({**row, **{n: point[n] for n in extra}})
        _write_tables(config.out_dir, rows, targets, extra)

    trainer: Callable[[TrainConfig], TrainedPayload] | None = None
    if not isinstance(executor, SerialExecutor):
        data_ref = executor.put(data)

        def remote(cfg: TrainConfig) -> TrainedPayload:
            return executor.run(train_payload, cfg, data_ref)

        trainer = remote

    try:
        previous_k: dict[Any, float] = {}
        for point in points:
            fields_ = {**config.train, **point}
            fields_["progress"] = config.progress and bool(fields_.get("progress", True))
            if config.target is None:
                row = train_cached(TrainConfig(**fields_), data, cache, trainer=trainer)
                record(row, point)
                if bar is not None:
                    bar.set_postfix(width=row["width"], k=row["k"], mse_val=f"{row['mse_val']:.5f}")
            else:
                width = fields_.pop("width")
                series = tuple(sorted((n, repr(v)) for n, v in point.items() if n != "width"))
                result = search_k_for_target(
                    fields_, width, data, cache, config.target,
                    k_start=previous_k.get(series),
                    on_row=lambda r, p=point: record(r, p),
                    trainer=trainer,
                )  # fmt: skip
                if result["k"] is not None:
                    previous_k[series] = result["k"]
                targets.append({**result, **{n: point[n] for n in extra}})
                _write_tables(config.out_dir, rows, targets, extra)
                if bar is not None:
                    bar.set_postfix(width=width, status=result["status"], k=result["k"])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    _write_tables(config.out_dir, rows, targets, extra)
    return SweepResult(rows=rows, targets=targets, out_dir=config.out_dir)


def _run_sweep_parallel(config: SweepConfig, data: SweepData, executor: Executor) -> SweepResult:
    """:func:`run_sweep` with several trainings in flight: each series (grid mode: each grid
    point) runs in a driver thread that waits on its executor tasks; rows are kept in the
    serial order (point, then trial) however they arrive."""
    from concurrent.futures import ThreadPoolExecutor

    from mdl_utils.executors import Progress

    extra = [name for name in config.grid if name not in {"width", "k", "seed"}]
    points = _grid_points(config.grid)
    data_ref = executor.put(data)
    lock = threading.Lock()
    found: dict[tuple[int, int], dict[str, Any]] = {}  # (point index, trial) -> row
    found_targets: dict[int, dict[str, Any]] = {}
    state = {"done": 0, "running": 0, "failed": 0, "trained": 0}
    bar = Progress(len(points), desc="sweep", unit="cfg" if config.target is None else "width", enabled=config.progress)

    def tables() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return ([found[i] for i in sorted(found)], [found_targets[i] for i in sorted(found_targets)])

    def write() -> None:
        rows, targets = tables()
        _write_tables(config.out_dir, rows, targets, extra)

    def trainer(cfg: TrainConfig) -> TrainedPayload:
        with lock:
            state["running"] += 1
            bar.update(running=state["running"], failed=state["failed"], trained=state["trained"])
        try:
            payload = executor.run(train_payload, cfg, data_ref)
        except BaseException:
            with lock:
                state["running"] -= 1
                state["failed"] += 1
            raise
        with lock:
            state["running"] -= 1
            state["trained"] += 1
        return payload

    def fields_of(point: dict[str, Any]) -> dict[str, Any]:
        # One progress display for the whole sweep: no per-training bars from the workers.
        return {**config.train, **point, "progress": False}

    def finished_point() -> None:
        state["done"] += 1
        bar.update(done=state["done"], running=state["running"], failed=state["failed"], trained=state["trained"])

    def run_point(i: int, point: dict[str, Any]) -> None:
        row = train_cached(TrainConfig(**fields_of(point)), data, config.cache_path, trainer=trainer)
        with lock:
            found[(i, 0)] = {**row, **{n: point[n] for n in extra}}
            write()
            finished_point()

    def run_series(indexed: list[tuple[int, dict[str, Any]]]) -> None:
        previous_k: float | None = None
        for i, point in indexed:
            fields_ = fields_of(point)
            width = fields_.pop("width")
            trial = [0]

            def on_row(r: dict[str, Any], i: int = i, point: dict[str, Any] = point, trial: list[int] = trial) -> None:
                with lock:
                    found[(i, trial[0])] = {**r, **{n: point[n] for n in extra}}
                    trial[0] += 1
                    write()

            result = search_k_for_target(
                fields_,
                width,
                data,
                config.cache_path,
                config.target,  # type: ignore[arg-type]
                k_start=previous_k,
                on_row=on_row,
                trainer=trainer,
            )
            if result["k"] is not None:
                previous_k = result["k"]
            with lock:
                found_targets[i] = {**result, **{n: point[n] for n in extra}}
                write()
                finished_point()

    jobs: list[tuple[Callable[..., None], tuple[Any, ...]]]
    if config.target is None:
        jobs = [(run_point, (i, p)) for i, p in enumerate(points)]
    else:
        series: dict[tuple[Any, ...], list[tuple[int, dict[str, Any]]]] = {}
        for i, p in enumerate(points):
            series.setdefault(tuple(sorted((n, repr(v)) for n, v in p.items() if n != "width")), []).append((i, p))
        jobs = [(run_series, (s,)) for s in series.values()]
    try:
        with ThreadPoolExecutor(max_workers=executor.capacity) as pool:
            futures = [pool.submit(fn, *args) for fn, args in jobs]
            for fut in futures:
                fut.result()  # re-raises the first failure once every thread has stopped
    finally:
        bar.close()
    write()
    rows, targets = tables()
    return SweepResult(rows=rows, targets=targets, out_dir=config.out_dir)


def main(argv: list[str]) -> int:
    """``python -m mdl_utils sweep --config FILE``: run or resume a sweep; print where its tables are."""
    parser = argparse.ArgumentParser(prog="python -m mdl_utils sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="sweep config JSON (format: see mdl_utils.sweep's docstring)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_executor_args(parser)
    args = parser.parse_args(argv)
    try:
        config = load_sweep_config(args.config)
    except (OSError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.no_progress:
        config.progress = False
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        executor = executor_from_args(args, device=str(config.train.get("device", "auto")), threads=args.threads or 1)
    except (ValueError, ConnectionError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with executor:
            result = run_sweep(config, executor=executor)
    except CacheMismatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except TaskFailedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"{len(result.rows)} SAEs in {elapsed:.1f} s; tables in {result.out_dir}", file=sys.stderr)
    for t in result.targets:
        print(f"width={t['width']} seed={t['seed']}: {t['status']} k={t['k']} mse={t['mse']}", file=sys.stderr)
    return 0
