"""Byte frames between a worker and its decode process: raw messages one way, decoded
batches the other.

A frame is a length-prefixed JSON header followed by raw buffers (numpy arrays, message
values) whose sizes the header gives. Nothing is pickled: the values come from Kafka, and
the batches hold strings read from it. Both ends are the same driftline version (the
decode process is started from the worker's own interpreter), so the frames carry no
version; a frame that does not parse raises :class:`ValueError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from driftline.schemas.envelope import obj_array
from driftline.schemas.models import DecodeResult, EventBatch, Rejection

__all__ = ["decode_batches", "decode_messages", "encode_batches", "encode_messages"]

_LEN = struct.Struct("<I")
_OPTIONAL = ("prediction_label", "shadow_of", "trace_id", "outcome")
_ARRAYS = ("ts", "prediction_score", "latency_ms", "partition", "offset")


def _frame(header: dict[str, Any], buffers: Sequence[bytes]) -> bytes:
    head = orjson.dumps(header)
    return b"".join([_LEN.pack(len(head)), head, *buffers])


def _unframe(frame: bytes) -> tuple[dict[str, Any], memoryview]:
    if len(frame) < _LEN.size:
        raise ValueError("truncated frame")
    (size,) = _LEN.unpack_from(frame)
    header = orjson.loads(frame[_LEN.size:_LEN.size + size])
    if type(header) is not dict:
        raise ValueError("frame header is not an object")
    return header, memoryview(frame)[_LEN.size + size:]


class _Reader:
    """Consecutive buffers of a frame's body."""

    def __init__(self, body: memoryview) -> None:
        self.body, self.at = body, 0

    def take(self, size: int) -> memoryview:
        if size < 0 or self.at + size > len(self.body):
            raise ValueError("frame shorter than its header says")
        out = self.body[self.at:self.at + size]
        self.at += size
        return out

    def array(self, dtype: str, n: int) -> np.ndarray[Any, Any]:
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(dt.itemsize * n), dtype=dt).copy()

    def end(self) -> None:
        if self.at != len(self.body):
            raise ValueError("frame longer than its header says")


# ----------------------------------------------------------------------------- messages


def encode_messages(values: Sequence[bytes], partitions: Sequence[int],
                    offsets: Sequence[int], timestamps: Sequence[float]) -> bytes:
    """Message values with their partitions, offsets and timestamps (parallel lists)."""
    n = len(values)
    lens = np.fromiter(map(len, values), dtype=np.uint32, count=n)
    return _frame({"n": n}, [
        lens.tobytes(), np.asarray(partitions, dtype=np.int64).tobytes(),
        np.asarray(offsets, dtype=np.int64).tobytes(),
        np.asarray(timestamps, dtype=np.float64).tobytes(), *values])


def decode_messages(frame: bytes) -> tuple[list[bytes], list[int], list[int], list[float]]:
    """The parallel lists :func:`encode_messages` framed."""
    header, body = _unframe(frame)
    n = header["n"]
    r = _Reader(body)
    lens = r.array("<u4", n)
    parts, offs, stamps = r.array("<i8", n), r.array("<i8", n), r.array("<f8", n)
    blob = bytes(r.take(int(lens.sum())))
    r.end()
    ends = np.cumsum(lens, dtype=np.int64).tolist()
    values = [blob[a:b] for a, b in zip([0, *ends], ends, strict=False)]
    return values, parts.tolist(), offs.tolist(), stamps.tolist()


# ----------------------------------------------------------------------------- batches


def _batch_header(b: EventBatch) -> tuple[dict[str, Any], list[bytes]]:
    n = len(b)
    head: dict[str, Any] = {
        "model": b.model, "features": list(b.feature_names), "n": n,
        "numeric": b.numeric.dtype.str,
        "event_id": b.event_id.tolist(), "model_version": b.model_version.tolist(),
    }
    bufs = [np.ascontiguousarray(b.numeric).tobytes()]
    for name in _ARRAYS:
        a = getattr(b, name)
        head[name] = a.dtype.str
        bufs.append(np.ascontiguousarray(a).tobytes())
    for name in _OPTIONAL:
        a = getattr(b, name)
        head[name] = None if a is None else a.tolist()
    if b.text is not None:
        rows, cols = np.nonzero(b.text != None)  # noqa: E711 (elementwise on an object array)
        head["text"] = [rows.tolist(), cols.tolist(), b.text[rows, cols].tolist()]
    # segments are shared dicts (one object per distinct segment): keep the sharing
    codes: dict[int, int] = {}
    distinct: list[Any] = []
    seg_codes = []
    for s in b.segment.tolist():
        k = id(s)
        c = codes.get(k)
        if c is None:
            c = codes[k] = len(distinct)
            distinct.append(s)
        seg_codes.append(c)
    head["segments"] = distinct
    bufs.append(np.asarray(seg_codes, dtype=np.int32).tobytes())
    return head, bufs


def _batch(head: dict[str, Any], r: _Reader) -> EventBatch:
    n, names = head["n"], tuple(head["features"])
    numeric = r.array(head["numeric"], n * len(names)).reshape(n, len(names))
    arrays = {name: r.array(head[name], n) for name in _ARRAYS}
    distinct = obj_array(head["segments"])
    segment = distinct[r.array("<i4", n)] if n else obj_array([])
    text = None
    if "text" in head:
        rows, cols, strings = head["text"]
        text = np.full((n, len(names)), None, dtype=object)
        text[rows, cols] = obj_array(strings)
    opt = {name: None if head[name] is None else obj_array(head[name]) for name in _OPTIONAL}
    return EventBatch(
        model=head["model"], feature_names=names, numeric=numeric, text=text,
        ts=arrays["ts"], prediction_score=arrays["prediction_score"],
        prediction_label=opt["prediction_label"], event_id=obj_array(head["event_id"]),
        model_version=obj_array(head["model_version"]), segment=segment,
        latency_ms=arrays["latency_ms"], partition=arrays["partition"],
        offset=arrays["offset"], shadow_of=opt["shadow_of"], trace_id=opt["trace_id"],
        outcome=opt["outcome"])


def encode_batches(result: DecodeResult) -> bytes:
    """A :class:`DecodeResult` (batches, rejections with their payloads, event count)."""
    heads, bufs = [], []
    for b in result.batches.values():
        head, more = _batch_header(b)
        heads.append(head)
        bufs.extend(more)
    rejections = []
    for rej in result.rejections:
        rejections.append([rej.reason, rej.topic, rej.partition, rej.offset, rej.model,
                           len(rej.payload)])
        bufs.append(rej.payload)
    return _frame({"events": result.events, "batches": heads, "rejections": rejections}, bufs)


def decode_batches(frame: bytes) -> DecodeResult:
    """The :class:`DecodeResult` :func:`encode_batches` framed; batches in their order."""
    header, body = _unframe(frame)
    r = _Reader(body)
    batches = {}
    for head in header["batches"]:
        b = _batch(head, r)
        batches[b.model] = b
    rejections = [Rejection(reason, bytes(r.take(size)), topic, part, off, model)
                  for reason, topic, part, off, model, size in header["rejections"]]
    r.end()
    return DecodeResult(batches=batches, rejections=rejections, events=header["events"])
