"""Tests for mdl_utils.dl: quantisation, entropies, DL, bounds, effective precision, CLI.

Expected values are derived independently of the module: by hand, from closed-form entropies,
from scipy.stats.entropy, or with collections.Counter over the raw values.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mdl_utils import dl

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def binary_entropy_bits(p: float) -> float:
    """H_b(p) in bits, straight from the definition."""
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def counter_entropy_bits(column: np.ndarray) -> float:
    """Entropy of a column's empirical distribution, via collections.Counter."""
    n = len(column)
    return -sum(c / n * math.log2(c / n) for c in Counter(column.tolist()).values())


def sparse_latents(rng: np.random.Generator, n: int, d: int, rate: float = 0.1) -> np.ndarray:
    return ((rng.random((n, d)) < rate) * rng.exponential(1.0, (n, d))).astype(np.float32)


# --- hypothesis strategies ------------------------------------------------------------------

latent_value = st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e3))
latents = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12), elements=latent_value
)
small_codes = hnp.arrays(
    np.int64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=30),
    elements=st.one_of(st.just(0), st.integers(0, 6)),
)


# --- feature_entropies: exact values --------------------------------------------------------


@pytest.mark.parametrize("n_on, n", [(1, 2), (250, 1000), (3, 7), (1, 10_000), (0, 5), (5, 5)])
def test_bernoulli_feature_has_binary_entropy(n_on: int, n: int) -> None:
    column = np.zeros((n, 1), dtype=np.int64)
    column[:n_on] = 1
    assert dl.feature_entropies(column)[0] == pytest.approx(binary_entropy_bits(n_on / n), abs=1e-12)


def test_bernoulli_quarter_matches_textbook_value() -> None:
    column = np.array([[1], [0], [0], [0]])
    assert dl.feature_entropies(column)[0] == pytest.approx(0.8112781244591328, abs=1e-12)


def test_known_distributions_give_their_entropies_to_1e_9() -> None:
    # Column 0: P(0)=1/2, P(1)=1/4, P(2)=P(3)=1/8 -> 1.75 bits (by hand).
    col0 = [0] * 4 + [1] * 2 + [2] + [3]
    # Column 1: uniform over 8 values, 0 included -> 3 bits.
    col1 = list(range(8))
    codes = np.array([col0, col1]).T
    h = dl.feature_entropies(codes)
    assert h[0] == pytest.approx(1.75, abs=1e-9)
    assert h[1] == pytest.approx(3.0, abs=1e-9)
    # P(0)=0.1, P(5)=0.2, P(9)=0.7 over 10 samples (its own matrix: a different N).
    col2 = np.array([[0]] + [[5]] * 2 + [[9]] * 7)
    expected = -(0.1 * math.log2(0.1) + 0.2 * math.log2(0.2) + 0.7 * math.log2(0.7))
    assert dl.feature_entropies(col2)[0] == pytest.approx(expected, abs=1e-9)


def test_feature_entropies_match_scipy_on_random_codes() -> None:
    rng = np.random.default_rng(1)
    codes = np.where(rng.random((2000, 40)) < 0.2, rng.integers(1, 20, (2000, 40)), 0)
    expected = [
        scipy.stats.entropy(np.unique(codes[:, i], return_counts=True)[1], base=2) for i in range(40)
    ]
    np.testing.assert_allclose(dl.feature_entropies(codes), expected, atol=1e-9)


def test_feature_entropies_large_codes_use_the_sort_path_and_agree() -> None:
    # Codes near 2**53 make (feature, code) keys too large to combine in one int64.
    big = 2**53
    codes = np.array([[0, big], [big, big - 1], [big, 0], [1, big]], dtype=np.int64)
    expected = [counter_entropy_bits(codes[:, i]) for i in range(2)]
    np.testing.assert_allclose(dl.feature_entropies(codes), expected, atol=1e-12)


def test_permuting_samples_or_features_changes_nothing() -> None:
    rng = np.random.default_rng(2)
    codes = np.where(rng.random((500, 16)) < 0.15, rng.integers(1, 9, (500, 16)), 0)
    h = dl.feature_entropies(codes)
    rows, cols = rng.permutation(500), rng.permutation(16)
    np.testing.assert_allclose(dl.feature_entropies(codes[rows]), h, atol=1e-12)
    np.testing.assert_allclose(dl.feature_entropies(codes[:, cols]), h[cols], atol=1e-12)
    z = sparse_latents(rng, 500, 16)
    base = dl.description_length(z, bits=4).dl_bits
    assert dl.description_length(z[rows][:, cols], bits=4).dl_bits == pytest.approx(base, abs=1e-9)


