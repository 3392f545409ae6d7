"""MetricChart: a plotext line chart of one or more metric series against training step.

Overlay of runs (``set_data(..., run_slots=...)``): each series is a run drawn in its slot's colour and marker
(eight of each, so runs stay apart without colour; the header is the legend, naming each run with its glyph);
``references`` are drawn dashed and never smoothed. Smoothing is TensorBoard's debiased EMA
(kssm_core.reports.overlay.debiased_ema_state, the one implementation; ``ema_weight``, 0.6 by default) over every
raw point, the raw series drawn faint (dim dots) beneath, for one run as for an overlay; ``smoothed`` hands in
those smoothed lines already computed (the cockpit builds an overlay's in its worker thread, so a render only thins
and draws). Without those arguments the chart draws exactly as before.

A thin wrapper of our own rather than textual-plotext, because the cockpit needs what that widget leaves to the
caller: downsampling (a week-long run has millions of points), a render cache keyed on data and size, a lock
around plotext's global figure, our own log axis (plotext's has problems with ticks and non-positive values),
ASCII output for terminals that mangle box-drawing glyphs, and a header that reads without colour.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import numpy as np
import plotext as plt
from rich.text import Text

from textual.widget import Widget

from kssm_core.reports.overlay import DEFAULT_SMOOTHING, GrowingEma, bucket_mean

from ..safe_text import ascii_mode, clean, one_line

# plotext keeps one global figure; every build goes through this lock and starts from clear_figure().
_PLOTEXT_LOCK = threading.Lock()

# Standard 16-colour names: they survive 256 and 16 colour terminals; NO_COLOR is Textual's Monochrome filter.
SERIES_COLORS = ("cyan", "yellow", "magenta", "green")
# Distinct marker shapes so series stay apart without colour. Header glyphs name them in the title line.
SERIES_MARKERS = ("braille", "+", "x", "o")
SERIES_GLYPHS = ("\u283f", "+", "x", "o")
ASCII_MARKERS = ("*", "+", "x", "o")
HLINE_COLOR = "red"
# Overlay slots: a run keeps its slot (colour + marker + header glyph) for as long as it is overlaid.
RUN_COLORS = ("cyan", "yellow", "magenta", "green", "blue+", "red+", "white", "gray+")
RUN_MARKERS = ("braille", "+", "x", "o", "#", "@", "%", "&")
RUN_GLYPHS = ("\u283f", "+", "x", "o", "#", "@", "%", "&")
RUN_ASCII_MARKERS = ("*", "+", "x", "o", "#", "@", "%", "&")
RAW_MARKER, RAW_ASCII_MARKER = "\u00b7", "."  # the faint raw series under a smoothed one
REFERENCE_COLOR = "gray+"
REFERENCE_MARKER = "-"
REFERENCE_GLYPH = "--"
BAND_COLORS = ("blue", "green", "yellow", "magenta", "cyan", "red", "white")
# plotext's names that Rich does not know (or knows as another shade), as the Rich colour of the same ANSI code.
_RICH_COLORS = {"blue+": "bright_blue", "red+": "bright_red", "green+": "bright_green", "cyan+": "bright_cyan",
                "magenta+": "bright_magenta", "gray": "bright_black", "gray+": "white", "white": "bright_white"}


def rich_color(plotext_color: str) -> str:
    """The Rich style of a plotext colour name (the header and the runs view name runs in the drawn colour)."""
    return _RICH_COLORS.get(plotext_color, plotext_color)

# Box-drawing and block glyphs plotext uses, mapped to ASCII for KSSM_ASCII=1 or non-UTF-8 terminals.
_ASCII_TABLE = str.maketrans(
    {
        **{c: "-" for c in "\u2500\u2501\u2504\u2508\u254c"},
        **{c: "|" for c in "\u2502\u2503\u2506\u250a\u254e"},
        **{c: "+" for c in "\u250c\u2510\u2514\u2518\u251c\u2524\u252c\u2534\u253c\u256d\u256e\u2570\u256f"
           "\u250f\u2513\u2517\u251b\u2523\u252b\u2533\u253b\u254b"},
        "\u2022": "o",
        "\u2026": "...",
    }
)

MIN_PLOT_WIDTH = 24
MIN_PLOT_HEIGHT = 5  # frame (2) + x ticks (1) + at least 2 rows of data

Series = tuple[str, Sequence[int], Sequence[float]]


class _Style(tuple):
    """(color, marker, kind) of one prepared line; kind: "main", "raw" (faint, under its smoothed line), "ref"."""

    __slots__ = ()

    def __new__(cls, color: str, marker: str, kind: str = "main"):
        return super().__new__(cls, (color, marker, kind))

    color = property(lambda self: self[0])
    marker = property(lambda self: self[1])
    kind = property(lambda self: self[2])


def _as_floats(seq: Sequence, memo: dict[int, np.ndarray] | None) -> np.ndarray:
    """A float array of ``seq`` (None -> NaN); array.array('d') and numpy arrays convert without a copy.

    ``memo`` converts a list shared by several series (typically the steps) only once.
    """
    if memo is not None and id(seq) in memo:
        return memo[id(seq)]
    arr = np.asarray(seq, dtype=float)
    if memo is not None:
        memo[id(seq)] = arr
    return arr


def finite_xy(
    steps: Sequence[int], values: Sequence[float | None], memo: dict[int, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values as float arrays with None / NaN / inf pairs dropped (lengths are cut to match)."""
    n = min(len(steps), len(values))
    if n == 0:
        return np.empty(0), np.empty(0)
    x = _as_floats(steps, memo)[:n]
    y = _as_floats(values, memo)[:n]
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def downsample(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """At most 2 points per bucket: the min and the max of each run of consecutive points.

    Keeps spikes (a NaN-free loss spike still shows) while capping what plotext has to draw at ~2 per column.
    """
    n = len(x)
    if buckets <= 0 or n <= 2 * buckets:
        return x, y
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    edges = np.unique(edges)
    lo = np.minimum.reduceat(y, edges)
    hi = np.maximum.reduceat(y, edges)
    ends = np.append(edges[1:], n) - 1
    mid = (x[edges] + x[ends]) / 2.0
    xs = np.repeat(mid, 2)
    ys = np.empty(2 * len(edges))
    # Both points of a pair sit in the same column, so min-then-max draws the same bar as the true order would.
    ys[0::2] = lo
    ys[1::2] = hi
    return xs, ys


def dashes(x: np.ndarray, y: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """A line as dashes: about one point per column along it (interpolated), every other pair of columns left out."""
    if len(x) < 2:
        return x, y
    n = max(4, 2 * columns)
    xs = np.linspace(float(x[0]), float(x[-1]), n)
    keep = (np.arange(n) // 3) % 2 == 0
    return xs[keep], np.interp(xs[keep], x, y)


def format_value(v: float) -> str:
    """Compact number for the header: 4 significant digits, scientific notation outside 0.001-99999."""
    if v != v:  # NaN
        return "nan"
    a = abs(v)
    if a == 0:
        return "0"
    if 1e-3 <= a < 1e5:
        return f"{v:.4g}"
    return f"{v:.2e}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick positions (1, 2, 2.5 or 5 times a power of ten) inside [lo, hi]: about ``count``, at least 2."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    ticks: list[float] = []
    for want in (count, count * 2, count * 4):
        raw = (hi - lo) / max(want - 1, 1)
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        t = math.ceil(lo / step) * step
        ticks = []
        while t <= hi + step * 1e-9 and len(ticks) < 4 * want:
            ticks.append(round(t, 12))
            t += step
        if len(ticks) >= 2:
            return ticks
    return ticks or [lo]


def compact(v: float) -> str:
    """Short tick label: 1500 -> 1.5k, 2000000 -> 2M, 0.25 -> 0.25."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:.4g}"


def log_ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], list[str]]:
    """Tick positions (in log10 units) and labels (in real units) for a log axis spanning [lo, hi]."""
    if hi <= lo:
        return [lo], [compact(10**lo)]
    for mantissas in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0)):
        ticks = [
            math.log10(m) + d
            for d in range(math.floor(lo), math.ceil(hi) + 1)
            for m in mantissas
            if lo <= math.log10(m) + d <= hi
        ]
        if len(ticks) >= 2:
            break
    if len(ticks) > count + 1:
        stride = math.ceil(len(ticks) / count)
        ticks = ticks[::stride]
    if len(ticks) < 2:
        ticks = [lo + (hi - lo) * i / (count - 1) for i in range(count)]
    return ticks, [compact(10**t) for t in ticks]


class MetricChart(Widget):
    """A line chart of metric series over steps, with optional reference lines, bands, log axis and smoothing.

    Call ``set_data`` with plain lists; the widget only draws. Rendering is cached until the data or the size
    changes, and each series is cut to about two points per column before plotext sees it.
    """

    DEFAULT_CSS = """
    MetricChart {
        text-wrap: nowrap;
        text-overflow: clip;
        height: 1fr;
        min-height: 5;
        width: 1fr;
    }
    """

    def __init__(
        self,
        title: str,
        *,
        name: str | None = None,
        id: str | None = None,  # noqa: A002 - Textual's name
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.title = clean(title)  # untrusted in principle: cleaned like everything else drawn here
        self._series: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._raw_series: list[tuple[str, Sequence[int], Sequence[float | None]]] = []
        self._series_version = 0
        self._hlines: list[tuple[float, str]] = []
        self._bands: list[tuple[float, float, str]] = []
        self._log_y = False
        self._smoothing = False
        self._y_label = ""
        self._ylim: tuple[float | None, float | None] | None = None
        self._run_slots: list[int] | None = None
        self._raw_refs: list[tuple[str, Sequence[int], Sequence[float | None]]] = []
        self._refs: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._ema_weight: float | None = None
        self._smoothed: list[np.ndarray] = []
        self._raw_pre: list[tuple[Sequence, Sequence] | None] | None = None
        self._pre: list[tuple[np.ndarray, np.ndarray] | None] = []  # the caller's smoothed lines, as arrays
        self._pre_mode = False
        self._ema: GrowingEma | None = None  # keyed by series name; kept while the weight stays
        self._x_label = "step"
        self._version = 0
        self._cache_key: tuple | None = None
        self._cache: Text | None = None
        self.last_render_seconds = 0.0

    # -- data -------------------------------------------------------------------------------------------------
    def set_data(
        self,
        series: Sequence[Series],
        *,
        hlines: Sequence[tuple[float, str]] = (),
        bands: Sequence[tuple[float, float, str]] = (),
        log_y: bool = False,
        smoothing: bool = False,
        y_label: str = "",
        ylim: tuple[float | None, float | None] | None = None,
        run_slots: Sequence[int] | None = None,
        references: Sequence[Series] = (),
        ema_weight: float | None = None,
        x_label: str = "step",
        smoothed: Sequence[tuple[Sequence[float], Sequence[float]] | None] | None = None,
    ) -> None:
        """Replace what the chart shows.

        series: (name, steps, values) per line; None/NaN values are dropped.
        hlines: (y, label) reference lines, e.g. the u_val clamps (0.1, "floor").
        bands: (low, high, label) horizontal zones, e.g. the R zones; boundaries are drawn and labelled.
        log_y: plot log10 of the values (non-positive values are dropped and counted in the header).
        smoothing: TensorBoard's debiased EMA of each series over every point, the raw series faint beneath.
        ylim: fixed (low, high) for the y axis; None picks the data range (either end may be None).
        run_slots: overlay of runs: the colour / marker slot of each series (keep a run's slot while it is shown).
        references: (name, steps, values) published trajectories: dashed, never smoothed, named in the header.
        ema_weight: with smoothing, the EMA's weight (None: DEFAULT_SMOOTHING, TensorBoard's 0.6).
        x_label: the x axis' name (e.g. "active time (min)" when the caller passes times as steps).
        smoothed: with smoothing, the smoothed line (x, values) of each series, computed by the caller (None for
            a series without one): drawn as the line, the series itself faint beneath, nothing smoothed here;
            ema_weight then only names the weight in the header.
        """
        # Conversion to arrays waits for the first render: a chart in a hidden tab never pays for it.
        self._raw_series = [(clean(name), steps, values) for name, steps, values in series]
        self._series_version = -1
        self._hlines = [(float(y), clean(label)) for y, label in hlines]
        self._bands = [(float(lo), float(hi), clean(label)) for lo, hi, label in bands]
        self._log_y = bool(log_y)
        self._smoothing = bool(smoothing)
        self._y_label = clean(y_label)
        self._ylim = ylim
        self._run_slots = [int(k) for k in run_slots] if run_slots is not None else None
        self._raw_refs = [(clean(name), steps, values) for name, steps, values in references]
        self._raw_pre = list(smoothed) if smoothed is not None and smoothing else None
        if smoothing and ema_weight is None and self._raw_pre is None:
            ema_weight = DEFAULT_SMOOTHING  # smoothed here: always the debiased EMA, never another average
        self._ema_weight = float(ema_weight) if ema_weight is not None and smoothing else None
        self._pre_mode = self._raw_pre is not None  # smoothed by the caller: render() never smooths
        self._x_label = clean(x_label) or "step"
        self._version += 1
        self.refresh()

    def _arrays(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        if self._series_version != self._version:
            memo: dict[int, np.ndarray] = {}  # lives only during this conversion, so ids cannot be reused
            self._series = [(name, *finite_xy(steps, values, memo)) for name, steps, values in self._raw_series]
            self._raw_series = []  # the arrays replace the caller's lists; do not keep both alive
            self._refs = [(name, *finite_xy(steps, values, memo)) for name, steps, values in self._raw_refs]
            self._raw_refs = []
            self._smoothed = []
            self._pre = []
            if self._raw_pre is not None:  # smoothed by the caller: only converted here
                self._pre = [finite_xy(p[0], p[1], memo) if p is not None else None for p in self._raw_pre]
                self._raw_pre = None
            elif self._ema_weight is not None:  # once per data version: a resize does not recompute it
                if self._ema is None or self._ema.weight != self._ema_weight:
                    self._ema = GrowingEma(self._ema_weight)
                # a series that only grew (a live run's new readings): just the new points are smoothed
                self._smoothed = [self._ema.smooth(name, x, y) for name, x, y in self._series]
                names = {name for name, _x, _y in self._series}
                self._ema.keep_only(names.__contains__)
            else:
                self._ema = None
            self._series_version = self._version
        return self._series

    @property
    def point_count(self) -> int:
        """Finite points currently held (after dropping None / NaN)."""
        return sum(len(x) for _, x, _ in self._arrays())

    # -- drawing ----------------------------------------------------------------------------------------------
    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        key = (self._version, width, height, ascii_mode())
        if key == self._cache_key and self._cache is not None:
            return self._cache
        t0 = time.perf_counter()
        text = self.render_plain(width, height)
        self.last_render_seconds = time.perf_counter() - t0
        self._cache_key, self._cache = key, text
        return text

    def render_plain(self, width: int, height: int) -> Text:
        """Build the chart for a width x height cell area (public so benchmarks can time it without an app)."""
        if width < 1 or height < 1:
            return Text("")  # hidden (e.g. an inactive tab): skip the work
        asc = ascii_mode()
        self._arrays()
        prepared, dropped = self._prepare(width)
        # An overlay's legend gets a line of its own when it does not fit beside the title (and rows allow).
        header = self._header(prepared, dropped, asc, width,
                              two_lines=self._run_slots is not None and height - 2 >= MIN_PLOT_HEIGHT)
        rows = height - 1 - header.plain.count("\n")
        if not any(len(p[1]) for p in prepared):
            body = Text("\n" + one_line("waiting for data", width), style="dim")
            return self._finish(header, body)
        if width < MIN_PLOT_WIDTH or rows < MIN_PLOT_HEIGHT:
            return self._finish(header, self._sparklines(prepared, width, rows, asc))
        try:
            ansi = self._build(prepared, width, rows, asc)
        except Exception as exc:  # plotext edge cases must never take the cockpit down
            body = Text("\n" + one_line(f"chart error: {type(exc).__name__}: {exc}", width), style="dim")
            return self._finish(header, body)
        if asc:
            ansi = ansi.translate(_ASCII_TABLE)
        body = Text.from_ansi(ansi, no_wrap=True, end="")
        body.rstrip_end(0)
        return self._finish(header, Text("\n").append_text(body))

    def _sparklines(self, prepared, width: int, rows: int, asc: bool) -> Text:
        """Too small for axes: one sparkline per series (as many as fit) under the header."""
        from .sparklines import ASCII_RAMP, BLOCKS, spark

        body = Text(end="")
        mains = [p for p in prepared if p[3].kind == "main"]
        for _name, _x, y, style in mains[: max(rows, 0)]:
            values = bucket_mean(np.arange(len(y), dtype=float), y, max(width, 1))[1].tolist()
            body.append("\n")
            body.append(spark(values, ASCII_RAMP if asc else BLOCKS), style=style.color)
        return body

    def _finish(self, header: Text, body: Text) -> Text:
        out = Text(no_wrap=True, overflow="crop", end="")
        out.append_text(header)
        out.append_text(body)
        return out

    def _prepare(self, width: int) -> tuple[list[tuple[str, np.ndarray, np.ndarray, _Style]], int]:
        """Downsample, smooth and log-transform each series for a plot this many columns wide.

        Returns (name, x, y, style) in drawing order: faint raw series first, then references, then the lines."""
        columns = max(8, width - 8)  # the y tick labels take some columns
        asc = ascii_mode()
        out = []
        raws = []
        dropped = 0
        for i, (name, x, y) in enumerate(self._arrays()):
            style = self._style(i, asc)
            smoothed = self._smoothed[i] if self._smoothed else None
            pre = self._pre[i] if i < len(self._pre) else None
            if pre is not None:  # the caller's smoothed line (own x); the raw series faint beneath
                sx, sy = pre
                if self._log_y:
                    positive = y > 0
                    dropped += int(len(y) - positive.sum())
                    x, y = x[positive], y[positive]
                    sx, sy = sx[sy > 0], sy[sy > 0]
                rx, ry = downsample(x, y, columns)
                x, y = bucket_mean(sx, sy, columns)  # a smooth line: one point per column draws it (half the work)
                if self._log_y:
                    ry, y = np.log10(ry), np.log10(y)
                raws.append((name, rx, ry, _Style(style.color, RAW_ASCII_MARKER if asc else RAW_MARKER, "raw")))
                out.append((name, x, y, style))
                continue
            if self._log_y:
                positive = y > 0
                dropped += int(len(y) - positive.sum())
                x, y = x[positive], y[positive]
                if smoothed is not None:
                    smoothed = smoothed[positive]
            if smoothed is not None:  # TensorBoard's EMA over every point; the raw one faint beneath
                rx, ry = downsample(x, y, columns)
                x, y = downsample(x, smoothed, columns)
                if self._log_y:
                    ry = np.log10(ry)
                raws.append((name, rx, ry, _Style(style.color, RAW_ASCII_MARKER if asc else RAW_MARKER, "raw")))
            else:
                x, y = downsample(x, y, columns)
            if self._log_y:
                y = np.log10(y)
            out.append((name, x, y, style))
        refs = []
        for name, x, y in self._refs:  # never smoothed
            if self._log_y:
                positive = y > 0
                x, y = x[positive], np.log10(y[positive])
            refs.append((name, *dashes(x, y, columns), _Style(REFERENCE_COLOR, REFERENCE_MARKER, "ref")))
        return raws + refs + out, dropped

    def _style(self, i: int, asc: bool) -> _Style:
        if self._run_slots is None:
            return _Style(SERIES_COLORS[i % len(SERIES_COLORS)], (ASCII_MARKERS if asc else SERIES_MARKERS)[i % len(SERIES_MARKERS)])
        slot = self._run_slots[i] if i < len(self._run_slots) else i
        return _Style(RUN_COLORS[slot % len(RUN_COLORS)], (RUN_ASCII_MARKERS if asc else RUN_MARKERS)[slot % len(RUN_MARKERS)])

    def _glyph(self, i: int, asc: bool) -> str:
        if self._run_slots is None:
            return (ASCII_MARKERS if asc else SERIES_GLYPHS)[i % len(SERIES_MARKERS)]
        slot = self._run_slots[i] if i < len(self._run_slots) else i
        return (RUN_ASCII_MARKERS if asc else RUN_GLYPHS)[slot % len(RUN_GLYPHS)]

    def _header(self, prepared, dropped: int, asc: bool, width: int, two_lines: bool = False) -> Text:
        """Title line: title, then each series' marker, name and last raw value; colour optional.

        two_lines: when that does not fit in `width`, the legend (markers, names, values) goes on a second line."""
        head = Text(no_wrap=True, overflow="ellipsis", end="")
        head.append(self.title, style="bold")
        if self._log_y:
            head.append(" (log)")
        if self._ema_weight is not None:
            head.append(f" (EMA {self._ema_weight:g}, raw {RAW_ASCII_MARKER if asc else RAW_MARKER})")
        elif self._smoothing:
            head.append(" (smoothed)")
        for i, (name, x, y) in enumerate(self._series):
            glyph = self._glyph(i, asc)
            last = format_value(float(y[-1])) if len(y) else "n/a"
            head.append("  ")
            color = self._style(i, asc).color
            head.append(f"{glyph} {name} {last}", style=rich_color(color) if self._run_slots is not None else color)
        for name, _x, _y in self._refs:
            head.append("  ")
            head.append(f"{REFERENCE_GLYPH} {name}", style=rich_color(REFERENCE_COLOR))
        if dropped:
            head.append(f"  ({dropped} <= 0 not shown)", style="dim")
        if two_lines and head.cell_len > width:
            split = self._header(prepared, dropped, asc, 10**6)  # the same line, uncut
            title_end = split.plain.index("  ", len(self.title)) if "  " in split.plain[len(self.title):] else None
            if title_end is not None:
                first, legend = split[:title_end], split[title_end + 2:]
                first.truncate(width, overflow="ellipsis" if not asc else "crop")
                legend.truncate(width, overflow="ellipsis" if not asc else "crop")
                out = Text(no_wrap=True, overflow="ellipsis", end="")
                out.append_text(first)
                out.append("\n")
                out.append_text(legend)
                return out
        head.truncate(width, overflow="ellipsis" if not asc else "crop")
        return head

    def _y_range(self, prepared) -> tuple[float, float]:
        """The data's range, widened to whole bands and to nearby reference lines; a fixed ylim wins."""
        ys = [p[2] for p in prepared if len(p[2])]
        lo = float(min(v.min() for v in ys))
        hi = float(max(v.max() for v in ys))
        if self._ylim is not None:
            flo, fhi = self._ylim
            if flo is not None:
                lo = self._t(flo) if not (self._log_y and flo <= 0) else lo
            if fhi is not None:
                hi = self._t(fhi) if not (self._log_y and fhi <= 0) else hi
            if hi <= lo:
                pad = abs(lo) * 0.05 or 0.5
                return lo - pad, hi + pad
            return lo, hi
        span = hi - lo
        # Show the whole band(s) the data is in, so the zone it sits in is labelled (R at 0.02 -> 0 to 0.10).
        edges = sorted({self._t(e) for b_lo, b_hi, _ in self._bands for e in (b_lo, b_hi)
                        if math.isfinite(e) and (e > 0 or not self._log_y)})
        below = [e for e in edges if e <= lo]
        above = [e for e in edges if e >= hi]
        band_lo = below[-1] if below else None
        band_hi = above[0] if above else None
        # Reference lines (u_val clamps) join the view when they are close to the data.
        for y, _label in self._hlines:
            if self._log_y and y <= 0:
                continue
            ty = self._t(y)
            if lo - 0.25 * max(span, abs(lo) * 0.1) <= ty < lo:
                lo = ty
            elif hi < ty <= hi + 0.25 * max(span, abs(hi) * 0.1):
                hi = ty
        if hi <= lo:
            pad = abs(lo) * 0.05 or 0.5
            lo, hi = lo - pad, hi + pad
        else:
            pad = (hi - lo) * 0.05
            lo, hi = lo - pad, hi + pad
        if band_lo is not None:
            lo = min(lo, band_lo) if lo < band_lo else band_lo
        if band_hi is not None:
            hi = max(hi, band_hi) if hi > band_hi else band_hi
        return lo, hi

    def _t(self, v: float) -> float:
        return math.log10(v) if self._log_y else v

    def _build(self, prepared, width: int, height: int, asc: bool) -> str:
        y_lo, y_hi = self._y_range(prepared)
        xs_all = [p[1] for p in prepared if len(p[1])]
        x_lo = float(min(v.min() for v in xs_all))
        x_hi = float(max(v.max() for v in xs_all))
        if x_hi <= x_lo:
            x_lo, x_hi = x_lo - 1, x_hi + 1
        with _PLOTEXT_LOCK:
            plt.clear_figure()
            try:
                plt.theme("clear")
                plt.plotsize(width, height)
                plt.xlim(x_lo, x_hi)
                plt.ylim(y_lo, y_hi)
                rows_per_unit = max(height - 3, 1) / (y_hi - y_lo)
                for i, (lo, hi, label) in enumerate(self._bands):
                    self._draw_band(i, lo, hi, label, x_lo, y_lo, y_hi, rows_per_unit)
                for y, label in self._hlines:
                    if self._log_y and y <= 0:
                        continue
                    ty = self._t(y)
                    if y_lo <= ty <= y_hi:
                        plt.hline(ty, HLINE_COLOR)
                        if label:
                            plt.text(label, x_hi, ty, color=HLINE_COLOR, alignment="right")
                for _name, x, y, style in prepared:
                    if not len(x):
                        continue
                    if style.kind == "main":
                        plt.plot(x.tolist(), y.tolist(), marker=style.marker, color=style.color)
                    else:  # faint raw points, or a reference's dashes: points, not a joined line
                        plt.scatter(x.tolist(), y.tolist(), marker=style.marker, color=style.color,
                                    style="dim" if style.kind == "raw" else None)
                y_count = max(2, min(5, (height - 3) // 2))
                if self._log_y:
                    ticks, labels = log_ticks(y_lo, y_hi, count=y_count)
                else:
                    ticks = nice_ticks(y_lo, y_hi, y_count)
                    labels = [compact(t) for t in ticks]
                plt.yticks(ticks, labels)
                x_ticks = [t for t in nice_ticks(x_lo, x_hi, max(3, min(6, width // 12))) if t == int(t)]
                plt.xticks(x_ticks, [compact(t) for t in x_ticks])
                if height >= 12:  # small charts keep their rows for the data
                    if self._y_label:
                        plt.ylabel(self._y_label)
                    plt.xlabel(self._x_label)
                return plt.build()
            finally:
                plt.clear_figure()  # drop the data now: plotext would otherwise hold it until the next chart

    def _draw_band(self, i, lo, hi, label, x_lo, y_lo, y_hi, rows_per_unit) -> None:
        if self._log_y and (hi <= 0):
            return
        t_lo = self._t(lo) if lo > 0 or not self._log_y else y_lo
        t_hi = self._t(hi) if not math.isinf(hi) else y_hi
        vis_lo, vis_hi = max(t_lo, y_lo), min(t_hi, y_hi)
        if vis_hi <= vis_lo:
            return
        color = BAND_COLORS[i % len(BAND_COLORS)]
        if y_lo < t_lo < y_hi:
            plt.hline(t_lo, color)
        if label and (vis_hi - vis_lo) * rows_per_unit >= 1.0:
            plt.text(label, x_lo, (vis_lo + vis_hi) / 2.0, color=color, alignment="left")
