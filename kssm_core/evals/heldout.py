"""Held-out text for perplexity: the run's own validation tokens when its cache is still there, else the
validation split (every VAL_EVERY-th chunk) of the run's corpus or of the embedded default corpus,
tokenised with the checkpoint's tokenizer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kssm_core.training.corpus import CorpusError, load_corpus
from kssm_core.training.data import VAL_EVERY, Tokenizer, load_tokens, split_chunks
from kssm_core.runfolder import layout


@dataclass
class HeldOut:
    tokens: np.ndarray  # int64, 1-D
    source: str  # where they came from, for the result file

    def windows(self, n: int, seq_len: int) -> torch.Tensor:
        """n windows of seq_len + 1 tokens spread evenly over the tokens: [n', seq_len + 1] (n' <= n)."""
        n_avail = (len(self.tokens) - 1) // seq_len
        if n_avail < 1:
            raise ValueError(f"held-out text too short: {len(self.tokens)} tokens for windows of {seq_len}")
        n = min(n, n_avail)
        starts = np.linspace(0, (n_avail - 1) * seq_len, n).astype(np.int64) // seq_len * seq_len
        rows = [self.tokens[s:s + seq_len + 1] for s in starts]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def _cache_candidates(train_cfg: dict, run_dir: Path) -> list[Path]:
    out = []
    if isinstance(train_cfg.get("data_dir_resolved"), str):
        out.append(Path(train_cfg["data_dir_resolved"]))
    try:
        body = json.loads((run_dir / layout.CONFIG).read_text())
        if isinstance(body, dict) and isinstance(body.get("data_dir"), str):
            out.append(Path(body["data_dir"]))
    except (OSError, ValueError):
        pass
    return out


def held_out(tokenizer: Tokenizer, train_cfg: dict, run_dir: Path, need_tokens: int) -> HeldOut:
    """The first choice that exists and matches the tokenizer (see the module docstring)."""
    sha = tokenizer.sha256()
    for folder in _cache_candidates(train_cfg, run_dir):
        try:
            data = load_tokens(folder)
        except (OSError, ValueError, KeyError, CorpusError):
            continue
        if data.tokenizer.sha256() == sha and len(data.val) > 1:
            return HeldOut(np.asarray(data.val[: need_tokens + 1], dtype=np.int64), f"validation cache {folder}")
    corpus_name = train_cfg.get("corpus")
    corpus = None
    if isinstance(corpus_name, str) and corpus_name:
        try:
            corpus = load_corpus(corpus_name)
        except CorpusError:
            corpus = None
    label = f"validation split of {corpus_name}"
    if corpus is None:
        corpus = load_corpus(None)
        label = f"validation split of the embedded corpus ({corpus.name})"
    chunks = split_chunks(corpus.documents)
    val = [c for i, c in enumerate(chunks) if i % VAL_EVERY == VAL_EVERY - 1] or chunks[-1:]
    ids: list[int] = []
    eot = tokenizer.eot_id
    for chunk in val:  # tokenise only as much as the suites need
        ids.extend(tokenizer.encode(chunk))
        if eot is not None:
            ids.append(eot)
        if len(ids) > need_tokens:
            break
    return HeldOut(np.asarray(ids, dtype=np.int64), label)
