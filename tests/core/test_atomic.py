"""kssm_core.runfolder.atomic: whole-or-nothing writes with the mode a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from kssm_core.runfolder.atomic import atomic_write, atomic_write_bytes, file_mode


def test_written_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o027)
    try:
        assert file_mode() == 0o640
        atomic_write_bytes(tmp_path / "a.bin", b"x" * 10)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    atomic_write_bytes(tmp_path / "b.bin", b"y")
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o666 & ~old


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")

    def half_then_fail(fd):
        os.write(fd, b"new but ")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
