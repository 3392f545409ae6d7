"""The autopilot's pure parts: the plan parser, the classifier (a RunStatus from the one run model -> a
decision), the rewind's choice of checkpoint, the state files, notifications, and `kssm status`'s view.
The processes (trainers SIGKILLed, SIGSTOPped, NaN, a missing corpus) are in test_autopilot_e2e.py."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from kssm_core.autopilot import plan as plan_mod
from kssm_core.autopilot.classify import Situation, classify, progress_made
from kssm_core.autopilot.lock import AutopilotLock
from kssm_core.autopilot.notify import Notifier
from kssm_core.autopilot.plan import Budgets, PlanError, StagePlan, load_plan, plan_from_dict
from kssm_core.autopilot.rewind import divergence_start, good_checkpoint, set_aside_after
from kssm_core.autopilot.state import Attempt, StageRecord, State, Store, read_decisions, summary
from kssm_core.cli import build_parser, main
from kssm_core.runbook import cmdline, playbook
from kssm_core.runbook.status import run_status
from kssm_core.runbook.verdicts import MatrixRow, Verdict
from kssm_core.runfolder import layout
from runbook_synth import GIBBERISH, PROSE, events, history, ramp, wiggle

N = 30


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))


# ---- the plan -------------------------------------------------------------------------------------------
def test_default_plan_is_the_runbooks_five_stages():
    p = load_plan(None)
    assert [(s.steps, s.gate, s.output_dir) for s in p.stages] == [
        (100, 1, "stage1"), (500, 2, "stage2"), (1500, 3, "stage3"), (5000, 4, "stage4"), (10000, 5, "final")]
    assert p.on_warning == "retry" and p.budgets.max_crashes == 3 and p.budgets.backoff_s == (10, 30, 90)
    assert "3 NaN rewinds" in "\n".join(p.describe())


def test_a_toml_plan(tmp_path):
    (tmp_path / "crit.json").write_text(json.dumps({"stage2_ppl_healthy": 5000}))
    f = tmp_path / "plan.toml"
    f.write_text('on_warning = "proceed"\nmax_remedies = 1\nbackoff_s = [1, 2]\nstall_s = 7\ncriteria = "crit.json"\n'
                 'args = ["--log-interval", "5"]\n'
                 '[[stage]]\nname = "smoke"\nsteps = 100\nargs = ["--seed", "7"]\n'
                 '[[stage]]\nsteps = 22000\ngate = 5\n'
                 '[[stage]]\nsteps = 43500\noutput_dir = "long/43k"\n')
    p = load_plan(f)
    assert [(s.index, s.name, s.steps, s.gate, s.output_dir) for s in p.stages] == [
        (1, "smoke", 100, 1, "stage1"), (2, "Short validation", 22000, 5, "stage2"), (3, "First milestone", 43500, 3, "long/43k")]
    assert p.stages[0].args == ("--seed", "7") and p.args == ("--log-interval", "5")
    assert p.on_warning == "proceed" and p.budgets.max_remedies == 1 and p.budgets.backoff_s == (1.0, 2.0)
    assert p.criteria.stage2_ppl_healthy == 5000 and p.criteria.stall_min_s == 7 and p.budgets.stall_s == 7
    assert p.through(2).stages == p.stages[:2] and p.digest == load_plan(f).digest
    six = plan_from_dict({"stage": [{"steps": 10}] * 6, "criteria": {"stall_min_s": 9}})
    assert six.stages[5].output_dir == "stage6" and six.stages[5].gate == 5 and six.budgets.stall_s == 9


@pytest.mark.parametrize("text, message", [
    ("bogus = 1", "unknown key(s) bogus"),
    ('on_warning = "maybe"', "on_warning must be one of retry, proceed, hold"),
    ("[[stage]]\nname = 'x'", "stage 1: steps is required"),
    ("[[stage]]\nsteps = 'abc'", "stage 1: steps must be a positive integer, got 'abc'"),
    ("[[stage]]\nsteps = 0", "stage 1: steps must be a positive integer"),
    ("[[stage]]\nsteps = 5\n[[stage]]\nsteps = 5\ngate = 7", "stage 2: gate must be a runbook stage 1..5, got 7"),
    ("[[stage]]\nsteps = 5\nstep = 3", "stage 1: unknown key(s) step"),
    ("[[stage]]\nsteps = 5\nargs = ['--output-dir', 'x']", "--output-dir is set by the autopilot itself"),
    ("[[stage]]\nsteps = 5\nargs = ['--max-steps=9']", "--max-steps is set by the autopilot itself"),
    ("[[stage]]\nsteps = 5\nargs = ['--no-such-flag']", "unrecognized arguments: --no-such-flag"),
    ("[[stage]]\nsteps = 5\nargs = ['--seed', 'x']", "argument --seed: invalid int value"),
    ("[[stage]]\nsteps = 5\nargs = '--seed 3'", "args must be a list of strings"),
    ("[[stage]]\nsteps = 5\noutput_dir = '../x'", "output_dir must be a folder under RUNS_ROOT"),
    ("[[stage]]\nsteps = 5\noutput_dir = 'autopilot'", "output_dir must be a folder under RUNS_ROOT"),
    ("[[stage]]\nsteps = 5\n[[stage]]\nsteps = 6\noutput_dir = 'stage1'", "stage 2: output_dir 'stage1' is also stage 1's"),
    ("backoff_s = []", "backoff_s must be a non-empty list"),
    ("max_crashes = -1", "max_crashes must be a whole number >= 0"),
    ("stall_s = 0", "stall_s must be a number > 0"),
    ("[criteria]\nnot_a_field = 3", "criteria: unknown criteria field(s): not_a_field"),
    ("criteria = 'missing.json'", "criteria: cannot read criteria file"),
    ("stage = 3", "stage must be a list of tables"),
    ("evaluate = 'yes'", "evaluate must be true or false"),
    ("[[stage]\nsteps = 1", "not valid TOML"),
])
def test_plan_errors_are_one_line_naming_the_file(tmp_path, text, message):
    f = tmp_path / "plan.toml"
    f.write_text(text)
    with pytest.raises(PlanError) as exc:
        load_plan(f)
    assert message in str(exc.value) and str(exc.value).startswith(str(f)) and "\n" not in str(exc.value)


def test_a_bad_plan_refuses_to_start_with_exit_2(tmp_path, capsys):
    f = tmp_path / "plan.toml"
    f.write_text("[[stage]]\nsteps = -4\n")
    assert main(["autopilot", str(tmp_path / "runs"), "--plan", str(f)]) == 2
    assert "stage 1: steps must be a positive integer" in capsys.readouterr().err
    assert main(["autopilot", str(tmp_path / "runs"), "--through", "6"]) == 2
    assert not (tmp_path / "runs").exists()  # refused before touching anything
    assert main(["autopilot", "--show", "--through", "2"]) == 0
    assert "2. Short validation: 500 steps in stage2" in capsys.readouterr().out


def test_a_second_autopilot_on_the_same_runs_root_refuses_with_exit_2(tmp_path, capsys):
    lock = AutopilotLock(tmp_path / "runs" / layout.AUTOPILOT_DIR)
    lock.acquire()  # this (live) process drives it
    try:
        assert main(["autopilot", str(tmp_path / "runs")]) == 2
        assert "another autopilot drives" in capsys.readouterr().out
    finally:
        lock.release()
    assert not (tmp_path / "runs" / layout.AUTOPILOT_DIR / layout.AUTOPILOT_LOCK).exists()


def test_trainer_args_from_the_plan_build_through_cmdline():
    argv = cmdline.train(stage=2, max_steps=30, output_dir="r/s2", init_from="r/s1/best_model.pt",
                         overrides={"learning_rate": 5e5, "seed": 1338},
                         extra=["--learning-rate", "1e6", "--log-interval", "1", "--seed=4", "--quiet"])
    assert argv.count("--learning-rate") == 1 and "--seed=4" not in argv  # an override replaces the plan's flag
    args = build_parser().parse_args(argv[1:])
    assert (args.learning_rate, args.seed, args.log_interval, args.max_steps, args.stage) == (5e5, 1338, 1, 30, 2)
    assert args.init_from == "r/s1/best_model.pt" and args.output_dir == "r/s2"


# ---- mechanical remedies ------------------------------------------------------------------------------------
@pytest.mark.parametrize("row, expect", [
    (MatrixRow(1, "Loss", Verdict.FAILURE, "increasing: ..."), {"learning_rate": 1e-4}),
    (MatrixRow(1, "Loss", Verdict.WARNING, "flat"), None),
    (MatrixRow(2, "Val PPL", Verdict.FAILURE, "val PPL 3000"), None),  # check the data: a person
    (MatrixRow(3, "Val PPL", Verdict.WARNING, "val PPL 700"), {"learning_rate": 5e-4}),
    (MatrixRow(2, "u_val", Verdict.WARNING, "near clamps"), {"lambda_reg": 0.1}),
    (MatrixRow(2, "R", Verdict.FAILURE, "locked at 0"), {"seed": 1338}),
    (MatrixRow(3, "R zones", Verdict.WARNING, "1 zone"), {"seed": 1338}),
    (MatrixRow(3, "Samples", Verdict.WARNING, "fragments"), None),
    (MatrixRow(4, "u_val regime", Verdict.WARNING, "wandering"), None),
    (MatrixRow(4, "u_val regime", Verdict.FAILURE, "locked at the floor"), {"lambda_reg": 0.1}),
    (MatrixRow(5, "Goldilocks", Verdict.WARNING, "0.25"), None),  # train longer: a person decides
    (MatrixRow(5, "Agency", Verdict.FAILURE, "none"), None),
    (MatrixRow(2, "R", Verdict.HEALTHY, "fine"), None),
])
def test_remedy_overrides_are_the_playbooks_mechanical_remedies(row, expect):
    cfg = {"learning_rate": 1e-3, "lambda_reg": 0.01, "seed": 1337}
    got = playbook.remedy_overrides(row, cfg)
    assert (got[0] if got else None) == expect
    if got:  # the same change the playbook prints for a person
        from runbook_synth import history as synth

        cmd, _ = playbook.remedy_for(row, synth(config=cfg, loss=[5.0] * 3), "runs/x")
        args = build_parser().parse_args(cmd.split()[1:])
        for k, v in expect.items():
            assert getattr(args, k) == pytest.approx(v)


# ---- the classifier -----------------------------------------------------------------------------------------
def write_run(d: Path, evs, lock_pid=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / layout.EVENTS, "w") as fh:
        for e in evs:
            fh.write(json.dumps(e) + "\n")
    if lock_pid is not None:
        (d / layout.LOCK).write_text(json.dumps({"pid": lock_pid, "host": None, "start_time": None, "created": 0}))
    return d


def sit(tmp_path, evs, *, stage=StagePlan(2, "Short validation", 500, 2, (), "stage2"), lock_pid=None, now=None,
        **kw) -> Situation:
    d = write_run(tmp_path / "runs" / stage.output_dir, evs, lock_pid)
    st = run_status(d, use_cache=False, now=now)
    cfg = next((e["config"] for e in evs if e.get("event") == "run_start"), {})
    return Situation(st, stage, kw.pop("budgets", Budgets()), config=cfg, **kw)


def healthy2(**kw):
    return events(stage=2, loss=ramp(8, 6, N), u=wiggle(1.0, 0.3, N), R=wiggle(0.05, 0.01, N),
                  evals=[{"step": 300, "val_loss": 6.5, "val_ppl": 665.0}], **kw)


STAGE1 = StagePlan(1, "Smoke test", 100, 1, (), "stage1")
STAGE3 = StagePlan(3, "First milestone", 1500, 3, (), "stage3")


def stage3(**kw):
    return events(stage=3, max_steps=1500, loss=ramp(8, 5, N), R=wiggle(0.05, 0.01, N), u=wiggle(1, 0.3, N),
                  evals=[{"step": 1500, "val_loss": 5.0, "val_ppl": 300.0}], **kw)


def test_a_healthy_completed_stage_passes_its_gate(tmp_path):
    d = classify(sit(tmp_path, healthy2(end="completed")))
    assert d.kind == "pass" and d.verdict == "healthy" and {r["metric"] for r in d.rows} == {"Val PPL", "u_val", "R"}


def test_a_warning_is_remedied_held_or_passed_by_on_warning(tmp_path):
    evs = stage3(samples=[(1500, PROSE)], end="completed")  # one R zone: a Warning with another seed as remedy
    d = classify(sit(tmp_path, evs, stage=STAGE3))
    assert d.kind == "remedy" and d.overrides == {"seed": 1338} and d.budget == "remedy"
    assert "R zones warning" in d.reason and "remedy 1/3" in d.reason
    assert classify(sit(tmp_path, evs, stage=STAGE3, on_warning="proceed")).kind == "pass"
    held = classify(sit(tmp_path, evs, stage=STAGE3, on_warning="hold"))
    assert held.kind == "hold" and held.what == "gate"
    spent = classify(sit(tmp_path, evs, stage=STAGE3, remedies=3))
    assert spent.kind == "hold" and spent.what == "budget" and "after 3 remedies" in spent.reason


def test_a_warning_with_a_mechanical_remedy_goes_first_even_beside_one_that_needs_a_person(tmp_path):
    # the Stage 3: R zones warning (another seed) + Samples fragments (check the tokenizer)
    from runbook_synth import FRAGMENTS

    d = classify(sit(tmp_path, stage3(samples=[(1500, FRAGMENTS)], end="completed"), stage=STAGE3))
    assert d.kind == "remedy" and d.overrides == {"seed": 1338}


def test_a_failure_that_needs_a_person_holds_at_once(tmp_path):
    d = classify(sit(tmp_path, stage3(samples=[(1500, GIBBERISH)], end="completed"), stage=STAGE3))
    assert d.kind == "hold" and d.what == "person" and "Samples" in d.reason and "tokenizer" in d.reason


def test_an_increasing_loss_gets_a_ten_times_lower_learning_rate(tmp_path):
    evs = events(stage=1, max_steps=100, loss=ramp(5, 8, N), end="completed", config={"learning_rate": 0.002})
    d = classify(sit(tmp_path, evs, stage=STAGE1))
    assert d.kind == "remedy" and d.overrides == {"learning_rate": 0.0002}


def test_a_gate_with_nothing_to_judge_holds(tmp_path):
    d = classify(sit(tmp_path, events(stage=1, max_steps=100, loss=[5.0, 4.0], end="completed"), stage=STAGE1))
    assert d.kind == "hold" and d.what == "gate"


def test_a_stage5_gate_runs_the_evaluation_suite_once(tmp_path):
    final = StagePlan(5, "Production", 10000, 5, (), "final")
    evs = events(stage=5, max_steps=10000, loss=ramp(8, 4, N), R=wiggle(0.35, 0.02, N),
                 evals=[{"step": 10000, "val_loss": 4.0, "val_ppl": 50.0, "val_R": 0.35}], end="completed")
    assert classify(sit(tmp_path, evs, stage=final)).kind == "evaluate"
    d = classify(sit(tmp_path, evs, stage=final, evaluated=True))  # Agency still pending: Goldilocks alone judges
    assert d.kind == "pass"
    assert classify(sit(tmp_path, evs, stage=final, evaluate=False)).kind == "pass"


def test_completed_without_a_final_checkpoint_holds_for_disk(tmp_path):
    evs = healthy2(end={"status": "completed", "reason": "max_steps reached", "final_checkpoint": False})
    d = classify(sit(tmp_path, evs))
    assert d.kind == "hold" and d.what == "disk"


def test_a_crash_resumes_after_a_growing_backoff_then_holds(tmp_path):
    evs = healthy2()  # no run_end, no live process: crashed
    b = Budgets(backoff_s=(10, 30, 90))
    d0 = classify(sit(tmp_path, evs, budgets=b))
    assert d0.kind == "resume" and d0.delay_s == 10 and d0.budget == "crash" and d0.error == {"sig": "crashed", "step": 300}
    assert classify(sit(tmp_path, evs, budgets=b, crashes=1, last_error={"sig": "crashed", "step": 200})).delay_s == 30
    assert classify(sit(tmp_path, evs, budgets=b, crashes=2, last_error={"sig": "failed: x", "step": 300})).delay_s == 90
    over = classify(sit(tmp_path, evs, budgets=b, crashes=3))
    assert over.kind == "hold" and over.what == "budget"


def test_the_same_crash_twice_without_a_new_step_is_a_crash_loop(tmp_path):
    d = classify(sit(tmp_path, healthy2(), crashes=1, last_error={"sig": "crashed", "step": 300}))
    assert d.kind == "hold" and d.what == "crash_loop" and "at step 300" in d.reason


def test_a_failure_before_the_first_step_is_retried_once_then_held(tmp_path):
    evs = [{"event": "schema", "t": 1.0, "name": "kssm-events", "version": 1},
           {"event": "run_end", "t": 2.0, "status": "failed", "reason": "corpus not found: /x", "step": 0}]
    first = classify(sit(tmp_path, evs, exit_code=1))
    assert first.kind == "retry" and first.error == {"sig": "failed: corpus not found: /x", "step": None}
    again = classify(sit(tmp_path, evs, exit_code=1, crashes=1, last_error=first.error))
    assert again.kind == "hold" and again.what == "crash_loop" and "corpus not found" in again.reason


def test_a_trainer_that_refused_to_start_holds_at_once(tmp_path):
    d = classify(sit(tmp_path, [], exit_code=2, output_tail="lock held by PID 9"))
    assert d.kind == "hold" and d.what == "refused" and "lock held by PID 9" in d.reason


def test_nan_rewinds_at_half_the_learning_rate_then_holds(tmp_path):
    evs = events(stage=2, loss=ramp(8, 6, N - 1) + [None], config={"learning_rate": 0.004},
                 end={"status": "failed", "reason": "nan_loss"})
    d = classify(sit(tmp_path, evs, good_checkpoint=(250, "runs/stage2/checkpoint_250.pt")))
    assert d.kind == "rewind" and d.overrides == {"learning_rate": 0.002} and d.checkpoint[0] == 250
    assert d.budget == "rewind" and "rewind 1/3" in d.reason
    fresh = classify(sit(tmp_path, evs, rewinds=2))
    assert fresh.kind == "rewind" and fresh.checkpoint is None and "starting weights" in fresh.reason
    held = classify(sit(tmp_path, evs, rewinds=3))
    assert held.kind == "hold" and held.what == "nan"


def test_a_live_trainer_is_waited_for_unless_stalled(tmp_path, sleeper):
    evs = healthy2()
    assert classify(sit(tmp_path, evs, lock_pid=sleeper.pid, now=1000 + N + 1)).kind == "wait"
    d = classify(sit(tmp_path, evs, lock_pid=sleeper.pid, now=1000 + N + 3600))
    assert d.kind == "stop" and "stalled" in d.reason


def test_interrupted_runs(tmp_path):
    evs = healthy2(end={"status": "interrupted", "reason": "stopped by SIGTERM"})
    assert classify(sit(tmp_path, evs, stop_sent=True)).kind == "resume"  # we stopped it: a stall
    held = classify(sit(tmp_path, evs))
    assert held.kind == "hold" and held.what == "stopped"  # a person stopped it under our eyes
    assert classify(sit(tmp_path, evs, entry=True)).kind == "resume"  # found so when the autopilot started


def test_a_folder_holding_another_run(tmp_path):
    evs = events(stage=1, max_steps=100, loss=ramp(8, 6, N), end="completed")
    at_entry = classify(sit(tmp_path, evs, entry=True))
    assert at_entry.kind == "start" and "previous/" in at_entry.reason
    assert classify(sit(tmp_path, evs)).kind == "hold"
    assert classify(sit(tmp_path, [], entry=True)).kind == "start"


def test_an_unknown_state_holds(tmp_path):
    d = classify(sit(tmp_path, healthy2(end={"status": "exploded", "reason": "?"})))
    assert d.kind == "hold" and d.what == "unknown"


def test_progress_past_the_crash_resets_the_count(tmp_path):
    s = sit(tmp_path, healthy2()).status
    s = dataclasses.replace(s, newest_checkpoint={"step": 250, "intact": True})
    assert progress_made(200, s) and not progress_made(250, s) and not progress_made(None, s)


# ---- the rewind's checkpoint -------------------------------------------------------------------------------
def test_divergence_starts_where_the_final_rise_to_nan_began():
    h = history(stage=2, steps=list(range(10, 110, 10)), loss=[8, 7, 6, 5, 5.5, 5.2, 6, 9, 30, None])
    assert divergence_start(h) == 60  # 5.2 at step 60, then 6, 9, 30, NaN
    assert divergence_start(history(stage=2, loss=[5.0, 4.0, 3.0])) is None
    assert divergence_start(history(stage=2, steps=[1], loss=[None])) == 0


def test_the_good_checkpoint_is_before_the_divergence_with_a_finite_evaluation(tmp_path):
    h = history(stage=2, steps=list(range(10, 110, 10)), loss=[8, 7, 6, 5, 5.5, 5.2, 6, 9, 30, None],
                evals=[{"step": 20, "val_loss": 7.0}, {"step": 40, "val_loss": float("nan")},
                       {"step": 50, "val_loss": 6.0}])
    avail = {s: tmp_path / f"checkpoint_{s}.pt" for s in (20, 40, 50, 80)}
    assert good_checkpoint(h, avail) == (50, avail[50])  # 80 is after the divergence (60)
    assert good_checkpoint(h, {40: avail[40], 20: avail[20]}) == (20, avail[20])  # 40's newest eval is NaN
    assert good_checkpoint(h, {80: avail[80]}) is None
    assert good_checkpoint(history(stage=2, steps=[10], loss=[5.0]), {10: avail[20]}) is None  # no evaluation yet


def test_rewinding_sets_the_later_checkpoints_aside_and_deletes_nothing(tmp_path):
    run = tmp_path / "stage2"
    run.mkdir()
    for s in (5, 10, 15, 20):
        (run / layout.checkpoint_name(s)).write_bytes(b"x" * s)
    (run / layout.BEST_MODEL).write_bytes(b"best")
    dest, moved = set_aside_after(run, 10)
    assert moved == ["checkpoint_15.pt", "checkpoint_20.pt"] and dest.parent == run / layout.PREVIOUS
    assert sorted(p.name for p in run.glob("checkpoint_*.pt")) == ["checkpoint_10.pt", "checkpoint_5.pt"]
    assert (dest / "checkpoint_20.pt").read_bytes() == b"x" * 20 and (run / layout.BEST_MODEL).exists()
    assert not (run / layout.LOCK).exists()  # the lock it held while moving is released
    assert set_aside_after(run, 10) == (None, [])


# ---- state, decisions, the status view, notifications -------------------------------------------------------
def test_state_round_trip_and_decisions(tmp_path):
    store = Store(tmp_path)
    store.ensure()
    rec = StageRecord(1, "Smoke test", "stage1", 100, 1, attempts=[Attempt(1, "start", "no run", ["kssm", "train"])])
    st = State(str(tmp_path), {"stages": []}, "abc", [rec], held={"stage": 1, "what": "nan", "why": "NaN"})
    store.save(st)
    back = store.load()
    assert back.to_dict() == st.to_dict() and back.stage(1).attempt.kind == "start"
    assert stat.S_IMODE(os.stat(store.state_path).st_mode) & 0o044  # readable by a cockpit of the same group
    store.decide({"stage": 1, "decision": "hold", "reason": "NaN"})
    with open(store.decisions_path, "ab") as fh:
        fh.write(b'{"torn')
    assert [d["decision"] for d in read_decisions(tmp_path)] == ["hold"]
    moved = store.set_aside()
    assert moved.parent == store.dir / layout.PREVIOUS and store.load() is None


def test_kssm_status_shows_the_autopilot(tmp_path, capsys):
    root = tmp_path / "results"
    write_run(root / "stage1", events(stage=1, max_steps=100, loss=ramp(8, 6, N), end="completed"))
    store = Store(root)
    store.ensure()
    rec = StageRecord(2, "Short validation", "stage2", 500, 2, status="running",
                      attempts=[Attempt(1, "start", "no run"), Attempt(2, "remedy", "another seed")])
    store.save(State(str(root), {}, "d", [StageRecord(1, "Smoke test", "stage1", 100, 1, status="passed"), rec],
                     current=2, next="Stage 2, attempt 2: another seed; next gate at step 500"))
    store.decide({"stage": 2, "decision": "remedy", "reason": "R warning: another seed"})
    assert main(["status", str(root), "--json"]) in (0, 1)
    body = json.loads(capsys.readouterr().out)
    ap = body["autopilot"]
    assert ap["status"] == "running" and ap["alive"] is False and ap["stage"] == 2 and ap["attempt"] == 2
    assert ap["decisions"][-1]["decision"] == "remedy" and ap["next"].startswith("Stage 2, attempt 2")
    main(["status", str(root / "stage1")])  # a run folder inside the runs root shows it too
    out = capsys.readouterr().out
    assert "autopilot (" in out and "NOT RUNNING" in out and "remedy: R warning" in out
    assert summary(tmp_path / "elsewhere") is None


def test_notify_command_gets_the_event_as_json_and_tmux_a_message(tmp_path, monkeypatch):
    got = tmp_path / "event.json"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tmux").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'tmux.txt'}\n")
    (fake / "tmux").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    logs = []
    n = Notifier(f"cat > {got}", bell=False, tmux=True, log=logs.append)
    n({"stage": 3, "stage_name": "First milestone", "decision": "hold", "reason": "NaN\x1b[2J after 3 rewinds"})
    assert json.loads(got.read_text())["decision"] == "hold"
    msg = (tmp_path / "tmux.txt").read_text()
    assert msg.startswith("display-message kssm autopilot: stage 3 (First milestone): hold: NaN?[2J") and not logs
    n({"decision": "progress", "reason": "not notified"})  # not every decision is worth a bell
    assert json.loads(got.read_text())["decision"] == "hold"
    Notifier("exit 3", bell=False, tmux=False, log=logs.append)({"decision": "done", "reason": "x"})
    assert logs and "exited 3" in logs[0]


def test_plan_module_reexports_nothing_surprising():
    assert plan_mod.OWNED_FLAGS[0] == "--output-dir"


def test_the_kssm_report_hook_is_called_only_where_that_module_exists(tmp_path, monkeypatch):
    import sys
    import types

    from kssm_core.autopilot import report as rep

    monkeypatch.delitem(sys.modules, "kssm_core.reports.report", raising=False)
    monkeypatch.setitem(sys.modules, "kssm_core.reports", None)  # absent (as on this branch): skipped
    assert rep.full_report(tmp_path) is None
    calls = []
    fake = types.ModuleType("kssm_core.reports.report")
    fake.write_report = lambda paths, out, **kw: calls.append((paths, out, kw)) or types.SimpleNamespace(
        report=tmp_path / "report" / "report.md", notes=["no matplotlib"])
    monkeypatch.setitem(sys.modules, "kssm_core.reports", types.ModuleType("kssm_core.reports"))
    monkeypatch.setitem(sys.modules, "kssm_core.reports.report", fake)
    got = rep.full_report(tmp_path, criteria="C")
    assert got == {"report": str(tmp_path / "report" / "report.md"), "notes": ["no matplotlib"]}
    assert calls == [([str(tmp_path)], None, {"figures": None, "criteria": "C"})]
    fake.write_report = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    assert rep.full_report(tmp_path) == {"error": "OSError: disk full"}


def test_a_stage_without_disk_room_for_its_checkpoints_holds(tmp_path, monkeypatch):
    import collections

    from kssm_core.autopilot import supervisor as sup_mod

    plan = plan_from_dict({"stage": [{"steps": 10}, {"steps": 10}]})
    sup = sup_mod.Supervisor(tmp_path / "runs", plan, echo=lambda _l: None, notify=lambda _e: None)
    sup.state = State(str(tmp_path / "runs"), plan.to_dict(), plan.digest,
                      [StageRecord(s.index, s.name, s.output_dir, s.steps, s.gate) for s in plan.stages])
    s1 = tmp_path / "runs" / "stage1"
    s1.mkdir(parents=True)
    (s1 / layout.checkpoint_name(10)).write_bytes(b"x" * 1000)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sup_mod.shutil, "disk_usage", lambda _p: usage(10**9, 0, 6999))
    why = sup._disk_problem(tmp_path / "runs" / "stage2", sup.state.stage(2))
    assert why.startswith("disk: 0 MB free") and "kssm clean" in why
    monkeypatch.setattr(sup_mod.shutil, "disk_usage", lambda _p: usage(10**9, 0, 7000))
    assert sup._disk_problem(tmp_path / "runs" / "stage2", sup.state.stage(2)) is None


def test_a_decided_resume_is_in_state_json_before_its_decision_line_appears(tmp_path):
    """An autopilot killed right after writing a decision must find it in state.json when started again, or it
    decides afresh: a second resume, one crash counted twice (seen in CI)."""
    from kssm_core.autopilot import supervisor as sup_mod

    root = tmp_path / "runs"
    plan = plan_from_dict({"stage": [{"steps": 500, "gate": 2, "output_dir": "stage1"}], "backoff_s": [300]})
    write_run(root / "stage1", healthy2())  # no run_end, PID gone: crashed
    sup = sup_mod.Supervisor(root, plan, echo=lambda _l: None, notify=lambda _e: None)
    on_disk_when_written = {}
    real_decide = sup.store.decide

    def decide(record):
        if record["decision"] == "resume":
            on_disk_when_written.update(json.loads(sup.store.state_path.read_text()))
            sup.stopping = "SIGKILL"  # the autopilot dies here, in the backoff
        return real_decide(record)

    sup.store.decide = decide
    assert sup.run(install_signals=False) == sup_mod.EXIT_HELD
    pending = on_disk_when_written["stages"][0]["pending"]
    assert pending["kind"] == "resume" and "--resume" in pending["argv"]
    assert on_disk_when_written["stages"][0]["crashes"] == 1
    # started again: the same decision, carried out, not a second one
    again = sup_mod.Supervisor(root, plan, echo=lambda _l: None, notify=lambda _e: None)
    state, _notes = again._load_or_new()
    assert state.stage(1).pending["kind"] == "resume" and state.stage(1).crashes == 1
    assert [d["decision"] for d in read_decisions(root)].count("resume") == 1


# ---- a trainer that hangs before its first run_start (issue 14) -------------------------------------------------
HUNG = "import time; time.sleep(60)"
HUNG_DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"  # needs SIGKILL


def test_a_trainer_silent_before_its_run_start_is_stopped_then_handled_as_a_crash(tmp_path, monkeypatch):
    """Alive, launched by the autopilot, no run_start of its own and nothing written for stall_s: a stall.
    SIGTERM, SIGKILL after the grace, then the crash path (a retry, then a crash loop hold); no child survives."""
    import sys
    import time

    import psutil

    from kssm_core.autopilot import supervisor as sup_mod

    root = tmp_path / "runs"
    plan = plan_from_dict({"stage": [{"steps": 10, "gate": 1, "output_dir": "stage1"}], "stall_s": 0.5,
                           "stall_grace_s": 0.3, "poll_s": 0.1, "backoff_s": [0]})
    scripts = [HUNG_DEAF, HUNG]  # the first ignores SIGTERM (the kill path), the retry does not
    started: list[psutil.Process] = []
    real_spawn = sup_mod.spawn_detached

    def spawn(_argv, out_path, **kw):  # the real detached launch, of a stand-in that hangs at once
        p = real_spawn([sys.executable, "-c", scripts[len(started)]], out_path, **kw)
        started.append(psutil.Process(p.pid))
        return p

    monkeypatch.setattr(sup_mod, "spawn_detached", spawn)
    lines: list[str] = []
    sup = sup_mod.Supervisor(root, plan, echo=lines.append, notify=lambda _e: None)
    t0 = time.monotonic()
    try:
        assert sup.run(install_signals=False) == sup_mod.EXIT_HELD
    finally:
        for p in started:  # never leave a child behind, even when the test fails
            if p.is_running():
                p.kill()
    assert time.monotonic() - t0 < 20
    assert len(started) == 2 and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started)
    decisions = [d for d in read_decisions(root) if d.get("stage") == 1]
    kinds = [d["decision"] for d in decisions]
    assert kinds == ["start", "stop", "kill", "retry", "stop", "hold"], kinds
    stops = [d for d in decisions if d["decision"] == "stop"]
    assert [d["pid"] for d in stops] == [p.pid for p in started]
    assert all("never started logging" in d["reason"] and "no run_start" in d["reason"] for d in stops)
    retry = decisions[3]
    assert "never started logging" in retry["reason"] and "retry 1/3" in retry["reason"]
    held = decisions[-1]
    assert held["what"] == "crash_loop" and "before the first step" in held["reason"]
    state = Store(root).load()
    rec = state.stage(1)
    assert rec.crashes == 1 and rec.stop_sent["killed"] is False and state.status == "held"
    assert [a.pid for a in rec.attempts] == [p.pid for p in started]


def test_only_an_autopilot_launched_trainer_silent_for_stall_s_is_stopped(tmp_path):
    """_silent_start: a person's trainer (attached) is never stopped; anything the trainer writes (its schema
    line, the heartbeats of a long token-cache build) restarts the clock; an older run's events do not."""
    from kssm_core.autopilot import supervisor as sup_mod
    from kssm_core.runfolder.history import RunHistory

    plan = plan_from_dict({"stage": [{"steps": 10}], "stall_s": 20})  # x STARTUP_STALLS: 60 s
    sup = sup_mod.Supervisor(tmp_path / "runs", plan, echo=lambda _l: None, notify=lambda _e: None)
    rec = StageRecord(1, "s", "stage1", 10, 1)
    rec.attempts.append(Attempt(1, "start", "no run", ["kssm", "train"], started_at=1000.0, pid=4242))
    old = RunHistory()
    old.extend([{"event": "run_start", "t": 900.0, "pid": 17}, {"event": "heartbeat", "t": 950.0}])
    assert sup._silent_start(rec, 4242, old, now=1059.0) is None  # within stall_s of its start
    d = sup._silent_start(rec, 4242, old, now=1061.0)  # the old run's events count for nothing
    assert d.kind == "stop" and "PID 4242 (attempt 1) never started logging" in d.reason
    assert "61s after it was started, nothing written at all" in d.reason
    busy = RunHistory()
    busy.extend([{"event": "schema", "t": 1001.0}, {"event": "heartbeat", "t": 1050.0, "phase": "data"}])
    assert sup._silent_start(rec, 4242, busy, now=1100.0) is None  # heartbeating while it builds the cache
    d = sup._silent_start(rec, 4242, busy, now=1111.0)  # then silent for more than stall_s
    assert d.kind == "stop" and "nothing written for 61s" in d.reason
    assert sup._silent_start(rec, 4243, old, now=2000.0) is None  # not the attempt's PID
    rec.attempts.append(Attempt(2, "attach", "a live trainer found in the folder", None, started_at=1000.0, pid=4242))
    assert sup._silent_start(rec, 4242, old, now=2000.0) is None  # a person's trainer: never ours to stop


def test_a_stop_before_any_run_start_is_a_crash_of_its_own_kind(tmp_path):
    first = classify(sit(tmp_path, [], exit_code=-15, stop_sent=True))
    assert first.kind == "retry" and first.budget == "crash" and "never started logging" in first.reason
    again = classify(sit(tmp_path, [], exit_code=-9, stop_sent=True, crashes=1, last_error=first.error))
    assert again.kind == "hold" and again.what == "crash_loop"
    # re-attached after a restart (no exit code of ours): still the crash path, not a free fresh start
    assert classify(sit(tmp_path, [], stop_sent=True)).kind == "retry"
