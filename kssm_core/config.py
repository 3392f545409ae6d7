"""Settings as validated dataclasses: the model's shape, a training run, and the presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelConfig:
    """Shape of a K-SSM v3 network (see KSSM_SPEC.md section 1)."""

    vocab_size: int = 4096
    """Tokens in the vocabulary; the tied embedding is vocab_size x d_model."""
    d_model: int = 128
    """Hidden width D."""
    n_layers: int = 2
    """Number of pre-norm blocks L."""
    n_oscillators: int = 32
    """Oscillators N in each block's bank."""
    n_harmonics: int = 8
    """Harmonics H of the multi-scale readout (n = 1..H)."""
    max_seq_len: int = 1024
    """Rows of the learned position table (the reference uses 1024)."""
    bistable: bool = True
    """True: clamp u to [u_min, u_max]. False: the monostable ablation (no clamp)."""
    u_min: float = 0.1
    """Bistable clamp floor."""
    u_max: float = 10.0
    """Bistable clamp ceiling."""
    lambda1: float = 0.1
    """Weight of the determinant barrier 1 / (mean|delta| + eps)."""
    lambda2: float = 0.5
    """Weight of the log barrier -log(max(mean u, eps))."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_oscillators", "n_harmonics", "max_seq_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.bistable and not (0 < self.u_min < self.u_max):
            raise ValueError(f"need 0 < u_min < u_max, got {self.u_min} and {self.u_max}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Preset:
    """A named model size with the training shape that suits it."""

    name: str
    d_model: int
    n_layers: int
    n_oscillators: int
    n_harmonics: int
    vocab_size: int
    seq_len: int
    batch_size: int
    grad_accum: int
    eval_batches: int
    note: str


PRESETS: dict[str, Preset] = {
    # tiny: sized so Stage 1 (100 steps) fits the runbook's 2 minutes on 2 CPU cores.
    "tiny": Preset("tiny", 128, 2, 32, 8, 4096, 128, 16, 1, 8, "CPU smoke tests and CI"),
    "small": Preset("small", 256, 4, 64, 16, 8192, 256, 8, 2, 10, "a laptop or a small GPU"),
    # medium: the reference K-SSM v3 size (D=384, L=6, N=192, H=32, context 512, 8 x 8 batches).
    "medium": Preset("medium", 384, 6, 192, 32, 16384, 512, 8, 8, 20, "the reference size; a GPU"),
}


def model_config_for(preset: str, vocab_size: int, bistable: bool = True) -> ModelConfig:
    p = PRESETS[preset]
    return ModelConfig(
        vocab_size=vocab_size,
        d_model=p.d_model,
        n_layers=p.n_layers,
        n_oscillators=p.n_oscillators,
        n_harmonics=p.n_harmonics,
        bistable=bistable,
    )


@dataclass
class TrainConfig:
    """One training run. None means 'derive from the preset or max_steps' (see resolve())."""

    output_dir: str = "results/stage1"
    max_steps: int = 100
    preset: str | None = "tiny"
    """Model size. None: with init_from, the checkpoint's own shape (read from its tensors); else tiny."""
    corpus: str | None = None
    """A .txt file, a folder of .txt files, a .jsonl file with a `text` field; None = embedded default."""
    tokenizer: str | None = None
    """None: a byte-level BPE trained on the corpus; else a tokenizers JSON file, `chars` (the reference's
    character fallback) or `tiktoken:NAME` (kssm_core.training.tokenizer_choice)."""
    data_dir: str = "data/cache"
    """Where token caches and tokenizers live (one sub-folder per corpus + vocabulary)."""
    vocab_size: int | None = None
    seed: int = 1337
    device: str = "auto"
    learning_rate: float = 1e-3
    """Peak learning rate (runbook default 0.001)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at learning_rate * min_lr_ratio."""
    warmup_steps: int | None = None
    """Linear warm-up; default min(1000, 10% of max_steps) so a 100-step stage warms up in 10."""
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    lambda_reg: float = 0.01
    """Weight of the model's regularisation in the total loss (runbook default 0.01)."""
    batch_size: int | None = None
    grad_accum: int | None = None
    seq_len: int | None = None
    log_interval: int | None = None
    eval_interval: int | None = None
    save_interval: int | None = None
    eval_batches: int | None = None
    keep_checkpoints: int = 3
    """Periodic checkpoints kept (the newest N); stage-target milestones are never pruned."""
    sample_tokens: int = 50
    sample_prompt: str = "The "
    sample_temperature: float = 0.8
    monostable: bool = False
    init_from: str | None = None
    resume: bool = False
    heartbeat_seconds: float = 5.0
    stage: int | None = None
    precision: str = "auto"
    """auto | fp32 | bf16: bf16 autocast on CUDA (auto: where supported); the oscillator phases stay fp32."""

    def resolve(self) -> "TrainConfig":
        """Fill every None with the preset's or the schedule's default and validate."""
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.lambda_reg < 0:
            raise ValueError(f"--lambda-reg must be >= 0, got {self.lambda_reg}")
        c = dataclasses.replace(self)
        if c.preset is None and not c.init_from:
            c.preset = "tiny"
        p = PRESETS[c.preset or "tiny"]  # with the checkpoint's shape, the training shape is still tiny's
        if c.tokenizer and c.vocab_size:
            raise ValueError("--vocab-size sizes the BPE trained on the corpus; with --tokenizer the vocabulary is "
                             "the tokenizer's: drop one of them")
        c.vocab_size = None if c.tokenizer else (c.vocab_size or p.vocab_size)
        c.batch_size = c.batch_size or p.batch_size
        c.grad_accum = c.grad_accum or p.grad_accum
        c.seq_len = c.seq_len or p.seq_len
        c.eval_batches = c.eval_batches or p.eval_batches
        n = c.max_steps
        if c.warmup_steps is None:
            c.warmup_steps = min(1000, max(1, n // 10))
        # Short stages log densely enough for a loss trend; long ones follow the reference (20/500/1000).
        c.log_interval = c.log_interval or min(20, max(1, n // 50))
        c.eval_interval = c.eval_interval or min(500, max(1, n // 5))
        c.save_interval = c.save_interval or min(1000, max(1, n // 2))
        if c.monostable:
            c.lambda_reg = 0.0
        for name in ("batch_size", "grad_accum", "seq_len", "log_interval", "eval_interval", "save_interval"):
            if getattr(c, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(c, name)}")
        if c.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"--precision must be auto, fp32 or bf16, got {c.precision!r}")
        if c.seq_len > 1024:
            raise ValueError(f"--seq-len {c.seq_len} exceeds the position table (1024)")
        return c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# The runbook's stage plan lives in kssm_core.runbook.stages; re-exported for the training side.
from kssm_core.runbook.stages import STAGE_TARGETS, STAGES, Stage, stage  # noqa: E402,F401
