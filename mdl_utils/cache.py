"""The cache of trained SAEs: one entry per training configuration and data.

Every trained SAE is stored under a key derived from its full training configuration and a
fingerprint of the data (:func:`config_key`), so a job that asks for a configuration already
trained gets the stored SAE and its results row instead of training again, and a job killed
at any moment (even ``kill -9``) resumes without a corrupt entry: each entry is written into a
temporary folder and moved into place with one ``os.replace`` (:func:`store_trained`).

Layout: ``<cache>/<key>/`` holding ``sae.safetensors``, ``sae.json`` (see
:meth:`mdl_utils.sae.BatchTopKSAE.save`) and ``entry.json`` (the full training config, data
fingerprint, metrics row and training history). Used by the sweeps (:mod:`mdl_utils.sweep`),
the studies (:mod:`mdl_utils.study`) and the chapters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdl_utils.data import SweepData
from mdl_utils.io import atomic_write_text
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.train import TrainConfig, evaluate_sae

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheMismatchError",
    "TrainedPayload",
    "clean_stale_tmp",
    "config_key",
    "load_cached",
    "load_cached_sae",
    "result_row",
    "store_trained",
    "train_cached",
    "train_payload",
]

#: Part of every cache key: bump when training code changes what a config produces.
CACHE_FORMAT_VERSION = 1


class CacheMismatchError(ValueError):
    """A cache entry exists under a key but was written by a different configuration or data."""


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
    """What a training returns to the driver: the SAE, its history, its results row, the
    device it trained on (:func:`mdl_utils.train.device_label`) and, on a CPU, the vector
    kernels torch used (:func:`mdl_utils.train.cpu_kernels`). Everything here is plain data
    (picklable), so it crosses processes."""

    sae: Any
    history: Any
    row: dict[str, Any]
    device: str
    cpu_kernels: str | None = None


def train_payload(config: Any, data: Any, threads: int | None = None) -> TrainedPayload:
    """Train ``config`` on ``data`` (a :class:`mdl_utils.data.SweepData`) and evaluate it,
    writing nothing to disk. ``threads``: torch CPU threads for this training (restored)."""
    import torch

    from mdl_utils.train import cpu_kernels, device_label, resolve_device, train_sae

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        sae, history = train_sae(config, data.train, data.val)
        row = result_row(config, config_key(config, data.fingerprint), sae, history, data)
    finally:
        torch.set_num_threads(previous)
    device = resolve_device(config.device)
    return TrainedPayload(
        sae=sae.cpu(), history=history, row=row, device=device_label(device), cpu_kernels=cpu_kernels(device)
    )


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


def clean_stale_tmp(cache_dir: Path) -> None:
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
            # Where it trained (entries written before these were recorded lack them).
            "trained_on": payload.device,
            "cpu_kernels": payload.cpu_kernels,
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
