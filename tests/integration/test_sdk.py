"""Producer SDK and alert subscriber against a real broker.

Topics are created explicitly first (Tansu would auto-create them with 4 partitions).
Results are read back with ``iter_to_end`` (a plain confluent-kafka consumer reading each
partition to its ``_PARTITION_EOF``; ListOffsets watermarks are wrong on Tansu).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from envelopes import as_rows

from driftline.schemas.codecs import decode_inference, encode_alert
from driftline.schemas.models import DriftAlert, FeatureScore, WindowInfo
from driftline.streams.admin import TopicSpec, ensure_topics, iter_to_end
from driftline.streams.producer import DriftlineProducer
from driftline.streams.subscriber import AlertSubscriber

pytestmark = pytest.mark.integration


def test_events_arrive_exactly_once_keyed_by_model(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    topic = unique_name("inference")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 4)])
    models = ("fraud", "churn", "ranker")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 5))
    with DriftlineProducer(kafka_client_config, topic, batch_size=500) as producer:
        for i in range(20_000):
            model = models[i % 3]
            ok = producer.emit(model, {f"f{j}": float(x[i, j]) for j in range(5)}, float(i),
                               event_id=f"{model}-{i}", model_version="v1")
            assert ok
        assert producer.flush(30.0) == 0
        stats = producer.stats()
    assert (stats.emitted, stats.delivered, stats.failed, stats.dropped) == (20_000, 20_000, 0, 0)
    assert stats.envelopes_delivered == stats.envelopes_sent >= 40

    messages = list(iter_to_end(kafka_client_config, topic))
    assert len(messages) == stats.envelopes_delivered
    seen: Counter[str] = Counter()
    partitions: dict[str, set[int]] = defaultdict(set)
    for msg in messages:
        key = msg.key().decode()
        envelope = as_rows(orjson.loads(msg.value()))
        assert envelope["model"] == key and envelope["model_version"] == "v1"
        assert len(envelope["events"]) <= 500
        partitions[key].add(msg.partition())
        for ev in envelope["events"]:
            seen[ev["event_id"]] += 1
            i = int(ev["event_id"].rsplit("-", 1)[1])
            assert ev["prediction"] == float(i) and ev["features"]["f3"] == float(x[i, 3])
    assert len(seen) == 20_000 and set(seen.values()) == {1}  # every event exactly once
    assert seen.keys() == {f"{models[i % 3]}-{i}" for i in range(20_000)}
    assert all(len(p) == 1 for p in partitions.values())  # keyed: one partition per model

    # the workers' decoder reads the SDK's envelopes as they are
    decoded = decode_inference([m.value() for m in messages], topic=topic,
                               partitions=[m.partition() for m in messages],
                               offsets=[m.offset() for m in messages],
                               timestamps=[m.timestamp()[1] / 1000 for m in messages])
    assert decoded.rejections == [] and decoded.events == 20_000
    assert {m: len(b) for m, b in decoded.batches.items()} == {
        "fraud": 6667, "churn": 6667, "ranker": 6666}


def test_shadow_events_share_the_live_models_partition(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    topic = unique_name("inference")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 8)])
    with DriftlineProducer(kafka_client_config, topic, batch_size=50) as producer:
        for i in range(200):
            producer.emit("live", {"a": i}, 0.5, event_id=str(i))
            producer.emit("candidate", {"a": i}, 0.6, event_id=str(i), shadow_of="live")
        assert producer.flush(30.0) == 0
    where: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for msg in iter_to_end(kafka_client_config, topic):
        where[orjson.loads(msg.value())["model"]].add((msg.key().decode(), msg.partition()))
    assert where["live"] == where["candidate"] and len(where["live"]) == 1


def _rows_by_model(config: Mapping[str, Any], topic: str) -> dict[str, list[dict[str, Any]]]:
    """Every event on ``topic`` as the workers decode it, per model, in partition order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for msg in iter_to_end(config, topic):
        env = as_rows(orjson.loads(msg.value()))
        for ev in env["events"]:
            out[env["model"]].append({**ev, "model_version": env.get("model_version")})
    return out


