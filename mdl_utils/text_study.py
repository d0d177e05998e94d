"""Chapter 8: the epsilon-MDL protocol on a real transformer's activations, as one resumable job.

The activations are all-MiniLM-L6-v2's residual stream after its third of six layers, on the
prose of Debian's Python documentation (:mod:`mdl_utils.text_activations`), one row per token,
train / validation / test split by document. On them the job runs chapter 3's study
(:mod:`mdl_utils.study`: k searched per width until DL against k has a bracketed minimum,
continuous precision, converged training, seeds, the optimum resolved or a tie set) once per
*arm*, each arm a tolerance:

- ``fvu-<f>``: the reconstruction MSE at most ``f`` times the activations' variance (a
  fraction of variance unexplained, ``f`` in :attr:`TextStudySettings.fvus`; the variance is
  the mean over dimensions of the training split's);
- ``embedding``: the model's own output with the SAE spliced in: the mean over test chunks of
  ``1 - cos(e, e')``, where ``e`` is the sentence embedding (mean of the last layer over the
  chunk's tokens, unit length) and ``e'`` the same with the layer-3 states of the chunk's
  tokens replaced by the SAE's reconstruction (:class:`EmbeddingMeasure`). Its tolerance is
  calibrated by a rule fixed here (:func:`calibrate_embedding_epsilon`): the median, over
  widths, of the embedding change of the SAEs the first FVU arm selected for the first seed,
  so that the two arms are equally strict on average and differ only in *what* they hold to
  the tolerance. It is computed once, written to ``calibration.json`` and never recomputed.

Every SAE is measured under both losses (MSE and embedding change), so the chapter can say what
an FVU-selected SAE does to the embedding. Work is ordered so that a partial run is the most
useful part of the whole: the first seed of every FVU arm, the calibration, the first seed of
the embedding arm, then the other seeds. Each arm's study is resumable, so ``--budget-hours``
and a later rerun continue where it was; an SAE configuration that two arms both ask for is
trained once (the model cache) and measured by each.

``--arms`` runs only the named arms, so that disjoint sets of arms can run at once in separate
processes (or on separate machines) sharing one output folder, as ``--shard`` splits chapter 3's
widths: each arm's rows live in its own folder, and no arm's results depend on another's except
the embedding arm's tolerance, which waits for the first FVU arm's first seed (a process running
``embedding`` without that arm calibrates once the other process has finished it). The
arms' results are the same whichever process trains them; ``--summary-only`` afterwards writes
``transformer.json`` and each arm's ``summary.json`` from every arm's rows. Give each arm to one process only: two processes on
one arm would both write its rows.

Command line::

    python -m mdl_utils transformer --profile full [--out results/full/transformer]
        [--budget-hours H] [--workers N | --ray-address HOST:PORT] [--device cuda] [--summary-only]
        [--arms ARM [ARM ...]]

Output folder: ``transformer.json`` (settings, the activations' provenance and wall times, the
variance, the rank bound on any SAE's test MSE at each width up to d
(:func:`mdl_utils.bounds.rank_mse_bound`), each arm's tolerance and study summary, the
number of distinct SAEs trained over all arms and their summed training time (an SAE two arms
share is counted once here, in both arms' own summaries), provenance of the run), and one study
folder
per arm (``rows/``, ``saes/``, ``summary.json``). The activations themselves are cached
(``$MDL_CACHE_DIR``), not committed: the job collects them again from a clean clone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mdl_utils.bounds import rank_mse_bound
from mdl_utils.corpus import Corpus, fetch_corpus
from mdl_utils.data import SweepData, data_fingerprint
from mdl_utils.epsilon_scan import EXTEND_DOWN_TO, REPLICATE_WITHIN, STOP_WIDENING
from mdl_utils.executors import Executor, ProgressMode, SerialExecutor, check_progress_mode
from mdl_utils.io import atomic_write_text
from mdl_utils.loss_measure import measure_under_loss
from mdl_utils.minilm import MiniLM, load_minilm
from mdl_utils.profiles import cache_dir as default_cache_dir
from mdl_utils.profiles import choose, provenance, read_results, write_results
from mdl_utils.protocol import (
    REL_BAND,
    measure_sae,
    quantised_latents,
    quantised_mse,
    sparse_decode,
    sparse_latents,
)
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.study import run_study
from mdl_utils.study_plan import QUICK_RECIPE, RECIPE, StudySettings
from mdl_utils.study_store import load_rows
from mdl_utils.study_summary import StudySummary, rewrite_summary, summarise
from mdl_utils.text_activations import ActivationSpec, Chunk, TokenActivations, token_activations

__all__ = [
    "RESULTS_FORMAT_VERSION",
    "EXTRA_FIELDS",
    "TextStudySettings",
    "TextResults",
    "EmbeddingMeasure",
    "settings_for",
    "text_data",
    "arm_names",
    "calibrate_embedding_epsilon",
    "rank_floor",
    "min_width_for",
    "run_text_study",
    "summarise_text_study",
    "load_text_study",
    "main",
]

RESULTS_FORMAT_VERSION = 1

#: Readings copied from each selected SAE's row into its arm's summary.
EXTRA_FIELDS: tuple[str, ...] = ("fvu", "embedding_change", "embedding_change_quantised", "mse_quantised")


@dataclass(frozen=True)
class TextStudySettings:
    """What chapter 8's job collects and trains.

    Attributes:
        activations: which states, and how many tokens per split.
        fvus: the fractions of variance unexplained used as MSE tolerances (one arm each).
        embedding_arm: run the arm whose tolerance is the embedding change.
        embedding_epsilon: its tolerance on the mean embedding change ``1 - cos``; ``None``
            calibrates it (:func:`calibrate_embedding_epsilon`) to be as strict, on average, as
            the first FVU tolerance.
        study: chapter 3's study settings shared by every arm (its ``epsilon`` is replaced
            per arm).
    """

    activations: ActivationSpec
    fvus: tuple[float, ...]
    study: StudySettings
    embedding_arm: bool = True
    embedding_epsilon: float | None = None

    def __post_init__(self) -> None:
        if not self.fvus:
            raise ValueError("fvus must name at least one tolerance (the first FVU arm runs first)")
        if any(not 0 < f < 1 for f in self.fvus):
            raise ValueError(f"fvus must lie in (0, 1), got {self.fvus!r}")
        if self.embedding_epsilon is not None and not 0 < self.embedding_epsilon < 2:
            raise ValueError(f"embedding_epsilon must lie in (0, 2), got {self.embedding_epsilon!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "activations": asdict(self.activations),
            "fvus": list(self.fvus),
            "study": self.study.to_dict(),
            "embedding_arm": self.embedding_arm,
            "embedding_epsilon": self.embedding_epsilon,
        }


def settings_for(profile: str) -> TextStudySettings:
    """``quick`` (minutes, CI: a small slice of the text, two widths, one seed) or ``full``
    (paper scale, with the epsilon scan's cost rules: :data:`mdl_utils.epsilon_scan.STOP_WIDENING`,
    :data:`~mdl_utils.epsilon_scan.EXTEND_DOWN_TO`, :data:`~mdl_utils.epsilon_scan.REPLICATE_WITHIN`)."""
    return choose(
        profile,
        quick=TextStudySettings(
            activations=ActivationSpec(max_tokens={"train": 8_000, "val": 1_500, "test": 1_500}),
            fvus=(0.3,),
            study=StudySettings(
                n_train=None,
                n_test=None,
                widths=(128, 256),
                fill_widths=False,
                seeds=(0,),
                k_start=16.0,
                n_boot=50,
                train=dict(QUICK_RECIPE),
            ),
        ),
        full=TextStudySettings(
            activations=ActivationSpec(max_tokens={"train": 200_000, "val": 20_000, "test": 10_000}),
            fvus=(0.1, 0.2),
            study=StudySettings(
                n_train=None,
                n_test=None,
                widths=(128, 256, 512, 1024, 2048, 4096),
                seeds=(0, 1, 2),
                k_start=32.0,
                train=dict(RECIPE),
                # The epsilon scan's three cost rules (chapter 6), fixed for this profile before
                # its float64 run: wider widths stop after two 10% rises, the grid grows at its
                # narrow end while the narrowest width is the optimum, and further seeds go only
                # to widths within 10% of the best seed-0 DL*.
                stop_widening=STOP_WIDENING,
                extend_down_to=EXTEND_DOWN_TO,
                replicate_within=REPLICATE_WITHIN,
            ),
        ),
    )


def arm_names(settings: TextStudySettings) -> list[str]:
    """The arms in the order the job runs them: ``fvu-<f>`` per tolerance, then ``embedding``."""
    return [f"fvu-{f:g}" for f in settings.fvus] + (["embedding"] if settings.embedding_arm else [])


# --------------------------------------------------------------------------------------------
# Data and the measure
# --------------------------------------------------------------------------------------------


def text_data(
    settings: TextStudySettings, cache: Path, *, corpus: Corpus | None = None, model: MiniLM | None = None,
    progress: bool = True,
) -> tuple[TokenActivations, SweepData, float, MiniLM]:  # fmt: skip
    """The activations (collected or read from the cache), in the study's format, with the
    training split's variance (mean over dimensions) and the model."""
    corpus = corpus if corpus is not None else fetch_corpus(progress=progress)
    model = model if model is not None else load_minilm()
    acts = token_activations(settings.activations, corpus, model, cache, progress=progress)
    train, val, test = (np.asarray(acts.split(s), dtype=np.float32) for s in ("train", "val", "test"))
    if min(len(train), len(val), len(test)) < 2:
        raise ValueError(f"too few tokens in a split: {acts.meta['n_tokens']}")
    data = SweepData(train=train, val=val, test=test, fingerprint=data_fingerprint(train, val, test))
    return acts, data, float(train.var(axis=0).mean()), model


