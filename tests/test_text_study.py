"""Tests for mdl_utils.text_study (chapter 8): the embedding change is measured against a
second computation, the calibration rule is the median it claims, and a miniature job runs,
writes its results, and resumes without training again."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mdl_utils.corpus import HTML_SUBDIR, fetch_corpus
from mdl_utils.minilm import load_minilm
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.study_plan import QUICK_RECIPE, StudySettings
from mdl_utils.study_store import load_rows
from mdl_utils.text_activations import ActivationSpec, token_activations
from mdl_utils.study_summary import StudySummary
from mdl_utils.text_study import (
    EXTRA_FIELDS,
    EmbeddingMeasure,
    TextStudySettings,
    calibrate_embedding_epsilon,
    load_text_study,
    rewrite_summaries,
    run_text_study,
    text_data,
)

WORDS = ("a sparse autoencoder explains the activations of a model with few features each of which "
         "names a direction and the description length counts the bits it needs").split()  # fmt: skip


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    pages = root / HTML_SUBDIR
    pages.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        paragraphs = "".join(f"<p>{' '.join(rng.choice(WORDS, size=30))}.</p>" for _ in range(4))
        (pages / f"page{i:02d}.html").write_text(f'<div role="main">{paragraphs}</div>')
    return root


SMALL = TextStudySettings(
    activations=ActivationSpec(chunk_tokens=30, max_tokens={"train": 1200, "val": 300, "test": 300}),
    fvus=(0.5,),
    study=StudySettings(
        n_train=None, n_test=None, widths=(64,), fill_widths=False, seeds=(0,), k_start=16.0, n_boot=10,
        max_trainings_per_search=6, train={**QUICK_RECIPE, "max_epochs": 8},
    ),
)  # fmt: skip


def test_calibration_is_the_median_over_reachable_widths():
    summary = {"widths": [
        {"width": 8, "seeds": {"0": {"reachable": False}}},
        {"width": 16, "seeds": {"0": {"reachable": True, "embedding_change_quantised": 0.30}}},
        {"width": 32, "seeds": {"0": {"reachable": True, "embedding_change_quantised": 0.10}}},
        {"width": 64, "seeds": {"0": {"reachable": True, "embedding_change_quantised": 0.20}},
         "other": 1},
    ]}  # fmt: skip
    cal = calibrate_embedding_epsilon(summary, 0)
    assert cal["epsilon"] == 0.20 and cal["per_width"] == {"16": 0.30, "32": 0.10, "64": 0.20}
    with pytest.raises(ValueError, match="nothing to calibrate on"):
        calibrate_embedding_epsilon({"widths": summary["widths"][:1]}, 0)


def test_the_full_profile_runs_with_the_epsilon_scans_cost_rules_and_the_quick_slice_without():
    from mdl_utils.epsilon_scan import EXTEND_DOWN_TO, REPLICATE_WITHIN, STOP_WIDENING, scan_settings
    from mdl_utils.study_plan import StudySettings
    from mdl_utils.text_study import settings_for

    full, quick = settings_for("full").study, settings_for("quick").study
    # The same three rules, with the same margins, as the scan's tolerances other than chapter 3's.
    scan = scan_settings(StudySettings(n_train=None, n_test=None, widths=full.widths), 0.02)
    rules = ("stop_widening", "extend_down_to", "replicate_within")
    assert [getattr(full, r) for r in rules] == [getattr(scan, r) for r in rules]
    assert (full.stop_widening, full.extend_down_to, full.replicate_within) == (
        STOP_WIDENING, EXTEND_DOWN_TO, REPLICATE_WITHIN)  # fmt: skip
    assert [getattr(quick, r) for r in rules] == [None, None, None]
    assert StudySettings.from_dict(full.to_dict()) == full


def test_an_fvu_arm_searches_no_width_the_rank_bound_rules_out():
    from mdl_utils.text_study import _arm_settings, min_width_for

    floor = [0.9, 0.6, 0.4, 0.1, 0.0]  # the rank bound at widths 1 .. 5
    assert [min_width_for(floor, e) for e in (1.0, 0.6, 0.5, 0.1, 0.05, 0.0)] == [1, 2, 3, 4, 5, 5]
    with pytest.raises(ValueError, match="widths 1 .. d"):
        min_width_for([], 0.1)
    study, loss, eps = _arm_settings(SMALL, "fvu-0.5", 0.8, None, floor)  # epsilon 0.4
    assert (loss, eps, study.min_width) == ("mse", 0.4, 3)
    # The embedding arm's loss is not the MSE: the bound says nothing about it.
    study, loss, _ = _arm_settings(replace(SMALL, embedding_epsilon=0.1), "embedding", 0.8, None, floor)
    assert (loss, study.min_width) == ("embedding", None)


def test_settings_refuse_bad_tolerances():
    with pytest.raises(ValueError, match="fvus must lie in"):
        replace(SMALL, fvus=(1.5,))
    with pytest.raises(ValueError, match="at least one"):
        replace(SMALL, fvus=())
    with pytest.raises(ValueError, match="embedding_epsilon"):
        replace(SMALL, embedding_epsilon=0.0)


def test_embedding_change_is_zero_for_the_states_themselves_and_matches_a_second_computation(
    minilm, corpus_dir, monkeypatch, tmp_path
):
    monkeypatch.setenv("MDL_CORPUS_DIR", str(corpus_dir))
    acts = token_activations(SMALL.activations, fetch_corpus(), minilm, tmp_path, progress=False)
    chunks = acts.chunks["test"]
    measure = EmbeddingMeasure(minilm, chunks, 3, loss="embedding", epsilon=0.05, variance=1.0, batch_size=4)
    x = torch.from_numpy(acts.split("test").astype(np.float32))
    assert measure.n_tokens == len(x)
    assert measure.change(x) < 1e-4  # the float16 copy of the states themselves
    # Second computation: chunk by chunk, states with every real token set to zero.
    expected = []
    for c in chunks:
        ids, mask = minilm.batch([list(c.ids)])
        h = minilm.states_at(ids, mask, 3)
        clean = minilm.embed_from(h, mask, 3)
        h[0, 1 : 1 + len(c.ids)] = 0.0
        expected.append(1.0 - float((minilm.embed_from(h, mask, 3) * clean).sum()))
    assert measure.change(torch.zeros_like(x)) == pytest.approx(np.mean(expected), rel=1e-5)
    with pytest.raises(ValueError, match="reconstructed tokens"):
        measure.change(x[:-1])
    with pytest.raises(ValueError, match="loss must be"):
        EmbeddingMeasure(minilm, chunks, 3, loss="kl", epsilon=0.05, variance=1.0)


def test_an_sae_measured_under_the_embedding_tolerance_sits_in_the_band(minilm, corpus_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MDL_CORPUS_DIR", str(corpus_dir))
    acts = token_activations(SMALL.activations, fetch_corpus(), minilm, tmp_path, progress=False)
    x = acts.split("test").astype(np.float32)
    # An SAE that keeps every dimension (identity decoder, k = d): quantisation is the only loss.
    d = x.shape[1]
    sae = BatchTopKSAE(d, 2 * d, float(d), seed=0)
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc_FD.copy_(torch.cat([eye, -eye]))
        sae.W_dec_FD.copy_(torch.cat([eye, -eye]))
        sae.b_enc_F.zero_()
        sae.b_dec_D.zero_()
        sae.threshold.fill_(0.0)
    measure = EmbeddingMeasure(minilm, acts.chunks["test"], 3, loss="embedding", epsilon=0.02, variance=1.0)
    m = measure(sae, x)
    assert m["feasible"] and m["embedding_change"] < 1e-3
    assert 0.999 * 0.02 <= m["precision"]["mse_quantised"] <= 0.02 or m["precision"]["status"] != "in_band"
    assert m["embedding_change_quantised"] == m["precision"]["mse_quantised"]
    assert m["fvu"] == pytest.approx(m["mse"])  # variance 1


def test_miniature_job_writes_both_arms_and_resumes_without_training(minilm, corpus_dir, monkeypatch, tmp_path):
    from mdl_utils.text_study import min_width_for

    monkeypatch.setenv("MDL_CORPUS_DIR", str(corpus_dir))
    out = tmp_path / "out"
    payload = run_text_study(SMALL, out, cache=tmp_path / "cache", progress=False)
    assert set(payload["arms"]) == {"fvu-0.5", "embedding"}
    first = payload["arms"]["fvu-0.5"]["summary"]
    assert first["complete"] and first["n_saes_trained"] >= 2
    cal = json.loads((out / "calibration.json").read_text())
    assert payload["arms"]["embedding"]["epsilon"] == cal["epsilon"]
    # Every row of the embedding arm was measured against the calibrated tolerance.
    for row in load_rows(out / "embedding"):
        assert row["measure"]["epsilon"] == cal["epsilon"] and row["measure"]["loss"] == "embedding"
    before = {p.name: p.read_text() for p in sorted(out.glob("*/rows/*.json"))}
    again = run_text_study(SMALL, out, cache=tmp_path / "cache", progress=False)
    assert {p.name: p.read_text() for p in sorted(out.glob("*/rows/*.json"))} == before
    assert again["n_saes_trained"] == payload["n_saes_trained"]
    # The total counts each distinct SAE once: exactly the entries the shared cache holds (every
    # training stores one), and their training times, however many arms searched through them.
    entries = [json.loads(p.read_text()) for p in sorted((tmp_path / "cache").glob("*/entry.json"))]
    assert payload["n_saes_trained"] == len(entries) > 0
    assert payload["training_time_s"] == pytest.approx(
        sum(e["row"]["train_seconds"] for e in entries), abs=0.1
    )
    typed = load_text_study(out)
    eps, summary = typed.arms["fvu-0.5"]
    assert summary is not None and eps == pytest.approx(0.5 * payload["variance"])
    assert typed.info["activations"]["n_tokens"] == {"train": 1200, "val": 300, "test": 300}
    # The rank bound at every width up to d, and no SAE of either arm below it at its width.
    bound = payload["rank_bound_mse"]
    assert len(bound) == payload["d_model"] == 384 and bound[-1] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(bound, bound[1:]))
    assert first["settings"]["min_width"] == min_width_for(bound, 0.5 * payload["variance"])
    assert "min_width" not in payload["arms"]["embedding"]["summary"]["settings"]
    for arm in ("fvu-0.5", "embedding"):
        for row in load_rows(out / arm):
            assert row["measure"]["mse"] >= bound[row["width"] - 1] * (1 - 1e-6)
    for row in load_rows(out / "fvu-0.5"):  # its loss is the MSE, so at its precision too
        assert row["measure"]["precision"]["mse_quantised"] >= bound[row["width"] - 1] * (1 - 1e-6)
    # Rows measured on other activations (here: format 2's float32 states) are not resumed.
    stale = json.loads((out / "transformer.json").read_text())
    stale["activations"]["format_version"] = 2
    (out / "transformer.json").write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="other activations \\(format_version: 2 then, 3 now\\)"):
        run_text_study(SMALL, out, cache=tmp_path / "cache", progress=False)
    assert {p.name: p.read_text() for p in sorted(out.glob("*/rows/*.json"))} == before


def _rows_without_timings(out):
    rows = {}
    for path in sorted(out.glob("*/rows/*.json")):
        entries = json.loads(path.read_text())
        for row in entries:
            row["train"].pop("train_seconds")
        rows[f"{path.parent.parent.name}/{path.name}"] = entries
    return rows


def test_arms_run_in_separate_calls_give_the_rows_of_one_whole_run(minilm, corpus_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MDL_CORPUS_DIR", str(corpus_dir))
    whole = tmp_path / "whole"
    run_text_study(SMALL, whole, cache=tmp_path / "cache-whole", progress=False)
    split, cache = tmp_path / "split", tmp_path / "cache-split"  # nothing shared: every SAE trained again
    # The embedding arm alone, before the FVU arm's first seed: no tolerance yet, so nothing is trained.
    early = run_text_study(SMALL, split, cache=cache, progress=False, arms=["embedding"])
    assert early["n_saes_trained"] == 0 and early["arms"]["embedding"]["epsilon"] is None
    assert not (split / "calibration.json").exists()
    alone = run_text_study(SMALL, split, cache=cache, progress=False, arms=["fvu-0.5"])
    assert alone["arms"]["fvu-0.5"]["summary"]["complete"] and alone["arms"]["embedding"]["summary"] is None
    assert not (split / "calibration.json").exists()  # the calibration belongs to the embedding arm
    last = run_text_study(SMALL, split, cache=cache, progress=False, arms=["embedding"])
    assert (split / "calibration.json").read_text() == (whole / "calibration.json").read_text()
    rows = _rows_without_timings(split)
    assert {k.split("/")[0] for k in rows} == {"fvu-0.5", "embedding"}
    assert rows == _rows_without_timings(whole)
    reference = json.loads((whole / "transformer.json").read_text())
    for arm in ("fvu-0.5", "embedding"):
        assert last["arms"][arm]["summary"]["dl_star"] == reference["arms"][arm]["summary"]["dl_star"]


def test_an_arm_summary_on_disk_covers_every_seed_even_when_the_job_stops_between_phases(
    minilm, corpus_dir, monkeypatch, tmp_path
):
    import mdl_utils.text_study as text_study
    from mdl_utils.study_summary import read_summary, summarise

    monkeypatch.setenv("MDL_CORPUS_DIR", str(corpus_dir))
    two = replace(SMALL, study=replace(SMALL.study, seeds=(0, 1)))
    out, cache = tmp_path / "out", tmp_path / "cache"
    real = text_study.run_study

    class Killed(Exception):
        pass

    def killed_after_the_first_seed(settings, *args, **kwargs):
        if settings.seeds != (0,):
            raise Killed  # the job dies as its every-seed phase begins, before any of its rows
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(text_study, "run_study", killed_after_the_first_seed)
    with pytest.raises(Killed):
        run_text_study(two, out, cache=cache, progress=False, arms=["fvu-0.5"])
    rows = load_rows(out / "fvu-0.5")
    assert {r["seed"] for r in rows} == {0}
    # Seed 1 has not started: the file must say so, not read as a finished study of seed 0.
    on_disk = read_summary(out / "fvu-0.5" / "summary.json")
    assert on_disk.settings.seeds == (0, 1)
    assert not on_disk.complete and on_disk.remaining == ((64, 1),)
    assert on_disk.resolution is not None and on_disk.resolution.provisional
    run = json.loads((out / "fvu-0.5" / "summary.json").read_text())
    assert run["machine"] and run["code_version"]  # the run's provenance
    # --summary-only repairs a file an older job left with the first seed only, keeping the
    # provenance of the run that trained the rows.
    first_only = summarise(replace(on_disk.settings, seeds=(0,)), rows, d_in=384, extra_fields=EXTRA_FIELDS)
    assert first_only["complete"]
    stale = {**first_only, "date": "then", "machine": "the training machine"}
    (out / "fvu-0.5" / "summary.json").write_text(json.dumps(stale))
    acts, _, variance, _ = text_data(two, cache)
    payload = rewrite_summaries(two, out, acts=acts, variance=variance)
    again = read_summary(out / "fvu-0.5" / "summary.json")
    assert again.settings.seeds == (0, 1) and again.remaining == ((64, 1),)
    assert again.dl_star == StudySummary.from_dict(payload["arms"]["fvu-0.5"]["summary"]).dl_star
    kept = json.loads((out / "fvu-0.5" / "summary.json").read_text())
    assert (kept["date"], kept["machine"]) == ("then", "the training machine")


def test_arm_selection_refuses_unknown_empty_and_repeated_names(tmp_path):
    from mdl_utils.text_study import check_arms, main

    assert check_arms(SMALL, None) == ["fvu-0.5", "embedding"]
    assert check_arms(SMALL, ["embedding", "fvu-0.5"]) == ["fvu-0.5", "embedding"]  # run in the job's order
    with pytest.raises(ValueError, match="unknown arm\\(s\\) 'fvu-0.2': this profile's arms are fvu-0.5, embedding"):
        check_arms(SMALL, ["fvu-0.2"])
    with pytest.raises(ValueError, match="at least one arm"):
        check_arms(SMALL, [])
    with pytest.raises(ValueError, match="twice"):
        check_arms(SMALL, ["embedding", "embedding"])
    with pytest.raises(TypeError, match="not the string"):
        check_arms(SMALL, "embedding")
    with pytest.raises(SystemExit) as exit_info:  # before any text is read or model loaded
        main(["--profile", "quick", "--out", str(tmp_path), "--arms", "fvu-0.7"])
    assert exit_info.value.code == 2 and not any(tmp_path.iterdir())


FULL = __import__("pathlib").Path(__file__).resolve().parents[1] / "results" / "full" / "transformer"


@pytest.mark.skipif(not (FULL / "transformer.json").is_file(), reason="no committed full chapter-8 results")
def test_committed_full_results_reproduce_from_a_fresh_collection(minilm):
    """From a clean clone: the text fetched again, the test tokens collected again, and each
    arm's first stored SAE measured again give the committed rows' MSE and DL."""
    from mdl_utils.corpus import read_documents, split_documents
    from mdl_utils.study_store import load_selected_sae
    from mdl_utils.text_activations import chunk_documents, collect_states
    from mdl_utils.text_study import settings_for

    results = load_text_study(FULL)
    meta, settings = results.info["activations"], settings_for("full")
    corpus = fetch_corpus(progress=False)
    assert corpus.fingerprint == meta["text_fingerprint"] and minilm.weights_sha256 == meta["weights_sha256"]
    docs = split_documents(read_documents(corpus))["test"]
    chunks = chunk_documents(minilm, docs, chunk_tokens=settings.activations.chunk_tokens,
                             max_tokens=settings.activations.max_tokens["test"])
    x = collect_states(minilm, chunks, settings.activations.layer, progress=False).astype(np.float16)
    assert len(x) == meta["n_tokens"]["test"]
    x = x.astype(np.float32)
    checked, stored_any = 0, any(any((FULL / arm / "saes").glob("w*-s*.json")) for arm in results.arms)
    for arm, (eps, summary) in results.arms.items():
        stored = sorted((FULL / arm / "saes").glob("w*-s*.json")) if summary is not None else []
        if not stored:
            continue
        width, seed = (int(p) for p in stored[0].stem[1:].split("-s"))
        sae = load_selected_sae(FULL / arm, width, seed)
        row = summary.searches[(width, seed)].selected
        measure = EmbeddingMeasure(minilm, chunks, settings.activations.layer,
                                   loss="embedding" if arm == "embedding" else "mse", epsilon=eps,
                                   variance=results.info["variance"])
        m = measure(sae, x)
        assert m["mse"] == pytest.approx(row.mse, rel=1e-5)
        assert m["dl_bits"] == pytest.approx(row.dl_bits, rel=1e-5)
        checked += 1
    assert checked >= 1 or not stored_any


@pytest.mark.skipif(not (FULL / "transformer.json").is_file(), reason="no committed full chapter-8 results")
def test_committed_widths_whose_k_search_ran_out_are_named_from_their_rows():
    """A (width, seed) search that used up its cap on trainings with its smallest DL at an end of
    the k it trained (the smallest k above k_min, or the largest below k = width) has DL still
    falling: read from the rows alone, these must be exactly the summary's capped widths, and
    no arm with one is resolved."""
    results = load_text_study(FULL)
    for arm, (_, summary) in results.arms.items():
        if summary is None:
            continue
        rows = load_rows(FULL / arm)
        cap = summary.settings.max_trainings_per_search
        by_hand = set()
        for d in summary.dl_star:
            for seed in d.dl_by_seed:
                mine = [r for r in rows if r["width"] == d.width and r["seed"] == seed]
                met = [r for r in mine if r["measure"]["dl_bits"] is not None]
                best = min(met, key=lambda r: r["measure"]["dl_bits"])
                ks = [r["k"] for r in mine]
                at_low = best["k"] == min(ks) and best["k"] > summary.settings.k_min
                at_high = best["k"] == max(ks) and best["k"] < d.width
                if len(mine) >= cap and (at_low or at_high):
                    by_hand.add(d.width)
        assert summary.widths_capped == sorted(by_hand), arm
        if by_hand:
            assert summary.bracket.capped == tuple(sorted(by_hand)) and not summary.verdict.resolved
