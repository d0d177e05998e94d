"""Shared test set-up: point MNIST at the shared copy when it exists (CI never downloads);
fixtures used by several test modules."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mdl_utils.sae import BatchTopKSAE

# One torch thread, as every chapter and job uses: `make test` runs the unit tests beside an
# executing chapter, and two processes each running two threads on two cores make both slow.
torch.set_num_threads(1)

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


@pytest.fixture
def identity_sae() -> Callable[[int], BatchTopKSAE]:
    """Make a d-feature SAE whose latents are relu(x) and whose reconstruction is the latents.

    Exact on non-negative inputs: encoder and decoder are the identity, biases zero, and the
    inference threshold 0 (so every positive input is kept, whatever k).
    """

    def make(d: int) -> BatchTopKSAE:
        sae = BatchTopKSAE(d, d, k=float(d), seed=0)
        with torch.no_grad():
            sae.W_enc_FD.copy_(torch.eye(d))
            sae.W_dec_FD.copy_(torch.eye(d))
            sae.b_enc_F.zero_()
            sae.b_dec_D.zero_()
            sae.threshold.fill_(0.0)
        return sae

    return make
