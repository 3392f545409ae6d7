"""A damaged events.jsonl never crashes `kssm status`: it counts and skips what it cannot read and says so."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kssm_core.cli import main
from kssm_core.runbook.status import run_status
from runbook_synth import events, ramp, wiggle

N = 30


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KSSM_CACHE_DIR", str(tmp_path / "cache"))


def good_lines():
    evs = events(stage=2, loss=ramp(8, 6, N), u=wiggle(1.0, 0.3, N), R=wiggle(0.05, 0.01, N),
                 evals=[{"step": 300, "val_ppl": 665.0}])
    return [json.dumps(e).encode() for e in evs]


DAMAGE = {
    "binary junk": b"\x00\x01\x02\xff\xfe garbage \x80\x81",
    "non-UTF-8 bytes": b'{"event":"step","t":1,"step":5,"loss":"\xff\xfe"}',
    "a line of 10 MB": b'{"event":"sample","t":1,"step":7,"text":"' + b"x" * 10_000_000 + b'"}',
    "not an object": b"[1, 2, 3]",
    "no event field": b'{"t": 5, "step": 3}',
}


@pytest.mark.parametrize("what", sorted(DAMAGE))
def test_each_kind_of_damage_is_counted_and_skipped(tmp_path, what):
    lines = good_lines()
    lines.insert(10, DAMAGE[what])
    d = tmp_path / "stage2"
    d.mkdir()
    (d / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    s = run_status(d)
    assert s.read["bad_lines"] == 1
    assert s.read["note"].startswith("events.jsonl: skipped 1 unreadable line") and "\n" not in s.read["note"]
    assert s.step == 300 and s.latest["val_ppl"] == 665.0  # the rest is still judged
    if what == "a line of 10 MB":
        assert s.read["oversized_lines"] == 1


def test_numbers_as_strings_and_missing_fields(tmp_path):
    lines = good_lines()
    lines.insert(5, b'{"event":"step","t":"7","step":"55","loss":"4.5","R":"oops"}')  # strings
    lines.insert(6, b'{"event":"step","t":8}')  # no step: skipped
    lines.insert(7, b'{"event":"eval"}')  # no step
    lines.insert(8, b'{"event":"mystery","t":9}')  # unknown kind
    d = tmp_path / "stage2"
    d.mkdir()
    (d / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    s = run_status(d)
    assert s.read["bad_lines"] == 0
    assert s.read["malformed_values"] >= 2 and s.read["skipped_events"] == 3
    assert "malformed" in s.read["note"]
    assert s.assessment.rows  # judged


def test_truncated_last_line_is_held_back_not_counted(tmp_path):
    lines = good_lines()
    d = tmp_path / "stage2"
    d.mkdir()
    (d / "events.jsonl").write_bytes(b"\n".join(lines) + b'\n{"event":"step","t":99,"st')
    s = run_status(d)
    assert s.read["bad_lines"] == 0 and s.read["note"] is None and s.step == 300
    # the writer finishes the line: the next call reads it
    with open(d / "events.jsonl", "ab") as fh:
        fh.write(b'ep":310,"loss":5.0}\n')
    assert run_status(d).step == 310


def test_everything_at_once_through_the_real_command(tmp_path):
    lines = good_lines()
    for i, junk in enumerate(DAMAGE.values()):
        lines.insert(3 + 2 * i, junk)
    d = tmp_path / "stage2"
    d.mkdir()
    (d / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n" + b'{"event":"step","t":1,"step":3')
    env = {"KSSM_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    for extra in ([], ["--json"]):
        r = subprocess.run([sys.executable, "-m", "kssm_core", "status", str(d), *extra], capture_output=True,
                           text=True, timeout=120, env=env)
        assert r.returncode in (1, 2), r.stderr
        assert "Traceback" not in r.stderr
    body = json.loads(r.stdout)
    assert body["runs"][0]["read"]["bad_lines"] == len(DAMAGE)


def test_empty_and_whitespace_files(tmp_path, capsys):
    d = tmp_path / "stage1"
    d.mkdir()
    (d / "events.jsonl").write_bytes(b"")
    assert run_status(d).recommendation.code == "all_clear"
    (d / "events.jsonl").write_bytes(b"\n\n   \n")
    assert run_status(d, use_cache=False).recommendation.code == "all_clear"
    assert main(["status", str(d)]) == 0


def test_an_unreadable_events_file_is_one_line_not_a_crash(tmp_path, monkeypatch):
    import errno

    from kssm_core.runfolder.runlog import EventLogReader

    def denied(self, max_bytes=None, **_):
        raise PermissionError(errno.EACCES, "Permission denied")

    d = tmp_path / "stage2"
    d.mkdir()
    (d / "events.jsonl").write_bytes(b"\n".join(good_lines()) + b"\n")
    monkeypatch.setattr(EventLogReader, "read_new", denied)
    s = run_status(d)
    assert s.read["note"] == f"cannot read {d / 'events.jsonl'}: Permission denied"
    assert s.recommendation.code == "unreadable" and s.exit_code == 2  # never "safe to start" on what it cannot read
