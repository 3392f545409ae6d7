"""The trainer's checkpoints: room on disk first, then an atomic save, then pruning (rank 0 writes).

A nearly full or full disk costs a `disk_low` / `disk_full` warning and that one checkpoint, never the run:
training goes on and `saved_step` tells the trainer whether its final step reached the disk.
Files are written through kssm_core.training.checkpoint (temp file, fsync, rename), so a kill mid-save leaves
every earlier checkpoint intact.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable

from kssm_core.training import checkpoint as ckpt
from kssm_core.config import STAGE_TARGETS, TrainConfig
from kssm_core.training.distributed import Dist
from kssm_core.training.rng import rng_state
from kssm_core.runbook import cmdline
from kssm_core.runfolder.foreign import is_ours

DISK_MARGIN_BYTES = 16 * 1024 * 1024


class CheckpointSaver:
    """Writes checkpoint_{step}.pt and best_model.pt for one run; every rank calls save() (it gathers RNGs)."""

    def __init__(
        self, out: Path, cfg: TrainConfig, dist: Dist, *, model, opt, sched, sampler, data, progress,
        events, say: Callable[[str], None], warn: Callable[[str, str, str], None], last_bytes: int | None,
        saved_step: int | None,
    ):
        self.out, self.cfg, self.dist = out, cfg, dist
        self.model, self.opt, self.sched, self.sampler, self.data = model, opt, sched, sampler, data
        self.progress, self.events, self._say, self._warn = progress, events, say, warn
        self.last_bytes = last_bytes  # the newest checkpoint's size: the best guess for the next one
        self.saved_step = saved_step  # the newest step actually on disk
        self._written: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the files this saver wrote

    def _identity(self, path: Path) -> tuple[int, int] | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else (-1, -1)

    def ours(self, path: Path) -> bool:
        """May this saver replace or prune `path`? Yes when it wrote it, or when it is a regular file that is not
        another program's checkpoint: ours from an earlier part of this run, or one too damaged to read (the
        folder itself passed kssm_core.runfolder.foreign at start)."""
        ident = self._identity(path)
        if ident is None or ident in self._written:
            return True
        return ident != (-1, -1) and is_ours(path) is not False

    def may_write(self, name: str) -> bool:
        """Never replace a best_model.pt / checkpoint that kssm did not write (a symlink, another trainer's)."""
        if self.ours(self.out / name):
            return True
        self._warn("foreign_file_kept", f"{name} in this folder was not written by kssm: left as it is, this save skipped",
                   "move it away by hand, or train into another --output-dir")
        return False

    def _saved(self, name: str) -> None:
        ident = self._identity(self.out / name)
        if ident is not None:
            self._written.add(ident)

    def state(self, step: int, best_val: float, rng_per_rank: list | None = None) -> dict[str, Any]:
        """Everything --resume needs for a bit-identical continuation (docs/run-folder.md)."""
        cfg_dict = self.cfg.to_dict()
        cfg_dict["data_dir_resolved"] = str(self.data.folder)
        extra = {"world_size": self.dist.world, "rng_per_rank": rng_per_rank} if self.dist.world > 1 else {}
        return extra | {
            "format": ckpt.CHECKPOINT_FORMAT,
            "step": step,
            "model_state": self.model.state_dict(),
            "optimizer_state": self.opt.state_dict(),
            "scheduler_state": self.sched.state_dict(),
            "best_val_loss": best_val,
            "rng": rng_state(),
            "data_state": self.sampler.state_dict(),
            "config": cfg_dict,
            "model_config": self.model.cfg.to_dict(),
            "tokenizer_sha256": self.data.tokenizer.sha256(),
            **self.data.tokenizer.record(),  # tokenizer_json (a BPE) or tokenizer_spec (chars, tiktoken:NAME)
        }

    def has_room(self, name: str, estimate: int) -> bool:
        """Skip a save that would not fit (with a margin): a half-written file helps nobody."""
        free = ckpt.free_bytes(self.out)
        if free < estimate + DISK_MARGIN_BYTES:
            self._warn(
                "disk_low",
                f"skipped {name}: {free / 1e6:.0f} MB free, needs about {estimate / 1e6:.0f} MB "
                f"+ {DISK_MARGIN_BYTES / 1e6:.0f} MB margin",
                f"free space, e.g. `{cmdline.text(cmdline.clean(self.out))}`",
            )
            return False
        return True

    def estimate_bytes(self) -> int:
        if self.last_bytes:
            return self.last_bytes
        n = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return 3 * n + 1_000_000  # weights + two Adam moments + the rest

    def save(self, step: int, best_val: float) -> None:
        """Save checkpoint_{step}.pt; self.saved_step records the newest step actually on disk."""
        name = f"checkpoint_{step}.pt"
        self.progress.phase = "save"
        rng_per_rank = self.dist.gather(rng_state()) if self.dist.world > 1 else None  # every rank's stream
        if not self.dist.is_main:
            self.dist.wait_for_main()
            self.progress.phase = "train"
            return
        if self.may_write(name) and self.has_room(name, self.estimate_bytes()):
            try:
                nbytes = ckpt.atomic_save(self.state(step, best_val, rng_per_rank), self.out / name)
            except ckpt.DiskFull as exc:
                self._warn("disk_full", str(exc), f"free space, e.g. `{cmdline.text(cmdline.clean(self.out))}`")
            else:
                self._saved(name)
                self.last_bytes = nbytes
                self.saved_step = step
                self.events.emit("checkpoint", step=step, path=name, bytes=nbytes, best=False)
                self._say(f"saved {name} ({nbytes / 1e6:.1f} MB)")
                for path in ckpt.prune(self.out, self.cfg.keep_checkpoints, STAGE_TARGETS | {self.cfg.max_steps},
                                       deletable=self.ours):
                    self._say(f"pruned {path.name} (keeping the newest {self.cfg.keep_checkpoints})")
        self.progress.phase = "train"
        self.dist.wait_for_main()

    def save_best(self, step: int, val_loss: float) -> None:
        """best_model.pt: weights only (no optimizer), for evaluation; rank 0 alone calls it."""
        state = {
            "format": ckpt.CHECKPOINT_FORMAT,
            "step": step,
            "model_state": self.model.state_dict(),
            "val_loss": val_loss,
            "config": self.cfg.to_dict(),
            "model_config": self.model.cfg.to_dict(),
            "tokenizer_sha256": self.data.tokenizer.sha256(),
            **self.data.tokenizer.record(),
        }
        estimate = sum(p.numel() * p.element_size() for p in self.model.parameters()) + 1_000_000
        if not (self.may_write(ckpt.BEST_NAME) and self.has_room(ckpt.BEST_NAME, estimate)):
            return
        try:
            nbytes = ckpt.atomic_save(state, self.out / ckpt.BEST_NAME)
        except ckpt.DiskFull as exc:
            self._warn("disk_full", str(exc), f"free space, e.g. `{cmdline.text(cmdline.clean(self.out))}`")
            return
        self._saved(ckpt.BEST_NAME)
        self.events.emit("checkpoint", step=step, path=ckpt.BEST_NAME, bytes=nbytes, best=True, val_loss=val_loss)
