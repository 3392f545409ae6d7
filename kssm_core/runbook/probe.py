"""The facts about a run folder that its log does not hold: the lock, the trainer process, the newest
checkpoint, the evaluation results, disk and memory. All the I/O of `kssm status` beyond reading the
log happens here, so `judge` stays a pure function of (history, facts).

`FactsCache` keeps the slow parts (the checkpoint scan and zip check, eval/*.json) until the files they
came from change (by file identity: inode, size, mtime), so the cockpit can re-probe every second.
The lock's liveness and the process are looked at every time: they change without any file changing.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from kssm_core.runfolder import layout, system
from kssm_core.runfolder.history import RunHistory, as_step
from kssm_core.runfolder.lock import LockInfo, lock_state, read_lock
from kssm_core.runfolder.system import ProcessFacts, SystemFacts

MAX_EVAL_FILE_BYTES = 1_000_000
SYSTEM_EVERY_S = 2.0  # disk / memory sampled at most this often through a FactsCache


@dataclass
class RunFacts:
    lock_info: LockInfo | None
    lock: str  # none | live | stale | foreign (kssm_core.runfolder.lock.lock_state)
    lock_reason: str
    pid: int | None  # the lock's PID, else the newest run_start's
    process: ProcessFacts | None  # of that PID (None: no PID, or not looked up for a foreign lock)
    newest_checkpoint: dict | None  # {"path", "step", "bytes", "intact"}
    eval_results: dict = field(default_factory=dict)  # eval/*.json by suite name
    eval_problems: list[str] = field(default_factory=list)
    system: SystemFacts = field(default_factory=lambda: SystemFacts(None, None, None, None))
    run_pid: int | None = None  # the newest run_start's PID when it differs from the lock's
    run_process: ProcessFacts | None = None  # of run_pid: the run's own trainer may live on with a stale lock


def newest_checkpoint(run_dir: Path, found: tuple[int, str, int] | None | bool = False) -> dict | None:
    """{"path", "step", "bytes", "intact"} of the newest checkpoint; `found`: its layout listing, if already made."""
    if found is False:
        found = layout.newest_checkpoint_file(run_dir)
    if found is None:
        return None
    step, name, size = found
    # torch.save writes a zip: a missing central directory is the usual mark of a save cut short. Reading
    # the file's tail is cheap and needs no torch (kssm status stays fast); --resume loads it for real.
    try:
        intact = zipfile.is_zipfile(Path(run_dir) / name)
    except OSError:
        intact = False
    return {"path": name, "step": step, "bytes": size, "intact": intact}


def load_eval_results(run_dir: str | Path) -> tuple[dict, list[str]]:
    """RUN_DIR/eval/*.json as {suite name: object}; unreadable files are skipped and named in the second value."""
    out: dict = {}
    problems: list[str] = []
    folder = Path(run_dir) / layout.EVAL_DIR
    if not folder.is_dir():
        return out, problems
    for path in sorted(folder.glob("*.json")):
        try:
            if path.stat().st_size > MAX_EVAL_FILE_BYTES:
                problems.append(f"{path.name}: over 1 MB, skipped")
                continue
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            problems.append(f"{path.name}: unreadable ({type(exc).__name__})")
            continue
        if isinstance(obj, dict):
            out[path.stem] = obj
        else:
            problems.append(f"{path.name}: not a JSON object")
    return out, problems


def _pid_of(history: RunHistory, info: LockInfo | None) -> int | None:
    if info is not None and info.pid is not None:
        return info.pid
    return as_step((history.run_start or {}).get("pid"))


def _sig(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _dir_sig(path: Path) -> tuple | None:
    """A folder's identity plus its entries' (name, size, mtime): changes when a file is added, replaced or grows."""
    try:
        with os.scandir(path) as it:
            entries = []
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append((e.name, st.st_size, st.st_mtime_ns))
    except OSError:
        return None
    return tuple(sorted(entries))


def evals_key(run_dir: str | Path) -> tuple | None:
    """Changes when an evaluation result is written (the cheap part of the facts a cache must notice)."""
    return _dir_sig(Path(run_dir) / layout.EVAL_DIR)


def probe(run_dir: str | Path, history: RunHistory, cache: "FactsCache | None" = None) -> RunFacts:
    """Every fact judge() needs about run_dir besides its log."""
    run_dir = Path(run_dir)
    info = read_lock(run_dir)
    lock, reason = lock_state(info)
    pid = _pid_of(history, info)
    proc = None if lock == "foreign" else system.process(pid)  # another host's PID says nothing here
    run_pid = as_step((history.run_start or {}).get("pid"))
    run_proc = None
    if run_pid is not None and run_pid != pid and lock != "foreign":
        run_proc = system.process(run_pid)
    else:
        run_pid = None
    if cache is not None:
        ckpt, evals, problems, sysf = cache.slow_facts(run_dir)
    else:
        ckpt = newest_checkpoint(run_dir)
        evals, problems = load_eval_results(run_dir)
        sysf = system.gather(run_dir)
    return RunFacts(info, lock, reason, pid, proc, ckpt, evals, problems, sysf, run_pid, run_proc)


class FactsCache:
    """The slow facts of each folder, kept until their files change (and disk / memory for SYSTEM_EVERY_S)."""

    def __init__(self) -> None:
        self._ckpt: dict[Path, tuple] = {}
        self._evals: dict[Path, tuple] = {}
        self._system: dict[Path, tuple[float, SystemFacts]] = {}

    def slow_facts(self, run_dir: Path) -> tuple[dict | None, dict, list[str], SystemFacts]:
        newest = layout.newest_checkpoint_file(run_dir)
        key = (newest, _sig(run_dir / newest[1]) if newest else None)
        hit = self._ckpt.get(run_dir)
        if hit is None or hit[0] != key:
            hit = self._ckpt[run_dir] = (key, newest_checkpoint(run_dir, newest))
        ckpt = hit[1]
        ekey = _dir_sig(run_dir / layout.EVAL_DIR)
        ehit = self._evals.get(run_dir)
        if ehit is None or ehit[0] != ekey:
            ehit = self._evals[run_dir] = (ekey, *load_eval_results(run_dir))
        now = time.monotonic()
        shit = self._system.get(run_dir)
        if shit is None or now - shit[0] >= SYSTEM_EVERY_S:
            shit = self._system[run_dir] = (now, system.gather(run_dir))
        return ckpt, ehit[1], ehit[2], shit[1]
