"""`kssm report` as a function: report.md plus one PNG figure per metric with every run on it.

    from kssm_core.reports.report import write_report
    result = write_report(["results"])            # -> results/report/report.md, results/report/*.png

Figures (matplotlib's Agg canvas, imported only here and only when figures are drawn; no pyplot, so no global
state): loss.png (loss, CE dashed), val_ppl.png, R.png (the spec's R zones shaded,
kssm_core.runbook.matrix.zone_bands), u_val.png (the clamp lines u_min / u_max), grad_norm.png (the clip
line). Long series are drawn raw and faint with TensorBoard's debiased EMA over them; an x axis of steps, or
of active wall time (kssm_core.reports.overlay.active_time). Reference trajectories (`--reference`) are
dashed, never smoothed, named by their file.

report.md: the runs (stage, state, steps, best val loss, verdict), the figures, the decision matrix of every
run (kssm_core.runbook.status.run_status's rows of the run's stage and the ones before it), alerts and the
recommendation, the evaluation suite's results (RUN_DIR/eval/*.json), and the machine and versions.

Output folder: `--out`, else RUNS_ROOT/report when one folder of runs is given, else ./report. It is never
inside a run folder (refused), and only report.md and the figures named above are written there.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kssm_core import __version__
from kssm_core.reports import overlay
from kssm_core.reports.export import ExportError, check_out_dir, load_runs
from kssm_core.reports.rundata import TIME, RunData, expand_runs

REPORT_NAME = "report.md"
SMOOTH_MIN_POINTS = 50  # shorter series are drawn as they are
MAX_POINTS = 4000  # per series and figure: min/max buckets beyond (spikes survive)
FIG_SIZE = (8.0, 4.5)
FIG_DPI = 120


class ReportError(Exception):
    """One line: nothing to report, a bad output folder, matplotlib missing."""


@dataclass
class Figure:
    name: str  # file name, e.g. "loss.png"
    title: str
    caption: str


@dataclass
class ReportResult:
    out_dir: Path
    report: Path
    figures: list[Path] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


FIGURES = (
    Figure("loss.png", "Training loss and CE", "training loss (solid) and cross-entropy (dashed) of every run"),
    Figure("val_ppl.png", "Validation perplexity", "validation perplexity at each evaluation (log scale)"),
    Figure("R.png", "Order parameter R", "mean Kuramoto order parameter R, with the spec's R zones shaded"),
    Figure("u_val.png", "u_val", "mean bistability parameter u_val (log scale), with the clamp lines u_min and u_max"),
    Figure("grad_norm.png", "Gradient norm", "gradient norm before clipping (log scale), with the clip threshold"),
)


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def default_out_dir(paths) -> Path:
    """RUNS_ROOT/report for one folder of runs, else ./report."""
    from kssm_core.runbook.status import is_run_dir

    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir() and not is_run_dir(paths[0]):
        return paths[0] / "report"
    return Path("report")


def write_report(paths, out_dir: str | Path | None = None, *, figures: bool | None = None, criteria=None,
                 references=(), x_axis: str = "step", smoothing: float = overlay.DEFAULT_SMOOTHING,
                 title: str = "K-SSM training report", now: float | None = None) -> ReportResult:
    """Write report.md and the figures for the runs named by `paths` (run folders or folders of runs).

    figures: True draws them (ReportError when matplotlib is missing), False leaves them out, None draws
    them when matplotlib is installed and says so in the report otherwise. references: Reference objects or
    paths (kssm_core.reports.overlay.read_reference). x_axis: "step" or "time" (active wall time).
    """
    if x_axis not in ("step", "time"):
        raise ReportError(f"x axis must be step or time, got {x_axis!r}")
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReportError(f"no such folder: {', '.join(missing)}")
    dirs = expand_runs(paths)
    if not dirs:
        raise ReportError(f"no run folders in {', '.join(map(str, paths))}")
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    try:
        check_out_dir(out, dirs)
        runs = load_runs(dirs)
    except ExportError as exc:
        raise ReportError(str(exc)) from None
    refs = []
    for r in references:
        refs.append(r if isinstance(r, overlay.Reference) else overlay.read_reference(r))
    have_mpl = matplotlib_available()
    if figures and not have_mpl:
        raise ReportError("matplotlib is not installed: pip install 'kssm-tui[report]' "
                          "(or kssm report --no-figures for the tables alone)")
    draw = have_mpl if figures is None else figures
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc.strerror or exc}") from None

    from kssm_core.runbook.status import run_status

    statuses = [run_status(r.run_dir, criteria) for r in runs]  # the one run model: what kssm status says
    result = ReportResult(out, out / REPORT_NAME, runs=[r.name for r in runs])
    drawn: list[Figure] = []
    if draw:
        for fig in FIGURES:
            path = draw_figure(fig, runs, out, criteria=criteria, references=refs, x_axis=x_axis, smoothing=smoothing)
            if path is None:
                result.notes.append(f"{fig.name}: no run has readings for it, not drawn")
            else:
                drawn.append(fig)
                result.figures.append(path)
    elif figures is None:
        result.notes.append("figures left out: matplotlib is not installed (pip install 'kssm-tui[report]')")
    text = render_markdown(runs, statuses, drawn, result.notes, title=title, paths=paths, refs=refs,
                           x_axis=x_axis, smoothing=smoothing, now=now)
    _write_text(result.report, text)
    return result


# ---- figures ---------------------------------------------------------------------------------------------------
def _x_of(run: RunData, series, x_axis: str) -> np.ndarray:
    if x_axis == "step":
        return np.asarray(series.steps, dtype=np.float64)
    s = run.steps
    x_steps = overlay.active_time(s.cols[TIME], run.segment_starts)
    if series is s:
        return x_steps
    return overlay.map_times(series.cols[TIME], s.cols[TIME], x_steps)


def _time_unit(xmax: float) -> tuple[float, str]:
    if xmax >= 2 * 3600:
        return 3600.0, "hours"
    if xmax >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _finite_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _series_for(fig: Figure) -> list[tuple[str, str, str]]:
    """(history part, column, role) drawn on a figure; role "main" is smoothed, "second" is dashed."""
    return {
        "loss.png": [("steps", "loss", "main"), ("steps", "ce", "second")],
        "val_ppl.png": [("evals", "val_ppl", "points")],
        "R.png": [("steps", "R", "main")],
        "u_val.png": [("steps", "u_val", "main")],
        "grad_norm.png": [("steps", "grad_norm", "main")],
    }[fig.name]


_REF_COLUMN = {"loss.png": ("loss", "ce"), "val_ppl.png": ("val_ppl",), "R.png": ("R",), "u_val.png": ("u_val",),
               "grad_norm.png": ()}


def draw_figure(fig: Figure, runs: list[RunData], out: Path, *, criteria=None, references=(), x_axis="step",
                smoothing: float = overlay.DEFAULT_SMOOTHING) -> Path | None:
    """Draw one figure into out/fig.name; None when no run (nor reference) has a reading for it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    from kssm_core.runbook.criteria import DEFAULT
    from kssm_core.runbook.matrix import zone_bands

    c = criteria or DEFAULT
    plots = []  # (run index, label, role, x, y)
    for i, run in enumerate(runs):
        for part, col, role in _series_for(fig):
            series = getattr(run.history, part)
            if not len(series):
                continue
            x, y = _finite_pair(_x_of(run, series, x_axis), series.cols[col])
            if len(y):
                plots.append((i, run.name, col, role, x, y))
    ref_plots = []
    if x_axis == "step":
        for ref in references:
            for col in _REF_COLUMN[fig.name]:
                got = ref.get(col)
                if got is not None and len(got[0]):
                    ref_plots.append((ref.name, col, got[0], got[1]))
    if not plots and not ref_plots:
        return None

    mfig = MplFigure(figsize=FIG_SIZE, dpi=FIG_DPI, layout="constrained")
    FigureCanvasAgg(mfig)
    ax = mfig.add_subplot()
    scale, unit = 1.0, "step"
    if x_axis == "time":
        xmax = max((float(p[4].max()) for p in plots), default=1.0)
        scale, unit = _time_unit(xmax)
    log_y = fig.name in ("val_ppl.png", "u_val.png", "grad_norm.png")
    all_y = []
    for i, name, col, role, x, y in plots:
        st = overlay.run_style(i)
        xs = x / scale
        if log_y:
            keep = y > 0
            xs, y = xs[keep], y[keep]
            if not len(y):
                continue
        all_y.append(y)
        label = name if role != "second" else f"{name} ({col})"
        if role == "points":
            ax.plot(xs, y, color=st.color, marker=st.marker, linestyle=st.linestyle, linewidth=1.4, markersize=5,
                    label=label)
            continue
        smooth = role == "main" and len(y) >= SMOOTH_MIN_POINTS and smoothing > 0
        if smooth:
            rx, ry = overlay.minmax_downsample(xs, y, MAX_POINTS // 2)
            ax.plot(rx, ry, color=st.color, linewidth=0.8, alpha=0.25)
            sm = overlay.debiased_ema(y, smoothing)
            sx, sy = overlay.bucket_mean(xs, sm, MAX_POINTS // 2)
            ax.plot(sx, sy, color=st.color, linestyle=st.linestyle, linewidth=1.8, marker=st.marker,
                    markevery=max(1, len(sx) // 12), markersize=5, label=label)
        else:
            dx, dy = overlay.minmax_downsample(xs, y, MAX_POINTS // 2)
            ls = "--" if role == "second" else st.linestyle
            ax.plot(dx, dy, color=st.color, linestyle=ls, linewidth=1.0 if role == "second" else 1.6,
                    marker=None if role == "second" else st.marker, markevery=max(1, len(dx) // 12),
                    markersize=4, alpha=0.8 if role == "second" else 1.0, label=label)
    for k, (name, col, x, y) in enumerate(ref_plots):
        if log_y:
            keep = y > 0
            x, y = x[keep], y[keep]
        all_y.append(y)
        ax.plot(x, y, color="#444444", linestyle=(0, (5, 3)) if k % 2 == 0 else (0, (2, 2)), linewidth=1.6,
                label=f"{name} (reference{'' if col in ('loss', 'val_ppl', 'R', 'u_val') else ', ' + col})")
    if log_y:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
    if fig.name == "R.png":
        ymax = max((float(np.max(y)) for y in all_y), default=0.1)
        top = min(1.0, max(0.12, ymax * 1.15))
        shades = ("#f2f2f2", "#e3eef8", "#e5f3e8", "#fbf1dc", "#f6e3ee", "#fde4d6", "#eeeeee")
        for k, (lo, hi, zone) in enumerate(zone_bands(c)):
            if lo >= top:
                break
            ax.axhspan(lo, min(hi, top), color=shades[k % len(shades)], zorder=0, linewidth=0)
            ax.text(1.005, (lo + min(hi, top)) / 2, zone, transform=ax.get_yaxis_transform(), fontsize=7,
                    va="center", ha="left", color="#555555")
        ax.set_ylim(0.0, top)
    if fig.name == "u_val.png":
        lo_c, hi_c = _clamps(runs)
        for v, what in ((lo_c, "u_min"), (hi_c, "u_max")):
            ax.axhline(v, color="#B22222", linestyle="-.", linewidth=1.2, zorder=1)
            ax.text(1.005, v, f"{what} {v:g}", transform=ax.get_yaxis_transform(), fontsize=7, va="center",
                    color="#B22222")
        ys = np.concatenate(all_y) if all_y else np.array([1.0])
        ax.set_ylim(min(lo_c, float(ys.min())) / 1.5, max(hi_c, float(ys.max())) * 1.5)
    if fig.name == "grad_norm.png":
        clip = _grad_clip(runs)
        if clip is not None:
            ax.axhline(clip, color="#B22222", linestyle=":", linewidth=1.2)
            ax.text(1.005, clip, f"clip {clip:g}", transform=ax.get_yaxis_transform(), fontsize=7, va="center",
                    color="#B22222")
    smooth_note = f"; faint: raw, bold: debiased EMA {smoothing:g}" if any(
        p[3] == "main" and len(p[5]) >= SMOOTH_MIN_POINTS for p in plots) and smoothing > 0 else ""
    ax.set_title(fig.title + smooth_note, fontsize=10)
    ax.set_xlabel("step" if x_axis == "step" else f"active wall time ({unit}; resume and pause gaps left out)")
    ax.set_ylabel(fig.title if fig.name != "loss.png" else "loss")
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    path = out / fig.name
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        mfig.savefig(tmp, format="png", dpi=FIG_DPI, metadata={"Software": f"kssm {__version__}"})
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _clamps(runs: list[RunData]) -> tuple[float, float]:
    from kssm_core.config import ModelConfig

    d = ModelConfig()
    lo, hi = d.u_min, d.u_max
    for r in runs:
        mc = (r.history.run_start or {}).get("model_config")
        if isinstance(mc, dict):
            a, b = mc.get("u_min"), mc.get("u_max")
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and 0 < a < b:
                return float(a), float(b)
    return lo, hi


def _grad_clip(runs: list[RunData]) -> float | None:
    for r in runs:
        v = r.history.config.get("grad_clip")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
    from kssm_core.config import TrainConfig

    return TrainConfig().grad_clip


# ---- markdown ----------------------------------------------------------------------------------------------------
def _cell(text, limit: int = 300) -> str:
    s = "".join(ch if ch.isprintable() else " " for ch in str(text))
    s = s.replace("|", "\\|").strip()
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _num(v, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "-"
        if isinstance(v, int):
            return str(v)
        return f"{v:.{digits}g}"
    return _cell(v, 80)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def render_markdown(runs: list[RunData], statuses, figures: list[Figure], notes: list[str], *, title: str, paths,
                    refs=(), x_axis="step", smoothing=overlay.DEFAULT_SMOOTHING, now: float | None = None) -> str:
    from kssm_core.runbook.probe import load_eval_results

    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    L = [f"# {_cell(title)}", "",
         f"Generated {stamp} by kssm {__version__} from {', '.join(f'`{_cell(p)}`' for p in paths)}: "
         f"{len(runs)} run(s).", ""]
    L += ["## Runs", ""]
    rows = []
    for r, s in zip(runs, statuses):
        best = s.best_val_loss
        ppl = r.evals.last("val_ppl") if len(r.evals) else None
        step = f"{s.step}/{s.target}" if s.step is not None and s.target else (str(s.step) if s.step is not None else "-")
        seg = f" ({r.history.segments} segments)" if r.history.segments > 1 else ""
        rows.append([f"`{_cell(r.name)}`", f"{s.stage} ({_cell(s.stage_name)})", _cell(s.state) + seg, step,
                     _num(best), _num(ppl), _cell(s.assessment.verdict.value)])
    L += _table(["run", "stage", "state", "step", "best val loss", "last val PPL", "verdict"], rows) + [""]
    newest = [(r, r.history.samples[-1]) for r in runs if r.history.samples]
    if newest:
        L += ["Newest sample of each run (generated text, shown as written):", ""]
        L += _table(["run", "step", "text"], [[f"`{_cell(r.name)}`", _num(smp.get("step")),
                                                _cell(repr(str(smp.get("prompt") or "") + str(smp.get("text") or "")), 200)]
                                               for r, smp in newest]) + [""]
    L += ["## Figures", ""]
    if figures:
        axis = "step" if x_axis == "step" else "active wall time (the gaps of a resume or a pause left out)"
        L += [f"One figure per metric, every run on it (x axis: {axis}); each run keeps one colour, marker and line "
              f"style in every figure. Series of {SMOOTH_MIN_POINTS} readings or more are drawn raw and faint "
              f"with TensorBoard's debiased EMA (weight {smoothing:g}) over them."
              + (" Dashed grey: reference trajectories, never smoothed." if refs else ""), ""]
        for f in figures:
            L += [f"### {f.title}", "", f"![{f.title}]({f.name})", "", f"`{f.name}`: {f.caption}.", ""]
    for n in notes:
        L += [f"- {_cell(n)}"]
    if notes:
        L += [""]
    L += ["## Decision matrix", ""]
    for r, s in zip(runs, statuses):
        L += [f"### `{_cell(r.name)}`: stage {s.stage} ({_cell(s.stage_name)})", "",
              f"**{_cell(s.assessment.summary)}**", ""]
        rows = [[str(m.stage), _cell(m.metric), m.verdict.value.upper(), _cell(m.reason)]
                for m in s.matrix if m.stage <= s.stage]
        L += _table(["stage", "metric", "verdict", "reason"], rows) + [""]
        remedies = [m for m in s.matrix if m.stage <= s.stage and m.remedy]
        for m in remedies:
            note = f" ({_cell(m.remedy_note)})" if m.remedy_note else ""
            L += [f"- {_cell(m.metric)} remedy: `{_cell(m.remedy)}`{note}"]
        for a in s.alerts:
            L += [f"- ALERT {a.severity.value} `{_cell(a.code)}`: {_cell(a.message)}"
                  + (f" -> `{_cell(a.remedy)}`" if a.remedy else "")]
        L += [f"- Recommendation: {_cell(s.recommendation.text, 400)}", ""]
    L += ["## Evaluation suite", ""]
    any_eval = False
    for r in runs:
        results, problems = load_eval_results(r.run_dir)
        for suite, obj in sorted(results.items()):
            any_eval = True
            head = [f"verdict {_cell(obj.get('verdict', '-'), 20)}"]
            for k in ("step", "seed", "elapsed_s"):
                if k in obj:
                    head.append(f"{k} {_num(obj.get(k))}")
            if obj.get("model"):
                head.append(f"model `{_cell(obj.get('model'), 120)}`")
            L += [f"### `{_cell(r.name)}`: {_cell(suite, 60)}", "", ", ".join(head), ""]
            crit = [c for c in obj.get("criteria") or [] if isinstance(c, dict)]
            if crit:
                L += _table(["criterion", "value", "target", "verdict", "detail"],
                            [[_cell(c.get("name", ""), 60), _num(c.get("value")), _cell(c.get("target", ""), 60),
                              _cell(c.get("verdict", ""), 12), _cell(c.get("detail", ""), 160)] for c in crit]) + [""]
            else:
                scalars = [(k, v) for k, v in obj.items() if isinstance(v, (int, float, str)) and k not in
                           ("suite", "model", "verdict", "step", "seed", "elapsed_s")]
                if scalars:
                    L += _table(["field", "value"], [[_cell(k, 60), _num(v)] for k, v in scalars[:40]]) + [""]
        for p in problems:
            L += [f"- `{_cell(r.name)}` eval/{_cell(p)}"]
    if not any_eval:
        L += ["No evaluation results (RUN_DIR/eval/*.json) in these runs; `kssm eval all --model "
              "RUN_DIR/best_model.pt` writes them.", ""]
    L += ["## Machine and versions", ""]
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.1f} GiB memory"
    except Exception:  # noqa: BLE001 - a fact for the record, never a reason to fail
        mem = ""
    L += [f"- Report made on `{_cell(socket.gethostname(), 80)}`: {_cell(platform.platform(), 120)}, "
          f"{os.cpu_count()} CPUs{mem}, Python {platform.python_version()} ({_cell(sys.implementation.name)}).",
          "- Packages: " + ", ".join(f"{d} {_version(d)}" for d in ("kssm-tui", "torch", "numpy", "matplotlib")) + ".",
          ""]
    rows = []
    for r in runs:
        rs = r.history.run_start or {}
        rows.append([f"`{_cell(r.name)}`", _cell(rs.get("host", "-"), 60), _cell(rs.get("device", "-"), 30),
                     _cell(rs.get("precision", "-"), 10), _num(rs.get("world_size")), _num(rs.get("parameters")),
                     _cell(rs.get("torch", "-"), 30), _cell((rs.get("config") or {}).get("preset", "-"), 20),
                     _cell(r.source)])
    L += ["Runs were trained on (their newest run_start):", ""]
    L += _table(["run", "host", "device", "precision", "processes", "parameters", "torch", "preset", "log"], rows)
    if refs:
        L += ["", "References: " + ", ".join(f"`{_cell(ref.name)}` ({_cell(ref.path)})" for ref in refs) + "."]
    L += [""]
    return "\n".join(L)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
