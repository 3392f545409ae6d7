"""How far an fp32 result may be from the exact one, from the arithmetic rather than from one CPU.

A fixed tolerance such as "norm-wise relative error <= 1e-5" measures the rounding order of the CPU it
was tuned on: AVX2 and AVX-512 kernels (ATen's vectorised reductions, MKL and oneDNN GEMMs, Sleef's
sin/cos/exp) sum in different orders and are each right. What every correct implementation shares is
the worst-case bound of floating-point summation (Higham, Accuracy and Stability of Numerical
Algorithms, 2nd ed., section 3.1 and 4.2): a sum of n terms, in ANY order and grouping, errs by at most

    gamma_(n-1) * sum_i |x_i|,    gamma_k = k u / (1 - k u),    u = 2**-24 (fp32) or 2**-53 (fp64),

and a correctly rounded operation by u relative. So the allowed error of a result is computed from how
many roundings pile up on it and the magnitude of what they act on (sum |terms|, taken from a float64
run), never from the size of the result itself: a gradient summed over every token with cancellation
(|sum| << sum |terms|) gets the room its summands need, and a result free of cancellation stays sharp.

The bounds are first order (products of two rounding errors, ~u^2, are left out) and worst case, so a
correct kernel sits far inside them on every CPU (the tests print the ratio error / bound when they
fail), while a real bug (a wrong sign, a missing term, a wrong chunk edge) errs by a fraction of the
result, orders of magnitude beyond them: the test_a_broken_* tests in test_oscillator_fast.py and
test_fused_ce.py run deliberately broken kernels through the same checks and require each to fail.

Here: `Check` and the two comparisons (`elementwise`, `normwise`); `token_abs_sums` (the per-token
magnitude of a gradient summed over tokens) and `linearised` (a token-coupling scalar split per token);
`fp32_noise` (a float64 oracle drawing the fp32 path's noise); the bounds of the fused linear +
cross-entropy (`linear_ce`), of the harmonic readout (`harmonic_readout`) and of R (`z1_bound`); the
rounding counts of the phase kernel (`phase_terms`), of a bank (`bank_terms`) and of a whole KSSM
(`model_terms`); `model_token_terms` (a float64 KSSM loss split per token) and `kssm_loss_checks`
(KSSM.loss, production against use_reference, every quantity checked).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

U32 = 2.0**-24
"""Unit roundoff of fp32: a correctly rounded fp32 operation errs by at most U32 relative."""
U64 = 2.0**-53
"""Unit roundoff of float64."""
U_BF16 = 2.0**-8
"""Unit roundoff of bfloat16 (8 significant bits)."""

SIN_COS_EXP_ULPS = 4
"""Relative error of torch's fp32 sin/cos/exp/log in units of u: Sleef's u10 kernels (AVX2, AVX-512)
and glibc's (the portable path) stay within 1 ulp = 2u; ATen's vectorised softmax may take its
exp_u20 variant (2 ulps = 4u), so 4u covers every CPU capability."""


def unit_roundoff(dtype: torch.dtype) -> float:
    return {torch.float32: U32, torch.float64: U64, torch.bfloat16: U_BF16}[dtype]


def gamma(n: float, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): n roundings in a row, or a sum of n + 1 terms in any order."""
    nu = n * u
    if nu >= 1:
        raise ValueError(f"gamma_{n} is unbounded at u = {u}: too many roundings for this precision")
    return nu / (1 - nu)


# ---- comparisons ----------------------------------------------------------------------------------


@dataclass
class Check:
    """One comparison of a computed tensor with the exact one: its error, the allowed error, the ratio."""

    name: str
    err: float
    bound: float
    where: str = ""

    @property
    def ratio(self) -> float:
        return self.err / self.bound if self.bound > 0 else (0.0 if self.err == 0 else math.inf)

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0

    def __str__(self) -> str:
        return f"{self.name}: error {self.err:.3g} vs bound {self.bound:.3g} (ratio {self.ratio:.3g}){self.where}"


