"""Worker processes on a real broker, mixed producers, exact accounting: shared by the fault
tests and ``driftline bench recovery``."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException
from kafka import KafkaProducer

from driftline.schemas.codecs import decode_dead_letter, decode_inference
from driftline.streams.admin import ensure_topics, iter_to_end
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings
from driftline.streams.synthetic import SyntheticModels
from driftline.streams.worker import topic_specs

MODELS = 10


class AccountingError(AssertionError):
    """Events lost or applied twice, or not accounted within the time allowed."""


class Cluster:
    """Worker processes of one consumer group, with per-test topics."""

    def __init__(self, bootstrap: str, prefix: str, logdir: Path,
                 env: dict[str, str] | None = None) -> None:
        """``env``: more ``DRIFTLINE_`` settings of the workers."""
        self.env = {
            **os.environ,
            "DRIFTLINE_BOOTSTRAP_SERVERS": bootstrap,
            "DRIFTLINE_GROUP_ID": f"{prefix}.group",
            "DRIFTLINE_AUTO_REFERENCE_EVENTS": "2000",
            "DRIFTLINE_PANE_SIZE": "500",
            "DRIFTLINE_SNAPSHOT_INTERVAL_S": "0.5",
            "DRIFTLINE_PARTITIONS": "6",
            "DRIFTLINE_METRICS_PORT": "0",
            "DRIFTLINE_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        for t in ("inference", "labels", "references", "alerts", "deadletter", "changes",
                  "state", "status"):
            self.env[f"DRIFTLINE_{t.upper()}_TOPIC"] = f"{prefix}.{t}"
        self.settings = Settings(**{k[len("DRIFTLINE_"):].lower(): v for k, v in self.env.items()
                                    if k.startswith("DRIFTLINE_") and "TEST" not in k})
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        ensure_topics(self.settings.kafka(), topic_specs(self.settings))

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"worker-{len(self.procs)}.log").open("wb")
        p = subprocess.Popen([sys.executable, "-m", "driftline.streams", "worker"], env=self.env,
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def logs(self) -> str:
        """Each worker's log (its last 20,000 characters), named: what a failed
        accounting check prints to show who owned which partition when."""
        return "\n".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-20000:]
                         for f in sorted(self.logdir.glob("*.log")))


def produce_mixed(c: Cluster, per_model: int, seed: int, *, pace: float = 0.0,
                  models: int = MODELS) -> dict[str, Any]:
    """SDK envelopes for most events, kafka-python single JSON for some, 1% invalid."""
    s = c.settings
    gen = SyntheticModels(models, seed=seed)
    valid: dict[str, int] = dict.fromkeys(gen.models, 0)
    invalid = 0
    kp = KafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=5)
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=200) as sdk:
        for _ in range(0, per_model, 500):
            for m in gen.models:
                evs = gen.events(m, 500)
                for i, ev in enumerate(evs):
                    if i % 100 == 7:  # 1% invalid, sent as single messages
                        bad = dict(ev, features={"f0": {"nested": True}})
                        kp.send(s.inference_topic, key=m.encode(), value=orjson.dumps(bad))
                        invalid += 1
                    elif i % 10 == 3:  # 10% as single JSON from a foreign producer
                        kp.send(s.inference_topic, key=m.encode(), value=orjson.dumps(ev))
                        valid[m] += 1
                    else:
                        assert sdk.emit_event(ev)
                        valid[m] += 1
            if pace:
                time.sleep(pace)
        kp.flush(60)
        assert sdk.flush(60) == 0
    kp.close()
    assert sdk.stats().failed == 0 and sdk.stats().dropped == 0
    return {"valid": valid, "invalid": invalid}


def wait_accounted(c: Cluster, expected: dict[str, int], invalid: int,
                   timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = collect_status(c.settings)
        applied = {m["model"]: m["events_applied"] for m in st["models"]}
        if applied == expected and st["deadletter_total"] == invalid:
            return st
        if any(applied.get(m, 0) > n for m, n in expected.items()):
            break  # applied twice: no point waiting
        time.sleep(1)
    raise AccountingError(f"accounting off: {st}\n{topic_accounting(c)}\n{c.logs()}")


def topic_accounting(c: Cluster) -> str:
    """What the inference topic itself holds, read back from the broker: valid events per
    model, rejected messages, and per partition the records, offset range and any gaps or
    repeats. Tells a worker that skipped events from a broker or producer that never
    stored them."""
    try:
        msgs = list(iter_to_end(c.settings.kafka(), c.settings.inference_topic, timeout=60))
    except (TimeoutError, KafkaException) as exc:
        return f"inference topic not readable: {exc}"
    per_part: dict[int, list[int]] = {}
    for m in msgs:
        per_part.setdefault(m.partition(), []).append(m.offset())
    decoded = decode_inference([m.value() or b"" for m in msgs], topic=c.settings.inference_topic,
                               partitions=[m.partition() for m in msgs],
                               offsets=[m.offset() for m in msgs])
    events = {model: len(b) for model, b in sorted(decoded.batches.items())}
    lines = [f"on the inference topic: {len(msgs)} records, events per model {events}, "
             f"{len(decoded.rejections)} rejected"]
    for p, offs in sorted(per_part.items()):
        seen = sorted(set(offs))
        gaps = [(a, b) for a, b in itertools.pairwise(seen) if b != a + 1]
        lines.append(f"  partition {p}: {len(offs)} records, offsets {seen[0]}..{seen[-1]}, "
                     f"{len(offs) - len(seen)} repeated, gaps {gaps[:10]}")
    return "\n".join(lines)


def dead_letter_offsets(c: Cluster) -> list[tuple[int, int]]:
    return [(d["partition"], d["offset"]) for d in
            (decode_dead_letter(m.value()) for m in iter_to_end(c.settings.kafka(),
                                                                  c.settings.deadletter_topic))]


