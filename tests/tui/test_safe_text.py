"""safe_text: control sequences never survive clean(), markup is never parsed by plain(), one_line fits."""

from __future__ import annotations

import re

import pytest
from rich.cells import cell_len

from kssm_tui.safe_text import ascii_mode, clean, one_line, plain

# Anything a terminal would act on: C0 except newline, DEL, C1.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

HOSTILE = [
    ("osc52 clipboard, BEL", "a\x1b]52;c;SGVsbG8=\x07b", "ab"),
    ("osc52 clipboard, ST", "a\x1b]52;c;SGVsbG8=\x1b\\b", "ab"),
    ("osc title unterminated", "u\x1b]0;pwned", "u"),
    ("csi clear screen", "x\x1b[2Jy", "xy"),
    ("csi colour", "\x1b[31;1mred\x1b[0m", "red"),
    ("csi private mode", "\x1b[?1049hz", "z"),
    ("8-bit csi", "p\x9b31mq", "pq"),
    ("8-bit osc with 8-bit ST", "o\x9d0;title\x9cz", "oz"),
    ("dcs", "d\x1bPq#0;2;0;0;0\x1b\\e", "de"),
    ("apc", "a\x1b_payload\x1b\\b", "ab"),
    ("pm and sos", "1\x1b^pm\x1b\\2\x1bXsos\x1b\\3", "123"),
    ("full reset", "e\x1bcf", "ef"),
    ("charset", "g\x1b(0h", "gh"),
    ("lone ESC at the end", "abc\x1b", "abc"),
    ("C0 controls and DEL", "a\x00b\x07c\x08d\x7fe", "abcde"),
    ("C1 controls", "a\x85b\x84c\x8dd\x9a", "abcd"),
    ("8-bit DCS runs to ST", "a\x90junk\x9cb", "ab"),
    ("CR LF and lone CR", "a\r\nb\rc", "a\nb\nc"),
    ("bidi override and zero width", "ab\u202ecd\u200bef\ufeff", "abcdef"),
]


@pytest.mark.parametrize("label,raw,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_clean_strips_control_sequences(label, raw, expected):
    out = clean(raw)
    assert out == expected
    assert not CONTROL.search(out)
    assert "\x1b" not in out


def test_clean_keeps_ordinary_text_and_newlines():
    s = "step 100 | loss 3.21\nR 0.25 [Balance] {x} <y> caf\u00e9 \u4e2d\u6587"
    assert clean(s) == s


def test_tabs_become_spaces_at_tab_stops():
    assert clean("a\tbc\td") == "a   bc  d"
    assert "\t" not in clean("\t\tx")


def test_emoji_become_placeholder_but_cjk_stays():
    out = clean("ok \U0001F600 \u2764\ufe0f \u4e2d")
    assert "\U0001F600" not in out and "\ufe0f" not in out
    assert "\u4e2d" in out
    assert out.startswith("ok ?")


def test_clean_accepts_non_strings():
    assert clean(None) == ""
    assert clean(3.5) == "3.5"


@pytest.mark.parametrize("markup", ["[bold]", "[/", "[TODO]", "[@click=app.quit]x[/]", "[red]a[/red]", "[link=x]y"])
def test_plain_never_parses_markup(markup):
    text = plain(markup, style="cyan")
    assert text.plain == markup
    # Only the style we asked for: no span from markup, no @click meta.
    assert all(str(span.style) == "cyan" for span in text.spans) or str(text.style) == "cyan"
    assert not text.spans or all("@click" not in str(s.style) for s in text.spans)


def test_plain_strips_controls_too():
    assert plain("a\x1b[2Jb\x9b1mc").plain == "abc"


def test_one_line_truncates_by_cells(monkeypatch):
    monkeypatch.setenv("KSSM_ASCII", "0")
    s = one_line("hello world\nsecond line", 8)
    assert "\n" not in s
    assert cell_len(s) <= 8 and s.endswith("\u2026")
    assert one_line("short", 10) == "short"
    assert one_line("anything", 0) == ""
    wide = one_line("\u4e2d" * 10, 7)
    assert cell_len(wide) <= 7


def test_one_line_ascii_mode(monkeypatch):
    monkeypatch.setenv("KSSM_ASCII", "1")
    assert ascii_mode()
    s = one_line("abcdefghijkl", 8)
    assert s == "abcde..." and s.isascii()


def test_one_line_cleans():
    assert one_line("a\x1b]52;c;x\x07b", 20) == "ab"


def test_ascii_mode_follows_the_shell_locale_not_pythons_utf8_mode(monkeypatch):
    monkeypatch.delenv("KSSM_ASCII", raising=False)
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANG", "C")
    assert ascii_mode()  # Python itself reports UTF-8 here (PEP 538), the terminal may not draw it
    monkeypatch.setenv("LANG", "en_GB.UTF-8")
    assert not ascii_mode()
    monkeypatch.setenv("LC_ALL", "POSIX")  # LC_ALL wins over LANG
    assert ascii_mode()
    monkeypatch.setenv("KSSM_ASCII", "0")  # and the explicit switch over both
    assert not ascii_mode()
