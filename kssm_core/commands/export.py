"""`kssm export RUN_DIR [RUN_DIR ...] --format csv|jsonl|tensorboard --out DIR`: every metric of every run.

A folder of runs (results/) stands for the run folders inside it. Layout and run names:
kssm_core/reports/export.py. Exit codes: 0 written, 3 usage error (no such run, bad --out, a TensorBoard
folder holding another writer's files), 1 a write failed.
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 3


def register(sub) -> None:
    p = sub.add_parser("export", help="export every metric of runs to CSV, JSON lines or TensorBoard event files")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders, or folders of runs (results/)")
    p.add_argument("--format", choices=("csv", "jsonl", "tensorboard"), default="csv", help="default: csv")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; never inside a run folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kssm_core.reports.export import ExportError, export_runs
    from kssm_core.reports.rundata import expand_runs

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"kssm export: no such folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    dirs = expand_runs(args.paths)
    if not dirs:
        print(f"kssm export: no run folders in {', '.join(args.paths)} (a run folder holds events.jsonl "
              f"or training.log)", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = export_runs(dirs, args.out, args.format)
    except ExportError as exc:
        msg = str(exc)
        print(f"kssm export: {msg}", file=sys.stderr)
        return EXIT_FAILED if msg.startswith("cannot write") else EXIT_USAGE
    for name, steps, evals, samples in result.runs:
        print(f"{name}: {steps} step readings, {evals} evaluations, {samples} samples")
    for path in result.files:
        print(f"wrote {path}")
    return EXIT_OK
