"""What every suite receives: the loaded model, the options (sizes, seed, prompts), held-out windows,
seeded sampling, and the progress reporter."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kssm_core.model.interventions import Generation, generate_with_telemetry
from kssm_core.evals.heldout import HeldOut, held_out
from kssm_core.evals.loader import LoadedModel
from kssm_core.evals.options import EvalOptions
from kssm_core.evals.progress import Progress


@dataclass
class EvalContext:
    loaded: LoadedModel
    device: torch.device
    opts: EvalOptions
    run_dir: Path
    eval_dir: Path | None = None  # None: write nothing (tests of a single suite in memory)
    progress: Progress = field(default_factory=lambda: Progress(None, "eval"))
    _held: HeldOut | None = None

    @property
    def model(self):
        return self.loaded.model

    @property
    def seq_len(self) -> int:
        if self.opts.seq_len is not None:
            return min(self.opts.seq_len, self.model.cfg.max_seq_len)
        trained = self.loaded.train_config.get("seq_len")
        trained = trained if isinstance(trained, int) and trained > 1 else 128
        return min(trained, 256, self.model.cfg.max_seq_len)

    @property
    def held(self) -> HeldOut:
        if self._held is None:
            need = 2 * self.opts.windows * self.seq_len * 4 + 1  # room to spread the benchmark's windows
            self._held = held_out(self.loaded.tokenizer, self.loaded.train_config, self.run_dir, need)
        return self._held

    def windows(self, factor: int = 1) -> torch.Tensor:
        return self.held.windows(self.opts.windows * factor, self.seq_len)

    def encode_prompt(self, prompt: str) -> list[int]:
        tok = self.loaded.tokenizer
        ids = tok.encode(prompt)
        if not ids:
            ids = [tok.eot_id if tok.eot_id is not None else 0]
        return ids[-(self.model.cfg.max_seq_len - 1):]

    def sample(self, prompt: str, n: int | None = None, tokens: int | None = None,
               temperature: float | None = None, salt: int = 0) -> tuple[Generation, list[str]]:
        """n seeded samples of one prompt; the seed depends on (seed, prompt, salt), not on call order."""
        n = n or self.opts.samples
        ids = self.encode_prompt(prompt)
        key = zlib.crc32(prompt.encode("utf-8")) ^ (self.opts.seed * 1_000_003 + salt)
        gen = torch.Generator(device=self.device).manual_seed(key & 0x7FFF_FFFF_FFFF)
        torch.manual_seed(key & 0x7FFF_FFFF_FFFF)  # the Lorentzian phase noise uses the global RNG
        idx = torch.tensor([ids] * n, device=self.device)
        g = generate_with_telemetry(self.model, idx, tokens or self.opts.gen_tokens,
                                    self.opts.temperature if temperature is None else temperature, generator=gen)
        texts = [self.loaded.tokenizer.decode(row.tolist()) for row in g.new_tokens.cpu()]
        return g, texts
