"""report.md + report.json in RUNS_ROOT/autopilot/ at the end (all gates passed, or held): per stage the
attempts, the gate's verdict rows, the remedies, the durations, and the final evaluation when the plan
reached a stage gated by stage 5.

This is the autopilot's own small report. `kssm report` (kssm_core/commands/report.py +
kssm_core/reports/report.py, built on another branch) renders a whole runs root with figures; `full_report`
below is the one place that calls it, and does so only where that module exists (on this branch it does
not yet: the call is then skipped).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kssm_core.autopilot.state import State
from kssm_core.runbook import cmdline
from kssm_core.runbook.runstatus import format_duration
from kssm_core.runfolder import layout
from kssm_core.runfolder.atomic import atomic_write_bytes

SCHEMA = "kssm-autopilot-report/1"


def _duration(a: float | None, b: float | None) -> float | None:
    return round(b - a, 1) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b >= a else None


def final_evaluation(runs_root: Path, state: State) -> dict | None:
    """eval/summary.json of the last stage gated by stage 5, when `kssm eval all` wrote one."""
    for rec in reversed(state.stages):
        if rec.gate == 5:
            path = runs_root / rec.output_dir / layout.EVAL_DIR / layout.EVAL_SUMMARY
            try:
                d = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                return None
            return d if isinstance(d, dict) else None
    return None


def build(runs_root: str | Path, state: State, decisions: list[dict]) -> dict[str, Any]:
    root = Path(runs_root)
    stages = []
    for rec in state.stages:
        attempts = []
        for a in rec.attempts:
            attempts.append({
                "n": a.n, "kind": a.kind, "reason": a.reason,
                "command": cmdline.text(a.argv) if a.argv else None,
                "started_at": a.started_at, "ended_at": a.ended_at, "duration_s": _duration(a.started_at, a.ended_at),
                "outcome": a.outcome, "outcome_reason": a.outcome_reason, "step": a.step,
                "learning_rate": a.learning_rate, "gate": a.gate,
            })
        stages.append({
            "index": rec.index, "name": rec.name, "output_dir": str(root / rec.output_dir), "steps": rec.steps,
            "gate": rec.gate, "status": rec.status, "verdict": rec.verdict, "summary": rec.summary, "rows": rec.rows,
            "attempts": attempts, "remedies": rec.remedies, "rewinds": rec.rewinds, "crash_resumes": rec.crashes,
            "overrides": rec.overrides, "duration_s": _duration(rec.started_at, rec.ended_at),
            "decisions": [d for d in decisions if d.get("stage") == rec.index],
        })
    return {
        "schema": SCHEMA, "runs_root": str(root), "status": state.status, "held": state.held,
        "plan": state.plan, "started_at": state.started_at, "ended_at": time.time(),
        "duration_s": _duration(state.started_at, time.time()), "stages": stages,
        "final_evaluation": final_evaluation(root, state),
    }


def render_md(report: dict[str, Any]) -> str:
    lines = [f"# Autopilot report: {report['runs_root']}", ""]
    status = report["status"]
    if status == "passed":
        lines.append(f"**All {len(report['stages'])} stage(s) passed their gates** in "
                     f"{format_duration(report['duration_s'])}.")
    elif report.get("held"):
        h = report["held"]
        lines.append(f"**HELD at stage {h.get('stage')}** ({h.get('what')}): {h.get('why')}")
    else:
        lines.append(f"**{status}**")
    lines.append("")
    for s in report["stages"]:
        lines.append(f"## Stage {s['index']}: {s['name']} ({s['steps']} steps, gate: stage {s['gate']})")
        lines.append("")
        lines.append(f"- folder: `{s['output_dir']}`; status: **{s['status']}**; "
                     f"duration: {format_duration(s['duration_s'])}")
        lines.append(f"- remedies {s['remedies']}, NaN rewinds {s['rewinds']}, crash resumes (since progress) "
                     f"{s['crash_resumes']}" + (f"; overrides in effect: {s['overrides']}" if s["overrides"] else ""))
        if s.get("summary"):
            lines.append(f"- gate: {s['summary']}")
        for r in s.get("rows") or []:
            lines.append(f"  - [{r['verdict']}] {r['metric']}: {r['reason']}")
        if s["attempts"]:
            lines += ["", "| # | kind | why | outcome | step | gate | duration |", "|---|---|---|---|---|---|---|"]
            for a in s["attempts"]:
                why = str(a["reason"]).replace("|", "/")
                out = (a["outcome"] or "-") + (f" ({a['outcome_reason']})" if a.get("outcome_reason") else "")
                gate = str(a.get("gate") or "-").replace("|", "/")
                lines.append(f"| {a['n']} | {a['kind']} | {why} | {out.replace('|', '/')} | "
                             f"{a['step'] if a['step'] is not None else '-'} | {gate} | {format_duration(a['duration_s'])} |")
        lines.append("")
    full = report.get("full_report")
    if full and full.get("report"):
        lines += [f"The whole runs root, with figures: `{full['report']}` (kssm report).", ""]
    ev = report.get("final_evaluation")
    if ev:
        lines += ["## Final evaluation", "", f"{str(ev.get('verdict', '?')).upper()}: {ev.get('message', '')}", ""]
    return "\n".join(lines) + "\n"


def write(runs_root: str | Path, state: State, decisions: list[dict], criteria=None) -> Path:
    folder = Path(runs_root) / layout.AUTOPILOT_DIR
    rep = build(runs_root, state, decisions)
    rep["full_report"] = full_report(runs_root, criteria)
    atomic_write_bytes(folder / layout.AUTOPILOT_REPORT_JSON,
                       json.dumps(rep, indent=1, allow_nan=False, default=str).encode("utf-8"))
    md = folder / layout.AUTOPILOT_REPORT_MD
    atomic_write_bytes(md, render_md(rep).encode("utf-8"))
    return md


def full_report(runs_root: str | Path, criteria=None) -> dict | None:
    """HOOK: the whole runs root through `kssm report` (RUNS_ROOT/report/report.md, with figures when
    matplotlib is installed), when kssm_core.reports.report exists (another branch: absent here, so None).
    Written against its `write_report(paths, out_dir=None, *, figures=None, criteria=None)`; it never fails
    the autopilot: a problem is returned as {"error": ...}. report.json records what it returned."""
    try:
        from kssm_core.reports.report import write_report  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        result = write_report([str(runs_root)], None, figures=None, criteria=criteria)
    except Exception as exc:  # noqa: BLE001 - a report is never worth a failed autopilot
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"report": str(getattr(result, "report", "")), "notes": list(getattr(result, "notes", []) or [])}
