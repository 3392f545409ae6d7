"""The training loop: load(); while should_continue: step; save(). Signal handlers only set a flag.

Writes the run folder described in docs/run-folder.md. Exit codes: 0 completed,
1 failed (NaN, crash, bad data), 2 refused to start (lock held, bad arguments), 130 interrupted.
Checkpoint writing (disk-room check, atomic saves, pruning) lives in kssm_core.training.saving, RNG capture in kssm_core.training.rng.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from kssm_core.training import checkpoint as ckpt
from kssm_core.training.archive import ArchiveError, archive_files, archive_previous_run, previous_run_files
from kssm_core.runfolder.atomic import atomic_write_bytes
from kssm_core.config import STAGE_TARGETS, ModelConfig, TrainConfig, model_config_for
from kssm_core.training.corpus import CorpusError, load_corpus
from kssm_core.training.data import BatchSampler, ForeignDataDir, Tokenizer, prepare_tokens, val_batches
from kssm_core.training.distributed import SINGLE, Dist, NullEventWriter, NullTextLog, ShardSampler, split_batch
from kssm_core.runfolder.events import STEP_HEADER, EventWriter, TextLog, format_step_line
from kssm_core.runfolder.foreign import enclosing_foreign_run, foreign_run
from kssm_core.runfolder.lock import LOCK_NAME, LockHeld, RunLock, lock_state, read_lock
from kssm_core.model.shapes import ShapeError, checkpoint_model_config, clean_state_dict, describe, load_error_line, same_body
from kssm_core.training.tokenizer_choice import (
    TokenizerError, has_tokenizer_record, hint_for_vocab, resolve_tokenizer, tokenizer_from_record,
)
from kssm_core.model.kssm import KSSM
from kssm_core.training.precision import autocast, resolve_precision
from kssm_core.training.rng import rng_for_rank, set_rng_state
from kssm_core.training.saving import CheckpointSaver
from kssm_core.runbook import cmdline
from kssm_core.runfolder import layout

EXIT_COMPLETED, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (try --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: MPS is not available here (try --device cpu)")
    return torch.device(name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to the peak, then cosine to min_lr_ratio x peak at max_steps (as a multiplier)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: KSSM, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norms are left alone); fused kernels on CUDA."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )


def restore(found: ckpt.FoundCheckpoint, model: KSSM, opt, sched, sampler, dist: Dist, lr: float) -> tuple[int, float]:
    """Load a resume checkpoint into the freshly built run; returns (step, best_val_loss).

    `lr` is the resolved --learning-rate: an override on resume takes effect instead of the saved one.
    """
    model.load_state_dict(found.state["model_state"])
    opt.load_state_dict(found.state["optimizer_state"])
    sched.load_state_dict(found.state["scheduler_state"])
    for group in opt.param_groups:
        group["initial_lr"] = lr
    sched.base_lrs = [lr for _ in opt.param_groups]
    sampler.load_state_dict(found.state["data_state"])
    rng = rng_for_rank(found.state, dist.rank)
    if rng is not None:
        set_rng_state(rng)
    return int(found.state["step"]), float(found.state.get("best_val_loss", float("inf")))


class _Refusal(Exception):
    """The run cannot start as asked (a checkpoint or tokenizer that does not fit); the message is one line."""


def one_line(text: str, limit: int = 400) -> str:
    """A reason for run_end / training.log: its first non-empty line, cut to `limit` characters."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else str(text).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class Progress:
    """What the heartbeat reports: where inside the current step the loop is."""

    step: int = 0
    phase: str = "starting"
    micro: int = 0
    accum: int = 1


class StopFlag:
    """SIGINT/SIGTERM set it; the loop checks it between steps. A second signal stops at once."""

    def __init__(self):
        self.reason: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return self.reason is not None


