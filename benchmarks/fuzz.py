"""``driftline bench fuzz``: hostile and near-valid inputs for every decoder and loader.

The generators here are plain functions of a :class:`random.Random`, so the same code
drives the hypothesis tests (tests/unit/test_fuzz_decoders.py, which draws the seeds and
adds its own strategies) and this benchmark (N inputs at full speed, no hypothesis).

Each target pairs a generator with a *check*: the decoder is called, its documented
outcome is asserted, and the reason codes of its rejections are returned. A check raises
:class:`PropertyViolation` when a documented property fails (a rejection without a
``code: detail`` reason, a message neither applied nor dead-lettered, a decoded object
that does not round-trip...); any other exception escaping a check is an *uncaught*
exception of the code under test. The benchmark reports inputs/s, rejections by code,
and both counts (which must be 0).

Documented outcomes per target:

========================  ==================================================================
decode_inference          never raises; every message is in a batch or one Rejection
                          (``"code: detail"``, code in ``REASON_CODES``), and every
                          Rejection encodes to a schema-valid dead letter
decode_labels             the same, for LabelEvents
decode_alert / _change /  the object, or ValueError(``"code: detail"``); a decoded alert
decode_dead_letter        re-encodes and decodes to itself
reference                 ``ReferenceProfile.from_json``: a profile, or ProfileError; an
                          accepted profile builds a ModelMonitor that takes a batch
snapshot                  ``serialization.unpack`` / ``ModelMonitor.restore`` /
                          ``ModelState.restore``: the state, or SnapshotError; a rejected
                          restore changes nothing; a tampered signed blob is never loaded
settings                  Settings from ``DRIFTLINE_*`` env strings: an object, or
                          pydantic ValidationError; an accepted object yields its Kafka,
                          limits and monitor configurations
========================  ==================================================================
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# ----------------------------------------------------------------------------- properties


class PropertyViolation(AssertionError):
    """A documented property of the code under test does not hold for an input."""


def reason_code(reason: object, where: str) -> str:
    """The code of a ``"code: detail"`` reason; PropertyViolation when it is not one."""
    from driftline.schemas.limits import REASON_CODES

    if not isinstance(reason, str):
        raise PropertyViolation(f"{where}: reason is {type(reason).__name__}, not str")
    code, sep, detail = reason.partition(": ")
    if not sep or code not in REASON_CODES:
        raise PropertyViolation(f"{where}: reason {reason[:120]!r} has no known code")
    if not detail.strip():
        raise PropertyViolation(f"{where}: reason {reason[:120]!r} has an empty detail")
    return code


# ----------------------------------------------------------------------------- JSON text


class Raw:
    """A literal JSON token spliced into the output (NaN, 1e999, 10k brackets...)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r})"


class Pairs:
    """A JSON object written from key/value pairs: duplicate keys are possible."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, Any]]) -> None:
        self.items = items

    def __repr__(self) -> str:
        return f"Pairs({self.items!r})"[:200]


def _emit(v: Any, out: list[bytes], ascii_only: bool) -> None:
    if v is None:
        out.append(b"null")
    elif v is True:
        out.append(b"true")
    elif v is False:
        out.append(b"false")
    elif isinstance(v, int):
        out.append(str(v).encode())
    elif isinstance(v, float):
        if math.isnan(v):
            out.append(b"NaN")
        elif math.isinf(v):
            out.append(b"Infinity" if v > 0 else b"-Infinity")
        else:
            out.append(repr(v).encode())
    elif isinstance(v, str):
        if not ascii_only:
            try:
                out.append(orjson.dumps(v))
                return
            except TypeError:  # lone surrogates: written raw, i.e. invalid UTF-8
                pass
        out.append(json.dumps(v, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))
    elif isinstance(v, Raw):
        out.append(v.text)
    elif isinstance(v, list | tuple):
        out.append(b"[")
        for i, x in enumerate(v):
            if i:
                out.append(b",")
            _emit(x, out, ascii_only)
        out.append(b"]")
    elif isinstance(v, dict | Pairs):
        items = v.items if isinstance(v, Pairs) else list(v.items())
        out.append(b"{")
        for i, (k, x) in enumerate(items):
            if i:
                out.append(b",")
            _emit(str(k), out, ascii_only)
            out.append(b":")
            _emit(x, out, ascii_only)
        out.append(b"}")
    else:
        out.append(json.dumps(str(v)).encode())


def dumps(v: Any, ascii_only: bool = False) -> bytes:
    """JSON text of ``v``: orjson when it can, else a writer that keeps NaN, huge
    integers, lone surrogates (as invalid UTF-8 unless ``ascii_only``), duplicate keys."""
    if not ascii_only:
        try:
            return orjson.dumps(v)
        except (TypeError, orjson.JSONEncodeError):
            pass
    out: list[bytes] = []
    _emit(v, out, ascii_only)
    return b"".join(out)


# ----------------------------------------------------------------------------- atoms

#: Strings that break things: markup, PromQL/label syntax, control and bidi characters,
#: boundary lengths, lookalikes of numbers and keywords.
HOSTILE_STRINGS: tuple[str, ...] = (
    "", " ", "a", "model-1", "f1", '"}\n{a=', '{__name__="x"}', 'x"} 1\ndriftline_fake 1',
    "<script>alert(1)</script>", "</script><img src=x onerror=alert(1)>", "&amp;&lt;",
    "[/]", "[bold red]x[/bold red]", "[link=http://evil]x[/link]", "\x1b[31mred\x1b[0m",
    "\x1b]8;;http://evil\x07x", "\x00", "\r\n", "\t", "\\", '"', "'", "\u202e", "\ufeff",
    "\u2028", "é", "e\u0301", "💥", "\U0010ffff", "${jndi:ldap://x/a}", "%s%n%x",
    "../../etc/passwd", "NaN", "Infinity", "-0", "1e999", "true", "null", "~partition-0",
    "driftline.batch/v1", "a" * 128, "a" * 129, "a" * 256, "a" * 257, "a" * 1024, "a" * 1025,
)
_ALPHABET = "abcxyz019_-.:/ é💥\"\\\n{}[]=<>&"
NUMBERS: tuple[Any, ...] = (
    0, 1, -1, 0.5, -0.0, 1e-300, 5e-324, 1e308, -1e308, 1.7976931348623157e308,
    2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 1_700_000_000, 1_700_000_000.25,
)
#: Tokens orjson must reject or that stress number handling.
SPECIAL_TOKENS: tuple[bytes, ...] = (
    b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1e-999",
    b"123456789012345678901234567890", b"18446744073709551616", b"-9223372036854775809",
    b"00", b"01", b".5", b"+1", b"0x10", b"1.", b"-", b"1e", b"true1", b"nul", b"undefined",
    b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u0000"', b'"\xff"', b'"\xed\xa0\x80"', b"'x'",
)
_INVALID_UTF8: tuple[bytes, ...] = (b"\xff", b"\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                   b"\xe2\x82", b"\xc0\xaf", b"\x80")


def rand_string(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return rng.choice(HOSTILE_STRINGS)
    if r < 0.85:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 12)))
    if r < 0.95:
        return "s" * rng.choice((127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4097))
    # any code point, lone surrogates included
    return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 6)))


def rand_number(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.5:
        return rng.gauss(0.0, 10.0)
    if r < 0.8:
        return rng.choice(NUMBERS)
    if r < 0.97:
        return rng.randrange(-1000, 1000)
    return Raw(rng.choice(SPECIAL_TOKENS[:10]))


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value (with hostile strings, boundary numbers, special tokens)."""
    r = rng.random()
    if depth > 3 or r < 0.55:
        s = rng.random()
        if s < 0.3:
            return rand_string(rng)
        if s < 0.7:
            return rand_number(rng)
        return rng.choice((None, True, False))
    if r < 0.75:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rand_string(rng): json_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def deep_nesting(rng: random.Random) -> Raw:
    k = rng.choice((10, 100, 1023, 1024, 1025, 10_000))
    if rng.random() < 0.5:
        return Raw(b"[" * k + b"]" * k)
    return Raw(b'{"a":' * k + b"1" + b"}" * k)


