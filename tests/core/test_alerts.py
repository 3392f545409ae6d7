"""Alerts beyond the matrix, fed with synthetic histories and machine facts (the rules are pure)."""

from __future__ import annotations

import pytest

from kssm_core.runbook.alerts import checkpoint_need, compute_alerts
from kssm_core.runbook.criteria import Criteria
from kssm_core.runfolder.system import SystemFacts, gather
from kssm_core.runbook.verdicts import Severity
from runbook_synth import history

N = 20
GB = 1_000_000_000


def codes(alerts):
    return {a.code: a for a in alerts}


@pytest.mark.parametrize("tail,code,sev,evidence", [
    ([5000.0, 5000.0], "grad_exploding", Severity.CRITICAL, "newest 2 readings"),  # grad_min_readings in a row
    ([2.0, 5000.0], "grad_exploding", Severity.WARNING, "one reading so far"),  # one averaged spike: not critical
    ([0.0001, 0.0001], "grad_vanishing", Severity.WARNING, "newest 2 readings"),
    ([2.0, 0.0001], None, None, None),  # one tiny reading is nothing yet
])
def test_grad_norm_needs_its_evidence(tail, code, sev, evidence):
    a = codes(compute_alerts(history(grad=[2.0] * (N - 2) + tail, end="completed"), now=1e9))
    if code is None:
        assert not {"grad_exploding", "grad_vanishing"} & set(a)
        return
    assert a[code].severity is sev and f"{tail[-1]:.4g}"[:4] in a[code].message and evidence in a[code].message


def test_healthy_grad_and_reg_raise_nothing():
    assert compute_alerts(history(grad=[2.0] * N, reg=[0.3] * N, end="completed"), now=1e9) == []


@pytest.mark.parametrize("reg,code", [(1.7, "reg_high"), (-0.2, "reg_negative")])
def test_reg_loss(reg, code):
    a = codes(compute_alerts(history(reg=[0.3] * (N - 1) + [reg], end="completed"), now=1e9))
    assert code in a and f"{reg:.4f}" in a[code].message


def test_stalled_when_alive_but_silent():
    h = history(loss=[5.0] * N, dt=1.0)  # steps every 1 s, heartbeat every 5 s (config)
    last = h.last_event_t
    assert "stalled" not in codes(compute_alerts(h, lock="live", now=last + 2))
    a = codes(compute_alerts(h, lock="live", now=last + 600))
    assert a["stalled"].severity is Severity.CRITICAL  # no event at all: frozen
    # heartbeats keep coming but no step for a long time: stalled in the loop
    h.apply({"event": "heartbeat", "t": last + 590, "step": N * 10, "phase": "data", "micro": 0, "accum": 1})
    a = codes(compute_alerts(h, lock="live", now=last + 600))
    assert a["stalled"].severity is Severity.WARNING and "phase data" in a["stalled"].message
    assert "stalled" not in codes(compute_alerts(h, lock="stale", now=last + 600))  # a dead one is crashed instead


def test_crashed_needs_no_run_end_and_no_live_process():
    h = history(loss=[5.0] * N)
    assert codes(compute_alerts(h, lock="stale", now=1e9))["crashed"].remedy.startswith("kssm train")
    assert "crashed" in codes(compute_alerts(h, lock="none", now=1e9))
    assert "crashed" not in codes(compute_alerts(h, lock="live", now=h.last_event_t + 1))
    assert "crashed" not in codes(compute_alerts(history(loss=[5.0] * N, end="interrupted"), lock="none", now=1e9))


def _with_checkpoint(nbytes, step=250, max_steps=1000):
    h = history(loss=[5.0] * 25, steps=list(range(10, 260, 10)), max_steps=max_steps,
                config={"save_interval": 250, "keep_checkpoints": 3})
    h.apply({"event": "checkpoint", "t": 2000, "step": step, "path": f"checkpoint_{step}.pt", "bytes": nbytes, "best": False})
    return h


def test_checkpoint_need_counts_the_saves_still_to_come():
    need = checkpoint_need(_with_checkpoint(180_000_000))
    # after step 250 of 1000 with save_interval 250: saves at 500 (a stage target), 750, 1000
    assert need.remaining_saves == 3
    assert need.files_kept == 3  # 500 and 1000 are milestones, 750 is periodic (keep 3)
    assert need.bytes_needed == (3 + 1) * 180_000_000


def test_disk_too_small_for_the_remaining_checkpoints():
    h = _with_checkpoint(180_000_000)
    facts = SystemFacts(disk_free_bytes=500_000_000, disk_total_bytes=10 * GB, mem_available_bytes=8 * GB,
                        mem_total_bytes=16 * GB)
    a = codes(compute_alerts(h, lock="live", facts=facts, now=h.last_event_t + 1))
    assert a["disk_low"].severity is Severity.WARNING and "720 MB" in a["disk_low"].message
    facts.disk_free_bytes = 100_000_000  # less than one checkpoint
    assert codes(compute_alerts(h, lock="live", facts=facts, now=h.last_event_t + 1))["disk_low"].severity is Severity.CRITICAL
    facts.disk_free_bytes = 5 * GB
    assert "disk_low" not in codes(compute_alerts(h, lock="live", facts=facts, now=h.last_event_t + 1))


@pytest.mark.parametrize("avail,sev", [(int(1.2 * GB), Severity.WARNING), (int(0.4 * GB), Severity.CRITICAL), (8 * GB, None)])
def test_memory_pressure(avail, sev):
    facts = SystemFacts(None, None, avail, 16 * GB)
    a = codes(compute_alerts(history(end="completed"), facts=facts, now=1e9))
    assert (a["memory_pressure"].severity if "memory_pressure" in a else None) is sev


def test_thresholds_come_from_criteria():
    h = history(grad=[2.0] * (N - 1) + [50.0], end="completed")
    assert compute_alerts(h, now=1e9) == []
    assert "grad_exploding" in codes(compute_alerts(h, now=1e9, criteria=Criteria(grad_exploding=20.0)))


def test_system_facts_are_real(tmp_path):
    import os

    f = gather(tmp_path, os.getpid())
    assert f.disk_free_bytes > 0 and f.mem_total_bytes >= f.mem_available_bytes > 0
    assert f.process.alive and f.process.rss_bytes > 0 and f.process.cpu_seconds > 0
    assert gather(tmp_path / "not" / "yet", None).disk_free_bytes > 0  # nearest existing parent


def test_checkpoint_size_is_estimated_before_the_first_save():
    h = history(loss=[5.0] * 5, max_steps=1000, config={"save_interval": 250})
    h.run_start["parameters"] = 1_000_000
    need = checkpoint_need(h)
    # after step 50: 100 (a stage target: always saved), 250, 500, 750, 1000
    assert need.estimated and need.bytes_each == 13_000_000 and need.remaining_saves == 5


@pytest.mark.parametrize("u,sev", [(0.8, Severity.CRITICAL), (4.0, Severity.WARNING)])
def test_negative_reg_is_critical_unless_mean_u_above_1_explains_it(u, sev):
    # reg = l1 / (mean|delta| + eps) + l2 * -log(mean u): with mean u = 4 the log term alone is -0.69.
    a = codes(compute_alerts(history(reg=[0.3] * (N - 1) + [-0.2], u=[u] * N, end="completed"), now=1e9))
    assert a["reg_negative"].severity is sev
    assert ("explained by mean u" in a["reg_negative"].message) is (sev is Severity.WARNING)
