"""The cockpit overlay's data pieces: --reference files, TensorBoard's debiased EMA, the active-time axis."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kssm_core.reports.overlay import (GrowingEma, ReferenceError, active_time, debiased_ema, debiased_ema_reference,
                                       map_times, read_reference, run_style)


# ---- --reference ------------------------------------------------------------------------------------------------
def test_csv_reference(tmp_path):
    f = tmp_path / "paper-fig3.csv"
    f.write_text("step,loss,val_ppl,epoch,R\n0,8.0,,0,0.01\n100,6.5,900,1,\n50,7.0,,0,0.02\n")
    ref = read_reference(f)
    assert ref.name == "paper-fig3"
    steps, vals = ref.get("loss")
    assert steps.tolist() == [0, 50, 100] and vals.tolist() == [8.0, 7.0, 6.5]  # sorted by step
    assert ref.get("val_ppl")[0].tolist() == [100] and ref.get("R")[1].tolist() == [0.01, 0.02]
    assert ref.get("ce") is None  # absent column; 'epoch' is ignored


def test_jsonl_reference_and_case_of_names(tmp_path):
    f = tmp_path / "ref.jsonl"
    f.write_text("\n".join(json.dumps(o) for o in ({"step": 10, "U_VAL": 1.5, "val_loss": None},
                                                    {"step": 20.0, "u_val": 1.4, "val_loss": 5.5})) + "\n\n")
    ref = read_reference(f)
    assert ref.get("u_val")[1].tolist() == [1.5, 1.4] and ref.get("val_loss")[0].tolist() == [20]
    g = tmp_path / "noext"
    g.write_text('{"step": 1, "loss": 2}\n')
    assert read_reference(g).get("loss")[1].tolist() == [2.0]  # sniffed as JSON lines


@pytest.mark.parametrize("name,body,message", [
    ("a.csv", "", "empty file"),
    ("a.csv", "loss,ce\n1,2\n", "no 'step' column"),
    ("a.csv", "step,epoch\n1,2\n", "no metric column; expected any of loss, ce"),
    ("a.csv", "step,loss\n1,2\nten,3\n", "line 3: step 'ten' is not a whole number"),
    ("a.csv", "step,loss\n1.5,2\n", "line 2: step '1.5' is not a whole number"),
    ("a.csv", "step,loss\n-1,2\n", "step -1 is negative"),
    ("a.csv", "step,loss\n1,abc\n", "line 2: loss 'abc' is not a number"),
    ("a.csv", "step,loss\n1,2,3\n", "line 2: 3 cells, the header has 2"),
    ("a.csv", "step,loss\n1,2\n1,3\n", "step 1 has two loss values (lines 2 and 3)"),
    ("a.csv", "step,loss\n1,\n", "no readings"),
    ("a.jsonl", '{"step": 1, "loss": 2}\n[1]\n', "line 2: not a JSON object"),
    ("a.jsonl", '{"step": 1, "loss": 2}\n{"step\n', "line 2: not JSON"),
    ("a.jsonl", '{"loss": 2}\n', "line 1: no 'step' field"),
    ("a.jsonl", '{"step": 1, "loss": "x"}\n', "line 1: loss 'x' is not a number"),
    ("a.jsonl", '{"step": 1, "loss": [1]}\n', "loss is a list, not a number"),
    ("a.jsonl", '{"step": 1, "epoch": 2}\n', "no metric field"),
])
def test_bad_reference_files_say_why_in_one_line(tmp_path, name, body, message):
    f = tmp_path / name
    f.write_text(body)
    with pytest.raises(ReferenceError) as err:
        read_reference(f)
    text = str(err.value)
    assert message in text and "\n" not in text and str(f) in text


def test_missing_and_binary_reference(tmp_path):
    with pytest.raises(ReferenceError, match="no such file"):
        read_reference(tmp_path / "nope.csv")
    (tmp_path / "b.csv").write_bytes(b"step,loss\n\xff\xfe\n")
    with pytest.raises(ReferenceError, match="not UTF-8"):
        read_reference(tmp_path / "b.csv")


# ---- smoothing -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [0.0, 0.25, 0.6, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 255, 256, 257, 2000])
def test_debiased_ema_is_tensorboards(weight, n):
    rng = np.random.default_rng(n)
    y = rng.normal(5.0, 2.0, size=n)
    if n > 10:
        y[[3, 7]] = [np.nan, np.inf]  # pass through, not counted
    got = debiased_ema(y, weight)
    want = np.array(debiased_ema_reference(y, weight))
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_debiased_ema_properties():
    assert debiased_ema([3.0, 3.0, 3.0], 0.9).tolist() == [3.0, 3.0, 3.0]  # constant: unchanged, as TensorBoard
    assert debiased_ema([4.0, 10.0], 0.5)[0] == 4.0  # debiased: the first point is itself, not dragged to 0
    assert debiased_ema([], 0.6).size == 0
    with pytest.raises(ValueError):
        debiased_ema([1.0], 1.0)


def test_growing_ema_continues_a_grown_series_and_starts_over_on_another():
    rng = np.random.default_rng(7)
    y = rng.normal(5.0, 1.0, size=3000)
    x = np.arange(3000, dtype=float)
    ema = GrowingEma(0.9)
    first = ema.smooth("a", x[:1000], y[:1000])
    assert ema.smooth("a", x[:1000], y[:1000]) is first  # nothing new: the kept line itself
    np.testing.assert_allclose(ema.smooth("a", x, y), debiased_ema(y, 0.9), rtol=1e-12)  # grown: continued
    assert ema.smoothed_count("a") == 3000
    rewound = np.r_[y[:1500], np.full(10, 9.0)]  # a resume replaced the tail: smoothed from the start
    np.testing.assert_allclose(ema.smooth("a", x[:1510], rewound), debiased_ema(rewound, 0.9), rtol=1e-12)
    ema.smooth("b", x[:5], y[:5])
    ema.keep_only(lambda k: k == "b")
    assert ema.smoothed_count("a") == 0 and ema.smoothed_count("b") == 5
    assert ema.smooth("b", x[:0], y[:0]).size == 0 and ema.smoothed_count("b") == 0
    with pytest.raises(ValueError):
        GrowingEma(1.0)


# ---- active time --------------------------------------------------------------------------------------------------
def test_active_time_leaves_out_a_resume_gap_and_a_pause():
    t = [1000, 1002, 1004, 1006, 3000, 3002, 9000, 9002]  # a pause of 2000 s; a crash + resume at 8999
    x = active_time(t, segment_starts=[999, 8999])
    assert x.tolist() == [1, 3, 5, 7, 9, 11, 12, 14]


def test_active_time_odd_inputs():
    assert active_time([]).size == 0
    assert active_time([5.0]).tolist() == [0.0]
    x = active_time([10, 11, float("nan"), 13, 12, 14])  # NaN and a clock set back count as a median interval
    assert np.all(np.diff(x) > 0) and x[0] == 0
    assert active_time([0, 1, 2, 100], max_gap=200).tolist() == [0, 1, 2, 100]


def test_evaluations_map_onto_the_step_axis():
    t_steps = [100.0, 102.0, 104.0, 5000.0, 5002.0]
    x = active_time(t_steps, [99.0, 4999.0])
    got = map_times([102.5, 5002.5, float("nan")], t_steps, x)
    assert got[0] == pytest.approx(x[1] + 0.5) and got[1] == pytest.approx(x[4] + 0.5) and math.isnan(got[2])


def test_run_styles_are_stable_and_distinct_without_colour():
    styles = [run_style(i) for i in range(8)]
    assert len({(s.marker, s.linestyle) for s in styles}) == 8 and run_style(3) == styles[3]


def test_debiased_ema_resumes_from_its_state():
    from kssm_core.reports.overlay import debiased_ema_state

    y = np.random.default_rng(1).normal(3.0, 1.0, size=1000)
    y[500] = np.nan
    whole = debiased_ema(y, 0.9)
    head, state = debiased_ema_state(y[:700], 0.9)
    tail, _ = debiased_ema_state(y[700:], 0.9, state)
    np.testing.assert_allclose(np.concatenate([head, tail]), whole, rtol=1e-12)
