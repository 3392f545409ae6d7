"""The typed fast path for step lines (kssm_core.runfolder.steplines) folds exactly what the plain json path folds.

Each test reads the same bytes twice, once with read_new(step_batches=True) and once without, and
compares the folded RunHistory (to_state) and the reader's state (offsets, counts of bad lines).
"""

from __future__ import annotations

import importlib
import json
import math
import random
import sys

import pytest

from kssm_core.runfolder import steplines
from kssm_core.runfolder.history import RunHistory, StepBatch
from kssm_core.runfolder.runlog import MAX_LINE_BYTES, MIN_STEP_RUN, EventLogReader

pytestmark = pytest.mark.skipif(not steplines.available(), reason="msgspec is not installed")


def step_line(step, t=None, **extra) -> bytes:
    rec = {"event": "step", "t": float(step) if t is None else t, "step": step, "loss": 8.0 - step * 1e-3,
           "ce": 7.9, "reg": 0.05, "R": 0.3, "u_val": 1.2, "grad_norm": 2.5, "lr": 1e-3, "tokens_per_s": 12000.0}
    rec.update(extra)
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def other(kind, **fields) -> bytes:
    return json.dumps({"event": kind, "t": 1.0, **fields}, separators=(",", ":")).encode()


def fold(path, step_batches: bool, max_bytes=None) -> tuple[str, dict, int]:
    """(history state, reader state, StepBatch items seen) after reading the whole file."""
    reader, h, batches = EventLogReader(path), RunHistory(), 0
    while True:
        before = reader.offset
        recs = reader.read_new(max_bytes=max_bytes, step_batches=step_batches)
        batches += sum(type(r) is StepBatch for r in recs)
        h.extend(recs)
        if reader.offset == before:
            break
    return json.dumps(h.to_state(), sort_keys=True, default=str), reader.state(), batches


def assert_same(path, max_bytes=None, expect_batches=True) -> int:
    """Both paths give the same history and reader state; returns how many StepBatch items the fast one used."""
    plain_h, plain_r, none = fold(path, False, max_bytes)
    fast_h, fast_r, batches = fold(path, True, max_bytes)
    assert none == 0
    assert fast_h == plain_h
    assert fast_r == plain_r
    if expect_batches:
        assert batches > 0, "the fast path was never taken"
    return batches


def run_of(first: int, n: int, **extra) -> list[bytes]:
    return [step_line(s, **extra) for s in range(first, first + n)]


def mixed_log() -> list[bytes]:
    lines = [other("schema", name="kssm-events", version=1),
             other("run_start", stage=3, max_steps=5000, start_step=0, config={"save_interval": 100})]
    step = 1
    for block in range(12):
        for s in range(step, step + 60):
            lines.append(step_line(s))
            lines.append(other("heartbeat", step=s, phase="train"))
        step += 60
        lines.append(other("eval", step=step - 1, val_loss=5.0, val_ppl=150.0, val_R=0.3))
        lines.append(other("sample", step=step - 1, text="the river \u202e\u0007 ran", nested={"event": "step", "step": 1}))
        lines.append(other("checkpoint", step=step - 1, path=f"checkpoint_{step - 1}.pt", bytes=100, best=False))
        if block == 5:  # a resume from an earlier checkpoint: the orphaned steps go
            step -= 45
            lines.append(other("run_start", stage=3, max_steps=5000, start_step=step - 1, resumed_from="x.pt"))
    lines.append(other("warning", code="w", message="m"))
    lines.append(other("run_end", status="completed", reason="done", step=step - 1))
    return lines


def write(path, lines: list[bytes], tail: bytes = b"") -> None:
    path.write_bytes(b"\n".join(lines) + b"\n" + tail)


def test_a_mixed_log_folds_the_same(tmp_path):
    p = tmp_path / "events.jsonl"
    write(p, mixed_log(), tail=b'{"event":"step","step":99')  # a partial last line is held back by both
    assert_same(p)
    for max_bytes in (777, 4096):  # slices cut lines anywhere (too small for a run of MIN_STEP_RUN steps)
        assert_same(p, max_bytes=max_bytes, expect_batches=False)
    assert_same(p, max_bytes=50_000)


@pytest.mark.parametrize("bad", [
    b'"3.5"', b'"oops"', b"true", b"NaN", b"Infinity", b"-Infinity", b"1e400", b"[1]", b'{"a":1}', b"null", b"7",
    b"123456789012345678901234567890", b"1" * 400, b"-" + b"9" * 400,
])
def test_an_odd_value_in_one_step_line(tmp_path, bad):
    lines = run_of(1, 40)  # one run: a batch when it is well-formed
    lines[17] = lines[17].replace(b'"loss":', b'"loss":' + bad + b',"was_loss":')
    lines[30] = lines[30].replace(b'"t":', b'"t":' + bad + b',"was_t":')
    p = tmp_path / "events.jsonl"
    write(p, [other("run_start", start_step=0)] + lines)
    assert_same(p, expect_batches=False)
    h = RunHistory()
    h.extend(EventLogReader(p).read_new(step_batches=True))
    assert len(h.steps) == 40


