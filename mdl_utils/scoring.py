"""Score anyone's SAE: description length of a saved SAE on a file of activations.

``python -m mdl_utils score --sae PATH --activations ACTS [--tolerance KIND=VALUE] [--json]``
and :func:`score` from Python. The SAE is read from a SAELens folder (``cfg.json`` +
``sae_weights.safetensors``), a saprmarks/dictionary_learning folder (``ae.pt`` +
``config.json``), or this book's own format (``NAME.safetensors`` + ``NAME.json``); see
:mod:`mdl_utils.checkpoints` for the conventions each loader follows.

What is measured, on the given activations (all of them, read in chunks):

- reconstruction MSE per element (in the activations' own units) and the fraction of variance
  unexplained, FVU = sum of squared errors / sum of squared deviations from the mean;
- L0 (mean active features per sample), live features (active at least once) and the dead
  fraction;
- the effective precision on the continuous scale (:func:`mdl_utils.protocol.bisect_precision`):
  the coarsest ``b`` bits per non-zero value (``ceil(2**b)`` bins of width ``max_i / 2**b`` per
  feature, as :func:`mdl_utils.quantize.quantize`) whose quantised reconstruction meets the
  tolerance, and the paper's whole-bit reading ``B``;
- the description length DL (bits per sample, :func:`mdl_utils.entropy.description_length`'s
  count), its bound ``L0 (b + log2 D)``, and the decoder's own cost: ``(D + 1) d`` float16
  numbers, reported in total and shared over the N samples scored (the two-part code).

Tolerances, all turned into a ceiling on the quantised reconstruction MSE:

- ``mse=V``: the MSE per element may be at most V (activation units squared);
- ``fvu=V``: the FVU may be at most V (so the MSE ceiling is V times the variance);
- ``increase=V``: the quantised MSE may exceed the SAE's own unquantised MSE by at most the
  fraction V (default ``increase=0.01``: quantisation may cost 1% more reconstruction error).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mdl_utils.activations import ActivationFile, open_activations
from mdl_utils.checkpoints import FORMATS, LoadedSAE, load_sae
from mdl_utils.entropy import dl_upper_bound, entropies_from_counts
from mdl_utils.quantize import codes_in_bins, n_bins, widths_from_max
from mdl_utils.protocol import REL_BAND, ContinuousPrecision, bisect_precision

__all__ = ["Tolerance", "ScoreResult", "score", "parse_tolerance", "main"]

TOLERANCE_KINDS = ("mse", "fvu", "increase")
#: The decoder is counted as float16 numbers, as the book stores SAEs.
DECODER_BITS_PER_WEIGHT = 16


@dataclass(frozen=True)
class Tolerance:
    """A tolerance on the quantised reconstruction (see the module docstring).

    Attributes:
        kind: ``"mse"``, ``"fvu"`` or ``"increase"``.
        value: its value (> 0).
    """

    kind: Literal["mse", "fvu", "increase"]
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TOLERANCE_KINDS:
            raise ValueError(f"unknown tolerance kind {self.kind!r}; use one of {', '.join(TOLERANCE_KINDS)}")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"the {self.kind} tolerance must be a positive finite number, got {self.value!r}")

    def ceiling(self, mse: float, variance: float) -> float:
        """The MSE ceiling for an SAE with unquantised MSE ``mse`` on data of ``variance``."""
        if self.kind == "mse":
            return float(self.value)
        if self.kind == "fvu":
            return float(self.value) * variance
        return mse * (1.0 + float(self.value))

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


def parse_tolerance(text: str) -> Tolerance:
    """``"fvu=0.1"`` -> ``Tolerance("fvu", 0.1)``; a clear ValueError for anything else."""
    kind, sep, value = text.partition("=")
    if not sep:
        raise ValueError(
            f"tolerance {text!r} must look like KIND=VALUE with KIND one of {', '.join(TOLERANCE_KINDS)} (e.g. fvu=0.1)"
        )
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"tolerance {text!r}: {value!r} is not a number") from None
    return Tolerance(kind.strip().lower(), number)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ScoreResult:
    """An SAE scored on a set of activations (see the module docstring for each quantity).

    Attributes:
        sae: where the SAE came from and its shape (format, architecture, path, d_in, width, k).
        activations: the activation file (path, samples, d, stored dtype).
        n_samples: N, the samples scored.
        mse: unquantised reconstruction MSE per element, in the activations' units squared.
        variance: the activations' variance per element (mean over dimensions).
        fvu: ``mse / variance``.
        l0: mean active features per sample.
        n_live: features active on at least one sample; ``dead_fraction = 1 - n_live / width``.
        tolerance: the tolerance as given (``kind``, ``value``) and as an MSE ceiling.
        reachable: whether the unquantised SAE meets the ceiling at all; when it does not, the
            precision and DL fields are None.
        precision: the continuous precision (bits, quantised MSE, status).
        dl_bits: DL at that precision, bits per sample.
        upper_bound_bits: ``L0 (b + log2 width)``, bits per sample.
        whole_bits, whole_dl_bits: the paper's reading: the coarsest whole number of bits
            meeting the ceiling (searched upward from ``floor(b)``) and the DL there.
        decoder_bits: the decoder sent once: ``(width + 1) d`` float16 numbers, in bits.
        two_part_bits: ``dl_bits + decoder_bits / n_samples``, bits per sample.
        passes: passes over the activations (one to encode, one per precision tried).
        seconds: wall time of the scoring.
    """

    sae: dict[str, Any]
    activations: dict[str, Any]
    n_samples: int
    mse: float
    variance: float
    fvu: float
    l0: float
    n_live: int
    dead_fraction: float
    tolerance: dict[str, Any]
    reachable: bool
    precision: ContinuousPrecision | None
    dl_bits: float | None
    upper_bound_bits: float | None
    whole_bits: int | None
    whole_dl_bits: float | None
    decoder_bits: int
    two_part_bits: float | None
    passes: int = 1
    seconds: float = field(default=0.0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["precision"] = None if self.precision is None else self.precision.to_dict()
        return out

    def report(self) -> str:
        """A short human-readable report."""
        s, a = self.sae, self.activations
        k = "" if s.get("k") is None else f", k {s['k']:g}"
        lines = [
            f"SAE: {s['path']} ({s['format']}, {s['architecture']}, d_in {s['d_in']}, width {s['width']}{k})",
            f"activations: {a['path']} ({a['n_samples']:,} x {a['d']}, {a['dtype']})",
            f"reconstruction: MSE {self.mse:.6g} per element, FVU {self.fvu:.4f} (variance {self.variance:.6g})",
            f"sparsity: L0 {self.l0:.2f}; live features {self.n_live}/{s['width']} "
            f"(dead fraction {self.dead_fraction:.3f})",
            f"tolerance: {self.tolerance['kind']}={self.tolerance['value']:g} "
            f"-> quantised MSE at most {self.tolerance['mse_ceiling']:.6g}",
        ]
        if not self.reachable:
            lines.append(
                "not reachable: the unquantised reconstruction already misses the tolerance, "
                "so no precision meets it (no DL)"
            )
        else:
            p = self.precision
            assert p is not None and self.dl_bits is not None and self.upper_bound_bits is not None
            lines += [
                f"precision: {p.bits:.3f} bits per non-zero value ({p.status}; quantised MSE "
                f"{p.mse_quantised:.6g}); whole bits B = {self.whole_bits}",
                f"description length: {self.dl_bits:.2f} bits per sample (bound L0 (b + log2 D) = "
                f"{self.upper_bound_bits:.2f}); at B: {self.whole_dl_bits:.2f}",
                f"decoder: {self.decoder_bits:,} bits (float16); two-part code over these "
                f"{self.n_samples:,} samples: {self.two_part_bits:.2f} bits per sample",
            ]
        lines.append(f"{self.passes} passes over the activations in {self.seconds:.1f} s")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The passes over the activations
# --------------------------------------------------------------------------------------------


@dataclass
class _Latents:
    """The SAE's non-zero latents, chunk by chunk (CSR pieces), and per-feature statistics."""

    chunks: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]  # start, indptr, cols, vals
    feature_max: np.ndarray
    feature_count: np.ndarray
    nnz: int


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="sample", unit_scale=True, disable=not enabled, leave=False, file=sys.stderr
    )


