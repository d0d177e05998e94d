"""Shared test set-up: point MNIST at the shared copy when it exists (CI never downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"

if "MDL_MNIST_DIR" not in os.environ and SHARED_MNIST.is_dir():
    os.environ["MDL_MNIST_DIR"] = str(SHARED_MNIST)


@pytest.fixture
def mnist_source_dir() -> Path:
    """The folder holding the four official MNIST files, or skip when there is none."""
    folder = os.environ.get("MDL_MNIST_DIR")
    if not folder or not Path(folder).is_dir():
        pytest.skip("MNIST is not available: set MDL_MNIST_DIR")
    return Path(folder)
