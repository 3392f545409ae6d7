"""The display widgets mounted in a tiny App at 80x24: they draw the data they get, literally and safely."""

from __future__ import annotations

import asyncio
import math
import re
import time

import pytest
from textual.app import App, ComposeResult
from textual.widget import Widget

from kssm_core.runbook.verdicts import Action, MatrixRow, StageAssessment, Verdict
from kssm_tui.widgets.alert_banner import AlertBanner
from kssm_tui.widgets.chart import MetricChart, downsample, finite_xy, log_ticks
from kssm_tui.widgets.event_log import EventLog
from kssm_tui.widgets.matrix_panel import MatrixPanel
from kssm_tui.widgets.resources import ResourcePanel
from kssm_tui.widgets.sparklines import SparklineStrip
from kssm_tui.widgets.stage_plan import StagePlan

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
HOSTILE = [
    "[bold]",
    "[/",
    "[TODO]",
    "[@click=app.quit]x[/]",
    "clip\x1b]52;c;SGVsbG8=\x07board",
    "wipe\x1b[2Jscreen",
    "csi\x9b31mred",
    "osc\x9d0;title\x9cend",
]
# What each hostile string must look like on screen.
HOSTILE_SHOWN = ["[bold]", "[/", "[TODO]", "[@click=app.quit]x[/]", "clipboard", "wipescreen", "csired", "oscend"]
R_ZONES = [(0.0, 0.10, "Unformed"), (0.10, 0.30, "Intimacy"), (0.30, 0.50, "Balance"), (0.50, 0.70, "Mystery"),
           (0.70, 0.85, "Wonder"), (0.85, 0.95, "Passion"), (0.95, 1.0, "Ache")]


@pytest.fixture(autouse=True)
def unicode_glyphs(monkeypatch):
    """Pin the glyph set: tests that want ASCII set KSSM_ASCII=1 themselves (CI may run under LANG=C)."""
    monkeypatch.setenv("KSSM_ASCII", "0")


class Harness(App):
    """Mounts one widget full-screen."""

    def __init__(self, widget: Widget) -> None:
        super().__init__()
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield self.widget


def screen_lines(widget: Widget) -> list[str]:
    """The text of the strips the widget hands to the compositor: what reaches the terminal."""
    return ["".join(seg.text for seg in widget.render_line(y)) for y in range(widget.size.height)]


def run(widget: Widget, feed, size=(80, 24)) -> list[str]:
    """Mount ``widget`` at ``size``, call ``feed(widget)``, let it render, return the screen lines."""

    async def go() -> list[str]:
        app = Harness(widget)
        async with app.run_test(size=size) as pilot:
            feed(widget)
            await pilot.pause()
            await pilot.pause()
            lines = screen_lines(widget)
            assert app.is_running  # no markup action (e.g. @click=app.quit) fired
            return lines

    return asyncio.run(go())


def assert_safe(lines: list[str]) -> None:
    for line in lines:
        assert not CONTROL.search(line), repr(line)


# -- MetricChart ---------------------------------------------------------------------------------------------


def test_chart_draws_series_and_header_at_80x24():
    steps = list(range(0, 1000, 10))
    loss = [8.0 - 4.0 * i / 100 for i in range(100)]
    ce = [v - 0.5 for v in loss]

    def feed(w):
        w.set_data([("total", steps, loss), ("ce", steps, ce)])

    lines = run(MetricChart("loss", id="loss"), feed)
    text = "\n".join(lines)
    assert lines[0].startswith("loss")
    assert "total 4.04" in lines[0] and "ce 3.54" in lines[0]  # last values of each series
    assert "step" in text
    assert any(ch in text for ch in "\u2800\u2801\u2802\u2804\u2808\u2810\u2820\u2840\u2880")  # braille drawn
    assert "+" in text  # second series' marker
    assert_safe(lines)


def test_chart_empty_says_waiting():
    lines = run(MetricChart("val PPL"), lambda w: w.set_data([]))
    assert any("waiting for data" in line for line in lines)
    lines = run(MetricChart("val PPL"), lambda w: w.set_data([("val", [], [])]))
    assert any("waiting for data" in line for line in lines)