def elementwise(name: str, got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor | float) -> Check:
    """|got - exact| <= bound in every element (bound broadcastable); the worst element is reported."""
    got, exact = got.detach().double(), exact.detach().double()
    assert got.shape == exact.shape, (name, tuple(got.shape), tuple(exact.shape))
    err = (got - exact).abs()
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(err)
    if not torch.isfinite(got).all():
        return Check(name, math.inf, float(bound.max()), " (non-finite values)")
    ratio = torch.where(bound > 0, err / bound, torch.where(err > 0, torch.inf, 0.0))
    i = int(ratio.reshape(-1).argmax())
    where = f" at {tuple(int(k) for k in torch.unravel_index(torch.tensor(i), err.shape))}" if err.dim() else ""
    return Check(name, float(err.reshape(-1)[i]), float(bound.reshape(-1)[i]), where)


def normwise(name: str, got: torch.Tensor, exact: torch.Tensor, scale: torch.Tensor, n_terms: float,
             u: float = U32) -> Check:
    """||got - exact|| <= gamma(n_terms) * ||scale||.

    `scale` (>= 0, exact's shape) is the magnitude the roundings act on: for a gradient summed over
    tokens, sum_t |token t's contribution| (`token_abs_sums`); for a per-token quantity, |exact|.
    `n_terms` counts the roundings that can pile up on one element (`phase_terms`, `model_terms`).
    Norm-wise, because a per-token quantity near zero by cancellation (an output element, an R) has no
    elementwise scale of its own; the norm is carried by the elements that have one.
    """
    got, exact = got.detach().double(), exact.detach().double()
    assert got.shape == exact.shape, (name, tuple(got.shape), tuple(exact.shape))
    if not torch.isfinite(got).all():
        return Check(name, math.inf, 0.0, " (non-finite values)")
    return Check(name, float((got - exact).norm()), gamma(n_terms, u) * float(scale.detach().double().norm()))


