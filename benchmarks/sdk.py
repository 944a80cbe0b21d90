"""Latency of the producer SDK's ``emit()``, with the broker up and with it stalled.

``emit()`` is on the model server's request path, so what matters is its latency
distribution, not the SDK's throughput. Phase 1: ``emits`` calls with the broker up, as
fast as one thread can make them (a worst case: the SDK's background thread competes for
the GIL the whole time), and then the same number paced at ``rate`` per second (what a
busy model server does). Phase 2: the embedded broker is stopped with SIGSTOP
(``EmbeddedBroker.pause``) for ``pause_s`` seconds while events keep coming at ``rate``;
``emit()`` must not block (its latency stays in microseconds) and, after the broker is
resumed, every accepted event is delivered.
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from driftline.benchmarks.baselines.harness import BenchError, Run, console, progress_bar
from driftline.benchmarks.report import write
from driftline.streams.admin import TopicSpec
from driftline.streams.broker import EmbeddedBroker
from driftline.streams.producer import DriftlineProducer
from driftline.streams.synthetic import SyntheticModels


def _pcts(lat_ns: np.ndarray) -> dict[str, float]:
    us = lat_ns / 1000.0
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "p999_us": float(np.percentile(us, 99.9)), "max_us": float(us.max()),
            "mean_us": float(us.mean()), "n": int(us.size)}


class GcTimer:
    """Durations of the interpreter's garbage collections (``gc.callbacks``), by generation:
    a stop-the-world pause lands on whichever ``emit()`` triggers it."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t0 = 0.0

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._t0))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g in (0, 1, 2):
            d = [t for gen, t in self.pauses if gen == g]
            out[f"gen{g}"] = {"count": len(d), "max_ms": max(d) * 1e3 if d else 0.0}
        return out


def _emit_loop(p: DriftlineProducer, pool: list[tuple[str, dict[str, float], float]], n: int,
               rate: float | None, progress: Any,
               label: str) -> tuple[np.ndarray, int, dict[str, Any]]:
    """``n`` emits (paced at ``rate``/s when given): latencies in ns, refusals, GC pauses."""
    lat = np.empty(n, dtype=np.int64)
    gct = GcTimer()
    clock = time.perf_counter_ns
    refused = 0
    task = progress.add_task(label, total=n, rate="")
    step = 1.0 / rate if rate else 0.0
    t_next = time.perf_counter()
    m = len(pool)
    with gct:
        for i in range(n):
            model, feats, pred = pool[i % m]
            if step:
                t_next += step
                delay = t_next - time.perf_counter()
                if delay > 0.0005:
                    time.sleep(delay)
                while time.perf_counter() < t_next:
                    pass
            t0 = clock()
            ok = p.emit(model, feats, pred, event_id=None, latency_ms=5.0)
            lat[i] = clock() - t0
            refused += not ok
            if i % 5000 == 0:
                progress.update(task, completed=i)
    progress.update(task, completed=n)
    return lat, refused, gct.summary()


def run(emits: int = 100_000, json_out: Path | None = None, *, bootstrap: str | None = None,
        rate: float = 20_000.0, pause_s: float = 5.0, quick: bool = False) -> dict[str, Any]:
    load_before = os.getloadavg()
    gen = SyntheticModels(10, 20, seed=0)
    pool: list[tuple[str, dict[str, float], float]] = []
    for m in gen.models:
        for ev in gen.events(m, 200):
            pool.append((m, ev["features"], ev["prediction"]))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    pool = [pool[i] for i in rng.permutation(len(pool))]
    b = None if bootstrap else EmbeddedBroker().start()
    out: dict[str, Any] = {"emits": emits, "rate": rate, "pause_s": pause_s}
    try:
        bs = bootstrap or (b.bootstrap if b else "")
        r = Run(bs)
        topic = r.name("sdk")
        r.create([TopicSpec(topic, 8)])
        with progress_bar() as progress:
            p = DriftlineProducer(bs, topic)
            try:
                # warm-up: connections, first envelopes, code paths
                _emit_loop(p, pool, min(5000, emits), None, progress, "warm-up")
                p.flush(30)
                burst, refused_b, gc_b = _emit_loop(p, pool, emits, None, progress,
                                                    "emit(), broker up, burst")
                p.flush(60)
                paced, refused_p, gc_p = _emit_loop(p, pool, emits, rate, progress,
                                                    f"emit(), broker up, {rate:,.0f}/s")
                p.flush(60)
                up = p.stats()
                out["burst"] = {**_pcts(burst), "refused": refused_b, "gc": gc_b}
                out["paced"] = {**_pcts(paced), "refused": refused_p, "gc": gc_p}
                if b is None:
                    out["paused"] = None
                    console.print("[yellow]--bootstrap given: no broker to pause; "
                                  "the stalled-broker phase is skipped[/]")
                else:
                    n_pause = max(int(rate * pause_s), 1)
                    b.pause()
                    t0 = time.monotonic()
                    try:
                        stalled, refused_s, gc_s = _emit_loop(
                            p, pool, n_pause, rate, progress,
                            f"emit(), broker stopped {pause_s:g} s")
                    finally:
                        b.resume()
                    stalled_for = time.monotonic() - t0
                    left = p.flush(120)
                    st = p.stats()
                    out["paused"] = {**_pcts(stalled), "refused": refused_s,
                                     "gc": gc_s,
                                     "stalled_seconds": stalled_for,
                                     "pending_after_resume_and_flush": left,
                                     "delivered_total": st.delivered, "emitted_total": st.emitted,
                                     "failed_total": st.failed, "dropped_total": st.dropped}
            finally:
                p.close(10)
            final = p.stats()
    finally:
        if b is not None:
            b.stop()
    if final.emitted != final.delivered + final.failed:
        raise BenchError(f"SDK accounting does not add up: {final}")
    out.update({
        "emit_p50_us": out["burst"]["p50_us"], "emit_p99_us": out["burst"]["p99_us"],
        "emit_max_us": out["burst"]["max_us"],
        "paced_emit_p50_us": out["paced"]["p50_us"], "paced_emit_p99_us": out["paced"]["p99_us"],
        "paced_emit_max_us": out["paced"]["max_us"],
        "paused_emit_max_us": out["paused"]["max_us"] if out["paused"] else None,
        "paused_emit_p99_us": out["paused"]["p99_us"] if out["paused"] else None,
        "emitted": final.emitted, "delivered": final.delivered, "failed": final.failed,
        "dropped": final.dropped, "envelopes": final.envelopes_delivered,
        "delivered_while_up": up.delivered,
        "target": {"emit_p99_us": 50.0},
        "broker": "external" if bootstrap else "embedded Tansu",
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "quick": quick, "run": uuid.uuid4().hex[:8],
    })
    table: list[tuple[Any, ...]] = []
    for name, key in (("broker up, burst (tight loop)", "burst"),
                      (f"broker up, paced {rate:,.0f}/s", "paced"),
                      (f"broker stopped (SIGSTOP) {pause_s:g} s, {rate:,.0f}/s", "paused")):
        d = out.get(key)
        if d:
            table.append((name, d["n"], d["p50_us"], d["p99_us"], d["p999_us"], d["max_us"],
                          d["refused"]))
    write("sdk", out, table, ("emit() phase", "emits", "p50 µs", "p99 µs", "p99.9 µs", "max µs",
                              "refused"),
          json_out=json_out, plot=("emit() p99 latency, µs (log)", [t[0] for t in table],
                                   [max(float(t[3]), 0.01) for t in table]))
    return out
