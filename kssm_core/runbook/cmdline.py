"""Every `kssm` command line this project prints or runs, built in one place as an argv list.

The CLI's advice, the playbook's remedies, the cockpit's keys (and the autopilot) all build their
commands here, so a printed command and the one a key runs are the same. An argv starts with "kssm";
`text()` quotes it for a person to paste, `spawnable()` turns it into what a process runs
(`python -m kssm_core ...`, the same interpreter, no PATH lookup). Pure: no I/O but `is_file` checks.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Iterable

from kssm_core.config import TrainConfig, stage as stage_info
from kssm_core.runfolder import layout

DEFAULTS = TrainConfig()
DEFAULT_RUNS_ROOT = "results"
# Settings that a next stage or a remedy carries over from the run they follow, when not the default.
CARRIED = ("preset", "corpus", "data_dir", "tokenizer")


def text(argv: Iterable[str]) -> str:
    return shlex.join(list(argv))


def spawnable(argv: list[str]) -> list[str]:
    """The argv a subprocess runs: this interpreter with `-m kssm_core` in place of `kssm`."""
    assert argv and argv[0] == "kssm", argv
    return [sys.executable, "-m", "kssm_core", *argv[1:]]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def carried_args(config: dict, skip: Iterable[str] = ()) -> list[str]:
    """--preset / --corpus / --data-dir / --tokenizer of a run when they differ from the defaults."""
    out: list[str] = []
    for name in CARRIED:
        v = config.get(name)
        if isinstance(v, str) and v and v != getattr(DEFAULTS, name, None) and name not in skip:
            out += [_flag(name), v]
    return out


def previous_best(runs_root: str | Path, stage: int | None) -> Path | None:
    """ROOT/<stage N-1 folder>/best_model.pt when it exists: stage N starts from it (restarting from random
    weights would drop the stages before it)."""
    if stage is None or not 2 <= stage <= 5:
        return None
    best = Path(runs_root) / stage_info(stage - 1).output_dir / layout.BEST_MODEL
    return best if best.is_file() else None


def without_flags(args: Iterable[str], names: Iterable[str]) -> list[str]:
    """`args` less each `--flag VALUE` / `--flag=VALUE` whose TrainConfig field name is in `names`
    (an override replaces a flag instead of following it: the printed command says each setting once)."""
    flags = {_flag(n) for n in names}
    out: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        a = items[i]
        if a in flags:
            i += 2 if i + 1 < len(items) and not items[i + 1].startswith("--") else 1
            continue
        if a.split("=", 1)[0] in flags and "=" in a:
            i += 1
            continue
        out.append(a)
        i += 1
    return out


def train(*, stage: int | None = None, output_dir: str | Path | None = None, runs_root: str | Path | None = None,
          resume: bool = False, max_steps: int | None = None, init_from: str | Path | None = None,
          config: dict | None = None, overrides: dict[str, Any] | None = None,
          extra: Iterable[str] = ()) -> list[str]:
    """`kssm train ...`: a stage (its default target unless max_steps says otherwise), into a folder, with the
    run's carried settings (`config`) and `overrides` (TrainConfig field names: learning_rate=..., seed=...).
    `extra`: more trainer flags (an autopilot plan's `args`), placed before the overrides, which replace any
    of them that set the same field."""
    overrides = dict(overrides or {})
    argv = ["kssm", "train"]
    if stage is not None and 1 <= stage <= 5:
        argv += ["--stage", str(stage)]
        if max_steps is not None and max_steps != stage_info(stage).steps:
            argv += ["--max-steps", str(max_steps)]
    elif max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    if runs_root is not None and str(runs_root) not in ("", ".", DEFAULT_RUNS_ROOT):
        argv += ["--runs-root", str(runs_root)]
    if output_dir is not None:
        argv += ["--output-dir", str(output_dir)]
    if resume:
        argv.append("--resume")
    if init_from is not None and "init_from" not in overrides:
        argv += ["--init-from", str(init_from)]
    argv += carried_args(config or {}, skip=overrides)
    argv += without_flags(extra, overrides)
    for name, value in overrides.items():
        argv += [_flag(name), _fmt(value)]
    return argv


def next_stage(runs_root: str | Path, stage: int, config: dict | None = None,
               init_from: str | Path | None = None) -> list[str]:
    """Stage N of the runbook under RUNS_ROOT, from `init_from` (default: stage N-1's best model)."""
    start = init_from if init_from is not None else previous_best(runs_root, stage)
    return train(stage=stage, runs_root=runs_root, init_from=start, config=config)


def resume(run_dir: str | Path, max_steps: int | None = None) -> list[str]:
    """Continue a crashed / interrupted run to its own target (the run's settings come from its record)."""
    argv = ["kssm", "train", "--output-dir", str(run_dir), "--resume"]
    return argv + (["--max-steps", str(max_steps)] if max_steps else [])


def eval_all(run_dir: str | Path) -> list[str]:
    return ["kssm", "eval", "all", "--model", str(Path(run_dir) / layout.BEST_MODEL)]


def unlock(run_dir: str | Path, force: bool = False) -> list[str]:
    return ["kssm", "unlock", *(["--force"] if force else []), str(run_dir)]


def status_watch(run_dir: str | Path) -> list[str]:
    return ["kssm", "status", str(run_dir), "--watch"]


def clean(run_dir: str | Path) -> list[str]:
    return ["kssm", "clean", str(run_dir)]


def data_check(config: dict) -> list[str]:
    argv = ["kssm", "data", "check"]
    for name in ("corpus", "data_dir", "preset", "tokenizer"):
        v = config.get(name)
        if isinstance(v, str) and v:
            argv += [_flag(name), v]
    return argv


def autopilot(runs_root: str | Path = DEFAULT_RUNS_ROOT, plan: str | Path | None = None,
              through: int | None = None, notify: str | None = None) -> list[str]:
    """`kssm autopilot [RUNS_ROOT] [--plan FILE] [--through N] [--notify CMD]` (docs/autopilot.md)."""
    argv = ["kssm", "autopilot", str(runs_root)]
    if plan is not None:
        argv += ["--plan", str(plan)]
    if through is not None:
        argv += ["--through", str(through)]
    if notify:
        argv += ["--notify", notify]
    return argv
