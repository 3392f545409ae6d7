"""Helpers for the core tests: small trainer settings, running `python -m kssm_core ...` as a child
process, reading a run folder's events, and crafting a hostile checkpoint.

A module with its own name (not conftest) so `from kssm_testkit import ...` works whichever
conftest.py pytest loaded last (tests/tui has its own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Small and fast, but the real code path: tiny preset, short windows, one micro-batch.
TINY_ARGS = (
    "--preset", "tiny", "--device", "cpu", "--seq-len", "32", "--batch-size", "4",
    "--grad-accum", "1", "--eval-batches", "2", "--quiet",
)


def child_env() -> dict[str, str]:
    """One thread per child: the machine has 2 shared cores, and fixed threading keeps floats reproducible."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("KSSM_DEBUG", None)
    return env


def kssm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kssm_core", *args]


def train_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["train", "--output-dir", str(out), "--data-dir", str(data_dir), *TINY_ARGS, *extra]


def run_kssm(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m kssm_core ARGS` to completion; capture its output as text."""
    return subprocess.run(
        kssm_cmd(*args), capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=cwd or REPO
    )


def start_kssm(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """Start `python -m kssm_core ARGS` in the background (stdout/stderr captured)."""
    return subprocess.Popen(
        kssm_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=cwd or REPO
    )


def read_events(run_dir: Path) -> list[dict]:
    """Every parseable line of events.jsonl (a partial last line from a killed writer is skipped)."""
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def wait_for_event(run_dir: Path, proc: subprocess.Popen, pred, timeout: float = 60.0, poll: float = 0.01) -> dict:
    """Poll events.jsonl until an event satisfies pred; fail if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in read_events(run_dir):
            if pred(ev):
                return ev
        if proc.poll() is not None:
            for ev in read_events(run_dir):  # it may have written the event just before exiting
                if pred(ev):
                    return ev
            out, err = proc.communicate()
            raise AssertionError(f"trainer exited ({proc.returncode}) before the event appeared:\n{err[-2000:]}")
        time.sleep(poll)
    proc.kill()
    raise AssertionError("timed out waiting for an event")


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def tiny_config(out: Path, data_dir: Path, **over):
    """A TrainConfig for in-process Trainer runs, with the same small shape as TINY_ARGS."""
    from kssm_core.config import TrainConfig

    base = dict(
        output_dir=str(out), data_dir=str(data_dir), preset="tiny", device="cpu", seq_len=32, batch_size=4,
        grad_accum=1, eval_batches=2, max_steps=4, log_interval=1, sample_tokens=8,
    )
    base.update(over)
    return TrainConfig(**base)


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path, marker) -> None:
    """A .pt file whose pickle would run `touch marker` if loaded with weights_only=False."""
    import torch

    torch.save({"step": 5, "model_state": {"w": torch.zeros(2)}, "payload": Evil(marker)}, path)
