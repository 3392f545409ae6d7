"""Several processes, one run: torchrun (torch.distributed.run) + DistributedDataParallel plumbing.

`kssm train --nproc N` re-runs itself under torchrun on this machine (`launch`); several machines run
`torchrun ... -m kssm_core train ...` themselves (docs/distributed.md). Inside each worker `Dist`
says who we are (WORLD_SIZE / RANK / LOCAL_RANK from torchrun) and does the few collectives the
trainer needs. A single process gets a `Dist` whose collectives are no-ops, so the trainer has one
code path.

Rules kept here:
- rank 0 alone writes the run folder (events, training.log, checkpoints, lock); the others get
  `NullEventWriter` / `NullTextLog`.
- the global batch never depends on the world size (`split_batch`), and every rank walks the same
  global window order, taking its own micro-batches of each step (`ShardSampler`): the union of the
  ranks' micro-batches is exactly the one-process batch, and the data position is world-size free.
- every collective has a bounded timeout; a dead peer surfaces as an exception, never a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from kssm_core.training.data import BatchSampler
from kssm_core.runfolder import layout

TRAIN_TIMEOUT_S = float(os.environ.get("KSSM_DIST_TIMEOUT_S", "60"))
"""Training collectives (gradients, metrics): a peer silent this long is taken as dead."""
CONTROL_TIMEOUT_S = float(os.environ.get("KSSM_DIST_CONTROL_TIMEOUT_S", "1800"))
"""The CPU control group waits while rank 0 alone builds the token cache, evaluates samples or saves."""
NO_NOISE_ENV = "KSSM_NO_PHASE_NOISE"
"""Test/debug hook: "1" turns the oscillators' Lorentzian phase noise off (each rank draws its own noise,
so only without it can a 2-process loss curve be compared number for number with a 1-process one)."""
RANK_SEED_STRIDE = 1_000_003


class DistError(RuntimeError):
    """The processes cannot agree (a bad split, a different resume step); one line says why."""


# ---- who we are ------------------------------------------------------------------------------------
def env_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) outside torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 1, 0, 0


def under_torchrun() -> bool:
    return env_world()[0] > 1


def split_batch(batch_size: int, grad_accum: int, world: int) -> tuple[int, int]:
    """(micro-batch, accumulation per rank) so that micro x accum x world = batch_size x grad_accum.

    Splits the accumulation when it divides; otherwise shrinks the micro-batch (largest that fits)."""
    if world <= 1:
        return batch_size, grad_accum
    if grad_accum % world == 0:
        return batch_size, grad_accum // world
    total = batch_size * grad_accum
    if total % world:
        raise DistError(
            f"the global batch {batch_size} x {grad_accum} = {total} sequences cannot be split over {world} processes; "
            f"choose --batch-size and --grad-accum whose product is a multiple of {world}"
        )
    per_rank = total // world
    micro = max(m for m in range(1, batch_size + 1) if per_rank % m == 0)
    return micro, per_rank // micro


class ShardSampler(BatchSampler):
    """One rank's share of the one-process batch order.

    Every rank keeps the same global cursor (the one-process sampler's, with micro-batches of `micro`
    windows); per micro-step the world's ranks take consecutive micro-batches and rank r keeps the r-th,
    skipping the others' windows without reading them. So the ranks' union is the single process's step,
    micro-batches group the same windows when the micro-batch is not shrunk, and `state_dict()` is the
    one-process state: resuming with any world size continues the same data order.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, micro: int, seed: int, rank: int, world: int):
        super().__init__(tokens, seq_len, micro, seed)  # the global order (rank 0 of 1)
        self.shard_rank, self.shard_world = rank, world

    def _skip(self, n_windows: int) -> None:
        for _ in range(n_windows):  # mirrors next_batch's epoch wrap, window by window
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._epoch_order(self.epoch)
            self.cursor += 1

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._skip(self.shard_rank * self.batch_size)
        batch = super().next_batch()
        self._skip((self.shard_world - 1 - self.shard_rank) * self.batch_size)
        return batch


