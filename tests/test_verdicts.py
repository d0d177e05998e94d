"""Every verdict rule of mdl_utils.verdicts answers "no" on data that contradict its claim,
"yes" on data that support it, and "not resolved" where the data cannot decide."""

from __future__ import annotations

import numpy as np
import pytest

from mdl_utils import verdicts
from mdl_utils.resolution import Resolution


def _resolution(optimum, tie, margins):
    return Resolution(optimum=optimum, resolved=len(tie) == 1, tie_set=tuple(tie), margins=margins,
                      pooled_rel_seed_std=None, z=2.0)


def test_u_shape():
    widths = [64, 128, 256, 512]
    inside = _resolution(128, [128], {64: (10.0, 2.0), 256: (5.0, 2.0), 512: (9.0, 2.0)})
    assert verdicts.u_shape(inside, widths).answer == "yes"
    at_end = _resolution(512, [512], {64: (30.0, 2.0), 128: (20.0, 2.0), 256: (5.0, 2.0)})
    assert verdicts.u_shape(at_end, widths).answer == "no"
    narrow_end = _resolution(64, [64, 128], {128: (1.0, 2.0), 256: (5.0, 2.0), 512: (9.0, 2.0)})
    assert verdicts.u_shape(narrow_end, widths).answer == "no"
    # Inside, but the widest width cannot be told apart: not resolved.
    flat = _resolution(128, [128, 512], {64: (10.0, 2.0), 256: (5.0, 2.0), 512: (1.0, 2.0)})
    assert verdicts.u_shape(flat, widths).answer == "not resolved"
    assert verdicts.u_shape(None, widths).answer == "not resolved"


def test_memorised_digits():
    baseline = np.full(100, 0.88)
    usage = np.ones(10)
    assert verdicts.memorised_digits(np.full(10, 0.95), usage, baseline).answer == "yes"
    # The reviewer's case: features at 0.59 against a baseline near 0.88 are no memorised digits.
    assert verdicts.memorised_digits(np.full(10, 0.59), usage, baseline).answer == "no"
    # Usage decides: one close feature that fires rarely does not make A a lookup table.
    cos = np.r_[0.99, np.full(9, 0.5)]
    use = np.r_[0.01, np.full(9, 1.0)]
    assert verdicts.memorised_digits(cos, use, baseline).answer == "no"
    with pytest.raises(ValueError):
        verdicts.memorised_digits(cos, np.zeros(10), baseline)


def test_pca_like():
    pcs = np.full(10, 0.5)
    assert verdicts.pca_like(np.full(5, 0.45), np.ones(5), pcs).answer == "yes"
    assert verdicts.pca_like(np.full(5, 0.2), np.ones(5), pcs).answer == "no"


def test_fragments():
    assert verdicts.fragments(0.10, 0.20).answer == "yes"
    assert verdicts.fragments(0.19, 0.20).answer == "no"
    assert verdicts.fragments(0.30, 0.20).answer == "no"


def test_l0_falls_with_width():
    widths = [64, 128, 256, 512, 1024]
    assert verdicts.l0_falls_with_width(widths, [20, 15, 12, 10, 9]).answer == "yes"
    # The committed sweep's pattern: L0 flat (9.65 .. 10.55) from 256 up is not a fall.
    assert verdicts.l0_falls_with_width(widths, [14.4, 10.9, 9.65, 9.8, 10.55]).answer == "no"
    assert verdicts.l0_falls_with_width(widths, [10, 11, 12, 13, 14]).answer == "no"
    assert verdicts.l0_falls_with_width(widths[:2], [10, 9]).answer == "not resolved"
    assert verdicts.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_dead_rise_near_turn():
    widths = [64, 128, 256, 512, 1024]
    assert verdicts.dead_rise_near_turn(widths, [0, 0, 0.1, 0.3, 0.5], optimum=128).answer == "yes"
    assert verdicts.dead_rise_near_turn(widths, [0, 0, 0, 0, 0.2], optimum=128).answer == "no"
    assert verdicts.dead_rise_near_turn(widths, [0.0] * 5, optimum=128).answer == "no"


# --- chapter 7 --------------------------------------------------------------------------------


def _res(optimum, tie, resolved, provisional=False):
    return Resolution(optimum=optimum, resolved=resolved, tie_set=tuple(tie), margins={}, pooled_rel_seed_std=None,
                      z=2.0, provisional=provisional)


def test_t_interval_matches_the_formula_by_hand():
    from scipy.stats import t

    lo, hi = verdicts.t_interval([1.0, 2.0, 4.0])
    half = t.ppf(0.975, 2) * np.std([1.0, 2.0, 4.0], ddof=1) / np.sqrt(3)
    assert (lo, hi) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert verdicts.t_interval([1.0]) is None


