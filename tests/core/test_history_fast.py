"""RunHistory.extend's columnar fast path for runs of step events gives exactly what apply() one by one gives."""

from __future__ import annotations

import json
import math
import random

from kssm_core.runfolder.history import RunHistory

ODD_VALUES = [None, "3.5", "oops", True, float("nan"), 7, -1.0, 1e300]


def trajectory(seed: int) -> list[dict]:
    rnd = random.Random(seed)
    out = [{"event": "run_start", "t": 0.0, "config": {}, "max_steps": 10_000, "start_step": 0}]
    step, t = 0, 0.0
    for _ in range(3000):
        t += rnd.random()
        roll = rnd.random()
        if roll < 0.80:
            step += rnd.choice((1, 1, 1, 2, 5))
            rec = {"event": "step", "t": t, "step": step, "loss": rnd.random() * 8, "ce": rnd.random() * 8,
                   "R": rnd.random(), "u_val": rnd.random() * 3, "grad_norm": rnd.random(), "lr": 1e-3,
                   "tokens_per_s": 1000}
            if rnd.random() < 0.03:  # damaged values now and then
                rec[rnd.choice(("loss", "R", "u_val", "t"))] = rnd.choice(ODD_VALUES)
            if rnd.random() < 0.01:
                rec["step"] = rnd.choice(("12", -3, None, 1.5, step - 50))  # odd or backwards steps
            out.append(rec)
        elif roll < 0.85:
            out.append({"event": "eval", "t": t, "step": step, "val_loss": 5.0, "val_ppl": 150.0})
        elif roll < 0.87:
            step = max(0, step - rnd.randint(1, 40))  # a resume from an earlier checkpoint
            out.append({"event": "run_start", "t": t, "config": {}, "max_steps": 10_000, "start_step": step})
        else:
            out.append({"event": "heartbeat", "t": t, "step": step, "phase": "train"})
    return out


def state(h: RunHistory) -> str:
    d = h.to_state()
    return json.dumps(d, sort_keys=True, default=str)


def test_fast_path_equals_one_by_one():
    for seed in range(6):
        recs = trajectory(seed)
        slow = RunHistory()
        for r in recs:
            slow.apply(r)
        fast = RunHistory()
        fast.extend(recs)
        assert state(fast) == state(slow), seed
        assert fast.malformed_values == slow.malformed_values and fast.events == slow.events


def test_a_nan_time_first_does_not_hide_the_newest_time():
    recs = [{"event": "step", "t": float("nan") if i == 0 else float(i), "step": i + 1, "loss": 1.0} for i in range(20)]
    fast, slow = RunHistory(), RunHistory()
    fast.extend(recs)
    for r in recs:
        slow.apply(r)
    assert fast.last_event_t == slow.last_event_t == 19.0 and list(fast.step_times) == list(slow.step_times)


def test_fast_path_keeps_nan_and_counts_strings():
    recs = [{"event": "step", "t": float(i), "step": i + 1, "loss": None if i == 3 else 1.0, "R": "0.5"}
            for i in range(20)]
    h = RunHistory()
    h.extend(recs)
    assert math.isnan(h.steps.values("loss")[3]) and h.steps.values("R")[0] == 0.5
    assert h.malformed_values == 20 and list(h.steps.steps) == list(range(1, 21))
