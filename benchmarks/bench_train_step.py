"""Time one BatchTopK training step against the matrix multiplications of the same step.

Shapes: batch 1024, d_in 784, k 16, widths 256 / 1024 / 4096, fp32 (issue 4's benchmark).

- *step*: exactly what :func:`mdl_utils.train.train_sae` runs per batch
  (:func:`mdl_utils.train.train_step`: encoder, batch top-k, sparse decoder, hand-written
  sparse gradients, decoder-norm projection, fused Adam, renormalisation).
- *dense matmuls*: the five matrix multiplications of a straightforward step on the same
  shapes: the encoder ``x @ W_enc.T``, the decoder ``acts @ W_dec``, and the backward
  products ``g @ W_dec.T``, ``acts.T @ g``, ``g_pre.T @ x``. The target is step / matmuls
  <= 1.3 at widths 1024 and 4096.
- *encoder matmul*: the one dense product the sparse step still does; step / encoder shows
  what everything else costs.
- optional: the same step with the encoder product under bf16 autocast, and a step with AuxK
  active (half the features dead), reported separately.

Timings are medians over interleaved repetitions (the machine is shared).

Run: ``.venv/bin/python benchmarks/bench_train_step.py [--reps 15] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from mdl_utils.sae import BatchTopKSAE
from mdl_utils.train import train_step

BATCH, D_IN, K = 1024, 784, 16.0
WIDTHS = (256, 1024, 4096)


def _batch() -> tuple[torch.Tensor, str]:
    if os.environ.get("MDL_MNIST_DIR"):
        from mdl_utils.data import load_mnist

        x = load_mnist("train")[0][:BATCH].copy()
        return torch.from_numpy(x), "MNIST digits"
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.uniform(0, 1, size=(BATCH, D_IN)).astype(np.float32)), "uniform random data"


def _time_interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    for fn in fns.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def bench_width(x_BD: torch.Tensor, width: int, reps: int) -> dict[str, float]:
    sae = BatchTopKSAE(D_IN, width, K, seed=0)
    with torch.no_grad():
        sae.b_dec_D.copy_(x_BD.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    state = {"bound": 0.0}

    def step(bf16: bool = False, dead=None) -> None:
        stats = train_step(
            sae, opt, x_BD, K, dead_F=dead, aux_k=D_IN // 2, aux_alpha=1 / 32 if dead is not None else 0.0,
            lower_bound=0.5 * state["bound"], bf16_encoder=bf16,
        )  # fmt: skip
        state["bound"] = stats.kth_value

    # Dense operands for the matmul baseline: a batch-top-k activation matrix of the right sparsity.
    g = torch.Generator().manual_seed(0)
    W_enc_FD = torch.randn(width, D_IN, generator=g)
    W_dec_FD = torch.randn(width, D_IN, generator=g)
    acts_BF = torch.relu(torch.randn(BATCH, width, generator=g))
    grad_BD = torch.randn(BATCH, D_IN, generator=g)

    def dense_matmuls() -> None:
        x_BD @ W_enc_FD.T
        acts_BF @ W_dec_FD
        grad_BD @ W_dec_FD.T
        acts_BF.T @ grad_BD
        acts_BF.T @ x_BD

    def encoder_matmul() -> None:
        x_BD @ W_enc_FD.T

    def dense_matmuls_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dense_matmuls()

    half_dead = torch.zeros(width, dtype=torch.bool)
    half_dead[width // 2 :] = True
    fns = {
        "step": step,
        "dense_matmuls": dense_matmuls,
        "encoder_matmul": encoder_matmul,
        "step_bf16": lambda: step(bf16=True),
        "dense_matmuls_bf16": dense_matmuls_bf16,
        "step_auxk_half_dead": lambda: step(dead=half_dead),
    }
    return _time_interleaved(fns, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x_BD, source = _batch()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"batch={BATCH} d_in={D_IN} k={K:g} fp32, {source}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.1f}; medians of {args.reps} reps"
    )
    header = (
        f"{'width':>6} {'step ms':>8} {'matmuls ms':>10} {'step/matmuls':>12} {'encoder ms':>10} "
        f"{'step/encoder':>12} | {'bf16 step':>9} {'bf16 mm':>8} {'bf16 ratio':>10} | {'AuxK step ms':>12}"
    )
    print(header)
    for width in WIDTHS:
        t = bench_width(x_BD, width, args.reps)
        ms = {name: 1000 * v for name, v in t.items()}
        print(
            f"{width:>6} {ms['step']:>8.2f} {ms['dense_matmuls']:>10.2f} {ms['step'] / ms['dense_matmuls']:>11.2f}x "
            f"{ms['encoder_matmul']:>10.2f} {ms['step'] / ms['encoder_matmul']:>11.2f}x | "
            f"{ms['step_bf16']:>9.2f} {ms['dense_matmuls_bf16']:>8.2f} "
            f"{ms['step_bf16'] / ms['dense_matmuls_bf16']:>9.2f}x | {ms['step_auxk_half_dead']:>12.2f}"
        )
    print("target: step/matmuls <= 1.3x at widths 1024 and 4096 (fp32)")


if __name__ == "__main__":
    main()
