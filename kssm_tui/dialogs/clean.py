"""The clean dialog: exactly the checkpoint files (and bytes) kssm_core.runfolder.cleaning.plan_clean would delete."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the dialog only reads the plan
    from kssm_core.runfolder.cleaning import CleanPlan

from .confirm import ConfirmDialog


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def plan_lines(plan: CleanPlan, trainer_live: bool) -> list[str]:
    lines = [f"delete  {Path(p).name}  {_mb(size)}" for p, size in plan.delete]
    lines.append(f"frees   {_mb(plan.bytes_freed)} in {len(plan.delete)} file(s)")
    lines += [f"keep    {Path(p).name}  ({why})" for p, why in plan.keep]
    if trainer_live:
        lines.append("note: a trainer is running in this folder; the newest checkpoint is kept")
    return lines


class CleanDialog(ConfirmDialog):
    """Confirm deleting old checkpoints; Cancel has the focus."""

    def __init__(self, run_dir: Path, plan: CleanPlan, trainer_live: bool = False) -> None:
        super().__init__(f"Clean checkpoints in {run_dir}?", plan_lines(plan, trainer_live),
                         confirm_label=f"Delete {len(plan.delete)} file(s)", destructive=True)
        self.plan = plan
