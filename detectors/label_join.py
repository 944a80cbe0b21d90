"""Bounded join of delayed labels to earlier predictions, by ``event_id``, in event time.

:class:`JoinStore` keeps the predictions of one model that carry an ``event_id``
(score, predicted class, event time) until their label arrives, at most
``max_entries`` of them (the oldest are dropped and counted ``evicted``) and at most
``ttl_seconds`` of event time (older ones are dropped and counted ``expired``).
Event time is the newest ``ts`` seen on either stream. A label that finds its
prediction gives one joined row (prediction, label, delay); a label whose prediction
has not arrived yet waits in a small pending buffer (``max_pending``, same TTL), so
the order of the two streams does not matter. Nothing is lost silently: a label that
never finds its prediction (pending past the TTL, pushed out of the pending buffer,
a duplicate, or its prediction was evicted) counts ``unmatched``; a label more than
``ttl_seconds`` after its prediction (or after that prediction expired) counts ``late``.

Ids of predictions that left the store are remembered in a bounded FIFO (as many as
``max_entries``), so a late label is told apart from one that never had a prediction.
Labels are canonical strings (:func:`canonical_label`). Snapshots are exact (plain
arrays, see :mod:`~driftline.detectors.serialization`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.errors import SnapshotError
from driftline.detectors.join_chunks import CHUNK_ENTRIES, ChunkBook
from driftline.detectors.join_fifo import Fifo
from driftline.detectors.join_ids import HexIds, Ids, Slots, hex_ids
from driftline.detectors.serialization import get_strs, pack, put_strs, unpack

FloatArray = NDArray[np.float64]
SNAPSHOT_KIND = "driftline.labeljoin"
RECORDS_KIND = "driftline.labeljoin.records"
#: Bounded reasons of labels (and predictions) that never joined.
UNMATCHED_REASONS = ("unmatched", "late", "expired", "evicted")
_EXPIRED, _EVICTED, _JOINED = 0, 1, 2  # why an id left the store


def canonical_label(v: object) -> str:
    """One spelling per class: bools and ``"true"``/``"false"`` -> ``"1"``/``"0"``,
    integral numbers without a fraction (``1.0`` -> ``"1"``), other strings as they are."""
    if v is True or v == "true":
        return "1"
    if v is False or v == "false":
        return "0"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer() and abs(v) < 2**63:
            return str(int(v))
        return repr(v)
    return str(v)


def canonical_labels(values: Sequence[object]) -> list[str | None]:
    """:func:`canonical_label` of each value, None staying None (strings, ints and bools:
    one call per distinct value)."""
    if set(map(type, values)) <= _TABLE_TYPES:
        table = {v: None if v is None else canonical_label(v) for v in set(values)}
        return list(map(table.__getitem__, values))
    return [None if v is None else canonical_label(v) for v in values]


_TABLE_TYPES = {str, int, bool, type(None)}  # equal values of these have one canonical label


@dataclass(frozen=True)
class JoinConfig:
    """Bounds of one model's join store."""

    ttl_seconds: float = 86_400.0
    max_entries: int = 100_000
    max_pending: int = 10_000

    def __post_init__(self) -> None:
        t = self.ttl_seconds
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"ttl_seconds must be a positive number, not {t!r}")
        for name in ("max_entries", "max_pending"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000_000:
                raise ValueError(f"{name} must be an integer in [1, 1e8], not {v!r}")


@dataclass
class JoinCounts:
    """Cumulative counts of a join store."""

    predictions: int = 0  # predictions with an event_id taken in
    labels: int = 0  # labels taken in
    joined: int = 0
    unmatched: int = 0
    late: int = 0
    expired: int = 0
    evicted: int = 0

    def minus(self, other: JoinCounts) -> dict[str, int]:
        """Per-field difference (what one call added)."""
        a, b = self.__dict__, other.__dict__
        return {k: a[k] - b[k] for k in _COUNT_FIELDS}

    def copy(self) -> JoinCounts:
        return JoinCounts(**self.__dict__)

    @property
    def coverage(self) -> float:
        """Joined share of the predictions whose fate is known (joined, expired, evicted)."""
        done = self.joined + self.expired + self.evicted
        return self.joined / done if done else math.nan


_COUNT_FIELDS = tuple(JoinCounts.__dataclass_fields__)


@dataclass(frozen=True)
class Joined:
    """Joined rows, in the order they joined."""

    event_id: tuple[str, ...] = ()
    score: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    predicted: tuple[str | None, ...] = ()  # predicted class (canonical), when the model gave one
    label: tuple[str, ...] = ()  # canonical label
    prediction_ts: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    label_ts: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.event_id)

    @property
    def delay(self) -> NDArray[np.float64]:
        """Label time minus prediction time, seconds (NaN when either is unknown)."""
        return self.label_ts - self.prediction_ts


