"""A quiet model on event-time windows through a real broker and worker: every pane is
evaluated (the last one by the idle timeout), and a shift is alerted on the topic."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from workers import isolated_settings, wait_for

from driftline.detectors.reference import build_profile
from driftline.streams.admin import ensure_topics
from driftline.streams.kafka_config import producer_config
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.subscriber import AlertSubscriber
from driftline.streams.worker import topic_specs

pytestmark = pytest.mark.integration

F = 5
PANE = 300.0
HOURS = 3
CONFIG = """
models:
  quiet:
    window: 1h
    pane: 5m
    allowed_lateness: 1s
    idle_timeout: 2s
    min_samples: 100
"""


def make_settings(bootstrap: str, unique: Callable[[str], str], **kw: Any) -> Settings:
    return isolated_settings(bootstrap, unique, "et", partitions=2, **kw)


def test_quiet_model_evaluated_every_pane_and_alerted_through_the_worker(
    kafka_bootstrap: str, unique_name: Callable[[str], str], start_worker: Any, tmp_path: Path
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG)
    s = make_settings(kafka_bootstrap, unique_name, model_config_file=str(path))
    ensure_topics(s.kafka(), topic_specs(s))
    rng = np.random.default_rng(21)
    ref = build_profile("quiet", {f"f{i}": rng.normal(size=5000) for i in range(F)},
                        created_at=0.0)
    p = Producer(producer_config(s.kafka()))
    p.produce(s.references_topic, ref.to_json(), key=b"quiet")
    assert p.flush(30) == 0

    # ~10 events per minute of event time for 3 hours, the last one 0.5 s before the end
    # of the last pane; feature f2 shifts by 1 sd after 2 hours
    t0 = 1_699_920_000.0
    ts = np.sort(t0 + rng.uniform(0, HOURS * 3600 - 1.0, 10 * 60 * HOURS))
    ts[-1] = t0 + HOURS * 3600 - 0.5
    x = rng.normal(size=(ts.size, F))
    x[ts >= t0 + 2 * 3600, 2] += 1.0

    w = start_worker(s)
    wait_for(lambda: w.worker.ready, 30, "worker ready")
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=50) as prod:
        for i in range(ts.size):
            assert prod.emit_event({"model": "quiet", "ts": float(ts[i]),
                                    "features": {f"f{j}": float(x[i, j]) for j in range(F)}})
        assert prod.flush(30) == 0
    wait_for(lambda: w.worker.stats.applied >= ts.size, 60, "events applied")
    (st,) = [st for st in w.worker.processor.models.values() if st.model == "quiet"]
    assert st.monitor is not None and st.monitor.config.pane_seconds == PANE
    # the idle timeout (2 s of wall time, plus 1 s lateness) closes the last pane
    wait_for(lambda: st.monitor is not None and st.monitor.evaluations == HOURS * 12, 30,
             "every pane evaluated")
    assert st.monitor.late_events == 0

    alerts = list(AlertSubscriber(s.kafka(), s.alerts_topic, timeout=30))
    firing = [a for a in alerts if a.state == "firing"]
    assert firing and firing[0].feature == "f2" and firing[0].model == "quiet"
    assert firing[0].window.end_ts is not None
    assert t0 + 2 * 3600 <= firing[0].window.end_ts <= t0 + 3 * 3600
    gauge = w.registry.get_sample_value("driftline_drift_insufficient_data", {"model": "quiet"})
    assert gauge == 0.0

    # a new configuration for the model through the references topic: new windows, live
    entry = tmp_path / "quiet.yaml"
    env = {**os.environ, "DRIFTLINE_REFERENCES_TOPIC": s.references_topic}
    entry.write_text("window: 30m\npane: 5m\nmin_samples: 150\n")
    cli = [sys.executable, "-m", "driftline.streams", "reference", "set", "--model", "quiet",
           "--config", str(entry), "--bootstrap", kafka_bootstrap]
    res = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "configuration set for quiet" in res.stdout

    def reconfigured() -> bool:
        mon = next(st.monitor for st in w.worker.processor.models.values()
                   if st.model == "quiet")
        return mon is not None and (mon.config.panes, mon.config.min_samples) == (6, 150)

    wait_for(reconfigured, 30, "the new configuration in use")
    entry.write_text("window: 30m\npane: 7m\n")
    res = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "whole number of panes" in res.stderr
