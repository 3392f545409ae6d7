"""Tolerant, incremental reading of `events.jsonl`.

`EventLogReader` reads from a byte offset, hands over only complete lines, keeps a partial
last line for next time, skips (and counts) lines it cannot parse, and notices a truncated
or replaced file (then starts again from 0). Heartbeats, most of a long log, are not parsed
one by one: only the newest of each batch is. With `read_new(step_batches=True)` long runs of step
lines are decoded by kssm_core.runfolder.steplines into columnar StepBatch items (RunHistory.extend folds them);
any run it is not sure of is parsed the ordinary way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kssm_core.runfolder import steplines

MAX_LINE_BYTES = 1_000_000  # a longer line is damage, not an event
_HEARTBEAT_TAG = b'"event":"heartbeat"'
_READ_CHUNK = 64 * 1024 * 1024
MIN_STEP_RUN = 32  # shorter runs of step lines (a live tail's few new lines) are not worth a batch


@dataclass
class ReadStats:
    lines: int = 0
    bad_lines: int = 0
    oversized_lines: int = 0
    resets: int = 0  # times the file was truncated or replaced and reading restarted
    bad_examples: list[str] = field(default_factory=list)

    def note_bad(self, raw: bytes, why: str) -> None:
        self.bad_lines += 1
        if len(self.bad_examples) < 5:
            self.bad_examples.append(f"{why}: {raw[:60]!r}")


class EventLogReader:
    """Follow one events.jsonl. Call read_new() repeatedly; it returns the new records."""

    def __init__(self, path: str | Path, offset: int = 0, inode: int | None = None):
        self.path = Path(path)
        self.offset = offset
        self.inode = inode
        self.stats = ReadStats()
        self._partial = b""
        self._skipping_long = False
        self._batched = False

    def state(self) -> dict:
        """Where reading stands, JSON-safe: resume with EventLogReader.from_state() (a partial line is re-read)."""
        return {"offset": self.offset - len(self._partial), "inode": self.inode, "skipping_long": self._skipping_long,
                "stats": {"lines": self.stats.lines, "bad_lines": self.stats.bad_lines,
                          "oversized_lines": self.stats.oversized_lines, "resets": self.stats.resets,
                          "bad_examples": list(self.stats.bad_examples)}}

    @classmethod
    def from_state(cls, path: str | Path, state: dict) -> "EventLogReader":
        r = cls(path, offset=int(state["offset"]), inode=state.get("inode"))
        r._skipping_long = bool(state.get("skipping_long"))
        st = state.get("stats") or {}
        r.stats = ReadStats(int(st.get("lines", 0)), int(st.get("bad_lines", 0)), int(st.get("oversized_lines", 0)),
                            int(st.get("resets", 0)), [str(x) for x in st.get("bad_examples", [])][:5])
        return r

    def _check_replaced(self) -> os.stat_result | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        if (self.inode is not None and st.st_ino != self.inode) or st.st_size < self.offset:
            self.offset, self._partial, self._skipping_long = 0, b"", False
            self.stats.resets += 1
        self.inode = st.st_ino
        return st

    def read_new(self, max_bytes: int | None = None, step_batches: bool = False) -> list:
        """Parse every complete line appended since the last call (at most max_bytes of file).

        step_batches: runs of step events may come as history.StepBatch items (for RunHistory.extend)
        instead of one dict each; the other records are dicts as always.
        """
        st = self._check_replaced()
        if st is None or st.st_size == self.offset:
            return []
        self._batched = step_batches and steplines.available()
        out: list = []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            remaining = st.st_size - self.offset if max_bytes is None else min(max_bytes, st.st_size - self.offset)
            while remaining > 0:
                chunk = fh.read(min(_READ_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                self.offset += len(chunk)
                out.extend(self._feed(chunk))
        return out

    def parse_lines(self, lines: list[bytes], step_batches: bool = False) -> list:
        """Parse complete lines (without their newlines) as read_new() would, counting in self.stats."""
        self._batched = step_batches and steplines.available()
        return list(self._parse(lines))

    def _feed(self, chunk: bytes) -> list[dict]:
        data = self._partial + chunk
        short = _no_line_over_max(data)
        lines = data.split(b"\n")
        self._partial = lines.pop()  # no newline yet: hold it back
        records = list(self._parse(lines, short))
        if len(self._partial) > MAX_LINE_BYTES:  # a runaway line: drop what we have, skip to its end
            if not self._skipping_long:
                self.stats.oversized_lines += 1
                self.stats.note_bad(self._partial, "line over 1 MB")
            self._partial, self._skipping_long = b"", True
        return records

    def _parse(self, lines: list[bytes], short: bool = False) -> Iterator[dict]:
        """short: the caller knows no line is over MAX_LINE_BYTES (saves measuring each one)."""
        if self._skipping_long and lines:  # the tail of an oversized line
            self._skipping_long = False
            lines = lines[1:]
        if lines and not short and max(map(len, lines)) > MAX_LINE_BYTES:
            return self._parse_slow(lines)
        # Fast path (no oversized line): heartbeats, most of a long log, are counted in bulk and only the
        # newest is parsed (in its place); the other lines are parsed together.
        last_hb = len(lines) - 1
        while last_hb >= 0 and _HEARTBEAT_TAG not in lines[last_hb]:
            last_hb -= 1
        if last_hb < 0:
            return iter(self._parse_kept(lines))
        head = [raw for raw in lines[:last_hb] if _HEARTBEAT_TAG not in raw]
        self.stats.lines += last_hb - len(head)  # the heartbeats dropped (the newest is counted with the rest)
        return iter(self._parse_kept(head + lines[last_hb:]))  # no heartbeat after the newest one

    def _parse_kept(self, raws: list[bytes]) -> list:
        """Parse and count the lines that are not blank (the dropped heartbeats are already counted)."""
        if self._batched and len(raws) >= MIN_STEP_RUN:
            return self._parse_batched(raws)
        keep = [raw for raw in raws if raw.strip()]
        self.stats.lines += len(keep)
        return self._parse_json(keep)

    def _parse_batched(self, raws: list[bytes]) -> list:
        """Runs of step lines as StepBatch items, in their places among the other records (parsed as JSON)."""
        tag = steplines.STEP_TAG
        others = [i for i, raw in enumerate(raws) if tag not in raw]  # a blank line is one of them
        self.stats.lines += len(raws) - sum(1 for i in others if not raws[i].strip())
        bounds = [-1, *others, len(raws)]
        out: list = []
        done = 0  # raws[:done] are in `out`
        for a, b in zip(bounds, bounds[1:]):
            if b - a - 1 < MIN_STEP_RUN:
                continue
            batch = steplines.decode_steps(raws[a + 1:b])
            if batch is None:  # any doubt: these lines go the ordinary way with their neighbours
                continue
            out.extend(self._parse_json([raw for raw in raws[done:a + 1] if raw.strip()]))
            out.append(batch)
            done = b
        out.extend(self._parse_json([raw for raw in raws[done:] if raw.strip()]))
        return out

    def _parse_json(self, raws: list[bytes]) -> list[dict]:
        """Parse many lines in one json.loads of a JSON array (C speed); on any doubt, line by line."""
        if not raws:
            return []
        try:
            objs = json.loads(b"[" + b",".join(raws) + b"]")
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            objs = None
        if objs is None or len(objs) != len(raws):  # a damaged line among them (or one holding "a, b")
            out = []
            for raw in raws:
                rec = parse_line(raw, self.stats)
                if rec is not None:
                    out.append(rec)
            return out
        out = []
        for raw, obj in zip(raws, objs):
            if isinstance(obj, dict) and isinstance(obj.get("event"), str):
                out.append(obj)
            else:
                self.stats.note_bad(raw, "no event field")
        return out

    def _parse_slow(self, lines: list[bytes]) -> Iterator[dict]:
        last_hb = None
        last_hb_pos = -1
        parsed: list[dict] = []
        for raw in lines:
            if not raw.strip():
                continue
            self.stats.lines += 1
            if len(raw) > MAX_LINE_BYTES:
                self.stats.oversized_lines += 1
                self.stats.note_bad(raw, "line over 1 MB")
                continue
            if _HEARTBEAT_TAG in raw:
                last_hb = raw
                last_hb_pos = len(parsed)
                continue
            rec = parse_line(raw, self.stats)
            if rec is not None:
                parsed.append(rec)
        if last_hb is not None:
            rec = parse_line(last_hb, self.stats)
            if rec is not None:
                parsed.insert(last_hb_pos, rec)
        return iter(parsed)


def _no_line_over_max(data: bytes) -> bool:
    """True when no newline-ended line of data is over MAX_LINE_BYTES: every window of half that size holds a
    newline (such a line would contain a whole window). False means "maybe": measure the lines."""
    half = MAX_LINE_BYTES // 2
    find = data.find
    return all(find(b"\n", p, p + half) >= 0 for p in range(0, len(data), half))


def parse_line(raw: bytes, stats: ReadStats | None = None) -> dict | None:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        if stats is not None:
            stats.note_bad(raw, "not JSON")
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        if stats is not None:
            stats.note_bad(raw, "no event field")
        return None
    return obj


def read_all(path: str | Path) -> tuple[list[dict], ReadStats]:
    reader = EventLogReader(path)
    records = reader.read_new()
    return records, reader.stats


def newest_run_markers(path: str | Path) -> tuple[dict | None, dict | None]:
    """(the newest run_start, the run_end after it or None), read without decoding the step lines: only the
    lines that name one of them are parsed. For start-up checks that need no history (the trainer's)."""
    start = end = None
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if b'"run_start"' not in line and b'"run_end"' not in line:
                    continue
                event = parse_line(line.rstrip(b"\r\n"))
                if event is None:
                    continue
                if event.get("event") == "run_start":
                    start, end = event, None
                elif event.get("event") == "run_end" and start is not None:
                    end = event
    except OSError:
        return None, None
    return start, end
