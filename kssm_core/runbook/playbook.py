"""The runbook's failure playbook: each Warning / Failure mapped to a command the user can paste.

Every remedy is computed from the run's own settings (run_start's config), so it always moves in the
right direction: the learning rate only goes down, lambda_reg only goes up, the seed changes, a
resume keeps the run's own target. Pure functions; nothing here runs a command.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kssm_core.config import TrainConfig, stage as stage_info
from kssm_core.runbook import cmdline
from kssm_core.runfolder import layout
from kssm_core.runbook.criteria import DEFAULT, Criteria
from kssm_core.runfolder.history import RunHistory, as_number, as_step
from kssm_core.runbook.verdicts import MatrixRow, Verdict

_DEFAULTS = TrainConfig()


# ---- the direction of each change ------------------------------------------------------------------------
def lower_learning_rate(lr: Any, factor: float = 10.0) -> float:
    """The run's learning rate divided by `factor` (runbook: 0.001 -> 0.0001 for NaN, -> 0.0005 for a plateau)."""
    v, _ = as_number(lr)
    if not (math.isfinite(v) and v > 0):
        v = _DEFAULTS.learning_rate
    return float(f"{v / factor:.3g}")


def raise_lambda_reg(lam: Any, factor: float = 10.0, floor: float = 0.1) -> float:
    """The run's lambda_reg times `factor`, at least `floor` (runbook: 0.01 -> 0.1 when u_val hits the clamps)."""
    v, _ = as_number(lam)
    if not (math.isfinite(v) and v >= 0):
        v = _DEFAULTS.lambda_reg
    return float(f"{max(v * factor, floor):.3g}")


def next_seed(seed: Any) -> int:
    s = as_step(seed)
    return (s if s is not None else _DEFAULTS.seed) + 1


# ---- commands ------------------------------------------------------------------------------------------
def _is_legacy(history: RunHistory) -> bool:
    return bool((history.run_start or {}).get("legacy"))


def new_folder_for(run_dir: str | Path) -> str:
    """Where a remedy of a reference-trainer run trains: beside it, never in it (its files are not ours)."""
    return f"{str(run_dir).rstrip('/')}-kssm"


def _run_dir(history: RunHistory, run_dir: str | Path | None) -> str:
    if run_dir is not None:
        return new_folder_for(run_dir) if _is_legacy(history) else str(run_dir)
    out = history.config.get("output_dir")
    return out if isinstance(out, str) and out else "results/stage1"


def init_from_args(runs_root: str | Path, stage: int | None) -> list[str]:
    """`--init-from ROOT/<previous stage folder>/best_model.pt` when that file exists, else []."""
    best = cmdline.previous_best(runs_root, stage)
    return ["--init-from", str(best)] if best is not None else []


def train_command(history: RunHistory, run_dir: str | Path | None = None, *, resume: bool = False,
                  judged_stage: int | None = None, **overrides: Any) -> str:
    """`kssm train ...` that repeats the run's settings (stage, folder, preset, corpus) with `overrides` applied.
    Override names are TrainConfig fields (learning_rate=..., lambda_reg=..., seed=..., max_steps=...).
    `judged_stage`: for a reference run (no stage of its own), the stage whose row asked for the rerun."""
    cfg = history.config
    st = as_step(cfg.get("stage")) or as_step((history.run_start or {}).get("stage"))
    target = as_step(overrides.pop("max_steps", None)) or history.max_steps
    out = _run_dir(history, run_dir)
    own = cfg.get("init_from")  # the weights this run started from: a rerun of it starts there too
    if resume or "init_from" in overrides:
        init = None
    elif isinstance(own, str) and own and Path(own).is_file():
        init = Path(own)
    else:
        init = cmdline.previous_best(Path(out).parent, st)
    if _is_legacy(history) and run_dir is not None:  # start over beside it, from its best model
        init = Path(run_dir) / layout.BEST_MODEL if (Path(run_dir) / layout.BEST_MODEL).is_file() else None
        overrides.setdefault("tokenizer", "chars")
        st, target = judged_stage, None  # a runbook stage of ours, at its own length
    return cmdline.text(cmdline.train(stage=st, output_dir=out, resume=resume, max_steps=target, init_from=init,
                                      config=cfg, overrides=overrides))


def resume_command(history: RunHistory, run_dir: str | Path | None = None, max_steps: int | None = None) -> str:
    """Emergency recovery: continue a crashed / interrupted run to its own target. A reference-trainer run is
    continued from its best model in a new folder (its checkpoints are the reference's, not resumable by kssm)."""
    target = max_steps or history.max_steps
    if _is_legacy(history) and run_dir is not None:
        best = Path(run_dir) / layout.BEST_MODEL
        return cmdline.text(cmdline.train(output_dir=new_folder_for(run_dir), max_steps=target, init_from=best,
                                          overrides={"tokenizer": "chars"}))
    return cmdline.text(cmdline.resume(_run_dir(history, run_dir), target))


def unlock_command(run_dir: str | Path) -> str:
    return cmdline.text(cmdline.unlock(run_dir))


def data_check_command(history: RunHistory) -> str:
    return cmdline.text(cmdline.data_check(history.config))


def status_watch_command(run_dir: str | Path | None, history: RunHistory) -> str:
    return cmdline.text(cmdline.status_watch(_run_dir(history, run_dir)))


