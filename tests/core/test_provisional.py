"""Issue 16: end-of-stage criteria are provisional until the stage reached its milestone; only the immediate
kinds (NaN, loss rising steadily, u at a clamp, u below the floor, grad norm, crash, stall, disk) may alert
mid-stage, each on its stated evidence. Replays feed runs event by event, as the cockpit's tail does."""

from __future__ import annotations

from pathlib import Path

import pytest

from kssm_core.runbook.alerts import compute_alerts
from kssm_core.runbook.matrix import U_FLOOR, assess_stage, full_matrix, infer_stage
from kssm_core.runbook.verdicts import Action, Severity, Verdict
from kssm_core.runfolder.legacy import parse_legacy_lines
from runbook_synth import FRAGMENTS, PROSE, chronological, events, history, ramp, replay, wiggle

H, W, F, P = Verdict.HEALTHY, Verdict.WARNING, Verdict.FAILURE, Verdict.PENDING
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "reference-runs"

# Matrix rows that are immediate kinds (final mid-stage on their evidence) and the alerts that may be critical.
IMMEDIATE_ROWS = {"Loss", "u_val", "Val PPL", U_FLOOR}  # NaN / rising loss, u at a clamp, NaN val PPL, u floor
IMMEDIATE_ALERTS = {"loss_nan", "grad_exploding", "u_floor_broken", "reg_negative", "stalled", "crashed", "disk_low",
                    "memory_pressure"}


def banner_rows(rows):
    """What the banner (RunStatus.headline) and the cockpit's bell act on: the core's final Failure rows."""
    from kssm_core.runbook.judge import final_failures

    return final_failures(rows)


def critical(h):
    """Critical alerts for a live run that is still logging (a live lock, the newest event a second ago)."""
    return [a for a in compute_alerts(h, lock="live", process_alive=True, now=(h.last_event_t or 0) + 1)
            if a.severity is Severity.CRITICAL]


def row(rows, stage, metric):
    return next(r for r in rows if r.stage == stage and r.metric == metric)


STEPS_3 = list(range(20, 1501, 20))  # a Stage 3 run logging every 20 steps: 75 readings
N3 = len(STEPS_3)


def stage3_events(r_values, *, nan_at=None, end="completed"):
    loss = ramp(8.0, 5.0, N3)
    if nan_at is not None:
        loss[STEPS_3.index(nan_at)] = None
    evs = events(STEPS_3, loss=loss, R=r_values, u=wiggle(1.0, 0.3, N3), stage=3, max_steps=1500,
                 evals=[{"step": s, "val_ppl": p, "val_loss": 6.0, "val_ce": 6.0}
                        for s, p in zip(range(300, 1501, 300), (900.0, 700.0, 560.0, 480.0, 420.0))],
                 samples=[(s, PROSE if s >= 900 else FRAGMENTS) for s in range(300, 1501, 300)], end=end)
    if end is not None:
        evs[-1]["step"] = 1500
    return chronological(evs)


# R flat for the first 20% of the stage (15 readings, steps 20-300), then exploring Unformed -> Balance.
FLAT_THEN_MOVING = [0.035] * 15 + ramp(0.036, 0.42, N3 - 15)


def test_flat_R_for_the_first_fifth_raises_nothing_early_and_the_stage_is_judged_on_its_whole_trajectory():
    evs = stage3_events(FLAT_THEN_MOVING)
    seen_early = None
    for h in replay(evs):
        rows = full_matrix(h, 3)
        assert banner_rows(rows) == [], (h.last_step, banner_rows(rows))
        assert critical(h) == [], (h.last_step, critical(h))
        if h.last_step == 280 and h.run_end is None:
            seen_early = row(rows, 3, "R zones")
            a = assess_stage(h, 3)
            assert a.provisional and a.action is Action.WAIT
    # the moment (step 280 of 1500, 14 R readings): not "locked", a provisional Warning saying why
    assert seen_early is not None and seen_early.verdict is W and seen_early.provisional
    assert "moved only 0.0000 so far" in seen_early.reason and "14 readings, 19% of the stage's 1500 steps" in seen_early.reason
    assert "locked is called after >= 33% of the stage and >= 10 readings" in seen_early.reason
    assert "(so far: step 280 of 1500)" in seen_early.reason
    # at its end: judged on the whole trajectory, final
    final = assess_stage(h, 3)
    zones = row(final.rows, 3, "R zones")
    assert zones.verdict is H and not zones.provisional and "Unformed, Intimacy, Balance" in zones.reason
    assert "so far" not in zones.reason
    assert final.verdict is H and not final.provisional and final.action is Action.PROCEED


