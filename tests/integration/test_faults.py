"""Exact accounting through worker crashes and rebalances, on real processes and a real broker.

Every valid event produced must be applied to its model's windows exactly once, every
invalid one must sit on the dead-letter topic (unique by source offset), whatever
happens to the workers in between.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftline.benchmarks.harness import (
    Cluster,
    dead_letter_offsets,
    produce_mixed,
    wait_accounted,
)
from driftline.streams.admin import read_compacted
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.synthetic import SyntheticModels

pytestmark = pytest.mark.integration

@pytest.fixture
def cluster(kafka_bootstrap: str, unique_name: Callable[[str], str],
            tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Workers of one group; their ``decode_process`` (indirect parameter, default off)."""
    env = {"DRIFTLINE_DECODE_PROCESS": getattr(request, "param", "off")}
    c = Cluster(kafka_bootstrap, unique_name("faults"), tmp_path, env)
    yield c
    c.stop_all()


#: workers decoding in their own process, and with a decode process (a batch in flight
#: at every kill, revoke and stop)
DECODE = pytest.mark.parametrize("cluster", ["off", "on"], ids=["inline", "child"],
                                 indirect=True)


@DECODE
def test_kill_9_mid_stream_loses_nothing_and_applies_nothing_twice(cluster: Cluster) -> None:
    c = cluster
    w1 = c.start()
    produced: dict[str, Any] = {}
    t = threading.Thread(target=lambda: produced.update(produce_mixed(c, 10_000, seed=1,
                                                                      pace=0.05)))
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once the worker is well into the stream
        st = collect_status(c.settings)
        if sum(m["events_applied"] for m in st["models"]) > 30_000:
            break
        time.sleep(0.5)
    os.kill(w1.pid, signal.SIGKILL)
    w1.wait(10)
    refs_before = read_compacted(c.settings.kafka(), c.settings.references_topic)
    t.join(120)
    t0 = time.monotonic()
    c.start()
    st = wait_accounted(c, produced["valid"], produced["invalid"])
    recovery = time.monotonic() - t0
    offsets = dead_letter_offsets(c)
    assert len(set(offsets)) == produced["invalid"]  # repeats only after a replay, same offset
    refs_after = read_compacted(c.settings.kafka(), c.settings.references_topic)
    assert {k: v for k, v in refs_after.items() if k in refs_before} == refs_before
    assert sum(produced["valid"].values()) + produced["invalid"] >= 100_000
    print(f"recovered in {recovery:.1f} s; {st['deadletter_total']} dead letters")


@DECODE
def test_rebalance_grow_and_shrink_under_load(cluster: Cluster) -> None:
    c = cluster
    c.start()
    produced: dict[str, Any] = {}
    t = threading.Thread(target=lambda: produced.update(produce_mixed(c, 12_000, seed=2,
                                                                      pace=0.1)))
    t.start()
    time.sleep(8)
    w2 = c.start()
    time.sleep(8)
    w3 = c.start()
    time.sleep(10)
    w2.send_signal(signal.SIGTERM)
    w2.wait(15)
    assert w2.returncode == 0
    time.sleep(3)
    os.kill(w3.pid, signal.SIGKILL)
    w3.wait(10)
    t.join(180)
    wait_accounted(c, produced["valid"], produced["invalid"], timeout=150)
    assert len(set(dead_letter_offsets(c))) == produced["invalid"]