def test_a_batch_with_class_index_probabilities_and_odd_numbers_arrives(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    """Probabilities keyed by class index, an int segment key, Decimal and 0-d array
    features: the batch still goes out (it used to stop the SDK's thread for good), the
    odd event is counted, and the workers' decoder takes the rest."""
    from decimal import Decimal

    topic = unique_name("inference")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 2)])
    with DriftlineProducer(kafka_client_config, topic, batch_size=10, linger_s=0.05) as producer:
        for i in range(9):
            assert producer.emit("m", {"x": Decimal("1.5"), "y": np.array(2.0)},
                                 {0: 0.2, 1: 0.8}, event_id=str(i))
        assert producer.emit("m", {"x": 1.0, "y": 2.0}, 0.5, segment={1: "x"}, event_id="bad")
        assert producer.emit("m2", {"x": 1.0}, 0.5)  # another model is not held up
        assert producer.flush(15.0) == 0
        stats = producer.stats()
    assert stats.delivered + stats.failed == stats.emitted == 11
    assert stats.failed <= 1 and stats.isolated == 1  # the int segment key: sent apart
    rows = _rows_by_model(kafka_client_config, topic)
    good = [ev for ev in rows["m"] if ev["event_id"] != "bad"]
    assert len(good) == 9 and len(rows["m2"]) == 1
    assert all(ev["features"] == {"x": 1.5, "y": 2.0} for ev in good)
    assert all(ev["prediction"] == {"0": 0.2, "1": 0.8} for ev in good)
    decoded = decode_inference([m.value() for m in iter_to_end(kafka_client_config, topic)])
    batch = decoded.batches["m"]
    assert list(batch.prediction_label[:9]) == ["1"] * 9


def test_a_models_events_keep_their_order_across_a_version_change(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    topic = unique_name("inference")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 2)])
    with DriftlineProducer(kafka_client_config, topic, batch_size=100, linger_s=5.0) as producer:
        for i in range(250):
            version = "v1" if i < 50 or 120 <= i < 130 else "v2"
            assert producer.emit("m", {"x": float(i)}, event_id=str(i), model_version=version)
        assert producer.flush(15.0) == 0
    rows = _rows_by_model(kafka_client_config, topic)["m"]
    assert [ev["event_id"] for ev in rows] == [str(i) for i in range(250)]
    assert [ev["model_version"] for ev in rows[45:55]] == ["v1"] * 5 + ["v2"] * 5


def test_a_candidates_labels_go_to_the_partition_of_its_predictions(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    topic, labels = unique_name("inference"), unique_name("labels")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 8), TopicSpec(labels, 8)])
    candidates = [f"candidate-{i}" for i in range(6)]
    with DriftlineProducer(kafka_client_config, topic, labels_topic=labels) as producer:
        for c in candidates:
            producer.emit(c, {"a": 1.0}, 0.6, event_id="e1", shadow_of="live")
            assert producer.emit_label(c, "e1", True, shadow_of="live")
        producer.emit("live", {"a": 1.0}, 0.5, event_id="e1")
        assert producer.emit_label("live", "e1", np.bool_(True), ts="2026-01-01T00:00:00")
        assert not producer.emit_label("live", "e2", 1, ts="yesterday")
        assert producer.flush(15.0) == 0
        assert producer.stats().dropped_reasons == {"invalid": 1}
    predictions = {(m.key(), m.partition()) for m in iter_to_end(kafka_client_config, topic)}
    read = list(iter_to_end(kafka_client_config, labels))
    assert len(read) == 7 and {(m.key(), m.partition()) for m in read} == predictions
    values = [orjson.loads(m.value()) for m in read]
    assert sorted(v["model"] for v in values) == sorted([*candidates, "live"])
    live = next(v for v in values if v["model"] == "live")
    assert live["label"] is True and live["ts"] == 1767225600.0


def test_a_forked_child_refuses_events_and_the_parent_sends_its_own_once(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    """A producer made before fork (gunicorn --preload): librdkafka's client does not
    survive the fork, so the child refuses events with a reason (they used to be
    accepted, then lost at close) and never touches the client; the parent's buffered
    events are sent once, by the parent."""
    import os

    topic = unique_name("inference")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 2)])
    producer = DriftlineProducer(kafka_client_config, topic, linger_s=10.0)
    for i in range(5):
        producer.emit("parent", {"x": 1.0}, event_id=f"p{i}")  # buffered at the fork
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        refused = not any(producer.emit("child", {"x": 2.0}) for _ in range(20))
        stats = producer.stats()
        producer.close()
        os._exit(0 if refused and stats.dropped_reasons == {"forked": 20}
                 and stats.emitted == 0 else 1)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not finish")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert producer.flush(15.0) == 0
    producer.close()
    rows = _rows_by_model(kafka_client_config, topic)
    assert sorted(ev["event_id"] for ev in rows["parent"]) == [f"p{i}" for i in range(5)]
    assert "child" not in rows


# ------------------------------------------------------------------------- alerts


def make_alert(model: str, pane: int, *, kind: str = "data", state: str = "firing") -> DriftAlert:
    alert_id = hashlib.sha1(f"{model}|{kind}|f1||{pane}|{state}".encode()).hexdigest()[:20]
    return DriftAlert(
        alert_id=alert_id, model=model, kind=kind, state=state, detector="psi",
        statistic="psi", score=0.4, threshold=0.2, feature="f1", p_value=None,
        window=WindowInfo(start_ts=1000.0, end_ts=1060.0, n=5000, first_offset=0,
                          last_offset=9, pane=pane),
        reference="ref-1", severity="warning", created_at=1061.0,
        top_features=(FeatureScore("f1", "psi", 0.4, 0.2),),
    )


