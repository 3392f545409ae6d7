"""The runbook's five stages (100 / 500 / 1,500 / 5,000 / 10,000 steps): budgets, folders and pass criteria."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage of the runbook's incremental plan."""

    number: int
    steps: int
    output_dir: str
    name: str
    budget: str
    can_pause: str
    method: str
    pass_criteria: str


STAGES: tuple[Stage, ...] = (
    Stage(1, 100, "stage1", "Smoke test", "2 min", "No", "Foreground", "No crashes, loss descending"),
    Stage(2, 500, "stage2", "Short validation", "10 min", "Maybe", "Foreground or tmux",
          "Val PPL < 1000, R > 0.01, u_val stable"),
    Stage(3, 1500, "stage3", "First milestone", "30 min", "Yes", "tmux",
          "Val PPL < 500, R exploring, samples coherent"),
    Stage(4, 5000, "stage4", "Extended run", "2 hours", "Yes", "tmux (background)",
          ">= 3 R zones visited, Val PPL < 300"),
    Stage(5, 10000, "final", "Production", "4-6 hours", "Yes", "tmux (background)",
          "All hypotheses validated, final benchmarks pass"),
)


def stage(number: int) -> Stage:
    for s in STAGES:
        if s.number == number:
            return s
    raise ValueError(f"--stage must be 1..5, got {number}")


STAGE_TARGETS = frozenset(s.steps for s in STAGES)
