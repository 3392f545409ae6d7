"""Exact resume after SIGKILL, repeated SIGKILL while saving, damaged / hostile checkpoints on --resume."""

from __future__ import annotations

import os
import random
import time

import pytest
import torch

from kssm_testkit import evil_checkpoint, read_events, run_kssm, sigkill, start_kssm, train_args, wait_for_event
from kssm_core.training.checkpoint import TEMP_RE, checkpoint_files, load_checkpoint
from kssm_core.runfolder.lock import LOCK_NAME
from kssm_core.runfolder.runlog import read_all

METRICS = ("loss", "ce", "reg", "R", "u_val", "grad_norm", "lr")


def final_steps(run_dir) -> dict[int, tuple]:
    """step -> metrics, where a resumed run's values replace the orphaned ones of the killed run."""
    out = {}
    for e in read_events(run_dir):
        if e["event"] == "run_start":
            for s in [s for s in out if s > e["start_step"]]:
                del out[s]
        elif e["event"] == "step":
            out[e["step"]] = tuple(e[k] for k in METRICS)
    return out


def warnings(run_dir, code):
    return [e for e in read_events(run_dir) if e["event"] == "warning" and e["code"] == code]


@pytest.mark.slow
def test_resume_after_sigkill_logs_identical_losses(tmp_path, data_dir):
    # eval every 6 steps: evaluation and sampling draw from the RNG, so resume must restore it exactly.
    # two micro-batches per step: the accumulation window must line up across the kill too.
    extra = ("--max-steps", "16", "--log-interval", "1", "--save-interval", "4", "--eval-interval", "6",
             "--grad-accum", "2")
    straight = tmp_path / "straight"
    r = run_kssm(*train_args(straight, data_dir, *extra))
    assert r.returncode == 0, r.stderr
    want = final_steps(straight)
    assert sorted(want) == list(range(1, 17))

    killed = tmp_path / "killed"
    p = start_kssm(*train_args(killed, data_dir, *extra))
    wait_for_event(killed, p, lambda e: e["event"] == "checkpoint" and e["step"] == 8)
    wait_for_event(killed, p, lambda e: e["event"] == "step" and e["step"] >= 9)  # some steps get orphaned
    sigkill(p)
    assert p.returncode == -9
    assert not [e for e in read_events(killed) if e["event"] == "run_end"]
    assert (killed / LOCK_NAME).exists()  # a SIGKILL leaves the lock: the next start must see it is stale

    r = run_kssm(*train_args(killed, data_dir, *extra, "--resume"))
    assert r.returncode == 0, r.stderr
    starts = [e for e in read_events(killed) if e["event"] == "run_start"]
    assert starts[-1]["resumed_from"].endswith("checkpoint_8.pt") and starts[-1]["start_step"] == 8
    assert warnings(killed, "stale_lock")
    got = final_steps(killed)
    assert sorted(got) == list(range(1, 17))
    for step in range(1, 17):
        assert got[step] == want[step], f"step {step}: {got[step]} != {want[step]}"  # identical floats
    evals = lambda d: [(e["step"], e["val_loss"]) for e in read_events(d) if e["event"] == "eval"]  # noqa: E731
    assert evals(killed)[-1] == evals(straight)[-1]
    assert torch.equal(
        load_checkpoint(killed / "checkpoint_16.pt")["model_state"]["embed.weight"],
        load_checkpoint(straight / "checkpoint_16.pt")["model_state"]["embed.weight"],
    )