def test_R_flat_for_the_whole_stage_is_locked_only_once_a_third_of_the_stage_has_run():
    evs = stage3_events([0.035] * N3)
    verdicts, at_end = {}, []
    for h in replay(evs):
        if h.run_end is None and h.last_step in (280, 500, 1500):
            verdicts.setdefault(h.last_step, row(full_matrix(h, 3), 3, "R zones"))  # as the step event arrives
        if h.run_end is None and h.last_step == 1500:
            at_end.append(row(full_matrix(h, 3), 3, "R zones").provisional)
        assert critical(h) == []  # never critical mid-stage: "locked" is an end-of-stage criterion
    assert verdicts[280].verdict is W and verdicts[280].provisional
    # from a third of the stage on it is called locked, but still provisional: no banner, action WAIT
    assert verdicts[500].verdict is F and verdicts[500].provisional and "locked" in verdicts[500].reason
    assert "25 readings, 33% of the stage's 1500 steps" in verdicts[500].reason
    # step 1500 logged: still provisional until its eval and sample are in (written after the step), then final
    assert at_end == [True, True, False]
    final = row(full_matrix(h, 3), 3, "R zones")
    assert final.verdict is F and not final.provisional and "over 75 readings, 100% of the stage" in final.reason
    a = assess_stage(h, 3)
    assert a.verdict is F and not a.provisional and a.action is Action.STOP


def test_an_early_nan_still_alerts_at_once():
    evs = stage3_events(FLAT_THEN_MOVING, nan_at=200, end=None)
    evs = [e for e in evs if e["event"] in ("schema", "run_start") or e.get("step", 0) <= 200]
    h = next(replay(evs, chunk=len(evs)))
    rows = full_matrix(h, 3)
    loss = row(rows, 1, "Loss")
    assert loss.verdict is F and not loss.provisional and "NaN/inf at step 200" in loss.reason
    assert banner_rows(rows) == [loss]
    assert [a.code for a in critical(h)] == ["loss_nan"]
    a = assess_stage(h, 1)
    assert a.verdict is F and not a.provisional and a.action is Action.STOP  # a final Failure settles the stage
    assert assess_stage(h, 3).provisional  # Stage 3's own rows are still its verdict so far


def test_a_provisional_failure_waits_and_says_so_then_the_end_decides():
    h = history(stage=2, u=wiggle(1.0, 0.3, 10), R=wiggle(0.05, 0.01, 10), evals=[{"step": 100, "val_ppl": 2500.0}])
    a = assess_stage(h, 2)
    ppl = row(a.rows, 2, "Val PPL")
    assert ppl.verdict is F and ppl.provisional and "(so far: step 100 of 500)" in ppl.reason
    assert a.verdict is F and a.provisional and a.action is Action.WAIT
    assert "FAILURE so far" in a.summary and "provisional at step 100 of 500" in a.summary
    assert a.to_dict()["provisional"] is True and ppl.to_dict()["provisional"] is True
    h.apply({"event": "run_end", "t": 1e4, "status": "completed", "reason": "max_steps reached", "step": 500})
    a = assess_stage(h, 2)
    assert a.verdict is F and not a.provisional and a.action is Action.STOP and "so far" not in a.summary


@pytest.mark.parametrize("n,final", [(3, False), (10, False), (15, True)])
def test_u_at_a_clamp_is_immediate_once_it_rests_on_enough(n, final):
    # Stage 2 logging every 10 steps: n readings is n x 2% of the stage; the row looks at the newest third of them,
    # so 10 readings are 4 recent ones at the clamp (< clamp_min_readings 5), 15 are 5 (and 30% of the stage)
    h = history(stage=2, u=[0.1] * n)
    u = row(assess_stage(h, 2).rows, 2, "u_val")
    assert u.verdict is F and "hitting clamps" in u.reason
    assert u.provisional is (not final)  # >= clamp_min_readings (5) at the clamp and >= 10% of the stage


@pytest.mark.parametrize("loss,final", [
    (ramp(5.0, 8.0, 12), True),  # 12 readings over 24% of Stage 1, each third above the last: steadily
    (ramp(5.0, 8.0, 6), False),  # too few readings yet
    ([5.0] * 8 + [8.0] * 4, False),  # one jump at the end: rising, but not steadily (first third = middle third)
])
def test_loss_increasing_is_immediate_only_when_steady_and_on_enough_readings(loss, final):
    h = history(stage=1, max_steps=100, loss=loss, steps=[2 * (i + 1) for i in range(len(loss))])
    r = row(assess_stage(h, 1).rows, 1, "Loss")
    assert r.verdict is F and "increasing" in r.reason and r.provisional is (not final)


def test_u_below_the_floor_is_final_on_one_reading_at_any_stage():
    h = history(stage=1, max_steps=100, u=[0.5] * 4 + [-1.23], config={"monostable": False})
    a = assess_stage(h, 1)
    floor = row(a.rows, 1, U_FLOOR)
    assert floor.verdict is F and not floor.provisional
    assert "the bistability constraint is broken (u = -1.23 at step 50)" in floor.reason
    assert a.verdict is F and not a.provisional
    assert [x.code for x in critical(h)] == ["u_floor_broken"]


