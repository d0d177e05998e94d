"""Tests for mdl_utils.allocation: the swap move finds the swap a removal-only greedy cannot,
its reported MSE and DL agree with a second computation (dequantize_per_feature, quantize and
feature_entropies), and the comparison with uniform precision is made at equal MSE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdl_utils.allocation_checks import compare_at_equal_mse, swap_refine
from mdl_utils.dl import dequantize_per_feature, feature_entropies, quantize


def _two_features(n=20_000, seed=0, b_scale=1.0):
    """Feature A fires always, uniform on (0, 1]; feature B fires on 10% of samples, uniform on
    (0, b_scale]. Identity decoder: the latents are the reconstruction."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(1e-6, 1.0, n)
    b = np.where(rng.random(n) < 0.1, rng.uniform(1e-6, b_scale, n), 0.0)
    return np.stack([a, b], axis=1)


def _h2(p):
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def _second_method(z, W, b, x, bits):
    """MSE through dequantize_per_feature, DL through quantize + feature_entropies per column."""
    mse = float(np.mean((dequantize_per_feature(z, np.asarray(bits)) @ W + b - x) ** 2))
    h = 0.0
    for i in range(z.shape[1]):
        col = z[:, [i]]
        # 0 bits is one bin: the feature only says "on" (quantize needs at least some bits).
        codes = (col > 0).astype(np.int64) if bits[i] == 0 else quantize(col, bits=int(bits[i]))
        h += float(feature_entropies(codes)[0])
    return mse, h


def test_swap_finds_the_finer_rare_feature_and_coarser_common_one():
    # From (A 3 bits, B 0 bits): A uses 3 bits per sample, B h(0.1) + 0 bits; the MSE per
    # sample is 1/(12 * 64) + 0.1/12 = 0.0096. Swapping to (2, 1) costs 2 + h(0.1) + 0.1 bits,
    # 0.9 fewer, at 1/(12 * 16) + 0.1/(12 * 4) = 0.0073: better on both counts, yet no removal
    # alone fits under the ceiling (A to 2 bits gives 0.0135; B has nothing to remove).
    z = _two_features()
    W, b = np.eye(2), np.zeros(2)
    start = np.array([3, 0])
    mse0, h0 = _second_method(z, W, b, z, start)
    res = swap_refine(z, W, b, z, start, ceiling=mse0, max_bits=8)
    assert list(res.bits) == [2, 1] and res.n_swaps == 1
    assert res.entropy_bits_before == pytest.approx(h0, abs=1e-9)
    assert res.gain_bits == pytest.approx(0.9, abs=0.02)  # 1 bit of A less, 0.1 of B more
    assert res.entropy_bits == pytest.approx(2 + _h2(0.1) + 0.1, abs=0.02)
    mse1, h1 = _second_method(z, W, b, z, res.bits)
    assert res.mse == pytest.approx(mse1, rel=1e-9) and res.entropy_bits == pytest.approx(h1, abs=1e-9)
    assert res.mse <= res.ceiling
    assert 2 * mse1 == pytest.approx(1 / (12 * 16) + 0.1 / (12 * 4), rel=0.03)  # per sample, by hand


def test_swap_leaves_an_optimal_allocation_alone_and_never_crosses_the_ceiling():
    z = _two_features(seed=1)
    W, b = np.eye(2), np.zeros(2)
    mse, _ = _second_method(z, W, b, z, np.array([2, 1]))
    res = swap_refine(z, W, b, z, np.array([2, 1]), ceiling=mse, max_bits=8)
    assert res.gain_bits >= 0 and res.mse <= mse
    # A random sparse case with a non-orthogonal decoder: every accepted move respects the
    # ceiling, as recomputed by the second method.
    rng = np.random.default_rng(2)
    z = np.where(rng.random((3000, 12)) < 0.2, rng.exponential(1.0, (3000, 12)), 0.0)
    W = rng.normal(size=(12, 6))
    bias = rng.normal(size=6)
    x = z @ W + bias + 0.01 * rng.normal(size=(3000, 6))
    start = np.full(12, 6)
    m0, h0 = _second_method(z, W, bias, x, start)
    res = swap_refine(z, W, bias, x, start, ceiling=m0 * 1.5, max_bits=10)
    m1, h1 = _second_method(z, W, bias, x, res.bits)
    assert m1 <= m0 * 1.5 * (1 + 1e-9) and res.mse == pytest.approx(m1, rel=1e-7)
    assert h1 == pytest.approx(res.entropy_bits, abs=1e-9) and h1 < h0


def test_swap_refine_rejects_bad_input_with_clear_errors():
    z = _two_features(n=100)
    W, b = np.eye(2), np.zeros(2)
    with pytest.raises(ValueError, match="above the ceiling"):
        swap_refine(z, W, b, z, np.array([0, 0]), ceiling=1e-9)
    with pytest.raises(ValueError, match="W_dec has shape"):
        swap_refine(z, np.eye(3), b, z, np.array([2, 2]), ceiling=1.0)
    with pytest.raises(ValueError, match="outside"):
        swap_refine(z, W, b, z, np.array([20, 2]), ceiling=1.0, max_bits=12)
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        swap_refine(bad, W, b, z, np.array([2, 2]), ceiling=1.0)


def test_comparison_is_made_at_equal_mse(identity_sae):
    torch.manual_seed(0)
    x = _two_features(n=5000, b_scale=0.25).astype(np.float32)
    sae = identity_sae(2)
    eps = 0.5 * float(np.mean(x**2)) * 0.02
    out = compare_at_equal_mse(sae, x, epsilon=eps)
    g, u = out["greedy"], out["uniform_at_greedy_mse"]
    assert g["mse"] <= eps
    assert u["status"] == "in_band" and (1 - 1e-4) * g["mse"] <= u["mse"] <= g["mse"]  # same loss, to 1e-4
    assert out["greedy_saving"] == pytest.approx(1 - g["entropy_bits"] / u["dl_bits"])
    # B's range is a quarter of A's, so the same bits buy B 16 times less MSE: per-feature
    # precision gives B fewer bits and saves DL against uniform precision at equal loss.
    assert out["greedy_saving"] > 0
    s = out["swaps"]
    assert s["entropy_bits"] <= s["entropy_bits_before"] + 1e-12 and s["mse"] <= eps
    assert (1 - 1e-4) * s["mse"] <= out["uniform_at_swap_mse"]["mse"] <= s["mse"]
