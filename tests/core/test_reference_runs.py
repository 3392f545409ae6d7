"""Run folders written by the reference trainer (tests/fixtures/reference-runs/): every kssm command leaves
their bytes as they are (or, with --adopt, moves them whole to previous/), and their checkpoints are
first-class inputs: --init-from and kssm eval take the architecture from the tensors, --tokenizer chars
gives the reference's character fallback, and a checkpoint that does not fit is one line."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kssm_testkit import REPO, TINY_ARGS, read_events
from kssm_core.cli import main

FIXTURES = REPO / "tests" / "fixtures" / "reference-runs"
# (V, D, L, N, H, position rows) of each reference folder's model, from its README
SHAPES = {"finished": (256, 96, 3, 24, 8, 1024), "crashed": (256, 64, 2, 16, 8, 1024)}
WEIGHTS = {"finished": "best_model.pt", "crashed": "checkpoint_100.pt"}
# TINY_ARGS without --preset: the shape comes from the checkpoint
SMALL = tuple(a for i, a in enumerate(TINY_ARGS) if a != "--preset" and (i == 0 or TINY_ARGS[i - 1] != "--preset"))
EVAL_SMALL = ("--device", "cpu", "--windows", "4", "--seq-len", "32", "--gen-tokens", "8", "--samples", "1")


@pytest.fixture(autouse=True)
def _quiet_trainer(tmp_path, monkeypatch):
    """In-process trainers install no signal handlers (pytest owns SIGINT); the status cache stays in tmp."""
    from kssm_core.training import trainer

    monkeypatch.setattr(trainer.StopFlag, "install", lambda self: None)
    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "status-cache"))


def dead_pid() -> int:
    import psutil

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not psutil.pid_exists(p.pid)
    return p.pid


@pytest.fixture
def refs(tmp_path) -> dict[str, Path]:
    """Private copies of both reference folders; the crashed run's bare-PID lock names a PID known dead."""
    out = {}
    for name in ("finished", "crashed"):
        out[name] = Path(shutil.copytree(FIXTURES / name, tmp_path / "runs" / name))
    (out["crashed"] / "training.lock").write_text(f"{dead_pid()}\n")  # the reference writes a bare PID
    return out


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under folder: a file's sha256, a link's target, a folder as such. Links are not followed."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---- the fixtures themselves ---------------------------------------------------------------------------------


def test_the_fixtures_are_the_reference_trainers_bytes():
    """SHA256SUMS was taken from the reference trainer's own folders when they were copied (README.md)."""
    listed = {}
    for line in (FIXTURES / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        listed[rel] = digest
    present = {str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*")
               if p.is_file() and p.name not in ("README.md", "SHA256SUMS")}
    assert present == set(listed)
    for rel, digest in listed.items():
        assert hashlib.sha256((FIXTURES / rel).read_bytes()).hexdigest() == digest, rel


def test_a_reference_folder_is_foreign_and_ours_is_not(refs, tmp_path):
    from kssm_core.runfolder.foreign import foreign_run
    from kssm_core.training import checkpoint as ckpt

    crashed = foreign_run(refs["crashed"])
    assert crashed.whole and sorted(p.name for p in crashed.files) == [
        "best_model.pt", "checkpoint_100.pt", "training.lock", "training.log"]
    assert crashed.newest_weights() == refs["crashed"] / "checkpoint_100.pt"
    assert foreign_run(refs["finished"]).newest_weights() == refs["finished"] / "best_model.pt"
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "training.lock").write_text("{}")  # a kssm trainer that has only taken its lock yet
    (ours / "trainer.out").write_text("")
    assert foreign_run(ours) is None
    (ours / "events.jsonl").write_text("")
    shutil.copy(refs["crashed"] / "best_model.pt", ours / "best_model.pt")  # a reference file among ours
    stray = foreign_run(ours)
    assert not stray.whole and [p.name for p in stray.files] == ["best_model.pt"]
    assert foreign_run(ours, check_formats=False) is None  # the cheap test reads names only
    copied = tmp_path / "copied"  # only our own checkpoint, copied into a new folder to resume there
    copied.mkdir()
    ckpt.atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": 6, "model_state": {}}, copied / "checkpoint_6.pt")
    assert foreign_run(copied) is None
    assert foreign_run(copied, check_formats=False) is not None  # names alone cannot tell: foreign, to be safe
    shutil.copy(refs["finished"] / "best_model.pt", copied / "best_model.pt")
    assert foreign_run(copied).whole


