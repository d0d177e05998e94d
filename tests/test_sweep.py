"""Tests for mdl_utils.sweep: the on-disk cache, resumption after kill -9, the k search."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mdl_utils.cache as cache_mod
import mdl_utils.sweep as sweep_mod
from mdl_utils.cache import CacheMismatchError, config_key, load_cached_sae, train_cached
from mdl_utils.data import DataSpec, SweepData, data_fingerprint, prepare_data
from mdl_utils.sweep import (
    TargetSpec,
    load_sweep_config,
    run_sweep,
    search_k_for_target,
)
from mdl_utils.train import TrainConfig

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = dict(batch_size=50, max_epochs=3, warmup_steps=2, lr=3e-3, device="cpu")


def _data(n: int = 300, d: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dirs = np.abs(np.random.default_rng(99).normal(size=(8, d)))
    codes = rng.uniform(0, 1, size=(n, 8)) * (rng.uniform(size=(n, 8)) < 0.3)
    return (codes @ dirs + 0.01 * rng.normal(size=(n, d))).astype(np.float32)


def _sweep_data() -> SweepData:
    train, val, test = _data(300, seed=0), _data(80, seed=1), _data(80, seed=2)
    return SweepData(train=train, val=val, test=test, fingerprint=data_fingerprint(train, val, test))


def _write_config(tmp: Path, out: str, grid: dict, target: dict | None = None, train: dict | None = None) -> Path:
    np.save(tmp / "train.npy", _data(300, seed=0))
    np.save(tmp / "test.npy", _data(80, seed=2))
    cfg = {
        "out_dir": out,
        "data": {"source": "npy", "train_path": "train.npy", "test_path": "test.npy", "val_fraction": 0.2},
        "train": {**TINY_TRAIN, **(train or {})},
        "grid": grid,
        "progress": False,
    }
    if target is not None:
        cfg["target"] = target
    path = tmp / f"{out}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_config_key_depends_on_every_semantic_field_and_the_data():
    base = TrainConfig(width=8, k=2)
    fp = "a" * 64
    key = config_key(base, fp)
    assert key == config_key(TrainConfig(width=8, k=2.0), fp)  # 2 and 2.0 are the same k
    assert key == config_key(TrainConfig(width=8, k=2, progress=False), fp)  # display only
    assert key != config_key(TrainConfig(width=8, k=2, seed=1), fp)
    assert key != config_key(TrainConfig(width=8, k=2, lr=1e-3), fp)
    assert key != config_key(TrainConfig(width=8, k=2.001), fp)
    assert key != config_key(base, "b" * 64)


def test_data_fingerprint_sees_values_shapes_and_missing_splits():
    a = np.zeros((4, 3), np.float32)
    b = a.copy()
    b[2, 1] = 1e-7
    assert data_fingerprint(a) == data_fingerprint(a.copy())
    assert data_fingerprint(a) != data_fingerprint(b)
    assert data_fingerprint(a) != data_fingerprint(a.reshape(3, 4))
    assert data_fingerprint(a, None) != data_fingerprint(a)


def test_prepare_data_carves_validation_from_training_only(tmp_path):
    train = np.arange(200, dtype=np.float32).reshape(100, 2)
    np.save(tmp_path / "tr.npy", train)
    np.save(tmp_path / "te.npy", train[:7] + 1000)
    spec = DataSpec(source="npy", train_path=str(tmp_path / "tr.npy"), test_path=str(tmp_path / "te.npy"),
                    val_fraction=0.25, split_seed=3)  # fmt: skip
    data = prepare_data(spec)
    assert data.train.shape == (75, 2) and data.val.shape == (25, 2) and data.test.shape == (7, 2)
    rows = {tuple(r) for r in data.train} | {tuple(r) for r in data.val}
    assert rows == {tuple(r) for r in train}  # a partition of the training samples
    assert prepare_data(spec).fingerprint == data.fingerprint
    np.save(tmp_path / "bad.npy", np.full((5, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        prepare_data(DataSpec(source="npy", train_path=str(tmp_path / "bad.npy")))
    np.save(tmp_path / "wide.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="test data has shape"):
        prepare_data(DataSpec(source="npy", train_path=str(tmp_path / "tr.npy"), test_path=str(tmp_path / "wide.npy")))


@pytest.mark.skipif(not os.environ.get("MDL_MNIST_DIR"), reason="MDL_MNIST_DIR not set")
def test_prepare_data_mnist_subsets():
    data = prepare_data(DataSpec(source="mnist", n_train=500, n_test=100, val_fraction=0.1))
    assert data.train.shape == (450, 784) and data.val.shape == (50, 784) and data.test.shape == (100, 784)
    assert 0.0 <= data.train.min() and data.train.max() <= 1.0


def test_train_cached_trains_once_then_reads_the_cache(tmp_path, monkeypatch):
    data = _sweep_data()
    cfg = TrainConfig(width=6, k=2, progress=False, **TINY_TRAIN)
    row = train_cached(cfg, data, tmp_path)
    key = config_key(cfg, data.fingerprint)
    assert row["key"] == key
    assert {p.name for p in (tmp_path / key).iterdir()} == {"sae.safetensors", "sae.json", "entry.json"}
    assert not list(tmp_path.glob(".tmp-*"))

    def no_training(*args, **kwargs):
        raise AssertionError("a cached SAE was retrained")

    monkeypatch.setattr(cache_mod, "train_payload", no_training)
    assert train_cached(cfg, data, tmp_path) == row
    # The stored SAE reproduces the stored test MSE.
    from mdl_utils.train import evaluate_sae

    sae = load_cached_sae(tmp_path, key)
    assert evaluate_sae(sae, data.test).mse == pytest.approx(row["mse_test"], rel=1e-6)


def test_a_cache_entry_written_by_a_different_config_is_refused(tmp_path):
    data = _sweep_data()
    cfg = TrainConfig(width=6, k=2, progress=False, **TINY_TRAIN)
    train_cached(cfg, data, tmp_path)
    entry_path = tmp_path / config_key(cfg, data.fingerprint) / "entry.json"
    entry = json.loads(entry_path.read_text())
    entry["config"]["lr"] = 0.5
    entry_path.write_text(json.dumps(entry))
    with pytest.raises(CacheMismatchError, match=r"different configuration \(lr: stored 0.5, requested 0.003\)"):
        train_cached(cfg, data, tmp_path)
    assert issubclass(CacheMismatchError, ValueError)


def _fake_trainer(monkeypatch, mse_of_k):
    """Replace training by a known MSE(k) curve; records the k values tried."""
    tried: list[float] = []

    def fake(config, data, cache_dir, trainer=None):
        tried.append(config.k)
        mse = mse_of_k(config.k, config.width)
        return {"k": config.k, "width": config.width, "mse_test": mse, "mse_val": mse, "key": f"k{config.k}"}

    monkeypatch.setattr(sweep_mod, "train_cached", fake)
    return tried


def test_target_search_lands_in_the_band(monkeypatch):
    # A power law MSE = 0.1 * k^-0.8: the band [0.0095, 0.01] is hit at k in [17.78, 18.95].
    tried = _fake_trainer(monkeypatch, lambda k, w: 0.1 * k**-0.8)
    target = TargetSpec(epsilon=0.01, band_low=0.95, split="test", k_start=2, max_trials=8)
    result = search_k_for_target({}, 64, None, "unused", target)
    assert result["status"] == "hit"
    assert 0.0095 <= result["mse"] <= 0.01
    assert (0.1 / 0.01) ** (1 / 0.8) <= result["k"] <= (0.1 / 0.0095) ** (1 / 0.8)
    assert result["n_trials"] == len(tried) <= 5


def test_target_search_on_a_non_power_law_curve(monkeypatch):
    # MSE = 0.02 * exp(-k / 10) + 0.001: band [0.0095, 0.01] <=> k in [6.93, 7.44]
    _fake_trainer(monkeypatch, lambda k, w: 0.02 * math.exp(-k / 10) + 0.001)
    target = TargetSpec(epsilon=0.01, split="test", k_start=40, max_trials=10)
    result = search_k_for_target({}, 128, None, "unused", target)
    assert result["status"] == "hit"
    assert 10 * math.log(0.02 / 0.009) <= result["k"] <= 10 * math.log(0.02 / 0.0085)


def test_target_search_reports_unreachable_and_below_band(monkeypatch):
    _fake_trainer(monkeypatch, lambda k, w: 0.1 * k**-0.8)
    target = TargetSpec(epsilon=0.01, split="test", k_start=2, max_trials=8)
    narrow = search_k_for_target({}, 8, None, "unused", target)  # k <= 8 gives MSE >= 0.019
    assert narrow["status"] == "unreachable" and narrow["k"] is None
    easy = TargetSpec(epsilon=0.5, split="test", k_start=4, max_trials=8)  # k=1 already gives 0.1
    result = search_k_for_target({}, 64, None, "unused", easy)
    assert result["status"] == "below_band" and result["k"] == 1.0 and result["mse"] == pytest.approx(0.1)


def test_sweep_config_errors_name_the_problem(tmp_path):
    path = _write_config(tmp_path, "bad", {"width": [4], "k": [2]})
    raw = json.loads(path.read_text())
    for change, message in [
        ({"grid": {"width": [4], "k": [2], "widht": [3]}}, "unknown TrainConfig field"),
        ({"grid": {"width": [4]}}, "grid mode needs k"),
        ({"target": {"epsilon": 0.1}}, "target mode searches k"),
        ({"colour": 1}, "unknown key"),
        ({"data": {"source": "csv"}}, "data.source must be"),
    ]:
        path.write_text(json.dumps({**raw, **change}))
        with pytest.raises(ValueError, match=message):
            load_sweep_config(path)


def _read_rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row.pop("train_seconds")  # wall-clock time of whichever run trained it
    return rows


def _cli(config: Path) -> list[str]:
    return [sys.executable, "-m", "mdl_utils", "sweep", "--config", str(config), "--no-progress", "--threads", "1"]


def test_sweep_killed_with_sigkill_resumes_to_the_same_table(tmp_path):
    grid = {"width": [4, 6, 8, 10, 12, 14], "k": [2, 3], "seed": [0]}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Uninterrupted reference run.
    full_cfg = _write_config(tmp_path, "full", grid)
    subprocess.run(_cli(full_cfg), check=True, cwd=REPO, env=env, capture_output=True, timeout=120)
    reference = _read_rows(tmp_path / "full")
    assert len(reference) == 12

    # Same sweep, killed with SIGKILL as soon as some (not all) SAEs are cached.
    cfg = _write_config(tmp_path, "killed", grid)
    cache = tmp_path / "killed" / "cache"
    proc = subprocess.Popen(_cli(cfg), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    def finished() -> list[Path]:  # complete entries (temporary folders start with ".")
        return [p for p in cache.glob("*/entry.json") if not p.parent.name.startswith(".")]

    while time.time() < deadline:
        done = finished() if cache.exists() else []
        if len(done) >= 3 or proc.poll() is not None:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(finished())
    assert 1 <= n_done < 12, f"kill landed at {n_done} of 12 entries"
    mtimes = {p: p.stat().st_mtime_ns for p in finished()}

    subprocess.run(_cli(cfg), check=True, cwd=REPO, env=env, capture_output=True, timeout=120)
    assert _read_rows(tmp_path / "killed") == reference
    assert json.loads((tmp_path / "killed" / "results.json").read_text())[0]["key"] == reference[0]["key"]
    # Finished SAEs were not retrained, and no temporary folders remain.
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())
    assert not list(cache.glob(".tmp-*"))


def test_target_mode_sweep_writes_targets_table_and_resumes_from_cache(tmp_path):
    target = {"epsilon": 0.05, "band_low": 0.5, "split": "test", "k_start": 2, "max_trials": 4}
    cfg_path = _write_config(tmp_path, "tgt", {"width": [6, 12]}, target=target)
    config = load_sweep_config(cfg_path)
    first = run_sweep(config)
    assert [t["width"] for t in first.targets] == [6, 12]
    for t in first.targets:
        assert t["status"] in {"hit", "unreachable", "below_band", "not_converged"}
        if t["status"] == "hit":
            assert 0.025 <= t["mse"] <= 0.05
    with open(tmp_path / "tgt" / "targets.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    n_entries = len(list((tmp_path / "tgt" / "cache").glob("*/entry.json")))
    assert n_entries == len(first.rows)
    second = run_sweep(config)  # everything from the cache
    assert second.targets == first.targets and second.rows == first.rows
