"""Topic administration and reading a topic to its end (without trusting ListOffsets).

``config`` arguments are librdkafka dicts, e.g. from
:func:`driftline.streams.kafka_config.client_config`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from driftline.streams.throttle import ThrottledLog

__all__ = [
    "TopicMismatchError",
    "TopicSpec",
    "UnknownTopicError",
    "delete_topics",
    "ensure_topics",
    "iter_to_end",
    "partition_count",
    "read_compacted",
]

log = logging.getLogger(__name__)

# Keys that only consumers or producers understand; dropped before building an AdminClient
# so librdkafka does not warn about them.
_NOT_ADMIN = ("group.", "enable.auto.", "auto.", "session.", "heartbeat.", "fetch.", "linger.",
              "acks", "compression.", "enable.idempotence", "enable.partition.eof",
              "transactional.", "isolation.", "max.poll.", "queue.buffering.", "batch.",
              "partition.assignment.", "statistics.")  # fmt: skip


class UnknownTopicError(LookupError):
    """The topic does not exist on the cluster."""


class TopicMismatchError(RuntimeError):
    """An existing topic has a different partition count than its spec."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic driftline needs: name, partition count, compaction and extra topic config."""

    name: str
    partitions: int
    compact: bool = False
    config: Mapping[str, str] = field(default_factory=dict, hash=False)
    replication_factor: int | None = None  # None: the broker's default

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("topic name must not be empty")
        if self.partitions < 1:
            raise ValueError(f"{self.name}: partitions must be >= 1, got {self.partitions}")
        policy = self.config.get("cleanup.policy")
        if self.compact and policy is not None and "compact" not in policy:
            raise ValueError(f"{self.name}: compact=True conflicts with cleanup.policy={policy}")

    def topic_config(self) -> dict[str, str]:
        """Topic-level config sent on creation (``cleanup.policy=compact`` when compact)."""
        cfg = {str(k): str(v) for k, v in self.config.items()}
        if self.compact:
            cfg.setdefault("cleanup.policy", "compact")
        return cfg


def _admin(config: Mapping[str, Any]) -> AdminClient:
    conf = {k: v for k, v in config.items() if not str(k).startswith(_NOT_ADMIN)}
    conf.setdefault("logger", ThrottledLog(log))
    return AdminClient(conf)


def _partition_counts(admin: AdminClient, timeout: float) -> dict[str, int]:
    """Partition count of every topic (all-topics metadata: never auto-creates a topic)."""
    md = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def ensure_topics(
    config: Mapping[str, Any],
    specs: Sequence[TopicSpec],
    timeout: float = 30.0,
    *,
    strict: bool = False,
) -> list[str]:
    """Create the missing topics of ``specs``; return the names created by this call.

    Create every topic before anything produces to it: Tansu auto-creates an unknown topic
    with 4 partitions on first produce. An existing topic with another partition count is
    logged, or raises :class:`TopicMismatchError` when ``strict``. A topic created
    concurrently by another process counts as existing.
    """
    deadline = time.monotonic() + timeout
    admin = _admin(config)
    existing = _partition_counts(admin, timeout)
    for spec in specs:
        have = existing.get(spec.name)
        if have is not None and have != spec.partitions:
            msg = f"topic {spec.name} has {have} partitions, expected {spec.partitions}"
            if strict:
                raise TopicMismatchError(msg)
            log.warning(msg)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    new = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=-1 if s.replication_factor is None else s.replication_factor,
            config=s.topic_config(),
        )
        for s in missing
    ]
    futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
    created: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise
        created.append(name)
    _await_metadata(admin, {s.name: s.partitions for s in missing if s.name in created}, deadline)
    log.info("created topics %s", created)
    return sorted(created)


def _await_metadata(admin: AdminClient, want: Mapping[str, int], deadline: float) -> None:
    """Wait until metadata shows the created topics with all their partitions."""
    while want:
        counts = _partition_counts(admin, max(0.5, deadline - time.monotonic()))
        if all(counts.get(n) == p for n, p in want.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"created topics not visible in metadata: {sorted(want)}")
        time.sleep(0.05)


