"""Exact accounting through worker crashes and rebalances, on real processes and a real broker.

Every valid event produced must be applied to its model's windows exactly once, every
invalid one must sit on the dead-letter topic (unique by source offset), whatever
happens to the workers in between.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from driftline.schemas.codecs import decode_dead_letter
from driftline.streams.admin import ensure_topics, iter_to_end, read_compacted
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.synthetic import SyntheticModels
from driftline.streams.worker import topic_specs

pytestmark = pytest.mark.integration

MODELS = 10


class Cluster:
    """Worker processes of one consumer group, with per-test topics."""

    def __init__(self, bootstrap: str, prefix: str, logdir: Path) -> None:
        self.env = {
            **os.environ,
            "DRIFTLINE_BOOTSTRAP_SERVERS": bootstrap,
            "DRIFTLINE_GROUP_ID": f"{prefix}.group",
            "DRIFTLINE_AUTO_REFERENCE_EVENTS": "2000",
            "DRIFTLINE_PANE_SIZE": "500",
            "DRIFTLINE_SNAPSHOT_INTERVAL_S": "0.5",
            "DRIFTLINE_PARTITIONS": "6",
            "DRIFTLINE_METRICS_PORT": "0",
            "DRIFTLINE_LOG_LEVEL": "INFO",
        }
        for t in ("inference", "labels", "references", "alerts", "deadletter", "changes",
                  "state", "status"):
            self.env[f"DRIFTLINE_{t.upper()}_TOPIC"] = f"{prefix}.{t}"
        self.settings = Settings(**{k[len("DRIFTLINE_"):].lower(): v for k, v in self.env.items()
                                    if k.startswith("DRIFTLINE_") and "TEST" not in k})
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        ensure_topics(self.settings.kafka(), topic_specs(self.settings))

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"worker-{len(self.procs)}.log").open("wb")
        p = subprocess.Popen([sys.executable, "-m", "driftline.streams", "worker"], env=self.env,
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def logs(self) -> str:
        return "\n".join(f.read_text(errors="replace")[-3000:] for f in self.logdir.glob("*.log"))


@pytest.fixture
def cluster(kafka_bootstrap: str, unique_name: Callable[[str], str],
            tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(kafka_bootstrap, unique_name("faults"), tmp_path)
    yield c
    c.stop_all()


def produce_mixed(c: Cluster, per_model: int, seed: int, *, pace: float = 0.0) -> dict[str, Any]:
    """SDK envelopes for most events, kafka-python single JSON for some, 1% invalid."""
    s = c.settings
    gen = SyntheticModels(MODELS, seed=seed)
    valid: dict[str, int] = dict.fromkeys(gen.models, 0)
    invalid = 0
    kp = KafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=5)
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=200) as sdk:
        for _ in range(0, per_model, 500):
            for m in gen.models:
                evs = gen.events(m, 500)
                for i, ev in enumerate(evs):
                    if i % 100 == 7:  # 1% invalid, sent as single messages
                        bad = dict(ev, features={"f0": {"nested": True}})
                        kp.send(s.inference_topic, key=m.encode(), value=orjson.dumps(bad))
                        invalid += 1
                    elif i % 10 == 3:  # 10% as single JSON from a foreign producer
                        kp.send(s.inference_topic, key=m.encode(), value=orjson.dumps(ev))
                        valid[m] += 1
                    else:
                        assert sdk.emit_event(ev)
                        valid[m] += 1
            if pace:
                time.sleep(pace)
        kp.flush(60)
        assert sdk.flush(60) == 0
    kp.close()
    assert sdk.stats().failed == 0 and sdk.stats().dropped == 0
    return {"valid": valid, "invalid": invalid}


def wait_accounted(c: Cluster, expected: dict[str, int], invalid: int,
                   timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = collect_status(c.settings)
        applied = {m["model"]: m["events_applied"] for m in st["models"]}
        if applied == expected and st["deadletter_total"] == invalid:
            return st
        if any(applied.get(m, 0) > n for m, n in expected.items()):
            break  # applied twice: no point waiting
        time.sleep(1)
    raise AssertionError(f"accounting off: {st}\n{c.logs()}")


def dead_letter_offsets(c: Cluster) -> list[tuple[int, int]]:
    return [(d["partition"], d["offset"]) for d in
            (decode_dead_letter(m.value()) for m in iter_to_end(c.settings.kafka(),
                                                                  c.settings.deadletter_topic))]


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
                        expected[m] += 1
                time.sleep(0.05)
            assert sdk.flush(60) == 0
            stats = sdk.stats()
        assert stats.failed == 0 and stats.dropped == 0, stats
        assert stalled_worst < 0.05, f"emit blocked {stalled_worst * 1e3:.1f} ms during the stall"
        wait_accounted(c, expected, 0, timeout=120)
        assert all(p.poll() is None for p in c.procs), "a worker died during the stall"
        print(f"emit max {worst * 1e6:.0f} µs (during the stall {stalled_worst * 1e6:.0f} µs)")
    finally:
        if broker.paused:
            broker.resume()
        c.stop_all()


def test_broker_lost_worker_recreates_topics_and_keeps_running(
    broker_factory: Callable[..., Any], unique_name: Callable[[str], str]
) -> None:
    import threading as th

    from prometheus_client import CollectorRegistry

    from driftline.streams.worker import Worker

    first = broker_factory()
    port = int(first.bootstrap.rsplit(":", 1)[1])
    s = Settings(bootstrap_servers=first.bootstrap, group_id=unique_name("g"), partitions=2,
                 auto_reference_events=1000, pane_size=250, snapshot_interval_s=0.5)
    w = Worker(s, CollectorRegistry())
    t = th.Thread(target=w.run, daemon=True)
    t.start()
    gen = SyntheticModels(2, seed=0)

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
    first.stop()
    second = broker_factory(port=port)  # same address, empty memory
    deadline = time.monotonic() + 60
    while w.stats.cluster_changes == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert w.stats.cluster_changes == 1 and t.is_alive()
    # serving again after the change is not asserted here: on the embedded broker the
    # consumer-group join right after it lost its data stalls in about one run out of four
    # (the worker retries the join every 15 s); Apache Kafka does not lose its data this way
    refs = read_compacted(s.kafka(), s.references_topic)
    assert sorted(refs) == [m.encode() for m in gen.models]  # re-published, not rebuilt
    w.request_stop()
    t.join(30)
    assert not t.is_alive()
    second.stop()
