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
- **Power laws** (:func:`mdl_utils.power_law.fit_scan`): the optimal width, its L0 and its
  DL against epsilon, as ``y = c * eps**alpha`` fitted per seed (each seed's own optimum at
  every tolerance); the exponent's interval is a t interval over the seeds' exponents. A law
  is called *supported* only when that interval excludes zero **and** the optimum is
  resolved, and not at the edge of the width grid, at every tolerance used.
- **Rate-distortion curves** (:func:`mdl_utils.rate_distortion.rate_distortion_curves`):
  each stored SAE's DL as the tolerance it must meet varies, on the continuous precision
  scale; and :func:`mdl_utils.rate_distortion.curve_crossings_with_spread`, which counts a
  crossing between two widths only when each width is shorter, by more than the seed spread,
  on its side of it.

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
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mdl_utils.executors import ProgressMode, check_progress_mode
from mdl_utils.power_law import fit_scan
from mdl_utils.protocol import index_of_k, k_of_index
from mdl_utils.resolution import optimum_index
from mdl_utils.rate_distortion import allocation_comparisons, curve_crossings_with_spread, rate_distortion_curves
from mdl_utils.study import run_study
from mdl_utils.study_store import load_rows
from mdl_utils.scan_results import SCAN_FORMAT_VERSION, ScanResults, read_scan
from mdl_utils.study_plan import StudySettings, study_settings
from mdl_utils.study_summary import StudySummary, read_summary, rewrite_summary, summarise

__all__ = [
    "EPSILONS",
    "K_MIN",
    "STOP_WIDENING",
    "EXTEND_DOWN_TO",
    "REPLICATE_WITHIN",
    "QUICK_EPSILONS",
    "QUICK_SEEDS",
    "RESULTS_FORMAT_VERSION",
    "load_scan",
    "main",
    "run_epsilon_scan",
    "rewrite_study_summaries",
    "scan_entry",
    "scan_settings",
    "study_dir_for",
    "summarise_scan",
]

RESULTS_FORMAT_VERSION = SCAN_FORMAT_VERSION
#: Tolerances of the full scan (test MSE per pixel).
EPSILONS: tuple[float, ...] = (0.008, 0.010, 0.0125, 0.015, 0.020, 0.030, 0.050)
#: Tolerances of the quick profile (minutes): chapter 3's quick study and one looser tolerance.
QUICK_EPSILONS: tuple[float, ...] = (0.015, 0.025)
#: Seeds of the quick profile at the tolerances other than chapter 3's (one, to stay within minutes).
QUICK_SEEDS: tuple[int, ...] = (0,)
#: The smallest k any search may try (grid index -16).
K_MIN = 2.0**-4
#: The width rule of the tolerances other than chapter 3's
#: (:attr:`mdl_utils.study_plan.StudySettings.stop_widening`): wider doubling widths are not
#: searched once two consecutive ones have a seed-0 DL* more than 10% above the smallest DL*
#: of the narrower widths. Fixed before any SAE of the scan was trained, from chapter 3 alone:
#: there DL* rises at every doubling past the optimum (seed-0 DL* 68.9 bits at width 128;
#: +12% at 512, +18% at 1024, +42% at 4096), the seed spread is at most 1.5 bits (2%), and
#: widths 2048 and 4096 took 15 of its 20.6 hours of training. A width 10% (about 7 bits)
#: longer than the best narrower one, twice in a row, is far outside the seed noise. (That
#: spread was read before chapter 3's last seeds at width 4096 were in; with every seed in,
#: the seed standard deviation is at most 1.5 bits (2.0%) up to width 2048 and 2.3 bits
#: (2.4%) at 4096.)
STOP_WIDENING = 0.10
#: The further seeds' widths at the tolerances other than chapter 3's
#: (:attr:`mdl_utils.study_plan.StudySettings.replicate_within`): seeds 1 and 2 search only
#: the widths whose seed-0 DL* is at most 10% above the smallest seed-0 DL*; the others keep
#: one seed. Added on 2026-12-04, for cost, after seed 0 had finished every planned width at
#: every tolerance (so it was chosen with the seed-0 curves in view; it decides only which
#: widths get more seeds, not how the optimum is read). The margin is the width rule's, and
#: chapter 3 bounds what it can miss: there, with three seeds at every width, seed 0 is at
#: most 4.1% above the best other seed (width 4096; 2.4% elsewhere) and the seed standard
#: deviation at most 2.4%: more seeds would have to lower a width's mean by more than twice
#: the largest offset seen there to bring a width 10% above the best seed-0 DL* within the
#: optimum's tie set (about 1-2% wide). The widths it leaves at one seed are the
#: widest and costliest to train (15-40 CPU-minutes per SAE at widths 1024-4096).
REPLICATE_WITHIN = 0.10
#: The narrow end of the grid at the tolerances other than chapter 3's
#: (:attr:`mdl_utils.study_plan.StudySettings.extend_down_to`): while seed 0's optimum is the
#: narrowest width searched, half that width is searched too, down to width 4. Added on
#: 2026-12-04, when at eps 0.05 only width 32 (the grid's narrowest) had a finished search
#: and no wider one had been read: at a loose tolerance the optimum can lie below the grid,
#: and an optimum at the grid's end cannot be resolved. Narrow SAEs train in minutes.
EXTEND_DOWN_TO = 4
#: Guessed exponent of the optimal L0 against epsilon, used only to choose the first k tried
#: at each tolerance (``k_start * (eps / eps_ref) ** -2``); the search finds the minimum from
#: any start, a good start only saves trainings. From the pre-protocol scan: L0 went from
#: about 20 at 0.010 to 10 at 0.015 and 6 at 0.020.
K_START_EXPONENT = -2.0


