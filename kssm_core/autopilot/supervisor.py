"""The autopilot's loop: for each stage of the plan, start (or find) its trainer, watch it, judge the folder
through the one run model (kssm_core.runbook.status.status_of), and act on kssm_core.autopilot.classify's
decision: pass the gate, remedy, resume after a crash, stop a stall, rewind a NaN, or hold.

Trainers are started detached (kssm_core.runbook.spawn), in their own session: they outlive the autopilot.
An autopilot started again reads RUNS_ROOT/autopilot/state.json and re-attaches to a live trainer (found
through its lock, or the PID it recorded) instead of starting one; it never kills a healthy trainer (only
one the run model calls stalled). Every decision goes to decisions.jsonl with its reason, first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import psutil

from kssm_core.autopilot import report as report_mod
from kssm_core.autopilot.classify import Decision, Situation, classify, progress_made
from kssm_core.autopilot.lock import AutopilotBusy, AutopilotLock
from kssm_core.autopilot.notify import Notifier
from kssm_core.autopilot.plan import Plan, StagePlan
from kssm_core.autopilot.rewind import checkpoint_steps, good_checkpoint, set_aside_after
from kssm_core.autopilot.state import Attempt, StageRecord, State, StateError, Store, read_decisions, whoami
from kssm_core.runbook import cmdline
from kssm_core.runbook.probe import FactsCache
from kssm_core.runbook.spawn import spawn_detached
from kssm_core.runbook.status import status_of
from kssm_core.runfolder import layout
from kssm_core.runfolder.follower import RunFollower
from kssm_core.runfolder.history import RunHistory
from kssm_core.runfolder.lock import LockHeld, lock_state, read_lock

EXIT_PASSED, EXIT_HELD, EXIT_REFUSED = 0, 1, 2
SLICE_S = 0.1  # sleeps are cut into slices so a SIGTERM is acted on at once
STARTUP_STALLS = 3  # a trainer silent before its run_start for this many stall_s is hung in its start-up


def process_alive(pid: int | None, start_time: float | None = None) -> bool:
    """PID runs (not a zombie) and, when start_time is known, is the same process (not a reused PID)."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return start_time is None or abs(p.create_time() - start_time) <= 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def start_time_of(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def last_line(path: Path, max_bytes: int = 4096) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


