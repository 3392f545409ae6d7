"""The oscillator bank exactly as KSSM_SPEC.md section 1 states it: the test oracle for the fast kernel.

Plain eager PyTorch, no tricks: the multi-scale readout materialises n*theta as a [B, S, N, H] tensor
and takes cos and sin of all of it, and autograd keeps what it needs. It is slow and memory-hungry on
purpose; tests and benchmarks/train_throughput.py compare kssm_core.model.oscillator against it. Production
code never calls it; `use_reference` swaps it into a model so the benchmark can time the naive model,
together with `reference_loss`, the cross-entropy on full logits that kssm_core.model.fused_ce replaces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

EPS = 1e-5


def reference_harmonic_means(theta: torch.Tensor, n_harmonics: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re and Im of Z_n = mean_k exp(i n theta_k), n = 1..H, the naive way: [B,S,N] -> 2 x [B,S,H]."""
    harmonics = torch.arange(1, n_harmonics + 1, dtype=theta.dtype, device=theta.device)
    nt = theta.unsqueeze(-1) * harmonics  # [B, S, N, H]
    return torch.cos(nt).mean(dim=-2), torch.sin(nt).mean(dim=-2)


def reference_bank_forward(bank, h: torch.Tensor):
    """KuramotoOscillatorBank.forward, step by step from the spec; sets bank.last like the module does.

    `bank` is a kssm_core.model.kssm.KuramotoOscillatorBank: its parameters, config and evaluation
    interventions (force_R, u_floor, noise) are read from it, so the two paths are comparable on
    the very same module. Returns the readout [B, S, D].
    """
    # The module's precision policy (not spec maths): the bank runs outside autocast, in fp32 (fp64 stays).
    with torch.autocast(device_type=h.device.type, enabled=False):
        return _reference_steps(bank, h if h.dtype == torch.float64 else h.float())


def _reference_steps(bank, h: torch.Tensor):
    from kssm_core.model.kssm import BankTelemetry  # late import: no import cycle should model.py ever use this module

    cfg = bank.cfg
    # 1. ten scalars per token
    p = bank.to_params(h)
    a, b, c, d, e, f, g, h2, _i, _j = p.unbind(-1)
    # 2. determinant
    delta = b * g - c * f
    # 3. reduced variable and the bistable clamp
    u = (d * g - c * h2) / (a * g - c * e + 1e-6)
    if cfg.bistable:
        floor = cfg.u_min if bank.u_floor is None else bank.u_floor
        u = u.clamp(floor, cfg.u_max)
    # 4. coupling
    coupling = 2.0 * torch.sigmoid(u)
    # 5. phases
    theta0 = bank.omega_0 + h.mean(dim=-1, keepdim=True)
    # 6. one mean-field step (+ Lorentzian noise)
    sin0, cos0 = torch.sin(theta0), torch.cos(theta0)
    S = sin0.mean(dim=-1, keepdim=True)
    C = cos0.mean(dim=-1, keepdim=True)
    theta = theta0 + coupling.unsqueeze(-1) * (S * cos0 - C * sin0)
    if bank.noise:
        spread = bank.delta_param.abs() + 1e-5
        theta = theta - spread * torch.randn_like(theta)
    # 7. multi-scale readout
    re, im = reference_harmonic_means(theta, cfg.n_harmonics)
    if bank.force_R is not None:
        mag1 = torch.sqrt(re[..., :1] ** 2 + im[..., :1] ** 2 + 1e-8)
        scale = bank.force_R / mag1
        re = torch.cat([re[..., :1] * scale, re[..., 1:]], dim=-1)
        im = torch.cat([im[..., :1] * scale, im[..., 1:]], dim=-1)
    mag = torch.sqrt(re * re + im * im + 1e-8)
    out = bank.readout(torch.cat([re, im, mag], dim=-1))
    # 8. R = |Z_1|; regularisation
    mean_u = u.mean()
    reg = cfg.lambda1 / (delta.abs().mean() + EPS) + cfg.lambda2 * (-torch.log(torch.clamp(mean_u, min=EPS)))
    bank.last = BankTelemetry(R=mag[..., 0], u=u, reg=reg)
    return out


def reference_loss(model, idx: torch.Tensor, targets: torch.Tensor, lambda_reg: float):
    """KSSM.loss the plain way: full [B, S, V] logits, then F.cross_entropy (upcast to fp32).

    The oracle for kssm_core.model.fused_ce, which computes the same CE without building the logits.
    Returns (total, ce, output) like KSSM.loss.
    """
    out = model(idx)
    ce = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)).float(), targets.reshape(-1))
    return ce + lambda_reg * out.reg, ce, out


@contextlib.contextmanager
def use_reference(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, `model` runs the spec's plain maths (for tests and benchmarks): every
    oscillator bank the reference forward, and every KSSM's loss the full-logits cross-entropy."""
    from kssm_core.model.kssm import KSSM, KuramotoOscillatorBank

    banks = [m for m in model.modules() if isinstance(m, KuramotoOscillatorBank)]
    models = [m for m in model.modules() if isinstance(m, KSSM)]
    for bank in banks:
        bank.forward = (lambda h, _b=bank: reference_bank_forward(_b, h))  # instance attribute shadows the method
    for m in models:
        m.loss = (lambda idx, targets, lambda_reg, _m=m: reference_loss(_m, idx, targets, lambda_reg))
    try:
        yield
    finally:
        for bank in banks:
            del bank.forward
        for m in models:
            del m.loss