class EmbeddingMeasure:
    """The study's measure for one arm (see :class:`mdl_utils.study.MSEMeasure`): every SAE is
    measured under the arm's tolerance (``loss`` ``"mse"`` or ``"embedding"``) and read under
    the other loss too.

    Holds the model and the test chunks; the test activations the study passes must be those
    chunks' tokens in order (:func:`text_data` makes them so).
    """

    def __init__(
        self,
        model: MiniLM,
        chunks: list[Chunk],
        layer: int,
        *,
        loss: str,
        epsilon: float,
        variance: float,
        other_tolerances: tuple[float, ...] = (),
        batch_size: int = 64,
    ) -> None:
        if loss not in ("mse", "embedding"):
            raise ValueError(f"loss must be 'mse' or 'embedding', got {loss!r}")
        self.model, self.layer, self.loss, self.epsilon = model, layer, loss, epsilon
        self.variance, self.other_tolerances = variance, other_tolerances
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for i in range(0, len(chunks), batch_size):
            group = [list(c.ids) for c in chunks[i : i + batch_size]]
            ids, mask = model.batch(group)
            states = model.states_at(ids, mask, layer)
            real = mask.clone()
            real[:, 0] = False  # [CLS]
            real[torch.arange(len(group)), torch.tensor([len(c) + 1 for c in group])] = False  # [SEP]
            self.batches.append((states, mask, real, model.embed_from(states, mask, layer)))
        self.n_tokens = sum(int(b[2].sum()) for b in self.batches)

    def change(self, x_hat: torch.Tensor) -> float:
        """Mean over chunks of ``1 - cos`` between the embedding and the embedding with the
        chunk's token states replaced by the rows of ``x_hat`` (tokens in chunk order)."""
        if x_hat.shape[0] != self.n_tokens:
            raise ValueError(f"{x_hat.shape[0]} reconstructed tokens for {self.n_tokens} test tokens")
        total, n, row = 0.0, 0, 0
        for states, mask, real, clean in self.batches:
            edited = states.clone()
            k = int(real.sum())
            edited[real] = x_hat[row : row + k].to(edited.dtype)
            row += k
            e = self.model.embed_from(edited, mask, self.layer)
            total += float((1.0 - (e * clean).sum(-1)).double().sum())
            n += len(clean)
        return total / n

    def __call__(self, sae: BatchTopKSAE, x_test: Any, boot_weights: np.ndarray | None = None) -> dict[str, Any]:
        x = torch.from_numpy(np.asarray(x_test, dtype=np.float32))
        z = sparse_latents(sae, x)
        change_raw = self.change(sparse_decode(sae, z))

        def change_at(bits: float) -> float:
            return self.change(sparse_decode(sae, quantised_latents(z, bits)))

        if self.loss == "mse":
            out = measure_sae(
                sae, x, epsilon=self.epsilon, other_tolerances=self.other_tolerances, boot_weights=boot_weights
            ).to_dict()
            p = out["precision"]
            mse_q = None if p is None else p["mse_quantised"]
            change_q = None if p is None else change_at(p["bits"])
        else:
            mse_raw = float(((sparse_decode(sae, z) - x) ** 2).mean())
            out = measure_under_loss(
                z,
                change_at,
                raw_loss=change_raw,
                mse=mse_raw,
                width=sae.width,
                k=sae.k,
                epsilon=self.epsilon,
                other_tolerances=self.other_tolerances,
                boot_weights=boot_weights,
                rel_band=REL_BAND,
            )
            p = out["precision"]
            mse_q = None if p is None else quantised_mse(sae, z, x, p["bits"])
            change_q = None if p is None else p["mse_quantised"]
        out.update(
            loss=self.loss,
            fvu=out["mse"] / self.variance,
            embedding_change=change_raw,
            embedding_change_quantised=change_q,
            mse_quantised=mse_q,
        )
        return out


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def calibrate_embedding_epsilon(summary: dict[str, Any], seed: int) -> dict[str, Any]:
    """The embedding arm's tolerance: the median over widths of the quantised embedding change
    of the SAEs the first FVU arm selected for ``seed`` (widths that miss that tolerance are
    left out). Raises ValueError when no width has a selection."""
    per_width: dict[str, float] = {}
    for entry in summary["widths"]:
        s = entry["seeds"].get(str(seed))
        if s and s.get("reachable") and s.get("embedding_change_quantised") is not None:
            per_width[str(entry["width"])] = float(s["embedding_change_quantised"])
    if not per_width:
        raise ValueError("no width of the first FVU arm has a selected SAE: nothing to calibrate on")
    return {
        "rule": "median over widths of the embedding change (1 - cos, at the selected precision) of "
        "the SAEs the first FVU arm selected for the first seed",
        "seed": seed,
        "per_width": per_width,
        "epsilon": float(np.median(list(per_width.values()))),
    }


