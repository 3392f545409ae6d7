"""`kssm export`: CSV / JSON lines / TensorBoard values equal the events (a resumed run's orphaned steps
replaced as RunHistory does), read back with csv, json and TensorBoard's own EventAccumulator; the trainer's
live --tensorboard files too."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kssm_core.cli import main as kssm
from kssm_core.reports import tfevents
from kssm_core.reports.export import ExportError, export_runs
from kssm_core.reports.rundata import load_run, run_names
from kssm_core.runfolder.history import RunHistory
from kssm_testkit import read_events, run_kssm, train_args

T0 = 1_700_000_000.0


def _step(step, t, k, **over):
    rec = {"event": "step", "t": t, "step": step, "loss": 8.0 - 0.01 * step + k, "ce": 7.9 - 0.01 * step + k,
           "reg": 0.05 + k / 10, "R": 0.1 + 0.001 * step, "u_val": 1.0 + k, "grad_norm": 2.5 - 0.001 * step,
           "lr": 1e-3 * (1 - step / 1000), "tokens_per_s": 1000.0 + step, "world_size": 1}
    rec.update(over)
    return rec


def write_resumed_run(run_dir: Path, stage: int = 2) -> list[dict]:
    """Segment 1 logs steps 10..100 (evals at 50, 100), is killed; segment 2 resumes from checkpoint 50 with other
    values (k=0.5) up to 150. Steps 60..100 of segment 1, its eval at 100 and its sample at 100 are orphaned.
    One null value (NaN on the wire) and a heartbeat among them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ev = [{"event": "schema", "t": T0, "name": "kssm-events", "version": 1},
          {"event": "run_start", "t": T0, "stage": stage, "max_steps": 150, "start_step": 0, "pid": 1, "host": "h",
           "config": {"max_steps": 150, "stage": stage}, "model_config": {"u_min": 0.1, "u_max": 10.0}}]
    t = T0
    for s in range(10, 101, 10):
        t += 2.0
        ev.append(_step(s, t, 0.0, **({"grad_norm": None} if s == 30 else {})))
        ev.append({"event": "heartbeat", "t": t, "step": s, "phase": "train", "micro": 0, "accum": 1})
        if s % 50 == 0:
            ev.append({"event": "eval", "t": t + 0.5, "step": s, "val_loss": 7.0 - s / 100, "val_ce": 6.9 - s / 100,
                       "val_ppl": math.exp(6.9 - s / 100), "val_R": 0.2, "val_u": 1.1})
            ev.append({"event": "sample", "t": t + 0.6, "step": s, "prompt": "The ", "text": f"first {s} | a,b\n",
                       "R": 0.3})
    t += 600.0  # killed, resumed ten minutes later
    ev.append({"event": "run_start", "t": t, "stage": stage, "max_steps": 150, "start_step": 50, "pid": 2,
               "host": "h", "resumed_from": "checkpoint_50.pt", "config": {"max_steps": 150, "stage": stage}})
    for s in range(60, 151, 10):
        t += 2.0
        ev.append(_step(s, t, 0.5))
        if s % 50 == 0:
            ev.append({"event": "eval", "t": t + 0.5, "step": s, "val_loss": 6.0 - s / 100, "val_ce": 5.9 - s / 100,
                       "val_ppl": math.exp(5.9 - s / 100), "val_R": 0.25, "val_u": 1.2})
            ev.append({"event": "sample", "t": t + 0.6, "step": s, "prompt": "The ", "text": f"second {s} \u00e9",
                       "R": 0.35})
    ev.append({"event": "run_end", "t": t + 1, "status": "completed", "reason": "max_steps reached", "step": 150})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev))
    return ev


def expected(events: list[dict], kind: str) -> dict[int, dict]:
    """step -> record of `kind`, built independently: a run_start with start_step drops what came after it."""
    out: dict[int, dict] = {}
    for e in events:
        if e["event"] == "run_start" and e.get("start_step"):
            out = {s: r for s, r in out.items() if s <= e["start_step"]}
        elif e["event"] == kind:
            out[e["step"]] = e
    return out


def _num(cell: str) -> float:
    return float(cell) if cell != "" else float("nan")


def _same(a: float, b) -> bool:
    b = float("nan") if b is None else float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture
