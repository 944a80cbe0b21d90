"""Events/s of 1, 2, ... driftline workers in one consumer group on pre-produced data.

For each worker count: a fresh group and fresh state/status topics, every worker in its
own process (``driftline.benchmarks.baselines.driftline_worker``), all started at once so
they join the group together. The group is timed from its first event to its last
(``Worker.stats.applied`` of all workers adding up to the events produced); then the
workers stop cleanly (final snapshot + commit) and the accounting is read back from the
compacted status topic the way ``driftline status`` reads it: the sum of the models'
``events_applied`` against the events produced gives events lost and counted twice.
Bytewax 0.21 with 1 and 2 processes (1 worker each) runs on the same topic when it is
installed, for ``scaling_vs_bytewax``. ``events_per_cpu_s`` (CPU of the worker processes)
tells a worker short of cores (other load on the machine) from one that does not scale.
``repeats``: every configuration runs that many times, in rounds; each counts with its
fastest round (events lost and duplicated add up over all of them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from driftline.benchmarks.baselines.harness import (
    BenchError,
    Child,
    Run,
    broker,
    combined_eps,
    console,
    engine_available,
    free_port,
    log_dir,
    module_argv,
    produce_data,
    progress_bar,
    run_children,
)
from driftline.benchmarks.report import write
from driftline.streams.cli.kafka_commands import collect_status
from driftline.streams.settings import Settings


def _workers(run: Run, k: int, topic: str, events: int, progress: Any, logs: Path,
             timeout: float, rnd: int = 0) -> dict[str, Any]:
    label = f"scale{k}" + (f"-{rnd + 1}" if rnd else "")
    fields = run.worker_settings(label, topic)
    argv = module_argv("driftline_worker", "--settings", orjson.dumps(fields).decode(),
                       "--events", 0, "--wait-go")
    children = [Child(f"driftline-{k}w-{i}", [*argv, "--owner", f"bench-worker-{i}"],
                      log_dir=logs, stdin=True) for i in range(k)]
    run.created += run.worker_topics(label)
    try:
        for c in children:
            if not c.ready.wait(120):
                raise BenchError(f"{c.label} did not start; log:\n{c.log_tail()}")
    except BaseException:
        for c in children:
            c.stop()
        raise
    for c in children:
        c.send("go")
    results = run_children(progress, f"driftline, {k} worker(s){_tag(rnd)}", children, events,
                           timeout=timeout, until_total=True)
    n, eps = combined_eps(results)
    cpu = sum(float(r.get("cpu_s") or 0.0) for r in results)
    status = collect_status(Settings(**fields))
    in_status = sum(int(m.get("events_applied") or 0) for m in status["models"])
    dead = int(status.get("deadletter_total") or 0)
    return {
        "workers": k,
        "eps": eps,
        "events_per_cpu_s": n / cpu if cpu else None,
        "cpu_s": cpu,
        "applied_by_workers": n,
        "applied_in_status": in_status,
        "deadlettered_in_status": dead,
        "lost": max(events - in_status - dead, 0),
        "duplicated": max(in_status + dead - events, 0),
        "per_worker": [{
            "owner": f"bench-worker-{i}", "applied": r["n"], "eps": r["eps"],
            "partitions": r.get("partitions"), "models": r.get("models"),
            "rebalances": r.get("rebalances"), "skipped_replays": r.get("skipped_replays"),
            "snapshots": r.get("snapshots"), "commits": r.get("commits"),
            "t_first": r.get("t_first"), "t_last": r.get("t_last"), "cpu_s": r.get("cpu_s"),
        } for i, r in enumerate(results)],
    }


def _tag(rnd: int) -> str:
    return f" (round {rnd + 1})" if rnd else ""


def _bytewax(run: Run, k: int, topic: str, events: int, progress: Any, logs: Path,
             timeout: float, rnd: int = 0) -> float:
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(k))
    children = []
    for i in range(k):
        extra = [] if k == 1 else ["--process-id", i, "--addresses", addresses]
        children.append(Child(f"bytewax-{k}p-{i}", module_argv(
            "bytewax_flow", "--bootstrap", run.bootstrap, "--topic", topic, "--events", events,
            *extra), log_dir=logs))
    results = run_children(progress, f"bytewax, {k} process(es){_tag(rnd)}", children, events,
                           timeout=timeout)
    n, eps = combined_eps(results)
    if n != events:
        raise BenchError(f"bytewax with {k} processes read {n:,} of {events:,} events")
    return eps


def run(workers: tuple[int, ...] = (1, 2), events: int = 1_200_000, json_out: Path | None = None,
        *, bootstrap: str | None = None, envelopes: bool = False, bytewax: bool = True,
        quick: bool = False, timeout: float = 600.0, repeats: int = 1) -> dict[str, Any]:
    if not workers or min(workers) < 1:
        raise BenchError("--workers needs counts >= 1, e.g. 1,2")
    if repeats < 1:
        raise BenchError("repeats must be at least 1")
    logs = log_dir()
    load_before = os.getloadavg()
    skipped: dict[str, str] = {}
    if bytewax:
        why = engine_available("bytewax")
        if why:
            skipped["bytewax"] = f"{why}; pip install 'driftline[bench]' (bytewax==0.21.1)"
            console.print(f"[yellow]skipping bytewax[/]: {skipped['bytewax']}")
    else:
        skipped["bytewax"] = "not requested (--no-bytewax)"
    rounds: dict[int, list[dict[str, Any]]] = {}
    bw_rounds: dict[int, list[float]] = {}
    with broker(bootstrap) as bs, progress_bar() as progress:
        r = Run(bs)
        try:
            data = produce_data(r, events, envelopes=envelopes, progress=progress)
            topic = r.envelope_topic if envelopes else r.single_topic
            for rnd in range(repeats):  # rounds of every configuration, in the same order
                for k in workers:
                    rounds.setdefault(k, []).append(
                        _workers(r, k, topic, events, progress, logs, timeout, rnd))
                if "bytewax" not in skipped and not envelopes:
                    for k in sorted({1, 2} & set(workers) or {1, 2}):
                        bw_rounds.setdefault(k, []).append(
                            _bytewax(r, k, topic, events, progress, logs, timeout, rnd))
        finally:
            if bootstrap:
                r.cleanup()
    # each configuration counts with its fastest round; lost/duplicated add up over all
    rows = {k: {**max(rs, key=lambda x: float(x["eps"] or 0.0)),
                "rounds_eps": [x["eps"] for x in rs],
                "lost": sum(x["lost"] for x in rs), "duplicated": sum(x["duplicated"] for x in rs)}
            for k, rs in rounds.items()}
    bw = {k: max(v) for k, v in bw_rounds.items()}
    base = rows[min(workers)]["eps"]
    out: dict[str, Any] = {
        "events": events,
        "input": "SDK envelopes" if envelopes else "single events",
        "eps_per_workers": {str(k): v["eps"] for k, v in rows.items()},
        "speedup_2": rows[2]["eps"] / base if 2 in rows and base and min(workers) == 1 else None,
        "events_per_cpu_s": {str(k): v["events_per_cpu_s"] for k, v in rows.items()},
        "lost": sum(v["lost"] for v in rows.values()),
        "duplicated": sum(v["duplicated"] for v in rows.values()),
        "partitions_per_worker": {str(k): [w["partitions"] for w in v["per_worker"]]
                                  for k, v in rows.items()},
        "models_per_worker": {str(k): [len(w["models"] or []) for w in v["per_worker"]]
                              for k, v in rows.items()},
        "bytewax_eps_per_processes": {str(k): v for k, v in bw.items()},
        "scaling_vs_bytewax": rows[2]["eps"] / bw[2] if 2 in rows and bw.get(2) else None,
        "targets": {"speedup_2": 1.5, "scaling_vs_bytewax": 1.0, "lost": 0, "duplicated": 0},
        "runs": {str(k): v for k, v in rows.items()},
        "repeats": repeats,
        "bytewax_rounds_eps": {str(k): v for k, v in bw_rounds.items()},
        "skipped": skipped,
        "data": data,
        "broker": "external" if bootstrap else "embedded Tansu",
        "run_id": r.run_id,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "quick": quick,
    }
    table: list[tuple[Any, ...]] = []
    for k, v in rows.items():
        table.append((f"driftline, {k} worker(s)", v["eps"], v["eps"] / base if base else "",
                      v["lost"], v["duplicated"],
                      " / ".join(str(len(w["partitions"] or [])) for w in v["per_worker"])))
    for k, e in bw.items():
        table.append((f"Bytewax 0.21, {k} process(es) x 1 worker", e, "", "", "", ""))
    if out["scaling_vs_bytewax"] is not None:
        table.append(("ratio scaling_vs_bytewax (2 workers / Bytewax 2 processes)",
                      out["scaling_vs_bytewax"], "target ≥ 1", "", "", ""))
    labels = [str(t[0]) for t in table if isinstance(t[1], float) and not str(t[0]).startswith("ratio")]
    values = [float(t[1]) for t in table if isinstance(t[1], float) and not str(t[0]).startswith("ratio")]
    write("scaling", out, table, ("consumers (one group)", "events/s", "speedup", "lost",
                                  "duplicated", "partitions per worker"),
          json_out=json_out, plot=("events/s by worker count (log)", labels, values))
    return out
