"""`--precision auto|fp32|bf16`: the autocast context the trainer runs the model under.

bf16 autocast is for CUDA only (auto picks it where the GPU supports bf16). The oscillator bank opts out of
autocast inside itself and runs in fp32 (see KuramotoOscillatorBank.forward): its phase maths does not
survive bf16's 8-bit mantissa. Linear layers, the FFN and the output head gain the speed.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(requested: str, device: torch.device) -> str:
    """"fp32" or "bf16" for this device; ValueError (one line) for a combination that cannot run."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if requested == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if requested == "bf16" and not cuda_bf16:
        raise ValueError(f"--precision bf16 needs a CUDA GPU with bf16 support (device here: {device}); use --precision auto or fp32")
    return requested


def autocast(device: torch.device, precision: str):
    """Context for the forward pass (and the loss): bf16 autocast on CUDA, nothing otherwise."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
