"""Prepared run folders for the cockpit's tests: events.jsonl written by hand, no training (helpers, not tests)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

from kssm_core.config import stage as stage_of


def dead_pid() -> int:
    """A PID that certainly exited (a reaped child of ours)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_run(run_dir: Path, stage: int, steps: int, *, loss0=8.0, loss1=5.0, ppl=None, r=0.05, u=1.0,
              end: str | None = "completed", samples=("the cat sat on the mat",), stale_lock=False, checkpoints=(),
              extra: list[dict] | None = None, every: int = 5, t0: float = 1_700_000_000.0) -> Path:
    """A run folder with a plausible events.jsonl: linear loss, fixed R/u, evals at each fifth, a run_end."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ev: list[dict] = [{"event": "schema", "t": t0, "name": "kssm-events", "version": 1}]
    ev.append({"event": "run_start", "t": t0, "stage": stage, "max_steps": steps, "start_step": 0, "pid": 1,
               "host": socket.gethostname(), "device": "cpu", "resumed_from": None,
               "config": {"max_steps": steps, "save_interval": max(1, steps // 2), "log_interval": every,
                          "stage": stage},
               "model_config": {"u_min": 0.1, "u_max": 10.0}})
    t = t0
    for s in range(every, steps + 1, every):
        t += 1.0
        frac = s / steps
        loss = loss0 + (loss1 - loss0) * frac
        ev.append({"event": "step", "t": t, "step": s, "loss": loss, "ce": loss - 0.05, "reg": 0.05,
                   "R": r + 0.01 * math.sin(s), "u_val": u, "grad_norm": 2.0 + frac, "lr": 1e-3,
                   "tokens_per_s": 1000.0})
        ev.append({"event": "heartbeat", "t": t, "step": s, "phase": "train", "micro": 0, "accum": 1})
        if s % max(every, steps // 5) == 0:
            v = ppl if ppl is not None else math.exp(loss)
            ev.append({"event": "eval", "t": t, "step": s, "val_loss": math.log(v), "val_ce": math.log(v),
                       "val_ppl": v, "val_R": r, "val_u": u})
            for text in samples:
                ev.append({"event": "sample", "t": t, "step": s, "prompt": "The ", "text": text, "R": r})
    for step, name in checkpoints:
        ev.append({"event": "checkpoint", "t": t, "step": step, "path": name, "bytes": 1000, "best": False})
    ev += extra or []
    if end is not None:
        ev.append({"event": "run_end", "t": t + 1, "status": end, "reason": "max_steps reached" if end == "completed"
                   else "stopped by SIGTERM", "advice": "", "step": steps})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev))
    if stale_lock:
        (run_dir / "training.lock").write_text(json.dumps(
            {"pid": dead_pid(), "host": socket.gethostname(), "start_time": 1.0, "created": t0}))
    return run_dir


def stage_path(root: Path, n: int) -> Path:
    return root / stage_of(n).output_dir


def healthy(root: Path) -> None:
    write_run(stage_path(root, 1), 1, 100)
    write_run(stage_path(root, 2), 2, 500, loss0=7.0, loss1=5.5, ppl=400.0, r=0.2, u=1.5, every=10)


def warning(root: Path) -> None:
    write_run(stage_path(root, 1), 1, 100)
    write_run(stage_path(root, 2), 2, 500, loss0=7.0, loss1=6.8, ppl=1500.0, r=0.2, u=1.5, every=10)


def failed(root: Path) -> None:
    write_run(stage_path(root, 1), 1, 100)
    write_run(stage_path(root, 2), 2, 500, loss0=7.0, loss1=7.5, ppl=2600.0, r=0.0, u=1.5, every=10)


def crashed(root: Path) -> None:
    d = write_run(stage_path(root, 1), 1, 100, end=None, stale_lock=True)
    d2 = d  # trainer.out holds what the dead trainer printed last
    (d2 / "trainer.out").write_text("step 55 loss 6.2\nTraceback (most recent call last):\nRuntimeError: boom\n")
