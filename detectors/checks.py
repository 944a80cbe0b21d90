"""The shared check battery every driftline detector runs through (river's ``checks`` style).

A :class:`DetectorCase` says how to build a detector and how to feed it: a seeded stream
without drift, a seeded stream with one change, and inputs it must refuse. Chunks are
whatever the detector's ``update`` accepts (1-D arrays for scalar detectors, ``EventBatch``
for window detectors); the case says how many events a chunk holds (``events_of``) and where
in a chunk the detector flagged drift (``drift_positions``). Each check takes a case and a
seed, raises ``AssertionError`` with a message on failure, and returns what it measured.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from driftline.detectors.errors import InputError, SnapshotError
from driftline.detectors.serialization import pack


class Checkable(Protocol):
    """What the battery needs: river's shape plus snapshots."""

    def _reset(self) -> None: ...

    def update(self, x: Any) -> Any: ...

    @property
    def drift_detected(self) -> bool: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> Any: ...


def _len(chunk: Any) -> int:
    return len(chunk)


def _drift_indices(detector: Any, chunk: Any) -> list[int]:
    return [int(i) for i in detector.drift_indices]


def _no_output(detector: Any, returned: Any) -> Any:
    return None


@dataclass(frozen=True)
class DetectorCase:
    """One detector configuration with its seeded streams and expectations."""

    name: str
    make: Callable[[], Checkable]
    #: Chunks without any change (fed to ``update`` in order).
    no_drift: Callable[[np.random.Generator], list[Any]]
    #: Chunks with one change, and the global event index where the change starts.
    drift: Callable[[np.random.Generator], tuple[list[Any], int]]
    #: Events from the change to the first alarm at or after it, at most.
    max_delay: int
    #: Alarms allowed over the no-drift stream (and before the change in the drift stream).
    max_false_alarms: int
    #: Inputs ``update`` must refuse with InputError, leaving the state unchanged.
    bad_inputs: list[Any] = field(default_factory=list)
    #: Number of events in a chunk.
    events_of: Callable[[Any], int] = _len
    #: Positions within the chunk just fed where the detector flagged drift.
    drift_positions: Callable[[Any, Any], list[int]] = _drift_indices
    #: Anything else comparable the detector reports per update (``returned`` is what
    #: ``update`` returned); compared by the reset and round-trip checks.
    output_of: Callable[[Any, Any], Any] = _no_output

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Step:
    """What one update produced: the flag, drift positions in the chunk, the case's output."""

    drift_detected: bool
    positions: tuple[int, ...]
    output: Any


def _feed(case: DetectorCase, det: Checkable, chunk: Any) -> Step:
    returned = det.update(chunk)
    return Step(
        bool(det.drift_detected),
        tuple(case.drift_positions(det, chunk)),
        case.output_of(det, returned),
    )


def _feed_all(case: DetectorCase, det: Checkable, chunks: Iterable[Any]) -> list[Step]:
    return [_feed(case, det, c) for c in chunks]


def _alarms(case: DetectorCase, det: Checkable, chunks: list[Any]) -> list[int]:
    """Global event indices of every drift flag over ``chunks``."""
    out: list[int] = []
    offset = 0
    for chunk in chunks:
        out += [offset + p for p in _feed(case, det, chunk).positions]
        offset += case.events_of(chunk)
    return out


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the checks ---------------------------------------------------------------------------
def check_reset(case: DetectorCase, seed: int) -> None:
    """After ``_reset()`` a used detector behaves as a new one: same outputs, same snapshot."""
    chunks, _ = case.drift(_rng(seed))
    used = case.make()
    _feed_all(case, used, chunks)
    used._reset()
    fresh = case.make()
    assert used.snapshot() == fresh.snapshot(), f"{case}: reset state differs from a new one"
    for i, chunk in enumerate(chunks):
        a, b = _feed(case, used, chunk), _feed(case, fresh, chunk)
        assert a == b, f"{case}: after reset, chunk {i} gave {a} instead of {b}"


