"""Run suites: seed, time, report progress, write RUN_DIR/eval/<suite>.json, and for `all` the
eval/summary.json verdict ("all tests must pass") that the runbook's Stage 5 row reads."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from . import agency, benchmark, clamp_sweep, r_correlation, robustness, samples
from .context import EvalContext
from .progress import Progress
from .result import FAIL, PASS, SuiteResult, worst, write_json

SUITES = {m.NAME: m for m in (agency, r_correlation, robustness, clamp_sweep, samples, benchmark)}
"""Suite name -> module with run(ctx, result); the order is the runbook's Final Validation Checklist."""


def _fresh_result(name: str, ctx: EvalContext) -> SuiteResult:
    return SuiteResult(name, model=str(ctx.loaded.path), step=ctx.loaded.step, seed=ctx.opts.seed)


def run_suite(name: str, ctx: EvalContext) -> SuiteResult:
    """Run one suite with the global RNG seeded (and restored afterwards); write its JSON when ctx.eval_dir is set.

    An exception inside a suite becomes a failed criterion with its one-line message, so `all` carries on
    (set KSSM_DEBUG=1 to get the traceback instead).
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)} or all")
    result = _fresh_result(name, ctx)
    ctx.progress = Progress(ctx.eval_dir, name)
    start = time.perf_counter()
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(ctx.opts.seed)
            SUITES[name].run(ctx, result)
    except Exception as exc:  # noqa: BLE001 - one suite's crash must not hide the others' results
        if os.environ.get("KSSM_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        result = _fresh_result(name, ctx)
        result.add("suite ran", False, "completes", FAIL, f"{type(exc).__name__}: {first}")
    result.elapsed_s = time.perf_counter() - start
    if ctx.eval_dir is not None:
        write_json(ctx.eval_dir / f"{name}.json", result.to_dict())
    ctx.progress.end(result.verdict, result.elapsed_s)
    return result


def summarise(results: dict[str, SuiteResult], ctx: EvalContext, elapsed_s: float) -> dict[str, Any]:
    verdicts = {name: r.verdict for name, r in results.items()}
    overall = worst(verdicts.values())
    missed = [f"{name}: {v}" for name, v in verdicts.items() if v != PASS]
    message = ("all tests must pass: they do; training successful" if overall == PASS else
               f"all tests must pass: {len(missed)} of {len(verdicts)} did not ({', '.join(missed)})")
    return {"suites": verdicts, "verdict": overall, "message": message, "model": str(ctx.loaded.path),
            "step": ctx.loaded.step, "seed": ctx.opts.seed,
            "failed_criteria": [f"{name}: {c.name} ({c.verdict})" for name, r in results.items()
                                for c in r.criteria if c.verdict != PASS],
            "elapsed_s": round(elapsed_s, 3)}


def run_all(ctx: EvalContext) -> tuple[dict[str, Any], dict[str, SuiteResult]]:
    """Every suite in order, then eval/summary.json. Returns (summary, results)."""
    start = time.perf_counter()
    results = {name: run_suite(name, ctx) for name in SUITES}
    summary = summarise(results, ctx, time.perf_counter() - start)
    if ctx.eval_dir is not None:
        write_json(ctx.eval_dir / "summary.json", summary)
    return summary, results
