"""Per-segment windows: grouping, bounds, false alarms, confined drift, round trip, metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from synth import make_batch

from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.detectors.segments import OTHER, OTHER_SEGMENT, canonical, parse
from driftline.schemas.codecs import encode_envelope_rows
from driftline.schemas.limits import Limits
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.processor import Incoming, Processor

F = 8
REGIONS = ("eu", "us", "apac", "latam")


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(20_000, F))
    return build_profile("m", {f"f{i}": ref[:, i] for i in range(F)}, created_at=0.0)


def with_segments(x: np.ndarray, segs: list[dict[str, str] | None], offset0: int = 0):
    b = make_batch(x, offset0=offset0)
    col = np.empty(len(segs), dtype=object)
    col[:] = segs
    return replace(b, segment=col)


def region_stream(rng: np.random.Generator, n: int, shift: float = 0.0, feature: int = 2,
                  start: int = 0):
    """Four equally likely regions; from row ``start`` on, region=eu's ``feature`` is shifted."""
    x = rng.normal(size=(n, F))
    reg = rng.integers(0, len(REGIONS), n)
    eu = (reg == 0) & (np.arange(n) >= start)
    x[eu, feature] += shift
    return x, [{"region": REGIONS[r]} for r in reg.tolist()]


def test_canonical_values_are_sorted_filtered_and_unambiguous() -> None:
    assert canonical({"tier": "gold", "region": "eu"}) == "region=eu,tier=gold"
    assert canonical({"tier": "gold", "region": "eu"}, ("region",)) == "region=eu"
    assert canonical({"tier": "gold"}, ("region",)) == ""
    odd = {"a,b": "x=y", "c": "50%"}
    assert parse(canonical(odd)) == odd
    assert canonical({"a": "b,c=d"}) != canonical({"a": "b", "c": "d"})
    assert parse(OTHER) == OTHER_SEGMENT


def test_rings_are_bounded_and_the_rest_is_pooled_and_counted(profile) -> None:
    mon = ModelMonitor(profile, MonitorConfig(pane_size=100, min_samples=200, segment_max=4,
                                              calibration_rounds=20))
    rng = np.random.default_rng(1)
    segs: list[dict[str, str] | None] = [{"user": f"u{i % 20}", "region": "eu"} for i in range(1000)]
    segs[::10] = [None] * 100  # unsegmented rows only feed the model's window
    mon.update(with_segments(rng.normal(size=(1000, F)), segs))
    s = mon.segments
    assert s is not None
    assert s.labels == [f"region=eu,user=u{i}" for i in (1, 2, 3, 4)] + [OTHER]
    assert sum(s.events.values()) == 900 and s.overflow_events == 900 - 4 * 50
    assert s.last_events == s.events
    assert mon.ring.seq == 1000

    keyed = ModelMonitor(profile, replace(mon.config, segment_keys=("region",)),
                         calibration=mon.calibration)
    keyed.update(with_segments(rng.normal(size=(1000, F)), segs))
    assert keyed.segments is not None and keyed.segments.labels == ["region=eu"]
    off = ModelMonitor(profile, replace(mon.config, segments=False), calibration=mon.calibration)
    off.update(with_segments(rng.normal(size=(1000, F)), segs))
    assert off.segments is None


