"""Load a model to evaluate: our checkpoints (model_config + embedded tokenizer) or the reference trainer's
(`model_state` only: the architecture is inferred from the tensor shapes, the tokenizer given as a file).

Loading goes only through kssm_core.training.checkpoint.load_checkpoint (torch.load weights_only=True), so a
hostile file is refused before anything in it can run. Every failure is one EvalError line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kssm_core.training.checkpoint import CheckpointError, load_checkpoint
from kssm_core.config import ModelConfig
from kssm_core.training.corpus import CorpusError
from kssm_core.training.data import Tokenizer
from kssm_core.model.kssm import KSSM


class EvalError(Exception):
    """The evaluation cannot run; the message is one line saying why and what to do next."""


@dataclass
class LoadedModel:
    model: KSSM
    tokenizer: Tokenizer
    path: Path
    step: int | None
    source: str  # "kssm" (our checkpoint) or "reference" (model_state only, shapes inferred)
    state: dict[str, Any]  # the checkpoint dict without its tensors' owners (config, step, ...)

    @property
    def train_config(self) -> dict[str, Any]:
        cfg = self.state.get("config")
        return cfg if isinstance(cfg, dict) else {}


_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel wrappers


def _clean_keys(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def infer_model_config(sd: dict[str, torch.Tensor]) -> ModelConfig:
    """The architecture a reference `model_state` implies: V, D from embed.weight, L from the block indices,
    N from omega_0, H from the readout's 3H inputs, the position table from pos_embed. Bistable is assumed."""
    try:
        vocab, d_model = sd["embed.weight"].shape
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
        n_osc = sd["blocks.0.oscillators.omega_0"].shape[0]
        three_h = sd["blocks.0.oscillators.readout.weight"].shape[1]
        max_seq = sd["pos_embed"].shape[1]
    except (KeyError, ValueError, IndexError) as exc:
        raise EvalError(f"cannot infer the architecture from model_state (missing or odd tensor: {exc})") from exc
    if not layers or sorted(layers) != list(range(len(layers))) or three_h % 3:
        raise EvalError("cannot infer the architecture from model_state (block indices or readout width look wrong)")
    return ModelConfig(vocab_size=int(vocab), d_model=int(d_model), n_layers=len(layers), n_oscillators=int(n_osc),
                       n_harmonics=int(three_h // 3), max_seq_len=int(max_seq))


def _load_weights(model: KSSM, sd: dict[str, torch.Tensor], path: Path) -> None:
    expected = set(model.state_dict())
    sd = {k: v for k, v in sd.items() if k in expected or not k.endswith("harmonics")}  # an old persistent buffer
    missing = sorted(expected - set(sd) - {"output_head.weight"})  # the head is tied to embed.weight
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise EvalError(f"{path}: weights do not fit a K-SSM v3 model ({'; '.join(parts)})")
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise EvalError(f"{path}: weights do not fit the model's shapes ({first[-1].strip()[:160] if first else exc})") from exc


def load_model(path: str | Path, device: torch.device | str = "cpu", tokenizer_path: str | Path | None = None) -> LoadedModel:
    """Load a checkpoint for evaluation (eval mode, on device). Raises EvalError with one line."""
    path = Path(path)
    if path.is_dir():
        raise EvalError(f"{path} is a folder; pass the model file, e.g. {path / 'best_model.pt'}")
    try:
        state = load_checkpoint(path, map_location="cpu")
    except CheckpointError as exc:
        raise EvalError(str(exc)) from exc
    sd = state.get("model_state")
    if not isinstance(sd, dict):
        raise EvalError(f"{path}: model_state is not a dictionary of tensors")
    sd = _clean_keys(sd)
    mc = state.get("model_config")
    if isinstance(mc, dict):
        try:
            cfg, source = ModelConfig.from_dict(mc), "kssm"
        except (TypeError, ValueError) as exc:
            raise EvalError(f"{path}: its model_config is invalid ({exc})") from exc
    else:
        cfg, source = infer_model_config(sd), "reference"

    if tokenizer_path is not None:
        try:
            tok = Tokenizer.load(tokenizer_path)
        except CorpusError as exc:
            raise EvalError(str(exc)) from exc
    else:
        text = state.get("tokenizer_json")
        if not isinstance(text, str):
            raise EvalError(f"{path} holds no tokenizer (a reference checkpoint?); pass --tokenizer FILE (a tokenizers JSON)")
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = Tokenizer(HFTokenizer.from_str(text))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise EvalError(f"{path}: its embedded tokenizer is damaged ({exc}); pass --tokenizer FILE") from exc
    if tok.vocab_size > cfg.vocab_size:
        raise EvalError(f"the tokenizer has {tok.vocab_size:,} tokens but the model only {cfg.vocab_size:,}: "
                        "pass the tokenizer the model was trained with (--tokenizer FILE)")

    model = KSSM(cfg)
    _load_weights(model, sd, path)
    model.to(device).eval()
    step = state.get("step")
    meta = {k: v for k, v in state.items() if k not in ("model_state", "optimizer_state", "scheduler_state", "rng")}
    return LoadedModel(model, tok, path, int(step) if isinstance(step, int) else None, source, meta)
