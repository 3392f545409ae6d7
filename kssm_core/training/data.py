"""Offline tokenizer, memory-mapped token cache, and a resumable batch order.

Cache layout (one folder per corpus fingerprint and tokenizer, under --data-dir):
    tokenizer.json            byte-level BPE trained on this corpus (no network, reproducible), or the
                              --tokenizer JSON file; for --tokenizer chars / tiktoken:NAME, tokenizer.spec
                              holds that name instead (kssm_core.training.tokenizer_choice)
    tokens_train.npy          int32, memory-mapped
    tokens_val.npy            int32 (every 20th ~4 KB chunk: the reference's 95/5 split)
    tokens_train_meta.json    {"n_tokens", "vocab_size", "corpus", "fingerprint", ...}
    tokens_val_meta.json
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kssm_core.runfolder.atomic import atomic_write, atomic_write_bytes
from kssm_core.training.corpus import Corpus, CorpusError

EOT = "<|endoftext|>"
VAL_EVERY = 20  # every 20th chunk goes to validation: a 95/5 split
CHUNK_CHARS = 4000
CACHE_VERSION = 2  # bump when the cache layout or the split changes
SPEC_NAME = "tokenizer.spec"  # a cache built with --tokenizer chars / tiktoken:NAME names it here


class ForeignDataDir(Exception):
    """The cache would be built inside a run folder another program wrote: kssm writes nothing there.
    The message is one line: what was found and what to do (a --data-dir outside it)."""


def foreign_data_dir(data_dir: str | Path) -> str | None:
    """Why no token cache may be built under data_dir (one line), or None. Judged by files alone, like every
    output folder of ours: data_dir, or a folder above it, holding another trainer's run."""
    from kssm_core.runfolder.foreign import enclosing_foreign_run

    found = enclosing_foreign_run(data_dir)
    if found is None:
        return None
    if Path(data_dir).absolute() == found.run_dir.absolute():
        where = f"holds {found.what()}"
    else:
        where = f"is inside {found.run_dir}, which holds {found.what()}"
    return (f"--data-dir {data_dir} {where}: kssm writes nothing there (no token cache); "
            f"pass a --data-dir outside it (default: data/cache)")


