"""Upstream changes: what the stream shows, what people post, kept per model for alerts.

A change event (ChangeEvent v1, topic ``driftline.changes``, key = model) is recorded

* by the worker, when a model's stream shows a model_version it had not seen, a feature
  appearing, disappearing (absent from :data:`FEATURE_GONE_AFTER` consecutive events) or
  changing type (numbers <-> strings), or a new reference in use (built or set);
* by people and pipelines: ``driftline annotate``, ``DriftlineProducer.annotate`` or any
  producer writing the JSON.

Detection is per batch: a model state's :class:`UpstreamSchema` (snapshotted with it)
holds what the stream last showed, and one batch is compared with it in a few vectorised
passes. Change ids are deterministic (sha1 of model, kind, text and the source offset
of the first row that showed the change), so a replayed batch yields the same ids and
:class:`ChangeLog` (which also holds every change read from the topic) drops repeats.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import time
from bisect import insort
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from driftline.schemas.codecs import decode_change, encode_change
from driftline.schemas.envelope import Reject, check_ts
from driftline.schemas.models import EventBatch

if TYPE_CHECKING:
    from driftline.detectors.reference import ReferenceProfile
    from driftline.streams.metrics import WorkerMetrics

CHANGE_KINDS = ("deploy", "pipeline", "data-source", "model_version", "schema", "reference",
                "other")
WORKER_SOURCE = "driftline-worker"
ALERT_CHANGES = 5  # most recent changes an alert carries
RECENT_CHANGES = 20  # changes kept per model
KNOWN_IDS = 100_000  # change ids remembered for de-duplication
FEATURE_GONE_AFTER = 1000  # consecutive events without a feature before it counts as gone
MAX_VERSIONS = 32  # model versions remembered per model state
MAX_FEATURES = 4096  # features remembered per model state (more are not tracked)
MAX_TEXT = 4096


def change_id(model: str, kind: str, text: str, where: str) -> str:
    """Deterministic id: the same change seen again (a replay, a re-post) has the same id."""
    return hashlib.sha1(f"{model}|{kind}|{text}|{where}".encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One upstream change of one model (ChangeEvent v1 plus its id)."""

    model: str
    kind: str
    ts: float
    text: str
    source: str | None = None
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "kind": self.kind, "ts": self.ts, "text": self.text,
                "source": self.source, "id": self.id}

    def for_alert(self) -> dict[str, Any]:
        """What an alert carries of it."""
        return {"kind": self.kind, "ts": self.ts, "text": self.text, "source": self.source,
                "id": self.id}

    def encode(self) -> bytes:
        return encode_change(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChangeEvent:
        """From a validated ChangeEvent v1 dict; a missing id is derived from its content."""
        model, kind, text, ts = str(d["model"]), str(d["kind"]), str(d["text"]), float(d["ts"])
        cid = d.get("id")
        return cls(model, kind, ts, text, d.get("source"),
                   cid if isinstance(cid, str) and cid else change_id(model, kind, text, repr(ts)))

    @classmethod
    def decode(cls, data: bytes | str) -> ChangeEvent:
        """Parse and validate one message; ValueError with a reason if invalid."""
        return cls.from_dict(decode_change(data))


def annotation(model: str, kind: str, text: str, ts: float | str | None = None,
               source: str | None = None, *, max_future_s: float = 86400.0) -> ChangeEvent:
    """A change posted by a person or a pipeline; ValueError if it is not valid.

    ``ts``: epoch seconds or ISO-8601, default now; not before 1970 nor more than
    ``max_future_s`` ahead (as event times: ``DRIFTLINE_MAX_FUTURE_S``). The id derives
    from model, kind, text and ts, so posting the same annotation twice records it once."""
    if isinstance(ts, numbers.Real) and not isinstance(ts, bool):
        ts = float(ts)  # numpy numbers too
    now = time.time()
    try:
        when = float(check_ts(ts, now))
    except Reject as exc:
        raise ValueError(exc.detail) from None
    if not math.isfinite(when):
        raise ValueError("ts must be finite")
    if when < 0:
        raise ValueError(f"ts {when:.6g} is before 1970")
    if when > now + max_future_s:
        raise ValueError(f"ts {when:.6g} is {when - now:.3g} s ahead of now (at most "
                         f"{max_future_s:.0f} s; ts is in seconds, not milliseconds)")
    if not text.strip():
        raise ValueError("text must not be empty: say what changed")
    if kind not in CHANGE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CHANGE_KINDS)}, not {kind!r}")
    ev = ChangeEvent(model, kind, when, text, source, change_id(model, kind, text, repr(when)))
    ev.encode()  # validates against the schema (model length, text length, ...)
    return ev


