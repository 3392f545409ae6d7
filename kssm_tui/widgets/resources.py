"""ResourcePanel: disk, memory, CPU, GPU memory and heartbeat age as btop-like meters with threshold colours."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.widget import Widget

# Display thresholds (the brief's): heartbeat late after 30 s, stale after 120 s; memory use 80% / 90%.
HEARTBEAT_AMBER_S = 30.0
HEARTBEAT_RED_S = 120.0
MEM_AMBER = 0.80
MEM_RED = 0.90
DISK_AMBER_FACTOR = 2.0  # free space below twice what the remaining checkpoints need
LEVEL_STYLES = {"ok": "green", "warn": "yellow", "bad": "bold red", "na": "dim"}
LEVEL_TAGS = {"ok": "ok", "warn": "WARN", "bad": "LOW", "na": ""}
LABEL_W = 5


def human_bytes(n: Any) -> str:
    """1536 -> '1.5 KiB'; None or nonsense -> 'n/a'."""
    v = _num(n)
    if v is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return "n/a"


def human_age(s: Any) -> str:
    v = _num(s)
    if v is None:
        return "n/a"
    if v < 120:
        return f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def meter(fraction: float | None, width: int) -> str:
    """ASCII bar like htop's: ``[|||||     ]``; empty brackets when unknown."""
    inner = max(1, width - 2)
    if fraction is None:
        return "[" + " " * inner + "]"
    filled = int(round(max(0.0, min(1.0, fraction)) * inner))
    return "[" + "|" * filled + " " * (inner - filled) + "]"


def disk_level(free: float | None, needed: float | None) -> str:
    if free is None:
        return "na"
    if needed is None:
        return "ok"
    if free < needed:
        return "bad"
    return "warn" if free < needed * DISK_AMBER_FACTOR else "ok"


def memory_level(available: float | None, total: float | None) -> str:
    if available is None or not total:
        return "na"
    used = 1.0 - available / total
    return "bad" if used >= MEM_RED else "warn" if used >= MEM_AMBER else "ok"


def heartbeat_level(age: float | None) -> str:
    if age is None:
        return "na"
    return "bad" if age > HEARTBEAT_RED_S else "warn" if age > HEARTBEAT_AMBER_S else "ok"


class ResourcePanel(Widget):
    """``set_facts({...})`` with disk_free_bytes, disk_needed_bytes, trainer_rss_bytes, mem_available_bytes,
    mem_total_bytes, cpu_percent, gpu_mem_bytes, heartbeat_age_s; a missing or None fact shows ``n/a``.

    Each line carries a text tag (ok / WARN / LOW / STALE) besides its colour, so it reads without colour.
    """

    DEFAULT_CSS = """
    ResourcePanel {
        text-wrap: nowrap;
        text-overflow: clip;
        height: auto;
        min-height: 6;
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._facts: dict[str, Any] = {}

    def set_facts(self, facts: dict[str, Any]) -> None:
        if facts != self._facts:
            self._facts = dict(facts)
            self.refresh()

    def get_content_height(self, container, viewport, width: int) -> int:
        return 6

    def render(self) -> Text:
        return self.render_text(self.size.width)

    def render_text(self, width: int) -> Text:
        f = self._facts
        free, needed = _num(f.get("disk_free_bytes")), _num(f.get("disk_needed_bytes"))
        avail, total = _num(f.get("mem_available_bytes")), _num(f.get("mem_total_bytes"))
        cpu = _num(f.get("cpu_percent"))
        age = _num(f.get("heartbeat_age_s"))
        bar_w = max(6, min(22, width - 34))
        lines: list[Text] = []

        level = disk_level(free, needed)
        need_s = f", needs {human_bytes(needed)}" if needed is not None else ""
        disk_s = "n/a" if free is None else f"{human_bytes(free)} free{need_s}"
        lines.append(self._line("disk", None, disk_s, level, bar_w, tag=LEVEL_TAGS[level]))

        level = memory_level(avail, total)
        used = (1.0 - avail / total) if (avail is not None and total) else None
        mem_s = "n/a" if avail is None else f"{human_bytes(avail)} avail / {human_bytes(total)}"
        lines.append(self._line("mem", used, mem_s, level, bar_w,
                                tag="HIGH" if level == "bad" else LEVEL_TAGS[level]))

        rss = _num(f.get("trainer_rss_bytes"))
        lines.append(self._line("rss", None, "n/a" if rss is None else f"trainer {human_bytes(rss)}",
                                "na" if rss is None else "ok", bar_w))

        cpu_frac = None if cpu is None else cpu / 100.0
        cpu_s = "n/a" if cpu is None else f"{cpu:.0f}%"
        lines.append(self._line("cpu", cpu_frac, cpu_s, "ok" if cpu is not None else "na", bar_w, tag=""))

        gpu = _num(f.get("gpu_mem_bytes"))
        lines.append(self._line("gpu", None, human_bytes(gpu), "na" if gpu is None else "ok", bar_w))

        level = heartbeat_level(age)
        tag = {"ok": "ok", "warn": "LATE", "bad": "STALE", "na": ""}[level]
        age_s = "n/a" if age is None else f"{human_age(age)} ago"
        lines.append(self._line("beat", None, age_s, level, bar_w, tag=tag))

        out = Text(no_wrap=True, overflow="crop", end="")
        for i, line in enumerate(lines):
            if i:
                out.append("\n")
            out.append_text(line)
        return out

    def _line(self, label: str, fraction: float | None, value: str, level: str, bar_w: int, tag: str = "") -> Text:
        line = Text(no_wrap=True, overflow="crop", end="")
        line.append(f"{label:<{LABEL_W}}", style="bold")
        if fraction is not None:
            line.append(meter(fraction, bar_w) + " ", style=LEVEL_STYLES[level])
        line.append(value, style=LEVEL_STYLES[level] if level != "ok" else "")
        if tag:
            line.append(f" {tag}", style=LEVEL_STYLES[level])
        return line
