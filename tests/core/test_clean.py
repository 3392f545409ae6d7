"""`kssm clean DIR`: only old checkpoint_*.pt go; never best_model.pt, the newest loadable,
a symlink, or anything outside DIR; --dry-run deletes nothing; each file and the bytes are printed."""

from __future__ import annotations

import io
import sys

import torch

from kssm_core.runfolder import cleaning
from kssm_core.runfolder.cleaning import plan_clean
from kssm_core.training.checkpoint import CHECKPOINT_FORMAT, atomic_save
from kssm_core.cli import main


def make_run(folder, steps=(10, 20, 30, 40)):
    """A run folder as our trainer leaves it: events.jsonl, checkpoints with our format key (kssm clean never
    deletes a checkpoint without it, nor anything in a folder without events.jsonl: another trainer's)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.jsonl").write_text('{"event": "schema", "name": "kssm-events", "version": 1}\n')
    for s in steps:
        atomic_save({"format": CHECKPOINT_FORMAT, "step": s, "model_state": {"w": torch.zeros(1000 + s)}},
                    folder / f"checkpoint_{s}.pt")
    atomic_save({"format": CHECKPOINT_FORMAT, "step": 20, "model_state": {"w": torch.zeros(8)}, "val_loss": 1.0},
                folder / "best_model.pt")
    return folder


def names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "events.jsonl")


def test_dry_run_deletes_nothing_and_lists_each_file_with_bytes(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    before = names(run)
    sizes = {p.name: p.stat().st_size for p in run.iterdir()}
    assert main(["clean", str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert names(run) == before
    assert "dry run: nothing deleted" in out
    deleted = [line for line in out.splitlines() if line.startswith("delete")]
    assert sorted(line.split()[1].rsplit("/", 1)[1] for line in deleted) == [
        "checkpoint_10.pt", "checkpoint_20.pt", "checkpoint_30.pt",
    ]
    total = sizes["checkpoint_10.pt"] + sizes["checkpoint_20.pt"] + sizes["checkpoint_30.pt"]
    assert f"{total / 1e6:.1f} MB" in out


def test_clean_yes_removes_old_checkpoints_only(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["clean", str(run), "--yes"]) == 0
    out = capsys.readouterr().out
    assert names(run) == ["best_model.pt", "checkpoint_40.pt"]
    assert "freed" in out


def test_keep_n_keeps_the_newest_n(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["clean", str(run), "--keep", "2", "--yes"]) == 0
    assert names(run) == ["best_model.pt", "checkpoint_30.pt", "checkpoint_40.pt"]


def test_newest_loadable_survives_even_with_keep_zero_and_a_corrupt_newer_file(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "checkpoint_50.pt").write_bytes(b"truncated garbage")
    assert main(["clean", str(run), "--keep", "0", "--yes"]) == 0
    left = names(run)
    assert "checkpoint_40.pt" in left and "best_model.pt" in left
    assert "checkpoint_10.pt" not in left


def test_symlinks_and_outside_files_are_never_deleted(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    outside = make_run(tmp_path / "elsewhere", steps=(1, 2))
    (run / "checkpoint_5.pt").symlink_to(outside / "checkpoint_1.pt")  # old step, reached through a symlink
    (run / "checkpoint_3.pt").symlink_to(outside / "checkpoint_2.pt")
    assert main(["clean", str(run), "--yes"]) == 0
    assert (run / "checkpoint_5.pt").is_symlink() and (run / "checkpoint_3.pt").is_symlink()
    assert names(outside) == ["best_model.pt", "checkpoint_1.pt", "checkpoint_2.pt"]
    assert "checkpoint_40.pt" in names(run)


def test_plan_never_lists_best_model_or_non_checkpoint_files(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "checkpoint_7.pt.bak").write_bytes(b"x")
    (run / "events.jsonl").write_text("{}\n")
    plan = plan_clean(run, keep=0)
    deleted = {p.name for p, _ in plan.delete}
    assert deleted == {"checkpoint_10.pt", "checkpoint_20.pt", "checkpoint_30.pt"}
    assert plan.bytes_freed == sum((run / n).stat().st_size for n in deleted)


def test_without_yes_on_a_pipe_it_refuses(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "run")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    before = names(run)
    assert main(["clean", str(run)]) == 1
    assert names(run) == before
    assert "--yes" in capsys.readouterr().err


def test_not_a_folder_is_one_line(tmp_path, capsys):
    assert main(["clean", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a folder" in err


def test_nothing_to_delete(tmp_path, capsys):
    run = make_run(tmp_path / "run", steps=(10,))
    assert main(["clean", str(run), "--yes"]) == 0
    assert "nothing to delete" in capsys.readouterr().out
    assert names(run) == ["best_model.pt", "checkpoint_10.pt"]


def test_clean_through_a_symlinked_run_folder_deletes_nothing(tmp_path, capsys):
    # DIR itself a symlink: the files are the target's, so nothing must be deleted through the link.
    real = make_run(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    rc = main(["clean", str(link), "--yes"])
    err = capsys.readouterr().err
    assert rc == 1 and "symlink" in err
    assert names(real) == ["best_model.pt", "checkpoint_10.pt", "checkpoint_20.pt", "checkpoint_30.pt", "checkpoint_40.pt"]


# ---- a file that cannot be deleted: the others still go, each failure is one line, the exit code says so -------
def _refuse_unlink(monkeypatch, names, exc):
    from pathlib import Path

    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name in names:
            raise exc
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)  # as root, a read-only folder would not stop the unlink


def test_execute_clean_reports_undeletable_files_and_goes_on(tmp_path, monkeypatch):
    import errno
    import os

    from kssm_core.runfolder.cleaning import execute_clean

    run = make_run(tmp_path / "run")
    plan = plan_clean(run)
    sizes = dict(plan.delete)
    _refuse_unlink(monkeypatch, {"checkpoint_10.pt"}, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    freed, problems = execute_clean(plan)
    assert problems == [f"checkpoint_10.pt: {os.strerror(errno.EACCES)}"]
    assert freed == sizes[run / "checkpoint_20.pt"] + sizes[run / "checkpoint_30.pt"]
    assert names(run) == ["best_model.pt", "checkpoint_10.pt", "checkpoint_40.pt"]


def test_kssm_clean_exits_1_with_one_stderr_line_per_undeletable_file(tmp_path, capsys, monkeypatch):
    import errno
    import os

    run = make_run(tmp_path / "run")
    _refuse_unlink(monkeypatch, {"checkpoint_10.pt", "checkpoint_30.pt"}, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    assert main(["clean", str(run), "--yes"]) == 1
    captured = capsys.readouterr()
    assert sorted(captured.err.splitlines()) == [
        f"kssm clean: checkpoint_10.pt: {os.strerror(errno.EROFS)}",
        f"kssm clean: checkpoint_30.pt: {os.strerror(errno.EROFS)}",
    ]
    assert "freed" in captured.out
    assert names(run) == ["best_model.pt", "checkpoint_10.pt", "checkpoint_30.pt", "checkpoint_40.pt"]


def test_a_file_replaced_after_planning_is_not_deleted(tmp_path):
    from kssm_core.runfolder.cleaning import execute_clean

    run = make_run(tmp_path / "run")
    plan = plan_clean(run)
    # a resumed trainer rewrites checkpoint_20.pt (a new file renamed over the name) after the plan was made
    atomic_save({"format": CHECKPOINT_FORMAT, "step": 20, "model_state": {"w": torch.ones(1020)}}, run / "checkpoint_20.pt")
    (run / "checkpoint_30.pt").unlink()  # and prune() removed another one: gone is fine
    freed, problems = execute_clean(plan)
    assert problems == ["checkpoint_20.pt: changed since it was listed; not deleted"]
    assert freed == dict(plan.delete)[run / "checkpoint_10.pt"]
    assert names(run) == ["best_model.pt", "checkpoint_20.pt", "checkpoint_40.pt"]
    assert torch.equal(torch.load(run / "checkpoint_20.pt", weights_only=True)["model_state"]["w"], torch.ones(1020))


def test_plan_delete_still_iterates_as_path_and_size(tmp_path):
    run = make_run(tmp_path / "run")
    plan = plan_clean(run, keep=0)
    for path, size in plan.delete:
        assert size == path.stat().st_size


# ---- plan_clean while a trainer prunes, and without loading whole checkpoints into memory ------------------------
def test_plan_skips_a_file_removed_between_listing_and_stat(tmp_path, monkeypatch):
    from kssm_core.training import checkpoint as ckpt

    run = make_run(tmp_path / "run")
    listed = ckpt.checkpoint_files(run)
    (run / "checkpoint_10.pt").unlink()  # a live trainer's prune(), after the listing
    monkeypatch.setattr(cleaning, "checkpoint_files", lambda _root: listed)
    plan = plan_clean(run, keep=0)
    assert {p.name for p, _ in plan.delete} == {"checkpoint_20.pt", "checkpoint_30.pt"}


def test_plan_checks_loadability_with_mmap(tmp_path, monkeypatch):
    from kssm_core.training import checkpoint as ckpt

    run = make_run(tmp_path / "run")
    (run / "checkpoint_50.pt").write_bytes((run / "checkpoint_40.pt").read_bytes()[:-200])  # truncated newest
    calls = []
    real_load = ckpt.load_checkpoint

    def spy(path, map_location="cpu", mmap=False):
        calls.append((path.name, mmap))
        return real_load(path, map_location, mmap=mmap)

    monkeypatch.setattr(ckpt, "load_checkpoint", spy)
    plan = plan_clean(run, keep=0)
    # each checkpoint is opened to find the newest loadable and to check it is kssm's: always mapped, never read whole
    assert {name for name, _ in calls} >= {"checkpoint_50.pt", "checkpoint_40.pt"}
    assert all(mmap for _, mmap in calls)
    assert (run / "checkpoint_40.pt", "newest loadable checkpoint") in plan.keep  # the truncated one failed
    # and a file too damaged to say who wrote it is never deleted (it may be another program's)
    assert (run / "checkpoint_50.pt", "unreadable: cannot tell who wrote it: never cleaned") in plan.keep
