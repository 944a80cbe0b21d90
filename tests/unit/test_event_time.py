"""Event-time windows through the Processor: per-model configuration, watermark and
lateness, idle timeout with a controllable clock, insufficient data, quiet models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.schemas.codecs import encode_envelope_columns
from driftline.schemas.limits import Limits
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_config import (
    ModelConfigError,
    WindowSpec,
    decode_record,
    encode_record,
    load_model_configs,
    parse_duration,
    parse_model_configs,
    record_key,
)
from driftline.streams.processor import Processor
from driftline.streams.settings import Settings

TOPIC = "inference"
F = 6
T0 = 1_700_000_400.0  # a multiple of 5 min and of 1 min

BASE = MonitorConfig(pane_size=500, min_samples=1000, calibration_rounds=30)

CONFIG = b"""
defaults:
  pane_events: 400
  panes: 3
  min_samples: 600
models:
  quiet:
    window: 1h
    pane: 5m
    allowed_lateness: 30s
    idle_timeout: 2m
    min_samples: 100
  lenient:
    window: 3m
    pane: 1m
    allowed_lateness: 10s
    late_policy: current
    min_samples: 10
"""


class Clock:
    """Wall time the test moves by hand."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def profile(model: str, seed: int = 7) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    cols = {f"f{i}": rng.normal(size=8000) for i in range(F)}
    return build_profile(model, cols, created_at=0.0, multivariate=False)


class Feed:
    """Columns envelopes of one model on partition 0, with consecutive offsets."""

    def __init__(self, processor: Processor, model: str) -> None:
        self.p, self.model, self.offset = processor, model, 0

    def send(self, x: np.ndarray, ts: np.ndarray, per_message: int = 50):
        out = []
        values, offsets = [], []
        for k in range(0, len(ts), per_message):
            cols = {"features": {f"f{i}": x[k : k + per_message, i] for i in range(F)},
                    "ts": ts[k : k + per_message]}
            values.append(encode_envelope_columns(self.model, cols, len(ts[k : k + per_message])))
            offsets.append(self.offset)
            self.offset += 1
        out = self.p.process_columns(TOPIC, values, [0] * len(values), offsets,
                                     [float("nan")] * len(values))
        return out


