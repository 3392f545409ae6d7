"""events.jsonl and training.log writers: schema first, strict JSON, fresh line after a partial one."""

from __future__ import annotations

import json
import threading

from kssm_core.runfolder.events import (
    SCHEMA_NAME, SCHEMA_VERSION, STEP_HEADER, EventWriter, TextLog, format_step_line,
)


def lines(path):
    return path.read_bytes().decode().splitlines()


def test_first_line_of_a_new_file_is_the_schema(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path, clock=lambda: 1234.56789)
    w.emit("step", step=1, loss=2.5)
    w.close()
    first, second = (json.loads(x) for x in lines(path))
    assert first == {"event": "schema", "t": 1234.568, "name": SCHEMA_NAME, "version": SCHEMA_VERSION}
    assert second["event"] == "step" and second["step"] == 1 and second["loss"] == 2.5 and "t" in second


def test_appending_to_an_existing_log_does_not_repeat_the_schema(tmp_path):
    path = tmp_path / "events.jsonl"
    EventWriter(path).close()
    w = EventWriter(path)
    w.emit("run_start", pid=1)
    w.close()
    kinds = [json.loads(x)["event"] for x in lines(path)]
    assert kinds == ["schema", "run_start"]


def test_non_finite_numbers_become_null_and_the_line_is_strict_json(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit("step", loss=float("nan"), ce=float("inf"), nested={"x": [float("-inf"), 1.0]})
    w.close()
    raw = lines(path)[-1]
    assert "NaN" not in raw and "Infinity" not in raw
    rec = json.loads(raw)
    assert rec["loss"] is None and rec["ce"] is None and rec["nested"] == {"x": [None, 1.0]}


def test_partial_last_line_from_a_killed_writer_is_followed_by_a_fresh_line(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit("step", step=1)
    w.close()
    with open(path, "ab") as fh:
        fh.write(b'{"event":"step","t":1.0,"ste')  # killed mid-write
    w = EventWriter(path)
    w.emit("run_start", pid=7)
    w.close()
    raw = lines(path)
    assert raw[-2] == '{"event":"step","t":1.0,"ste'
    assert json.loads(raw[-1])["event"] == "run_start"
    # every other line still parses
    assert all(json.loads(x) for x in raw[:-2])


def test_training_log_also_starts_fresh_after_a_partial_line(tmp_path):
    path = tmp_path / "training.log"
    path.write_text("  12 | 7.1")
    log = TextLog(path)
    log.write("RUN END: completed")
    log.close()
    raw = lines(path)
    assert raw[0] == "  12 | 7.1" and raw[1].endswith("RUN END: completed")


def test_concurrent_emitters_never_interleave_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)

    def spam(tag):
        for i in range(300):
            w.emit("heartbeat", tag=tag, i=i, pad="x" * 200)

    threads = [threading.Thread(target=spam, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    recs = [json.loads(x) for x in lines(path)]
    assert len(recs) == 1 + 4 * 300


def test_step_line_matches_the_reference_format():
    line = format_step_line(20, 7.123456, 7.1, 0.45678, 0.05512, 0.6789, 1.23456)
    assert line == "    20 |   7.123 |   7.100 |  0.4568 | 0.0551 |   0.679 |    1.235"
    assert len(STEP_HEADER.split("|")) == len(line.split("|"))
    nan_line = format_step_line(3, None, None, None, None, None, None)
    assert nan_line.split("|")[1].strip() == "nan"
