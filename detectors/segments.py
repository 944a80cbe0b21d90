"""Per-segment windows of one model: which segment a row belongs to, and one ring each.

A row's segment value is its ``segment`` object restricted to the configured keys
(all keys when none are configured), written canonically as sorted ``k=v`` pairs
joined by commas (``region=eu,tier=gold``; ``%``, ``,`` and ``=`` are percent-escaped).
The first ``max_segments`` values a model shows get a ring of their own, in order of
first sight; rows of every later value are pooled into one ring labelled ``other``
(a label that cannot be a canonical value: those always contain ``=``) and counted.

Grouping is columnar: rows are factorised by segment object (decoders share one dict
among a batch's equal segments), and only the distinct objects are looked at in Python
(when there are many, per key ``dict.get`` is mapped over them and the per-key codes
are combined with ``np.unique``). Rows are then sorted by segment and pane once, and
one count over the batch (`binning.block_histograms`) gives the histograms of every
(segment, pane) block of the batch.

False alarms: segment rings hold only the per-column histograms and are tested against
the same reference with the same calibration. Once a model has segments, the model's
false-alarm budget per event is split in two: the overall window spends
``1 - SEGMENT_SHARE`` of it and the segment windows ``SEGMENT_SHARE``. A segment window's
evaluation spends that share in proportion to the segment's own new events, so all
segment evaluations together spend at most the share per event however many segments
there are (a traffic-weighted Bonferroni over segments on top of the per-column family).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.binning import block_histograms
from driftline.detectors.windows import Pane, PaneRing

try:  # built from detectors/_kernels.c when the package is installed with a C compiler
    from driftline.detectors import _kernels
except ImportError:  # pragma: no cover - exercised by installs without a compiler
    _kernels = None  # type: ignore[assignment]

#: Label of the ring that pools the segment values beyond ``max_segments``.
OTHER = "other"
#: The segment object alerts of the pooled ring carry.
OTHER_SEGMENT: dict[str, str] = {"other": "*"}
#: Share of a segmented model's false-alarm budget spent on its segment windows.
SEGMENT_SHARE = 0.5
_NONE = -1
_INT_MAX = np.iinfo(np.int64).max
#: Distinct segment objects up to which each is written out on its own (else columnar).
_FEW = 32
#: Segment values whose slot is remembered by their items (see ``Segments.known``), and
#: the longest such value (``repr`` of its items): a segment may hold 16 keys and values of
#: 1,024 characters each, so the memo is bounded in size, not only in count.
_KNOWN, _KNOWN_CHARS = 64, 512
#: Largest histogram block (cells) one count over the batch fills.
_HIST_CELLS = 1 << 20


def _esc(s: str) -> str:
    return s.replace("%", "%25").replace(",", "%2C").replace("=", "%3D")


def canonical(segment: Mapping[str, str], keys: tuple[str, ...] = ()) -> str:
    """``k=v,k2=v2`` over the sorted keys (only ``keys`` when given); ``""`` for none."""
    items = sorted((k, v) for k, v in segment.items() if not keys or k in keys)
    return ",".join(f"{_esc(k)}={_esc(v)}" for k, v in items)


def parse(label: str) -> dict[str, str]:
    """The segment object of a canonical value (``OTHER_SEGMENT`` for ``other``)."""
    if label == OTHER:
        return dict(OTHER_SEGMENT)
    out: dict[str, str] = {}
    for part in label.split(","):
        if not part:
            continue
        k, _, v = part.partition("=")
        out[_unesc(k)] = _unesc(v)
    return out


def _unesc(s: str) -> str:
    return s.replace("%3D", "=").replace("%2C", ",").replace("%25", "%")


@dataclass
class Segments:
    """The segment rings of one model, in order of first sight, plus the pooled one."""

    max_segments: int
    keys: tuple[str, ...]
    make_ring: Any  # () -> PaneRing
    labels: list[str] = field(default_factory=list)  # slot -> label ("other" last if used)
    rings: dict[str, PaneRing] = field(default_factory=dict)
    since_eval: dict[str, int] = field(default_factory=dict)  # events since last evaluation
    events: dict[str, int] = field(default_factory=dict)  # events ever applied, per label
    overflow_events: int = 0  # rows pooled into "other"
    last_events: dict[str, int] = field(default_factory=dict)  # per label, the last update
    #: slot by a segment object's items, for objects written out one by one (slots of
    #: seen values never change: rings are only added; not state, emptied on load)
    known: dict[tuple[tuple[Any, Any], ...], int] = field(default_factory=dict, repr=False,
                                                          compare=False)

    @property
    def active(self) -> bool:
        """Whether the model has shown any segment (the budget is split from then on)."""
        return bool(self.labels)

    def ring(self, label: str) -> PaneRing:
        r = self.rings.get(label)
        if r is None:
            r = self.rings[label] = self.make_ring()
            self.labels.append(label)
            self.since_eval[label] = 0
            self.events[label] = 0
        return r

    def _slot(self, label: str) -> int:
        """Slot of one segment value; new values get a ring while there is room."""
        if not label:
            return _NONE
        if label not in self.rings:
            own = len(self.labels) - (OTHER in self.rings)
            self.ring(label if own < self.max_segments else OTHER)
            if label not in self.rings:
                label = OTHER
        return self.labels.index(label)

    def add(self, segment: NDArray[np.object_], rows: NDArray[np.int64],
            bins: NDArray[np.int64], ts: NDArray[np.float64], offsets: NDArray[np.int64],
            seq0: int, pane_of: NDArray[np.int64] | None,
            max_ts: float) -> Iterator[tuple[str, Pane]]:
        """Add ``rows`` of a batch to their segments' rings; yield ``(label, pane)`` of
        every pane that closes, in order (take its segment's window and events since the
        last evaluation before resuming: a count pane spends the budget of the events its
        segment received up to its close, and a later pane of the batch adds to the window).

        ``bins``: the batch's bin indices (as the model's binner gives them);
        ``pane_of``: event-time pane of every batch row (None for count panes, which
        count each segment's own events); ``max_ts``: the model's newest event time
        (event-time segment panes close when the model's do). Columnar: one
        factorisation, one sort and one count over the batch for all segments' histograms.
        """
        self.last_events = {}
        if rows.size:
            codes = self._codes(segment, rows)
            keep = codes != _NONE
            if not keep.all():
                rows, codes = rows[keep], codes[keep]
        if rows.size:
            # slots are small: a 16-bit stable sort (radix) orders like the 64-bit one
            key = codes.astype(np.int16) if len(self.labels) < 2**15 else codes
            order = np.argsort(key, kind="stable")
            r, code = rows[order], codes[order]
            bounds = _bounds(code[1:] != code[:-1])
            first = bounds[:-1]
            slots = code[first].tolist()
            sizes = (bounds[1:] - first).tolist()
            for c, size in zip(slots, sizes, strict=True):
                label = self.labels[c]
                self.events[label] += size
                self.last_events[label] = size
                if label == OTHER:
                    self.overflow_events += size
            if pane_of is not None:
                pid = pane_of[r]
                order = np.argsort(pid, kind="stable")  # then by segment: row order within
                order = order[np.argsort(code[order], kind="stable")]  # a segment's pane
                r, code, pid = r[order], code[order], pid[order]
            else:  # each segment's own count: rank within the segment from its ring's seq
                rings = [self.rings[self.labels[c]] for c in slots]
                base = np.asarray([ring.seq for ring in rings], dtype=np.int64) - first
                size_of = np.asarray([ring.rule.pane_size  # type: ignore[union-attr]
                                      for ring in rings], dtype=np.int64)
                if len(slots) == 1:
                    pid = (np.arange(r.size, dtype=np.int64) + base[0]) // size_of[0]
                else:
                    pid = (np.arange(r.size, dtype=np.int64) + np.repeat(base, sizes)) \
                        // np.repeat(size_of, sizes)
            yield from self._add_panes(r, code, pid, bins, ts, offsets, seq0,
                                       None if pane_of is not None
                                       else dict(zip(slots, sizes, strict=True)))
        if pane_of is not None:  # event time: every segment's panes close with the model's
            for label in list(self.labels):
                ring = self.rings[label]
                ring.advance(0, max_ts)
                for p in ring.due():
                    yield label, ring.close(p)

    def _add_panes(self, r: NDArray[np.int64], code: NDArray[np.int64], pid: NDArray[np.int64],
                   bins: NDArray[np.int64], ts: NDArray[np.float64], offsets: NDArray[np.int64],
                   seq0: int, sizes: dict[int, int] | None) -> Iterator[tuple[str, Pane]]:
        """Rows sorted by segment, then pane: each (segment, pane) block joins its pane.
        ``sizes``: rows per segment for count panes (None for event-time panes)."""
        bounds = _bounds((code[1:] != code[:-1]) | (pid[1:] != pid[:-1]))
        starts = bounds[:-1]
        t = ts[r]
        fin = np.isfinite(t)
        lo, hi = (t, t) if fin.all() else (np.where(fin, t, np.inf), np.where(fin, t, -np.inf))
        t_lo = np.minimum.reduceat(lo, starts).tolist()
        t_hi = np.maximum.reduceat(hi, starts).tolist()
        off = offsets[r]
        valid = off >= 0
        if valid.all():
            o_lo = np.minimum.reduceat(off, starts).tolist()
            o_hi = np.maximum.reduceat(off, starts).tolist()
        else:
            o_lo = np.where(np.logical_or.reduceat(valid, starts), np.minimum.reduceat(
                np.where(valid, off, _INT_MAX), starts), -1).tolist()
            o_hi = np.maximum.reduceat(np.where(valid, off, -1), starts).tolist()
        last = np.maximum.reduceat(r, starts).tolist()
        n_blocks = bounds[1:] - starts
        n_at = n_blocks.tolist()
        code_at, pid_at = code[starts].tolist(), pid[starts].tolist()
        (c, w), _ = self.rings[self.labels[code_at[0]]].shapes["hist"]
        step = max(1, _HIST_CELLS // (c * w))  # blocks per count (bounded memory)
        block = np.full(bins.shape[0], starts.size, dtype=np.int64)  # each row's (or none)
        block[r] = np.repeat(np.arange(starts.size, dtype=np.int64), n_blocks)
        hist = np.zeros((0, c, w), dtype=np.int64)
        for g in range(starts.size):
            if g % step == 0:
                hist = block_histograms(bins, block, g, min(g + step, starts.size) - g, c, w)
            label = self.labels[code_at[g]]
            ring = self.rings[label]
            n = n_at[g]
            ring.pane(pid_at[g]).merge({"hist": hist[g % step]}, n, t_lo[g], t_hi[g],
                                       o_lo[g], o_hi[g], seq0 + last[g])
            self.since_eval[label] += n
            if sizes is not None:
                full = ring.rule.pane_size  # type: ignore[union-attr]
                for p in sorted(p for p, pane in ring.open.items() if pane.n >= full):
                    yield label, ring.close(p)
                if g + 1 == starts.size or code_at[g + 1] != code_at[g]:
                    ring.seq += sizes[code_at[g]]

    def _codes(self, segment: NDArray[np.object_], rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """The slot of each of ``rows`` (``_NONE`` without a segment): rows are
        factorised by segment object first (a decoder shares one dict among a batch's
        equal segments, so there are few), then the distinct objects by value.
        ``rows`` are increasing (all of the batch's, or some)."""
        col = segment if rows.size == segment.size else segment[rows]
        first, inverse = _factorise(_addresses(col))
        return self._slots(col[first].tolist())[inverse]

    def _slot_of(self, seg: Mapping[str, Any] | None) -> int:
        """The slot of one segment object (``_NONE`` for None and for no segment); one
        seen before with the same items is looked up instead of written out again."""
        if seg is None:
            return _NONE
        try:
            items = tuple(seg.items())
            slot = self.known.get(items)
        except TypeError:  # an unhashable value (not from a decoder): written out each time
            items, slot = (), None
        if slot is None:
            slot = self._slot(canonical({k: v for k, v in seg.items() if v is not None},
                                        self.keys))
            if items and len(self.known) < _KNOWN and len(repr(items)) <= _KNOWN_CHARS:
                self.known[items] = slot
        return slot

    def _slots(self, objs: list[Any]) -> NDArray[np.int64]:
        """The slot of each segment object (``_NONE`` for None and for no segment),
        giving new values rings in order of first sight."""
        if len(objs) <= _FEW:  # one canonical value per object
            return np.asarray([self._slot_of(d) for d in objs], dtype=np.int64)
        slots = np.full(len(objs), _NONE, dtype=np.int64)
        has = [i for i, d in enumerate(objs) if d is not None]
        if not has:
            return slots
        dicts = [objs[i] for i in has]
        keys = self.keys or tuple(sorted(set().union(*dicts)))
        code = np.zeros(len(dicts), dtype=np.int64)
        values: list[list[Any]] = []
        for k in keys:
            vals = list(map(dict.get, dicts, repeat(k)))
            table = {v: i for i, v in enumerate(dict.fromkeys(vals))}
            sub = np.fromiter(map(table.__getitem__, vals), dtype=np.int64, count=len(vals))
            code = np.unique(code * len(table) + sub, return_inverse=True)[1].reshape(-1)
            values.append(vals)
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        combo = np.empty(first.size, dtype=np.int64)
        for u in np.argsort(first, kind="stable").tolist():  # in order of first sight
            i = int(first[u])
            seg = {k: v[i] for k, v in zip(keys, values, strict=True) if v[i] is not None}
            combo[u] = self._slot(canonical(seg))
        slots[has] = combo[inverse.reshape(-1)]
        return slots

    # -- state ------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        meta: dict[str, Any] = {
            "labels": list(self.labels),
            "since_eval": [self.since_eval[x] for x in self.labels],
            "events": [self.events[x] for x in self.labels],
            "overflow_events": self.overflow_events,
            "rings": [],
        }
        arrays: dict[str, NDArray[Any]] = {}
        for i, label in enumerate(self.labels):
            rmeta, rarrays = self.rings[label].state()
            meta["rings"].append(rmeta)
            arrays.update({f"seg{i}.{k}": v for k, v in rarrays.items()})
        return meta, arrays

    def load(self, meta: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]]) -> None:
        labels = meta["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise ValueError("segment labels must be a list of strings")
        if len(set(labels)) != len(labels) or \
                len([x for x in labels if x != OTHER]) > self.max_segments:
            raise ValueError("segment labels repeat or exceed the maximum")
        since, events, rings = meta["since_eval"], meta["events"], meta["rings"]
        if not (len(since) == len(events) == len(rings) == len(labels)):
            raise ValueError("segment tables differ in length")
        for v in (*since, *events, meta["overflow_events"]):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
                raise ValueError(f"bad segment counter {v!r}")
        self.labels, self.rings, self.since_eval, self.events = [], {}, {}, {}
        self.last_events, self.known = {}, {}
        for i, label in enumerate(labels):
            ring = self.ring(label)
            prefix = f"seg{i}."
            ring.load(rings[i], {k[len(prefix):]: v for k, v in arrays.items()
                                 if k.startswith(prefix)})
            self.since_eval[label] = since[i]
            self.events[label] = events[i]
        self.overflow_events = meta["overflow_events"]


def _bounds(change: NDArray[np.bool_]) -> NDArray[np.intp]:
    """Start of every run of a sorted array, then its length (``change``: where an
    element differs from the one before it, from the second on)."""
    edge = np.empty(change.size + 2, dtype=bool)
    edge[0] = edge[-1] = True
    edge[1:-1] = change
    return np.flatnonzero(edge)


def _addresses(col: NDArray[np.object_]) -> NDArray[np.uintp]:
    """The address of each element's object (its ``id``), read from the array's buffer of
    object pointers in one copy: the objects are alive in ``col``, so equal addresses are
    the same object."""
    col = np.ascontiguousarray(col)
    return np.frombuffer(ctypes.string_at(col.ctypes.data, col.nbytes), dtype=np.uintp)


def _factorise(keys: NDArray[np.uintp]) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """``(first, inverse)``: the row of each distinct key's first sight, in order of first
    sight, and each row's index into ``first`` (a hash table when the kernels are built,
    else a sort)."""
    n = keys.size
    if n == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)
    if _kernels is not None and keys.itemsize == 8:
        first_rows = np.empty(n, dtype=np.intp)
        inverse = np.empty(n, dtype=np.int64)
        k = _kernels.factorise(np.ascontiguousarray(keys), first_rows, inverse)
        return first_rows[:k], inverse
    order = np.argsort(keys, kind="stable")  # equal keys: rows in order, the first first
    s = keys[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    first = order[new]  # per distinct key (by value), its first row
    sight = np.argsort(first, kind="stable")
    rank = np.empty(first.size, dtype=np.int64)
    rank[sight] = np.arange(first.size, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = rank[np.cumsum(new) - 1]
    return first[sight], inverse
