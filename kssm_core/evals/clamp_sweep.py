"""Clamp ablation: replace the bistable u floor at inference (0.001 .. 1.0) and measure perplexity; the
trained floor should be near the best, and the floor should matter at all when u edge-surfs on it."""

from __future__ import annotations

from kssm_core.model.interventions import intervene
from kssm_core.evals.context import EvalContext
from kssm_core.evals.metrics import score
from kssm_core.evals.result import PASS, WARN, SuiteResult, finite, grade_high, grade_low

NAME = "clamp-sweep"
FLOORS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)


def run(ctx: EvalContext, result: SuiteResult) -> None:
    model, cfg = ctx.model, ctx.model.cfg
    windows = ctx.windows()
    floors = sorted(set(FLOORS) | {cfg.u_min})
    ctx.progress.set_total(len(floors))
    sweep = []
    with intervene(model, noise=False):
        for floor in floors:
            with intervene(model, u_floor=floor):
                s = score(model, windows, ctx.device)
            sweep.append({"u_floor": floor, "ce": s.ce, "ppl": s.ppl, "u_mean": float(s.u.mean()),
                          "at_floor": float((s.u <= floor * 1.1 + 1e-9).float().mean()), "R_mean": float(s.R.mean())})
            ctx.progress.advance()
    result.data.update({"heldout": ctx.held.source, "windows": int(windows.shape[0]), "seq_len": ctx.seq_len,
                        "trained_floor": cfg.u_min, "bistable": cfg.bistable, "sweep": sweep})
    if not cfg.bistable:
        result.add("clamp sweep applicable", False, "a bistable model", WARN,
                   "monostable model: it has no clamp, so the floor changes nothing")
        return
    ppls = [s["ppl"] for s in sweep]
    trained = next(s for s in sweep if s["u_floor"] == cfg.u_min)
    best = min(sweep, key=lambda s: s["ppl"] if finite(s["ppl"]) else float("inf"))
    spread = (max(ppls) - min(ppls)) / trained["ppl"] if all(finite(p) for p in ppls) else float("nan")
    ratio = trained["ppl"] / best["ppl"] if finite(best["ppl"]) and best["ppl"] > 0 else float("nan")
    result.add("trained floor near the best", ratio, "ppl(trained floor) / best < 1.05 (warn < 1.20)",
               grade_low(ratio, 1.05, 1.20),
               f"ppl {trained['ppl']:.2f} at the trained floor {cfg.u_min} vs best {best['ppl']:.2f} at {best['u_floor']}")
    result.add("clamp is active", spread, "ppl spread > 0.001 of trained (warn otherwise)",
               PASS if grade_high(spread, 0.001, 0.0) == PASS else WARN,
               f"perplexity {min(ppls):.3f}..{max(ppls):.3f} over floors {floors[0]}..{floors[-1]}; "
               f"{trained['at_floor']:.0%} of u at the trained floor")