@torch.no_grad()
def _encode_pass(
    sae: LoadedSAE, acts: ActivationFile, chunk_size: int, progress: bool
) -> tuple[_Latents, float, np.ndarray, np.ndarray]:
    width = sae.width
    chunks = []
    feature_max = np.zeros(width, dtype=np.float64)
    feature_count = np.zeros(width, dtype=np.int64)
    sse = 0.0
    sum_x = np.zeros(acts.d, dtype=np.float64)
    sum_x2 = np.zeros(acts.d, dtype=np.float64)
    nnz = 0
    with _bar(acts.n_samples, "encoding", progress) as bar:
        for start, block in acts.chunks(chunk_size):
            x = torch.from_numpy(block)
            z, ctx = sae.encode(x)
            if bool((z < 0).any()):
                raise ValueError(
                    f"{sae.path}: the SAE produced negative latents, which this description length does not cover"
                )
            x_hat = sae.decode(z, ctx)
            sse += float((x_hat - x).pow(2).sum(dtype=torch.float64))
            x64 = block.astype(np.float64)
            sum_x += x64.sum(axis=0)
            sum_x2 += np.square(x64).sum(axis=0)
            z_np = z.numpy()
            rows, cols = np.nonzero(z_np)
            vals = z_np[rows, cols].astype(np.float32)
            indptr = np.zeros(len(block) + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=len(block)), out=indptr[1:])
            cols = cols.astype(np.int32)
            np.maximum.at(feature_max, cols, vals.astype(np.float64))
            feature_count += np.bincount(cols, minlength=width)
            chunks.append((start, indptr, cols, vals))
            nnz += vals.size
            bar.update(len(block))
    return _Latents(chunks, feature_max, feature_count, nnz), sse, sum_x, sum_x2


