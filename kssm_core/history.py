"""A run's history folded from its events: columnar metric series plus the latest of everything else.

Fold events in with `apply()` as they arrive (the cockpit's tailer and `kssm status` share this).
When steps go back (a resume from an earlier checkpoint) the orphaned values after the resume
point are dropped and the resumed ones take their place. Memory is bounded: series are
compact arrays of floats, samples and warnings keep only the newest few.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any

STEP_FIELDS = ("loss", "ce", "reg", "R", "u_val", "grad_norm", "lr", "tokens_per_s", "gpu_mem_bytes")
EVAL_FIELDS = ("val_loss", "val_ce", "val_ppl", "val_R", "val_u")
NAN = float("nan")


def as_number(value: Any) -> tuple[float, bool]:
    """(value as float, was it well-formed). Numeric strings are accepted but flagged; the rest is NaN."""
    if isinstance(value, bool):
        return NAN, False
    if isinstance(value, (int, float)):
        return float(value), True
    if value is None:
        return NAN, True  # the writer's spelling of NaN / inf
    if isinstance(value, str):
        try:
            return float(value), False
        except ValueError:
            return NAN, False
    return NAN, False


def as_step(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class Series:
    """Steps (ascending) and one float column per field."""

    def __init__(self, fields: tuple[str, ...]):
        self.fields = fields
        self.steps = array("q")
        self.cols = {f: array("d") for f in fields}

    def __len__(self) -> int:
        return len(self.steps)

    def rewind_to(self, step: int) -> None:
        """Drop every entry at or after `step`."""
        cut = bisect_left(self.steps, step)
        if cut < len(self.steps):
            del self.steps[cut:]
            for col in self.cols.values():
                del col[cut:]

    def add(self, step: int, record: dict) -> int:
        """Append (rewinding first when the step goes back); returns how many values were malformed."""
        if self.steps and step <= self.steps[-1]:
            self.rewind_to(step)
        self.steps.append(step)
        bad = 0
        for f in self.fields:
            if f in record:
                v, ok = as_number(record[f])
                bad += not ok
            else:
                v = NAN
            self.cols[f].append(v)
        return bad

    def last(self, name: str) -> float | None:
        col = self.cols[name]
        for v in reversed(col):
            if not math.isnan(v):
                return v
        return None

    def values(self, name: str) -> list[float]:
        return list(self.cols[name])


@dataclass
class RunHistory:
    steps: Series = field(default_factory=lambda: Series(STEP_FIELDS))
    evals: Series = field(default_factory=lambda: Series(EVAL_FIELDS))
    samples: deque = field(default_factory=lambda: deque(maxlen=50))
    warnings: deque = field(default_factory=lambda: deque(maxlen=200))
    checkpoints: dict = field(default_factory=dict)  # file name -> newest checkpoint event for it
    schema: dict | None = None
    run_start: dict | None = None  # the newest run_start
    first_run_start: dict | None = None
    run_end: dict | None = None  # run_end of the newest segment, None while it runs (or after a crash)
    last_heartbeat: dict | None = None
    last_event_t: float | None = None
    segments: int = 0  # run_start count: 1 + number of resumes
    events: int = 0
    malformed_values: int = 0
    skipped_events: int = 0  # events without a usable step, unknown kinds

    def extend(self, records) -> None:
        for r in records:
            self.apply(r)

    def apply(self, r: dict) -> None:
        kind = r.get("event")
        self.events += 1
        t, ok = as_number(r.get("t"))
        if ok and not math.isnan(t):
            self.last_event_t = t if self.last_event_t is None else max(self.last_event_t, t)
        if kind == "step":
            step = as_step(r.get("step"))
            if step is None:
                self.skipped_events += 1
                return
            self.malformed_values += self.steps.add(step, r)
        elif kind == "eval":
            step = as_step(r.get("step"))
            if step is None:
                self.skipped_events += 1
                return
            self.malformed_values += self.evals.add(step, r)
        elif kind == "heartbeat":
            self.last_heartbeat = r
        elif kind == "sample":
            step = as_step(r.get("step"))
            while self.samples and step is not None and as_step(self.samples[-1].get("step")) is not None and as_step(self.samples[-1].get("step")) >= step:
                self.samples.pop()
            self.samples.append(r)
        elif kind == "checkpoint":
            name = r.get("path")
            if isinstance(name, str):
                self.checkpoints[name] = r
        elif kind == "warning":
            self.warnings.append(r)
        elif kind == "run_start":
            self.segments += 1
            self.run_start = r
            if self.first_run_start is None:
                self.first_run_start = r
            self.run_end = None
            start = as_step(r.get("start_step"))
            if start is not None:  # a resume: whatever was logged after the checkpoint is orphaned
                self.steps.rewind_to(start + 1)
                self.evals.rewind_to(start + 1)
                while self.samples and (as_step(self.samples[-1].get("step")) or 0) > start:
                    self.samples.pop()
        elif kind == "run_end":
            self.run_end = r
        elif kind == "schema":
            self.schema = r
        else:
            self.skipped_events += 1

    # ---- convenient views ------------------------------------------------------------------------
    @property
    def last_step(self) -> int | None:
        return self.steps.steps[-1] if len(self.steps) else None

    @property
    def max_steps(self) -> int | None:
        if self.run_start is None:
            return None
        v = as_step(self.run_start.get("max_steps"))
        if v is None:
            v = as_step((self.run_start.get("config") or {}).get("max_steps"))
        return v

    @property
    def config(self) -> dict:
        cfg = (self.run_start or {}).get("config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def best_val_loss(self) -> float | None:
        col = [v for v in self.evals.cols["val_loss"] if not math.isnan(v)]
        return min(col) if col else None
