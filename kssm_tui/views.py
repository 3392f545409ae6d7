"""The dashboard's payload for one run: charts downsampled, the matrix, the advice, the alerts (no Textual).

`build_view` turns a RunFollower's history into an immutable RunView; its cost is bounded whatever
the run's length (MAX_POINTS per chart series).
"""

from __future__ import annotations

import math

from kssm_core.runbook.matrix import zone_bands
from kssm_core.runbook.verdicts import Verdict

from . import assess
from .controller import TRAINER_OUT, tail_text
from .follower import RunFollower
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
    return "\n".join(clean(line) for line in text.splitlines())