def test_chart_hostile_titles_and_names_are_literal():
    def feed(w):
        w.set_data([("[bold]x\x1b[2J", [1, 2, 3], [1.0, 2.0, 3.0])], y_label="[@click=app.quit]y[/]")

    lines = run(MetricChart("[TODO]\x1b]52;c;abc\x07"), feed)
    assert lines[0].startswith("[TODO]")
    assert "[bold]x" in lines[0]
    assert_safe(lines)


def test_chart_log_scale_with_zeros_negatives_nan_none():
    def feed(w):
        w.set_data(
            [("val", [0, 1, 2, 3, 4, 5], [0.0, -3.0, float("nan"), None, 1000.0, 100.0])],
            log_y=True,
            hlines=[(0.0, "zero"), (1000.0, "limit")],
            bands=[(-1.0, 0.0, "neg"), (0.0, 500.0, "low")],
        )

    lines = run(MetricChart("val PPL"), feed)
    text = "\n".join(lines)
    assert "(log)" in lines[0]
    assert "2 <= 0 not shown" in lines[0]
    assert "1000" in text and "100" in text  # real-unit tick labels on the log axis
    assert "chart error" not in text


def test_chart_log_scale_all_non_positive_is_waiting():
    lines = run(MetricChart("ppl"), lambda w: w.set_data([("v", [1, 2], [0.0, -1.0])], log_y=True))
    assert any("waiting for data" in line for line in lines)


def test_chart_r_bands_and_clamp_lines_are_labelled():
    steps = list(range(200))
    r = [0.05 + 0.9 * i / 199 for i in steps]
    lines = run(MetricChart("R"), lambda w: w.set_data([("R", steps, r)], bands=R_ZONES, ylim=(0, 1)))
    text = "\n".join(lines)
    for zone in ("Unformed", "Intimacy", "Balance", "Mystery"):
        assert zone in text
    u = [0.1 + 9.9 * abs(math.sin(i / 30)) for i in steps]
    lines = run(MetricChart("u_val"), lambda w: w.set_data([("u", steps, u)], hlines=[(0.1, "floor"), (10, "ceiling")],
                                                         ylim=(0, 10.5)))
    text = "\n".join(lines)
    assert "floor" in text and "ceiling" in text


def test_chart_smoothing_changes_the_drawn_line_not_the_last_value():
    steps = list(range(500))
    noisy = [1.0 + (1.0 if i % 2 else -1.0) for i in steps]
    chart = MetricChart("grad")
    chart.set_data([("g", steps, noisy)])
    raw = chart.render_plain(80, 20).plain
    chart.set_data([("g", steps, noisy)], smoothing=True)
    smooth = chart.render_plain(80, 20).plain
    assert "(EMA 0.6, raw" in smooth.splitlines()[0]  # one run is smoothed as an overlay is
    assert "g 2" in smooth.splitlines()[0]  # last raw value stays in the header
    assert raw != smooth


