"""Run profiles shared by every chapter: ``quick`` (minutes, CI) and ``full`` (paper scale)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import datetime, UTC
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "PROFILES",
    "choose",
    "cache_dir",
    "results_dir",
    "code_version",
    "provenance",
    "write_results",
    "load_json_object",
    "read_record",
    "read_results",
]

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


def code_version() -> str:
    """The git commit of the code, with ``-dirty`` when tracked files outside ``results/`` differ.

    Rewriting committed results (a rerun of a job over its own output) does not count as a
    change of the code that produced them. ``"unknown"`` outside a git checkout.
    """
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return f"{commit}-dirty" if changed else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_description() -> str:
    """This machine as the jobs record it: host, architecture, CPUs, Python, torch's threads and
    the CPU kernels torch uses (AVX2 or AVX-512 change the last digits of a training)."""
    import torch  # a hard dependency; imported here so that the profiles load without it

    return (
        f"{platform.node() or 'unknown'} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch threads {torch.get_num_threads()}, "
        f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()})"
    )


def provenance(started: float) -> dict[str, Any]:
    """What the long jobs record about their run: machine, date, wall time, code version.

    Args:
        started: ``time.time()`` when the job began; ``wall_time_s`` is measured from it.
    """
    return {
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_time_s": round(time.time() - started, 1),
        "code_version": code_version(),
    }


def write_results(path: str | os.PathLike[str], payload: dict[str, Any], *, indent: int = 2) -> None:
    """Write a job's JSON results atomically (a reader never sees half a file)."""
    from mdl_utils.io import atomic_write_text

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(payload, indent=indent))


def load_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON file that must hold an object.

    Raises:
        ValueError: the file is not valid JSON, or holds something other than an object (the
            message names the file).
    """
    target = Path(path)
    try:
        payload = json.loads(target.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{target} is not valid JSON ({err}): restore it from git, or delete it") from err
    if not isinstance(payload, dict):
        raise ValueError(f"{target} holds a JSON {type(payload).__name__}, not an object")
    return payload


def read_results(path: str | os.PathLike[str], *, version: int, how_to_make: str) -> dict[str, Any]:
    """Read a job's JSON results and check their format.

    Raises:
        FileNotFoundError: no such file; the message ends with ``how_to_make``.
        ValueError: the file was written by another results format than ``version``.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"{target} does not exist: {how_to_make}")
    payload = load_json_object(target)
    if payload.get("format_version") != version:
        raise ValueError(f"{target} has results format {payload.get('format_version')}, this code reads {version}")
    return payload


_Record = TypeVar("_Record")


def read_record(
    path: str | os.PathLike[str],
    parse: Callable[[dict[str, Any]], _Record],
    *,
    version: int,
    how_to_make: str,
    what: str,
) -> _Record:
    """Read a job's JSON results (:func:`read_results`) into its typed record with ``parse``.

    Raises:
        FileNotFoundError: no such file; the message ends with ``how_to_make``.
        ValueError: another results format, or a file that lacks what ``what`` holds.
    """
    payload = read_results(path, version=version, how_to_make=how_to_make)
    try:
        return parse(payload)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not {what} ({type(err).__name__}: {err})") from err
