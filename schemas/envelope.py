"""Batch envelope v1 (rows and columns forms) and the per-field checks shared by all events.

The field checks raise :class:`Reject` (``code``, ``detail``); the decoder in
:mod:`driftline.schemas.codecs` turns it into a :class:`~driftline.schemas.models.Rejection`.
"""

from __future__ import annotations

import binascii
import decimal
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pybase64

from driftline.schemas.limits import Limits
from driftline.schemas.models import ENVELOPE_V1, FloatArray, ObjectArray
from driftline.schemas.validation import parse_iso_ts

__all__ = [
    "ENVELOPE_V1",
    "ColumnsBlock",
    "Reject",
    "decode_columns",
    "encode_envelope_columns",
    "encode_envelope_rows",
]

NAN = float("nan")
NUMS = frozenset((float, int))
NUMS_NONE = frozenset((float, int, type(None)))
STR_NONE = frozenset((str, type(None)))
OUTCOMES = frozenset(("ok", "error", None))
#: Optional string fields of an event, with their maximum length (None = limits.max_string_length).
ID_FIELDS = ("event_id", "model_version", "trace_id")
#: Per-row values decoded besides features, in this order (the decoder's row tuples).
EXTRAS = (
    "ts", "prediction_score", "prediction_label", "event_id", "model_version", "segment",
    "latency_ms", "partition", "offset", "shadow_of", "trace_id", "outcome",
)  # fmt: skip


class Reject(Exception):
    """An input fails the contract: ``code`` is one of ``limits.REASON_CODES``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def within(self, where: str) -> Reject:
        return Reject(self.code, f"{where}: {self.detail}")


def json_type(v: object) -> str:
    """The JSON type name of a decoded value, for reasons."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def brief(v: object) -> str:
    """A short, safe rendering of a decoded value for reasons (never recurses)."""
    if isinstance(v, str):
        return repr(v[:64])
    if v is None or isinstance(v, bool | int | float):
        return repr(v)
    return f"<{json_type(v)}>"


def too_long(what: str, s: str, limit: int) -> Reject:
    return Reject("string_too_long", f"{what} has {len(s)} characters (limit {limit})")


def check_ts(v: object, default: float) -> float:
    """Event time: number (epoch s) or ISO-8601 string; None -> ``default``."""
    if type(v) is float or type(v) is int:
        return v
    if v is None:
        return default
    if type(v) is str:
        try:
            ts: float = parse_iso_ts(v)
            return ts
        except ValueError as exc:
            raise Reject("schema", f"ts: {exc}") from None
    raise Reject("schema", f"ts must be a number or an ISO-8601 string, not {json_type(v)}")


def check_prediction(v: object, limits: Limits) -> tuple[float, str | None]:
    """(score, label) of a prediction: number, class label, or {class: probability}."""
    if type(v) is float or type(v) is int:
        return v, None
    if v is None:
        return NAN, None
    if type(v) is str:
        if len(v) > limits.max_string_length:
            raise too_long("prediction", v, limits.max_string_length)
        return NAN, v
    if type(v) is bool:
        return NAN, "true" if v else "false"
    if type(v) is dict:
        probs: dict[str, Any] = v
        if not probs:
            raise Reject("schema", "prediction: empty probability object")
        if not NUMS.issuperset(map(type, probs.values())):
            raise Reject("schema", "prediction: class probabilities must be numbers")
        for k in probs:
            if len(k) > limits.max_string_length:
                raise too_long("prediction class", k, limits.max_string_length)
        best = max(probs, key=probs.__getitem__)
        return float(probs[best]), best
    raise Reject("schema", f"prediction must be a number, string, bool or object, not {json_type(v)}")