# ----------------------------------------------------------------------------- events

MODELS = ("model-0", "model-1", "model-2", "m", "fraud-v2")
FEATURES = ("f0", "f1", "f2", "f3", "age", "country", "amount", "x", "y")


def model_id(rng: random.Random) -> Any:
    return rng.choice(MODELS) if rng.random() < 0.85 else rand_string(rng)


def feature_value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.7:
        return rng.gauss(0.0, 1.0) if r < 0.55 else rand_number(rng)
    if r < 0.8:
        return None
    if r < 0.92:
        return rng.choice(("a", "b", "c", "DE", "FR")) if r < 0.88 else rand_string(rng)
    if r < 0.97:
        return rng.random() < 0.5
    return json_value(rng, 2)


def feature_names(rng: random.Random) -> list[str]:
    r = rng.random()
    k = rng.choice((0, 1, 2, 3, 3, 5, 8)) if r < 0.99 else rng.choice((512, 513))
    if k > len(FEATURES) or rng.random() < 0.1:
        names = [f"f{i}" for i in range(k)]
        if names and rng.random() < 0.5:
            names[rng.randrange(len(names))] = rand_string(rng)
        return list(dict.fromkeys(names))
    return rng.sample(FEATURES, k)


def iso_ts(rng: random.Random) -> str:
    return rng.choice((
        "2024-05-01T12:00:00Z", "2024-05-01", "2024-05-01 12:00", "2024-05-01T12:00:00.123456789+02:00",
        "2024-05-01T12:00:00-0530", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
        "2024-13-01T00:00:00Z", "2024-02-30", "2024-05-01T25:00:00Z", "2024-5-1", "yesterday",
        "2024-05-01T12:00:00+99:99", "", "2024-05-01T12:00:00.1234567890Z",
    ))


def optional_fields(rng: random.Random) -> dict[str, Any]:
    """The optional InferenceEvent fields, each present with some probability."""
    ev: dict[str, Any] = {}
    if rng.random() < 0.6:
        ev["ts"] = (1_700_000_000 + rng.random() * 1e5) if rng.random() < 0.7 else (
            iso_ts(rng) if rng.random() < 0.6 else json_value(rng, 3))
    if rng.random() < 0.6:
        r = rng.random()
        ev["prediction"] = (rng.random() if r < 0.5 else rng.choice(("yes", "no")) if r < 0.7
                            else {"a": rng.random(), "b": rng.random()} if r < 0.85
                            else json_value(rng, 2))
    if rng.random() < 0.4:
        ev["event_id"] = f"e{rng.randrange(10**9)}" if rng.random() < 0.8 else json_value(rng, 3)
    if rng.random() < 0.2:
        ev["model_version"] = rng.choice(("1", "v2", None)) if rng.random() < 0.8 else json_value(rng, 3)
    if rng.random() < 0.3:
        r = rng.random()
        ev["segment"] = ({"region": rng.choice(("eu", "us", rand_string(rng)))} if r < 0.6
                         else {f"k{i}": "v" for i in range(rng.choice((0, 16, 17)))} if r < 0.8
                         else json_value(rng, 2))
    if rng.random() < 0.3:
        ev["latency_ms"] = abs(rng.gauss(20, 5)) if rng.random() < 0.8 else json_value(rng, 3)
    if rng.random() < 0.1:
        ev["shadow_of"] = rng.choice(MODELS) if rng.random() < 0.7 else json_value(rng, 3)
    if rng.random() < 0.1:
        ev["trace_id"] = "t" * rng.randrange(1, 40) if rng.random() < 0.7 else json_value(rng, 3)
    if rng.random() < 0.2:
        ev["outcome"] = rng.choice(("ok", "error")) if rng.random() < 0.8 else json_value(rng, 3)
    if rng.random() < 0.05:
        ev[rand_string(rng)] = json_value(rng, 2)  # extra keys are allowed
    return ev


def single_event(rng: random.Random) -> dict[str, Any]:
    ev: dict[str, Any] = {"model": model_id(rng)}
    ev["features"] = {n: feature_value(rng) for n in feature_names(rng)}
    ev.update(optional_fields(rng))
    return ev


def rows_envelope(rng: random.Random) -> dict[str, Any]:
    names = feature_names(rng)
    events = []
    for _ in range(rng.choice((0, 1, 2, 5, 20)) if len(names) < 100 else 2):
        ev: dict[str, Any] = {"features": {n: feature_value(rng) for n in names}}
        ev.update(optional_fields(rng))
        events.append(ev)
    env: dict[str, Any] = {"envelope": "driftline.batch/v1", "model": model_id(rng), "events": events}
    if rng.random() < 0.2:
        env["model_version"] = "v1"
    return env


def columns_envelope(rng: random.Random) -> dict[str, Any]:
    names = feature_names(rng)
    n = rng.choice((0, 1, 3, 10, 50)) if len(names) < 100 else 2
    cols: dict[str, Any] = {"features": {name: [feature_value(rng) for _ in range(n)] for name in names}}
    if rng.random() < 0.5:
        cols["ts"] = [1_700_000_000.0 + i for i in range(n)]
    if rng.random() < 0.5:
        cols["prediction"] = [rng.random() for _ in range(n)]
    if rng.random() < 0.3:
        cols["event_id"] = [f"e{i}" for i in range(n)]
    if rng.random() < 0.2:
        cols["segment"] = [{"region": "eu"} for _ in range(n)]
    if rng.random() < 0.2:
        cols["latency_ms"] = [1.5] * n
    if rng.random() < 0.2:
        cols["outcome"] = [rng.choice(("ok", "error", None)) for _ in range(n)]
    for name in ("shadow_of", "trace_id", "model_version"):
        if rng.random() < 0.05:
            cols[name] = [rng.choice(("a", None)) for _ in range(n)]
    if rng.random() < 0.1:
        cols[rng.choice(("ts", "prediction", "event_id", "segment", "latency_ms", "outcome"))] = \
            [json_value(rng, 3) for _ in range(n)]
    from driftline.schemas.codecs import encode_envelope_columns

    model = model_id(rng)
    if rng.random() < 0.4:  # the SDK's form: numeric columns packed, segments as a dictionary
        with contextlib.suppress(ValueError, TypeError):
            packed: dict[str, Any] = json.loads(encode_envelope_columns(model, cols, n, packed=True))
            return packed
    return {"envelope": "driftline.batch/v1", "model": model, "n": n, "columns": cols}


# ----------------------------------------------------------------------------- mutations


