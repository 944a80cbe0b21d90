"""Per-model state of a worker: monitor, reference, idempotency offsets and accounting.

Everything here is persisted in one snapshot per model (state topic, key = model), so a
worker that takes the model over resumes where the last one left off: the windows, the
last applied offset of every source partition (replays at or below it are skipped),
and the cumulative counts that ``driftline status`` reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftline.detectors.concept import ConceptMonitor
from driftline.detectors.errors import SnapshotError
from driftline.detectors.join_chunks import is_chunk_name
from driftline.detectors.label_join import JoinStore
from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.detectors.serialization import pack, unpack
from driftline.detectors.shadow import ShadowBook, ShadowConfig
from driftline.schemas.models import EventBatch
from driftline.streams.changes import UpstreamSchema

SNAPSHOT_KIND = "driftline.model"


@dataclass
class ModelState:
    """One model (or one partition's unattributed dead letters, ``~partition-N``)."""

    model: str
    partition: int = -1  # the source partition this state is fed from
    reference: ReferenceProfile | None = None
    monitor: ModelMonitor | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> last applied
    events_applied: int = 0
    events_deadlettered: int = 0
    events_late: int = 0
    alerts_fired: int = 0
    pending_reference: list[EventBatch] = field(default_factory=list)  # auto-reference buffer
    pending_rows: int = 0
    pending_bytes: int = 0  # estimated size of the buffer in the snapshot (see PENDING_BYTES_MAX)
    restored_reference_id: str | None = None
    last_seen: float = 0.0
    dirty: bool = False
    cluster_id: str | None = None  # the Kafka cluster its offsets refer to
    shadow: ShadowBook | None = None  # shadow candidates paired with this (live) model
    joins: JoinStore | None = None  # predictions waiting for labels (once labels are on)
    concept: ConceptMonitor | None = None  # labelled window and concept alerts
    upstream: UpstreamSchema = field(default_factory=UpstreamSchema)  # for change detection

    @property
    def key(self) -> str:
        """State key: one state per model and source partition."""
        return state_key(self.model, self.partition)

    @property
    def alerts_firing(self) -> int:
        shadows = sum(p.firing for p in self.shadow.candidates.values()) if self.shadow else 0
        n = len(self.monitor.firing_keys) if self.monitor is not None else 0
        return n + shadows + (len(self.concept.firing_keys) if self.concept is not None else 0)

    def firing_alerts(self) -> list[tuple[str, str]]:
        """(kind, feature) of every alert of this state firing now: the monitor's, the
        label join's (concept) and the shadow candidates' (feature = candidate)."""
        out = self.monitor.firing_alerts() if self.monitor is not None else []
        if self.concept is not None:
            out += self.concept.firing_alerts()
        if self.shadow is not None:
            out += [("shadow", name) for name, p in self.shadow.candidates.items() if p.firing]
        return out

    def last_offset(self, topic: str, partition: int) -> int:
        return self.offsets.get(f"{topic}:{partition}", -1)

    def mark(self, topic: str, partition: int, offset: int) -> None:
        key = f"{topic}:{partition}"
        if offset > self.offsets.get(key, -1):
            self.offsets[key] = offset

    # -- reference building from the first N events ------------------------------------
    def buffer_for_reference(self, batch: EventBatch, nbytes: int | None = None) -> None:
        """Buffer ``batch`` (``nbytes``: its :func:`pending_bytes`, when known)."""
        self.pending_reference.append(batch)
        self.pending_rows += len(batch)
        self.pending_bytes += pending_bytes(batch) if nbytes is None else nbytes

    def build_reference(self, *, bins: int, max_features: int | None = None) -> ReferenceProfile:
        """Profile the buffered events (first N of the model) into its reference.

        Each decode call caps a model's distinct features, but the buffered batches may each
        bring new names: only the first ``max_features`` names seen become columns (events'
        other features are then ignored, as for any feature missing from a reference).
        """
        batches = self.pending_reference
        names: list[str] = []
        seen: set[str] = set()
        for b in batches:
            for n in b.feature_names:
                if n not in seen and (max_features is None or len(names) < max_features):
                    seen.add(n)
                    names.append(n)
        cols: dict[str, list[Any]] = {n: [] for n in names}
        preds: list[Any] = []
        for b in batches:
            idx = {n: i for i, n in enumerate(b.feature_names)}
            for n in names:
                i = idx.get(n)
                if i is None:
                    cols[n] += [None] * len(b)
                    continue
                num = b.numeric[:, i]
                if b.text is not None and any(t is not None for t in b.text[:, i].tolist()):
                    cols[n] += [t if t is not None else (None if np.isnan(v) else float(v))
                                for t, v in zip(b.text[:, i].tolist(), num.tolist(), strict=True)]
                else:
                    cols[n] += [None if np.isnan(v) else float(v) for v in num.tolist()]
            if b.prediction_label is not None:
                preds += b.prediction_label.tolist()
            else:
                preds += b.prediction_score.tolist()
        columns = {n: _column(v) for n, v in cols.items()}
        pred = _column(preds)
        has_pred = any(p is not None and not (isinstance(p, float) and np.isnan(p)) for p in preds)
        version = next((v for b in batches for v in b.model_version.tolist() if v), None)
        ts = [float(np.nanmax(b.ts)) for b in batches if np.isfinite(b.ts).any()]
        self.pending_reference, self.pending_rows, self.pending_bytes = [], 0, 0
        # created_at from the events, so a rebuild after a restart gives the same reference id
        return build_profile(
            self.model, columns, prediction=pred if has_pred else None, model_version=version,
            source="first-events", bins=bins, created_at=max(ts) if ts else 0.0,
        )

    # -- snapshot ----------------------------------------------------------------------
    def snapshot(self, *, key: bytes | None = None) -> bytes:
        """The whole state as one record (the label-join store inside it)."""
        meta, arrays = self._parts()
        if self.joins is not None:
            arrays["joins"] = np.frombuffer(self.joins.snapshot(), dtype=np.uint8)
        return pack(SNAPSHOT_KIND, meta, arrays, key=key)

    def snapshot_records(self, *, key: bytes | None = None) -> SnapshotRecords:
        """The state as the worker writes it: the label-join store as records of its own
        (:meth:`JoinStore.snapshot_records`), each entry written about once rather than
        the whole store every time. Chunk records go under ``<state key>/joins/<name>``."""
        meta, arrays = self._parts()
        chunks: dict[str, bytes] = {}
        dropped: list[str] = []
        if self.joins is not None:
            recs = self.joins.snapshot_records(key=key, owner=self.key)
            arrays["joins.records"] = np.frombuffer(recs.store, dtype=np.uint8)
            chunks = {join_record_key(self.key, n): b for n, b in recs.chunks.items()}
            dropped = [join_record_key(self.key, n) for n in recs.dropped]
        return SnapshotRecords(pack(SNAPSHOT_KIND, meta, arrays, key=key), chunks, dropped)

    def sealed_chunk_records(self, *, key: bytes | None = None) -> dict[str, bytes]:
        """Label-join chunk records sealed since the last ones, by state-topic key
        (:meth:`JoinStore.sealed_chunk_records`): written between snapshots."""
        if self.joins is None or not self.joins.chunks_due():
            return {}
        recs = self.joins.sealed_chunk_records(key=key, owner=self.key)
        return {join_record_key(self.key, n): b for n, b in recs.items()}

    def _parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta: dict[str, Any] = {
            "model": self.model,
            "partition": self.partition,
            "cluster": self.cluster_id,
            "offsets": self.offsets,
            "events_applied": self.events_applied,
            "events_deadlettered": self.events_deadlettered,
            "events_late": self.events_late,
            "alerts_fired": self.alerts_fired,
            "reference_id": self.reference.reference_id if self.reference else None,
            "pending": [_batch_rows(b) for b in self.pending_reference],
            "upstream": self.upstream.to_dict(),
        }
        arrays: dict[str, np.ndarray] = {}
        if self.monitor is not None:
            arrays["monitor"] = np.frombuffer(self.monitor.snapshot(), dtype=np.uint8)
        if self.shadow is not None:
            arrays["shadow"] = np.frombuffer(self.shadow.snapshot(), dtype=np.uint8)
        if self.concept is not None:
            arrays["concept"] = np.frombuffer(self.concept.snapshot(), dtype=np.uint8)
        return meta, arrays

    @classmethod
    def restore(
        cls,
        data: bytes,
        reference: ReferenceProfile | None,
        config: MonitorConfig,
        *,
        key: bytes | None = None,
        shadow: ShadowConfig | None = None,
        records: Callable[[str], bytes | None] | None = None,
        record_keys: Callable[[str], list[str]] | None = None,
    ) -> ModelState:
        """Rebuild a model's state; the reference comes from the references topic
        (``shadow``: the shadow-mode settings, when they differ from the snapshot's;
        ``records``: the state topic's records by key, for a label-join store written
        as records; ``record_keys(prefix)``: the state topic's keys with that prefix, to
        drop chunk records of this state that its snapshot does not name)."""
        meta, arrays, _ = unpack(data, SNAPSHOT_KIND, key=key)
        try:
            model = meta["model"]
            if not isinstance(model, str) or not model:
                raise ValueError("model must be a non-empty string")
            rid = meta.get("reference_id")
            if rid is not None and not isinstance(rid, str):
                raise ValueError("reference_id must be a string or null")
            st = cls(
                model=model,
                partition=_int64(meta.get("partition", -1), "partition", -1),
                cluster_id=meta.get("cluster") if isinstance(meta.get("cluster"), str) else None,
                offsets={str(k): _int64(v, "offset", -1) for k, v in meta["offsets"].items()},
                events_applied=_int64(meta["events_applied"], "events_applied"),
                events_deadlettered=_int64(meta["events_deadlettered"], "events_deadlettered"),
                events_late=_int64(meta.get("events_late", 0), "events_late"),
                alerts_fired=_int64(meta.get("alerts_fired", 0), "alerts_fired"),
                restored_reference_id=rid,
                upstream=UpstreamSchema.from_dict(meta.get("upstream")),
            )
            pending = meta.get("pending", [])
            if not isinstance(pending, list):
                raise ValueError("pending must be a list")
            for rows in pending:
                st.buffer_for_reference(_rows_batch(st.model, rows))
            if "shadow" in arrays:
                st.shadow = ShadowBook.restore(arrays["shadow"].tobytes(), shadow)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                IndexError) as exc:
            raise SnapshotError(f"malformed model snapshot: {type(exc).__name__}: "
                                f"{str(exc)[:200]}") from None
        if "joins" in arrays:
            st.joins = JoinStore.from_snapshot(arrays["joins"].tobytes())
        elif "joins.records" in arrays:
            if records is None:
                raise SnapshotError("the label-join store is in records of its own: "
                                    "restoring needs the state topic")
            load, owner = records, st.key
            st.joins = JoinStore.from_records(arrays["joins.records"].tobytes(),
                                              lambda n: load(join_record_key(owner, n)), key=key,
                                              owner=owner)
        if st.joins is not None and record_keys is not None:
            drop_leftover_chunks(st.key, st.joins, record_keys)
        if "concept" in arrays:
            st.concept = ConceptMonitor.from_snapshot(arrays["concept"].tobytes())
        rid = meta.get("reference_id")
        if reference is not None and rid == reference.reference_id:
            st.reference = reference
            if "monitor" in arrays:
                st.monitor, _ = ModelMonitor.from_snapshot(reference, arrays["monitor"].tobytes())
            else:
                st.monitor = ModelMonitor(reference, config)
        return st


