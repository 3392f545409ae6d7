"""Synthetic run folders for the cockpit benchmarks (a long run's events.jsonl written quickly)."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path


def write_long_run(run_dir: Path, events: int, stage: int = 5, end: bool = True) -> int:
    """A run with about `events` lines: per step a step event and a heartbeat, plus evals, samples, checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = max(10, events // 2)
    t = 1_700_000_000.0
    n = 0
    with open(run_dir / "events.jsonl", "w") as fh:
        def put(obj: dict) -> None:
            nonlocal n
            fh.write(json.dumps(obj, separators=(",", ":")) + "\n")
            n += 1

        put({"event": "schema", "t": t, "name": "kssm-events", "version": 1})
        put({"event": "run_start", "t": t, "stage": stage, "max_steps": steps, "start_step": 0, "pid": 1,
             "host": socket.gethostname(), "device": "cpu", "resumed_from": None,
             "config": {"max_steps": steps, "save_interval": 1000, "log_interval": 1, "stage": stage},
             "model_config": {"u_min": 0.1, "u_max": 10.0}})
        for s in range(1, steps + 1):
            if n >= events - 2:
                break
            t += 0.5
            loss = 3.0 + 5.0 * math.exp(-s / (steps / 5))
            put({"event": "step", "t": t, "step": s, "loss": loss, "ce": loss - 0.01, "reg": 0.05,
                 "R": 0.3 + 0.2 * math.sin(s / 500), "u_val": 1.2, "grad_norm": 2.5, "lr": 0.001,
                 "tokens_per_s": 12000.0})
            put({"event": "heartbeat", "t": t, "step": s, "phase": "train", "micro": 0, "accum": 1})
            if s % 500 == 0:
                put({"event": "eval", "t": t, "step": s, "val_loss": loss, "val_ce": loss, "val_ppl": math.exp(loss),
                     "val_R": 0.3, "val_u": 1.2})
                put({"event": "sample", "t": t, "step": s, "prompt": "The ", "text": "the river ran on and on", "R": 0.3})
            if s % 1000 == 0:
                put({"event": "checkpoint", "t": t, "step": s, "path": f"checkpoint_{s}.pt", "bytes": 180_000_000,
                     "best": False})
        if end:
            put({"event": "run_end", "t": t, "status": "completed", "reason": "max_steps reached", "advice": "",
                 "step": steps})
    return n
