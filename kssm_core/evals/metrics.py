"""Measurements the suites share: scored forward passes over held-out windows, perplexity, KL,
distinct-n, correlations and the spec's R zones. Pure functions over a model and tensors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kssm_core.runbook.matrix import zone_bands
from kssm_core.model.kssm import KSSM

PPL_CAP_CE = 20.0  # val perplexity = exp(min(CE, 20)), as the trainer reports it

R_ZONES = tuple(  # (lower bound, name), highest first: KSSM_SPEC.md section 3, edges from the runbook criteria
    (float("-inf") if i == 0 else lo, name) for i, (lo, _hi, name) in reversed(list(enumerate(zone_bands())))
)


def zone(r: float) -> str:
    if not math.isfinite(r):
        return "Unformed"
    return next(name for low, name in R_ZONES if r >= low)


def ppl_from_ce(ce: float) -> float:
    return math.exp(min(ce, PPL_CAP_CE)) if math.isfinite(ce) else float("nan")


def batches(windows: torch.Tensor, vocab: int, budget: int = 1 << 24) -> Iterator[torch.Tensor]:
    """Split [N, S+1] windows so that one batch's logits stay under `budget` floats (large vocabularies)."""
    per_row = max(1, (windows.shape[1] - 1) * vocab)
    size = max(1, budget // per_row)
    for i in range(0, windows.shape[0], size):
        yield windows[i:i + size]


@dataclass
class Scored:
    """Per-token results of scoring windows (CPU float tensors)."""

    nll: torch.Tensor  # [N, S] -log p(target)
    entropy: torch.Tensor  # [N, S] entropy of the predicted distribution
    R: torch.Tensor  # [L, N, S]
    u: torch.Tensor  # [L, N, S]

    @property
    def ce(self) -> float:
        return float(self.nll.mean())

    @property
    def ppl(self) -> float:
        return ppl_from_ce(self.ce)


@torch.no_grad()
def score(model: KSSM, windows: torch.Tensor, device: torch.device) -> Scored:
    """One pass over the windows with whatever interventions are active."""
    nll, ent, rs, us = [], [], [], []
    for block in batches(windows, model.cfg.vocab_size):
        block = block.to(device)
        out = model(block[:, :-1])
        logp = F.log_softmax(out.logits.float(), dim=-1)
        nll.append(-logp.gather(-1, block[:, 1:, None]).squeeze(-1).cpu())
        ent.append(-(logp.exp() * logp).sum(-1).cpu())
        rs.append(out.R_per_layer.float().cpu())
        us.append(out.u_per_layer.float().cpu())
    return Scored(torch.cat(nll), torch.cat(ent), torch.cat(rs, dim=1), torch.cat(us, dim=1))


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: [..., V] -> [...]."""
    return (logp.exp() * (logp - logq)).sum(-1)


def distinct_n(sequences: list[list[int]], n: int) -> float:
    """Unique n-grams over all n-grams across the sequences (Li et al. 2016); NaN when there are none."""
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 3:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / den if den > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank)."""
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=torch.float64)
    uniq, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(_ranks(x), _ranks(y))


def summary(x: torch.Tensor) -> dict[str, float]:
    x = x.double().flatten()
    if x.numel() == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": float(x.mean()), "std": float(x.std()) if x.numel() > 1 else 0.0,
            "min": float(x.min()), "max": float(x.max())}