def _column(values: list[Any]) -> Any:
    if all(v is None or isinstance(v, float) for v in values):
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.asarray(values, dtype=object)


#: Largest auto-reference buffer (its estimated size in the snapshot, which the state
#: topic takes up to 16 MiB): a model with wide events builds its reference from fewer
#: than ``auto_reference_events`` events (about 2,000 with 200 numeric features), and
#: feature names that change from event to event cannot grow the buffer without bound.
PENDING_BYTES_MAX = 8 * 1024 * 1024


def pending_bytes(b: EventBatch) -> int:
    """About how many bytes ``_batch_rows(b)`` takes as JSON: a full-precision number
    per numeric cell, ``null`` or the string per text cell, ~100 bytes of the rest."""
    cells = len(b) * len(b.feature_names)
    size = 20 * cells + 100 * len(b)
    if b.text is not None:
        size += 5 * cells + sum(len(t) for t in b.text.ravel().tolist() if t is not None)
    return size


def _batch_rows(b: EventBatch) -> dict[str, Any]:
    """A pending (pre-reference) batch as plain JSON (bounded by auto_reference_events)."""
    return {
        "names": list(b.feature_names),
        "numeric": [[None if v != v else v for v in row] for row in b.numeric.tolist()],
        "text": None if b.text is None else b.text.tolist(),
        "score": [None if np.isnan(v) else v for v in b.prediction_score.tolist()],
        "label": None if b.prediction_label is None else b.prediction_label.tolist(),
        "version": b.model_version.tolist(),
        "ts": [None if v != v else v for v in b.ts.tolist()],
    }


