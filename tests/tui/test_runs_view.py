"""The runs view (v), the overlay of marked runs, --compare and --reference, driven with Pilot on prepared folders."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kssm_core.reports.overlay import bucket_mean, debiased_ema, read_reference
from kssm_tui.app import KssmApp, main
from kssm_tui.overlay import OVERLAY_POINTS, OverlayBuilder
from kssm_tui.runs import RunsBoard, run_key
from kssm_tui.screens.help import HelpScreen
from kssm_tui.screens.runs import RunsScreen
from kssm_tui.widgets.chart import REFERENCE_GLYPH, RUN_GLYPHS
from runfolders import healthy, stage_path, write_run

SIZE = (100, 34)
from test_app_keys import ready, sync  # noqa: E402  (the Pilot helpers live once)
from test_app_keys import until as _until  # noqa: E402

ARCHIVE = "20260101T000000Z"


async def until(pilot, cond, timeout: float = 8.0) -> None:
    await _until(pilot, cond, timeout)  # a longer default: the runs worker scans every folder first


def prepared(root: Path) -> Path:
    """Stage 1 and 2 passed, Stage 2's earlier run archived (it failed), and an interrupted run elsewhere."""
    healthy(root)
    write_run(stage_path(root, 2) / "previous" / ARCHIVE, 2, 500, loss0=7.0, loss1=7.5, ppl=2600.0, r=0.0,
              every=10)
    return write_run(Path("elsewhere") / "seed7", 1, 100, end="interrupted")


def header(app: KssmApp, chart: str = "loss", width: int = 120) -> str:
    """A chart's title and legend as drawn (an overlay's legend may take a second line)."""
    return "\n".join(app.dash.query_one(f"#chart-{chart}").render_plain(width, 20).plain.splitlines()[:2])


def overlaid(app: KssmApp) -> list[str]:
    ov = app._shown_overlay()
    return [name for _d, name, _slot in ov.runs] if ov is not None else []


@sync
async def test_runs_view_lists_stage_folders_the_archive_and_the_attached_run(runs):
    attached = prepared(runs)
    app = KssmApp(runs, attach=attached, watch=False, tail_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.done)
        rows = {r.name: r for r in app.screen.rows}
        assert list(rows) == ["stage1", "stage2", f"stage2/previous/{ARCHIVE}", "elsewhere/seed7"]
        s1, s2, old, att = rows.values()
        assert (s1.origin, s1.state, s1.step, s1.verdict) == ("stage", "passed", 100, "healthy")
        assert (s2.state, s2.step, s2.best_ppl, s2.verdict) == ("passed", 500, 400.0, "healthy")
        assert (old.origin, old.state, old.best_ppl, old.verdict) == ("previous", "failed", 2600.0, "failure")
        assert (att.origin, att.state, att.step) == ("attach", "interrupted", 100)
        assert math.isclose(s1.best_ppl, math.exp(5.0))
        table = app.screen.query_one("#runs-table")
        assert table.row_count == 4
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, RunsScreen))
        assert not app.board.listing  # closed: no more rescans


@sync
async def test_marking_two_runs_overlays_them_on_every_chart(runs):
    prepared(runs)
    app = KssmApp(runs, watch=False, tail_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        single = header(app)
        assert "total" in single and "CE" in single  # one run: its loss and CE
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.done)
        await pilot.press("space", "down", "down", "space")  # stage1 and the archived stage2 run
        await until(pilot, lambda: len(overlaid(app)) == 2)
        assert overlaid(app) == ["stage1", f"stage2@{ARCHIVE}"]
        assert app.marked == {run_key(stage_path(runs, 1)): 0,
                              run_key(stage_path(runs, 2) / "previous" / ARCHIVE): 1}
        await pilot.press("escape")
        for chart in ("loss", "ppl", "R", "u", "grad"):
            head = header(app, chart)
            assert f"{RUN_GLYPHS[0]} stage1 " in head and f"{RUN_GLYPHS[1]} stage2@{ARCHIVE} " in head, head
        assert "overlay: 2 runs" in app.dash.query_one("#title").render().plain
        # unmark the first: the second keeps its slot (colour and marker)
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("space")
        await until(pilot, lambda: overlaid(app) == [f"stage2@{ARCHIVE}"])
        assert app._shown_overlay().runs[0][2] == 1
        await pilot.press("space", "escape")  # marked again: the lowest free slot
        await until(pilot, lambda: len(overlaid(app)) == 2)
        assert app.marked[run_key(stage_path(runs, 1))] == 0
        # smoothing: TensorBoard's EMA, built in the worker, with the raw series faint beneath
        await pilot.press("m")
        await until(pilot, lambda: app._shown_overlay() is not None and app._shown_overlay().smoothing)
        assert "(EMA 0.6, raw" in header(app)
        chart = app.dash.query_one("#chart-loss")
        chart.render_plain(120, 20)
        assert chart._pre_mode and len(chart._pre) == 2  # noqa: SLF001 - smoothed before render, not in it
        # the x axis: active wall time
        await pilot.press("x")
        await until(pilot, lambda: app._shown_overlay() is not None and app._shown_overlay().time_axis)
        text = chart.render_plain(120, 24).plain
        assert "active time (s)" in text and "x:time" in app.dash.query_one("#title").render().plain


