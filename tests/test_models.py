"""Tests for mdl_utils.models: the split classifier, the splice loss, training, persistence,
and the committed classifier's accuracy recomputed from its weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mdl_utils import models
from mdl_utils.models import ClassifierConfig, MLPClassifier

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "full" / "downstream"


def _hand_model() -> MLPClassifier:
    """d_in 3 -> 2 hidden units -> 2 classes, with weights set by hand."""
    model = MLPClassifier((2,), d_in=3, n_classes=2, seed=0)
    with torch.no_grad():
        first, last = model.to_hidden_net[0], model.from_hidden_net[0]
        first.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 2.0]]))
        first.bias.copy_(torch.tensor([0.0, -1.0]))
        last.weight.copy_(torch.eye(2))
        last.bias.zero_()
    return model


def test_the_two_halves_compose_to_the_forward_pass_and_the_hidden_layer_is_relu_of_affine():
    model = _hand_model()
    x = torch.tensor([[2.0, 1.0, 1.0], [0.0, 3.0, 0.0]])
    h = model.to_hidden(x)
    # By hand: relu([2-1, 2-1]) = [1, 1]; relu([0-3, 0-1]) = [0, 0].
    assert torch.equal(h, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert torch.equal(model(x), model.from_hidden(h))
    assert model.d_hidden == 2


def test_splice_loss_matches_hand_computed_cross_entropies_and_accuracies():
    model = _hand_model()
    h = np.array([[1.0, 0.0]])  # logits [1, 0]: CE of class 0 = log(1 + e^-1), correct
    h_hat = np.array([[0.0, 1.0]])  # logits [0, 1]: CE = log(1 + e), wrong
    result = models.splice_loss(model, h, h_hat, np.array([0]))
    assert result.ce_clean == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-12)
    assert result.ce_spliced == pytest.approx(math.log1p(math.e), abs=1e-12)
    assert result.ce_increase == pytest.approx(1.0, abs=1e-12)  # log(1+e) - log(1+e^-1) = 1
    assert result.accuracy_clean == 1.0 and result.accuracy_spliced == 0.0
    assert result.mse == pytest.approx(1.0)  # ((0-1)^2 + (1-0)^2) / 2
    assert result.n_samples == 1


def test_splicing_in_the_activations_themselves_costs_nothing():
    model = MLPClassifier((256, 256), seed=3)
    rng = np.random.default_rng(0)
    x = rng.random((50, 784), dtype=np.float32)
    h = models.hidden_activations(model, x)
    assert h.shape == (50, 256) and (h >= 0).all()
    y = rng.integers(0, 10, 50)
    result = models.splice_loss(model, h, h.copy(), y)
    assert result.ce_increase == 0.0 and result.mse == 0.0
    assert result.accuracy_spliced == result.accuracy_clean == models.accuracy(model, x, y)
    assert result.ce_clean == pytest.approx(models.cross_entropy(model, h, y), abs=1e-12)


def test_bad_inputs_are_rejected_with_a_message():
    model = _hand_model()
    h = np.ones((2, 2))
    with pytest.raises(ValueError, match="shape"):
        models.splice_loss(model, h, np.ones((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="differ in shape"):
        models.splice_loss(model, h, np.ones((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        models.splice_loss(model, h, np.full((2, 2), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match="0..1"):
        models.splice_loss(model, h, h, np.array([0, 2]))
    with pytest.raises(ValueError, match="integers"):
        models.splice_loss(model, h, h, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D array of 2"):
        models.splice_loss(model, h, h, np.array([0]))
    with pytest.raises(ValueError, match="pixels"):
        model.to_hidden(torch.ones(2, 4))
    with pytest.raises(ValueError, match="hidden"):
        ClassifierConfig(hidden=())
    with pytest.raises(ValueError, match="epochs"):
        ClassifierConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        ClassifierConfig(lr=-1.0)


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten well-separated Gaussian blobs in 784 dimensions: an easy 10-class problem."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).random((10, 784)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return centres[y] + 0.05 * rng.standard_normal((n, 784)).astype(np.float32), y


def test_training_is_seeded_and_learns_an_easy_problem():
    x, y = _blobs(600, 0)
    config = ClassifierConfig(hidden=(32,), epochs=3, batch_size=64, seed=1)
    a, history = models.train_classifier(config, x, y)
    b, _ = models.train_classifier(config, x, y)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert history.train_ce[-1] < history.train_ce[0]
    x_test, y_test = _blobs(300, 1)
    assert models.accuracy(a, x_test, y_test) > 0.95
    c, _ = models.train_classifier(ClassifierConfig(hidden=(32,), epochs=3, batch_size=64, seed=2), x, y)
    assert not torch.equal(a.to_hidden_net[0].weight, c.to_hidden_net[0].weight)


def test_save_and_load_round_trip(tmp_path):
    model = MLPClassifier((16, 8), d_in=20, n_classes=3, seed=5)
    x = torch.rand(7, 20)
    models.save_classifier(model, tmp_path / "clf", metadata={"note": "x"})
    loaded, meta = models.load_classifier(tmp_path / "clf.safetensors")
    assert meta == {"note": "x"} and loaded.hidden == (16, 8) and loaded.n_classes == 3
    assert torch.equal(loaded(x), model(x))
    models.save_classifier(model, tmp_path / "half", dtype=torch.float16)
    half, _ = models.load_classifier(tmp_path / "half")
    assert torch.allclose(half(x), model(x), atol=1e-2)
    assert (tmp_path / "half.safetensors").stat().st_size < (tmp_path / "clf.safetensors").stat().st_size
    meta_path = tmp_path / "clf.json"
    raw = json.loads(meta_path.read_text())
    raw["format_version"] = 99
    meta_path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="format"):
        models.load_classifier(tmp_path / "clf")
    with pytest.raises(ValueError, match="dtype"):
        models.save_classifier(model, tmp_path / "bad", dtype=torch.int8)


def test_committed_classifier_reproduces_its_recorded_accuracy_and_cross_entropy(mnist_source_dir):
    if not (COMMITTED / "downstream.json").is_file():
        pytest.skip("no committed full-profile results (python -m mdl_utils downstream --profile full)")
    from mdl_utils.data import load_mnist

    payload = json.loads((COMMITTED / "downstream.json").read_text())
    model, meta = models.load_classifier(COMMITTED / payload["classifier"]["path"])
    assert model.d_hidden >= 256
    x_test, y_test = load_mnist("test")
    acc = models.accuracy(model, x_test, y_test)
    assert acc >= 0.98
    assert acc == pytest.approx(payload["classifier"]["test_accuracy"], abs=1e-12)
    ce = models.cross_entropy(model, models.hidden_activations(model, x_test), y_test)
    assert ce == pytest.approx(payload["classifier"]["test_ce"], abs=1e-6)