def test_false_alarm_rate_with_segments_stays_at_target(profile) -> None:
    """No drift, four segments plus a pooled fifth and unsegmented rows: the evaluations
    of the model and of every segment together reject no more often than the target."""
    target = 20_000.0
    cfg = MonitorConfig(panes=4, pane_size=500, min_samples=1000, target_run_length=target,
                        segment_max=4, calibration_rounds=100)
    mon = ModelMonitor(profile, cfg)
    rng = np.random.default_rng(12)
    names = [*REGIONS, "mena", "oceania", None]
    weights = np.array([0.3, 0.25, 0.15, 0.1, 0.05, 0.05, 0.1])
    total, rejections, evaluations = 400_000, {"": 0, "seg": 0}, {"": 0, "seg": 0}
    for k in range(0, total, 5000):
        reg = rng.choice(len(names), size=5000, p=weights)
        segs = [None if names[r] is None else {"region": names[r]} for r in reg.tolist()]
        for ev in mon.update(with_segments(rng.normal(size=(5000, F)), segs, k)):
            if ev.insufficient:
                continue
            side = "seg" if ev.segment else ""
            evaluations[side] += 1
            rejections[side] += int(ev.drift.any())
    assert mon.segments is not None and len(mon.segments.labels) == 5
    assert evaluations[""] == total // 500 - 1 and evaluations["seg"] > 0.8 * total // 500
    # the budget is total / target false rejections (half of it is spent on average)
    print("false rejections", rejections, "evaluations", evaluations)
    assert rejections[""] + rejections["seg"] <= total / target, rejections


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drift_in_one_segment_is_flagged_for_it_and_not_overall(profile, seed) -> None:
    mon = ModelMonitor(profile, MonitorConfig(calibration_rounds=100))
    rng = np.random.default_rng(40 + seed)
    start = 40_000
    x, segs = region_stream(rng, 120_000, shift=0.2, start=start)
    evals = []
    for k in range(0, len(x), 2000):
        evals += mon.update(with_segments(x[k : k + 2000], segs[k : k + 2000], k))
    firing = [a for e in evals for a in e.alerts if a.state == "firing"]
    assert [a.segment for a in firing] == [{"region": "eu"}]
    (a,) = firing
    assert a.feature == "f2" and a.top_features[0].name == "f2" and a.kind == "data"
    assert a.score > a.threshold
    ev = next(e for e in evals if a in e.alerts)
    assert ev.segment == "region=eu" and ev.index >= start
    overall = [e for e in evals if not e.segment and not e.insufficient]
    assert max(float((e.chi2 / e.threshold).max()) for e in overall) < 1.0
    assert not any(e.drift.any() for e in overall)

    quiet = ModelMonitor(profile, mon.config, calibration=mon.calibration)
    x0, segs0 = region_stream(np.random.default_rng(90 + seed), 120_000)
    for k in range(0, len(x0), 2000):
        assert not [a for e in quiet.update(with_segments(x0[k : k + 2000], segs0[k : k + 2000],
                                                          k)) for a in e.alerts]


def test_snapshot_round_trip_with_segments_is_exact(profile) -> None:
    cfg = MonitorConfig(pane_size=300, min_samples=600, segment_max=3, calibration_rounds=30)
    a = ModelMonitor(profile, cfg)
    rng = np.random.default_rng(8)
    x, segs = region_stream(rng, 30_000, shift=0.8, start=9_000)
    segs[5::7] = [{"region": "mena"}] * len(segs[5::7])  # four values + pooled "other"
    e0 = a.update(with_segments(x[:12_345], segs[:12_345]))
    blob = a.snapshot()
    b = ModelMonitor(profile, cfg, calibration=a.calibration)
    b.restore(blob)
    assert b.snapshot() == blob
    assert b.segments is not None and b.segments.labels == a.segments.labels  # type: ignore[union-attr]
    assert OTHER in b.segments.labels
    ea = a.update(with_segments(x[12_345:], segs[12_345:], 12_345))
    eb = b.update(with_segments(x[12_345:], segs[12_345:], 12_345))
    assert [(e.segment, e.index) for e in ea] == [(e.segment, e.index) for e in eb]
    assert any(e.segment for e in ea)
    for u, v in zip(ea, eb, strict=True):
        np.testing.assert_array_equal(u.chi2, v.chi2)
        assert [x.alert_id for x in u.alerts] == [x.alert_id for x in v.alerts]
    assert a.snapshot() == b.snapshot()
    fired = {a_.segment["region"] for e in e0 + ea for a_ in e.alerts if a_.segment}
    assert fired == {"eu"}, fired


def test_segment_windows_do_not_depend_on_how_rows_are_batched(profile) -> None:
    """Count panes per segment: one big batch and the same rows in uneven pieces (shared
    segment objects, as decoders hand them over, and one dict per row) close the same
    panes with the same evaluations, alerts and state."""
    cfg = MonitorConfig(pane_size=250, min_samples=500, segment_max=3, calibration_rounds=20)
    rng = np.random.default_rng(11)
    x, segs = region_stream(rng, 9_000, shift=1.0, start=3_000)
    shared = {r: {"region": r} for r in REGIONS}
    segs = [None if i % 13 == 0 else shared[s["region"]] if i % 2 else s
            for i, s in enumerate(segs)]
    whole = ModelMonitor(profile, cfg)
    pieces = ModelMonitor(profile, cfg, calibration=whole.calibration)
    ew = whole.update(with_segments(x, segs))
    ep: list = []
    k = 0
    for size in [1, 7, 250, 3, 999, 2_000, 1, 1_739] * 3:
        if k < len(x):
            ep += pieces.update(with_segments(x[k : k + size], segs[k : k + size], k))
            k += size
    assert k >= len(x)
    ew.sort(key=lambda e: (e.segment, e.window.pane))  # the order across windows differs
    ep.sort(key=lambda e: (e.segment, e.window.pane))
    assert [(e.segment, e.window.pane, e.window.n) for e in ew] == \
        [(e.segment, e.window.pane, e.window.n) for e in ep]
    # segment windows spend the same budget and alert alike (the model's first pane may
    # close before or after the model shows its first segment, which halves its budget)
    assert [(e.alpha, [a.alert_id for a in e.alerts]) for e in ew if e.segment] == \
        [(e.alpha, [a.alert_id for a in e.alerts]) for e in ep if e.segment]
    assert any(e.segment == "region=eu" and e.alerts for e in ew)
    for u, v in zip(ew, ep, strict=True):
        np.testing.assert_array_equal(u.chi2, v.chi2)
        assert (u.window.first_offset, u.window.last_offset) == \
            (v.window.first_offset, v.window.last_offset)
    seg_w, seg_p = whole.segments, pieces.segments
    assert seg_w is not None and seg_p is not None
    assert seg_w.state()[0] == seg_p.state()[0]
    for key, arr in seg_w.state()[1].items():
        np.testing.assert_array_equal(arr, seg_p.state()[1][key])


