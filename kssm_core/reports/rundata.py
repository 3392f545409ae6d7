"""A run folder's whole history for export and reports: every metric with its time, every sample, every segment.

`load_run(run_dir)` folds the events exactly as `RunHistory` does (it *is* a RunHistory: the same rewind rule,
so the orphaned steps of a resumed run are replaced by the resumed run's), with three additions the cockpit's
bounded history leaves out: the event time `t` of each step and eval reading (a column of its own), every
sample (not only the newest 50), and the time of every `run_start` (the segments). A folder with only a
reference-trainer `training.log` is read through kssm_core.runfolder.legacy.

`run_names(dirs)` (kssm_core.reports.overlay) names runs for exports and legends: the shortest path suffix that
tells them apart.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from kssm_core.reports.overlay import run_names  # noqa: F401 - its home is overlay.py (the cockpit uses it)
from kssm_core.runfolder import legacy
from kssm_core.runfolder.history import EVAL_FIELDS, STEP_FIELDS, RunHistory, Series, as_number
from kssm_core.runfolder.runlog import EventLogReader
from kssm_core.runfolder import layout

EVENTS_NAME = layout.EVENTS
# Every numeric field a step event may carry (docs/run-folder.md), then its time.
STEP_COLUMNS = STEP_FIELDS + ("gpu_mem_reserved_bytes",)
EVAL_COLUMNS = EVAL_FIELDS
TIME = "t"
READ_SLICE_BYTES = 8 * 1024 * 1024


class RunDataError(Exception):
    """A folder that holds no run (one line, for the commands to print)."""


@dataclass
class RunData:
    run_dir: Path
    name: str
    source: str  # "events" | "legacy"
    history: RunHistory  # steps / evals Series carry STEP_COLUMNS + t / EVAL_COLUMNS + t; samples unbounded
    segment_starts: list[float] = field(default_factory=list)  # t of every run_start, in file order
    bad_lines: int = 0

    @property
    def steps(self) -> Series:
        return self.history.steps

    @property
    def evals(self) -> Series:
        return self.history.evals

    @property
    def samples(self) -> list[dict]:
        return list(self.history.samples)

    @property
    def stage(self) -> int | None:
        from kssm_core.runbook.matrix import infer_stage

        return infer_stage(self.history, self.run_dir) if self.history.run_start is not None else None


def new_history() -> RunHistory:
    """A RunHistory whose series also keep each reading's time and whose samples are not capped."""
    return RunHistory(steps=Series(STEP_COLUMNS + (TIME,)), evals=Series(EVAL_COLUMNS + (TIME,)), samples=deque())


def fold(records, history: RunHistory | None = None, segment_starts: list | None = None) -> RunHistory:
    """Fold event dicts into `history` (new_history() by default); run_start times go to `segment_starts`."""
    h = history if history is not None else new_history()
    if segment_starts is not None:
        for r in records:
            if r.get("event") == "run_start":
                t, _ = as_number(r.get("t"))
                segment_starts.append(t)
    h.extend(records)
    return h


def load_run(run_dir: str | Path, name: str | None = None) -> RunData:
    """The folded history of one run folder (events.jsonl, else a legacy training.log)."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.name in (EVENTS_NAME, legacy.LOG_NAME):
        run_dir = run_dir.parent
    name = name or run_dir.name
    starts: list[float] = []
    events = run_dir / EVENTS_NAME
    h = new_history()
    if events.is_file():
        reader = EventLogReader(events)
        try:
            while True:  # in slices: memory stays bounded by the history, not the file
                before = reader.offset
                records = reader.read_new(max_bytes=READ_SLICE_BYTES)  # dicts only: the t column needs them
                fold(records, h, starts)
                if reader.offset == before:  # all read (a half-written last line is held back, not waited for)
                    break
        except OSError as exc:
            raise RunDataError(f"{events}: cannot read: {exc.strerror or exc}") from None
        return RunData(run_dir, name, "events", h, starts, reader.stats.bad_lines)
    if legacy.has_legacy_log(run_dir):
        try:
            fold(legacy.read_legacy(run_dir), h, starts)
        except OSError as exc:
            raise RunDataError(f"{run_dir / legacy.LOG_NAME}: cannot read: {exc.strerror or exc}") from None
        return RunData(run_dir, name, "legacy", h, starts)
    if not run_dir.exists():
        raise RunDataError(f"{run_dir}: no such folder")
    raise RunDataError(f"{run_dir}: not a run folder (no {EVENTS_NAME} or {legacy.LOG_NAME})")


def expand_runs(paths) -> list[Path]:
    """Run folders named by `paths`: a run folder itself, or the run folders inside a folder of runs
    (results/), in name order. Archived runs under previous/ are taken only when named."""
    from kssm_core.runbook.status import find_run_dirs

    out: list[Path] = []
    for p in paths:
        found = find_run_dirs(p)
        for d in found:
            if d not in out:
                out.append(d)
    return out


def finite_or_none(v: float) -> float | None:
    return v if isinstance(v, float) and math.isfinite(v) else None
