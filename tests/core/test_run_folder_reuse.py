"""A run folder used twice: --resume before the first checkpoint keeps --init-from, a fresh start moves the
earlier run to previous/<UTC time>/, and a run whose final checkpoint was skipped (disk low) says so."""

from __future__ import annotations

import json

import pytest

from kssm_testkit import read_events, run_kssm, tiny_config, train_args
from kssm_core.training import checkpoint as ckpt
from kssm_core.training.archive import ARCHIVE_DIR, archive_previous_run
from kssm_core.runfolder.cleaning import plan_clean
from kssm_core.training.checkpoint import checkpoint_files, load_checkpoint
from kssm_core.training.saving import DISK_MARGIN_BYTES
from kssm_core.runbook.status import run_status
from kssm_core.training.trainer import EXIT_COMPLETED, Trainer


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))


def warnings(run_dir, code):
    return [e for e in read_events(run_dir) if e["event"] == "warning" and e["code"] == code]


def starts(run_dir):
    return [e for e in read_events(run_dir) if e["event"] == "run_start"]


# ---- 1. --resume before the first checkpoint ------------------------------------------------------------


@pytest.mark.slow
def test_resume_before_any_checkpoint_starts_over_from_the_original_init_from(trained_run, tmp_path, data_dir):
    init = str(trained_run / "best_model.pt")
    out = tmp_path / "stage2"
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "1", "--init-from", init,
                             "--learning-rate", "0.0003", "--lambda-reg", "0.05", "--seed", "7"))
    assert r.returncode == 0, r.stderr
    for p in out.glob("*.pt"):  # as if SIGKILLed before its first checkpoint
        p.unlink()
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "2", "--resume"))
    assert r.returncode == 0, r.stderr
    first, last = starts(out)[0], starts(out)[-1]
    assert last["resumed_from"] is None and last["start_step"] == 0
    assert last["config"]["init_from"] == init  # not random weights
    for key in ("learning_rate", "lambda_reg", "seed", "stage", "preset"):  # nor default settings
        assert last["config"][key] == first["config"][key], key
    assert last["config"]["max_steps"] == 2  # what was typed on the resume still applies
    (w,) = warnings(out, "nothing_to_resume")
    assert f"no checkpoint yet: starting over with the run's original settings from the original --init-from {init}" in w["advice"]
    assert "starting over with the run's original settings" in (out / "training.log").read_text()


def test_recorded_config_reads_config_json_else_the_newest_run_start(tmp_path):
    from kssm_core.training.trainer import recorded_config

    assert recorded_config(tmp_path) is None
    with open(tmp_path / "events.jsonl", "w") as fh:
        for init in ("old.pt", "new.pt"):
            fh.write(json.dumps({"event": "run_start", "t": 1.0, "config": {"init_from": init}}) + "\n")
        fh.write("{damaged\n")
    assert recorded_config(tmp_path) == {"init_from": "new.pt"}
    (tmp_path / "config.json").write_text(json.dumps({"train": {"init_from": "cfg.pt", "learning_rate": 3e-4}}))
    assert recorded_config(tmp_path) == {"init_from": "cfg.pt", "learning_rate": 3e-4}


# ---- 3. a fresh start into a folder that holds a run -----------------------------------------------------


@pytest.mark.slow
def test_fresh_start_moves_the_previous_run_to_previous(run_copy, data_dir, tmp_path):
    out = run_copy
    old_best = load_checkpoint(out / "best_model.pt")["val_loss"]
    (out / "trainer.out").write_text("cockpit output\n")
    (out / "eval").mkdir()
    (out / "eval" / "summary.json").write_text("{}")
    (out / "eval.out").write_text("the old model's evaluation\n")
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"not followed")
    (out / "checkpoint_99.pt").symlink_to(outside)

    r = run_kssm(*train_args(out, data_dir, "--max-steps", "2", "--save-interval", "2", "--eval-interval", "100"))
    assert r.returncode == 0, r.stderr

    (archived,) = list((out / ARCHIVE_DIR).iterdir())
    names = {p.name for p in archived.iterdir()}
    assert {"events.jsonl", "training.log", "config.json", "best_model.pt", "eval", "eval.out",
            "checkpoint_2.pt", "checkpoint_4.pt", "checkpoint_6.pt", "checkpoint_99.pt"} <= names
    assert (archived / "checkpoint_99.pt").is_symlink() and outside.read_bytes() == b"not followed"
    assert load_checkpoint(archived / "best_model.pt")["val_loss"] == old_best  # not overwritten
    assert (out / "trainer.out").read_text() == "cockpit output\n"  # the cockpit's file stays
    assert [s for s, _ in checkpoint_files(out)] == [2]  # only the new run's
    assert len(starts(out)) == 1 and starts(out)[0]["max_steps"] == 2
    (w,) = warnings(out, "previous_run_archived")
    assert str(archived) in w["message"]
    assert str(archived) in (out / "training.log").read_text()
    s = run_status(out)
    assert s.newest_checkpoint["step"] == 2 and s.step == 2 and s.state == "completed"


