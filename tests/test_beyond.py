"""Tests for mdl_utils.beyond: crossings of hand-made curves, power-law fits on synthetic data,
and the committed full-profile results recomputed from what is stored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mdl_utils.beyond import (
    RESULTS_FORMAT_VERSION,
    crossing_counts,
    curve_crossings,
    epsilon_optimum,
    fit_power_law,
    fits_of,
    load_beyond,
    pareto_front,
    rate_distortion_curve,
    value_entropy,
)
from mdl_utils.dl import description_length

REPO = Path(__file__).resolve().parents[1]
FULL = REPO / "results" / "full"
BEYOND = FULL / "beyond"


def _curve(mse, dl):
    return {"mse": list(mse), "dl_bits": list(dl)}


def test_pareto_front_drops_dominated_points_and_sorts_by_mse():
    mse = [0.03, 0.01, 0.02, 0.015, 0.05]
    dl = [100, 300, 150, 400, 90]
    # (0.015, 400) is beaten by (0.01, 300): lower MSE and lower DL.
    assert pareto_front(mse, dl).tolist() == [1, 2, 0, 4]


def test_lines_crossing_once_in_linear_mse():
    a = _curve([1, 2, 3], [30, 20, 10])  # DL = 40 - 10 m
    b = _curve([1, 3], [25, 15])  # DL = 30 - 5 m: equal at m = 2
    assert curve_crossings(a, b, log_mse=False) == pytest.approx([2.0])
    assert curve_crossings(b, a, log_mse=False) == pytest.approx([2.0])


def test_zigzag_crosses_three_times_and_the_location_is_where_drawn():
    a = _curve([1, 2, 3, 4, 5], [100, 80, 60, 40, 20])
    b = _curve([1, 2, 3, 4, 5], [95, 85, 55, 45, 15])  # below, above, below, above, below
    got = curve_crossings(a, b, log_mse=False)
    assert len(got) == 4
    # First segment: a - b goes from +5 to -5, zero halfway.
    assert got[0] == pytest.approx(1.5)
    # In log MSE the crossing of the first segment sits at the geometric mean.
    assert curve_crossings(a, b)[0] == pytest.approx(math.sqrt(2.0))


def test_parallel_touching_and_disjoint_curves_do_not_cross():
    a = _curve([1, 2, 3], [30, 20, 10])
    assert curve_crossings(a, _curve([1, 2, 3], [31, 21, 11])) == []
    # Touching at a knot and staying above is not a crossing.
    assert curve_crossings(a, _curve([1, 2, 3], [35, 20, 15])) == []
    # No overlap in MSE: nothing to compare.
    assert curve_crossings(a, _curve([4, 5], [100, 1])) == []


def test_meeting_at_a_knot_and_passing_through_counts_once():
    a = _curve([1, 2, 3], [30, 20, 10])
    b = _curve([1, 2, 3], [35, 20, 5])
    assert curve_crossings(a, b, log_mse=False) == pytest.approx([2.0])


def test_mse_range_limits_the_search():
    a = _curve([1, 2, 3, 4, 5], [100, 80, 60, 40, 20])
    b = _curve([1, 2, 3, 4, 5], [95, 85, 55, 45, 15])
    assert len(curve_crossings(a, b, log_mse=False, mse_range=(2.0, 3.0))) == 1


def test_crossing_counts_matrix_is_symmetric():
    # The first two cross once (above); the third starts below both at MSE 1 and ends above
    # both at MSE 3, so it crosses each once; a fourth, far above, crosses none.
    curves = [_curve([1, 2, 3], [30, 20, 10]), _curve([1, 3], [25, 15]), _curve([1, 3], [22, 18]),
              _curve([1, 3], [90, 80])]
    counts = crossing_counts(curves)
    assert counts.tolist() == [[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_power_law_fit_recovers_exponent_from_exact_and_noisy_data():
    eps = np.array([0.01, 0.015, 0.02, 0.03, 0.05])
    exact = fit_power_law(eps, 3.0 * eps**-1.5)
    assert exact.exponent == pytest.approx(-1.5)
    assert exact.prefactor == pytest.approx(3.0)
    assert exact.r_squared == pytest.approx(1.0)
    assert exact.exponent_stderr == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    x = np.geomspace(0.005, 0.1, 40)
    noisy = fit_power_law(x, 2.0 * x**0.7 * np.exp(rng.normal(0, 0.05, x.size)))
    assert abs(noisy.exponent - 0.7) < 4 * noisy.exponent_stderr
    assert 0.9 < noisy.r_squared < 1.0
    flat = fit_power_law(eps, np.full(eps.size, 7.0))  # no trend: exponent 0, R^2 undefined
    assert flat.exponent == pytest.approx(0.0) and math.isnan(flat.r_squared)
    with pytest.raises(ValueError):
        fit_power_law([0.01, 0.01], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_power_law([0.01, 0.02], [0.0, 2.0])


def test_value_entropy_is_zero_for_a_binary_feature_and_one_for_a_fair_two_valued_one():
    codes = np.array([[1, 1], [1, 2], [0, 0], [0, 0]])
    from mdl_utils.dl import feature_entropies

    h = feature_entropies(codes)
    got = value_entropy(h, (codes > 0).mean(axis=0))
    assert got == pytest.approx([0.0, 1.0])
    assert math.isnan(value_entropy([0.0], [0.0])[0])


def test_rate_distortion_curve_matches_description_length_and_mse_per_precision():
    rng = np.random.default_rng(0)
    z = rng.exponential(1.0, (200, 6)) * (rng.random((200, 6)) < 0.4)
    W = rng.normal(size=(6, 5))
    x = z @ W
    curve = rate_distortion_curve(z, lambda zz: np.asarray(zz, dtype=np.float64) @ W, x, bits=(1, 4, 8))
    for b, dl in zip(curve["bits"], curve["dl_bits"]):
        assert dl == description_length(z, bits=b).dl_bits
    assert curve["mse"][0] > curve["mse"][1] > curve["mse"][2]


def test_epsilon_optimum_takes_the_smallest_dl_and_flags_edges():
    payload = {"epsilon": 0.02, "rows": [
        {"width": 16, "dl_bits": None},
        {"width": 32, "dl_bits": 120.0, "k": 8, "l0": 8.0, "bits": 4},
        {"width": 64, "dl_bits": 100.0, "k": 6, "l0": 6.0, "bits": 4},
        {"width": 128, "dl_bits": 110.0, "k": 5, "l0": 5.0, "bits": 3},
    ]}
    best = epsilon_optimum(payload)
    assert best["width"] == 64 and not best["at_edge"] and best["n_reached"] == 3
    assert best["near_widths"] == [64]  # 110 is 10% above 100, outside the 5% margin
    payload["rows"][3]["dl_bits"] = 104.9
    assert epsilon_optimum(payload)["near_widths"] == [64, 128]
    payload["rows"][3]["dl_bits"] = 90.0
    assert epsilon_optimum(payload)["at_edge"] and epsilon_optimum(payload)["at_sweep_edge"]


def test_optimum_below_the_band_is_flagged_and_left_out_of_the_fits():
    rows = [
        {"width": 16, "status": "below_band", "dl_bits": 20.0, "k": 1.0, "l0": 1.0, "bits": 2},
        {"width": 32, "status": "below_band", "dl_bits": 22.0, "k": 1.0, "l0": 1.0, "bits": 2},
    ]
    pinned = epsilon_optimum({"epsilon": 0.05, "rows": rows})
    assert pinned["width"] == 16 and not pinned["in_band"] and pinned["n_below_band"] == 2
    # Three in-band optima on y = 2 * eps**-1 and one pinned outlier: the fit ignores the outlier.
    optima = [{"epsilon": e, "width": 2 / e, "l0": 2 / e, "dl_bits": 2 / e, "in_band": True}
              for e in (0.01, 0.02, 0.04)]
    fits = fits_of([*optima, {**pinned, "l0": 1000.0}])
    assert fits["l0"]["n_points"] == 3
    assert fits["l0"]["exponent"] == pytest.approx(-1.0) and fits["l0"]["prefactor"] == pytest.approx(2.0)


def test_missing_results_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="beyond --profile full"):
        load_beyond(tmp_path)


@pytest.mark.skipif(not (BEYOND / "beyond.json").is_file(), reason="no committed full beyond results")
def test_committed_full_results_fit_an_independent_least_squares_line():
    """Correctness check: the stored power-law fits against an independent least-squares line
    (numpy.polyfit in log-log space on the in-band optima), and each stored optimum against a
    plain minimum over the stored rows that reach the tolerance."""
    payload = load_beyond(BEYOND)
    used = [o["optimum"] for o in payload["epsilon_scan"] if o["optimum"] and o["optimum"]["in_band"]]
    for name in ("width", "l0", "dl_bits"):
        fit = payload["fits"][name]
        if fit is None:
            assert len(used) < 3
            continue
        slope, intercept = np.polyfit(np.log([o["epsilon"] for o in used]), np.log([o[name] for o in used]), 1)
        assert fit["exponent"] == pytest.approx(slope, rel=1e-6)
        assert fit["prefactor"] == pytest.approx(math.exp(intercept), rel=1e-6)
    for entry in payload["epsilon_scan"]:
        reached = [r for r in entry["rows"] if r.get("dl_bits") is not None]
        if entry["optimum"] is None:
            assert not reached
            continue
        best = min(r["dl_bits"] for r in reached)
        assert entry["optimum"]["dl_bits"] == best
        assert entry["optimum"]["width"] == min(r["width"] for r in reached if r["dl_bits"] == best)


@pytest.mark.skipif(not (BEYOND / "beyond.json").is_file(), reason="no committed full beyond results")
def test_committed_full_results_regression_recompute_from_what_is_stored():
    """Regression check, not a correctness check: the same functions, rerun on the same stored
    JSON, give the stored optima, fits and crossing counts (it catches a change of those
    functions or of the files; the independent checks are the test above and the unit tests)."""
    payload = load_beyond(BEYOND)
    assert payload["format_version"] == RESULTS_FORMAT_VERSION
    chapter3 = json.loads((FULL / "mdl.json").read_text())
    # The epsilon = 0.015 optimum of the scan is chapter 3's optimum.
    at = [o for o in payload["epsilon_scan"] if math.isclose(o["epsilon"], chapter3["epsilon"])]
    assert len(at) == 1 and at[0]["optimum"]["width"] == chapter3["optimum_width"]
    # Each scan point's optimum follows from its stored rows; the fits from the optima.
    optima = []
    for entry in payload["epsilon_scan"]:
        again = epsilon_optimum({"epsilon": entry["epsilon"], "rows": entry["rows"]})
        assert (again is None) == (entry["optimum"] is None)
        if again is not None:
            assert again == entry["optimum"]
            optima.append(again)
    assert json.dumps(fits_of(optima)) == json.dumps(payload["fits"])  # NaN-safe comparison
    # Crossing counts follow from the stored curves.
    assert crossing_counts(payload["curves"]).tolist() == payload["crossing_counts"]
    # Per-feature DL: never above uniform at the same ceiling; the table cost is included.
    rows3 = {r["width"]: r for r in chapter3["rows"]}
    for a in payload["allocations"]:
        assert a["entropy_bits"] <= a["uniform_dl_bits"] + 1e-9
        assert a["mse"] <= payload["epsilon"]
        # At the uniform precision's own MSE as the ceiling: never above the uniform DL.
        ref, same = a["allocator_uniform"], a["same_mse"]
        assert same["ceiling"] == ref["mse"] and same["mse"] <= same["ceiling"]
        assert same["entropy_bits"] <= ref["entropy_bits"] + 1e-9
        # The allocator's uniform reference is chapter 3's measurement of the same SAE.
        row = rows3[a["width"]]
        assert ref["bits"] == row["bits"] == a["uniform_bits"]
        assert ref["entropy_bits"] == pytest.approx(row["dl_bits"], rel=1e-9)
        assert ref["mse"] == pytest.approx(row["mse_quantised"], rel=1e-5)
        n = len(a["bits"])
        assert n == a["width"]
    # The scan's rows are those of the sweeps stored beside it (chapter 3's at its epsilon).
    keys = ("width", "status", "k", "mse", "l0", "dl_bits", "bits")
    for entry in payload["epsilon_scan"]:
        if math.isclose(entry["epsilon"], chapter3["epsilon"]):
            sweep = chapter3
        else:
            sweep = json.loads((BEYOND / "scan" / f"eps-{entry['epsilon']:.4f}" / "mdl.json").read_text())
        assert math.isclose(sweep["epsilon"], entry["epsilon"])
        assert entry["rows"] == [{k: r.get(k) for k in keys} for r in sweep["rows"]]
    # Each rate-distortion curve passes through chapter 3's measurement of the same SAE: at
    # the SAE's uniform precision, the same DL and the same quantised MSE.
    by_width = {r["width"]: r for r in chapter3["rows"] if r.get("dl_bits") is not None}
    assert [c["width"] for c in payload["curves"]] == sorted(by_width)
    for curve in payload["curves"]:
        row = by_width[curve["width"]]
        i = curve["bits"].index(row["bits"])
        assert curve["dl_bits"][i] == pytest.approx(row["dl_bits"], rel=1e-9)
        assert curve["mse"][i] == pytest.approx(row["mse_quantised"], rel=1e-6)
