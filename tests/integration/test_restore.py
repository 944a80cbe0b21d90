"""A partition taken over by a worker restores its models from the state topic as it is
now, never from snapshots that worker read at an earlier assignment."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from workers import isolated_settings, produce_sdk, wait_for

import driftline.streams.worker as worker_mod
from driftline.streams.admin import read_compacted
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.synthetic import SyntheticModels

pytestmark = pytest.mark.integration


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

    def applied() -> dict[str, int]:
        return {m["model"]: m["events_applied"] for m in collect_status(s)["models"]}

    expected = dict.fromkeys(gen.models, 2500)
    with contextlib.suppress(AssertionError):  # the status catches up within a snapshot
        wait_for(lambda: applied() == expected, 30, "the status topic")
    assert applied() == expected
    assert failures["calls"] == calls + 2  # the failed read was repeated, not skipped


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_batch_that_fails_is_read_again_not_lost(
    kafka_bootstrap: str, unique_name: Callable[[str], str],
    start_worker: Callable[..., Any], when: str,
) -> None:
    # the batch handler raises once, before or after the processor applied the batch (as a
    # failed delivery of its dead letters would): the worker reads the batch again, and
    # every event counts once
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=2,
                          auto_reference_events=500, pane_size=250)
    gen = SyntheticModels(3, seed=5)
    w = start_worker(s).worker
    real = w.processor.process_columns
    raised: list[bool] = []

    def failing_once(*args: Any, **kw: Any) -> Any:
        if raised:
            return real(*args, **kw)
        raised.append(True)
        if when == "before":
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "injected"))
        real(*args, **kw)
        raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "injected"))

    w.processor.process_columns = failing_once  # type: ignore[method-assign]
    wait_for(lambda: w.ready and w._assigned == {0, 1}, 60, "the assignment")
    produce_sdk(s, gen, 1000)

    def applied() -> dict[str, int]:
        return {m["model"]: m["events_applied"] for m in collect_status(s)["models"]}

    expected = dict.fromkeys(gen.models, 1000)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: applied() == expected, 60, "the status topic")
    assert raised
    assert applied() == expected
    if when == "after":
        assert w.stats.skipped_replays > 0  # the batch came again and was recognised
