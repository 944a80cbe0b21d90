"""End to end on a real broker: SDK and foreign producers in, alerts and dead letters out."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer
from workers import isolated_settings, produce_sdk, wait_for

from driftline.schemas.codecs import decode_dead_letter
from driftline.streams.admin import ensure_topics, iter_to_end
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.settings import Settings
from driftline.streams.subscriber import AlertSubscriber
from driftline.streams.synthetic import DriftSpec, SyntheticModels
from driftline.streams.worker import topic_specs

pytestmark = pytest.mark.integration


#: decoding in the worker's process, and in a decode process one batch ahead
DECODE = pytest.mark.parametrize("decode_process", ["off", "on"], ids=["inline", "child"])


def make_settings(bootstrap: str, unique: Callable[[str], str], **kw: Any) -> Settings:
    return isolated_settings(bootstrap, unique, auto_reference_events=3000, pane_size=500,
                             min_samples=1000, **kw)


@DECODE
def test_drift_alert_names_the_feature_and_no_drift_stays_silent(
    kafka_bootstrap: str, unique_name: Callable[[str], str], start_worker: Any,
    decode_process: str,
) -> None:
    s = make_settings(kafka_bootstrap, unique_name, decode_process=decode_process)
    ensure_topics(s.kafka(), topic_specs(s))
    w = start_worker(s)
    wait_for(lambda: w.worker.ready, 30, "worker ready")
    gen = SyntheticModels(3, seed=4, drift=(DriftSpec("model-1", "f7", 8000, 1.0),))
    sent = produce_sdk(s, gen, 16_000)
    wait_for(lambda: w.worker.stats.applied >= sent, 90, f"{sent} events applied")
    alerts = list(AlertSubscriber(s.kafka(), s.alerts_topic, timeout=30))
    firing = [a for a in alerts if a.state == "firing"]
    assert firing, "no alert on the alerts topic"
    assert {a.model for a in firing} == {"model-1"}
    a = firing[0]
    assert a.feature == "f7" and a.kind == "data"
    assert a.score > a.threshold and a.window.n >= 1000
    assert a.reference and a.reference.startswith("model-1@")
    assert a.top_features[0].name == "f7"

    # metrics seen by a real scrape, and valid exposition format
    body = urllib.request.urlopen(f"http://127.0.0.1:{w.server.port}/metrics", timeout=10).read()
    text = body.decode()
    assert 'driftline_worker_events_total{model="model-1"}' in text
    assert 'driftline_drift_state{feature="f7",kind="data",model="model-1"} 1.0' in text
    assert "driftline_serving_latency_seconds_bucket" in text
    promtool = shutil.which("promtool")
    if promtool:
        res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                             timeout=30)
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    w.stop()
    st = collect_status(s)
    applied = {m["model"]: m["events_applied"] for m in st["models"]}
    assert applied == {m: 16_000 for m in gen.models}


@DECODE
def test_foreign_producer_bad_events_and_dead_letters(
    kafka_bootstrap: str, unique_name: Callable[[str], str], start_worker: Any,
    decode_process: str,
) -> None:
    s = make_settings(kafka_bootstrap, unique_name, decode_process=decode_process)
    ensure_topics(s.kafka(), topic_specs(s))
    w = start_worker(s)
    wait_for(lambda: w.worker.ready, 30, "worker ready")
    kp = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    gen = SyntheticModels(1, seed=1, prefix="raw-")
    good = 0
    for ev in gen.events("raw-0", 4000):
        kp.send(s.inference_topic, key=b"raw-0", value=orjson.dumps(ev))
        good += 1
    bad = [b"{not json", b"[1,2,3]", orjson.dumps({"model": "raw-0"}),
           orjson.dumps({"model": "raw-0", "features": {"f0": [1, 2]}}), b"\xff\xfe\x00"]
    for b in bad:
        kp.send(s.inference_topic, key=b"raw-0", value=b)
    kp.flush(30)
    kp.close()
    wait_for(lambda: w.worker.stats.applied >= good and w.worker.stats.dead_letters >= len(bad),
             60, "events applied and dead-lettered")
    letters = [decode_dead_letter(m.value()) for m in iter_to_end(s.kafka(), s.deadletter_topic)]
    assert len(letters) == len(bad)
    assert all(d["reason"] and d["offset"] >= 0 and d["topic"] == s.inference_topic
               for d in letters)
    codes = sorted(d["reason_code"] for d in letters)
    assert codes.count("invalid_json") == 2 and "schema" in codes
    w.stop()
    st = collect_status(s)
    assert st["deadletter_total"] == len(bad)
    assert {m["model"]: m["events_applied"] for m in st["models"]} == {"raw-0": good}


def test_restart_resumes_windows_from_snapshots(
    kafka_bootstrap: str, unique_name: Callable[[str], str], start_worker: Any
) -> None:
    s = make_settings(kafka_bootstrap, unique_name)
    ensure_topics(s.kafka(), topic_specs(s))
    gen = SyntheticModels(2, seed=2)
    w1 = start_worker(s)
    wait_for(lambda: w1.worker.ready, 30, "worker ready")
    first = produce_sdk(s, gen, 6000)
    wait_for(lambda: w1.worker.stats.applied >= first, 60, "first half applied")
    before = {m: (st.monitor.ring.seq if st.monitor else 0, st.reference.reference_id
                  if st.reference else None) for m, st in w1.worker.processor.models.items()}
    assert len(before) == 2  # one state per model: each model is keyed onto one partition
    w1.stop()
    w2 = start_worker(s)
    wait_for(lambda: w2.worker.ready, 30, "second worker ready")
    second = produce_sdk(s, gen, 4000)
    wait_for(lambda: w2.worker.stats.applied >= second, 60, "second half applied")
    procs = w2.worker.processor.models
    for m, (seq, ref_id) in before.items():
        assert procs[m].reference is not None and procs[m].reference.reference_id == ref_id
        assert procs[m].monitor is not None and procs[m].monitor.ring.seq == seq + 4000
    assert w2.worker.stats.applied == second  # nothing from the first run was re-applied
    w2.stop()
    st = collect_status(s)
    assert {m["model"]: m["events_applied"] for m in st["models"]} == {m: 10_000 for m in gen.models}
