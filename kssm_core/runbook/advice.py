"""The one recommendation of a judged run: what to do next, as a line and as the command itself.

Commands come from kssm_core.runbook.cmdline (the cockpit's keys run the same argv). Codes:
all_clear | starting | active | failing | stalled | foreign_lock | stale_lock | crashed | interrupted | failed |
unknown | completed | no_final_checkpoint | unreadable.
"""

from __future__ import annotations

from pathlib import Path

from kssm_core.runbook import cmdline, playbook
from kssm_core.runbook.stages import STAGES
from kssm_core.runbook.runstatus import Recommendation, RunStatus, format_duration
from kssm_core.runbook.verdicts import Verdict
from kssm_core.runfolder import layout
from kssm_core.runfolder.history import RunHistory

# A reference-trainer run names no tokenizer; these are the two it can have used (see --tokenizer).
LEGACY_TOKENIZER_NOTE = ("use --tokenizer chars if it ran on the reference's character fallback (vocabulary 256), "
                         "tiktoken:cl100k_base if it ran on tiktoken")


def _rec(code: str, line: str, argv: list[str] | None = None) -> Recommendation:
    return Recommendation(code, line, cmdline.text(argv) if argv else None, argv)


def _foreign_lock(s: RunStatus) -> Recommendation:
    cmd = cmdline.text(cmdline.unlock(s.run_dir, force=True))
    return Recommendation("foreign_lock", f"LOCKED ON ANOTHER HOST: {s.lock_reason}; run kssm status there "
                          f"(if that trainer is gone: {cmd})")


def _legacy_next(s: RunStatus, history: RunHistory) -> Recommendation:
    """A reference run finished: go on in a new folder from its best model (its own folder is not ours)."""
    d = Path(s.run_dir)
    best = d / layout.BEST_MODEL
    passed = [st.number for st in STAGES if s.step is not None and st.steps <= s.step]  # milestones it reached
    done = max(passed, default=0)
    if done >= 5:
        return Recommendation("completed", f"COMPLETED (reference run, {s.step} steps: past the runbook's last "
                              f"milestone; judged as stage 5, {s.assessment.verdict.value})")
    nxt = done + 1
    if not best.is_file():
        return Recommendation("completed", f"COMPLETED (reference run, judged as stage {s.stage}): no "
                              f"{layout.BEST_MODEL} to continue from")
    argv = cmdline.train(stage=nxt, output_dir=playbook.new_folder_for(d), init_from=best,
                         overrides={"tokenizer": "chars"})
    return _rec("completed", f"COMPLETED (reference run, judged as stage {s.stage}, {s.assessment.verdict.value}): "
                f"continue in a new folder: {cmdline.text(argv)} ({LEGACY_TOKENIZER_NOTE})", argv)


