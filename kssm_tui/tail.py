"""The tail worker: `Monitor` follows the five stage folders (and an attached one) and says what changed.

`Monitor.tick()` reads what is new (kssm_tui.follower), judges it and builds the RunView / StageInfo
payloads (kssm_tui.views); `monitor_loop` runs it in a Textual thread worker and posts only when
something changed, so an idle cockpit does no rendering work. A long log is first shown from a preview
of its ends, then read in slices within a time budget.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Callable

from kssm_core.config import STAGES
from kssm_core.runfolder.lock import lock_state, read_lock
from kssm_core.runbook.verdicts import Verdict

from . import assess, follower as follower_mod
from .follower import RunFollower, entry_for, preview_history
from .messages import RunChanged, RunView, StageInfo, StagesChanged, WorkerTrouble
from .views import build_view

READ_SLICE_BYTES = 16 * 1024 * 1024  # one read of a long log; bounded memory per slice
# Reading time between two partial views of a long catch-up: each view costs a repaint, which competes with
# the reading for the CPU, so a 1,000,000-event log (about 1 s to read) is read without one.
CATCH_UP_BUDGET_S = 1.5
PREVIEW_MIN_BYTES = 32 * 1024 * 1024  # a log at least this big is previewed from its ends first
HEAVY_EVERY_S = 3.0  # a live run's matrix, advice and alerts are recomputed at most this often
PAINT_WAIT_S = 1.0  # at most this long for the App to paint a catch-up view before reading on
QUIET_REJUDGE_S = 15.0  # a live run with no new event is judged again this often (stall alerts)


class Monitor:
    """The five stage folders plus an optional attached folder; `tick()` says what changed."""

    def __init__(self, runs_root: Path, attach: Path | None = None):
        self.runs_root = Path(runs_root)
        self.folders: dict[int, Path] = {s.number: self.runs_root / s.output_dir for s in STAGES}
        self.followers: dict[Path, RunFollower] = {}
        self._followers_lock = threading.Lock()
        self.attach = Path(attach) if attach else None
        self.selected: int | None = None  # set by the App (an int assignment: safe across threads)
        self._shown: tuple | None = None  # (folder, version, lock, selected) of the last view posted
        self._stages_key: tuple | None = None
        self._assessed: dict[Path, tuple] = {}
        self.force = threading.Event()  # set by the App to rebuild the view now (e.g. after a spawn)
        self.busy = False  # the shown run's log is still being caught up
        self.readonly = False  # set by the App: next-step lines then name no keys
        self._states: dict[int, str] = {}  # stage number -> StagePlan state, from the last _stages()
        # Set by the App once a posted view is on screen: during a catch-up the reader waits for it, so its
        # pure-Python folding (which holds the GIL) does not starve the first paint.
        self.painted = threading.Event()
        self._last_view: RunView | None = None
        self._previewed: set[Path] = set()
        self._preview_view: RunView | None = None
        self._preview_follower: RunFollower | None = None
        self._heavy_at = 0.0

    def follower(self, folder: Path) -> RunFollower:
        with self._followers_lock:  # the App's thread may ask for the shown folder's follower too
            f = self.followers.get(folder)
            if f is None:
                f = self.followers[folder] = RunFollower(folder)
            return f

    def _assess(self, f: RunFollower, stage: int, live: bool = False):
        """The stage assessment, cached per history version (and for a few seconds while the run is live)."""
        cached = self._assessed.get(f.run_dir)
        now = time.monotonic()
        if cached and (cached[0] == f.version or (live and now - cached[2] < HEAVY_EVERY_S and cached[3] == stage)):
            return cached[1]
        a = assess.assess_stage(f.history, stage, f.run_dir) if f.history.run_start is not None else None
        self._assessed[f.run_dir] = (f.version, a, now, stage)
        return a

    def shown_folder(self) -> tuple[Path, int | None]:
        if self.attach is not None and self.selected is None:
            f = self.follower(self.attach)
            if f.history.run_start is None:
                return self.attach, None
            return self.attach, assess.infer_stage(f.history, self.attach)
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
            return self._stages(self._preview_follower)[0], preview
        selected = self.selected
        while True:
            shown.poll(READ_SLICE_BYTES)
            if not shown.behind or time.monotonic() - started > CATCH_UP_BUDGET_S or self.selected != selected:
                break  # (another run picked meanwhile: the next tick shows it, this one is read on later)
        self.busy = shown.behind
        if self.busy:
            lock = self._lock(folder)
            pct = 100 * shown.reader.offset / max(1, shown.size)
            reason = f"reading history: {pct:.0f}% of {shown.size / 1e6:.0f} MB"
            pv = self._preview_view
            if pv is not None and pv.run_dir == folder:  # keep the preview up; only the progress moves
                return None, dataclasses.replace(pv, state_reason=reason + "; showing the newest part",
                                                 new_entries=[], replace_log=False)
            return None, build_view(shown, stage, lock, None, ("loading", reason), self._fresh(folder), partial=True)
        after_preview, self._preview_view = self._preview_view is not None, None
        stages_out, locks = self._stages()
        key = (folder, shown.version, locks[folder][0], self.selected)
        view = None
        # A live run that went quiet is judged again now and then: a frozen trainer writes nothing, and only a
        # fresh judgement raises the stall alert and replaces advice computed before it froze.
        quiet = locks[folder][0] == "live" and time.monotonic() - self._heavy_at >= QUIET_REJUDGE_S
        if key != self._shown or self.force.is_set() or after_preview or quiet:
            self.force.clear()
            fresh = self._fresh(folder) or after_preview  # the full history replaces the preview's log
            self._shown = key
            state = assess.run_state(shown.history, shown.has_events, locks[folder][0], None)
            now = time.monotonic()
            prev = self._last_view
            # Live and nothing but new steps: reuse the matrix and advice for up to HEAVY_EVERY_S.
            light = (not fresh and prev is not None and state[0] == "running" == prev.state
                     and now - self._heavy_at < HEAVY_EVERY_S)
            if not light:
                self._heavy_at = now
            a = self._assess(shown, stage) if stage and not light else (prev.assessment if light else None)
            state = assess.run_state(shown.history, shown.has_events, locks[folder][0], a.verdict if a else None)
            view = build_view(shown, stage, locks[folder], a, state, fresh, reuse=prev if light else None,
                              hints=self._hints())
            self._last_view = view
        return stages_out, view

    def _stages(self, preview: RunFollower | None = None) -> tuple[dict[int, StageInfo] | None, dict]:
        """Poll every stage folder (a previewed one stands in for its still-unread follower)."""
        infos: dict[int, StageInfo] = {}
        locks: dict[Path, tuple[str, str, int | None]] = {}
        folders = list(self.folders.items())
        if self.attach is not None and self.attach not in self.folders.values():
            folders.append((0, self.attach))
        for number, fold in folders:
            if preview is not None and fold == preview.run_dir:
                f = preview
            else:
                f = self.follower(fold)
                while f.poll(READ_SLICE_BYTES) and f.behind:
                    pass
            locks[fold] = lk = self._lock(fold)
            if number == 0:
                continue
            a = self._assess(f, number, live=lk[0] == "live") if f is not preview else None
            verdict = a.verdict if a is not None else None
            state = assess.run_state(f.history, f.has_events, lk[0], verdict)
            failed = tuple(f"{r.metric}: {r.reason}" for r in (a.rows if a else [])
                           if r.verdict in (Verdict.WARNING, Verdict.FAILURE))
            infos[number] = StageInfo(number, fold, state[0], f.history.last_step, f.history.max_steps,
                                      verdict.value if verdict else None, failed, lk[0], lk[2])
        self._states = {n: i.state for n, i in infos.items()}
        stages_key = tuple((i.state, i.step, i.verdict, i.lock_state) for i in infos.values())
        if stages_key == self._stages_key:
            return None, locks
        self._stages_key = stages_key
        return infos, locks

    def _hints(self) -> tuple[int | None, bool]:
        return assess.current_stage(self._states), self.readonly

    def _preview(self, f: RunFollower, stage: int | None) -> RunView | None:
        """Once per folder: a view from the ends of a long log that has not been read yet."""
        if f.run_dir in self._previewed:
            return None
        self._previewed.add(f.run_dir)
        if not f._cache_tried:
            f._try_cache()
        try:
            size = f.reader.path.stat().st_size
        except OSError:
            return None
        if size - f.reader.offset < PREVIEW_MIN_BYTES:
            return None
        tmp = RunFollower(f.run_dir)
        tmp.history = preview_history(f.reader.path)
        tmp.version = 1
        stage = stage or assess.infer_stage(tmp.history, f.run_dir)
        lock = self._lock(f.run_dir)
        a = assess.assess_stage(tmp.history, stage, f.run_dir)
        if a is not None:
            a.summary = f"PROVISIONAL (recent history only, still reading): {a.summary}"
        tmp.entries.extend(e for e in map(entry_for, list(tmp.history.samples)[-10:]) if e)
        self._preview_follower = tmp
        state = ("loading", f"reading history of {size / 1e6:.0f} MB; showing its newest {follower_mod.PREVIEW_TAIL_BYTES >> 20} MB")
        view = build_view(tmp, stage, lock, a, state, self._fresh(f.run_dir), hints=self._hints())
        return view

    def _fresh(self, folder: Path) -> bool:
        """True when the view switches to another folder (the event log starts over)."""
        fresh = self._shown is None or self._shown[0] != folder
        if fresh:
            self._shown = (folder, -1, None, self.selected)
        return fresh

    @staticmethod
    def _lock(folder: Path) -> tuple[str, str, int | None]:
        info = read_lock(folder)
        state, why = lock_state(info)
        return state, why, info.pid if info else None

    def save_due(self) -> bool:
        return any(f.cache_due() for f in list(self.followers.values()))

    def after_post(self) -> None:
        """Slow housekeeping once the views are out: store the history cache of big catch-ups."""
        for f in list(self.followers.values()):  # a copy: the App's thread may add one meanwhile
            f.save_cache()


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
