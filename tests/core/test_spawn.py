"""spawn_detached: output appended to a regular file in the run folder, never through a symlink."""

from __future__ import annotations

import os
import sys

import pytest

from kssm_core.runbook.spawn import spawn_detached


def test_output_is_appended_and_a_symlinked_output_file_is_refused(tmp_path):
    run = tmp_path / "run"
    p = spawn_detached([sys.executable, "-c", "print('hello')"], run / "trainer.out")
    assert p.wait(timeout=30) == 0 and (run / "trainer.out").read_text() == "hello\n"
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    os.symlink(outside, run / "eval.out")
    with pytest.raises(OSError):
        spawn_detached([sys.executable, "-c", "print('x')"], run / "eval.out")
    assert outside.read_text() == "keep me\n"
    os.mkfifo(run / "fifo.out")
    with pytest.raises(OSError):
        spawn_detached([sys.executable, "-c", "print('x')"], run / "fifo.out")
