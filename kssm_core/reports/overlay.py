"""The data side of comparing runs, pure and headless (the cockpit's overlay and `kssm report` draw with it):

- `read_reference(path)`: a published trajectory, CSV with a `step` column and any of REFERENCE_COLUMNS, or
  JSON lines of the same; a bad file raises ReferenceError with one line naming the file, line and column.
- `debiased_ema(values, weight)`: TensorBoard's smoothing (an EMA started at 0 and divided by 1 - w^n, so the
  first points are not dragged towards 0; non-finite points pass through, a constant series is left as is).
- `GrowingEma(weight)`: the same over series that grow: a live run's new readings are smoothed from the kept state.
- `active_time(t, segment_starts)`: an x axis of wall time with the gaps of a resume or a pause left out.
- `run_style(index)`: a stable colour + marker + line style per overlaid run, legible without colour.
- `run_names(dirs)`: a distinct, filesystem-safe name per run folder (exports, legends).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REFERENCE_COLUMNS = ("loss", "ce", "reg", "R", "u_val", "val_loss", "val_ppl")
MAX_REFERENCE_BYTES = 64 * 1024 * 1024
DEFAULT_SMOOTHING = 0.6  # TensorBoard's default weight


class ReferenceError(ValueError):
    """A reference file that cannot be used; str() is one line."""


@dataclass
class Reference:
    """A named trajectory: per metric, ascending steps and their values (finite only)."""

    name: str
    path: Path
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def get(self, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.series.get(metric)


_CANON = {c.lower(): c for c in REFERENCE_COLUMNS}


def _parse_step(raw, where: str, path: Path) -> int:
    if isinstance(raw, bool):
        raise ReferenceError(f"{path}: {where}: step {raw!r} is not a whole number >= 0")
    if isinstance(raw, str):
        raw = raw.strip()
        try:
            raw = float(raw) if raw else None
        except ValueError:
            raise ReferenceError(f"{path}: {where}: step {raw[:30]!r} is not a whole number >= 0") from None
    if isinstance(raw, int):
        v = raw
    elif isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        v = int(raw)
    else:
        raise ReferenceError(f"{path}: {where}: step {str(raw)[:30]!r} is not a whole number >= 0")
    if v < 0:
        raise ReferenceError(f"{path}: {where}: step {v} is negative")
    return v


def _parse_value(raw, column: str, where: str, path: Path) -> float | None:
    """None for an empty cell / null (no reading at this step); a number; else a one-line error."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise ReferenceError(f"{path}: {where}: {column} {raw!r} is not a number")
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        s = raw.strip()
        if not s:
            return None
        try:
            return float(s)
        except ValueError:
            raise ReferenceError(f"{path}: {where}: {column} {s[:30]!r} is not a number") from None
    raise ReferenceError(f"{path}: {where}: {column} is a {type(raw).__name__}, not a number")


def _columns(names, path: Path, where: str) -> tuple[str | None, dict[str, str]]:
    """(the step key, {key in file: metric}) for a header / a JSON object's keys."""
    step_key, metrics = None, {}
    for n in names:
        if not isinstance(n, str):
            continue
        k = n.strip().lstrip("\ufeff")
        if k.lower() == "step":
            step_key = n
        elif k.lower() in _CANON:
            metric = _CANON[k.lower()]
            if metric in metrics.values():
                raise ReferenceError(f"{path}: {where}: column {metric} appears twice")
            metrics[n] = metric
    return step_key, metrics


