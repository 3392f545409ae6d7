"""From what a stage's run folder says (a RunStatus, the one run model) to the autopilot's next decision.

Pure: everything is handed in (the status, the stage's plan and budgets, the counts so far, our child's
exit code), so the table tests can feed any situation. The supervisor acts on the Decision.

Decisions (docs/autopilot.md): wait, start, pass, remedy, resume, retry, rewind, stop (a stalled
trainer), evaluate (a stage-5 gate's Agency row needs `kssm eval all`), hold (a person must decide).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kssm_core.autopilot.plan import Budgets, StagePlan
from kssm_core.runbook.playbook import remedy_overrides
from kssm_core.runbook.runstatus import RunStatus
from kssm_core.runbook.verdicts import MatrixRow, Verdict

EXIT_REFUSED = 2  # kssm train: refused to start (lock held, bad arguments)


@dataclass(frozen=True)
class Situation:
    status: RunStatus
    stage: StagePlan
    budgets: Budgets
    on_warning: str = "retry"
    config: dict = field(default_factory=dict)  # the run's run_start config (its learning rate, seed...)
    crashes: int = 0
    rewinds: int = 0
    remedies: int = 0
    last_error: dict | None = None  # {"sig", "step"} of the previous error of this stage
    stop_sent: bool = False  # the autopilot itself stopped this trainer (a stall)
    exit_code: int | None = None  # our child's exit code when we started it and it ended
    output_tail: str = ""  # the last line of trainer.out (why a trainer refused)
    entry: bool = False  # this autopilot process has not acted on the stage yet (the run may be a person's)
    good_checkpoint: tuple[int, str] | None = None  # (step, path) for a NaN rewind (kssm_core.autopilot.rewind)
    evaluate: bool = True
    evaluated: bool = False


@dataclass
class Decision:
    kind: str  # wait | start | pass | remedy | resume | retry | rewind | stop | evaluate | hold
    reason: str  # one line
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields the next attempt changes
    delay_s: float = 0.0  # backoff before acting
    checkpoint: tuple[int, str] | None = None  # rewind: resume from this one (None: restart from the stage's start)
    budget: str | None = None  # the budget this decision spends: crash | rewind | remedy
    error: dict | None = None  # remembered as the stage's last error
    what: str | None = None  # holds: crash_loop | budget | nan | gate | person | stopped | unknown | disk | refused
    verdict: str | None = None  # the gate's verdict, when judged
    rows: list[dict] = field(default_factory=list)  # the gate's rows, when judged

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [], 0.0) or k == "kind"}


def _rows(status: RunStatus) -> list[dict]:
    return [{"metric": r.metric, "verdict": r.verdict.value, "reason": r.reason,
             **({"remedy": r.remedy} if r.remedy else {}), **({"remedy_note": r.remedy_note} if r.remedy_note else {})}
            for r in status.assessment.rows]


def backoff(budgets: Budgets, crashes: int) -> float:
    seq = budgets.backoff_s
    return seq[min(crashes, len(seq) - 1)]


def matches_stage(status: RunStatus, stage: StagePlan) -> bool:
    """The run in the folder is this stage's: its target is the stage's steps and its stage the gate."""
    return status.target == stage.steps and status.stage == stage.gate


def progress_made(crash_step: int | None, status: RunStatus) -> bool:
    """Sustained progress since the newest crash: a checkpoint written past the step it crashed at (what a
    later resume keeps). Then the crash count starts again."""
    ck = status.newest_checkpoint or {}
    step = ck.get("step")
    return crash_step is not None and isinstance(step, int) and step > crash_step and bool(ck.get("intact", True))


def _error(sit: Situation, sig: str, why: str) -> Decision:
    """A crash or an error: resume (or retry the command) after a backoff, unless it is a loop or over budget."""
    st = sit.status
    step = st.step
    err = {"sig": sig, "step": step}
    last = sit.last_error
    if last is not None and last.get("sig") == sig:
        prev = last.get("step")
        if step is None or (isinstance(prev, int) and step <= prev):
            where = f"at step {step}" if step is not None else "before the first step"
            return Decision("hold", f"crash loop: the same error twice without a new step ({where}): {why}",
                            what="crash_loop", error=err)
    if sit.crashes >= sit.budgets.max_crashes:
        return Decision("hold", f"{sit.crashes} crash resumes already spent on this stage "
                                f"(max_crashes {sit.budgets.max_crashes}); the newest: {why}", what="budget", error=err)
    delay = backoff(sit.budgets, sit.crashes)
    n = sit.crashes + 1
    if step is None:  # nothing ran: no run to resume; start the attempt's own command again
        return Decision("retry", f"{why}; retry {n}/{sit.budgets.max_crashes} of the same command in {delay:g}s",
                        delay_s=delay, budget="crash", error=err)
    return Decision("resume", f"{why}; resume {n}/{sit.budgets.max_crashes} from the newest checkpoint in {delay:g}s",
                    delay_s=delay, budget="crash", error=err)


def _nan(sit: Situation) -> Decision:
    st = sit.status
    at = (st.run_end or {}).get("step", st.step)
    if sit.rewinds >= sit.budgets.max_rewinds:
        return Decision("hold", f"loss NaN at step {at} after {sit.rewinds} rewind(s) at falling learning rates "
                                f"(now {sit.config.get('learning_rate')}): a person must look (data, architecture)",
                        what="nan")
    lr = sit.config.get("learning_rate")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        return Decision("hold", f"loss NaN at step {at} and the run's learning rate is unknown ({lr!r})", what="nan")
    half = float(f"{lr / 2:.3g}")
    n = sit.rewinds + 1
    if sit.good_checkpoint is not None:
        step, path = sit.good_checkpoint
        where = f"rewind to {path} (step {step}, before the divergence)"
    else:
        where = "no good checkpoint before the divergence: restart the stage from its starting weights"
    return Decision("rewind", f"loss NaN at step {at}: {where} at half the learning rate ({lr:g} -> {half:g}), "
                              f"rewind {n}/{sit.budgets.max_rewinds}",
                    overrides={"learning_rate": half}, checkpoint=sit.good_checkpoint, budget="rewind")


def _gate(sit: Situation) -> Decision:
    st = sit.status
    a = st.assessment
    rows = _rows(st)
    verdict = a.verdict
    gate = sit.stage.gate
    agency_pending = any(r.metric == "Agency" and r.verdict is Verdict.PENDING for r in a.rows)
    if gate == 5 and agency_pending and sit.evaluate and not sit.evaluated:
        return Decision("evaluate", "stage completed; its gate (stage 5) needs the evaluation suite: kssm eval all",
                        rows=rows, verdict=verdict.value)
    if verdict is Verdict.PENDING:
        return Decision("hold", f"the gate has nothing to judge: {a.summary}", what="gate", rows=rows,
                        verdict=verdict.value)
    if verdict is Verdict.HEALTHY:
        return Decision("pass", f"gate passed: {a.summary}", rows=rows, verdict=verdict.value)
    if verdict is Verdict.WARNING and sit.on_warning == "proceed":
        return Decision("pass", f"gate WARNING, proceeding (on_warning = proceed): {a.summary}", rows=rows,
                        verdict=verdict.value)
    if verdict is Verdict.WARNING and sit.on_warning == "hold":
        return Decision("hold", f"gate WARNING (on_warning = hold): {a.summary}", what="gate", rows=rows,
                        verdict=verdict.value)
    bad = sorted((r for r in a.rows if r.verdict in (Verdict.WARNING, Verdict.FAILURE)),
                 key=lambda r: -r.verdict.rank)
    person = [r for r in bad if r.verdict is Verdict.FAILURE and remedy_overrides(r, sit.config) is None]
    if person:
        return Decision("hold", f"gate FAILURE that needs a person: {_describe(person[0])}", what="person",
                        rows=rows, verdict=verdict.value)
    mech = [(r, remedy_overrides(r, sit.config)) for r in bad]
    mech = [(r, m) for r, m in mech if m is not None]
    if not mech:
        return Decision("hold", f"gate {verdict.value.upper()} with no mechanical remedy: {_describe(bad[0])}",
                        what="person", rows=rows, verdict=verdict.value)
    if sit.remedies >= sit.budgets.max_remedies:
        return Decision("hold", f"gate still {verdict.value.upper()} after {sit.remedies} remedies "
                                f"(max_remedies {sit.budgets.max_remedies}): {a.summary}", what="budget", rows=rows,
                        verdict=verdict.value)
    row, (overrides, why) = mech[0]
    n = sit.remedies + 1
    return Decision("remedy", f"{row.metric} {row.verdict.value} ({row.reason}): {why}; "
                              f"attempt {n + 1}, remedy {n}/{sit.budgets.max_remedies}",
                    overrides=overrides, budget="remedy", rows=rows, verdict=verdict.value)


def _describe(row: MatrixRow) -> str:
    text = f"{row.metric}: {row.reason}"
    if row.remedy_note:
        text += f"; {row.remedy_note}"
    if row.remedy:
        text += f" ({row.remedy})"
    return text


def classify(sit: Situation) -> Decision:
    """The next decision for a stage, from its run folder's status. Call it only when no trainer of ours is
    starting (the supervisor waits for its child); a live trainer in the folder is `wait` (or `stop` when
    stalled)."""
    st = sit.status
    end = st.run_end or {}
    if st.state == "running":
        stalled = next((a for a in st.alerts if a.code == "stalled"), None)
        if stalled is not None:
            return Decision("stop", f"stalled: {stalled.message}; SIGTERM, then SIGKILL after "
                                    f"{sit.budgets.stall_grace_s:g}s, then resume")
        return Decision("wait", st.state_reason or "training")
    if sit.exit_code == EXIT_REFUSED:
        why = end.get("reason") or sit.output_tail or "see trainer.out"
        return Decision("hold", f"the trainer refused to start (exit 2): {why}", what="refused")
    if st.state == "not_started":
        if sit.stop_sent:  # we stopped it: alive but silent in its start-up (Supervisor._silent_start)
            return _error(sit, "stalled before its run_start", "stopped: the trainer never started logging")
        if sit.entry or sit.exit_code is None:
            return Decision("start", "no run in the folder yet")
        why = f"the trainer exited (code {sit.exit_code}) before it logged anything"
        if sit.output_tail:
            why += f": {sit.output_tail}"
        return _error(sit, f"exit {sit.exit_code}", why)
    if st.state == "unknown":
        return Decision("hold", f"the run in the folder is in a state this autopilot does not know: {st.state_reason}",
                        what="unknown")
    if not matches_stage(st, sit.stage) and st.step is not None:
        if sit.entry:
            return Decision("start", f"the folder holds another run (stage {st.stage}, target {st.target}; this "
                                     f"stage is {sit.stage.steps} steps gated by stage {sit.stage.gate}): a fresh "
                                     f"start, the trainer moves that run to previous/")
        return Decision("hold", f"the run in the folder is not this stage's (target {st.target}, stage {st.stage})",
                        what="unknown")
    if st.state == "completed":
        if end.get("final_checkpoint") is False:
            return Decision("hold", "completed without its final checkpoint (disk low): free space, then run the "
                                    "autopilot again", what="disk")
        return _gate(sit)
    if st.state == "failed":
        reason = str(end.get("reason") or "unknown")
        if reason == "nan_loss":
            return _nan(sit)
        return _error(sit, f"failed: {reason}", f"the trainer failed: {reason}")
    if st.state == "crashed":
        return _error(sit, "crashed", f"crashed: {st.state_reason}")
    if st.state == "interrupted":
        if sit.stop_sent:
            return _error(sit, "stalled", f"stopped after a stall ({st.state_reason})")
        if sit.entry:
            return Decision("resume", f"an interrupted run ({st.state_reason}): resume it")
        return Decision("hold", f"the trainer was stopped by someone else ({st.state_reason}): run the autopilot "
                                f"again to carry on", what="stopped")
    return Decision("hold", f"unexpected state {st.state!r}: {st.state_reason}", what="unknown")
