"""`kssm train`: the runbook's trainer command line (flags match train_kssm_v3.py, plus stages and presets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kssm_core.config import PRESETS, STAGES, TrainConfig, stage


def register(sub) -> None:
    p = sub.add_parser("train", help="train a K-SSM v3 model (a stage of the runbook, or any number of steps)")
    p.add_argument("--stage", type=int, choices=range(1, 6), metavar="N",
                   help="runbook stage 1..5: 100/500/1500/5000/10000 steps in RUNS_ROOT/stage1..stage4, final")
    p.add_argument("--runs-root", default="results", help="folder holding the stage folders (default: results)")
    p.add_argument("--max-steps", type=int, help="optimiser steps to train to (default: the stage's target, or 100)")
    p.add_argument("--output-dir", help="run folder (default: RUNS_ROOT/<stage folder>)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the newest loadable checkpoint")
    p.add_argument("--init-from", metavar="CKPT", help="start from an earlier stage's weights (fresh optimiser); "
                   "also a reference trainer's checkpoint_N.pt / best_model.pt")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="model size (default: tiny; with --init-from, the checkpoint's own shape)")
    p.add_argument("--corpus", help=".txt file, folder of .txt files, or .jsonl with a text field (default: embedded)")
    p.add_argument("--tokenizer", metavar="SPEC",
                   help="a tokenizers JSON file, 'chars' (the reference's character fallback, 256 ids) or "
                        "'tiktoken:NAME' (only if tiktoken and its encoding file are already here; never downloaded). "
                        "Default: a BPE trained on the corpus")
    p.add_argument("--adopt", action="store_true",
                   help="the output folder holds a run another trainer wrote: move its files to previous/<UTC time>/ "
                        "first (without it kssm refuses to write there)")
    p.add_argument("--data-dir", help="token cache folder (default: data/cache)")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default: the preset's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--learning-rate", type=float, help="peak learning rate (default: 0.001)")
    p.add_argument("--lambda-reg", type=float, help="weight of the bistability regulariser (default: 0.01)")
    p.add_argument("--batch-size", type=int, help="micro-batch size (sequences)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    p.add_argument("--seq-len", type=int, help="context length in tokens")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--log-interval", type=int)
    p.add_argument("--eval-interval", type=int)
    p.add_argument("--save-interval", type=int)
    p.add_argument("--eval-batches", type=int)
    p.add_argument("--keep-checkpoints", type=int, help="periodic checkpoints to keep (default 3; milestones always kept)")
    p.add_argument("--monostable", action="store_true", default=None, help="the ablation: no u clamp, lambda_reg 0")
    p.add_argument("--heartbeat-seconds", type=float)
    p.add_argument("--quiet", action="store_true", help="do not echo the log to stdout")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine (torchrun + DDP; one per GPU). See docs/distributed.md")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="auto (default): bf16 autocast on a CUDA GPU that supports it, else fp32")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also write TensorBoard event files live, to DIR/<run folder name>/ (tensorboard --logdir DIR)")
    p.set_defaults(func=run)


FIELDS = (
    "max_steps", "output_dir", "resume", "init_from", "preset", "corpus", "data_dir", "vocab_size", "seed", "device",
    "learning_rate", "lambda_reg", "batch_size", "grad_accum", "seq_len", "warmup_steps", "log_interval",
    "eval_interval", "save_interval", "eval_batches", "keep_checkpoints", "monostable", "heartbeat_seconds", "stage",
    "precision", "tokenizer",
)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The run's config and the flags given explicitly (those override a checkpoint's on --resume)."""
    explicit = {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}
    typed = dict(explicit)  # only flags the user typed override a checkpoint's settings on --resume
    st = stage(args.stage) if args.stage else None
    if st is None and "max_steps" in explicit:
        st = next((s for s in STAGES if s.steps == explicit["max_steps"]), None)
        if st is not None:
            explicit.setdefault("stage", st.number)
    st = st or stage(1)
    if "init_from" in explicit and "preset" not in explicit:
        explicit["preset"] = None  # the checkpoint's own shape (kssm_core.model.shapes)
    explicit.setdefault("max_steps", st.steps)
    explicit.setdefault("output_dir", str(Path(args.runs_root) / st.output_dir))
    if args.stage:
        explicit["stage"] = args.stage
        typed.setdefault("max_steps", st.steps)  # `--stage N` means that stage's target
    return TrainConfig(**explicit), {k: v for k, v in typed.items() if k not in ("output_dir",)}


def run(args: argparse.Namespace) -> int:
    import sys

    from kssm_core.training.trainer import EXIT_REFUSED, train

    try:
        cfg, explicit = config_from_args(args)
        cfg.resolve()
    except ValueError as exc:
        print(f"kssm train: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    overrides = {k: v for k, v in explicit.items() if k not in ("resume", "stage")}
    from kssm_core.training import distributed

    nproc = getattr(args, "nproc", None)
    if nproc is not None:
        refusal = _check_nproc(nproc, cfg)
        if refusal:
            print(f"kssm train: {refusal}", file=sys.stderr)
            return EXIT_REFUSED
        if nproc > 1:
            return distributed.launch(nproc, args, cfg.output_dir)
    sink = None
    if getattr(args, "tensorboard", None):
        from kssm_core.reports.tfevents import TensorBoardSink

        try:
            Path(args.tensorboard).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"kssm train: --tensorboard {args.tensorboard}: cannot create it: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_REFUSED
        sink = TensorBoardSink(args.tensorboard, Path(cfg.output_dir).name)
    dist = distributed.Dist.init_from_env()  # a torchrun worker joins its job; otherwise one process
    try:
        echo = None if args.quiet or not dist.is_main else sys.stdout
        return train(cfg, echo=echo, overrides=overrides, dist=dist, sink=sink if dist.is_main else None,
                     adopt=bool(getattr(args, "adopt", False)))
    finally:
        dist.teardown()


def _check_nproc(nproc: int, cfg: TrainConfig) -> str | None:
    """Why `--nproc` cannot run (one line), or None."""
    from kssm_core.training import distributed
    from kssm_core.runfolder.lock import lock_state, read_lock

    if nproc < 1:
        return f"--nproc must be >= 1, got {nproc}"
    if distributed.under_torchrun():
        return "--nproc starts torchrun itself; under torchrun leave it out (torchrun's --nproc-per-node sets it)"
    resolved = cfg.resolve()
    try:
        distributed.split_batch(resolved.batch_size, resolved.grad_accum, nproc)
    except distributed.DistError as exc:
        return str(exc)
    info = read_lock(cfg.output_dir)
    state, reason = lock_state(info)
    force = f" (if that trainer is gone for good: kssm unlock --force {cfg.output_dir})"
    if info is not None and info.unreadable:
        return f"{cfg.output_dir}: {reason}{force}"
    if state == "foreign":
        return f"{cfg.output_dir}/training.lock {reason}; another trainer owns this folder{force}"
    if state == "live":
        return f"{cfg.output_dir}/training.lock {reason}; another trainer owns this folder (stop it first, or use another --output-dir)"
    return None
