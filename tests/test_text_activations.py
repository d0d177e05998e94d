"""Tests for mdl_utils.text_activations: chunks never cross documents and respect the caps,
the stored activations are the model's states at the real tokens (checked against a second
forward pass), and a second call reads the cache."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from mdl_utils.corpus import HTML_SUBDIR, Document, fetch_corpus
from mdl_utils.minilm import load_minilm
from mdl_utils.text_activations import ActivationSpec, chunk_documents, token_activations

WORDS = "the model reads each page of prose and the sparse autoencoder explains what it sees".split()


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def _doc(name: str, n_words: int) -> Document:
    return Document(name, (" ".join(WORDS[i % len(WORDS)] for i in range(n_words)),))


def test_chunks_stay_inside_documents_and_stop_at_the_cap(minilm):
    docs = [_doc("a.html", 50), _doc("b.html", 23)]
    chunks = chunk_documents(minilm, docs, chunk_tokens=16)
    for d in docs:
        ids = minilm.token_ids(d.text)
        mine = [c for c in chunks if c.document == d.name]
        # By hand: ceil(len / 16) chunks, in order, concatenating back to the document.
        assert len(mine) == -(-len(ids) // 16) and [c.start for c in mine] == list(range(0, len(ids), 16))
        assert [i for c in mine for i in c.ids] == ids
    # With a cap: chunks in the order of SHA-256 of "document:start", until 20 tokens, the
    # last cut short; returned in reading order.
    by_hash = sorted(chunks, key=lambda c: hashlib.sha256(f"{c.document}:{c.start}".encode()).digest())
    capped = chunk_documents(minilm, docs, chunk_tokens=16, max_tokens=20)
    assert sum(len(c.ids) for c in capped) == 20
    full, total = [], 0
    for c in by_hash:
        if total >= 20:
            break
        full.append(c)
        total += len(c.ids)
    assert {(c.document, c.start) for c in capped} == {(c.document, c.start) for c in full}
    assert capped == sorted(capped, key=lambda c: (c.document, c.start))
    # A larger cap selects a superset.
    larger = chunk_documents(minilm, docs, chunk_tokens=16, max_tokens=40)
    assert {(c.document, c.start) for c in capped} <= {(c.document, c.start) for c in larger}


def test_stored_activations_are_the_states_at_the_real_tokens_and_are_cached(minilm, tmp_path, monkeypatch):
    pages = tmp_path / "corpus" / HTML_SUBDIR
    pages.mkdir(parents=True)
    for i in range(12):
        body = "".join(f"<p>{' '.join(WORDS[(i + j) % len(WORDS)] for j in range(20 + i))}.</p>" for _ in range(3))
        (pages / f"page{i}.html").write_text(f'<div role="main">{body}</div>')
    monkeypatch.setenv("MDL_CORPUS_DIR", str(tmp_path / "corpus"))
    corpus = fetch_corpus()
    spec = ActivationSpec(layer=2, chunk_tokens=32, max_tokens={"train": 150, "val": None, "test": None})
    acts = token_activations(spec, corpus, minilm, tmp_path / "cache", progress=False)
    assert acts.split("train").dtype == np.float16 and len(acts.split("train")) == 150
    for split in ("train", "val", "test"):
        x, chunks = acts.split(split), acts.chunks[split]
        assert len(x) == sum(len(c.ids) for c in chunks) == acts.meta["n_tokens"][split]
        if not chunks:
            continue
        # Second method: one chunk at a time, [CLS] ... [SEP], states after 2 layers.
        row = 0
        for c in chunks[:3]:
            ids, mask = minilm.batch([list(c.ids)])
            h = minilm.states_at(ids, mask, 2)[0, 1 : 1 + len(c.ids)]
            assert torch.allclose(torch.from_numpy(x[row : row + len(c.ids)].astype(np.float32)), h.float(), atol=1e-2)
            row += len(c.ids)
    # No document in two splits.
    docs = {s: {c.document for c in acts.chunks[s]} for s in ("train", "val", "test")}
    assert not (docs["train"] & docs["val"]) and not (docs["train"] & docs["test"]) and not (docs["val"] & docs["test"])
    meta = json.loads((acts.folder / "meta.json").read_text())
    assert meta["layer"] == 2 and meta["weights_sha256"] == minilm.weights_sha256
    assert meta["text_fingerprint"] == corpus.fingerprint
    # A second call reads the stored collection (same folder, equal arrays, same chunks).
    again = token_activations(spec, corpus, minilm, tmp_path / "cache", progress=False)
    assert again.folder == acts.folder and np.array_equal(again.split("test"), acts.split("test"))
    assert again.chunks == acts.chunks
    # Another layer is another collection.
    other = ActivationSpec(layer=3, chunk_tokens=32, max_tokens=spec.max_tokens)
    assert token_activations(other, corpus, minilm, tmp_path / "cache", progress=False).folder != acts.folder


def test_bad_specs_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="chunk_tokens"):
        ActivationSpec(chunk_tokens=0)
    with pytest.raises(ValueError, match="unknown splits"):
        ActivationSpec(max_tokens={"dev": 10})
