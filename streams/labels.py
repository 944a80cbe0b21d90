"""Labels in the processor: joining them to predictions in the model states, concept alerts.

A label is joined in the state of its model *and source partition* (``model@p``), the
state that holds the predictions of partition ``p`` of the inference topic. Labels and
predictions are both keyed by model, the topics have the same partition count and the
worker's consumer group assigns partition ``p`` of both topics to the same member, so a
model's labels meet its predictions. A label that arrives on another partition than its
prediction (a different key or partitioner, a different partition count) finds nothing
there: it waits in the pending buffer and is counted ``unmatched`` after the TTL.

Which models keep their predictions (setting ``label_join``): ``auto`` (default) the
models with a concept rule of their own from the start, every other model from its
first label on (predictions before that cannot join); ``all`` every model; ``off`` none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np

from driftline.detectors.concept import ConceptConfig, ConceptMonitor
from driftline.detectors.label_join import (
    JoinConfig,
    JoinCounts,
    Joined,
    JoinStore,
    canonical_labels,
)
from driftline.schemas.codecs import decode_label_columns
from driftline.schemas.models import EventBatch, Rejection
from driftline.streams.model_state import ModelState, drop_leftover_chunks

if TYPE_CHECKING:
    from driftline.streams.processor import Output, Processor

log = logging.getLogger("driftline.worker")


@dataclass(frozen=True)
class LabelSetup:
    """Join bounds, the default concept config and per-model ones."""

    join: JoinConfig = field(default_factory=JoinConfig)
    concept: ConceptConfig = field(default_factory=ConceptConfig)
    rules: Mapping[str, ConceptConfig] = field(default_factory=dict)
    keep: str = "auto"  # auto | all | off

    def concept_for(self, model: str) -> ConceptConfig:
        return self.rules.get(model, self.concept)

    def keeps_from_start(self, model: str) -> bool:
        return self.keep == "all" or (self.keep == "auto" and model in self.rules)


def _ensure(st: ModelState, setup: LabelSetup,
            record_keys: Callable[[str], list[str]] | None = None
            ) -> tuple[JoinStore, ConceptMonitor]:
    """The state's join store and concept monitor, on the current configs (a new store
    takes over chunk records a former store of the state left, to delete them)."""
    if st.joins is None:
        st.joins = JoinStore(setup.join)
        if record_keys is not None:
            drop_leftover_chunks(st.key, st.joins, record_keys)
    elif st.joins.config != setup.join:
        st.joins.reconfigure(setup.join)
    cfg = setup.concept_for(st.model)
    if st.concept is None or st.concept.config != cfg:
        if st.concept is not None:
            log.info("model %s: concept settings changed; labelled window starts over", st.model)
        st.concept = ConceptMonitor(st.model, cfg)
    return st.joins, st.concept


def join_predictions(proc: Processor, st: ModelState, batch: EventBatch, out: Output) -> None:
    """Keep a batch's predictions that carry an event id (when the model keeps them)."""
    setup = proc.labels
    if setup.keep == "off" or (st.joins is None and not setup.keeps_from_start(st.model)):
        return
    ids = batch.event_id
    if not len(ids) or (ids[0] is None and (ids == None).all()):  # noqa: E711 (elementwise)
        return
    joins, _ = _ensure(st, setup, proc.snapshot_keys)
    labels = batch.prediction_label
    predicted = None if labels is None else canonical_labels(labels.tolist())
    before = joins.counts.copy()
    rows = joins.add_predictions(ids, batch.prediction_score, predicted, batch.ts)
    _joined(proc, st, before, rows, out)


def take_labels(proc: Processor, topic: str, values: list[bytes], partitions: list[int],
                offsets: list[int], timestamps: list[float], out: Output) -> None:
    """Decode, dead-letter the invalid, join the rest in their model states."""
    proc._prior = {}
    idx, models, ids, labels, ts, rejections = decode_label_columns(
        values, limits=proc.limits, topic=topic, partitions=partitions, offsets=offsets)
    for rej in rejections:
        proc._dead_letter(rej, out)
    cols = _LabelColumns(idx, ids, labels, ts)
    keys = list(zip(models, [partitions[i] for i in idx], strict=True))
    groups: dict[tuple[str, int], list[int]] = {}
    if len(set(keys)) == 1:
        groups[keys[0]] = list(range(len(keys)))
    else:
        for k, key in enumerate(keys):
            groups.setdefault(key, []).append(k)
    for (model, p), items in groups.items():
        _apply_labels(proc, model, p, items, cols, topic, values, offsets, timestamps, out)


