"""Training throughput: the production model against the spec's naive oracle, on this machine.

"fast" is the production path: the fused oscillator kernel (kssm_core.model.oscillator) and the fused,
chunked head + cross-entropy (kssm_core.model.fused_ce). "oracle" is kssm_core.model.oracle.use_reference:
the spec's bank step by step and F.cross_entropy on full [B, S, V] logits, plain eager.

Two measurements, both paths in one run:

  (a) the oscillator bank alone, forward + backward, at the medium shapes (batch 8, context 512,
      D 384, 192 oscillators, 32 harmonics): median wall time of --repeats runs after a warm-up;
  (b) a whole training step per preset (model.loss + backward + grad clip + AdamW step) at the
      preset's batch, context and vocabulary: tokens/s (median step) and peak memory. Each (preset,
      path) runs in a fresh subprocess, so the peak resident set size (getrusage maxrss) belongs to it
      alone (VmHWM); on CUDA the peak is torch.cuda.max_memory_allocated instead.

Prints markdown tables with the machine (CPU model, cores, threads, torch, load average before and
after: the figures are only comparable within one run on the same machine).

    .venv/bin/python benchmarks/train_throughput.py                 # all presets, 3 repeats
    .venv/bin/python benchmarks/train_throughput.py --quick         # smoke run: tiny only, small bank shapes
    .venv/bin/python benchmarks/train_throughput.py --presets medium --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

PATHS = ("oracle", "fast")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's address space.

    /proc/self/status VmHWM is reset by exec; getrusage's ru_maxrss is not (on Linux a child inherits
    the parent's high-water mark through fork + exec), so it is only the fallback off Linux.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def bench_bank(device, batch: int, seq: int, repeats: int, compile_: bool) -> list[dict]:
    """(a) median wall and CPU seconds of one bank forward + backward per path, at the medium (D, N, H)."""
    import torch

    from kssm_core.config import model_config_for
    from kssm_core.model.kssm import KuramotoOscillatorBank
    from kssm_core.model.oracle import reference_bank_forward

    torch.manual_seed(0)
    bank = KuramotoOscillatorBank(model_config_for("medium", vocab_size=64)).to(device)
    bank.reset_parameters()
    h0 = torch.randn(batch, seq, bank.cfg.d_model, device=device)

    def loss_oracle(h):
        out = reference_bank_forward(bank, h)
        return out.sum() + bank.last.reg + bank.last.R.sum()

    def loss_fast(h):
        out = bank(h)
        return out.sum() + bank.last.reg + bank.last.R.sum()

    paths = {"oracle (naive [B,S,N,H])": loss_oracle, "fast kernel": loss_fast}
    startup: dict[str, float] = {}
    if compile_:  # torch.compile of each path; its start-up (compilation) is reported on its own
        for name, fn in list(paths.items()):
            label = f"{name} + torch.compile"
            try:
                compiled = torch.compile(fn)
                t0 = time.perf_counter()
                compiled(h0.clone().requires_grad_()).backward()
                sync(device)
                startup[label] = time.perf_counter() - t0
                paths[label] = compiled
            except Exception as exc:  # noqa: BLE001 - no compiler toolchain: report, keep going
                print(f"torch.compile unavailable for {name}: {type(exc).__name__}: {str(exc)[:200]}")

    def once(fn) -> tuple[float, float]:
        h = h0.clone().requires_grad_()
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn(h).backward()
        sync(device)
        return time.perf_counter() - t0, time.process_time() - c0

    for fn in paths.values():
        once(fn)  # warm-up: allocator, kernels, page faults
    wall: dict[str, list[float]] = {p: [] for p in paths}
    cpu: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(repeats):
        for name, fn in paths.items():  # interleaved, so a burst of load from elsewhere hits every path
            w, c = once(fn)
            wall[name].append(w)
            cpu[name].append(c)
    return [{"path": p, "wall_s": statistics.median(wall[p]), "cpu_s": statistics.median(cpu[p]),
             "startup_s": startup.get(p)} for p in paths]


def worker(preset: str, path: str, repeats: int, device_name: str) -> dict:
    """(b) in this (fresh) process: a training step of `preset` on `path`; prints one JSON line."""
    import torch

    from kssm_core.config import PRESETS, model_config_for
    from kssm_core.model.kssm import KSSM
    from kssm_core.model.oracle import use_reference

    device = pick_device(device_name)
    rss_base = peak_rss_bytes()  # the interpreter + torch, before the model exists
    p = PRESETS[preset]
    torch.manual_seed(0)
    model = KSSM(model_config_for(preset, p.vocab_size)).to(device)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW(  # as the trainer builds it
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), fused=device.type == "cuda",
    )
    idx = torch.randint(0, p.vocab_size, (p.batch_size, p.seq_len + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]

    cpu_times: list[float] = []

    def step() -> float:
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        total, _ce, _out = model.loss(x, y, lambda_reg=0.01)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)
        cpu_times.append(time.process_time() - c0)
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    if path == "oracle":
        with use_reference(model):
            first = step()
            times = [step() for _ in range(repeats)]
    else:
        first = step()
        times = [step() for _ in range(repeats)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    med = statistics.median(times)
    return {
        "preset": preset, "path": path, "first_step_s": first, "step_s": med,
        "cpu_s": statistics.median(cpu_times[1:]),
        "tokens_per_s": p.batch_size * p.seq_len / med, "peak_bytes": peak,
        "base_bytes": rss_base if device.type != "cuda" else 0,
        "shape": f"B{p.batch_size} S{p.seq_len} V{p.vocab_size}",
    }


def run_worker(preset: str, path: str, repeats: int, device: str, threads: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", preset, path,
           "--repeats", str(repeats), "--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {preset}/{path} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=None, help="comma-separated presets (default: tiny,small,medium)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats after one warm-up (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny preset, 1 repeat, bank at batch 1 x 128")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--compile", action="store_true",
                    help="also time both bank paths under torch.compile (start-up reported separately)")
    ap.add_argument("--skip-bank", action="store_true", help="only the whole-step table")
    ap.add_argument("--skip-steps", action="store_true", help="only the bank table")
    ap.add_argument("--worker", nargs=2, metavar=("PRESET", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.worker:
        preset, path = args.worker
        print(json.dumps(worker(preset, path, repeats, args.device)))
        return 0

    from kssm_core.config import PRESETS

    presets = (args.presets or ("tiny" if args.quick else "tiny,small,medium")).split(",")
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        ap.error(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here (use --device cpu)")
    card = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load0 = os.getloadavg()
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {device}{card}, python {platform.python_version()}")
    print(f"Load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}\n")

    if not args.skip_bank:
        batch, seq = (1, 128) if args.quick else (8, 512)
        rows = bench_bank(device, batch, seq, repeats, args.compile)
        base = rows[0]
        print(f"Oscillator bank forward + backward, D 384, N 192, H 32, batch {batch} x context {seq} "
              f"(median of {repeats}; CPU = process CPU time over all threads):\n")
        print("| path | wall ms | CPU ms | speed-up (wall) | speed-up (CPU) | start-up s |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            start = "-" if r["startup_s"] is None else f"{r['startup_s']:.1f}"
            print(f"| {r['path']} | {r['wall_s'] * 1e3:,.1f} | {r['cpu_s'] * 1e3:,.1f} | "
                  f"{base['wall_s'] / r['wall_s']:.1f}x | {base['cpu_s'] / r['cpu_s']:.1f}x | {start} |")
        print()

    if not args.skip_steps:
        rows = []
        for preset in presets:
            for path in PATHS:
                rows.append(run_worker(preset, path, repeats, args.device, args.threads))
        mem = "peak GPU MiB" if device.type == "cuda" else "peak RSS MiB"
        print(f"Training step (loss + backward + clip + AdamW) at the preset's batch/context/vocab, "
              f"median of {repeats} after a warm-up step; each row a fresh process:\n")
        print(f"| preset | shape | path | step s | CPU s | first step s | tokens/s | {mem} | "
              "speed-up (wall) | speed-up (CPU) | memory ratio |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for preset in presets:
            ref, fast = (next(r for r in rows if r["preset"] == preset and r["path"] == p) for p in PATHS)
            for r in (ref, fast):
                print(f"| {preset} | {r['shape']} | {r['path']} | {r['step_s']:.3f} | {r['cpu_s']:.3f} | "
                      f"{r['first_step_s']:.3f} | {r['tokens_per_s']:,.0f} | {mib(r['peak_bytes'])} | "
                      f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x | {ref['cpu_s'] / r['cpu_s']:.2f}x | "
                      f"{r['peak_bytes'] / ref['peak_bytes']:.2f} |")
        if device.type != "cuda":
            base_rss = statistics.median(r["base_bytes"] for r in rows)
            print(f"\n(peak RSS includes the Python + torch process itself, about {mib(base_rss)} MiB)")
    load1 = os.getloadavg()
    print(f"\nLoad average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} "
          "(the machine is shared: other processes may have run meanwhile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
