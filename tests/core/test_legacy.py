"""Runs of the original K-SSM scripts: their text training.log is read and judged like an events.jsonl."""

from __future__ import annotations

import math
import shutil

import pytest

from kssm_core.runfolder.history import RunHistory
from kssm_core.runfolder.legacy import parse_legacy_lines, read_legacy
from kssm_core.runbook.status import run_status

REFERENCE_LOG = """\
K-SSM v3 training (reference script)
Max steps: 10000
  step |   total |      ce |     reg | R      |   u_val | grad_norm
    20 |  10.412 |  10.398 |  1.3521 | 0.0241 |   0.475 |    3.214
    40 |   9.877 |   9.866 |  1.1005 | 0.0302 |   0.401 |    2.871
    60 |     nan |     nan |  0.9001 | 0.0310 |   0.390 |  1234.500
some other chatter | not | a | row
============================================================
EVALUATION @ Step 500
  Val Loss: 6.5012
  Val Perplexity: 315.91
  Val R: 0.2957
  Val u_val: 0.126
============================================================
   520 |   6.401 |   6.390 |  0.1100 | 0.3001 |   0.118 |    1.500
"""


def fold(records) -> RunHistory:
    h = RunHistory()
    h.extend(records)
    return h


def test_reference_table_and_eval_blocks(tmp_path):
    h = fold(parse_legacy_lines(REFERENCE_LOG.splitlines(), tmp_path / "final"))
    assert list(h.steps.steps) == [20, 40, 60, 520]
    assert h.steps.values("loss")[0] == pytest.approx(10.412)
    assert math.isnan(h.steps.values("loss")[2])  # "nan" in the table is NaN
    assert h.steps.values("grad_norm")[2] == pytest.approx(1234.5)
    assert h.steps.values("u_val")[-1] == pytest.approx(0.118)
    assert list(h.evals.steps) == [500]
    assert h.evals.last("val_ppl") == pytest.approx(315.91)
    assert h.evals.last("val_R") == pytest.approx(0.2957)
    assert h.evals.last("val_ce") is None or h.evals.last("val_ce") == pytest.approx(math.log(315.91))
    assert h.max_steps == 10000
    assert (h.run_start or {}).get("stage") == 5  # folder name "final"


def test_our_prefixed_lines_are_read_too(tmp_path):
    lines = [
        "[2026-01-30 10:00:00] K-SSM v3 | 1,234 parameters | device cpu | steps 0 -> 500 | batch 8x1x128 | lr 0.0004 | lambda_reg 0.02",
        "[2026-01-30 10:00:01]   step |   total |      ce |     reg | R      |   u_val | grad_norm",
        "[2026-01-30 10:00:02]     10 |   8.000 |   7.990 |  0.5000 | 0.0500 |   1.000 |    2.000",
        "[2026-01-30 10:00:12]     20 |   7.000 |   6.990 |  0.5000 | 0.0600 |   1.000 |    2.000",
        "[2026-01-30 10:00:13] EVALUATION @ Step 20",
        "[2026-01-30 10:00:13]   Val Loss: 7.1000",
        "[2026-01-30 10:00:13]   Val Perplexity: 1211.97",
        "[2026-01-30 10:00:14]   Sample: The 'cat sat'",
        "[2026-01-30 10:00:15] RUN END: completed (max_steps reached)",
    ]
    h = fold(parse_legacy_lines(lines, tmp_path / "stage2"))
    assert list(h.steps.steps) == [10, 20] and h.max_steps == 500
    assert h.config["learning_rate"] == pytest.approx(0.0004) and h.config["lambda_reg"] == pytest.approx(0.02)
    assert h.evals.last("val_loss") == pytest.approx(7.1) and h.evals.last("val_ppl") == pytest.approx(1211.97)
    assert h.samples[-1]["text"] == "The 'cat sat'"
    assert h.run_end["status"] == "completed"
    assert h.step_times[-1][0] - h.step_times[0][0] == pytest.approx(10.0)  # timestamps were read


