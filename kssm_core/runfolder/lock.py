"""`training.lock`: one trainer per run folder, and the rules that say when a lock is stale.

The lock is JSON {pid, host, start_time, created}. It is created complete or not at all
(written to a temp file, then hard-linked into place, which fails if a lock exists).
A lock is *stale* only when provably so: its host is this host and its PID is gone, or the
PID now belongs to a process with another start time (the PID was reused). A lock from
another host is never called stale. The reference trainer's lock held only a PID; those read
as this host with no start time, and their PID counts as reused when its process started after the
lock file was last written (its mtime).

A `training.lock` that cannot be read as a small regular file (a directory, a FIFO, a symlink, no
permission) is never judged stale: nothing takes it over or removes it; a person must look at it.

Taking over a stale lock (and `unlock`) happens under an flock on the run folder itself, and only
if the lock is still the very stale one judged: two trainers started at once on a crashed run
cannot both take it over, and an unlock cannot remove a lock a new trainer just took.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from kssm_core.runfolder import layout

import psutil

LOCK_NAME = layout.LOCK
START_TIME_TOLERANCE_S = 1.0
MAX_LOCK_BYTES = 64 * 1024  # a real lock is ~100 bytes: anything larger is not one


class LockHeld(Exception):
    """Another live trainer owns the folder."""


@dataclass
class LockInfo:
    pid: int | None
    host: str | None
    start_time: float | None
    created: float | None
    raw: str
    unreadable: str | None = None  # why the file could not be read as a lock (then nothing else is known)
    mtime: float | None = None  # when the lock file was last written (judges PID reuse without start_time)

    @property
    def describe(self) -> str:
        return f"PID {self.pid} on {self.host or 'this host'}"


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return None


def _read_small_regular_file(path: Path) -> tuple[bytes, float]:
    """The bytes and mtime of a regular file; never follows a symlink or blocks on a FIFO.

    Raises FileNotFoundError when there is no file, and ValueError(reason) when the path is not a
    regular file of at most MAX_LOCK_BYTES, or OSError for anything the kernel refuses.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise ValueError("it is a symlink") from exc
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError("it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_LOCK_BYTES:
            raise ValueError(f"{st.st_size} bytes, a lock is under {MAX_LOCK_BYTES}")
        chunks, left = [], MAX_LOCK_BYTES
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st.st_mtime
    finally:
        os.close(fd)


def read_lock(run_dir: str | Path, name: str = LOCK_NAME) -> LockInfo | None:
    """The lock in run_dir (`name`: another lock file under the same rules, e.g. the autopilot's), None when
    there is none. Never raises for a damaged lock; never blocks."""
    path = Path(run_dir) / name
    try:
        data, mtime = _read_small_regular_file(path)
    except (FileNotFoundError, NotADirectoryError):  # no lock (or run_dir is not a folder: no lock in it)
        return None
    except ValueError as exc:
        return LockInfo(None, None, None, None, "", unreadable=str(exc))
    except OSError as exc:
        return LockInfo(None, None, None, None, "", unreadable=exc.strerror or type(exc).__name__)
    raw = data.decode("utf-8", errors="replace")
    text = raw.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        pid = obj.get("pid")
        return LockInfo(
            pid if isinstance(pid, int) else None,
            obj.get("host") if isinstance(obj.get("host"), str) else None,
            obj.get("start_time") if isinstance(obj.get("start_time"), (int, float)) else None,
            obj.get("created") if isinstance(obj.get("created"), (int, float)) else None,
            raw,
            mtime=mtime,
        )
    if isinstance(obj, int) or text.isdigit():  # legacy: the bare PID
        return LockInfo(int(text), None, None, None, raw, mtime=mtime)
    return LockInfo(None, None, None, None, raw, mtime=mtime)


def lock_state(info: LockInfo | None, name: str = LOCK_NAME) -> tuple[str, str]:
    """('none' | 'live' | 'stale' | 'foreign', one-line reason)."""
    if info is None:
        return "none", "no lock"
    if info.unreadable is not None:  # never "stale": nothing may take it over or remove it unseen
        return "foreign", f"{name} unreadable ({info.unreadable}): check it by hand"
    if info.host not in (None, socket.gethostname()):
        return "foreign", f"held by PID {info.pid} on host {info.host}: cannot check it from here"
    if info.pid is None:
        return "stale", "lock file holds no PID (damaged)"
    started = process_start_time(info.pid)
    if started is None:
        return "stale", f"PID {info.pid} is not running"
    if info.start_time is not None and abs(started - info.start_time) > START_TIME_TOLERANCE_S:
        return "stale", f"PID {info.pid} was reused by another process (started {time.ctime(started)})"
    if info.start_time is None and info.mtime is not None and started > info.mtime + START_TIME_TOLERANCE_S:
        # a lock without start_time (legacy, or psutil failed): its writer ran before the file was written.
        # create_time may read up to 1 s early (Linux boot time in whole seconds): that errs towards "live".
        return "stale", f"PID {info.pid} was reused by another process (it started after the lock was written)"
    return "live", f"held by live PID {info.pid}"


@contextlib.contextmanager
def _takeover_guard(run_dir: Path):
    """Serialise stale-lock takeovers in one folder (flock on the directory; released if we die)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard (the takeover is then best effort)
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class RunLock:
    """Acquire with `acquire()`; returns the stale lock it took over, if any, so the caller can warn."""

    def __init__(self, run_dir: str | Path, name: str = LOCK_NAME):
        self.path = Path(run_dir) / name
        self.name = name
        self.held = False

    def _payload(self) -> str:
        pid = os.getpid()
        return json.dumps(
            {"pid": pid, "host": socket.gethostname(), "start_time": process_start_time(pid), "created": time.time()}
        )

    def acquire(self) -> LockInfo | None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self._payload())
                fh.flush()
                os.fsync(fh.fileno())
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic, fails when a lock exists
                    self.held = True
                    return None
                except FileExistsError:
                    info = read_lock(self.path.parent, self.name)
                    state, reason = lock_state(info)
                    reason = reason.replace(LOCK_NAME, self.name)
                    if info is not None and info.unreadable is not None:
                        raise LockHeld(f"{self.path.parent}: {reason}")
                    if state in ("live", "foreign"):
                        raise LockHeld(
                            f"{self.path} {reason}; another trainer owns this folder "
                            f"(stop it first, or use another --output-dir)"
                        )
                    if state == "stale":
                        with _takeover_guard(self.path.parent):
                            again = read_lock(self.path.parent, self.name)
                            if again is None or info is None or again.raw != info.raw:
                                continue  # someone else took it (or removed it) meanwhile: look again
                            os.replace(tmp, self.path)  # take it over in one step
                        self.held = True
                        return info
            raise LockHeld(f"{self.path}: could not acquire the lock (it keeps changing)")
        finally:
            Path(tmp).unlink(missing_ok=True)

    def release(self) -> None:
        if not self.held:
            return
        info = read_lock(self.path.parent, self.name)
        if info is not None and info.pid == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def unlock(run_dir: str | Path) -> str:
    """Remove a stale lock; refuse a live or foreign one, and any lock in a folder another trainer wrote
    (its files are never ours to delete). Returns what happened, in one line."""
    from kssm_core.runfolder.foreign import foreign_run  # (foreign imports this module)

    found = foreign_run(run_dir, check_formats=False)
    if found is not None and os.path.lexists(Path(run_dir) / LOCK_NAME):
        raise LockHeld(f"refusing to remove {Path(run_dir) / LOCK_NAME}: {run_dir} holds {found.what()}; "
                       "kssm never deletes its files")
    info = read_lock(run_dir)
    state, reason = lock_state(info)
    if state == "none":
        return f"no lock in {run_dir}: nothing to do"
    if state != "stale":
        raise LockHeld(f"refusing to remove {Path(run_dir) / LOCK_NAME}: {reason}")
    lock_path = Path(run_dir) / LOCK_NAME
    if lock_path.is_symlink():
        raise LockHeld(f"refusing to remove {lock_path}: it is a symlink")
    with _takeover_guard(Path(run_dir)):
        again = read_lock(run_dir)
        if again is None:
            return f"no lock in {run_dir}: it was removed meanwhile"
        if again.raw != info.raw:
            raise LockHeld(f"refusing to remove {lock_path}: it changed meanwhile (a trainer may have taken it)")
        lock_path.unlink()
    return f"removed stale lock {lock_path} ({reason})"