def _containers(obj: Any, path: tuple[Any, ...] = (), out: list[Any] | None = None,
                depth: int = 0) -> list[tuple[tuple[Any, ...], Any]]:
    out = [] if out is None else out
    if isinstance(obj, dict | list) and depth < 8:
        out.append((path, obj))
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            if isinstance(v, dict | list):
                _containers(v, (*path, k), out, depth + 1)
    return out


def special_value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.35:
        return Raw(rng.choice(SPECIAL_TOKENS))
    if r < 0.45:
        return deep_nesting(rng)
    if r < 0.6:
        return rng.choice(HOSTILE_STRINGS)
    if r < 0.7:
        return "s" * rng.choice((1025, 5000, 70_000))
    return json_value(rng)


def mutate(rng: random.Random, obj: Any, rounds: int | None = None) -> Any:
    """Near-valid mutations of a JSON structure (in place where possible); returns it."""
    for _ in range(rounds or rng.choice((1, 1, 1, 2, 3))):
        spots = _containers(obj)
        if not spots:
            return special_value(rng) if rng.random() < 0.5 else json_value(rng)
        path, node = rng.choice(spots)
        op = rng.random()
        if isinstance(node, dict):
            keys = list(node)
            if keys and op < 0.2:
                del node[rng.choice(keys)]
            elif keys and op < 0.55:
                node[rng.choice(keys)] = json_value(rng) if op < 0.4 else special_value(rng)
            elif keys and op < 0.65:  # duplicate a key: the last one wins in orjson
                k = rng.choice(keys)
                dup = Pairs([*node.items(), (k, json_value(rng))] if rng.random() < 0.5
                            else [(k, json_value(rng)), *node.items()])
                obj = _replace(obj, path, dup)
            elif op < 0.72:
                for i in range(rng.choice((17, 513, 2000))):
                    node[f"k{i}"] = rng.choice((1.0, "v"))
            else:
                node[rand_string(rng)] = json_value(rng) if op < 0.9 else special_value(rng)
        else:
            if node and op < 0.25:
                del node[rng.randrange(len(node))]
            elif node and op < 0.6:
                node[rng.randrange(len(node))] = json_value(rng) if op < 0.45 else special_value(rng)
            elif node and op < 0.7:
                node.extend(node[: rng.randrange(1, len(node) + 1)])
            else:
                node.append(json_value(rng) if op < 0.9 else special_value(rng))
    return obj


def _replace(obj: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    node = obj
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = new
    return obj


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Lexical mutations: flips, cuts, splices of special tokens and invalid UTF-8."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4))):
        op = rng.random()
        pos = rng.randrange(len(b) + 1)
        if op < 0.2 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op < 0.35:
            del b[pos:]
        elif op < 0.5:
            b[pos:pos] = rng.choice(_INVALID_UTF8)
        elif op < 0.7:
            b[pos:pos] = rng.choice(SPECIAL_TOKENS)
        elif op < 0.8:
            b[pos:pos] = rng.choice((b",", b":", b"{", b"}", b"[", b"]", b'"', b"\\", b" ", b"\x00"))
        elif op < 0.9 and b:
            end = rng.randrange(pos, len(b) + 1)
            del b[pos:end]
        else:
            b = bytearray(rng.choice((b"\xef\xbb\xbf", b" \n", b"[", b"")) + bytes(b)
                          + rng.choice((b"", b"x", b"}", b" ", b"\x00", b",{}")))
    return bytes(b)


def random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))


def hostile_message(rng: random.Random, valid: Callable[[random.Random], Any],
                    big_limit: int) -> bytes:
    """One raw message value: valid, structurally mutated, lexically mutated or junk."""
    r = rng.random()
    if r < 0.3:
        return dumps(valid(rng), ascii_only=rng.random() < 0.1)
    if r < 0.65:
        return dumps(mutate(rng, valid(rng)), ascii_only=rng.random() < 0.2)
    if r < 0.8:
        return mutate_bytes(rng, dumps(valid(rng)))
    if r < 0.86:
        return random_bytes(rng)
    if r < 0.92:
        return dumps(json_value(rng))
    if r < 0.97:
        return dumps({"model": model_id(rng), "features": deep_nesting(rng)})
    if r < 0.995:
        return rng.choice((b"", b"{}", b"null", b"[]", b'"x"', b"0", b"\xff\xfe", b" " * 10,
                           b'{"model":"m","features":{}}', b'{"model":"m","features":{"a":NaN}}',
                           b'{"model":"m","model":"n","features":{"a":1,"a":"x"}}'))
    # over the size limit by a little (the large payloads are the integration test's job)
    pad = big_limit + rng.choice((1, 100))
    return b'{"model":"m","features":{"a":1},"pad":"' + b"x" * pad + b'"}'


def inference_message(rng: random.Random) -> bytes:
    from driftline.schemas.limits import DEFAULT_LIMITS

    kind = rng.random()
    valid = single_event if kind < 0.5 else rows_envelope if kind < 0.75 else columns_envelope
    return hostile_message(rng, valid, DEFAULT_LIMITS.max_payload_bytes)


def label_event(rng: random.Random) -> dict[str, Any]:
    ev: dict[str, Any] = {"model": model_id(rng), "event_id": f"e{rng.randrange(1000)}",
                          "label": rng.choice((0, 1, "cat", True, 0.25))}
    if rng.random() < 0.5:
        ev["ts"] = 1_700_000_000.0 if rng.random() < 0.7 else iso_ts(rng)
    return ev


def label_message(rng: random.Random) -> bytes:
    from driftline.schemas.limits import DEFAULT_LIMITS

    return hostile_message(rng, label_event, DEFAULT_LIMITS.max_payload_bytes)


def alert_dict(rng: random.Random) -> dict[str, Any]:
    from driftline.schemas.codecs import alert_to_dict
    from driftline.schemas.models import DriftAlert, FeatureScore, WindowInfo

    def num() -> float:
        return rng.choice((rng.random() * 100, float("nan"), 0.0, 1e308, -1.0))

    feats = tuple(FeatureScore(rng.choice(FEATURES + HOSTILE_STRINGS[:12]), "chi2", num(), num(),
                               rng.choice((None, rng.random())))
                  for _ in range(rng.randrange(0, 4)))
    alert = DriftAlert(
        alert_id=f"{rng.getrandbits(80):020x}", model=rng.choice(MODELS),
        kind=rng.choice(("data", "prediction", "concept", "quality", "shadow")),
        state=rng.choice(("firing", "resolved")), detector="pane_chi2", statistic="chi2",
        score=num(), threshold=num(),
        window=WindowInfo(rng.choice((None, 1.7e9)), rng.choice((None, 1.7e9 + 60)),
                          rng.randrange(0, 10**6), rng.randrange(-1, 100), rng.randrange(-1, 10**6),
                          rng.randrange(-1, 100)),
        model_version=rng.choice((None, "v1")), feature=rng.choice((None, "f1", '"}\n{a=')),
        p_value=rng.choice((None, 1e-12)), reference=rng.choice((None, "m@abc")),
        segment=rng.choice((None, {"region": "eu"})), top_features=feats,
        created_at=1.7e9, changes=({"kind": "deploy"},) if rng.random() < 0.2 else (),
        exemplars=("e1",) if rng.random() < 0.2 else (),
    )
    return alert_to_dict(alert)


