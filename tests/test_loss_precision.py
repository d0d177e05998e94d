"""Tests for mdl_utils.dl.effective_precision_for_loss (the whole-bit precision search for any
loss), checked against the MSE search and against bin widths worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdl_utils import dl


def _latents(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((200, 12)) * (rng.random((200, 12)) < 0.3)


def test_loss_precision_agrees_with_effective_precision_when_the_loss_is_the_mse():
    z = _latents()
    w = np.random.default_rng(1).normal(size=(12, 5))
    x = z @ w
    for tolerance, mode in ((1e-3, "increase"), (0.02, "absolute")):
        old = dl.effective_precision(z, lambda q: q @ w, x, tolerance=tolerance, mode=mode)
        new = dl.effective_precision_for_loss(
            z, lambda q: float(np.mean((q @ w - x) ** 2)), tolerance=tolerance, mode=mode
        )
        assert new.bits == old.bits and new.loss == pytest.approx(old.mse, rel=1e-12)
        assert new.loss_ceiling == pytest.approx(old.mse_ceiling) and len(new.tried) == len(old.tried)


def test_loss_precision_matches_the_bin_width_by_hand():
    # The largest quantisation error of a feature is half its bin width, max_i / 2**(bits + 1);
    # all features share max 1, so the coarsest bits meeting ceiling t is ceil(log2(1/t)) - 1.
    z = np.linspace(0.0, 1.0, 1001)[:, None] * np.ones((1, 3))

    def max_error(q: np.ndarray) -> float:
        return float(np.abs(q - z).max())

    for t, expected in ((0.3, 1), (0.1, 3), (0.01, 6)):
        result = dl.effective_precision_for_loss(z, max_error, tolerance=t)
        assert result.bits == expected == math.ceil(math.log2(1 / t)) - 1
        assert result.loss_unquantised == 0.0 and result.loss <= t


def test_loss_precision_accepts_negative_losses_and_torch_latents():
    z = torch.from_numpy(_latents(2))
    seen = []

    def loss(q):
        seen.append(type(q))
        return float((q - z).abs().max()) - 1.0  # negative: in [-1, -0.5]

    result = dl.effective_precision_for_loss(z, loss, tolerance=-0.9)
    assert result.bits == 3  # max error <= 0.1 first at 2**-(3+1) of the range (ranges < 1)
    assert all(t is torch.Tensor for t in seen)


def test_loss_precision_errors():
    z = _latents()
    with pytest.raises(ValueError, match="already have loss"):
        dl.effective_precision_for_loss(z, lambda q: 1.0, tolerance=0.5)
    with pytest.raises(ValueError, match="no candidate precision meets"):
        dl.effective_precision_for_loss(z, lambda q: float(np.abs(q - z).max()), tolerance=1e-9, candidates=[1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        dl.effective_precision_for_loss(z, lambda q: float("nan"), tolerance=0.5)
    with pytest.raises(ValueError, match="tolerance"):
        dl.effective_precision_for_loss(z, lambda q: 0.0, tolerance=-1.0, mode="increase")
    with pytest.raises(ValueError, match="tolerance"):
        dl.effective_precision_for_loss(z, lambda q: 0.0, tolerance=float("inf"))
    with pytest.raises(ValueError, match="mode"):
        dl.effective_precision_for_loss(z, lambda q: 0.0, tolerance=0.1, mode="relative")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="callable"):
        dl.effective_precision_for_loss(z, 0.1, tolerance=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers"):
        dl.effective_precision_for_loss(z, lambda q: 0.0, tolerance=0.1, candidates=[1.5])


