"""EventLog: a bounded log of recent events, warnings and samples, always written as plain text."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.widgets import RichLog

from ..safe_text import clean

MAX_LINES = 500
SHORT_KINDS = {"checkpoint": "ckpt", "run_start": "start", "run_end": "end"}  # the kind column is 8 cells
KIND_STYLES = {
    "warning": "yellow",
    "warn": "yellow",
    "error": "red",
    "critical": "bold red",
    "failure": "red",
    "sample": "cyan",
    "eval": "green",
}


class EventLog(RichLog):
    """``add_entries([(kind, text), ...])``: each entry becomes ``kind | text`` (text cleaned, never markup).

    Bounded to ``max_lines`` (500) so a week-long run does not grow the widget; wraps long samples.
    """

    DEFAULT_CSS = """
    EventLog {
        height: 1fr;
        min-height: 3;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(
        self,
        *,
        max_lines: int = MAX_LINES,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(
            max_lines=max_lines, min_width=20, wrap=True, highlight=False, markup=False,
            name=name, id=id, classes=classes,
        )

    @staticmethod
    def format_entry(kind: str, text: str) -> Text:
        kind_s = clean(SHORT_KINDS.get(kind, kind)).replace("\n", " ")[:8]
        line = Text(end="")
        line.append(f"{kind_s:>8} ", style=KIND_STYLES.get(kind_s.lower(), "dim"))
        line.append(clean(text))
        return line

    def add_entries(self, entries: Iterable[tuple[str, str]]) -> None:
        for kind, text in entries:
            self.write(self.format_entry(kind, text))
