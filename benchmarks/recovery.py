"""Recovery from faults: kill -9, rebalances, a stalled broker — nothing lost, nothing twice.

Each scenario runs real worker processes on a fresh embedded broker (or ``--bootstrap``),
produces mixed traffic (SDK envelopes, single JSON messages from kafka-python, 1%
invalid), injects the fault, and reads the accounting back from the status and
dead-letter topics: produced, applied, dead-lettered (unique by source offset), lost,
applied twice, and the time from the fault until every event is accounted for.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from driftline.benchmarks.harness import (
    AccountingError,
    Cluster,
    dead_letter_offsets,
    produce_mixed,
    wait_accounted,
)
from driftline.benchmarks.report import write
from driftline.streams.broker import EmbeddedBroker
from driftline.streams.cli.kafka_commands import collect_status


def _applied(c: Cluster) -> int:
    return sum(m["events_applied"] for m in collect_status(c.settings)["models"])


def _outcome(c: Cluster, produced: dict[str, Any], fault_at: float,
             timeout: float) -> dict[str, Any]:
    valid = sum(produced["valid"].values())
    try:
        st = wait_accounted(c, produced["valid"], produced["invalid"], timeout=timeout)
        ok = True
    except AccountingError:
        st, ok = collect_status(c.settings), False
    recovery = time.monotonic() - fault_at
    applied = sum(m["events_applied"] for m in st["models"])
    per_model = {m["model"]: m["events_applied"] for m in st["models"]}
    lost = sum(max(n - per_model.get(m, 0), 0) for m, n in produced["valid"].items())
    twice = sum(max(per_model.get(m, 0) - n, 0) for m, n in produced["valid"].items())
    dead = len(set(dead_letter_offsets(c)))
    return {
        "produced": valid + produced["invalid"], "valid": valid, "invalid": produced["invalid"],
        "applied": applied, "dead_lettered": dead, "lost": lost, "applied_twice": twice,
        "dead_letters_missing": max(produced["invalid"] - dead, 0),
        "recovery_s": round(recovery, 2), "exact": ok and lost == 0 and twice == 0,
    }


def kill9(c: Cluster, per_model: int) -> dict[str, Any]:
    w = c.start()
    produced: dict[str, Any] = {}
    t = threading.Thread(target=lambda: produced.update(produce_mixed(c, per_model, 1,
                                                                      pace=0.05)))
    t.start()
    target = per_model * 10 * 0.3
    deadline = time.monotonic() + 120
    while _applied(c) < target and time.monotonic() < deadline:
        time.sleep(0.3)
    os.kill(w.pid, signal.SIGKILL)
    fault = time.monotonic()
    w.wait(10)
    c.start()
    t.join()
    return _outcome(c, produced, fault, 180)


def rebalance(c: Cluster, per_model: int) -> dict[str, Any]:
    c.start()
    produced: dict[str, Any] = {}
    t = threading.Thread(target=lambda: produced.update(produce_mixed(c, per_model, 2,
                                                                      pace=0.1)))
    t.start()
    time.sleep(6)
    w2 = c.start()
    time.sleep(6)
    w3 = c.start()
    time.sleep(8)
    w2.send_signal(signal.SIGTERM)
    w2.wait(15)
    os.kill(w3.pid, signal.SIGKILL)
    fault = time.monotonic()
    w3.wait(10)
    t.join()
    return _outcome(c, produced, fault, 180)


def stall(c: Cluster, broker: EmbeddedBroker, per_model: int, seconds: float) -> dict[str, Any]:
    c.start()
    produced: dict[str, Any] = {}
    t = threading.Thread(target=lambda: produced.update(produce_mixed(c, per_model, 3,
                                                                      pace=0.1)))
    t.start()
    time.sleep(5)
    broker.pause()
    time.sleep(seconds)
    broker.resume()
    fault = time.monotonic()
    t.join()
    return _outcome(c, produced, fault, 180)


def run(json_out: Path | None = None, quick: bool = False, bootstrap: str | None = None,
        stall_seconds: float = 30.0) -> dict[str, Any]:
    per_model = 3_000 if quick else 10_000
    results: dict[str, dict[str, Any]] = {}
    for name in ("kill9", "rebalance", "stall"):
        if name == "stall" and bootstrap:
            continue  # pausing needs our own broker
        with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
            c = Cluster(bootstrap or broker.bootstrap, f"bench.{name}.{uuid.uuid4().hex[:8]}",
                        Path(tmp))
            try:
                print(f"recovery: {name} ...", flush=True)
                if name == "kill9":
                    results[name] = kill9(c, per_model)
                elif name == "rebalance":
                    results[name] = rebalance(c, per_model)
                else:
                    results[name] = stall(c, broker, per_model,
                                          min(stall_seconds, 10.0) if quick else stall_seconds)
            finally:
                c.stop_all()
    header = ("scenario", "produced", "applied", "dead-lettered", "lost", "applied twice",
              "recovery s")
    table = [(k, r["produced"], r["applied"], r["dead_lettered"], r["lost"], r["applied_twice"],
              r["recovery_s"]) for k, r in results.items()]
    data = {"scenarios": results, "exact": all(r["exact"] for r in results.values())}
    write("recovery", data, table, header, json_out=json_out)
    return data