def delete_topics(
    config: Mapping[str, Any], names: Sequence[str], timeout: float = 30.0
) -> list[str]:
    """Delete topics; return the names deleted (unknown topics are ignored)."""
    if not names:
        return []
    admin = _admin(config)
    futures = admin.delete_topics(list(names), operation_timeout=timeout, request_timeout=timeout)
    deleted: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise
        deleted.append(name)
    return sorted(deleted)


def partition_count(config: Mapping[str, Any], topic: str, timeout: float = 10.0) -> int | None:
    """Number of partitions of ``topic``, or ``None`` when it does not exist."""
    return _partition_counts(_admin(config), timeout).get(topic)


def iter_to_end(
    config: Mapping[str, Any], topic: str, timeout: float = 30.0, *, since_ms: int | None = None
) -> Iterator[Message]:
    """Yield every record of ``topic`` from the beginning to the end as of the read.

    The end is where each partition reports ``_PARTITION_EOF``, whose high watermark
    comes from the fetch response. ListOffsets is not used: Tansu answers it with a wrong
    high watermark when the tail was written in multi-record batches. With ``since_ms``
    (epoch milliseconds) each partition starts at the first record whose timestamp is at
    or after it (``offsets_for_times``; from the beginning if the broker cannot answer,
    so callers filtering by time still see every record they want). Raises
    :class:`UnknownTopicError` when the topic is missing and ``TimeoutError`` when the end
    is not reached within ``timeout`` seconds (never a silent partial read).
    """
    deadline = time.monotonic() + timeout
    conf = {k: v for k, v in config.items() if not str(k).startswith(_NOT_ADMIN)}
    conf.update(
        {
            "group.id": f"driftline-reader-{uuid.uuid4().hex}",  # never joined or committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 10,
            "fetch.wait.max.ms": 10,  # the EOF comes from an empty fetch: don't let it wait
            "logger": ThrottledLog(log),
        }
    )
    consumer = Consumer(conf)
    try:
        # Metadata first (all topics: never auto-creates): with leaders known at assign()
        # the offset query starts at once instead of after librdkafka's 500 ms retry timer.
        md = consumer.list_topics(timeout=timeout)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise UnknownTopicError(topic)
        n = len(meta.partitions)
        starts = {p: OFFSET_BEGINNING for p in range(n)}
        if since_ms is not None:
            starts = _starts_since(consumer, topic, n, since_ms, timeout)
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        pending = set(starts)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{topic}: end not reached in {timeout} s (partitions {sorted(pending)})"
                )
            for msg in consumer.consume(num_messages=1000, timeout=min(remaining, 0.5)):
                err = msg.error()
                if err is None:
                    yield msg
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                elif err.fatal() or err.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ):
                    raise KafkaException(err)
                else:
                    log.warning("reading %s: %s", topic, err)
    finally:
        consumer.close()


def _starts_since(consumer: Consumer, topic: str, n: int, since_ms: int,
                  timeout: float) -> dict[int, int]:
    """First offset at or after ``since_ms`` per partition; partitions with none are left out."""
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in range(n)], timeout=timeout)
    except KafkaException as exc:
        log.warning("%s: offsets_for_times failed (%s); reading from the beginning", topic, exc)
        return {p: OFFSET_BEGINNING for p in range(n)}
    starts: dict[int, int] = {}
    for tp in found:
        if tp.error is not None:
            starts[tp.partition] = OFFSET_BEGINNING
        elif tp.offset >= 0:
            starts[tp.partition] = tp.offset
    return starts


def read_compacted(
    config: Mapping[str, Any], topic: str, timeout: float = 30.0
) -> dict[bytes, bytes]:
    """Last value per key of a (compacted) topic, read from the beginning to the end.

    A tombstone (value ``None``) deletes its key; records without a key are skipped.
    See :func:`iter_to_end` for how the end is found.
    """
    out: dict[bytes, bytes] = {}
    for msg in iter_to_end(config, topic, timeout):
        key = msg.key()
        if key is None:
            continue
        value = msg.value()
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out
