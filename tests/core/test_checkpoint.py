"""Checkpoint files: atomic save, ENOSPC, safe loading (malicious pickle refused), newest loadable, pruning."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys

import pytest
import torch

from kssm_core.training import checkpoint as ckpt
from kssm_core.training.checkpoint import (
    CheckpointError, DiskFull, atomic_save, checkpoint_files, load_checkpoint, newest_loadable, prune,
    remove_stale_temps,
)
from kssm_testkit import Evil, evil_checkpoint


def state(step: int) -> dict:
    return {"format": ckpt.CHECKPOINT_FORMAT, "step": step, "model_state": {"w": torch.full((64,), float(step))}}


def test_atomic_save_round_trip_and_no_temp_left(tmp_path):
    n = atomic_save(state(3), tmp_path / "checkpoint_3.pt")
    assert n == (tmp_path / "checkpoint_3.pt").stat().st_size
    loaded = load_checkpoint(tmp_path / "checkpoint_3.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["model_state"]["w"], torch.full((64,), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_3.pt"]


def test_enospc_removes_the_temp_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_1.pt"
    atomic_save(state(1), path)
    before = path.read_bytes()

    def full_disk(fd, data):
        os.write(fd, data[: len(data) // 2])  # half a file reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_all", full_disk)
    with pytest.raises(DiskFull, match="disk full"):
        atomic_save(state(2), path)  # overwriting the same name: the old one must survive
    with pytest.raises(DiskFull):
        atomic_save(state(2), tmp_path / "checkpoint_2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1.pt"]
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1


def test_other_os_errors_also_leave_no_temp_file(tmp_path, monkeypatch):
    def broken(fd, data):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(ckpt, "_write_all", broken)
    with pytest.raises(OSError):
        atomic_save(state(1), tmp_path / "checkpoint_1.pt")
    assert list(tmp_path.iterdir()) == []


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint_9.pt"
    evil_checkpoint(path, marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and "refused" in msg and path.name in msg
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_raw_pickle_is_refused_too(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint_9.pt"
    path.write_bytes(pickle.dumps({"model_state": Evil(marker)}))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_the_crafted_file_really_is_dangerous_when_loaded_unsafely(tmp_path):
    # Control for the two tests above: a weights_only=False load does run the payload.
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    evil_checkpoint(path, marker)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_a_dict"])
def test_damaged_files_give_one_line_errors(tmp_path, damage):
    path = tmp_path / "checkpoint_4.pt"
    atomic_save(state(4), path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and path.name in str(err.value)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_newest_loadable_skips_damaged_and_malicious_newer_files(tmp_path):
    for s in (2, 4, 6, 8):
        atomic_save(state(s), tmp_path / f"checkpoint_{s}.pt")
    (tmp_path / "checkpoint_8.pt").write_bytes((tmp_path / "checkpoint_8.pt").read_bytes()[:100])
    evil_checkpoint(tmp_path / "checkpoint_6.pt", tmp_path / "PWNED")
    found = newest_loadable(tmp_path)
    assert found.step == 4 and found.state["step"] == 4
    assert len(found.skipped) == 2 and "checkpoint_8.pt" in found.skipped[0] and "checkpoint_6.pt" in found.skipped[1]
    assert not (tmp_path / "PWNED").exists()


def test_newest_loadable_none_and_all_broken(tmp_path):
    assert newest_loadable(tmp_path) is None
    (tmp_path / "checkpoint_1.pt").write_bytes(b"junk")
    found = newest_loadable(tmp_path)
    assert found.step < 0 and len(found.skipped) == 1


def test_checkpoint_files_orders_numerically_and_ignores_symlinks_and_other_names(tmp_path):
    for s in (9, 10, 100):
        atomic_save(state(s), tmp_path / f"checkpoint_{s}.pt")
    (tmp_path / "checkpoint_x.pt").write_bytes(b"")
    (tmp_path / "best_model.pt").write_bytes(b"")
    (tmp_path / "checkpoint_500.pt").symlink_to(tmp_path / "checkpoint_9.pt")
    assert [s for s, _ in checkpoint_files(tmp_path)] == [100, 10, 9]


def test_prune_keeps_newest_and_milestones(tmp_path):
    for s in (50, 100, 150, 200, 250, 300):
        atomic_save(state(s), tmp_path / f"checkpoint_{s}.pt")
    (tmp_path / "best_model.pt").write_bytes(b"x")
    removed = prune(tmp_path, keep=2, protected_steps=frozenset({100}))
    assert sorted(p.name for p in removed) == ["checkpoint_150.pt", "checkpoint_200.pt", "checkpoint_50.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best_model.pt", "checkpoint_100.pt", "checkpoint_250.pt", "checkpoint_300.pt",
    ]


def test_remove_stale_temps_only_touches_save_temp_files(tmp_path):
    keep = ["checkpoint_5.pt", "best_model.pt", ".config.json.tmp", "notes.tmp", ".checkpoint_5.pt"]
    for name in keep:
        (tmp_path / name).write_bytes(b"k")
    stale = [".checkpoint_5.pt.ab12cd.tmp", ".best_model.pt.zz9.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(b"s")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"o")
    (tmp_path / ".checkpoint_7.pt.link.tmp").symlink_to(outside)
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert outside.exists() and (tmp_path / ".checkpoint_7.pt.link.tmp").is_symlink()
    for name in keep:
        assert (tmp_path / name).exists()


def test_a_file_that_is_not_a_checkpoint_reads_as_damaged_not_as_hostile(tmp_path):
    path = tmp_path / "checkpoint_3.pt"
    path.write_text("garbage, e.g. an HTML error page saved under the checkpoint's name\n")
    with pytest.raises(CheckpointError, match="unreadable: damaged, truncated or not a checkpoint") as err:
        load_checkpoint(path)
    assert "refused" not in str(err.value) and "Weights only" not in str(err.value)


# ---- newest_loadable(required=...): a weights-only file is not a place to resume from ------------------------
def test_newest_loadable_with_required_keys_skips_a_weights_only_file(tmp_path):
    full = state(4) | {"optimizer_state": {}, "config": {}}
    atomic_save(full, tmp_path / "checkpoint_4.pt")
    atomic_save({"model_state": {"w": torch.zeros(4)}}, tmp_path / "checkpoint_8.pt")  # model_state only
    found = newest_loadable(tmp_path, required=("model_state", "optimizer_state", "config"))
    assert found.step == 4
    assert len(found.skipped) == 1 and "checkpoint_8.pt" in found.skipped[0]
    assert "lacks optimizer_state, config" in found.skipped[0]
    assert newest_loadable(tmp_path).step == 8  # without required, any loadable checkpoint will do


# ---- mmap=True: checking a checkpoint loads without reading every tensor ----------------------------------------
def _mapped_file(address: int) -> str | None:
    """The file behind the memory mapping that holds `address` (Linux /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as fh:
            lines = fh.readlines()
    except OSError:
        pytest.skip("needs /proc/self/maps")
    for line in lines:
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5].strip() if len(fields) > 5 else None
    return None


