"""A partition taken over by a worker restores its models from the state topic as it is
now, never from snapshots that worker read at an earlier assignment."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from workers import isolated_settings, produce_sdk, wait_for

import driftline.streams.worker as worker_mod
from driftline.schemas.codecs import decode_dead_letter
from driftline.streams.admin import iter_to_end, read_compacted
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.kafka_config import producer_config
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.synthetic import SyntheticModels

pytestmark = pytest.mark.integration


def _applied(s: Settings) -> dict[str, int]:
    """Events applied per model, as the status topic has them."""
    return {m["model"]: m["events_applied"] for m in collect_status(s)["models"]}


class _LosesFirst:
    """A worker's producer, except that the first record ``matches`` picks is not sent
    and its delivery is reported as failed (what a broker that never took it causes)."""

    def __init__(self, worker: Any, matches: Callable[[str, bytes | None], bool]) -> None:
        self.worker, self.producer, self.matches = worker, worker._producer, matches
        self.lost: list[bytes] = []

    def produce(self, topic: str, value: bytes, **kw: Any) -> None:
        if not self.lost and self.matches(topic, kw.get("key")):
            self.lost.append(value)
            self.worker._delivery_errors.append((topic, "Local: Message timed out (injected)"))
            return
        self.producer.produce(topic, value, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)


def test_takeover_after_a_failed_state_read_restores_the_newest_snapshot(
    kafka_bootstrap: str, unique_name: Callable[[str], str],
    start_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one partition: one worker owns it, the other waits with the snapshots it read when
    # it joined. The owner then applies more, snapshots and commits, and stops; the
    # waiting worker takes over while its first reads of the state topic fail.
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=1,
                          auto_reference_events=500, pane_size=250)
    gen = SyntheticModels(2, seed=4)
    failures = {"left": 0, "calls": 0}

    def flaky_read(*args: Any, **kw: Any) -> dict[bytes, bytes]:
        failures["calls"] += 1
        if failures["left"] > 0:
            failures["left"] -= 1
            raise TimeoutError("state topic not read to its end (injected)")
        return read_compacted(*args, **kw)

    monkeypatch.setattr(worker_mod, "read_compacted", flaky_read)
    first = start_worker(s)
    wait_for(lambda: first.worker.ready and first.worker._assigned == {0}, 60,
             "the first worker to own the partition")
    produce_sdk(s, gen, 1000)
    wait_for(lambda: first.worker.stats.applied == 2000, 60, "the first 2,000 events")
    second = start_worker(s)
    workers = (first, second)
    # a read per assignment: the first worker's, then both workers' after the second joined
    wait_for(lambda: failures["calls"] >= 3, 90, "the rebalance after the second joined")
    wait_for(lambda: sorted(len(w.worker._assigned) for w in workers) == [0, 1], 30,
             "one owner")
    owner, waiting = (first, second) if first.worker._assigned else (second, first)
    produce_sdk(s, gen, 1000)
    wait_for(lambda: sum(st.events_applied for st in owner.worker.processor.models.values())
             == 4000, 60, "the next 2,000 events at the owner")
    failures["left"], calls, before = 1, failures["calls"], waiting.worker.stats.applied
    owner.stop()  # final snapshots and commit, then leaves the group
    produce_sdk(s, gen, 500)
    wait_for(lambda: waiting.worker.stats.applied == before + 1000, 90,
             "the last 1,000 events at the new owner")
    assert waiting.worker._assigned == {0}

    expected = dict.fromkeys(gen.models, 2500)
    with contextlib.suppress(AssertionError):  # the status catches up within a snapshot
        wait_for(lambda: _applied(s) == expected, 30, "the status topic")
    assert _applied(s) == expected
    assert failures["calls"] == calls + 2  # the failed read was repeated, not skipped


#: the worker decoding in its own process, and in a decode process; small batches, so
#: that with a decode process there is a batch in flight whenever one is applied
DECODE = pytest.mark.parametrize("decode_process", ["off", "on"], ids=["inline", "child"])


@DECODE
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_batch_that_fails_is_read_again_not_lost(
    kafka_bootstrap: str, unique_name: Callable[[str], str],
    start_worker: Callable[..., Any], when: str, decode_process: str,
) -> None:
    # the batch handler raises once, before or after the processor applied the batch (as a
    # failed delivery of its dead letters would): the worker reads the batch again, and
    # every event counts once
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=2,
                          auto_reference_events=500, pane_size=250,
                          decode_process=decode_process, batch_max_messages=3)
    gen = SyntheticModels(3, seed=5)
    w = start_worker(s).worker
    real = w.processor.process_decoded
    raised: list[bool] = []

    def failing_once(*args: Any, **kw: Any) -> Any:
        if raised:
            return real(*args, **kw)
        raised.append(True)
        if when == "before":
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "injected"))
        real(*args, **kw)
        raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "injected"))

    w.processor.process_decoded = failing_once  # type: ignore[method-assign]
    wait_for(lambda: w.ready and w._assigned == {0, 1}, 60, "the assignment")
    produce_sdk(s, gen, 1000)

    expected = dict.fromkeys(gen.models, 1000)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: _applied(s) == expected, 60, "the status topic")
    assert raised
    assert _applied(s) == expected


def _send_with_bad(s: Settings, gen: SyntheticModels, per_model: int) -> int:
    """``per_model`` valid events of each model as SDK envelopes, and one invalid single
    message per model after every 100; returns the number of invalid ones."""
    bad = 0
    raw = Producer(producer_config(s.kafka()))
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=100) as p:
        for m in gen.models:
            for i, ev in enumerate(gen.events(m, per_model)):
                assert p.emit_event(ev)
                if i % 100 == 99:
                    raw.produce(s.inference_topic, orjson.dumps(
                        dict(ev, features={"f0": {"nested": True}})), key=m.encode())
                    bad += 1
        assert p.flush(30) == 0
    assert raw.flush(30) == 0
    return bad


def _dead_letters(s: Settings) -> list[tuple[int, int]]:
    return [(d["partition"], d["offset"]) for d in
            (decode_dead_letter(m.value()) for m in iter_to_end(s.kafka(), s.deadletter_topic))]


@DECODE
def test_dead_letters_the_broker_did_not_take_are_produced_again(
    kafka_bootstrap: str, unique_name: Callable[[str], str],
    start_worker: Callable[..., Any], decode_process: str,
) -> None:
    # the first dead letter never reaches the broker and its delivery reports an error:
    # the worker goes back to its last checkpoint and produces it again
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=2,
                          auto_reference_events=500, pane_size=250,
                          decode_process=decode_process, batch_max_messages=3)
    gen = SyntheticModels(3, seed=6)
    w = start_worker(s).worker
    producer = _LosesFirst(w, lambda topic, _key: topic == s.deadletter_topic)
    w._producer = producer
    wait_for(lambda: w.ready and w._assigned == {0, 1}, 60, "the assignment")
    bad = _send_with_bad(s, gen, 1000)

    expected = dict.fromkeys(gen.models, 1000)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: _applied(s) == expected and len(set(_dead_letters(s))) == bad, 60,
                 "every event applied and every invalid one dead-lettered")
    assert producer.lost
    assert _applied(s) == expected
    assert len(set(_dead_letters(s))) == bad == 30


@DECODE
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_dies_in_a_batch_commits_nothing_of_it(
    kafka_bootstrap: str, unique_name: Callable[[str], str],
    start_worker: Callable[..., Any], decode_process: str,
) -> None:
    # the batch handler raises an unexpected error: the worker stops (its final
    # checkpoint must not commit the batch it never applied, nor the one in flight) and a
    # new worker reads it
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=2,
                          auto_reference_events=500, pane_size=250,
                          decode_process=decode_process, batch_max_messages=3)
    gen = SyntheticModels(3, seed=7)
    first = start_worker(s)
    w = first.worker
    real = w.processor.process_decoded
    calls: list[int] = []

    def failing_first(*args: Any, **kw: Any) -> Any:
        calls.append(len(args[2]))
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real(*args, **kw)

    w.processor.process_decoded = failing_first  # type: ignore[method-assign]
    wait_for(lambda: w.ready and w._assigned == {0, 1}, 60, "the assignment")
    produce_sdk(s, gen, 1000)
    first.thread.join(60)
    assert not first.thread.is_alive() and len(calls) == 1
    first.server.stop()
    start_worker(s)

    expected = dict.fromkeys(gen.models, 1000)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: _applied(s) == expected, 90, "the status topic")
    assert _applied(s) == expected


def test_a_snapshot_the_broker_did_not_take_is_written_again_before_a_commit(
    kafka_bootstrap: str, unique_name: Callable[[str], str],
    start_worker: Callable[..., Any],
) -> None:
    # the first snapshot of one model never reaches the broker; later checkpoints (other
    # models changed, the offsets committed) must write it again, or a worker restarting
    # from those offsets restores that model without the events it missed
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=1,
                          auto_reference_events=500, pane_size=250)
    gen = SyntheticModels(2, seed=8)
    quiet, busy = gen.models
    first = start_worker(s)
    w = first.worker
    producer = _LosesFirst(w, lambda topic, key: topic == s.state_topic
                           and key == f"{quiet}@0".encode())
    w._producer = producer
    wait_for(lambda: w.ready and w._assigned == {0}, 60, "the assignment")
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=250) as p:
        for ev in gen.events(quiet, 1000):
            assert p.emit_event(ev)
        assert p.flush(30) == 0
    wait_for(lambda: bool(producer.lost), 60, "the lost snapshot")
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=250) as p:
        for ev in gen.events(busy, 1000):  # only the other model changes from here
            assert p.emit_event(ev)
        assert p.flush(30) == 0
    wait_for(lambda: w.stats.applied == 2000 and w.stats.commits >= 3, 60, "the commits")
    first.stop()
    start_worker(s)
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=250) as p:
        for ev in gen.events(quiet, 500):
            assert p.emit_event(ev)
        assert p.flush(30) == 0

    expected = {quiet: 1500, busy: 1000}
    with contextlib.suppress(AssertionError):
        wait_for(lambda: _applied(s) == expected, 60, "the status topic")
    assert _applied(s) == expected


def test_a_label_join_chunk_the_broker_did_not_take_is_written_again(
    kafka_bootstrap: str, unique_name: Callable[[str], str],
    start_worker: Callable[..., Any],
) -> None:
    # the first chunk record of a model's join store (its first 4,096 waiting predictions)
    # never reaches the broker: the checkpoint fails, and the next one writes every chunk
    # again under new names before a snapshot names them; a worker restarted afterwards
    # restores all the waiting predictions, and every label joins
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=1, label_join="all",
                          auto_reference_events=500, pane_size=250)
    n, model = 6000, "joined"
    first = start_worker(s)
    w = first.worker
    producer = _LosesFirst(w, lambda topic, key: topic == s.state_topic
                           and key is not None and b"/joins/pred/" in key)
    w._producer = producer
    wait_for(lambda: w.ready and w._assigned == {0}, 60, "the assignment")
    rng = np.random.default_rng(9)
    with DriftlineProducer(s.kafka(), s.inference_topic, labels_topic=s.labels_topic,
                           batch_size=250) as p:
        for i in range(n):
            assert p.emit(model, {"x": float(rng.normal())}, float(rng.random()),
                          event_id=f"e{i}", ts=1.7e9 + i)
        assert p.flush(30) == 0
        wait_for(lambda: bool(producer.lost) and w.stats.applied == n
                 and (st := w.processor.models.get(f"{model}@0")) is not None and not st.dirty,
                 60, "a checkpoint after the loss")
        lost = producer.lost[0]
        state = read_compacted(s.kafka(), s.state_topic, timeout=30)
        chunks = [k for k in state if k.startswith(f"{model}@0/joins/pred/".encode())]
        assert chunks and all(state[k] != lost for k in chunks)  # written again, renamed
        first.stop()
        second = start_worker(s)
        wait_for(lambda: second.worker.ready, 60, "the second worker")
        for i in range(n):
            assert p.emit_label(model, f"e{i}", bool(i % 2), ts=1.7e9 + i + 5)
        assert p.flush(30) == 0
        wait_for(lambda: second.worker.stats.labels >= n, 60, "labels taken")
    second.stop()
    labels = {m["model"]: m for m in collect_status(s)["models"]}[model]["labels"]
    assert labels["joined"] == n and labels["unmatched"] == 0, labels
