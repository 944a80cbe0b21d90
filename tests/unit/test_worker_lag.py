"""Consumer-lag series follow the partitions a worker reads: a revoked partition's series
goes (the new owner reports it) instead of staying frozen at its last value."""

from __future__ import annotations

import orjson
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from driftline.streams.settings import Settings
from driftline.streams.worker import Worker


def _stats(lags: dict[str, dict[int, int]]) -> str:
    return orjson.dumps({"topics": {t: {"partitions": {str(p): {"consumer_lag": lag}
                                                         for p, lag in parts.items()}}
                                    for t, parts in lags.items()}}).decode()


class _Client:
    """The consumer and producer a revoke touches, answering every call with nothing."""

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def test_lag_series_of_revoked_partitions_are_removed() -> None:
    reg = CollectorRegistry()
    w = Worker(Settings(), reg)
    w._consumer = w._producer = _Client()  # type: ignore[assignment]
    s = w.settings
    w._assigned, w._assigned_labels = {0, 1, 2}, {0, 2}
    w._on_stats(_stats({s.inference_topic: {0: 5, 1: 52, 2: 7, 3: 99},
                        s.labels_topic: {0: 1, 1: 4, 2: 3}}))
    text = generate_latest(reg).decode()
    lag = "driftline_worker_consumer_lag_messages"
    assert f'{lag}{{partition="1",topic="{s.inference_topic}"}} 52.0' in text
    assert f'partition="3",topic="{s.inference_topic}"' not in text  # not this worker's
    assert f'partition="1",topic="{s.labels_topic}"' not in text
    assert f'{lag}{{partition="2",topic="{s.labels_topic}"}} 3.0' in text
    w._on_revoke(None, [TopicPartition(s.inference_topic, 1),  # type: ignore[arg-type]
                        TopicPartition(s.labels_topic, 2)])
    w._on_stats(_stats({s.inference_topic: {1: 60}}))  # a late report of the revoked one
    text = generate_latest(reg).decode()
    assert f'partition="1",topic="{s.inference_topic}"' not in text
    assert f'partition="2",topic="{s.labels_topic}"' not in text
    assert f'{lag}{{partition="0",topic="{s.inference_topic}"}} 5.0' in text
