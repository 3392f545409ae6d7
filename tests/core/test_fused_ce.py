"""The fused, chunked linear + cross-entropy (kssm_core.model.fused_ce) agrees with F.cross_entropy.

Agreement is norm-wise relative error <= 1e-5 in fp32 for the loss and the gradients w.r.t. the hidden
states and the weight, at every preset's (D, V) with the token count scaled down; in float64 it is
~1e-14 (the same function, differently rounded). KSSM.loss, which uses it, is compared end to end with
`use_reference`, whose loss is the plain full-logits cross-entropy.
"""

from __future__ import annotations

import contextlib
import pytest
import torch
import torch.nn.functional as F

from kssm_core.model import fused_ce
from kssm_core.config import PRESETS, ModelConfig
from kssm_core.model.fused_ce import linear_cross_entropy
from kssm_core.model.kssm import KSSM
from kssm_core.model.oracle import use_reference

TOL = 1e-5
TOL64 = 1e-12


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm().item()
    return (a - b).norm().item() / denom if denom > 0 else (a - b).norm().item()


def make(n_tok: int, dim: int, vocab: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_tok, dim, generator=g, dtype=dtype)
    # weights scaled so the softmax is far from uniform and far from one-hot: every term matters
    w = torch.randn(vocab, dim, generator=g, dtype=dtype) * (2.0 / dim**0.5)
    y = torch.randint(0, vocab, (n_tok,), generator=g)
    return h, w, y


def both(h, w, y, chunk: int | None = None, scale: float = 1.7):
    """(loss, grad_h, grad_w) of the plain and the fused form; the loss is scaled before backward
    so the incoming gradient is not 1."""
    results = []
    for fused in (False, True):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss = linear_cross_entropy(hh, ww, y, chunk_size=chunk) if fused else F.cross_entropy(hh @ ww.t(), y)
        (scale * loss).backward()
        results.append((loss.detach(), hh.grad, ww.grad))
    return results


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_cross_entropy_at_preset_shapes(preset, dtype):
    p = PRESETS[preset]
    n_tok = 300  # the presets' batch x context scaled down; not a multiple of the chunk below
    h, w, y = make(n_tok, p.d_model, p.vocab_size, dtype)
    (l0, gh0, gw0), (l1, gh1, gw1) = both(h, w, y, chunk=128)
    tol = TOL if dtype == torch.float32 else TOL64
    assert l1.dtype == dtype
    assert rel(l1, l0) <= tol
    assert rel(gh1, gh0) <= tol
    assert rel(gw1, gw0) <= tol


