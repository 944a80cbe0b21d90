"""Prometheus metrics of a worker, on a registry the caller injects.

Names follow ``driftline_<subsystem>_<name>_<unit>``; label values come from bounded
sets (models are capped by ``max_models``, features by ``max_features`` and the
reference, reasons and kinds are fixed vocabularies). The multivariate statistics of a
model (at most three) are exported as drift scores and thresholds of the pseudo-feature
``__multivariate__``, one series per statistic.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import Exemplar, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from driftline.detectors.monitor import Evaluation
from driftline.detectors.quality import METRICS as QUALITY_METRICS
from driftline.schemas.models import ALERT_KINDS, EventBatch

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)
_DIFF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_DELAY_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0,
                  3 * 86400.0, 7 * 86400.0, 30 * 86400.0)
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

#: ``feature`` label of the multivariate statistics in ``driftline_drift_score`` and
#: ``driftline_drift_threshold``; their ``statistic`` label is the statistic's name
#: (``mmd_rff``, ``covariance``, ``pca_recon``).
MULTIVARIATE_FEATURE = "__multivariate__"
ALERT_STATES = ("firing", "resolved")


class WorkerMetrics:
    """Every metric a worker exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.events = Counter("driftline_worker_events", "Events applied to windows", ["model"],
                              registry=r)
        self.bytes = Counter("driftline_worker_bytes", "Bytes of messages consumed", ["model"],
                             registry=r)
        self.snapshot_bytes = Counter(
            "driftline_worker_snapshot_bytes", "Bytes of model snapshots written to the state "
            "topic (label-join chunk records included)", ["model"], registry=r)
        self.deadletter = Counter("driftline_worker_deadletter", "Dead-lettered events",
                                  ["reason"], registry=r)
        self.batch_size = Histogram("driftline_worker_batch_size_events",
                                    "Messages per consumed batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.batch_duration = Histogram("driftline_worker_batch_duration_seconds",
                                        "Processing time of one consumed batch",
                                        buckets=_DURATION_BUCKETS, registry=r)
        self.checkpoint_duration = Histogram(
            "driftline_worker_checkpoint_duration_seconds",
            "One checkpoint: snapshots written and acknowledged, offsets committed (the "
            "worker consumes nothing meanwhile)", buckets=_DURATION_BUCKETS, registry=r)
        self.models_tracked = Gauge("driftline_worker_models_tracked",
                                    "Models whose state this worker holds", registry=r)
        self.event_time_lag = Gauge("driftline_worker_event_time_lag_seconds",
                                    "Now minus the newest event time seen", ["model"], registry=r)
        self.consumer_lag = Gauge("driftline_worker_consumer_lag_messages",
                                  "Messages behind the fetch high watermark",
                                  ["topic", "partition"], registry=r)
        self.last_evaluation = Gauge("driftline_worker_last_evaluation_timestamp_seconds",
                                     "When the model's window was last evaluated", ["model"],
                                     registry=r)
        self.reference_records_in_memory = Gauge(
            "driftline_worker_reference_records_in_memory",
            "Reference records held in memory because they could not be written to disk",
            registry=r)
        self.decode_cpu = Counter("driftline_worker_decode_process_cpu_seconds",
                                  "CPU seconds of the worker's decode processes", registry=r)
        self.decode_restarts = Counter(
            "driftline_worker_decode_process_restarts",
            "Decode processes replaced after one died or failed (its batches were decoded "
            "by the worker)", registry=r)
        self.references_built = Counter("driftline_worker_references_built",
                                        "References built by the worker", ["model", "source"],
                                        registry=r)
        # set a whole evaluation at a time (one dict update, not a child per series)
        self.score = GaugeTable("driftline_drift_score", "Drift statistic of the current window",
                                ("model", "feature", "statistic"))
        r.register(self.score)
        self.threshold = GaugeTable("driftline_drift_threshold",
                                    "Calibrated threshold of the statistic",
                                    ("model", "feature", "statistic"))
        r.register(self.threshold)
        self.state = Gauge("driftline_drift_state", "1 while a drift alert is firing",
                           ["model", "kind", "feature"], registry=r)
        self.insufficient = Gauge("driftline_drift_insufficient_data",
                                  "1 while the window holds fewer than min_samples events",
                                  ["model"], registry=r)
        self.late_events = Counter("driftline_worker_late_events",
                                   "Events behind the model's watermark (dead-lettered or "
                                   "applied to the current pane, by late_policy)", ["model"],
                                   registry=r)
        self.watermark = Gauge("driftline_worker_watermark_seconds",
                               "Event-time watermark: newest event time minus allowed lateness",
                               ["model"], registry=r)
        self.alerts = Counter("driftline_alerts", "Alerts emitted", ["model", "kind", "state"],
                              registry=r)
        self.serving_latency = BatchHistogram(
            "driftline_serving_latency_seconds", "Serving latency reported by the model server",
            "model", _LATENCY_BUCKETS)
        r.register(self.serving_latency)
        self.requests = Counter("driftline_serving_requests", "Predictions seen, by outcome",
                                ["model", "outcome"], registry=r)
        self.change_events = Counter("driftline_change_events",
                                     "Upstream change events recorded while running",
                                     ["model", "kind"], registry=r)
        self.change_events_invalid = Counter(
            "driftline_change_events_invalid",
            "Messages on the changes topic that are no valid change event (ignored)",
            registry=r)
        self.change_last_ts = Gauge("driftline_change_last_timestamp_seconds",
                                    "Time of the newest upstream change event",
                                    ["model", "kind"], registry=r)
        self.segment_score = GaugeTable("driftline_segment_drift_score",
                                        "Chi-square statistic of one segment's window",
                                        ("model", "segment", "feature"))
        r.register(self.segment_score)
        self.segment_events = Counter("driftline_segment_events",
                                      "Events applied to one segment's windows (values beyond "
                                      "the per-model maximum are counted as segment=\"other\")",
                                      ["model", "segment"], registry=r)
        self.quality = GaugeTable("driftline_quality_metric",
                                  "Data-quality rate of the current window, per feature",
                                  ("model", "feature", "metric"))
        r.register(self.quality)
        self.high_confidence = Gauge("driftline_prediction_high_confidence_ratio",
                                     "Share of the window's predictions at or above the "
                                     "confidence threshold", ["model"], registry=r)
        self.shadow_agreement = Gauge("driftline_shadow_agreement_ratio",
                                      "Agreement of a shadow candidate with the live model "
                                      "over the window of pairs", ["model", "candidate"],
                                      registry=r)
        self.shadow_pairs = Counter("driftline_shadow_pairs",
                                    "Live and shadow predictions paired by event id",
                                    ["model", "candidate"], registry=r)
        self.shadow_without_live = Counter(
            "driftline_shadow_without_live",
            "Shadow predictions whose live model (shadow_of) has no state on this worker: "
            "not paired (the candidate itself is monitored)", ["model"], registry=r)
        self.shadow_ignored = Counter(
            "driftline_shadow_ignored",
            "Shadow predictions of candidates beyond DRIFTLINE_SHADOW_MAX_CANDIDATES of their "
            "live model: not paired", ["model"], registry=r)
        self.shadow_score_diff = BatchHistogram(
            "driftline_shadow_score_diff",
            "Absolute difference of candidate and live scores of paired predictions",
            ("model", "candidate"), _DIFF_BUCKETS)
        r.register(self.shadow_score_diff)
        self.labels_joined = Counter("driftline_labels_joined", "Labels joined to their prediction",
                                     ["model"], registry=r)
        self.labels_unmatched = Counter(
            "driftline_labels_unmatched", "Labels or predictions that never joined, by reason "
            "(unmatched|late labels, expired|evicted predictions)", ["model", "reason"], registry=r)
        self.label_coverage = Gauge("driftline_label_coverage_ratio",
                                    "Joined share of the predictions whose label wait is over",
                                    ["model"], registry=r)
        self.label_delay = BatchHistogram("driftline_label_delay_seconds",
                                          "Label time minus prediction time of joined labels",
                                          "model", _DELAY_BUCKETS)
        r.register(self.label_delay)
        self.model_quality = Gauge("driftline_model_quality",
                                   "Window metric of the labelled predictions",
                                   ["model", "metric"], registry=r)
        #: per model, its series of the labelled metrics that are not GaugeTables (those
        #: forget a model's series by its label), for forget_model
        self._features: dict[str, set[tuple[str, ...]]] = {}
        #: per model, the label values of its score and threshold series, by feature names
        self._score_keys: dict[str, tuple[tuple[str, ...], list[tuple[str, ...]],
                                          list[tuple[str, ...]]]] = {}
        #: (model, kind) whose alert counters exist (created at 0 on its first evaluation)
        self._alert_series: set[tuple[str, str]] = set()
        #: labelled children by (family, *labels), the keys of ``_features``' sets
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, family: str, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, looked up once: ``labels()`` checks and joins the
        label values on every call, too slow for a series per segment and feature set
        at every evaluation. The series is noted for :meth:`forget_model`."""
        key = (family, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
            self._features.setdefault(labels[0], set()).add(key)
        return child

    def observe_batch(self, model: str, batch: EventBatch, seconds: float) -> None:
        """Per model, once per batch: traffic, golden signals, event-time lag."""
        n = len(batch)
        self.events.labels(model).inc(n)
        lat = batch.latency_ms[np.isfinite(batch.latency_ms)]
        if lat.size:
            self.serving_latency.observe_many(model, lat / 1000.0,
                                              _latency_exemplars(batch))
        if batch.outcome is not None:
            errors = sum(1 for o in batch.outcome.tolist() if o == "error")
            if errors:
                self.requests.labels(model, "error").inc(errors)
            self.requests.labels(model, "ok").inc(n - errors)
        else:
            self.requests.labels(model, "unknown").inc(n)
        ts = batch.ts[np.isfinite(batch.ts)]
        if ts.size:
            self.event_time_lag.labels(model).set(max(time.time() - float(ts.max()), 0.0))

    def expect_alerts(self, model: str, kinds: Iterable[str]) -> None:
        """The model's alert counters of these kinds, at 0 until its first alert: an alert
        is then an increase that rate(), increase() and changes() see (a series born at 1
        shows no change)."""
        for kind in kinds:
            if (model, kind) not in self._alert_series:
                for state in ALERT_STATES:
                    self.alerts.labels(model, kind, state)
                self._alert_series.add((model, kind))

    def observe_segments(self, model: str, events: Mapping[str, int]) -> None:
        """Events per segment value of one update (labels bounded by the segment maximum)."""
        for segment, n in events.items():
            self._child("segment_events", self.segment_events, (model, segment)).inc(n)

    def observe_evaluation(self, model: str, ev: Evaluation) -> None:
        """Per pane close: statistics, thresholds, state gauges."""
        if ev.segment:
            self._observe_segment(model, ev)
            return
        self.last_evaluation.labels(model).set(time.time())
        self.insufficient.labels(model).set(1.0 if ev.insufficient else 0.0)
        seen = self._features.setdefault(model, set())
        keys = self._score_keys.get(model)
        if keys is None or keys[0] != ev.names:
            keys = self._score_keys[model] = _score_keys(model, ev.names)
        _, score_keys, threshold_keys = keys
        # per feature its chi2, psi and js, in that order (the keys' order)
        scores = _finite(score_keys, np.stack([ev.chi2, ev.psi, ev.js], axis=1).ravel())
        thresholds = _finite(threshold_keys, ev.threshold)
        mv = ev.multivariate
        kinds = set(ev.kinds)
        if mv is not None:
            kinds.add("data")
        if ev.quality is not None:
            kinds.add("quality")
        if ev.confidence is not None:
            kinds.add("prediction")
        self.expect_alerts(model, kinds)
        if mv is not None:
            for name, v, thr in zip(mv.names, mv.score.tolist(), mv.threshold.tolist(),
                                    strict=True):
                if math.isfinite(v):
                    scores.append(((model, MULTIVARIATE_FEATURE, name), v))
                if math.isfinite(thr):
                    thresholds.append(((model, MULTIVARIATE_FEATURE, name), thr))
        self.score.set_many(scores)
        self.threshold.set_many(thresholds)
        for a in ev.alerts:
            self.state.labels(model, a.kind, a.feature or "").set(1.0 if a.state == "firing" else 0.0)
            seen.add(("state", model, a.kind, a.feature or ""))
        self._observe_checks(model, ev)

    def _observe_checks(self, model: str, ev: Evaluation) -> None:
        """Data-quality rates and the high-confidence share of one evaluation."""
        q = ev.quality
        if q is not None:
            rates = q.rate.tolist()
            js, ms = np.nonzero(q.applicable)
            found = [((model, q.names[j], QUALITY_METRICS[m]), rates[j][m])
                     for j, m in zip(js.tolist(), ms.tolist(), strict=True)
                     if math.isfinite(rates[j][m])]
            self.quality.set_many(found)
        c = ev.confidence
        if c is not None and math.isfinite(c.share):
            self._child("high_confidence", self.high_confidence, (model,)).set(c.share)

    def observe_shadow(self, model: str, candidate: str, pairs: int, diffs: np.ndarray,
                       agreement: float | None, state: str | None = None) -> None:
        """Per batch of paired shadow predictions (``agreement`` at a window evaluation,
        ``state`` when its alert fired or resolved)."""
        seen = self._features.setdefault(model, set())
        if state is not None:
            self.state.labels(model, "shadow", candidate).set(1.0 if state == "firing" else 0.0)
            seen.add(("state", model, "shadow", candidate))
        if pairs:
            self._child("shadow_pairs", self.shadow_pairs, (model, candidate)).inc(pairs)
        if diffs.size:
            self.shadow_score_diff.observe_many((model, candidate), np.abs(diffs))
            seen.add(("shadow_score_diff", model, candidate))
        if agreement is not None and math.isfinite(agreement):
            self._child("shadow_agreement", self.shadow_agreement,
                        (model, candidate)).set(agreement)

    def observe_shadow_without_live(self, candidate: str, n: int) -> None:
        """``n`` shadow predictions of ``candidate`` whose live model is not tracked here."""
        self._child("shadow_without_live", self.shadow_without_live, (candidate,)).inc(n)

    def forget_lag(self, topic: str, partition: int) -> None:
        """A partition this worker no longer reads: its lag series goes (the new owner
        reports it), not left frozen at its last value."""
        try:
            self.consumer_lag.remove(topic, str(partition))
        except KeyError:
            pass

    def restore_firing(self, model: str, alerts: list[tuple[str, str]]) -> None:
        """A model state restored on this worker (a restart, a partition move): its alerts
        still firing are 1 again, as the worker that raised them had them."""
        seen = self._features.setdefault(model, set())
        for kind, feature in alerts:
            self.state.labels(model, kind, feature).set(1.0)
            seen.add(("state", model, kind, feature))

    def observe_shadow_ignored(self, model: str, n: int) -> None:
        """``n`` shadow predictions for live ``model`` of a candidate beyond its limit."""
        self._child("shadow_ignored", self.shadow_ignored, (model,)).inc(n)

    def _observe_segment(self, model: str, ev: Evaluation) -> None:
        if ev.insufficient:
            return
        found = [((model, ev.segment, name), v)
                 for name, v in zip(ev.names, ev.chi2.tolist(), strict=True) if math.isfinite(v)]
        self.segment_score.set_many(found)

    def observe_labels(self, model: str, delta: dict[str, int], delay: np.ndarray,
                       coverage: float) -> None:
        """Per join call: counts it added, delays of the joined rows, coverage so far."""
        if delta.get("joined"):
            self.labels_joined.labels(model).inc(delta["joined"])
        for reason in ("unmatched", "late", "expired", "evicted"):
            if delta.get(reason):
                self.labels_unmatched.labels(model, reason).inc(delta[reason])
        d = delay[np.isfinite(delay)]
        if d.size:
            self.label_delay.observe_many(model, np.maximum(d, 0.0))
        if math.isfinite(coverage):
            self.label_coverage.labels(model).set(coverage)

    def observe_quality(self, model: str, values: dict[str, float]) -> None:
        for metric, v in values.items():
            if math.isfinite(v):
                self.model_quality.labels(model, metric).set(v)

    def observe_concept_alert(self, model: str, feature: str, state: str) -> None:
        self.state.labels(model, "concept", feature).set(1.0 if state == "firing" else 0.0)
        self._features.setdefault(model, set()).add(("state", model, "concept", feature))

    def forget_model(self, model: str) -> None:
        """Remove a model's series (its partition moved to another worker)."""
        for table in (self.score, self.threshold, self.segment_score, self.quality):
            table.forget(model)
        self._score_keys.pop(model, None)
        self._alert_series -= {k for k in self._alert_series if k[0] == model}
        for key in self._features.pop(model, set()):
            self._children.pop(key, None)
            family, labels = key[0], key[1:]
            metric = {"state": self.state, "segment_events": self.segment_events,
                      "high_confidence": self.high_confidence,
                      "shadow_pairs": self.shadow_pairs,
                      "shadow_without_live": self.shadow_without_live,
                      "shadow_ignored": self.shadow_ignored,
                      "shadow_score_diff": self.shadow_score_diff,
                      "shadow_agreement": self.shadow_agreement}[family]
            try:
                metric.remove(*labels)
            except KeyError:
                pass
        for fam, values in ((self.labels_unmatched, ("unmatched", "late", "expired", "evicted")),
                            (self.model_quality, ("accuracy", "fpr", "fnr", "error_rate"))):
            for v in values:
                try:
                    fam.remove(model, v)
                except KeyError:
                    pass
        for metric in (self.events, self.bytes, self.snapshot_bytes, self.event_time_lag,
                       self.last_evaluation, self.insufficient, self.serving_latency,
                       self.late_events,
                       self.watermark, self.labels_joined, self.label_coverage,
                       self.label_delay):
            try:
                metric.remove(model)
            except KeyError:
                pass
        # the model's counters with fixed-vocabulary labels go too: a worker keeps series
        # for the models it owns (<= max_models), not for every model it ever saw
        labelled: list[tuple[Any, tuple[str, ...]]] = [
            *((self.requests, (model, o)) for o in ("ok", "error", "unknown")),
            *((self.alerts, (model, k, st)) for k in ALERT_KINDS for st in ("firing", "resolved")),
            (self.references_built, (model, "first-events")),
        ]
        for metric, labels in labelled:
            try:
                metric.remove(*labels)
            except KeyError:
                pass