def test_one_run_smoothed_is_tensorboards_debiased_ema_with_the_raw_series_faint():
    """The single-run chart (the dashboard passes smoothing and the default weight) smooths as the overlay does:
    the EMA started at 0 and divided by 1 - w^n, worked out here by hand for w = 0.6. Its first point is the first
    raw value (a zero-started EMA without the division gives 0.4 * 4 = 1.6) and its second 2.75 (the plain EMA
    this chart used before, span 3 from the first value, gave 3.0)."""
    steps, values = [0, 1, 2, 3], [4.0, 2.0, 3.0, 1.0]
    hand, acc = [], 0.0
    for n, v in enumerate(values, 1):
        acc = 0.6 * acc + 0.4 * v
        hand.append(acc / (1 - 0.6**n))
    assert hand[:2] == pytest.approx([4.0, 2.75])
    for kw in ({}, {"ema_weight": 0.6}):  # the default weight is TensorBoard's 0.6
        chart = MetricChart("loss")
        chart.set_data([("loss", steps, values)], smoothing=True, **kw)
        prepared, _ = chart._prepare(200)  # noqa: SLF001 - what _build draws; wide: every point its own
        (main,) = [p for p in prepared if p[3].kind == "main"]
        (raw,) = [p for p in prepared if p[3].kind == "raw"]
        assert main[1].tolist() == steps and main[2].tolist() == pytest.approx(hand)
        assert main[2][0] == values[0]
        assert raw[1].tolist() == steps and raw[2].tolist() == values  # the raw series is still drawn
        assert raw[3].color == main[3].color
        text = chart.render_plain(80, 20)
        assert "(EMA 0.6, raw" in text.plain.splitlines()[0]
        assert "loss 1" in text.plain.splitlines()[0]  # the header's value is the last raw one
        assert any("dim" in str(span.style) for span in text.spans)  # the raw points are faint
    chart.set_data([("loss", steps, values)])  # smoothing off: the raw line alone, as before
    prepared, _ = chart._prepare(200)  # noqa: SLF001
    assert [p[3].kind for p in prepared] == ["main"] and prepared[0][2].tolist() == values


def test_chart_100k_points_renders_fast_and_is_cached():
    n = 100_000
    steps = list(range(n))
    values = [3.0 + math.sin(i / 1000) + (i % 7) * 0.01 for i in steps]
    ce = [v - 0.3 for v in values]
    chart = MetricChart("loss")
    chart.set_data([("warm", [1, 2, 3], [1.0, 2.0, 1.5])])
    chart.render_plain(80, 12)  # first plotext build pays for imports and caches
    # CPU time, best of 3: the machine running the tests is shared, wall time measures the neighbours too.
    costs = []
    for k in range(3):
        t0 = time.process_time()
        chart.set_data([("total", steps, values), ("ce", steps, ce)], smoothing=bool(k % 2))
        text = chart.render_plain(100, 20)
        costs.append(time.process_time() - t0)
        assert "step" in text.plain
    assert min(costs) < 0.2, f"100k-point set_data + render took {min(costs):.3f}s of CPU"


def test_chart_render_cache_in_app():
    chart = MetricChart("loss")

    async def go():
        async with Harness(chart).run_test(size=(80, 24)) as pilot:
            chart.set_data([("a", [1, 2, 3], [3.0, 2.0, 1.0])])
            await pilot.pause()
            first = chart.render()
            assert chart.render() is first  # same data and size: no rebuild
            chart.set_data([("a", [1, 2, 3], [3.0, 2.0, 0.5])])
            assert chart.render() is not first

    asyncio.run(go())


def test_downsample_keeps_extremes_and_caps_points():
    x = list(range(10_000))
    y = [0.0] * 10_000
    y[4321] = 99.0
    y[8765] = -5.0
    fx, fy = finite_xy(x, y)
    dx, dy = downsample(fx, fy, 50)
    assert len(dx) <= 100
    assert dy.max() == 99.0 and dy.min() == -5.0


def test_finite_xy_drops_bad_values_and_mismatched_lengths():
    x, y = finite_xy([1, 2, 3, 4, 5], [1.0, None, float("nan"), float("inf"), 2.0, 9.9])
    assert x.tolist() == [1.0, 5.0] and y.tolist() == [1.0, 2.0]


def test_log_ticks_label_in_real_units():
    ticks, labels = log_ticks(1.0, 4.0)
    assert labels == ["10", "100", "1000", "10k"]
    assert len(log_ticks(2.0, 2.2)[0]) >= 2


def test_chart_ascii_mode_has_no_box_glyphs(monkeypatch):
    monkeypatch.setenv("KSSM_ASCII", "1")
    chart = MetricChart("loss")
    chart.set_data([("a", list(range(50)), [float(i) for i in range(50)]), ("b", [0, 49], [1.0, 2.0])])
    text = chart.render_plain(60, 15).plain
    assert text.isascii(), sorted({c for c in text if ord(c) > 127})


