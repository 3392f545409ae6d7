"""The sizes, seed and prompts of an evaluation (no torch import: the CLI reads the defaults for --help)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PROMPTS = ("The nature of consciousness", "I think therefore", "To be or not")  # the runbook's three


@dataclass
class EvalOptions:
    """Sizes of the suites. The defaults keep `kssm eval all` on the tiny preset under a minute on 2 CPU cores."""

    seed: int = 1234
    """Seeds sampling, the Lorentzian noise and parameter noise: the same seed gives the same numbers."""
    windows: int = 16
    """Held-out windows scored per setting (benchmark uses twice as many)."""
    seq_len: int | None = None
    """Tokens per window; default the run's training context, at most 256."""
    gen_tokens: int = 32
    """Tokens generated per sample."""
    samples: int = 8
    """Samples per prompt (agency, temperature stress, benchmark)."""
    temperature: float = 0.8
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    """Prompts of the samples suite and the benchmark's generations."""

    def __post_init__(self) -> None:
        for name in ("windows", "gen_tokens", "samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"--seq-len must be >= 2, got {self.seq_len}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not self.prompts:
            raise ValueError("--prompts needs at least one prompt")