class Supervisor:
    def __init__(self, runs_root: str | Path, plan: Plan, *, through: int | None = None,
                 notify: Callable[[dict], None] | None = None, echo: Callable[[str], None] | None = None):
        self.root = Path(runs_root)
        self.plan = plan
        self.through = through if through is not None else len(plan.stages)
        self.store = Store(self.root)
        self.lock = AutopilotLock(self.store.dir)
        self.echo = echo or (lambda line: print(line, flush=True))
        self.notify = notify or Notifier(log=self.echo)
        self.state: State | None = None
        self.child: subprocess.Popen | None = None
        self.stopping: str | None = None
        self.facts = FactsCache()

    # ---- the whole plan -------------------------------------------------------------------------------
    def run(self, install_signals: bool = True) -> int:
        try:
            self.store.ensure()
            took = self.lock.acquire()
        except AutopilotBusy as exc:
            self.echo(f"kssm autopilot: {exc}")
            return EXIT_REFUSED
        except OSError as exc:
            self.echo(f"kssm autopilot: cannot use {self.store.dir}: {exc.strerror or exc}")
            return EXIT_REFUSED
        try:
            try:
                self.state, first = self._load_or_new()
            except StateError as exc:
                self.echo(f"kssm autopilot: {exc}")
                return EXIT_REFUSED
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, self._on_signal)
            if took is not None:
                self._decide(None, "lock", f"took over the stale lock of an autopilot that is gone ({took.describe})")
            for line in first:
                self._decide(None, "launch", line)
            try:
                return self._run_plan()
            except Exception as exc:  # never a silent death: say it, hold, leave the trainer alone
                import traceback

                traceback.print_exc()
                rec = self.state.stage(self.state.current)
                self._hold(rec, "autopilot_error", f"the autopilot itself failed: {type(exc).__name__}: {exc} "
                                                   f"(a live trainer keeps running; run the autopilot again)")
                return self._finish("held")
        finally:
            self.lock.release()

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = signal.Signals(signum).name

    def _load_or_new(self) -> tuple[State, list[str]]:
        old = self.store.load()
        notes = []
        pid, host = whoami()
        if old is not None and old.plan_digest == self.plan.digest:
            state = old
            notes.append(f"carrying on from {self.store.state_path} (status {old.status}, stage {old.current}; "
                         f"autopilot start {old.launches + 1})")
            if old.status == "held" and old.held:
                rec = state.stage(old.held.get("stage") or old.current)
                notes.append(f"stage {rec.index} was held ({old.held.get('what')}: {old.held.get('why')}); "
                             f"a person started the autopilot again: its budgets start afresh")
                rec.status, rec.crashes, rec.rewinds, rec.remedies = "running", 0, 0, 0
                rec.last_error, rec.stop_sent, rec.crash_step = None, None, None
                state.held = None
            state.status = "running"
        else:
            if old is not None:
                moved = self.store.set_aside()
                notes.append(f"the state in {self.store.dir} was for another plan: moved it to {moved}")
            stages = [StageRecord(s.index, s.name, s.output_dir, s.steps, s.gate) for s in self.plan.stages]
            state = State(str(self.root), self.plan.to_dict(), self.plan.digest, stages)
            notes.append(f"new plan: {self.plan.source}, {len(stages)} stage(s), through stage {self.through}")
        state.pid, state.host, state.launches = pid, host, state.launches + 1
        self.store.save(state)
        return state, notes

    def _run_plan(self) -> int:
        st = self.state
        for rec in st.stages[: self.through]:
            if rec.status == "passed":
                continue
            outcome = self._run_stage(rec, self.plan.stages[rec.index - 1])
            if outcome == "pass":
                continue
            return self._finish(outcome)
        return self._finish("passed")

    def _finish(self, outcome: str) -> int:
        st = self.state
        if outcome == "passed":
            if self.through >= len(st.stages):
                st.status, st.next = "passed", "nothing: every stage passed its gate"
                self._decide(None, "done", f"all {len(st.stages)} stage(s) passed their gates")
            else:
                st.status = "stopped"
                st.next = f"stage {self.through + 1} (stopped after stage {self.through}: --through)"
                self._decide(None, "done", f"stages 1..{self.through} passed their gates (--through {self.through})")
            code = EXIT_PASSED
        elif outcome == "stopped":
            st.status = "stopped"
            live = self._live_pid(self.root / st.stage(st.current).output_dir, st.stage(st.current))
            keep = f"; trainer PID {live} keeps running" if live else ""
            st.next = "nothing until `kssm autopilot` runs again (it re-attaches)"
            self._decide(st.current, "stopped", f"the autopilot was stopped ({self.stopping}){keep}")
            code = EXIT_HELD
        else:
            st.status = "held"
            code = EXIT_HELD
        try:
            st.report = str(report_mod.write(self.root, st, read_decisions(self.root), self.plan.criteria))
        except OSError as exc:
            self.echo(f"kssm autopilot: cannot write the report: {exc.strerror or exc}")
        self.store.save(st)
        if st.held:
            self.echo(f"HELD at stage {st.held['stage']} ({st.held['what']}): {st.held['why']}")
        if st.report:
            self.echo(f"report: {st.report}")
        return code

    # ---- one stage ----------------------------------------------------------------------------------
    def _run_stage(self, rec: StageRecord, stage: StagePlan) -> str:
        st = self.state
        st.current = rec.index
        run_dir = self.root / stage.output_dir
        if rec.status == "pending":
            rec.status, rec.started_at = "running", time.time()
        if rec.index > 1 and rec.init_from is None:
            prev = st.stage(rec.index - 1)
            best = self.root / prev.output_dir / layout.BEST_MODEL
            if not best.is_file():
                return self._hold(rec, "unknown", f"stage {prev.index} left no {layout.BEST_MODEL} in "
                                                  f"{best.parent} to start this stage from")
            rec.init_from = str(best)
        self.store.save(st)
        entry = True
        while True:
            if self.stopping:
                return "stopped"
            pid = self._live_pid(run_dir, rec)
            if pid is not None:
                if entry:
                    self._attach(rec, pid)
                entry = False
                self._watch(rec, stage, run_dir, pid)
                continue
            if rec.pending is not None:  # decided before this autopilot was stopped / killed, never started
                if entry:
                    self._decide(rec.index, "launch", f"carrying out the {rec.pending['kind']} decided before this "
                                                      f"autopilot started: {rec.pending['reason']}")
                entry = False
                out = self._launch(rec, run_dir)
                if out is not None:
                    return out
                continue
            rc = self._reap()
            status, history = self._status(run_dir)
            self._close_attempt(rec, status, history, rc)
            d = classify(self._situation(rec, stage, run_dir, status, history, rc, entry))
            if entry and not rec.attempts and status.state != "not_started" and d.kind != "start":
                rec.attempts.append(Attempt(1, "adopt", f"a run found in {run_dir}", None, outcome=status.state,
                                            step=status.step, ended_at=time.time()))
            entry = False
            if d.kind != "wait":
                rec.last_error = d.error
            out = self._act(rec, stage, run_dir, d, status, history)
            if out is not None:
                return out

    def _act(self, rec: StageRecord, stage: StagePlan, run_dir: Path, d: Decision, status, history: RunHistory) -> str | None:
        """Carry the decision out; 'pass' / 'hold' / 'stopped' end the stage, None goes round again."""
        extra = {k: v for k, v in (("overrides", d.overrides), ("delay_s", d.delay_s), ("what", d.what),
                                     ("verdict", d.verdict), ("checkpoint", d.checkpoint), ("rows", d.rows)) if v}
        if d.rows and rec.attempt is not None:
            rec.attempt.gate = status.assessment.summary
        if d.kind == "wait":
            self._sleep(self.plan.budgets.poll_s)
            return None
        if d.kind == "pass":
            rec.status, rec.ended_at, rec.verdict, rec.rows = "passed", time.time(), d.verdict, d.rows
            rec.summary = status.assessment.summary
            self._decide(rec.index, "pass", d.reason, **extra)
            return "pass"
        if d.kind == "hold":
            rec.verdict, rec.rows = d.verdict or rec.verdict, d.rows or rec.rows
            if d.rows:
                rec.summary = status.assessment.summary
            extra.pop("what", None)
            return self._hold(rec, d.what or "hold", d.reason, **extra)
        if d.kind == "evaluate":
            rec.evaluated = True
            self._decide(rec.index, "evaluate", d.reason)
            self._evaluate(run_dir)
            return None
        if d.kind == "stop":  # only from _watch; here the trainer is already gone
            return None
        # a new trainer: start, remedy, resume, retry, rewind
        if d.budget == "crash":
            rec.crashes += 1
            rec.crash_step = status.step
        elif d.budget == "remedy":
            rec.remedies += 1
            rec.overrides.update(d.overrides)
        elif d.budget == "rewind":
            rec.rewinds += 1
            rec.overrides.update(d.overrides)
        resume = d.kind == "resume"
        if d.kind == "rewind" and d.checkpoint is not None:
            try:
                moved_to, names = set_aside_after(run_dir, d.checkpoint[0])
            except (LockHeld, OSError) as exc:
                return self._hold(rec, "unknown", f"cannot set the checkpoints after step {d.checkpoint[0]} aside: {exc}")
            if names:
                extra["set_aside"] = {"to": str(moved_to), "files": names}
            resume = True
        if not resume:
            room = self._disk_problem(run_dir, rec)
            if room:
                return self._hold(rec, "disk", room)
        init_from = None
        if not resume:
            init_from = rec.init_from
            if d.kind == "rewind":  # no good checkpoint: the run's own starting weights
                init_from = history.config.get("init_from") or rec.init_from
        argv = cmdline.train(stage=stage.gate, max_steps=stage.steps, output_dir=run_dir, resume=resume,
                             init_from=init_from, overrides=rec.overrides,
                             extra=[*self.plan.args, *stage.args, "--quiet"])
        has_run = status.step is not None or status.newest_checkpoint is not None
        note = " (a fresh start: the trainer moves the folder's previous run to previous/<UTC time>/)" \
            if not resume and has_run else ""
        # decided and saved before the backoff: an autopilot killed meanwhile carries it out when started again
        rec.pending = {"kind": d.kind, "reason": d.reason, "argv": argv, "at": time.time() + d.delay_s}
        self._decide(rec.index, d.kind, d.reason + note, argv=cmdline.text(argv), attempt=len(rec.attempts) + 1,
                     **extra)
        return self._launch(rec, run_dir)

    def _launch(self, rec: StageRecord, run_dir: Path) -> str | None:
        """Start the pending trainer once its backoff is over (None: go round again; 'stopped')."""
        p = rec.pending
        wait = float(p.get("at") or 0) - time.time()
        if wait > 0:
            self.state.next = f"stage {rec.index}: {p['kind']} in {wait:.0f}s"
            self.store.save(self.state)
            self._sleep(wait)
            if self.stopping:
                return "stopped"
        if self._live_pid(run_dir, rec) is not None:  # someone started a trainer there meanwhile: watch that one
            rec.pending = None
            return None
        argv = list(p["argv"])
        try:
            self.child = spawn_detached(cmdline.spawnable(argv), run_dir / layout.TRAINER_OUT)
        except OSError as exc:  # another program's folder (ForeignFolder), a read-only disk: a person decides
            rec.pending = None
            return self._hold(rec, "unknown", f"cannot start the trainer in {run_dir}: {exc.strerror or exc}")
        attempt = Attempt(len(rec.attempts) + 1, p["kind"], p["reason"], argv, pid=self.child.pid,
                          pid_start_time=start_time_of(self.child.pid), learning_rate=rec.overrides.get("learning_rate"))
        rec.attempts.append(attempt)
        rec.pending, rec.stop_sent = None, None
        self.state.next = self._next_line(rec, attempt)
        self.store.save(self.state)
        return None

    def _hold(self, rec: StageRecord, what: str, why: str, **extra) -> str:
        rec.status, rec.ended_at = "held", time.time()
        self.state.held = {"stage": rec.index, "stage_name": rec.name, "what": what, "why": why,
                           "run_dir": str(self.root / rec.output_dir)}
        self.state.next = "nothing: a person must decide (then run `kssm autopilot` again)"
        self._decide(rec.index, "hold", why, what=what, **{k: v for k, v in extra.items() if k != "what"})
        return "hold"

    # ---- watching a live trainer ----------------------------------------------------------------------
    def _watch(self, rec: StageRecord, stage: StagePlan, run_dir: Path, pid: int) -> None:
        follower = RunFollower(run_dir, use_cache=False)
        start_time = start_time_of(pid)
        while not self.stopping:
            if not self._alive(pid, start_time):
                return
            follower.refresh()
            status = status_of(follower, self.plan.criteria, facts_cache=self.facts)
            history = follower.history
            if rec.crashes and progress_made(rec.crash_step, status):
                self._decide(rec.index, "progress", f"crash count reset: checkpoint at step "
                                                    f"{status.newest_checkpoint['step']} is past the crash at step "
                                                    f"{rec.crash_step}")
                rec.crashes, rec.crash_step = 0, None
            # a stall counts only for this trainer's own run_start (not the old run's while a new one starts)
            own = (history.run_start or {}).get("pid") == pid
            # before it: a trainer of ours that has written nothing at all for stall_s hung in its start-up
            d = classify(Situation(status, stage, self.plan.budgets)) if own else self._silent_start(rec, pid, history)
            if d is not None and d.kind == "stop":
                self._stop_stalled(rec, pid, start_time, d.reason)
                return
            att = rec.attempt
            if att is not None:
                self.state.next = self._next_line(rec, att, status)
            self.store.save(self.state)
            self._sleep(self.plan.budgets.poll_s)

    def _silent_start(self, rec: StageRecord, pid: int, history: RunHistory,
                      now: float | None = None) -> Decision | None:
        """A trainer an autopilot launched (its attempt's PID, with the command it ran) that has logged no run_start
        of its own and written nothing at all for stall_s since it was started: hung in its start-up (a
        rendezvous, a device, a file system). A stop decision, or None. Anything it writes (its schema line, a
        warning, the heartbeats of a long token-cache build) restarts the clock, as a heartbeat does for a run."""
        att = rec.attempt
        if att is None or att.pid != pid or not att.argv or att.ended_at is not None:
            return None  # a person's trainer (attached), or not the attempt we are watching: never ours to stop
        b = self.plan.budgets
        now = time.time() if now is None else now
        last = max(att.started_at, history.last_event_t or 0.0)  # events before the start are an older run's
        # start-up gets STARTUP_STALLS stall periods: importing torch and opening a corpus on a loaded machine or a
        # cold disk is slower than a step, and a healthy start stopped as hung would be retried into a crash loop
        limit = STARTUP_STALLS * b.stall_s
        if now - last <= limit:
            return None
        quiet = f"nothing written for {now - last:.0f}s" if last > att.started_at else "nothing written at all"
        return Decision("stop", f"trainer PID {pid} (attempt {att.n}) never started logging: no run_start of its "
                                f"own {now - att.started_at:.0f}s after it was started, {quiet} (limit "
                                f"{limit:g}s: {STARTUP_STALLS} x stall_s); SIGTERM, then SIGKILL after {b.stall_grace_s:g}s, then as after "
                                f"a crash")

    def _stop_stalled(self, rec: StageRecord, pid: int, start_time: float | None, why: str) -> None:
        rec.stop_sent = {"pid": pid, "t": time.time(), "why": why, "killed": False}
        self._decide(rec.index, "stop", why, pid=pid)
        for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT: a stopped (SIGSTOP) process then acts on it
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + self.plan.budgets.stall_grace_s
        while time.monotonic() < deadline and self._alive(pid, start_time):
            self._reap_quietly()
            time.sleep(SLICE_S)
        if self._alive(pid, start_time):
            rec.stop_sent["killed"] = True
            self._decide(rec.index, "kill", f"trainer PID {pid} still alive {self.plan.budgets.stall_grace_s:g}s "
                                            f"after SIGTERM: SIGKILL", pid=pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            while self._alive(pid, start_time):
                self._reap_quietly()
                time.sleep(SLICE_S)
        self.store.save(self.state)

    def _attach(self, rec: StageRecord, pid: int) -> None:
        att = rec.attempt
        if att is not None and att.pid == pid:
            why = f"re-attached to trainer PID {pid} (attempt {att.n}, still running): no new trainer"
        else:
            rec.attempts.append(Attempt(len(rec.attempts) + 1, "attach", "a live trainer found in the folder",
                                        None, pid=pid, pid_start_time=start_time_of(pid)))
            why = f"attached to the live trainer PID {pid} found in {self.root / rec.output_dir}: no new trainer"
        self._decide(rec.index, "attach", why, pid=pid)

    # ---- facts -----------------------------------------------------------------------------------------
    def _live_pid(self, run_dir: Path, rec: StageRecord) -> int | None:
        """The live trainer of this stage's folder: our child, the lock's holder, or the PID last recorded."""
        if self.child is not None and self.child.poll() is None:
            return self.child.pid
        info = read_lock(run_dir)
        if lock_state(info)[0] == "live" and info is not None and info.pid:
            return info.pid
        att = rec.attempt
        if att is not None and att.ended_at is None and att.pid and process_alive(att.pid, att.pid_start_time):
            return att.pid  # started, not yet holding its lock
        return None

    def _alive(self, pid: int, start_time: float | None) -> bool:
        if self.child is not None and self.child.pid == pid:
            return self.child.poll() is None
        return process_alive(pid, start_time)

    def _reap(self) -> int | None:
        if self.child is None:
            return None
        rc = self.child.poll()
        if rc is None:
            return None
        self.child = None
        return rc

    def _reap_quietly(self) -> None:
        if self.child is not None:
            self.child.poll()

    def _status(self, run_dir: Path):
        f = RunFollower(run_dir, use_cache=False)
        f.refresh()
        return status_of(f, self.plan.criteria, facts_cache=self.facts), f.history

    def _situation(self, rec: StageRecord, stage: StagePlan, run_dir: Path, status, history: RunHistory,
                   rc: int | None, entry: bool) -> Situation:
        good = None
        if status.state == "failed" and (status.run_end or {}).get("reason") == "nan_loss":
            found = good_checkpoint(history, checkpoint_steps(run_dir))
            good = (found[0], str(found[1])) if found else None
        return Situation(
            status=status, stage=stage, budgets=self.plan.budgets, on_warning=self.plan.on_warning,
            config=dict(history.config), crashes=rec.crashes, rewinds=rec.rewinds, remedies=rec.remedies,
            last_error=rec.last_error, stop_sent=bool(rec.stop_sent), exit_code=rc,
            output_tail=last_line(run_dir / layout.TRAINER_OUT) if rc is not None else "", entry=entry,
            good_checkpoint=good, evaluate=self.plan.evaluate, evaluated=rec.evaluated)

    def _close_attempt(self, rec: StageRecord, status, history: RunHistory, rc: int | None) -> None:
        att = rec.attempt
        if att is None or att.ended_at is not None:
            return
        att.ended_at = time.time()
        att.outcome = "refused" if rc == 2 else status.state
        att.outcome_reason = (status.run_end or {}).get("reason") or status.state_reason
        att.step = status.step
        lr = history.config.get("learning_rate")
        if isinstance(lr, (int, float)):
            att.learning_rate = lr

    def _disk_problem(self, run_dir: Path, rec: StageRecord) -> str | None:
        """Room for the stage's checkpoints (estimated from the newest checkpoint so far), or why not."""
        sizes = []
        for r in self.state.stages[: rec.index]:
            for path in checkpoint_steps(self.root / r.output_dir).values():
                try:
                    sizes.append(path.stat().st_size)
                except OSError:
                    pass
        each = max(sizes) if sizes else 0
        keep = 3 + 2 + 2  # periodic checkpoints kept, milestones, best_model.pt and one being written
        need = each * keep + int(self.plan.budgets.min_free_gb * 1e9)
        probe = run_dir if run_dir.exists() else self.root
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            return None
        if need and free < need:
            return (f"disk: {free / 1e6:.0f} MB free in {probe}, stage {rec.index} needs about {need / 1e6:.0f} MB "
                    f"for its checkpoints: free space (e.g. kssm clean on an older stage), then run the autopilot again")
        return None

    def _evaluate(self, run_dir: Path) -> None:
        proc = spawn_detached(cmdline.spawnable(cmdline.eval_all(run_dir)), run_dir / layout.EVAL_OUT)
        while proc.poll() is None and not self.stopping:
            time.sleep(SLICE_S * 5)

    # ---- output -----------------------------------------------------------------------------------------
    def _next_line(self, rec: StageRecord, att: Attempt, status=None) -> str:
        where = ""
        if status is not None and status.step is not None:
            where = f", step {status.step}/{status.target}"
        return (f"Stage {rec.index} ({rec.name}), attempt {att.n} ({att.kind}{where}): {att.reason}; "
                f"next gate at step {rec.steps}")

    def _decide(self, stage: int | None, kind: str, reason: str, **extra) -> None:
        rec = self.state.stage(stage) if stage else None
        event = {"stage": stage, "stage_name": rec.name if rec else None, "decision": kind, "reason": reason,
                 **({"attempt": len(rec.attempts)} if rec and "attempt" not in extra else {}), **extra}
        # the state first (it holds the decided launch, rec.pending): an autopilot killed just after the line
        # appears must find the decision in state.json, or it would decide again (a second resume, counted twice)
        self.store.save(self.state)
        line = self.store.decide(event)
        where = f"stage {stage}" if stage else "autopilot"
        self.echo(f"[{time.strftime('%H:%M:%S')}] {where}: {kind}: {reason}")
        try:
            self.notify(line)
        except Exception as exc:  # a notification never stops the autopilot
            self.echo(f"notify failed: {exc}")

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            self._reap_quietly()
            time.sleep(min(SLICE_S, max(0.0, end - time.monotonic())))


def run_autopilot(runs_root: str | Path, plan: Plan, *, through: int | None = None, notify_cmd: str | None = None) -> int:
    sup = Supervisor(runs_root, plan, through=through)
    sup.notify = Notifier(notify_cmd, log=sup.echo)
    return sup.run()


__all__ = ["Supervisor", "run_autopilot", "EXIT_PASSED", "EXIT_HELD", "EXIT_REFUSED"]