@given(small_codes)
@FAST
def test_entropy_identity_binary_plus_conditional(codes: np.ndarray) -> None:
    """H(p_i) = H_b(f_i) + f_i * H(values | active), f_i the firing rate (issue 3)."""
    h = dl.feature_entropies(codes)
    for i in range(codes.shape[1]):
        column = codes[:, i]
        active = column[column != 0]
        rate = active.size / column.size
        conditional = counter_entropy_bits(active) if active.size else 0.0
        assert h[i] == pytest.approx(binary_entropy_bits(rate) + rate * conditional, abs=1e-9)


def test_inputs_of_every_kind_give_the_same_entropies() -> None:
    rng = np.random.default_rng(3)
    codes = np.where(rng.random((300, 12)) < 0.2, rng.integers(1, 5, (300, 12)), 0)
    expected = [counter_entropy_bits(codes[:, i]) for i in range(12)]
    variants = [
        codes.astype(np.uint8),
        np.asfortranarray(codes),
        codes.T.copy().T,
        torch.from_numpy(codes),
        torch.from_numpy(codes).to_sparse(),
        scipy.sparse.csr_array(codes),
        scipy.sparse.coo_matrix(codes),
    ]
    for variant in variants:
        np.testing.assert_allclose(dl.feature_entropies(variant), expected, atol=1e-12)


def test_sparse_explicit_zeros_are_zeros() -> None:
    m = scipy.sparse.coo_array(([0, 2, 3], ([0, 1, 2], [0, 0, 0])), shape=(4, 1))
    assert dl.feature_entropies(m)[0] == pytest.approx(1.5, abs=1e-12)  # {0: 1/2, 2: 1/4, 3: 1/4}


# --- quantize / dequantize ------------------------------------------------------------------


def test_step_bins_are_left_open_right_closed() -> None:
    z = np.array([[0.5, 0.0], [0.5000001, 0.1], [1.0, 1.49], [0.0, 1.5]])
    np.testing.assert_array_equal(dl.quantize(z, step=0.5), [[1, 0], [2, 1], [2, 3], [0, 3]])


def test_bits_bins_span_each_features_own_range() -> None:
    # Feature 0 max 1 -> width 0.25 at 2 bits; feature 1 max 8 -> width 2.
    z = np.array([[0.25, 8.0], [0.26, 2.0], [1.0, 0.0], [0.0, 2.1]])
    np.testing.assert_array_equal(dl.quantize(z, bits=2), [[1, 4], [2, 1], [4, 0], [0, 2]])
    np.testing.assert_allclose(dl.bin_widths(z, bits=2), [0.25, 2.0])
    np.testing.assert_allclose(
        dl.dequantize(dl.quantize(z, bits=2), dl.bin_widths(z, bits=2)),
        [[0.125, 7.0], [0.375, 1.0], [0.875, 0.0], [0.0, 3.0]],
    )


def test_quantize_keeps_input_kind() -> None:
    z = np.array([[0.0, 1.0], [2.0, 0.0]], dtype=np.float32)
    expected = [[0, 1], [2, 0]]
    np.testing.assert_array_equal(dl.quantize(torch.from_numpy(z), step=1.0), expected)
    sparse_codes = dl.quantize(scipy.sparse.csr_array(z), step=1.0)
    assert scipy.sparse.issparse(sparse_codes)
    np.testing.assert_array_equal(sparse_codes.toarray(), expected)
    assert dl.quantize(torch.from_numpy(z).to(torch.bfloat16), step=1.0).tolist() == expected


@given(latents, st.integers(1, 16))
@FAST
def test_quantize_bits_properties(z: np.ndarray, bits: int) -> None:
    codes = dl.quantize(z, bits=bits)
    widths = dl.bin_widths(z, bits=bits)
    assert codes.shape == z.shape
    np.testing.assert_array_equal(codes == 0, z == 0)  # zero is its own symbol, and only zero
    assert codes.min() >= 0 and codes.max() <= 2**bits
    for i in range(z.shape[1]):
        nonzero = z[:, i] != 0
        if not nonzero.any():
            continue
        assert widths[i] == pytest.approx(z[:, i].max() / 2**bits, rel=1e-15)
        assert codes[:, i].max() == 2**bits  # the maximum lands in the top bin
        k, v, w = codes[nonzero, i], z[nonzero, i], widths[i]
        assert np.all((k - 1) * w <= v * (1 + 1e-12)) and np.all(v <= k * w * (1 + 1e-12))
        order = np.argsort(v, kind="stable")
        assert np.all(np.diff(k[order]) >= 0)  # monotone within a feature
    centres = dl.dequantize(codes, widths)
    assert np.all(centres[z == 0] == 0)
    assert np.all(np.abs(centres - z) <= widths / 2 * (1 + 1e-9) + 1e-300)


