"""Delayed labels end to end on a real broker: SDK predictions in, a worker restart, SDK
labels in (joined to the predictions the restored states kept), concept alerts out of
the alerts topic, labels past the TTL counted."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from workers import isolated_settings, wait_for

from driftline.streams.admin import ensure_topics
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.subscriber import AlertSubscriber
from driftline.streams.worker import topic_specs

pytestmark = pytest.mark.integration

N = 6000  # predictions per model
T0 = 1_700_000_000.0
RATE = 100.0  # predictions per second of event time
DELAY = 30.0  # label delay, seconds
TTL = 600.0
LATE = 100  # the last predictions of "steady" get their labels 5,000 s later


def settings_for(bootstrap: str, unique: Callable[[str], str]) -> Settings:
    return isolated_settings(
        bootstrap, unique, auto_reference_events=3000, pane_size=500, min_samples=1000,
        label_ttl_seconds=TTL, concept_eval_every=250,
        concept_rules="fraud=fpr > 0.1 over 1000; steady=fpr > 0.1 over 1000")


def truth(model: str, i: int, score: float, rng: np.random.Generator) -> bool:
    """The label: the model is right 97% of the time, except that "fraud" makes false
    positives on 40% of its positive calls from its 3,000th prediction on (its FPR rises
    from ~0.03 to ~0.3)."""
    positive = bool(score >= 0.5)
    if model == "fraud" and i >= N // 2 and positive and rng.random() < 0.4:
        return False
    return positive if rng.random() >= 0.03 else not positive


def test_rising_fpr_alerts_a_steady_model_stays_silent_and_late_labels_count(
    kafka_bootstrap: str, unique_name: Callable[[str], str], start_worker: Any
) -> None:
    s = settings_for(kafka_bootstrap, unique_name)
    ensure_topics(s.kafka(), topic_specs(s))
    w = start_worker(s)
    wait_for(lambda: w.worker.ready, 30, "worker ready")
    rng = np.random.default_rng(8)
    models = ("fraud", "steady")
    scores = {m: rng.random(N) for m in models}
    with DriftlineProducer(s.kafka(), s.inference_topic, labels_topic=s.labels_topic,
                           batch_size=250) as p:
        for m in models:
            for i in range(N):
                assert p.emit(m, {"x": float(rng.normal()), "y": float(rng.normal())},
                              float(scores[m][i]), event_id=f"{m}-{i}", ts=T0 + i / RATE)
        assert p.flush(30) == 0
        wait_for(lambda: w.worker.stats.applied >= 2 * N, 90, "predictions applied")

        def fraud_snapshot() -> int:  # bytes of the last snapshot of the model's state
            return sum(len(b) for k, b in list(w.worker._snapshots.items())
                       if k.startswith("fraud@"))

        # the snapshot holds the N waiting predictions (>= 16 bytes each: score and time),
        # and the metric counts every snapshot written, so at least the last one
        wait_for(lambda: fraud_snapshot() > 16 * N, 30, "a snapshot with the join store")
        # the store went out as records: its first 4,096 predictions (a sealed chunk) in a
        # record of their own, which the restart below reads back with the snapshot
        assert [k for k in w.worker._snapshots if k.startswith("fraud@")
                and "/joins/pred/0/" in k], sorted(w.worker._snapshots)
        written = w.registry.get_sample_value("driftline_worker_snapshot_bytes_total",
                                              {"model": "fraud"})
        assert written is not None and written >= fraud_snapshot() > 16 * N
        checkpoints = w.registry.get_sample_value(
            "driftline_worker_checkpoint_duration_seconds_count")
        took = w.registry.get_sample_value("driftline_worker_checkpoint_duration_seconds_sum")
        assert checkpoints is not None and checkpoints >= 1 and took is not None and took > 0
        # the waiting predictions survive a restart: the labels join on the next worker
        w.stop()
        w = start_worker(s)
        wait_for(lambda: w.worker.ready, 30, "second worker ready")
        labelled = {m: N - (LATE if m == "steady" else 0) for m in models}
        for m in models:
            for i in range(labelled[m]):
                assert p.emit_label(m, f"{m}-{i}", truth(m, i, scores[m][i], rng),
                                    ts=T0 + i / RATE + DELAY)
        assert p.flush(30) == 0
        wait_for(lambda: w.worker.stats.labels >= sum(labelled.values()), 90, "labels joined")
        for i in range(N - LATE, N):  # long after the TTL
            assert p.emit_label("steady", f"steady-{i}", True, ts=T0 + i / RATE + 5000.0)
        assert p.flush(30) == 0
        wait_for(lambda: w.worker.stats.labels >= 2 * N, 60, "late labels taken")

    alerts = [a for a in AlertSubscriber(s.kafka(), s.alerts_topic, timeout=30)
              if a.kind == "concept"]
    rule = [a for a in alerts if a.detector == "threshold" and a.state == "firing"]
    assert [a.model for a in rule] == ["fraud"], alerts
    a = rule[0]
    assert a.statistic == "fpr" and a.score > a.threshold == 0.1 and a.window.n == 1000
    assert a.exemplars and all(e.startswith("fraud-") for e in a.exemplars)
    # it fired once the bad half filled the window, not before
    assert N // 2 < a.window.pane * 250 <= N
    assert not [x for x in alerts if x.model == "steady"], "no concept drift on 'steady'"

    text = urllib.request.urlopen(f"http://127.0.0.1:{w.server.port}/metrics",
                                  timeout=10).read().decode()
    assert f'driftline_labels_joined_total{{model="fraud"}} {float(N)}' in text
    assert f'driftline_labels_joined_total{{model="steady"}} {float(N - LATE)}' in text
    assert f'driftline_labels_unmatched_total{{model="steady",reason="late"}} {float(LATE)}' \
        in text
    assert 'driftline_model_quality{metric="fpr",model="fraud"}' in text
    assert 'driftline_label_delay_seconds_count{model="fraud"}' in text
    w.stop()
    status = {m["model"]: m for m in collect_status(s)["models"]}
    assert status["steady"]["labels"]["late"] == LATE
    assert status["steady"]["labels"]["joined"] == N - LATE
    assert status["fraud"]["labels"]["joined"] == N
    assert status["fraud"]["alerts_firing"] >= 1
