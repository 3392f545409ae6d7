"""The cockpit never harms a reference-trainer run: every key, pressed on copies of both reference folders,
leaves every byte (and the folder's listing) as it was, and the folder is judged as `kssm status` judges it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from kssm_core.runbook.status import run_status
from kssm_tui.labels import plan_label
from kssm_tui.app import KssmApp
from kssm_tui.dialogs.confirm import ConfirmDialog
from runfolders import dead_pid
from test_app_keys import notes, ready, sync, until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference-runs"


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def copy_of(kind: str, where: Path) -> Path:
    d = shutil.copytree(FIXTURES / kind, where / "kssm_v3")
    if (d / "training.lock").exists():
        (d / "training.lock").write_text(str(dead_pid()))  # the reference's bare-PID lock, provably stale here
    return d


@pytest.mark.parametrize("kind, state", [("finished", "completed"), ("crashed", "crashed")])
@sync
async def test_every_key_leaves_a_reference_run_intact(runs, kind, state):
    d = copy_of(kind, runs.parent)
    before = snapshot(d)
    core = run_status(d)
    assert core.state == state and core.source == "legacy"
    app = KssmApp(runs, attach=d, watch=False, tail_interval=0.1)
    async with app.run_test(size=(100, 34)) as pilot:
        await ready(pilot)
        await until(pilot, lambda: app.view.status is not None and app.view.run_dir == d)
        assert app.view.status.state == core.state and app.view.state == plan_label(core)
        for key in ("r", "u", "c", "e", "s"):
            await pilot.press(key)
            await pilot.pause(0.4)
            if isinstance(app.screen, ConfirmDialog):  # say yes to whatever is asked: still nothing may change
                await pilot.click("#confirm")
                await pilot.pause(0.4)
            while app.screen is not app.dash:
                await pilot.press("escape")
                await pilot.pause(0.1)
        await pilot.pause(1.0)  # any thread job has run by now
        text = notes(app)
        assert "not resuming" in text
    assert snapshot(d) == before
    assert not (d / "trainer.out").exists() and not (d / "eval").exists()
