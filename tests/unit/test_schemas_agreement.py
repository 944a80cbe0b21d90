"""The JSON Schema files and the decoders agree: a table of samples, then generated ones.

The schema side parses with the standard library (which accepts NaN/Infinity and
unbounded integers) and validates with ``driftline.schemas.validation.validator``; the
decoder side is ``decode_inference`` / ``decode_labels`` with default limits.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from driftline.schemas.codecs import decode_inference, decode_labels
from driftline.schemas.limits import REASON_CODES, Limits
from driftline.schemas.models import ENVELOPE_V1
from driftline.schemas.validation import first_error, validator

REASON = re.compile(r"^([a-z_]+): \S")


def j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _no_constant(s: str) -> Any:
    raise ValueError(f"{s} is not JSON")


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"{s} is beyond the float64 range")
    return v


def _float_range_int(s: str) -> int:
    v = int(s)
    if abs(v) > sys.float_info.max:
        raise ValueError("integer beyond the float64 range")
    return v


def strict_json(raw: bytes) -> Any:
    """Standard JSON whose numbers fit a float64, as the contract requires of every number
    in a message (also in ignored keys): the decoders cannot parse anything else."""
    return json.loads(
        raw.decode("utf-8"),
        parse_constant=_no_constant,
        parse_float=_finite_float,
        parse_int=_float_range_int,
    )


def schema_ok(raw: bytes, *names: str) -> bool:
    try:
        obj = strict_json(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return any(validator(n).is_valid(obj) for n in names)


def inference_schema_ok(raw: bytes) -> bool:
    return schema_ok(raw, "inference_event.v1", "batch_envelope.v1")


def decoded(raw: bytes) -> str | None:
    """None when the decoder accepts ``raw``, else the rejection's reason."""
    res = decode_inference([raw])
    assert len(res.rejections) <= 1
    if res.rejections:
        reason = res.rejections[0].reason
        m = REASON.match(reason)
        assert m and m.group(1) in REASON_CODES, reason
        return reason
    return None


def label_decoded(raw: bytes) -> str | None:
    labels, rejections = decode_labels([raw])
    assert len(labels) + len(rejections) == 1
    return rejections[0].reason if rejections else None


def ev(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "features": {"x": 1.0}, **kw}


def rows(events: Any, **kw: Any) -> dict[str, Any]:
    return {"envelope": ENVELOPE_V1, "model": "m", "events": events, **kw}


def cols(n: Any, columns: Any, **kw: Any) -> dict[str, Any]:
    return {"envelope": ENVELOPE_V1, "model": "m", "n": n, "columns": columns, **kw}


FULL = {
    "model": "fraud",
    "model_version": "v3",
    "event_id": "e-1",
    "ts": 1.7e9,
    "features": {"amount": 12.5, "n": 3, "country": "DE", "new": True, "missing": None},
    "prediction": {"fraud": 0.2, "ok": 0.8},
    "segment": {"region": "eu", "device": "ios"},
    "latency_ms": 4.5,
    "shadow_of": "fraud-live",
    "trace_id": "abc",
    "outcome": "ok",
    "extra": {"anything": [1, 2]},
}

