"""MatrixPanel: the runbook's decision matrix with verdict cells, the stage verdict, the action and remedies."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from kssm_core.runbook.verdicts import Action, MatrixRow, StageAssessment, Verdict

from ..safe_text import clean, one_line

# The tag makes each cell readable without colour (NO_COLOR, monochrome terminals).
VERDICT_TAGS = {Verdict.HEALTHY: "OK", Verdict.WARNING: "WARN", Verdict.FAILURE: "FAIL", Verdict.PENDING: ".."}
VERDICT_STYLES = {
    Verdict.HEALTHY: "bold green",
    Verdict.WARNING: "bold yellow",
    Verdict.FAILURE: "bold red",
    Verdict.PENDING: "dim",
}
ACTION_TEXT = {
    Action.PROCEED: "proceed to the next stage",
    Action.INVESTIGATE: "investigate, possibly adjust hyperparameters and retry this stage",
    Action.STOP: "stop, debug, restart the stage or revise the architecture",
    Action.WAIT: "wait: the stage is running or has too little data",
}
STAGE_W = 1
METRIC_W = 12
TAG_W = 5  # 'WARN?': a provisional cell (judged before its stage's milestone) carries a '?'


def _verdict(v) -> Verdict:
    try:
        return Verdict(v)
    except ValueError:
        return Verdict.PENDING


class MatrixPanel(Widget):
    """Stage | Metric | verdict | reason, current stage marked with ``>`` and bold, then verdict, action, remedies.

    Reasons, notes and remedies are untrusted text: cleaned and appended as plain Text, never markup. A remedy is
    printed whole on its own line (it wraps rather than being cut) so it can be copied and pasted.
    """

    DEFAULT_CSS = """
    MatrixPanel {
        height: auto;
        min-height: 3;
    }
    MatrixPanel > .matrix-panel--current {
        text-style: bold;
    }
    """
    COMPONENT_CLASSES = {"matrix-panel--current"}

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._rows: list[MatrixRow] = []
        self._current: int | None = None
        self._assessment: StageAssessment | None = None

    def set_rows(
        self,
        rows: Sequence[MatrixRow],
        current_stage: int | None,
        assessment: StageAssessment | None,
    ) -> None:
        self._rows = sorted(rows, key=lambda r: r.stage)  # stable: keeps the runbook's metric order per stage
        self._current = current_stage
        self._assessment = assessment
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return max(1, len(self.render_text(max(width, 1)).wrap(self.app.console, max(width, 1))))

    def render(self) -> Text:
        return self.render_text(self.size.width)

    def render_text(self, width: int) -> Text:
        out = Text(end="")
        if not self._rows and self._assessment is None:
            out.append("decision matrix: no data yet", style="dim")
            return out
        current_style = self._current_style()
        metric_w = max([6] + [len(clean(r.metric)) for r in self._rows])
        metric_w = min(METRIC_W, metric_w)
        reason_w = max(8, width - (1 + STAGE_W + 1 + metric_w + 1 + TAG_W + 1))
        out.append(f" {'S':<{STAGE_W}} {'Metric':<{metric_w}} {'Cell':<{TAG_W}} Reason", style="bold underline")
        previous_stage = None
        for row in self._rows:
            is_current = row.stage == self._current
            verdict = _verdict(row.verdict)
            line = Text(no_wrap=True, overflow="crop", end="")
            mark = ">" if is_current else " "
            stage = str(row.stage) if row.stage != previous_stage else ""
            previous_stage = row.stage
            line.append(f"{mark}{stage:<{STAGE_W}} ", style=current_style if is_current else "")
            line.append(one_line(row.metric, metric_w).ljust(metric_w) + " ", style=current_style if is_current else "")
            so_far = bool(row.provisional) and verdict is not Verdict.PENDING
            tag = VERDICT_TAGS[verdict] + ("?" if so_far else "")
            line.append(f"{tag:<{TAG_W}}", style=VERDICT_STYLES[verdict].replace("bold ", "") if so_far else VERDICT_STYLES[verdict])
            line.append(" ")
            line.append(one_line(row.reason, reason_w))
            out.append("\n")
            out.append_text(line)
        a = self._assessment
        if a is not None:
            verdict = _verdict(a.verdict)
            out.append("\n")
            out.append(VERDICT_TAGS[verdict] + " ", style=VERDICT_STYLES[verdict])
            if a.summary:
                out.append(one_line(a.summary, max(8, width - 6)), style="bold")
            else:
                out.append(f"Stage {a.stage}: {verdict.value.upper()}", style="bold")
            try:
                action = ACTION_TEXT[Action(a.action)]
            except ValueError:
                action = clean(str(a.action))
            out.append("\nAction: ", style="bold")
            out.append(action)
        for row in self._rows:
            verdict = _verdict(row.verdict)
            if verdict not in (Verdict.WARNING, Verdict.FAILURE) or not (row.remedy or row.remedy_note):
                continue
            out.append("\n")
            out.append(f"{VERDICT_TAGS[verdict]} ", style=VERDICT_STYLES[verdict])
            out.append(f"stage {row.stage} {one_line(row.metric, METRIC_W)}")
            if row.remedy_note:
                out.append(": " + one_line(row.remedy_note, max(8, width - 24)), style="italic")
            if row.remedy:
                # Whole and on lines of its own so it can be selected and pasted; each line indented by 2.
                for cmd_line in clean(row.remedy).split("\n"):
                    out.append("\n  ")
                    out.append(cmd_line)
        return out

    def _current_style(self):
        try:
            return self.get_component_rich_style("matrix-panel--current")
        except Exception:  # not mounted
            return "bold"
