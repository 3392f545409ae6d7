"""Checkpoints: atomic save, safe load (weights_only), newest-loadable search and retention.

(`kssm clean`'s planning lives in kssm_core.runfolder.cleaning; it asks load_checkpoint which file loads.)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kssm_core.runfolder.atomic import atomic_write, write_all

CHECKPOINT_FORMAT = "kssm-checkpoint/1"
from kssm_core.runfolder.layout import BEST_MODEL as BEST_NAME, CHECKPOINT_RE, checkpoint_files  # noqa: F401
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
