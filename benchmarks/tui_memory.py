"""Peak memory of the cockpit after opening a long run, and its growth while the run keeps growing.

Opens a run of N events (default 1,000,000) headless, waits until the whole history is folded in,
then appends N/5 more events (as a live run would) and waits again. Prints RSS at each point and
the peak (ru_maxrss). Bounded means: the growth per extra event is a few bytes of float columns,
and the event log, samples and charts do not grow with the run.
Usage: python benchmarks/tui_memory.py [--events N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import write_long_run  # noqa: E402


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def run(root: Path, extra: int) -> None:
    from kssm_tui.app import KssmApp

    print(f"before the App: RSS {rss_mib():.0f} MiB")
    app = KssmApp(root, watch=False)
    async with app.run_test(size=(100, 34)) as pilot:
        async def settled(step_at_least: int) -> None:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 300:
                v = app.view
                if v is not None and v.state not in ("loading",) and v.matrix_rows and (v.last_step or 0) >= step_at_least:
                    await pilot.pause()
                    return
                await asyncio.sleep(0.05)
            raise SystemExit("the App did not settle in 300 s")

        await settled(1)
        last = app.view.last_step
        print(f"opened ({app.view.events:,} events folded, step {last:,}): RSS {rss_mib():.0f} MiB")
        log = root / "final" / "events.jsonl"
        with open(log, "a") as fh:  # the run goes on: another `extra` events
            t = time.time()
            for i in range(1, extra // 2 + 1):
                s = last + i
                fh.write(json.dumps({"event": "step", "t": t, "step": s, "loss": 3.0, "ce": 3.0, "R": 0.3,
                                     "u_val": 1.2, "grad_norm": 2.0}) + "\n")
                fh.write(json.dumps({"event": "heartbeat", "t": t, "step": s, "phase": "train"}) + "\n")
        await settled(last + extra // 2)
        print(f"after {extra:,} more events (step {app.view.last_step:,}): RSS {rss_mib():.0f} MiB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB (includes reading slices of 16 MB and the matrix on the whole history)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 events (for make bench)")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.events
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KSSM_CACHE_DIR"] = str(Path(tmp) / "cache")
        root = Path(tmp) / "results"
        total = write_long_run(root / "final", n, end=False)
        print(f"run of {total:,} events ({(root / 'final' / 'events.jsonl').stat().st_size / 1e6:.0f} MB)")
        asyncio.run(run(root, n // 5))
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
