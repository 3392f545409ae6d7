"""Offline data: corpus formats, clear errors, the embedded default, the token cache, the tokenizer
saved beside it (reproducible), the resumable batch order, and `kssm data check`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kssm_testkit import run_kssm
from kssm_core.cli import main
from kssm_core.training.corpus import DEFAULT_CORPUS_NAME, CorpusError, embedded_default_corpus, load_corpus
from kssm_core.training.data import BatchSampler, load_tokens, prepare_tokens, val_batches

VOCAB = 400  # small: a BPE of this size trains in a fraction of a second


@pytest.fixture(scope="module")
def prose() -> list[str]:
    """Real English prose that exists on every machine: a slice of the embedded default corpus."""
    docs = embedded_default_corpus().documents
    return [d for d in docs if len(d) > 2000][:30]


def test_embedded_default_corpus_is_real_prose_and_needs_no_download():
    c = load_corpus(None)
    assert c.name == DEFAULT_CORPUS_NAME
    assert c.n_chars > 200_000
    text = " ".join(c.documents[:50])
    assert text.count(" the ") > 100  # English prose, not code or binary
    assert load_corpus("default").fingerprint() == c.fingerprint()


def test_txt_file(tmp_path, prose):
    f = tmp_path / "book.txt"
    f.write_text("\n\n".join(prose[:3]), encoding="utf-8")
    c = load_corpus(str(f))
    assert c.documents == ["\n\n".join(prose[:3])]


def test_folder_of_txt_files_recursively_and_only_txt(tmp_path, prose):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text(prose[0])
    (tmp_path / "sub" / "b.txt").write_text(prose[1])
    (tmp_path / "notes.md").write_text("ignored " * 500)
    (tmp_path / "empty.txt").write_text("   \n")
    c = load_corpus(str(tmp_path))
    assert c.documents == [prose[0], prose[1]]


def test_jsonl_with_text_field_skips_bad_lines(tmp_path, prose):
    f = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": prose[0]}), "not json {", json.dumps({"title": "no text"}), "",
             json.dumps({"text": prose[1], "id": 3})]
    f.write_text("\n".join(lines))
    assert load_corpus(str(f)).documents == [prose[0], prose[1]]


def test_jsonl_without_any_text_is_a_clear_error(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text(json.dumps({"body": "x" * 5000}) + "\n")
    with pytest.raises(CorpusError, match="text"):
        load_corpus(str(f))


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError) as err:
        load_corpus(str(tmp_path / "nope.txt"))
    assert "corpus not found" in str(err.value) and "\n" not in str(err.value)


def test_empty_folder_and_tiny_corpus_are_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="no .txt files"):
        load_corpus(str(tmp_path))
    (tmp_path / "tiny.txt").write_text("Too short to train on.")
    with pytest.raises(CorpusError, match="too little"):
        load_corpus(str(tmp_path / "tiny.txt"))


def test_corpus_too_small_for_one_batch_is_a_clear_error():
    tokens = np.arange(100, dtype=np.int32)
    with pytest.raises(CorpusError, match="corpus too small"):
        BatchSampler(tokens, seq_len=32, batch_size=4, seed=0)


def test_cache_files_meta_and_split(tmp_path, prose):
    corpus = load_corpus(_write(tmp_path, prose))
    calls = []
    data = prepare_tokens(corpus, tmp_path / "cache", VOCAB, log=calls.append)
    assert calls, "a fresh cache should say it is building"
    folder = data.folder
    for name in ("tokenizer.json", "tokens_train.npy", "tokens_val.npy", "tokens_train_meta.json", "tokens_val_meta.json"):
        assert (folder / name).is_file(), name
    assert data.tokenizer.path == folder / "tokenizer.json"  # saved beside the cache
    for split, arr in (("train", data.train), ("val", data.val)):
        meta = json.loads((folder / f"tokens_{split}_meta.json").read_text())
        assert meta["n_tokens"] == arr.size and arr.dtype == np.int32
        assert isinstance(arr, np.memmap)
        assert arr.min() >= 0 and arr.max() < data.vocab_size
    frac = data.val.size / (data.train.size + data.val.size)
    assert 0.02 < frac < 0.10  # the reference's 95/5 split
    assert data.tokenizer.decode(data.tokenizer.encode("The quick fox.")) == "The quick fox."
    # A second prepare reuses the cache without rebuilding.
    again = []
    prepare_tokens(corpus, tmp_path / "cache", VOCAB, log=again.append)
    assert again == []


def test_same_corpus_gives_the_same_tokenizer_and_tokens(tmp_path, prose):
    corpus = load_corpus(_write(tmp_path, prose))
    a = prepare_tokens(corpus, tmp_path / "a", VOCAB, log=lambda _l: None)
    b = prepare_tokens(corpus, tmp_path / "b", VOCAB, log=lambda _l: None)
    assert a.tokenizer.sha256() == b.tokenizer.sha256()
    assert (a.folder / "tokenizer.json").read_bytes() == (b.folder / "tokenizer.json").read_bytes()
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)


def test_tokenizer_is_reproducible_across_processes(tmp_path, prose):
    # Hash seeds differ between processes; the BPE must not depend on them.
    src = _write(tmp_path, prose[:10])
    shas = []
    for name in ("p1", "p2"):
        r = run_kssm("data", "check", "--corpus", src, "--data-dir", str(tmp_path / name), "--vocab-size", str(VOCAB))
        assert r.returncode == 0, r.stderr
        shas.append(next(line for line in r.stdout.splitlines() if line.startswith("tokenizer:")).split("sha256 ")[1])
    assert shas[0] == shas[1]


def test_damaged_cache_is_rebuilt(tmp_path, prose):
    corpus = load_corpus(_write(tmp_path, prose))
    data = prepare_tokens(corpus, tmp_path / "cache", VOCAB, log=lambda _l: None)
    n = data.train.size
    meta = data.folder / "tokens_train_meta.json"
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), n_tokens=n + 5)))
    with pytest.raises(ValueError):
        load_tokens(data.folder)
    rebuilt = prepare_tokens(corpus, tmp_path / "cache", VOCAB, log=lambda _l: None)
    assert rebuilt.train.size == n


def test_batch_sampler_windows_targets_and_resumable_order():
    tokens = np.arange(10_000, dtype=np.int32)
    s = BatchSampler(tokens, seq_len=16, batch_size=4, seed=7)
    x, y = s.next_batch()
    assert x.shape == (4, 16) and y.shape == (4, 16)
    assert np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())  # y is x shifted by one
    assert all(int(row[0]) % 16 == 0 for row in x)  # non-overlapping windows
    for _ in range(200):  # past the end of an epoch (624 windows / 4 = 156 batches)
        s.next_batch()
    saved = s.state_dict()
    ahead = [s.next_batch()[0] for _ in range(5)]
    t = BatchSampler(tokens, seq_len=16, batch_size=4, seed=7)
    t.load_state_dict(saved)
    assert saved["epoch"] == 1
    for want in ahead:
        assert np.array_equal(t.next_batch()[0].numpy(), want.numpy())
    other = BatchSampler(tokens, seq_len=16, batch_size=4, seed=8)
    assert not np.array_equal(other.next_batch()[0].numpy(), BatchSampler(tokens, 16, 4, 7).next_batch()[0].numpy())


def test_an_epoch_visits_every_window_once():
    tokens = np.arange(16 * 20 + 1, dtype=np.int32)
    s = BatchSampler(tokens, seq_len=16, batch_size=5, seed=1)
    starts = sorted(int(row[0]) for _ in range(4) for row in s.next_batch()[0])
    assert starts == [16 * i for i in range(20)]


def test_val_batches_are_the_same_every_time():
    tokens = np.arange(5000, dtype=np.int32)
    a = [x for x, _ in val_batches(tokens, 32, 4, 3)]
    b = [x for x, _ in val_batches(tokens, 32, 4, 3)]
    assert len(a) == 3 and all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(a, b))
    short = list(val_batches(np.arange(100, dtype=np.int32), 32, 8, 5))  # fewer windows than a batch
    assert len(short) == 1 and short[0][0].shape == (3, 32)


def test_kssm_data_check_prints_counts_and_a_decoded_sample(data_dir, capsys):
    assert main(["data", "check", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    data = load_tokens(next(p for p in data_dir.iterdir() if p.is_dir()))
    assert fields["train"].strip() == f"{data.train.size:,} tokens"
    assert fields["val"].strip() == f"{data.val.size:,} tokens"
    assert fields["bad ids"].strip() == "0"
    sample = fields["sample"].strip()
    assert sample.startswith("'") and len(sample) > 40
    assert data.tokenizer.sha256() in fields["tokenizer"]


def test_kssm_data_check_missing_corpus_is_one_line(tmp_path, capsys):
    assert main(["data", "check", "--corpus", str(tmp_path / "missing.txt"), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corpus not found" in err


def _write(folder, docs) -> str:
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return str(path)