def alert_message(rng: random.Random) -> bytes:
    return hostile_message(rng, alert_dict, 1 << 20)


def dead_letter_dict(rng: random.Random) -> dict[str, Any]:
    from driftline.schemas.codecs import encode_dead_letter
    from driftline.schemas.limits import REASON_CODES
    from driftline.schemas.models import Rejection

    payload = rng.choice((b"{}", random_bytes(rng), "é".encode() * 10, b"\xff" * 3))
    detail = rand_string(rng).encode("utf-8", "replace").decode() or "x"  # decoded text: no surrogates
    rej = Rejection(f"{rng.choice(sorted(REASON_CODES))}: {detail}", payload,
                    rng.choice(("driftline.inference", "")), rng.randrange(-1, 8),
                    rng.randrange(-1, 10**6), rng.choice((None, "model-1")))
    return orjson.loads(encode_dead_letter(rej, 1.7e9 + rng.random()))  # type: ignore[no-any-return]


def dead_letter_message(rng: random.Random) -> bytes:
    return hostile_message(rng, dead_letter_dict, 1 << 20)


def change_dict(rng: random.Random) -> dict[str, Any]:
    ch: dict[str, Any] = {
        "model": rng.choice(MODELS),
        "kind": rng.choice(("deploy", "pipeline", "data-source", "model_version", "schema",
                            "reference", "other")),
        "ts": 1.7e9 + rng.random(), "text": rand_string(rng)[:4096]}
    if rng.random() < 0.5:
        ch["source"] = rng.choice((None, "ci", rand_string(rng)[:1024]))
    return ch


def change_message(rng: random.Random) -> bytes:
    return hostile_message(rng, change_dict, 1 << 20)


# ----------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Corpus:
    """Valid objects the mutations start from (built once; building them is not cheap)."""

    references: tuple[dict[str, Any], ...]
    monitor_reference: Any  # ReferenceProfile of most snapshots (no multivariate part)
    mv_reference: Any  # ReferenceProfile with multivariate statistics (8x slower to restore)
    monitor_config: Any  # MonitorConfig
    #: kind -> valid blobs (plain and signed), each with "is it of mv_reference"
    snapshots: Mapping[str, tuple[tuple[bytes, bool], ...]]
    key: bytes = b"fuzz-key"
    batch_rows: int = 40
    extra: dict[str, Any] = field(default_factory=dict)


def _profile(rng: np.random.Generator, model: str, n: int, with_cat: bool, pred: str | None) -> Any:
    from driftline.detectors.reference import build_profile

    cols: dict[str, Any] = {"x": rng.normal(size=n), "y": rng.exponential(size=n)}
    if with_cat:
        cols["c"] = rng.choice(["a", "b", "c"], size=n).tolist()
    prediction = None if pred is None else (
        rng.random(n) if pred == "score" else rng.choice(["yes", "no"], size=n).tolist())
    return build_profile(model, cols, prediction=prediction, bins=8, sample_size=200,
                         created_at=1.7e9)


def small_monitor_config() -> Any:
    from driftline.detectors.monitor import MonitorConfig

    return MonitorConfig(panes=2, pane_size=20, min_samples=20, calibration_rounds=10)


def event_batch(rng: random.Random, names: Sequence[str], n: int, model: str = "m") -> Any:
    """An EventBatch of ``n`` plain events over ``names`` (for detector-side checks)."""
    from driftline.schemas.models import EventBatch

    names = tuple(dict.fromkeys(names))
    numeric = np.asarray([[rng.gauss(0, 1) for _ in names] for _ in range(n)]).reshape(n, len(names))
    text = np.full((n, len(names)), None, dtype=object)
    for j, name in enumerate(names):
        if name == "c":
            text[:, j] = [rng.choice(("a", "b", "z")) for _ in range(n)]
            numeric[:, j] = np.nan
    none = np.full(n, None, dtype=object)
    return EventBatch(
        model=model, feature_names=names, numeric=numeric, text=text,
        ts=1.7e9 + np.arange(n, dtype=np.float64), prediction_score=np.asarray(
            [rng.random() for _ in range(n)]), prediction_label=None, event_id=none,
        model_version=none.copy(), segment=none.copy(), latency_ms=np.full(n, np.nan),
        partition=np.zeros(n, dtype=np.int64), offset=np.arange(n, dtype=np.int64))


@lru_cache(maxsize=1)
def corpus() -> Corpus:
    import dataclasses

    from driftline.detectors.monitor import ModelMonitor
    from driftline.detectors.serialization import pack
    from driftline.streams.model_state import ModelState

    nrng = np.random.default_rng(7)
    refs = [_profile(nrng, "m", 300, True, "score"), _profile(nrng, "m", 100, False, "label"),
            _profile(nrng, "m", 50, True, None)]
    mv_ref = refs[0]
    ref = dataclasses.replace(mv_ref, multivariate=None)
    cfg = small_monitor_config()
    key = b"fuzz-key"
    rng = random.Random(7)
    mons = []
    for r in (ref, mv_ref):
        mon = ModelMonitor(r, cfg)
        mon.update(event_batch(rng, r.feature_names, 45))
        mons.append(mon)
    states = [ModelState("m", reference=r, monitor=m, offsets={"t:0": 44}, events_applied=45)
              for r, m in zip((ref, mv_ref), mons, strict=True)]
    pending = ModelState("m")
    pending.buffer_for_reference(event_batch(rng, ("x", "c"), 7))
    plain = pack("driftline.fuzz", {"a": [1, "x", None], "b": {"c": 1.5}},
                 {"f": np.arange(6, dtype="<f8").reshape(2, 3), "i": np.arange(3, dtype="<i4"),
                  "b": np.array([True, False])})
    snaps = {
        "unpack": ((plain, False),
                   (pack("driftline.fuzz", {"a": 1}, {"u": np.arange(4, dtype="|u1")}, key=key), False)),
        "monitor": ((mons[0].snapshot(), False), (mons[0].snapshot(key=key), False),
                    (ModelMonitor(ref, cfg).snapshot(), False),
                    (mons[1].snapshot(), True), (mons[1].snapshot(key=key), True)),
        "model_state": ((states[0].snapshot(), False), (states[0].snapshot(key=key), False),
                        (pending.snapshot(), False),
                        (ModelState("m", offsets={"t:3": 9}, events_deadlettered=2).snapshot(), False),
                        (states[1].snapshot(), True), (states[1].snapshot(key=key), True)),
    }
    return Corpus(tuple(r.to_dict() for r in refs), ref, mv_ref, cfg, snaps, key)


# ----------------------------------------------------------------------------- references


