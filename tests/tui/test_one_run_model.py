"""One model of a run: the cockpit shows exactly what `kssm status` says, on every kind of run folder.

The cockpit reads a run through kssm_core's RunFollower and has kssm_core's judge decide; these tests
prove it on prepared folders, including the four cases where the cockpit's old second brain disagreed
(a finished reference run, an unknown run_end status, Stage 5 Agency from eval/*.json, a live trainer
whose lock was removed by hand).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from kssm_core.runbook.status import run_status
from kssm_tui.labels import plan_label
from runfolders import crashed, dead_pid, failed, healthy, stage_path, warning, write_run
from test_app_keys import make_app, notes, ready, sync, until

SIZE = (100, 34)

LEGACY_ROWS = "\n".join(f"{s:6d} | {8 - s / 100:7.3f} | {7.9 - s / 100:7.3f} | {0.05:7.4f} | {0.06:.4f} | "
                        f"{1.2:7.3f} | {2.0:8.3f}" for s in range(20, 140, 20))
LEGACY_EVAL = ("\n" + "=" * 80 + "\nEVALUATION @ Step 120\n" + "=" * 80 +
               "\n  Val Loss: 3.0840\n  Val CE: 2.5789\n  Val Perplexity: 13.18\n  Val R: 0.0559\n  Val u_val: 0.2481\n")


def legacy_finished(root: Path) -> Path:
    d = root / "kssm_v3"
    d.mkdir(parents=True)
    (d / "training.log").write_text("K-SSM v3 BISTABLE TRAINING\n" + LEGACY_ROWS + LEGACY_EVAL +
                                    "\nTraining Finished.\n\U0001f513 Released lock\n")
    return d


def legacy_crashed(root: Path) -> Path:
    d = root / "kssm_v3"
    d.mkdir(parents=True)
    (d / "training.log").write_text("K-SSM v3 BISTABLE TRAINING\n" + LEGACY_ROWS + "\n")
    (d / "training.lock").write_text(str(dead_pid()))  # the reference's bare-PID lock, its PID dead
    return d


def legacy_stopped(root: Path) -> Path:
    d = root / "kssm_v3"
    d.mkdir(parents=True)
    (d / "training.log").write_text("K-SSM v3 BISTABLE TRAINING\n" + LEGACY_ROWS + "\n")
    return d


def unknown_status(root: Path) -> Path:
    d = write_run(stage_path(root, 1), 1, 100, end=None)
    with open(d / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "run_end", "t": 2e9, "status": "exploded", "reason": "?", "step": 100}) + "\n")
    return d


def agency_evaluated(root: Path) -> Path:
    d = write_run(stage_path(root, 5), 5, 10000, loss0=6.0, loss1=4.0, ppl=150.0, r=0.35, u=1.5, every=100)
    (d / "eval").mkdir()
    (d / "eval" / "agency.json").write_text(json.dumps({"coherent_action_score": 0.9, "consistency_score": 0.9}))
    return d


def live_without_lock(root: Path) -> Path:
    """This test process stands in for a trainer whose lock an operator removed by hand."""
    d = write_run(stage_path(root, 1), 1, 100, end=None, t0=time.time())
    lines = (d / "events.jsonl").read_text().splitlines()
    start = json.loads(lines[1])
    start["pid"] = os.getpid()
    lines[1] = json.dumps(start)
    (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    return d


def stage_dir(prepare, n):
    def make(root: Path) -> Path:
        prepare(root)
        return stage_path(root, n)
    return make


FOLDERS = {
    "healthy": stage_dir(healthy, 2), "warning": stage_dir(warning, 2), "failed": stage_dir(failed, 2),
    "crashed": stage_dir(crashed, 1), "legacy finished": legacy_finished, "legacy crashed": legacy_crashed,
    "legacy stopped": legacy_stopped, "unknown status": unknown_status, "agency evaluated": agency_evaluated,
    "live pid without lock": live_without_lock,
}
EXPECTED_STATE = {"healthy": "completed", "warning": "completed", "failed": "completed", "crashed": "crashed",
                  "legacy finished": "completed", "legacy crashed": "crashed", "legacy stopped": "unknown",
                  "unknown status": "unknown", "agency evaluated": "completed", "live pid without lock": "running"}


def summary(s) -> tuple:
    return (s.state, s.stage, s.assessment.verdict, s.recommendation.code,
            tuple((r.stage, r.metric, r.verdict) for r in s.matrix))


@pytest.mark.parametrize("kind", list(FOLDERS))
@sync
async def test_the_cockpit_shows_what_kssm_status_says(runs, kind):
    d = FOLDERS[kind](runs)
    core = run_status(d)
    assert core.state == EXPECTED_STATE[kind], core.state_reason
    app, spawned = make_app(runs, attach=d)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await until(pilot, lambda: app.view.status is not None and app.view.run_dir == d)
        shown = app.view.status
        assert summary(shown) == summary(core)
        assert app.view.state == plan_label(core)
        banner = app.dash.query_one("#alert")

        def banner_text() -> str:
            return " ".join(banner.render_line(y).text.strip() for y in range(banner.size.height))

        if core.headline is not None:  # the banner is drawn a refresh after the view arrives: wait for it
            await until(pilot, lambda: core.headline[1][:40] in banner_text())
        shown_text = banner_text()
        if core.headline is None:
            assert not shown_text.strip(), shown_text
        else:  # the banner says the core's headline (wrapped; the key hint only for our own crashed runs)
            assert core.headline[1][:40] in shown_text, (core.headline, shown_text)
            assert ("press r" in shown_text) is (core.state == "crashed" and core.source != "legacy")
        assert core.recommendation.text in app.view.recommendation or core.recommendation.code == "active"
    assert spawned == []


@sync
async def test_a_finished_reference_run_is_completed_and_r_does_not_touch_it(runs):
    d = legacy_finished(runs)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    app, spawned = make_app(runs, attach=d)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await until(pilot, lambda: app.view.status is not None and app.view.run_dir == d)
        assert app.view.status.state == "completed" and app.view.state != "crashed"
        assert "press r" not in app.view.recommendation and "press n" not in app.view.recommendation
        await pilot.press("r")
        await pilot.pause(0.3)
        assert spawned == [] and "reference-trainer run is never written to" in notes(app)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


@sync
async def test_an_unknown_end_status_is_not_passed_and_n_asks(runs):
    unknown_status(runs)
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.stages[1].state == "unknown"
        await pilot.press("n")
        await pilot.pause(0.3)
        from kssm_tui.dialogs.confirm import ConfirmDialog

        assert isinstance(app.screen, ConfirmDialog) and spawned == []  # asks: the stage did not pass


@sync
async def test_stage_5_agency_comes_from_the_eval_results(runs):
    d = agency_evaluated(runs)
    app, _ = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("5")
        await until(pilot, lambda: app.view.run_dir == d and app.view.status is not None)
        (agency,) = [r for r in app.view.matrix_rows if r.metric == "Agency" and r.stage == 5]
        assert agency.verdict.value == "healthy" and "present" in agency.reason
        (d / "eval" / "agency.json").write_text(json.dumps({"coherent_action_score": 0.1, "consistency_score": 0.1}))
        await until(pilot, lambda: any(r.metric == "Agency" and r.verdict.value == "failure"
                                       for r in app.view.matrix_rows))  # a new result is noticed


@sync
async def test_r_refuses_while_the_runs_trainer_pid_is_alive_without_its_lock(runs):
    d = live_without_lock(runs)
    assert not (d / "training.lock").exists()
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.view.state == "running" and app.view.status.process == "alive"
        await pilot.press("r")
        await pilot.pause(0.3)
        assert spawned == [] and "not resuming" in notes(app)


def test_r_thread_check_refuses_a_live_pid_without_lock(runs, monkeypatch):
    """The resume job judges the folder afresh before spawning (the view may be seconds old)."""
    d = live_without_lock(runs)
    app, spawned = make_app(runs)
    said: list[str] = []
    monkeypatch.setattr(app, "_say_from_thread", lambda text, **kw: said.append(text))
    app._resume(d, 100)
    assert spawned == [] and said and said[0].startswith("not resuming") and str(os.getpid()) in said[0]


def test_kssm_train_refuses_a_folder_whose_trainer_lives_on_without_its_lock(runs):
    """The CLI (and so the autopilot) holds the same rule as the cockpit's r: no second writer, and nothing
    written into the live run's folder (not even a run_end)."""
    from kssm_testkit import run_kssm

    d = live_without_lock(runs)
    before = (d / "events.jsonl").read_bytes()
    r = run_kssm("train", "--output-dir", str(d.resolve()), "--resume", "--max-steps", "100")
    assert r.returncode == 2 and f"PID {os.getpid()}" in r.stderr and "still alive" in r.stderr
    assert (d / "events.jsonl").read_bytes() == before and not (d / "training.lock").exists()


@sync
async def test_a_stale_lock_naming_another_pid_does_not_hide_the_runs_live_trainer(runs):
    """The lock's PID is dead, but the newest run_start's own PID (this process) is alive: running, not crashed."""
    d = live_without_lock(runs)
    (d / "training.lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "start_time": 1.0}))
    s = run_status(d)
    assert s.state == "running" and s.process == "alive" and s.pid == os.getpid()
    app, spawned = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("r")
        await pilot.pause(0.3)
        assert spawned == [] and "not resuming" in notes(app)


@sync
async def test_n_on_an_attached_folder_outside_the_stages_starts_nothing(runs):
    """QA: with --attach on a reference run, n used to start Stage 1 of RUNS_ROOT at once, unasked."""
    d = legacy_finished(runs.parent)
    app, spawned = make_app(runs, attach=d)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("n")
        await pilot.pause(0.3)
        assert spawned == [] and "press 1-5 to pick one first" in notes(app)
        await pilot.press("1", "n")
        await until(pilot, lambda: spawned)  # once a stage is picked, n does what it always did