# ---- 1. never modify what this project did not write --------------------------------------------------------


@pytest.mark.parametrize("name", ["finished", "crashed"])
def test_every_command_leaves_a_reference_run_byte_for_byte(refs, name, tmp_path, capsys):
    d = refs[name]
    before = snapshot(d)
    neighbours = sorted(p.name for p in d.parent.iterdir())
    weights = str(d / WEIGHTS[name])
    train = ["train", "--output-dir", str(d), "--data-dir", str(tmp_path / "cache"), *SMALL, "--max-steps", "2"]
    commands = [
        (train, 2),
        ([*train, "--resume"], 2),
        ([*train, "--init-from", weights, "--tokenizer", "chars"], 2),
        ([*train, "--resume", "--init-from", weights, "--tokenizer", "chars"], 2),
        (["unlock", str(d)], 1 if name == "crashed" else 0),
        (["unlock", "--force", str(d)], 1 if name == "crashed" else 0),
        (["clean", str(d), "--dry-run"], 0),
        (["clean", str(d), "--yes"], 0),
        (["clean", str(d), "--yes", "--keep", "0"], 0),
        (["eval", "benchmark", "--model", str(d / "best_model.pt"), "--tokenizer", "chars", *EVAL_SMALL], 2),
        (["eval", "samples", "--model", str(d / "best_model.pt"), "--tokenizer", "chars", "--out", str(d), *EVAL_SMALL], 2),
        (["status", str(d)], None),
        (["status", str(d), "--json"], None),
        (["data", "check", "--tokenizer", "chars", "--data-dir", str(tmp_path / "cache"), "--sample-tokens", "20"], 0),
    ]
    for argv, code in commands:
        rc = main(argv)
        err = capsys.readouterr().err
        if code is not None:
            assert rc == code, (argv, err)
        if code == 2 or (code == 1 and argv[0] == "unlock"):
            line = one_line(err)  # a refusal is one line, no traceback
            assert "another trainer" in line, line
        assert snapshot(d) == before, argv
        assert sorted(p.name for p in d.parent.iterdir()) == neighbours, argv  # nothing written beside it either


@pytest.mark.parametrize("name", ["finished", "crashed"])
def test_train_refuses_a_reference_folder_with_the_two_ways_on(refs, name, tmp_path, capsys):
    d = refs[name]
    rc = main(["train", "--output-dir", str(d), "--data-dir", str(tmp_path / "cache"), *SMALL, "--max-steps", "2"])
    line = one_line(capsys.readouterr().err)
    assert rc == 2
    assert line.startswith(f"kssm train: {d} holds a run written by another trainer (")
    assert "training.log" in line and "no events.jsonl" in line
    assert f"--output-dir NEW --init-from {d / WEIGHTS[name]} --tokenizer chars" in line
    assert "--adopt" in line and "previous" in line


@pytest.mark.parametrize("name", ["finished", "crashed"])
def test_adopt_moves_the_whole_reference_run_to_previous_then_trains(refs, name, tmp_path):
    d = refs[name]
    before = snapshot(d)
    rc = main(["train", "--output-dir", str(d), "--adopt", "--init-from", str(d / WEIGHTS[name]), "--tokenizer", "chars",
               "--data-dir", str(tmp_path / "cache"), *SMALL, "--max-steps", "2", "--eval-interval", "1"])
    assert rc == 0
    (archive,) = (d / "previous").iterdir()
    assert snapshot(archive) == before  # every file, byte for byte, by rename
    events = read_events(d)
    (w,) = [e for e in events if e["event"] == "warning" and e["code"] == "foreign_run_adopted"]
    assert str(archive) in w["message"]
    (start,) = [e for e in events if e["event"] == "run_start"]
    assert start["config"]["init_from"] == str(archive / WEIGHTS[name])  # followed to its new place
    mc = start["model_config"]
    assert (mc["vocab_size"], mc["d_model"], mc["n_layers"], mc["n_oscillators"], mc["n_harmonics"],
            mc["max_seq_len"]) == SHAPES[name]
    assert not (d / "training.lock").exists()  # ours, released; the reference's is in the archive


