"""Stand-ins for dashboard widgets that are not installed yet, and the loader that prefers the real ones.

The widgets live in kssm_tui/widgets/ (one per file) and are built alongside the App. Each
stand-in implements the same setter as the real widget and shows a plain-text summary,
so the dashboard works (and its keys can be tested) whichever widgets exist.
"""

from __future__ import annotations

import importlib

from rich.text import Text
from textual.widgets import Static

from ..safe_text import clean


class _Stand(Static):
    DEFAULT_CSS = "_Stand { height: auto; }"

    def _show(self, text: str) -> None:
        self.update(Text(clean(text)))


class MetricChart(_Stand):
    def __init__(self, title: str, **kw):
        super().__init__(**kw)
        self.title = title

    def set_data(self, series, *, hlines=(), bands=(), log_y=False, smoothing=False, y_label=""):
        parts = [f"{name}: {ys[-1]:.4g} @ {xs[-1]}" for name, xs, ys in series if ys]
        self._show(f"{self.title} (log={log_y}, smooth={smoothing})  " + ("; ".join(parts) or "no data"))


class SparklineStrip(_Stand):
    def set_data(self, values):
        self._show("  ".join(f"{k} {v[-1]:.3g}" for k, v in values.items() if v))


class MatrixPanel(_Stand):
    def set_rows(self, rows, current_stage, assessment):
        lines = [f"S{r.stage} {r.metric}: {r.verdict.value} - {r.reason}" for r in rows]
        if assessment is not None:
            lines.insert(0, assessment.summary)
        self._show("\n".join(lines) or "no matrix yet")


class StagePlan(_Stand):
    def set_stages(self, states, current, selected):
        self._show("\n".join(f"{'>' if n == selected else ' '} Stage {n}: {s}" for n, s in sorted(states.items())))


class ResourcePanel(_Stand):
    def set_facts(self, facts):
        self._show("  ".join(f"{k}={v}" for k, v in facts.items() if v is not None))


class EventLog(_Stand):
    def __init__(self, max_lines: int = 200, **kw):
        super().__init__(**kw)
        self._lines: list[str] = []
        self._max = max_lines

    def add_entries(self, entries):
        self._lines = (self._lines + [f"{k}: {t}" for k, t in entries])[-self._max:]
        self._show("\n".join(self._lines[-8:]))

    def clear(self):
        self._lines = []
        self._show("")


class AlertBanner(_Stand):
    def show(self, text: str, severity: str) -> None:
        self._show(f"{severity.upper()}: {text}")
        self.display = True

    def clear(self) -> None:
        self._show("")
        self.display = False


def load(module: str, name: str):
    """kssm_tui.widgets.<module>.<name> if it imports, else the stand-in above."""
    try:
        return getattr(importlib.import_module(f"kssm_tui.widgets.{module}"), name)
    except (ImportError, AttributeError):
        return globals()[name]
