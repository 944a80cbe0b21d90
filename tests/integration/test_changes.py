"""Upstream changes and exemplars end to end: a real broker, a worker, the CLI and the SDK."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner
from workers import env_of, isolated_settings, wait_for

from driftline.streams.admin import ensure_topics, iter_to_end
from driftline.streams.changes import ChangeEvent
from driftline.streams.cli.main import app
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.subscriber import AlertSubscriber
from driftline.streams.worker import Worker, topic_specs

pytestmark = pytest.mark.integration
INVALID_CHANGE = b'{"model": "m", "kind": "deploy"}'  # no ts, no text

T0 = 1_700_000_001.3  # pane boundaries (multiples of 60 s) never meet an envelope boundary
RATE = 10.0  # events per second of event time
BUMP = 12_000  # event index of the model_version bump (t = T0 + 20 min)
DRIFT = 18_000  # event index where f1 drifts (t + 10 min)
TOTAL = DRIFT + 1_800  # three more minutes


def settings(bootstrap: str, unique: Callable[[str], str]) -> Settings:
    return isolated_settings(bootstrap, unique, partitions=2, auto_reference_events=3000,
                             pane_seconds=60.0, panes=5, min_samples=1000)


@pytest.fixture
def worker(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Iterator[Worker]:
    s = settings(kafka_bootstrap, unique_name)
    ensure_topics(s.kafka(), topic_specs(s))
    w = Worker(s, CollectorRegistry())
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    wait_for(lambda: w.ready, 60, "worker ready")
    yield w
    w.request_stop()
    t.join(30)
    assert not t.is_alive()


def test_alert_carries_version_bump_annotations_and_drifted_exemplars(
    worker: Worker, kafka_bootstrap: str
) -> None:
    s = worker.settings
    ts = [T0 + i / RATE for i in range(TOTAL)]
    t_bump = ts[BUMP]

    # a message that is no change event is counted and ignored
    raw = Producer(s.kafka())
    raw.produce(s.changes_topic, INVALID_CHANGE, key=b"m")
    assert raw.flush(30) == 0
    wait_for(lambda: worker.metrics.registry.get_sample_value(
        "driftline_change_events_invalid_total") == 1.0, 30, "invalid change counted")

    # an operator's annotation, posted with the CLI before the events arrive
    res = CliRunner().invoke(app, [
        "annotate", "--model", "m", "--kind", "deploy", "--text", "feature store backfill",
        "--ts", str(t_bump + 300), "--bootstrap", kafka_bootstrap], env=env_of(s))
    assert res.exit_code == 0, res.output
    wait_for(lambda: len(worker.processor.changes.of("m")) == 1, 30, "annotation consumed")

    rng = np.random.default_rng(7)
    x = rng.normal(size=(TOTAL, 5))
    x[DRIFT:, 1] += 2.0
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=250,
                           changes_topic=s.changes_topic) as p:
        sdk_id = p.annotate("m", "pipeline", "nightly job moved to the new cluster",
                            ts=t_bump + 120)
        for lo, hi in ((0, BUMP), (BUMP, TOTAL)):  # v1 applied before v2 arrives
            for i in range(lo, hi):
                assert p.emit("m", {f"f{j}": float(x[i, j]) for j in range(5)}, ts=ts[i],
                              event_id=f"e{i}", trace_id=f"t{i}", latency_ms=4.0,
                              model_version="v1" if i < BUMP else "v2")
            assert p.flush(60) == 0
            wait_for(lambda n=hi: worker.stats.applied >= n, 120, f"{hi} events applied")
    alerts = list(AlertSubscriber(s.kafka(), s.alerts_topic, timeout=30))
    firing = [a for a in alerts if a.state == "firing" and a.model == "m"]
    assert firing, "no alert on the alerts topic"
    a = firing[0]
    assert a.feature == "f1" and a.window.end_ts is not None and a.window.end_ts > ts[DRIFT]

    # the changes it carries: newest first, none after the window end
    by_kind = {c["kind"]: c for c in a.changes}
    assert {"model_version", "deploy", "pipeline", "reference"} <= set(by_kind)
    bump = by_kind["model_version"]
    assert bump["ts"] == t_bump and "v2" in bump["text"] and "v1" in bump["text"]
    assert by_kind["deploy"]["text"] == "feature store backfill"
    assert by_kind["pipeline"]["id"] == sdk_id
    assert [c["ts"] for c in a.changes] == sorted((c["ts"] for c in a.changes), reverse=True)
    assert all(c["ts"] <= a.window.end_ts for c in a.changes)

    # the worker recorded the bump (and the reference) on the changes topic, once each
    recorded = [ChangeEvent.decode(m.value()) for m in iter_to_end(s.kafka(), s.changes_topic)
                if m.value() != INVALID_CHANGE]
    assert len({c.id for c in recorded}) == len(recorded)
    assert sorted(c.kind for c in recorded if c.source == "driftline-worker") == [
        "model_version", "reference"]
    assert bump["id"] in {c.id for c in recorded}

    # exemplars: trace ids of drifted events of the pane the alert closed
    assert a.exemplars and len(a.exemplars) <= 3
    for trace in a.exemplars:
        assert trace.startswith("t")
        i = int(trace[1:])
        assert i >= DRIFT, f"{trace} is not a drifted event"
        assert int(ts[i] // 60) == a.window.pane

    # investigate puts the change point after the bump and ranks the changes before it by
    # closeness: the annotations, then the bump the worker recorded, then the reference
    res = CliRunner().invoke(app, ["investigate", "--model", "m", "--bootstrap",
                                   kafka_bootstrap, "--json"], env=env_of(s))
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    assert out["top_feature"] == "f1" and "f1" in out["drifted_features"]
    cp = out["change_point"]
    assert cp["significant"] and t_bump < cp["ts"] and abs(cp["ts"] - ts[DRIFT]) <= 120, cp
    assert [c["kind"] for c in out["changes"]] == ["deploy", "pipeline", "model_version",
                                                   "reference"], out["changes"]
    assert out["changes"][2]["ts"] == t_bump
