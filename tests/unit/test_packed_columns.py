"""Packed columns envelopes (``{"f64": base64}`` numeric columns, a dictionary-encoded
segment column) decode to exactly the batches of the same events as JSON columns, as
rows and as single events, and every malformed packed column is rejected with a reason."""

from __future__ import annotations

import binascii
import math
import random
from typing import Any

import numpy as np
import orjson
import pytest

from driftline.schemas.codecs import decode_inference, encode_envelope_columns, encode_envelope_rows
from driftline.schemas.models import EventBatch
from driftline.streams.producer import _columns_envelope


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode()


def _f64(values: list[float]) -> dict[str, str]:
    return {"f64": _b64(np.asarray(values, dtype="<f8").tobytes())}


def same_batches(a: dict[str, EventBatch], b: dict[str, EventBatch]) -> None:
    assert a.keys() == b.keys()
    for m in a:
        x, y = a[m], b[m]
        for name in x.__dataclass_fields__:
            u, v = getattr(x, name), getattr(y, name)
            if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
                assert isinstance(u, np.ndarray) and isinstance(v, np.ndarray), name
                assert u.dtype == v.dtype and u.shape == v.shape, name
                if u.dtype == object:
                    assert u.tolist() == v.tolist(), name
                else:
                    assert np.array_equal(u, v, equal_nan=True), name
            else:
                assert u == v, name


def _events(rng: random.Random, n: int, names: list[str]) -> list[dict[str, Any]]:
    """Uniform events (same fields, same feature order) with nulls, ints, NaN-free values."""
    opt = {k for k in ("ts", "prediction", "segment", "latency_ms", "event_id", "trace_id")
           if rng.random() < 0.7}
    segs = [None, {}, {"region": "eu"}, {"region": "us", "device": "ios"},
            {"device": "ios", "region": "us"}]
    out = []
    for i in range(n):
        ev: dict[str, Any] = {"features": {
            k: rng.choice((None, rng.randint(-5, 5), rng.uniform(-1e6, 1e6), -0.0, 1e-310))
            for k in names}}
        if "ts" in opt:
            ev["ts"] = rng.choice((None, 1.7e9 + i, 1_700_000_000 + i))
        if "prediction" in opt:
            ev["prediction"] = rng.choice((None, rng.random(), 1))
        if "segment" in opt:
            ev["segment"] = rng.choice(segs)
        if "latency_ms" in opt:
            ev["latency_ms"] = rng.choice((None, rng.uniform(0, 50), 0, -0.0))
        if "event_id" in opt:
            ev["event_id"] = rng.choice((None, f"e{i}"))
        if "trace_id" in opt:
            ev["trace_id"] = f"t{i}"
        out.append(ev)
    return out


def _columns(events: list[dict[str, Any]]) -> dict[str, Any]:
    first = events[0]
    cols: dict[str, Any] = {"features": {k: [e["features"][k] for e in events]
                                         for k in first["features"]}}
    for f in first:
        if f != "features":
            cols[f] = [e[f] for e in events]
    return cols


@pytest.mark.parametrize("seed", range(40))
def test_packed_json_columns_rows_and_single_events_decode_alike(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"f{j}" for j in range(rng.choice((1, 3, 20)))]
    events = _events(rng, rng.choice((1, 2, 7, 64)), names)
    cols = _columns(events)
    kts = 1.6e9
    packed = encode_envelope_columns("m", cols, len(events), model_version="v1", packed=True)
    obj = orjson.loads(packed)
    assert all("f64" in c for c in obj["columns"]["features"].values())
    as_json = encode_envelope_columns("m", cols, len(events), model_version="v1")
    rows = encode_envelope_rows("m", events, model_version="v1")
    singles = [orjson.dumps({"model": "m", "model_version": "v1", **e}) for e in events]
    sdk = _columns_envelope("m", [{"model": "m", **e} for e in events], "v1")
    assert sdk == packed

    def dec(values: list[bytes]) -> dict[str, EventBatch]:
        res = decode_inference(values, partitions=[3] * len(values),
                               offsets=list(range(len(values))), timestamps=[kts] * len(values))
        assert not res.rejections, res.rejections
        return res.batches

    want = dec([as_json])
    same_batches(dec([packed]), want)
    same_batches(dec([rows]), want)
    # single events carry their own offsets; the rest of every row is the same
    single = dec(singles)["m"]
    single.offset[:] = 0
    same_batches({"m": single}, want)