def produce(config: Mapping[str, Any], topic: str, values: list[tuple[str, bytes]]) -> None:
    p = Producer(dict(config))
    for key, value in values:
        p.produce(topic, value, key)
    assert p.flush(30.0) == 0


def encoded(alert: DriftAlert) -> tuple[str, bytes]:
    return alert.model, encode_alert(alert)


def test_alert_subscriber_reads_to_the_end_dedups_and_skips_malformed(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    topic = unique_name("alerts")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 3)])
    alerts = [make_alert(m, pane) for m in ("m1", "m2") for pane in range(3)]
    alerts.append(make_alert("m1", 0, kind="prediction", state="resolved"))
    values = [encoded(a) for a in alerts]
    values += [encoded(alerts[0]), encoded(alerts[4])]  # repeats after a worker replay
    values += [("m1", b"{not json"), ("m2", orjson.dumps({"alert_id": "x"}))]  # malformed
    produce(kafka_client_config, topic, values)

    with AlertSubscriber(kafka_client_config, topic) as sub:
        got = list(sub)
    assert sorted(a.alert_id for a in got) == sorted(a.alert_id for a in alerts)
    assert {a.alert_id: a for a in got}[alerts[0].alert_id] == alerts[0]  # full round trip
    assert (sub.duplicates, sub.skipped, sub.yielded) == (2, 2, 7)

    with AlertSubscriber(kafka_client_config, topic, models="m1", kinds=["data"]) as sub:
        assert sorted(a.window.pane for a in sub) == [0, 1, 2]
    with AlertSubscriber(kafka_client_config, topic, states="resolved") as sub:
        assert [a.kind for a in sub] == ["prediction"]
    with AlertSubscriber(kafka_client_config, topic, from_beginning=False) as sub:
        assert list(sub) == []  # starts at the end, stops there


def test_alert_subscriber_on_a_missing_topic_ends_empty(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    with AlertSubscriber(kafka_client_config, unique_name("absent")) as sub:
        assert list(sub) == []


def test_alert_subscriber_named_group_on_a_missing_topic_ends_empty(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    t0 = time.monotonic()
    with AlertSubscriber(kafka_client_config, unique_name("absent"),
                         group_id=unique_name("group")) as sub:
        assert list(sub) == []
    assert time.monotonic() - t0 < 10  # not the 30 s timeout and "end not reached"


def test_alert_subscriber_follow_waits_for_a_broker_that_does_not_answer() -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sub = AlertSubscriber(f"127.0.0.1:{port}", "driftline.alerts", follow=True, timeout=1.0)
    failed: list[BaseException] = []

    def read() -> None:
        try:
            list(sub)
        except BaseException as exc:  # recorded for the assertion
            failed.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(6.0)  # several rounds of a 1 s metadata timeout
    assert reader.is_alive() and not failed, failed
    sub.close()
    reader.join(10.0)
    assert not reader.is_alive() and not failed, failed


def test_alert_subscriber_follow_blocks_for_new_alerts(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    topic = unique_name("alerts")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 2)])
    first = make_alert("m1", 0)
    produce(kafka_client_config, topic, [encoded(first)])
    later = make_alert("m1", 1)
    with AlertSubscriber(kafka_client_config, topic, follow=True) as sub:
        it = iter(sub)
        assert next(it) == first
        timer = threading.Timer(1.0, produce, (kafka_client_config, topic,
                                               [encoded(first), encoded(later)]))
        timer.start()
        t0 = time.monotonic()
        assert next(it) == later  # waited past the end; the repeat of `first` is dropped
        assert time.monotonic() - t0 >= 0.9
        timer.join()
    assert sub.duplicates == 1


def test_alert_subscriber_named_group_resumes_after_what_it_read(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    topic, group = unique_name("alerts"), unique_name("group")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 2)])
    produce(kafka_client_config, topic, [encoded(make_alert("m1", p)) for p in range(3)])
    with AlertSubscriber(kafka_client_config, topic, group_id=group) as sub:
        assert len(list(sub)) == 3
    produce(kafka_client_config, topic, [encoded(make_alert("m1", 7))])
    with AlertSubscriber(kafka_client_config, topic, group_id=group) as sub:
        assert [a.window.pane for a in sub] == [7]
    # a new group told to start at the end sees none of the existing alerts
    with AlertSubscriber(kafka_client_config, topic, group_id=group + "-new",
                         from_beginning=False) as sub:
        assert list(sub) == []
