"""The fast oscillator kernel agrees with the spec's naive oracle (kssm_core.model.oracle).

Agreement is norm-wise relative error ||fast - oracle|| / ||oracle|| <= 1e-5 in fp32, for forward
outputs, R, u, reg and the gradients w.r.t. the input and every bank parameter, at every preset's
(D, N, H) with small batches. A float64 comparison shows the two compute the same function (agreement
to ~1e-12), so the fp32 margin is rounding, not an approximation.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from kssm_core.model import oscillator
from kssm_core.config import PRESETS, ModelConfig, model_config_for
from kssm_core.model.kssm import KSSM, KuramotoOscillatorBank, harmonic_means
from kssm_core.model.oracle import reference_bank_forward, reference_harmonic_means, use_reference

TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of a against the oracle b (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm().item()
    return (a - b).norm().item() / denom if denom > 0 else (a - b).norm().item()


def make_bank(preset: str, seed: int = 0, dtype=torch.float32) -> KuramotoOscillatorBank:
    torch.manual_seed(seed)
    bank = KuramotoOscillatorBank(model_config_for(preset, vocab_size=64))
    bank.reset_parameters()
    with torch.no_grad():  # move away from the symmetric init so every parameter matters
        bank.omega_0.add_(0.3 * torch.randn_like(bank.omega_0))
        bank.to_params.bias.add_(0.5 * torch.randn_like(bank.to_params.bias))
        bank.readout.weight.normal_(0, 0.05)
        bank.readout.bias.normal_(0, 0.05)
    return bank.to(dtype)


def run_bank(bank, h0, path: str, seed: int = 123):
    """Forward + backward of one path from the same RNG state; returns outputs and every gradient."""
    bank.zero_grad(set_to_none=True)
    h = h0.clone().requires_grad_()
    torch.manual_seed(seed)
    out = reference_bank_forward(bank, h) if path == "oracle" else bank(h)
    rng_after = torch.get_rng_state()
    tele = bank.last
    # A loss touching the readout, R, u and reg, so every branch carries gradient.
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    loss = (out * weight).sum() + tele.R.sum() + 0.1 * tele.u.sum() + tele.reg
    loss.backward()
    grads = {"h": h.grad.clone()}
    for name, p in bank.named_parameters():
        grads[name] = None if p.grad is None else p.grad.clone()
    return {"out": out.detach(), "R": tele.R.detach(), "u": tele.u.detach(), "reg": tele.reg.detach()}, grads, rng_after


def assert_paths_agree(bank, h0, tol: float) -> None:
    o_ref, g_ref, rng_ref = run_bank(bank, h0, "oracle")
    o_fast, g_fast, rng_fast = run_bank(bank, h0, "fast")
    assert torch.equal(rng_ref, rng_fast), "the two paths consumed the RNG differently"
    for key in o_ref:
        assert rel(o_fast[key], o_ref[key]) <= tol, (key, rel(o_fast[key], o_ref[key]))
    assert g_ref.keys() == g_fast.keys()
    for key in g_ref:
        if g_ref[key] is None:
            assert g_fast[key] is None, key
            continue
        assert g_fast[key] is not None, key
        assert rel(g_fast[key], g_ref[key]) <= tol, (key, rel(g_fast[key], g_ref[key]))


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("noise", [False, True])
def test_bank_matches_oracle_fp32_at_every_preset(preset, noise):
    bank = make_bank(preset)
    bank.noise = noise
    torch.manual_seed(1)
    h0 = torch.randn(2, 24, bank.cfg.d_model)
    assert_paths_agree(bank, h0, TOL)
    if noise:  # with noise on, the Lorentzian spread is learned: its gradient must exist and agree
        assert bank.delta_param.grad is not None and bank.delta_param.grad.abs().item() > 0


@pytest.mark.parametrize("preset", ["tiny", "medium"])
def test_bank_matches_oracle_float64_to_rounding(preset):
    bank = make_bank(preset, dtype=torch.float64)
    torch.manual_seed(2)
    h0 = torch.randn(2, 8, bank.cfg.d_model, dtype=torch.float64)
    assert_paths_agree(bank, h0, 1e-11)


@pytest.mark.parametrize("n,h", [(1, 1), (3, 1), (7, 5), (12, 7), (32, 8), (64, 16), (192, 32), (50, 33), (16, 64)])
def test_harmonic_means_awkward_shapes(n, h):
    """Odd N and H (prime, H > N, P*Q > H) and wide phases; fp32 fast vs the float64 oracle."""
    torch.manual_seed(n * 100 + h)
    theta = (torch.rand(3, 5, n) * 2 - 1) * 12  # |theta| up to 12 rad: n*theta up to ~400
    t64 = theta.double().requires_grad_()
    t32 = theta.clone().requires_grad_()
    re64, im64 = reference_harmonic_means(t64, h)
    re, im = harmonic_means(t32, h)
    assert re.shape == im.shape == (3, 5, h) and re.dtype == torch.float32
    assert rel(re, re64) <= TOL and rel(im, im64) <= TOL
    g_re, g_im = torch.randn(3, 5, h, dtype=torch.float64), torch.randn(3, 5, h, dtype=torch.float64)
    ((re64 * g_re).sum() + (im64 * g_im).sum()).backward()
    ((re * g_re.float()).sum() + (im * g_im.float()).sum()).backward()
    assert rel(t32.grad, t64.grad) <= TOL


def test_harmonic_means_gradcheck_float64():
    torch.manual_seed(3)
    theta = (torch.rand(2, 3, 6, dtype=torch.float64) * 2 - 1) * 4
    theta.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: oscillator.harmonic_means(t, 5), (theta,))


def test_chunking_boundaries(monkeypatch):
    """Many chunks with a ragged last one give the same answer as one chunk."""
    torch.manual_seed(4)
    theta = (torch.rand(3, 37, 24, dtype=torch.float64) * 2 - 1) * 5
    whole = [t.detach() for t in oscillator.harmonic_means(theta, 9)]
    monkeypatch.setattr(oscillator, "CPU_CHUNK", 24 * 10)  # 10 rows per chunk over 111 rows
    t = theta.clone().requires_grad_()
    re, im = oscillator.harmonic_means(t, 9)
    (re.sum() + 2 * im.sum()).backward()
    t_ref = theta.clone().requires_grad_()
    re_ref, im_ref = reference_harmonic_means(t_ref, 9)
    (re_ref.sum() + 2 * im_ref.sum()).backward()
    assert rel(re, whole[0]) < 1e-13 and rel(im, whole[1]) < 1e-13
    assert rel(re, re_ref) < 1e-11 and rel(t.grad, t_ref.grad) < 1e-11


def test_bank_chunking_boundaries(monkeypatch):
    """The fused bank kernel over many chunks (ragged last) still equals the oracle to float64 rounding."""
    bank = make_bank("tiny", seed=14, dtype=torch.float64)
    monkeypatch.setattr(oscillator, "CPU_CHUNK", bank.cfg.n_oscillators * 7)  # 7 tokens per chunk, 26 tokens
    torch.manual_seed(15)
    h0 = torch.randn(2, 13, bank.cfg.d_model, dtype=torch.float64)
    assert_paths_agree(bank, h0, 1e-11)


def test_inference_mode_matches_oracle():
    """Evaluation runs under inference_mode: the kernel's out= writes must work there too."""
    bank = make_bank("tiny", seed=17)
    bank.noise = False
    h0 = torch.randn(2, 10, bank.cfg.d_model)
    with torch.inference_mode():
        a = bank(h0)
    with torch.no_grad():
        b = reference_bank_forward(bank, h0)
    assert rel(a, b) <= TOL


