"""Rate-distortion curves of a study's SAEs on the continuous precision scale, and crossings
that survive the seed spread.

Chapter 6 (:mod:`mdl_utils.epsilon_scan`) asks whether "which SAE is better" depends on the
tolerance. :func:`rate_distortion_curves` measures each stored (width, seed) SAE's DL as the
tolerance it must meet varies; :func:`curve_crossings_with_spread` counts a crossing between
two widths only when each is shorter, by more than the seed spread, on its side of it;
:func:`allocation_comparisons` compares per-feature with uniform precision at equal MSE for
the same SAEs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mdl_utils.protocol import continuous_precision, reconstruction_mse, sparse_latents
from mdl_utils.study_store import load_selected_sae
from mdl_utils.study_plan import StudySettings

__all__ = ["MSE_RATIOS", "allocation_comparisons", "curve_crossings_with_spread", "rate_distortion_curves"]

#: Tolerances of each rate-distortion curve, as multiples of the study's epsilon.
MSE_RATIOS: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0)


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
    """:func:`mdl_utils.allocation_checks.compare_at_equal_mse` at the study's epsilon for every stored
    (width, seed) SAE up to ``max_width``, each tagged with its width, seed and weights' SHA-256
    (``previous`` results for the same weights and epsilon are reused)."""
    from mdl_utils.allocation_checks import compare_at_equal_mse

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
