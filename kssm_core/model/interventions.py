"""Interventions on a K-SSM model for evaluation: force R, move the u floor, silence the phase noise,
perturb the parameters, and record per-layer R / u while generating.

Every intervention is a context manager that sets attributes the oscillator banks already read
(`force_R`, `u_floor`, `noise`) or edits parameters in place, and restores the exact previous state on
exit, even when the body raises. Nothing here patches `forward`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kssm_core.model.kssm import KSSM


@contextlib.contextmanager
def intervene(model: KSSM, force_R: float | None = None, u_floor: float | None = None,
              noise: bool | None = None) -> Iterator[KSSM]:
    """Set the banks' interventions for the duration of the block; None leaves a setting as it is.

    force_R: rescale the first harmonic Z_1 so that R = |Z_1| equals this value (0..1).
    u_floor: replace the bistable clamp floor (must stay below the ceiling).
    noise: False turns the Lorentzian phase noise off (deterministic scoring).
    """
    if force_R is not None and not 0.0 <= float(force_R) <= 1.0:
        raise ValueError(f"force_R must be in [0, 1], got {force_R}")
    if u_floor is not None and not 0.0 < float(u_floor) < model.cfg.u_max:
        raise ValueError(f"u_floor must be in (0, {model.cfg.u_max}), got {u_floor}")
    saved = [(bank, bank.force_R, bank.u_floor, bank.noise) for bank in model.banks]
    try:
        for bank in model.banks:
            if force_R is not None:
                bank.force_R = float(force_R)
            if u_floor is not None:
                bank.u_floor = float(u_floor)
            if noise is not None:
                bank.noise = bool(noise)
        yield model
    finally:
        for bank, f, u, n in saved:
            bank.force_R, bank.u_floor, bank.noise = f, u, n


@contextlib.contextmanager
def parameter_noise(model: torch.nn.Module, sigma: float, seed: int) -> Iterator[torch.nn.Module]:
    """Add Gaussian noise of relative scale sigma to every parameter, then restore the exact originals.

    Each tensor gets N(0, (sigma * rms(tensor))^2) noise from a generator seeded with `seed`, so the
    same (sigma, seed) gives the same perturbed model. Tied weights are perturbed once.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    params = list(model.parameters())  # parameters() yields a tied tensor once
    originals = [p.detach().clone() for p in params]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    try:
        if sigma > 0:
            with torch.no_grad():
                for p in params:
                    # drawn on the CPU so a CUDA run perturbs with the same numbers as a CPU run
                    z = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype)
                    rms = p.detach().float().pow(2).mean().sqrt()
                    p.add_(z * (sigma * rms).to(p.dtype))
        yield model
    finally:
        with torch.no_grad():
            for p, orig in zip(params, originals):
                p.copy_(orig)


@dataclass
class Generation:
    """One batch of sampled continuations with what every layer's bank measured at each new token."""

    tokens: torch.Tensor  # [B, prompt + new]
    prompt_len: int
    R: torch.Tensor  # [B, L, new] coherence of the last position at each generation step
    u: torch.Tensor  # [B, L, new] bistability margin, same shape

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len:]


@torch.no_grad()
def generate_with_telemetry(model: KSSM, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.8,
                            generator: torch.Generator | None = None, top_k: int | None = None) -> Generation:
    """Sample max_new_tokens after idx [B, S]; temperature <= 0 is greedy. Returns tokens and [B, L, T] R / u."""
    prompt_len = idx.shape[1]
    rs, us = [], []
    for _ in range(max_new_tokens):
        out = model(idx[:, -model.cfg.max_seq_len:])
        logits = out.logits[:, -1, :].float()
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        rs.append(out.R_per_layer[:, :, -1].float().transpose(0, 1))  # [B, L]
        us.append(out.u_per_layer[:, :, -1].float().transpose(0, 1))
        idx = torch.cat([idx, nxt], dim=1)
    if rs:
        R, u = torch.stack(rs, dim=-1), torch.stack(us, dim=-1)
    else:
        b, n_layers = idx.shape[0], len(model.banks)
        R = u = torch.zeros(b, n_layers, 0)
    return Generation(idx, prompt_len, R.cpu(), u.cpu())
