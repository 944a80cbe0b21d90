"""One batch of raw inference messages in, alerts and dead letters out; no Kafka here.

The worker hands the processor whole batches (values, partitions, offsets). Decoding is
columnar; each model's rows are applied to its windows exactly once: rows at or below
the model's last applied offset of their partition are replays and are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.calibration import Calibration
from driftline.detectors.errors import DriftlineError, SnapshotError
from driftline.detectors.exemplars import exemplar_rows, identified, row_ids
from driftline.detectors.monitor import Evaluation, ModelMonitor, MonitorConfig
from driftline.detectors.reference import NumericProfile, ReferenceProfile
from driftline.detectors.shadow import ShadowBook, ShadowConfig, ShadowUpdate
from driftline.schemas.codecs import decode_inference
from driftline.schemas.limits import Limits
from driftline.schemas.models import DecodeResult, DriftAlert, EventBatch, Rejection
from driftline.streams.changes import (
    ALERT_CHANGES,
    ChangeEvent,
    ChangeLog,
    detect_changes,
    detect_reference,
)
from driftline.streams.labels import LabelSetup, join_predictions, take_labels
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_config import ModelConfigError, ModelConfigs, WindowSpec
from driftline.streams.model_state import PENDING_BYTES_MAX, ModelState, pending_bytes, state_key

log = logging.getLogger("driftline.worker")

#: Pseudo-model that owns dead letters carrying no model id (one state per partition).
UNATTRIBUTED = "~unattributed"


@dataclass(frozen=True)
class Incoming:
    """One raw Kafka message."""

    topic: str
    partition: int
    offset: int
    value: bytes
    timestamp: float = float("nan")


@dataclass
class Output:
    """What one batch produced."""

    alerts: list[DriftAlert] = field(default_factory=list)
    dead_letters: list[Rejection] = field(default_factory=list)
    references: list[ReferenceProfile] = field(default_factory=list)  # built: full profiles
    changes: list[ChangeEvent] = field(default_factory=list)  # detected: for the changes topic
    applied: int = 0
    skipped_replays: int = 0
    labels_applied: int = 0  # labels taken into the join (matched or counted)


class Processor:
    """All models of one worker."""

    def __init__(
        self,
        *,
        config: MonitorConfig,
        limits: Limits,
        metrics: WorkerMetrics,
        auto_reference_events: int = 5000,
        reference_bins: int = 16,
        max_models: int = 1000,
        snapshot_loader: Callable[[str], bytes | None] | None = None,
        snapshot_key: bytes | None = None,
        snapshot_keys: Callable[[str], list[str]] | None = None,
        model_configs: ModelConfigs | None = None,
        clock: Callable[[], float] = time.time,
        shadow: ShadowConfig | None = None,
        labels: LabelSetup | None = None,
        max_future_s: float = 86_400.0,
    ) -> None:
        """``model_configs``: per-model windows over ``config`` (the default for every
        model); ``clock``: wall time in seconds (the idle timeout measures quiet with it);
        ``labels``: the label join and concept monitoring setup; ``snapshot_keys(prefix)``:
        the keys of the state records with that prefix; ``max_future_s``: how far ahead
        of ``clock`` an event or label time may be (beyond it, or before 1970: dead
        letter ``ts_out_of_range``)."""
        self.model_configs = model_configs or ModelConfigs(config)
        if model_configs is not None and model_configs.base != config:
            self.config = config
        self.clock = clock
        self.labels = labels or LabelSetup()
        self.limits = limits
        self.metrics = metrics
        self.auto_reference_events = auto_reference_events
        self.reference_bins = reference_bins
        self.max_models = max_models
        self.models: dict[str, ModelState] = {}
        # states per model (the unattributed aside): what max_models counts, kept as
        # states come and go so a new model is checked in O(1)
        self._states_of: dict[str, int] = {}
        self._batch_models: Collection[str] = ()  # models of the batch being processed
        self.references: dict[str, ReferenceProfile] = {}  # without their feature samples
        self.snapshot_loader = snapshot_loader
        self.snapshot_key = snapshot_key
        self.snapshot_keys = snapshot_keys
        self._prior: dict[tuple[str, int], int] = {}
        self.cluster_id: str | None = None  # Kafka cluster the offsets in the states refer to
        self._calibrations: dict[tuple[str, MonitorConfig], Calibration] = {}
        #: segment windows' small-window scales (ModelMonitor.small_window_scale), alike
        self._small_scales: dict[tuple[str, MonitorConfig], NDArray[np.float64]] = {}
        self.shadow_config = shadow or ShadowConfig()
        self.changes = ChangeLog(max_models=4 * max_models, metrics=metrics)
        self.max_future_s = max_future_s

    @property
    def config(self) -> MonitorConfig:
        """The configuration of every model without an entry of its own (under the file)."""
        return self.model_configs.base

    @config.setter
    def config(self, value: MonitorConfig) -> None:
        c = self.model_configs
        self.model_configs = ModelConfigs(value, c.base_idle_timeout, c.file, c.source)

    def config_for(self, model: str) -> MonitorConfig:
        """The windows and alerting a model runs with (its entry, else the defaults)."""
        return self.model_configs.monitor_config(model)

    def set_model_configs(self, configs: ModelConfigs) -> list[str]:
        """New per-model configuration: models whose configuration changed start new
        windows (their current panes are dropped); returns the state keys restarted."""
        self.model_configs = configs
        restarted = []
        for key, st in self.models.items():
            if st.monitor is not None and st.monitor.config != self.config_for(st.model):
                st.monitor = self._monitor(st.monitor.reference)
                st.dirty = True
                restarted.append(key)
                log.info("model %s: configuration changed; new windows", st.model)
        return restarted

    def set_model_entry(self, model: str, entry: WindowSpec) -> bool:
        """One model's configuration entry (from the references topic) replaces its entry
        of the file; its windows restart if its configuration changed. False when the
        entry is unusable (logged; the model keeps its configuration)."""
        try:
            configs = self.model_configs.with_model(model, entry)
        except ModelConfigError as exc:
            log.error("model %s: configuration rejected: %s", model, exc)
            return False
        self.set_model_configs(configs)
        return True

    def _monitor(self, ref: ReferenceProfile) -> ModelMonitor:
        """A fresh monitor; the calibration (a bootstrap) is computed once per reference
        and configuration."""
        cfg = self.config_for(ref.model)
        key = (ref.reference_id, cfg)
        mon = ModelMonitor(ref, cfg, calibration=self._calibrations.get(key))
        self._calibrations.setdefault(key, mon.calibration)
        if len(self._calibrations) > 4 * self.max_models:
            self._calibrations.pop(next(iter(self._calibrations)))
        self._calibrate_segments(mon)
        return mon

    def _calibrate_segments(self, mon: ModelMonitor) -> None:
        """Give a monitor with segment windows their calibration now (a bootstrap, once
        per reference and configuration), not at its first segment evaluation, where it
        would hold up that batch."""
        if not mon.config.segments:
            return
        key = (mon.reference.reference_id, mon.config)
        small = self._small_scales.get(key)
        if small is None:
            small = self._small_scales[key] = mon.small_window_scale()
            if len(self._small_scales) > 4 * self.max_models:
                self._small_scales.pop(next(iter(self._small_scales)))
        mon.use_small_window_scale(small)

    def _usable_monitor(self, ref: ReferenceProfile) -> ModelMonitor | None:
        """A monitor on ``ref``, or None (logged) when the reference cannot be used."""
        try:
            return self._monitor(ref)
        except Exception as exc:  # never take the worker down (see set_reference)
            log.error("model %s: reference %s is unusable, ignored: %s: %s", ref.model,
                      ref.reference_id, type(exc).__name__, exc)
            return None

    # -- references --------------------------------------------------------------------
    def set_reference(self, profile: ReferenceProfile) -> bool:
        """A reference arrived (references topic or CLI): new windows if it changed.

        The processor keeps it without its feature samples (detection does not read
        them; see :meth:`ReferenceProfile.without_samples`)."""
        old = self.references.get(profile.model)
        if old is not None and old.reference_id == profile.reference_id:
            return False
        profile = profile.without_samples()
        try:  # a reference the engine cannot use must never take the worker down
            self._monitor(profile)
        except Exception as exc:
            log.error("model %s: reference %s rejected: %s", profile.model,
                      profile.reference_id, exc)
            return False
        self.references[profile.model] = profile
        for st in self.models.values():
            if st.model != profile.model or (st.reference is not None
                                             and st.reference.reference_id == profile.reference_id):
                continue
            st.reference = profile
            st.monitor = self._monitor(profile)
            st.pending_reference, st.pending_rows, st.pending_bytes, st.dirty = [], 0, 0, True
            log.info("model %s: reference %s in use", profile.model, profile.reference_id)
        return True

    # -- models ------------------------------------------------------------------------
    def state_of(self, model: str, partition: int, *, create: bool = True) -> ModelState | None:
        """The state of a model on one source partition: in memory, restored, or new
        (``create`` False: None rather than a new one)."""
        key = state_key(model, partition)
        st = self.models.get(key)
        if st is not None:
            return st
        counted = not model.startswith(UNATTRIBUTED)
        if counted and model not in self._states_of and len(self._states_of) >= self.max_models:
            return None
        blob = self.snapshot_loader(key) if self.snapshot_loader else None
        ref = self.references.get(model)
        if blob is not None:
            try:
                st = ModelState.restore(blob, ref, self.config_for(model), key=self.snapshot_key,
                                        shadow=self.shadow_config, records=self.snapshot_loader,
                                        record_keys=self.snapshot_keys)
                if self.cluster_id and st.cluster_id and st.cluster_id != self.cluster_id:
                    raise SnapshotError(f"snapshot is from Kafka cluster {st.cluster_id}, "
                                        f"not {self.cluster_id}")
                if st.monitor is None and ref is not None:
                    st.monitor = self._usable_monitor(ref)
                    st.reference = ref if st.monitor is not None else None
                elif st.monitor is not None and st.monitor.config != self.config_for(model):
                    log.info("model %s: configuration changed since the snapshot; new windows",
                             model)
                    st.monitor, st.dirty = self._monitor(st.monitor.reference), True
                elif st.monitor is not None:  # restored: its segment windows' calibration
                    self._calibrate_segments(st.monitor)
                log.info("model %s: state restored (%d events applied so far)", model,
                         st.events_applied)
                self.metrics.restore_firing(model, st.firing_alerts())
            except (SnapshotError, DriftlineError) as exc:
                log.error("model %s: snapshot not usable (%s); starting fresh", model, exc)
                st = None
        if st is None:
            if not create:
                return None
            st = ModelState(model, partition, cluster_id=self.cluster_id)
            if ref is not None:
                st.monitor = self._usable_monitor(ref)
                st.reference = ref if st.monitor is not None else None
        self.models[key] = st
        if counted:
            self._states_of[model] = self._states_of.get(model, 0) + 1
        self.metrics.models_tracked.set(len(self.models))
        return st

    def drop(self, keys: Sequence[str]) -> None:
        """Forget states (their partitions were revoked); a model's metric series go with
        its last state on this worker."""
        for k in keys:
            st = self.models.pop(k, None)
            if st is None:
                continue
            if st.model.startswith(UNATTRIBUTED):  # not counted: look for another state
                if not any(s.model == st.model for s in self.models.values()):
                    self.metrics.forget_model(st.model)
                continue
            left = self._states_of.pop(st.model, 1) - 1
            if left > 0:
                self._states_of[st.model] = left
            else:
                self.metrics.forget_model(st.model)
        self.metrics.models_tracked.set(len(self.models))

    # -- the batch ---------------------------------------------------------------------
    def process(self, messages: Sequence[Incoming]) -> Output:
        """Apply a batch of messages of one topic."""
        if not messages:
            return Output()
        return self.process_columns(
            messages[0].topic, [m.value for m in messages], [m.partition for m in messages],
            [m.offset for m in messages], [m.timestamp for m in messages])

    def process_columns(self, topic: str, values: list[bytes], partitions: list[int],
                        offsets: list[int], timestamps: list[float]) -> Output:
        """The same, from parallel lists (the worker's hot path builds no per-message object)."""
        if not values:
            return Output()
        decoded = decode_inference(values, limits=self.limits, topic=topic,
                                   partitions=partitions, offsets=offsets, timestamps=timestamps)
        return self.process_decoded(topic, decoded, values, partitions, offsets)

    def process_decoded(self, topic: str, decoded: DecodeResult, values: list[bytes],
                        partitions: list[int], offsets: list[int]) -> Output:
        """The same, for messages already decoded (by a decode process): ``decoded`` is
        what :func:`decode_inference` gives for ``values`` with these ``limits``."""
        out = Output()
        payloads = _Payloads(values, partitions, offsets)
        self._prior = {}
        for rej in decoded.rejections:
            self._dead_letter(rej, out)
        self._batch_models = decoded.batches.keys()  # live models with events right now
        try:
            # shadow predictions first, so a live model's book exists before its rows arrive
            for model, batch in sorted(decoded.batches.items(),
                                       key=lambda b: b[1].shadow_of is None):
                self._apply(model, batch, topic, payloads, out)
        finally:
            self._batch_models = ()  # not to keep the batch alive until the next one
        return out

    def _apply(self, model: str, batch: EventBatch, topic: str,
               payloads: _Payloads, out: Output) -> None:
        parts = np.unique(batch.partition).tolist()
        if len(parts) > 1:  # one model on several partitions: one state per partition
            for p in parts:
                self._apply(model, batch.take(np.flatnonzero(batch.partition == p)), topic,
                            payloads, out)
            return
        st = self.state_of(model, int(parts[0]))
        if st is None:
            for p, o in sorted(set(zip(batch.partition.tolist(), batch.offset.tolist(),
                                       strict=True))):
                self._dead_letter(Rejection(
                    f"too_many_models: worker tracks {self.max_models} models",
                    payloads.get((p, o), b""), topic, p, o, model), out)
            return
        fresh = np.ones(len(batch), dtype=bool)
        for p in np.unique(batch.partition).tolist():
            last = self._last_before_batch(st, topic, p)
            fresh &= ~((batch.partition == p) & (batch.offset <= last))
        if not fresh.all():
            out.skipped_replays += int((~fresh).sum())
            batch = batch.take(np.flatnonzero(fresh))
        if len(batch) == 0:
            return
        bad = self._ts_out_of_range(batch.ts)
        if bad is not None:
            out.dead_letters += _row_rejections(
                batch, np.flatnonzero(bad).tolist(),
                lambda i: self.ts_out_of_range_reason("event", float(batch.ts[i])),
                topic, payloads, model)
            st.events_deadlettered += int(bad.sum())
            self.metrics.deadletter.labels("ts_out_of_range").inc(int(bad.sum()))
            self._mark(st, batch.take(np.flatnonzero(bad)), topic)
            batch = batch.take(np.flatnonzero(~bad))
            if len(batch) == 0:
                return
        t0 = time.perf_counter()
        self._note_changes(st, batch, out)
        try:
            self._feed(st, batch, topic, out, payloads)
        except Exception as exc:  # a detector must never take the worker down
            log.exception("model %s: detector error", model)
            for p, o in sorted(set(zip(batch.partition.tolist(), batch.offset.tolist(),
                                       strict=True))):
                self._dead_letter(Rejection(f"detector_error: {type(exc).__name__}: {exc}"[:500],
                                            payloads.get((p, o), b""), topic, p, o, model), out)
            return
        try:
            join_predictions(self, st, batch, out)
        except Exception:  # the windows have the batch; only the label join missed it
            log.exception("model %s: prediction join error", model)
        self._mark(st, batch, topic)
        st.last_seen, st.dirty = self.clock(), True
        if st.shadow is not None or batch.shadow_of is not None:
            self._pair(st, batch, out)
        self.metrics.observe_batch(model, batch, time.perf_counter() - t0)

    def _ts_out_of_range(self, ts: NDArray[np.float64]) -> NDArray[np.bool_] | None:
        """Rows whose event time is before 1970 or more than ``max_future_s`` ahead of the
        clock (None: none). One such time would move an event-time model's watermark, or
        the label join's, past every real event for good."""
        with np.errstate(invalid="ignore"):  # NaN: no event time, handled downstream
            bad = (ts < 0.0) | (ts > self.clock() + self.max_future_s)
        return bad if bad.any() else None

    def ts_out_of_range_reason(self, what: str, ts: float) -> str:
        """The dead-letter reason of an event or label time :meth:`_ts_out_of_range` found."""
        return f"ts_out_of_range: {what} time " + (
            f"{ts:.6g} is {ts - self.clock():.6g} s ahead of the worker's clock (limit "
            f"DRIFTLINE_MAX_FUTURE_S = {self.max_future_s:.0f} s)" if ts > 0
            else f"{ts:.6g} is before 1970")

    @staticmethod
    def _mark(st: ModelState, batch: EventBatch, topic: str) -> None:
        for p in np.unique(batch.partition).tolist():
            st.mark(topic, p, int(batch.offset[batch.partition == p].max()))

    def _pair(self, st: ModelState, batch: EventBatch, out: Output) -> None:
        """Shadow mode: pair live and shadow predictions by event id in the live model's
        state (a shadow event is keyed by its live model: same partition, same worker)."""
        found: list[tuple[ModelState, list[ShadowUpdate]]] = []
        if st.shadow is not None:
            found.append((st, st.shadow.add_live(batch)))
        if batch.shadow_of is not None:
            lives = set(batch.shadow_of.tolist()) - {None, st.model}
            for live in sorted(lives):
                # a live model not tracked here is not made for its candidates: shadow_of
                # values naming no real model would take the budget of real ones
                live_st = self.state_of(live, st.partition,
                                        create=live in self._batch_models)
                if live_st is None:
                    self.metrics.observe_shadow_without_live(
                        st.model, int(np.count_nonzero(batch.shadow_of == live)))
                    continue
                if live_st.shadow is None:
                    ref = live_st.reference
                    pred = ref.prediction if ref is not None else None
                    edges = pred.edges if isinstance(pred, NumericProfile) and pred.edges.size \
                        else None
                    live_st.shadow = ShadowBook(live, self.shadow_config, edges)
                ignored = live_st.shadow.ignored
                u = live_st.shadow.add_shadow(st.model, batch)
                if live_st.shadow.ignored > ignored:  # beyond shadow_max_candidates
                    self.metrics.observe_shadow_ignored(live, live_st.shadow.ignored - ignored)
                live_st.dirty = True
                found.append((live_st, [u] if u is not None else []))
        for owner, updates in found:
            self.metrics.expect_alerts(owner.model, ("shadow",))
            for u in updates:
                agreement, state = None, None
                for ev in u.evaluations:
                    agreement = ev.agreement
                    if ev.alert is not None:
                        out.alerts.append(self.with_changes(ev.alert))
                        state = ev.alert.state
                        owner.alerts_fired += state == "firing"
                        self.metrics.alerts.labels(owner.model, "shadow", state).inc()
                self.metrics.observe_shadow(owner.model, u.candidate, u.pairs, u.diffs,
                                            agreement, state)

    def _feed(self, st: ModelState, batch: EventBatch, topic: str, out: Output,
              payloads: _Payloads | None = None) -> None:
        if st.monitor is None:
            need = self.auto_reference_events - st.pending_rows
            # the buffer is bounded in size too: wide events fill it with fewer rows
            per_row = pending_bytes(batch) / len(batch)
            room = int((PENDING_BYTES_MAX - st.pending_bytes) // per_row)
            take = min(need, len(batch), max(room, 1 if st.pending_rows == 0 else 0))
            if take:
                head = batch if take == len(batch) else batch.take(np.arange(take))
                st.buffer_for_reference(head, round(per_row * take))
                st.events_applied += take
                out.applied += take
            if st.pending_rows >= self.auto_reference_events or take < min(need, len(batch)) \
                    or st.pending_bytes >= PENDING_BYTES_MAX:
                full = st.build_reference(bins=self.reference_bins,
                                          max_features=self.limits.max_features)
                ref = full.without_samples()  # the full one is for the references topic
                self.references[st.model] = ref
                st.reference, st.monitor = ref, self._monitor(ref)
                out.references.append(full)
                self.metrics.references_built.labels(st.model, "first-events").inc()
                self._note_changes(st, batch, out, reference_only=True)
                log.info("model %s: built reference %s from its first %d events%s",
                         st.model, ref.reference_id, ref.size,
                         "" if ref.size >= self.auto_reference_events else
                         " (its events are wide: the buffer is full)")
            if take == len(batch):
                return
            batch = batch.take(np.arange(take, len(batch)))
        n = len(batch)
        mon = st.monitor
        assert mon is not None
        late_before = mon.late_events
        seq0 = mon.ring.seq
        evals = mon.update(batch)
        if mon.segments is not None and mon.segments.last_events:
            self.metrics.observe_segments(st.model, mon.segments.last_events)
        late = mon.last_late_rows
        applied = n - int(late.size)
        st.events_applied += applied
        out.applied += applied
        late_now = mon.late_events - late_before
        if late_now:
            self.metrics.late_events.labels(st.model).inc(late_now)
        if late.size:
            st.events_late += int(late.size)
            out.dead_letters += _row_rejections(
                batch, late.tolist(),
                lambda _: "late: event time behind the model's watermark (or missing)",
                topic, payloads, st.model)
            st.events_deadlettered += int(late.size)
            self.metrics.deadletter.labels("late").inc(int(late.size))
        self._observe_watermark(st)
        out.alerts += self._record(st, evals, batch, seq0)

    def _record(self, st: ModelState, evals: list[Evaluation], batch: EventBatch | None = None,
                seq0: int = 0) -> list[DriftAlert]:
        """Metrics and accounting of a model's evaluations; their alerts, with the model's
        recent changes and (from ``batch``, the one that closed the panes) exemplars."""
        alerts: list[DriftAlert] = []
        for ev in evals:
            self.metrics.observe_evaluation(st.model, ev)
            for a in ev.alerts:
                a, trace = self._explain(st, a, batch, seq0)
                alerts.append(a)
                if a.state == "firing":
                    st.alerts_fired += 1
                self.metrics.alerts.labels(a.model, a.kind, a.state).inc(
                    exemplar={"trace_id": trace} if trace else None)
        return alerts

    def _observe_watermark(self, st: ModelState) -> None:
        mon = st.monitor
        if mon is not None and mon.config.pane_seconds is not None \
                and np.isfinite(mon.ring.max_ts):
            self.metrics.watermark.labels(st.model).set(
                mon.ring.max_ts - mon.config.allowed_lateness)

    def process_labels(self, topic: str, values: list[bytes], partitions: list[int],
                       offsets: list[int], timestamps: list[float]) -> Output:
        """A batch of LabelEvent messages: joined to the predictions of their model
        states (replays skipped), invalid ones dead-lettered; concept alerts out."""
        out = Output()
        if values:
            take_labels(self, topic, values, partitions, offsets, timestamps, out)
        return out
    # -- upstream changes and exemplars ------------------------------------------------
    def _note_changes(self, st: ModelState, batch: EventBatch, out: Output,
                      reference_only: bool = False) -> None:
        """Changes the batch shows against what the model's stream showed before; new
        ones join the change log (alerts of this batch carry them) and the output."""
        try:
            found = [] if reference_only else detect_changes(st.upstream, batch)
            ref = detect_reference(st.upstream, st.reference, batch)
        except Exception:  # change detection must never cost the batch
            log.exception("model %s: change detection failed", st.model)
            return
        if ref is not None:
            found.append(ref)
        for ev in found:
            if self.changes.add(ev):
                out.changes.append(ev)
                log.info("model %s: %s change: %s", ev.model, ev.kind, ev.text)

    def _changes_of(self, a: DriftAlert) -> tuple[dict[str, Any], ...]:
        """The changes the alert carries: its own, else its model's most recent ones."""
        return a.changes or self.changes.recent(a.model, a.window.end_ts, ALERT_CHANGES)

    def with_changes(self, a: DriftAlert) -> DriftAlert:
        """The alert with its model's recent changes (concept and shadow alerts: no
        exemplars of their own here)."""
        changes = self._changes_of(a)
        return replace(a, changes=changes) if changes else a

    def _explain(self, st: ModelState, a: DriftAlert, batch: EventBatch | None = None,
                 seq0: int = 0) -> tuple[DriftAlert, str | None]:
        """The alert with its model's recent changes and, when firing, exemplar ids from
        the batch that closed its pane; also the first exemplar's trace id, if it has one."""
        changes = self._changes_of(a)
        ids: list[tuple[str, bool]] = []
        if batch is not None and a.state == "firing" and a.feature and a.segment is None \
                and st.monitor is not None:
            try:
                ids = self._exemplars(st.monitor, a, batch, seq0)
            except Exception:  # exemplars are an extra: never lose the alert over them
                log.exception("model %s: exemplar selection failed", a.model)
        if not changes and not ids:
            return a, None
        a = replace(a, changes=changes, exemplars=a.exemplars or tuple(i for i, _ in ids))
        trace = ids[0][0] if ids and ids[0][1] and len(ids[0][0]) <= 100 else None
        return a, trace

    def _exemplars(self, mon: ModelMonitor, a: DriftAlert, batch: EventBatch,
                   seq0: int) -> list[tuple[str, bool]]:
        """Ids of the rows of the closing batch that moved most against the reference,
        among its rows in the alert's pane (all its rows when none fall in that pane)."""
        assert a.feature is not None
        ok = identified(batch)
        ok[mon.last_late_rows] = False
        panes = mon.ring.rule.pane_ids(seq0, len(batch), batch.ts)
        rows = np.flatnonzero(ok & (panes == a.window.pane))
        if rows.size == 0:
            rows = np.flatnonzero(ok)
        return row_ids(batch, exemplar_rows(mon, batch, rows, a.feature, a.window.pane))

    def _last_before_batch(self, st: ModelState, topic: str, partition: int) -> int:
        """The model's last applied offset as it was when this batch began."""
        key = (st.key, partition)
        if key not in self._prior:
            self._prior[key] = st.last_offset(topic, partition)
        return self._prior[key]

    def _dead_letter(self, rej: Rejection, out: Output) -> None:
        owner = rej.model if rej.model else UNATTRIBUTED
        st = self.state_of(owner, rej.partition)
        if st is None:  # model limit reached: count it under the partition
            st = self.state_of(UNATTRIBUTED, rej.partition)
        assert st is not None
        if rej.offset >= 0 and rej.offset <= self._last_before_batch(st, rej.topic, rej.partition):
            out.skipped_replays += 1
            return
        out.dead_letters.append(rej)
        st.events_deadlettered += 1
        if rej.offset >= 0:
            st.mark(rej.topic, rej.partition, rej.offset)
        st.dirty = True
        self.metrics.deadletter.labels(rej.reason.split(":", 1)[0]).inc()

    def tick(self, now: float | None = None, idle_timeout: float | None = None) -> list[DriftAlert]:
        """Idle timeout: evaluate quiet models whose panes would otherwise never close.

        A model quiet for its configured ``idle_timeout`` (else ``idle_timeout``) of wall
        time (``now``, default the processor's clock) has its due panes closed and evaluated.
        """
        now = self.clock() if now is None else now
        alerts: list[DriftAlert] = []
        for st in self.models.values():
            if st.monitor is None or not st.last_seen:
                continue
            timeout = self.model_configs.idle_timeout(st.model)
            evals = st.monitor.tick(now, timeout if timeout is not None else idle_timeout,
                                    st.last_seen)
            if evals:
                alerts += self._record(st, evals)
                st.dirty = True
        return alerts


def _row_rejections(batch: EventBatch, rows: list[int], reasons: Callable[[int], str],
                    topic: str, payloads: _Payloads | None, model: str) -> list[Rejection]:
    """Dead letters for some rows of a batch: each with its message as payload when that
    message held this one event (an envelope's would be repeated for each of its events)."""
    single = np.zeros(len(batch), dtype=bool)
    if payloads is not None:
        _, inverse, counts = np.unique(np.stack([batch.partition, batch.offset], axis=1),
                                       axis=0, return_inverse=True, return_counts=True)
        single = counts[inverse.reshape(-1)] == 1
    out = []
    for i in rows:
        p, o = int(batch.partition[i]), int(batch.offset[i])
        payload = payloads.get((p, o), b"") if single[i] and payloads is not None else b""
        out.append(Rejection(reasons(i), payload, topic, p, o, model))
    return out


class _Payloads:
    """Raw payload by (partition, offset), indexed only when a dead letter needs one."""

    def __init__(self, values: list[bytes], partitions: list[int], offsets: list[int]) -> None:
        self._values, self._partitions, self._offsets = values, partitions, offsets
        self._index: dict[tuple[int, int], bytes] | None = None

    def get(self, key: tuple[int, int], default: bytes = b"") -> bytes:
        if self._index is None:
            self._index = dict(zip(zip(self._partitions, self._offsets, strict=True),
                                   self._values, strict=True))
        return self._index.get(key, default)
