"""The runbook's decision matrix as pure functions over a run's history.

`assess_stage(history, stage)` judges the rows of one stage; `full_matrix(history, current_stage)` gives
every row of every stage so the cockpit can show the whole table with the current stage highlighted.

Where each stage is judged (`stage_window`):
- Our staged runs (run_start names its `stage`: stage N's folder holds a run of that stage's steps, started
  from the previous stage's best model): rows of stages up to and including the run's own are judged from
  this run's whole history (a stage 3 run must still pass the stage 1 and 2 gates); later stages are
  Pending ("not reached"), because a later gate applied to an earlier, shorter run would fail by design.
- Every other run (a legacy `training.log`, or ours without a stage: one long run, the way the reference
  trainer was used) is judged by where it got to: Stage 2's rows on what was logged up to step 500, Stage
  3's up to 1500, Stage 4's up to 5000, Stage 5's at 10000 and, beyond, at the newest step. The folder's
  name never decides.
A row judged before its stage's milestone is provisional (its verdict so far); only the immediate kinds
(NaN, loss rising steadily, u at a clamp, u below the clamp floor) are final at once, each on the
evidence stated in kssm_core.runbook.criteria. Each Warning / Failure row carries a pasteable remedy from
kssm_core.runbook.playbook.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kssm_core.runbook import playbook
from kssm_core.runbook.stages import STAGES, stage as stage_info
from kssm_core.runbook.criteria import DEFAULT, Criteria
from kssm_core.runbook.sample_quality import classify_sample
from kssm_core.runbook.verdicts import Action, MatrixRow, StageAssessment, Verdict
from kssm_core.runfolder.history import RunHistory, Series, as_number, as_step

H, W, F, P = Verdict.HEALTHY, Verdict.WARNING, Verdict.FAILURE, Verdict.PENDING

ZONE_NAMES = ("Unformed", "Intimacy", "Balance", "Mystery", "Wonder", "Passion", "Ache")

STAGE_METRICS: dict[int, tuple[str, ...]] = {
    1: ("Loss",),
    2: ("Val PPL", "u_val", "R"),
    3: ("Val PPL", "R zones", "Samples"),
    4: ("Val PPL", "R zones", "u_val regime"),
    5: ("Goldilocks", "Agency"),
}
U_FLOOR = "u floor"
"""The extra row a stage gets when a reading in its window breaks the clamp floor (any stage: see row_u_floor)."""
STAGE_STEPS = {st.number: st.steps for st in STAGES}  # the milestones: 100, 500, 1500, 5000, 10000


# ---- where a stage is judged ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageWindow:
    """Which of a run's steps a stage's rows are judged on, and whether that verdict is final yet."""

    stage: int
    mode: str  # "staged" (ours, run_start names the stage) or "milestones" (legacy / unnamed: by steps reached)
    at: int | None  # rows see the steps logged up to this one (inclusive); None: the whole history
    target: int  # the step the stage's gate is judged at: its milestone (the run's max_steps in a staged run)
    reached: int  # the step the run got to
    reached_stage: bool  # False: the run has not entered this stage yet (its rows are Pending "not reached")
    provisional: bool  # judged before the gate's step (or at it, with the stage's final eval maybe still coming)
    note: str = ""  # why the stage is not reached, for the Pending rows

    @property
    def share(self) -> float:
        """Share of the stage the run has done: steps reached (up to the target) / target."""
        return min(self.reached, self.target) / self.target if self.target > 0 else 1.0

    def progress(self) -> str:
        return f"step {self.reached} of {self.target}"


def own_stage(history: RunHistory) -> int | None:
    """The stage our trainer recorded in run_start (`kssm train --stage N`); None for legacy and unnamed runs.
    A legacy run_start's `stage` is not used: the reader derives it from the folder's name, which never decides."""
    rs = history.run_start
    if rs is None or rs.get("legacy"):
        return None
    for v in (rs.get("stage"), history.config.get("stage")):
        s = as_step(v)
        if s is not None and 1 <= s <= 5:
            return s
    return None


def reached_step(history: RunHistory) -> int:
    """The step the run got to: its newest step, run_end's step, and max_steps when it says it completed."""
    r = history.last_step or 0
    end = history.run_end or {}
    s = as_step(end.get("step"))
    if s is not None:
        r = max(r, s)
    if end.get("status") == "completed" and history.max_steps:  # the trainer's word: it reached max_steps
        r = max(r, history.max_steps)
    return r


