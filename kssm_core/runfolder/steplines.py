"""A typed fast path for the step events that make up most of a long events.jsonl.

`decode_steps(raws)` decodes many step lines at once with a msgspec decoder of a Struct built from
history.STEP_FIELDS and returns them as one columnar `StepBatch` (an array per field, no dict per event).
It returns None on any doubt (msgspec missing, a line it cannot type, an event that is not "step",
invalid UTF-8), and the caller then parses those lines the ordinary way: the fast path only ever takes
lines whose meaning is the same under both decoders.
"""

from __future__ import annotations

from array import array
from operator import attrgetter

from kssm_core.runfolder.history import NAN, STEP_FIELDS, StepBatch

try:  # optional at import: without it every line takes the json path
    import msgspec
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    msgspec = None

STEP_TAG = b'"event":"step"'  # a line holding this (outside a string: JSON escapes the quotes) may be a step
_NAMES = ("event", "step", "t") + STEP_FIELDS
_GET = {name: attrgetter(name) for name in _NAMES}
_decoder = None


def available() -> bool:
    return msgspec is not None


def _get_decoder():
    global _decoder
    if _decoder is None:
        # gc=False: these objects hold only numbers and one str, never cycles; untracked they decode faster.
        # An absent metric decodes as NaN, not None, so a column fills an array("d") without a second pass.
        step = msgspec.defstruct("StepLine", [("event", str), ("step", int), ("t", float | None, None)]
                                 + [(f, float | None, NAN) for f in STEP_FIELDS], gc=False)
        _decoder = msgspec.json.Decoder(list[step])
    return _decoder


def decode_steps(raws: list[bytes]) -> StepBatch | None:
    """One StepBatch for these lines, or None when any of them is not a plainly typed step event."""
    if msgspec is None or not raws:
        return None
    blob = b"[" + b",".join(raws) + b"]"
    if not blob.isascii():
        try:  # msgspec skips unknown string fields without checking them; json.loads would refuse bad UTF-8
            blob.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None
    try:
        objs = _get_decoder().decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError):
        return None
    if len(objs) != len(raws):  # a line holding two objects ("a, b")
        return None
    if set(map(_GET["event"], objs)) != {"step"}:  # e.g. a nested {"event":"step"} inside another event
        return None
    return StepBatch(list(map(_GET["step"], objs)), list(map(_GET["t"], objs)),
                     {f: _column(objs, _GET[f]) for f in STEP_FIELDS})


def _column(objs: list, get) -> array:
    try:
        return array("d", map(get, objs))
    except TypeError:  # an explicit null (the writer's NaN / inf) among them
        return array("d", [NAN if v is None else v for v in map(get, objs)])
