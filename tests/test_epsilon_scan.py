"""Tests for mdl_utils.epsilon_scan: the scan reuses chapter 3's study at its tolerance,
searches below k = 1 where a loose tolerance needs it, resumes without retraining, and its
per-seed optima, power-law intervals and surviving crossings match values derived by hand
or by a second method."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mdl_utils.epsilon_scan import (
    K_MIN,
    run_epsilon_scan,
    scan_settings,
    summarise_scan,
)
from mdl_utils.power_law import fit_power_law, fit_scan
from mdl_utils.scan_results import ScanResults, read_scan
from mdl_utils.rate_distortion import curve_crossings_with_spread, rate_distortion_curves
from mdl_utils.protocol import index_of_k, k_of_index
from mdl_utils.study import run_study
from mdl_utils.study_store import load_rows

from test_study import SETTINGS, _data

REPO = Path(__file__).resolve().parents[1]
EPSILONS = (0.08, 0.12, 0.35, 1.6)


def _strip(result):
    out = json.loads(json.dumps(result.to_dict() if isinstance(result, ScanResults) else result))
    for key in ("date", "machine", "wall_time_s", "code_version"):
        out.pop(key, None)
    return out


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    data = _data()
    run_study(SETTINGS, root / "ref", cache=root / "cache", progress=False, data=data)
    n_ref = len(load_rows(root / "ref"))
    snapshot = {str(p.relative_to(root)): p.read_text() for p in sorted((root / "ref").rglob("*.json"))}
    (root / "ref-before-scan.json").write_text(json.dumps(snapshot))
    result = run_epsilon_scan(SETTINGS, root / "scan", epsilons=EPSILONS, reference_dir=root / "ref",
                              cache=root / "cache", progress=False, data=data)
    return root, data, result, n_ref


def test_scan_settings_change_only_the_tolerance_k_min_and_the_first_k():
    assert scan_settings(SETTINGS, SETTINGS.epsilon) is SETTINGS
    loose = scan_settings(SETTINGS, 0.24)
    assert loose.epsilon == 0.24 and loose.k_min == K_MIN == 1 / 16
    # first k: k_start * (eps / eps_ref)**-2 = 8 / 4 = 2, snapped to the grid 2**(j/4)
    assert loose.k_start == k_of_index(index_of_k(2.0)) == 2.0
    assert (loose.widths, loose.seeds, loose.train) == (SETTINGS.widths, SETTINGS.seeds, SETTINGS.train)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        scan_settings(SETTINGS, -0.1)
    # Fewer seeds away from the reference (the quick profile's choice); the first must stay.
    assert scan_settings(SETTINGS, 0.24, seeds=(0,)).seeds == (0,)
    assert scan_settings(SETTINGS, SETTINGS.epsilon, seeds=(0,)).seeds == SETTINGS.seeds
    with pytest.raises(ValueError, match="must start with the base's first seed 0"):
        scan_settings(SETTINGS, 0.24, seeds=(1,))


def test_reference_tolerance_is_chapter_3s_study_and_loose_tolerances_go_below_k_1(scan):
    root, _, result, n_ref = scan
    assert [e.epsilon for e in result.entries] == sorted(EPSILONS)
    assert not (root / "scan" / f"eps-{SETTINGS.epsilon:.4f}").exists()  # reused, not rerun
    assert len(load_rows(root / "ref")) == n_ref  # and not extended
    assert result.entry(SETTINGS.epsilon).n_saes_trained == n_ref
    assert all(e.complete for e in result.entries)
    loosest = load_rows(root / "scan" / "eps-1.6000")
    assert all(r["k"] >= K_MIN for r in loosest)
    # At the loosest tolerance the DL-optimal k lies below one feature per sample.
    entry = result.entry(1.6)
    assert entry.seed_optima and all(o.k < 1 for o in entry.seed_optima.values())


def test_seed_optima_and_resolution_follow_from_the_rows(scan):
    root, _, result, _ = scan
    for e in result.to_dict()["entries"]:
        folder = root / "ref" if e["epsilon"] == SETTINGS.epsilon else root / "scan" / f"eps-{e['epsilon']:.4f}"
        rows = load_rows(folder)
        for seed in SETTINGS.seeds:
            # By hand: each width's minimum DL over k for this seed, then the smallest.
            best = {}
            for r in rows:
                if r["seed"] == seed and r["measure"]["dl_bits"] is not None:
                    best[r["width"]] = min(best.get(r["width"], math.inf), r["measure"]["dl_bits"])
            if not best:
                assert str(seed) not in e["seed_optima"]
                continue
            width = min(best, key=lambda w: (best[w], w))
            got = e["seed_optima"][str(seed)]
            assert (got["width"], got["dl_bits"]) == (width, best[width])
        if e["optimum"] is not None:
            means = {row["width"]: row["mean"] for row in e["dl_star"]}
            assert e["optimum"]["width"] == min(means, key=lambda w: (means[w], w))
        # By hand: a width is capped when a seed counted in its DL* used up its trainings with
        # its smallest DL at the smallest k it tried above k_min (or the largest below the width).
        capped = set()
        for row in e["dl_star"]:
            for seed in row["dl_by_seed"]:
                mine = [r for r in rows if r["width"] == row["width"] and r["seed"] == int(seed)]
                best_r = min((r for r in mine if r["measure"]["dl_bits"] is not None),
                             key=lambda r: r["measure"]["dl_bits"])
                ks = [r["k"] for r in mine]
                at_end = (best_r["k"] == min(ks) and best_r["k"] > e["k_min"]) or (
                    best_r["k"] == max(ks) and best_r["k"] < row["width"])
                if len(mine) >= SETTINGS.max_trainings_per_search and at_end:
                    capped.add(row["width"])
        assert e["widths_capped"] == sorted(capped)


def test_rerun_trains_nothing_and_writes_the_same_scan(scan):
    root, data, result, _ = scan
    before = {p: p.read_text() for p in sorted((root / "scan").glob("eps-*/rows/*.json"))}
    again = run_epsilon_scan(SETTINGS, root / "scan", epsilons=EPSILONS, reference_dir=root / "ref",
                             cache=root / "cache", progress=False, data=data)
    after = {p: p.read_text() for p in sorted((root / "scan").glob("eps-*/rows/*.json"))}
    assert before == after
    # Chapter 3's finished study is read, never rewritten (summary, rows and SAEs alike), by the
    # scan or by its rerun.
    now = {str(p.relative_to(root)): p.read_text() for p in sorted((root / "ref").rglob("*.json"))}
    assert now == json.loads((root / "ref-before-scan.json").read_text())
    assert _strip(again) == _strip(result)
    assert _strip(json.loads((root / "scan" / "scan.json").read_text())) == _strip(result)


def test_every_tolerances_summary_ends_with_all_its_seeds_even_when_the_budget_stops_the_second_pass(scan, tmp_path):
    """The first pass writes each tolerance's summary for seed 0 alone; the run ends by
    recomputing every summary for all seeds, so one the second pass never reached (budget)
    does not stay a one-seed summary that calls itself complete."""
    import shutil
    from dataclasses import replace

    from mdl_utils.study_summary import summarise

    root, data, _, _ = scan
    for folder in sorted((root / "scan").glob("eps-*")):
        on_disk = json.loads((folder / "summary.json").read_text())
        settings = scan_settings(SETTINGS, float(folder.name.removeprefix("eps-")))
        assert on_disk["settings"]["seeds"] == list(SETTINGS.seeds)
        expected = json.loads(json.dumps(summarise(settings, load_rows(folder), d_in=data.split("test").shape[1])))
        assert {k: on_disk[k] for k in expected} == expected
    # A copy whose first tolerance holds a first-pass summary; a rerun with no budget left
    # trains nothing and visits no study, yet the summary comes back with every seed.
    copy = tmp_path / "scan"
    shutil.copytree(root / "scan", copy)
    folder = sorted(copy.glob("eps-*"))[0]
    settings = scan_settings(SETTINGS, float(folder.name.removeprefix("eps-")))
    full = json.loads((folder / "summary.json").read_text())
    one_seed = summarise(replace(settings, seeds=settings.seeds[:1]), load_rows(folder),
                         d_in=data.split("test").shape[1])
    (folder / "summary.json").write_text(json.dumps({**full, **one_seed}, indent=2))
    run_epsilon_scan(SETTINGS, copy, epsilons=EPSILONS, reference_dir=root / "ref", cache=root / "cache",
                     progress=False, data=data, budget_hours=0.0, curves=False)
    assert json.loads((folder / "summary.json").read_text()) == full


def test_a_tolerances_summary_on_disk_covers_every_seed_when_the_job_dies_after_its_first_pass(
    scan, tmp_path, monkeypatch
):
    """The first pass runs each tolerance's first seed; a job killed as its second pass begins
    (before the end-of-run rewrite) must leave files that say the other seeds remain."""
    import mdl_utils.epsilon_scan as scan_mod

    root, data, _, _ = scan
    real = scan_mod.run_study

    class Killed(Exception):
        pass

    def killed_in_the_second_pass(settings, *args, **kwargs):
        if settings.seeds != SETTINGS.seeds[:1]:
            raise Killed
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(scan_mod, "run_study", killed_in_the_second_pass)
    out = tmp_path / "scan"
    with pytest.raises(Killed):  # the fixture's cache holds every SAE: nothing trains
        run_epsilon_scan(SETTINGS, out, epsilons=EPSILONS, reference_dir=root / "ref", cache=root / "cache",
                         progress=False, data=data, curves=False)  # fmt: skip
    folders = sorted(out.glob("eps-*"))
    assert len(folders) == len(EPSILONS) - 1  # chapter 3's tolerance is its own study
    for folder in folders:
        on_disk = json.loads((folder / "summary.json").read_text())
        assert on_disk["settings"]["seeds"] == list(SETTINGS.seeds), folder.name
        assert {r["seed"] for r in load_rows(folder)} == {0}
        # Seed 1 waits wherever seed 0 reached the tolerance (the scan's replication rule
        # keeps only the widths within its margin of the best, at least that one).
        reached = [e["width"] for e in on_disk["widths"] if e["seeds"]["0"]["reachable"]]
        if reached:
            assert not on_disk["complete"] and {s for _, s in on_disk["remaining"]} == {1}, folder.name


def test_curves_reread_the_measured_dl_at_the_studys_own_tolerance(scan):
    root, data, result, _ = scan
    curves = rate_distortion_curves(root / "ref", SETTINGS, data.split("test"),
                                    tolerances=(0.5 * SETTINGS.epsilon, SETTINGS.epsilon, 2 * SETTINGS.epsilon))
    rows = load_rows(root / "ref")
    assert curves
    for c in curves:
        # The stored SAE is the seed's minimum over k; the same DL comes back from the rows.
        mine = [r for r in rows if r["width"] == c["width"] and r["seed"] == c["seed"]
                and r["measure"]["dl_bits"] is not None]
        sel = min(mine, key=lambda r: (r["measure"]["dl_bits"], r["k_index"]))
        assert c["mse"] == pytest.approx(sel["measure"]["mse"], rel=1e-6)
        assert c["dl_bits"][1] == pytest.approx(sel["measure"]["dl_bits"], rel=1e-6)
        assert c["dl_bits"][0] is None if c["mse"] > 0.5 * SETTINGS.epsilon else c["dl_bits"][0] is not None
        assert c["dl_bits"][2] <= c["dl_bits"][1] + 1e-9  # a looser tolerance never costs more here


def test_scan_compares_per_feature_and_uniform_precision_for_every_stored_sae(scan):
    root, _, result, _ = scan
    stored = sorted(p.stem for p in (root / "ref" / "saes").glob("w*-s*.json"))
    got = sorted(f"w{a.width:05d}-s{a.seed}" for a in result.allocations)
    assert got == stored and len(result.curves) == len(stored)
    for a in result.allocations:
        g, u = a.greedy, a.uniform_at_greedy_mse
        assert g.mse <= SETTINGS.epsilon and u.mse <= g.mse
        if u.status == "in_band":
            assert (1 - 1e-4) * g.mse <= u.mse


def test_rewrite_reuses_curves_and_allocations_only_for_unchanged_weights(scan, tmp_path):
    root, data, result, _ = scan
    out = tmp_path / "scan"
    out.mkdir()
    doctored = json.loads((root / "scan" / "scan.json").read_text())
    doctored["curves"][0]["dl_bits"] = [-1.0] * len(doctored["curves"][0]["dl_bits"])
    doctored["allocations"][0]["greedy_saving"] = -1.0
    doctored["curves"][1]["sae_sha256"] = "0" * 64  # as if its weights had changed
    (out / "scan.json").write_text(json.dumps(doctored))
    again = summarise_scan(SETTINGS, out, epsilons=(SETTINGS.epsilon,), reference_dir=root / "ref", data=data)
    assert again.curves[0].dl_bits[0] == -1.0  # same weights: reused, not remeasured
    assert again.allocations[0].greedy_saving == -1.0
    assert again.curves[1] == result.curves[1]  # other weights: measured afresh


def _entry(eps, optima, *, resolved=True, at_edge=False, complete=True):
    return {"epsilon": eps, "complete": complete, "n_remaining": 0 if complete else 3, "at_edge": at_edge,
            "resolution": {"resolved": resolved, "tie_set": [optima["0"]["width"]]},
            "seed_optima": optima}


def _exact(alphas, eps=(0.01, 0.02, 0.04, 0.08)):
    entries = []
    for e in eps:
        optima = {str(s): {"width": 100 * e**a, "l0": 3 * e**a, "dl_bits": 50 * e**a} for s, a in enumerate(alphas)}
        entries.append(_entry(e, optima))
    return entries


def test_fit_interval_over_seeds_is_the_t_interval_of_the_seeds_exponents():
    alphas = [-1.0, -1.2, -0.8]
    fits = fit_scan(_exact(alphas))
    for q in ("width", "l0", "dl_bits"):
        f = fits[q]
        assert f["method"] == "seeds" and f["n_epsilons"] == 4
        assert [f["exponents"][str(s)] for s in range(3)] == pytest.approx(alphas)
        half = stats.t.ppf(0.975, 2) * np.std(alphas, ddof=1) / math.sqrt(3)  # = 4.303 * 0.2 / 1.732
        assert (f["low"], f["high"]) == pytest.approx((-1.0 - half, -1.0 + half))
        assert f["excludes_zero"] == (-1.0 + half < 0)
    # 4.303 * 0.2 / sqrt(3) = 0.497 < 1: the interval excludes zero, every tolerance resolved.
    assert fits["width"]["supported"] and list(fits["width"]["reasons"]) == []


def test_fit_is_not_supported_when_a_tolerance_is_unresolved_at_the_edge_or_unfinished():
    entries = _exact([-1.0, -1.1, -0.9])
    entries[1] = _entry(entries[1]["epsilon"], entries[1]["seed_optima"], resolved=False)
    entries[2] = _entry(entries[2]["epsilon"], entries[2]["seed_optima"], at_edge=True, complete=False)
    f = fit_scan(entries)["width"]
    assert f["excludes_zero"] and not f["supported"]
    text = " ".join(f["reasons"])
    assert "eps=0.02: optimum not resolved" in text and "eps=0.04: optimum at the edge" in text
    assert "eps=0.04: study not finished" in text
    # A width whose k search used up its trainings with DL still falling: its DL* is only an
    # upper bound, so the optimum read at that tolerance may be wrong.
    entries = _exact([-1.0, -1.1, -0.9])
    entries[3]["widths_capped"] = [512]
    f = fit_scan(entries)["width"]
    assert f["excludes_zero"] and not f["supported"]
    assert list(f["reasons"]) == [
        "eps=0.08: DL* only an upper bound at width(s) [512] (k search used up its trainings with DL still falling)"
    ]


def test_fit_with_one_seed_uses_the_least_squares_error_of_a_second_method():
    rng = np.random.default_rng(3)
    eps = np.array([0.008, 0.01, 0.015, 0.02, 0.03])
    width = 200 * eps**-0.7 * np.exp(rng.normal(0, 0.1, eps.size))
    entries = [_entry(float(e), {"0": {"width": float(w), "l0": 1.0, "dl_bits": 1.0}}) for e, w in zip(eps, width)]
    f = fit_scan(entries)["width"]
    ref = stats.linregress(np.log(eps), np.log(width))
    half = stats.t.ppf(0.975, eps.size - 2) * ref.stderr
    assert f["method"] == "one seed, least-squares error"
    assert f["mean"] == pytest.approx(ref.slope)
    assert (f["low"], f["high"]) == pytest.approx((ref.slope - half, ref.slope + half))
    # A constant quantity has a zero slope, whose zero-width interval does not exclude zero.
    flat = fit_scan(entries)["l0"]
    assert flat["mean"] == pytest.approx(0.0) and not flat["supported"]


def _curves(dl_a, dl_b, tol=(1.0, 2.0, 3.0, 4.0)):
    return ([{"width": 8, "seed": s, "tolerances": list(tol), "dl_bits": list(v)} for s, v in enumerate(dl_a)]
            + [{"width": 16, "seed": s, "tolerances": list(tol), "dl_bits": list(v)} for s, v in enumerate(dl_b)])


def test_a_crossing_counts_only_when_each_side_beats_the_seed_spread():
    # Width 8 shorter by ~10 bits at tolerance 1, width 16 shorter by ~10 bits at 4; spread ~1 bit.
    a = [[40, 35, 30, 30], [41, 34, 31, 31], [39, 36, 29, 29]]
    b = [[50, 36, 31, 20], [51, 35, 30, 21], [49, 37, 29, 19]]
    (pair,) = curve_crossings_with_spread(_curves(a, b))
    assert pair["widths"] == [8, 16]
    assert pair["order"] == ["a", "tie", "tie", "b"]
    assert pair["crossings"] == [[1.0, 4.0]] and pair["depends_on_tolerance"]
    # Means by hand: b - a = 10, 1, 0, -10: one sign change of the mean, between 3 and 4
    # (the zero at 3 has no sign and is skipped).
    assert pair["mean_difference"] == pytest.approx([10.0, 1.0, 0.0, -10.0])
    assert pair["raw_crossings"] == [[2.0, 4.0]]


def test_the_spread_is_judged_with_the_t_quantile_of_the_few_seeds_not_the_normal_one():
    # Three seeds, sd 1 each: se = sqrt(2/3) = 0.816; t(2, 0.975) = 4.303, so the bar is 3.51 bits.
    a = [[40, 40], [41, 41], [39, 39]]
    b = [[43, 37], [44, 36], [42, 38]]  # differences +3 and -3: beyond 2 se (1.63), inside t
    (pair,) = curve_crossings_with_spread(_curves(a, b, tol=(1.0, 2.0)))
    assert pair["order"] == ["tie", "tie"] and pair["crossings"] == []
    (loose,) = curve_crossings_with_spread(_curves(a, b, tol=(1.0, 2.0)), coverage=0.5)  # t(2, 0.75) = 0.816
    assert loose["order"] == ["a", "b"] and loose["crossings"] == [[1.0, 2.0]]


def test_a_crossing_inside_the_noise_is_reported_raw_but_does_not_count():
    a = [[40, 40, 40, 40], [50, 50, 50, 50], [30, 30, 30, 30]]
    b = [[41, 40, 39, 38], [51, 50, 49, 48], [31, 30, 29, 28]]  # spread 10 bits, differences <= 2
    (pair,) = curve_crossings_with_spread(_curves(a, b))
    assert pair["order"] == ["tie"] * 4
    assert pair["raw_crossings"] == [[1.0, 3.0]]
    assert pair["crossings"] == [] and not pair["depends_on_tolerance"]
    # One seed per width: the spread is unknown, so nothing is decided.
    (single,) = curve_crossings_with_spread(_curves([[10, 10, 10, 10]], [[50, 50, 1, 1]]))
    assert single["order"] == ["tie"] * 4 and single["crossings"] == []


def test_scan_json_reads_as_typed_records_and_writes_back_byte_for_byte(scan, tmp_path):
    root, _, result, _ = scan
    path = root / "scan" / "scan.json"
    typed = read_scan(path)
    assert json.dumps(typed.to_dict(), indent=1) == path.read_text()
    raw = json.loads(path.read_text())
    # The typed fields hold what the file says, read independently from the JSON.
    for e, d in zip(typed.entries, raw["entries"]):
        assert e.epsilon == d["epsilon"] and e.n_saes_trained == d["n_saes_trained"]
        assert {s: o.width for s, o in e.seed_optima.items()} == {s: o["width"] for s, o in d["seed_optima"].items()}
        if d["optimum"] is not None:
            assert e.optimum.width == d["optimum"]["width"] and e.optimum.tie_set == tuple(d["optimum"]["tie_set"])
            assert e.resolution.optimum == d["resolution"]["optimum"]
            assert [x.width for x in e.dl_star] == [x["width"] for x in d["dl_star"]]
    assert [c.sae_sha256 for c in typed.curves] == [c["sae_sha256"] for c in raw["curves"]]
    assert typed.allocations[0].greedy.mse == raw["allocations"][0]["greedy"]["mse"]
    assert typed.fits["width"].reasons == tuple(raw["fits"]["width"]["reasons"])
    assert typed.metadata.keys() == {"date", "machine", "wall_time_s", "code_version"}
    # A file that lacks a part, or another format, is refused with the reason.
    del raw["entries"][0]["seed_optima"]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="not an epsilon scan.*seed_optima"):
        read_scan(tmp_path / "bad.json")
    raw["format_version"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="results format 99"):
        read_scan(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="epsilon-scan --profile full"):
        read_scan(tmp_path / "none.json")
    with pytest.raises(KeyError, match="no entry at epsilon 0.5"):
        typed.entry(0.5)


def test_summary_without_rows_reports_nothing_yet(tmp_path):
    result = summarise_scan(SETTINGS, tmp_path / "scan", epsilons=(0.1, 0.2), curves=False)
    assert [e.n_saes_trained for e in result.entries] == [0, 0]
    assert not result.complete and result.fits["width"].mean is None
    assert [e.state for e in result.entries] == ["not run yet"] * 2 and result.entries[0].optimum is None
    assert (tmp_path / "scan" / "scan.json").is_file()


def test_cli_rejects_a_bad_tolerance_naming_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mdl_utils", "epsilon-scan", "--summary-only", "--no-curves",
         "--out", str(tmp_path / "o"), "--reference", str(tmp_path / "r"), "--epsilons", "0.01", "-0.5"],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert "-0.5" in proc.stderr and "positive" in proc.stderr
    assert not (tmp_path / "o").exists()


FULL_SCAN = REPO / "results" / "full" / "epsilon-scan"
#: Relative agreement asked of numbers re-measured from stored SAEs on another machine.
CROSS_MACHINE = 1e-5


@pytest.mark.skipif(not (FULL_SCAN / "scan.json").is_file(), reason="no committed full scan")
def test_committed_full_scan_reproduces_from_its_rows_and_saes(mnist_source_dir):
    import torch

    from mdl_utils.epsilon_scan import load_scan
    from mdl_utils.study_plan import study_settings

    stored = load_scan(FULL_SCAN).to_dict()
    base = study_settings("full")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command that wrote scan.json (--threads 1)
    try:
        _recheck_full_scan(stored, base)
    finally:
        torch.set_num_threads(threads)


def _recheck_full_scan(stored, base):
    from mdl_utils.allocation_checks import compare_at_equal_mse
    from mdl_utils.data import load_mnist
    from mdl_utils.study_store import load_selected_sae

    eps = [e["epsilon"] for e in stored["entries"]]
    again = summarise_scan(
        base, FULL_SCAN, epsilons=eps, reference_dir=REPO / "results" / "full" / "mnist-mdl",
        curves=False, write=False).to_dict()
    assert again["entries"] == stored["entries"] and again["fits"] == stored["fits"]
    # One stored SAE, re-measured on one torch thread: its curve and its allocation.
    x_test, _ = load_mnist("test")
    curve = min(stored["curves"], key=lambda c: (c["width"], c["seed"]))
    sae = load_selected_sae(REPO / "results" / "full" / "mnist-mdl", curve["width"], curve["seed"])
    (fresh,) = [c for c in rate_distortion_curves(REPO / "results" / "full" / "mnist-mdl", base, x_test,
                                                  tolerances=curve["tolerances"], max_width=curve["width"])
                if c["seed"] == curve["seed"] and c["width"] == curve["width"]]
    assert [v is None for v in fresh["dl_bits"]] == [v is None for v in curve["dl_bits"]]
    # Float32 sums in another order on another CPU (an AMD EPYC against the machine that
    # wrote the file) move these DLs by up to 3e-6 relative (2e-4 bits); 1e-5 still catches
    # any change of method, which moves them by far more.
    assert [v for v in fresh["dl_bits"] if v is not None] == pytest.approx(
        [v for v in curve["dl_bits"] if v is not None], rel=CROSS_MACHINE)
    alloc = next(a for a in stored["allocations"] if (a["width"], a["seed"]) == (curve["width"], curve["seed"]))
    redo = json.loads(json.dumps(compare_at_equal_mse(sae, x_test, epsilon=base.epsilon)))
    numbers = lambda d: {k: v for k, v in d.items() if isinstance(v, float)}  # noqa: E731
    assert numbers(redo["greedy"]) == pytest.approx(numbers(alloc["greedy"]), rel=CROSS_MACHINE)
    assert redo["greedy"]["started_from"] == alloc["greedy"]["started_from"]
    assert redo["swap_saving"] == pytest.approx(alloc["swap_saving"], rel=CROSS_MACHINE, abs=1e-6)


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


def test_side_by_side_tolerances_report_each_sae_on_a_line_prefixed_with_its_tolerance(tmp_path, monkeypatch, capsys):
    """With an executor of capacity 2 the tolerances run side by side: no progress bars (they
    would overwrite each other) but one line per event, naming the tolerance it belongs to."""
    import mdl_utils.epsilon_scan as scan_mod
    from mdl_utils.study_plan import study_settings

    calls = []

    def fake_study(settings, out_dir, *, progress, log, **kwargs):
        calls.append((settings.epsilon, progress, log is None))
        if log is not None:
            log(f"[mnist-mdl] width 64 seed 0 k=4: trained at {settings.epsilon}")

    monkeypatch.setattr(scan_mod, "run_study", fake_study)
    monkeypatch.setattr(scan_mod, "summarise_scan", lambda *a, **k: "summary")
    monkeypatch.setattr(scan_mod, "rewrite_study_summaries", lambda *a, **k: [])
    from types import SimpleNamespace

    dummy = SimpleNamespace(split=lambda name: np.zeros((1, 784)))  # only its dimension is read

    class TwoAtOnce:
        capacity = 2

    base = study_settings("quick")
    out = scan_mod.run_epsilon_scan(base, tmp_path, epsilons=[0.01, 0.03], executor=TwoAtOnce(), data=dummy)
    assert out == "summary"
    err = capsys.readouterr().err
    assert "[eps 0.01] [mnist-mdl] width 64 seed 0 k=4: trained at 0.01" in err
    assert "[eps 0.03] [mnist-mdl] width 64 seed 0 k=4: trained at 0.03" in err
    assert sorted(calls) == sorted([(e, False, False) for e in (0.01, 0.03)] * 2)  # two passes, no bars

    calls.clear()
    scan_mod.run_epsilon_scan(base, tmp_path, epsilons=[0.01], data=dummy)  # serial: the study's own bar
    assert calls == [(0.01, True, True), (0.01, True, True)]


def test_the_verdict_says_when_a_tie_set_is_only_so_far():
    """A tie set read while searches remain can still split or widen: it says so."""
    from mdl_utils.scan_results import ScanOptimum

    def opt(tie, resolved, provisional):
        return ScanOptimum(width=tie[0], dl_bits=1.0, seed_std=None, n_seeds=1, boot_ci=None, l0=1.0, k=1.0,
                           tie_set=tie, resolved=resolved, provisional=provisional)

    assert opt((128,), True, False).verdict == "resolved"
    assert opt((128,), False, True).verdict == "provisional"
    assert opt((128, 181), False, False).verdict == "tie set 128, 181"
    assert opt((362, 512), False, True).verdict == "tie set 362, 512 so far"


@pytest.mark.skipif(not (FULL_SCAN / "scan.json").is_file(), reason="no committed full scan")
def test_summary_only_rewrites_each_tolerances_summary_from_its_rows_keeping_the_runs_record(tmp_path):
    """The committed per-tolerance summaries are what their rows give today (rewriting changes
    no byte), and a stale one (a key missing, a number edited) is rewritten from the rows with
    the training run's provenance kept; chapter 3's study is not touched."""
    import shutil
    from mdl_utils.epsilon_scan import EPSILONS, rewrite_study_summaries
    from mdl_utils.study_plan import study_settings
    from mdl_utils.study_summary import summarise

    base = study_settings("full")
    out = tmp_path / "scan"
    folders = sorted(FULL_SCAN.glob("eps-*"))
    for folder in folders:
        shutil.copytree(folder / "rows", out / folder.name / "rows")
        shutil.copy(folder / "summary.json", out / folder.name / "summary.json")
    reference = tmp_path / "reference"
    reference.mkdir()
    written = rewrite_study_summaries(base, out, epsilons=EPSILONS, reference_dir=reference)
    assert sorted(p.parent.name for p in written) == [f.name for f in folders]
    for folder in folders:
        assert (out / folder.name / "summary.json").read_text() == (folder / "summary.json").read_text(), folder
    assert not any(reference.iterdir())
    # A stale summary: rewritten from its rows, the run's own record kept.
    path = out / folders[0].name / "summary.json"
    stale = json.loads(path.read_text())
    record = {k: stale[k] for k in ("machine", "date", "wall_time_s", "code_version")}
    del stale["widths_one_seed"]
    stale["n_saes_trained"] = -1
    path.write_text(json.dumps(stale, indent=2))
    rewrite_study_summaries(base, out, epsilons=EPSILONS, reference_dir=reference)
    again = json.loads(path.read_text())
    eps = float(folders[0].name.removeprefix("eps-"))
    expected = summarise(scan_settings(base, eps), load_rows(out / folders[0].name))
    assert {k: again[k] for k in expected} == json.loads(json.dumps(expected))
    assert {k: again[k] for k in record} == record