def _arm_settings(
    settings: TextStudySettings, arm: str, variance: float, calibrated: float | None, floor: Sequence[float]
) -> tuple[StudySettings, str, float] | None:
    """The arm's study settings, loss and tolerance (None: the embedding arm, not calibrated yet).

    ``floor``: the rank bound on the test MSE at widths 1 .. d (:func:`min_width_for`); an
    FVU arm searches no width below the narrowest whose floor is within its tolerance.
    """
    if arm == "embedding":
        eps = settings.embedding_epsilon if settings.embedding_epsilon is not None else calibrated
        if eps is None:
            return None
        return replace(settings.study, epsilon=eps), "embedding", eps
    fvu = float(arm.removeprefix("fvu-"))
    eps = fvu * variance
    return replace(settings.study, epsilon=eps, min_width=min_width_for(floor, eps)), "mse", eps


def check_arms(settings: TextStudySettings, arms: Sequence[str] | None) -> list[str]:
    """The arms to run, in :func:`arm_names` order: all of them for ``None``; ValueError for an
    empty selection, a repeated name or a name the settings do not have."""
    names = arm_names(settings)
    if arms is None:
        return names
    if isinstance(arms, str):
        raise TypeError(f"arms must be a sequence of arm names, not the string {arms!r}")
    if not arms:
        raise ValueError(f"arms must name at least one arm ({', '.join(names)}), or be None for all")
    unknown = [a for a in arms if a not in names]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(map(repr, unknown))}: this profile's arms are {', '.join(names)}")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms names an arm twice: {list(arms)}")
    return [a for a in names if a in arms]


