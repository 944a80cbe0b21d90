"""decode_inference / decode_labels: values, grouping, envelopes, offsets, limits, robustness."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.schemas.codecs import (
    decode_inference,
    decode_labels,
    encode_envelope_columns,
    encode_envelope_rows,
    encode_event,
)
from driftline.schemas.limits import REASON_CODES, Limits
from driftline.schemas.models import ENVELOPE_V1, EventBatch

NAN = float("nan")


def one(values: list[bytes], **kw: Any) -> EventBatch:
    res = decode_inference(values, **kw)
    assert not res.rejections, res.rejections
    assert len(res.batches) == 1
    return next(iter(res.batches.values()))


def test_feature_types_split_into_numeric_and_text() -> None:
    b = one(
        [
            encode_event(
                {"model": "m", "features": {"a": 1.5, "b": "x", "c": True, "d": None, "e": 7, "f": False}}
            )
        ]
    )
    assert b.feature_names == ("a", "b", "c", "d", "e", "f")
    np.testing.assert_array_equal(b.numeric, [[1.5, NAN, NAN, NAN, 7.0, NAN]])
    assert b.text is not None
    assert b.text.tolist() == [[None, "x", "true", None, None, "false"]]
    assert b.numeric.dtype == np.float64 and b.numeric.flags.c_contiguous


def test_text_is_none_without_strings_and_missing_features_are_nan() -> None:
    b = one(
        [
            encode_event({"model": "m", "features": {"a": 1}}),
            encode_event({"model": "m", "features": {"b": 2, "a": 3}}),
            encode_event({"model": "m", "features": {}}),
        ]
    )
    assert b.text is None
    assert b.feature_names == ("a", "b")
    np.testing.assert_array_equal(b.numeric, [[1, NAN], [3, 2], [NAN, NAN]])


def test_fields_prediction_ts_and_optional_columns() -> None:
    events = [
        {
            "model": "m",
            "features": {},
            "prediction": {"cat": 0.3, "dog": 0.7},
            "ts": "2024-01-01T00:00:00Z",
            "event_id": "e1",
            "model_version": "v1",
            "segment": {"r": "eu"},
            "latency_ms": 3,
            "shadow_of": "live",
            "trace_id": "t1",
            "outcome": "error",
        },
        {"model": "m", "features": {}, "prediction": 0.25, "ts": "2024-01-01T01:00:00+01:00"},
        {"model": "m", "features": {}, "prediction": "yes", "ts": "2024-01-01 00:00:30"},
        {"model": "m", "features": {}, "prediction": True, "ts": 12},
        {"model": "m", "features": {}},
    ]
    b = one([encode_event(e) for e in events], timestamps=[100.0] * 5)
    t0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    np.testing.assert_array_equal(b.ts, [t0, t0, t0 + 30, 12, 100.0])
    np.testing.assert_array_equal(b.prediction_score, [0.7, 0.25, NAN, NAN, NAN])
    assert b.prediction_label is not None
    assert b.prediction_label.tolist() == ["dog", None, "yes", "true", None]
    assert b.event_id.tolist() == ["e1", None, None, None, None]
    assert b.model_version.tolist() == ["v1", None, None, None, None]
    assert b.segment.tolist() == [{"r": "eu"}, None, None, None, None]
    np.testing.assert_array_equal(b.latency_ms, [3, NAN, NAN, NAN, NAN])
    assert b.shadow_of is not None and b.shadow_of.tolist() == ["live", None, None, None, None]
    assert b.trace_id is not None and b.trace_id.tolist()[0] == "t1"
    assert b.outcome is not None and b.outcome.tolist()[0] == "error"
    plain = one([encode_event({"model": "m", "features": {}})])
    assert plain.prediction_label is None and plain.shadow_of is None
    assert plain.trace_id is None and plain.outcome is None
    assert math.isnan(plain.ts[0])


def test_events_group_by_model_in_order_with_partitions_and_offsets() -> None:
    msgs = [encode_event({"model": f"m{i % 3}", "features": {"x": i}}) for i in range(9)]
    msgs.insert(4, b"broken")
    res = decode_inference(
        msgs, topic="t", partitions=[i % 2 for i in range(10)], offsets=list(range(100, 110))
    )
    assert list(res.batches) == ["m0", "m1", "m2"] and res.events == 9
    m1 = res.batches["m1"]
    np.testing.assert_array_equal(m1.column("x"), [1, 4, 7])
    np.testing.assert_array_equal(m1.offset, [101, 105, 108])
    np.testing.assert_array_equal(m1.partition, [1, 1, 0])
    (rej,) = res.rejections
    assert (rej.topic, rej.partition, rej.offset, rej.payload, rej.model) == (
        "t",
        0,
        104,
        b"broken",
        None,
    )
    assert rej.reason.startswith("invalid_json: ")


def test_envelope_rows_share_the_envelope_offset() -> None:
    env = encode_envelope_rows("m", [{"features": {"x": i}} for i in range(3)])
    res = decode_inference(
        [encode_event({"model": "m", "features": {"x": 9}}), env], partitions=[4, 5], offsets=[10, 11]
    )
    b = res.batches["m"]
    np.testing.assert_array_equal(b.offset, [10, 11, 11, 11])
    np.testing.assert_array_equal(b.partition, [4, 5, 5, 5])
    assert res.events == 4
    cols = encode_envelope_columns("m", {"features": {"x": [1, 2]}}, 2)
    b = one([cols], partitions=[3], offsets=[77])
    np.testing.assert_array_equal(b.offset, [77, 77])
    np.testing.assert_array_equal(b.partition, [3, 3])
    b = one([cols])  # offline: -1
    np.testing.assert_array_equal(b.offset, [-1, -1])


def test_bad_envelope_is_rejected_whole_and_rolled_back() -> None:
    good = encode_event({"model": "m", "features": {"a": 1}})
    bad = encode_envelope_rows(
        "m", [{"features": {"new": "s", "a": 2}}, {"features": {"a": 3}}, {"features": {"a": [1]}}]
    )
    res = decode_inference([good, bad, good], offsets=[1, 2, 3])
    b = res.batches["m"]
    assert b.feature_names == ("a",) and b.text is None
    np.testing.assert_array_equal(b.offset, [1, 3])
    (rej,) = res.rejections
    assert rej.reason.startswith("schema: events[2]: feature 'a' must be")
    assert rej.model == "m" and rej.offset == 2 and rej.payload == bad
    assert res.events == 2
    only_bad = decode_inference([bad])
    assert only_bad.batches == {} and only_bad.events == 0


def test_distinct_features_per_model_are_limited() -> None:
    lim = Limits(max_features=3)
    res = decode_inference(
        [
            encode_event({"model": "m", "features": {"a": 1, "b": 2}}),
            encode_event({"model": "m", "features": {"c": 1, "d": 2}}),
            encode_event({"model": "m", "features": {"b": 1, "c": 2}}),
        ],
        limits=lim,
    )
    assert res.batches["m"].feature_names == ("a", "b", "c")
    assert [r.reason.split(":")[0] for r in res.rejections] == ["too_many_features"]


def test_configured_limits_apply() -> None:
    lim = Limits(
        max_payload_bytes=100,
        max_string_length=3,
        max_segment_keys=1,
        max_feature_name_length=2,
        max_model_id_length=2,
    )
    cases = {
        b'{"model":"m","features":{}}' + b" " * 100: "payload_too_large",
        encode_event({"model": "m", "features": {"s": "abcd"}}): "string_too_long",
        encode_event({"model": "m", "features": {"abc": 1}}): "string_too_long",
        encode_event({"model": "m", "features": {}, "segment": {"a": "b", "c": "d"}}): "too_many_segments",
        encode_event({"model": "mmm", "features": {}}): "string_too_long",
    }
    res = decode_inference(list(cases), limits=lim)
    assert [r.reason.split(":")[0] for r in res.rejections] == list(cases.values())


def test_odd_message_values_become_rejections() -> None:
    values: list[Any] = [
        None,
        bytearray(b'{"model":"m","features":{"x":1}}'),
        memoryview(b'{"model":"m","features":{"x":2}}'),
        '{"model":"m","features":{"x":3}}',
        12,
        b"\xef\xbb\xbf{}",
    ]
    res = decode_inference(values)
    np.testing.assert_array_equal(res.batches["m"].column("x"), [1, 2, 3])
    reasons = [r.reason for r in res.rejections]
    assert reasons[0] == "invalid_json: empty message (null value)"
    assert reasons[1] == "invalid_json: message value is int, not bytes"
    assert reasons[2].startswith("invalid_json: ")
    assert [r.payload for r in res.rejections] == [b"", b"", b"\xef\xbb\xbf{}"]


def test_meta_sequences_must_match_values() -> None:
    with pytest.raises(ValueError, match="offsets"):
        decode_inference([b"{}"], offsets=[1, 2])


def test_encoders_check_their_arguments() -> None:
    with pytest.raises(ValueError):
        encode_event({"features": {}})
    with pytest.raises(ValueError, match="not 'm'"):
        encode_envelope_rows("m", [{"model": "other", "features": {}}])
    with pytest.raises(ValueError, match="n is 3"):
        encode_envelope_columns("m", {"features": {"x": [1, 2]}}, 3)
    raw = encode_envelope_rows("m", [{"model": "m", "features": {}}], model_version="v")
    assert json.loads(raw) == {
        "envelope": ENVELOPE_V1,
        "model": "m",
        "model_version": "v",
        "events": [{"features": {}}],
    }


def test_encode_columns_takes_numpy_and_maps_non_finite_to_missing() -> None:
    x = np.array([[1.0, np.nan], [np.inf, 4.0], [5.0, 6.0]])
    raw = encode_envelope_columns(
        "m",
        {
            "features": {"a": x[:, 0], "b": x[:, 1], "k": np.array([1, 2, 3])},
            "ts": np.arange(3.0),
            "event_id": np.array(["a", "b", "c"]),
        },
        3,
    )
    b = one([raw])
    np.testing.assert_array_equal(b.numeric, [[1, NAN, 1], [NAN, 4, 2], [5, 6, 3]])
    assert b.event_id.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(b.ts, [0, 1, 2])


def test_labels_decode_and_reject() -> None:
    raws = [
        orjson.dumps({"model": "m", "event_id": "e1", "label": 1, "ts": 5}),
        orjson.dumps({"model": "m", "event_id": "e2", "label": "cat"}),
        orjson.dumps({"model": "m", "event_id": "e3"}),
        b"nope",
    ]
    labels, rejections = decode_labels(raws, topic="l", partitions=[0] * 4, offsets=[1, 2, 3, 4])
    assert [(x.model, x.event_id, x.label) for x in labels] == [("m", "e1", 1), ("m", "e2", "cat")]
    assert labels[0].ts == 5.0 and math.isnan(labels[1].ts)
    assert [(r.offset, r.model, r.reason.split(":")[0]) for r in rejections] == [
        (3, "m", "schema"),
        (4, None, "invalid_json"),
    ]


# --------------------------------------------------------------------------- properties

_names = st.sampled_from(["a", "b", "x y", "é", "Δ"]) | st.text(min_size=1, max_size=4)
_value = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=8)
    | st.booleans()
    | st.none()
)
_label = st.sampled_from(["a", "cat", "é", "0", "x y"]) | st.text(min_size=1, max_size=4)
_prediction = (
    st.floats(-1e6, 1e6)
    | _label
    | st.dictionaries(_label, st.floats(0, 1), min_size=1, max_size=3)
    | st.none()
)
_valid_event = st.fixed_dictionaries(
    {"features": st.dictionaries(st.sampled_from(["a", "b", "c", "d"]) | _names, _value, max_size=5)},
    optional={
        "ts": st.floats(0, 4e9) | st.none(),
        "prediction": _prediction,
        "event_id": _label | st.none(),
        "model_version": _label | st.none(),
        "segment": st.dictionaries(_label, _label, max_size=3) | st.none(),
        "latency_ms": st.floats(0, 1e6) | st.none(),
        "shadow_of": _label | st.none(),
        "trace_id": _label | st.none(),
        "outcome": st.sampled_from(["ok", "error", None]),
    },
)


def _expected_cell(v: Any) -> tuple[float, str | None]:
    if isinstance(v, bool):
        return NAN, "true" if v else "false"
    if isinstance(v, str):
        return NAN, v
    if v is None:
        return NAN, None
    return float(v), None


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_valid_event, min_size=1, max_size=5))
def test_valid_events_round_trip(events: list[dict[str, Any]]) -> None:
    b = one([encode_event({"model": "m", **e}) for e in events])
    assert len(b) == len(events)
    for i, e in enumerate(events):
        for name, v in e["features"].items():
            j = b.feature_names.index(name)
            num, text = _expected_cell(v)
            assert b.numeric[i, j] == num or (math.isnan(num) and math.isnan(b.numeric[i, j]))
            assert (None if b.text is None else b.text[i, j]) == text
        for j, name in enumerate(b.feature_names):
            if name not in e["features"]:
                assert math.isnan(b.numeric[i, j])
                assert b.text is None or b.text[i, j] is None
        ts = e.get("ts")
        assert math.isnan(b.ts[i]) if ts is None else b.ts[i] == ts
        p = e.get("prediction")
        label = b.prediction_label[i] if b.prediction_label is not None else None
        if isinstance(p, dict):
            best = max(p, key=p.__getitem__)
            assert (b.prediction_score[i], label) == (p[best], best)
        elif isinstance(p, str):
            assert label == p and math.isnan(b.prediction_score[i])
        elif p is None:
            assert label is None and math.isnan(b.prediction_score[i])
        else:
            assert b.prediction_score[i] == p and label is None
        assert b.event_id[i] == e.get("event_id")
        assert b.model_version[i] == e.get("model_version")
        assert b.segment[i] == (e.get("segment") or None)
        lat = e.get("latency_ms")
        assert math.isnan(b.latency_ms[i]) if lat is None else b.latency_ms[i] == lat
        for name in ("shadow_of", "trace_id", "outcome"):
            col = getattr(b, name)
            assert (None if col is None else col[i]) == e.get(name)


def _as_columns(events: list[dict[str, Any]]) -> dict[str, Any]:
    names: list[str] = []
    for e in events:
        names += [k for k in e["features"] if k not in names]
    columns: dict[str, Any] = {"features": {k: [e["features"].get(k) for e in events] for k in names}}
    for f in (
        "ts",
        "prediction",
        "event_id",
        "model_version",
        "segment",
        "latency_ms",
        "shadow_of",
        "trace_id",
        "outcome",
    ):
        if any(f in e for e in events):
            columns[f] = [e.get(f) for e in events]
    return columns


def assert_same_batch(a: EventBatch, b: EventBatch) -> None:
    for name in EventBatch.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if name in ("offset", "partition"):
            continue
        if isinstance(x, np.ndarray) and x.dtype == np.float64:
            np.testing.assert_array_equal(x, y, err_msg=name)
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.tolist() == y.tolist(), name
        else:
            assert x == y, name


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_valid_event, min_size=1, max_size=6))
def test_envelopes_decode_like_single_events(events: list[dict[str, Any]]) -> None:
    singles = one([encode_event({"model": "m", **e}) for e in events])
    rows = one([encode_envelope_rows("m", events)])
    cols = one([encode_envelope_columns("m", _as_columns(events), len(events))])
    assert_same_batch(singles, rows)
    assert_same_batch(singles, cols)
    # split over several envelopes and singles, mixed with another model
    half = len(events) // 2
    mixed = decode_inference(
        [
            encode_envelope_rows("m", events[:half]),
            encode_event({"model": "other", "features": {}}),
            *[encode_event({"model": "m", **e}) for e in events[half:]],
        ]
    )
    assert not mixed.rejections
    assert_same_batch(singles, mixed.batches["m"])


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
    max_leaves=6,
)


def _check_result(values: list[Any]) -> None:
    res = decode_inference(values, partitions=[0] * len(values), offsets=list(range(len(values))))
    assert len(res.rejections) <= len(values)
    for r in res.rejections:
        code, sep, detail = r.reason.partition(": ")
        assert sep and detail and code in REASON_CODES, r.reason
    n = sum(len(b) for b in res.batches.values())
    assert n == res.events


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_bytes_never_raise(values: list[bytes]) -> None:
    _check_result(values)
    decode_labels(values)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        _any_json
        | st.fixed_dictionaries(
            {"model": st.just("m"), "features": _any_json},
            optional={
                "envelope": st.just(ENVELOPE_V1) | _any_json,
                "events": _any_json,
                "n": _any_json,
                "columns": _any_json,
                "ts": _any_json,
                "prediction": _any_json,
                "segment": _any_json,
            },
        ),
        max_size=4,
    )
)
def test_arbitrary_json_never_raises(values: list[Any]) -> None:
    raws = [json.dumps(v).encode() for v in values]
    _check_result(raws)
    labels, rejections = decode_labels(raws)
    assert len(labels) + len(rejections) == len(raws)
