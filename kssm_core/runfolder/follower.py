"""One follower of a run folder's log: `events.jsonl` from a byte offset, or a legacy `training.log`.

`RunFollower` is what `kssm status`, `kssm status --watch` and the cockpit's tail worker all read a run
through. It owns the reader's offset, truncation / replacement (the fold starts again), the JSON cache
(never pickle; outside the run folder, which only the trainer writes) and the legacy log. `poll()` reads
one slice, `refresh()` everything new; `history` is the folded RunHistory, `version` bumps on every
change, `take_records()` hands over the non-step records (evals, samples, warnings...) not yet taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from kssm_core.runfolder import layout
from kssm_core.runfolder.atomic import atomic_write_bytes
from kssm_core.runfolder.history import RunHistory
from kssm_core.runfolder.legacy import has_legacy_log, read_legacy
from kssm_core.runfolder.runlog import EventLogReader

CACHE_VERSION = 1
_HEAD_BYTES = 4096
READ_SLICE_BYTES = 8 * 1024 * 1024  # one read of a long log: memory stays bounded however large the file
MAX_RECORDS = 200  # non-step records kept for take_records()
PREVIEW_TAIL_BYTES = 4 * 1024 * 1024  # the newest part of a long log a preview reads
PREVIEW_HEAD_BYTES = 256 * 1024  # and its head (schema, run_start)


def cache_dir() -> Path:
    env = os.environ.get("KSSM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kssm" / "status"


def _cache_path(events: Path) -> Path:
    key = hashlib.sha256(str(events.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return cache_dir() / f"{key}.json"


def _edges_hash(path: Path, offset: int) -> str:
    """Hash of the first and the last _HEAD_BYTES before `offset`: the cache trusts only the same bytes."""
    with open(path, "rb") as fh:
        head = fh.read(min(_HEAD_BYTES, offset))
        fh.seek(max(0, offset - _HEAD_BYTES))
        tail = fh.read(offset - max(0, offset - _HEAD_BYTES))
    return hashlib.sha256(head + b"|" + tail).hexdigest()


class RunFollower:
    """Reader + folded history of one run folder; incremental across calls.

    `cache_after_bytes` / `cache_every_s`: when `save_cache_if_due()` stores the fold (a one-shot
    `kssm status` after any new bytes; the cockpit after a big catch-up; --watch at most every 30 s).
    """

    def __init__(self, run_dir: str | Path, *, use_cache: bool = True, cache_after_bytes: int = 1,
                 cache_every_s: float = 0.0):
        self.run_dir = Path(run_dir)
        self.events_path = self.run_dir / layout.EVENTS
        self.reader = EventLogReader(self.events_path)
        self.history = RunHistory()
        self.version = 0  # bumps whenever the history changed
        self.reset_pending = False  # the fold started again (truncated / replaced file): consumers redraw
        self.size = 0  # the log's size at the last poll (progress of a catch-up)
        self.from_cache = False
        self.bytes_read = 0  # bytes folded since the last reset_counters()
        self.read_error: str | None = None
        self.use_cache = use_cache
        self.cache_after_bytes = cache_after_bytes
        self.cache_every_s = cache_every_s
        self._cache_tried = not use_cache
        self._unsaved_bytes = 0
        self._saved_at: float | None = None
        self._legacy_sig: tuple | None = None
        self._records: deque[dict] = deque(maxlen=MAX_RECORDS)

    # ---- what was read ----------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """events | legacy | none (no log yet)."""
        if self.reader.offset > 0 or self.events_path.exists():
            return "events"
        return "legacy" if self._legacy_sig is not None or has_legacy_log(self.run_dir) else "none"

    @property
    def behind(self) -> bool:
        """More of the file is waiting to be read."""
        return self.source == "events" and self.reader.offset < self.size

    def read_info(self) -> dict[str, Any]:
        st = self.reader.stats
        info = {"lines": st.lines, "bad_lines": st.bad_lines, "oversized_lines": st.oversized_lines,
                "resets": st.resets, "bad_examples": list(st.bad_examples), "from_cache": self.from_cache,
                "bytes_read": self.bytes_read, "malformed_values": self.history.malformed_values,
                "skipped_events": self.history.skipped_events}
        if self.read_error:
            info["error"] = self.read_error
        return info

    def take_records(self) -> list[dict]:
        """The non-step records folded since the last call (newest MAX_RECORDS)."""
        out = list(self._records)
        self._records.clear()
        return out

    def reset_counters(self) -> None:
        self.bytes_read = 0

    # ---- reading ----------------------------------------------------------------------------------------
    def poll(self, max_bytes: int | None = READ_SLICE_BYTES) -> bool:
        """Read one slice of what is new; True when the history changed."""
        if not self.events_path.exists() and self.reader.offset == 0:
            return self._poll_legacy()
        if not self._cache_tried:
            self.load_cached()
        try:
            self.size = self.events_path.stat().st_size
        except OSError as exc:
            self.read_error = f"cannot read {self.events_path}: {exc.strerror or exc}"
            return False
        resets = self.reader.stats.resets
        before = self.reader.offset
        try:
            records = self.reader.read_new(max_bytes=max_bytes, step_batches=True)
        except OSError as exc:  # unreadable (permissions, I/O error): say so, judge what was read
            self.read_error = f"cannot read {self.events_path}: {exc.strerror or exc}"
            return False
        self.read_error = None
        changed = False
        if self.reader.stats.resets != resets:  # truncated or replaced: the fold starts again
            self.history = RunHistory()
            self._records.clear()
            self.reset_pending, self.from_cache, changed = True, False, True
            before = 0
        moved = max(0, self.reader.offset - before)
        self.bytes_read += moved
        self._unsaved_bytes += moved
        if records:
            self.history.extend(records)
            self._records.extend(r for r in records if type(r) is dict and r.get("event") not in ("step", "heartbeat"))
            changed = True
        if changed:
            self.version += 1
        return changed

    def refresh(self) -> RunHistory:
        """Read everything new (in slices) and return the history."""
        while True:
            before, resets = self.reader.offset, self.reader.stats.resets
            self.poll(READ_SLICE_BYTES)
            moved = self.reader.offset != before or self.reader.stats.resets != resets
            if not self.behind or not moved:
                return self.history

    def _poll_legacy(self) -> bool:
        if not has_legacy_log(self.run_dir):
            return False
        try:
            st = (self.run_dir / layout.TRAINING_LOG).stat()
            sig = (st.st_ino, st.st_size, st.st_mtime)
            if sig == self._legacy_sig:
                return False
            records = read_legacy(self.run_dir)
        except OSError as exc:
            self.read_error = f"cannot read {layout.TRAINING_LOG}: {exc.strerror or exc}"
            return False
        self.read_error = None
        self._legacy_sig = sig
        self.history = RunHistory()  # a text log has no offsets worth keeping: fold it again
        self._records.clear()
        self.reset_pending = True
        self.history.extend(records)
        self._records.extend(r for r in records if r.get("event") not in ("step", "heartbeat"))
        self.version += 1
        return True

    # ---- the JSON cache ---------------------------------------------------------------------------------
    def ensure_cache_loaded(self) -> None:
        """Load the JSON cache once, before anything was read (later it would rewind the fold)."""
        if not self._cache_tried and self.reader.offset == 0:
            self.load_cached()
        self._cache_tried = True

    def load_cached(self) -> bool:
        """Restore a previous process's position; False (and a full read later) on any doubt."""
        self._cache_tried = True
        cp = _cache_path(self.events_path)
        try:
            data = json.loads(cp.read_text(encoding="utf-8"))
            if data.get("version") != CACHE_VERSION or data.get("path") != str(self.events_path.resolve()):
                return False
            st = os.stat(self.events_path)
            r = data["reader"]
            if r.get("inode") != st.st_ino or int(r["offset"]) > st.st_size:
                return False
            if _edges_hash(self.events_path, int(r["offset"])) != data["edges"]:
                return False  # same inode, other content: the file was rewritten
            history = RunHistory.from_state(data["history"])
            reader = EventLogReader.from_state(self.events_path, r)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False  # a missing or damaged cache only costs a full read
        self.reader, self.history, self.from_cache = reader, history, True
        self._records.extend(list(history.samples)[-20:])
        self.version += 1
        return True

    def cache_due(self, now: float | None = None) -> bool:
        """Enough new bytes folded (and long enough since the last save) to store the fold."""
        if not self.use_cache or self.source != "events" or self.behind:
            return False
        if self._unsaved_bytes < self.cache_after_bytes:
            return False
        now = time.time() if now is None else now
        return self._saved_at is None or now - self._saved_at >= self.cache_every_s

    def save_cache_if_due(self, now: float | None = None) -> bool:
        if not self.cache_due(now):
            return False
        self.save_cache(now)
        return True

    def save_cache(self, now: float | None = None) -> None:
        """Best effort: a read-only home or a full disk only means the next call reads everything."""
        self._saved_at = time.time() if now is None else now
        self._unsaved_bytes = 0
        try:
            cp = _cache_path(self.events_path)
            cp.parent.mkdir(parents=True, exist_ok=True)
            state = self.reader.state()
            body = {"version": CACHE_VERSION, "path": str(self.events_path.resolve()), "reader": state,
                    "edges": _edges_hash(self.events_path, state["offset"]), "history": self.history.to_state()}
            data = json.dumps(body, separators=(",", ":"), allow_nan=True).encode("utf-8")
            atomic_write_bytes(cp, data, durable=False)  # a cache: losing it costs one full read
        except (OSError, ValueError, TypeError):
            pass


def preview_history(path: Path) -> RunHistory:
    """A quick history from a long log's head (schema, run_start) and its last few MB of events.

    Shown while the whole log is read so a dashboard fills at once; verdicts on it are provisional
    because they see only the recent steps.
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