class Tokenizer:
    """Thin wrapper over a `tokenizers` byte-level BPE; built from the corpus, loaded from a file."""

    spec = None  # what --tokenizer would name it: None (trained on the corpus) or the JSON file it came from

    def __init__(self, inner, path: Path | None = None):
        self._tok = inner
        self.path = path

    @classmethod
    def train(cls, documents: list[str], vocab_size: int) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(documents, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        try:
            return cls(HFTokenizer.from_file(str(path)), path)
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise CorpusError(f"cannot load tokenizer {path}: {exc}; delete it to rebuild") from exc

    def save(self, path: str | Path) -> None:
        path = Path(path)
        _atomic_write_bytes(path, self._tok.to_str().encode("utf-8"))
        self.path = path

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def eot_id(self) -> int | None:
        return self._tok.token_to_id(EOT)  # None for a given tokenizer without <|endoftext|>

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def sha256(self) -> str:
        return hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()[:16]

    def record(self) -> dict:
        """What a checkpoint stores to rebuild it (kssm_core.training.tokenizer_choice.tokenizer_from_record)."""
        return {"tokenizer_json": self._tok.to_str()}

    def cache_tag(self) -> str:
        return f"tok{self.sha256()[:12]}"


@dataclass
class TokenData:
    """A prepared token cache: the tokenizer and the memory-mapped train / val arrays."""

    folder: Path
    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    meta: dict

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def cache_folder(data_dir: str | Path, corpus: Corpus, vocab_size: int, tokenizer=None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(corpus.name).name)[:40] or "corpus"
    tag = f"bpe{vocab_size}" if tokenizer is None else tokenizer.cache_tag()
    return Path(data_dir) / f"{slug}-{corpus.fingerprint()}-{tag}-v{CACHE_VERSION}"


def prepare_tokens(corpus: Corpus, data_dir: str | Path, vocab_size: int, log=print, tokenizer=None) -> TokenData:
    """Load the cache for this corpus and tokenizer, building it first when missing or damaged.

    tokenizer None: a byte-level BPE of vocab_size trained on the corpus; else the given one (--tokenizer),
    kept in the cache as tokenizer.json (a JSON file) or tokenizer.spec (chars, tiktoken:NAME).
    """
    folder = cache_folder(data_dir, corpus, vocab_size, tokenizer)
    try:
        return load_tokens(folder)
    except (OSError, ValueError, KeyError, CorpusError):
        pass
    refusal = foreign_data_dir(data_dir)  # an existing cache is only read; a new one is never built there
    if refusal is not None:
        raise ForeignDataDir(refusal)
    folder.mkdir(parents=True, exist_ok=True)
    size = vocab_size if tokenizer is None else tokenizer.vocab_size
    log(f"building token cache in {folder} ({corpus.n_chars:,} characters, vocabulary {size})")
    if tokenizer is None:
        tok = Tokenizer.train(corpus.documents, vocab_size)
        tok.save(folder / "tokenizer.json")
    elif isinstance(tokenizer, Tokenizer):
        tok = tokenizer
        _atomic_write_bytes(folder / "tokenizer.json", tok._tok.to_str().encode("utf-8"))
    else:
        tok = tokenizer
        _atomic_write_bytes(folder / SPEC_NAME, (tok.spec + "\n").encode("utf-8"))
    chunks = split_chunks(corpus.documents)
    train_docs = [d for i, d in enumerate(chunks) if i % VAL_EVERY != VAL_EVERY - 1]
    val_docs = [d for i, d in enumerate(chunks) if i % VAL_EVERY == VAL_EVERY - 1]
    common = {
        "vocab_size": tok.vocab_size,
        "corpus": corpus.name,
        "fingerprint": corpus.fingerprint(),
        "tokenizer_sha256": tok.sha256(),
        "dtype": "int32",
    }
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ids = _concat(tok, docs)
        _atomic_save_npy(folder / f"tokens_{split}.npy", ids)
        meta = dict(common, n_tokens=int(ids.size), n_documents=len(docs))
        _atomic_write_bytes(folder / f"tokens_{split}_meta.json", json.dumps(meta, indent=2).encode())
    return load_tokens(folder)


def split_chunks(documents: list[str], target_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut long documents at paragraph breaks into pieces of about target_chars, so that taking
    every 20th piece gives a validation set drawn from the whole corpus (95/5), even from one book."""
    chunks: list[str] = []
    for doc in documents:
        start = 0
        while start < len(doc):
            end = min(len(doc), start + target_chars)
            if end < len(doc):
                brk = doc.rfind("\n\n", start + target_chars // 2, end)
                end = brk + 2 if brk != -1 else end
            chunks.append(doc[start:end])
            start = end
    return chunks


def load_tokens(folder: str | Path) -> TokenData:
    folder = Path(folder)
    if (folder / SPEC_NAME).is_file():  # chars or tiktoken:NAME (kssm_core.training.tokenizer_choice)
        from kssm_core.training.tokenizer_choice import resolve_tokenizer

        tok = resolve_tokenizer((folder / SPEC_NAME).read_text(encoding="utf-8").strip())
    else:
        tok = Tokenizer.load(folder / "tokenizer.json")
    arrays = {}
    meta = {}
    for split in ("train", "val"):
        meta[split] = json.loads((folder / f"tokens_{split}_meta.json").read_text())
        arr = np.load(folder / f"tokens_{split}.npy", mmap_mode="r")
        if arr.dtype != np.int32 or arr.ndim != 1 or arr.size != meta[split]["n_tokens"]:
            raise ValueError(f"{folder}/tokens_{split}.npy does not match its meta file")
        arrays[split] = arr
    return TokenData(folder, tok, arrays["train"], arrays["val"], meta)


def _concat(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    eot = tok.eot_id
    parts = []
    for ids in tok.encode_batch(docs):
        parts.append(np.asarray(ids, dtype=np.int32))
        if eot is not None:  # a given tokenizer may have no end-of-text token: documents then simply join
            parts.append(np.asarray([eot], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    def write(fd: int) -> None:
        with os.fdopen(fd, "wb", closefd=False) as fh:
            np.save(fh, arr)

    atomic_write(path, write)


class BatchSampler:
    """Non-overlapping windows of seq_len+1 tokens in a seeded per-epoch order.

    Its whole state is (epoch, cursor), saved in every checkpoint so a resumed run sees
    exactly the batches an uninterrupted one would. With world > 1 each rank takes its own
    stride of the same permutation.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < batch_size * world:
            raise CorpusError(
                f"corpus too small: {len(tokens):,} tokens make {self.n_windows} windows of {seq_len}, "
                f"fewer than one batch of {batch_size * world}; use a larger corpus or a smaller --seq-len"
            )
        self.epoch = 0
        self.cursor = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
        return perm[self.rank :: self.world]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seq_len": self.seq_len, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self._order = self._epoch_order(self.epoch)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(self.batch_size):
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._epoch_order(self.epoch)
            start = int(self._order[self.cursor]) * self.seq_len
            rows.append(self.tokens[start : start + self.seq_len + 1])
            self.cursor += 1
        block = torch.from_numpy(np.stack(rows).astype(np.int64))
        return block[:, :-1], block[:, 1:]


def val_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int):
    """Consecutive validation windows, the same ones every evaluation."""
    n_windows = (len(tokens) - 1) // seq_len
    n_batches = min(max_batches, n_windows // batch_size)
    if n_batches == 0 and n_windows > 0:  # tiny validation split: one short batch
        batch_size, n_batches = n_windows, 1
    for b in range(n_batches):
        rows = [tokens[(b * batch_size + i) * seq_len : (b * batch_size + i) * seq_len + seq_len + 1] for i in range(batch_size)]
        block = torch.from_numpy(np.stack(rows).astype(np.int64))
        yield block[:, :-1], block[:, 1:]
