"""`kssm status` as data: one RunStatus per run folder, built from its events, lock, checkpoints and this machine.

`run_status(run_dir)` is what the CLI and the cockpit call. Reading is incremental: a small JSON cache
(never pickle) outside the run folder, which only the trainer writes, holds the byte offset, the file's
identity and the folded history, so a second call on a grown events.jsonl reads only the new bytes.
The JSON form (RunStatus.to_dict) and the exit codes are documented in docs/status-json.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kssm_core.runbook import alerts as alerts_mod
from kssm_core.runfolder import legacy
from kssm_core.runbook import playbook
from kssm_core.runfolder import system
from kssm_core.runfolder.atomic import atomic_write_bytes
from kssm_core.config import stage as stage_info
from kssm_core.runbook.criteria import DEFAULT, Criteria
from kssm_core.runfolder.history import RunHistory, as_step
from kssm_core.runfolder.lock import LOCK_NAME, lock_state, read_lock
from kssm_core.runbook.matrix import assess_stage, full_matrix, infer_stage, load_eval_results
from kssm_core.runfolder.runlog import EventLogReader
from kssm_core.runbook.verdicts import Alert, MatrixRow, Severity, StageAssessment, Verdict

EVENTS_NAME = "events.jsonl"
CACHE_VERSION = 1
SCHEMA = "kssm-status/1"
EXIT_OK, EXIT_WARNING, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2, 3
_CKPT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
_HEAD_BYTES = 4096
READ_SLICE_BYTES = 8 * 1024 * 1024


@dataclass
class Recommendation:
    code: str  # all_clear | starting | active | stalled | foreign_lock | stale_lock | crashed | interrupted | failed
    #            | completed | no_final_checkpoint | unreadable
    text: str  # one line, e.g. "CRASHED at step 340: kssm train --output-dir results/stage2 --resume --max-steps 500"
    command: str | None = None  # the command inside `text`, alone, to paste

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunStatus:
    run_dir: str
    source: str  # "events" | "legacy" | "none" (no log yet) | "caller" (history handed in)
    state: str  # not_started | running | completed | interrupted | failed | crashed | unknown
    stage: int
    stage_name: str
    step: int | None
    target: int | None
    steps_per_s: float | None
    eta_s: float | None
    pid: int | None
    process: str  # alive | dead | unknown
    lock: str  # none | live | stale | foreign
    lock_reason: str
    newest_checkpoint: dict | None  # {"path", "step", "bytes", "intact"}
    best_val_loss: float | None
    latest: dict[str, float | None]
    run_end: dict | None
    assessment: StageAssessment
    matrix: list[MatrixRow]
    alerts: list[Alert]
    recommendation: Recommendation
    disk: dict[str, Any]
    memory: dict[str, Any]
    read: dict[str, Any]
    generated_at: float = field(default_factory=time.time)

    @property
    def exit_code(self) -> int:
        return exit_code_for(self)

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON object (docs/status-json.md); strict JSON: NaN / inf become null."""
        return _json_safe({
            "schema": SCHEMA,
            "run_dir": self.run_dir,
            "source": self.source,
            "state": self.state,
            "stage": self.stage,
            "stage_name": self.stage_name,
            "step": self.step,
            "target": self.target,
            "progress": (self.step / self.target) if self.step is not None and self.target else None,
            "steps_per_s": self.steps_per_s,
            "eta_s": self.eta_s,
            "pid": self.pid,
            "process": self.process,
            "lock": self.lock,
            "lock_reason": self.lock_reason,
            "newest_checkpoint": self.newest_checkpoint,
            "best_val_loss": self.best_val_loss,
            "latest": self.latest,
            "run_end": self.run_end,
            "assessment": self.assessment.to_dict(),
            "matrix": [r.to_dict() for r in self.matrix],
            "alerts": [a.to_dict() for a in self.alerts],
            "recommendation": self.recommendation.to_dict(),
            "disk": self.disk,
            "memory": self.memory,
            "read": self.read,
            "exit_code": self.exit_code,
            "generated_at": self.generated_at,
        })


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


