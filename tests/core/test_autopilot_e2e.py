"""`kssm autopilot` end to end, with real trainers (tiny preset, embedded corpus, tens of steps), and the
faults the issue names: a trainer SIGKILLed mid-stage, a trainer SIGSTOPped (a stall), the autopilot itself
SIGKILLed and started again, a learning rate that always gives NaN, a missing corpus.

The gates: tiny stages of 15-30 steps cannot meet the runbook's Stage 2 perplexity band (< 1000), so the
plans here widen it through an inline [criteria] table (stage2_ppl_healthy = 100000); everything else is
the runbook's own rule, and the runs are deterministic (fixed seed, one thread).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kssm_core.runfolder import layout
from kssm_core.runfolder.lock import lock_state, read_lock
from kssm_testkit import TINY_ARGS, child_env, kssm_cmd, read_events, run_kssm

pytestmark = pytest.mark.slow

SHAPE = [a for a in TINY_ARGS if a != "--quiet"]
LENIENT = {"stage2_ppl_healthy": 100000, "stage2_ppl_failure": 200000}


def toml_value(v) -> str:
    return json.dumps(v)  # strings, numbers and lists of them are spelled alike in TOML and JSON


def write_plan(tmp_path: Path, data_dir: Path, stages: list[dict], args=(), criteria=None, **top) -> Path:
    top = {"backoff_s": [0.5, 1, 2], "poll_s": 0.3, **top}
    base = [*SHAPE, "--data-dir", str(data_dir), "--log-interval", "1", "--eval-interval", "5", "--save-interval", "5"]
    lines = [f"args = {toml_value(base + list(args))}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items()]
    if criteria:
        lines.append("[criteria]")
        lines += [f"{k} = {toml_value(v)}" for k, v in criteria.items()]
    for s in stages:
        lines.append("[[stage]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in s.items()]
    path = tmp_path / "plan.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_autopilot(root: Path, plan: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(kssm_cmd("autopilot", str(root), "--plan", str(plan)), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())


def decisions(root: Path) -> list[dict]:
    path = root / layout.AUTOPILOT_DIR / layout.AUTOPILOT_DECISIONS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kinds(root: Path) -> list[str]:
    return [d["decision"] for d in decisions(root)]


def run_starts(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir) if e.get("event") == "run_start"]


def wait_until(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out / exited waiting for {what}\n{tail}")


def live_trainer(run_dir: Path) -> int | None:
    info = read_lock(run_dir)
    return info.pid if info is not None and lock_state(info)[0] == "live" else None


def newest_step(run_dir: Path) -> int:
    return max((e["step"] for e in read_events(run_dir) if e.get("event") == "step"), default=0)


@pytest.fixture
def pids():
    """PIDs this test signals (trainers): whatever is left alive at the end is continued, then killed."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def finish(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the autopilot did not finish in time:\n" + log.read_text()[-3000:])


def test_a_three_stage_plan_passes_every_gate_unattended(tmp_path, data_dir):
    root, log = tmp_path / "runs", tmp_path / "autopilot.log"
    plan = write_plan(tmp_path, data_dir, [{"steps": 15, "gate": 1}, {"steps": 15, "gate": 2},
                                           {"steps": 15, "gate": 2, "name": "again"}], criteria=LENIENT)
    rc = finish(start_autopilot(root, plan, log), 180, log)
    assert rc == 0, log.read_text()[-3000:]
    assert [k for k in kinds(root) if k in ("start", "pass", "done")] == ["start", "pass"] * 3 + ["done"]
    for name in ("stage1", "stage2", "stage3"):
        starts = run_starts(root / name)
        assert len(starts) == 1 and starts[0]["max_steps"] == 15
        assert read_events(root / name)[-1]["status"] == "completed"
    # each stage starts from the previous stage's best model
    assert run_starts(root / "stage2")[0]["config"]["init_from"] == str(root / "stage1" / layout.BEST_MODEL)
    assert run_starts(root / "stage3")[0]["config"]["init_from"] == str(root / "stage2" / layout.BEST_MODEL)
    state = json.loads((root / layout.AUTOPILOT_DIR / layout.AUTOPILOT_STATE).read_text())
    assert state["status"] == "passed" and [s["status"] for s in state["stages"]] == ["passed"] * 3
    report = json.loads((root / layout.AUTOPILOT_DIR / layout.AUTOPILOT_REPORT_JSON).read_text())
    assert report["status"] == "passed" and all(s["verdict"] == "healthy" for s in report["stages"])
    assert "All 3 stage(s) passed" in (root / layout.AUTOPILOT_DIR / layout.AUTOPILOT_REPORT_MD).read_text()
    # started again on a finished plan: nothing to do, nothing trained
    assert finish(start_autopilot(root, plan, log), 60, log) == 0
    assert len(run_starts(root / "stage3")) == 1


