"""Producer SDK for model servers: non-blocking, batched inference events on Kafka.

``emit()`` only appends the event to its model's pending list (a dict build, one lock,
one list append: a few µs) and never raises or blocks. A background daemon thread turns
full or lingering lists into batch envelopes (``driftline.batch/v1``: packed columns when
the events share their fields, else rows),
produces them with key = model (shadow events: key = the live model they shadow, so
both land on one partition), polls delivery callbacks and counts the outcome.

Accounting: every accepted event (``emitted``) ends ``delivered`` or ``failed``
(delivery error, unencodable, too large, or still unsent at ``close()``); an event
refused by ``emit()`` (buffer full, closed, invalid, internal error) is ``dropped``.
``emitted == delivered + failed + pending`` at all times.

``emit_label()`` sends the ground truth of an earlier prediction (LabelEvent v1, one
message on the labels topic, key = model) through the same queue and accounting.

Encoding runs on the background thread, not in ``emit()``: every ``emit()`` stays O(1),
and one thread producing from one FIFO keeps each model's envelopes in emit order.

The workers accept or reject an envelope as a whole, so one bad event would cost its
499 neighbours. Before encoding, the background thread screens each event with the
decoder's own field checks (type tests on the common path, ~1-2 µs per event, off the
serving path); events that look invalid travel together in a second envelope, which the
worker dead-letters with the reason, and are counted as ``isolated``. The plausible
events of the batch are never lost to a bad one. The screen sees Python values, so it
normalises numpy numbers (written as plain JSON numbers); rarer types it cannot vouch
for (str subclasses, datetimes) are treated as suspect.
"""

from __future__ import annotations

import atexit
import logging
import math
import numbers
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from driftline.schemas.codecs import encode_envelope_columns, encode_envelope_rows
from driftline.schemas.envelope import (
    NUMS_NONE,
    Reject,
    check_latency,
    check_outcome,
    check_prediction,
    check_segment,
    check_str,
    check_ts,
    written_as_number,
)
from driftline.schemas.limits import DEFAULT_LIMITS, Limits
from driftline.streams.changes import annotation
from driftline.streams.kafka_config import PRODUCER_DEFAULTS, client_config
from driftline.streams.throttle import LogThrottle, ThrottledLog

log = logging.getLogger(__name__)
_PLAIN = (float, int, type(None))  # ts / prediction values needing no further check

DEFAULT_TOPIC = "driftline.inference"
DEFAULT_LABELS_TOPIC = "driftline.labels"
DEFAULT_CHANGES_TOPIC = "driftline.changes"
# SDK settings on top of kafka_config.PRODUCER_DEFAULTS; the caller's config wins over both.
_SDK_DEFAULTS: dict[str, Any] = {
    "client.id": "driftline-sdk",
    # librdkafka's default (1 GiB) is far too much memory to hold in a model server
    # while the broker is away; the SDK's own buffer is bounded too.
    "queue.buffering.max.kbytes": 65_536,
}


@dataclass(frozen=True)
class ProducerStats:
    """A consistent snapshot of the producer's counters (events unless named otherwise)."""

    emitted: int  # accepted by emit()
    delivered: int  # acknowledged by the broker
    failed: int  # accepted, then lost (see failed_reasons)
    dropped: int  # refused by emit() (see dropped_reasons)
    pending: int  # accepted, outcome not known yet (buffered + in flight)
    buffered: int  # accepted, not yet handed to librdkafka
    isolated: int  # accepted events that looked invalid, sent apart (see module doc)
    envelopes_sent: int
    envelopes_delivered: int
    envelopes_failed: int
    failed_reasons: Mapping[str, int] = field(default_factory=dict)
    dropped_reasons: Mapping[str, int] = field(default_factory=dict)
    annotations_failed: int = 0  # change events (annotate()) the broker did not take
    client_errors: int = 0  # librdkafka client errors (e.g. all brokers down), not events