def _int64(v: Any, what: str, low: int = 0) -> int:
    """A snapshot integer that the next snapshot can write again (int64, >= ``low``)."""
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v < 2**63:
        shown = repr(v)[:40] if isinstance(v, int | float | str) else type(v).__name__
        raise ValueError(f"{what} must be an integer in [{low}, 2**63), not {shown}")
    return v


def _strs(values: Any, n: int, what: str) -> list[Any]:
    """``n`` values, each a string or null (text cells, labels, versions)."""
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"{what} must be a list of {n} values")
    if not all(v is None or isinstance(v, str) for v in values):
        raise ValueError(f"{what} must hold strings or nulls")
    return values


def _floats(values: Any, n: int, what: str) -> Any:
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"{what} must be a list of {n} values")
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _rows_batch(model: str, d: dict[str, Any]) -> EventBatch:
    """A pending batch from its JSON form; ValueError unless every shape agrees."""
    if not isinstance(d, dict):
        raise ValueError("a pending batch must be an object")
    names = tuple(d["names"])
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError("pending feature names must be distinct strings")
    rows = d["numeric"]
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == len(names)
                                             for r in rows):
        raise ValueError("pending rows must be lists of one value per feature")
    n = len(rows)
    numeric = np.asarray([[np.nan if v is None else float(v) for v in row] for row in rows],
                         dtype=np.float64).reshape(n, len(names))
    text = None
    if d.get("text") is not None:
        cells = d["text"]
        if not isinstance(cells, list) or len(cells) != n:
            raise ValueError(f"pending text must have {n} rows")
        text = np.asarray([_strs(r, len(names), "a pending text row") for r in cells],
                          dtype=object).reshape(n, len(names))
    label = None if d.get("label") is None else np.asarray(
        _strs(d["label"], n, "pending labels"), dtype=object)
    none = np.full(n, None, dtype=object)
    return EventBatch(
        model=model, feature_names=names, numeric=numeric, text=text,
        ts=_floats(d.get("ts") or [None] * n, n, "pending ts"),
        prediction_score=_floats(d["score"], n, "pending scores"),
        prediction_label=label, event_id=none,
        model_version=np.asarray(_strs(d["version"], n, "pending versions"), dtype=object),
        segment=none.copy(), latency_ms=np.full(n, np.nan), partition=np.full(n, -1, np.int64),
        offset=np.full(n, -1, np.int64),
    )


