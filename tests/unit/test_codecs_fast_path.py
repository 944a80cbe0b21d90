"""The common-shape fast paths decide exactly like the full per-field checks.

Each variant of a valid event is decoded right after the base event (so it meets an open
run with the same feature keys and an already validated segment: the fast path's case),
as a single message and inside a rows envelope (the column-wise rows_block's case), and the
result is compared with the same input decoded with both fast paths switched off (every
event through the full checks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from driftline.schemas import codecs
from driftline.schemas.codecs import decode_inference, encode_envelope_rows
from driftline.schemas.limits import Limits
from driftline.schemas.models import DecodeResult

BASE: dict[str, Any] = {
    "model": "m", "model_version": "v1", "event_id": "e0", "ts": 1.7e9,
    "features": {"a": 1.5, "b": -2, "c": 0.25}, "prediction": 0.5,
    "segment": {"region": "eu"}, "latency_ms": 3.0,
}  # fmt: skip

_CHANGES: list[dict[str, Any]] = [
    {},
    {"features": {"a": True, "b": 1, "c": 0.0}},
    {"features": {"a": False, "b": 0, "c": 1.0}},
    {"features": {"a": None, "b": 1, "c": 2.0}},
    {"features": {"a": "x", "b": 1, "c": 2.0}},
    {"features": {"a": "x" * 9, "b": 1, "c": 2.0}},
    {"features": {"a": [1], "b": 1, "c": 2.0}},
    {"features": {"a": {"x": 1}, "b": 1, "c": 2.0}},
    {"features": {"b": 1, "a": 1.0, "c": 2.0}},
    {"features": {"a": 1.0, "b": 1}},
    {"features": {"a": 1.0, "b": 1, "c": 2.0, "d": 3.0}},
    {"features": {"a": 1.0, "b": 1, "": 2.0}},
    {"features": {}},
    {"features": [1.0, 2.0, 3.0]},
    {"features": None},
    {"features": 18446744073709551615},
    {"features": {"a": 18446744073709551615, "b": -9223372036854775808, "c": 1e308}},
    {"ts": None}, {"ts": 17}, {"ts": "2024-01-02T03:04:05Z"}, {"ts": "yesterday"},
    {"ts": True}, {"ts": [1.0]},
    {"prediction": None}, {"prediction": 1}, {"prediction": "cat"}, {"prediction": "c" * 9},
    {"prediction": True}, {"prediction": {"a": 0.2, "b": 0.8}}, {"prediction": {}},
    {"prediction": [0.5]},
    {"event_id": None}, {"event_id": ""}, {"event_id": "e" * 8}, {"event_id": "e" * 9},
    {"event_id": 7}, {"event_id": True},
    {"model_version": None}, {"model_version": "v" * 9}, {"model_version": 2},
    {"segment": None}, {"segment": {}}, {"segment": {"region": "us"}},
    {"segment": {"region": "x" * 9}}, {"segment": {"region": 1}}, {"segment": ["eu"]},
    {"segment": "eu"}, {"segment": {"region": "eu", "tier": "gold"}},
    {"segment": {"region": "eu", "a": "1", "b": "2"}},
    {"latency_ms": None}, {"latency_ms": 0}, {"latency_ms": -0.5}, {"latency_ms": "3"},
    {"latency_ms": True}, {"latency_ms": 1e308},
    {"shadow_of": "live"}, {"shadow_of": ""}, {"shadow_of": "s" * 9}, {"shadow_of": 3},
    {"trace_id": "t"}, {"trace_id": "t" * 9}, {"trace_id": 1},
    {"outcome": "ok"}, {"outcome": "error"}, {"outcome": "bad"}, {"outcome": 1},
    {"outcome": ["ok"]}, {"extra": {"anything": [1, None]}},
]  # fmt: skip

#: Small limits, so that the length checks are exercised with short strings.
LIMITS = Limits(max_string_length=8, max_model_id_length=8, max_segment_keys=2, max_features=3)


def _variant(change: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **change, "event_id": change.get("event_id", "e1")}


def _exact(values: list[bytes], monkeypatch: pytest.MonkeyPatch) -> DecodeResult:
    with monkeypatch.context() as m:
        m.setattr(codecs, "_fast_event", lambda *args: False)
        m.setattr(codecs, "rows_block", lambda *args: None)
        m.setattr(codecs, "_scan", None)  # every event through the full checks
        return _decode(values)


def _decode(values: list[bytes]) -> DecodeResult:
    return decode_inference(
        values,
        limits=LIMITS,
        offsets=list(range(len(values))),
        partitions=[0] * len(values),
        timestamps=[5.0] * len(values),
    )


def _same(a: DecodeResult, b: DecodeResult) -> None:
    assert a.events == b.events
    assert a.rejections == b.rejections
    assert a.batches.keys() == b.batches.keys()
    for m, x in a.batches.items():
        y = b.batches[m]
        for name in x.__slots__:  # type: ignore[attr-defined]
            u, v = getattr(x, name), getattr(y, name)
            if isinstance(u, np.ndarray):
                assert isinstance(v, np.ndarray) and u.dtype == v.dtype, name
                assert u.tolist() == v.tolist() or np.array_equal(u, v, equal_nan=True), name
            else:
                assert u == v, name


@pytest.mark.parametrize("change", _CHANGES, ids=lambda c: orjson.dumps(c).decode()[:60])
def test_fast_path_agrees_with_full_checks_on_single_events(
    change: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    values = [orjson.dumps(BASE), orjson.dumps(_variant(change)), orjson.dumps(BASE)]
    fast = _decode(values)
    _same(fast, _exact(values, monkeypatch))
    assert len(fast.rejections) <= 1


@pytest.mark.parametrize("change", _CHANGES, ids=lambda c: orjson.dumps(c).decode()[:60])
def test_fast_path_agrees_with_full_checks_in_rows_envelopes(
    change: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{k: v for k, v in ev.items() if k != "model"} for ev in (BASE, _variant(change), BASE)]
    values = [encode_envelope_rows("m", rows, model_version="env"), orjson.dumps(BASE)]
    _same(_decode(values), _exact(values, monkeypatch))


def test_the_fast_path_takes_the_common_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the benchmark's premise: repeated common-shape events do not fall back
    (in the Python decoder; tests/unit/test_scan.py covers the compiled scanner)."""
    monkeypatch.setattr(codecs, "_scan", None)
    calls: list[bool] = []
    fast = codecs._fast_event

    def counting(*args: Any) -> bool:
        calls.append(fast(*args))
        return calls[-1]

    monkeypatch.setattr(codecs, "_fast_event", counting)
    evs = [{**BASE, "event_id": f"e{i}", "features": {"a": i, "b": 0.5 * i, "c": -1.0}} for i in range(50)]
    out = _decode([orjson.dumps(ev) for ev in evs])
    assert not out.rejections and len(out.batches["m"]) == 50
    assert calls.count(False) == 1 and calls.count(True) == 49  # only the first opens the run
    assert out.batches["m"].numeric[:, 0].tolist() == [float(i) for i in range(50)]


