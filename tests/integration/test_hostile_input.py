"""Hostile producers against a real worker on a real broker.

Whatever is written to the inference topic, the worker stays up, every message is applied
within the limits or dead-lettered with a reason (counted from the topics, by source
offset), and the metric series on /metrics stay bounded:

    series <= 56 + P + M * (60 + 2 * (S + 1) + (12 + S + 1) * (F + 1))

per worker (a series = one exposed sample line), where M = ``max_models``, F = the largest
reference of a model in features (prediction excluded), P = assigned partitions. Per model:
counters and their ``_created`` (events, bytes, references built: 6), event-time lag,
last evaluation, insufficient data (3), alerts by kind x state (5 x 2 x 2 = 20), requests by
outcome (3 x 2), the latency histogram (15), the multivariate statistics' scores and
thresholds (3 x 2) and an alert state led by one of them (3), the high-confidence share (1),
segment events (S + 1 segment windows, counter and ``_created``); per column: three scores, a
threshold, up to five alert-state kinds, up to three data-quality rates and one score per
segment window. S = ``segment_max``: only the first S segment values of a model become
label values, the rest are pooled as ``other``. Fixed: dead letters by reason (12 x 2), the
two batch histograms (31) and models tracked. Model ids beyond ``max_models`` are dead-lettered
(``too_many_models``) and never become labels.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from driftline.schemas.codecs import decode_dead_letter, encode_envelope_rows
from driftline.streams.admin import ensure_topics, iter_to_end
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.metrics import MetricsServer
from driftline.streams.processor import UNATTRIBUTED
from driftline.streams.settings import Settings
from driftline.streams.worker import Worker, topic_specs

pytestmark = pytest.mark.integration

MAX_MODELS = 40
KAFKA_LOG = logging.getLogger("tests.hostile.librdkafka")  # not stderr, after the broker stops
TEN_MB = 10 * 1024 * 1024
LABEL_BREAKERS = ('"}\n{a=', "<script>alert(1)</script>", '{__name__="x"}', "a\\b", "[/]",
                  "x=\"1\",y", "é💥")


def settings_for(bootstrap: str, unique: Callable[[str], str], **kw: Any) -> Settings:
    prefix = unique("dl")
    return Settings(
        bootstrap_servers=bootstrap, group_id=f"{prefix}.group",
        inference_topic=f"{prefix}.inference", labels_topic=f"{prefix}.labels",
        references_topic=f"{prefix}.references", alerts_topic=f"{prefix}.alerts",
        deadletter_topic=f"{prefix}.deadletter", changes_topic=f"{prefix}.changes",
        state_topic=f"{prefix}.state", status_topic=f"{prefix}.status",
        partitions=2, auto_reference_events=200, pane_size=100, min_samples=100,
        snapshot_interval_s=0.5, batch_timeout_s=0.05, max_models=MAX_MODELS, **kw)


class Running:
    """A worker in a thread with its /metrics server; ``error`` holds what killed it."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.worker = Worker(settings, self.registry)
        self.server = MetricsServer(self.registry, "127.0.0.1", 0,
                                    health=lambda: self.worker.ready).start()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="hostile-worker")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # recorded: the test asserts the worker stayed up
            self.error = exc

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.server.port}{path}",
                                        timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(60)
        self.server.stop()
        assert not self.thread.is_alive()


@pytest.fixture
def running() -> Iterator[Callable[[Settings], Running]]:
    started: list[Running] = []

    def start(settings: Settings) -> Running:
        r = Running(settings)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop()


