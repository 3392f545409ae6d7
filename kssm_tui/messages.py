"""The messages the cockpit's parts exchange, and the plain data they carry.

Workers (tail, watch, reaper) build these off the event loop and post them; the App only
copies their contents into widgets. Every payload is immutable or owned by the message:
no object is shared with a worker thread after posting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.message import Message

Series = tuple[str, list[int], list[float]]


@dataclass(frozen=True)
class StageInfo:
    """One stage folder at a glance (the stage plan and the `n` decision use it)."""

    number: int
    folder: Path
    state: str  # one of StagePlan's labels (kssm_tui.labels.plan_label): "not started", "running", "passed", ...
    step: int | None = None
    max_steps: int | None = None
    verdict: str | None = None  # healthy / warning / failure / pending, when assessed
    failed_rows: tuple[str, ...] = ()  # "Val PPL: val PPL 2400 > 2000" for rows not healthy
    lock_state: str = "none"  # none / live / stale / foreign
    lock_pid: int | None = None
    status: Any = None  # the kssm_core RunStatus the label was made from (None while loading)


@dataclass
class ChartSpec:
    """What one MetricChart shows: already downsampled series plus its guide lines."""

    title: str
    series: list[Series]
    hlines: list[tuple[float, str]] = field(default_factory=list)
    bands: list[tuple[float, float, str]] = field(default_factory=list)
    y_label: str = ""
    log_ok: bool = False  # the log-scale toggle applies to this chart
    # With smoothing on: per series, its debiased EMA over every logged point, thinned, as (x, values) (the
    # overlay's smoothing: kssm_core.reports.overlay.GrowingEma); None when the view was built without smoothing.
    smoothed: list[tuple[list[float], list[float]]] | None = None


@dataclass
class RunView:
    """Everything the dashboard shows about the selected run, computed in the tail worker."""

    run_dir: Path
    stage: int | None
    state: str
    state_reason: str
    last_step: int | None
    max_steps: int | None
    events: int
    bad_lines: int
    resets: int
    charts: dict[str, ChartSpec]
    sparks: dict[str, list[float]]
    matrix_rows: list[Any]  # kssm_core.runbook.verdicts.MatrixRow
    assessment: Any  # kssm_core.runbook.verdicts.StageAssessment | None
    recommendation: str
    lock_state: str
    lock_pid: int | None
    gpu_mem_bytes: float | None
    last_heartbeat_t: float | None
    disk_needed_bytes: int | None  # for the checkpoints still to come (kssm_core.runbook.alerts.checkpoint_need)
    new_entries: list[tuple[str, str]]
    replace_log: bool  # the log was reset (another run, or the file was replaced)
    alerts: list[Any] = field(default_factory=list)  # kssm_core.runbook.verdicts.Alert
    trainer_out_tail: str = ""
    end_status: str | None = None  # the newest run_end's status (completed / interrupted / failed), None while running
    end_reason: str | None = None  # and its reason (e.g. nan_loss, max_steps reached)
    status: Any = None  # kssm_core.runbook.runstatus.RunStatus the view renders (None while loading)
    autopilot_line: str | None = None  # what an autopilot on this runs root is doing (kssm_tui.autopilot_watch)
    autopilot_pid: int | None = None  # its PID while it runs: n / r / s are then left to it


class StagesChanged(Message):
    """The five stage folders' states changed."""

    def __init__(self, stages: dict[int, StageInfo]) -> None:
        super().__init__()
        self.stages = stages


class RunChanged(Message):
    """The selected run has new data (or another run was selected)."""

    def __init__(self, view: RunView) -> None:
        super().__init__()
        self.view = view


class FactsSampled(Message):
    """psutil facts for the resource panel (disk, memory, CPU, trainer RSS)."""

    def __init__(self, facts: dict[str, Any]) -> None:
        super().__init__()
        self.facts = facts

    def can_replace(self, message: Message) -> bool:  # only the newest sample matters
        return isinstance(message, FactsSampled)


class TrainerExited(Message):
    """The trainer this cockpit spawned exited and was reaped."""

    def __init__(self, run_dir: Path, returncode: int, kind: str, detail: str) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.returncode = returncode
        self.kind = kind  # completed / failed / interrupted / killed / crashed / refused
        self.detail = detail  # one line (controller.describe_exit)


class WorkerTrouble(Message):
    """A background worker hit an error it survived (e.g. an unreadable folder); one line for the user."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class RunsListed(Message):
    """The runs view's rows (kssm_tui.runs.RunRow), judged in the runs worker; `done`: every folder judged."""

    def __init__(self, rows: list, done: bool) -> None:
        super().__init__()
        self.rows = rows
        self.done = done


class OverlayChanged(Message):
    """The marked runs' overlay (kssm_tui.overlay.OverlayView), built in the runs worker."""

    def __init__(self, view: Any) -> None:
        super().__init__()
        self.view = view

    def can_replace(self, message: Message) -> bool:  # only the newest build matters
        return isinstance(message, OverlayChanged)
