"""Issue 13 items 2 and 3: a run is judged by where it got to, not by its folder's name; one long run is judged
at each milestone it passed; u below the clamp floor is a Failure at any stage (the monostable ablation aside)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kssm_core.runbook.alerts import compute_alerts
from kssm_core.runbook.matrix import (U_FLOOR, HistoryAt, assess_stage, full_matrix, infer_stage, stage_window)
from kssm_core.runbook.verdicts import Severity, Verdict
from kssm_core.runfolder.history import RunHistory
from kssm_core.runfolder.legacy import parse_legacy_lines
from runbook_synth import FRAGMENTS, GIBBERISH, PROSE, chronological, events, legacy_lines, ramp, replay

H, W, F, P = Verdict.HEALTHY, Verdict.WARNING, Verdict.FAILURE, Verdict.PENDING


def row(rows, stage, metric):
    return next(r for r in rows if r.stage == stage and r.metric == metric)


# ---- one long run of ours without --stage, past every milestone and beyond 10,000 steps -----------------------
STEPS = list(range(20, 12001, 20))


def _r(s: int) -> float:
    if s <= 1500:
        return 0.03 + (0.02 if (s // 20) % 2 else -0.02)  # Unformed only (< 0.10), moving
    if s <= 5000:
        return 0.05 + 0.35 * (s - 1500) / 3500  # through Intimacy into Balance
    return 0.40 + 0.08 * (s - 5000) / 7000


def _u(s: int) -> float:
    if s <= 2000:
        return 0.475 - 0.355 * s / 2000
    return 0.105 + (0.02 if (s // 20) % 2 else 0.0)  # edge-surfing 0.105-0.125


def _loss(s: int) -> float:
    return 6.5 + 3.5 * math.exp(-s / 300)  # falls fast at first, as a real run's does


PPL = {500: 1500.0, 1000: 800.0, 1500: 450.0, 5000: 320.0, 10000: 270.0, 12000: 250.0}


def _ppl(s: int) -> float:
    return PPL.get(s) or (600.0 if s < 1500 else 400.0 if s < 5000 else 280.0)


def long_run_events(max_steps=None):
    evs = events(STEPS, loss=[_loss(s) for s in STEPS], R=[_r(s) for s in STEPS], u=[_u(s) for s in STEPS],
                 stage=None, max_steps=max_steps,
                 evals=[{"step": s, "val_ppl": _ppl(s), "val_R": _r(s), "val_loss": 6.0, "val_ce": 6.0}
                        for s in range(500, 12001, 500)],
                 samples=[(s, PROSE if s == 1500 else GIBBERISH if s > 1500 else FRAGMENTS) for s in range(500, 12001, 500)],
                 end="completed")
    evs[-1]["step"] = 12000
    return chronological(evs)


def fold(evs) -> RunHistory:
    h = RunHistory()
    h.extend(evs)
    return h


def test_one_long_run_is_judged_at_each_milestone_and_stage5_at_the_newest_step():
    h = fold(long_run_events())
    assert infer_stage(h) == 5  # no max_steps, no stage: from the steps reached (12,000: beyond Stage 5's)
    rows = full_matrix(h, infer_stage(h))
    # Stage 2's rows on what was logged up to step 500, Stage 3's up to 1500, Stage 4's up to 5000
    assert row(rows, 2, "Val PPL").verdict is W and "1500.0 at step 500" in row(rows, 2, "Val PPL").reason
    assert row(rows, 2, "u_val").verdict is H
    assert row(rows, 3, "Val PPL").verdict is H and "450.0 at step 1500" in row(rows, 3, "Val PPL").reason
    # up to 1500 R stayed Unformed (on the whole run it visits three zones): a Warning, judged at the milestone
    assert row(rows, 3, "R zones").verdict is W and "1 zone(s) visited (Unformed" in row(rows, 3, "R zones").reason
    assert row(rows, 3, "Samples").verdict is H and "at step 1500" in row(rows, 3, "Samples").reason  # not 12000's
    assert row(rows, 4, "Val PPL").verdict is W and "320.0 at step 5000" in row(rows, 4, "Val PPL").reason
    assert row(rows, 4, "R zones").verdict is H and "Unformed, Intimacy, Balance" in row(rows, 4, "R zones").reason
    assert row(rows, 4, "u_val regime").verdict is H and "edge-surfing" in row(rows, 4, "u_val regime").reason
    gold = row(rows, 5, "Goldilocks")  # beyond 10,000: judged at the newest step
    assert gold.verdict is H and "at step 12000" in gold.reason
    assert all(not r.provisional for r in rows)  # every stage reached and passed: all final
    assert row(rows, 5, "Agency").verdict is P
    # each stage's assessment says the same as the matrix; all twelve rows, no "not reached"
    assert len(rows) == 12 and not any("not reached" in r.reason for r in rows)
    assert assess_stage(h, 3).verdict is W and assess_stage(h, 2).verdict is W and assess_stage(h, 1).verdict is H


def test_a_long_run_mid_way_judges_the_passed_milestones_finally_and_the_current_stage_so_far():
    evs = long_run_events()
    cut = next(i for i, e in enumerate(evs) if e["event"] == "step" and e["step"] == 3000) + 1
    h = fold(evs[:cut])
    assert infer_stage(h) == 4  # no max_steps: the stage the newest step (3000) is in
    rows = full_matrix(h, infer_stage(h))
    for st in (1, 2, 3):
        assert all(not r.provisional for r in rows if r.stage == st), st
    assert row(rows, 3, "R zones").verdict is W  # as it will stay: judged at 1500
    r4 = row(rows, 4, "R zones")
    assert r4.provisional and "(so far: step 3000 of 5000)" in r4.reason
    assert all(r.verdict is P and "not reached: the run is at step 3000" in r.reason for r in rows if r.stage == 5)
    assert assess_stage(h, 4).provisional and not assess_stage(h, 3).provisional
    # with max_steps known the run is a Stage 5 run from its start; the rows are the same
    h2 = fold(long_run_events(max_steps=12000)[:cut])
    assert infer_stage(h2) == 5
    assert [(r.stage, r.metric, r.verdict, r.provisional) for r in full_matrix(h2, 5)] == \
        [(r.stage, r.metric, r.verdict, r.provisional) for r in rows]


def test_judging_a_prefix_views_the_history_without_copying_it():
    h = fold(long_run_events())
    view = HistoryAt(h, 1500)
    assert int(view.steps.steps[-1]) == 1500 and len(view.steps) == 75
    for name in ("R", "u_val", "loss"):
        assert np.shares_memory(view.steps.cols[name], np.frombuffer(h.steps.cols[name]))
    assert list(view.evals.steps) == [500, 1000, 1500]
    assert [s["step"] for s in view.samples] == [500, 1000, 1500]
    assert stage_window(h, 3).at == 1500 and stage_window(h, 5).at is None


def test_our_staged_runs_keep_working_as_before():
    # stage 3's folder: 1,500 steps started from stage 2's best model; every judged stage sees the whole run
    evs = long_run_events()
    for e in evs:
        if e["event"] == "run_start":
            e["stage"], e["max_steps"] = 3, 1500
            e["config"].update(stage=3, max_steps=1500, init_from="results/stage2/best_model.pt")
    h = fold([e for e in evs if e["event"] != "run_end" and e.get("step", 0) <= 1500]
             + [{"event": "run_end", "t": 2e4, "status": "completed", "reason": "max_steps reached", "step": 1500}])
    assert infer_stage(h) == 3
    rows = full_matrix(h, 3)
    assert "450.0 at step 1500" in row(rows, 2, "Val PPL").reason  # not cut at 500: the stage 2 gate on this run
    assert all(r.verdict is P and "this is a stage 3 run" in r.reason for r in rows if r.stage > 3)
    assert all(not r.provisional for r in rows if r.stage <= 3)


# ---- a legacy log with a negative u from step 1500 (the published monostable twin) -----------------------------
def twin_log(last=10000, u_negative_from=1500):
    rows, evals = [], {}
    for s in range(20, last + 1, 20):
        u = 0.475 - 0.3 * s / 1500 if s < u_negative_from else -1.23 - 2.14 * (s - u_negative_from) / (10000 - u_negative_from)
        r = 0.024 + 0.2 * s / 10000
        rows.append((s, _loss(s), _loss(s) - 0.1, 0.3, r, u, 2.0))
        if s % 500 == 0:
            evals[s] = dict(loss=7.0, ce=6.9, ppl=900.0 - s / 20, R=r, u=u)
    return legacy_lines(rows, evals)


@pytest.mark.parametrize("folder", ["bistable", "stage5", "stage1", "final", "x"])
def test_a_legacy_log_with_a_negative_u_from_step_1500_is_judged_a_failure_in_any_folder(tmp_path, folder):
    h = fold(parse_legacy_lines(twin_log(), tmp_path / folder))
    assert infer_stage(h) == 5  # the steps reached (10,000), never the folder's name
    a = assess_stage(h, 5)
    floor = row(a.rows, 5, U_FLOOR)
    assert floor.verdict is F and not floor.provisional and "clamp is not in effect" in floor.remedy_note
    assert floor.reason.startswith("the bistability constraint is broken (u = -1.23 at step 1500)")
    assert a.verdict is F and not a.provisional
    rows = full_matrix(h, 5)
    assert {r.stage for r in rows if r.metric == U_FLOOR} == {3, 4, 5}  # every stage whose window holds it
    assert row(rows, 2, "u_val").verdict is H  # Stage 2 was judged at step 500, before the break
    alert = next(x for x in compute_alerts(h, now=1e12) if x.code == "u_floor_broken")
    assert alert.severity is Severity.CRITICAL and "u = -1.23 at step 1500" in alert.message


def test_status_judges_the_legacy_twin_a_failure(tmp_path, monkeypatch):
    from kssm_core.runbook.status import run_status

    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "bistable"
    d.mkdir()
    (d / "training.log").write_text("\n".join(twin_log()) + "\n")
    s = run_status(d)
    assert s.stage == 5 and s.assessment.verdict is F
    assert any(a.code == "u_floor_broken" and a.severity is Severity.CRITICAL for a in s.alerts)
    d = s.to_dict()
    assert any(r["metric"] == U_FLOOR and r["provisional"] is False for r in d["assessment"]["rows"])


def test_runs_in_folders_named_anything_are_judged_by_their_steps(tmp_path):
    short = twin_log(last=700, u_negative_from=10**9)  # 700 steps, no max_steps line: a Stage 3 run so far
    seen = set()
    for folder in ("bistable", "stage5", "stage1", "final", "results"):
        h = fold(parse_legacy_lines(short, tmp_path / folder))
        rows = full_matrix(h, infer_stage(h))
        seen.add((infer_stage(h), tuple((r.stage, r.metric, r.verdict, r.reason, r.provisional) for r in rows)))
    assert len(seen) == 1
    stage, rows = seen.pop()
    assert stage == 3
    by = {(s, m): (v, p) for s, m, v, _, p in rows}
    assert by[(1, "Loss")] == (H, False) and by[(2, "Val PPL")][1] is False  # milestones passed: final
    assert by[(2, "Val PPL")][0] is H and by[(3, "Val PPL")] == (W, True)  # 875: Stage 2's band passed, Stage 3's so far
    assert by[(4, "Val PPL")][0] is P and by[(5, "Goldilocks")][0] is P


# ---- the clamp claim -------------------------------------------------------------------------------------
def _ours(u, **cfg):
    evs = events(list(range(10, 10 * len(u) + 1, 10)), u=u, stage=2, max_steps=500, config=cfg)
    evs[1]["model_config"] = {"bistable": not cfg.get("monostable", False), "u_min": 0.1, "u_max": 10.0}
    return fold(evs)


def test_a_run_claiming_the_bistable_clamp_fails_below_its_floor_not_only_below_zero():
    h = _ours([0.5] * 10 + [0.05] * 2, monostable=False)
    floor = row(assess_stage(h, 2).rows, 2, U_FLOOR)
    assert "u = 0.05 at step 110" in floor.reason and "below the clamp floor 0.1" in floor.reason
    assert any(a.code == "u_floor_broken" for a in compute_alerts(h, now=1e12))
    h = _ours([0.5] * 10 + [0.1] * 2, monostable=False)  # at the floor is the clamp working, not broken
    assert not any(r.metric == U_FLOOR for r in assess_stage(h, 2).rows)


def test_the_monostable_ablation_is_judged_as_the_ablation_it_is():
    h = _ours(ramp(0.5, -3.37, 30), monostable=True)  # no clamp: u goes negative, as the spec's twin did
    rows = assess_stage(h, 2).rows
    assert not any(r.metric == U_FLOOR for r in rows)
    u = row(rows, 2, "u_val")
    assert u.verdict is H and "not applicable: monostable ablation" in u.reason and "-3.37" in u.reason
    assert not any(a.code == "u_floor_broken" for a in compute_alerts(h, now=1e12))


def test_replay_of_the_legacy_twin_raises_the_floor_alert_at_the_step_it_breaks(tmp_path):
    evs = parse_legacy_lines(twin_log(last=2000), tmp_path / "bistable")
    first = None
    for h in replay(evs, chunk=3):
        codes = {a.code for a in compute_alerts(h, lock="live", process_alive=True, now=(h.last_event_t or 0) + 1)
                 if a.severity is Severity.CRITICAL}
        if first is None and codes:
            first = (h.last_step, codes)
    assert first is not None and first[1] == {"u_floor_broken"} and 1500 <= first[0] <= 1540
