"""Disk and memory watch: kssm_core.runfolder.system facts sampled at most every 2 s in a thread worker.

Free space on the run's filesystem, trainer RSS and CPU, system memory and CPU. The App
says which folder and PID to watch through `WatchTarget` (replaced whole, so a read in the
worker sees one consistent pair); the worker posts FactsSampled only when a value changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kssm_core.runfolder import system

from .messages import FactsSampled

MIN_INTERVAL_S = 2.0


@dataclass(frozen=True)
class WatchTarget:
    folder: Path
    pid: int | None


class Sampler:
    """One sample of the facts the resource panel shows, read through kssm_core.runfolder.system."""

    def __init__(self) -> None:
        self._trainer = system.ProcessMeter()
        system.cpu_percent()  # primes the system-wide counter

    def sample(self, target: WatchTarget) -> dict:
        disk = system.disk_usage(target.folder)
        mem = system.memory()
        rss, cpu = self._trainer.read(target.pid)
        return {
            "disk_free_bytes": disk[0] if disk else None,
            "mem_available_bytes": mem[0] if mem else None,
            "mem_total_bytes": mem[1] if mem else None,
            "cpu_percent": system.cpu_percent(),
            "trainer_rss_bytes": rss,
            "trainer_cpu_percent": cpu,
        }


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
