"""Run profiles shared by every chapter: ``quick`` (minutes, CI) and ``full`` (paper scale)."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["PROFILES", "choose"]

PROFILES: tuple[str, ...] = ("quick", "full")

T = TypeVar("T")


def choose(profile: str, *, quick: T, full: T) -> T:
    """Return the setting for ``profile``; an unknown profile is a ValueError naming the choices."""
    if profile == "quick":
        return quick
    if profile == "full":
        return full
    raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
