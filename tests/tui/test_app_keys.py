"""Every key path of the cockpit, driven with Pilot on prepared run folders (no real training here)."""

from __future__ import annotations

import asyncio
import functools
import html
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from textual.widgets import Button

from kssm_core.runfolder.lock import process_start_time
from kssm_tui import controller as ctl
from kssm_tui.app import KEYS, KssmApp
from kssm_tui.dialogs.clean import CleanDialog
from kssm_tui.dialogs.confirm import ConfirmDialog
from kssm_tui.screens.help import HelpScreen
from runfolders import crashed, failed, healthy, stage_path, write_run

SIZE = (100, 34)


def sync(fn):
    """Run an async Pilot test with asyncio.run (no async pytest plugin needed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def make_app(root: Path, **kw) -> tuple[KssmApp, list]:
    """The App with spawning recorded (a harmless child stands in for the trainer)."""
    app = KssmApp(root, watch=False, tail_interval=0.1, **kw)
    spawned: list = []

    def fake_spawn(command, run_dir):
        spawned.append((command, Path(run_dir)))
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        app.controller.child = ctl.Spawned(proc, Path(run_dir), command)
        return app.controller.child

    app.controller.spawn = fake_spawn
    return app, spawned


async def until(pilot, cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not met in time")


async def ready(pilot) -> None:
    await until(pilot, lambda: pilot.app.stages and pilot.app.view is not None)


def live_lock(run_dir: Path, pid: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "training.lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "start_time": process_start_time(pid), "created": 0}))


def notes(app) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


@sync
async def test_n_on_a_fresh_machine_starts_stage_1(runs):
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("n")
        await until(pilot, lambda: spawned)
    cmd, run_dir = spawned[0]
    assert cmd[0] == sys.executable and cmd[cmd.index("--stage") + 1] == "1" and "--init-from" not in cmd
    assert run_dir == runs / "stage1"


@sync
async def test_a_stage_that_failed_to_start_shows_why_and_n_retries_it(runs):
    d = stage_path(runs, 1)
    d.mkdir(parents=True)
    (d / "events.jsonl").write_text(json.dumps(  # what the trainer writes when it cannot start
        {"event": "run_end", "t": 1e9, "status": "failed", "reason": "corpus not found: /gone.txt",
         "advice": "check --corpus", "step": 0}) + "\n")
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.stages[1].state == "failed"
        assert "could not start: corpus not found: /gone.txt; check --corpus" in app.view.state_reason
        await pilot.press("n")
        await until(pilot, lambda: spawned)
        assert not isinstance(app.screen, ConfirmDialog)
    cmd, run_dir = spawned[0]
    assert cmd[cmd.index("--stage") + 1] == "1" and run_dir == runs / "stage1"


@sync
async def test_n_after_a_pass_starts_the_next_stage_from_its_best_model(runs):
    healthy(runs)
    (stage_path(runs, 2) / "best_model.pt").write_bytes(b"weights")
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.selected == 2 and app.stages[2].state == "passed"
        await pilot.press("n")
        await until(pilot, lambda: spawned)
        assert not isinstance(app.screen, ConfirmDialog)  # a pass needs no confirmation
    cmd, run_dir = spawned[0]
    assert cmd[cmd.index("--stage") + 1] == "3" and run_dir == runs / "stage3"
    assert cmd[cmd.index("--init-from") + 1] == str(stage_path(runs, 2) / "best_model.pt")


@sync
async def test_n_after_a_failure_asks_and_names_the_failed_row(runs):
    failed(runs)
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        dialog = app.screen
        assert any("Val PPL" in line and "2600" in line for line in dialog.lines)
        assert app.focused is dialog.query_one("#cancel", Button)  # destructive: Cancel has the focus
        await pilot.press("n")  # keys of the dashboard do nothing while the dialog is open
        await pilot.press("enter")  # Enter presses the focused Cancel
        await until(pilot, lambda: not isinstance(app.screen, ConfirmDialog))
        assert spawned == []
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.click("#confirm")
        await until(pilot, lambda: spawned)
    assert spawned[0][0][spawned[0][0].index("--stage") + 1] == "3"


@sync
async def test_r_after_a_crash_clears_the_stale_lock_and_resumes(runs):
    crashed(runs)
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.view.state == "crashed" and app.view.lock_state == "stale"
        assert "RuntimeError: boom" in app.view.trainer_out_tail
        await pilot.press("r")
        await until(pilot, lambda: spawned)
        assert not isinstance(app.screen, ConfirmDialog)  # provably stale: no second prompt
    cmd, run_dir = spawned[0]
    assert not (stage_path(runs, 1) / "training.lock").exists()
    assert run_dir == stage_path(runs, 1)
    assert "--resume" in cmd and cmd[cmd.index("--output-dir") + 1] == str(run_dir)
    assert cmd[cmd.index("--max-steps") + 1] == "100"


@sync
async def test_r_and_n_refuse_while_a_trainer_is_live(runs):
    d = write_run(stage_path(runs, 1), 1, 100, end=None)
    live_lock(d, os.getpid())
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.view.state == "running"
        await pilot.press("r", "n")
        await pilot.pause(0.2)
        assert spawned == [] and "not resuming" in notes(app) and "already running" in notes(app)
    assert (d / "training.lock").exists()


@sync
async def test_s_asks_then_sigterms_the_trainer(runs):
    code = "import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(130)); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.3)  # let it install its handler
        d = write_run(stage_path(runs, 1), 1, 100, end=None)
        live_lock(d, child.pid)
        app, _ = make_app(runs)
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            assert app.focused.id == "cancel"
            await pilot.press("escape")
            await pilot.pause(0.2)
            assert child.poll() is None  # cancelled: still running
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.click("#confirm")
            assert child.wait(timeout=10) == 130
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@sync
async def test_u_refuses_a_live_lock_and_clears_a_stale_one(runs):
    crashed(runs)
    d2 = write_run(stage_path(runs, 2), 2, 500, end=None)
    live_lock(d2, os.getpid())
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("2")
        await until(pilot, lambda: app.view.run_dir == d2)
        await pilot.press("u")
        await pilot.pause(0.1)
        assert (d2 / "training.lock").exists() and "refusing" in notes(app)
        await pilot.press("1")
        await until(pilot, lambda: app.view.run_dir == stage_path(runs, 1))
        await pilot.press("u")
        await until(pilot, lambda: not (stage_path(runs, 1) / "training.lock").exists())
        assert "removed stale lock" in notes(app)


@sync
async def test_c_lists_exactly_what_it_frees_with_cancel_focused(runs):
    d = write_run(stage_path(runs, 1), 1, 100)
    for step in (10, 20, 30):
        torch.save({"format": "kssm-checkpoint/1", "model_state": {}, "step": step, "pad": torch.zeros(step * 10)},
                   d / f"checkpoint_{step}.pt")  # kssm clean deletes only checkpoints with our format key
    (d / "best_model.pt").write_bytes(b"best")
    sizes = {n: (d / n).stat().st_size for n in ("checkpoint_10.pt", "checkpoint_20.pt")}
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CleanDialog))
        dialog = app.screen
        deletes = [line for line in dialog.lines if line.startswith("delete")]
        assert sorted(line.split()[1] for line in deletes) == sorted(sizes)
        assert any(f"{sum(sizes.values()) / 1e6:.1f} MB" in line for line in dialog.lines if line.startswith("frees"))
        assert any("checkpoint_30.pt" in line and line.startswith("keep") for line in dialog.lines)
        assert app.focused.id == "cancel"
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, CleanDialog))
        assert all((d / n).exists() for n in sizes)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CleanDialog))
        await pilot.click("#confirm")
        await until(pilot, lambda: not (d / "checkpoint_10.pt").exists())
    assert not (d / "checkpoint_20.pt").exists()
    assert (d / "checkpoint_30.pt").exists() and (d / "best_model.pt").exists()


@sync
async def test_l_m_toggle_and_1_to_5_select(runs):
    healthy(runs)
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("l")
        assert app.log_y and "log:on" in app.dash.query_one("#title").render().plain
        await pilot.press("m")
        assert app.smoothing
        await pilot.press("l", "m")
        assert not app.log_y and not app.smoothing
        for n in (1, 3, 5, 2):
            await pilot.press(str(n))
            await until(pilot, lambda: app.view.run_dir == stage_path(runs, n))
        assert app.view.state == "passed"


@sync
async def test_m_smooths_one_run_as_the_overlay_does_with_the_raw_series_faint(runs):
    """One run, nothing marked: `m` draws TensorBoard's debiased EMA over every logged point (2000 here, the
    chart's raw series is thinned to about 400), thinned as the overlay's, and the raw series stays drawn."""
    import numpy as np

    from kssm_core.reports.overlay import DEFAULT_SMOOTHING, bucket_mean, debiased_ema
    from kssm_tui.views import MAX_POINTS

    d = write_run(stage_path(runs, 1), 1, 2000, every=1)  # R wiggles with sin(step): the EMA visibly changes it
    logged = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines()]
    steps = np.array([e["step"] for e in logged if e["event"] == "step"], dtype=float)
    r = np.array([e["R"] for e in logged if e["event"] == "step"])
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        chart = app.dash.query_one("#chart-R")
        raw_only = chart._prepare(200)[0]  # noqa: SLF001 - what _build draws
        assert [p[3].kind for p in raw_only] == ["main"]
        await pilot.press("m")
        await until(pilot, lambda: chart._pre_mode and chart._version and app.view.charts["R"].smoothed)
        (sx, sy), = app.view.charts["R"].smoothed
        want_x, want_y = bucket_mean(steps, debiased_ema(r, DEFAULT_SMOOTHING), 2 * MAX_POINTS)
        np.testing.assert_allclose(sx, want_x)
        np.testing.assert_allclose(sy, want_y, rtol=1e-12)  # of every point, not of the ~400 handed to the chart
        prepared = chart._prepare(1000)[0]  # noqa: SLF001 - wide: the raw points are not thinned further
        kinds = [p[3].kind for p in prepared]
        assert kinds == ["raw", "main"]
        (raw,) = [p for p in prepared if p[3].kind == "raw"]
        _name, xs, ys = app.view.charts["R"].series[0]
        assert len(xs) <= MAX_POINTS + 1 and raw[2].tolist() == pytest.approx(ys)  # the raw points, faint
        head = chart.render_plain(120, 20).plain.splitlines()[0]
        assert "(EMA 0.6, raw" in head
        await pilot.press("m")
        await until(pilot, lambda: not app.smoothing and not chart._pre_mode)  # noqa: SLF001
        assert [p[3].kind for p in chart._prepare(200)[0]] == ["main"]  # noqa: SLF001


@sync
async def test_question_mark_lists_every_key(runs):
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert [k for k, _, _ in app.screen.keys] == [k.key for k in KEYS]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))


@sync
async def test_q_quits_and_says_the_trainer_keeps_running(runs):
    d = write_run(stage_path(runs, 1), 1, 100, end=None)
    live_lock(d, os.getpid())
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert "keeps running" in app.quit_message() and str(os.getpid()) in app.quit_message()
        await pilot.press("q")
        await pilot.pause(0.2)
    assert not app.is_running
    assert (d / "training.lock").exists()


@sync
async def test_readonly_blocks_every_mutation(runs):
    crashed(runs)
    app, spawned = make_app(runs, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("n", "r", "u", "c", "s")
        await pilot.pause(0.3)
        assert spawned == [] and app.screen is app.dash
        assert "READ-ONLY" in app.dash.query_one("#title").render().plain
        assert "'r' would change the run, so it is off" in notes(app)  # told, not silently ignored
        await pilot.press("l")  # viewing keys still work
        assert app.log_y
    assert (stage_path(runs, 1) / "training.lock").exists()


@sync
async def test_reaped_child_exit_is_reported(runs):
    app = KssmApp(runs, watch=False, tail_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.controller.spawn([sys.executable, "-c", "import sys; print('bad thing'); sys.exit(3)"], runs / "stage1")
        await until(pilot, lambda: "crashed (exit 3)" in notes(app), timeout=8)
        assert app.controller.child is None


@sync
async def test_hostile_strings_render_literally(runs):
    hostile = ["[bold]x", "[/", "[TODO]", "[@click=app.quit]x[/]", "\x1b]52;c;ZXZpbA==\x07osc", "\x1b[2Jcsi"]
    write_run(stage_path(runs, 1), 1, 100, samples=hostile)
    app, _ = make_app(runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.pause(0.3)
        svg = html.unescape(app.export_screenshot()).replace("\xa0", " ")
        assert app.is_running
    assert "[@click=app.quit]x[/]" in svg and "[TODO]" in svg and "[bold]x" in svg
    assert "osc" in svg and "csi" in svg and "52;c" not in svg and "\x1b" not in svg


@sync
async def test_e_starts_the_evaluation_detached(runs):
    d = write_run(stage_path(runs, 1), 1, 100)
    app, _ = make_app(runs)
    launched: list = []
    gate = d / "eval-may-finish"

    def fake_launch(cmd, run_dir, out):  # an "evaluation" that writes its summary once the test lets it
        launched.append((cmd, run_dir, out))
        code = ("import json, os, pathlib, time\n"
                f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
                f"p = pathlib.Path({str(d / 'eval')!r}); p.mkdir(exist_ok=True)\n"
                "(p / 'summary.json').write_text(json.dumps({'verdict': 'pass', 'message': 'all tests must pass: they do'}))")
        return subprocess.Popen([sys.executable, "-c", code])

    app.controller.launch = fake_launch
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("e")
        await pilot.pause(0.1)
        assert launched == [] and "no best_model.pt" in notes(app)
        (d / "best_model.pt").write_bytes(b"w")
        await pilot.press("e")
        await until(pilot, lambda: launched)
        await pilot.press("e")  # again while it runs: refused, not a second evaluation on the same files
        await until(pilot, lambda: "already running" in notes(app))
        assert len(launched) == 1
        gate.write_text("go")
        await until(pilot, lambda: "finished: PASS: all tests must pass: they do" in notes(app), timeout=10)
    cmd, run_dir, out = launched[0]
    assert cmd[cmd.index("eval") + 1] == "all" and cmd[cmd.index("--model") + 1] == str(d / "best_model.pt")
    assert run_dir == d and out == "eval.out"


@sync
async def test_attach_watches_a_legacy_run_folder(tmp_path):
    legacy = tmp_path / "old_run"
    legacy.mkdir()
    rows = "".join(f"{s:6d} | {8 - s / 100:7.3f} | {8 - s / 100:7.3f} |  0.0500 | 0.1000 |   1.000 |    2.000\n"
                   for s in range(20, 220, 20))
    (legacy / "training.log").write_text("K-SSM v3 training, max_steps 200\n" + rows)
    app = KssmApp(tmp_path / "results", attach=legacy, watch=False, tail_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.view is not None and app.view.last_step == 200)
        assert app.view.run_dir == legacy
        assert app.view.charts["loss"].series[0][1][-1] == 200
        await pilot.press("2")  # look at a stage folder...
        await until(pilot, lambda: app.view.run_dir == tmp_path / "results" / "stage2")
        await pilot.press("0")  # ...and back to the attached one
        await until(pilot, lambda: app.view.run_dir == legacy and app.view.last_step == 200)


@sync
async def test_0_without_attach_says_what_to_press_instead(runs):
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        before = app.selected
        await pilot.press("0")
        await pilot.pause(0.1)
        assert app.selected == before
        assert any("no --attach folder" in str(n.message) for n in app._notifications)


@sync
async def test_a_new_failure_raises_the_banner_and_rings_once(runs, monkeypatch):
    import kssm_tui.tail as tail

    monkeypatch.setattr(tail, "HEAVY_EVERY_S", 0.0)  # judge every update (the App throttles live runs to 3 s)
    d = write_run(stage_path(runs, 2), 2, 500, loss0=7.0, loss1=5.5, ppl=400.0, r=0.2, u=1.5, every=10, end=None)
    live_lock(d, os.getpid())
    app, _ = make_app(runs)
    rings: list = []
    app.bell = lambda: rings.append(1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        banner = app.dash.query_one("#alert")
        assert rings == [] and not any(r.verdict.value == "failure" for r in app.view.matrix_rows)
        with open(d / "events.jsonl", "a") as fh:
            fh.write(json.dumps({"event": "eval", "t": 2e9, "step": 505, "val_loss": 9.0, "val_ce": 9.0,
                                 "val_ppl": 8103.0, "val_R": 0.2, "val_u": 1.5}) + "\n")
        await until(pilot, lambda: rings)
        await until(pilot, lambda: "Val PPL" in str(getattr(banner, "text", "")))
        with open(d / "events.jsonl", "a") as fh:
            fh.write(json.dumps({"event": "warning", "t": 2e9, "code": "disk_low", "message": "x"}) + "\n")
        await until(pilot, lambda: any(k == "warning" for k, _ in app.view.new_entries))
        await pilot.pause(0.2)
        assert rings == [1]  # the same failure does not ring again


@sync
async def test_command_palette_offers_the_actions_and_respects_readonly(runs):
    for readonly, expect in ((False, {"Next stage", "Resume", "Stop", "Clean", "Log"}), (True, {"Log", "Smooth"})):
        app, _ = make_app(runs, readonly=readonly)
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            titles = {c.title for c in app.get_system_commands(app.screen)}
        assert expect <= titles
        if readonly:
            assert not titles & {"Next stage", "Resume", "Stop", "Unlock", "Clean"}


def test_main_refuses_a_missing_attach_folder(tmp_path, capsys):
    from kssm_tui.app import main

    assert main(["--attach", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and err.count("\n") == 1


@sync
async def test_r_on_a_finished_run_and_n_after_stage_5_do_nothing(runs):
    healthy(runs)
    write_run(stage_path(runs, 5), 5, 10000, every=500)
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.selected == 5
        await pilot.press("n")
        await pilot.press("2")
        await until(pilot, lambda: app.view.run_dir == stage_path(runs, 2))
        await pilot.press("r")
        await pilot.pause(0.2)
        assert spawned == [] and "last stage" in notes(app) and "nothing to resume" in notes(app)


@sync
async def test_toasts_show_paths_and_lock_fields_literally_never_as_markup(tmp_path):
    # Brackets in a folder name and a hostile host field in a lock reach notify(): parsed as markup, the first
    # raised MarkupError (the cockpit died) and the second became a clickable action.
    root = tmp_path / "runs[lr=3e-4]"
    d = stage_path(root, 1)
    d.mkdir(parents=True)
    (d / "training.lock").write_text(json.dumps({"pid": 4242, "host": "[@click=app.quit]x", "start_time": 1.0}))
    app, _ = make_app(root)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await ready(pilot)
        await pilot.press("u")  # refuses the lock from "another host" and says so in a toast
        await until(pilot, lambda: any("[@click=app.quit]x" in str(n.message) for n in app._notifications))
        await pilot.press("2", "u")  # no lock there: "no lock in runs[lr=3e-4]/stage2: nothing to do"
        await until(pilot, lambda: any("runs[lr=3e-4]" in str(n.message) for n in app._notifications))
        await pilot.pause(0.3)  # the toasts are drawn
        assert app.is_running and (d / "training.lock").exists()


@sync
async def test_r_after_a_nan_loss_refuses_and_gives_the_lower_learning_rate_command(runs):
    d = write_run(stage_path(runs, 2), 2, 500, loss0=7.0, loss1=5.5, ppl=400.0, r=0.2, u=1.5, every=10, end=None)
    with open(d / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "run_end", "t": 3e9, "status": "failed", "reason": "nan_loss", "step": 500}) + "\n")
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await until(pilot, lambda: app.view.end_reason == "nan_loss")
        await pilot.press("r")
        await until(pilot, lambda: any("loss went NaN" in str(n.message) for n in app._notifications))
        assert not spawned
        assert any("--learning-rate" in str(n.message) for n in app._notifications)


@sync
async def test_n_pressed_twice_quickly_starts_one_trainer(runs):
    app, spawned = make_app(runs)
    real_fake = app.controller.spawn

    def slow_child(command, run_dir):  # a trainer that lives a while (the default stand-in exits at once)
        child = real_fake(command, run_dir)
        child.proc.wait()
        child.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"])
        return child

    app.controller.spawn = slow_child
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await pilot.press("n", "n")
            await until(pilot, lambda: spawned)
            await pilot.pause(0.5)
            assert len(spawned) == 1
            assert any("already running" in str(n.message) for n in app._notifications)
    finally:
        if app.controller.child is not None:
            app.controller.child.proc.kill()
            app.controller.child.proc.wait()


@sync
async def test_n_on_another_stage_says_which_stage_to_show_before_r(runs):
    crashed(runs)
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("5", "n")  # looking at Stage 5 while Stage 1 crashed: r here would act on Stage 5
        await until(pilot, lambda: "Stage 1 (crashed): press 1, then r, to resume it first" in notes(app))
        await pilot.press("1", "n")
        await until(pilot, lambda: "Stage 1 (crashed): press r to resume it first" in notes(app))
        assert not spawned


@sync
async def test_n_runs_the_command_the_next_line_shows(runs):
    """The previous stage's settings (corpus, preset, tokenizer) are carried exactly as kssm status prints them."""
    healthy(runs)
    d = stage_path(runs, 2)
    lines = (d / "events.jsonl").read_text().splitlines()
    start = json.loads(lines[1])
    start["config"].update(corpus="books/", preset="small", tokenizer="chars")
    lines[1] = json.dumps(start)
    (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    (d / "best_model.pt").write_bytes(b"weights")
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        shown = app.stages[2].status.recommendation.command
        assert "--corpus books/" in shown and "--tokenizer chars" in app.view.recommendation
        await pilot.press("n")
        await until(pilot, lambda: spawned)
    cmd, _ = spawned[0]
    assert cmd[cmd.index("--corpus") + 1] == "books/" and cmd[cmd.index("--preset") + 1] == "small"
    assert cmd[cmd.index("--tokenizer") + 1] == "chars" and cmd[cmd.index("--stage") + 1] == "3"


@sync
async def test_r_resumes_a_run_completed_without_its_final_checkpoint(runs):
    """kssm status says resume (disk was low at the end); r does what it says instead of 'nothing to resume'."""
    d = write_run(stage_path(runs, 1), 1, 100)
    lines = (d / "events.jsonl").read_text().splitlines()
    end = json.loads(lines[-1])
    end["final_checkpoint"] = False
    lines[-1] = json.dumps(end)
    (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.view.status.recommendation.code == "no_final_checkpoint"
        await pilot.press("r")
        await until(pilot, lambda: spawned)
    cmd, run_dir = spawned[0]
    assert "--resume" in cmd and run_dir == d