def test_chart_tiny_area_does_not_crash():
    chart = MetricChart("loss")
    chart.set_data([("a", [1, 2, 3], [1.0, 2.0, 3.0])])
    for w, h in [(0, 0), (1, 1), (10, 3), (30, 6), (24, 6)]:
        chart.render_plain(w, h)


# -- SparklineStrip ------------------------------------------------------------------------------------------


def test_sparklines_one_line_per_metric_with_last_value():
    data = {"loss": [5.0, 4.0, 3.0, 2.5], "R": [0.01, 0.02, None, float("nan"), 0.3], "[bold]": [1.0, 2.0]}
    lines = run(SparklineStrip(), lambda w: w.set_data(data), size=(60, 10))
    assert lines[0].startswith("loss") and lines[0].rstrip().endswith("2.5")
    assert lines[1].startswith("R") and lines[1].rstrip().endswith("0.3")
    assert lines[2].startswith("[bold]")
    assert "\u2581" in lines[0] and "\u2588" in lines[0]  # lowest and highest block
    assert_safe(lines)


def test_sparklines_ascii_fallback(monkeypatch):
    monkeypatch.setenv("KSSM_ASCII", "1")
    strip = SparklineStrip()
    strip.set_data({"loss": [float(i) for i in range(200)]})
    text = strip.render_lines_text(40).plain
    assert text.isascii() and "#" in text and "_" in text


def test_sparklines_empty_and_long_history():
    strip = SparklineStrip()
    assert "waiting" in strip.render_lines_text(40).plain
    strip.set_data({"loss": [float(i % 17) for i in range(100_000)]})
    line = strip.render_lines_text(40).plain
    assert len(line) <= 40


# -- MatrixPanel ---------------------------------------------------------------------------------------------


def _rows():
    return [
        MatrixRow(1, "Loss", Verdict.HEALTHY, "loss 8.1 -> 6.2, descending"),
        MatrixRow(2, "Val PPL", Verdict.WARNING, "val PPL 1412 in 1000-2000",
                  remedy="kssm train --stage 2 --lambda-reg 0.1", remedy_note="u_val hitting clamps"),
        MatrixRow(2, "u_val", Verdict.FAILURE, "[bold]u hit 10.0[/] \x1b[2J",
                  remedy="[@click=app.quit]x[/] \x1b]52;c;ZXZpbA==\x07--learning-rate 0.0001"),
        MatrixRow(2, "R", Verdict.PENDING, "no eval yet"),
    ]


def test_matrix_panel_cells_tags_action_and_remedies():
    rows = _rows()
    assessment = StageAssessment(2, rows[1:], Verdict.FAILURE, Action.STOP, "Stage 2: FAILURE (u_val) [TODO]")
    lines = run(MatrixPanel(), lambda w: w.set_rows(rows, 2, assessment))
    text = "\n".join(lines)
    row_of = {m: next(line for line in lines if m in line) for m in ("Loss", "Val PPL", "u_val ", "R  ")}
    assert " OK " in row_of["Loss"] and not row_of["Loss"].startswith(">")
    assert "WARN" in row_of["Val PPL"] and row_of["Val PPL"].startswith(">2")  # current stage marked
    assert "FAIL" in row_of["u_val "] and "[bold]u hit 10.0[/]" in row_of["u_val "]
    assert ".." in row_of["R  "]
    assert "FAILURE" in text and "[TODO]" in text
    assert "Action: stop, debug" in text
    assert "  kssm train --stage 2 --lambda-reg 0.1" in lines  # the whole command, on its own line
    assert "u_val hitting clamps" in text
    assert "[@click=app.quit]x[/] --learning-rate 0.0001" in text
    assert_safe(lines)


def test_matrix_panel_colours_cells_by_verdict():
    panel = MatrixPanel()
    rows = _rows()
    panel.set_rows(rows, 2, None)
    text = panel.render_text(80)
    styles = {text.plain[s.start:s.end].strip(): str(s.style) for s in text.spans}
    assert "green" in styles["OK"] and "yellow" in styles["WARN"] and "red" in styles["FAIL"]


