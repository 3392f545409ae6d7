"""Write a synthetic run folder whose events.jsonl holds N events (default 1,000,000): ~100k step events
(one per 10 events), the rest heartbeats, an eval + sample every 500 steps, a checkpoint every 1000.

Usage: python benchmarks/make_big_run.py RUN_DIR [--events N] [--append N] [--quick]
--append adds N more events after the existing ones (to measure an incremental second read).
--quick (used by `make bench`): 10,000 events into a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path


def lines(n_events: int, start_step: int = 0, t0: float | None = None, with_header: bool = True):
    rnd = random.Random(1234 + start_step)
    t = t0 if t0 is not None else time.time() - n_events * 0.01
    dumps = lambda o: json.dumps(o, separators=(",", ":"))  # noqa: E731
    emitted = 0
    if with_header:
        yield dumps({"event": "schema", "t": t, "name": "kssm-events", "version": 1})
        yield dumps({"event": "run_start", "t": t, "config": {"max_steps": 200000, "learning_rate": 0.001,
                     "lambda_reg": 0.01, "seed": 1337, "save_interval": 1000, "keep_checkpoints": 3,
                     "heartbeat_seconds": 5.0, "output_dir": "results/big", "stage": None},
                     "max_steps": 200000, "stage": None, "start_step": 0, "pid": 999999, "host": "bench"})
        emitted = 2
    step = start_step
    while emitted < n_events:
        t += 0.01
        if emitted % 10 == 0:
            step += 1
            x = step / 10000
            yield dumps({"event": "step", "t": round(t, 3), "step": step, "loss": 8 * math.exp(-x) + 2 + rnd.random() * 0.1,
                         "ce": 8 * math.exp(-x) + 2, "reg": 0.3 + rnd.random() * 0.01, "R": min(0.99, 0.02 + 0.004 * x),
                         "u_val": 0.1 + rnd.random() * 0.02, "grad_norm": 1 + rnd.random(), "lr": 0.001,
                         "tokens_per_s": 12345.6})
            if step % 500 == 0:
                yield dumps({"event": "eval", "t": round(t, 3), "step": step, "val_loss": 3.0, "val_ce": 3.0,
                             "val_ppl": 20.1, "val_R": 0.31, "val_u": 0.11})
                yield dumps({"event": "sample", "t": round(t, 3), "step": step, "prompt": "The ",
                             "text": "The question of the nature of the mind is one that we may answer", "R": 0.3})
                emitted += 2
            if step % 1000 == 0:
                yield dumps({"event": "checkpoint", "t": round(t, 3), "step": step, "path": f"checkpoint_{step}.pt",
                             "bytes": 180_000_000, "best": False})
                emitted += 1
        else:
            yield dumps({"event": "heartbeat", "t": round(t, 3), "step": step, "phase": "train", "micro": emitted % 8,
                         "accum": 8})
        emitted += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--append", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.run_dir is None:
        if not a.quick:
            ap.error("give RUN_DIR (or --quick)")
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="kssm-big-"))
        try:
            path = tmp / "events.jsonl"
            with open(path, "w") as fh:
                fh.writelines(s + "\n" for s in lines(10_000))
            print(f"{path}: {path.stat().st_size / 1e6:.1f} MB for 10,000 events (quick check of the generator)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    d = Path(a.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "events.jsonl"
    if a.append:
        last_step = 0
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 100_000))
            for raw in fh.read().splitlines():
                try:
                    last_step = max(last_step, int(json.loads(raw).get("step") or 0))
                except (ValueError, AttributeError):
                    pass
        with open(path, "a") as fh:
            fh.writelines(s + "\n" for s in lines(a.append, last_step, time.time() - a.append * 0.01, with_header=False))
    else:
        with open(path, "w") as fh:
            fh.writelines(s + "\n" for s in lines(a.events))
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
