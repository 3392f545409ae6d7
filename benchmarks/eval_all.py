"""Time `kssm eval all` on a tiny-preset model (target: under 60 s on 2 CPU cores).

Trains a tiny model (default preset shape: context 128, batch 16) for a few steps into a temporary
folder, then runs `python -m kssm_core eval all` as a child process and prints the
wall-clock time and each suite's own time from its JSON. Usage:
    .venv/bin/python benchmarks/eval_all.py [--steps 30] [--threads N] [--keep DIR]
Without --threads, `kssm eval` picks its own thread count (1 for a model this small).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 60.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps of the tiny model (default 30)")
    ap.add_argument("--threads", type=int, help="passed to kssm eval --threads (default: its own choice)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    ap.add_argument("eval_args", nargs="*", help="extra flags for kssm eval, after --")
    args = ap.parse_args()
    env = dict(os.environ)
    threads = ["--threads", str(args.threads)] if args.threads else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        run = root / "run"
        t0 = time.perf_counter()
        train = subprocess.run([sys.executable, "-m", "kssm_core", "train", "--preset", "tiny", "--device", "cpu",
                                "--max-steps", str(args.steps), "--output-dir", str(run),
                                "--data-dir", str(root / "cache"), "--quiet"],
                               env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True)
        if train.returncode != 0:
            print(f"training the tiny model failed ({train.returncode}):\n{train.stderr[-2000:]}", file=sys.stderr)
            return 1
        print(f"trained a tiny model for {args.steps} steps in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        ev = subprocess.run([sys.executable, "-m", "kssm_core", "eval", "all", "--model", str(run / "best_model.pt"),
                             "--device", "cpu", *threads, *args.eval_args], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if ev.returncode not in (0, 1):
            print(f"kssm eval all failed ({ev.returncode}):\n{ev.stderr[-2000:]}", file=sys.stderr)
            return 1
        summary = json.loads((run / "eval" / "summary.json").read_text())
        print(f"kssm eval all: {wall:.1f} s wall clock on {os.cpu_count()} CPU cores, "
              f"threads {args.threads or 'kssm default'} "
              f"(target < {TARGET_S:.0f} s: {'met' if wall < TARGET_S else 'MISSED'})")
        for name, verdict in summary["suites"].items():
            d = json.loads((run / "eval" / f"{name}.json").read_text())
            print(f"  {name:<14} {d['elapsed_s']:6.2f} s  {verdict}")
        print(f"verdict of the tiny model: {summary['verdict']} ({summary['message']})")
        print(f"load average while measuring: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if wall < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