# ----------------------------------------------------------------------------- detection


@dataclass
class UpstreamSchema:
    """What a model state's stream last showed: features and their types, versions,
    reference. Part of the model's snapshot."""

    started: bool = False
    features: dict[str, str] = field(default_factory=dict)  # name -> numeric|string|""
    absent: dict[str, list[Any]] = field(default_factory=dict)  # name -> [rows, ts, where]
    versions: list[str] = field(default_factory=list)  # least recently seen first
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"started": self.started, "features": dict(self.features),
                "absent": {k: list(v) for k, v in self.absent.items()},
                "versions": list(self.versions), "reference": self.reference}

    @classmethod
    def from_dict(cls, d: Any) -> UpstreamSchema:
        """Inverse of :meth:`to_dict` (None: nothing seen yet); ValueError if malformed."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError("upstream schema must be an object")
        ref = d.get("reference")
        try:
            st = cls(
                started=bool(d.get("started", False)),
                features={str(k): str(v) for k, v in d.get("features", {}).items()},
                absent={str(k): [int(v[0]), float(v[1]), str(v[2])]
                        for k, v in d.get("absent", {}).items()},
                versions=[str(v) for v in d.get("versions", [])],
                reference=None if ref is None else str(ref),
            )
        except (TypeError, IndexError, AttributeError, OverflowError) as exc:
            raise ValueError(f"malformed upstream schema: {exc!r}") from None
        if any(t not in ("numeric", "string", "") for t in st.features.values()):
            raise ValueError("unknown feature type in upstream schema")
        return st


def _where(batch: EventBatch, row: int) -> str:
    return f"{int(batch.partition[row])}:{int(batch.offset[row])}"


def _ts(batch: EventBatch, row: int) -> float:
    t = float(batch.ts[row])
    if math.isfinite(t):
        return t
    finite = batch.ts[np.isfinite(batch.ts)]
    return float(finite.min()) if finite.size else time.time()


def _names(names: list[str]) -> str:
    text = ", ".join(names)
    if len(text) <= MAX_TEXT - 200:
        return text
    cut = text[: MAX_TEXT - 200].rsplit(", ", 1)[0]
    return f"{cut} (+{len(names) - cut.count(', ') - 1} more)"


def detect_changes(seen: UpstreamSchema, batch: EventBatch) -> list[ChangeEvent]:
    """Compare one batch (rows in source order) with what the stream showed before;
    update ``seen`` and return the changes (at most one per kind of finding).

    The first batch a state ever sees sets the baseline silently (except versions that
    appear after its first one).
    """
    n = len(batch)
    if n == 0:
        return []
    model = batch.model
    out: list[ChangeEvent] = []
    baseline = not seen.started
    seen.started = True

    # model versions: one C-level comparison when the batch has a single version
    mv = batch.model_version
    v0 = mv[0]
    uniform = bool(np.all(mv == v0))
    versions: list[Any] = [v0] if uniform else mv.tolist()
    present = {v for v in set(versions) if isinstance(v, str) and v}
    new = [v for v in present if v not in seen.versions]
    if new:
        versions = mv.tolist()
        first = {v: versions.index(v) for v in new}
        for k, v in enumerate(sorted(new, key=first.__getitem__)):
            before = seen.versions[-1] if seen.versions else None
            if not baseline or k > 0:  # a baseline batch's first version is no change
                text = f"model_version {v} first seen (before: {before or 'none'})"
                row = first[v]
                out.append(ChangeEvent(model, "model_version", _ts(batch, row), text,
                                       WORKER_SOURCE, change_id(model, "model_version", text,
                                                                _where(batch, row))))
            seen.versions.append(v)
    if len(present) > 1:  # most recently seen last
        for v in sorted(present, key=lambda v: len(versions) - 1 - versions[::-1].index(v)):
            seen.versions.remove(v)
            seen.versions.append(v)
    elif present:
        (only,) = present
        if seen.versions[-1] != only:
            seen.versions.remove(only)
            seen.versions.append(only)
    del seen.versions[:-MAX_VERSIONS]

    # features: names, then values only where a type could have changed (a batch without
    # strings cannot turn a numeric feature into a string one: no scan at all)
    names = batch.feature_names
    num_cache: dict[int, bool] = {}
    text_cache: dict[int, bool] = {}

    def has_num(j: int) -> bool:
        if j not in num_cache:
            num_cache[j] = bool(np.isfinite(batch.numeric[:, j]).any())
        return num_cache[j]

    def has_text(j: int) -> bool:
        if batch.text is None:
            return False
        if j not in text_cache:
            text_cache[j] = any(t is not None for t in batch.text[:, j].tolist())
        return text_cache[j]

    def first_row(j: int, strings: bool) -> int:
        if strings and batch.text is not None:
            col = batch.text[:, j].tolist()
            return next((i for i, t in enumerate(col) if t is not None), 0)
        hits = np.flatnonzero(np.isfinite(batch.numeric[:, j]))
        return int(hits[0]) if hits.size else 0

    appeared: list[tuple[str, int]] = []
    retyped: list[tuple[str, str, str, int]] = []
    for j, name in enumerate(names):
        old = seen.features.get(name)
        if old is None:
            if len(seen.features) >= MAX_FEATURES:
                continue
            num, txt = has_num(j), has_text(j)
            kind = "numeric" if num and not txt else "string" if txt and not num else ""
            seen.features[name] = kind
            appeared.append((name, first_row(j, txt and not num)))
            continue
        if seen.absent:
            seen.absent.pop(name, None)
        if old == "numeric":
            if batch.text is not None and has_text(j) and not has_num(j):
                seen.features[name] = "string"
                retyped.append((name, old, "string", first_row(j, True)))
        elif old == "string":
            if has_num(j) and not has_text(j):
                seen.features[name] = "numeric"
                retyped.append((name, old, "numeric", first_row(j, False)))
        elif has_num(j) or has_text(j):
            num, txt = has_num(j), has_text(j)
            seen.features[name] = "numeric" if num and not txt else "string" if txt and not num \
                else ""
    gone: list[tuple[str, list[Any]]] = []
    if len(names) < len(seen.features):
        here = set(names)
        for name in [k for k in seen.features if k not in here]:
            run = seen.absent.get(name)
            if run is None:
                run = seen.absent[name] = [0, _ts(batch, 0), _where(batch, 0)]
            run[0] += n
            if run[0] >= FEATURE_GONE_AFTER:
                gone.append((name, run))
                del seen.absent[name], seen.features[name]
    if baseline:
        return out
    if appeared:
        text = f"features appeared: {_names([a for a, _ in appeared])}"
        row = min(r for _, r in appeared)
        out.append(ChangeEvent(model, "schema", _ts(batch, row), text, WORKER_SOURCE,
                               change_id(model, "schema", text, _where(batch, row))))
    if gone:
        text = (f"features disappeared (absent from {FEATURE_GONE_AFTER}+ events): "
                f"{_names([g for g, _ in gone])}")
        first_run = min((run for _, run in gone), key=lambda r: float(r[1]))
        out.append(ChangeEvent(model, "schema", float(first_run[1]), text, WORKER_SOURCE,
                               change_id(model, "schema", text, str(first_run[2]))))
    if retyped:
        text = "feature types changed: " + _names([f"{f} {a} -> {b}" for f, a, b, _ in retyped])
        row = min(r[3] for r in retyped)
        out.append(ChangeEvent(model, "schema", _ts(batch, row), text, WORKER_SOURCE,
                               change_id(model, "schema", text, _where(batch, row))))
    return out


def detect_reference(seen: UpstreamSchema, reference: ReferenceProfile | None,
                     batch: EventBatch) -> ChangeEvent | None:
    """A change when the model's windows now run against a reference they did not before
    (the first reference too: built from the first events, or set)."""
    if reference is None or reference.reference_id == seen.reference:
        return None
    seen.reference = reference.reference_id
    ref = reference
    text = (f"reference {ref.reference_id} in use (source {ref.source}, {ref.size} events"
            + (f", model_version {ref.model_version}" if ref.model_version else "") + ")")
    ts = ref.created_at if ref.created_at and math.isfinite(ref.created_at) else \
        _ts(batch, 0) if len(batch) else time.time()
    return ChangeEvent(ref.model, "reference", float(ts), text, WORKER_SOURCE,
                       change_id(ref.model, "reference", text, ref.reference_id))


# ----------------------------------------------------------------------------- the log


class ChangeLog:
    """The most recent changes of every model, from the topic and from detection.

    Bounded: ``per_model`` newest (by ts) per model, ``max_models`` models (the least
    recently changed goes first), :data:`KNOWN_IDS` ids remembered for de-duplication.
    """

    def __init__(self, *, per_model: int = RECENT_CHANGES, max_models: int = 4000,
                 metrics: WorkerMetrics | None = None) -> None:
        self.per_model, self.max_models, self.metrics = per_model, max_models, metrics
        self._models: OrderedDict[str, list[tuple[float, str, ChangeEvent]]] = OrderedDict()
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._last: dict[tuple[str, str], float] = {}

    def __contains__(self, change_id: object) -> bool:
        return change_id in self._ids

    def __len__(self) -> int:
        return sum(len(v) for v in self._models.values())

    def add(self, ev: ChangeEvent, *, live: bool = True) -> bool:
        """Record a change; False when its id is already known (a repeat).

        ``live``: counted in ``driftline_change_events_total`` (history read at start
        only sets the last-timestamp gauge)."""
        if ev.id in self._ids:
            return False
        self._ids[ev.id] = None
        if len(self._ids) > KNOWN_IDS:
            self._ids.popitem(last=False)
        kept = self._models.get(ev.model)
        if kept is None:
            kept = self._models[ev.model] = []
            while len(self._models) > self.max_models:
                self._forget(self._models.popitem(last=False)[0])
        self._models.move_to_end(ev.model)
        insort(kept, (ev.ts, ev.id, ev))
        del kept[: -self.per_model]
        if self.metrics is not None:
            key = (ev.model, ev.kind)
            if live:
                self.metrics.change_events.labels(*key).inc()
            if ev.ts > self._last.get(key, -math.inf):
                self._last[key] = ev.ts
                self.metrics.change_last_ts.labels(*key).set(ev.ts)
        return True

    def recent(self, model: str, before: float | None = None,
               k: int = ALERT_CHANGES) -> tuple[dict[str, Any], ...]:
        """The ``k`` most recent changes of a model at or before ``before``, newest first."""
        kept = self._models.get(model, ())
        hits = [ev for ts, _, ev in kept if before is None or ts <= before]
        return tuple(ev.for_alert() for ev in reversed(hits[-k:]))

    def of(self, model: str) -> list[ChangeEvent]:
        """Every kept change of a model, oldest first."""
        return [ev for _, _, ev in self._models.get(model, ())]

    def _forget(self, model: str) -> None:
        for kind in CHANGE_KINDS:
            if self._last.pop((model, kind), None) is not None and self.metrics is not None:
                for metric in (self.metrics.change_events, self.metrics.change_last_ts):
                    try:
                        metric.remove(model, kind)
                    except KeyError:
                        pass
