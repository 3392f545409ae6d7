"""Tailing: incremental reads, held-back partial lines, bad lines, truncation, resumes, change-only posting."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from kssm_core.runfolder.lock import process_start_time
from kssm_tui.messages import RunChanged, StagesChanged
from kssm_core.runfolder.follower import RunFollower
from kssm_tui.entries import entry_for
from kssm_tui.tail import Monitor, monitor_loop
from kssm_tui.views import downsample
from runfolders import stage_path, write_run


def _append(path: Path, *records: dict, raw: str = "") -> None:
    with open(path, "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records) + raw)


def _step(s: int, loss: float = 5.0) -> dict:
    return {"event": "step", "t": 1.0 + s, "step": s, "loss": loss, "ce": loss, "R": 0.1, "u_val": 1.0}


def test_follower_reads_only_new_complete_lines(tmp_path):
    log = tmp_path / "events.jsonl"
    _append(log, {"event": "run_start", "t": 0, "start_step": 0, "max_steps": 10}, _step(1))
    f = RunFollower(tmp_path)
    assert f.poll() and f.history.last_step == 1
    assert not f.poll()  # nothing new: no change reported
    _append(log, raw=json.dumps(_step(2))[:15])  # a half-written line is held back
    assert not f.poll() and f.history.last_step == 1
    _append(log, raw=json.dumps(_step(2))[15:] + "\n" + "not json\n")
    assert f.poll() and f.history.last_step == 2
    assert f.reader.stats.bad_lines == 1


def test_follower_rebuilds_after_truncation_or_replacement(tmp_path):
    log = tmp_path / "events.jsonl"
    _append(log, *[_step(s) for s in range(1, 50)])
    f = RunFollower(tmp_path)
    f.poll()
    assert f.history.last_step == 49
    tmp = tmp_path / "new.jsonl"
    _append(tmp, _step(1, 9.0))
    os.replace(tmp, log)  # a replaced file: another inode, shorter
    assert f.poll()
    assert f.history.last_step == 1 and list(f.history.steps.steps) == [1] and f.reset_pending


def test_resume_replaces_orphaned_steps(tmp_path):
    log = tmp_path / "events.jsonl"
    _append(log, {"event": "run_start", "t": 0, "start_step": 0, "max_steps": 100}, *[_step(s, 5.0) for s in range(1, 31)])
    f = RunFollower(tmp_path)
    f.poll()
    _append(log, {"event": "run_start", "t": 99, "start_step": 20, "max_steps": 100}, _step(21, 1.0))
    f.poll()
    assert list(f.history.steps.steps)[-2:] == [20, 21] and f.history.steps.last("loss") == 1.0


def test_downsample_is_bounded_and_keeps_the_last_point():
    steps = list(range(100_000))
    values = [float(s) for s in steps]
    xs, ys = downsample(steps, values, limit=400)
    assert len(xs) <= 401 and xs[-1] == 99_999 and ys[-1] == 99_999.0
    nan = float("nan")
    assert downsample([1, 2, 3], [1.0, nan, 3.0]) == ([1, 3], [1.0, 3.0])


def test_entries_strip_control_sequences():
    kind, text = entry_for({"event": "sample", "step": 5, "text": "hi\x1b]52;c;ZXZpbA==\x07 \x1b[2J[bold]x"})
    assert kind == "sample" and "\x1b" not in text and "\x07" not in text and "[bold]x" in text
    assert entry_for({"event": "step", "step": 1}) is None and entry_for({"event": "heartbeat"}) is None


def test_monitor_posts_only_changes(tmp_path):
    root = tmp_path / "results"
    write_run(stage_path(root, 1), 1, 100)
    m = Monitor(root)
    m.selected = 1
    stages, view = m.tick()
    assert stages[1].state == "passed" and stages[2].state == "not started"
    assert view.state == "passed" and view.last_step == 100 and view.replace_log
    assert any(k == "run_end" for k, _ in view.new_entries)
    assert m.tick() == (None, None)  # idle: nothing to render
    _append(stage_path(root, 1) / "events.jsonl", {"event": "warning", "t": 1, "code": "disk_low", "message": "m"})
    stages, view = m.tick()
    assert view is not None and view.new_entries == [("warning", "disk_low: m")] and not view.replace_log
    m.selected = 2
    _, view = m.tick()
    assert view.run_dir == stage_path(root, 2) and view.state == "not started" and view.replace_log


def test_monitor_states_crashed_and_running(tmp_path):
    root = tmp_path / "results"
    write_run(stage_path(root, 1), 1, 100, end=None, stale_lock=True)
    d2 = write_run(stage_path(root, 2), 2, 500, end=None)
    pid = os.getpid()  # a live lock: this test process stands in for the trainer
    (d2 / "training.lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "start_time": process_start_time(pid), "created": 0}))
    write_run(stage_path(root, 3), 3, 1500, end="interrupted")
    stages, _ = Monitor(root).tick()
    assert stages[1].state == "crashed" and stages[1].lock_state == "stale"
    assert stages[2].state == "running" and stages[2].lock_pid == pid
    assert stages[3].state == "interrupted"


def test_monitor_loop_posts_and_stops_when_cancelled(tmp_path):
    root = tmp_path / "results"
    write_run(stage_path(root, 1), 1, 100)
    m = Monitor(root)
    m.selected = 1
    posted: list = []
    stop = threading.Event()
    t = threading.Thread(target=monitor_loop, args=(posted.append, m, 0.1, stop.is_set))
    t.start()
    time.sleep(0.5)
    stop.set()
    t.join(timeout=2)
    assert not t.is_alive()
    kinds = [type(p) for p in posted]
    assert kinds.count(StagesChanged) == 1 and kinds.count(RunChanged) == 1  # no repeats while idle


def test_long_log_is_previewed_from_its_ends_then_read_whole(tmp_path, monkeypatch):
    import kssm_core.runfolder.follower as follower
    import kssm_tui.tail as tail

    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tail, "PREVIEW_MIN_BYTES", 20_000)
    monkeypatch.setattr(follower, "PREVIEW_TAIL_BYTES", 8_000)
    monkeypatch.setattr(tail, "READ_SLICE_BYTES", 30_000)
    monkeypatch.setattr(tail, "CATCH_UP_BUDGET_S", 0.0)
    root = tmp_path / "results"
    write_run(stage_path(root, 1), 1, 2000, every=1)
    m = Monitor(root)
    m.selected = 1
    stages, view = m.tick()
    assert m.busy and view.state == "loading" and view.last_step == 2000  # the newest steps, at once
    assert view.matrix_rows and view.assessment.summary.startswith("PROVISIONAL")
    assert stages[1].state == "loading" and stages[1].verdict is None  # no verdict until the whole history is judged
    assert view.charts["loss"].series[0][1][0] < 100  # the head's steps are there too
    partial = 0
    while m.busy:
        _, view = m.tick()
        partial += 1
        assert view.last_step == 2000 or not m.busy  # the preview stays up while the rest is read
    assert partial > 1 and view.state == "passed" and view.replace_log
    assert len(m.follower(stage_path(root, 1)).history.steps) == 2000


def test_monitor_loop_survives_a_failing_tick(tmp_path):
    from kssm_tui.messages import WorkerTrouble

    class Flaky(Monitor):
        calls = 0

        def tick(self):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise PermissionError("results/stage1: permission denied")
            return super().tick()

    root = tmp_path / "results"
    write_run(stage_path(root, 1), 1, 100)
    m = Flaky(root)
    m.selected = 1
    posted: list = []
    stop = threading.Event()
    t = threading.Thread(target=monitor_loop, args=(posted.append, m, 0.05, stop.is_set))
    t.start()
    time.sleep(0.4)
    stop.set()
    t.join(timeout=2)
    assert isinstance(posted[0], WorkerTrouble) and "permission denied" in posted[0].text
    assert any(isinstance(p, RunChanged) for p in posted)  # it went on after the error


def test_a_quiet_live_run_is_judged_again_a_finished_one_is_not(tmp_path, monkeypatch):
    import kssm_tui.tail as tail

    monkeypatch.setattr(tail, "QUIET_REJUDGE_S", 0.2)
    root = tmp_path / "results"
    live = write_run(stage_path(root, 1), 1, 100, end=None)
    (live / "training.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                    "start_time": process_start_time(os.getpid())}))
    write_run(stage_path(root, 2), 2, 500)  # completed, no lock
    for stage, expect_again in ((1, True), (2, False)):
        m = Monitor(root)
        m.selected = stage
        assert m.tick()[1] is not None
        assert m.tick()[1] is None  # nothing new: nothing to redraw
        time.sleep(0.3)
        assert (m.tick()[1] is not None) is expect_again  # a frozen trainer writes nothing: judge it anyway


def test_a_malformed_value_in_an_event_does_not_stop_the_view(tmp_path):
    """kssm status ignores a malformed value; the cockpit must show the rest (and log the line with a '-')."""
    root = tmp_path / "results"
    d = write_run(stage_path(root, 1), 1, 100, extra=[{"event": "eval", "t": 2e9, "step": 100, "val_loss": "x",
                                                        "val_ppl": [1], "val_R": {"a": 1}}])
    m = Monitor(root)
    m.selected = 1
    _, view = m.tick()
    assert view is not None and view.status is not None and view.status.state == "completed"
    assert any(kind == "eval" and "val loss -, PPL -, R -" in text for kind, text in view.new_entries)
    assert d.exists()
