"""The tied head + cross-entropy alone, forward + backward: plain F.cross_entropy against the fused,
chunked kssm_core.model.fused_ce at several chunk sizes (and at the default chunk with MKL instead of oneDNN
GEMMs), at each preset's (tokens, D, V). Picks CHUNK_CPU.

    .venv/bin/python benchmarks/fused_ce_chunks.py                       # tiny, small, medium
    .venv/bin/python benchmarks/fused_ce_chunks.py --threads 1 --chunks 256,1024,4096

Prints a markdown table of median wall ms (and CPU ms) per call, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small,medium")
    ap.add_argument("--chunks", default="128,256,512,1024,2048,4096")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from kssm_core.config import PRESETS
    from kssm_core.model.kssm import fused_ce
    from kssm_core.model.fused_ce import linear_cross_entropy

    if args.threads:
        torch.set_num_threads(args.threads)
    chunks = [int(c) for c in args.chunks.split(",")]
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| preset | T x D x V | path | wall ms | CPU ms | vs plain (wall) |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.presets.split(","):
        p = PRESETS[name]
        n_tok, dim, vocab = p.batch_size * p.seq_len, p.d_model, p.vocab_size
        torch.manual_seed(0)
        h0 = torch.randn(n_tok, dim)
        w = (0.02 * torch.randn(vocab, dim)).requires_grad_()
        y = torch.randint(0, vocab, (n_tok,))

        def plain():
            return F.cross_entropy(h @ w.t(), y)

        def fused_mkl(c):  # the same, with torch's BLAS instead of oneDNN (the fallback path)
            was, fused_ce.ONEDNN = fused_ce.ONEDNN, False
            try:
                return linear_cross_entropy(h, w, y, chunk_size=c)
            finally:
                fused_ce.ONEDNN = was

        paths = {"plain": plain}
        for c in chunks:
            if c <= n_tok:
                paths[f"fused {c}"] = (lambda c=c: linear_cross_entropy(h, w, y, chunk_size=c))
        paths[f"fused {fused_ce.CHUNK_CPU}, MKL GEMMs"] = lambda: fused_mkl(fused_ce.CHUNK_CPU)
        wall: dict[str, list[float]] = {k: [] for k in paths}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        for rep in range(args.repeats + 1):
            for key, fn in paths.items():  # interleaved, so bursts of outside load hit every path
                h = h0.clone().requires_grad_()
                w.grad = None
                t0, c0 = time.perf_counter(), time.process_time()
                fn().backward()
                if rep:  # the first round warms up
                    wall[key].append(time.perf_counter() - t0)
                    cpu[key].append(time.process_time() - c0)
        base = statistics.median(wall["plain"])
        for key in paths:
            mw, mc = statistics.median(wall[key]), statistics.median(cpu[key])
            print(f"| {name} | {n_tok} x {dim} x {vocab} | {key} | {mw * 1e3:.1f} | {mc * 1e3:.1f} | {base / mw:.2f}x |")
    load = os.getloadavg()
    print(f"\nload after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
