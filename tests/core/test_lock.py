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
from kssm_core.runfolder.lock import LOCK_NAME, LockHeld, RunLock, lock_state, process_start_time, read_lock, unlock


def dead_pid() -> int:
    """A PID that certainly belongs to no process now (a child that has exited and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(folder, pid, start_time=None, host=None):
    body = {"pid": pid, "host": host or socket.gethostname(), "start_time": start_time, "created": time.time()}
    (folder / LOCK_NAME).write_text(json.dumps(body))


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
    import kssm_core.runfolder.lock as lk

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
    import kssm_core.runfolder.lock as lk

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


# ---- a training.lock that is not a small regular file: never raises, never blocks, never "stale" ----------------
def _assert_unreadable(folder, why):
    info = read_lock(folder)
    assert info is not None and info.unreadable is not None and why in info.unreadable
    state, reason = lock_state(info)
    assert state == "foreign" and reason == f"{LOCK_NAME} unreadable ({info.unreadable}): check it by hand"
    with pytest.raises(LockHeld, match="unreadable"):
        RunLock(folder).acquire()
    with pytest.raises(LockHeld, match="unreadable"):
        unlock(folder)


def test_a_directory_named_training_lock_is_unreadable_not_stale(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()
    _assert_unreadable(tmp_path, "directory")
    assert (tmp_path / LOCK_NAME).is_dir()


def test_a_fifo_named_training_lock_does_not_block(tmp_path):
    import threading

    os.mkfifo(tmp_path / LOCK_NAME)
    box = {}
    reader = threading.Thread(target=lambda: box.setdefault("info", read_lock(tmp_path)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock the stuck reader (open a writer) so the test process can exit
        os.close(os.open(tmp_path / LOCK_NAME, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_lock blocked on a FIFO")
    assert box["info"].unreadable == "not a regular file"
    _assert_unreadable(tmp_path, "not a regular file")
    assert (tmp_path / LOCK_NAME).exists()


def test_a_symlinked_lock_is_not_followed_even_to_a_valid_stale_lock(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "start_time": 1.0}))
    (tmp_path / LOCK_NAME).symlink_to(target)
    _assert_unreadable(tmp_path, "symlink")
    assert (tmp_path / LOCK_NAME).is_symlink() and target.exists()


def test_an_unreadable_lock_file_is_reported_not_raised(tmp_path, monkeypatch):
    import errno

    import kssm_core.runfolder.lock as lk

    write_lock(tmp_path, dead_pid(), 1.0)  # stale if it could be read: must not be taken over unread
    real_open = os.open

    def no_permission(path, flags, *args):
        if os.fspath(path) == os.fspath(tmp_path / LOCK_NAME) and not flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, *args)

    with monkeypatch.context() as m:
        m.setattr(lk.os, "open", no_permission)  # as root, chmod 000 would not stop the read
        _assert_unreadable(tmp_path, os.strerror(errno.EACCES))
    assert read_lock(tmp_path).unreadable is None  # the file itself is untouched


def test_a_huge_lock_file_is_unreadable(tmp_path):
    (tmp_path / LOCK_NAME).write_bytes(b"1" * (65 * 1024))
    _assert_unreadable(tmp_path, "bytes")


def test_lockinfo_positional_constructor_still_works():
    from kssm_core.runfolder.lock import LockInfo

    info = LockInfo(123, None, None, None, "123")
    assert info.unreadable is None and info.mtime is None


# ---- PID reuse for locks without a start time: judged by the lock file's mtime -----------------------------------
@pytest.mark.parametrize("body", ["bare", "json-null-start"])
def test_lock_without_start_time_whose_pid_started_after_it_was_written_is_stale(tmp_path, body):
    lock_path = tmp_path / LOCK_NAME
    lock_path.write_text("placeholder")
    written_at = lock_path.stat().st_mtime
    # > START_TIME_TOLERANCE_S + 1 s: psutil's create_time may read up to 1 s early (boot time in whole seconds)
    time.sleep(2.5)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if body == "bare":
            lock_path.write_text(f"{child.pid}\n")
        else:
            write_lock(tmp_path, child.pid, None)
        os.utime(lock_path, (written_at, written_at))  # its content names the child; its mtime is the write
        info = read_lock(tmp_path)
        assert info.pid == child.pid and info.start_time is None and info.mtime == pytest.approx(written_at)
        state, reason = lock_state(info)
        assert state == "stale", reason
        assert reason == f"PID {child.pid} was reused by another process (it started after the lock was written)"
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("body", ["bare", "json-null-start"])
def test_lock_without_start_time_whose_pid_started_before_it_was_written_is_live(tmp_path, sleeper, body):
    # the sleeper started just before the lock is written (the tightest case: a trainer writes its lock at start)
    if body == "bare":
        (tmp_path / LOCK_NAME).write_text(f"{sleeper.pid}\n")
    else:
        write_lock(tmp_path, sleeper.pid, None)
    assert lock_state(read_lock(tmp_path)) == ("live", f"held by live PID {sleeper.pid}")
    with pytest.raises(LockHeld, match=f"live PID {sleeper.pid}"):
        RunLock(tmp_path).acquire()
