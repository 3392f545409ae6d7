"""The `kssm` command line: the runbook's flags, stage mapping, defaults, bad arguments."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kssm_testkit import REPO, child_env
from kssm_core.cli import build_parser, main
from kssm_core.commands.train import config_from_args

RUNBOOK_FLAGS = ("--max-steps", "--output-dir", "--resume", "--learning-rate", "--lambda-reg", "--batch-size")
ISSUE_FLAGS = ("--stage", "--preset", "--corpus", "--seed", "--device", "--grad-accum", "--seq-len",
               "--log-interval", "--eval-interval", "--save-interval", "--init-from")


def parse(*argv: str):
    args = build_parser().parse_args(["train", *argv])
    return config_from_args(args)


def test_console_script_and_module_both_run():
    exe = shutil.which("kssm", path=str(Path(sys.executable).parent))
    assert exe, "the `kssm` console script is not installed beside this Python"
    for cmd in ([exe, "--help"], [sys.executable, "-m", "kssm_core", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=60)
        assert r.returncode == 0
        for sub in ("train", "data", "unlock", "clean"):
            assert sub in r.stdout


def test_train_accepts_every_flag_of_the_runbook_and_the_issue(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in RUNBOOK_FLAGS + ISSUE_FLAGS:
        assert flag in text, flag


@pytest.mark.parametrize("n,steps,folder", [(1, 100, "stage1"), (2, 500, "stage2"), (3, 1500, "stage3"),
                                            (4, 5000, "stage4"), (5, 10000, "final")])
def test_stage_maps_to_the_runbook_steps_and_folder(n, steps, folder):
    cfg, _ = parse("--stage", str(n))
    assert cfg.max_steps == steps and cfg.stage == n
    assert Path(cfg.output_dir) == Path("results") / folder


def test_runbook_style_max_steps_is_recognised_as_its_stage():
    cfg, _ = parse("--max-steps", "1500", "--output-dir", "results/mine")
    assert cfg.stage == 3 and cfg.output_dir == "results/mine"
    cfg, _ = parse("--max-steps", "77")
    assert cfg.stage is None and cfg.max_steps == 77


def test_defaults_follow_the_runbook():
    cfg, explicit = parse("--stage", "1")
    r = cfg.resolve()
    assert r.learning_rate == 0.001 and r.lambda_reg == 0.01
    assert r.warmup_steps <= 10  # a 100-step stage warms up quickly
    assert "learning_rate" not in explicit  # defaults are not overrides on --resume


def test_explicit_flags_are_overrides():
    cfg, explicit = parse("--stage", "2", "--learning-rate", "0.0005", "--lambda-reg", "0.1", "--resume")
    assert cfg.learning_rate == 0.0005 and cfg.lambda_reg == 0.1 and cfg.resume is True
    assert explicit["learning_rate"] == 0.0005 and explicit["lambda_reg"] == 0.1


@pytest.mark.parametrize("argv,needle", [
    (["--max-steps", "0"], "--max-steps"),
    (["--learning-rate", "-1"], "--learning-rate"),
    (["--seq-len", "5000"], "position table"),
    (["--preset", "huge"], "invalid choice"),
    (["--stage", "9"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_a_short_message(argv, needle, capsys, tmp_path):
    try:
        rc = main(["train", "--output-dir", str(tmp_path / "run"), *argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err
    assert not (tmp_path / "run").exists(), "a refused start must not create the run folder"


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2


def test_quiet_is_not_a_config_field():
    args = build_parser().parse_args(["train", "--quiet"])
    assert isinstance(args, argparse.Namespace)
    cfg, explicit = config_from_args(args)
    assert "quiet" not in explicit


def test_resume_without_max_steps_does_not_override_the_checkpoints_target():
    # `kssm train --resume --output-dir results/stage2` must continue to 500, not silently to the default 100.
    _, overrides = parse("--resume", "--output-dir", "results/stage2")
    assert "max_steps" not in overrides
    _, overrides = parse("--stage", "2", "--resume")
    assert overrides["max_steps"] == 500
    _, overrides = parse("--resume", "--max-steps", "1500", "--output-dir", "x")
    assert overrides["max_steps"] == 1500
