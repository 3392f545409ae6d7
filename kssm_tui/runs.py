"""The runs worker: the runs view's list of every run folder, and the overlay of the marked ones (no Textual).

`RunsBoard.scan()` finds the run folders (kssm_core.runfolder.layout.is_run_dir) under RUNS_ROOT (its children,
and the run folders one level further down, e.g. results/sweep/seed1), the archived runs under each one's
`previous/`, and the --attach / --compare folders; each is read by a RunFollower and judged by the core's
status_of, as the tail worker does, and worded by kssm_tui.labels. A follower is kept between scans, so a
rescan reads only new bytes. `runs_loop` is the worker body: it rescans while the runs view is open, follows the
marked runs and posts an OverlayView (kssm_tui.overlay) when they or the overlay's settings change.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kssm_core.runbook.probe import FactsCache
from kssm_core.runbook.stages import STAGES
from kssm_core.runbook.status import find_run_dirs, status_of
from kssm_core.runfolder import layout
from kssm_core.runfolder.follower import RunFollower

from . import labels
from .messages import OverlayChanged, RunsListed, WorkerTrouble
from .overlay import OverlayBuilder, best_ppl

LIST_EVERY_S = 2.0  # the open runs view is rescanned this often (new bytes only)
PROGRESS_EVERY_S = 0.5  # a long first scan posts what it has judged so far this often


@dataclass(frozen=True)
class RunRow:
    """One line of the runs view."""

    folder: Path
    name: str  # relative to RUNS_ROOT where it lies under it, else the path as given
    origin: str  # stage / run / previous / attach / compare
    state: str  # labels.plan_label of its RunStatus ("loading" before it is judged)
    step: int | None = None
    target: int | None = None
    best_ppl: float | None = None
    verdict: str | None = None  # healthy / warning / failure / pending

    @property
    def key(self) -> Path:
        """The folder as an absolute path (no file system access): what marks are keyed by."""
        return run_key(self.folder)


def run_key(folder: str | Path) -> Path:
    """A run folder's identity for marks and the overlay: its absolute path, normalised, links not followed."""
    return Path(os.path.abspath(folder))


def _stage_names() -> set[str]:
    return {s.output_dir for s in STAGES}


class RunsBoard:
    """What the runs worker knows: where runs are, their judgements, and the overlay's settings.

    The App writes `marked`, `time_axis`, `smoothing` and `listing` (plain assignments) and sets `wake`."""

    def __init__(self, runs_root: Path, attach: Path | None = None, compare=()) -> None:
        self.runs_root = Path(runs_root)
        self.attach = Path(attach) if attach else None
        self.compare = [Path(c) for c in compare]
        self.followers: dict[Path, RunFollower] = {}
        self.facts = FactsCache()
        self.overlay = OverlayBuilder()
        self.marked: tuple[tuple[Path, int], ...] = ()  # (folder, slot)
        self.time_axis = False
        self.smoothing = False
        self.listing = False  # the runs view is open: keep the list fresh
        self.wake = threading.Event()
        self.scan_now = threading.Event()  # set by the App when the view opens

    # ---- the list -------------------------------------------------------------------------------------
    def folders(self) -> list[tuple[Path, str, str]]:
        """(folder, name, origin) of every run folder to list, each once, in a stable order."""
        out: list[tuple[Path, str, str]] = []
        seen: set[Path] = set()

        def add(folder: Path, origin: str) -> None:
            key = _resolved(folder)
            if key in seen:
                return
            seen.add(key)
            out.append((folder, self._name(folder), origin))
            for old in find_run_dirs(folder / layout.PREVIOUS) if (folder / layout.PREVIOUS).is_dir() else ():
                k = _resolved(old)
                if k not in seen and old != folder / layout.PREVIOUS:
                    seen.add(k)
                    out.append((old, self._name(old), "previous"))

        stages = _stage_names()
        root = self.runs_root
        if layout.is_run_dir(root):
            add(root, "run")
        else:
            try:
                children = sorted(c for c in root.iterdir() if c.is_dir())
            except OSError:
                children = []
            ordered = [c for s in STAGES for c in children if c.name == s.output_dir]
            ordered += [c for c in children if c.name not in stages]
            for c in ordered:
                if layout.is_run_dir(c):
                    add(c, "stage" if c.name in stages else "run")
                elif c.name != layout.PREVIOUS:
                    for g in find_run_dirs(c):  # one level further down: results/sweep/seed1
                        if g != c:
                            add(g, "run")
        if self.attach is not None:
            add(self.attach, "attach")
        for c in self.compare:
            add(c, "compare")
        return out

    def _name(self, folder: Path) -> str:
        try:
            return str(folder.relative_to(self.runs_root))
        except ValueError:
            return str(folder)

    def judge(self, folder: Path, name: str, origin: str) -> RunRow:
        f = self.followers.get(folder)
        if f is None:
            f = self.followers[folder] = RunFollower(folder)
        f.refresh()
        st = status_of(f, facts_cache=self.facts)
        verdict = st.assessment.verdict.value if st.step is not None and st.source != "none" else None
        return RunRow(folder, name, origin, labels.plan_label(st), st.step, st.target, best_ppl(f.history), verdict)

    def scan(self, progress: Callable[[list[RunRow]], None] | None = None,
             cancelled: Callable[[], bool] = lambda: False) -> list[RunRow]:
        """Judge every listed folder; `progress` gets the rows so far (the rest as "loading") now and then."""
        found = self.folders()
        rows = [RunRow(d, n, o, "loading") for d, n, o in found]
        last = time.monotonic()
        for i, (d, n, o) in enumerate(found):
            if cancelled():
                break
            try:
                rows[i] = self.judge(d, n, o)
            except OSError as exc:
                rows[i] = RunRow(d, n, o, f"unreadable: {exc.strerror or exc}")
            if progress is not None and time.monotonic() - last > PROGRESS_EVERY_S and i + 1 < len(found):
                progress(list(rows))
                last = time.monotonic()
        for gone in [d for d in self.followers if d not in {d for d, _, _ in found}]:
            del self.followers[gone]
        return rows

    # ---- the overlay ----------------------------------------------------------------------------------
    def overlay_tick(self):
        """An OverlayView when the marked runs or the settings changed since the last one; else None."""
        return self.overlay.build_if_changed(self.marked, self.time_axis, self.smoothing)


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except OSError:
        return p.absolute()


def runs_loop(post: Callable, board: RunsBoard, interval: float, cancelled: Callable[[], bool]) -> None:
    """Body of the runs worker: rescan the open runs view, follow the marked runs; exits when cancelled."""
    last_error = None
    listed_at = -1e9
    while not cancelled():
        try:
            if board.scan_now.is_set() or (board.listing and time.monotonic() - listed_at > LIST_EVERY_S):
                board.scan_now.clear()
                first = listed_at < 0
                rows = board.scan(lambda rows: post(RunsListed(rows, False)) if first else None, cancelled)
                listed_at = time.monotonic()
                post(RunsListed(rows, True))
            view = board.overlay_tick()
            if view is not None:
                post(OverlayChanged(view))
        except Exception as exc:  # an unreadable folder or a bug must not stop the worker for good
            text = f"reading the runs failed: {type(exc).__name__}: {exc}"
            if text != last_error:
                post(WorkerTrouble(text))
                last_error = text
        board.wake.wait(interval)
        board.wake.clear()