def check_segment(v: object, limits: Limits) -> dict[str, str] | None:
    """A segment object of str -> str (``{}`` and null mean no segment)."""
    if v is None:
        return None
    if type(v) is not dict:
        raise Reject("schema", f"segment must be an object, not {json_type(v)}")
    seg: dict[str, Any] = v
    if len(seg) > limits.max_segment_keys:
        raise Reject(
            "too_many_segments",
            f"segment has {len(seg)} keys (limit {limits.max_segment_keys})",
        )
    lim = limits.max_string_length
    for k, s in seg.items():
        if type(s) is not str:
            raise Reject("schema", f"segment[{k[:64]!r}] must be a string, not {json_type(s)}")
        if len(k) > lim:
            raise too_long("segment key", k, lim)
        if len(s) > lim:
            raise too_long(f"segment[{k[:64]!r}]", s, lim)
    return seg or None


def check_latency(v: object) -> float:
    if type(v) is float or type(v) is int:
        if v < 0:
            raise Reject("schema", "latency_ms must be >= 0")
        return v
    if v is None:
        return NAN
    raise Reject("schema", f"latency_ms must be a number, not {json_type(v)}")


def check_str(name: str, v: object, limit: int, min_length: int = 0) -> str | None:
    """An optional string field."""
    if v is None:
        return None
    if type(v) is not str:
        raise Reject("schema", f"{name} must be a string, not {json_type(v)}")
    s: str = v
    if len(s) > limit:
        raise too_long(name, s, limit)
    if len(s) < min_length:
        raise Reject("schema", f"{name} must not be empty")
    return s


def check_outcome(v: object) -> str | None:
    if v is None:
        return None
    if type(v) is str and v in OUTCOMES:
        return v
    raise Reject("schema", f"outcome must be 'ok' or 'error', not {brief(v)}")


def feature_values(
    vals: Sequence[object], limits: Limits, where: Callable[[int], str]
) -> tuple[list[Any], list[tuple[int, str]]]:
    """Slow path of feature values: (numbers with NaN, [(position, text)]).

    ``where(j)`` names value ``j`` in a reason.
    """
    num: list[Any] = []
    texts: list[tuple[int, str]] = []
    lim = limits.max_string_length
    for j, v in enumerate(vals):
        if type(v) is float or type(v) is int:
            num.append(v)
        elif v is None:
            num.append(NAN)
        elif type(v) is str:
            if len(v) > lim:
                raise too_long(where(j), v, lim)
            num.append(NAN)
            texts.append((j, v))
        elif type(v) is bool:
            num.append(NAN)
            texts.append((j, "true" if v else "false"))
        else:
            raise Reject(
                "schema",
                f"{where(j)} must be a number, string, bool or null, not {json_type(v)}",
            )
    return num, texts


# --------------------------------------------------------------------------- columns form

#: Columns that may come packed: numeric ones as ``{"f64": ...}``, segment as a dictionary.
_PACKED = frozenset(("ts", "prediction", "latency_ms", "segment"))


class ColumnsBlock:
    """A decoded envelope: feature keys, numeric block, texts, and the other fields either
    as one tuple per row (``extras``, fields as EXTRAS) or as one column per field
    (``fields``: float64 arrays for ts/prediction_score/latency_ms, int64 arrays for
    partition/offset, object arrays or None (all null) for the rest)."""

    __slots__ = ("extras", "fields", "keys", "n", "numeric", "texts")

    def __init__(
        self,
        keys: tuple[str, ...],
        numeric: FloatArray,
        texts: list[tuple[int, int, str]],
        extras: list[tuple[Any, ...]] | None = None,
        fields: tuple[Any, ...] | None = None,
    ) -> None:
        self.keys = keys
        self.numeric = numeric  # (n, len(keys))
        self.texts = texts  # (row, position in keys, text)
        self.extras = extras  # one tuple per row, fields as EXTRAS
        self.fields = fields  # or one column per field, as EXTRAS
        self.n = int(numeric.shape[0])


