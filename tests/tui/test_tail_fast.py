"""The cockpit's follower reads step lines through the typed fast path and folds what the plain reader folds;
after a big catch-up the history cache is stored once the view is painted, not while it paints."""

from __future__ import annotations

import json
import threading
import time

from kssm_core.runfolder.history import RunHistory
from kssm_core.runfolder.runlog import EventLogReader
from kssm_tui.messages import RunChanged
from kssm_core.runfolder.follower import RunFollower, preview_history
from kssm_tui.entries import entries_for
from kssm_tui.tail import Monitor, monitor_loop
from runfolders import stage_path, write_run


def plain_fold(path, slice_bytes: int) -> RunHistory:
    reader, h = EventLogReader(path), RunHistory()
    while True:
        before = reader.offset
        h.extend(reader.read_new(max_bytes=slice_bytes))
        if reader.offset == before:
            return h


def state(h: RunHistory) -> str:
    return json.dumps(h.to_state(), sort_keys=True, default=str)


def compact(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":")) + "\n"  # as kssm_core.runfolder.events writes them


def test_the_follower_folds_what_the_plain_reader_folds(tmp_path, monkeypatch):
    import kssm_core.runfolder.steplines as steplines

    d = tmp_path / "run"
    d.mkdir()
    with open(d / "events.jsonl", "w") as fh:
        fh.write(compact({"event": "run_start", "t": 0.0, "stage": 3, "start_step": 0, "max_steps": 4000}))
        for s in range(1, 3001):
            fh.write(compact({"event": "step", "t": float(s), "step": s, "loss": 8 - s / 1000, "R": 0.3, "u_val": 1.0}))
            fh.write(compact({"event": "heartbeat", "t": float(s), "step": s}))
            if s % 250 == 0:
                fh.write(compact({"event": "eval", "t": float(s), "step": s, "val_loss": 5.0, "val_ppl": 150.0}))
        fh.write(compact({"event": "run_start", "t": 9e9, "start_step": 2500, "max_steps": 4000}))  # a resume
        for s in range(2501, 2700):
            fh.write(compact({"event": "step", "t": 9e9 + s, "step": s, "loss": None if s % 7 == 0 else 4.0,
                              "R": "0.4" if s == 2600 else 0.4}))
    decoded = []
    real = steplines.decode_steps
    monkeypatch.setattr(steplines, "decode_steps", lambda raws: decoded.append(len(raws)) or real(raws))
    f = RunFollower(d)
    while f.poll(64 * 1024) and f.behind:
        pass
    assert sum(decoded) > 2000  # most steps went the typed way
    assert state(f.history) == state(plain_fold(d / "events.jsonl", 64 * 1024))
    assert f.history.malformed_values == 1 and f.history.last_step == 2699
    assert [e for e in entries_for(f.take_records()) if e[0] == "eval"]  # the other events still reach the log panel


def test_the_preview_reads_both_ends(tmp_path, monkeypatch):
    import kssm_core.runfolder.follower as follower

    monkeypatch.setattr(follower, "PREVIEW_HEAD_BYTES", 4_000)
    monkeypatch.setattr(follower, "PREVIEW_TAIL_BYTES", 8_000)
    d = stage_path(tmp_path / "results", 1)
    write_run(d, 1, 3000, every=1)
    h = preview_history(d / "events.jsonl")
    assert h.run_start is not None and h.last_step == 3000
    assert h.steps.steps[0] == 1 and len(h.steps) < 3000  # the head and the newest steps, not the middle


def test_the_cache_is_stored_once_the_view_is_painted(tmp_path, monkeypatch):
    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))
    import kssm_tui.tail as tail

    monkeypatch.setattr(tail, "CACHE_AFTER_BYTES", 1)  # every catch-up counts as big
    root = tmp_path / "results"
    write_run(stage_path(root, 1), 1, 200)
    m = Monitor(root)
    m.selected = 1
    order: list[str] = []
    saves = m.after_post

    def after_post() -> None:
        if m.save_due():
            order.append("save")
        saves()

    m.after_post = after_post

    def post(msg) -> None:
        if isinstance(msg, RunChanged) and "posted" not in order:
            order.append("posted")
            threading.Timer(0.3, lambda: (order.append("painted"), m.painted.set())).start()

    stop = threading.Event()
    t = threading.Thread(target=monitor_loop, args=(post, m, 0.1, stop.is_set))
    t.start()
    time.sleep(0.8)
    stop.set()
    t.join(timeout=3)
    assert not t.is_alive()
    assert order[:3] == ["posted", "painted", "save"]
    assert list((tmp_path / "cache").glob("*.json"))  # and it was stored


def test_picking_another_run_cuts_a_long_catch_up_short(tmp_path, monkeypatch):
    import kssm_tui.tail as tail

    monkeypatch.setattr(tail, "PREVIEW_MIN_BYTES", 1 << 40)  # no preview: straight to the catch-up
    monkeypatch.setattr(tail, "READ_SLICE_BYTES", 20_000)
    monkeypatch.setattr(tail, "CATCH_UP_BUDGET_S", 60.0)
    root = tmp_path / "results"
    write_run(stage_path(root, 1), 1, 3000, every=1)
    write_run(stage_path(root, 2), 2, 10)
    m = Monitor(root)
    m.selected = 1
    polls = 0
    real_poll = RunFollower.poll

    def poll(self, max_bytes=None):
        nonlocal polls
        polls += 1
        if polls == 3:
            m.selected = 2  # the user picks Stage 2 while Stage 1's log is read
        return real_poll(self, max_bytes)

    monkeypatch.setattr(RunFollower, "poll", poll)
    _, view = m.tick()
    assert polls == 3 and m.busy and view.state == "loading"
    while m.busy:
        _, view = m.tick()
    assert view.run_dir == stage_path(root, 2)