def _score_keys(model: str, names: tuple[str, ...]) -> tuple[
        tuple[str, ...], list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The label values of a model's per-feature series: chi2, psi and js of each feature
    in turn, and each feature's chi2 threshold."""
    return (names, [(model, name, stat) for name in names for stat in ("chi2", "psi", "js")],
            [(model, name, "chi2") for name in names])


def _finite(keys: list[tuple[str, ...]], values: np.ndarray) -> list[tuple[tuple[str, ...], float]]:
    """``(key, value)`` of the finite values."""
    if np.isfinite(values).all():
        return list(zip(keys, values.tolist(), strict=True))
    return [(k, v) for k, v in zip(keys, values.tolist(), strict=True) if math.isfinite(v)]


class GaugeTable(Collector):
    """A labelled gauge whose series are set many at a time (one dict update, no child
    object per series); exposed like a ``Gauge`` of the same name and labels."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def set_many(self, items: list[tuple[tuple[str, ...], float]]) -> None:
        """Set the series of each ``(label values, value)``."""
        with self._lock:
            self._values.update(items)

    def remove(self, *labels: str) -> None:
        with self._lock:
            del self._values[labels]

    def forget(self, first: str) -> None:
        """Remove every series whose first label value is ``first`` (a model's: the
        tables are keyed by model first, so nothing else needs to note which it set)."""
        with self._lock:
            for key in [k for k in self._values if k[0] == first]:
                del self._values[key]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(self.name, self.doc, labels=list(self.labels))
        with self._lock:
            items = list(self._values.items())
        for labels, v in items:
            fam.add_metric(list(labels), v)
        yield fam


class BatchHistogram(Collector):
    """A labelled histogram fed a whole numpy batch at a time (one ``searchsorted``)."""

    def __init__(self, name: str, doc: str, label: str | tuple[str, ...],
                 buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.edges = np.asarray(buckets, dtype=np.float64)
        self._series: dict[Any, tuple[np.ndarray, list[float]]] = {}
        self._exemplars: dict[Any, dict[int, Exemplar]] = {}  # per series: bucket -> last
        self._lock = threading.Lock()

    def observe_many(self, value: str | tuple[str, ...], x: np.ndarray,
                     exemplars: list[tuple[float, str]] | None = None) -> None:
        """Add a batch of observations of one series (its label value, or values);
        ``exemplars``: a few (value, trace id) of them, each becoming its bucket's
        OpenMetrics exemplar."""
        idx = np.searchsorted(self.edges, x, side="left")  # le-buckets: x <= edge
        counts = np.bincount(idx, minlength=self.edges.size + 1)
        marks: dict[int, Exemplar] = {}
        if exemplars:
            now = time.time()
            for v, trace in exemplars:
                b = int(np.searchsorted(self.edges, v, side="left"))
                marks[b] = Exemplar({"trace_id": trace}, float(v), now)
        with self._lock:
            buckets, total = self._series.setdefault(
                value, (np.zeros(self.edges.size + 1, dtype=np.int64), [0.0]))
            buckets += counts
            total[0] += float(x.sum())
            if marks:
                self._exemplars.setdefault(value, {}).update(marks)

    def remove(self, *value: str) -> None:
        key = value[0] if len(value) == 1 else value
        with self._lock:
            self._exemplars.pop(key, None)
            if self._series.pop(key, None) is None:
                raise KeyError(key)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        names = [self.label] if isinstance(self.label, str) else list(self.label)
        fam = HistogramMetricFamily(self.name, self.doc, labels=names)
        with self._lock:
            items = [(k, b.copy(), t[0], dict(self._exemplars.get(k, {})))
                     for k, (b, t) in self._series.items()]
        for value, buckets, total, marks in items:
            cum = np.cumsum(buckets)
            pairs: list[Any] = [(_fmt(e), float(c))
                                for e, c in zip(self.edges, cum[:-1], strict=True)]
            pairs.append(("+Inf", float(cum[-1])))
            for b, ex in marks.items():  # exposed in the OpenMetrics format only
                pairs[b] = (*pairs[b], ex)
            fam.add_metric([value] if isinstance(value, str) else list(value), pairs, total)
        yield fam


#: Exemplars per batch for the latency histogram (a sample, not every event).
LATENCY_EXEMPLARS = 8


def _latency_exemplars(batch: EventBatch) -> list[tuple[float, str]]:
    """(latency s, trace id) of a few traced events of the batch: the slowest and an even
    spread of the rest. OpenMetrics caps an exemplar's labels at 128 characters."""
    if batch.trace_id is None:
        return []
    traces = batch.trace_id.tolist()
    lat = batch.latency_ms
    rows = [i for i in range(0, len(traces), max(len(traces) // LATENCY_EXEMPLARS, 1))
            if isinstance(traces[i], str)]
    finite = np.isfinite(lat)
    if finite.any():
        slowest = int(np.nanargmax(np.where(finite, lat, -np.inf)))
        if isinstance(traces[slowest], str):
            rows.append(slowest)
    return [(float(lat[i]) / 1000.0, traces[i]) for i in rows
            if math.isfinite(lat[i]) and 0 < len(traces[i]) <= 100]


def _fmt(edge: float) -> str:
    return repr(float(edge))


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP, in a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 health: Callable[[], bool] | None = None) -> None:
        metrics_app = make_wsgi_app(registry)

        def app(environ, start_response):  # type: ignore[no-untyped-def]
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics_app(environ, start_response)
            if path == "/healthz":
                ok = health() if health else True
                start_response("200 OK" if ok else "503 Service Unavailable",
                               [("Content-Type", "text/plain")])
                return [b"ok\n" if ok else b"unhealthy\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]

        self._server: WSGIServer = make_server(host, port, app, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="driftline-metrics")

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
