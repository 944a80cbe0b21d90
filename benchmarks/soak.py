"""Bounded resources: memory per model, and RSS / lag / throughput over a long run."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from driftline.benchmarks.report import write
from driftline.schemas.codecs import encode_envelope_rows
from driftline.streams.broker import EmbeddedBroker
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.processor import Incoming, Processor
from driftline.streams.producer import DriftlineProducer
from driftline.streams.reference_records import ReferenceRecords
from driftline.streams.settings import Settings
from driftline.streams.synthetic import SyntheticModels
from driftline.streams.worker import Worker


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def memory(models: int = 1000, events_per_model: int = 7000,
           json_out: Path | None = None) -> dict[str, Any]:
    """RSS and snapshot size per model: ``models`` models with 20 features, windows full.

    As in a worker, the processor keeps each built reference without its feature samples
    and the reference's record is kept compressed in a file of a private temporary
    directory (for a re-publish after a cluster loss), only its index in memory.
    """
    s = Settings()
    p = Processor(config=s.monitor_config(), limits=s.limits(),
                  metrics=WorkerMetrics(CollectorRegistry()), auto_reference_events=5000,
                  max_models=models)
    gen = SyntheticModels(models, seed=0)
    records = ReferenceRecords(s.data_dir or None)
    gc.collect()
    base = rss_bytes()
    t0 = time.perf_counter()
    offset = 0
    try:
        for m in gen.models:
            for _ in range(0, events_per_model, 1000):
                evs = [{k: v for k, v in e.items() if k != "model"}
                       for e in gen.events(m, 1000)]
                out = p.process([Incoming("t", 0, offset, encode_envelope_rows(m, evs))])
                for ref in out.references:  # what the worker publishes, and keeps
                    records.put(ref.model, ref.reference_id, ref.to_json())
                offset += 1
        build_s = time.perf_counter() - t0
        gc.collect()
        used = rss_bytes() - base
        process = rss_bytes()
        on_disk = sum(f.stat().st_size for f in records.path.iterdir()) if records.path else 0
        in_memory = records.in_memory
    finally:
        records.close()
    snaps = [len(st.snapshot()) for st in p.models.values()]
    data = {
        "models": models, "features": 20, "events_per_model": events_per_model,
        "rss_bytes_total": used, "rss_bytes_per_model": used / models,
        "snapshot_bytes_per_model": sum(snaps) / len(snaps),
        "reference_record_bytes_per_model": on_disk / models,
        "reference_records_in_memory": in_memory,
        "rss_bytes_process": process, "build_seconds": round(build_s, 1),
    }
    table = [("RSS per model", f"{used / models / 1024:.0f} KiB"),
             ("snapshot per model", f"{data['snapshot_bytes_per_model'] / 1024:.0f} KiB"),
             ("reference record per model (compressed, on local disk)",
              f"{data['reference_record_bytes_per_model'] / 1024:.0f} KiB"),
             (f"process RSS with {models} models", f"{process / 2**20:.0f} MiB")]
    write("memory", data, table, ("measure", "value"), json_out=json_out)
    return data


def soak(minutes: float = 2.0, rate: int = 2000, models: int = 10,
         json_out: Path | None = None) -> dict[str, Any]:
    """Embedded broker, one worker in this process, steady traffic; sample every 10 s."""
    samples: list[dict[str, float]] = []
    with EmbeddedBroker() as b:
        s = Settings(bootstrap_servers=b.bootstrap, partitions=4, metrics_port=0)
        w = Worker(s, CollectorRegistry())
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        gen = SyntheticModels(models, seed=0)
        produced = 0
        start = time.monotonic()
        next_sample = start + 10
        with DriftlineProducer(s.kafka(), s.inference_topic) as p:
            step, tick = 0.1, time.monotonic()
            while time.monotonic() - start < minutes * 60:
                for m in gen.models:
                    for ev in gen.events(m, max(int(rate / models * step), 1)):
                        p.emit_event(ev)
                        produced += 1
                tick += step
                time.sleep(max(0.0, tick - time.monotonic()))
                if time.monotonic() >= next_sample:
                    next_sample += 10
                    el = time.monotonic() - start
                    samples.append({"t": round(el, 1), "rss_mib": rss_bytes() / 2**20,
                                    "applied": w.stats.applied,
                                    "lag": produced - w.stats.applied,
                                    "eps": w.stats.applied / el})
                    print(f"{el:6.0f} s  rss {samples[-1]['rss_mib']:.0f} MiB  "
                          f"lag {samples[-1]['lag']}  {samples[-1]['eps']:.0f} ev/s", flush=True)
        w.request_stop()
        t.join(30)
    warm = [x for x in samples if x["t"] >= min(60.0, minutes * 60 / 2)]
    growth = (warm[-1]["rss_mib"] / warm[0]["rss_mib"] - 1.0) if len(warm) >= 2 else 0.0
    data = {"minutes": minutes, "rate": rate, "models": models, "samples": samples,
            "rss_growth_after_warmup": growth}
    table = [(x["t"], round(x["rss_mib"], 1), int(x["lag"]), round(x["eps"])) for x in samples]
    write("soak", data, table, ("t (s)", "RSS (MiB)", "lag (events)", "applied ev/s"),
          json_out=json_out, plot=None)
    return data
