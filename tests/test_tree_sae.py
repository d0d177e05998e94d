"""Tests of mdl_utils.tree_sae: the tree constraint, the tree-coded DL (by hand and against the
joint entropy of the firing pattern), and that training reduces the reconstruction error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdl_utils.toy_data import hierarchical_data
from mdl_utils.tree_sae import TreeSAE, TreeTrainConfig, train_tree_sae, tree_description_length


def _h(q: float) -> float:
    return 0.0 if q in (0.0, 1.0) else -q * math.log2(q) - (1 - q) * math.log2(1 - q)


def _children_need_parents(sae: TreeSAE, acts: torch.Tensor) -> bool:
    parents_on = acts[:, : sae.n_parents] > 0
    children_on = acts[:, sae.n_parents :] > 0
    return not bool((children_on & ~parents_on[:, sae.parent_of_child]).any())


def test_children_fire_only_under_their_parent_in_both_modes():
    torch.manual_seed(0)
    sae = TreeSAE(6, 3, 2, k_parents=1.0, k_children=1.0, seed=0)
    with torch.no_grad():
        sae.b_enc_F.fill_(0.3)  # make many pre-activations positive, so the gate has work to do
        x = torch.randn(500, 6)
        acts = sae.encode(x, use_threshold=False)
        assert _children_need_parents(sae, acts)
        assert int((acts > 0).sum()) == 1000  # 500 parents + 500 children kept by batch top-k
        sae.thresholds.copy_(torch.tensor([0.5, 0.1]))
        acts = sae.encode(x)
        assert _children_need_parents(sae, acts)
        pre = sae.pre_activations(x)
        np.testing.assert_array_equal((acts[:, :3] > 0).numpy(), (pre[:, :3] > 0.5).numpy())
    assert sae.parent_of_child.tolist() == [0, 0, 1, 1, 2, 2]


def test_tree_description_length_by_hand():
    # One parent, one child, 8 samples: the parent fires on 4, the child on 2 of those.
    acts = np.zeros((8, 2))
    acts[:4, 0] = 1.0
    acts[:2, 1] = 1.0
    result = tree_description_length(acts, 1, 1, bits=1)
    assert result.parent_bits[0] == pytest.approx(1.0)  # H(1/2)
    assert result.child_bits[0] == pytest.approx(0.5 * 1.0)  # P(parent) * H(child | parent) = 1/2 * H(1/2)
    assert result.dl_bits == pytest.approx(1.5)
    assert result.flat_dl_bits == pytest.approx(_h(0.5) + _h(0.25))
    assert result.l0 == pytest.approx(6 / 8)


def test_tree_description_length_counts_child_values_conditionally():
    # The child takes two different values (two codes at bits=1) where it fires.
    acts = np.zeros((8, 2))
    acts[:4, 0] = 1.0
    acts[0, 1], acts[1, 1] = 0.2, 1.0  # codes 1 and 2 over the child's range (0, 1]
    result = tree_description_length(acts, 1, 1, bits=1)
    # Given the parent: child is 0, code 1, code 2 with probabilities 1/2, 1/4, 1/4 -> 1.5 bits.
    assert result.child_bits[0] == pytest.approx(0.5 * 1.5)


def test_tree_dl_with_one_child_per_parent_is_the_joint_entropy_of_the_firing_pattern():
    data = hierarchical_data(20_000, n_parents=2, children_per_parent=1, d=8, p_parent=0.4,
                             p_child_given_parent=0.5, noise_std=0.0, seed=0)
    on = (data.features_NF > 0).astype(float)
    result = tree_description_length(on, 2, 1, bits=1)
    # Per parent, the outcome {off, on without its child, on with it} has entropy equal to
    # the tree code's cost (the chain rule); parents are independent, so the costs add.
    expected = 0.0
    for parent, child in ((0, 2), (1, 3)):
        _, counts = np.unique(on[:, parent] + on[:, child], return_counts=True)
        q = counts / counts.sum()
        expected += float(-(q * np.log2(q)).sum())
    assert result.dl_bits == pytest.approx(expected, abs=1e-9)
    assert result.dl_bits < result.flat_dl_bits


def test_tree_dl_with_several_children_codes_each_child_given_its_parent():
    data = hierarchical_data(20_000, n_parents=2, children_per_parent=2, d=8, p_parent=0.4,
                             p_child_given_parent=0.5, noise_std=0.0, seed=0)
    on = data.features_NF > 0
    result = tree_description_length(on.astype(float), 2, 2, bits=1)
    expected = 0.0
    for parent, children in ((0, (2, 3)), (1, (4, 5))):
        rows = on[:, parent]
        expected += _h(rows.mean())
        for child in children:  # each child on its own, among its parent's samples
            expected += rows.mean() * _h(on[rows, child].mean())
    assert result.dl_bits == pytest.approx(expected, abs=1e-9)
    np.testing.assert_allclose(result.parent_bits, [_h(on[:, 0].mean()), _h(on[:, 1].mean())], atol=1e-12)


def test_tree_description_length_rejects_orphan_children_and_bad_shapes():
    acts = np.zeros((4, 2))
    acts[0, 1] = 1.0
    with pytest.raises(ValueError, match="parent is off"):
        tree_description_length(acts, 1, 1, bits=2)
    with pytest.raises(ValueError, match="shape"):
        tree_description_length(np.zeros((4, 3)), 1, 1, bits=2)


def test_tree_sae_rejects_bad_settings():
    with pytest.raises(ValueError, match="n_parents"):
        TreeSAE(4, 0, 2, k_parents=1, k_children=1)
    with pytest.raises(ValueError, match="k_parents"):
        TreeSAE(4, 2, 2, k_parents=3, k_children=1)
    with pytest.raises(ValueError, match="k_children"):
        TreeSAE(4, 2, 2, k_parents=1, k_children=0)


def test_training_reduces_the_error_and_keeps_the_tree():
    torch.set_num_threads(1)
    data = hierarchical_data(4_000, n_parents=2, children_per_parent=2, d=8, p_parent=0.4,
                             p_child_given_parent=0.6, noise_std=0.01, seed=1)
    x_train, x_val = data.x_ND[:3_000], data.x_ND[3_000:]
    untrained = TreeSAE(8, 2, 2, k_parents=0.8, k_children=0.48, seed=0)
    x = torch.as_tensor(x_val)
    with torch.no_grad():
        before = float(((untrained(x) - x) ** 2).mean())
    sae, history = train_tree_sae(untrained, x_train, x_val,
                                  TreeTrainConfig(max_epochs=20, parent_epochs=5, batch_size=128))
    assert untrained.thresholds[0] < 0  # the input SAE is not modified
    assert sae.has_thresholds and len(history.val_mse) >= 6
    with torch.no_grad():
        acts = sae.encode(x)
        after = float(((sae.decode(acts) - x) ** 2).mean())
    assert after < 0.25 * before
    assert after == pytest.approx(min(history.val_mse), rel=1e-5)
    assert _children_need_parents(sae, acts)
    np.testing.assert_allclose(sae.W_dec_FD.detach().norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_train_config_refuses_a_parents_only_phase_that_leaves_no_epoch_for_the_children():
    with pytest.raises(ValueError, match="parent_epochs"):
        TreeTrainConfig(max_epochs=6)  # parent_epochs 10 by default
    with pytest.raises(ValueError, match="max_epochs"):
        TreeTrainConfig(max_epochs=0)
    assert TreeTrainConfig(max_epochs=11).parent_epochs == 10
