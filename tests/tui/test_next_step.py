"""assess.next_step: kssm status's advice with the cockpit key that does it, and only where that key would."""

from __future__ import annotations

import pytest

from kssm_tui.labels import current_stage, next_step

CLEAR = "ALL CLEAR: safe to start: kssm train --stage 1 --output-dir results/stage1"
PASSED = "COMPLETED stage 2 (healthy): ALL CLEAR: safe to start stage 3: kssm train --stage 3"


@pytest.mark.parametrize("code,text,shown,current,expect", [
    ("all_clear", CLEAR, 1, None, "press n to start Stage 1 ("),
    ("all_clear", CLEAR, 3, 2, "ALL CLEAR"),  # n would start stage 3 only if stage 2 passed: no promise
    ("all_clear", CLEAR, 5, 3, "not reached yet: Stage 4 comes first"),  # stage 5 is two stages away
    ("completed", PASSED, 2, 2, "press n to start Stage 3 ("),
    ("completed", PASSED, 2, 4, "COMPLETED"),  # an older stage on screen: n acts on stage 4, not 2
    ("crashed", "CRASHED at step 40: kssm train --resume", 2, 2, "press r to resume"),
    ("interrupted", "INTERRUPTED at step 40: resume with x", 3, 1, "press r to resume"),
    ("stale_lock", "STALE LOCK (PID 9 is not running): kssm unlock results/stage1", 1, 1, "press u to clear"),
    ("failed", "FAILED TO START (corpus not found): check --corpus", 1, 1, "FAILED TO START"),
])
def test_the_key_is_named_only_when_it_does_what_the_advice_says(code, text, shown, current, expect):
    assert next_step(code, text, shown, current, readonly=False, passed=True).startswith(expect)


def test_n_is_not_offered_for_a_completed_stage_that_did_not_pass():
    warned = "COMPLETED stage 2, which has warnings (Stage 2: WARNING ...): kssm train ..."
    assert next_step("completed", warned, 2, 2, readonly=False, passed=False) == warned


def test_read_only_names_no_key():
    for code in ("all_clear", "crashed", "stale_lock"):
        assert next_step(code, "advice", 1, None, readonly=True) == "advice"


def test_current_stage_is_the_running_one_else_the_newest_started():
    assert current_stage({1: "not started", 2: "not started"}) is None
    assert current_stage({1: "passed", 2: "crashed", 3: "not started"}) == 2
    assert current_stage({1: "passed", 2: "running", 3: "failed"}) == 2


def test_a_run_completed_without_its_final_checkpoint_is_not_passed(tmp_path):
    from kssm_core.runbook.judge import judge
    from kssm_core.runbook.probe import probe
    from kssm_core.runfolder.history import RunHistory
    from kssm_tui.labels import plan_label

    h = RunHistory()
    h.extend([{"event": "run_start", "t": 1.0, "stage": 1, "max_steps": 100, "start_step": 0},
              {"event": "run_end", "t": 2.0, "status": "completed", "reason": "max_steps reached", "step": 100,
               "final_checkpoint": False}])
    s = judge(h, probe(tmp_path, h), run_dir=tmp_path, source="events")
    assert plan_label(s) == "warning" and "without its final checkpoint" in s.state_reason
    h.run_end = dict(h.run_end, final_checkpoint=True)
    s = judge(h, probe(tmp_path, h), run_dir=tmp_path, source="events")
    assert plan_label(s) != "warning" and s.recommendation.code == "completed"

