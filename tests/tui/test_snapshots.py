"""Snapshots of the dashboard on prepared run folders: healthy, warning, failed, crashed.

Deterministic by construction: relative paths under a tmp cwd, no psutil watch (its numbers
vary by machine), fixed event timestamps, fixed terminal size. Regenerate after a deliberate
visual change with `pytest tests/tui/test_snapshots.py --snapshot-update` and review the SVGs.
"""

from __future__ import annotations

import pytest

from kssm_tui.app import KssmApp
from runfolders import crashed, failed, healthy, stage_path, warning, write_run

SIZE = (100, 34)


async def _settled(pilot) -> None:
    app = pilot.app
    for _ in range(100):
        if app.stages and app.view is not None and (not app.marked or app._shown_overlay() is not None):
            break
        await pilot.pause(0.05)
    await pilot.pause(0.3)
    app.dash.query_one("#events").scroll_end(animate=False)  # the log's auto-scroll races the layout
    app.clear_notifications()
    await pilot.pause(0.1)


@pytest.mark.parametrize("prepare", [healthy, warning, failed, crashed], ids=lambda f: f.__name__)
def test_dashboard(snap_compare, runs, prepare):
    prepare(runs)
    app = KssmApp(runs, watch=False, tail_interval=0.1)
    assert snap_compare(app, terminal_size=SIZE, run_before=_settled)


def test_two_overlaid_runs(snap_compare, runs):
    """`kssm-tui --compare results/stage2 ablation/stage2`: Stage 2 against its monostable ablation on every chart."""
    healthy(runs)
    ablation = write_run(runs.parent / "ablation" / "stage2", 2, 500, loss0=7.2, loss1=6.4, ppl=900.0, r=0.02,
                         u=0.4, every=10)
    app = KssmApp(runs, watch=False, tail_interval=0.1, compare=[stage_path(runs, 2), ablation])
    assert snap_compare(app, terminal_size=SIZE, run_before=_settled)
