"""The dashboard's payload for one run: charts downsampled, plus the core's RunStatus as the cockpit words it (no Textual).

`build_view` turns a follower's history (charts) and the run's RunStatus (state, matrix, alerts, advice:
all decided by kssm_core.runbook.judge) into an immutable RunView; what it hands over is bounded whatever the
run's length (MAX_POINTS per chart series). With smoothing on, each series' debiased EMA is taken over every
logged point, as the overlay's is, then thinned (`smoothed_line`); a live run's new readings cost what they add.
"""

from __future__ import annotations

import math

import numpy as np

from kssm_core.reports.overlay import GrowingEma, bucket_mean
from kssm_core.runbook.matrix import zone_bands
from kssm_core.runbook.runstatus import RunStatus
from kssm_core.runbook.verdicts import Verdict
from kssm_core.runfolder import layout
from kssm_core.runfolder.follower import RunFollower

from . import labels
from .controller import tail_text
from .entries import entries_for
from .messages import ChartSpec, RunView
from .safe_text import clean

MAX_POINTS = 400  # chart points per series: enough for a terminal, bounded on week-long runs
R_BANDS = zone_bands()  # the spec's R zones, from the runbook criteria (one place for the edges)


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


def smoothed_line(ema: GrowingEma, key, steps, values, limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """The debiased EMA of a series over every finite point (continued from `ema`'s kept state when the series
    only grew), thinned to one mean point per bucket, 2 * `limit` buckets: the overlay's smoothing of one run."""
    x = np.array(steps, dtype=np.float64)  # copies: a view would pin the history's buffers, which must grow
    y = np.array(values, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    bx, by = bucket_mean(x, ema.smooth(key, x, y), 2 * limit)
    return bx.tolist(), by.tolist()


def build_view(f: RunFollower, status: RunStatus | None, stage: int | None, fresh: bool, *,
               loading: str | None = None, hints: tuple[int | None, bool] = (None, True),
               autopilot=None, extra_entries: list[tuple[str, str]] | None = None,
               ema: GrowingEma | None = None) -> RunView:
    """The dashboard's payload for one run (downsampled: cost is bounded whatever the run's length).

    `status`: the core's judgement of the run (None while a long log is still being read: `loading` then
    says how far, and no verdict is shown, since verdicts on half a history would mislead).
    `hints` = (the current stage, read-only?) for the key named in the next-step line (labels.next_step).
    `ema`: smoothing is on; each chart's `smoothed` lines are its series' EMA over every point (keyed by the
    folder and the metric in `ema`, so the next view of a live run smooths only what it added).
    """
    h = f.history
    s, e = h.steps, h.evals

    def chart(title, series, **kw) -> ChartSpec:
        """series: (history series, metric, label or None) per line."""
        lines = []
        for ser, name, label in series:
            xs, ys = downsample(ser.steps, ser.cols[name])
            lines.append((label or name, xs, ys))
        smoothed = None
        if ema is not None:
            smoothed = [smoothed_line(ema, (f.run_dir, name), ser.steps, ser.cols[name]) for ser, name, _ in series]
        return ChartSpec(title, lines, smoothed=smoothed, **kw)

    mc = (h.run_start or {}).get("model_config") or {}
    u_min = mc.get("u_min", 0.1) if isinstance(mc.get("u_min", 0.1), (int, float)) else 0.1
    u_max = mc.get("u_max", 10.0) if isinstance(mc.get("u_max", 10.0), (int, float)) else 10.0
    charts = {
        "loss": chart("Loss", [(s, "loss", "total"), (s, "ce", "CE")], y_label="loss"),
        "ppl": chart("Val PPL", [(e, "val_ppl", "val PPL")], y_label="PPL", log_ok=True),
        "R": chart("R (phase coherence)", [(s, "R", None)], bands=list(R_BANDS), y_label="R"),
        "u": chart("u_val", [(s, "u_val", None)], y_label="u",
                   hlines=[(float(u_min), "clamp floor"), (float(u_max), "clamp ceiling")]),
        "grad": chart("Grad norm", [(s, "grad_norm", "grad norm")], y_label="norm", log_ok=True),
    }
    sparks = {name: downsample(s.steps, s.cols[name], 60)[1] for name in ("loss", "R", "u_val", "grad_norm")}
    sparks["val_ppl"] = downsample(e.steps, e.cols["val_ppl"], 60)[1]
    hb = h.last_heartbeat or {}
    hb_t = hb.get("t") if isinstance(hb.get("t"), (int, float)) else None
    replace = fresh or f.reset_pending
    f.reset_pending = False
    entries = entries_for(f.take_records()) + list(extra_entries or [])  # + the autopilot's new decisions
    if status is None:
        label, reason, rows, assessment, rec, alerts = "loading", loading or "reading history", [], None, loading or "", []
        lock, pid, need, end = "none", None, None, {}
    else:
        label, reason = labels.plan_label(status), labels.plan_reason(status)
        rows, assessment = status.matrix, status.assessment
        code, text = labels.advice_line(status)
        rec = labels.next_step(code, text, stage, *hints, passed=assessment.verdict == Verdict.HEALTHY,
                               legacy=status.source == "legacy")
        alerts = [a for a in status.alerts if a.code != "crashed"]  # a crash is shown from the state
        lock, pid, need, end = status.lock, status.pid, status.disk.get("needed_bytes"), status.run_end or {}
    tail = tail_text(f.run_dir / layout.TRAINER_OUT) if label in ("crashed", "failed") else ""
    return RunView(
        run_dir=f.run_dir, stage=stage, state=label, state_reason=reason, last_step=h.last_step,
        max_steps=h.max_steps, events=h.events, bad_lines=f.reader.stats.bad_lines, resets=f.reader.stats.resets,
        charts=charts, sparks=sparks, matrix_rows=rows, assessment=assessment, recommendation=rec,
        lock_state=lock, lock_pid=pid if lock == "live" or (status is not None and status.process == "alive") else None,
        gpu_mem_bytes=h.steps.last("gpu_mem_bytes"), last_heartbeat_t=hb_t,
        disk_needed_bytes=need, new_entries=entries, replace_log=replace,
        alerts=alerts, trainer_out_tail=_clean_block(tail),
        end_status=_text_or_none(end.get("status")), end_reason=_text_or_none(end.get("reason")),
        status=status,
        autopilot_line=autopilot.line if autopilot is not None else None,
        autopilot_pid=autopilot.pid if autopilot is not None and autopilot.alive else None,
    )


def _text_or_none(v) -> str | None:
    return v if isinstance(v, str) else None


def _clean_block(text: str) -> str:
    return "\n".join(clean(line) for line in text.splitlines())