def test_packed_blocks_interleave_with_rows_and_single_events_in_order() -> None:
    rng = random.Random(7)
    names = ["a", "b"]
    first, second = _events(rng, 5, names), _events(rng, 4, names)
    text_event = {"model": "m", "features": {"a": "text", "b": 1.0}, "event_id": "x"}
    values = [
        orjson.dumps(text_event),
        encode_envelope_columns("m", _columns(first), 5, packed=True),
        orjson.dumps(text_event),  # a string feature after a block: its row is 6
        encode_envelope_rows("m", second),
        encode_envelope_columns("m", _columns(second), 4, packed=True),
    ]
    got = decode_inference(values, partitions=[0] * 5, offsets=list(range(5)),
                           timestamps=[1.0] * 5).batches["m"]
    # the same rows, each message decoded alone, joined in message order
    parts = [decode_inference([v], partitions=[0], offsets=[i], timestamps=[1.0]).batches["m"]
             for i, v in enumerate(values)]
    assert len(got) == sum(len(p) for p in parts) == 1 + 5 + 1 + 4 + 4
    assert np.array_equal(got.numeric, np.concatenate([p.numeric for p in parts]), equal_nan=True)
    assert got.text is not None
    assert [i for i, t in enumerate(got.text[:, 0]) if t is not None] == [0, 6]
    for name in ("ts", "prediction_score", "latency_ms", "offset"):
        assert np.array_equal(getattr(got, name),
                              np.concatenate([getattr(p, name) for p in parts]), equal_nan=True)
    for name in ("event_id", "segment"):
        assert getattr(got, name).tolist() == [v for p in parts for v in getattr(p, name).tolist()]


def test_a_rejected_rows_envelope_after_a_packed_block_leaves_the_block_whole() -> None:
    rng = random.Random(3)
    evs = _events(rng, 6, ["a"])
    bad_rows = encode_envelope_rows("m", [{"features": {"a": 1.0}}, {"features": {"a": [1]}}])
    good = encode_envelope_columns("m", _columns(evs), 6, packed=True)
    res = decode_inference([good, bad_rows, good])
    assert len(res.rejections) == 1 and "events[1]" in res.rejections[0].reason
    assert res.events == 12
    alone = decode_inference([good]).batches["m"]
    assert np.array_equal(res.batches["m"].numeric, np.concatenate([alone.numeric] * 2),
                          equal_nan=True)


def _env(columns: dict[str, Any], n: int) -> bytes:
    return orjson.dumps({"envelope": "driftline.batch/v1", "model": "m", "n": n,
                         "columns": columns})


def _reason(columns: dict[str, Any], n: int = 3) -> str:
    res = decode_inference([_env(columns, n)])
    assert not res.batches and len(res.rejections) == 1
    return res.rejections[0].reason


@pytest.mark.parametrize(("columns", "reason"), [
    ({"features": {"x": _f64([1.0, math.inf, 2.0])}},
     "schema: columns.features['x'][1]: inf is not a finite number"),
    ({"features": {"x": _f64([-math.inf, 1.0, 2.0])}},
     "schema: columns.features['x'][0]: -inf is not a finite number"),
    ({"features": {"x": _f64([1.0, 2.0])}},
     "schema: columns.features['x']: f64 holds 16 bytes, n is 3 (24 bytes)"),
    ({"features": {"x": {"f64": "not base64!"}}}, "schema: columns.features['x']: f64 is not base64"),
    ({"features": {"x": {"f64": "é"}}}, "schema: columns.features['x']: f64 is not base64"),
    ({"features": {"x": {**_f64([1.0, 2.0, 3.0]), "more": 1}}},
     "schema: columns.features['x']: a packed column is"),
    ({"features": {"x": {"f32": "AAAA"}}}, "schema: columns.features['x']: a packed column is"),
    ({"features": {}, "ts": _f64([1.0, math.inf, 0.0])}, "schema: columns.ts[1]: inf"),
    ({"features": {}, "latency_ms": _f64([1.0, 2.0, -1.0])},
     "schema: columns.latency_ms[2]: latency_ms must be >= 0"),
    ({"features": {}, "event_id": _f64([1.0, 2.0, 3.0])},
     "schema: columns.event_id must be an array, not object"),
    ({"features": {}, "segment": {"dict": [{"r": "eu"}],
                                  "index": _b64(np.array([0, 1, 0], "<u4").tobytes())}},
     "schema: columns.segment[1]: index 1 is outside the dict of 1"),
    ({"features": {}, "segment": {"dict": [{"r": 1}],
                                  "index": _b64(np.zeros(3, "<u4").tobytes())}},
     "schema: columns.segment.dict[0]: segment['r'] must be a string, not number"),
    ({"features": {}, "segment": {"dict": [None], "index": _b64(bytes(8))}},
     "schema: columns.segment: index holds 8 bytes, n is 3 (12 bytes)"),
    ({"features": {}, "segment": {"dict": [None]}}, "schema: columns.segment: a dictionary column is"),
])  # fmt: skip
def test_malformed_packed_columns_are_rejected_with_a_reason(columns: dict[str, Any],
                                                             reason: str) -> None:
    assert _reason(columns).startswith(reason)


