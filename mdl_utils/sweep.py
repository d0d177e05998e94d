"""Resumable sweeps of BatchTopK SAEs: a grid runner and a target-loss search over k.

Every trained SAE is cached on disk under a key derived from its full training configuration
and a fingerprint of the data, so rerunning a sweep skips finished SAEs, and a sweep killed at
any moment (even ``kill -9``) resumes without retraining them and without a corrupt file:
each cache entry is written into a temporary folder and moved into place with one
``os.replace``, and the results tables are written to a temporary file and moved likewise.

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
status and the selected SAE). Cache layout: ``<cache>/<key>/`` holding ``sae.safetensors``,
``sae.json`` (see :meth:`mdl_utils.sae.BatchTopKSAE.save`) and ``entry.json`` (the full
training config, data fingerprint, metrics row and training history).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mdl_utils.executors import (
    Executor,
    SerialExecutor,
    TaskFailedError,
    add_executor_args,
    executor_from_args,
)
from mdl_utils.io import atomic_write_text
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.train import TrainConfig, evaluate_sae

__all__ = [
    "DataSpec",
    "TargetSpec",
    "SweepConfig",
    "SweepData",
    "SweepResult",
    "CacheMismatchError",
    "CACHE_FORMAT_VERSION",
    "load_sweep_config",
    "prepare_data",
    "data_fingerprint",
    "config_key",
    "train_cached",
    "store_trained",
    "result_row",
    "TrainedPayload",
    "train_payload",
    "search_k_for_target",
    "run_sweep",
    "main",
]

#: Part of every cache key: bump when training code changes what a config produces.
CACHE_FORMAT_VERSION = 1
#: Columns of results.csv, in order (grid fields that vary are appended).
RESULT_COLUMNS = [
    "width", "k", "seed", "mse_train", "mse_val", "mse_test", "l0_train", "l0_val", "l0_test",
    "dead_fraction", "threshold", "epochs", "best_epoch", "stop_reason", "train_seconds", "key",
]  # fmt: skip
TARGET_COLUMNS = ["width", "seed", "status", "k", "mse", "split", "epsilon", "n_trials", "key"]


class CacheMismatchError(ValueError):
    """A cache entry exists under a key but was written by a different configuration or data."""


@dataclass(frozen=True)
class DataSpec:
    """Which data a sweep trains on. See the module docstring for the JSON form."""

    source: str = "mnist"
    n_train: int | None = None
    n_test: int | None = None
    train_path: str | None = None
    test_path: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in {"mnist", "npy"}:
            raise ValueError(f"data.source must be 'mnist' or 'npy', got {self.source!r}")
        if self.source == "npy" and not self.train_path:
            raise ValueError("data.source='npy' needs data.train_path")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must lie in (0, 1), got {self.val_fraction!r}")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{name} must be a positive integer or null, got {value!r}")


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
class SweepData:
    """The arrays a sweep trains and evaluates on, and their fingerprint (part of every key)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    fingerprint: str

    def split(self, name: str) -> np.ndarray:
        arr = {"train": self.train, "val": self.val, "test": self.test}[name]
        if arr is None:
            raise ValueError(f"the sweep's data has no {name!r} split")
        return arr


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


def data_fingerprint(*arrays: np.ndarray | None) -> str:
    """SHA-256 over the shapes, dtypes and bytes of the arrays (``None`` counts as absent)."""
    digest = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            digest.update(b"none;")
            continue
        arr = np.ascontiguousarray(arr)
        digest.update(f"{arr.dtype.str}{arr.shape};".encode())
        digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


