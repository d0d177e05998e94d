"""Where the SAE trainings of a long job run: in this process, or on Ray.

A study is many independent trainings (widths x seeds), each search over k within one
(width, seed) sequential. The jobs (:func:`mdl_utils.study.run_study`,
:func:`mdl_utils.sweep.run_sweep`) hand each training to an :class:`Executor` and keep
everything else (the search decisions, the cache, the tables, the measurements) in the
driver process:

- :class:`SerialExecutor` (the default) trains in this process, one SAE at a time, exactly
  as the jobs always did;
- :class:`RayExecutor` sends each training to a Ray worker: a local Ray instance that the
  command starts and stops itself (``--workers N``), or an existing cluster
  (``--ray-address ADDRESS``, or the ``RAY_ADDRESS`` environment variable).

A worker receives the training configuration and the data (through Ray's object store, put
there once), trains, evaluates the SAE on the splits, and returns the SAE, its training
history and its results row. It writes nothing: the driver alone writes the cache and the
tables, so workers need no shared filesystem. Training is deterministic for a given
configuration and thread count, so a sweep gives the same tables whichever executor runs
it. A worker process that dies mid-training is replaced and its training retried by Ray
(``max_retries``); a driver that dies resumes from the cache like a serial run.

Command-line use (``python -m mdl_utils mnist-sweep`` and ``python -m mdl_utils sweep``)::

    --workers N            # local Ray, N trainings at once (one CPU each)
    --ray-address HOST:PORT  # join a running cluster (see the README's "Running on a cluster")
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias

__all__ = [
    "Executor",
    "SerialExecutor",
    "RayExecutor",
    "TaskFailedError",
    "Task",
    "Progress",
    "ProgressMode",
    "check_progress_mode",
    "make_executor",
    "executor_from_args",
    "add_executor_args",
]


class TaskFailedError(RuntimeError):
    """A training failed (an error in the training itself, or a worker lost more often than
    Ray retries); the message names the configuration."""


class Task:
    """A submitted training: ``tag`` is the caller's, the rest belongs to the executor."""

    def __init__(self, tag: Any, handle: Any = None, value: Any = None, error: BaseException | None = None):
        self.tag = tag
        self.handle = handle
        self.value = value
        self.error = error


class Executor:
    """Runs trainings. ``capacity``: how many may run at once (the driver keeps at most that
    many in flight). ``describe()``: a short line for logs and provenance."""

    capacity: int = 1

    def put(self, value: Any) -> Any:
        """Make ``value`` (e.g. the training data) available to the trainings; returns the
        handle to pass to :meth:`submit`."""
        return value

    def submit(self, fn: Callable[..., Any], *args: Any, tag: Any = None) -> Task:
        """Start ``fn(*args)``; ``tag`` names it in errors. Returns its :class:`Task`."""
        raise NotImplementedError

    def wait(self, tasks: Sequence[Task]) -> list[Task]:
        """Block until at least one of ``tasks`` has finished; return the finished ones."""
        raise NotImplementedError

    def result(self, task: Task) -> Any:
        """The finished task's value. Raises TaskFailedError when it failed."""
        raise NotImplementedError

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Submit one call and wait for its value (blocking; safe from several threads)."""
        task = self.submit(fn, *args)
        while not self.wait([task]):
            pass
        return self.result(task)

    def describe(self) -> str:
        """A short line saying where the trainings run (logs, provenance)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (a local Ray instance); also on ``with`` exit."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SerialExecutor(Executor):
    """Runs each call in this process when it is submitted (today's behaviour)."""

    capacity = 1

    def submit(self, fn: Callable[..., Any], *args: Any, tag: Any = None) -> Task:
        try:
            return Task(tag, value=fn(*args))
        except Exception as err:  # handed back by result(), as a Ray task's error would be
            return Task(tag, error=err)

    def wait(self, tasks: Sequence[Task]) -> list[Task]:
        return list(tasks)

    def result(self, task: Task) -> Any:
        if task.error is not None:
            raise task.error
        return task.value

    def describe(self) -> str:
        return "serial (in process)"


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast, naming the address, when nothing listens there (Ray itself retries for
    minutes before giving up)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"Ray address {address!r} is not of the form HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConnectionError(
            f"cannot reach a Ray cluster at {address!r} ({err.strerror or err}); start one with "
            "`ray start --head` on its head node, or check the address and port"
        ) from None


