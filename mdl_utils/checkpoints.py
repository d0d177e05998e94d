"""Read SAEs saved by SAELens, by saprmarks/dictionary_learning, or by this book.

Every loader returns a :class:`LoadedSAE`: the weights in one convention (``W_enc`` of shape
(d_in, width), ``W_dec`` of shape (width, d_in)) and the encoding rules the library applies
at inference, so that :mod:`mdl_utils.scoring` can measure any of them the same way. Neither
library is imported (both pull in a language-model stack); the files are read directly, as
their own loaders read them.

**SAELens** (a folder with ``cfg.json`` and ``sae_weights.safetensors``; versions 3 to 6):

- tensors ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc``, ``b_dec``, and
  ``threshold`` (d_sae) for JumpReLU (``log_threshold`` is exponentiated, as SAELens does);
- ``architecture``: ``standard`` (ReLU), ``topk``, ``jumprelu``. Version 6 saves its
  BatchTopK and Matryoshka SAEs as ``jumprelu`` with a constant threshold. Before version 6,
  TopK can also be ``standard`` with ``activation_fn_str: "topk"`` and
  ``activation_fn_kwargs: {"k": K}``, and a non-unit ``scaling_factor`` tensor multiplies the
  latents before decoding (``finetuning_scaling_factor``);
- the input is normalised (``normalize_activations``), then ``b_dec`` is subtracted when
  ``apply_b_dec_to_input``; the decoder's output is un-normalised. ``constant_norm_rescale``
  scales each sample to norm ``sqrt(d_in)``; ``layer_norm`` centres it and divides by its
  standard deviation (unbiased) plus 1e-5; ``expected_average_only_in`` is a no-op at
  inference, as in SAELens's own ``load_from_disk`` (the factor is folded into the weights
  at the end of training);
- TopK keeps the ``k`` largest pre-activations per sample, then applies ReLU; with
  ``rescale_acts_by_decoder_norm`` (version 6) each pre-activation is first multiplied by its
  decoder row's norm and divided by it again before decoding. JumpReLU keeps
  ``ReLU(h)`` where ``h > threshold`` (strict).

**dictionary_learning** (a folder with ``ae.pt``, a torch state dict, and ``config.json``
whose ``trainer.dict_class`` names the class):

- ``AutoEncoder``: ``f = ReLU((x - bias) encoder.weight^T + encoder.bias)``,
  ``x_hat = f decoder.weight^T + bias``; ``AutoEncoderNew``: the same without centring and
  with ``decoder.bias``;
- ``AutoEncoderTopK``: ReLU then the top ``k`` per sample (``k`` from the state dict or the
  config), input centred on ``b_dec``;
- ``BatchTopKSAE`` and ``MatryoshkaBatchTopKSAE``: at inference ``a = ReLU(...)``, kept where
  ``a > threshold`` (a scalar; a negative threshold means "never set", and the library then
  returns the plain ReLU, as here);
- ``JumpReluAutoEncoder``: ``W_enc`` (d, F), kept where the pre-activation exceeds the
  per-feature threshold; no input centring (the library's default, not saved in the file).

Activation normalisation factors are folded into the saved weights by both libraries, so the
loaded SAEs take raw activations. Gated SAEs and other architectures (transcoders, AbsTopK,
matching pursuit, ...) are refused with a message naming them.

**This book's format** (``NAME.safetensors`` + ``NAME.json``, :meth:`mdl_utils.sae.BatchTopKSAE.save`):
a BatchTopK SAE, used at inference with its learned threshold.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["FORMATS", "ARCHITECTURES", "LoadedSAE", "load_sae", "detect_format"]

#: The formats :func:`load_sae` reads.
FORMATS = ("saelens", "dictionary_learning", "mdl_utils")
#: The architectures the description length protocol covers (non-negative sparse latents).
ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")
NORMALISATIONS = ("none", "constant_norm_rescale", "layer_norm")


@dataclass
class LoadedSAE:
    """An SAE read from a checkpoint, in one convention.

    Encoding: ``x' = normalise(x)``; ``x'' = x' - b_dec`` when ``subtract_b_dec``;
    ``h = x'' W_enc + b_enc``; then by ``architecture``: ``relu``: ``ReLU(h)``; ``topk``: the
    ``k`` largest of ``h * topk_scale`` per sample, ReLU applied; ``jumprelu`` and
    ``batchtopk``: ``ReLU(h)`` where ``h > threshold``. Decoding:
    ``unnormalise((z * latent_scale) W_dec + b_dec)``.

    Attributes:
        path: where it was read from.
        source_format: one of :data:`FORMATS`.
        architecture: one of :data:`ARCHITECTURES`.
        W_enc: (d_in, width). b_enc: (width,). W_dec: (width, d_in). b_dec: (d_in,).
        threshold: (width,) for ``jumprelu``/``batchtopk``, else None.
        k: features kept per sample for ``topk`` (the training k, when known, for others).
        subtract_b_dec: whether ``b_dec`` is subtracted from the (normalised) input.
        normalisation: ``"none"``, ``"constant_norm_rescale"`` or ``"layer_norm"``.
        topk_scale: per-feature factor on the pre-activations before TopK selection, or None.
        latent_scale: per-feature factor on the latents before decoding, or None.
        notes: what the loader assumed, in words (shown in reports).
    """

    path: str
    source_format: str
    architecture: str
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    threshold: Tensor | None = None
    k: float | None = None
    subtract_b_dec: bool = True
    normalisation: str = "none"
    topk_scale: Tensor | None = None
    latent_scale: Tensor | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"{self.path}: architecture {self.architecture!r} is not covered; "
                f"this protocol covers {', '.join(ARCHITECTURES)}"
            )
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"{self.path}: activation normalisation {self.normalisation!r} is not "
                f"supported; supported: {', '.join(NORMALISATIONS)}"
            )
        d_in, width = self.W_enc.shape
        expected = {"W_enc": (d_in, width), "b_enc": (width,), "W_dec": (width, d_in), "b_dec": (d_in,)}
        if self.threshold is not None:
            expected["threshold"] = (width,)
        if self.topk_scale is not None:
            expected["topk_scale"] = (width,)
        if self.latent_scale is not None:
            expected["latent_scale"] = (width,)
        for name, shape in expected.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"{self.path}: {name} has shape {tuple(t.shape)}, expected {shape} "
                    f"for d_in {d_in} and width {width}"
                )
            if not torch.isfinite(t).all():
                raise ValueError(f"{self.path}: {name} contains NaN or inf")
        if self.architecture == "topk":
            if self.k is None or not (1 <= self.k <= width) or float(self.k) != int(self.k):
                raise ValueError(
                    f"{self.path}: a TopK SAE needs a whole k between 1 and the width {width}, got {self.k!r}"
                )
        if self.architecture in ("jumprelu", "batchtopk") and self.threshold is None:
            raise ValueError(f"{self.path}: a {self.architecture} SAE needs a threshold")

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def width(self) -> int:
        return int(self.W_enc.shape[1])

    def describe(self) -> dict[str, Any]:
        """Where the SAE came from and its shape, for reports."""
        return {
            "path": self.path,
            "format": self.source_format,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "width": self.width,
            "k": self.k,
            "subtract_b_dec": self.subtract_b_dec,
            "normalisation": self.normalisation,
            "notes": list(self.notes),
        }

    def context(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The per-sample normalisation of ``x`` (None when there is none)."""
        if self.normalisation == "constant_norm_rescale":
            c = math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True)
            return c, torch.zeros_like(c)
        if self.normalisation == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            sigma = (x - mu).std(dim=-1, keepdim=True)
            return 1.0 / (sigma + 1e-5), mu
        return None

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Latents (N, width), non-negative, and the normalisation context for :meth:`decode`."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"input must have shape (samples, d_in={self.d_in}), got {tuple(x.shape)}")
        ctx = self.context(x)
        x_in = x if ctx is None else (x - ctx[1]) * ctx[0]
        if self.subtract_b_dec:
            x_in = x_in - self.b_dec
        h = x_in @ self.W_enc + self.b_enc
        if self.architecture == "relu":
            z = torch.relu(h)
        elif self.architecture == "topk":
            scored = h if self.topk_scale is None else h * self.topk_scale
            values, idx = torch.topk(scored, int(self.k), dim=-1)  # type: ignore[arg-type]
            z = torch.zeros_like(h).scatter_(-1, idx, torch.relu(values))
        else:
            assert self.threshold is not None
            z = torch.relu(h) * (h > self.threshold)
        return z, ctx

    @torch.no_grad()
    def decode(self, z: Tensor, ctx: tuple[Tensor, Tensor] | None) -> Tensor:
        """Reconstruction (N, d_in) in the activations' own units."""
        if self.latent_scale is not None:
            z = z * self.latent_scale
        y = z @ self.W_dec + self.b_dec
        if ctx is not None:
            y = y / ctx[0] + ctx[1]
        return y

    @torch.no_grad()
    def decode_sparse(self, indptr: Tensor, cols: Tensor, values: Tensor, ctx: tuple[Tensor, Tensor] | None) -> Tensor:
        """:meth:`decode` for latents given as CSR pieces (row pointers, feature indices,
        values): the sum runs over the active features only."""
        n = int(indptr.numel()) - 1
        W = self.W_dec if self.latent_scale is None else self.W_dec * self.latent_scale[:, None]
        if values.numel():
            with warnings.catch_warnings():
                # torch flags CSR support as beta; this product is stable and tested.
                warnings.simplefilter("ignore", UserWarning)
                z = torch.sparse_csr_tensor(indptr, cols, values, size=(n, self.width))
            y = z @ W + self.b_dec
        else:
            y = self.b_dec.expand(n, -1).clone()
        if ctx is not None:
            y = y / ctx[0] + ctx[1]
        return y


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """Which of :data:`FORMATS` a path holds, from the files present."""
    path = Path(path)
    if path.is_dir():
        if (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
            return "saelens"
        if (path / "ae.pt").is_file() and (path / "config.json").is_file():
            return "dictionary_learning"
        raise ValueError(
            f"{path}: not a SAELens folder (cfg.json + sae_weights.safetensors) nor a "
            "dictionary_learning folder (ae.pt + config.json)"
        )
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    if stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file():
        return "mdl_utils"
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    raise ValueError(
        f"{path}: not a recognised SAE checkpoint (a SAELens or dictionary_learning "
        "folder, or this book's NAME.safetensors + NAME.json)"
    )


def load_sae(path: str | Path, *, sae_format: str = "auto") -> LoadedSAE:
    """Read an SAE checkpoint (see the module docstring for the conventions).

    Args:
        path: a SAELens folder, a dictionary_learning folder (the one holding ``ae.pt``), or
            this book's ``NAME.safetensors`` / ``NAME.json`` / ``NAME``.
        sae_format: ``"auto"`` (detect from the files) or one of :data:`FORMATS`.

    Raises:
        ValueError: missing, truncated or corrupt files; a config without a required field;
            an architecture the protocol does not cover (named); tensors whose shapes do not
            match the config.
    """
    path = Path(path)
    fmt = detect_format(path) if sae_format == "auto" else sae_format
    if fmt == "saelens":
        return _load_saelens(path)
    if fmt == "dictionary_learning":
        return _load_dictionary_learning(path)
    if fmt == "mdl_utils":
        return _load_mdl_utils(path)
    raise ValueError(f"unknown SAE format {sae_format!r}; use auto or one of {', '.join(FORMATS)}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _need(cfg: dict[str, Any], name: str, where: Path) -> Any:
    if name not in cfg or cfg[name] is None:
        raise ValueError(f"{where}: the config has no {name!r} field")
    return cfg[name]


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"{path}: missing")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type for damaged files
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err
    return {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}


def _tensor(tensors: dict[str, Any], name: str, where: Path) -> Tensor:
    if name not in tensors:
        raise ValueError(f"{where}: no tensor {name!r} (it holds {sorted(tensors)[:12]})")
    t = tensors[name]
    if not isinstance(t, Tensor):
        raise ValueError(f"{where}: {name!r} is not a tensor")
    return t.detach().float().cpu()


def _version(cfg: dict[str, Any]) -> tuple[int, ...]:
    text = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if not isinstance(text, str):
        return ()
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def _load_saelens(folder: Path) -> LoadedSAE:
    cfg_path = folder / "cfg.json"
    cfg = _read_json(cfg_path)
    d_in, d_sae = int(_need(cfg, "d_in", cfg_path)), int(_need(cfg, "d_sae", cfg_path))
    weights = folder / "sae_weights.safetensors"
    tensors = _read_safetensors(weights)
    v6 = _version(cfg)[:1] >= (6,)
    arch = str(cfg.get("architecture") or "standard")
    act = str(cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu")
    k = cfg.get("k")
    if not v6 and act == "topk":
        arch = "topk"
        k = (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    notes = []
    if arch == "standard":
        if act not in ("relu",):
            raise ValueError(
                f"{cfg_path}: activation function {act!r} is not covered (ReLU, TopK, JumpReLU and BatchTopK are)"
            )
        architecture = "relu"
    elif arch == "topk":
        architecture = "topk"
        if k is None:
            raise ValueError(f"{cfg_path}: a TopK SAE's config has no 'k' field")
    elif arch == "jumprelu":
        architecture = "jumprelu"
        details = (cfg.get("metadata") or {}).get("training_architecture")
        if details in ("batchtopk", "matryoshka_batchtopk"):
            notes.append(f"trained as {details}, saved by SAELens as JumpReLU with its threshold")
    else:
        raise ValueError(
            f"{cfg_path}: SAELens architecture {arch!r} is not covered; this protocol "
            "covers standard (ReLU), topk, jumprelu, and BatchTopK saved as jumprelu"
        )
    norm = cfg.get("normalize_activations")
    if norm is True:
        norm = "expected_average_only_in"
    if norm in (None, False, "none"):
        norm = "none"
    if norm == "expected_average_only_in":
        notes.append(
            "normalize_activations=expected_average_only_in is a no-op at inference (SAELens "
            "folds the factor into the weights); the activations are used as given"
        )
        norm = "none"
    if norm not in NORMALISATIONS:
        raise ValueError(
            f"{cfg_path}: normalize_activations {norm!r} is not supported "
            f"({', '.join(NORMALISATIONS)} and expected_average_only_in are)"
        )
    threshold = None
    if architecture == "jumprelu":
        if "threshold" in tensors:
            threshold = _tensor(tensors, "threshold", weights)
        elif "log_threshold" in tensors:
            threshold = _tensor(tensors, "log_threshold", weights).exp()
        else:
            raise ValueError(f"{weights}: a JumpReLU SAE needs a 'threshold' tensor")
    latent_scale = topk_scale = None
    W_dec = _tensor(tensors, "W_dec", weights)
    if "scaling_factor" in tensors:
        scale = _tensor(tensors, "scaling_factor", weights)
        if not torch.all(scale == 1):
            latent_scale = scale
            notes.append("latents multiplied by the finetuning scaling factor before decoding")
    if architecture == "topk" and v6 and cfg.get("rescale_acts_by_decoder_norm"):
        norms = W_dec.norm(dim=1)
        topk_scale = norms
        latent_scale = 1.0 / norms if latent_scale is None else latent_scale / norms
    sae = LoadedSAE(
        path=str(folder),
        source_format="saelens",
        architecture=architecture,
        W_enc=_tensor(tensors, "W_enc", weights),
        b_enc=_tensor(tensors, "b_enc", weights),
        W_dec=W_dec,
        b_dec=_tensor(tensors, "b_dec", weights),
        threshold=threshold,
        k=None if k is None else float(k),
        subtract_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        normalisation=str(norm),
        topk_scale=topk_scale,
        latent_scale=latent_scale,
        notes=notes,
    )
    if (sae.d_in, sae.width) != (d_in, d_sae):
        raise ValueError(
            f"{weights}: weights are for d_in {sae.d_in}, width {sae.width}, but cfg.json "
            f"says d_in {d_in}, d_sae {d_sae}"
        )
    return sae


_DL_CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
)


def _load_dictionary_learning(folder: Path) -> LoadedSAE:
    cfg_path = folder / "config.json"
    config = _read_json(cfg_path)
    trainer = config.get("trainer")
    if not isinstance(trainer, dict):
        raise ValueError(f"{cfg_path}: the config has no 'trainer' object")
    cls = str(_need(trainer, "dict_class", cfg_path))
    if cls not in _DL_CLASSES:
        raise ValueError(
            f"{cfg_path}: dictionary_learning class {cls!r} is not covered; this "
            f"protocol covers {', '.join(_DL_CLASSES)}"
        )
    d_in, width = int(_need(trainer, "activation_dim", cfg_path)), int(_need(trainer, "dict_size", cfg_path))
    ae_path = folder / "ae.pt"
    if not ae_path.is_file():
        raise ValueError(f"{ae_path}: missing")
    try:
        state = torch.load(ae_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(f"{ae_path}: not a readable torch state dict (truncated or corrupt?): {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{ae_path}: expected a state dict, found a {type(state).__name__}")

    def t(name: str) -> Tensor:
        return _tensor(state, name, ae_path)

    k = trainer.get("k")
    if "k" in state:
        k = int(state["k"])
    threshold = None
    if cls == "AutoEncoder":
        arch, W_enc, b_enc, W_dec, b_dec, centre = (
            "relu",
            t("encoder.weight").T,
            t("encoder.bias"),
            t("decoder.weight").T,
            t("bias"),
            True,
        )
    elif cls == "AutoEncoderNew":
        arch, W_enc, b_enc, W_dec, b_dec, centre = (
            "relu",
            t("encoder.weight").T,
            t("encoder.bias"),
            t("decoder.weight").T,
            t("decoder.bias"),
            False,
        )
    elif cls == "AutoEncoderTopK":
        if k is None:
            raise ValueError(f"{cfg_path}: a TopK SAE needs k (in the state dict or trainer.k)")
        arch, W_enc, b_enc, W_dec, b_dec, centre = (
            "topk",
            t("encoder.weight").T,
            t("encoder.bias"),
            t("decoder.weight").T,
            t("b_dec"),
            True,
        )
    elif cls in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        if "W_enc" in state:
            W_enc, b_enc, W_dec = t("W_enc"), t("b_enc"), t("W_dec")
        else:
            W_enc, b_enc, W_dec = t("encoder.weight").T, t("encoder.bias"), t("decoder.weight").T
        arch, b_dec, centre = "batchtopk", t("b_dec"), True
        threshold = t("threshold").reshape(-1).expand(W_enc.shape[1]).clone()
    else:  # JumpReluAutoEncoder
        arch, W_enc, b_enc, W_dec, b_dec, centre = ("jumprelu", t("W_enc"), t("b_enc"), t("W_dec"), t("b_dec"), False)
        threshold = t("threshold")
    notes = []
    if arch == "batchtopk" and float(threshold[0]) < 0:  # type: ignore[index]
        notes.append(
            "the inference threshold was never set (-1): the library's inference, and this score, use the plain ReLU"
        )
    sae = LoadedSAE(
        path=str(folder),
        source_format="dictionary_learning",
        architecture=arch,
        W_enc=W_enc.contiguous(),
        b_enc=b_enc,
        W_dec=W_dec.contiguous(),
        b_dec=b_dec,
        threshold=threshold,
        k=None if k is None else float(k),
        subtract_b_dec=centre,
        notes=notes,
    )
    if (sae.d_in, sae.width) != (d_in, width):
        raise ValueError(
            f"{ae_path}: weights are for d_in {sae.d_in}, width {sae.width}, but "
            f"config.json says activation_dim {d_in}, dict_size {width}"
        )
    return sae


def _load_mdl_utils(path: Path) -> LoadedSAE:
    from mdl_utils.sae import BatchTopKSAE

    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    meta = _read_json(stem.with_suffix(".json"))
    if meta.get("class") != "BatchTopKSAE":
        raise ValueError(
            f"{stem.with_suffix('.json')}: class {meta.get('class')!r} is not an SAE this loader reads (BatchTopKSAE)"
        )
    try:
        sae = BatchTopKSAE.load(stem)
    except ValueError:
        raise
    except Exception as err:  # a damaged weights file
        raise ValueError(f"{stem.with_suffix('.safetensors')}: not readable (truncated or corrupt?): {err}") from err
    if not sae.has_threshold:
        raise ValueError(f"{stem}: this SAE's inference threshold was never set (it was not trained)")
    width = sae.width
    # The book's BatchTopK: pre = ReLU((x - b_dec) W_enc^T + b_enc), kept where pre > threshold.
    return LoadedSAE(
        path=str(stem),
        source_format="mdl_utils",
        architecture="batchtopk",
        W_enc=sae.W_enc_FD.detach().float().T.contiguous(),
        b_enc=sae.b_enc_F.detach().float(),
        W_dec=sae.W_dec_FD.detach().float().contiguous(),
        b_dec=sae.b_dec_D.detach().float(),
        threshold=sae.threshold.detach().float().expand(width).clone(),
        k=float(sae.k),
        subtract_b_dec=True,
    )
