"""Tests for mdl_utils.toy_experiments (chapters 4 and 5): the rows hold what the exact toy
formulas give, the kept run is the best one, the measured DL respects its ceiling, and results
come back from the cache without training."""

from __future__ import annotations

import pytest
import torch

import mdl_utils.toy_experiments as tx
from mdl_utils.toys import joint_probability, splitting_dl, splitting_l0

SPLIT = tx.SplittingSettings(points=((0.3, 0.0), (0.3, 0.8)), n_pairs=2, n_samples=3000, random_seeds=(0,),
                             max_epochs=6)
TREE = tx.HierarchySettings(n_parents=2, children_per_parent=2, dim=12, n_samples=3000, tree_seeds=(0, 1),
                            flat_runs=1, max_epochs=12)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_splitting_rows_carry_the_exact_formulas_and_their_ceiling(tmp_path):
    rows = tx.run_splitting_experiment(SPLIT, cache=tmp_path)
    assert [(r["p"], r["rho"], r["code"]) for r in rows] == [
        (0.3, 0.0, "unsplit"), (0.3, 0.0, "split"), (0.3, 0.8, "unsplit"), (0.3, 0.8, "split")]
    for r in rows:
        p_ab = joint_probability(r["p"], r["rho"])
        exact, l0 = splitting_dl(r["p"], r["p"], p_ab), splitting_l0(r["p"], r["p"], p_ab)
        split = r["code"] == "split"
        assert r["width"] == SPLIT.n_pairs * (3 if split else 2)
        assert r["k"] == pytest.approx(SPLIT.n_pairs * (l0.split if split else l0.unsplit))
        assert r["exact_dl_bits"] == pytest.approx(SPLIT.n_pairs * (exact.split if split else exact.unsplit))
        assert 0 <= r["matched"] <= r["width"] and r["kept"] in ("intended", "random")
        if r["dl_bits"] is not None:
            assert r["test_mse"] <= SPLIT.mse_ceiling and r["bits"] >= 1 and r["dl_bits"] > 0
    assert SPLIT.mse_ceiling == pytest.approx(2.5 * 0.02**2)


def test_results_are_read_back_from_the_cache_without_training(tmp_path, monkeypatch):
    first = tx.run_splitting_experiment(SPLIT, cache=tmp_path)
    tree = tx.run_hierarchy_experiment(TREE, cache=tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("trained although the result is cached")

    monkeypatch.setattr(tx, "train_sae", refuse)
    monkeypatch.setattr(tx, "train_tree_sae", refuse)
    assert tx.run_splitting_experiment(SPLIT, cache=tmp_path) == first
    assert tx.run_hierarchy_experiment(TREE, cache=tmp_path) == tree
    with pytest.raises(AssertionError, match="trained"):  # other settings: not in the cache
        tx.run_splitting_experiment(SPLIT.__class__(**{**SPLIT.__dict__, "max_epochs": 5}), cache=tmp_path)


def test_hierarchy_measures_both_saes_within_one_ceiling_and_the_tree_code_saves(tmp_path):
    r = tx.run_hierarchy_experiment(TREE, cache=tmp_path)
    assert r["ceiling"] == pytest.approx(TREE.ceiling_factor * max(r["tree_mse"], r["flat_mse"]))
    assert r["tree_mse_quantised"] <= r["ceiling"] and r["flat_mse_quantised"] <= r["ceiling"]
    # Sending a child only where its parent fires never costs bits on the same latents.
    assert r["tree_flat_dl_bits"] >= r["tree_dl_bits"] - 1e-9
    assert r["tree_seed"] in TREE.tree_seeds and r["flat_seed"] in TREE.tree_seeds[: TREE.flat_runs]
    n_true = TREE.n_parents * (1 + TREE.children_per_parent)
    assert len(r["tree_cosines"]) == len(r["flat_cosines"]) == n_true
    assert all(-1e-6 <= c <= 1 + 1e-6 for c in r["tree_cosines"] + r["flat_cosines"])
