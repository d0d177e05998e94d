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
        ours = minilm.states_at(ids, mask, layer).float()
        assert torch.allclose(ours[mask], out.hidden_states[layer][mask], atol=1e-4), layer
    # The sentence embedding: mean over real tokens of the last layer, unit length
    # (sentence-transformers' pooling and normalisation for this model), computed by hand.
    m = enc["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((out.last_hidden_state * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(minilm.embed(TEXTS).float(), expected, atol=1e-5)


def test_cutting_the_model_at_any_layer_gives_the_same_embedding(minilm):
    ids, mask = minilm.batch([minilm.token_ids(t) for t in TEXTS])
    whole = minilm.embed(TEXTS)
    assert torch.allclose(whole.norm(dim=-1), torch.ones(len(TEXTS), dtype=whole.dtype), atol=1e-6)
    for layer in range(minilm.n_layers + 1):
        cut = minilm.embed_from(minilm.states_at(ids, mask, layer), mask, layer)
        assert torch.allclose(cut, whole, atol=1e-6), layer
    # Padding does not leak: a text alone and in a padded batch embed the same.
    alone = minilm.embed(TEXTS[2:])
    assert torch.allclose(alone[0], whole[2], atol=1e-5)


_STATES_IN_FLOAT16 = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from mdl_utils.minilm import load_minilm
m = load_minilm()
ids = torch.randint(1000, 29000, (8, 126), generator=torch.Generator().manual_seed(0)).tolist()
b, mask = m.batch(ids)
np.save(sys.argv[1], m.states_at(b, mask, 3).to(torch.float16).numpy())
"""


def test_stored_states_do_not_depend_on_the_processors_kernels(tmp_path):
    """The states chapter 8 stores (float16) are the same whichever vector kernels torch and MKL
    use: computed here with the kernels this machine picks and, in a second process, with
    torch's portable kernels and MKL's processor-independent branch."""
    import os
    import subprocess
    import sys

    import numpy as np

    script = tmp_path / "states.py"
    script.write_text(_STATES_IN_FLOAT16)
    outs = {}
    for name, extra in {"native": {}, "portable": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}}.items():
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")} | extra
        subprocess.run([sys.executable, str(script), str(tmp_path / f"{name}.npy")], env=env, check=True)
        outs[name] = np.load(tmp_path / f"{name}.npy")
    assert outs["native"].shape == (8, 128, 384)
    differ = int((outs["native"].view(np.uint16) != outs["portable"].view(np.uint16)).sum())
    assert differ == 0, f"{differ} of {outs['native'].size} float16 states differ between the two kernel sets"


def test_bad_input_is_refused_with_a_reason(minilm):
    ids, mask = minilm.batch([minilm.token_ids("hello world")])
    with pytest.raises(ValueError, match=r"layer must lie in \[0, 6\]"):
        minilm.states_at(ids, mask, 7)
    with pytest.raises(ValueError, match="exceeds the model's 510"):
        minilm.batch([[1000] * 600])
    with pytest.raises(ValueError, match="no chunks"):
        minilm.batch([])
