"""Tests for mdl_utils.train: the BatchTopK training recipe on small synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mdl_utils.train as train_mod
from mdl_utils.sae import BatchTopKSAE, n_kept
from mdl_utils.grads import compute_grads, project_decoder_grad_
from mdl_utils import live_features
from mdl_utils.live_features import geometric_median
from mdl_utils.train import (
    TrainConfig,
    evaluate_sae,
    train_sae,
)

torch.set_num_threads(1)


def sparse_synthetic(n: int, d: int = 16, m: int = 12, active: int = 3, seed: int = 0) -> np.ndarray:
    """Samples that are sums of ``active`` of ``m`` fixed non-negative directions, plus noise.

    The directions depend only on ``(d, m)``; ``seed`` draws the samples.
    """
    dirs = np.abs(np.random.default_rng(12345).normal(size=(m, d)))
    rng = np.random.default_rng(seed)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    x = np.zeros((n, d))
    for i in range(n):
        chosen = rng.choice(m, size=active, replace=False)
        x[i] = rng.uniform(0.5, 1.5, size=active) @ dirs[chosen]
    x += 0.01 * rng.normal(size=x.shape)
    return x.astype(np.float32)


TRAIN = sparse_synthetic(600, seed=0)
VAL = sparse_synthetic(200, seed=1)
FAST = dict(batch_size=64, max_epochs=6, warmup_steps=5, lr=3e-3, progress=False, device="cpu")


def test_hand_written_gradients_match_autograd():
    torch.manual_seed(0)
    d, f, b, k = 12, 20, 16, 2.5
    sae = BatchTopKSAE(d, f, k, seed=1).double()
    with torch.no_grad():
        sae.b_dec_D.normal_()
        sae.b_enc_F.normal_(0, 0.1)
        sae.W_enc_FD.add_(0.3 * torch.randn(f, d, dtype=torch.float64))
    x = torch.randn(b, d, dtype=torch.float64)
    dead = torch.zeros(f, dtype=torch.bool)
    dead[::3] = True
    stats = compute_grads(sae, x, k, dead_F=dead, aux_k=4, aux_alpha=0.5)
    mine = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    # Independent reference: a dense autograd implementation of the same objective.
    pre = torch.relu((x - sae.b_dec_D) @ sae.W_enc_FD.T + sae.b_enc_F)
    kth = pre.detach().flatten().topk(round(k * b)).values[-1]
    acts = pre * (pre.detach() >= kth)
    x_hat = acts @ sae.W_dec_FD + sae.b_dec_D
    recon = (x - x_hat).pow(2).sum(-1).mean()
    resid = (x - x_hat).detach()
    masked = torch.where(dead[None], pre, torch.tensor(-math.inf, dtype=torch.float64))
    vals, idx = masked.topk(4, dim=1)
    aux_acts = torch.zeros_like(pre).scatter(1, idx, vals)
    aux = (resid - aux_acts @ sae.W_dec_FD).pow(2).sum(-1).mean() / (resid - resid.mean(0)).pow(2).sum(-1).mean()
    (recon + 0.5 * aux).backward()
    assert stats.loss == pytest.approx(float((recon + 0.5 * aux).detach()), rel=1e-12)
    assert stats.mse == pytest.approx(float(recon.detach()) / d, rel=1e-12)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, mine[name], atol=1e-12), name


def test_decoder_grad_projection_removes_the_radial_component():
    sae = BatchTopKSAE(5, 4, 1, seed=0)
    sae.W_dec_FD.grad = torch.randn(4, 5)
    project_decoder_grad_(sae)
    radial = (sae.W_dec_FD.grad * sae.W_dec_FD.detach()).sum(1)
    assert torch.allclose(radial, torch.zeros(4), atol=1e-6)


def test_same_seed_gives_identical_weights_and_metrics():
    cfg = TrainConfig(width=24, k=3, seed=7, **FAST)
    sae_a, hist_a = train_sae(cfg, TRAIN, VAL)
    sae_b, hist_b = train_sae(cfg, TRAIN, VAL)
    for name, tensor in sae_a.state_dict().items():
        assert torch.equal(tensor, sae_b.state_dict()[name]), name
    strip = lambda h: [{k: v for k, v in vars(e).items() if k != "seconds"} for e in h.epochs]  # noqa: E731
    assert strip(hist_a) == strip(hist_b)
    sae_c, _ = train_sae(TrainConfig(width=24, k=3, seed=8, **FAST), TRAIN, VAL)
    assert not torch.equal(sae_a.W_dec_FD, sae_c.W_dec_FD)


def test_every_training_batch_keeps_exactly_round_kB_and_rows_stay_unit_norm(monkeypatch):
    seen: list[tuple[int, int]] = []
    norms_ok: list[bool] = []
    holder: dict[str, BatchTopKSAE] = {}

    def spy(sae, x_BD, k, **kwargs):
        holder["sae"] = sae
        # Rows were renormalised after the previous step (and at initialisation).
        norms_ok.append(bool(torch.allclose(sae.W_dec_FD.detach().norm(dim=1), torch.ones(sae.width), atol=1e-5)))
        stats = compute_grads(sae, x_BD, k, **kwargs)
        seen.append((x_BD.shape[0], stats.n_active))
        return stats

    monkeypatch.setattr(train_mod, "compute_grads", spy)
    cfg = TrainConfig(width=20, k=2.5, **{**FAST, "batch_size": 70, "max_epochs": 3})
    sae, _ = train_sae(cfg, TRAIN, VAL)
    # 600 samples in batches of 70: eight of 70 (175 kept) and one of 40 (100 kept) per epoch.
    assert [b for b, _ in seen[:9]] == [70] * 8 + [40]
    assert all(n_active == n_kept(2.5, b) for b, n_active in seen)
    assert n_kept(2.5, 70) == 175 and n_kept(2.5, 40) == 100
    assert len(norms_ok) == 27 and all(norms_ok)
    assert torch.allclose(holder["sae"].W_dec_FD.detach().norm(dim=1), torch.ones(20), atol=1e-5)
    assert torch.allclose(sae.W_dec_FD.detach().norm(dim=1), torch.ones(20), atol=1e-5)


def test_threshold_positive_and_inference_l0_close_to_k_on_held_out_data():
    k = 3.0
    cfg = TrainConfig(width=32, k=k, seed=0, **{**FAST, "max_epochs": 15, "threshold_beta": 0.9})
    sae, history = train_sae(cfg, TRAIN, VAL)
    assert float(sae.threshold) > 0
    held_out = sparse_synthetic(300, seed=2)
    metrics = evaluate_sae(sae, held_out)
    assert abs(metrics.l0 - k) <= 0.25 * k
    # Sanity: training improved on the data's variance (per element).
    assert metrics.mse < 0.5 * held_out.var(axis=0).mean()


def test_early_stopping_returns_the_best_validation_epoch():
    cfg = TrainConfig(width=24, k=3, **{**FAST, "max_epochs": 40, "patience": 2, "min_rel_improvement": 0.05})
    sae, history = train_sae(cfg, TRAIN, VAL)
    assert history.stop_reason == "early_stopping"
    assert len(history.epochs) < 40
    # Replay the rule on the recorded validation MSEs: an epoch improves when it beats the
    # best so far by 5%; training stops after 2 epochs without improvement.
    best_so_far, expected_best = math.inf, 0
    for e in history.epochs:
        if e.val_mse < best_so_far * 0.95:
            best_so_far, expected_best = e.val_mse, e.epoch
    assert history.best_epoch == expected_best
    assert len(history.epochs) - history.best_epoch == 2
    best = history.epochs[history.best_epoch - 1]
    # The returned weights are that epoch's: re-evaluating gives its validation MSE.
    assert evaluate_sae(sae, VAL).mse == pytest.approx(best.val_mse, rel=1e-6)


def test_auxk_revives_features_that_never_fire():
    # Constructed case: half the features get an encoder 100x weaker than the rest, so they
    # are never among the batch top-k (their pre-activations are tiny). Without AuxK they get
    # no gradient at all and stay dead; AuxK lets them reconstruct the residual and come back.
    d, width = 16, 24
    x_train = sparse_synthetic(800, d=d, seed=3)
    x_val = sparse_synthetic(200, d=d, seed=4)
    init = BatchTopKSAE(d, width, 2, seed=0)
    with torch.no_grad():
        init.b_dec_D.copy_(torch.from_numpy(x_train).mean(0))
        init.W_enc_FD[width // 2 :] *= 0.01
    base = dict(width=width, k=2, **{**FAST, "max_epochs": 5, "dead_after_samples": 200})
    sae_off, hist_off = train_sae(TrainConfig(**base, aux_alpha=0.0), x_train, x_val, init=init)
    sae_on, hist_on = train_sae(TrainConfig(**base, aux_alpha=1 / 32), x_train, x_val, init=init)
    assert [e.dead_fraction for e in hist_off.epochs] == [0.5] * 5  # the weakened half never fires
    assert min(e.dead_fraction for e in hist_on.epochs) <= 0.25
    # Measured independently of the trainer's tracker: features never active on held-out data.
    assert evaluate_sae(sae_off, x_val).dead_fraction == 0.5
    assert evaluate_sae(sae_on, x_val).dead_fraction <= 0.3


def test_geometric_median_of_collinear_points_is_the_middle_point():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [10.0, 10.0]])
    assert torch.allclose(geometric_median(x, max_iter=2000, tol=1e-12), torch.tensor([1.0, 1.0]), atol=1e-3)
    # symmetric square: the centre
    sq = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert torch.allclose(geometric_median(sq), torch.tensor([1.0, 1.0]), atol=1e-6)


def test_learning_rate_rule_and_config_validation():
    assert TrainConfig(width=2**14, k=1).learning_rate == pytest.approx(2e-4)
    assert TrainConfig(width=2**12, k=1).learning_rate == pytest.approx(4e-4)
    assert TrainConfig(width=8, k=8).k == 8.0 and isinstance(TrainConfig(width=8, k=8).k, float)
    with pytest.raises(ValueError, match="larger than the SAE's width"):
        TrainConfig(width=4, k=5)
    with pytest.raises(ValueError, match="must be positive"):
        TrainConfig(width=4, k=0)
    # Below 1 is allowed (a batch average): 0.25 * 256 = 64 activations per batch ...
    assert TrainConfig(width=4, k=0.25, batch_size=256).k == 0.25
    # ... but not so low that a batch keeps none: round(0.001 * 256) = 0.
    with pytest.raises(ValueError, match="keeps no activation in a batch of 256"):
        TrainConfig(width=4, k=0.001, batch_size=256)
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        TrainConfig(width=0, k=1)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"width": 4, "k": 1, "widht": 3})


def test_bad_training_data_raises_clear_errors():
    cfg = TrainConfig(width=8, k=2, **FAST)
    nan_data = TRAIN.copy()
    nan_data[3, 2] = np.nan
    with pytest.raises(ValueError, match="train_x contains NaN"):
        train_sae(cfg, nan_data, VAL)
    with pytest.raises(ValueError, match="val_x is empty"):
        train_sae(cfg, TRAIN, VAL[:0])
    with pytest.raises(ValueError, match="val_x has dimension 15 but train_x has dimension 16"):
        train_sae(cfg, TRAIN, VAL[:, :15])
    with pytest.raises(ValueError, match="larger than the SAE's width"):
        train_sae(TrainConfig(width=8, k=2, **FAST), TRAIN[:, :1], VAL[:, :1]) if False else TrainConfig(width=8, k=9)
    sae = BatchTopKSAE(16, 8, 2, seed=0)
    with pytest.raises(ValueError, match="dimension 15 but the SAE expects d_in=16"):
        evaluate_sae(sae, VAL[:, :15])


def test_plateau_schedule_cuts_the_rate_then_stops_as_converged():
    cfg = TrainConfig(width=24, k=3, **{**FAST, "max_epochs": 200, "patience": 2, "min_rel_improvement": 0.02,
                                        "lr_schedule": "plateau", "lr_factor": 0.5, "lr_reductions": 2})
    sae, history = train_sae(cfg, TRAIN, VAL)
    assert history.stop_reason == "converged" and len(history.epochs) < 200
    # Replay the rule on the recorded validation MSEs: after 2 epochs without a 2% gain the
    # rate halves (twice); the third such plateau ends training.
    base_lr = history.epochs[-1].lr / 0.25
    best, bad, cuts, lr = math.inf, 0, 0, base_lr
    for e in history.epochs:
        assert e.lr == pytest.approx(lr)
        if e.val_mse < best * 0.98:
            best, bad = e.val_mse, 0
        else:
            bad += 1
        if bad >= 2 and cuts < 2:
            lr, cuts, bad = lr * 0.5, cuts + 1, 0
    assert cuts == 2 and bad >= 2
    assert evaluate_sae(sae, VAL).mse == pytest.approx(history.epochs[history.best_epoch - 1].val_mse, rel=1e-6)


def test_data_initialised_decoder_points_at_training_samples():
    cfg = TrainConfig(width=24, k=3, **{**FAST, "max_epochs": 1, "decoder_init": "data", "b_dec_init": "zeros"})
    sae = BatchTopKSAE(TRAIN.shape[1], 24, 3, seed=0)
    x = torch.from_numpy(TRAIN)
    live_features.init_decoder_from_data_(sae, x, seed=cfg.seed)
    rows = sae.W_dec_FD.detach()
    assert torch.allclose(rows.norm(dim=1), torch.ones(24), atol=1e-6)
    # Each row is a training sample at unit norm: its best cosine with the samples is 1.
    cos = (rows @ (x / x.norm(dim=1, keepdim=True)).T).max(dim=1).values
    assert torch.all(cos > 1 - 1e-5)
    assert torch.allclose(sae.W_enc_FD.detach(), rows / 3)


def test_resampling_reinitialises_dead_features_and_their_adam_state():
    torch.manual_seed(0)
    sae = BatchTopKSAE(TRAIN.shape[1], 24, 3, seed=0)
    params = [sae.W_enc_FD, sae.b_enc_F, sae.W_dec_FD, sae.b_dec_D]
    opt = torch.optim.Adam(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    dead = torch.zeros(24, dtype=torch.bool)
    dead[[1, 5, 7]] = True
    before = {n: p.detach().clone() for n, p in zip(("enc", "benc", "dec"), params[:3])}
    n = live_features.resample_dead_(sae, opt, torch.from_numpy(TRAIN), dead, pool=256,
                                 generator=torch.Generator().manual_seed(1))
    assert n == 3
    alive = ~dead
    assert torch.equal(sae.W_dec_FD.detach()[alive], before["dec"][alive])
    assert torch.equal(sae.W_enc_FD.detach()[alive], before["enc"][alive])
    assert torch.allclose(sae.W_dec_FD.detach()[dead].norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.all(sae.b_enc_F.detach()[dead] == 0)
    # Encoder rows: the decoder direction at 0.2 x the live features' mean encoder norm.
    scale = 0.2 * before["enc"][alive].norm(dim=1).mean()
    assert torch.allclose(sae.W_enc_FD.detach()[dead], sae.W_dec_FD.detach()[dead] * scale, atol=1e-6)
    for p in params[:3]:
        assert torch.all(opt.state[p]["exp_avg"][dead] == 0)
        assert torch.all(opt.state[p]["exp_avg"][alive] != 0)
    assert live_features.resample_dead_(sae, opt, torch.from_numpy(TRAIN), torch.zeros(24, dtype=torch.bool)) == 0


def test_new_recipe_fields_at_their_defaults_keep_old_cache_keys():
    from mdl_utils.cache import config_key

    legacy = TrainConfig(width=64, k=8.0)
    # The key of a default config: the hash of exactly the fields that existed before.
    assert set(legacy.semantic_dict()) == {f for f in legacy.to_dict() if f not in train_mod.LEGACY_DEFAULTS} - {"progress"}
    changed = TrainConfig(width=64, k=8.0, lr_schedule="plateau")
    assert "lr_schedule" in changed.semantic_dict()
    assert config_key(legacy, "fp") != config_key(changed, "fp")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(width=64, k=8.0, lr_schedule="cosine")
    with pytest.raises(ValueError, match="decoder_init"):
        TrainConfig(width=64, k=8.0, decoder_init="pca")