VALID: list[tuple[str, bytes]] = [
    ("minimal", j({"model": "m", "features": {}})),
    ("full", j(FULL)),
    (
        "nulls",
        j(
            ev(
                model_version=None,
                event_id=None,
                ts=None,
                prediction=None,
                segment=None,
                latency_ms=None,
                shadow_of=None,
                trace_id=None,
                outcome=None,
            )
        ),
    ),
    ("ts-iso-z", j(ev(ts="2024-05-01T12:00:00Z"))),
    ("ts-iso-offset-frac", j(ev(ts="2024-05-01T12:00:00.123456+02:00"))),
    ("ts-iso-date", j(ev(ts="2024-05-01"))),
    ("ts-iso-naive-space", j(ev(ts="2024-05-01 12:00"))),
    ("ts-int", j(ev(ts=1700000000))),
    ("pred-int", j(ev(prediction=3))),
    ("pred-label", j(ev(prediction="cat"))),
    ("pred-bool", j(ev(prediction=False))),
    ("segment-empty", j(ev(segment={}))),
    ("segment-16", j(ev(segment={f"k{i}": "v" for i in range(16)}))),
    ("model-256", j(ev(model="m" * 256))),
    ("name-128", j(ev(features={"n" * 128: 1}))),
    ("string-1024", j(ev(features={"s": "é" * 1024}))),
    ("features-512", j(ev(features={f"f{i}": i for i in range(512)}))),
    ("uint64", b'{"model":"m","features":{"x":18446744073709551615}}'),
    ("big-float", b'{"model":"m","features":{"x":1e308,"y":-1e308,"z":1e-400}}'),
    ("latency-zero", j(ev(latency_ms=0))),
    ("shadow-256", j(ev(shadow_of="s" * 256))),
    ("outcome-error", j(ev(outcome="error"))),
    (
        "rows",
        j(
            rows(
                [{"features": {"x": 1}}, {"features": {"y": "a"}, "model_version": "v2"}], model_version="v1"
            )
        ),
    ),
    ("rows-empty", j(rows([]))),
    ("rows-extra-n", j(rows([{"features": {}}], n=5))),
    (
        "columns-all",
        j(
            cols(
                2,
                {
                    "features": {"x": [1.0, None], "c": ["a", True]},
                    "ts": [1.0, "2024-01-01T00:00:00Z"],
                    "event_id": ["a", None],
                    "model_version": [None, "v9"],
                    "prediction": [0.5, {"a": 1}],
                    "latency_ms": [1, None],
                    "segment": [{"r": "eu"}, None],
                    "shadow_of": ["s", None],
                    "trace_id": [None, "t"],
                    "outcome": ["ok", None],
                    "unknown_column": 5,
                },
            )
        ),
    ),
    ("columns-empty", j(cols(0, {"features": {}}))),
    ("columns-null-optional", j(cols(1, {"features": {"x": [1]}, "ts": None, "segment": None}))),
    ("columns-n-float", j(cols(2.0, {"features": {"x": [1, 2]}}))),
]

