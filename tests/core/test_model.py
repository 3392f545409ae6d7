"""The K-SSM v3 model against KSSM_SPEC.md section 1: shapes, ranges, the reg formula, names, size."""

from __future__ import annotations

import math

import numerics as nm
import pytest
import torch

from kssm_core.config import ModelConfig, model_config_for
from kssm_core.model.kssm import EPS, KSSM


def small_cfg(**over) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_oscillators=12, n_harmonics=4, max_seq_len=64)
    base.update(over)
    return ModelConfig(**base)


def test_output_shapes_and_ranges():
    torch.manual_seed(0)
    cfg = small_cfg()
    model = KSSM(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 17))
    with torch.no_grad():
        out = model(idx)
    assert out.logits.shape == (3, 17, cfg.vocab_size)
    assert out.R_per_layer.shape == (cfg.n_layers, 3, 17)
    assert out.u_per_layer.shape == (cfg.n_layers, 3, 17)
    for scalar in (out.R, out.u_val, out.reg):
        assert scalar.dim() == 0 and torch.isfinite(scalar)
    # R = |Z_1| is a coherence: in [0, 1] (the +1e-8 inside the sqrt allows a hair above 0), plus the
    # readout's fp32 rounding (a mean of N unit vectors, each a product of rounded ones: |Z_1| <= 1 exactly)
    r_max = math.sqrt(1 + 1e-8) + nm.U32 * (nm.power_terms(1) + 2 * cfg.n_oscillators + 12)
    assert out.R_per_layer.min() >= 0 and out.R_per_layer.max() <= r_max
    # Bistable: u per token is clamped to [0.1, 10].
    assert out.u_per_layer.min() >= 0.1 - 1e-7 and out.u_per_layer.max() <= 10.0 + 1e-6
    assert 0.1 - 1e-7 <= float(out.u_val) <= 10.0 + 1e-6


@torch.no_grad()
def test_u_clamp_holds_under_extreme_params_and_monostable_does_not_clamp():
    torch.manual_seed(1)
    bi = KSSM(small_cfg())
    mono = KSSM(small_cfg(bistable=False))
    mono.load_state_dict(bi.state_dict())
    # Large random projections drive u_raw far outside [0.1, 10] (both signs).
    with torch.no_grad():
        for model in (bi, mono):
            for bank in model.banks:
                bank.to_params.weight.normal_(0, 5.0)
                bank.to_params.bias.normal_(0, 5.0)
    idx = torch.randint(0, 97, (4, 32))
    u_bi = bi(idx).u_per_layer
    u_mono = mono(idx).u_per_layer
    assert u_bi.min() >= 0.1 - 1e-7 and u_bi.max() <= 10.0 + 1e-6
    assert (u_bi == 0.1).any() or (u_bi == 10.0).any(), "expected the clamp to bind for extreme parameters"
    # The monostable ablation leaves u unclamped: it must leave the band somewhere.
    assert (u_mono < 0.1).any() or (u_mono > 10.0).any()


@torch.no_grad()
def test_reg_loss_matches_hand_computation_from_to_params():
    torch.manual_seed(2)
    cfg = small_cfg()
    model = KSSM(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 9))
    # Capture each bank's input so the formula can be recomputed from its own to_params output.
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach())) for b in model.banks]
    out = model(idx)
    for h in hooks:
        h.remove()
    regs, bounds = [], []
    for bank, h in zip(model.banks, inputs):
        p = bank.to_params(h).double()  # the very fp32 p the bank computed, exactly in float64
        a, b, c, d, e, f, g, h2 = (p[..., k] for k in range(8))
        delta = b * g - c * f
        u = ((d * g - c * h2) / (a * g - c * e + 1e-6)).clamp(0.1, 10.0)
        reg = 0.1 / (delta.abs().mean() + 1e-5) + 0.5 * (-torch.log(torch.clamp(u.mean(), min=1e-5)))
        regs.append(reg)
        u_bound, reg_bound = reg_rounding_bounds(p, u, delta)
        bounds.append(reg_bound)
        assert abs(float(bank.last.reg) - float(reg)) <= reg_bound, "bank reg differs from the spec formula"
        assert ((bank.last.u.double() - u).abs() <= u_bound).all()
    expected = torch.stack(regs).mean().detach()
    # the mean over layers adds L terms and a division: (L + 1) u |reg|
    assert abs(float(out.reg) - float(expected)) <= sum(bounds) / len(bounds) + nm.gamma(len(regs) + 1) * float(expected)
    assert EPS == 1e-5 and cfg.lambda1 == 0.1 and cfg.lambda2 == 0.5


