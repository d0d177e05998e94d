"""Chapter 8's data: the residual stream of all-MiniLM-L6-v2 on the Python documentation.

:func:`chunk_documents` cuts each document (:mod:`mdl_utils.corpus`) into consecutive chunks of
at most ``chunk_tokens`` WordPiece tokens, never across documents; each chunk is run through the
model as ``[CLS] chunk [SEP]`` (:mod:`mdl_utils.minilm`), and the states after ``layer``
layers of its real tokens (not ``[CLS]``/``[SEP]``) are the activations, one row per token.
:func:`token_activations` collects them once per split with a progress bar and stores them in
float16 (``<split>.npy``; the model computes them in float64) with the chunks' token ids
(``<split>-tokens.npz``, so a splice can rerun exactly those chunks) and the provenance (``meta.json``: model and weights' SHA-256,
layer, text package, version, checksums, token counts, wall time), in a folder named by a hash
of all of that, so a changed input recomputes and an unchanged one is reused.

A split may be capped at ``max_tokens``: its chunks are then a sample spread over all of the
split's documents (taken in the order of a hash of document and position until the cap), so
the quick profile's slice and the full profile's data are drawn the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdl_utils.corpus import Corpus, Document, read_documents, split_documents
from mdl_utils.io import atomic_write_text
from mdl_utils.minilm import MODEL_NAME, MODEL_PACKAGE, MiniLM
from mdl_utils.profiles import machine_description

__all__ = [
    "ActivationSpec",
    "Chunk",
    "TokenActivations",
    "chunk_documents",
    "collect_states",
    "token_activations",
    "FORMAT_VERSION",
]

#: The version of the stored activations' layout (part of the folder's key).
FORMAT_VERSION = 3  # 3: states computed in float64 (2: float32)


@dataclass(frozen=True)
class ActivationSpec:
    """What to collect.

    Attributes:
        layer: the residual stream after this many of the model's 6 layers (3: the middle).
        chunk_tokens: tokens per chunk (the model sees ``chunk_tokens + 2`` with [CLS], [SEP]).
        max_tokens: per split, the cap on tokens (``None``: all of the split).
        batch_size: chunks per forward pass.
    """

    layer: int = 3
    chunk_tokens: int = 126
    max_tokens: dict[str, int | None] = field(default_factory=lambda: {"train": None, "val": None, "test": None})
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        unknown = set(self.max_tokens) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"max_tokens names unknown splits {sorted(unknown)}; splits: train, val, test")
        for split, cap in self.max_tokens.items():
            if cap is not None and cap < 1:
                raise ValueError(f"max_tokens[{split!r}] must be >= 1 or None, got {cap}")


@dataclass(frozen=True)
class Chunk:
    """Consecutive tokens of one document: its name, where the chunk starts in it, the ids."""

    document: str
    start: int
    ids: tuple[int, ...]


def _order(chunk: Chunk) -> bytes:
    return hashlib.sha256(f"{chunk.document}:{chunk.start}".encode()).digest()


def chunk_documents(
    model: MiniLM, docs: Sequence[Document], *, chunk_tokens: int, max_tokens: int | None = None
) -> list[Chunk]:
    """Each document's tokens cut into chunks of at most ``chunk_tokens``, in reading order
    (documents by name, then position).

    With ``max_tokens``, a sample of the chunks spread over every document: chunks are taken
    in the order of a hash of (document, start) until the cap (the last one cut short), then
    put back in reading order. Which chunks a cap selects does not depend on the cap, only
    where it stops, so a smaller slice is a subset of a larger one.
    """
    chunks = [
        Chunk(doc.name, start, tuple(ids[start : start + chunk_tokens]))
        for doc in docs
        for ids in [model.token_ids(doc.text)]
        for start in range(0, len(ids), chunk_tokens)
    ]
    if max_tokens is not None:
        chosen: list[Chunk] = []
        total = 0
        for c in sorted(chunks, key=_order):
            if total >= max_tokens:
                break
            piece = c if total + len(c.ids) <= max_tokens else Chunk(c.document, c.start, c.ids[: max_tokens - total])
            chosen.append(piece)
            total += len(piece.ids)
        chunks = chosen
    return sorted(chunks, key=lambda c: (c.document, c.start))


def collect_states(
    model: MiniLM, chunks: Sequence[Chunk], layer: int, *, batch_size: int = 32, progress: bool = True, desc: str = ""
) -> np.ndarray:
    """The states after ``layer`` layers at every real token of ``chunks``, in chunk order,
    (total tokens, d) in the model's dtype (float64)."""
    from tqdm.auto import tqdm

    parts: list[np.ndarray] = []
    bar = tqdm(total=sum(len(c.ids) for c in chunks), unit="token", desc=desc, disable=not progress)
    for i in range(0, len(chunks), batch_size):
        group = [list(c.ids) for c in chunks[i : i + batch_size]]
        ids, mask = model.batch(group)
        h = model.states_at(ids, mask, layer)
        for row, c in enumerate(group):
            parts.append(h[row, 1 : 1 + len(c)].numpy())
        bar.update(sum(len(c) for c in group))
    bar.close()
    return np.concatenate(parts) if parts else np.zeros((0, model.d_model), dtype=np.float64)


