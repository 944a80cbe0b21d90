"""Alert subscriber: iterate over DriftAlerts on the alerts topic.

Without ``follow`` the iterator stops at the end of the topic as of the read: where every
partition reported ``_PARTITION_EOF`` (its high watermark comes from the fetch response;
ListOffsets is not trusted, see DESIGN §6); a missing topic ends it empty. With ``follow``
it blocks for new alerts, and waits for a missing topic and for brokers that do not answer.

Starting "from the end" cannot rely on ListOffsets either: on Tansu the logical end
offset it answers can lie before the last records. So a reader that starts at the end
also drops whatever it reads on a partition before that partition's first EOF.

Alerts are delivered at least once by the workers; repeats are dropped by ``alert_id``
(bounded LRU set). Malformed messages are skipped and counted, never raised.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from driftline.schemas.codecs import decode_alert
from driftline.schemas.models import DriftAlert
from driftline.streams.admin import partition_count
from driftline.streams.kafka_config import client_config, consumer_config
from driftline.streams.throttle import LogThrottle, ThrottledLog

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "driftline.alerts"
_LOGGED_SKIPS = 10  # malformed messages logged at warning level; the rest only counted


def _as_set(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


class AlertSubscriber:
    """Iterator over :class:`DriftAlert` objects from the alerts topic.

    ``config``: librdkafka dict or bootstrap string (with ``client_options`` for
    :func:`~driftline.streams.kafka_config.client_config`). ``group_id=None`` reads with
    a throwaway consumer that assigns every partition itself (no group join, nothing
    committed); a named group subscribes and commits, so a later run resumes after what
    was read. ``from_beginning`` picks where a reader without committed offsets starts.
    ``models``/``kinds``/``states`` filter (a name or a collection). Without ``follow``,
    iteration raises ``TimeoutError`` when the end is not reached after ``timeout``
    seconds without progress.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str,
        topic: str = DEFAULT_TOPIC,
        group_id: str | None = None,
        from_beginning: bool = True,
        *,
        follow: bool = False,
        models: str | Iterable[str] | None = None,
        kinds: str | Iterable[str] | None = None,
        states: str | Iterable[str] | None = None,
        dedup_size: int = 100_000,
        timeout: float = 30.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if dedup_size < 1:
            raise ValueError("dedup_size must be >= 1")
        self.topic, self.group_id, self.from_beginning = topic, group_id, from_beginning
        self.follow, self.timeout, self.dedup_size = follow, timeout, dedup_size
        self.models, self.kinds, self.states = _as_set(models), _as_set(kinds), _as_set(states)
        self.skipped = 0  # malformed messages
        self.duplicates = 0  # repeats of an alert_id already yielded
        self.filtered = 0  # well-formed alerts the filters left out
        self.yielded = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._assigned: set[int] | None = None  # None: no assignment yet
        self._eof: set[int] = set()
        self._before_end: set[int] = set()  # starting at the end: partitions not at EOF yet
        self._closed = False
        self._unreachable = LogThrottle(60.0)  # following with no broker answering

        if isinstance(config, str):
            self._base: dict[str, Any] = client_config(config, **(client_options or {}))
        else:
            if client_options:
                raise ValueError("client_options only apply when config is a bootstrap string")
            self._base = dict(config)
        group = group_id or f"driftline-alerts-{uuid.uuid4().hex}"
        # project defaults < the caller's settings < what this reader needs
        self._consumer = Consumer({
            **consumer_config(self._base, group), "logger": ThrottledLog(log), **self._base,
            "group.id": group,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": group_id is not None,
        })
        if group_id is not None:
            self._consumer.subscribe([topic], on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_revoke)

    # -------------------------------------------------------------- assignment

    def _partitions(self) -> int | None:
        """The topic's partition count (None while it is missing). Following, a broker
        that does not answer is waited for (one warning a minute), not an error."""
        try:
            return partition_count(self._base, self.topic, timeout=min(10.0, self.timeout))
        except KafkaException as exc:
            if not self.follow:
                raise
            if self._unreachable.ready():
                log.warning("no answer from the brokers (%s); waiting", exc.args[0])
            return None

    def _assign_all(self) -> bool:
        """Throwaway reader: assign every partition; False while the topic is missing."""
        n = self._partitions()
        if n is None:
            return False
        start = OFFSET_BEGINNING if self.from_beginning else OFFSET_END
        self._consumer.assign([TopicPartition(self.topic, p, start) for p in range(n)])
        self._assigned = set(range(n))
        if not self.from_beginning:
            self._before_end = set(range(n))
        return True

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = (self._assigned or set()) | {tp.partition for tp in partitions}
        if not self.from_beginning:  # partitions without a committed offset start at the end
            committed = consumer.committed(partitions, timeout=10.0)
            self._before_end |= {tp.partition for tp in committed if tp.offset < 0}

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self._assigned = (self._assigned or set()) - gone
        self._eof -= gone
        self._before_end -= gone

    def at_end(self) -> bool:
        """Whether every assigned partition has been read to its end."""
        return self._assigned is not None and self._assigned <= self._eof

    # -------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[DriftAlert]:
        if self._closed:
            raise RuntimeError("subscriber is closed")
        progress = time.monotonic()
        if self.group_id is not None and not self.follow and self._assigned is None \
                and self._partitions() is None:
            return  # no topic, so no alert yet (a group would wait for it to appear)
        while not self._closed:  # close() (e.g. from a signal handler) ends the iteration
            if self.group_id is None and self._assigned is None and not self._assign_all():
                if not self.follow:
                    return  # no topic, so no alert yet
                time.sleep(1.0)
                continue
            if not self.follow and self.at_end():
                return
            if not self.follow and time.monotonic() - progress > self.timeout:
                raise TimeoutError(f"{self.topic}: end not reached within {self.timeout} s")
            for msg in self._consumer.consume(num_messages=500, timeout=0.2):
                if self._closed:
                    return
                progress = time.monotonic()
                alert = self._handle(msg)
                if alert is not None:
                    self.yielded += 1
                    yield alert

    def _handle(self, msg: Message) -> DriftAlert | None:
        err, partition = msg.error(), msg.partition() or 0
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._eof.add(partition)
                self._before_end.discard(partition)
            elif err.fatal():
                raise KafkaException(err)
            elif err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.warning("reading %s: %s", self.topic, err)
            return None
        self._eof.discard(partition)
        if partition in self._before_end:
            return None
        value = msg.value()
        try:
            if value is None:
                raise ValueError("empty message")
            alert = decode_alert(value)
        except Exception as exc:  # malformed: count it, never stop the reader
            self.skipped += 1
            level = logging.WARNING if self.skipped <= _LOGGED_SKIPS else logging.DEBUG
            log.log(level, "skipping malformed alert at %s[%d]@%d: %s",
                    msg.topic(), msg.partition(), msg.offset(), exc)
            return None
        if alert.alert_id in self._seen:
            self._seen.move_to_end(alert.alert_id)
            self.duplicates += 1
            return None
        self._seen[alert.alert_id] = None
        if len(self._seen) > self.dedup_size:
            self._seen.popitem(last=False)
        if ((self.models is not None and alert.model not in self.models)
                or (self.kinds is not None and alert.kind not in self.kinds)
                or (self.states is not None and alert.state not in self.states)):
            self.filtered += 1
            return None
        return alert

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the consumer (a named group commits what was read)."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> AlertSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
