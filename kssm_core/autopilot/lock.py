"""One autopilot per runs root: RUNS_ROOT/autopilot/autopilot.lock under the training.lock rules.

The same RunLock / lock_state as a trainer's lock (kssm_core.runfolder.lock): created complete or not at
all, stale only when provably so (this host, PID gone or reused), a stale one taken over; a live or
foreign one refuses a second autopilot (exit 2).
"""

from __future__ import annotations

from pathlib import Path

from kssm_core.runfolder import layout
from kssm_core.runfolder.lock import LockHeld, LockInfo, RunLock, lock_state, read_lock


class AutopilotBusy(Exception):
    """Another autopilot drives this runs root; one line."""


def autopilot_lock_state(folder: str | Path) -> tuple[str, str, LockInfo | None]:
    """(none | live | stale | foreign, reason, the lock) of RUNS_ROOT/autopilot/."""
    info = read_lock(folder, layout.AUTOPILOT_LOCK)
    state, reason = lock_state(info, layout.AUTOPILOT_LOCK)
    return state, reason, info


class AutopilotLock:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._lock = RunLock(self.folder, layout.AUTOPILOT_LOCK)
        self.took_over: LockInfo | None = None

    def acquire(self) -> LockInfo | None:
        """Take the lock (returns the stale lock it took over, if any) or raise AutopilotBusy."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.took_over = self._lock.acquire()
        except LockHeld:
            state, reason, info = autopilot_lock_state(self.folder)
            who = f" (PID {info.pid})" if info is not None and info.pid else ""
            raise AutopilotBusy(f"another autopilot drives {self.folder.parent}{who}: {reason}") from None
        return self.took_over

    def release(self) -> None:
        self._lock.release()
