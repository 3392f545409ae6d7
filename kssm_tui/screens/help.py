"""The `?` screen: every key, generated from the App's key table (so it cannot drift from the bindings)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help.close")]

    def __init__(self, keys: list[tuple[str, str, bool]], readonly: bool,
                 sections: list[tuple[str, list[tuple[str, str, bool]]]] = ()) -> None:
        super().__init__(classes="dialog")
        self.keys = keys  # (key, what it does, changes something)
        self.readonly = readonly
        self.sections = list(sections)  # (heading, keys) of other screens' keys (the runs view's)

    def compose(self) -> ComposeResult:
        t = Text()
        t.append("kssm-tui keys", style="bold")
        if self.readonly:
            t.append("  (read-only: keys marked * are disabled)", style="yellow")
        t.append("\n\n")
        for key, what, mutates in self.keys:
            mark = "*" if (mutates and self.readonly) else " "
            t.append(f"{mark} {key:<8}", style="bold")
            t.append(f"{what}\n")
        for heading, keys in self.sections:
            t.append(f"\n{heading}\n", style="bold")
            for key, what, _mutates in keys:
                t.append(f"  {key:<8}", style="bold")
                t.append(f"{what}\n")
        t.append("\nThe trainer runs detached: quitting or losing SSH leaves it training;\n"
                 "start kssm-tui again to attach. Escape closes this screen.")
        with VerticalScroll(id="help-box"):
            yield Static(t)

    def action_close(self) -> None:
        self.dismiss(None)
