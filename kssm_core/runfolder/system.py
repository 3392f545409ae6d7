"""Facts about this machine, gathered with psutil: disk free for a path, memory, a process's life and size.

Kept apart from the rules (kssm_core.runbook.alerts) so that those stay pure: tests pass facts in.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass
class ProcessFacts:
    pid: int
    alive: bool
    rss_bytes: int | None = None
    cpu_seconds: float | None = None  # user + system CPU time used so far
    create_time: float | None = None
    name: str | None = None


@dataclass
class SystemFacts:
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    mem_available_bytes: int | None
    mem_total_bytes: int | None
    process: ProcessFacts | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def nearest_existing(path: str | Path) -> Path:
    """`path` or its nearest existing ancestor (a run folder may not exist before its stage starts)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def disk_usage(path: str | Path) -> tuple[int, int] | None:
    """(free, total) bytes of the file system holding `path` (or its nearest existing parent)."""
    try:
        u = shutil.disk_usage(nearest_existing(path))
    except OSError:
        return None
    return u.free, u.total


def memory() -> tuple[int, int] | None:
    """(available, total) bytes of RAM."""
    try:
        vm = psutil.virtual_memory()
    except (OSError, RuntimeError):
        return None
    return int(vm.available), int(vm.total)


def process(pid: int | None) -> ProcessFacts | None:
    if pid is None:
        return None
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:
                return ProcessFacts(pid, False)
            cpu = p.cpu_times()
            return ProcessFacts(pid, True, int(p.memory_info().rss), cpu.user + cpu.system, p.create_time(), p.name())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError):
        return ProcessFacts(pid, False)
    except psutil.AccessDenied:
        return ProcessFacts(pid, True)


def gather(path: str | Path, pid: int | None = None) -> SystemFacts:
    disk = disk_usage(path)
    mem = memory()
    return SystemFacts(
        disk[0] if disk else None, disk[1] if disk else None,
        mem[0] if mem else None, mem[1] if mem else None,
        process(pid),
    )


def cpu_percent() -> float:
    """System-wide CPU use since the previous call (the first call primes the counter and says 0.0)."""
    return float(psutil.cpu_percent(None))


class ProcessMeter:
    """A process's RSS and CPU use between calls; keeps the psutil handle so cpu_percent has a baseline."""

    def __init__(self) -> None:
        self._proc: psutil.Process | None = None

    def read(self, pid: int | None) -> tuple[int | None, float | None]:
        """(rss bytes, CPU percent since the last read) of `pid`; (None, None) when gone or unknown."""
        if pid is None:
            self._proc = None
            return None, None
        try:
            if self._proc is None or self._proc.pid != pid:
                self._proc = psutil.Process(pid)
                self._proc.cpu_percent(None)
            with self._proc.oneshot():
                return int(self._proc.memory_info().rss), float(self._proc.cpu_percent(None))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._proc = None
            return None, None
