"""The decision matrix, cell by cell: a synthetic trajectory for every verdict of every row of the runbook."""

from __future__ import annotations

import json

import pytest

from kssm_core.runbook.criteria import Criteria, CriteriaError, load_criteria
from kssm_core.runbook.matrix import STAGE_METRICS, assess_stage, full_matrix, infer_stage, zones_visited
from kssm_core.runbook.verdicts import Action, Verdict
from runbook_synth import FRAGMENTS, GIBBERISH, PROSE, history, ramp, wiggle

H, W, F, P = Verdict.HEALTHY, Verdict.WARNING, Verdict.FAILURE, Verdict.PENDING
N = 30


def row(h, stage, metric, **kw):
    a = assess_stage(h, stage, **kw)
    return next(r for r in a.rows if r.metric == metric)


# (stage, metric, history kwargs, expected verdict, a fragment the reason must quote)
CELLS = [
    # Stage 1: loss descending / flat / increasing / NaN
    (1, "Loss", dict(loss=ramp(8.0, 5.0, N)), H, "descending"),
    (1, "Loss", dict(loss=wiggle(6.0, 0.05, N)), W, "flat"),
    (1, "Loss", dict(loss=ramp(5.0, 8.0, N)), F, "increasing"),
    (1, "Loss", dict(loss=ramp(8.0, 5.0, N - 1) + [None]), F, "NaN"),
    (1, "Loss", dict(loss=[8.0, 7.0]), P, "2 loss readings"),
    # Stage 2: val PPL < 1000 / 1000-2000 / > 2000
    (2, "Val PPL", dict(loss=ramp(8, 6, N), evals=[{"step": 300, "val_ppl": 812.4}]), H, "812"),
    (2, "Val PPL", dict(loss=ramp(8, 6, N), evals=[{"step": 300, "val_ppl": 1500.0}]), W, "1500"),
    (2, "Val PPL", dict(loss=ramp(8, 6, N), evals=[{"step": 300, "val_ppl": 2500.0}]), F, "2500"),
    (2, "Val PPL", dict(loss=ramp(8, 6, N)), P, "no evaluation"),
    (2, "Val PPL", dict(evals=[{"step": 300, "val_ce": 6.5}]), H, "665"),  # only val CE logged: exp(CE)
    (2, "Val PPL", dict(evals=[{"step": 300, "val_ppl": 800.0, "val_loss": 6.6},
                              {"step": 400, "val_ppl": None, "val_ce": None, "val_loss": None}]), F, "NaN"),
    # Stage 2: u_val inside / near clamps / hitting clamps
    (2, "u_val", dict(u=wiggle(1.0, 0.3, N)), H, "inside"),
    (2, "u_val", dict(u=wiggle(0.16, 0.02, N)), W, "near clamps"),
    (2, "u_val", dict(u=wiggle(8.8, 0.3, N)), W, "near clamps"),
    (2, "u_val", dict(u=ramp(1.0, 0.4, N - 10) + [0.1] * 10), F, "hitting clamps"),
    (2, "u_val", dict(u=[10.0] * N), F, "hitting clamps"),
    # Stage 2: R > 0.01 / 0.001-0.01 / locked at 0
    (2, "R", dict(R=wiggle(0.05, 0.01, N)), H, "0.05"),
    (2, "R", dict(R=wiggle(0.005, 0.001, N)), W, "0.005"),
    (2, "R", dict(R=[0.0001] * N), F, "locked at 0"),
    # Stage 3: val PPL < 500 / 500-1000 / > 1000
    (3, "Val PPL", dict(evals=[{"step": 1500, "val_ppl": 420.0}]), H, "420"),
    (3, "Val PPL", dict(evals=[{"step": 1500, "val_ppl": 700.0}]), W, "700"),
    (3, "Val PPL", dict(evals=[{"step": 1500, "val_ppl": 1200.0}]), F, "1200"),
    # Stage 3: R zones >= 2 / 1 / locked
    (3, "R zones", dict(R=ramp(0.05, 0.45, N)), H, "Unformed, Intimacy, Balance"),
    (3, "R zones", dict(R=wiggle(0.2, 0.05, N)), W, "1 zone"),
    (3, "R zones", dict(R=[0.2] * N), F, "locked"),
    # Stage 3: samples words/phrases / fragments / gibberish
    (3, "Samples", dict(samples=[(1500, PROSE)]), H, "words/phrases"),
    (3, "Samples", dict(samples=[(1500, FRAGMENTS)]), W, "fragments"),
    (3, "Samples", dict(samples=[(1500, GIBBERISH)]), F, "gibberish"),
    (3, "Samples", dict(), P, "no sample"),
    # Stage 4: val PPL < 300 / 300-500 / > 500
    (4, "Val PPL", dict(evals=[{"step": 5000, "val_ppl": 272.67}]), H, "272"),
    (4, "Val PPL", dict(evals=[{"step": 5000, "val_ppl": 315.91}]), W, "315"),
    (4, "Val PPL", dict(evals=[{"step": 5000, "val_ppl": 640.0}]), F, "640"),
    # Stage 4: R zones >= 3 / 2 / < 2
    (4, "R zones", dict(R=ramp(0.05, 0.6, N)), H, "multi-attractor"),
    (4, "R zones", dict(R=ramp(0.05, 0.25, N)), W, "2 zone"),
    (4, "R zones", dict(R=wiggle(0.2, 0.05, N)), F, "not exploring"),
    # Stage 4: u_val regime edge-surfing / wandering / locked
    (4, "u_val regime", dict(u=ramp(0.5, 0.12, N // 2) + wiggle(0.113, 0.012, N)), H, "edge-surfing"),
    (4, "u_val regime", dict(u=wiggle(1.5, 1.0, N)), W, "wandering"),
    (4, "u_val regime", dict(u=ramp(0.5, 0.1, N // 2) + [0.1] * N), F, "locked at the floor"),
    # Stage 5: Goldilocks R >= 0.30 / 0.20-0.30 / < 0.20 (val R preferred)
    (5, "Goldilocks", dict(evals=[{"step": 10000, "val_R": 0.3229}]), H, "0.3229"),
    (5, "Goldilocks", dict(evals=[{"step": 10000, "val_R": 0.25}]), W, "0.2500"),
    (5, "Goldilocks", dict(evals=[{"step": 10000, "val_R": 0.12}]), F, "0.1200"),
    (5, "Goldilocks", dict(R=wiggle(0.4, 0.02, N)), H, "recent mean R"),
]


@pytest.mark.parametrize("stage,metric,kw,expected,quote", CELLS,
                         ids=[f"s{c[0]}-{c[1]}-{c[3].value}-{i}" for i, c in enumerate(CELLS)])
def test_every_cell(stage, metric, kw, expected, quote):
    r = row(history(stage=stage, **kw), stage, metric)
    assert r.verdict is expected, r.reason
    assert quote in r.reason
    assert "\n" not in r.reason
    if expected in (W, F):
        assert r.remedy or r.remedy_note, f"{metric} {expected} has no remedy"


def test_cells_cover_every_row_and_verdict():
    seen = {(c[0], c[1], c[3]) for c in CELLS}
    for stage, metrics in STAGE_METRICS.items():
        for metric in metrics:
            if metric == "Agency":
                continue  # from eval results: test_agency_cells
            for v in (H, W, F):
                assert (stage, metric, v) in seen, (stage, metric, v)


AGENCY = [
    ({"agency": {"coherent_action": 0.8, "consistency": 0.7}}, H, "present"),
    ({"agency": {"coherent_action": 0.5, "consistency": 0.7}}, W, "fragments"),
    ({"agency": {"coherent_action": 0.1, "consistency": 0.2}}, F, "none"),
    ({"agency": {"criteria": [{"name": "coherent-action score", "value": 0.75},   # kssm eval's file shape
                              {"name": "consistency score", "value": 0.65}]}}, H, "present"),
    (None, P, "not run yet"),
    ({"agency": {"something": 1}}, P, "no coherent_action"),
]


@pytest.mark.parametrize("results,expected,quote", AGENCY)
def test_agency_cells(results, expected, quote):
    r = row(history(stage=5), 5, "Agency", eval_results=results)
    assert r.verdict is expected and quote in r.reason


def test_one_noisy_reading_is_not_a_visit():
    vals = [0.2] * 20 + [0.6]  # one spike into Mystery
    assert zones_visited(vals) == ["Intimacy"]
    assert zones_visited(vals + [0.61]) == ["Intimacy", "Mystery"]


def test_stage_verdict_is_worst_row_and_action_follows():
    h = history(stage=2, u=[0.1] * N, R=wiggle(0.05, 0.01, N), evals=[{"step": 300, "val_ppl": 800.0}], end="completed")
    a = assess_stage(h, 2)
    assert a.verdict is F and a.action is Action.STOP and "u_val" in a.summary
    h = history(stage=2, u=wiggle(0.16, 0.02, N), R=wiggle(0.05, 0.01, N), evals=[{"step": 300, "val_ppl": 800.0}], end="completed")
    a = assess_stage(h, 2)
    assert a.verdict is W and a.action is Action.INVESTIGATE
    h = history(stage=2, u=wiggle(1.0, 0.3, N), R=wiggle(0.05, 0.01, N), evals=[{"step": 300, "val_ppl": 800.0}], end="completed")
    a = assess_stage(h, 2)
    assert a.verdict is H and a.action is Action.PROCEED


def test_wait_while_running_without_data():
    h = history(stage=2)  # run_start only
    a = assess_stage(h, 2)
    assert a.verdict is P and a.action is Action.WAIT
    h = history(stage=2, u=wiggle(1.0, 0.3, N), R=wiggle(0.05, 0.01, N))  # no eval yet, still running
    a = assess_stage(h, 2)
    assert a.verdict is H and a.action is Action.WAIT and "Val PPL" in a.summary
    h = history(stage=2, u=wiggle(1.0, 0.3, N), R=wiggle(0.05, 0.01, N), evals=[{"step": 300, "val_ppl": 800.0}])
    a = assess_stage(h, 2)  # every row healthy, but the stage has not finished: the gate is judged at its end
    assert a.verdict is H and a.action is Action.WAIT
    h.apply({"event": "run_end", "t": 1e4, "status": "completed", "step": 500})
    assert assess_stage(h, 2).action is Action.PROCEED


def test_full_matrix_judges_up_to_current_stage_and_leaves_later_pending():
    h = history(stage=2, loss=ramp(8, 5, N), u=[0.1] * N, evals=[{"step": 300, "val_ppl": 800.0}])
    rows = full_matrix(h, 2)
    assert [(r.stage, r.metric) for r in rows] == [(s, m) for s, ms in STAGE_METRICS.items() for m in ms]
    assert next(r for r in rows if r.stage == 1).verdict is H
    assert next(r for r in rows if r.stage == 2 and r.metric == "u_val").verdict is F
    assert all(r.verdict is P and "not reached" in r.reason for r in rows if r.stage > 2)


def test_criteria_override_moves_a_cell(tmp_path):
    h = history(stage=2, evals=[{"step": 300, "val_ppl": 1500.0}])
    assert row(h, 2, "Val PPL").verdict is W
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"stage2_ppl_healthy": 1600, "zone_min_readings": 3}))
    c = load_criteria(f)
    assert c.zone_min_readings == 3 and isinstance(c.zone_min_readings, int)
    assert row(h, 2, "Val PPL", criteria=c).verdict is H


@pytest.mark.parametrize("body,word", [("{not json", "not valid JSON"), ('{"nope": 1}', "unknown criteria"),
                                       ('{"stage2_ppl_healthy": "x"}', "finite number"), ("[1]", "JSON object"),
                                       ('{"zone_min_readings": 2.5}', "whole number"),
                                       ('{"r_zone_edges": [0.3, 0.1, 0.5, 0.7, 0.85, 0.95]}', "ascending")])
def test_bad_criteria_file_is_one_clear_line(tmp_path, body, word):
    f = tmp_path / "c.json"
    f.write_text(body)
    with pytest.raises(CriteriaError) as e:
        load_criteria(f)
    assert word in str(e.value) and "\n" not in str(e.value)


def test_criteria_defaults_are_the_runbook_values():
    c = Criteria()
    assert (c.stage2_ppl_healthy, c.stage2_ppl_failure) == (1000, 2000)
    assert (c.stage3_ppl_healthy, c.stage3_ppl_failure) == (500, 1000)
    assert (c.stage4_ppl_healthy, c.stage4_ppl_failure) == (300, 500)
    assert (c.goldilocks_healthy, c.goldilocks_warning) == (0.30, 0.20)
    assert (c.u_at_floor, c.u_at_ceiling) == (0.11, 9.9)
    assert c.r_zone_edges == (0.10, 0.30, 0.50, 0.70, 0.85, 0.95)


def test_infer_stage(tmp_path):
    assert infer_stage(history(stage=3)) == 3
    assert infer_stage(history(stage=None, max_steps=5000)) == 4
    assert infer_stage(history(stage=None, max_steps=60)) == 1
    # the folder's name never judges a run (issue 13): 777 steps planned is a Stage 3 run wherever it lies ...
    assert infer_stage(history(stage=None, max_steps=777), tmp_path / "final") == 3
    assert infer_stage(history(stage=None, max_steps=22000), tmp_path / "stage1") == 5  # beyond 10000: Stage 5
    # ... it only names the stage to start in a folder with no run yet (kssm status's ALL CLEAR)
    from kssm_core.runfolder.history import RunHistory
    assert infer_stage(RunHistory(), tmp_path / "final") == 5 and infer_stage(RunHistory()) == 1


def test_zone_counting_matches_reading_by_reading_including_edges():
    import random

    from kssm_core.runbook.matrix import ZONE_NAMES, zone_of

    rnd = random.Random(1)
    for _ in range(500):
        vals = [rnd.choice([0.1, 0.3, 0.5, 0.7, 0.85, 0.95, rnd.random(), 1.0, 0.0, float("nan")])
                for _ in range(rnd.randint(0, 12))]
        counts = [0] * 7
        for r in vals:
            if r == r:
                counts[zone_of(r)] += 1
        assert zones_visited(vals) == [ZONE_NAMES[i] for i, n in enumerate(counts) if n >= 2]
    assert zone_of(0.30) == 2 and zone_of(0.2999) == 1  # a band includes its lower edge (spec: 0.30 - 0.50 Balance)