INVALID: list[tuple[str, bytes, str]] = [
    ("empty", b"", "invalid_json"),
    ("truncated", b'{"model":', "invalid_json"),
    ("not-utf8", b'{"model":"\xff","features":{}}', "invalid_json"),
    ("nan", b'{"model":"m","features":{"x":NaN}}', "invalid_json"),
    ("infinity", b'{"model":"m","features":{"x":Infinity}}', "invalid_json"),
    ("-infinity", b'{"model":"m","features":{"x":-Infinity}}', "invalid_json"),
    ("huge-int", b'{"model":"m","features":{"x":1' + b"0" * 400 + b"}}", "invalid_json"),
    ("huge-float", b'{"model":"m","features":{"x":1e400}}', "invalid_json"),
    ("array", b"[1, 2]", "not_object"),
    ("string", b'"m"', "not_object"),
    ("null", b"null", "not_object"),
    ("no-model", j({"features": {}}), "schema"),
    ("model-empty", j(ev(model="")), "schema"),
    ("model-number", j(ev(model=5)), "schema"),
    ("model-257", j(ev(model="m" * 257)), "string_too_long"),
    ("no-features", j({"model": "m"}), "schema"),
    ("features-array", j(ev(features=[1.0])), "schema"),
    ("features-null", j(ev(features=None)), "schema"),
    ("value-list", j(ev(features={"x": [1]})), "schema"),
    ("value-object", j(ev(features={"x": {"y": 1}})), "schema"),
    ("name-empty", j(ev(features={"": 1})), "schema"),
    ("name-129", j(ev(features={"n" * 129: 1})), "string_too_long"),
    ("string-1025", j(ev(features={"s": "a" * 1025})), "string_too_long"),
    ("features-513", j(ev(features={f"f{i}": i for i in range(513)})), "too_many_features"),
    ("ts-bool", j(ev(ts=True)), "schema"),
    ("ts-word", j(ev(ts="yesterday")), "schema"),
    ("ts-bad-month", j(ev(ts="2024-13-01T00:00:00Z")), "schema"),
    ("ts-bad-offset", j(ev(ts="2024-01-01T00:00:00+25:00")), "schema"),
    ("ts-newline", j(ev(ts="2024-01-01\n")), "schema"),
    ("ts-array", j(ev(ts=[1])), "schema"),
    ("pred-array", j(ev(prediction=[0.1])), "schema"),
    ("pred-empty-object", j(ev(prediction={})), "schema"),
    ("pred-prob-string", j(ev(prediction={"a": "x"})), "schema"),
    ("pred-prob-bool", j(ev(prediction={"a": True})), "schema"),
    ("pred-1025", j(ev(prediction="p" * 1025)), "string_too_long"),
    ("segment-array", j(ev(segment=["eu"])), "schema"),
    ("segment-number-value", j(ev(segment={"a": 1})), "schema"),
    ("segment-17", j(ev(segment={f"k{i}": "v" for i in range(17)})), "too_many_segments"),
    ("segment-value-1025", j(ev(segment={"a": "v" * 1025})), "string_too_long"),
    ("latency-negative", j(ev(latency_ms=-1)), "schema"),
    ("latency-string", j(ev(latency_ms="1")), "schema"),
    ("event-id-number", j(ev(event_id=5)), "schema"),
    ("event-id-1025", j(ev(event_id="e" * 1025)), "string_too_long"),
    ("model-version-array", j(ev(model_version=[])), "schema"),
    ("trace-id-object", j(ev(trace_id={})), "schema"),
    ("shadow-empty", j(ev(shadow_of="")), "schema"),
    ("shadow-257", j(ev(shadow_of="s" * 257)), "string_too_long"),
    ("outcome-other", j(ev(outcome="maybe")), "schema"),
    ("outcome-number", j(ev(outcome=1)), "schema"),
    ("envelope-v2", j({**rows([]), "envelope": "driftline.batch/v2"}), "unknown_envelope"),
    ("envelope-number", j({**rows([]), "envelope": 1}), "unknown_envelope"),
    ("envelope-no-model", j({"envelope": ENVELOPE_V1, "events": []}), "schema"),
    ("envelope-neither", j({"envelope": ENVELOPE_V1, "model": "m"}), "schema"),
    ("envelope-both", j({**rows([]), "n": 0, "columns": {"features": {}}}), "schema"),
    ("envelope-model-version", j(rows([], model_version=3)), "schema"),
    ("rows-not-array", j(rows({"features": {}})), "schema"),
    ("rows-event-not-object", j(rows([{"features": {}}, 5])), "schema"),
    ("rows-event-with-model", j(rows([{"model": "m", "features": {}}])), "schema"),
    ("rows-event-no-features", j(rows([{"features": {}}, {"ts": 1}])), "schema"),
    ("rows-event-nested", j(rows([{"features": {"x": [1]}}])), "schema"),
    ("rows-event-bad-ts", j(rows([{"features": {}, "ts": "soon"}])), "schema"),
    (
        "rows-event-17-segments",
        j(rows([{"features": {}, "segment": {str(i): "" for i in range(17)}}])),
        "too_many_segments",
    ),
    ("columns-n-negative", j(cols(-1, {"features": {}})), "schema"),
    ("columns-n-string", j(cols("2", {"features": {}})), "schema"),
    ("columns-n-bool", j(cols(True, {"features": {"x": [1]}})), "schema"),
    ("columns-n-fraction", j(cols(1.5, {"features": {}})), "schema"),
    ("columns-not-object", j(cols(0, [])), "schema"),
    ("columns-no-features", j(cols(0, {})), "schema"),
    ("columns-feature-not-array", j(cols(1, {"features": {"x": 1}})), "schema"),
    ("columns-feature-nested", j(cols(1, {"features": {"x": [[1]]}})), "schema"),
    ("columns-feature-name-129", j(cols(1, {"features": {"n" * 129: [1]}})), "string_too_long"),
    (
        "columns-features-513",
        j(cols(0, {"features": {f"f{i}": [] for i in range(513)}})),
        "too_many_features",
    ),
    ("columns-ts-not-array", j(cols(1, {"features": {}, "ts": 1})), "schema"),
    ("columns-ts-bad", j(cols(1, {"features": {}, "ts": ["soon"]})), "schema"),
    ("columns-prediction-empty", j(cols(1, {"features": {}, "prediction": [{}]})), "schema"),
    (
        "columns-segment-17",
        j(cols(1, {"features": {}, "segment": [{str(i): "" for i in range(17)}]})),
        "too_many_segments",
    ),
    ("columns-outcome", j(cols(1, {"features": {}, "outcome": ["meh"]})), "schema"),
    ("columns-shadow-empty", j(cols(1, {"features": {}, "shadow_of": [""]})), "schema"),
    ("columns-event-id-number", j(cols(1, {"features": {}, "event_id": [1]})), "schema"),
    ("columns-latency-negative", j(cols(1, {"features": {}, "latency_ms": [-1]})), "schema"),
    ("columns-trace-1025", j(cols(1, {"features": {}, "trace_id": ["t" * 1025]})), "string_too_long"),
]


