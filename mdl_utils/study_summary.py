"""Chapter 3's study, part 2: what its rows say, computed from the rows alone.

:func:`summarise` gives everything chapter 3 reads: per (width, seed) the DL-optimal SAE of
its k search and how it trained; DL*(width) over seeds with its spread and a bootstrap
interval over test digits; the resolution of the optimum
(:func:`mdl_utils.protocol.resolve_optimum`), also at the reread tolerances; the points A-D;
and what remains to train. It is a pure function of the rows, so ``--summary-only`` rewrites
the committed ``summary.json`` from the committed rows, byte for byte. Chapters 6 and 7 use it
for their own studies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from mdl_utils.protocol import WidthSummary, resolve_optimum, two_part_bits
from mdl_utils.study_plan import StudySettings, j_max, j_min, plan, search_done, start_index

__all__ = ["RESULTS_FORMAT_VERSION", "summarise", "points_from"]

#: The version of the study's ``summary.json`` (and rows) format.
RESULTS_FORMAT_VERSION = 2


def _dl_at(row: dict[str, Any], key: str) -> float | None:
    """A row's DL re-read at the tolerance ``key`` (``None`` when it misses that tolerance)."""
    value = row["measure"]["dl_at"].get(key)
    return None if value is None else float(value)


def _width_summaries(
    settings: StudySettings,
    rows: Sequence[dict[str, Any]],
    dl_of: Callable[[dict[str, Any]], float | None],
    *,
    complete_only: bool = True,
) -> list[WidthSummary]:
    out = []
    for width in sorted({r["width"] for r in rows}):
        dl_by_seed: dict[int, float] = {}
        boot_by_seed: dict[int, list[float]] = {}
        for seed in settings.seeds:
            if complete_only and not search_done(settings, rows, width, seed, start_index(settings, rows, width, seed)):
                continue
            mine = [r for r in rows if r["width"] == width and r["seed"] == seed and dl_of(r) is not None]
            if not mine:
                continue
            best = min(mine, key=lambda r: (dl_of(r), r["k_index"]))
            dl_by_seed[seed] = float(dl_of(best))  # type: ignore[arg-type]
            boot_by_seed[seed] = list(best["measure"].get("boot") or [])
        if dl_by_seed:
            out.append(WidthSummary(width, dl_by_seed, boot_by_seed))
    return out


