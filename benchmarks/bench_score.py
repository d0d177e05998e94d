"""Benchmark: `python -m mdl_utils score` on a synthetic SAELens TopK SAE and float16 activations.

Prints the wall time, the passes over the activations, and samples per second per pass, so
the README's cost figures can be re-measured:

    python benchmarks/bench_score.py [--n 200000] [--d 512] [--width 4096] [--k 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mdl_utils.scoring import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sae"
        folder.mkdir()
        W_dec = rng.normal(size=(args.width, args.d)).astype(np.float32)
        W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
        save_file({"W_enc": torch.from_numpy(W_dec.T.copy()), "W_dec": torch.from_numpy(W_dec),
                   "b_enc": torch.zeros(args.width), "b_dec": torch.zeros(args.d)},
                  str(folder / "sae_weights.safetensors"))
        (folder / "cfg.json").write_text(json.dumps({"d_in": args.d, "d_sae": args.width, "architecture": "topk",
                                                     "k": args.k, "metadata": {"sae_lens_version": "6.0.0"}}))
        # Activations: sparse non-negative combinations of the decoder rows plus noise.
        acts = Path(tmp) / "acts.npy"
        out = np.lib.format.open_memmap(acts, mode="w+", dtype=np.float16, shape=(args.n, args.d))
        for start in range(0, args.n, 10_000):
            m = min(10_000, args.n - start)
            idx = rng.integers(0, args.width, size=(m, args.k))
            val = rng.exponential(size=(m, args.k)).astype(np.float32)
            x = np.einsum("mk,mkd->md", val, W_dec[idx]) + 0.05 * rng.normal(size=(m, args.d))
            out[start:start + m] = x
        out.flush()
        del out
        t0 = time.perf_counter()
        result = score(folder, acts, tolerance="increase=0.01", chunk_size=args.chunk_size)
        wall = time.perf_counter() - t0
    print(f"{args.n:,} x {args.d} float16 activations, TopK SAE width {args.width}, k {args.k}, "
          f"{args.threads} torch threads")
    print(f"wall time {wall:.1f} s; {result.passes} passes; "
          f"{args.n * result.passes / wall:,.0f} samples per second per pass")
    print(result.report())


if __name__ == "__main__":
    main()
