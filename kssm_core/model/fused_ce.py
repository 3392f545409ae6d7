"""Fused, chunked "linear + cross-entropy": mean CE of (h @ W^T) against targets, never holding [T, V].

The plain form (`F.cross_entropy(h @ W.T, y)`) materialises the logits, their log-softmax (kept for
backward) and, in backward, a zero-filled [T, V] gradient, each walked in a separate pass over memory:
with the presets' 4096-16384-token vocabularies that was over half of a tiny CPU training step, and
256 MB per tensor at the medium size. `linear_cross_entropy` walks the tokens in chunks instead.

The trick: d(mean CE)/d(logits) = (softmax - onehot) / T is known as soon as a chunk's log-sum-exp is,
so when gradients are wanted the forward pass computes them right away, chunk by chunk, while the
chunk's logits are still in cache: softmax in place, subtract the one-hot, then
grad_h[chunk] = G @ W and grad_W += G^T @ h[chunk]. Backward only scales those two stored gradients by
the incoming scalar gradient. The GEMM flops are the same as autograd's; what goes is the [T, V]
traffic (log-probs, the zero fill, the separate softmax-backward pass) and its memory.

On CPU in fp32 the three GEMMs run through oneDNN where the torch build has it (see `_onednn_nt`):
on this project's AMD CPU, MKL's sgemm runs them 2.4x slower. Precision follows the unfused path:
under autocast the matmuls run in the autocast dtype (as `nn.Linear` would) while log-sum-exp, the
loss and the logit gradient are fp32; fp64 stays fp64.

The environment variable KSSM_FUSED_GEMM, read when this module is imported, picks the fp32 CPU GEMMs:
`auto` (the default: oneDNN if the probe below accepts it, else torch.mm), `mkl` (always torch.mm,
i.e. the BLAS torch was built with, MKL on x86; the fallback path, e.g. to test it on a machine that
has oneDNN) or `onednn` (oneDNN, and an error at the first fp32 CPU call if the probe rejects it).
Any other value is refused at import.
"""

from __future__ import annotations

import functools
import os

import torch

GEMM_ENV = "KSSM_FUSED_GEMM"
GEMM_CHOICES = ("auto", "mkl", "onednn")


def _gemm_choice() -> str:
    value = os.environ.get(GEMM_ENV, "").strip().lower() or "auto"
    if value not in GEMM_CHOICES:
        raise ValueError(f"{GEMM_ENV}={os.environ[GEMM_ENV]!r}: expected one of {', '.join(GEMM_CHOICES)}")
    return value


GEMM = _gemm_choice()
"""KSSM_FUSED_GEMM as read at import: auto, mkl or onednn."""

CHUNK_CPU = 256
"""Tokens per chunk on CPU: chosen by benchmarks/fused_ce_chunks.py (see docs/performance.md)."""
CHUNK_CUDA = 4096
"""On CUDA fewer, larger launches; 4096 x 16384 fp32 logits are 256 MB at most."""


