"""Terminal-safe text: strip control sequences from untrusted strings and build Rich Text without markup.

Samples, log lines, reasons and remedies come from files the cockpit does not control. Two things can go wrong
when such a string reaches the screen: Rich/Textual markup (``[bold]``, ``[@click=app.quit]``) is interpreted, or
raw control bytes (ESC[2J, OSC 52 clipboard writes, 8-bit CSI ``\\x9b``) reach the terminal. ``plain()`` guards
against both: the string goes through ``clean()`` and then into ``Text(...)``, which never parses markup.
"""

from __future__ import annotations

import locale
import os
import re
import sys
import unicodedata

from rich.cells import cell_len
from rich.text import Text

TAB_SIZE = 4

# Control strings that run until a terminator (BEL or ST = ESC \ or 8-bit \x9c): OSC (ESC ] / \x9d),
# DCS (ESC P / \x90), SOS (ESC X / \x98), PM (ESC ^ / \x9e), APC (ESC _ / \x9f). An unterminated one would
# swallow the rest of the output on a real terminal, so it is stripped to the end of the string.
_STRING_SEQ = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c|(?=\x1b)|\Z)"
# CSI: ESC [ or 8-bit \x9b, parameter bytes, intermediate bytes, one final byte (may be missing if truncated).
_CSI_SEQ = r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
# Any other escape: ESC, intermediates, a final byte (e.g. ESC c = full reset, ESC ( B = charset).
_ESC_SEQ = r"\x1b[\x20-\x2f]*[\x30-\x7e]?"
_SEQUENCES = re.compile("|".join((_STRING_SEQ, _CSI_SEQ, _ESC_SEQ)))

# Remaining single control characters: C0 (except \n, \t, \r handled separately), DEL and C1.
_SINGLE_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Fast path: a string of printable ASCII plus newlines needs no work.
_NEEDS_WORK = re.compile(r"[^\x20-\x7e\n]")

_ZERO_WIDTH_CATEGORIES = {"Cf", "Cs", "Cc"}  # format (zero-width, bidi overrides), surrogates, controls


def _clean_char(ch: str) -> str:
    """Decide for one non-ASCII character: keep, drop or replace (called only on the slow path)."""
    if ch in "\u2028\u2029\x85":  # line / paragraph separators and NEL move the cursor: make them newlines
        return "\n"
    cat = unicodedata.category(ch)
    if cat in _ZERO_WIDTH_CATEGORIES:
        return ""  # zero-width spaces/joiners, bidi overrides (U+202E), BOM, soft hyphen
    if "\ufe00" <= ch <= "\ufe0f":
        return ""  # variation selectors switch emoji presentation and with it the width terminals use
    if cat in ("So", "Sk") and unicodedata.east_asian_width(ch) in ("W", "F"):
        # Emoji and other wide symbols: terminals and tmux disagree on their width, which breaks columns.
        # Wide letters (CJK) are kept: their double width is consistent everywhere and Rich measures it.
        return "?"
    return ch


def clean(s: object) -> str:
    """Return ``s`` as a string that is safe to send to a terminal.

    Removes escape sequences (CSI, OSC incl. OSC 52, DCS/APC/PM/SOS, other ESC), C0 controls except newline,
    DEL and C1 controls (incl. 8-bit CSI \\x9b / OSC \\x9d); tabs become spaces, CR LF and lone CR become
    newlines, zero-width and bidi-control characters are dropped and wide symbols (emoji) become ``?``.
    """
    if not isinstance(s, str):
        s = "" if s is None else str(s)
    if not _NEEDS_WORK.search(s):
        return s
    s = _SEQUENCES.sub("", s)
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    if "\t" in s:
        s = "\n".join(line.expandtabs(TAB_SIZE) for line in s.split("\n"))
    s = _SINGLE_CONTROLS.sub("", s)
    if not s.isascii():
        s = "".join(ch if ch < "\x80" else _clean_char(ch) for ch in s)
    return s


def plain(s: object, style: str = "") -> Text:
    """A Rich ``Text`` of ``clean(s)`` with ``style`` applied to all of it; markup is never parsed."""
    return Text(clean(s), style=style, end="")


def ascii_mode() -> bool:
    """True when widgets should draw with ASCII only: ``KSSM_ASCII=1``, or a locale (LC_ALL, LC_CTYPE, LANG)
    or terminal encoding that is not UTF-8; ``KSSM_ASCII=0`` forces the box and block glyphs."""
    flag = os.environ.get("KSSM_ASCII", "").strip().lower()
    if flag in ("1", "true", "yes", "on"):
        return True
    if flag in ("0", "false", "no", "off"):
        return False
    # The terminal's locale as the shell set it: Python's UTF-8 mode (PEP 538/540) reports UTF-8 even
    # under LANG=C, whose terminal may draw box glyphs as garbage.
    loc = os.environ.get("LC_ALL") or os.environ.get("LC_CTYPE") or os.environ.get("LANG") or ""
    if loc:
        return not _is_utf8(loc)
    encoding = getattr(sys.__stdout__, "encoding", None) or locale.getpreferredencoding(False) or ""
    return not _is_utf8(encoding)


def _is_utf8(name: str) -> bool:
    return "utf8" in name.lower().replace("-", "").replace("_", "")


def ellipsis() -> str:
    return "..." if ascii_mode() else "\u2026"


def one_line(s: object, width: int) -> str:
    """``clean(s)`` on a single line (newlines become spaces) cut to ``width`` terminal cells with an ellipsis."""
    text = " ".join(clean(s).split("\n"))
    if width <= 0:
        return ""
    if cell_len(text) <= width:
        return text
    mark = ellipsis()
    if width <= len(mark):
        return mark[:width]
    budget = width - len(mark)
    out: list[str] = []
    used = 0
    for ch in text:
        w = cell_len(ch)
        if used + w > budget:
            break
        out.append(ch)
        used += w
    return "".join(out) + mark