def _rows_seen(evs, stage, chunk=1):
    """Replay; return (final rows, every final Failure seen mid-run as (stage, metric), every critical code)."""
    failures, alerts = set(), set()
    for h in replay(evs, chunk):
        st = infer_stage(h) if stage is None else stage
        rows = full_matrix(h, st)
        if h.run_end is None:
            failures |= {(r.stage, r.metric) for r in banner_rows(rows)}
            alerts |= {a.code for a in critical(h)}
    st = infer_stage(h) if stage is None else stage
    return full_matrix(h, st), failures, alerts


def _bumpy_stage2():
    """A Stage 2 run that looks bad early (val PPL 2500 at step 100, R near 0) and ends healthy."""
    n = 50
    return chronological(events(list(range(10, 501, 10)), loss=ramp(8.0, 5.5, n), u=wiggle(1.0, 0.3, n),
                                R=[0.0005] * 12 + ramp(0.002, 0.06, n - 12), stage=2, max_steps=500,
                                evals=[{"step": s, "val_ppl": p} for s, p in ((100, 2500.0), (300, 1400.0), (500, 800.0))],
                                end="completed"))


def _long_unnamed_run():
    """Ours without --stage, 10,000 steps in one go (the reference's way), shaped like the published run."""
    steps = list(range(20, 10001, 20))
    n = len(steps)
    r = [0.024 + 0.434 * (s / 10000) ** 0.886 for s in steps]
    u = [max(0.105, 0.475 - 0.37 * s / 2000) + (0.01 if i % 2 else 0.0) for i, s in enumerate(steps)]
    return chronological(events(steps, loss=ramp(10.0, 6.5, n), R=r, u=u, stage=None, max_steps=10000,
                                evals=[{"step": s, "val_ppl": 2000.0 * (500 / s) ** 0.6, "val_R": r[steps.index(s)]}
                                       for s in range(500, 10001, 500)], end="completed"))


REPLAYS = {
    "stage3 flat then moving": (lambda: stage3_events(FLAT_THEN_MOVING), 3, 1),
    "stage3 locked": (lambda: stage3_events([0.035] * N3), 3, 1),
    "stage2 bad start, good end": (_bumpy_stage2, 2, 1),
    "long unnamed run": (_long_unnamed_run, None, 7),
}


@pytest.mark.parametrize("name", list(REPLAYS))
def test_replay_no_final_failure_or_critical_alert_that_the_end_does_not_confirm(name):
    make, stage, chunk = REPLAYS[name]
    final, failures, alerts = _rows_seen(make(), stage, chunk)
    confirmed = {(r.stage, r.metric) for r in final if r.verdict is F}
    assert not {f for f in failures - confirmed if f[1] not in IMMEDIATE_ROWS}, failures - confirmed
    assert alerts <= IMMEDIATE_ALERTS
    assert failures <= confirmed  # in these runs nothing immediate happened either: nothing was raised early
    assert not alerts
    assert all(r.provisional is False for r in final if r.verdict is not P)


@pytest.mark.parametrize("name", ["finished", "crashed"])
def test_replay_of_the_reference_trainers_own_logs(name, tmp_path):
    lines = (FIXTURES / name / "training.log").read_text(encoding="utf-8").splitlines()
    evs = parse_legacy_lines(lines, tmp_path / name)
    final, failures, alerts = _rows_seen(evs, None)
    confirmed = {(r.stage, r.metric) for r in final if r.verdict is F}
    assert failures <= confirmed and not alerts
    # 120 / 140 steps: Stage 1 judged at step 100 (final), Stage 2 only so far
    assert row(final, 1, "Loss").verdict is H and not row(final, 1, "Loss").provisional
    assert all(r.provisional for r in final if r.stage >= 2)
    assert all(r.verdict is P and "not reached" in r.reason for r in final if r.stage >= 3)


def test_a_stage_is_final_once_its_target_steps_last_readings_are_in_even_before_run_end():
    h = history(stage=2, steps=list(range(10, 501, 10)), u=wiggle(1.0, 0.3, 50), R=wiggle(0.05, 0.01, 50),
                evals=[{"step": 400, "val_ppl": 800.0}])
    assert row(assess_stage(h, 2).rows, 2, "Val PPL").provisional  # step 500 logged, its eval not yet
    h.apply({"event": "eval", "t": 2e3, "step": 500, "val_ppl": 2500.0})
    a = assess_stage(h, 2)
    ppl = row(a.rows, 2, "Val PPL")
    assert ppl.verdict is F and not ppl.provisional and "2500.0 at step 500" in ppl.reason
    assert a.verdict is F and not a.provisional and a.action is Action.STOP