class JoinStore:
    """Predictions waiting for labels and labels waiting for predictions, both bounded."""

    def __init__(self, config: JoinConfig | None = None, *,
                 chunk_entries: int = CHUNK_ENTRIES) -> None:
        self.config = config or JoinConfig()
        self.counts = JoinCounts()
        self.watermark = -math.inf  # newest event time seen on either stream
        bound = self.config.max_entries
        self._pred = Fifo({"score": np.float64, "ts": np.float64, "cls": object}, bound)
        # OrderedDict: dropping the oldest entry is O(1) (a plain dict rescans its deleted head)
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._gone = Fifo({"why": np.int8}, bound)  # ids that left the store, and why
        # chunk records of both FIFOs (snapshot_records)
        self._books = {"pred": ChunkBook("pred", chunk_entries),
                       "gone": ChunkBook("gone", chunk_entries)}

    def __len__(self) -> int:
        return len(self._pred)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the two streams ---------------------------------------------------------------
    def add_predictions(self, event_ids: Sequence[object], scores: Sequence[float] | FloatArray,
                        predicted: Sequence[str | None] | None,
                        ts: Sequence[float] | FloatArray) -> Joined:
        """Take predictions in (rows without a string event id are ignored); returns the
        rows that joined labels already pending."""
        arr: NDArray[Any] | None = None  # the ids as an object array: faster to store
        ids: list[Any]
        if isinstance(event_ids, np.ndarray) and event_ids.dtype == object and event_ids.ndim == 1:
            arr, ids = event_ids, event_ids.tolist()
        else:
            ids = event_ids if isinstance(event_ids, list) else list(event_ids)
        n = len(ids)
        score = np.array(scores, dtype=np.float64)
        t = np.array(ts, dtype=np.float64)
        cls: list[Any] | None = None if predicted is None else list(predicted)
        if not n == score.size == t.size == (n if cls is None else len(cls)):
            raise ValueError("columns of different lengths")
        # all hex ids (so all str): kept as their bytes, unless the store turned to strings
        hexed = hex_ids(ids) if self._pred.keeps_bytes else None
        types: set[type] = {str} if hexed is not None else set(map(type, ids))
        plain = _plain_strs(ids, types)
        if plain is not None:
            ids, arr = plain, None
            hexed = hex_ids(ids) if self._pred.keeps_bytes else None
            types = set(map(type, ids))
        if hexed is None and types != {str}:
            keep = [i for i, e in enumerate(ids) if type(e) is str]
            ids = [ids[i] for i in keep]
            arr = None if arr is None else arr[keep]
            score, t = score[keep], t[keep]
            cls = None if cls is None else [cls[i] for i in keep]
            n = len(ids)
        nan = t != t
        if nan.any():  # no event time: the current one
            t[nan] = self.watermark if math.isfinite(self.watermark) else math.nan
        pending = self._pending
        rows: Joined | None = None
        batch: Ids = ids if hexed is None else hexed
        if not pending or pending.keys().isdisjoint(ids):
            self._store(batch, arr, score, cls, t, 0, n)
        else:  # labels that arrived first: join them, store the other rows around them
            rows = self._join_pending(ids, batch, arr, score, cls, t)
        self.counts.predictions += n
        extra = len(self._pred) - self.config.max_entries
        if extra > 0:
            self._leave(self._pred.pop_oldest(extra), _EVICTED)
        self._advance(ts)
        return rows if rows is not None else Joined()

    def _store(self, ids: Ids, arr: NDArray[Any] | None, score: NDArray[np.float64],
               cls: list[Any] | None, t: NDArray[np.float64], a: int, b: int) -> None:
        """Keep rows ``a..b``. An id taken in again may still be among the ids that left
        (``gone``): it stays there until it leaves again (then it moves to the newest end,
        with its new reason) or is pushed out; a label finds the stored prediction first."""
        if a >= b:
            return
        part = ids if a == 0 and b == len(ids) else ids[a:b]
        self._pred.append(part, {"score": score[a:b], "ts": t[a:b],
                                 "cls": None if cls is None else cls[a:b]},
                          None if arr is None else arr[a:b])

    def _join_pending(self, ids: list[str], batch: Ids, arr: NDArray[Any] | None,
                      score: NDArray[np.float64], cls: list[Any] | None,
                      t: NDArray[np.float64]) -> Joined:
        """Join the rows whose labels are pending; store the others (``batch``: the
        ids in the form they are stored)."""
        pending, ttl, c = self._pending, self.config.ttl_seconds, self.counts
        out: list[tuple[str, float, str | None, str, float, float]] = []
        hits = [i for i, eid in enumerate(ids) if eid in pending]
        # distinct ids: storing the other rows and forgetting the joined ones, each in one
        # go, is what row by row would do (storing takes nothing out of ``gone``, and the
        # joined ones enter it in the same order)
        at_once = len(set(ids)) == len(ids)
        start = 0
        for i in (hits if at_once else range(len(ids))):
            eid = ids[i]
            if not at_once:
                if eid not in pending:  # (the first of repeated ids takes the label)
                    continue
                self._store(batch, arr, score, cls, t, start, i)
                start = i + 1
            label, lt = pending.pop(eid)
            ti = float(t[i])
            if lt - ti > ttl:
                c.late += 1
            else:
                c.joined += 1
                out.append((eid, float(score[i]), None if cls is None else cls[i], label, ti, lt))
            if not at_once:
                self._forget([eid], _JOINED)
        if at_once:
            rest = np.ones(len(ids), dtype=bool)
            rest[hits] = False
            keep = np.flatnonzero(rest)
            self._store(_rows(batch, keep), None if arr is None else arr[keep], score[keep],
                        None if cls is None else [cls[i] for i in keep.tolist()], t[keep],
                        0, keep.size)
            self._forget(_rows(batch, np.asarray(hits, dtype=np.intp)), _JOINED)
        else:
            self._store(batch, arr, score, cls, t, start, len(ids))
        if not out:
            return Joined()
        e, s, p, lab, pt, lt_ = zip(*out, strict=True)
        return Joined(e, np.asarray(s, dtype=np.float64), p, lab,
                      np.asarray(pt, dtype=np.float64), np.asarray(lt_, dtype=np.float64))

    def add_labels(self, event_ids: Sequence[str], labels: Sequence[str],
                   ts: Sequence[float] | FloatArray) -> Joined:
        """Take labels in (canonical strings); returns the rows that joined."""
        ids = event_ids if isinstance(event_ids, list) else list(event_ids)
        n = len(ids)
        lt = np.array(ts, dtype=np.float64)
        if lt.size != n or len(labels) != n:
            raise ValueError("columns of different lengths")
        bad = ~np.isfinite(lt)
        if bad.any():  # no event time: the current one
            lt[bad] = self.watermark if math.isfinite(self.watermark) else math.nan
        self.counts.labels += n
        pred = self._pred
        # hex or UUID ids: converted once, for both FIFOs (unless both keep strings)
        hexed = hex_ids(ids) if pred.keeps_bytes or self._gone.keeps_bytes else None
        plain = None if hexed is not None else _plain_strs(ids, set(map(type, ids)))
        if plain is not None:
            ids = plain
            hexed = hex_ids(ids) if pred.keeps_bytes or self._gone.keeps_bytes else None
        batch: Ids = ids if hexed is None else hexed
        hit, pos = pred.pop_many(batch)
        hits = np.flatnonzero(hit)
        pt = pred.cols["ts"][pos]
        late = lt[hits] - pt > self.config.ttl_seconds
        nlate = int(late.sum())
        self.counts.late += nlate
        self.counts.joined += hits.size - nlate
        if hits.size == n:
            self._forget(batch, _JOINED)
        else:
            self._misses(ids, batch, labels, lt, hit)
        ok = np.flatnonzero(~late)
        if ok.size == hits.size:
            jpos, jrows = pos, hits
        else:
            jpos, jrows = pos[ok], hits[ok]
        out = Joined()
        if jrows.size:
            rows = jrows.tolist()
            out = Joined(tuple(ids[i] for i in rows), pred.cols["score"][jpos],
                         tuple(pred.cols["cls"][jpos].tolist()), tuple(labels[i] for i in rows),
                         pred.cols["ts"][jpos], lt[jrows])
        self._advance(ts)
        return out

    def _misses(self, ids: list[str], batch: Ids, labels: Sequence[str],
                lt: NDArray[np.float64], hit: NDArray[np.bool_]) -> None:
        """Labels without a stored prediction, in order (the joined ones before each are
        forgotten first, as their ids push the oldest out of the bounded ``gone``);
        ``batch``: the ids as :meth:`add_labels` converted them."""
        cfg, pending, gone, c = self.config, self._pending, self._gone, self.counts
        misses = np.flatnonzero(~hit).tolist()
        # up to the first joined label nothing changes ``gone``: one lookup for those misses
        first = int(np.argmax(hit)) if hit.any() else len(ids)
        early = gone.get_many(_rows(batch, np.asarray([i for i in misses if i < first],
                                                      dtype=np.intp))).tolist()
        start = 0
        for k, i in enumerate(misses):
            if start < i:
                self._forget(batch[start:i], _JOINED)
            start = i + 1
            eid = ids[i]
            g = (early[k] if early[k] >= 0 else None) if i < first else gone.get(eid)
            if g is not None:
                if gone.cols["why"][g] == _EXPIRED:
                    c.late += 1
                else:  # its prediction was evicted, or a second label for one already joined
                    c.unmatched += 1
                continue
            if pending.pop(eid, None) is not None:  # a repeated label: the newest waits
                c.unmatched += 1
            pending[eid] = (labels[i], float(lt[i]))
            if len(pending) > cfg.max_pending:
                pending.popitem(last=False)
                c.unmatched += 1
        if start < len(ids):
            self._forget(batch[start:], _JOINED)

    # -- time --------------------------------------------------------------------------
    def _advance(self, ts: Sequence[float] | FloatArray) -> None:
        arr = np.asarray(ts, dtype=np.float64)
        if arr.size:
            hi = float(arr.max())
            if not math.isfinite(hi):  # NaN or infinite times among them
                finite = arr[np.isfinite(arr)]
                hi = float(finite.max()) if finite.size else -math.inf
            self.watermark = max(self.watermark, hi)
        self.expire()

    def expire(self) -> None:
        """Drop predictions and pending labels older than the TTL (oldest first: entries
        are visited in arrival order, so one that arrived out of order waits its turn)."""
        if not math.isfinite(self.watermark):
            return
        cutoff = self.watermark - self.config.ttl_seconds
        pending, c = self._pending, self.counts
        if len(self._pred):
            self._leave(self._pred.pop_before("ts", cutoff), _EXPIRED)
        while pending:
            eid = next(iter(pending))
            if pending[eid][1] >= cutoff:
                break
            del pending[eid]
            c.unmatched += 1

    def _leave(self, pos: NDArray[np.intp], why: int) -> None:
        """Predictions (array indices) that left the store unjoined: count, remember."""
        if not pos.size:
            return
        if why == _EVICTED:
            self.counts.evicted += pos.size
        else:
            self.counts.expired += pos.size
        self._forget(self._pred.batch_at(pos), why)

    def _forget(self, ids: Ids, why: int) -> None:
        """Remember why these ids left (the newest reason counts; at most max_entries)."""
        gone = self._gone
        gone.append(ids, {"why": why})
        extra = len(gone) - self.config.max_entries
        if extra > 0:
            gone.pop_oldest(extra)

    def reconfigure(self, config: JoinConfig) -> None:
        """New bounds; entries beyond them leave as evicted / unmatched."""
        self.config = config
        self._pred.bound = self._gone.bound = config.max_entries
        extra = len(self._pred) - config.max_entries
        if extra > 0:
            self._leave(self._pred.pop_oldest(extra), _EVICTED)
        while len(self._pending) > config.max_pending:
            self._pending.popitem(last=False)
            self.counts.unmatched += 1
        extra = len(self._gone) - config.max_entries
        if extra > 0:
            self._gone.pop_oldest(extra)
        self.expire()

    # -- state -------------------------------------------------------------------------
    def snapshot(self, *, key: bytes | None = None) -> bytes:
        """The whole store as one record."""
        pred, gone = self._pred, self._gone
        pp, gp = pred.positions(), gone.positions()
        meta, pending = self._common()
        arrays = {**_pred_arrays(pred, pp, "pred."), **pending, **_gone_arrays(gone, gp, "gone.")}
        return pack(SNAPSHOT_KIND, meta, arrays, key=key)

    def snapshot_records(self, *, key: bytes | None = None, owner: str = "") -> StoreRecords:
        """The store as records (see :mod:`~driftline.detectors.join_chunks`): what is
        written grows with the entries taken in since the last records, not with the
        store. Write ``chunks`` (acknowledged) before ``store``; delete ``dropped`` once
        ``store`` is acknowledged. ``key`` signs the chunk records; the store record is
        meant to travel inside a signed record of its ``owner`` (a model snapshot; its
        name is in every chunk record, so one is never taken for another store's)."""
        meta, arrays = self._common()
        new: dict[str, bytes] = {}
        dropped: list[str] = []
        for name, fifo, enc in self._fifos():
            pos = fifo.positions()
            m, a, recs, drop = self._books[name].records(
                fifo.cols["seq"][pos], fifo.next_seq, partial(_encode_at, enc, fifo, pos), key,
                owner)
            meta[name] = m
            arrays.update({f"{name}.{k}": v for k, v in a.items()})
            new.update(recs)
            dropped += drop
        return StoreRecords(pack(RECORDS_KIND, meta, arrays), new, dropped)

    def _fifos(self) -> tuple[tuple[str, Fifo, Callable[[Fifo, Slots, str],
                                                       dict[str, NDArray[Any]]]], ...]:
        """Each FIFO written as chunk records: its name in them, itself, its encoder."""
        return (("pred", self._pred, _pred_arrays), ("gone", self._gone, _gone_arrays))

    def chunks_due(self) -> bool:
        """Whether a chunk was sealed since the last chunk records (cheap: two compares)."""
        return any(self._books[name].due(fifo.next_seq) is not None
                   for name, fifo, _ in self._fifos())

    def sealed_chunk_records(self, *, key: bytes | None = None, owner: str = ""
                             ) -> dict[str, bytes]:
        """Records of the chunks sealed since the last ones, by name, to write now: the
        next :meth:`snapshot_records` names them instead of writing them (they must be
        acknowledged before its store record), so the wait for acknowledgements before
        that record finds most of them done. Arguments as for :meth:`snapshot_records`."""
        new: dict[str, bytes] = {}
        for name, fifo, enc in self._fifos():
            book = self._books[name]
            span = book.due(fifo.next_seq)
            if span is not None:
                pos = fifo.positions_in(*span)
                new.update(book.seal(fifo.cols["seq"][pos], fifo.next_seq,
                                     partial(_encode_at, enc, fifo, pos), key, owner))
        return new

    def chunk_names(self) -> list[str]:
        """Names of the chunk records the next records may name (written, not dropped)."""
        return [name for b in self._books.values() for name, _ in b.written.values()]

    def drop_chunks(self, names: list[str]) -> None:
        """Chunk records no store needs (left by a writer that stopped between writing
        them and their tombstones): dropped with the next records, which name their new
        chunks past these (a name dropped must never be one just written)."""
        self._books["pred"].stale += names
        last = max((int(n.rsplit("/", 1)[1]) for n in names), default=-1)
        for book in self._books.values():
            book.writes = max(book.writes, last + 1)

    def rewrite_chunks(self) -> None:
        """The chunk records written so far may not be on the topic (their write failed,
        or the cluster lost them): the next records write every chunk again."""
        for book in self._books.values():
            book.rewrite()

    def _common(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        """Meta and pending labels: the part both forms of snapshot hold whole."""
        pend_ids = list(self._pending)
        qv = list(self._pending.values())
        arrays: dict[str, NDArray[Any]] = {}
        put_strs(arrays, "pending.id", pend_ids)
        put_strs(arrays, "pending.label", [v[0] for v in qv])
        arrays["pending.ts"] = np.asarray([v[1] for v in qv], dtype=np.float64)
        meta = {"config": asdict(self.config), "counts": asdict(self.counts),
                "watermark": self.watermark if math.isfinite(self.watermark) else None}
        return meta, arrays

    @classmethod
    def from_snapshot(cls, data: bytes, *, key: bytes | None = None) -> JoinStore:
        """A store from :meth:`snapshot`'s record."""
        meta, arrays, _ = unpack(data, SNAPSHOT_KIND, key=key)
        with _malformed("label join snapshot"):
            store = cls._from_common(meta, arrays)
            pred = _pred_columns(arrays, "pred.")
            gone = _gone_columns(arrays, "gone.")
            store._fill([pred], None, [gone], None)
        return store

    @classmethod
    def from_records(cls, data: bytes, load: Callable[[str], bytes | None], *,
                     key: bytes | None = None, owner: str = "") -> JoinStore:
        """A store from :meth:`snapshot_records`' store record; ``load(name)``: the chunk
        record of that name (None when it is missing), signed with ``key``, of
        ``owner``'s store."""
        meta, arrays, _ = unpack(data, RECORDS_KIND)
        with _malformed("label join records"):
            store = cls._from_common(meta, arrays)
            found: dict[str, tuple[list[dict[str, Any]], NDArray[np.int64], int]] = {}
            for name, dec in (("pred", _pred_columns), ("gone", _gone_columns)):
                part = {k[len(name) + 1:]: v for k, v in arrays.items()
                        if k.startswith(f"{name}.")}
                book, cols, seq, nxt = ChunkBook.restore(
                    name, meta[name], part, load, key, partial(dec, prefix=""), owner)
                store._books[name] = book
                found[name] = (cols, seq, nxt)
            store._fill(found["pred"][0], found["pred"][1:], found["gone"][0], found["gone"][1:])
        return store

    @classmethod
    def _from_common(cls, meta: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> JoinStore:
        store = cls(JoinConfig(**meta["config"]))
        counts = meta["counts"]
        if set(counts) != set(asdict(JoinCounts())):
            raise ValueError("unknown counts")
        for v in counts.values():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
                raise ValueError(f"bad count {v!r}")
        store.counts = JoinCounts(**counts)
        wm = meta["watermark"]
        if wm is not None and (isinstance(wm, bool) or not isinstance(wm, (int, float))
                               or not math.isfinite(wm)):
            raise ValueError("bad watermark")
        store.watermark = -math.inf if wm is None else float(wm)
        pts = arrays["pending.ts"]
        pids = get_strs(arrays, "pending.id", len(pts))
        labels = get_strs(arrays, "pending.label", len(pts))
        _same_length(pids, labels, pts)
        if any(lab is None for lab in labels) or any(i is None for i in pids):
            raise ValueError("pending ids and labels cannot be null")
        store._pending = OrderedDict((i, (str(lab), float(t))) for i, lab, t in
                                     zip(pids, labels, pts.tolist(), strict=True))
        if len(store._pending) != len(pids):
            raise ValueError("repeated ids")
        if len(pids) > store.config.max_pending:
            raise ValueError("more entries than the bounds allow")
        return store

    def _fill(self, pred: list[dict[str, Any]], pred_seq: tuple[NDArray[np.int64], int] | None,
              gone: list[dict[str, Any]], gone_seq: tuple[NDArray[np.int64], int] | None) -> None:
        """Take restored entries in (parts in order; numbered as given, or afresh)."""
        for fifo, parts, numbered in ((self._pred, pred, pred_seq), (self._gone, gone, gone_seq)):
            ids = [i for p in parts for i in p["id"]]
            if any(i is None for i in ids):
                raise ValueError("ids cannot be null")
            values: dict[str, Any] = {}
            for c in parts[0].keys() - {"id"}:  # lists (strings) joined, arrays concatenated
                vals = [p[c] for p in parts]
                values[c] = [v for part in vals for v in part] if isinstance(vals[0], list) \
                    else np.concatenate(vals)
            seqs = None if numbered is None else numbered[0]
            if seqs is not None and seqs.size != len(ids):
                raise ValueError("chunk entries and numbers differ in length")
            fifo.append(ids, values, seqs=seqs)
            if numbered is not None:
                fifo.next_seq = numbered[1]
            if len(fifo) != len(ids):
                raise ValueError("repeated ids")
            if len(ids) > self.config.max_entries:
                raise ValueError("more entries than the bounds allow")


def _rows(ids: Ids, rows: NDArray[np.intp]) -> Ids:
    """These rows of a batch of ids, in its form."""
    if isinstance(ids, HexIds):
        return HexIds(ids.keys[rows], ids.dashed)
    return [ids[i] for i in rows.tolist()]


@contextmanager
def _malformed(what: str) -> Iterator[None]:
    """Anything wrong in a snapshot's contents as a :class:`SnapshotError`."""
    try:
        yield
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError,
            IndexError) as exc:
        raise SnapshotError(f"malformed {what}: {exc!r}") from None


@dataclass(frozen=True)
class StoreRecords:
    """A join store as records: ``chunks`` by name (write them first), the ``store``
    record naming them, and the names of chunk records no longer needed."""

    store: bytes
    chunks: dict[str, bytes]
    dropped: list[str]


def _plain_strs(ids: list[Any], types: set[type]) -> list[Any] | None:
    """``ids`` (of these ``types``) with every instance of a str subclass (numpy's
    ``str_``, say) as the plain str it equals, kept and matched as that str; None when
    there is none."""
    if not any(t is not str and issubclass(t, str) for t in types):
        return None
    return [str.__str__(e) if isinstance(e, str) else e for e in ids]


def _encode_at(enc: Callable[[Fifo, Slots, str], dict[str, NDArray[Any]]],
               fifo: Fifo, pos: NDArray[np.intp], i: NDArray[np.intp]) -> dict[str, NDArray[Any]]:
    """``enc``'s arrays of the entries at ``pos[i]`` (no prefix: a chunk record's own).
    A sealed chunk is mostly one run of consecutive slots: then its columns are read as
    views (the record is packed at once, in one copy)."""
    at = pos[i]
    n = at.size
    # slots are in ring order: a run that wraps ends below its start
    if n and int(at[-1]) - int(at[0]) == n - 1:
        return enc(fifo, slice(int(at[0]), int(at[0]) + n), "")
    return enc(fifo, at, "")


def _pred_arrays(fifo: Fifo, pos: Slots, prefix: str) -> dict[str, NDArray[Any]]:
    arrays: dict[str, NDArray[Any]] = {}
    _put_ids(arrays, f"{prefix}id", fifo, pos)
    put_strs(arrays, f"{prefix}class", fifo.cols["cls"][pos].tolist())
    arrays[f"{prefix}score"] = fifo.cols["score"][pos]
    arrays[f"{prefix}ts"] = fifo.cols["ts"][pos]
    return arrays


def _gone_arrays(fifo: Fifo, pos: Slots, prefix: str) -> dict[str, NDArray[Any]]:
    arrays: dict[str, NDArray[Any]] = {}
    _put_ids(arrays, f"{prefix}id", fifo, pos)
    arrays[f"{prefix}why"] = fifo.cols["why"][pos]
    return arrays


def _put_ids(arrays: dict[str, NDArray[Any]], name: str, fifo: Fifo, pos: Slots) -> None:
    """The ids at ``pos`` as :func:`put_strs` writes them (hex ids straight from their bytes)."""
    if fifo.idcol is None:
        put_strs(arrays, name, [])
    else:
        fifo.idcol.put_strs(arrays, name, pos)


def _pred_columns(arrays: dict[str, NDArray[Any]], prefix: str) -> dict[str, Any]:
    score, ts = arrays[f"{prefix}score"], arrays[f"{prefix}ts"]
    n = len(score)
    ids, cls_ = get_strs(arrays, f"{prefix}id", n), get_strs(arrays, f"{prefix}class", n)
    _same_length(ids, cls_, score, ts)
    if score.dtype != np.float64 or ts.dtype != np.float64:
        raise ValueError("scores and times must be float64")
    return {"id": ids, "cls": cls_, "score": score, "ts": ts}


def _gone_columns(arrays: dict[str, NDArray[Any]], prefix: str) -> dict[str, Any]:
    why = arrays[f"{prefix}why"]
    ids = get_strs(arrays, f"{prefix}id", len(why))
    _same_length(ids, why)
    if not np.isin(why, (_EXPIRED, _EVICTED, _JOINED)).all():
        raise ValueError("bad reason codes")
    return {"id": ids, "why": why.astype(np.int8)}


def _same_length(*cols: Any) -> None:
    sizes = {len(c) for c in cols}
    if len(sizes) != 1:
        raise ValueError("columns of different lengths")
