"""RUNS_ROOT/autopilot/: where the plan stands (state.json, rewritten atomically) and every decision with
its reason (decisions.jsonl, appended). An autopilot started again reads state.json and carries on; a
`kssm status` or a cockpit reads both to show what it is doing. File names from kssm_core.runfolder.layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kssm_core.runfolder import layout
from kssm_core.runfolder.atomic import atomic_write_bytes

SCHEMA = "kssm-autopilot/1"


@dataclass
class Attempt:
    """One trainer process (or one adopted / attached run) for a stage."""

    n: int
    kind: str  # start | resume | retry | remedy | rewind | adopt (a run found in the folder) | attach
    reason: str
    argv: list[str] | None = None
    started_at: float = field(default_factory=time.time)
    pid: int | None = None
    pid_start_time: float | None = None
    ended_at: float | None = None
    outcome: str | None = None  # completed | failed | crashed | interrupted | refused | stopped
    outcome_reason: str | None = None
    step: int | None = None
    learning_rate: float | None = None
    gate: str | None = None  # the gate's summary when this attempt's run was judged

    @classmethod
    def from_dict(cls, d: dict) -> "Attempt":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class StageRecord:
    index: int
    name: str
    output_dir: str
    steps: int
    gate: int
    status: str = "pending"  # pending | running | passed | held
    attempts: list[Attempt] = field(default_factory=list)
    crashes: int = 0  # resumes since the last progress reset
    crash_step: int | None = None  # the step at the newest crash (progress past it resets `crashes`)
    rewinds: int = 0
    remedies: int = 0
    overrides: dict = field(default_factory=dict)  # remedies and rewinds in effect (TrainConfig fields)
    init_from: str | None = None  # the weights the stage starts from (the previous stage's best model)
    last_error: dict | None = None  # {"sig", "step"}: the same error twice without a new step is a loop
    stop_sent: dict | None = None  # {"pid", "t", "why", "killed"}: we stopped a stalled trainer
    pending: dict | None = None  # a trainer decided on but not started yet (in its backoff): {"kind", "reason", "argv", "at"}
    evaluated: bool = False  # `kssm eval all` ran for a stage-5 gate
    verdict: str | None = None
    summary: str | None = None
    rows: list[dict] = field(default_factory=list)  # the gate's rows when it was judged
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StageRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        rec = cls(**{k: v for k, v in d.items() if k in known and k != "attempts"})
        rec.attempts = [Attempt.from_dict(a) for a in d.get("attempts") or [] if isinstance(a, dict)]
        return rec


@dataclass
class State:
    runs_root: str
    plan: dict
    plan_digest: str
    stages: list[StageRecord]
    status: str = "running"  # running | passed | held | stopped
    current: int = 1  # the stage (1-based) being worked on
    held: dict | None = None  # {"stage", "what", "why", "command"}
    next: str = ""  # one line: what the autopilot does next
    pid: int | None = None
    host: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    launches: int = 0  # how many times an autopilot process took this state up
    report: str | None = None

    def stage(self, index: int) -> StageRecord:
        return self.stages[index - 1]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema"] = SCHEMA
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "State":
        known = {f.name for f in dataclasses.fields(cls)}
        st = cls(**{k: v for k, v in d.items() if k in known and k != "stages"}, stages=[])
        st.stages = [StageRecord.from_dict(s) for s in d.get("stages") or [] if isinstance(s, dict)]
        return st


def autopilot_dir(runs_root: str | Path) -> Path:
    return Path(runs_root) / layout.AUTOPILOT_DIR


def read_state(runs_root: str | Path) -> dict | None:
    """state.json as a dict (None when there is none or it cannot be read): what `kssm status` shows."""
    try:
        d = json.loads((autopilot_dir(runs_root) / layout.AUTOPILOT_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) and d.get("schema") == SCHEMA else None


def read_decisions(runs_root: str | Path, last: int | None = None) -> list[dict]:
    """The decisions logged so far (a torn last line is skipped)."""
    out = []
    try:
        with open(autopilot_dir(runs_root) / layout.AUTOPILOT_DECISIONS, "rb") as fh:
            for line in fh:
                try:
                    d = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(d, dict):
                    out.append(d)
    except OSError:
        return []
    return out[-last:] if last else out


class Store:
    """The autopilot's folder: load / save the state, append decisions."""

    def __init__(self, runs_root: str | Path):
        self.dir = autopilot_dir(runs_root)
        self.state_path = self.dir / layout.AUTOPILOT_STATE
        self.decisions_path = self.dir / layout.AUTOPILOT_DECISIONS

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> State | None:
        try:
            d = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise StateError(f"{self.state_path} cannot be read ({exc}): move it aside to start over") from None
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise StateError(f"{self.state_path} is not an autopilot state ({SCHEMA}): move it aside to start over")
        try:
            return State.from_dict(d)
        except (TypeError, ValueError) as exc:
            raise StateError(f"{self.state_path} is damaged ({exc}): move it aside to start over") from None

    def save(self, state: State) -> None:
        state.updated_at = time.time()
        body = json.dumps(state.to_dict(), indent=1, allow_nan=False, default=str).encode("utf-8")
        atomic_write_bytes(self.state_path, body)

    def set_aside(self, now: float | None = None) -> Path | None:
        """Move the state of another plan to autopilot/previous/<UTC time>-state.json (never deleted)."""
        if not self.state_path.exists():
            return None
        base = self.dir / layout.PREVIOUS
        base.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        dest = base / f"{stamp}-{layout.AUTOPILOT_STATE}"
        n = 1
        while dest.exists():
            dest = base / f"{stamp}-{n}-{layout.AUTOPILOT_STATE}"
            n += 1
        os.rename(self.state_path, dest)
        return dest

    def decide(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one decision (a JSON line written in one call, then flushed to disk)."""
        line = {"t": round(time.time(), 3), **record}
        data = (json.dumps(line, allow_nan=False, default=str) + "\n").encode("utf-8")
        fd = os.open(self.decisions_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return line


class StateError(Exception):
    """state.json exists but cannot be used; one line."""


def whoami() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()


def summary(runs_root: str | Path, decisions: int = 5) -> dict[str, Any] | None:
    """What `kssm status` (and the cockpit) show about the autopilot of a runs root; None without a state.
    `alive`: its lock is held by a live process (a state that says running without one: it was stopped)."""
    from kssm_core.autopilot.lock import autopilot_lock_state

    d = read_state(runs_root)
    if d is None:
        return None
    lock, reason, info = autopilot_lock_state(autopilot_dir(runs_root))
    stages = [s for s in d.get("stages") or [] if isinstance(s, dict)]
    cur = d.get("current") if isinstance(d.get("current"), int) else None
    rec = stages[cur - 1] if cur and 0 < cur <= len(stages) else {}
    attempts = rec.get("attempts") or []
    return {
        "runs_root": str(runs_root),
        "state_file": str(autopilot_dir(runs_root) / layout.AUTOPILOT_STATE),
        "status": d.get("status"),
        "alive": lock == "live",
        "lock": lock,
        "lock_reason": reason,
        "pid": info.pid if info is not None and lock == "live" else d.get("pid"),
        "stage": cur,
        "stage_name": rec.get("name"),
        "attempt": len(attempts) or None,
        "held": d.get("held"),
        "next": d.get("next"),
        "report": d.get("report"),
        "updated_at": d.get("updated_at"),
        "stages": [{"index": s.get("index"), "name": s.get("name"), "status": s.get("status"),
                    "attempts": len(s.get("attempts") or []), "verdict": s.get("verdict")} for s in stages],
        "decisions": [{k: x.get(k) for k in ("t", "stage", "decision", "reason")}
                      for x in read_decisions(runs_root, last=decisions)],
    }


def describe(s: dict[str, Any]) -> list[str]:
    """Plain-text lines for `kssm status` from summary()."""
    status = str(s.get("status") or "?")
    if status == "running" and not s.get("alive"):
        head = f"autopilot ({s['runs_root']}): NOT RUNNING (its state says running; {s.get('lock_reason')}): " \
               f"`kssm autopilot {s['runs_root']}` carries on and re-attaches"
    else:
        who = f", PID {s['pid']}" if s.get("alive") and s.get("pid") else ""
        head = f"autopilot ({s['runs_root']}): {status.upper()}{who}"
        if s.get("stage"):
            head += f"  stage {s['stage']} ({s.get('stage_name')}), attempt {s.get('attempt') or '-'}"
    lines = [head]
    held = s.get("held")
    if held:
        lines.append(f"  held at stage {held.get('stage')} ({held.get('what')}): {held.get('why')}")
    if s.get("next"):
        lines.append(f"  next: {s['next']}")
    for x in s.get("decisions") or []:
        when = time.strftime("%H:%M:%S", time.localtime(x["t"])) if isinstance(x.get("t"), (int, float)) else "?"
        where = f"stage {x['stage']}" if x.get("stage") else "plan"
        lines.append(f"  {when} {where}: {x.get('decision')}: {x.get('reason')}")
    return lines