def test_load_with_mmap_maps_the_tensors_and_still_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "checkpoint_1.pt"
    atomic_save(state(1) | {"big": torch.arange(100_000, dtype=torch.float32)}, path)
    loaded = load_checkpoint(path, mmap=True)
    assert torch.equal(loaded["big"], torch.arange(100_000, dtype=torch.float32))
    assert _mapped_file(loaded["big"].data_ptr()) == str(path)  # mapped from the file, not read into memory
    assert _mapped_file(load_checkpoint(path)["big"].data_ptr()) != str(path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 64):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="unreadable"):
            load_checkpoint(path, mmap=True)


def test_mmap_load_still_refuses_pickled_objects(tmp_path):
    path = tmp_path / "checkpoint_9.pt"
    marker = tmp_path / "PWNED"
    evil_checkpoint(path, marker)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, mmap=True)
    assert not marker.exists()
    raw = tmp_path / "checkpoint_10.pt"
    raw.write_bytes(pickle.dumps({"model_state": {}}, protocol=2))  # a bare pickle, not torch's zip format
    with pytest.raises(CheckpointError):
        load_checkpoint(raw, mmap=True)


def test_remove_stale_temps_also_removes_a_killed_config_json_write(tmp_path):
    # config.json is written through kssm_core.runfolder.atomic too: a kill mid-write leaves .config.json.<random>.tmp
    (tmp_path / ".config.json.x7q2.tmp").write_text("{")
    (tmp_path / "config.json").write_text("{}")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".config.json.x7q2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_truncated_checkpoint_names_the_reason_in_one_short_sentence(tmp_path):
    path = tmp_path / "checkpoint_4.pt"
    torch.save({"model_state": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "unreadable" in msg and msg.endswith(")") and "If you are seeing this error" not in msg
