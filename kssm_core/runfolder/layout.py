"""The run folder's contract in code: the name of every file a run folder holds, and the checkpoint pattern.

Nobody else spells these names (docs/run-folder.md describes what each file holds). Pure: no I/O
beyond `newest_checkpoint_file`'s one directory scan, no torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

EVENTS = "events.jsonl"  # the machine-readable log (schema in docs/run-folder.md)
TRAINING_LOG = "training.log"  # the human log; also what the reference trainer writes (a legacy run)
LOCK = "training.lock"  # {"pid", "host", "start_time"} while a trainer runs (a bare PID from the reference)
CONFIG = "config.json"  # the resolved settings of the run
BEST_MODEL = "best_model.pt"  # lowest val loss so far
TRAINER_OUT = "trainer.out"  # stdout + stderr of a trainer the cockpit (or the autopilot) started
TRAINER_ERR = "trainer.err"  # a traceback the trainer caught
EVAL_DIR = "eval"  # kssm eval's results, one JSON per suite
EVAL_OUT = "eval.out"  # output of an evaluation the cockpit started
EVAL_SUMMARY = "summary.json"  # inside EVAL_DIR: kssm eval all's verdict
PREVIOUS = "previous"  # earlier runs of this folder, archived whole under previous/<UTC time>/

# RUNS_ROOT/autopilot/: the supervisor's own folder (docs/autopilot.md); never a run folder.
AUTOPILOT_DIR = "autopilot"
AUTOPILOT_STATE = "state.json"  # where the plan stands, rewritten atomically at every decision
AUTOPILOT_DECISIONS = "decisions.jsonl"  # every decision and its reason, appended
AUTOPILOT_LOCK = "autopilot.lock"  # one autopilot per runs root (the training.lock rules)
AUTOPILOT_REPORT_MD = "report.md"  # written at the end (passed or held)
AUTOPILOT_REPORT_JSON = "report.json"
AUTOPILOT_OUT = "autopilot.out"  # stdout + stderr of an autopilot started detached (the cockpit's `a`)

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")

# What makes a folder a run folder at a glance (kssm status, the runs list).
MARKERS = (EVENTS, TRAINING_LOG, LOCK, CONFIG)
# The files of one run that a fresh start moves into previous/ (checkpoints besides).
RUN_FILES = (EVENTS, TRAINING_LOG, CONFIG, BEST_MODEL, EVAL_DIR, EVAL_OUT)


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{int(step)}.pt"


def checkpoint_step(name: str) -> int | None:
    """The step of a `checkpoint_{step}.pt` file name, None for any other name."""
    m = CHECKPOINT_RE.match(name)
    return int(m.group(1)) if m else None


def checkpoint_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of checkpoint_{step}.pt regular files directly in run_dir, newest first. Symlinks are skipped."""
    out = []
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        step = checkpoint_step(entry.name)
        if step is not None and entry.is_file(follow_symlinks=False):
            out.append((step, Path(entry.path)))
    return sorted(out, reverse=True)


def newest_checkpoint_file(run_dir: str | Path) -> tuple[int, str, int] | None:
    """(step, name, bytes) of the newest checkpoint_{step}.pt regular file directly in run_dir (no symlinks)."""
    best: tuple[int, str, int] | None = None
    try:
        with os.scandir(run_dir) as it:
            for e in it:
                step = checkpoint_step(e.name)
                if step is not None and e.is_file(follow_symlinks=False) and (best is None or step > best[0]):
                    best = (step, e.name, e.stat(follow_symlinks=False).st_size)
    except OSError:
        return None
    return best


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    if any((p / n).is_file() for n in MARKERS):
        return True
    try:
        with os.scandir(p) as it:
            return any(checkpoint_step(e.name) is not None for e in it)
    except OSError:
        return False
