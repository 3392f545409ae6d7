"""The failure playbook: every remedy is a command the real `kssm` parser accepts, computed from the run's own
settings, and it moves in the right direction (learning rate down, lambda_reg up, another seed, same target)."""

from __future__ import annotations

import shlex

import pytest

from kssm_core.runbook import playbook
from kssm_core.cli import build_parser
from kssm_core.runbook.matrix import assess_stage
from kssm_core.runbook.verdicts import MatrixRow, Verdict
from runbook_synth import history, ramp, wiggle

N = 30


def parse(cmd: str):
    """The remedy as the real CLI reads it (proves it is pasteable)."""
    argv = shlex.split(cmd)
    assert argv[0] == "kssm"
    return build_parser().parse_args(argv[1:])


def remedy(h, stage, metric, run_dir="runs/x"):
    r = next(r for r in assess_stage(h, stage, run_dir=run_dir).rows if r.metric == metric)
    assert r.verdict in (Verdict.WARNING, Verdict.FAILURE), r.reason
    return r


@pytest.mark.parametrize("lr", [1e-3, 4e-4, 5e-5, 2.5e-2])
def test_nan_loss_lowers_the_runs_own_learning_rate(lr):
    h = history(stage=1, max_steps=100, loss=ramp(8, 6, N - 1) + [None], config={"learning_rate": lr})
    r = remedy(h, 1, "Loss")
    args = parse(r.remedy)
    assert args.learning_rate < lr and args.learning_rate == pytest.approx(lr / 10, rel=0.01)
    assert args.stage == 1 and args.output_dir == "runs/x" and not args.resume


def test_runbook_example_values():
    assert playbook.lower_learning_rate(0.001) == 0.0001  # runbook: --learning-rate 0.0001 (default 0.001)
    assert playbook.raise_lambda_reg(0.01) == 0.1  # runbook: --lambda-reg 0.1 (default 0.01)
    assert playbook.lower_learning_rate(0.001, factor=2) == 0.0005  # runbook stage 3: --learning-rate 0.0005


@pytest.mark.parametrize("lam", [0.0, 0.001, 0.01, 0.1, 0.5, None, "junk"])
def test_u_clamps_raise_the_runs_own_lambda_reg(lam):
    h = history(stage=2, u=[0.1] * N, config={"lambda_reg": lam})
    args = parse(remedy(h, 2, "u_val").remedy)
    before = lam if isinstance(lam, float) else 0.01
    assert args.lambda_reg > before and args.lambda_reg >= 0.1


def test_val_ppl_over_2000_checks_the_runs_own_data():
    h = history(stage=2, evals=[{"step": 500, "val_ppl": 3000.0}], config={"corpus": "my corpus.txt", "data_dir": "/d c"})
    r = remedy(h, 2, "Val PPL")
    args = parse(r.remedy)
    assert args.command == "data" and args.data_command == "check"
    assert args.corpus == "my corpus.txt" and args.data_dir == "/d c"  # quoting survives


@pytest.mark.parametrize("stage,kw", [(2, dict(R=[0.0001] * N)), (3, dict(R=[0.2] * N)),
                                      (4, dict(R=wiggle(0.2, 0.05, N)))])
def test_r_not_exploring_restarts_with_another_seed(stage, kw):
    h = history(stage=stage, max_steps={2: 500, 3: 1500, 4: 5000}[stage], config={"seed": 7}, **kw)
    r = remedy(h, stage, "R" if stage == 2 else "R zones")
    args = parse(r.remedy)
    assert args.seed == 8 and args.stage == stage and args.max_steps is None


def test_plateau_in_stage3_halves_the_learning_rate_and_keeps_other_settings():
    h = history(stage=3, max_steps=1500, evals=[{"step": 1500, "val_ppl": 800.0}],
                config={"learning_rate": 4e-4, "preset": "small", "corpus": "c.jsonl"})
    args = parse(remedy(h, 3, "Val PPL").remedy)
    assert args.learning_rate == pytest.approx(2e-4)
    assert args.preset == "small" and args.corpus == "c.jsonl" and args.stage == 3


def test_crashed_resumes_to_the_runs_own_target():
    h = history(stage=None, max_steps=777, loss=ramp(8, 6, N))
    args = parse(playbook.resume_command(h, "results/odd dir"))
    assert args.resume and args.max_steps == 777 and args.output_dir == "results/odd dir"


def test_stale_lock_unlocks_that_folder():
    args = parse(playbook.unlock_command("results/stage 2"))
    assert args.command == "unlock" and args.run_dir == "results/stage 2"


def test_goldilocks_warning_trains_longer_than_before():
    h = history(stage=5, max_steps=10000, evals=[{"step": 10000, "val_R": 0.25}])
    args = parse(remedy(h, 5, "Goldilocks").remedy)
    assert args.resume and args.max_steps > 10000


def test_healthy_and_pending_rows_get_no_remedy():
    h = history(stage=2)
    for v in (Verdict.HEALTHY, Verdict.PENDING):
        assert playbook.remedy_for(MatrixRow(2, "u_val", v, "x"), h) == (None, None)