@dataclass
class TokenActivations:
    """One collection: per split the activations (float16, tokens x d), the chunks they came
    from (in the same order), and the provenance ``meta``."""

    acts: dict[str, np.ndarray]
    chunks: dict[str, list[Chunk]]
    meta: dict[str, Any]
    folder: Path

    def split(self, name: str) -> np.ndarray:
        if name not in self.acts:
            raise KeyError(f"no split {name!r}; splits: {sorted(self.acts)}")
        return self.acts[name]


def _key(spec: ActivationSpec, corpus: Corpus, model: MiniLM) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "spec": asdict(spec) | {"batch_size": None},  # batching does not change the values
        "text": corpus.fingerprint,
        "weights": model.weights_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _save_chunks(path: Path, chunks: Sequence[Chunk]) -> None:
    names = sorted({c.document for c in chunks})
    index = {n: i for i, n in enumerate(names)}
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(
        tmp,
        documents=np.array(names),
        doc=np.array([index[c.document] for c in chunks], dtype=np.int32),
        start=np.array([c.start for c in chunks], dtype=np.int64),
        length=np.array([len(c.ids) for c in chunks], dtype=np.int32),
        ids=np.array([i for c in chunks for i in c.ids], dtype=np.int32),
    )
    os.replace(tmp, path)


def _load_chunks(path: Path) -> list[Chunk]:
    with np.load(path) as f:
        names, doc, start, length, ids = f["documents"], f["doc"], f["start"], f["length"], f["ids"]
    ends = np.cumsum(length)
    return [
        Chunk(str(names[d]), int(s), tuple(int(i) for i in ids[e - n : e]))
        for d, s, n, e in zip(doc, start, length, ends)
    ]


def token_activations(
    spec: ActivationSpec, corpus: Corpus, model: MiniLM, cache: str | os.PathLike[str], *, progress: bool = True
) -> TokenActivations:
    """The activations of every split, from the cache when this exact collection was made
    before, otherwise collected now and stored (see the module's docstring)."""
    folder = Path(cache) / f"minilm-acts-{_key(spec, corpus, model)}"
    meta_path = folder / "meta.json"
    splits = ("train", "val", "test")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        acts = {s: np.load(folder / f"{s}.npy") for s in splits}
        chunks = {s: _load_chunks(folder / f"{s}-tokens.npz") for s in splits}
        return TokenActivations(acts, chunks, meta, folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    docs = split_documents(read_documents(corpus))
    parse_s = time.time() - started
    acts, chunks, seconds = {}, {}, {}
    for s in splits:
        t0 = time.time()
        chunks[s] = chunk_documents(model, docs[s], chunk_tokens=spec.chunk_tokens, max_tokens=spec.max_tokens.get(s))
        states = collect_states(model, chunks[s], spec.layer, batch_size=spec.batch_size, progress=progress, desc=s)
        acts[s] = states.astype(np.float16)
        tmp = folder / f".{s}.{os.getpid()}.npy"
        np.save(tmp, acts[s])
        os.replace(tmp, folder / f"{s}.npy")
        _save_chunks(folder / f"{s}-tokens.npz", chunks[s])
        seconds[s] = round(time.time() - t0, 1)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": MODEL_NAME,
        "model_package": MODEL_PACKAGE,
        "weights_sha256": model.weights_sha256,
        "layer": spec.layer,
        "spec": asdict(spec),
        "text_package": corpus.package,
        "text_version": corpus.version,
        "text_deb_sha256": corpus.deb_sha256,
        "text_fingerprint": corpus.fingerprint,
        "n_pages": corpus.n_pages,
        "n_documents": {s: len({c.document for c in chunks[s]}) for s in splits},
        "n_documents_in_split": {s: len(docs[s]) for s in splits},
        "n_words_in_split": {s: sum(d.n_words for d in docs[s]) for s in splits},
        "n_tokens": {s: int(len(acts[s])) for s in splits},
        "n_chunks": {s: len(chunks[s]) for s in splits},
        "seconds": {"read_text": round(parse_s, 1), **{f"collect_{s}": seconds[s] for s in splits}},
        "compute_dtype": str(model.dtype).removeprefix("torch."),
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return TokenActivations(acts, chunks, meta, folder)
