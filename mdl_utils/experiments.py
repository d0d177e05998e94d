"""The first, single-seed MNIST MDL sweep (section 5 of the paper brief), as one resumable job.

Superseded for chapter 3 by :mod:`mdl_utils.study` (converged SAEs, continuous precision, a
minimum over k, seeds and intervals); kept because chapter 6's epsilon scan and its committed
results (``results/full/mdl.json``, ``results/full/beyond``) were computed with it.

For each width, the sweep's target-loss mode (:mod:`mdl_utils.sweep`) trains BatchTopK SAEs
until one lands in ``[0.95 * epsilon, epsilon]`` test MSE; every selected SAE is then measured
under the epsilon-MDL protocol (:func:`mdl_utils.mdl.evaluate_mdl`). The SAEs at the points
A-D of the DL curve are saved compactly (float16 weights) beside the table, and *their* rows
are measured again from the stored float16 weights, so that anyone can reload them and
reproduce the recorded MSE and DL exactly.

Command line (progress on stderr, resumable: rerun the same command after an interruption)::

    python -m mdl_utils.experiments --profile full [--out results/full] [--cache DIR]

Output folder layout: ``mdl.json`` (settings, provenance, one row per width, the points
A-D), ``sweep/`` (the sweep runner's tables: every SAE trained during the search), and
``saes/<point>.safetensors`` + ``.json`` (the SAEs at A-D).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mdl_utils.mdl import evaluate_mdl, regime_points
from mdl_utils.protocol import optimum_index
from mdl_utils.profiles import cache_dir as default_cache_dir
from mdl_utils.profiles import choose, parse_job_args, provenance, read_results, write_results
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.executors import Executor
from mdl_utils.sweep import DataSpec, SweepConfig, TargetSpec, load_cached_sae, prepare_data, run_sweep

__all__ = ["SweepSettings", "settings_for", "run_mnist_sweep", "load_mnist_sweep", "main"]

RESULTS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SweepSettings:
    """What the chapter-3 sweep trains and how it selects SAEs.

    Attributes:
        n_train: training digits used (first n of MNIST's 60,000; ``None`` = all); a tenth
            of them is held out as the validation split for early stopping.
        n_test: test digits used to measure MSE and DL (``None`` = all 10,000).
        widths: SAE widths swept, narrow to wide.
        epsilon: tolerance, test MSE per pixel (pixels in [0, 1]).
        band_low: an SAE is selected when its test MSE is in ``[band_low * eps, eps]``.
        max_epochs, patience: training length and early-stopping patience (epochs).
        max_trials: trainings per width in the search over k.
        k_start: the first k tried at the narrowest width.
        seed: training seed.
    """

    n_train: int | None
    n_test: int | None
    widths: tuple[int, ...]
    epsilon: float = 0.015
    band_low: float = 0.95
    max_epochs: int = 30
    patience: int = 3
    max_trials: int = 8
    k_start: float = 32.0
    seed: int = 0
    batch_size: int = 1024


def settings_for(profile: str) -> SweepSettings:
    """The sweep's settings for a run profile: ``quick`` (minutes) or ``full`` (paper scale)."""
    return choose(
        profile,
        quick=SweepSettings(
            n_train=6_000, n_test=2_000, widths=(64, 128, 256, 512, 1024),
            max_epochs=20, patience=3, max_trials=6, k_start=28.0, batch_size=512,
        ),
        full=SweepSettings(
            n_train=None, n_test=None, widths=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            max_epochs=20, patience=3, max_trials=8,
        ),
    )


def _sweep_config(settings: SweepSettings, out_dir: Path, cache: Path, progress: bool) -> SweepConfig:
    return SweepConfig(
        out_dir=out_dir / "sweep",
        cache_dir=cache,
        data=DataSpec(source="mnist", n_train=settings.n_train, n_test=settings.n_test),
        train={
            "max_epochs": settings.max_epochs, "patience": settings.patience,
            "batch_size": settings.batch_size, "seed": settings.seed, "progress": False,
        },
        grid={"width": list(settings.widths)},
        target=TargetSpec(
            epsilon=settings.epsilon, band_low=settings.band_low, split="test",
            k_start=settings.k_start, max_trials=settings.max_trials,
        ),
        progress=progress,
    )


def _save_compact(sae: BatchTopKSAE, path: Path) -> BatchTopKSAE:
    """Save ``sae`` with float16 weights and return it as reloaded (what others will see)."""
    compact = copy.deepcopy(sae).half()
    compact.save(path)
    return BatchTopKSAE.load(path)


def run_mnist_sweep(
    settings: SweepSettings,
    out_dir: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run (or resume) the sweep, evaluate it, write ``out_dir/mdl.json`` and the A-D SAEs.

    Training is cached per configuration (see :mod:`mdl_utils.sweep`), so an interrupted
    run loses at most the SAE being trained. ``executor``: where the trainings run (see
    :mod:`mdl_utils.executors`; one width after another, as each width's search starts from
    the previous width's k). Returns the contents of ``mdl.json``.
    """
    out = Path(out_dir)
    cache_path = Path(cache) if cache is not None else default_cache_dir()
    started = time.time()
    config = _sweep_config(settings, out, cache_path, progress)
    data = prepare_data(config.data)
    sweep = run_sweep(config, data, executor=executor)
    x_test = data.split("test")

    rows: list[dict[str, Any]] = []
    saes: dict[int, BatchTopKSAE] = {}
    for target in sweep.targets:
        row: dict[str, Any] = {
            "width": int(target["width"]), "status": target["status"], "k": target["k"],
            "n_trials": target["n_trials"], "key": target["key"],
        }
        trained = next((r for r in sweep.rows if r["key"] == target["key"]), None)
        if trained is not None:
            row.update(epochs=trained["epochs"], train_seconds=trained["train_seconds"],
                       dead_fraction_train=trained["dead_fraction"])
        reachable = target["key"] is not None and target["mse"] is not None and (
            target["mse"] <= settings.epsilon
        )
        if reachable:
            sae = load_cached_sae(cache_path, target["key"])
            saes[row["width"]] = sae
            row.update(evaluate_mdl(sae, x_test, epsilon=settings.epsilon).to_dict())
        else:
            row.update(mse=target["mse"], dl_bits=None)
        rows.append(row)

    measured = [r for r in rows if r.get("dl_bits") is not None]
    points: dict[str, Any] = {}
    if measured:
        index = regime_points([r["width"] for r in measured], [r["dl_bits"] for r in measured])
        (out / "saes").mkdir(parents=True, exist_ok=True)
        for name, i in index.items():
            width = measured[i]["width"]
            reloaded = _save_compact(saes[width], out / "saes" / name)
            stored = evaluate_mdl(reloaded, x_test, epsilon=settings.epsilon)
            points[name] = {"width": width, "path": f"saes/{name}", "stored": stored.to_dict()}

    best = optimum_index([r["dl_bits"] for r in measured], [r["width"] for r in measured])
    optimum = None if best is None else measured[best]
    payload = {
        "format_version": RESULTS_FORMAT_VERSION,
        "settings": asdict(settings),
        "epsilon": settings.epsilon,
        **provenance(started),
        "training_time_s": round(sum(r["train_seconds"] for r in sweep.rows), 1),
        "n_saes_trained": len(sweep.rows),
        "optimum_width": None if optimum is None else optimum["width"],
        "rows": rows,
        "points": points,
    }
    write_results(out / "mdl.json", payload)
    return payload


def load_mnist_sweep(out_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, BatchTopKSAE]]:
    """Read a finished sweep: the contents of ``mdl.json`` and the saved SAEs at A-D.

    Raises:
        FileNotFoundError: ``out_dir`` holds no ``mdl.json`` (the message says how to make it).
        ValueError: the file was written by another results format.
    """
    out = Path(out_dir)
    payload = read_results(
        out / "mdl.json", version=RESULTS_FORMAT_VERSION,
        how_to_make=f"run `python -m mdl_utils.experiments --profile full --out {out}` (or the "
                    "chapter with retrain=True) to compute it",
    )
    saes = {name: BatchTopKSAE.load(out / point["path"]) for name, point in payload["points"].items()}
    return payload, saes


def main(argv: list[str]) -> int:
    """``python -m mdl_utils.experiments``: run or resume the single-seed sweep."""
    args = parse_job_args(argv, prog="python -m mdl_utils.experiments", doc=__doc__)
    out = args.out
    try:
        payload = run_mnist_sweep(settings_for(args.profile), out, cache=args.cache,
                                  progress=not args.no_progress)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'mdl.json'}: optimum width {payload['optimum_width']}, "
          f"wall time {payload['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
