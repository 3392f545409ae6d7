"""Time to the first full dashboard render of a run with 1,000,000 events (target: under 2 s).

Writes a synthetic run (steps, heartbeats, evals, samples, checkpoints) into a temp runs root,
opens the cockpit headless at 100x34 and measures, from App start:
  full dashboard - every panel drawn with data: stage plan, run, charts, matrix, events (for a long log
                   the newest few MB are shown first, the matrix marked provisional, while the rest is read)
  complete       - every event folded in, the matrix judged on the whole history
and the same full render a second time, when kssm_core.runbook.status's history cache lets it skip the re-read.
Usage: python benchmarks/tui_first_render.py [--events N] [--quick] [--runs N]
(--runs repeats the first open, each time with an empty status cache, and prints the load average of each.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import write_long_run  # noqa: E402


async def open_once(root: Path, total: int) -> tuple[float, float]:
    from kssm_tui.app import KssmApp

    app = KssmApp(root, watch=False, tail_interval=0.5)
    t0 = time.perf_counter()
    first = full = None

    async def painted() -> None:
        """Until the screen refresh that draws the current view has happened."""
        done = asyncio.Event()
        app.call_after_refresh(done.set)
        await done.wait()

    async with app.run_test(size=(100, 34)):
        while time.perf_counter() - t0 < 120:
            v = app.view
            if v is not None and first is None and v.matrix_rows and app.stages and v.last_step:
                await painted()
                first = time.perf_counter() - t0
            if v is not None and v.state != "loading" and v.matrix_rows:
                await painted()
                full = time.perf_counter() - t0
                break
            await asyncio.sleep(0.01)
    return first or float("nan"), full or float("nan")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--quick", action="store_true", help="100,000 events (for make bench)")
    p.add_argument("--runs", type=int, default=1, help="first opens to time, each with an empty cache")
    args = p.parse_args()
    n = 100_000 if args.quick else args.events
    from kssm_core.runfolder import steplines

    print(f"step lines decoded by {'msgspec (typed fast path)' if steplines.available() else 'json (msgspec missing)'}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        t = time.perf_counter()
        total = write_long_run(root / "final", n)
        size = (root / "final" / "events.jsonl").stat().st_size
        print(f"wrote {total:,} events ({size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
        for i in range(max(1, args.runs)):
            # keep the status cache out of ~/.cache, and empty for each first open
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / f"cache{i}")
            load = os.getloadavg()[0]
            first, full = asyncio.run(open_once(root, total))
            print(f"first open : full dashboard {first:.2f} s (target < 2 s), complete history {full:.2f} s"
                  f"  [load {load:.2f} before]")
        first2, full2 = asyncio.run(open_once(root, total))
        print(f"second open: full dashboard {first2:.2f} s, complete history {full2:.2f} s (kssm status cache)")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine inflates these)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
