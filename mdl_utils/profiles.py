"""Run profiles shared by every chapter: ``quick`` (minutes, CI) and ``full`` (paper scale)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["PROFILES", "choose", "cache_dir", "results_dir", "parse_job_args"]

PROFILES: tuple[str, ...] = ("quick", "full")

T = TypeVar("T")


def choose(profile: str, *, quick: T, full: T) -> T:
    """Return the setting for ``profile``; an unknown profile is a ValueError naming the choices."""
    if profile == "quick":
        return quick
    if profile == "full":
        return full
    raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")


def cache_dir() -> Path:
    """Where chapters cache trained models: ``$MDL_CACHE_DIR``, else ``~/.cache/mdl-sae/models``.

    The Makefile points it at ``_build/cache``, so a chapter that nbval re-executes reuses the
    SAEs trained when papermill executed it (keys cover the full configuration and the data,
    so a changed setting retrains), and ``make clean`` removes them.
    """
    default = Path.home() / ".cache" / "mdl-sae" / "models"
    return Path(os.environ.get("MDL_CACHE_DIR", default)).expanduser()


def results_dir() -> Path:
    """Committed results: ``$MDL_RESULTS_DIR``, else ``results/`` beside the mdl_utils package."""
    default = Path(__file__).resolve().parents[1] / "results"
    return Path(os.environ.get("MDL_RESULTS_DIR", default)).expanduser()


def parse_job_args(
    argv: list[str] | None,
    *,
    prog: str,
    doc: str,
    out_subdir: str = "",
    threads: int | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse the options shared by the long resumable jobs (``mnist-sweep``, ``beyond``, ``downstream``).

    Options: ``--profile`` (default full), ``--out`` (default ``results/<profile>/<out_subdir>``,
    filled in), ``--cache``, ``--no-progress`` and ``--threads`` (applied to torch here;
    default ``threads``, None leaves torch's own). ``extra`` may add job-specific options.
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="full")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: results/<profile>/{out_subdir})")
    parser.add_argument("--cache", type=Path, default=None,
                        help="model cache (default: $MDL_CACHE_DIR or ~/.cache/mdl-sae/models)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=threads, help="torch CPU threads")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.out is None:
        args.out = results_dir() / args.profile / out_subdir
    return args
