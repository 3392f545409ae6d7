"""Runs this project did not write (the reference trainer's, most often): how to tell them from ours.

A folder is FOREIGN when it has no events.jsonl (our trainer creates it before anything else) but holds
a training.log, or a best_model.pt / checkpoint_*.pt that is not provably ours (a folder holding only our
own checkpoints, copied there, is ours to use); or when, beside our events.jsonl, a checkpoint loads but
lacks our `format` key (every checkpoint this project ever wrote has it). kssm
writes nothing into a foreign folder: no lock, no log line, no checkpoint; `kssm train --adopt` first
moves every foreign file into previous/<UTC time>/ (kssm_core.training.archive), byte for byte.

With check_formats=False the test reads names only (any weights without events.jsonl count as foreign);
the format test opens checkpoints memory-mapped with torch.load(weights_only=True), importing torch then.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from kssm_core.runfolder import layout

EVENTS_NAME, LOG_NAME, BEST_NAME = layout.EVENTS, layout.TRAINING_LOG, layout.BEST_MODEL
_CHECKPOINT_RE = layout.CHECKPOINT_RE
# Ours even inside a foreign folder: the archive, and the cockpit's capture of the trainer it is starting.
NEVER_MOVED = (layout.PREVIOUS, layout.TRAINER_OUT, layout.TRAINER_ERR)


@dataclass
class ForeignRun:
    """What was found in a folder that holds a run another program wrote."""

    run_dir: Path
    files: list[Path]
    """What --adopt moves to previous/: every entry of a foreign folder, or the stray checkpoints among ours."""
    evidence: list[str] = field(default_factory=list)
    """The names that gave it away (training.log, checkpoint_100.pt, ...)."""
    whole: bool = True
    """True: the folder is another program's (no events.jsonl); False: foreign checkpoints beside our run."""

    def newest_weights(self) -> Path | None:
        """The file to suggest for --init-from: the newest checkpoint, else best_model.pt."""
        steps = sorted((int(m.group(1)), n) for n in self.evidence if (m := _CHECKPOINT_RE.match(n)))
        if steps:
            return self.run_dir / steps[-1][1]
        return self.run_dir / BEST_NAME if BEST_NAME in self.evidence else None

    def what(self) -> str:
        """`a run written by another trainer (training.log, training.lock, best_model.pt; no events.jsonl)`"""
        names = ", ".join(sorted(p.name for p in self.files)[:6]) + (" ..." if len(self.files) > 6 else "")
        if self.whole:
            return f"a run written by another trainer ({names}; no {EVENTS_NAME})"
        return f"checkpoints that kssm did not write ({names}: no kssm format key)"

    def refusal(self, tokenizer_hint: str | None = None) -> str:
        """One line: what was found, and the two ways on."""
        weights = self.newest_weights()
        init = f" --init-from {weights}" if weights is not None else " --init-from CHECKPOINT"
        tok = f" {tokenizer_hint}" if tokenizer_hint else ""
        return (f"{self.run_dir} holds {self.what()}: kssm never writes into it. Either train from its weights "
                f"in a new folder: kssm train --output-dir NEW{init}{tok}, or add --adopt to move its files "
                f"to {self.run_dir / 'previous'}/<UTC time>/ first (renamed, byte for byte)")


def is_ours(path: str | Path) -> bool | None:
    """True: a checkpoint this project wrote (our `format` key); False: not ours (loadable without the key,
    pickled Python objects the safe loader refuses, or not a K-SSM checkpoint at all); None: damaged or
    truncated, so nothing can be said (callers that delete or replace treat None as not theirs)."""
    from kssm_core.training.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(path, mmap=True)  # mapped: a multi-GB file costs little memory
    except CheckpointError as exc:
        text = str(exc)
        if ": refused:" in text or "not a K-SSM checkpoint" in text:  # a real file of someone else's making
            return False
        return None
    return state.get("format") == CHECKPOINT_FORMAT


def _entries(root: Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def foreign_run(run_dir: str | Path, check_formats: bool = True) -> ForeignRun | None:
    """The foreign run in run_dir (top level only; symlinks are listed, never followed), or None."""
    root = Path(run_dir)
    entries = _entries(root)
    names = {e.name for e in entries}
    weights = [e.name for e in entries if e.name == BEST_NAME or _CHECKPOINT_RE.match(e.name)]
    if EVENTS_NAME not in names:
        evidence = [n for n in [LOG_NAME, *weights] if n in names]
        if not evidence:
            return None
        if LOG_NAME not in names and check_formats and all(is_ours(root / n) is True for n in weights):
            return None  # only our own checkpoints, copied here (e.g. to resume elsewhere): ours to use
        files = [Path(e.path) for e in entries if e.name not in NEVER_MOVED]
        return ForeignRun(root, files, evidence, whole=True)
    if not check_formats:
        return None
    stray = []
    for e in entries:
        if e.name in weights and e.is_file(follow_symlinks=False) and is_ours(root / e.name) is False:
            stray.append(e.name)
    if not stray:
        return None
    return ForeignRun(root, [root / n for n in stray], stray, whole=False)


def enclosing_foreign_run(path: str | Path) -> ForeignRun | None:
    """The foreign run in `path` or in any folder above it (an output folder inside another trainer's run folder
    would be a file we put there). Judged by files alone: no checkpoint is loaded."""
    p = Path(path).absolute()
    for folder in (p, *p.parents):
        if folder.is_dir():
            found = foreign_run(folder, check_formats=False)
            if found is not None:
                return found
    return None
