"""Shared fixtures: a prebuilt token cache for the embedded corpus and a finished tiny run.

Why a session-wide cache: building the embedded corpus's BPE takes about a second; every test
that trains points --data-dir at the same prebuilt cache instead of rebuilding it.
The helpers live in kssm_testkit.py (tests import them from there, not from this file).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kssm_testkit import run_kssm, train_args


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A --data-dir holding the embedded corpus's token cache for the tiny preset (built once)."""
    from kssm_core.config import PRESETS
    from kssm_core.training.corpus import load_corpus
    from kssm_core.training.data import prepare_tokens

    folder = tmp_path_factory.mktemp("token-cache")
    prepare_tokens(load_corpus(None), folder, PRESETS["tiny"].vocab_size, log=lambda _line: None)
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir) -> Path:
    """A finished tiny run (6 steps, checkpoints at 2, 4, 6, best_model.pt). Copy it before changing it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "6", "--save-interval", "2", "--log-interval", "1",
                             "--eval-interval", "3"))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of trained_run that a test may damage."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


@pytest.fixture
def sleeper():
    """A live child process (a stand-in for a running trainer's PID)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()
