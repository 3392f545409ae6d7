"""The runbook verdicts the dashboard needs, from kssm_core.matrix / status / alerts.

Those modules are built alongside the cockpit; until one is importable this module falls
back to a deliberately minimal judgement of its own (FALLBACK below: Stage 1's "loss
descending" only, every other row pending) so the cockpit still runs. Called only from
worker threads.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

from kssm_core.history import RunHistory
from kssm_core.verdicts import Action, MatrixRow, StageAssessment, Verdict


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# ---- FALLBACK (used only while kssm_core.matrix is missing) ---------------------------------------
def _fallback_rows(history: RunHistory, stage: int) -> list[MatrixRow]:
    rows: list[MatrixRow] = []
    if stage == 1:
        losses = [v for v in history.steps.values("loss") if not math.isnan(v)]
        if len(losses) < 4:
            rows.append(MatrixRow(1, "Loss", Verdict.PENDING, "not enough steps yet"))
        else:
            q = max(1, len(losses) // 4)
            first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
            if last < first * 0.98:
                rows.append(MatrixRow(1, "Loss", Verdict.HEALTHY, f"loss {first:.3f} -> {last:.3f}: descending"))
            elif last <= first * 1.02:
                rows.append(MatrixRow(1, "Loss", Verdict.WARNING, f"loss {first:.3f} -> {last:.3f}: flat"))
            else:
                rows.append(MatrixRow(1, "Loss", Verdict.FAILURE, f"loss {first:.3f} -> {last:.3f}: increasing"))
    else:
        rows.append(MatrixRow(stage, "(matrix)", Verdict.PENDING, "runbook engine not installed (fallback)"))
    return rows


def _fallback_assess(history: RunHistory, stage: int) -> StageAssessment:
    rows = _fallback_rows(history, stage)
    worst = max(rows, key=lambda r: r.verdict.rank).verdict
    if history.run_end is None:
        action = Action.WAIT
    else:
        action = {Verdict.HEALTHY: Action.PROCEED, Verdict.WARNING: Action.INVESTIGATE,
                  Verdict.FAILURE: Action.STOP}.get(worst, Action.WAIT)
    return StageAssessment(stage, rows, worst, action, f"Stage {stage}: {worst.value.upper()} (fallback judgement)")
# ---- end FALLBACK ---------------------------------------------------------------------------------


def _call(fn, *args, run_dir=None):
    """Pass run_dir (remedies then name the real folder) when the engine's function accepts it."""
    try:
        return fn(*args, run_dir=run_dir)
    except TypeError:
        return fn(*args)


def infer_stage(history: RunHistory, run_dir: Path) -> int:
    matrix = _optional("kssm_core.matrix")
    if matrix is not None and hasattr(matrix, "infer_stage"):
        try:
            return int(matrix.infer_stage(history, run_dir))
        except Exception:
            pass
    return 1


def assess_stage(history: RunHistory, stage: int, run_dir: Path | None = None) -> StageAssessment:
    matrix = _optional("kssm_core.matrix")
    if matrix is not None:
        try:
            return _call(matrix.assess_stage, history, stage, run_dir=run_dir)
        except Exception as exc:  # a bug there must not take the cockpit down
            a = _fallback_assess(history, stage)
            a.summary = f"runbook engine error: {type(exc).__name__}: {exc}"[:200]
            return a
    return _fallback_assess(history, stage)


def full_matrix(history: RunHistory, stage: int | None, run_dir: Path | None = None) -> list[MatrixRow]:
    matrix = _optional("kssm_core.matrix")
    if matrix is not None:
        try:
            return list(_call(matrix.full_matrix, history, stage or 1, run_dir=run_dir))
        except Exception:
            pass
    return _fallback_rows(history, stage or 1)


