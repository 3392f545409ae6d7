"""Run suites: seed, time, report progress, write RUN_DIR/eval/<suite>.json and the eval/summary.json
verdict ("all tests must pass"). The summary is rewritten after every suite, from the suite files of the
same model and step, so a suite re-run alone shows up in it; suites not yet run for that model make it
"incomplete"."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from kssm_core.evals import agency
from kssm_core.evals import benchmark
from kssm_core.evals import clamp_sweep
from kssm_core.evals import r_correlation
from kssm_core.evals import robustness
from kssm_core.evals import samples
from kssm_core.evals.context import EvalContext
from kssm_core.evals.progress import Progress
from kssm_core.evals.result import FAIL, PASS, SuiteResult, clean_json, worst, write_json

INCOMPLETE = "incomplete"

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


def summarise(results: dict[str, dict], ctx: EvalContext, elapsed_s: float | None = None) -> dict[str, Any]:
    """The summary of suite results (their to_dict() form), in SUITES order; missing suites are named."""
    verdicts = {name: results[name]["verdict"] for name in SUITES if name in results}
    missing = [name for name in SUITES if name not in results]
    missed = [f"{name}: {v}" for name, v in verdicts.items() if v != PASS]
    if missing:
        overall = INCOMPLETE
        message = (f"all tests must pass: {len(missing)} of {len(SUITES)} not run yet for this model "
                   f"({', '.join(missing)}; run `kssm eval all`)" + (f"; did not pass: {', '.join(missed)}" if missed else ""))
    else:
        overall = worst(verdicts.values())
        message = ("all tests must pass: they do; training successful" if overall == PASS else
                   f"all tests must pass: {len(missed)} of {len(verdicts)} did not ({', '.join(missed)})")
    out = {"suites": verdicts, "verdict": overall, "message": message, "missing": missing,
           "model": str(ctx.loaded.path), "step": ctx.loaded.step, "seed": ctx.opts.seed,
           "failed_criteria": [f"{name}: {c.get('name')} ({c.get('verdict')})" for name, r in results.items()
                               for c in r.get("criteria", []) if c.get("verdict") != PASS]}
    if elapsed_s is not None:
        out["elapsed_s"] = round(elapsed_s, 3)
    return out


def results_on_disk(ctx: EvalContext) -> dict[str, dict]:
    """eval/<suite>.json files written for this very model, step and seed (others are stale for the summary)."""
    out: dict[str, dict] = {}
    if ctx.eval_dir is None:
        return out
    want = (str(ctx.loaded.path), ctx.loaded.step, ctx.opts.seed)
    for name in SUITES:
        try:
            d = json.loads(Path(ctx.eval_dir / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if isinstance(d, dict) and (d.get("model"), d.get("step"), d.get("seed")) == want and "verdict" in d:
            out[name] = d
    return out


def refresh_summary(ctx: EvalContext) -> dict[str, Any] | None:
    """Rewrite eval/summary.json from the suite files on disk (after a single suite ran)."""
    if ctx.eval_dir is None:
        return None
    summary = summarise(results_on_disk(ctx), ctx)
    write_json(ctx.eval_dir / "summary.json", summary)
    return summary


def run_all(ctx: EvalContext) -> tuple[dict[str, Any], dict[str, SuiteResult]]:
    """Every suite in order, then eval/summary.json. Returns (summary, results)."""
    start = time.perf_counter()
    results = {name: run_suite(name, ctx) for name in SUITES}
    summary = summarise({n: clean_json(r.to_dict()) for n, r in results.items()}, ctx, time.perf_counter() - start)
    if ctx.eval_dir is not None:
        write_json(ctx.eval_dir / "summary.json", summary)
    return summary, results
