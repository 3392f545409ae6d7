"""The runbook verdicts the dashboard needs, from kssm_core.runbook.matrix / status / alerts.

Thin wrappers that turn an exception in the runbook engine into a readable row or line instead of a
dead cockpit (a damaged log can always surprise it), plus the cockpit's own phrasing: the run state
of the stage plan and the next step with the key that does it. Called only from worker threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kssm_core.runbook import alerts as core_alerts
from kssm_core.runbook import matrix
from kssm_core.runbook import status as core_status
from kssm_core.runfolder.history import RunHistory
from kssm_core.runbook.verdicts import Action, MatrixRow, StageAssessment, Verdict


def _engine_error(exc: Exception) -> str:
    return f"runbook engine error: {type(exc).__name__}: {exc}"[:200]


def infer_stage(history: RunHistory, run_dir: Path) -> int:
    try:
        return int(matrix.infer_stage(history, run_dir))
    except Exception:
        return 1


def assess_stage(history: RunHistory, stage: int, run_dir: Path | None = None) -> StageAssessment:
    try:
        return matrix.assess_stage(history, stage, run_dir=run_dir)
    except Exception as exc:  # a bug there must not take the cockpit down
        row = MatrixRow(stage, "(matrix)", Verdict.PENDING, _engine_error(exc))
        return StageAssessment(stage, [row], Verdict.PENDING, Action.WAIT, _engine_error(exc))


def full_matrix(history: RunHistory, stage: int | None, run_dir: Path | None = None) -> list[MatrixRow]:
    try:
        return list(matrix.full_matrix(history, stage or 1, run_dir=run_dir))
    except Exception as exc:
        return [MatrixRow(stage or 1, "(matrix)", Verdict.PENDING, _engine_error(exc))]


def recommendation(run_dir: Path, history: RunHistory, fallback: str) -> tuple[str | None, str]:
    """(code, one-line next step) from kssm_core.runbook.status; (None, fallback) when it cannot say."""
    try:
        st = core_status.run_status(run_dir, history=history)
    except Exception:
        return None, fallback
    rec = getattr(st, "recommendation", None)
    text = getattr(rec, "text", rec)
    if not isinstance(text, str) or not text:
        return None, fallback
    code = getattr(rec, "code", None)
    if code == "active":  # the state line already says running, the step and the PID: add the pace
        rate, eta = getattr(st, "steps_per_s", None), getattr(st, "eta_s", None)
        text = (f"nothing to do: training at {rate:.2f} steps/s, ETA {core_status.format_duration(eta)}" if rate
                else "nothing to do: training (pace not known yet)")
    return code, text


def current_stage(states: dict[int, str]) -> int | None:
    """The stage in progress from {stage: state}: a running one, else the newest started one."""
    running = [n for n, s in states.items() if s == "running"]
    if running:
        return running[0]
    started = [n for n, s in states.items() if s != "not started"]
    return max(started) if started else None


def next_step(code: str | None, text: str, shown: int | None, current: int | None, readonly: bool,
              passed: bool = False) -> str:
    """kssm status's advice as the cockpit gives it: the key that does it first, the command after.

    Keys act on the shown run (r, u) or start the stage after the current one (n), so n is named only
    when the shown run is that current stage (or nothing has started). `passed`: the shown stage passed
    its matrix (so n starts the next one without asking). Read-only: the CLI text as is.
    """
    if readonly or code is None:
        return text
    if code in ("crashed", "interrupted"):
        return f"press r to resume ({text})"
    if code == "stale_lock":
        return f"press u to clear the stale lock ({text})"
    if code == "all_clear" and shown is not None and current is not None and shown > current + 1:
        return f"not reached yet: Stage {current + 1} comes first"
    on_current = shown is not None and (current is None or shown == current)
    if code == "all_clear" and on_current and current is None:
        return f"press n to start Stage {shown} ({text})"
    if code == "completed" and on_current and passed and shown < 5:
        return f"press n to start Stage {shown + 1} ({text})"
    return text


def alerts(history: RunHistory, run_dir: Path, lock: str) -> list[Any]:
    """Alerts beyond the matrix from kssm_core.runbook.alerts (metrics, stall); [] if the engine fails.

    Crashes are shown from the run state, disk and memory from the watch: only metric and stall alerts here.
    """
    try:
        found = core_alerts.compute_alerts(history, lock=lock, run_dir=run_dir)
    except Exception:
        return []
    return [a for a in found if getattr(a, "code", "") != "crashed"]


def checkpoint_need(history: RunHistory) -> int | None:
    """Bytes the rest of the run's checkpoints need on disk; None when unknown (or the engine fails)."""
    try:
        return core_alerts.checkpoint_need(history).bytes_needed
    except Exception:
        return None


def run_state(history: RunHistory, has_events: bool, lock: str, verdict: Verdict | None) -> tuple[str, str]:
    """(StagePlan state, one-line reason) of one run folder from its history and lock state.

    The reason names no key: next_step does that, and only where the key is enabled (not --readonly)."""
    if lock in ("live", "foreign"):
        return "running", "a trainer holds the lock" + (" (on another host)" if lock == "foreign" else "")
    if history.run_start is None:
        end = history.run_end
        if end is not None and end.get("status") == "failed":  # refused to start: say why and what to do
            advice = str(end.get("advice") or "")
            return "failed", f"the trainer could not start: {end.get('reason')}" + (f"; {advice}" if advice else "")
        if lock == "stale":
            return "stale lock", "a stale lock and no run"
        return "not started", "no run yet" if not has_events else "no run_start in events.jsonl"
    end = history.run_end
    if end is None:
        extra = " (stale lock left behind)" if lock == "stale" else ""
        return "crashed", f"the trainer is gone without a run_end{extra}"
    status = end.get("status")
    reason = str(end.get("reason") or "")
    if status == "interrupted":
        return "interrupted", f"stopped ({reason})"
    if status == "failed":
        return "failed", f"the trainer failed: {reason}"
    if lock == "stale":
        return "stale lock", "completed, but a stale lock remains"
    if end.get("final_checkpoint") is False:  # disk low at the end: best_model.pt may be stale, nothing to resume
        return "warning", "completed without its final checkpoint (disk low): free space, then resume"
    if verdict == Verdict.HEALTHY:
        return "passed", "completed; the stage passes the decision matrix"
    if verdict == Verdict.WARNING:
        return "warning", "completed with warnings in the decision matrix"
    if verdict == Verdict.FAILURE:
        return "failed", "completed, but the decision matrix says Failure"
    return "completed", "completed; the matrix has no verdict yet"
