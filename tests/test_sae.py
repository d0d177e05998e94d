"""Tests for mdl_utils.sae: the BatchTopK dictionary (shape checks, selection, I/O)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdl_utils.sae import BatchTopKSAE, batch_topk, n_kept

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "d_in, width, k, message",
    [
        (10, 8, 9, "larger than the SAE's width"),
        (10, 8, 0.0, "must be positive"),
        (10, 8, -1.0, "must be positive"),
        (10, 0, 1, "width must be at least 1"),
        (0, 8, 1, "d_in must be at least 1"),
        (10, 8, float("nan"), "finite"),
    ],
)
def test_invalid_shapes_raise_value_error_naming_the_problem(d_in, width, k, message):
    with pytest.raises(ValueError, match=message):
        BatchTopKSAE(d_in, width, k)


def test_init_unit_norm_decoder_rows_and_encoder_equals_decoder():
    sae = BatchTopKSAE(7, 12, 3, seed=0)
    norms = sae.W_dec_FD.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones(12), atol=1e-6)
    # the encoder matrix (D x F) is the decoder's (F x D) transpose: same rows per feature
    assert torch.equal(sae.W_enc_FD.detach(), sae.W_dec_FD.detach())
    assert sae.W_enc_FD.data_ptr() != sae.W_dec_FD.data_ptr()
    assert not sae.has_threshold


def test_n_kept_rounds_k_times_batch_half_up():
    assert n_kept(2.5, 3) == 8  # 7.5 rounds up
    assert n_kept(1.25, 4) == 5
    assert n_kept(16, 1024) == 16384
    assert n_kept(1.3, 10) == 13


@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(1, 12),
    width=st.integers(1, 10),
    k_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    bound_frac=st.floats(0.0, 1.2),
)
def test_batch_topk_selects_exactly_the_largest_round_kB_entries(n_rows, width, k_frac, seed, bound_frac):
    k = 1.0 + k_frac * (width - 1)
    rng = np.random.default_rng(seed)
    pre = rng.permutation(n_rows * width).reshape(n_rows, width).astype(np.float32) + 1.0  # distinct, > 0
    n_keep = int(np.floor(k * n_rows + 0.5))
    expected = set(np.argsort(-pre.ravel())[:n_keep].tolist())  # independent: a full numpy sort
    lower = float(bound_frac * np.sort(pre.ravel())[::-1][n_keep - 1])
    rows, cols, vals = batch_topk(torch.from_numpy(pre), k, lower_bound=lower)
    flat = (rows * width + cols).tolist()
    assert len(flat) == n_keep
    assert set(flat) == expected
    assert flat == sorted(flat)  # row-major order
    assert np.array_equal(vals.numpy(), pre.ravel()[flat])


def _numpy_encode(sae: BatchTopKSAE, x: np.ndarray, threshold: float) -> np.ndarray:
    W_enc = sae.W_enc_FD.detach().double().numpy()
    pre = (x - sae.b_dec_D.detach().double().numpy()) @ W_enc.T + sae.b_enc_F.detach().double().numpy()
    pre = np.maximum(pre, 0)
    return np.where(pre > threshold, pre, 0.0)


def test_encode_with_threshold_and_decode_match_the_formulas():
    torch.manual_seed(0)
    sae = BatchTopKSAE(6, 9, 2, seed=3)
    with torch.no_grad():
        sae.b_dec_D.normal_()
        sae.b_enc_F.normal_(0, 0.3)
        sae.threshold.fill_(0.4)
    x = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    acts = sae.encode(torch.from_numpy(x)).detach().numpy()
    expected = _numpy_encode(sae, x.astype(np.float64), 0.4)
    assert np.allclose(acts, expected, atol=1e-5)
    assert ((acts > 0) == (expected > 0)).all()
    x_hat = sae.decode(torch.from_numpy(acts)).detach().numpy()
    expected_hat = expected @ sae.W_dec_FD.detach().double().numpy() + sae.b_dec_D.detach().double().numpy()
    assert np.allclose(x_hat, expected_hat, atol=1e-5)
    # forward = decode(encode(x)) computed with the sparse decoder
    assert np.allclose(sae(torch.from_numpy(x)).detach().numpy(), expected_hat, atol=1e-5)


def test_untrained_sae_encodes_with_batch_topk():
    sae = BatchTopKSAE(5, 8, 2, seed=0)
    x = torch.rand(10, 5)
    acts = sae.encode(x)
    assert int((acts != 0).sum()) <= 20
    pre = sae.pre_activations(x).detach()
    expected = set(torch.topk(pre.flatten(), 20).indices.tolist())
    nz = set(torch.nonzero(acts.flatten() != 0).squeeze(1).tolist())
    assert nz <= expected


def test_encode_rejects_bad_inputs_by_name():
    sae = BatchTopKSAE(5, 8, 2, seed=0)
    with pytest.raises(ValueError, match="dimension 4 but the SAE expects d_in=5"):
        sae.encode(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        sae.encode(torch.tensor([[0.0, float("nan"), 0, 0, 0]]))
    with pytest.raises(ValueError, match="empty"):
        sae.encode(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="width=8"):
        sae.decode(torch.zeros(3, 7))


def test_save_load_gives_bit_identical_outputs(tmp_path):
    sae = BatchTopKSAE(6, 10, 2.5, seed=4)
    with torch.no_grad():
        sae.b_dec_D.normal_()
        sae.threshold.fill_(0.123)
    sae.metadata = {"note": "test", "mse": 0.5}
    weights, meta = sae.save(tmp_path / "sub" / "model")
    assert weights.name == "model.safetensors" and meta.name == "model.json"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temp files left
    loaded = BatchTopKSAE.load(tmp_path / "sub" / "model.safetensors")
    assert (loaded.d_in, loaded.width, loaded.k) == (6, 10, 2.5)
    assert loaded.metadata == {"note": "test", "mse": 0.5}
    x = torch.randn(32, 6)
    assert torch.equal(sae(x), loaded(x))
    assert torch.equal(sae.encode(x), loaded.encode(x))
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
