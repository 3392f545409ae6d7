"""R-quality correlation and intervention: force R = |Z_1| to fixed values in every bank and measure
perplexity and the output divergence KL(unforced || forced); correlate the natural R of each token with
the entropy of the next-token distribution (is a coherent state a confident one?).

Scoring runs with the Lorentzian noise off, so every difference comes from the intervention.
"""

from __future__ import annotations

import torch.nn.functional as F

from kssm_core.model.interventions import intervene
from kssm_core.evals.context import EvalContext
from kssm_core.evals.metrics import batches, kl, pearson, ppl_from_ce, score, spearman
from kssm_core.evals.result import FAIL, PASS, WARN, SuiteResult, finite, grade_high

NAME = "r-correlation"
FORCED_R = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
KL_PASS, KL_WARN = 0.01, 0.001  # nats per token: below 0.001 the model ignores its R


def run(ctx: EvalContext, result: SuiteResult) -> None:
    model, dev = ctx.model, ctx.device
    windows = ctx.windows()
    blocks = list(batches(windows, model.cfg.vocab_size))
    ctx.progress.set_total(1 + len(blocks))
    acc = {r: {"nll": 0.0, "kl": 0.0} for r in FORCED_R}
    with intervene(model, noise=False):
        base = score(model, windows, dev)
        ctx.progress.advance()
        # batch by batch, every R against the same unforced pass: only one batch of log-probs is held at a time
        for block in blocks:
            x, targets = block[:, :-1].to(dev), block[:, 1:].to(dev)
            logp = F.log_softmax(model(x).logits.float(), dim=-1)
            for r in FORCED_R:
                with intervene(model, force_R=r):
                    logq = F.log_softmax(model(x).logits.float(), dim=-1)
                acc[r]["nll"] += float(-logq.gather(-1, targets[..., None]).sum())
                acc[r]["kl"] += float(kl(logp, logq).sum())
            ctx.progress.advance()
    count = windows[:, 1:].numel()
    sweep = [{"R": r, "ce": acc[r]["nll"] / count, "ppl": ppl_from_ce(acc[r]["nll"] / count),
              "kl": acc[r]["kl"] / count} for r in FORCED_R]

    natural_r = base.R.mean(0)  # [N, S]: mean over layers, as the logs report R
    rho = spearman(natural_r, -base.entropy)  # R vs confidence
    r_lin = pearson(natural_r, -base.entropy)
    max_kl = max(s["kl"] for s in sweep)
    ppls = [s["ppl"] for s in sweep]
    spread = (max(ppls) - min(ppls)) / base.ppl if finite(base.ppl) and base.ppl > 0 else float("nan")
    best = min(sweep, key=lambda s: s["ppl"])

    result.add("forced-R output divergence", max_kl, f"max KL >= {KL_PASS} nats (warn >= {KL_WARN})",
               PASS if max_kl >= KL_PASS else WARN if max_kl >= KL_WARN else FAIL,
               f"forcing R changes the next-token distribution by up to {max_kl:.4g} nats/token "
               f"(largest at R={max(sweep, key=lambda s: s['kl'])['R']})")
    result.add("forced-R perplexity response", spread, "> 0.01 of unforced (warn > 0.001)",
               grade_high(spread, 0.01, 0.001),
               f"perplexity over the sweep {min(ppls):.2f}..{max(ppls):.2f} vs unforced {base.ppl:.2f}; "
               f"lowest at R={best['R']}")
    if not finite(rho):
        verdict, detail = FAIL, "R or entropy is constant or not finite: no correlation can be measured"
    else:
        verdict = PASS if rho >= 0.1 else WARN if rho > -0.1 else FAIL
        detail = f"Spearman rho(R, -entropy) = {rho:.3f} over {natural_r.numel()} tokens (Pearson {r_lin:.3f})"
    result.add("R-confidence correlation", rho, ">= 0.10 (warn > -0.10)", verdict, detail)
    result.data.update({
        "heldout": ctx.held.source, "windows": int(windows.shape[0]), "seq_len": ctx.seq_len,
        "unforced": {"ce": base.ce, "ppl": base.ppl, "R_mean": float(natural_r.mean()),
                     "entropy_mean": float(base.entropy.mean())},
        "sweep": sweep, "spearman_R_confidence": rho, "pearson_R_confidence": r_lin,
    })
