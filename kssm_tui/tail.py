"""The tail worker: `Monitor` follows the five stage folders (and an attached one) and says what changed.

`Monitor.tick()` reads what is new (kssm_core.runfolder.follower), has the core judge it (status_of) and
builds the RunView / StageInfo payloads (kssm_tui.views); `monitor_loop` runs it in a Textual thread worker and posts only when
something changed, so an idle cockpit does no rendering work. A long log is first shown from a preview
of its ends, then read in slices within a time budget.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
import time
from pathlib import Path
from typing import Callable

from kssm_core.reports.overlay import GrowingEma
from kssm_core.runbook.stages import STAGES
from kssm_core.runbook.probe import FactsCache, evals_key
from kssm_core.runbook.runstatus import RunStatus
from kssm_core.runbook.status import status_of
from kssm_core.runbook.verdicts import Verdict
from kssm_core.runfolder import follower as core_follower
from kssm_core.runfolder import layout
from kssm_core.runfolder.follower import RunFollower, preview_history
from kssm_core.runfolder.lock import lock_state, read_lock
from kssm_core.runfolder.system import process

from . import labels
from .autopilot_watch import AutopilotWatch
from .messages import RunChanged, RunView, StageInfo, StagesChanged, WorkerTrouble
from .views import build_view

READ_SLICE_BYTES = 16 * 1024 * 1024  # one read of a long log; bounded memory per slice
# Reading time between two partial views of a long catch-up: each view costs a repaint, which competes with
# the reading for the CPU, so a 1,000,000-event log (about 1 s to read) is read without one.
CATCH_UP_BUDGET_S = 1.5
PREVIEW_MIN_BYTES = 32 * 1024 * 1024  # a log at least this big is previewed from its ends first
HEAVY_EVERY_S = 3.0  # a live run is judged again (matrix, advice, alerts) at most this often on new steps
PAINT_WAIT_S = 1.0  # at most this long for the App to paint a catch-up view before reading on
QUIET_REJUDGE_S = 15.0  # a live run with no new event is judged again this often (stall alerts)
CACHE_AFTER_BYTES = 16 * 1024 * 1024  # a catch-up at least this big is stored in the history cache


class Monitor:
    """The five stage folders plus an optional attached folder; `tick()` says what changed.

    Each folder is read through kssm_core's RunFollower and judged by kssm_core's status_of (the same
    judge as `kssm status`); a judgement is kept until the log, the lock or the trainer's life changes
    (and for at most HEAVY_EVERY_S / QUIET_REJUDGE_S while a trainer runs).
    """

    def __init__(self, runs_root: Path, attach: Path | None = None):
        self.runs_root = Path(runs_root)
        self.folders: dict[int, Path] = {s.number: self.runs_root / s.output_dir for s in STAGES}
        self.followers: dict[Path, RunFollower] = {}
        self._followers_lock = threading.Lock()
        self.attach = Path(attach) if attach else None
        self.selected: int | None = None  # set by the App (an int assignment: safe across threads)
        self._shown: tuple | None = None  # (folder, version, judged at, selected) of the last view posted
        self._stages_key: tuple | None = None
        self._judged: dict[Path, tuple[tuple, RunStatus, float, int]] = {}  # folder -> (key, status, when, serial)
        self._serial = 0  # counts judgements: a view is rebuilt when its run was judged again
        self.facts = FactsCache()
        self.force = threading.Event()  # set by the App to rebuild the view now (e.g. after a spawn)
        self.busy = False  # the shown run's log is still being caught up
        self.readonly = False  # set by the App: next-step lines then name no keys
        self.smoothing = False  # set by the App (`m`): views carry each series' EMA over every point
        self._ema = GrowingEma()  # the shown run's smoothed series, kept so a live run smooths only what it adds
        self._states: dict[int, str] = {}  # stage number -> StagePlan label, from the last _stages()
        # Set by the App once a posted view is on screen: during a catch-up the reader waits for it, so its
        # pure-Python folding (which holds the GIL) does not starve the first paint.
        self.painted = threading.Event()
        self._previewed: set[Path] = set()
        self._preview_view: RunView | None = None
        self._preview_follower: RunFollower | None = None
        self.autopilot = AutopilotWatch(self.runs_root)  # an autopilot driving this runs root, if any
        self._ap_stage: int | None = None
        self._ap_entries: list[tuple[str, str]] = []  # its decisions not yet in a posted view
        self._ap_recent: deque[tuple[str, str]] = deque(maxlen=20)  # and the newest, for a view that starts over

    def follower(self, folder: Path) -> RunFollower:
        with self._followers_lock:  # only the tail worker calls it today; safe if another thread ever does
            f = self.followers.get(folder)
            if f is None:
                f = self.followers[folder] = RunFollower(folder, cache_after_bytes=CACHE_AFTER_BYTES)
            return f

    def status(self, f: RunFollower, force: bool = False) -> RunStatus:
        """The core's judgement of one folder, judged again only when something it rests on changed."""
        info = read_lock(f.run_dir)
        lock = lock_state(info)[0]
        cached = self._judged.get(f.run_dir)
        pid_alive = None
        if cached is not None and cached[1].state == "running" and lock == "none" and cached[1].pid:
            p = process(cached[1].pid)  # a trainer running without its lock: notice when it dies
            pid_alive = bool(p and p.alive)
        key = (f.version, lock, info.pid if info else None, pid_alive, evals_key(f.run_dir),
               layout.newest_checkpoint_file(f.run_dir))  # a clean or a copied checkpoint changes the advice
        now = time.monotonic()
        if cached is not None and not force:
            ckey, st, at, _ = cached
            # Disk, memory and the time-based alerts change with nothing in the folder changing: judge again
            # now and then (cheap: the FactsCache keeps the slow facts).
            if ckey == key and now - at < QUIET_REJUDGE_S:
                return st
            if st.state == "running" and ckey[0] != key[0] and ckey[1:] == key[1:] and now - at < HEAVY_EVERY_S:
                return st  # live, only new steps: the matrix and advice stay for a few seconds
        st = status_of(f, facts_cache=self.facts)
        if cached is not None and st.state != "running" and _shown_part(cached[1]) == _shown_part(st):
            self._judged[f.run_dir] = (key, cached[1], now, cached[3])  # the same verdict: nothing to redraw
            return cached[1]
        self._serial += 1
        self._judged[f.run_dir] = (key, st, now, self._serial)
        return st

    def judged_serial(self, folder: Path) -> int:
        cached = self._judged.get(folder)
        return cached[3] if cached is not None else 0

    def show_folder(self, folder: Path) -> None:
        """Show `folder` as the attached one from the next tick (the runs view's Enter): read, never written."""
        self.attach = Path(folder)  # before `selected`: a tick in between still shows the stage it showed
        self.selected = None
        self.force.set()

    def shown_folder(self) -> tuple[Path, int | None]:
        if self.attach is not None and self.selected is None:
            st = self._judged.get(self.attach)
            if st is None or st[1].source == "none":
                return self.attach, None
            return self.attach, st[1].stage
        return self.folders[self.selected or 1], self.selected or 1

    def tick(self) -> tuple[dict[int, StageInfo] | None, RunView | None]:
        """Read what is new everywhere; return (stage infos if changed, the shown run's view if changed).

        The shown run is read first, in slices within a time budget: while a long log is still being
        caught up, a partial view (charts so far, no matrix yet) is returned and `busy` is set so the
        loop comes straight back for more.
        """
        started = time.monotonic()
        folder, stage = self.shown_folder()
        shown = self.follower(folder)
        preview = self._preview(shown, stage)
        if preview is not None:
            self.busy = True
            self._preview_view = preview
            return self._stages(self._preview_follower), preview
        selected = self.selected
        while True:
            shown.poll(READ_SLICE_BYTES)
            if not shown.behind or time.monotonic() - started > CATCH_UP_BUDGET_S or self.selected != selected:
                break  # (another run picked meanwhile: the next tick shows it, this one is read on later)
        self.busy = shown.behind
        if self.busy:
            pct = 100 * shown.reader.offset / max(1, shown.size)
            reason = f"reading history: {pct:.0f}% of {shown.size / 1e6:.0f} MB"
            pv = self._preview_view
            if pv is not None and pv.run_dir == folder:  # keep the preview up; only the progress moves
                return None, dataclasses.replace(pv, state_reason=reason + "; showing the newest part",
                                                 new_entries=[], replace_log=False)
            return None, build_view(shown, None, stage, self._fresh(folder), loading=reason, hints=self._hints(),
                                    ema=self._ema_for(folder))
        after_preview, self._preview_view = self._preview_view is not None, None
        forced = self.force.is_set()
        stages_out = self._stages()
        st = self.status(shown, force=forced)
        if stage is None and self.attach == folder:
            stage = st.stage if st.source != "none" else None
        ap = self.autopilot.poll()
        if ap is not None and ap.alive and ap.stage and ap.stage != self._ap_stage:
            self._ap_stage = ap.stage  # the autopilot moved on: show the stage it is on (once per move)
            if self.attach is None and ap.stage in self.folders and self.selected != ap.stage:
                self.selected = ap.stage
                self.force.set()
        self._ap_entries += ap.new_entries if ap else []
        self._ap_recent.extend(ap.new_entries if ap else [])
        smoothing = self.smoothing
        key = (folder, shown.version, self.judged_serial(folder), self.selected, ap.line if ap else None, smoothing)
        if key == self._shown and not self.force.is_set() and not after_preview:
            return stages_out, None
        fresh = self._fresh(folder) or after_preview  # the full history replaces the preview's log
        view = build_view(shown, st, stage, fresh, hints=self._hints(), autopilot=ap,
                          extra_entries=list(self._ap_recent) if fresh else self._ap_entries,
                          ema=self._ema_for(folder, smoothing))
        self._ap_entries = []
        self.force.clear()
        self._shown = key  # only once the view exists: a failure above is retried on the next tick
        return stages_out, view

    def _stages(self, preview: RunFollower | None = None) -> dict[int, StageInfo] | None:
        """Poll and judge every stage folder (a previewed one stands in for its still-unread follower)."""
        infos: dict[int, StageInfo] = {}
        folders = list(self.folders.items())
        if self.attach is not None and self.attach not in self.folders.values():
            folders.append((0, self.attach))
        for number, fold in folders:
            f = self.follower(fold)
            if preview is not None and fold == preview.run_dir:  # still being read: judged once it all is
                if number:
                    infos[number] = StageInfo(number, fold, "loading")
                continue
            f.refresh()
            st = self.status(f)
            if number == 0:
                continue
            label = labels.plan_label(st)
            failed = tuple(f"{r.metric}: {r.reason}" for r in st.assessment.rows
                           if r.verdict in (Verdict.WARNING, Verdict.FAILURE)) if st.source != "none" else ()
            verdict = st.assessment.verdict.value if st.step is not None else None
            infos[number] = StageInfo(number, fold, label, st.step, st.target, verdict, failed, st.lock,
                                      st.pid if st.lock == "live" else None, st)
        self._states = {n: i.state for n, i in infos.items()}
        stages_key = tuple((i.state, i.step, i.verdict, i.lock_state) for i in infos.values())
        if stages_key == self._stages_key:
            return None
        self._stages_key = stages_key
        return infos

    def _ema_for(self, folder: Path, smoothing: bool | None = None) -> GrowingEma | None:
        """The EMA state for a view of `folder` with smoothing on (only that folder's is kept), else None."""
        on = self.smoothing if smoothing is None else smoothing
        self._ema.keep_only(lambda k: on and k[0] == folder)  # off, or another run shown: its arrays go
        return self._ema if on else None

    def _hints(self) -> tuple[int | None, bool]:
        return labels.current_stage(self._states), self.readonly

    def _preview(self, f: RunFollower, stage: int | None) -> RunView | None:
        """Once per folder: a view from the ends of a long log that has not been read yet."""
        if f.run_dir in self._previewed:
            return None
        self._previewed.add(f.run_dir)
        if f.source != "events" or f.reader.offset > 0:  # not a log, or read already (by the stage plan)
            return None
        f.ensure_cache_loaded()
        try:
            size = f.events_path.stat().st_size
        except OSError:
            return None
        if size - f.reader.offset < PREVIEW_MIN_BYTES:
            return None
        tmp = RunFollower(f.run_dir, use_cache=False)
        tmp.history = preview_history(f.events_path)
        tmp.version = 1
        self._preview_follower = tmp
        st = status_of(tmp, facts_cache=self.facts)
        st.assessment.summary = f"PROVISIONAL (recent history only, still reading): {st.assessment.summary}"
        st.state_reason = (f"reading history of {size / 1e6:.0f} MB; showing its newest "
                           f"{core_follower.PREVIEW_TAIL_BYTES >> 20} MB")
        view = build_view(tmp, st, stage or st.stage, self._fresh(f.run_dir), hints=self._hints())
        return dataclasses.replace(view, state="loading")

    def _fresh(self, folder: Path) -> bool:
        """True when the view switches to another folder (the event log starts over)."""
        fresh = self._shown is None or self._shown[0] != folder
        if fresh:
            self._shown = (folder, -1, None, self.selected)
        return fresh

    def save_due(self) -> bool:
        return any(f.cache_due() for f in list(self.followers.values()))

    def after_post(self) -> None:
        """Slow housekeeping once the views are out: store the history cache of big catch-ups."""
        for f in list(self.followers.values()):  # a copy: the App's thread may add one meanwhile
            f.save_cache_if_due()