def test_a_trainer_sigkilled_mid_stage_is_resumed_and_the_stage_completes(tmp_path, data_dir, pids):
    """... even when the autopilot itself is killed during the resume's backoff: started again, it carries
    the decided resume out (no second crash counted, no crash loop)."""
    root, log = tmp_path / "runs", tmp_path / "autopilot.log"
    plan = write_plan(tmp_path, data_dir, [{"steps": 30, "gate": 1}], backoff_s=[3])
    ap = start_autopilot(root, plan, log)
    run = root / "stage1"
    pid = wait_until(lambda: newest_step(run) >= 8 and live_trainer(run), 90, "step 8", ap, log)
    pids.append(pid)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: "resume" in kinds(root), 30, "the resume decision", ap, log)
    ap.kill()  # in the 3 s backoff
    ap.wait()
    assert finish(start_autopilot(root, plan, log), 120, log) == 0, log.read_text()[-3000:]
    ks = kinds(root)
    assert ks.count("resume") == 1 and "launch" in ks and ks[-2:] == ["pass", "done"]
    starts = run_starts(run)
    assert len(starts) == 2 and starts[1]["start_step"] >= 5 and starts[1]["pid"] != pid
    assert read_events(run)[-1]["status"] == "completed" and newest_step(run) == 30


def test_a_sigstopped_trainer_is_a_stall_stopped_and_resumed(tmp_path, data_dir, pids):
    root, log = tmp_path / "runs", tmp_path / "autopilot.log"
    # stalled after 5 s without a step (or 5 s without any event: heartbeats every 0.5 s x 10)
    plan = write_plan(tmp_path, data_dir, [{"steps": 30, "gate": 1}], args=["--heartbeat-seconds", "0.5"],
                      criteria={"heartbeat_factor": 10}, stall_s=5, stall_grace_s=5)
    ap = start_autopilot(root, plan, log)
    run = root / "stage1"
    pid = wait_until(lambda: newest_step(run) >= 8 and live_trainer(run), 90, "step 8", ap, log)
    pids.append(pid)
    os.kill(pid, signal.SIGSTOP)
    assert finish(ap, 120, log) == 0, log.read_text()[-3000:]
    ds = decisions(root)
    stop = next(d for d in ds if d["decision"] == "stop")
    assert stop["pid"] == pid and "stalled" in stop["reason"]
    after = [d["decision"] for d in ds[ds.index(stop):]]
    assert "resume" in after and after[-2:] == ["pass", "done"]
    ends = [e for e in read_events(run) if e.get("event") == "run_end"]
    assert ends[0]["status"] == "interrupted" and ends[-1]["status"] == "completed"  # SIGTERM + SIGCONT: it saved


def test_the_autopilot_sigkilled_and_restarted_reattaches_to_its_trainer(tmp_path, data_dir, pids):
    root, log = tmp_path / "runs", tmp_path / "autopilot.log"
    plan = write_plan(tmp_path, data_dir, [{"steps": 60, "gate": 1}])
    first = start_autopilot(root, plan, log)
    run = root / "stage1"
    pid = wait_until(lambda: newest_step(run) >= 3 and live_trainer(run), 90, "step 3", first, log)
    pids.append(pid)
    first.kill()
    first.wait()
    assert live_trainer(run) == pid  # the trainer outlives its autopilot (own session)
    second = start_autopilot(root, plan, log)
    wait_until(lambda: "attach" in kinds(root), 60, "the second autopilot to attach", second, log)
    second.send_signal(signal.SIGTERM)  # stopped by a person: it says so, exits 1, leaves the trainer alone
    assert finish(second, 30, log) == 1 and kinds(root)[-1] == "stopped" and live_trainer(run) == pid
    third = start_autopilot(root, plan, log)
    assert finish(third, 120, log) == 0, log.read_text()[-3000:]
    ds = decisions(root)
    attaches = [d for d in ds if d["decision"] == "attach"]
    assert len(attaches) == 2 and all(d["pid"] == pid and "no new trainer" in d["reason"] for d in attaches)
    assert [d["decision"] for d in ds].count("start") == 1  # only the first autopilot started a trainer
    assert any(d["decision"] == "lock" and "stale" in d["reason"] for d in ds)  # took over the dead one's lock
    starts = run_starts(run)
    assert len(starts) == 1 and starts[0]["pid"] == pid  # no new run_start
    assert read_events(run)[-1]["status"] == "completed"
    state = json.loads((root / layout.AUTOPILOT_DIR / layout.AUTOPILOT_STATE).read_text())
    assert state["launches"] == 3 and len(state["stages"][0]["attempts"]) == 1 and state["status"] == "passed"


