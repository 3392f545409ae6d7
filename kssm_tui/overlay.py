"""The overlay of marked runs, built in the runs worker (no Textual): every chart's series, downsampled and smoothed.

`OverlayRun` follows one marked folder with each reading's event time kept (the cockpit's own RunHistory leaves
times out), folding resumes as RunHistory does. `OverlayBuilder.build()` turns the marked runs into an
`OverlayView`: per chart one series per run, its x either the step or the active wall time
(kssm_core.reports.overlay.active_time: the gaps of a resume or a pause left out), TensorBoard's debiased EMA over
every point when smoothing is on, then thinned to at most OVERLAY_POINTS buckets, so the chart's render only
thins a few thousand points further and draws them. A run that only grew since the last build is smoothed from
the kept EMA state (a live run's new readings cost what they add).

`reference_series(ref)` maps a --reference file's columns onto the charts (loss and CE on the loss chart, val PPL,
R, u_val), thinned once.
"""

from __future__ import annotations

import math
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kssm_core.reports.overlay import (DEFAULT_SMOOTHING, GrowingEma, Reference, active_time, bucket_mean, map_times,
                                       minmax_downsample, run_names)
from kssm_core.runfolder import layout, legacy
from kssm_core.runfolder.history import EVAL_FIELDS, STEP_FIELDS, NAN, RunHistory, Series, StepBatch, as_number
from kssm_core.runfolder.runlog import EventLogReader

OVERLAY_POINTS = 1000  # buckets per series handed to a chart (a raw series: at most 2 points per bucket)
MAX_OVERLAY = 8  # the chart's run slots (colour + marker)
READ_SLICE_BYTES = 16 * 1024 * 1024
TIME = "t"

# chart key -> (series, metric): what each chart of the dashboard shows of an overlaid run.
CHART_METRICS = {"loss": ("steps", "loss"), "ppl": ("evals", "val_ppl"), "R": ("steps", "R"),
                 "u": ("steps", "u_val"), "grad": ("steps", "grad_norm")}
# chart key -> the reference columns drawn on it (with the label suffix of each).
REFERENCE_METRICS = {"loss": (("loss", ""), ("ce", " CE")), "ppl": (("val_ppl", ""),), "R": (("R", ""),),
                     "u": (("u_val", ""),), "grad": ()}


@dataclass(frozen=True)
class OverlayChart:
    """One chart's overlay: a series (name, x, raw values) per run, its slot, its smoothed line (or None)."""

    series: list[tuple[str, list[float], list[float]]]
    slots: list[int]
    smoothed: list[tuple[list[float], list[float]] | None] | None  # None: smoothing off


@dataclass(frozen=True)
class OverlayView:
    """What the charts show while runs are marked; `key` is the (runs, x axis, smoothing) it was built for."""

    key: tuple
    runs: tuple[tuple[Path, str, int], ...]  # (folder, legend name, slot)
    charts: dict[str, OverlayChart]
    x_label: str
    time_axis: bool
    smoothing: bool
    ema_weight: float
    serial: int = 0  # bumps with every build: the dashboard redraws when it changes
    notes: tuple[str, ...] = ()  # e.g. "stage1: no event times (legacy log): left out of the time axis"


def _time_history() -> RunHistory:
    return RunHistory(steps=Series(STEP_FIELDS + (TIME,)), evals=Series(EVAL_FIELDS + (TIME,)))


def _with_times(records: list) -> list:
    """Step batches carry their times beside the columns: give them a `t` column like the other fields."""
    for r in records:
        if type(r) is StepBatch and TIME not in r.cols:
            r.cols[TIME] = array("d", (NAN if t is None else t for t in r.ts))
    return records


