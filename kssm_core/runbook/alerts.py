"""Alerts beyond the decision matrix, as pure functions of a run's history and facts passed in.

Grad norm exploding / vanishing, reg loss out of its band, a NaN loss, u below the clamp floor, a stalled or
crashed trainer, too little disk for the checkpoints still to come, memory pressure. These are the runbook's
immediate kinds: they may be critical mid-stage, each on the evidence stated in kssm_core.runbook.criteria.
No alert comes from an end-of-stage matrix row (those wait for the stage's milestone: MatrixRow.provisional). Facts about the machine (kssm_core.runfolder.system) and the
lock state (kssm_core.runfolder.lock.lock_state) are arguments, so tests can feed any situation.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from kssm_core.config import STAGE_TARGETS, TrainConfig
from kssm_core.runbook import cmdline, playbook
from kssm_core.runbook.criteria import DEFAULT, Criteria
from kssm_core.runbook.matrix import clamp_claim, floor_breach
from kssm_core.runbook.verdicts import Alert, Severity
from kssm_core.runfolder.history import RunHistory, as_number, as_step
from kssm_core.runfolder.system import SystemFacts

_DEFAULTS = TrainConfig()
LEGACY_SAVE_INTERVAL = 1000  # the reference trainer's


@dataclass
class CheckpointNeed:
    """Disk the rest of the run needs for checkpoints (an upper bound: it ignores files pruning frees)."""

    bytes_each: int | None  # size of the newest periodic checkpoint, None when none was saved yet
    remaining_saves: int  # checkpoint saves between the newest step and max_steps
    files_kept: int  # of those, files that stay: milestones plus at most keep_checkpoints periodic ones
    bytes_needed: int | None  # (files_kept + 1 being written) x bytes_each
    estimated: bool = False  # bytes_each estimated from the parameter count (no checkpoint saved yet)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def checkpoint_need(history: RunHistory) -> CheckpointNeed:
    cfg = history.config
    interval = as_step(cfg.get("save_interval")) or (LEGACY_SAVE_INTERVAL if not cfg else None)
    keep = as_step(cfg.get("keep_checkpoints"))
    keep = _DEFAULTS.keep_checkpoints if keep is None else keep
    target = history.max_steps
    last = history.last_step or as_step((history.run_start or {}).get("start_step")) or 0
    periodic = [c for c in history.checkpoints.values() if not c.get("best")]
    newest = max(periodic, key=lambda c: as_step(c.get("step")) or -1, default=None)
    size = as_step(newest.get("bytes")) if newest else None
    estimated = False
    if size is None:  # no checkpoint yet: the trainer's own estimate (weights + two Adam moments + 1 MB)
        params = as_step((history.run_start or {}).get("parameters"))
        if params:
            size, estimated = 3 * 4 * params + 1_000_000, True
    if target is None or interval is None or target <= last:
        return CheckpointNeed(size, 0, 0, 0 if target is not None and target <= last else None, estimated)
    milestones = {s for s in STAGE_TARGETS if last < s <= target} | {target}
    n_periodic = target // interval - last // interval
    periodic_only = n_periodic - sum(1 for s in milestones if s % interval == 0)
    remaining = n_periodic + sum(1 for s in milestones if s % interval != 0)
    kept = len(milestones) + min(max(0, periodic_only), keep)
    return CheckpointNeed(size, remaining, kept, (kept + 1) * size if size is not None else None, estimated)


def _reg_negative(history: RunHistory, at: int) -> Alert:
    """The spec's band calls reg < 0 a numerical error, but the formula itself goes below 0 when mean u > 1
    (-log(mean u) < 0) and the determinant term is small: then it is a warning with that explanation."""
    steps = history.steps
    step, reg, u_val = steps.steps[at], steps.cols["reg"][at], steps.cols["u_val"][at]
    if math.isfinite(u_val) and u_val > 1.0:
        return Alert("reg_negative", Severity.WARNING,
                     f"reg loss {reg:.4f} at step {step} < 0, explained by mean u {u_val:.3g} > 1 "
                     f"(the log barrier -log(u) is negative): watch u_val, not a numerical error")
    return Alert("reg_negative", Severity.CRITICAL, f"reg loss {reg:.4f} at step {step} < 0: numerical error")


def _newest_finite(history: RunHistory, name: str, n: int) -> list[tuple[int, float]]:
    """(step, value) of the newest n finite readings of a step column, newest first."""
    steps, col = history.steps.steps, history.steps.cols[name]
    out: list[tuple[int, float]] = []
    for i in range(len(col) - 1, -1, -1):
        if math.isfinite(col[i]):
            out.append((steps[i], col[i]))
            if len(out) == n:
                break
    return out


def _grad_alerts(history: RunHistory, c: Criteria, run_dir: str | Path | None) -> list[Alert]:
    """Grad norm pathological: immediate (at any point of the stage) once the newest grad_min_readings readings are
    all beyond the band; exploding on the newest reading alone is a warning (one averaged spike is not a trend)."""
    newest = _newest_finite(history, "grad_norm", max(1, c.grad_min_readings))
    if not newest:
        return []
    step, v = newest[0]
    enough = len(newest) >= c.grad_min_readings
    if v > c.grad_exploding:
        repeated = enough and all(g > c.grad_exploding for _, g in newest)
        evidence = (f"the newest {len(newest)} readings all above" if repeated
                    else f"one reading so far: critical after {c.grad_min_readings} in a row")
        return [Alert("grad_exploding", Severity.CRITICAL if repeated else Severity.WARNING,
                      f"grad norm {v:.4g} at step {step} > {c.grad_exploding:g} (healthy 1-10): exploding ({evidence})",
                      playbook.train_command(history, run_dir, learning_rate=playbook.lower_learning_rate(
                          history.config.get("learning_rate"))))]
    if v < c.grad_vanishing and enough and all(g < c.grad_vanishing for _, g in newest):
        return [Alert("grad_vanishing", Severity.WARNING,
                      f"grad norm {v:.3g} at step {step} < {c.grad_vanishing:g} (healthy 1-10): vanishing "
                      f"(the newest {len(newest)} readings)")]
    return []


def loss_nan_alert(history: RunHistory, run_dir: str | Path | None = None) -> Alert | None:
    """Immediate, one reading: the newest step's loss is NaN/inf (written as null), or the trainer stopped on it.
    Whatever the stage and its progress: a long run's Stage 1 Loss row only sees its first 100 steps."""
    steps = history.steps
    end = history.run_end or {}
    newest_bad = len(steps) and not math.isfinite(steps.cols["loss"][-1]) and not math.isfinite(steps.cols["ce"][-1])
    if not (newest_bad or end.get("reason") == "nan_loss"):
        return None
    step = as_step(end.get("step")) or history.last_step
    return Alert("loss_nan", Severity.CRITICAL, f"loss is NaN/inf at step {step}",
                 playbook.train_command(history, run_dir, learning_rate=playbook.lower_learning_rate(
                     history.config.get("learning_rate"))), {"step": step})