@pytest.mark.slow
def test_fresh_start_with_init_from_inside_the_old_run_follows_it_to_previous(run_copy, data_dir):
    r = run_kssm(*train_args(run_copy, data_dir, "--max-steps", "1", "--init-from", str(run_copy / "best_model.pt")))
    assert r.returncode == 0, r.stderr
    (archived,) = list((run_copy / ARCHIVE_DIR).iterdir())
    assert starts(run_copy)[0]["config"]["init_from"] == str(archived / "best_model.pt")


def test_a_resume_or_an_empty_folder_moves_nothing(tmp_path):
    assert archive_previous_run(tmp_path) is None
    (tmp_path / "events.jsonl").write_text('{"event": "schema", "t": 1.0}\n')  # no run_start: no run yet
    (tmp_path / "trainer.out").write_text("x")
    assert archive_previous_run(tmp_path) is None and not (tmp_path / ARCHIVE_DIR).exists()


def test_a_symlinked_previous_folder_is_refused_before_anything_moves(tmp_path):
    (tmp_path / "best_model.pt").write_bytes(b"x")
    elsewhere = tmp_path.parent / (tmp_path.name + "-elsewhere")
    elsewhere.mkdir()
    (tmp_path / ARCHIVE_DIR).symlink_to(elsewhere)
    from kssm_core.training.archive import ArchiveError

    with pytest.raises(ArchiveError, match="not a real folder"):
        archive_previous_run(tmp_path)
    assert (tmp_path / "best_model.pt").exists() and not list(elsewhere.iterdir())


def test_clean_and_checkpoint_listing_never_look_inside_previous(tmp_path, capsys):
    from kssm_core.cli import main

    old = tmp_path / ARCHIVE_DIR / "20260101T000000Z"
    old.mkdir(parents=True)
    for step in (2, 4):
        (old / f"checkpoint_{step}.pt").write_bytes(b"old run")
    assert checkpoint_files(tmp_path) == []
    plan = plan_clean(tmp_path, keep=0)
    assert plan.delete == [] and plan.keep == []
    assert main(["clean", str(tmp_path), "--yes"]) == 0
    assert "nothing to delete" in capsys.readouterr().out
    assert sorted(p.name for p in old.iterdir()) == ["checkpoint_2.pt", "checkpoint_4.pt"]
    assert run_status(tmp_path).newest_checkpoint is None


# ---- 4. every checkpoint skipped for low disk ------------------------------------------------------------


def test_disk_low_names_its_margin_and_the_run_end_says_no_final_checkpoint(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "stage1"
    monkeypatch.setattr(ckpt, "free_bytes", lambda _folder: 1_000_000)
    cfg = tiny_config(out, data_dir, max_steps=2, save_interval=2, eval_interval=2)
    assert Trainer(cfg, echo=None).run(install_signals=False) == EXIT_COMPLETED
    low = warnings(out, "disk_low")
    assert low and all(f"+ {DISK_MARGIN_BYTES / 1e6:.0f} MB margin" in w["message"] for w in low)
    end = read_events(out)[-1]
    assert end["event"] == "run_end" and end["status"] == "completed" and end["final_checkpoint"] is False
    s = run_status(out)
    assert s.recommendation.code == "no_final_checkpoint" and s.exit_code == 1
    assert s.recommendation.text.startswith("COMPLETED without a final checkpoint (disk low): free space")
    assert "--resume" in s.recommendation.command and "ALL CLEAR" not in s.recommendation.text
    assert s.run_end["final_checkpoint"] is False


def test_a_completed_run_records_its_final_checkpoint(trained_run):
    end = read_events(trained_run)[-1]
    assert end["event"] == "run_end" and end["final_checkpoint"] is True


def test_two_archives_in_the_same_second_never_share_a_folder(tmp_path):
    (tmp_path / "best_model.pt").write_bytes(b"first")
    a = archive_previous_run(tmp_path, now=0.0)
    (tmp_path / "best_model.pt").write_bytes(b"second")
    b = archive_previous_run(tmp_path, now=0.0)
    assert a.name == "19700101T000000Z" and b.name == "19700101T000000Z-1"
    assert (a / "best_model.pt").read_bytes() == b"first" and (b / "best_model.pt").read_bytes() == b"second"
