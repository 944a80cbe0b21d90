"""Shared fixtures. Broker fixtures are lazy: unit tests never start a broker.

- ``kafka_bootstrap`` (session): ``$DRIFTLINE_TEST_BOOTSTRAP``, else one embedded Tansu
  broker for the whole session.
- ``kafka_client_config`` (session): librdkafka dict for it; extra librdkafka keys (e.g.
  SASL/SSL for an external cluster) from the JSON object in ``$DRIFTLINE_TEST_KAFKA_CONFIG``.
- ``broker_factory``: starts fresh embedded brokers for tests that pause, stop or kill
  one; all are stopped when the test ends.
- ``unique_name``: ``unique_name("topic")`` -> a name unique to this test and call.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from driftline.streams.broker import EmbeddedBroker


def _embedded(log_path: Path, **kwargs: Any) -> EmbeddedBroker:
    from driftline.streams.broker import BrokerError, EmbeddedBroker, resolve_binary

    try:
        resolve_binary()
    except BrokerError as exc:
        pytest.skip(f"no Tansu binary: {exc}")
    return EmbeddedBroker(log_path=log_path, **kwargs).start()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("DRIFTLINE_TEST_BOOTSTRAP", "").strip()
    if external:
        yield external
        return
    broker = _embedded(tmp_path_factory.mktemp("broker") / "tansu.log")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_client_config(kafka_bootstrap: str) -> dict[str, str]:
    from driftline.streams.kafka_config import client_config

    extra = json.loads(os.environ.get("DRIFTLINE_TEST_KAFKA_CONFIG") or "{}")
    return client_config(kafka_bootstrap, extra=extra)


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., EmbeddedBroker]]:
    started: list[EmbeddedBroker] = []

    def start(**kwargs: Any) -> EmbeddedBroker:
        broker = _embedded(tmp_path / f"tansu-{len(started)}.log", **kwargs)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop(timeout=5.0)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40]

    def make(prefix: str = "t") -> str:
        return f"{prefix}.{base}.{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Any]]:
    """Start in-process workers (``workers.RunningWorker``); stopped after the test."""
    from workers import RunningWorker

    running: list[RunningWorker] = []

    def start(settings: Any) -> RunningWorker:
        running.append(RunningWorker(settings))
        return running[-1]

    yield start
    for w in running:
        if w.thread.is_alive():
            w.stop()