def obj_array(values: Sequence[Any]) -> ObjectArray:
    """A 1-d object array of ``values`` (dicts and strings stay elements)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _base64(name: str, what: str, b64: str, width: int, n: int) -> bytes:
    """The bytes of a packed field: strict base64 of exactly ``n`` values of ``width``
    (what ``binascii``'s strict mode accepts; decoded with SIMD, ~12x faster, when
    pybase64 accepts it too: it accepts nothing more, but refuses a few paddings)."""
    try:
        raw = pybase64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = binascii.a2b_base64(b64, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise Reject("schema", f"columns.{name}: {what} is not base64 ({exc})") from None
    if len(raw) != width * n:
        raise Reject("schema", f"columns.{name}: {what} holds {len(raw)} bytes, n is {n} "
                               f"({width * n} bytes)")
    return raw


def _f64(name: str, packed: Mapping[str, Any], n: int) -> FloatArray:
    """A packed numeric column ``{"f64": base64 of n little-endian float64}``; NaN is
    null, an infinity is rejected."""
    b64 = packed.get("f64")
    if type(b64) is not str or len(packed) != 1:
        raise Reject("schema", f'columns.{name}: a packed column is {{"f64": "<base64>"}}')
    raw = _base64(name, "f64", b64, 8, n)
    arr = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    inf = np.isinf(arr)
    if inf.any():
        i = int(inf.argmax())
        raise Reject("schema", f"columns.{name}[{i}]: {arr[i]} is not a finite number")
    return arr


def _dictionary(name: str, packed: Mapping[str, Any], n: int, limit: int,
                check: Callable[[Any], Any]) -> ObjectArray:
    """A dictionary-encoded column ``{"dict": [values], "index": base64 of n
    little-endian uint32}`` (at most ``limit`` values); each value is checked once."""
    values, b64 = packed.get("dict"), packed.get("index")
    if type(values) is not list or type(b64) is not str or len(packed) != 2:
        raise Reject("schema", f'columns.{name}: a dictionary column is '
                               f'{{"dict": [values], "index": "<base64>"}}')
    if len(values) > limit:
        raise Reject("schema", f"columns.{name}: dict has {len(values)} values (limit {limit})")
    raw = _base64(name, "index", b64, 4, n)
    index = np.frombuffer(raw, dtype="<u4")
    if n and int(index.max()) >= len(values):
        i = int((index >= len(values)).argmax())
        raise Reject("schema", f"columns.{name}[{i}]: index {int(index[i])} is outside "
                               f"the dict of {len(values)}")
    checked = []
    for k, v in enumerate(values):
        try:
            checked.append(check(v))
        except Reject as r:
            raise Reject(r.code, f"columns.{name}.dict[{k}]: {r.detail}") from None
    out: ObjectArray = obj_array(checked)[index.astype(np.intp)]
    return out


def _column(cols: Mapping[str, Any], name: str, n: int) -> Any:
    """A column's JSON array, its packed form (a dict, for the columns that have one), or
    None when absent."""
    v = cols.get(name)
    if v is None:
        return None
    if type(v) is dict and name in _PACKED:
        return v
    if type(v) is not list:
        raise Reject("schema", f"columns.{name} must be an array, not {json_type(v)}")
    col: list[Any] = v
    if len(col) != n:
        raise Reject("schema", f"columns.{name} has {len(col)} values, n is {n}")
    return col


def _str_column(name: str, col: list[Any], limit: int, min_length: int = 0) -> None:
    types = set(map(type, col))
    if not types <= STR_NONE:
        bad = next(v for v in col if type(v) not in STR_NONE)
        raise Reject("schema", f"columns.{name}: values must be strings, not {json_type(bad)}")
    strs = [v for v in col if v is not None] if type(None) in types else col
    if strs:
        longest = max(strs, key=len)
        if len(longest) > limit:
            raise too_long(f"columns.{name}", longest, limit)
        if min_length and len(min(strs, key=len)) < min_length:
            raise Reject("schema", f"columns.{name}: empty string")


def _feature_column(
    name: str, col: list[Any], j: int, out: FloatArray, texts: list[tuple[int, int, str]],
    limits: Limits,
) -> None:  # fmt: skip
    types = set(map(type, col))
    if types <= NUMS_NONE:
        out[:, j] = col if type(None) not in types else np.array(col, dtype=np.float64)
        return
    num, found = feature_values(col, limits, lambda i: f"columns.features[{name[:64]!r}][{i}]")
    out[:, j] = num
    texts.extend((r, j, s) for r, s in found)


def decode_columns(
    env: Mapping[str, Any], limits: Limits, kafka_ts: float, partition: int, offset: int
) -> ColumnsBlock:
    """Decode the ``columns`` form of an envelope (model and feature names are checked by
    the caller). Every row gets the envelope's ``partition`` and ``offset``."""
    n_raw = env.get("n")
    if type(n_raw) is float and n_raw.is_integer():
        n_raw = int(n_raw)
    if type(n_raw) is not int or n_raw < 0:
        raise Reject("schema", "envelope 'n' must be a non-negative integer")
    n: int = n_raw
    if n > limits.max_events_per_envelope:
        raise Reject("too_many_events", f"envelope has {n} events (limit {limits.max_events_per_envelope})")
    cols = env.get("columns")
    if type(cols) is not dict:
        raise Reject("schema", f"envelope 'columns' must be an object, not {json_type(cols)}")
    feats = cols.get("features")
    if type(feats) is not dict:
        raise Reject("schema", f"columns.features must be an object, not {json_type(feats)}")
    keys = tuple(feats)
    numeric = np.empty((n, len(keys)), dtype=np.float64)
    texts: list[tuple[int, int, str]] = []
    for j, (name, col) in enumerate(feats.items()):
        if type(col) is dict:
            numeric[:, j] = _f64(f"features[{name[:64]!r}]", col, n)
            continue
        if type(col) is not list:
            raise Reject("schema", f"columns.features[{name[:64]!r}] must be an array")
        if len(col) != n:
            raise Reject("schema", f"columns.features[{name[:64]!r}] has {len(col)} values, n is {n}")
        _feature_column(name, col, j, numeric, texts, limits)

    lim = limits.max_string_length
    ts_col: FloatArray
    ts = _column(cols, "ts", n)
    if ts is None:
        ts_col = np.full(n, kafka_ts)
    elif type(ts) is dict:
        ts_col = _f64("ts", ts, n)
        ts_col[np.isnan(ts_col)] = kafka_ts
    elif set(map(type, ts)) <= NUMS:
        ts_col = np.array(ts, dtype=np.float64)
    else:
        ts_col = np.array([_at(i, "ts", check_ts, v, kafka_ts) for i, v in enumerate(ts)],
                          dtype=np.float64)

    pred = _column(cols, "prediction", n)
    scores: FloatArray = np.full(n, NAN)
    labels: ObjectArray | None = None
    if type(pred) is dict:
        scores = _f64("prediction", pred, n)
    elif pred is not None:
        if set(map(type, pred)) <= NUMS:
            scores = np.array(pred, dtype=np.float64)
        else:
            pairs = [_at(i, "prediction", check_prediction, v, limits) for i, v in enumerate(pred)]
            scores = np.array([p[0] for p in pairs], dtype=np.float64)
            found = [p[1] for p in pairs]
            labels = None if found.count(None) == n else obj_array(found)

    strs: dict[str, ObjectArray | None] = {}
    for name in (*ID_FIELDS, "shadow_of"):
        col = _column(cols, name, n)
        if col is not None:
            if name == "shadow_of":
                _str_column(name, col, limits.max_model_id_length, 1)
            else:
                _str_column(name, col, lim)
        strs[name] = None if col is None or col.count(None) == n else obj_array(col)
    mv_default = check_str("model_version", env.get("model_version"), lim)
    mv = strs["model_version"]
    if mv_default is not None:
        if mv is None:
            mv = np.full(n, mv_default, dtype=object)
        else:
            mv[mv == None] = mv_default  # noqa: E711 (elementwise)

    lat = _column(cols, "latency_ms", n)
    lats: FloatArray = np.full(n, NAN)
    if type(lat) is dict:
        lats = _f64("latency_ms", lat, n)
        neg = lats < 0
        if neg.any():
            raise Reject("schema", f"columns.latency_ms[{int(neg.argmax())}]: latency_ms must be >= 0")
    elif lat is not None:
        if set(map(type, lat)) <= NUMS and (not lat or min(lat) >= 0):
            lats = np.array(lat, dtype=np.float64)
        else:
            lats = np.array([_at(i, "latency_ms", check_latency, v) for i, v in enumerate(lat)],
                            dtype=np.float64)
    seg = _column(cols, "segment", n)
    segs: ObjectArray | None = None
    if type(seg) is dict:
        segs = _dictionary("segment", seg, n, limits.max_events_per_envelope,
                           lambda v: check_segment(v, limits))
    elif seg is not None:
        segs = obj_array(_segment_column(seg, limits))
    out = _column(cols, "outcome", n)
    outs: ObjectArray | None = None
    if out is not None:
        checked = [_at(i, "outcome", check_outcome, v) for i, v in enumerate(out)]
        outs = None if checked.count(None) == n else obj_array(checked)

    fields = (
        ts_col, scores, labels, strs["event_id"], mv, segs, lats,
        np.full(n, partition, dtype=np.int64), np.full(n, offset, dtype=np.int64),
        strs["shadow_of"], strs["trace_id"], outs,
    )  # fmt: skip
    return ColumnsBlock(keys, numeric, texts, fields=fields)