def rank_floor(acts: TokenActivations) -> list[float]:
    """The rank bound on the test MSE of any SAE at widths 1 .. d, on the test activations
    (:func:`mdl_utils.bounds.rank_mse_bound`), as a list indexed by width - 1."""
    test = acts.split("test")
    d = int(test.shape[1])
    bound = rank_mse_bound(test, range(1, d + 1))
    return [bound[w] for w in range(1, d + 1)]


def min_width_for(floor: Sequence[float], epsilon: float) -> int:
    """The narrowest width whose rank bound ``floor[w - 1]`` (the smallest test MSE any SAE of
    width w can reach, :func:`mdl_utils.bounds.rank_mse_bound`, for w = 1 .. d) is at most
    ``epsilon``: no narrower SAE can meet that MSE tolerance at any k."""
    if not floor:
        raise ValueError("floor must give the rank bound at widths 1 .. d (got none)")
    for w, value in enumerate(floor, start=1):
        if value <= epsilon:
            return w
    return len(floor) + 1  # unreachable only if the floor at d is above epsilon (it is 0 there)


def _calibrated(out: Path) -> float | None:
    path = out / "calibration.json"
    return float(json.loads(path.read_text())["epsilon"]) if path.is_file() else None


#: What must agree between the activations a folder's rows were measured on and today's.
SAME_ACTIVATIONS = ("format_version", "weights_sha256", "layer", "text_fingerprint", "n_tokens")