@torch.no_grad()
def _quantised_mse(
    sae: LoadedSAE, acts: ActivationFile, lat: _Latents, bits: float, chunk_size: int, progress: bool
) -> float:
    widths = widths_from_max(lat.feature_max, bits)
    sse = 0.0
    with _bar(acts.n_samples, f"quantised at {bits:.3f} bits", progress) as bar:
        for start, indptr, cols, vals in lat.chunks:
            block = acts.read(start, start + len(indptr) - 1)
            x = torch.from_numpy(block)
            centres = (codes_in_bins(vals, cols, widths, bits) - 0.5) * widths[cols]
            x_hat = sae.decode_sparse(
                torch.from_numpy(indptr),
                torch.from_numpy(cols.astype(np.int64)),
                torch.from_numpy(centres.astype(np.float32)),
                sae.context(x),
            )
            sse += float((x_hat - x).pow(2).sum(dtype=torch.float64))
            bar.update(len(block))
    return sse / (acts.n_samples * acts.d)


def _description_length(lat: _Latents, n_samples: int, width: int, bits: float) -> float:
    """DL in bits per sample: sum over features of the entropy of their codes, zero included
    (the count of :func:`mdl_utils.entropy.description_length`, accumulated chunk by chunk)."""
    radix = n_bins(bits) + 1
    widths = widths_from_max(lat.feature_max, bits)
    keys, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for _, _, cols, vals in lat.chunks:
        if vals.size == 0:
            continue
        k = cols.astype(np.int64) * radix + codes_in_bins(vals, cols, widths, bits)
        k_unique, k_counts = np.unique(k, return_counts=True)
        merged = np.concatenate([keys, k_unique])
        weights = np.concatenate([counts, k_counts])
        keys, inverse = np.unique(merged, return_inverse=True)
        counts = np.bincount(inverse, weights=weights).astype(np.int64)
    return float(entropies_from_counts(n_samples, keys // radix, counts, lat.feature_count).sum())


# --------------------------------------------------------------------------------------------
# The entry points
# --------------------------------------------------------------------------------------------


def score(
    sae: LoadedSAE | str | Path,
    activations: ActivationFile | str | Path | np.ndarray | torch.Tensor,
    *,
    tolerance: Tolerance | str = "increase=0.01",
    sae_format: str = "auto",
    key: str | None = None,
    chunk_size: int = 8192,
    rel_band: float = REL_BAND,
    progress: bool = False,
) -> ScoreResult:
    """Score an SAE on activations (see the module docstring for what is measured).

    Args:
        sae: a loaded SAE (:func:`mdl_utils.checkpoints.load_sae`) or the path to one.
        activations: an (N, d_in) matrix: a file (``.npy``, ``.pt``, ``.safetensors``), an
            opened :class:`~mdl_utils.activations.ActivationFile`, or an array/tensor.
        tolerance: a :class:`Tolerance` or its text form (``"fvu=0.1"``).
        sae_format: when ``sae`` is a path: ``"auto"`` (detect) or one of the loaders' names.
        key: the tensor's name inside an activation file holding several.
        chunk_size: samples per chunk; memory grows with ``chunk_size * width``.
        rel_band: the precision search stops once the quantised MSE lies in
            ``[(1 - rel_band) ceiling, ceiling]``.
        progress: progress bars on stderr.

    Returns:
        A :class:`ScoreResult`.

    Raises:
        ValueError: an unreadable SAE or activation file, an unknown architecture, a shape
            that does not match the SAE's ``d_in``, NaN or inf in the activations, a bad
            tolerance; the message names the problem.
    """
    started = time.time()
    tol = parse_tolerance(tolerance) if isinstance(tolerance, str) else tolerance
    if not isinstance(sae, LoadedSAE):
        sae = load_sae(sae, sae_format=sae_format)
    acts = _as_activations(activations, key)
    if acts.d != sae.d_in:
        raise ValueError(f"{acts.path}: activations have d = {acts.d} per sample but the SAE expects d_in = {sae.d_in}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n, d = acts.n_samples, acts.d
    lat, sse, sum_x, sum_x2 = _encode_pass(sae, acts, chunk_size, progress)
    mse = sse / (n * d)
    variance = float(np.sum(sum_x2 - sum_x**2 / n)) / (n * d)
    fvu = mse / variance if variance > 0 else math.inf
    l0 = lat.nnz / n
    n_live = int(np.count_nonzero(lat.feature_count))
    ceiling = tol.ceiling(mse, variance)
    decoder_bits = (sae.width + 1) * d * DECODER_BITS_PER_WEIGHT
    reachable = mse <= ceiling
    precision = dl_bits = bound = whole_dl = two_part = None
    whole_bits = None
    passes = 1
    if reachable:

        def mse_at(bits: float) -> float:
            nonlocal passes
            passes += 1
            return _quantised_mse(sae, acts, lat, bits, chunk_size, progress)

        if lat.nnz == 0:
            precision = ContinuousPrecision(0.05, mse, mse, ceiling, "coarsest", 0)
        else:
            precision = bisect_precision(mse_at, mse, epsilon=ceiling, rel_band=rel_band)
        dl_bits = _description_length(lat, n, sae.width, precision.bits)
        bound = dl_upper_bound(l0, sae.width, precision.bits)
        whole_bits = max(1, math.floor(precision.bits))
        while whole_bits < 24 and mse_at(whole_bits) > ceiling:
            whole_bits += 1
        whole_dl = _description_length(lat, n, sae.width, whole_bits)
        two_part = dl_bits + decoder_bits / n
    return ScoreResult(
        sae=sae.describe(),
        activations={"path": str(acts.path), "n_samples": n, "d": d, "dtype": acts.dtype},
        n_samples=n,
        mse=mse,
        variance=variance,
        fvu=fvu,
        l0=l0,
        n_live=n_live,
        dead_fraction=1.0 - n_live / sae.width,
        tolerance={"kind": tol.kind, "value": tol.value, "mse_ceiling": ceiling},
        reachable=reachable,
        precision=precision,
        dl_bits=dl_bits,
        upper_bound_bits=bound,
        whole_bits=whole_bits,
        whole_dl_bits=whole_dl,
        decoder_bits=decoder_bits,
        two_part_bits=two_part,
        passes=passes,
        seconds=time.time() - started,
    )


def _as_activations(activations: Any, key: str | None) -> ActivationFile:
    if isinstance(activations, ActivationFile):
        return activations
    if isinstance(activations, (str, Path)):
        return open_activations(activations, key=key)
    if isinstance(activations, torch.Tensor):
        activations = activations.detach().cpu().numpy()
    array = np.asarray(activations)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"activations must be a non-empty 2-D (samples, d) matrix, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"activations must be floating point, got dtype {array.dtype}")
    return ActivationFile(Path("<array>"), None, (int(array.shape[0]), int(array.shape[1])), str(array.dtype), array)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mdl_utils score",
        description="Description length of a saved SAE (SAELens, dictionary_learning or this book's "
        "format) on a file of activations.",
    )
    parser.add_argument(
        "--sae",
        required=True,
        help="the SAE: a folder (SAELens, dictionary_learning) or this book's NAME.safetensors / NAME.json",
    )
    parser.add_argument("--activations", required=True, help="(N, d_in) activations: .npy, .pt or .safetensors")
    parser.add_argument(
        "--format",
        default="auto",
        choices=("auto", *FORMATS),
        help="the SAE's format (default: detected from the files)",
    )
    parser.add_argument(
        "--tolerance", default="increase=0.01", help="KIND=VALUE with KIND mse, fvu or increase (default increase=0.01)"
    )
    parser.add_argument("--key", help="tensor name in an activation file holding several")
    parser.add_argument("--chunk-size", type=int, default=8192, help="samples per chunk (default 8192)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        result = score(
            args.sae,
            args.activations,
            tolerance=args.tolerance,
            sae_format=args.format,
            key=args.key,
            chunk_size=args.chunk_size,
            progress=not args.no_progress,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
