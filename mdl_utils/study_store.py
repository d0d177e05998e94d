"""Where a study keeps its results: one rows file per width, and its selected SAEs.

A study folder (chapter 3's ``results/full/mnist-mdl``, and chapters 6 and 7's studies) holds
``rows/w<width>.json`` (one row per trained SAE, written by :mod:`mdl_utils.study`),
``saes/w<width>-s<seed>.safetensors`` + ``.json`` (each finished (width, seed) search's
DL-optimal SAE, stored with float16 weights; ``saes/pending/`` while the search runs) and
``summary.json`` (:mod:`mdl_utils.study_summary`). This module reads and writes them.

The job works on rows as dicts (its on-disk form); readers get them as typed records
(:class:`StudyRow`, with its :class:`TrainRecord` and the
:class:`mdl_utils.protocol.SAEMeasurement`) through :func:`read_rows` and :func:`load_study`;
:meth:`StudyRow.to_dict` gives the stored dict back key for key.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mdl_utils.io import atomic_write_text
from mdl_utils.protocol import SAEMeasurement
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.study_summary import StudySummary, read_summary

__all__ = [
    "TrainingCurve",
    "TrainRecord",
    "StudyRow",
    "rows_path",
    "load_rows",
    "read_rows",
    "write_rows",
    "sae_stem",
    "load_selected_sae",
    "compact",
    "save_compact",
    "load_study",
]


@dataclass(frozen=True)
class TrainingCurve:
    """Per epoch: training MSE, validation MSE and the dead fraction on the training data."""

    train_mse: tuple[float, ...]
    val_mse: tuple[float, ...]
    dead_fraction: tuple[float, ...]


@dataclass(frozen=True)
class TrainRecord:
    """How one SAE's training ended (:func:`mdl_utils.train.train_sae`).

    Attributes:
        epochs: epochs run; ``best_epoch``: the epoch whose weights were kept (validation MSE).
        stop_reason: ``"converged"`` (early stopping), ``"max_epochs"`` (the cap) or another
            reason the trainer gives.
        train_seconds: its training time (None when it came from the cache without one).
        mse_train, mse_val: final MSE per element on the training and validation splits.
        dead_fraction: features that did not fire in the last window of training.
        curve: the learning curves (None in rows written before they were recorded).
    """

    epochs: int
    best_epoch: int | None
    stop_reason: str
    train_seconds: float | None
    mse_train: float | None
    mse_val: float | None
    dead_fraction: float | None
    curve: TrainingCurve | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainRecord:
        curve = d.get("curve")
        return cls(
            epochs=int(d["epochs"]),
            best_epoch=d["best_epoch"],
            stop_reason=str(d["stop_reason"]),
            train_seconds=d["train_seconds"],
            mse_train=d["mse_train"],
            mse_val=d["mse_val"],
            dead_fraction=d["dead_fraction"],
            curve=None
            if curve is None
            else TrainingCurve(tuple(curve["train_mse"]), tuple(curve["val_mse"]), tuple(curve["dead_fraction"])),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
            "train_seconds": self.train_seconds,
            "mse_train": self.mse_train,
            "mse_val": self.mse_val,
            "dead_fraction": self.dead_fraction,
        }
        if self.curve is not None:
            out["curve"] = {
                "train_mse": list(self.curve.train_mse),
                "val_mse": list(self.curve.val_mse),
                "dead_fraction": list(self.curve.dead_fraction),
            }
        return out


@dataclass(frozen=True)
class StudyRow:
    """One trained SAE of a study: where it sits in the search, how it trained, what it measured.

    Attributes:
        width, seed: its (width, seed) search; ``k_index`` and ``k``: its place on the k grid
            (``k = 2**(k_index/4)``; half steps have a fractional index).
        key: its training configuration's key in the cache (:mod:`mdl_utils.cache`).
        device: where it trained (``cpu``, ``cuda (NVIDIA H200)``; older rows ``cuda:0``).
        cpu_kernels: for a CPU training, the vector kernels torch used (``AVX2``, ...;
            :func:`mdl_utils.train.cpu_kernels`); ``None`` on a GPU and in rows written
            before it was recorded.
        train: :class:`TrainRecord`; ``measure``: its measurement under the study's tolerance.
        measure_extra: readings a study's measure adds beyond
            :class:`mdl_utils.protocol.SAEMeasurement` (chapter 7's cross-entropy).
    """

    width: int
    seed: int
    k_index: float
    k: float
    key: str
    device: str
    train: TrainRecord
    measure: SAEMeasurement
    measure_extra: dict[str, Any] = field(default_factory=dict)
    cpu_kernels: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyRow:
        m = d["measure"]
        known = SAEMeasurement.__dataclass_fields__
        return cls(
            width=int(d["width"]),
            seed=int(d["seed"]),
            k_index=d["k_index"],
            k=float(d["k"]),
            key=str(d["key"]),
            device=str(d["device"]),
            train=TrainRecord.from_dict(d["train"]),
            measure=SAEMeasurement.from_dict(m),
            measure_extra={k: v for k, v in m.items() if k not in known},
            cpu_kernels=None if d.get("cpu_kernels") is None else str(d["cpu_kernels"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored dict, key for key."""
        return {
            "width": self.width,
            "seed": self.seed,
            "k_index": self.k_index,
            "k": self.k,
            "key": self.key,
            "device": self.device,
            **({} if self.cpu_kernels is None else {"cpu_kernels": self.cpu_kernels}),
            "train": self.train.to_dict(),
            "measure": {**self.measure.to_dict(), **self.measure_extra},
        }

    @property
    def dl_bits(self) -> float | None:
        """Its DL at the study's tolerance, bits per sample (None: it misses the tolerance)."""
        return self.measure.dl_bits


def rows_path(out: Path, width: int) -> Path:
    """The rows file of ``width`` in the study folder ``out``."""
    return out / "rows" / f"w{width:05d}.json"


def load_rows(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row the study has written under ``out_dir`` (all widths), narrow to wide."""
    rows: list[dict[str, Any]] = []
    for path in sorted((Path(out_dir) / "rows").glob("w*.json")):
        rows.extend(json.loads(path.read_text()))
    return rows


def read_rows(out_dir: str | os.PathLike[str]) -> list[StudyRow]:
    """Every row under ``out_dir`` as a :class:`StudyRow`, narrow to wide.

    Raises:
        ValueError: a row lacks what a row holds (the message names the file).
    """
    rows: list[StudyRow] = []
    for path in sorted((Path(out_dir) / "rows").glob("w*.json")):
        try:
            rows.extend(StudyRow.from_dict(r) for r in json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} holds a row that is not a study row ({type(err).__name__}: {err})") from err
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


#: The largest stored SAE the repository keeps (its file limit); wider ones stay on the machine
#: that trained them (``.gitignore`` lists them).
STORED_SAE_LIMIT_BYTES = 5 * 1024**2


def stored_sae_bytes(width: int, d_in: int) -> int:
    """The size of an SAE's weights as :func:`save_compact` stores them (float16 encoder and
    decoder; the biases are negligible)."""
    return 2 * width * d_in * 2


def save_compact(sae: BatchTopKSAE, stem: Path) -> None:
    """Store ``sae`` at ``stem`` with float16 weights (what :func:`compact` computes with)."""
    half = copy.deepcopy(sae).half()
    half.save(stem)


def load_study(out_dir: str | os.PathLike[str]) -> tuple[StudySummary, list[StudyRow]]:
    """The study's summary (typed, :class:`mdl_utils.study_summary.StudySummary`) and all its
    rows (typed, :class:`StudyRow`).

    Raises:
        FileNotFoundError: no summary (the message says how to make it).
        ValueError: another results format, or not a study summary.
    """
    out = Path(out_dir)
    summary = read_summary(
        out / "summary.json",
        how_to_make=f"run `python -m mdl_utils mnist-sweep --profile full --out {out}` to compute it",
    )
    return summary, read_rows(out)
