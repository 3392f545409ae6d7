"""`kssm status`: the JSON object's keys, each recommendation, exit codes and incremental reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kssm_core.cli import main
from kssm_core.runfolder.lock import RunLock
from kssm_core.runbook.status import find_run_dirs, run_status
from kssm_core.runfolder.follower import RunFollower
from runbook_synth import events, history, ramp, wiggle

N = 30
TOP_KEYS = {"schema", "run_dir", "source", "state", "state_reason", "headline", "stage", "stage_name", "step", "target", "progress", "steps_per_s",
            "eta_s", "pid", "process", "lock", "lock_reason", "newest_checkpoint", "best_val_loss", "latest",
            "run_end", "assessment", "matrix", "alerts", "recommendation", "disk", "memory", "read", "exit_code",
            "generated_at"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))


def write_run(d, evs, lock_pid=None):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "events.jsonl", "w") as fh:
        for e in evs:
            fh.write(json.dumps(e) + "\n")
    if lock_pid is not None:
        (d / "training.lock").write_text(json.dumps({"pid": lock_pid, "host": None, "start_time": None, "created": 0}))
    return d


def healthy_stage2(**kw):
    return events(stage=2, loss=ramp(8, 6, N), u=wiggle(1.0, 0.3, N), R=wiggle(0.05, 0.01, N),
                  evals=[{"step": 300, "val_loss": 6.5, "val_ppl": 665.0}], **kw)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def run_cli(capsys, *args):
    code = main(["status", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_schema_keys(tmp_path, capsys):
    d = write_run(tmp_path / "results" / "stage2", healthy_stage2(end="completed"))
    code, out, _ = run_cli(capsys, tmp_path / "results", "--json")
    body = json.loads(out)
    assert body["schema"] == "kssm-status-report/1" and body["exit_code"] == code == 0
    (run,) = body["runs"]
    assert set(run) == TOP_KEYS
    assert run["run_dir"] == str(d) and run["stage"] == 2 and run["state"] == "completed"
    assert set(run["assessment"]) == {"stage", "verdict", "action", "summary", "provisional", "rows"}
    assert run["assessment"]["provisional"] is False and not any(r["provisional"] for r in run["assessment"]["rows"])
    assert {r["metric"] for r in run["assessment"]["rows"]} == {"Val PPL", "u_val", "R"}
    assert len(run["matrix"]) == 12
    assert set(run["matrix"][0]) == {"stage", "metric", "verdict", "reason", "remedy", "remedy_note", "provisional"}
    assert set(run["recommendation"]) == {"code", "text", "command"}
    assert {"free_bytes", "needed_bytes", "remaining_saves"} <= set(run["disk"])
    assert {"available_bytes", "total_bytes", "process_rss_bytes"} <= set(run["memory"])
    assert {"lines", "bad_lines", "note", "from_cache", "bytes_read"} <= set(run["read"])
    assert run["best_val_loss"] == 6.5 and run["latest"]["val_ppl"] == 665.0


def test_all_clear_on_an_empty_run_folder_and_on_no_runs(tmp_path, capsys):
    d = tmp_path / "stage1"
    d.mkdir()
    (d / "config.json").write_text("{}")
    s = run_status(d)
    assert s.recommendation.code == "all_clear" and s.recommendation.text.startswith("ALL CLEAR: safe to start")
    assert s.exit_code == 0
    (tmp_path / "empty").mkdir()
    code, out, _ = run_cli(capsys, tmp_path / "empty")
    assert code == 0 and "ALL CLEAR" in out


def test_training_active_with_a_live_lock(tmp_path):
    d = write_run(tmp_path / "stage2", healthy_stage2(pid=os.getpid(), t0=__import__("time").time() - N - 1))
    lock = RunLock(d)
    lock.acquire()  # this test process's own pid and start time: a live lock
    try:
        s = run_status(d)
    finally:
        lock.release()
    assert s.lock == "live" and s.process == "alive" and s.state == "running"
    assert s.recommendation.code == "active" and s.recommendation.text.startswith("TRAINING ACTIVE")
    assert s.steps_per_s == pytest.approx(10.0)  # 10 steps per event, one event a second
    assert s.eta_s == pytest.approx((500 - 300) / 10.0)
    assert s.exit_code == 0


def test_stale_lock_after_a_finished_run(tmp_path):
    d = write_run(tmp_path / "stage2", healthy_stage2(end="completed"), lock_pid=dead_pid())
    s = run_status(d)
    assert s.lock == "stale" and s.recommendation.code == "stale_lock"
    assert s.recommendation.text.startswith("STALE LOCK") and s.recommendation.command == f"kssm unlock {d}"
    assert s.exit_code == 1


@pytest.mark.parametrize("with_lock", [True, False])
def test_crashed(tmp_path, with_lock):
    d = write_run(tmp_path / "stage2", healthy_stage2(), lock_pid=dead_pid() if with_lock else None)
    s = run_status(d)
    assert s.state == "crashed" and s.recommendation.code == "crashed"
    assert s.recommendation.text.startswith("CRASHED at step 300: kssm train")
    assert s.recommendation.command == f"kssm train --output-dir {d} --resume --max-steps 500"
    assert s.exit_code == 2 and any(a.code == "crashed" for a in s.alerts)
    assert "no checkpoint yet: it starts over with the run's original settings" in s.recommendation.text
    (d / "checkpoint_200.pt").write_bytes(b"PK")  # a checkpoint to resume from: no such note
    assert "no checkpoint yet" not in run_status(d).recommendation.text


def test_completed_healthy_says_all_clear_for_the_next_stage(tmp_path):
    d = write_run(tmp_path / "results" / "stage2", healthy_stage2(end="completed"))
    s = run_status(d)
    assert s.recommendation.code == "completed" and "ALL CLEAR" in s.recommendation.text
    assert "--stage 3" in s.recommendation.command and s.exit_code == 0


def test_completed_with_a_failed_gate_recommends_the_remedy(tmp_path):
    evs = events(stage=2, loss=ramp(8, 6, N), u=[0.1] * N, R=wiggle(0.05, 0.01, N),
                 evals=[{"step": 300, "val_ppl": 665.0}], end="completed")
    s = run_status(write_run(tmp_path / "stage2", evs))
    assert s.recommendation.code == "completed" and "--lambda-reg 0.1" in s.recommendation.text
    assert s.exit_code == 2


def test_interrupted_and_failed(tmp_path):
    s = run_status(write_run(tmp_path / "a", healthy_stage2(end={"status": "interrupted", "reason": "stopped by SIGTERM"})))
    assert s.recommendation.code == "interrupted" and "--resume" in s.recommendation.command and s.exit_code == 1
    evs = events(stage=1, max_steps=100, loss=ramp(8, 6, N - 1) + [None],
                 end={"status": "failed", "reason": "nan_loss"})
    s = run_status(write_run(tmp_path / "b", evs))
    assert s.recommendation.code == "failed" and "--learning-rate 0.0001" in s.recommendation.text and s.exit_code == 2


def test_a_trainer_that_refused_to_start_is_failed_with_its_reason_not_all_clear(tmp_path):
    evs = [{"event": "schema", "t": 1.0, "name": "kssm-events", "version": 1},
           {"event": "run_end", "t": 2.0, "status": "failed", "reason": "corpus not found: /gone.txt",
            "advice": "check --corpus", "step": 0}]
    s = run_status(write_run(tmp_path / "stage1", evs))
    assert s.state == "failed" and s.recommendation.code == "failed" and s.exit_code == 2
    assert s.recommendation.text == "FAILED TO START (corpus not found: /gone.txt): check --corpus"


def test_usage_errors_exit_3(tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "nope")
    assert code == 3 and "no such folder" in err
    bad = tmp_path / "c.json"
    bad.write_text("{")
    code, _, err = run_cli(capsys, tmp_path, "--criteria", bad)
    assert code == 3 and "not valid JSON" in err and err.count("\n") == 1


def test_finds_run_folders_under_a_path(tmp_path):
    for name in ("stage1", "stage2"):
        write_run(tmp_path / name, healthy_stage2())
    (tmp_path / "notes").mkdir()
    assert [p.name for p in find_run_dirs(tmp_path)] == ["stage1", "stage2"]
    assert find_run_dirs(tmp_path / "stage1") == [tmp_path / "stage1"]
    assert find_run_dirs(tmp_path / "stage1" / "events.jsonl") == [tmp_path / "stage1"]


def test_history_from_the_caller_is_used(tmp_path):
    d = tmp_path / "stage2"
    d.mkdir()
    h = history(stage=2, loss=ramp(8, 6, N), evals=[{"step": 300, "val_ppl": 2500.0}], end="completed")
    from kssm_core.runbook.judge import judge
    from kssm_core.runbook.probe import probe

    s = judge(h, probe(d, h), run_dir=d, source="events")  # the pure judge takes any history it is handed
    assert s.source == "events" and s.assessment.verdict.value == "failure"


def test_second_call_reads_only_the_new_bytes(tmp_path):
    d = write_run(tmp_path / "stage2", healthy_stage2()[:-1])
    path = d / "events.jsonl"
    first = run_status(d)
    assert first.read["bytes_read"] == path.stat().st_size and not first.read["from_cache"]
    extra = [{"event": "step", "t": 5000.0 + i, "step": 400 + i, "loss": 5.0, "ce": 5.0, "R": 0.2, "u_val": 1.0}
             for i in range(5)] + [{"event": "run_end", "t": 6000.0, "status": "completed", "reason": "x", "step": 404}]
    blob = "".join(json.dumps(e) + "\n" for e in extra)
    with open(path, "a") as fh:
        fh.write(blob)
    second = run_status(d)
    assert second.read["from_cache"] and second.read["bytes_read"] == len(blob.encode())
    fresh = run_status(d, use_cache=False)
    assert second.step == fresh.step == 404 and second.state == fresh.state == "completed"
    assert second.to_dict()["matrix"] == fresh.to_dict()["matrix"]
    assert second.read["lines"] == fresh.read["lines"]


def test_a_rewritten_file_is_read_again_not_trusted_from_cache(tmp_path):
    d = write_run(tmp_path / "stage2", healthy_stage2(end="completed"))
    run_status(d)
    text = (d / "events.jsonl").read_text()
    (d / "events.jsonl").write_text(text.replace('"val_ppl": 665.0', '"val_ppl": 999.0'))  # same size, same inode
    s = run_status(d)
    assert s.latest["val_ppl"] == 999.0 and not s.read["from_cache"]


def test_a_damaged_cache_costs_only_a_full_read(tmp_path):
    d = write_run(tmp_path / "stage2", healthy_stage2(end="completed"))
    run_status(d)
    for f in (tmp_path / "cache").iterdir():
        f.write_text('{"version": 1, "path": "x", "reader": {}}')
    s = run_status(d)
    assert s.step == 300 and not s.read["from_cache"]


def test_watch_follower_reads_incrementally(tmp_path):
    d = write_run(tmp_path / "stage2", healthy_stage2()[:-1])
    f = RunFollower(d, use_cache=False)
    run_status(d, follower=f, use_cache=False)
    with open(d / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "step", "t": 9e3, "step": 999, "loss": 1.0}) + "\n")
    s = run_status(d, follower=f, use_cache=False)
    assert s.step == 999 and s.read["bytes_read"] < 200


def test_human_output_strips_control_characters(tmp_path, capsys):
    evs = healthy_stage2(end={"status": "failed", "reason": "boom \x1b[31mred\x1b[0m"})
    d = write_run(tmp_path / "stage2", evs)
    code, out, _ = run_cli(capsys, d)
    assert "\x1b[31m" not in out and "FAILED at step 300" in out and code == 2


def test_stalled_trainer(tmp_path):
    import time

    d = write_run(tmp_path / "stage2", healthy_stage2(pid=os.getpid(), t0=time.time() - 5000))
    lock = RunLock(d)
    lock.acquire()
    try:
        s = run_status(d)
    finally:
        lock.release()
    assert s.recommendation.code == "stalled" and s.recommendation.text.startswith("STALLED at step 300")
    assert s.recommendation.command == f"kill -TERM {os.getpid()}; kill -CONT {os.getpid()}" and s.exit_code == 2


def test_agency_from_the_eval_folder(tmp_path):
    evs = events(stage=5, max_steps=10000, R=wiggle(0.35, 0.02, N), evals=[{"step": 10000, "val_R": 0.33}],
                 end="completed")
    d = write_run(tmp_path / "final", evs)
    (d / "eval").mkdir()
    (d / "eval" / "agency.json").write_text(json.dumps({"suite": "agency", "criteria": [
        {"name": "coherent-action score", "value": 0.8}, {"name": "consistency score", "value": 0.7}]}))
    (d / "eval" / "broken.json").write_text("{not json")
    s = run_status(d)
    rows = {r.metric: r for r in s.assessment.rows}
    assert rows["Agency"].verdict.value == "healthy" and rows["Goldilocks"].verdict.value == "healthy"
    assert s.read["eval_problems"] == ["broken.json: unreadable (JSONDecodeError)"]
    assert s.recommendation.code == "completed" and "every gate" in s.recommendation.text
    (d / "eval" / "agency.json").unlink()
    s = run_status(d)
    assert s.recommendation.command == f"kssm eval all --model {d / 'best_model.pt'}"


def test_watch_refreshes_until_interrupted(tmp_path, capsys, monkeypatch):
    d = write_run(tmp_path / "stage2", healthy_stage2(end="completed"))
    calls = []

    def fake_sleep(s):
        calls.append(s)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", fake_sleep)
    code, out, _ = run_cli(capsys, d, "--watch", "--json", "--interval", "0.5")
    reports = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00")]
    assert code == 0 and len(reports) == 2 and calls == [0.5, 0.5]
    assert reports[1]["runs"][0]["read"]["bytes_read"] == 0  # the second refresh read nothing new


@pytest.mark.parametrize("field,bad", [("samples", [1, 2]), ("run_start", [1]), ("events", "x"), ("checkpoints", {"a": 1})])
def test_a_cache_with_wrong_types_is_ignored(tmp_path, field, bad):
    d = write_run(tmp_path / "stage2", healthy_stage2(end="completed"))
    run_status(d)
    (cache_file,) = (tmp_path / "cache").iterdir()
    body = json.loads(cache_file.read_text())
    body["history"][field] = bad
    cache_file.write_text(json.dumps(body))
    s = run_status(d)
    assert not s.read["from_cache"] and s.step == 300 and s.state == "completed"


def test_an_unknown_end_status_is_not_called_completed(tmp_path):
    s = run_status(write_run(tmp_path / "a", healthy_stage2(end={"status": "exploded", "reason": "?"})))
    assert s.state == "unknown" and s.recommendation.code == "unknown" and "COMPLETED" not in s.recommendation.text
    assert s.exit_code == 2 and "exploded" in s.state_reason


def test_a_failed_cache_write_keeps_the_old_cache_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    d = write_run(tmp_path / "stage2", healthy_stage2()[:-1])
    run_status(d)
    (cache_file,) = (tmp_path / "cache").iterdir()
    before = cache_file.read_bytes()
    with open(d / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "run_end", "t": 6000.0, "status": "completed", "reason": "x", "step": 300}) + "\n")

    def disk_full(*_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(os, "replace", disk_full)
        s = run_status(d)  # best effort: the status itself is still right
    assert s.state == "completed"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache_file.name]
    assert cache_file.read_bytes() == before


def test_a_cut_short_newest_checkpoint_is_flagged_damaged(tmp_path, capsys):
    import torch

    d = write_run(tmp_path / "stage1", [{"event": "schema", "t": 1.0, "name": "kssm-events", "version": 1}])
    for step in (50, 100):
        torch.save({"model_state": {"w": torch.zeros(500)}, "step": step}, d / f"checkpoint_{step}.pt")
    assert run_status(d).newest_checkpoint["intact"] is True
    full = (d / "checkpoint_100.pt").read_bytes()
    (d / "checkpoint_100.pt").write_bytes(full[: len(full) // 2])
    s = run_status(d)
    assert s.newest_checkpoint == {"path": "checkpoint_100.pt", "step": 100, "bytes": len(full) // 2, "intact": False}
    main(["status", str(d)])
    assert "DAMAGED" in capsys.readouterr().out