def test_matrix_panel_empty():
    lines = run(MatrixPanel(), lambda w: w.set_rows([], None, None))
    assert "no data yet" in lines[0]


# -- StagePlan -----------------------------------------------------------------------------------------------


def test_stage_plan_states_current_and_selected():
    states = {1: "passed", 2: "crashed", 3: "stale lock", 4: "running", 5: "[bold]weird\x1b[2J"}
    lines = run(StagePlan(), lambda w: w.set_stages(states, current=2, selected=3), size=(80, 24))
    assert lines[0].startswith(" [+] 1") and "Smoke test" in lines[0] and "passed" in lines[0]
    assert "[X] 2*" in lines[1] and "crashed" in lines[1]
    assert lines[2].startswith(">[L] 3") and "stale lock" in lines[2]
    assert "[>] 4" in lines[3] and "5000 steps" in lines[3] and "2 hours" in lines[3]
    assert "[?] 5" in lines[4] and "[bold]weird" in lines[4]
    assert_safe(lines)


def test_stage_plan_defaults_to_not_started_and_fits_narrow():
    plan = StagePlan()
    plan.set_stages({}, None, None)
    text = plan.render_text(36).plain
    assert text.count("[ ]") == 5 and "not started" in text and "2 min" not in text


# -- ResourcePanel -------------------------------------------------------------------------------------------

GIB = 1024**3


def test_resources_thresholds_and_tags():
    facts = {
        "disk_free_bytes": 1 * GIB, "disk_needed_bytes": 2 * GIB,
        "trainer_rss_bytes": 3 * GIB, "mem_available_bytes": 1 * GIB, "mem_total_bytes": 16 * GIB,
        "cpu_percent": 55.0, "gpu_mem_bytes": None, "heartbeat_age_s": 200.0,
    }
    panel = ResourcePanel()
    lines = run(panel, lambda w: w.set_facts(facts))
    disk, mem, rss, cpu, gpu, beat = lines[:6]
    assert "1.0 GiB free, needs 2.0 GiB" in disk and "LOW" in disk
    assert "HIGH" in mem and "|" in mem
    assert "3.0 GiB" in rss
    assert "55%" in cpu
    assert "n/a" in gpu
    assert "STALE" in beat and "3 min ago" in beat
    text = panel.render_text(80)
    red = [text.plain[s.start:s.end] for s in text.spans if "red" in str(s.style)]
    assert any("LOW" in r for r in red) and any("STALE" in r for r in red)


def test_resources_amber_and_ok_and_missing():
    panel = ResourcePanel()
    panel.set_facts({"disk_free_bytes": 3 * GIB, "disk_needed_bytes": 2 * GIB, "heartbeat_age_s": 45})
    text = panel.render_text(80).plain
    assert "WARN" in text and "LATE" in text
    panel.set_facts({"disk_free_bytes": 100 * GIB, "disk_needed_bytes": 1 * GIB, "heartbeat_age_s": 2})
    text = panel.render_text(80).plain
    assert "LOW" not in text and "LATE" not in text and "2 s ago" in text
    panel.set_facts({})
    assert panel.render_text(80).plain.count("n/a") >= 6
    panel.set_facts({"cpu_percent": "[bold]\x1b[2J", "disk_free_bytes": float("nan"), "heartbeat_age_s": True})
    text = panel.render_text(80).plain
    assert "[bold]" not in text and "\x1b" not in text and text.count("n/a") >= 6  # only numbers are shown


# -- EventLog ------------------------------------------------------------------------------------------------


def test_event_log_hostile_entries_are_literal():
    entries = [("sample", s) for s in HOSTILE] + [("warning", "grad norm 1200 [red]x[/red]")]
    lines = run(EventLog(), lambda w: w.add_entries(entries), size=(80, 24))
    text = "\n".join(lines)
    for shown in HOSTILE_SHOWN:
        assert shown in text
    assert "[red]x[/red]" in text
    assert_safe(lines)


