"""The check battery itself: a sound toy detector passes every check, and each check
catches the defect it is there for. Also runs the battery over EventBatch chunks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import numpy as np
import pytest
from synth import make_batch

from driftline.detectors.base import ScalarDetector
from driftline.detectors.checks import (
    ALL_CHECKS,
    DetectorCase,
    check_detects_drift,
    check_input_validation,
    check_rejected_restore_keeps_state,
    check_reset,
    check_round_trip,
    check_silent_without_drift,
    check_snapshot_rejects_garbage,
)
from driftline.detectors.errors import InputError, SnapshotError
from driftline.detectors.serialization import pack, unpack
from driftline.schemas.models import EventBatch


class Cusum(ScalarDetector):
    """One-sided CUSUM for an upward mean shift; restarts after each alarm."""

    name = "toy_cusum"

    def __init__(self, threshold: float = 10.0, drift: float = 0.5) -> None:
        self.threshold, self.drift = threshold, drift
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._s = 0.0

    def _values(self, x: Any) -> np.ndarray:
        v = self._as_values(x)
        if not np.isfinite(v).all():
            raise InputError("values must be finite")
        return v

    def update(self, x: Any) -> Self:
        v = self._values(x)
        hits, s = [], self._s
        for i, value in enumerate(v.tolist()):
            s = max(0.0, s + value - self.drift)
            if s > self.threshold:
                hits.append(i)
                s = 0.0
        self._s, self.n_seen, self.drift_indices = s, self.n_seen + len(v), hits
        return self

    def snapshot(self) -> bytes:
        meta = {"n_seen": self.n_seen, "drift_indices": self.drift_indices}
        return pack("toy.cusum", meta, {"s": np.array([self._s])})

    def restore(self, data: bytes) -> None:
        meta, arrays, _ = unpack(data, "toy.cusum")
        try:
            s = arrays["s"]
            if s.dtype != np.float64 or s.shape != (1,) or not 0.0 <= s[0] < np.inf:
                raise ValueError("bad s")
            n_seen, hits = meta["n_seen"], meta["drift_indices"]
            if not isinstance(n_seen, int) or not all(isinstance(i, int) for i in hits):
                raise TypeError("bad counters")
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(repr(exc)) from None
        self._s, self.n_seen, self.drift_indices = float(s[0]), n_seen, list(hits)


def chunks_of(x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    cuts = np.cumsum(rng.integers(1, 200, size=len(x)))
    return np.split(x, cuts[cuts < len(x)])


def toy_case(make: Callable[[], Any] = Cusum, **overrides: Any) -> DetectorCase:
    fields: dict[str, Any] = {
        "name": "toy",
        "make": make,
        "no_drift": lambda rng: chunks_of(rng.normal(0, 1, 3000), rng),
        "drift": lambda rng: (
            chunks_of(np.r_[rng.normal(0, 1, 1500), rng.normal(2, 1, 1500)], rng), 1500
        ),
        "max_delay": 30,
        "max_false_alarms": 0,
        "bad_inputs": [[np.nan], [[1.0]], "x", [0.0, np.inf]],
    }
    fields.update(overrides)
    return DetectorCase(**fields)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sound_detector_passes(check: Callable[[DetectorCase, int], object], seed: int) -> None:
    check(toy_case(), seed)


def test_checks_return_what_they_measured() -> None:
    case = toy_case()
    assert check_silent_without_drift(case, 0) == 0
    delay = check_detects_drift(case, 0)
    assert 4 <= delay <= 15  # threshold 10 at ~1.5 per event past the change
    assert check_snapshot_rejects_garbage(case, 0) > 50


# -- each check catches its defect ----------------------------------------------------------
class ForgetfulReset(Cusum):
    def _reset(self) -> None:
        if not hasattr(self, "_s"):
            super()._reset()
        self.n_seen, self.drift_indices = 0, []  # keeps the running sum


class LossySnapshot(Cusum):
    def snapshot(self) -> bytes:  # forgets the running sum
        meta = {"n_seen": self.n_seen, "drift_indices": self.drift_indices}
        return pack("toy.cusum", meta, {"s": np.array([0.0])})


class Trigger(Cusum):
    def update(self, x: Any) -> Self:
        super().update(x)
        self.drift_indices = [0] if self.n_seen % 7 == 0 else self.drift_indices
        return self


class Blind(Cusum):
    def __init__(self) -> None:
        super().__init__(threshold=1e9)


class NoValidation(Cusum):
    def _values(self, x: Any) -> np.ndarray:
        return self._as_values(x)


class HalfApplied(Cusum):
    def update(self, x: Any) -> Self:
        self.n_seen += 1  # mutates before validating
        return super().update(x)


class LeakyRestore(Cusum):
    def restore(self, data: bytes) -> None:
        meta, arrays, _ = unpack(data, "toy.cusum")
        self._s = float(arrays["s"][0])  # KeyError / IndexError escape
        self.n_seen, self.drift_indices = meta["n_seen"], meta["drift_indices"]


class NonAtomicRestore(Cusum):
    def restore(self, data: bytes) -> None:
        self._reset()
        super().restore(data)


@pytest.mark.parametrize(
    ("check", "broken", "message"),
    [
        (check_reset, ForgetfulReset, "reset"),
        (check_round_trip, LossySnapshot, "restored at chunk"),
        (check_silent_without_drift, Trigger, "false alarms"),
        (check_detects_drift, Blind, "no alarm after the change"),
        (check_input_validation, NoValidation, "accepted bad input"),
        (check_input_validation, HalfApplied, "changed the state"),
        (check_snapshot_rejects_garbage, LeakyRestore, "raised"),
        (check_rejected_restore_keeps_state, NonAtomicRestore, "changed the state"),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_each_check_catches_its_defect(check: Any, broken: type[Cusum], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check(toy_case(broken), 0)


def test_late_detection_is_reported_with_its_delay() -> None:
    with pytest.raises(AssertionError, match="events after the change"):
        check_detects_drift(toy_case(lambda: Cusum(threshold=60.0)), 0)


# -- chunks that are not arrays: EventBatch ---------------------------------------------------
class BatchCusum(Cusum):
    """The toy detector over feature f0 of EventBatch chunks (like a window detector)."""

    name = "toy_batch_cusum"

    def update(self, x: Any) -> Self:
        if not isinstance(x, EventBatch):
            raise InputError("takes an EventBatch")
        return super().update(x.numeric[:, 0])


def batches(x: np.ndarray, rng: np.random.Generator) -> list[EventBatch]:
    out, offset = [], 0
    for chunk in chunks_of(x, rng):
        out.append(make_batch(chunk.reshape(-1, 1), offset0=offset))
        offset += len(chunk)
    return out


def test_battery_runs_over_event_batches() -> None:
    case = DetectorCase(
        name="toy_batches",
        make=BatchCusum,
        no_drift=lambda rng: batches(rng.normal(0, 1, 3000), rng),
        drift=lambda rng: (batches(np.r_[rng.normal(0, 1, 1500), rng.normal(2, 1, 1500)], rng),
                           1500),
        max_delay=30,
        max_false_alarms=0,
        bad_inputs=[np.zeros(3), "x"],
        events_of=len,
        drift_positions=lambda det, batch: [int(batch.offset[i]) - int(batch.offset[0])
                                            for i in det.drift_indices],
    )
    for check in ALL_CHECKS:
        check(case, 0)
    assert check_detects_drift(case, 0) == check_detects_drift(toy_case(), 0)