@pytest.mark.parametrize("step", [b'"12"', b"-3", b"1.0", b"2.5", b"null", b"18446744073709551616", b"true",
                                  b"9223372036854775807"])
def test_an_odd_step_in_one_step_line(tmp_path, step):
    lines = run_of(1, 40)
    lines[20] = lines[20].replace(b'"step":21', b'"step":' + step)
    p = tmp_path / "events.jsonl"
    write(p, lines)
    assert_same(p, expect_batches=False)


@pytest.mark.parametrize("line, taken", [
    (b'{"event":"step","step":51,"x":"\xff\xfe"}', False),  # invalid UTF-8: json refuses the line, so must the fast path
    (b'{"event":"step","step":51,"x":"\xed\xa0\x80"}', True),  # an encoded surrogate: json takes it (surrogatepass)
    (b'{"event":"step","step":51,"x":"\\ud800"}', False),  # an escaped lone surrogate: msgspec refuses it
    (b'{"event":"step","step":51,"x":"caf\xc3\xa9 \xe2\x80\xae \\u001b[2J"}', True),  # non-ASCII, an escape sequence
    (b'{"event":"step","step":51,"loss":1,"loss":2.5}', True),  # a duplicate key: the last one wins in both
    (b'{"event":"step","event":"eval","step":51,"val_loss":3}', False),  # ... also for "event"
    (b'{"event":"sample","step":51,"meta":{"event":"step"}}', False),  # the tag, nested in another event
    (b'{"step":51,"meta":{"event":"step"}}', False),  # the tag, nested, and no event at all
    (b'{"event":"step","step":51}, {"event":"step","step":52}', False),  # two objects on one line
    (b'{"event":"step","step":51,"x":[1,}', False),  # broken JSON
    (b'   ', True),  # blank: the steps on either side are batches
    (b'{"event":"step","step":51,"extra":{"deep":[1,2,{"a":null}]},"tokens_per_s":12000}', True),  # unknown fields, an int
])
def test_a_strange_line_among_steps(tmp_path, line, taken):
    lines = run_of(1, 100)
    lines[50] = line
    p = tmp_path / "events.jsonl"
    write(p, lines)
    batches = assert_same(p, expect_batches=False)
    assert (batches > 0) == taken


def test_nulls_ints_and_absent_fields(tmp_path):
    lines = run_of(1, 20, loss=None, R=1, t=None) + run_of(21, 20, gpu_mem_bytes=123456789) + run_of(41, 40, ce=7)
    lines[50] = b'{"event":"step","step":51}'  # nothing but the step
    p = tmp_path / "events.jsonl"
    write(p, lines)
    assert_same(p)
    h = RunHistory()
    h.extend(EventLogReader(p).read_new(step_batches=True))
    assert math.isnan(h.steps.values("loss")[0]) and h.steps.values("R")[0] == 1.0
    assert h.steps.values("gpu_mem_bytes")[20] == 123456789.0 and math.isnan(h.steps.values("gpu_mem_bytes")[0])
    assert h.last_event_t == 80.0 and h.malformed_values == 0


def test_steps_going_back_without_a_resume(tmp_path):
    lines = run_of(1, 50) + run_of(30, 50) + run_of(10, 5) + run_of(200, 40)
    p = tmp_path / "events.jsonl"
    write(p, lines)
    assert_same(p)
    h = RunHistory()
    h.extend(EventLogReader(p).read_new(step_batches=True))
    assert list(h.steps.steps) == list(range(1, 10)) + list(range(10, 15)) + list(range(200, 240))


def test_a_batch_that_rewinds_inside_itself_falls_back_to_one_by_one():
    from kssm_core.runfolder.steplines import decode_steps

    raws = run_of(1, 20) + run_of(5, 20)
    batch = decode_steps(raws)
    assert batch is not None and batch.steps[:3] == [1, 2, 3]
    fast, plain = RunHistory(), RunHistory()
    fast.extend([batch])
    for raw in raws:
        plain.apply(json.loads(raw))
    assert json.dumps(fast.to_state(), sort_keys=True) == json.dumps(plain.to_state(), sort_keys=True)
    assert list(fast.steps.steps) == list(range(1, 5)) + list(range(5, 25))


def test_decode_steps_refuses_what_it_is_not_sure_of():
    from kssm_core.runfolder.steplines import decode_steps

    good = run_of(1, 3)
    assert decode_steps(good).steps == [1, 2, 3]
    assert decode_steps(good + [b'{"event":"step","step":"4"}']) is None
    assert decode_steps(good + [b'{"event":"step","step":4,"loss":NaN}']) is None
    assert decode_steps(good + [b'{"event":"step","step":4,"x":"\xc0\xaf"}']) is None
    assert decode_steps(good + [b'{"event":"eval","step":4}']) is None
    assert decode_steps([]) is None


