"""The `a` key: start `kssm autopilot` as its own detached process after a confirmation that shows the plan
and its budgets, or, when one drives this runs root, stop it (asking first; its trainer keeps running).

A mixin of the App, like run_actions: file reads and the spawn run in the serial thread worker, dialogs on
the event loop. The autopilot's output goes to RUNS_ROOT/autopilot/autopilot.out; quitting the cockpit or
losing SSH leaves it running (own session), and `kssm status` / the next `a` find it through its lock.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from kssm_core.autopilot.lock import autopilot_lock_state
from kssm_core.autopilot.plan import PlanError, load_plan
from kssm_core.autopilot.state import autopilot_dir, describe, summary
from kssm_core.runbook import cmdline
from kssm_core.runfolder import layout

from .dialogs.confirm import ConfirmDialog


class AutopilotActions:
    """Expects from the App: runs_root, plan_path, controller, say(), push_screen(), _in_thread()."""

    plan_path: Path | None = None

    def action_autopilot(self) -> None:
        self._in_thread(self._autopilot_job)

    def _autopilot_job(self) -> None:
        found = summary(self.runs_root)
        if found is not None and found.get("alive"):
            pid = found.get("pid")
            lines = describe(found) + ["", f"Stop sends SIGTERM to autopilot PID {pid}: it logs 'stopped' and exits;",
                                       "its trainer keeps running (start the autopilot again to re-attach)."]
            self.call_from_thread(self._ask_stop_autopilot, pid, lines)
            return
        try:
            plan = load_plan(self.plan_path)
        except PlanError as exc:
            self.call_from_thread(self.say, f"autopilot: {exc}", severity="error")
            return
        out = autopilot_dir(self.runs_root) / layout.AUTOPILOT_OUT
        lines = [*plan.describe(), "",
                 f"It runs detached (output in {out}): quitting the cockpit or losing SSH leaves it running.",
                 "It starts, judges and recovers trainers itself; while it runs, leave n / r / s to it."]
        if found is not None:
            lines.insert(0, f"carries on from {found['state_file']} (status {found.get('status')})")
        self.call_from_thread(self._ask_start_autopilot, lines)

    def _ask_start_autopilot(self, lines: list[str]) -> None:
        def done(ok: bool | None) -> None:
            if ok:
                self._in_thread(self._start_autopilot)

        self.push_screen(ConfirmDialog(f"Start the autopilot on {self.runs_root}?", lines, "Start autopilot",
                                       destructive=False), done)

    def _start_autopilot(self) -> None:
        argv = cmdline.autopilot(self.runs_root, self.plan_path)
        folder = autopilot_dir(self.runs_root)
        try:
            proc = self.controller.launch(cmdline.spawnable(argv), folder, layout.AUTOPILOT_OUT)
        except OSError as exc:
            self.call_from_thread(self.say, f"could not start the autopilot: {exc}", severity="error")
            return
        self.call_from_thread(self.say, f"autopilot started: PID {proc.pid}, output in {folder / layout.AUTOPILOT_OUT}",
                              timeout=6)

    def _ask_stop_autopilot(self, pid: int | None, lines: list[str]) -> None:
        def done(ok: bool | None) -> None:
            if ok:
                self._in_thread(lambda: self._stop_autopilot(pid))

        self.push_screen(ConfirmDialog("Stop the autopilot?", lines, "Stop autopilot"), done)

    def _stop_autopilot(self, pid: int | None) -> None:
        state, _, info = autopilot_lock_state(autopilot_dir(self.runs_root))
        if state != "live" or info is None or info.pid != pid or not pid:
            self.call_from_thread(self.say, "not stopping: the autopilot that was shown is no longer the one running",
                                  severity="warning")
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError) as exc:
            self.call_from_thread(self.say, f"could not signal autopilot PID {pid}: {exc}", severity="error")
            return
        self.call_from_thread(self.say, f"sent SIGTERM to autopilot PID {pid}; its trainer keeps running", timeout=6)
