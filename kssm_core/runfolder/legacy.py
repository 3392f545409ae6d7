"""Runs made by the original K-SSM scripts: read their text `training.log` into RunHistory records.

Recognised lines (each may carry our `[YYYY-mm-dd HH:MM:SS] ` prefix or none):
the step table row `{step:6d} | {total:7.3f} | {ce:7.3f} | {reg:7.4f} | {R:.4f} | {u:7.3f} | {grad:8.3f}`,
`EVALUATION @ Step N` followed by `  Val Loss: x`, `  Val Perplexity: x`, `  Val R: x`, `  Val u_val: x`,
`  Sample: ...`, our header (`... | steps 0 -> 500 | ... | lr 0.001 | lambda_reg 0.01`), a `max_steps` mention,
and `RUN END: status (reason)`. The reference trainer's own end: `Training Finished.` is a completed run_end;
a traceback or an `Error:` line after the last step is a failed run_end with that line as its reason (a log
that just stops has no run_end: kssm_core.runbook.judge decides crashed or unknown from the lock).
Anything else is ignored; nothing here raises on odd text.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from kssm_core.runbook.stages import STAGES
from kssm_core.runfolder import layout

LOG_NAME = layout.TRAINING_LOG
MAX_LEGACY_BYTES = 256 * 1024 * 1024  # a text log bigger than this is read from its last 256 MB

_NUM = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"
_PREFIX = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] ?")
_ROW = re.compile(r"^\s*(\d+)\s*\|" + r"\|".join([rf"\s*{_NUM}\s*"] * 6) + r"$", re.IGNORECASE)
_EVAL = re.compile(r"EVALUATION @ Step\s+(\d+)", re.IGNORECASE)
_VAL = re.compile(r"^\s*Val(?:idation)?[ _](Loss|Perplexity|PPL|CE|R|u_val|u)\s*[:=]\s*" + _NUM, re.IGNORECASE)
_SAMPLE = re.compile(r"^\s*Sample:\s?(.*)$")
_HEADER_STEPS = re.compile(r"\bsteps (\d+) -> (\d+)")
_MAX_STEPS = re.compile(r"max[_ -]steps\W{0,3}(\d+)", re.IGNORECASE)
_LR = re.compile(r"\b(?:lr|learning[_ ]rate)\W{0,3}" + _NUM, re.IGNORECASE)
_LAMBDA = re.compile(r"\blambda[_ ]reg\W{0,3}" + _NUM, re.IGNORECASE)
_END = re.compile(r"RUN END: (completed|interrupted|failed) \((.*)\)")
_FINISHED = re.compile(r"^\s*Training Finished\.?\s*$")
_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):")
_ERROR = re.compile(r"^\s*(?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)|Error)(?::|\s*$)")
_VAL_KEYS = {"loss": "val_loss", "perplexity": "val_ppl", "ppl": "val_ppl", "ce": "val_ce", "r": "val_R",
             "u_val": "val_u", "u": "val_u"}


def has_legacy_log(run_dir: str | Path) -> bool:
    return (Path(run_dir) / LOG_NAME).is_file()


def _num(s: str) -> float | None:
    v = float(s)
    return v if math.isfinite(v) else None  # the event log's spelling of NaN


def _stage_from_name(run_dir: Path) -> int | None:
    return next((s.number for s in STAGES if s.output_dir == run_dir.name), None)


def parse_legacy_lines(lines, run_dir: str | Path = ".", mtime: float | None = None) -> list[dict]:
    """Events (dicts for RunHistory.apply) from the lines of a text training log."""
    run_dir = Path(run_dir)
    out: list[dict] = []
    cfg: dict = {}
    max_steps: int | None = None
    started = False
    pending_eval: dict | None = None
    t_now = mtime if mtime is not None else time.time()
    last_t = None
    error_line: str | None = None  # the newest error / traceback line since the last step row
    finished = False

    def flush_eval() -> None:
        nonlocal pending_eval
        if pending_eval is not None and len(pending_eval) > 3:
            if "val_ce" not in pending_eval and isinstance(pending_eval.get("val_ppl"), float) and pending_eval["val_ppl"] > 0:
                pending_eval["val_ce"] = math.log(pending_eval["val_ppl"])
            out.append(pending_eval)
        pending_eval = None

    def start(t, start_step=None) -> None:
        nonlocal started
        started = True
        out.append({"event": "run_start", "t": t, "config": dict(cfg, max_steps=max_steps) if max_steps else dict(cfg),
                    "max_steps": max_steps, "stage": _stage_from_name(run_dir), "start_step": start_step,
                    "legacy": True})

    for raw in lines:
        line = raw.rstrip("\r\n")
        t = None
        m = _PREFIX.match(line)
        if m:
            try:
                t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            except (ValueError, OverflowError):
                t = None
            line = line[m.end():]
        if t is not None:
            last_t = t
        t = t if t is not None else last_t if last_t is not None else t_now
        if _FINISHED.match(line):
            flush_eval()
            out.append({"event": "run_end", "t": t, "status": "completed", "reason": "Training Finished.", "step": None})
            finished, error_line = True, None
            continue
        if not finished and (_TRACEBACK.match(line) or _ERROR.match(line)):
            error_line = line.strip()[:300]
            continue
        row = _ROW.match(line)
        if row:
            error_line = None  # training went on after it
            if not started:
                start(t)
            step = int(row.group(1))
            vals = [_num(g) for g in row.groups()[1:]]
            out.append({"event": "step", "t": t, "step": step, "loss": vals[0], "ce": vals[1], "reg": vals[2],
                        "R": vals[3], "u_val": vals[4], "grad_norm": vals[5]})
            continue
        ev = _EVAL.search(line)
        if ev:
            flush_eval()
            if not started:
                start(t)
            pending_eval = {"event": "eval", "t": t, "step": int(ev.group(1))}
            continue
        val = _VAL.match(line)
        if val and pending_eval is not None:
            pending_eval[_VAL_KEYS[val.group(1).lower()]] = _num(val.group(2))
            continue
        smp = _SAMPLE.match(line)
        if smp and pending_eval is not None:
            text = smp.group(1)
            out.append({"event": "sample", "t": t, "step": pending_eval["step"], "prompt": "", "text": text})
            continue
        hs = _HEADER_STEPS.search(line)
        if hs:
            flush_eval()
            max_steps = int(hs.group(2))
            for rx, key in ((_LR, "learning_rate"), (_LAMBDA, "lambda_reg")):
                mm = rx.search(line)
                if mm:
                    cfg[key] = _num(mm.group(1))
            start(t, int(hs.group(1)) if "resumed" in line else None)
            continue
        ms = _MAX_STEPS.search(line)
        if ms and max_steps is None:
            max_steps = int(ms.group(1))
            for r in out:
                if r["event"] == "run_start" and r.get("max_steps") is None:
                    r["max_steps"] = max_steps
            continue
        end = _END.search(line)
        if end:
            flush_eval()
            out.append({"event": "run_end", "t": t, "status": end.group(1), "reason": end.group(2), "step": None})
            finished = True
    flush_eval()
    if error_line is not None and started and not finished:
        out.append({"event": "run_end", "t": last_t if last_t is not None else t_now, "status": "failed",
                    "reason": error_line, "step": None})
    return out


def read_legacy(run_dir: str | Path) -> list[dict]:
    """Events from RUN_DIR/training.log (its last MAX_LEGACY_BYTES), decoded leniently."""
    path = Path(run_dir) / LOG_NAME
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size > MAX_LEGACY_BYTES:
            fh.seek(size - MAX_LEGACY_BYTES)
            fh.readline()  # drop the partial first line
        data = fh.read()
    text = data.decode("utf-8", errors="replace")
    return parse_legacy_lines(text.splitlines(), run_dir, mtime=os.stat(path).st_mtime)
