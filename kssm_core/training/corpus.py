"""Where training text comes from: a .txt file, a folder of .txt files, JSON lines, or the embedded default."""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CORPUS_NAME = "python-docs"


class CorpusError(Exception):
    """The corpus cannot be read; the message says what to do next."""


@dataclass
class Corpus:
    name: str
    documents: list[str]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(doc.encode("utf-8", "replace"))
            h.update(b"\x00")
        return h.hexdigest()[:16]

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def load_corpus(source: str | None) -> Corpus:
    """Read a corpus. None means the embedded default, which needs no download."""
    if source is None or source in ("", "default", DEFAULT_CORPUS_NAME):
        return embedded_default_corpus()
    path = Path(source).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus not found: {path} (give a .txt file, a folder of .txt files, or a .jsonl file)")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"no .txt files under {path}")
        docs = [_read_text(p) for p in files]
    elif path.suffix in (".jsonl", ".json"):
        docs = _read_jsonl(path)
    else:
        docs = [_read_text(path)]
    docs = [d for d in docs if d.strip()]
    if not docs or sum(len(d) for d in docs) < 1000:
        raise CorpusError(f"corpus {path} holds under 1,000 characters of text: too little to train on")
    return Corpus(str(path), docs)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from exc


def _read_jsonl(path: Path) -> list[str]:
    docs: list[str] = []
    bad = 0
    with open(path, "rb") as fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad += 1
                continue
            text = obj.get("text") if isinstance(obj, dict) else None
            if isinstance(text, str):
                docs.append(text)
            else:
                bad += 1
    if not docs:
        raise CorpusError(f"{path}: no JSON line with a string 'text' field ({bad} unreadable lines)")
    return docs


def embedded_default_corpus() -> Corpus:
    """English prose that ships with every CPython: the help topics of pydoc (the language
    reference), plus the standard library's docstrings where pydoc_data was stripped out."""
    docs: list[str] = []
    try:
        from pydoc_data.topics import topics  # type: ignore[import-not-found]

        docs = [topics[k] for k in sorted(topics)]
    except ImportError:
        pass
    if sum(len(d) for d in docs) < 200_000:
        docs.extend(_stdlib_docstrings())
    if not docs:
        raise CorpusError("this Python ships neither pydoc_data nor stdlib sources; pass --corpus FILE")
    return Corpus(DEFAULT_CORPUS_NAME, docs)


def _stdlib_docstrings(limit_chars: int = 3_000_000) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    docs.append(doc)
                    total += len(doc)
        if total > limit_chars:
            break
    return docs
