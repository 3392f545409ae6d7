"""The cockpit's keys as data: the footer, the help screen, the command palette and --readonly read one table."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    key: str
    action: str
    label: str
    help: str
    mutates: bool = False  # disabled under --readonly
    show: bool = True  # in the footer


KEYS: tuple[Key, ...] = (
    Key("n", "next_stage", "Next stage", "start the next stage (Stage 1 on a fresh machine)", mutates=True),
    Key("r", "resume", "Resume", "resume the shown run from its newest checkpoint (clears a stale lock)", mutates=True),
    Key("s", "stop", "Stop", "stop the trainer gracefully: it saves and exits (asks first)", mutates=True),
    Key("u", "unlock", "Unlock", "clear a stale lock (refuses a live one)", mutates=True),
    Key("c", "clean", "Clean", "delete old checkpoints (lists the files first)", mutates=True),
    Key("e", "eval", "Eval", "run `kssm eval all` on the shown run's best model", mutates=True, show=False),
    Key("a", "autopilot", "Autopilot", "start the autopilot (shows the plan and budgets first), or stop it", mutates=True,
        show=False),
    Key("l", "toggle_log", "Log", "log-scale toggle for val PPL and grad norm"),
    Key("m", "toggle_smooth", "Smooth", "smoothing toggle for the charts (TensorBoard's debiased EMA, raw faint)"),
    Key("g", "next_chart", "Chart", "show the next chart (loss, val PPL, R, u_val, grad norm)", show=False),
    Key("v", "runs_view", "Runs", "the runs view: every run folder; space marks runs to overlay on the charts, "
        "enter opens one", show=False),
    Key("x", "toggle_x_axis", "X axis", "x axis: step, or active wall time (resume and pause gaps left out)",
        show=False),
    Key("1-5", "select", "Stage", "show stage 1..5", show=False),
    Key("0", "show_attached", "Attached",
        "show the --attach folder (or the run opened in the runs view) again (after 1-5)", show=False),
    Key("?", "help", "Help", "this screen"),
    Key("q", "quit", "Quit", "quit; a running trainer keeps running"),
)
# The runs view's own keys (kssm_tui.screens.runs); `?` lists them under their own heading.
RUNS_VIEW_KEYS: tuple[Key, ...] = (
    Key("space", "mark", "Mark", "mark / unmark the run under the cursor for overlay (at most 8)"),
    Key("enter", "open", "Open", "open the run under the cursor on the dashboard, as --attach does (only reads it)"),
    Key("up/down", "cursor", "Move", "move between runs", show=False),
    Key("escape", "close", "Back", "back to the dashboard (the marked runs stay overlaid)"),
)
MUTATING = frozenset(k.action for k in KEYS if k.mutates)
MUTATING_KEYS = frozenset(k.key for k in KEYS if k.mutates)


def bindings() -> list[Binding]:
    out = []
    for k in KEYS:
        if k.action == "select":
            out += [Binding(str(n), f"select({n})", f"Stage {n}", show=False, id=f"select_{n}") for n in range(1, 6)]
        else:
            key = "question_mark" if k.key == "?" else k.key
            out.append(Binding(key, k.action, k.label, show=k.show, id=k.action))
    return out
