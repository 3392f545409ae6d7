"""`kssm eval SUITE --model PATH`: the runbook's Final Validation Checklist (see docs/eval.md).

Exit codes: 0 the verdict is pass, 1 warn or fail ("all tests must pass"), 2 refused (bad model file,
bad arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kssm_core.evals.options import EvalOptions

_D = EvalOptions()  # the defaults shown in --help
# Below this size a forward pass is a few small matmuls: a second thread gains little, and on a shared
# machine spinning OpenMP threads made `kssm eval all` 7x slower (113 s vs 16 s, tiny preset, load 6 on 2 cores).
SMALL_MODEL_PARAMS = 20_000_000

OPTION_FIELDS = ("seed", "windows", "seq_len", "gen_tokens", "samples", "temperature")
SUITE_NAMES = ("agency", "r-correlation", "robustness", "clamp-sweep", "samples", "benchmark", "all")


def register(sub) -> None:
    p = sub.add_parser("eval", help="run the final validation suite on a model (results in RUN_DIR/eval/)")
    p.add_argument("suite", choices=SUITE_NAMES, metavar="SUITE", help=f"one of: {', '.join(SUITE_NAMES)}")
    p.add_argument("--model", required=True, metavar="PATH", help="checkpoint file, e.g. results/final/best_model.pt")
    p.add_argument("--tokenizer", metavar="SPEC",
                   help="a tokenizers JSON file, 'chars' (the reference's character fallback) or 'tiktoken:NAME'; "
                        "needed for a reference checkpoint that embeds none")
    p.add_argument("--out", metavar="DIR", help="run folder for the results (default: the model's folder, unless "
                   "another trainer wrote it: kssm writes nothing there); files go to DIR/eval/")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: 1 for a model under "
                   f"{SMALL_MODEL_PARAMS // 1_000_000}M parameters unless OMP_NUM_THREADS is set, else torch's choice)")
    p.add_argument("--seed", type=int, help=f"the same seed gives the same numbers (default {_D.seed})")
    p.add_argument("--prompts", nargs="+", metavar="TEXT", help="prompts for samples and benchmark "
                   "(default: the runbook's three)")
    p.add_argument("--windows", type=int, help=f"held-out windows per setting (default {_D.windows})")
    p.add_argument("--seq-len", type=int, help="tokens per window (default: the run's context, at most 256)")
    p.add_argument("--gen-tokens", type=int, help=f"tokens per generated sample (default {_D.gen_tokens})")
    p.add_argument("--samples", type=int, help=f"samples per prompt (default {_D.samples})")
    p.add_argument("--temperature", type=float, help=f"sampling temperature (default {_D.temperature})")
    p.set_defaults(func=run)


def _print_result(d: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"{d['suite']}: {d['verdict'].upper()}  ({d['elapsed_s']:.1f} s)", file=out)
    for c in d["criteria"]:
        print(f"  {c['verdict'].upper():<4}  {c['name']}: {_fmt(c['value'])}  target {c['target']}", file=out)
        if c.get("detail"):
            print(f"        {c['detail']}", file=out)


def _safe(text: str) -> str:
    """Generated text is untrusted: escape control characters so it cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_samples(d: dict, out=None) -> None:
    for s in d.get("data", {}).get("samples", []):
        r = (s.get("R_stats") or {}).get("mean")
        print(f"  [{s.get('zone')}, R {r if r is None else round(r, 3)}] {_safe(s['prompt'])}{_safe(s['text'])}",
              file=out or sys.stdout)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    import torch

    from kssm_core.evals import SUITES, EvalContext, EvalError, load_model, run_all, run_suite
    from kssm_core.evals.runner import refresh_summary
    from kssm_core.evals.progress import start_event
    from kssm_core.evals.result import PASS, clean_json
    from kssm_core.training.trainer import pick_device

    def refuse(msg: str) -> int:
        print(f"kssm eval: {msg}", file=sys.stderr)
        return 2

    try:
        given = {k: getattr(args, k) for k in OPTION_FIELDS if getattr(args, k) is not None}
        if args.prompts:
            given["prompts"] = tuple(args.prompts)
        opts = EvalOptions(**given)
        device = pick_device(args.device)
    except ValueError as exc:
        return refuse(str(exc))
    try:
        loaded = load_model(args.model, device, args.tokenizer)
    except EvalError as exc:
        return refuse(str(exc))
    run_dir = Path(args.out) if args.out else Path(args.model).parent
    from kssm_core.runfolder.foreign import enclosing_foreign_run, foreign_run

    # after the load: a bad model file is the first thing to say; --out inside another trainer's folder counts too
    foreign = foreign_run(run_dir) or enclosing_foreign_run(run_dir)
    if foreign is not None:  # another trainer's folder: its files, not ours to add to
        flag = "pass another --out DIR" if args.out else "add --out DIR"
        return refuse(f"{run_dir} holds {foreign.what()}: kssm writes nothing into it; {flag} for the results "
                      f"(e.g. --out {run_dir.parent / (run_dir.name + '-eval')})")
    if args.threads is not None:
        if args.threads < 1:
            return refuse(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    elif (device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ
          and loaded.model.num_parameters() < SMALL_MODEL_PARAMS):
        torch.set_num_threads(1)
    eval_dir = run_dir / "eval"
    if eval_dir.is_symlink():
        return refuse(f"{eval_dir} is a symlink; results are only written into a real folder")
    try:
        eval_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return refuse(f"cannot create {eval_dir}: {exc.strerror}")
    ctx = EvalContext(loaded, device, opts, run_dir, eval_dir)
    start_event(eval_dir, list(SUITES) if args.suite == "all" else [args.suite], str(loaded.path))
    with torch.no_grad():
        if args.suite == "all":
            summary, results = run_all(ctx)
            if args.json:
                print(json.dumps(clean_json(dict(summary, results={k: r.to_dict() for k, r in results.items()}))))
            else:
                for r in results.values():
                    _print_result(clean_json(r.to_dict()))
                print(f"{summary['verdict'].upper()}: {summary['message']}")
                print(f"results in {eval_dir}/")
            return 0 if summary["verdict"] == PASS else 1
        result = run_suite(args.suite, ctx)
    refresh_summary(ctx)
    d = clean_json(result.to_dict())
    if args.json:
        print(json.dumps(d))
    else:
        _print_result(d)
        if args.suite == "samples":
            _print_samples(d)
        print(f"result in {eval_dir / (args.suite + '.json')}")
    return 0 if result.verdict == PASS else 1
