"""StagePlan: the runbook's five stages with their state, budget and which one is current / selected."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from kssm_core.runbook.stages import STAGES

from ..safe_text import one_line

# ASCII markers: readable without colour and the same width in every terminal.
STATE_MARKERS = {
    "not started": "[ ]",
    "running": "[>]",
    "completed": "[=]",
    "passed": "[+]",
    "warning": "[!]",
    "failed": "[x]",
    "crashed": "[X]",
    "interrupted": "[-]",
    "stale lock": "[L]",
    "unknown": "[?]",
    "loading": "[~]",
}
STATE_STYLES = {
    "not started": "dim",
    "running": "bold cyan",
    "completed": "",
    "passed": "green",
    "warning": "yellow",
    "failed": "red",
    "crashed": "bold red",
    "interrupted": "yellow",
    "stale lock": "magenta",
    "unknown": "yellow",
    "loading": "dim",
}
NAME_W = 16


class StagePlan(Widget):
    """One line per stage: ``>[+] 1 Smoke test        100 steps  2 min  passed``.

    ``set_stages(states, current, selected)``: states maps a stage number to one of STATE_MARKERS' keys (anything
    else shows as ``[?]`` with its text); ``>`` marks the selected stage, the current one is bold with a ``*``.
    """

    DEFAULT_CSS = """
    StagePlan {
        text-wrap: nowrap;
        text-overflow: clip;
        height: auto;
        min-height: 5;
    }
    StagePlan > .stage-plan--selected {
        text-style: reverse;
    }
    """
    COMPONENT_CLASSES = {"stage-plan--selected"}

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._states: dict[int, str] = {}
        self._current: int | None = None
        self._selected: int | None = None

    def set_stages(self, states: dict[int, str], current: int | None, selected: int | None) -> None:
        self._states = dict(states)
        self._current = current
        self._selected = selected
        self.refresh()

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(STAGES)

    def render(self) -> Text:
        return self.render_text(self.size.width)

    def render_text(self, width: int) -> Text:
        wide = width >= 50
        states = {st.number: one_line(self._states.get(st.number, "not started"), 14) or "not started" for st in STAGES}
        # The name column gives way first so the state (the point of the panel) stays visible when narrow.
        fixed = 1 + 3 + 3 + (13 if width >= 46 else 7) + (10 if wide else 0) + max(len(v) for v in states.values())
        name_w = max(8, min(NAME_W, width - fixed))
        out = Text(no_wrap=True, overflow="crop", end="")
        for i, stage in enumerate(STAGES):
            state = states[stage.number]
            marker = STATE_MARKERS.get(state, "[?]")
            selected = stage.number == self._selected
            current = stage.number == self._current
            line = Text(no_wrap=True, overflow="crop", end="")
            line.append(">" if selected else " ")
            line.append(marker, style=STATE_STYLES.get(state, ""))
            line.append(f" {stage.number}{'*' if current else ' '}", style="bold" if current else "")
            line.append(f"{one_line(stage.name, name_w - 1):<{name_w}}", style="bold" if current else "")
            line.append(f"{stage.steps:>6} steps " if width >= 46 else f"{stage.steps:>6} ")
            if wide:
                line.append(f"{stage.budget:<10}", style="dim")
            line.append(state, style=STATE_STYLES.get(state, ""))
            if selected:
                line.stylize(self._selected_style())
            if i:
                out.append("\n")
            out.append_text(line)
        return out

    def _selected_style(self):
        try:
            return self.get_component_rich_style("stage-plan--selected")
        except Exception:
            return "reverse"