# --------------------------------------------------------------------------------------------
# Settings per tolerance, and where each study lives
# --------------------------------------------------------------------------------------------


def scan_settings(base: StudySettings, epsilon: float, seeds: Sequence[int] | None = None) -> StudySettings:
    """The study settings at ``epsilon``: ``base`` itself at its own tolerance, else ``base``
    with ``epsilon`` changed, ``k_min`` lowered to :data:`K_MIN`, the first k guessed, the
    width rule :data:`STOP_WIDENING` on, the grid extended below its narrowest width while
    that is the optimum (:data:`EXTEND_DOWN_TO`), the further seeds kept to the widths near
    the best (:data:`REPLICATE_WITHIN`), and ``seeds`` (default: the base's) as the
    seeds."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon!r}")
    if math.isclose(epsilon, base.epsilon, rel_tol=1e-9):
        return base
    guess = base.k_start * (epsilon / base.epsilon) ** K_START_EXPONENT
    j = max(index_of_k(guess), index_of_k(K_MIN))
    out = replace(
        base,
        epsilon=float(epsilon),
        k_min=K_MIN,
        k_start=k_of_index(j),
        stop_widening=STOP_WIDENING,
        extend_down_to=min(EXTEND_DOWN_TO, min(base.widths)),
        replicate_within=REPLICATE_WITHIN,
    )
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


def _tolerance_log(epsilon: float) -> Callable[[str], None]:
    """A study's progress lines on stderr, each prefixed with its tolerance."""

    def log(message: str) -> None:
        print(f"[eps {epsilon:g}] {message}", file=sys.stderr, flush=True)

    return log


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
    progress: ProgressMode = True,
    data: Any = None,
    threads: int | None = 1,
    executor: Any = None,
    curves: bool = True,
    seeds: Sequence[int] | None = None,
) -> ScanResults:
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
    progress = check_progress_mode(progress)
    out = Path(out_dir)
    ref = Path(reference_dir) if reference_dir is not None else None
    started = time.time()
    deadline = None if budget_hours is None else started + 3600 * budget_hours
    parallel = getattr(executor, "capacity", 1) if executor is not None else 1
    if data is None:
        from mdl_utils.data import DataSpec, prepare_data

        data = prepare_data(DataSpec(source="mnist", n_train=base.n_train, n_test=base.n_test))

    def remaining_hours() -> float | None:
        if deadline is None:
            return None
        return max(0.0, (deadline - time.time()) / 3600)

    for first_pass in (True, False):

        def one(eps: float, first_pass: bool = first_pass) -> None:
            study = scan_settings(base, eps, seeds)
            settings = replace(study, seeds=study.seeds[:1]) if first_pass else study
            left = remaining_hours()
            if left is not None and left <= 0:
                return
            study_dir = study_dir_for(out, eps, base, ref)
            if study_dir == ref and (first_pass or _finished(study_dir)):
                # Chapter 3's own study is only continued while unfinished, with all its seeds:
                # a run with the first pass's one seed would rewrite its summary for that seed.
                return
            # Side by side, one progress bar per tolerance would overwrite the others: each
            # trained SAE is reported on its own line, prefixed with its tolerance.
            log = _tolerance_log(eps) if progress and parallel > 1 else None
            run_study(
                settings,
                study_dir,
                cache=cache,
                budget_hours=left,
                device=device,
                progress=progress and parallel <= 1,
                log=log,
                data=data,
                threads=threads,
                executor=executor,
                # The first pass's summary.json describes every seed (the rest remain), not a
                # finished one-seed study.
                summary_seeds=study.seeds,
            )

        if parallel > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(parallel, len(eps_list))) as pool:
                list(pool.map(one, eps_list))
        else:
            for eps in eps_list:
                one(eps)
    # A budget can stop a run before it visits every tolerance: each summary is recomputed from
    # its rows, so a change to the summary reaches them all.
    rewrite_study_summaries(
        base, out, epsilons=eps_list, reference_dir=ref, seeds=seeds, d_in=int(data.split("test").shape[1])
    )
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