def test_one_output_used_only():
    """A loss on Re alone (Im's gradient arrives as zeros or None) still gives the oracle's gradient."""
    torch.manual_seed(5)
    theta = torch.rand(2, 4, 16, dtype=torch.float64) * 6
    t, t_ref = theta.clone().requires_grad_(), theta.clone().requires_grad_()
    oscillator.harmonic_means(t, 8)[0].pow(2).sum().backward()
    reference_harmonic_means(t_ref, 8)[0].pow(2).sum().backward()
    assert rel(t.grad, t_ref.grad) < 1e-11


def test_half_precision_input_is_upcast():
    theta = (torch.rand(2, 3, 16) * 6).to(torch.bfloat16).requires_grad_()
    re, im = oscillator.harmonic_means(theta, 4)
    assert re.dtype == torch.bfloat16
    (re.float().sum() + im.float().sum()).backward()
    assert theta.grad is not None and theta.grad.dtype == torch.bfloat16
    re_ref, _ = reference_harmonic_means(theta.detach().double(), 4)
    assert rel(re.float(), re_ref) < 2e-2  # bf16 output rounding only


def test_backward_saves_no_harmonic_sized_tensor():
    """The point of the kernel: autograd keeps nothing of size B*S*N*H (the oracle keeps several)."""
    bank = make_bank("small")
    b, s, n, h = 2, 16, bank.cfg.n_oscillators, bank.cfg.n_harmonics
    x = torch.randn(b, s, bank.cfg.d_model, requires_grad=True)

    params = {p.data_ptr() for p in bank.parameters()}

    def saved_activations(fn) -> list[int]:
        """numel of every tensor autograd saves during fn(x), parameters left out."""
        sizes: list[int] = []

        def pack(t):
            if t.data_ptr() not in params:
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sizes

    oracle = saved_activations(lambda v: reference_bank_forward(bank, v))
    fast = saved_activations(bank)
    assert max(oracle) >= b * s * n * h
    assert max(fast) <= max(b * s * n, b * s * bank.cfg.d_model) < b * s * n * h
    assert sum(fast) * 3 < sum(oracle)


