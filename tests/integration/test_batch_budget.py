"""A worker catching up on a backlog holds about ``batch_max_bytes`` of messages at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from workers import isolated_settings, wait_for

from driftline.streams.admin import ensure_topics, iter_to_end
from driftline.streams.producer import DriftlineProducer
from driftline.streams.synthetic import SyntheticModels
from driftline.streams.worker import Worker, topic_specs

pytestmark = pytest.mark.integration


def test_a_backlog_of_envelopes_is_read_in_batches_of_the_byte_budget(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    budget = 400_000
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=2,
                          auto_reference_events=1000, pane_size=500, batch_max_bytes=budget)
    ensure_topics(s.kafka(), topic_specs(s))
    gen = SyntheticModels(3, seed=4)
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=250) as p:
        for m in gen.models:
            for ev in gen.events(m, 6000):
                p.emit_event(ev)
        p.flush(30)
    w = Worker(s, CollectorRegistry())
    batches: list[tuple[int, int]] = []  # (messages, bytes) of every consumed batch
    seen: list[tuple[str, int, int]] = []
    feed = w._feed

    def recording(msgs: list[Any]) -> None:
        if msgs:
            batches.append((len(msgs), sum(len(m) for m in msgs)))
            seen.extend((m.topic(), m.partition(), m.offset()) for m in msgs if m.error() is None)
        feed(msgs)

    w._feed = recording  # type: ignore[method-assign]
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: w.stats.applied == 18_000, 120, "the whole backlog applied")
        time.sleep(0.5)
        assert w.stats.dead_letters == 0
    finally:
        w.request_stop()
        t.join(30)
    sizes = [b / n for n, b in batches]
    assert min(sizes) > 20_000  # packed envelopes of 250 events
    # the first batch asks for budget / 64 KiB messages; every later one for the budget
    # over the largest message seen, and envelopes here are all about one size
    assert max(b for _, b in batches) <= 1.2 * budget, batches
    assert max(n for n, _ in batches) < s.batch_max_messages
    # every message of the topic came in some batch (one read again after a rebalance at
    # the start is skipped as a replay: applied counts each event once); ~72 envelopes of
    # 250 events, more if the SDK sent one early
    assert set(seen) == {(s.inference_topic, m.partition(), m.offset())
                         for m in iter_to_end(s.kafka(), s.inference_topic)}
    assert len(set(seen)) >= 72
    # without the budget, the backlog would come in one or two batches
    assert len(batches) >= 10
