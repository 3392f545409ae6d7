"""The fused, chunked linear + cross-entropy (kssm_core.model.fused_ce) agrees with the exact cross-entropy.

fp32 results (the fused form, with oneDNN or the MKL fallback GEMMs, and the plain F.cross_entropy
alike) are compared elementwise with a float64 evaluation on the same inputs, within the worst-case
rounding bound of the arithmetic (tests/core/numerics.py, `linear_ce`: D-term logits, V-term softmax
sums, T-term gradient sums, in any order or chunking), at every preset's (D, V) with the token count
scaled down; float64 runs within the same bound at u = 2**-53. KSSM.loss, which uses it, is compared
end to end with `use_reference`, whose loss is the plain full-logits cross-entropy. Deliberately broken
variants of the chunk loop (a wrong sign, a missing term, overlapping chunks) must fail the same checks.
"""

from __future__ import annotations

import importlib
import inspect
import os
import textwrap

import numerics as nm
import pytest
import torch
import torch.nn.functional as F

from kssm_core.model import fused_ce
from kssm_core.config import PRESETS, ModelConfig
from kssm_core.model.fused_ce import linear_cross_entropy
from kssm_core.model.kssm import KSSM
from kssm_core.model.oracle import use_reference


def make(n_tok: int, dim: int, vocab: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_tok, dim, generator=g, dtype=dtype)
    # weights scaled so the softmax is far from uniform and far from one-hot: every term matters
    w = torch.randn(vocab, dim, generator=g, dtype=dtype) * (2.0 / dim**0.5)
    y = torch.randint(0, vocab, (n_tok,), generator=g)
    return h, w, y


def run(h, w, y, fused: bool, chunk: int | None = None, scale: float = 1.7):
    """(loss, grad_h, grad_w) of the plain or the fused form; the loss is scaled before backward
    so the incoming gradient is not 1."""
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy(hh, ww, y, chunk_size=chunk) if fused else F.cross_entropy(hh @ ww.t(), y)
    (scale * loss).backward()
    return loss.detach(), hh.grad, ww.grad


def checks(h, w, y, chunk: int | None = None, scale: float = 1.7) -> list[nm.Check]:
    """Both forms against the exact loss and gradients, each within the rounding bound of its dtype."""
    u = nm.unit_roundoff(h.dtype)
    exact = nm.linear_ce(h, w, y, scale=scale, u=u)
    # in float64 the "exact" values are float64 results too: the bound of both sides
    factor = 2.0 if h.dtype == torch.float64 else 1.0
    out = []
    for fused in (True, False):
        out += exact.checks(*run(h, w, y, fused, chunk, scale), prefix="fused " if fused else "plain ", factor=factor)
    return out


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_cross_entropy_at_preset_shapes(preset, dtype):
    p = PRESETS[preset]
    n_tok = 300  # the presets' batch x context scaled down; not a multiple of the chunk below
    h, w, y = make(n_tok, p.d_model, p.vocab_size, dtype)
    assert linear_cross_entropy(h, w, y, chunk_size=128).dtype == dtype
    nm.assert_within(checks(h, w, y, chunk=128))


