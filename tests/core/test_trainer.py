"""The trainer end to end: the run folder it writes, lock contention, SIGTERM, stale locks, NaN stop,
disk full / disk low, bad input, and no host sync per micro-step."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from kssm_testkit import read_events, run_kssm, start_kssm, tiny_config, train_args, wait_for_event
from kssm_core.training import checkpoint as ckpt
from kssm_core.training.checkpoint import load_checkpoint
from kssm_core.config import ModelConfig
from kssm_core.runfolder.lock import LOCK_NAME, process_start_time, read_lock
from kssm_core.model.kssm import KSSM
from kssm_core.training.trainer import EXIT_COMPLETED, EXIT_FAILED, EXIT_REFUSED, Trainer


def kinds(events, kind):
    return [e for e in events if e["event"] == kind]


def run_inprocess(cfg) -> int:
    """Run a Trainer in this process (no signal handlers: pytest owns SIGINT)."""
    return Trainer(cfg, echo=None).run(install_signals=False)


# ---- the run folder of a completed run ------------------------------------------------------------


def test_completed_run_writes_the_contracted_folder(trained_run):
    files = {p.name for p in trained_run.iterdir()}
    assert {"events.jsonl", "training.log", "config.json", "best_model.pt", "checkpoint_6.pt"} <= files
    assert LOCK_NAME not in files
    assert not [n for n in files if n.endswith(".tmp")]

    raw = (trained_run / "events.jsonl").read_text().splitlines()
    assert json.loads(raw[0]) == {"event": "schema", "t": json.loads(raw[0])["t"], "name": "kssm-events", "version": 1}
    ev = read_events(trained_run)
    assert len(ev) == len(raw), "every line is JSON"
    assert all(isinstance(e["t"], float) for e in ev)

    (start,) = kinds(ev, "run_start")
    for key in ("config", "model_config", "device", "parameters", "pid", "host", "resumed_from", "start_step",
                "max_steps", "tokens_per_step", "data_dir"):
        assert key in start, key
    assert start["device"] == "cpu" and start["resumed_from"] is None and start["start_step"] == 0
    assert start["parameters"] == KSSM(ModelConfig.from_dict(start["model_config"])).num_parameters()

    steps = kinds(ev, "step")
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    for s in steps:
        for key in ("loss", "ce", "reg", "R", "u_val", "grad_norm", "lr", "tokens_per_s"):
            assert isinstance(s[key], float), key
        assert 0 <= s["R"] <= 1 and 0.1 <= s["u_val"] <= 10
        assert s["loss"] == pytest.approx(s["ce"] + 0.01 * s["reg"], rel=1e-5)

    evals = kinds(ev, "eval")
    assert [e["step"] for e in evals] == [3, 6]
    for e in evals:
        assert e["val_ppl"] == pytest.approx(math.exp(min(e["val_ce"], 20)), rel=1e-9)
        assert 0 <= e["val_R"] <= 1
    samples = kinds(ev, "sample")
    assert [s["step"] for s in samples] == [3, 6] and all(s["prompt"] == "The " and isinstance(s["text"], str) for s in samples)

    cks = kinds(ev, "checkpoint")
    periodic = [c for c in cks if not c["best"]]
    assert [c["step"] for c in periodic] == [2, 4, 6]
    for c in cks:
        if (trained_run / c["path"]).exists():
            assert c["bytes"] == (trained_run / c["path"]).stat().st_size
    assert kinds(ev, "run_end")[-1]["status"] == "completed"
    assert ev[-1]["event"] == "run_end"


def test_checkpoint_holds_the_full_training_state_and_loads_weights_only(trained_run):
    state = torch.load(trained_run / "checkpoint_6.pt", weights_only=True)
    for key in ("format", "step", "model_state", "optimizer_state", "scheduler_state", "best_val_loss", "rng",
                "data_state", "config", "model_config", "tokenizer_sha256", "tokenizer_json"):
        assert key in state, key
    assert state["format"] == "kssm-checkpoint/1" and state["step"] == 6
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert set(state["data_state"]) >= {"epoch", "cursor"}
    model = KSSM(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model_state"])  # strict: the names match
    best = load_checkpoint(trained_run / "best_model.pt")
    assert {"step", "model_state", "val_loss"} <= set(best)
    cfg = json.loads((trained_run / "config.json").read_text())
    assert set(cfg) == {"train", "model", "data_dir"} and cfg["train"]["max_steps"] == 6


def test_training_log_is_tail_friendly(trained_run):
    text = (trained_run / "training.log").read_text()
    assert "  step |   total |      ce |     reg | R      |   u_val | grad_norm" in text
    assert "EVALUATION @ Step 6" in text and "Val Perplexity:" in text and "Val R:" in text
    assert "RUN END: completed" in text


# ---- lock contention, heartbeat, SIGTERM (one long-running child serves all three) ----------------


@pytest.mark.slow
def test_second_trainer_is_refused_then_sigterm_saves_and_exits_130(tmp_path, data_dir):
    out = tmp_path / "run"
    a = start_kssm(*train_args(out, data_dir, "--max-steps", "100000", "--log-interval", "1", "--save-interval",
                              "1000", "--eval-interval", "100000", "--heartbeat-seconds", "0.5"))
    try:
        wait_for_event(out, a, lambda e: e["event"] == "step" and e["step"] >= 2)
        lock = read_lock(out)
        assert lock.pid == a.pid and lock.host == socket.gethostname()
        assert lock.start_time == pytest.approx(process_start_time(a.pid))

        b = run_kssm(*train_args(out, data_dir, "--max-steps", "5"))
        assert b.returncode == 2
        err = b.stderr.strip().splitlines()
        assert len(err) == 1 and str(a.pid) in err[0], b.stderr
        assert read_lock(out).pid == a.pid  # the loser did not touch the winner's lock

        wait_for_event(out, a, lambda e: e["event"] == "heartbeat")
        a.send_signal(signal.SIGTERM)
        a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 130
    ev = read_events(out)
    hb = kinds(ev, "heartbeat")
    assert hb and {"step", "phase", "micro", "accum"} <= set(hb[0])
    end = ev[-1]
    assert end["event"] == "run_end" and end["status"] == "interrupted" and "SIGTERM" in end["reason"]
    last_step = kinds(ev, "step")[-1]["step"]
    assert end["step"] == last_step
    saved = load_checkpoint(out / f"checkpoint_{last_step}.pt")  # it finished the step and saved it
    assert saved["step"] == last_step
    assert not (out / LOCK_NAME).exists()
    assert len(kinds(ev, "run_start")) == 1  # the refused trainer wrote nothing


# ---- stale locks ------------------------------------------------------------------------------------


def _write_lock(folder, pid, start_time):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "start_time": start_time,
                                                "created": time.time()}))


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, data_dir):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    out = tmp_path / "run"
    _write_lock(out, p.pid, 12345.0)
    assert run_inprocess(tiny_config(out, data_dir, max_steps=1)) == EXIT_COMPLETED
    ev = read_events(out)
    (warn,) = [e for e in kinds(ev, "warning") if e["code"] == "stale_lock"]
    assert str(p.pid) in warn["message"]
    assert not (out / LOCK_NAME).exists()


def test_lock_of_a_reused_pid_is_stale(tmp_path, data_dir):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "run"
        _write_lock(out, sleeper.pid, process_start_time(sleeper.pid) - 7200)  # same PID, other process
        assert run_inprocess(tiny_config(out, data_dir, max_steps=1)) == EXIT_COMPLETED
        assert [e for e in kinds(read_events(out), "warning") if e["code"] == "stale_lock"]
        # and with its true start time the same PID is live: refused
        _write_lock(out, sleeper.pid, process_start_time(sleeper.pid))
        assert run_inprocess(tiny_config(out, data_dir, max_steps=1)) == EXIT_REFUSED
        assert read_lock(out).pid == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- NaN stop -----------------------------------------------------------------------------------------


def test_nan_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    out = tmp_path / "run"
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "30", "--log-interval", "1", "--save-interval", "1",
                             "--learning-rate", "1e6"))
    assert r.returncode == 1, r.stderr
    ev = read_events(out)
    end = ev[-1]
    assert end["event"] == "run_end" and end["status"] == "failed" and end["reason"] == "nan_loss"
    assert "--learning-rate" in end["advice"]
    bad = end["step"]
    assert kinds(ev, "step")[-1]["loss"] is None  # NaN written as null
    files = ckpt.checkpoint_files(out)
    assert files and all(step < bad for step, _ in files), "no checkpoint of the NaN step"
    state = load_checkpoint(files[0][1])
    assert all(torch.isfinite(t).all() for t in state["model_state"].values())
    assert not (out / LOCK_NAME).exists()


def test_nan_detected_between_log_lines_before_any_save(tmp_path, data_dir, monkeypatch):
    # NaN at a step that is neither logged nor saved: it must still stop before the next save.
    real_loss = KSSM.loss
    calls = {"n": 0}

    def poisoned(self, idx, targets, lambda_reg):
        total, ce, out = real_loss(self, idx, targets, lambda_reg)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                total = total * float("nan")
        return total, ce, out

    monkeypatch.setattr(KSSM, "loss", poisoned)
    out = tmp_path / "run"
    rc = run_inprocess(tiny_config(out, data_dir, max_steps=12, log_interval=3, save_interval=2, eval_interval=100))
    assert rc == EXIT_FAILED
    ev = read_events(out)
    assert ev[-1]["reason"] == "nan_loss" and ev[-1]["step"] == 6
    assert [s for s, _ in ckpt.checkpoint_files(out)] == [4, 2]
    assert load_checkpoint(out / "checkpoint_4.pt")["step"] == 4


# ---- disk -----------------------------------------------------------------------------------------------


def test_enospc_during_a_save_warns_and_training_continues(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "run"
    real_save = ckpt.atomic_save
    real_write = ckpt._write_all
    target = {"name": None}

    def save(obj, path):
        target["name"] = os.path.basename(path)
        return real_save(obj, path)

    def write(fd, data):
        if target["name"] == "checkpoint_4.pt":
            os.write(fd, data[:1000])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(ckpt, "atomic_save", save)
    monkeypatch.setattr(ckpt, "_write_all", write)
    rc = run_inprocess(tiny_config(out, data_dir, max_steps=6, save_interval=2, eval_interval=100))
    assert rc == EXIT_COMPLETED
    ev = read_events(out)
    (full,) = [e for e in kinds(ev, "warning") if e["code"] == "disk_full"]
    assert "checkpoint_4.pt" in full["message"] and full["advice"]
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert "checkpoint_4.pt" not in names
    assert load_checkpoint(out / "checkpoint_2.pt")["step"] == 2  # untouched
    assert load_checkpoint(out / "checkpoint_6.pt")["step"] == 6  # it kept going
    assert ev[-1]["status"] == "completed"


def test_disk_low_skips_the_save_with_a_warning(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(ckpt, "free_bytes", lambda _folder: 1_000_000)  # 1 MB free: nothing fits
    rc = run_inprocess(tiny_config(out, data_dir, max_steps=4, save_interval=2, eval_interval=2))
    assert rc == EXIT_COMPLETED
    ev = read_events(out)
    low = [e for e in kinds(ev, "warning") if e["code"] == "disk_low"]
    assert len(low) >= 2 and all("skipped" in e["message"] and "kssm clean" in e["advice"] for e in low)
    assert not list(out.glob("*.pt")) and not list(out.glob(".*.tmp"))
    assert not kinds(ev, "checkpoint")
    assert ev[-1]["status"] == "completed"


def test_disk_check_uses_the_last_checkpoint_size(tmp_path, data_dir, monkeypatch):
    # Room for exactly one more checkpoint of the size just written (plus the margin), then not.
    from kssm_core.training.saving import DISK_MARGIN_BYTES

    out = tmp_path / "run"
    state = {"free": 10**12}
    monkeypatch.setattr(ckpt, "free_bytes", lambda _folder: state["free"])
    real_save = ckpt.atomic_save

    def save(obj, path):
        n = real_save(obj, path)
        state["free"] = n + DISK_MARGIN_BYTES - 1  # one byte short of the next save
        return n

    monkeypatch.setattr(ckpt, "atomic_save", save)
    assert run_inprocess(tiny_config(out, data_dir, max_steps=4, save_interval=2, eval_interval=100)) == EXIT_COMPLETED
    assert [s for s, _ in ckpt.checkpoint_files(out)] == [2]
    assert [e for e in kinds(read_events(out), "warning") if e["code"] == "disk_low"]


# ---- bad input -----------------------------------------------------------------------------------------


def test_bad_arguments_exit_2_with_one_line(tmp_path, data_dir):
    r = run_kssm(*train_args(tmp_path / "run", data_dir, "--seq-len", "4096"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "position table" in r.stderr


def test_missing_corpus_fails_cleanly(tmp_path, data_dir):
    out = tmp_path / "run"
    r = run_kssm(*train_args(out, data_dir, "--corpus", str(tmp_path / "missing.txt")))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    end = read_events(out)[-1]
    assert end["event"] == "run_end" and end["status"] == "failed" and "corpus not found" in end["reason"]
    assert not (out / LOCK_NAME).exists()


def test_corpus_too_small_for_a_batch_fails_cleanly(tmp_path, data_dir):
    small = tmp_path / "small.txt"
    small.write_text(("A short but real paragraph of text about oscillators and coherence. " * 20))
    out = tmp_path / "run"
    r = run_kssm(*train_args(out, tmp_path / "cache", "--corpus", str(small), "--vocab-size", "300",
                             "--seq-len", "512", "--batch-size", "16"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    end = read_events(out)[-1]
    assert end["status"] == "failed" and "corpus too small" in end["reason"]


# ---- no host sync per micro-step -------------------------------------------------------------------------


def test_no_host_sync_per_micro_step(tmp_path, data_dir, monkeypatch):
    """Host syncs (.item(), .cpu(), .tolist(), float()) do not grow with the number of micro-steps."""
    counts = {"n": 0}
    for name in ("item", "cpu", "tolist", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def syncs(accum: int) -> int:
        counts["n"] = 0
        cfg = tiny_config(tmp_path / f"run{accum}", data_dir, max_steps=2, grad_accum=accum, log_interval=2,
                          save_interval=100, eval_interval=100, sample_tokens=2)
        assert run_inprocess(cfg) == EXIT_COMPLETED
        return counts["n"]

    one, eight = syncs(1), syncs(8)
    assert one > 0, "the counter saw nothing: the patch is broken"
    assert eight == one, f"{eight} host syncs with 8 micro-steps per step vs {one} with 1"


def test_non_finite_grad_norm_stops_before_saving_nan_weights(tmp_path, data_dir, monkeypatch):
    # Finite loss but a NaN gradient at a save step: the update makes the weights NaN; they must not be saved.
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip(params, max_norm, *a, **k):
        params = list(params)
        calls["n"] += 1
        if calls["n"] == 4:
            for p in params:
                p.grad.fill_(float("nan"))
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    out = tmp_path / "run"
    rc = run_inprocess(tiny_config(out, data_dir, max_steps=8, log_interval=2, save_interval=2, eval_interval=100))
    assert rc == EXIT_FAILED
    end = read_events(out)[-1]
    assert end["reason"] == "nan_loss" and end["step"] == 4
    assert [s for s, _ in ckpt.checkpoint_files(out)] == [2]
    state = load_checkpoint(out / "checkpoint_2.pt")
    assert all(torch.isfinite(t).all() for t in state["model_state"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_bad_argument(tmp_path, data_dir):
    out = tmp_path / "run"
    args = [a for a in train_args(out, data_dir, "--max-steps", "1") if a != "--quiet"]
    args[args.index("--device") + 1] = "cuda"
    r = run_kssm(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no CUDA device" in r.stdout
    assert not (out / LOCK_NAME).exists()


# ---- robustness: the lock cannot be created; a weights-only newest checkpoint; config.json's temp file ---------


def test_lock_that_cannot_be_created_is_a_one_line_refusal(tmp_path, data_dir, monkeypatch, capsys):
    import kssm_core.runfolder.lock as lk

    def read_only_folder(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(lk.tempfile, "mkstemp", read_only_folder)  # as root, chmod would not stop mkstemp
    out = tmp_path / "run"
    assert run_inprocess(tiny_config(out, data_dir, max_steps=1)) == EXIT_REFUSED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cannot create {out / LOCK_NAME}: {os.strerror(errno.EROFS)}"]
    assert not (out / LOCK_NAME).exists() and not (out / "events.jsonl").exists()


def test_resume_skips_a_newest_checkpoint_that_holds_only_model_state(run_copy, data_dir):
    weights = load_checkpoint(run_copy / "checkpoint_6.pt")["model_state"]
    ckpt.atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": 8, "model_state": weights},
                     run_copy / "checkpoint_8.pt")  # ours, but weights only
    r = run_kssm(*train_args(run_copy, data_dir, "--max-steps", "8", "--save-interval", "2", "--log-interval", "1",
                             "--eval-interval", "3", "--resume"))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    (skip,) = [e for e in kinds(read_events(run_copy), "warning") if e["code"] == "checkpoint_skipped"]
    assert "checkpoint_8.pt" in skip["message"] and "lacks" in skip["message"] and "optimizer_state" in skip["message"]
    start = kinds(read_events(run_copy), "run_start")[-1]
    assert start["resumed_from"].endswith("checkpoint_6.pt") and start["start_step"] == 6
    assert "optimizer_state" in load_checkpoint(run_copy / "checkpoint_8.pt")  # rewritten, now resumable


def test_a_checkpoint_kssm_did_not_write_is_never_overwritten(run_copy, data_dir):
    """One without our format key among our run's: --resume refuses (one line, nothing written); --adopt moves
    it to previous/ byte for byte, then resumes our run."""
    weights = load_checkpoint(run_copy / "checkpoint_6.pt")["model_state"]
    ckpt.atomic_save({"step": 8, "model_state": weights}, run_copy / "checkpoint_8.pt")  # another program's
    foreign = (run_copy / "checkpoint_8.pt").read_bytes()
    events = (run_copy / "events.jsonl").read_bytes()
    args = train_args(run_copy, data_dir, "--max-steps", "8", "--save-interval", "2", "--log-interval", "1",
                      "--eval-interval", "3", "--resume")
    r = run_kssm(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "checkpoint_8.pt" in r.stderr and "--adopt" in r.stderr and "--init-from" in r.stderr
    assert (run_copy / "checkpoint_8.pt").read_bytes() == foreign and (run_copy / "events.jsonl").read_bytes() == events
    r = run_kssm(*args, "--adopt")
    assert r.returncode == 0, r.stderr
    (moved,) = (run_copy / "previous").glob("*/checkpoint_8.pt")
    assert moved.read_bytes() == foreign
    (w,) = [e for e in kinds(read_events(run_copy), "warning") if e["code"] == "foreign_run_adopted"]
    assert "checkpoint_8.pt" in w["message"]
    assert kinds(read_events(run_copy), "run_start")[-1]["start_step"] == 6
    assert load_checkpoint(run_copy / "checkpoint_8.pt")["format"] == ckpt.CHECKPOINT_FORMAT


def test_config_json_is_written_without_following_a_planted_temp_symlink(tmp_path, data_dir):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (out / ".config.json.tmp").symlink_to(victim)  # a fixed temp name would be written through this link
    assert run_inprocess(tiny_config(out, data_dir, max_steps=1)) == EXIT_COMPLETED
    assert victim.read_text() == "untouched"
    config = out / "config.json"
    assert not config.is_symlink() and json.loads(config.read_text())["train"]["max_steps"] == 1
