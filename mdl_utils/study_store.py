"""Where a study keeps its results: one rows file per width, and its selected SAEs.

A study folder (chapter 3's ``results/full/mnist-mdl``, and chapters 6 and 7's studies) holds
``rows/w<width>.json`` (one row per trained SAE, written by :mod:`mdl_utils.study`),
``saes/w<width>-s<seed>.safetensors`` + ``.json`` (each finished (width, seed) search's
DL-optimal SAE, stored with float16 weights; ``saes/pending/`` while the search runs) and
``summary.json`` (:mod:`mdl_utils.study_summary`). This module reads and writes them.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from mdl_utils.io import atomic_write_text
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.study_summary import StudySummary, read_summary

__all__ = [
    "rows_path",
    "load_rows",
    "write_rows",
    "sae_stem",
    "load_selected_sae",
    "compact",
    "save_compact",
    "load_study",
]


def rows_path(out: Path, width: int) -> Path:
    """The rows file of ``width`` in the study folder ``out``."""
    return out / "rows" / f"w{width:05d}.json"


def load_rows(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row the study has written under ``out_dir`` (all widths), narrow to wide."""
    rows: list[dict[str, Any]] = []
    for path in sorted((Path(out_dir) / "rows").glob("w*.json")):
        rows.extend(json.loads(path.read_text()))
    return rows


def write_rows(out: Path, width: int, rows: list[dict[str, Any]]) -> None:
    """Write ``width``'s rows atomically, ordered by (seed, k index)."""
    path = rows_path(out, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: (r["seed"], r["k_index"]))
    atomic_write_text(path, json.dumps(ordered, indent=1))


def sae_stem(out: Path, width: int, seed: int, *, pending: bool = False) -> Path:
    """Where the DL-optimal SAE of ``(width, seed)`` is stored: ``saes/`` once its search has
    finished, ``saes/pending/`` (not committed) while the best SAE may still change."""
    return out / "saes" / ("pending" if pending else "") / f"w{width:05d}-s{seed}"


def load_selected_sae(out_dir: str | os.PathLike[str], width: int, seed: int) -> BatchTopKSAE:
    """The stored DL-optimal SAE of ``(width, seed)`` (float16 weights, as measured)."""
    stem = sae_stem(Path(out_dir), width, seed)
    if not stem.with_suffix(".json").is_file():
        raise FileNotFoundError(f"no stored SAE for width {width}, seed {seed} under {out_dir}")
    return BatchTopKSAE.load(stem)


def compact(sae: BatchTopKSAE) -> BatchTopKSAE:
    """The SAE with its weights rounded to float16 (as stored), in float32 for computing."""
    out = copy.deepcopy(sae)
    with torch.no_grad():
        for t in out.state_dict().values():
            t.copy_(t.half().float())
    return out


def save_compact(sae: BatchTopKSAE, stem: Path) -> None:
    """Store ``sae`` at ``stem`` with float16 weights (what :func:`compact` computes with)."""
    half = copy.deepcopy(sae).half()
    half.save(stem)


def load_study(out_dir: str | os.PathLike[str]) -> tuple[StudySummary, list[dict[str, Any]]]:
    """The study's summary (typed, :class:`mdl_utils.study_summary.StudySummary`) and all its rows.

    Raises:
        FileNotFoundError: no summary (the message says how to make it).
        ValueError: another results format, or not a study summary.
    """
    out = Path(out_dir)
    summary = read_summary(
        out / "summary.json",
        how_to_make=f"run `python -m mdl_utils mnist-sweep --profile full --out {out}` to compute it",
    )
    return summary, load_rows(out)
