"""`kssm data check`: the runbook's "check data loading", offline."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from kssm_core.config import PRESETS


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare or inspect the token cache")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    c = dsub.add_parser("check", help="build (if needed) and show the token cache: counts and a decoded sample")
    c.add_argument("--corpus", help="as for kssm train (default: the embedded corpus)")
    c.add_argument("--data-dir", default="data/cache")
    c.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    c.add_argument("--vocab-size", type=int)
    c.add_argument("--tokenizer", metavar="SPEC", help="as for kssm train: a tokenizers JSON file, chars or tiktoken:NAME")
    c.add_argument("--sample-tokens", type=int, default=100)
    c.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    from kssm_core.training.corpus import CorpusError, load_corpus
    from kssm_core.training.data import ForeignDataDir, prepare_tokens
    from kssm_core.training.tokenizer_choice import resolve_tokenizer

    try:
        given = resolve_tokenizer(args.tokenizer) if args.tokenizer else None
        corpus = load_corpus(args.corpus)
        data = prepare_tokens(corpus, args.data_dir, args.vocab_size or PRESETS[args.preset].vocab_size, tokenizer=given)
    except ForeignDataDir as exc:  # another trainer's run folder: refused, nothing written (exit 2, as kssm train)
        print(f"kssm data check: {exc}", file=sys.stderr)
        return 2
    except CorpusError as exc:
        print(f"kssm data check: {exc}", file=sys.stderr)
        return 1
    train, val = data.train, data.val
    print(f"corpus:     {corpus.name} ({len(corpus.documents):,} documents, {corpus.n_chars:,} characters)")
    print(f"cache:      {data.folder}")
    print(f"tokenizer:  {data.tokenizer.path or data.tokenizer.spec} (vocabulary {data.vocab_size:,}, sha256 {data.tokenizer.sha256()})")
    print(f"train:      {len(train):,} tokens")
    print(f"val:        {len(val):,} tokens")
    head = np.asarray(train[: args.sample_tokens])
    print(f"ids:        {head[:20].tolist()} ...")
    out_of_range = int(((np.asarray(train) < 0) | (np.asarray(train) >= data.vocab_size)).sum())
    print(f"bad ids:    {out_of_range}")
    print("sample:     " + repr(data.tokenizer.decode(head)))
    return 0 if out_of_range == 0 and len(train) > 0 and len(val) > 0 else 1
