"""The trained-SAE experiments of chapters 4 and 5, on the exact toy models of :mod:`mdl_utils.toys`.

- :func:`run_splitting_experiment` (chapter 4): at points (p, rho) on both sides of the
  splitting boundary, a width-``2 n_pairs`` SAE (the unsplit code) and a width-``3 n_pairs`` SAE
  (the split code) are trained on correlated boolean pairs, each from the intended dictionary
  and from random starts; the run with the lowest validation MSE is kept and its DL measured
  at an equal test-MSE ceiling, beside the exact DL of the code it is meant to learn.
- :func:`run_hierarchy_experiment` (chapter 5): a tree-structured SAE
  (:class:`mdl_utils.tree_sae.TreeSAE`) against a flat BatchTopK SAE of the same width and
  total k on hierarchical data, each the best of several seeds, both measured at the same
  test-MSE ceiling.

Both are deterministic for their settings (one torch thread), and their results are cached as
JSON under ``cache`` keyed by a hash of the settings, so a chapter that is executed again (or
nbval re-running it) reads them instead of retraining.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdl_utils.entropy import description_length
from mdl_utils.io import atomic_write_text
from mdl_utils.precision import effective_precision
from mdl_utils.sae import BatchTopKSAE
from mdl_utils.toy_data import best_cosines, correlated_pair_data, dictionary_sae, hierarchical_data, pair_codes
from mdl_utils.toys import joint_probability, splitting_dl, splitting_l0
from mdl_utils.train import TrainConfig, evaluate_sae, train_sae
from mdl_utils.tree_sae import TreeSAE, TreeTrainConfig, train_tree_sae, tree_description_length

__all__ = [
    "SplittingSettings",
    "HierarchySettings",
    "run_splitting_experiment",
    "run_hierarchy_experiment",
    "RESULTS_FORMAT_VERSION",
]

RESULTS_FORMAT_VERSION = 1


def _cached(cache: str | os.PathLike[str] | None, name: str, settings: Any, compute: Any) -> Any:
    """``compute()``'s JSON result, read from ``cache/<name>-<hash of settings>.json`` when there."""
    if cache is None:
        return compute()
    key = hashlib.sha256(
        json.dumps({"format": RESULTS_FORMAT_VERSION, **asdict(settings)}, sort_keys=True).encode()
    ).hexdigest()[:16]
    path = Path(cache) / f"{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = json.loads(json.dumps(compute()))  # as it will read back
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1))
    return result