@pytest.mark.parametrize(("name", "raw"), VALID, ids=[v[0] for v in VALID])
def test_valid_samples_pass_schema_and_decoder(name: str, raw: bytes) -> None:
    obj = json.loads(raw)
    which = "batch_envelope.v1" if "envelope" in obj else "inference_event.v1"
    assert first_error(which, obj) is None
    assert decoded(raw) is None


@pytest.mark.parametrize(("name", "raw", "code"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_samples_fail_schema_and_decoder(name: str, raw: bytes, code: str) -> None:
    assert not inference_schema_ok(raw)
    reason = decoded(raw)
    assert reason is not None and reason.startswith(f"{code}: "), reason


def test_limits_beyond_the_schema_are_enforced_by_the_decoder() -> None:
    """What JSON Schema cannot express: payload size, column length == n, features
    distinct across the rows of an envelope."""
    big = j(ev(padding="x" * (1 << 20)))
    assert inference_schema_ok(big)
    assert (decoded(big) or "").startswith("payload_too_large: ")

    short = j(cols(2, {"features": {"x": [1.0]}}))
    assert inference_schema_ok(short)
    assert (decoded(short) or "").startswith("schema: columns.features['x'] has 1 values")
    short_ts = j(cols(1, {"features": {}, "ts": [1, 2]}))
    assert inference_schema_ok(short_ts)
    assert (decoded(short_ts) or "").startswith("schema: columns.ts has 2 values")

    wide = j(
        rows([{"features": {f"a{i}": 1 for i in range(300)}}, {"features": {f"b{i}": 1 for i in range(300)}}])
    )
    assert inference_schema_ok(wide)
    assert (decoded(wide) or "").startswith("too_many_features: ")

    res = decode_inference([j(rows([{"features": {}}] * 3))], limits=Limits(max_events_per_envelope=2))
    assert res.rejections[0].reason.startswith("too_many_events: envelope has 3 events")
    res = decode_inference([j(cols(3, {"features": {}}))], limits=Limits(max_events_per_envelope=2))
    assert res.rejections[0].reason.startswith("too_many_events: ")


LABELS_VALID = [
    j({"model": "m", "event_id": "e", "label": 1}),
    j({"model": "m", "event_id": "e", "label": "cat", "ts": "2024-01-01T00:00:00Z"}),
    j({"model": "m", "event_id": "e", "label": False, "ts": 5.5, "extra": [1]}),
]
LABELS_INVALID = [
    (j({"model": "m", "label": 1}), "schema"),
    (j({"model": "m", "event_id": "", "label": 1}), "schema"),
    (j({"model": "m", "event_id": "e"}), "schema"),
    (j({"model": "m", "event_id": "e", "label": None}), "schema"),
    (j({"model": "m", "event_id": "e", "label": [1]}), "schema"),
    (j({"model": "m", "event_id": "e", "label": "l" * 1025}), "string_too_long"),
    (j({"model": "m", "event_id": "e", "label": 1, "ts": "later"}), "schema"),
    (j({"event_id": "e", "label": 1}), "schema"),
    (b'{"model":"m","event_id":"e","label":NaN}', "invalid_json"),
    (b"[]", "not_object"),
]


def test_label_samples_agree() -> None:
    for raw in LABELS_VALID:
        assert schema_ok(raw, "label_event.v1"), raw
        assert label_decoded(raw) is None
    for raw, code in LABELS_INVALID:
        assert not schema_ok(raw, "label_event.v1"), raw
        assert (label_decoded(raw) or "").startswith(f"{code}: "), raw


# --------------------------------------------------------------------------- generated
# Bulk examples draw field values from pools of valid, boundary and invalid values (cheap
# to generate); a smaller free-form test draws arbitrary JSON for every field.

_NAN, _INF = float("nan"), float("inf")
#: Not JSON for the decoders: NaN, Infinity, an integer beyond the float64 range.
_JUNK = [_NAN, _INF, 10**400]
_ANY = [None, True, 0, -2.5, "", "s", [], [1], {}, {"a": 1}]
#: field -> (valid values, invalid values); valid ones are drawn 6x as often.
_POOLS: dict[str, tuple[list[Any], list[Any]]] = {
    "model": (["m", "m", "model-b", "m" * 256], ["", "m" * 257, 5, None, [], True]),
    "name": (["x", "y", "feature_1", "é", "n" * 128], ["", "n" * 129]),
    "value": (
        [0.0, -1.5, 1e308, 3, 2**64, 2**70, "a", "", "é" * 1024, True, False, None, 0.25],
        ["b" * 1025, [], [1], {}, {"a": 1}],
    ),
    "ts": (
        [
            1.7e9,
            0,
            -5,
            "2024-01-01T00:00:00Z",
            "2024-05-01 12:00:00.5+02:00",
            "2024-01-01T10:00+0530",
            "2024-01-01",
            None,
        ],
        ["2024-02-30", "yesterday", "2024-01-01\n", "", True, [], {}],
    ),
    "prediction": (
        [0.5, 3, "cat", "p" * 1024, False, {"a": 0.2, "b": 0.8}, {"a": 1}, {"": 0.1}, None],
        ["p" * 1025, {"a": "x"}, {"a": True}, {"a": None}, {}, [], [0.1]],
    ),
    "segment": (
        [
            None,
            {},
            {"r": "eu"},
            {"r": "eu", "d": "ios"},
            {f"k{i}": "v" for i in range(16)},
            {"k": "v" * 1024},
        ],
        [
            {"r": 1},
            {"r": None},
            ["eu"],
            "eu",
            {f"k{i}": "v" for i in range(17)},
            {"k" * 1025: "v"},
            {"k": "v" * 1025},
            0,
        ],
    ),
    "latency_ms": ([0, 1.5, -0.0, 1e308, None], [-1, "1", True, []]),
    "str": (["id", "", "x" * 1024, None], ["x" * 1025, 5, [], {}, True]),
    "shadow_of": (["live", "s" * 256, None], ["", "s" * 257, 1]),
    "outcome": (["ok", "error", None], ["nope", ["ok"], 1, True]),
    "envelope": ([ENVELOPE_V1] * 6, ["driftline.batch/v2", 1, None, ""]),
    "n": ([0, 1, 2, 2.0, 3], [-1, 1.5, "2", True, 100_001, None]),
    "other": (_ANY, []),
}


def _pool(name: str) -> st.SearchStrategy[Any]:
    good, bad = _POOLS[name]
    return st.sampled_from(good * 6 + bad)


_features = st.dictionaries(_pool("name"), _pool("value"), max_size=5)
_fields = {
    "ts": _pool("ts"),
    "prediction": _pool("prediction"),
    "segment": _pool("segment"),
    "latency_ms": _pool("latency_ms"),
    "event_id": _pool("str"),
    "model_version": _pool("str"),
    "shadow_of": _pool("shadow_of"),
    "trace_id": _pool("str"),
    "outcome": _pool("outcome"),
    "other": st.sampled_from(_ANY),
}
_event = st.fixed_dictionaries({"model": _pool("model"), "features": _features}, optional=_fields)
_sparse_event = st.fixed_dictionaries(
    {},
    optional={
        "model": _pool("model"),
        "features": _features | st.sampled_from(_ANY),
        **_fields,
        "envelope": _pool("envelope"),
        "junk": st.sampled_from(_JUNK),
    },
)
_row = st.fixed_dictionaries({"features": _features}, optional={**_fields, "model": _pool("model")})
_rows_env = st.fixed_dictionaries(
    {"envelope": _pool("envelope"), "model": _pool("model"), "events": st.lists(_row, max_size=3)},
    optional={"model_version": _pool("str"), "columns": st.sampled_from(_ANY)},
)


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode()


#: Packed columns the schema rejects too (content it cannot see, e.g. the length, is
#: tested in test_packed_columns.py).
_BAD_PACKED = [{"f64": "!!"}, {"f64": 1}, {"f64": None}, {}, {"f64": "AAAA", "x": 1},
               {"f32": "AAAA"}, {"dict": [], "index": "!"}, {"dict": {}, "index": ""},
               {"index": ""}]


def _f64_col(n: int, values: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    packed = st.lists(values, min_size=n, max_size=n).map(
        lambda v: {"f64": _b64(np.array(v, dtype="<f8").tobytes())})
    return packed | st.sampled_from(_BAD_PACKED)


def _dict_col(n: int) -> st.SearchStrategy[Any]:
    def encoded(d: list[Any]) -> st.SearchStrategy[Any]:
        if not d:
            return st.just({"dict": [], "index": ""}) if n == 0 else st.nothing()
        return st.lists(st.integers(0, len(d) - 1), min_size=n, max_size=n).map(
            lambda idx: {"dict": d, "index": _b64(np.array(idx, dtype="<u4").tobytes())})

    return st.lists(_pool("segment"), max_size=3).flatmap(encoded) | st.sampled_from(_BAD_PACKED)


def _columns_env(n: int) -> st.SearchStrategy[dict[str, Any]]:
    def col(pool: str) -> st.SearchStrategy[Any]:
        return st.lists(_pool(pool), min_size=n, max_size=n) | st.none()

    finite_or_nan = st.floats(allow_infinity=False)
    columns = st.fixed_dictionaries(
        {"features": st.dictionaries(_pool("name"), col("value") | _f64_col(n, finite_or_nan),
                                     max_size=4)},
        optional={
            "ts": col("ts") | _f64_col(n, finite_or_nan),
            "prediction": col("prediction") | _f64_col(n, finite_or_nan),
            "segment": col("segment") | _dict_col(n),
            "latency_ms": col("latency_ms") | _f64_col(
                n, st.floats(min_value=0, allow_infinity=False) | st.just(math.nan)),
            "event_id": col("str"),
            "model_version": col("str"),
            "shadow_of": col("shadow_of"),
            "trace_id": col("str"),
            "outcome": col("outcome"),
        },
    )
    return st.fixed_dictionaries(
        {"envelope": _pool("envelope"), "model": _pool("model"), "n": st.just(n), "columns": columns},
        optional={"model_version": _pool("str")},
    )


_cols_env = st.integers(0, 3).flatmap(_columns_env) | st.fixed_dictionaries(
    {
        "envelope": st.just(ENVELOPE_V1),
        "model": st.just("m"),
        "n": _pool("n"),
        "columns": st.just({"features": {}}),
    }
)

_any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=4,
)
_free_event = st.fixed_dictionaries(
    {"model": st.just("m") | st.text(max_size=3)},
    optional={k: _any_json for k in ("features", *_fields, "envelope", "events")},
)


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _agree(obj: Any) -> None:
    raw = json.dumps(obj).encode()
    want = inference_schema_ok(raw)
    got = decoded(raw)
    assert want == (got is None), (
        got,
        first_error("inference_event.v1", obj),
        first_error("batch_envelope.v1", obj),
    )
    event("valid" if want else f"invalid: {str(got).split(':')[0]}")


@_settings(600)
@given(_event | _event | _sparse_event)
def test_generated_events_agree(obj: dict[str, Any]) -> None:
    _agree(obj)


@_settings(300)
@given(_rows_env)
def test_generated_rows_envelopes_agree(obj: dict[str, Any]) -> None:
    _agree(obj)


@_settings(600)
@given(_cols_env)
def test_generated_columns_envelopes_agree(obj: dict[str, Any]) -> None:
    _agree(obj)


@_settings(150)
@given(_free_event)
def test_generated_free_form_json_agrees(obj: dict[str, Any]) -> None:
    _agree(obj)


@_settings(200)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "model": _pool("model"),
            "event_id": _pool("str"),
            "label": _pool("value"),
            "ts": _pool("ts"),
            "other": st.sampled_from(_ANY),
        },
    )
)
def test_generated_labels_agree(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj).encode()
    assert schema_ok(raw, "label_event.v1") == (label_decoded(raw) is None)