@given(latents, st.floats(min_value=1e-3, max_value=100.0))
@FAST
def test_quantize_step_properties_and_requantising_centres_is_identity(z: np.ndarray, step: float) -> None:
    codes = dl.quantize(z, step=step)
    np.testing.assert_array_equal(codes == 0, z == 0)
    nonzero = z != 0
    expected = np.ceil(z[nonzero] / step)  # bins (0, s], (s, 2s], ...
    np.testing.assert_array_equal(codes[nonzero], np.maximum(expected, 1))
    centres = dl.dequantize(codes, step)
    assert np.all(np.abs(centres - z) <= step / 2 * (1 + 1e-9))
    np.testing.assert_array_equal(dl.quantize(centres, step=step), codes)


# --- description_length and the bounds -------------------------------------------------------


def test_description_length_sums_counter_entropies_and_carries_l0_and_bound() -> None:
    rng = np.random.default_rng(4)
    z = sparse_latents(rng, 800, 10, rate=0.2)
    result = dl.description_length(z, bits=3)
    codes = dl.quantize(z, bits=3)
    expected = [counter_entropy_bits(codes[:, i]) for i in range(10)]
    np.testing.assert_allclose(result.feature_bits, expected, atol=1e-9)
    assert result.dl_bits == pytest.approx(sum(expected), abs=1e-9)
    assert result.l0 == np.count_nonzero(z) / 800
    assert (result.width, result.n_samples, result.bits, result.step) == (10, 800, 3, None)
    assert result.upper_bound_bits == pytest.approx(result.l0 * (3 + math.log2(10)))


def test_description_length_step_mode_bits_per_value() -> None:
    z = np.array([[0.0, 0.3], [2.9, 0.0], [1.0, 0.05]])  # codes up to ceil(2.9/0.1)=29 -> 5 bits
    result = dl.description_length(z, step=0.1)
    assert result.bits_per_value == 5.0 and result.step == 0.1 and result.bits is None
    assert dl.description_length(np.zeros((3, 2)), step=0.1).dl_bits == 0.0


def test_two_value_feature_dl_by_hand() -> None:
    # 4 samples, 1 feature: values 0, 0, 0.2, 0.9 at step 0.5 -> codes 0,0,1,2 -> 1.5 bits.
    result = dl.description_length(np.array([[0.0], [0.0], [0.2], [0.9]]), step=0.5)
    assert result.dl_bits == pytest.approx(1.5, abs=1e-12)
    assert result.l0 == 0.5


def test_dl_upper_bound_reproduces_the_papers_gpt2_number() -> None:
    assert dl.dl_upper_bound(65, 25_000, 7) == pytest.approx(1404.6, abs=0.05)
    assert dl.dl_upper_bound(65, 25_000, 7) == pytest.approx(65 * (7 + math.log(25_000) / math.log(2)))
    assert round(dl.dl_upper_bound(65, 25_000, 7)) == 1405


