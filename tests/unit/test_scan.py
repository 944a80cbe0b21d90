"""The compiled scanner of single events decodes exactly as the Python decoder.

``decode_inference(scan=True)`` (the scanner takes the common shape, the Python decoder the
rest, a model with rows both ways decoded again in Python) is compared with
``decode_inference(scan=False)`` on generated message lists: every batch field (dtype,
values, NaN, -0.0), the sharing of segment dicts, the batch order, every rejection and the
event count.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from decode_corpus import assert_same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.schemas import codecs
from driftline.schemas.codecs import decode_inference
from driftline.schemas.limits import Limits
from driftline.schemas.models import DecodeResult

pytestmark = pytest.mark.skipif(not codecs.SCANNER, reason="the compiled scanner is not built")

LIMITS = Limits(max_string_length=12, max_model_id_length=8, max_segment_keys=2, max_features=4)


def _decode(values: list[Any], scan: bool, limits: Limits = LIMITS) -> DecodeResult:
    n = len(values)
    return decode_inference(values, limits=limits, scan=scan, partitions=[i % 3 for i in range(n)],
                            offsets=list(range(100, 100 + n)),
                            timestamps=[1000.0 + i if i % 4 else math.nan for i in range(n)])


def both(values: list[Any], limits: Limits = LIMITS) -> DecodeResult:
    scanned = _decode(values, True, limits)
    assert_same(scanned, _decode(values, False, limits))
    return scanned


def _event(name: str = "m1", i: int = 0, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"model": name, "model_version": "v1", "event_id": f"e{i}",
                          "ts": 1.7e9 + i, "features": {"a": 0.5 + i, "b": -2, "c": 1e-3},
                          "prediction": 0.25, "segment": {"region": "eu"}, "latency_ms": 3.5}
    ev.update(over)
    return {k: v for k, v in ev.items() if v is not _DROP}


_DROP = object()


def test_the_scanner_takes_the_common_shape() -> None:
    values = [orjson.dumps(_event(f"m{i % 3}", i)) for i in range(30)]
    zeros = np.zeros(30)
    codes, models, segments = codecs._scan.scan(tuple(values), zeros.astype(np.int64),
                                                   zeros.astype(np.int64), zeros,
                                                   1 << 20, 12, 8)
    assert np.frombuffer(codes, dtype=np.int32).tolist() == [i % 3 for i in range(30)]
    assert [t[0] for t in models] == ["m0", "m1", "m2"]
    assert segments == [b'{"region":"eu"}']
    res = both(values)
    assert res.events == 30 and not res.rejections
    b = res.batches["m1"]
    assert b.feature_names == ("a", "b", "c")
    assert b.numeric[:, 0].tolist() == [0.5 + i for i in range(1, 30, 3)]
    assert b.offset.tolist() == list(range(101, 130, 3))
    assert b.segment[0] == {"region": "eu"}


VARIANTS: list[dict[str, Any]] = [
    {}, {"ts": _DROP}, {"ts": None}, {"ts": 17}, {"ts": "2024-01-02T03:04:05Z"},
    {"prediction": _DROP}, {"prediction": None}, {"prediction": 1}, {"prediction": "cat"},
    {"prediction": True}, {"prediction": {"a": 0.2, "b": 0.8}},
    {"event_id": None}, {"event_id": ""}, {"event_id": "e" * 12}, {"event_id": "e" * 13},
    {"event_id": 7}, {"event_id": "é"}, {"event_id": 'a"b'}, {"event_id": "a\\b"},
    {"model_version": None}, {"model_version": _DROP}, {"model_version": "v" * 13},
    {"segment": None}, {"segment": {}}, {"segment": {"region": "us"}},
    {"segment": {"region": "x" * 13}}, {"segment": {"region": 1}}, {"segment": "eu"},
    {"segment": {"a": "1", "b": "2", "c": "3"}}, {"segment": {"région": "eu"}},
    {"latency_ms": None}, {"latency_ms": 0}, {"latency_ms": -0.0}, {"latency_ms": -0.5},
    {"latency_ms": "3"}, {"shadow_of": "live"}, {"shadow_of": ""}, {"shadow_of": "s" * 9},
    {"shadow_of": 3}, {"trace_id": "t"}, {"trace_id": None}, {"trace_id": 1},
    {"outcome": "ok"}, {"outcome": "error"}, {"outcome": "bad"}, {"outcome": None},
    {"extra": 1}, {"envelope": "x"}, {"model": ""}, {"model": "m" * 9}, {"model": 3},
    {"features": {}}, {"features": None}, {"features": [1.0]},
    {"features": {"a": True, "b": 1, "c": 0.0}}, {"features": {"a": None, "b": 1, "c": 0.0}},
    {"features": {"a": "x", "b": 1, "c": 0.0}}, {"features": {"b": 1, "a": 1.0, "c": 0.0}},
    {"features": {"a": 1.0, "b": 1}}, {"features": {"a": 1, "b": 2, "c": 3, "d": 4}},
    {"features": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}},
    {"features": {"a": 1, "b": 2, "": 3}}, {"features": {"a" * 200: 1}},
    {"features": {"a": 18446744073709551615, "b": -9223372036854775808, "c": 1e308}},
    {"features": {"a": 123456789012345678, "b": 1234567890123456789, "c": 2**53 + 1}},
]  # fmt: skip


@pytest.mark.parametrize("change", VARIANTS, ids=lambda c: str(c)[:50])
def test_every_variant_decodes_as_in_python(change: dict[str, Any]) -> None:
    """The variant between common-shape events of its model and of another one."""
    values = [orjson.dumps(_event("m1", 0)), orjson.dumps(_event("m2", 1)),
              orjson.dumps(_event("m1", 2, **change)), orjson.dumps(_event("m1", 3)),
              orjson.dumps(_event("m2", 4))]
    both(values)
    both(values[2:3])  # alone: the first event of its model


RAW: list[bytes] = [
    b'{"model":"m1","features":{"a":1,"a":2}}',  # a repeated key: the last value counts
    b'{"model":"m1","model":"m2","features":{"a":1}}',
    b'{"model":"m1","features":{"a":1},"features":{"a":2}}',
    b' \n{ "model" : "m1" , "features" : { "a" : 1 } }\t\r\n',
    b'{"model":"m1","features":{"a":01}}', b'{"model":"m1","features":{"a":1.}}',
    b'{"model":"m1","features":{"a":.5}}', b'{"model":"m1","features":{"a":1e}}',
    b'{"model":"m1","features":{"a":-}}', b'{"model":"m1","features":{"a":+1}}',
    b'{"model":"m1","features":{"a":1e400}}', b'{"model":"m1","features":{"a":-1e400}}',
    b'{"model":"m1","features":{"a":1e-400}}', b'{"model":"m1","features":{"a":NaN}}',
    b'{"model":"m1","features":{"a":Infinity}}', b'{"model":"m1","features":{"a":-0}}',
    b'{"model":"m1","features":{"a":-0.0}}', b'{"model":"m1","features":{"a":0e5}}',
    b'{"model":"m1","features":{"a":1E+2}}', b'{"model":"m1","features":{"a":1' + b"0" * 120 + b'}}',
    b'{"model":"m1","features":{"a":0.' + b"0" * 30 + b'1}}',
    b'{"model":"m1","features":{"a":1}} x', b'{"model":"m1","features":{"a":1},}',
    b'{"model":"m1","features":{"a":1,}}', b'{"model":"m1","features":{"a":1}', b"",
    b"null", b"[]", b"{}", b'"x"', b'{"model":"m1","features":{"a":1}}\x00',
    b'{"model":"m\\u0031","features":{"a":1}}', b'{"model":"m1","features":{"\\u0061":1}}',
    b'{"model":"m1","features":{"a":1},"segment":{"k":"v","k":"w"}}',
    b'{"model":"m1","features":{"a":1},"segment":{"k":"v",}}',
    b'{"model":"m1","features":{"a":1},"ts":1.5,"ts":2.5}',
    b'{"model":"m1","features":{"a":1},"latency_ms":-1e-320}',
    b'{"model":"m1","features":{"a":1},"prediction":12345678901234567890123}',
    b'{"model":"m1","features":{"a":1},"outcome":"ok\\u0000"}',
]


@pytest.mark.parametrize("raw", RAW, ids=lambda r: r.decode("utf-8", "replace")[:50])
def test_raw_texts_decode_as_in_python(raw: bytes) -> None:
    ok = b'{"model":"m1","features":{"a":3}}'
    both([ok, raw, ok])
    both([raw])


def test_values_that_are_not_bytes_and_odd_stamps() -> None:
    ok = orjson.dumps(_event())
    both([ok, None, bytearray(ok), memoryview(ok), ok.decode(), 5, ok])
    res = decode_inference([ok, ok], timestamps=[1, 2], scan=True)  # int stamps
    assert_same(res, decode_inference([ok, ok], timestamps=[1, 2], scan=False))


def test_a_model_with_rows_both_ways_keeps_its_message_order() -> None:
    values = [orjson.dumps(_event("m1", 0)), orjson.dumps(_event("m1", 1, features={"a": "x",
              "b": 1, "c": 2})), orjson.dumps(_event("m1", 2)), b"{bad",
              orjson.dumps(_event("m2", 3)), orjson.dumps(_event("m1", 4, ts="yesterday"))]
    res = both(values)
    assert res.batches["m1"].offset.tolist() == [100, 101, 102]
    assert [r.offset for r in res.rejections] == [103, 105]
    assert list(res.batches) == ["m1", "m2"]


def test_too_many_distinct_features_per_model_are_refused_as_in_python() -> None:
    """The batch-wide feature limit depends on every row of the model in the call."""
    values = [orjson.dumps(_event(features={"a": 1, "b": 2, "c": 3})),
              orjson.dumps(_event(features={"a": 1, "b": 2, "d": 3, "e": 4})),
              orjson.dumps(_event(features={"a": 1, "b": 2, "c": 3}))]
    res = both(values)
    assert len(res.rejections) == 1 and res.rejections[0].reason.startswith("too_many_features")


def test_many_models_and_segments_past_the_scanners_tables() -> None:
    lim = Limits(max_model_id_length=16)
    values = [orjson.dumps(_event(f"model-{i}", i, segment={"s": str(i % 1500)}))
              for i in range(5000)]
    res = both(values, lim)
    assert len(res.batches) == 5000 and res.events == 5000


# ----------------------------------------------------------------------------- generated

_NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**25), 10**25).map(str),
    st.builds(lambda i, f, e: f"{i}.{f}e{e}", st.integers(-999, 999),
              st.integers(0, 10**20), st.integers(-330, 330)),
    st.builds(lambda i, f: f"{i}.{f}", st.integers(-(10**17), 10**17), st.integers(0, 10**19)),
    st.sampled_from(["0", "-0", "-0.0", "0.0", "1e22", "1e23", "9007199254740993",
                     "9007199254740993.0", "2.2250738585072011e-308", "4.9e-324",
                     "1.7976931348623157e308", "1.7976931348623159e308", "0.1", "1e-22"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_NUMBER_TEXT, min_size=1, max_size=4))
def test_numbers_convert_as_in_python(texts: list[str]) -> None:
    body = ",".join(f'"f{j}":{t}' for j, t in enumerate(texts))
    raw = f'{{"model":"m1","ts":{texts[0]},"features":{{{body}}}}}'.encode()
    res = both([raw], Limits())
    if res.events:  # orjson took it: the row is its floats, bit for bit
        want = [struct.pack("<d", float(orjson.loads(t))) for t in texts]
        assert [struct.pack("<d", v) for v in res.batches["m1"].numeric[0]] == want


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=14)
_SHORT = st.sampled_from(["", "a", "b", "eu", "us", "v1", "ok", "error", "m1", "m2", "x" * 13])
_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(), _SHORT, _TEXT,
                   st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
                   st.dictionaries(_SHORT, _SHORT, max_size=3))
_FIELDS = ["model", "model_version", "event_id", "ts", "features", "prediction", "segment",
           "latency_ms", "shadow_of", "trace_id", "outcome"]


@st.composite
def _message(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=40))
    ev = _event(draw(st.sampled_from(["m1", "m2", "m3"])), draw(st.integers(0, 9)))
    if kind >= 4:  # the common shape, maybe with different keys or a new segment
        if draw(st.booleans()):
            ev["features"] = {k: draw(st.floats(allow_nan=False, allow_infinity=False))
                              for k in draw(st.sampled_from([("a", "b", "c"), ("a", "c", "b"),
                                                             ("a",), ("z", "y")]))}
        if draw(st.booleans()):
            ev["segment"] = draw(st.sampled_from([{"r": "eu"}, {"r": "us"}, {}, None,
                                                  {"r": "eu", "t": "x"}]))
        return orjson.dumps(ev)
    for _ in range(draw(st.integers(1, 3))):  # odd values of any field
        field = draw(st.sampled_from([*_FIELDS, "extra"]))
        if field == "features":
            ev[field] = draw(st.one_of(_VALUE, st.dictionaries(_SHORT, _VALUE, max_size=5)))
        elif draw(st.integers(0, 4)) == 0:
            ev.pop(field, None)
        else:
            ev[field] = draw(_VALUE)
    text = orjson.dumps(ev)
    if draw(st.booleans()):  # the same JSON with other spacing
        text = orjson.dumps(ev, option=orjson.OPT_INDENT_2)
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), min_size=1, max_size=25))
def test_generated_message_lists_decode_as_in_python(values: list[bytes]) -> None:
    both(values)



@pytest.mark.parametrize(("flag", "key", "fallback"), [
    ("SCANNER", "single_event_scanner", "python"), ("ID_INDEX_COMPILED", "label_join_index", "dict"),
    ("KERNELS", "window_kernels", "numpy")])
def test_driftline_config_tells_which_compiled_parts_run(
        flag: str, key: str, fallback: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from driftline.streams.cli import kafka_commands
    from driftline.streams.cli.main import app

    out = CliRunner().invoke(app, ["config"], catch_exceptions=False).output
    assert orjson.loads(out)[key] == "compiled"
    monkeypatch.setattr(kafka_commands, flag, False)
    out = CliRunner().invoke(app, ["config"], catch_exceptions=False).output
    assert orjson.loads(out)[key].startswith(fallback)


def test_every_prefix_and_byte_change_of_an_event_decodes_as_in_python() -> None:
    """Cut texts and single-byte changes: the scanner must stop at every end it meets."""
    ok = orjson.dumps(_event("m1", 1, ts=1795741275.0452871, shadow_of="live",
                             trace_id="t1", outcome="ok", features={"a": -0.5, "b": 1e-7,
                                                                    "c": 12345678901234567}))
    texts = [ok[:i] for i in range(len(ok))]
    texts += [ok[:i] + bytes([c]) + ok[i + 1:] for i in range(len(ok))
              for c in (0, 0x22, 0x2C, 0x2D, 0x30, 0x5C, 0x7D, 0xC3)]
    for start in range(0, len(texts), 50):
        both([ok, *texts[start:start + 50], ok])


def _scan_codes(values: list[bytes]) -> list[int]:
    zeros = np.zeros(len(values))
    codes, _, _ = codecs._scan.scan(tuple(values), zeros.astype(np.int64), zeros.astype(np.int64),
                                    zeros, 1 << 20, 1024, 256)
    return np.frombuffer(codes, dtype=np.int32).tolist()  # type: ignore[no-any-return]


def test_a_model_the_scanner_refuses_once_goes_to_python_whole() -> None:
    """Its messages before and after the refused one are left too (none is lost)."""
    other = orjson.dumps(_event("m2", 9))
    values = [orjson.dumps(_event("m1", 0)), other,
              orjson.dumps(_event("m1", 1, features={"b": 1.0, "a": 2.0, "c": 3.0})),
              orjson.dumps(_event("m1", 2)), b'{"model":"m3","features":{"a":1,"a":2}}',
              b'{"model":"m3","features":{"a":1}}']
    assert _scan_codes(values) == [-1, 1, -1, -1, -1, -1]
    res = both(values, Limits())
    assert res.batches["m1"].event_id.tolist() == ["e0", "e1", "e2"]
    assert res.batches["m3"].numeric.tolist() == [[2.0], [1.0]]


def test_each_batch_has_its_own_segment_dicts() -> None:
    values = [orjson.dumps(_event(m, i, segment={"r": "eu"})) for i, m in enumerate("abab")]
    values.append(b'{"model":"a","features":{"a":1,"b":2,"c":3},"segment":{ "r" : "eu" }}')
    res = both(values, Limits())
    a, b = res.batches["a"].segment, res.batches["b"].segment
    assert a[0] is a[1] is a[2] and b[0] is b[1] and a[0] is not b[0] and a[0] == b[0]


def test_models_decoded_again_are_decoded_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many models with messages both ways and many rejections: two passes of the Python
    loop in all (the messages left, then every model decoded again), not one per model."""
    calls: list[int] = []
    loop = codecs._decode_loop

    def counting(messages: Any, *args: Any) -> int:
        calls.append(1)
        return loop(messages, *args)

    monkeypatch.setattr(codecs, "_decode_loop", counting)
    values = []
    for i in range(300):
        values += [orjson.dumps(_event(f"m{i}", i)),
                   orjson.dumps(_event(f"m{i}", i, features={"a": "x", "b": 1, "c": 2})), b"{bad"]
    res = _decode(values, True, Limits())
    assert len(calls) == 2 and len(res.batches) == 300 and len(res.rejections) == 300


def test_per_message_values_that_run_code_cannot_pull_texts_away() -> None:
    """A timestamp whose conversion empties the message list: converted before the scan,
    which reads its own tuple of the messages (no crash, every message decoded)."""
    values = [orjson.dumps(_event("m1", i, ts=_DROP)) for i in range(4)]

    class Stamp:
        def __float__(self) -> float:
            values.clear()
            return 5.0

    res = decode_inference(values, timestamps=[Stamp(), 1.0, 2.0, 3.0], scan=True)
    assert res.events == 4 and res.batches["m1"].ts.tolist() == [5.0, 1.0, 2.0, 3.0]
