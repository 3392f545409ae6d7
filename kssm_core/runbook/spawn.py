"""Start a `kssm` process detached, the way the cockpit and the autopilot both do.

Detached means: its own session (a lost SSH connection, a closed tmux pane or the exit of whoever started
it never signals it), stdin from /dev/null, stdout and stderr appended to a file in the run folder
(RUN_DIR/trainer.out for a trainer). The caller keeps the Popen only to reap it; quitting the caller leaves
the process running, and a later caller finds it through the run's lock. asyncio's subprocess transport is
deliberately not used: closing its loop would kill the child.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Mapping


class ForeignFolder(OSError):
    """The folder holds a run another program wrote: nothing is started there (not even its output file)."""


def spawn_detached(command: list[str], out_path: str | Path, *, cwd: str | Path | None = None,
                   env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Popen `command` in its own session with its output appended to `out_path` (its folder is created).

    The output file is never reached through a symlink (O_NOFOLLOW) and must be a regular file: a planted
    `trainer.out -> ~/.bashrc` would otherwise be appended to outside the run folder."""
    out_path = Path(out_path)
    from kssm_core.runfolder.foreign import foreign_run  # judged by files alone: no checkpoint is loaded

    found = foreign_run(out_path.parent, check_formats=False)
    if found is not None:  # the output file would be a file we put into another program's folder
        raise ForeignFolder(f"not started: {out_path.parent} holds {found.what()}; kssm never writes into it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # O_NONBLOCK: a FIFO planted under that name must not hang us waiting for a reader (it fails or is refused)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(out_path, flags, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{out_path} is not a regular file; not writing the process output there")
    os.set_blocking(fd, True)
    out = os.fdopen(fd, "ab")
    try:
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: SIGHUP from a lost terminal never reaches it
            close_fds=True,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        )
    finally:
        out.close()  # the child holds its own descriptor
