"""Plain, versioned snapshot format: an orjson header plus raw numpy buffers. Never pickle.

Layout: ``b"DLS1"`` + 4-byte big-endian header length + orjson header + array bytes
[+ 32-byte HMAC-SHA256 tag when a key is given]. Only numeric dtypes are allowed, so
loading can never construct arbitrary objects.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import orjson

from driftline.detectors.errors import SnapshotError

try:  # built from detectors/_kernels.c when the package is installed with a C compiler
    from driftline.detectors import _kernels
except ImportError:  # pragma: no cover - exercised by installs without a compiler
    _kernels = None  # type: ignore[assignment]

MAGIC = b"DLS1"
_SIGNED = b"DLH1"
_ALLOWED_DTYPES = frozenset(
    {"<f8", "<f4", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "|u1", "|b1"}
)
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024


def pack(
    kind: str,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray] | None = None,
    *,
    version: int = 1,
    key: bytes | None = None,
) -> bytes:
    """Serialise ``meta`` (JSON-able) and named numeric ``arrays`` into snapshot bytes.

    The arrays' buffers are copied once, into the result (a chunk record of the label
    join is ~135 kB: each extra copy of it costs more than building its header)."""
    arrays = arrays or {}
    layout: dict[str, Any] = {}
    parts: list[Any] = []
    offset = 0
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr).reshape(np.shape(arr))  # keeps 0-d arrays 0-d
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        a = a.astype(dt, copy=False)
        if dt.str not in _ALLOWED_DTYPES:
            raise SnapshotError(f"dtype {a.dtype} of {name!r} is not snapshot-able")
        layout[name] = {"dtype": dt.str, "shape": list(a.shape), "offset": offset,
                        "n": a.nbytes}
        parts.append(a.reshape(-1).view(np.uint8))  # its bytes, not a copy
        offset += a.nbytes
    header = orjson.dumps(
        {"kind": kind, "version": version, "meta": meta, "arrays": layout},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    head = MAGIC + struct.pack(">I", len(header)) + header
    if key is None:
        return b"".join([head, *parts])
    mac = hmac.new(key, head, hashlib.sha256)
    for part in parts:
        mac.update(part)
    return b"".join([_SIGNED, head, *parts, mac.digest()])


_SIGNED_RECORD = b"DLR1"
#: Headers are small structured JSON; anything deeper is hostile (and would make the
#: loaders' error messages, which repr() values, raise RecursionError).
_MAX_HEADER_DEPTH = 32


def within_depth(obj: Any, limit: int) -> bool:
    """Whether ``obj`` (parsed JSON) nests at most ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, dict | list):
            if depth >= limit:
                return False
            stack.extend((v, depth + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def sign_record(data: bytes, key: bytes) -> bytes:
    """A JSON record (a reference profile) with an HMAC-SHA256 tag: ``DLR1 + data + tag``."""
    return _SIGNED_RECORD + data + hmac.new(key, data, hashlib.sha256).digest()


def verify_record(data: bytes, key: bytes | None) -> bytes:
    """The payload of a :func:`sign_record` record, verified before anything parses it.

    With a key, unsigned or tampered records raise SnapshotError; without one, plain
    records pass and signed ones raise (they cannot be checked).
    """
    data = bytes(data)
    if data.startswith(_SIGNED_RECORD):
        if key is None:
            raise SnapshotError("record is signed but no key is configured")
        body, tag = data[4:-32], data[-32:]
        if len(data) < 36 or not hmac.compare_digest(
                tag, hmac.new(key, body, hashlib.sha256).digest()):
            raise SnapshotError("record signature does not verify")
        return body
    if key is not None:
        raise SnapshotError("record is not signed but a key is configured")
    return data


def unpack(
    data: bytes, kind: str, *, key: bytes | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray], int]:
    """Inverse of :func:`pack`: ``(meta, arrays, version)``; raises SnapshotError on bad bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError("snapshot must be bytes")
    data = bytes(data)
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError("snapshot too large")
    if data.startswith(_SIGNED):
        body, tag = data[4:-32], data[-32:]
        if key is None:
            raise SnapshotError("snapshot is signed but no key is configured")
        if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()):
            raise SnapshotError("snapshot signature does not verify")
        data = body
    elif key is not None:
        raise SnapshotError("snapshot is not signed but a key is configured")
    if not data.startswith(MAGIC) or len(data) < 8:
        raise SnapshotError("not a driftline snapshot")
    (hlen,) = struct.unpack(">I", data[4:8])
    if 8 + hlen > len(data):
        raise SnapshotError("truncated snapshot header")
    try:
        header = orjson.loads(data[8 : 8 + hlen])
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"bad snapshot header: {exc}") from None
    if not within_depth(header, _MAX_HEADER_DEPTH):  # before any message repr()s a value of it
        raise SnapshotError(f"snapshot header nested deeper than {_MAX_HEADER_DEPTH} levels")
    if not isinstance(header, dict) or header.get("kind") != kind:
        got = header.get("kind") if isinstance(header, dict) else None
        shown = repr(got[:64]) if isinstance(got, str) else type(got).__name__  # never repr
        raise SnapshotError(f"snapshot kind {shown}, expected {kind!r}")       # a deep value
    base = 8 + hlen
    arrays: dict[str, np.ndarray] = {}
    try:
        for name, spec in header["arrays"].items():
            if spec["dtype"] not in _ALLOWED_DTYPES:
                raise SnapshotError(f"dtype {spec['dtype']} not allowed")
            start, n = base + int(spec["offset"]), int(spec["n"])
            if start + n > len(data) or n < 0:
                raise SnapshotError("truncated snapshot body")
            dt = np.dtype(spec["dtype"])
            shape = tuple(int(s) for s in spec["shape"])
            if any(not 0 <= s < 2**62 for s in shape) or math.prod(shape) * dt.itemsize != n:
                raise SnapshotError(f"shape of {name!r} does not match its bytes")
            arrays[name] = np.frombuffer(data[start : start + n], dtype=dt).reshape(shape).copy()
        meta = header["meta"]
        version = int(header["version"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise SnapshotError(f"malformed snapshot: {exc!r}") from None
    if not isinstance(meta, dict):
        raise SnapshotError("malformed snapshot meta")
    return meta, arrays, version


def put_strs(arrays: dict[str, np.ndarray], name: str, values: Sequence[str | None]) -> None:
    """Strings (or None) as arrays, in the smallest of two forms :func:`get_strs` reads:

    - ``<name>.hex``: strings of one even length in lowercase hex digits (``uuid4().hex``
      event ids), as their bytes, one row each: half the size;
    - ``<name>.bytes`` + ``<name>.len``: the UTF-8 bytes one after another and each
      string's length (-1 = None) in the narrowest signed integer that holds them.

    Event ids and class labels are ASCII almost always: then the strings are joined and
    encoded once and their lengths are their character counts (no bytes object per
    string; one compiled pass over the list when the kernels are built); otherwise each
    is encoded (``surrogatepass``: any ``str`` round-trips)."""
    vals = values if isinstance(values, list) else list(values)
    hexed = hex_bytes(vals)
    if hexed is not None:
        arrays[f"{name}.hex"] = np.frombuffer(hexed, dtype=np.uint8).reshape(len(vals), -1)
        return
    raw, lens = _text_bytes(vals)
    arrays[f"{name}.bytes"] = np.frombuffer(raw, dtype=np.uint8)
    arrays[f"{name}.len"] = _narrowest(lens)


def hex_bytes(vals: list[str | None]) -> bytes | None:
    """The bytes of strings of one even length in lowercase hex digits, else None."""
    if _kernels is not None:
        return _kernels.hex_column(vals)
    if not vals or not all(type(v) is str for v in vals):
        return None
    width = len(cast(str, vals[0]))
    text = "".join(cast(list[str], vals))
    if width == 0 or width % 2 or not text.isascii() or \
            any(len(v) != width for v in cast(list[str], vals)):
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if raw.hex() == text else None  # fromhex takes upper case and spaces too


def uuid_bytes(vals: list[str | None]) -> bytes | None:
    """The 16 bytes of each of canonical lowercase UUID strings (``str(uuid4())``:
    8-4-4-4-12 hex digits with dashes between), else None."""
    if _kernels is not None:
        return _kernels.uuid_column(vals)
    if not vals or not all(type(v) is str and len(v) == 36 for v in vals):
        return None
    text = "".join(cast(list[str], vals))
    if not text.isascii() or any(text[i::36].count("-") != len(vals) for i in (8, 13, 18, 23)):
        return None
    digits = text.replace("-", "")
    if len(digits) != 32 * len(vals):
        return None
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return raw if raw.hex() == digits else None


def _text_bytes(vals: list[str | None]) -> tuple[bytes, np.ndarray]:
    """The strings' UTF-8 bytes one after another, and their int64 lengths (-1 = None)."""
    if _kernels is not None:
        packed = _kernels.ascii_column(vals)
        if packed is not None:  # every value None or an ASCII str
            return packed[0], np.frombuffer(packed[1], dtype=np.int64)
    nones = vals.count(None)
    if nones == len(vals):  # e.g. the predicted class of a score model
        return b"", np.full(len(vals), -1, dtype=np.int64)
    present: list[str] = [v for v in vals if v is not None] if nones else cast(list[str], vals)
    text = "".join(present)
    if text.isascii():
        raw = text.encode("ascii")
        sizes = np.fromiter(map(len, present), dtype=np.int64, count=len(present))
    else:
        enc = [v.encode("utf-8", "surrogatepass") for v in present]
        raw = b"".join(enc)
        sizes = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
    if not nones:
        return raw, sizes
    lens = np.full(len(vals), -1, dtype=np.int64)
    lens[np.fromiter((v is not None for v in vals), dtype=bool, count=len(vals))] = sizes
    return raw, lens


_LENGTH_TYPES = (np.int8, np.int16, np.int32)


def _narrowest(lens: np.ndarray) -> np.ndarray:
    """``lens`` (int64, >= -1) in the narrowest signed integer type that holds them."""
    top = int(lens.max()) if lens.size else 0
    for dt in _LENGTH_TYPES:
        if top <= np.iinfo(dt).max:
            return lens.astype(dt)
    return lens


def get_strs(arrays: dict[str, np.ndarray], name: str, count: int | None = None) -> list[Any]:
    """The strings :func:`put_strs` wrote (either form; int64 lengths as older records
    hold them, or narrower). ``count``: how many there must be, checked before any is
    made (a record's few bytes can stand for many short strings)."""
    hexed = arrays.get(f"{name}.hex")
    if hexed is not None:
        if hexed.dtype != np.uint8 or hexed.ndim != 2 or hexed.shape[1] == 0:
            raise ValueError(f"bad hex string array {name!r}")
        if count is not None and hexed.shape[0] != count:
            raise ValueError(f"{name!r} holds {hexed.shape[0]} strings, not {count}")
        width = 2 * hexed.shape[1]
        text = hexed.tobytes().hex()
        return [text[i:i + width] for i in range(0, len(text), width)]
    raw = arrays[f"{name}.bytes"]
    lens = arrays[f"{name}.len"]
    if raw.dtype != np.uint8 or lens.dtype.kind != "i" or raw.ndim != 1 or lens.ndim != 1:
        raise ValueError(f"bad string arrays {name!r}")
    if count is not None and lens.size != count:
        raise ValueError(f"{name!r} holds {lens.size} strings, not {count}")
    lens = lens.astype(np.int64, copy=False)
    # each length within the bytes first: then their sum cannot wrap around
    if (lens.size and (int(lens.min()) < -1 or int(lens.max()) > raw.size)) or \
            int(lens[lens > 0].sum()) != raw.size:
        raise ValueError(f"string lengths of {name!r} do not match their bytes")
    data = raw.tobytes()
    if data.isascii():  # one decode, then slices of the text (ASCII: bytes = characters)
        text = data.decode("ascii")
        size = np.maximum(lens, 0)
        ends = np.cumsum(size)
        out: list[str | None] = [text[a:b] for a, b in zip((ends - size).tolist(),
                                                            ends.tolist(), strict=True)]
        if size.size and lens.min() < 0:
            for i in np.flatnonzero(lens < 0).tolist():
                out[i] = None
        return out
    out = []
    pos = 0
    for n in lens.tolist():
        if n < 0:
            out.append(None)
            continue
        out.append(data[pos:pos + n].decode("utf-8", "surrogatepass"))
        pos += n
    return out
