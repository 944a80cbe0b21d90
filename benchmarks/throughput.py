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
  ``Worker.stats.applied`` reaches ``events``; on single events twice: as configured by
  default (decoding in its own process) and with a decode process
  (``single_decode_process``, ``DRIFTLINE_DECODE_PROCESS=on``: a second core). ``cpu_s``
  of a worker includes its decode process.

References are on the references topic before the worker starts, so every event goes
through the detectors (the worker reads them, and calibrates each model's thresholds,
~0.05 s per model, and its segment windows', ~0.02 s, before it subscribes). A model's
first batch builds its windows (~1.5 ms per model and partition), which the first-to-last
figure includes; ``*_steady_eps`` leaves out the first 10 % of events
(``steady_ratios``: the ratios on those; None when
no progress line fell in the first half of a run, too short to tell). ``cpu_eps``:
events per CPU-second of each consumer process (all its threads), the figure to trust when
other load shares the cores. The envelope topic holds what the SDK writes (packed columns:
numeric columns as base64 float64, segments dictionary-encoded); ``columns``: also the
worker on the same events as JSON columns envelopes (``columns_envelope_eps``) and as rows
envelopes (``rows_envelope_eps``), the forms other producers may write. ``checks``: the
envelope worker twice more, with every optional check off (segments, data quality,
confidence, label join: ``envelope_checks_off_eps``) and with every prediction kept for
the label join (``envelope_labels_eps``, no labels arrive); ``envelope_checks_cost`` and
``envelope_labels_cost`` are the checks-off rate over each (the end-to-end slowdown).
Also, on the envelopes plus two models' shadow candidates (their events in the same
envelopes form): every check on, predictions kept and candidates paired with their live
model (``envelope_all_checks_eps``), against the same events with every check off and the
candidates as models of their own (``envelope_candidates_checks_off_eps``):
``envelope_all_checks_cost``. The same pairs once more with only the label join (every
prediction kept), segments and shadow pairing on (data quality and confidence off):
``envelope_labels_segments_shadow_eps`` and ``envelope_labels_segments_shadow_cost``, the
cost of those three checks alone. ``profile``: the driftline workers run under py-spy;
their stacks and a per-function summary (``profiles``) are written.

