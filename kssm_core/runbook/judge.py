"""The one place that decides what state a run is in: `judge(history, facts, ...)` -> RunStatus.

Pure: everything it looks at is handed in (the folded history from kssm_core.runfolder.follower, the
folder's facts from kssm_core.runbook.probe, the criteria and the time), so `kssm status`, `--watch`
and the cockpit get the same answer from the same inputs, and tests can feed any situation.

Run states: not_started | running | completed | interrupted | failed | crashed | unknown.
- running: a live (or another host's) lock, a trainer starting, or the newest run_start's own PID alive
  (lock or no lock: the runbook tells operators to remove a lock by hand).
- Our runs without a run_end and no live process: crashed.
- Legacy (reference-trainer) logs: "Training Finished." is completed and a traceback / `Error:` at the
  end is failed (kssm_core.runfolder.legacy reads both into a run_end); no end line and a lock whose PID
  is dead: crashed; no end line and no lock: unknown ("the log stops at step N"), never crashed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from kssm_core.runbook.stages import stage as stage_info
from kssm_core.runbook import alerts as alerts_mod
from kssm_core.runbook.advice import recommend
from kssm_core.runbook.criteria import DEFAULT, Criteria
from kssm_core.runbook.matrix import assess_all, infer_stage
from kssm_core.runbook.probe import RunFacts
from kssm_core.runbook.runstatus import Recommendation, RunStatus
from kssm_core.runbook.verdicts import Severity, Verdict
from kssm_core.runfolder import layout
from kssm_core.runfolder.history import RunHistory


def is_legacy(history: RunHistory) -> bool:
    return bool((history.run_start or {}).get("legacy"))


def _is_run_trainer(history: RunHistory, p) -> bool:
    """This process is the run's own trainer: alive, and started before its run_start (else the PID was reused)."""
    start_t = (history.run_start or {}).get("t")
    return (p is not None and p.alive and isinstance(start_t, (int, float)) and p.create_time is not None
            and p.create_time <= start_t + 1 and history.run_end is None)


def _shown_pid(history: RunHistory, facts: RunFacts) -> int | None:
    if facts.lock != "live" and history.run_start is not None and _is_run_trainer(history, facts.run_process):
        return facts.run_pid
    return facts.pid


def process_state(history: RunHistory, facts: RunFacts) -> str:
    """alive | dead | unknown for the run's trainer process (lock or no lock: the runbook tells operators to
    remove a lock by hand, and a stale lock may name another PID than the run's own trainer)."""
    if facts.lock == "live":
        return "alive"
    if facts.lock == "foreign":
        return "unknown"
    if history.run_start is not None and _is_run_trainer(history, facts.run_process):
        return "alive"
    if facts.pid is None or history.run_start is None:
        return "unknown" if facts.pid is None else "dead"
    return "alive" if _is_run_trainer(history, facts.process) else "dead"


def trainer_starting(history: RunHistory, facts: RunFacts) -> bool:
    """A live lock taken after the newest run_start / run_end: a trainer is starting (building the token
    cache, loading a checkpoint) and has not logged its run_start yet."""
    if facts.lock != "live":
        return False
    if history.run_start is None:
        return True
    if history.run_end is None:
        return False
    info = facts.lock_info
    taken = next((v for v in ((info.created, info.mtime) if info else ()) if isinstance(v, (int, float))), None)
    ended = history.run_end.get("t")
    return taken is not None and isinstance(ended, (int, float)) and taken > ended


def run_state(history: RunHistory, facts: RunFacts, alive: bool, starting: bool) -> tuple[str, str]:
    """(state, one-line reason naming no key)."""
    step = history.last_step
    if starting:
        return "running", f"a trainer is starting (PID {facts.pid} holds the lock, no step yet)"
    if history.run_start is None:  # a run_end alone: the trainer refused to start (no corpus, bad flags)
        end = history.run_end
        if end is not None and end.get("status") == "failed":
            advice = str(end.get("advice") or "")
            return "failed", f"the trainer could not start: {end.get('reason')}" + (f"; {advice}" if advice else "")
        return "not_started", "a stale lock and no run" if facts.lock == "stale" else "no run yet"
    end = history.run_end
    if end is not None:
        status, reason = end.get("status"), str(end.get("reason") or "")
        if status == "completed":
            if end.get("final_checkpoint") is False:
                return "completed", "completed without its final checkpoint (disk low)"
            return "completed", "completed" + (f" ({reason})" if reason else "")
        if status == "interrupted":
            return "interrupted", f"stopped ({reason})"
        if status == "failed":
            return "failed", f"the trainer failed: {reason}"
        return "unknown", f"ended with status {str(status)[:40]!r} that this version does not know"
    if facts.lock == "foreign":
        return "running", "a trainer holds the lock (on another host)"
    if alive:
        if facts.lock == "live":
            return "running", f"training: trainer PID {facts.pid} holds the lock"
        pid = facts.run_pid or facts.pid
        return "running", f"training: the run's trainer PID {pid} is alive (its lock is gone or stale)"
    where = f"step {step}" if step is not None else "its start"
    if is_legacy(history):
        if facts.lock == "stale":
            return "crashed", f"the log stops at {where} and the lock's PID is dead"
        return "unknown", f"the log stops at {where} (no end line, no lock): finished, stopped or still elsewhere"
    extra = " (stale lock left behind)" if facts.lock == "stale" else ""
    return "crashed", f"the trainer is gone without a run_end at {where}{extra}"