@pytest.mark.parametrize("chunk", [1, 7, 64, 99, 100, 101, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # fp32 takes the oneDNN GEMMs (KSSM_FUSED_GEMM)
def test_chunk_boundaries(chunk, dtype):
    h, w, y = make(100, 16, 37, dtype, seed=chunk)
    nm.assert_within(checks(h, w, y, chunk=chunk))


def test_default_chunk_is_used_and_agrees():
    h, w, y = make(fused_ce.CHUNK_CPU + 37, 32, 50)  # two chunks at the default size
    nm.assert_within(checks(h, w, y))


def test_the_blas_fallback_agrees_too(monkeypatch):
    """fp32 on CPU runs its GEMMs in oneDNN where available; the torch.mm path is the fallback."""
    if torch.backends.mkldnn.is_available() and fused_ce.GEMM != "mkl":
        assert fused_ce._onednn_nt() is not None  # the fast path is really taken in the tests above
    monkeypatch.setattr(fused_ce, "ONEDNN", False)
    h, w, y = make(300, 64, 500)
    nm.assert_within(checks(h, w, y, chunk=128))


def reload_fused_ce(monkeypatch, value: str | None):
    """Re-import kssm_core.model.fused_ce with KSSM_FUSED_GEMM=value (None: unset); module state as at import."""
    if value is None:
        monkeypatch.delenv(fused_ce.GEMM_ENV, raising=False)
    else:
        monkeypatch.setenv(fused_ce.GEMM_ENV, value)
    return importlib.reload(fused_ce)


@pytest.fixture
def restore_fused_ce():
    """Whatever a test does to the module, it is re-imported under the environment the session started with."""
    before = os.environ.get(fused_ce.GEMM_ENV)
    yield
    if before is None:
        os.environ.pop(fused_ce.GEMM_ENV, None)
    else:
        os.environ[fused_ce.GEMM_ENV] = before
    importlib.reload(fused_ce)


@pytest.mark.parametrize("value", [None, "auto", "mkl", " MKL ", "onednn"])
def test_gemm_choice_follows_the_environment(value, monkeypatch, restore_fused_ce):
    """KSSM_FUSED_GEMM picks the fp32 CPU GEMMs at import: mkl always takes torch.mm, auto and onednn
    take oneDNN where the probe accepts it; either way the results stay within the bound."""
    module = reload_fused_ce(monkeypatch, value)
    want = "auto" if value is None else value.strip().lower()
    assert module.GEMM == want and module.ONEDNN == (want != "mkl")
    onednn = torch.backends.mkldnn.is_available() and module._probe_onednn() is not None
    if want == "onednn" and not onednn:  # a build without oneDNN: asked for, so refused loudly
        with pytest.raises(RuntimeError, match="KSSM_FUSED_GEMM=onednn"):
            linear_cross_entropy(*make(10, 8, 12))
        return
    calls = []
    real = module._mm_nt
    monkeypatch.setattr(module, "_mm_nt", lambda a, b: calls.append(1) or real(a, b))
    h, w, y = make(70, 16, 30)
    nm.assert_within(checks(h, w, y, chunk=32))
    assert bool(calls) == (want == "mkl" or not onednn), "the GEMM path taken is not the one asked for"


def test_bad_gemm_choice_is_refused(monkeypatch, restore_fused_ce):
    with pytest.raises(ValueError, match="KSSM_FUSED_GEMM='blas'"):
        reload_fused_ce(monkeypatch, "blas")


def test_onednn_demanded_but_missing_fails_loudly(monkeypatch, restore_fused_ce):
    module = reload_fused_ce(monkeypatch, "onednn")
    monkeypatch.setattr(module, "_probe_onednn", lambda: None)  # as on a build without oneDNN
    h, w, y = make(10, 8, 12)
    with pytest.raises(RuntimeError, match="KSSM_FUSED_GEMM=onednn"):
        linear_cross_entropy(h, w, y)


def test_only_the_inputs_that_need_grad_get_one():
    h, w, y = make(50, 16, 30)
    exact = nm.linear_ce(h, w, y)
    hh = h.clone().requires_grad_()
    linear_cross_entropy(hh, w, y, chunk_size=16).backward()
    assert w.grad is None
    nm.assert_within([nm.elementwise("grad_h", hh.grad, exact.grad_h, exact.grad_h_bound)])

    ww = w.clone().requires_grad_()
    loss = linear_cross_entropy(h, ww, y, chunk_size=16)
    loss.backward()
    nm.assert_within(exact.checks(loss, None, ww.grad))


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
    nm.assert_within(nm.linear_ce(h, w, y).checks(loss))
    linear_cross_entropy(h, w, y)  # grad mode, but nothing requires grad
    assert calls[-1] == (False, False)


def test_backward_twice_with_retain_graph_accumulates():
    h, w, y = make(40, 8, 20, torch.float64)
    hh = h.clone().requires_grad_()
    loss = linear_cross_entropy(hh, w, y, chunk_size=16)
    loss.backward(retain_graph=True)
    once = hh.grad.clone()
    loss.backward()
    assert torch.equal(hh.grad, 2 * once)  # the same stored gradient added to itself: x + x = 2x exactly


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
        return loss.detach(), emb.weight.grad.clone(), h.detach()

    (l0, g0, h), (l1, g1, _) = grads(False), grads(True)
    exact = nm.linear_ce(h, emb.weight, tgt, u=nm.U64)
    # the embedding's share: grad_h's error through tanh' and mix (a D-term sum: gamma_D more), added
    # into the rows the tokens index; both sides are float64 results, so twice the bound
    through = ((exact.grad_h_bound * (1 - h**2)) @ mix.abs().t()) * (1 + nm.gamma(dim + 2, nm.U64))
    emb_bound = exact.grad_w_bound + torch.zeros_like(g0).index_add_(0, idx.reshape(-1), through)
    nm.assert_within([nm.elementwise("loss", l1, l0, 2 * exact.loss_bound),
                      nm.elementwise("embedding grad", g1, g0, 2 * emb_bound)])
    assert g0[idx.unique()].abs().sum() > 0  # the embedding's own use contributes
    assert (g1 - exact.grad_w).abs().max() > 1e3 * emb_bound.max()  # ... far beyond the rounding bound


def test_bf16_autocast_keeps_the_loss_in_fp32():
    h, w, y = make(90, 32, 64)
    # both forms round h, W, the logits and G to bf16 around the GEMMs (u = 2**-8); the rest is fp32
    exact = nm.linear_ce(h, w, y, scale=1.0, u_gemm=nm.U_BF16)
    out = []
    for fused in (False, True):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hh, ww, y, chunk_size=32) if fused else F.cross_entropy((hh @ ww.t()).float(), y)
        loss.backward()
        assert loss.dtype == torch.float32 and hh.grad.dtype == torch.float32 and ww.grad.dtype == torch.float32
        out += exact.checks(loss, hh.grad, ww.grad, prefix="fused " if fused else "plain ")
    nm.assert_within(out)


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
    # loss, CE, R, u, every parameter's gradient (delta_param has none: noise is off), the logits read
    # after the loss, each within the rounding bound of the two paths (numerics.kssm_loss_checks)
    nm.assert_within(nm.kssm_loss_checks(model, idx, tgt, lambda_reg=0.05, logits=True))
    model.zero_grad(set_to_none=True)
    total, _, out = model.loss(idx, tgt, lambda_reg=0.05)
    total.backward()
    assert model.embed.weight.grad.abs().sum() > 0  # the tied head + embedding
    assert out.logits.shape == (3, 37, 97)


@torch.no_grad()
def test_kssm_loss_without_grad_matches_the_reference_path():
    model = small_model(seed=4)
    idx = torch.randint(0, 97, (2, 33))
    tgt = torch.randint(0, 97, (2, 33))
    torch.manual_seed(0)
    total, ce, out = model.loss(idx, tgt, lambda_reg=0.2)
    torch.manual_seed(0)
    with use_reference(model):
        total0, ce0, _ = model.loss(idx, tgt, lambda_reg=0.2)
    with torch.enable_grad():
        split = nm.model_token_terms(model, idx, tgt, 0.2, seed=0)
    n_terms = nm.model_terms(model.cfg, split.theta_max, idx.numel())  # the loss sums T tokens
    nm.assert_within([nm.normwise("ce", ce, ce0, torch.tensor(split.ce_scale), n_terms),
                      nm.normwise("loss", total, total0, torch.tensor(split.value_scale), n_terms)])
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
        total, ce, out = model.loss(x, y, 0.01)
        total.backward()
        with torch.no_grad():  # both losses' CE of the same features (same weights, same noise draws)
            torch.manual_seed(step)
            feats = model._features(x)
        exact = nm.linear_ce(feats.reshape(-1, feats.size(-1)), model.output_head.weight, y.reshape(-1))
        opt.step()
        # the two CEs, each within its bound of the exact one; each total adds 0.01 * the same reg (2 roundings)
        ce_bound = 2 * float(exact.loss_bound)
        assert abs(ce.item() - plain_ce.item()) <= ce_bound
        assert abs(total.item() - plain.item()) <= ce_bound + 4 * nm.U32 * (abs(ce.item()) + 0.01 * abs(out.reg.item()))
        losses.append(total.item())
    assert losses[-1] < losses[0]  # it trains


# ---- the checks above catch broken kernels -------------------------------------------------------


def mutated_chunked(old: str, new: str):
    """kssm_core.model.fused_ce._chunked recompiled from its source with `old` replaced by `new` (once)."""
    src = textwrap.dedent(inspect.getsource(fused_ce._chunked))
    assert src.count(old) == 1, f"the chunk loop no longer reads {old!r}"
    namespace = dict(vars(fused_ce))
    exec(compile(src.replace(old, new), "<mutated _chunked>", "exec"), namespace)  # noqa: S102 (our own source)
    return namespace["_chunked"]


BROKEN_CHUNK_LOOPS = {
    "wrong sign (onehot)": ("torch.full_like(norm, -1.0 / n_tok)", "torch.full_like(norm, 1.0 / n_tok)"),
    "missing term (first chunk's grad_W)": ("grad_w_t = part.to(weight.dtype)", "grad_w_t = torch.zeros_like(part, dtype=weight.dtype)"),
    "missing term (the max in log-sum-exp)": ("total += (peak.squeeze(1) + norm.log()", "total += (norm.log()"),
    "wrong chunk edge (overlap)": ("range(0, n_tok, chunk)", "range(0, n_tok, max(1, chunk - 1))"),
    "wrong chunk edge (ragged tail dropped)": ("range(0, n_tok, chunk)", "range(0, n_tok - n_tok % chunk, chunk)"),
}


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("bug", list(BROKEN_CHUNK_LOOPS))
def test_a_broken_chunk_loop_fails_the_rounding_bound(bug, onednn, monkeypatch):
    """Each deliberately broken chunk loop, through the very checks above, misses the bound by far (in
    fp32, with either GEMM path); the shipped loop, same inputs, passes them."""
    monkeypatch.setattr(fused_ce, "ONEDNN", onednn)
    h, w, y = make(300, 64, 500, seed=3)
    nm.assert_within(checks(h, w, y, chunk=128))
    monkeypatch.setattr(fused_ce, "_chunked", mutated_chunked(*BROKEN_CHUNK_LOOPS[bug]))
    worst = max(checks(h, w, y, chunk=128), key=lambda c: c.ratio)
    assert worst.ratio > 100, f"{bug} stays within 100x the bound: {worst}"