# ---- the mapping -------------------------------------------------------------------------------------------
def remedy_overrides(row: MatrixRow, config: dict) -> tuple[dict[str, Any], str] | None:
    """The mechanical part of remedy_for: ({TrainConfig field: new value}, why) when the row's remedy is
    "restart the stage with another seed / a lower learning rate / a higher lambda_reg" (what an autopilot
    may apply unattended); None when the remedy needs a person (check the data or the tokenizer, wait,
    train longer, revise the architecture) or the row is Healthy / Pending. Same rules as remedy_for."""
    if row.verdict not in (Verdict.WARNING, Verdict.FAILURE):
        return None
    failure = row.verdict is Verdict.FAILURE
    m, reason = row.metric, row.reason
    if m == "Loss":
        if not failure:
            return None  # flat: check the data
        lr = lower_learning_rate(config.get("learning_rate"))
        return {"learning_rate": lr}, f"loss NaN or increasing: a 10x lower learning rate ({lr:g})"
    if m == "Val PPL":
        if row.stage == 2:
            return None  # degrading like v2: check data loading
        lr = lower_learning_rate(config.get("learning_rate"), factor=2.0)
        return {"learning_rate": lr}, f"val PPL not improving: half the learning rate ({lr:g})"
    if m == "u_val" or (m == "u_val regime" and failure and ("floor" in reason or "ceiling" in reason)):
        lam = raise_lambda_reg(config.get("lambda_reg"))
        return {"lambda_reg": lam}, f"u_val at the clamps: a stronger log barrier (lambda_reg {lam:g})"
    if m in ("R", "R zones") or (m == "u_val regime" and failure) or (m == "Goldilocks" and failure):
        seed = next_seed(config.get("seed"))
        return {"seed": seed}, f"{m} {row.verdict.value}: another seed ({seed})"
    return None


def remedy_for(row: MatrixRow, history: RunHistory, run_dir: str | Path | None = None,
               criteria: Criteria = DEFAULT) -> tuple[str | None, str | None]:
    """(command, one-line why) for a Warning / Failure row; (None, None) for Healthy / Pending."""
    if row.verdict not in (Verdict.WARNING, Verdict.FAILURE):
        return None, None
    cfg = history.config
    failure = row.verdict is Verdict.FAILURE
    m, reason = row.metric, row.reason
    if m == "Loss":
        if failure:
            lr = lower_learning_rate(cfg.get("learning_rate"))
            return (train_command(history, run_dir, learning_rate=lr, judged_stage=row.stage),
                    f"loss NaN or increasing: restart the stage with a 10x lower learning rate ({lr:g})")
        return data_check_command(history), "loss flat: check the data loads and decodes to text, then restart the stage"
    if m == "Val PPL":
        if row.stage == 2:
            return (data_check_command(history),
                    "val PPL high (degrading like v2): check data loading - token counts and a decoded sample")
        lr = lower_learning_rate(cfg.get("learning_rate"), factor=2.0)
        return (train_command(history, run_dir, learning_rate=lr, judged_stage=row.stage),
                f"val PPL not improving: halve the learning rate ({lr:g}); or double --batch-size if memory allows; "
                "grad norms should be 1-10")
    if m == "u_val" or (m == "u_val regime" and failure and ("floor" in reason or "ceiling" in reason)):
        lam = raise_lambda_reg(cfg.get("lambda_reg"))
        return (train_command(history, run_dir, lambda_reg=lam, judged_stage=row.stage),
                f"u_val at the clamps: strengthen the log barrier (--lambda-reg {lam:g})")
    if m in ("R", "R zones") or (m == "u_val regime" and failure) or (m == "Goldilocks" and failure):
        seed = next_seed(cfg.get("seed"))
        why = {"R": "R near 0: restart with another seed; if it persists, check the Kuramoto layer (architecture bug)",
               "R zones": "R not exploring (single attractor): restart with another seed; if persistent, an architecture issue",
               "u_val regime": "u_val locked: restart with another seed",
               "Goldilocks": "R far below 0.30: restart with another seed; if persistent, revise the architecture"}[m]
        return train_command(history, run_dir, seed=seed, judged_stage=row.stage), why
    if m == "u_val regime":
        return (status_watch_command(run_dir, history),
                "edge-surfing not observed: not necessarily a failure if quality is good; watch u_val stay stable")
    if m == "Goldilocks":
        target = (history.max_steps or stage_info(5).steps) + 5000
        return (resume_command(history, run_dir, max_steps=target),
                "R below 0.30: train longer (the reference run crossed 0.30 near step 6000)")
    if m == "Samples":
        step = history.last_step or 0
        if step < 2000:
            return (data_check_command(history),
                    "samples often leap around steps 2000-3000: wait longer; meanwhile verify the tokenizer and corpus")
        return data_check_command(history), "no improvement by step 2000: check the tokenizer and the corpus quality"
    if m == "Agency":
        return None, "agency weak: train longer or revise the architecture; rerun the evaluation suite after"
    if m == "u floor":  # matrix.U_FLOOR: no flag or restart fixes a clamp that is not applied
        return None, ("u below the clamp floor: the bistable clamp is not in effect (a model bug, or the monostable "
                      "ablation run without --monostable): fix the model before training on")
    return None, None


def attach_remedy(row: MatrixRow, history: RunHistory, run_dir: str | Path | None = None,
                  criteria: Criteria = DEFAULT) -> MatrixRow:
    row.remedy, row.remedy_note = remedy_for(row, history, run_dir, criteria)
    return row