def random_log(seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    odd = [None, "3.5", "oops", True, float("nan"), float("inf"), 7, -1.0, 1e300, [1], "caf\u00e9"]
    lines = [other("run_start", start_step=0, max_steps=10_000)]
    step = 0
    for _ in range(4000):
        roll = rnd.random()
        if roll < 0.75:
            step += rnd.choice((1, 1, 1, 2, 5))
            extra = {}
            if rnd.random() < 0.01:
                extra[rnd.choice(("loss", "R", "u_val", "t", "gpu_mem_bytes"))] = rnd.choice(odd)
            if rnd.random() < 0.003:
                extra["step"] = rnd.choice(("12", -3, None, 1.5, step - 50, 2**64))
            if rnd.random() < 0.01:
                extra["note"] = rnd.choice(("\u202e", "\x1b[2J", {"event": "step"}, "\ud800"))
            rec = {"event": "step", "t": step * 0.5, "step": step, "loss": rnd.random() * 8, "R": rnd.random(), **extra}
            text = json.dumps(rec, separators=(",", ":"), ensure_ascii=rnd.random() < 0.5)
            lines.append(text.encode("utf-8", "surrogatepass"))
        elif roll < 0.93:
            lines.append(other("heartbeat", step=step))
        elif roll < 0.96:
            lines.append(other("eval", step=step, val_loss=5.0))
        elif roll < 0.97:
            step = max(0, step - rnd.randint(1, 40))
            lines.append(other("run_start", start_step=step, max_steps=10_000))
        elif roll < 0.98:
            lines.append(rnd.choice((b"{not json", b"", b"[1,2]", b'{"event":"step","step":1', b"\xff\xfe")))
        else:
            lines.append(other("sample", step=step, text="hello"))
    return lines


@pytest.mark.parametrize("seed", range(5))
def test_random_logs_fold_the_same(tmp_path, seed):
    p = tmp_path / "events.jsonl"
    write(p, random_log(seed))
    assert_same(p)
    assert_same(p, max_bytes=random.Random(seed).randint(2000, 60_000))


def test_without_msgspec_every_line_takes_the_json_path(tmp_path, monkeypatch):
    p = tmp_path / "events.jsonl"
    write(p, mixed_log())
    want = fold(p, False)
    monkeypatch.setattr(steplines, "msgspec", None)
    assert not steplines.available()
    assert fold(p, True) == want  # same state, and no StepBatch at all


def test_the_module_imports_without_msgspec(tmp_path, monkeypatch):
    p = tmp_path / "events.jsonl"
    write(p, mixed_log())
    want = fold(p, False)
    monkeypatch.setitem(sys.modules, "msgspec", None)  # `import msgspec` raises ImportError
    try:
        importlib.reload(steplines)  # runlog reaches it through the module, so it sees the reloaded one
        assert not steplines.available()
        reader = EventLogReader(p)
        recs = reader.read_new(step_batches=True)
        assert all(type(r) is dict for r in recs)
        h = RunHistory()
        h.extend(recs)
        assert (json.dumps(h.to_state(), sort_keys=True, default=str), reader.state()) == want[:2]
    finally:
        monkeypatch.undo()
        importlib.reload(steplines)
    assert steplines.available()


def test_short_runs_stay_dicts(tmp_path):
    p = tmp_path / "events.jsonl"
    write(p, run_of(1, MIN_STEP_RUN - 1))
    recs = EventLogReader(p).read_new(step_batches=True)
    assert len(recs) == MIN_STEP_RUN - 1 and all(type(r) is dict for r in recs)


def test_a_huge_step_is_skipped_not_a_crash():
    h = RunHistory()
    h.apply({"event": "step", "step": 2**64, "loss": 1.0})
    h.apply({"event": "step", "step": 3, "loss": 1.0})
    assert h.skipped_events == 1 and list(h.steps.steps) == [3]


@pytest.mark.parametrize("length", [MAX_LINE_BYTES - 1, MAX_LINE_BYTES, MAX_LINE_BYTES + 1, 3 * MAX_LINE_BYTES // 2 + 7])
def test_the_quick_long_line_check_never_misses_one(length):
    from kssm_core.runfolder.runlog import _no_line_over_max

    for before in (0, 1, 10, MAX_LINE_BYTES // 2 - 1, MAX_LINE_BYTES // 2, 777_777):
        data = b"a\n" * (before // 2) + b"x" * length + b"\n" + b"b\n" * 10
        longest = max(map(len, data.split(b"\n")[:-1]))
        if longest > MAX_LINE_BYTES:
            assert not _no_line_over_max(data), (length, before)
    assert _no_line_over_max(b'{"event":"step"}\n' * 200_000)


def test_an_oversized_line_among_steps_is_counted_once(tmp_path):
    p = tmp_path / "events.jsonl"
    write(p, run_of(1, 50) + [b'{"event":"step","step":51,"x":"' + b"y" * (MAX_LINE_BYTES + 5) + b'"}'] + run_of(52, 50))
    assert_same(p, expect_batches=False)  # a chunk holding an oversized line is read line by line
    r = EventLogReader(p)
    r.read_new(step_batches=True)
    assert r.stats.oversized_lines == 1 and r.stats.lines == 101
