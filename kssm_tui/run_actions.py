"""The keys that change a run (n, r, s, u, c, e), as a mixin of the App.

Decisions that only read the view happen on the event loop; everything that touches the disk or a
process (lock files, spawning, signalling, deleting) runs in one serial thread worker (`_in_thread`),
and dialogs are pushed back on the event loop. Expects from the App: controller, monitor, view,
stages, runs_root, dash, say(), shown_dir(), _current_stage() and the `_control` lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from textual.worker import get_current_worker

from kssm_core.runbook.stages import stage as stage_of
from kssm_core.runbook.status import run_status
from kssm_core.runfolder import layout
from kssm_core.runfolder.lock import LockHeld, lock_state, read_lock, unlock

from . import controller as ctl
from .dialogs.clean import CleanDialog
from .dialogs.confirm import ConfirmDialog


class RunActions:
    """n / r / s / u / c / e and the thread jobs behind them."""

    def _in_thread(self, job: Callable[[], None]) -> None:
        """Lock files, process spawns and signals run in a thread worker: the event loop never waits on them.
        One job at a time, in key order, so each sees what the previous one did (e.g. n pressed twice)."""
        def serial() -> None:
            with self._control:
                job()

        self.run_worker(serial, thread=True, group="control", exit_on_error=False)

    def _say_from_thread(self, text: str, **kw) -> None:
        self.call_from_thread(self.say, text, **kw)

    def _spawn(self, command: list[str], run_dir: Path, what: str) -> None:
        """Thread: start the trainer and say so."""
        if self.controller.child_alive():
            self._say_from_thread("a trainer is already running: stop it (s) or wait", severity="warning")
            return
        try:
            child = self.controller.spawn(command, run_dir)
        except OSError as exc:
            self._say_from_thread(f"could not start the trainer: {exc}", severity="error")
            return
        self._say_from_thread(f"{what}: trainer PID {child.proc.pid}, output in {run_dir / ctl.TRAINER_OUT}",
                              timeout=5)
        self.monitor.force.set()

    def _start_stage(self, number: int) -> None:
        self.monitor.selected = number
        prev = self.stages.get(number - 1)
        advised = prev.status.recommendation.argv if prev is not None and prev.status is not None else None
        run_dir = ctl.stage_dir(self.runs_root, number)
        # The command is built in the thread: it looks for the previous stage's best model on disk.
        self._in_thread(lambda: self._spawn(ctl.stage_command(self.runs_root, number, advised), run_dir,
                                            f"Stage {number} started"))
        self.dash.show_stages(self.stages, number, number)

    def _autopilot_drives(self) -> bool:
        """While an autopilot runs, the keys that start or stop trainers are its (a stops it first)."""
        pid = self.view.autopilot_pid if self.view is not None else None
        if pid:
            self.say(f"the autopilot (PID {pid}) drives {self.runs_root}: it starts, judges and recovers trainers; "
                     "press a to stop it first", severity="warning")
        return bool(pid)

    def action_next_stage(self) -> None:
        if self._autopilot_drives():
            return
        if self.attach is not None and self.monitor.selected is None and self.attach not in self.monitor.folders.values():
            # The attached folder is not one of RUNS_ROOT's stages: n would start something elsewhere, unasked.
            advice = self.view.status.recommendation.text if self.view is not None and self.view.status else ""
            self.say(f"n starts the runbook's stages under {self.runs_root}; press 1-5 to pick one first"
                     + (f" (for {self.attach.name}: {advice})" if advice else ""), severity="warning", timeout=10)
            return
        if self.controller.child_alive() or any(s.state == "running" for s in self.stages.values()):
            self.say("a trainer is already running: stop it (s) or wait", severity="warning")
            return
        if not self.stages:
            self.say("still reading the run folders; try again in a moment", severity="warning")
            return
        cur = self._current_stage()
        if cur is None:
            self._start_stage(1)
            return
        info = self.stages[cur]
        if info.step is None and info.state in ("failed", "not started"):  # it never trained: try it again
            self._start_stage(cur)
            return
        if info.state in ("crashed", "interrupted", "stale lock"):
            how = "press r" if self.monitor.selected in (cur, None) else f"press {cur}, then r,"  # r acts on the shown stage
            self.say(f"Stage {cur} ({info.state}): {how} to resume it first", severity="warning")
            return
        if cur >= 5:
            self.say(f"Stage 5 is the last stage ({info.state}): run the evaluation suite (e)")
            return
        nxt = min(cur + 1, 5)
        if info.state == "passed":
            self._start_stage(nxt)
            return
        why = list(info.failed_rows) or [f"Stage {cur} is {info.state} (verdict: {info.verdict or 'none yet'})"]
        lines = [f"Stage {cur} has not passed the decision matrix:"] + [f"  {w}" for w in why]

        def done(ok: bool | None) -> None:
            if ok:
                self._start_stage(nxt)

        self.push_screen(ConfirmDialog(f"Start Stage {nxt} anyway?", lines, f"Start Stage {nxt}"), done)

    def action_resume(self) -> None:
        if self._autopilot_drives():
            return
        run_dir = self.shown_dir()
        v = self.view if self.view is not None and self.view.run_dir == run_dir else None
        if v is not None and v.status is not None and v.status.source == "legacy":  # never continued in place
            self.say(f"not resuming in {run_dir.name}: a reference-trainer run is never written to; "
                     f"{v.status.recommendation.text}", severity="warning", timeout=12)
            return
        rec = v.status.recommendation.code if v is not None and v.status is not None else None
        if v is not None and v.end_status == "completed" and rec != "no_final_checkpoint":  # (that one: resume)
            self.say(f"{run_dir.name} finished ({v.state}): nothing to resume; press n for the next stage",
                     severity="warning")
            return
        if v is not None and v.state == "failed" and v.last_step is None:  # it never started: resume cannot help
            self.say(f"not resuming: {v.state_reason}; fix that, then press n to start it again", severity="warning")
            return
        if v is not None and v.end_reason == "nan_loss":  # the same settings would diverge again
            self.say(f"not resuming: the loss went NaN; {v.recommendation}", severity="warning", timeout=10)
            return
        if v is not None and v.status is not None and v.status.state == "running":
            self.say(f"not resuming: {v.status.state_reason}", severity="warning")
            return
        target = v.max_steps if v is not None else None
        if target is None and self.monitor.shown_folder()[1]:
            target = stage_of(self.monitor.shown_folder()[1]).steps
        self._in_thread(lambda: self._resume(run_dir, target))

    def _resume(self, run_dir: Path, target: int | None) -> None:
        """Thread: clear a provably stale lock (no second prompt), then `kssm train --resume`."""
        if self.controller.child_alive():  # e.g. r pressed again while the first resume is still starting
            pid = self.controller.child.proc.pid
            self._say_from_thread(f"not resuming: a trainer this cockpit started is running (PID {pid})",
                                  severity="warning")
            return
        st = run_status(run_dir)  # judged afresh: the trainer may have come back to life, lock or no lock
        if st.state == "running" or st.lock in ("live", "foreign"):
            self._say_from_thread(f"not resuming: {st.state_reason}", severity="warning")
            return
        if st.source == "legacy":
            self._say_from_thread(f"not resuming: {run_dir.name} is a reference-trainer run; "
                                  f"{st.recommendation.text}", severity="warning", timeout=12)
            return
        state = st.lock
        if not (run_dir / layout.EVENTS).exists() and layout.newest_checkpoint_file(run_dir) is None:
            self._say_from_thread(f"nothing to resume in {run_dir}: press n to start a stage", severity="warning")
            return
        if state == "stale":
            try:
                unlock(run_dir)
            except LockHeld as exc:
                self._say_from_thread(str(exc), severity="error")
                return
        self._spawn(ctl.resume_command(run_dir, target), run_dir, f"resuming {run_dir.name}")

    def action_stop(self) -> None:
        if self._autopilot_drives():
            return
        run_dir = self.shown_dir()
        self._in_thread(lambda: self._ask_stop(run_dir))

    def _ask_stop(self, run_dir: Path) -> None:
        """Thread: find the trainer's PID, then ask on the event loop; the SIGTERM goes from a thread again."""
        pid = self.controller.trainer_pid(run_dir)
        if pid is None:
            self._say_from_thread(f"no live trainer in {run_dir}", severity="warning")
            return

        def done(ok: bool | None) -> None:
            if ok:  # to the PID confirmed, not whoever holds the folder by now
                self._in_thread(lambda: self._say_from_thread(self.controller.stop(run_dir, expected_pid=pid)))

        self.call_from_thread(self.push_screen, ConfirmDialog(
            "Stop the trainer?",
            [f"Send SIGTERM to trainer PID {pid} in {run_dir}.",
             "It finishes the current step, saves a checkpoint and exits (130).", "Resume later with r."],
            "Stop", destructive=True), done)

    def action_unlock(self) -> None:
        run_dir = self.shown_dir()

        def job() -> None:
            try:
                self._say_from_thread(unlock(run_dir))
            except LockHeld as exc:
                self._say_from_thread(str(exc), severity="error", timeout=6)
            self.monitor.force.set()

        self._in_thread(job)

    def action_clean(self) -> None:
        self.run_worker(self._plan_clean, thread=True, group="clean", exclusive=True, exit_on_error=False)

    def _plan_clean(self) -> None:
        """Thread: plan_clean loads checkpoints to find the newest good one (slow for big files)."""
        from kssm_core.runfolder.cleaning import CleanError, plan_clean

        run_dir = self.shown_dir()
        try:
            plan = plan_clean(run_dir)
        except (CleanError, OSError) as exc:
            self.call_from_thread(self.say, f"cannot plan a clean of {run_dir}: {exc}", severity="error")
            return
        live = lock_state(read_lock(run_dir))[0] == "live"
        if get_current_worker().is_cancelled:  # `c` pressed again meanwhile: that worker asks instead
            return
        self.call_from_thread(self._ask_clean, run_dir, plan, live)

    def _ask_clean(self, run_dir: Path, plan, live: bool) -> None:
        if not plan.delete:
            self.say(f"nothing to clean in {run_dir}")
            return

        def done(ok: bool | None) -> None:
            if ok:
                self.run_worker(lambda: self._execute_clean(run_dir, plan), thread=True, group="clean",
                                exit_on_error=False)

        self.push_screen(CleanDialog(run_dir, plan, live), done)

    def _execute_clean(self, run_dir: Path, plan) -> None:
        """Thread: deleting multi-GB files can take seconds on a network file system."""
        from kssm_core.runfolder.cleaning import execute_clean

        freed, problems = execute_clean(plan)
        text = f"freed {freed / 1e6:.1f} MB in {run_dir}"
        if problems:
            text += f"; could not delete {len(problems)}: " + "; ".join(problems)
        self.call_from_thread(self.say, text, severity="warning" if problems else "information")

    def action_eval(self) -> None:
        run_dir = self.shown_dir()
        self._in_thread(lambda: self._eval(run_dir))

    def _eval(self, run_dir: Path) -> None:
        """Thread: start `kssm eval all` on the run's best model."""
        if not (run_dir / layout.BEST_MODEL).is_file():
            self._say_from_thread(f"no best_model.pt in {run_dir} yet", severity="warning")
            return
        try:
            self.controller.start_eval(run_dir)
        except ctl.EvalBusy as exc:
            self._say_from_thread(str(exc), severity="warning")
            return
        except OSError as exc:
            self._say_from_thread(f"could not start the evaluation: {exc}", severity="error")
            return
        self._say_from_thread(f"evaluation started: output in {run_dir / layout.EVAL_OUT}, results in {run_dir / layout.EVAL_DIR}")

    def _report_eval(self, run_dir: Path, rc: int) -> None:
        """Thread: say how an evaluation we started ended (eval/summary.json's verdict when it wrote one)."""
        summary = ctl.eval_summary(run_dir)
        if summary is not None:
            self._say_from_thread(f"evaluation of {run_dir} finished: {summary}",
                                  severity="information" if summary.startswith("PASS") else "warning", timeout=10)
        else:
            self._say_from_thread(f"evaluation of {run_dir} ended (exit {rc}) without a summary: see "
                                  f"{run_dir / layout.EVAL_OUT}", severity="error", timeout=10)