def _shown_part(s: RunStatus) -> tuple:
    """What the dashboard shows of a judgement: a new judgement that equals the last one is not redrawn."""
    return (s.state, s.state_reason, s.step, s.process, s.lock, s.recommendation.text, s.assessment.summary,
            tuple((a.code, a.severity, a.message) for a in s.alerts),
            tuple((r.stage, r.metric, r.verdict, r.reason, r.provisional, r.remedy) for r in s.matrix),
            s.disk.get("needed_bytes"))


def monitor_loop(post: Callable, monitor: Monitor, interval: float, cancelled: Callable[[], bool]) -> None:
    """Body of the tail worker: tick, post what changed, sleep; exits when the worker is cancelled."""
    last_error = None
    while not cancelled():
        started = time.monotonic()
        try:
            stages, view = monitor.tick()
        except Exception as exc:  # an unreadable folder or a bug must not stop the tailing for good
            text = f"reading the run folders failed: {type(exc).__name__}: {exc}"
            if text != last_error:
                post(WorkerTrouble(text))
                last_error = text
            monitor.busy = False
            stages = view = None
        if stages is not None:
            post(StagesChanged(stages))
        if view is not None:
            post(RunChanged(view))
        if monitor.busy:  # catching up a long log: on to the next slice once this view is painted
            if view is not None:
                monitor.painted.wait(PAINT_WAIT_S)
                monitor.painted.clear()
            continue
        try:
            if view is not None and monitor.save_due():  # storing the cache (~0.2 s for 1M events) waits for the paint
                monitor.painted.wait(PAINT_WAIT_S)
                monitor.painted.clear()
            monitor.after_post()
        except Exception as exc:  # housekeeping (the status cache) is best effort: the tailing goes on
            text = f"saving the history cache failed: {type(exc).__name__}: {exc}"
            if text != last_error:
                post(WorkerTrouble(text))
                last_error = text
        # Sleep in short slices so cancellation and forced refreshes are noticed quickly.
        while not cancelled() and time.monotonic() - started < interval and not monitor.force.is_set():
            time.sleep(0.1)
