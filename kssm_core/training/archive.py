"""Move a finished (or dead) run out of the way before a fresh start reuses its folder.

A fresh start (no --resume) into a folder that already holds a run would otherwise mix the two:
the new run overwrites best_model.pt and `kssm status` / `--resume` / `kssm clean` pick the old run's
newest checkpoint. The old run's files go to RUN_DIR/previous/<UTC timestamp>/ (renames inside the
folder: nothing is copied or deleted). Symlinks are moved as links, never followed. trainer.out and
training.lock stay: the cockpit opens trainer.out before the trainer starts, and the lock is ours.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kssm_core.runfolder.runlog import newest_run_markers
from kssm_core.training.checkpoint import BEST_NAME, CHECKPOINT_RE
from kssm_core.runfolder import layout

ARCHIVE_DIR = "previous"
RUN_FILES = layout.RUN_FILES


class ArchiveError(Exception):
    """The previous run could not be moved aside; the message is one line."""


def _has_run_start(events: Path) -> bool:
    return newest_run_markers(events)[0] is not None


def previous_run_files(run_dir: str | Path) -> list[Path]:
    """The files of a run already in run_dir (top level only), or [] when it holds none.

    A run is there when events.jsonl has a run_start, or a checkpoint_*.pt or best_model.pt exists.
    """
    root = Path(run_dir)
    try:
        names = sorted(e.name for e in os.scandir(root))
    except OSError:
        return []
    ckpts = [n for n in names if CHECKPOINT_RE.match(n)]
    present = [n for n in RUN_FILES if n in names]
    if not (ckpts or BEST_NAME in names or (layout.EVENTS in names and _has_run_start(root / layout.EVENTS))):
        return []
    return [root / n for n in present + ckpts]


def archive_previous_run(run_dir: str | Path, now: float | None = None) -> Path | None:
    """Move the previous run's files into run_dir/previous/<UTC timestamp>/; returns that folder, or None
    when there was no previous run. Raises ArchiveError (nothing moved yet) when previous/ is unusable."""
    files = previous_run_files(run_dir)
    return archive_files(run_dir, files, now) if files else None


def archive_files(run_dir: str | Path, files: list[Path], now: float | None = None) -> Path:
    """Rename `files` (entries directly in run_dir) into a new run_dir/previous/<UTC timestamp>/; returns it.

    A file already gone (another trainer moved it first) is skipped. Raises ArchiveError, before anything
    moves, when previous/ is a symlink or a file.
    """
    root = Path(run_dir)
    base = root / ARCHIVE_DIR
    if base.is_symlink() or (base.exists() and not base.is_dir()):
        raise ArchiveError(f"{base} is not a real folder (a symlink or a file): move it away, then start again")
    base.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    dest = base / stamp
    n = 1
    while True:
        try:
            dest.mkdir()  # never reuse an existing archive folder
            break
        except FileExistsError:
            dest = base / f"{stamp}-{n}"
            n += 1
    for path in files:
        try:
            os.rename(path, dest / path.name)  # a rename moves a symlink itself, never its target
        except FileNotFoundError:
            continue
    return dest
