"""Tests for mdl_utils.executors: the same study and sweeps run serially and on a local
2-worker Ray instance give the same tables (measured times aside) and the same stored SAEs;
a Ray worker killed mid-training is retried and the sweep ends with the same table; bad
addresses and missing resources are refused with messages that name them."""

from __future__ import annotations

import csv
import dataclasses
import filecmp
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mdl_utils.executors import (
    RayExecutor,
    SerialExecutor,
    TaskFailedError,
    add_executor_args,
    executor_from_args,
    make_executor,
)
from mdl_utils.study import run_study
from mdl_utils.study_store import load_rows
from mdl_utils.data import DataSpec, SweepData
from mdl_utils.sweep import SweepConfig, TargetSpec, run_sweep
from test_study import SETTINGS as STUDY_SETTINGS
from test_study import _data as study_data

REPO = Path(__file__).resolve().parents[1]

# The study's own tiny test case (two widths, two seeds, short trainings), fewer bootstrap draws.
SMALL = dataclasses.replace(STUDY_SETTINGS, n_boot=10, max_trainings_per_search=6)
TRAIN = {"max_epochs": 8, "batch_size": 100, "patience": 3, "lr": 3e-3, "device": "cpu"}


def _data(seed: int = 0) -> SweepData:
    return study_data(seed)


def test_a_cluster_without_the_gpus_a_training_needs_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import ray

    assert not ray.is_initialized()  # this test runs before the module's shared instance starts
    with pytest.raises(RuntimeError, match=r"0 GPUs, but one training asks for 1 CPU\(s\) and 1 GPU"):
        RayExecutor(1, gpus_per_task=1)
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def ray2():
    """One local Ray instance with two workers, shared by the tests of this module."""
    with RayExecutor(2) as executor:
        yield executor


def _without_times(rows: list[dict]) -> list[dict]:
    out = json.loads(json.dumps(rows))
    for r in out:
        r.get("train", r).pop("train_seconds", None)
    return out


def _csv_without(path: Path, column: str) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    for r in rows:
        r.pop(column, None)
    return rows


def test_a_study_on_two_ray_workers_writes_what_the_serial_study_writes(tmp_path, ray2):
    data = _data()
    serial = run_study(SMALL, tmp_path / "serial", cache=tmp_path / "cache-serial", progress=False, data=data)
    parallel = run_study(SMALL, tmp_path / "ray", cache=tmp_path / "cache-ray", progress=False, data=data,
                         executor=ray2)
    assert serial["complete"] and parallel["complete"]
    # Rows: equal field by field, apart from the measured training time.
    for path in sorted((tmp_path / "serial" / "rows").glob("*.json")):
        other = tmp_path / "ray" / "rows" / path.name
        assert _without_times(json.loads(path.read_text())) == _without_times(json.loads(other.read_text()))
    assert len(load_rows(tmp_path / "ray")) == len(load_rows(tmp_path / "serial")) >= 8
    # The stored DL-optimal SAEs are the same files, byte for byte.
    stored = sorted(p.name for p in (tmp_path / "serial" / "saes").glob("*.*"))
    assert stored and stored == sorted(p.name for p in (tmp_path / "ray" / "saes").glob("*.*"))
    for name in stored:
        assert filecmp.cmp(tmp_path / "serial" / "saes" / name, tmp_path / "ray" / "saes" / name, shallow=False)
    for key in ("dl_star", "resolution", "widths", "points", "remaining"):
        assert serial[key] == parallel[key], key
    assert parallel["executor"].startswith("local Ray, 2 trainings at once")
    assert serial["executor"] == "serial (in process)"


@pytest.fixture
def one_thread():
    """Serial runs on one torch thread, like each Ray worker: floating-point sums then run in
    the same order, so the tables can be compared exactly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _descends_from_this_process(pid: int, parents: dict[int, int]) -> bool:
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        pid = parents.get(pid, 0)
    return False


def _ray_workers_training() -> list[int]:
    """PIDs of this test's Ray worker processes running a training (Ray titles them
    ``ray::_call``). Only descendants of this process count: the local Ray instance is started
    from here, so a long job training on another Ray instance of the machine is left alone."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    rows = [r for r in rows if len(r) == 3]
    parents = {int(pid): int(ppid) for pid, ppid, _ in rows}
    return [int(pid) for pid, _, args in rows
            if args.startswith("ray::_call") and _descends_from_this_process(int(pid), parents)]


