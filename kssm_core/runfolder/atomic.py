"""Atomic file writes: a temp file beside the target, written, fsynced, then renamed over it.

A reader (or a trainer killed mid-write) sees the old file or the new one, never half of one. The
temp file is `.<name>.<random>.tmp` (checkpoint.remove_stale_temps knows the pattern). mkstemp makes
its file 0600; the result gets the mode a plain open() would give (0666 less the umask), so
checkpoints and caches can be shared the way the user's other files are.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def file_mode() -> int:
    """0666 less this process's umask, read without changing it (os.umask would, for a moment, process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644  # the usual umask 022 where /proc does not say


def write_all(fd: int, data) -> None:
    """os.write until every byte is out (a short write is not an error)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: str | Path, write: Callable[[int], None], *, durable: bool = True) -> None:
    """Create `path` by calling write(fd) on a temp file, then rename it into place.

    durable=True fsyncs the file before the rename. OSError (ENOSPC included) propagates after the temp
    file is removed; the previous `path`, if any, is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, file_mode())
            write(fd)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data, *, durable: bool = True) -> None:
    atomic_write(path, lambda fd: write_all(fd, data), durable=durable)
