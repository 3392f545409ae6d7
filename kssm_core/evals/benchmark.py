"""The comprehensive benchmark: held-out perplexity, distinct-1/2 of generations, R trajectory statistics
(the Stage 5 Goldilocks band R >= 0.30) and u stability across held-out windows.

Perplexity here runs with the Lorentzian noise as trained (seeded), so it compares with the trainer's
val PPL; the noiseless figure is recorded beside it.
"""

from __future__ import annotations

import torch

from kssm_core.model.interventions import intervene
from kssm_core.evals.context import EvalContext
from kssm_core.evals.metrics import R_ZONES, distinct_n, score, summary, zone
from kssm_core.evals.result import FAIL, PASS, WARN, SuiteResult, finite, grade_high, grade_low

NAME = "benchmark"
U_FLOOR_BAND, U_CEILING_BAND = 0.11, 9.9  # KSSM_SPEC.md section 3: "at floor" / "at ceiling"
ZONE_ORDER = [name for _, name in reversed(R_ZONES)]


def run(ctx: EvalContext, result: SuiteResult) -> None:
    model = ctx.model
    windows = ctx.windows(factor=2)
    prompts = list(ctx.opts.prompts)
    ctx.progress.set_total(2 + len(prompts))
    torch.manual_seed(ctx.opts.seed)
    s = score(model, windows, ctx.device)
    ctx.progress.advance()
    with intervene(model, noise=False):
        quiet = score(model, windows, ctx.device)
    ctx.progress.advance()

    seqs, r_gen = [], []
    for prompt in prompts:
        g, _ = ctx.sample(prompt)
        seqs.extend(g.new_tokens.tolist())
        r_gen.append(g.R.mean(1).flatten())  # mean over layers, every generated token
        ctx.progress.advance()
    r_gen_all = torch.cat(r_gen)
    d1, d2 = distinct_n(seqs, 1), distinct_n(seqs, 2)

    r_tok = s.R.mean(0)  # [N, S]
    r_mean = float(r_tok.mean())
    zones = sorted({zone(float(x)) for x in torch.cat([r_tok.flatten(), r_gen_all])}, key=ZONE_ORDER.index)
    u = s.u
    u_window = u.mean(dim=(0, 2))  # one mean u per held-out window
    cv = float(u_window.std() / (u_window.mean().abs() + 1e-8)) if u_window.numel() > 1 else 0.0
    at_floor = float((u <= U_FLOOR_BAND).float().mean())
    at_ceiling = float((u >= U_CEILING_BAND).float().mean())

    result.add("held-out perplexity", s.ppl, "< 300 (warn < 500)", grade_low(s.ppl, 300, 500),
               f"{s.ppl:.2f} over {windows.shape[0]} windows of {ctx.seq_len} tokens ({ctx.held.source}); "
               f"{quiet.ppl:.2f} with the phase noise off")
    result.add("distinct-2", d2, "> 0.50 (warn > 0.30)", grade_high(d2, 0.50, 0.30),
               f"distinct-1 {d1:.3f}, distinct-2 {d2:.3f} over {len(seqs)} generations")
    goldilocks = PASS if r_mean >= 0.30 else WARN if r_mean >= 0.20 else FAIL
    result.add("Goldilocks R", r_mean, ">= 0.30 (warn >= 0.20)", goldilocks if finite(r_mean) else FAIL,
               f"mean R {r_mean:.4f} on held-out text ({zone(r_mean)}), {float(r_gen_all.mean()):.4f} while generating; "
               f"zones visited: {', '.join(zones)}")
    if not (finite(cv) and bool(torch.isfinite(u).all())):
        u_verdict, u_detail = FAIL, "u is not finite"
    elif at_ceiling >= 0.5:
        u_verdict, u_detail = FAIL, f"u pinned at the ceiling: {at_ceiling:.0%} of tokens >= {U_CEILING_BAND}"
    else:
        u_verdict = grade_low(cv, 0.25, 0.5)
        u_detail = (f"mean u {float(u.mean()):.3f}, per-window CV {cv:.3f}; {at_floor:.0%} at the floor band, "
                    f"{at_ceiling:.0%} at the ceiling")
    result.add("u stability", cv, "per-window CV < 0.25 (warn < 0.5), not pinned at the ceiling", u_verdict, u_detail)
    result.data.update({
        "heldout": ctx.held.source, "windows": int(windows.shape[0]), "seq_len": ctx.seq_len,
        "perplexity": {"ce": s.ce, "ppl": s.ppl, "ppl_noise_off": quiet.ppl},
        "distinct_1": d1, "distinct_2": d2, "generations": len(seqs), "gen_tokens": ctx.opts.gen_tokens,
        "R_heldout": summary(r_tok), "R_generation": summary(r_gen_all),
        "R_per_layer_mean": [float(x) for x in s.R.mean(dim=(1, 2))], "zones_visited": zones,
        "goldilocks_fraction": float((r_tok >= 0.30).float().mean()),
        "u": dict(summary(u), at_floor=at_floor, at_ceiling=at_ceiling, window_cv=cv,
                  per_layer_mean=[float(x) for x in u.mean(dim=(1, 2))]),
    })
