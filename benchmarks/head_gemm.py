"""The fused head's GEMM alone, through oneDNN (kssm_core.model.fused_ce's fp32 CPU path) and torch.mm (its
MKL fallback): GFLOP/s of logits = h @ W.T at a [T, D] x [D, V] shape, default the medium preset's
4096 tokens, D 384 and the cl100k vocabulary (100,277).

    .venv/bin/python benchmarks/head_gemm.py                                   # 4096 x 384 x 100277
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 .venv/bin/python benchmarks/head_gemm.py
    .venv/bin/python benchmarks/head_gemm.py --quick                            # 1024 x 384 x 16384

Prints the machine (lscpu's model name), the ISA caps in the environment, threads and load, and a
markdown table of median wall ms and GFLOP/s per path (interleaved repeats after a warm-up round).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096,384,100277", help="T,D,V")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="1024 x 384 x 16384, 1 repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.shape, args.repeats = "1024,384,16384", 1

    import torch

    from kssm_core.model import fused_ce

    if args.threads:
        torch.set_num_threads(args.threads)
    n_tok, dim, vocab = (int(x) for x in args.shape.split(","))
    caps = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                     "MKL_ENABLE_INSTRUCTIONS") if k in os.environ) or "none"
    load = os.getloadavg()
    print(f"Machine: {model_name()}, {os.cpu_count()} CPUs; ISA caps: {caps}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    torch.manual_seed(0)
    h = torch.randn(n_tok, dim)
    w = 0.02 * torch.randn(vocab, dim)
    paths = {"torch.mm (MKL)": fused_ce._mm_nt}
    onednn = fused_ce._probe_onednn()
    if onednn is not None:
        paths["oneDNN"] = onednn
    flops = 2.0 * n_tok * dim * vocab
    wall: dict[str, list[float]] = {k: [] for k in paths}
    for rep in range(args.repeats + 1):
        for key, fn in paths.items():  # interleaved, so bursts of outside load hit every path
            t0 = time.perf_counter()
            out = fn(h, w)
            elapsed = time.perf_counter() - t0
            del out
            if rep:  # the first round warms up
                wall[key].append(elapsed)
    print(f"| [{n_tok}, {dim}] x [{dim}, {vocab}] | wall ms | GFLOP/s |")
    print("|---|---:|---:|")
    for key in paths:
        med = statistics.median(wall[key])
        print(f"| {key} | {med * 1e3:.1f} | {flops / med / 1e9:.1f} |")
    load = os.getloadavg()
    print(f"\nload after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
