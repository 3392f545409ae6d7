"""The kssm-tui App: lifecycle and the glue between workers, controller and dashboard.

`kssm-tui [RUNS_ROOT] [--attach DIR] [--compare DIR ...] [--reference FILE] [--readonly]`. The App itself stays
thin: the tail, runs and watch workers compute payloads off the event loop (kssm_tui.tail, kssm_tui.runs,
kssm_tui.watch), the
controller starts and signals trainers (kssm_tui.controller), and the dashboard only copies
payloads into widgets. Keys are data (kssm_tui.keys); the keys that change a run live in
kssm_tui.run_actions.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from rich.text import Text
from textual.app import App, SystemCommand
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.worker import get_current_worker

from kssm_core.runbook.stages import STAGES

from kssm_core.runbook.judge import final_failures
from kssm_core.runfolder import layout

from . import ascii_chrome, labels
from . import controller as ctl
from .messages import (FactsSampled, OverlayChanged, RunChanged, RunsListed, RunView, StageInfo, StagesChanged,
                       TrainerExited, WorkerTrouble)
from .overlay import MAX_OVERLAY, reference_series
from .runs import RunsBoard, run_key, runs_loop
from .screens.dashboard import CHARTS, Dashboard
from .screens.help import HelpScreen
from .screens.runs import RunsScreen
from .safe_text import clean
from .keys import KEYS, MUTATING, MUTATING_KEYS, RUNS_VIEW_KEYS, bindings
from .autopilot_key import AutopilotActions
from .run_actions import RunActions
from .tail import Monitor, monitor_loop
from .watch import WatchTarget, watch_loop

TAIL_INTERVAL_S = 0.5


class KssmApp(RunActions, AutopilotActions, App):
    """The training cockpit."""

    CSS_PATH = "app.tcss"
    TITLE = "kssm-tui"
    BINDINGS = bindings()

    def __init__(self, runs_root: str | Path = "results", attach: str | Path | None = None, readonly: bool = False,
                 watch: bool = True, tail_interval: float = TAIL_INTERVAL_S, cwd: Path | None = None,
                 compare=(), reference=None, plan: str | Path | None = None) -> None:
        """`compare`: run folders overlaid from the start (at most MAX_OVERLAY); `reference`: a
        kssm_core.reports.overlay.Reference (read before the App starts: a bad file never gets this far);
        `plan`: the autopilot's plan file for the `a` key."""
        ascii_chrome.apply()
        super().__init__()
        self.runs_root = Path(runs_root)
        self.attach = Path(attach) if attach else None
        self.readonly = readonly
        self.plan_path = Path(plan) if plan else None  # the autopilot's (`a`); None: the runbook's five stages
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
        # The runs view and the overlay (kssm_tui.runs): marks are keyed by absolute folder path -> slot.
        self.compare = [Path(c) for c in compare]
        self.board = RunsBoard(self.runs_root, self.attach, self.compare)
        self.marked: dict[Path, int] = {}
        for c in self.compare[:MAX_OVERLAY]:
            self.marked.setdefault(run_key(c), len(self.marked))
        self.reference = reference
        self.references = reference_series(reference) if reference is not None else {}
        self.x_time = False
        self.overlay = None  # the OverlayView on the charts (kssm_tui.overlay), None before the first
        self.runs_rows: list = []
        self.runs_done = False
        self._sync_board()

    def get_css_variables(self) -> dict[str, str]:
        return {**super().get_css_variables(), **ascii_chrome.css_variables()}

    # ---- lifecycle --------------------------------------------------------------------------------
    def get_default_screen(self) -> Dashboard:
        return Dashboard()

    @property
    def dash(self) -> Dashboard:
        return self.screen_stack[0]  # the default screen (dialogs stack above it)

    def on_ready(self) -> None:
        """After the dashboard is composed: start the workers (the tail worker first picks the stage to show)."""
        self._set_title()
        self.run_worker(self._tail_body, thread=True, group="tail", name="tail", exit_on_error=False)
        self.run_worker(self._runs_body, thread=True, group="runs", name="runs", exit_on_error=False)
        if self.watch_enabled:
            self.run_worker(self._watch_body, thread=True, group="watch", name="watch", exit_on_error=False)
        self.set_interval(1.0, self._reap)

    def _newest_started(self) -> int | None:
        started = [s.number for s in STAGES if (self.runs_root / s.output_dir / layout.EVENTS).exists()]
        return max(started) if started else None

    def _tail_body(self) -> None:
        worker = get_current_worker()
        if self.attach is None and self.monitor.selected is None:  # lock files and psutil: off the event loop
            live = ctl.live_stage(self.runs_root)
            self.monitor.selected = live or self._newest_started() or 1
            if live:
                self.call_from_thread(self.say, f"attached to the live trainer of Stage {live}", timeout=4)
        monitor_loop(self.post_message, self.monitor, self.tail_interval, lambda: worker.is_cancelled)

    def _runs_body(self) -> None:
        worker = get_current_worker()
        runs_loop(self.post_message, self.board, self.tail_interval, lambda: worker.is_cancelled)

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
        if self.x_time:
            t.append(" x:time", style="dim")
        ov = self._shown_overlay()
        if ov is not None and self.marked:
            t.append(f"  overlay: {len(ov.runs)} run{'s' if len(ov.runs) != 1 else ''}", style="cyan")
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
        if self.x_time and not self.marked and run_key(view.run_dir) not in dict(self.board.marked):
            self._sync_board()  # the time axis follows the shown run (see _overlay_marked)
        self.dash.show_view(view, self.log_y, self.smoothing, self._shown_overlay(), self._references())
        pid = view.lock_pid if view.lock_state == "live" else None
        if pid is None and self.controller.child_alive() and self.controller.child.run_dir == view.run_dir:
            pid = self.controller.child.proc.pid
        self._watch_target = WatchTarget(view.run_dir, pid)
        self._set_title()
        self._update_alert(view)
        self._merge_facts()

    def on_runs_listed(self, msg: RunsListed) -> None:
        self.runs_rows, self.runs_done = msg.rows, msg.done
        if isinstance(self.screen, RunsScreen):
            self.screen.set_rows(msg.rows, msg.done)

    def on_overlay_changed(self, msg: OverlayChanged) -> None:
        view = msg.view
        if view.key != self._overlay_key():
            return  # built for marks or settings changed meanwhile: the next build follows
        old_notes = self.overlay.notes if self.overlay is not None else ()
        self.overlay = view
        for note in view.notes:
            if note not in old_notes:
                self.say(note, severity="warning", timeout=6)
        if not self._dash_gone():
            try:
                self._redraw_charts()
            except NoMatches:
                pass

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
        fails = {(r.stage, r.metric) for r in final_failures(view.matrix_rows)}
        seen = self._failures_seen.get(view.run_dir)
        if seen is not None and fails - seen:
            self.bell()  # once per new Failure, not for ones already there when the run was opened
        self._failures_seen[view.run_dir] = (seen or set()) | fails
        st = view.status  # the banner says what kssm status's headline says; the cockpit adds only the key
        if st is None or st.headline is None:
            self.dash.alert(None)
            return
        severity, text = st.headline
        if st.state == "crashed" and st.recommendation.code == "crashed" and not self.readonly and st.source != "legacy":
            text += ": press r to resume"
        self.dash.alert(text, severity)

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
        return labels.current_stage({n: s.state for n, s in self.stages.items()})

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self._redraw_charts()

    def action_toggle_smooth(self) -> None:
        self.smoothing = not self.smoothing
        self.monitor.smoothing = self.smoothing  # the shown run's view comes again with its EMA over every point
        self.monitor.force.set()
        self._sync_board()
        self._redraw_charts()

    def action_toggle_x_axis(self) -> None:
        self.x_time = not self.x_time
        self._sync_board()
        if self.x_time:
            self.say("x axis: active wall time (the gaps of a resume or a pause left out); x again: step"
                     + ("; reference curves are drawn on the step axis only" if self.reference else ""), timeout=4)
        self._redraw_charts()

    def _redraw_charts(self) -> None:
        if self.view is not None:
            self.dash.show_charts(self.view, self.log_y, self.smoothing, self._shown_overlay(), self._references())
        self._set_title()

    # ---- the runs view and the overlay ----------------------------------------------------------------
    def _overlay_marked(self) -> tuple[tuple[Path, int], ...]:
        """The runs to overlay: the marked ones; on the time axis with none marked, the shown run alone."""
        marked = tuple(self.marked.items())
        if not marked and self.x_time and self.view is not None:
            marked = ((run_key(self.view.run_dir), 0),)
        return marked

    def _overlay_key(self) -> tuple:
        return (self._overlay_marked(), self.x_time, self.smoothing)

    def _sync_board(self) -> None:
        """Hand the overlay's settings to the runs worker and wake it (plain assignments: thread-safe)."""
        b = self.board
        b.marked, b.time_axis, b.smoothing = self._overlay_marked(), self.x_time, self.smoothing
        b.wake.set()

    def _shown_overlay(self):
        """The overlay to draw: the newest build for the current marks and settings, None for one run's charts."""
        ov = self.overlay
        if ov is None or not ov.runs or ov.key != self._overlay_key():
            return None
        return ov

    def _references(self) -> dict:
        ov = self._shown_overlay()
        if not self.references or (ov is not None and ov.time_axis):
            return {}  # a reference is a trajectory over steps: not on the time axis
        return self.references

    def action_runs_view(self) -> None:
        if isinstance(self.screen, RunsScreen):
            return
        self.board.listing = True
        self.board.scan_now.set()
        self.board.wake.set()
        self.push_screen(RunsScreen(), callback=self._runs_view_closed)

    def _runs_view_closed(self, _result=None) -> None:
        self.board.listing = False

    def toggle_mark(self, folder: Path) -> None:
        """Mark a run for overlay (the lowest free slot: colour + marker), or unmark it."""
        folder = run_key(folder)
        if folder in self.marked:
            del self.marked[folder]
        elif len(self.marked) >= MAX_OVERLAY:
            self.say(f"at most {MAX_OVERLAY} runs overlaid: unmark one first", severity="warning", timeout=4)
            return
        else:
            used = set(self.marked.values())
            self.marked[folder] = min(i for i in range(MAX_OVERLAY) if i not in used)
        self._sync_board()
        if isinstance(self.screen, RunsScreen):
            self.screen.refresh_rows()
        self._redraw_charts()

    def open_run(self, folder: Path, name: str | None = None) -> None:
        """Show a listed run on the dashboard (the runs view's Enter): a stage folder of RUNS_ROOT as that stage
        (as 1-5 do), any other folder as if it had been given to --attach (`0` comes back to it after 1-5).
        Only the tail worker's reading follows: nothing is written into the folder."""
        key = run_key(folder)
        stage = next((n for n, d in self.monitor.folders.items() if run_key(d) == key), None)
        if stage is not None:
            self.action_select(stage)
        else:
            self.attach = Path(folder)  # the title says "attached", and `n` will not start a stage here unasked
            self.monitor.show_folder(self.attach)
            self.dash.show_stages(self.stages, self._current_stage(), self.selected)
            self._set_title()
        note, n = f"showing {name or folder}", len(self.marked)
        if n:
            note += f"; the charts still overlay the {n} marked run{'s' if n != 1 else ''}"
        self.say(note, timeout=4)

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
        self.push_screen(HelpScreen([(k.key, k.help, k.mutates) for k in KEYS], self.readonly,
                                    sections=[("in the runs view (v)", [(k.key, k.help, False) for k in RUNS_VIEW_KEYS])]))

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
    p.add_argument("--compare", nargs="+", metavar="DIR", default=[],
                   help="overlay these run folders on every chart from the start (a folder of runs: each of them)")
    p.add_argument("--reference", metavar="FILE",
                   help="a published trajectory to draw, dashed, on the matching charts: CSV with a step column "
                        "and any of loss, ce, reg, R, u_val, val_loss, val_ppl, or JSON lines of the same")
    p.add_argument("--readonly", action="store_true", help="disable every key that changes anything")
    p.add_argument("--plan", metavar="FILE", help="the autopilot's TOML plan for `a` (docs/autopilot.md)")
    args = p.parse_args(argv)
    if args.attach and not Path(args.attach).is_dir():
        print(f"kssm-tui: {args.attach} is not a folder; pass a run folder (e.g. results/stage1)", file=sys.stderr)
        return 2
    root = Path(args.runs_root)
    if root.exists() and not root.is_dir():
        print(f"kssm-tui: {root} is a file, not a runs folder", file=sys.stderr)
        return 2
    compare = []
    for d in args.compare:
        from kssm_core.runbook.status import find_run_dirs

        found = find_run_dirs(d) if Path(d).is_dir() else []
        if not found:
            print(f"kssm-tui: --compare {d}: not a run folder (no events.jsonl, training.log or checkpoint), "
                  "nor a folder of runs", file=sys.stderr)
            return 2
        compare += [f for f in found if f not in compare]
    if len(compare) > MAX_OVERLAY:
        print(f"kssm-tui: --compare names {len(compare)} runs; at most {MAX_OVERLAY} can be overlaid", file=sys.stderr)
        return 2
    reference = None
    if args.reference:
        from kssm_core.reports.overlay import ReferenceError, read_reference

        try:
            reference = read_reference(args.reference)
        except ReferenceError as exc:
            print(f"kssm-tui: --reference {clean(exc)}", file=sys.stderr)
            return 2
    app = KssmApp(root, attach=args.attach, readonly=args.readonly, compare=compare, reference=reference,
                  plan=args.plan)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