def reference_mutation(rng: random.Random, doc: dict[str, Any]) -> Any:
    """Near-valid reference documents: the fields the loader must check, broken."""
    d = orjson.loads(orjson.dumps(doc))
    cols = [c for c in (*d["numeric"], *d["categorical"], d["prediction"]) if c]
    c = rng.choice(cols)
    op = rng.randrange(16)
    if op == 0 and "edges" in c:
        c["edges"] = list(reversed(c["edges"])) if rng.random() < 0.5 else [None] * len(c["edges"])
    elif op == 1:
        c["counts"] = [rng.choice((-1, 0, 2**62, 2**63 - 1, 1.5, Raw(b"1e300"))) for _ in c["counts"]]
    elif op == 2:
        c["counts"] = c["counts"][:-1] if rng.random() < 0.5 else [*c["counts"], 1]
    elif op == 3:
        c["name"] = rng.choice((None, 5, "", "prediction", "x", "c", *HOSTILE_STRINGS[:10]))
    elif op == 4:
        d["numeric"], d["categorical"] = [], []
        if rng.random() < 0.5:
            d["prediction"] = None
    elif op == 5 and "sample" in c:
        c["sample"] = rng.choice(([], [None], ["a"], [1e308, -1e308], [[1.0]]))
    elif op == 6 and "edges" in c:
        c["edges"], c["counts"] = [], [rng.choice((0, 5))]
    elif op == 7 and "categories" in c:
        c["categories"] = [rng.choice(("a", "a", 1, None, "<script>")) for _ in c["categories"]]
    elif op == 8 and d.get("prediction"):
        d["prediction"]["kind"] = rng.choice(("label", "score", "other", None))
    elif op == 9:
        d["size"] = rng.choice((-1, 0, 2**62, Raw(b"1e300"), "10", None))
    elif op == 10:
        for k in ("mean", "std", "min", "max", "missing"):
            if k in c and rng.random() < 0.5:
                c[k] = rng.choice((None, -1, Raw(b"1e308"), "x", 2**62))
    elif op == 11:
        d["feature_order"] = rng.choice(([], ["zzz"], [None], "x", None))
    elif op == 12:
        d["schema"] = rng.choice(("driftline.reference/v2", None, ""))
    elif op == 13 and "categories" in c:
        n = rng.choice((1000, 20_000))
        c["categories"], c["counts"] = [str(i) for i in range(n)], [1] * (n + 1)
    elif op == 14:
        d["numeric"] = d["numeric"] * rng.choice((2, 3))  # duplicate column names
    else:
        d = mutate(rng, d)
    return d


def _reference_doc(rng: random.Random) -> dict[str, Any]:
    """A corpus reference; the one with a multivariate part (23 KB) one time in five."""
    docs = corpus().references
    return docs[0] if rng.random() < 0.2 else rng.choice(docs[1:])