def summarise(
    settings: StudySettings, rows: Sequence[dict[str, Any]], *, d_in: int = 784, extra_fields: Sequence[str] = ()
) -> dict[str, Any]:
    """Everything the chapter reads, computed from the rows alone (see the module docstring).

    ``d_in`` is the data's dimension (784 for MNIST pixels), which the two-part total needs;
    ``extra_fields`` are further keys of the selected rows' measurements copied into each
    (width, seed) entry (chapter 7 adds its cross-entropy readings).
    """
    seed0 = settings.seeds[0]
    widths = sorted({r["width"] for r in rows})
    per_width = []
    for width in widths:
        entry: dict[str, Any] = {"width": width, "seeds": {}}
        for seed in settings.seeds:
            mine = [r for r in rows if r["width"] == width and r["seed"] == seed]
            if not mine:
                continue
            done = search_done(settings, rows, width, seed, start_index(settings, rows, width, seed))
            feasible = [r for r in mine if r["measure"]["dl_bits"] is not None]
            sel = min(feasible, key=lambda r: (r["measure"]["dl_bits"], r["k_index"])) if feasible else None
            capped = [r for r in mine if r["train"]["stop_reason"] == "max_epochs"]
            seed_entry: dict[str, Any] = {
                "complete": done,
                "n_trained": len(mine),
                "n_at_epoch_cap": len(capped),
                "reachable": sel is not None,
            }
            if sel is not None:
                m = sel["measure"]
                seed_entry.update(
                    k=sel["k"],
                    k_index=sel["k_index"],
                    dl_bits=m["dl_bits"],
                    mse=m["mse"],
                    mse_quantised=m["precision"]["mse_quantised"],
                    bits=m["precision"]["bits"],
                    precision_status=m["precision"]["status"],
                    whole_bits=m["whole_bits"],
                    whole_dl_bits=m["whole_dl_bits"],
                    l0=m["l0"],
                    n_live=m["n_live"],
                    dead_fraction=m["dead_fraction"],
                    upper_bound_bits=m["upper_bound_bits"],
                    saebench_bits=m["saebench_bits"],
                    two_part_bits=two_part_bits(m["dl_bits"], width, d_in),
                    epochs=sel["train"]["epochs"],
                    best_epoch=sel["train"]["best_epoch"],
                    stop_reason=sel["train"]["stop_reason"],
                    bracketed=_bracketed(mine, sel["k_index"], width, j_min(settings)),
                )
                seed_entry.update({f: m.get(f) for f in extra_fields})
            entry["seeds"][str(seed)] = seed_entry
        per_width.append(entry)

    summaries = _width_summaries(settings, rows, lambda r: r["measure"]["dl_bits"])
    resolution = resolve_optimum(summaries).to_dict() if summaries else None
    rereads = {}
    for ratio in settings.reread:
        key = f"{settings.epsilon * ratio:.6g}"
        at = _width_summaries(settings, rows, functools.partial(_dl_at, key=key))
        rereads[key] = resolve_optimum(at).to_dict() if at else None
    table = [
        {
            "width": s.width,
            "n_seeds": s.n_seeds,
            "mean": s.mean,
            "seed_std": s.seed_std,
            "boot_ci": _boot_ci(s),
            "dl_by_seed": {str(k): v for k, v in s.dl_by_seed.items()},
        }
        for s in summaries
    ]
    remaining = [
        (w, s)
        for (w, s) in plan(settings, rows)
        if not search_done(settings, rows, w, s, start_index(settings, rows, w, s))
    ]
    for res in [resolution, *rereads.values()]:
        if res is not None:
            # Widths or seeds still to come can change the optimum: never final before they are in.
            res["provisional"] = bool(remaining)
            res["resolved"] = res["resolved"] and not remaining
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "settings": asdict(settings),
        "epsilon": settings.epsilon,
        "n_saes_trained": len(rows),
        "training_time_s": round(sum(r["train"]["train_seconds"] or 0.0 for r in rows), 1),
        "devices": sorted({r.get("device", "cpu") for r in rows}),
        "widths": per_width,
        "dl_star": table,
        "resolution": resolution,
        "rereads": rereads,
        "points": points_from(per_width, resolution, seed0),
        "remaining": [list(t) for t in remaining],
        "complete": not remaining,
    }


def _boot_ci(s: WidthSummary) -> list[float] | None:
    boot = s.boot_mean()
    if boot is None:
        return None
    return [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def _bracketed(mine: Sequence[dict[str, Any]], j: float, width: int, j_min: int = 0) -> bool:
    """The selected k has a trained neighbour on each side that is not shorter (or misses the
    tolerance), or sits at the end of the grid (k = ``k_min`` or k = width) on that side."""
    by_j = {r["k_index"]: r["measure"]["dl_bits"] for r in mine}
    dl = by_j[j]
    below = [i for i in by_j if i < j]
    above = [i for i in by_j if i > j]

    def holds(nearest: float | None, at_edge: bool) -> bool:
        if nearest is None:
            return at_edge
        return by_j[nearest] is None or by_j[nearest] >= dl

    return holds(max(below) if below else None, j <= j_min) and holds(min(above) if above else None, j >= j_max(width))


def points_from(
    per_width: Sequence[dict[str, Any]], resolution: dict[str, Any] | None, seed: int
) -> dict[str, dict[str, Any]]:
    """The points A-D as four distinct SAEs of ``seed`` (each a (width, seed) DL-optimal SAE),
    chosen by rule: B the optimum width; A the widest reachable width; D the narrowest
    reachable width; C the reachable width strictly between D and B nearest (in log width) to
    their geometric mean. A point whose rule has no distinct candidate is left out."""
    if resolution is None:
        return {}
    reach = sorted(
        e["width"]
        for e in per_width
        if e["seeds"].get(str(seed), {}).get("reachable") and e["seeds"][str(seed)].get("complete")
    )
    if not reach:
        return {}
    b = resolution["optimum"]
    if b not in reach:
        return {}
    picks: dict[str, int] = {"B": b}
    if reach[-1] != b:
        picks["A"] = reach[-1]
    if reach[0] != b:
        picks["D"] = reach[0]
        between = [w for w in reach if reach[0] < w < b]
        if between:
            target = 0.5 * (math.log2(reach[0]) + math.log2(b))
            picks["C"] = min(between, key=lambda w: (abs(math.log2(w) - target), w))
    return {name: {"width": w, "seed": seed} for name, w in sorted(picks.items())}