@pytest.mark.parametrize("chunk", [1, 7, 64, 99, 100, 101, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # fp32 takes the oneDNN GEMMs
def test_chunk_boundaries(chunk, dtype):
    h, w, y = make(100, 16, 37, dtype, seed=chunk)
    (l0, gh0, gw0), (l1, gh1, gw1) = both(h, w, y, chunk=chunk)
    tol = TOL if dtype == torch.float32 else TOL64
    assert rel(l1, l0) <= tol and rel(gh1, gh0) <= tol and rel(gw1, gw0) <= tol


def test_default_chunk_is_used_and_agrees():
    h, w, y = make(fused_ce.CHUNK_CPU + 37, 32, 50)  # two chunks at the default size
    (l0, gh0, gw0), (l1, gh1, gw1) = both(h, w, y)
    assert rel(l1, l0) <= TOL and rel(gh1, gh0) <= TOL and rel(gw1, gw0) <= TOL


def test_the_blas_fallback_agrees_too(monkeypatch):
    """fp32 on CPU runs its GEMMs in oneDNN where available; the torch.mm path is the fallback."""
    if torch.backends.mkldnn.is_available():
        assert fused_ce._onednn_nt() is not None  # the fast path is really taken in the tests above
    monkeypatch.setattr(fused_ce, "ONEDNN", False)
    h, w, y = make(300, 64, 500)
    (l0, gh0, gw0), (l1, gh1, gw1) = both(h, w, y, chunk=128)
    assert rel(l1, l0) <= TOL and rel(gh1, gh0) <= TOL and rel(gw1, gw0) <= TOL


def test_only_the_inputs_that_need_grad_get_one():
    h, w, y = make(50, 16, 30)
    ref = F.cross_entropy(h.clone().requires_grad_() @ w.t(), y)
    hh = h.clone().requires_grad_()
    linear_cross_entropy(hh, w, y, chunk_size=16).backward()
    hr = h.clone().requires_grad_()
    F.cross_entropy(hr @ w.t(), y).backward()
    assert w.grad is None and rel(hh.grad, hr.grad) <= TOL

    ww, wr = w.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy(h, ww, y, chunk_size=16)
    loss.backward()
    F.cross_entropy(h @ wr.t(), y).backward()
    assert rel(ww.grad, wr.grad) <= TOL and rel(loss, ref) <= TOL


def test_no_grad_computes_no_gradient(monkeypatch):
    h, w, y = make(70, 16, 30)
    calls = []
    real = fused_ce._chunked

    def spy(*args, **kw):
        calls.append((kw["want_h"], kw["want_w"]))
        return real(*args, **kw)

    monkeypatch.setattr(fused_ce, "_chunked", spy)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.no_grad():
        loss = linear_cross_entropy(hh, ww, y, chunk_size=16)
    assert loss.grad_fn is None and not loss.requires_grad
    assert calls == [(False, False)]
    assert rel(loss, F.cross_entropy(h @ w.t(), y)) <= TOL
    linear_cross_entropy(h, w, y)  # grad mode, but nothing requires grad
    assert calls[-1] == (False, False)


def test_backward_twice_with_retain_graph_accumulates():
    h, w, y = make(40, 8, 20, torch.float64)
    hh = h.clone().requires_grad_()
    loss = linear_cross_entropy(hh, w, y, chunk_size=16)
    loss.backward(retain_graph=True)
    once = hh.grad.clone()
    loss.backward()
    assert rel(hh.grad, 2 * once) <= TOL64


def test_tied_weight_gradient_accumulates_with_the_embedding():
    """W is also an embedding table upstream: its gradient is the sum of both uses, as autograd's."""
    torch.manual_seed(5)
    vocab, dim = 41, 12
    emb = torch.nn.Embedding(vocab, dim).double()
    mix = torch.randn(dim, dim, dtype=torch.float64)
    idx = torch.randint(0, vocab, (3, 23))
    tgt = torch.randint(0, vocab, (3 * 23,))

    def grads(fused: bool):
        emb.zero_grad(set_to_none=True)
        h = torch.tanh(emb(idx) @ mix).reshape(-1, dim)
        loss = linear_cross_entropy(h, emb.weight, tgt, chunk_size=10) if fused else F.cross_entropy(h @ emb.weight.t(), tgt)
        loss.backward()
        return loss.detach(), emb.weight.grad.clone()

    (l0, g0), (l1, g1) = grads(False), grads(True)
    assert rel(l1, l0) <= TOL64 and rel(g1, g0) <= TOL64
    assert g0[idx.unique()].abs().sum() > 0  # the embedding's own use contributes


def test_bf16_autocast_keeps_the_loss_in_fp32():
    h, w, y = make(90, 32, 64)
    outs = []
    for fused in (False, True):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hh, ww, y, chunk_size=32) if fused else F.cross_entropy((hh @ ww.t()).float(), y)
        loss.backward()
        outs.append((loss.detach(), hh.grad, ww.grad))
    (l0, gh0, gw0), (l1, gh1, gw1) = outs
    assert l1.dtype == torch.float32 and gh1.dtype == torch.float32 and gw1.dtype == torch.float32
    # both round the matmuls to bf16 (8-bit mantissa); the fp32 softmax makes them agree far closer
    assert rel(l1, l0) <= 1e-3 and rel(gh1, gh0) <= 2e-2 and rel(gw1, gw0) <= 2e-2


def test_bad_shapes_are_refused():
    h, w, y = make(10, 8, 12)
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(h, w[:, :4], y)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(h, w, y[:5])
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, y, chunk_size=-1)


