"""Capture the README's dashboard screenshot from a live run: press `n`, let Stage 1 train, save an SVG.

Nothing is staged: a fresh runs root in a temp folder, the real key path, the real trainer subprocess on
the embedded corpus. The screenshot is taken once the trainer has logged --at-step steps (default 60),
i.e. while it is still training, then the trainer is left to finish and the temp folder is removed.

    .venv/bin/python scripts/capture_screenshot.py [--out docs/img/dashboard-live.svg] [--size 110x36]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard-live.svg")
    ap.add_argument("--size", default="110x36")
    ap.add_argument("--at-step", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="kssm-shot-"))
    here = Path.cwd()
    try:
        return asyncio.run(capture(work, args.out.resolve(), (w, h), args.at_step, args.timeout))
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