def failures(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


def assert_within(checks: Sequence[Check]) -> None:
    bad = failures(checks)
    assert not bad, "outside the rounding bound:\n  " + "\n  ".join(map(str, bad))


# ---- magnitudes -----------------------------------------------------------------------------------


def token_abs_sums(terms: torch.Tensor, inputs: Sequence[torch.Tensor],
                   full: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor | None]:
    """sum_t |d terms[t] / d x| for each x in `inputs`: the summands' magnitude of a gradient summed over
    tokens, from a float64 graph (a backward per token, batched: meant for test-sized batches).

    `terms` must split the loss into per-token contributions (the loss's gradient = the sum of theirs);
    when `full` (that gradient) is given, the split is checked to float64 rounding.
    """
    flat = terms.reshape(-1)
    try:  # one vectorised backward over the T one-hot seeds
        grads = torch.autograd.grad(flat, list(inputs), grad_outputs=torch.eye(flat.numel(), dtype=flat.dtype),
                                    retain_graph=True, allow_unused=True, is_grads_batched=True)
        sums = [None if g is None else g.abs().sum(0) for g in grads]
        total = [None if g is None else g.sum(0) for g in grads]
    except RuntimeError:  # an op without a batching rule: one backward per token
        sums, total = [None] * len(inputs), [None] * len(inputs)
        for t in range(flat.numel()):
            for i, g in enumerate(torch.autograd.grad(flat[t], list(inputs), retain_graph=True, allow_unused=True)):
                if g is not None:
                    sums[i] = g.abs() if sums[i] is None else sums[i] + g.abs()
                    total[i] = g.clone() if total[i] is None else total[i] + g
    if full is not None:
        for i, (t, f) in enumerate(zip(total, full)):
            if f is None or t is None:
                assert t is None or not t.any(), f"input {i}: per-token terms give a gradient the loss does not"
                continue
            assert (t - f).norm() <= 1e-9 * (sums[i].norm() + 1e-300), f"input {i}: the per-token split is wrong"
    return sums


class Draws:
    """What `fp32_noise` drew: the largest |xi| (it bounds the noise's share of theta)."""

    max_abs: float = 0.0


@contextlib.contextmanager
def fp32_noise() -> Iterator[Draws]:
    """Within the block, float64 `torch.randn` / `torch.randn_like` draw in fp32 and upcast, consuming
    the generator exactly as the fp32 draw would: a float64 oracle then sees the very noise the fp32
    path draws (float64 draws of the same seed are different numbers, not a rounding of them)."""
    real_randn, real_like = torch.randn, torch.randn_like
    draws = Draws()

    def seen(x: torch.Tensor) -> torch.Tensor:
        if x.numel():
            draws.max_abs = max(draws.max_abs, float(x.detach().abs().max()))
        return x

    def randn(*size, dtype=None, **kw):
        if dtype == torch.float64:
            return seen(real_randn(*size, dtype=torch.float32, **kw).double())
        return seen(real_randn(*size, dtype=dtype, **kw))

    def randn_like(t, *args, dtype=None, **kw):
        if (dtype or t.dtype) == torch.float64:
            return seen(real_like(t, *args, dtype=torch.float32, **kw).double())
        return seen(real_like(t, *args, dtype=dtype, **kw))

    torch.randn, torch.randn_like = randn, randn_like
    try:
        yield draws
    finally:
        torch.randn, torch.randn_like = real_randn, real_like


# ---- the fused linear + cross-entropy ---------------------------------------------------------------


@dataclass
class LinearCE:
    """Exact (float64) mean CE of h @ W.T and its gradients, with the fp32 error bound of each, elementwise."""

    loss: torch.Tensor
    grad_h: torch.Tensor
    grad_w: torch.Tensor
    loss_bound: torch.Tensor
    grad_h_bound: torch.Tensor
    grad_w_bound: torch.Tensor

    def checks(self, loss, grad_h=None, grad_w=None, prefix: str = "", factor: float = 1.0) -> list[Check]:
        """`factor` 2: the result is compared with another rounded evaluation (float64 against float64)."""
        out = [elementwise(prefix + "loss", loss, self.loss, factor * self.loss_bound)]
        if grad_h is not None:
            out.append(elementwise(prefix + "grad_h", grad_h, self.grad_h, factor * self.grad_h_bound))
        if grad_w is not None:
            out.append(elementwise(prefix + "grad_w", grad_w, self.grad_w, factor * self.grad_w_bound))
        return out


def linear_ce(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, scale: float = 1.0,
              u: float = U32, u_gemm: float | None = None) -> LinearCE:
    """Mean CE of (h @ W.T) against y, exactly, and how far any fp32 evaluation of it may be.

    Covers the plain F.cross_entropy(h @ W.T, y) and the chunked kssm_core.model.fused_ce alike, in any
    summation order or chunking (u is fp32's; `u_gemm` the GEMMs' if they run in lower precision: their
    inputs and outputs are rounded to it). `scale` multiplies the loss before backward. Per token t:

    - logits: a dot product of D terms, error E = gamma_(D+1) |h_t| |w_v| (+ u_gemm |l| when rounded);
      the max, and every exp's argument l - max, carry d_t = 2 max_v E_tv, plus u |l - max| for the subtraction;
    - exp within 2u relative; their sum (V positive terms) gamma_V relative; log(norm) then errs by
      that relative error, plus 2u |log norm|;
    - CE_t = max + log(norm) - l_y; the loss sums T of them (gamma_T sum |CE_t|) and divides by T;
    - G = (softmax - onehot) / T: softmax relative error rho_tv (the exp's) + the norm's + 3u;
    - grad_h = G @ W: gamma_V (|G| @ |W|) + |dG| @ |W|; grad_W = G^T @ h: gamma_T (|G|^T @ |h|) + |dG|^T @ |h|
      (T terms in any grouping: the chunks and their accumulation included); one more u for `scale`.
    """
    h64, w64 = h.detach().double(), w.detach().double()
    n_tok, dim = h64.shape
    vocab = w64.shape[0]
    ug = u if u_gemm is None else u_gemm
    in_round = 0.0 if u_gemm is None else 2 * u_gemm  # h and W rounded to the GEMM dtype
    logits = h64 @ w64.t()
    abs_dot = h64.abs() @ w64.abs().t()
    e_logit = (gamma(dim + 1, u) + in_round) * abs_dot + (0.0 if u_gemm is None else ug * logits.abs())
    delta = 2 * e_logit.amax(dim=1, keepdim=True)  # [T, 1]
    peak = logits.amax(dim=1, keepdim=True)
    prob = torch.softmax(logits, dim=1)
    lse = torch.logsumexp(logits, dim=1)
    ce_t = lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)
    rho = delta + u * ((logits - peak).abs() + SIN_COS_EXP_ULPS + 1)  # exp(l - max), relative
    rel_norm = gamma(vocab, u) + (prob * rho).sum(dim=1, keepdim=True)  # the sum, relative
    log_norm = (lse - peak.squeeze(1)).abs()
    d_ce = (delta.squeeze(1) + rel_norm.squeeze(1) + e_logit.gather(1, y.unsqueeze(1)).squeeze(1)
            + u * (SIN_COS_EXP_ULPS * log_norm + 2 * (peak.squeeze(1).abs() + log_norm + ce_t.abs())))
    loss = ce_t.mean()
    loss_bound = (gamma(n_tok, u) * ce_t.abs().sum() + d_ce.sum()) / n_tok + 2 * u * loss.abs()

    grad_logits = prob.clone()
    grad_logits[torch.arange(n_tok), y] -= 1
    grad_logits /= n_tok
    d_g = prob / n_tok * (rho + rel_norm + 3 * u) + u * grad_logits.abs()
    if u_gemm is not None:  # G is rounded to the GEMM dtype before the backward GEMMs
        d_g = d_g + u_gemm * grad_logits.abs()
    g_abs = grad_logits.abs()
    grad_h = scale * (grad_logits @ w64)
    grad_w = scale * (grad_logits.t() @ h64)
    gh_b = (gamma(vocab, u) + in_round / 2) * (g_abs @ w64.abs()) + d_g @ w64.abs()
    gw_b = (gamma(n_tok, u) + in_round / 2) * (g_abs.t() @ h64.abs()) + d_g.t() @ h64.abs()
    if u_gemm is not None:  # the GEMMs' outputs rounded to their dtype (and, for grad_W, each chunk's)
        gh_b = gh_b + ug * (g_abs @ w64.abs())
        gw_b = gw_b + ug * (g_abs.t() @ h64.abs())
    return LinearCE(
        loss=loss, grad_h=grad_h, grad_w=grad_w, loss_bound=loss_bound,
        grad_h_bound=scale * gh_b + u * grad_h.abs(),  # + the multiplication by `scale`
        grad_w_bound=scale * gw_b + u * grad_w.abs(),
    )


