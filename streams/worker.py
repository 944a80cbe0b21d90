"""The worker: a consumer-group member that feeds whole batches to the processor.

Commit order per batch (at-least-once delivery, exactly-once effect on state):

1. apply the batch to the models' windows (replays at or below a model's last applied
   offset are skipped),
2. produce alerts and dead letters, and wait for their acknowledgement,
3. every ``snapshot_interval_s`` (and on revoke and shutdown): produce the dirty models'
   snapshots and status records, wait for their acknowledgement (a label-join store's
   new chunk records first, acknowledged before the snapshots that name them; chunks no
   snapshot names any more are deleted after),
4. only then commit the consumed offsets, so a committed offset never passes what the
   acknowledged snapshots cover.

A crash between any two steps loses nothing; at worst an alert or dead letter repeats,
recognisable by its deterministic id or its source offset. When the broker does not
acknowledge a batch's alerts or dead letters, the worker goes back to its last checkpoint
(model states from their snapshots, partitions from their committed offsets) and produces
them again; a batch whose handling fails otherwise is never committed, and a snapshot
the broker did not acknowledge is written again before any later commit.

Upstream changes: the worker reads the whole changes topic (every partition, assigned
without a consumer group, from the beginning at start and then as it grows) into the
processor's change log, since the changes of any model may matter to the alerts of the
models it owns. Changes it detects itself are produced with the alerts (before them) and
carry deterministic ids, so a replay never records one twice.

With a decode process (setting ``decode_process``), a child process decodes each batch
while the worker applies the previous one (:mod:`~driftline.streams.decode_process`). The
batch in flight is consumed but not applied: no position covers it, so a revoke, a
roll-back, a failed batch, a cluster change or a stop drops it and it is read again (by
this worker from its first offset, or by the partition's next owner from the committed
one).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from driftline.detectors.concept import preload as preload_concept
from driftline.detectors.errors import DriftlineError
from driftline.detectors.join_index import COMPILED as ID_INDEX_COMPILED
from driftline.detectors.reference import ReferenceProfile
from driftline.detectors.serialization import sign_record, verify_record
from driftline.detectors.stats import KERNELS
from driftline.schemas.codecs import SCANNER, encode_alert, encode_dead_letter
from driftline.schemas.models import DriftAlert, Rejection
from driftline.streams.admin import (
    TopicSpec,
    UnknownTopicError,
    ensure_topics,
    partition_count,
    read_compacted,
)
from driftline.streams.batch_size import BatchSizer
from driftline.streams.changes import ChangeEvent
from driftline.streams.decode_process import DecodeProcess
from driftline.streams.decode_process import wanted as decode_process_wanted
from driftline.streams.kafka_config import consumer_config, producer_config
from driftline.streams.labels import label_status
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_config import ModelConfigError, ModelConfigs, decode_record
from driftline.streams.model_state import ModelState, SnapshotRecords, join_record_key
from driftline.streams.processor import UNATTRIBUTED, Processor
from driftline.streams.reference_records import ReferenceRecords
from driftline.streams.settings import Settings
from driftline.streams.throttle import LogThrottle, ThrottledLog

log = logging.getLogger("driftline.worker")

#: After a cluster change, how long to wait for an assignment before rejoining the group
#: with a new member: well beyond a join that first waits out the session of the abandoned
#: old consumer (about 15 s measured on Tansu), so a retry never abandons a join that
#: would have completed.
REJOIN_AFTER_S = 60.0


class ClusterChanged(Exception):
    """The Kafka cluster id changed: the broker we were talking to lost its data."""

    def __init__(self, cluster_id: str) -> None:
        super().__init__(cluster_id)
        self.cluster_id = cluster_id


class ClusterWatch:
    """The ``logger`` of the worker's Kafka clients: forwards every line and notes when a
    client met another cluster.

    librdkafka logs facility ``CLUSTERID`` when a broker at a known address answers for
    another cluster; a consumer logs it before it fetches from that cluster. The worker
    then confirms with a metadata request before it applies a batch, so a batch the old
    consumer fetched from a replacement cluster is never applied under the old offsets.
    """

    def __init__(self, logger: logging.Logger | ThrottledLog) -> None:
        self.logger = logger
        self.suspect = threading.Event()

    def log(self, level: int, msg: str, *args: Any) -> None:
        if args and args[0] == "CLUSTERID":
            self.suspect.set()
        self.logger.log(level, msg, *args)


#: Largest state snapshot (one Kafka message) the worker writes.
STATE_MAX_BYTES = 16_777_216


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic driftline uses, with its intended partition count and policy."""
    s, p, rf = settings, settings.partitions, settings.replication_factor
    return [
        TopicSpec(s.inference_topic, p, replication_factor=rf),
        TopicSpec(s.labels_topic, p, replication_factor=rf),
        # a reference with 5,000-value samples of 20 full-precision features is ~2 MB
        TopicSpec(s.references_topic, 1, compact=True, replication_factor=rf,
                  config={"max.message.bytes": str(STATE_MAX_BYTES)}),
        TopicSpec(s.alerts_topic, p, replication_factor=rf),
        TopicSpec(s.deadletter_topic, p, replication_factor=rf),
        TopicSpec(s.changes_topic, 1, replication_factor=rf),
        # snapshots of models with a label join store or shadow book can pass Kafka's 1 MB
        # default; the worker's producer allows 16 MiB (message.max.bytes) to match
        TopicSpec(s.state_topic, p, compact=True, replication_factor=rf,
                  config={"max.message.bytes": str(STATE_MAX_BYTES)}),
        TopicSpec(s.status_topic, 1, compact=True, replication_factor=rf),
    ]


