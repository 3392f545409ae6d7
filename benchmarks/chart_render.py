"""Time MetricChart renders (1k / 100k / 1M points) and check memory over 1,000 re-renders (plotext's global
figure is cleared on every build; this proves it does not grow).

Run: .venv/bin/python benchmarks/chart_render.py [--renders 1000] [--width 100] [--height 20]
Prints one line per measurement. No Textual app is started: render_plain() is what render() calls.
"""

from __future__ import annotations

import argparse
import array
import gc
import math
import os
import statistics
import time
import tracemalloc

import psutil

from kssm_tui.widgets.chart import MetricChart

R_ZONES = [(0.0, 0.10, "Unformed"), (0.10, 0.30, "Intimacy"), (0.30, 0.50, "Balance"), (0.50, 0.70, "Mystery"),
           (0.70, 0.85, "Wonder"), (0.85, 0.95, "Passion"), (0.95, 1.0, "Ache")]


def series(n: int, phase: float = 0.0) -> tuple[list[int], list[float], list[float]]:
    steps = list(range(n))
    total = [8.0 * math.exp(-i / max(n / 3, 1)) + 0.1 * math.sin(i / 50 + phase) + 2.0 for i in steps]
    return steps, total, [v - 0.3 for v in total]


def time_render(n: int, width: int, height: int, repeats: int = 5, as_array: bool = False) -> None:
    steps, total, ce = series(n)
    if as_array:  # array.array('d') converts to numpy without a copy: what a caller holding 1M points should pass
        steps, total, ce = (array.array("d", v) for v in (steps, total, ce))
    chart = MetricChart("loss")
    set_times, render_times = [], []
    for k in range(repeats):
        t0 = time.perf_counter()
        chart.set_data([("total", steps, total), ("ce", steps, ce)], smoothing=bool(k % 2))
        t1 = time.perf_counter()
        chart.render_plain(width, height)
        t2 = time.perf_counter()
        set_times.append(t1 - t0)
        render_times.append(t2 - t1)
    kind = "array.array" if as_array else "lists"
    print(
        f"{n:>9,} points x 2 series ({kind}) at {width}x{height}: set_data median {statistics.median(set_times) * 1e3:6.1f} ms,"
        f" render (incl. conversion) median {statistics.median(render_times) * 1e3:6.1f} ms,"
        f" max {max(render_times) * 1e3:6.1f} ms"
    )


def memory_growth(renders: int, width: int, height: int) -> None:
    proc = psutil.Process(os.getpid())
    steps, total, ce = series(10_000)
    r = [min(1.0, max(0.0, 0.5 + 0.4 * math.sin(i / 300))) for i in steps]
    charts = [MetricChart("loss"), MetricChart("R")]

    def one(k: int) -> None:
        bump = (k % 7) * 1e-3  # new data every time, so every render rebuilds with plotext
        if k % 2:
            charts[0].set_data([("total", steps, [v + bump for v in total]), ("ce", steps, ce)], log_y=k % 3 == 0)
            charts[0].render_plain(width, height)
        else:
            charts[1].set_data([("R", steps, [v + bump for v in r])], bands=R_ZONES, ylim=(0, 1))
            charts[1].render_plain(width, height)

    for k in range(50):  # warm-up: imports, caches, allocator pools
        one(k)
    gc.collect()
    tracemalloc.start()
    rss0 = proc.memory_info().rss
    snap0 = tracemalloc.take_snapshot()
    t0 = time.perf_counter()
    checkpoints = []
    for k in range(renders):
        one(k)
        if (k + 1) % max(renders // 4, 1) == 0:
            gc.collect()
            checkpoints.append((k + 1, tracemalloc.get_traced_memory()[0], proc.memory_info().rss))
    elapsed = time.perf_counter() - t0
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    tracemalloc.stop()
    print(f"{renders} chart rebuilds (loss and R alternately, 10k points each) in {elapsed:.1f} s"
          f" ({elapsed / renders * 1e3:.1f} ms each, slowed by tracemalloc)")
    for k, traced, rss in checkpoints:
        print(f"  after {k:>5} rebuilds: traced Python heap {traced / 1024:8.1f} KiB, RSS {rss / 2**20:7.1f} MiB")
    first, last = checkpoints[0], checkpoints[-1]
    print(f"  growth from rebuild {first[0]} to {last[0]}: traced heap {(last[1] - first[1]) / 1024:+.1f} KiB,"
          f" RSS {(last[2] - first[2]) / 2**20:+.1f} MiB; snapshot diff over the whole run {growth / 1024:+.1f} KiB"
          f" (includes the two charts' current data); RSS from start {(proc.memory_info().rss - rss0) / 2**20:+.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--renders", type=int, default=1000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--height", type=int, default=20)
    ap.add_argument("--skip-memory", action="store_true", help="only the timing lines")
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine: figures are noisy)")
    time_render(100, a.width, a.height)  # warm-up line: first plotext build
    for n in (1_000, 100_000, 1_000_000):
        time_render(n, a.width, a.height)
    time_render(1_000_000, a.width, a.height, as_array=True)
    if not a.skip_memory:
        memory_growth(a.renders, a.width, a.height)


if __name__ == "__main__":
    main()
