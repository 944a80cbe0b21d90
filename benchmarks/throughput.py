"""Events/s of the driftline worker against raw confluent-kafka, Faust, Quix Streams and
Bytewax, in one run on the same pre-produced data.

One broker (embedded Tansu unless ``bootstrap``), two topics of 8 partitions with the
same ``events`` (10 models x 20 features, key = model): one single InferenceEvent per
message, and the SDK's batch envelopes. Every consumer runs alone, in its own process,
with a fresh consumer group, and is timed from its first event to its last:

- raw: confluent-kafka ``consume()`` + ``orjson.loads`` + features into a numpy row;
- faust / quix / bytewax: the same decode in the engine's per-message path (Faust reads
  only the first ``faust_events``: at ~12k events/s the whole set would take minutes);
- driftline: the production :class:`~driftline.streams.worker.Worker` (decode and
  validation, windows, detectors against a reference, metrics on a fresh registry,
  snapshots, commits) on the envelope topic and on the single-event topic, until
  ``Worker.stats.applied`` reaches ``events``.

References are on the references topic before the worker starts, so every event goes
through the detectors. A model's first batch also builds its monitor (threshold
calibration, ~0.1 s per model), which the first-to-last figure includes; ``*_steady_eps``
leaves out the first 10 % of events. ``cpu_eps``: events per CPU-second of each
consumer process (all its threads), the figure to trust when other load shares the
cores. The envelope topic holds what the SDK writes (packed columns: numeric columns as
base64 float64, segments dictionary-encoded); ``columns``: also the worker on the same
events as JSON columns envelopes (``columns_envelope_eps``) and as rows envelopes
(``rows_envelope_eps``), the forms other producers may write. ``profile``: the driftline
workers run under py-spy; their stacks and a per-function summary (``profiles``) are
written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from driftline.benchmarks.baselines.harness import (
    BenchError,
    Child,
    Run,
    broker,
    console,
    engine_available,
    free_port,
    log_dir,
    module_argv,
    produce_data,
    profiled,
    progress_bar,
    run_children,
    summarize_profile,
)
from driftline.benchmarks.report import write

BASELINES = ("raw", "faust", "quix", "bytewax")
_ENGINE_MODULE = {"faust": "faust", "quix": "quixstreams", "bytewax": "bytewax"}
_HOW_TO_INSTALL = {
    "quix": "quixstreams 3.x pins confluent-kafka<2.13 (driftline needs >=2.16): "
            "pip install --no-deps 'quixstreams==3.28.1' rocksdict jsonlines jsonpath-ng",
    "bytewax": "pip install 'driftline[bench]' (bytewax==0.21.1)",
    "faust": "faust-streaming is a core dependency; reinstall driftline",
}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _steady(result: dict[str, Any], samples: list[tuple[float, int]], total: int) -> float | None:
    """Events/s from the first progress sample past 10 % of ``total`` to the end."""
    end = result.get("t_last")
    for t, n in samples:
        if n >= total * 0.1 and end and end > t:
            return (int(result["n"]) - n) / (end - t)
    return None


def run(events: int = 300_000, json_out: Path | None = None, *, bootstrap: str | None = None,
        baselines: tuple[str, ...] = BASELINES, faust_events: int = 40_000,
        quick: bool = False, timeout: float = 600.0,
        profile: Path | None = None, columns: bool = False) -> dict[str, Any]:
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise BenchError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
    logs = log_dir()
    load_before = os.getloadavg()
    eps: dict[str, float | None] = {"raw": None, "faust": None, "quix": None, "bytewax": None,
                                    "envelope": None, "columns": None, "rows": None,
                                    "single": None}
    steady: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    profiles: dict[str, Any] = {}
    for name in BASELINES:
        if name not in baselines:
            skipped[name] = "not requested (--baselines)"
        elif name in _ENGINE_MODULE:
            why = engine_available(_ENGINE_MODULE[name])
            if why:
                skipped[name] = f"{why}; {_HOW_TO_INSTALL[name]}"
                console.print(f"[yellow]skipping {name}[/]: {skipped[name]}")
    with broker(bootstrap) as bs, progress_bar() as progress:
        r = Run(bs)
        try:
            data = produce_data(r, events, columns=columns, progress=progress)

            def one(label: str, argv: list[str], total: int, *, tmo: float = timeout,
                    stdin: bool = False) -> dict[str, Any]:
                prof_out = None
                if profile is not None and label.startswith("driftline"):
                    profile.mkdir(parents=True, exist_ok=True)
                    prof_out = profile / f"{label.replace(' ', '_')}.pyspy.txt"
                    argv = profiled(argv, prof_out)
                child = Child(label, argv, log_dir=logs, stdin=stdin)
                res = run_children(progress, label, [child], total, timeout=tmo)[0]
                res["steady_eps"] = _steady(res, child.samples, total)
                if prof_out is not None and prof_out.exists():
                    profiles[label] = {"file": str(prof_out), **summarize_profile(prof_out)}
                return res

            if "raw" not in skipped:
                res = one("raw confluent-kafka", module_argv(
                    "raw", "--bootstrap", bs, "--topic", r.single_topic, "--events", events,
                    "--group", r.name("raw")), events)
                eps["raw"], details["raw"] = res["eps"], res
            workers = [("driftline envelopes", r.envelope_topic, "envelope"),
                       ("driftline single events", r.single_topic, "single")]
            if columns:
                workers[1:1] = [("driftline JSON columns envelopes", r.columns_topic, "columns"),
                                ("driftline rows envelopes", r.rows_topic, "rows")]
            for label, topic, key in workers:
                settings = r.worker_settings(key, topic)
                res = one(label, module_argv(
                    "driftline_worker", "--settings", _json(settings), "--events", events),
                    events, stdin=True)
                r.created += r.worker_topics(key)
                if not res.get("reached_target"):
                    raise BenchError(f"{label}: applied {res['n']:,} of {events:,} events")
                eps[key], details[key] = res["eps"], res
                steady[key] = res["steady_eps"]
            if "bytewax" not in skipped:
                res = one("bytewax (1 worker)", module_argv(
                    "bytewax_flow", "--bootstrap", bs, "--topic", r.single_topic,
                    "--events", events), events)
                eps["bytewax"], details["bytewax"] = res["eps"], res
            if "quix" not in skipped:
                res = one("quix streams", module_argv(
                    "quix_app", "--bootstrap", bs, "--topic", r.single_topic, "--events",
                    events, "--group", r.name("quix")), events)
                eps["quix"], details["quix"] = res["eps"], res
            if "faust" not in skipped:
                fe = min(events, faust_events)
                res = one("faust agent", module_argv(
                    "faust_agent", "--bootstrap", bs, "--topic", r.single_topic, "--events", fe,
                    "--group", r.name("faust"), "--web-port", free_port()), fe)
                eps["faust"], details["faust"] = res["eps"], res
        finally:
            if bootstrap:
                r.cleanup()
    for k in ("raw", "faust", "quix", "bytewax"):
        steady.setdefault(k, details.get(k, {}).get("steady_eps"))
    # events per CPU-second of the consumer's process (all its threads, broker excluded):
    # less sensitive than events/s to other load on the machine
    cpu: dict[str, float | None] = {
        k: (v["n"] / v["cpu_s"] if v.get("cpu_s") else None) for k, v in details.items()}
    out: dict[str, Any] = {
        "events": events,
        "raw_eps": eps["raw"], "faust_eps": eps["faust"], "quix_eps": eps["quix"],
        "bytewax_eps": eps["bytewax"], "envelope_eps": eps["envelope"],
        "single_eps": eps["single"],
        "columns_envelope_eps": eps["columns"],
        "rows_envelope_eps": eps["rows"],
        "envelope_vs_raw": _ratio(eps["envelope"], eps["raw"]),
        "envelope_vs_faust": _ratio(eps["envelope"], eps["faust"]),
        "single_vs_faust": _ratio(eps["single"], eps["faust"]),
        "single_vs_quix": _ratio(eps["single"], eps["quix"]),
        "single_vs_bytewax": _ratio(eps["single"], eps["bytewax"]),
        "single_vs_raw": _ratio(eps["single"], eps["raw"]),
        "steady_eps": steady,
        "cpu_eps": cpu,
        "cpu_ratios": {
            "envelope_vs_raw": _ratio(cpu.get("envelope"), cpu.get("raw")),
            "single_vs_raw": _ratio(cpu.get("single"), cpu.get("raw")),
            "single_vs_quix": _ratio(cpu.get("single"), cpu.get("quix")),
            "single_vs_bytewax": _ratio(cpu.get("single"), cpu.get("bytewax")),
            "single_vs_faust": _ratio(cpu.get("single"), cpu.get("faust")),
            "envelope_vs_faust": _ratio(cpu.get("envelope"), cpu.get("faust")),
        },
        "targets": {"envelope_vs_raw": 0.7, "envelope_vs_faust": 25.0, "single_vs_quix": 1.2,
                    "single_vs_faust": 8.0, "single_vs_bytewax": 1.1},
        "skipped": skipped,
        "data": data,
        "faust_events": min(events, faust_events) if eps["faust"] else None,
        "broker": "external" if bootstrap else "embedded Tansu",
        "run_id": r.run_id,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "quick": quick,
        "profiles": profiles,
        "details": {k: {kk: vv for kk, vv in v.items() if kk not in ("kind",)}
                    for k, v in details.items()},
    }
    rows = [
        ("raw confluent-kafka + orjson → numpy row", eps["raw"], 1.0 if eps["raw"] else None),
        ("Faust agent, one message per event", eps["faust"], _ratio(eps["faust"], eps["raw"])),
        ("Quix Streams per-message app", eps["quix"], _ratio(eps["quix"], eps["raw"])),
        ("Bytewax 0.21 KafkaSource, 1 worker", eps["bytewax"], _ratio(eps["bytewax"], eps["raw"])),
        ("**driftline worker, SDK envelopes (packed columns)**", eps["envelope"],
         out["envelope_vs_raw"]),
        ("**driftline worker, single events**", eps["single"], out["single_vs_raw"]),
    ]
    if columns:
        rows[5:5] = [("driftline worker, JSON columns envelopes", eps["columns"],
                      _ratio(eps["columns"], eps["raw"])),
                     ("driftline worker, rows envelopes", eps["rows"],
                      _ratio(eps["rows"], eps["raw"]))]
    table = [(name, v if v else "skipped", x if x else "") for name, v, x in rows]
    table += [(f"ratio {k}", out[k] if out[k] else "n/a", f"target ≥ {t:g}")
              for k, t in out["targets"].items()]
    plotted = [(n.strip("*"), v) for n, v, _ in rows if v]
    write("throughput", out, table, ("path (20 features, 10 models, 8 partitions)", "events/s",
                                     "× raw"),
          json_out=json_out, plot=("events/s, one run (log)", [p[0] for p in plotted],
                                   [float(p[1]) for p in plotted]))
    return out


def _json(d: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(d).decode()
