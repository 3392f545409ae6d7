"""`kssm train --nproc N`: torchrun + DDP on CPU (gloo), and the pure pieces of kssm_core.training.distributed.

The slow tests start real torchrun jobs of 2 processes on the tiny preset. CI never needs a GPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from kssm_core.training.checkpoint import load_checkpoint
from kssm_core.cli import main as kssm_main
from kssm_core.training.distributed import (
    NO_NOISE_ENV, DistError, ShardSampler, finish_after_workers, split_batch, worker_argv,
)
from kssm_core.training.rng import rng_for_rank
from kssm_core.training.data import BatchSampler

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--grad-accum", "2", "--vocab-size", "512",
        "--device", "cpu", "--quiet"]


def events(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def kinds(evs: list[dict], kind: str) -> list[dict]:
    return [e for e in evs if e["event"] == kind]


def launch(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "kssm_core", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_steps(run_dir: Path, proc: subprocess.Popen, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the launcher exited early ({proc.returncode}): {proc.stdout.read()[-2000:]}")
        path = run_dir / "events.jsonl"
        if path.exists() and len(kinds(events(run_dir), "step")) >= n:
            return
        time.sleep(0.2)
    pytest.fail(f"no {n} step events within {timeout} s")


# ---- fast: the pure pieces ------------------------------------------------------------------------
def test_split_batch_keeps_the_global_batch():
    assert split_batch(4, 2, 1) == (4, 2)
    assert split_batch(8, 8, 4) == (8, 2)  # accumulation splits when it divides
    assert split_batch(4, 1, 2) == (2, 1)  # else the micro-batch shrinks
    for batch, accum, world in [(8, 8, 3), (6, 2, 4), (16, 1, 8), (5, 3, 5)]:
        try:
            micro, per = split_batch(batch, accum, world)
        except DistError:
            assert (batch * accum) % world
            continue
        assert micro * per * world == batch * accum and micro <= batch
    with pytest.raises(DistError, match="cannot be split over 4"):
        split_batch(6, 1, 4)


def test_shards_union_is_the_single_process_order_across_epochs():
    tokens = np.arange(33 * 10 + 1, dtype=np.int32)  # 10 windows of 32: epochs wrap mid-step
    single = BatchSampler(tokens, 32, 4, seed=7)
    ranks = [ShardSampler(tokens, 32, 4, 7, r, 2) for r in range(2)]
    for _ in range(7):  # 7 steps of batch 4 x accum 2 = 56 windows, over 5 epochs
        want = [single.next_batch()[0] for _ in range(2)]
        got = [ranks[r].next_batch()[0] for r in range(2)]  # one micro-step per rank
        for w, g in zip(want, got):
            assert torch.equal(w, g)
    states = [s.state_dict() for s in ranks]
    assert states[0] == states[1] == single.state_dict()  # the data position is world-size free


def test_rng_for_rank_and_worker_argv():
    state = {"rng": "r0", "rng_per_rank": ["a", "b"]}
    assert [rng_for_rank(state, r) for r in range(3)] == ["a", "b", None]
    assert rng_for_rank({"rng": "r0"}, 0) == "r0" and rng_for_rank({"rng": "r0"}, 1) is None
    ns = Namespace(func=print, command="train", nproc=2, max_steps=5, resume=True, quiet=False, corpus=None,
                   learning_rate=0.0005)
    assert worker_argv(ns) == ["--learning-rate", "0.0005", "--max-steps", "5", "--resume"]


def test_finish_after_workers_closes_a_run_whose_rank0_died(tmp_path):
    since = time.time() - 1
    (tmp_path / "events.jsonl").write_text(
        json.dumps({"event": "run_start", "t": since + 0.5, "world_size": 2}) + "\n"
    )
    (tmp_path / "training.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    assert finish_after_workers(tmp_path, since, -9) == 1
    ends = kinds(events(tmp_path), "run_end")
    assert ends[-1]["status"] == "failed" and "torchrun exit code -9" in ends[-1]["reason"]
    assert not (tmp_path / "training.lock").exists()
    # a run that wrote its own run_end keeps it and maps it to the exit code
    (tmp_path / "events.jsonl").write_text(
        json.dumps({"event": "run_start", "t": since + 0.5}) + "\n" + json.dumps({"event": "run_end", "t": since + 1, "status": "interrupted"}) + "\n"
    )
    assert finish_after_workers(tmp_path, since, 1) == 130


def test_nproc_refuses_a_batch_that_does_not_split(tmp_path, capsys):
    code = kssm_main(["train", "--nproc", "4", "--output-dir", str(tmp_path / "r"), "--batch-size", "6",
                      "--grad-accum", "1", "--max-steps", "2"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be split over 4" in err[0]
    assert not (tmp_path / "r").exists()


# ---- slow: real torchrun jobs ---------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, monkeypatch):
    """2 gloo processes write one coherent run folder and follow the 1-process loss curve.

    Tolerance: the ranks' micro-batches are exactly the single process's (same windows, same grouping),
    and phase noise is off (each rank draws its own noise stream, so with noise the curves would differ
    by the noise itself). What remains is float summation order in DDP's gradient all-reduce, which
    Adam amplifies a little: measured over these 12 steps, losses within 5e-6 relative (grad norms,
    more sensitive, within ~1%). 1e-4 relative on the loss leaves 20x room without hiding a real bug:
    ranks that read the wrong windows (both the same ones: tried) move step 1's loss by 5e-3 relative.
    """
    data = tmp_path / "data"
    common = [*TINY, "--max-steps", "12", "--log-interval", "1", "--eval-interval", "6", "--save-interval", "6",
              "--data-dir", str(data)]
    monkeypatch.setenv(NO_NOISE_ENV, "1")
    assert kssm_main(["train", "--output-dir", str(tmp_path / "one"), *common]) == 0
    proc = launch(["--nproc", "2", "--output-dir", str(tmp_path / "two"), *common])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]

    two = tmp_path / "two"
    evs = events(two)
    starts = kinds(evs, "run_start")
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    assert (starts[0]["micro_batch"], starts[0]["grad_accum_per_rank"]) == (4, 1)
    assert starts[0]["tokens_per_step"] == 4 * 2 * 32
    steps = kinds(evs, "step")
    assert [e["step"] for e in steps] == list(range(1, 13)) and all(e["world_size"] == 2 for e in steps)
    assert kinds(evs, "run_end")[-1]["status"] == "completed"
    assert not (two / "training.lock").exists()
    assert "micro 4 x accum 1 x 2 ranks" in (two / "training.log").read_text()
    state = load_checkpoint(two / "checkpoint_12.pt")  # weights_only=True
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2
    assert not torch.equal(state["rng_per_rank"][0]["torch"], state["rng_per_rank"][1]["torch"])

    ref = {e["step"]: e["loss"] for e in kinds(events(tmp_path / "one"), "step")}
    for e in steps:
        assert abs(e["loss"] - ref[e["step"]]) <= 1e-4 * abs(ref[e["step"]]), (e["step"], e["loss"], ref[e["step"]])


def _worker_with_rank(launcher: psutil.Process, rank: str) -> psutil.Process:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == rank and "kssm_core" in " ".join(child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    pytest.fail(f"no worker with RANK={rank} among the launcher's children")


@pytest.mark.slow
def test_killing_one_rank_fails_the_run_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = launch(["--nproc", "2", "--output-dir", str(run), *TINY, "--max-steps", "100000", "--log-interval", "1",
                   "--eval-interval", "100000", "--save-interval", "100000", "--data-dir", str(tmp_path / "data")])
    try:
        wait_for_steps(run, proc, 3)
        _worker_with_rank(psutil.Process(proc.pid), "1").send_signal(signal.SIGKILL)
        t0 = time.time()
        proc.communicate(timeout=90)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert took < 90
    end = kinds(events(run), "run_end")[-1]
    assert end["status"] == "failed" and end["reason"]
    assert not (run / "training.lock").exists()
    assert not [p for p in psutil.Process().children(recursive=True) if "kssm_core" in " ".join(p.cmdline())]


@pytest.mark.slow
def test_sigterm_to_the_launcher_saves_and_resume_says_world_size_changed(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    proc = launch(["--nproc", "2", "--output-dir", str(run), *TINY, "--max-steps", "100000", "--log-interval", "1",
                   "--eval-interval", "100000", "--save-interval", "100000", "--data-dir", str(data)])
    try:
        wait_for_steps(run, proc, 3)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    evs = events(run)
    end = kinds(evs, "run_end")[-1]
    assert end["status"] == "interrupted" and "SIGTERM" in end["reason"]
    saved = kinds(evs, "checkpoint")[-1]
    assert saved["step"] == end["step"]
    assert not (run / "training.lock").exists()
    state = load_checkpoint(run / saved["path"])
    assert state["step"] == end["step"] and len(state["rng_per_rank"]) == 2

    # resume in one process: it continues from that step and says the world size changed
    assert kssm_main(["train", "--resume", "--output-dir", str(run), "--max-steps", str(end["step"] + 2),
                      "--quiet", "--data-dir", str(data)]) == 0
    evs = events(run)
    warn = [w for w in kinds(evs, "warning") if w["code"] == "world_size_changed"]
    assert len(warn) == 1 and "2 process" in warn[0]["message"]
    assert kinds(evs, "run_start")[-1]["start_step"] == end["step"]
    assert kinds(evs, "run_start")[-1]["world_size"] == 1


@pytest.mark.slow
def test_sigterm_to_rank0_alone_stops_every_rank_at_the_same_step(tmp_path):
    """The cockpit signals the PID in training.lock (rank 0): the ranks agree on the stop step."""
    run = tmp_path / "run"
    proc = launch(["--nproc", "2", "--output-dir", str(run), *TINY, "--max-steps", "100000", "--log-interval", "1",
                   "--eval-interval", "100000", "--save-interval", "100000", "--data-dir", str(tmp_path / "data")])
    try:
        wait_for_steps(run, proc, 3)
        lock_pid = json.loads((run / "training.lock").read_text())["pid"]
        assert lock_pid == kinds(events(run), "run_start")[-1]["pid"] != proc.pid  # rank 0 holds the lock
        os.kill(lock_pid, signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    end = kinds(events(run), "run_end")[-1]
    assert end["status"] == "interrupted"
    assert (run / f"checkpoint_{end['step']}.pt").exists() and not (run / "training.lock").exists()


@pytest.mark.slow
def test_resume_with_the_same_world_size_is_exact(tmp_path):
    """Phase noise on: each rank's RNG stream comes back from rng_per_rank, so a 2-process run resumed
    from its step-6 checkpoint logs the same losses for steps 7..12 as the uninterrupted run."""
    data, full, resumed = tmp_path / "data", tmp_path / "full", tmp_path / "resumed"
    common = [*TINY, "--log-interval", "1", "--eval-interval", "6", "--save-interval", "6", "--data-dir", str(data)]
    proc = launch(["--nproc", "2", "--output-dir", str(full), "--max-steps", "12", *common])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    resumed.mkdir()
    (resumed / "checkpoint_6.pt").write_bytes((full / "checkpoint_6.pt").read_bytes())
    proc = launch(["--nproc", "2", "--output-dir", str(resumed), "--resume", *common])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    want = {e["step"]: e["loss"] for e in kinds(events(full), "step") if e["step"] > 6}
    got = {e["step"]: e["loss"] for e in kinds(events(resumed), "step")}
    assert sorted(got) == list(range(7, 13))
    for s in got:
        assert got[s] == pytest.approx(want[s], rel=1e-6), s
    assert not [w for w in kinds(events(resumed), "warning") if w["code"] == "world_size_changed"]


# ---- precision -------------------------------------------------------------------------------------
def test_precision_resolution_on_cpu():
    from kssm_core.training.precision import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_precision("bf16", torch.device("cpu"))


def test_oscillator_bank_stays_fp32_under_bf16_autocast():
    from kssm_core.config import ModelConfig
    from kssm_core.model.kssm import KSSM

    model = KSSM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_oscillators=8, n_harmonics=4))
    seen = {}
    bank = model.banks[0]
    bank.readout.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].dtype, out=o.dtype))
    bank.to_params.register_forward_hook(lambda m, i, o: seen.update(params=o.dtype))
    ffn_out = {}
    model.blocks[0].ffn[0].register_forward_hook(lambda m, i, o: ffn_out.update(dtype=o.dtype))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 64, (2, 8)))
    assert ffn_out["dtype"] == torch.bfloat16  # autocast is really on outside the bank
    assert seen == {"params": torch.float32, "inp": torch.float32, "out": torch.float32}


def test_worker_argv_round_trips_through_the_real_parser():
    """Every `kssm train` flag survives the launcher's rebuild (a new flag named unlike its dest would not)."""
    from kssm_core.cli import build_parser

    parser = build_parser()
    argv = ["train", "--nproc", "2", "--stage", "2", "--runs-root", "r", "--resume", "--init-from", "a b.pt",
            "--preset", "small", "--corpus", "c.txt", "--tokenizer", "chars", "--data-dir", "d", "--vocab-size", "512", "--seed", "3",
            "--device", "cpu", "--learning-rate", "0.0003", "--lambda-reg", "0.02", "--batch-size", "4",
            "--grad-accum", "2", "--seq-len", "64", "--warmup-steps", "5", "--log-interval", "2",
            "--eval-interval", "7", "--save-interval", "9", "--eval-batches", "3", "--keep-checkpoints", "4",
            "--monostable", "--heartbeat-seconds", "2.5", "--quiet", "--precision", "fp32", "--max-steps", "50",
            "--output-dir", "o", "--tensorboard", "tb dir"]
    first = parser.parse_args(argv)
    unset = [k for k, v in vars(first).items() if v is None]
    assert not unset, f"add these new train flags to this test: {unset}"
    again = parser.parse_args(["train", *worker_argv(first)])
    a, b = vars(first), vars(again)
    a.pop("nproc"), b.pop("nproc")
    assert a == b


@pytest.mark.slow
def test_plain_torchrun_refuses_on_every_rank_when_the_lock_is_held(tmp_path):
    """The documented multi-node form (plain torchrun) on one node: rank 0 finds a live lock, all ranks exit 2."""
    from kssm_core.runfolder.lock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock(run)
    lock.acquire()  # held by this (live) test process
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "kssm_core",
             "train", "--output-dir", str(run), *TINY, "--max-steps", "3", "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode != 0
        assert "another trainer owns this folder" in proc.stderr + proc.stdout
        assert "exitcode  : 2" in proc.stderr  # torchrun's failure report (the first rank out may stop the other)
        assert json.loads((run / "training.lock").read_text())["pid"] == os.getpid()
        assert not (run / "events.jsonl").exists()
    finally:
        lock.release()