def _check_same_activations(out: Path, acts: TokenActivations) -> None:
    """Refuse to resume rows that were measured on other activations (another text, layer or
    token count, or another format: format 2 computed the states in float32)."""
    if not (out / "transformer.json").is_file() or not any(out.glob("*/rows/*.json")):
        return
    before = load_text_study(out).info.get("activations", {})
    differ = [k for k in SAME_ACTIVATIONS if before.get(k) != acts.meta.get(k)]
    if differ:
        changes = "; ".join(f"{k}: {before.get(k)!r} then, {acts.meta.get(k)!r} now" for k in differ)
        raise ValueError(
            f"{out}: its rows were measured on other activations ({changes}); resuming would mix "
            f"the two. Move {out} aside (or delete it) to start the study again"
        )


def run_text_study(
    settings: TextStudySettings,
    out_dir: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    budget_hours: float | None = None,
    device: str = "auto",
    progress: ProgressMode = True,
    threads: int | None = 1,
    executor: Executor | None = None,
    arms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) every arm, or only ``arms`` (names from :func:`arm_names`; see the module
    docstring for running disjoint sets at once); write ``out_dir/transformer.json`` (every
    arm's rows on disk summarised) and return it."""
    selected = check_arms(settings, arms)
    started = time.time()
    deadline = None if budget_hours is None else started + 3600 * budget_hours
    out = Path(out_dir)
    cache_path = Path(cache) if cache is not None else default_cache_dir()
    t0 = time.time()
    progress = check_progress_mode(progress)
    # The text and activations' bars only with a display (``"lines"`` is for a log file).
    acts, data, variance, model = text_data(settings, cache_path, progress=progress is True)
    _check_same_activations(out, acts)
    floor = rank_floor(acts)
    data_seconds = round(time.time() - t0, 1)
    executor = executor if executor is not None else SerialExecutor()
    first = settings.study.seeds[0]
    fvu_arms = [a for a in arm_names(settings) if a != "embedding"]
    stopped = False

    def run_arm(arm: str, seeds: tuple[int, ...]) -> dict[str, Any] | None:
        nonlocal stopped
        found = _arm_settings(settings, arm, variance, _calibrated(out), floor)
        if found is None:
            return None
        study, loss, epsilon = found
        measure = EmbeddingMeasure(
            model,
            acts.chunks["test"],
            settings.activations.layer,
            loss=loss,
            epsilon=epsilon,
            variance=variance,
            other_tolerances=tuple(epsilon * r for r in study.reread),
        )
        summary = run_study(
            replace(study, seeds=seeds),
            out / arm,
            cache=cache_path,
            budget_hours=None if deadline is None else max(0.0, (deadline - time.time()) / 3600),
            device=device,
            progress=progress,
            data=data,
            threads=threads,
            executor=executor,
            measure=measure,
            name=f"transformer-{arm}",
            extra_fields=EXTRA_FIELDS,
            # The arm's summary.json describes the whole study even after a first-seed phase,
            # or it would read as finished while seeds remain.
            summary_seeds=study.seeds,
        )
        stopped = stopped or bool(summary.get("stopped_by_budget"))
        return summary

    phases: list[tuple[str, tuple[int, ...]]] = [(a, (first,)) for a in fvu_arms]
    phases += [("calibrate", ()), ("embedding", (first,))] if settings.embedding_arm else []
    phases += [(a, settings.study.seeds) for a in arm_names(settings)]
    # The calibration belongs to the embedding arm: it only reads the first FVU arm's rows.
    phases = [(a, s) for a, s in phases if (a == "calibrate" and "embedding" in selected) or a in selected]
    for arm, seeds in phases:
        if deadline is not None and time.time() > deadline:
            stopped = True
            break
        if arm == "calibrate":
            first_arm = _arm_settings(settings, fvu_arms[0], variance, None, floor)
            assert first_arm is not None  # an FVU arm's tolerance needs no calibration
            rows = load_rows(out / fvu_arms[0]) if (out / fvu_arms[0] / "rows").is_dir() else []
            summary = summarise(replace(first_arm[0], seeds=(first,)), rows, d_in=data.split("test").shape[1],
                                extra_fields=EXTRA_FIELDS)  # fmt: skip
            if settings.embedding_epsilon is None and summary["complete"] and not (out / "calibration.json").is_file():
                atomic_write_text(
                    out / "calibration.json", json.dumps(calibrate_embedding_epsilon(summary, first), indent=2)
                )
            continue
        if run_arm(arm, seeds) is None:
            print(
                f"[transformer] arm {arm}: not run, its tolerance is not calibrated yet (the first seed of "
                f"arm {fvu_arms[0]} must finish first)",
                file=sys.stderr,
            )
    payload = summarise_text_study(settings, out, acts=acts, variance=variance, floor=floor)
    payload["data_seconds"] = data_seconds
    payload.update(provenance(started))
    payload["stopped_by_budget"] = stopped
    payload["executor"] = executor.describe()
    write_results(out / "transformer.json", payload)
    return payload


def summarise_text_study(
    settings: TextStudySettings,
    out_dir: str | os.PathLike[str],
    *,
    acts: TokenActivations,
    variance: float,
    floor: Sequence[float] | None = None,
) -> dict[str, Any]:
    """``transformer.json``'s content from the arms' rows (no training).

    ``floor``: :func:`rank_floor` of ``acts`` when the caller has it already (computed here
    otherwise).
    """
    out = Path(out_dir)
    arms: dict[str, Any] = {}
    seconds_by_key: dict[str, float] = {}  # each distinct SAE once, however many arms used it
    calibrated = _calibrated(out)
    floor = list(floor) if floor is not None else rank_floor(acts)
    for arm in arm_names(settings):
        found = _arm_settings(settings, arm, variance, calibrated, floor)
        if found is None:
            arms[arm] = {"epsilon": None, "summary": None}
            continue
        study, _, epsilon = found
        rows = load_rows(out / arm) if (out / arm / "rows").is_dir() else []
        for row in rows:
            seconds_by_key.setdefault(row["key"], float(row["train"]["train_seconds"] or 0.0))
        arms[arm] = {
            "epsilon": epsilon,
            "summary": summarise(study, rows, d_in=int(acts.split("test").shape[1]), extra_fields=EXTRA_FIELDS)
            if rows
            else None,
        }
    d_model = len(floor)
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "settings": settings.to_dict(),
        "activations": acts.meta,
        "variance": variance,
        "d_model": d_model,
        # The smallest test MSE any SAE of width w can reach (mdl_utils.bounds), w = 1 .. d.
        "rank_bound_mse": floor,
        "calibration": json.loads((out / "calibration.json").read_text()) if calibrated is not None else None,
        "arms": arms,
        # Distinct SAEs over all arms: an SAE two arms both searched through (same width, seed
        # and k: the training does not depend on the tolerance) is trained once, from the shared
        # cache, and counted once here, while each arm's own summary counts every SAE it used.
        "n_saes_trained": len(seconds_by_key),
        "training_time_s": round(sum(seconds_by_key.values()), 1),
        "complete": all(a["summary"] and a["summary"]["complete"] for a in arms.values()),
    }