def test_adopt_refuses_while_the_reference_trainer_is_alive(refs, tmp_path, sleeper, capsys):
    d = refs["crashed"]
    (d / "training.lock").write_text(f"{sleeper.pid}\n")
    before = snapshot(d)
    rc = main(["train", "--output-dir", str(d), "--adopt", "--data-dir", str(tmp_path / "cache"), *SMALL])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "still running" in line and str(sleeper.pid) in line
    assert snapshot(d) == before


def test_resume_with_nothing_of_ours_to_resume_archives_the_run_first(tmp_path, data_dir):
    """A run of ours killed before its first checkpoint: --resume moves its files aside exactly like a fresh start."""
    d = tmp_path / "run"
    rc = main(["train", "--output-dir", str(d), "--data-dir", str(data_dir), *TINY_ARGS, "--max-steps", "1"])
    assert rc == 0
    for p in d.glob("*.pt"):  # as if SIGKILLed before its first save
        p.unlink()
    old = snapshot(d)
    rc = main(["train", "--output-dir", str(d), "--data-dir", str(data_dir), *TINY_ARGS, "--max-steps", "2", "--resume"])
    assert rc == 0
    (archive,) = (d / "previous").iterdir()
    assert snapshot(archive) == {k: v for k, v in old.items() if k != "training.lock"}
    events = read_events(d)
    assert [e["event"] for e in events][:1] == ["schema"]  # a fresh events.jsonl: nothing appended to the old
    codes = [e["code"] for e in events if e["event"] == "warning"]
    assert "previous_run_archived" in codes and "nothing_to_resume" in codes
    assert [e["max_steps"] for e in events if e["event"] == "run_start"] == [2]


def test_the_saver_never_replaces_a_file_kssm_did_not_write(refs, tmp_path):
    from kssm_core.training import checkpoint as ckpt
    from kssm_core.training.saving import CheckpointSaver

    d = tmp_path / "ours"
    d.mkdir()
    warned = []
    saver = CheckpointSaver(d, None, None, model=None, opt=None, sched=None, sampler=None, data=None, progress=None,
                            events=None, say=print, warn=lambda *a: warned.append(a), last_bytes=None, saved_step=None)
    assert saver.may_write("best_model.pt")  # nothing there yet
    shutil.copy(refs["crashed"] / "best_model.pt", d / "best_model.pt")
    assert not saver.may_write("best_model.pt") and warned[-1][0] == "foreign_file_kept"
    ckpt.atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": 1, "model_state": {}}, d / "checkpoint_1.pt")
    assert saver.may_write("checkpoint_1.pt")  # ours (an earlier part of this run)
    (d / "checkpoint_2.pt").symlink_to(refs["crashed"] / "checkpoint_100.pt")
    assert not saver.may_write("checkpoint_2.pt")  # a link is never replaced (nor followed)
    assert not saver.ours(d / "best_model.pt")  # and prune() is asked the same question


# ---- 2. reference checkpoints as inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["finished", "crashed"])
def test_init_from_a_reference_checkpoint_trains_with_its_shape_and_resume_keeps_the_tokenizer(refs, name, tmp_path):
    src = refs[name] / WEIGHTS[name]
    before = snapshot(refs[name])
    out, cache = tmp_path / "new", tmp_path / "cache"
    rc = main(["train", "--output-dir", str(out), "--init-from", str(src), "--tokenizer", "chars", "--data-dir", str(cache),
               *SMALL, "--max-steps", "3", "--eval-interval", "1", "--save-interval", "3"])
    assert rc == 0
    assert snapshot(refs[name]) == before
    events = read_events(out)
    (start,) = [e for e in events if e["event"] == "run_start"]
    mc = start["model_config"]
    assert (mc["vocab_size"], mc["d_model"], mc["n_layers"], mc["n_oscillators"], mc["n_harmonics"],
            mc["max_seq_len"]) == SHAPES[name]
    assert start["config"]["tokenizer"] == "chars" and start["config"]["preset"] is None
    # the reference's weights were loaded: an untrained char model scores about ln(256) = 5.55
    first_eval = next(e for e in events if e["event"] == "eval")
    assert first_eval["val_ce"] < 4.8, first_eval
    from kssm_core.training.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint_3.pt")["tokenizer_spec"] == "chars"
    shutil.rmtree(cache)  # resume rebuilds the token cache with the recorded tokenizer, not a new BPE
    rc = main(["train", "--output-dir", str(out), "--resume", "--max-steps", "4", "--data-dir", str(cache), "--quiet"])
    assert rc == 0
    last = [e for e in read_events(out) if e["event"] == "run_start"][-1]
    assert last["start_step"] == 3 and last["config"]["tokenizer"] == "chars" and last["model_config"] == mc
    assert next(cache.iterdir()).name.endswith("-chars-v2")


