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


def test_nothing_is_started_in_another_programs_run_folder(tmp_path):
    """The cockpit and the autopilot both start processes here: neither may create an output file in a folder
    the reference trainer wrote."""
    from kssm_core.runbook.spawn import ForeignFolder

    ref = tmp_path / "kssm_v3"
    ref.mkdir()
    (ref / "training.log").write_text("   10 |   8.000 |   7.990 |  0.5000 | 0.0500 |   1.000 |    2.000\n")
    with pytest.raises(ForeignFolder, match="kssm never writes into it"):
        spawn_detached([sys.executable, "-c", "print('x')"], ref / "trainer.out")
    assert sorted(p.name for p in ref.iterdir()) == ["training.log"]
