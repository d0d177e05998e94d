"""Beyond the paper: per-feature precision, rate-distortion curves, and the optimum against epsilon.

Three questions that the discussion of Ayonrinde, Pearce and Sharkey (2024) leaves open
(section 8 of the paper brief), answered on the SAEs of the chapter-3 MNIST sweep
(:mod:`mdl_utils.experiments`):

1. **Per-feature precision.** :func:`mdl_utils.allocation.allocate_bits` gives each feature its own
   bits; :func:`value_entropy` says how many bits a feature's values carry once it is known
   to be on (0 for a binary feature).
2. **Rate-distortion curves.** :func:`rate_distortion_curve` measures test MSE and DL of one
   SAE as its (uniform) precision varies; :func:`pareto_front` keeps the points no other
   point beats on both; :func:`curve_crossings` finds where two SAEs' curves cross, as drawn
   (straight segments in log MSE against DL).
3. **The optimum against epsilon.** The same sweep machinery re-selects SAEs at several
   tolerances; :func:`fit_power_law` fits y = c * eps**alpha by least squares in log-log and
   reports R^2 and the exponent's standard error.

:func:`run_beyond` does all three for a run profile and writes one JSON file; it is the job
``python -m mdl_utils beyond --profile full`` (resumable: every SAE it trains is cached), and
:func:`load_beyond` reads the result back.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mdl_utils.protocol import optimum_index

__all__ = [
    "CURVE_BITS",
    "EPSILONS",
    "NEAR_OPTIMAL",
    "RESULTS_FORMAT_VERSION",
    "PowerLawFit",
    "crossing_counts",
    "curve_crossings",
    "epsilon_optimum",
    "fits_of",
    "fit_power_law",
    "load_beyond",
    "main",
    "pareto_front",
    "rate_distortion_curve",
    "run_beyond",
    "value_entropy",
]

RESULTS_FORMAT_VERSION = 2
#: Tolerances (test MSE per pixel) at which the epsilon scan re-selects SAEs.
EPSILONS: tuple[float, ...] = (0.010, 0.015, 0.020, 0.030, 0.050)
#: Relative DL margin within which a width counts as near-optimal (:func:`epsilon_optimum`).
NEAR_OPTIMAL = 0.05
#: Precisions (bits per non-zero value) along each rate-distortion curve.
CURVE_BITS: tuple[int, ...] = tuple(range(1, 13))


# --------------------------------------------------------------------------------------------
# Rate-distortion curves and their crossings
# --------------------------------------------------------------------------------------------


def rate_distortion_curve(
    z: Any, decode: Callable[[Any], Any], x: Any, *, bits: Sequence[int] = CURVE_BITS
) -> dict[str, list[float]]:
    """Test MSE and DL of one SAE at each uniform precision: its rate-distortion curve.

    For each B in ``bits`` the latents are quantised with B bits per non-zero value
    (:func:`mdl_utils.quantize.quantize`), decoded at the bin centres, and both the reconstruction
    MSE (per entry) and the DL (bits per sample, :func:`mdl_utils.entropy.description_length`) are
    measured.

    Returns:
        ``{"bits": [...], "mse": [...], "dl_bits": [...]}``, one entry per precision.
    """
    from mdl_utils.entropy import description_length
    from mdl_utils.quantize import bin_widths, dequantize, quantize

    x_np = np.asarray(x, dtype=np.float64)
    out: dict[str, list[float]] = {"bits": [], "mse": [], "dl_bits": []}
    for b in bits:
        z_q = dequantize(quantize(z, bits=int(b)), bin_widths(z, bits=int(b)))
        x_hat = np.asarray(decode(np.asarray(z_q, dtype=np.float32)), dtype=np.float64)
        out["bits"].append(int(b))
        out["mse"].append(float(np.mean((x_hat - x_np) ** 2)))
        out["dl_bits"].append(description_length(z, bits=int(b)).dl_bits)
    return out


def pareto_front(mse: Sequence[float], dl_bits: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point beats on both MSE and DL, by increasing MSE.

    Along the front DL strictly falls as MSE rises: it is the curve "the least DL that reaches
    a given MSE" as one would draw it.
    """
    mse_a, dl_a = np.asarray(mse, dtype=float), np.asarray(dl_bits, dtype=float)
    if mse_a.shape != dl_a.shape or mse_a.ndim != 1 or mse_a.size == 0:
        raise ValueError("mse and dl_bits must be non-empty 1-D sequences of the same length")
    order = np.lexsort((dl_a, mse_a))  # by MSE, ties by DL
    keep, best = [], math.inf
    for i in order:
        if dl_a[i] < best:
            keep.append(int(i))
            best = dl_a[i]
    return np.asarray(keep, dtype=np.int64)


