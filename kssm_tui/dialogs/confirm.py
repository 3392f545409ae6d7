"""A yes/no dialog. Destructive questions open with Cancel focused, so Enter never destroys by accident."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from ..safe_text import ascii_mode, clean


class ConfirmDialog(ModalScreen[bool]):
    """Ask one question; dismisses with True only when the confirm button is pressed."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]

    def __init__(self, title: str, lines: list[str], confirm_label: str = "OK", destructive: bool = True) -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.lines = lines
        self.confirm_label = confirm_label
        self.destructive = destructive

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog-box"):
            yield Static(Text(clean(self.title_text), style="bold"), id="dialog-title")
            with VerticalScroll(id="dialog-body"):
                yield Static(Text("\n".join(clean(line) for line in self.lines)), id="dialog-text")
            with Horizontal(id="dialog-buttons"):
                compact = ascii_mode()  # a full button's edges are half-block glyphs; compact has none
                yield Button("Cancel", id="cancel", compact=compact)
                yield Button(self.confirm_label, id="confirm", variant="error" if self.destructive else "primary",
                             compact=compact)

    def on_mount(self) -> None:
        self.query_one("#cancel" if self.destructive else "#confirm", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm")

    def action_cancel(self) -> None:
        self.dismiss(False)
