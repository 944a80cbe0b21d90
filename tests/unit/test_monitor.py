"""ModelMonitor: calibrated silence without drift, detection delay, exact round trip, windows."""

from __future__ import annotations

import numpy as np
import pytest
from synth import make_batch

from driftline.detectors.errors import SnapshotError
from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import ReferenceProfile, build_profile

F = 20


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(20_000, F))
    return build_profile("m", {f"f{i}": ref[:, i] for i in range(F)}, created_at=0.0)


def firing(evals) -> list[tuple[int, str | None]]:
    return [(e.index, a.feature) for e in evals for a in e.alerts if a.state == "firing"]


def test_false_alarm_rate_holds_without_drift(profile: ReferenceProfile) -> None:
    """Default target: <= 1 false alert per 1,000,000 events (20 features), 6M events."""
    mon = ModelMonitor(profile)
    rng = np.random.default_rng(11)
    alerts = []
    for _ in range(1200):
        alerts += firing(mon.update(make_batch(rng.normal(size=(5000, F)))))
    assert mon.evaluations == 6000
    assert len(alerts) <= 6, alerts  # expected ~3 at half the budget


@pytest.mark.parametrize("seed", range(5))
def test_half_sigma_shift_in_one_of_twenty_detected_within_5000(profile, seed) -> None:
    mon = ModelMonitor(profile)
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=(30_000, F))
    x[20_000:, 3] += 0.5
    hits = []
    for k in range(0, 30_000, 700):
        hits += firing(mon.update(make_batch(x[k : k + 700], offset0=k)))
    after = [(i, f) for i, f in hits if i >= 20_000]
    assert after, "drift was not detected"
    index, feature = after[0]
    assert feature == "f3"
    assert index < 25_000


def test_snapshot_round_trip_is_exact(profile) -> None:
    rng = np.random.default_rng(3)
    a = ModelMonitor(profile)
    x = rng.normal(size=(12_345, F))
    x[8000:, 5] += 1.0
    a.update(make_batch(x[:6_500]))
    blob = a.snapshot(extra={"offsets": {"0": 6499}})
    b = ModelMonitor(profile, calibration=a.calibration)
    assert b.restore(blob) == {"offsets": {"0": 6499}}
    assert b.snapshot(extra={"offsets": {"0": 6499}}) == blob
    ea = a.update(make_batch(x[6_500:]))
    eb = b.update(make_batch(x[6_500:]))
    assert [e.index for e in ea] == [e.index for e in eb]
    for u, v in zip(ea, eb, strict=True):
        np.testing.assert_array_equal(u.chi2, v.chi2)
        assert [x.alert_id for x in u.alerts] == [x.alert_id for x in v.alerts]
    assert a.snapshot() == b.snapshot()


def test_snapshot_rejects_garbage_and_other_reference(profile) -> None:
    mon = ModelMonitor(profile)
    with pytest.raises(SnapshotError):
        mon.restore(b"\x80\x04garbage")
    other = build_profile("m", {"f0": np.arange(100.0)})
    with pytest.raises(SnapshotError):
        ModelMonitor(other).restore(mon.snapshot())


def test_signed_snapshot_verifies_before_load(profile) -> None:
    mon = ModelMonitor(profile)
    blob = mon.snapshot(key=b"k1")
    ModelMonitor(profile).restore(blob, key=b"k1")
    with pytest.raises(SnapshotError):
        ModelMonitor(profile).restore(blob, key=b"k2")
    tampered = blob[:-40] + bytes([blob[-40] ^ 1]) + blob[-39:]
    with pytest.raises(SnapshotError):
        ModelMonitor(profile).restore(tampered, key=b"k1")


def test_small_window_is_insufficient_never_drift(profile) -> None:
    cfg = MonitorConfig(panes=5, pane_size=100, min_samples=1000)
    mon = ModelMonitor(profile, cfg)
    x = np.random.default_rng(1).normal(5.0, 1.0, size=(900, F))  # heavily drifted
    evals = mon.update(make_batch(x))
    assert len(evals) == 9 and all(e.insufficient and not e.drift.any() for e in evals)
    assert not mon.drift_detected


def test_event_time_quiet_model_evaluated_every_pane(profile) -> None:
    """10 events/min, 1 h window of 12 x 5 min panes: every pane close evaluates."""
    cfg = MonitorConfig(panes=12, pane_seconds=300, min_samples=200, calibration_rounds=50)
    mon = ModelMonitor(profile, cfg)
    rng = np.random.default_rng(5)
    t0 = 1_700_000_100.0
    ts = t0 + np.arange(0, 6 * 3600, 6.0)  # 10/min for 6 hours
    x = rng.normal(size=(ts.size, F))
    x[ts >= t0 + 3 * 3600, 7] += 1.5
    evals, hits = [], []
    for k in range(0, ts.size, 37):
        ev = mon.update(make_batch(x[k : k + 37], ts=ts[k : k + 37]))
        evals += ev
        hits += [(e.window.end_ts, a.feature) for e in ev for a in e.alerts if a.state == "firing"]
    assert len(evals) == 6 * 12 - 1  # every 5-min pane but the still-open last one
    assert all(e.window.n <= 600 for e in evals)
    assert hits and hits[0][1] == "f7"
    assert t0 + 3 * 3600 <= hits[0][0] <= t0 + 4 * 3600


def test_event_time_late_events_follow_the_setting(profile) -> None:
    t0 = 1_700_000_000.0
    for policy, applied in (("deadletter", False), ("current", True)):
        cfg = MonitorConfig(panes=3, pane_seconds=60, allowed_lateness=10, late_policy=policy,
                            min_samples=10, calibration_rounds=10)
        mon = ModelMonitor(profile, cfg)
        rng = np.random.default_rng(0)
        mon.update(make_batch(rng.normal(size=(100, F)), ts=t0 + np.linspace(0, 130, 100)))
        # 65 s is within pane [60,120), closed since the watermark passed 120
        late = make_batch(rng.normal(size=(2, F)), ts=np.array([t0 + 65, t0 + 125]))
        mon.update(late)
        assert mon.late_events == 1
        assert list(mon.last_late_rows) == ([] if applied else [0])


def test_out_of_order_within_lateness_lands_in_its_pane(profile) -> None:
    t0 = 1_700_000_040.0  # a multiple of 60: panes start at t0
    cfg = MonitorConfig(panes=3, pane_seconds=60, allowed_lateness=30, min_samples=1,
                        calibration_rounds=10)
    mon = ModelMonitor(profile, cfg)
    ts = np.array([t0 + 10, t0 + 70, t0 + 50, t0 + 100])  # t0+50 arrives after t0+70
    first = mon.update(make_batch(np.zeros((4, F)), ts=ts))
    assert [e.window.n for e in first] == [2]  # watermark t0+70 closes [t0, t0+60) with t0+50 in it
    assert mon.late_events == 0
    evals = mon.update(make_batch(np.zeros((1, F)), ts=np.array([t0 + 200])))
    assert [e.window.n for e in evals] == [4]