def _last_readings_in(history: RunHistory, stage: int, target: int) -> bool:
    """At its target step the stage's last readings are in: the run ended, or it logged the target's eval (and,
    for a stage that judges samples, the sample written after it). The trainer writes step, eval, sample in that
    order: judging at the step alone would call a verdict final on the previous eval, then change it."""
    if history.run_end is not None:
        return True
    ev = history.evals.steps
    if not len(ev) or ev[-1] < target:
        return False
    if "Samples" in STAGE_METRICS[stage]:
        return any((as_step(r.get("step")) or 0) >= target for r in history.samples)
    return True


def stage_window(history: RunHistory, stage: int) -> StageWindow:
    """Where `stage` is judged in this run (see the module docstring)."""
    reached = reached_step(history)
    own = own_stage(history)
    if own is not None:
        target = history.max_steps or STAGE_STEPS[own]
        if stage > own:
            return StageWindow(stage, "staged", None, STAGE_STEPS[stage], reached, False, True,
                               f"stage {stage} not reached (this is a stage {own} run)")
        final = reached >= target and _last_readings_in(history, stage, target)
        return StageWindow(stage, "staged", None, target, reached, True, not final)
    milestone, before = STAGE_STEPS[stage], STAGE_STEPS.get(stage - 1, 0)
    if stage > 1 and reached <= before:
        return StageWindow(stage, "milestones", None, milestone, reached, False, True,
                           f"stage {stage} not reached: the run is at step {reached}; Stage {stage} is judged on "
                           f"its steps up to {milestone}")
    if reached > milestone or (reached == milestone and _last_readings_in(history, stage, milestone)):
        # the run went past the milestone: judged on what was logged up to it (Stage 5: up to the newest step)
        return StageWindow(stage, "milestones", None if stage == 5 else milestone, milestone, reached, True, False)
    return StageWindow(stage, "milestones", None, milestone, reached, True, True)


def _np(buf, dtype) -> np.ndarray:
    # array('q') / array('d') viewed without a copy (a history's columns; ndarrays pass through)
    return buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=dtype)


class SeriesAt:
    """A history's Series seen up to a step: numpy views cut where searchsorted finds the step, never a copy."""

    __slots__ = ("cols", "fields", "steps")

    def __init__(self, series: Series, at: int | None):
        steps = _np(series.steps, np.int64)
        n = len(steps) if at is None else int(np.searchsorted(steps, at, side="right"))
        self.fields = series.fields
        self.steps = steps[:n]
        self.cols = {f: _np(c, np.float64)[:n] for f, c in series.cols.items()}

    def __len__(self) -> int:
        return len(self.steps)

    def last_finite(self, name: str) -> int | None:
        col = self.cols[name]
        end = len(col)
        while end > 0:  # newest first, in growing chunks: usually the newest reading is finite
            start = max(0, end - 64)
            hits = np.flatnonzero(np.isfinite(col[start:end]))
            if len(hits):
                return start + int(hits[-1])
            end = start
        return None


class HistoryAt:
    """A RunHistory as the rows of one stage see it: steps, evals and samples up to `at` (None: all of them);
    everything else (config, run_start, ...) is the run's own."""

    def __init__(self, history: RunHistory, at: int | None):
        self.history = history
        self.at = at
        self.steps = SeriesAt(history.steps, at)
        self.evals = SeriesAt(history.evals, at)
        if at is None:
            self.samples = history.samples
            self.run_end = history.run_end
        else:
            self.samples = [r for r in history.samples if (as_step(r.get("step")) or 0) <= at]
            end = history.run_end
            end_step = as_step((end or {}).get("step"))
            self.run_end = end if end_step is not None and end_step <= at else None

    @property
    def last_step(self) -> int | None:
        return int(self.steps.steps[-1]) if len(self.steps) else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.history, name)


# ---- small helpers ------------------------------------------------------------------------------------
# Columns of a week-long run hold millions of readings: the rows work on numpy views of them (a history's
# array('d') columns are viewed without a copy), so judging the whole matrix stays in the milliseconds.
def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


