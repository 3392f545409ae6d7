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