def _segment_column(seg: list[Any], limits: Limits) -> list[dict[str, str] | None]:
    """Validated segments of a column; equal segments are checked once and share a dict."""
    seen: dict[tuple[tuple[str, Any], ...], dict[str, str] | None] = {}
    out: list[dict[str, str] | None] = []
    for i, v in enumerate(seg):
        if type(v) is dict:
            items = tuple(v.items())
            try:
                out.append(seen[items])
                continue
            except (KeyError, TypeError):  # new, or an unhashable (invalid) value
                pass
            checked = _at(i, "segment", check_segment, v, limits)
            if len(seen) < 1024:
                seen[items] = checked
            out.append(checked)
        else:
            out.append(_at(i, "segment", check_segment, v, limits))
    return out


def _at(i: int, name: str, check: Any, *args: Any) -> Any:
    try:
        return check(*args)
    except Reject as r:
        raise Reject(r.code, f"columns.{name}[{i}]: {r.detail}") from None


# --------------------------------------------------------------------------- encoders


def _envelope_head(model: str, model_version: str | None) -> dict[str, Any]:
    if not isinstance(model, str) or not model:
        raise ValueError("model must be a non-empty string")
    head: dict[str, Any] = {"envelope": ENVELOPE_V1, "model": model}
    if model_version is not None:
        head["model_version"] = model_version
    return head