def test_a_grid_sweep_survives_a_killed_worker_and_writes_the_serial_table(tmp_path, ray2, one_thread):
    data = _data(1)
    grid = {"width": [8, 16], "k": [3, 5], "seed": [0]}
    serial = SweepConfig(out_dir=tmp_path / "serial", data=DataSpec(), train=TRAIN, grid=grid, progress=False)
    run_sweep(serial, data)

    killed: list[int] = []
    stop = threading.Event()

    def kill_one_worker() -> None:
        while not stop.is_set() and not killed:
            pids = _ray_workers_training()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    try:
        parallel = SweepConfig(out_dir=tmp_path / "ray", data=DataSpec(), train=TRAIN, grid=grid, progress=False)
        result = run_sweep(parallel, data, executor=ray2)
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray worker was caught training: the kill was not tested"
    assert len(result.rows) == 4
    assert (_csv_without(tmp_path / "serial" / "results.csv", "train_seconds")
            == _csv_without(tmp_path / "ray" / "results.csv", "train_seconds"))


def test_a_target_sweep_runs_its_series_side_by_side_and_writes_the_serial_tables(tmp_path, ray2, one_thread):
    data = _data(2)
    grid = {"width": [8, 16], "seed": [0, 1]}
    target = TargetSpec(epsilon=0.2, band_low=0.8, k_start=4, max_trials=4)
    serial = SweepConfig(out_dir=tmp_path / "serial", data=DataSpec(), train=TRAIN, grid=grid, target=target, progress=False)
    run_sweep(serial, data)
    parallel = dataclasses.replace(serial, out_dir=tmp_path / "ray")
    result = run_sweep(parallel, data, executor=ray2)
    assert len(result.targets) == 4
    for name in ("results.csv", "targets.csv"):
        assert (_csv_without(tmp_path / "serial" / name, "train_seconds")
                == _csv_without(tmp_path / "ray" / name, "train_seconds")), name


def test_a_failing_training_on_ray_is_reported_with_its_configuration(ray2):
    def broken(config: dict) -> None:
        raise ValueError(f"cannot train {config}")

    task = ray2.submit(broken, {"width": 8}, tag=("width", 8))
    with pytest.raises(TaskFailedError, match=r"\('width', 8\).*cannot train"):
        ray2.result(task)


def test_an_unreachable_address_is_named_without_waiting_for_ray():
    started = time.time()
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
        make_executor(address="127.0.0.1:1")
    with pytest.raises(ValueError, match="HOST:PORT"):
        make_executor(address="not-an-address")
    assert time.time() - started < 30


def test_the_command_line_names_a_bad_address_and_exits_2(tmp_path):
    env = {**os.environ, "MDL_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "mdl_utils", "mnist-sweep", "--profile", "quick", "--out", str(tmp_path / "out"),
         "--ray-address", "127.0.0.1:1", "--no-progress"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert done.returncode == 2
    assert "127.0.0.1:1" in done.stderr and done.stdout == ""
    assert not (tmp_path / "out").exists()


def test_ray_address_from_the_environment_joins_that_cluster(monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    add_executor_args(parser)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert isinstance(executor_from_args(parser.parse_args([])), SerialExecutor)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
        executor_from_args(parser.parse_args([]))
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        executor_from_args(parser.parse_args(["--workers", "0"]))


def test_the_serial_executor_runs_at_submit_and_hands_back_errors():
    ex = SerialExecutor()
    calls = []
    task = ex.submit(lambda x: calls.append(x) or 2 * x, 21)
    assert calls == [21] and ex.wait([task]) == [task] and ex.result(task) == 42
    failing = ex.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        ex.result(failing)
    assert ex.capacity == 1 and ex.run(max, 3, 7) == 7


def test_an_epsilon_scan_runs_its_tolerances_side_by_side_and_writes_the_serial_rows(tmp_path, ray2):
    from mdl_utils.epsilon_scan import run_epsilon_scan

    data = _data()
    kwargs = dict(epsilons=(SMALL.epsilon, 2 * SMALL.epsilon), progress=False, data=data, curves=False)
    serial = run_epsilon_scan(SMALL, tmp_path / "serial", cache=tmp_path / "cache-serial", **kwargs)
    parallel = run_epsilon_scan(SMALL, tmp_path / "ray", cache=tmp_path / "cache-ray", executor=ray2, **kwargs)
    folders = sorted(p.name for p in (tmp_path / "serial").glob("eps-*"))
    assert len(folders) == 2 and folders == sorted(p.name for p in (tmp_path / "ray").glob("eps-*"))
    for folder in folders:
        for path in sorted((tmp_path / "serial" / folder / "rows").glob("*.json")):
            other = tmp_path / "ray" / folder / "rows" / path.name
            assert _without_times(json.loads(path.read_text())) == _without_times(json.loads(other.read_text()))
    for a, b in zip(serial.to_dict()["entries"], parallel.to_dict()["entries"]):
        a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
        for e in (a, b):
            e.pop("training_time_s")
        assert a == b
    assert serial.fits == parallel.fits