def _temps(folder) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if TEMP_RE.match(n)]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_repeated_sigkill_while_saving_always_leaves_a_loadable_newest_checkpoint(tmp_path, data_dir):
    """Save every step and SIGKILL many times: half the kills the instant a save's temp file appears
    (mid-write, before the rename), half at random moments. The newest checkpoint must always load."""
    out = tmp_path / "run"
    extra = ("--log-interval", "1", "--save-interval", "1", "--eval-interval", "100000", "--keep-checkpoints", "2")
    rng = random.Random(1234)
    kills, mid_save = 0, 0
    for i in range(6):
        t0 = time.time()
        p = start_kssm(*train_args(out, data_dir, "--max-steps", "400", *extra, *(("--resume",) if kills else ())))
        wait_for_event(out, p, lambda e: e["event"] == "checkpoint" and e["t"] >= t0)  # this child has saved once
        if i % 2 == 0:
            deadline = time.monotonic() + 10
            while not _temps(out) and time.monotonic() < deadline and p.poll() is None:
                pass  # spin: the write window of an 11 MB file is short
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        assert p.poll() is None, "the trainer finished before it could be killed"
        sigkill(p)
        kills += 1
        mid_save += bool(_temps(out))
        files = checkpoint_files(out)
        assert files, "no checkpoint after a kill"
        newest_step, newest = files[0]
        assert load_checkpoint(newest)["step"] == newest_step  # the newest file that exists always loads
    assert mid_save >= 1, "no kill landed during a save: the test did not exercise what it claims"
    # A last resume (to a nearer target) ends cleanly: temp files of killed saves removed, no lock left.
    target = checkpoint_files(out)[0][0] + 2
    r = run_kssm(*train_args(out, data_dir, "--max-steps", str(target), *extra, "--resume"))
    assert r.returncode == 0, r.stderr
    assert not _temps(out), "temp files of killed saves were left behind"
    _, stats = read_all(out / "events.jsonl")
    assert stats.bad_lines <= kills, "more damaged lines than kills: a partial line merged with a later one"
    assert load_checkpoint(out / f"checkpoint_{target}.pt")["step"] == target
    assert not (out / LOCK_NAME).exists()


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(run_copy, data_dir):
    ck6 = run_copy / "checkpoint_6.pt"
    ck6.write_bytes(ck6.read_bytes()[: ck6.stat().st_size // 3])  # truncated by a crash
    with open(run_copy / "events.jsonl", "ab") as fh:
        fh.write(b'{"event":"heartbeat","t":17')  # and a partial last line
    r = run_kssm(*train_args(run_copy, data_dir, "--max-steps", "6", "--save-interval", "2", "--log-interval", "1",
                             "--eval-interval", "3", "--resume"))
    assert r.returncode == 0, r.stderr
    (skip,) = warnings(run_copy, "checkpoint_skipped")
    assert "checkpoint_6.pt" in skip["message"] and "\n" not in skip["message"]
    start = [e for e in read_events(run_copy) if e["event"] == "run_start"][-1]
    assert start["resumed_from"].endswith("checkpoint_4.pt") and start["start_step"] == 4
    assert load_checkpoint(ck6)["step"] == 6  # rewritten by the resumed run
    lines = (run_copy / "events.jsonl").read_bytes().split(b"\n")
    i = lines.index(b'{"event":"heartbeat","t":17')
    assert lines[i + 1].startswith(b'{"event":')  # the next writer started on a fresh line


def test_malicious_checkpoint_is_refused_on_resume_and_never_runs(run_copy, data_dir, tmp_path):
    """A planted checkpoint (pickled objects, no kssm format key) is never unpickled; and since the folder now
    holds a file kssm did not write (which step 8's save would replace), --resume refuses to write there."""
    marker = tmp_path / "PWNED"
    evil_checkpoint(run_copy / "checkpoint_8.pt", marker)
    planted = (run_copy / "checkpoint_8.pt").read_bytes()
    r = run_kssm(*train_args(run_copy, data_dir, "--max-steps", "8", "--save-interval", "2", "--log-interval", "1",
                             "--eval-interval", "3", "--resume"))
    assert not marker.exists()
    assert r.returncode == 2 and "checkpoint_8.pt" in r.stderr and "--adopt" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (run_copy / "checkpoint_8.pt").read_bytes() == planted  # left exactly as it was


def test_resume_with_nothing_to_resume_starts_fresh_with_a_warning(tmp_path, data_dir):
    out = tmp_path / "run"
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "2", "--resume"))
    assert r.returncode == 0, r.stderr
    assert warnings(out, "nothing_to_resume")
    assert [e for e in read_events(out) if e["event"] == "run_start"][0]["start_step"] == 0


def test_changed_flag_on_resume_is_reported(run_copy, data_dir):
    r = run_kssm(*train_args(run_copy, data_dir, "--max-steps", "8", "--save-interval", "2", "--log-interval", "1",
                             "--eval-interval", "3", "--resume", "--learning-rate", "0.0005"))
    assert r.returncode == 0, r.stderr
    (w,) = warnings(run_copy, "resume_overrides")
    assert "learning_rate" in w["message"] and "max_steps" in w["message"]
    start = [e for e in read_events(run_copy) if e["event"] == "run_start"][-1]
    assert start["start_step"] == 6 and start["config"]["learning_rate"] == 0.0005
    assert start["max_steps"] == 8


def test_init_from_starts_a_new_stage_from_earlier_weights(trained_run, tmp_path, data_dir):
    out = tmp_path / "stage2"
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "1", "--init-from", str(trained_run / "best_model.pt")))
    assert r.returncode == 0, r.stderr
    start = [e for e in read_events(out) if e["event"] == "run_start"][0]
    assert start["start_step"] == 0 and start["resumed_from"] is None
    fresh = tmp_path / "fresh"
    assert run_kssm(*train_args(fresh, data_dir, "--max-steps", "1")).returncode == 0
    first = lambda d: [e for e in read_events(d) if e["event"] == "step"][0]["ce"]  # noqa: E731
    assert first(out) < first(fresh), "the trained weights should start with a lower loss than random ones"


def test_init_from_a_malicious_file_fails_cleanly(tmp_path, data_dir):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    evil_checkpoint(evil, marker)
    out = tmp_path / "run"
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "1", "--init-from", str(evil)))
    assert r.returncode == 1 and not marker.exists() and "Traceback" not in r.stderr
    end = [e for e in read_events(out) if e["event"] == "run_end"][-1]
    assert end["status"] == "failed" and "refused" in end["reason"]
