"""Tell a person: on every hold, stage result, recovery and the end.

Three channels, each best effort (a failing one is logged by the caller and never stops the autopilot):
a terminal bell (when stderr is a terminal), `tmux display-message` when $TMUX is set, and `--notify CMD`
run through the shell with the event as one JSON object on its stdin (10 s at most).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Callable

# Which decisions a person hears about.
NOTIFY_KINDS = frozenset({"hold", "pass", "remedy", "resume", "retry", "rewind", "stop", "done", "stopped", "attach"})
NOTIFY_TIMEOUT_S = 10.0


def message(event: dict[str, Any]) -> str:
    """One line: 'kssm autopilot: stage 2 (Short validation): pass: gate passed ...'."""
    where = f"stage {event['stage']}" if event.get("stage") else "plan"
    if event.get("stage_name"):
        where += f" ({event['stage_name']})"
    text = f"kssm autopilot: {where}: {event.get('decision', '?')}: {event.get('reason', '')}"
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:300]


class Notifier:
    def __init__(self, command: str | None = None, *, bell: bool | None = None, tmux: bool | None = None,
                 log: Callable[[str], None] = lambda _line: None):
        self.command = command
        self.bell = sys.stderr.isatty() if bell is None else bell
        self.tmux = bool(os.environ.get("TMUX")) and shutil.which("tmux") is not None if tmux is None else tmux
        self.log = log

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("decision") not in NOTIFY_KINDS:
            return
        line = message(event)
        if self.bell:
            try:
                sys.stderr.write("\a")
                sys.stderr.flush()
            except OSError:
                pass
        if self.tmux:
            self._run(["tmux", "display-message", line], None, "tmux display-message")
        if self.command:
            data = json.dumps(event, allow_nan=False, default=str).encode("utf-8")
            self._run(["/bin/sh", "-c", self.command], data, f"--notify {self.command!r}")

    def _run(self, argv: list[str], stdin: bytes | None, what: str) -> None:
        try:
            feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=NOTIFY_TIMEOUT_S,
                               start_new_session=True, **feed)
        except (OSError, subprocess.SubprocessError) as exc:
            self.log(f"notify: {what} failed: {exc}")
            return
        if r.returncode != 0:
            err = (r.stderr or b"").decode("utf-8", "replace").strip().splitlines()
            self.log(f"notify: {what} exited {r.returncode}" + (f": {err[-1]}" if err else ""))
