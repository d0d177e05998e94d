"""Chapter 7: the epsilon-MDL protocol with the classifier's own loss as the tolerance.

Section 4 of the paper brief, step 1, allows two tolerances. Chapter 3 uses the first
(reconstruction MSE); this module implements the second on MNIST: the SAEs reconstruct the
first hidden layer of a small classifier (:mod:`mdl_utils.models`), and the loss is the
increase of the classifier's test cross-entropy, in nats per sample, when the SAE's
reconstruction replaces the real activations (:func:`mdl_utils.models.splice_loss`).

The protocol is chapter 3's (:mod:`mdl_utils.study`), with only the loss changed:

1. for each width and seed, BatchTopK SAEs are trained to convergence on the grid
   ``k = 2**(j/4)`` until DL against k has a bracketed minimum;
2. each SAE's precision is the continuous one at which its *quantised* loss sits at the
   tolerance (within :data:`mdl_utils.protocol.REL_BAND` below it), found by bisection; the
   DL is measured there. So the quantisation reserve is the one chapter 3 uses: whatever the
   unquantised SAE leaves of the tolerance;
3. DL* of a (width, seed) is the minimum over k; the optimum is the width with the smallest
   mean DL*, called resolved only when every other width is longer by more than the combined
   uncertainty (seeds and test-digit bootstrap, :func:`mdl_utils.resolution.resolve_optimum`).

It runs twice on the same activations: under the cross-entropy tolerance ``epsilon_ce``,
and under an MSE tolerance *calibrated to be equally strict*: ``epsilon_mse`` is the median,
over widths, of the quantised test MSE of the SAEs the cross-entropy protocol selected for
the first seed. The rule is fixed here; the value is computed once, written to
``calibration.json`` and never recomputed, so later seeds cannot move it. Each SAE is
measured under both losses (:class:`mdl_utils.downstream_measure.DownstreamMeasure`), so the chapter can show the harm an
MSE-selected SAE does to the classifier. An SAE trained for one arm is reused by the other
from the cache when the search asks for the same (width, k, seed).

Work is ordered so that a partial run is the most useful part of the whole: the first seed
under cross-entropy, the calibration, the first seed under MSE, then the other seeds of each.

Command line (resumable: rerun after an interruption; progress on stderr)::

    python -m mdl_utils downstream --profile full [--out results/full/downstream]
        [--budget-hours H] [--workers N | --ray-address HOST:PORT] [--summary-only]

Output folder: ``downstream.json`` (settings, classifier metrics, calibration, both arms'
summaries, the verdicts, provenance), ``classifier.safetensors`` + ``.json`` (float32),
``calibration.json``, and for each arm ``ce/`` and ``mse/`` a study folder (``rows/``,
``saes/`` with every (width, seed)'s DL-optimal SAE in float16, ``summary.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdl_utils.downstream_measure import DownstreamMeasure
from mdl_utils.downstream_results import ARMS, DownstreamResults
from mdl_utils.resolution import Resolution
from mdl_utils.executors import Executor, ProgressMode, SerialExecutor
from mdl_utils.io import atomic_write_text
from mdl_utils.models import (
    ClassifierConfig,
    MLPClassifier,
    hidden_activations,
    load_classifier,
    save_classifier,
    train_or_load_classifier,
)
from mdl_utils.profiles import cache_dir as default_cache_dir
from mdl_utils.jobs import job_parser, parse_job, run_job, training_options
from mdl_utils.profiles import choose, provenance, read_record, write_results
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.study import run_study
from mdl_utils.study_store import load_rows, load_selected_sae
from mdl_utils.study_plan import QUICK_RECIPE, RECIPE, StudySettings
from mdl_utils.study_summary import StudySummary, rewrite_summary, summarise
from mdl_utils.data import DataSpec, SweepData, prepare_data
from mdl_utils import verdicts as V

__all__ = [
    "DownstreamSettings",
    "settings_for",
    "activation_data",
    "calibrate_epsilon_mse",
    "downstream_verdicts",
    "run_downstream",
    "summarise_downstream",
    "load_downstream",
    "load_arm_sae",
    "main",
    "RESULTS_FORMAT_VERSION",
    "EXTRA_FIELDS",
]

RESULTS_FORMAT_VERSION = 2

#: Cross-entropy readings copied from each selected SAE's row into the arm's summary.
EXTRA_FIELDS: tuple[str, ...] = (
    "ce_increase",
    "ce_increase_quantised",
    "mse_quantised",
    "accuracy_spliced",
    "ce_clean",
)


@dataclass(frozen=True)
class DownstreamSettings:
    """What the downstream-tolerance study trains and how it selects SAEs.

    Attributes:
        n_train: training digits whose activations train the SAEs (first n; ``None`` = all
            60,000); a tenth is held out as the validation split for early stopping.
        n_test: test digits on which losses and DL are measured (``None`` = all 10,000).
        widths: the doubling grid of SAE widths.
        classifier: the MNIST classifier whose first hidden layer the SAEs reconstruct
            (trained on all 60,000 training digits in every profile).
        epsilon_ce: the downstream tolerance, increase of test cross-entropy (nats per digit).
        seeds, k_start, fill_widths, n_boot, reread, max_trainings_per_search, train: as in
            :class:`mdl_utils.study_plan.StudySettings` (the same protocol and recipe).
    """

    n_train: int | None
    n_test: int | None
    widths: tuple[int, ...]
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(epochs=10))
    epsilon_ce: float = 0.03
    seeds: tuple[int, ...] = (0, 1, 2)
    k_start: float = 16.0
    fill_widths: bool = True
    n_boot: int = 200
    reread: tuple[float, ...] = (0.98, 1.02)
    max_trainings_per_search: int = 12
    train: dict[str, Any] = field(default_factory=lambda: dict(RECIPE))

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths!r}")
        if not self.seeds:
            raise ValueError("seeds must name at least one training seed")
        if not (self.epsilon_ce > 0 and math.isfinite(self.epsilon_ce)):
            raise ValueError(f"epsilon_ce must be positive and finite, got {self.epsilon_ce!r}")

    def study(self, epsilon: float, seeds: Sequence[int] | None = None) -> StudySettings:
        """Chapter 3's study settings for one arm at tolerance ``epsilon`` (only ``seeds``,
        when given: the job runs the first seed of both arms before the others)."""
        return StudySettings(
            n_train=self.n_train,
            n_test=self.n_test,
            widths=self.widths,
            fill_widths=self.fill_widths,
            epsilon=epsilon,
            reread=self.reread,
            seeds=tuple(seeds) if seeds is not None else self.seeds,
            k_start=self.k_start,
            n_boot=self.n_boot,
            max_trainings_per_search=self.max_trainings_per_search,
            train=dict(self.train),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DownstreamSettings:
        """Rebuild the settings from :meth:`to_dict`'s form (as ``downstream.json`` stores them)."""
        fields = dict(d)
        fields["classifier"] = ClassifierConfig(**fields["classifier"])
        fields["reread"] = tuple(fields["reread"])
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict form (lists for the tuples, the classifier's config nested)."""
        d = asdict(self)
        d["classifier"] = self.classifier.to_dict()
        d["widths"], d["seeds"], d["reread"] = list(self.widths), list(self.seeds), list(self.reread)
        return d


def settings_for(profile: str) -> DownstreamSettings:
    """Settings for a run profile: ``quick`` (minutes, CI) or ``full`` (paper scale: hours on a CPU)."""
    return choose(
        profile,
        quick=DownstreamSettings(
            n_train=10_000,
            n_test=2_000,
            widths=(32, 128, 512),
            seeds=(0, 1),
            fill_widths=False,
            n_boot=100,
            train=dict(QUICK_RECIPE),
        ),
        full=DownstreamSettings(n_train=None, n_test=None, widths=(16, 32, 64, 128, 256, 512, 1024)),
    )


# --------------------------------------------------------------------------------------------
# Data: the classifier's hidden activations, in the sweep runner's format
# --------------------------------------------------------------------------------------------


def activation_data(
    model: MLPClassifier, n_train: int | None, n_test: int | None, folder: str | os.PathLike[str]
) -> tuple[SweepData, np.ndarray]:
    """The hidden activations of the first ``n_train`` / ``n_test`` MNIST digits, ready to train on.

    Writes them as ``train.npy`` / ``test.npy`` in ``folder`` and loads them through
    :func:`mdl_utils.data.prepare_data` (source ``"npy"``), which carves the validation split
    the same way as for pixels. Returns the data and the test digits' labels.
    """
    from mdl_utils.data import load_mnist

    x_train, _ = load_mnist("train")
    x_test, y_test = load_mnist("test")
    x_train = x_train[:n_train] if n_train is not None else x_train
    x_test, y_test = (x_test[:n_test], y_test[:n_test]) if n_test is not None else (x_test, y_test)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in (("train", x_train), ("test", x_test)):
        h = hidden_activations(model, x)
        path = folder / f"{name}.npy"
        if not path.is_file() or not np.array_equal(np.load(path), h):
            tmp = folder / f".{name}.{os.getpid()}.npy"
            np.save(tmp, h)
            os.replace(tmp, path)
    data = prepare_data(
        DataSpec(source="npy", train_path=str(folder / "train.npy"), test_path=str(folder / "test.npy"))
    )
    return data, np.array(y_test)


# --------------------------------------------------------------------------------------------
# Calibration and verdicts
# --------------------------------------------------------------------------------------------


def calibrate_epsilon_mse(ce_summary: dict[str, Any], seed: int) -> dict[str, Any]:
    """The MSE tolerance as strict as the cross-entropy one in the typical case.

    Rule (fixed before any data are read): the median, over the widths whose ``seed`` search
    under cross-entropy has finished and reached the tolerance, of the selected SAE's
    quantised test MSE (``mse_quantised``, at its cross-entropy precision), rounded to three
    significant digits.

    Raises:
        ValueError: no width has a finished, reachable search for ``seed``.
    """
    per_width = {}
    for entry in ce_summary["widths"]:
        s = entry["seeds"].get(str(seed), {})
        if s.get("complete") and s.get("reachable"):
            per_width[str(entry["width"])] = s["mse_quantised"]
    if not per_width:
        raise ValueError(f"no width has a finished search reaching the cross-entropy tolerance for seed {seed}")
    value = float(f"{float(np.median(list(per_width.values()))):.3g}")
    return {
        "rule": "median over widths of the quantised test MSE of the cross-entropy selections "
        f"(seed {seed}), 3 significant digits",
        "seed": seed,
        "per_width": per_width,
        "epsilon_mse": value,
    }


def _by_width(summary: dict[str, Any], field_name: str, *, complete_only: bool = True) -> dict[int, dict[int, float]]:
    """``{width: {seed: value}}`` of one field of the selected SAEs (finished searches only)."""
    out: dict[int, dict[int, float]] = {}
    for entry in summary["widths"]:
        for seed, s in entry["seeds"].items():
            if s.get("reachable") and (s.get("complete") or not complete_only) and s.get(field_name) is not None:
                out.setdefault(int(entry["width"]), {})[int(seed)] = float(s[field_name])
    return out


def downstream_verdicts(ce: dict[str, Any] | None, mse: dict[str, Any] | None, epsilon_ce: float) -> list[V.Verdict]:
    """Chapter 7's claims, each judged by a rule of :mod:`mdl_utils.verdicts` (see there)."""
    res_ce = None if ce is None or ce["resolution"] is None else Resolution.from_dict(ce["resolution"])
    res_mse = None if mse is None or mse["resolution"] is None else Resolution.from_dict(mse["resolution"])
    br_ce = None if ce is None else StudySummary.from_dict(ce).bracket
    br_mse = None if mse is None else StudySummary.from_dict(mse).bracket
    out = [
        V.optimum_resolved("cross-entropy", res_ce, br_ce),
        V.optimum_resolved("MSE", res_mse, br_mse),
        V.optimum_moves(res_ce, res_mse, (br_ce, br_mse)),
    ]
    if ce is not None and mse is not None:
        out.append(V.shorter_description(_by_width(ce, "dl_bits"), _by_width(mse, "dl_bits")))
        harm = _by_width(mse, "ce_increase_quantised")
        out.append(V.unequal_harm(harm, epsilon_ce))
        widths = sorted(harm)
        out.append(V.harm_rises_with_width(widths, [float(np.mean(list(harm[w].values()))) for w in widths]))
    return out


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _activation_folder(cache_path: Path, settings: DownstreamSettings) -> Path:
    key = hashlib.sha256(
        json.dumps([settings.classifier.key(), settings.n_train, settings.n_test]).encode()
    ).hexdigest()[:16]
    return cache_path / f"activations-{key}"


def run_downstream(
    settings: DownstreamSettings,
    out_dir: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    budget_hours: float | None = None,
    device: str = "auto",
    progress: ProgressMode = True,
    threads: int | None = 1,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study of both arms; write ``out_dir/downstream.json`` and return it.

    Args:
        settings: what to train (:func:`settings_for`).
        out_dir: the output folder (see the module docstring).
        cache: trained models (default :func:`mdl_utils.profiles.cache_dir`).
        budget_hours: stop starting new trainings after this much wall time (resumable).
        device, progress, threads, executor: as in :func:`mdl_utils.study.run_study`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = Path(cache) if cache is not None else default_cache_dir()
    started = time.time()
    deadline = None if budget_hours is None else started + 3600 * budget_hours
    if (out / "classifier.json").is_file():
        # The rows were measured with this classifier: a resumed run (or a fresh clone of the
        # committed results) must use it, not one trained again.
        model, clf_meta = load_classifier(out / "classifier")
        if clf_meta.get("config") != settings.classifier.to_dict():
            raise ValueError(
                f"{out / 'classifier.json'} holds a classifier trained with {clf_meta.get('config')}, "
                f"but the settings ask for {settings.classifier.to_dict()}: use another output folder"
            )
    else:
        model, clf_meta = train_or_load_classifier(settings.classifier, cache_path)
        save_classifier(model, out / "classifier", metadata=clf_meta)
    data, y_test = activation_data(model, settings.n_train, settings.n_test, _activation_folder(cache_path, settings))
    executor = executor if executor is not None else SerialExecutor()
    first = settings.seeds[0]

    def left() -> float | None:
        return None if deadline is None else max(0.0, (deadline - time.time()) / 3600)

    def run_arm(arm: str, epsilon: float, seeds: Sequence[int]) -> dict[str, Any]:
        """Train the arm's searches of ``seeds``; return the arm's summary (every seed)."""
        study = settings.study(epsilon, seeds)
        measure = DownstreamMeasure(model, y_test, arm, epsilon, tuple(epsilon * r for r in settings.reread))
        return run_study(
            study,
            out / arm,
            cache=cache_path,
            budget_hours=left(),
            device=device,
            progress=progress,
            data=data,
            threads=threads,
            executor=executor,
            measure=measure,
            name=f"downstream-{arm}",
            extra_fields=EXTRA_FIELDS,
            # summary.json describes every seed, even after a first-seed phase.
            summary_seeds=settings.seeds,
        )

    calibration_path = out / "calibration.json"
    stopped = False
    summary = run_arm("ce", settings.epsilon_ce, [first])
    first_done = not any(seed == first for _, seed in summary["remaining"])  # its searches all finished
    if first_done and not calibration_path.is_file():
        atomic_write_text(calibration_path, json.dumps(calibrate_epsilon_mse(summary, first), indent=2))
    if calibration_path.is_file():
        eps_mse = json.loads(calibration_path.read_text())["epsilon_mse"]
        phases = [
            ("mse", eps_mse, [first]),
            ("ce", settings.epsilon_ce, settings.seeds),
            ("mse", eps_mse, settings.seeds),
        ]
        for arm, eps, seeds in phases:
            if deadline is not None and time.time() > deadline:
                stopped = True
                break
            summary = run_arm(arm, eps, seeds)
            stopped = stopped or bool(summary.get("stopped_by_budget"))
    else:
        stopped = True
    payload = summarise_downstream(settings, out, data=data)
    payload.update(provenance(started))
    payload["stopped_by_budget"] = stopped or bool(summary.get("stopped_by_budget"))
    payload["executor"] = executor.describe()
    write_results(out / "downstream.json", payload)
    return json.loads(json.dumps(payload))  # as a reader of the file sees it (lists, not tuples)


def summarise_downstream(
    settings: DownstreamSettings, out_dir: str | os.PathLike[str], *, data: SweepData | None = None
) -> dict[str, Any]:
    """``downstream.json``'s contents from the rows on disk: both arms summarised with every
    seed (each arm's ``summary.json`` is rewritten so, keeping the training run's record:
    :func:`mdl_utils.study_summary.rewrite_summary`), the calibration and the verdicts.
    ``data`` (the activations) gives the activations' variance; without it they are computed
    from the stored classifier and the MNIST test digits."""
    out = Path(out_dir)
    calibration = json.loads((out / "calibration.json").read_text()) if (out / "calibration.json").is_file() else None
    eps = {"ce": settings.epsilon_ce, "mse": None if calibration is None else calibration["epsilon_mse"]}
    arms: dict[str, Any] = {}
    d_in = settings.classifier.hidden[0]
    trained: dict[str, float] = {}
    for arm in ARMS:
        rows = load_rows(out / arm) if (out / arm / "rows").is_dir() else []
        trained.update({r["key"]: r["train"]["train_seconds"] or 0.0 for r in rows})
        arm_eps = eps[arm]
        if arm_eps is None or not rows:
            arms[arm] = None
            continue
        arms[arm] = summarise(settings.study(arm_eps), rows, d_in=d_in, extra_fields=EXTRA_FIELDS)
        rewrite_summary(out / arm / "summary.json", {**arms[arm], "name": f"downstream-{arm}"})
    meta = json.loads((out / "classifier.json").read_text()).get("metadata", {})
    if data is not None:
        h_test = data.split("test")
    else:  # from the stored classifier and the test digits
        from mdl_utils.data import load_mnist

        model, _ = load_classifier(out / "classifier")
        h_test = hidden_activations(model, load_mnist("test")[0][: settings.n_test])
    variance = float(h_test.var(axis=0).mean())
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "settings": settings.to_dict(),
        "classifier": {
            "path": "classifier",
            "test_accuracy": meta.get("test_accuracy"),
            "test_ce": meta.get("test_ce"),
            "train_seconds": meta.get("train_seconds"),
        },
        "epsilon_ce": eps["ce"],
        "epsilon_mse": eps["mse"],
        "calibration": calibration,
        "activation_variance": variance,
        "ce": arms["ce"],
        "mse": arms["mse"],
        "verdicts": [v.to_dict() for v in downstream_verdicts(arms["ce"], arms["mse"], settings.epsilon_ce)],
        "complete": all(a is not None and a["complete"] for a in arms.values()),
        # An SAE both arms asked for is trained once (the cache): count each configuration once.
        "n_saes_trained": len(trained),
        "training_time_s": round(sum(trained.values()), 1),
    }


def load_downstream(out_dir: str | os.PathLike[str]) -> tuple[DownstreamResults, MLPClassifier]:
    """Read a (finished or partial) run: ``downstream.json`` (typed,
    :class:`mdl_utils.downstream_results.DownstreamResults`) and the classifier.

    Raises:
        FileNotFoundError: ``out_dir`` holds no ``downstream.json`` (the message says how to make it).
        ValueError: the file was written by another results format, or lacks what it should hold.
    """
    out = Path(out_dir)
    results = read_record(
        out / "downstream.json",
        DownstreamResults.from_dict,
        version=RESULTS_FORMAT_VERSION,
        how_to_make=f"run `python -m mdl_utils downstream --profile full --out {out}` (or the "
        "chapter with retrain=True) to compute it",
        what="chapter 7's results",
    )
    model, _ = load_classifier(out / results.classifier.path)
    return results, model


def load_arm_sae(out_dir: str | os.PathLike[str], arm: str, width: int, seed: int) -> BatchTopKSAE:
    """The stored DL-optimal SAE of ``(width, seed)`` under one arm (``"ce"`` or ``"mse"``)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    return load_selected_sae(Path(out_dir) / arm, width, seed)


def _report(payload: dict[str, Any], path: Path) -> str:
    optima = ", ".join(
        f"{arm}: width {payload[arm]['resolution']['optimum']}"
        + ("" if payload[arm]["resolution"]["resolved"] else f" (tie set {payload[arm]['resolution']['tie_set']})")
        for arm in ARMS
        if payload[arm] is not None and payload[arm]["resolution"] is not None
    )
    state = "complete" if payload["complete"] else "not complete (rerun to continue)"
    return f"wrote {path} from {payload['n_saes_trained']} SAEs: optima {optima or 'none yet'}; {state}"


def main(argv: list[str] | None = None) -> int:
    """``python -m mdl_utils downstream``: run or resume the downstream-tolerance study."""
    parser = job_parser(
        prog="python -m mdl_utils downstream", doc=__doc__, out_subdir="downstream", summary_name="downstream.json"
    )
    args = parse_job(parser, argv)
    out = Path(args.out)
    settings = settings_for(args.profile)
    return run_job(
        args,
        train=lambda executor: run_downstream(settings, out, executor=executor, **training_options(args)),
        summarise=lambda: summarise_downstream(settings, out),
        summary_path=out / "downstream.json",
        report=lambda payload: _report(payload, out / "downstream.json"),
    )


if __name__ == "__main__":
    sys.exit(main())
