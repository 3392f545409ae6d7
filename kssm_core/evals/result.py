"""What a suite returns and writes: criteria graded pass / warn / fail, and the JSON file in RUN_DIR/eval/.

Shape of eval/<suite>.json (read by the runbook engine for Stage 5 and by the cockpit):
{"suite", "model", "step", "seed", "criteria": [{"name", "value", "target", "verdict", "detail"}],
 "verdict", "data": {...}, "elapsed_s"}, plus a suite's headline numbers at the top level (agency:
"coherent_action_score", "consistency_score", 0..1). Non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kssm_core.runfolder.atomic import atomic_write_bytes

PASS, WARN, FAIL = "pass", "warn", "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}


def worst(verdicts) -> str:
    """The worst of some verdicts (pass when there are none)."""
    return max(verdicts, key=_RANK.__getitem__, default=PASS)


def finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def grade_high(value: float | None, pass_at: float, warn_at: float) -> str:
    """pass when value > pass_at, warn when value > warn_at, else fail (NaN fails)."""
    if not finite(value):
        return FAIL
    return PASS if value > pass_at else WARN if value > warn_at else FAIL


def grade_low(value: float | None, pass_below: float, warn_below: float) -> str:
    """pass when value < pass_below, warn when value < warn_below, else fail (NaN fails)."""
    if not finite(value):
        return FAIL
    return PASS if value < pass_below else WARN if value < warn_below else FAIL


@dataclass
class Criterion:
    name: str
    value: Any
    target: str
    verdict: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.target, "verdict": self.verdict,
                "detail": self.detail}


@dataclass
class SuiteResult:
    suite: str
    criteria: list[Criterion] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    step: int | None = None
    seed: int = 0
    elapsed_s: float = 0.0
    headline: dict[str, Any] = field(default_factory=dict)
    """A few top-level numbers for readers that do not walk the criteria (agency: the two scores)."""

    def add(self, name: str, value: Any, target: str, verdict: str, detail: str = "") -> Criterion:
        c = Criterion(name, value, target, verdict, detail)
        self.criteria.append(c)
        return c

    @property
    def verdict(self) -> str:
        return worst(c.verdict for c in self.criteria) if self.criteria else FAIL

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "model": self.model, "step": self.step, "seed": self.seed,
                "criteria": [c.to_dict() for c in self.criteria], "verdict": self.verdict,
                "data": self.data, "elapsed_s": round(self.elapsed_s, 3), **self.headline}


def clean_json(obj: Any) -> Any:
    """NaN / inf -> None, tuples -> lists, floats rounded to 6 significant digits (stable, readable files)."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomic write (temp file + rename) so a reader never sees half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(clean_json(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), durable=False)