def u_floor_alert(history: RunHistory, c: Criteria = DEFAULT) -> Alert | None:
    """Immediate, one reading: u_val below the clamp floor (the bistability constraint broken), at any stage.
    The monostable ablation has no clamp and raises nothing here (see matrix.clamp_claim)."""
    found = floor_breach(history, c)
    if found is None:
        return None
    step, u, n = found
    kind, u_min = clamp_claim(history)
    floor = f"the clamp floor {u_min:g}" if kind == "bistable" else "0"
    newest = history.steps.last("u_val")
    return Alert("u_floor_broken", Severity.CRITICAL,
                 f"the bistability constraint is broken (u = {u:.3g} at step {step}): {n} reading(s) below {floor}, "
                 f"newest u_val {newest:.3g}", None, {"first_step": step, "first_u": u, "readings_below": n})


def metric_alerts(history: RunHistory, c: Criteria = DEFAULT, run_dir: str | Path | None = None) -> list[Alert]:
    out: list[Alert] = _grad_alerts(history, c, run_dir)
    for a in (loss_nan_alert(history, run_dir), u_floor_alert(history, c)):
        if a is not None:
            out.append(a)
    r = history.steps.last_finite("reg")
    if r is not None:
        step, v = history.steps.steps[r], history.steps.cols["reg"][r]
        if v < 0:
            out.append(_reg_negative(history, r))
        elif v > c.reg_high:
            lam = playbook.raise_lambda_reg(history.config.get("lambda_reg"))
            out.append(Alert("reg_high", Severity.WARNING,
                             f"reg loss {v:.4f} at step {step} > {c.reg_high:g}: the constraints dominate the loss",
                             None, {"lambda_reg_if_u_at_clamps": lam}))
    return out


def typical_step_gap(history: RunHistory) -> float | None:
    """Median seconds between the recent step events of the current process."""
    times = [t for t, _ in history.step_times]
    gaps = [b - a for a, b in zip(times, times[1:]) if b >= a]
    return statistics.median(gaps) if gaps else None