def read_reference(path: str | Path, name: str | None = None) -> Reference:
    """Read a reference trajectory; the format is .csv / .tsv by name, JSON lines by name (.jsonl, .ndjson,
    .json) or, for any other name, by its first character ({ for JSON lines)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ReferenceError(f"{path}: not a file")
        if size > MAX_REFERENCE_BYTES:
            raise ReferenceError(f"{path}: {size / 2**20:.0f} MiB, over the {MAX_REFERENCE_BYTES // 2**20} MiB limit")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReferenceError(f"{path}: no such file") from None
    except OSError as exc:
        raise ReferenceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReferenceError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise ReferenceError(f"{path}: empty file")
    suffix = path.suffix.lower()
    jsonl = suffix in (".jsonl", ".ndjson", ".json") or (suffix not in (".csv", ".tsv", ".txt")
                                                          and text.lstrip().startswith("{"))
    points = _read_jsonl(text, path) if jsonl else _read_csv(text, path, "\t" if suffix == ".tsv" else None)
    series = {}
    for metric, pts in points.items():
        if not pts:
            continue
        pts.sort(key=lambda p: p[0])
        steps = np.fromiter((p[0] for p in pts), dtype=np.float64, count=len(pts))
        vals = np.fromiter((p[1] for p in pts), dtype=np.float64, count=len(pts))
        dup = np.flatnonzero(np.diff(steps) == 0)
        if len(dup):
            s = int(steps[dup[0]])
            lines = sorted(p[2] for p in pts if p[0] == s)
            raise ReferenceError(f"{path}: step {s} has two {metric} values (lines {lines[0]} and {lines[1]})")
        keep = np.isfinite(vals)
        series[metric] = (steps[keep], vals[keep])
    if not any(len(s) for s, _ in series.values()):
        raise ReferenceError(f"{path}: no readings: every {', '.join(points) or 'metric'} cell is empty")
    return Reference(name or path.stem, path, series)


def _read_csv(text: str, path: Path, delimiter: str | None) -> dict[str, list]:
    if delimiter is None:
        first = text.lstrip().splitlines()[0]
        delimiter = "\t" if first.count("\t") > first.count(",") else ";" if first.count(";") > first.count(",") else ","
    rows = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    points: dict[str, list] = {}
    step_i, cols = 0, {}
    try:
        for row in rows:
            line = rows.line_num
            if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = row
                step_key, metrics = _columns(header, path, "header")
                if step_key is None:
                    raise ReferenceError(f"{path}: line {line}: no 'step' column in the header "
                                         f"({', '.join(c.strip() for c in header)[:80]})")
                if not metrics:
                    raise ReferenceError(f"{path}: line {line}: no metric column; expected any of "
                                         f"{', '.join(REFERENCE_COLUMNS)}")
                step_i = header.index(step_key)
                cols = {header.index(k): m for k, m in metrics.items()}
                points = {m: [] for m in metrics.values()}
                continue
            if len(row) > len(header):
                raise ReferenceError(f"{path}: line {line}: {len(row)} cells, the header has {len(header)}")
            where = f"line {line}"
            step = _parse_step(row[step_i] if step_i < len(row) else "", where, path)
            for i, metric in cols.items():
                v = _parse_value(row[i] if i < len(row) else None, metric, where, path)
                if v is not None:
                    points[metric].append((step, v, line))
    except csv.Error as exc:
        raise ReferenceError(f"{path}: line {rows.line_num}: not CSV ({exc})") from None
    if header is None:
        raise ReferenceError(f"{path}: no header line")
    return points


def _read_jsonl(text: str, path: Path) -> dict[str, list]:
    points: dict[str, list] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"line {n}"
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raise ReferenceError(f"{path}: {where}: not JSON") from None
        if not isinstance(obj, dict):
            raise ReferenceError(f"{path}: {where}: not a JSON object")
        step_key, metrics = _columns(obj.keys(), path, where)
        if step_key is None:
            raise ReferenceError(f"{path}: {where}: no 'step' field")
        step = _parse_step(obj[step_key], where, path)
        for key, metric in metrics.items():
            points.setdefault(metric, [])
            v = _parse_value(obj[key], metric, where, path)
            if v is not None:
                points[metric].append((step, v, n))
    if not points:
        raise ReferenceError(f"{path}: no metric field on any line; expected any of {', '.join(REFERENCE_COLUMNS)}")
    return points


# ---- smoothing ----------------------------------------------------------------------------------------------
_BLOCK = 64  # measured: 64 is the fastest on 100k points (2 ms; 256: 3-4 ms)


def debiased_ema(values, weight: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """TensorBoard's smoothing of a series (its scalar dashboard's algorithm), vectorised.

    last = last * w + (1 - w) * v over the finite values (starting from 0), each divided by 1 - w^n where n
    counts the finite values so far. Non-finite values are returned unchanged and do not move the average;
    a constant series is returned unchanged (as TensorBoard does); weight 0 is no smoothing.
    """
    return debiased_ema_state(values, weight)[0]


def debiased_ema_state(values, weight: float = DEFAULT_SMOOTHING, state: tuple[float, int] | None = None
                       ) -> tuple[np.ndarray, tuple[float, int]]:
    """debiased_ema, resumable: also returns the state (accumulator, finite values seen) after the last value.

    With `state` from an earlier call, `values` are taken as the continuation of that series: appending k points
    to a smoothed series of a million costs O(k) (a live chart's new readings). The whole-series rule for a
    constant series applies only without `state` (the EMA of a constant is that constant anyway, up to rounding).
    """
    y = np.asarray(values, dtype=np.float64)
    if not 0.0 <= weight < 1.0 or not math.isfinite(weight):
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    last, seen = state if state is not None else (0.0, 0)
    out = y.copy()
    finite = np.isfinite(y)
    x = y[finite]
    if x.size == 0:
        return out, (last, seen)
    if weight == 0.0:
        return out, (float(x[-1]), seen + x.size)
    n = x.size
    w = weight
    ema = _ema_core(x, w, last)
    new_state = (float(ema[-1]), seen + n)
    if state is None and np.all(x == x[0]) and np.all(finite):
        return out, new_state
    count = np.arange(seen + 1, seen + n + 1, dtype=np.float64)
    debias = -np.expm1(count * math.log(w))  # 1 - w^n without cancellation for small n
    out[finite] = ema / debias
    return out, new_state


class GrowingEma:
    """debiased_ema of series that grow (a live run's readings), one per key: a series that only grew since the
    last call (the same x and value where it ended then) is continued from the kept state, so new readings cost
    what they add; any other (a resume replaced the tail, another run under the key) is smoothed from its start.
    The one incremental smoother: the cockpit's single-run charts, its overlay and the chart widget use it."""

    def __init__(self, weight: float = DEFAULT_SMOOTHING) -> None:
        debiased_ema_state((), weight)  # a bad weight is refused here, not at the first reading
        self.weight = weight
        self._kept: dict = {}  # key -> (n, x at n - 1, y at n - 1, state, smoothed)

    def smooth(self, key, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The debiased EMA of `y` (finite values; `x` only tells a grown series from a replaced one)."""
        kept = self._kept.get(key)
        if kept is not None:
            n, x_last, y_last, state, out = kept
            if 0 < n <= len(y) and x[n - 1] == x_last and y[n - 1] == y_last:
                if n == len(y):
                    return out
                tail, state = debiased_ema_state(y[n:], self.weight, state)
                out = np.concatenate([out, tail])
                self._kept[key] = (len(y), x[-1], y[-1], state, out)
                return out
        out, state = debiased_ema_state(y, self.weight)
        if len(y):
            self._kept[key] = (len(y), x[-1], y[-1], state, out)
        else:
            self._kept.pop(key, None)
        return out

    def smoothed_count(self, key) -> int:
        """How many values of the series under `key` are smoothed and kept (0: none)."""
        kept = self._kept.get(key)
        return kept[0] if kept is not None else 0

    def keep_only(self, keep) -> None:
        """Forget every series whose key `keep(key)` refuses (a run no longer shown or overlaid)."""
        for k in [k for k in self._kept if not keep(k)]:
            del self._kept[k]


def _ema_core(x: np.ndarray, w: float, carry: float) -> np.ndarray:
    """last_i = w * last_(i-1) + (1 - w) * x_i from last_(-1) = carry, not debiased.

    Blocks of _BLOCK values: inside one, the EMA is a product with a lower-triangular matrix of (1-w) w^(i-j),
    whose entries are all <= 1 (stable); the blocks are chained by the carried average, w^(i+1) * carry."""
    n = x.size
    pad = (-n) % _BLOCK
    xb = np.concatenate([x, np.zeros(pad)]).reshape(-1, _BLOCK)
    idx = np.arange(_BLOCK)
    powers = w ** idx.astype(np.float64)
    diff = idx[:, None] - idx[None, :]
    tri = np.where(diff >= 0, (1.0 - w) * w ** np.maximum(diff, 0), 0.0)
    local = xb @ tri.T  # each block's EMA started from 0
    decay = w * powers  # w^(i+1)
    w_block = float(decay[-1])  # w^_BLOCK
    starts = []  # the accumulator entering each block: a scalar recurrence over the blocks only
    for end in local[:, -1].tolist():
        starts.append(carry)
        carry = end + w_block * carry
    ema = local + np.outer(starts, decay)
    return ema.reshape(-1)[:n]


def debiased_ema_reference(values, weight: float = DEFAULT_SMOOTHING) -> list[float]:
    """TensorBoard's loop, line for line (the tests check debiased_ema against it)."""
    ys = [float(v) for v in values]
    is_constant = all(v == ys[0] for v in ys)
    last, num = 0.0, 0
    out = []
    for v in ys:
        if is_constant or not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        num += 1
        out.append(last / (1 - weight ** num) if weight != 1 else last)
    return out


# ---- an x axis of active time ---------------------------------------------------------------------------------
def active_time(t, segment_starts=(), max_gap: float | None = None) -> np.ndarray:
    """Seconds of training time at each reading, with the gaps of a resume or a pause left out.

    `t`: the readings' event times, in step order (a run's folded history: orphaned steps already replaced);
    `segment_starts`: the times of the run's run_start events. The first reading of a segment counts the time
    since that segment's start (so the time between a crash and its resume is left out); within a segment an
    interval over `max_gap` (a trainer stopped with SIGSTOP, a laptop asleep; default: 10 x the median
    interval, at least 60 s) counts as the median interval. An interval that is NaN or negative (a clock set
    back) counts as the median too. Starts at the first reading's time since its segment began (or 0).
    """
    ts = np.asarray(t, dtype=np.float64)
    n = ts.size
    if n == 0:
        return np.empty(0)
    starts = np.sort(np.asarray([s for s in segment_starts if s is not None and math.isfinite(s)], dtype=np.float64))
    dt = np.diff(ts)
    good = np.isfinite(dt) & (dt > 0)
    typical = float(np.median(dt[good])) if good.any() else 0.0
    if max_gap is None:
        max_gap = max(60.0, 10.0 * typical)
    step_dt = np.where(good & (dt <= max_gap), dt, typical)
    if starts.size and n > 1:
        # a reading after a run_start that came after the previous reading: the first of a new segment
        k = np.searchsorted(starts, ts[1:], side="right") - 1  # the newest start at or before each reading
        prev = np.searchsorted(starts, ts[:-1], side="right") - 1
        new_seg = (k > prev) & np.isfinite(ts[1:])
        since = ts[1:] - starts[np.maximum(k, 0)]
        ok = new_seg & np.isfinite(since) & (since >= 0) & (since <= max_gap)
        step_dt = np.where(new_seg, np.where(ok, since, typical), step_dt)
    x0 = 0.0
    if starts.size and math.isfinite(ts[0]):
        k0 = np.searchsorted(starts, ts[0], side="right") - 1
        if k0 >= 0 and 0 <= ts[0] - starts[k0] <= max_gap:
            x0 = float(ts[0] - starts[k0])
    out = np.empty(n)
    out[0] = x0
    np.cumsum(step_dt, out=out[1:])
    out[1:] += x0
    return out


def map_times(t_query, t_known, x_known) -> np.ndarray:
    """Place other readings (evaluations) on an active_time axis built from the step readings: each query time
    takes the x of the newest step reading at or before it plus the time since (capped at the next reading's x)."""
    tq = np.asarray(t_query, dtype=np.float64)
    tk = np.asarray(t_known, dtype=np.float64)
    xk = np.asarray(x_known, dtype=np.float64)
    keep = np.isfinite(tk)
    tk, xk = tk[keep], xk[keep]
    if tk.size == 0:
        return np.full(tq.shape, np.nan)
    order = np.argsort(tk, kind="stable")
    tk, xk = tk[order], xk[order]
    i = np.clip(np.searchsorted(tk, tq, side="right") - 1, 0, tk.size - 1)
    nxt = np.minimum(i + 1, tk.size - 1)
    cap = np.where(nxt > i, xk[nxt], np.inf)
    x = np.minimum(xk[i] + np.maximum(tq - tk[i], 0.0), cap)
    return np.where(np.isfinite(tq), x, np.nan)


# ---- stable styles ------------------------------------------------------------------------------------------------
# Colour-blind-safe (Okabe-Ito) colours; marker and dash pattern differ too, so a grey print still tells runs apart.
RUN_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
RUN_DASHES = ("-", "--", "-.", ":")


@dataclass(frozen=True)
class RunStyle:
    color: str
    marker: str
    linestyle: str


def run_style(index: int) -> RunStyle:
    """The style of the index-th run (by position in the compared list; stable for a given list)."""
    return RunStyle(RUN_COLORS[index % len(RUN_COLORS)], RUN_MARKERS[index % len(RUN_MARKERS)],
                    RUN_DASHES[(index // len(RUN_MARKERS)) % len(RUN_DASHES)])


def minmax_downsample(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """At most 2 points per bucket (each bucket's min and max, at the bucket's ends): spikes survive."""
    n = len(x)
    if buckets <= 0 or n <= 2 * buckets:
        return x, y
    edges = np.unique(np.linspace(0, n, buckets + 1).astype(np.int64)[:-1])
    lo = np.minimum.reduceat(y, edges)
    hi = np.maximum.reduceat(y, edges)
    ends = np.append(edges[1:], n) - 1
    xs = np.empty(2 * len(edges))
    ys = np.empty(2 * len(edges))
    xs[0::2], xs[1::2] = x[edges], x[ends]
    ys[0::2], ys[1::2] = lo, hi
    return xs, ys


def bucket_mean(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """One point per bucket, at its mean x and mean y: a smoothed line thinned without drawing its noise back in."""
    n = len(x)
    if buckets <= 0 or n <= buckets:
        return x, y
    edges = np.unique(np.linspace(0, n, buckets + 1).astype(np.int64)[:-1])
    counts = np.diff(np.append(edges, n))
    return np.add.reduceat(x, edges) / counts, np.add.reduceat(y, edges) / counts


# ---- run names ----------------------------------------------------------------------------------------------
_SAFE = re.compile(r"[^A-Za-z0-9._+=@-]+")


def _clean_part(part: str) -> str:
    s = _SAFE.sub("_", part).strip("._") or "run"
    return s[:80]


def run_names(dirs) -> list[str]:
    """A distinct, filesystem-safe name per run folder: its last path part, or as many trailing parts as it
    takes to tell it from the others (joined with "/": results/stage2 and ablation/stage2). An archived run
    (.../stage2/previous/<time>) keeps its stage folder in the name."""
    parts = [[_clean_part(p) for p in Path(d).resolve().parts[1:]] or ["run"] for d in dirs]

    def minimum(ps: list[str]) -> int:
        return 3 if len(ps) >= 3 and ps[-2] == "previous" else 1

    lengths = [min(minimum(ps), len(ps)) for ps in parts]
    while True:
        names = ["/".join(ps[-n:]) for ps, n in zip(parts, lengths)]
        clash = {n for n in names if names.count(n) > 1}
        if not clash:
            break
        grew = False
        for i, n in enumerate(names):
            if n in clash and lengths[i] < len(parts[i]):
                lengths[i] += 1
                grew = True
        if not grew:  # the same folder twice, or paths equal to the root: number them
            seen: dict[str, int] = {}
            out = []
            for n in names:
                seen[n] = seen.get(n, 0) + 1
                out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
            return out
    return names
