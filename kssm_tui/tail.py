"""Follows run folders' events.jsonl from a byte offset in a thread and posts batched updates.

`RunFollower` is the file logic (no Textual): kssm_core.runlog.EventLogReader reads only new
complete lines (holding back a partial last line, skipping bad ones, restarting on a
truncated or replaced file) and RunHistory folds them in (a resume replaces orphaned steps).
`Monitor` watches the five stage folders (and an attached one) and builds the immutable
RunView / StageInfo payloads; `monitor_loop` runs it in a Textual thread worker and posts
only when something changed, so an idle cockpit does no rendering work.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from kssm_core.config import STAGES
from kssm_core.history import RunHistory, as_step
from kssm_core.legacy import has_legacy_log, read_legacy
from kssm_core.lock import lock_state, read_lock
from kssm_core.matrix import zone_bands
from kssm_core.runlog import EventLogReader
from kssm_core.status import EventsFollower
from kssm_core.verdicts import Verdict

from . import assess
from .controller import TRAINER_OUT, tail_text
from .messages import ChartSpec, RunChanged, RunView, StageInfo, StagesChanged, WorkerTrouble
from .safe_text import clean

MAX_POINTS = 400  # chart points per series: enough for a terminal, bounded on week-long runs
MAX_ENTRIES = 200  # event-log entries kept for a newly selected run
READ_SLICE_BYTES = 16 * 1024 * 1024  # one read of a long log; bounded memory per slice
# Reading time between two partial views of a long catch-up: each view costs a repaint, which competes with
# the reading for the CPU, so a 1,000,000-event log (about 1 s to read) is read without one.
CATCH_UP_BUDGET_S = 1.5
PREVIEW_MIN_BYTES = 32 * 1024 * 1024  # a log at least this big is previewed from its ends first
PREVIEW_TAIL_BYTES = 4 * 1024 * 1024
PREVIEW_HEAD_BYTES = 256 * 1024
HEAVY_EVERY_S = 3.0  # a live run's matrix, advice and alerts are recomputed at most this often
PAINT_WAIT_S = 1.0  # at most this long for the App to paint a catch-up view before reading on
R_BANDS = zone_bands()  # the spec's R zones, from the runbook criteria (one place for the edges)


def _clean(text: str) -> str:
    return clean(str(text))


def downsample(steps, values, limit: int = MAX_POINTS) -> tuple[list[int], list[float]]:
    """Every k-th finite point (and always the last) so a series has at most ~limit points."""
    n = len(steps)
    k = max(1, math.ceil(n / limit))
    xs: list[int] = []
    ys: list[float] = []
    idx = list(range(0, n, k))
    if n and idx[-1] != n - 1:
        idx.append(n - 1)
    for i in idx:
        v = values[i]
        if not math.isnan(v):
            xs.append(int(steps[i]))
            ys.append(float(v))
    return xs, ys


def _fmt(v, spec: str = ".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def entry_for(r: dict) -> tuple[str, str] | None:
    """One event-log line for the events worth reading (not steps or heartbeats)."""
    kind = r.get("event")
    step = as_step(r.get("step"))
    if kind == "eval":
        return "eval", f"step {step}: val loss {_fmt(r.get('val_loss'))}, PPL {_fmt(r.get('val_ppl'), '.1f')}, R {_fmt(r.get('val_R'), '.3f')}"
    if kind == "sample":
        return "sample", f"step {step}: {_clean(r.get('text', ''))}"
    if kind == "checkpoint":
        return "checkpoint", f"step {step}: saved {_clean(r.get('path', ''))}"
    if kind == "warning":
        return "warning", f"{_clean(r.get('code', ''))}: {_clean(r.get('message', ''))}"
    if kind == "run_start":
        src = r.get("resumed_from")
        how = f"resumed from {_clean(Path(str(src)).name)}" if src else "started"
        return "run_start", f"{how} at step {as_step(r.get('start_step')) or 0} of {as_step(r.get('max_steps'))} on {_clean(r.get('device', '?'))}"
    if kind == "run_end":
        return "run_end", f"{_clean(r.get('status', '?'))} at step {step}: {_clean(r.get('reason', ''))}"
    return None


class RunFollower:
    """One run folder: its reader, its folded history and the log entries not yet shown.

    Reads in slices (`poll(max_bytes)`) so a huge log is folded progressively and the dashboard
    can show the part read so far. A large catch-up is stored in kssm_core.status's JSON cache
    (outside the run folder), so reopening a week-long run reads only what is new. A folder
    with no events.jsonl but a reference-trainer training.log is read through kssm_core.legacy.
    """

    CACHE_AFTER_BYTES = 16 * 1024 * 1024

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.reader = EventLogReader(self.run_dir / "events.jsonl")
        self.history = RunHistory()
        self.entries: deque[tuple[str, str]] = deque(maxlen=MAX_ENTRIES)
        self.version = 0  # bumps whenever new records were folded in
        self.reset_pending = False
        self.size = 0  # the file's size at the last poll (progress of a catch-up)
        self._cache_tried = False
        self._read_since_cache = 0
        self._legacy_sig: tuple | None = None
        self.legacy = False

    @property
    def has_events(self) -> bool:
        return self.reader.offset > 0 or self.legacy or (self.run_dir / "events.jsonl").exists()

    @property
    def behind(self) -> bool:
        """More of the file is waiting to be read."""
        return self.reader.offset < self.size

    def _try_cache(self) -> None:
        self._cache_tried = True
        ef = EventsFollower(self.reader.path)
        if ef.load_cached():
            self.reader, self.history = ef.reader, ef.history
            self.entries.extend(e for e in map(entry_for, list(self.history.samples)[-20:]) if e)
            self.version += 1

    def cache_due(self) -> bool:
        return self._read_since_cache >= self.CACHE_AFTER_BYTES and not self.behind

    def save_cache(self) -> None:
        """Store the folded history after a big catch-up (best effort; kssm_core.status owns the format)."""
        if not self.cache_due():
            return
        self._read_since_cache = 0
        ef = EventsFollower(self.reader.path)
        ef.reader, ef.history = self.reader, self.history
        ef.save_cache()

    def _poll_legacy(self) -> bool:
        if not has_legacy_log(self.run_dir):
            return False
        st = (self.run_dir / "training.log").stat()
        sig = (st.st_ino, st.st_size, st.st_mtime)
        if sig == self._legacy_sig:
            return False
        self._legacy_sig, self.legacy = sig, True
        self.history = RunHistory()  # a text log has no offsets worth keeping: fold it again
        self.entries.clear()
        self.reset_pending = True
        records = read_legacy(self.run_dir)
        self.history.extend(records)
        self.entries.extend(e for e in map(entry_for, records) if e)
        self.version += 1
        return True

    def poll(self, max_bytes: int | None = None) -> bool:
        path = self.reader.path
        if not path.exists():
            return self._poll_legacy()
        if not self._cache_tried:
            self._try_cache()
        try:
            self.size = path.stat().st_size
        except OSError:
            return False
        resets = self.reader.stats.resets
        before = self.reader.offset
        records = self.reader.read_new(max_bytes=max_bytes, step_batches=True)  # steps in columnar batches
        if self.reader.stats.resets != resets:  # truncated or replaced: rebuild from scratch
            self.history = RunHistory()
            self.entries.clear()
            self.reset_pending = True
            self.version += 1
            before = 0
        self._read_since_cache += max(0, self.reader.offset - before)
        if not records:
            return self.reader.stats.resets != resets
        self.history.extend(records)
        for r in records:
            if type(r) is dict:  # a StepBatch holds only steps, which have no log entry
                e = entry_for(r)
                if e is not None:
                    self.entries.append(e)
        self.version += 1
        return True

    def take_entries(self) -> list[tuple[str, str]]:
        out = list(self.entries)
        self.entries.clear()
        return out


def preview_history(path: Path) -> RunHistory:
    """A quick history from a long log's head (schema, run_start) and its last few MB of events.

    Shown while the whole log is read so the dashboard fills at once; its matrix verdicts are marked
    provisional because they see only the recent steps.
    """
    h = RunHistory()
    with open(path, "rb") as fh:
        head = fh.read(PREVIEW_HEAD_BYTES)
        size = fh.seek(0, 2)
        fh.seek(max(len(head), size - PREVIEW_TAIL_BYTES))
        tail = fh.read(PREVIEW_TAIL_BYTES)
    head = head[: head.rfind(b"\n") + 1]
    tail = tail[tail.find(b"\n") + 1:]
    tail = tail[: tail.rfind(b"\n") + 1]
    # Parsed as the reader parses (step lines in columnar batches, only the newest heartbeat).
    h.extend(EventLogReader(path).parse_lines(head.split(b"\n")[:-1] + tail.split(b"\n")[:-1], step_batches=True))
    return h


def build_view(f: RunFollower, stage: int | None, lock: tuple[str, str, int | None], assessment, state: tuple[str, str],
               fresh: bool, partial: bool = False, reuse: RunView | None = None,
               hints: tuple[int | None, bool] = (None, True)) -> RunView:
    """The dashboard's payload for one run (downsampled: cost is bounded whatever the run's length).

    `hints` = (the current stage, read-only?) for the key named in the next-step line (assess.next_step).
    """
    h = f.history
    s, e = h.steps, h.evals

    def ser(series, name, label=None):
        xs, ys = downsample(series.steps, series.cols[name])
        return (label or name, xs, ys)

    mc = (h.run_start or {}).get("model_config") or {}
    u_min = mc.get("u_min", 0.1) if isinstance(mc.get("u_min", 0.1), (int, float)) else 0.1
    u_max = mc.get("u_max", 10.0) if isinstance(mc.get("u_max", 10.0), (int, float)) else 10.0
    charts = {
        "loss": ChartSpec("Loss", [ser(s, "loss", "total"), ser(s, "ce", "CE")], y_label="loss"),
        "ppl": ChartSpec("Val PPL", [ser(e, "val_ppl", "val PPL")], y_label="PPL", log_ok=True),
        "R": ChartSpec("R (phase coherence)", [ser(s, "R")], bands=list(R_BANDS), y_label="R"),
        "u": ChartSpec("u_val", [ser(s, "u_val")], hlines=[(float(u_min), "clamp floor"), (float(u_max), "clamp ceiling")],
                       y_label="u"),
        "grad": ChartSpec("Grad norm", [ser(s, "grad_norm", "grad norm")], y_label="norm", log_ok=True),
    }
    sparks = {name: downsample(s.steps, s.cols[name], 60)[1] for name in ("loss", "R", "u_val", "grad_norm")}
    sparks["val_ppl"] = downsample(e.steps, e.cols["val_ppl"], 60)[1]
    hb = h.last_heartbeat or {}
    hb_t = hb.get("t") if isinstance(hb.get("t"), (int, float)) else None
    need = assess.checkpoint_need(h)  # the same rule as kssm status's disk alert
    tail = tail_text(f.run_dir / TRAINER_OUT) if state[0] in ("crashed", "failed") else ""
    # A partial view (a long log still being read) skips the matrix: verdicts on half a history would mislead.
    # `reuse`: a live run's matrix and advice are refreshed every few seconds, not on every step event.
    if partial:
        rows, rec, alerts = [], state[1], []
    elif reuse is not None:
        rows, rec, alerts = reuse.matrix_rows, reuse.recommendation, reuse.alerts
    else:
        rows = assess.full_matrix(h, stage, f.run_dir)
        code, rec = assess.recommendation(f.run_dir, h, state[1])
        passed = assessment is not None and assessment.verdict == Verdict.HEALTHY
        rec = assess.next_step(code, rec, stage, *hints, passed=passed)
        alerts = assess.alerts(h, f.run_dir, lock[0])
    end = h.run_end or {}
    replace = fresh or f.reset_pending
    f.reset_pending = False
    entries = f.take_entries()
    return RunView(
        run_dir=f.run_dir, stage=stage, state=state[0], state_reason=state[1], last_step=h.last_step,
        max_steps=h.max_steps, events=h.events, bad_lines=f.reader.stats.bad_lines, resets=f.reader.stats.resets,
        charts=charts, sparks=sparks, matrix_rows=rows, assessment=assessment, recommendation=rec,
        lock_state=lock[0], lock_pid=lock[2], gpu_mem_bytes=h.steps.last("gpu_mem_bytes"), last_heartbeat_t=hb_t,
        disk_needed_bytes=need, new_entries=entries, replace_log=replace,
        alerts=alerts, trainer_out_tail=_clean_block(tail),
        end_status=_text_or_none(end.get("status")), end_reason=_text_or_none(end.get("reason")),
    )


def _text_or_none(v) -> str | None:
    return v if isinstance(v, str) else None


def _clean_block(text: str) -> str:
    return "\n".join(_clean(line) for line in text.splitlines())


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
        if key != self._shown or self.force.is_set() or after_preview:
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
        state = ("loading", f"reading history of {size / 1e6:.0f} MB; showing its newest {PREVIEW_TAIL_BYTES >> 20} MB")
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
