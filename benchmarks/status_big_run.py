"""Benchmark `kssm status --json` on a run with 1,000,000 events (about 100k logged steps, the rest heartbeats).

Prints, for each call, the wall time and the peak RSS of the `kssm status` process (measured with
resource.getrusage(RUSAGE_CHILDREN) in a small wrapper process, so each figure is one call's own):
  cold    no cache: the whole file is read
  warm    the cache is current: nothing new is read
  grown   10,000 events appended: only the new bytes are read (bytes_read is printed)
Targets (issue 3), for 1,000,000 events: under 2 s and under 300 MB. CPU time (user + sys) is printed too: on a shared, loaded
machine the wall time includes waiting for a core. Usage: python benchmarks/status_big_run.py [--events N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_big_run import lines  # noqa: E402

WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)\n"
    "wall = time.perf_counter() - t\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "rss, cpu = ru.ru_maxrss * 1024, ru.ru_utime + ru.ru_stime\n"
    "body = json.loads(r.stdout)\n"
    "print(json.dumps({'wall_s': wall, 'cpu_s': cpu, 'rss_bytes': rss, 'rc': r.returncode, 'read': body['runs'][0]['read']}))\n"
)


def measure(run_dir: Path, env: dict) -> dict:
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "kssm_core", "status", str(run_dir), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--append", type=int, default=10_000)
    ap.add_argument("--keep", help="write the run here (kept) instead of a temp folder")
    ap.add_argument("--quick", action="store_true", help="100,000 events (make bench); the targets are for 1,000,000")
    a = ap.parse_args()
    if a.quick:
        a.events, a.append = 100_000, 1_000
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="kssm-bench-"))
    run_dir = root / "big"
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "events.jsonl"
    t = time.perf_counter()
    with open(path, "w") as fh:
        fh.writelines(s + "\n" for s in lines(a.events))
    print(f"wrote {a.events:,} events, {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s ({path})")
    env = dict(os.environ, KSSM_CACHE_DIR=str(root / "cache"), OMP_NUM_THREADS="1")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine: figures vary)")
    rows = []
    cold = measure(run_dir, env)
    rows.append(("cold", cold))
    rows.append(("warm", measure(run_dir, env)))
    last_step = 0
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 50_000))
        for raw in fh.read().splitlines()[1:]:
            try:
                last_step = max(last_step, int(json.loads(raw).get("step") or 0))
            except (ValueError, AttributeError):
                pass
    before = path.stat().st_size
    with open(path, "a") as fh:
        fh.writelines(s + "\n" for s in lines(a.append, last_step, time.time() - a.append * 0.01, with_header=False))
    appended = path.stat().st_size - before
    grown = measure(run_dir, env)
    rows.append(("grown", grown))
    for name, r in rows:
        ok = "ok" if r["wall_s"] < 2 and r["rss_bytes"] < 300e6 else "OVER TARGET"
        print(f"{name:6s} wall {r['wall_s']:.2f} s  cpu {r['cpu_s']:.2f} s  peak RSS {r['rss_bytes'] / 1e6:.0f} MB  "
              f"bytes read {r['read']['bytes_read']:,}  lines {r['read']['lines']:,}  from cache {r['read']['from_cache']}  [{ok}]")
    print(f"appended {appended:,} bytes; the grown call read {grown['read']['bytes_read']:,} "
          f"({'only the new bytes' if grown['read']['bytes_read'] == appended else 'MORE than the new bytes'})")
    if not a.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
