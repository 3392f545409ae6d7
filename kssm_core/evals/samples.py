"""Sample generation for given prompts (default the runbook's three) with each sample's R trajectory
(mean over layers per token, and per layer) and its tone zone (the spec's R zone of its mean R)."""

from __future__ import annotations

import torch

from kssm_core.evals.context import EvalContext
from kssm_core.evals.metrics import R_ZONES, summary, zone
from kssm_core.evals.result import FAIL, PASS, WARN, SuiteResult

NAME = "samples"
ZONE_ORDER = [name for _, name in reversed(R_ZONES)]  # Unformed .. Ache
REPEAT_MAX = 0.5  # a sample whose most common token is over half of it has collapsed


def run(ctx: EvalContext, result: SuiteResult) -> None:
    prompts = list(ctx.opts.prompts)
    ctx.progress.set_total(len(prompts))
    rows = []
    for prompt in prompts:
        g, texts = ctx.sample(prompt, n=1)
        r_layers = g.R[0]  # [L, T]
        r = r_layers.mean(0)
        toks = g.new_tokens[0].tolist()
        top_share = max(toks.count(t) for t in set(toks)) / len(toks) if toks else 1.0
        rows.append({"prompt": prompt, "text": texts[0], "R": r.tolist(), "R_per_layer": r_layers.tolist(),
                     "u_per_layer": g.u[0].tolist(), "R_stats": summary(r), "zone": zone(float(r.mean())),
                     "zones_visited": sorted({zone(float(x)) for x in r}, key=ZONE_ORDER.index),
                     "finite": bool(torch.isfinite(g.R).all()), "top_token_share": top_share,
                     "temperature": ctx.opts.temperature})
        ctx.progress.advance()
    ok = all(row["finite"] for row in rows)
    result.add("R telemetry finite", ok, "no NaN / inf", PASS if ok else FAIL,
               ", ".join(f"{row['prompt']!r}: {row['zone']} (R {row['R_stats']['mean']:.3f})" for row in rows))
    nonempty = all(row["text"].strip() for row in rows)
    result.add("samples produced", nonempty, "non-empty text for every prompt", PASS if nonempty else FAIL,
               f"{sum(bool(row['text'].strip()) for row in rows)} of {len(rows)} samples have text")
    collapsed = [row["prompt"] for row in rows if row["top_token_share"] > REPEAT_MAX]
    result.add("no collapsed samples", len(collapsed), f"0 samples with one token > {REPEAT_MAX:.0%} of it",
               PASS if not collapsed else WARN,
               "none collapsed" if not collapsed else f"repetitive: {', '.join(map(repr, collapsed))}")
    result.data.update({"prompts": prompts, "gen_tokens": ctx.opts.gen_tokens, "samples": rows})

