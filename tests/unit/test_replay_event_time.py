"""A replayed day (``driftline produce --replay FILE --speed 0``) gives the same alerts as
the same events fed live: arrival order jittered within the allowed lateness, other
message and batch boundaries. Event-time panes make the windows depend on event time
only, never on arrival order or batching."""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from driftline.detectors.monitor import MonitorConfig
from driftline.detectors.reference import build_profile
from driftline.schemas.codecs import encode_envelope_columns, encode_event
from driftline.schemas.limits import Limits
from driftline.schemas.models import DriftAlert
from driftline.streams.cli.kafka_commands import _replay
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_config import parse_model_configs
from driftline.streams.processor import Processor

F = 5
MODEL = "replay"
DAY0 = 1_699_920_000.0
CONFIG = b"models: {replay: {window: 1h, pane: 5m, allowed_lateness: 30s, min_samples: 200}}"


def processor() -> Processor:
    base = MonitorConfig(calibration_rounds=50)
    p = Processor(config=base, limits=Limits(), metrics=WorkerMetrics(CollectorRegistry()),
                  model_configs=parse_model_configs(CONFIG, base))
    rng = np.random.default_rng(99)
    p.set_reference(build_profile(MODEL, {f"f{i}": rng.normal(size=10_000) for i in range(F)},
                                  created_at=0.0))
    return p


def day_of_events(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Event times over a day (10..60 events/min) and features; f1 shifts at 15:00."""
    minute = np.arange(1440)
    rate = 10 + 50 * (0.5 - 0.5 * np.cos(2 * np.pi * minute / 1440))
    counts = rng.poisson(rate)
    ts = np.round(np.repeat(minute * 60.0, counts) + rng.uniform(0, 60, counts.sum()), 3) + DAY0
    x = np.round(rng.normal(size=(ts.size, F)), 5)
    x[ts >= DAY0 + 15 * 3600, 1] += 0.6
    return ts, x


def keyed(alerts: list[DriftAlert]) -> list[tuple[Any, ...]]:
    return [(a.alert_id, a.state, a.feature, a.window.pane, a.window.start_ts, a.window.end_ts,
             a.window.n) for a in alerts]


def test_replayed_day_gives_the_live_alerts(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ts, x = day_of_events(rng)
    # live: arrival = event time + a delay below the allowed lateness, envelopes of 1..300
    arrival = np.argsort(ts + rng.uniform(0, 25, ts.size), kind="stable")
    assert (np.diff(ts[arrival]) < 0).sum() > ts.size // 10  # really out of order
    live = processor()
    live_alerts: list[DriftAlert] = []
    k, offset = 0, 0
    while k < ts.size:
        values = []
        for _ in range(int(rng.integers(1, 8))):  # one consumed batch of a few messages
            m = int(rng.integers(1, 300))
            rows = arrival[k : k + m]
            if not rows.size:
                break
            values.append(encode_envelope_columns(MODEL, {
                "features": {f"f{i}": x[rows, i] for i in range(F)}, "ts": ts[rows]}, rows.size))
            k += rows.size
        out = live.process_columns("inference", values, [0] * len(values),
                                   list(range(offset, offset + len(values))),
                                   [float("nan")] * len(values))
        offset += len(values)
        assert out.dead_letters == []
        live_alerts += out.alerts

    # the same events written to a file in arrival order, replayed as fast as possible
    path = tmp_path / "day.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts", *(f"f{i}" for i in range(F))])
        for i in arrival.tolist():
            w.writerow([repr(float(ts[i])), *(repr(float(v)) for v in x[i])])
    sent: list[dict[str, Any]] = []
    assert _replay(path, MODEL, 0.0, sent.append, threading.Event()) == ts.size
    assert [e["ts"] for e in sent] == sorted(ts.tolist())
    replayed = processor()
    replay_alerts: list[DriftAlert] = []
    for k in range(0, len(sent), 2000):  # one message per event, as --single produces
        values = [encode_event(e) for e in sent[k : k + 2000]]
        out = replayed.process_columns("inference", values, [0] * len(values),
                                       list(range(k, k + len(values))),
                                       [float("nan")] * len(values))
        assert out.dead_letters == []
        replay_alerts += out.alerts

    assert any(a.state == "firing" and a.feature == "f1" for a in live_alerts)
    assert keyed(replay_alerts) == keyed(live_alerts)
    a, b = live.models[f"{MODEL}@0"].monitor, replayed.models[f"{MODEL}@0"].monitor
    assert a is not None and b is not None
    assert a.evaluations == b.evaluations == 24 * 12 - 1
    assert a.late_events == b.late_events == 0
