"""TensorBoard event files, written by our own ~100 lines: TFRecord framing, CRC-32C, and the few protobuf
messages TensorBoard reads (Event, Summary.Value with a scalar or a text tensor, SessionLog).

Why our own writer rather than tensorboardX or torch.utils.tensorboard: torch's SummaryWriter imports the
whole `tensorboard` package (grpcio, protobuf, werkzeug, markdown, ...), and tensorboardX pulls protobuf
too; the trainer writes events live with `--tensorboard DIR` on machines where only torch is installed, and
`kssm export --format tensorboard` should not need a 30 MB dependency either. The format is small and
stable (TFRecord + three messages of tensorflow/core/util/event.proto and summary.proto), and the tests
read every file back with TensorBoard's own EventAccumulator, which checks both CRCs of every record.
Scalars are float32 in TensorBoard's format (simple_value): CSV and JSON lines exports keep float64.

`TensorBoardSink` is the trainer's live writer: one events file per trainer process in DIR/<run name>/;
a resume writes a SessionLog START at the resumed step + 1, so TensorBoard drops the orphaned steps of the
killed run exactly as RunHistory does (and a fresh start in the same folder hides the archived run's).
`TeeEvents` hands the records the trainer emits to such a sink; a failing sink is dropped with one stderr
line and training goes on.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

FILE_VERSION = "brain.Event:2"

# event field -> TensorBoard tag (the tags first; the rest keep every metric of the run)
STEP_TAGS = {
    "loss": "train/loss", "ce": "train/ce", "reg": "train/reg", "R": "dyn/R", "u_val": "dyn/u_val",
    "grad_norm": "opt/grad_norm", "lr": "opt/lr", "tokens_per_s": "perf/tokens_per_s",
    "gpu_mem_bytes": "perf/gpu_mem_bytes", "gpu_mem_reserved_bytes": "perf/gpu_mem_reserved_bytes",
}
EVAL_TAGS = {"val_loss": "eval/val_loss", "val_ce": "eval/val_ce", "val_ppl": "eval/val_ppl", "val_R": "eval/val_R",
             "val_u": "eval/val_u"}
SAMPLE_TEXT_TAG = "samples/text"
SAMPLE_R_TAG = "samples/R"


# ---- CRC-32C (Castagnoli), as TFRecord frames it -------------------------------------------------------
def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


_T0 = _table()
_T = [_T0]
for _k in range(1, 4):  # slicing-by-4: four bytes per turn of the loop
    _T.append([(_T[_k - 1][i] >> 8) ^ _T0[_T[_k - 1][i] & 0xFF] for i in range(256)])
_T1, _T2, _T3 = _T[1], _T[2], _T[3]


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    n4 = len(data) - len(data) % 4
    t0, t1, t2, t3 = _T0, _T1, _T2, _T3
    for (w,) in struct.iter_unpack("<I", data[:n4]):
        crc ^= w
        crc = t3[crc & 0xFF] ^ t2[(crc >> 8) & 0xFF] ^ t1[(crc >> 16) & 0xFF] ^ t0[crc >> 24]
    for b in data[n4:]:
        crc = t0[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


# ---- protobuf, by hand ---------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 as protobuf encodes it
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _text(field: int, s: str) -> bytes:
    return _bytes(field, s.encode("utf-8", "replace"))


def scalar_value(tag: str, value: float) -> bytes:
    """Summary.Value {tag = 1, simple_value = 2 (float)}."""
    return _text(1, tag) + _key(2, 5) + struct.pack("<f", value)


def text_value(tag: str, text: str) -> bytes:
    """Summary.Value {tag, metadata {plugin_data {plugin_name "text"}}, tensor {DT_STRING, shape [1], string_val}}."""
    metadata = _bytes(1, _text(1, "text"))  # SummaryMetadata.plugin_data.plugin_name
    shape = _bytes(2, _key(1, 0) + _varint(1))  # TensorShapeProto.dim {size: 1}
    tensor = _key(1, 0) + _varint(7) + _bytes(2, shape) + _bytes(8, text.encode("utf-8", "replace"))  # dtype DT_STRING
    return _text(1, tag) + _bytes(9, metadata) + _bytes(8, tensor)


def event(wall_time: float, step: int = 0, *, summary_values: list[bytes] | None = None,
          file_version: str | None = None, session_start: bool = False) -> bytes:
    """An Event {wall_time = 1 (double), step = 2, file_version = 3, summary = 5, session_log = 7}."""
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _text(3, file_version)
    if summary_values:
        out += _bytes(5, b"".join(_bytes(1, v) for v in summary_values))
    if session_start:
        out += _bytes(7, _key(1, 0) + _varint(1))  # SessionLog.status = START
    return out


class EventFileWriter:
    """One `events.out.tfevents.*` file in `folder`; records are buffered and flushed on flush()/close()."""

    def __init__(self, folder: str | Path, wall_time: float | None = None, suffix: str = ""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time() if wall_time is None else wall_time
        host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in socket.gethostname())[:64] or "host"
        base = f"events.out.tfevents.{int(now):010d}.{host}.{os.getpid()}{suffix}"
        path, n = self.folder / base, 1
        while path.exists():  # never append to another writer's file
            n += 1
            path = self.folder / f"{base}.{n}"
        self.path = path
        self._fh = open(path, "wb")
        self._lock = threading.Lock()
        self.write(event(now, file_version=FILE_VERSION))

    def write(self, event_bytes: bytes) -> None:
        with self._lock:
            self._fh.write(tfrecord(event_bytes))

    def scalars(self, step: int, wall_time: float, values: dict[str, float]) -> None:
        """The finite values of one step, as one Event (NaN / inf / None are left out, as TensorBoard can't plot them)."""
        vals = [scalar_value(tag, v) for tag, v in values.items() if _finite(v)]
        if vals:
            self.write(event(wall_time, step, summary_values=vals))

    def text(self, step: int, wall_time: float, tag: str, text: str) -> None:
        self.write(event(wall_time, step, summary_values=[text_value(tag, text)]))

    def session_start(self, step: int, wall_time: float) -> None:
        """TensorBoard drops every earlier event at or after `step` when it reads this (a restart)."""
        self.write(event(wall_time, step, session_start=True))

    def flush(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def sample_text(record: dict) -> str:
    """What a sample reads as in TensorBoard's text tab: the prompt followed by the generated text."""
    prompt, text = record.get("prompt"), record.get("text")
    return (prompt if isinstance(prompt, str) else "") + (text if isinstance(text, str) else "")


# ---- the trainer's live sink ---------------------------------------------------------------------------
class TensorBoardSink:
    """Writes the trainer's step / eval / sample records to DIR/<run_name>/ as they are emitted."""

    def __init__(self, root: str | Path, run_name: str):
        self.folder = Path(root) / run_name
        self.writer: EventFileWriter | None = None

    def __call__(self, record: dict) -> None:
        kind, t = record.get("event"), record.get("t")
        t = float(t) if _finite(t) else time.time()
        step = record.get("step")
        step = step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else 0
        if kind == "run_start":
            self.close()
            self.writer = EventFileWriter(self.folder, t)
            start = record.get("start_step")
            start = start if isinstance(start, int) and start >= 0 else 0
            self.writer.session_start(start + 1, t)  # hide what an earlier process logged after this run's start
            self.writer.flush()
            return
        if self.writer is None:
            return
        if kind == "step":
            self.writer.scalars(step, t, {tag: record.get(k) for k, tag in STEP_TAGS.items()})
        elif kind == "eval":
            self.writer.scalars(step, t, {tag: record.get(k) for k, tag in EVAL_TAGS.items()})
        elif kind == "sample":
            self.writer.text(step, t, SAMPLE_TEXT_TAG, sample_text(record))
            self.writer.scalars(step, t, {SAMPLE_R_TAG: record.get("R")})
        elif kind == "run_end":
            self.close()
            return
        self.writer.flush()  # someone may have TensorBoard open on it

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class TeeEvents:
    """An EventWriter that also hands run_start / step / eval / sample / run_end records to `sink`.

    Everything else (sync, close, last_emit) is the wrapped writer's. A sink that raises is dropped after one
    line on stderr: a full disk under the TensorBoard folder must not stop the training.
    """

    KINDS = frozenset({"run_start", "step", "eval", "sample", "run_end"})

    def __init__(self, writer, sink: Callable[[dict], None]):
        self._writer = writer
        self._sink: Callable[[dict], None] | None = sink
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> dict:
        record = self._writer.emit(event, **fields)
        if event in self.KINDS and self._sink is not None:
            with self._lock:
                try:
                    if self._sink is not None:
                        self._sink(record)
                except Exception as exc:  # noqa: BLE001 - any failure of a side output
                    print(f"kssm train: --tensorboard output stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
                    self._drop()
        return record

    def _drop(self) -> None:
        sink, self._sink = self._sink, None
        try:
            getattr(sink, "close", lambda: None)()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            with self._lock:
                self._drop()

    def __getattr__(self, name: str):
        return getattr(self._writer, name)
