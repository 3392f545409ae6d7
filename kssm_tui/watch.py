"""Disk and memory watch: psutil facts sampled at most every 2 s in a thread worker.

Free space on the run's filesystem, trainer RSS and CPU, system memory and CPU. The App
says which folder and PID to watch through `WatchTarget` (replaced whole, so a read in the
worker sees one consistent pair); the worker posts FactsSampled only when a value changed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from .messages import FactsSampled

MIN_INTERVAL_S = 2.0


@dataclass(frozen=True)
class WatchTarget:
    folder: Path
    pid: int | None


def _existing(folder: Path) -> Path:
    """The nearest existing ancestor (the run folder may not exist before Stage 1 starts)."""
    p = Path(folder).absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


class Sampler:
    """One psutil sample per call; keeps the Process object so cpu_percent has a baseline."""

    def __init__(self) -> None:
        self._proc: psutil.Process | None = None
        psutil.cpu_percent(None)  # first call primes the system-wide counter

    def sample(self, target: WatchTarget) -> dict:
        facts: dict = {"disk_free_bytes": None, "trainer_rss_bytes": None, "trainer_cpu_percent": None}
        try:
            facts["disk_free_bytes"] = shutil.disk_usage(_existing(target.folder)).free
        except OSError:
            pass
        vm = psutil.virtual_memory()
        facts["mem_available_bytes"] = vm.available
        facts["mem_total_bytes"] = vm.total
        facts["cpu_percent"] = psutil.cpu_percent(None)
        if target.pid is not None:
            try:
                if self._proc is None or self._proc.pid != target.pid:
                    self._proc = psutil.Process(target.pid)
                    self._proc.cpu_percent(None)
                with self._proc.oneshot():
                    facts["trainer_rss_bytes"] = self._proc.memory_info().rss
                    facts["trainer_cpu_percent"] = self._proc.cpu_percent(None)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._proc = None
        else:
            self._proc = None
        return facts


def watch_loop(post: Callable, target: Callable[[], WatchTarget], cancelled: Callable[[], bool],
               interval: float = MIN_INTERVAL_S) -> None:
    """Body of the watch worker: sample, post when changed, sleep (interval is never below 2 s)."""
    interval = max(MIN_INTERVAL_S, interval)
    sampler = Sampler()
    last: dict | None = None
    while not cancelled():
        started = time.monotonic()
        facts = sampler.sample(target())
        if facts != last:
            last = facts
            post(FactsSampled(dict(facts)))
        while not cancelled() and time.monotonic() - started < interval:
            time.sleep(0.2)