def _inside(optimum):
    from mdl_utils.resolution import bracket_optimum
    return bracket_optimum(optimum, [optimum // 2, optimum, optimum * 2], [optimum // 2, optimum * 2])


def test_optimum_resolved_and_optimum_moves_answer_each_way():
    from mdl_utils.resolution import bracket_optimum
    assert verdicts.optimum_resolved("MSE", _res(64, [64], True), _inside(64)).answer == "yes"
    assert verdicts.optimum_resolved("MSE", _res(64, [64, 128], False), _inside(64)).answer == "no"
    assert verdicts.optimum_resolved("MSE", None, None).answer == "not resolved"
    # Distinguishable from every other width, but the narrowest width searched: not a minimum yet.
    edge = bracket_optimum(64, [64, 128, 256], [64, 128, 256])
    v = verdicts.optimum_resolved("MSE", _res(64, [64], True), edge)
    assert v.answer == "no" and "not bracketed, since nothing narrower was searched" in v.evidence
    # Distinguishable and bracketed in width, but a rival's DL* is only an upper bound.
    capped = bracket_optimum(64, [32, 64, 128], [32, 128], capped=[128])
    v = verdicts.optimum_resolved("MSE", _res(64, [64], True), capped)
    assert v.answer == "no" and "width 128 reached the cap" in v.evidence
    with pytest.raises(ValueError, match="bracket of its own minimum"):
        verdicts.optimum_resolved("MSE", _res(64, [64], True), _inside(128))
    with pytest.raises(ValueError, match="bracket of its own minimum"):
        verdicts.optimum_resolved("MSE", _res(64, [64], True), None)
    assert verdicts.optimum_moves(_res(32, [32], True), _res(128, [128, 256], False),
                                  (_inside(32), _inside(128))).answer == "yes"
    assert verdicts.optimum_moves(_res(64, [64], True), _res(64, [64], True),
                                  (_inside(64), _inside(64))).answer == "no"
    # Equal and resolved, but one minimum is at an open end: the data cannot say "no".
    v = verdicts.optimum_moves(_res(64, [64], True), _res(64, [64], True), (edge, _inside(64)))
    assert v.answer == "not resolved" and "not bracketed: cross-entropy" in v.evidence
    # Overlapping tie sets: the data cannot say, even when the point optima differ.
    assert verdicts.optimum_moves(_res(64, [64, 128], False), _res(128, [128], True),
                                  (_inside(64), _inside(128))).answer == "not resolved"
    assert verdicts.optimum_moves(None, _res(128, [128], True), (None, _inside(128))).answer == "not resolved"
    # Disjoint tie sets read from unfinished studies (one seed, searches left) say nothing yet.
    moved = verdicts.optimum_moves(_res(256, [256], False, provisional=True), _res(512, [512], True),
                                   (_inside(256), _inside(512)))
    assert moved.answer == "not resolved" and "still to run" in moved.evidence
    # Disjoint tie sets, but a capped width could be below its bound, and so the true optimum.
    capped = verdicts.optimum_moves(_res(32, [32], True), _res(128, [128], True),
                                    (_inside(32), bracket_optimum(128, [64, 128, 256], [256], capped=[64])))
    assert capped.answer == "not resolved" and "MSE at width(s) [64]" in capped.evidence


def test_shorter_description_needs_every_width_below_zero_and_fails_on_one_above():
    mse = {16: {0: 50.0, 1: 51.0, 2: 50.5}, 64: {0: 60.0, 1: 60.5, 2: 61.0}}
    shorter = {16: {0: 40.0, 1: 41.2, 2: 40.4}, 64: {0: 55.0, 1: 55.4, 2: 56.1}}
    assert verdicts.shorter_description(shorter, mse).answer == "yes"
    longer_at_64 = {16: shorter[16], 64: {0: 65.0, 1: 65.6, 2: 66.2}}
    assert verdicts.shorter_description(longer_at_64, mse).answer == "no"
    noisy = {16: shorter[16], 64: {0: 50.0, 1: 70.0, 2: 58.0}}  # differences -10, +9.5, -3
    assert verdicts.shorter_description(noisy, mse).answer == "not resolved"
    one_seed = {w: {0: v[0]} for w, v in shorter.items()}
    assert verdicts.shorter_description(one_seed, mse).answer == "not resolved"


def test_unequal_harm_compares_the_extreme_widths_against_a_quarter_of_epsilon():
    eps = 0.04  # bar: 0.01 nats
    apart = {16: {0: 0.010, 1: 0.011, 2: 0.012}, 64: {0: 0.030, 1: 0.031, 2: 0.029}}
    assert verdicts.unequal_harm(apart, eps).answer == "yes"
    close = {16: {0: 0.020, 1: 0.021, 2: 0.0205}, 64: {0: 0.022, 1: 0.0215, 2: 0.0222}}
    assert verdicts.unequal_harm(close, eps).answer == "no"
    noisy = {16: {0: 0.00, 1: 0.02, 2: 0.01}, 64: {0: 0.01, 1: 0.04, 2: 0.025}}
    assert verdicts.unequal_harm(noisy, eps).answer == "not resolved"
    assert verdicts.unequal_harm({16: {0: 0.0}, 64: {0: 1.0}}, eps).answer == "not resolved"


def test_spearman_permutation_p_value_by_enumeration_and_the_harm_trend():
    rho, p = verdicts.spearman_p_increasing([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 24)  # only the identity ordering
    rho, p = verdicts.spearman_p_increasing([1, 2, 3], [3.0, 2.0, 1.0])
    assert rho == pytest.approx(-1.0) and p == pytest.approx(1.0)
    widths = [16, 32, 64, 128, 256]
    assert verdicts.harm_rises_with_width(widths, [0.01, 0.02, 0.03, 0.04, 0.05]).answer == "yes"  # p = 1/120
    assert verdicts.harm_rises_with_width(widths, [0.05, 0.04, 0.03, 0.02, 0.01]).answer == "no"
    assert verdicts.harm_rises_with_width(widths[:3], [0.01, 0.02, 0.03]).answer == "not resolved"  # p = 1/6
    assert verdicts.harm_rises_with_width(widths[:2], [0.01, 0.02]).answer == "not resolved"
