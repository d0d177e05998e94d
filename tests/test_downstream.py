"""Tests for chapter 7's machinery (mdl_utils.downstream): one SAE measured under the
cross-entropy and the MSE tolerance (checked against splice_loss and the dl module by hand),
the calibration rule, a miniature study of both arms that resumes and reproduces from its
stored SAEs, and the committed full-profile results recomputed from their weights."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mdl_utils import dl
from mdl_utils.downstream import (
    DownstreamSettings,
    activation_data,
    calibrate_epsilon_mse,
    load_arm_sae,
    load_downstream,
    run_downstream,
)
from mdl_utils.downstream_measure import DownstreamMeasure, measure_downstream, precision_curve
from mdl_utils.models import ClassifierConfig, MLPClassifier, hidden_activations, load_classifier, splice_loss
from mdl_utils.protocol import REL_BAND, measure_sae
from mdl_utils.study_store import load_rows
from mdl_utils.study_plan import RECIPE

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "full" / "downstream"


def _spliced(model, h, bits, y):
    """Cross-entropy increase and MSE with ``h`` quantised at ``bits`` by the dl module (the
    identity SAE's latents are ``h`` itself): a second route to what the measurement computes."""
    hq = np.asarray(dl.dequantize(dl.quantize(h, bits=bits), dl.bin_widths(h, bits=bits)), dtype=np.float32)
    r = splice_loss(model, h, hq, y)
    return r.ce_increase, float(np.mean((hq.astype(np.float64) - h) ** 2)), r.accuracy_spliced


@pytest.fixture
def classifier_data():
    """A random classifier with weights scaled up (so that its loss notices quantisation,
    falling steadily from 0.29 nats at 0.05 bits to 1e-4 at 8 bits) and labelled by its own
    predictions (clean cross-entropy 0.25 nats)."""
    model = MLPClassifier((32, 16), seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    x = np.random.default_rng(0).random((400, 784), dtype=np.float32)
    h = hidden_activations(model, x)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    return model, h, y


# --- one SAE measured -------------------------------------------------------------------------


def test_cross_entropy_arm_puts_the_quantised_increase_at_epsilon_and_measures_dl_there(identity_sae, classifier_data):
    model, h, y = classifier_data
    sae = identity_sae(32)
    eps = 0.01
    m = measure_downstream(sae, model, h, y, loss="ce", epsilon=eps, other_tolerances=(0.02,))
    assert m["loss"] == "ce" and m["feasible"] and m["ce_increase"] == 0.0 and m["mse"] == 0.0
    p = m["precision"]
    assert p["mse_quantised"] <= eps
    if p["status"] == "band_missed":
        # On 400 samples the loss moves in steps: the bisection closed on a step across the
        # band, so a hair coarser than the answer the loss is above epsilon.
        assert _spliced(model, h, p["bits"] - 1e-8, y)[0] > eps
    else:
        assert p["status"] == "in_band" and (1 - REL_BAND) * eps <= p["mse_quantised"]
    ce_b, mse_b, acc_b = _spliced(model, h, p["bits"], y)
    assert m["ce_increase_quantised"] == pytest.approx(ce_b, abs=1e-9) == pytest.approx(p["mse_quantised"], abs=1e-9)
    assert m["mse_quantised"] == pytest.approx(mse_b, rel=1e-5) and m["accuracy_spliced"] == acc_b
    assert m["dl_bits"] == pytest.approx(dl.description_length(h, bits=p["bits"]).dl_bits, rel=1e-12)
    assert m["l0"] == pytest.approx(float((h > 0).sum(axis=1).mean()))
    # The paper's whole-bit reading: the fewest whole bits meeting epsilon, by brute force.
    whole = next(b for b in range(1, 25) if _spliced(model, h, b, y)[0] <= eps)
    assert m["whole_bits"] == whole and whole >= p["bits"] - 1e-9
    # A looser tolerance allows coarser bins, so a shorter description.
    assert m["dl_at"]["0.02"] < m["dl_bits"]


def test_cross_entropy_arm_rejects_an_sae_whose_unquantised_splice_misses_epsilon(identity_sae, classifier_data):
    model, h, y = classifier_data
    sae = identity_sae(32)
    with torch.no_grad():
        sae.W_dec_FD.mul_(0.5)  # halves every reconstruction: the classifier notices
    raw = splice_loss(model, h, 0.5 * h, y).ce_increase
    assert raw > 0.01
    m = measure_downstream(sae, model, h, y, loss="ce", epsilon=0.01, other_tolerances=(2 * raw,))
    assert not m["feasible"] and m["dl_bits"] is None and m["ce_increase_quantised"] is None
    assert m["ce_increase"] == pytest.approx(raw, abs=1e-6)
    assert m["dl_at"][f"{2 * raw:.6g}"] is not None  # but it meets a looser one


def test_mse_arm_is_chapter_3s_measurement_plus_the_classifiers_readings(identity_sae, classifier_data):
    model, h, y = classifier_data
    sae = identity_sae(32)
    eps = 1e-4
    m = measure_downstream(sae, model, h, y, loss="mse", epsilon=eps)
    expected = measure_sae(sae, h, epsilon=eps).to_dict()
    assert {k: m[k] for k in expected} == expected
    ce_b, mse_b, acc_b = _spliced(model, h, m["precision"]["bits"], y)
    assert m["ce_increase_quantised"] == pytest.approx(ce_b, abs=1e-9)
    assert m["mse_quantised"] == pytest.approx(m["precision"]["mse_quantised"], rel=1e-9)
    assert m["mse_quantised"] == pytest.approx(mse_b, rel=1e-5) and m["accuracy_spliced"] == acc_b


def test_measurement_errors_name_the_problem(identity_sae, classifier_data):
    model, h, y = classifier_data
    with pytest.raises(ValueError, match="loss must be one of"):
        measure_downstream(identity_sae(32), model, h, y, loss="kl", epsilon=0.01)
    with pytest.raises(ValueError, match="need"):
        measure_downstream(identity_sae(32), model, h, y[:10], loss="ce", epsilon=0.01)


def test_the_measure_pickles_for_ray_workers_and_measures_the_same(identity_sae, classifier_data):
    model, h, y = classifier_data
    measure = DownstreamMeasure(model, y, "ce", 0.01, (0.02,))
    again = pickle.loads(pickle.dumps(measure))
    assert again(identity_sae(32), h) == measure(identity_sae(32), h)


def test_precision_curve_matches_the_spliced_loss_by_hand(identity_sae, classifier_data):
    model, h, y = classifier_data
    curve = precision_curve(identity_sae(32), model, h, y, bits=[2.0, 3.5])
    assert curve["bits"] == [2.0, 3.5]
    for i, b in enumerate((2.0, 3.5)):
        ce_b, mse_b, _ = _spliced(model, h, b, y)
        assert curve["ce_increase"][i] == pytest.approx(ce_b, abs=1e-9)
        assert curve["mse"][i] == pytest.approx(mse_b, rel=1e-5)
    assert curve["dl_bits"][0] < curve["dl_bits"][1]


# --- calibration ------------------------------------------------------------------------------


def _summary(entries):
    return {"widths": [{"width": w, "seeds": seeds} for w, seeds in entries]}


def test_calibration_is_the_median_of_finished_reachable_selections_of_the_seed():
    summary = _summary([
        (16, {"0": {"complete": True, "reachable": True, "mse_quantised": 0.30}}),
        (32, {"0": {"complete": True, "reachable": True, "mse_quantised": 0.10},
              "1": {"complete": True, "reachable": True, "mse_quantised": 9.0}}),  # another seed: ignored
        (64, {"0": {"complete": True, "reachable": True, "mse_quantised": 0.123456}}),
        (128, {"0": {"complete": False, "reachable": True, "mse_quantised": 5.0}}),  # running: ignored
        (256, {"0": {"complete": True, "reachable": False}}),
    ])
    cal = calibrate_epsilon_mse(summary, 0)
    assert cal["epsilon_mse"] == 0.123  # median of 0.30, 0.10, 0.123456, to 3 digits
    assert sorted(cal["per_width"]) == ["16", "32", "64"]
    with pytest.raises(ValueError, match="no width"):
        calibrate_epsilon_mse(_summary([(16, {"0": {"complete": False, "reachable": True}})]), 0)


# --- data and a miniature study ---------------------------------------------------------------


def test_activation_data_holds_the_classifier_activations_of_the_first_digits(tmp_path, mnist_source_dir):
    from mdl_utils.data import load_mnist

    model = MLPClassifier((256,), seed=0)
    data, y = activation_data(model, 200, 50, tmp_path)
    assert len(data.train) + len(data.val) == 200 and data.val.shape[1] == 256
    x_test, y_test = load_mnist("test")
    assert np.array_equal(data.test, hidden_activations(model, x_test[:50]))
    assert np.array_equal(y, y_test[:50])


def _mini() -> DownstreamSettings:
    return DownstreamSettings(
        n_train=1500, n_test=300, widths=(8, 32), seeds=(0, 1), fill_widths=False, n_boot=20,
        classifier=ClassifierConfig(hidden=(32,), epochs=1, n_train=3000), epsilon_ce=0.2, k_start=4.0,
        max_trainings_per_search=6,
        train={**RECIPE, "batch_size": 128, "max_epochs": 6, "patience": 2, "lr_reductions": 1,
               "resample_every": 3, "resample_until": 6},
    )


def test_miniature_study_of_both_arms_resumes_and_reproduces_from_its_stored_saes(tmp_path, mnist_source_dir):
    torch.set_num_threads(1)
    settings, out, cache = _mini(), tmp_path / "out", tmp_path / "cache"
    payload = run_downstream(settings, out, cache=cache, progress=False)
    assert payload["complete"] and payload["calibration"] is not None
    stored = json.loads((out / "downstream.json").read_text())
    assert payload == stored == json.loads(json.dumps(load_downstream(out)[0].to_dict()))
    eps = {"ce": settings.epsilon_ce, "mse": payload["epsilon_mse"]}
    # The calibration is the rule applied to the cross-entropy arm's first seed.
    assert payload["calibration"] == calibrate_epsilon_mse(payload["ce"], 0)
    model, _ = load_classifier(out / "classifier")
    data, y = activation_data(model, settings.n_train, settings.n_test, tmp_path / "acts")
    for arm in ("ce", "mse"):
        summary = payload[arm]
        assert summary["complete"] and summary["resolution"] is not None
        for entry in summary["widths"]:
            for seed, s in entry["seeds"].items():
                if not s["reachable"]:
                    continue
                loss_q = s["ce_increase_quantised"] if arm == "ce" else s["mse_quantised"]
                assert loss_q <= eps[arm] * (1 + 1e-12)
                # Reload the stored float16 SAE and measure it again: the row's numbers come back.
                sae = load_arm_sae(out, arm, entry["width"], int(seed))
                again = measure_downstream(sae, model, data.test, y, loss=arm, epsilon=eps[arm])
                assert again["dl_bits"] == pytest.approx(s["dl_bits"], rel=1e-9)
                assert again["ce_increase_quantised"] == pytest.approx(s["ce_increase_quantised"], abs=1e-9)
    assert {v["claim"] for v in payload["verdicts"]} >= {"the cross-entropy optimum is resolved"}
    # Resuming trains nothing and leaves the calibration alone.
    n_rows = {arm: len(load_rows(out / arm)) for arm in ("ce", "mse")}
    cal_text = (out / "calibration.json").read_text()
    again = run_downstream(settings, out, cache=tmp_path / "empty-cache", progress=False)
    assert {arm: len(load_rows(out / arm)) for arm in ("ce", "mse")} == n_rows
    assert (out / "calibration.json").read_text() == cal_text
    assert again["ce"]["dl_star"] == payload["ce"]["dl_star"] and again["mse"]["dl_star"] == payload["mse"]["dl_star"]
    with pytest.raises(FileNotFoundError, match="mdl_utils downstream"):
        load_downstream(tmp_path / "missing")
    with pytest.raises(ValueError, match="arm"):
        load_arm_sae(out, "kl", 8, 0)


def test_a_budget_stops_before_calibrating_and_a_rerun_continues(tmp_path, mnist_source_dir):
    torch.set_num_threads(1)
    settings, out = _mini(), tmp_path / "out"
    first = run_downstream(settings, out, cache=tmp_path / "cache", budget_hours=0.0, progress=False)
    assert first["stopped_by_budget"] and not first["complete"]
    assert first["calibration"] is None and first["mse"] is None
    assert not (out / "calibration.json").exists()
    rest = run_downstream(settings, out, cache=tmp_path / "cache", progress=False)
    assert rest["complete"] and (out / "calibration.json").is_file()


def test_each_arms_summary_on_disk_covers_every_seed_when_the_job_dies_after_the_first_seed(
    tmp_path, mnist_source_dir, monkeypatch
):
    """The job runs both arms' first seed, then every seed; killed as the every-seed phases
    begin, it must leave summaries that say seed 1 remains, not finished one-seed studies."""
    import mdl_utils.downstream as downstream

    torch.set_num_threads(1)
    settings, out = _mini(), tmp_path / "out"
    real = downstream.run_study

    class Killed(Exception):
        pass

    def killed_after_the_first_seed(study, *args, **kwargs):
        if study.seeds != (0,):
            raise Killed
        return real(study, *args, **kwargs)

    monkeypatch.setattr(downstream, "run_study", killed_after_the_first_seed)
    with pytest.raises(Killed):
        run_downstream(settings, out, cache=tmp_path / "cache", progress=False)
    assert (out / "calibration.json").is_file()  # the first seed of the ce arm finished
    for arm in ("ce", "mse"):
        on_disk = json.loads((out / arm / "summary.json").read_text())
        assert {r["seed"] for r in load_rows(out / arm)} == {0}
        assert on_disk["settings"]["seeds"] == [0, 1]
        reached = sorted(e["width"] for e in on_disk["widths"] if e["seeds"]["0"]["reachable"])
        assert reached, arm
        assert sorted(map(tuple, on_disk["remaining"])) == [(w, 1) for w in reached], arm
        assert not on_disk["complete"] and on_disk["resolution"]["provisional"]
        assert on_disk["machine"] and on_disk["code_version"]  # the run's record


# --- the committed full-profile results -------------------------------------------------------


def test_committed_selected_saes_reproduce_their_rows(mnist_source_dir):
    if not (COMMITTED / "downstream.json").is_file():
        pytest.skip("no committed full-profile results (python -m mdl_utils downstream --profile full)")
    from mdl_utils.data import load_mnist

    typed, model = load_downstream(COMMITTED)
    payload = typed.to_dict()
    x_test, y_test = load_mnist("test")
    n_test = payload["settings"]["n_test"]
    x_test, y_test = (x_test[:n_test], y_test[:n_test]) if n_test else (x_test, y_test)
    h = hidden_activations(model, x_test)
    eps = {"ce": payload["epsilon_ce"], "mse": payload["epsilon_mse"]}
    checked = 0
    for arm in ("ce", "mse"):
        if payload[arm] is None:
            continue
        for entry in payload[arm]["widths"]:
            for seed, s in entry["seeds"].items():
                if not (s["complete"] and s["reachable"]) or entry["width"] > 256:
                    continue  # wide SAEs' weights may be parked outside git; narrow ones suffice
                stem = COMMITTED / arm / "saes" / f"w{entry['width']:05d}-s{seed}"
                if not stem.with_suffix(".json").is_file():
                    continue
                sae = load_arm_sae(COMMITTED, arm, entry["width"], int(seed))
                m = measure_downstream(sae, model, h, y_test, loss=arm, epsilon=eps[arm])
                # float32 sums over 10,000 digits may differ in the last digits between machines
                assert m["dl_bits"] == pytest.approx(s["dl_bits"], rel=1e-3)
                assert m["ce_increase_quantised"] == pytest.approx(s["ce_increase_quantised"], abs=1e-4)
                checked += 1
    if not checked:
        pytest.skip("no finished search committed yet")


def test_the_typed_results_read_and_write_downstream_json_key_for_key(tmp_path):
    from mdl_utils.downstream_results import DownstreamResults

    path = COMMITTED / "downstream.json"
    if not path.is_file():
        pytest.skip("no committed full-profile results")
    raw = json.loads(path.read_text())
    typed = DownstreamResults.from_dict(raw)
    assert json.dumps(typed.to_dict(), indent=2) == path.read_text()
    # The typed view says what the dict says.
    assert set(typed.arms) == {arm for arm in ("ce", "mse") if raw[arm] is not None}
    assert typed.epsilon("ce") == raw["epsilon_ce"] and typed.epsilon("mse") == raw["epsilon_mse"]
    assert [v.answer for v in typed.verdicts] == [v["answer"] for v in raw["verdicts"]]
    if typed.ce is not None and typed.ce.resolution is not None:
        assert typed.ce.resolution.optimum == raw["ce"]["resolution"]["optimum"]
    with pytest.raises(ValueError, match="arm must be one of"):
        typed.epsilon("kl")
    # A file without what the job writes is refused by name.
    broken = tmp_path / "out"
    broken.mkdir()
    (broken / "downstream.json").write_text(json.dumps({**raw, "verdicts": None}))
    with pytest.raises(ValueError, match="is not chapter 7's results"):
        load_downstream(broken)