class LossModule(torch.nn.Module):
    """DDP hooks run in forward(): this forward is the model's loss, returned as plain tensors."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, y, lambda_reg: float):
        total, ce, out = self.model.loss(x, y, lambda_reg)
        return total, ce, out.reg, out.R, out.u_val


class NullEventWriter:
    """What ranks other than 0 write events to: nothing."""

    last_emit = 0.0

    def emit(self, event: str, **fields: Any) -> dict:
        return {"event": event, **fields}

    def sync(self) -> None: ...

    def close(self) -> None: ...


class NullTextLog:
    def write(self, line: str, echo: bool = True) -> None: ...

    def close(self) -> None: ...


def _is_collective_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        k in text for k in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "timed out", "Timeout")
    )


@dataclass
class Dist:
    """This process's place in the job; every method is a cheap no-op when world == 1."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    control: Any = None  # CPU (gloo) group with a long timeout, for flags, RNG states and waits on rank 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- setup -------------------------------------------------------------------------------------
    @classmethod
    def init_from_env(cls) -> "Dist":
        world, rank, local = env_world()
        if world <= 1:
            return cls()
        # One default group for CPU (gloo) and CUDA (nccl) tensors, so --device cpu works on a GPU box too.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TRAIN_TIMEOUT_S))
        control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=CONTROL_TIMEOUT_S))
        return cls(world, rank, local, control)

    def teardown(self) -> None:
        """Wait for the others (rank 0 finishes its files first), then leave. Never raises, never hangs."""
        if self.world <= 1 or not dist.is_initialized():
            return
        with contextlib.suppress(Exception):
            dist.monitored_barrier(group=self.control, timeout=datetime.timedelta(seconds=30), wait_all_ranks=True)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()

    def device(self, device: torch.device) -> torch.device:
        """The CUDA device of this rank (one GPU per local rank)."""
        if device.type == "cuda" and self.world > 1:
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the loop calls: LossModule, under DDP when world > 1. Applies the no-noise hook."""
        no_noise = os.environ.get(NO_NOISE_ENV) == "1"
        if no_noise:
            for bank in getattr(model, "banks", []):
                bank.noise = False
        module = LossModule(model)
        if self.world <= 1:
            return module
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # The only buffer (the harmonic numbers) is a constant: no need to sync it at every forward.
        newer = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        return DDP(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=no_noise,  # without noise delta_param gets no gradient
            **({"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}),
        )

    def seed_rank(self, seed: int) -> None:
        """Ranks > 0 draw their own phase noise; rank 0 keeps the one-process stream."""
        if self.rank == 0:
            return
        s = seed + RANK_SEED_STRIDE * self.rank
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % (2**32))

    # ---- collectives -------------------------------------------------------------------------------
    def agree(self, ok: bool) -> bool:
        """True only if every rank says True (start after the lock, ...)."""
        if self.world <= 1:
            return ok
        flag = torch.tensor([0 if ok else 1], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        return int(flag.item()) == 0

    def agree_stop(self, reason: str | None) -> str | None:
        """The stop decision, the same on every rank: the highest signal number any rank received."""
        if self.world <= 1:
            return reason
        num = int(getattr(signal.Signals, reason, 0)) if reason else 0
        flag = torch.tensor([num], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        got = int(flag.item())
        return None if got == 0 else (reason if num == got else signal.Signals(got).name)

    def mean_(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Average device scalars over the ranks in one all_reduce (used at log intervals only)."""
        if self.world <= 1:
            return values
        stacked = torch.stack([v.float() for v in values])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return list((stacked / self.world).unbind())

    def sum_floats(self, values: list[float]) -> list[float]:
        if self.world <= 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.control)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's obj on rank 0 (None elsewhere); [obj] alone."""
        if self.world <= 1:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.control)
        return out

    def same_everywhere(self, what: str, value: Any) -> None:
        if self.world <= 1:
            return
        values = [None] * self.world
        dist.all_gather_object(values, value, group=self.control)
        if any(v != values[0] for v in values):
            raise DistError(f"the processes disagree on {what}: {values}; use a shared run folder for every node")

    def wait_for_main(self) -> None:
        """Others wait here (patiently, on the CPU group) while rank 0 works alone."""
        if self.world > 1:
            dist.barrier(group=self.control)

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the body first (builds the token cache), then the others (they load it)."""
        if not self.is_main:
            self.wait_for_main()
        try:
            yield
        finally:
            if self.is_main:
                self.wait_for_main()

    def failure_reason(self, exc: BaseException) -> str:
        if self.world <= 1:
            return f"{type(exc).__name__}: {exc}"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if self.world > 1 and _is_collective_error(exc):
            return f"another process of the {self.world} died or stopped answering ({type(exc).__name__}: {first})"
        return f"{type(exc).__name__}: {first}"


SINGLE = Dist()


# ---- the launcher: kssm train --nproc N ---------------------------------------------------------------
def worker_argv(args) -> list[str]:
    """`kssm train` flags for the workers, rebuilt from the parsed namespace without --nproc."""
    argv: list[str] = []
    for dest, value in sorted(vars(args).items()):
        if dest in ("func", "command", "nproc") or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def _run_end_since(events: Path, since: float) -> tuple[bool, str | None]:
    """(a run_start at or after `since` exists, the status of the run_end that follows it)."""
    started, status = False, None
    try:
        lines = events.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False, None
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("event") == "run_start" and float(rec.get("t") or 0) >= since:
            started, status = True, None
        elif rec.get("event") == "run_end" and started:
            status = rec.get("status")
    return started, status


def finish_after_workers(run_dir: Path, since: float, code: int) -> int:
    """After torchrun exits: the exit code from the run's own run_end; if rank 0 died before writing it,
    write `run_end failed` for it and remove its (now stale) lock, so the folder never looks alive."""
    from kssm_core.runfolder.events import EventWriter
    from kssm_core.runfolder.lock import lock_state, read_lock, unlock

    started, status = _run_end_since(run_dir / layout.EVENTS, since)
    if status is not None:
        return {"completed": 0, "interrupted": 130}.get(status, 2 if code == 2 else 1)  # 2: refused to start
    if not started:
        return code if code else 1
    writer = EventWriter(run_dir / layout.EVENTS)
    try:
        writer.emit(
            "run_end", status="failed", reason=f"a training process died (torchrun exit code {code})",
            advice="see trainer.out / stderr; resume with --resume", step=None,
        )
        writer.sync()
    finally:
        writer.close()
    if lock_state(read_lock(run_dir))[0] == "stale":
        with contextlib.suppress(Exception):
            unlock(run_dir)
    return 1


def launch(nproc: int, args, run_dir: str | Path) -> int:
    """Run `kssm train` under torchrun with nproc workers; forward SIGINT/SIGTERM; return the run's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "kssm_core", "train", *worker_argv(args)]
    since = time.time() - 1.0
    # A session of its own: a terminal's Ctrl-C reaches the launcher once, not every process twice.
    child = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)  # torchrun passes it to every worker; they stop at the same step

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return finish_after_workers(Path(run_dir), since, code)
