"""CPU cost of segments, data quality, the label join and shadow mode on the worker's path.

The same pre-encoded messages (10 models, 20 features, events with ``event_id`` and a
``segment``) go through :meth:`Processor.process_columns` under several settings: every
optional feature off, each one alone, and the defaults with labels and shadow candidates.
Forms: SDK batch envelopes (packed columns, as the SDK writes them; rows; JSON columns)
and single events. What is measured is the CPU time of this process
(``time.process_time``) per event; each run is on a fresh processor whose models already
have their references (a warm-up, not timed), and of ``repeats`` runs each batch counts
with its least CPU time. CPU time, not wall time:
the ratios stay meaningful on a loaded machine.

Shadow: two of the models have a candidate model whose events carry ``shadow_of`` and the
live events' ids. Without shadow the same candidate events are sent without ``shadow_of``
(two more ordinary models), so every setting decodes the same number of events. Labels:
``label_join=all`` keeps every prediction for the join, and a label message for half of
the live events is consumed after each inference batch; the label topic's CPU is reported
separately (per label) and in the ``+ label topic`` column.

Decode alone: :func:`decode_inference` on the single-event messages against the per-event
work of the baselines (:class:`RowWindow`: ``orjson.loads`` and the feature values into a
numpy row), both in this process.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from driftline.benchmarks.baselines.common import RowWindow
from driftline.benchmarks.report import write
from driftline.schemas.codecs import decode_inference, encode_envelope_columns, encode_envelope_rows
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.processor import Processor
from driftline.streams.producer import event_columns
from driftline.streams.settings import Settings
from driftline.streams.synthetic import SyntheticModels

MODELS, FEATURES, PARTITIONS = 10, 20, 4
SHADOWED = 2  # models with a shadow candidate
INFERENCE, LABELS = "driftline.inference", "driftline.labels"

#: Setting changes of each scenario over the defaults.
_OFF: dict[str, Any] = {"segments": False, "quality_enabled": False,
                        "confidence_enabled": False, "label_join": "off"}
SCENARIOS: dict[str, tuple[dict[str, Any], bool, bool]] = {
    # name: (settings, shadow_of on the candidate events, label messages)
    "off": (_OFF, False, False),
    "segments only": ({**_OFF, "segments": True}, False, False),
    "quality only": ({**_OFF, "quality_enabled": True, "confidence_enabled": True}, False, False),
    "labels only": ({**_OFF, "label_join": "all"}, False, True),
    "shadow only": (_OFF, True, False),
    "all on": ({"label_join": "all"}, True, True),
}


class _Stream:
    """Events of the live models and of the shadow candidates, in batches of one form."""

    def __init__(self, events_per_model: int, seed: int) -> None:
        gen = SyntheticModels(MODELS, FEATURES, seed=seed)
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.partition: dict[str, int] = {}
        rng = np.random.default_rng(seed)
        for i, m in enumerate(gen.models):
            evs = gen.events(m, events_per_model, ts=1.7e9)
            for ev in evs:
                del ev["model"]
            self.events[m] = evs
            self.partition[m] = i % PARTITIONS
            if i < SHADOWED:  # the candidate: same ids, scores close to the live ones
                cand = f"{m}-candidate"
                noise = rng.normal(0, 0.02, len(evs))
                self.events[cand] = [{**ev, "prediction": round(float(ev["prediction"]) + float(d), 5),
                                      "shadow_of": m} for ev, d in zip(evs, noise, strict=True)]
                self.partition[cand] = self.partition[m]  # keyed by the live model
        self.live = list(gen.models)

    def batches(self, form: str, shadow: bool, per_message: int,
                per_batch: int) -> list[tuple[list[bytes], list[int]]]:
        """Batches of (values, partitions); ``per_message`` events per envelope."""
        msgs: list[tuple[bytes, int]] = []
        n = len(next(iter(self.events.values())))
        for start in range(0, n, per_message):
            for m, evs in self.events.items():
                chunk = evs[start:start + per_message]
                if not shadow:
                    chunk = [{k: v for k, v in ev.items() if k != "shadow_of"} for ev in chunk]
                p = self.partition[m]
                if form == "single":
                    msgs += [(orjson.dumps({"model": m, **ev}), p) for ev in chunk]
                elif form == "rows":
                    msgs.append((encode_envelope_rows(m, chunk), p))
                else:
                    cols = event_columns(chunk)
                    assert cols is not None  # synthetic events share their fields
                    mv = cols.pop("model_version")[0]
                    msgs.append((encode_envelope_columns(m, cols, len(chunk), mv,
                                                         packed=form == "packed"), p))
        out = []
        for i in range(0, len(msgs), per_batch):
            part = msgs[i:i + per_batch]
            out.append(([v for v, _ in part], [p for _, p in part]))
        return out

    def labels(self, share: float) -> dict[tuple[str, str], tuple[bytes, int]]:
        """Label messages for ``share`` of each live model's events, by (model, event id)."""
        out: dict[tuple[str, str], tuple[bytes, int]] = {}
        rng = np.random.default_rng(1)
        for m in self.live:
            for ev in self.events[m]:
                if rng.random() < share:
                    label = int(rng.random() < float(ev["prediction"]))
                    out[m, ev["event_id"]] = (orjson.dumps(
                        {"model": m, "event_id": ev["event_id"], "label": label}),
                        self.partition[m])
        return out


