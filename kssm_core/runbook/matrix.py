"""The runbook's decision matrix as pure functions over a run's history.

`assess_stage(history, stage)` judges the rows of one stage; `full_matrix(history, current_stage)` gives
every row of every stage so the cockpit can show the whole table with the current stage highlighted.

Rows of stages up to and including the run's own stage are judged from this run's history (a stage 3
run must still pass the stage 1 and 2 gates); rows of later stages are Pending ("not reached"), because
a later gate applied to an earlier, shorter run would fail by design and mean nothing.
Each Warning / Failure row carries a pasteable remedy from kssm_core.runbook.playbook.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from pathlib import Path
from typing import Callable

import numpy as np

from kssm_core.runbook import playbook
from kssm_core.runbook.stages import STAGES, stage as stage_info
from kssm_core.runbook.criteria import DEFAULT, Criteria
from kssm_core.runfolder.history import RunHistory, as_step
from kssm_core.runbook.sample_quality import classify_sample
from kssm_core.runbook.verdicts import Action, MatrixRow, StageAssessment, Verdict

H, W, F, P = Verdict.HEALTHY, Verdict.WARNING, Verdict.FAILURE, Verdict.PENDING

ZONE_NAMES = ("Unformed", "Intimacy", "Balance", "Mystery", "Wonder", "Passion", "Ache")

STAGE_METRICS: dict[int, tuple[str, ...]] = {
    1: ("Loss",),
    2: ("Val PPL", "u_val", "R"),
    3: ("Val PPL", "R zones", "Samples"),
    4: ("Val PPL", "R zones", "u_val regime"),
    5: ("Goldilocks", "Agency"),
}


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


def _last_eval(history: RunHistory, name: str) -> tuple[int, float] | None:
    i = history.evals.last_finite(name)
    return None if i is None else (history.evals.steps[i], history.evals.cols[name][i])


# ---- the rows -------------------------------------------------------------------------------------------
def row_loss(history: RunHistory, stage: int, c: Criteria) -> MatrixRow:
    raw = history.steps.cols["loss"]
    end = history.run_end or {}
    if end.get("reason") == "nan_loss" or (len(raw) and _last_is_nonfinite_value(history)):
        at = as_step(end.get("step")) or history.last_step
        return MatrixRow(stage, "Loss", F, f"loss is NaN/inf at step {at}")
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
        return MatrixRow(stage, "Loss", F, f"increasing: {nums}")
    return MatrixRow(stage, "Loss", W, f"flat (within {c.loss_flat_tolerance:.0%}): {nums}")


def _last_is_nonfinite_value(history: RunHistory) -> bool:
    """The newest step reported a loss that is null/NaN (not merely absent from a damaged line)."""
    return not math.isfinite(history.steps.cols["loss"][-1]) and not math.isfinite(history.steps.cols["ce"][-1])


def row_val_ppl(history: RunHistory, stage: int, c: Criteria) -> MatrixRow:
    healthy, failure = {2: (c.stage2_ppl_healthy, c.stage2_ppl_failure), 3: (c.stage3_ppl_healthy, c.stage3_ppl_failure),
                        4: (c.stage4_ppl_healthy, c.stage4_ppl_failure)}[stage]
    ev = history.evals
    if not len(ev):
        return MatrixRow(stage, "Val PPL", P, "no evaluation yet")
    step, ppl, ce = ev.steps[-1], ev.cols["val_ppl"][-1], ev.cols["val_ce"][-1]
    if not math.isfinite(ppl) and math.isfinite(ce):
        ppl = math.exp(min(ce, 20.0))  # the trainer's definition, when only val CE was logged
    if not math.isfinite(ppl):
        if math.isfinite(ev.cols["val_loss"][-1]):  # a damaged eval line: use the newest readable one
            last = _last_eval(history, "val_ppl")
            if last is None:
                return MatrixRow(stage, "Val PPL", P, f"no readable val PPL (newest eval at step {step})")
            step, ppl = last
        else:
            return MatrixRow(stage, "Val PPL", F, f"val PPL is NaN/inf at step {step}")
    where = f"val PPL {_fmt(ppl)} at step {step}"
    if ppl < healthy:
        return MatrixRow(stage, "Val PPL", H, f"{where} < {healthy:g}")
    if ppl <= failure:
        return MatrixRow(stage, "Val PPL", W, f"{where} in {healthy:g}-{failure:g}")
    return MatrixRow(stage, "Val PPL", F, f"{where} > {failure:g}")



def _readings(history: RunHistory, col: str, stage: int, metric: str, c: Criteria) -> tuple[list[float], MatrixRow | None]:
    """The finite readings of a step column, or a Pending row when there are too few to judge."""
    vals = _finite(history.steps.cols[col])
    if len(vals) < c.min_points:
        return vals, MatrixRow(stage, metric, P, f"{len(vals)} {col} readings so far, need {c.min_points}")
    return vals, None

def row_u_clamps(history: RunHistory, stage: int, c: Criteria) -> MatrixRow:
    vals, pending = _readings(history, "u_val", stage, "u_val", c)
    if pending:
        return pending
    rec = _recent(vals, c)
    at = _count((rec <= c.u_at_floor) | (rec >= c.u_at_ceiling))
    near = _count((rec <= c.u_near_floor) | (rec >= c.u_near_ceiling))  # includes `at`
    span = f"recent u_val {_fmt(float(rec.min()))}-{_fmt(float(rec.max()))} (last {len(rec)} readings)"
    if at / len(rec) >= c.u_clamp_share:
        return MatrixRow(stage, "u_val", F, f"hitting clamps: {at}/{len(rec)} at <= {c.u_at_floor} or >= {c.u_at_ceiling}; {span}")
    if at or near / len(rec) >= c.u_clamp_share:
        return MatrixRow(stage, "u_val", W, f"near clamps: {near}/{len(rec)} <= {c.u_near_floor} or >= {c.u_near_ceiling}; {span}")
    return MatrixRow(stage, "u_val", H, f"inside [0.1, 10] away from the clamps: {span}")


def row_r_level(history: RunHistory, stage: int, c: Criteria) -> MatrixRow:
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
    return MatrixRow(stage, "R", F, f"locked at 0: {where} < {c.stage2_r_locked}")


def row_r_zones(history: RunHistory, stage: int, c: Criteria) -> MatrixRow:
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
            return MatrixRow(stage, "R zones", F, f"locked: R moved only {hi - lo:.4f} (< {c.r_locked_range}); {where}")
        return MatrixRow(stage, "R zones", W, f"{where} < {c.stage3_zones_healthy}")
    if len(zones) >= c.stage4_zones_healthy:
        return MatrixRow(stage, "R zones", H, f"multi-attractor: {where} >= {c.stage4_zones_healthy}")
    if len(zones) >= c.stage4_zones_warning:
        return MatrixRow(stage, "R zones", W, f"{where} < {c.stage4_zones_healthy}")
    return MatrixRow(stage, "R zones", F, f"not exploring: {where} < {c.stage4_zones_warning}")


def row_samples(history: RunHistory, stage: int, c: Criteria) -> MatrixRow:
    texts = [s for s in history.samples if isinstance(s.get("text"), str)]
    if not texts:
        return MatrixRow(stage, "Samples", P, "no sample yet")
    newest = texts[-1]
    q = classify_sample(newest["text"], c)
    at = as_step(newest.get("step"))
    verdict = {"words": H, "fragments": W, "gibberish": F}[q.label]
    label = {"words": "words/phrases", "fragments": "fragments", "gibberish": "gibberish"}[q.label]
    return MatrixRow(stage, "Samples", verdict, f"{label} at step {at}: {q.describe()}")


def row_u_regime(history: RunHistory, stage: int, c: Criteria) -> MatrixRow:
    vals, pending = _readings(history, "u_val", stage, "u_val regime", c)
    if pending:
        return pending
    rec = _recent(vals, c)
    lo, hi = float(rec.min()), float(rec.max())
    span = f"recent u_val {lo:.3f}-{hi:.3f} (last {len(rec)} readings)"
    if hi - lo < c.u_locked_range:
        where = " at the floor" if hi <= c.u_at_floor else " at the ceiling" if lo >= c.u_at_ceiling else ""
        return MatrixRow(stage, "u_val regime", F, f"locked{where}: moved {hi - lo:.4f} (< {c.u_locked_range}); {span}")
    edge = _count(rec <= c.u_edge_max)
    if edge / len(rec) >= c.u_edge_share:
        return MatrixRow(stage, "u_val regime", H, f"edge-surfing: {edge}/{len(rec)} readings <= {c.u_edge_max}, still moving; {span}")
    return MatrixRow(stage, "u_val regime", W, f"wandering: {edge}/{len(rec)} readings <= {c.u_edge_max}; {span}")


def row_goldilocks(history: RunHistory, stage: int, c: Criteria) -> MatrixRow:
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


_ROWS: dict[str, Callable[[RunHistory, int, Criteria], MatrixRow]] = {
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
def judge_rows(history: RunHistory, stage: int, c: Criteria, eval_results: dict | None) -> list[MatrixRow]:
    rows = []
    for metric in STAGE_METRICS[stage]:
        if metric == "Agency":
            rows.append(row_agency(eval_results, stage, c))
        else:
            rows.append(_ROWS[metric](history, stage, c))
    return rows


def combine(stage: int, rows: list[MatrixRow], running: bool) -> tuple[Verdict, Action, str]:
    """Worst row wins (Pending only when every row is pending); the action follows the runbook."""
    judged = [r for r in rows if r.verdict is not P]
    pending = [r.metric for r in rows if r.verdict is P]
    if not judged:
        return P, Action.WAIT, f"Stage {stage}: PENDING ({', '.join(pending)} not judged yet) - wait"
    worst = max(judged, key=lambda r: r.verdict.rank).verdict
    names = ", ".join(f"{r.metric} {_label(r)}" for r in judged if r.verdict is worst)
    tail = f"; {', '.join(pending)} pending" if pending else ""
    prov = " (provisional: the run has not finished)" if running else ""
    if worst is F:
        return F, Action.STOP, f"Stage {stage}: FAILURE ({names}) - stop, debug, restart the stage{tail}{prov}"
    if worst is W:
        return W, Action.INVESTIGATE, f"Stage {stage}: WARNING ({names}) - investigate and retry{tail}{prov}"
    if running:  # healthy so far, but the gate is judged at the end of the stage
        return H, Action.WAIT, f"Stage {stage}: HEALTHY so far{tail} - wait for the stage to finish"
    return H, Action.PROCEED, f"Stage {stage}: HEALTHY - proceed to the next stage{tail}"


def _label(row: MatrixRow) -> str:
    head = row.reason.split(":")[0]
    return head if len(head) <= 24 and not any(ch.isdigit() for ch in head) else row.verdict.value


def assess_stage(history: RunHistory, stage: int, criteria: Criteria | None = None,
                 eval_results: dict | None = None, run_dir: str | Path | None = None) -> StageAssessment:
    """Judge one stage's rows from the run's history. `run_dir` (optional) makes remedies name the real folder."""
    stage_info(stage)  # validates 1..5
    c = criteria or DEFAULT
    rows = judge_rows(history, stage, c, eval_results)
    for row in rows:
        playbook.attach_remedy(row, history, run_dir, c)
    # the gate is final only once the stage completed (a running, crashed or interrupted run is provisional)
    running = history.run_start is not None and (history.run_end or {}).get("status") != "completed"
    verdict, action, summary = combine(stage, rows, running)
    return StageAssessment(stage, rows, verdict, action, summary)


def full_matrix(history: RunHistory, current_stage: int, criteria: Criteria | None = None,
                eval_results: dict | None = None, run_dir: str | Path | None = None) -> list[MatrixRow]:
    """Every row of every stage: stages <= current_stage judged from this history, later ones Pending."""
    c = criteria or DEFAULT
    rows: list[MatrixRow] = []
    for st in STAGES:
        if st.number <= current_stage:
            rows.extend(assess_stage(history, st.number, c, eval_results, run_dir).rows)
        else:
            rows.extend(MatrixRow(st.number, m, P, f"stage {st.number} not reached (this is a stage {current_stage} run)")
                        for m in STAGE_METRICS[st.number])
    return rows


def infer_stage(history: RunHistory, run_dir: str | Path | None = None) -> int:
    """The run's stage: run_start's `stage`, else its max_steps matching a stage target, else the folder's name,
    else the first stage whose target covers max_steps; 1 when nothing is known."""
    for v in ((history.run_start or {}).get("stage"), history.config.get("stage")):
        s = as_step(v)
        if s is not None and 1 <= s <= 5:
            return s
    target = history.max_steps
    for st in STAGES:
        if target == st.steps:
            return st.number
    if run_dir is not None:
        name = Path(run_dir).name
        for st in STAGES:
            if name == st.output_dir:
                return st.number
    if target is not None:
        for st in STAGES:
            if target <= st.steps:
                return st.number
        return 5
    return 1