def tree(folder: Path) -> dict:
    """Every file and folder under `folder` with its size and modification time: what a write would change."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted([folder, *folder.rglob("*")])}


@sync
async def test_enter_opens_the_highlighted_run_on_the_dashboard_and_writes_nothing(runs):
    prepared(runs)
    archived = stage_path(runs, 2) / "previous" / ARCHIVE
    before = tree(runs)
    app = KssmApp(runs, watch=False, tail_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await until(pilot, lambda: app.view.run_dir == stage_path(runs, 2))  # the newest started stage
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.done)
        await pilot.press("down", "down")  # stage1, stage2, then stage2's archived run
        assert app.screen.current_folder() == run_key(archived)
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, RunsScreen) and app.view.run_dir == archived)
        assert (app.view.state, app.view.last_step, app.view.max_steps) == ("failed", 500, 500)
        info = app.dash.query_one("#run-info").render().plain
        assert f"Run {archived}" in info and "step 500 / 500" in info
        assert f"attached: {archived}" in app.dash.query_one("#title").render().plain
        assert app.marked == {} and app._shown_overlay() is None  # opened, not marked: one run's charts
        assert "showing stage2/previous/" in "\n".join(str(n.message) for n in app._notifications)
        # a stage folder opens as its stage (as 1-5 do); `0` comes back to the opened run
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.done)
        assert app.screen.current_folder() == run_key(stage_path(runs, 1))  # the view opens on its first row
        await pilot.press("enter")
        await until(pilot, lambda: app.view.run_dir == stage_path(runs, 1))
        assert app.selected == 1 and app.view.last_step == 100
        await pilot.press("0")
        await until(pilot, lambda: app.view.run_dir == archived)
        await pilot.pause(0.5)  # a few more ticks of the tail worker on the opened run
    assert tree(runs) == before  # opening reads: not a byte, lock or cache file written in any run folder


@sync
async def test_compare_on_the_command_line_opens_overlaid(runs, monkeypatch):
    prepared(runs)
    seen = {}

    def fake_run(self, *a, **kw):
        seen["compare"], seen["reference"] = list(self.compare), self.reference

    monkeypatch.setattr(KssmApp, "run", fake_run)
    assert main([str(runs), "--compare", str(stage_path(runs, 1)), str(Path("elsewhere"))]) == 0
    assert seen["compare"] == [stage_path(runs, 1), Path("elsewhere") / "seed7"]  # a folder of runs: each run
    app = KssmApp(runs, watch=False, tail_interval=0.1, compare=seen["compare"])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await until(pilot, lambda: len(overlaid(app)) == 2)
        head = header(app)
        assert "stage1" in head and "seed7" in head
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.done)
        kinds = {r.name: r.origin for r in app.screen.rows}
        assert kinds["elsewhere/seed7"] == "compare"
        marks = app.screen.query_one("#runs-table").get_column("mark")
        assert [str(c) for c in marks] == [RUN_GLYPHS[0], "", "", RUN_GLYPHS[1]]


def test_compare_refuses_a_folder_without_runs(runs, capsys):
    (runs / "empty").mkdir()
    assert main([str(runs), "--compare", str(runs / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run folder" in err[0]


def write_reference(path: Path) -> Path:
    path.write_text("step,loss,val_ppl,R\n0,9.0,,0.01\n250,7.0,900,0.1\n500,5.0,300,0.2\n")
    return path


@sync
async def test_reference_is_drawn_dashed_on_the_matching_charts(runs):
    healthy(runs)
    ref = read_reference(write_reference(Path("paper.csv")))
    app = KssmApp(runs, watch=False, tail_interval=0.1, reference=ref)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for chart in ("loss", "ppl", "R"):
            assert f"{REFERENCE_GLYPH} paper" in header(app, chart), chart
        assert "paper" not in header(app, "u") and "paper" not in header(app, "grad")
        app.toggle_mark(stage_path(runs, 1))
        app.toggle_mark(stage_path(runs, 2))
        await until(pilot, lambda: len(overlaid(app)) == 2)
        assert f"{REFERENCE_GLYPH} paper" in header(app)  # beside overlaid runs too, never smoothed
        await pilot.press("m")
        await until(pilot, lambda: app._shown_overlay() is not None and app._shown_overlay().smoothing)
        chart = app.dash.query_one("#chart-loss")
        prepared_lines, _ = chart._prepare(120)  # noqa: SLF001 - what the chart draws
        (r,) = [p for p in prepared_lines if p[3].kind == "ref"]
        np.testing.assert_allclose(r[2], np.interp(r[1], [0, 250, 500], [9.0, 7.0, 5.0]))  # on the raw line
        await pilot.press("x")  # a reference is a trajectory over steps: not drawn on the time axis
        await until(pilot, lambda: app._shown_overlay() is not None and app._shown_overlay().time_axis)
        assert "paper" not in header(app)


@pytest.mark.parametrize("content, why", [("step;foo\n1;2\n", "no metric column"),
                                          ("loss\n1\n", "no 'step' column"),
                                          ('{"step": 1, "loss": "x"}\n', "not a number")])
def test_a_bad_reference_is_refused_with_one_line(runs, capsys, monkeypatch, content, why):
    monkeypatch.setattr(KssmApp, "run", lambda self: pytest.fail("the App must not start"))
    bad = Path("bad.jsonl" if content.startswith("{") else "bad.csv")
    bad.write_text(content)
    assert main([str(runs), "--reference", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0] and "bad." in err[0]
    assert main([str(runs), "--reference", "missing.csv"]) == 2
    assert "no such file" in capsys.readouterr().err


@sync
async def test_help_lists_the_runs_view_keys(runs):
    healthy(runs)
    app = KssmApp(runs, watch=False, tail_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        keys = [k for k, _, _ in app.screen.keys]
        assert "v" in keys and "x" in keys
        (heading, view_keys), = app.screen.sections
        assert "runs view" in heading and [k for k, _, _ in view_keys][:2] == ["space", "enter"]


def test_hostile_run_names_are_shown_literally(runs):
    write_run(runs / "[bold red]x[/]\x1b[2J", 1, 100)
    board = RunsBoard(runs)
    (row,) = board.scan()
    assert row.name.startswith("[bold red]x[/]")

    async def scenario():
        app = KssmApp(runs, watch=False, tail_interval=0.1)
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await pilot.press("v")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.done)
            cell = app.screen.query_one("#runs-table").get_cell_at((0, 1))
            assert cell.plain == "[bold red]x[/]" and not cell.spans  # cleaned, and no markup parsed
    asyncio.run(scenario())


# ---- the overlay's data, built in the worker --------------------------------------------------------------
def _big_run(run_dir: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    lines = [{"event": "run_start", "t": 1000.0, "stage": 1, "max_steps": n, "start_step": 0}]
    lines += [{"event": "step", "t": 1000.0 + s, "step": s, "loss": float(5 + rng.normal()), "R": 0.1,
               "u_val": 1.0, "grad_norm": 1.0, "ce": 5.0} for s in range(1, n + 1)]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run_dir


def test_overlay_series_are_thinned_and_smoothed_over_every_point(tmp_path):
    a = run_key(_big_run(tmp_path / "a", 5000, 1))
    b = OverlayBuilder()
    view = b.build(((a, 3),), time_axis=False, smoothing=True)
    ((name, xs, ys),) = view.charts["loss"].series
    (sm,) = view.charts["loss"].smoothed
    assert name == "a" and view.charts["loss"].slots == [3]
    assert len(xs) <= 2 * OVERLAY_POINTS and len(sm[0]) <= 2 * OVERLAY_POINTS  # bounded whatever the run's length
    raw = np.array(b.runs[a].history.steps.cols["loss"])
    full = debiased_ema(raw, 0.6)
    steps = np.array(b.runs[a].history.steps.steps, dtype=float)
    np.testing.assert_allclose(sm[1], bucket_mean(steps, full, 2 * OVERLAY_POINTS)[1], rtol=1e-12)  # of every point
    assert max(ys) == raw.max() and min(ys) == raw.min()  # the raw envelope keeps spikes
    # a live run grows: the EMA continues from its kept state and equals the whole
    with open(tmp_path / "a" / "events.jsonl", "a") as fh:
        for s in range(5001, 5101):
            fh.write(json.dumps({"event": "step", "t": 1000.0 + s, "step": s, "loss": 1.0}) + "\n")
    again = b.build_if_changed(((a, 3),), False, True)
    assert again is not None and again.serial == view.serial + 1
    assert b._ema.smoothed_count((a, "loss")) == 5100  # noqa: SLF001 - the kept EMA grew by the new points
    (sm,) = again.charts["loss"].smoothed
    steps = np.array(b.runs[a].history.steps.steps, dtype=float)
    np.testing.assert_allclose(sm[1], bucket_mean(steps, debiased_ema(np.r_[raw, np.ones(100)], 0.6),
                                                  2 * OVERLAY_POINTS)[1], rtol=1e-10)
    assert b.build_if_changed(((a, 3),), False, True) is None  # nothing new: nothing built


def test_time_axis_leaves_out_the_gap_of_a_resume(tmp_path):
    d = tmp_path / "resumed"
    d.mkdir()
    ev = [{"event": "run_start", "t": 0.0, "start_step": 0}]
    ev += [{"event": "step", "t": float(s), "step": s, "loss": 5.0 - s / 100} for s in range(1, 101)]
    ev += [{"event": "run_start", "t": 50_000.0, "start_step": 80}]  # crashed at 100, resumed from 80 much later
    ev += [{"event": "step", "t": 50_000.0 + s - 80, "step": s, "loss": 4.0} for s in range(81, 121)]
    (d / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in ev))
    view = OverlayBuilder().build(((run_key(d), 0),), time_axis=True, smoothing=False)
    ((_n, xs, ys),) = view.charts["loss"].series
    assert view.x_label == "active time (s)" and max(xs) == pytest.approx(120.0)  # 80 s + 40 s, not 50,000
    assert len(xs) == 120 and ys[79] == pytest.approx(4.2) and ys[80] == 4.0  # the orphaned steps replaced


def test_a_run_that_did_not_change_is_not_built_again(tmp_path):
    a, b = run_key(_big_run(tmp_path / "a", 300, 1)), run_key(_big_run(tmp_path / "b", 300, 2))
    builder = OverlayBuilder()
    builder.build(((a, 0), (b, 1)), time_axis=False, smoothing=True)
    kept_b = builder._pieces_cache[b][1]  # noqa: SLF001
    with open(tmp_path / "a" / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "step", "t": 5000.0, "step": 301, "loss": 1.0}) + "\n")
    view = builder.build_if_changed(((a, 0), (b, 1)), False, True)
    assert builder._pieces_cache[b][1] is kept_b and view.charts["loss"].series[1][1] is kept_b["loss"][0]
    assert view.charts["loss"].series[0][1][-1] == 301


def test_the_runs_view_is_ascii_only_in_ascii_mode(runs, monkeypatch):
    import io

    from rich.console import Console

    monkeypatch.setenv("KSSM_ASCII", "1")
    prepared(runs)

    async def scenario() -> str:
        app = KssmApp(runs, watch=False, tail_interval=0.1, compare=[stage_path(runs, 1), stage_path(runs, 2)])
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await pilot.press("v")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.done)
            await pilot.pause(0.2)
            console = Console(width=SIZE[0], height=SIZE[1], file=io.StringIO(), force_terminal=True, record=True,
                              color_system=None, legacy_windows=False, safe_box=False)
            console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
            return console.export_text()

    text = asyncio.run(scenario())
    assert "stage1" in text and {ch for ch in text if not ch.isascii()} == set()


@sync
async def test_x_with_nothing_marked_draws_the_shown_run_on_the_time_axis(runs):
    healthy(runs)
    app = KssmApp(runs, watch=False, tail_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await until(pilot, lambda: app.view.run_dir == stage_path(runs, 2))
        await pilot.press("x")
        await until(pilot, lambda: overlaid(app) == ["stage2"])
        assert app._shown_overlay().x_label == "active time (s)"
        assert "overlay" not in app.dash.query_one("#title").render().plain  # nothing marked: not an overlay
        await pilot.press("1")  # the time axis follows the shown run
        await until(pilot, lambda: overlaid(app) == ["stage1"])
        await pilot.press("x")
        await until(pilot, lambda: app._shown_overlay() is None)
        assert "total" in header(app) and "CE" in header(app)  # the single run's charts again