# ---- the harmonic readout (kssm_core.model.oscillator.harmonic_means) -----------------------------------

COMPLEX_MUL = 3
"""A complex product of fp32 numbers errs by at most sqrt(2) gamma_2 |a||b| < 3u |a||b| (Higham 3.6)."""


@dataclass
class Readout:
    """Exact (float64) Re Z, Im Z and dL/dtheta of the harmonic readout, with elementwise fp32 bounds."""

    re: torch.Tensor
    im: torch.Tensor
    grad: torch.Tensor | None
    bound: torch.Tensor  # for re and im: [..., H]
    grad_bound: torch.Tensor | None  # [..., N]


def power_terms(n: torch.Tensor | int) -> torch.Tensor | int:
    """Roundings (units of u, relative to |z^n| = 1) of z^n built from z = cos + i sin by products:
    z errs by 2 ulps of cos/sin (3u), and z^(a+b) = z^a z^b adds both errors and one complex product,
    so e(n) <= 3n + COMPLEX_MUL (n - 1) <= 6n, whatever the doubling schedule or the P x Q split."""
    return (SIN_COS_EXP_ULPS + 1 + COMPLEX_MUL) * n


def harmonic_readout(theta: torch.Tensor, n_harm: int, g_re: torch.Tensor | None = None,
                     g_im: torch.Tensor | None = None, u: float = U32) -> Readout:
    """Z_n = mean_k exp(i n theta_k), n = 1..H, exactly (float64 naive form on the same inputs), and the
    most the kernel's fp32 (or, with u = U64, float64) arithmetic can be off, per element:

    - Z_n: each term z_k^n has |.| = 1 and errs by power_terms(n) u; the GEMM sums N products
      (gamma_N + a complex product per term) and the mean divides by N: |dZ_n| <= (6n + 2N + 8) u;
    - dL/dtheta_k = Re sum_n w_n z_k^n, w_n = n (gIm_n + i gRe_n) / N: each term |w_n| (6n + 3) u (the
      power, w_n's own two roundings, the product), and the two GEMM-shaped sums of Q and P terms
      (n = a + P b): 2 (P + Q) u more, all relative to |w_n|: the terms' magnitude sum_n |w_n|.

    It does not depend on |theta|: theta is an exact fp32 input, cos/sin are accurate to 1 ulp at any
    argument, and no n * theta is rounded (the naive fp32 form's error grows with n |theta|).
    """
    from kssm_core.model.oscillator import split_harmonics
    from kssm_core.model.oracle import reference_harmonic_means

    n_osc = theta.shape[-1]
    t64 = theta.detach().double().requires_grad_(g_re is not None or g_im is not None)
    re, im = reference_harmonic_means(t64, n_harm)
    harm = torch.arange(1, n_harm + 1, dtype=torch.float64)
    bound = (power_terms(harm) + 2 * n_osc + 8) * u * torch.ones_like(re)
    grad = grad_bound = None
    if t64.requires_grad:
        gr = torch.zeros_like(re) if g_re is None else g_re.detach().double()
        gi = torch.zeros_like(im) if g_im is None else g_im.detach().double()
        (grad,) = torch.autograd.grad((re * gr).sum() + (im * gi).sum(), t64)
        p, q = split_harmonics(n_harm)
        w_abs = harm * (gr.abs() + gi.abs()) / n_osc  # |w_n| <= n (|gRe_n| + |gIm_n|) / N
        per_row = (w_abs * (power_terms(harm) + 3 + 2 * (p + q))).sum(-1, keepdim=True) * u
        grad_bound = per_row.expand_as(grad)
    return Readout(re.detach(), im.detach(), grad, bound, grad_bound)


