"""The kssm-tui App: key table, lifecycle, and the glue between workers, controller and dashboard.

`kssm-tui [RUNS_ROOT] [--attach DIR] [--readonly]`. The App itself stays thin: the tail and
watch workers compute payloads off the event loop (kssm_tui.tail, kssm_tui.watch), the
controller starts and signals trainers (kssm_tui.controller), and the dashboard only copies
payloads into widgets. Keys are data (KEYS) so the footer, the help screen, the command
palette and read-only mode all read one table.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.worker import get_current_worker

from kssm_core.config import STAGES, stage as stage_of
from kssm_core.lock import LockHeld, lock_state, read_lock, unlock

from . import ascii_chrome, assess
from . import controller as ctl
from .dialogs.clean import CleanDialog
from .dialogs.confirm import ConfirmDialog
from .messages import FactsSampled, RunChanged, RunView, StageInfo, StagesChanged, TrainerExited, WorkerTrouble
from .screens.dashboard import CHARTS, Dashboard
from .screens.help import HelpScreen
from .safe_text import clean
from .tail import Monitor, monitor_loop
from .watch import WatchTarget, watch_loop

TAIL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Key:
    key: str
    action: str
    label: str
    help: str
    mutates: bool = False  # disabled under --readonly
    show: bool = True  # in the footer


KEYS: tuple[Key, ...] = (
    Key("n", "next_stage", "Next stage", "start the next stage (Stage 1 on a fresh machine)", mutates=True),
    Key("r", "resume", "Resume", "resume the shown run from its newest checkpoint (clears a stale lock)", mutates=True),
    Key("s", "stop", "Stop", "stop the trainer gracefully: it saves and exits (asks first)", mutates=True),
    Key("u", "unlock", "Unlock", "clear a stale lock (refuses a live one)", mutates=True),
    Key("c", "clean", "Clean", "delete old checkpoints (lists the files first)", mutates=True),
    Key("e", "eval", "Eval", "run `kssm eval all` on the shown run's best model", mutates=True, show=False),
    Key("l", "toggle_log", "Log", "log-scale toggle for val PPL and grad norm"),
    Key("m", "toggle_smooth", "Smooth", "smoothing toggle for the charts"),
    Key("g", "next_chart", "Chart", "show the next chart (loss, val PPL, R, u_val, grad norm)", show=False),
    Key("1-5", "select", "Stage", "show stage 1..5", show=False),
    Key("0", "show_attached", "Attached", "show the --attach folder again (after 1-5)", show=False),
    Key("?", "help", "Help", "this screen"),
    Key("q", "quit", "Quit", "quit; a running trainer keeps running"),
)
MUTATING = frozenset(k.action for k in KEYS if k.mutates)
MUTATING_KEYS = frozenset(k.key for k in KEYS if k.mutates)


def _bindings() -> list[Binding]:
    out = []
    for k in KEYS:
        if k.action == "select":
            out += [Binding(str(n), f"select({n})", f"Stage {n}", show=False, id=f"select_{n}") for n in range(1, 6)]
        else:
            key = "question_mark" if k.key == "?" else k.key
            out.append(Binding(key, k.action, k.label, show=k.show, id=k.action))
    return out


class KssmApp(App):
    """The training cockpit."""

    CSS_PATH = "app.tcss"
    TITLE = "kssm-tui"
    BINDINGS = _bindings()

    def __init__(self, runs_root: str | Path = "results", attach: str | Path | None = None, readonly: bool = False,
                 watch: bool = True, tail_interval: float = TAIL_INTERVAL_S, cwd: Path | None = None) -> None:
        ascii_chrome.apply()
        super().__init__()
        self.runs_root = Path(runs_root)
        self.attach = Path(attach) if attach else None
        self.readonly = readonly
        self.watch_enabled = watch
        self.tail_interval = tail_interval
        self.controller = ctl.TrainerController(cwd)
        self.monitor = Monitor(self.runs_root, self.attach)
        self.monitor.readonly = readonly
        self.stages: dict[int, StageInfo] = {}
        self.view: RunView | None = None
        self.log_y = False
        self.smoothing = False
        self.facts: dict = {}
        self._watch_target = WatchTarget(self.runs_root, None)
        self._failures_seen: dict[Path, set] = {}
        self._control = threading.Lock()  # see _in_thread

    def get_css_variables(self) -> dict[str, str]:
        return {**super().get_css_variables(), **ascii_chrome.css_variables()}

    # ---- lifecycle --------------------------------------------------------------------------------
    def get_default_screen(self) -> Dashboard:
        return Dashboard()

    @property
    def dash(self) -> Dashboard:
        return self.screen_stack[0]  # the default screen (dialogs stack above it)

    def on_ready(self) -> None:
        """After the dashboard is composed: find a live run to attach to, start the workers."""
        if self.attach is None:
            live = ctl.live_stage(self.runs_root)
            self.monitor.selected = live or self._newest_started() or 1
            if live:
                self.say(f"attached to the live trainer of Stage {live}", timeout=4)
        self._set_title()
        self.run_worker(self._tail_body, thread=True, group="tail", name="tail", exit_on_error=False)
        if self.watch_enabled:
            self.run_worker(self._watch_body, thread=True, group="watch", name="watch", exit_on_error=False)
        self.set_interval(1.0, self._reap)

    def _newest_started(self) -> int | None:
        started = [s.number for s in STAGES if (self.runs_root / s.output_dir / "events.jsonl").exists()]
        return max(started) if started else None

    def _tail_body(self) -> None:
        worker = get_current_worker()
        monitor_loop(self.post_message, self.monitor, self.tail_interval, lambda: worker.is_cancelled)

    def _watch_body(self) -> None:
        worker = get_current_worker()
        watch_loop(self.post_message, lambda: self._watch_target, lambda: worker.is_cancelled)

    def _set_title(self) -> None:
        t = Text()
        t.append(" kssm-tui ", style="bold reverse")
        t.append(clean(f" {self.runs_root}" if self.attach is None else f" attached: {self.attach}"))
        if self.readonly:
            t.append("  [READ-ONLY]", style="bold yellow")
        if self.view is not None and self.view.lock_state == "live":
            t.append(f"  live trainer PID {self.view.lock_pid}", style="cyan")
        t.append(f"  log:{'on' if self.log_y else 'off'} smooth:{'on' if self.smoothing else 'off'}", style="dim")
        self.dash.set_title(t)

    @property
    def selected(self) -> int | None:
        return self.monitor.selected

    def shown_dir(self) -> Path:
        return self.monitor.shown_folder()[0]

    def say(self, text: str, **kw) -> None:
        """A toast. Its text carries paths, lock fields and error messages: plain text, never markup."""
        self.notify(clean(text), markup=False, **kw)

    # ---- messages from workers --------------------------------------------------------------------
    def _dash_gone(self) -> bool:
        """While the App shuts down, worker messages may still arrive after the widgets are gone."""
        return self._exit or not self.screen_stack or not self.dash.children or not self.dash.is_attached

    def on_stages_changed(self, msg: StagesChanged) -> None:
        self.stages = msg.stages
        if self._dash_gone():
            return
        try:
            self.dash.show_stages(self.stages, self._current_stage(), self.selected)
        except NoMatches:  # torn down meanwhile
            pass

    def on_run_changed(self, msg: RunChanged) -> None:
        view = msg.view
        self.view = view
        if self._dash_gone():
            return
        try:
            self._apply_view(view)
        except NoMatches:  # the dashboard is being torn down (quit while a view was in flight)
            pass
        self.call_after_refresh(self.monitor.painted.set)  # the tail worker may read on

    def _apply_view(self, view: RunView) -> None:
        self.dash.show_view(view, self.log_y, self.smoothing)
        pid = view.lock_pid if view.lock_state == "live" else None
        if pid is None and self.controller.child_alive() and self.controller.child.run_dir == view.run_dir:
            pid = self.controller.child.proc.pid
        self._watch_target = WatchTarget(view.run_dir, pid)
        self._set_title()
        self._update_alert(view)
        self._merge_facts()

    def on_facts_sampled(self, msg: FactsSampled) -> None:
        self.facts = msg.facts
        if not self._dash_gone():
            try:
                self._merge_facts()
            except NoMatches:  # torn down meanwhile
                pass

    def on_worker_trouble(self, msg: WorkerTrouble) -> None:
        self.say(msg.text, severity="error", timeout=10)

    def on_worker_state_changed(self, event) -> None:
        """A worker that died anyway (a bug) is reported, not silently lost."""
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR:
            err = event.worker.error
            self.say(f"{event.worker.name} worker stopped: {type(err).__name__}: {err}", severity="error",
                        timeout=15)

    def on_trainer_exited(self, msg: TrainerExited) -> None:
        severity = "information" if msg.kind == "completed" else ("warning" if msg.kind == "interrupted" else "error")
        self.say(msg.detail or msg.kind, severity=severity, timeout=8)
        self.monitor.force.set()

    def _merge_facts(self) -> None:
        v = self.view
        facts = dict(self.facts) if self.watch_enabled else {}
        facts.setdefault("disk_free_bytes", None)
        facts.setdefault("trainer_rss_bytes", None)
        facts.setdefault("mem_available_bytes", None)
        facts.setdefault("mem_total_bytes", None)
        facts.setdefault("cpu_percent", None)
        facts["gpu_mem_bytes"] = v.gpu_mem_bytes if v else None
        facts["disk_needed_bytes"] = v.disk_needed_bytes if v else None
        age = None
        if self.watch_enabled and v and v.state == "running" and v.last_heartbeat_t is not None:
            age = max(0.0, time.time() - v.last_heartbeat_t)  # wall clock: left out of snapshot tests
        facts["heartbeat_age_s"] = age
        self.dash.show_facts(facts)

    def _update_alert(self, view: RunView) -> None:
        from kssm_core.verdicts import Verdict

        fails = {(r.stage, r.metric) for r in view.matrix_rows if r.verdict == Verdict.FAILURE}
        seen = self._failures_seen.get(view.run_dir)
        if seen is not None and fails - seen:
            self.bell()  # once per new Failure, not for ones already there when the run was opened
        self._failures_seen[view.run_dir] = (seen or set()) | fails
        failed_rows = [r for r in view.matrix_rows if r.verdict == Verdict.FAILURE]
        if view.state == "crashed":
            hint = "" if self.readonly else ": press r to resume"
            self.dash.alert(f"Stage {view.stage or '?'} crashed: {view.state_reason}{hint}", "critical")
        elif failed_rows:
            r = failed_rows[0]
            self.dash.alert(f"Failure: Stage {r.stage} {r.metric}: {r.reason}", "critical")
        elif view.alerts:
            a = max(view.alerts, key=lambda a: {"info": 0, "warning": 1, "critical": 2}.get(getattr(a.severity, "value", ""), 0))
            sev = getattr(a.severity, "value", "warning")
            self.dash.alert(f"{a.message}", "critical" if sev == "critical" else "warning")
        else:
            self.dash.alert(None)

    def _reap(self) -> None:
        """Timer: collect our child's exit status without blocking (Popen.poll)."""
        self.controller.reap_others()
        for run_dir, rc in self.controller.finished_evals():
            self._in_thread(lambda d=run_dir, rc=rc: self._report_eval(d, rc))
        done = self.controller.poll()
        if done is None:
            return
        spawned, rc = done
        # One line: the run panel shows trainer.out's tail for a crash (read by the tail worker, not here).
        self.post_message(TrainerExited(spawned.run_dir, rc, ctl.classify_exit(rc), ctl.describe_exit(rc)))

    # ---- key handling -----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.screen, ModalScreen) and action in {k.action for k in KEYS} | {"select"}:
            return False  # the dialog owns the keyboard
        if self.readonly and action in MUTATING:
            return False
        return True

    def on_key(self, event) -> None:
        """Under --readonly a key that would change something says so instead of doing nothing silently."""
        if self.readonly and event.key in MUTATING_KEYS and not isinstance(self.screen, ModalScreen):
            self.say(f"read-only (--readonly): '{event.key}' would change the run, so it is off", timeout=3)

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for k in KEYS:
            if k.action == "select" or (self.readonly and k.mutates) or k.action in ("help", "quit"):
                continue
            yield SystemCommand(k.label, k.help, getattr(self, f"action_{k.action}"))

    def _current_stage(self) -> int | None:
        """The stage in progress: a running one, else the newest started one."""
        return assess.current_stage({n: s.state for n, s in self.stages.items()})

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
        command, run_dir = ctl.stage_command(self.runs_root, number), ctl.stage_dir(self.runs_root, number)
        self._in_thread(lambda: self._spawn(command, run_dir, f"Stage {number} started"))
        self.dash.show_stages(self.stages, number, number)

    def action_next_stage(self) -> None:
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
            self.say(f"Stage {cur} is {info.state}: press r to resume it first", severity="warning")
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
        run_dir = self.shown_dir()
        v = self.view if self.view is not None and self.view.run_dir == run_dir else None
        if v is not None and v.end_status == "completed":
            self.say(f"{run_dir.name} finished ({v.state}): nothing to resume; press n for the next stage",
                     severity="warning")
            return
        if v is not None and v.state == "failed" and v.last_step is None:  # it never started: resume cannot help
            self.say(f"not resuming: {v.state_reason}; fix that, then press n to start it again", severity="warning")
            return
        if v is not None and v.end_reason == "nan_loss":  # the same settings would diverge again
            self.say(f"not resuming: the loss went NaN; {v.recommendation}", severity="warning", timeout=10)
            return
        target = v.max_steps if v is not None else None
        if target is None and self.monitor.shown_folder()[1]:
            target = stage_of(self.monitor.shown_folder()[1]).steps
        self._in_thread(lambda: self._resume(run_dir, target))

    def _resume(self, run_dir: Path, target: int | None) -> None:
        """Thread: clear a provably stale lock (no second prompt), then `kssm train --resume`."""
        state, why = lock_state(read_lock(run_dir))
        if state in ("live", "foreign") or self.controller.child_alive():
            self._say_from_thread(f"not resuming: {why}", severity="warning")
            return
        if not (run_dir / "events.jsonl").exists() and not any(run_dir.glob("checkpoint_*.pt")):
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
        from kssm_core.checkpoint import CheckpointError, plan_clean  # imports torch: only when cleaning

        run_dir = self.shown_dir()
        try:
            plan = plan_clean(run_dir)
        except (CheckpointError, OSError) as exc:
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
        from kssm_core.checkpoint import execute_clean

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
        if not (run_dir / "best_model.pt").is_file():
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
        self._say_from_thread(f"evaluation started: output in {run_dir / 'eval.out'}, results in {run_dir / 'eval'}")

    def _report_eval(self, run_dir: Path, rc: int) -> None:
        """Thread: say how an evaluation we started ended (eval/summary.json's verdict when it wrote one)."""
        summary = ctl.eval_summary(run_dir)
        if summary is not None:
            self._say_from_thread(f"evaluation of {run_dir} finished: {summary}",
                                  severity="information" if summary.startswith("PASS") else "warning", timeout=10)
        else:
            self._say_from_thread(f"evaluation of {run_dir} ended (exit {rc}) without a summary: see "
                                  f"{run_dir / 'eval.out'}", severity="error", timeout=10)

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self._redraw_charts()

    def action_toggle_smooth(self) -> None:
        self.smoothing = not self.smoothing
        self._redraw_charts()

    def _redraw_charts(self) -> None:
        if self.view is not None:
            self.dash.show_charts(self.view, self.log_y, self.smoothing)
        self._set_title()

    def action_next_chart(self) -> None:
        tabs = self.dash.query_one("#charts")
        keys = [f"tab-{k}" for k, _ in CHARTS]
        cur = tabs.active
        tabs.active = keys[(keys.index(cur) + 1) % len(keys)] if cur in keys else keys[0]

    def action_select(self, number: int) -> None:
        self.monitor.selected = int(number)
        self.monitor.force.set()
        self.dash.show_stages(self.stages, self._current_stage(), self.selected)

    def action_show_attached(self) -> None:
        if self.attach is None:
            self.say("no --attach folder: keys 1-5 pick a stage", timeout=4)
            return
        self.monitor.selected = None  # the Monitor shows the attached folder when no stage is selected
        self.monitor.force.set()
        self.dash.show_stages(self.stages, self._current_stage(), self.selected)

    def action_help(self) -> None:
        self.push_screen(HelpScreen([(k.key, k.help, k.mutates) for k in KEYS], self.readonly))

    async def action_quit(self) -> None:
        self.exit(message=self.quit_message())

    def quit_message(self) -> str | None:
        pid = self.controller.child.proc.pid if self.controller.child_alive() else None
        run = self.controller.child.run_dir if pid else None
        if pid is None and self.view is not None and self.view.lock_state == "live":
            pid, run = self.view.lock_pid, self.view.run_dir
        if pid is None:
            return None
        return f"kssm-tui: the trainer (PID {pid}) keeps running in {run}; run kssm-tui again to attach."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kssm-tui", description="The K-SSM training cockpit.")
    p.add_argument("runs_root", nargs="?", default="results", metavar="RUNS_ROOT",
                   help="folder holding stage1..stage4 and final (default: ./results)")
    p.add_argument("--attach", metavar="DIR", help="watch this run folder (any run, including legacy ones)")
    p.add_argument("--readonly", action="store_true", help="disable every key that changes anything")
    args = p.parse_args(argv)
    if args.attach and not Path(args.attach).is_dir():
        print(f"kssm-tui: {args.attach} is not a folder; pass a run folder (e.g. results/stage1)", file=sys.stderr)
        return 2
    root = Path(args.runs_root)
    if root.exists() and not root.is_dir():
        print(f"kssm-tui: {root} is a file, not a runs folder", file=sys.stderr)
        return 2
    app = KssmApp(root, attach=args.attach, readonly=args.readonly)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