@dataclass(frozen=True)
class _LabelColumns:
    """Decoded label messages: index in the batch, event id, label, ``ts``."""

    index: list[int]
    event_id: list[str]
    label: list[str | float | int | bool]
    ts: list[float]


def _apply_labels(proc: Processor, model: str, p: int, items: list[int], cols: _LabelColumns,
                  topic: str, values: list[bytes], offsets: list[int], timestamps: list[float],
                  out: Output) -> None:
    idx = cols.index
    st = proc.state_of(model, p)
    if st is None:
        for k in items:
            i = idx[k]
            proc._dead_letter(Rejection(f"too_many_models: worker tracks {proc.max_models} models",
                                        values[i], topic, p, offsets[i], model), out)
        return
    last = proc._last_before_batch(st, topic, p)
    fresh = [k for k in items if offsets[idx[k]] > last]
    out.skipped_replays += len(items) - len(fresh)
    if not fresh:
        return
    bad = proc._ts_out_of_range(np.array([cols.ts[k] for k in fresh], dtype=np.float64))
    if bad is not None:  # a far-future label time would expire every waiting prediction
        for k in (fresh[j] for j in np.flatnonzero(bad).tolist()):
            i = idx[k]
            proc._dead_letter(Rejection(proc.ts_out_of_range_reason("label", cols.ts[k]),
                                        values[i], topic, p, offsets[i], model), out)
        fresh = [k for j, k in enumerate(fresh) if not bad[j]]
        if not fresh:
            return
    try:
        joins, _ = _ensure(st, proc.labels, proc.snapshot_keys)
        before = joins.counts.copy()
        ts = np.array([cols.ts[k] for k in fresh], dtype=np.float64)
        missing = ~np.isfinite(ts)
        if missing.any():  # no event time: the message's timestamp
            ts[missing] = np.array([timestamps[idx[k]] for k in fresh], dtype=np.float64)[missing]
        labels = canonical_labels([cols.label[k] for k in fresh])
        rows = joins.add_labels([cols.event_id[k] for k in fresh],
                                cast("list[str]", labels), ts)
        _joined(proc, st, before, rows, out)
    except Exception as exc:  # a detector must never take the worker down
        log.exception("model %s: label join error", model)
        for k in fresh:
            i = idx[k]
            proc._dead_letter(Rejection(f"detector_error: {type(exc).__name__}: {exc}"[:500],
                                        values[i], topic, p, offsets[i], model), out)
        return
    st.mark(topic, p, max(offsets[idx[k]] for k in fresh))
    st.dirty = True
    out.labels_applied += len(fresh)


def _joined(proc: Processor, st: ModelState, before: JoinCounts, rows: Joined,
            out: Output) -> None:
    """Concept update and metrics after a join call."""
    assert st.joins is not None and st.concept is not None
    m = proc.metrics
    m.expect_alerts(st.model, ("concept",))
    evaluations = st.concept.labelled // st.concept.config.eval_every
    alerts = st.concept.update(rows)
    m.observe_labels(st.model, st.joins.counts.minus(before),
                     rows.delay if len(rows) else np.zeros(0), st.joins.counts.coverage)
    if st.concept.labelled // st.concept.config.eval_every != evaluations:
        m.observe_quality(st.model, st.concept.quality)
    for a in alerts:
        out.alerts.append(proc.with_changes(a))
        if a.state == "firing":
            st.alerts_fired += 1
        m.alerts.labels(a.model, a.kind, a.state).inc()
        m.observe_concept_alert(a.model, a.statistic if a.detector == "threshold"
                                else f"{a.detector}:{a.statistic}", a.state)
    st.dirty = True


def label_status(st: ModelState) -> dict[str, object]:
    """The label accounting of a state, for the status topic."""
    assert st.joins is not None
    c = st.joins.counts
    out: dict[str, object] = {
        "predictions": c.predictions, "labels": c.labels, "joined": c.joined,
        "unmatched": c.unmatched, "late": c.late, "expired": c.expired, "evicted": c.evicted,
        "waiting_predictions": len(st.joins), "waiting_labels": st.joins.pending,
    }
    if st.concept is not None:
        out["labelled_window"] = st.concept.n
        out["quality"] = {k: v for k, v in st.concept.quality.items() if math.isfinite(v)}
    return out
