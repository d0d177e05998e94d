"""Description length (DL) of SAE latents: the paper's central measurement, in one place.

This module gathers the public names of the measurement (section 3 and steps 3-4 of
section 4 of the paper brief; Ayonrinde, Pearce and Sharkey 2024, arXiv:2410.11179) and holds
the command line. Each idea lives in its own module; the names are re-exported here so that
``from mdl_utils.dl import ...`` keeps working:

1. :mod:`mdl_utils.quantize`: :func:`~mdl_utils.quantize.quantize` turns latents ``z_ND`` (N samples x D features,
   non-negative) into integer codes (zero is its own symbol; non-zero values are binned with
   a ``step`` or with ``bits`` per feature range), :func:`dequantize` maps codes back to bin
   centres.
2. :mod:`mdl_utils.entropy`: :func:`feature_entropies` (each feature's H(p_i) in bits per
   sample, the value 0 included) and :func:`description_length` (their sum); the paper's bound
   :func:`dl_upper_bound` (L0 * (B + log2 D)) and dense baseline :func:`dense_dl` (B * d).
3. :mod:`mdl_utils.precision`: :func:`~mdl_utils.precision.effective_precision` (the coarsest whole-bit quantisation
   whose reconstruction MSE stays within a tolerance) and :func:`effective_precision_for_loss`
   (the same for any loss). The continuous scale used by the chapters' protocol is
   :func:`mdl_utils.protocol.continuous_precision`.
4. :mod:`mdl_utils.coder`: :func:`encode_latents` / :func:`decode_latents`, a real entropy
   coder showing that DL is achievable, not just a formula.
5. :mod:`mdl_utils.allocation`: :func:`allocate_bits`, a greedy allocation of bits per
   feature under the same MSE ceiling (beyond the paper; section 8 of the brief).

Inputs may be numpy arrays or torch tensors (dense), or scipy.sparse / torch sparse matrices
(:mod:`mdl_utils.latents`). Only the non-zero entries are ever counted.

Command line: ``python -m mdl_utils dl LATENTS (--bits B | --step S) [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mdl_utils.allocation import BitAllocation, allocate_bits, dequantize_per_feature
from mdl_utils.coder import EncodedLatents, decode_latents, encode_latents
from mdl_utils.entropy import (
    DescriptionLength,
    dense_dl,
    description_length,
    dl_upper_bound,
    entropies_from_counts,
    feature_entropies,
)
from mdl_utils.latents import is_scipy_sparse
from mdl_utils.precision import EffectivePrecision, LossPrecision, effective_precision, effective_precision_for_loss
from mdl_utils.quantize import MAX_BITS, bin_widths, codes_in_bins, dequantize, n_bins, quantize, widths_from_max

__all__ = [
    "BitAllocation",
    "DescriptionLength",
    "EffectivePrecision",
    "EncodedLatents",
    "LossPrecision",
    "MAX_BITS",
    "n_bins",
    "allocate_bits",
    "bin_widths",
    "codes_in_bins",
    "decode_latents",
    "dense_dl",
    "dequantize",
    "dequantize_per_feature",
    "description_length",
    "dl_upper_bound",
    "entropies_from_counts",
    "effective_precision",
    "effective_precision_for_loss",
    "encode_latents",
    "feature_entropies",
    "load_latents",
    "main",
    "quantize",
    "widths_from_max",
]


# --------------------------------------------------------------------------------------------
# Command line: python -m mdl_utils dl LATENTS --bits B
# --------------------------------------------------------------------------------------------

_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


def load_latents(path: str | Path, *, key: str | None = None) -> Any:
    """Read a latent matrix from ``.npy``, ``.pt``/``.pth`` (torch) or ``.safetensors``.

    A torch file may hold a tensor or a dict of tensors; a dict (and a safetensors file) must
    hold exactly one tensor unless ``key`` names one. Only the container is checked here;
    :func:`description_length` checks the values.

    Raises:
        ValueError: unknown suffix, unreadable file, or contents that are not one matrix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"{path}: unknown file type {suffix!r}; expected one of {', '.join(_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            obj: Any = np.load(path, allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # every reader has its own error types; report them uniformly
        raise ValueError(f"{path}: not a readable {suffix} file ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
        if key is not None:
            if key not in tensors:
                raise ValueError(f"{path}: no tensor named {key!r}; it holds {sorted(tensors)}")
            obj = tensors[key]
        elif len(tensors) == 1:
            obj = next(iter(tensors.values()))
        else:
            raise ValueError(
                f"{path}: not a latent matrix: holds {len(tensors)} tensors {sorted(tensors)[:10]}; name one with --key"
            )
    if not hasattr(obj, "shape") or not hasattr(obj, "dtype"):
        raise ValueError(f"{path}: not a latent matrix (holds a {type(obj).__name__})")
    return obj


def _report(path: str, result: DescriptionLength, coded: dict[str, Any] | None, dense_dim: int) -> str:
    precision = (
        f"{result.bits} bits per non-zero value (2**{result.bits} bins over each feature's range)"
        if result.bits is not None
        else f"bin width {result.step:g} (B = {result.bits_per_value:g} bits to name the largest bin)"
    )
    lines = [
        f"latents: {path} ({result.n_samples} samples x {result.width} features)",
        f"precision: {precision}",
        f"description length: {result.dl_bits:.3f} bits/sample",
        f"L0: {result.l0:.3f} non-zero features/sample",
        f"width: {result.width} features",
        f"upper bound L0*(B + log2 D): {result.upper_bound_bits:.3f} bits/sample",
        f"dense baseline B*d (d = {dense_dim}): {dense_dl(dense_dim, result.bits_per_value):.3f} bits/sample",
    ]
    if coded is not None:
        lines.append(
            f"coded size: payload {coded['payload_bits_per_sample']:.3f} bits/sample "
            f"({_ratio(coded['payload_over_n_dl'])} x N*DL), tables {coded['table_bits']} bits, "
            f"header {coded['header_bits']} bits, total {coded['total_bits']} bits; "
            f"round trip {'exact' if coded['round_trip_exact'] else 'FAILED'}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python -m mdl_utils dl LATENTS (--bits B | --step S) [--json] ...``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m mdl_utils dl",
        description="Description length (bits/sample) of an SAE latent matrix (N samples x D features).",
    )
    parser.add_argument("latents", help="latent matrix: .npy, .pt/.pth or .safetensors")
    precision = parser.add_mutually_exclusive_group(required=True)
    precision.add_argument("--bits", type=int, help="bits per non-zero value (2**B bins per feature range)")
    precision.add_argument("--step", type=float, help="absolute bin width, in activation units")
    parser.add_argument("--key", help="tensor name, for files holding several tensors")
    parser.add_argument(
        "--input-dim",
        type=int,
        default=None,
        help="d for the dense baseline B*d (the activation dimension); default: the width D",
    )
    parser.add_argument("--no-code", action="store_true", help="skip the entropy coder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its message
        return int(exit_.code or 0)
    if args.input_dim is not None and args.input_dim < 1:
        print(f"error: --input-dim must be >= 1; got {args.input_dim}", file=sys.stderr)
        return 1
    try:
        z = load_latents(args.latents, key=args.key)  # its messages name the file
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        result = description_length(z, bits=args.bits, step=args.step)
        dense_dim = result.width if args.input_dim is None else args.input_dim
        coded = None
        if not args.no_code:
            codes = quantize(z, bits=args.bits, step=args.step)
            encoded = encode_latents(codes)
            decoded = decode_latents(encoded.blob, sparse=is_scipy_sparse(codes))
            exact = _codes_equal(codes, decoded)
            n_dl = result.n_samples * result.dl_bits
            coded = {
                "payload_bits": encoded.payload_bits,
                "payload_bits_per_sample": encoded.payload_bits / result.n_samples,
                "payload_over_n_dl": encoded.payload_bits / n_dl if n_dl > 0 else None,
                "table_bits": encoded.table_bits,
                "header_bits": encoded.header_bits,
                "total_bits": encoded.total_bits,
                "round_trip_exact": exact,
            }
    except ValueError as err:
        print(f"error: {args.latents}: {err}", file=sys.stderr)
        return 1
    if args.json:
        payload = {
            "latents": args.latents,
            "n_samples": result.n_samples,
            "width": result.width,
            "bits": result.bits,
            "step": result.step,
            "bits_per_value": result.bits_per_value,
            "dl_bits_per_sample": result.dl_bits,
            "l0": result.l0,
            "upper_bound_bits_per_sample": result.upper_bound_bits,
            "dense_dim": dense_dim,
            "dense_bits_per_sample": dense_dl(dense_dim, result.bits_per_value),
            "coded": coded,
        }
        print(json.dumps(payload))
    else:
        print(_report(args.latents, result, coded, dense_dim))
    if coded is not None and not coded["round_trip_exact"]:
        print("error: the entropy coder's round trip was not exact", file=sys.stderr)
        return 3
    return 0


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _codes_equal(a: Any, b: Any) -> bool:
    if is_scipy_sparse(a):
        a = a.toarray()
    if is_scipy_sparse(b):
        b = b.toarray()
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
