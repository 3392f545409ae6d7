"""`kssm status [PATH ...] [--json] [--watch] [--criteria FILE]`: the modern check_training_status.sh.

Exit codes (docs/status-json.md): 0 all healthy / active / all clear, 1 warnings, 2 failures or crashed,
3 usage error (no such path, bad criteria file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("status", help="judge run folders: progress, lock, decision matrix, alerts, one recommendation")
    p.add_argument("paths", nargs="*", metavar="PATH", help="run folders or folders of runs (default: results)")
    p.add_argument("--json", action="store_true", help="print one JSON object (schema: docs/status-json.md)")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted (reads only new bytes)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between --watch refreshes (default 2)")
    p.add_argument("--criteria", metavar="FILE", help="JSON file overriding thresholds (see kssm_core/runbook/criteria.py)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the incremental-read cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kssm_core.runbook.criteria import CriteriaError, load_criteria
    from kssm_core.runbook.status import EXIT_USAGE, find_run_dirs
    from kssm_core.runfolder.follower import RunFollower

    try:
        criteria = load_criteria(args.criteria)
    except CriteriaError as exc:
        print(f"kssm status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    explicit = bool(args.paths)
    paths = [Path(p) for p in (args.paths or ["results"])]
    missing = [str(p) for p in paths if not p.exists()]
    from kssm_core.runfolder import layout

    not_dirs = [str(p) for p in paths if p.is_file() and p.name not in (layout.EVENTS, layout.TRAINING_LOG, layout.LOCK)]
    if not_dirs and explicit:
        print(f"kssm status: {', '.join(not_dirs)} is a file, not a run folder (give a run folder or a folder of runs)",
              file=sys.stderr)
        return EXIT_USAGE
    if missing and explicit:
        print(f"kssm status: no such folder: {', '.join(missing)} (give a run folder or a folder of runs)", file=sys.stderr)
        return EXIT_USAGE
    if args.interval <= 0:
        print("kssm status: --interval must be > 0", file=sys.stderr)
        return EXIT_USAGE
    followers: dict[str, RunFollower] = {}
    while True:
        runs = [d for p in paths if p.exists() for d in find_run_dirs(p)]
        code = _report(runs, paths, criteria, args, followers)
        if not args.watch:
            return code
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return code
        if not args.json:
            sys.stdout.write("\x1b[2J\x1b[H")  # clear the terminal between refreshes


def _report(runs, paths, criteria, args, followers) -> int:
    from kssm_core.runbook.status import EXIT_OK, run_status
    from kssm_core.runfolder.follower import RunFollower

    statuses = []
    for d in runs:
        follower = None
        if args.watch:  # one follower per folder for the whole watch: each refresh reads only new bytes
            key = str(d)
            if key not in followers:  # the cache is stored at most every 30 s while watching
                followers[key] = RunFollower(d, use_cache=not args.no_cache, cache_every_s=30.0)
            follower = followers[key]
        statuses.append(run_status(d, criteria, follower=follower, use_cache=not args.no_cache))
    code = max([s.exit_code for s in statuses], default=EXIT_OK)
    pilot = _autopilot(paths)
    if args.json:
        body = {"schema": "kssm-status-report/1", "paths": [str(p) for p in paths], "exit_code": code,
                "runs": [s.to_dict() for s in statuses]}
        if pilot is not None:
            body["autopilot"] = pilot
        if not statuses:
            body["message"] = _nothing_message(paths)
        print(json.dumps(body, indent=2, allow_nan=False, default=str), flush=True)
    else:
        if pilot is not None:
            from kssm_core.autopilot.state import describe

            print("\n".join(_clean(line) for line in describe(pilot)))
            if statuses:
                print()
        if not statuses:
            print(_nothing_message(paths))
        for i, s in enumerate(statuses):
            if i:
                print()
            print(format_status(s))
        sys.stdout.flush()
    return code


def _autopilot(paths) -> dict | None:
    """The autopilot of the first PATH (or the runs root holding it) with RUNS_ROOT/autopilot/state.json."""
    from pathlib import Path

    from kssm_core.autopilot.state import summary
    from kssm_core.runfolder.layout import is_run_dir

    for p in paths:
        p = Path(p)
        for root in (p, p.parent) if is_run_dir(p) else (p,):
            found = summary(root)
            if found is not None:
                return found
    return None


def _nothing_message(paths) -> str:
    """No run folder found: the stage to start is named by the folder (stage1..stage4, final), else stage 1."""
    from pathlib import Path

    from kssm_core.runbook.stages import STAGES
    from kssm_core.runbook import cmdline

    where = ", ".join(str(p) for p in paths)
    argv = cmdline.train(stage=1)
    if len(paths) == 1:
        p = Path(paths[0])
        st = next((s for s in STAGES if s.output_dir == p.name), None)
        if st is not None:
            argv = cmdline.train(stage=st.number, output_dir=p, init_from=cmdline.previous_best(p.parent, st.number))
        else:
            argv = cmdline.train(stage=1, runs_root=str(p).rstrip("/") or p)
    return f"no run folders under {where}: ALL CLEAR: safe to start: {cmdline.text(argv)}"


def format_status(s) -> str:
    """Plain text, one fact per line; untrusted strings are stripped of control characters."""
    from kssm_core.runbook.status import format_duration

    c = _clean
    lines = []
    where = f"step {s.step if s.step is not None else '-'}/{s.target if s.target is not None else '?'}"
    if s.step is not None and s.target:
        where += f" ({s.step / s.target:.0%})"
    rate = f"  {s.steps_per_s:.2f} steps/s  ETA {format_duration(s.eta_s)}" if s.steps_per_s else ""
    lines.append(f"{c(s.run_dir)}  stage {s.stage} ({s.stage_name})  {s.state.upper()}  {where}{rate}")
    proc = f"{s.process}" + (f" (PID {s.pid})" if s.pid else "")
    if s.memory.get("process_rss_bytes"):
        proc += f", RSS {s.memory['process_rss_bytes'] / 1e6:.0f} MB"
    lines.append(f"  process: {proc}   lock: {s.lock} ({c(s.lock_reason)})")
    ck = s.newest_checkpoint
    ck_text = f"{ck['path']} (step {ck['step']}, {ck['bytes'] / 1e6:.1f} MB)" if ck else "none"
    if ck and not ck.get("intact", True):
        ck_text += " DAMAGED (not a complete file): --resume will skip it for an older one"
    best = f"{s.best_val_loss:.4f}" if s.best_val_loss is not None else "-"
    lines.append(f"  newest checkpoint: {c(ck_text)}   best val loss: {best}")
    disk, mem = s.disk, s.memory
    free = f"{disk['free_bytes'] / 1e9:.1f} GB free" if disk.get("free_bytes") is not None else "free space unknown"
    need = (f", remaining checkpoints need about {disk['needed_bytes'] / 1e9:.2f} GB"
            if disk.get("needed_bytes") else "")
    memory = (f"{mem['available_bytes'] / 1e9:.1f} of {mem['total_bytes'] / 1e9:.1f} GB available"
              if mem.get("available_bytes") and mem.get("total_bytes") else "unknown")
    lines.append(f"  disk: {free}{need}   memory: {memory}")
    lines.append(f"  matrix: {c(s.assessment.summary)}")
    marks = {"healthy": "ok  ", "warning": "WARN", "failure": "FAIL", "pending": "... "}
    for r in s.assessment.rows:
        lines.append(f"    [{marks[r.verdict.value]}] {r.metric:<13} {c(r.reason)}")
        if r.remedy:
            lines.append(f"           remedy: {c(r.remedy)}" + (f"  # {c(r.remedy_note)}" if r.remedy_note else ""))
    for a in s.alerts:
        lines.append(f"  ALERT [{a.severity.value}] {a.code}: {c(a.message)}" + (f" -> {c(a.remedy)}" if a.remedy else ""))
    if s.read.get("note"):
        lines.append(f"  log: {c(s.read['note'])}")
    lines.append(f"  => {c(s.recommendation.text)}")
    return "\n".join(lines)


def _clean(text) -> str:
    """Drop terminal control characters (escape sequences in a log must not drive the terminal)."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))
