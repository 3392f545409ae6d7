"""The cockpit in a real terminal (tmux send-keys / capture-pane): start Stage 1 with `n`, watch steps
advance, kill -9 the trainer, see CRASHED, resume with `r` from the checkpoint, quit while training and
attach again, then drop the terminal (as a lost SSH connection does) and see training go on. Uses a private tmux server (-L) so it never touches the user's sessions.

The spawned trainer is made small through KSSM_TUI_TRAIN_ARGS (extra `kssm train` flags the cockpit
appends to every trainer it starts).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TUI = Path(sys.executable).parent / "kssm-tui"
STEP_RE = re.compile(r"(RUNNING|CRASHED|INTERRUPTED|PASSED|COMPLETED|WARNING|FAILED)\s+step (\d+) / (\d+)")


class Tmux:
    def __init__(self, cwd: Path):
        self.sock = f"kssm-e2e-{os.getpid()}"
        self.cwd = cwd

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, timeout=20).stdout

    def start(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", "new-session", "-d", "-s", "e2e", "-x", "100",
                        "-y", "34", "-c", str(self.cwd), "bash --norc --noprofile"], check=True, timeout=20,
                       env={**os.environ, "TERM": "xterm-256color"})

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "e2e", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "e2e")

    def wait(self, pred, timeout: float = 60.0, what: str = "") -> str:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            text = self.screen()
            if pred(text):
                return text
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=20)


def run_line(text: str) -> tuple[str, int, int] | None:
    m = STEP_RE.search(text)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def lock_pid(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "training.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.skipif(not TUI.exists(), reason="the kssm-tui console script is not installed in this environment")
@pytest.mark.timeout(240)
def test_start_crash_resume_quit_attach(tmp_path, data_dir):
    run_dir = tmp_path / "results" / "stage1"
    extra = f"--max-steps 3000 --log-interval 1 --save-interval 20 --eval-interval 1000 --data-dir {data_dir} " \
            "--preset tiny --device cpu --seq-len 32 --batch-size 4 --grad-accum 1 --eval-batches 2"
    launch = (f"export OMP_NUM_THREADS=1 KSSM_TUI_TRAIN_ARGS={shlex.quote(extra)}; "
              f"{shlex.quote(str(TUI))} results")
    tm = Tmux(tmp_path)
    pids: set[int] = set()
    try:
        tm.start()
        tm.keys(launch, "Enter")
        tm.wait(lambda s: "Next stage" in s, 30, "the dashboard")

        # n: Stage 1 starts on the embedded corpus; steps advance on screen.
        tm.keys("n")
        first = tm.wait(lambda s: (r := run_line(s)) is not None and r[0] == "RUNNING" and r[1] >= 5, 90, "steps")
        later = tm.wait(lambda s: (r := run_line(s)) is not None and r[1] > run_line(first)[1] and r[1] >= 45, 90,
                        "steps advancing past a checkpoint")
        assert run_line(later)[2] == 3000
        pid = lock_pid(run_dir)
        assert alive(pid)
        pids.add(pid)

        # kill -9: the cockpit reaps its child and shows CRASHED.
        os.kill(pid, signal.SIGKILL)
        crashed = tm.wait(lambda s: "CRASHED" in s, 30, "CRASHED")
        crash_step = run_line(crashed)[1]

        # r: one keystroke clears the stale lock and resumes from the newest checkpoint.
        tm.keys("r")
        tm.wait(lambda s: (r := run_line(s)) is not None and r[0] == "RUNNING" and r[1] > crash_step, 90,
                "training to continue after the crash")
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                  if line.startswith("{") and line.endswith("}")]
        starts = [e for e in events if e.get("event") == "run_start"]
        assert len(starts) == 2 and starts[1]["resumed_from"] and 20 <= starts[1]["start_step"] <= crash_step
        new_pid = lock_pid(run_dir)
        assert alive(new_pid) and new_pid != pid
        pids.add(new_pid)

        # q: the cockpit exits; the trainer keeps running, and the shell shows no escape garbage.
        tm.keys("q")
        after = tm.wait(lambda s: "keeps running" in s, 20, "the quit message")
        assert "\x1b" not in after and alive(new_pid)
        step_at_quit = max(e.get("step", 0) for e in events if e.get("event") == "step")

        # Start again: it finds the live run through its lock and attaches to it.
        tm.keys("clear; " + launch, "Enter")
        again = tm.wait(lambda s: (r := run_line(s)) is not None and r[0] == "RUNNING" and r[1] > step_at_quit, 60,
                        "re-attached live run")
        assert f"PID {new_pid}" in again

        # A lost connection: the terminal goes away under the cockpit (SIGHUP); training goes on.
        tm.kill()
        time.sleep(2.0)
        assert alive(new_pid)
        steps_before = (run_dir / "events.jsonl").stat().st_size
        time.sleep(1.5)
        assert (run_dir / "events.jsonl").stat().st_size > steps_before
    finally:
        tm.kill()
        for p in pids | ({lock_pid(run_dir)} - {None}):
            if alive(p):
                os.kill(p, signal.SIGKILL)
