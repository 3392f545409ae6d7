"""Textual's own chrome in ASCII, for KSSM_ASCII=1 or a terminal that is not UTF-8.

Our widgets pick ASCII glyphs themselves (safe_text.ascii_mode). What Textual draws needs three levers:
the panel border type is the CSS variable `$frame` (see app.tcss), and the tab underline and the
scrollbar thumbs are class attributes of Textual's renderers, set when an App starts. The setting is
process-wide, which suits one App per process and one terminal; each App start sets it afresh (tests
start Apps in both modes in one process).
"""

from __future__ import annotations

from textual.renderables.bar import Bar
from textual.scrollbar import ScrollBar, ScrollBarRender

from .safe_text import ascii_mode

FRAME = "round"  # the border of every panel and dialog in the default look
ASCII_FRAME = "ascii"


class AsciiScrollBarRender(ScrollBarRender):
    """A thumb drawn by its colour alone: no eighth-block glyphs at its ends."""

    VERTICAL_BARS = [" "] * 8
    HORIZONTAL_BARS = [" "] * 8


def css_variables() -> dict[str, str]:
    """Variables app.tcss reads: `$frame` is the panels' border type, `$divider` the footer's separator,
    `$toast-edge` the coloured edge of a notification."""
    on = ascii_mode()
    return {"frame": ASCII_FRAME if on else FRAME, "divider": ASCII_FRAME if on else "vkey",
            "toast-edge": ASCII_FRAME if on else "outer"}


_TEXTUAL_BAR = (Bar.HALF_BAR_LEFT, Bar.BAR, Bar.HALF_BAR_RIGHT)
_TEXTUAL_SCROLLBAR = ScrollBar.renderer


def apply() -> bool:
    """Set Textual's renderers for the current mode (ASCII or Textual's own); returns whether ASCII is on."""
    on = ascii_mode()
    Bar.HALF_BAR_LEFT, Bar.BAR, Bar.HALF_BAR_RIGHT = ("-", "-", "-") if on else _TEXTUAL_BAR
    ScrollBar.renderer = AsciiScrollBarRender if on else _TEXTUAL_SCROLLBAR
    return on
