"""A checkpoint's architecture, read from its tensors, and one-line descriptions of model shapes.

Our checkpoints carry `model_config`; the reference trainer's carry only `model_state`, so its shape is read
from the tensors (KSSM_SPEC.md section 1 names them): V and D from `embed.weight`, L from the block indices,
N from `omega_0`, H from the readout's 3H inputs, the position table from `pos_embed`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from kssm_core.config import ModelConfig


class ShapeError(ValueError):
    """The tensors do not describe a K-SSM v3 model; the message is one line."""


_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel wrappers


def clean_state_dict(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a model_state under our parameter names and shapes.

    Wrapper prefixes are dropped, and `delta_param` saved as shape (1,) (the reference's
    nn.Parameter(torch.tensor([0.2]))) becomes our scalar: the same number either way.
    """
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        if key.endswith("oscillators.delta_param") and value.dim() == 1 and value.numel() == 1:
            value = value.reshape(())
        out[key] = value
    return out


def infer_model_config(sd: dict[str, torch.Tensor], bistable: bool = True) -> ModelConfig:
    """The architecture a (cleaned) model_state implies. Raises ShapeError when it is not K-SSM v3's."""
    try:
        vocab, d_model = sd["embed.weight"].shape
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
        n_osc = sd["blocks.0.oscillators.omega_0"].shape[0]
        three_h = sd["blocks.0.oscillators.readout.weight"].shape[1]
        max_seq = sd["pos_embed"].shape[1]
    except (KeyError, ValueError, IndexError) as exc:
        raise ShapeError(f"cannot infer the architecture from model_state (missing or odd tensor: {exc})") from exc
    if not layers or sorted(layers) != list(range(len(layers))) or three_h % 3:
        raise ShapeError("cannot infer the architecture from model_state (block indices or readout width look wrong)")
    return ModelConfig(vocab_size=int(vocab), d_model=int(d_model), n_layers=len(layers), n_oscillators=int(n_osc),
                       n_harmonics=int(three_h // 3), max_seq_len=int(max_seq), bistable=bistable)


def checkpoint_model_config(state: dict[str, Any], bistable: bool = True) -> tuple[ModelConfig, str]:
    """(architecture, source) of a loaded checkpoint: its model_config ("kssm"), else its tensors ("reference")."""
    mc = state.get("model_config")
    if isinstance(mc, dict):
        try:
            return ModelConfig.from_dict(mc), "kssm"
        except (TypeError, ValueError) as exc:
            raise ShapeError(f"its model_config is invalid ({exc})") from exc
    sd = state.get("model_state")
    if not isinstance(sd, dict):
        raise ShapeError("its model_state is not a dictionary of tensors")
    return infer_model_config(clean_state_dict(sd), bistable=bistable), "reference"


def describe(cfg: ModelConfig, vocab: bool = True) -> str:
    """`D=64 L=2 N=16 H=8 V=256`: the letters of KSSM_SPEC.md."""
    text = f"D={cfg.d_model} L={cfg.n_layers} N={cfg.n_oscillators} H={cfg.n_harmonics}"
    return text + (f" V={cfg.vocab_size}" if vocab else "")


def same_body(a: ModelConfig, b: ModelConfig) -> bool:
    """Same D, L, N, H (the vocabulary aside): the weights of one fit the other."""
    return (a.d_model, a.n_layers, a.n_oscillators, a.n_harmonics) == (b.d_model, b.n_layers, b.n_oscillators, b.n_harmonics)


def load_error_line(exc: Exception) -> str:
    """The first informative line of a load_state_dict error (torch writes one line per tensor)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("size mismatch", "Missing key", "Unexpected key")):
            return ln[:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]