def _front_xy(curve: dict[str, Sequence[float]], log_mse: bool) -> tuple[np.ndarray, np.ndarray]:
    front = pareto_front(curve["mse"], curve["dl_bits"])
    x = np.asarray(curve["mse"], dtype=float)[front]
    return (np.log(x) if log_mse else x), np.asarray(curve["dl_bits"], dtype=float)[front]


def curve_crossings(
    a: dict[str, Sequence[float]],
    b: dict[str, Sequence[float]],
    *,
    mse_range: tuple[float, float] | None = None,
    log_mse: bool = True,
) -> list[float]:
    """MSE values at which the Pareto fronts of two rate-distortion curves cross.

    Each curve is drawn through its Pareto points (:func:`pareto_front`) with straight
    segments, in log MSE when ``log_mse`` (as on a log-scaled axis) against DL. Within the
    MSE range both curves cover (narrowed to ``mse_range`` if given), the difference of the
    two is piecewise linear with knots at both curves' points; a crossing is a strict change of
    its sign. Touching without passing through is not a crossing, and a stretch where the
    curves coincide counts once if their order differs on its two sides.

    Args:
        a, b: curves as returned by :func:`rate_distortion_curve` (keys ``mse``, ``dl_bits``).

    Returns:
        The MSE of each crossing, ascending (empty when the curves do not cross or do not
        overlap in MSE).
    """
    xa, ya = _front_xy(a, log_mse)
    xb, yb = _front_xy(b, log_mse)
    lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if mse_range is not None:
        r_lo, r_hi = (np.log(mse_range[0]), np.log(mse_range[1])) if log_mse else mse_range
        lo, hi = max(lo, r_lo), min(hi, r_hi)
    if not lo < hi:
        return []
    knots = np.unique(np.concatenate([xa, xb, [lo, hi]]))
    knots = knots[(knots >= lo) & (knots <= hi)]
    diff = np.interp(knots, xa, ya) - np.interp(knots, xb, yb)
    scale = max(np.abs(ya).max(), np.abs(yb).max(), 1.0)
    sign = np.where(np.abs(diff) <= 1e-9 * scale, 0, np.sign(diff))
    out: list[float] = []
    last_sign = 0
    for i, s in enumerate(sign):
        if s == 0:
            continue
        if last_sign != 0 and s != last_sign:
            prev = i - 1
            if sign[prev] == 0:  # the curves met at a knot (or along a stretch): cross there
                where = knots[prev]
            else:  # a sign change inside the segment: the root of the linear difference
                t = diff[prev] / (diff[prev] - diff[i])
                where = knots[prev] + t * (knots[i] - knots[prev])
            out.append(float(np.exp(where) if log_mse else where))
        last_sign = s
    return out