``repeats``: every consumer runs that many times, in rounds (each round runs all of them
once, in the same order, each with a fresh group), and each counts with its fastest round:
other load on a shared machine slows whichever consumer it happens to overlap, and a
consumer's best round is the closest to what its code can do. ``rounds`` and
``round_ratios`` keep every round's figures.
"""

from __future__ import annotations

import os
import re
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
            "pip install --no-deps 'quixstreams==3.28.1' rocksdict jsonlines jsonpath-ng "
            "&& pip install authlib cachetools",
    "bytewax": "pip install 'driftline[bench]' (bytewax==0.21.1)",
    "faust": "faust-streaming is a core dependency; reinstall driftline",
}


#: Every ratio reported: name -> (numerator, denominator) consumer.
_RATIOS = {"envelope_vs_raw": ("envelope", "raw"), "envelope_vs_faust": ("envelope", "faust"),
           "single_vs_faust": ("single", "faust"), "single_vs_quix": ("single", "quix"),
           "single_vs_bytewax": ("single", "bytewax"), "single_vs_raw": ("single", "raw"),
           "single_decode_process_vs_bytewax": ("single_decode_process", "bytewax"),
           # slowdown of the envelope path by its checks (checks off over on)
           "envelope_checks_cost": ("envelope_checks_off", "envelope"),
           "envelope_labels_cost": ("envelope_checks_off", "envelope_labels"),
           # every check: segments, quality, confidence, labels kept, shadow pairing
           "envelope_all_checks_cost": ("envelope_candidates_checks_off", "envelope_all_checks"),
           # the label join, segments and shadow pairing alone (quality and confidence off)
           "envelope_labels_segments_shadow_cost": ("envelope_candidates_checks_off",
                                                    "envelope_labels_segments_shadow")}
#: Settings of the envelope worker with every optional check off (``checks`` runs).
CHECKS_OFF = {"segments": False, "quality_enabled": False, "confidence_enabled": False,
              "label_join": "off"}
#: The label join (every prediction kept), segments and shadow pairing, no other check.
LABELS_SEGMENTS_SHADOW = {**CHECKS_OFF, "segments": True, "label_join": "all"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _steady(result: dict[str, Any], samples: list[tuple[float, int]], total: int) -> float | None:
    """Events/s from the first progress sample past 10 % of ``total`` to the end; None
    when that sample is past half of ``total`` (a run too short for its progress lines:
    the rate of its last few batches is no steady rate)."""
    end = result.get("t_last")
    for t, n in samples:
        if n >= total * 0.1:
            return (int(result["n"]) - n) / (end - t) if n <= total * 0.5 and end and end > t \
                else None
    return None


def run(events: int = 300_000, json_out: Path | None = None, *, bootstrap: str | None = None,
        baselines: tuple[str, ...] = BASELINES, faust_events: int = 40_000,
        quick: bool = False, timeout: float = 600.0,
        profile: Path | None = None, columns: bool = False, checks: bool = False,
        repeats: int = 1) -> dict[str, Any]:
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise BenchError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
    logs = log_dir()
    load_before = os.getloadavg()
    eps: dict[str, float | None] = {"raw": None, "faust": None, "quix": None, "bytewax": None,
                                    "envelope": None, "columns": None, "rows": None,
                                    "single": None, "single_decode_process": None,
                                    "envelope_checks_off": None, "envelope_labels": None,
                                    "envelope_candidates_checks_off": None,
                                    "envelope_all_checks": None,
                                    "envelope_labels_segments_shadow": None}
    steady: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    profiles: dict[str, Any] = {}
    rounds: dict[str, list[dict[str, Any]]] = {}
    if repeats < 1:
        raise BenchError("repeats must be at least 1")
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
            data = produce_data(r, events, columns=columns, shadow=checks, progress=progress)

            def one(label: str, argv: list[str], total: int, *, tmo: float = timeout,
                    stdin: bool = False) -> dict[str, Any]:
                prof_out = None
                if profile is not None and label.startswith("driftline"):
                    profile.mkdir(parents=True, exist_ok=True)
                    stem = re.sub(r"[^\w.-]+", "_", label).strip("_")
                    prof_out = profile / f"{stem}.pyspy.txt"
                    argv = profiled(argv, prof_out)
                child = Child(label, argv, log_dir=logs, stdin=stdin)
                res = run_children(progress, label, [child], total, timeout=tmo)[0]
                res["steady_eps"] = _steady(res, child.samples, total)
                if prof_out is not None and prof_out.exists():
                    profiles[label] = {"file": str(prof_out), **summarize_profile(prof_out)}
                return res

            # single events as a worker runs by default (decoding in its process) and
            # with a decode process (a second core)
            workers: list[tuple[str, str, str, dict[str, Any], int]] = [
                ("driftline envelopes", r.envelope_topic, "envelope", {}, events),
                ("driftline single events", r.single_topic, "single", {}, events),
                ("driftline single events, decode process", r.single_topic,
                 "single_decode_process", {"decode_process": "on"}, events)]
            if checks:
                both = int(data["shadow_events"])  # the events plus the candidates'
                workers[1:1] = [
                    ("driftline envelopes, checks off", r.envelope_topic, "envelope_checks_off",
                     CHECKS_OFF, events),
                    ("driftline envelopes, predictions kept for labels", r.envelope_topic,
                     "envelope_labels", {"label_join": "all"}, events),
                    ("driftline envelopes and candidates, checks off", r.candidates_topic,
                     "envelope_candidates_checks_off", CHECKS_OFF, both),
                    ("driftline envelopes, shadow candidates, every check", r.shadow_topic,
                     "envelope_all_checks", {"label_join": "all"}, both),
                    ("driftline envelopes, shadow candidates, labels + segments + shadow",
                     r.shadow_topic, "envelope_labels_segments_shadow", LABELS_SEGMENTS_SHADOW,
                     both)]
            if columns:
                workers[1:1] = [
                    ("driftline JSON columns envelopes", r.columns_topic, "columns", {}, events),
                    ("driftline rows envelopes", r.rows_topic, "rows", {}, events)]

            def keep(key: str, res: dict[str, Any]) -> None:
                rounds.setdefault(key, []).append(res)

            for rnd in range(repeats):
                # every consumer once per round, in the same order; a fresh group each time
                tag = f" ({rnd + 1}/{repeats})" if repeats > 1 else ""
                sfx = f"-{rnd + 1}" if rnd else ""
                if "raw" not in skipped:
                    keep("raw", one("raw confluent-kafka" + tag, module_argv(
                        "raw", "--bootstrap", bs, "--topic", r.single_topic, "--events", events,
                        "--group", r.name("raw" + sfx)), events))
                for label, topic, key, extra, total in workers:
                    settings = r.worker_settings(key + sfx, topic, **extra)
                    res = one(label + tag, module_argv(
                        "driftline_worker", "--settings", _json(settings), "--events", total),
                        total, stdin=True)
                    r.created += r.worker_topics(key + sfx)
                    if not res.get("reached_target"):
                        raise BenchError(f"{label}: applied {res['n']:,} of {total:,} events")
                    keep(key, res)
                if "bytewax" not in skipped:
                    keep("bytewax", one("bytewax (1 worker)" + tag, module_argv(
                        "bytewax_flow", "--bootstrap", bs, "--topic", r.single_topic,
                        "--events", events), events))
                if "quix" not in skipped:
                    keep("quix", one("quix streams" + tag, module_argv(
                        "quix_app", "--bootstrap", bs, "--topic", r.single_topic, "--events",
                        events, "--group", r.name("quix" + sfx)), events))
                if "faust" not in skipped:
                    fe = min(events, faust_events)
                    keep("faust", one("faust agent" + tag, module_argv(
                        "faust_agent", "--bootstrap", bs, "--topic", r.single_topic,
                        "--events", fe, "--group", r.name("faust" + sfx),
                        "--web-port", free_port()), fe))
        finally:
            if bootstrap:
                r.cleanup()
    for key, results in rounds.items():
        best = max(results, key=lambda res: float(res["eps"] or 0.0))
        eps[key], details[key] = best["eps"], {**best, "rounds_eps": [x["eps"] for x in results]}
        steady[key] = best.get("steady_eps")
    for k in ("raw", "faust", "quix", "bytewax"):
        steady.setdefault(k, None)
    # events per CPU-second of the consumer's process (all its threads, broker excluded):
    # less sensitive than events/s to other load on the machine
    cpu: dict[str, float | None] = {
        k: max((x["n"] / x["cpu_s"] for x in results if x.get("cpu_s")), default=None)
        for k, results in rounds.items()}
    # the targets' ratios of each round alone, beside the ratios of the best rounds
    per_round = [{k: results[i]["eps"] for k, results in rounds.items() if i < len(results)}
                 for i in range(repeats)]
    round_ratios = {name: [_ratio(rd.get(a), rd.get(b)) for rd in per_round]
                    for name, (a, b) in _RATIOS.items()}
    out: dict[str, Any] = {
        "events": events,
        "raw_eps": eps["raw"], "faust_eps": eps["faust"], "quix_eps": eps["quix"],
        "bytewax_eps": eps["bytewax"], "envelope_eps": eps["envelope"],
        "single_eps": eps["single"],
        # with DRIFTLINE_DECODE_PROCESS=on: two processes, two cores (Bytewax's one
        # worker uses one)
        "single_decode_process_eps": eps["single_decode_process"],
        "columns_envelope_eps": eps["columns"],
        "rows_envelope_eps": eps["rows"],
        "envelope_checks_off_eps": eps["envelope_checks_off"],
        "envelope_labels_eps": eps["envelope_labels"],
        "envelope_candidates_checks_off_eps": eps["envelope_candidates_checks_off"],
        "envelope_all_checks_eps": eps["envelope_all_checks"],
        "envelope_labels_segments_shadow_eps": eps["envelope_labels_segments_shadow"],
        **{name: _ratio(eps[a], eps[b]) for name, (a, b) in _RATIOS.items()},
        "repeats": repeats,
        "rounds": per_round,
        "round_ratios": round_ratios,
        "steady_eps": steady,
        "cpu_eps": cpu,
        "cpu_ratios": {name: _ratio(cpu.get(a), cpu.get(b)) for name, (a, b) in _RATIOS.items()},
        # the same ratios past the first 10 % of events (with labels kept, closer to the
        # cost once the stores are full: they fill during the first-to-last run)
        "steady_ratios": {name: _ratio(steady.get(a), steady.get(b))
                          for name, (a, b) in _RATIOS.items()},
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
        ("**driftline worker, single events, decode process**",
         eps["single_decode_process"], _ratio(eps["single_decode_process"], eps["raw"])),
    ]
    if columns:
        rows[5:5] = [("driftline worker, JSON columns envelopes", eps["columns"],
                      _ratio(eps["columns"], eps["raw"])),
                     ("driftline worker, rows envelopes", eps["rows"],
                      _ratio(eps["rows"], eps["raw"]))]
    if checks:
        rows[5:5] = [("driftline worker, SDK envelopes, optional checks off",
                      eps["envelope_checks_off"], _ratio(eps["envelope_checks_off"], eps["raw"])),
                     ("driftline worker, SDK envelopes, every prediction kept for labels",
                      eps["envelope_labels"], _ratio(eps["envelope_labels"], eps["raw"])),
                     ("driftline worker, SDK envelopes + 2 shadow candidates' events, "
                      "checks off", eps["envelope_candidates_checks_off"],
                      _ratio(eps["envelope_candidates_checks_off"], eps["raw"])),
                     ("driftline worker, SDK envelopes + 2 shadow candidates, every check "
                      "(predictions kept, shadow pairing)", eps["envelope_all_checks"],
                      _ratio(eps["envelope_all_checks"], eps["raw"])),
                     ("driftline worker, SDK envelopes + 2 shadow candidates, labels + "
                      "segments + shadow only", eps["envelope_labels_segments_shadow"],
                      _ratio(eps["envelope_labels_segments_shadow"], eps["raw"]))]
    table = [(name, v if v else "skipped", x if x else "") for name, v, x in rows]
    table += [(f"ratio {k}", out[k] if out[k] else "n/a", f"target ≥ {t:g}" + (
        "; rounds " + " / ".join(f"{x:.2f}" if x else "n/a" for x in round_ratios[k])
        if repeats > 1 else "")) for k, t in out["targets"].items()]
    table.append(("ratio single_decode_process_vs_bytewax",
                  out["single_decode_process_vs_bytewax"] or "n/a",
                  "no target; the worker uses two cores, Bytewax one"))
    if checks:
        steady_r = out["steady_ratios"]
        table += [(f"ratio {k}", out[k] or "n/a", "checks off ÷ on: the checks' end-to-end "
                   "cost (1.0 = free)" + (
                       "; rounds " + " / ".join(f"{x:.2f}" if x else "n/a" for x in round_ratios[k])
                       if repeats > 1 else "") + (
                       f"; past the first 10 %: {steady_r[k]:.2f}" if steady_r[k] else ""))
                  for k in ("envelope_checks_cost", "envelope_labels_cost",
                            "envelope_all_checks_cost", "envelope_labels_segments_shadow_cost")]
    plotted = [(n.strip("*"), v) for n, v, _ in rows if v]
    write("throughput", out, table, ("path (20 features, 10 models, 8 partitions)", "events/s",
                                     "× raw"),
          json_out=json_out, plot=(f"events/s, best of {repeats} round(s) (log)",
                                   [p[0] for p in plotted], [float(p[1]) for p in plotted]))
    return out


def _json(d: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(d).decode()
