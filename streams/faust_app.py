"""The Faust runtime: driftline's agents inside a Faust app (an alternative to the default worker).

For teams that already run Faust. The same transport-free :class:`Processor` does the
work; Faust supplies the consumer group, the batches and the state table.

- ``create_app(settings)`` builds a ``faust.App`` from the settings (broker, security,
  topics); :class:`FaustRuntime` installs driftline into a new or an existing app.
- The inference agent consumes raw values in batches (``stream.take_events``) and hands
  each whole batch to :meth:`Processor.process_columns`.
- Per-model state snapshots live in a Faust table (``driftline-state``, memory store,
  raw bytes: never pickled) whose changelog partition is the source partition of the
  state, so Faust's recovery restores exactly the states of the partitions a worker is
  assigned; the processor's ``snapshot_loader`` reads the table.

Order per checkpoint (at-least-once, exactly-once effect on the windows): apply ->
alerts and dead letters acknowledged -> snapshots acknowledged (one changelog write at a
time, see below) -> status records acknowledged -> only then the events are acked, and
Faust commits only acked offsets. Each event is held (an extra reference on its message)
from the moment the agent takes it until a checkpoint covers it, so nothing is committed
that the table does not cover, whether the agent finishes, fails or is stopped.

Tansu (the embedded broker) answers ListOffsets with the start of the last record batch
+ 1, and Faust's table recovery stops at that offset. Every changelog write here is
awaited before the next is sent, so each is a batch of its own and the high watermark
Faust reads is right.

References come from the compacted references topic, read by every worker (a Faust agent
would give its single partition to one member of the group only): read to the end before
the first batch, then polled for ``driftline reference set`` updates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition
from faust.types import TP
from faust.types.auth import CredentialsT
from prometheus_client import CollectorRegistry

from driftline.detectors.errors import DriftlineError
from driftline.detectors.reference import ReferenceProfile
from driftline.schemas.codecs import encode_alert, encode_dead_letter
from driftline.schemas.models import DriftAlert, Rejection
from driftline.streams.admin import TopicSpec, ensure_topics
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_state import ModelState
from driftline.streams.processor import UNATTRIBUTED, Processor
from driftline.streams.settings import Settings
from driftline.streams.throttle import ThrottledLog
from driftline.streams.worker import topic_specs

log = logging.getLogger("driftline.faust")

#: Name of the state table; its changelog topic is ``<group_id>-driftline-state-changelog``.
STATE_TABLE = "driftline-state"


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """Faust (aiokafka) credentials for the Kafka security settings, or None (PLAINTEXT)."""
    proto = (settings.security_protocol or "PLAINTEXT").upper()
    if proto == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if proto in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
        if settings.ssl_certfile:
            pw = settings.ssl_key_password
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile,
                                    pw.get_secret_value() if pw else None)
    if proto == "SSL":
        return faust.SSLCredentials(context)
    mech = (settings.sasl_mechanism or "PLAIN").upper()
    if mech == "OAUTHBEARER":
        raise ValueError("the Faust runtime does not support SASL OAUTHBEARER (aiokafka needs a "
                         "token provider object); use the default worker (--runtime kafka)")
    pw = settings.sasl_password
    return faust.SASLCredentials(username=settings.sasl_username,
                                 password=pw.get_secret_value() if pw else None,
                                 ssl_context=context, mechanism=mech)


def changelog_topic(settings: Settings, app_id: str | None = None) -> str:
    """The state table's changelog topic (Faust names it after the app id)."""
    return f"{app_id or settings.group_id}-{STATE_TABLE}-changelog"


def faust_topic_specs(settings: Settings, app_id: str | None = None) -> list[TopicSpec]:
    """Every topic of the Faust runtime: driftline's topics and the table's changelog
    (compacted, as many partitions as the inference topic: Faust requires it)."""
    return [*topic_specs(settings),
            TopicSpec(changelog_topic(settings, app_id), settings.partitions, compact=True,
                      replication_factor=settings.replication_factor)]


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> faust.App:
    """A Faust app running driftline (its runtime is ``app.driftline``)."""
    return FaustRuntime(settings, registry or CollectorRegistry()).app


