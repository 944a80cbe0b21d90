"""A worker with a decode process: a child that dies loses nothing."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from workers import isolated_settings, wait_for

from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.kafka_config import producer_config
from driftline.streams.settings import Settings
from driftline.streams.synthetic import SyntheticModels

pytestmark = pytest.mark.integration


def _send(s: Settings, gen: SyntheticModels, per_model: int) -> None:
    """Single JSON events, as a producer without the SDK writes them."""
    p = Producer(producer_config(s.kafka()))
    for m in gen.models:
        for ev in gen.events(m, per_model):
            p.produce(s.inference_topic, orjson.dumps(ev), key=m.encode())
            p.poll(0)
    assert p.flush(30) == 0


def test_a_killed_decode_process_loses_nothing(
    kafka_bootstrap: str, unique_name: Callable[[str], str],
    start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture,
) -> None:
    s = isolated_settings(kafka_bootstrap, unique_name, partitions=2,
                          auto_reference_events=500, pane_size=250, decode_process="on")
    gen = SyntheticModels(3, seed=9)
    running = start_worker(s)
    w = running.worker
    wait_for(lambda: w.ready and w._assigned == {0, 1}, 60, "the assignment")
    _send(s, gen, 2000)
    wait_for(lambda: w.stats.applied >= 1000 and w._decoder.pid is not None, 60,
             "the first events, decoded by the child")
    first = w._decoder.pid
    with caplog.at_level(logging.ERROR, logger="driftline.streams.decode_process"):
        os.kill(first, signal.SIGKILL)
        _send(s, gen, 2000)
        wait_for(lambda: w.stats.applied == 12_000, 60, "every event applied")
    assert w._decoder.restarts >= 1 and w._decoder.pid != first
    assert "the decode process ended" in caplog.text or "could not send" in caplog.text
    metric = running.registry.get_sample_value
    assert metric("driftline_worker_decode_process_restarts_total") == w._decoder.restarts
    assert metric("driftline_worker_decode_process_cpu_seconds_total") > 0

    expected = dict.fromkeys(gen.models, 4000)
    with contextlib.suppress(AssertionError):  # the status catches up within a snapshot
        wait_for(lambda: {m["model"]: m["events_applied"]
                          for m in collect_status(s)["models"]} == expected, 30, "the status")
    assert {m["model"]: m["events_applied"] for m in collect_status(s)["models"]} == expected