def prepare_data(spec: DataSpec) -> SweepData:
    """Load the data a :class:`DataSpec` names and carve the validation split from training.

    The validation split is a random ``val_fraction`` of the training samples (seeded by
    ``split_seed``); the test split is never used for training or early stopping.
    """
    if spec.source == "mnist":
        from mdl_utils.data import load_mnist

        train_all = load_mnist("train")[0]
        test = load_mnist("test")[0]
        if spec.n_train is not None:
            train_all = train_all[: spec.n_train]
        if spec.n_test is not None:
            test = test[: spec.n_test]
    else:
        train_all = np.load(spec.train_path)
        test = np.load(spec.test_path) if spec.test_path else None
    train_all = np.asarray(train_all, dtype=np.float32)
    if train_all.ndim != 2 or len(train_all) < 2:
        raise ValueError(f"training data must be a 2-D array with at least 2 samples, got shape {train_all.shape}")
    if not np.isfinite(train_all).all():
        raise ValueError("training data contains NaN or infinite values")
    if test is not None:
        test = np.asarray(test, dtype=np.float32)
        if test.ndim != 2 or test.shape[1] != train_all.shape[1]:
            raise ValueError(f"test data has shape {test.shape}, expected (N, {train_all.shape[1]})")
        if len(test) == 0:
            raise ValueError("test data is empty (0 samples)")
        if not np.isfinite(test).all():
            raise ValueError("test data contains NaN or infinite values")
    n_val = max(1, int(round(spec.val_fraction * len(train_all))))
    if n_val >= len(train_all):
        raise ValueError(f"val_fraction={spec.val_fraction} leaves no training samples")
    perm = np.random.default_rng(spec.split_seed).permutation(len(train_all))
    val = np.ascontiguousarray(train_all[np.sort(perm[:n_val])])
    train = np.ascontiguousarray(train_all[np.sort(perm[n_val:])])
    return SweepData(train=train, val=val, test=test, fingerprint=data_fingerprint(train, val, test))


def _semantic_config(config: TrainConfig) -> dict[str, Any]:
    return config.semantic_dict()


def config_key(config: TrainConfig, fingerprint: str) -> str:
    """The cache key of one SAE: a hash of its full training config and the data fingerprint."""
    payload = {"format": CACHE_FORMAT_VERSION, "config": _semantic_config(config), "data": fingerprint}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def result_row(config: TrainConfig, key: str, sae: BatchTopKSAE, history: Any, data: SweepData) -> dict[str, Any]:
    metrics = {name: evaluate_sae(sae, data.split(name), batch_size=config.eval_batch_size, name=name)
               for name in ("train", "val", "test") if name != "test" or data.test is not None}  # fmt: skip
    test = metrics.get("test")
    return {
        "width": config.width,
        "k": config.k,
        "seed": config.seed,
        "mse_train": metrics["train"].mse,
        "mse_val": metrics["val"].mse,
        "mse_test": test.mse if test else None,
        "l0_train": metrics["train"].l0,
        "l0_val": metrics["val"].l0,
        "l0_test": test.l0 if test else None,
        "dead_fraction": metrics["train"].dead_fraction,
        "threshold": float(sae.threshold),
        "epochs": len(history.epochs),
        "best_epoch": history.best_epoch,
        "stop_reason": history.stop_reason,
        "train_seconds": history.seconds,
        "key": key,
    }


@dataclass
class TrainedPayload:
    """What a training returns to the driver: the SAE, its history, its results row and the
    device it trained on. Everything here is plain data (picklable), so it crosses processes."""

    sae: Any
    history: Any
    row: dict[str, Any]
    device: str


def train_payload(config: Any, data: Any, threads: int | None = None) -> TrainedPayload:
    """Train ``config`` on ``data`` (a :class:`SweepData`) and evaluate it,
    writing nothing to disk. ``threads``: torch CPU threads for this training (restored)."""
    import torch

    from mdl_utils.train import resolve_device, train_sae

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        sae, history = train_sae(config, data.train, data.val)
        row = result_row(config, config_key(config, data.fingerprint), sae, history, data)
    finally:
        torch.set_num_threads(previous)
    return TrainedPayload(sae=sae.cpu(), history=history, row=row, device=str(resolve_device(config.device)))