def test_event_log_is_bounded():
    log = EventLog(max_lines=50)

    def feed(w):
        w.add_entries([("info", f"line {i}") for i in range(300)])

    lines = run(log, feed)
    assert len(log.lines) == 50
    assert any("line 299" in line for line in lines)


# -- AlertBanner ---------------------------------------------------------------------------------------------


def test_alert_banner_show_and_clear():
    banner = AlertBanner()

    async def go():
        async with Harness(banner).run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert banner.display is False or banner.size.height == 0  # hidden while clear
            banner.show("Stage 2 u_val [bold]FAILURE[/] \x1b]52;c;eA==\x07", "critical")
            await pilot.pause()
            line = screen_lines(banner)[0]
            assert "CRITICAL: Stage 2 u_val [bold]FAILURE[/]" in line
            assert not CONTROL.search(line)
            assert banner.has_class("-critical") and banner.size.height >= 1
            banner.show("disk low", "warning")
            await pilot.pause()
            assert "WARNING: disk low" in screen_lines(banner)[0] and not banner.has_class("-critical")
            banner.clear()
            await pilot.pause()
            assert not banner.shown and banner.size.height == 0

    asyncio.run(go())


def test_every_widget_has_css_and_docstring():
    for cls in (MetricChart, SparklineStrip, MatrixPanel, StagePlan, ResourcePanel, EventLog, AlertBanner):
        assert cls.__doc__ and cls.DEFAULT_CSS.strip()


# -- colour: 16 colours and NO_COLOR -------------------------------------------------------------------------


def _colours(text) -> set:
    out = set()
    for span in text.spans:
        style = span.style
        if isinstance(style, str):
            from rich.style import Style

            style = Style.parse(style)
        for c in (style.color, style.bgcolor):
            if c is not None:
                out.add(c)
    return out


def test_chart_uses_only_the_16_standard_colours():
    chart = MetricChart("R")
    steps = list(range(100))
    chart.set_data([("R", steps, [i / 100 for i in steps]), ("x", steps, [0.5] * 100)], bands=R_ZONES,
                   hlines=[(0.3, "goldilocks")], ylim=(0, 1))
    colours = _colours(chart.render_plain(80, 20))
    assert colours, "expected coloured series"
    for c in colours:
        assert c.is_default or (c.number is not None and c.number < 16), c  # survives a 16-colour terminal


