"""`kssm autopilot [RUNS_ROOT] [--plan FILE] [--through N] [--notify CMD]`: the runbook, unattended.

Exit codes (docs/autopilot.md): 0 every stage (through N) passed its gate; 1 held (a person must decide:
it says what and why; also when the autopilot itself was stopped); 2 refused to start (a bad plan, or
another autopilot already drives this runs root).
"""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("autopilot", help="walk the runbook's stages unattended: gates, remedies, crash recovery")
    p.add_argument("runs_root", nargs="?", default="results", metavar="RUNS_ROOT",
                   help="folder holding the stage folders (default: results)")
    p.add_argument("--plan", metavar="FILE", help="TOML plan (default: the runbook's five stages; docs/autopilot.md)")
    p.add_argument("--through", type=int, metavar="N", help="stop after stage N of the plan")
    p.add_argument("--notify", metavar="CMD", help="run CMD (through the shell) with each event as JSON on stdin")
    p.add_argument("--show", action="store_true", help="print the plan and its budgets, then exit (starts nothing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kssm_core.autopilot.plan import PlanError, load_plan
    from kssm_core.autopilot.supervisor import EXIT_REFUSED, run_autopilot

    try:
        plan = load_plan(args.plan)
        plan.through(args.through)  # validates N
    except PlanError as exc:
        print(f"kssm autopilot: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.show:
        print("\n".join(plan.through(args.through).describe()))
        return 0
    return run_autopilot(args.runs_root, plan, through=args.through, notify_cmd=args.notify)