# ---- the fused phase step + readout and whole models: rounding counts -----------------------------

JACOBIAN_GAIN = 5
"""Backward through the mean-field step: d theta_j / d theta0_k = delta_jk (1 - K (S sin0_k + C cos0_k))
+ K/N (cos0_j cos0_k + sin0_j sin0_k), whose absolute row sums are at most 1 + K + K <= 5 (K <= 2,
|S sin + C cos| <= 1): an error on dL/dtheta reaches dL/dtheta0 multiplied by at most 5."""


def theta_bound(omega: torch.Tensor, h_mean: torch.Tensor, spread: float = 0.0, xi_max: float = 0.0) -> float:
    """max |theta| of one mean-field step: |omega| + |mean h| + K |S cos - C sin| (<= 2 * 1) + spread |xi|."""
    return float(omega.abs().max() + h_mean.abs().max()) + 2.0 + spread * xi_max


def theta_terms(n_osc: int, theta_max: float) -> float:
    """Absolute error of one mean-field step's theta, in units of u (see phase_terms): 4N + 12 theta_max + 32."""
    return 4 * n_osc + 12 * theta_max + 32


def z1_bound(n_osc: int, theta_max: float, extra_theta: float = 0.0, u: float = U32) -> float:
    """Absolute fp32 error of Z_1 (so of R = |Z_1|, plus its square root's 4 roundings) after the phase
    step: theta's error (sensitivity 1), z's, the N-term mean; `extra_theta` adds error already in the
    step's inputs (units of u, e.g. the D-term mean of h)."""
    return u * (theta_terms(n_osc, theta_max) + extra_theta + power_terms(1) + 2 * n_osc + 8 + 4)


