"""Alerts, dead letters, change events and reference profiles against their schema files."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from driftline.detectors.reference import build_profile
from driftline.schemas.codecs import (
    alert_from_dict,
    alert_to_dict,
    dead_letter_payload,
    decode_alert,
    decode_change,
    decode_dead_letter,
    decode_inference,
    encode_alert,
    encode_change,
    encode_dead_letter,
)
from driftline.schemas.limits import DEAD_LETTER_PAYLOAD_MAX
from driftline.schemas.models import DriftAlert, FeatureScore, Rejection, WindowInfo
from driftline.schemas.validation import SCHEMA_NAMES, first_error, load_schema, validator


def make_alert(**kw: Any) -> DriftAlert:
    base: dict[str, Any] = dict(
        alert_id="0123456789abcdef0123",
        model="fraud",
        kind="data",
        state="firing",
        detector="window",
        statistic="psi",
        score=0.31,
        threshold=0.2,
        window=WindowInfo(
            start_ts=1.7e9, end_ts=1.7e9 + 60, n=5000, first_offset=10, last_offset=5009, pane=3
        ),
        model_version="v3",
        feature="amount",
        p_value=1e-6,
        reference="ref-1",
        segment={"region": "eu"},
        severity="critical",
        top_features=(
            FeatureScore("amount", "psi", 0.31, 0.2, 1e-6),
            FeatureScore("age", "ks", 0.1, 0.2, None),
        ),
        created_at=1.7e9 + 61,
        changes=({"model": "fraud", "kind": "deploy", "ts": 1.7e9, "text": "v3 rollout"},),
        exemplars=("e-1", "e-2"),
    )
    base.update(kw)
    return DriftAlert(**base)


def test_every_schema_file_loads_and_is_valid_2020_12() -> None:
    for name in SCHEMA_NAMES:
        schema = load_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert validator(name) is validator(name)
    assert load_schema("drift_alert") == load_schema("drift_alert.v1.schema.json")
    with pytest.raises(KeyError):
        load_schema("nope")


def test_alert_round_trip_through_the_schema() -> None:
    for alert in (
        make_alert(),
        make_alert(
            feature=None,
            p_value=None,
            segment=None,
            top_features=(),
            changes=(),
            exemplars=(),
            window=WindowInfo(None, None, 0),
        ),
    ):
        d = alert_to_dict(alert)
        assert first_error("drift_alert.v1", d) is None
        assert alert_from_dict(d) == alert
        raw = encode_alert(alert)
        assert first_error("drift_alert.v1", orjson.loads(raw)) is None
        assert decode_alert(raw) == alert


def test_alert_non_finite_numbers_become_null() -> None:
    alert = make_alert(
        score=float("inf"),
        threshold=float("nan"),
        p_value=float("nan"),
        window=WindowInfo(float("nan"), 5.0, 1),
    )
    d = alert_to_dict(alert)
    assert (d["score"], d["threshold"], d["p_value"], d["window"]["start_ts"]) == (None,) * 4
    back = decode_alert(encode_alert(alert))
    assert math.isnan(back.score) and math.isnan(back.threshold)
    assert back.p_value is None and back.window.start_ts is None


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [
        (b"{", "invalid_json: "),
        (b"[]", "not_object: "),
        (b'{"model": "m"}', "schema: "),
        (orjson.dumps({**alert_to_dict(make_alert()), "kind": "vibes"}), "schema: kind: "),
        (orjson.dumps({**alert_to_dict(make_alert()), "window": {"n": -1}}), "schema: window/n: "),
    ],
)
def test_bad_alerts_raise_value_error_with_a_reason(raw: bytes, prefix: str) -> None:
    with pytest.raises(ValueError) as exc:
        decode_alert(raw)
    assert str(exc.value).startswith(prefix), exc.value


def test_dead_letter_keeps_text_payload() -> None:
    rej = Rejection("schema: 'features' is required", b'{"model":"m"}', "driftline.inference", 3, 42, "m")
    raw = encode_dead_letter(rej, now=1.7e9)
    d = decode_dead_letter(raw)
    assert d == {
        "reason": rej.reason,
        "reason_code": "schema",
        "topic": "driftline.inference",
        "partition": 3,
        "offset": 42,
        "model": "m",
        "ts": 1.7e9,
        "payload": '{"model":"m"}',
        "payload_b64": None,
        "payload_bytes": 13,
    }
    assert dead_letter_payload(d) == rej.payload


def test_dead_letter_truncates_and_base64s_binary_payloads() -> None:
    big = ("é" * DEAD_LETTER_PAYLOAD_MAX).encode()  # 2 bytes per char
    d = decode_dead_letter(encode_dead_letter(Rejection("payload_too_large: x", big), 0.0))
    assert d["payload_bytes"] == len(big) and d["model"] is None
    assert d["payload"] == "é" * (DEAD_LETTER_PAYLOAD_MAX // 2)
    odd = b"x" + big  # the cut falls inside a character: the partial character is dropped
    d = decode_dead_letter(encode_dead_letter(Rejection("payload_too_large: x", odd), 0.0))
    assert d["payload"] == "x" + "é" * (DEAD_LETTER_PAYLOAD_MAX // 2 - 1)
    binary = bytes(range(256)) * 1000
    d = decode_dead_letter(encode_dead_letter(Rejection("invalid_json: bad", binary), 0.0))
    assert d["payload"] is None and d["payload_bytes"] == len(binary)
    assert dead_letter_payload(d) == binary[:DEAD_LETTER_PAYLOAD_MAX]
    empty = decode_dead_letter(encode_dead_letter(Rejection("invalid_json: empty", b""), 0.0))
    assert empty["payload"] == "" and dead_letter_payload(empty) == b""


def test_dead_letter_needs_a_coded_reason() -> None:
    with pytest.raises(ValueError):
        encode_dead_letter(Rejection("something broke", b""), 0.0)
    with pytest.raises(ValueError):
        encode_dead_letter(Rejection("made_up: x", b""), 0.0)
    with pytest.raises(ValueError, match="schema"):
        decode_dead_letter(b'{"reason": "schema: x"}')


def test_decoded_rejections_all_make_valid_dead_letters() -> None:
    values = [
        b"",
        b"[]",
        b"{}",
        b'{"model":"m","features":{"x":[1]}}',
        b"\xff" * 10,
        b'{"envelope":"v9","model":"m"}',
        b'{"model":"m","features":{},"segment":' + orjson.dumps({str(i): "" for i in range(20)}) + b"}",
    ]
    res = decode_inference(values, topic="t", partitions=[0] * 7, offsets=range(7))
    assert len(res.rejections) == 7
    for rej in res.rejections:
        decode_dead_letter(encode_dead_letter(rej, 1.0))


def test_change_events() -> None:
    change = {"model": "fraud", "kind": "deploy", "ts": 1.7e9, "text": "v3", "source": "ci"}
    assert decode_change(encode_change(change)) == change
    assert decode_change(encode_change({**change, "source": None}))["source"] is None
    for bad in (
        {**change, "kind": "party"},
        {**change, "ts": "now"},
        {"model": "m"},
        {**change, "model": ""},
    ):
        with pytest.raises(ValueError, match=r"^schema: "):
            encode_change(bad)
    with pytest.raises(ValueError, match=r"^invalid_json: "):
        decode_change(b"{")
    with pytest.raises(ValueError, match=r"^schema: "):
        decode_change(b'{"model": "m", "kind": "deploy", "ts": 1}')


def test_reference_profiles_validate_against_their_schema() -> None:
    rng = np.random.default_rng(0)
    cols = {
        "x": rng.normal(size=500),
        "y": rng.integers(0, 5, size=500),
        "c": rng.choice(["a", "b", "c"], size=500),
        "empty": np.full(500, np.nan),
    }
    for prediction in (None, rng.random(500), rng.choice(["yes", "no"], size=500)):
        prof = build_profile("m", cols, prediction=prediction, created_at=1.0)
        d = orjson.loads(prof.to_json())
        assert first_error("reference_profile.v1", d) is None
    d["numeric"][0]["counts"] = [-1]
    assert first_error("reference_profile.v1", d) is not None
    assert first_error("reference_profile.v1", {**d, "schema": "other"}) is not None


def test_validator_numbers_are_finite_and_dates_are_checked() -> None:
    v = validator("inference_event.v1")
    base = {"model": "m", "features": {}}
    assert v.is_valid({**base, "features": {"x": 1e308}})
    for bad in (float("nan"), float("inf"), 10**400):
        assert not v.is_valid({**base, "features": {"x": bad}})
    assert v.is_valid({**base, "ts": "2024-02-29T12:00:00Z"})
    assert not v.is_valid({**base, "ts": "2023-02-29T12:00:00Z"})
    assert v.is_valid({**base, "ts": "0001-01-01T00:00:00+01:00"})
    assert not v.is_valid({**base, "ts": "2024-01-01T00:00:00+24:00"})


DEEP = b"[" * 1020 + b"]" * 1020  # orjson reads up to 1024 levels, writes up to 254


def test_deeply_nested_values_are_schema_rejections() -> None:
    alert = alert_to_dict(make_alert())
    change = b'{"model": "m", "kind": "deploy", "text": "x", "ts": %s}'
    for decode, raw in (
        (decode_alert, orjson.dumps({**alert, "kind": 0})[:-1] + b', "kind": ' + DEEP + b"}"),
        (decode_dead_letter, b'{"reason_code": ' + DEEP + b"}"),
        (decode_change, change % DEEP),
    ):
        with pytest.raises(ValueError, match=r"^schema: "):
            decode(raw)
    nested = b'{"a":' * 300 + b"1" + b"}" * 300
    with pytest.raises(ValueError, match=r"^schema: <root>: "):
        decode_change(b'{"model": "m", "kind": "deploy", "text": "x", "ts": 1, "extra": ' + nested + b"}")
    d = {**alert, "changes": [orjson.loads(nested)]}
    with pytest.raises(ValueError, match=r"^schema: changes: "):
        alert_from_dict(d)
    (rej,) = decode_inference([b'{"envelope": ' + DEEP + b', "model": "m"}']).rejections
    assert rej.reason == "unknown_envelope: envelope <array> is not driftline.batch/v1"


def test_alert_integers_are_int64() -> None:
    d = alert_to_dict(make_alert())
    d["window"]["last_offset"] = 2**64
    with pytest.raises(ValueError, match=r"^schema: window/last_offset: "):
        alert_from_dict(d)
    raw = orjson.dumps(alert_to_dict(make_alert())).replace(
        b'"last_offset":5009', b'"last_offset":18446744073709551616'
    )
    with pytest.raises(ValueError, match=r"^schema: "):
        decode_alert(raw)


def test_event_batch_take_selects_the_same_rows_of_every_column() -> None:
    events = [orjson.dumps({"model": "m", "features": {"x": float(i), "c": f"v{i}"},
                            "prediction": "yes" if i % 2 else "no", "event_id": f"e{i}",
                            "segment": {"r": str(i % 3)}, "shadow_of": "live",
                            "trace_id": f"t{i}", "outcome": "ok", "ts": 1.7e9 + i})
              for i in range(6)]
    batch = decode_inference(events, partitions=[0] * 6, offsets=list(range(6))).batches["m"]
    rows = np.array([4, 1, 1], dtype=np.int64)
    sub = batch.take(rows)
    assert len(sub) == 3 and sub.feature_names == batch.feature_names
    for name in ("numeric", "text", "ts", "prediction_score", "prediction_label", "event_id",
                 "model_version", "segment", "latency_ms", "partition", "offset", "shadow_of",
                 "trace_id", "outcome"):
        whole, part = getattr(batch, name), getattr(sub, name)
        assert part is not None and whole is not None, name
        assert np.array_equal(part, whole[rows], equal_nan=part.dtype.kind == "f"), name
    assert list(sub.event_id) == ["e4", "e1", "e1"]