def two_runs(tmp_path):
    a = tmp_path / "results" / "stage2"
    b = tmp_path / "ablation" / "stage2"
    return (a, write_resumed_run(a)), (b, write_resumed_run(b, stage=2))


def test_the_fold_is_runhistorys(two_runs):
    (a, events), _ = two_runs
    h = RunHistory()
    h.extend(read_events(a))
    run = load_run(a)
    assert list(run.steps.steps) == list(h.steps.steps) == sorted(expected(events, "step"))
    for f in h.steps.fields:
        assert np.array_equal(np.asarray(run.steps.cols[f]), np.asarray(h.steps.cols[f]), equal_nan=True)
    assert list(run.evals.steps) == list(h.evals.steps) == [50, 100, 150]
    assert run.segment_starts == [T0, T0 + 620.0]


def test_csv_round_trip_with_a_resumed_run(two_runs, tmp_path):
    (a, ev_a), (b, ev_b) = two_runs
    res = export_runs([a, b], tmp_path / "out", "csv")
    assert sorted(p.name for p in res.files) == ["evals.csv", "samples.csv", "steps.csv"]
    names = run_names([a, b])
    assert names == ["results/stage2", "ablation/stage2"]
    for table, kind in (("steps", "step"), ("evals", "eval")):
        with open(tmp_path / "out" / f"{table}.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for name, events in zip(names, (ev_a, ev_b)):
            mine = [r for r in rows if r["run"] == name]
            want = expected(events, kind)
            assert [int(r["step"]) for r in mine] == sorted(want)
            for r in mine:
                e = want[int(r["step"])]
                assert float(r["t"]) == e["t"]
                for col in r:
                    if col not in ("run", "step", "t"):
                        assert _same(_num(r[col]), e.get(col)), (name, r["step"], col)
    # the orphaned readings are gone, the resumed ones are there
    with open(tmp_path / "out" / "steps.csv", newline="") as fh:
        row80 = next(r for r in csv.DictReader(fh) if r["run"] == names[0] and r["step"] == "80")
    assert float(row80["u_val"]) == 1.5
    with open(tmp_path / "out" / "samples.csv", newline="", encoding="utf-8") as fh:
        samples = [r for r in csv.DictReader(fh) if r["run"] == names[0]]
    assert [(int(r["step"]), r["text"]) for r in samples] == [(50, "first 50 | a,b\n"), (100, "second 100 \u00e9"),
                                                               (150, "second 150 \u00e9")]


def test_jsonl_round_trip(two_runs, tmp_path):
    (a, events), _ = two_runs
    export_runs([a], tmp_path / "out", "jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    want = expected(events, "step")
    assert [r["step"] for r in rows] == sorted(want)
    for r in rows:
        e = want[r["step"]]
        assert r["run"] == "stage2" and r["t"] == e["t"]
        for col, v in r.items():
            if col not in ("run", "step", "t"):
                assert _same(float("nan") if v is None else v, e.get(col)), (r["step"], col)
    evals = [json.loads(line) for line in (tmp_path / "out" / "evals.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_u"]) for r in evals] == [(50, 1.1), (100, 1.2), (150, 1.2)]


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


ISSUE_TAGS = {"train/loss", "train/ce", "train/reg", "dyn/R", "dyn/u_val", "opt/grad_norm", "opt/lr",
              "eval/val_loss", "eval/val_ppl", "eval/val_R", "eval/val_u"}


def test_tensorboard_round_trip_read_by_tensorboard(two_runs, tmp_path):
    (a, ev_a), (b, ev_b) = two_runs
    out = tmp_path / "tb"
    res = export_runs([a, b], out, "tensorboard")
    assert [p.parent.relative_to(out).as_posix() for p in res.files] == ["results/stage2", "ablation/stage2"]
    for folder, events in ((out / "results" / "stage2", ev_a), (out / "ablation" / "stage2", ev_b)):
        acc = _accumulator(folder)
        tags = acc.Tags()
        assert ISSUE_TAGS <= set(tags["scalars"])
        assert tfevents.SAMPLE_TEXT_TAG in tags["tensors"]
        for field, tag in {**tfevents.STEP_TAGS, **tfevents.EVAL_TAGS}.items():
            kind = "eval" if field in tfevents.EVAL_TAGS else "step"
            want = {s: e[field] for s, e in expected(events, kind).items() if e.get(field) is not None}
            if not want:
                continue
            got = acc.Scalars(tag)
            assert [g.step for g in got] == sorted(want), tag  # orphans gone, the null grad norm left out
            for g in got:
                assert g.value == float(np.float32(want[g.step])), (tag, g.step)
                assert g.wall_time == expected(events, kind)[g.step]["t"]
        texts = acc.Tensors(tfevents.SAMPLE_TEXT_TAG)
        assert [(x.step, x.tensor_proto.string_val[0].decode()) for x in texts] == [
            (50, "The first 50 | a,b\n"), (100, "The second 100 \u00e9"), (150, "The second 150 \u00e9")]


def test_re_export_replaces_and_foreign_event_files_are_refused(two_runs, tmp_path):
    (a, events), _ = two_runs
    out = tmp_path / "tb"
    export_runs([a], out, "tensorboard")
    export_runs([a], out, "tensorboard")
    files = list((out / "stage2").iterdir())
    assert len(files) == 1  # the earlier export's file was replaced: TensorBoard would show both
    assert [s.step for s in _accumulator(out / "stage2").Scalars("train/loss")] == sorted(expected(events, "step"))
    (out / "stage2" / "events.out.tfevents.123.host.1").write_bytes(b"")  # a live trainer's, say
    with pytest.raises(ExportError, match="not written by kssm export"):
        export_runs([a], out, "tensorboard")


def test_never_writes_inside_a_run_folder(two_runs, tmp_path, capsys):
    (a, _), _ = two_runs
    before = sorted(p.name for p in a.iterdir())
    with pytest.raises(ExportError, match="inside the run folder"):
        export_runs([a], a / "export", "csv")
    assert kssm(["export", str(a), "--out", str(a / "x"), "--format", "jsonl"]) == 3
    assert "inside the run folder" in capsys.readouterr().err
    assert sorted(p.name for p in a.iterdir()) == before


def test_cli_exports_a_folder_of_runs_and_says_what_it_wrote(tmp_path, capsys, monkeypatch):
    root = tmp_path / "results"
    write_resumed_run(root / "stage1", stage=1)
    write_resumed_run(root / "stage2")
    assert kssm(["export", str(root), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "stage1: 15 step readings, 3 evaluations, 3 samples" in out and "steps.csv" in out
    assert kssm(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 3
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert kssm(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 3


def test_a_legacy_training_log_exports_too(tmp_path):
    run = tmp_path / "stage1"
    run.mkdir()
    (run / "training.log").write_text(
        "[2026-01-01 10:00:00] K-SSM v3 | steps 0 -> 100 | lr 0.001 | lambda_reg 0.01\n"
        "[2026-01-01 10:00:01]     20 |   7.500 |   7.400 |  0.0500 | 0.0500 |   1.000 |    2.000\n"
        "[2026-01-01 10:00:02]     40 |   7.000 |   6.900 |  0.0500 | 0.0600 |   1.000 |    2.100\n"
        "[2026-01-01 10:00:03] EVALUATION @ Step 40\n[2026-01-01 10:00:03]   Val Loss: 6.8\n"
        "[2026-01-01 10:00:03]   Val Perplexity: 900.0\n[2026-01-01 10:00:03]   Val R: 0.05\n"
        "[2026-01-01 10:00:03]   Val u_val: 1.0\n")
    export_runs([run], tmp_path / "o", "csv")
    rows = list(csv.DictReader(open(tmp_path / "o" / "steps.csv", newline="")))
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in rows] == [("20", "7.5", "2.0"), ("40", "7.0", "2.1")]
    evals = list(csv.DictReader(open(tmp_path / "o" / "evals.csv", newline="")))
    assert [(r["step"], r["val_ppl"]) for r in evals] == [("40", "900.0")]


def test_run_names_are_unique_and_keep_an_archives_stage(tmp_path):
    dirs = [tmp_path / "results" / "stage2", tmp_path / "results" / "stage2" / "previous" / "20261126T024500Z",
            tmp_path / "x" / "stage1"]
    assert run_names(dirs) == ["stage2", "stage2/previous/20261126T024500Z", "stage1"]
    assert run_names([tmp_path / "a b?" / "r", tmp_path / "c" / "r"]) == ["a_b/r", "c/r"]


def test_a_failing_live_sink_is_dropped_and_training_output_goes_on(tmp_path, capsys):
    from kssm_core.runfolder.events import EventWriter

    calls = []

    def sink(record):
        calls.append(record["event"])
        if record["event"] == "step":
            raise OSError(28, "No space left on device")

    w = tfevents.TeeEvents(EventWriter(tmp_path / "events.jsonl"), sink)
    w.emit("run_start", start_step=0)
    w.emit("heartbeat", step=0)
    w.emit("step", step=1, loss=1.0)
    w.emit("step", step=2, loss=1.0)
    w.close()
    assert calls == ["run_start", "step"]  # heartbeats never reach it; dropped after the failure
    assert "--tensorboard output stopped" in capsys.readouterr().err
    assert [e["event"] for e in read_events(tmp_path)] == ["schema", "run_start", "heartbeat", "step", "step"]
    assert w.last_emit > 0  # everything else is the wrapped writer's


def test_trainer_writes_tensorboard_live_and_a_resume_purges_the_orphans(tmp_path, data_dir):
    """A 6-step run, then a resume from checkpoint 4 with another lambda_reg (so the losses of steps 5, 6 differ):
    TensorBoard's reader shows exactly the folded history."""
    out, tb = tmp_path / "stage1", tmp_path / "tb"
    common = ("--save-interval", "2", "--log-interval", "1", "--eval-interval", "3", "--tensorboard", str(tb))
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "6", *common))
    assert r.returncode == 0, r.stderr
    (out / "checkpoint_6.pt").unlink()
    r = run_kssm(*train_args(out, data_dir, "--max-steps", "6", "--resume", "--lambda-reg", "0.5", *common))
    assert r.returncode == 0, r.stderr
    assert len(list((tb / "stage1").glob("events.out.tfevents.*"))) == 2  # one file per trainer process
    run = load_run(out)
    assert list(run.steps.steps) == [1, 2, 3, 4, 5, 6] and run.history.segments == 2
    acc = _accumulator(tb / "stage1")
    for field, tag in (("loss", "train/loss"), ("R", "dyn/R"), ("lr", "opt/lr")):
        got = [(s.step, s.value) for s in acc.Scalars(tag)]  # a list: an orphan left in would show twice
        assert got == [(s, float(np.float32(v))) for s, v in zip(run.steps.steps, run.steps.cols[field])], tag
    orphan = [e for e in read_events(out) if e["event"] == "step" and e["step"] == 6][0]["loss"]  # the killed run's
    assert {s.step: s.value for s in acc.Scalars("train/loss")}[6] != pytest.approx(orphan, rel=1e-3)
    got_evals = [(s.step, s.value) for s in acc.Scalars("eval/val_loss")]
    assert got_evals == [(s, float(np.float32(v))) for s, v in zip(run.evals.steps, run.evals.cols["val_loss"])]
    # TensorBoard's server reads through plugin_event_accumulator, which purges the text tensors too (the
    # plain EventAccumulator above keeps an orphaned text: it purges only scalars, histograms, images, audio)
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    server = EventAccumulator(str(tb / "stage1"), size_guidance={"tensors": 0})
    server.Reload()
    texts = [(x.step, tensor_util.make_ndarray(x.tensor_proto).item().decode()) for x in
             server.Tensors(tfevents.SAMPLE_TEXT_TAG)]
    samples = [e for e in read_events(out) if e["event"] == "sample"]
    assert texts == [(3, samples[0]["prompt"] + samples[0]["text"]), (6, samples[-1]["prompt"] + samples[-1]["text"])]
    losses = [(x.step, float(tensor_util.make_ndarray(x.tensor_proto))) for x in server.Tensors("train/loss")]
    assert losses == [(s, float(np.float32(v))) for s, v in zip(run.steps.steps, run.steps.cols["loss"])]


def test_a_half_written_last_line_does_not_hang_the_reader(tmp_path):
    """A live trainer may be mid-line: load_run folds what is complete and returns (it used to spin)."""
    import json
    import threading

    from kssm_core.reports.rundata import load_run

    d = tmp_path / "run"
    d.mkdir()
    lines = [{"event": "run_start", "t": 1.0, "stage": 1, "max_steps": 10, "start_step": 0},
             {"event": "step", "t": 2.0, "step": 1, "loss": 5.0}]
    (d / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"event": "step", "t": 3')
    out = []
    t = threading.Thread(target=lambda: out.append(load_run(d)), daemon=True)
    t.start()
    t.join(timeout=10)
    assert out and out[0].history.last_step == 1
