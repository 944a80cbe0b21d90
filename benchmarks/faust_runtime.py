"""Throughput of the Faust runtime beside the default worker, on the same pre-produced data.

``python -m driftline.benchmarks.faust_runtime [--events N] [--bootstrap HOST:PORT]``

SDK envelopes (500 events each) and single events are produced once; then each runtime
runs in its own process on a fresh group and its own state topics until every event is
applied, timed from its first batch to the batch that applied the last event (events/s
and process CPU seconds over that span). Prints a Markdown table and writes JSON with
``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from driftline.benchmarks.baselines.harness import Run, broker, produce_data

RUNS = tuple(tuple(x.split("-")) for x in os.environ.get(
    "DRIFTLINE_BENCH_RUNS", "kafka-envelope,faust-envelope,kafka-single,faust-single").split(","))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _child_faust(settings: Any, target: int) -> dict[str, Any]:
    from driftline.streams.faust_app import FaustRuntime

    marks: dict[str, float] = {}

    class Timed(FaustRuntime):
        async def _handle(self, events: list[Any]) -> None:
            marks.setdefault("t_first", time.monotonic())
            marks.setdefault("cpu_first", _cpu())
            await super()._handle(events)
            if self.stats.applied >= target and "t_done" not in marks:
                marks["t_done"], marks["cpu_done"] = time.monotonic(), _cpu()
                self.request_stop()

    rt = Timed(settings, CollectorRegistry())
    rt.ensure_topics()
    asyncio.run(rt.serve(300, signals=False))
    return {"applied": rt.stats.applied, "consumed": rt.stats.consumed, "batches": rt.stats.batches,
            "snapshots": rt.stats.snapshots, "checkpoints": rt.stats.checkpoints, **marks}


def _child_kafka(settings: Any, target: int) -> dict[str, Any]:
    from driftline.benchmarks.baselines.driftline_worker import TimedWorker

    w = TimedWorker(settings, CollectorRegistry(), target=target)
    t = threading.Thread(target=w.run, args=(300,))
    t.start()
    t.join()
    return {"applied": w.stats.applied, "consumed": w.stats.consumed,
            "snapshots": w.stats.snapshots, "t_first": w.t_first, "t_done": w.t_done,
            "cpu_first": w.cpu_first, "cpu_done": w.cpu_last}


def child(runtime: str, settings_json: str, target: int) -> None:
    from driftline.streams.settings import Settings

    s = Settings(**orjson.loads(settings_json))
    res = (_child_faust if runtime == "faust" else _child_kafka)(s, target)
    sys.stdout.write(orjson.dumps(res).decode() + "\n")


def run(events: int, bootstrap: str | None, batch_timeout_s: float = 0.1) -> dict[str, Any]:
    out: dict[str, Any] = {"events": events, "batch_timeout_s": batch_timeout_s, "runs": {}}
    with broker(bootstrap) as bs:
        r = Run(bs)
        out["data"] = produce_data(r, events)
        for runtime, form in RUNS:
            topic = r.envelope_topic if form == "envelope" else r.single_topic
            label = f"{runtime}-{form}"
            settings = r.worker_settings(label, topic, snapshot_interval_s=2.0,
                                         batch_timeout_s=batch_timeout_s)
            proc = subprocess.run(
                [sys.executable, "-m", "driftline.benchmarks.faust_runtime", "--child", runtime,
                 "--settings", orjson.dumps(settings).decode(), "--events", str(events)],
                capture_output=True, text=True, timeout=600)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
            res = orjson.loads(lines[-1])
            if "t_done" in res and res["t_done"] is not None:
                span = res["t_done"] - res["t_first"]
                res["eps"] = res["applied"] / span if span > 0 else None
                res["cpu_s"] = res["cpu_done"] - res["cpu_first"]
            out["runs"][label] = res
            print(f"{label}: {res.get('eps') or 0:,.0f} events/s "
                  f"({res['applied']:,} applied)", file=sys.stderr)
        r.cleanup()
    return out


def markdown(res: dict[str, Any]) -> str:
    rows = ["| runtime | input | events/s | events per CPU-second |", "|---|---|---|---|"]
    for label, r in res["runs"].items():
        runtime, form = label.split("-", 1)
        eps = r.get("eps")
        cpu = r.get("cpu_s")
        per_cpu = r["applied"] / cpu if cpu else None
        rows.append(f"| {runtime} | {'SDK envelopes' if form == 'envelope' else 'single events'} "
                    f"| {eps:,.0f} | {per_cpu:,.0f} |" if eps and per_cpu else
                    f"| {runtime} | {form} | n/a | n/a |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--batch-timeout-s", type=float, default=0.1,
                   help="longest wait for a batch to fill (both runtimes)")
    p.add_argument("--child", choices=("kafka", "faust"), default=None)
    p.add_argument("--settings", default=None)
    a = p.parse_args()
    if a.child:
        child(a.child, a.settings, a.events)
        return
    res = run(a.events, a.bootstrap, a.batch_timeout_s)
    if a.json:
        a.json.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    print(markdown(res))


if __name__ == "__main__":
    main()
