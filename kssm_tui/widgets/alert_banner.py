"""AlertBanner: a one-line banner for a new Failure or a critical alert; hidden while there is nothing to say."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from ..safe_text import clean

SEVERITY_TAGS = {"warning": "WARNING", "critical": "CRITICAL"}


class AlertBanner(Widget):
    """``show(text, severity)`` with severity "warning" or "critical"; ``clear()`` hides it.

    The tag ("WARNING"/"CRITICAL") is part of the text so the banner reads without colour. Ringing the terminal
    bell is the app's job.
    """

    DEFAULT_CSS = """
    AlertBanner {
        display: none;
        height: auto;
        min-height: 1;
        padding: 0 1;
        text-style: bold;
    }
    AlertBanner.-shown { display: block; }
    AlertBanner.-warning { background: $warning; color: $text; }
    AlertBanner.-critical { background: $error; color: $text; }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.text = ""
        self.severity: str | None = None

    def show(self, text: str, severity: str = "warning") -> None:
        severity = severity if severity in SEVERITY_TAGS else "warning"
        self.text = clean(text)
        self.severity = severity
        self.set_class(severity == "warning", "-warning")
        self.set_class(severity == "critical", "-critical")
        self.add_class("-shown")
        self.refresh(layout=True)

    def clear(self) -> None:
        self.text = ""
        self.severity = None
        self.remove_class("-shown", "-warning", "-critical")
        self.refresh(layout=True)

    @property
    def shown(self) -> bool:
        return self.has_class("-shown")

    def render(self) -> Text:
        if self.severity is None:
            return Text("", end="")
        mark = "!!" if self.severity == "critical" else "!"
        return Text(f"{mark} {SEVERITY_TAGS[self.severity]}: {self.text}", end="")