def test_eval_benchmark_scores_a_reference_best_model(refs, tmp_path, capsys):
    d = refs["finished"]
    before = snapshot(d)
    model = str(d / "best_model.pt")
    assert main(["eval", "benchmark", "--model", model, "--tokenizer", "chars", *EVAL_SMALL]) == 2
    assert "--out" in one_line(capsys.readouterr().err)  # its own folder is not ours to write into
    out = tmp_path / "finished-eval"
    rc = main(["eval", "benchmark", "--model", model, "--tokenizer", "chars", "--out", str(out), "--json", *EVAL_SMALL])
    d_json = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and d_json["suite"] == "benchmark" and d_json["step"] == 120
    (ppl,) = [c for c in d_json["criteria"] if c["name"] == "held-out perplexity"]
    assert math.isfinite(ppl["value"]) and ppl["value"] < 256  # better than chance over 256 characters
    assert (out / "eval" / "benchmark.json").is_file()
    assert snapshot(d) == before


# ---- 3. one-line errors for a checkpoint that does not fit ------------------------------------------------------


def test_a_preset_that_does_not_fit_the_checkpoint_is_one_line_everywhere(refs, tmp_path, capsys):
    src = refs["crashed"] / "best_model.pt"
    out = tmp_path / "new"
    rc = main(["train", "--output-dir", str(out), "--init-from", str(src), "--preset", "small", "--tokenizer", "chars",
               "--data-dir", str(tmp_path / "cache"), *SMALL, "--max-steps", "2"])
    err = capsys.readouterr().err
    expected = (f"{src} is D=64 L=2 N=16 H=8 V=256; --preset small builds D=256 L=4 N=64 H=16: "
                "drop --preset to take the checkpoint's")
    assert rc == 2 and one_line(err) == f"kssm train: {expected}" and "Traceback" not in err
    (end,) = [e for e in read_events(out) if e["event"] == "run_end"]
    assert end["status"] == "failed" and end["reason"] == expected
    assert (out / "training.log").read_text().splitlines()[-1].endswith(f"RUN END: failed ({expected})")


def test_a_reference_checkpoint_without_a_tokenizer_asks_for_one(refs, tmp_path, capsys):
    src = refs["finished"] / "best_model.pt"
    rc = main(["train", "--output-dir", str(tmp_path / "new"), "--init-from", str(src),
               "--data-dir", str(tmp_path / "cache"), *SMALL, "--max-steps", "2"])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "holds no tokenizer" in line and "--tokenizer chars" in line
    assert not (tmp_path / "cache").exists()  # refused before building any token cache


def test_a_tokenizer_larger_than_the_checkpoints_vocabulary_is_one_line(refs, tmp_path, data_dir, capsys):
    src = refs["crashed"] / "best_model.pt"
    tok = next(data_dir.iterdir()) / "tokenizer.json"  # the embedded corpus's 4096-token BPE
    rc = main(["train", "--output-dir", str(tmp_path / "new"), "--init-from", str(src), "--tokenizer", str(tok),
               "--data-dir", str(tmp_path / "cache"), *SMALL, "--max-steps", "2"])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "4,096 tokens" in line and "V=256" in line and "--tokenizer chars" in line


# ---- 4. --tokenizer -------------------------------------------------------------------------------------------------


