"""Spawn, find, signal and reap the trainer process. No widgets, no Textual.

The trainer runs as a detached child: its own session (so a lost SSH connection or a
closed tmux pane does not signal it), stdin from /dev/null, stdout and stderr appended to
RUN_DIR/trainer.out. Quitting the cockpit leaves it running; the next cockpit finds it
through the run's lock. asyncio's subprocess transport is deliberately not used: closing
the loop would kill the child.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kssm_core.runbook.stages import STAGES, stage as stage_of
from kssm_core.runbook import cmdline
from kssm_core.runbook.spawn import spawn_detached
from kssm_core.runfolder import layout
from kssm_core.runfolder.lock import lock_state, read_lock

TRAINER_OUT = layout.TRAINER_OUT
EXTRA_ARGS_ENV = "KSSM_TUI_TRAIN_ARGS"  # extra `kssm train` flags for every spawned trainer (tests, tiny runs)
EXIT_KINDS = {0: "completed", 1: "failed", 130: "interrupted", 2: "refused"}  # kssm train's exit codes


def stage_dir(runs_root: Path, number: int) -> Path:
    return Path(runs_root) / stage_of(number).output_dir


def extra_args() -> list[str]:
    return shlex.split(os.environ.get(EXTRA_ARGS_ENV, ""))


def _spawnable(argv: list[str], quiet: bool = True) -> list[str]:
    """A cmdline argv as this cockpit runs it: this interpreter, --quiet, plus KSSM_TUI_TRAIN_ARGS for trainers."""
    out = cmdline.spawnable(argv)
    return out + (["--quiet"] if quiet else []) + (extra_args() if argv[1] == "train" else [])


def stage_command(runs_root: Path, number: int, advised: list[str] | None = None) -> list[str]:
    """`kssm train --stage N` for the runbook's stage N, starting from the previous stage's best model.

    `advised`: the argv kssm status recommends after the previous stage (it carries that run's preset, corpus
    and tokenizer): run exactly it when it starts this stage, so n does what the Next line says."""
    if advised and advised[:2] == ["kssm", "train"] and "--stage" in advised \
            and advised[advised.index("--stage") + 1] == str(number):
        return _spawnable(list(advised))
    return _spawnable(cmdline.next_stage(runs_root, number))


def resume_command(run_dir: Path, max_steps: int | None) -> list[str]:
    return _spawnable(cmdline.resume(run_dir, max_steps))


def eval_command(run_dir: Path) -> list[str]:
    return _spawnable(cmdline.eval_all(run_dir), quiet=False)


def eval_summary(run_dir: Path) -> str | None:
    """'PASS: ...' / 'FAIL: ...' from RUN_DIR/eval/summary.json, or None when it is missing or unreadable."""
    try:
        d = json.loads((Path(run_dir) / layout.EVAL_DIR / layout.EVAL_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(d, dict) or not isinstance(d.get("verdict"), str):
        return None
    return f"{d['verdict'].upper()}: {d.get('message', '')}"


def classify_exit(returncode: int) -> str:
    """completed (0), failed (1: NaN loss, bad data; it wrote run_end), interrupted (130), refused (2),
    killed (by a signal: negative), crashed (anything else, e.g. an uncaught exception)."""
    if returncode < 0:
        return "killed"
    return EXIT_KINDS.get(returncode, "crashed")


def describe_exit(returncode: int) -> str:
    kind = classify_exit(returncode)
    if kind == "killed":
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory?)" if -returncode == signal.SIGKILL else ""
        return f"trainer killed by {name}{hint}; press r to resume from the newest checkpoint"
    return {
        "completed": "trainer completed (exit 0)",
        "interrupted": "trainer stopped: it saved a checkpoint and exited (130); press r to resume",
        "refused": "trainer refused to start (exit 2): see trainer.out",
        "failed": "trainer failed (exit 1): the run panel says why and what to change",
    }.get(kind, f"trainer crashed (exit {returncode}); press r to resume")


def tail_text(path: Path, max_lines: int = 8, max_bytes: int = 8192) -> str:
    """The last lines of a file (the trainer's output after a crash); '' when missing."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])


class EvalBusy(Exception):
    """An evaluation this cockpit started in that folder is still running."""


@dataclass
class Spawned:
    """A trainer this cockpit started: its Popen and where it writes."""

    proc: subprocess.Popen
    run_dir: Path
    command: list[str]


class TrainerController:
    """Owns at most one child trainer; finds and signals trainers started elsewhere through their lock."""

    def __init__(self, cwd: Path | None = None):
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.child: Spawned | None = None
        self.evals: dict[Path, subprocess.Popen] = {}  # run folder -> its evaluation, while we watch it
        self._others: list[subprocess.Popen] = []

    # ---- spawning ---------------------------------------------------------------------------------
    def spawn(self, command: list[str], run_dir: Path) -> Spawned:
        """Start the trainer detached; it becomes the child this controller reaps."""
        proc = self.launch(command, run_dir, TRAINER_OUT)
        self.child = Spawned(proc, Path(run_dir), command)
        return self.child

    def launch(self, command: list[str], run_dir: Path, out_name: str) -> subprocess.Popen:
        """Start any detached process (trainer, evaluation) with its output appended to RUN_DIR/out_name.
        spawn_detached refuses a folder another program wrote (ForeignFolder, an OSError)."""
        proc = spawn_detached(command, Path(run_dir) / out_name, cwd=self.cwd)
        self._others.append(proc)
        return proc

    def reap_others(self) -> None:
        """Collect exited processes we launched (evaluations, and trainers once reaped) so none lingers as a zombie."""
        self._others = [p for p in self._others if p.poll() is None]

    def start_eval(self, run_dir: Path) -> subprocess.Popen:
        """`kssm eval all` on the run's best model; refuses (EvalBusy) while one we started there still runs."""
        run_dir = Path(run_dir)
        running = self.evals.get(run_dir)
        if running is not None and running.poll() is None:
            raise EvalBusy(f"an evaluation of {run_dir} is already running (PID {running.pid})")
        self.evals[run_dir] = proc = self.launch(eval_command(run_dir), run_dir, layout.EVAL_OUT)
        return proc

    def finished_evals(self) -> list[tuple[Path, int]]:
        """(run folder, exit code) of each evaluation that ended since the last call. Never blocks."""
        done = [(d, p.returncode) for d, p in self.evals.items() if p.poll() is not None]
        for d, _ in done:
            del self.evals[d]
        return done

    def child_alive(self) -> bool:
        return self.child is not None and self.child.proc.poll() is None

    def poll(self) -> tuple[Spawned, int] | None:
        """Reap our child if it exited: (spawned, returncode), once. Never blocks."""
        if self.child is None:
            return None
        rc = self.child.proc.poll()
        if rc is None:
            return None
        done, self.child = self.child, None
        return done, rc

    # ---- control ----------------------------------------------------------------------------------
    def trainer_pid(self, run_dir: Path) -> int | None:
        """The PID of a live trainer in run_dir (from its lock, or our own child before it locked)."""
        info = read_lock(run_dir)
        state, _ = lock_state(info)
        if state == "live" and info is not None:
            return info.pid
        if self.child_alive() and self.child.run_dir == Path(run_dir):
            return self.child.proc.pid
        return None

    def stop(self, run_dir: Path, expected_pid: int | None = None) -> str:
        """SIGTERM the trainer: it finishes the step, saves, and exits 130. Returns one line.

        expected_pid: the PID the user confirmed; if the folder's trainer is another one now, nothing is sent.
        """
        pid = self.trainer_pid(run_dir)
        if pid is None:
            return f"no live trainer in {run_dir}: nothing to stop"
        if expected_pid is not None and pid != expected_pid:
            return f"not stopping: the trainer in {run_dir} is now PID {pid}, not PID {expected_pid} as confirmed"
        try:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP, Ctrl-Z) trainer acts on the TERM only once it runs
        except ProcessLookupError:
            return f"trainer PID {pid} already exited"
        except PermissionError:
            return f"not allowed to signal PID {pid} (another user's trainer?)"
        return f"sent SIGTERM to trainer PID {pid}: it will save a checkpoint and exit"


def live_stage(runs_root: Path) -> int | None:
    """The stage whose folder holds a live trainer's lock, if any (used to attach on start)."""
    for s in STAGES:
        if lock_state(read_lock(Path(runs_root) / s.output_dir))[0] == "live":
            return s.number
    return None
