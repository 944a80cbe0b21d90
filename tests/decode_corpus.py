"""Mixed inference messages (every event form, bad ones among them) and how to compare
two decode results exactly: for the decode-process and frame tests."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson

from driftline.schemas.codecs import decode_inference, encode_envelope_columns, encode_envelope_rows
from driftline.schemas.models import DecodeResult


def _event(rng: random.Random, model: str, i: int) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "model": model, "event_id": f"{model}-{i}", "ts": 1.7e9 + i,
        "features": {"a": rng.gauss(0, 1), "b": rng.randint(-5, 5), "c": rng.random()},
        "prediction": rng.random(), "segment": {"region": rng.choice(["eu", "us", "apac"])},
        "latency_ms": rng.random() * 10,
    }  # fmt: skip
    kind = i % 11
    if kind == 1:
        ev["features"]["c"] = rng.choice(["red", "green", True, False, None])
    elif kind == 2:
        ev["prediction"] = rng.choice(["cat", "dog"])
    elif kind == 3:
        ev["prediction"] = {"cat": 0.2, "dog": 0.8}
    elif kind == 4:
        ev.update(shadow_of="live", trace_id=f"t{i}", outcome=rng.choice(["ok", "error"]))
    elif kind == 5:
        del ev["ts"], ev["segment"], ev["latency_ms"], ev["event_id"]
    elif kind == 6:
        ev["segment"] = {"region": "eu", "tier": rng.choice(["gold", "free"])}
    elif kind == 7:
        ev["model_version"] = "v2"
    elif kind == 8:
        ev["features"] = {"b": 1, "a": 2.0, "d": "x"}  # another key order and set
    return ev


def messages(seed: int) -> list[bytes]:
    """300 messages of 3 models: single events of many shapes, rows and columns
    envelopes (JSON and packed), invalid JSON, a non-object, an invalid feature."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(300):
        model = f"m{i % 3}"
        ev = _event(rng, model, i)
        if i % 50 == 17:
            out.append(b'{"model": "m0", "features": ')  # invalid JSON
        elif i % 50 == 23:
            out.append(orjson.dumps({**ev, "features": {"a": {"nested": 1}}}))
        elif i % 50 == 31:
            out.append(b"[1, 2]")
        elif i % 60 == 40:
            rows = [{k: v for k, v in _event(rng, model, i * 100 + j).items() if k != "model"}
                    for j in range(20)]
            out.append(encode_envelope_rows(model, rows, model_version="env"))
        elif i % 60 == 50:
            n = 25
            cols = {"features": {"a": np.arange(n) * 0.5, "b": [float("nan")] * n},
                    "ts": np.arange(n) + 1.7e9, "prediction": np.linspace(0, 1, n),
                    "segment": [{"region": "eu"}, {"region": "us"}] * 12 + [None],
                    "event_id": [f"c{i}-{j}" for j in range(n)]}
            out.append(encode_envelope_columns(model, cols, n, packed=i % 120 == 50))
        else:
            out.append(orjson.dumps(ev))
    return out


def decoded(values: list[bytes]) -> DecodeResult:
    """``values`` decoded in this process (partitions, offsets, times made up)."""
    n = len(values)
    return decode_inference(values, topic="t", partitions=[i % 4 for i in range(n)],
                            offsets=list(range(100, 100 + n)),
                            timestamps=[1.6e9 + i for i in range(n)])


def assert_same(a: DecodeResult, b: DecodeResult) -> None:
    """Equal field by field (floats to the bit), with the same sharing of segment dicts."""
    assert a.events == b.events
    assert a.rejections == b.rejections
    assert list(a.batches) == list(b.batches)
    for m, x in a.batches.items():
        y = b.batches[m]
        for name in x.__slots__:  # type: ignore[attr-defined]
            u, v = getattr(x, name), getattr(y, name)
            if isinstance(u, np.ndarray):
                assert isinstance(v, np.ndarray) and u.dtype == v.dtype and u.shape == v.shape
                assert u.tolist() == v.tolist() or np.array_equal(u, v, equal_nan=True), name
                if u.dtype != object:
                    assert u.tobytes() == v.tobytes(), name  # NaN payloads, -0.0 included
            else:
                assert u == v, name
        # rows with the same segment share one dict, as decoding gives them
        ids_x = [id(s) for s in x.segment.tolist()]
        ids_y = [id(s) for s in y.segment.tolist()]
        assert [ids_x.index(k) for k in ids_x] == [ids_y.index(k) for k in ids_y]
