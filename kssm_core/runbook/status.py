"""`kssm status` as data: one RunStatus per run folder.

`run_status(run_dir)` = read the history through the one follower (kssm_core.runfolder.follower) ->
probe the folder's facts (kssm_core.runbook.probe) -> the pure judge (kssm_core.runbook.judge). The CLI,
`--watch` (which keeps its follower between calls) and the cockpit's tail worker all go this way, so
they cannot disagree. The JSON form and the exit codes are documented in docs/status-json.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from kssm_core.runbook.criteria import Criteria
from kssm_core.runbook.judge import judge
from kssm_core.runbook.probe import FactsCache, probe
from kssm_core.runbook.runstatus import (EXIT_FAILURE, EXIT_OK, EXIT_USAGE, EXIT_WARNING, SCHEMA,  # noqa: F401
                                         Recommendation, RunStatus, exit_code_for, format_duration)
from kssm_core.runfolder import layout
from kssm_core.runfolder.follower import RunFollower
from kssm_core.runfolder.layout import is_run_dir


def find_run_dirs(path: str | Path) -> list[Path]:
    """The folder itself when it is a run folder (or its events.jsonl / training.log), else its run-folder
    children (sorted by name)."""
    p = Path(path)
    if p.is_file() and p.name in (layout.EVENTS, layout.TRAINING_LOG, layout.LOCK):  # pointed at a run's file
        p = p.parent
    if is_run_dir(p):
        return [p]
    try:
        children = sorted(c for c in p.iterdir() if c.is_dir())
    except OSError:
        return []
    return [c for c in children if is_run_dir(c)]


def status_of(follower: RunFollower, criteria: Criteria | None = None, *, now: float | None = None,
              facts_cache: FactsCache | None = None) -> RunStatus:
    """Judge what `follower` has read so far (the caller polls it): the cockpit's entry point."""
    facts = probe(follower.run_dir, follower.history, facts_cache)
    return judge(follower.history, facts, criteria, now, run_dir=follower.run_dir, source=follower.source,
                 read=follower.read_info())


def run_status(run_dir: str | Path, criteria: Criteria | None = None, *, follower: RunFollower | None = None,
               use_cache: bool = True, now: float | None = None) -> RunStatus:
    """Everything `kssm status` says about one run folder. Pass `follower` to keep reading incrementally
    across calls (--watch); else the JSON cache makes a second call read only the new bytes."""
    now = time.time() if now is None else now
    f = follower or RunFollower(run_dir, use_cache=use_cache)
    f.reset_counters()
    f.refresh()
    f.save_cache_if_due(now)
    return status_of(f, criteria, now=now)


__all__ = ["RunStatus", "Recommendation", "run_status", "status_of", "find_run_dirs", "is_run_dir",
           "exit_code_for", "format_duration"]