def test_garbage_never_raises(tmp_path):
    junk = ["", "|||||", "EVALUATION @ Step", "  Val Perplexity: nan", "\x00\xff", "99999999999999999999 | 1 | 2",
            "[2026-99-99 99:99:99]     10 |   8.000 |   7.990 |  0.5000 | 0.0500 |   1.000 |    2.000"]
    h = fold(parse_legacy_lines(junk, tmp_path))
    assert list(h.steps.steps) == [10]


def test_a_legacy_folder_is_judged_by_kssm_status(tmp_path, monkeypatch):
    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "final"
    d.mkdir()
    (d / "training.log").write_text(REFERENCE_LOG)
    s = run_status(d)
    assert s.source == "legacy" and s.stage == 5 and s.step == 520 and s.target == 10000
    assert s.state == "unknown"  # no end line, no lock: the log just stops (never "crashed")
    assert s.recommendation.code == "unknown" and "the log stops at step 520" in s.recommendation.text
    assert s.exit_code == 1
    # judged by where it got to (issue 13): Stage 5's gates wait for its milestone; Stage 2 was judged at step 500
    gold = next(r for r in s.assessment.rows if r.metric == "Goldilocks")
    assert gold.verdict.value == "pending" and "not reached" in gold.reason and gold.provisional
    ppl2 = next(r for r in s.matrix if r.stage == 2 and r.metric == "Val PPL")
    assert ppl2.verdict.value == "healthy" and "315.9 at step 500" in ppl2.reason and not ppl2.provisional
    ppl3 = next(r for r in s.matrix if r.stage == 3 and r.metric == "Val PPL")
    assert ppl3.verdict.value == "healthy" and ppl3.provisional and "step 520 of 1500" in ppl3.reason
    assert not any(a.code == "grad_exploding" for a in s.alerts)  # the newest grad norm (1.5) is healthy


@pytest.mark.slow
def test_our_trainers_text_log_matches_its_events(trained_run, tmp_path):
    """The same run read two ways (events.jsonl and training.log) gives the same series, to print precision."""
    from kssm_core.runfolder.runlog import read_all

    records, _ = read_all(trained_run / "events.jsonl")
    ev = fold(records)
    lg = fold(read_legacy(trained_run))
    assert list(lg.steps.steps) == list(ev.steps.steps) and len(ev.steps) > 0
    for name, digits in (("loss", 3), ("ce", 3), ("reg", 4), ("R", 4), ("u_val", 3)):
        for a, b in zip(ev.steps.values(name), lg.steps.values(name)):
            assert b == pytest.approx(a, abs=0.6 * 10 ** -digits)
    assert list(lg.evals.steps) == list(ev.evals.steps)
    for a, b in zip(ev.evals.values("val_ppl"), lg.evals.values("val_ppl")):
        assert b == pytest.approx(a, abs=0.006)
    assert lg.max_steps == ev.max_steps and lg.run_end["status"] == ev.run_end["status"]
    only_log = tmp_path / "copy"
    shutil.copytree(trained_run, only_log)
    (only_log / "events.jsonl").unlink()
    assert run_status(only_log, use_cache=False).source == "legacy"


def test_legacy_end_lines(tmp_path):
    """The reference trainer's own end: "Training Finished." completes; a traceback at the end fails."""
    rows = ["     10 |   8.000 |   7.990 |  0.5000 | 0.0500 |   1.000 |    2.000",
            "     20 |   7.000 |   6.990 |  0.5000 | 0.0500 |   1.000 |    2.000"]
    done = fold(parse_legacy_lines(rows + ["", "Training Finished.", "\U0001f513 Released lock"], tmp_path))
    assert done.run_end["status"] == "completed" and done.run_end["reason"] == "Training Finished."
    crash = ["Traceback (most recent call last):", '  File "train.py", line 3, in <module>',
             "RuntimeError: CUDA out of memory"]
    failed = fold(parse_legacy_lines(rows + crash, tmp_path))
    assert failed.run_end["status"] == "failed" and failed.run_end["reason"] == "RuntimeError: CUDA out of memory"
    recovered = fold(parse_legacy_lines(rows[:1] + crash + rows[1:], tmp_path))  # it went on training after it
    assert recovered.run_end is None
    assert fold(parse_legacy_lines(rows, tmp_path)).run_end is None  # a log that just stops has no end
