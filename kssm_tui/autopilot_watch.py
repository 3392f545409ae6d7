"""What the cockpit shows of an autopilot driving its runs root (read in the tail worker, no Textual).

`AutopilotWatch.poll()` reads RUNS_ROOT/autopilot/ (state.json, decisions.jsonl, its lock) through
kssm_core.autopilot.state.summary only when one of those files changed, and hands over: one line for the
run panel (what it is doing, and will do next), whether it is alive (the keys that would fight it are then
off), the stage it is on (the dashboard follows it), and its new decisions as event-log entries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kssm_core.autopilot.state import autopilot_dir, read_decisions, summary
from kssm_core.runfolder import layout

from .safe_text import clean


@dataclass(frozen=True)
class AutopilotInfo:
    line: str  # "AUTOPILOT RUNNING (PID 123): stage 3, attempt 2; next: ..."
    alive: bool
    stage: int | None
    pid: int | None
    new_entries: list[tuple[str, str]] = field(default_factory=list)


def _sig(folder: Path) -> tuple:
    out = []
    for name in (layout.AUTOPILOT_STATE, layout.AUTOPILOT_DECISIONS, layout.AUTOPILOT_LOCK):
        try:
            st = os.stat(folder / name)
            out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None))
    return tuple(out)


def entry_for(d: dict) -> tuple[str, str]:
    where = f"stage {d.get('stage')}" if d.get("stage") else "plan"
    return "autopilot", clean(f"{where}: {d.get('decision')}: {d.get('reason')}")


def line_for(s: dict) -> str:
    status = str(s.get("status") or "?")
    if status == "running" and not s.get("alive"):
        return f"AUTOPILOT NOT RUNNING (its state says running; {s.get('lock_reason')}): press a to start it again"
    head = f"AUTOPILOT {status.upper()}" + (f" (PID {s['pid']})" if s.get("alive") and s.get("pid") else "")
    if s.get("stage"):
        head += f": stage {s['stage']} ({s.get('stage_name')}), attempt {s.get('attempt') or '-'}"
    held = s.get("held")
    if held:
        head += f"; held at stage {held.get('stage')}: {held.get('why')}"
    if s.get("next"):
        head += f"; next: {s['next']}"
    return clean(head)


class AutopilotWatch:
    def __init__(self, runs_root: Path):
        self.runs_root = Path(runs_root)
        self._sig: tuple | None = None
        self._seen = 0  # decisions already handed over
        self.info: AutopilotInfo | None = None

    def poll(self) -> AutopilotInfo | None:
        """The current info (None: no autopilot ever ran here); new_entries only on the call that found them."""
        folder = autopilot_dir(self.runs_root)
        sig = _sig(folder)
        if sig == self._sig:
            return self.info and AutopilotInfo(self.info.line, self.info.alive, self.info.stage, self.info.pid)
        self._sig = sig
        s = summary(self.runs_root, decisions=0)
        if s is None:
            self.info = None
            return None
        decisions = read_decisions(self.runs_root)
        new = [entry_for(d) for d in decisions[self._seen:]][-50:]
        self._seen = len(decisions)
        self.info = AutopilotInfo(line_for(s), bool(s.get("alive")), s.get("stage"),
                                  s.get("pid") if s.get("alive") else None, new)
        return self.info
