"""A run's history folded from its events: columnar metric series plus the latest of everything else.

Fold events in with `apply()` as they arrive (the cockpit's tailer and `kssm status` share this).
When steps go back (a resume from an earlier checkpoint) the orphaned values after the resume
point are dropped and the resumed ones take their place. Memory is bounded: series are
compact arrays of floats, samples and warnings keep only the newest few.
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from operator import lt
from typing import Any

STEP_FIELDS = ("loss", "ce", "reg", "R", "u_val", "grad_norm", "lr", "tokens_per_s", "gpu_mem_bytes")
EVAL_FIELDS = ("val_loss", "val_ce", "val_ppl", "val_R", "val_u")
NAN = float("nan")
_INT = {int}
_NUM = {int, float}
_FLOAT = {float}
MAX_STEP = 2**63 - 1  # the steps column is int64: a larger "step" is damage (and would not fit)


def as_number(value: Any) -> tuple[float, bool]:
    """(value as float, was it well-formed). Numeric strings are accepted but flagged; the rest is NaN."""
    if isinstance(value, bool):
        return NAN, False
    if isinstance(value, float):
        return value, True
    if isinstance(value, int):
        try:
            return float(value), True
        except OverflowError:  # an integer of hundreds of digits: damage, not a reading
            return NAN, False
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
        return value if 0 <= value <= MAX_STEP else None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_STEP:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value.strip()) <= MAX_STEP:
        return int(value.strip())
    return None


class StepBatch:
    """Consecutive step events as columns (kssm_core.runfolder.steplines decodes them so): `steps` (ints), `ts` (finite
    floats or None: JSON cannot spell NaN) and an array("d") per STEP_FIELDS name, NaN where the value was
    absent or null. RunHistory.extend folds it without a dict per event."""

    __slots__ = ("steps", "ts", "cols")

    def __init__(self, steps: list[int], ts: list, cols: dict[str, array]):
        self.steps, self.ts, self.cols = steps, ts, cols

    def __len__(self) -> int:
        return len(self.steps)

    def records(self) -> list[dict]:
        """The same events as dicts (NaN for an absent or null value: apply() treats all three alike)."""
        names = list(self.cols)
        return [dict(zip(names, vals), event="step", step=s, t=t)
                for s, t, *vals in zip(self.steps, self.ts, *self.cols.values())]


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
        cols = self.cols
        for f in self.fields:
            v = record.get(f)
            t = type(v)
            if t is float:  # the common case, fast (an int goes through as_number: it may not fit a float)
                cols[f].append(v)
            elif v is None:
                cols[f].append(NAN)  # absent, or the writer's null for NaN / inf
            else:
                v, ok = as_number(v)
                bad += not ok
                cols[f].append(v)
        return bad

    def last_finite(self, name: str) -> int | None:
        """Index of the newest finite reading of a column (NaN/inf skipped), or None."""
        col = self.cols[name]
        for i in range(len(col) - 1, -1, -1):
            if math.isfinite(col[i]):
                return i
        return None

    def last(self, name: str) -> float | None:
        col = self.cols[name]
        for v in reversed(col):
            if not math.isnan(v):
                return v
        return None

    def values(self, name: str) -> list[float]:
        return list(self.cols[name])

    def to_state(self) -> dict:
        """JSON-safe and compact: each column as base64 of its machine bytes (NaN survives, no pickle)."""
        return {
            "byteorder": sys.byteorder,
            "steps": base64.b64encode(self.steps.tobytes()).decode("ascii"),
            "cols": {f: base64.b64encode(c.tobytes()).decode("ascii") for f, c in self.cols.items()},
        }

    @classmethod
    def from_state(cls, fields: tuple[str, ...], d: dict) -> "Series":
        s = cls(fields)
        swap = d.get("byteorder") != sys.byteorder
        s.steps.frombytes(base64.b64decode(d["steps"]))
        for f in fields:
            s.cols[f].frombytes(base64.b64decode(d["cols"][f]))
        arrays = [s.steps, *s.cols.values()]
        if swap:
            for a in arrays:
                a.byteswap()
        if any(len(a) != len(s.steps) for a in arrays):
            raise ValueError("series columns differ in length")
        return s


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
    step_times: deque = field(default_factory=lambda: deque(maxlen=256))  # (t, step) of recent step events: rate, stall

    def extend(self, records) -> None:
        """apply() each record; runs of ordinary step events take a columnar fast path (same result).
        `records` may hold StepBatch items (EventLogReader.read_new(step_batches=True)) among the dicts."""
        batch: list[dict] = []
        for r in records:
            if type(r) is StepBatch:
                if batch:
                    self._apply_steps(batch)
                    batch = []
                self._apply_step_batch(r)
                continue
            if r.get("event") == "step":
                batch.append(r)
                continue
            if batch:
                self._apply_steps(batch)
                batch = []
            self.apply(r)
        if batch:
            self._apply_steps(batch)

    def _apply_steps(self, batch: list[dict]) -> None:
        """Fold many step events at once when they are well-formed and move forward; else one by one."""
        steps = [r.get("step") for r in batch]
        ts = [r.get("t") for r in batch]
        last = self.steps.steps[-1] if len(self.steps) else -1
        # int times go one by one: apply() keeps times as floats (and one of hundreds of digits is no time)
        if (len(batch) < 8 or not set(map(type, steps)) <= _INT or not set(map(type, ts)) <= _FLOAT
                or steps[0] <= last or steps[0] < 0 or steps[-1] > MAX_STEP
                or not all(map(lt, steps, steps[1:]))):
            for r in batch:
                self.apply(r)
            return
        self.events += len(batch)
        tmax = max((t for t in ts if t == t), default=None)  # NaN never wins (max() with NaN depends on order)
        if tmax is not None:
            self.last_event_t = tmax if self.last_event_t is None else max(self.last_event_t, tmax)
        series = self.steps
        series.steps.extend(steps)
        for f in series.fields:
            vals = [r.get(f) for r in batch]
            kinds = set(map(type, vals))
            if kinds <= _NUM:
                try:
                    series.cols[f].extend(array("d", vals))  # built whole first: no half-extended column
                    continue
                except OverflowError:  # an int too big for a float: the loop below counts it
                    pass
            out = []
            for v in vals:
                t = type(v)
                if t is float:
                    out.append(v)
                elif v is None:
                    out.append(NAN)
                else:
                    v, ok = as_number(v)
                    self.malformed_values += not ok
                    out.append(v)
            series.cols[f].extend(out)
        self.step_times.extend((float(t), st) for t, st in zip(ts[-256:], steps[-256:]) if t == t)

    def _apply_step_batch(self, b: StepBatch) -> None:
        """_apply_steps for a decoded StepBatch (values already floats): the same checks, the same result."""
        steps, ts = b.steps, b.ts
        if not steps:
            return
        last = self.steps.steps[-1] if len(self.steps) else -1
        if (len(steps) < 8 or steps[0] <= last or steps[0] < 0 or steps[-1] > MAX_STEP
                or not all(map(lt, steps, steps[1:]))):
            for r in b.records():  # a rewind inside the batch, or too few to matter: one by one
                self.apply(r)
            return
        self.events += len(steps)
        try:
            tmax = max(ts)  # no NaN to make max() depend on order: see StepBatch
        except TypeError:  # None among them
            tmax = max((t for t in ts if t is not None), default=None)
        if tmax is not None:
            self.last_event_t = tmax if self.last_event_t is None else max(self.last_event_t, tmax)
        series = self.steps
        series.steps.extend(steps)
        for f in series.fields:
            series.cols[f].extend(b.cols[f])
        self.step_times.extend((float(t), st) for t, st in zip(ts[-256:], steps[-256:]) if t is not None and t == t)

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
            if ok and not math.isnan(t):
                self.step_times.append((t, step))
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
            self.step_times.clear()  # a new process: its rate starts afresh
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

    # ---- a compact JSON form (kssm status keeps it in its cache) ---------------------------------
    _PLAIN = ("checkpoints", "schema", "run_start", "first_run_start", "run_end", "last_heartbeat", "last_event_t",
              "segments", "events", "malformed_values", "skipped_events")

    def to_state(self) -> dict:
        d = {name: getattr(self, name) for name in self._PLAIN}
        d.update(steps=self.steps.to_state(), evals=self.evals.to_state(), samples=list(self.samples),
                 warnings=list(self.warnings), step_times=[list(x) for x in self.step_times])
        return d

    @classmethod
    def from_state(cls, d: dict) -> "RunHistory":
        """Inverse of to_state(); raises (KeyError, ValueError, TypeError) on a damaged state."""
        h = cls()
        for name in cls._PLAIN:
            v = d[name]
            want = (int,) if name in ("segments", "events", "malformed_values", "skipped_events") else \
                (int, float, type(None)) if name == "last_event_t" else (dict, type(None))
            if not isinstance(v, want) or isinstance(v, bool):
                raise TypeError(f"{name}: unexpected {type(v).__name__}")
            setattr(h, name, v)
        h.steps = Series.from_state(STEP_FIELDS, d["steps"])
        h.evals = Series.from_state(EVAL_FIELDS, d["evals"])
        for name in ("samples", "warnings"):
            items = d[name]
            if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
                raise TypeError(f"{name} must be a list of objects")
            getattr(h, name).extend(items)
        if not all(isinstance(v, dict) for v in h.checkpoints.values()):
            raise TypeError("checkpoints must map names to objects")
        h.step_times.extend((float(t), int(st)) for t, st in d["step_times"])
        if not isinstance(h.checkpoints, dict):
            raise TypeError("checkpoints must be a dict")
        return h

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