def reg_rounding_bounds(p: torch.Tensor, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, float]:
    """How far the bank's fp32 u (elementwise) and reg can be from the formula evaluated exactly on the
    same p (units of u = 2**-24; first order):

    delta = b g - c f and the ratio's numerator and denominator: two products and a difference, 3u of
    |bg| + |cf| each (the cancellation is what makes u ill-conditioned where a g ~ c e); u = num / den:
    their relative errors plus u, and the clamp is 1-Lipschitz and confines it to [0.1, 10]; the means
    over T tokens (gamma_T), 1 / (m + eps) and log (2u each), the weighted sum (2u).
    """
    p, u, delta = p.detach(), u.detach(), delta.detach()
    a, b, c, d, e, f, g, h2 = (p[..., k] for k in range(8))
    uu = nm.U32
    num, den = d * g - c * h2, a * g - c * e + 1e-6
    u_raw = num / den
    rel = 3 * uu * ((d * g).abs() + (c * h2).abs()) / num.abs() + (3 * uu * ((a * g).abs() + (c * e).abs()) + uu * den.abs()) / den.abs() + uu
    u_bound = torch.minimum(u_raw.abs() * rel, torch.tensor(10.0 - 0.1))
    n_tok = delta.numel()
    d_abs = delta.abs()
    m = d_abs.mean()
    dm = nm.gamma(n_tok) * m + (3 * uu * ((b * g).abs() + (c * f).abs())).mean()  # mean |delta| (|.| exact)
    term1 = 0.1 / (m + 1e-5)
    d_term1 = term1 * (dm / (m + 1e-5) + 3 * uu)
    mean_u = u.mean()
    d_mean_u = nm.gamma(n_tok) * mean_u + u_bound.mean()
    d_term2 = 0.5 * (d_mean_u / mean_u + 2 * uu * torch.log(mean_u).abs()) + uu * 0.5 * torch.log(mean_u).abs()
    reg = term1 + 0.5 * torch.log(mean_u).abs()
    return u_bound, float(d_term1 + d_term2 + 2 * uu * reg)


@torch.no_grad()
def test_total_loss_is_ce_plus_lambda_reg_times_reg():
    torch.manual_seed(3)
    model = KSSM(small_cfg())
    for bank in model.banks:
        bank.noise = False  # deterministic, so two forwards agree
    idx = torch.randint(0, 97, (2, 10))
    tgt = torch.randint(0, 97, (2, 10))
    total, ce, out = model.loss(idx, tgt, lambda_reg=0.37)
    ce_hand = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 97), tgt.reshape(-1))
    # the fused and the plain CE of the same features: each within linear_ce's bound of the exact one;
    # the totals add 0.37 * the same reg (a product and a sum each side)
    feats = model._features(idx)
    ce_bound = 2 * float(nm.linear_ce(feats.reshape(-1, 32), model.output_head.weight, tgt.reshape(-1)).loss_bound)
    assert abs(float(ce) - float(ce_hand)) <= ce_bound
    total_bound = ce_bound + 4 * nm.U32 * (abs(float(ce)) + 0.37 * abs(float(out.reg)))
    assert abs(float(total) - float(ce_hand + 0.37 * out.reg)) <= total_bound


@torch.no_grad()
def test_R_is_magnitude_of_first_harmonic_mean_field():
    # With noise off and force_R unset, recompute R = |mean_k exp(i theta_k)| after one mean-field step.
    torch.manual_seed(4)
    cfg = small_cfg(n_layers=1)
    model = KSSM(cfg)
    bank = model.banks[0]
    bank.noise = False
    seen = []
    bank.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    model(torch.randint(0, 97, (2, 5)))
    h = seen[0]
    p = bank.to_params(h)
    u = bank._u(p)[1]
    K = (2 * torch.sigmoid(u)).double()  # the bank's own fp32 coupling; the rest exactly, in float64
    h64, omega = h.double(), bank.omega_0.detach().double()
    theta0 = omega + h64.mean(-1, keepdim=True)
    S, C = torch.sin(theta0).mean(-1, keepdim=True), torch.cos(theta0).mean(-1, keepdim=True)
    theta = theta0 + K.unsqueeze(-1) * (S * torch.cos(theta0) - C * torch.sin(theta0))
    R = torch.sqrt(torch.cos(theta).mean(-1) ** 2 + torch.sin(theta).mean(-1) ** 2 + 1e-8)
    # the bank's fp32 R: the phase step's rounding (Z_1 is 1-sensitive to theta), plus its fp32 mean of h
    # (D terms: gamma_D mean|h|, in theta0)
    theta_max = nm.theta_bound(omega, h64.mean(-1))
    extra = cfg.d_model * float(h64.abs().mean(-1).max()) + 1
    bound = nm.z1_bound(cfg.n_oscillators, theta_max, extra_theta=extra)
    assert ((bank.last.R.double() - R).abs() <= bound).all()