def _finished(study_dir: Path) -> bool:
    """Whether a study's summary on disk says every search has ended."""
    path = study_dir / "summary.json"
    return path.is_file() and read_summary(path).complete


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
        best_at = optimum_index([c[0] for c in cands], [c[1] for c in cands])
        assert best_at is not None  # every candidate has a DL
        dl, width, s = cands[best_at]
        reach = sorted(c[1] for c in cands)
        out[str(seed)] = {
            "width": width,
            "dl_bits": dl,
            "l0": s["l0"],
            "k": s["k"],
            # The ends of the searched, reachable widths (the grid's ends among them).
            "at_edge": width in (reach[0], reach[-1]),
        }
    return out


def scan_entry(settings: StudySettings, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the chapter reads about one tolerance, computed from its study's rows alone.

    Keys: ``epsilon``; ``complete`` and ``n_remaining`` (searches still to run);
    ``n_saes_trained``; ``resolution`` (:func:`mdl_utils.resolution.resolve_optimum` on the
    seed-mean DL*, None before any search finishes); ``at_edge`` (the optimum is the
    narrowest or widest reachable width, or an end of the grid, so the true optimum may lie
    outside it); ``optimum`` (its width, mean DL*, seed spread, mean L0 and k over its seeds);
    ``seed_optima`` (each seed's own optimum); ``dl_star`` (the per-width table);
    ``widths_capped`` (widths whose DL* is only an upper bound,
    :attr:`mdl_utils.study_summary.StudySummary.widths_capped`).
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
        "widths_not_searched": summary.get("widths_not_searched", []),
        "widths_below_grid": summary.get("widths_below_grid", []),
        "widths_one_seed": summary.get("widths_one_seed", []),
        # Widths whose DL* is only an upper bound (a k search used up its trainings with DL
        # still falling): any one can hide the true optimum (mdl_utils.resolution.Bracket).
        "widths_capped": StudySummary.from_dict(summary).widths_capped,
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
    # The narrowest or widest reachable width searched: the grid's own ends are among these
    # whenever they are reachable (and an unreachable end cannot be the optimum).
    entry["at_edge"] = opt in (reach[0], reach[-1])
    return entry


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
) -> ScanResults:
    """``scan.json`` from the rows on disk (no training): entries, fits, curves, crossings,
    and per-feature against uniform precision (:func:`mdl_utils.allocation_checks.compare_at_equal_mse`)
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
                "widths_not_searched": [],
                "widths_below_grid": [],
                "widths_one_seed": [],
            }
        )
    result: dict[str, Any] = {
        "format_version": RESULTS_FORMAT_VERSION,
        "reference_epsilon": base.epsilon,
        "settings": base.to_dict(),
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
            previous = load_scan(out).to_dict()
        except (ValueError, OSError):
            previous = {}
    if curves and (ref_folder / "saes").is_dir():
        if data is None:
            from mdl_utils.data import DataSpec, prepare_data

            data = prepare_data(DataSpec(source="mnist", n_train=base.n_train, n_test=base.n_test))
        result["curves"] = rate_distortion_curves(
            ref_folder, base, data.split("test"), max_width=curve_max_width, previous=previous.get("curves", [])
        )
        result["crossings"] = curve_crossings_with_spread(result["curves"])
        result["allocations"] = allocation_comparisons(
            ref_folder, base, data.split("test"), max_width=curve_max_width, previous=previous.get("allocations", [])
        )
    result.update(provenance(started))
    scan = ScanResults.from_dict(result)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_results(out / "scan.json", scan.to_dict(), indent=1)
    return scan


def rewrite_study_summaries(
    base: StudySettings,
    out_dir: str | os.PathLike[str],
    *,
    epsilons: Sequence[float] = EPSILONS,
    reference_dir: str | os.PathLike[str] | None = None,
    seeds: Sequence[int] | None = None,
    d_in: int = 784,
) -> list[Path]:
    """Recompute each tolerance's ``summary.json`` from its rows (no training), keeping what
    the run that trained them recorded (machine, date, wall time, code version, budget stop,
    executor), so that a change to :func:`mdl_utils.study_summary.summarise` reaches the
    tolerances a budgeted run did not get to (:func:`mdl_utils.study_summary.rewrite_summary`).
    Chapter 3's study (``reference_dir``) is left alone: it has its own job. Returns the files
    rewritten.
    """
    out = Path(out_dir)
    ref = Path(reference_dir) if reference_dir is not None else None
    written = []
    for eps in _check_epsilons(epsilons):
        folder = study_dir_for(out, eps, base, ref)
        path = folder / "summary.json"
        if (ref is not None and folder == ref) or not (folder / "rows").is_dir() or not path.is_file():
            continue
        rewrite_summary(path, summarise(scan_settings(base, eps, seeds), load_rows(folder), d_in=d_in))
        written.append(path)
    return written


def load_scan(out_dir: str | os.PathLike[str]) -> ScanResults:
    """Read ``out_dir/scan.json`` (see :func:`summarise_scan`) as typed records.

    Raises:
        FileNotFoundError: no such file (the message gives the command that makes it).
        ValueError: another results format, or not a scan.
    """
    return read_scan(Path(out_dir) / "scan.json")


def _report(result: ScanResults, path: Path) -> str:
    lines = []
    for e in result.entries:
        o = e.optimum
        if o is None:
            lines.append(f"eps={e.epsilon:g}: no optimum yet ({e.state})")
        else:
            verdict = o.verdict.replace("tie set", "not resolved, tie set")
            lines.append(
                f"eps={e.epsilon:g}: optimum width {o.width} ({verdict}), DL* {o.dl_bits:.2f} "
                f"bits, L0 {o.l0:.2f}{', at the grid edge' if e.at_edge else ''} ({e.state})"
            )
    for q, f in result.fits.items():
        interval = "no interval" if f.low is None or f.high is None else f"[{f.low:.3g}, {f.high:.3g}]"
        alpha = None if f.mean is None else round(f.mean, 3)
        lines.append(f"{q} ~ eps^alpha: alpha {alpha} {interval}: {'supported' if f.supported else 'not supported'}")
    lines.append(f"wrote {path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m mdl_utils epsilon-scan``: run or resume the scan, or rewrite its summary."""
    from mdl_utils.jobs import job_parser, parse_job, run_job, training_options
    from mdl_utils.profiles import cache_dir, results_dir

    parser = job_parser(
        prog="python -m mdl_utils epsilon-scan",
        doc=__doc__,
        out_subdir="epsilon-scan",
        default_profile="quick",
        summary_name="scan.json and each tolerance's summary.json",
    )
    parser.add_argument(
        "--reference",
        help="chapter 3's study folder, reused at its tolerance "
        "(default: results/full/mnist-mdl for full, the cache for quick)",
    )
    parser.add_argument("--epsilons", type=float, nargs="+", help=f"tolerances (default: {list(EPSILONS)})")
    parser.add_argument("--no-curves", action="store_true", help="skip the rate-distortion curves")
    args = parse_job(parser, argv)
    base = study_settings(args.profile)
    out = Path(args.out)
    if args.reference:
        ref = Path(args.reference)
    elif args.profile == "full":
        ref = results_dir() / "full" / "mnist-mdl"
    else:
        ref = cache_dir() / "mnist-mdl" / "quick"
    eps = args.epsilons or (EPSILONS if args.profile == "full" else QUICK_EPSILONS)
    seeds = None if args.profile == "full" else QUICK_SEEDS
    return run_job(
        args,
        train=lambda executor: run_epsilon_scan(
            base,
            out,
            epsilons=eps,
            reference_dir=ref,
            executor=executor,
            curves=not args.no_curves,
            seeds=seeds,
            **training_options(args),
        ),
        summarise=lambda: (
            rewrite_study_summaries(base, out, epsilons=eps, reference_dir=ref, seeds=seeds),
            summarise_scan(base, out, epsilons=eps, reference_dir=ref, curves=not args.no_curves, seeds=seeds),
        )[1],
        report=lambda result: _report(result, out / "scan.json"),
    )