def written_as_number(v: object) -> bool:
    """Whether the envelope encoders write ``v`` as a JSON number (or bool): any real
    number (numpy's too), Decimal, a 0-d numeric array."""
    if isinstance(v, np.ndarray):
        return v.ndim == 0 and v.dtype.kind in "biuf"
    return isinstance(v, numbers.Real | decimal.Decimal)


def _plain_number(v: Any) -> float:
    """orjson's fallback for numbers it does not write itself (Decimal, Fraction, numpy
    long double, 0-d arrays): a float. Anything else stays unencodable."""
    if written_as_number(v):
        return float(v)
    raise TypeError(f"Type is not JSON serializable: {type(v).__name__}")


def encode_envelope_rows(
    model: str, events: Sequence[Mapping[str, Any]], model_version: str | None = None
) -> bytes:
    """One Kafka message carrying ``events`` of ``model`` (rows form).

    A ``model`` key in an event is dropped when it names ``model``; another model
    raises ValueError. Numpy scalars/arrays are serialised natively; other numbers
    (Decimal, Fraction, long double) as floats.
    """
    rows: list[Mapping[str, Any]] = []
    for i, ev in enumerate(events):
        if "model" in ev:
            if ev["model"] != model:
                raise ValueError(f"events[{i}] is for model {ev['model']!r}, not {model!r}")
            ev = {k: v for k, v in ev.items() if k != "model"}
        rows.append(ev)
    head = _envelope_head(model, model_version)
    head["events"] = rows
    return orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain_number)


