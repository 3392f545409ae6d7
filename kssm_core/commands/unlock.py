"""`kssm unlock DIR`: remove a provably stale training.lock; refuse a live one.

`kssm unlock --force DIR` also removes a lock held on ANOTHER host, or one that cannot be read as a lock
(a directory, FIFO, symlink, damaged file): nothing here can prove such a lock stale, so a person decides.
It prints exactly what it removes first, and still refuses a live lock on this host.
A lock in a folder another trainer wrote (kssm_core.runfolder.foreign) is never removed, even with --force:
`kssm train --adopt` moves it aside with the rest of that run.
Exit codes: 0 removed (or no lock), 1 refused, 2 usage error (DIR is not a folder).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from kssm_core.runbook import cmdline

EXIT_USAGE = 2


def register(sub) -> None:
    p = sub.add_parser("unlock", help="remove a stale training.lock (refuses a live one)")
    p.add_argument("run_dir", metavar="DIR")
    p.add_argument("--force", action="store_true",
                   help="also remove a lock held on another host, or an unreadable one (never a live lock on this host)")
    p.set_defaults(func=run)


def force_hint(run_dir: str | Path) -> str:
    return cmdline.text(cmdline.unlock(run_dir, force=True))


def run(args: argparse.Namespace) -> int:
    from kssm_core.runfolder.lock import LockHeld, lock_state, read_lock, unlock

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        what = "not a folder" if run_dir.exists() else "no such folder"
        print(f"kssm unlock: {run_dir}: {what} (give a run folder, e.g. results/stage1)", file=sys.stderr)
        return EXIT_USAGE
    from kssm_core.runfolder import layout
    from kssm_core.runfolder.foreign import foreign_run

    foreign = foreign_run(run_dir)
    if foreign is not None and os.path.lexists(run_dir / layout.LOCK):  # a symlinked lock counts too
        _, reason = lock_state(read_lock(run_dir))
        print(f"kssm unlock: {run_dir} holds {foreign.what()}: its training.lock ({reason}) is left as it is; "
              f"kssm train --output-dir {run_dir} --adopt moves it to previous/ with the rest", file=sys.stderr)
        return 1
    if args.force and lock_state(read_lock(run_dir))[0] == "foreign":
        return _force(run_dir)
    try:
        print(unlock(run_dir))
        return 0
    except LockHeld as exc:
        hint = ""
        if lock_state(read_lock(run_dir))[0] == "foreign":
            hint = f" (if that trainer is gone for good: {force_hint(run_dir)})"
        print(f"kssm unlock: {exc}{hint}", file=sys.stderr)
        return 1


def _describe(path: Path, info) -> tuple[str, tuple] | None:
    """What exactly would be removed, and the file's identity to check again just before; None if gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    ident = (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        return f"a symlink to {os.readlink(path)!r} (the link only; its target is left alone)", ident
    if stat.S_ISDIR(st.st_mode):
        return "an empty directory (removed only if empty)", ident
    if not stat.S_ISREG(st.st_mode):
        return "a special file (not a regular file)", ident
    text = info.raw.strip() if info is not None and info.raw else ""
    return f"a {st.st_size}-byte file holding {text[:200]!r}", ident


def _force(run_dir: Path) -> int:
    from kssm_core.runfolder.lock import LOCK_NAME, _takeover_guard, lock_state, read_lock

    path = run_dir / LOCK_NAME
    info = read_lock(run_dir)
    _, reason = lock_state(info)
    described = _describe(path, info)
    if described is None:
        print(f"no lock in {run_dir}: nothing to do")
        return 0
    what, ident = described
    print(f"removing {path}: {what}; it was {reason}")
    with _takeover_guard(run_dir):  # the same guard a stale-lock takeover holds
        again = _describe(path, read_lock(run_dir))
        if again is None:
            print(f"no lock in {run_dir}: it was removed meanwhile")
            return 0
        if again[1] != ident:
            print(f"kssm unlock: refusing to remove {path}: it changed meanwhile (a trainer may have taken it)",
                  file=sys.stderr)
            return 1
        try:
            if stat.S_ISDIR(ident[2]):
                os.rmdir(path)
            else:
                os.unlink(path)  # a symlink: the link itself
        except OSError as exc:
            print(f"kssm unlock: cannot remove {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    print(f"removed {path}")
    return 0
