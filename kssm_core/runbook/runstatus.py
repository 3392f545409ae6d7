"""What `kssm status` says about one run folder: the RunStatus and Recommendation types, their JSON form
(docs/status-json.md) and the exit code. Data only: judge.py decides the values.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from kssm_core.runbook.verdicts import Alert, MatrixRow, Severity, StageAssessment, Verdict

SCHEMA = "kssm-status/1"
EXIT_OK, EXIT_WARNING, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2, 3


@dataclass
class Recommendation:
    code: str  # all_clear | starting | active | stalled | foreign_lock | stale_lock | crashed | interrupted | failed
    #            | completed | no_final_checkpoint | unreadable
    text: str  # one line, e.g. "CRASHED at step 340: kssm train --output-dir results/stage2 --resume --max-steps 500"
    command: str | None = None  # the command inside `text`, alone, to paste
    argv: list[str] | None = None  # the same command as an argv (kssm_core.runbook.cmdline): what a key runs

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, "command": self.command}


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
    state_reason: str = ""  # one line: why the state is what it is ("the log stops at step 150", ...)
    # The one thing to shout about, if any: (severity "critical" | "warning", one line). A crash, then a final
    # Failure row (never a provisional one), then the most severe alert. The cockpit's banner shows it.
    headline: tuple[str, str] | None = None
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
            "state_reason": self.state_reason,
            "headline": {"severity": self.headline[0], "text": self.headline[1]} if self.headline else None,
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


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def exit_code_for(s: RunStatus) -> int:
    """0 healthy / active / all clear, 1 warnings, 2 failures (see docs/status-json.md)."""
    code = EXIT_OK
    # an end status this version does not know is a failure; a reference log that merely stops is a warning
    unknown_end = s.state == "unknown" and s.source != "legacy"
    if s.recommendation.code in ("crashed", "failed", "failing", "stalled", "unreadable") or unknown_end \
            or (s.assessment.verdict is Verdict.FAILURE and not s.assessment.provisional) \
            or any(a.severity is Severity.CRITICAL for a in s.alerts):
        return EXIT_FAILURE
    if s.recommendation.code in ("stale_lock", "interrupted", "foreign_lock", "no_final_checkpoint", "unknown") \
            or s.assessment.verdict in (Verdict.WARNING, Verdict.FAILURE) \
            or any(a.severity is Severity.WARNING for a in s.alerts) or s.read.get("note"):
        code = EXIT_WARNING
    return code
