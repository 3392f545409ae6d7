"""Load a model to evaluate: our checkpoints (model_config + embedded tokenizer) or the reference trainer's
(`model_state` only: the architecture is inferred from the tensor shapes, the tokenizer given as a file).

Loading goes only through kssm_core.training.checkpoint.load_checkpoint (torch.load weights_only=True), so a
hostile file is refused before anything in it can run. Every failure is one EvalError line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kssm_core.training.checkpoint import CheckpointError, load_checkpoint
from kssm_core.config import ModelConfig
from kssm_core.training.corpus import CorpusError
from kssm_core.training.data import Tokenizer
from kssm_core.training.tokenizer_choice import hint_for_vocab, resolve_tokenizer, tokenizer_from_record
from kssm_core.model import shapes
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


def infer_model_config(sd: dict[str, torch.Tensor]) -> ModelConfig:
    """The architecture a reference `model_state` implies (kssm_core.model.shapes). Bistable is assumed."""
    try:
        return shapes.infer_model_config(shapes.clean_state_dict(sd))
    except shapes.ShapeError as exc:
        raise EvalError(str(exc)) from exc


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
        raise EvalError(f"{path}: weights do not fit {shapes.describe(model.cfg)} ({shapes.load_error_line(exc)})") from exc


def load_model(path: str | Path, device: torch.device | str = "cpu", tokenizer: str | Path | None = None) -> LoadedModel:
    """Load a checkpoint for evaluation (eval mode, on device). Raises EvalError with one line.

    tokenizer: a --tokenizer spec (a tokenizers JSON file, chars, tiktoken:NAME); needed when the checkpoint
    embeds none (the reference trainer's).
    """
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
    sd = shapes.clean_state_dict(sd)
    try:
        cfg, source = shapes.checkpoint_model_config(state)
    except shapes.ShapeError as exc:
        raise EvalError(f"{path}: {exc}") from exc

    try:
        tok = resolve_tokenizer(str(tokenizer)) if tokenizer is not None else tokenizer_from_record(state)
    except CorpusError as exc:
        raise EvalError(str(exc) if tokenizer is not None else f"{path}: {exc}") from exc
    if tok is None:
        raise EvalError(f"{path} holds no tokenizer (a reference checkpoint?); pass {hint_for_vocab(cfg.vocab_size)}")
    if tok.vocab_size > cfg.vocab_size:
        raise EvalError(f"the tokenizer has {tok.vocab_size:,} tokens but the model only {cfg.vocab_size:,}: "
                        f"pass the tokenizer the model was trained with ({hint_for_vocab(cfg.vocab_size)})")

    model = KSSM(cfg)
    _load_weights(model, sd, path)
    model.to(device).eval()
    step = state.get("step")
    meta = {k: v for k, v in state.items() if k not in ("model_state", "optimizer_state", "scheduler_state", "rng")}
    return LoadedModel(model, tok, path, int(step) if isinstance(step, int) else None, source, meta)