class _Run:
    """One scenario on one form: a warmed-up processor and the timed batches."""

    def __init__(self, settings: Settings, warm: list[tuple[list[bytes], list[int]]],
                 auto_reference: int) -> None:
        self.proc = Processor(
            config=settings.monitor_config(), limits=settings.limits(),
            metrics=WorkerMetrics(CollectorRegistry()), auto_reference_events=auto_reference,
            reference_bins=settings.reference_bins, max_models=settings.max_models,
            model_configs=settings.model_configs(), shadow=settings.shadow_config(),
            labels=settings.label_setup())
        self.offset = 0
        for values, parts in warm:
            self.feed(values, parts)
        missing = [st.model for st in self.proc.models.values() if st.monitor is None]
        if missing:
            raise RuntimeError(f"warm-up built no reference for {missing}")

    def feed(self, values: list[bytes], parts: list[int]) -> int:
        offs = list(range(self.offset, self.offset + len(values)))
        self.offset += len(values)
        out = self.proc.process_columns(INFERENCE, values, parts, offs, [1.7e9] * len(values))
        if out.dead_letters:
            raise RuntimeError(f"unexpected dead letter: {out.dead_letters[0].reason}")
        return out.applied


def _labels_for(values: list[bytes], labels: dict[tuple[str, str], tuple[bytes, int]]
                ) -> tuple[list[bytes], list[int]]:
    """The label messages of the events in ``values`` (found by model and event id)."""
    vals: list[bytes] = []
    parts: list[int] = []
    for v in values:
        obj = orjson.loads(v)
        ids = ([e["event_id"] for e in obj["events"]] if "events" in obj
               else obj["columns"]["event_id"] if "columns" in obj else [obj["event_id"]])
        for eid in ids:
            hit = labels.get((obj["model"], eid))
            if hit is not None:
                vals.append(hit[0])
                parts.append(hit[1])
    return vals, parts


def _timed(run: _Run, batches: list[tuple[list[bytes], list[int]]],
           label_batches: list[tuple[list[bytes], list[int]]] | None
           ) -> tuple[list[float], list[float], int, int]:
    """CPU seconds of each inference batch and of each label batch; events; labels."""
    cpu = time.process_time
    inf_s: list[float] = []
    lab_s: list[float] = []
    events = labels = 0
    lab_off = 0
    # The benchmark holds every encoded message and the warmed-up processors (~10^5
    # objects a worker would not hold); frozen, they are not rescanned by each full
    # collection, whose cost would otherwise land on whichever setting runs into it.
    gc.collect()
    gc.freeze()
    try:
        for i, (values, parts) in enumerate(batches):
            t0 = cpu()
            events += run.feed(values, parts)
            inf_s.append(cpu() - t0)
            if label_batches is not None:
                lv, lp = label_batches[i]
                offs = list(range(lab_off, lab_off + len(lv)))
                lab_off += len(lv)
                t0 = cpu()
                out = run.proc.process_labels(LABELS, lv, lp, offs, [1.7e9] * len(lv))
                lab_s.append(cpu() - t0)
                labels += out.labels_applied
    finally:
        gc.unfreeze()
    return inf_s, lab_s, events, labels


def _best(runs: list[list[float]]) -> float:
    """Sum over batches of each batch's least CPU time across the repeats: every repeat
    processes the same batches on the same state, so a batch slowed by other processes
    in one repeat counts with its time of another."""
    return float(np.asarray(runs).min(axis=0).sum()) if runs and runs[0] else 0.0


#: Envelopes (of 500 events) per processed batch, by default; single events per batch.
ENVELOPES_PER_BATCH = 10
SINGLE_EVENTS_PER_BATCH = 2000
#: Form name: (message kind, events per message).
FORMS = {"envelope packed": ("packed", 500), "envelope rows": ("rows", 500),
         "envelope columns": ("columns", 500), "single events": ("single", 1)}


def messages_per_batch(kind: str, envelopes_per_batch: int = ENVELOPES_PER_BATCH) -> int:
    """Messages per processed batch of a message kind."""
    return SINGLE_EVENTS_PER_BATCH if kind == "single" else envelopes_per_batch


