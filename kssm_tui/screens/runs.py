"""The runs view (`v`): every run folder with its state, last step, best val PPL and verdict; space marks runs
to overlay on the dashboard's charts, enter opens the run under the cursor on the dashboard (App.open_run). The
rows come from the runs worker (kssm_tui.runs); this screen only copies them into a table. Folder names are
untrusted: every cell is a Text of cleaned text, never markup."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from ..keys import RUNS_VIEW_KEYS
from ..safe_text import ascii_mode, clean
from ..widgets.chart import RUN_ASCII_MARKERS, RUN_COLORS, RUN_GLYPHS, rich_color
from ..widgets.stage_plan import STATE_STYLES

COLUMNS = ("", "run", "kind", "state", "step", "best val PPL", "verdict")
VERDICT_STYLES = {"healthy": "green", "warning": "yellow", "failure": "bold red", "pending": "dim"}


class RunsScreen(ModalScreen[None]):
    """The list of runs; the App owns the marks and the shown run (RunsScreen calls app.toggle_mark, app.open_run)."""

    BINDINGS = [Binding("escape,v", "close", "Back", id="runs.close"),
                Binding("space", "mark", "Mark", id="runs.mark")]

    def __init__(self) -> None:
        super().__init__(id="runs-view")
        self.rows: list = []
        self.done = False
        self._sig: tuple | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="runs-box"):
            yield Static(id="runs-title")
            table = DataTable(id="runs-table", cursor_type="row", zebra_stripes=False)
            yield table
            hints = Text()
            for k in RUNS_VIEW_KEYS:
                if k.show:
                    hints.append(f" {k.key}", style="bold")
                    hints.append(f" {k.label.lower()} ")
            hints.append(" x", style="bold")
            hints.append(" axis (on the dashboard)  ")
            yield Static(hints, id="runs-keys")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for c in COLUMNS:
            table.add_column(c, key=c or "mark")
        self.set_rows(self.app.runs_rows, self.app.runs_done)
        table.focus()

    # ---- from the App ---------------------------------------------------------------------------------
    def set_rows(self, rows: list, done: bool) -> None:
        self.rows, self.done = list(rows), done
        self.refresh_rows()

    def refresh_rows(self) -> None:
        """Rewrite the table (only when something shown changed); the cursor stays on its run."""
        marked: dict[Path, int] = self.app.marked
        sig = (tuple(self.rows), tuple(sorted((str(k), v) for k, v in marked.items())), self.done)
        self._title(marked)
        if sig == self._sig:
            return
        self._sig = sig
        table = self.query_one(DataTable)
        current = self.current_folder()
        table.clear()
        asc = ascii_mode()
        for r in self.rows:
            slot = marked.get(r.key)
            mark = Text("")
            if slot is not None:
                mark = Text((RUN_ASCII_MARKERS if asc else RUN_GLYPHS)[slot % len(RUN_GLYPHS)],
                            style=f"bold {rich_color(RUN_COLORS[slot % len(RUN_COLORS)])}")
            step = "-" if r.step is None else (f"{r.step}/{r.target}" if r.target else str(r.step))
            ppl = "-" if r.best_ppl is None else f"{r.best_ppl:.4g}"
            verdict = (r.verdict or "-").upper() if r.verdict != "pending" else "pending"
            table.add_row(mark, Text(clean(r.name)), Text(r.origin, style="dim"),
                          Text(clean(r.state), style=STATE_STYLES.get(r.state, "")), Text(step, justify="right"),
                          Text(ppl, justify="right"), Text(verdict, style=VERDICT_STYLES.get(r.verdict or "", "")),
                          key=str(r.folder))
        if current is not None:
            for i, r in enumerate(self.rows):
                if r.key == current:
                    table.move_cursor(row=i, animate=False)
                    break

    def _title(self, marked: dict) -> None:
        t = Text()
        t.append("Runs", style="bold")
        t.append(f"  {clean(self.app.runs_root)}")
        n = len(self.rows)
        t.append(f"  {n} run folder{'s' if n != 1 else ''}")
        if not self.done:
            judged = sum(1 for r in self.rows if r.state != "loading")
            t.append(f"  (reading: {judged} of {n})" if n else "  (reading...)", style="dim")
        t.append(f"  {len(marked)} marked for overlay" if marked else "  none marked: the charts show one run",
                 style="cyan" if marked else "dim")
        self.query_one("#runs-title", Static).update(t)

    def current_row(self):
        """The RunRow under the cursor (kssm_tui.runs.RunRow), None in an empty list."""
        table = self.query_one(DataTable)
        if not self.rows or table.row_count == 0:
            return None
        i = table.cursor_row
        return self.rows[i] if 0 <= i < len(self.rows) else None

    def current_folder(self) -> Path | None:
        row = self.current_row()
        return row.key if row is not None else None

    # ---- keys -----------------------------------------------------------------------------------------
    def action_mark(self) -> None:
        folder = self.current_folder()
        if folder is not None:
            self.app.toggle_mark(folder)

    def action_open(self) -> None:
        """Show the run under the cursor on the dashboard and go back to it (the marks stay)."""
        row = self.current_row()
        if row is None:
            return
        self.dismiss(None)
        self.app.open_run(row.folder, row.name)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:  # enter (or a click on the cursor)
        event.stop()
        self.action_open()

    def action_close(self) -> None:
        self.dismiss(None)
