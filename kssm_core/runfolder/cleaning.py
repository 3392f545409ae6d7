"""`kssm clean` as data: which checkpoint files a clean would delete (and why the others stay), then deleting
exactly those files. Shared by `kssm clean` and the cockpit's `c` key.

Never best_model.pt, never the newest loadable checkpoint, never a symlink or anything outside the run
folder, never a checkpoint kssm did not write. Torch is imported only to ask which checkpoint loads
(kssm_core.training.checkpoint.load_checkpoint, memory-mapped, weights_only).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kssm_core.runfolder.layout import BEST_MODEL as BEST_NAME, checkpoint_files


class CleanError(Exception):
    """The folder cannot be cleaned; the message is one line saying why."""


@dataclass
class CleanPlan:
    delete: list[tuple[Path, int]]  # (path, bytes)
    keep: list[tuple[Path, str]]  # (path, why it stays)
    # (st_dev, st_ino, st_size) of each file in delete, as planned: execute_clean deletes only that very file
    identity: dict[Path, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def bytes_freed(self) -> int:
        return sum(b for _, b in self.delete)


def plan_clean(run_dir: str | Path, keep: int = 1) -> CleanPlan:
    """Which checkpoint_*.pt files `kssm clean` would delete, and why the others stay.

    Never best_model.pt, never the newest loadable checkpoint, never a symlink or anything
    outside run_dir, never a file whose name is not checkpoint_{step}.pt, never a checkpoint kssm did not
    write (nothing at all in another trainer's folder: kssm_core.runfolder.foreign). The top level only: the earlier
    runs a fresh start moved to run_dir/previous/ (kssm_core.training.archive) are never listed.
    """
    root = Path(run_dir)
    if root.is_symlink():  # deleting through a link would delete the target's files
        raise CleanError(f"{run_dir}: is a symlink; pass the real run folder ({root.resolve()})")
    if not root.is_dir():
        raise CleanError(f"{run_dir}: not a folder")
    real_root = root.resolve()
    files = checkpoint_files(root)
    from kssm_core.runfolder.foreign import foreign_run, is_ours  # noqa: I001

    foreign = foreign_run(root)
    if foreign is not None:  # another trainer's folder: kssm deletes nothing of it
        keep_all = [(path, "written by another trainer (no events.jsonl here): kssm never deletes it") for _, path in files]
        if (root / BEST_NAME).exists():
            keep_all.append((root / BEST_NAME, "best model: never cleaned"))
        return CleanPlan([], keep_all, {})
    newest_ok: Path | None = None
    keep_list: list[tuple[Path, str]] = []
    from kssm_core.training.checkpoint import CheckpointError, load_checkpoint  # torch: only to ask what loads

    for _, path in files:
        try:
            load_checkpoint(path, mmap=True)  # mapped, not read: a multi-GB checkpoint costs little memory
        except CheckpointError:
            continue
        newest_ok = path
        break
    delete: list[tuple[Path, int]] = []
    identity: dict[Path, tuple[int, int, int]] = {}
    kept_count = 0
    for step, path in files:
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # a live trainer's prune() removed it since the listing
            continue
        if not stat.S_ISREG(st.st_mode) or path.resolve().parent != real_root:
            keep_list.append((path, "not a regular file inside the run folder"))
            continue
        if path == newest_ok:
            kept_count += 1
            keep_list.append((path, "newest loadable checkpoint"))
            continue
        ours = is_ours(path)
        if ours is not True:  # not provably kssm's (another program's, or too damaged to tell): never deleted
            why = "not written by kssm (no kssm format key)" if ours is False else "unreadable: cannot tell who wrote it"
            keep_list.append((path, f"{why}: never cleaned"))
            continue
        if kept_count < keep:
            kept_count += 1
            keep_list.append((path, f"among the newest {keep}"))
            continue
        delete.append((path, st.st_size))
        identity[path] = (st.st_dev, st.st_ino, st.st_size)
    if (root / BEST_NAME).exists():
        keep_list.append((root / BEST_NAME, "best model: never cleaned"))
    return CleanPlan(delete, keep_list, identity)


def execute_clean(plan: CleanPlan) -> tuple[int, list[str]]:
    """Delete the planned files. Returns (bytes freed, problems: one line "NAME: why" per file left in place).

    A file is deleted only if it is still the very regular file that was planned (same inode and size):
    one replaced since (e.g. rewritten by a resumed trainer) stays. A file already gone is no problem.
    """
    freed = 0
    problems: list[str] = []
    for path, size in plan.delete:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{path.name}: {exc.strerror or exc}")
            continue
        planned = plan.identity.get(path)
        if not stat.S_ISREG(st.st_mode) or (planned is not None and planned != (st.st_dev, st.st_ino, st.st_size)):
            problems.append(f"{path.name}: changed since it was listed; not deleted")
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # EACCES, EROFS, EBUSY...: say so and go on with the others
            problems.append(f"{path.name}: {exc.strerror or exc}")
            continue
        freed += size
    return freed, problems
