"""`kssm unlock DIR`: remove a provably stale training.lock; refuse a live one."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("unlock", help="remove a stale training.lock (refuses a live one)")
    p.add_argument("run_dir", metavar="DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..lock import LockHeld, unlock

    try:
        print(unlock(args.run_dir))
        return 0
    except LockHeld as exc:
        print(f"kssm unlock: {exc}", file=sys.stderr)
        return 1
