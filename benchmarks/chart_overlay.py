"""Time the overlay of runs: 5 runs x 100,000 logged steps each, smoothed with TensorBoard's debiased EMA (raw faint
beneath) and a reference curve.

Run: .venv/bin/python benchmarks/chart_overlay.py [--runs 5] [--points 100000] [--width 100] [--height 20]
     [--repeats 7] [--path cockpit|chart|both] [--quick]

--path cockpit (the cockpit's path): 5 run folders of 100k step events are written to a temp folder; the runs
worker's OverlayBuilder reads them and builds the overlay (debiased EMA over every point, thinned to
kssm_tui.overlay.OVERLAY_POINTS buckets per series), off the event loop; then what the event loop pays per frame:
MetricChart.set_data with the built series + render, and a redraw at a new size. Also timed: a rebuild after 200
new steps per run (a live run: the EMA continues from its kept state) and the time axis.
--path chart: MetricChart handed the full 100k-point series and smoothing itself (ema_weight), as a caller without
a worker would: set_data + first render, a redraw at a new size, and +200 readings per run.
No Textual app is started: render_plain() is what render() calls.
"""

from __future__ import annotations

import argparse
import array
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

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
    ap.add_argument("--path", choices=("cockpit", "chart", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="3 repeats, 20,000 points (make bench)")
    a = ap.parse_args()
    repeats = 3 if a.quick else a.repeats
    if a.quick:
        a.points = min(a.points, 20_000)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine: figures are noisy)")
    if a.path in ("cockpit", "both"):
        cockpit(a, repeats)
    if a.path in ("chart", "both"):
        chart_alone(a, repeats)


def fmt(xs, cpu=None) -> str:
    out = f"median {statistics.median(xs) * 1e3:6.1f} ms (max {max(xs) * 1e3:6.1f})"
    if cpu:  # this process' CPU time: what the work costs when a loaded machine preempts it
        out += f", CPU median {statistics.median(cpu) * 1e3:5.1f} ms (min {min(cpu) * 1e3:5.1f})"
    return out


def write_runs(root: Path, runs: int, n: int) -> list[Path]:
    """Run folders of n step events each (a resume halfway, an hour after the crash: the time axis leaves it out)."""
    out = []
    for k in range(runs):
        d = root / f"run{k}"
        d.mkdir(parents=True)
        steps, loss = run_series(n, k)
        t0 = 1_700_000_000.0
        with open(d / "events.jsonl", "w") as fh:
            fh.write(json.dumps({"event": "run_start", "t": t0, "stage": 4, "max_steps": 20 * n, "start_step": 0}) + "\n")
            for i in range(n):
                if i == n // 2:
                    t0 += 3600.0
                    fh.write(json.dumps({"event": "run_start", "t": t0 + 0.5 * i, "start_step": int(steps[i - 1])}) + "\n")
                fh.write(json.dumps({"event": "step", "t": t0 + 0.5 * i, "step": int(steps[i]), "loss": loss[i],
                                     "ce": loss[i] - 0.05, "R": 0.1 + 0.01 * math.sin(i), "u_val": 1.0,
                                     "grad_norm": 1.0 + 0.1 * math.cos(i)}) + "\n")
                if i % 500 == 499:
                    fh.write(json.dumps({"event": "eval", "t": t0 + 0.5 * i, "step": int(steps[i]),
                                         "val_loss": loss[i], "val_ppl": math.exp(loss[i])}) + "\n")
        out.append(d)
    return out


