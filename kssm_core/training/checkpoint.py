"""Checkpoints: atomic save, safe load (weights_only), newest-loadable search, retention and cleaning.

A checkpoint is written to a temp file in the run folder, fsynced, renamed over its final
name and the folder fsynced: a kill at any instant leaves every earlier checkpoint intact.
Loading never unpickles arbitrary objects (torch.load(..., weights_only=True)).
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kssm_core.runfolder.atomic import atomic_write, write_all

CHECKPOINT_FORMAT = "kssm-checkpoint/1"
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
BEST_NAME = "best_model.pt"
# Temp files of atomic writes (kssm_core.runfolder.atomic names them): a SIGKILL mid-save leaves one behind.
TEMP_RE = re.compile(r"^\.(checkpoint_\d+\.pt|best_model\.pt|config\.json)\..+\.tmp$")
# What --resume needs from a checkpoint (a weights-only file, e.g. one exported for evaluation, lacks most).
RESUME_KEYS = ("step", "config", "model_config", "model_state", "optimizer_state", "scheduler_state", "data_state")


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message is one line saying why."""


class DiskFull(CheckpointError):
    """Not enough space to write a checkpoint; nothing was changed."""


def _write_all(fd: int, data: memoryview) -> None:
    """Write every byte (a seam for tests that simulate ENOSPC)."""
    write_all(fd, data)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: dict[str, Any], path: str | Path) -> int:
    """Serialise obj to path atomically. Returns the bytes written. Raises DiskFull on ENOSPC."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    try:
        atomic_write(path, lambda fd: _write_all(fd, data))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"disk full while writing {path.name}: kept the previous checkpoints untouched") from exc
        raise
    fsync_dir(path.parent)
    return len(data)


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete the temp files of saves that a killed trainer never finished.

    Call only while holding the run's lock (no other writer can be mid-save). Regular files
    directly in run_dir only; symlinks are left alone.
    """
    removed = []
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        if TEMP_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


# How torch's weights_only unpickler says it met a global (a class or function): the wording varies by version.
_REFUSED_OBJECT = re.compile(r"Unsupported global|unsupported GLOBAL|Unsupported class")
_BOILERPLATE = ("Weights only load failed", "Re-running", "Please file", "Check the documentation", "In PyTorch")


def _is_raw_pickle(path: Path) -> bool:
    """A bare pickle (protocol 2+ opens with 0x80), not torch's zip format: it can hold any Python object."""
    try:
        with open(path, "rb") as fh:
            return fh.read(1) == b"\x80"
    except OSError:
        return False


def _why(text: str, exc: Exception) -> str:
    """The informative line of a torch.load error, without its weights_only boilerplate."""
    for line in text.splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(_BOILERPLATE):
            line = line.split(". ", 1)[0]  # its first sentence: torch goes on about internals after it
            return line if len(line) <= 160 else line[:157] + "..."
    return type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load with weights_only=True. Any failure becomes one CheckpointError line.

    mmap=True maps the tensors' storage instead of reading it: checking that a multi-GB file loads then
    costs little memory (a truncated file still fails: its zip directory, at the end, is missing).
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such file") from exc
    except Exception as exc:  # torch raises many kinds for a damaged or hostile file
        text = str(exc)
        if _REFUSED_OBJECT.search(text) or _is_raw_pickle(path):  # objects the safe unpickler will not build
            raise CheckpointError(
                f"{path}: refused: it contains pickled Python objects, not plain tensors (not loaded, nothing ran)"
            ) from exc
        raise CheckpointError(f"{path}: unreadable: damaged, truncated or not a checkpoint ({_why(text, exc)})") from exc
    if not isinstance(obj, dict) or "model_state" not in obj:
        raise CheckpointError(f"{path}: not a K-SSM checkpoint (no model_state)")
    return obj


def checkpoint_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of checkpoint_{step}.pt regular files directly in run_dir, newest first. Symlinks are skipped."""
    out = []
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = CHECKPOINT_RE.match(entry.name)
        if m and entry.is_file(follow_symlinks=False):
            out.append((int(m.group(1)), Path(entry.path)))
    return sorted(out, reverse=True)


@dataclass
class FoundCheckpoint:
    step: int
    path: Path
    state: dict[str, Any]
    skipped: list[str]  # one line per newer checkpoint that did not load


def newest_loadable(
    run_dir: str | Path, map_location: str | torch.device = "cpu", required: tuple[str, ...] = ()
) -> FoundCheckpoint | None:
    """The newest checkpoint that loads and holds every key in `required`; newer ones are listed in skipped."""
    skipped: list[str] = []
    for step, path in checkpoint_files(run_dir):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        missing = [k for k in required if k not in state]
        if missing:
            skipped.append(f"{path}: cannot resume from it: it lacks {', '.join(missing)}")
            continue
        return FoundCheckpoint(step, path, state, skipped)
    if skipped:
        return FoundCheckpoint(-1, Path(run_dir), {}, skipped)
    return None


def free_bytes(folder: str | Path) -> int:
    return shutil.disk_usage(folder).free


def prune(run_dir: str | Path, keep: int, protected_steps: frozenset[int], deletable=None) -> list[Path]:
    """Delete periodic checkpoints beyond the newest `keep`; milestones and best_model.pt stay.

    deletable(path) -> bool, when given, must also agree (the trainer: only files kssm wrote).
    """
    removed = []
    files = checkpoint_files(run_dir)
    for step, path in files[keep:]:
        if step in protected_steps or (deletable is not None and not deletable(path)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
        raise CheckpointError(f"{run_dir}: is a symlink; pass the real run folder ({root.resolve()})")
    if not root.is_dir():
        raise CheckpointError(f"{run_dir}: not a folder")
    real_root = root.resolve()
    files = checkpoint_files(root)
    from kssm_core.runfolder.foreign import foreign_run, is_ours

    foreign = foreign_run(root)
    if foreign is not None:  # another trainer's folder: kssm deletes nothing of it
        keep_all = [(path, "written by another trainer (no events.jsonl here): kssm never deletes it") for _, path in files]
        if (root / BEST_NAME).exists():
            keep_all.append((root / BEST_NAME, "best model: never cleaned"))
        return CleanPlan([], keep_all, {})
    newest_ok: Path | None = None
    keep_list: list[tuple[Path, str]] = []
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
        if is_ours(path) is False:  # loads, but without our format key: not kssm's to delete
            keep_list.append((path, "not written by kssm (no kssm format key): never cleaned"))
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
