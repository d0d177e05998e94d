"""Scoring saved SAEs: mdl_utils.checkpoints (SAELens, dictionary_learning, this book's format),
mdl_utils.activations (chunked reading) and mdl_utils.scoring (the measurements, the CLI).

Neither SAELens nor dictionary_learning installs here without a language-model stack, so each
checkpoint is written by hand in the library's documented layout, and the loaded SAE's latents
and reconstruction are compared with the library's formula written out again below in numpy
(float64), to 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mdl_utils.activations import open_activations
from mdl_utils.checkpoints import load_sae
from mdl_utils.dl import description_length
from mdl_utils.protocol import measure_sae
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.scoring import _description_length, _encode_pass, main, parse_tolerance, score

D, F = 6, 10


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(size=(D, F)).astype(np.float32) / 2,
            "b_enc": rng.normal(size=F).astype(np.float32) / 4,
            "W_dec": rng.normal(size=(F, D)).astype(np.float32) / 2,
            "b_dec": rng.normal(size=D).astype(np.float32) / 4,
            "threshold": np.abs(rng.normal(size=F)).astype(np.float32) / 3}


def _x(n: int = 64, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, D)) * 1.5 + 0.3).astype(np.float32)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# --- the libraries' formulas, written out independently (float64) ---------------------------

def _relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


def _topk_rows(a: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(a)
    for i, row in enumerate(a):
        keep = np.argsort(-row, kind="stable")[:k]
        out[i, keep] = row[keep]
    return out


def _norm_in(x: np.ndarray, mode: str) -> tuple[np.ndarray, object]:
    if mode == "constant_norm_rescale":
        c = np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)
        return x * c, c
    if mode == "layer_norm":
        mu = x.mean(axis=1, keepdims=True)
        sd = (x - mu).std(axis=1, ddof=1, keepdims=True)
        return (x - mu) / (sd + 1e-5), (mu, sd)
    return x, None


def _norm_out(y: np.ndarray, mode: str, state: object) -> np.ndarray:
    if mode == "constant_norm_rescale":
        return y / state
    if mode == "layer_norm":
        mu, sd = state
        return y * (sd + 1e-5) + mu
    return y


def _saelens_reference(w, x, *, arch, k=None, centre=True, norm="none", rescale=False, scaling=None):
    w = {n: v.astype(np.float64) for n, v in w.items()}
    xn, state = _norm_in(x.astype(np.float64), norm)
    h = (xn - w["b_dec"] * centre) @ w["W_enc"] + w["b_enc"]
    norms = np.linalg.norm(w["W_dec"], axis=1)
    if arch == "standard":
        f = _relu(h)
    elif arch == "topk":
        h = h * norms if rescale else h
        f = _relu(_topk_rows(h, k))
    else:
        f = _relu(h) * (h > w["threshold"])
    f_dec = f / norms if rescale else f
    if scaling is not None:
        f_dec = f_dec * scaling
    return f, _norm_out(f_dec @ w["W_dec"] + w["b_dec"], norm, state)


def _write_saelens(folder: Path, w, cfg: dict, keep=("W_enc", "b_enc", "W_dec", "b_dec")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({n: _t(w[n]) for n in keep}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": F, "dtype": "float32", **cfg}))
    return folder


SAELENS_CASES = {
    "v6 standard": (dict(architecture="standard", apply_b_dec_to_input=True, normalize_activations="none",
                         metadata={"sae_lens_version": "6.54.12"}), dict(arch="standard")),
    "v6 topk, decoder-norm rescale": (
        dict(architecture="topk", k=3, rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=True,
             metadata={"sae_lens_version": "6.54.12"}), dict(arch="topk", k=3, rescale=True)),
    "v6 jumprelu (BatchTopK save)": (
        dict(architecture="jumprelu", apply_b_dec_to_input=False, normalize_activations="none",
             metadata={"sae_lens_version": "6.20.0", "training_architecture": "batchtopk"}),
        dict(arch="jumprelu", centre=False)),
    "v5 topk via activation_fn_kwargs": (
        dict(architecture="standard", activation_fn_str="topk", activation_fn_kwargs={"k": 4},
             sae_lens_version="5.11.0"), dict(arch="topk", k=4)),
    "v5 standard, constant_norm_rescale": (
        dict(architecture="standard", normalize_activations="constant_norm_rescale",
             sae_lens_version="5.11.0"), dict(arch="standard", norm="constant_norm_rescale")),
    "v6 jumprelu, layer_norm": (
        dict(architecture="jumprelu", normalize_activations="layer_norm",
             metadata={"sae_lens_version": "6.1.0"}), dict(arch="jumprelu", norm="layer_norm")),
    "v4 expected_average_only_in (folded)": (
        dict(architecture="standard", normalize_activations="expected_average_only_in",
             sae_lens_version="4.4.5"), dict(arch="standard")),
}


@pytest.mark.parametrize("case", list(SAELENS_CASES))
def test_saelens_encoding_matches_the_documented_formula(tmp_path, case):
    cfg, ref = SAELENS_CASES[case]
    w = _weights()
    keep = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if ref["arch"] == "jumprelu" else [])
    folder = _write_saelens(tmp_path / "sae", w, cfg, keep)
    sae = load_sae(folder)
    x = _x()
    z, ctx = sae.encode(_t(x))
    x_hat = sae.decode(z, ctx)
    f_ref, x_ref = _saelens_reference(w, x, **ref)
    np.testing.assert_allclose(z.numpy(), f_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x_hat.numpy(), x_ref, atol=1e-5, rtol=1e-5)
    assert (z.numpy() > 0).sum() > 0


def test_saelens_log_threshold_and_finetuning_scale(tmp_path):
    w = _weights()
    folder = tmp_path / "sae"
    folder.mkdir()
    scale = np.linspace(0.5, 2.0, F).astype(np.float32)
    save_file({"W_enc": _t(w["W_enc"]), "b_enc": _t(w["b_enc"]), "W_dec": _t(w["W_dec"]),
               "b_dec": _t(w["b_dec"]), "log_threshold": _t(np.log(w["threshold"])),
               "scaling_factor": _t(scale)}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": F, "architecture": "jumprelu",
                                                 "finetuning_scaling_factor": True}))
    sae = load_sae(folder)
    x = _x()
    z, ctx = sae.encode(_t(x))
    f_ref, x_ref = _saelens_reference(w, x, arch="jumprelu", scaling=scale)
    np.testing.assert_allclose(z.numpy(), f_ref, atol=1e-5)
    np.testing.assert_allclose(sae.decode(z, ctx).numpy(), x_ref, atol=1e-5)


def _write_dl(folder: Path, state: dict, trainer: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({n: (_t(v) if isinstance(v, np.ndarray) else v) for n, v in state.items()}, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps(
        {"trainer": {"activation_dim": D, "dict_size": F, "lm_name": "x", "layer": 3, **trainer},
         "buffer": {"ctx_len": 128}}))
    return folder


def _dl_reference(w, x, *, kind, k=None, theta=None):
    w = {n: v.astype(np.float64) for n, v in w.items()}
    x = x.astype(np.float64)
    if kind == "AutoEncoder":
        f = _relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    elif kind == "AutoEncoderNew":
        f = _relu(x @ w["W_enc"] + w["b_enc"])
    elif kind == "AutoEncoderTopK":
        f = _topk_rows(_relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]), k)
    elif kind in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        a = _relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        f = a * (a > theta)
    else:  # JumpReluAutoEncoder: no centring by default
        pre = x @ w["W_enc"] + w["b_enc"]
        f = _relu(pre * (pre > w["threshold"]))
    return f, f @ w["W_dec"] + w["b_dec"]


def _dl_state(kind: str, w) -> tuple[dict, dict]:
    linear = {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"], "decoder.weight": w["W_dec"].T}
    if kind == "AutoEncoder":
        return {**linear, "bias": w["b_dec"]}, {}
    if kind == "AutoEncoderNew":
        return {**linear, "decoder.bias": w["b_dec"]}, {}
    if kind == "AutoEncoderTopK":
        return {**linear, "b_dec": w["b_dec"], "k": torch.tensor(3, dtype=torch.int32),
                "threshold": torch.tensor(-1.0)}, {"k": 3}
    if kind == "BatchTopKSAE":
        return {**linear, "b_dec": w["b_dec"], "k": torch.tensor(2, dtype=torch.int32),
                "threshold": torch.tensor(0.4)}, {"k": 2}
    if kind == "MatryoshkaBatchTopKSAE":
        return {"W_enc": w["W_enc"], "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"],
                "k": torch.tensor(2, dtype=torch.int32), "threshold": torch.tensor(0.3),
                "group_sizes": torch.tensor([4, 6])}, {"k": 2}
    return {"W_enc": w["W_enc"], "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"],
            "threshold": w["threshold"]}, {}


@pytest.mark.parametrize("kind", ["AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE",
                                  "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"])
def test_dictionary_learning_encoding_matches_the_documented_formula(tmp_path, kind):
    w = _weights(seed=3)
    state, extra = _dl_state(kind, w)
    folder = _write_dl(tmp_path / "trainer_0", state, {"dict_class": kind, **extra})
    sae = load_sae(folder)
    x = _x()
    z, ctx = sae.encode(_t(x))
    theta = float(state["threshold"]) if kind in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE") else None
    f_ref, x_ref = _dl_reference(w, x, kind=kind, k=extra.get("k"), theta=theta)
    np.testing.assert_allclose(z.numpy(), f_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(sae.decode(z, ctx).numpy(), x_ref, atol=1e-5, rtol=1e-5)


@pytest.fixture
def book_sae(tmp_path) -> tuple[BatchTopKSAE, Path]:
    torch.manual_seed(0)
    sae = BatchTopKSAE(D, F, k=3.0, seed=0)
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    path = tmp_path / "book" / "w10-s0"
    sae.save(path)
    return sae, path


def test_book_format_matches_the_book_sae(book_sae):
    sae, path = book_sae
    loaded = load_sae(path.with_suffix(".safetensors"))
    x = _t(_x())
    z, ctx = loaded.encode(x)
    np.testing.assert_allclose(z.numpy(), sae.encode(x).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded.decode(z, ctx).numpy(), sae.decode(sae.encode(x)).detach().numpy(), atol=1e-5)


def test_score_agrees_with_the_chapter_3_measurement(book_sae):
    """A second method: score() streams chunks; measure_sae holds everything in memory."""
    sae, path = book_sae
    x = _x(n=400, seed=5)
    m = measure_sae(sae, x, epsilon=1.0)
    eps = 1.02 * m.mse
    m = measure_sae(sae, x, epsilon=eps)
    r = score(path, x, tolerance=f"mse={eps}", chunk_size=37)
    assert r.mse == pytest.approx(m.mse, rel=1e-5)
    assert r.l0 == pytest.approx(m.l0) and r.n_live == m.n_live
    assert r.precision.status == m.precision.status == "in_band"
    assert r.precision.bits == pytest.approx(m.precision.bits, abs=0.02)
    assert r.dl_bits == pytest.approx(m.dl_bits, rel=2e-3)
    assert r.whole_bits == m.whole_bits
    assert r.whole_dl_bits == pytest.approx(m.whole_dl_bits, rel=1e-4)
    assert r.decoder_bits == (F + 1) * D * 16
    assert r.two_part_bits == pytest.approx(r.dl_bits + (F + 1) * D * 16 / 400)


def test_the_package_level_function(book_sae):
    import mdl_utils

    _, path = book_sae
    x = _x(n=50)
    assert mdl_utils.score(path, x).to_dict() | {"seconds": 0} == score(path, x).to_dict() | {"seconds": 0}


def test_streamed_description_length_equals_the_in_memory_count(book_sae):
    sae, path = book_sae
    loaded = load_sae(path)
    x = _x(n=300, seed=7)
    z_full = loaded.encode(_t(x))[0].numpy()
    for chunk in (1, 17, 300):
        lat, *_ = _encode_pass(loaded, open_activations_array(x), chunk, False)
        for bits in (1, 2.5, 6):
            assert _description_length(lat, 300, F, bits) == pytest.approx(
                description_length(z_full, bits=bits).dl_bits, rel=1e-12)


def open_activations_array(x: np.ndarray):
    from mdl_utils.scoring import _as_activations
    return _as_activations(x, None)


def test_fvu_and_tolerances_by_hand(tmp_path):
    """An SAE that reconstructs every sample as b_dec: MSE and FVU follow from the data alone."""
    w = {"W_enc": np.zeros((D, F), np.float32), "b_enc": -np.ones(F, np.float32),
         "W_dec": np.ones((F, D), np.float32), "b_dec": np.full(D, 0.5, np.float32)}
    folder = _write_saelens(tmp_path / "dead", w, {"architecture": "standard"})
    x = _x(n=50)
    r = score(folder, x, tolerance="fvu=2.0")
    x64 = x.astype(np.float64)
    assert r.mse == pytest.approx(np.mean((x64 - 0.5) ** 2), rel=1e-9)
    assert r.variance == pytest.approx(np.mean((x64 - x64.mean(axis=0)) ** 2), rel=1e-9)
    assert r.fvu == pytest.approx(r.mse / r.variance)
    assert r.l0 == 0 and r.n_live == 0 and r.dead_fraction == 1.0
    assert r.reachable and r.dl_bits == 0.0 and r.tolerance["mse_ceiling"] == pytest.approx(2 * r.variance)
    unreachable = score(folder, x, tolerance=f"mse={r.mse / 2}")
    assert not unreachable.reachable and unreachable.dl_bits is None
    assert "not reachable" in unreachable.report()
    assert parse_tolerance("increase=0.05").ceiling(2.0, 9.0) == pytest.approx(2.1)


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_activation_files_are_read_in_chunks(tmp_path, suffix):
    x = _x(n=103).astype(np.float16)
    path = tmp_path / f"acts{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".pt":
        torch.save({"acts": _t(x)}, path)
    else:
        save_file({"acts": _t(x)}, str(path))
    acts = open_activations(path)
    assert acts.shape == (103, D) and acts.dtype == "float16"
    if suffix == ".npy":
        assert isinstance(acts._source, np.memmap)  # never loaded whole
    got = np.concatenate([block for _, block in acts.chunks(10)])
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_bad_inputs_get_clear_errors_and_no_partial_output(tmp_path, book_sae, capsys):
    _, sae_path = book_sae
    good = tmp_path / "x.npy"
    np.save(good, _x(n=20))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((20, D + 1), np.float32))
    with pytest.raises(ValueError, match=r"d = 7 per sample but the SAE expects d_in = 6"):
        score(sae_path, wrong)
    nan = _x(n=20)
    nan[13, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match="NaN or inf \\(first at row 13\\)"):
        score(sae_path, tmp_path / "nan.npy")
    truncated = tmp_path / "cut.npy"
    truncated.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(ValueError, match="cut.npy.*(truncated|corrupt)"):
        score(sae_path, truncated)
    # A truncated weights file, an architecture not covered, a config missing a field.
    folder = _write_saelens(tmp_path / "s", _weights(), {"architecture": "standard"})
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="sae_weights.safetensors: not a readable safetensors file"):
        load_sae(folder)
    gated = _write_saelens(tmp_path / "g", _weights(), {"architecture": "gated"})
    with pytest.raises(ValueError, match="architecture 'gated' is not covered"):
        load_sae(gated)
    (gated / "cfg.json").write_text(json.dumps({"d_in": D, "architecture": "standard"}))
    with pytest.raises(ValueError, match="no 'd_sae' field"):
        load_sae(gated)
    dl_folder = _write_dl(tmp_path / "dlg", {"x": torch.zeros(1)}, {"dict_class": "GatedAutoEncoder"})
    with pytest.raises(ValueError, match="class 'GatedAutoEncoder' is not covered"):
        load_sae(dl_folder)
    with pytest.raises(ValueError, match="unknown tolerance kind 'l1'"):
        parse_tolerance("l1=3")
    # The command line: an error on stderr, exit status 2, nothing on stdout.
    capsys.readouterr()
    assert main(["--sae", str(sae_path), "--activations", str(wrong), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "d_in = 6" in err


def test_command_line_json(book_sae, tmp_path, capsys):
    _, sae_path = book_sae
    acts = tmp_path / "x.safetensors"
    save_file({"x": _t(_x(n=80))}, str(acts))
    assert main(["--sae", str(sae_path.with_suffix(".json")), "--activations", str(acts),
                 "--tolerance", "increase=0.05", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sae"]["format"] == "mdl_utils" and result["n_samples"] == 80
    assert result["tolerance"]["mse_ceiling"] == pytest.approx(1.05 * result["mse"])
    assert result["precision"]["mse_quantised"] <= result["tolerance"]["mse_ceiling"]


@pytest.mark.parametrize("case", ["v6 topk, decoder-norm rescale", "v6 jumprelu, layer_norm"])
def test_sparse_decoding_equals_dense_decoding(tmp_path, case):
    cfg, ref = SAELENS_CASES[case]
    keep = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if ref["arch"] == "jumprelu" else [])
    sae = load_sae(_write_saelens(tmp_path / "sae", _weights(), cfg, keep))
    z, ctx = sae.encode(_t(_x()))
    rows, cols = torch.nonzero(z, as_tuple=True)
    indptr = torch.zeros(z.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=z.shape[0]), 0)
    sparse = sae.decode_sparse(indptr, cols, z[rows, cols], ctx)
    np.testing.assert_allclose(sparse.numpy(), sae.decode(z, ctx).numpy(), atol=1e-5)
