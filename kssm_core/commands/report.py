"""`kssm report [RUNS_ROOT | RUN_DIR ...] [--out DIR]`: report.md plus one PNG figure per metric.

Default: `results`. Output folder: --out, else RUNS_ROOT/report for one folder of runs, else ./report; never
inside a run folder. What it holds: kssm_core/reports/report.py. Exit codes: 0 written, 1 a write failed,
3 usage error (no such folder, no runs, a bad --out or --reference, matplotlib missing without --no-figures).
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 3


def register(sub) -> None:
    p = sub.add_parser("report", help="write report.md with figures (loss, val PPL, R, u_val, grad norm), the "
                                      "decision matrix and evaluation results of runs")
    p.add_argument("paths", nargs="*", metavar="PATH", help="a folder of runs, or run folders (default: results)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUNS_ROOT/report, or ./report for run folders)")
    p.add_argument("--x", choices=("step", "time"), default="step",
                   help="x axis: step (default) or active wall time (resume and pause gaps left out)")
    p.add_argument("--smoothing", type=float, default=0.6, metavar="W",
                   help="TensorBoard's debiased EMA weight, 0 (none) to 0.99 (default 0.6)")
    p.add_argument("--reference", action="append", default=[], metavar="FILE",
                   help="a published trajectory to draw dashed (CSV with a step column, or JSON lines); repeatable")
    p.add_argument("--no-figures", action="store_true", help="report.md alone (no matplotlib needed)")
    p.add_argument("--criteria", metavar="FILE", help="JSON file overriding the decision matrix's thresholds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kssm_core.reports.overlay import ReferenceError, read_reference
    from kssm_core.reports.report import ReportError, write_report
    from kssm_core.runbook.criteria import CriteriaError, load_criteria

    if not 0 <= args.smoothing < 1:
        print(f"kssm report: --smoothing must be in [0, 1), got {args.smoothing}", file=sys.stderr)
        return EXIT_USAGE
    try:
        criteria = load_criteria(args.criteria)
        refs = [read_reference(f) for f in args.reference]
    except (CriteriaError, ReferenceError) as exc:
        print(f"kssm report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = write_report(args.paths or ["results"], args.out, figures=False if args.no_figures else True,
                              criteria=criteria, references=refs, x_axis=args.x, smoothing=args.smoothing)
    except ReportError as exc:
        msg = str(exc)
        print(f"kssm report: {msg}", file=sys.stderr)
        return EXIT_FAILED if msg.startswith("cannot write") else EXIT_USAGE
    for note in result.notes:
        print(f"note: {note}")
    for path in result.figures:
        print(f"wrote {path}")
    print(f"wrote {result.report} ({len(result.runs)} run(s): {', '.join(result.runs)})")
    return EXIT_OK