def test_packed_nan_is_null_and_dictionary_segments_are_shared() -> None:
    cols = {"features": {"x": _f64([1.0, math.nan, 3.0])}, "ts": _f64([math.nan, 5.0, 6.0]),
            "prediction": _f64([math.nan, 0.5, 1.0]),
            "segment": {"dict": [{"r": "eu"}, {}, None],
                        "index": _b64(np.array([0, 1, 0], "<u4").tobytes())}}
    b = decode_inference([_env(cols, 3)], timestamps=[9.0]).batches["m"]
    assert np.isnan(b.numeric[1, 0]) and b.ts.tolist() == [9.0, 5.0, 6.0]
    assert math.isnan(b.prediction_score[0])
    assert b.segment.tolist() == [{"r": "eu"}, None, {"r": "eu"}]
    assert b.segment[0] is b.segment[2]


def test_the_encoder_keeps_json_arrays_for_columns_that_are_not_numbers() -> None:
    events = [{"features": {"n": 1.0, "c": "DE", "flag": True}, "prediction": "fraud",
               "segment": {"r": 1}}, {"features": {"n": None, "c": None, "flag": False},
                                      "prediction": "ok", "segment": None}]
    obj = orjson.loads(encode_envelope_columns("m", _columns(events), 2, packed=True))
    feats = obj["columns"]["features"]
    assert "f64" in feats["n"] and feats["c"] == ["DE", None] and feats["flag"] == [True, False]
    assert obj["columns"]["prediction"] == ["fraud", "ok"]
    assert obj["columns"]["segment"] == [{"r": 1}, None]  # invalid: the worker names the row
    res = decode_inference([orjson.dumps(obj)])
    assert res.rejections[0].reason.startswith("schema: columns.segment[0]")


def test_schema_and_decoder_agree_on_line_breaks_and_dictionary_size() -> None:
    from driftline.schemas.limits import DEFAULT_LIMITS
    from driftline.schemas.validation import first_error

    for columns, n in (({"features": {"x": {"f64": _b64(bytes(8)) + "\n"}}}, 1),
                       ({"features": {}, "segment": {"dict": [None], "index": "AAA=\n"}}, 0),
                       ({"features": {}, "segment": {
                           "dict": [None] * (DEFAULT_LIMITS.max_events_per_envelope + 1),
                           "index": ""}}, 0)):
        obj = orjson.loads(_env(columns, n))
        assert first_error("batch_envelope.v1", obj) is not None
        assert _reason(columns, n).startswith("schema: columns.")


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_integers_json_cannot_write_fail_in_the_packed_form_too(value: int) -> None:
    from driftline.streams.producer import encode_batch

    events = [{"features": {"a": value}, "ts": 1.0}, {"features": {"a": 1}, "ts": 2.0}]
    for form in ("auto", "rows"):
        with pytest.raises(TypeError):
            encode_batch("m", events, form=form)
    with pytest.raises(TypeError):
        encode_envelope_columns("m", _columns(events), 2, packed=True)
    big_endian = np.array([1, 2], dtype=">i8")
    with pytest.raises(TypeError):
        encode_envelope_columns("m", {"features": {"a": big_endian}}, 2, packed=True)


def test_the_largest_integers_json_writes_pack_like_json() -> None:
    events = [{"features": {"a": v}} for v in (2**64 - 1, -(2**63), 2**53 + 1)]
    packed = decode_inference([encode_envelope_columns("m", _columns(events), 3, packed=True)])
    as_json = decode_inference([encode_envelope_columns("m", _columns(events), 3)])
    same_batches(packed.batches, as_json.batches)


def test_packed_fields_accept_what_strict_binascii_accepts_and_nothing_else() -> None:
    """The SIMD decoder of packed fields against ``binascii`` in strict mode (the rule the
    decoder always had): random near-base64 strings are accepted alike, with the same
    bytes, or refused alike; and the SDK writes what binascii writes."""
    from driftline.schemas.envelope import Reject, _base64

    rng = random.Random(11)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    accepted = refused = 0
    for _ in range(30_000):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 24)))
        chars = list(_b64(raw))
        for _ in range(rng.randint(0, 2)):  # a few insertions, deletions, replacements
            at = rng.randint(0, len(chars))
            op, c = rng.random(), rng.choice(alphabet + "==\n -_é")
            if op < 0.3 and chars:
                del chars[min(at, len(chars) - 1)]
            elif op < 0.7:
                chars.insert(at, c)
            elif chars:
                chars[min(at, len(chars) - 1)] = c
        s = "".join(chars)
        try:
            want: bytes | None = binascii.a2b_base64(s, strict_mode=True)
        except (binascii.Error, ValueError):
            want = None
        n = len(want) if want is not None else 0
        try:
            got: bytes | None = _base64("x", "f64", s, 1, n)
        except Reject:
            got = None
        assert got == want, s
        accepted += want is not None
        refused += want is None
    assert accepted > 5_000 and refused > 5_000
    column = np.random.default_rng(3).normal(size=257)
    packed = orjson.loads(encode_envelope_columns("m", {"features": {"x": column}}, column.size,
                                                  packed=True))
    assert packed["columns"]["features"]["x"]["f64"] == _b64(column.astype("<f8").tobytes())