class RayExecutor(Executor):
    """Trainings as Ray tasks, on a local instance this object starts, or on a cluster.

    Args:
        workers: trainings at once. With ``address=None`` a local Ray instance with
            ``workers * cpus_per_task`` CPUs is started (and stopped by :meth:`close`);
            on a cluster it caps the trainings in flight (default: as many as its CPUs allow).
        address: a running cluster's address (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``).
        cpus_per_task: CPUs each training declares; its torch thread count is set to match.
        gpus_per_task: GPUs each training declares (1 when training on CUDA).
        max_retries: how often Ray retries a training whose worker process died.

    Raises:
        ConnectionError: nothing answers at ``address``.
        RuntimeError: the cluster runs another Ray version, or lacks the resources one
            training asks for.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        cpus_per_task: int = 1,
        gpus_per_task: float = 0,
        max_retries: int = 3,
    ):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if cpus_per_task < 1:
            raise ValueError(f"cpus_per_task must be at least 1, got {cpus_per_task}")
        if address is None and workers is None:
            raise ValueError("RayExecutor needs workers (a local instance) or an address (a cluster)")
        try:
            import ray
        except ImportError as err:  # pragma: no cover - ray is a pinned dependency
            raise RuntimeError("the Ray executor needs the `ray` package (pip install ray)") from err
        self._ray = ray
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self._owns = address is None
        if address is not None:
            _check_reachable(address)
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
            "ignore_reinit_error": False,
        }
        if ray.is_initialized():
            raise RuntimeError("Ray is already initialised in this process; use one executor at a time")
        try:
            if self._owns:
                # Ray detects the GPUs itself; the CPUs are those the workers were promised.
                ray.init(address="local", num_cpus=workers * cpus_per_task, **kwargs)  # type: ignore[operator]
            else:
                ray.init(address=address, **kwargs)
        except ConnectionError as err:
            raise ConnectionError(f"cannot join the Ray cluster at {address!r}: {err}") from None
        except RuntimeError as err:
            if "version" in str(err).lower():
                raise RuntimeError(
                    f"the Ray cluster at {address!r} runs another Ray or Python version than this "
                    f"driver (ray {ray.__version__}); install the same versions on every node: {err}"
                ) from None
            raise
        try:
            resources = ray.cluster_resources()
            cpus = int(resources.get("CPU", 0))
            gpus = float(resources.get("GPU", 0))
            if cpus < cpus_per_task or gpus < gpus_per_task:
                raise RuntimeError(
                    f"the Ray cluster{'' if self._owns else ' at ' + repr(address)} has {cpus} CPUs and "
                    f"{gpus:g} GPUs, but one training asks for {cpus_per_task} CPU(s) and "
                    f"{gpus_per_task:g} GPU(s)"
                )
            by_cpu = cpus // cpus_per_task
            by_gpu = int(gpus // gpus_per_task) if gpus_per_task else by_cpu
            self.capacity = max(1, min(workers or by_cpu, by_cpu, by_gpu))
        except BaseException:
            ray.shutdown()
            raise
        self._remote = ray.remote(_call).options(
            num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=max_retries, retry_exceptions=False
        )

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, fn: Callable[..., Any], *args: Any, tag: Any = None) -> Task:
        return Task(tag, handle=self._remote.remote(fn, self.cpus_per_task, *args))

    def wait(self, tasks: Sequence[Task]) -> list[Task]:
        if not tasks:
            return []
        by_ref = {t.handle: t for t in tasks}
        ready, _ = self._ray.wait(list(by_ref), num_returns=1, timeout=None)
        # Everything else already finished, without blocking.
        more, _ = self._ray.wait([r for r in by_ref if r not in ready], num_returns=len(by_ref) - len(ready), timeout=0)
        return [by_ref[r] for r in [*ready, *more]]

    def result(self, task: Task) -> Any:
        try:
            return self._ray.get(task.handle)
        except self._ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            what = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(err)
            raise TaskFailedError(f"training {task.tag!r} failed on a Ray worker: {what}") from err
        except self._ray.exceptions.RayError as err:
            raise TaskFailedError(f"training {task.tag!r} was lost on Ray (after retries): {err}") from None

    def describe(self) -> str:
        where = "local Ray" if self._owns else f"Ray cluster {self.address}"
        return f"{where}, {self.capacity} trainings at once, {self.cpus_per_task} CPU(s) each"

    def close(self) -> None:
        if self._ray.is_initialized():
            self._ray.shutdown()


def _call(fn: Callable[..., Any], threads: int, *args: Any) -> Any:
    """A Ray task: ``fn(*args)`` with torch limited to the task's CPUs."""
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


def make_executor(
    workers: int | None = None, address: str | None = None, *, device: str = "cpu", threads: int = 1
) -> Executor:
    """The executor for a job's options: serial unless ``workers`` or ``address`` is given.

    ``threads`` becomes each Ray training's CPU count; ``device == "cuda"`` makes each
    training ask for one GPU.
    """
    if workers is None and address is None:
        return SerialExecutor()
    return RayExecutor(
        workers,
        address=address,
        cpus_per_task=max(1, threads),
        gpus_per_task=1 if str(device).startswith("cuda") else 0,
    )


def add_executor_args(parser: Any) -> None:
    """Add ``--workers`` and ``--ray-address`` to an argparse parser."""
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="train on a local Ray instance, N SAEs at once (started and stopped by this command)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="train on a running Ray cluster at HOST:PORT (default: $RAY_ADDRESS when set; none: serial)",
    )


def executor_from_args(args: Any, *, device: str = "cpu", threads: int | None = 1) -> Executor:
    """The executor the parsed ``--workers`` / ``--ray-address`` options ask for."""
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    return make_executor(args.workers, address, device=device, threads=threads or 1)


#: How a long job reports: ``True`` a progress bar (with a line per trained SAE above it),
#: ``"lines"`` no bar but the same lines, plain, on stderr (for a log file: the command line's
#: ``--no-progress``), ``False`` nothing (the book's notebooks).
ProgressMode: TypeAlias = bool | Literal["lines"]


def check_progress_mode(progress: object) -> ProgressMode:
    """Return ``progress`` if it is a :data:`ProgressMode`, else raise a ValueError naming it."""
    if progress is True or progress is False or progress == "lines":
        return progress
    raise ValueError(f"progress must be True, False or 'lines', got {progress!r}")


class Progress:
    """One progress line for a whole job: units done / total, trainings running, failed,
    and the time left estimated from the pace so far (tqdm on stderr)."""

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
        self.started = time.time()

    def update(
        self, *, done: int | None = None, total: int | None = None, running: int = 0, failed: int = 0, trained: int = 0
    ) -> None:
        if self.bar is None:
            return
        if total is not None and total != self.bar.total:
            self.bar.total = total
        if done is not None and done != self.bar.n:
            self.bar.n = done
        self.bar.set_postfix(trained=trained, running=running, failed=failed, refresh=False)
        self.bar.refresh()

    def write(self, msg: str) -> None:
        """Print a line on stderr above the progress display."""
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
