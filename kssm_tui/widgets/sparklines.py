"""SparklineStrip: one line per metric with its name, a sparkline of recent values and the last value."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from ..safe_text import ascii_mode, clean, one_line

BLOCKS = " \u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"  # single-width block glyphs, as Textual's Sparkline
ASCII_RAMP = " _.-:=+*#"  # the same nine levels in ASCII for KSSM_ASCII=1 or non-UTF-8 terminals


def resample(values: Sequence[float | None], width: int) -> list[float]:
    """The finite values cut to at most ``width`` points (mean of each bucket), oldest first."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if width <= 0:
        return []
    if len(finite) <= width:
        return finite
    out = []
    n = len(finite)
    for i in range(width):
        lo, hi = i * n // width, (i + 1) * n // width
        chunk = finite[lo:max(hi, lo + 1)]
        out.append(sum(chunk) / len(chunk))
    return out


def spark(values: Sequence[float], ramp: str) -> str:
    """Map values to the ramp's levels, lowest value -> first non-blank level, highest -> the last."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    top = len(ramp) - 1
    if hi - lo <= 0:
        return ramp[top // 2] * len(values)
    return "".join(ramp[1 + int((v - lo) / (hi - lo) * (top - 1) + 0.5)] for v in values)


def format_last(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.2e}"
    return f"{v:.4g}" if a >= 1 else f"{v:.3g}"


class SparklineStrip(Widget):
    """Compact strip of sparklines, one metric per line: ``name  ▁▂▄▆█  last``.

    ``set_data({"loss": [...], "R": [...]})``; None/NaN values are skipped; the line keeps the last value's
    text even when the terminal is narrow. ASCII when ``KSSM_ASCII=1`` or the terminal is not UTF-8.
    """

    DEFAULT_CSS = """
    SparklineStrip {
        text-wrap: nowrap;
        text-overflow: clip;
        height: auto;
        min-height: 1;
    }
    SparklineStrip > .sparkline-strip--bar {
        color: $accent;
    }
    SparklineStrip > .sparkline-strip--name {
        text-style: bold;
    }
    """
    COMPONENT_CLASSES = {"sparkline-strip--bar", "sparkline-strip--name"}

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._values: dict[str, list[float]] = {}

    def set_data(self, values: dict[str, Sequence[float | None]]) -> None:
        self._values = {clean(k): list(v) for k, v in values.items()}
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return max(1, len(self._values))

    def render(self) -> Text:
        return self.render_lines_text(self.size.width)

    def render_lines_text(self, width: int) -> Text:
        if not self._values:
            return Text("waiting for data", style="dim", end="")
        ramp = ASCII_RAMP if ascii_mode() else BLOCKS
        name_w = min(max(len(k) for k in self._values), 12)
        lasts = {k: format_last(next((float(x) for x in reversed(v) if x is not None and math.isfinite(x)), None))
                 for k, v in self._values.items()}
        last_w = max(len(s) for s in lasts.values())
        spark_w = max(0, width - name_w - last_w - 2)
        bar_style = self._style("sparkline-strip--bar")
        out = Text(no_wrap=True, overflow="crop", end="")
        for i, (name, vals) in enumerate(self._values.items()):
            if i:
                out.append("\n")
            out.append(one_line(name, name_w).ljust(name_w), style=self._style("sparkline-strip--name"))
            out.append(" ")
            line = spark(resample(vals, spark_w), ramp)
            out.append(line.ljust(spark_w), style=bar_style)
            out.append(" " + lasts[name].rjust(last_w))
        return out

    def _style(self, component: str):
        try:
            return self.get_component_rich_style(component)
        except Exception:  # not mounted (unit tests render without an app)
            return ""
