"""Broker plumbing against a real broker: embedded Tansu or $DRIFTLINE_TEST_BOOTSTRAP."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from driftline.streams.admin import (
    TopicSpec,
    delete_topics,
    ensure_topics,
    iter_to_end,
    partition_count,
    read_compacted,
)
from driftline.streams.kafka_config import (
    client_config,
    consumer_config,
    kafka_python_config,
    producer_config,
)

pytestmark = pytest.mark.integration


def _produce(config, topic, records, **overrides):
    producer = Producer(producer_config(config, **overrides))
    errors = []
    for key, value in records:
        producer.produce(topic, value, key=key, on_delivery=lambda e, _m: e and errors.append(e))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []


def _gone(pid: int) -> bool:
    """No such process, or a zombie left for init to reap (it no longer runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_ensure_topics_creates_with_partitions_and_config(kafka_client_config, unique_name):
    cfg = kafka_client_config
    plain, compacted = unique_name("plain"), unique_name("compact")
    specs = [TopicSpec(plain, 3), TopicSpec(compacted, 2, compact=True)]
    assert ensure_topics(cfg, specs) == sorted([plain, compacted])
    assert ensure_topics(cfg, specs) == []  # idempotent
    assert partition_count(cfg, plain) == 3
    assert partition_count(cfg, compacted) == 2
    assert partition_count(cfg, unique_name("missing")) is None
    res = ConfigResource("topic", compacted)
    admin = AdminClient(cfg)
    entries = admin.describe_configs([res])[res].result(timeout=10)
    assert entries["cleanup.policy"].value == "compact"
    # Producing to the created topic keeps its partition count (no auto-create with 4).
    _produce(cfg, plain, [(b"k%d" % i, b"v") for i in range(30)])
    assert partition_count(cfg, plain) == 3
    assert delete_topics(cfg, [plain, compacted]) == sorted([plain, compacted])
    assert partition_count(cfg, plain) is None


def test_produce_and_consume_in_a_group(kafka_client_config, unique_name):
    cfg = kafka_client_config
    topic = unique_name("pc")
    ensure_topics(cfg, [TopicSpec(topic, 3)])
    sent = {b"k%d" % i: b"v%d" % i for i in range(1000)}
    _produce(cfg, topic, sent.items())
    consumer = Consumer(consumer_config(cfg, unique_name("g")))
    consumer.subscribe([topic])
    got: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 20
    try:
        while len(got) < len(sent) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                assert msg.error() is None, msg.error()
                got[msg.key()] = msg.value()
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    finally:
        consumer.close()
    assert got == sent
    assert sum(tp.offset for tp in committed) == len(sent)


def test_kafka_python_producer_to_confluent_consumer(kafka_client_config, kafka_bootstrap,
                                                     unique_name):
    kafka = pytest.importorskip("kafka")
    topic = unique_name("interop")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 2)])
    producer = kafka.KafkaProducer(**kafka_python_config(kafka_bootstrap), linger_ms=5)
    try:
        for i in range(500):
            producer.send(topic, key=b"k%d" % (i % 7), value=b"%d" % i,
                          headers=[("h", b"x")])
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    msgs = list(iter_to_end(kafka_client_config, topic, timeout=30))
    assert sorted(int(m.value()) for m in msgs) == list(range(500))
    assert all(m.headers() == [("h", b"x")] for m in msgs)
    # Same key -> same partition, in order.
    by_key: dict[bytes, list[int]] = {}
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        by_key.setdefault(m.key(), []).append(int(m.value()))
    assert all(v == sorted(v) for v in by_key.values())


def test_read_compacted_last_value_per_key_and_tombstones(kafka_client_config, unique_name):
    cfg = kafka_client_config
    topic = unique_name("state")
    ensure_topics(cfg, [TopicSpec(topic, 3, compact=True)])
    records = [(b"m%d" % (i % 10), b"v%d" % i) for i in range(100)]
    records += [(b"m3", None), (b"m4", None), (b"m4", b"back"), (b"gone", None)]
    _produce(cfg, topic, records)
    expected = {b"m%d" % k: b"v%d" % (90 + k) for k in range(10)}
    del expected[b"m3"]
    expected[b"m4"] = b"back"
    assert read_compacted(cfg, topic, timeout=30) == expected


