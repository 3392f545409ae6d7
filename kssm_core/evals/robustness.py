"""Robustness (the runbook's "antifragility test"): perplexity and R under Gaussian parameter noise of
relative scale 0, 0.01, 0.05, 0.10 (seeded, weights restored exactly afterwards), and generation under
temperature stress (0.5 .. 1.5): outputs stay finite, R stays in [0, 1]."""

from __future__ import annotations


import torch

from kssm_core.model.interventions import intervene, parameter_noise
from kssm_core.evals.context import EvalContext
from kssm_core.evals.metrics import distinct_n, score, summary
from kssm_core.evals.result import FAIL, PASS, SuiteResult, finite, grade_low

NAME = "robustness"
SIGMAS = (0.0, 0.01, 0.05, 0.10)
TEMPERATURES = (0.5, 1.0, 1.5)
STRESS_PROMPT = "The "


def run(ctx: EvalContext, result: SuiteResult) -> None:
    model = ctx.model
    windows = ctx.windows()
    ctx.progress.set_total(len(SIGMAS) + len(TEMPERATURES))
    noise_rows = []
    with intervene(model, noise=False):
        for sigma in SIGMAS:
            with parameter_noise(model, sigma, seed=ctx.opts.seed):
                s = score(model, windows, ctx.device)
            noise_rows.append({"sigma": sigma, "ce": s.ce, "ppl": s.ppl, "R_mean": float(s.R.mean()),
                               "u_mean": float(s.u.mean())})
            ctx.progress.advance()
    stress = []
    for t in TEMPERATURES:
        g, texts = ctx.sample(STRESS_PROMPT, temperature=t, salt=int(t * 1000))
        r = g.R.mean(1)  # [B, T]
        stress.append({"temperature": t, "R": summary(r), "finite": bool(torch.isfinite(g.R).all() and torch.isfinite(g.u).all()),
                       "distinct_2": distinct_n(g.new_tokens.tolist(), 2), "sample": texts[0]})
        ctx.progress.advance()

    base = noise_rows[0]
    ratio = {row["sigma"]: row["ppl"] / base["ppl"] if finite(base["ppl"]) and base["ppl"] > 0 else float("nan")
             for row in noise_rows}
    drift = max(abs(row["R_mean"] - base["R_mean"]) for row in noise_rows if row["sigma"] <= 0.05)
    all_finite = all(finite(row["ppl"]) and finite(row["R_mean"]) for row in noise_rows)
    result.add("perplexity under 5% parameter noise", ratio[0.05], "ppl ratio < 1.5 (warn < 3)",
               grade_low(ratio[0.05], 1.5, 3.0),
               "ppl " + ", ".join(f"{row['ppl']:.2f} at {row['sigma']:g}" for row in noise_rows))
    result.add("R drift under 5% parameter noise", drift, "|dR| < 0.10 (warn < 0.20)", grade_low(drift, 0.10, 0.20),
               "R " + ", ".join(f"{row['R_mean']:.4f} at {row['sigma']:g}" for row in noise_rows))
    result.add("finite under 10% parameter noise", all_finite, "no NaN / inf", PASS if all_finite else FAIL,
               "every noise level gave finite perplexity and R" if all_finite else "NaN or inf under noise")
    stress_ok = all(s["finite"] and 0.0 <= s["R"]["min"] and s["R"]["max"] <= 1.0 + 1e-4 for s in stress)
    result.add("temperature stress", stress_ok, f"finite, R in [0, 1] at T = {', '.join(map(str, TEMPERATURES))}",
               PASS if stress_ok else FAIL,
               "; ".join(f"T={s['temperature']}: R {s['R']['mean']:.3f}, distinct-2 {s['distinct_2']:.2f}"
                         for s in stress))
    antifragile = [row["sigma"] for row in noise_rows[1:] if row["ppl"] < base["ppl"]]
    result.data.update({"heldout": ctx.held.source, "windows": int(windows.shape[0]), "seq_len": ctx.seq_len,
                        "parameter_noise": noise_rows, "ppl_ratio": {str(k): v for k, v in ratio.items()},
                        "antifragile_at": antifragile, "temperature_stress": stress,
                        "noise_seed": ctx.opts.seed, "noise_scale": "per tensor: sigma * rms(tensor)"})
