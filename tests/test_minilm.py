"""Tests for mdl_utils.minilm: the forward pass written here agrees with the transformers
library's BertModel on the same weights, at every layer, and cutting it anywhere changes
nothing."""

from __future__ import annotations

import pytest
import torch

from mdl_utils.minilm import load_minilm, model_dir

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python uses the usual flow control statements known from other languages, with some twists.",
    "A short one.",
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_tokens_and_states_match_the_transformers_bert_at_every_layer(minilm):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoModel.from_pretrained(model_dir()).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir())
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    ids, mask = minilm.batch([minilm.token_ids(t) for t in TEXTS])
    assert torch.equal(ids, enc["input_ids"]) and torch.equal(mask, enc["attention_mask"].bool())
    with torch.no_grad():
        out = ref(**enc, output_hidden_states=True)
    for layer in range(minilm.n_layers + 1):
        ours = minilm.states_at(ids, mask, layer)
        assert torch.allclose(ours[mask], out.hidden_states[layer][mask], atol=1e-4), layer
    # The sentence embedding: mean over real tokens of the last layer, unit length
    # (sentence-transformers' pooling and normalisation for this model), computed by hand.
    m = enc["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((out.last_hidden_state * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(minilm.embed(TEXTS), expected, atol=1e-5)


def test_cutting_the_model_at_any_layer_gives_the_same_embedding(minilm):
    ids, mask = minilm.batch([minilm.token_ids(t) for t in TEXTS])
    whole = minilm.embed(TEXTS)
    assert torch.allclose(whole.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6)
    for layer in range(minilm.n_layers + 1):
        cut = minilm.embed_from(minilm.states_at(ids, mask, layer), mask, layer)
        assert torch.allclose(cut, whole, atol=1e-6), layer
    # Padding does not leak: a text alone and in a padded batch embed the same.
    alone = minilm.embed(TEXTS[2:])
    assert torch.allclose(alone[0], whole[2], atol=1e-5)


def test_bad_input_is_refused_with_a_reason(minilm):
    ids, mask = minilm.batch([minilm.token_ids("hello world")])
    with pytest.raises(ValueError, match=r"layer must lie in \[0, 6\]"):
        minilm.states_at(ids, mask, 7)
    with pytest.raises(ValueError, match="exceeds the model's 510"):
        minilm.batch([[1000] * 600])
    with pytest.raises(ValueError, match="no chunks"):
        minilm.batch([])