def test_a_learning_rate_that_always_gives_nan_rewinds_at_falling_rates_then_holds(tmp_path, data_dir):
    root, log = tmp_path / "runs", tmp_path / "autopilot.log"
    plan = write_plan(tmp_path, data_dir, [{"steps": 15, "gate": 1}], args=["--learning-rate", "1e6"])
    t0 = time.monotonic()
    rc = finish(start_autopilot(root, plan, log), 180, log)
    assert rc == 1 and time.monotonic() - t0 < 120
    ds = decisions(root)
    rewinds = [d for d in ds if d["decision"] == "rewind"]
    assert [d["overrides"]["learning_rate"] for d in rewinds] == [5e5, 2.5e5, 1.25e5]
    assert all(d["argv"].count("--learning-rate") == 1 for d in rewinds)
    assert ds[-1]["decision"] == "hold" and ds[-1]["what"] == "nan"
    lrs = [s["config"]["learning_rate"] for p in [root / "stage1", *sorted((root / "stage1" / "previous").iterdir())]
           for s in run_starts(p)]
    assert sorted(lrs, reverse=True) == [1e6, 5e5, 2.5e5, 1.25e5]  # every attempt kept (archived), none deleted
    state = json.loads((root / layout.AUTOPILOT_DIR / layout.AUTOPILOT_STATE).read_text())
    assert state["status"] == "held" and state["held"]["what"] == "nan"


def test_a_nan_after_checkpoints_rewinds_to_the_last_good_one(tmp_path, data_dir):
    """A run that diverged after its checkpoints: the rewind resumes from a checkpoint from before the
    divergence (the later ones set aside, nothing deleted), at half the learning rate each time."""
    root, log = tmp_path / "runs", tmp_path / "autopilot.log"
    run = root / "stage1"
    common = ["--stage", "1", "--output-dir", str(run), "--data-dir", str(data_dir), *TINY_ARGS,
              "--log-interval", "1", "--eval-interval", "5", "--save-interval", "5"]
    assert run_kssm("train", *common, "--max-steps", "10").returncode == 0
    r = run_kssm("train", *common, "--max-steps", "20", "--resume", "--learning-rate", "1e6")
    assert r.returncode == 1 and read_events(run)[-1]["reason"] == "nan_loss"
    plan = write_plan(tmp_path, data_dir, [{"steps": 20, "gate": 1}], max_rewinds=2)
    assert finish(start_autopilot(root, plan, log), 120, log) == 1
    ds = decisions(root)
    rewinds = [d for d in ds if d["decision"] == "rewind"]
    assert len(rewinds) == 2 and all(d["checkpoint"][0] in (5, 10) for d in rewinds)
    assert [d["overrides"]["learning_rate"] for d in rewinds] == [5e5, 2.5e5]
    assert all("--resume" in d["argv"] for d in rewinds) and ds[-1]["what"] == "nan"
    resumed = run_starts(run)[2:]
    assert [s["config"]["learning_rate"] for s in resumed] == [5e5, 2.5e5]
    assert all(s["resumed_from"].endswith(f"checkpoint_{rewinds[0]['checkpoint'][0]}.pt") for s in resumed)
    kept = {p.name for p in run.rglob("checkpoint_*.pt")}
    assert {"checkpoint_5.pt", "checkpoint_10.pt"} <= kept and (run / layout.BEST_MODEL).exists()


def test_a_missing_corpus_holds_after_at_most_three_attempts(tmp_path, data_dir):
    root, log = tmp_path / "runs", tmp_path / "autopilot.log"
    plan = write_plan(tmp_path, data_dir, [{"steps": 15, "gate": 1}], args=["--corpus", str(tmp_path / "nope.txt")])
    assert finish(start_autopilot(root, plan, log), 120, log) == 1
    state = json.loads((root / layout.AUTOPILOT_DIR / layout.AUTOPILOT_STATE).read_text())
    assert 1 < len(state["stages"][0]["attempts"]) <= 3
    assert state["held"]["what"] == "crash_loop" and "corpus not found" in state["held"]["why"]
    assert "HELD at stage 1 (crash_loop)" in log.read_text()


def test_a_gate_warning_gets_another_seed_within_its_budget(tmp_path, data_dir):
    root, log = tmp_path / "runs", tmp_path / "autopilot.log"
    # R ~0.05 is "healthy" above 0.01: ask for 0.5 so the R row is a Warning whose remedy is another seed
    plan = write_plan(tmp_path, data_dir, [{"steps": 15, "gate": 2}], criteria={**LENIENT, "stage2_r_healthy": 0.5},
                      max_remedies=1)
    assert finish(start_autopilot(root, plan, log), 120, log) == 1
    ds = decisions(root)
    remedy = next(d for d in ds if d["decision"] == "remedy")
    assert remedy["overrides"] == {"seed": 1338} and "--seed 1338" in remedy["argv"]
    assert ds[-1]["decision"] == "hold" and ds[-1]["what"] == "budget" and "after 1 remedies" in ds[-1]["reason"]
    assert run_starts(root / "stage1")[0]["config"]["seed"] == 1338  # the remedy's run (the first is archived)
    assert list((root / "stage1" / "previous").iterdir())