def _rate(history: RunHistory) -> float | None:
    pts = list(history.step_times)
    if len(pts) < 2:
        return None
    (t0, s0), (t1, s1) = pts[0], pts[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


def _latest(history: RunHistory) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in ("loss", "ce", "reg", "R", "u_val", "grad_norm", "lr", "tokens_per_s"):
        out[name] = history.steps.last(name)
    for name in ("val_loss", "val_ppl", "val_R", "val_u"):
        out[name] = history.evals.last(name)
    return {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else None) for k, v in out.items()}


def _read_note(read: dict) -> str | None:
    bad = read.get("bad_lines", 0)
    vals = read.get("malformed_values", 0) + read.get("skipped_events", 0)
    if not bad and not vals:
        return None
    parts = []
    if bad:
        over = read.get("oversized_lines", 0)
        parts.append(f"skipped {bad} unreadable line(s)" + (f" ({over} over 1 MB)" if over else ""))
    if vals:
        parts.append(f"ignored {vals} malformed value(s)/event(s)")
    return f"{layout.EVENTS}: " + ", ".join(parts) + "; showing the rest"


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


def final_failures(matrix: list) -> list:
    """The Failure rows the runbook has decided: a provisional one (before its milestone) is a verdict so far."""
    return [r for r in matrix if r.verdict is Verdict.FAILURE and not r.provisional]


def headline(state: str, why: str, stage: int, matrix: list, alerts: list,
             legacy: bool = False) -> tuple[str, str] | None:
    """What deserves a banner: a crash, else a final Failure row (a provisional one waits for its milestone),
    else the most severe warning/critical alert."""
    if state == "crashed":
        return "critical", f"Stage {stage} crashed: {why}"
    if state == "unknown" and not legacy:  # an end status this version does not know: see trainer.out
        return "critical", f"Stage {stage} {why}"
    failed = final_failures(matrix)
    if failed:
        r = failed[0]
        return "critical", f"Failure: Stage {r.stage} {r.metric}: {r.reason}"
    shown = [a for a in alerts if a.code != "crashed" and a.severity in (Severity.WARNING, Severity.CRITICAL)]
    if shown:
        a = max(shown, key=lambda a: _SEVERITY_RANK[a.severity])
        return a.severity.value, a.message
    return None


def judge(history: RunHistory, facts: RunFacts, criteria: Criteria | None = None, now: float | None = None, *,
          run_dir: str | Path, source: str, read: dict[str, Any] | None = None) -> RunStatus:
    """Everything `kssm status` says about one run, from its history and facts."""
    c = criteria or DEFAULT
    now = time.time() if now is None else now
    run_dir = Path(run_dir)
    read = dict(read or {})
    if facts.eval_problems:
        read["eval_problems"] = list(facts.eval_problems)
    read["note"] = read.get("error") or _read_note(read)

    proc = process_state(history, facts)
    alive = proc == "alive"
    starting = trainer_starting(history, facts)
    state, why = run_state(history, facts, alive, starting)

    stage = infer_stage(history, run_dir)
    judged, matrix = assess_all(history, stage, c, facts.eval_results, run_dir)  # each stage judged once
    assessment = judged[stage]
    sysf = dataclasses.replace(facts.system, process=facts.process if alive else None)
    found = alerts_mod.compute_alerts(history, lock=facts.lock, facts=sysf, now=now, criteria=c, run_dir=run_dir,
                                      process_alive=alive)
    # The run state decides "crashed" (a legacy log that merely stops is unknown, not crashed).
    found = [a for a in found if a.code != "crashed" or state == "crashed"]
    need = alerts_mod.checkpoint_need(history)
    step, target = history.last_step, history.max_steps
    rate = _rate(history) if state == "running" else None
    eta = (target - step) / rate if rate and target is not None and step is not None and target > step else None
    pfacts = sysf.process
    status = RunStatus(
        run_dir=str(run_dir), source=source, state=state, stage=stage, stage_name=stage_info(stage).name,
        step=step, target=target, steps_per_s=rate, eta_s=eta, pid=_shown_pid(history, facts), process=proc,
        lock=facts.lock, lock_reason=facts.lock_reason, newest_checkpoint=facts.newest_checkpoint,
        best_val_loss=history.best_val_loss, latest=_latest(history),
        run_end=({k: history.run_end.get(k) for k in ("status", "reason", "advice", "step", "final_checkpoint")}
                 if history.run_end and not starting else None),
        assessment=assessment, matrix=matrix, alerts=found, recommendation=Recommendation("all_clear", ""),
        disk={"free_bytes": sysf.disk_free_bytes, "total_bytes": sysf.disk_total_bytes,
              "needed_bytes": need.bytes_needed, "checkpoint_bytes": need.bytes_each,
              "remaining_saves": need.remaining_saves, "files_kept": need.files_kept,
              "checkpoint_bytes_estimated": need.estimated},
        memory={"available_bytes": sysf.mem_available_bytes, "total_bytes": sysf.mem_total_bytes,
                "process_rss_bytes": pfacts.rss_bytes if pfacts else None,
                "process_cpu_s": pfacts.cpu_seconds if pfacts else None},
        read=read, state_reason=why, generated_at=now, headline=headline(state, why, stage, matrix, found, is_legacy(history)),
    )
    info = facts.lock_info
    lock_age = now - info.created if starting and info is not None and info.created else None
    status.recommendation = recommend(status, history, starting=starting, lock_age_s=lock_age,
                                      legacy=is_legacy(history))
    return status
