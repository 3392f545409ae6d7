"""How the cockpit words a RunStatus: the stage plan's label and the next step with the key that does it.

No rules about runs live here: the state, verdicts, alerts and the recommendation all come from
kssm_core.runbook (status_of / judge). This module only maps them onto the cockpit's words and keys.
"""

from __future__ import annotations

from kssm_core.runbook.runstatus import RunStatus, format_duration
from kssm_core.runbook.verdicts import Verdict

# RunStatus.state -> the stage plan's word (completed is split by the stage's verdict below).
_PLAN = {"not_started": "not started", "running": "running", "interrupted": "interrupted", "failed": "failed",
         "crashed": "crashed", "unknown": "unknown"}
_BY_VERDICT = {Verdict.HEALTHY: "passed", Verdict.WARNING: "warning", Verdict.FAILURE: "failed"}


def plan_label(s: RunStatus) -> str:
    """The stage plan's word for a run: state + recommendation code + the stage's verdict."""
    if s.state == "completed":
        if s.lock == "stale":
            return "stale lock"
        if s.recommendation.code == "no_final_checkpoint":
            return "warning"
        return _BY_VERDICT.get(s.assessment.verdict, "completed")
    if s.state == "not_started" and s.lock == "stale":
        return "stale lock"
    return _PLAN.get(s.state, s.state)


_REASON_BY_VERDICT = {Verdict.HEALTHY: "completed; the stage passes the decision matrix",
                      Verdict.WARNING: "completed with warnings in the decision matrix",
                      Verdict.FAILURE: "completed, but the decision matrix says Failure"}


def plan_reason(s: RunStatus) -> str:
    """The run panel's one line beside the label: the core's reason, with the stage's verdict once completed."""
    if s.state == "completed" and s.lock != "stale" and s.recommendation.code != "no_final_checkpoint":
        return _REASON_BY_VERDICT.get(s.assessment.verdict, s.state_reason)
    return s.state_reason


def current_stage(states: dict[int, str]) -> int | None:
    """The stage in progress from {stage: plan label}: a running one, else the newest started one."""
    running = [n for n, s in states.items() if s == "running"]
    if running:
        return running[0]
    started = [n for n, s in states.items() if s != "not started"]
    return max(started) if started else None


def advice_line(s: RunStatus) -> tuple[str, str]:
    """(code, text) of the recommendation; while training, the pace instead of repeating the state line."""
    rec = s.recommendation
    if rec.code == "active":
        rate = s.steps_per_s
        return rec.code, (f"nothing to do: training at {rate:.2f} steps/s, ETA {format_duration(s.eta_s)}" if rate
                          else "nothing to do: training (pace not known yet)")
    return rec.code, rec.text


def next_step(code: str | None, text: str, shown: int | None, current: int | None, readonly: bool,
              passed: bool = False, legacy: bool = False) -> str:
    """kssm status's advice as the cockpit gives it: the key that does it first, the command after.

    Keys act on the shown run (r, u) or start the stage after the current one (n), so n is named only
    when the shown run is that current stage (or nothing has started). `passed`: the shown stage passed
    its matrix (so n starts the next one without asking). `legacy`: a reference-trainer run, which r and n
    never continue in place (its advice is a command for a new folder). Read-only: the CLI text as is.
    """
    if readonly or code is None:
        return text
    if code == "failing":
        return f"press s to stop it ({text})"
    if code in ("crashed", "interrupted") and not legacy:
        return f"press r to resume ({text})"
    if code == "stale_lock":
        return f"press u to clear the stale lock ({text})"
    if legacy:
        return text
    if code == "all_clear" and shown is not None and current is not None and shown > current + 1:
        return f"not reached yet: Stage {current + 1} comes first"
    on_current = shown is not None and (current is None or shown == current)
    if code == "all_clear" and on_current and current is None:
        return f"press n to start Stage {shown} ({text})"
    if code == "completed" and on_current and passed and shown < 5 and not legacy:
        return f"press n to start Stage {shown + 1} ({text})"
    return text