class Trainer:
    def __init__(
        self, cfg: TrainConfig, echo: TextIO | None = sys.stdout, overrides_on_resume: dict | None = None,
        dist: Dist | None = None, sink=None, adopt: bool = False,
    ):
        self.sink = sink  # called with each run_start / step / eval / sample / run_end record (--tensorboard)
        self.requested = cfg
        self.adopt = adopt  # --adopt: move a foreign run's files to previous/ instead of refusing (not a run setting)
        self._found, self._recorded = None, None
        self.dist = dist or SINGLE  # torchrun workers: rank 0 alone writes the run folder
        self.echo = echo
        self.overrides = overrides_on_resume or {}
        self.out = Path(cfg.output_dir)
        self.stop = StopFlag()
        self.progress = Progress()
        self.events: EventWriter | None = None
        self.log: TextLog | None = None
        self._hb_stop = threading.Event()

    # ---- lifecycle -------------------------------------------------------------------------------
    def run(self, install_signals: bool = True) -> int:
        inside = self._inside_foreign_run()
        if inside:  # before mkdir: not even an empty folder is made inside another program's run
            print(f"kssm train: {inside}", file=sys.stderr)
            return EXIT_REFUSED
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._say(f"cannot create {self.out}: {exc.strerror}")
            return EXIT_REFUSED
        main = self.dist.is_main
        # Another program's run: nothing of it is touched (not even its lock) unless --adopt moves it aside.
        refusal, adopted = self._foreign_gate() if main else (None, None)
        if not self.dist.agree(refusal is None):
            if refusal:
                print(f"kssm train: {refusal}", file=sys.stderr)
            return EXIT_REFUSED
        # The run's own trainer alive without its lock (removed by hand, as the runbook suggests when it looks
        # stale): a second writer would corrupt the folder. Refused before anything is written to it.
        alive = self._run_trainer_alive() if main else None
        if not self.dist.agree(alive is None):
            if alive:
                print(f"kssm train: {alive}", file=sys.stderr)
            return EXIT_REFUSED
        lock = RunLock(self.out)
        stale, refused = None, False
        try:
            stale = lock.acquire() if main else None
        except LockHeld as exc:
            foreign = lock_state(read_lock(self.out))[0] == "foreign"  # nothing here can prove it stale
            self._say(str(exc) + (f" (if that trainer is gone for good: {cmdline.text(cmdline.unlock(self.out, force=True))})" if foreign else ""))
            refused = True
        except OSError as exc:  # e.g. a read-only run folder: no temp file for the lock
            self._say(f"cannot create {self.out / LOCK_NAME}: {exc.strerror or exc}")
            refused = True
        if not self.dist.agree(not refused):  # every rank refuses when rank 0 could not take the lock
            lock.release()
            return EXIT_REFUSED
        # What --resume would continue from: every rank reads it before rank 0 may move the folder's run aside.
        self._found, self._recorded = self._find_resumable() if self.requested.resume else (None, None)
        self.dist.agree(True)  # a barrier
        if install_signals:
            self.stop.install()
        try:
            # A fresh start, or a --resume with nothing of ours to resume: the folder's old run moves aside first.
            nothing_to_resume = self._found is None or self._found.step < 0
            archived = self._archive_previous_run() if main and nothing_to_resume else None
        except (ArchiveError, OSError) as exc:
            self._say(f"cannot move the previous run in {self.out} aside: {getattr(exc, 'strerror', None) or exc}")
            lock.release()
            return EXIT_REFUSED
        self.events = EventWriter(self.out / layout.EVENTS) if main else NullEventWriter()
        if main and self.sink is not None:
            from kssm_core.reports.tfevents import TeeEvents
            self.events = TeeEvents(self.events, self.sink)
        self.log = TextLog(self.out / layout.TRAINING_LOG, echo=self.echo) if main else NullTextLog()
        hb = threading.Thread(target=self._heartbeat, name="kssm-heartbeat", daemon=True)
        hb.start()
        try:
            if adopted is not None:
                dest, names = adopted
                self._warn("foreign_run_adopted",
                           f"this folder held a run written by another trainer: moved {', '.join(names)} to {dest}",
                           "nothing lost: its files are there byte for byte; kssm status and kssm clean now see only this run")
            if archived is not None:
                self._warn("previous_run_archived", f"this folder held an earlier run: moved its files to {archived}",
                           "nothing lost; `kssm status` and `kssm clean` now see only this run")
            if stale is not None:
                self._warn("stale_lock", f"took over a stale lock left by {stale.describe}", "none needed")
            for path in (ckpt.remove_stale_temps(self.out) if main else []):  # left by a save that was killed
                self._say(f"removed {path.name}: the temp file of an unfinished save")
            return self._run_locked()
        except KeyboardInterrupt:
            self._end("interrupted", "second signal: stopped without a final save")
            return EXIT_INTERRUPTED
        except Exception as exc:  # the run must always end with a run_end line and a released lock
            tb = traceback.format_exc()
            sys.stderr.write(tb)
            self._end("failed", self.dist.failure_reason(exc), advice="see trainer.err / stderr for the traceback")
            return EXIT_FAILED
        finally:
            self._hb_stop.set()
            hb.join(timeout=2)
            lock.release()
            self.events.close()
            self.log.close()

    def _inside_foreign_run(self) -> str | None:
        """Why --output-dir may not be used (one line) when a folder above it holds another trainer's run; the
        folder itself being foreign is _foreign_gate's case (--adopt can take that one over, never a parent)."""
        above = self.out.absolute().parent
        found = enclosing_foreign_run(above) if above != self.out.absolute() else None
        if found is None or not found.whole:
            return None
        return (f"--output-dir {self.out} is inside {found.run_dir}, which holds {found.what()}: kssm writes "
                f"nothing there; choose an --output-dir outside it")

    def _foreign_gate(self) -> tuple[str | None, tuple[Path, list[str]] | None]:
        """(refusal line, None) for a foreign folder without --adopt; (None, (archive, names)) once --adopt moved
        its files; (None, None) for a folder of ours. Runs before our lock: even a foreign lock stays untouched."""
        found = foreign_run(self.out)
        if found is None:
            return None, None
        if not self.adopt:
            return found.refusal(self._tokenizer_hint(found.newest_weights())), None
        state, reason = lock_state(read_lock(self.out))  # nothing moves while a trainer may be running here
        if state == "live":
            return f"cannot adopt {self.out}: its {LOCK_NAME} is {reason}: that trainer is still running; stop it first", None
        if state == "foreign":
            return f"cannot adopt {self.out}: {reason}; if its trainer is gone for good, move that lock away by hand", None
        try:
            dest = archive_files(self.out, found.files)
        except (ArchiveError, OSError) as exc:
            return f"cannot move the foreign run in {self.out} aside: {getattr(exc, 'strerror', None) or exc}", None
        self._follow_moved(found.files, dest)
        return None, (dest, [p.name for p in found.files])

    def _tokenizer_hint(self, weights: Path | None) -> str | None:
        """`--tokenizer chars` when the suggested checkpoint holds no tokenizer (a reference one), from its V."""
        if weights is None or self.requested.tokenizer:
            return self.requested.tokenizer and f"--tokenizer {self.requested.tokenizer}"
        try:
            state = ckpt.load_checkpoint(weights, mmap=True)
            if has_tokenizer_record(state):
                return None
            return hint_for_vocab(checkpoint_model_config(state)[0].vocab_size).split(" (")[0]
        except (ckpt.CheckpointError, ShapeError):
            return "--tokenizer SPEC"

    def _find_resumable(self) -> tuple[ckpt.FoundCheckpoint | None, dict | None]:
        """The newest checkpoint --resume can continue from (step -1: only unusable ones), and, when there is
        none, the settings this folder's run was started with."""
        found = ckpt.newest_loadable(self.out, required=ckpt.RESUME_KEYS)
        usable = found is not None and found.step >= 0
        return found, (None if usable else recorded_config(self.out))

    def _follow_moved(self, moved: list[Path], dest: Path) -> None:
        """--init-from pointed at a file just moved to previous/: load it from its new place."""
        init = self.requested.init_from
        if init and os.path.abspath(init) in {os.path.abspath(p) for p in moved}:
            self.requested = dataclasses.replace(self.requested, init_from=str(dest / Path(init).name))
        rec = self._recorded
        if rec and rec.get("init_from") and os.path.abspath(rec["init_from"]) in {os.path.abspath(p) for p in moved}:
            rec["init_from"] = str(dest / Path(rec["init_from"]).name)

    def _archive_previous_run(self) -> Path | None:
        """A fresh start into a folder holding a run: move that run to previous/<UTC time>/ first."""
        moved = previous_run_files(self.out)
        dest = archive_previous_run(self.out)
        if dest is not None:
            self._follow_moved(moved, dest)
        return dest

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log.write(line)
        else:
            print(line, file=sys.stderr)

    def _warn(self, code: str, message: str, advice: str) -> None:
        self.events.emit("warning", code=code, message=message, advice=advice)
        self._say(f"WARNING [{code}] {message} -> {advice}")

    def _end(self, status: str, reason: str, advice: str | None = None, step: int | None = None, **extra: Any) -> None:
        reason = one_line(reason)
        self.events.emit("run_end", status=status, reason=reason, advice=advice,
                         step=step if step is not None else self.progress.step, **extra)
        self.events.sync()
        self._say(f"RUN END: {status} ({reason})" + (f" -> {advice}" if advice else ""))

    def _heartbeat(self) -> None:
        period = max(0.5, float(self.requested.heartbeat_seconds))
        while not self._hb_stop.wait(period):
            p = self.progress
            self.events.emit("heartbeat", step=p.step, phase=p.phase, micro=p.micro, accum=p.accum)

    # ---- setup -----------------------------------------------------------------------------------
    def _resolve_config(self) -> tuple[TrainConfig, ckpt.FoundCheckpoint | None]:
        cfg = self.requested
        found = None
        if cfg.resume:
            found = self._found
            for line in (found.skipped if found else []):
                self._warn("checkpoint_skipped", line, "resuming from an older checkpoint")
            if found is not None and found.step < 0:
                found = None
            if found is None:
                recorded = self._recorded
                if recorded is not None:  # killed before its first checkpoint: start over with the settings it had
                    cfg = self._with_overrides(TrainConfig.from_dict(recorded), cfg.output_dir)
                    start = f" from the original --init-from {cfg.init_from}" if cfg.init_from else " from step 0"
                    self._warn("nothing_to_resume", f"no loadable checkpoint in {self.out}",
                               f"no checkpoint yet: starting over with the run's original settings{start}")
                else:
                    self._warn("nothing_to_resume", f"no loadable checkpoint in {self.out}", "starting from step 0")
            else:
                cfg = self._with_overrides(TrainConfig.from_dict(found.state["config"]), cfg.output_dir)
        return cfg.resolve(), found

    def _with_overrides(self, saved: TrainConfig, output_dir: str) -> TrainConfig:
        """The run's saved settings with the flags typed on this --resume applied on top (and said so)."""
        changed = []
        for key, value in self.overrides.items():
            if key in ("resume", "output_dir"):
                continue
            if getattr(saved, key, None) != value:
                changed.append(f"{key} {getattr(saved, key, None)!r} -> {value!r}")
                setattr(saved, key, value)
        saved.resume, saved.output_dir = True, output_dir
        if changed:
            self._warn("resume_overrides", "changed on resume: " + ", ".join(changed), "resume is exact only without changes")
        return saved

    def _run_locked(self) -> int:
        try:
            cfg, found = self._resolve_config()
        except ValueError as exc:  # the saved settings with this resume's flags do not validate
            return self._refuse(str(exc))
        self.cfg = cfg
        try:
            device = self.dist.device(pick_device(cfg.device))
            self.precision = resolve_precision(cfg.precision, device)
            self.micro, self.accum = split_batch(cfg.batch_size, cfg.grad_accum, self.dist.world)
        except ValueError as exc:  # a bad --device is a bad argument: one line, exit 2, no traceback
            self._end("failed", str(exc), advice="pick another --device / --precision, or a batch that splits over the processes")
            return EXIT_REFUSED
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))

        self.progress.phase = "data"
        try:
            init_state, init_cfg = self._load_init(cfg) if cfg.init_from and found is None else (None, None)
            with self.dist.main_first():  # rank 0 builds the token cache, the others then load it
                data = self._load_data(cfg, found.state if found is not None else init_state)
        except _Refusal as exc:  # a checkpoint or tokenizer that cannot fit: one line, exit 2, no traceback
            return self._refuse(str(exc))
        except (CorpusError, ckpt.CheckpointError) as exc:
            self._end("failed", str(exc), advice="check --corpus / --init-from, then `kssm data check`")
            return EXIT_FAILED

        try:
            if found is not None:
                model_cfg = ModelConfig.from_dict(found.state["model_config"])
            elif init_cfg is not None:
                model_cfg = self._fit_init(cfg, init_cfg, data.vocab_size)
            else:
                model_cfg = model_config_for(cfg.preset or "tiny", data.vocab_size, bistable=not cfg.monostable)
            model = KSSM(model_cfg).to(device)
            if init_state is not None:
                try:
                    model.load_state_dict(clean_state_dict(init_state["model_state"]))
                except RuntimeError as exc:  # torch's message is one line per tensor: keep the first
                    raise _Refusal(f"{cfg.init_from}: its weights do not fit {describe(model_cfg)} "
                                   f"({load_error_line(exc)})") from exc
        except _Refusal as exc:
            return self._refuse(str(exc))
        opt = build_optimizer(model, cfg, device)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))
        try:
            if self.dist.world > 1:  # each rank its own micro-batches of the one-process order
                sampler = ShardSampler(data.train, cfg.seq_len, self.micro, cfg.seed, self.dist.rank, self.dist.world)
            else:
                sampler = BatchSampler(data.train, cfg.seq_len, cfg.batch_size, cfg.seed)
        except CorpusError as exc:  # too few tokens for one batch: bad data, one line, no traceback
            self._end("failed", str(exc), advice="use a larger --corpus or a smaller --seq-len / --batch-size")
            return EXIT_FAILED
        step, best_val = 0, float("inf")
        self.dist.seed_rank(cfg.seed)  # after the model's init: ranks > 0 draw their own phase noise
        if found is not None:
            step, best_val = restore(found, model, opt, sched, sampler, self.dist, cfg.learning_rate)
            saved_world = int(found.state.get("world_size", 1))
            if saved_world != self.dist.world:
                self._warn(
                    "world_size_changed",
                    f"checkpoint saved by {saved_world} process(es), resuming with {self.dist.world}: same data order "
                    f"and global batch, but the phase-noise RNG streams differ from an uninterrupted run",
                    f"resume with --nproc {saved_world} for an exact continuation",
                )

        self.model, self.opt, self.sched, self.sampler, self.data, self.device = model, opt, sched, sampler, data, device
        self.best_val = best_val
        self.dist.same_everywhere("the step to resume from", step)
        self.step_model = self.dist.wrap(model, device)  # LossModule (under DDP when world > 1)
        self.saver = CheckpointSaver(
            self.out, cfg, self.dist, model=model, opt=opt, sched=sched, sampler=sampler, data=data,
            progress=self.progress, events=self.events, say=self._say, warn=self._warn,
            last_bytes=found.path.stat().st_size if found is not None else None,
            saved_step=step if found is not None else None,  # resumed at the max: already saved
        )
        if self.dist.is_main:
            self._write_config_json(model_cfg)
        self.events.emit(
            "run_start",
            config=cfg.to_dict(),
            model_config=model_cfg.to_dict(),
            device=str(device),
            parameters=model.num_parameters(),
            pid=os.getpid(),
            host=socket.gethostname(),
            resumed_from=str(found.path) if found is not None else None,
            start_step=step,
            max_steps=cfg.max_steps,
            stage=cfg.stage,
            world_size=self.dist.world,
            micro_batch=self.micro,
            grad_accum_per_rank=self.accum,
            precision=self.precision,
            tokens_per_step=cfg.batch_size * cfg.grad_accum * cfg.seq_len,
            data_dir=str(data.folder),
            torch=torch.__version__,
        )
        self._say(
            f"K-SSM v3 | {model.num_parameters():,} parameters | device {device} | steps {step} -> {cfg.max_steps} "
            f"| batch {cfg.batch_size}x{cfg.grad_accum}x{cfg.seq_len}"
            + (f" (micro {self.micro} x accum {self.accum} x {self.dist.world} ranks)" if self.dist.world > 1 else "")
            + f" | {self.precision} | lr {cfg.learning_rate} | lambda_reg {cfg.lambda_reg}"
            + (f" | resumed from {found.path.name}" if found is not None else "")
        )
        self._say(STEP_HEADER)
        return self._loop(step)

    def _load_init(self, cfg: TrainConfig) -> tuple[dict, ModelConfig]:
        """--init-from's state and architecture (its model_config, else read from its tensor shapes)."""
        state = ckpt.load_checkpoint(cfg.init_from)
        try:
            init_cfg, _source = checkpoint_model_config(state, bistable=not cfg.monostable)
        except ShapeError as exc:
            raise _Refusal(f"{cfg.init_from}: {exc}") from exc
        if not cfg.tokenizer and not has_tokenizer_record(state):  # a reference checkpoint embeds none
            raise _Refusal(f"{cfg.init_from} holds no tokenizer (not written by kssm): pass "
                           f"{hint_for_vocab(init_cfg.vocab_size)}")
        return state, init_cfg

    def _fit_init(self, cfg: TrainConfig, init_cfg: ModelConfig, vocab: int) -> ModelConfig:
        """The model --init-from builds: the checkpoint's own shape; a typed --preset must agree with it."""
        if cfg.preset is not None:
            wanted = model_config_for(cfg.preset, vocab, bistable=init_cfg.bistable)
            if not same_body(init_cfg, wanted):
                raise _Refusal(f"{cfg.init_from} is {describe(init_cfg)}; --preset {cfg.preset} builds "
                               f"{describe(wanted, vocab=False)}: drop --preset to take the checkpoint's")
        if vocab > init_cfg.vocab_size:
            raise _Refusal(f"the tokenizer has {vocab:,} tokens but {cfg.init_from} is {describe(init_cfg)}: "
                           f"pass {hint_for_vocab(init_cfg.vocab_size)}")
        if cfg.seq_len > init_cfg.max_seq_len:
            raise _Refusal(f"--seq-len {cfg.seq_len} exceeds the position table of {cfg.init_from} "
                           f"({init_cfg.max_seq_len} rows): use --seq-len {init_cfg.max_seq_len} or less")
        return init_cfg

    def _run_trainer_alive(self) -> str | None:
        """One line when the newest run_start's own process is still alive and holds no lock, else None."""
        from kssm_core.runbook.judge import process_state
        from kssm_core.runbook.probe import probe
        from kssm_core.runfolder.history import RunHistory
        from kssm_core.runfolder.runlog import newest_run_markers

        start, end = newest_run_markers(self.out / layout.EVENTS)  # no fold of the whole log at start-up
        if start is None:
            return None
        history = RunHistory()
        history.extend([start] + ([end] if end is not None else []))
        facts = probe(self.out, history)
        if facts.lock == "live" or process_state(history, facts) != "alive":
            return None  # a live lock is refused by the lock itself, with its own message
        pid = facts.run_pid or facts.pid
        return (f"{self.out}: the run's trainer (PID {pid}) is still alive although its lock is gone; "
                f"stop it first (kill -TERM {pid}) or wait for it to finish")

    def _refuse(self, reason: str, advice: str | None = None) -> int:
        """A run that cannot start as asked: one line in run_end.reason, training.log and stderr; exit 2."""
        reason = one_line(reason)
        self.events.emit("run_end", status="failed", reason=reason, advice=advice, step=self.progress.step)
        self.events.sync()
        self.log.write(f"RUN END: failed ({reason})" + (f" -> {advice}" if advice else ""), echo=False)
        if self.dist.is_main:
            print(f"kssm train: {reason}" + (f" ({advice})" if advice else ""), file=sys.stderr)
        return EXIT_REFUSED

    def _load_data(self, cfg: TrainConfig, state: dict | None):
        if state is not None and state.get("config", {}).get("data_dir_resolved"):
            folder = Path(state["config"]["data_dir_resolved"])
            if folder.is_dir():
                from kssm_core.training.data import load_tokens

                try:
                    return load_tokens(folder)
                except (OSError, ValueError, KeyError, CorpusError):
                    pass
        try:
            given = resolve_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        except TokenizerError as exc:  # e.g. tiktoken:NAME without its encoding file here: never downloaded
            raise _Refusal(str(exc)) from exc
        corpus = load_corpus(cfg.corpus)
        try:
            data = prepare_tokens(corpus, cfg.data_dir, cfg.vocab_size, log=self._say, tokenizer=given)
        except ForeignDataDir as exc:  # inside another trainer's run folder: one line, exit 2, nothing written there
            raise _Refusal(str(exc)) from exc
        if state is not None and state.get("tokenizer_sha256") not in (None, data.tokenizer.sha256()):
            raise CorpusError(
                "the corpus's tokenizer differs from the checkpoint's; pass the same --corpus, --data-dir and "
                "--tokenizer as the original run"
            )
        self._say(f"data: {len(data.train):,} train / {len(data.val):,} val tokens from {corpus.name} ({data.folder})")
        return data

    def _write_config_json(self, model_cfg: ModelConfig) -> None:
        body = {"train": self.cfg.to_dict(), "model": model_cfg.to_dict(), "data_dir": str(self.data.folder)}
        # never fsynced before either: config.json is rewritten at every start
        atomic_write_bytes(self.out / layout.CONFIG, json.dumps(body, indent=2).encode("utf-8"), durable=False)

    # ---- the loop --------------------------------------------------------------------------------
    def _loop(self, step: int) -> int:
        cfg, model, opt, sched = self.cfg, self.model, self.opt, self.sched
        params = [p for p in model.parameters() if p.requires_grad]
        zero = torch.zeros((), device=self.device)
        sums = {k: zero.clone() for k in ("loss", "ce", "reg", "R", "u_val", "grad_norm")}
        window_steps, window_start = 0, time.perf_counter()
        tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
        accum = self.accum  # micro-steps per rank: micro x accum x world = batch_size x grad_accum
        model.train()
        stopping = self.dist.agree_stop(self.stop.reason)  # every rank stops at the same step
        while step < cfg.max_steps and stopping is None:
            self.progress.step, self.progress.phase, self.progress.accum = step, "train", accum
            for micro in range(accum):
                self.progress.micro = micro
                x, y = self.sampler.next_batch()
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                # DDP all-reduces the gradients on the last micro-step only.
                sync = micro == accum - 1 or self.dist.world == 1
                with (contextlib.nullcontext() if sync else self.step_model.no_sync()):
                    with autocast(self.device, self.precision):
                        total, ce, reg, r_mean, u_mean = self.step_model(x, y, cfg.lambda_reg)
                    (total / accum).backward()
                with torch.no_grad():  # accumulate on the device: no host sync per micro-step
                    sums["loss"] += total.detach() / accum
                    sums["ce"] += ce.detach() / accum
                    sums["reg"] += reg.detach() / accum
                    sums["R"] += r_mean.detach() / accum
                    sums["u_val"] += u_mean.detach() / accum
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            sums["grad_norm"] += grad_norm.detach()
            lr_now = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1
            self.progress.step = step
            stopping = self.dist.agree_stop(self.stop.reason)

            due_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
            due_save = step % cfg.save_interval == 0 or step == cfg.max_steps or step in STAGE_TARGETS or stopping is not None
            if step % cfg.log_interval == 0 or due_eval or due_save:
                means = self.dist.mean_(list(sums.values()))  # over the ranks, at log intervals only
                metrics = {k: float(v.item()) / window_steps for k, v in zip(sums, means)}  # the one host sync
                elapsed = max(1e-9, time.perf_counter() - window_start)
                self._log_step(step, metrics, lr_now, window_steps * tokens_per_step / elapsed)
                for v in sums.values():
                    v.zero_()
                window_steps, window_start = 0, time.perf_counter()
                # A non-finite grad norm has already made the weights NaN: stop before saving them.
                if not all(math.isfinite(metrics[k]) for k in ("loss", "ce", "grad_norm")):
                    lower = cfg.learning_rate / 10
                    self._end(
                        "failed", "nan_loss",
                        advice=f"rerun with a lower learning rate: --learning-rate {lower:g} (the last good checkpoint is kept)",
                        step=step,
                    )
                    return EXIT_FAILED
            if due_eval:
                self._evaluate(step)
            if due_save:
                self.saver.save(step, self.best_val)
        # a final save skipped for low disk (or a full one) leaves nothing to resume or chain from at this step
        final = self.saver.saved_step == step or not self.dist.is_main
        if stopping:
            self._end("interrupted", f"stopped by {stopping}", advice="resume with --resume", step=step,
                      final_checkpoint=final)
            return EXIT_INTERRUPTED
        if not final:
            self._end("completed", "max_steps reached", step=step, final_checkpoint=False,
                      advice=f"the final checkpoint was not saved (disk low): free space, then "
                             f"kssm train --output-dir {self.out} --resume --max-steps {cfg.max_steps}")
            return EXIT_COMPLETED
        self._end("completed", "max_steps reached", step=step, final_checkpoint=True)
        return EXIT_COMPLETED

    def _log_step(self, step: int, m: dict, lr: float, tokens_per_s: float) -> None:
        extra = {}
        if self.device.type == "cuda":
            extra["gpu_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            extra["gpu_mem_reserved_bytes"] = int(torch.cuda.memory_reserved(self.device))
        self.events.emit(
            "step", step=step, loss=m["loss"], ce=m["ce"], reg=m["reg"], R=m["R"], u_val=m["u_val"],
            grad_norm=m["grad_norm"], lr=lr, tokens_per_s=round(tokens_per_s, 1), world_size=self.dist.world, **extra,
        )
        self.log.write(format_step_line(step, m["loss"], m["ce"], m["reg"], m["R"], m["u_val"], m["grad_norm"]))

    @torch.no_grad()
    def _evaluate(self, step: int) -> None:
        cfg, model = self.cfg, self.model
        self.progress.phase = "eval"
        model.eval()
        n = 0
        acc = {"loss": 0.0, "ce": 0.0, "R": 0.0, "u": 0.0}
        for b, (x, y) in enumerate(val_batches(self.data.val, cfg.seq_len, cfg.batch_size, cfg.eval_batches)):
            if b % self.dist.world != self.dist.rank:  # ranks share the validation batches
                continue
            with autocast(self.device, self.precision):
                total, ce, out = model.loss(x.to(self.device), y.to(self.device), cfg.lambda_reg)
            for k, v in (("loss", total), ("ce", ce), ("R", out.R), ("u", out.u_val)):
                acc[k] += float(v)
            n += 1
        *sums, n = self.dist.sum_floats([*acc.values(), float(n)])
        acc, n = dict(zip(acc, sums)), int(n)
        if not self.dist.is_main:  # rank 0 alone reports, samples and saves best_model.pt
            model.train()
            self.progress.phase = "train"
            self.dist.wait_for_main()
            return
        if n:
            val = {k: v / n for k, v in acc.items()}
            ppl = math.exp(min(val["ce"], 20.0)) if math.isfinite(val["ce"]) else float("nan")
            self.events.emit("eval", step=step, val_loss=val["loss"], val_ce=val["ce"], val_ppl=ppl, val_R=val["R"], val_u=val["u"])
            self.log.write(f"EVALUATION @ Step {step}")
            self.log.write(f"  Val Loss: {val['loss']:.4f}")
            self.log.write(f"  Val Perplexity: {ppl:.2f}")
            self.log.write(f"  Val R: {val['R']:.4f}")
            self.log.write(f"  Val u_val: {val['u']:.3f}")
            if math.isfinite(val["loss"]) and val["loss"] < self.best_val:
                self.best_val = val["loss"]
                self.saver.save_best(step, val["loss"])
        self._sample(step)
        model.train()
        self.progress.phase = "train"
        self.dist.wait_for_main()

    def _sample(self, step: int) -> None:
        cfg, tok = self.cfg, self.data.tokenizer
        prompt_ids = tok.encode(cfg.sample_prompt) or [tok.eot_id]
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed + step)
        idx = torch.tensor([prompt_ids], device=self.device)
        out, r_trace = self.model.generate(idx, cfg.sample_tokens, cfg.sample_temperature, generator=gen)
        text = tok.decode(out[0, len(prompt_ids):].tolist())
        mean_r = sum(r_trace) / len(r_trace) if r_trace else None
        self.events.emit("sample", step=step, prompt=cfg.sample_prompt, text=text, R=mean_r)
        self.log.write(f"  Sample: {cfg.sample_prompt}{text!r}")


def recorded_config(run_dir: Path) -> dict | None:
    """The settings this folder's run was started with (TrainConfig as a dict): config.json's, else the
    newest run_start's; None when neither is readable."""
    try:
        body = json.loads((run_dir / layout.CONFIG).read_text(encoding="utf-8"))
        if isinstance(body, dict) and isinstance(body.get("train"), dict):
            return body["train"]
    except (OSError, ValueError):
        pass
    from kssm_core.runfolder.runlog import newest_run_markers

    start, _ = newest_run_markers(run_dir / layout.EVENTS)
    return start["config"] if start is not None and isinstance(start.get("config"), dict) else None


def train(cfg: TrainConfig, echo: TextIO | None = sys.stdout, overrides: dict | None = None, dist: Dist | None = None,
          sink=None, adopt: bool = False) -> int:
    return Trainer(cfg, echo=echo, overrides_on_resume=overrides, dist=dist, sink=sink, adopt=adopt).run()


def tokenizer_from_checkpoint(state: dict[str, Any]) -> Tokenizer | None:
    """The tokenizer a checkpoint embeds (a BPE, chars, tiktoken:NAME), or None (a reference checkpoint)."""
    return tokenizer_from_record(state)
