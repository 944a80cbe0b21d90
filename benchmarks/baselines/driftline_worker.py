"""A real driftline :class:`~driftline.streams.worker.Worker` in its own process, timed.

The worker is the production one (consumer group, decode/validate, windows, detectors,
metrics on a fresh registry, snapshots, commits); this runner only timestamps its batches
(first batch in, the batch that brought ``Worker.stats.applied`` to ``--events``) and
reports progress on stdout. ``--events 0``: run until a ``stop`` line on stdin (the
scaling benchmark, where no single worker knows its share). With ``--wait-go`` it starts
consuming at a ``go`` line on stdin, so several workers join one group together.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import threading
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

from driftline.benchmarks.baselines.common import Reporter
from driftline.streams.processor import UNATTRIBUTED
from driftline.streams.settings import Settings
from driftline.streams.worker import Worker


class TimedWorker(Worker):
    """The production worker plus timestamps; no behaviour changed."""

    def __init__(self, settings: Settings, registry: CollectorRegistry, *, target: int,
                 owner: str | None = None) -> None:
        super().__init__(settings, registry, owner=owner)
        self.target = target
        self.t_first: float | None = None
        self.t_last: float | None = None  # end of the last batch that applied events
        self.t_done: float | None = None  # end of the batch that reached the target
        self.cpu_first = self.cpu_last = 0.0  # process CPU seconds at those moments
        self.decode_first = self.decode_last = 0.0  # of the decode process, included above
        self.partitions: set[int] = set()  # every inference partition ever assigned
        self.models: set[str] = set()  # every model this worker applied events of
        self.rebalances = 0
        self.batches = 0  # batches that applied events
        # checkpoints (snapshots, acks, commits) from the first event to the target, and the
        # seconds they took; state-topic bytes written up to the target (from the metrics)
        self.checkpoints, self.checkpoint_s, self.snapshot_mib = 0, 0.0, 0.0
        self._checkpoints_before = (0.0, 0.0)

    def _handle(self, msgs: list[Message], pre: Any = None) -> None:
        if self.t_first is None:
            self.t_first = time.monotonic()
            self.cpu_first = self._cpu()
            self.decode_first = self._decode_cpu()
            self._checkpoints_before = self._checkpoint_totals()
        before = self.stats.applied
        super()._handle(msgs, pre)
        if self.stats.applied != before:
            self.batches += 1
            self.t_last = time.monotonic()
            self.cpu_last = self._cpu()
            self.decode_last = self._decode_cpu()
            if len(self.models) < len(self.processor.models):
                self.models = {st.model for st in self.processor.models.values()
                               if not st.model.startswith(UNATTRIBUTED)}
        if self.target and self.t_done is None and self.stats.applied >= self.target:
            self.t_done = self.t_last
            count, seconds = self._checkpoint_totals()
            self.checkpoints = int(count - self._checkpoints_before[0])
            self.checkpoint_s = seconds - self._checkpoints_before[1]
            self.snapshot_mib = sum(
                s.value for m in self.metrics.snapshot_bytes.collect() for s in m.samples
                if s.name.endswith("_total")) / 2**20
            self.request_stop()

    def _checkpoint_totals(self) -> tuple[float, float]:
        """Checkpoints so far and their seconds (the worker's duration histogram)."""
        get = self.metrics.registry.get_sample_value
        name = "driftline_worker_checkpoint_duration_seconds"
        return get(f"{name}_count") or 0.0, get(f"{name}_sum") or 0.0

    def _cpu(self) -> float:
        """CPU seconds of this process and of its decode process."""
        return _cpu() + self._decode_cpu()

    def _decode_cpu(self) -> float:
        return self._decoder.cpu_seconds if self._decoder is not None else 0.0

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)
        self.rebalances += 1
        self.partitions |= {tp.partition for tp in partitions
                            if tp.topic == self.settings.inference_topic}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--settings", required=True, help="JSON object of Settings fields")
    p.add_argument("--events", type=int, default=0, help="stop once this many are applied")
    p.add_argument("--owner", default=None)
    p.add_argument("--wait-go", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings(**orjson.loads(a.settings))
    rep = Reporter()
    w = TimedWorker(settings, CollectorRegistry(), target=a.events, owner=a.owner)
    go = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "go":
                go.set()
            elif cmd == "stop":
                go.set()
                w.request_stop()
        go.set()  # stdin closed: the parent is gone or done
        w.request_stop()

    threading.Thread(target=read_stdin, daemon=True).start()
    rep.line("ready")
    if a.wait_go:
        go.wait()
    thread = threading.Thread(target=w.run, name="worker")
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        rep.progress(w.stats.applied, t_first=w.t_first, t_last=w.t_last,
                     partitions=sorted(w.partitions))
    st = w.stats
    models = sorted(w.models)
    extra: dict[str, Any] = {
        "engine": "driftline Worker",
        "consumed": st.consumed, "alerts": st.alerts, "dead_letters": st.dead_letters,
        "skipped_replays": st.skipped_replays, "snapshots": st.snapshots, "commits": st.commits,
        "partitions": sorted(w.partitions), "models": models, "rebalances": w.rebalances,
        "reached_target": w.t_done is not None,
        # CPU seconds of the whole process (all threads) from the first event to the last
        # one: about equal to the elapsed time when the worker was never short of a core
        "cpu_s": w.cpu_last - w.cpu_first,
        "decode_process": w._decoder is not None,
        "decode_cpu_s": w.decode_last - w.decode_first,  # included in cpu_s
        "batches": w.batches,
        # checkpoints between the first event and the target, and the seconds they took
        # (snapshots written and acknowledged, offsets committed): part of the elapsed time
        "checkpoints": w.checkpoints, "checkpoint_s": w.checkpoint_s,
        # state-topic bytes (snapshots, label-join chunk records) written up to the target
        "snapshot_mib": w.snapshot_mib,
        # the worker process's peak resident memory (its decode process not included)
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    end = w.t_done if w.t_done is not None else w.t_last
    rep.result(st.applied, w.t_first, end, **extra)


if __name__ == "__main__":
    main()
