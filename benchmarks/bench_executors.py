"""Benchmark: chapter 3's quick study, serial against trainings on a local Ray instance.

Runs the quick-profile study (:func:`mdl_utils.study.run_study`) twice from empty caches:
serially in this process with ``--threads`` torch threads, and on ``--workers`` local Ray
workers with one thread each. Prints both wall times, their ratio, and whether the two runs
wrote the same rows (they can differ in the last bits when the thread counts differ, since
floating-point sums then run in another order). Run it on an otherwise idle machine (Ray's
workers run at a lower priority than other processes)::

    MDL_MNIST_DIR=... python benchmarks/bench_executors.py [--workers 2] [--threads 2] [--bound]

``--bound`` adds a one-thread serial run and prints the largest speed-up the workers could
reach (one-thread time divided by the number of workers).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mdl_utils.executors import RayExecutor
from mdl_utils.study import run_study
from mdl_utils.study_store import load_rows
from mdl_utils.study_plan import study_settings


def _rows(out: Path) -> list[dict]:
    rows = json.loads(json.dumps(load_rows(out)))
    for r in rows:
        r["train"].pop("train_seconds", None)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the serial run")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--bound", action="store_true",
                        help="also run serially on one thread, and print the best speed-up the "
                             "workers could reach (one-thread time / workers against the serial run)")
    args = parser.parse_args()
    settings = study_settings(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        run_study(settings, root / "serial", cache=root / "cache-serial", progress=False, threads=args.threads)
        serial = time.perf_counter() - t0
        n = len(load_rows(root / "serial"))
        print(f"serial, {args.threads} thread(s): {serial:.1f} s for {n} SAEs", flush=True)
        t0 = time.perf_counter()
        with RayExecutor(args.workers) as executor:
            run_study(settings, root / "ray", cache=root / "cache-ray", progress=False, threads=1,
                      executor=executor)
        parallel = time.perf_counter() - t0
        print(f"Ray, {args.workers} workers x 1 thread (start-up included): {parallel:.1f} s for "
              f"{len(load_rows(root / 'ray'))} SAEs", flush=True)
        print(f"speed-up: {serial / parallel:.2f}x")
        same = _rows(root / "serial") == _rows(root / "ray")
        print(f"same rows as the serial run (training times aside): {'yes' if same else 'no'}")
        if args.bound:
            t0 = time.perf_counter()
            run_study(settings, root / "one", cache=root / "cache-one", progress=False, threads=1)
            one = time.perf_counter() - t0
            ideal = one / args.workers
            print(f"serial, 1 thread: {one:.1f} s; {args.threads} threads gain {one / serial:.2f}x over it")
            print(f"bound: {args.workers} one-thread workers take at least {ideal:.1f} s, so the speed-up "
                  f"over the {args.threads}-thread serial run is at most {serial / ideal:.2f}x "
                  f"(measured {serial / parallel:.2f}x, {ideal / parallel:.0%} of the bound)")


if __name__ == "__main__":
    main()