def make(configs: bytes = CONFIG, clock: Clock | None = None) -> tuple[Processor, WorkerMetrics]:
    metrics = WorkerMetrics(CollectorRegistry())
    p = Processor(config=BASE, limits=Limits(), metrics=metrics,
                  model_configs=parse_model_configs(configs, BASE, source="test.yaml"),
                  clock=clock or Clock(T0))
    for m in ("quiet", "lenient", "busy"):
        p.set_reference(profile(m))
    return p, metrics


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# -- configuration ---------------------------------------------------------------------
def test_durations() -> None:
    assert [parse_duration(v) for v in ("30s", "5m", "1h", "1.5h", "1d", 90, "250ms", "12")] \
        == [30.0, 300.0, 3600.0, 5400.0, 86400.0, 90.0, 0.25, 12.0]
    for bad in ("5 minutes", "-1s", "1x", True, None, "", "inf"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_model_entries_inherit_defaults_and_settings() -> None:
    cfgs = parse_model_configs(CONFIG, replace(BASE, target_run_length=5e5),
                               base_idle_timeout=600.0)
    quiet = cfgs.monitor_config("quiet")
    assert (quiet.pane_seconds, quiet.panes, quiet.allowed_lateness, quiet.min_samples) == \
        (300.0, 12, 30.0, 100)
    assert quiet.target_run_length == 5e5  # from the settings
    assert cfgs.idle_timeout("quiet") == 120.0
    other = cfgs.monitor_config("anything-else")  # not listed: the file's defaults
    assert (other.pane_seconds, other.pane_size, other.panes, other.min_samples) == \
        (None, 400, 3, 600)
    assert cfgs.idle_timeout("anything-else") == 600.0  # from the settings
    assert cfgs.monitor_config("lenient").late_policy == "current"


@pytest.mark.parametrize("text, message", [
    (b"models: {a: {window: 1h}}", "models.a: Value error, event-time windows need both"),
    (b"models: {a: {window: 1h, pane: 7m}}", "whole number of panes"),
    (b"models: {a: {pane_events: 10, window: 1h, pane: 5m}}", "exclude each other"),
    (b"models: {a: {windw: 1h}}", "models.a.windw: Extra inputs are not permitted"),
    (b"models: {a: {pane: 5x, window: 1h}}", "models.a.pane: Value error, not a duration"),
    (b"models: {a: {late_policy: drop}}", "models.a.late_policy"),
    (b"models: {a: {min_samples: 0}}", "models.a.min_samples"),
    (b"defaults: {window: 1h, pane: 5m}\nmodels: {a: {panes: 3}}", "panes contradicts"),
    (b"- just a list", "expected a mapping"),
    (b"models: {a: [unclosed", "not valid YAML"),
])
def test_invalid_configs_are_refused_with_a_clear_error(text: bytes, message: str) -> None:
    with pytest.raises(ModelConfigError) as err:
        parse_model_configs(text, BASE, source="models.yaml")
    assert str(err.value).startswith("models.yaml: ")
    assert message in str(err.value)


def test_config_file_from_settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.yaml"
    path.write_bytes(CONFIG)
    monkeypatch.setenv("DRIFTLINE_MODEL_CONFIG", str(path))
    cfgs = Settings().model_configs()
    assert cfgs.monitor_config("quiet").pane_seconds == 300.0
    assert cfgs.source == str(path)
    monkeypatch.delenv("DRIFTLINE_MODEL_CONFIG")
    monkeypatch.setenv("DRIFTLINE_MODEL_CONFIG_FILE", str(path))
    assert Settings().model_config_file == str(path)
    monkeypatch.delenv("DRIFTLINE_MODEL_CONFIG_FILE")
    monkeypatch.setenv("MODEL_CONFIG_FILE", str(path))  # every setting needs the prefix
    assert Settings().model_config_file is None
    assert Settings(model_config_file=str(path)).model_config_file == str(path)
    (tmp_path / "m.json").write_text('{"models": {"x": {"pane_events": 250}}}')
    assert load_model_configs(tmp_path / "m.json", BASE).monitor_config("x").pane_size == 250
    with pytest.raises(ModelConfigError, match="cannot read"):
        load_model_configs(tmp_path / "missing.yaml", BASE)


def test_processor_builds_each_models_monitor_from_its_entry() -> None:
    p, _ = make()
    rng = np.random.default_rng(0)
    for m in ("quiet", "busy"):
        Feed(p, m).send(rng.normal(size=(10, F)), T0 + np.arange(10.0))
    quiet, busy = p.models["quiet@0"].monitor, p.models["busy@0"].monitor
    assert quiet is not None and busy is not None
    assert quiet.config == p.config_for("quiet") and quiet.config.pane_seconds == 300.0
    assert busy.config.pane_seconds is None and busy.config.pane_size == 400


def test_config_change_starts_new_windows_only_for_changed_models() -> None:
    p, _ = make()
    rng = np.random.default_rng(1)
    for m in ("quiet", "busy"):
        Feed(p, m).send(rng.normal(size=(120, F)), T0 + np.arange(120.0))
    busy_before = p.models["busy@0"].monitor
    changed = parse_model_configs(CONFIG.replace(b"min_samples: 100", b"min_samples: 50"), BASE)
    assert p.set_model_configs(changed) == ["quiet@0"]
    quiet = p.models["quiet@0"].monitor
    assert quiet is not None and quiet.config.min_samples == 50 and quiet.ring.seq == 0
    assert p.models["busy@0"].monitor is busy_before

    # a snapshot taken under the old configuration restores into new windows too
    blob = p.models["busy@0"].snapshot()
    p2 = Processor(config=BASE, limits=Limits(), metrics=WorkerMetrics(CollectorRegistry()),
                   model_configs=parse_model_configs(CONFIG.replace(b"pane_events: 400",
                                                                    b"pane_events: 200"), BASE),
                   snapshot_loader={"busy@0": blob}.get)
    p2.set_reference(profile("busy"))
    st = p2.state_of("busy", 0)
    assert st is not None and st.monitor is not None
    assert st.monitor.config.pane_size == 200 and st.monitor.ring.seq == 0
    assert st.events_applied == 120  # the accounting and offsets survive
    assert st.last_offset(TOPIC, 0) == p.models["busy@0"].last_offset(TOPIC, 0)


# -- watermark and lateness ------------------------------------------------------------
def test_out_of_order_within_lateness_lands_in_its_pane() -> None:
    p, metrics = make()
    feed = Feed(p, "lenient")  # 1 min panes, 10 s lateness
    rng = np.random.default_rng(2)
    dead = []
    for part in (np.append(np.arange(0, 60, 2.0), 65.0), [58.0, 69.0, 55.0], [130.0]):
        ts = T0 + np.asarray(part)
        dead += feed.send(rng.normal(size=(ts.size, F)), ts, per_message=1).dead_letters
        mon = p.models["lenient@0"].monitor
        assert mon is not None
        if part[-1] != 130.0:
            assert not mon.ring.closed  # the watermark (69 - 10 s) has not passed 60 s
    assert dead == [] and mon.late_events == 0
    # the watermark (130 - 10) closed [0, 60) with the two stragglers in it, and [60, 120)
    assert [len(mon.ring.closed)] == [2] and [q.n for q in mon.ring.closed] == [32, 2]
    assert sample(metrics, "driftline_worker_watermark_seconds", model="lenient") == T0 + 120.0
    assert sample(metrics, "driftline_worker_late_events_total", model="lenient") is None


def test_late_events_deadlettered_or_applied_by_the_setting() -> None:
    text = CONFIG.replace(b"late_policy: current", b"late_policy: deadletter")
    for policy, configs in (("deadletter", text), ("current", CONFIG)):
        p, metrics = make(configs)
        feed = Feed(p, "lenient")
        rng = np.random.default_rng(3)
        feed.send(rng.normal(size=(40, F)), T0 + np.linspace(0, 130, 40))
        newest = p.models["lenient@0"].monitor.ring.open[int((T0 + 120) // 60)]  # type: ignore[union-attr]
        before = newest.n
        out = feed.send(rng.normal(size=(3, F)), T0 + np.array([50.0, 125.0, 61.0]),
                        per_message=1)  # 50 s and 61 s: their panes closed at watermark 120
        st = p.models["lenient@0"]
        assert st.monitor is not None and st.monitor.late_events == 2
        assert sample(metrics, "driftline_worker_late_events_total", model="lenient") == 2.0
        if policy == "deadletter":
            assert [(d.reason.split(":")[0], d.offset) for d in out.dead_letters] == \
                [("late", 1), ("late", 3)]
            assert out.applied == 1 and st.events_late == 2
            assert sample(metrics, "driftline_worker_deadletter_total", reason="late") == 2.0
        else:  # applied to the newest open pane
            assert out.dead_letters == [] and out.applied == 3
            assert newest.n == before + 3


def test_a_late_single_event_carries_its_message_as_payload() -> None:
    text = CONFIG.replace(b"late_policy: current", b"late_policy: deadletter")
    p, _ = make(text)
    feed = Feed(p, "lenient")
    rng = np.random.default_rng(4)
    feed.send(rng.normal(size=(40, F)), T0 + np.linspace(0, 130, 40))
    out = feed.send(rng.normal(size=(1, F)), T0 + np.array([50.0]), per_message=1)
    (dead,) = out.dead_letters
    assert dead.reason.startswith("late") and dead.payload  # the one-event message itself
    out = feed.send(rng.normal(size=(2, F)), T0 + np.array([50.0, 125.0]), per_message=2)
    (dead,) = out.dead_letters
    assert dead.payload == b""  # an envelope's other events were applied: not repeated


@pytest.mark.parametrize("poison", [T0 + 1e12, T0 + 2 * 86_400.0, -5.0, 1e300])
def test_an_event_time_far_ahead_of_the_clock_is_dead_lettered_not_applied(
        poison: float) -> None:
    """One event a day or more ahead of the worker's clock (or before 1970) would move
    an event-time model's watermark past every real event for good: it goes to the
    dead-letter topic and the model carries on."""
    clock = Clock(T0 + 200)
    p, metrics = make(clock=clock)
    feed = Feed(p, "lenient")
    rng = np.random.default_rng(5)
    feed.send(rng.normal(size=(40, F)), T0 + np.linspace(0, 100, 40))
    out = feed.send(rng.normal(size=(2, F)), np.array([poison, T0 + 110]), per_message=1)
    assert [d.reason.split(":")[0] for d in out.dead_letters] == ["ts_out_of_range"]
    assert out.dead_letters[0].offset == 1 and out.dead_letters[0].payload
    assert out.applied == 1
    assert sample(metrics, "driftline_worker_deadletter_total", reason="ts_out_of_range") == 1.0
    out = feed.send(rng.normal(size=(40, F)), T0 + np.linspace(111, 200, 40))
    assert out.applied == 40 and out.dead_letters == []  # nothing is late after it
    st = p.models["lenient@0"]
    assert st.monitor is not None and st.monitor.ring.max_ts == T0 + 200
    # a time within DRIFTLINE_MAX_FUTURE_S (clock skew) is taken
    out = feed.send(rng.normal(size=(1, F)), np.array([T0 + 200 + 3600.0]), per_message=1)
    assert out.applied == 1 and out.dead_letters == []


# -- idle timeout and insufficient data ------------------------------------------------
def test_idle_timeout_closes_the_quiet_models_panes_by_wall_time() -> None:
    clock = Clock(T0)
    p, metrics = make(clock=clock)
    feed = Feed(p, "quiet")  # 5 min panes, 30 s lateness, 2 min idle timeout
    rng = np.random.default_rng(4)
    ts = T0 + np.arange(0, 32 * 60, 6.0)  # 10 events/min for 32 minutes
    clock.t = ts[-1]
    feed.send(rng.normal(size=(ts.size, F)), ts)
    mon = p.models["quiet@0"].monitor
    assert mon is not None
    assert mon.evaluations == 6  # panes up to [25, 30) min: the watermark is 31.4 min
    assert p.tick() == [] and mon.evaluations == 6  # nothing due yet
    clock.t = ts[-1] + 119.0
    p.tick()
    assert mon.evaluations == 6  # quiet for less than the idle timeout
    clock.t = ts[-1] + 150.0  # quiet 2.5 min: event time 34.4 min, watermark 33.9 min
    p.tick()
    assert mon.evaluations == 6  # pane [30, 35) is not passed yet
    clock.t = ts[-1] + 240.0  # watermark 35.5 min: pane [30, 35) closes
    p.tick()
    assert mon.evaluations == 7 and mon.ring.last_closed == int((T0 + 30 * 60) // 300)
    assert sample(metrics, "driftline_drift_insufficient_data", model="quiet") == 0.0
    # traffic stopped: the window drains pane by pane into insufficient data, boundedly
    clock.t = ts[-1] + 3 * 3600.0
    p.tick()
    assert mon.ring.total_n == 0 and mon.evaluations <= 7 + 12
    assert sample(metrics, "driftline_drift_insufficient_data", model="quiet") == 1.0
    # events resume in a new pane: applied, not late
    resumed = T0 + 3 * 3600.0 + 32 * 60 + np.arange(0, 60, 6.0)
    out = feed.send(rng.normal(size=(resumed.size, F)), resumed)
    assert out.dead_letters == [] and out.applied == resumed.size


def test_idle_timeout_count_panes_close_the_partial_pane_and_start_a_new_one() -> None:
    clock = Clock(T0)
    p, _ = make(b"defaults: {pane_events: 100, panes: 3, min_samples: 1, idle_timeout: 30s}",
                clock=clock)
    feed = Feed(p, "busy")
    rng = np.random.default_rng(5)
    feed.send(rng.normal(size=(250, F)), np.full(250, np.nan))
    mon = p.models["busy@0"].monitor
    assert mon is not None and mon.evaluations == 2 and mon.ring.open[2].n == 50
    clock.t += 31
    p.tick()
    assert mon.evaluations == 3 and not mon.ring.open and mon.ring.closed[-1].n == 50
    blob = mon.snapshot()
    feed.send(rng.normal(size=(100, F)), np.full(100, np.nan))
    assert mon.evaluations == 4 and [q.n for q in mon.ring.closed] == [100, 50, 100]
    restored, _ = ModelMonitor.from_snapshot(mon.reference, blob)
    restored.update(_batch(rng.normal(size=(100, F))))
    assert [q.n for q in restored.ring.closed] == [100, 50, 100]


def _batch(x: np.ndarray):  # an EventBatch without Kafka metadata
    from synth import make_batch

    return make_batch(x)


def test_insufficient_window_is_reported_never_decided() -> None:
    p, metrics = make()
    feed = Feed(p, "quiet")  # min_samples 100
    rng = np.random.default_rng(6)
    ts = T0 + np.arange(0, 16 * 60, 15.0)  # 4/min: 20 per pane
    x = rng.normal(size=(ts.size, F)) + 4.0  # drifted far beyond any threshold
    out = feed.send(x, ts)
    mon = p.models["quiet@0"].monitor
    assert mon is not None and mon.evaluations == 3 and mon.ring.total_n == 60
    assert out.alerts == [] and not mon.drift_detected
    assert sample(metrics, "driftline_drift_insufficient_data", model="quiet") == 1.0
    ts2 = ts[-1] + np.arange(1, 20 * 60, 2.0)  # 30/min: the window fills
    out = feed.send(rng.normal(size=(ts2.size, F)) + 4.0, ts2)
    assert sample(metrics, "driftline_drift_insufficient_data", model="quiet") == 0.0
    data = [a for a in out.alerts if a.kind == "data"]
    assert [a.state for a in data] == ["firing"]
    assert data[0].window.n >= 100
    # the +4 sd shift also leaves the reference's range: a data-quality alert, same window
    assert {(a.kind, a.statistic) for a in out.alerts if a.kind != "data"} <= {
        ("quality", "out_of_range_rate")}
    assert all(a.window.n >= 100 for a in out.alerts)


# -- a quiet model ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_quiet_model_is_evaluated_every_pane_and_alerts_on_a_shift(seed: int) -> None:
    """~10 events/min of event time; the feeder runs on a clock that follows event time,
    one envelope per simulated minute, ticking the idle timeout every minute."""
    clock = Clock(T0)
    p, _ = make(clock=clock)
    feed = Feed(p, "quiet")
    rng = np.random.default_rng(100 + seed)
    hours = 8
    alerts = []
    closes = []
    for minute in range(hours * 60):
        start = T0 + minute * 60.0
        k = int(rng.poisson(10))
        ts = np.sort(start + rng.uniform(0, 60, k))
        x = rng.normal(size=(k, F))
        if minute >= 4 * 60:
            x[:, 2] += 1.0
        if k:
            out = feed.send(x, ts, per_message=max(k, 1))
            alerts += out.alerts
        clock.t = start + 60.0
        alerts += p.tick()
        mon = p.models["quiet@0"].monitor
        assert mon is not None
        closes.append(mon.ring.last_closed)
    mon = p.models["quiet@0"].monitor
    assert mon is not None and mon.evaluations == hours * 12 - 1  # the last pane is open
    assert set(np.diff(closes[6::5]).tolist()) == {1}  # a pane closed every 5 minutes
    clock.t += 150.0  # quiet for more than the idle timeout, past the last pane's end
    alerts += p.tick()
    assert mon.evaluations == hours * 12
    firing = [a for a in alerts if a.state == "firing"]
    assert firing, "the shift was not detected"
    first = firing[0]
    assert first.feature == "f2" and first.window.end_ts is not None
    assert T0 + 4 * 3600 <= first.window.end_ts <= T0 + 5 * 3600
    assert all(a.window.end_ts is None or a.window.end_ts >= T0 + 4 * 3600 for a in firing)


# -- a model's configuration on the references topic -----------------------------------
def test_config_record_round_trip_and_refusals() -> None:
    entry = WindowSpec(window=600.0, pane=60.0, min_samples=50)
    model, back = decode_record(encode_record("m-1", entry))  # type: ignore[misc]
    assert (model, back) == ("m-1", entry)
    assert record_key("m-1") != b"m-1"
    assert decode_record(profile("x").to_json()) is None  # a reference profile
    for bad in (b'{"schema": "driftline.model-config/v1", "model": "m", "config": {"pane": 1}}',
                b'{"schema": "driftline.model-config/v1", "model": 3, "config": {}}',
                b'{"schema": "driftline.model-config/v1", "model": "m", "config": {"x": 1}}',
                b'{"schema": "driftline.model-config/v1", "model": "m", "config"'):
        with pytest.raises(ModelConfigError):
            decode_record(bad)


def test_config_entry_from_the_topic_replaces_the_files_and_restarts_windows() -> None:
    p, _ = make()
    rng = np.random.default_rng(8)
    Feed(p, "busy").send(rng.normal(size=(120, F)), T0 + np.arange(120.0))
    Feed(p, "quiet").send(rng.normal(size=(120, F)), T0 + np.arange(120.0))
    quiet_before = p.models["quiet@0"].monitor
    _, entry = decode_record(encode_record("busy", WindowSpec(window=600.0, pane=60.0)))  # type: ignore[misc]
    assert p.set_model_entry("busy", entry)
    busy = p.models["busy@0"].monitor
    assert busy is not None and busy.config.pane_seconds == 60.0 and busy.config.panes == 10
    assert busy.config.min_samples == 600  # still inherits the file's defaults
    assert busy.ring.seq == 0 and p.models["quiet@0"].monitor is quiet_before
    # an entry that cannot combine with the defaults is refused, nothing changes
    p2, _ = make(b"defaults: {window: 1h, pane: 5m, min_samples: 10}")
    assert not p2.set_model_entry("busy", WindowSpec(panes=7))  # contradicts window / pane
    assert p2.config_for("busy").panes == 12
