"""The advice `kssm status` and friends print: chained --init-from, a starting trainer, stage folders named
by hand, a runs root given to clean, a missing folder given to unlock, and `kssm unlock --force`."""

from __future__ import annotations

import json
import socket
import time

import pytest

from kssm_core.cli import main
from kssm_core.runfolder.lock import LOCK_NAME, process_start_time
from kssm_core.runbook.playbook import train_command
from kssm_core.runbook.status import run_status
from runbook_synth import events, history, ramp, wiggle

N = 30


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))


def write_run(d, evs):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "events.jsonl", "w") as fh:
        for e in evs:
            fh.write(json.dumps(e) + "\n")
    return d


def write_lock(folder, pid, start_time=None, host=None, created=None):
    body = {"pid": pid, "host": host or socket.gethostname(), "start_time": start_time,
            "created": time.time() if created is None else created}
    (folder / LOCK_NAME).write_text(json.dumps(body))


def passed_stage1(**kw):
    return events(stage=1, max_steps=100, loss=ramp(8, 6, N), u=wiggle(1.0, 0.3, N), steps=list(range(1, N + 1)),
                  **kw)


def run_cli(capsys, *args):
    code = main([*map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- 2. next-stage and restart commands chain --init-from ----------------------------------------------


def test_next_stage_command_chains_from_the_stage_just_passed(tmp_path):
    d = write_run(tmp_path / "results" / "stage1", passed_stage1(end="completed"))
    s = run_status(d)
    assert s.recommendation.code == "completed" and "ALL CLEAR" in s.recommendation.text
    assert "--init-from" not in s.recommendation.command  # no best model: nothing to chain from
    (d / "best_model.pt").write_bytes(b"weights")
    s = run_status(d)
    assert s.recommendation.command.endswith(f"--init-from {d / 'best_model.pt'}")
    assert s.recommendation.command in s.recommendation.text


def test_all_clear_and_restart_commands_chain_from_the_previous_stage(tmp_path):
    root = tmp_path / "results"
    (root / "stage1").mkdir(parents=True)
    stage2 = root / "stage2"
    stage2.mkdir()
    (stage2 / "config.json").write_text("{}")
    assert "--init-from" not in run_status(stage2).recommendation.command
    (root / "stage1" / "best_model.pt").write_bytes(b"weights")
    best = str(root / "stage1" / "best_model.pt")
    s = run_status(stage2)
    assert s.recommendation.code == "all_clear" and s.recommendation.command.endswith(f"--init-from {best}")
    h = history(stage=2, loss=ramp(8, 6, 5))
    assert f"--init-from {best}" in train_command(h, stage2, learning_rate=0.0001)
    assert "--init-from" not in train_command(h, stage2, resume=True)
    assert "--init-from" not in train_command(history(stage=1, loss=ramp(8, 6, 5)), root / "stage1")


# ---- 5. a trainer that holds the lock but has not logged run_start -------------------------------------


def test_live_lock_without_run_start_is_a_starting_trainer(tmp_path, capsys, sleeper):
    d = tmp_path / "results" / "stage1"
    d.mkdir(parents=True)
    write_lock(d, sleeper.pid, process_start_time(sleeper.pid))
    s = run_status(d)
    assert s.state == "running" and s.recommendation.code == "starting"
    assert s.recommendation.text.startswith(f"TRAINER STARTING: PID {sleeper.pid} holds the lock for ")
    assert "no step yet" in s.recommendation.text
    assert "ALL CLEAR" not in s.recommendation.text and s.exit_code == 0


def test_live_lock_taken_after_a_finished_run_is_a_starting_trainer(tmp_path, sleeper):
    d = write_run(tmp_path / "stage1", passed_stage1(end="completed", t0=1000.0))
    write_lock(d, sleeper.pid, process_start_time(sleeper.pid), created=5000.0)
    s = run_status(d)
    assert s.state == "running" and s.recommendation.code == "starting"
    write_lock(d, sleeper.pid, process_start_time(sleeper.pid), created=500.0)  # the old run's own lock
    assert run_status(d).recommendation.code == "completed"


# ---- 6. small ones ------------------------------------------------------------------------------------


def test_status_on_an_empty_stage_folder_names_that_stage(tmp_path, capsys):
    root = tmp_path / "results"
    (root / "stage2").mkdir(parents=True)
    (root / "stage2" / "best_model.pt").write_bytes(b"w")
    (root / "stage3").mkdir()
    code, out, _ = run_cli(capsys, "status", root / "stage3")
    assert code == 0
    assert f"kssm train --stage 3 --output-dir {root / 'stage3'} --init-from {root / 'stage2' / 'best_model.pt'}" in out
    code, out, _ = run_cli(capsys, "status", root / "stage3", "--json")
    assert "--stage 3" in json.loads(out)["message"]


def test_status_of_a_lock_only_stage_folder_infers_the_stage_from_its_name(tmp_path, sleeper):
    d = tmp_path / "final"
    d.mkdir()
    write_lock(d, sleeper.pid, process_start_time(sleeper.pid))
    assert run_status(d).stage == 5


def test_unlock_of_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    code, out, err = run_cli(capsys, "unlock", tmp_path / "nonexistent")
    assert code == 2 and "no such folder" in err and "nothing to do" not in out


def test_clean_of_a_runs_root_names_a_stage_folder(tmp_path, capsys):
    root = tmp_path / "results"
    write_run(root / "stage1", passed_stage1(end="completed"))
    (root / "stage1" / "checkpoint_100.pt").write_bytes(b"x")
    code, _, err = run_cli(capsys, "clean", root, "--dry-run")
    assert code == 1 and f"kssm clean {root / 'stage1'}" in err
    assert (root / "stage1" / "checkpoint_100.pt").exists()


def test_foreign_lock_refusals_mention_force(tmp_path, capsys):
    d = write_run(tmp_path / "stage1", passed_stage1())
    write_lock(d, 12345, 1.0, host="other-host.example")
    code, _, err = run_cli(capsys, "unlock", d)
    assert code == 1 and f"kssm unlock --force {d}" in err and (d / LOCK_NAME).exists()
    s = run_status(d)
    assert s.recommendation.code == "foreign_lock" and f"kssm unlock --force {d}" in s.recommendation.text


def test_unlock_force_removes_a_foreign_lock_after_saying_what(tmp_path, capsys):
    write_lock(tmp_path, 12345, 1.0, host="other-host.example")
    raw = (tmp_path / LOCK_NAME).read_text()
    code, out, _ = run_cli(capsys, "unlock", "--force", tmp_path)
    assert code == 0 and not (tmp_path / LOCK_NAME).exists()
    first, last = out.strip().splitlines()
    assert first.startswith(f"removing {tmp_path / LOCK_NAME}: a {len(raw)}-byte file holding")
    assert "other-host.example" in first and last == f"removed {tmp_path / LOCK_NAME}"


def test_unlock_force_removes_an_unreadable_lock_but_not_what_a_symlink_points_to(tmp_path, capsys):
    (tmp_path / LOCK_NAME).mkdir()
    assert run_cli(capsys, "unlock", "--force", tmp_path)[0] == 0 and not (tmp_path / LOCK_NAME).exists()
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    (tmp_path / LOCK_NAME).symlink_to(target)
    code, out, _ = run_cli(capsys, "unlock", "--force", tmp_path)
    assert code == 0 and "a symlink to" in out and target.exists() and not (tmp_path / LOCK_NAME).is_symlink()


def test_unlock_force_still_refuses_a_live_lock_on_this_host(tmp_path, capsys, sleeper):
    write_lock(tmp_path, sleeper.pid, process_start_time(sleeper.pid))
    code, _, err = run_cli(capsys, "unlock", "--force", tmp_path)
    assert code == 1 and "refusing" in err and (tmp_path / LOCK_NAME).exists()


def test_unlock_force_keeps_a_non_empty_lock_directory(tmp_path, capsys):
    (tmp_path / LOCK_NAME).mkdir()
    (tmp_path / LOCK_NAME / "something").write_text("x")
    code, _, err = run_cli(capsys, "unlock", "--force", tmp_path)
    assert code == 1 and "cannot remove" in err and (tmp_path / LOCK_NAME / "something").exists()


def test_a_remedy_starts_from_the_weights_the_run_started_from(tmp_path):
    """QA: a rerun of a stage trained from some --init-from (not the previous stage's folder) keeps it."""
    weights = tmp_path / "elsewhere" / "best_model.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"w")
    h = history(loss=ramp(8, 6, 50), config={"init_from": str(weights), "learning_rate": 1e-3, "stage": 2})
    cmd = train_command(h, tmp_path / "stage2", learning_rate=1e-4)
    assert f"--init-from {weights}" in cmd and "--learning-rate 0.0001" in cmd
    missing = history(loss=ramp(8, 6, 50), config={"init_from": str(tmp_path / "gone.pt"), "stage": 2})
    assert "gone.pt" not in train_command(missing, tmp_path / "stage2", seed=2)  # a file no longer there


def test_a_final_failure_while_training_says_stop_not_nothing_to_do(tmp_path):
    """QA: a Failure the runbook has decided mid-stage (u at the clamp, an immediate kind) is not 'active'."""
    import os

    from kssm_core.runbook.judge import judge
    from kssm_core.runbook.probe import probe

    n = 200
    h = history(loss=ramp(8, 7, n), u=[10.0] * n, stage=2, max_steps=500, pid=os.getpid(), t0=time.time())
    facts = probe(tmp_path, h)
    s = judge(h, facts, run_dir=tmp_path, source="events")
    assert s.state == "running" and s.assessment.verdict.value == "failure" and not s.assessment.provisional
    assert s.recommendation.code == "failing" and "stop it" in s.recommendation.text and s.exit_code == 2
    assert s.headline is not None and s.headline[0] == "critical"


def test_status_of_a_plain_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "tr.out"
    f.write_text("x")
    assert main(["status", str(f)]) == 3 and "is a file" in capsys.readouterr().err