def test_no_color_keeps_every_tag_and_marker(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    rows = _rows()

    async def go():
        panel, chart = MatrixPanel(), MetricChart("loss")

        class Two(App):
            def compose(self):
                yield panel
                yield chart

        app = Two()
        async with app.run_test(size=(80, 24)) as pilot:
            panel.set_rows(rows, 2, None)
            chart.set_data([("total", [1, 2, 3], [3.0, 2.0, 1.0]), ("ce", [1, 2, 3], [2.5, 1.5, 0.5])])
            await pilot.pause()
            await pilot.pause()
            strips = [panel.render_line(y) for y in range(panel.size.height)]
            text = "\n".join("".join(s.text for s in strip) for strip in strips)
            for tag in (" OK ", "WARN", "FAIL", ".."):
                assert tag in text
            # Textual's NO_COLOR filter (applied later, at the compositor) removes colour, so the tags and
            # the series' marker shapes have to carry the meaning on their own.
            assert app.no_color
            header = "".join(s.text for s in chart.render_line(0))
            assert "\u283f total" in header and "+ ce" in header

    asyncio.run(go())


def test_ascii_mode_every_widget_draws_ascii_only(monkeypatch):
    monkeypatch.setenv("KSSM_ASCII", "1")
    widgets = [MetricChart("R", id="c"), SparklineStrip(id="s"), MatrixPanel(id="m"), StagePlan(id="p"),
               ResourcePanel(id="r")]

    class All(App):
        CSS = "MetricChart { height: 14; }"

        def compose(self):
            yield from widgets

    async def go():
        app = All()
        async with app.run_test(size=(60, 50)) as pilot:
            steps = list(range(300))
            widgets[0].set_data([("R", steps, [i / 300 for i in steps]), ("x", steps, [0.5] * 300)], bands=R_ZONES)
            widgets[1].set_data({"loss": [5.0, 3.0, 4.0], "long metric name here": [1.0, 2.0]})
            widgets[2].set_rows(_rows(), 2, StageAssessment(2, [], Verdict.WARNING, Action.INVESTIGATE, "x" * 200))
            widgets[3].set_stages({1: "passed", 2: "running"}, 2, 1)
            widgets[4].set_facts({"mem_available_bytes": 1, "mem_total_bytes": 2, "cpu_percent": 50})
            await pilot.pause()
            await pilot.pause()
            for w in widgets:
                assert w.size.height > 0
                text = "\n".join(screen_lines(w))
                assert text.isascii(), (type(w).__name__, sorted({c for c in text if ord(c) > 127}))

    asyncio.run(go())


def test_chart_takes_array_array_and_keeps_no_buffer_export():
    import array

    steps = array.array("d", range(1000))
    values = array.array("d", (math.sin(i / 50) for i in range(1000)))
    chart = MetricChart("u")
    chart.set_data([("u", steps, values)])
    assert chart.point_count == 1000
    chart.render_plain(80, 16)
    steps.append(1000.0)  # the caller keeps appending: no BufferError from a view the chart still holds
    values.append(0.5)
    chart.set_data([("u", steps, values)])
    assert "u 0.5" in chart.render_plain(80, 16).plain.splitlines()[0]


def test_chart_widens_to_the_band_the_data_is_in_and_to_nearby_clamps():
    steps = list(range(100))
    chart = MetricChart("R")
    chart.set_data([("R", steps, [0.01 + 0.0004 * i for i in steps])], bands=R_ZONES)
    text = chart.render_plain(60, 12).plain
    assert "Unformed" in text and "0.1" in text  # the whole 0-0.10 zone is shown and named
    assert "Balance" not in text  # but not the zones far above: R near 0 stays readable
    chart = MetricChart("u_val")
    chart.set_data([("u", steps, [0.13 + 0.02 * i for i in steps])], hlines=[(0.1, "clamp floor"), (10, "clamp ceiling")])
    text = chart.render_plain(60, 12).plain
    assert "clamp floor" in text and "clamp ceiling" not in text


def test_current_matrix_stage_is_bold_and_selected_stage_reversed():
    panel, plan = MatrixPanel(), StagePlan()

    class Two(App):
        def compose(self):
            yield plan
            yield panel

    async def go():
        async with Two().run_test(size=(80, 24)) as pilot:
            panel.set_rows(_rows(), 2, None)
            plan.set_stages({1: "passed"}, 2, 3)
            await pilot.pause()
            await pilot.pause()

            def segment_with(widget, needle):
                """The style of the segment that draws ``needle``."""
                for y in range(widget.size.height):
                    for seg in widget.render_line(y):
                        if needle in seg.text:
                            return seg.style
                raise AssertionError(needle)

            assert segment_with(panel, "Val PPL").bold  # stage 2 is current
            assert not segment_with(panel, "Loss").bold
            assert segment_with(plan, "First milestone").reverse  # stage 3 is selected
            assert not segment_with(plan, "Smoke test").reverse

    asyncio.run(go())


def test_matrix_panel_marks_provisional_cells():
    """A verdict judged before its stage's milestone reads 'WARN?' / 'FAIL?' (no bold): a verdict so far."""
    rows = [MatrixRow(3, "R zones", Verdict.FAILURE, "locked so far", provisional=True),
            MatrixRow(3, "Val PPL", Verdict.WARNING, "final", provisional=False)]
    panel = MatrixPanel()
    panel.set_rows(rows, 3, None)
    text = panel.render_text(80)
    lines = text.plain.splitlines()
    assert "FAIL?" in next(line for line in lines if "R zones" in line)
    final = next(line for line in lines if "Val PPL" in line)
    assert "WARN " in final and "WARN?" not in final
    styles = {text.plain[s.start:s.end].strip(): str(s.style) for s in text.spans}
    assert "bold" not in styles["FAIL?"] and "bold" in styles["WARN"]
