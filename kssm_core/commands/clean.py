"""`kssm clean DIR`: delete old checkpoint_*.pt files, never best_model.pt or the newest loadable one.

Exit codes: 0 done (or nothing to do, or --dry-run); 1 nothing deleted (bad DIR, a runs root such as
results/ instead of a run folder, no --yes on a pipe, cancelled) or some files could not be deleted (one stderr line each: "kssm clean: NAME: why").
"""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("clean", help="remove old checkpoint_*.pt files from a run folder")
    p.add_argument("run_dir", metavar="DIR")
    p.add_argument("--keep", type=int, default=1, help="newest checkpoints to keep (default 1, at least the newest loadable)")
    p.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kssm_core.runfolder.cleaning import CleanError, execute_clean, plan_clean
    from kssm_core.runfolder.lock import lock_state, read_lock

    try:
        plan = plan_clean(args.run_dir, keep=max(0, args.keep))
    except CleanError as exc:
        print(f"kssm clean: {exc}", file=sys.stderr)
        return 1
    for path, why in plan.keep:
        print(f"keep    {path}  ({why})")
    for path, size in plan.delete:
        print(f"delete  {path}  {size / 1e6:.1f} MB")
    if not plan.delete:
        inside = _run_folders_inside(args.run_dir) if not plan.keep else []
        if inside:  # a runs root (results/): its checkpoints are one level down
            print(f"kssm clean: no checkpoints in {args.run_dir} itself; it holds run folders: name one, "
                  f"e.g. kssm clean {inside[0]} ({', '.join(p.name for p in inside)})", file=sys.stderr)
            return 1
        print("nothing to delete")
        return 0
    print(f"total   {plan.bytes_freed / 1e6:.1f} MB in {len(plan.delete)} file(s)")
    if args.dry_run:
        print("dry run: nothing deleted")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print("kssm clean: not a terminal; pass --yes to delete without asking", file=sys.stderr)
            return 1
        state, _ = lock_state(read_lock(args.run_dir))
        note = " (a trainer is running in this folder)" if state == "live" else ""
        if input(f"delete these {len(plan.delete)} file(s){note}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("cancelled: nothing deleted")
            return 1
    freed, problems = execute_clean(plan)
    print(f"freed {freed / 1e6:.1f} MB")
    for line in problems:
        print(f"kssm clean: {line}", file=sys.stderr)
    return 1 if problems else 0


def _run_folders_inside(folder: str) -> list:
    """Run folders one level below `folder` (not an archive of earlier runs: previous/ is never cleaned)."""
    from pathlib import Path

    from kssm_core.training.archive import ARCHIVE_DIR
    from kssm_core.runbook.status import find_run_dirs, is_run_dir

    if is_run_dir(Path(folder)):
        return []
    return [p for p in find_run_dirs(folder) if p.name != ARCHIVE_DIR]
