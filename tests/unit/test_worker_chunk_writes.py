"""The order in which a worker writes a label-join store's records, with chunk records
written between checkpoints: a snapshot is produced only once every chunk record it names
is acknowledged, and states are dropped only once nothing written for them is in flight.

The producer here records calls and delivers at ``flush`` (as librdkafka calls delivery
callbacks only in ``poll``/``flush``); whether the broker took a record earlier is not
known to a worker before then, which is what these orders must respect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from driftline.detectors.label_join import JoinConfig, JoinStore
from driftline.streams.model_state import ModelState
from driftline.streams.settings import Settings
from driftline.streams.worker import Worker


class _Msg:
    def __init__(self, topic: str, key: bytes | None) -> None:
        self._topic, self._key = topic, key

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key


class _Producer:
    """Records ``produce`` (a tombstone as "delete") and ``flush``; delivers at
    ``flush``, failing the records ``fails`` picks."""

    def __init__(self, fails: Callable[[str], bool] = lambda key: False) -> None:
        self.fails = fails
        self.log: list[tuple[str, str]] = []
        self.open: list[tuple[_Msg, Any]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                on_delivery: Any = None, **kw: Any) -> None:
        self.log.append(("produce" if value is not None else "delete", (key or b"").decode()))
        self.open.append((_Msg(topic, key), on_delivery))

    def flush(self, timeout: float = -1) -> int:
        self.log.append(("flush", ""))
        done, self.open = self.open, []
        for msg, cb in done:
            if cb is not None:
                key = (msg.key() or b"").decode()
                cb("injected failure" if self.fails(key) else None, msg)
        return 0

    def poll(self, timeout: float = 0) -> int:
        return 0


class _NoConsumer:
    """A consumer with nothing fetched (the revoke rewinds nothing)."""


def _worker(producer: _Producer) -> tuple[Worker, ModelState]:
    w = Worker(Settings(), CollectorRegistry())
    w._producer = producer  # type: ignore[assignment]
    st = ModelState("m", 0, joins=JoinStore(JoinConfig(ttl_seconds=1e9), chunk_entries=8))
    w.processor.models[st.key] = st
    return w, st


def _predict(st: ModelState, first: int, n: int) -> None:
    assert st.joins is not None
    st.joins.add_predictions([f"e{i}" for i in range(first, first + n)], [0.5] * n, None,
                             [1.0] * n)
    st.dirty = True


def _acknowledged_before(log: list[tuple[str, str]], key: str) -> set[str]:
    """Keys produced and then flushed before ``key`` was first produced."""
    acked: set[str] = set()
    pending: set[str] = set()
    for what, k in log:
        if what == "produce" and k == key:
            return acked
        if what == "produce":
            pending.add(k)
        else:
            acked |= pending
            pending = set()
    raise AssertionError(f"{key} never produced: {log}")


def test_a_snapshot_waits_for_the_chunks_written_since_the_last_checkpoint() -> None:
    # a batch fills chunk 0: written at once, not waited for; the next batch fills none,
    # so the checkpoint has no chunk record of its own, and must still wait for chunk 0
    producer = _Producer()
    w, st = _worker(producer)
    _predict(st, 0, 9)
    w._write_sealed_chunks()
    early = [k for what, k in producer.log if what == "produce"]
    assert early == ["m@0/joins/pred/0/0"] and ("flush", "") not in producer.log
    _predict(st, 9, 1)
    w.checkpoint()
    assert "m@0/joins/pred/0/0" in _acknowledged_before(producer.log, "m@0")
    assert not st.dirty


def test_a_chunk_written_between_checkpoints_that_failed_is_never_named() -> None:
    # its failure is reported by the checkpoint's wait: no snapshot is produced, and the
    # next checkpoint writes the chunk again under a new name before naming it
    producer = _Producer(fails=lambda key: key == "m@0/joins/pred/0/0")
    w, st = _worker(producer)
    _predict(st, 0, 9)
    w._write_sealed_chunks()
    _predict(st, 9, 1)
    with pytest.raises(KafkaException):
        w.checkpoint()
    assert ("produce", "m@0") not in producer.log and st.dirty
    producer.log.clear()
    w.checkpoint()
    again = [k for what, k in producer.log if what == "produce" and "/joins/pred/0/" in k]
    assert again and "m@0/joins/pred/0/0" not in again
    assert set(again) <= _acknowledged_before(producer.log, "m@0")
    # the failed name is deleted after the snapshot that no longer names it
    assert producer.log.index(("delete", "m@0/joins/pred/0/0")) > \
        producer.log.index(("produce", "m@0"))


def test_a_revoke_settles_the_chunks_in_flight_before_dropping_the_models() -> None:
    # the revoke's checkpoint writes nothing (the cluster is in doubt and cannot be
    # confirmed), yet the chunk written before must be settled before the state is
    # dropped: the next owner could otherwise write the same name, overwritten after
    producer = _Producer()
    w, st = _worker(producer)
    _predict(st, 0, 9)
    w._write_sealed_chunks()
    w._watch.suspect.set()
    w._confirm_cluster = lambda: False  # type: ignore[method-assign]
    w._assigned = {0}
    w._consumer = _NoConsumer()  # type: ignore[assignment]
    dropped: list[list[str]] = []
    drop = w.processor.drop
    w.processor.drop = lambda keys: (dropped.append(list(keys)),  # type: ignore[method-assign]
                                     producer.log.append(("drop", "")), drop(keys))[-1]
    w._on_revoke(None, [TopicPartition(w.settings.inference_topic, 0)])  # type: ignore[arg-type]
    assert dropped == [["m@0"]] and ("produce", "m@0") not in producer.log
    assert producer.log == [("produce", "m@0/joins/pred/0/0"), ("flush", ""), ("drop", "")]
    assert not w.processor.models