@torch.no_grad()
def test_initialisation_follows_the_reference():
    cfg = small_cfg(n_oscillators=16)
    model = KSSM(cfg)
    for bank in model.banks:
        assert float(bank.delta_param) == pytest.approx(0.2)
        assert torch.allclose(bank.to_params.bias, torch.full((10,), 0.5))
        w = bank.to_params.weight  # orthogonal rows (10 x D, D > 10): W W^T = I
        # fp32 Householder QR (LAPACK): ||Q^T Q - I|| <= 2 sqrt(n) gamma_(m n) (Higham Thm 19.4, constant 1),
        # then W W^T's own D-term dot products
        atol = 2 * math.sqrt(10) * nm.gamma(10 * cfg.d_model) + nm.gamma(cfg.d_model)
        assert torch.allclose(w @ w.T, torch.eye(10), rtol=0, atol=atol)
        assert torch.allclose(bank.omega_0, torch.linspace(-math.pi, math.pi, 16))
    assert model.output_head.weight is model.embed.weight  # tied head
    assert model.pos_embed.shape == (1, cfg.max_seq_len, cfg.d_model)


def expected_keys(n_layers: int) -> set[str]:
    keys = {"embed.weight", "pos_embed", "output_head.weight", "final_norm.weight", "final_norm.bias"}
    for l in range(n_layers):
        for name in ("to_params.weight", "to_params.bias", "omega_0", "readout.weight", "readout.bias", "delta_param"):
            keys.add(f"blocks.{l}.oscillators.{name}")
        for mod in ("norm1", "norm2", "ffn.0", "ffn.2"):
            keys.add(f"blocks.{l}.{mod}.weight")
            keys.add(f"blocks.{l}.{mod}.bias")
    return keys


def test_state_dict_keys_are_the_reference_names():
    model = KSSM(small_cfg(n_layers=3))
    assert set(model.state_dict()) == expected_keys(3)


def test_medium_preset_with_cl100k_vocab_has_the_spec_parameter_count():
    cfg = model_config_for("medium", 100277)
    assert (cfg.d_model, cfg.n_layers, cfg.n_oscillators, cfg.n_harmonics) == (384, 6, 192, 32)
    model = KSSM(cfg)
    n = model.num_parameters()
    # Independent count from the spec's shapes (the tied head counted once).
    V, D, L, N, H = 100277, 384, 6, 192, 32
    per_block = (D * 10 + 10) + N + (3 * H * D + D) + 1 + 4 * D + (D * 4 * D + 4 * D) + (4 * D * D + D)
    assert n == V * D + 1024 * D + L * per_block + 2 * D
    assert n == 46_246_722  # the figure in KSSM_SPEC.md section 1
    assert set(model.state_dict()) == expected_keys(6)


@torch.no_grad()
def test_force_R_sets_coherence_and_noise_off_is_deterministic():
    torch.manual_seed(5)
    model = KSSM(small_cfg())
    for bank in model.banks:
        bank.noise = False
    idx = torch.randint(0, 97, (2, 8))
    a, b = model(idx), model(idx)
    assert torch.equal(a.logits, b.logits)
    for bank in model.banks:
        bank.force_R = 0.5
    forced = model(idx)
    # not rounding: the +1e-8 inside both square roots moves R off 0.5 by ~1e-8 / |Z_1|^2
    assert torch.allclose(forced.R_per_layer, torch.full_like(forced.R_per_layer, 0.5), atol=1e-4)


def test_backward_gives_finite_gradients_for_every_parameter():
    torch.manual_seed(6)
    model = KSSM(small_cfg())
    idx = torch.randint(0, 97, (2, 12))
    total, _, _ = model.loss(idx, torch.roll(idx, -1, 1), lambda_reg=0.01)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def test_sequence_longer_than_position_table_is_refused():
    model = KSSM(small_cfg(max_seq_len=8))
    with pytest.raises(ValueError, match="exceeds the position table"):
        model(torch.zeros(1, 9, dtype=torch.long))