@pytest.mark.parametrize("intervention", ["force_R", "u_floor", "noise_off"])
def test_interventions_identical(intervention):
    bank = make_bank("tiny", seed=6)
    if intervention == "force_R":
        bank.force_R = 0.6
    elif intervention == "u_floor":
        bank.u_floor = 0.001
    else:
        bank.noise = False
    torch.manual_seed(8)
    h0 = torch.randn(2, 12, bank.cfg.d_model)
    assert_paths_agree(bank, h0, TOL)
    if intervention == "force_R":
        with torch.no_grad():
            bank(h0)
        assert torch.allclose(bank.last.R, torch.full_like(bank.last.R, 0.6), atol=1e-5)


def test_noise_same_draws_with_same_seed():
    """Both paths draw the same noise at the same point: equal outputs with the same seed, different with another."""
    bank = make_bank("tiny", seed=9)
    h0 = torch.randn(1, 6, bank.cfg.d_model)
    with torch.no_grad():
        torch.manual_seed(10)
        a = bank(h0)
        torch.manual_seed(10)
        b = reference_bank_forward(bank, h0)
        torch.manual_seed(11)
        c = bank(h0)
    assert rel(a, b) <= TOL
    assert rel(c, b) > 1e-3


def test_whole_model_loss_and_grads_match_oracle():
    """KSSM.loss end to end (every block's bank swapped for the oracle) agrees within tolerance."""
    torch.manual_seed(12)
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_oscillators=24, n_harmonics=6, max_seq_len=32)
    model = KSSM(cfg)
    idx = torch.randint(0, 97, (2, 16))
    tgt = torch.randint(0, 97, (2, 16))

    def run(ref: bool):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(13)
        with use_reference(model) if ref else contextlib.nullcontext():
            total, ce, out = model.loss(idx, tgt, lambda_reg=0.01)
        total.backward()
        return total.detach(), out, {n: p.grad.clone() for n, p in model.named_parameters()}

    t_ref, out_ref, g_ref = run(True)
    t_fast, out_fast, g_fast = run(False)
    assert rel(t_fast, t_ref) <= TOL
    assert rel(out_fast.R, out_ref.R) <= TOL and rel(out_fast.u_val, out_ref.u_val) <= TOL
    assert rel(out_fast.R_per_layer, out_ref.R_per_layer) <= TOL
    for name in g_ref:
        assert rel(g_fast[name], g_ref[name]) <= TOL, name
    # use_reference restored the production forward
    assert all("forward" not in vars(bank) for bank in model.banks)


def test_state_dict_keys_unchanged():
    keys = set(KuramotoOscillatorBank(model_config_for("tiny", 64)).state_dict())
    assert keys == {"to_params.weight", "to_params.bias", "omega_0", "readout.weight", "readout.bias", "delta_param"}


def test_split_harmonics_covers_every_harmonic():
    for h in range(1, 70):
        p, q = oscillator.split_harmonics(h)
        assert p * q >= h and p >= q >= 1
        assert p + q <= 2 * math.ceil(math.sqrt(h)) + 1


@pytest.mark.slow
def test_benchmark_script_smoke(capsys):
    """benchmarks/train_throughput.py --quick runs both paths and prints both tables with figures."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "Machine:" in out and "torch" in out
    lines = out.splitlines()
    bank_rows = [line for line in lines if line.startswith(("| oracle (naive", "| fast kernel"))]
    step_rows = [line for line in lines if line.startswith("| tiny |")]
    assert len(bank_rows) == 2 and len(step_rows) == 2
    for line in step_rows:
        tokens_per_s = float(line.split("|")[7].replace(",", ""))
        assert tokens_per_s > 0
