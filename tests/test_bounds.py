"""The rank bound on any width-w SAE's reconstruction error (mdl_utils.bounds)."""

import numpy as np
import pytest
import torch

from mdl_utils.bounds import rank_mse_bound


def _samples(n=400, d=12, seed=0):
    rng = np.random.default_rng(seed)
    # Correlated, shifted data with a decaying spectrum.
    return rng.normal(size=(n, d)) @ np.diag(np.linspace(3.0, 0.2, d)) @ rng.normal(size=(d, d)) + 5.0


def test_the_bound_is_the_tail_of_the_spectrum_computed_by_svd_and_is_reached_by_pca():
    x = _samples()
    n, d = x.shape
    bound = rank_mse_bound(x, range(1, d + 3))
    centred = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    for w in range(1, d + 1):
        # A second computation: singular values of the centred data, s**2 / n per direction.
        assert bound[w] == pytest.approx(float(np.sum(s[w:] ** 2)) / (n * d), rel=1e-9, abs=1e-12)
        # Reached: the mean plus the top-w principal directions reconstructs with exactly that MSE.
        recon = x.mean(axis=0) + (centred @ vt[:w].T) @ vt[:w]
        assert float(np.mean((x - recon) ** 2)) == pytest.approx(bound[w], rel=1e-9, abs=1e-12)
    assert bound[d] == bound[d + 1] == bound[d + 2] == pytest.approx(0.0, abs=1e-12)
    # Never rising with width, and at width 0 it would be the variance (mean over dimensions).
    assert all(bound[w] >= bound[w + 1] for w in range(1, d + 2))
    assert bound[1] < float(x.var(axis=0).mean())


def test_no_affine_subspace_and_no_sae_of_that_width_does_better():
    x = _samples(seed=1)
    d = x.shape[1]
    rng = np.random.default_rng(2)
    bound = rank_mse_bound(x, range(1, d))
    for w in range(1, d):
        for _ in range(5):
            # Any other affine subspace of dimension w: least-squares projection onto it.
            basis = np.linalg.qr(rng.normal(size=(d, w)))[0]
            offset = rng.normal(size=d) * 3
            recon = offset + ((x - offset) @ basis) @ basis.T
            assert float(np.mean((x - recon) ** 2)) >= bound[w] - 1e-12
    # SAEs of width 3 (random weights, then a few steps of fitting): never below the width-3 bound.
    from mdl_utils.sae import BatchTopKSAE

    xt = torch.tensor(x, dtype=torch.float32)
    for seed in range(3):
        sae = BatchTopKSAE(d, 3, 2.0, seed=seed)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        for _ in range(200):
            opt.zero_grad()
            loss = ((sae(xt) - xt) ** 2).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            mse = float(((sae(xt) - xt) ** 2).mean())
        assert mse >= rank_mse_bound(x, [3])[3] * (1 - 1e-5)


def test_bad_input_is_named():
    x = _samples()
    with pytest.raises(ValueError, match="2-D"):
        rank_mse_bound(x[0], [2])
    with pytest.raises(ValueError, match="at least two samples"):
        rank_mse_bound(x[:1], [2])
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        rank_mse_bound(bad, [2])
    with pytest.raises(ValueError, match="real numbers"):
        rank_mse_bound(x.astype(complex), [2])
    for w in (0, -3, 2.5, True, "4"):
        with pytest.raises(ValueError, match="positive whole numbers"):
            rank_mse_bound(x, [w])
    # float16 input (as the stored activations) is computed in float64.
    assert rank_mse_bound(x.astype(np.float16), [2])[2] == pytest.approx(
        rank_mse_bound(x.astype(np.float16).astype(np.float64), [2])[2], rel=1e-12)
