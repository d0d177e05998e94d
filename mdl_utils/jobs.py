"""The command line shared by the book's long, resumable jobs.

``python -m mdl_utils mnist-sweep`` (:mod:`mdl_utils.study`), ``epsilon-scan``
(:mod:`mdl_utils.epsilon_scan`) and ``downstream`` (:mod:`mdl_utils.downstream`) take the
same options and fail the same way; this module holds both, so each job's ``main`` only names
its own options, how to train, how to summarise and what to print.

Options of every job (:func:`job_parser`): ``--profile``, ``--out`` (default
``results/<profile>/<folder>``), ``--cache``, ``--budget-hours``, ``--device``, ``--threads``
(torch CPU threads, default 1: float sums then do not depend on the core count, so results
reproduce on another machine), ``--no-progress`` (no bar: a plain line per trained SAE, for a
log file), ``--summary-only`` (rewrite the summary from
the rows on disk, no training) and the executor's ``--workers`` / ``--ray-address``
(:mod:`mdl_utils.executors`).

Exit codes (:func:`run_job`): 0 done (finished or stopped by the budget; rerun to resume),
1 the job failed (bad data, missing rows, a failed training), 2 bad options or no executor.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mdl_utils.executors import Executor, add_executor_args, executor_from_args
from mdl_utils.profiles import PROFILES, provenance, results_dir
from mdl_utils.study_summary import rewrite_summary

__all__ = ["job_parser", "parse_job", "run_job", "training_options"]


def job_parser(
    *, prog: str, doc: str, out_subdir: str, default_profile: str = "full", summary_name: str = "summary.json"
) -> argparse.ArgumentParser:
    """An argparse parser with the options every long job takes; add the job's own to it.

    Args:
        prog: the command, e.g. ``"python -m mdl_utils downstream"``.
        doc: the job module's docstring (its first paragraph is the description).
        out_subdir: the job's folder under ``results/<profile>/``.
        default_profile: ``"full"`` or ``"quick"``.
        summary_name: the file ``--summary-only`` rewrites (named in its help).
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--profile", choices=list(PROFILES), default=default_profile)
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default: results/<profile>/{out_subdir})"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="model cache (default: $MDL_CACHE_DIR or ~/.cache/mdl-sae/models)"
    )
    parser.add_argument(
        "--budget-hours", type=float, default=None, help="stop starting new trainings after this many hours (resumable)"
    )
    parser.add_argument("--device", default="auto", help="training device: auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: reproducible sums)")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar: one plain line per trained SAE on stderr instead (for a log file)",
    )
    parser.add_argument(
        "--summary-only", action="store_true", help=f"only rewrite {summary_name} from the rows on disk (no training)"
    )
    add_executor_args(parser)
    parser.set_defaults(_out_subdir=out_subdir)
    return parser


def parse_job(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with a :func:`job_parser` parser: applies ``--threads`` to torch and fills
    in the default ``--out``. Bad options exit with status 2 and a message (argparse)."""
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.budget_hours is not None and not args.budget_hours > 0:
        parser.error(f"--budget-hours must be positive, got {args.budget_hours}")
    import torch

    torch.set_num_threads(args.threads)
    if args.out is None:
        args.out = results_dir() / args.profile / args._out_subdir
    return args


def training_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments every job's run function takes from the options: ``cache``,
    ``budget_hours``, ``device``, ``progress`` and ``threads``."""
    return {
        "cache": args.cache,
        "budget_hours": args.budget_hours,
        "device": args.device,
        "progress": "lines" if args.no_progress else True,
        "threads": args.threads,
    }


#: A job's summary: a dict, or a typed record that writes itself (chapter 6's scan).
_Summary = TypeVar("_Summary")


def run_job(
    args: argparse.Namespace,
    *,
    train: Callable[[Executor], _Summary],
    summarise: Callable[[], _Summary],
    report: Callable[[_Summary], str],
    summary_path: Path | None = None,
) -> int:
    """Train (or, with ``--summary-only``, only summarise), print the report, return the exit code.

    Args:
        args: from :func:`parse_job`.
        train: runs the job on the executor the options ask for and returns its summary (the
            job writes its own files).
        summarise: rebuilds the summary from the rows on disk.
        report: one line for the terminal from a summary.
        summary_path: where ``--summary-only`` writes the summary
            (:func:`mdl_utils.study_summary.rewrite_summary`: the provenance the training run
            recorded in the earlier file is kept; with no earlier file, this call's is added);
            ``None`` when ``summarise`` writes it itself.
    """
    try:
        if args.summary_only:
            started = time.time()
            payload = summarise()
            if summary_path is not None:
                if not isinstance(payload, dict):
                    raise TypeError("summary_path needs a summary in dict form (a typed one writes itself)")
                # Keep what the run that trained the rows recorded (machine, date, code version,
                # executor, budget stop); only a first summary gets this call's record.
                rewrite_summary(summary_path, payload, record={**provenance(started), "stopped_by_budget": False})
        else:
            try:
                executor = executor_from_args(args, device=args.device, threads=args.threads)
            except (ValueError, ConnectionError, RuntimeError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            with executor:
                payload = train(executor)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report(payload))
    return 0