def test_stalled_broker_blocks_nobody_and_loses_nothing(
    broker_factory: Callable[..., Any], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    broker = broker_factory()
    c = Cluster(broker.bootstrap, unique_name("stall"), tmp_path)
    try:
        c.start()
        gen = SyntheticModels(4, seed=3)
        expected = dict.fromkeys(gen.models, 0)
        worst = 0.0
        stalled_worst = 0.0
        stalled: list[float] = []
        with DriftlineProducer(c.settings.kafka(), c.settings.inference_topic,
                               batch_size=200) as sdk:
            t_end = time.monotonic() + 50
            paused_at = time.monotonic() + 10
            resumed = False
            while time.monotonic() < t_end:
                now = time.monotonic()
                if not broker.paused and not resumed and now >= paused_at:
                    broker.pause()
                if broker.paused and now >= paused_at + 30:
                    broker.resume()
                    resumed = True
                for m in gen.models:
                    for ev in gen.events(m, 50):
                        t = time.perf_counter()
                        assert sdk.emit_event(ev)
                        dt = time.perf_counter() - t
                        worst = max(worst, dt)
                        if broker.paused:
                            stalled_worst = max(stalled_worst, dt)
                            stalled.append(dt)
                        expected[m] += 1
                time.sleep(0.05)
            assert sdk.flush(60) == 0
            stats = sdk.stats()
        assert stats.failed == 0 and stats.dropped == 0, stats
        # a blocking emit would wait for the broker (seconds: the stall lasts 30 s); one slow
        # call on a loaded machine is the scheduler or the garbage collector, not the broker
        p99 = float(np.percentile(stalled, 99))
        assert len(stalled) > 1000 and p99 < 0.005, f"emit p99 {p99 * 1e3:.2f} ms in the stall"
        assert stalled_worst < 1.0, f"emit blocked {stalled_worst * 1e3:.1f} ms during the stall"
        wait_accounted(c, expected, 0, timeout=120)
        assert all(p.poll() is None for p in c.procs), "a worker died during the stall"
        print(f"emit max {worst * 1e6:.0f} µs (during the stall {stalled_worst * 1e6:.0f} µs)")
    finally:
        if broker.paused:
            broker.resume()
        c.stop_all()


def test_broker_lost_worker_recreates_topics_and_keeps_running(
    broker_factory: Callable[..., Any], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    import threading as th

    import orjson
    from confluent_kafka import Producer
    from prometheus_client import CollectorRegistry

    from driftline.detectors.reference import build_profile
    from driftline.streams.admin import ensure_topics
    from driftline.streams.model_config import WindowSpec, encode_record, record_key
    from driftline.streams.worker import Worker, topic_specs

    first = broker_factory()
    port = int(first.bootstrap.rsplit(":", 1)[1])
    s = Settings(bootstrap_servers=first.bootstrap, group_id=unique_name("g"), partitions=2,
                 auto_reference_events=1000, pane_size=250, snapshot_interval_s=0.5,
                 data_dir=str(tmp_path / "data"))
    # a reference from elsewhere, written as no serialiser of the worker would write it
    ext = build_profile("external", {"a": np.random.default_rng(1).normal(size=2000)})
    ensure_topics(s.kafka(), topic_specs(s))
    prod = Producer(s.kafka())
    prod.produce(s.references_topic, orjson.dumps(ext.to_dict(), option=orjson.OPT_INDENT_2),
                 key=b"external")
    # and a model's configuration record, as the CLI writes it: the new cluster's
    # references topic must hold it again too, or a worker started there would not have it
    gen = SyntheticModels(2, seed=0)
    config = (record_key(gen.models[0]), encode_record(gen.models[0], WindowSpec(pane_events=300)))
    prod.produce(s.references_topic, config[1], key=config[0])
    assert prod.flush(30) == 0
    w = Worker(s, CollectorRegistry())
    t = th.Thread(target=w.run, daemon=True)
    t.start()

    def send(n: int) -> None:
        with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=250) as p:
            for m in gen.models:
                for ev in gen.events(m, n):
                    p.emit_event(ev)
            p.flush(30)

    deadline = time.monotonic() + 30
    while not w.ready and time.monotonic() < deadline:
        time.sleep(0.2)
    send(1500)
    deadline = time.monotonic() + 60
    while w.stats.applied < 3000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert w.stats.applied == 3000

    def status_by_model() -> dict[str, dict[str, Any]]:
        return {m["model"]: m for m in collect_status(s)["models"]}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the status topic catches up within a snapshot
        before = status_by_model()
        if [before.get(m, {}).get("events_applied") for m in gen.models] == [1500, 1500]:
            break
        time.sleep(0.5)
    assert {m: before[m]["events_applied"] for m in gen.models} == {m: 1500 for m in gen.models}
    refs_before = read_compacted(s.kafka(), s.references_topic)
    assert sorted(refs_before) == sorted([b"external", config[0], *(m.encode() for m in gen.models)])
    assert refs_before[config[0]] == config[1]
    # the worker keeps those records in files of its own directory, not in memory
    from driftline.streams.reference_records import LOCK, file_name

    (own,) = (tmp_path / "data").iterdir()
    assert {p.name for p in own.iterdir()} == {
        LOCK, *(file_name(m) for m in ("external", *gen.models))}
    assert w._reference_records.in_memory == 0
    # a restarted worker holds the models' snapshots, read at its assignment, but no model
    # state until an event arrives: those snapshots must reach the new cluster too
    w.request_stop()
    t.join(30)
    assert not t.is_alive()
    w = Worker(s, CollectorRegistry())
    t = th.Thread(target=w.run, daemon=True)
    t.start()
    known = {f"{m}@{p}" for m in gen.models for p in (0, 1)}

    def read_at_assignment() -> bool:
        return w._assigned == {0, 1} and bool(known & set(w._snapshots))

    deadline = time.monotonic() + 60
    while not read_at_assignment() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert read_at_assignment() and not w.processor.models
    first.stop()
    second = broker_factory(port=port)  # same address, empty memory
    deadline = time.monotonic() + 60
    while w.stats.cluster_changes == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert w.stats.cluster_changes == 1 and t.is_alive()
    deadline = time.monotonic() + 30
    refs = read_compacted(s.kafka(), s.references_topic)
    while len(refs) < len(refs_before) and time.monotonic() < deadline:
        time.sleep(0.5)
        refs = read_compacted(s.kafka(), s.references_topic)
    assert refs == refs_before  # re-published byte for byte, not rebuilt nor re-serialised
    # serving again: events produced on the new cluster are applied exactly once, to the
    # models' kept windows (their cumulative counts and references survive the change)
    send(500)
    deadline = time.monotonic() + 120
    while w.stats.applied < 1000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert w.stats.applied == 1000 and w.stats.skipped_replays == 0
    assert w.stats.cluster_changes == 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = status_by_model()
        if [after.get(m, {}).get("events_applied") for m in gen.models] == [2000, 2000]:
            break
        time.sleep(0.5)
    assert {m: after[m]["events_applied"] for m in gen.models} == {m: 2000 for m in gen.models}
    assert {m: after[m]["reference"] for m in gen.models} == {
        m: before[m]["reference"] for m in gen.models}
    w.request_stop()
    t.join(30)
    assert not t.is_alive()
    assert list((tmp_path / "data").iterdir()) == []  # its directory removed at shutdown
    second.stop()


def test_cluster_watch_notes_a_replaced_cluster(
    broker_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """librdkafka's CLUSTERID line reaches the worker's client logger, which flags it."""
    import logging

    from confluent_kafka import KafkaException, Producer

    from driftline.streams.worker import ClusterWatch

    first = broker_factory()
    port = int(first.bootstrap.rsplit(":", 1)[1])
    watch = ClusterWatch(logging.getLogger("driftline.kafka"))
    p = Producer({"bootstrap.servers": first.bootstrap, "logger": watch})
    p.list_topics(timeout=10)
    p.poll(0.5)
    assert not watch.suspect.is_set()
    first.stop()
    broker_factory(port=port)  # same address, another cluster id
    deadline = time.monotonic() + 30
    with caplog.at_level(logging.WARNING, logger="driftline.kafka"):
        while not watch.suspect.is_set() and time.monotonic() < deadline:
            try:
                p.list_topics(timeout=2)
            except KafkaException:
                pass
            p.poll(0.2)
    assert watch.suspect.is_set()
    assert any("CLUSTERID" in r.getMessage() for r in caplog.records)  # still logged


def test_batches_wait_while_the_cluster_cannot_be_confirmed(
    kafka_bootstrap: str, unique_name: Callable[[str], str], start_worker: Any
) -> None:
    """After a client met another cluster (librdkafka's CLUSTERID line), a batch is applied
    only once the broker confirms the cluster the offsets belong to: while metadata is
    unavailable the batch is read again later, then applied exactly once."""
    import socket

    from confluent_kafka.admin import AdminClient
    from workers import isolated_settings, produce_sdk, wait_for

    from driftline.streams.admin import ensure_topics
    from driftline.streams.worker import topic_specs

    s = isolated_settings(kafka_bootstrap, unique_name, auto_reference_events=500)
    ensure_topics(s.kafka(), topic_specs(s))
    w = start_worker(s)
    wait_for(lambda: w.worker.ready, 30, "worker ready")
    gen = SyntheticModels(2, 5, seed=3)
    first = produce_sdk(s, gen, 500)
    wait_for(lambda: w.worker.stats.applied >= first, 60, "the first events applied")
    assert w.worker.stats.applied == first

    with socket.socket() as sock:  # a port nothing listens on: metadata is unavailable
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    admin = w.worker._admin
    w.worker._admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{dead}"})
    w.worker._watch.suspect.set()
    second = produce_sdk(s, gen, 500)
    wait_for(lambda: w.worker.stats.batches_held >= 2, 90, "batches held")
    assert w.worker.stats.applied == first  # none applied under unconfirmed offsets
    assert w.worker._watch.suspect.is_set()

    w.worker._admin = admin  # the broker answers again, for the same cluster
    wait_for(lambda: w.worker.stats.applied >= first + second, 90, "the held events applied")
    time.sleep(2)
    assert w.worker.stats.applied == first + second
    assert w.worker.stats.skipped_replays == 0
    assert not w.worker._watch.suspect.is_set()
    assert w.worker.stats.cluster_changes == 0


def test_kill_9_keeps_every_waiting_prediction_of_the_label_join(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    # the workers keep every prediction for labels: each model's join store goes to the
    # state topic as chunk records plus its snapshot every 0.5 s. One worker is killed
    # mid-stream (a checkpoint may be half written); the next restores the stores from the
    # acknowledged records and the replay, and every label then joins its prediction
    c = Cluster(kafka_bootstrap, unique_name("joinkill"), tmp_path,
                {"DRIFTLINE_LABEL_JOIN": "all"})
    s = c.settings
    models, n = ("a", "b", "c"), 12_000
    try:
        w1 = c.start()
        rng = np.random.default_rng(11)

        def predictions() -> None:
            with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=250) as p:
                for start in range(0, n, 500):
                    for m in models:
                        for i in range(start, start + 500):
                            assert p.emit(m, {"x": float(rng.normal())}, float(rng.random()),
                                          event_id=f"{m}-{i}", ts=1.7e9 + i)
                    time.sleep(0.1)
                assert p.flush(30) == 0

        t = threading.Thread(target=predictions)
        t.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # kill once the stores hold sealed chunks
            applied = {m["model"]: m["events_applied"] for m in collect_status(s)["models"]}
            if len(applied) == len(models) and min(applied.values()) > 6000:
                break
            time.sleep(0.3)
        os.kill(w1.pid, signal.SIGKILL)
        w1.wait(10)
        t.join(120)
        state = read_compacted(s.kafka(), s.state_topic, timeout=30)
        assert [k for k in state if b"/joins/pred/" in k], "no chunk record before the kill"
        c.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            applied = {m["model"]: m["events_applied"] for m in collect_status(s)["models"]}
            if applied == dict.fromkeys(models, n):
                break
            time.sleep(0.5)
        assert applied == dict.fromkeys(models, n), c.logs()
        with DriftlineProducer(s.kafka(), s.inference_topic, labels_topic=s.labels_topic) as p:
            for m in models:
                for i in range(n):
                    assert p.emit_label(m, f"{m}-{i}", bool(i % 3), ts=1.7e9 + i + 10)
            assert p.flush(30) == 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            labels = {m["model"]: m["labels"] for m in collect_status(s)["models"]}
            if all(labels.get(m, {}).get("labels", 0) >= n for m in models):
                break
            time.sleep(0.5)
        for m in models:
            assert labels[m]["joined"] == n and labels[m]["unmatched"] == 0 \
                and labels[m]["late"] == 0, (m, labels[m], c.logs())
    finally:
        c.stop_all()