# ---- KSSM.loss: fused against use_reference (full logits + F.cross_entropy) ----------------------


def small_model(seed: int = 21) -> KSSM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_oscillators=16, n_harmonics=4, max_seq_len=40)
    model = KSSM(cfg)
    for bank in model.banks:
        bank.noise = False
    return model


def test_kssm_loss_and_gradients_match_the_reference_path():
    model = small_model()
    idx = torch.randint(0, 97, (3, 37))
    tgt = torch.randint(0, 97, (3, 37))

    def run(ref: bool):
        model.zero_grad(set_to_none=True)
        with use_reference(model) if ref else contextlib.nullcontext():
            total, ce, out = model.loss(idx, tgt, lambda_reg=0.05)
        total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return total.detach(), ce.detach(), out, grads  # (delta_param has none: noise is off)

    t0, c0, out0, g0 = run(True)
    t1, c1, out1, g1 = run(False)
    assert rel(t1, t0) <= TOL and rel(c1, c0) <= TOL
    assert rel(out1.reg, out0.reg) <= TOL and rel(out1.R, out0.R) <= TOL
    assert g0.keys() == g1.keys()
    for name in g0:
        assert rel(g1[name], g0[name]) <= TOL, name
    assert "embed.weight" in g1 and g1["embed.weight"].abs().sum() > 0  # the tied head + embedding
    # logits are not built by the fused loss, but reading them still gives forward()'s
    assert rel(out1.logits, out0.logits) <= TOL and out1.logits.shape == (3, 37, 97)


@torch.no_grad()
def test_kssm_loss_without_grad_matches_the_reference_path():
    model = small_model(seed=4)
    idx = torch.randint(0, 97, (2, 33))
    tgt = torch.randint(0, 97, (2, 33))
    total, ce, out = model.loss(idx, tgt, lambda_reg=0.2)
    with use_reference(model):
        total0, ce0, out0 = model.loss(idx, tgt, lambda_reg=0.2)
    assert abs(float(ce) - float(ce0)) <= 1e-6 * abs(float(ce0))
    assert abs(float(total) - float(total0)) <= 1e-6 * abs(float(total0))
    assert torch.equal(out.logits, model(idx).logits)


def test_use_reference_swaps_the_loss_and_restores_it():
    model = small_model()
    with use_reference(model):
        assert "loss" in vars(model)
    assert "loss" not in vars(model) and model.loss.__func__ is KSSM.loss


def test_loss_matches_the_plain_loss_along_a_training_run():
    """At every step of a short AdamW run (noise on) the fused loss equals the plain one on the same
    weights. (Two whole trajectories are not compared: any 1e-7 rounding change, even a perturbation
    of the initial weights, grows to ~1e-4 within 20 steps, for the plain loss as for the fused.)"""
    from kssm_core.model.oracle import reference_loss

    idx = torch.randint(0, 97, (4, 39), generator=torch.Generator().manual_seed(8))
    x, y = idx[:, :-1], idx[:, 1:]
    model = small_model(seed=9)
    for bank in model.banks:
        bank.noise = True
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        with torch.no_grad():
            torch.manual_seed(step)  # the same noise draws for both
            plain, plain_ce, _ = reference_loss(model, x, y, 0.01)
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(step)
        total, ce, _ = model.loss(x, y, 0.01)
        total.backward()
        opt.step()
        assert abs(total.item() - plain.item()) <= 1e-6 * abs(plain.item())
        assert abs(ce.item() - plain_ce.item()) <= 1e-6 * abs(plain_ce.item())
        losses.append(total.item())
    assert losses[-1] < losses[0]  # it trains