def test_rows_envelopes_of_the_common_shape_take_the_block_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks: list[bool] = []
    block = codecs.rows_block

    def counting(*args: Any) -> Any:
        out = block(*args)
        blocks.append(out is not None)
        return out

    monkeypatch.setattr(codecs, "rows_block", counting)
    rows = [{k: v for k, v in BASE.items() if k != "model"} | {"event_id": f"e{i}"} for i in range(40)]
    rows[3] = {**rows[3], "ts": None, "prediction": None, "segment": {"region": "us"}}
    values = [encode_envelope_rows("m", rows[:20]), encode_envelope_rows("m", rows[20:], "v2")]
    out = _decode(values)
    assert blocks == [True, True] and not out.rejections
    b = out.batches["m"]
    assert b.event_id.tolist() == [f"e{i}" for i in range(40)]
    assert b.ts[3] == 5.0 and math.isnan(b.prediction_score[3]) and b.segment[3] == {"region": "us"}
    assert b.model_version.tolist() == ["v1"] * 40  # the events' own version wins
    assert b.offset.tolist() == [0] * 20 + [1] * 20


@pytest.mark.parametrize(
    "second",
    [{"model": "m", "features": {"a": 1.0, "b": 1, "c": 2.0}}, 7, None, [1.0], "event"],
    ids=["model-key", "number", "null", "array", "string"],
)
def test_rows_envelope_with_a_foreign_event_agrees_with_full_checks(
    second: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {k: v for k, v in BASE.items() if k != "model"}
    raw = orjson.dumps({"envelope": "driftline.batch/v1", "model": "m", "events": [base, second, base]})
    fast = _decode([raw])
    _same(fast, _exact([raw], monkeypatch))
    assert [r.reason[:17] for r in fast.rejections] == ["schema: events[1]"] and not fast.batches
