"""Tests for mdl_utils.protocol: the continuous precision against the uniform-quantisation
formula, the k search's path by hand, the bootstrap against a direct recount, SAEBench's count
by hand, and the resolution rule on constructed cases that must and must not resolve."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import sparse

from mdl_utils.dl import description_length, feature_entropies, quantize
from mdl_utils.entropy import saebench_dl, two_part_bits
from mdl_utils.protocol import (
    BITS_RESOLUTION,
    REL_BAND,
    bisect_precision,
    bootstrap_dl,
    bootstrap_weights,
    continuous_precision,
    index_of_k,
    k_of_index,
    measure_sae,
    next_k_index,
    quantised_mse,
    sparse_latents,
)
from mdl_utils.resolution import WidthSummary, resolve_optimum


def _uniform_latents(n=20_000, d=8, density=0.5, seed=0):
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, d)) < density, rng.uniform(0.0, 1.0, (n, d)), 0.0).astype(np.float32)
    # Every feature reaches (almost exactly) 1, so its range is (0, 1].
    x[0] = 1.0
    return x


def test_k_grid_is_powers_of_two_in_quarter_steps():
    assert k_of_index(0) == 1.0 and k_of_index(4) == 2.0 and k_of_index(12) == 8.0
    assert k_of_index(14) == pytest.approx(8 * math.sqrt(2), rel=1e-3)
    for j in range(0, 60):
        assert index_of_k(k_of_index(j)) == j
    with pytest.raises(ValueError, match="positive"):
        index_of_k(0.0)


def test_k_search_path_by_hand():
    # Nothing yet: the start. Infeasible: two steps up. Feasible: both neighbours, then stop.
    assert next_k_index({}, start=10, j_max=20) == 10
    assert next_k_index({10: None}, start=10, j_max=20) == 12
    assert next_k_index({10: None, 12: 50.0}, start=10, j_max=20) == 11
    assert next_k_index({10: None, 11: 55.0, 12: 50.0}, start=10, j_max=20) == 13
    assert next_k_index({10: None, 11: 55.0, 12: 50.0, 13: 52.0}, start=10, j_max=20) is None
    # Downhill towards larger k keeps walking until a neighbour is higher.
    assert next_k_index({12: 60.0, 11: 70.0, 13: 55.0}, start=12, j_max=20) == 14
    # An infeasible neighbour brackets the minimum from below (infinitely long); the half step
    # between them is trained once, as DL changes fastest at the tolerance's edge.
    assert next_k_index({11: None, 12: 50.0, 13: 51.0}, start=12, j_max=20) == 11.5
    assert next_k_index({11: None, 12: 50.0, 13: 51.0}, start=12, j_max=20, refine=False) is None
    assert next_k_index({11: None, 11.5: 48.0, 12: 50.0, 13: 51.0}, start=12, j_max=20) is None
    assert next_k_index({11: None, 11.5: None, 12: 50.0, 13: 51.0}, start=12, j_max=20) is None
    assert k_of_index(11.5) == pytest.approx(2 ** (11.5 / 4), rel=1e-3)
    # Unreachable: even k = width misses the tolerance.
    assert next_k_index({16: None, 18: None, 20: None}, start=16, j_max=20) is None
    assert next_k_index({16: None, 18: None}, start=16, j_max=19) == 19
    # The edge of the grid counts as a bracket.
    assert next_k_index({20: 40.0, 19: 45.0}, start=19, j_max=20) is None


def test_continuous_precision_matches_uniform_quantisation_noise(identity_sae):
    # Identity SAE on uniform(0, 1] values: quantising with bin width w adds w**2/12 per
    # active entry, so MSE = density * w**2 / 12 with w = 2**-b. Solve for b independently.
    x = _uniform_latents()
    sae = identity_sae(x.shape[1])
    z = sparse_latents(sae, x)
    density = z.nnz / x.size
    eps = 1e-4
    p = continuous_precision(sae, z, x, epsilon=eps)
    assert p.status == "in_band"
    assert (1 - REL_BAND) * eps <= p.mse_quantised <= eps
    assert p.mse == pytest.approx(0.0, abs=1e-12)
    expected_bits = math.log2(1.0 / math.sqrt(12 * eps / density))
    assert p.bits == pytest.approx(expected_bits, abs=0.02)
    # The same MSE, recomputed through the public quantise/dequantise path.
    assert quantised_mse(sae, z, x, p.bits) == pytest.approx(p.mse_quantised, rel=1e-9)


def test_bisection_finds_the_coarsest_precision_when_the_unquantised_mse_already_lies_in_the_band():
    # MSE(b) = raw + C 4**-b: quantising adds C 4**-b. With raw inside [(1 - REL_BAND) eps, eps]
    # every precision meeting eps is "in the band"; the coarsest one solves raw + C 4**-b = eps,
    # b* = log2(C / (eps - raw)) / 2. (Stopping at the band returned max_bits, 40, here.)
    eps, c = 0.03, 0.5
    for headroom in (0.9 * REL_BAND, 0.5 * REL_BAND, 0.01 * REL_BAND):
        raw = eps * (1 - headroom)
        p = bisect_precision(lambda b, raw=raw: raw + c * 4.0**-b, raw, epsilon=eps)
        expected = 0.5 * math.log2(c / (eps - raw))
        assert p.status == "in_band" and p.mse_quantised <= eps
        assert expected <= p.bits <= expected + BITS_RESOLUTION
    # Below the band, the band alone stops the bisection, as before.
    raw = eps * 0.5
    p = bisect_precision(lambda b: raw + c * 4.0**-b, raw, epsilon=eps)
    assert (1 - REL_BAND) * eps <= p.mse_quantised <= eps
    assert p.bits == pytest.approx(0.5 * math.log2(c / (eps - raw)), abs=1e-3)


def test_continuous_precision_of_an_sae_whose_unquantised_mse_lies_in_the_band(identity_sae):
    # The identity SAE's reconstruction misses the target by a constant offset whose square
    # lies just inside the band. The quantised MSE then wobbles at fine precisions (rounding
    # errors against the offset), so the analytic test above pins the answer; here the real
    # path must still return a precision that meets eps, far coarser than the 40 bits it gave.
    x = _uniform_latents(n=4000)
    sae = identity_sae(x.shape[1])
    z = sparse_latents(sae, x)
    eps = 1e-3
    target = x + np.float32(math.sqrt(eps * (1 - REL_BAND / 4)))
    p = continuous_precision(sae, z, target, epsilon=eps)
    assert p.status == "in_band" and p.bits < 20
    assert quantised_mse(sae, z, target, p.bits) == pytest.approx(p.mse_quantised, rel=1e-9)
    assert p.mse_quantised <= eps


def test_continuous_precision_refuses_an_sae_above_tolerance_and_reports_over_delivery(identity_sae):
    x = _uniform_latents(n=2000)
    sae = identity_sae(x.shape[1])
    z = sparse_latents(sae, x)
    with pytest.raises(ValueError, match="above epsilon"):
        continuous_precision(sae, z, x + 0.5, epsilon=1e-3)
    # A tolerance so loose that one bin per feature already meets it.
    coarse = continuous_precision(sae, z, x, epsilon=1.0)
    assert coarse.status == "coarsest"
    with pytest.raises(ValueError, match="epsilon"):
        continuous_precision(sae, z, x, epsilon=-1.0)


def test_fractional_bits_fall_between_whole_bits(identity_sae):
    x = _uniform_latents(n=5000)
    sae = identity_sae(x.shape[1])
    z = sparse_latents(sae, x)
    mses = [quantised_mse(sae, z, x, b) for b in (3.0, 3.5, 4.0)]
    assert mses[0] > mses[1] > mses[2]
    dls = [description_length(z, bits=b).dl_bits for b in (3.0, 3.5, 4.0)]
    assert dls[0] < dls[1] < dls[2]


def test_bootstrap_with_unit_weights_is_the_dl_and_halves_recount_directly():
    x = _uniform_latents(n=1000, d=6, density=0.3)
    z = sparse.csr_array(x)
    bits = 2.7
    ones = np.ones((1, z.shape[0]))
    assert bootstrap_dl(z, bits, ones)[0] == pytest.approx(description_length(z, bits=bits).dl_bits, rel=1e-12)
    # Weight 2 on the first half, 0 on the second: the entropies of the first half's codes
    # (codes fixed by the full data), counted directly.
    half = z.shape[0] // 2
    w = np.r_[np.full(half, 2.0), np.zeros(z.shape[0] - half)][None, :]
    codes = quantize(x, bits=bits)
    direct = feature_entropies(codes[:half]).sum()
    assert bootstrap_dl(z, bits, w)[0] == pytest.approx(direct, rel=1e-12)
    # Paired: same seed, same replicates.
    np.testing.assert_array_equal(bootstrap_weights(50, 3, seed=1), bootstrap_weights(50, 3, seed=1))
    assert bootstrap_weights(50, 3, seed=1).sum(axis=1).tolist() == [50, 50, 50]


def test_saebench_count_by_hand():
    # One feature over 4 samples: values 0, 0, 50, 150; 2 bins over [0, max(150, 100)] = width 75.
    # Histogram of all samples: [0, 75] holds 0, 0, 50 -> 3; (75, 150] holds 150 -> 1.
    z = np.array([[0.0], [0.0], [50.0], [150.0]])
    h_fire = 1.0  # rate 1/2
    h_value = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert saebench_dl(z, num_bins=2) == pytest.approx(h_fire + 0.5 * h_value, rel=1e-12)
    # The floor of 100 on the range: small activations all fall in the first of 16 bins,
    # so only the firing entropy is left (rate 2/3).
    small = np.array([[0.0], [0.5], [1.0]])
    h = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert saebench_dl(small, num_bins=16) == pytest.approx(h, rel=1e-12)
    # Without the floor the two values land in different bins.
    assert saebench_dl(small, num_bins=16, max_floor=0.0) > h
    with pytest.raises(ValueError, match="num_bins"):
        saebench_dl(small, num_bins=0)


def test_two_part_bits_adds_the_decoder_once():
    # 64 features x 784 inputs + 784 biases at 16 bits, shared over 60,000 samples.
    assert two_part_bits(80.0, 64, 784) == pytest.approx(80.0 + 65 * 784 * 16 / 60_000)
    assert two_part_bits(80.0, 64, 784, n_samples=1, bits_per_weight=8) == 80.0 + 65 * 784 * 8


def _summary(width, dls, boot=None):
    return WidthSummary(width, dict(enumerate(dls)), {i: (boot or []) for i in range(len(dls))})


def test_resolution_resolves_a_clear_minimum_and_refuses_an_overlap():
    clear = [_summary(64, [100.0, 101.0, 99.0]), _summary(128, [80.0, 81.0, 79.0]),
             _summary(256, [90.0, 91.0, 89.0])]
    res = resolve_optimum(clear)
    assert res.optimum == 128 and res.resolved and res.tie_set == (128,)
    # Width 256 within the seed spread of 128: a tie set, not resolved. Difference 1.0; combined
    # standard error sqrt(2 * 1**2 / 3) = 0.816; times 2 = 1.63 > 1.0.
    close = [_summary(64, [100.0, 101.0, 99.0]), _summary(128, [80.0, 81.0, 79.0]),
             _summary(256, [81.0, 82.0, 80.0])]
    res = resolve_optimum(close)
    assert res.optimum == 128 and not res.resolved and res.tie_set == (128, 256)
    diff, unc = res.margins[256]
    assert diff == pytest.approx(1.0) and unc == pytest.approx(2 * math.sqrt(2 / 3))


def test_resolution_borrows_the_pooled_spread_and_adds_the_bootstrap():
    # Width 256 has one seed: it borrows the relative spread of the others (1/80 and 1/100).
    summaries = [_summary(64, [100.0, 101.0, 99.0]), _summary(128, [80.0, 81.0, 79.0]),
                 _summary(256, [80.5])]
    res = resolve_optimum(summaries)
    pooled = math.sqrt(((1 / 100) ** 2 + (1 / 80) ** 2) / 2)
    assert res.pooled_rel_seed_std == pytest.approx(pooled)
    assert res.margins[256][1] == pytest.approx(2 * math.sqrt((pooled * 80.5) ** 2 + 1 / 3))
    assert not res.resolved
    # Paired bootstrap replicates whose difference varies a lot widen the margin.
    rng = np.random.default_rng(0)
    b1, b2 = list(80 + rng.normal(0, 5, 200)), list(90 + rng.normal(0, 5, 200))
    noisy = [_summary(128, [80.0, 80.0], b1), _summary(256, [90.0, 90.0], b2)]
    res = resolve_optimum(noisy)
    assert not res.resolved  # seeds agree exactly, but the test digits cannot tell them apart
    with pytest.raises(ValueError, match="no widths"):
        resolve_optimum([])


def test_resolution_needs_a_rival_and_a_known_seed_spread():
    assert not resolve_optimum([_summary(128, [80.0, 81.0])]).resolved
    # One seed everywhere: far apart, but the training noise is unknown.
    res = resolve_optimum([_summary(64, [100.0]), _summary(128, [80.0])])
    assert not res.seed_spread_known and not res.resolved and res.tie_set == (128,)


def test_measure_sae_on_the_identity_sae(identity_sae):
    x = _uniform_latents(n=4000)
    sae = identity_sae(x.shape[1])
    m = measure_sae(sae, x, epsilon=1e-4, other_tolerances=(0.98e-4, 2e-4),
                    boot_weights=bootstrap_weights(len(x), 5))
    assert m.feasible and m.precision is not None and m.precision.status == "in_band"
    assert m.dl_bits == pytest.approx(description_length(x, bits=m.precision.bits).dl_bits)
    assert m.n_live == x.shape[1] and m.dead_fraction == 0.0
    assert m.l0 == pytest.approx((x > 0).sum() / len(x))
    # Whole bits: the coarsest whole number meeting epsilon, so at least the fractional bits.
    assert m.whole_bits >= m.precision.bits and m.whole_mse_quantised <= 1e-4
    assert m.whole_bits - 1 < m.precision.bits
    # A tighter tolerance costs more bits, a looser one fewer.
    assert m.dl_at["9.8e-05"] > m.dl_bits > m.dl_at["0.0002"]
    assert len(m.boot) == 5


def test_optimum_rule_is_smallest_dl_then_narrowest_and_skips_misses():
    from mdl_utils.resolution import optimum_index

    assert optimum_index([5.0, None, 3.0, 3.0], [8, 4, 32, 16]) == 3  # tie at 3.0: width 16 < 32
    assert optimum_index([None, None], [8, 16]) is None
    assert optimum_index([], []) is None
    with pytest.raises(ValueError, match="differ in length"):
        optimum_index([1.0], [8, 16])


def test_coarsest_whole_bits_is_the_first_whole_bit_meeting_epsilon_or_none():
    from mdl_utils.protocol import coarsest_whole_bits

    # loss halves per bit from 1.0 at 0 bits: 2**-b <= 0.1 first at b = 4 (0.0625).
    assert coarsest_whole_bits(lambda b: 2.0**-b, 0.1) == (4, 0.0625)
    assert coarsest_whole_bits(lambda b: 1.0, 0.1) is None


def test_a_minimum_is_bracketed_only_with_evidence_on_both_sides():
    from mdl_utils.resolution import bracket_optimum

    grid = (128, 256, 512, 1024)
    inside = bracket_optimum(256, [128, 256, 512], grid)
    assert inside.bracketed and (inside.narrower, inside.wider) == (128, 512) and inside.open_sides() == []
    # Smallest at the grid's widest width: the curve may go on falling past it.
    wide = bracket_optimum(1024, [256, 512, 1024], grid)
    assert not wide.bracketed and wide.narrow_closed and not wide.wide_closed
    assert wide.open_sides() == ["it is the grid's widest width (1024) and nothing wider is searched"]
    # Smallest at the widest width that has a DL*, but the grid goes further.
    assert bracket_optimum(512, [256, 512], grid).open_sides() == ["no wider width has a DL*"]
    # Smallest at the narrowest width searched, nothing narrower tried.
    narrow = bracket_optimum(128, [128, 256], grid)
    assert narrow.open_sides() == ["nothing narrower was searched"] and not narrow.at_infeasible_edge
    # ... unless the narrower widths cannot meet the tolerance: then it is a minimum, at that edge.
    edge = bracket_optimum(256, [256, 512], grid, infeasible=[64, 128, 2048])
    assert edge.bracketed and edge.at_infeasible_edge and edge.narrower_infeasible == (64, 128)
    # A lone width is open on both sides.
    assert len(bracket_optimum(256, [256], grid).open_sides()) == 2
    with pytest.raises(ValueError, match="not among the widths with a DL"):
        bracket_optimum(64, [128, 256], grid)
    with pytest.raises(ValueError, match="both"):
        bracket_optimum(256, [128, 256], grid, infeasible=[128])
    with pytest.raises(ValueError, match="no widths"):
        bracket_optimum(256, [256], ())
    with pytest.raises(ValueError, match="capped but have no DL"):
        bracket_optimum(256, [128, 256, 512], grid, capped=[1024])


def test_a_width_whose_k_search_hit_its_cap_leaves_the_minimum_unbracketed():
    from mdl_utils.resolution import bracket_optimum

    grid = (128, 256, 512, 1024)
    # Bracketed in width, but width 1024's DL* is only an upper bound: its true value may lie
    # below the optimum's, so the minimum is not shown.
    rival = bracket_optimum(256, [128, 256, 512, 1024], grid, capped=[1024])
    assert rival.wide_closed and rival.narrow_closed and not rival.bracketed
    assert rival.open_sides() == [
        "the k search at width 1024 reached the cap on trainings per search while DL was still falling, "
        "so its DL* is only an upper bound"
    ]
    # The optimum's own DL* capped: not measured, so not bracketed either.
    own = bracket_optimum(256, [128, 256, 512], grid, capped=[512, 256])
    assert own.capped == (256, 512) and not own.bracketed
    assert own.open_sides()[0].startswith("the k searches at widths 256, 512 reached the cap")
    # An open side and capped widths: one phrase each.
    assert len(bracket_optimum(1024, [512, 1024], grid, capped=[512]).open_sides()) == 2


def test_the_optimum_verdict_takes_the_first_reason_that_applies():
    from mdl_utils.resolution import Resolution, bracket_optimum, judge_optimum

    def res(tie, resolved, **kw):
        return Resolution(optimum=256, resolved=resolved, tie_set=tuple(tie), margins={}, pooled_rel_seed_std=0.01,
                          z=2.0, **kw)  # fmt: skip

    grid = (128, 256, 512)
    inside = bracket_optimum(256, [128, 256, 512], grid)
    capped = bracket_optimum(256, [128, 256, 512], grid, capped=[512])
    edge = bracket_optimum(256, [128, 256], (128, 256))
    ok = judge_optimum(res([256], True), inside)
    assert (ok.status, ok.resolved, ok.optimum) == ("resolved", True, 256)
    assert str(ok) == "resolved: every other width is longer by more than the combined uncertainty"
    # Provisional comes first, even over an open side.
    assert judge_optimum(res([256], False, provisional=True), edge).status == "provisional"
    # An unbracketed minimum is not resolved however large the margins.
    assert str(judge_optimum(res([256], True), edge)) == (
        "not resolved: the minimum is not bracketed, since it is the grid's widest width (256) and nothing wider "
        "is searched"
    )
    assert "width 512 reached the cap" in judge_optimum(res([256], True), capped).reason
    # Bracketed but not resolved: unknown training noise, or rivals within the margin.
    assert judge_optimum(res([256], False, seed_spread_known=False), inside).reason == (
        "one seed per width, so the training noise is unknown"
    )
    tie = judge_optimum(res([128, 256, 512], False), inside)
    assert not tie.resolved and tie.reason == "it cannot be told apart from width(s) 128, 512"
    with pytest.raises(ValueError, match="bracket is of width 512"):
        judge_optimum(res([256], True), bracket_optimum(512, [256, 512], grid))
