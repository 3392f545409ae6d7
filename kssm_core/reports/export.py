"""`kssm export` as functions: every metric of every run to CSV, JSON lines or TensorBoard event files.

Each run is folded by kssm_core.reports.rundata.load_run (RunHistory's rule: the orphaned steps of a resumed
run are replaced by the resumed run's), so an export shows what `kssm status` and the cockpit show.

Layout under OUT:
- csv:   steps.csv, evals.csv, samples.csv: one row per reading, a `run` column first, then `step`, `t`
         (unix seconds of the event) and every field (docs/run-folder.md); an empty cell is NaN / absent.
         Floats are written with repr(): reading them back gives the same float64.
- jsonl: steps.jsonl, evals.jsonl, samples.jsonl: the same rows as objects, null for NaN / absent.
- tensorboard: OUT/<run name>/events.out.tfevents.*.kssm-export, one run per sub-folder (tags:
         kssm_core.reports.tfevents.STEP_TAGS / EVAL_TAGS, samples as text). Scalars are float32 there.
Run names: kssm_core.reports.rundata.run_names (the folder's name, or enough of its path to be unique).
Nothing is written inside a run folder: an OUT inside one is refused.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from kssm_core.reports import tfevents
from kssm_core.reports.rundata import (EVAL_COLUMNS, STEP_COLUMNS, TIME, RunData, RunDataError, load_run,
                                       run_names)

FORMATS = ("csv", "jsonl", "tensorboard")
EXPORT_SUFFIX = ".kssm-export"
SAMPLE_COLUMNS = ("prompt", "text", "R")


class ExportError(Exception):
    """A usage problem, one line: bad OUT, nothing to export, a TensorBoard folder another writer uses."""


@dataclass
class ExportResult:
    out_dir: Path
    fmt: str
    files: list[Path] = field(default_factory=list)
    runs: list[tuple[str, int, int, int]] = field(default_factory=list)  # (name, step rows, eval rows, samples)


def check_out_dir(out_dir: Path, run_dirs) -> None:
    """Refuse an output folder that is, or is inside, one of the run folders (only the trainer writes there)."""
    out = Path(out_dir).resolve()
    for d in run_dirs:
        d = Path(d).resolve()
        if out == d or d in out.parents:
            raise ExportError(f"--out {out_dir} is inside the run folder {d}: only the trainer writes there; "
                              f"choose a folder outside it")
    from kssm_core.runfolder.foreign import enclosing_foreign_run

    found = enclosing_foreign_run(out)
    if found is not None:  # another trainer's run folder, even one not exported: never ours to write in
        raise ExportError(f"--out {out_dir} is inside {found.run_dir}, which holds {found.what()}: kssm writes "
                          f"nothing there; choose a folder outside it")


def load_runs(run_dirs) -> list[RunData]:
    names = run_names(run_dirs)
    out = []
    for d, name in zip(run_dirs, names):
        try:
            out.append(load_run(d, name))
        except RunDataError as exc:
            raise ExportError(str(exc)) from None
    return out


def export_runs(run_dirs, out_dir: str | Path, fmt: str = "csv") -> ExportResult:
    """Export every given run folder into out_dir in one format; returns what was written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ExportError("no run folders to export")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, run_dirs)
    runs = load_runs(run_dirs)
    if fmt == "tensorboard":
        for run in runs:  # check every folder before writing any
            _check_tb_folder(out_dir / run.name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    result = ExportResult(out_dir, fmt)
    result.runs = [(r.name, len(r.steps), len(r.evals), len(r.history.samples)) for r in runs]
    if fmt == "tensorboard":
        result.files = [write_tensorboard(r, out_dir / r.name) for r in runs]
    else:
        result.files = write_tables(runs, out_dir, fmt)
    return result


# ---- rows ------------------------------------------------------------------------------------------------
def step_rows(run: RunData):
    """(step, t, {field: float}) per kept step reading, NaN where absent."""
    s = run.steps
    cols = [s.cols[f] for f in STEP_COLUMNS]
    for i, (step, t) in enumerate(zip(s.steps, s.cols[TIME])):
        yield step, t, {f: c[i] for f, c in zip(STEP_COLUMNS, cols)}


def eval_rows(run: RunData):
    s = run.evals
    cols = [s.cols[f] for f in EVAL_COLUMNS]
    for i, (step, t) in enumerate(zip(s.steps, s.cols[TIME])):
        yield step, t, {f: c[i] for f, c in zip(EVAL_COLUMNS, cols)}


def sample_rows(run: RunData):
    from kssm_core.runfolder.history import as_number, as_step

    for r in run.history.samples:
        step = as_step(r.get("step"))
        t, _ = as_number(r.get("t"))
        rr, _ = as_number(r.get("R"))
        prompt, text = r.get("prompt"), r.get("text")
        yield step, t, {"prompt": prompt if isinstance(prompt, str) else "",
                        "text": text if isinstance(text, str) else "", "R": rr}


def _cell(v) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "" if math.isnan(v) else repr(v)
        return repr(v)
    return "" if v is None else str(v)


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ---- CSV / JSON lines ---------------------------------------------------------------------------------------
_TABLES = (("steps", STEP_COLUMNS, step_rows), ("evals", EVAL_COLUMNS, eval_rows),
           ("samples", SAMPLE_COLUMNS, sample_rows))


def write_tables(runs: list[RunData], out_dir: Path, fmt: str) -> list[Path]:
    """steps / evals / samples .csv or .jsonl, every run's rows in one file (atomically replaced)."""
    written = []
    for table, columns, rows in _TABLES:
        path = out_dir / f"{table}.{fmt}"
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                if fmt == "csv":
                    w = csv.writer(fh, lineterminator="\n")
                    w.writerow(["run", "step", "t", *columns])
                    for run in runs:
                        for step, t, vals in rows(run):
                            w.writerow([run.name, "" if step is None else step, _cell(t),
                                        *(_cell(vals[c]) for c in columns)])
                else:
                    for run in runs:
                        for step, t, vals in rows(run):
                            obj = {"run": run.name, "step": step, "t": _json_value(t),
                                   **{c: _json_value(vals[c]) for c in columns}}
                            fh.write(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written


# ---- TensorBoard ------------------------------------------------------------------------------------------
def _check_tb_folder(folder: Path) -> None:
    """A folder holding event files we did not write (the trainer's live --tensorboard files, another tool's)
    would be merged with ours by TensorBoard: refuse it."""
    if not folder.is_dir():
        return
    foreign = [p.name for p in folder.iterdir() if "tfevents" in p.name and not p.name.endswith(EXPORT_SUFFIX)]
    if foreign:
        raise ExportError(f"{folder} already holds TensorBoard event files not written by kssm export "
                          f"({foreign[0]}{', ...' if len(foreign) > 1 else ''}): TensorBoard would merge them "
                          f"with the export; choose another --out")


def write_tensorboard(run: RunData, folder: Path) -> Path:
    """One events file for the run (an earlier export's file in that folder is replaced)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        old = [p for p in folder.iterdir() if "tfevents" in p.name and p.name.endswith(EXPORT_SUFFIX)]
        first_t = next((t for t in run.steps.cols[TIME] if math.isfinite(t)), None)
        w = tfevents.EventFileWriter(folder, first_t, suffix=EXPORT_SUFFIX)
        try:
            _write_run_events(run, w)
        finally:
            w.close()
        for p in old:
            if p != w.path:
                p.unlink(missing_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write TensorBoard events under {folder}: {exc.strerror or exc}") from None
    return w.path


def _write_run_events(run: RunData, w: tfevents.EventFileWriter) -> None:
    last_t = 0.0

    def wall(t: float) -> float:
        nonlocal last_t
        if math.isfinite(t):
            last_t = t
        return last_t

    # step order, evals and samples after the step reading of the same step: as the trainer wrote them
    evals = list(eval_rows(run))
    samples = [s for s in sample_rows(run) if s[0] is not None]
    ei = si = 0
    for step, t, vals in step_rows(run):
        while ei < len(evals) and evals[ei][0] < step:
            w.scalars(evals[ei][0], wall(evals[ei][1]), {tfevents.EVAL_TAGS[k]: v for k, v in evals[ei][2].items()})
            ei += 1
        while si < len(samples) and samples[si][0] < step:
            _write_sample(w, samples[si], wall)
            si += 1
        w.scalars(step, wall(t), {tfevents.STEP_TAGS[k]: v for k, v in vals.items()})
    for e in evals[ei:]:
        w.scalars(e[0], wall(e[1]), {tfevents.EVAL_TAGS[k]: v for k, v in e[2].items()})
    for s in samples[si:]:
        _write_sample(w, s, wall)


def _write_sample(w: tfevents.EventFileWriter, row, wall) -> None:
    step, t, vals = row
    w.text(step, wall(t), tfevents.SAMPLE_TEXT_TAG, vals["prompt"] + vals["text"])
    w.scalars(step, wall(t), {tfevents.SAMPLE_R_TAG: vals["R"]})

