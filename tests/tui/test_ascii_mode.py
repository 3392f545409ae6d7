"""KSSM_ASCII=1 (or a non-UTF-8 terminal): every cell the cockpit draws is ASCII, Textual's own chrome included."""

from __future__ import annotations

import asyncio
import io

import pytest
import torch
from rich.console import Console

from kssm_tui.app import KssmApp
from kssm_tui.dialogs.clean import CleanDialog
from runfolders import stage_path, write_run

SIZE = (100, 34)


def screen_text(app: KssmApp) -> str:
    """The characters on the screen now (the compositor's full frame, as export_screenshot sees it)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      color_system=None, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def non_ascii(text: str) -> set[str]:
    return {ch for ch in text if not ch.isascii()}


async def until(pilot, cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("ascii_flag", ["1", "0"])
def test_every_screen_is_ascii_only_in_ascii_mode(runs, monkeypatch, ascii_flag):
    monkeypatch.setenv("KSSM_ASCII", ascii_flag)
    d = write_run(stage_path(runs, 1), 1, 100)
    for step in (10, 20, 30):  # something for the clean dialog to list
        torch.save({"format": "kssm-checkpoint/1", "model_state": {}, "step": step}, d / f"checkpoint_{step}.pt")

    async def scenario() -> dict[str, str]:
        app = KssmApp(runs, watch=False, tail_interval=0.1)
        seen = {}
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await until(pilot, lambda: app.stages and app.view is not None)
            await pilot.pause(0.3)
            seen["dashboard"] = screen_text(app)
            app.say("a notification", severity="warning")
            await pilot.pause(0.3)
            seen["notification"] = screen_text(app)
            await pilot.press("question_mark")
            await pilot.pause(0.3)
            seen["help"] = screen_text(app)
            await pilot.press("escape")
            await pilot.pause(0.2)
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, CleanDialog))
            await pilot.pause(0.3)
            seen["clean dialog"] = screen_text(app)
        return seen

    seen = asyncio.run(scenario())
    for name, text in seen.items():
        assert len(text.strip()) > 100, name  # something was drawn
        if ascii_flag == "1":
            bad = [line for line in text.splitlines() if not line.isascii()]
            assert not bad, f"{name}: {bad[:3]}"
    if ascii_flag == "0":  # the check can fail: the default look does use box drawing
        assert non_ascii(seen["dashboard"])