def rewrite_summaries(
    settings: TextStudySettings,
    out_dir: str | os.PathLike[str],
    *,
    acts: TokenActivations,
    variance: float,
    started: float | None = None,
) -> dict[str, Any]:
    """``--summary-only``: :func:`summarise_text_study`'s content, returned (the caller writes
    ``transformer.json``), and each arm's own ``summary.json`` rewritten from the same rows
    (:func:`mdl_utils.study_summary.rewrite_summary`), so a change to the summary reaches them
    and a file an older job left summarising fewer seeds than the study has is repaired. What
    the run that trained the rows recorded (machine, date, code version, budget stop, executor)
    is kept; a file with none gets this call's (``started``: when it began, default now).
    """
    started = time.time() if started is None else started
    out = Path(out_dir)
    payload = summarise_text_study(settings, out, acts=acts, variance=variance)
    record = {**provenance(started), "stopped_by_budget": False}
    for arm, a in payload["arms"].items():
        if a["summary"] is not None:
            rewrite_summary(out / arm / "summary.json", a["summary"], record=record)
    return payload


@dataclass(frozen=True)
class TextResults:
    """``transformer.json`` as read: each arm's tolerance and typed study summary (``None``
    before its first row), and the rest of the file (settings, the activations' provenance,
    variance, run provenance) in ``info``."""

    arms: dict[str, tuple[float | None, StudySummary | None]]
    info: dict[str, Any] = field(default_factory=dict)