def default_chunk(device: torch.device) -> int:
    return CHUNK_CUDA if device.type == "cuda" else CHUNK_CPU


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` ([T, D] x [V, D]) against `targets` ([T], class indices).

    Same value and gradients as `F.cross_entropy(h @ weight.T, targets)` (upcast to fp32 when the
    matmul runs in a low-precision autocast dtype). Without grad mode, or when neither `h` nor
    `weight` requires grad, no gradient is computed.
    """
    if h.dim() != 2 or weight.dim() != 2 or h.size(1) != weight.size(1):
        raise ValueError(f"expected h [T, D] and weight [V, D], got {tuple(h.shape)} and {tuple(weight.shape)}")
    if targets.shape != h.shape[:1]:
        raise ValueError(f"expected targets of shape [{h.size(0)}], got {tuple(targets.shape)}")
    chunk = chunk_size or default_chunk(h.device)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, chunk)
    return _chunked(h, weight, targets, chunk, want_h=False, want_w=False)[0]


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if torch.is_autocast_enabled(dev) and h.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(dev)
    return h.dtype


def _mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T with torch's BLAS (MKL on x86 CPUs)."""
    return a @ b.t()


@functools.lru_cache(maxsize=1)
def _onednn_nt():
    """a @ b.T through oneDNN's fp32 linear, or None where this torch build lacks it.

    Measured on the AMD EPYC this project benchmarks on: 2.4x faster than MKL's sgemm for the head's
    shapes (MKL takes its AVX2 path on non-Intel CPUs; oneDNN uses AVX-512), still exact fp32 (errors
    ~4e-7 relative, like MKL's). `torch.ops.mkldnn._linear_pointwise` is the op Inductor emits for
    CPU linears; it is private, so it is probed once against torch.mm and skipped if absent or wrong.
    """
    nt = _probe_onednn()
    if nt is None and GEMM == "onednn":
        raise RuntimeError(f"{GEMM_ENV}=onednn, but this torch build's oneDNN linear is missing or failed the probe")
    return nt


def _probe_onednn():
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        # fixed values (no draw from the global RNG), transposed views as the chunk loop passes them
        a = torch.linspace(-1.0, 1.0, 35).reshape(7, 5).t()
        b = torch.linspace(-2.0, 0.5, 21).reshape(7, 3).t()
        ok = torch.allclose(op(a, b, None, "none", [], ""), a @ b.t(), rtol=1e-5, atol=1e-6)
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    return (lambda x, y: op(x, y, None, "none", [], "")) if ok else None


ONEDNN = GEMM != "mkl"
"""Use oneDNN for the fp32 CPU GEMMs when available: False under KSSM_FUSED_GEMM=mkl (tests and
benchmarks also switch it off to compare)."""


def _chunked(h, weight, targets, chunk: int, want_h: bool, want_w: bool):
    """(mean CE, grad_h or None, grad_W or None) of one pass over the tokens, `chunk` rows at a time."""
    n_tok = h.size(0)
    cdtype = _compute_dtype(h)
    onednn = _onednn_nt() if (ONEDNN and h.device.type == "cpu" and cdtype == torch.float32) else None
    nt = onednn or _mm_nt  # nt(a, b) = a @ b.T
    with torch.autocast(device_type=h.device.type, enabled=False):  # casts are explicit below
        w = weight.to(cdtype)  # one cast per call (autocast would cast once per op)
        w_t = w.t().contiguous() if (onednn and want_h) else w.t()  # grad_h = g @ w = nt(g, w.t())
        hh = h.to(cdtype)
        loss_dtype = torch.promote_types(cdtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays
        total = torch.zeros((), dtype=loss_dtype, device=h.device)
        grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device) if want_h else None
        grad_w_t = None  # accumulated as [D, V]: hc.T @ g is the GEMM layout oneDNN runs fastest
        for start in range(0, n_tok, chunk):
            hc, tc = hh[start:start + chunk], targets[start:start + chunk]
            logits = nt(hc, w)
            if logits.dtype != loss_dtype:
                logits = logits.to(loss_dtype)
            target_logit = logits.gather(1, tc.unsqueeze(1)).squeeze(1)
            # log-sum-exp by hand, in place: exp(logits - max) is then reused as the softmax numerator
            # (torch.logsumexp would allocate its own shifted copy and the softmax would take a second exp)
            peak = logits.amax(dim=1, keepdim=True)
            expd = logits.sub_(peak).exp_()
            norm = expd.sum(dim=1)
            total += (peak.squeeze(1) + norm.log() - target_logit).sum()
            if not (want_h or want_w):
                continue
            # the logits' buffer becomes the logit gradient: (softmax - onehot) / T
            g = expd.mul_(norm.mul(n_tok).reciprocal_().unsqueeze(1))
            g.scatter_add_(1, tc.unsqueeze(1), torch.full_like(norm, -1.0 / n_tok).unsqueeze(1))
            g = g.to(cdtype)
            if want_h:
                grad_h[start:start + chunk] = nt(g, w_t)
            if want_w:
                part = nt(hc.t(), g.t())  # hc.T @ g, [D, V]
                if grad_w_t is None:
                    grad_w_t = part.to(weight.dtype)
                else:
                    grad_w_t += part  # a low-precision product accumulates in the weight's dtype
        grad_w = None if grad_w_t is None else grad_w_t.t().contiguous()
        return total / n_tok, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, ctx.grad_h, ctx.grad_w = _chunked(h, weight, targets, chunk, want_h, want_w)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        # out of place: the stored gradients stay valid should backward run again (retain_graph)
        grad_h = None if ctx.grad_h is None else ctx.grad_h * grad_out.to(ctx.grad_h.dtype)
        grad_w = None if ctx.grad_w is None else ctx.grad_w * grad_out.to(ctx.grad_w.dtype)
        return grad_h, grad_w, None, None
