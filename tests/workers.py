"""What the integration tests share: settings with topics of their own, an in-process
worker with its /metrics, waiting for a condition, and producing synthetic traffic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from driftline.streams.metrics import MetricsServer
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.synthetic import SyntheticModels
from driftline.streams.worker import Worker

TOPICS = ("inference", "labels", "references", "alerts", "deadletter", "changes", "state",
          "status")


def isolated_settings(bootstrap: str, unique: Callable[[str], str], prefix: str = "dl",
                      **kw: Any) -> Settings:
    """Settings whose topics and group belong to one test; fast snapshots and batches."""
    name = unique(prefix)
    base: dict[str, Any] = {"bootstrap_servers": bootstrap, "group_id": f"{name}.group",
                            "partitions": 4, "snapshot_interval_s": 0.5,
                            "batch_timeout_s": 0.05,
                            **{f"{t}_topic": f"{name}.{t}" for t in TOPICS}}
    return Settings(**{**base, **kw})


def env_of(s: Settings) -> dict[str, str]:
    """The same settings as the environment of a CLI command."""
    env = {f"DRIFTLINE_{t.upper()}_TOPIC": getattr(s, f"{t}_topic") for t in TOPICS}
    env["DRIFTLINE_PARTITIONS"] = str(s.partitions)
    env["DRIFTLINE_BOOTSTRAP_SERVERS"] = s.bootstrap_servers
    return env


class RunningWorker:
    """A worker running in a thread of the test process, with /metrics on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.worker = Worker(settings, self.registry)
        self.server = MetricsServer(self.registry, "127.0.0.1", 0).start()
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(30)
        self.server.stop()
        assert not self.thread.is_alive()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def produce_sdk(settings: Settings, gen: SyntheticModels, per_model: int, chunk: int = 500) -> int:
    """``per_model`` synthetic events of every model through the SDK (batch envelopes)."""
    n = 0
    with DriftlineProducer(settings.kafka(), settings.inference_topic, batch_size=250) as p:
        for _ in range(0, per_model, chunk):
            for m in gen.models:
                for ev in gen.events(m, chunk):
                    assert p.emit_event(ev)
                    n += 1
        assert p.flush(30) == 0
    return n