def phase_terms(n_osc: int, n_harm: int, theta_max: float, oracle: bool = False) -> int:
    """Roundings (units of u) that can pile up on one token's outputs and gradients in the fused phase
    step + readout (kssm_core.model.oscillator.phase_readout, forward and backward), relative to the
    magnitude of what they act on. Counted step by step (u; a sum of m terms counts m):

    - theta0 = omega + mean h: |theta|; sin0, cos0: 2 + |theta|; S, C, means over N: N + 2 + |theta| each;
      the drive S cos0 - C sin0 (|.| <= |(S, C)| <= 1): twice that + 3 more; theta = theta0 + K drive - spread xi with
      K <= 2: e_theta = 4N + 12 theta_max + 32 (absolute error of theta, u = 1);
    - Z_n is n-sensitive to theta (|dZ_n/dtheta| <= n): forward H (e_theta + 6) + 2N + 8 (the powers and
      the GEMM, as in harmonic_readout);
    - backward: dL/dtheta errs by H (e_theta + 6) + 2 (P + Q) + 3 relative to its terms, reaches
      dL/dtheta0 through JACOBIAN_GAIN, plus that step's own sums over N (3N) and its inputs' errors
      (S, C, sin0, cos0: 4 (N + 2 + theta_max)); dL/dh_mean and dL/dK sum N terms more.

    The naive oracle (kssm_core.model.oracle, `oracle=True`) rounds n * theta before cos/sin: H theta_max more.
    """
    from kssm_core.model.oscillator import split_harmonics

    p, q = split_harmonics(n_harm)
    e_theta = theta_terms(n_osc, theta_max)
    sensitivity = n_harm * (e_theta + 6 + (theta_max if oracle else 0.0))
    forward = sensitivity + 2 * n_osc + 8
    backward = JACOBIAN_GAIN * (sensitivity + 2 * (p + q) + 3) + 3 * n_osc + 4 * (n_osc + 2 + theta_max) + n_osc
    return math.ceil(forward + backward)


def dense_terms(d_model: int) -> int:
    """One block's other arithmetic per token, forward and backward (each a sum of at most 4D terms plus
    a few roundings): LayerNorm x 2 (mean, variance, normalise: 2D + 8 each), to_params (D), the readout
    (3H <= D), the FFN's two GEMMs (D and 4D) and GELU; backward the same sums again (transposed)."""
    return 2 * (2 * (2 * d_model + 8) + d_model + d_model + 5 * d_model + 16)


def model_terms(cfg, theta_max: float, n_tok: int) -> int:
    """Roundings on one token's path through a KSSM, fast against the oracle path (both fp32): both
    paths' phase steps in every layer, both heads + cross-entropies (D-term logits, V-term softmax sums,
    as linear_ce counts them), and every block's dense arithmetic twice (the paths evaluate it at
    slightly different points); gradients summed over tokens add `n_tok` (the caller's sum)."""
    per_layer = (phase_terms(cfg.n_oscillators, cfg.n_harmonics, theta_max)
                 + phase_terms(cfg.n_oscillators, cfg.n_harmonics, theta_max, oracle=True)
                 + 2 * dense_terms(cfg.d_model))
    head = 2 * (2 * (cfg.d_model + 1) + cfg.vocab_size + 8)
    return cfg.n_layers * per_layer + head + n_tok


