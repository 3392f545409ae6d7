"""After a NaN: the last good checkpoint, and moving the ones written after the divergence aside.

A good checkpoint (docs/autopilot.md):
- its step is at or before the start of the divergence: the final, unbroken rise of the training loss
  that ends in the NaN (walking back from the first non-finite loss while the loss keeps falling);
- the training loss logged at its step is finite;
- the newest evaluation at or before its step has a finite val loss (there is at least one);
- its file is in the run folder.

To rewind, the checkpoints after the good one move to RUN_DIR/previous/<UTC time>-rewind/ (nothing is
deleted; best_model.pt stays) under the run's lock, so `kssm train --resume --learning-rate LR/2` resumes
exactly from the good one. Pure but for `set_aside_after` (and the folder scan in `checkpoint_steps`).
"""

from __future__ import annotations

import math
import os
import time
from bisect import bisect_right
from pathlib import Path

from kssm_core.runfolder import layout
from kssm_core.runfolder.history import RunHistory
from kssm_core.runfolder.lock import LockHeld, RunLock


def divergence_start(history: RunHistory) -> int | None:
    """The step where the final rise to the first non-finite loss began (None: the loss never went
    non-finite). A checkpoint at or before it is from before the divergence."""
    steps, loss = history.steps.steps, history.steps.cols["loss"]
    bad = next((i for i in range(len(steps)) if not math.isfinite(loss[i])), None)
    if bad is None:
        return None
    j = bad - 1
    if j < 0:
        return steps[bad] - 1  # NaN at the first reading: nothing logged before it is good
    while j > 0 and math.isfinite(loss[j - 1]) and loss[j - 1] <= loss[j]:
        j -= 1
    return steps[j]


def checkpoint_steps(run_dir: str | Path) -> dict[int, Path]:
    """step -> path of each checkpoint_N.pt regular file directly in run_dir."""
    out: dict[int, Path] = {}
    try:
        with os.scandir(run_dir) as it:
            for e in it:
                s = layout.checkpoint_step(e.name)
                if s is not None and e.is_file(follow_symlinks=False):
                    out[s] = Path(e.path)
    except OSError:
        pass
    return out


def good_checkpoint(history: RunHistory, available: dict[int, Path]) -> tuple[int, Path] | None:
    """(step, path) of the newest good checkpoint among `available` (see the module's rules), or None."""
    bound = divergence_start(history)
    steps, loss = list(history.steps.steps), history.steps.cols["loss"]
    ev_steps, ev_loss = list(history.evals.steps), history.evals.cols["val_loss"]
    for step in sorted(available, reverse=True):
        if bound is not None and step > bound:
            continue
        i = bisect_right(steps, step) - 1
        if i < 0 or steps[i] != step or not math.isfinite(loss[i]):
            continue
        k = bisect_right(ev_steps, step) - 1
        if k < 0 or not math.isfinite(ev_loss[k]):
            continue
        return step, available[step]
    return None


def set_aside_after(run_dir: str | Path, step: int, now: float | None = None) -> tuple[Path | None, list[str]]:
    """Move checkpoint_N.pt with N > step into RUN_DIR/previous/<UTC time>-rewind/ under the run's lock.
    Returns (that folder or None when nothing moved, the names moved). Raises LockHeld when a trainer runs."""
    run_dir = Path(run_dir)
    later = sorted((s, p) for s, p in checkpoint_steps(run_dir).items() if s > step)
    if not later:
        return None, []
    lock = RunLock(run_dir)
    lock.acquire()  # LockHeld: a trainer owns the folder, move nothing
    try:
        base = run_dir / layout.PREVIOUS
        if base.is_symlink() or (base.exists() and not base.is_dir()):
            raise LockHeld(f"{base} is not a real folder: cannot set checkpoints aside")
        base.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        dest, n = base / f"{stamp}-rewind", 1
        while True:
            try:
                dest.mkdir()
                break
            except FileExistsError:
                dest, n = base / f"{stamp}-rewind-{n}", n + 1
        moved = []
        for _, p in later:
            os.rename(p, dest / p.name)
            moved.append(p.name)
        return dest, moved
    finally:
        lock.release()
