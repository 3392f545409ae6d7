"""The cockpit's event-log lines: one short, plain-text line per event worth reading (not steps or heartbeats)."""

from __future__ import annotations

import math
from pathlib import Path

from kssm_core.runfolder.history import as_number, as_step

from .safe_text import clean


def _clean(text) -> str:
    return clean(str(text))


def _fmt(v, spec: str = ".4g") -> str:
    """A logged number for a person; '-' for a missing, NaN or malformed one (a log line may hold anything)."""
    n, ok = as_number(v)
    return "-" if not ok or math.isnan(n) else format(n, spec)


def entry_for(r: dict) -> tuple[str, str] | None:
    """(kind, line) for an eval, sample, checkpoint, warning, run_start or run_end record; None otherwise."""
    kind = r.get("event")
    step = as_step(r.get("step"))
    if kind == "eval":
        return "eval", f"step {step}: val loss {_fmt(r.get('val_loss'))}, PPL {_fmt(r.get('val_ppl'), '.1f')}, R {_fmt(r.get('val_R'), '.3f')}"
    if kind == "sample":
        return "sample", f"step {step}: {_clean(r.get('text', ''))}"
    if kind == "checkpoint":
        return "checkpoint", f"step {step}: saved {_clean(r.get('path', ''))}"
    if kind == "warning":
        return "warning", f"{_clean(r.get('code', ''))}: {_clean(r.get('message', ''))}"
    if kind == "run_start" and r.get("legacy"):  # a reference-trainer log: no device, often no target
        target = as_step(r.get("max_steps"))
        return "run_start", "reference-trainer log" + (f": {target} steps planned" if target else "")
    if kind == "run_start":
        src = r.get("resumed_from")
        how = f"resumed from {_clean(Path(str(src)).name)}" if src else "started"
        return "run_start", f"{how} at step {as_step(r.get('start_step')) or 0} of {as_step(r.get('max_steps'))} on {_clean(r.get('device', '?'))}"
    if kind == "run_end":
        at = f" at step {step}" if step is not None else ""
        return "run_end", f"{_clean(r.get('status', '?'))}{at}: {_clean(r.get('reason', ''))}"
    return None


def entries_for(records: list[dict]) -> list[tuple[str, str]]:
    return [e for e in map(entry_for, records) if e is not None]