def test_read_compacted_gets_every_record_of_multi_record_batches(kafka_client_config,
                                                                   unique_name):
    cfg = kafka_client_config
    topic = unique_name("batched")
    ensure_topics(cfg, [TopicSpec(topic, 2, compact=True)])
    n = 5000
    _produce(cfg, topic, [(b"k%05d" % i, b"%d" % i) for i in range(n)],
             **{"linger.ms": 50, "batch.num.messages": 1000})
    # ListOffsets may under-report on Tansu (DESIGN §6); the EOF-based read must not.
    consumer = Consumer({**cfg, "group.id": unique_name("wm")})
    try:
        listed = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                     for p in range(2))
    finally:
        consumer.close()
    t0 = time.monotonic()
    state = read_compacted(cfg, topic, timeout=30)
    elapsed = time.monotonic() - t0
    print(f"ListOffsets high watermarks sum {listed}; read_compacted {len(state)} "
          f"records in {elapsed:.3f} s")
    assert len(state) == n
    assert state == {b"k%05d" % i: b"%d" % i for i in range(n)}


def test_iter_to_end_unknown_topic_and_empty_topic(kafka_client_config, unique_name):
    from driftline.streams.admin import UnknownTopicError

    with pytest.raises(UnknownTopicError):
        list(iter_to_end(kafka_client_config, unique_name("nope"), timeout=10))
    empty = unique_name("empty")
    ensure_topics(kafka_client_config, [TopicSpec(empty, 4)])
    assert read_compacted(kafka_client_config, empty, timeout=15) == {}


def test_idempotent_and_transactional_producers(kafka_client_config, unique_name):
    cfg = kafka_client_config
    topic = unique_name("tx")
    ensure_topics(cfg, [TopicSpec(topic, 1)])
    _produce(cfg, topic, [(None, b"%d" % i) for i in range(2000)])  # idempotent by default
    tx = Producer(producer_config(cfg, **{"transactional.id": unique_name("txid")}))
    tx.init_transactions(15)
    tx.begin_transaction()
    for i in range(2000, 2010):
        tx.produce(topic, b"%d" % i)
    tx.commit_transaction(15)
    values = [int(m.value()) for m in iter_to_end(cfg, topic, timeout=30)]
    assert values == list(range(2010))  # in order, no duplicates


def test_pause_resume_keeps_data(broker_factory, unique_name):
    broker = broker_factory()
    cfg = client_config(broker.bootstrap)
    topic = unique_name("stall")
    ensure_topics(cfg, [TopicSpec(topic, 2)])
    _produce(cfg, topic, [(b"a%d" % i, b"1") for i in range(100)])
    broker.pause()
    try:
        with pytest.raises(KafkaException):
            AdminClient(cfg).list_topics(timeout=1.0)  # stalled: no answer
        # A producer started during the stall delivers once the broker resumes.
        producer = Producer(producer_config(cfg))
        for i in range(100):
            producer.produce(topic, b"1", key=b"b%d" % i)
        assert producer.flush(0.5) > 0
    finally:
        broker.resume()
    assert producer.flush(30) == 0
    assert len(read_compacted(cfg, topic, timeout=30)) == 200


def test_stop_leaves_no_process(broker_factory):
    broker = broker_factory()
    pid = broker.pid
    # A connected client must not delay shutdown (Tansu's SIGTERM waits ~5 s for clients).
    producer = Producer(producer_config(client_config(broker.bootstrap)))
    producer.produce("anything", b"x")
    producer.flush(10)
    t0 = time.monotonic()
    assert broker.stop(timeout=5) == 0
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped by us (not even a zombie left)
    assert not broker.running


def test_stop_while_paused(broker_factory):
    broker = broker_factory()
    pid = broker.pid
    broker.pause()
    broker.stop(timeout=5)
    assert _gone(pid)


def test_broker_dies_with_its_parent(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    # parent: starts a broker, prints its pid and exits without any cleanup.
    parent = textwrap.dedent(f"""
        import os
        from driftline.streams.broker import EmbeddedBroker
        b = EmbeddedBroker(log_path={str(tmp_path / "t.log")!r}).start()
        print(b.pid, flush=True)
        os._exit(0)
    """)
    # grandparent: a child subreaper, so the orphaned broker becomes its child and is reaped
    # here (a container's init may never reap it); reports how the broker ended.
    grandparent = textwrap.dedent(f"""
        import ctypes, os, subprocess, sys, time
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        out = subprocess.run([sys.executable, "-c", {parent!r}], capture_output=True,
                             text=True, timeout=60, check=True)
        pid = int(out.stdout.strip())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
                sys.exit(0)
            time.sleep(0.02)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("outlived")
    """)
    out = subprocess.run([sys.executable, "-c", grandparent], capture_output=True, text=True,
                         timeout=90, check=True)
    assert out.stdout.strip() == "signal 9", out.stdout + out.stderr


def test_busy_port_is_an_error(broker_factory):
    from driftline.streams.broker import BrokerError, EmbeddedBroker

    first = broker_factory()
    second = EmbeddedBroker(port=first.port, startup_timeout=5)
    with pytest.raises(BrokerError, match="in use"):
        second.start()
    assert not second.running
    assert first.running
