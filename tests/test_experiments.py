"""Tests for mdl_utils.experiments: the committed chapter-3 results reproduce from what is stored,
and a tiny sweep runs end to end (resumably) on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdl_utils.data import load_mnist
from mdl_utils.experiments import (
    RESULTS_FORMAT_VERSION, SweepSettings, load_mnist_sweep, run_mnist_sweep, settings_for,
)
from mdl_utils.mdl import evaluate_mdl

REPO = Path(__file__).resolve().parents[1]
FULL = REPO / "results" / "full"


def test_profiles_sweep_the_widths_the_chapter_promises():
    full = settings_for("full")
    assert full.widths[0] <= 16 and full.widths[-1] >= 4096
    assert all(b == 2 * a for a, b in zip(full.widths, full.widths[1:]))
    assert full.n_train is None and full.n_test is None and full.epsilon == 0.015
    with pytest.raises(ValueError, match="unknown profile"):
        settings_for("medium")


def test_missing_results_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="mdl_utils.experiments --profile full"):
        load_mnist_sweep(tmp_path)


@pytest.mark.skipif(not (FULL / "mdl.json").is_file(), reason="no committed full results")
def test_committed_saes_reproduce_their_recorded_mse_and_dl(mnist_source_dir):
    payload, saes = load_mnist_sweep(FULL)
    assert payload["format_version"] == RESULTS_FORMAT_VERSION
    x_test, _ = load_mnist("test")
    x_test = x_test[: payload["settings"]["n_test"]]
    assert set(saes) == {"A", "B", "C", "D"}
    for name, sae in saes.items():
        stored = payload["points"][name]["stored"]
        again = evaluate_mdl(sae, x_test, epsilon=payload["epsilon"])
        assert again.bits == stored["bits"], name
        for field in ("mse", "mse_quantised", "dl_bits", "l0"):
            assert getattr(again, field) == pytest.approx(stored[field], rel=1e-6), (name, field)
    # The stored optimum (B) is within tolerance and has the smallest DL of the sweep.
    measured = [r for r in payload["rows"] if r["dl_bits"] is not None]
    best = min(measured, key=lambda r: r["dl_bits"])
    assert payload["points"]["B"]["width"] == best["width"] == payload["optimum_width"]
    assert payload["points"]["B"]["stored"]["mse_quantised"] <= payload["epsilon"]


def test_tiny_sweep_end_to_end_and_resumes_from_cache(tmp_path, monkeypatch, mnist_source_dir):
    settings = SweepSettings(n_train=600, n_test=200, widths=(32, 64), epsilon=0.05,
                             band_low=0.5, max_epochs=3, patience=2, max_trials=4, k_start=8.0,
                             batch_size=128)
    first = run_mnist_sweep(settings, tmp_path / "out", cache=tmp_path / "cache", progress=False)
    rows = first["rows"]
    assert [r["width"] for r in rows] == [32, 64]
    for r in rows:
        if r["dl_bits"] is not None:
            assert r["mse_quantised"] <= settings.epsilon and r["bits"] >= 1
            assert r["dl_bits"] <= r["upper_bound_bits"] + 1e-9
    second = run_mnist_sweep(settings, tmp_path / "out", cache=tmp_path / "cache", progress=False)
    assert second["rows"] == rows  # everything came from the cache: identical table
    on_disk = json.loads((tmp_path / "out" / "mdl.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rows))
    payload, saes = load_mnist_sweep(tmp_path / "out")
    assert set(saes) == set(payload["points"])