def _check_entry(entry: dict[str, Any], config: TrainConfig, fingerprint: str, entry_dir: Path) -> None:
    stored_cfg = entry.get("config", {})
    expected = _semantic_config(config)
    diffs = [
        f"{name}: stored {stored_cfg.get(name)!r}, requested {expected.get(name)!r}"
        for name in sorted(set(stored_cfg) | set(expected))
        if stored_cfg.get(name) != expected.get(name)
    ]
    if entry.get("data_fingerprint") != fingerprint:
        diffs.append(f"data fingerprint: stored {entry.get('data_fingerprint')!r}, requested {fingerprint!r}")
    if entry.get("format") != CACHE_FORMAT_VERSION:
        diffs.append(f"cache format: stored {entry.get('format')!r}, requested {CACHE_FORMAT_VERSION}")
    if diffs:
        raise CacheMismatchError(
            f"cache entry {entry_dir} was written by a different configuration ("
            + "; ".join(diffs)
            + "). Delete that folder or point the sweep at another cache_dir."
        )


def load_cached(cache_dir: Path, config: TrainConfig, fingerprint: str) -> dict[str, Any] | None:
    """The cached results row of ``config`` on this data, or ``None`` when not trained yet.

    Raises:
        CacheMismatchError: the entry under this key was written by a different config/data.
    """
    entry_dir = Path(cache_dir) / config_key(config, fingerprint)
    entry_path = entry_dir / "entry.json"
    if not entry_path.is_file():
        return None
    entry = json.loads(entry_path.read_text())
    _check_entry(entry, config, fingerprint, entry_dir)
    return dict(entry["row"])


def load_cached_sae(cache_dir: str | os.PathLike[str], key: str) -> BatchTopKSAE:
    """The SAE stored under ``key`` in ``cache_dir``."""
    return BatchTopKSAE.load(Path(cache_dir) / key / "sae")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_tmp(cache_dir: Path) -> None:
    """Remove temporary entry folders left by killed runs (their writer process is gone)."""
    if not cache_dir.is_dir():
        return
    for tmp in cache_dir.glob(".tmp-*"):
        try:
            pid = int(tmp.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def train_cached(
    config: TrainConfig,
    data: SweepData,
    cache_dir: str | os.PathLike[str],
    *,
    trainer: Callable[[TrainConfig], TrainedPayload] | None = None,
) -> dict[str, Any]:
    """Train ``config`` on ``data`` unless its cache entry exists; return its results row.

    ``trainer`` runs the training elsewhere (e.g. on a Ray worker, see
    :mod:`mdl_utils.executors`) and returns a :class:`TrainedPayload`;
    by default it runs here. Either way only this process writes the cache, with
    :func:`store_trained`.
    """
    cache_dir = Path(cache_dir)
    row = load_cached(cache_dir, config, data.fingerprint)
    if row is not None:
        return row
    payload = trainer(config) if trainer is not None else train_payload(config, data)
    return store_trained(cache_dir, config, data.fingerprint, payload)


def store_trained(
    cache_dir: str | os.PathLike[str], config: TrainConfig, fingerprint: str, payload: TrainedPayload
) -> dict[str, Any]:
    """Write a finished training into the cache; return its results row.

    The entry is assembled in ``<cache>/.tmp-<key>-<pid>-<random>/`` and moved to
    ``<cache>/<key>/`` with one ``os.replace``: at any moment the entry is either complete
    or absent.
    """
    cache_dir = Path(cache_dir)
    key = config_key(config, fingerprint)
    if payload.row.get("key") != key:
        raise ValueError(f"the trained SAE's key {payload.row.get('key')!r} is not this config's key {key!r}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    sae, history, row = payload.sae, payload.history, payload.row
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        sae.save(tmp / "sae")
        entry = {
            "format": CACHE_FORMAT_VERSION,
            "key": key,
            "config": _semantic_config(config),
            "data_fingerprint": fingerprint,
            "row": row,
            "history": history.to_dict(),
        }
        atomic_write_text(tmp / "entry.json", json.dumps(entry, indent=2, sort_keys=True))
        _fsync_dir(tmp)
        try:
            os.replace(tmp, cache_dir / key)
        except OSError:
            # Another process finished the same entry first; its copy is equivalent.
            if not (cache_dir / key / "entry.json").is_file():
                raise
        _fsync_dir(cache_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return row


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        trainer: where trainings run (see :func:`train_cached`; default: here).

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
    _clean_stale_tmp(cache)
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