def recommend(s: RunStatus, history: RunHistory, starting: bool = False, lock_age_s: float | None = None,
              legacy: bool = False) -> Recommendation:
    d = s.run_dir
    step = s.step if s.step is not None else 0
    if s.read.get("error") and history.run_start is None:
        return Recommendation("unreadable", f"UNREADABLE: {s.read['error']}; fix that before starting anything here")
    if starting:
        argv = cmdline.status_watch(d)
        age = f" for {format_duration(max(0.0, lock_age_s))}" if lock_age_s is not None else ""
        return _rec("starting", f"TRAINER STARTING: PID {s.pid} holds the lock{age}, no step yet "
                    f"(building the token cache or loading weights); watch: {cmdline.text(argv)}", argv)
    if s.state == "running":
        if s.lock == "foreign":
            return _foreign_lock(s)
        stalled = next((a for a in s.alerts if a.code == "stalled"), None)
        if stalled is not None:
            cmd = f"kill -TERM {s.pid}; kill -CONT {s.pid}" if s.pid else None  # CONT: a stopped one acts on TERM
            return Recommendation("stalled", f"STALLED at step {step}: {stalled.message}; look at "
                                  f"{d}/{layout.TRAINER_OUT}" + (f", then stop it: {cmd}" if cmd else ""), cmd)
        where = f"step {step}/{s.target}" if s.target else f"step {step}"
        a = s.assessment
        if a.verdict is Verdict.FAILURE and not a.provisional:  # the runbook has decided: do not train on
            row = next((r for r in a.rows if r.verdict is Verdict.FAILURE and not r.provisional), None)
            cmd = f"kill -TERM {s.pid}" if s.pid else None
            tail = f", then: {row.remedy}" if row is not None and row.remedy else ""
            return Recommendation("failing", f"FAILING at {where}: {a.summary}; stop it"
                                  + (f" ({cmd})" if cmd else "") + tail, row.remedy if row is not None else cmd)
        rate = f", {s.steps_per_s:.2f} steps/s, ETA {format_duration(s.eta_s)}" if s.steps_per_s else ""
        argv = cmdline.status_watch(d)
        return _rec("active", f"TRAINING ACTIVE: PID {s.pid}, {where}{rate}; watch: {cmdline.text(argv)}", argv)
    if s.lock == "foreign":
        return _foreign_lock(s)
    if s.state == "crashed":
        if legacy:  # not ours to resume in place: its checkpoints are the reference trainer's
            best = Path(d) / layout.BEST_MODEL
            if best.is_file():
                argv = cmdline.train(stage=s.stage, output_dir=playbook.new_folder_for(d),
                                     init_from=best, overrides={"tokenizer": "chars"})
                return _rec("crashed", f"CRASHED at step {step} (reference run): continue in a new folder from its "
                            f"best model: {cmdline.text(argv)} ({LEGACY_TOKENIZER_NOTE})", argv)
            return Recommendation("crashed", f"CRASHED at step {step} (reference run): nothing of ours to resume here")
        argv = cmdline.resume(d, history.max_steps)
        extra = " (the stale lock is taken over on resume)" if s.lock == "stale" else ""
        if s.newest_checkpoint is None:
            extra += " (no checkpoint yet: it starts over with the run's original settings)"
        return _rec("crashed", f"CRASHED at step {step}: {cmdline.text(argv)}{extra}", argv)
    if s.lock == "stale":
        argv = cmdline.unlock(d)
        return _rec("stale_lock", f"STALE LOCK ({s.lock_reason}): {cmdline.text(argv)}", argv)
    if s.state == "not_started":
        argv = cmdline.train(stage=s.stage, output_dir=d, init_from=cmdline.previous_best(Path(d).parent, s.stage))
        return _rec("all_clear", f"ALL CLEAR: safe to start: {cmdline.text(argv)}", argv)
    if s.state == "interrupted":
        argv = cmdline.resume(d, history.max_steps)
        return _rec("interrupted", f"INTERRUPTED at step {step}: resume with {cmdline.text(argv)}", argv)
    if s.state == "unknown":
        if legacy:  # a reference log that just stops: judge what it logged, say plainly what is not known
            a = s.assessment
            return Recommendation("unknown", f"UNKNOWN END: {s.state_reason}; judged as stage {s.stage}: "
                                  f"{a.verdict.value} ({a.summary})")
        end = s.run_end or {}
        return Recommendation("unknown", f"ENDED at step {step} with status {str(end.get('status'))[:40]!r} "
                              f"({str(end.get('reason'))[:80]}): see {d}/{layout.TRAINER_OUT}")
    if s.state == "failed":
        end = s.run_end or {}
        reason = str(end.get("reason") or "unknown")
        cmd = None
        if reason == "nan_loss" and not legacy:
            cmd = playbook.train_command(history, d, learning_rate=playbook.lower_learning_rate(
                history.config.get("learning_rate")))
        advice = cmd or str(end.get("advice") or f"see {layout.TRAINER_OUT} for the traceback")
        where = "TO START" if history.run_start is None else f"at step {step}"
        return Recommendation("failed", f"FAILED {where} ({reason}): {advice}", cmd)
    # completed
    if (s.run_end or {}).get("final_checkpoint") is False:  # nothing saved at the end: not a result to chain from
        argv = cmdline.resume(d, history.max_steps)
        return _rec("no_final_checkpoint", f"COMPLETED without a final checkpoint (disk low): free space "
                    f"({cmdline.text(cmdline.clean(d))}), then resume/rerun: {cmdline.text(argv)}", argv)
    if legacy:
        return _legacy_next(s, history)
    a = s.assessment
    if a.verdict is Verdict.FAILURE or a.verdict is Verdict.WARNING:
        row = next((r for r in a.rows if r.verdict is a.verdict and r.remedy), None)
        word = "FAILED its gate" if a.verdict is Verdict.FAILURE else "has warnings"
        tail = f": {row.remedy}" if row else ""
        return Recommendation("completed", f"COMPLETED stage {s.stage}, which {word} ({a.summary}){tail}",
                              row.remedy if row else None)
    if s.stage >= 5:
        if any(r.verdict is Verdict.PENDING for r in a.rows):
            argv = cmdline.eval_all(d)
            return _rec("completed", f"COMPLETED stage 5: run the full evaluation suite: {cmdline.text(argv)}", argv)
        return Recommendation("completed", "COMPLETED stage 5: ALL CLEAR: every gate of the runbook passes")
    nxt = s.stage + 1
    best = Path(d) / layout.BEST_MODEL  # the run just judged: what the cockpit's n chains from
    argv = cmdline.train(stage=nxt, runs_root=Path(d).parent, init_from=best if best.is_file() else None,
                         config=history.config)
    return _rec("completed", f"COMPLETED stage {s.stage} ({a.verdict.value}): ALL CLEAR: safe to start stage {nxt}: "
                f"{cmdline.text(argv)}", argv)
