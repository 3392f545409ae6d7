"""One run folder's event log, followed from a byte offset and folded into a RunHistory (no Textual).

`RunFollower`: kssm_core.runfolder.runlog.EventLogReader reads only new complete lines (holding back a partial
last line, skipping bad ones, restarting on a truncated or replaced file) and RunHistory folds them in
(a resume replaces orphaned steps); a big catch-up is stored in kssm_core.runbook.status's cache. A folder with
only a reference-trainer training.log is read through kssm_core.runfolder.legacy. `preview_history` reads a long
log's two ends so the dashboard fills before the whole log is read. `entry_for` turns an event into
a line of the cockpit's event log.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

from kssm_core.runfolder.history import RunHistory, as_step
from kssm_core.runfolder.legacy import has_legacy_log, read_legacy
from kssm_core.runfolder.runlog import EventLogReader
from kssm_core.runbook.status import EventsFollower

from .safe_text import clean

MAX_ENTRIES = 200  # event-log entries kept for a newly selected run
PREVIEW_TAIL_BYTES = 4 * 1024 * 1024  # the newest part of a long log a preview reads
PREVIEW_HEAD_BYTES = 256 * 1024  # and its head (schema, run_start)


def _clean(text: str) -> str:
    return clean(str(text))


def _fmt(v, spec: str = ".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def entry_for(r: dict) -> tuple[str, str] | None:
    """One event-log line for the events worth reading (not steps or heartbeats)."""
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
    if kind == "run_start":
        src = r.get("resumed_from")
        how = f"resumed from {_clean(Path(str(src)).name)}" if src else "started"
        return "run_start", f"{how} at step {as_step(r.get('start_step')) or 0} of {as_step(r.get('max_steps'))} on {_clean(r.get('device', '?'))}"
    if kind == "run_end":
        return "run_end", f"{_clean(r.get('status', '?'))} at step {step}: {_clean(r.get('reason', ''))}"
    return None


class RunFollower:
    """One run folder: its reader, its folded history and the log entries not yet shown.

    Reads in slices (`poll(max_bytes)`) so a huge log is folded progressively and the dashboard
    can show the part read so far. A large catch-up is stored in kssm_core.runbook.status's JSON cache
    (outside the run folder), so reopening a week-long run reads only what is new. A folder
    with no events.jsonl but a reference-trainer training.log is read through kssm_core.runfolder.legacy.
    """

    CACHE_AFTER_BYTES = 16 * 1024 * 1024

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.reader = EventLogReader(self.run_dir / "events.jsonl")
        self.history = RunHistory()
        self.entries: deque[tuple[str, str]] = deque(maxlen=MAX_ENTRIES)
        self.version = 0  # bumps whenever new records were folded in
        self.reset_pending = False
        self.size = 0  # the file's size at the last poll (progress of a catch-up)
        self._cache_tried = False
        self._read_since_cache = 0
        self._legacy_sig: tuple | None = None
        self.legacy = False

    @property
    def has_events(self) -> bool:
        return self.reader.offset > 0 or self.legacy or (self.run_dir / "events.jsonl").exists()

    @property
    def behind(self) -> bool:
        """More of the file is waiting to be read."""
        return self.reader.offset < self.size

    def _try_cache(self) -> None:
        self._cache_tried = True
        ef = EventsFollower(self.reader.path)
        if ef.load_cached():
            self.reader, self.history = ef.reader, ef.history
            self.entries.extend(e for e in map(entry_for, list(self.history.samples)[-20:]) if e)
            self.version += 1

    def cache_due(self) -> bool:
        return self._read_since_cache >= self.CACHE_AFTER_BYTES and not self.behind

    def save_cache(self) -> None:
        """Store the folded history after a big catch-up (best effort; kssm_core.runbook.status owns the format)."""
        if not self.cache_due():
            return
        self._read_since_cache = 0
        ef = EventsFollower(self.reader.path)
        ef.reader, ef.history = self.reader, self.history
        ef.save_cache()

    def _poll_legacy(self) -> bool:
        if not has_legacy_log(self.run_dir):
            return False
        st = (self.run_dir / "training.log").stat()
        sig = (st.st_ino, st.st_size, st.st_mtime)
        if sig == self._legacy_sig:
            return False
        self._legacy_sig, self.legacy = sig, True
        self.history = RunHistory()  # a text log has no offsets worth keeping: fold it again
        self.entries.clear()
        self.reset_pending = True
        records = read_legacy(self.run_dir)
        self.history.extend(records)
        self.entries.extend(e for e in map(entry_for, records) if e)
        self.version += 1
        return True

    def poll(self, max_bytes: int | None = None) -> bool:
        path = self.reader.path
        if not path.exists():
            return self._poll_legacy()
        if not self._cache_tried:
            self._try_cache()
        try:
            self.size = path.stat().st_size
        except OSError:
            return False
        resets = self.reader.stats.resets
        before = self.reader.offset
        records = self.reader.read_new(max_bytes=max_bytes, step_batches=True)  # steps in columnar batches
        if self.reader.stats.resets != resets:  # truncated or replaced: rebuild from scratch
            self.history = RunHistory()
            self.entries.clear()
            self.reset_pending = True
            self.version += 1
            before = 0
        self._read_since_cache += max(0, self.reader.offset - before)
        if not records:
            return self.reader.stats.resets != resets
        self.history.extend(records)
        for r in records:
            if type(r) is dict:  # a StepBatch holds only steps, which have no log entry
                e = entry_for(r)
                if e is not None:
                    self.entries.append(e)
        self.version += 1
        return True

    def take_entries(self) -> list[tuple[str, str]]:
        out = list(self.entries)
        self.entries.clear()
        return out


def preview_history(path: Path) -> RunHistory:
    """A quick history from a long log's head (schema, run_start) and its last few MB of events.

    Shown while the whole log is read so the dashboard fills at once; its matrix verdicts are marked
    provisional because they see only the recent steps.
    """
    h = RunHistory()
    with open(path, "rb") as fh:
        head = fh.read(PREVIEW_HEAD_BYTES)
        size = fh.seek(0, 2)
        fh.seek(max(len(head), size - PREVIEW_TAIL_BYTES))
        tail = fh.read(PREVIEW_TAIL_BYTES)
    head = head[: head.rfind(b"\n") + 1]
    tail = tail[tail.find(b"\n") + 1:]
    tail = tail[: tail.rfind(b"\n") + 1]
    # Parsed as the reader parses (step lines in columnar batches, only the newest heartbeat).
    h.extend(EventLogReader(path).parse_lines(head.split(b"\n")[:-1] + tail.split(b"\n")[:-1], step_batches=True))
    return h
