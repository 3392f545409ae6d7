"""Capture the README's dashboard screenshot from a live run: press `n`, let Stage 1 train, save an SVG.

Nothing is staged: a fresh runs root in a temp folder, the real key path, the real trainer subprocess on
the embedded corpus. The screenshot is taken once the trainer has logged --at-step steps (default 60),
i.e. while it is still training, then the trainer is left to finish and the temp folder is removed.

    .venv/bin/python scripts/capture_screenshot.py [--out docs/img/dashboard-live.svg] [--size 110x36]

--overlay: the README's overlay capture instead. Two real Stage 1 runs are trained first (`kssm train --stage 1`
into results/stage1, then the same at 3x the learning rate, `--learning-rate 0.003`, into lr3e-3/stage1), then
the cockpit opens as `kssm-tui results --compare results/stage1 lr3e-3/stage1`, smoothing on (`m`), and the
screen is saved (default docs/img/overlay-two-runs.svg).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def capture(work: Path, out: Path, size: tuple[int, int], at_step: int, timeout: float) -> int:
    from kssm_tui.app import KssmApp

    os.chdir(work)  # relative paths on screen, as a user who ran `kssm-tui` in their project sees them
    app = KssmApp(Path("results"), cwd=work)
    async with app.run_test(size=size) as pilot:
        end = time.monotonic() + timeout
        while not app.stages and time.monotonic() < end:
            await pilot.pause(0.1)
        await pilot.press("n")  # what a user presses on a fresh machine
        while time.monotonic() < end:
            v = app.view
            if v is not None and v.lock_state == "live" and (v.last_step or 0) >= at_step:
                break
            await pilot.pause(0.2)
        else:
            print(f"the trainer did not reach step {at_step} in {timeout:.0f} s", file=sys.stderr)
            return 1
        await pilot.pause(1.5)  # one more tail tick and resource sample on screen
        step = app.view.last_step
        out.parent.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(filename=out.name, path=str(out.parent))
        print(f"saved {out} at step {step} of a live Stage 1 run")
        child = app.controller.child.proc if app.controller.child_alive() else None
    if child is not None:  # the TUI leaves training running on quit; wait for it before removing its folder
        child.wait()
    return 0


def train(work: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "kssm_core.cli", "train", "--stage", "1", *args]
    print("$ kssm " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)


async def capture_overlay(work: Path, out: Path, size: tuple[int, int], timeout: float) -> int:
    from kssm_tui.app import KssmApp

    os.chdir(work)
    runs = [Path("results/stage1"), Path("lr3e-3/stage1")]
    train(work, "--output-dir", str(runs[0]))
    train(work, "--learning-rate", "0.003", "--output-dir", str(runs[1]))
    app = KssmApp(Path("results"), cwd=work, compare=runs)
    async with app.run_test(size=size) as pilot:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not (app.view is not None and app._shown_overlay() is not None):
            await pilot.pause(0.1)
        await pilot.press("m")  # smoothing: TensorBoard's EMA, the raw series faint beneath
        while time.monotonic() < end and not (app._shown_overlay() is not None and app._shown_overlay().smoothing):
            await pilot.pause(0.1)
        if time.monotonic() >= end:
            print("the overlay did not appear in time", file=sys.stderr)
            return 1
        await pilot.pause(1.0)
        app.clear_notifications()
        await pilot.pause(0.2)
        out.parent.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(filename=out.name, path=str(out.parent))
        print(f"saved {out}: {', '.join(str(r) for r in runs)} overlaid, smoothing on")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--overlay", action="store_true", help="two real runs overlaid (the README's overlay capture)")
    ap.add_argument("--size", default="110x36")
    ap.add_argument("--at-step", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    out = args.out or ROOT / "docs" / "img" / ("overlay-two-runs.svg" if args.overlay else "dashboard-live.svg")
    work = Path(tempfile.mkdtemp(prefix="kssm-shot-"))
    here = Path.cwd()
    try:
        if args.overlay:
            return asyncio.run(capture_overlay(work, out.resolve(), (w, h), args.timeout))
        return asyncio.run(capture(work, out.resolve(), (w, h), args.at_step, args.timeout))
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
