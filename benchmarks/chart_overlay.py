"""Time MetricChart's overlay of runs: 5 runs x 100,000 logged steps each, smoothed with TensorBoard's debiased EMA
(raw faint beneath) and a reference curve, as the cockpit's charts would draw a comparison.

Run: .venv/bin/python benchmarks/chart_overlay.py [--runs 5] [--points 100000] [--width 100] [--height 20]
     [--repeats 7] [--quick]
Prints, with smoothing and without: set_data + first render (conversion and the EMA over every point, what opening
a comparison costs), a redraw at a new size (a resize or a tab switch: nothing recomputed), and set_data + render
after 200 new readings per run (a live run: the EMA continues from its kept state).
No Textual app is started: render_plain() is what render() calls.
"""

from __future__ import annotations

import argparse
import array
import math
import os
import statistics
import time

from kssm_tui.widgets.chart import MetricChart


def run_series(n: int, k: int) -> tuple[array.array, array.array]:
    """One run's loss as array('d') (what RunHistory's columns are): decaying, noisy, a little different per run."""
    steps = array.array("d", range(0, 20 * n, 20))
    loss = array.array("d", (8.0 * math.exp(-i / (n / (3 + k))) + 2.0 + 0.15 * math.sin(i * 0.7 + k)
                             + 0.05 * ((i * 2654435761 + k) % 97) / 97 for i in range(n)))
    return steps, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--height", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 repeats (make bench)")
    a = ap.parse_args()
    repeats = 3 if a.quick else a.repeats
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine: figures are noisy)")
    runs = [run_series(a.points, k) for k in range(a.runs)]
    series = [(f"run{k}", s, v) for k, (s, v) in enumerate(runs)]
    ref = ("paper", [0, 10 * a.points, 20 * a.points], [9.0, 3.0, 2.2])
    warm = MetricChart("loss")
    warm.set_data([("w", [1, 2, 3], [1.0, 2.0, 1.5])])
    warm.render_plain(a.width, a.height)  # first plotext build pays for imports

    slots = list(range(a.runs))

    def measure(label: str, **kw) -> None:
        cold, grow, resize = [], [], []
        for k in range(repeats):
            chart = MetricChart("loss")
            t0 = time.perf_counter()
            chart.set_data(series, run_slots=slots, references=[ref], **kw)  # a comparison opened: everything new
            chart.render_plain(a.width, a.height)
            t1 = time.perf_counter()
            chart.render_plain(a.width - 1, a.height)  # same data, another size (a resize, a tab switch)
            t2 = time.perf_counter()
            more = [(name, s + array.array("d", (s[-1] + 20 * (j + 1) for j in range(200))),
                     v + array.array("d", v[-200:])) for name, s, v in series]  # 200 new readings per run
            t3 = time.perf_counter()
            chart.set_data(more, run_slots=slots, references=[ref], **kw)
            chart.render_plain(a.width - 1, a.height)
            t4 = time.perf_counter()
            cold.append(t1 - t0)
            resize.append(t2 - t1)
            grow.append(t4 - t3)

        def fmt(xs) -> str:
            return f"median {statistics.median(xs) * 1e3:6.1f} ms (max {max(xs) * 1e3:6.1f})"

        print(f"{a.runs} runs x {a.points:,} points + 1 reference at {a.width}x{a.height}, {label}:\n"
              f"  set_data + render, all new: {fmt(cold)}\n"
              f"  redraw at a new size:       {fmt(resize)}\n"
              f"  +200 readings per run:      {fmt(grow)}")

    measure("EMA 0.6 with raw faint", smoothing=True, ema_weight=0.6)
    measure("raw only")


if __name__ == "__main__":
    main()