def wait_for(cond: Callable[[], bool], timeout: float, what: str, alive: Running) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert alive.thread.is_alive(), f"the worker died: {alive.error!r}"
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Sender:
    """A raw producer that records where each message landed and what it should become."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.inference_topic
        self.p = Producer({**settings.kafka(), "message.max.bytes": 16_777_216,
                           "linger.ms": 5, "enable.idempotence": True, "acks": "all",
                           "logger": KAFKA_LOG})
        self.expect: dict[int, tuple[str, Any]] = {}  # index -> ("applied", events) | ("dead", code)
        self.where: dict[int, tuple[int, int]] = {}  # index -> (partition, offset)
        self.errors: list[str] = []

    def send(self, value: bytes | None, key: str | None, outcome: tuple[str, Any]) -> None:
        i = len(self.expect)
        self.expect[i] = outcome

        def done(err: Any, msg: Any, i: int = i) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                self.where[i] = (msg.partition(), msg.offset())

        while True:
            try:
                self.p.produce(self.topic, value, key.encode() if key is not None else None,
                               on_delivery=done)
                break
            except BufferError:
                self.p.poll(0.05)
        self.p.poll(0)

    def flush(self) -> None:
        assert self.p.flush(120) == 0
        assert not self.errors, self.errors[:3]
        assert len(self.where) == len(self.expect)


def event(model: str, **features: Any) -> bytes:
    return orjson.dumps({"model": model, "features": features or {"x": 1.0}})


def hostile_messages(send: Callable[[bytes | None, str | None, tuple[str, Any]], None]) -> None:
    """The hostile set (each with its expected outcome)."""
    dead = "dead"
    send(b'{"model": "m-json", "features": {"x": 1.0', "m-json", (dead, "invalid_json"))
    send(b'{"model": "m-json", "features": {"x": "\xff\xfe"}}', "m-json", (dead, "invalid_json"))
    send(b"\xc3\x28\xa0\xa1", None, (dead, "invalid_json"))
    send(b'{"model": "m-json", "features": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "m-json",
         (dead, "invalid_json"))
    send(b'{"model": "m-json", "features": {"x": NaN}}', "m-json", (dead, "invalid_json"))
    send(b'{"model": "m-json", "features": {"x": Infinity}}', "m-json", (dead, "invalid_json"))
    send(b'{"model": "m-json", "features": {"x": -Infinity}}', "m-json", (dead, "invalid_json"))
    send(b'{"model": "m-json", "features": {"x": 1e999}}', "m-json", (dead, "invalid_json"))
    send(b"", None, (dead, "invalid_json"))
    send(None, "m-json", (dead, "invalid_json"))  # a tombstone on the inference topic
    send(b"[1, 2, 3]", None, (dead, "not_object"))
    send(b'"just a string"', None, (dead, "not_object"))
    send(b'{"model": "m-json", "features": {"x": 1.0}, "pad": "' + b"p" * TEN_MB + b'"}',
         "m-json", (dead, "payload_too_large"))
    send(orjson.dumps({"envelope": "driftline.batch/v9", "model": "m-json", "events": []}),
         "m-json", (dead, "unknown_envelope"))
    send(orjson.dumps({"model": "x" * 257, "features": {"x": 1}}), None, (dead, "string_too_long"))
    send(orjson.dumps({"model": "m-json", "features": {f"f{i}": 1 for i in range(600)}}),
         "m-json", (dead, "too_many_features"))
    send(orjson.dumps({"model": "m-json", "features": {"x": 1},
                       "segment": {f"k{i}": "v" for i in range(17)}}), "m-json",
         (dead, "too_many_segments"))
    send(orjson.dumps({"model": "m-json", "features": {"x": [1, 2]}}), "m-json", (dead, "schema"))
    send(orjson.dumps({"model": "m-json", "features": {"x": "s" * 1025}}), "m-json",
         (dead, "string_too_long"))
    send(orjson.dumps({"model": "m-json", "features": {"<script>": 1}, "latency_ms": -5}),
         "m-json", (dead, "schema"))
    # accepted as JSON allows: huge integers are doubles, the last duplicate key wins
    send(b'{"model": "m-json", "features": {"x": 123456789012345678901234567890}}', "m-json",
         ("applied", 1))
    send(b'{"model": "m-json", "features": {"x": 18446744073709551615, "y": -9223372036854775809}}',
         "m-json", ("applied", 1))
    send(b'{"model": "m-nope", "model": "m-json", "features": {"x": 1, "x": "dup"}}', "m-json",
         ("applied", 1))


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    return [decode_dead_letter(m.value()) for m in iter_to_end(settings.kafka(),
                                                              settings.deadletter_topic, 60)]


def series(text: str) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, dict(s.labels)) for fam in text_string_to_metric_families(text)
            for s in fam.samples]


def test_hostile_producers_cannot_take_the_worker_down(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        running: Callable[[Settings], Running]) -> None:
    s = settings_for(kafka_bootstrap, unique_name)
    ensure_topics(s.kafka(), topic_specs(s))
    w = running(s)
    wait_for(lambda: w.worker.ready, 60, "worker ready", w)
    tx = Sender(s)

    # 1. hostile messages, and models that stay in use (label-breaking feature names, many
    #    segment values), before the model flood
    hostile_messages(tx.send)
    names = {f"n{i}_{b}": float(i) for i, b in enumerate(LABEL_BREAKERS)}
    for i in range(450):
        feats = {k: v + (i % 7) * 0.1 for k, v in names.items()}
        tx.send(orjson.dumps({"model": "m-names", "features": feats, "latency_ms": 2.0,
                              "prediction": (i % 10) / 10}), "m-names", ("applied", 1))
    segments = 0
    for k in range(40):  # 20,000 events with 20,000 distinct segment values
        evs = [{"features": {"x": float(j % 13)}, "segment": {"user": f"u{k}-{j}", "region": "eu"}}
               for j in range(500)]
        tx.send(encode_envelope_rows("m-segments", evs), "m-segments", ("applied", 500))
        segments += 500
    tx.flush()
    n_first = len(tx.expect)
    applied_first = sum(v for o, v in tx.expect.values() if o == "applied")
    wait_for(lambda: w.worker.stats.consumed >= n_first, 120, "first wave consumed", w)

    # 2. a flood of distinct model ids far beyond max_models
    known_models = {"m-json", "m-names", "m-segments"}
    flood = 1_100
    for i in range(flood):
        tx.send(event(f"flood-{i:05d}", x=float(i)), f"flood-{i:05d}", ("flood", 1))
    tx.flush()
    wait_for(lambda: w.worker.stats.consumed >= len(tx.expect), 120, "flood consumed", w)
    status, _ = w.get("/healthz")
    assert status == 200 and w.thread.is_alive()
    _, text = w.get("/metrics")
    w.stop()
    assert w.error is None, f"the worker died: {w.error!r}"

    # -- every message is applied or dead-lettered once, with a reason ------------------
    letters = dead_letters(s)
    by_offset: dict[tuple[int, int], dict[str, Any]] = {}
    for d in letters:
        assert d["topic"] == s.inference_topic and d["reason"].startswith(d["reason_code"] + ": ")
        by_offset.setdefault((d["partition"], d["offset"]), d)  # a repeat after a replay is one
    position = {tx.where[i]: i for i in tx.expect}
    assert set(by_offset) <= set(position), "a dead letter for a message never sent"
    dead_codes: Counter[str] = Counter()
    flood_dead = 0
    for where, d in by_offset.items():
        outcome, arg = tx.expect[position[where]]
        if outcome == "flood":
            assert d["reason_code"] == "too_many_models"
            flood_dead += 1
        else:
            assert outcome == "dead", f"applied message dead-lettered: {d['reason']}"
            assert d["reason_code"] == arg, (arg, d["reason"])
            dead_codes[arg] += 1
    expected_dead = Counter(arg for o, arg in tx.expect.values() if o == "dead")
    assert dead_codes == expected_dead
    big = next(d for d in by_offset.values() if d["reason_code"] == "payload_too_large")
    assert big["payload_bytes"] > TEN_MB and len(big["payload"] or "") <= 64 * 1024

    st = collect_status(s)
    applied = {m["model"]: m["events_applied"] for m in st["models"]}
    flood_applied = sum(v for m, v in applied.items() if m.startswith("flood-"))
    assert flood_applied + flood_dead == flood
    assert flood_applied == MAX_MODELS - len(known_models)  # the limit, exactly
    assert sum(v for m, v in applied.items() if m in known_models) == applied_first
    assert applied["m-segments"] == segments
    assert st["deadletter_total"] == len(by_offset)

    # -- bounded metric series ------------------------------------------------------------
    samples = series(text)  # parses: hostile names did not break the exposition format
    models = {lbl["model"] for _, lbl in samples if "model" in lbl}
    # the worker's own state for dead letters without a model is snapshotted too: its
    # state-topic writes are the one series beyond the tracked models
    assert len(models - {UNATTRIBUTED}) <= MAX_MODELS, len(models)
    assert len({m for m in models if m.startswith("flood-")}) <= MAX_MODELS - len(known_models)
    assert not any(v.startswith("u") and "-" in v for _, lbl in samples for v in lbl.values()), \
        "a raw segment value became a label value of its own"
    segment_labels = {lbl["segment"] for _, lbl in samples if "segment" in lbl}
    assert 0 < len(segment_labels) <= s.segment_max + 1, segment_labels  # the rest are "other"
    features = {lbl["feature"] for _, lbl in samples if lbl.get("model") == "m-names"
                and "feature" in lbl}
    assert set(names) <= features, "label-breaking feature names must round-trip as labels"
    label_names = {k for _, lbl in samples for k in lbl}
    assert label_names <= {"model", "feature", "statistic", "kind", "state", "reason", "topic",
                           "partition", "source", "outcome", "le", "segment", "metric"}, \
        label_names
    f_max = len(names)
    seg = s.segment_max
    bound = 56 + s.partitions + MAX_MODELS * (60 + 2 * (seg + 1)
                                              + (12 + seg + 1) * (f_max + 1))
    per_model = Counter(lbl.get("model") for _, lbl in samples)
    print(f"metric series: {len(samples)} (bound {bound}); per model: {dict(per_model)}")
    assert len(samples) <= bound, (len(samples), bound)


def test_a_hostile_reference_cannot_take_the_worker_down(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        running: Callable[[Settings], Running]) -> None:
    s = settings_for(kafka_bootstrap, unique_name)
    ensure_topics(s.kafka(), topic_specs(s))
    ref = {"schema": "driftline.reference/v1", "reference_id": "m@evil", "model": "m",
           "model_version": None, "created_at": 0.0, "source": "x", "size": 10,
           "numeric": [], "categorical": [], "prediction": None, "multivariate": None}
    p = Producer({**s.kafka(), "logger": KAFKA_LOG})
    p.produce(s.references_topic, orjson.dumps(ref), b"m")
    assert p.flush(30) == 0
    w = running(s)
    wait_for(lambda: w.worker.ready, 60, "worker ready", w)
    tx = Sender(s)
    for i in range(20):
        tx.send(event("m", x=float(i)), "m", ("applied", 1))
    tx.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and w.worker.stats.consumed < 20 and w.thread.is_alive():
        time.sleep(0.2)
    assert w.thread.is_alive(), f"the worker died: {w.error!r}"
    assert w.worker.stats.consumed == 20
    w.stop()
