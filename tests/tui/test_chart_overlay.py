"""MetricChart's overlay of runs: a stable colour + marker per run slot, a legend naming the runs, reference
curves dashed and never smoothed, TensorBoard's debiased EMA with the raw series faint beneath."""

from __future__ import annotations

import numpy as np

from kssm_core.reports.overlay import debiased_ema
from kssm_tui.widgets.chart import (REFERENCE_GLYPH, RUN_COLORS, RUN_GLYPHS, RUN_MARKERS, MetricChart, dashes)

STEPS = list(range(0, 60))
A = [8.0 - 0.05 * s + (0.3 if s % 3 else -0.3) for s in STEPS]
B = [7.0 - 0.04 * s + (0.2 if s % 2 else -0.2) for s in STEPS]


def overlay(**kw) -> MetricChart:
    chart = MetricChart("loss")
    chart.set_data([("stage2", STEPS, A), ("seed7", STEPS, B)], run_slots=kw.pop("slots", [0, 1]), **kw)
    return chart


def test_legend_names_every_run_with_its_glyph_and_the_reference():
    chart = overlay(references=[("paper", [0, 30, 59], [9.0, 6.0, 5.0])])
    head = chart.render_plain(100, 20).plain.splitlines()[0]
    assert f"{RUN_GLYPHS[0]} stage2 " in head and f"{RUN_GLYPHS[1]} seed7 " in head
    assert f"{REFERENCE_GLYPH} paper" in head


def test_a_run_keeps_its_slot_whatever_its_position():
    chart = overlay(slots=[3, 5])
    prepared, _ = chart._prepare(100)  # noqa: SLF001 - what _build draws
    styles = [p[3] for p in prepared if p[3].kind == "main"]
    assert [(s.color, s.marker) for s in styles] == [(RUN_COLORS[3], RUN_MARKERS[3]), (RUN_COLORS[5], RUN_MARKERS[5])]
    head = chart.render_plain(100, 20).plain.splitlines()[0]
    assert f"{RUN_GLYPHS[3]} stage2" in head and f"{RUN_GLYPHS[5]} seed7" in head


def test_runs_stay_apart_without_colour():
    text = overlay(slots=[1, 2]).render_plain(100, 20).plain
    body = "\n".join(text.splitlines()[1:])
    assert "+" in body and "x" in body  # two marker shapes drawn, not two colours of one


def test_smoothing_is_tensorboards_ema_with_the_raw_series_faint():
    chart = overlay(smoothing=True, ema_weight=0.6)
    prepared, _ = chart._prepare(200)  # wide: no downsampling, so the points are the series' own
    main = [p for p in prepared if p[3].kind == "main"]
    raw = [p for p in prepared if p[3].kind == "raw"]
    np.testing.assert_allclose(main[0][2], debiased_ema(A, 0.6))
    np.testing.assert_allclose(raw[0][2], A)  # the raw values, drawn under the line
    assert raw[0][3].color == main[0][3].color
    text = chart.render_plain(100, 20)
    assert "EMA 0.6" in text.plain.splitlines()[0]
    assert any("dim" in str(span.style) for span in text.spans)  # the raw points are faint


def test_references_are_dashed_and_never_smoothed():
    ref = ("paper", [0, 59], [9.0, 3.0])
    chart = overlay(smoothing=True, ema_weight=0.9, references=[ref])
    prepared, _ = chart._prepare(100)
    (r,) = [p for p in prepared if p[3].kind == "ref"]
    np.testing.assert_allclose(r[2], np.interp(r[1], [0, 59], [9.0, 3.0]))  # on the raw line: not smoothed
    gaps = np.diff(r[1])
    assert gaps.max() > 2 * gaps.min()  # dashes: runs of points with gaps between them
    x, y = dashes(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 10)
    assert len(x) < 20 and np.allclose(x, y)


def test_without_overlay_arguments_nothing_changes():
    plain = MetricChart("loss")
    plain.set_data([("stage2", STEPS, A), ("seed7", STEPS, B)])
    again = MetricChart("loss")
    again.set_data([("stage2", STEPS, A), ("seed7", STEPS, B)], references=(), run_slots=None, ema_weight=None)
    assert plain.render_plain(90, 18) == again.render_plain(90, 18)


def test_overlay_in_ascii_mode(monkeypatch):
    monkeypatch.setenv("KSSM_ASCII", "1")
    text = overlay(smoothing=True, ema_weight=0.6, references=[("paper", [0, 59], [9.0, 3.0])]).render_plain(100, 20)
    assert all(ord(ch) < 128 for ch in text.plain)


def test_log_axis_with_overlay_and_reference():
    chart = MetricChart("val PPL")
    chart.set_data([("a", [1, 2, 3], [900.0, 500.0, 0.0]), ("b", [1, 2, 3], [800.0, 450.0, 300.0])], run_slots=[0, 1],
                   references=[("paper", [1, 3], [1000.0, 200.0])], log_y=True, smoothing=True, ema_weight=0.5,
                   x_label="active time (min)")
    text = chart.render_plain(100, 20).plain
    assert "chart error" not in text and "(1 <= 0 not shown)" in text and "active time (min)" in text


def test_a_growing_series_is_smoothed_incrementally_and_equals_the_whole():
    chart = MetricChart("loss")
    y = list(np.random.default_rng(2).normal(5.0, 1.0, size=3000))
    chart.set_data([("a", range(2000), y[:2000])], run_slots=[0], smoothing=True, ema_weight=0.9)
    chart._arrays()  # noqa: SLF001
    chart.set_data([("a", range(3000), y)], run_slots=[0], smoothing=True, ema_weight=0.9)
    chart._arrays()
    np.testing.assert_allclose(chart._smoothed[0], debiased_ema(y, 0.9), rtol=1e-12)
    assert chart._ema.smoothed_count("a") == 3000  # noqa: SLF001
    rewound = y[:1500] + [9.0] * 10  # a resume replaced the tail: smoothed afresh
    chart.set_data([("a", range(1510), rewound)], run_slots=[0], smoothing=True, ema_weight=0.9)
    chart._arrays()
    np.testing.assert_allclose(chart._smoothed[0], debiased_ema(rewound, 0.9), rtol=1e-12)


def test_every_slot_and_the_reference_name_a_colour_rich_can_draw():
    from rich.console import Console
    from rich.style import Style

    from kssm_tui.widgets.chart import REFERENCE_COLOR, rich_color

    for color in RUN_COLORS + (REFERENCE_COLOR,):
        Style.parse(rich_color(color))  # "gray+" / "blue+" are plotext's names: Rich raises MissingStyle on them
    chart = MetricChart("loss")
    chart.set_data([(f"r{k}", STEPS, A) for k in range(8)], run_slots=list(range(8)),
                   references=[("paper", [0, 59], [9.0, 3.0])])
    Console(file=__import__("io").StringIO(), width=300, color_system="standard").print(chart.render_plain(300, 20))


def test_a_legend_too_long_for_the_title_line_gets_a_line_of_its_own():
    chart = MetricChart("Val PPL")
    chart.set_data([("results/stage2", STEPS, A), ("ablation/stage2", STEPS, B)], run_slots=[0, 1], smoothing=True,
                   ema_weight=0.6)
    lines = chart.render_plain(50, 20).plain.splitlines()
    assert lines[0].startswith("Val PPL (EMA 0.6")
    assert "results/stage2" in lines[1] and "ablation/stage2" in lines[1]
    assert len(lines) <= 20
    short = chart.render_plain(50, 6).plain.splitlines()  # no rows to spare: one line, cut
    assert "results/stage2" in short[0] and len(short) <= 6