def test_chars_is_the_reference_character_fallback():
    from kssm_core.training.tokenizer_choice import resolve_tokenizer

    tok = resolve_tokenizer("chars")
    assert tok.vocab_size == 256 and tok.eot_id == 0
    assert tok.encode("Hé€") == [ord("H"), ord("é"), ord("€") % 256]
    assert tok.decode([72, 105]) == "Hi"
    assert tok.encode_batch(["ab", ""]) == [[97, 98], []]


def test_tiktoken_not_installed_is_one_line(monkeypatch):
    from kssm_core.training.tokenizer_choice import TokenizerError, resolve_tokenizer

    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails
    with pytest.raises(TokenizerError) as info:
        resolve_tokenizer("tiktoken:cl100k_base")
    msg = str(info.value)
    assert "\n" not in msg and "not installed" in msg and "TIKTOKEN_CACHE_DIR" in msg and "never downloads" in msg


def _fake_tiktoken(monkeypatch, cached: bool):
    """A tiktoken whose get_encoding reads its file through tiktoken.load.read_file, as the real one does on a
    cache miss; `fetched` records every URL that reached the real read_file (a download)."""
    fetched = []
    load = types.ModuleType("tiktoken.load")

    def read_file(blobpath):
        fetched.append(blobpath)
        return b""

    load.read_file = read_file
    pkg = types.ModuleType("tiktoken")
    pkg.load = load

    def get_encoding(name):
        if not cached:
            load.read_file(f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken")
        return types.SimpleNamespace(n_vocab=100_277, eot_token=100_257, encode=lambda t, allowed_special=(): [1, 2],
                                     encode_batch=lambda ts, allowed_special=(): [[1]] * len(ts), decode=lambda ids: "x")

    pkg.get_encoding = get_encoding
    monkeypatch.setitem(sys.modules, "tiktoken", pkg)
    monkeypatch.setitem(sys.modules, "tiktoken.load", load)
    return fetched, load, read_file


def test_tiktoken_without_its_encoding_file_never_downloads(monkeypatch):
    from kssm_core.training.tokenizer_choice import TokenizerError, resolve_tokenizer

    fetched, load, real = _fake_tiktoken(monkeypatch, cached=False)
    with pytest.raises(TokenizerError) as info:
        resolve_tokenizer("tiktoken:cl100k_base")
    assert fetched == [] and load.read_file is real  # blocked, and tiktoken restored afterwards
    assert "\n" not in str(info.value) and "not on this machine" in str(info.value)


def test_tiktoken_with_its_encoding_file_is_used(monkeypatch):
    from kssm_core.training.tokenizer_choice import resolve_tokenizer

    fetched, _, _ = _fake_tiktoken(monkeypatch, cached=True)
    tok = resolve_tokenizer("tiktoken:cl100k_base")
    assert fetched == [] and tok.vocab_size == 100_277 and tok.eot_id == 100_257
    assert tok.record() == {"tokenizer_spec": "tiktoken:cl100k_base"}


def test_an_unusable_tokenizer_spec_is_one_line(tmp_path):
    from kssm_core.training.tokenizer_choice import TokenizerError, resolve_tokenizer

    with pytest.raises(TokenizerError, match="no such file"):
        resolve_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError) as info:
        resolve_tokenizer(str(bad))
    assert "\n" not in str(info.value) and "not a tokenizers JSON file" in str(info.value)


def test_init_from_without_preset_records_none_and_a_typed_preset_stays():
    from kssm_core.cli import build_parser
    from kssm_core.commands.train import config_from_args

    cfg, _ = config_from_args(build_parser().parse_args(["train", "--init-from", "x.pt"]))
    assert cfg.preset is None and cfg.resolve().preset is None and cfg.resolve().seq_len == 128  # tiny's training shape
    cfg, _ = config_from_args(build_parser().parse_args(["train", "--init-from", "x.pt", "--preset", "small"]))
    assert cfg.preset == "small"
    cfg, _ = config_from_args(build_parser().parse_args(["train"]))
    assert cfg.resolve().preset == "tiny"


