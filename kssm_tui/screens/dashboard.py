"""The one screen: stage plan, current run, charts, decision matrix, resources and recent events.

It only copies already-computed payloads (StageInfo, RunView, facts) into widgets; every
widget update is skipped when its input did not change, so an idle run costs no rendering.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane

from kssm_core.reports.overlay import DEFAULT_SMOOTHING

from ..messages import RunView, StageInfo
from ..safe_text import clean
from ..widgets.alert_banner import AlertBanner
from ..widgets.chart import MetricChart
from ..widgets.event_log import EventLog
from ..widgets.matrix_panel import MatrixPanel
from ..widgets.resources import ResourcePanel
from ..widgets.sparklines import SparklineStrip
from ..widgets.stage_plan import StagePlan

CHARTS = (("loss", "Loss"), ("ppl", "Val PPL"), ("R", "R"), ("u", "u_val"), ("grad", "Grad"))
STATE_STYLE = {"running": "bold cyan", "passed": "bold green", "completed": "green", "warning": "bold yellow",
               "failed": "bold red", "crashed": "bold red", "interrupted": "yellow", "stale lock": "bold yellow"}


class Dashboard(Screen):
    """The cockpit's main screen."""

    def __init__(self) -> None:
        super().__init__(id="dashboard")
        self._last: dict[str, object] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield AlertBanner(id="alert")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield StagePlan(id="plan")
                yield Static(id="run-info")
                yield ResourcePanel(id="resources")
            with Vertical(id="right"):
                with TabbedContent(id="charts"):
                    for key, label in CHARTS:
                        with TabPane(label, id=f"tab-{key}"):
                            yield MetricChart(label, id=f"chart-{key}")
                yield SparklineStrip(id="sparks")
        with Horizontal(id="bottom"):
            yield MatrixPanel(id="matrix")
            yield EventLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#alert").clear()

    def on_resize(self, event) -> None:
        self.set_class(event.size.height < 30, "-short")  # see app.tcss: borders go, rows stay

    def _changed(self, key: str, value: object) -> bool:
        if self._last.get(key) == value:
            return False
        self._last[key] = value
        return True

    # ---- updates from the App ---------------------------------------------------------------------
    def set_title(self, text: Text) -> None:
        if self._changed("title", text.plain):
            self.query_one("#title", Static).update(text)

    def show_stages(self, stages: dict[int, StageInfo], current: int | None, selected: int | None) -> None:
        states = {n: s.state for n, s in stages.items()}
        if self._changed("stages", (tuple(sorted(states.items())), current, selected)):
            self.query_one("#plan").set_stages(states, current, selected)

    def show_view(self, view: RunView, log_y: bool, smoothing: bool, overlay=None, references=None) -> None:
        if view.replace_log:
            self.query_one("#events", EventLog).clear()
        if view.new_entries:
            self.query_one("#events").add_entries(view.new_entries)
        self.show_charts(view, log_y, smoothing, overlay, references)
        sparks_key = {k: tuple(v) for k, v in view.sparks.items()}
        if self._changed("sparks", sparks_key):
            self.query_one("#sparks").set_data(view.sparks)
        rows_key = tuple((r.stage, r.metric, r.verdict, r.reason) for r in view.matrix_rows)
        summary = view.assessment.summary if view.assessment is not None else None
        if self._changed("matrix", (rows_key, summary, view.stage)):
            self.query_one("#matrix").set_rows(view.matrix_rows, view.stage, view.assessment)
        self.query_one("#run-info", Static).update(self.run_info(view))

    def show_charts(self, view: RunView, log_y: bool, smoothing: bool, overlay=None, references=None) -> None:
        """One run's charts, or with `overlay` (kssm_tui.overlay.OverlayView, built in the runs worker) the
        marked runs on every chart; `references`: chart key -> [(name, steps, values)] drawn dashed."""
        for key, _ in CHARTS:
            spec = view.charts[key]
            refs = (references or {}).get(key, [])
            log = log_y and spec.log_ok
            chart = self.query_one(f"#chart-{key}")
            if overlay is not None:
                oc = overlay.charts[key]
                sig = ("overlay", overlay.serial, log, len(refs), tuple(spec.hlines))
                if self._changed(f"chart-{key}", sig):
                    chart.set_data(
                        oc.series, hlines=spec.hlines, bands=spec.bands, log_y=log, smoothing=overlay.smoothing,
                        y_label=spec.y_label, run_slots=oc.slots, references=refs, smoothed=oc.smoothed,
                        ema_weight=overlay.ema_weight if overlay.smoothing else None, x_label=overlay.x_label,
                    )
                continue
            # Smoothing: the overlay's debiased EMA, over every point in the tail worker (spec.smoothed), the raw
            # series faint; until a view built with smoothing arrives the chart smooths the points it has.
            smoothed = spec.smoothed if smoothing else None
            sig = (tuple((n, len(xs), xs[-1] if xs else None, ys[-1] if ys else None) for n, xs, ys in spec.series),
                   log, smoothing, smoothed is not None, str(view.run_dir), len(refs))
            if self._changed(f"chart-{key}", sig):
                chart.set_data(
                    spec.series, hlines=spec.hlines, bands=spec.bands, log_y=log, smoothing=smoothing,
                    ema_weight=DEFAULT_SMOOTHING if smoothing else None, smoothed=smoothed, y_label=spec.y_label,
                    references=refs,
                )

    def run_info(self, view: RunView) -> Text:
        t = Text(no_wrap=False)
        t.append("Run ", style="bold")
        t.append(clean(str(view.run_dir)))
        t.append("\n")
        t.append(view.state.upper(), style=STATE_STYLE.get(view.state, ""))
        step = "-" if view.last_step is None else str(view.last_step)
        t.append(f"  step {step} / {view.max_steps or '-'}")
        if view.lock_state == "live" and view.lock_pid:
            t.append(f"  PID {view.lock_pid}")
        elif view.lock_state == "stale":
            t.append("  stale lock", style="yellow")
        if view.autopilot_line:  # it drives the runs root: what it does comes before the runbook's advice
            t.append("\n")
            t.append(clean(view.autopilot_line), style="bold magenta")
        # Next first: at 80x24 the panel has four rows, and what to do matters more than why.
        if view.recommendation and view.recommendation != view.state_reason and not view.autopilot_pid:
            t.append("\nNext: ", style="bold")
            t.append(clean(view.recommendation))
        t.append("\n")
        t.append(clean(view.state_reason), style="dim")
        if view.bad_lines:
            t.append(f"\n{view.bad_lines} unreadable line(s) skipped", style="yellow")
        if view.trainer_out_tail:
            t.append("\ntrainer.out:\n", style="bold")
            t.append(view.trainer_out_tail, style="dim")
        return t

    def show_facts(self, facts: dict) -> None:
        if self._changed("facts", tuple(sorted(facts.items()))):
            self.query_one("#resources").set_facts(facts)

    def alert(self, text: str | None, severity: str = "warning") -> None:
        banner = self.query_one("#alert")
        if text is None:
            if self._changed("alert", None):
                banner.clear()
        elif self._changed("alert", (text, severity)):
            banner.show(text, severity)