def load_text_study(out_dir: str | os.PathLike[str]) -> TextResults:
    """Read ``out_dir/transformer.json`` (FileNotFoundError says how to make it)."""
    path = Path(out_dir) / "transformer.json"
    payload = read_results(
        path, version=RESULTS_FORMAT_VERSION, how_to_make="run `python -m mdl_utils transformer --profile full`"
    )
    try:
        arms = {
            name: (
                None if a["epsilon"] is None else float(a["epsilon"]),
                None if a["summary"] is None else StudySummary.from_dict(a["summary"]),
            )
            for name, a in payload["arms"].items()
        }
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not chapter 8's results ({type(err).__name__}: {err})") from err
    return TextResults(arms, {k: v for k, v in payload.items() if k != "arms"})


def _report(payload: dict[str, Any], path: Path) -> str:
    lines = []
    for arm, a in payload["arms"].items():
        s = a["summary"]
        res = None if s is None else s["resolution"]
        state = (
            "not started" if s is None else ("complete" if s["complete"] else f"{len(s['remaining'])} searches left")
        )
        best = "" if res is None else f", optimum {res['optimum']} (tie set {list(res['tie_set'])})"
        eps = "not calibrated yet" if a["epsilon"] is None else f"epsilon {a['epsilon']:.4g}"
        lines.append(f"{arm}: {eps}, {state}{best}")
    lines.append(f"wrote {path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m mdl_utils transformer``: run or resume chapter 8's job, or rewrite its summary."""
    from mdl_utils.jobs import job_parser, parse_job, run_job, training_options
    from mdl_utils.profiles import results_dir

    parser = job_parser(
        prog="python -m mdl_utils transformer",
        doc=__doc__,
        out_subdir="transformer",
        default_profile="full",
        summary_name="transformer.json",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        default=None,
        metavar="ARM",
        help="run only these arms (default: all; e.g. fvu-0.1 embedding): disjoint sets can run at once "
        "in separate processes sharing --out",
    )
    args = parse_job(parser, argv)
    settings = settings_for(args.profile)
    out = Path(args.out) if args.out else results_dir() / args.profile / "transformer"
    try:
        check_arms(settings, args.arms)
    except ValueError as err:
        parser.error(str(err))

    def summarise_only() -> dict[str, Any]:
        started = time.time()
        cache_path = Path(args.cache) if args.cache else default_cache_dir()
        acts, _, variance, _ = text_data(settings, cache_path)
        return rewrite_summaries(settings, out, acts=acts, variance=variance, started=started)

    return run_job(
        args,
        train=lambda executor: run_text_study(
            settings, out, executor=executor, arms=args.arms, **training_options(args)
        ),
        summarise=summarise_only,
        report=lambda payload: _report(payload, out / "transformer.json"),
        summary_path=out / "transformer.json",
    )
