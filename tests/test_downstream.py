"""Tests for the downstream-tolerance machinery: mdl_utils.dl.effective_precision_for_loss,
mdl_utils.downstream (the search over k, the evaluation, a miniature end-to-end run), and the
committed full-profile results recomputed from their weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mdl_utils import dl
from mdl_utils.downstream import (
    DownstreamSettings,
    activation_data,
    evaluate_downstream,
    evaluate_mse,
    load_downstream,
    precision_curve,
    run_downstream,
    sae_reconstruction,
    search_k,
)
from mdl_utils.mdl import decoder_fn, evaluate_mdl
from mdl_utils.models import ClassifierConfig, MLPClassifier, hidden_activations, splice_loss

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "full" / "downstream"


# --- effective_precision_for_loss -------------------------------------------------------------


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


# --- search_k ---------------------------------------------------------------------------------


def test_search_k_hits_the_band_of_a_power_law_and_counts_its_trials():
    calls = []

    def loss(k: float) -> float:
        calls.append(k)
        return 0.5 / k  # band [0.009, 0.01] <=> k in [50, 55.6]

    result = search_k(loss, width=1000, epsilon=0.01, band_low=0.9, k_start=4)
    assert result["status"] == "hit" and 50 <= result["k"] <= 55.6
    assert result["loss"] == pytest.approx(0.5 / result["k"])
    assert result["n_trials"] == len(calls) == len(result["tried"]) <= 6


def test_search_k_handles_losses_that_reach_zero_or_below():
    result = search_k(lambda k: 0.05 - 0.001 * k, width=200, epsilon=0.01, k_start=100, max_trials=10)
    assert result["status"] == "hit" and 40 <= result["k"] <= 41  # band [0.009, 0.01]


def test_search_k_reports_unreachable_and_below_band():
    unreachable = search_k(lambda k: 1.0, width=32, epsilon=0.01, k_start=8)
    assert unreachable["status"] == "unreachable" and unreachable["k"] is None
    assert unreachable["tried"][-1][0] == 32
    below = search_k(lambda k: 1e-6, width=32, epsilon=0.01, k_start=8)
    assert below["status"] == "below_band" and below["k"] == 1.0


def test_search_k_that_runs_out_of_trials_keeps_the_smallest_k_meeting_the_tolerance():
    # Loss 1/k meets 0.01 only from k = 100; an unbracketed step is capped at 4x, so two
    # trials (k = 1, then 4) meet nothing: no k is kept.
    result = search_k(lambda k: 1.0 / k, width=10_000, epsilon=0.01, band_low=0.999, k_start=1, max_trials=2)
    assert result["status"] == "not_converged" and result["k"] is None
    assert [k for k, _ in result["tried"]] == [1.0, 4.0]
    # With enough trials to pass k = 100 but a band too narrow to hit on the rounding grid,
    # the smallest tried k that meets the tolerance is kept.
    longer = search_k(lambda k: 1.0 / k, width=10_000, epsilon=0.01, band_low=0.999, k_start=1, max_trials=5)
    meeting = [k for k, loss in longer["tried"] if loss <= 0.01]
    if longer["status"] == "not_converged":
        assert longer["k"] == min(meeting) and 1.0 / longer["k"] <= 0.01
    else:
        assert longer["status"] == "hit" and 100 <= longer["k"] <= 100.1
    with pytest.raises(ValueError, match="epsilon"):
        search_k(lambda k: 1.0, width=8, epsilon=0.0)
    with pytest.raises(ValueError, match="k_min"):
        search_k(lambda k: 1.0, width=8, epsilon=0.1, k_min=9)


# --- evaluate_downstream ----------------------------------------------------------------------


def test_identity_sae_splice_costs_nothing_and_its_dl_is_that_of_the_activations(identity_sae):
    model = MLPClassifier((256, 64), seed=0)
    rng = np.random.default_rng(0)
    h = hidden_activations(model, rng.random((300, 784), dtype=np.float32))
    y = rng.integers(0, 10, 300)
    sae = identity_sae(256)
    assert np.array_equal(sae_reconstruction(sae, h), h)
    assert splice_loss(model, h, sae_reconstruction(sae, h), y).ce_increase == 0.0
    result = evaluate_downstream(sae, model, h, y, epsilon=0.01)
    assert result.ce_increase == 0.0 and result.mse == 0.0
    assert result.ce_increase_quantised <= 0.01
    # Second method: the coarsest bits whose quantised splice meets the ceiling, by brute force.
    def increase_at(bits: int) -> float:
        hq = dl.dequantize(dl.quantize(h, bits=bits), dl.bin_widths(h, bits=bits))
        return splice_loss(model, h, np.asarray(hq, dtype=np.float32), y).ce_increase

    expected = next(b for b in range(1, 17) if increase_at(b) <= 0.01)
    assert result.bits == expected
    assert result.dl_bits == pytest.approx(dl.description_length(h, bits=expected).dl_bits, rel=1e-12)
    assert result.l0 == pytest.approx(float((h > 0).sum(axis=1).mean()))
    curve = precision_curve(sae, model, h, y, bits=[expected, expected + 1])
    assert curve["bits"] == [expected, expected + 1]
    assert curve["ce_increase"][0] == pytest.approx(increase_at(expected), abs=1e-12)
    assert curve["dl_bits"][0] == pytest.approx(result.dl_bits, rel=1e-12)
    assert curve["dl_bits"][0] <= curve["dl_bits"][1]  # finer bins nest in coarser ones


def test_a_quantisation_budget_bounds_the_added_loss_not_the_total(identity_sae):
    rng = np.random.default_rng(1)
    h = (rng.random((400, 16)) * (rng.random((400, 16)) < 0.4)).astype(np.float32)
    sae = identity_sae(16)
    with torch.no_grad():  # a lossy SAE: drop the last feature's decoder row
        sae.W_dec_FD[15] = 0.0
    raw = float(np.mean((sae_reconstruction(sae, h) - h) ** 2))
    result = evaluate_mse(sae, h, epsilon=1.0, budget=1e-4)
    expected = dl.effective_precision(
        h, decoder_fn(sae), h, tolerance=1e-4, mode="increase"
    )
    assert result.mse == pytest.approx(raw) and result.bits == expected.bits
    assert raw < result.mse_quantised <= raw + 1e-4
    assert evaluate_mse(sae, h, epsilon=1.0).to_dict() == evaluate_mdl(sae, h, epsilon=1.0).to_dict()
    with pytest.raises(ValueError, match="above the tolerance"):
        evaluate_mse(sae, h, epsilon=raw / 2, budget=1e-4)


def test_activation_data_holds_the_classifier_activations_of_the_first_digits(tmp_path, mnist_source_dir):
    from mdl_utils.data import load_mnist

    model = MLPClassifier((256,), seed=0)
    data, y = activation_data(model, 200, 50, tmp_path)
    assert len(data.train) + len(data.val) == 200 and data.val.shape[1] == 256
    x_test, y_test = load_mnist("test")
    assert np.array_equal(data.test, hidden_activations(model, x_test[:50]))
    assert np.array_equal(y, y_test[:50])


# --- end to end, in miniature -----------------------------------------------------------------


def test_run_downstream_in_miniature_writes_results_that_reload_and_reproduce(tmp_path, mnist_source_dir):
    torch.set_num_threads(1)
    settings = DownstreamSettings(
        n_train=1000, n_test=300, widths=(8, 32),
        classifier=ClassifierConfig(hidden=(32,), epochs=1, n_train=3000),
        epsilon_ce=0.5, max_epochs=3, patience=2, batch_size=128, max_trials=3, k_start=4.0,
    )
    payload = run_downstream(settings, tmp_path / "out", cache=tmp_path / "cache", progress=False)
    assert [r["width"] for r in payload["ce_rows"]] == [8, 32] == [r["width"] for r in payload["mse_rows"]]
    measured_ce = [r for r in payload["ce_rows"] if r["dl_bits"] is not None]
    assert measured_ce and all(r["ce_increase_quantised"] <= 0.5 for r in measured_ce)
    q = settings.quantisation_share
    assert all(r["ce_increase"] <= (1 - q) * 0.5 for r in measured_ce)
    assert all(r["ce_increase_quantised"] <= r["ce_increase"] + q * 0.5 + 1e-12 for r in measured_ce)
    median = float(np.median([r["mse"] for r in measured_ce]))
    assert payload["epsilon_mse"] == pytest.approx(median / (1 - q), rel=1e-2)
    for r in payload["mse_rows"]:
        if r["dl_bits"] is not None:
            assert r["mse"] <= (1 - q) * payload["epsilon_mse"] and r["mse_quantised"] <= payload["epsilon_mse"]
    again, model, saes = load_downstream(tmp_path / "out")
    assert again == json.loads((tmp_path / "out" / "downstream.json").read_text())
    data, y = activation_data(model, settings.n_train, settings.n_test, tmp_path / "acts")
    stored = payload["optima"]["ce"]["stored"]
    recomputed = evaluate_downstream(saes["ce"], model, data.test, y, epsilon=settings.epsilon_ce,
                                     budget=q * settings.epsilon_ce)
    assert recomputed.to_dict() == pytest.approx(stored)
    with pytest.raises(FileNotFoundError, match="mdl_utils.downstream"):
        load_downstream(tmp_path / "missing")


# --- the committed full-profile results -------------------------------------------------------


def test_committed_optima_reproduce_their_spliced_cross_entropy_and_dl(mnist_source_dir):
    if not (COMMITTED / "downstream.json").is_file():
        pytest.skip("no committed full-profile results (python -m mdl_utils.downstream --profile full)")
    from mdl_utils.data import load_mnist

    payload, model, saes = load_downstream(COMMITTED)
    x_test, y_test = load_mnist("test")
    n_test = payload["settings"]["n_test"]
    x_test, y_test = (x_test[:n_test], y_test[:n_test]) if n_test else (x_test, y_test)
    h = hidden_activations(model, x_test)
    ce = payload["optima"]["ce"]
    q = payload["settings"]["quantisation_share"]
    result = evaluate_downstream(saes["ce"], model, h, y_test, epsilon=payload["epsilon_ce"],
                                 budget=q * payload["epsilon_ce"])
    # float32 sums over 10,000 digits: the last digits depend on how torch splits the work over
    # threads (the committed run and a test process may use different counts), so 1e-6 relative.
    assert result.ce_increase == pytest.approx(ce["stored"]["ce_increase"], rel=1e-6)
    assert result.ce_increase_quantised <= payload["epsilon_ce"]
    assert result.bits == ce["stored"]["bits"]
    assert result.dl_bits == pytest.approx(ce["stored"]["dl_bits"], rel=1e-9)
    mse = payload["optima"]["mse"]
    result = evaluate_mse(saes["mse"], h, epsilon=payload["epsilon_mse"], budget=q * payload["epsilon_mse"])
    assert result.mse_quantised <= payload["epsilon_mse"]
    assert result.bits == mse["stored"]["bits"]
    assert result.dl_bits == pytest.approx(mse["stored"]["dl_bits"], rel=1e-9)
    spliced = splice_loss(model, h, sae_reconstruction(saes["mse"], h), y_test)
    assert spliced.ce_increase == pytest.approx(mse["stored"]["ce_increase"], rel=1e-6)