class OverlayRun:
    """One overlaid folder, followed incrementally; `history.steps` / `.evals` carry a `t` column."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.events = self.run_dir / layout.EVENTS
        self.reader = EventLogReader(self.events)
        self.history = _time_history()
        self.segment_starts: list[float] = []
        self.version = 0
        self._resets = 0
        self._legacy_sig: tuple | None = None

    def poll(self) -> bool:
        """Read what is new; True when the history changed."""
        if self.events.exists() or self.reader.offset:
            return self._poll_events()
        return self._poll_legacy()

    def _poll_events(self) -> bool:
        changed = False
        while True:
            try:
                records = self.reader.read_new(max_bytes=READ_SLICE_BYTES, step_batches=True)
            except OSError:
                return changed
            if self.reader.stats.resets != self._resets:  # truncated or replaced: fold again from the start
                self._resets = self.reader.stats.resets
                self.history, self.segment_starts, changed = _time_history(), [], True
            if not records:
                break
            for r in records:
                if type(r) is dict and r.get("event") == "run_start":
                    t, _ = as_number(r.get("t"))
                    self.segment_starts.append(t)
            self.history.extend(_with_times(records))
            changed = True
        if changed:
            self.version += 1
        return changed

    def _poll_legacy(self) -> bool:
        path = self.run_dir / legacy.LOG_NAME
        try:
            st = os.stat(path)
        except OSError:
            return False
        sig = (st.st_size, st.st_mtime_ns)
        if sig == self._legacy_sig:
            return False
        self._legacy_sig = sig
        h = _time_history()
        try:
            h.extend(list(legacy.read_legacy(self.run_dir)))
        except OSError:
            return False
        self.history, self.segment_starts = h, []
        self.version += 1
        return True


def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds <= 180:
        return 1.0, "s"
    if seconds <= 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


class OverlayBuilder:
    """Builds OverlayViews for the marked runs; keeps one OverlayRun and the EMA state per run and metric."""

    def __init__(self, ema_weight: float = DEFAULT_SMOOTHING, points: int = OVERLAY_POINTS) -> None:
        self.ema_weight = ema_weight
        self.points = points
        self.runs: dict[Path, OverlayRun] = {}
        self._ema = GrowingEma(ema_weight)  # keyed by (folder, metric)
        self._built: tuple | None = None  # (key, versions) of the last build
        self._axes_cache: dict[Path, tuple] = {}  # folder -> ((version, time axis), axes)
        self._pieces_cache: dict[Path, tuple] = {}  # folder -> ((version, axis, smoothing, scale), pieces)
        self._serial = 0

    def poll(self, folders) -> bool:
        """Read what is new in each marked folder (followers of unmarked ones are dropped); True if any changed."""
        want = {Path(f) for f in folders}
        for gone in [d for d in self.runs if d not in want]:
            del self.runs[gone]
            self._ema.keep_only(lambda k, gone=gone: k[0] != gone)
            self._axes_cache.pop(gone, None)
            self._pieces_cache.pop(gone, None)
        changed = False
        for d in want:
            r = self.runs.get(d)
            if r is None:
                r = self.runs[d] = OverlayRun(d)
            changed |= r.poll()
        return changed

    def build_if_changed(self, marked: tuple[tuple[Path, int], ...], time_axis: bool, smoothing: bool
                         ) -> OverlayView | None:
        """Poll the marked runs and build a view when they or the settings changed (else None)."""
        self.poll([d for d, _ in marked])
        key = (marked, time_axis, smoothing)
        versions = tuple(self.runs[d].version for d, _ in marked)
        if self._built == (key, versions):
            return None
        self._built = (key, versions)
        return self.build(marked, time_axis, smoothing)

    def build(self, marked: tuple[tuple[Path, int], ...], time_axis: bool, smoothing: bool) -> OverlayView:
        """Every chart's overlay of the marked runs; a run unchanged since the last build (its version, the axis,
        the smoothing) is not computed again, so a live run costs only its own series."""
        self.poll([d for d, _ in marked])
        names = run_names([d for d, _ in marked]) if marked else []
        names = [n.replace("/previous/", "@") for n in names]
        axes = {d: self._axes(d, time_axis) for d, _ in marked}
        notes = tuple(a[2] for a in axes.values() if a[2])
        span = max((a[3] for a in axes.values()), default=0.0)
        scale, unit = _time_unit(span) if time_axis else (1.0, "")
        pieces = {d: self._pieces(d, time_axis, smoothing, scale, axes[d]) for d, _ in marked}
        charts = {}
        for key in CHART_METRICS:
            series, slots, smooth = [], [], []
            for (d, slot), name in zip(marked, names):
                rx, ry, sm = pieces[d][key]
                series.append((name, rx, ry))
                slots.append(slot)
                smooth.append(sm)
            charts[key] = OverlayChart(series, slots, smooth if smoothing else None)
        for gone in [d for d in self._pieces_cache if d not in pieces]:
            del self._pieces_cache[gone]
            self._axes_cache.pop(gone, None)
        self._serial += 1
        x_label = f"active time ({unit})" if time_axis else "step"
        runs = tuple((d, n, slot) for (d, slot), n in zip(marked, names))
        return OverlayView((marked, time_axis, smoothing), runs, charts, x_label, time_axis, smoothing,
                           self.ema_weight, self._serial, notes)

    def _axes(self, d: Path, time_axis: bool) -> tuple:
        """(x of the steps, x of the evals, a note or "", the span) of one run: steps, or active seconds."""
        run = self.runs[d]
        key = (run.version, time_axis)
        kept = self._axes_cache.get(d)
        if kept is not None and kept[0] == key:
            return kept[1]
        h = run.history
        # np.array copies: a view of a history column would pin its buffer, and the next fold could not grow it.
        note, span = "", 0.0
        if time_axis:
            st = np.array(h.steps.cols[TIME], dtype=np.float64)
            sx = active_time(st, run.segment_starts) if st.size else np.empty(0)
            if st.size and not np.isfinite(st).any():
                note = f"{d}: no event times: not on the time axis"
            ex = map_times(np.array(h.evals.cols[TIME], dtype=np.float64), st, sx)
            if sx.size and np.isfinite(sx).any():
                span = float(np.nanmax(sx))
        else:
            sx = np.array(h.steps.steps, dtype=np.float64)
            ex = np.array(h.evals.steps, dtype=np.float64)
        out = (sx, ex, note, span)
        self._axes_cache[d] = (key, out)
        return out

    def _pieces(self, d: Path, time_axis: bool, smoothing: bool, scale: float, axes: tuple) -> dict:
        """chart key -> (raw x, raw y, smoothed (x, y) or None) of one run, thinned to `points` buckets."""
        run = self.runs[d]
        key = (run.version, time_axis, smoothing, scale)
        kept = self._pieces_cache.get(d)
        if kept is not None and kept[0] == key:
            return kept[1]
        h = run.history
        out = {}
        for chart, (series_name, metric) in CHART_METRICS.items():
            ser = h.steps if series_name == "steps" else h.evals
            x = axes[0] if series_name == "steps" else axes[1]
            x = x / scale if scale != 1.0 else x
            y = np.array(ser.cols[metric], dtype=np.float64)
            steps = np.array(ser.steps, dtype=np.float64)
            keep = np.isfinite(x) & np.isfinite(y)
            x, y, steps = x[keep], y[keep], steps[keep]
            sm = None
            if smoothing:
                smx, smy = bucket_mean(x, self._smooth(d, metric, steps, y), 2 * self.points)
                sm = (smx.tolist(), smy.tolist())
            rx, ry = minmax_downsample(x, y, self.points)
            out[chart] = (rx.tolist(), ry.tolist(), sm)
        self._pieces_cache[d] = (key, out)
        return out

    def _smooth(self, run_dir: Path, metric: str, steps: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The debiased EMA of a run's metric over every finite point; continued from the kept state when the
        series only grew since the last build (the same steps and values up to where it was)."""
        return self._ema.smooth((run_dir, metric), steps, y)


def reference_series(ref: Reference | None, points: int = OVERLAY_POINTS) -> dict[str, list]:
    """A --reference trajectory per chart: [(name, steps, values)], thinned once (a published curve can be long)."""
    out: dict[str, list] = {k: [] for k in CHART_METRICS}
    if ref is None:
        return out
    for key, columns in REFERENCE_METRICS.items():
        for metric, suffix in columns:
            got = ref.get(metric)
            if got is None or not len(got[0]):
                continue
            x, y = _finite(np.asarray(got[0], dtype=np.float64), np.asarray(got[1], dtype=np.float64))
            x, y = minmax_downsample(x, y, points)
            out[key].append((f"{ref.name}{suffix}", x.tolist(), y.tolist()))
    return out


def best_ppl(history: RunHistory) -> float | None:
    """The lowest finite val PPL of a run (exp of its best val loss when no PPL was logged)."""
    vals = [v for v in history.evals.cols["val_ppl"] if math.isfinite(v)]
    if vals:
        return min(vals)
    loss = history.best_val_loss
    if loss is not None and math.isfinite(loss) and loss < 700:
        return math.exp(loss)
    return None