# ---- finding run folders ---------------------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    if any((path / n).is_file() for n in (EVENTS_NAME, legacy.LOG_NAME, LOCK_NAME, "config.json")):
        return True
    try:
        return any(_CKPT_RE.match(e.name) for e in os.scandir(path))
    except OSError:
        return False


def find_run_dirs(path: str | Path) -> list[Path]:
    """The folder itself when it is a run folder (or its events.jsonl / training.log), else its run-folder
    children (sorted by name)."""
    p = Path(path)
    if p.is_file() and p.name in (EVENTS_NAME, legacy.LOG_NAME, LOCK_NAME):  # pointed at a run's file
        p = p.parent
    if is_run_dir(p):
        return [p]
    try:
        children = sorted(c for c in p.iterdir() if c.is_dir())
    except OSError:
        return []
    return [c for c in children if is_run_dir(c)]


# ---- incremental reading with a JSON cache ---------------------------------------------------------------
def cache_dir() -> Path:
    env = os.environ.get("KSSM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kssm" / "status"


def _cache_path(events: Path) -> Path:
    key = hashlib.sha256(str(events.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return cache_dir() / f"{key}.json"


def _edges_hash(path: Path, offset: int) -> str:
    """Hash of the first and the last _HEAD_BYTES before `offset`: the cache trusts only the same bytes."""
    with open(path, "rb") as fh:
        head = fh.read(min(_HEAD_BYTES, offset))
        fh.seek(max(0, offset - _HEAD_BYTES))
        tail = fh.read(offset - max(0, offset - _HEAD_BYTES))
    return hashlib.sha256(head + b"|" + tail).hexdigest()


class EventsFollower:
    """Reader + history for one events.jsonl; `refresh()` folds in only what was appended.

    Kept alive by `kssm status --watch` (and usable by any caller); `load_cached()` restores a previous
    process's position from the JSON cache, `save_cache()` stores it.
    """

    def __init__(self, events_path: str | Path):
        self.path = Path(events_path)
        self.reader = EventLogReader(self.path)
        self.history = RunHistory()
        self.from_cache = False
        self.bytes_read = 0
        self._saved_at: float | None = None

    def load_cached(self) -> bool:
        cp = _cache_path(self.path)
        try:
            data = json.loads(cp.read_text(encoding="utf-8"))
            if data.get("version") != CACHE_VERSION or data.get("path") != str(self.path.resolve()):
                return False
            st = os.stat(self.path)
            r = data["reader"]
            if r.get("inode") != st.st_ino or int(r["offset"]) > st.st_size:
                return False
            if _edges_hash(self.path, int(r["offset"])) != data["edges"]:
                return False  # same inode, other content: the file was rewritten
            history = RunHistory.from_state(data["history"])
            reader = EventLogReader.from_state(self.path, r)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False  # a missing or damaged cache only costs a full read
        self.reader, self.history, self.from_cache = reader, history, True
        return True

    def refresh(self) -> RunHistory:
        before = self.reader.offset
        resets = self.reader.stats.resets
        while True:  # in slices, so memory stays bounded however large the file
            records = self.reader.read_new(max_bytes=READ_SLICE_BYTES, step_batches=True)
            if self.reader.stats.resets != resets:  # truncated or replaced: start the fold again
                resets = self.reader.stats.resets
                self.history = RunHistory()
                self.from_cache = False
                before = 0
            self.history.extend(records)
            moved = self.reader.offset - before
            if moved <= 0:
                break
            self.bytes_read += moved
            before = self.reader.offset
        return self.history

    def cache_due(self, now: float, every_s: float) -> bool:
        """--watch refreshes every few seconds: rewrite the cache at most every `every_s` seconds."""
        return self._saved_at is None or now - self._saved_at >= every_s

    def save_cache(self, now: float | None = None) -> None:
        """Best effort: a read-only home or a full disk only means the next call reads everything."""
        self._saved_at = time.time() if now is None else now
        try:
            cp = _cache_path(self.path)
            cp.parent.mkdir(parents=True, exist_ok=True)
            state = self.reader.state()
            body = {"version": CACHE_VERSION, "path": str(self.path.resolve()), "reader": state,
                    "edges": _edges_hash(self.path, state["offset"]), "history": self.history.to_state()}
            data = json.dumps(body, separators=(",", ":"), allow_nan=True).encode("utf-8")
            atomic_write_bytes(cp, data, durable=False)  # a cache: losing it costs one full read
        except (OSError, ValueError, TypeError):
            pass


# ---- building a status -------------------------------------------------------------------------------------
def _newest_checkpoint(run_dir: Path, history: RunHistory) -> dict | None:
    best: tuple[int, str, int] | None = None
    try:
        for e in os.scandir(run_dir):
            m = _CKPT_RE.match(e.name)
            if m and e.is_file():
                step = int(m.group(1))
                if best is None or step > best[0]:
                    best = (step, e.name, e.stat().st_size)
    except OSError:
        pass
    if best is not None:
        # torch.save writes a zip: a missing central directory is the usual mark of a save cut short. Reading
        # the file's tail is cheap and needs no torch (kssm status stays fast); --resume loads it for real.
        return {"path": best[1], "step": best[0], "bytes": best[2],
                "intact": zipfile.is_zipfile(Path(run_dir) / best[1])}
    return None


def _rate(history: RunHistory) -> float | None:
    pts = list(history.step_times)
    if len(pts) < 2:
        return None
    (t0, s0), (t1, s1) = pts[0], pts[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


def _latest(history: RunHistory) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in ("loss", "ce", "reg", "R", "u_val", "grad_norm", "lr", "tokens_per_s"):
        out[name] = history.steps.last(name)
    for name in ("val_loss", "val_ppl", "val_R", "val_u"):
        out[name] = history.evals.last(name)
    return out


def _finite_or_none(v: Any) -> Any:
    return v if not (isinstance(v, float) and not math.isfinite(v)) else None


def _read_note(read: dict) -> str | None:
    bad = read.get("bad_lines", 0)
    vals = read.get("malformed_values", 0) + read.get("skipped_events", 0)
    if not bad and not vals:
        return None
    parts = []
    if bad:
        over = read.get("oversized_lines", 0)
        parts.append(f"skipped {bad} unreadable line(s)" + (f" ({over} over 1 MB)" if over else ""))
    if vals:
        parts.append(f"ignored {vals} malformed value(s)/event(s)")
    return f"{EVENTS_NAME}: " + ", ".join(parts) + "; showing the rest"


def trainer_starting(history: RunHistory, info, lock: str) -> bool:
    """A live lock taken after the newest run_start / run_end: a trainer is starting (building the token
    cache, loading a checkpoint) and has not logged its run_start yet."""
    if lock != "live":
        return False
    if history.run_start is None:
        return True
    if history.run_end is None:
        return False
    taken = next((v for v in (getattr(info, "created", None), getattr(info, "mtime", None))
                  if isinstance(v, (int, float))), None)
    ended = history.run_end.get("t")
    return taken is not None and isinstance(ended, (int, float)) and taken > ended


def _run_state(history: RunHistory, source: str, lock: str, alive: bool, starting: bool = False) -> str:
    if starting:
        return "running"
    if history.run_start is None:  # a run_end alone: the trainer refused to start (no corpus, bad flags)
        failed = history.run_end is not None and history.run_end.get("status") == "failed"
        return "failed" if failed else "not_started"
    if history.run_end is not None:
        s = history.run_end.get("status")
        return s if s in ("completed", "interrupted", "failed") else "unknown"
    if alive or lock in ("live", "foreign"):
        return "running"
    return "crashed"


def _legacy_end(history: RunHistory, alive: bool) -> RunHistory:
    """A reference-trainer log has no end marker: call it completed at its target, interrupted before.
    Returns a shallow copy when it adds one (the caller's history is not changed)."""
    if history.run_start is None or history.run_end is not None or alive:
        return history
    step, target = history.last_step, history.max_steps
    history = copy.copy(history)
    if target is None or (step is not None and step >= target):
        history.run_end = {"event": "run_end", "status": "completed", "reason": "legacy log (no end marker)", "step": step}
    else:
        history.run_end = {"event": "run_end", "status": "interrupted",
                           "reason": f"legacy log ends at step {step} before {target}", "step": step}
    return history


def _process(history: RunHistory, info, lock: str) -> tuple[int | None, str, system.ProcessFacts | None]:
    pid = info.pid if info is not None else as_step((history.run_start or {}).get("pid"))
    if lock == "live":
        return pid, "alive", system.process(pid)
    if lock == "foreign":
        return pid, "unknown", None
    if pid is None or history.run_start is None:
        return pid, "unknown" if pid is None else "dead", None
    facts = system.process(pid)
    start_t = (history.run_start or {}).get("t")
    # the run's own process only if it started before its run_start (else the PID was reused)
    if facts is not None and facts.alive and isinstance(start_t, (int, float)) and facts.create_time is not None \
            and facts.create_time <= start_t + 1 and history.run_end is None:
        return pid, "alive", facts
    return pid, "dead", None


def run_status(run_dir: str | Path, criteria: Criteria | None = None, history: RunHistory | None = None, *,
               follower: EventsFollower | None = None, use_cache: bool = True, now: float | None = None) -> RunStatus:
    """Everything `kssm status` says about one run folder. Pass `history` when you already fold the events
    (the cockpit's tailer); pass `follower` to keep reading incrementally across calls (--watch)."""
    c = criteria or DEFAULT
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    events = run_dir / EVENTS_NAME
    read: dict[str, Any] = {"lines": 0, "bad_lines": 0, "oversized_lines": 0, "resets": 0, "bad_examples": [],
                            "malformed_values": 0, "skipped_events": 0, "from_cache": False, "bytes_read": 0}
    if history is not None:
        source = "caller"
    elif events.is_file():
        source = "events"
        f = follower or EventsFollower(events)
        if follower is None and use_cache:
            f.load_cached()
        f.bytes_read = 0
        try:
            history = f.refresh()
        except OSError as exc:  # unreadable (permissions, I/O error): say so, judge what was read
            history = f.history
            read["error"] = f"cannot read {events}: {exc.strerror or exc}"
        if use_cache and (f.bytes_read or not f.from_cache) and f.cache_due(now, every_s=0 if follower is None else 30):
            f.save_cache(now)
        st = f.reader.stats
        read.update(lines=st.lines, bad_lines=st.bad_lines, oversized_lines=st.oversized_lines, resets=st.resets,
                    bad_examples=list(st.bad_examples), from_cache=f.from_cache, bytes_read=f.bytes_read)
    elif legacy.has_legacy_log(run_dir):
        source = "legacy"
        history = RunHistory()
        try:
            history.extend(legacy.read_legacy(run_dir))
        except OSError as exc:
            read["error"] = f"cannot read {legacy.LOG_NAME}: {exc.strerror or exc}"
    else:
        source, history = "none", RunHistory()
    read.update(malformed_values=history.malformed_values, skipped_events=history.skipped_events)

    info = read_lock(run_dir)
    lock, lock_reason = lock_state(info)
    pid, proc, pfacts = _process(history, info, lock)
    alive = proc == "alive"
    if source == "legacy" or (source == "caller" and not events.is_file() and legacy.has_legacy_log(run_dir)):
        history = _legacy_end(history, alive)
    starting = trainer_starting(history, info, lock)
    state = _run_state(history, source, lock, alive, starting)

    stage = infer_stage(history, run_dir)
    eval_results, eval_problems = load_eval_results(run_dir)
    if eval_problems:
        read["eval_problems"] = eval_problems
    assessment = assess_stage(history, stage, c, eval_results, run_dir)
    matrix = full_matrix(history, stage, c, eval_results, run_dir)

    facts = system.gather(run_dir)
    facts.process = pfacts
    alert_list = alerts_mod.compute_alerts(history, lock=lock, facts=facts, now=now, criteria=c, run_dir=run_dir,
                                           process_alive=alive)
    need = alerts_mod.checkpoint_need(history)
    step = history.last_step
    target = history.max_steps
    rate = _rate(history) if state == "running" else None
    eta = (target - step) / rate if rate and target is not None and step is not None and target > step else None
    read["note"] = read.get("error") or _read_note(read)

    status = RunStatus(
        run_dir=str(run_dir),
        source=source,
        state=state,
        stage=stage,
        stage_name=stage_info(stage).name,
        step=step,
        target=target,
        steps_per_s=rate,
        eta_s=eta,
        pid=pid,
        process=proc,
        lock=lock,
        lock_reason=lock_reason,
        newest_checkpoint=_newest_checkpoint(run_dir, history),
        best_val_loss=history.best_val_loss,
        latest={k: _finite_or_none(v) for k, v in _latest(history).items()},
        run_end=({k: history.run_end.get(k) for k in ("status", "reason", "advice", "step", "final_checkpoint")}
                 if history.run_end and not starting else None),
        assessment=assessment,
        matrix=matrix,
        alerts=alert_list,
        recommendation=Recommendation("all_clear", ""),
        disk={"free_bytes": facts.disk_free_bytes, "total_bytes": facts.disk_total_bytes,
              "needed_bytes": need.bytes_needed, "checkpoint_bytes": need.bytes_each,
              "remaining_saves": need.remaining_saves, "files_kept": need.files_kept,
              "checkpoint_bytes_estimated": need.estimated},
        memory={"available_bytes": facts.mem_available_bytes, "total_bytes": facts.mem_total_bytes,
                "process_rss_bytes": pfacts.rss_bytes if pfacts else None,
                "process_cpu_s": pfacts.cpu_seconds if pfacts else None},
        read=read,
        generated_at=now,
    )
    status.recommendation = recommend(status, history, starting=starting,
                                      lock_age_s=now - info.created if starting and info and info.created else None)
    return status


# ---- the one recommendation -----------------------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _foreign_lock(s: RunStatus) -> Recommendation:
    cmd = playbook.shlex.join(["kssm", "unlock", "--force", s.run_dir])
    return Recommendation("foreign_lock", f"LOCKED ON ANOTHER HOST: {s.lock_reason}; run kssm status there "
                          f"(if that trainer is gone: {cmd})")


def recommend(s: RunStatus, history: RunHistory, starting: bool = False, lock_age_s: float | None = None) -> Recommendation:
    d = s.run_dir
    step = s.step if s.step is not None else 0
    if s.read.get("error") and history.run_start is None:
        return Recommendation("unreadable", f"UNREADABLE: {s.read['error']}; fix that before starting anything here")
    if starting:
        cmd = playbook.shlex.join(["kssm", "status", d, "--watch"])
        age = f" for {format_duration(max(0.0, lock_age_s))}" if lock_age_s is not None else ""
        return Recommendation("starting", f"TRAINER STARTING: PID {s.pid} holds the lock{age}, no step yet "
                              f"(building the token cache or loading weights); watch: {cmd}", cmd)
    if s.state == "running":
        if s.lock == "foreign":
            return _foreign_lock(s)
        stalled = next((a for a in s.alerts if a.code == "stalled"), None)
        if stalled is not None:
            cmd = f"kill -TERM {s.pid}" if s.pid else None
            return Recommendation("stalled", f"STALLED at step {step}: {stalled.message}; look at {d}/trainer.out"
                                  + (f", then stop it: {cmd}" if cmd else ""), cmd)
        where = f"step {step}/{s.target}" if s.target else f"step {step}"
        rate = f", {s.steps_per_s:.2f} steps/s, ETA {format_duration(s.eta_s)}" if s.steps_per_s else ""
        return Recommendation("active", f"TRAINING ACTIVE: PID {s.pid}, {where}{rate}; watch: kssm status {d} --watch",
                              playbook.shlex.join(["kssm", "status", d, "--watch"]))
    if s.lock == "foreign":
        return _foreign_lock(s)
    if s.state == "crashed":
        cmd = playbook.resume_command(history, d)
        extra = " (the stale lock is taken over on resume)" if s.lock == "stale" else ""
        if s.newest_checkpoint is None:
            extra += " (no checkpoint yet: it starts over with the run's original settings)"
        return Recommendation("crashed", f"CRASHED at step {step}: {cmd}{extra}", cmd)
    if s.lock == "stale":
        cmd = playbook.unlock_command(d)
        return Recommendation("stale_lock", f"STALE LOCK ({s.lock_reason}): {cmd}", cmd)
    if s.state == "not_started":
        args = ["kssm", "train", "--stage", str(s.stage), "--output-dir", d]
        cmd = playbook.shlex.join(args + playbook.init_from_args(Path(d).parent, s.stage))
        return Recommendation("all_clear", f"ALL CLEAR: safe to start: {cmd}", cmd)
    if s.state == "interrupted":
        cmd = playbook.resume_command(history, d)
        return Recommendation("interrupted", f"INTERRUPTED at step {step}: resume with {cmd}", cmd)
    if s.state == "unknown":  # a run_end with a status this version does not know
        end = s.run_end or {}
        return Recommendation("failed", f"ENDED at step {step} with status {str(end.get('status'))[:40]!r} "
                              f"({str(end.get('reason'))[:80]}): see {d}/trainer.out")
    if s.state == "failed":
        end = s.run_end or {}
        reason = str(end.get("reason") or "unknown")
        if reason == "nan_loss":
            cmd = playbook.train_command(history, d, learning_rate=playbook.lower_learning_rate(history.config.get("learning_rate")))
        else:
            cmd = None
        advice = cmd or str(end.get("advice") or "see trainer.out for the traceback")
        where = "TO START" if history.run_start is None else f"at step {step}"
        return Recommendation("failed", f"FAILED {where} ({reason}): {advice}", cmd)
    # completed (or a legacy log judged complete)
    if (s.run_end or {}).get("final_checkpoint") is False:  # nothing saved at the end: not a result to chain from
        cmd = playbook.resume_command(history, d)
        return Recommendation("no_final_checkpoint", f"COMPLETED without a final checkpoint (disk low): free space "
                              f"(kssm clean {playbook.shlex.quote(d)}), then resume/rerun: {cmd}", cmd)
    a = s.assessment
    if a.verdict is Verdict.FAILURE or a.verdict is Verdict.WARNING:
        row = next((r for r in a.rows if r.verdict is a.verdict and r.remedy), None)
        word = "FAILED its gate" if a.verdict is Verdict.FAILURE else "has warnings"
        tail = f": {row.remedy}" if row else ""
        return Recommendation("completed", f"COMPLETED stage {s.stage}, which {word} ({a.summary}){tail}",
                              row.remedy if row else None)
    if s.stage >= 5:
        if any(r.verdict is Verdict.PENDING for r in a.rows):
            cmd = playbook.shlex.join(["kssm", "eval", "all", "--model", str(Path(d) / "best_model.pt")])
            return Recommendation("completed", f"COMPLETED stage 5: run the full evaluation suite: {cmd}", cmd)
        return Recommendation("completed", "COMPLETED stage 5: ALL CLEAR: every gate of the runbook passes")
    nxt = s.stage + 1
    args = ["kssm", "train", "--stage", str(nxt)]
    root = Path(d).parent
    args += ["--runs-root", str(root)] if str(root) not in ("", ".", "results") else []
    for name in ("preset", "corpus"):
        v = history.config.get(name)
        if isinstance(v, str) and v and v != getattr(playbook._DEFAULTS, name):
            args += ["--" + name, v]
    best = Path(d) / "best_model.pt"  # the run just judged: what the cockpit's n chains from
    if best.is_file():
        args += ["--init-from", str(best)]
    cmd = playbook.shlex.join(args)
    return Recommendation("completed", f"COMPLETED stage {s.stage} ({a.verdict.value}): ALL CLEAR: safe to start stage {nxt}: {cmd}", cmd)


def exit_code_for(s: RunStatus) -> int:
    """0 healthy / active / all clear, 1 warnings, 2 failures (see docs/status-json.md)."""
    code = EXIT_OK
    if s.recommendation.code in ("crashed", "failed", "stalled", "unreadable") or s.assessment.verdict is Verdict.FAILURE \
            or any(a.severity is Severity.CRITICAL for a in s.alerts):
        return EXIT_FAILURE
    if s.recommendation.code in ("stale_lock", "interrupted", "foreign_lock", "no_final_checkpoint") or s.assessment.verdict is Verdict.WARNING \
            or any(a.severity is Severity.WARNING for a in s.alerts) or s.read.get("note"):
        code = EXIT_WARNING
    return code