def crossing_counts(
    curves: Sequence[dict[str, Sequence[float]]], *, mse_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Number of crossings between every pair of curves (symmetric matrix, zero diagonal)."""
    n = len(curves)
    counts = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            counts[i, j] = counts[j, i] = len(curve_crossings(curves[i], curves[j], mse_range=mse_range))
    return counts


# --------------------------------------------------------------------------------------------
# Per-feature precision: what a feature's values carry
# --------------------------------------------------------------------------------------------


def value_entropy(feature_bits: Any, firing: Any) -> np.ndarray:
    """Bits a feature's value carries once it is known to be on: H(value | active).

    From H(p_i) = H_b(f_i) + f_i * H(value | active) (see :func:`mdl_utils.entropy.feature_entropies`),
    with f_i the firing rate. 0 for a binary feature (one value); NaN for a dead one.
    """
    h = np.asarray(feature_bits, dtype=float)
    f = np.asarray(firing, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        hb = np.where((f > 0) & (f < 1), -f * np.log2(f) - (1 - f) * np.log2(1 - f), 0.0)
        out = np.where(f > 0, (h - hb) / f, np.nan)
    return np.where(np.abs(out) < 1e-12, 0.0, out)


# --------------------------------------------------------------------------------------------
# Power laws
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """y = prefactor * x**exponent, fitted by least squares on log y against log x.

    Attributes:
        exponent: the power alpha.
        prefactor: c.
        exponent_stderr: standard error of alpha (NaN with fewer than 3 points).
        r_squared: R^2 of the log-log fit (NaN when log y does not vary).
        n_points: points used.
    """

    exponent: float
    prefactor: float
    exponent_stderr: float
    r_squared: float
    n_points: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLawFit:
    """Fit y = c * x**alpha: ordinary least squares of log y on log x.

    Raises:
        ValueError: fewer than 2 points, non-positive values, or x all equal.
    """
    x_a, y_a = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x_a.shape != y_a.shape or x_a.ndim != 1 or x_a.size < 2:
        raise ValueError("need at least 2 (x, y) pairs of the same length")
    if np.any(x_a <= 0) or np.any(y_a <= 0) or not np.all(np.isfinite(x_a * y_a)):
        raise ValueError("a power law needs finite, positive x and y")
    lx, ly = np.log(x_a), np.log(y_a)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    if sxx == 0:
        raise ValueError("x must take at least two different values")
    alpha = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
    intercept = float(ly.mean() - alpha * lx.mean())
    resid = ly - (intercept + alpha * lx)
    sst = float(np.sum((ly - ly.mean()) ** 2))
    sse = float(np.sum(resid**2))
    r2 = 1.0 - sse / sst if np.ptp(ly) > 0 else math.nan
    n = x_a.size
    stderr = math.sqrt(sse / (n - 2) / sxx) if n > 2 else math.nan
    return PowerLawFit(alpha, math.exp(intercept), stderr, r2, n)


# --------------------------------------------------------------------------------------------
# The whole study on the MNIST sweep
# --------------------------------------------------------------------------------------------


def _allocation_summary(sae: Any, x_test: np.ndarray, epsilon: float, row: dict[str, Any]) -> dict[str, Any]:
    from mdl_utils.allocation import allocate_bits
    from mdl_utils.mdl import decoder_fn, latents

    z = latents(sae, x_test)
    decode = decoder_fn(sae)
    alloc = allocate_bits(z, decode, x_test, tolerance=epsilon)
    # The strict comparison: the ceiling is the MSE the uniform precision itself reaches.
    same = allocate_bits(z, decode, x_test, tolerance=alloc.uniform_mse)
    firing = (z > 0).mean(axis=0)
    values = value_entropy(alloc.feature_bits, firing)
    live = alloc.live
    return {
        "width": int(row["width"]),
        "uniform_bits": int(row["bits"]),
        "uniform_dl_bits": float(row["dl_bits"]),
        "uniform_mse": float(row["mse_quantised"]),
        "entropy_bits": alloc.entropy_bits,
        "table_bits": alloc.table_bits,
        "dl_bits": alloc.dl_bits,
        "mse": alloc.mse,
        "started_from": alloc.started_from,
        "allocator_uniform": {"bits": alloc.uniform_bits, "entropy_bits": alloc.uniform_entropy_bits,
                              "mse": alloc.uniform_mse},
        "same_mse": {"ceiling": alloc.uniform_mse, "entropy_bits": same.entropy_bits,
                     "dl_bits": same.dl_bits, "mse": same.mse, "started_from": same.started_from},
        "n_live": int(live.sum()),
        "n_steps": alloc.n_steps,
        "start_bits": alloc.start_bits,
        "bits": [int(b) for b in alloc.bits],
        "value_bits": [None if not np.isfinite(v) else round(float(v), 6) for v in values],
        "path_entropy_bits": [round(float(v), 4) for v in alloc.path_entropy_bits[:: max(1, alloc.n_steps // 200)]],
        "path_mse": [float(v) for v in alloc.path_mse[:: max(1, alloc.n_steps // 200)]],
    }


def _measured(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in payload["rows"] if r.get("dl_bits") is not None]


def epsilon_optimum(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The epsilon-MDL-optimal row of a sweep's ``mdl.json`` contents, with where it sits.

    Same rule as chapter 3: the smallest DL, ties to the narrower SAE. ``at_edge`` says the
    optimum is the narrowest or widest width that reached the tolerance, so the true optimum
    may lie outside the swept range. ``in_band`` says the optimum's test MSE lies in the
    sweep's band below epsilon (its search status is ``"hit"``); it is False when even the
    smallest k the sweep tries leaves the MSE below the band (``"below_band"``), so that
    the SAEs are compared at a lower MSE than the tolerance allows and the optimum is set by
    that floor on k rather than by epsilon. ``n_below_band`` counts such widths.
    ``near_widths`` lists the widths whose DL is within ``NEAR_OPTIMAL`` (5%) of the
    optimum's: when it holds several, the DL curve is flat there and the single optimal width
    is fragile (DL moves in whole bits of precision, so one SAE dropping a bit can decide it).
    """
    measured = _measured(payload)
    if not measured:
        return None
    best = measured[optimum_index([r["dl_bits"] for r in measured], [r["width"] for r in measured])]  # type: ignore[index]
    widths = [r["width"] for r in measured]
    swept = sorted(r["width"] for r in payload["rows"])
    return {
        "epsilon": float(payload["epsilon"]), "width": int(best["width"]), "k": float(best["k"]),
        "l0": float(best["l0"]), "dl_bits": float(best["dl_bits"]), "bits": int(best["bits"]),
        "n_reached": len(measured),
        "at_edge": best["width"] in (min(widths), max(widths)),
        "at_sweep_edge": best["width"] in (swept[0], swept[-1]),
        "in_band": best.get("status", "hit") == "hit",
        "n_below_band": sum(r.get("status") == "below_band" for r in measured),
        "near_widths": sorted(int(r["width"]) for r in measured
                              if r["dl_bits"] <= (1 + NEAR_OPTIMAL) * best["dl_bits"]),
    }


def fits_of(optima: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """Power-law fits of the optimal width, L0 and DL against epsilon (None: too few points).

    Only optima selected within the band are fitted (``in_band``, see
    :func:`epsilon_optimum`): where even the smallest k over-delivers, the optimum reflects
    that floor on k, not the tolerance.
    """
    used = [o for o in optima if o.get("in_band", True)]
    eps = [o["epsilon"] for o in used]
    out: dict[str, dict[str, Any] | None] = {}
    for name in ("width", "l0", "dl_bits"):
        try:
            out[name] = fit_power_law(eps, [o[name] for o in used]).to_dict()
        except ValueError:
            out[name] = None
    return out


def run_beyond(
    profile: str,
    out_dir: str | os.PathLike[str],
    *,
    sweep_dir: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    epsilons: Sequence[float] = EPSILONS,
    scan_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    executor: Any = None,
) -> dict[str, Any]:
    """Run the chapter's three studies for a profile; write and return ``out_dir/beyond.json``.

    - The chapter-3 sweep at epsilon = 0.015 is read from ``sweep_dir`` (its ``mdl.json``),
      or run there (cached) when it does not exist yet.
    - Per-feature precision and a rate-distortion curve for every SAE of that sweep; the SAEs
      come from the model cache by their keys.
    - The epsilon scan: the same sweep (:func:`mdl_utils.experiments.run_mnist_sweep`) with
      only ``epsilon`` changed, run into ``scan_dir/eps-<epsilon>``; SAEs whose training
      configuration coincides with another run's come from the cache. The scan at the
      sweep's own epsilon is the chapter-3 sweep itself.

    Every result carries the settings and provenance; the JSON holds everything the chapter
    plots, so that a test can recompute its numbers from it. ``wall_time_s`` is this call's
    (seconds when every SAE is already cached); ``scan_training_time_s`` sums the recorded
    training time of every SAE the sweeps at all tolerances trained (SAEs shared between
    tolerances are counted at each).
    """
    from mdl_utils.data import load_mnist
    from mdl_utils.experiments import load_mnist_sweep, run_mnist_sweep, settings_for
    from mdl_utils.mdl import decoder_fn, latents
    from mdl_utils.profiles import cache_dir as default_cache_dir
    from mdl_utils.profiles import provenance, write_results
    from mdl_utils.sweep import load_cached_sae

    started = time.time()
    out = Path(out_dir)
    cache_path = Path(cache) if cache is not None else default_cache_dir()
    settings = settings_for(profile)
    sweep_path = Path(sweep_dir) if sweep_dir is not None else cache_path / "mnist-sweep" / profile
    scan_path = Path(scan_dir) if scan_dir is not None else cache_path / "mnist-sweep" / f"{profile}-eps"
    if (sweep_path / "mdl.json").is_file():
        sweep, _ = load_mnist_sweep(sweep_path)
    else:
        sweep = run_mnist_sweep(settings, sweep_path, cache=cache_path, progress=progress)
    x_test, _ = load_mnist("test")
    x_test = x_test[: sweep["settings"]["n_test"]]
    epsilon = float(sweep["epsilon"])

    allocations, curves = [], []
    for row in _measured(sweep):
        sae = load_cached_sae(cache_path, row["key"])
        if progress:
            print(f"width {row['width']}: allocation and curve", file=sys.stderr)
        allocations.append(_allocation_summary(sae, x_test, epsilon, row))
        curve = rate_distortion_curve(latents(sae, x_test), decoder_fn(sae), x_test)
        curves.append({"width": int(row["width"]), "k": float(row["k"]), **curve})

    counts = crossing_counts(curves)
    crossings = [
        {"widths": [curves[i]["width"], curves[j]["width"]],
         "mse": curve_crossings(curves[i], curves[j])}
        for i in range(len(curves)) for j in range(i + 1, len(curves))
    ]

    scan_eps = sorted(set(float(e) for e in epsilons) | {epsilon})

    def scan_at(eps: float) -> dict[str, Any]:
        if math.isclose(eps, epsilon):
            return sweep
        if progress:
            print(f"epsilon scan: {eps}", file=sys.stderr)
        return run_mnist_sweep(replace(settings, epsilon=eps), scan_path / f"eps-{eps:.4f}",
                               cache=cache_path, progress=progress and parallel <= 1, executor=executor)

    parallel = getattr(executor, "capacity", 1)
    if parallel > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            payloads = list(pool.map(scan_at, scan_eps))
    else:
        payloads = [scan_at(eps) for eps in scan_eps]
    optima = []
    for eps, payload in zip(scan_eps, payloads):
        found = epsilon_optimum(payload)
        rows = [{k: r.get(k) for k in ("width", "status", "k", "mse", "l0", "dl_bits", "bits")}
                for r in payload["rows"]]
        optima.append({"epsilon": eps, "optimum": found, "rows": rows,
                       "training_time_s": payload.get("training_time_s"),
                       "n_saes_trained": payload.get("n_saes_trained")})

    found = [o["optimum"] for o in optima if o["optimum"] is not None]
    result = {
        "format_version": RESULTS_FORMAT_VERSION,
        "profile": profile,
        "epsilon": epsilon,
        "settings": asdict(settings),
        "sweep_optimum_width": sweep["optimum_width"],
        **provenance(started),
        "scan_training_time_s": round(sum(o["training_time_s"] or 0.0 for o in optima), 1),
        "allocations": allocations,
        "curves": curves,
        "crossing_counts": counts.tolist(),
        "crossings": crossings,
        "epsilon_scan": optima,
        "fits": fits_of(found),
    }
    write_results(out / "beyond.json", result, indent=1)
    return result


def load_beyond(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``out_dir/beyond.json`` as written by :func:`run_beyond`.

    Raises:
        FileNotFoundError: no such file (the message gives the command that makes it).
        ValueError: another results format.
    """
    from mdl_utils.profiles import read_results

    return read_results(
        Path(out_dir) / "beyond.json", version=RESULTS_FORMAT_VERSION,
        how_to_make="run `python -m mdl_utils beyond --profile full` after the chapter-3 sweep "
                    "(results/full/mdl.json) has finished",
    )


def main(argv: list[str]) -> int:
    """``python -m mdl_utils beyond``: the chapter-6 studies for a profile (resumable)."""
    from mdl_utils.profiles import parse_job_args, results_dir

    from mdl_utils.executors import add_executor_args, executor_from_args

    def extra(parser: Any) -> None:
        parser.add_argument("--sweep", type=Path, default=None,
                            help="the chapter-3 sweep's folder (default: results/<profile>)")
        add_executor_args(parser)

    args = parse_job_args(argv, prog="python -m mdl_utils beyond", doc=__doc__, out_subdir="beyond", threads=1,
                          extra=extra)
    sweep = args.sweep if args.sweep is not None else results_dir() / args.profile
    out = args.out
    if not (sweep / "mdl.json").is_file():
        print(f"error: {sweep / 'mdl.json'} does not exist: run `python -m mdl_utils.experiments "
              f"--profile {args.profile}` first", file=sys.stderr)
        return 1
    try:
        executor = executor_from_args(args, threads=args.threads)
    except (ValueError, ConnectionError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with executor:
            payload = run_beyond(args.profile, out, sweep_dir=sweep, cache=args.cache,
                                 scan_dir=out / "scan", progress=not args.no_progress, executor=executor)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'beyond.json'} in {payload['wall_time_s']:.0f} s")
    return 0