def _recent(values: np.ndarray, c: Criteria) -> np.ndarray:
    n = max(c.min_points, math.ceil(len(values) * c.recent_fraction))
    return values[-n:]


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def _count(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v == 0 or 0.001 <= abs(v) < 100_000:
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return f"{v:.2e}"


def _final(row: MatrixRow) -> MatrixRow:
    """An immediate finding on enough evidence: final now, whatever the stage's progress."""
    row.provisional = False
    return row


def _whole(stage: int) -> StageWindow:
    """The window of a row function called without one: the history as given, judged as complete."""
    return StageWindow(stage, "staged", None, 1, 1, True, False)


def _lock_evidence(n: int, w: StageWindow, c: Criteria) -> tuple[bool, str]:
    """(enough to call it locked, the evidence in words)."""
    enough = w.share + 1e-9 >= c.lock_min_share and n >= c.lock_min_readings
    words = f"{n} readings, {w.share:.0%} of the stage's {w.target} steps"
    if not enough:
        words += f"; locked is called after >= {c.lock_min_share:.0%} of the stage and >= {c.lock_min_readings} readings"
    return enough, words


def clamp_claim(history: RunHistory) -> tuple[str, float]:
    """("bistable", u_min) when the run says it clamps u, ("monostable", nan) for the ablation (`kssm train
    --monostable`: config.monostable, model_config.bistable false), ("unknown", 0.0) when it says neither
    (a legacy log): then only u < 0 breaks the floor."""
    rs = history.run_start or {}
    mc = rs.get("model_config") if isinstance(rs.get("model_config"), dict) else {}
    cfg = history.config
    if cfg.get("monostable") is True or mc.get("bistable") is False:
        return "monostable", math.nan
    if mc.get("bistable") is True or cfg.get("monostable") is False:
        u_min, ok = as_number(mc.get("u_min", 0.1))
        return "bistable", u_min if ok and math.isfinite(u_min) else 0.1
    return "unknown", 0.0


def floor_breach(history, c: Criteria = DEFAULT) -> tuple[int, float, int] | None:
    """(step, u_val) of the first reading below the clamp floor and how many there are; None when there is none.
    Below u_min - u_floor_tolerance for a run claiming the bistable clamp, below 0 for one that does not say."""
    kind, u_min = clamp_claim(history)
    if kind == "monostable":
        return None  # the ablation has no clamp: a negative u is what it is there to show
    floor = u_min - c.u_floor_tolerance if kind == "bistable" else 0.0
    steps = history.steps
    u = _np(steps.cols["u_val"], np.float64)
    below = np.flatnonzero(u < floor)  # NaN compares False
    if not len(below):
        return None
    i = int(below[0])
    return int(steps.steps[i]), float(u[i]), len(below)


def zone_of(r: float, c: Criteria = DEFAULT) -> int:
    """Index into ZONE_NAMES of the spec's R zone holding r."""
    return bisect_right(c.r_zone_edges, r)


def zone_bands(c: Criteria = DEFAULT) -> list[tuple[float, float, str]]:
    """(low, high, name) of each R zone from 0 to 1: what the cockpit's R chart shades."""
    edges = [0.0, *c.r_zone_edges, 1.0]
    return [(lo, hi, name) for lo, hi, name in zip(edges, edges[1:], ZONE_NAMES)]


def zones_visited(r_values, c: Criteria = DEFAULT) -> list[str]:
    """Zones with at least zone_min_readings readings (one noisy reading is not a visit), in R order."""
    zones = np.searchsorted(np.asarray(c.r_zone_edges, dtype=np.float64), _finite(r_values), side="right")
    counts = np.bincount(zones, minlength=len(ZONE_NAMES))  # zone i holds edges[i-1] <= r < edges[i], as zone_of
    return [ZONE_NAMES[i] for i, n in enumerate(counts) if n >= c.zone_min_readings]


def _last_eval(history, name: str) -> tuple[int, float] | None:
    i = history.evals.last_finite(name)
    return None if i is None else (int(history.evals.steps[i]), float(history.evals.cols[name][i]))


# ---- the rows -------------------------------------------------------------------------------------------
# Each takes the history as the stage sees it (a HistoryAt), the stage, the criteria and the stage's window.
# A row returns provisional=None ("as the window says") unless it is an immediate finding: _final().
def row_loss(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow:
    w = w or _whole(stage)
    raw = history.steps.cols["loss"]
    end = history.run_end or {}
    if end.get("reason") == "nan_loss" or (len(raw) and _last_is_nonfinite_value(history)):
        at = as_step(end.get("step")) or history.last_step
        return _final(MatrixRow(stage, "Loss", F, f"loss is NaN/inf at step {at}"))  # immediate: one reading
    vals = _finite(raw)
    if len(vals) < c.min_points:
        return MatrixRow(stage, "Loss", P, f"{len(vals)} loss readings so far, need {c.min_points}")
    third = max(1, len(vals) // 3)
    first, last = _mean(vals[:third]), _mean(vals[-third:])
    change = (last - first) / max(abs(first), 1e-12)
    nums = f"mean of first third {_fmt(first)} -> last third {_fmt(last)} ({change:+.1%})"
    if change < -c.loss_flat_tolerance:
        return MatrixRow(stage, "Loss", H, f"descending: {nums}")
    if change > c.loss_flat_tolerance:
        row = MatrixRow(stage, "Loss", F, f"increasing: {nums}")
        middle = _mean(vals[third:len(vals) - third]) if len(vals) > 2 * third else (first + last) / 2
        steady = first < middle < last  # rising through the stage, not one bump
        if steady and len(vals) >= c.loss_rise_min_readings and w.share + 1e-9 >= c.loss_rise_min_share:
            return _final(row)  # immediate: loss increasing steadily
        return row
    return MatrixRow(stage, "Loss", W, f"flat (within {c.loss_flat_tolerance:.0%}): {nums}")


def _last_is_nonfinite_value(history) -> bool:
    """The newest step reported a loss that is null/NaN (not merely absent from a damaged line)."""
    return not math.isfinite(history.steps.cols["loss"][-1]) and not math.isfinite(history.steps.cols["ce"][-1])


def row_val_ppl(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow:
    healthy, failure = {2: (c.stage2_ppl_healthy, c.stage2_ppl_failure), 3: (c.stage3_ppl_healthy, c.stage3_ppl_failure),
                        4: (c.stage4_ppl_healthy, c.stage4_ppl_failure)}[stage]
    ev = history.evals
    if not len(ev):
        return MatrixRow(stage, "Val PPL", P, "no evaluation yet")
    step, ppl, ce = int(ev.steps[-1]), float(ev.cols["val_ppl"][-1]), float(ev.cols["val_ce"][-1])
    if not math.isfinite(ppl) and math.isfinite(ce):
        ppl = math.exp(min(ce, 20.0))  # the trainer's definition, when only val CE was logged
    if not math.isfinite(ppl):
        if math.isfinite(ev.cols["val_loss"][-1]):  # a damaged eval line: use the newest readable one
            last = _last_eval(history, "val_ppl")
            if last is None:
                return MatrixRow(stage, "Val PPL", P, f"no readable val PPL (newest eval at step {step})")
            step, ppl = last
        else:
            return _final(MatrixRow(stage, "Val PPL", F, f"val PPL is NaN/inf at step {step}"))  # immediate
    where = f"val PPL {_fmt(ppl)} at step {step}"
    if ppl < healthy:
        return MatrixRow(stage, "Val PPL", H, f"{where} < {healthy:g}")
    if ppl <= failure:
        return MatrixRow(stage, "Val PPL", W, f"{where} in {healthy:g}-{failure:g}")
    return MatrixRow(stage, "Val PPL", F, f"{where} > {failure:g}")


def _readings(history, col: str, stage: int, metric: str, c: Criteria) -> tuple[np.ndarray, MatrixRow | None]:
    """The finite readings of a step column, or a Pending row when there are too few to judge."""
    vals = _finite(history.steps.cols[col])
    if len(vals) < c.min_points:
        return vals, MatrixRow(stage, metric, P, f"{len(vals)} {col} readings so far, need {c.min_points}")
    return vals, None


def _monostable_row(history, stage: int, metric: str, vals: np.ndarray, c: Criteria) -> MatrixRow | None:
    """The ablation has no clamp: the clamp and edge-surfing gates do not apply to it (judged as what it is)."""
    if clamp_claim(history)[0] != "monostable":
        return None
    rec = _recent(vals, c)
    return MatrixRow(stage, metric, H, f"not applicable: monostable ablation (no u clamp); recent u_val "
                                       f"{_fmt(float(rec.min()))}-{_fmt(float(rec.max()))} (last {len(rec)} readings)")


def row_u_clamps(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow:
    w = w or _whole(stage)
    vals, pending = _readings(history, "u_val", stage, "u_val", c)
    if pending:
        return pending
    mono = _monostable_row(history, stage, "u_val", vals, c)
    if mono:
        return mono
    rec = _recent(vals, c)
    at = _count((rec <= c.u_at_floor) | (rec >= c.u_at_ceiling))
    near = _count((rec <= c.u_near_floor) | (rec >= c.u_near_ceiling))  # includes `at`
    span = f"recent u_val {_fmt(float(rec.min()))}-{_fmt(float(rec.max()))} (last {len(rec)} readings)"
    if at / len(rec) >= c.u_clamp_share:
        row = MatrixRow(stage, "u_val", F, f"hitting clamps: {at}/{len(rec)} at <= {c.u_at_floor} or >= {c.u_at_ceiling}; {span}")
        if at >= c.clamp_min_readings and w.share + 1e-9 >= c.clamp_min_share:
            return _final(row)  # immediate: u hitting a clamp
        return row
    if at or near / len(rec) >= c.u_clamp_share:
        return MatrixRow(stage, "u_val", W, f"near clamps: {near}/{len(rec)} <= {c.u_near_floor} or >= {c.u_near_ceiling}; {span}")
    return MatrixRow(stage, "u_val", H, f"inside [0.1, 10] away from the clamps: {span}")


def row_r_level(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow:
    w = w or _whole(stage)
    vals, pending = _readings(history, "R", stage, "R", c)
    if pending:
        return pending
    rec = _recent(vals, c)
    m = _mean(rec)
    where = f"recent mean R {m:.4f} (last {len(rec)} readings)"
    if m > c.stage2_r_healthy:
        return MatrixRow(stage, "R", H, f"{where} > {c.stage2_r_healthy}")
    if m >= c.stage2_r_locked:
        return MatrixRow(stage, "R", W, f"{where} in {c.stage2_r_locked}-{c.stage2_r_healthy}")
    enough, evidence = _lock_evidence(len(vals), w, c)
    if not enough:
        return MatrixRow(stage, "R", W, f"near 0 so far: {where} < {c.stage2_r_locked}; {evidence}")
    return MatrixRow(stage, "R", F, f"locked at 0: {where} < {c.stage2_r_locked}; {evidence}")


def row_r_zones(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow:
    w = w or _whole(stage)
    vals = _finite(history.steps.cols["R"])
    if len(vals) < max(c.min_points, c.zone_min_readings):
        return MatrixRow(stage, "R zones", P, f"{len(vals)} R readings so far")
    zones = zones_visited(vals, c)
    lo, hi = float(vals.min()), float(vals.max())
    where = f"{len(zones)} zone(s) visited ({', '.join(zones) or 'none'}; R {lo:.4f}-{hi:.4f}, {len(vals)} readings)"
    if stage == 3:
        if len(zones) >= c.stage3_zones_healthy:
            return MatrixRow(stage, "R zones", H, f"exploring: {where} >= {c.stage3_zones_healthy}")
        if hi - lo < c.r_locked_range:
            enough, evidence = _lock_evidence(len(vals), w, c)
            if enough:
                return MatrixRow(stage, "R zones", F, f"locked: R moved only {hi - lo:.4f} (< {c.r_locked_range}) "
                                                      f"over {evidence}; {where}")
            return MatrixRow(stage, "R zones", W, f"{where} < {c.stage3_zones_healthy}; R has moved only "
                                                  f"{hi - lo:.4f} so far ({evidence})")
        return MatrixRow(stage, "R zones", W, f"{where} < {c.stage3_zones_healthy}")
    if len(zones) >= c.stage4_zones_healthy:
        return MatrixRow(stage, "R zones", H, f"multi-attractor: {where} >= {c.stage4_zones_healthy}")
    if len(zones) >= c.stage4_zones_warning:
        return MatrixRow(stage, "R zones", W, f"{where} < {c.stage4_zones_healthy}")
    return MatrixRow(stage, "R zones", F, f"not exploring: {where} < {c.stage4_zones_warning}")


def row_samples(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow:
    texts = [s for s in history.samples if isinstance(s.get("text"), str)]
    if not texts:
        return MatrixRow(stage, "Samples", P, "no sample yet")
    newest = texts[-1]
    q = classify_sample(newest["text"], c)
    at = as_step(newest.get("step"))
    verdict = {"words": H, "fragments": W, "gibberish": F}[q.label]
    label = {"words": "words/phrases", "fragments": "fragments", "gibberish": "gibberish"}[q.label]
    return MatrixRow(stage, "Samples", verdict, f"{label} at step {at}: {q.describe()}")


def row_u_regime(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow:
    w = w or _whole(stage)
    vals, pending = _readings(history, "u_val", stage, "u_val regime", c)
    if pending:
        return pending
    mono = _monostable_row(history, stage, "u_val regime", vals, c)
    if mono:
        return mono
    rec = _recent(vals, c)
    lo, hi = float(rec.min()), float(rec.max())
    span = f"recent u_val {lo:.3f}-{hi:.3f} (last {len(rec)} readings)"
    if hi - lo < c.u_locked_range:
        where = " at the floor" if hi <= c.u_at_floor else " at the ceiling" if lo >= c.u_at_ceiling else ""
        enough, evidence = _lock_evidence(len(vals), w, c)
        if enough:
            return MatrixRow(stage, "u_val regime", F, f"locked{where}: moved {hi - lo:.4f} (< {c.u_locked_range}); "
                                                       f"{span}; {evidence}")
        return MatrixRow(stage, "u_val regime", W, f"flat{where} so far: moved {hi - lo:.4f}; {span}; {evidence}")
    edge = _count(rec <= c.u_edge_max)
    if edge / len(rec) >= c.u_edge_share:
        return MatrixRow(stage, "u_val regime", H, f"edge-surfing: {edge}/{len(rec)} readings <= {c.u_edge_max}, still moving; {span}")
    return MatrixRow(stage, "u_val regime", W, f"wandering: {edge}/{len(rec)} readings <= {c.u_edge_max}; {span}")


def row_goldilocks(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow:
    last = _last_eval(history, "val_R")
    if last is not None:
        r, where = last[1], f"val R {last[1]:.4f} at step {last[0]}"
    else:
        vals = _finite(history.steps.cols["R"])
        if len(vals) < c.min_points:
            return MatrixRow(stage, "Goldilocks", P, "no evaluation and too few R readings yet")
        rec = _recent(vals, c)
        r, where = _mean(rec), f"recent mean R {_mean(rec):.4f}"
    if r >= c.goldilocks_healthy:
        return MatrixRow(stage, "Goldilocks", H, f"{where} >= {c.goldilocks_healthy}")
    if r >= c.goldilocks_warning:
        return MatrixRow(stage, "Goldilocks", W, f"{where} in {c.goldilocks_warning}-{c.goldilocks_healthy}")
    return MatrixRow(stage, "Goldilocks", F, f"{where} < {c.goldilocks_warning}")


def row_u_floor(history, stage: int, c: Criteria, w: StageWindow | None = None) -> MatrixRow | None:
    """Failure (immediate, one reading) when a reading in the window is below the clamp floor; None otherwise."""
    found = floor_breach(history, c)
    if found is None:
        return None
    step, u, n = found
    kind, u_min = clamp_claim(history)
    floor = f"the clamp floor {u_min:g}" if kind == "bistable" else "0 (below any clamp floor)"
    return _final(MatrixRow(stage, U_FLOOR, F, f"the bistability constraint is broken (u = {u:.3g} at step {step}); "
                                               f"{n} reading(s) below {floor}"))


def _score(d: dict, *names: str) -> float | None:
    for n in names:
        v = d.get(n)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return v / 100 if v > 1 else float(v)  # accept 0..1 or percent
    return None


def row_agency(eval_results: dict | None, stage: int, c: Criteria) -> MatrixRow:
    agency = (eval_results or {}).get("agency")
    if not isinstance(agency, dict):
        return MatrixRow(stage, "Agency", P, "not run yet")
    flat = dict(agency)
    for crit in agency.get("criteria") or []:  # kssm eval's shape: {"criteria": [{"name", "value", ...}]}
        if isinstance(crit, dict) and isinstance(crit.get("name"), str):
            flat.setdefault(crit["name"].replace("-", "_").replace(" ", "_"), crit.get("value"))
    action = _score(flat, "coherent_action_score", "coherent_action", "action_score")
    consist = _score(flat, "consistency_score", "consistency")
    if action is None and consist is None:
        return MatrixRow(stage, "Agency", P, "eval/agency.json has no coherent_action / consistency score")
    a, k = action if action is not None else 0.0, consist if consist is not None else 0.0
    where = f"coherent action {a:.0%} (target {c.agency_action_target:.0%}), consistency {k:.0%} (target {c.agency_consistency_target:.0%})"
    if a >= c.agency_action_target and k >= c.agency_consistency_target:
        return MatrixRow(stage, "Agency", H, f"present: {where}")
    if a < c.agency_none_below and k < c.agency_none_below:
        return MatrixRow(stage, "Agency", F, f"none: {where}")
    return MatrixRow(stage, "Agency", W, f"fragments: {where}")


_ROWS: dict[str, Callable[..., MatrixRow]] = {
    "Loss": row_loss,
    "Val PPL": row_val_ppl,
    "u_val": row_u_clamps,
    "R": row_r_level,
    "R zones": row_r_zones,
    "Samples": row_samples,
    "u_val regime": row_u_regime,
    "Goldilocks": row_goldilocks,
}


# ---- stage verdicts -------------------------------------------------------------------------------------
def judge_rows(history: RunHistory, stage: int, c: Criteria, eval_results: dict | None, *,
               window: StageWindow | None = None) -> list[MatrixRow]:
    """The stage's rows judged on its window of the history (default: stage_window), each marked provisional
    unless judged at the stage's milestone or an immediate finding; plus a `u floor` row when the window holds a
    reading below the clamp floor (in a staged run only in the run's own stage: its windows are all the same)."""
    w = window or stage_window(history, stage)
    if not w.reached_stage:
        return [MatrixRow(stage, m, P, w.note, provisional=True) for m in STAGE_METRICS[stage]]
    view = HistoryAt(history, w.at)
    rows = []
    for metric in STAGE_METRICS[stage]:
        if metric == "Agency":
            rows.append(row_agency(eval_results, stage, c))
        else:
            rows.append(_ROWS[metric](view, stage, c, w))
    if w.mode == "milestones" or stage == own_stage(history):
        floor = row_u_floor(view, stage, c, w)
        if floor is not None:
            rows.append(floor)
    for row in rows:
        if row.provisional is None:
            row.provisional = w.provisional
            if w.provisional and row.verdict is not P:  # visible wherever the reason is shown (status text, cockpit)
                row.reason += f" (so far: {w.progress()})"
    return rows


def settled(rows: list[MatrixRow]) -> bool:
    """The stage's verdict is final: every row is, or a final Failure row already fixes the worst verdict."""
    return all(not r.provisional for r in rows) or any(r.verdict is F and not r.provisional for r in rows)


def combine(stage: int, rows: list[MatrixRow], running: bool, *, provisional: bool | None = None,
            progress: str | None = None) -> tuple[Verdict, Action, str]:
    """Worst row wins (Pending only when every row is pending); the action follows the runbook, and only for a
    final verdict: a provisional one (default: `running`) waits for the stage's milestone, whatever its rows say."""
    provisional = running if provisional is None else provisional
    judged = [r for r in rows if r.verdict is not P]
    pending = [r.metric for r in rows if r.verdict is P]
    if not judged:
        return P, Action.WAIT, f"Stage {stage}: PENDING ({', '.join(pending)} not judged yet) - wait"
    worst = max(judged, key=lambda r: r.verdict.rank).verdict
    names = ", ".join(f"{r.metric} {_label(r)}" for r in judged if r.verdict is worst)
    tail = f"; {', '.join(pending)} pending" if pending else ""
    at = f" at {progress}" if progress else ""
    if provisional and worst is not H:  # a verdict so far: no action on it before the milestone
        return worst, Action.WAIT, (f"Stage {stage}: {worst.value.upper()} so far ({names}){tail} - provisional{at}: "
                                    f"the gate is judged at the stage's milestone")
    if worst is F:
        return F, Action.STOP, f"Stage {stage}: FAILURE ({names}) - stop, debug, restart the stage{tail}"
    if worst is W:
        return W, Action.INVESTIGATE, f"Stage {stage}: WARNING ({names}) - investigate and retry{tail}"
    if provisional or running:  # healthy so far, but the gate is judged at the end of the stage
        return H, Action.WAIT, f"Stage {stage}: HEALTHY so far{tail}{at} - wait for the stage to finish"
    return H, Action.PROCEED, f"Stage {stage}: HEALTHY - proceed to the next stage{tail}"


def _label(row: MatrixRow) -> str:
    head = row.reason.split(":")[0]
    return head if len(head) <= 24 and not any(ch.isdigit() for ch in head) else row.verdict.value


def assess_stage(history: RunHistory, stage: int, criteria: Criteria | None = None,
                 eval_results: dict | None = None, run_dir: str | Path | None = None) -> StageAssessment:
    """Judge one stage's rows where the stage is judged in this run (stage_window). `run_dir` (optional) makes
    remedies name the real folder. The assessment is provisional until the stage reached its milestone (or a
    final Failure row settles it); its action is then WAIT."""
    stage_info(stage)  # validates 1..5
    c = criteria or DEFAULT
    w = stage_window(history, stage)
    rows = judge_rows(history, stage, c, eval_results, window=w)
    for row in rows:
        playbook.attach_remedy(row, history, run_dir, c)
    running = history.run_start is not None and history.run_end is None
    provisional = not settled(rows)
    verdict, action, summary = combine(stage, rows, running, provisional=provisional,
                                       progress=w.progress() if w.reached_stage else None)
    return StageAssessment(stage, rows, verdict, action, summary, provisional)


def assess_all(history: RunHistory, current_stage: int, criteria: Criteria | None = None,
               eval_results: dict | None = None, run_dir: str | Path | None = None
               ) -> tuple[dict[int, StageAssessment], list[MatrixRow]]:
    """Every stage judged once: ({stage: its assessment, for the stages judged}, every row of every stage).
    Staged runs: stages <= current_stage judged from this history, later ones Pending. Other runs: every stage
    the run reached, each judged at its milestone (stage_window)."""
    c = criteria or DEFAULT
    milestones = own_stage(history) is None
    judged: dict[int, StageAssessment] = {}
    rows: list[MatrixRow] = []
    for st in STAGES:
        if st.number <= current_stage or milestones:
            judged[st.number] = a = assess_stage(history, st.number, c, eval_results, run_dir)
            rows.extend(a.rows)
        else:
            rows.extend(MatrixRow(st.number, m, P, f"stage {st.number} not reached (this is a stage {current_stage} run)",
                                  provisional=True) for m in STAGE_METRICS[st.number])
    return judged, rows


def full_matrix(history: RunHistory, current_stage: int, criteria: Criteria | None = None,
                eval_results: dict | None = None, run_dir: str | Path | None = None) -> list[MatrixRow]:
    """Every row of every stage (see assess_all)."""
    return assess_all(history, current_stage, criteria, eval_results, run_dir)[1]


def infer_stage(history: RunHistory, run_dir: str | Path | None = None) -> int:
    """The run's stage. Ours: run_start's `stage`. Legacy and unnamed runs, by where they got to: the first stage
    whose milestone covers max_steps (or the step reached, when max_steps is unknown or passed); 5 beyond 10000.
    The folder's name only for a folder with no run in it yet (`results/stage3` names the stage to start there);
    it never judges a run. 1 when nothing is known."""
    own = own_stage(history)
    if own is not None:
        return own
    reached = reached_step(history)
    target = max(history.max_steps or 0, reached)
    if target > 0 or history.run_start is not None:
        return next((st.number for st in STAGES if target <= st.steps), 5)
    if run_dir is not None:
        name = Path(run_dir).name
        for st in STAGES:
            if name == st.output_dir:
                return st.number
    return 1