def _new_app(settings: Settings, datadir: Path) -> faust.App:
    s = settings
    web: dict[str, Any] = ({"web_enabled": True, "web_port": s.faust_web_port,
                            "web_host": s.metrics_host} if s.faust_web_port is not None
                           else {"web_enabled": False})
    return faust.App(
        s.group_id,
        broker=[f"kafka://{h.strip()}" for h in s.bootstrap_servers.split(",") if h.strip()],
        broker_credentials=broker_credentials(s),
        broker_client_id=s.client_id,
        store="memory://",
        datadir=datadir,  # Faust makes it at start even with memory:// tables
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        topic_allow_declare=False,  # topics are created up front with their partition counts
        topic_disable_leader=True,
        broker_session_timeout=6.0,  # Tansu completes a join only after session timeout / 2
        broker_heartbeat_interval=1.0,
        broker_max_poll_records=s.batch_max_messages,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=16_777_216,
        **web,
    )


@dataclass
class FaustStats:
    """Counts since the runtime started."""

    consumed: int = 0
    batches: int = 0
    applied: int = 0
    alerts: int = 0
    dead_letters: int = 0
    skipped_replays: int = 0
    snapshots: int = 0
    checkpoints: int = 0
    started: float = field(default_factory=time.time)


class FaustRuntime:
    """driftline's table, agents and timers installed into a Faust app."""

    def __init__(self, settings: Settings, registry: CollectorRegistry, *,
                 app: faust.App | None = None, owner: str | None = None) -> None:
        s = self.settings = settings
        self.metrics = WorkerMetrics(registry)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.stats = FaustStats()
        # Faust's data directory: private, under DRIFTLINE_DATA_DIR, removed at the end
        # of serve() (its default is "<group id>-data" in the current directory)
        self._datadir: Path | None = None
        if app is None:
            self._datadir = Path(tempfile.mkdtemp(prefix="driftline-faust-",
                                                  dir=s.data_dir or None))
            app = _new_app(settings, self._datadir)
        self.app = app
        self.app.driftline = self  # type: ignore[attr-defined]
        self._key = settings.signing_key()
        # keys and values are raw bytes (never pickle); bytes types make the table's
        # changelog raw too (a schema object would be shared and mutated by Faust)
        self.table = self.app.Table(STATE_TABLE, partitions=s.partitions, key_type=bytes,
                                    value_type=bytes, help="driftline model state snapshots")
        self.processor = Processor(
            config=s.monitor_config(), limits=s.limits(), metrics=self.metrics,
            auto_reference_events=s.auto_reference_events, reference_bins=s.reference_bins,
            max_models=s.max_models, snapshot_loader=self._load_snapshot, snapshot_key=self._key,
            model_configs=s.model_configs(), shadow=s.shadow_config(),
            max_future_s=s.max_future_s)
        self.inference = self._raw_topic(s.inference_topic, partitions=s.partitions)
        self._alerts = self._raw_topic(s.alerts_topic)
        self._dead = self._raw_topic(s.deadletter_topic)
        self._status = self._raw_topic(s.status_topic)
        self._refs_out = self._raw_topic(s.references_topic)
        self._held: list[Any] = []  # events taken, not yet covered by a checkpoint
        self._lock: asyncio.Lock | None = None
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stop_requested = False
        self._last_checkpoint = time.monotonic()
        self._refs: Consumer | None = None
        self.ready = threading.Event()
        self.app.agent(self.inference, name="driftline-inference", concurrency=1)(self._agent)
        self.app.timer(min(max(s.snapshot_interval_s, 0.1), 1.0))(self._on_timer)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_rebalance_complete.connect(self._on_rebalance_complete)

    # -- topics and state --------------------------------------------------------------
    def _raw_topic(self, name: str, **kw: Any) -> Any:
        return self.app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", allow_empty=True, **kw)

    def ensure_topics(self) -> list[str]:
        """Create missing topics (before the app starts: Faust does not declare them)."""
        return ensure_topics(self.settings.kafka(),
                             faust_topic_specs(self.settings, self.app.conf.id))

    def _load_snapshot(self, key: str) -> bytes | None:
        blob = self.table.data.get(key.encode())
        return bytes(blob) if blob is not None else None

    # -- the agent ---------------------------------------------------------------------
    def _sync(self) -> asyncio.Lock:
        """The lock between the agent, the timer and shutdown (made on the app's loop)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _agent(self, stream: Any) -> None:
        lock = self._sync()
        await self._start_references()
        s = self.settings
        async for events in stream.take_events(s.batch_max_messages, within=s.batch_timeout_s):
            for ev in events:  # held until a checkpoint covers it (take_events acks on resume)
                ev.message.incref()
            async with lock:
                self._held.extend(events)
                await self._handle(events)
                # after the final checkpoint (stopping) at once: Faust's stop waits until
                # every event taken is acked, and no timer checkpoints any more
                if self._stopping or (time.monotonic() - self._last_checkpoint
                                      >= s.snapshot_interval_s):
                    await self._checkpoint()

    async def _handle(self, events: list[Any]) -> None:
        t0 = time.perf_counter()
        values: list[bytes] = []
        parts: list[int] = []
        offs: list[int] = []
        stamps: list[float] = []
        last: dict[int, int] = {}
        kbytes: dict[bytes, int] = {}
        for ev in events:
            m = ev.message
            v = m.value or b""
            values.append(v)
            parts.append(m.partition)
            offs.append(m.offset)
            stamps.append(m.timestamp if m.timestamp else math.nan)
            last[m.partition] = m.offset
            if m.key is not None:
                kbytes[m.key] = kbytes.get(m.key, 0) + len(v)
        topic = self.settings.inference_topic
        out = self.processor.process_columns(topic, values, parts, offs, stamps)
        tracked = {st.model for st in self.processor.models.values()}
        for k, n in kbytes.items():
            model = k.decode("utf-8", "replace")
            if model in tracked:
                self.metrics.bytes.labels(model).inc(n)
        for ref in out.references:
            await (await self._refs_out.send(key=ref.model.encode(), value=ref.to_json()))
        await self._emit(out.alerts, out.dead_letters)
        self._observe_lag(topic, last)
        self.stats.consumed += len(values)
        self.stats.batches += 1
        self.stats.applied += out.applied
        self.stats.skipped_replays += out.skipped_replays
        self.metrics.batch_size.observe(len(values))
        self.metrics.batch_duration.observe(time.perf_counter() - t0)

    def _observe_lag(self, topic: str, last: dict[int, int]) -> None:
        """Lag from the fetch high watermark (the right one on Tansu, unlike ListOffsets)."""
        for p, o in last.items():
            try:
                hw = self.app.consumer.highwater(TP(topic, p))
            except Exception:  # consumer not ready or partition moved: no sample this time
                hw = None
            if hw is not None and hw >= 0:
                self.metrics.consumer_lag.labels(topic, str(p)).set(max(hw - o - 1, 0))

    async def _emit(self, alerts: list[DriftAlert], dead: list[Rejection]) -> None:
        """Send alerts and dead letters and wait until the broker has them."""
        futs = []
        for a in alerts:
            futs.append(await self._alerts.send(key=a.model.encode(), value=encode_alert(a)))
            log.warning("alert %s %s model=%s feature=%s %s=%.3g threshold=%.3g id=%s",
                        a.kind, a.state, a.model, a.feature, a.statistic, a.score, a.threshold,
                        a.alert_id)
        now = time.time()
        for d in dead:
            futs.append(await self._dead.send(key=d.model.encode() if d.model else None,
                                              value=encode_dead_letter(d, now)))
        if futs:
            await asyncio.gather(*futs)
        self.stats.alerts += len(alerts)
        self.stats.dead_letters += len(dead)

    # -- checkpoints -------------------------------------------------------------------
    async def _checkpoint(self) -> None:
        """Snapshot dirty states into the table (acknowledged), then ack the held events."""
        held, self._held = self._held, []
        dirty = [st for st in self.processor.models.values() if st.dirty]
        changelog = self.table.changelog_topic
        for st in dirty:
            blob = st.snapshot(key=self._key)
            key = st.key.encode()
            # one write at a time: each is a record batch of its own (see module doc)
            await (await changelog.send(key=key, value=blob, partition=st.partition))
            self.table.data[key] = blob
            st.dirty = False
            self.stats.snapshots += 1
            self.metrics.snapshot_bytes.labels(st.model).inc(len(blob))
        futs = [await self._status.send(key=st.key.encode(), value=orjson.dumps(self.status_of(st)))
                for st in dirty]
        if futs:
            await asyncio.gather(*futs)
        for ev in held:
            ev.ack()
        self._last_checkpoint = time.monotonic()
        self.stats.checkpoints += 1

    def status_of(self, st: ModelState) -> dict[str, Any]:
        """The status record of a state (the same fields as the default worker writes)."""
        return {
            "model": st.model, "partition": st.partition,
            "events_applied": st.events_applied, "events_deadlettered": st.events_deadlettered,
            "events_late": st.events_late, "offsets": st.offsets,
            "reference": st.reference.reference_id if st.reference else None,
            "alerts_firing": st.alerts_firing, "alerts_fired": st.alerts_fired,
            "owner": self.owner, "updated_at": time.time(),
            "unattributed": st.model.startswith(UNATTRIBUTED), "runtime": "faust",
        }  # fmt: skip

    async def _on_timer(self) -> None:
        """Checkpoint when due (acks what the agent holds), idle timeouts, references."""
        if self._lock is None:
            return
        async with self._lock:
            if self._stopping:
                return
            self._poll_references(0)
            alerts = self.processor.tick(time.time(), self.settings.idle_timeout_s)
            if alerts:
                await self._emit(alerts, [])
            if (self._held or alerts) and (time.monotonic() - self._last_checkpoint
                                           >= self.settings.snapshot_interval_s):
                await self._checkpoint()

    async def _on_revoked(self, app: Any, revoked: set[TP], **kwargs: Any) -> None:
        """Forget the states of revoked partitions (the new owner restores them from the
        table). Faust waits for the held events to be acked (a checkpoint) before this."""
        for tp in revoked:  # the new owner reports their lag
            self.metrics.forget_lag(tp.topic, tp.partition)
        gone = {tp.partition for tp in revoked if tp.topic == self.settings.inference_topic}
        if not gone:
            return
        leaving = [k for k, st in self.processor.models.items() if st.partition in gone]
        self.processor.drop(leaving)
        log.info("revoked partitions %s; dropped %d model states", sorted(gone), len(leaving))

    async def _on_rebalance_complete(self, app: Any, **kwargs: Any) -> None:
        """Stop the consumer's flow until the recovery has sought the stream partitions.

        Works around faust-streaming/faust#596. When a table recovery ends, Faust resumes
        the stream partitions while its fetcher runs, seeks them to the committed offsets,
        then resumes flow control, which empties the stream queues. A record delivered
        to a queue in that window is dropped there but counts as read, so the fetch after
        the seek skips it: the event is never applied and its offset is committed (seen
        after a restart: one record of a partition missing). This signal comes just
        before that resume; with the flow stopped nothing is delivered until the
        recovery resumes it after the seek, and every record from the committed offset on
        is fetched again (replays of applied ones are skipped by the processor).
        """
        self.app.consumer.stop_flow()

    # -- references --------------------------------------------------------------------
    async def _start_references(self) -> None:
        """Read the references topic to its end before the first batch (every worker)."""
        if self._refs is not None:
            return
        loop = asyncio.get_running_loop()
        self._refs = await loop.run_in_executor(None, self._read_references)
        self.ready.set()

    def _read_references(self) -> Consumer:
        s = self.settings
        refs = Consumer({
            **s.kafka(), "group.id": f"driftline-refs-{self.owner}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 10,
            "logger": ThrottledLog(logging.getLogger("driftline.kafka"))})
        refs.assign([TopicPartition(s.references_topic, 0, -2)])
        deadline = time.monotonic() + 30
        while not self._poll_references(0.5, refs) and time.monotonic() < deadline:
            pass
        return refs

    def _poll_references(self, timeout: float, refs: Consumer | None = None) -> bool:
        """Apply new references; True once the end of the topic was seen in this poll."""
        refs = refs or self._refs
        if refs is None:
            return False
        eof = False
        for m in refs.consume(num_messages=100, timeout=timeout):
            err = m.error()
            if err is not None:
                eof = eof or err.code() == KafkaError._PARTITION_EOF
                continue
            value = m.value()
            if value is None:
                continue
            try:
                profile = ReferenceProfile.from_json(value)
            except DriftlineError as exc:
                log.error("ignoring invalid reference at offset %d: %s", m.offset(), exc)
                continue
            if self.processor.set_reference(profile):
                log.info("reference %s for model %s (source %s)", profile.reference_id,
                         profile.model, profile.source)
        return eof

    # -- lifecycle ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop serving (thread-safe); :meth:`serve` checkpoints and stops the app."""
        self._stop_requested = True
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)

    async def serve(self, duration: float | None = None, *, signals: bool = True) -> FaustStats:
        """Run the app until :meth:`request_stop`, SIGTERM/SIGINT (``signals``, main thread
        only) or ``duration`` seconds; then a final checkpoint and a clean stop."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        lock = self._sync()
        if signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop_event.set)
        if self._stop_requested:  # asked to stop before the loop ran
            self._stop_event.set()
        try:
            await self.app.start()
            try:
                await asyncio.wait_for(self._stop_event.wait(), duration)
            except TimeoutError:
                pass
        finally:
            log.info("stopping: final checkpoint")
            async with lock:
                self._stopping = True
                try:
                    await asyncio.wait_for(self._checkpoint(), 30)
                    # commit what the checkpoint acked (Faust's stop path may not)
                    await asyncio.wait_for(self.app.consumer.commit(), 10)
                except Exception as exc:  # the next owner replays what was not covered
                    log.error("final checkpoint failed: %s", exc)
            await self.app.stop()
            if self._refs is not None:
                self._refs.close()
            if self._datadir is not None:
                shutil.rmtree(self._datadir, ignore_errors=True)
            self.ready.clear()
            if signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(sig)
        return self.stats

    def run(self, duration: float | None = None, *, signals: bool = True) -> FaustStats:
        """Create the topics, then serve in a new event loop (blocking)."""
        created = self.ensure_topics()
        if created:
            log.info("created topics: %s", ", ".join(created))
        return asyncio.run(self.serve(duration, signals=signals))


def run_worker(settings: Settings, duration: float | None = None) -> FaustStats:
    """``driftline worker --runtime faust``: metrics server + runtime until SIGTERM/SIGINT."""
    from driftline.streams.metrics import MetricsServer

    registry = CollectorRegistry()
    rt = FaustRuntime(settings, registry)
    for sig in (signal.SIGINT, signal.SIGTERM):  # until the loop's own handlers take over
        signal.signal(sig, lambda signum, frame: rt.request_stop())
    server = MetricsServer(registry, settings.metrics_host, settings.metrics_port,
                           health=rt.ready.is_set).start()
    log.info("faust runtime; metrics on http://%s:%d/metrics", settings.metrics_host, server.port)
    try:
        stats = rt.run(duration)
    finally:
        server.stop()
    log.info("stopped: consumed=%d applied=%d skipped_replays=%d alerts=%d dead_letters=%d "
             "snapshots=%d", stats.consumed, stats.applied, stats.skipped_replays, stats.alerts,
             stats.dead_letters, stats.snapshots)
    return stats
