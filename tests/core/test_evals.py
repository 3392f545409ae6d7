"""`kssm eval` and the intervention API, on a tiny model trained once for this module.

What is proven: every suite runs and writes its JSON in the documented shape; the interventions really
change the model (forced R reaches the banks and moves the logits, a u floor moves perplexity) and are
undone exactly; the same seed gives the same numbers; checkpoints load from their own config, a reference
checkpoint (model_state only) loads with --tokenizer, and a malicious pickle is refused unrun.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kssm_core.cli import main
from kssm_core.config import ModelConfig, model_config_for
from kssm_core.evals import SUITES, EvalContext, EvalOptions, infer_model_config, load_model, run_suite
from kssm_core.evals.agency import has_action, jaccard
from kssm_core.evals.heldout import held_out
from kssm_core.evals.metrics import score, spearman, zone
from kssm_core.model.interventions import generate_with_telemetry, intervene, parameter_noise
from kssm_core.model.kssm import KSSM

from kssm_testkit import run_kssm, tiny_config

SMALL = ("--windows", "4", "--samples", "2", "--gen-tokens", "8")  # keep each suite well under a second


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from 2 threads, and on the shared 2-core machine spinning threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, data_dir) -> Path:
    """best_model.pt of a 40-step tiny run (context 64): trained once for this module, never modified."""
    from kssm_core.training.trainer import Trainer

    out = tmp_path_factory.mktemp("eval-run") / "run"
    cfg = tiny_config(out, data_dir, max_steps=40, seq_len=64, batch_size=8, eval_interval=20, save_interval=20,
                      log_interval=10)
    assert Trainer(cfg, echo=None).run(install_signals=False) == 0
    path = out / "best_model.pt"
    assert path.exists()
    return path


@pytest.fixture(scope="module")
def loaded(model_path):
    return load_model(model_path, "cpu")


def _ctx(loaded, tmp_path=None, **opts) -> EvalContext:
    o = EvalOptions(**{"windows": 4, "samples": 2, "gen_tokens": 8, **opts})
    return EvalContext(loaded, torch.device("cpu"), o, loaded.path.parent, tmp_path)


def _windows(loaded):
    return _ctx(loaded).windows()


# ---- interventions ---------------------------------------------------------------------------------

def test_forced_R_reaches_every_bank_and_changes_logits(loaded):
    model, x = loaded.model, _windows(loaded)[:, :-1]
    with torch.no_grad(), intervene(model, noise=False):
        plain = model(x).logits
        with intervene(model, force_R=0.9):
            out9 = model(x)
        with intervene(model, force_R=0.2):
            out2 = model(x)
        again = model(x).logits
    assert torch.allclose(out9.R_per_layer, torch.full_like(out9.R_per_layer, 0.9), atol=1e-4)
    assert torch.allclose(out2.R_per_layer, torch.full_like(out2.R_per_layer, 0.2), atol=1e-4)
    assert (out9.logits - out2.logits).abs().max() > 1e-4
    assert torch.equal(plain, again)  # the intervention was undone
    assert all(b.force_R is None and b.u_floor is None and b.noise is True for b in model.banks)


def test_intervention_restored_after_an_exception(loaded):
    with pytest.raises(RuntimeError), intervene(loaded.model, force_R=0.5, u_floor=0.3, noise=False):
        raise RuntimeError("boom")
    assert all(b.force_R is None and b.u_floor is None and b.noise is True for b in loaded.model.banks)
    with pytest.raises(ValueError):
        with intervene(loaded.model, force_R=1.5):
            pass


def test_higher_u_floor_changes_perplexity(loaded):
    model, w = loaded.model, _windows(loaded)
    with intervene(model, noise=False):
        base = score(model, w, torch.device("cpu"))
        with intervene(model, u_floor=2.0):
            raised = score(model, w, torch.device("cpu"))
    assert float(raised.u.min()) >= 2.0 - 1e-6
    assert float(base.u.min()) < 2.0  # the trained model does go below the raised floor
    assert abs(raised.ppl - base.ppl) > 1e-6 * base.ppl


def test_parameter_noise_is_seeded_and_restored_exactly(loaded):
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with parameter_noise(model, 0.05, seed=7):
        noisy_a = {k: v.clone() for k, v in model.state_dict().items()}
    with parameter_noise(model, 0.05, seed=7):
        noisy_b = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError), parameter_noise(model, 0.10, seed=8):
        raise KeyError("interrupted mid-evaluation")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(noisy_a[k], noisy_b[k]) for k in before)
    assert not torch.equal(noisy_a["embed.weight"], before["embed.weight"])
    assert model.output_head.weight is model.embed.weight  # still tied


def test_generation_telemetry_is_layers_by_tokens(loaded):
    model = loaded.model
    idx = torch.tensor([loaded.tokenizer.encode("The nature")] * 3)
    g = generate_with_telemetry(model, idx, 7, generator=torch.Generator().manual_seed(1))
    assert g.tokens.shape == (3, idx.shape[1] + 7)
    assert g.R.shape == g.u.shape == (3, model.cfg.n_layers, 7)
    assert float(g.R.min()) >= 0 and float(g.R.max()) <= 1 + 1e-4
    assert float(g.u.min()) >= model.cfg.u_min - 1e-6


# ---- suites ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suite", list(SUITES))
def test_each_suite_writes_its_json(model_path, tmp_path, capsys, suite):
    rc = main(["eval", suite, "--model", str(model_path), "--out", str(tmp_path), "--json", "--device", "cpu", *SMALL])
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "eval" / f"{suite}.json").read_text())
    assert printed == written
    shape = {"suite", "model", "step", "seed", "criteria", "verdict", "data", "elapsed_s"}
    assert set(written) == shape | ({"coherent_action_score", "consistency_score"} if suite == "agency" else set())
    assert written["suite"] == suite and written["step"] == 40 and written["seed"] == 1234
    assert written["criteria"], "a suite must grade something"
    for c in written["criteria"]:
        assert set(c) == {"name", "value", "target", "verdict", "detail"}
        assert c["verdict"] in ("pass", "warn", "fail")
        assert c["name"] != "suite ran", c["detail"]  # the suite did not crash
    rank = {"pass": 0, "warn": 1, "fail": 2}
    assert written["verdict"] == max((c["verdict"] for c in written["criteria"]), key=rank.get)
    assert rc == (0 if written["verdict"] == "pass" else 1)
    data = written["data"]
    if suite == "r-correlation":  # KL(unforced || forced) is a divergence, and forcing R moved something
        assert [s["R"] for s in data["sweep"]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        assert min(s["kl"] for s in data["sweep"]) >= -1e-6 and max(s["kl"] for s in data["sweep"]) > 0
    if suite == "robustness":
        assert [r["sigma"] for r in data["parameter_noise"]] == [0.0, 0.01, 0.05, 0.1]
        assert len({r["ppl"] for r in data["parameter_noise"]}) == 4  # every noise level moved perplexity
    if suite == "agency":
        assert written["coherent_action_score"] == written["criteria"][0]["value"]
        assert len(data["actions"]) == 5 * 2 and len(data["pairs"]) == 4 * 2
    progress = [json.loads(line) for line in (tmp_path / "eval" / "progress.jsonl").read_text().splitlines()]
    assert progress[0]["event"] == "eval_start" and progress[0]["suites"] == [suite]
    assert progress[-1]["event"] == "eval_end" and progress[-1]["suite"] == suite
    steps = [p for p in progress if p["event"] == "eval_progress"]
    assert steps and steps[-1]["done"] == steps[-1]["total"]


def test_a_single_suite_leaves_an_incomplete_summary_naming_the_rest(model_path, tmp_path, capsys):
    main(["eval", "samples", "--model", str(model_path), "--out", str(tmp_path), "--device", "cpu",
          "--gen-tokens", "4", "--prompts", "Hi"])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["verdict"] == "incomplete" and list(summary["suites"]) == ["samples"]
    assert summary["missing"] == [name for name in SUITES if name != "samples"]
    assert "kssm eval all" in summary["message"]


def test_samples_use_given_prompts_and_report_zones(model_path, tmp_path, capsys):
    main(["eval", "samples", "--model", str(model_path), "--out", str(tmp_path), "--json", "--device", "cpu",
          "--gen-tokens", "6", "--prompts", "Hello there", "Once upon"])
    d = json.loads(capsys.readouterr().out)
    assert [s["prompt"] for s in d["data"]["samples"]] == ["Hello there", "Once upon"]
    for s in d["data"]["samples"]:
        assert len(s["R"]) == 6 and len(s["R_per_layer"]) == 2
        assert s["zone"] == zone(sum(s["R"]) / len(s["R"]))


@pytest.mark.slow
def test_all_writes_summary_and_same_seed_same_numbers(model_path, tmp_path, capsys):
    def run_all(out: Path, seed: str) -> tuple[int, dict]:
        rc = main(["eval", "all", "--model", str(model_path), "--out", str(out), "--device", "cpu", "--seed", seed, *SMALL])
        capsys.readouterr()
        return rc, {name: json.loads((out / "eval" / f"{name}.json").read_text()) for name in SUITES}

    rc, first = run_all(tmp_path / "a", "5")
    summary = json.loads((tmp_path / "a" / "eval" / "summary.json").read_text())
    assert summary["suites"] == {name: first[name]["verdict"] for name in SUITES}
    assert "all tests must pass" in summary["message"]
    assert rc == (0 if summary["verdict"] == "pass" else 1)
    assert (summary["verdict"] == "pass") == all(v == "pass" for v in summary["suites"].values())

    _, second = run_all(tmp_path / "b", "5")
    assert main(["eval", "agency", "--model", str(model_path), "--out", str(tmp_path / "c"), "--device", "cpu",
                 "--seed", "6", *SMALL]) in (0, 1)
    other = {"agency": json.loads((tmp_path / "c" / "eval" / "agency.json").read_text())}
    # one suite re-run after `all` (same model, step, seed): the summary is rebuilt and still complete
    main(["eval", "agency", "--model", str(model_path), "--out", str(tmp_path / "a"), "--device", "cpu",
          "--seed", "5", *SMALL])
    again = json.loads((tmp_path / "a" / "eval" / "summary.json").read_text())
    assert again["missing"] == [] and again["suites"] == summary["suites"] and again["verdict"] == summary["verdict"]
    for name in SUITES:
        for d in (first, second):
            d[name].pop("elapsed_s")
        assert first[name] == second[name], name
    assert other["agency"]["data"]["actions"] != first["agency"]["data"]["actions"]  # the seed matters


# ---- loading ---------------------------------------------------------------------------------------

def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "best_model.pt"
    torch.save({"model_state": {"x": Payload()}, "step": 1}, bad)
    r = run_kssm("eval", "agency", "--model", str(bad), "--device", "cpu")  # the real command, its own process
    err = r.stderr.strip()
    assert r.returncode == 2
    assert len(err.splitlines()) == 1 and "refused" in err and "nothing ran" in err, err
    assert not marker.exists()
    assert not (tmp_path / "eval").exists()
    # the file really was hostile: an unsafe load runs the payload
    torch.load(bad, weights_only=False)
    assert marker.exists()


def test_missing_and_garbage_model_files_get_one_line(tmp_path, capsys):
    assert main(["eval", "agency", "--model", str(tmp_path / "nope.pt"), "--device", "cpu"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", "agency", "--model", str(tmp_path), "--device", "cpu"]) == 2
    assert "pass the model file" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["eval", "agency", "--model", str(junk), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "junk.pt" in err


def test_reference_checkpoint_loads_with_tokenizer(model_path, loaded, tmp_path, capsys):
    state = torch.load(model_path, weights_only=True)
    ref = tmp_path / "ref" / "best_model.pt"
    ref.parent.mkdir()
    # what the reference trainer saves: step, model_state (here as torch.compile names it), val_loss
    torch.save({"step": 40, "model_state": {f"_orig_mod.{k}": v for k, v in state["model_state"].items()},
                "val_loss": 7.0}, ref)
    assert main(["eval", "samples", "--model", str(ref), "--device", "cpu", "--gen-tokens", "4"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    tok = tmp_path / "tokenizer.json"
    tok.write_text(state["tokenizer_json"])
    # a folder another trainer wrote gets nothing from kssm: the results need a folder of their own
    assert main(["eval", "samples", "--model", str(ref), "--tokenizer", str(tok), "--device", "cpu"]) == 2
    assert "--out" in capsys.readouterr().err and sorted(p.name for p in ref.parent.iterdir()) == ["best_model.pt"]
    out = tmp_path / "ref-eval"
    rc = main(["eval", "samples", "--model", str(ref), "--tokenizer", str(tok), "--device", "cpu", "--json",
               "--gen-tokens", "4", "--out", str(out)])
    d = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and d["step"] == 40 and (out / "eval" / "samples.json").exists()
    ref_loaded = load_model(ref, "cpu", tok)
    assert ref_loaded.source == "reference"
    assert ref_loaded.model.cfg == loaded.model.cfg  # every shape recovered from the tensors
    x = _windows(loaded)[:, :-1]
    with torch.no_grad(), intervene(ref_loaded.model, noise=False), intervene(loaded.model, noise=False):
        assert torch.equal(ref_loaded.model(x).logits, loaded.model(x).logits)


def test_infer_config_of_the_reference_medium_size():
    cfg = model_config_for("medium", vocab_size=100_277)
    with torch.device("meta"):
        sd = KSSM(cfg).state_dict()
    got = infer_model_config(sd)
    assert (got.vocab_size, got.d_model, got.n_layers, got.n_oscillators, got.n_harmonics, got.max_seq_len) == (
        100_277, 384, 6, 192, 32, 1024)
    assert got == ModelConfig(**{**cfg.to_dict(), "max_seq_len": 1024})


def test_a_too_large_tokenizer_is_refused(model_path, tmp_path, capsys):
    from kssm_core.training.data import Tokenizer

    big = Tokenizer.train(["some words here and there " * 50], 300)
    small_state = torch.load(model_path, weights_only=True)
    sd = {k: v for k, v in small_state["model_state"].items()}
    sd["embed.weight"] = sd["embed.weight"][:200].clone()  # a model with a 200-token vocabulary
    sd.pop("output_head.weight", None)
    path = tmp_path / "m.pt"
    torch.save({"model_state": sd}, path)
    big.save(tmp_path / "tok.json")
    assert main(["eval", "samples", "--model", str(path), "--tokenizer", str(tmp_path / "tok.json"),
                 "--device", "cpu"]) == 2
    assert "the tokenizer has" in capsys.readouterr().err


# ---- held-out data and helpers ---------------------------------------------------------------------

def test_held_out_prefers_the_run_cache_then_the_embedded_corpus(loaded, tmp_path):
    cached = held_out(loaded.tokenizer, loaded.train_config, loaded.path.parent, 500)
    assert cached.source.startswith("validation cache")
    fallback = held_out(loaded.tokenizer, {}, tmp_path, 500)  # no config.json, no cache, no corpus
    assert "embedded" in fallback.source and len(fallback.tokens) > 500
    assert int(fallback.tokens.max()) < loaded.model.cfg.vocab_size


def test_suite_without_output_folder_writes_nothing(loaded, tmp_path):
    result = run_suite("clamp-sweep", _ctx(loaded))
    assert result.verdict in ("pass", "warn", "fail")
    assert [s["u_floor"] for s in result.data["sweep"]][0] == 0.001
    assert result.data["sweep"][-1]["u_floor"] == 1.0
    assert not list(tmp_path.iterdir())


def test_agency_scoring_helpers():
    assert has_action(" go to the market")
    assert has_action(" really wanted more")
    assert not has_action(" the the the")
    assert not has_action(" be very happy")  # an auxiliary is not an action
    assert not has_action(" blue sky and then we run")  # the verb is past the first three words
    assert jaccard("a b c", "a b c") == 1.0
    assert jaccard("a b", "c d") == 0.0
    assert jaccard("", "") == 1.0


def test_spearman_handles_ties_and_direction():
    x = torch.tensor([1.0, 2.0, 2.0, 3.0, 4.0])
    assert spearman(x, x * 10) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_progress_bar_draws_on_a_terminal_stream_and_logs_events(tmp_path, monkeypatch):
    import io

    from kssm_core.evals.progress import Progress

    bar = io.StringIO()
    p = Progress(tmp_path, "robustness", total=3, stream=bar)
    for _ in range(3):
        p.advance()
    p.end("pass", 1.5)
    assert "robustness" in bar.getvalue() and "3/3" in bar.getvalue() and bar.getvalue().endswith("\n")
    events = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [e["done"] for e in events if e["event"] == "eval_progress"] == [1, 2, 3]
    assert events[-1] == {**events[-1], "event": "eval_end", "verdict": "pass", "elapsed_s": 1.5}
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: no bar, no carriage returns
    assert Progress(None, "x").stream is None


def test_bad_options_are_refused_in_one_line(model_path, capsys):
    assert main(["eval", "agency", "--model", str(model_path), "--samples", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--samples" in err


def test_generated_text_cannot_drive_the_terminal():
    from kssm_core.commands.eval import _safe

    shown = _safe("ok\x1b[31mred\x07\nline")
    assert "\x1b" not in shown and "\x07" not in shown and "\n" not in shown
    assert shown.startswith("ok") and "red" in shown


def test_a_crashing_suite_becomes_one_failed_criterion(loaded, tmp_path, monkeypatch):
    from kssm_core.evals import samples

    def boom(ctx, result):
        raise RuntimeError("the held-out text vanished\nsecond line")

    monkeypatch.delenv("KSSM_DEBUG", raising=False)
    monkeypatch.setattr(samples, "run", boom)
    result = run_suite("samples", _ctx(loaded, tmp_path))
    assert result.verdict == "fail"
    assert [(c.name, c.detail) for c in result.criteria] == [("suite ran", "RuntimeError: the held-out text vanished")]
    assert json.loads((tmp_path / "samples.json").read_text())["verdict"] == "fail"