def reference_message(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.15:
        return dumps(_reference_doc(rng))
    if r < 0.6:
        return dumps(reference_mutation(rng, _reference_doc(rng)))
    if r < 0.8:
        return dumps(mutate(rng, orjson.loads(orjson.dumps(_reference_doc(rng)))))
    if r < 0.9:
        return mutate_bytes(rng, dumps(_reference_doc(rng)))
    return rng.choice((random_bytes(rng), dumps(json_value(rng)), b"", deep_nesting(rng).text))


# ----------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Blob:
    """A snapshot to load: its bytes, whether it is signed, whether it was tampered with."""

    data: bytes
    signed: bool
    tampered: bool
    mv: bool = False  # a snapshot of Corpus.mv_reference's monitor


_HEADER_TOKENS: tuple[Any, ...] = (
    -1, 0, 1, 2**31, 2**62, Raw(b"18446744073709551615"), Raw(b"1180591620717411303424"),
    Raw(b"1e300"), 0.5, None, "x", [], {}, [1], [-1], [2**40, 2**40], [Raw(b"1180591620717411303424")],
    "<f8", ">f8", "|O", "O", "<U4", "V8", "<c16", "|b1", "<M8[s]",
    Raw(b"[" * 1000 + b"]" * 1000),
)


def _split(data: bytes) -> tuple[bytes, dict[str, Any] | None, bytes, bytes]:
    """(prefix, header, body, tag) of a snapshot; header None when it does not parse."""
    signed = data.startswith(b"DLH1")
    inner = data[4:-32] if signed else data
    tag = data[-32:] if signed else b""
    try:
        (hlen,) = struct.unpack(">I", inner[4:8])
        header = orjson.loads(inner[8 : 8 + hlen])
        return inner[:4], header, inner[8 + hlen :], tag
    except (struct.error, orjson.JSONDecodeError):
        return inner[:4], None, inner[8:], tag


def _join(magic: bytes, header: Any, body: bytes) -> bytes:
    h = dumps(header)
    return magic + struct.pack(">I", len(h)) + h + body


def _sign(body: bytes, key: bytes) -> bytes:
    import hashlib
    import hmac

    return b"DLH1" + body + hmac.new(key, body, hashlib.sha256).digest()


def snapshot_blob(rng: random.Random, kind: str) -> Blob:
    """A valid, structurally mutated or byte-mutated snapshot of ``kind``.

    Mutated blobs of a signed original are re-signed with the right key half the time
    (a loader must survive whatever a key holder wrote) and otherwise keep the old tag
    (tampering, which must never load).
    """
    c = corpus()
    # the multivariate monitors cost ~8x more to restore: one blob in five is one of them
    plain = [b for b in c.snapshots[kind] if not b[1]]
    mv = [b for b in c.snapshots[kind] if b[1]]
    base, is_mv = rng.choice(mv if mv and rng.random() < 0.2 else plain)
    signed = base.startswith(b"DLH1")
    r = rng.random()
    if r < 0.1:
        return Blob(base, signed, False, is_mv)
    magic, header, body, tag = _split(base)
    if r < 0.7 and header is not None:
        header = _mutate_header(rng, header)
        body = _mutate_body(rng, body) if rng.random() < 0.2 else body
        inner = _join(magic, header, body)
    else:
        inner = mutate_bytes(rng, base[4:-32] if signed else base)
    if not signed:
        return Blob(inner, False, inner != base, is_mv)
    if rng.random() < 0.5:
        return Blob(_sign(inner, c.key), True, False, is_mv)  # a key holder's odd blob
    data = b"DLH1" + inner + (tag if rng.random() < 0.8 else bytes(32))
    return Blob(data, True, data != base, is_mv)


def _mutate_header(rng: random.Random, header: dict[str, Any]) -> Any:
    r = rng.random()
    arrays = header.get("arrays")
    if r < 0.45 and isinstance(arrays, dict) and arrays:
        spec = arrays[rng.choice(list(arrays))]
        if isinstance(spec, dict):
            for _ in range(rng.choice((1, 1, 2))):
                spec[rng.choice(("dtype", "shape", "offset", "n"))] = rng.choice(_HEADER_TOKENS)
        return header
    if r < 0.55:
        header[rng.choice(("kind", "version", "meta", "arrays"))] = rng.choice(
            (*_HEADER_TOKENS, json_value(rng)))
        return header
    if r < 0.75 and isinstance(header.get("meta"), dict):
        meta = header["meta"]
        # ModelState carries its monitor as a nested snapshot: mutate that one instead
        if isinstance(arrays, dict) and "monitor" in arrays and rng.random() < 0.3:
            return header
        if meta:
            k = rng.choice(list(meta))
            meta[k] = rng.choice((*_HEADER_TOKENS, json_value(rng), special_value(rng)))
        return header
    return mutate(rng, header)


def _mutate_body(rng: random.Random, body: bytes) -> bytes:
    b = bytearray(body)
    if b and rng.random() < 0.5:
        # NaN/inf bit patterns and big values into numeric arrays
        pos = rng.randrange(max(len(b) - 8, 1))
        b[pos : pos + 8] = rng.choice((struct.pack("<d", math.nan), struct.pack("<d", math.inf),
                                       struct.pack("<q", -1), struct.pack("<q", 2**62),
                                       struct.pack("<d", -1e308)))
        return bytes(b)
    return bytes(b[: rng.randrange(len(b) + 1)])


def nested_state_blob(rng: random.Random) -> Blob:
    """A ModelState snapshot whose embedded monitor snapshot is mutated (validly re-packed)."""
    c = corpus()
    from driftline.detectors.serialization import pack, unpack

    base = c.snapshots["model_state"][0][0]
    meta, arrays, _ = unpack(base, "driftline.model")
    inner = snapshot_blob(rng, "monitor").data
    if inner.startswith(b"DLH1"):
        inner = inner[4:-32]
    arrays["monitor"] = np.frombuffer(inner, dtype=np.uint8)
    blob = pack("driftline.model", meta, arrays)
    if rng.random() < 0.3:
        magic, header, body, _ = _split(blob)
        if header is None:  # pack() wrote it: cannot happen
            raise RuntimeError("unparseable snapshot from pack()")
        header["meta"]["pending"] = rng.choice((
            [{"names": ["x"], "numeric": [[1.0], [None]], "score": [None, 0.5], "version": [None, "v"]}],
            [json_value(rng)], [{}], "x", [{"names": ["a", "b"], "numeric": [[1.0]], "score": [1],
                                            "version": [None], "text": [["a"]]}]))
        blob = _join(magic, header, body)
    return Blob(blob, False, True)


# ----------------------------------------------------------------------------- settings

_SECRET_FIELDS = ("sasl_password", "sasl_oauthbearer_config", "ssl_key_password", "snapshot_key")


def _settings_values(name: str, annotation: Any, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return rng.choice(("", " ", "0", "-1", "1", "nan", "NaN", "inf", "-inf", "1e400", "1e-400",
                           "true", "false", "null", "None", "0x10", "1_000", "１２", "2.5", "1e3",
                           "9" * 40, "-0", "PLAINTEXT", "SASL_SSL", "sasl_ssl", "PLAIN", "GSSAPI",
                           "SCRAM-SHA-512", "text", "json", "DEBUG", "bogus", "bonferroni", "bh",
                           "current", "deadletter", "[]", "{}", '{"a":1}', "127.0.0.1:9092",
                           "a,b", "\x00", "ü", "a" * 5000))
    if r < 0.6:
        return rand_string(rng).replace("\x00", "")
    text = str(annotation)
    if "int" in text and "float" not in text:
        return str(rng.choice((0, 1, 2, 5, 100, 65535, 65536, 2**31, 2**63, 10**30, -5)))
    if "float" in text:
        return repr(rng.choice((0.0, 0.05, 1.0, 2.5, 1e6, 1e300, -1.0, 5e-324)))
    return rng.choice(("x", "driftline", "127.0.0.1:1", "SSL", "SASL_PLAINTEXT",
                       "SCRAM-SHA-256", "OAUTHBEARER", "certs/ca.pem"))


def settings_env(rng: random.Random) -> dict[str, str]:
    """A ``DRIFTLINE_*`` environment: known fields (valid or not) and unknown keys."""
    from driftline.streams.settings import Settings

    fields = Settings.model_fields
    env: dict[str, str] = {}
    for name in rng.sample(sorted(fields), rng.randrange(0, 6)):
        key = f"DRIFTLINE_{name.upper()}" if rng.random() < 0.9 else f"driftline_{name}"
        env[key] = _settings_values(name, fields[name].annotation, rng)
    if rng.random() < 0.1:
        env[f"DRIFTLINE_{rand_string(rng).upper()[:20]}"] = rand_string(rng)
    # what an environment can hold: UTF-8 text without NUL, no "=" in a name
    def clean(text: str) -> str:
        return text.encode("utf-8", "replace").decode().replace("\x00", "")

    return {clean(k).replace("=", ""): clean(v) for k, v in env.items()}


@lru_cache(maxsize=1)
def settings_fields_model() -> Any:
    """Settings with every field and model validator but without pydantic-settings'
    environment sources (5-7 ms per Settings(); this takes ~20 µs): it validates the
    values an environment would hand over. The tests prove it agrees with Settings() on
    real environments."""
    from pydantic import BaseModel

    from driftline.streams.settings import Settings

    class SettingsFromValues(Settings):
        def __init__(self, **values: Any) -> None:
            BaseModel.__init__(self, **values)  # skip BaseSettings' sources

    return SettingsFromValues


def env_to_fields(env: Mapping[str, str]) -> dict[str, str]:
    """What pydantic-settings' env source hands to validation (prefix stripped, case folded)."""
    from driftline.streams.settings import Settings

    out: dict[str, str] = {}
    for k, v in env.items():
        low = k.lower()
        if low.startswith("driftline_") and low[10:] in Settings.model_fields:
            out[low[10:]] = v
    return out


def check_settings_fields(fields: Mapping[str, str]) -> Counter[str]:
    """Validate like Settings; an accepted object must give every derived configuration."""
    from pydantic import ValidationError


    try:
        s = settings_fields_model()(**fields)
    except ValidationError as exc:
        if not str(exc).strip():
            raise PropertyViolation("settings: empty validation message") from None
        return Counter({"ValidationError": 1})
    return _derive(s)


def _shown_without_secrets(s: Any) -> str:
    """repr/str/dump of ``s`` with its secrets unset: text the secrets may match by chance."""
    bare = s.model_copy(update=dict.fromkeys(_SECRET_FIELDS))
    return repr(bare) + str(bare) + str(bare.model_dump(mode="json"))


def _derive(s: Any) -> Counter[str]:
    s.kafka()
    s.limits()
    s.monitor_config()
    level = logging.getLevelName(s.log_level.upper())
    if not isinstance(level, int):
        raise ValueError(f"log_level {s.log_level!r} is not a logging level")
    shown = repr(s) + str(s) + str(s.model_dump(mode="json"))
    without = _shown_without_secrets(s)
    for name in _SECRET_FIELDS:
        secret = getattr(s, name)
        value = secret.get_secret_value() if secret is not None else ""
        if len(value) >= 4 and value in shown and value not in without:
            raise PropertyViolation(f"settings: {name} appears in repr()/model_dump()")
    return Counter({"accepted": 1})


# ----------------------------------------------------------------------------- checks


def check_inference(values: Sequence[bytes]) -> Counter[str]:
    """decode_inference on a list of messages; the accounting and reason properties."""
    from driftline.schemas.codecs import decode_dead_letter, decode_inference, encode_dead_letter

    n = len(values)
    res = decode_inference(values, topic="fuzz", partitions=[0] * n, offsets=list(range(n)),
                           timestamps=[1.7e9] * n)
    codes: Counter[str] = Counter()
    rejected: set[int] = set()
    for rej in res.rejections:
        code = reason_code(rej.reason, "decode_inference")
        codes[code] += 1
        if rej.offset in rejected or not 0 <= rej.offset < n:
            raise PropertyViolation(f"message {rej.offset} rejected twice or unknown")
        rejected.add(rej.offset)
        if rej.payload != bytes(values[rej.offset]):
            raise PropertyViolation("a rejection does not carry the original payload")
        if rej.model is not None and not (isinstance(rej.model, str) and 0 < len(rej.model) <= 256):
            raise PropertyViolation(f"rejection model {rej.model!r:.80} is not a valid model id")
        if rej.offset % 8 == 0:  # the dead letter the worker would write must be valid
            decode_dead_letter(encode_dead_letter(rej, 1.7e9))
    applied: set[int] = set()
    events = 0
    for model, b in res.batches.items():
        m = len(b)
        events += m
        f = len(b.feature_names)
        if b.model != model or not 0 < len(model) <= 256:
            raise PropertyViolation(f"batch model {model!r:.80}")
        if b.numeric.shape != (m, f) or (b.text is not None and b.text.shape != (m, f)):
            raise PropertyViolation("feature matrix shape does not match the batch")
        if len(set(b.feature_names)) != f:
            raise PropertyViolation("duplicate feature names in a batch")
        for arr in (b.ts, b.prediction_score, b.event_id, b.model_version, b.segment,
                    b.latency_ms, b.partition, b.offset, b.prediction_label, b.shadow_of,
                    b.trace_id, b.outcome):
            if arr is not None and arr.shape != (m,):
                raise PropertyViolation("a per-event array does not match the batch length")
        if np.isinf(b.numeric).any():
            raise PropertyViolation("an infinite feature value was accepted")
        applied.update(b.offset.tolist())
    if applied & rejected:
        raise PropertyViolation(f"messages both applied and rejected: {sorted(applied & rejected)[:5]}")
    missing = set(range(n)) - applied - rejected
    if missing:
        empty = {i for i in missing if _empty_envelope(values[i])}
        codes["accepted"] += len(empty)  # an envelope of 0 events is valid and holds nothing
        if missing - empty:
            first = min(missing - empty)
            raise PropertyViolation(f"message {first} neither applied nor rejected: "
                                    f"{bytes(values[first])[:300]!r}")
    if events != res.events:
        raise PropertyViolation(f"events={res.events} but the batches hold {events}")
    codes["accepted"] += len(applied)
    return codes


def _empty_envelope(raw: bytes) -> bool:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "envelope" in obj and (
        obj.get("events") == [] or (obj.get("n") in (0, 0.0) and "events" not in obj))


def check_labels(values: Sequence[bytes]) -> Counter[str]:
    from driftline.schemas.codecs import decode_labels

    n = len(values)
    events, rejections = decode_labels(values, topic="fuzz", partitions=[0] * n,
                                       offsets=list(range(n)))
    codes: Counter[str] = Counter(reason_code(r.reason, "decode_labels") for r in rejections)
    if len(events) + len(rejections) != n or len({r.offset for r in rejections}) != len(rejections):
        raise PropertyViolation(f"{n} labels in, {len(events)} events + {len(rejections)} rejections")
    for ev in events:
        if not (isinstance(ev.model, str) and 0 < len(ev.model) <= 256
                and isinstance(ev.event_id, str) and 0 < len(ev.event_id) <= 1024
                and isinstance(ev.label, str | int | float | bool) and isinstance(ev.ts, float)):
            raise PropertyViolation(f"bad LabelEvent {ev!r:.200}")
    codes["accepted"] += len(events)
    return codes


def _value_error_code(exc: ValueError, where: str) -> str:
    return reason_code(str(exc), where)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(_same(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)
    return bool(a == b)


def check_alert(data: bytes, *, round_trip: bool = True) -> Counter[str]:
    """decode_alert; an accepted alert re-encodes (what ``driftline alerts --json`` and a
    re-publishing subscriber do) and, with ``round_trip``, decodes to itself."""
    from driftline.schemas.codecs import decode_alert, encode_alert

    try:
        alert = decode_alert(data)
    except ValueError as exc:
        return Counter({_value_error_code(exc, "decode_alert"): 1})
    encoded = encode_alert(alert)
    if round_trip and not _same(decode_alert(encoded), alert):
        raise PropertyViolation("a decoded alert does not survive encode_alert + decode_alert")
    return Counter({"accepted": 1})


def check_dead_letter(data: bytes) -> Counter[str]:
    from driftline.schemas.codecs import dead_letter_payload, decode_dead_letter

    try:
        dl = decode_dead_letter(data)
        dead_letter_payload(dl)
    except ValueError as exc:
        return Counter({_value_error_code(exc, "decode_dead_letter"): 1})
    return Counter({"accepted": 1})


def check_change(data: bytes) -> Counter[str]:
    from driftline.schemas.codecs import decode_change, encode_change

    try:
        ch = decode_change(data)
    except ValueError as exc:
        return Counter({_value_error_code(exc, "decode_change"): 1})
    encode_change(ch)
    return Counter({"accepted": 1})


def check_reference(data: bytes, *, use: bool = True) -> Counter[str]:
    """from_json accepts or raises ProfileError; an accepted profile re-encodes and (with
    ``use``) builds a ModelMonitor (or gets its documented ProfileError) that takes a
    batch, as a worker would."""
    from driftline.detectors.errors import ProfileError
    from driftline.detectors.monitor import ModelMonitor
    from driftline.detectors.reference import ReferenceProfile

    try:
        prof = ReferenceProfile.from_json(data)
    except ProfileError as exc:
        if not str(exc).strip():
            raise PropertyViolation("reference: ProfileError without a message") from None
        return Counter({"ProfileError": 1})
    ReferenceProfile.from_json(prof.to_json())  # what `driftline reference set` publishes
    if not use:
        return Counter({"accepted": 1})
    try:
        mon = ModelMonitor(prof, small_monitor_config())  # what a worker does with it
    except ProfileError as exc:  # documented: e.g. a multivariate part that does not fit
        if not str(exc).strip():
            raise PropertyViolation("reference: ProfileError without a message") from None
        return Counter({"ProfileError(monitor)": 1})
    rng = random.Random(len(data))
    mon.update(event_batch(rng, prof.feature_names or ("x",), 25))
    return Counter({"accepted": 1})


def check_unpack(blob: Blob) -> Counter[str]:
    from driftline.detectors.errors import SnapshotError
    from driftline.detectors.serialization import unpack

    key = corpus().key if blob.signed else None
    try:
        meta, arrays, _version = unpack(blob.data, "driftline.fuzz", key=key)
    except SnapshotError as exc:
        return _snapshot_rejected(exc)
    if blob.tampered and blob.signed:
        raise PropertyViolation("a tampered signed snapshot was loaded")
    if not isinstance(meta, dict) or not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise PropertyViolation("unpack returned something other than a dict and arrays")
    if any(a.dtype.kind not in "fiub" for a in arrays.values()):
        raise PropertyViolation("unpack built a non-numeric array")
    return Counter({"accepted": 1})


def _snapshot_rejected(exc: Exception) -> Counter[str]:
    if not str(exc).strip():
        raise PropertyViolation("SnapshotError without a message")
    return Counter({"SnapshotError": 1})


def check_monitor_restore(blob: Blob) -> Counter[str]:
    """restore() loads or raises SnapshotError, changing nothing; a loaded monitor works.

    One monitor is reused from check to check (building one costs milliseconds), so the
    states snapshots are loaded onto vary as the fuzzing goes.
    """
    from driftline.detectors.errors import SnapshotError
    from driftline.detectors.monitor import ModelMonitor

    c = corpus()
    ref = c.mv_reference if blob.mv else c.monitor_reference
    slot = f"monitor-{blob.mv}"
    mon = c.extra.get(slot)
    if mon is None:
        base = next(b for b, mv in c.snapshots["monitor"] if mv == blob.mv)
        mon = c.extra[slot] = ModelMonitor.from_snapshot(ref, base)[0]
    key = c.key if blob.signed else None
    attrs = dict(vars(mon))
    before = mon.snapshot() if len(blob.data) % 16 == 0 else None  # ~1 ms: on a sample
    try:
        mon.restore(blob.data, key=key)
    except SnapshotError as exc:
        if any(vars(mon).get(k) is not v for k, v in attrs.items()) or (
                before is not None and mon.snapshot() != before):
            c.extra.pop(slot)
            raise PropertyViolation("a rejected snapshot changed the monitor") from None
        return _snapshot_rejected(exc)
    if blob.tampered and blob.signed:
        c.extra.pop(slot)
        raise PropertyViolation("a tampered signed snapshot was loaded")
    try:
        mon.update(event_batch(random.Random(len(blob.data)), ref.feature_names, 25))
        mon.snapshot()
    except Exception:
        c.extra.pop(slot)
        raise
    return Counter({"accepted": 1})


def check_model_state(blob: Blob) -> Counter[str]:
    """ModelState.restore loads or raises SnapshotError; a loaded state works on."""
    from driftline.detectors.errors import SnapshotError
    from driftline.streams.model_state import ModelState

    c = corpus()
    key = c.key if blob.signed else None
    try:
        ref = c.mv_reference if blob.mv else c.monitor_reference
        st = ModelState.restore(blob.data, ref, c.monitor_config, key=key)
    except SnapshotError as exc:
        return _snapshot_rejected(exc)
    if blob.tampered and blob.signed:
        raise PropertyViolation("a tampered signed snapshot was loaded")
    st.snapshot()  # the worker's next checkpoint
    rng = random.Random(len(blob.data))
    if st.monitor is not None:
        st.monitor.update(event_batch(rng, ref.feature_names, 25))
    elif st.pending_reference:
        st.build_reference(bins=8)
    return Counter({"accepted": 1})


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One fuzz target: ``make(rng)`` gives one call's worth of inputs (a list)."""

    name: str
    make: Callable[[random.Random], list[Any]]
    check: Callable[[Any], Counter[str]]
    batched: bool = False  # check takes the whole list at once


def _many(gen: Callable[[random.Random], Any], lo: int, hi: int) -> Callable[[random.Random], list[Any]]:
    return lambda rng: [gen(rng) for _ in range(rng.randint(lo, hi))]


def targets() -> dict[str, Target]:
    def state_blob(rng: random.Random) -> Blob:
        return nested_state_blob(rng) if rng.random() < 0.25 else snapshot_blob(rng, "model_state")

    return {t.name: t for t in (
        Target("decode_inference", _many(inference_message, 1, 48), check_inference, True),
        Target("decode_labels", _many(label_message, 1, 48), check_labels, True),
        Target("decode_alert", _many(alert_message, 1, 8), check_alert),
        Target("decode_dead_letter", _many(dead_letter_message, 1, 8), check_dead_letter),
        Target("decode_change", _many(change_message, 1, 8), check_change),
        Target("reference", _many(reference_message, 1, 4), check_reference),
        Target("unpack", _many(lambda r: snapshot_blob(r, "unpack"), 1, 8), check_unpack),
        Target("monitor_restore", _many(lambda r: snapshot_blob(r, "monitor"), 1, 4),
               check_monitor_restore),
        Target("model_state_restore", _many(state_blob, 1, 4), check_model_state),
        Target("settings", _many(lambda r: env_to_fields(settings_env(r)), 1, 8),
               check_settings_fields),
    )}


def run_target(t: Target, inputs: list[Any]) -> Iterator[tuple[Any, Counter[str] | BaseException]]:
    """Outcomes of one call's inputs: a Counter of codes, or the exception raised."""
    if t.batched:
        try:
            yield inputs, t.check(inputs)
        except Exception as exc:  # reported, never hidden
            yield inputs, exc
        return
    for x in inputs:
        try:
            yield x, t.check(x)
        except Exception as exc:
            yield x, exc


# ----------------------------------------------------------------------------- benchmark


@dataclass
class _Tally:
    inputs: int = 0
    seconds: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    uncaught: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)


def _example(x: Any) -> str:
    if isinstance(x, Blob):
        x = x.data
    if isinstance(x, list):
        x = x[:1] if len(x) == 1 else f"list of {len(x)} messages, first {x[0]!r:.300}"
    if isinstance(x, bytes):
        return base64.b64encode(x[:2000]).decode()
    return repr(x)[:2000]


def run(n: int = 1_000_000, json_out: Path | None = None, *, quick: bool = False,
        seed: int = 0, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Drive every target with ``n`` generated inputs in total (split evenly); report
    inputs/s (time inside the code under test), rejections by code, uncaught exceptions
    and property violations. ``quick``: at most 20,000 inputs (CI smoke run)."""
    from driftline.benchmarks.report import write

    if quick:
        n = min(n, 20_000)
    all_targets = targets()
    chosen = [all_targets[k] for k in (only or all_targets)]
    corpus()  # build outside the timings
    per = max(n // len(chosen), 1)
    rng = random.Random(seed)
    logging.getLogger("driftline").setLevel(logging.CRITICAL)
    tallies: dict[str, _Tally] = {}
    t_all = time.perf_counter()
    for t in chosen:
        tally = tallies[t.name] = _Tally()
        while tally.inputs < per:
            inputs = t.make(rng)
            t0 = time.perf_counter()
            outcomes = list(run_target(t, inputs))
            tally.seconds += time.perf_counter() - t0
            tally.inputs += len(inputs)
            for x, out in outcomes:
                if isinstance(out, Counter):
                    tally.codes.update(out)
                    continue
                bucket = tally.violations if isinstance(out, PropertyViolation) else tally.uncaught
                name = type(out).__name__
                bucket[name] += 1
                if len(tally.examples) < 5:
                    tally.examples.append({"error": f"{name}: {out}"[:500], "input": _example(x)})
    wall = time.perf_counter() - t_all
    rows = []
    result: dict[str, Any] = {"n": sum(t.inputs for t in tallies.values()), "seed": seed,
                              "wall_seconds": round(wall, 2), "targets": {}}
    for name, t in tallies.items():
        rate = t.inputs / t.seconds if t.seconds else 0.0
        result["targets"][name] = {
            "inputs": t.inputs, "inputs_per_s": round(rate), "seconds": round(t.seconds, 3),
            "outcomes": dict(t.codes.most_common()), "uncaught": sum(t.uncaught.values()),
            "uncaught_by_type": dict(t.uncaught), "violations": sum(t.violations.values()),
            "examples": t.examples,
        }
        rejected = {k: v for k, v in t.codes.items() if k != "accepted"}
        rows.append((name, t.inputs, rate, t.codes.get("accepted", 0),
                     ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1])),
                     sum(t.uncaught.values()), sum(t.violations.values())))
    result["uncaught"] = sum(t["uncaught"] for t in result["targets"].values())
    result["violations"] = sum(t["violations"] for t in result["targets"].values())
    write("fuzz", result, rows, ("target", "inputs", "inputs/s", "accepted", "rejected by code",
                                 "uncaught", "violations"), json_out=json_out)
    return result
