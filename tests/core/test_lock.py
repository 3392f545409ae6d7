"""training.lock: atomic acquire, live / stale (dead PID, reused PID) / foreign, and `kssm unlock`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from kssm_core.cli import main
from kssm_core.lock import LOCK_NAME, LockHeld, RunLock, lock_state, process_start_time, read_lock, unlock


def dead_pid() -> int:
    """A PID that certainly belongs to no process now (a child that has exited and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(folder, pid, start_time=None, host=None):
    body = {"pid": pid, "host": host or socket.gethostname(), "start_time": start_time, "created": time.time()}
    (folder / LOCK_NAME).write_text(json.dumps(body))


@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def test_acquire_writes_pid_host_start_time_and_release_removes_it(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.acquire() is None
    info = read_lock(tmp_path)
    assert info.pid == os.getpid() and info.host == socket.gethostname()
    assert info.start_time == pytest.approx(process_start_time(os.getpid()))
    assert lock_state(info)[0] == "live"
    assert not [p for p in tmp_path.iterdir() if p.name != LOCK_NAME], "temp file left behind"
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_live_lock_refuses_a_second_owner_and_names_the_pid(tmp_path, sleeper):
    write_lock(tmp_path, sleeper.pid, process_start_time(sleeper.pid))
    with pytest.raises(LockHeld, match=f"live PID {sleeper.pid}"):
        RunLock(tmp_path).acquire()
    assert read_lock(tmp_path).pid == sleeper.pid  # untouched


def test_dead_pid_is_stale_and_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid, 1.0)
    state, reason = lock_state(read_lock(tmp_path))
    assert state == "stale" and "not running" in reason
    lock = RunLock(tmp_path)
    taken = lock.acquire()
    assert taken is not None and taken.pid == pid
    assert read_lock(tmp_path).pid == os.getpid()
    lock.release()


def test_reused_pid_with_another_start_time_is_stale(tmp_path, sleeper):
    # The PID is alive, but the process behind it started at another time: the PID was reused.
    write_lock(tmp_path, sleeper.pid, process_start_time(sleeper.pid) - 3600)
    state, reason = lock_state(read_lock(tmp_path))
    assert state == "stale" and "reused" in reason
    # the same PID with its true start time is live
    write_lock(tmp_path, sleeper.pid, process_start_time(sleeper.pid))
    assert lock_state(read_lock(tmp_path))[0] == "live"


def test_lock_from_another_host_is_never_stale(tmp_path):
    write_lock(tmp_path, dead_pid(), 1.0, host="some-other-host.example")
    assert lock_state(read_lock(tmp_path))[0] == "foreign"
    with pytest.raises(LockHeld):
        RunLock(tmp_path).acquire()
    with pytest.raises(LockHeld):
        unlock(tmp_path)
    assert (tmp_path / LOCK_NAME).exists()


def test_legacy_bare_pid_lock_is_read(tmp_path, sleeper):
    (tmp_path / LOCK_NAME).write_text(f"{sleeper.pid}\n")
    info = read_lock(tmp_path)
    assert info.pid == sleeper.pid and info.start_time is None
    assert lock_state(info)[0] == "live"
    (tmp_path / LOCK_NAME).write_text(f"{dead_pid()}\n")
    assert lock_state(read_lock(tmp_path))[0] == "stale"


def test_release_does_not_remove_someone_elses_lock(tmp_path, sleeper):
    lock = RunLock(tmp_path)
    lock.acquire()
    write_lock(tmp_path, sleeper.pid, process_start_time(sleeper.pid))  # another trainer took over
    lock.release()
    assert read_lock(tmp_path).pid == sleeper.pid


def test_kssm_unlock_removes_a_stale_lock(tmp_path, capsys):
    write_lock(tmp_path, dead_pid(), 1.0)
    assert main(["unlock", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "removed stale lock" in out
    assert not (tmp_path / LOCK_NAME).exists()


def test_kssm_unlock_refuses_a_live_lock(tmp_path, sleeper, capsys):
    write_lock(tmp_path, sleeper.pid, process_start_time(sleeper.pid))
    assert main(["unlock", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(sleeper.pid) in err and "refusing" in err
    assert (tmp_path / LOCK_NAME).exists()


def test_kssm_unlock_without_a_lock_says_so(tmp_path, capsys):
    assert main(["unlock", str(tmp_path)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_unlock_refuses_a_symlinked_lock(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "start_time": 1.0}))
    (tmp_path / LOCK_NAME).symlink_to(target)
    with pytest.raises(LockHeld, match="symlink"):
        unlock(tmp_path)
    assert target.exists()


def _race_for_the_lock(folder: str, go_at: float, out: str) -> None:
    """One contender (a forked process): wait for the common start, try to take the stale lock, report."""
    import kssm_core.lock as lk

    judged = lk.lock_state

    def slow_lock_state(info):  # widen the window between judging the lock and taking it over
        verdict = judged(info)
        time.sleep(0.3)
        return verdict

    lk.lock_state = slow_lock_state
    while time.time() < go_at:
        time.sleep(0.001)
    try:
        lock = lk.RunLock(folder)
        lock.acquire()
        result = "won"
        time.sleep(1.0)  # hold it while the others finish their attempts
    except lk.LockHeld:
        result = "refused"
    with open(out, "w") as fh:
        fh.write(f"{result} {os.getpid()}")


def test_only_one_of_many_simultaneous_trainers_takes_over_a_stale_lock(tmp_path):
    import multiprocessing

    write_lock(tmp_path, dead_pid(), 1.0)
    ctx = multiprocessing.get_context("fork")
    go_at = time.time() + 0.5
    outs = [tmp_path / f"result{i}" for i in range(5)]
    procs = [ctx.Process(target=_race_for_the_lock, args=(str(tmp_path), go_at, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    results = [o.read_text().split() for o in outs]
    winners = [pid for r, pid in results if r == "won"]
    assert len(winners) == 1, results
    assert sorted(r for r, _ in results) == ["refused"] * 4 + ["won"]


def test_unlock_does_not_remove_a_lock_taken_after_it_was_judged(tmp_path, sleeper, monkeypatch):
    import kssm_core.lock as lk

    write_lock(tmp_path, dead_pid(), 1.0)
    judged = lk.lock_state

    def judge_then_a_trainer_takes_over(info):
        verdict = judged(info)
        write_lock(tmp_path, sleeper.pid, process_start_time(sleeper.pid))  # a new trainer, in between
        return verdict

    monkeypatch.setattr(lk, "lock_state", judge_then_a_trainer_takes_over)
    with pytest.raises(LockHeld, match="changed meanwhile"):
        unlock(tmp_path)
    assert read_lock(tmp_path).pid == sleeper.pid  # the new trainer's lock survives