@dataclass(frozen=True)
class SnapshotRecords:
    """A model's state as records: the ``snapshot`` (keyed by the state key), the
    label-join chunk records it names (by key: acknowledged before it), and the keys of
    chunk records to delete once it is acknowledged."""

    snapshot: bytes
    chunks: dict[str, bytes]
    dropped: list[str]


def drop_leftover_chunks(state: str, joins: JoinStore,
                         record_keys: Callable[[str], list[str]]) -> None:
    """Have ``joins`` delete the chunk records of the state ``state`` that it does not
    name (left by a writer that stopped before deleting them), and name its own next
    chunks past them. Only names of the chunk pattern: never another model's keys."""
    prefix = join_record_key(state, "")
    named = set(joins.chunk_names())
    joins.drop_chunks([n for k in record_keys(prefix)
                       if is_chunk_name(n := k[len(prefix):]) and n not in named])


def join_record_key(state: str, name: str) -> str:
    """Key of a label-join chunk record of the state ``state`` (``model@p/joins/...``:
    never a state key, which ends in ``@<partition>``)."""
    return f"{state}/joins/{name}"


def state_key(model: str, partition: int) -> str:
    """``model@partition``: a model whose events arrive on several partitions (unkeyed or
    mis-keyed producers) gets one independent state per partition, so no two workers ever
    write the same state."""
    return f"{model}@{partition}"


def now() -> float:
    return time.time()
