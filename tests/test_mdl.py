"""Tests for mdl_utils.mdl: the epsilon-MDL protocol and the feature statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdl_utils.mdl import (
    MDLEvaluation, evaluate_mdl, max_cosine_to_data, mdl_optimal, pixel_coverage, regime_points,
)


def _h(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def test_evaluate_mdl_on_binary_latents_matches_hand_computation(identity_sae):
    # Feature i is 1 on a known fraction of 8 samples, else 0; feature 3 never fires.
    x = np.zeros((8, 4), dtype=np.float32)
    x[:4, 0] = 1.0  # rate 1/2
    x[:2, 1] = 1.0  # rate 1/4
    x[:1, 2] = 1.0  # rate 1/8
    # With 1 bit, a value 1 falls in the bin (0.5, 1] whose centre is 0.75: error 1/16 per
    # non-zero entry; 7 non-zeros among 32 entries give MSE 7/512. With 2 bits: centre 0.875,
    # MSE 7/2048.
    sae = identity_sae(4)
    loose = evaluate_mdl(sae, x, epsilon=7 / 512 + 1e-9)
    assert loose.bits == 1 and loose.mse == pytest.approx(0.0)
    assert loose.mse_quantised == pytest.approx(7 / 512)
    assert loose.dl_bits == pytest.approx(_h(1 / 2) + _h(1 / 4) + _h(1 / 8), abs=1e-9)
    assert loose.l0 == pytest.approx(7 / 8) and loose.dead_fraction == pytest.approx(1 / 4)
    assert loose.upper_bound_bits == pytest.approx(7 / 8 * (1 + 2))
    tight = evaluate_mdl(sae, x, epsilon=7 / 512 - 1e-6)
    assert tight.bits == 2 and tight.mse_quantised == pytest.approx(7 / 2048)


def test_evaluate_mdl_rejects_an_sae_above_tolerance(identity_sae):
    x = np.eye(4, dtype=np.float32)
    sae = identity_sae(4)
    with torch.no_grad():
        sae.b_dec_D.fill_(1.0)  # every reconstruction off by 1 per pixel
    with pytest.raises(ValueError, match="above the absolute tolerance"):
        evaluate_mdl(sae, x, epsilon=0.5)


def _evaluation(width: int, dl: float, mse_q: float = 0.01) -> MDLEvaluation:
    return MDLEvaluation(width=width, k=1.0, mse=mse_q, bits=4, mse_quantised=mse_q, dl_bits=dl,
                         l0=1.0, upper_bound_bits=dl, dead_fraction=0.0, epsilon=0.015)


def test_mdl_optimal_takes_the_smallest_dl_within_tolerance():
    evals = [_evaluation(16, 50.0, mse_q=0.02), _evaluation(64, 80.0), _evaluation(256, 60.0),
             _evaluation(1024, 70.0)]
    assert mdl_optimal(evals) == 2  # 16 has a smaller DL but misses the tolerance
    with pytest.raises(ValueError, match="no SAE reaches the tolerance"):
        mdl_optimal([evals[0]])


def test_regime_points_on_a_u_shaped_curve():
    widths = [1024, 16, 32, 64, 128, 256, 512]  # unsorted on purpose
    dls = [90.0, 100.0, 80.0, 70.0, 60.0, 50.0, 70.0]
    points = regime_points(widths, dls)
    assert {name: widths[i] for name, i in points.items()} == {"A": 1024, "B": 256, "C": 64, "D": 16}


def test_regime_points_degenerate_curve_still_valid():
    points = regime_points([32, 64], [10.0, 20.0])
    assert points == {"A": 1, "B": 0, "C": 0, "D": 0}


def test_pixel_coverage_known_rows():
    d = 784
    W = np.zeros((3, d))
    W[0, 5] = -2.0  # one pixel
    W[1, :10] = 0.3  # ten equal pixels, sign irrelevant
    W[1, :5] *= -1
    W[2, :] = 1.0  # everything
    np.testing.assert_allclose(pixel_coverage(W), [1 / d, 10 / d, 1.0])


def test_max_cosine_to_data_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.random((50, 20)).astype(np.float32)
    W = rng.standard_normal((6, 20)).astype(np.float32)
    W[0] = 3 * x[17]  # a scaled copy of one input: cosine exactly 1
    expected = [max(float(w @ xi / np.linalg.norm(w) / np.linalg.norm(xi)) for xi in x) for w in W]
    got = max_cosine_to_data(W, x, batch_size=7)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got[0] == pytest.approx(1.0, abs=1e-6)


def test_max_cosine_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="disagree"):
        max_cosine_to_data(np.ones((3, 5)), np.ones((4, 6)))
