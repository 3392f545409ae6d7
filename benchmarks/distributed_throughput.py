"""Whole-run throughput of `kssm train --nproc N` for several N (and precisions), from the run's own events.

Each case trains a fresh run folder in a temp directory for --steps steps and reads `tokens_per_s` from its
`step` events (median over the steps after the first --skip, which include start-up and compilation),
plus `gpu_mem_bytes` on CUDA. The global batch is the same for every N (that is the point of --nproc):
tokens/s should grow with N as long as each process has its own device.

    .venv/bin/python benchmarks/distributed_throughput.py                          # tiny, CPU, N = 1 2
    .venv/bin/python benchmarks/distributed_throughput.py --preset medium --device cuda --nproc 1 \\
        --precision fp32 bf16 --steps 30                                          # one GPU, fp32 vs bf16

Prints a markdown table and the machine (figures compare only within one run on one machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_case(tmp: Path, nproc: int, precision: str, args) -> dict:
    out = tmp / f"run-n{nproc}-{precision}"
    cmd = [sys.executable, "-m", "kssm_core", "train", "--nproc", str(nproc), "--output-dir", str(out),
           "--preset", args.preset, "--device", args.device, "--precision", precision, "--max-steps", str(args.steps),
           "--log-interval", "1", "--eval-interval", "100000", "--save-interval", "100000", "--quiet",
           "--data-dir", str(args.data_dir or tmp / "data")]
    for flag in ("seq_len", "batch_size", "grad_accum", "vocab_size"):
        if getattr(args, flag):
            cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    evs = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    steps = [e for e in evs if e["event"] == "step"][args.skip:]
    start = next(e for e in evs if e["event"] == "run_start")
    return {
        "tokens_per_s": statistics.median(e["tokens_per_s"] for e in steps) if steps else float("nan"),
        "gpu_mem_gb": max((e.get("gpu_mem_bytes") or 0) for e in steps) / 1e9 if steps else 0.0,
        "split": f"{start['micro_batch']} x {start['grad_accum_per_rank']} x {start['world_size']}",
        "precision": start.get("precision"),
        "wall_s": wall,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--precision", nargs="+", default=["auto"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip", type=int, default=3, help="step events to ignore at the start (warm-up)")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--data-dir", help="token cache to reuse (default: a fresh one in the temp folder)")
    args = p.parse_args()
    if args.grad_accum is None and args.preset == "tiny":
        args.grad_accum = 2  # tiny's preset accumulation is 1: give 2 processes something to split
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision:
            for n in args.nproc:
                rows.append((n, precision, run_case(Path(tmp), n, precision, args)))
    load1 = os.getloadavg()[0]
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, GPU {gpu}, torch {torch.__version__}, "
          f"load average {load0:.2f} -> {load1:.2f}")
    print(f"preset {args.preset}, device {args.device}, {args.steps} steps (median tokens/s after {args.skip})\n")
    print("| nproc | precision | micro x accum x ranks | tokens/s | peak GPU GB | wall s |")
    print("|---|---|---|---|---|---|")
    for n, precision, r in rows:
        if "error" in r:
            print(f"| {n} | {precision} | failed: {r['error'][0][:80]} | | | |")
        else:
            print(f"| {n} | {r['precision']} | {r['split']} | {r['tokens_per_s']:,.0f} | {r['gpu_mem_gb']:.2f} | {r['wall_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