def test_no_output_folder_may_sit_inside_a_reference_run(refs, tmp_path, capsys):
    """export, report, eval and train refuse an output anywhere under another trainer's run folder (QA: finished/sub)."""
    before = {n: snapshot(d) for n, d in refs.items()}
    fin = refs["finished"]
    other = refs["crashed"]  # another run exported / reported *into* the finished reference folder
    for argv in (["export", str(other), "--format", "csv", "--out", str(fin / "exp")],
                 ["report", str(other), "--out", str(fin / "rep"), "--no-figures"],
                 ["eval", "benchmark", "--model", str(fin / "best_model.pt"), "--tokenizer", "chars",
                  "--out", str(fin / "sub")],
                 # the trainer too: --adopt takes over the folder itself, never a folder above its output
                 ["train", "--output-dir", str(fin / "sub" / "run"), "--data-dir", str(tmp_path / "cache"), *SMALL,
                  "--max-steps", "2"],
                 ["train", "--output-dir", str(fin / "sub"), "--adopt", "--data-dir", str(tmp_path / "cache"), *SMALL,
                  "--max-steps", "2"]):
        assert main(argv) != 0, argv
        err = capsys.readouterr().err
        assert "writes nothing" in err and "\n" not in err.strip(), err
    assert {n: snapshot(d) for n, d in refs.items()} == before


@pytest.mark.parametrize("name", ["finished", "crashed"])
@pytest.mark.parametrize("inside", ["", "sub", "sub/deeper"])
def test_no_token_cache_is_built_in_a_reference_run(refs, name, inside, tmp_path, capsys):
    """Issue 13: `kssm data check --data-dir` and `kssm train --data-dir` at or under another trainer's run folder
    refuse in one line (exit 2) and leave its bytes, and the folders beside it, as they were."""
    d = refs[name]
    data_dir = d / inside if inside else d
    before = snapshot(d)
    neighbours = sorted(p.name for p in d.parent.iterdir())
    out = tmp_path / "ours" / "run"  # our own run folder: only --data-dir points into the reference run
    for argv in (["data", "check", "--tokenizer", "chars", "--data-dir", str(data_dir), "--sample-tokens", "20"],
                 ["data", "check", "--data-dir", str(data_dir)],  # the default: a BPE trained on the corpus
                 ["train", "--output-dir", str(out), "--data-dir", str(data_dir), *TINY_ARGS, "--max-steps", "2"],
                 ["train", "--output-dir", str(out), "--data-dir", str(data_dir), "--tokenizer", "chars",
                  "--init-from", str(d / WEIGHTS[name]), *SMALL, "--max-steps", "2"]):
        rc = main(argv)
        line = one_line(capsys.readouterr().err)
        assert rc == 2, (argv, line)
        prog = "kssm data check" if argv[0] == "data" else "kssm train"
        where = "holds a run" if not inside else f"is inside {d}, which holds a run"
        assert line.startswith(f"{prog}: --data-dir {data_dir} {where} written by another trainer ("), line
        assert "kssm writes nothing there" in line and "pass a --data-dir outside it" in line, line
        assert snapshot(d) == before, argv
        assert sorted(p.name for p in d.parent.iterdir()) == neighbours, argv
    # our own run folder says why in its run_end, like any refusal
    ends = [e for e in read_events(out) if e["event"] == "run_end"]
    assert ends and all(e["status"] == "failed" and "--data-dir" in e["reason"] for e in ends)


def test_a_cache_beside_a_reference_run_is_built_and_one_inside_it_only_read(refs, tmp_path, capsys):
    """The guard is where a cache would be built: a --data-dir beside a reference run still works, and a cache
    that is already inside one (copied there by hand) is read, not rebuilt nor touched."""
    beside = refs["finished"].parent / "cache"
    argv = ["data", "check", "--tokenizer", "chars", "--sample-tokens", "20", "--data-dir"]
    assert main([*argv, str(beside)]) == 0, capsys.readouterr().err
    d = refs["crashed"]
    shutil.copytree(beside, d / "cache")
    before = snapshot(d)
    assert main([*argv, str(d / "cache")]) == 0, capsys.readouterr().err
    assert str(d / "cache") in capsys.readouterr().out
    assert snapshot(d) == before