def encode_envelope_columns(
    model: str, columns: Mapping[str, Any], n: int, model_version: str | None = None,
    *, packed: bool = False,
) -> bytes:  # fmt: skip
    """One Kafka message carrying ``n`` events of ``model`` as columns.

    ``columns`` = ``{"features": {name: values}, "ts": values, ...}`` (see the contract);
    values may be lists or numpy arrays. Every column must have ``n`` values. Non-finite
    floats become null (missing). ``packed``: numeric columns (features, ts, prediction,
    latency_ms whose values are all numbers or null) go as ``{"f64": base64}`` and the
    segment column as a dictionary, which a worker decodes straight into arrays; other
    columns stay JSON arrays.
    """
    feats = columns.get("features")
    if not isinstance(feats, Mapping):
        raise ValueError("columns['features'] must be a mapping of name -> values")
    out: dict[str, Any] = {}
    for name, col in columns.items():
        if col is None:
            continue
        if name == "features":
            out[name] = {k: _encoded(f"features[{k!r}]", v, n, packed) for k, v in feats.items()}
        elif packed and name == "segment":
            out[name] = _dictionary_of(col, n)
        else:
            out[name] = _encoded(name, col, n, packed and name in _PACKED)
    head = _envelope_head(model, model_version)
    head["n"] = int(n)
    head["columns"] = out
    return orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain_number)


def _encoded(name: str, col: Any, n: int, packed: bool) -> Any:
    if len(col) != n:
        raise ValueError(f"column {name} has {len(col)} values, n is {n}")
    if packed:
        f64 = _as_f64(col)
        if f64 is not None:
            return {"f64": pybase64.b64encode(f64.astype("<f8").tobytes()).decode()}
    if isinstance(col, np.ndarray):
        if col.ndim == 1 and col.dtype.kind in "fiub":
            return np.ascontiguousarray(col)  # orjson writes these natively (NaN -> null)
        return col.tolist()
    return col


#: Value types a packed column carries exactly as JSON would (float32 is written by its
#: shortest decimal form in JSON, so it stays JSON).
_PACKABLE = NUMS_NONE | {np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8,
                         np.uint16, np.uint32, np.uint64}
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1  # the integers orjson writes


def _as_f64(col: Any) -> FloatArray | None:
    """``col`` as float64 with NaN for null and non-finite values, or None when it holds
    anything but numbers and nulls (bools included: they are labels, not numbers) or
    anything the JSON forms cannot write either (integers beyond 64 bits, non-native byte
    order): such a column stays a JSON array and fails to encode as in every form."""
    if isinstance(col, np.ndarray):
        if col.ndim != 1 or not col.dtype.isnative or (
                col.dtype.kind not in "iu" and col.dtype != np.float64):
            return None
        arr = col.astype(np.float64)
    else:
        types = set(map(type, col))
        if not _PACKABLE.issuperset(types):
            return None
        if int in types:
            ints = [v for v in col if type(v) is int]
            if min(ints) < _INT_MIN or max(ints) > _UINT_MAX:
                return None
        arr = np.array([NAN if v is None else v for v in col], dtype=np.float64)
    arr[~np.isfinite(arr)] = NAN
    return arr


def _dictionary_of(col: Sequence[Any], n: int) -> Any:
    """A segment column as ``{"dict": [...], "index": base64 uint32}`` (JSON array when a
    value cannot be keyed)."""
    if len(col) != n:
        raise ValueError(f"column segment has {len(col)} values, n is {n}")
    codes: dict[Any, int] = {}
    values: list[Any] = []
    index = np.empty(n, dtype="<u4")
    for i, v in enumerate(col):
        if v is None:
            key = None
        elif type(v) is dict and all(type(x) is str for x in v.values()):
            key = tuple(v.items())
        else:  # not a segment: the JSON array lets the worker name the row
            return list(col)
        code = codes.get(key)
        if code is None:
            code = codes[key] = len(values)
            values.append(v)
        index[i] = code
    return {"dict": values,
            "index": pybase64.b64encode(index.tobytes()).decode()}
