"""Chapter 7's results as typed records, with one JSON read and write.

``downstream.json`` (written by :func:`mdl_utils.downstream.summarise_downstream`) holds the
classifier's numbers, the two tolerances and the calibration of the MSE one, a study summary
per arm (:class:`mdl_utils.study_summary.StudySummary`) and the verdicts.
:class:`DownstreamResults` reads it (:meth:`DownstreamResults.from_dict`) and writes it back
key for key (:meth:`DownstreamResults.to_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mdl_utils.study_summary import StudySummary
from mdl_utils.verdicts import Verdict

__all__ = ["ARMS", "Calibration", "ClassifierInfo", "DownstreamResults"]

#: The two arms: the classifier's cross-entropy and the reconstruction MSE as the tolerance.
ARMS: tuple[str, ...] = ("ce", "mse")
#: The keys the job writes; anything else in the file is the writer's metadata (provenance).
_KEYS: tuple[str, ...] = (
    "format_version", "settings", "classifier", "epsilon_ce", "epsilon_mse", "calibration",
    "activation_variance", "ce", "mse", "verdicts", "complete", "n_saes_trained", "training_time_s",
)  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    """How the MSE tolerance was set from the first seed's cross-entropy selections.

    Attributes:
        rule: the rule, in words (fixed in code before any data were read).
        seed: the seed whose selections it read.
        per_width: each width's quantised test MSE at its cross-entropy selection.
        epsilon_mse: the tolerance the rule gives (per hidden unit).
    """

    rule: str
    seed: int
    per_width: dict[int, float]
    epsilon_mse: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            rule=str(d["rule"]),
            seed=int(d["seed"]),
            per_width={int(w): float(v) for w, v in d["per_width"].items()},
            epsilon_mse=float(d["epsilon_mse"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "seed": self.seed,
            "per_width": {str(w): v for w, v in self.per_width.items()},
            "epsilon_mse": self.epsilon_mse,
        }


@dataclass(frozen=True)
class ClassifierInfo:
    """The stored classifier: its folder (relative to the results), test accuracy and
    cross-entropy (nats per digit) on all 10,000 test digits, and its training time."""

    path: str
    test_accuracy: float | None
    test_ce: float | None
    train_seconds: float | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierInfo:
        return cls(str(d["path"]), d.get("test_accuracy"), d.get("test_ce"), d.get("train_seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "test_accuracy": self.test_accuracy,
            "test_ce": self.test_ce,
            "train_seconds": self.train_seconds,
        }


@dataclass(frozen=True)
class DownstreamResults:
    """``downstream.json`` as typed records.

    Attributes:
        settings: the :class:`mdl_utils.downstream.DownstreamSettings` as a dict (its
            ``to_dict()``; :meth:`mdl_utils.downstream.DownstreamSettings.from_dict` rebuilds it).
        classifier: the stored classifier and its test numbers.
        epsilon_ce: the cross-entropy tolerance (nats per digit).
        epsilon_mse: the calibrated MSE tolerance (``None`` before the calibration).
        calibration: how ``epsilon_mse`` was set (``None`` before it).
        activation_variance: the hidden activations' variance, mean over units.
        ce, mse: each arm's study summary (``None`` for an arm not started).
        verdicts: chapter 7's claims, judged.
        complete: both arms' studies are complete.
        n_saes_trained, training_time_s: distinct trainings (an SAE both arms asked for
            counts once) and their time.
        metadata: what the writer added (provenance).
    """

    format_version: int
    settings: dict[str, Any]
    classifier: ClassifierInfo
    epsilon_ce: float
    epsilon_mse: float | None
    calibration: Calibration | None
    activation_variance: float
    ce: StudySummary | None
    mse: StudySummary | None
    verdicts: tuple[Verdict, ...]
    complete: bool
    n_saes_trained: int
    training_time_s: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def arms(self) -> dict[str, StudySummary]:
        """The arms that have started, by name (``"ce"``, ``"mse"``)."""
        return {arm: s for arm, s in (("ce", self.ce), ("mse", self.mse)) if s is not None}

    def epsilon(self, arm: str) -> float | None:
        """The tolerance of ``arm``."""
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
        return self.epsilon_ce if arm == "ce" else self.epsilon_mse

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DownstreamResults:
        """Read the dict form (as ``downstream.json`` holds it)."""

        def arm(value: dict[str, Any] | None) -> StudySummary | None:
            return None if value is None else StudySummary.from_dict(value)

        cal = d["calibration"]
        return cls(
            format_version=int(d["format_version"]),
            settings=dict(d["settings"]),
            classifier=ClassifierInfo.from_dict(d["classifier"]),
            epsilon_ce=float(d["epsilon_ce"]),
            epsilon_mse=None if d["epsilon_mse"] is None else float(d["epsilon_mse"]),
            calibration=None if cal is None else Calibration.from_dict(cal),
            activation_variance=float(d["activation_variance"]),
            ce=arm(d["ce"]),
            mse=arm(d["mse"]),
            verdicts=tuple(Verdict(**v) for v in d["verdicts"]),
            complete=bool(d["complete"]),
            n_saes_trained=int(d["n_saes_trained"]),
            training_time_s=float(d["training_time_s"]),
            metadata={k: v for k, v in d.items() if k not in _KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The dict form, key for key as the job writes it (JSON-ready)."""
        return {
            "format_version": self.format_version,
            "settings": self.settings,
            "classifier": self.classifier.to_dict(),
            "epsilon_ce": self.epsilon_ce,
            "epsilon_mse": self.epsilon_mse,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "activation_variance": self.activation_variance,
            "ce": None if self.ce is None else self.ce.to_dict(),
            "mse": None if self.mse is None else self.mse.to_dict(),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "complete": self.complete,
            "n_saes_trained": self.n_saes_trained,
            "training_time_s": self.training_time_s,
            **self.metadata,
        }
