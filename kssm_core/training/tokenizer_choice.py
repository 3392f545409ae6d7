"""`--tokenizer SPEC`: the tokenizers a run can use besides the BPE trained on its corpus.

- a tokenizers JSON file (path): loaded as it is;
- `chars`: the reference trainer's character fallback (used when tiktoken is missing): 256 ids,
  token = ord(c) % 256, decode = chr(t), end-of-text id 0;
- `tiktoken:NAME` (e.g. cl100k_base, the reference's BPE): only when the tiktoken package and its
  encoding file are already on this machine. Nothing here ever downloads: the fetch is blocked.

The spec is recorded in the run's config (so --resume rebuilds the same one) and in its checkpoints
(`tokenizer_spec`, or `tokenizer_json` for a JSON file) so evaluation finds it again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from kssm_core.training.corpus import CorpusError

CHARS = "chars"
TIKTOKEN_PREFIX = "tiktoken:"
EOT = "<|endoftext|>"


class TokenizerError(CorpusError):
    """The tokenizer asked for cannot be used here; the message is one line saying what to do."""


class CharTokenizer:
    """The reference's fallback: one id per character, ord(c) % 256 (so it is lossy above U+00FF)."""

    spec = CHARS
    path = None
    vocab_size = 256
    eot_id = 0  # the reference's eos_token_id without tiktoken

    def encode(self, text: str) -> list[int]:
        return self._ids(text).tolist()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @staticmethod
    def _ids(text: str) -> np.ndarray:
        # UTF-32 gives one code point per 4 bytes: the whole corpus at numpy speed, not a Python loop
        return (np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) % 256).astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(chr(int(t)) for t in ids)

    def sha256(self) -> str:
        return hashlib.sha256(b"kssm-chars/1 ord(c) % 256").hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        return {"tokenizer_spec": self.spec}

    def cache_tag(self) -> str:
        return "chars"


class TiktokenTokenizer:
    """A tiktoken encoding read from the local cache (TIKTOKEN_CACHE_DIR)."""

    path = None

    def __init__(self, name: str, enc):
        self.name, self._enc = name, enc
        self.spec = TIKTOKEN_PREFIX + name

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)

    @property
    def eot_id(self) -> int:
        return int(self._enc.eot_token)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special={EOT})  # as the reference encodes

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_batch(texts, allowed_special={EOT})

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids])

    def sha256(self) -> str:
        return hashlib.sha256(f"tiktoken/{self.name}/{self.vocab_size}".encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        return {"tokenizer_spec": self.spec}

    def cache_tag(self) -> str:
        return f"tiktoken-{self.name}"


class _NoDownload(Exception):
    pass


def _how_to_provide(name: str) -> str:
    return (f"on a machine with internet run: pip install tiktoken && python -c \"import tiktoken; "
            f"tiktoken.get_encoding('{name}')\", then copy its cache folder here and set TIKTOKEN_CACHE_DIR to it "
            f"(kssm never downloads); or use --tokenizer chars or a tokenizers JSON file")


def load_tiktoken(name: str) -> TiktokenTokenizer:
    """The named encoding from tiktoken's local cache only; TokenizerError when it is not on this machine."""
    try:
        import tiktoken
        import tiktoken.load as tiktoken_load
    except ImportError as exc:
        raise TokenizerError(f"--tokenizer {TIKTOKEN_PREFIX}{name} needs the tiktoken package, which is not "
                             f"installed: {_how_to_provide(name)}") from exc
    real_read = getattr(tiktoken_load, "read_file", None)

    def local_only(blobpath: str) -> bytes:  # tiktoken calls this on a cache miss: that would be a download
        if "://" in str(blobpath):
            raise _NoDownload(blobpath)
        return real_read(blobpath)

    if real_read is None:  # an unknown tiktoken layout: we cannot prove it would not download
        raise TokenizerError(f"--tokenizer {TIKTOKEN_PREFIX}{name}: this tiktoken version cannot be kept offline; "
                             "use --tokenizer chars or a tokenizers JSON file")
    tiktoken_load.read_file = local_only
    try:
        enc = tiktoken.get_encoding(name)
    except _NoDownload as exc:
        raise TokenizerError(f"--tokenizer {TIKTOKEN_PREFIX}{name}: its encoding file is not on this machine: "
                             f"{_how_to_provide(name)}") from exc
    except ValueError as exc:  # an unknown encoding name
        raise TokenizerError(f"--tokenizer {TIKTOKEN_PREFIX}{name}: {str(exc).splitlines()[0][:160]}") from exc
    finally:
        tiktoken_load.read_file = real_read
    return TiktokenTokenizer(name, enc)


def resolve_tokenizer(spec: str):
    """The tokenizer a --tokenizer value names. Raises TokenizerError (one line)."""
    from kssm_core.training.data import Tokenizer

    spec = str(spec).strip()
    if spec == CHARS:
        return CharTokenizer()
    if spec.startswith(TIKTOKEN_PREFIX):
        name = spec[len(TIKTOKEN_PREFIX):]
        if not name:
            raise TokenizerError("--tokenizer tiktoken:NAME needs an encoding name, e.g. tiktoken:cl100k_base")
        return load_tiktoken(name)
    path = Path(spec)
    if not path.is_file():
        raise TokenizerError(f"--tokenizer {spec}: no such file (give a tokenizers JSON file, {CHARS}, "
                             f"or {TIKTOKEN_PREFIX}NAME)")
    try:
        tok = Tokenizer.load(path)
    except CorpusError as exc:
        raise TokenizerError(f"--tokenizer {spec}: not a tokenizers JSON file ({str(exc).splitlines()[0][:160]})") from exc
    tok.spec = spec
    return tok


def has_tokenizer_record(state: dict[str, Any]) -> bool:
    """Whether a checkpoint names its tokenizer (ours do; the reference trainer's do not)."""
    return isinstance(state.get("tokenizer_json"), str) or isinstance(state.get("tokenizer_spec"), str)


def tokenizer_from_record(state: dict[str, Any]):
    """The tokenizer a checkpoint carries (`tokenizer_json` or `tokenizer_spec`), or None (a reference one)."""
    from kssm_core.training.data import Tokenizer

    text = state.get("tokenizer_json")
    if isinstance(text, str):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return Tokenizer(HFTokenizer.from_str(text))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise TokenizerError(f"its embedded tokenizer is damaged ({str(exc).splitlines()[0][:120]}); "
                                 "pass --tokenizer") from exc
    spec = state.get("tokenizer_spec")
    if isinstance(spec, str):
        return resolve_tokenizer(spec)
    return None


def hint_for_vocab(vocab_size: int) -> str:
    """The --tokenizer a checkpoint's vocabulary size suggests (the reference made 256 or 100,277)."""
    if vocab_size == CharTokenizer.vocab_size:
        return f"--tokenizer {CHARS} (V=256: the reference's character fallback)"
    if vocab_size == 100_277:
        return f"--tokenizer {TIKTOKEN_PREFIX}cl100k_base (V=100,277: the reference's BPE)"
    return f"--tokenizer FILE (the tokenizers JSON it was trained with; V={vocab_size:,})"