@dataclass
class WorkerStats:
    """Counts since the worker started (the live progress line reads them)."""

    consumed: int = 0
    applied: int = 0
    alerts: int = 0
    dead_letters: int = 0
    skipped_replays: int = 0
    labels: int = 0
    snapshots: int = 0
    commits: int = 0
    cluster_changes: int = 0
    batches_held: int = 0  # read again: a client met another cluster, ours unconfirmed
    started: float = field(default_factory=time.time)
    last_alert: DriftAlert | None = None


@dataclass(slots=True)
class _Inference:
    """A batch's inference messages as parallel lists, with its decode ticket."""

    values: list[bytes]
    parts: list[int]
    offs: list[int]
    stamps: list[float]
    last: dict[int, int]  # partition -> last offset
    kbytes: dict[bytes, int]  # message key -> bytes
    ticket: tuple[int, int] | None = None


@dataclass(slots=True)
class _Inflight:
    """A consumed batch whose inference messages are being decoded by the child."""

    msgs: list[Message]
    inference: _Inference


class Worker:
    """One driftline worker process."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        *,
        owner: str | None = None,
        on_alert: Callable[[DriftAlert], None] | None = None,
        model_configs: ModelConfigs | None = None,
    ) -> None:
        """``model_configs``: per-model windows (default: read from the settings' file)."""
        self.settings = settings
        self.metrics = WorkerMetrics(registry)
        self._invalid_change_log = LogThrottle()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.on_alert = on_alert
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._snapshots: dict[str, bytes] = {}
        self._positions: dict[tuple[str, int], int] = {}  # next offset to commit
        self._assigned: set[int] = set()
        self._assigned_labels: set[int] = set()
        self._delivery_errors: list[tuple[str, str]] = []  # (topic, error)
        self._last_snapshot = time.monotonic()
        self._ready = threading.Event()
        self._unread = False  # stopping with partitions whose snapshots could not be read
        key = settings.signing_key()
        self._key = key
        self.processor = Processor(
            config=settings.monitor_config(),
            limits=settings.limits(),
            metrics=self.metrics,
            auto_reference_events=settings.auto_reference_events,
            reference_bins=settings.reference_bins,
            max_models=settings.max_models,
            snapshot_loader=self._snapshots.get,
            snapshot_key=key,
            snapshot_keys=self._state_keys,
            model_configs=model_configs or settings.model_configs(),
            shadow=settings.shadow_config(),
            max_future_s=settings.max_future_s,
            labels=settings.label_setup(),
        )
        # the records of the processor's references (it keeps them without samples), on disk
        self._reference_records = ReferenceRecords(settings.data_dir or None)
        #: model configuration records as read from the references topic (by key; small,
        #: one per model at most), for a re-publish after a cluster loss
        self._config_records: dict[bytes, bytes] = {}
        self._watch = ClusterWatch(ThrottledLog(logging.getLogger("driftline.kafka")))
        base: dict[str, Any] = {**settings.kafka(), "logger": self._watch}
        self._base = base
        self._producer = self._make_producer()
        self._consumer: Consumer | None = None
        self._refs: Consumer | None = None
        self._changes: Consumer | None = None
        self._admin: AdminClient | None = None
        self._cluster_id: str | None = None
        self._pending_cluster: str | None = None
        self._rejoin_by: float | None = None
        self._decoder = (DecodeProcess(self.processor.limits, settings.inference_topic)
                         if decode_process_wanted(settings.decode_process) else None)
        self._inflight: _Inflight | None = None
        #: messages asked of each consume: about batch_max_bytes of them
        self._batch_size = BatchSizer(settings.batch_max_messages, settings.batch_max_bytes)
        self._decoder_seen = (0.0, 0)  # its CPU seconds and restarts counted so far

    def _make_producer(self) -> Producer:
        return Producer(producer_config(
            self._base, **{"client.id": f"{self.settings.client_id}-worker",
                           "message.max.bytes": STATE_MAX_BYTES}))

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, duration: float | None = None) -> WorkerStats:
        """Consume until :meth:`request_stop` (or ``duration`` seconds); then shut down."""
        s = self.settings
        created = ensure_topics(self._base, topic_specs(s))
        if created:
            log.info("created topics: %s", ", ".join(created))
        if not SCANNER:
            log.warning("single JSON events are decoded in Python: the compiled scanner "
                        "(driftline.schemas._scan) was not built when driftline was "
                        "installed (no C compiler?); they are decoded about twice as slowly")
        if not ID_INDEX_COMPILED:
            log.warning("the label join indexes event ids with a dict: the compiled index "
                        "(driftline.detectors._id_index) was not built when driftline was "
                        "installed (no C compiler?); keeping predictions costs more CPU")
        if not KERNELS:
            log.warning("window tests, histograms and segment grouping run on numpy alone: the "
                        "compiled kernels (driftline.detectors._kernels) were not built when "
                        "driftline was installed (no C compiler?); evaluations cost more CPU")
        self._admin = AdminClient({k: v for k, v in self._base.items()
                                   if not k.startswith(("fetch.", "enable."))})
        try:
            self._check_cluster()
            preload_concept()  # river, for label joins: imported now, not in a batch
            self._start_references()
            self._start_changes()
            self._subscribe()
        except BaseException:
            self._reference_records.close()  # the files of the references read so far
            raise
        deadline = None if duration is None else time.monotonic() + duration
        self._ready.set()
        last_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    self._step(last_tick)
                except ClusterChanged as change:
                    self._on_cluster_lost(change.cluster_id)
                except KafkaException as exc:  # broker trouble: never crash, never spin
                    log.error("kafka error, retrying in 1 s: %s", exc)
                    self._stop.wait(1.0)
                now = time.monotonic()
                if now - last_tick >= 1.0:
                    last_tick = now
        finally:
            self._shutdown()
        return self.stats

    def _subscribe(self) -> None:
        s = self.settings
        self._consumer = Consumer(consumer_config(
            self._base, s.group_id,
            **{"client.id": f"{s.client_id}-{self.owner}",
               "statistics.interval.ms": 5000,
               "stats_cb": self._on_stats,
               "error_cb": self._on_error}))
        topics = [s.inference_topic] + ([s.labels_topic] if s.label_join != "off" else [])
        self._consumer.subscribe(topics, on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _step(self, last_tick: float) -> None:
        s = self.settings
        assert self._consumer is not None
        self._poll_references(0)
        self._poll_changes(0)
        msgs = self._consumer.consume(num_messages=self._batch_size.count,
                                      timeout=s.batch_timeout_s)
        self._batch_size.observe(msgs)
        if self._pending_cluster is not None:
            cid, self._pending_cluster = self._pending_cluster, None
            raise ClusterChanged(cid)
        if self._watch.suspect.is_set() and msgs and not self._confirm_cluster():
            # msgs may come from a replacement cluster and the broker cannot tell us yet:
            # never apply them under the old offsets; read them again once it can
            self._rewind(self._drop_inflight() + msgs)
            self.stats.batches_held += 1
            msgs = []
        if self._rejoin_by is not None and time.monotonic() > self._rejoin_by:
            # a safety net after a cluster change (only then): a join that has not
            # completed is retried by a new member; the stalled one is abandoned, not
            # closed (see _abandon_consumer), and expires after the session timeout
            log.warning("no assignment %.0f s after the cluster change; rejoining",
                        REJOIN_AFTER_S)
            self._abandon_consumer()
            self._subscribe()
            self._rejoin_by = time.monotonic() + REJOIN_AFTER_S
        if not self._unread:  # (stopping with snapshots unread: nothing is applied)
            self._feed(msgs)
        now = time.monotonic()
        if now - last_tick >= 1.0:
            self._emit(self.processor.tick(time.time(), s.idle_timeout_s), [])
            self._check_cluster()
        if now - self._last_snapshot >= s.snapshot_interval_s:
            self.checkpoint()
        else:
            self._write_sealed_chunks()

    # -- a broker that lost its data ---------------------------------------------------
    def _check_cluster(self) -> None:
        """Notice a Kafka cluster replaced under us (e.g. a memory-only broker restarted)."""
        cid = self._new_cluster_id()
        if cid is not None:
            raise ClusterChanged(cid)

    def _confirm_cluster(self) -> bool:
        """After a CLUSTERID notice: True once the broker confirms the cluster our offsets
        belong to (the notice is then cleared); raises :class:`ClusterChanged` when it
        names another; False while it cannot tell (metadata unavailable, no cluster id)."""
        if self._admin is None:
            return True
        cid = self._broker_cluster_id()
        if cid is None:
            log.warning("cluster unconfirmed after a CLUSTERID notice")
            return False
        if cid != self._cluster_id:
            raise ClusterChanged(cid)
        self._watch.suspect.clear()
        return True

    def _feed(self, msgs: list[Message]) -> None:
        """Apply a consumed batch; with a decode process, send it to be decoded and apply
        the one in flight (also when nothing new came)."""
        if self._decoder is None:
            if msgs:
                self._apply(msgs, None)
            return
        prev = self._inflight
        self._inflight = _Inflight(msgs, self._submit(msgs)) if msgs else None
        if prev is not None:
            self._apply(prev.msgs, prev.inference)

    def _apply(self, msgs: list[Message], pre: _Inference | None) -> None:
        positions = dict(self._positions)
        try:
            self._handle(msgs, pre)
        except KafkaException:
            self._drop_inflight()
            self._roll_back()  # outputs not acknowledged: back to the last checkpoint
            raise
        except BaseException:
            # a batch that did not go through is read again (with the one in flight), and
            # nothing of it is committed meanwhile (what it did apply is skipped then as
            # replays)
            self._positions = positions
            self._rewind(msgs + self._drop_inflight())
            raise

    def _submit(self, msgs: list[Message]) -> _Inference:
        """The batch's inference lists, sent to the decode process."""
        inf = self._inference_lists(self._split(msgs)[0])
        if inf.values and self._decoder is not None:
            inf.ticket = self._decoder.submit(inf.values, inf.parts, inf.offs, inf.stamps)
        return inf

    def _drop_inflight(self) -> list[Message]:
        """Forget the batch in flight (never applied, so never committed); its messages,
        for the caller to read again where the partitions are still ours."""
        b, self._inflight = self._inflight, None
        if self._decoder is not None:
            self._decoder.discard()
        return [] if b is None else b.msgs

    def _rewind(self, msgs: list[Message]) -> None:
        """Seek each partition of ``msgs`` back to its first message, to be read again."""
        first: dict[tuple[str, int], int] = {}
        for m in msgs:
            if m.error() is None:
                key = (m.topic(), m.partition())
                first[key] = min(first.get(key, m.offset()), m.offset())
        assert self._consumer is not None
        for (topic, part), off in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, part, off))
            except KafkaException as exc:  # no longer ours: the next owner reads it
                log.warning("could not rewind %s[%d] to %d: %s", topic, part, off, exc)

    def _roll_back(self) -> None:
        """Start again from the last checkpoint after a batch whose alerts or dead letters
        the broker did not acknowledge: every model state is dropped (restored from its
        last snapshot when its events come again) and every assigned partition is read
        again from its committed offset, so the batch's outputs are produced again (with
        the same alert ids and source offsets) instead of being counted but missing."""
        self._drop_inflight()  # read again from the committed offsets with the rest
        self.processor.drop(list(self.processor.models))
        self._positions = {}
        s = self.settings
        assert self._consumer is not None
        tps = [TopicPartition(s.inference_topic, p) for p in sorted(self._assigned)]
        tps += [TopicPartition(s.labels_topic, p) for p in sorted(self._assigned_labels)]
        try:
            starts = self._consumer.committed(tps, timeout=10)
        except KafkaException as exc:  # from the beginning: slower, as exact
            log.warning("committed offsets unavailable (%s); reading again from the start", exc)
            starts = [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in tps]
        for tp in starts:
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
            try:
                self._consumer.seek(tp)
            except KafkaException as exc:  # not fetching yet: it starts at the committed one
                log.warning("could not rewind %s[%d]: %s", tp.topic, tp.partition, exc)
        log.error("outputs of a batch not acknowledged: %d partitions read again from their "
                  "last checkpoint", len(starts))

    def _new_cluster_id(self) -> str | None:
        """The cluster id when it differs from the one we started on, else None."""
        cid = self._broker_cluster_id()
        return cid if cid is not None and cid != self._cluster_id else None

    def _broker_cluster_id(self) -> str | None:
        """The cluster id the broker reports (the first one becomes ours), or None when
        it cannot tell (no admin client, metadata unavailable, no cluster id)."""
        if self._admin is None:
            return None
        try:
            cid = self._admin.list_topics(timeout=5).cluster_id
        except KafkaException as exc:
            log.warning("metadata unavailable: %s", exc)
            return None
        if not cid:
            return None
        if self._cluster_id is None:
            self._cluster_id = self.processor.cluster_id = cid
        return str(cid)

    def _on_cluster_lost(self, cid: str) -> None:
        """Start over on the new cluster's empty topics, keeping windows and references."""
        self._drop_inflight()  # the old cluster's messages
        states = self.processor.models
        log.error(
            "kafka cluster changed (id %s -> %s): the broker lost its topics. %d model "
            "states keep their windows and references but their source offsets (up to %s) "
            "and committed offsets are gone; consuming the new topics from the beginning",
            self._cluster_id, cid, len(states),
            {k: max(st.offsets.values(), default=-1) for k, st in list(states.items())[:5]})
        self._restore_known_models()  # read, not yet loaded: they move to the new cluster too
        self._cluster_id = self.processor.cluster_id = cid
        for st in states.values():
            st.offsets, st.dirty, st.cluster_id = {}, True, cid
            if st.joins is not None:  # its chunk records went with the old cluster
                st.joins.rewrite_chunks()
        self._snapshots, self._positions = {}, {}
        self.processor.snapshot_loader = self._snapshots.get
        self._producer.purge()  # what was queued for the old cluster is gone with it
        self._producer.flush(1)
        self._producer = self._make_producer()  # idempotence state belongs to the old one
        self._delivery_errors.clear()
        created = ensure_topics(self._base, topic_specs(self.settings))
        log.error("recreated topics: %s", ", ".join(created) or "none (already there)")
        self._republish_references()
        self._release_models()
        self._abandon_consumer()
        if self._refs is not None:
            self._refs.close()
        if self._changes is not None:
            self._changes.close()
        self._assigned, self._assigned_labels = set(), set()
        self._start_references()
        self._start_changes()
        self._subscribe()
        self._rejoin_by = time.monotonic() + REJOIN_AFTER_S
        self.stats.cluster_changes += 1

    def _restore_known_models(self) -> None:
        """Restore, from the snapshots read at the last assignment, every model of this
        worker's partitions that no event has brought into memory since: the snapshots
        are about to be forgotten with the old cluster, and the new one's state topic
        holds only what this worker writes to it (a snapshot that cannot be restored
        starts its model afresh, logged, as at any restore)."""
        for key in list(self._snapshots):
            model, sep, part = key.rpartition("@")
            if not sep or not part.isdigit() or key in self.processor.models:
                continue  # label-join chunk records (``model@p/joins/...``) and loaded states
            if int(part) in self._assigned:
                self.processor.state_of(model, int(part))

    def _republish_references(self) -> None:
        """The model configuration records read, then the record of every reference the
        processor holds, byte for byte as they were read or published, onto the new
        cluster's references topic."""
        topic = self.settings.references_topic
        for key, record in self._config_records.items():
            self._producer.produce(topic, record, key=key or None, on_delivery=self._on_delivery)
        for model, ref in self.processor.references.items():
            rec = self._reference_records.get(model, ref.reference_id)
            if rec is None:  # every reference the processor holds came with its record
                log.error("model %s: no record of reference %s to re-publish", model,
                          ref.reference_id)
                continue
            try:
                value = rec.value
            except (OSError, zlib.error) as exc:  # its file removed or damaged meanwhile
                log.error("model %s: record of reference %s unreadable (%s); not "
                          "re-published", model, ref.reference_id, exc)
                continue
            self._producer.produce(topic, value, key=rec.key, on_delivery=self._on_delivery)

    def _release_models(self) -> None:
        """Snapshot every model to the new cluster, then let the new assignment decide.

        What a revoke would do: the next owner of each partition (this worker or another)
        restores the model from the new cluster's state topic, windows and references
        intact. Nothing is committed: the consumed positions belonged to the old cluster.
        """
        leaving = list(self.processor.models)
        try:
            self.checkpoint()
        except ClusterChanged as change:  # changed again meanwhile: handled next step
            self._pending_cluster = change.cluster_id
            return
        except (KafkaException, DriftlineError) as exc:
            # dropped all the same, as on a revoke: a copy kept here would have no owner
            # and could write stale snapshots over the next owner's
            log.error("snapshots after the cluster change failed; the %d models restart "
                      "from their last snapshot on the new cluster (if any): %s",
                      len(leaving), exc)
        else:
            unsaved = [m for m in leaving if self.processor.models[m].dirty]
            if unsaved:  # the cluster could not be confirmed: checkpoint wrote nothing
                log.error("no snapshot of %d models after the cluster change; they restart "
                          "from their last snapshot on the new cluster (if any)", len(unsaved))
        self._drop_states(leaving)

    def _abandon_consumer(self) -> None:
        """Drop the group consumer without leaving the group: no LeaveGroup, no revoke.

        Once the broker at our address is a new cluster, the old consumer reconnects and
        joins the group there on its own. Closing it then sends a LeaveGroup, and when
        that arrives while its join is still forming, Tansu 0.6.0 removes the member but
        keeps it as the group's leader: every later member waits for that leader's
        assignment and the group never forms again (measured: no assignment in minutes).
        Dropped unclosed, confluent-kafka destroys the client without a consumer close
        (RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE); a membership it picked up is still a
        member, so it expires after ``session.timeout.ms`` on Tansu and Kafka alike, and
        the group forms with the new consumer after that.
        """
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        if sys.getrefcount(consumer) > 2:  # more than this name and the call's argument
            gc.collect()  # e.g. a logged exception whose traceback holds a callback frame
        if sys.getrefcount(consumer) > 2:
            log.warning("the abandoned consumer is still referenced; it stays a group "
                        "member until it is collected")
        del consumer

    def _shutdown(self) -> None:
        self._drop_inflight()  # not applied: the next owner reads it from the committed offset
        if self._decoder is not None:
            self._decoder.close()
        try:
            self.checkpoint()
        except (KafkaException, DriftlineError, ClusterChanged) as exc:
            log.error("final checkpoint failed: %s", exc)
        if self._consumer is not None:
            self._consumer.close()
        if self._refs is not None:
            self._refs.close()
        if self._changes is not None:
            self._changes.close()
        self._producer.flush(10)
        self._reference_records.close()
        self._ready.clear()

    # -- the batch ---------------------------------------------------------------------
    def _split(self, msgs: list[Message]) -> tuple[list[Message], list[Message]]:
        """A batch's inference messages and label messages."""
        if self.settings.label_join == "off":
            return msgs, []
        lt = self.settings.labels_topic
        labels = [m for m in msgs if m.topic() == lt]
        return ([m for m in msgs if m.topic() != lt] if labels else msgs), labels

    def _handle(self, msgs: list[Message], pre: _Inference | None = None) -> None:
        """Apply a batch; ``pre``: its inference lists, already sent to be decoded."""
        inference, labels = self._split(msgs)
        self._handle_inference(inference, pre)
        if labels:
            self._handle_labels(labels)

    def _handle_labels(self, msgs: list[Message]) -> None:
        """Labels: joined in the model states; concept alerts and dead letters out."""
        topic = self.settings.labels_topic
        values: list[bytes] = []
        parts: list[int] = []
        offs: list[int] = []
        stamps: list[float] = []
        for m in msgs:
            if m.error() is not None:
                continue
            ts_type, ts_ms = m.timestamp()
            values.append(m.value() or b"")
            parts.append(m.partition())
            offs.append(m.offset())
            stamps.append(ts_ms / 1000.0 if ts_type else math.nan)
        if not values:
            return
        for p, o in zip(parts, offs, strict=True):
            self._positions[(topic, p)] = max(self._positions.get((topic, p), 0), o + 1)
        out = self.processor.process_labels(topic, values, parts, offs, stamps)
        self._emit(out.alerts, out.dead_letters)
        self.stats.labels += out.labels_applied
        self.stats.skipped_replays += out.skipped_replays

    def _handle_inference(self, msgs: list[Message], pre: _Inference | None = None) -> None:
        t0 = time.perf_counter()
        inf = pre if pre is not None else self._inference_lists(msgs)
        if not inf.values:
            return
        topic = self.settings.inference_topic
        for p, o in inf.last.items():
            self._positions[(topic, p)] = max(self._positions.get((topic, p), 0), o + 1)
        decoded = None
        if self._decoder is not None and inf.ticket is not None:
            decoded = self._decoder.result(inf.ticket)  # None: lost, decoded here instead
            self._count_decoder()
        if decoded is None:
            out = self.processor.process_columns(topic, inf.values, inf.parts, inf.offs,
                                                 inf.stamps)
        else:
            out = self.processor.process_decoded(topic, decoded, inf.values, inf.parts,
                                                 inf.offs)
        nbytes = {k.decode("utf-8", "replace"): n for k, n in inf.kbytes.items()}
        tracked = {st.model for st in self.processor.models.values()}
        for model, n in nbytes.items():
            if model in tracked:
                self.metrics.bytes.labels(model).inc(n)
        for ref in out.references:
            self._publish_reference(ref)
        self._emit(out.alerts, out.dead_letters, out.changes)
        self.stats.consumed += len(inf.values)
        self.stats.applied += out.applied
        self.stats.skipped_replays += out.skipped_replays
        self.metrics.batch_size.observe(len(inf.values))
        self.metrics.batch_duration.observe(time.perf_counter() - t0)

    def _count_decoder(self) -> None:
        d = self._decoder
        assert d is not None
        cpu, restarts = d.cpu_seconds, d.restarts
        if cpu > self._decoder_seen[0]:
            self.metrics.decode_cpu.inc(cpu - self._decoder_seen[0])
        if restarts > self._decoder_seen[1]:
            self.metrics.decode_restarts.inc(restarts - self._decoder_seen[1])
        self._decoder_seen = (cpu, restarts)

    def _inference_lists(self, msgs: list[Message]) -> _Inference:
        values: list[bytes] = []
        parts: list[int] = []
        offs: list[int] = []
        stamps: list[float] = []
        last: dict[int, int] = {}
        kbytes: dict[bytes, int] = {}
        nan = math.nan
        for m in msgs:
            if m.error() is not None:
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume: %s", m.error())
                continue
            v = m.value() or b""
            p, o = m.partition(), m.offset()
            ts_type, ts_ms = m.timestamp()
            values.append(v)
            parts.append(p)
            offs.append(o)
            stamps.append(ts_ms / 1000.0 if ts_type else nan)
            last[p] = o
            k = m.key()
            if k is not None:
                kbytes[k] = kbytes.get(k, 0) + len(v)
        return _Inference(values, parts, offs, stamps, last, kbytes)

    def _emit(self, alerts: list[DriftAlert], dead: list[Rejection],
              changes: list[ChangeEvent] | None = None) -> None:
        """Produce changes, alerts and dead letters and wait until the broker has them."""
        if not alerts and not dead and not changes:
            return
        s = self.settings
        for c in changes or ():
            self._producer.produce(s.changes_topic, c.encode(), key=c.model.encode(),
                                   on_delivery=self._on_delivery)
        for a in alerts:
            self._producer.produce(s.alerts_topic, encode_alert(a), key=a.model.encode(),
                                   on_delivery=self._on_delivery)
            self.stats.alerts += 1
            self.stats.last_alert = a
            if self.on_alert is not None:
                self.on_alert(a)
            log.warning("alert %s %s model=%s kind=%s feature=%s %s=%.3g threshold=%.3g id=%s",
                        a.kind, a.state, a.model, a.kind, a.feature, a.statistic, a.score,
                        a.threshold, a.alert_id)
        now = time.time()
        for d in dead:
            self._producer.produce(s.deadletter_topic, encode_dead_letter(d, now),
                                   key=d.model.encode() if d.model else None,
                                   on_delivery=self._on_delivery)
            self.stats.dead_letters += 1
        self._flush_acknowledged()

    def _flush_acknowledged(self) -> None:
        """Wait until the broker has acknowledged everything produced; raise
        :class:`KafkaException` when a delivery failed or (stopping) is still open.

        A reference that could not be published is logged, not raised: the model keeps
        using it, and reading the batch again would only build and fail to publish it
        again."""
        while True:
            remaining = self._producer.flush(5.0)
            if remaining == 0:
                break
            log.warning("waiting for the broker to acknowledge %d messages", remaining)
            if self._stop.is_set():
                raise KafkaException(f"stopping with {remaining} messages unacknowledged")
            cid = self._new_cluster_id()
            if cid is not None:
                raise ClusterChanged(cid)
        if self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            if any(topic == self.settings.state_topic for topic, _ in errors):
                # maybe a chunk record written between checkpoints: no snapshot may name
                # one, so every model's go out again (a worker goes on after this error)
                self._rewrite_all_chunks()
            refs = self.settings.references_topic
            for topic, err in errors:
                if topic == refs:
                    log.error("reference not published on %s: %s", topic, err)
            failed = [f"{topic}: {err}" for topic, err in errors if topic != refs]
            if failed:
                raise KafkaException(f"delivery failed: {failed[:3]}")

    def _drop_states(self, leaving: list[str]) -> None:
        """Drop the states of models that leave this worker, once every record produced
        is acknowledged or failed (until stopping), however their checkpoint ended: a
        label-join chunk record written between checkpoints and still in flight could
        land after the next owner of the model wrote a record of the same name (failures
        are raised by the next wait, which has every store's chunks written again)."""
        while (remaining := self._producer.flush(5.0)) and not self._stop.is_set():
            log.warning("waiting for the broker to settle %d messages before dropping "
                        "models", remaining)
        self.processor.drop(leaving)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append((str(msg.topic()), str(err)))

    # -- state -------------------------------------------------------------------------
    def _write_sealed_chunks(self) -> None:
        """Write the label-join chunks sealed since the last checkpoint now, without
        waiting: the checkpoint waits for their acknowledgements before the snapshots
        naming them, and finds most of them done (rather than ~100 MB to write and wait
        for at once when every model keeps 100,000 predictions). Not while the cluster
        is in doubt: nothing of a model's state goes to a cluster that may be another."""
        if self._watch.suspect.is_set():
            return
        topic = self.settings.state_topic
        for st in self.processor.models.values():
            try:
                for k, b in st.sealed_chunk_records(key=self._key).items():
                    self._producer.produce(topic, b, key=k.encode(),
                                           on_delivery=self._on_delivery)
                    self._snapshots[k] = b
                    self.metrics.snapshot_bytes.labels(st.model).inc(len(b))
            except BaseException:  # noted as written but maybe not produced: all again
                self._rewrite_all_chunks()
                raise

    def _rewrite_all_chunks(self) -> None:
        """Every model's label-join chunks go out again, under new names, with its next
        snapshot (a chunk record's write failed or may not have happened: which model's
        is not known here)."""
        for st in self.processor.models.values():
            if st.joins is not None:
                st.dirty = True
                st.joins.rewrite_chunks()

    def checkpoint(self, models: list[str] | None = None) -> None:
        """Snapshot dirty models (acknowledged), then commit the consumed offsets."""
        s = self.settings
        started = time.perf_counter()
        names = models if models is not None else [
            m for m, st in self.processor.models.items() if st.dirty]
        positions = dict(self._positions)
        if self._watch.suspect.is_set() and not self._confirm_cluster():
            # a client met another cluster and the broker cannot confirm ours: snapshots
            # and commits hold the old cluster's offsets, so they wait (models stay dirty)
            return
        if names:  # a snapshot holds one cluster's source offsets: never write it to another
            cid = self._new_cluster_id()
            if cid is not None:
                raise ClusterChanged(cid)
        touched: list[ModelState] = []
        written: list[tuple[str, ModelState, SnapshotRecords]] = []
        try:
            for m in names:
                if (st := self.processor.models.get(m)) is None:
                    continue
                touched.append(st)
                written.append((m, st, st.snapshot_records(key=self._key)))
            for _, _, recs in written:  # label-join chunk records
                for k, b in recs.chunks.items():
                    self._producer.produce(s.state_topic, b, key=k.encode(),
                                           on_delivery=self._on_delivery)
                    self._snapshots[k] = b
            if written:  # these and the ones written since the last checkpoint (which the
                # snapshots name too): acknowledged before the snapshots naming them
                self._flush_acknowledged()
            for m, st, recs in written:
                self._producer.produce(s.state_topic, recs.snapshot, key=m.encode(),
                                       on_delivery=self._on_delivery)
                self._producer.produce(s.status_topic, orjson.dumps(self.status_of(st)),
                                       key=m.encode(), on_delivery=self._on_delivery)
                self.metrics.snapshot_bytes.labels(st.model).inc(
                    len(recs.snapshot) + sum(map(len, recs.chunks.values())))
                self._snapshots[m] = recs.snapshot
                st.dirty = False
                self.stats.snapshots += 1
            if written:
                self._flush_acknowledged()
        except BaseException:
            # not known to be on the state topic: written again at the next checkpoint,
            # with every label-join chunk again (under new names; chunks written between
            # checkpoints may be any model's)
            for st in touched:
                st.dirty = True
            self._rewrite_all_chunks()
            raise
        for _, st, recs in written:  # chunk records no acknowledged snapshot names any more
            for i, k in enumerate(recs.dropped):
                try:
                    self._producer.produce(s.state_topic, None, key=k.encode(),
                                           on_delivery=self._on_delivery)
                except BaseException:  # the rest are deleted with the next snapshot
                    if st.joins is not None:
                        cut = len(join_record_key(st.key, ""))
                        st.joins.drop_chunks([d[cut:] for d in recs.dropped[i:]])
                    raise
                self._snapshots.pop(k, None)
        self._last_snapshot = time.monotonic()
        cid = self._new_cluster_id()  # never commit positions of one cluster into another
        if cid is not None:
            raise ClusterChanged(cid)
        if self._consumer is not None and positions:
            offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()
                       if p in (self._assigned_labels if t == s.labels_topic else self._assigned)
                       or t not in (s.inference_topic, s.labels_topic)]
            if offsets:
                try:
                    self._consumer.commit(offsets=offsets, asynchronous=False)
                    self.stats.commits += 1
                except KafkaException as exc:
                    log.warning("commit failed (will retry at the next checkpoint): %s", exc)
        self.metrics.checkpoint_duration.observe(time.perf_counter() - started)

    def _state_keys(self, prefix: str) -> list[str]:
        """Keys of the state records read or written, with this prefix."""
        return [k for k in self._snapshots if k.startswith(prefix)]

    def status_of(self, st: ModelState) -> dict[str, Any]:
        return {
            "model": st.model,
            "partition": st.partition,
            "events_applied": st.events_applied,
            "events_deadlettered": st.events_deadlettered,
            "events_late": st.events_late,
            "offsets": st.offsets,
            "reference": st.reference.reference_id if st.reference else None,
            "alerts_firing": st.alerts_firing,
            "alerts_fired": st.alerts_fired,
            "owner": self.owner,
            "updated_at": time.time(),
            "unattributed": st.model.startswith(UNATTRIBUTED),
            **({"shadow": st.shadow.summary(), "shadow_ignored": st.shadow.ignored}
               if st.shadow is not None else {}),
            **({"labels": label_status(st)} if st.joins is not None else {}),
        }

    # -- rebalancing -------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        del consumer  # unused; a frame kept by a logged traceback must not keep it alive
        mine = {tp.partition for tp in partitions if tp.topic == self.settings.inference_topic}
        self._assigned |= mine
        self._assigned_labels |= {tp.partition for tp in partitions
                                  if tp.topic == self.settings.labels_topic}
        self._rejoin_by = None  # the join completed (an empty assignment is one too)
        if not self._read_snapshots():
            # stopping before the snapshots could be read: apply and commit nothing of
            # these partitions (their next owner restores them)
            self._assigned -= mine
            self._assigned_labels -= {tp.partition for tp in partitions
                                      if tp.topic == self.settings.labels_topic}
            self._unread = True
            return
        log.info("assigned partitions %s (%d model snapshots known)", sorted(mine),
                 len(self._snapshots))

    def _read_snapshots(self) -> bool:
        """Read every model snapshot on the state topic to its end, retrying until it
        succeeds (False only when the worker stops first).

        Never carry on with the snapshots read at an earlier assignment: a model restored
        from an older snapshot of a partition another worker has processed since, while
        the consumer starts at that worker's newer committed offset, would silently miss
        the events between the two.
        """
        delay = 1.0
        while True:
            try:
                blobs = read_compacted(self._base, self.settings.state_topic, timeout=60)
            except (KafkaException, TimeoutError, UnknownTopicError) as exc:
                if self._stop.is_set():
                    log.error("stopping before the model snapshots could be read: %s", exc)
                    return False
                log.error("could not read model snapshots (retrying in %.0f s): %s",
                          delay, exc)
                self._stop.wait(delay)
                delay = min(2 * delay, 30.0)
                continue
            self._snapshots = {k.decode(): v for k, v in blobs.items()}
            self.processor.snapshot_loader = self._snapshots.get
            return True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        del consumer  # as in _on_assign
        gone = {tp.partition for tp in partitions if tp.topic == self.settings.inference_topic}
        topic = self.settings.inference_topic
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._rewind([m for m in self._drop_inflight()
                      if (m.topic(), m.partition()) not in revoked])
        leaving = [k for k, st in self.processor.models.items() if st.partition in gone]
        try:
            self.checkpoint()
        except KafkaException as exc:
            log.error("checkpoint on revoke failed: %s", exc)
        except ClusterChanged as change:  # handled after this callback returns
            self._pending_cluster = change.cluster_id
            return
        self._drop_states(leaving)
        for p in gone:
            self._positions.pop((topic, p), None)
        self._assigned -= gone
        for tp in partitions:
            if tp.topic == self.settings.labels_topic:
                self._positions.pop((tp.topic, tp.partition), None)
                self._assigned_labels.discard(tp.partition)
            self.metrics.forget_lag(tp.topic, tp.partition)
        log.info("revoked partitions %s; dropped %d models", sorted(gone), len(leaving))

    # -- references --------------------------------------------------------------------
    def _start_references(self) -> None:
        s = self.settings
        self._refs = Consumer({
            **self._base, "group.id": f"driftline-refs-{self.owner}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 10})
        self._refs.assign([TopicPartition(s.references_topic, 0, -2)])
        deadline = time.monotonic() + 30
        self._refs_eof = False
        while not self._refs_eof and time.monotonic() < deadline:
            self._poll_references(0.5)

    def _poll_references(self, timeout: float) -> None:
        if self._refs is None:
            return
        for m in self._refs.consume(num_messages=100, timeout=timeout):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._refs_eof = True
                continue
            record = m.value()
            if record is None:
                self._config_records.pop(m.key() or b"", None)  # a deleted configuration
                continue
            try:
                value = verify_record(record, self._key)
            except DriftlineError as exc:
                log.error("ignoring unverifiable record at offset %d: %s", m.offset(), exc)
                continue
            try:
                entry = decode_record(value)
            except ModelConfigError as exc:
                log.error("ignoring model config at offset %d: %s", m.offset(), exc)
                continue
            if entry is not None:
                self._config_records[m.key() or b""] = record
                if self.processor.set_model_entry(*entry):
                    log.info("model %s: configuration from the references topic", entry[0])
                continue
            try:
                profile = ReferenceProfile.from_json(value)
            except DriftlineError as exc:
                log.error("ignoring invalid reference at offset %d: %s", m.offset(), exc)
                continue
            if self.processor.set_reference(profile):
                self._keep_record(profile.model, profile.reference_id, record, m.key())
                log.info("reference %s for model %s (source %s)", profile.reference_id,
                         profile.model, profile.source)

    # -- upstream changes --------------------------------------------------------------
    def _start_changes(self) -> None:
        """Read the changes topic from the beginning (every partition, no group)."""
        s = self.settings
        self._changes = Consumer({
            **self._base, "group.id": f"driftline-changes-{self.owner}",
            "enable.auto.commit": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest", "fetch.queue.backoff.ms": 10})
        n = partition_count(self._base, s.changes_topic) or 1
        self._changes.assign([TopicPartition(s.changes_topic, p, -2) for p in range(n)])
        self._changes_eof: set[int] = set()
        deadline = time.monotonic() + 30
        while len(self._changes_eof) < n and time.monotonic() < deadline:
            self._poll_changes(0.5, live=False)
        log.info("read %d recent upstream changes", len(self.processor.changes))

    def _poll_changes(self, timeout: float, live: bool = True) -> None:
        if self._changes is None:
            return
        for m in self._changes.consume(num_messages=500, timeout=timeout):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._changes_eof.add(m.partition())
                continue
            value = m.value()
            if value is None:
                continue
            try:
                change = ChangeEvent.decode(value)
            except ValueError as exc:
                # counted, logged at most once a minute (a flood must not flood the log);
                # every worker reads this topic, so none of them dead-letters it
                self.metrics.change_events_invalid.inc()
                if self._invalid_change_log.ready():
                    log.warning("ignoring invalid change event at %s:%d:%d: %s (further ones "
                                "for 60 s are only counted)", m.topic(), m.partition(),
                                m.offset(), exc)
                continue
            self.processor.changes.add(change, live=live)

    def _publish_reference(self, ref: ReferenceProfile) -> None:
        """A reference the processor built (a full profile) onto the references topic."""
        value = ref.to_json() if self._key is None else sign_record(ref.to_json(), self._key)
        key = ref.model.encode()
        self._keep_record(ref.model, ref.reference_id, value, key)
        self._producer.produce(self.settings.references_topic, value, key=key,
                               on_delivery=self._on_delivery)

    def _keep_record(self, model: str, reference_id: str, value: bytes,
                     key: bytes | None) -> None:
        """A reference's record, kept (on disk) for a re-publish after a cluster loss."""
        self._reference_records.put(model, reference_id, value, key)
        self.metrics.reference_records_in_memory.set(self._reference_records.in_memory)

    # -- callbacks ---------------------------------------------------------------------
    def _on_stats(self, raw: str) -> None:
        try:
            stats = orjson.loads(raw)
            s = self.settings
            for tname, t in stats.get("topics", {}).items():
                mine = self._assigned if tname == s.inference_topic else \
                    self._assigned_labels if tname == s.labels_topic else set()
                for pid, p in t.get("partitions", {}).items():
                    if int(pid) < 0 or int(pid) not in mine:  # (revoked: its series is gone)
                        continue
                    lag = p.get("consumer_lag", -1)
                    if lag is not None and lag >= 0:
                        self.metrics.consumer_lag.labels(tname, pid).set(lag)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka: %s", err)
