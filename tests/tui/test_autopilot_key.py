"""The cockpit's `a` key: start the autopilot detached after a confirmation showing the plan and its budgets,
or stop a running one (asking first). No real training: the launch is recorded, a sleeper stands in."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from kssm_core.autopilot.state import Attempt, StageRecord, State, Store
from kssm_core.runbook import cmdline
from kssm_core.runfolder import layout
from kssm_core.runfolder.lock import process_start_time
from kssm_tui.dialogs.confirm import ConfirmDialog
from test_app_keys import SIZE, make_app, notes, ready, sync, until


def dialog_text(app) -> str:
    return str(app.screen.query_one("#dialog-text").render())


@sync
async def test_a_shows_the_plan_and_budgets_then_starts_the_autopilot_detached(runs, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('max_crashes = 2\n[[stage]]\nname = "smoke"\nsteps = 20\n')
    app, _ = make_app(runs, plan=plan)
    launched = []

    def fake_launch(command, run_dir, out_name):
        launched.append((command, Path(run_dir), out_name))
        return subprocess.Popen([sys.executable, "-c", "pass"])

    app.controller.launch = fake_launch
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        text = dialog_text(app)
        assert "1. smoke: 20 steps in stage1, gate: stage 1" in text and "2 crash resumes" in text
        assert "runs detached" in text
        await pilot.click("#confirm")
        await until(pilot, lambda: launched)
        await until(pilot, lambda: "autopilot started" in notes(app))
    command, folder, out = launched[0]
    assert command == cmdline.spawnable(cmdline.autopilot(runs, plan))
    assert folder == runs / layout.AUTOPILOT_DIR and out == layout.AUTOPILOT_OUT


@sync
async def test_a_stops_a_running_autopilot_after_asking(runs, sleeper):
    store = Store(runs)
    store.ensure()
    store.save(State(str(runs), {}, "d", [StageRecord(1, "Smoke test", "stage1", 100, 1, status="running",
                                                      attempts=[Attempt(1, "start", "no run")])]))
    (store.dir / layout.AUTOPILOT_LOCK).write_text(json.dumps(
        {"pid": sleeper.pid, "host": socket.gethostname(), "start_time": process_start_time(sleeper.pid), "created": 0}))
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert f"autopilot ({runs}): RUNNING, PID {sleeper.pid}" in dialog_text(app)
        await pilot.click("#confirm")
        await until(pilot, lambda: sleeper.poll() is not None)
    assert sleeper.returncode == -15  # SIGTERM: the autopilot logs 'stopped' and leaves its trainer running


@sync
async def test_the_cockpit_shows_what_the_autopilot_does_and_leaves_n_r_s_to_it(runs, sleeper):
    """Item 5: the run panel says what it is doing, its decisions reach the event log, the dashboard follows
    its stage, and the keys that would fight it (n, r, s) say so instead of acting."""
    store = Store(runs)
    store.ensure()
    store.save(State(str(runs), {}, "d", [StageRecord(1, "Smoke test", "stage1", 100, 1, status="passed",
                                                      attempts=[Attempt(1, "start", "no run")]),
                                          StageRecord(2, "Short validation", "stage2", 500, 2, status="running",
                                                      attempts=[Attempt(1, "start", "no run")])]))
    state = json.loads((store.dir / layout.AUTOPILOT_STATE).read_text())
    state["current"] = 2
    (store.dir / layout.AUTOPILOT_STATE).write_text(json.dumps(state))
    with open(store.dir / layout.AUTOPILOT_DECISIONS, "a") as fh:
        fh.write(json.dumps({"t": 1.0, "stage": 2, "decision": "start", "reason": "gate 1 passed"}) + "\n")
    (store.dir / layout.AUTOPILOT_LOCK).write_text(json.dumps(
        {"pid": sleeper.pid, "host": socket.gethostname(), "start_time": process_start_time(sleeper.pid), "created": 0}))
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await until(pilot, lambda: app.view.autopilot_pid == sleeper.pid and app.selected == 2, timeout=20)
        assert "AUTOPILOT RUNNING" in app.view.autopilot_line and "stage 2" in app.view.autopilot_line
        log = app.dash.query_one("#events")
        await until(pilot, lambda: "stage 2: start: gate 1 passed" in "\n".join(
            log.render_line(y).text for y in range(log.size.height)), timeout=20)
        for key in ("n", "r", "s"):
            await pilot.press(key)
            await pilot.pause(0.2)
        assert spawned == [] and notes(app).count("press a to stop it first") == 3
    assert sleeper.poll() is None
