"""The autopilot's plan as data: the runbook's five stages by default, or a TOML file (docs/autopilot.md).

`load_plan(path)` parses and validates; every problem is a PlanError whose message is one line naming
the file, the stage and the key ("plan.toml: stage 2: steps must be a positive integer, got 'abc'"), so
`kssm autopilot` can refuse (exit 2) before it touches anything. Pure but for reading the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kssm_core.runbook.criteria import DEFAULT, Criteria, CriteriaError, load_criteria
from kssm_core.runbook.stages import STAGES
from kssm_core.runfolder import layout

ON_WARNING = ("retry", "proceed", "hold")
# Flags the autopilot sets itself on every trainer it starts: a plan's `args` may not.
OWNED_FLAGS = ("--output-dir", "--runs-root", "--resume", "--init-from", "--max-steps", "--stage", "--nproc")


class PlanError(ValueError):
    """The plan cannot be used; the message is one line."""


@dataclass(frozen=True)
class StagePlan:
    index: int  # 1-based position in the plan
    name: str
    steps: int  # the trainer's --max-steps
    gate: int  # runbook stage (1..5) whose matrix rows judge it
    args: tuple[str, ...] = ()  # extra trainer flags (after the plan-level args)
    output_dir: str = ""  # under RUNS_ROOT

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["args"] = list(self.args)
        return d


@dataclass(frozen=True)
class Budgets:
    max_remedies: int = 3  # gate remedies (another seed, lower lr, higher lambda_reg) per stage
    max_crashes: int = 3  # resumes after a crash / stall / error per stage; reset after progress
    max_rewinds: int = 3  # NaN rewinds per stage
    backoff_s: tuple[float, ...] = (10.0, 30.0, 90.0)  # wait before the 1st, 2nd, 3rd resume
    stall_s: float = 120.0  # no step for this long (and many step-times), or no event for half of it: stalled
    stall_grace_s: float = 60.0  # after SIGTERM, before SIGKILL
    poll_s: float = 2.0  # how often a running trainer is looked at
    min_free_gb: float = 0.0  # extra free disk to keep beyond the stage's checkpoints

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["backoff_s"] = list(self.backoff_s)
        return d


@dataclass(frozen=True)
class Plan:
    stages: tuple[StagePlan, ...]
    on_warning: str = "retry"
    budgets: Budgets = field(default_factory=Budgets)
    args: tuple[str, ...] = ()  # trainer flags for every stage
    criteria: Criteria = DEFAULT
    criteria_overrides: dict = field(default_factory=dict)  # what the plan changed in the criteria
    evaluate: bool = True  # run `kssm eval all` when a stage gated by stage 5 completes (its Agency row)
    source: str = "the runbook's five stages"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "on_warning": self.on_warning, "budgets": self.budgets.to_dict(),
                "args": list(self.args), "criteria": dict(self.criteria_overrides), "evaluate": self.evaluate,
                "stages": [s.to_dict() for s in self.stages]}

    @property
    def digest(self) -> str:
        """Identifies the plan (not where it was read from): a state file belongs to one plan."""
        body = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def through(self, n: int | None) -> "Plan":
        """The first n stages (--through N)."""
        if n is None:
            return self
        if not 1 <= n <= len(self.stages):
            raise PlanError(f"--through {n}: the plan has stages 1..{len(self.stages)}")
        return dataclasses.replace(self, stages=self.stages[:n])

    def describe(self) -> list[str]:
        """The plan and its budgets, one line each (the cockpit's confirmation, `--show`)."""
        b = self.budgets
        lines = [f"plan: {self.source} ({len(self.stages)} stage(s)); on a Warning: {self.on_warning}"]
        for s in self.stages:
            extra = f"  args: {' '.join(self.args + s.args)}" if self.args or s.args else ""
            lines.append(f"  {s.index}. {s.name}: {s.steps} steps in {s.output_dir}, gate: stage {s.gate}{extra}")
        lines.append(f"budgets per stage: {b.max_remedies} remedies, {b.max_crashes} crash resumes "
                     f"(backoff {', '.join(f'{x:g}s' for x in b.backoff_s)}), {b.max_rewinds} NaN rewinds; "
                     f"stalled after {b.stall_s:g}s, SIGKILL {b.stall_grace_s:g}s after SIGTERM")
        if self.criteria_overrides:
            lines.append("criteria changed: " + ", ".join(f"{k}={v}" for k, v in sorted(self.criteria_overrides.items())))
        return lines


def default_output_dir(index: int) -> str:
    """As `kssm train --stage N`: stage1..stage4, final; past the runbook's five: stageN."""
    return STAGES[index - 1].output_dir if index <= len(STAGES) else f"stage{index}"


def default_plan() -> Plan:
    return Plan(stages=tuple(StagePlan(s.number, s.name, s.steps, s.number, (), s.output_dir) for s in STAGES))


# ---- parsing ---------------------------------------------------------------------------------------------
_TOP = {"on_warning", "max_remedies", "max_crashes", "max_rewinds", "backoff_s", "stall_s", "stall_grace_s",
        "poll_s", "min_free_gb", "args", "criteria", "evaluate", "stage"}
_STAGE = {"name", "steps", "gate", "args", "output_dir"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_args(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise PlanError(f"{where}args must be a list of strings, got {value!r}")
    for a in value:
        flag = a.split("=", 1)[0]
        if flag in OWNED_FLAGS:
            raise PlanError(f"{where}args: {flag} is set by the autopilot itself (use steps / output_dir)")
    from kssm_core.cli import build_parser  # the real `kssm train` parser says whether the flags are valid

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(["train", *value])
    except SystemExit:
        last = (err.getvalue().strip().splitlines() or ["invalid"])[-1]
        raise PlanError(f"{where}args: {last.split('error: ', 1)[-1]}") from None
    return tuple(value)


def _stage(i: int, raw: Any) -> StagePlan:
    where = f"stage {i}: "
    if not isinstance(raw, dict):
        raise PlanError(f"{where}must be a table ([[stage]])")
    unknown = sorted(set(raw) - _STAGE)
    if unknown:
        raise PlanError(f"{where}unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_STAGE))})")
    if "steps" not in raw:
        raise PlanError(f"{where}steps is required")
    steps = raw["steps"]
    if not _is_int(steps) or steps < 1:
        raise PlanError(f"{where}steps must be a positive integer, got {steps!r}")
    gate = raw.get("gate", min(i, len(STAGES)))
    if not _is_int(gate) or not 1 <= gate <= len(STAGES):
        raise PlanError(f"{where}gate must be a runbook stage 1..{len(STAGES)}, got {gate!r}")
    name = raw.get("name", STAGES[i - 1].name if i <= len(STAGES) else f"Stage {i}")
    if not isinstance(name, str) or not name.strip() or len(name) > 80:
        raise PlanError(f"{where}name must be a non-empty string (at most 80 characters)")
    out = raw.get("output_dir", default_output_dir(i))
    if not isinstance(out, str) or not out.strip():
        raise PlanError(f"{where}output_dir must be a non-empty string")
    parts = PurePosixPath(out).parts
    if out.startswith("/") or ".." in parts or parts[0] == layout.AUTOPILOT_DIR:
        raise PlanError(f"{where}output_dir must be a folder under RUNS_ROOT (relative, no '..', not "
                        f"{layout.AUTOPILOT_DIR}/), got {out!r}")
    args = _check_args(where, raw.get("args", []))
    return StagePlan(i, name.strip(), steps, gate, args, str(PurePosixPath(out)))


def plan_from_dict(data: dict, source: str = "plan", base_dir: Path | None = None) -> Plan:
    """A validated Plan from the TOML's table; PlanError (one line, without the file name) otherwise."""
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise PlanError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP))})")
    on_warning = data.get("on_warning", "retry")
    if on_warning not in ON_WARNING:
        raise PlanError(f"on_warning must be one of {', '.join(ON_WARNING)}, got {on_warning!r}")
    b: dict[str, Any] = {}
    for key in ("max_remedies", "max_crashes", "max_rewinds"):
        if key in data:
            if not _is_int(data[key]) or data[key] < 0:
                raise PlanError(f"{key} must be a whole number >= 0, got {data[key]!r}")
            b[key] = data[key]
    for key in ("stall_s", "stall_grace_s", "poll_s", "min_free_gb"):
        if key in data:
            v = data[key]
            if not _is_num(v) or v < 0 or (key in ("stall_s", "poll_s") and v <= 0):
                raise PlanError(f"{key} must be a number {'> 0' if key in ('stall_s', 'poll_s') else '>= 0'}, got {v!r}")
            b[key] = float(v)
    if "backoff_s" in data:
        v = data["backoff_s"]
        if not isinstance(v, list) or not v or not all(_is_num(x) and x >= 0 for x in v):
            raise PlanError(f"backoff_s must be a non-empty list of seconds >= 0, got {v!r}")
        b["backoff_s"] = tuple(float(x) for x in v)
    budgets = Budgets(**b)
    args = _check_args("", data.get("args", []))
    evaluate = data.get("evaluate", True)
    if not isinstance(evaluate, bool):
        raise PlanError(f"evaluate must be true or false, got {evaluate!r}")
    criteria, overrides = _criteria(data.get("criteria"), base_dir)
    # one number says when a run is stalled: stall_s is the criteria's stall_min_s (either may set it)
    if "stall_s" in data:
        criteria = dataclasses.replace(criteria, stall_min_s=budgets.stall_s)
    else:
        budgets = dataclasses.replace(budgets, stall_s=criteria.stall_min_s)
    raw_stages = data.get("stage")
    if raw_stages is None:
        stages = default_plan().stages
    elif not isinstance(raw_stages, list) or not raw_stages:
        raise PlanError("stage must be a list of tables ([[stage]] ...), at least one")
    else:
        stages = tuple(_stage(i, raw) for i, raw in enumerate(raw_stages, start=1))
    seen: dict[str, int] = {}
    for s in stages:
        if s.output_dir in seen:
            raise PlanError(f"stage {s.index}: output_dir {s.output_dir!r} is also stage {seen[s.output_dir]}'s")
        seen[s.output_dir] = s.index
    return Plan(stages, on_warning, budgets, args, criteria, overrides, evaluate, source)


def _criteria(value: Any, base_dir: Path | None) -> tuple[Criteria, dict]:
    """`criteria = "file.json"` (relative to the plan) or an inline `[criteria]` table of field = number."""
    if value is None:
        return DEFAULT, {}
    try:
        if isinstance(value, str):
            path = Path(value) if base_dir is None or Path(value).is_absolute() else base_dir / value
            crit = load_criteria(path)
            return crit, {k: v for k, v in crit.to_dict().items() if v != DEFAULT.to_dict()[k]}
        if isinstance(value, dict):
            return Criteria.from_dict(dict(value)), dict(value)
    except CriteriaError as exc:
        raise PlanError(f"criteria: {exc}") from None
    raise PlanError(f"criteria must be a JSON file name or a table of thresholds, got {value!r}")


def load_plan(path: str | Path | None) -> Plan:
    """The default runbook plan (path None) or the TOML file's; PlanError with the file name in front."""
    if path is None:
        return default_plan()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"cannot read plan {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PlanError(f"{p}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{p}: not valid TOML ({exc})") from None
    try:
        return plan_from_dict(data, source=str(p), base_dir=p.parent)
    except PlanError as exc:
        raise PlanError(f"{p}: {exc}") from None