def recommendation(run_dir: Path, history: RunHistory, fallback: str) -> tuple[str | None, str]:
    """(code, one-line next step) from kssm_core.status; (None, fallback) when it cannot say."""
    status = _optional("kssm_core.status")
    if status is None:
        return None, fallback
    try:
        st = status.run_status(run_dir, history=history)
    except Exception:
        return None, fallback
    rec = getattr(st, "recommendation", None)
    text = getattr(rec, "text", rec)
    if not isinstance(text, str) or not text:
        return None, fallback
    code = getattr(rec, "code", None)
    if code == "active":  # the state line already says running, the step and the PID: add the pace
        rate, eta = getattr(st, "steps_per_s", None), getattr(st, "eta_s", None)
        text = f"{rate:.2f} steps/s, ETA {status.format_duration(eta)}" if rate else "training (pace not known yet)"
    return code, text


def current_stage(states: dict[int, str]) -> int | None:
    """The stage in progress from {stage: state}: a running one, else the newest started one."""
    running = [n for n, s in states.items() if s == "running"]
    if running:
        return running[0]
    started = [n for n, s in states.items() if s != "not started"]
    return max(started) if started else None


def next_step(code: str | None, text: str, shown: int | None, current: int | None, readonly: bool) -> str:
    """kssm status's advice as the cockpit gives it: the key that does it first, the command after.

    Keys act on the shown run (r, u) or start the stage after the current one (n), so n is named only
    when the shown run is that current stage (or nothing has started). Read-only: the CLI text as is.
    """
    if readonly or code is None:
        return text
    if code in ("crashed", "interrupted"):
        return f"press r to resume from the newest checkpoint ({text})"
    if code == "stale_lock":
        return f"press u to clear the stale lock ({text})"
    on_current = shown is not None and (current is None or shown == current)
    if code == "all_clear" and on_current and current is None:
        return f"press n to start Stage {shown} ({text})"
    if code == "completed" and on_current and "ALL CLEAR: safe to start stage" in text and shown < 5:
        return f"press n to start Stage {shown + 1} ({text})"
    return text


def alerts(history: RunHistory, run_dir: Path, lock: str) -> list[Any]:
    """Alerts beyond the matrix from kssm_core.alerts (metrics, stall), or [] while it is missing.

    Crashes are shown from the run state, disk and memory from the watch: only metric and stall alerts here.
    """
    mod = _optional("kssm_core.alerts")
    if mod is None or not hasattr(mod, "compute_alerts"):
        return []
    try:
        found = mod.compute_alerts(history, lock=lock, run_dir=run_dir)
    except Exception:
        return []
    return [a for a in found if getattr(a, "code", "") != "crashed"]


def run_state(history: RunHistory, has_events: bool, lock: str, verdict: Verdict | None) -> tuple[str, str]:
    """(StagePlan state, one-line reason) of one run folder from its history and lock state."""
    if lock in ("live", "foreign"):
        return "running", "a trainer holds the lock" + (" (on another host)" if lock == "foreign" else "")
    if history.run_start is None:
        end = history.run_end
        if end is not None and end.get("status") == "failed":  # refused to start: say why and what to do
            advice = str(end.get("advice") or "")
            return "failed", f"the trainer could not start: {end.get('reason')}" + (f"; {advice}" if advice else "")
        if lock == "stale":
            return "stale lock", "a stale lock and no run: press u to clear it"
        return "not started", "no run yet" if not has_events else "no run_start in events.jsonl"
    end = history.run_end
    if end is None:
        extra = " (stale lock left behind)" if lock == "stale" else ""
        return "crashed", f"the trainer is gone without a run_end{extra}: press r to resume"
    status = end.get("status")
    reason = str(end.get("reason") or "")
    if status == "interrupted":
        return "interrupted", f"stopped ({reason}): press r to resume"
    if status == "failed":
        return "failed", f"the trainer failed: {reason}"
    if lock == "stale":
        return "stale lock", "completed, but a stale lock remains: press u to clear it"
    if verdict == Verdict.HEALTHY:
        return "passed", "completed; the stage passes the decision matrix"
    if verdict == Verdict.WARNING:
        return "warning", "completed with warnings in the decision matrix"
    if verdict == Verdict.FAILURE:
        return "failed", "completed, but the decision matrix says Failure"
    return "completed", "completed; the matrix has no verdict yet"