def check_round_trip(case: DetectorCase, seed: int) -> None:
    """Snapshot mid-stream, restore into a used instance, feed both: identical at every step.

    Splits at half the chunks and at a seeded point; the restored copy must also give the
    same snapshot bytes right after restore and at the end.
    """
    rng = _rng(seed)
    chunks, _ = case.drift(rng)
    n = len(chunks)
    assert n >= 2, f"{case}: the drift stream needs at least two chunks"
    splits = sorted({n // 2, int(rng.integers(1, n))})
    original = case.make()
    copies: list[tuple[int, Checkable]] = []
    distractor = case.no_drift(_rng(seed + 1))[:2]
    for i, chunk in enumerate(chunks):
        if i in splits:
            data = original.snapshot()
            twin = case.make()
            _feed_all(case, twin, distractor)  # restore must replace state, not merge
            twin.restore(data)
            assert twin.snapshot() == data, f"{case}: snapshot changed by restore at chunk {i}"
            copies.append((i, twin))
        want = _feed(case, original, chunk)
        for at, twin in copies:
            got = _feed(case, twin, chunk)
            assert got == want, f"{case}: restored at chunk {at}, chunk {i}: {got} != {want}"
    final = original.snapshot()
    for at, twin in copies:
        assert twin.snapshot() == final, f"{case}: restored at chunk {at}, final snapshots differ"


def check_silent_without_drift(case: DetectorCase, seed: int) -> int:
    """At most ``max_false_alarms`` drift flags over the no-drift stream; returns the count."""
    alarms = _alarms(case, case.make(), case.no_drift(_rng(seed)))
    assert len(alarms) <= case.max_false_alarms, (
        f"{case}: {len(alarms)} false alarms (max {case.max_false_alarms}) at {alarms[:20]}"
    )
    return len(alarms)


def check_detects_drift(case: DetectorCase, seed: int) -> int:
    """A flag at or after the change within ``max_delay`` events; returns the delay."""
    chunks, change = case.drift(_rng(seed))
    alarms = _alarms(case, case.make(), chunks)
    early = [a for a in alarms if a < change]
    assert len(early) <= case.max_false_alarms, (
        f"{case}: {len(early)} alarms before the change at {change}: {early[:20]}"
    )
    late = [a for a in alarms if a >= change]
    assert late, f"{case}: no alarm after the change at {change}"
    delay = late[0] - change
    assert delay <= case.max_delay, (
        f"{case}: first alarm {delay} events after the change (max {case.max_delay})"
    )
    return delay


def check_input_validation(case: DetectorCase, seed: int) -> None:
    """Every bad input raises InputError and leaves the state (snapshot, flags) unchanged."""
    chunks = case.no_drift(_rng(seed))
    warm, after = chunks[:2], chunks[2 % len(chunks)]
    det = case.make()
    last = _feed_all(case, det, warm)[-1]
    before = det.snapshot()
    for bad in case.bad_inputs:
        try:
            det.update(bad)
        except InputError:
            pass
        else:
            raise AssertionError(f"{case}: accepted bad input {bad!r}")
        assert det.snapshot() == before, f"{case}: bad input {bad!r} changed the state"
        flags = (bool(det.drift_detected), tuple(case.drift_positions(det, warm[-1])))
        assert flags == (last.drift_detected, last.positions), (
            f"{case}: bad input {bad!r} changed the last update's flags"
        )
    twin = case.make()
    _feed_all(case, twin, warm)
    assert _feed(case, det, after) == _feed(case, twin, after), (
        f"{case}: bad inputs changed later outputs"
    )


_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _garbage(valid: bytes, rng: np.random.Generator) -> list[bytes]:
    """Random bytes, truncations, bit flips, other kinds and re-packed mutated headers."""
    out = [b"", b"DLS1", valid[:-1], valid + b"\x00", pack("driftline.other", {}, {})]
    out += [rng.bytes(int(n)) for n in rng.integers(1, 4096, size=8)]
    out += [b"DLS1" + rng.bytes(int(n)) for n in rng.integers(4, 512, size=4)]
    out += [valid[: int(c)] for c in rng.integers(0, len(valid), size=8)]
    for pos in rng.integers(4, len(valid), size=16):
        flipped = bytearray(valid)
        flipped[int(pos)] ^= 1 << int(rng.integers(0, 8))
        out.append(bytes(flipped))
    if not valid.startswith(b"DLS1"):
        return out
    hlen = int.from_bytes(valid[4:8], "big")
    header = orjson.loads(valid[8 : 8 + hlen])
    body = valid[8 + hlen :]
    arrays = {
        name: np.frombuffer(
            body[spec["offset"] : spec["offset"] + spec["n"]], dtype=spec["dtype"]
        ).reshape(spec["shape"])
        for name, spec in header["arrays"].items()
    }
    kind, meta = header["kind"], header["meta"]
    out.append(pack(kind, {}, arrays))
    out.append(pack(kind, meta, {}))
    out.append(pack(kind, meta, arrays, version=99))
    junk_values: list[Any] = ["x", -1, 2**62, -(2**62), 1e308, None, [], {}, True, [1, "a"]]
    for path in _leaves(meta):
        for junk in junk_values:
            out.append(pack(kind, _replaced(meta, path, junk), arrays))
    for name, arr in arrays.items():
        for v in _array_variants(arr):
            out.append(pack(kind, meta, {**arrays, name: v}))
        out.append(pack(kind, meta, {k: a for k, a in arrays.items() if k != name}))
    return out


def _array_variants(arr: np.ndarray) -> list[np.ndarray]:
    """Wrong shapes, dtypes and values for one snapshot array."""
    flat = arr.ravel()
    makers: list[Callable[[], np.ndarray]] = [
        lambda: arr[:0],
        lambda: np.concatenate([flat, flat[:1]]),
        lambda: flat[:-1],
        lambda: arr.T.copy(),
        lambda: arr.astype(np.float32),
        lambda: arr.astype(np.int64 if arr.dtype.kind == "f" else np.float64),
        lambda: np.full_like(arr, -1),
        lambda: np.full_like(arr, 2**30),
        lambda: np.full_like(arr, np.nan),
        lambda: np.full_like(arr, np.inf),
    ]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN cast to int on purpose
        for make in makers:
            try:
                out.append(make())
            except (ValueError, TypeError, OverflowError):
                continue  # not expressible in this dtype
    return out


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(obj, dict):
        return [path] + [p for k, v in obj.items() for p in _leaves(v, (*path, k))]
    if isinstance(obj, list):
        return [path] + [p for i, v in enumerate(obj[:3]) for p in _leaves(v, (*path, i))]
    return [path]


def _replaced(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replaced(obj[head], rest, value)}
    items = list(obj)
    items[head] = _replaced(items[head], rest, value)
    return items


def check_snapshot_rejects_garbage(case: DetectorCase, seed: int) -> int:
    """Corrupt or foreign snapshots raise SnapshotError and nothing else.

    A mutated snapshot that still restores must leave a working detector (one more
    update raises nothing). Returns how many of the garbage inputs were rejected.
    """
    rng = _rng(seed)
    chunks = case.no_drift(_rng(seed))
    det = case.make()
    _feed_all(case, det, chunks[:2])
    valid = det.snapshot()
    probe = min(chunks, key=case.events_of)
    target = case.make()
    rejected = 0
    for i, data in enumerate(_garbage(valid, rng)):
        try:
            target.restore(data)
        except SnapshotError:
            rejected += 1
            continue
        except _FATAL:
            raise
        except BaseException as exc:  # any other type is the failure
            raise AssertionError(f"{case}: garbage #{i} raised {exc!r}") from exc
        try:
            target.update(probe)
            target.snapshot()
        except _FATAL:
            raise
        except BaseException as exc:
            raise AssertionError(f"{case}: garbage #{i} restored but then broke: {exc!r}") from exc
        target.restore(valid)
    assert rejected > 0, f"{case}: no garbage snapshot was rejected"
    return rejected


def check_rejected_restore_keeps_state(case: DetectorCase, seed: int) -> None:
    """A restore that raises SnapshotError leaves the detector exactly as it was."""
    rng = _rng(seed)
    chunks = case.no_drift(_rng(seed))
    det = case.make()
    _feed_all(case, det, chunks[:2])
    before = det.snapshot()
    for i, data in enumerate(_garbage(before, rng)):
        try:
            det.restore(data)
        except SnapshotError:
            assert det.snapshot() == before, f"{case}: rejected garbage #{i} changed the state"
        else:
            det.restore(before)


Check = Callable[[DetectorCase, int], object]

ALL_CHECKS: list[Check] = [
    check_reset,
    check_round_trip,
    check_silent_without_drift,
    check_detects_drift,
    check_input_validation,
    check_snapshot_rejects_garbage,
    check_rejected_restore_keeps_state,
]
