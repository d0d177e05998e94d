"""Tests of mdl_utils.toys: the exact toy arguments of sections 6 and 7 and the data generators.

Expected values come from hand computation, from a separate bisection written here, or from
the small-p expansion rho* ~ (e - 1) p derived in the test's docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdl_utils.toy_data import correlated_pair_data, hierarchical_data
from mdl_utils.toys import (
    binary_entropy,
    correlation_range,
    hierarchy_dl,
    joint_probability,
    splitting_boundary,
    splitting_dl,
    splitting_l0,
)


def _h(q: float) -> float:
    """Binary entropy written out directly, as the reference."""
    if q in (0.0, 1.0):
        return 0.0
    return -q * math.log2(q) - (1 - q) * math.log2(1 - q)


def _bisect_boundary(p: float, iterations: int = 200) -> float:
    """rho* by plain bisection on rho over (0, 1), independent of the library's method.

    On (0, 1) the split code loses at rho -> 0+ only if p_AB = p^2 is left of the crossing;
    for p <= 1/2 the crossing is at p_AB > p^2 (checked by the sign at the ends), so bisection
    on [0, 1] in rho finds it.
    """

    def split_minus_unsplit(rho: float) -> float:
        q = min(p, p * p + rho * p * (1 - p))  # rounding at rho = 1 must not pass p
        return 2 * _h(p - q) + _h(q) - 2 * _h(p)

    lo, hi = 0.0, 1.0
    assert split_minus_unsplit(lo) > 0 > split_minus_unsplit(hi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if split_minus_unsplit(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# ---- binary entropy -------------------------------------------------------------------------


def test_binary_entropy_hand_values():
    assert binary_entropy(0.5) == pytest.approx(1.0, abs=1e-15)
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    # H(1/4) = 1/4 * 2 + 3/4 * log2(4/3) = 2 - (3/4) log2 3
    assert binary_entropy(0.25) == pytest.approx(2 - 0.75 * math.log2(3), abs=1e-15)
    assert binary_entropy(0.1) == pytest.approx(0.4689955935892812, abs=1e-15)
    np.testing.assert_allclose(binary_entropy(np.array([0.25, 0.75])), [0.8112781244591328] * 2, atol=1e-15)


def test_binary_entropy_is_accurate_for_tiny_probabilities():
    q = 1e-12
    # H(q) = q log2(1/q) + q log2(e) + O(q^2)
    assert binary_entropy(q) == pytest.approx(q * (math.log2(1 / q) + 1 / math.log(2)), rel=1e-9)


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan")])
def test_binary_entropy_rejects_non_probabilities(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_entropy(bad)


# ---- splitting: L0 and DL --------------------------------------------------------------------


def test_splitting_l0_and_dl_hand_computed():
    l0 = splitting_l0(0.3, 0.2, 0.1)
    assert l0.unsplit == pytest.approx(0.5) and l0.split == pytest.approx(0.4)
    dl = splitting_dl(0.3, 0.2, 0.1)
    assert dl.unsplit == pytest.approx(_h(0.3) + _h(0.2), abs=1e-14)
    assert dl.split == pytest.approx(_h(0.2) + _h(0.1) + _h(0.1), abs=1e-14)
    # Perfect co-occurrence: the AND feature alone carries everything.
    dl = splitting_dl(0.25, 0.25, 0.25)
    assert dl.split == pytest.approx(_h(0.25)) and dl.unsplit == pytest.approx(2 * _h(0.25))
    # Never together: the AND feature is dead and the codes coincide.
    dl = splitting_dl(0.25, 0.25, 0.0)
    assert dl.split == pytest.approx(dl.unsplit)


def test_splitting_functions_broadcast_over_arrays():
    p_ab = np.array([0.0, 0.05, 0.1])
    dl = splitting_dl(0.1, 0.1, p_ab)
    expected = [2 * _h(0.1 - q) + _h(q) for q in p_ab]
    np.testing.assert_allclose(dl.split, expected, atol=1e-14)
    np.testing.assert_allclose(splitting_l0(0.1, 0.1, p_ab).split, 0.2 - p_ab)


@pytest.mark.parametrize(
    "p_a, p_b, p_ab, message",
    [(0.2, 0.3, 0.25, "cannot exceed p_a or p_b"), (0.7, 0.6, 0.2, "cannot exceed 1"),
     (1.2, 0.1, 0.0, r"p_a must lie in \[0, 1\]"), (0.1, 0.1, -0.01, r"p_ab must lie")],
)
def test_splitting_rejects_impossible_joint_distributions(p_a, p_b, p_ab, message):
    with pytest.raises(ValueError, match=message):
        splitting_dl(p_a, p_b, p_ab)
    with pytest.raises(ValueError, match=message):
        splitting_l0(p_a, p_b, p_ab)


def test_joint_probability_and_correlation_range():
    assert joint_probability(0.1, 0.0) == pytest.approx(0.01)
    assert joint_probability(0.1, 1.0) == pytest.approx(0.1)
    assert joint_probability(0.2, 0.5) == pytest.approx(0.04 + 0.5 * 0.16)
    lo, hi = correlation_range(0.2)
    assert lo == pytest.approx(-0.25) and hi == 1.0  # -p / (1 - p)
    lo, _ = correlation_range(0.75)  # p_AB >= 0.5 here
    assert lo == pytest.approx((0.5 - 0.5625) / 0.1875)
    with pytest.raises(ValueError, match="impossible"):
        joint_probability(0.2, -0.5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        joint_probability(0.0, 0.1)


# ---- the splitting boundary ------------------------------------------------------------------


def test_splitting_boundary_at_p_0_1_matches_an_independent_bisection():
    rho_star = splitting_boundary(0.1)
    assert rho_star == pytest.approx(_bisect_boundary(0.1), abs=1e-10)


@pytest.mark.parametrize("p", [0.01, 0.05, 0.2, 0.3, 0.45, 0.5])
def test_splitting_boundary_matches_bisection_and_equalises_the_two_codes(p):
    rho_star = splitting_boundary(p)
    assert rho_star == pytest.approx(_bisect_boundary(p), abs=1e-10)
    dl = splitting_dl(p, p, joint_probability(p, rho_star))
    assert dl.split == pytest.approx(dl.unsplit, abs=1e-10)
    # Just above the boundary splitting is shorter, just below it is longer.
    above = splitting_dl(p, p, joint_probability(p, rho_star + 1e-3))
    below = splitting_dl(p, p, joint_probability(p, rho_star - 1e-3))
    assert above.split < above.unsplit and below.split > below.unsplit


def test_splitting_boundary_for_p_above_one_half():
    p = 0.8
    rho_star = splitting_boundary(p)
    lo, _ = correlation_range(p)
    assert lo < rho_star < 1
    dl = splitting_dl(p, p, joint_probability(p, rho_star))
    assert dl.split == pytest.approx(dl.unsplit, abs=1e-10)
    # The post's rule of thumb (no split below rho = p) even points the wrong way here.
    assert rho_star < p


@pytest.mark.parametrize("p", [1e-4, 1e-6, 1e-8])
def test_splitting_boundary_is_about_1_7_p_for_small_p(p):
    """Small-p expansion: with q = p_AB << p, DL_split - DL_unsplit ~ q log2(1/q) + q log2 e
    - 2 q log2(1/p), which vanishes at q = e p^2, i.e. rho* = (q - p^2) / p ~ (e - 1) p."""
    rho_star = splitting_boundary(p)
    assert rho_star / p == pytest.approx(math.e - 1, rel=max(10 * p, 1e-5))
    assert round(rho_star / p, 1) == 1.7


def test_splitting_boundary_lies_above_the_rule_of_thumb_for_small_p():
    for p in (0.01, 0.1, 0.3, 0.5):
        assert splitting_boundary(p) > p


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5, float("nan"), float("inf")])
def test_splitting_boundary_rejects_p_outside_the_open_unit_interval(bad):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        splitting_boundary(bad)


def test_splitting_boundary_rejects_non_numbers():
    with pytest.raises(ValueError, match="must be a number"):
        splitting_boundary("0.1")


def test_splitting_boundary_reports_a_missing_crossing(monkeypatch):
    import mdl_utils.toys as toys

    # An entropy that is identically zero makes the two codes equal everywhere: no crossing.
    monkeypatch.setattr(toys, "binary_entropy", lambda q: 0.0)
    with pytest.raises(ValueError, match="no crossing"):
        toys.splitting_boundary(0.2)


# ---- hierarchy -------------------------------------------------------------------------------


def test_hierarchy_dl_hand_computed_animal_and_bird():
    codes = hierarchy_dl(0.5, 0.25)
    assert codes.flat_dl_bits == pytest.approx(2 * _h(0.25))  # H(bird) + H(generic animal)
    assert codes.tree_dl_bits == pytest.approx(1.0 + 0.5 * 1.0)  # H(1/2) + 1/2 * H(1/2)
    # The tree code's DL is the entropy of {neither: 1/2, animal only: 1/4, bird: 1/4}.
    assert codes.tree_dl_bits == pytest.approx(-(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25)))
    assert codes.flat_l0 == pytest.approx(0.5) and codes.tree_l0 == pytest.approx(0.75)


def test_tree_code_is_never_longer_than_the_flat_code_over_a_grid():
    p_parent, fraction = np.meshgrid(np.linspace(0.001, 0.999, 150), np.linspace(0, 1, 151))
    codes = hierarchy_dl(p_parent, p_parent * fraction)
    assert np.all(codes.tree_dl_bits <= codes.flat_dl_bits + 1e-12)
    assert np.all(codes.tree_l0 >= codes.flat_l0)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_tree_code_equals_the_joint_entropy_of_the_three_outcomes(p_parent, fraction):
    p_child = p_parent * fraction
    outcomes = [1 - p_parent, p_parent - p_child, p_child]
    joint = -sum(q * math.log2(q) for q in outcomes if q > 0)
    codes = hierarchy_dl(p_parent, p_child)
    assert codes.tree_dl_bits == pytest.approx(joint, abs=1e-9)
    assert codes.tree_dl_bits <= codes.flat_dl_bits + 1e-12


def test_hierarchy_dl_rejects_a_child_more_common_than_its_parent():
    with pytest.raises(ValueError, match="cannot exceed p_parent"):
        hierarchy_dl(0.2, 0.3)


# ---- data generators -------------------------------------------------------------------------


def test_correlated_pair_data_has_the_requested_rates_and_correlation():
    data = correlated_pair_data(200_000, 0.2, 0.4, d=6, noise_std=0.0, seed=3)
    a, b = data.features_NF[:, 0], data.features_NF[:, 1]
    assert a.mean() == pytest.approx(0.2, abs=0.005) and b.mean() == pytest.approx(0.2, abs=0.005)
    assert np.corrcoef(a, b)[0, 1] == pytest.approx(0.4, abs=0.01)
    np.testing.assert_allclose(data.directions_FD @ data.directions_FD.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(data.x_ND, data.features_NF @ data.directions_FD, atol=1e-6)


def test_correlated_pair_data_noise_extras_and_seeding():
    data = correlated_pair_data(50_000, 0.1, 0.0, d=8, noise_std=0.05, extra_rates=(0.3,), seed=1)
    assert data.features_NF.shape == (50_000, 3)
    assert data.features_NF[:, 2].mean() == pytest.approx(0.3, abs=0.01)
    residual = data.x_ND - data.features_NF @ data.directions_FD
    assert residual.std() == pytest.approx(0.05, rel=0.02)
    again = correlated_pair_data(50_000, 0.1, 0.0, d=8, noise_std=0.05, extra_rates=(0.3,), seed=1)
    np.testing.assert_array_equal(data.x_ND, again.x_ND)
    other = correlated_pair_data(50_000, 0.1, 0.0, d=8, noise_std=0.05, extra_rates=(0.3,), seed=2)
    assert not np.array_equal(data.x_ND, other.x_ND)


def test_correlated_pair_data_uses_given_directions_normalised():
    directions = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    data = correlated_pair_data(100, 0.5, 0.0, d=3, noise_std=0.0, directions_FD=directions)
    np.testing.assert_allclose(data.directions_FD, [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="shape"):
        correlated_pair_data(100, 0.5, 0.0, d=4, directions_FD=directions)


def test_hierarchical_data_respects_the_tree():
    data = hierarchical_data(100_000, n_parents=3, children_per_parent=2, d=16, p_parent=0.2,
                             p_child_given_parent=0.5, noise_std=0.0, seed=0)
    parents_on = data.features_NF[:, :3] > 0
    children_on = data.features_NF[:, 3:] > 0
    parent_of = data.parent_of_child
    np.testing.assert_array_equal(parent_of, [0, 0, 1, 1, 2, 2])
    # No child without its parent, and at most one child per parent.
    assert not np.any(children_on & ~parents_on[:, parent_of])
    for j in range(3):
        assert children_on[:, parent_of == j].sum(axis=1).max() <= 1
    assert parents_on.mean() == pytest.approx(0.2, abs=0.005)
    assert children_on.mean() == pytest.approx(0.2 * 0.5 / 2, abs=0.003)
    magnitudes = data.features_NF[data.features_NF > 0]
    assert magnitudes.min() >= 0.5 and magnitudes.max() <= 1.5
    np.testing.assert_allclose(data.x_ND, data.features_NF @ data.directions_FD, atol=1e-5)
    np.testing.assert_allclose(data.directions_FD @ data.directions_FD.T, np.eye(9), atol=1e-12)


def test_generators_reject_bad_settings():
    with pytest.raises(ValueError, match="noise_std"):
        correlated_pair_data(10, 0.1, 0.0, noise_std=-1.0)
    with pytest.raises(ValueError, match="magnitude_range"):
        hierarchical_data(10, magnitude_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="p_child_given_parent"):
        hierarchical_data(10, p_child_given_parent=1.5)


# ---- known codes and feature recovery --------------------------------------------------------


def test_pair_codes_reconstruct_the_noiseless_data_and_have_the_exact_entropies():
    from mdl_utils.toy_data import pair_codes

    data = correlated_pair_data(40_000, 0.3, 0.5, n_pairs=2, d=8, noise_std=0.0, extra_rates=(0.2, 0.1), seed=0)
    for split in (False, True):
        z, w = pair_codes(data, 2, split=split, keep_extras=(0, 1))
        assert z.shape[1] == (6 if split else 4) + 2
        np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0)
        np.testing.assert_allclose(z @ w, data.x_ND, atol=1e-5)
    z, _ = pair_codes(data, 2, split=True)
    on = z > 0
    # At most one of the three split latents of a pair fires.
    assert on[:, :3].sum(axis=1).max() == 1
    # Their firing rates are p_A - p_AB, p_B - p_AB, p_AB (within sampling error).
    p_ab = joint_probability(0.3, 0.5)
    np.testing.assert_allclose(on[:, :3].mean(axis=0), [0.3 - p_ab, 0.3 - p_ab, p_ab], atol=0.01)
    # A pair left unsplit with one extra dropped: that extra's signal is missing.
    z, w = pair_codes(data, 2, split=(True, False), keep_extras=(1,))
    assert z.shape[1] == 3 + 2 + 1
    missing = data.features_NF[:, [4]] @ data.directions_FD[[4]]
    np.testing.assert_allclose(z @ w + missing, data.x_ND, atol=1e-5)
    with pytest.raises(ValueError, match="one flag per pair"):
        pair_codes(data, 2, split=(True,))
    with pytest.raises(ValueError, match="keep_extras"):
        pair_codes(data, 2, split=True, keep_extras=(2,))


def test_best_cosines_by_hand():
    from mdl_utils.toy_data import best_cosines

    true = np.array([[1.0, 0.0], [0.0, 1.0]])
    learned = np.array([[2.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(best_cosines(learned, true), [1.0, 1 / math.sqrt(2)])
    with pytest.raises(ValueError, match="same number of columns"):
        best_cosines(np.ones((2, 3)), true)


def test_dictionary_sae_decodes_the_intended_latents_exactly():
    import torch

    from mdl_utils.toy_data import dictionary_sae, pair_codes

    data = correlated_pair_data(500, 0.3, 0.5, n_pairs=2, d=8, noise_std=0.0, seed=0)
    z, w = pair_codes(data, 2, split=True)
    sae = dictionary_sae(w, k=1.5)
    assert (sae.width, sae.d_in, sae.k) == (6, 8, 1.5)
    with torch.no_grad():
        x_hat = sae.decode(torch.as_tensor(z, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(x_hat, data.x_ND, atol=1e-5)
