"""Synthetic run histories for the runbook-engine tests: events built the way the trainer writes them."""

from __future__ import annotations

from kssm_core.runfolder.history import RunHistory

BASE_CONFIG = {"learning_rate": 0.001, "lambda_reg": 0.01, "seed": 1337, "max_steps": 500, "stage": 2,
               "output_dir": "results/stage2", "save_interval": 250, "keep_checkpoints": 3, "heartbeat_seconds": 5.0,
               "preset": "tiny", "corpus": None, "data_dir": "data/cache"}


def events(steps=None, *, loss=None, R=None, u=None, reg=None, grad=None, evals=(), samples=(), config=None,
           end=None, stage=2, max_steps=500, t0=1000.0, dt=1.0, pid=4242):
    """A list of event dicts: run_start, one step event per value given, evals/samples, an optional run_end.

    loss/R/u/reg/grad are lists of the same length (missing ones get healthy defaults); evals are dicts with
    step + any eval fields; samples are (step, text) pairs; end is a run_end status or a dict.
    """
    n = max(len(x) for x in (loss or [], R or [], u or [], reg or [], grad or [], steps or []) ) or 0
    cfg = dict(BASE_CONFIG, **(config or {}))
    cfg["stage"], cfg["max_steps"] = stage, max_steps
    out = [{"event": "schema", "t": t0, "name": "kssm-events", "version": 1},
           {"event": "run_start", "t": t0, "config": cfg, "max_steps": max_steps, "stage": stage, "start_step": 0,
            "pid": pid, "host": "h"}]
    for i in range(n):
        step = steps[i] if steps else (i + 1) * 10
        out.append({"event": "step", "t": t0 + (i + 1) * dt, "step": step,
                    "loss": (loss or [5.0] * n)[i], "ce": (loss or [5.0] * n)[i],
                    "reg": (reg or [0.2] * n)[i], "R": (R or [0.05] * n)[i], "u_val": (u or [1.0] * n)[i],
                    "grad_norm": (grad or [2.0] * n)[i], "lr": 0.001, "tokens_per_s": 1000.0})
    last_t = t0 + n * dt
    for e in evals:
        out.append({"event": "eval", "t": last_t, **e})
    for step, text in samples:
        out.append({"event": "sample", "t": last_t, "step": step, "prompt": "The ", "text": text, "R": 0.1})
    if end is not None:
        body = end if isinstance(end, dict) else {"status": end, "reason": "max_steps reached"}
        out.append({"event": "run_end", "t": last_t + 1, "step": steps[-1] if steps else n * 10, **body})
    return out


def history(*args, **kw) -> RunHistory:
    h = RunHistory()
    h.extend(events(*args, **kw))
    return h


def ramp(a: float, b: float, n: int) -> list[float]:
    return [a + (b - a) * i / (n - 1) for i in range(n)]


def wiggle(center: float, amp: float, n: int) -> list[float]:
    """Values moving around center (alternating), so they are not 'locked'."""
    return [center + (amp if i % 2 else -amp) * ((i % 5) / 4) for i in range(n)]


PROSE = ("The lady was not handsome enough to tempt him, but she had a lively and playful disposition "
         "which delighted in anything ridiculous")
FRAGMENTS = "the of vrek and qzt the pomb was lurf it is gnarb in trelk a"
GIBBERISH = "xqzv plorkt vbnm zzrt qwpl kkd snrv tlpq mmxz drfq"


# ---- event order and replay (issue 16) ------------------------------------------------------------------
_ORDER = {"step": 0, "eval": 1, "sample": 2}


def chronological(evs: list[dict]) -> list[dict]:
    """events() appends evals and samples after every step; the trainer writes each right after its step."""
    head = [e for e in evs if e["event"] in ("schema", "run_start")]
    tail = [e for e in evs if e["event"] == "run_end"]
    body = [e for e in evs if e["event"] in _ORDER]
    body.sort(key=lambda e: (e["step"], _ORDER[e["event"]]))
    for e in body:  # times follow the steps, as they would
        e["t"] = 1000.0 + e["step"] / 10
    return head + body + tail


def replay(evs: list[dict], chunk: int = 1):
    """Feed the events to one RunHistory `chunk` at a time; yield it after each chunk (the cockpit's tail)."""
    h = RunHistory()
    for i in range(0, len(evs), chunk):
        h.extend(evs[i:i + chunk])
        yield h


# ---- the reference trainer's text log (legacy) ---------------------------------------------------------------
def legacy_lines(rows, evals=None, *, finished: bool = True, banner: str = "K-SSM v3 BISTABLE TRAINING") -> list[str]:
    """Lines of a training.log as the reference trainer writes it (KSSM_SPEC.md section 2; the real ones are in
    tests/fixtures/reference-runs): rows are (step, total, ce, reg, R, u, grad); evals {step: dict(loss=, ce=,
    ppl=, R=, u=)} each printed after its step's row."""
    evals = evals or {}
    out = ["=" * 70, banner, "=" * 70, "", "[3] Training Loop",
           "  Step |   Total |      CE |     Reg |       R |   u_val | GradNorm", "-" * 80]
    for step, total, ce, reg, r, u, grad in rows:
        out.append(f"{step:6d} | {total:7.3f} | {ce:7.3f} | {reg:7.4f} | {r:.4f} | {u:7.3f} | {grad:8.3f}")
        e = evals.get(step)
        if e:
            out += ["", "=" * 80, f"EVALUATION @ Step {step}", "=" * 80, f"  Val Loss: {e['loss']:.4f}",
                    f"  Val CE: {e['ce']:.4f}", f"  Val Perplexity: {e['ppl']:.2f}", f"  Val R: {e['R']:.4f}",
                    f"  Val u_val: {e['u']:.4f}", "=" * 80, ""]
    if finished:
        out += ["", "Training Finished.", "\U0001f513 Released lock"]
    return out