def test_dense_dl_reproduces_the_papers_gpt2_baseline() -> None:
    assert dl.dense_dl(768, 7) == 5376


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: dl.dl_upper_bound(-1, 10, 7), "l0"),
        (lambda: dl.dl_upper_bound(1, 0, 7), "width"),
        (lambda: dl.dl_upper_bound(1, 10, -1), "bits_per_value"),
        (lambda: dl.dense_dl(0, 7), "d must"),
        (lambda: dl.dense_dl(10, float("nan")), "bits_per_value"),
    ],
)
def test_bounds_reject_bad_arguments(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --- bad input ------------------------------------------------------------------------------

GOOD = np.array([[0.0, 1.0], [2.0, 0.5]])


@pytest.mark.parametrize(
    "z, kwargs, match",
    [
        (np.array([[0.0, np.nan]]), {"bits": 4}, "NaN"),
        (np.array([[0.0, np.inf]]), {"bits": 4}, "infinite"),
        (np.array([[0.0, -np.inf]]), {"bits": 4}, "infinite"),
        (np.array([[0.0, -0.5]]), {"bits": 4}, "non-negative"),
        (np.ones(3), {"bits": 4}, "2-D"),
        (np.ones((2, 2, 2)), {"bits": 4}, "2-D"),
        (np.zeros((0, 4)), {"bits": 4}, "empty"),
        (np.zeros((4, 0)), {"bits": 4}, "empty"),
        (np.array([["a"]]), {"bits": 4}, "real numbers"),
        (GOOD, {"bits": 0}, "bits must be between"),
        (GOOD, {"bits": 53}, "bits must be between"),
        (GOOD, {"bits": "3"}, "bits must be a number"),
        (GOOD, {"bits": float("nan")}, "bits must be between"),
        (GOOD, {"step": 0.0}, "step"),
        (GOOD, {"step": -1.0}, "step"),
        (GOOD, {"step": float("inf")}, "step"),
        (GOOD, {"bits": 4, "step": 0.1}, "exactly one"),
        (GOOD, {}, "exactly one"),
        (GOOD, {"step": 1e-300}, "too small"),
        (scipy.sparse.csr_array(np.array([[0.0, np.nan]])), {"bits": 4}, "NaN"),
        (torch.tensor([[0.0, -1.0]]), {"bits": 4}, "non-negative"),
    ],
)
def test_bad_latents_and_precisions_raise_value_error_naming_the_problem(z, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        dl.quantize(z, **kwargs)
    with pytest.raises(ValueError, match=match):
        dl.description_length(z, **kwargs)


@pytest.mark.parametrize(
    "codes, match",
    [
        (np.array([[0.5, 1.0]]), "integer"),
        (np.array([[0, -1]]), "non-negative"),
        (np.array([0, 1]), "2-D"),
        (np.zeros((0, 3), dtype=int), "empty"),
        (np.array([[2**63]], dtype=np.uint64), "2\\*\\*63"),
    ],
)
def test_bad_codes_raise_value_error(codes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dl.feature_entropies(codes)


def test_dequantize_rejects_mismatched_widths() -> None:
    with pytest.raises(ValueError, match="one entry per feature"):
        dl.dequantize(np.array([[1, 2]]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="finite and non-negative"):
        dl.dequantize(np.array([[1, 2]]), -1.0)


# --- effective_precision --------------------------------------------------------------------

# Identity decoder on a matrix whose non-zeros all equal their feature's maximum (1.0): at b
# bits the top bin's centre is 1 - 2**-(b+1), so MSE(b) = (5/8) * 4**-(b+1) by hand.
Z_TOP = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])


def hand_mse(bits: int) -> float:
    return 5 / 8 * 4.0 ** -(bits + 1)


def test_effective_precision_absolute_picks_coarsest_passing_bits() -> None:
    result = dl.effective_precision(Z_TOP, lambda z: z, Z_TOP, tolerance=hand_mse(5) * 1.000001)
    assert result.bits == 5 and result.step is None
    assert result.mse == pytest.approx(hand_mse(5), rel=1e-12)
    assert result.mse_unquantised == 0.0
    assert [b for b, _ in result.tried] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([m for _, m in result.tried], [hand_mse(b) for b in range(1, 6)], rtol=1e-12)


def test_effective_precision_increase_mode_adds_to_unquantised_mse() -> None:
    # Noise only where z is zero: zeros stay exactly zero, so the errors add.
    noise = np.array([[0.0, 0.1], [0.0, 0.0], [0.2, 0.0], [0.0, -0.1]])
    x = Z_TOP + noise
    raw = float(np.mean(noise**2))
    result = dl.effective_precision(
        Z_TOP, lambda z: z, x, tolerance=hand_mse(3) * 1.000001, mode="increase"
    )
    assert result.bits == 3
    assert result.mse_unquantised == pytest.approx(raw, rel=1e-12)
    assert result.mse == pytest.approx(raw + hand_mse(3), rel=1e-12)
    assert result.mse_ceiling == pytest.approx(raw + hand_mse(3) * 1.000001, rel=1e-12)


def test_effective_precision_step_search_goes_coarse_to_fine() -> None:
    # One value 0.9: step 1 -> centre 0.5 (err 0.4); step 0.5 -> 0.75 (0.15); 0.25 -> 0.875 (0.025).
    z = np.array([[0.9], [0.0]])
    result = dl.effective_precision(
        z, lambda q: q, z, tolerance=0.03**2 / 2, search="step", candidates=[0.25, 1.0, 0.5]
    )
    assert result.step == 0.25 and result.bits is None
    assert [s for s, _ in result.tried] == [1.0, 0.5, 0.25]
    np.testing.assert_allclose([m for _, m in result.tried], [0.4**2 / 2, 0.15**2 / 2, 0.025**2 / 2])


def test_effective_precision_with_torch_decoder_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    z = sparse_latents(rng, 300, 24, rate=0.2).astype(np.float64)
    w = rng.normal(size=(24, 16))
    x = z @ w + rng.normal(scale=0.01, size=(300, 16))
    linear = torch.nn.Linear(24, 16, bias=False, dtype=torch.float64)
    linear.weight.data = torch.from_numpy(w.T.copy())

    # Second method: brute force over bits with numpy, the loss computed by hand.
    def mse_at(bits: int) -> float:
        widths = z.max(axis=0) / 2**bits
        codes = np.where(z > 0, np.clip(np.ceil(z / np.where(widths > 0, widths, 1)), 1, 2**bits), 0)
        zq = np.where(codes > 0, (codes - 0.5) * widths, 0.0)
        return float(np.mean((zq @ w - x) ** 2))

    raw = float(np.mean((z @ w - x) ** 2))
    expected = next(b for b in range(1, 17) if mse_at(b) <= raw + 1e-3)
    result = dl.effective_precision(
        torch.from_numpy(z), linear, torch.from_numpy(x), tolerance=1e-3, mode="increase"
    )
    assert result.bits == expected
    assert result.mse == pytest.approx(mse_at(expected), rel=1e-9)
    numpy_result = dl.effective_precision(z, lambda q: q @ w, x, tolerance=1e-3, mode="increase")
    assert numpy_result.bits == expected


def test_effective_precision_errors() -> None:
    with pytest.raises(ValueError, match="already have MSE"):
        dl.effective_precision(Z_TOP, lambda z: z, Z_TOP + 1.0, tolerance=0.5)
    with pytest.raises(ValueError, match="no candidate precision meets"):
        dl.effective_precision(Z_TOP, lambda z: z, Z_TOP, tolerance=1e-12, candidates=[1, 2])
    with pytest.raises(ValueError, match="tolerance"):
        dl.effective_precision(Z_TOP, lambda z: z, Z_TOP, tolerance=0.0)
    with pytest.raises(ValueError, match="mode"):
        dl.effective_precision(Z_TOP, lambda z: z, Z_TOP, tolerance=0.1, mode="relative")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        dl.effective_precision(Z_TOP, lambda z: z[:, :1], Z_TOP, tolerance=0.1)
    with pytest.raises(ValueError, match="integers"):
        dl.effective_precision(Z_TOP, lambda z: z, Z_TOP, tolerance=0.1, candidates=[1.5])


# --- command line ---------------------------------------------------------------------------


@pytest.fixture
def latent_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    z = sparse_latents(np.random.default_rng(6), 400, 20, rate=0.15)
    path = tmp_path / "z.npy"
    np.save(path, z)
    return path, z


def test_cli_json_reports_dl_bound_dense_and_exact_round_trip(latent_file, capsys) -> None:
    path, z = latent_file
    assert dl.main([str(path), "--bits", "6", "--json", "--input-dim", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = dl.description_length(z, bits=6)
    assert out["dl_bits_per_sample"] == pytest.approx(expected.dl_bits, abs=1e-9)
    assert out["l0"] == pytest.approx(np.count_nonzero(z) / 400)
    assert out["width"] == 20 and out["n_samples"] == 400
    assert out["upper_bound_bits_per_sample"] == pytest.approx(out["l0"] * (6 + math.log2(20)))
    assert out["dense_bits_per_sample"] == 60.0
    assert out["coded"]["round_trip_exact"] is True
    assert out["coded"]["payload_bits"] >= out["coded"]["payload_bits_per_sample"]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_cli_reads_torch_and_safetensors(tmp_path: Path, latent_file, suffix: str, capsys) -> None:
    _, z = latent_file
    path = tmp_path / f"z{suffix}"
    if suffix == ".pt":
        torch.save(torch.from_numpy(z), path)
    else:
        from safetensors.torch import save_file

        save_file({"latents": torch.from_numpy(z)}, str(path))
    assert dl.main([str(path), "--step", "0.25", "--no-code"]) == 0
    text = capsys.readouterr().out
    expected = dl.description_length(z, step=0.25).dl_bits
    assert f"description length: {expected:.3f} bits/sample" in text
    assert "coded size" not in text


def _write_bad(tmp_path: Path, kind: str) -> Path:
    if kind == "nan":
        np.save(tmp_path / "bad.npy", np.array([[0.0, np.nan]]))
        return tmp_path / "bad.npy"
    if kind == "one_d":
        np.save(tmp_path / "bad.npy", np.ones(5))
        return tmp_path / "bad.npy"
    if kind == "garbage_pt":
        (tmp_path / "bad.pt").write_bytes(b"this is not a torch file")
        return tmp_path / "bad.pt"
    if kind == "two_tensors":
        torch.save({"a": torch.ones(2, 2), "b": torch.ones(2, 2)}, tmp_path / "bad.pt")
        return tmp_path / "bad.pt"
    if kind == "not_tensor":
        torch.save([1, 2, 3], tmp_path / "bad.pt")
        return tmp_path / "bad.pt"
    if kind == "suffix":
        (tmp_path / "bad.csv").write_text("1,2\n")
        return tmp_path / "bad.csv"
    return tmp_path / "missing.npy"


@pytest.mark.parametrize(
    "kind, match",
    [
        ("nan", "NaN"),
        ("one_d", "2-D"),
        ("garbage_pt", "not a readable"),
        ("two_tensors", "--key"),
        ("not_tensor", "not a latent matrix"),
        ("suffix", "unknown file type"),
        ("missing", "no such file"),
    ],
)
def test_cli_bad_files_print_a_message_and_fail(tmp_path: Path, kind: str, match: str, capsys) -> None:
    path = _write_bad(tmp_path, kind)
    assert dl.main([str(path), "--bits", "4"]) != 0
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_cli_bad_options_fail(latent_file, capsys) -> None:
    path, _ = latent_file
    assert dl.main([str(path), "--bits", "4", "--step", "0.1"]) != 0
    assert dl.main([str(path)]) != 0
    assert dl.main([str(path), "--bits", "0"]) != 0
    assert "bits must be between" in capsys.readouterr().err


def test_cli_module_entry_point(latent_file) -> None:
    path, z = latent_file
    ok = subprocess.run(
        [sys.executable, "-m", "mdl_utils", "dl", str(path), "--bits", "5"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"{dl.description_length(z, bits=5).dl_bits:.3f} bits/sample" in ok.stdout
    assert "round trip exact" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mdl_utils", "dl", str(path), "--step", "-1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert bad.returncode != 0 and "step" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int16, np.float32, np.float16, np.int64, np.float64, bool])
@pytest.mark.parametrize("shape", [(3, 3), (1, 1), (7, 5), (2, 8)])
def test_nonzero_scan_matches_numpy_for_every_width_and_odd_sizes(dtype, shape) -> None:
    # Entries narrower than 8 bytes are screened 8 bytes at a time; sizes that do not fill the
    # last word exercise the tail.
    rng = np.random.default_rng(7)
    codes = (rng.random(shape) < 0.4) * rng.integers(1, 100, shape)
    codes = codes.astype(dtype)
    expected = [counter_entropy_bits(codes[:, i]) for i in range(shape[1])]
    if codes.dtype.kind == "f":  # integer-valued floats: step 1 maps each value to itself
        got = dl.description_length(codes, step=1.0).feature_bits
    else:
        got = dl.feature_entropies(codes)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_negative_zero_is_zero() -> None:
    z = np.array([[-0.0, 1.0], [0.5, -0.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(dl.quantize(z, step=1.0), [[0, 1], [1, 0], [0, 0]])
    assert dl.description_length(z, step=1.0).l0 == pytest.approx(2 / 3)


def test_effective_precision_hands_sparse_latents_to_decode_as_sparse() -> None:
    seen = []

    def decode(q):
        seen.append(scipy.sparse.issparse(q))
        return q.toarray() if scipy.sparse.issparse(q) else q

    result = dl.effective_precision(
        scipy.sparse.csr_array(Z_TOP), decode, Z_TOP, tolerance=hand_mse(2) * 1.000001
    )
    assert result.bits == 2 and all(seen)