def _decode_only(batches: list[tuple[list[bytes], list[int]]], repeats: int) -> dict[str, float]:
    """CPU µs per event: decode_inference vs RowWindow.add on the same single-event messages."""
    values = [v for vs, _ in batches for v in vs]
    win = RowWindow(FEATURES, 4096)
    add = win.add

    def rowwindow() -> None:
        for v in values:
            add(v)

    def decode() -> None:
        for vs, ps in batches:
            decode_inference(vs, partitions=ps, offsets=range(len(vs)))  # type: ignore[arg-type]

    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in (("rowwindow", rowwindow), ("decode_inference", decode)):
            gc.collect()
            t0 = time.process_time()
            fn()
            us = (time.process_time() - t0) / len(values) * 1e6
            best[name] = min(best.get(name, us), us)
    return best


def run(events_per_model: int = 5000, repeats: int = 3, json_out: Path | None = None,
        quick: bool = False, progress: Callable[[str], None] = print,
        forms: tuple[str, ...] = tuple(FORMS),
        envelopes_per_batch: int = ENVELOPES_PER_BATCH) -> dict[str, Any]:
    """Every scenario on every form; CPU µs per event and ratios to all off.
    ``envelopes_per_batch``: messages per processed batch of the envelope forms (each
    model update has a fixed cost, so larger batches, as when a worker reads a backlog,
    cost less per event)."""
    warm_events, auto_reference = (1500, 1000) if quick else (3000, 2000)
    warm_stream, stream = _Stream(warm_events, seed=1), _Stream(events_per_model, seed=2)
    labels = stream.labels(0.5)
    results: dict[str, dict[str, dict[str, float]]] = {}
    decode: dict[str, float] = {}
    for form in forms:
        kind, per_message = FORMS[form]
        size = messages_per_batch(kind, envelopes_per_batch)
        progress(f"{form}: encoding")
        enc = {sh: (warm_stream.batches(kind, sh, per_message, size),
                    stream.batches(kind, sh, per_message, size)) for sh in (False, True)}
        lab = [_labels_for(vs, labels) for vs, _ in enc[False][1]]
        times: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
        counts: dict[str, tuple[int, int]] = {}
        for r in range(repeats):
            for name, (changes, shadow, with_labels) in SCENARIOS.items():
                warm, timed = enc[shadow]
                settings = Settings().with_(**changes)
                proc = _Run(settings, warm, auto_reference)
                inf_s, lab_s, n, nl = _timed(proc, timed, lab if with_labels else None)
                runs = times.setdefault(name, ([], []))
                runs[0].append(inf_s)
                runs[1].append(lab_s)
                counts[name] = (n, nl)
                progress(f"{form} run {r + 1}/{repeats}: {name} {sum(inf_s) / n * 1e6:.2f} "
                         "µs/event")
        best: dict[str, dict[str, float]] = {}
        for name, (inf_runs, lab_runs) in times.items():
            n, nl = counts[name]
            inf, labs = _best(inf_runs), _best(lab_runs)
            best[name] = {"us_per_event": inf / n * 1e6, "events": n, "labels": nl,
                          "label_us_per_label": labs / nl * 1e6 if nl else 0.0,
                          "with_label_topic_us_per_event": (inf + labs) / n * 1e6}
        off = best["off"]["us_per_event"]
        for b in best.values():
            b["ratio"] = b["us_per_event"] / off
            b["ratio_with_label_topic"] = b["with_label_topic_us_per_event"] / off
        results[form] = best
        if kind == "single":
            decode = _decode_only(enc[False][1], repeats)
            decode["ratio"] = decode["decode_inference"] / decode["rowwindow"]
            decode["processor_off"] = off
            decode["processor_all_on"] = best["all on"]["us_per_event"]
    data: dict[str, Any] = {
        "events_per_model": events_per_model, "envelopes_per_batch": envelopes_per_batch,
        "models": MODELS, "features": FEATURES,
        "shadowed_models": SHADOWED, "repeats": repeats, "measure": "CPU µs per event "
        "(time.process_time, each batch's least time over the repeats)", "forms": results,
        "decode_single": decode,
    }
    save(data, json_out)
    return data


def save(data: dict[str, Any], json_out: Path | None = None) -> None:
    """Write the results (``run``'s data) as JSON and a Markdown table."""
    table: list[tuple[Any, ...]] = []
    for form, best in data["forms"].items():
        for name, b in best.items():
            table.append((form, name, round(b["us_per_event"], 2), round(b["ratio"], 3),
                          round(b["with_label_topic_us_per_event"], 2)))
    decode = data["decode_single"]
    if decode:
        table.append(("single events", "decode_inference only",
                      round(decode["decode_inference"], 2), "", ""))
        table.append(("single events", "RowWindow.add (baselines' decode)",
                      round(decode["rowwindow"], 2), "", ""))
    write("overhead", {k: v for k, v in data.items() if k != "machine"}, table,
          ("form", "setting", "CPU µs/event", "vs off", "+ label topic µs/event"),
          json_out=json_out)