class _Pending:
    """Events of one (model, key, model_version) waiting to fill an envelope."""

    __slots__ = ("events", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.events: list[dict[str, Any]] = []


class _Outgoing:
    """One Kafka message ready to produce (encoded lazily, kept across BufferError)."""

    __slots__ = ("events", "key", "model", "model_version", "n", "screened", "topic", "value")

    def __init__(self, model: str, key: str, model_version: str | None,
                 events: list[dict[str, Any]] | None, value: bytes | None = None,
                 screened: bool = False, topic: str | None = None) -> None:
        self.model, self.key, self.model_version = model, key, model_version
        self.topic = topic  # None: the producer's inference topic
        self.events, self.value = events, value
        self.n = len(events) if events is not None else 1
        self.screened = screened or self.n == 1

    def part(self, events: list[dict[str, Any]]) -> _Outgoing:
        return _Outgoing(self.model, self.key, self.model_version, events, screened=True)


class DriftlineProducer:
    """Batched, non-blocking inference-event producer (confluent-kafka).

    ``config`` is a librdkafka configuration dict, or a bootstrap string turned into
    one by :func:`driftline.streams.kafka_config.client_config` with ``client_options``
    (security settings). ``registry``: a prometheus ``CollectorRegistry`` to publish
    the counters in (never the global one by default); the counters are plain
    attributes either way. ``limits``: the workers' input limits, for the screen.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str,
        topic: str = DEFAULT_TOPIC,
        *,
        batch_size: int = 500,
        linger_s: float = 0.05,
        max_buffered_events: int = 100_000,
        max_envelope_bytes: int = 900_000,
        registry: Any | None = None,
        client_options: Mapping[str, Any] | None = None,
        envelope_form: str = "auto",
        limits: Limits = DEFAULT_LIMITS,
        labels_topic: str = DEFAULT_LABELS_TOPIC,
        changes_topic: str = DEFAULT_CHANGES_TOPIC,
    ) -> None:
        if batch_size < 1 or max_buffered_events < 1 or max_envelope_bytes < 1:
            raise ValueError("batch_size, max_buffered_events and max_envelope_bytes must be >= 1")
        if linger_s <= 0:
            raise ValueError("linger_s must be > 0")
        if envelope_form not in ("rows", "auto"):
            raise ValueError("envelope_form is 'auto' (packed columns when events are uniform) "
                             "or 'rows'")
        self.envelope_form = envelope_form
        self.changes_topic = changes_topic
        self.annotations_failed = 0
        self.topic, self.batch_size, self.linger_s = topic, batch_size, linger_s
        self.labels_topic = labels_topic
        self.max_buffered_events, self.max_envelope_bytes = max_buffered_events, max_envelope_bytes
        self.limits = limits

        self.emitted_events = self.delivered_events = self.failed_events = 0
        self.dropped_events = self.isolated_events = 0
        self.envelopes_sent = self.envelopes_delivered = self.envelopes_failed = 0
        self.failed_reasons: dict[str, int] = {}
        self.dropped_reasons: dict[str, int] = {}
        self.client_errors = 0

        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str | None, str | None], _Pending] = {}
        # (model, shadow_of) -> its pending list's group: one open list per model stream
        self._open: dict[tuple[str, str | None], tuple[str, str | None, str | None]] = {}
        self._ready: deque[_Outgoing] = deque()
        self._buffered = 0
        self._closed = False
        self._forked = False  # made before a fork, in the child (see _after_fork)
        self._stopping = False
        self._wake = threading.Event()
        self._error_log, self._isolated_log = LogThrottle(), LogThrottle()
        self._good_keys: set[tuple[str, ...]] = set()  # feature layouts that passed the screen

        conf = self._client_config(config, client_options)
        # an envelope must fit librdkafka's message size (key and framing aside) and the
        # workers' payload limit; a larger one would fail as a whole, not be split
        fits = min(int(conf.get("message.max.bytes", 1_000_000)) - 1024,
                   limits.max_payload_bytes)
        if max_envelope_bytes > fits:
            raise ValueError(f"max_envelope_bytes {max_envelope_bytes} is above {fits}: "
                             "message.max.bytes minus 1 KiB, and the workers' payload "
                             "limit (raise message.max.bytes in the config for more)")
        self._producer = Producer(conf)
        self._registry = registry
        self._collector: _SdkCollector | None = None
        if registry is not None:
            self._collector = _SdkCollector(self)
            try:
                registry.register(self._collector)
            except ValueError as exc:  # its metric names are taken: another producer's
                raise ValueError(
                    "this registry already publishes a DriftlineProducer's metrics: one "
                    "producer serves every model (emit() takes the model), or give each "
                    f"producer a registry of its own ({exc})") from None
        self._thread = threading.Thread(target=self._run, name="driftline-producer", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)
        # librdkafka clients do not survive fork(): a child refuses events, counted
        os.register_at_fork(after_in_child=partial(_refuse_in_child, weakref.ref(self)))

    def _after_fork(self) -> None:
        """In a forked child: refuse from now on (dropped, reason ``forked``).

        The parent's librdkafka client and send thread do not exist here, and a new
        client cannot be made safely (its library's locks may have been held by another
        thread at the fork), so the child's producer is closed without touching the
        client; its events are the parent's to send. Make the producer after the fork
        (gunicorn's ``post_fork`` hook) to send from each child."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._pending.clear()
        self._open.clear()
        self._ready.clear()
        self._buffered = 0
        self.emitted_events = self.delivered_events = self.failed_events = 0
        self.dropped_events = self.isolated_events = self.annotations_failed = 0
        self.envelopes_sent = self.envelopes_delivered = self.envelopes_failed = 0
        self.failed_reasons, self.dropped_reasons = {}, {}
        self.client_errors = 0
        self._closed = self._forked = True
        # the metrics collector stays registered (it reads the counters above): the
        # registry's lock may have been held by a scrape at the fork
        atexit.unregister(self._at_exit)
        log.warning("driftline producer: made before fork(); this process cannot send with "
                    "it (its events are dropped, reason 'forked'): create it after the fork")

    def _client_config(self, config: Mapping[str, Any] | str,
                       client_options: Mapping[str, Any] | None) -> dict[str, Any]:
        if isinstance(config, str):
            base: dict[str, Any] = dict(client_config(config, **(client_options or {})))
        else:
            if client_options:
                raise ValueError("client_options only apply when config is a bootstrap string")
            base = dict(config)
        conf = {**PRODUCER_DEFAULTS, **_SDK_DEFAULTS, **base}
        conf.setdefault("error_cb", self._on_client_error)
        # reconnect failures with the broker down: one line a minute, not several a second
        conf.setdefault("logger", ThrottledLog(logging.getLogger("driftline.sdk.librdkafka")))
        return conf

    # ---------------------------------------------------------------- hot path

    def emit(
        self,
        model: str,
        features: Mapping[str, Any],
        prediction: Any = None,
        *,
        event_id: str | None = None,
        ts: float | str | None = None,
        segment: Mapping[str, str] | None = None,
        latency_ms: float | None = None,
        model_version: str | None = None,
        shadow_of: str | None = None,
        trace_id: str | None = None,
        outcome: str | None = None,
    ) -> bool:
        """Queue one inference event; True if accepted. Never blocks, never raises.

        ``ts`` defaults to now (epoch seconds). ``features``, ``segment`` and a dict
        ``prediction`` are copied (shallow), so the caller may reuse its dicts. Class
        probabilities keyed by class index (``{0: 0.2, 1: 0.8}``) are sent with the keys
        as text (``"0"``, ``"1"``), as JSON writes them.
        """
        try:
            if type(features) is dict:
                feats = features.copy()
            elif isinstance(features, Mapping):
                feats = dict(features)
            else:
                self._drop("invalid")
                return False
            ev: dict[str, Any] = {"features": feats, "ts": time.time() if ts is None else ts}
            if prediction is not None:
                ev["prediction"] = (prediction if type(prediction) in _PLAIN
                                    else _class_probabilities(prediction))
            if event_id is not None:
                ev["event_id"] = event_id
            if segment is not None:
                ev["segment"] = segment.copy() if type(segment) is dict else (
                    dict(segment) if isinstance(segment, Mapping) else segment)
            if latency_ms is not None:
                ev["latency_ms"] = latency_ms
            if shadow_of is not None:
                ev["shadow_of"] = shadow_of
            if trace_id is not None:
                ev["trace_id"] = trace_id
            if outcome is not None:
                ev["outcome"] = outcome
            return self._add(model, shadow_of, model_version, ev)
        except Exception:  # the serving path must never see an SDK error
            self._drop("error")
            return False

    def emit_event(self, event: Mapping[str, Any]) -> bool:
        """Queue a pre-built InferenceEvent v1 dict (with ``model``; ``ts`` defaults to
        now); its dicts are copied as by :meth:`emit`. Never raises."""
        try:
            ev = dict(event)
            model = ev.pop("model", None)
            version = ev.pop("model_version", None)
            if not isinstance(ev.get("features"), Mapping):
                self._drop("invalid")
                return False
            # copies, as emit() makes: the caller may reuse its dicts
            ev["features"] = dict(ev["features"])
            if ev.get("prediction") is not None:
                ev["prediction"] = _class_probabilities(ev["prediction"])
            if isinstance(ev.get("segment"), Mapping):
                ev["segment"] = dict(ev["segment"])
            if ev.get("ts") is None:
                ev["ts"] = time.time()
            return self._add(model, ev.get("shadow_of"), version, ev)
        except Exception:
            self._drop("error")
            return False

    def send_raw(self, model: str, value: bytes, *, shadow_of: str | None = None) -> bool:
        """Queue one pre-encoded message (e.g. a single InferenceEvent JSON), key = model,
        or = ``shadow_of`` (the live model) for a shadow event, like :meth:`emit`.

        Counted as one event; goes out in order with the envelopes. Never raises.
        """
        try:
            lim = self.limits.max_model_id_length
            if not _valid_str(model, lim) or not isinstance(value, bytes | bytearray) or (
                    shadow_of is not None and not _valid_str(shadow_of, lim)):
                self._drop("invalid")
                return False
            with self._lock:
                if not self._admit():
                    return False
                self._ready.append(_Outgoing(model, shadow_of or model, None, None, bytes(value)))
            self._wake.set()
            return True
        except Exception:
            self._drop("error")
            return False

    def emit_label(self, model: str, event_id: str, label: str | float | bool,
                   ts: float | str | None = None, *, shadow_of: str | None = None) -> bool:
        """Queue the ground truth of an earlier prediction (LabelEvent v1 on the labels
        topic, key = model, so it reaches the worker that holds the prediction). ``event_id``
        is the prediction's; ``ts`` (when the truth was known: epoch seconds or ISO-8601)
        defaults to now. A shadow candidate's label takes ``shadow_of`` = the live model,
        which its predictions were keyed by. Counted as one event like the others; never
        blocks, never raises."""
        try:
            lim = self.limits
            value_of = _label_value(label, lim.max_string_length)
            when = _label_ts(ts)
            if not (_valid_str(model, lim.max_model_id_length)
                    and _valid_str(event_id, lim.max_string_length)
                    and (shadow_of is None or _valid_str(shadow_of, lim.max_model_id_length))
                    and value_of is not _INVALID and when is not _INVALID):
                self._drop("invalid")
                return False
            value = orjson.dumps({"model": model, "event_id": event_id, "label": value_of,
                                  "ts": time.time() if when is None else when})
            with self._lock:
                if not self._admit():
                    return False
                self._ready.append(_Outgoing(model, shadow_of or model, None, None, value,
                                             topic=self.labels_topic))
            self._wake.set()
            return True
        except Exception:
            self._drop("error")
            return False

    def annotate(self, model: str, kind: str, text: str, ts: float | str | None = None,
                 *, source: str | None = "driftline-sdk") -> str:
        """Record an upstream change of ``model`` on the changes topic; returns its id.

        ``kind``: deploy, pipeline, data-source or other (model_version, schema and
        reference are also accepted); ``ts``: epoch seconds or ISO-8601, default now.
        Not an event: off the emit() accounting, sent by the same client (``flush()``
        waits for it too; one not delivered counts in ``annotations_failed``). Raises
        ValueError when the change is invalid, BufferError when the client queue stays
        full for 5 s, RuntimeError after :meth:`close`.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the producer is closed")
        ev = annotation(model, kind, text, ts, source)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self._producer.produce(self.changes_topic, ev.encode(), model.encode(),
                                       on_delivery=self._on_annotation)
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise
                self._producer.poll(0.05)
        self._wake.set()
        return ev.id

    def _on_annotation(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            with self._lock:
                self.annotations_failed += 1
            log.warning("driftline producer: change event not delivered: %s", err)

    def _add(self, model: str, shadow_of: str | None, version: str | None,
             ev: dict[str, Any]) -> bool:
        # model, shadow_of and model_version are envelope-wide: check them here, cheaply
        lim = self.limits
        if not (_valid_str(model, lim.max_model_id_length)
                and (shadow_of is None or _valid_str(shadow_of, lim.max_model_id_length))
                and (version is None or _valid_str(version, lim.max_string_length, 0))):
            self._drop("invalid")
            return False
        group = (model, shadow_of, version)
        with self._lock:
            if not self._admit():
                return False
            pend = self._pending.get(group)
            if pend is None:
                # a model's events keep their order across a model_version change: its
                # list of the other version goes out first
                stream = (model, shadow_of)
                other = self._open.get(stream)
                if other is not None and other in self._pending:
                    self._ready.append(_Outgoing(model, shadow_of or model, other[2],
                                                 self._pending.pop(other).events))
                self._open[stream] = group
                pend = self._pending[group] = _Pending(time.monotonic())
            pend.events.append(ev)
            if len(pend.events) < self.batch_size:
                return True
            self._close_list(group)
            self._ready.append(_Outgoing(model, shadow_of or model, version, pend.events))
        self._wake.set()
        return True

    def _close_list(self, group: tuple[str, str | None, str | None]) -> None:
        """Forget a pending list that leaves for the send queue (lock held)."""
        del self._pending[group]
        if self._open.get(group[:2]) == group:
            del self._open[group[:2]]

    def _admit(self) -> bool:
        """Count one event in (lock held) or refuse it."""
        if self._closed:
            self._count_drop("forked" if self._forked else "closed")
            return False
        if self._buffered >= self.max_buffered_events:
            self._count_drop("buffer_full")
            return False
        self._buffered += 1
        self.emitted_events += 1
        return True

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._count_drop(reason)

    def _count_drop(self, reason: str) -> None:
        self.dropped_events += 1
        self.dropped_reasons[reason] = self.dropped_reasons.get(reason, 0) + 1

    # ---------------------------------------------------------------- background

    def _run(self) -> None:
        while True:
            try:
                deadline = self._collect_lingering(time.monotonic())
                self._send_ready()
                self._producer.poll(0)
                if self._stopping:
                    return
                self._wake.wait(max(deadline - time.monotonic(), 0.001))
                self._wake.clear()
            except Exception:  # keep the thread alive whatever happens
                log.exception("driftline producer thread error")
                time.sleep(0.01)

    def _collect_lingering(self, now: float, everything: bool = False) -> float:
        """Move lists older than linger_s (or all) to the send queue; next deadline."""
        next_deadline = now + self.linger_s
        with self._lock:
            for group, pend in list(self._pending.items()):
                if everything or now - pend.since >= self.linger_s:
                    self._close_list(group)
                    model, shadow_of, version = group
                    self._ready.append(_Outgoing(model, shadow_of or model, version, pend.events))
                else:
                    next_deadline = min(next_deadline, pend.since + self.linger_s)
        return next_deadline

    def _send_ready(self) -> None:
        """Produce queued messages in order; on a full librdkafka queue, wait and retry."""
        while True:
            with self._lock:
                if not self._ready:
                    return
                out = self._ready[0]
            if not out.screened:
                self._screen(out)
                continue
            if out.value is None and not self._encode(out):
                continue
            assert out.value is not None
            if len(out.value) > self.max_envelope_bytes and out.events and len(out.events) > 1:
                self._split_head(out)
                continue
            try:
                self._producer.produce(out.topic or self.topic, out.value, out.key,
                                       on_delivery=partial(self._on_delivery, out.n))
            except BufferError:  # librdkafka queue full: keep it, let deliveries drain
                self._producer.poll(0.05)
                if self._stopping:
                    return
                continue
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if (isinstance(err, KafkaError) and out.events and len(out.events) > 1
                        and err.code() == KafkaError.MSG_SIZE_TOO_LARGE):
                    self._split_head(out)  # halves until each fits or one event fails
                    continue
                self._fail_head(out, _reason(err))
                continue
            except Exception:
                log.exception("produce failed")
                self._fail_head(out, "produce_error")
                continue
            with self._lock:
                self._ready.popleft()
                self._buffered -= out.n
                self.envelopes_sent += 1

    def _screen(self, out: _Outgoing) -> None:
        """Replace the head message by its plausible events and, apart, the suspects."""
        assert out.events is not None
        good: list[dict[str, Any]] = []
        suspects: list[dict[str, Any]] = []
        suspect = self._suspect
        for ev in out.events:
            (suspects if suspect(ev) else good).append(ev)
        with self._lock:
            self._ready.popleft()
            self._ready.extendleft(out.part(part) for part in (suspects, good) if part)
            self.isolated_events += len(suspects)
        if suspects:
            if self._isolated_log.ready():
                log.warning("driftline producer: %d event(s) of model %r look invalid; they are "
                            "sent apart, the worker dead-letters them with the reason",
                            len(suspects), out.model)

    def _suspect(self, ev: Mapping[str, Any]) -> bool:
        """Whether the workers' decoder might reject this event (its checks, on the
        Python values; numbers of any numeric type pass inside features)."""
        lim = self.limits
        feats = ev.get("features")
        if type(feats) is not dict:
            return True
        keys = tuple(feats)
        if keys not in self._good_keys:
            if len(keys) > lim.max_features or not all(
                    type(k) is str and 0 < len(k) <= lim.max_feature_name_length for k in keys):
                return True
            if len(self._good_keys) >= 1024:
                self._good_keys.clear()
            self._good_keys.add(keys)
        if not NUMS_NONE.issuperset(map(type, feats.values())):
            for v in feats.values():
                if isinstance(v, str):
                    if len(v) > lim.max_string_length:
                        return True
                elif v is not None and not written_as_number(v):
                    return True
        get = ev.get
        try:
            if type(get("ts")) not in _PLAIN:
                check_ts(_as_json(get("ts")), 0.0)
            if type(get("prediction")) not in _PLAIN:
                check_prediction(_as_json(get("prediction")), lim)
            if get("latency_ms") is not None:
                check_latency(_as_json(get("latency_ms")))
            if get("segment") is not None:
                check_segment(get("segment"), lim)
            if get("outcome") is not None:
                check_outcome(get("outcome"))
            for name in ("event_id", "trace_id"):
                if get(name) is not None:
                    check_str(name, get(name), lim.max_string_length)
        except Exception:  # Reject, or a value the checks were not written for
            return True
        return False

    def _encode(self, out: _Outgoing) -> bool:
        """Encode the head message. If that fails, its events go one per message and an
        event that cannot be encoded alone fails (reason ``encode``)."""
        assert out.events is not None
        try:
            out.value = encode_batch(out.model, out.events, out.model_version,
                                     form=self.envelope_form)
            return True
        except Exception as exc:
            with self._lock:
                self._ready.popleft()
                if out.n == 1:
                    self._buffered -= 1
                    self._count_failed("encode", 1)
                    log.warning("driftline producer: cannot encode an event of %r: %s",
                                out.model, exc)
                else:
                    self._ready.extendleft(out.part([ev]) for ev in reversed(out.events))
            return False

    def _split_head(self, out: _Outgoing) -> None:
        assert out.events is not None
        half = len(out.events) // 2
        with self._lock:
            self._ready.popleft()
            self._ready.extendleft((out.part(out.events[half:]), out.part(out.events[:half])))

    def _fail_head(self, out: _Outgoing, reason: str) -> None:
        with self._lock:
            self._ready.popleft()
            self._buffered -= out.n
            self._count_failed(reason, out.n)
            self.envelopes_failed += 1

    def _count_failed(self, reason: str, n: int) -> None:
        if n:
            self.failed_events += n
            self.failed_reasons[reason] = self.failed_reasons.get(reason, 0) + n

    def _on_delivery(self, n: int, err: KafkaError | None, _msg: Any) -> None:
        with self._lock:
            if err is None:
                self.delivered_events += n
                self.envelopes_delivered += 1
            else:
                self._count_failed(_reason(err), n)
                self.envelopes_failed += 1

    def _on_client_error(self, err: KafkaError) -> None:
        self.client_errors += 1
        if self._error_log.ready():
            log.warning("driftline producer: %s (further client errors for 60 s are counted only)",
                        err)

    # ---------------------------------------------------------------- control

    def flush(self, timeout: float = 10.0) -> int:
        """Send everything pending now and wait for deliveries; events still pending."""
        end = time.monotonic() + timeout
        self._collect_lingering(time.monotonic(), everything=True)
        self._wake.set()
        while time.monotonic() < end:
            with self._lock:
                buffered = self._buffered
            if buffered == 0:
                self._producer.flush(max(end - time.monotonic(), 0.0))
                break
            self._producer.poll(0.01)
            self._wake.set()
        with self._lock:
            return self.emitted_events - self.delivered_events - self.failed_events

    def close(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout``), stop the thread; whatever is left counts as failed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # emit() refuses from now on
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        self._thread.join(5.0)
        self._producer.purge()  # undelivered messages get their (failed) delivery report
        self._producer.flush(1.0)
        with self._lock:
            while self._ready:
                out = self._ready.popleft()
                self._buffered -= out.n
                self._count_failed("closed", out.n)
        if self._collector is not None and self._registry is not None:
            self._registry.unregister(self._collector)
            self._collector = None
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        self.close(timeout=5.0)

    def stats(self) -> ProducerStats:
        with self._lock:
            return ProducerStats(
                emitted=self.emitted_events,
                delivered=self.delivered_events,
                failed=self.failed_events,
                dropped=self.dropped_events,
                isolated=self.isolated_events,
                pending=self.emitted_events - self.delivered_events - self.failed_events,
                buffered=self._buffered,
                envelopes_sent=self.envelopes_sent,
                envelopes_delivered=self.envelopes_delivered,
                envelopes_failed=self.envelopes_failed,
                failed_reasons=dict(self.failed_reasons),
                dropped_reasons=dict(self.dropped_reasons),
                annotations_failed=self.annotations_failed,
                client_errors=self.client_errors,
            )

    def __enter__(self) -> DriftlineProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_json(v: Any) -> Any:
    """A value as the decoder will see it: the encoder writes numpy numbers as plain ones."""
    t = type(v)
    if t is float or t is int or t is bool or t is str or v is None:
        return v
    if isinstance(v, numbers.Real):
        return float(v)
    if t is dict:
        return {k: _as_json(x) for k, x in v.items()}
    return v


def _refuse_in_child(ref: weakref.ref[DriftlineProducer]) -> None:
    producer = ref()
    if producer is not None:
        producer._after_fork()


_INVALID: Any = object()  # what _label_value / _label_ts return for a value to refuse
_INT64 = 1 << 63


def _label_value(v: object, max_len: int) -> Any:
    """A label as the LabelEvent writes it (numpy scalars as plain values), or _INVALID."""
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, str):
        return str(v) if len(v) <= max_len else _INVALID
    if isinstance(v, numbers.Integral):
        return int(v) if -_INT64 <= int(v) < _INT64 else _INVALID
    if isinstance(v, numbers.Real) and math.isfinite(v):
        return float(v)
    return _INVALID


def _label_ts(v: object) -> Any:
    """A label's time as epoch seconds (numbers, ISO-8601 text, datetimes; naive = UTC),
    None for now, or _INVALID."""
    if v is None:
        return None
    if isinstance(v, datetime):
        return (v if v.tzinfo is not None else v.replace(tzinfo=UTC)).timestamp()
    try:
        when = float(check_ts(v if isinstance(v, str) else _as_json(v), 0.0))
    except (Reject, TypeError, ValueError):
        return _INVALID
    return when if math.isfinite(when) else _INVALID


def _class_probabilities(prediction: Any) -> Any:
    """A prediction as sent: a probability mapping copied, its keys as text."""
    if isinstance(prediction, Mapping):
        return {k if type(k) is str else str(k): v for k, v in prediction.items()}
    return prediction


def _valid_str(v: object, max_len: int, min_len: int = 1) -> bool:
    return type(v) is str and min_len <= len(v) <= max_len


def encode_batch(model: str, events: list[dict[str, Any]], model_version: str | None = None,
                 *, form: str = "auto") -> bytes:
    """One envelope of ``events`` as the producer writes it: ``form="auto"`` packed
    columns when the events share their fields, else rows; ``"rows"`` always rows."""
    cols = _columns_envelope(model, events, model_version) if form == "auto" else None
    return cols or encode_envelope_rows(model, events, model_version=model_version)


def _columns_envelope(model: str, events: list[dict[str, Any]],
                      model_version: str | None) -> bytes | None:
    """The packed columns form when every event has the same fields and feature names
    (the common case; a worker decodes it about 5x cheaper than rows), else None."""
    cols = event_columns(events)
    if cols is None:
        return None
    return encode_envelope_columns(model, cols, len(events), model_version=model_version,
                                   packed=True)


def event_columns(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``events`` (without their ``model``) as the columns of a columns envelope, or None
    unless every event has the same fields and feature names in the same order."""
    first = events[0]
    fields = tuple(k for k in first if k != "model")
    features = first.get("features")
    if not isinstance(features, dict):
        return None
    names = tuple(features)
    for e in events:
        f = e.get("features")
        if tuple(k for k in e if k != "model") != fields or not isinstance(f, dict) \
                or tuple(f) != names:
            return None
    cols: dict[str, Any] = {"features": {n: [e["features"][n] for e in events] for n in names}}
    for k in fields:
        if k != "features":
            cols[k] = [e[k] for e in events]
    return cols


def _reason(err: Any) -> str:
    """A bounded failure reason from a KafkaError (its code name)."""
    if isinstance(err, KafkaError):
        return str(err.name()).lower().lstrip("_") or "kafka_error"
    return "kafka_error"


class _SdkCollector:
    """Publishes the producer's counters at scrape time: nothing extra on emit()'s path.

    No emit-latency histogram: timing every emit() would cost about as much as the
    emit itself, and a sample says nothing the buffered/dropped counters do not; emit
    latency is measured by the SDK benchmark instead.
    """

    def __init__(self, producer: DriftlineProducer) -> None:
        self._producer = producer

    def describe(self) -> Iterable[Any]:
        return list(self._families(zero=True))

    def collect(self) -> Iterator[Any]:
        yield from self._families(zero=False)

    def _families(self, zero: bool) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self._producer.stats() if not zero else None
        events = CounterMetricFamily("driftline_sdk_events", "Inference events by outcome",
                                     labels=["outcome"])
        lost = CounterMetricFamily("driftline_sdk_lost_events",
                                   "Events failed or dropped, by reason",
                                   labels=["outcome", "reason"])
        envelopes = CounterMetricFamily("driftline_sdk_envelopes", "Kafka messages by outcome",
                                        labels=["outcome"])
        isolated = CounterMetricFamily("driftline_sdk_isolated_events",
                                       "Events that looked invalid, sent apart from the rest")
        buffered = GaugeMetricFamily("driftline_sdk_buffered_events",
                                     "Events accepted but not yet handed to librdkafka")
        annotations = CounterMetricFamily("driftline_sdk_annotations_failed",
                                          "Change events (annotate()) not delivered")
        if s is not None:
            for outcome, v in (("emitted", s.emitted), ("delivered", s.delivered),
                               ("failed", s.failed), ("dropped", s.dropped)):
                events.add_metric([outcome], v)
            for outcome, reasons in (("failed", s.failed_reasons),
                                     ("dropped", s.dropped_reasons)):
                for reason, v in reasons.items():
                    lost.add_metric([outcome, reason], v)
            for outcome, v in (("sent", s.envelopes_sent), ("delivered", s.envelopes_delivered),
                               ("failed", s.envelopes_failed)):
                envelopes.add_metric([outcome], v)
            isolated.add_metric([], s.isolated)
            buffered.add_metric([], s.buffered)
            annotations.add_metric([], s.annotations_failed)
        yield from (events, lost, envelopes, isolated, buffered, annotations)
