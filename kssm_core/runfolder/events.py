"""The run log: `events.jsonl` (machine-readable, one JSON object per line) and `training.log` (for people).

Schema (version 1) is documented in docs/run-folder.md. Every line has `event` and `t`
(unix seconds). Non-finite numbers (NaN, inf) are written as null: strict JSON for every reader.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, TextIO

SCHEMA_NAME = "kssm-events"
SCHEMA_VERSION = 1

EVENT_KINDS = (
    "schema", "run_start", "step", "heartbeat", "eval", "sample", "checkpoint", "warning", "run_end",
)
RUN_END_STATUSES = ("completed", "interrupted", "failed")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _ensure_fresh_line(path: Path) -> None:
    """A killed writer can leave a partial last line; start ours on a new one."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return
            fh.seek(-1, os.SEEK_END)
            last = fh.read(1)
    except FileNotFoundError:
        return
    if last != b"\n":
        with open(path, "ab") as fh:
            fh.write(b"\n")


class EventWriter:
    """Appends events; safe to call from the training loop and the heartbeat thread at once."""

    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        _ensure_fresh_line(self.path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", encoding="utf-8")
        self.last_emit = self._clock()
        if new:
            self.emit("schema", name=SCHEMA_NAME, version=SCHEMA_VERSION)

    def emit(self, event: str, **fields: Any) -> dict:
        record = {"event": event, "t": round(self._clock(), 3), **_finite(fields)}
        line = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            self.last_emit = record["t"]
        return record

    def sync(self) -> None:
        with self._lock:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                self._fh.close()


class TextLog:
    """`training.log`: what an operator reads with `tail -f`. Also echoes to a stream (stdout)."""

    def __init__(self, path: str | Path, echo: TextIO | None = None):
        _ensure_fresh_line(Path(path))
        self._fh = open(path, "a", encoding="utf-8")
        self._echo = echo
        self._lock = threading.Lock()

    def write(self, line: str, echo: bool = True) -> None:
        """Append one line; echo=False keeps it out of the echo stream (a refusal goes to stderr instead)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._lock:
            self._fh.write(f"[{stamp}] {line}\n")
            self._fh.flush()
            if echo and self._echo is not None:
                try:
                    self._echo.write(line + "\n")
                    self._echo.flush()
                except (OSError, ValueError):
                    self._echo = None  # the terminal went away (SSH dropped): keep training

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()


def format_step_line(step: int, loss, ce, reg, R, u_val, grad_norm) -> str:
    """The reference trainer's table row, so legacy tooling and eyes still read it."""

    def f(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) and v is not None else "nan".rjust(len(format(0.0, spec)))

    return f"{step:6d} | {f(loss, '7.3f')} | {f(ce, '7.3f')} | {f(reg, '7.4f')} | {f(R, '.4f')} | {f(u_val, '7.3f')} | {f(grad_norm, '8.3f')}"


STEP_HEADER = "  step |   total |      ce |     reg | R      |   u_val | grad_norm"
