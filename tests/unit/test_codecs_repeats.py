"""Rows that repeat the previous row's feature keys or segment are validated like any other."""

from __future__ import annotations

import math

import orjson

from driftline.schemas.codecs import decode_inference, encode_envelope_columns, encode_envelope_rows
from driftline.schemas.limits import Limits


def _ev(seg: object, lat: object = 1.0, feats: dict[str, object] | None = None) -> bytes:
    return orjson.dumps({"model": "m", "features": feats or {"a": 1.0, "b": 2},
                         "segment": seg, "latency_ms": lat})


def test_repeated_segments_are_checked_on_every_row() -> None:
    lim = Limits(max_string_length=8)
    values = [_ev({"region": "eu"}), _ev({"region": "eu"}), _ev({"region": "x" * 9}),
              _ev({"region": ["eu"]}), _ev({"region": "eu", "tier": 1}), _ev({}),
              _ev({"region": "us"}), _ev({"region": "eu"})]
    out = decode_inference(values, limits=lim, offsets=list(range(len(values))))
    assert [(r.offset, r.reason.split(":")[0]) for r in out.rejections] == [
        (2, "string_too_long"), (3, "schema"), (4, "schema")]
    b = out.batches["m"]
    assert b.segment.tolist() == [{"region": "eu"}, {"region": "eu"}, None, {"region": "us"},
                                  {"region": "eu"}]
    assert b.offset.tolist() == [0, 1, 5, 6, 7]


def test_too_many_segment_keys_are_refused_after_a_valid_row() -> None:
    lim = Limits(max_segment_keys=2)
    seg3 = {"a": "1", "b": "2", "c": "3"}
    out = decode_inference([_ev({"a": "1"}), _ev(seg3), _ev(seg3)], limits=lim)
    assert [r.reason.split(":")[0] for r in out.rejections] == ["too_many_segments"] * 2
    assert len(out.batches["m"]) == 1


def test_latency_is_checked_on_every_row() -> None:
    values = [_ev(None, 2.5), _ev(None, -1.0), _ev(None, "3"), _ev(None, None), _ev(None, 0)]
    out = decode_inference(values, offsets=list(range(5)))
    assert [(r.offset, r.reason.split(":")[0]) for r in out.rejections] == [(1, "schema"),
                                                                             (2, "schema")]
    lat = out.batches["m"].latency_ms.tolist()
    assert lat[0] == 2.5 and math.isnan(lat[1]) and lat[2] == 0


def test_rejected_envelope_leaves_the_open_run_usable() -> None:
    """An envelope rejected after it changed the feature keys is rolled back; the next
    rows with the earlier keys pack into the earlier layout."""
    good = _ev(None, feats={"a": 1.0, "b": 2.0})
    bad = encode_envelope_rows("m", [{"features": {"a": 1.0, "b": 2.0, "c": 3.0}},
                                     {"features": {"a": 1.0}, "latency_ms": -1}])
    out = decode_inference([good, bad, _ev(None, feats={"a": 5.0, "b": 6.0})],
                           offsets=[0, 1, 2])
    assert [r.offset for r in out.rejections] == [1]
    b = out.batches["m"]
    assert b.feature_names == ("a", "b")
    assert b.numeric.tolist() == [[1.0, 2.0], [5.0, 6.0]]


def _cols(**columns: object) -> bytes:
    n = 3
    return encode_envelope_columns("m", {"features": {"a": [1.0, 2.0, 3.0]}, **columns}, n)


def test_columns_segments_and_latency_are_checked_on_every_row() -> None:
    lim = Limits(max_string_length=8)
    eu = {"region": "eu"}
    values = [
        _cols(segment=[eu, eu, {"region": "us"}], latency_ms=[1, 2.5, None]),
        _cols(segment=[eu, eu, {"region": "x" * 9}]),
        _cols(segment=[eu, {"region": ["eu"]}, eu]),
        _cols(segment=[eu, {}, None], latency_ms=[1.0, 2.0, -0.5]),
        _cols(latency_ms=[1.0, "2", 3.0]),
    ]
    out = decode_inference(values, limits=lim, offsets=list(range(len(values))))
    assert [(r.offset, r.reason) for r in out.rejections] == [
        (1, "string_too_long: columns.segment[2]: segment['region'] has 9 characters (limit 8)"),
        (2, "schema: columns.segment[1]: segment['region'] must be a string, not array"),
        (3, "schema: columns.latency_ms[2]: latency_ms must be >= 0"),
        (4, "schema: columns.latency_ms[1]: latency_ms must be a number, not string"),
    ]
    b = out.batches["m"]
    assert b.segment.tolist() == [eu, eu, {"region": "us"}]
    assert b.latency_ms.tolist()[:2] == [1.0, 2.5] and math.isnan(b.latency_ms[2])
