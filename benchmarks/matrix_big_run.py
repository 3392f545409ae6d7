"""Benchmark the decision matrix (full_matrix + compute_alerts) on a history of 500,000 logged steps.

Two shapes of the same numbers: a staged run of ours (run_start names stage 5: every judged stage sees the
whole history, as before issue 13) and one long unnamed run (judged at each milestone: stages 1-4 on numpy
views of the steps up to 100 / 500 / 1500 / 5000, found by searchsorted; Stage 5 on the whole history).
Prints the median and best of 7 calls after a warm-up. Usage: python benchmarks/matrix_big_run.py [--steps N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from array import array

import numpy as np

from kssm_core.runbook.alerts import compute_alerts
from kssm_core.runbook.matrix import full_matrix, infer_stage
from kssm_core.runfolder.history import RunHistory


def build(n: int, stage: int | None) -> RunHistory:
    h = RunHistory()
    every = 20
    h.apply({"event": "run_start", "t": 0.0, "config": {"max_steps": n * every, "stage": stage},
             "max_steps": n * every, "stage": stage, "start_step": 0})
    rng = np.random.default_rng(0)
    s = h.steps
    s.steps.extend(array("q", (np.arange(1, n + 1) * every).tolist()))
    for f in s.fields:
        s.cols[f].extend(array("d", (rng.random(n) + 0.1).tolist()))
    for k in range(500, n * every + 1, 500):
        h.apply({"event": "eval", "t": 1.0, "step": k, "val_ppl": 300.0, "val_R": 0.3, "val_loss": 5.0, "val_ce": 5.0})
    return h


def timed(fn, repeat: int = 7) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500_000, help="logged steps (readings) in the history")
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine: figures vary)")
    for label, stage in (("staged run (stage 5)", 5), ("one long unnamed run", None)):
        h = build(a.steps, stage)
        st = infer_stage(h)
        med, best = timed(lambda h=h, st=st: full_matrix(h, st))
        amed, abest = timed(lambda h=h: compute_alerts(h, now=1e12))
        print(f"{label}: {a.steps:,} steps, stage {st}: full_matrix median {med * 1e3:.1f} ms (best {best * 1e3:.1f}); "
              f"compute_alerts median {amed * 1e3:.1f} ms (best {abest * 1e3:.1f})")


if __name__ == "__main__":
    main()
