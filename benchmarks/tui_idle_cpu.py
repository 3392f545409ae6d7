"""Idle CPU of the cockpit while it tails a live run (target: under 3% of one core).

A stand-in trainer appends a step and a heartbeat every second (an eval every 10 s) to a run folder
and holds its lock; kssm-tui runs in a real terminal (a private tmux server, 100x34) and its process
CPU time (all threads) is measured over the window. Without tmux the App runs headless instead.
Usage: python benchmarks/tui_idle_cpu.py [--seconds N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

WRITER = r"""
import json, math, os, socket, sys, time
import psutil
run = sys.argv[1]
os.makedirs(run, exist_ok=True)
me = os.getpid()
with open(os.path.join(run, "training.lock"), "w") as fh:
    json.dump({"pid": me, "host": socket.gethostname(), "start_time": psutil.Process(me).create_time(),
               "created": time.time()}, fh)
ev = open(os.path.join(run, "events.jsonl"), "a", buffering=1)
def put(o):
    o["t"] = time.time()
    ev.write(json.dumps(o) + "\n")
put({"event": "schema", "name": "kssm-events", "version": 1})
put({"event": "run_start", "stage": 2, "max_steps": 500, "start_step": 0, "pid": me, "device": "cpu",
     "config": {"max_steps": 500, "save_interval": 250, "log_interval": 1}, "model_config": {}})
end = time.time() + float(sys.argv[2])
s = 0
while time.time() < end:
    s += 1
    loss = 5 + 3 * math.exp(-s / 100)
    put({"event": "step", "step": s, "loss": loss, "ce": loss, "reg": 0.05, "R": 0.2 + 0.05 * math.sin(s / 7),
         "u_val": 1.1, "grad_norm": 2.0, "lr": 1e-3, "tokens_per_s": 5000.0})
    put({"event": "heartbeat", "step": s, "phase": "train", "micro": 0, "accum": 1})
    if s % 10 == 0:
        put({"event": "eval", "step": s, "val_loss": loss, "val_ce": loss, "val_ppl": math.exp(loss), "val_R": 0.2,
             "val_u": 1.1})
    time.sleep(1.0)
os.unlink(os.path.join(run, "training.lock"))
"""

HEADLESS = r"""
import asyncio, sys
from kssm_tui.app import KssmApp
async def main():
    app = KssmApp(sys.argv[1])
    async with app.run_test(size=(100, 34)) as pilot:
        await asyncio.sleep(float(sys.argv[2]))
asyncio.run(main())
"""


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="a 10 s window (for make bench)")
    args = ap.parse_args()
    window = 10.0 if args.quick else args.seconds
    warmup = 6.0
    tui = Path(sys.executable).parent / "kssm-tui"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        env = {**os.environ, "KSSM_CACHE_DIR": str(Path(tmp) / "cache")}
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root / "stage2"), str(window + warmup + 10)])
        sock = f"kssm-bench-{os.getpid()}"
        use_tmux = shutil.which("tmux") is not None and tui.exists()
        try:
            time.sleep(1.0)
            if use_tmux:
                subprocess.run(["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "34",
                                "-c", tmp, f"exec {tui} results"], check=True, env={**env, "TERM": "xterm-256color"})
                pane_pid = int(subprocess.run(["tmux", "-L", sock, "list-panes", "-F", "#{pane_pid}"],
                                              capture_output=True, text=True).stdout.split()[0])
                proc = psutil.Process(pane_pid)
                how = "kssm-tui in tmux 100x34"
            else:
                child = subprocess.Popen([sys.executable, "-c", HEADLESS, str(root), str(window + warmup + 5)], env=env)
                proc = psutil.Process(child.pid)
                how = "headless App (no tmux)"
            time.sleep(warmup)  # startup (imports, first read) is not idle time
            c0, t0 = cpu_seconds(proc), time.monotonic()
            time.sleep(window)
            used, elapsed = cpu_seconds(proc) - c0, time.monotonic() - t0
            pct = 100 * used / elapsed
            print(f"{how}: {used:.2f} CPU s over {elapsed:.1f} s while tailing a live run = {pct:.1f}% of one core "
                  f"(target < 3%); RSS {proc.memory_info().rss / 2**20:.0f} MiB")
            print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine)")
        finally:
            if use_tmux:
                subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
            writer.kill()
            writer.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