def cockpit(a, repeats: int) -> None:
    from kssm_tui.overlay import OverlayBuilder
    from kssm_tui.runs import run_key

    tmp = Path(tempfile.mkdtemp(prefix="kssm-overlay-bench-"))
    try:
        dirs = write_runs(tmp, a.runs, a.points)
        marked = tuple((run_key(d), k) for k, d in enumerate(dirs))
        ref = ("paper", [0, 10 * a.points, 20 * a.points], [9.0, 3.0, 2.2])
        warm = MetricChart("loss")
        warm.set_data([("w", [1, 2, 3], [1.0, 2.0, 1.5])])
        warm.render_plain(a.width, a.height)
        builder = OverlayBuilder()
        t0 = time.perf_counter()
        builder.poll([d for d, _ in marked])
        read_s = time.perf_counter() - t0
        builds, frames, resizes, grows, times = [], [], [], [], []
        frames_cpu, resizes_cpu = [], []
        for _ in range(repeats):
            builder._built = None  # noqa: SLF001 - a cold build each time (a comparison opened, smoothing toggled)
            builder._ema.clear()  # noqa: SLF001
            builder._axes_cache.clear()  # noqa: SLF001
            builder._pieces_cache.clear()  # noqa: SLF001
            t0 = time.perf_counter()
            view = builder.build(marked, time_axis=False, smoothing=True)
            builds.append(time.perf_counter() - t0)
            oc = view.charts["loss"]
            for k in range(3):  # what the event loop pays: the built series handed to the chart, drawn
                chart = MetricChart("loss")
                t0, c0 = time.perf_counter(), time.process_time()
                chart.set_data(oc.series, run_slots=oc.slots, smoothed=oc.smoothed, smoothing=True,
                               ema_weight=view.ema_weight, references=[ref], x_label=view.x_label)
                chart.render_plain(a.width, a.height)
                frames.append(time.perf_counter() - t0)
                frames_cpu.append(time.process_time() - c0)
                t0, c0 = time.perf_counter(), time.process_time()
                chart.render_plain(a.width - 1 - k, a.height)
                resizes.append(time.perf_counter() - t0)
                resizes_cpu.append(time.process_time() - c0)
            t0 = time.perf_counter()
            builder.build(marked, time_axis=True, smoothing=True)
            times.append(time.perf_counter() - t0)
        def append(d: Path) -> None:
            last = int(builder.runs[run_key(d)].history.steps.steps[-1])
            with open(d / "events.jsonl", "a") as fh:
                for j in range(200):
                    fh.write(json.dumps({"event": "step", "t": 1e10 + j, "step": last + 20 * (j + 1),
                                         "loss": 2.0, "R": 0.1, "u_val": 1.0, "grad_norm": 1.0}) + "\n")

        one = []
        builder.build(marked, time_axis=False, smoothing=True)
        for _ in range(repeats):  # one run training live, the others finished: only it is read and rebuilt
            append(dirs[0])
            t0 = time.perf_counter()
            builder.build_if_changed(marked, False, True)
            one.append(time.perf_counter() - t0)
        for _ in range(repeats):  # all of them live: 200 new steps per run, read and folded, the EMA continued
            builder.build(marked, time_axis=False, smoothing=True)
            for d in dirs:
                last = int(builder.runs[run_key(d)].history.steps.steps[-1])
                with open(d / "events.jsonl", "a") as fh:
                    for j in range(200):
                        fh.write(json.dumps({"event": "step", "t": 1e10 + j, "step": last + 20 * (j + 1),
                                             "loss": 2.0, "R": 0.1, "u_val": 1.0, "grad_norm": 1.0}) + "\n")
            t0 = time.perf_counter()
            builder.build_if_changed(marked, False, True)
            grows.append(time.perf_counter() - t0)
        points = sum(len(x) for _, x, _ in oc.series) + sum(len(s[0]) for s in oc.smoothed)
        print(f"cockpit path, {a.runs} runs x {a.points:,} logged steps + 1 reference at {a.width}x{a.height}, "
              f"EMA 0.6 with raw faint:\n"
              f"  runs worker: first read of the {a.runs} folders: {read_s * 1e3:7.1f} ms (once)\n"
              f"  runs worker: build (EMA over every point, 5 charts): {fmt(builds)}\n"
              f"  runs worker: build on the time axis:              {fmt(times)}\n"
              f"  runs worker: +200 steps in 1 run, read + rebuild: {fmt(one)}\n"
              f"  runs worker: +200 steps per run, read + rebuild:  {fmt(grows)}\n"
              f"  event loop:  set_data + render ({points:,} points handed over): {fmt(frames, frames_cpu)}\n"
              f"  event loop:  redraw at a new size:                {fmt(resizes, resizes_cpu)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def chart_alone(a, repeats: int) -> None:
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

        print(f"chart alone (smoothing in render), {a.runs} runs x {a.points:,} points + 1 reference at {a.width}x{a.height}, {label}:\n"
              f"  set_data + render, all new: {fmt(cold)}\n"
              f"  redraw at a new size:       {fmt(resize)}\n"
              f"  +200 readings per run:      {fmt(grow)}")

    measure("EMA 0.6 with raw faint", smoothing=True, ema_weight=0.6)
    measure("raw only")


if __name__ == "__main__":
    main()
