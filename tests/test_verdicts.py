"""Every verdict rule of mdl_utils.verdicts answers "no" on data that contradict its claim,
"yes" on data that support it, and "not resolved" where the data cannot decide."""

from __future__ import annotations

import numpy as np
import pytest

from mdl_utils import verdicts


def _resolution(optimum, tie, margins):
    return {"optimum": optimum, "tie_set": tie, "margins": {str(w): v for w, v in margins.items()}}


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
