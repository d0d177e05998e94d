"""The optimum against the tolerance, and rate-distortion curves, under the resolved protocol.

Chapter 6 asks how the epsilon-MDL optimum moves with the tolerance epsilon, and whether
"which SAE is better" depends on the tolerance at all. Both answers are only worth reading
with the discipline of chapter 3 (:mod:`mdl_utils.study`): converged SAEs, the continuous
precision that puts every compared SAE's quantised MSE *at* the tolerance, DL minimised over
k at each width, several seeds, and verdicts that can come out "not resolved".

- **The epsilon scan** (:func:`run_epsilon_scan`) runs chapter 3's study once per tolerance,
  with only ``epsilon`` changed (and the first k tried, a guess that only saves trainings).
  Loose tolerances need fewer than one active feature per digit: BatchTopK's k is a batch
  average (``round(k * batch_size)`` activations per batch), so the search may go down to
  ``k = 1/16`` (:data:`K_MIN`). SAEs whose training configuration recurs at several
  tolerances are trained once (the model cache is keyed by configuration), and the scan at
  chapter 3's own tolerance *is* chapter 3's study (same rows).
- **Power laws** (:func:`fit_scan`): the optimal width, its L0 and its DL against epsilon, as
  ``y = c * eps**alpha`` fitted per seed (each seed's own optimum at every tolerance); the
  exponent's interval is a t interval over the seeds' exponents. A law is called
  *supported* only when that interval excludes zero **and** the optimum is resolved, and
  not at the edge of the width grid, at every tolerance used.
- **Rate-distortion curves** (:func:`rate_distortion_curves`): each stored SAE's DL as the
  tolerance it must meet varies, on the continuous precision scale; and
  :func:`curve_crossings_with_spread`, which counts a crossing between two widths only when
  each width is shorter, by more than the seed spread, on its side of it.

Command line (resumable, like chapter 3's study; progress on stderr)::

    python -m mdl_utils epsilon-scan --profile full [--out DIR] [--budget-hours H]
        [--workers N | --ray-address HOST:PORT] [--summary-only]

Output: ``<out>/eps-<epsilon>/`` (one study per tolerance: rows, saes, summary) and
``<out>/scan.json`` (per tolerance: the resolution, each seed's optimum, the points; the fits
and their verdicts; the rate-distortion curves of chapter 3's SAEs and their crossings).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mdl_utils.protocol import (
    continuous_precision,
    index_of_k,
    k_of_index,
    optimum_index,
    reconstruction_mse,
    sparse_latents,
)
from mdl_utils.study import (
    StudySettings,
    load_rows,
    load_selected_sae,
    run_study,
    study_settings,
    summarise,
)

__all__ = [
    "EPSILONS",
    "K_MIN",
    "MSE_RATIOS",
    "QUICK_EPSILONS",
    "QUICK_SEEDS",
    "RESULTS_FORMAT_VERSION",
    "ExponentInterval",
    "PowerLawFit",
    "fit_power_law",
    "allocation_comparisons",
    "curve_crossings_with_spread",
    "fit_scan",
    "load_scan",
    "main",
    "rate_distortion_curves",
    "run_epsilon_scan",
    "scan_entry",
    "scan_settings",
    "study_dir_for",
    "summarise_scan",
]

RESULTS_FORMAT_VERSION = 1
#: Tolerances of the full scan (test MSE per pixel).
EPSILONS: tuple[float, ...] = (0.008, 0.010, 0.0125, 0.015, 0.020, 0.030, 0.050)
#: Tolerances of the quick profile (minutes): chapter 3's quick study and one looser tolerance.
QUICK_EPSILONS: tuple[float, ...] = (0.015, 0.025)
#: Seeds of the quick profile at the tolerances other than chapter 3's (one, to stay within minutes).
QUICK_SEEDS: tuple[int, ...] = (0,)
#: The smallest k any search may try (grid index -16).
K_MIN = 2.0**-4
#: Guessed exponent of the optimal L0 against epsilon, used only to choose the first k tried
#: at each tolerance (``k_start * (eps / eps_ref) ** -2``); the search finds the minimum from
#: any start, a good start only saves trainings. From the pre-protocol scan: L0 went from
#: about 20 at 0.010 to 10 at 0.015 and 6 at 0.020.
K_START_EXPONENT = -2.0
#: Tolerances of each rate-distortion curve, as multiples of the study's epsilon.
MSE_RATIOS: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0)


# --------------------------------------------------------------------------------------------
# Settings per tolerance, and where each study lives
# --------------------------------------------------------------------------------------------


def scan_settings(base: StudySettings, epsilon: float, seeds: Sequence[int] | None = None) -> StudySettings:
    """The study settings at ``epsilon``: ``base`` itself at its own tolerance, else ``base``
    with ``epsilon`` changed, ``k_min`` lowered to :data:`K_MIN`, the first k guessed, and
    ``seeds`` (default: the base's) as the seeds."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon!r}")
    if math.isclose(epsilon, base.epsilon, rel_tol=1e-9):
        return base
    guess = base.k_start * (epsilon / base.epsilon) ** K_START_EXPONENT
    j = max(index_of_k(guess), index_of_k(K_MIN))
    out = replace(base, epsilon=float(epsilon), k_min=K_MIN, k_start=k_of_index(j))
    if seeds is not None:
        if not seeds or seeds[0] != base.seeds[0]:
            raise ValueError(f"seeds must start with the base's first seed {base.seeds[0]}, got {list(seeds)}")
        out = replace(out, seeds=tuple(int(s) for s in seeds))
    return out


def study_dir_for(out: Path, epsilon: float, base: StudySettings, reference_dir: Path | None) -> Path:
    """The study folder of one tolerance: ``reference_dir`` (chapter 3's study) at the base
    tolerance when given, else ``out/eps-<epsilon>``."""
    if reference_dir is not None and math.isclose(epsilon, base.epsilon, rel_tol=1e-9):
        return reference_dir
    return out / f"eps-{epsilon:.4f}"


def _check_epsilons(epsilons: Sequence[float]) -> list[float]:
    eps = sorted({float(e) for e in epsilons})
    if len(eps) < 1:
        raise ValueError("epsilons is empty")
    for e in eps:
        if not (e > 0 and math.isfinite(e)):
            raise ValueError(f"every epsilon must be positive and finite, got {e!r}")
    return eps


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def run_epsilon_scan(
    base: StudySettings,
    out_dir: str | os.PathLike[str],
    *,
    epsilons: Sequence[float] = EPSILONS,
    reference_dir: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    budget_hours: float | None = None,
    device: str = "auto",
    progress: bool = True,
    data: Any = None,
    threads: int | None = 1,
    executor: Any = None,
    curves: bool = True,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run (or resume) chapter 3's study at every tolerance; write and return ``scan.json``.

    Work is ordered so that a partial run is the most useful part of the whole: first seed
    0 at every tolerance (its widths, then its fill-in widths), then the other seeds. With
    an executor of capacity above one (:mod:`mdl_utils.executors`), the tolerances run side
    by side. Everything is resumable: each study continues from its rows.

    Args:
        base: the study settings at the reference tolerance (chapter 3's); the scan changes
            only ``epsilon``, ``k_min`` and ``k_start`` (:func:`scan_settings`).
        out_dir: the scan's folder (one study per tolerance, and ``scan.json``).
        epsilons: the tolerances (test MSE per pixel).
        reference_dir: chapter 3's study folder, used (and continued) as the study at the
            base tolerance instead of running it again under ``out_dir``.
        cache, device, progress, data, threads, executor: as for
            :func:`mdl_utils.study.run_study`.
        budget_hours: stop starting new trainings after this much wall time overall.
        curves: also compute the rate-distortion curves and the per-feature precision
            comparison of the reference study's SAEs.
        seeds: the seeds at the tolerances other than the reference (default: the base's;
            the quick profile uses one, to stay within minutes).
    """
    eps_list = _check_epsilons(epsilons)
    out = Path(out_dir)
    ref = Path(reference_dir) if reference_dir is not None else None
    started = time.time()
    deadline = None if budget_hours is None else started + 3600 * budget_hours
    parallel = getattr(executor, "capacity", 1) if executor is not None else 1
    if data is None:
        from mdl_utils.sweep import DataSpec, prepare_data

        data = prepare_data(DataSpec(source="mnist", n_train=base.n_train, n_test=base.n_test))

    def remaining_hours() -> float | None:
        if deadline is None:
            return None
        return max(0.0, (deadline - time.time()) / 3600)

    for first_pass in (True, False):

        def one(eps: float, first_pass: bool = first_pass) -> None:
            settings = scan_settings(base, eps, seeds)
            if first_pass:
                settings = replace(settings, seeds=settings.seeds[:1])
            left = remaining_hours()
            if left is not None and left <= 0:
                return
            run_study(
                settings,
                study_dir_for(out, eps, base, ref),
                cache=cache,
                budget_hours=left,
                device=device,
                progress=progress and parallel <= 1,
                data=data,
                threads=threads,
                executor=executor,
            )

        if parallel > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(parallel, len(eps_list))) as pool:
                list(pool.map(one, eps_list))
        else:
            for eps in eps_list:
                one(eps)
    return summarise_scan(
        base,
        out,
        epsilons=eps_list,
        reference_dir=ref,
        data=data,
        curves=curves,
        seeds=seeds,
        started=started,
        write=True,
    )


# --------------------------------------------------------------------------------------------
# Reading one tolerance's study
# --------------------------------------------------------------------------------------------


def _seed_optima(settings: StudySettings, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each seed's own optimum: the width with the smallest DL* among that seed's finished,
    reachable searches (ties to the narrower), with where it sits on the grid."""
    out: dict[str, dict[str, Any]] = {}
    for seed in settings.seeds:
        cands = []
        for entry in summary["widths"]:
            s = entry["seeds"].get(str(seed))
            if s and s.get("complete") and s.get("reachable"):
                cands.append((s["dl_bits"], entry["width"], s))
        if not cands:
            continue
        dl, width, s = cands[optimum_index([c[0] for c in cands], [c[1] for c in cands])]  # type: ignore[index]
        reach = sorted(c[1] for c in cands)
        out[str(seed)] = {
            "width": width,
            "dl_bits": dl,
            "l0": s["l0"],
            "k": s["k"],
            "at_edge": width in (reach[0], reach[-1]) or width in (min(settings.widths), max(settings.widths)),
        }
    return out


def scan_entry(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the chapter reads about one tolerance, computed from its study's rows alone.

    Keys: ``epsilon``; ``complete`` and ``n_remaining`` (searches still to run);
    ``n_saes_trained``; ``resolution`` (:func:`mdl_utils.protocol.resolve_optimum` on the
    seed-mean DL*, None before any search finishes); ``at_edge`` (the optimum is the
    narrowest or widest reachable width, or an end of the grid, so the true optimum may lie
    outside it); ``optimum`` (its width, mean DL*, seed spread, mean L0 and k over its seeds);
    ``seed_optima`` (each seed's own optimum); ``dl_star`` (the per-width table).
    """
    summary = summarise(settings, rows)
    res = summary["resolution"]
    entry: dict[str, Any] = {
        "epsilon": settings.epsilon,
        "k_min": settings.k_min,
        "k_start": settings.k_start,
        "complete": summary["complete"],
        "n_remaining": len(summary["remaining"]),
        "n_saes_trained": summary["n_saes_trained"],
        "training_time_s": summary["training_time_s"],
        "devices": summary["devices"],
        "resolution": res,
        "dl_star": summary["dl_star"],
        "seed_optima": _seed_optima(settings, summary),
        "optimum": None,
        "at_edge": None,
    }
    if res is None:
        return entry
    opt = res["optimum"]
    reach = sorted(row["width"] for row in summary["dl_star"])
    table = next(row for row in summary["dl_star"] if row["width"] == opt)
    width_entry = next(e for e in summary["widths"] if e["width"] == opt)
    per_seed = [width_entry["seeds"][str(s)] for s in table["dl_by_seed"]]
    entry["optimum"] = {
        "width": opt,
        "dl_bits": table["mean"],
        "seed_std": table["seed_std"],
        "n_seeds": table["n_seeds"],
        "boot_ci": table["boot_ci"],
        "l0": float(np.mean([p["l0"] for p in per_seed])),
        "k": float(np.mean([p["k"] for p in per_seed])),
        "tie_set": res["tie_set"],
        "resolved": res["resolved"],
        "provisional": bool(res.get("provisional")),
    }
    entry["at_edge"] = opt in (reach[0], reach[-1]) or opt in (min(settings.widths), max(settings.widths))
    return entry


# --------------------------------------------------------------------------------------------
# Power laws with intervals over seeds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExponentInterval:
    """The exponent alpha of ``y = c * eps**alpha`` with a 95% interval, and the verdict.

    Attributes:
        quantity: ``"width"``, ``"l0"`` or ``"dl_bits"`` (of the optimum).
        exponents: the exponent fitted to each seed's own optima (seed -> alpha).
        mean: their mean (with one seed: that seed's exponent).
        low, high: the 95% interval: a t interval over the seeds' exponents with two or
            more seeds; with one seed, the least-squares standard error of its fit (t with
            n - 2 degrees of freedom); None when neither exists.
        method: ``"seeds"`` or ``"one seed, least-squares error"``.
        n_epsilons: tolerances used per seed (those where the seed has an optimum).
        excludes_zero: the interval lies wholly on one side of zero.
        supported: ``excludes_zero`` and every tolerance used is complete, resolved and not
            at the edge of the width grid.
        reasons: why not supported (empty when supported).
    """

    quantity: str
    exponents: dict[str, float]
    mean: float | None
    low: float | None
    high: float | None
    method: str
    n_epsilons: int
    excludes_zero: bool
    supported: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Least-squares exponent of ``y = c * x**alpha``: (alpha, its standard error, n)."""

    fit = fit_power_law(x, y)
    return fit.exponent, fit.exponent_stderr, fit.n_points


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


def fit_scan(entries: Sequence[dict[str, Any]], *, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Fit the optimal width, L0 and DL against epsilon, per seed, with intervals and verdicts.

    ``entries`` are :func:`scan_entry` results. For each seed, its own optimum at every
    tolerance where it has one gives the points; a seed needs at least two tolerances (three
    for a standard error). See :class:`ExponentInterval` for the interval and the verdict.
    """
    reasons: list[str] = []
    for e in entries:
        tag = f"eps={e['epsilon']:g}"
        if not e["complete"]:
            reasons.append(f"{tag}: study not finished ({e['n_remaining']} searches left)")
        if e["resolution"] is None:
            reasons.append(f"{tag}: no optimum yet")
            continue
        if not e["resolution"]["resolved"]:
            if e["resolution"].get("provisional") and len(e["resolution"]["tie_set"]) == 1:
                reasons.append(f"{tag}: optimum provisional until the study is finished")
            else:
                reasons.append(f"{tag}: optimum not resolved (tie set {list(e['resolution']['tie_set'])})")
        if e["at_edge"]:
            reasons.append(f"{tag}: optimum at the edge of the width grid")
    seeds = sorted({s for e in entries for s in e["seed_optima"]}, key=int)
    out: dict[str, dict[str, Any]] = {}
    for quantity in ("width", "l0", "dl_bits"):
        exponents: dict[str, float] = {}
        one_seed_se: tuple[float, float, int] | None = None
        n_eps = 0
        for seed in seeds:
            pts = [(e["epsilon"], e["seed_optima"][seed][quantity]) for e in entries if seed in e["seed_optima"]]
            if len(pts) < 2:
                continue
            try:
                alpha, se, n = _fit([p[0] for p in pts], [p[1] for p in pts])
            except ValueError:
                continue
            exponents[seed] = alpha
            n_eps = max(n_eps, n)
            if one_seed_se is None:
                one_seed_se = (alpha, se, n)
        low = high = mean = None
        method = "seeds"
        if len(exponents) >= 2:
            vals = np.array(list(exponents.values()))
            mean = float(vals.mean())
            half = float(stats.t.ppf(0.5 + level / 2, len(vals) - 1) * vals.std(ddof=1) / math.sqrt(len(vals)))
            low, high = mean - half, mean + half
        elif len(exponents) == 1 and one_seed_se is not None:
            method = "one seed, least-squares error"
            alpha, se, n = one_seed_se
            mean = alpha
            if n > 2 and math.isfinite(se):
                half = float(stats.t.ppf(0.5 + level / 2, n - 2) * se)
                low, high = alpha - half, alpha + half
        excludes = low is not None and high is not None and (low > 0 or high < 0)
        why = list(reasons)
        if low is None:
            why.append("no interval (too few seeds or tolerances)")
        elif not excludes:
            why.append(f"the interval [{low:.3g}, {high:.3g}] includes zero")
        out[quantity] = ExponentInterval(
            quantity=quantity,
            exponents=exponents,
            mean=mean,
            low=low,
            high=high,
            method=method,
            n_epsilons=n_eps,
            excludes_zero=excludes,
            supported=excludes and not reasons and bool(entries),
            reasons=tuple(why),
        ).to_dict()
    return out


# --------------------------------------------------------------------------------------------
# Rate-distortion curves on the continuous scale, and crossings that survive the seed spread
# --------------------------------------------------------------------------------------------


def rate_distortion_curves(
    study_dir: str | os.PathLike[str],
    settings: StudySettings,
    x_test: Any,
    *,
    tolerances: Sequence[float] | None = None,
    max_width: int | None = None,
    previous: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """DL of each stored (width, seed) SAE of a study as the tolerance it must meet varies.

    For every SAE stored under ``study_dir/saes`` (each (width, seed)'s DL-optimal SAE at the
    study's epsilon) and every tolerance t (default: :data:`MSE_RATIOS` times epsilon), the
    continuous precision is found afresh (:func:`mdl_utils.protocol.continuous_precision`)
    and the DL at it recorded; None where the SAE's unquantised MSE is already above t.

    ``previous`` curves (from an earlier ``scan.json``) are reused for an SAE whose weights
    file has the same SHA-256 and whose tolerances are the same, so a rewrite after new rows
    only measures the SAEs that changed.

    Returns:
        One dict per SAE: ``width``, ``seed``, ``k``, ``mse`` (unquantised), ``tolerances``,
        ``dl_bits`` (list aligned with ``tolerances``), ``bits``, ``sae_sha256``.
    """
    from mdl_utils.entropy import description_length

    tol = [float(t) for t in (tolerances if tolerances is not None else [settings.epsilon * r for r in MSE_RATIOS])]
    if any(not (t > 0 and math.isfinite(t)) for t in tol) or not tol:
        raise ValueError(f"tolerances must be positive and finite, got {tol!r}")
    x = np.asarray(x_test, dtype=np.float32)
    saes = Path(study_dir) / "saes"
    out = []
    for path in sorted(saes.glob("w*-s*.json")):
        width, seed = (int(p[1:]) for p in path.stem.split("-"))
        if max_width is not None and width > max_width:
            continue
        if not path.with_suffix(".safetensors").is_file():
            continue
        sha = _sha256(path.with_suffix(".safetensors"))
        old = next(
            (
                c
                for c in previous
                if (c.get("width"), c.get("seed"), c.get("sae_sha256"), c.get("tolerances")) == (width, seed, sha, tol)
            ),
            None,
        )
        if old is not None:
            out.append(dict(old))
            continue
        sae = load_selected_sae(study_dir, width, seed)
        z = sparse_latents(sae, x)
        mse = reconstruction_mse(sae, z, x)
        dls: list[float | None] = []
        bits: list[float | None] = []
        for t in tol:
            if mse > t:
                dls.append(None)
                bits.append(None)
                continue
            p = continuous_precision(sae, z, x, epsilon=t)
            dls.append(float(description_length(z, bits=p.bits).dl_bits))
            bits.append(float(p.bits))
        out.append(
            {
                "width": width,
                "seed": seed,
                "k": float(sae.k),
                "mse": float(mse),
                "tolerances": tol,
                "dl_bits": dls,
                "bits": bits,
                "sae_sha256": sha,
            }
        )
    return out


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def allocation_comparisons(
    study_dir: str | os.PathLike[str],
    settings: StudySettings,
    x_test: Any,
    *,
    max_width: int | None = None,
    previous: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """:func:`mdl_utils.allocation.compare_at_equal_mse` at the study's epsilon for every stored
    (width, seed) SAE up to ``max_width``, each tagged with its width, seed and weights' SHA-256
    (``previous`` results for the same weights and epsilon are reused)."""
    from mdl_utils.allocation import compare_at_equal_mse

    x = np.asarray(x_test, dtype=np.float32)
    out = []
    for path in sorted(Path(study_dir, "saes").glob("w*-s*.json")):
        width, seed = (int(p[1:]) for p in path.stem.split("-"))
        if (max_width is not None and width > max_width) or not path.with_suffix(".safetensors").is_file():
            continue
        sha = _sha256(path.with_suffix(".safetensors"))
        old = next(
            (
                a
                for a in previous
                if (a.get("width"), a.get("seed"), a.get("sae_sha256"), a.get("epsilon"))
                == (width, seed, sha, settings.epsilon)
            ),
            None,
        )
        if old is not None:
            out.append(dict(old))
            continue
        sae = load_selected_sae(study_dir, width, seed)
        out.append({"seed": seed, "sae_sha256": sha, **compare_at_equal_mse(sae, x, epsilon=settings.epsilon)})
    return out


def curve_crossings_with_spread(curves: Sequence[dict[str, Any]], *, coverage: float = 0.95) -> list[dict[str, Any]]:
    """For each pair of widths, which is shorter at each tolerance, and whether that flips.

    At each tolerance where both widths have at least two seeds with a DL, the difference of
    seed-mean DLs is compared with the half-width of its two-sided ``coverage`` t interval:
    the t quantile (degrees of freedom: the smaller seed count minus one, conservative for
    Welch's test) times the standard error ``sqrt(s_a**2/n_a + s_b**2/n_b)``. With three
    seeds the quantile is 4.30, not the normal 1.96: few seeds give wide intervals.
    The sign there is ``"a"`` (width a shorter by more than that), ``"b"``, or ``"tie"``
    (also where a width has fewer than two seeds: its spread is unknown).

    Returns:
        One dict per pair: ``widths`` [a, b]; ``order`` (the sign at each tolerance);
        ``raw_crossings`` (sign changes of the mean difference, noise ignored: what a single
        curve per width would show); ``crossings`` (the surviving ones: ``a`` shorter by more
        than the spread at one tolerance and ``b`` at a later one, or the reverse, each given
        as the pair of tolerances that brackets it); ``depends_on_tolerance``.
    """
    by_width: dict[int, list[dict[str, Any]]] = {}
    for c in curves:
        by_width.setdefault(int(c["width"]), []).append(c)
    widths = sorted(by_width)
    out = []
    for i, a in enumerate(widths):
        for b in widths[i + 1 :]:
            tol = by_width[a][0]["tolerances"]
            order: list[str] = []
            diffs: list[float | None] = []
            for t_i in range(len(tol)):
                va = [c["dl_bits"][t_i] for c in by_width[a] if c["dl_bits"][t_i] is not None]
                vb = [c["dl_bits"][t_i] for c in by_width[b] if c["dl_bits"][t_i] is not None]
                if not va or not vb:
                    order.append("missing")
                    diffs.append(None)
                    continue
                d = float(np.mean(vb) - np.mean(va))  # > 0: a shorter
                diffs.append(d)
                if len(va) < 2 or len(vb) < 2:
                    order.append("tie")
                    continue
                se = math.sqrt(np.var(va, ddof=1) / len(va) + np.var(vb, ddof=1) / len(vb))
                half = float(stats.t.ppf(0.5 + coverage / 2, min(len(va), len(vb)) - 1)) * se
                order.append("a" if d > half else "b" if d < -half else "tie")
            raw = []
            known = [(t_i, d) for t_i, d in enumerate(diffs) if d is not None and d != 0]
            for (t0, d0), (t1, d1) in zip(known, known[1:]):
                if (d0 > 0) != (d1 > 0):
                    raw.append([tol[t0], tol[t1]])
            surviving = []
            decided = [(t_i, s) for t_i, s in enumerate(order) if s in ("a", "b")]
            for (t0, s0), (t1, s1) in zip(decided, decided[1:]):
                if s0 != s1:
                    surviving.append([tol[t0], tol[t1]])
            out.append(
                {
                    "widths": [a, b],
                    "tolerances": tol,
                    "order": order,
                    "mean_difference": diffs,
                    "raw_crossings": raw,
                    "crossings": surviving,
                    "depends_on_tolerance": bool(surviving),
                }
            )
    return out


# --------------------------------------------------------------------------------------------
# The whole scan
# --------------------------------------------------------------------------------------------


def summarise_scan(
    base: StudySettings,
    out_dir: str | os.PathLike[str],
    *,
    epsilons: Sequence[float] = EPSILONS,
    reference_dir: str | os.PathLike[str] | None = None,
    data: Any = None,
    curves: bool = True,
    curve_max_width: int | None = 1024,
    seeds: Sequence[int] | None = None,
    started: float | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """``scan.json`` from the rows on disk (no training): entries, fits, curves, crossings,
    and per-feature against uniform precision (:func:`mdl_utils.allocation.compare_at_equal_mse`)
    for every stored SAE of the reference study up to ``curve_max_width``."""
    from mdl_utils.profiles import provenance, write_results

    started = time.time() if started is None else started
    out = Path(out_dir)
    ref = Path(reference_dir) if reference_dir is not None else None
    entries = []
    for eps in _check_epsilons(epsilons):
        settings = scan_settings(base, eps, seeds)
        folder = study_dir_for(out, eps, base, ref)
        rows = load_rows(folder) if (folder / "rows").is_dir() else []
        entries.append(
            scan_entry(settings, rows)
            if rows
            else {
                "epsilon": eps,
                "k_min": settings.k_min,
                "k_start": settings.k_start,
                "complete": False,
                "n_remaining": None,
                "n_saes_trained": 0,
                "training_time_s": 0.0,
                "devices": [],
                "resolution": None,
                "dl_star": [],
                "seed_optima": {},
                "optimum": None,
                "at_edge": None,
            }
        )
    result: dict[str, Any] = {
        "format_version": RESULTS_FORMAT_VERSION,
        "reference_epsilon": base.epsilon,
        "settings": asdict(base),
        "entries": entries,
        "fits": fit_scan([e for e in entries if e["n_saes_trained"]]),
        "complete": all(e["complete"] for e in entries),
        "n_saes_trained": sum(e["n_saes_trained"] for e in entries),
        "training_time_s": round(sum(e["training_time_s"] or 0.0 for e in entries), 1),
        "curves": [],
        "crossings": [],
        "allocations": [],
    }
    ref_folder = study_dir_for(out, base.epsilon, base, ref)
    previous: dict[str, Any] = {}
    if (out / "scan.json").is_file():
        try:
            previous = load_scan(out)
        except (ValueError, OSError):
            previous = {}
    if curves and (ref_folder / "saes").is_dir():
        if data is None:
            from mdl_utils.sweep import DataSpec, prepare_data

            data = prepare_data(DataSpec(source="mnist", n_train=base.n_train, n_test=base.n_test))
        result["curves"] = rate_distortion_curves(
            ref_folder, base, data.split("test"), max_width=curve_max_width, previous=previous.get("curves", [])
        )
        result["crossings"] = curve_crossings_with_spread(result["curves"])
        result["allocations"] = allocation_comparisons(
            ref_folder, base, data.split("test"), max_width=curve_max_width, previous=previous.get("allocations", [])
        )
    result.update(provenance(started))
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_results(out / "scan.json", result, indent=1)
    return result


def load_scan(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``out_dir/scan.json`` (see :func:`summarise_scan`).

    Raises:
        FileNotFoundError: no such file (the message gives the command that makes it).
        ValueError: another results format.
    """
    from mdl_utils.profiles import read_results

    return read_results(
        Path(out_dir) / "scan.json",
        version=RESULTS_FORMAT_VERSION,
        how_to_make="run `python -m mdl_utils epsilon-scan --profile full`",
    )


def main(argv: list[str]) -> int:
    """``python -m mdl_utils epsilon-scan``: run or resume the scan, or rewrite its summary."""
    import argparse

    from mdl_utils.executors import add_executor_args, executor_from_args
    from mdl_utils.profiles import cache_dir, results_dir

    parser = argparse.ArgumentParser(
        prog="python -m mdl_utils epsilon-scan",
        description="Chapter 6's epsilon scan: chapter 3's study at several tolerances, resumable.",
    )
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--out", help="output folder (default: results/<profile>/epsilon-scan)")
    parser.add_argument(
        "--reference",
        help="chapter 3's study folder, reused at its tolerance "
        "(default: results/full/mnist-mdl for full, the cache for quick)",
    )
    parser.add_argument("--epsilons", type=float, nargs="+", help=f"tolerances (default: {list(EPSILONS)})")
    parser.add_argument("--cache", help="model cache (default: $MDL_CACHE_DIR or ~/.cache/mdl-sae/models)")
    parser.add_argument("--budget-hours", type=float, help="stop starting new trainings after this many hours")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="training device: auto, cpu or cuda")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-curves", action="store_true", help="skip the rate-distortion curves")
    parser.add_argument(
        "--summary-only", action="store_true", help="only rewrite scan.json from the rows on disk (no training)"
    )
    add_executor_args(parser)
    args = parser.parse_args(argv)
    base = study_settings(args.profile)
    out = Path(args.out) if args.out else results_dir() / args.profile / "epsilon-scan"
    if args.reference:
        ref = Path(args.reference)
    elif args.profile == "full":
        ref = results_dir() / "full" / "mnist-mdl"
    else:
        ref = cache_dir() / "mnist-mdl" / "quick"
    eps = args.epsilons or (EPSILONS if args.profile == "full" else QUICK_EPSILONS)
    seeds = None if args.profile == "full" else QUICK_SEEDS
    import torch

    # One thread by default, as the study's jobs: float sums then do not depend on the core
    # count, so the curves and allocations reproduce exactly on another machine.
    torch.set_num_threads(args.threads)
    try:
        if args.summary_only:
            result = summarise_scan(base, out, epsilons=eps, reference_dir=ref, curves=not args.no_curves, seeds=seeds)
        else:
            try:
                executor = executor_from_args(args, device=args.device, threads=args.threads)
            except (ValueError, ConnectionError, RuntimeError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            with executor:
                result = run_epsilon_scan(
                    base,
                    out,
                    epsilons=eps,
                    reference_dir=ref,
                    cache=args.cache,
                    budget_hours=args.budget_hours,
                    device=args.device,
                    progress=not args.no_progress,
                    threads=args.threads,
                    executor=executor,
                    curves=not args.no_curves,
                    seeds=seeds,
                )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for e in result["entries"]:
        o = e["optimum"]
        state = (
            "complete"
            if e["complete"]
            else ("not run yet" if not e["n_saes_trained"] else f"{e['n_remaining']} searches left")
        )
        if o is None:
            print(f"eps={e['epsilon']:g}: no optimum yet ({state})")
        else:
            verdict = (
                "resolved"
                if o["resolved"]
                else (
                    "provisional"
                    if o.get("provisional") and len(o["tie_set"]) == 1
                    else f"not resolved, tie set {list(o['tie_set'])}"
                )
            )
            print(
                f"eps={e['epsilon']:g}: optimum width {o['width']} ({verdict}), DL* {o['dl_bits']:.2f} "
                f"bits, L0 {o['l0']:.2f}{', at the grid edge' if e['at_edge'] else ''} ({state})"
            )
    for q, f in result["fits"].items():
        interval = "no interval" if f["low"] is None else f"[{f['low']:.3g}, {f['high']:.3g}]"
        print(
            f"{q} ~ eps^alpha: alpha {f['mean'] if f['mean'] is None else round(f['mean'], 3)} "
            f"{interval}: {'supported' if f['supported'] else 'not supported'}"
        )
    print(f"wrote {out / 'scan.json'}", file=sys.stderr)
    return 0
