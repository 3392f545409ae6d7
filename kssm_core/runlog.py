"""Tolerant, incremental reading of `events.jsonl`.

`EventLogReader` reads from a byte offset, hands over only complete lines, keeps a partial
last line for next time, skips (and counts) lines it cannot parse, and notices a truncated
or replaced file (then starts again from 0). Heartbeats, most of a long log, are not parsed
one by one: only the newest of each batch is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

MAX_LINE_BYTES = 1_000_000  # a longer line is damage, not an event
_HEARTBEAT_TAG = b'"event":"heartbeat"'
_READ_CHUNK = 64 * 1024 * 1024


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

    def read_new(self, max_bytes: int | None = None) -> list[dict]:
        """Parse every complete line appended since the last call (at most max_bytes of file)."""
        st = self._check_replaced()
        if st is None or st.st_size == self.offset:
            return []
        out: list[dict] = []
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

    def _feed(self, chunk: bytes) -> list[dict]:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # no newline yet: hold it back
        records = list(self._parse(lines))
        if len(self._partial) > MAX_LINE_BYTES:  # a runaway line: drop what we have, skip to its end
            if not self._skipping_long:
                self.stats.oversized_lines += 1
                self.stats.note_bad(self._partial, "line over 1 MB")
            self._partial, self._skipping_long = b"", True
        return records

    def _parse(self, lines: list[bytes]) -> Iterator[dict]:
        last_hb = None
        last_hb_pos = -1
        parsed: list[dict] = []
        for raw in lines:
            if self._skipping_long:  # the tail of an oversized line
                self._skipping_long = False
                continue
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
