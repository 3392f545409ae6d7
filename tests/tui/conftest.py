"""Fixtures of the cockpit tests (helpers live in runfolders.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """An empty runs root `results` under a tmp cwd (relative paths keep snapshots machine-independent)."""
    monkeypatch.chdir(tmp_path)
    root = Path("results")
    root.mkdir()
    return root


@pytest.fixture(autouse=True)
def unicode_glyphs(monkeypatch):
    """Draw with the default glyphs whatever the machine's locale (a CI box may run under LANG=C);
    the ASCII tests set KSSM_ASCII=1 themselves."""
    monkeypatch.setenv("KSSM_ASCII", "0")
