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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.errors import SnapshotError
from driftline.detectors.serialization import pack, unpack

SNAPSHOT_KIND = "driftline.labeljoin"
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
        a, b = asdict(self), asdict(other)
        return {k: a[k] - b[k] for k in a}

    def copy(self) -> JoinCounts:
        return JoinCounts(**asdict(self))

    @property
    def coverage(self) -> float:
        """Joined share of the predictions whose fate is known (joined, expired, evicted)."""
        done = self.joined + self.expired + self.evicted
        return self.joined / done if done else math.nan


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


class _Rows:
    """Accumulates joined rows of one call."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.score: list[float] = []
        self.pred: list[str | None] = []
        self.label: list[str] = []
        self.pts: list[float] = []
        self.lts: list[float] = []

    def add(self, eid: str, score: float, pred: str | None, label: str, pts: float,
            lts: float) -> None:
        self.ids.append(eid)
        self.score.append(score)
        self.pred.append(pred)
        self.label.append(label)
        self.pts.append(pts)
        self.lts.append(lts)

    def done(self) -> Joined:
        return Joined(tuple(self.ids), np.asarray(self.score, dtype=np.float64),
                      tuple(self.pred), tuple(self.label),
                      np.asarray(self.pts, dtype=np.float64), np.asarray(self.lts, dtype=np.float64))


class JoinStore:
    """Predictions waiting for labels and labels waiting for predictions, both bounded."""

    def __init__(self, config: JoinConfig | None = None) -> None:
        self.config = config or JoinConfig()
        self.counts = JoinCounts()
        self.watermark = -math.inf  # newest event time seen on either stream
        # OrderedDict: dropping the oldest entry is O(1) (a plain dict rescans its deleted head)
        self._pred: OrderedDict[str, tuple[float, str | None, float]] = OrderedDict()
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._gone: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pred)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the two streams ---------------------------------------------------------------
    def add_predictions(self, event_ids: Sequence[object], scores: Sequence[float],
                        predicted: Sequence[str | None] | None, ts: Sequence[float]) -> Joined:
        """Take predictions in (rows without a string event id are ignored); returns the
        rows that joined labels already pending."""
        rows = _Rows()
        ttl, cfg = self.config.ttl_seconds, self.config
        pred_store, pending, gone, c = self._pred, self._pending, self._gone, self.counts
        classes: Sequence[str | None] = predicted if predicted is not None else [None] * len(ts)
        n = 0
        for eid, score, p, t in zip(event_ids, scores, classes, ts, strict=True):
            if type(eid) is not str:
                continue
            n += 1
            if t != t:  # no event time
                t = self._time(t)
            if pending and eid in pending:
                label, lt = pending.pop(eid)
                if lt - t > ttl:
                    c.late += 1
                else:
                    c.joined += 1
                    rows.add(eid, float(score), p, label, float(t), lt)
                self._forget(eid, _JOINED)
                continue
            if eid in gone:
                del gone[eid]
            if eid in pred_store:  # a repeated id: the newest prediction counts
                del pred_store[eid]
            pred_store[eid] = (float(score), p, float(t))
        c.predictions += n
        while len(pred_store) > cfg.max_entries:
            old, _ = pred_store.popitem(last=False)
            c.evicted += 1
            self._forget(old, _EVICTED)
        self._advance(ts)
        return rows.done()

    def add_labels(self, event_ids: Sequence[str], labels: Sequence[str],
                   ts: Sequence[float]) -> Joined:
        """Take labels in (canonical strings); returns the rows that joined."""
        rows = _Rows()
        ttl, cfg = self.config.ttl_seconds, self.config
        pred_store, pending, gone, c = self._pred, self._pending, self._gone, self.counts
        for i, eid in enumerate(event_ids):
            c.labels += 1
            lt = self._time(float(ts[i]))
            label = labels[i]
            hit = pred_store.pop(eid, None)
            if hit is not None:
                score, p, t = hit
                if lt - t > ttl:
                    c.late += 1
                else:
                    c.joined += 1
                    rows.add(eid, score, p, label, t, lt)
                self._forget(eid, _JOINED)
                continue
            why = gone.get(eid)
            if why is not None:
                if why == _EXPIRED:
                    c.late += 1
                else:  # its prediction was evicted, or a second label for one already joined
                    c.unmatched += 1
                continue
            if pending.pop(eid, None) is not None:  # a repeated label: the newest waits
                c.unmatched += 1
            pending[eid] = (label, lt)
            if len(pending) > cfg.max_pending:
                pending.popitem(last=False)
                c.unmatched += 1
        self._advance(ts)
        return rows.done()

    # -- time --------------------------------------------------------------------------
    def _time(self, t: float) -> float:
        """A row's event time; rows without one take the current event time."""
        if math.isfinite(t):
            return t
        return self.watermark if math.isfinite(self.watermark) else math.nan

    def _advance(self, ts: Sequence[float]) -> None:
        arr = np.asarray(ts, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size:
            self.watermark = max(self.watermark, float(finite.max()))
        self.expire()

    def expire(self) -> None:
        """Drop predictions and pending labels older than the TTL (oldest first: entries
        are visited in arrival order, so one that arrived out of order waits its turn)."""
        if not math.isfinite(self.watermark):
            return
        cutoff = self.watermark - self.config.ttl_seconds
        pred_store, pending, c = self._pred, self._pending, self.counts
        while pred_store:
            eid = next(iter(pred_store))
            if pred_store[eid][2] >= cutoff:  # NaN (no time known when it came): expires
                break
            del pred_store[eid]
            c.expired += 1
            self._forget(eid, _EXPIRED)
        while pending:
            eid = next(iter(pending))
            if pending[eid][1] >= cutoff:
                break
            del pending[eid]
            c.unmatched += 1

    def _forget(self, eid: str, why: int) -> None:
        gone = self._gone
        gone.pop(eid, None)
        gone[eid] = why
        if len(gone) > self.config.max_entries:
            gone.popitem(last=False)

    def reconfigure(self, config: JoinConfig) -> None:
        """New bounds; entries beyond them leave as evicted / unmatched."""
        self.config = config
        while len(self._pred) > config.max_entries:
            old, _ = self._pred.popitem(last=False)
            self.counts.evicted += 1
            self._forget(old, _EVICTED)
        while len(self._pending) > config.max_pending:
            self._pending.popitem(last=False)
            self.counts.unmatched += 1
        while len(self._gone) > config.max_entries:
            self._gone.popitem(last=False)
        self.expire()

    # -- state -------------------------------------------------------------------------
    def snapshot(self, *, key: bytes | None = None) -> bytes:
        pred_ids = list(self._pred)
        pv = list(self._pred.values())
        pend_ids = list(self._pending)
        qv = list(self._pending.values())
        arrays: dict[str, np.ndarray] = {}
        _put_strs(arrays, "pred.id", pred_ids)
        _put_strs(arrays, "pred.class", [v[1] for v in pv])
        arrays["pred.score"] = np.asarray([v[0] for v in pv], dtype=np.float64)
        arrays["pred.ts"] = np.asarray([v[2] for v in pv], dtype=np.float64)
        _put_strs(arrays, "pending.id", pend_ids)
        _put_strs(arrays, "pending.label", [v[0] for v in qv])
        arrays["pending.ts"] = np.asarray([v[1] for v in qv], dtype=np.float64)
        _put_strs(arrays, "gone.id", list(self._gone))
        arrays["gone.why"] = np.asarray(list(self._gone.values()), dtype=np.int8)
        meta = {"config": asdict(self.config), "counts": asdict(self.counts),
                "watermark": self.watermark if math.isfinite(self.watermark) else None}
        return pack(SNAPSHOT_KIND, meta, arrays, key=key)

    @classmethod
    def from_snapshot(cls, data: bytes, *, key: bytes | None = None) -> JoinStore:
        meta, arrays, _ = unpack(data, SNAPSHOT_KIND, key=key)
        try:
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
            ids = _get_strs(arrays, "pred.id")
            cls_ = _get_strs(arrays, "pred.class")
            score, ts = arrays["pred.score"], arrays["pred.ts"]
            _same_length(ids, cls_, score, ts)
            store._pred = OrderedDict((i, (float(s), c, float(t))) for i, c, s, t in
                                      zip(ids, cls_, score.tolist(), ts.tolist(), strict=True))
            pids = _get_strs(arrays, "pending.id")
            labels = _get_strs(arrays, "pending.label")
            pts = arrays["pending.ts"]
            _same_length(pids, labels, pts)
            if any(lab is None for lab in labels):
                raise ValueError("pending labels cannot be null")
            store._pending = OrderedDict((i, (str(lab), float(t))) for i, lab, t in
                                         zip(pids, labels, pts.tolist(), strict=True))
            gids, why = _get_strs(arrays, "gone.id"), arrays["gone.why"]
            _same_length(gids, why)
            if not np.isin(why, (_EXPIRED, _EVICTED, _JOINED)).all():
                raise ValueError("bad reason codes")
            store._gone = OrderedDict(zip(gids, (int(w) for w in why.tolist()), strict=True))
            if any(i is None for i in (*store._pred, *store._pending, *store._gone)):
                raise ValueError("ids cannot be null")
            if (len(store._pred) != len(ids) or len(store._pending) != len(pids)
                    or len(store._gone) != len(gids)):
                raise ValueError("repeated ids")
            if (len(ids) > store.config.max_entries or len(pids) > store.config.max_pending
                    or len(gids) > store.config.max_entries):
                raise ValueError("more entries than the bounds allow")
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise SnapshotError(f"malformed label join snapshot: {exc!r}") from None
        return store


def _put_strs(arrays: dict[str, np.ndarray], name: str, values: Sequence[str | None]) -> None:
    """Strings (or None) as one UTF-8 byte array plus lengths (-1 = None)."""
    enc = [None if v is None else v.encode("utf-8", "surrogatepass") for v in values]
    arrays[f"{name}.bytes"] = np.frombuffer(b"".join(e for e in enc if e is not None),
                                            dtype=np.uint8)
    arrays[f"{name}.len"] = np.asarray([-1 if e is None else len(e) for e in enc], dtype=np.int64)


def _get_strs(arrays: dict[str, np.ndarray], name: str) -> list[Any]:
    raw = arrays[f"{name}.bytes"]
    lens = arrays[f"{name}.len"]
    if raw.dtype != np.uint8 or lens.dtype != np.int64 or raw.ndim != 1 or lens.ndim != 1:
        raise ValueError(f"bad string arrays {name!r}")
    if (lens < -1).any() or int(lens[lens > 0].sum()) != raw.size:
        raise ValueError(f"string lengths of {name!r} do not match their bytes")
    data = raw.tobytes()
    out: list[str | None] = []
    pos = 0
    for n in lens.tolist():
        if n < 0:
            out.append(None)
            continue
        out.append(data[pos:pos + n].decode("utf-8", "surrogatepass"))
        pos += n
    return out


def _same_length(*cols: Any) -> None:
    sizes = {len(c) for c in cols}
    if len(sizes) != 1:
        raise ValueError("columns of different lengths")