def linearised(coupled: torch.Tensor, x: torch.Tensor, token_dims: int) -> torch.Tensor:
    """Per-token contributions of a scalar that couples tokens (a mean over them, e.g. the bank's reg):
    (d coupled / d x) . x per token, with the derivative held constant, so d/dparams of their sum is
    d coupled / d params. x: [*tokens, ...] with `token_dims` leading token dimensions."""
    (g,) = torch.autograd.grad(coupled, x, retain_graph=True)
    return (g.detach() * x).reshape(*x.shape[:token_dims], -1).sum(-1)


@dataclass
class ModelSplit:
    """A float64 oracle run of KSSM.loss, split per token (see model_token_terms)."""

    total: torch.Tensor  # the loss
    terms: torch.Tensor  # [T] per-token contributions: their gradients sum to the loss's
    value_scale: float  # sum_t |CE_t| / T + lambda |reg terms|: the loss's summands
    ce_scale: float  # sum_t |CE_t| / T
    R_scale: torch.Tensor  # [L, B, S] |R| per token
    u_scale: torch.Tensor  # [L, B, S] |u| per token
    grad_scale: dict[str, torch.Tensor]  # parameter name -> sum_t |token t's contribution|
    theta_max: float  # max |theta| over every bank (theta_bound)


def reg_magnitude(cfg, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """|terms| of a bank's reg = lambda1 / (mean|delta| + eps) + lambda2 (-log mean u), from its p = to_params(h)
    and its (clamped) u: two terms of one sign each inside (means of |delta| and of u > 0)."""
    _a, b, c, _d, _e, f, g, *_ = p.detach().unbind(-1)
    return (cfg.lambda1 / ((b * g - c * f).abs().mean() + 1e-5)
            + cfg.lambda2 * torch.log(u.detach().mean().clamp(min=1e-5)).abs())


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 deep copy (the banks' `last` telemetry, non-leaf tensors, is left out of the copy)."""
    import copy

    kept = {m: m.last for m in module.modules() if hasattr(m, "last")}
    for m in kept:
        m.last = None
    try:
        return copy.deepcopy(module).double()
    finally:
        for m, last in kept.items():
            m.last = last


def model_token_terms(model, idx: torch.Tensor, targets: torch.Tensor, lambda_reg: float, seed: int) -> ModelSplit:
    """Run a float64 copy of `model` on the spec's plain path (use_reference: naive banks, full-logits
    CE) after torch.manual_seed(seed), drawing the noise the fp32 path draws, and split the loss
    CE + lambda mean_l reg_l into per-token contributions: CE_t / T, plus each bank's reg (a function of
    means over tokens of that bank's p = to_params(h) alone) linearised at p (`linearised`). A KSSM mixes no
    information across positions otherwise, so token t's contribution to a parameter's gradient is
    d term_t / d param; `token_abs_sums` adds up their magnitudes.
    """
    from kssm_core.model.oracle import use_reference

    m64 = float64_copy(model)
    banks = m64.banks
    params, inputs = [], []
    hooks = [b.to_params.register_forward_hook(lambda _m, _a, out: params.append(out)) for b in banks]
    hooks += [b.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for b in banks]
    torch.manual_seed(seed)
    try:
        with use_reference(m64), fp32_noise() as draws:
            feats = m64._features(idx)
    finally:
        for hk in hooks:
            hk.remove()
    logits = m64.output_head(feats)
    ce_t = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    n_tok = ce_t.numel()
    regs = torch.stack([b.last.reg for b in banks])
    total = ce_t.mean() + lambda_reg * regs.mean()
    terms = ce_t / n_tok
    for bank, p in zip(banks, params):  # reg_l is a function of p_l alone (its deltas and u's)
        terms = terms + linearised(lambda_reg * bank.last.reg / len(banks), p, token_dims=2).reshape(-1)
    names = [n for n, _ in m64.named_parameters()]
    leaves = [p for _, p in m64.named_parameters()]
    full = torch.autograd.grad(total, leaves, retain_graph=True, allow_unused=True)
    sums = token_abs_sums(terms, leaves, full)
    reg_abs = [reg_magnitude(bank.cfg, p, bank.last.u) for bank, p in zip(banks, params)]
    theta = max(theta_bound(b.omega_0.detach(), h.detach().mean(-1), float(b.delta_param.detach().abs()) + 1e-5
                            if b.noise else 0.0, draws.max_abs) for b, h in zip(banks, inputs))
    return ModelSplit(
        total=total.detach(), terms=terms.detach(),
        value_scale=float(ce_t.detach().abs().mean() + lambda_reg * torch.stack(reg_abs).mean()),
        ce_scale=float(ce_t.detach().abs().mean()),
        R_scale=torch.stack([b.last.R.detach().abs() for b in banks]),
        u_scale=torch.stack([b.last.u.detach().abs() for b in banks]),
        grad_scale={n: s for n, s in zip(names, sums) if s is not None},
        theta_max=theta,
    )


def bank_terms(cfg, theta_max: float) -> int:
    """Roundings on one token's path through one bank, fast against oracle (both in the same precision):
    both phase steps, and the bank's dense arithmetic (to_params: D terms, the readout: 3H, magnitudes)
    in each path, forward and backward."""
    return (phase_terms(cfg.n_oscillators, cfg.n_harmonics, theta_max)
            + phase_terms(cfg.n_oscillators, cfg.n_harmonics, theta_max, oracle=True)
            + 4 * (cfg.d_model + 3 * cfg.n_harmonics + 8))


def kssm_loss_checks(model, idx: torch.Tensor, targets: torch.Tensor, lambda_reg: float = 0.01, seed: int = 13,
                     logits: bool = False) -> list[Check]:
    """KSSM.loss, production path against use_reference (naive banks, full-logits CE), both fp32 and from
    the same RNG state: loss, CE, R, u and every parameter's gradient (and, with `logits`, the logits
    read after the loss), each within the rounding bound of the two paths (model_terms) times the
    magnitudes of a float64 oracle run split per token (model_token_terms)."""
    from kssm_core.model.oracle import use_reference

    def run(ref: bool):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        with use_reference(model) if ref else contextlib.nullcontext():
            total, ce, out = model.loss(idx, targets, lambda_reg=lambda_reg)
        total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return total.detach(), ce.detach(), out, grads

    t_ref, ce_ref, out_ref, g_ref = run(True)
    t_fast, ce_fast, out_fast, g_fast = run(False)
    split = model_token_terms(model, idx, targets, lambda_reg, seed)
    per_token = model_terms(model.cfg, split.theta_max, 0)
    summed = model_terms(model.cfg, split.theta_max, idx.numel() * model.cfg.n_oscillators)  # <= T*N terms
    checks = [
        normwise("loss", t_fast, t_ref, torch.tensor(split.value_scale), summed),
        normwise("ce", ce_fast, ce_ref, torch.tensor(split.ce_scale), summed),
        normwise("R", out_fast.R, out_ref.R, split.R_scale.mean(), summed),
        normwise("u_val", out_fast.u_val, out_ref.u_val, split.u_scale.mean(), summed),
        normwise("R_per_layer", out_fast.R_per_layer, out_ref.R_per_layer, split.R_scale, per_token),
    ]
    assert g_ref.keys() == g_fast.keys() == split.grad_scale.keys(), "the paths give different parameters a gradient"
    checks += [normwise("grad " + n, g_fast[n], g_ref[n], split.grad_scale[n], summed) for n in g_ref]
    if logits:
        checks.append(normwise("logits", out_fast.logits, out_ref.logits, out_ref.logits.abs(), per_token))
    return checks
