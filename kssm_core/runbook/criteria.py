"""Every threshold of the runbook engine in one place: the decision matrix, the sample classifier and the alerts.

Defaults are the values of the operator's quick reference (seeds/incremental-training-quick-reference.md)
and the metric bands of KSSM_SPEC.md. Override any of them with a JSON file holding a subset of the
field names (`kssm status --criteria FILE`), e.g. `{"stage2_ppl_healthy": 1200, "zone_min_readings": 3}`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CriteriaError(ValueError):
    """A criteria file cannot be used; the message is one line saying why."""


@dataclass(frozen=True)
class Criteria:
    """Thresholds; each band is `healthy < a <= warning <= b < failure` unless its docstring says otherwise."""

    # ---- provisional verdicts (issue 16) -----------------------------------------------------------------
    # The runbook's gates judge a stage at its milestone (its target step). Before that every row is its
    # verdict *so far*, marked provisional, and a provisional Warning / Failure never raises a critical alert.
    # Only the immediate kinds below are final mid-stage, each once it rests on the evidence stated here.
    lock_min_share: float = 1 / 3
    """"Locked" (R not moving, R locked at 0, u_val not moving) is called only after this share of the stage
    has run: a flat start is how R looks before it starts to explore (issue 16: locked at step 280 of 1500,
    1 zone at step 1500). Before that the row is a Warning that says how little it rests on."""
    lock_min_readings: int = 10
    """... and only with at least this many readings in the stage's window."""
    loss_rise_min_readings: int = 10
    """Immediate: loss increasing steadily is final mid-stage with at least this many loss readings ..."""
    loss_rise_min_share: float = 0.2
    """... over at least this share of the stage, and each third's mean above the one before (steadily)."""
    clamp_min_readings: int = 5
    """Immediate: u_val hitting a clamp (the Stage 2 row's Failure) is final mid-stage once at least this many
    recent readings are at a clamp ..."""
    clamp_min_share: float = 0.1
    """... and at least this share of the stage has run (the first few readings follow the initialisation)."""
    u_floor_tolerance: float = 0.001
    """Immediate, one reading: u_val below u_min - this while the run claims the bistable clamp (or below 0 for a
    run that does not say) is the bistability constraint broken. The clamp cannot produce such a reading, so one
    is proof of a bug, not noise; the tolerance absorbs float32 rounding of a mean of values at the floor.
    NaN / inf loss or val PPL are immediate on one reading too (a NaN never recovers)."""
    grad_min_readings: int = 2
    """Immediate: grad norm pathological (grad_exploding: critical) needs the newest this-many finite readings all
    beyond the threshold, at any point of the stage; with only the newest one beyond it, exploding is a warning.
    Crashed (no run_end and no live process: one observation), stalled (stall_factor / heartbeat_factor below)
    and disk (less free space than the remaining checkpoints need) are immediate on their own rules."""

    # ---- shared ------------------------------------------------------------------------------------
    recent_fraction: float = 1 / 3
    """Share of the newest step readings that counts as "recent" (u_val, R level)."""
    min_points: int = 3
    """Step readings needed before a trend row (loss, u_val, R) is judged; fewer -> Pending."""

    # ---- Stage 1: loss ------------------------------------------------------------------------------
    loss_flat_tolerance: float = 0.02
    """Loss trend = (mean of the last third - mean of the first third) / |mean of the first third|.
    Below -tolerance: descending (Healthy); above +tolerance: increasing (Failure); between: flat (Warning)."""

    # ---- val PPL bands: healthy below the first, failure above the second ----------------------------
    stage2_ppl_healthy: float = 1000.0
    stage2_ppl_failure: float = 2000.0
    stage3_ppl_healthy: float = 500.0
    stage3_ppl_failure: float = 1000.0
    stage4_ppl_healthy: float = 300.0
    stage4_ppl_failure: float = 500.0

    # ---- u_val (clamp floor 0.1, ceiling 10) ----------------------------------------------------------
    u_at_floor: float = 0.11
    """A reading <= this is at the clamp floor (spec: <=0.11 at floor)."""
    u_at_ceiling: float = 9.9
    """A reading >= this is at the clamp ceiling (spec: >=9.9 at ceiling)."""
    u_near_floor: float = 0.2
    """A reading <= this (and above the floor) is near the floor."""
    u_near_ceiling: float = 8.0
    """A reading >= this (and below the ceiling) is near the ceiling."""
    u_clamp_share: float = 0.5
    """Stage 2: Failure when at least this share of recent readings is at a clamp; Warning when this share is
    at or near a clamp, or any recent reading is at one."""
    u_edge_max: float = 0.13
    """Stage 4 edge-surfing: recent u_val within [floor, u_edge_max] (the spec's run stayed in 0.100-0.126)."""
    u_edge_share: float = 0.8
    """Share of recent readings that must lie in the edge band to call it edge-surfing."""
    u_locked_range: float = 0.002
    """Stage 4: recent u_val moving less than this (max - min) is locked (given the lock_min_* evidence)."""

    # ---- R --------------------------------------------------------------------------------------------
    stage2_r_healthy: float = 0.01
    """Stage 2: recent mean R above this is Healthy."""
    stage2_r_locked: float = 0.001
    """Stage 2: recent mean R below this is locked at 0 (Failure, given the lock_min_* evidence); between the two is a
    Warning."""
    r_zone_edges: tuple[float, ...] = (0.10, 0.30, 0.50, 0.70, 0.85, 0.95)
    """Lower edges of the zones after Unformed: Intimacy, Balance, Mystery, Wonder, Passion, Ache."""
    zone_min_readings: int = 2
    """A zone counts as visited only with at least this many readings in it (one noisy reading is not a visit)."""
    stage3_zones_healthy: int = 2
    stage4_zones_healthy: int = 3
    stage4_zones_warning: int = 2
    r_locked_range: float = 0.005
    """Stage 3: R readings spanning less than this (max - min) are locked (Failure, given the lock_min_* evidence)."""
    goldilocks_healthy: float = 0.30
    goldilocks_warning: float = 0.20
    """Stage 5: R >= healthy is Goldilocks; warning <= R < healthy is a Warning; below is a Failure."""

    # ---- samples (see kssm_core.runbook.sample_quality) --------------------------------------------------------
    sample_words_share: float = 0.6
    """Share of real English words for "words/phrases" (also needs a phrase: a run of 3 real words, enough
    function words and few grammar slips, see below)."""
    sample_fragments_share: float = 0.3
    """Share of real English words for "fragments"; below it the sample is gibberish."""
    sample_max_repeat: float = 0.5
    """Repeated word-trigram ratio above which a sample is at best fragments (a loop, not language)."""
    sample_min_words: int = 4
    """A sample with fewer word tokens than this is gibberish."""
    sample_min_function_share: float = 0.25
    """Share of function words (the, of, and, is ...) for "words/phrases": prose has 0.4-0.6, content-word salad < 0.15."""
    sample_max_slips: float = 0.04
    """Grammar slips per adjacent word pair allowed for "words/phrases" (prose: at most 1 in 35 words)."""
    sample_max_symbols: float = 0.04
    """Share of visible characters that may be code / markup symbols (# _ | * < > = ...) in "words/phrases"
    (book prose: at most 3.1%)."""

    # ---- agency (eval/agency.json) ----------------------------------------------------------------------
    agency_action_target: float = 0.70
    """Coherent-action score for "Present" (spec: target > 70%)."""
    agency_consistency_target: float = 0.60
    """Consistency score for "Present" (spec: target > 60% of pairs)."""
    agency_none_below: float = 0.30
    """Both scores below this: agency "None" (Failure); otherwise "Fragments" (Warning)."""

    # ---- alerts ------------------------------------------------------------------------------------------
    grad_exploding: float = 1000.0
    """Grad norm above this is exploding (seed: 1-10 healthy, 1000 pathological); evidence: grad_min_readings."""
    grad_vanishing: float = 0.001
    """Grad norm below this is vanishing (warning), on the same evidence as exploding."""
    reg_high: float = 1.0
    """Reg loss above this: constraints dominate. Below 0: numerical error."""
    stall_factor: float = 10.0
    """Stalled: no step for this many times the usual gap between step events (and at least stall_min_s)."""
    stall_min_s: float = 120.0
    heartbeat_factor: float = 6.0
    """Stalled: no event at all for this many heartbeat periods, and at least stall_min_s / 2 (the process froze)."""
    memory_warning_share: float = 0.10
    """Available memory below this share of the total is memory pressure (Warning)."""
    memory_critical_share: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["r_zone_edges"] = list(self.r_zone_edges)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "Criteria | None" = None) -> "Criteria":
        """A copy of `base` (default: the runbook's values) with the given fields replaced, checked."""
        if not isinstance(data, dict):
            raise CriteriaError("criteria must be a JSON object of field names to numbers")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise CriteriaError(f"unknown criteria field(s): {', '.join(unknown)} (see kssm_core/runbook/criteria.py)")
        clean: dict[str, Any] = {}
        for name, value in data.items():
            if name == "r_zone_edges":
                if not isinstance(value, list) or len(value) != 6 or not all(_is_num(v) for v in value):
                    raise CriteriaError("r_zone_edges must be a list of 6 numbers")
                if list(value) != sorted(value):
                    raise CriteriaError("r_zone_edges must be ascending")
                clean[name] = tuple(float(v) for v in value)
            elif not _is_num(value):
                raise CriteriaError(f"criteria field {name} must be a finite number, got {value!r}")
            elif fields[name].type in ("int", int):
                if not float(value).is_integer():
                    raise CriteriaError(f"criteria field {name} must be a whole number, got {value!r}")
                clean[name] = int(value)
            else:
                clean[name] = float(value)
        return dataclasses.replace(base or cls(), **clean)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


DEFAULT = Criteria()


def load_criteria(path: str | Path | None) -> Criteria:
    """The runbook defaults, overridden by a JSON file when one is given. Raises CriteriaError in one line."""
    if path is None:
        return DEFAULT
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CriteriaError(f"cannot read criteria file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CriteriaError(f"criteria file {path} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CriteriaError(f"criteria file {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    try:
        return Criteria.from_dict(data)
    except CriteriaError as exc:
        raise CriteriaError(f"{path}: {exc}") from None
