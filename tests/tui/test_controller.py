"""The trainer controller: detached spawn, exit classification, reaping once, SIGTERM through the lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from kssm_core.runfolder.lock import process_start_time
from kssm_tui import controller as ctl

# A stand-in trainer: reports its session and stdin, exits 130 on SIGTERM like the real one.
FAKE = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))
print("sid", os.getsid(0), "pid", os.getpid(), "stdin", repr(sys.stdin.read()), flush=True)
print("oops", file=sys.stderr, flush=True)
time.sleep(float(sys.argv[1]))
sys.exit(int(sys.argv[2]))
"""


def _spawn(c: ctl.TrainerController, run_dir: Path, sleep: float = 30, code: int = 0):
    return c.spawn([sys.executable, "-c", FAKE, str(sleep), str(code)], run_dir)


def _wait_exit(c: ctl.TrainerController, timeout: float = 10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = c.poll()
        if done is not None:
            return done
        time.sleep(0.02)
    raise AssertionError("child did not exit")


def _wait_output(path: Path, needle: str, timeout: float = 10) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never appeared in {path}")


@pytest.mark.parametrize("rc,kind", [(0, "completed"), (130, "interrupted"), (2, "refused"), (1, "failed"),
                                     (3, "crashed"), (-9, "killed"), (-15, "killed")])
def test_classify_exit(rc, kind):
    assert ctl.classify_exit(rc) == kind


def test_describe_kill_names_the_signal():
    assert "SIGKILL" in ctl.describe_exit(-9) and "out of memory" in ctl.describe_exit(-9)
    assert "exit 3" in ctl.describe_exit(3)
    assert "failed (exit 1)" in ctl.describe_exit(1) and "resume" not in ctl.describe_exit(1)


def test_stage_command_chains_best_model_and_extra_args(tmp_path, monkeypatch):
    root = tmp_path / "results"
    monkeypatch.setenv(ctl.EXTRA_ARGS_ENV, "--max-steps 7 --log-interval 1")
    one = ctl.stage_command(root, 1)
    assert one[0] == sys.executable and one[1:6] == ["-m", "kssm_core", "train", "--stage", "1"]
    assert "--init-from" not in one and one[-4:] == ["--max-steps", "7", "--log-interval", "1"]
    assert "--init-from" not in ctl.stage_command(root, 2)  # no best model yet: a fresh start
    (root / "stage1").mkdir(parents=True)
    (root / "stage1" / "best_model.pt").write_bytes(b"x")
    two = ctl.stage_command(root, 2)
    assert two[two.index("--init-from") + 1] == str(root / "stage1" / "best_model.pt")
    res = ctl.resume_command(root / "stage1", 100)
    assert "--resume" in res and res[res.index("--max-steps") + 1] == "100"


def test_spawn_is_detached_and_reaped_once(tmp_path):
    c = ctl.TrainerController(tmp_path)
    run = tmp_path / "results" / "stage1"
    child = _spawn(c, run, sleep=30)
    try:
        text = _wait_output(run / ctl.TRAINER_OUT, "oops")
        pid = child.proc.pid
        assert f"sid {pid} pid {pid}" in text  # its own session: a lost terminal's SIGHUP never reaches it
        assert "stdin ''" in text  # stdin is /dev/null
        assert c.poll() is None and c.child_alive()
        os.kill(pid, signal.SIGKILL)
        spawned, rc = _wait_exit(c)
        assert rc == -signal.SIGKILL and ctl.classify_exit(rc) == "killed"
        assert c.poll() is None and not c.child_alive()  # reported once
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def test_crash_exit_code_and_output_tail(tmp_path):
    c = ctl.TrainerController(tmp_path)
    _spawn(c, tmp_path / "run", sleep=0, code=3)
    spawned, rc = _wait_exit(c)
    assert ctl.classify_exit(rc) == "crashed"
    assert "oops" in ctl.tail_text(spawned.run_dir / ctl.TRAINER_OUT)


def test_stop_signals_the_lock_holder_which_exits_130(tmp_path):
    c = ctl.TrainerController(tmp_path)
    run = tmp_path / "run"
    child = _spawn(c, run, sleep=30)
    try:
        _wait_output(run / ctl.TRAINER_OUT, "oops")
        pid = child.proc.pid
        (run / "training.lock").write_text(json.dumps(
            {"pid": pid, "host": socket.gethostname(), "start_time": process_start_time(pid), "created": 0}))
        c.child = None  # as if another cockpit had started it: found only through the lock
        assert c.trainer_pid(run) == pid
        assert "SIGTERM" in c.stop(run)
        assert child.proc.wait(timeout=10) == 130
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def test_stop_without_trainer_and_stale_lock(tmp_path):
    from runfolders import dead_pid

    c = ctl.TrainerController(tmp_path)
    assert "nothing to stop" in c.stop(tmp_path)
    (tmp_path / "training.lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert c.trainer_pid(tmp_path) is None and "nothing to stop" in c.stop(tmp_path)


def test_tail_text_last_lines_and_missing(tmp_path):
    p = tmp_path / "out"
    p.write_text("".join(f"line {i}\n" for i in range(100)))
    assert ctl.tail_text(p, max_lines=3) == "line 97\nline 98\nline 99"
    assert ctl.tail_text(tmp_path / "missing") == ""


def test_stop_sends_nothing_when_the_folder_now_holds_another_trainer(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    from kssm_core.runfolder.lock import process_start_time

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "training.lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                                       "start_time": process_start_time(other.pid)}))
        c = ctl.TrainerController(tmp_path)
        msg = c.stop(run, expected_pid=other.pid + 100000)  # the user confirmed another PID
        assert "not stopping" in msg and other.poll() is None  # still running: no signal sent
        assert "sent SIGTERM" in c.stop(run, expected_pid=other.pid)
        assert other.wait(10) == -15
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
