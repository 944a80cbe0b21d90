"""Fast validating codecs of the driftline topics (orjson).

:func:`decode_inference` is the worker's per-event hot path: it turns a list of raw Kafka
values (single InferenceEvents and batch envelopes, mixed) into one columnar
:class:`EventBatch` per model plus one :class:`Rejection` per unusable message. It never
raises on any input bytes. The JSON Schema files under ``schemas/json`` describe the same
contracts; the tests prove that the schemas and the decoders agree.

Hot path, chosen by measurement (CPU time per event, 20 features, 2,000 single events or
500-event envelopes per call). Columns envelopes, the SDK's packed form above all
(numeric columns as base64 float64, segments dictionary-encoded: 1.7 µs per event
against 5 for JSON columns), stay columns from the message to the batch: their blocks sit
in the accumulator beside the row tuples of other messages and are joined in row order.
A rows envelope is first tried whole, column by column
(:func:`~driftline.schemas.rows_block.rows_block`: one feature-key order, numeric features,
plain optional fields), which saves about a quarter of its decode time. Otherwise each
event goes through :func:`_fast_event`, a straight run of type and length tests for the
common shape (the open run's feature keys, numeric features packed to float64 at once,
numeric or absent ts/prediction/latency, string ids, a segment already validated in this
call). Anything else (the first event of a run, text/bool/null features, ISO times, class
labels, a new segment, any bad value) goes through :func:`_add_event`, which checks field
by field and names the reason. Both fast paths accept only what :func:`_add_event`
accepts, with the same rows (tests/unit/test_codecs_fast_path.py compares them on every
kind of variant). Grouping single events by model (or joining them into one JSON array)
to check them column-wise as well was slower: it keeps every parsed event alive until its
group is done, which costs about 2 µs per event, more than it saves; so single events are
packed as they are parsed, while their dicts are still in cache. msgspec typed decoding
(Structs with the limits as constraints) was measured too: about 1 µs per event dearer to
parse than ``orjson.loads`` but with the type and length checks done in C; it is not
used, as its accepted set would first have to be proven equal to :func:`_add_event`'s.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from itertools import count, islice, repeat
from typing import Any

import numpy as np
import orjson

from driftline.schemas.envelope import (
    ENVELOPE_V1,
    EXTRAS,
    NAN,
    ColumnsBlock,
    Reject,
    brief,
    check_latency,
    check_outcome,
    check_prediction,
    check_segment,
    check_str,
    check_ts,
    decode_columns,
    encode_envelope_columns,
    encode_envelope_rows,
    feature_values,
    json_type,
    too_long,
)
from driftline.schemas.envelope import obj_array as _obj
from driftline.schemas.limits import DEAD_LETTER_PAYLOAD_MAX, DEFAULT_LIMITS, REASON_CODES, Limits
from driftline.schemas.models import (
    DecodeResult,
    DriftAlert,
    EventBatch,
    FeatureScore,
    FloatArray,
    LabelEvent,
    ObjectArray,
    Rejection,
    WindowInfo,
)
from driftline.schemas.rows_block import rows_block
from driftline.schemas.validation import first_error

try:  # built from schemas/_scan.c when the package is installed with a C compiler at hand
    from driftline.schemas import _scan
except ImportError:  # pragma: no cover - the pure-Python decoder does the same, slower
    _scan = None  # type: ignore[assignment]

#: Whether the compiled scanner of single events is built (else all decoding is Python).
SCANNER = _scan is not None

__all__ = [
    "alert_from_dict",
    "alert_to_dict",
    "dead_letter_payload",
    "decode_alert",
    "decode_change",
    "decode_dead_letter",
    "decode_inference",
    "decode_label_columns",
    "decode_labels",
    "encode_alert",
    "encode_change",
    "encode_dead_letter",
    "encode_envelope_columns",
    "encode_envelope_rows",
    "encode_event",
]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

# ----------------------------------------------------------------------------- accumulator


class _Acc:
    """Rows of one model collected during one decode call.

    Feature values are kept in *runs*: consecutive rows with the same feature keys in the
    same order share one key layout and a list of packed float64 rows (the common case is
    one run per model), so the numeric matrix needs no per-row numpy work.
    """

    __slots__ = (
        "block_rows", "blocks", "cur_cols", "cur_keys", "cur_pack", "cur_vals", "extras", "index",
        "layout_keys", "layouts", "model", "names", "runs", "segments", "texts",
    )  # fmt: skip

    def __init__(self, model: str) -> None:
        self.model = model
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.layouts: dict[tuple[str, ...], list[int]] = {}
        self.layout_keys: list[tuple[str, ...]] = []
        self.runs: list[tuple[int, list[int], Any]] = []  # (first row, columns, values)
        self.cur_keys: tuple[str, ...] | None = None
        self.cur_cols: list[int] = []
        self.cur_vals: list[bytes] | None = None  # packed float64 rows of the open run
        self.cur_pack: Callable[..., bytes] = _packer(0)  # packs one row of the open run
        #: validated segments by their items: equal segments of later rows skip the checks
        self.segments: dict[tuple[tuple[str, str], ...], dict[str, str] | None] = {}
        self.extras: list[tuple[Any, ...]] = []
        #: columnar blocks, each with the length of ``extras`` when it was added: rows
        #: are the extras and the blocks' rows, interleaved in that order
        self.blocks: list[tuple[int, ColumnsBlock]] = []
        self.block_rows = 0
        self.texts: list[tuple[int, int, str]] = []  # (row, column, text)

    @property
    def rows(self) -> int:
        return len(self.extras) + self.block_rows

    def check_keys(self, keys: tuple[str, ...], limits: Limits) -> None:
        """Validate a new key layout without changing anything."""
        if keys in self.layouts:
            return
        if len(keys) > limits.max_features:
            raise Reject("too_many_features", f"{len(keys)} features (limit {limits.max_features})")
        lim = limits.max_feature_name_length
        new = 0
        for k in keys:
            if not k:
                raise Reject("schema", "empty feature name")
            if len(k) > lim:
                raise too_long(f"feature name {k[:64]!r}...", k, lim)
            new += k not in self.index
        if len(self.names) + new > limits.max_features:
            raise Reject(
                "too_many_features",
                f"model has more than {limits.max_features} distinct features in this batch",
            )

    def _layout(self, keys: tuple[str, ...]) -> list[int]:
        cols = self.layouts.get(keys)
        if cols is None:
            index = self.index
            for k in keys:
                if k not in index:
                    index[k] = len(self.names)
                    self.names.append(k)
            cols = [index[k] for k in keys]
            self.layouts[keys] = cols
            self.layout_keys.append(keys)
        return cols

    def open_run(self, keys: tuple[str, ...]) -> None:
        self.cur_keys = keys
        self.cur_cols = self._layout(keys)
        self.cur_pack = _packer(len(keys))
        self.cur_vals = []
        self.runs.append((self.rows, self.cur_cols, self.cur_vals))

    def add_block(self, block: ColumnsBlock) -> None:
        if block.n == 0:
            return
        cols = self._layout(block.keys)
        row0 = self.rows
        self.runs.append((row0, cols, block.numeric))
        self.cur_keys, self.cur_vals = None, None
        if block.extras is not None:
            self.extras.extend(block.extras)
        else:
            self.blocks.append((len(self.extras), block))
            self.block_rows += block.n
        self.texts.extend((row0 + r, cols[j], s) for r, j, s in block.texts)

    def mark(self) -> tuple[Any, ...]:
        vals = self.cur_vals
        return (
            len(self.extras), len(self.runs), len(self.names), len(self.layout_keys),
            len(self.texts), self.cur_keys, self.cur_cols, vals,
            0 if vals is None else len(vals), len(self.blocks), self.block_rows,
        )  # fmt: skip

    def rollback(self, mark: tuple[Any, ...]) -> None:
        n, nruns, nnames, nlayouts, ntexts, keys, cols, vals, nvals, nblocks, brows = mark
        del self.extras[n:], self.runs[nruns:], self.texts[ntexts:], self.blocks[nblocks:]
        self.block_rows = brows
        for k in self.names[nnames:]:
            del self.index[k]
        del self.names[nnames:]
        for lk in self.layout_keys[nlayouts:]:
            del self.layouts[lk]
        del self.layout_keys[nlayouts:]
        if vals is not None:
            del vals[nvals:]
        self.cur_keys, self.cur_cols, self.cur_vals = keys, cols, vals
        self.cur_pack = _packer(0 if keys is None else len(keys))

    def segment(self, seg: object, limits: Limits) -> dict[str, str] | None:
        """A row's validated segment; rows with an equal segment share the first one's
        dict (validated once)."""
        if type(seg) is dict:
            try:
                items = tuple(seg.items())
                return self.segments[items]
            except (KeyError, TypeError):  # new, or an unhashable (invalid) value
                pass
            checked = check_segment(seg, limits)
            if len(self.segments) < _SEGMENT_CACHE:
                self.segments[items] = checked
            return checked
        return check_segment(seg, limits)

    def batch(self) -> EventBatch:
        n, f = self.rows, len(self.names)
        runs = self.runs
        ends = [r[0] for r in runs[1:]] + [n]
        if len(runs) == 1 and runs[0][1] == list(range(f)):
            numeric = _block(runs[0][2], n, f)
        else:
            numeric = np.full((n, f), NAN)
            for (start, cols, vals), end in zip(runs, ends, strict=True):
                if end > start and cols:
                    numeric[start:end, cols] = _block(vals, end - start, len(cols))
        text: ObjectArray | None = None
        if self.texts:
            text = np.full((n, f), None, dtype=object)
            r, c, s = zip(*self.texts, strict=True)
            text[list(r), list(c)] = _obj(s)
        if self.blocks:
            return self._columnar_batch(numeric, text)
        ts, score, label, eid, mv, seg, lat, part, off, shadow, trace, outcome = zip(
            *self.extras, strict=True
        )
        return EventBatch(
            model=self.model,
            feature_names=tuple(self.names),
            numeric=numeric,
            text=text,
            ts=np.array(ts, dtype=np.float64),
            prediction_score=np.array(score, dtype=np.float64),
            prediction_label=_obj_or_none(label),
            event_id=_obj(eid),
            model_version=_obj(mv),
            segment=_obj(seg),
            latency_ms=np.array(lat, dtype=np.float64),
            partition=np.array(part, dtype=np.int64),
            offset=np.array(off, dtype=np.int64),
            shadow_of=_obj_or_none(shadow),
            trace_id=_obj_or_none(trace),
            outcome=_obj_or_none(outcome),
        )

    def _columnar_batch(self, numeric: FloatArray, text: ObjectArray | None) -> EventBatch:
        """The batch when columnar blocks are among the rows: each field's column is its
        pieces (runs of row tuples, block columns) joined in row order."""
        pieces: list[list[tuple[int, Any]]] = [[] for _ in EXTRAS]
        start = 0
        for at, block in [*self.blocks, (len(self.extras), None)]:
            if at > start:
                rows = self.extras[start:at]
                for i, col in enumerate(zip(*rows, strict=True)):
                    pieces[i].append((len(rows), col))
                start = at
            if block is not None:
                for i, col in enumerate(block.fields or ()):
                    pieces[i].append((block.n, col))
        (ts, score, label, eid, mv, seg, lat, part, off, shadow, trace,
         outcome) = pieces  # fmt: skip
        return EventBatch(
            model=self.model,
            feature_names=tuple(self.names),
            numeric=numeric,
            text=text,
            ts=_joined(ts, np.float64),
            prediction_score=_joined(score, np.float64),
            prediction_label=_joined_objects(label, optional=True),
            event_id=_joined_values(eid),
            model_version=_joined_values(mv),
            segment=_joined_values(seg),
            latency_ms=_joined(lat, np.float64),
            partition=_joined(part, np.int64),
            offset=_joined(off, np.int64),
            shadow_of=_joined_objects(shadow, optional=True),
            trace_id=_joined_objects(trace, optional=True),
            outcome=_joined_objects(outcome, optional=True),
        )


def _joined(pieces: list[tuple[int, Any]], dtype: type) -> Any:
    arrays: list[Any] = [np.asarray(col, dtype=dtype) for _, col in pieces]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _joined_objects(pieces: list[tuple[int, Any]], optional: bool = False) -> ObjectArray | None:
    """Object pieces joined; a piece is a tuple of row values, an object array or None
    (all null). ``optional``: None when every value is null."""
    if optional and all(col is None or (type(col) is tuple and col.count(None) == n)
                        for n, col in pieces):  # a block's array holds a value (else None)
        return None
    arrays = [np.full(n, None, dtype=object) if col is None
              else _obj(col) if type(col) is tuple else col for n, col in pieces]
    joined: ObjectArray = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return joined


def _joined_values(pieces: list[tuple[int, Any]]) -> ObjectArray:
    joined = _joined_objects(pieces)
    assert joined is not None
    return joined


def _block(vals: Any, rows: int, k: int) -> FloatArray:
    if isinstance(vals, np.ndarray):
        return vals
    if rows == 0 or k == 0:
        return np.empty((rows, k))
    return np.frombuffer(b"".join(vals), dtype=np.float64).reshape(rows, k)


@cache
def _packer(k: int) -> Callable[..., bytes]:
    """``pack(*values)`` of ``k`` float64s (ints and bools convert; None/str raise)."""
    return struct.Struct(f"={k}d").pack


def _obj_or_none(values: tuple[Any, ...]) -> ObjectArray | None:
    return None if values.count(None) == len(values) else _obj(values)


# ----------------------------------------------------------------------------- events

#: Distinct segments remembered per model and decode call.
_SEGMENT_CACHE = 1024

#: Value types that need the exact (slow) feature path; None is handled by the fallback.
_NOT_FAST = frozenset((str, bool, dict, list))
_OUTCOMES = frozenset(("ok", "error"))
_SIX_ZEROS = bytes(6)


def _add_event(
    acc: _Acc, ev: dict[str, Any], part: int, off: int, kts: float, mv_default: str | None,
    limits: Limits,
) -> None:  # fmt: skip
    """Validate one event and append it to ``acc`` (nothing is appended on a Reject)."""
    feats = ev.get("features")
    if type(feats) is not dict:
        raise Reject(
            "schema",
            "'features' is required" if feats is None
            else f"'features' must be an object, not {json_type(feats)}",
        )  # fmt: skip
    keys = tuple(feats)
    same = keys == acc.cur_keys
    if same:
        pack = acc.cur_pack
    else:
        acc.check_keys(keys, limits)
        pack = _packer(len(keys))
    vals = feats.values()
    texts = None
    if _NOT_FAST.isdisjoint(map(type, vals)):  # numbers and nulls only
        try:
            row_bytes = pack(*vals)
        except struct.error:  # a null among the numbers
            row_bytes = pack(*[NAN if v is None else v for v in vals])
    else:
        num, texts = feature_values(list(vals), limits, lambda j: f"feature {keys[j][:64]!r}")
        row_bytes = pack(*num)

    get = ev.get
    lim = limits.max_string_length
    ts = get("ts")
    if ts is None:
        ts = kts
    elif type(ts) is not float and type(ts) is not int:
        ts = check_ts(ts, kts)
    pred = get("prediction")
    if pred is None:
        score, label = NAN, None
    elif type(pred) is float or type(pred) is int:
        score, label = pred, None
    else:
        score, label = check_prediction(pred, limits)
    eid = get("event_id")
    if eid is not None and (type(eid) is not str or len(eid) > lim):
        check_str("event_id", eid, lim)
    mv = get("model_version")
    if mv is None:
        mv = mv_default
    elif type(mv) is not str or len(mv) > lim:
        check_str("model_version", mv, lim)
    seg = get("segment")
    if seg is not None:
        seg = acc.segment(seg, limits)
    lat = get("latency_ms")
    if lat is None:
        lat = NAN
    elif (type(lat) is not float and type(lat) is not int) or lat < 0:
        lat = check_latency(lat)
    shadow = get("shadow_of")
    if shadow is not None:
        check_str("shadow_of", shadow, limits.max_model_id_length, 1)
    trace = get("trace_id")
    if trace is not None:
        check_str("trace_id", trace, lim)
    outcome = get("outcome")
    if outcome is not None:
        check_outcome(outcome)

    if not same:
        acc.open_run(keys)
    row = acc.rows
    acc.cur_vals.append(row_bytes)  # type: ignore[union-attr]
    acc.extras.append((ts, score, label, eid, mv, seg, lat, part, off, shadow, trace, outcome))
    if texts:
        cols = acc.cur_cols
        acc.texts.extend((row, cols[j], s) for j, s in texts)


def _fast_event(
    acc: _Acc,
    ev: dict[str, Any],
    part: int,
    off: int,
    kts: float,
    mv_default: str | None,
    lim: int,
    shadow_lim: int,
) -> bool:
    """Append ``ev`` to ``acc`` when it has the common shape, else return False having
    appended nothing (the caller then runs :func:`_add_event`, which decides exactly).

    The common shape: the feature keys of ``acc``'s open run, all feature values numbers,
    numeric ``ts``/``prediction``/``latency_ms`` (or absent), string ids within the limit
    and a segment already validated in this call. Every check here is a sufficient
    condition for :func:`_add_event` to accept the event with the same row.
    """
    get = ev.get
    feats = get("features")
    if type(feats) is not dict or tuple(feats) != acc.cur_keys:
        return False
    vals = feats.values()
    try:
        row_bytes = acc.cur_pack(*vals)  # raises on a null, string, array or object
    except struct.error:
        return False
    # A bool packs as 0.0 or 1.0, six zero bytes in a row: a row without them had no bool.
    if _SIX_ZEROS in row_bytes and not _NOT_FAST.isdisjoint(map(type, vals)):
        return False
    ts = get("ts")
    if type(ts) is not float and type(ts) is not int:
        if ts is not None:
            return False
        ts = kts
    score = get("prediction")
    if type(score) is not float and type(score) is not int:
        if score is not None:
            return False
        score = NAN
    eid = get("event_id")
    if eid is not None and (type(eid) is not str or len(eid) > lim):
        return False
    mv = get("model_version")
    if mv is None:
        mv = mv_default
    elif type(mv) is not str or len(mv) > lim:
        return False
    seg = get("segment")
    if seg is not None:
        try:
            seg = acc.segments[tuple(seg.items())]
        except (KeyError, TypeError, AttributeError):  # not yet validated in this call
            return False
    lat = get("latency_ms")
    if type(lat) is not float and type(lat) is not int:
        if lat is not None:
            return False
        lat = NAN
    elif lat < 0:
        return False
    shadow = get("shadow_of")
    if shadow is not None and (type(shadow) is not str or not 0 < len(shadow) <= shadow_lim):
        return False
    trace = get("trace_id")
    if trace is not None and (type(trace) is not str or len(trace) > lim):
        return False
    outcome = get("outcome")
    if outcome is not None and (type(outcome) is not str or outcome not in _OUTCOMES):
        return False
    acc.cur_vals.append(row_bytes)  # type: ignore[union-attr]
    acc.extras.append((ts, score, None, eid, mv, seg, lat, part, off, shadow, trace, outcome))
    return True


def _check_model(m: object, limits: Limits) -> str:
    if type(m) is str and 0 < len(m) <= limits.max_model_id_length:
        return m
    if m is None:
        raise Reject("schema", "'model' is required")
    if type(m) is not str:
        raise Reject("schema", f"'model' must be a string, not {json_type(m)}")
    if not m:
        raise Reject("schema", "'model' must not be empty")
    raise too_long("model", m, limits.max_model_id_length)


def _envelope(env: dict[str, Any], acc: _Acc, part: int, off: int, kts: float, limits: Limits) -> int:
    """Decode one batch envelope into ``acc``, all or nothing; returns its event count."""
    mv = check_str("model_version", env.get("model_version"), limits.max_string_length)
    has_rows, has_cols = "events" in env, "columns" in env
    if has_rows == has_cols:
        raise Reject("schema", "an envelope has exactly one of 'events' (rows) or 'columns'")
    if has_cols:
        block = decode_columns(env, limits, kts, part, off)
        acc.check_keys(block.keys, limits)
        acc.add_block(block)
        n: int = block.n
        return n
    events = env["events"]
    if type(events) is not list:
        raise Reject("schema", f"envelope 'events' must be an array, not {json_type(events)}")
    if len(events) > limits.max_events_per_envelope:
        raise Reject(
            "too_many_events",
            f"envelope has {len(events)} events (limit {limits.max_events_per_envelope})",
        )
    rows = rows_block(events, kts, part, off, mv, limits, acc.segments, acc.segment)
    if rows is not None:
        try:
            acc.check_keys(rows.keys, limits)
        except Reject:
            rows = None  # the event-by-event loop below names the event
    if rows is not None:
        acc.add_block(rows)
        n = rows.n
        return n
    mark = acc.mark()
    fast = _fast_event
    lim, shadow_lim = limits.max_string_length, limits.max_model_id_length
    try:
        for j, ev in enumerate(events):
            if type(ev) is not dict:
                raise Reject("schema", f"events[{j}] must be an object, not {json_type(ev)}")
            if "model" in ev:
                raise Reject("schema", f"events[{j}]: 'model' belongs on the envelope only")
            if fast(acc, ev, part, off, kts, mv, lim, shadow_lim):
                continue
            try:
                _add_event(acc, ev, part, off, kts, mv, limits)
            except Reject as r:
                raise r.within(f"events[{j}]") from None
    except BaseException:
        acc.rollback(mark)
        raise
    return len(events)


def _as_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return b""


def _reject(raw: object, reason: str, topic: str, part: int, off: int, model: str | None) -> Rejection:
    return Rejection(reason, _as_bytes(raw), topic, int(part), int(off), model)


def _unexpected(raw: object, exc: BaseException) -> str:
    if raw is None:
        return "invalid_json: empty message (null value)"
    if not isinstance(raw, bytes | bytearray | memoryview | str):
        return f"invalid_json: message value is {type(raw).__name__}, not bytes"
    return f"schema: unexpected {type(exc).__name__}: {str(exc)[:200]}"


def _parse(raw: Any, limits: Limits) -> dict[str, Any]:
    size = len(raw)
    if size > limits.max_payload_bytes:
        raise Reject("payload_too_large", f"{size} bytes (limit {limits.max_payload_bytes})")
    try:
        obj = _loads(raw)
    except _JSONDecodeError as exc:
        raise Reject("invalid_json", str(exc)) from None
    if type(obj) is not dict:
        raise Reject("not_object", f"top-level JSON value is {json_type(obj)}, not an object")
    return obj


def _meta(values: Sequence[Any], **seqs: Sequence[Any] | None) -> list[Any]:
    out: list[Any] = []
    for name, seq in seqs.items():
        if seq is None:
            out.append(repeat(NAN if name == "timestamps" else -1))
        elif len(seq) != len(values):
            raise ValueError(f"{name} has {len(seq)} items for {len(values)} values")
        else:
            out.append(seq)
    return out


def decode_inference(
    values: Sequence[bytes],
    *,
    limits: Limits = DEFAULT_LIMITS,
    topic: str = "",
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    timestamps: Sequence[float] | None = None,
    scan: bool = True,
) -> DecodeResult:
    """Decode raw InferenceEvent / batch-envelope messages into per-model EventBatches.

    ``partitions``, ``offsets`` and ``timestamps`` (Kafka timestamp, epoch seconds; the
    event time of events without ``ts``) are per message, like ``values``; absent ones
    give -1 / -1 / NaN. Rows keep their message order within each model.

    A message is accepted or rejected as one unit: a malformed envelope is rejected
    whole, with a reason naming the first bad event (``events[3]: ...``) or column, so
    one Kafka message is always either fully applied or one dead letter. Every event of
    an envelope carries the envelope's partition and offset.

    ``scan``: single events of the common shape go through the compiled scanner when it
    is built (:data:`SCANNER`); the result is the same either way.

    Never raises on message contents (a length mismatch of the per-message sequences
    raises ValueError): every problem becomes a Rejection with reason ``"code: detail"``.
    """
    parts, offs, stamps = _meta(values, partitions=partitions, offsets=offsets,
                                timestamps=timestamps)
    if scan and _scan is not None and len(values):
        scanned = _scanned(values, parts, offs, stamps, limits, topic)
        if scanned is not None:
            return scanned
    accs: dict[str, _Acc] = {}
    rejections: list[tuple[int, Rejection]] = []
    events = _decode_loop(zip(count(), values, parts, offs, stamps), accs, rejections, None,
                          limits, topic)
    batches = {m: acc.batch() for m, acc in accs.items() if acc.rows}
    return DecodeResult(batches=batches, rejections=[r for _, r in rejections], events=events)


def _decode_loop(
    messages: Iterable[tuple[int, Any, int, int, float]], accs: dict[str, _Acc],
    rejections: list[tuple[int, Rejection]], seen: dict[str, list[int]] | None, limits: Limits,
    topic: str,
) -> int:  # fmt: skip
    """Decode ``(index, value, partition, offset, timestamp)`` messages into ``accs`` and
    ``rejections`` (with their message index); ``seen`` gets the indices of every message
    whose model was known. Returns the events accepted."""
    events = 0
    add, fast = _add_event, _fast_event
    lim = limits.max_string_length
    loads, decode_error = _loads, _JSONDecodeError
    max_bytes, max_model = limits.max_payload_bytes, limits.max_model_id_length
    for i, raw, part, off, kts in messages:
        model = None
        try:
            # _parse() and _check_model(), inlined: this loop runs once per message
            if len(raw) > max_bytes:
                raise Reject("payload_too_large", f"{len(raw)} bytes (limit {max_bytes})")
            try:
                obj = loads(raw)
            except decode_error as exc:
                raise Reject("invalid_json", str(exc)) from None
            if type(obj) is not dict:
                raise Reject("not_object", f"top-level JSON value is {json_type(obj)}, not an object")
            m = obj.get("model")
            if type(m) is str and 0 < len(m) <= max_model:
                model = m
            envelope = "envelope" in obj
            if envelope and obj["envelope"] != ENVELOPE_V1:
                raise Reject(
                    "unknown_envelope",
                    f"envelope {brief(obj['envelope'])} is not {ENVELOPE_V1}",
                )
            if model is None:
                model = _check_model(m, limits)
            if seen is not None:
                seen.setdefault(model, []).append(i)
            acc = accs.get(model)
            if acc is None:
                acc = accs[model] = _Acc(model)
            if envelope:
                events += _envelope(obj, acc, part, off, kts, limits)
            else:
                if not fast(acc, obj, part, off, kts, None, lim, max_model):
                    add(acc, obj, part, off, kts, None, limits)
                events += 1
        except Reject as r:
            rejections.append((i, _reject(raw, f"{r.code}: {r.detail}", topic, part, off, model)))
        except Exception as exc:
            rejections.append((i, _reject(raw, _unexpected(raw, exc), topic, part, off, model)))
    return events


# ----------------------------------------------------------------------------- scanner


def _scanned(
    values: Sequence[Any], parts: Iterable[int], offs: Iterable[int], stamps: Iterable[float],
    limits: Limits, topic: str,
) -> DecodeResult | None:  # fmt: skip
    """:func:`decode_inference` with the compiled scanner taking the single events of the
    common shape; None if the scanner could not run (the caller decodes in Python).

    The messages the scanner leaves go through the Python loop. A model that has rows
    both ways in one call, or whose scanned keys or segments the full checks refuse, is
    decoded again whole in Python, so its rows and reasons are exactly the Python path's.
    """
    assert _scan is not None
    n = len(values)
    vals = tuple(values)
    part_list: list[Any] = parts if type(parts) is list else list(islice(parts, n))
    off_list: list[Any] = offs if type(offs) is list else list(islice(offs, n))
    stamp_list: list[Any] = stamps if type(stamps) is list else list(islice(stamps, n))
    try:  # the batches' own conversions (None is NaN, as np.array makes it)
        p_arr, o_arr = np.asarray(part_list, dtype=np.int64), np.asarray(off_list, dtype=np.int64)
        t_arr = np.asarray(stamp_list, dtype=np.float64)
        codes_b, scanned, seg_texts = _scan.scan(
            vals, p_arr, o_arr, t_arr, limits.max_payload_bytes, limits.max_string_length,
            limits.max_model_id_length)
    except (TypeError, ValueError, MemoryError, OverflowError):  # odd per-message values
        return None
    codes = np.frombuffer(codes_b, dtype=np.int32)
    accs: dict[str, _Acc] = {}
    rejections: list[tuple[int, Rejection]] = []
    seen: dict[str, list[int]] = {}
    slow = np.flatnonzero(codes < 0).tolist()
    events = 0
    if slow:
        events = _decode_loop(((i, vals[i], part_list[i], off_list[i], stamp_list[i])
                               for i in slow), accs, rejections, seen, limits, topic)
    segments, bad = _scanned_segments(seg_texts, limits)
    first: dict[str, int] = {m: ix[0] for m, ix in seen.items()}
    fast_batches: dict[str, EventBatch] = {}
    again: list[int] = []  # messages of the models decoded again in Python
    for t in scanned:
        if t is None:
            continue
        (model, keys, num, ts, score, lat, rows_b, part, off, eid, mv, seg, shadow, trace,
         outcome) = t  # fmt: skip
        rows = np.frombuffer(rows_b, dtype=np.int32)
        seg_codes = np.frombuffer(seg, dtype=np.int32)
        first[model] = min(first.get(model, n), int(rows[0]))
        if model in seen or bad[seg_codes].any() or not _keys_ok(model, keys, limits):
            again += rows.tolist()
            if model in seen:
                events -= accs.pop(model).rows
                again += seen[model]
            continue
        events += len(rows)
        fast_batches[model] = EventBatch(
            model=model,
            feature_names=keys,
            numeric=np.frombuffer(num, dtype=np.float64).reshape(len(rows), len(keys)),
            text=None,
            ts=np.frombuffer(ts, dtype=np.float64).copy(),
            prediction_score=np.frombuffer(score, dtype=np.float64).copy(),
            prediction_label=None,
            event_id=_obj(eid),
            model_version=_obj(mv),
            segment=_own_segments(segments, seg_codes),
            latency_ms=np.frombuffer(lat, dtype=np.float64).copy(),
            partition=np.frombuffer(part, dtype=np.int64).copy(),
            offset=np.frombuffer(off, dtype=np.int64).copy(),
            shadow_of=None if shadow is None else _obj(shadow),
            trace_id=None if trace is None else _obj(trace),
            outcome=None if outcome is None else _obj(outcome),
        )
    if again:
        drop = set(again)
        rejections = [(i, r) for i, r in rejections if i not in drop]
        events += _decode_loop(((i, vals[i], part_list[i], off_list[i], stamp_list[i])
                                for i in sorted(drop)), accs, rejections, None, limits, topic)
    batches = {m: acc.batch() for m, acc in accs.items() if acc.rows}
    batches.update(fast_batches)
    ordered = dict(sorted(batches.items(), key=lambda kv: first[kv[0]]))
    rejections.sort(key=lambda ir: ir[0])
    return DecodeResult(batches=ordered, rejections=[r for _, r in rejections], events=events)


def _own_segments(segments: ObjectArray, codes: Any) -> ObjectArray:
    """One batch's segment column: rows with equal segments share one dict of this batch's
    own (as each model's rows get theirs in the Python decoder)."""
    own = np.empty(len(segments), dtype=object)  # None where no row of the batch points
    same: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for j in np.unique(codes).tolist():
        d = segments[j]
        if d is not None:
            own[j] = same.setdefault(tuple(d.items()), dict(d))
    col: ObjectArray = own[codes]
    return col


def _keys_ok(model: str, keys: tuple[str, ...], limits: Limits) -> bool:
    try:
        _Acc(model).check_keys(keys, limits)
    except Reject:
        return False
    return True


def _scanned_segments(texts: list[bytes], limits: Limits) -> tuple[ObjectArray, Any]:
    """The scanned segment texts validated (one entry each, then None for "no segment"),
    and which of them the full checks refuse."""
    out = np.empty(len(texts) + 1, dtype=object)
    bad = np.zeros(len(texts) + 1, dtype=bool)
    for j, text in enumerate(texts):
        try:
            out[j] = check_segment(_loads(text), limits)
        except Reject:
            bad[j] = True
    return out, bad


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One InferenceEvent message. Numpy values and datetimes are serialised natively;
    NaN/Infinity become null (missing). Raises ValueError without a string ``model``."""
    if not isinstance(event.get("model"), str):
        raise ValueError("an InferenceEvent needs a string 'model'")
    return orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)


# ----------------------------------------------------------------------------- labels


def decode_labels(
    values: Sequence[bytes],
    *,
    limits: Limits = DEFAULT_LIMITS,
    topic: str = "",
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
) -> tuple[list[LabelEvent], list[Rejection]]:
    """Decode LabelEvent v1 messages (``ts`` absent -> NaN). Never raises on contents."""
    _, models, ids, labels, ts, rejections = decode_label_columns(
        values, limits=limits, topic=topic, partitions=partitions, offsets=offsets)
    events = [LabelEvent(*row) for row in zip(models, ids, labels, ts, strict=True)]
    return events, rejections


def decode_label_columns(
    values: Sequence[bytes],
    *,
    limits: Limits = DEFAULT_LIMITS,
    topic: str = "",
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
) -> tuple[list[int], list[str], list[str], list[str | float | int | bool], list[float],
           list[Rejection]]:
    """:func:`decode_labels` as columns: the index in ``values`` of each valid message, its
    model, event id, label and ``ts`` (NaN when absent); the rejections."""
    parts, offs = _meta(values, partitions=partitions, offsets=offsets)
    index: list[int] = []
    models: list[str] = []
    ids: list[str] = []
    labels: list[str | float | int | bool] = []
    times: list[float] = []
    rejections: list[Rejection] = []
    lim, max_model = limits.max_string_length, limits.max_model_id_length
    max_bytes = limits.max_payload_bytes
    for i, (raw, part, off) in enumerate(zip(values, parts, offs, strict=False)):
        model = None
        try:
            obj: Any = None
            if type(raw) is bytes and len(raw) <= max_bytes:
                try:
                    obj = _loads(raw)
                except _JSONDecodeError as exc:
                    raise Reject("invalid_json", str(exc)) from None
            if type(obj) is not dict:  # the reason (or the checks of other input types)
                obj = _parse(raw, limits)
            m = obj.get("model")
            model = m if type(m) is str and 0 < len(m) <= max_model else _check_model(m, limits)
            eid = obj.get("event_id")
            if type(eid) is not str or not 0 < len(eid) <= lim:
                if eid is None:
                    raise Reject("schema", "'event_id' is required")
                check_str("event_id", eid, lim, 1)
            label = obj.get("label")
            if type(label) is str:
                if len(label) > lim:
                    raise too_long("label", label, lim)
            elif type(label) is not float and type(label) is not int and type(label) is not bool:
                raise Reject(
                    "schema",
                    "'label' is required" if label is None
                    else f"label must be a number, string or bool, not {json_type(label)}",
                )  # fmt: skip
            ts = obj.get("ts")
            ts = ts if type(ts) is float else float(check_ts(ts, NAN))
        except Reject as r:
            rejections.append(_reject(raw, f"{r.code}: {r.detail}", topic, part, off, model))
            continue
        except Exception as exc:
            rejections.append(_reject(raw, _unexpected(raw, exc), topic, part, off, model))
            continue
        index.append(i)
        models.append(model)
        ids.append(eid)
        labels.append(label)
        times.append(ts)
    return index, models, ids, labels, times, rejections


# ----------------------------------------------------------------------------- alerts


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def alert_to_dict(alert: DriftAlert) -> dict[str, Any]:
    """The DriftAlert v1 JSON object (non-finite numbers -> null)."""
    w = alert.window
    return {
        "alert_id": alert.alert_id,
        "model": alert.model,
        "model_version": alert.model_version,
        "kind": alert.kind,
        "state": alert.state,
        "feature": alert.feature,
        "detector": alert.detector,
        "statistic": alert.statistic,
        "score": _finite(alert.score),
        "threshold": _finite(alert.threshold),
        "p_value": _finite(alert.p_value),
        "window": {
            "start_ts": _finite(w.start_ts),
            "end_ts": _finite(w.end_ts),
            "n": int(w.n),
            "first_offset": int(w.first_offset),
            "last_offset": int(w.last_offset),
            "pane": int(w.pane),
        },
        "reference": alert.reference,
        "segment": None if alert.segment is None else dict(alert.segment),
        "severity": alert.severity,
        "top_features": [
            {
                "name": f.name,
                "statistic": f.statistic,
                "score": _finite(f.score),
                "threshold": _finite(f.threshold),
                "p_value": _finite(f.p_value),
            }
            for f in alert.top_features
        ],
        "created_at": float(alert.created_at),
        "changes": [dict(c) for c in alert.changes],
        "exemplars": list(alert.exemplars),
    }


def _nan(x: Any) -> float:
    return NAN if x is None else float(x)


def alert_from_dict(d: Mapping[str, Any]) -> DriftAlert:
    """Inverse of :func:`alert_to_dict` (null score/threshold -> NaN); ValueError if invalid."""
    if not isinstance(d, Mapping):
        raise ValueError(f"not_object: a DriftAlert is a JSON object, not {json_type(d)}")
    err = first_error("drift_alert.v1", dict(d)) or _unwritable("changes", d.get("changes"))
    if err is not None:
        raise ValueError(f"schema: {err}")
    w = d["window"]
    start, end = w.get("start_ts"), w.get("end_ts")
    p = d.get("p_value")
    return DriftAlert(
        alert_id=d["alert_id"],
        model=d["model"],
        kind=d["kind"],
        state=d["state"],
        detector=d["detector"],
        statistic=d["statistic"],
        score=_nan(d["score"]),
        threshold=_nan(d["threshold"]),
        window=WindowInfo(
            start_ts=None if start is None else float(start),
            end_ts=None if end is None else float(end),
            n=int(w["n"]),
            first_offset=int(w.get("first_offset", -1)),
            last_offset=int(w.get("last_offset", -1)),
            pane=int(w.get("pane", -1)),
        ),
        model_version=d.get("model_version"),
        feature=d.get("feature"),
        p_value=None if p is None else float(p),
        reference=d.get("reference"),
        segment=None if d.get("segment") is None else dict(d["segment"]),
        severity=d.get("severity", "warning"),
        top_features=tuple(
            FeatureScore(
                name=f["name"],
                statistic=f["statistic"],
                score=_nan(f["score"]),
                threshold=_nan(f["threshold"]),
                p_value=None if f.get("p_value") is None else float(f["p_value"]),
            )
            for f in d.get("top_features", ())
        ),
        created_at=float(d.get("created_at", 0.0)),
        changes=tuple(dict(c) for c in d.get("changes", ())),
        exemplars=tuple(d.get("exemplars", ())),
    )


def encode_alert(alert: DriftAlert) -> bytes:
    return orjson.dumps(alert_to_dict(alert))


def _load_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = _loads(data)
    except _JSONDecodeError as exc:
        raise ValueError(f"invalid_json: {exc}") from None
    if type(obj) is not dict:
        raise ValueError(f"not_object: a {what} is a JSON object, not {json_type(obj)}")
    return obj


def decode_alert(data: bytes | str) -> DriftAlert:
    """Parse and validate one DriftAlert v1 message; ValueError with a reason if invalid."""
    return alert_from_dict(_load_object(data, "DriftAlert"))


# ----------------------------------------------------------------------------- dead letters


def encode_dead_letter(rej: Rejection, now: float) -> bytes:
    """DeadLetter v1 of a rejection, dead-lettered at ``now`` (epoch s).

    The payload is kept as text when it is valid UTF-8, else as base64, cut to 64 KiB
    (``payload_bytes`` is the original size). Raises ValueError when the reason is not
    ``"code: detail"`` with a known code (a programming error, not an input error).
    """
    code, sep, _ = rej.reason.partition(": ")
    if not sep or code not in REASON_CODES:
        raise ValueError(f"reason {rej.reason[:80]!r} is not 'code: detail' with a known code")
    raw = rej.payload
    text: str | None = None
    b64: str | None = None
    try:
        text = raw.decode("utf-8")
        if len(raw) > DEAD_LETTER_PAYLOAD_MAX:
            text = raw[:DEAD_LETTER_PAYLOAD_MAX].decode("utf-8", "ignore")
    except UnicodeDecodeError:
        b64 = base64.b64encode(raw[:DEAD_LETTER_PAYLOAD_MAX]).decode("ascii")
    return orjson.dumps(
        {
            "reason": rej.reason,
            "reason_code": code,
            "topic": rej.topic,
            "partition": int(rej.partition),
            "offset": int(rej.offset),
            "model": rej.model,
            "ts": float(now),
            "payload": text,
            "payload_b64": b64,
            "payload_bytes": len(raw),
        }
    )


def decode_dead_letter(data: bytes | str) -> dict[str, Any]:
    """Parse and validate one DeadLetter v1 message; ValueError with a reason if invalid."""
    obj = _load_object(data, "DeadLetter")
    err = first_error("dead_letter.v1", obj)
    if err is not None:
        raise ValueError(f"schema: {err}")
    return obj


def dead_letter_payload(dead_letter: Mapping[str, Any]) -> bytes:
    """The (possibly truncated) original payload bytes of a decoded dead letter."""
    if dead_letter.get("payload") is not None:
        return str(dead_letter["payload"]).encode("utf-8")
    if dead_letter.get("payload_b64") is not None:
        try:
            return base64.b64decode(dead_letter["payload_b64"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"schema: payload_b64: {exc}") from None
    return b""


# ----------------------------------------------------------------------------- changes


def encode_change(change: Mapping[str, Any]) -> bytes:
    """One ChangeEvent v1 message; ValueError with a reason if ``change`` is invalid."""
    d = dict(change)
    err = first_error("change_event.v1", d) or _unwritable("<root>", d)
    if err is not None:
        raise ValueError(f"schema: {err}")
    return orjson.dumps(d)


def decode_change(data: bytes | str) -> dict[str, Any]:
    """Parse and validate one ChangeEvent v1 message; ValueError with a reason if invalid.

    Extra keys are kept (and must be writable again: nested at most 254 levels)."""
    obj = _load_object(data, "ChangeEvent")
    err = first_error("change_event.v1", obj) or _unwritable("<root>", obj)
    if err is not None:
        raise ValueError(f"schema: {err}")
    return obj


def _unwritable(where: str, value: object) -> str | None:
    """Why ``value`` could not be written back with orjson (e.g. nested too deeply), or None."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        return f"{where}: {exc}"
    return None
