"""Progress of a running suite: a plain-text bar on a terminal's stderr, and JSON lines for the cockpit.

RUN_DIR/eval/progress.jsonl gets {"event": "eval_start", "t", "suites", "model", "pid"} once per
`kssm eval` invocation, {"event": "eval_progress", "t", "suite", "done", "total"} as work completes and
{"event": "eval_end", "t", "suite", "verdict", "elapsed_s"} when a suite ends. The file is only appended
to, so a reader can follow it from a byte offset; the newest eval_start marks the current invocation.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO


def append_event(eval_dir: Path | None, record: dict) -> None:
    """One JSON line appended to eval_dir/progress.jsonl (nothing when eval_dir is None)."""
    if eval_dir is None:
        return
    eval_dir.mkdir(parents=True, exist_ok=True)
    with open(eval_dir / "progress.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def start_event(eval_dir: Path | None, suites: list[str], model: str) -> None:
    append_event(eval_dir, {"event": "eval_start", "t": time.time(), "suites": suites, "model": model,
                            "pid": os.getpid()})


class Progress:
    def __init__(self, eval_dir: Path | None, suite: str, total: int = 1, stream: TextIO | None = None):
        self.eval_dir = eval_dir
        self.suite = suite
        self.total = max(1, int(total))
        self.done = 0
        # the bar only on a terminal: a pipe or a log file gets no carriage returns
        self.stream = stream if stream is not None else (sys.stderr if sys.stderr.isatty() else None)
        self._last_draw = 0.0

    def _emit(self, record: dict) -> None:
        append_event(self.eval_dir, record)

    def set_total(self, total: int) -> None:
        self.total = max(1, int(total))

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self._emit({"event": "eval_progress", "t": time.time(), "suite": self.suite, "done": self.done,
                    "total": self.total})
        self._draw()

    def _draw(self, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self._last_draw < 0.1 and self.done < self.total:
            return
        self._last_draw = now
        width = 30
        filled = int(width * self.done / self.total)
        self.stream.write(f"\r{self.suite:<14} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
        if final:
            self.stream.write("\n")
        self.stream.flush()

    def end(self, verdict: str, elapsed_s: float) -> None:
        self.done = self.total
        self._draw(final=True)
        self._emit({"event": "eval_end", "t": time.time(), "suite": self.suite, "verdict": verdict,
                    "elapsed_s": round(elapsed_s, 3)})
