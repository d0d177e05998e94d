"""Run profiles shared by every chapter: ``quick`` (minutes, CI) and ``full`` (paper scale)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

__all__ = ["PROFILES", "choose", "cache_dir", "results_dir"]

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
