"""K-SSM v3: a decoder-only language model whose blocks route through a bank of Kuramoto oscillators.

The maths follows KSSM_SPEC.md section 1 step by step; parameter names match the reference
implementation so its checkpoints' `model_state` loads. Pure nn.Module: no I/O, no logging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from kssm_core.config import ModelConfig

EPS = 1e-5


@dataclass
class BankTelemetry:
    """What one oscillator bank measured on its last forward pass (tensors, no host sync)."""

    R: torch.Tensor  # [B, S] coherence |Z_1| per token
    u: torch.Tensor  # [B, S] bistability margin per token (after the clamp)
    reg: torch.Tensor  # scalar regularisation of this bank


class KuramotoOscillatorBank(nn.Module):
    """Ten-parameter projection -> bistable u -> one mean-field Kuramoto step -> multi-scale readout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.to_params = nn.Linear(cfg.d_model, 10)
        self.omega_0 = nn.Parameter(torch.linspace(-math.pi, math.pi, cfg.n_oscillators))
        self.readout = nn.Linear(3 * cfg.n_harmonics, cfg.d_model)
        self.delta_param = nn.Parameter(torch.tensor(0.2))
        self.register_buffer(
            "harmonics", torch.arange(1, cfg.n_harmonics + 1, dtype=torch.float32), persistent=False
        )
        # Interventions for evaluation (kssm eval); None / True mean "as trained".
        self.force_R: float | None = None
        """Rescale Z_1 so that |Z_1| equals this coherence."""
        self.u_floor: float | None = None
        """Replace the clamp floor at inference (the clamp-sweep ablation)."""
        self.noise: bool = True
        """Lorentzian phase noise on; off gives deterministic scoring."""
        self.last: BankTelemetry | None = None

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.to_params.weight, gain=1.0)
        nn.init.constant_(self.to_params.bias, 0.5)
        with torch.no_grad():
            self.delta_param.fill_(0.2)
            self.omega_0.copy_(torch.linspace(-math.pi, math.pi, self.cfg.n_oscillators))

    def _u(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, c, d, e, f, g, h2, _i, _j = p.unbind(-1)
        delta = b * g - c * f
        u = (d * g - c * h2) / (a * g - c * e + 1e-6)
        if self.cfg.bistable:
            floor = self.cfg.u_min if self.u_floor is None else self.u_floor
            u = u.clamp(floor, self.cfg.u_max)
        return delta, u

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Under bf16 autocast the bank runs in fp32: u's denominator a*g - c*e cancels, and the readout
        # takes cos/sin of n*theta up to ~H*pi, where bf16's 8-bit mantissa leaves errors of ~0.1 rad.
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self._forward_fp32(h if h.dtype == torch.float64 else h.float())  # fp64 stays fp64 (tests)

    def _forward_fp32(self, h: torch.Tensor) -> torch.Tensor:
        p = self.to_params(h)  # [B, S, 10]
        delta, u = self._u(p)
        coupling = 2.0 * torch.sigmoid(u)  # K, [B, S]

        # Steps 5-7 (phases, one mean-field step, Lorentzian noise, multi-scale readout) run fused in
        # kssm_core.model.oscillator, which never materialises [B, S, N, H]; kssm_core.model.oracle keeps the
        # step-by-step form as the test oracle. xi is drawn exactly as randn_like(theta) would be.
        from kssm_core.model.oscillator import phase_readout

        xi = spread = None
        if self.noise:
            spread = self.delta_param.abs() + 1e-5
            xi = torch.randn(*h.shape[:-1], self.cfg.n_oscillators, dtype=self.omega_0.dtype, device=h.device)
        re, im = phase_readout(h.mean(dim=-1), self.omega_0, coupling, xi, spread, self.cfg.n_harmonics)
        if self.force_R is not None:
            mag1 = torch.sqrt(re[..., :1] ** 2 + im[..., :1] ** 2 + 1e-8)
            scale = self.force_R / mag1
            re = torch.cat([re[..., :1] * scale, re[..., 1:]], dim=-1)
            im = torch.cat([im[..., :1] * scale, im[..., 1:]], dim=-1)
        mag = torch.sqrt(re * re + im * im + 1e-8)
        out = self.readout(torch.cat([re, im, mag], dim=-1))

        mean_u = u.mean()
        reg = self.cfg.lambda1 / (delta.abs().mean() + EPS) + self.cfg.lambda2 * (
            -torch.log(torch.clamp(mean_u, min=EPS))
        )
        self.last = BankTelemetry(R=mag[..., 0], u=u, reg=reg)
        return out


def harmonic_means(theta: torch.Tensor, harmonics: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re and Im of Z_n = mean_k exp(i n theta_k), n = 1..H: [B,S,N] -> 2 x [B,S,H].

    `harmonics` is H or the bank's buffer arange(1, H + 1) (only its length is read: no host sync).
    The fast kernel (kssm_core.model.oscillator) never builds [B,S,N,H]; kssm_core.model.oracle is the naive oracle.
    """
    from kssm_core.model.oscillator import harmonic_means as fast_harmonic_means  # local: keeps this edit inside the function

    n_harmonics = harmonics if isinstance(harmonics, int) else harmonics.numel()
    return fast_harmonic_means(theta, n_harmonics)


class KSSMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.oscillators = KuramotoOscillatorBank(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.oscillators(self.norm1(h))
        return h + self.ffn(self.norm2(h))


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, S, V]
    R: torch.Tensor  # scalar: mean over layers, batch and sequence
    u_val: torch.Tensor  # scalar: mean u over layers, batch and sequence
    reg: torch.Tensor  # scalar: mean of the banks' regularisation
    R_per_layer: torch.Tensor  # [L, B, S]
    u_per_layer: torch.Tensor  # [L, B, S]


class LossOutput(ModelOutput):
    """KSSM.loss's output: a ModelOutput whose logits are computed on first read, not by the loss.

    It keeps the head's input ([B, S, D], V/D times smaller than the logits) and the autocast state
    the loss ran under, so `out.logits` equals what forward() would have returned.
    """

    _logits: torch.Tensor | None = None
    _source: tuple | None = None

    def keep_head_input(self, feats: torch.Tensor, head: nn.Module) -> None:
        dev = feats.device.type
        self._source = (feats, head, dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None and self._source is not None:
            feats, head, dev, enabled, dtype = self._source
            with torch.autocast(device_type=dev, dtype=dtype, enabled=enabled):
                self._logits = head(feats)
            self._source = None
        return self._logits

    @logits.setter
    def logits(self, value: torch.Tensor | None) -> None:
        self._logits = value


class KSSM(nn.Module):
    """K-SSM v3 language model. forward(idx) -> ModelOutput; loss() adds CE + lambda_reg * reg."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_seq_len, cfg.d_model))
        self.blocks = nn.ModuleList(KSSMBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.output_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.output_head.weight = self.embed.weight  # tied
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            block.oscillators.reset_parameters()

    @property
    def banks(self) -> list[KuramotoOscillatorBank]:
        return [b.oscillators for b in self.blocks]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied weight counts once

    def forward(self, idx: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.output_head(self._features(idx)), *self._telemetry())

    def _features(self, idx: torch.Tensor) -> torch.Tensor:
        """The head's input: final-normed hidden states [B, S, D]; every bank's telemetry is set."""
        _, seq = idx.shape
        if seq > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {seq} tokens exceeds the position table ({self.cfg.max_seq_len})")
        h = self.embed(idx) + self.pos_embed[:, :seq]
        for block in self.blocks:
            h = block(h)
        return self.final_norm(h)

    def _telemetry(self) -> tuple[torch.Tensor, ...]:
        """(R, u_val, reg, R_per_layer, u_per_layer) of the last forward pass, as ModelOutput orders them."""
        tele = [bank.last for bank in self.banks]
        R_layers = torch.stack([t.R for t in tele])
        u_layers = torch.stack([t.u for t in tele])
        reg = torch.stack([t.reg for t in tele]).mean()
        return R_layers.mean(), u_layers.mean(), reg, R_layers, u_layers

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, lambda_reg: float) -> tuple[torch.Tensor, torch.Tensor, ModelOutput]:
        """Total loss = CE + lambda_reg * reg. Returns (total, ce, output).

        The CE is fused with the tied head (kssm_core.model.fused_ce), so the [B, S, V] logits are never
        built; the output computes them only if `.logits` is read. The spec's plain form,
        F.cross_entropy on full logits, is kssm_core.model.oracle.reference_loss.
        """
        from kssm_core.model.fused_ce import linear_cross_entropy

        feats = self._features(idx)
        ce = linear_cross_entropy(feats.reshape(-1, feats.size(-1)), self.output_head.weight, targets.reshape(-1))
        out = LossOutput(None, *self._telemetry())
        out.keep_head_input(feats, self.output_head)
        return ce + lambda_reg * out.reg, ce, out

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.8,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[float]]:
        """Sample continuations; returns (tokens [B, S+new], mean R at each new token)."""
        r_trace: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.cfg.max_seq_len:]
            out = self(ctx)
            logits = out.logits[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            r_trace.append(out.R_per_layer[:, :, -1].mean())
            idx = torch.cat([idx, nxt], dim=1)
        return idx, [float(r) for r in r_trace]
