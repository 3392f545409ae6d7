"""Every RNG a run touches (python, numpy, torch, CUDA): capture, restore, and pick a rank's stream.

Kept apart from the trainer and the DDP plumbing so a checkpoint's `rng` / `rng_per_rank` entries are
written and read in one place. States are tensors and primitives only: they load with weights_only=True.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every RNG the run touches, as tensors and primitives (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of rng_state(): a resumed run draws exactly the numbers the uninterrupted one would."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_for_rank(state: dict, rank: int) -> dict | None:
    """The RNG state rank `rank` resumes with: its own saved stream, else None (keep the fresh seed)."""
    per_rank = state.get("rng_per_rank")
    if isinstance(per_rank, (list, tuple)) and rank < len(per_rank):
        return per_rank[rank]
    return state.get("rng") if rank == 0 else None