def stall_alert(history: RunHistory, now: float, alive: bool, c: Criteria = DEFAULT) -> Alert | None:
    """Process alive but silent: no event at all for many heartbeats, or no step for many usual step gaps."""
    if not alive or history.run_start is None or history.run_end is not None:
        return None
    hb, _ = as_number(history.config.get("heartbeat_seconds"))
    hb = hb if math.isfinite(hb) and hb > 0 else _DEFAULTS.heartbeat_seconds
    last_t = history.last_event_t
    if last_t is not None and now - last_t > max(c.heartbeat_factor * hb, c.stall_min_s / 2):
        return Alert("stalled", Severity.CRITICAL,
                     f"no event for {now - last_t:.0f} s (heartbeat every {hb:g} s): the trainer is frozen",
                     None, {"silent_s": round(now - last_t, 1)})
    gap = typical_step_gap(history)
    if gap is not None and history.step_times:
        since = now - history.step_times[-1][0]
        allowed = max(c.stall_min_s, c.stall_factor * gap)
        if since > allowed:
            phase = (history.last_heartbeat or {}).get("phase")
            return Alert("stalled", Severity.WARNING,
                         f"no step for {since:.0f} s (usually every {gap:.1f} s; heartbeat phase {phase!s}): stalled",
                         None, {"since_step_s": round(since, 1), "usual_gap_s": round(gap, 2)})
    return None


def crashed_alert(history: RunHistory, lock: str, alive: bool, run_dir: str | Path | None = None) -> Alert | None:
    """Crashed: the newest run_start has no run_end and no live process holds the folder."""
    if history.run_start is None or history.run_end is not None or alive or lock in ("live", "foreign"):
        return None
    step = history.last_step or as_step(history.run_start.get("start_step")) or 0
    return Alert("crashed", Severity.CRITICAL, f"the trainer is gone without a run_end, last step {step}",
                 playbook.resume_command(history, run_dir), {"step": step})


def disk_alert(need: CheckpointNeed, free: int | None, run_dir: str | Path | None = None) -> Alert | None:
    if free is None or not need.bytes_needed or need.bytes_each is None:
        return None
    if free >= need.bytes_needed:
        return None
    sev = Severity.CRITICAL if free < need.bytes_each else Severity.WARNING
    where = str(run_dir) if run_dir is not None else "RUN_DIR"
    return Alert("disk_low", sev,
                 f"{free / 1e6:.0f} MB free, the remaining {need.remaining_saves} checkpoint save(s) need about "
                 f"{need.bytes_needed / 1e6:.0f} MB ({need.bytes_each / 1e6:.0f} MB each)",
                 cmdline.text(cmdline.clean(where)), {"free_bytes": free, "needed_bytes": need.bytes_needed})


def memory_alert(available: int | None, total: int | None, c: Criteria = DEFAULT) -> Alert | None:
    if not available or not total:
        return None
    share = available / total
    if share >= c.memory_warning_share:
        return None
    sev = Severity.CRITICAL if share < c.memory_critical_share else Severity.WARNING
    return Alert("memory_pressure", sev,
                 f"{available / 1e9:.1f} GB of {total / 1e9:.1f} GB memory available ({share:.0%})",
                 None, {"available_bytes": available, "total_bytes": total})


def compute_alerts(history: RunHistory, *, lock: str = "none", facts: SystemFacts | None = None,
                   now: float | None = None, criteria: Criteria | None = None,
                   run_dir: str | Path | None = None, process_alive: bool | None = None) -> list[Alert]:
    """Every alert for a run. `lock` is lock_state()'s first value; `process_alive` defaults to lock == 'live'."""
    import time

    c = criteria or DEFAULT
    now = time.time() if now is None else now
    alive = (lock == "live") if process_alive is None else process_alive
    out = metric_alerts(history, c, run_dir)
    for a in (stall_alert(history, now, alive, c), crashed_alert(history, lock, alive, run_dir)):
        if a is not None:
            out.append(a)
    if facts is not None:
        unfinished = history.run_start is not None and (history.run_end or {}).get("status") != "completed"
        if unfinished:  # a crashed or interrupted run still has its saves ahead (on resume)
            d = disk_alert(checkpoint_need(history), facts.disk_free_bytes, run_dir)
            if d is not None:
                out.append(d)
        m = memory_alert(facts.mem_available_bytes, facts.mem_total_bytes, c)
        if m is not None:
            out.append(m)
    return out
