"""`kssm report` on the cockpit snapshot tests' run folders: valid PNG figures, a report.md naming each of them,
the decision matrix and evaluation results, never a byte written inside a run folder."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest

from kssm_core.cli import main as kssm
from kssm_core.reports.report import FIGURES, FIG_DPI, FIG_SIZE, ReportError, default_out_dir, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tui"))
import runfolders  # noqa: E402  (the snapshot tests' prepared run folders)

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = int(FIG_SIZE[0] * FIG_DPI), int(FIG_SIZE[1] * FIG_DPI)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND", f"{path.name} is cut short"
    return struct.unpack(">II", data[16:24])


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("results")
    root.mkdir()
    return root


@pytest.mark.parametrize("prepare", [runfolders.healthy, runfolders.warning, runfolders.failed, runfolders.crashed],
                         ids=lambda f: f.__name__)
def test_report_on_the_snapshot_run_folders(results, prepare):
    prepare(results)
    runs = {p: tree(p) for p in results.iterdir()}
    res = write_report([results])
    assert res.out_dir == results / "report" and res.report == results / "report" / "report.md"
    assert [p.name for p in res.figures] == [f.name for f in FIGURES]
    for p in res.figures:
        assert png_size(p) == (WIDTH, HEIGHT)
        assert p.stat().st_size > 10_000  # something drawn, not an empty canvas
    md = res.report.read_text(encoding="utf-8")
    for f in FIGURES:
        assert f"![{f.title}]({f.name})" in md
    for run in runs:
        assert f"`{run.name}`" in md
    assert "## Decision matrix" in md and "| 1 | Loss |" in md
    assert "## Machine and versions" in md and "torch" in md
    assert {p: tree(p) for p in results.iterdir() if p.name != "report"} == runs  # nothing written in a run folder
    assert sorted(p.name for p in (results / "report").iterdir()) == sorted(["report.md", *(f.name for f in FIGURES)])


def test_matrix_rows_and_verdicts_follow_run_status(results):
    runfolders.failed(results)
    md = write_report([results]).report.read_text()
    assert "| 2 | Val PPL | FAILURE | val PPL 2600.0 at step 500 > 2000 |" in md
    assert "**Stage 2: FAILURE" in md


def test_evaluation_results_are_tabled(results):
    d = runfolders.write_run(results / "final", 5, 200, every=10)
    (d / "eval").mkdir()
    (d / "eval" / "agency.json").write_text(json.dumps({
        "suite": "agency", "model": "results/final/best_model.pt", "step": 200, "seed": 0, "verdict": "warn",
        "criteria": [{"name": "coherent_action", "value": 0.42, "target": ">= 0.6", "verdict": "warn",
                      "detail": "21 of 50 | prompts"}], "elapsed_s": 3.5}))
    (d / "eval" / "broken.json").write_text("{nope")
    md = write_report([d], out_dir="rep").report.read_text()
    assert "### `final`: agency" in md
    assert "| coherent_action | 0.42 | >= 0.6 | warn | 21 of 50 \\| prompts |" in md
    assert "broken.json: unreadable" in md


def test_runs_named_one_by_one_compare_on_one_figure_and_default_to_report(results, monkeypatch):
    runfolders.healthy(results)
    a, b = results / "stage1", results / "stage2"
    assert default_out_dir([a, b]) == Path("report")
    assert kssm(["report", str(a), str(b), "--x", "time", "--smoothing", "0.9"]) == 0
    assert png_size(Path("report") / "loss.png") == (WIDTH, HEIGHT)
    assert "x axis: active wall time" in (Path("report") / "report.md").read_text()


def test_reference_curves_are_drawn_and_named(results, tmp_path):
    runfolders.healthy(results)
    ref = tmp_path / "paper.csv"
    ref.write_text("step,loss,val_ppl\n0,8.0,\n100,6.0,900\n500,5.0,300\n")
    assert kssm(["report", str(results), "--reference", str(ref), "--out", "r"]) == 0
    assert "`paper`" in (Path("r") / "report.md").read_text()
    ref.write_text("loss\n1\n")
    assert kssm(["report", str(results), "--reference", str(ref), "--out", "r"]) == 3


def test_refusals(results, capsys):
    runfolders.healthy(results)
    with pytest.raises(ReportError, match="inside the run folder"):
        write_report([results / "stage1"], out_dir=results / "stage1" / "report")
    assert not (results / "stage1" / "report").exists()
    assert kssm(["report", "nowhere"]) == 3
    assert "no such folder" in capsys.readouterr().err
    Path("empty").mkdir()
    assert kssm(["report", "empty"]) == 3


def test_without_figures_the_tables_remain(results, monkeypatch):
    runfolders.healthy(results)
    res = write_report([results], figures=False)
    assert res.figures == [] and "![" not in res.report.read_text()
    import kssm_core.reports.report as report

    monkeypatch.setattr(report, "matplotlib_available", lambda: False)
    res = write_report([results], out_dir="auto")  # figures=None: drawn when possible, else said so
    assert "matplotlib is not installed" in res.report.read_text()
    with pytest.raises(ReportError, match="pip install"):
        write_report([results], figures=True)


def test_a_resumed_run_draws_its_folded_history(results, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_export import write_resumed_run

    write_resumed_run(results / "stage2")
    res = write_report([results], x_axis="time")
    assert len(res.figures) == len(FIGURES)
    assert "(2 segments)" in res.report.read_text()
    assert os.path.getsize(res.figures[0]) > 10_000