def test_event_time_segment_panes_close_with_the_models(profile) -> None:
    cfg = MonitorConfig(panes=3, pane_seconds=10.0, min_samples=100, calibration_rounds=20)
    mon = ModelMonitor(profile, cfg)
    rng = np.random.default_rng(2)
    closed: list[tuple[str, int]] = []
    for t in range(0, 60, 2):
        x, segs = region_stream(rng, 200)
        b = replace(with_segments(x, segs), ts=np.full(200, float(t)))
        closed += [(e.segment, e.window.pane) for e in mon.update(b)]
    panes = sorted({p for _, p in closed})
    assert panes == [0, 1, 2, 3, 4]
    for p in panes:
        assert {s for s, q in closed if q == p} == {"", *(f"region={r}" for r in REGIONS)}


def test_worker_metrics_carry_segment_series_and_forget_them() -> None:
    registry = CollectorRegistry()
    proc = Processor(config=MonitorConfig(pane_size=500, min_samples=1000, calibration_rounds=20),
                     limits=Limits(), metrics=WorkerMetrics(registry),
                     auto_reference_events=2000)
    rng = np.random.default_rng(3)
    msgs = []
    for k in range(40):
        x, segs = region_stream(rng, 250)
        evs = [{"features": {f"f{j}": float(v) for j, v in enumerate(row)}, "segment": s}
               for row, s in zip(x.tolist(), segs, strict=True)]
        msgs.append(Incoming("inference", 0, k, encode_envelope_rows("m", evs)))
    proc.process(msgs)
    events = {s.labels["segment"]: s.value for m in registry.collect()
              if m.name == "driftline_segment_events" for s in m.samples
              if s.name.endswith("_total")}
    assert set(events) == {f"region={r}" for r in REGIONS}
    assert sum(events.values()) == 40 * 250 - 2000  # the first 2,000 built the reference
    scored = {(s.labels["segment"], s.labels["feature"]) for m in registry.collect()
              if m.name == "driftline_segment_drift_score" for s in m.samples}
    assert ("region=eu", "f0") in scored
    proc.drop(list(proc.models))
    assert not [s for m in registry.collect() for s in m.samples
                if m.name.startswith("driftline_segment")]


def test_segment_windows_are_calibrated_at_their_smallest_size() -> None:
    """A column with categories at 0.1% and 0.02%: segment windows use the scale measured
    at their smallest size (``min_samples``), the model's stays as it was. The rare
    categories are expected 0.1 and 0.02 times in a 100-event window: pooled and tested
    exactly (stats.SPARSE_EXPECTED), the column's statistic keeps to the asymptotic law
    there too (Pearson's terms alone needed a scale of ~2.6)."""
    rng = np.random.default_rng(0)
    cats = rng.choice(["a", "b", "c", "rare", "rarer"], 5000, p=[0.5, 0.3, 0.1988, 0.001, 0.0002])
    ref = build_profile("m", {"f0": rng.normal(size=5000), "c": cats.astype(object)},
                        created_at=0.0, multivariate=False)
    mon = ModelMonitor(ref, MonitorConfig(pane_size=1000, min_samples=100))
    model_scale = mon.calibration.scale.copy()
    seg = mon.segment_calibration.scale
    c = ref.feature_names.index("c")
    assert 1.0 <= seg[c] <= 1.1
    assert np.all(seg >= model_scale) and np.array_equal(mon.calibration.scale, model_scale)
    assert mon.segment_calibration is mon.segment_calibration  # computed once