def _nan_to_none(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


# --------------------------------------------------------------------------------------------
# Chapter 4: feature splitting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplittingSettings:
    """Chapter 4's experiment.

    Attributes:
        points: the (p, rho) points: each pair's features fire with probability p, correlation rho.
        n_pairs: independent pairs of boolean features (BatchTopK needs a mean L0 of at least one).
        dim: the data's dimension; noise_std: Gaussian noise per entry.
        mse_ceiling_factor: the equal-MSE ceiling, as a multiple of the noise variance.
        n_samples: samples per point (60% train, 20% validation, 20% test).
        random_seeds: seeds of the random starts (one more run starts from the intended dictionary).
        max_epochs: training epochs at most (early stopping with patience 10).
        data_seed: the seed of the data.
    """

    points: tuple[tuple[float, float], ...]
    n_pairs: int = 3
    dim: int = 8
    noise_std: float = 0.02
    mse_ceiling_factor: float = 2.5
    n_samples: int = 16_000
    random_seeds: tuple[int, ...] = (0, 1)
    max_epochs: int = 60
    data_seed: int = 1

    @property
    def mse_ceiling(self) -> float:
        """The equal-MSE tolerance of the DL comparison (MSE per entry)."""
        return self.mse_ceiling_factor * self.noise_std**2

    def train_config(self, width: int, k: float, seed: int) -> TrainConfig:
        return TrainConfig(
            width=width,
            k=float(k),
            seed=seed,
            batch_size=512,
            max_epochs=self.max_epochs,
            patience=10,
            lr=1e-3,
            device="cpu",
            progress=False,
        )


def _measured_dl(sae: Any, x_test: np.ndarray, ceiling: float) -> tuple[float, float, int, float]:
    """DL (bits per sample), L0, bits and quantised MSE at the coarsest precision within ``ceiling``."""
    x = torch.as_tensor(x_test)
    with torch.no_grad():
        z = sae.encode(x)
    precision = effective_precision(z, sae.decode, x_test, tolerance=ceiling)
    result = description_length(z, bits=precision.bits)
    return result.dl_bits, result.l0, int(precision.bits), precision.mse  # type: ignore[arg-type]


def run_splitting_experiment(
    settings: SplittingSettings, *, cache: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """Train and measure the unsplit and split SAEs at every point (see the module docstring).

    Returns one dict per point and code (``code`` ``"unsplit"`` or ``"split"``): the point
    ``p``, ``rho``; ``width`` and ``k``; ``kept`` (the start of the run kept, ``"intended"`` or
    ``"random"``); ``matched`` (intended directions the kept run recovered, cosine > 0.95),
    ``random_matched`` and ``random_val_mse`` (the best random start); the measured
    ``test_mse``, ``bits``, ``l0``, ``dl_bits`` (None where no precision meets the ceiling); and
    ``exact_dl_bits`` (``n_pairs`` times the single-pair formula, :func:`mdl_utils.toys.splitting_dl`).
    """

    def compute() -> list[dict[str, Any]]:
        n, n_pairs = settings.n_samples, settings.n_pairs
        results = []
        for p, rho in settings.points:
            data = correlated_pair_data(
                n, p, rho, n_pairs=n_pairs, d=settings.dim, noise_std=settings.noise_std, seed=settings.data_seed
            )
            n_train, n_val = int(0.6 * n), int(0.2 * n)
            x_train, x_val = data.x_ND[:n_train], data.x_ND[n_train : n_train + n_val]
            x_test = data.x_ND[n_train + n_val :]
            p_ab = joint_probability(p, rho)
            for split in (False, True):
                _, intended_FD = pair_codes(data, n_pairs, split=split)
                width = len(intended_FD)
                l0 = splitting_l0(p, p, p_ab)
                k = n_pairs * float(l0.split if split else l0.unsplit)
                runs: list[dict[str, Any]] = []
                for start, seed in [("intended", 0)] + [("random", s) for s in settings.random_seeds]:
                    init = dictionary_sae(intended_FD, k) if start == "intended" else None
                    sae, history = train_sae(settings.train_config(width, k, seed), x_train, x_val, init=init)
                    val_mse = min(e.val_mse for e in history.epochs)
                    matched = int((best_cosines(sae.W_dec_FD.detach().numpy(), intended_FD) > 0.95).sum())
                    runs.append(dict(start=start, seed=seed, sae=sae, val_mse=val_mse, matched=matched))
                best = min(runs, key=lambda r: r["val_mse"])
                best_random = min((r for r in runs if r["start"] == "random"), key=lambda r: r["val_mse"])
                try:
                    dl_bits, l0_measured, bits, test_mse = _measured_dl(best["sae"], x_test, settings.mse_ceiling)
                except ValueError:  # no precision brings the SAE within the ceiling
                    dl_bits = l0_measured = test_mse = math.nan
                    bits = None
                exact = splitting_dl(p, p, p_ab)
                results.append(
                    dict(
                        p=p, rho=rho, code="split" if split else "unsplit", width=width, k=k,
                        kept=best["start"], matched=best["matched"], random_matched=best_random["matched"],
                        random_val_mse=best_random["val_mse"], test_mse=_nan_to_none(test_mse), bits=bits,
                        dl_bits=_nan_to_none(dl_bits), l0=_nan_to_none(l0_measured),
                        exact_dl_bits=n_pairs * (exact.split if split else exact.unsplit),
                    )
                )  # fmt: skip
        return results

    return _cached(cache, "splitting", settings, compute)


# --------------------------------------------------------------------------------------------
# Chapter 5: a tree-structured SAE against a flat one
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HierarchySettings:
    """Chapter 5's experiment.

    Attributes:
        n_parents, children_per_parent, dim: the hierarchy and the data's dimension.
        p_parent, p_child_given_parent: how often a parent fires, and one of its children with it.
        noise_std: Gaussian noise per entry; n_samples: samples (60/20/20 train/validation/test).
        tree_seeds: seeds of the tree SAE's runs; the flat SAE uses the first ``flat_runs`` of them.
        max_epochs: training epochs at most; ceiling_factor: the equal-MSE ceiling as a multiple
            of the worse of the two unquantised test MSEs; data_seed: the seed of the data.
    """

    n_parents: int = 4
    children_per_parent: int = 3
    dim: int = 32
    p_parent: float = 0.3
    p_child_given_parent: float = 0.6
    noise_std: float = 0.01
    n_samples: int = 24_000
    tree_seeds: tuple[int, ...] = (0, 1, 2, 3)
    flat_runs: int = 2
    max_epochs: int = 60
    ceiling_factor: float = 1.25
    data_seed: int = 0


def run_hierarchy_experiment(
    settings: HierarchySettings, *, cache: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Train the tree and the flat SAE and measure both at one MSE ceiling (module docstring).

    Returns a dict: ``tree_seed``, ``flat_seed`` (the runs kept), ``n_tree_runs``, ``n_flat_runs``;
    ``tree_mse``, ``flat_mse`` (unquantised test MSE) and the ``ceiling``; for each SAE its
    precision (``*_bits``), quantised MSE (``*_mse_quantised``), ``*_l0`` and ``*_dl_bits``, and
    ``tree_flat_dl_bits`` (the tree SAE's latents counted flat); the best cosine of each true
    direction to each dictionary (``tree_cosines``, ``flat_cosines``, parents first).
    """
    s = settings

    def compute() -> dict[str, Any]:
        data = hierarchical_data(
            s.n_samples, n_parents=s.n_parents, children_per_parent=s.children_per_parent, d=s.dim,
            p_parent=s.p_parent, p_child_given_parent=s.p_child_given_parent, noise_std=s.noise_std,
            seed=s.data_seed,
        )  # fmt: skip
        n_train, n_val = int(0.6 * s.n_samples), int(0.2 * s.n_samples)
        x_train, x_val = data.x_ND[:n_train], data.x_ND[n_train : n_train + n_val]
        x_test = data.x_ND[n_train + n_val :]
        k_parents = s.n_parents * s.p_parent
        k_children = s.n_parents * s.p_parent * s.p_child_given_parent
        width = s.n_parents * (1 + s.children_per_parent)
        tree_runs: list[tuple[float, int, TreeSAE]] = []
        for seed in s.tree_seeds:
            untrained = TreeSAE(
                s.dim, s.n_parents, s.children_per_parent, k_parents=k_parents, k_children=k_children, seed=seed
            )
            sae, history = train_tree_sae(
                untrained, x_train, x_val, TreeTrainConfig(seed=seed, max_epochs=s.max_epochs)
            )
            tree_runs.append((min(history.val_mse), seed, sae))
        flat_runs: list[tuple[float, int, BatchTopKSAE]] = []
        for seed in s.tree_seeds[: s.flat_runs]:
            config = TrainConfig(
                width=width, k=k_parents + k_children, seed=seed, batch_size=256, max_epochs=s.max_epochs,
                patience=8, lr=3e-3, device="cpu", progress=False,
            )  # fmt: skip
            flat, flat_history = train_sae(config, x_train, x_val)
            flat_runs.append((min(e.val_mse for e in flat_history.epochs), seed, flat))
        _, tree_seed, tree_sae = min(tree_runs, key=lambda r: r[0])
        _, flat_seed, flat_sae = min(flat_runs, key=lambda r: r[0])
        x_test_t = torch.as_tensor(x_test)
        with torch.no_grad():
            z_tree = tree_sae.encode(x_test_t)
            z_flat = flat_sae.encode(x_test_t)
            tree_mse = float(((tree_sae.decode(z_tree) - x_test_t) ** 2).mean())
        flat_mse = evaluate_sae(flat_sae, x_test).mse
        ceiling = s.ceiling_factor * max(tree_mse, flat_mse)
        tree_precision = effective_precision(z_tree, tree_sae.decode, x_test, tolerance=ceiling)
        flat_precision = effective_precision(z_flat, flat_sae.decode, x_test, tolerance=ceiling)
        tree_dl = tree_description_length(z_tree, s.n_parents, s.children_per_parent, bits=tree_precision.bits)
        flat_dl = description_length(z_flat, bits=flat_precision.bits)
        return {
            "tree_seed": tree_seed, "flat_seed": flat_seed, "n_tree_runs": len(tree_runs),
            "n_flat_runs": len(flat_runs), "tree_mse": tree_mse, "flat_mse": flat_mse, "ceiling": ceiling,
            "tree_bits": tree_precision.bits, "tree_mse_quantised": tree_precision.mse, "tree_l0": tree_dl.l0,
            "tree_dl_bits": tree_dl.dl_bits, "tree_flat_dl_bits": tree_dl.flat_dl_bits,
            "flat_bits": flat_precision.bits, "flat_mse_quantised": flat_precision.mse, "flat_l0": flat_dl.l0,
            "flat_dl_bits": flat_dl.dl_bits,
            "tree_cosines": best_cosines(tree_sae.W_dec_FD.detach().numpy(), data.directions_FD).tolist(),
            "flat_cosines": best_cosines(flat_sae.W_dec_FD.detach().numpy(), data.directions_FD).tolist(),
        }  # fmt: skip

    return _cached(cache, "hierarchy", settings, compute)
