"""The vocabulary shared by the runbook engine, `kssm status` and the cockpit: verdicts, matrix rows, alerts."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Verdict(str, enum.Enum):
    HEALTHY = "healthy"
    WARNING = "warning"
    FAILURE = "failure"
    PENDING = "pending"  # not enough data yet (e.g. no eval so far, agency not run yet)

    @property
    def rank(self) -> int:
        return {"pending": 0, "healthy": 1, "warning": 2, "failure": 3}[self.value]


class Action(str, enum.Enum):
    PROCEED = "proceed"  # Healthy: proceed to the next stage
    INVESTIGATE = "investigate"  # Warning: investigate, possibly adjust hyperparameters and retry this stage
    STOP = "stop"  # Failure: stop, debug, restart the stage or revise the architecture
    WAIT = "wait"  # the stage is still running or has too little data


@dataclass
class MatrixRow:
    """One cell of the runbook's decision matrix, judged from a run's history."""

    stage: int  # 1..5, the stage whose row this is
    metric: str  # "Loss", "Val PPL", "u_val", "R", "R zones", "Samples", "u_val regime", "Goldilocks", "Agency"
    verdict: Verdict
    reason: str  # one line quoting the numbers, e.g. "val PPL 812.4 < 1000"
    remedy: str | None = None  # a command the user can paste, for Warning / Failure
    remedy_note: str | None = None  # one line of why, from the runbook's failure modes
    # True: judged before the stage reached its milestone (a verdict *so far*: never a critical alert or a bell).
    # False: judged at the milestone, or an immediate finding (NaN, u at a clamp, ...) that is final at once.
    # None: not judged by the engine (a row built elsewhere); to_dict writes it as false.
    provisional: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        d["provisional"] = bool(self.provisional)
        return d


@dataclass
class StageAssessment:
    stage: int
    rows: list[MatrixRow]
    verdict: Verdict  # the worst row verdict (Pending only when every row is pending)
    action: Action
    summary: str  # one line, e.g. "Stage 2: WARNING (u_val near clamps) - investigate and retry"
    # True while the verdict is the stage's verdict so far (the stage has not reached its milestone), unless a
    # final (immediate) Failure row already settles it: act only on provisional == False (action is WAIT then).
    provisional: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "verdict": self.verdict.value,
            "action": self.action.value,
            "summary": self.summary,
            "provisional": self.provisional,
            "rows": [r.to_dict() for r in self.rows],
        }


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass
class Alert:
    """A problem beyond the matrix: grad norm, reg loss, stalled, crashed, disk, memory."""

    code: str  # "grad_exploding", "grad_vanishing", "reg_high", "reg_negative", "loss_nan", "u_floor_broken", "stalled",
    # "crashed", "disk_low", "memory_pressure"
    severity: Severity
    message: str  # one line with the numbers
    remedy: str | None = None  # a command to paste, where one exists
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d
