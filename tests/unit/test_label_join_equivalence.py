"""The vectorised join store against the join store as first written (one OrderedDict
entry per prediction): random streams with repeated ids, labels before predictions,
missing event times, evictions, expiry and reconfiguration give the same joined rows,
counts and snapshot bytes."""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from itertools import repeat
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from driftline.detectors import join_ids
from driftline.detectors.concept import ConceptConfig, ConceptMonitor
from driftline.detectors.errors import SnapshotError
from driftline.detectors.join_chunks import CHUNK_KIND
from driftline.detectors.join_fifo import Fifo
from driftline.detectors.join_ids import HexColumn, StrColumn
from driftline.detectors.join_index import DictKeyIndex
from driftline.detectors.label_join import (
    _EVICTED,
    _EXPIRED,
    _JOINED,
    SNAPSHOT_KIND,
    JoinConfig,
    JoinCounts,
    Joined,
    JoinStore,
)
from driftline.detectors.serialization import pack, put_strs, unpack


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



class ReferenceStore:
    """The join store as first written (one OrderedDict entry per prediction)."""

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
        pred_store, pending, c = self._pred, self._pending, self.counts
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

    def snapshot(self) -> bytes:
        pv, qv = list(self._pred.values()), list(self._pending.values())
        arrays: dict[str, np.ndarray] = {}
        put_strs(arrays, "pred.id", list(self._pred))
        put_strs(arrays, "pred.class", [v[1] for v in pv])
        arrays["pred.score"] = np.asarray([v[0] for v in pv], dtype=np.float64)
        arrays["pred.ts"] = np.asarray([v[2] for v in pv], dtype=np.float64)
        put_strs(arrays, "pending.id", list(self._pending))
        put_strs(arrays, "pending.label", [v[0] for v in qv])
        arrays["pending.ts"] = np.asarray([v[1] for v in qv], dtype=np.float64)
        put_strs(arrays, "gone.id", list(self._gone))
        arrays["gone.why"] = np.asarray(list(self._gone.values()), dtype=np.int8)
        meta = {"config": asdict(self.config), "counts": asdict(self.counts),
                "watermark": self.watermark if math.isfinite(self.watermark) else None}
        return pack(SNAPSHOT_KIND, meta, arrays)


def same(a: Joined, b: Joined) -> None:
    assert a.event_id == b.event_id and a.predicted == b.predicted and a.label == b.label
    for x, y in ((a.score, b.score), (a.prediction_ts, b.prediction_ts), (a.label_ts, b.label_ts)):
        assert np.array_equal(x, y, equal_nan=True)


@pytest.mark.parametrize("form", ["text", "hex", "hex_then_text", "uuid"])
@pytest.mark.parametrize("seed", range(12))
def test_same_rows_counts_and_snapshots_as_the_reference(seed: int, form: str) -> None:
    """Random predictions, labels and new bounds against the dict-based reference. Ids:
    ``text`` (some happen to be hex: the FIFOs turn to strings at some point), ``hex``
    (uuid4().hex-like: kept as their bytes throughout), ``hex_then_text`` (text ids from
    step 100 on: the FIFOs turn to strings with entries in), ``uuid`` (str(uuid4())-like:
    kept as their bytes throughout)."""
    rng = np.random.default_rng(seed)
    cfg = JoinConfig(ttl_seconds=float(rng.choice([5.0, 40.0, 1e6])),
                     max_entries=int(rng.choice([7, 60, 1000])), max_pending=int(rng.choice([3, 50])))
    new, ref = JoinStore(cfg), ReferenceStore(cfg)
    size = int(rng.choice([40, 400]))
    universe = [f"e{i}" for i in range(size)] if form == "text" else \
        [str(uuid.UUID(int=i * 7919)) for i in range(size)] if form == "uuid" else \
        [f"{i * 7919:032x}" for i in range(size)]
    now = 0.0
    for step in range(150):
        if form == "hex_then_text" and step == 100:
            universe[::3] = [f"t{i}" for i in range(len(universe[::3]))]
        now += float(rng.exponential(1.0))
        n = int(rng.integers(0, 40))
        ids = [universe[i] for i in rng.integers(0, len(universe), n)]
        ts = (now - rng.exponential(3.0, n)).tolist()
        for i in np.flatnonzero(rng.random(n) < 0.05).tolist():
            ts[i] = math.nan
        op = rng.random()
        if op < 0.5:
            eids: list[object] = [None if r < 0.05 else e for e, r in zip(ids, rng.random(n),
                                                                           strict=True)]
            scores = rng.random(n).tolist()
            cls = None if rng.random() < 0.3 else [None if r < 0.2 else str(int(r * 3))
                                                    for r in rng.random(n)]
            given = np.array(eids, dtype=object) if rng.random() < 0.5 else eids  # as the processor
            same(new.add_predictions(given, scores, cls, ts), ref.add_predictions(eids, scores, cls, ts))
        elif op < 0.95:
            labs = [str(int(r * 2)) for r in rng.random(n)]
            same(new.add_labels(ids, labs, ts), ref.add_labels(ids, labs, ts))
        else:
            cfg = JoinConfig(ttl_seconds=cfg.ttl_seconds, max_entries=int(rng.choice([5, 60, 1000])),
                             max_pending=int(rng.choice([2, 50])))
            new.reconfigure(cfg)
            ref.reconfigure(cfg)
        assert new.counts == ref.counts and len(new) == len(ref._pred)
        assert new.pending == ref.pending and new.watermark == ref.watermark
        if step % 10 == 0:
            blob = new.snapshot()
            assert blob == ref.snapshot()
            new = JoinStore.from_snapshot(blob)
            assert new.snapshot() == blob
    assert isinstance(new.counts, JoinCounts)
    kept = {type(f.idcol).__name__ for f in (new._pred, new._gone) if f.idcol is not None}
    assert kept <= ({"HexColumn"} if form in ("hex", "uuid") else {"HexColumn", "StrColumn"})


@pytest.mark.parametrize("form", ["hex", "uuid"])
@pytest.mark.parametrize("seed", range(4))
def test_the_dict_key_index_stands_in_for_the_compiled_one(
        seed: int, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the compiled extension the ids kept as bytes are indexed by the dict
    stand-in: the same rows, counts, snapshots and records."""
    monkeypatch.setattr(join_ids, "KeyIndex", DictKeyIndex)
    test_same_rows_counts_and_snapshots_as_the_reference(seed, form)
    test_records_restore_the_store_through_failed_writes(seed, True, form)
    assert isinstance(HexColumn(0, 16).index, DictKeyIndex)


def test_compaction_keeps_the_arrays_bounded() -> None:
    """Predictions that join at once leave slots behind; the arrays are compacted."""
    s = JoinStore(JoinConfig(ttl_seconds=1e9, max_entries=1000))
    s.add_predictions(["keep"], [0.5], None, [0.0])  # the oldest stays in the whole time
    for k in range(200):
        ids = [f"b{k}-{i}" for i in range(100)]
        s.add_predictions(ids, [0.5] * 100, None, [float(k)] * 100)
        assert len(s.add_labels(ids, ["1"] * 100, [float(k)] * 100)) == 100
    assert len(s) == 1 and s.counts.joined == 20_000
    assert s._pred.cap <= 1000 and s._gone.cap <= 4 * 1000 + 200
    assert s.add_labels(["keep"], ["0"], [300.0]).event_id == ("keep",)


def test_a_full_store_keeps_its_rings_a_little_past_the_bound() -> None:
    """Filling past ``max_entries`` in batches of 500: the rings grow by doubling while
    they fill and stop a little past the bound (here 10,000 + 625 slots, not 15,000),
    however long the store keeps dropping its oldest; a new bound applies to the next
    growth."""
    s = JoinStore(JoinConfig(ttl_seconds=1e9, max_entries=10_000))
    for k in range(80):
        ids = [f"b{k}-{i}" for i in range(500)]
        s.add_predictions(ids, [0.5] * 500, None, [float(k)] * 500)
    assert len(s) == 10_000 and s.counts.evicted == 30_000 and len(s._gone) == 10_000
    assert s._pred.cap == s._gone.cap == 10_625
    s.reconfigure(JoinConfig(ttl_seconds=1e9, max_entries=40_000))
    for k in range(80, 200):
        ids = [f"b{k}-{i}" for i in range(500)]
        s.add_predictions(ids, [0.5] * 500, None, [float(k)] * 500)
    assert len(s) == 40_000 and s._pred.cap == 40_000 + 40_000 // 16


def test_a_bounded_ring_grows_past_its_wrapped_part() -> None:
    """A ring that wrapped moves its start behind the rest when it grows: the bounded
    growth leaves room for that too (it made the ring too small, and every batch after
    failed). Directly, and through a store whose bound is raised."""
    f = Fifo({"why": np.int8}, bound=1000)
    f.append([f"a{i}" for i in range(450)], {"why": 0})
    f.pop_oldest(449)
    f.append([f"b{i}" for i in range(800)], {"why": 0})
    f.append([f"c{i}" for i in range(200)], {"why": 0})
    assert len(f) == 1001 and f.ids_at(f.positions())[:2] == ["a449", "b0"]
    s = JoinStore(JoinConfig(ttl_seconds=1e9, max_entries=1000))
    for k in range(200):
        s.add_predictions([f"p{k}-{i}" for i in range(20)], [0.5] * 20, None, [float(k)] * 20)
    s.reconfigure(JoinConfig(ttl_seconds=1e9, max_entries=1500))
    for k in range(200, 300):
        s.add_predictions([f"p{k}-{i}" for i in range(20)], [0.5] * 20, None, [float(k)] * 20)
    assert len(s) == 1500 and len(s._gone) == 1500


@pytest.mark.parametrize("fmt", ["e{}", "{:08x}"], ids=["text", "hex"])
@pytest.mark.parametrize("seed", range(10))
def test_a_bounded_ring_holds_what_an_unbounded_one_holds(seed: int, fmt: str) -> None:
    """The same random appends (ids taken in again among them), pops of single, many,
    oldest and timed-out entries, and changes of the bound: a ring with a bound holds the
    same entries in the same order with the same values and index as one without."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {"score": np.float64, "ts": np.float64, "cls": object}
    bounded, free = Fifo(cols, bound=int(rng.integers(50, 2000))), Fifo(cols)
    t = 0.0
    for step in range(400):
        n = int(rng.choice([0, 1, 3, 17, 64, 200, 700]))
        ids = list(dict.fromkeys(fmt.format(int(i)) for i in rng.integers(0, 5000, n)))
        vals = {"score": rng.normal(size=len(ids)), "ts": t + rng.uniform(0, 5, len(ids)),
                "cls": [None if rng.random() < 0.5 else "a" for _ in ids]}
        t += 2.0
        for f in (bounded, free):
            f.pop_many(ids)
            f.append(ids, vals)
        op = rng.random()
        if op < 0.15 and len(free):
            keys = sorted(eid for eid, _ in free.items())
            some = rng.choice(keys, int(rng.integers(1, len(keys) + 1)), replace=False).tolist()
            (hit_a, pos_a), (hit_b, pos_b) = bounded.pop_many(some), free.pop_many(some)
            np.testing.assert_array_equal(hit_a, hit_b)
            np.testing.assert_array_equal(bounded.cols["seq"][pos_a],
                                          free.cols["seq"][pos_b])
        elif op < 0.5:
            k = max(0, len(free) - int(bounded.bound or 0)) if rng.random() < 0.7 else \
                int(rng.integers(0, 300))
            assert bounded.pop_oldest(k).size == free.pop_oldest(k).size
        elif op < 0.65:
            assert bounded.pop_before("ts", t - 60.0).size == free.pop_before("ts", t - 60.0).size
        elif op < 0.7:
            bounded.bound = int(rng.integers(50, 3000))
        pa, pb = bounded.positions(), free.positions()
        assert bounded.ids_at(pa) == free.ids_at(pb), f"step {step}"
        for name in cols:
            assert bounded.cols[name][pa].tolist() == free.cols[name][pb].tolist(), step
        assert bounded.cols["seq"][pa].tolist() == free.cols["seq"][pb].tolist()
        assert {e: int(bounded.cols["seq"][s]) for e, s in bounded.items()} == \
            {e: int(free.cols["seq"][s]) for e, s in free.items()}
        assert bounded.tail - bounded.head <= bounded.cap
    if fmt != "e{}":  # hex ids of one width: kept as their bytes throughout
        assert isinstance(bounded.idcol, HexColumn) and isinstance(free.idcol, HexColumn)


@pytest.mark.parametrize("positive", ["1", "true", "fraud"])
def test_binary_outcomes_match_the_row_by_row_rule(positive: str) -> None:
    """Outcome code 2*actual + predicted; the predicted class when given, else the score
    against the threshold; rows with neither are not scored."""
    rng = np.random.default_rng(5)
    k = 400
    labels = tuple(str(rng.choice(["1", "0", "true", "fraud", "ok"])) for _ in range(k))
    given = [None if r < 0.5 else str(rng.choice(["1", "0", "true", "fraud"])) for r in rng.random(k)]
    score = np.where(rng.random(k) < 0.1, np.nan, rng.random(k))
    mon = ConceptMonitor("m", ConceptConfig(positive_label=positive, score_threshold=0.4))
    alias = {"1", "true"} if positive in ("1", "true") else {positive}
    for predicted in (tuple(given), (None,) * k):
        rows = Joined(tuple(f"e{i}" for i in range(k)), score, predicted, labels,
                      np.zeros(k), np.ones(k))
        codes, ok = mon.outcomes(rows)
        for i in range(k):
            p = predicted[i]
            scored = p is not None or math.isfinite(score[i])
            assert ok[i] == scored
            if scored:
                pred = p in alias if p is not None else score[i] >= 0.4
                assert codes[i] == 2 * (labels[i] in alias) + int(pred)
            else:
                assert codes[i] == 0


class _PreviousFifo(Fifo):
    """Fifo with ``_room``/``_resize`` as before the copies were slices (index arrays),
    its ids as strings."""

    def __init__(self, columns: dict[str, Any]) -> None:
        super().__init__(columns)
        self.idcol = StrColumn(0)
        self.index, self.ids = self.idcol.index, self.idcol.ids

    def _room(self, n: int) -> None:
        live, span, cap = len(self.index), self.tail - self.head, self.cap
        if cap and span > 2 * live + 64:
            pos = self.positions()
            new_cap = max(64, 2 * (live + n))
            self._old_resize(new_cap, ((pos, np.arange(live)),))
            self.head, self.tail = 0, live
            self.index.put(self.ids[:live].tolist(), np.arange(live, dtype=np.int64))
            return
        new_cap = max(64, 2 * (span + n))
        h = self.head % cap if cap else 0
        first = min(span, cap - h)
        lo = np.arange(h, h + first)
        wrapped = np.arange(span - first)
        self._old_resize(new_cap, ((lo, lo), (wrapped, wrapped + cap)))
        self.head, self.tail = h, h + span
        if wrapped.size:
            ids = self.ids[wrapped + cap].tolist()
            found = np.fromiter(map(self.index.get, ids, repeat(-1, len(ids))), dtype=np.int64,
                                count=len(ids))
            kept: list[int] = np.flatnonzero(np.equal(found, wrapped)).tolist()
            self.index.put([ids[i] for i in kept], np.asarray(kept, dtype=np.int64) + cap)

    def _old_resize(self, cap: int, moves: tuple[tuple[NDArray[np.intp], NDArray[np.intp]], ...]
                    ) -> None:
        ids = np.empty(cap, dtype=object)
        cols = {name: np.empty(cap, dtype=col.dtype) for name, col in self.cols.items()}
        live = np.zeros(cap, dtype=bool)
        for src, dst in moves:
            if src.size:
                ids[dst] = self.ids[src]
                live[dst] = self.live[src]
                for name, col in self.cols.items():
                    cols[name][dst] = col[src]
        self.ids, self.cols, self.cap, self.live = ids, cols, cap, live
        self.idcol.ids = ids


def _same_fifo(a: Fifo, b: Fifo, where: str) -> None:
    assert (a.head, a.tail, a.cap) == (b.head, b.tail, b.cap), where
    assert sorted(a.items()) == sorted(b.items()), where
    assert len(a) == len(b), where
    used = a.positions()
    np.testing.assert_array_equal(used, b.positions(), err_msg=where)
    # the flags of the entries in are the index's slots
    slots = np.sort(np.asarray([slot for _, slot in a.items()], dtype=np.int64))
    np.testing.assert_array_equal(np.flatnonzero(a.live), slots, err_msg=where)
    np.testing.assert_array_equal(np.sort(used), slots, err_msg=where)
    assert a.ids_at(used) == b.ids_at(used), where
    for name in a.cols:
        assert a.cols[name][used].tobytes() == b.cols[name][used].tobytes(), where


@pytest.mark.parametrize("fmt", ["e{}", "{:08x}"], ids=["text", "hex"])
@pytest.mark.parametrize("seed", range(8))
def test_ring_growth_and_compaction_match_the_index_array_copies(seed: int, fmt: str) -> None:
    """Random appends (ids taken in again among them), pops of single, oldest and timed-out
    entries: both rings hold the same entries at the same slots after every step, through
    growth with and without a wrapped part and compaction."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {"score": np.float64, "ts": np.float64, "cls": object}
    new, old = Fifo(cols), _PreviousFifo(cols)
    t = 0.0
    for step in range(300):
        n = int(rng.choice([0, 1, 3, 17, 64, 200]))
        ids = [fmt.format(int(i)) for i in rng.integers(0, 3000, n)]
        ids = list(dict.fromkeys(ids))  # one batch takes an id in once
        ts = t + rng.uniform(0, 5, len(ids))
        t += 2.0
        vals = {"score": rng.normal(size=len(ids)), "ts": ts,
                "cls": [None if rng.random() < 0.5 else "a" for _ in ids]}
        for f in (new, old):
            f.pop_many(ids)  # taken in again: moves to the end
            f.append(ids, vals)
        op = rng.random()
        if op < 0.3 and len(new):
            k = int(len(new) * rng.uniform(0, 0.9)) + 1  # mostly left slots: compaction
            keys = sorted(eid for eid, _ in new.items())
            for eid in rng.choice(keys, k, replace=False).tolist():
                assert new.pop(eid) == old.pop(eid)
        elif op < 0.5:
            k = int(rng.integers(0, 50))
            np.testing.assert_array_equal(new.pop_oldest(k), old.pop_oldest(k))
        elif op < 0.7:
            np.testing.assert_array_equal(new.pop_before("ts", t - 30.0),
                                          old.pop_before("ts", t - 30.0))
        _same_fifo(new, old, f"step {step}")
        pos = new.positions()
        seq = new.cols["seq"][pos]
        for lo, hi in ((0, new.next_seq), *np.sort(rng.integers(0, new.next_seq + 2, (3, 2)))):
            np.testing.assert_array_equal(new.positions_in(int(lo), int(hi)),
                                          pos[(seq >= lo) & (seq < hi)])
    assert new.cap > 64


class _StateTopic:
    """A compacted topic as the worker uses it for a join store's records: chunks first
    (acknowledged), then the store record, then the dropped chunks deleted."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.acked: bytes | None = None  # the whole store as of the acknowledged record
        self.written = 0
        self.lost = False  # a chunk written between checkpoints failed (not yet reported)
        self.chunks = 0  # chunk records the last store record came with

    def between(self, store: JoinStore, rng: np.random.Generator) -> int:
        """Chunks sealed since the last records, written between checkpoints; a failed
        write is reported by the wait before the next store record."""
        recs = store.sealed_chunk_records()
        for name, blob in recs.items():
            if rng.random() < 0.05:
                self.lost = True
            else:
                self.records[name] = blob
                self.written += len(blob)
        return len(recs)

    def checkpoint(self, store: JoinStore, rng: np.random.Generator) -> bool:
        recs = store.snapshot_records()
        self.chunks = len(recs.chunks)
        if self.lost:  # the wait for the chunks reports the failure: no store record
            self.lost = False
            self.records.update(recs.chunks)
            store.rewrite_chunks()
            return False
        fail = rng.random()
        if fail < 0.1:  # the chunks' write fails (some of them may be on the topic)
            for name, blob in recs.chunks.items():
                if rng.random() < 0.5:
                    self.records[name] = blob
            store.rewrite_chunks()
            return False
        self.records.update(recs.chunks)
        self.written += sum(map(len, recs.chunks.values())) + len(recs.store)
        if fail < 0.2:  # the store record's write fails
            store.rewrite_chunks()
            return False
        self.records["store"] = recs.store
        self.acked = store.snapshot()
        for name in recs.dropped:
            self.records.pop(name, None)
        return True

    def restore(self) -> JoinStore:
        return JoinStore.from_records(self.records["store"], self.records.get)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("early", [False, True])
@pytest.mark.parametrize("form", ["text", "hex", "uuid"])
def test_records_restore_the_store_through_failed_writes(seed: int, early: bool,
                                                          form: str) -> None:
    # the same random streams; every few steps the store is written as records (chunks of
    # 8 entries) with some writes failing (early: and chunks written as they seal, between
    # store records, some of them failing); the records on the topic always restore the
    # store as it was at the last acknowledged store record, and a restored store goes on
    # exactly as the reference (and writes records of its own that restore as well); ids
    # as text, or kept as their bytes (hex, UUIDs: a chunk's run of slots read as views)
    rng = np.random.default_rng(100 + seed)
    sealed = 0
    cfg = JoinConfig(ttl_seconds=float(rng.choice([5.0, 40.0, 1e6])),
                     max_entries=int(rng.choice([7, 60, 1000])), max_pending=int(rng.choice([3, 50])))
    new, ref = JoinStore(cfg, chunk_entries=8), ReferenceStore(cfg)
    topic = _StateTopic()
    size = int(rng.choice([40, 400]))
    universe = [f"e{i}" for i in range(size)] if form == "text" else \
        [str(uuid.UUID(int=i * 7919)) for i in range(size)] if form == "uuid" else \
        [f"{i * 7919:032x}" for i in range(size)]
    now = 0.0
    restores = 0
    for step in range(200):
        now += float(rng.exponential(1.0))
        n = int(rng.integers(0, 40))
        ids = [universe[i] for i in rng.integers(0, len(universe), n)]
        ts = (now - rng.exponential(3.0, n)).tolist()
        if rng.random() < 0.55:
            scores = rng.random(n).tolist()
            cls = None if rng.random() < 0.3 else [str(int(r * 3)) for r in rng.random(n)]
            same(new.add_predictions(ids, scores, cls, ts), ref.add_predictions(ids, scores, cls, ts))
        else:
            labs = [str(int(r * 2)) for r in rng.random(n)]
            same(new.add_labels(ids, labs, ts), ref.add_labels(ids, labs, ts))
        if early and rng.random() < 0.6:
            sealed += topic.between(new, rng)
        if step % 4 == 0:
            ok = topic.checkpoint(new, rng)
            if topic.acked is not None:
                back = topic.restore()
                assert back.snapshot() == topic.acked
                if ok:  # the acknowledged state is the current one: go on with the copy
                    assert back.snapshot() == ref.snapshot()
                    new, restores = back, restores + 1
        assert new.counts == ref.counts and new.snapshot() == ref.snapshot()
    assert restores > 20
    assert sealed > 20 if early else sealed == 0
    kept = {type(f.idcol).__name__ for f in (new._pred, new._gone) if f.idcol is not None}
    assert kept == {"StrColumn" if form == "text" else "HexColumn"}
    assert set(topic.records) <= {"store"} | {n for b in (new, topic.restore())
                                              for bk in b._books.values()
                                              for n, _ in bk.written.values()} | \
        {n for bk in new._books.values() for n in bk.stale}


@pytest.mark.parametrize("early", [False, True])
def test_records_write_what_came_in_not_the_whole_store(early: bool) -> None:
    # a store kept near its bound (50,000 predictions, half joined by labels): whole
    # snapshots write it all every time, records about each entry once (early: chunks
    # written as they seal, between store records, which then write none of their own)
    store = JoinStore(JoinConfig(ttl_seconds=1e9, max_entries=50_000), chunk_entries=1024)
    topic = _StateTopic()
    rng = np.random.default_rng(0)
    whole = 0
    for k in range(60):
        ids = [f"p{k}-{i:05d}" for i in range(2000)]
        store.add_predictions(ids, rng.random(2000), None, [float(k)] * 2000)
        if early:
            assert topic.between(store, _NoFail()) >= 1
            assert not store.chunks_due() and not store.sealed_chunk_records()
        store.add_labels(ids[::2], ["1"] * 1000, [float(k)] * 1000)
        if early and k % 3 == 2:  # the ids that left seal chunks of their own
            topic.between(store, _NoFail())
        assert topic.checkpoint(store, _NoFail())
        if early and k % 3 == 2:  # every sealed chunk was written: none in the checkpoint
            assert topic.chunks == 0
        whole += len(store.snapshot())
    assert len(store) == 49_000  # full, less the last batch's joined half
    # early: each chunk holds the entries labels join later (right after, here)
    assert topic.written < whole / (5 if early else 8), (topic.written, whole)
    back = topic.restore()
    assert back.snapshot() == store.snapshot()


class _NoFail(np.random.Generator):
    """Writes that never fail."""

    def __init__(self) -> None:
        super().__init__(np.random.PCG64(0))

    def random(self, *args: Any, **kwargs: Any) -> Any:
        return 1.0


def test_records_that_do_not_fit_together_are_refused() -> None:
    store = JoinStore(JoinConfig(), chunk_entries=8)
    store.add_predictions([f"e{i}" for i in range(40)], [0.5] * 40, None, [1.0] * 40)
    store.add_labels([f"e{i}" for i in range(0, 40, 3)], ["1"] * 14, [2.0] * 14)
    key = b"k" * 32
    recs = store.snapshot_records(key=key)
    topic = dict(recs.chunks)
    assert len(topic) >= 5  # the predictions' chunks and the ids that left
    back = JoinStore.from_records(recs.store, topic.get, key=key)
    assert back.snapshot() == store.snapshot()
    first, second = sorted(n for n in topic if n.startswith("pred/"))[:2]
    broken: list[dict[str, bytes]] = [
        {k: v for k, v in topic.items() if k != first},  # a chunk missing
        {**topic, first: topic[second]},  # another chunk's record under its name
        {**topic, first: topic[first][:-40]},  # cut short
    ]
    for records in broken:
        with pytest.raises(SnapshotError):
            JoinStore.from_records(recs.store, records.get, key=key)
    with pytest.raises(SnapshotError):  # chunks signed with another key
        JoinStore.from_records(recs.store, topic.get, key=b"x" * 32)
    with pytest.raises(SnapshotError):
        JoinStore.from_records(recs.store[:-9], topic.get, key=key)


def test_chunk_records_are_bound_to_their_store_and_checked_whole() -> None:
    store = JoinStore(JoinConfig(), chunk_entries=8)
    store.add_predictions([f"a{i}" for i in range(10)], [0.5] * 10, None, [1.0] * 10)
    store.add_labels(["a1", "a3"], ["1", "1"], [2.0, 2.0])
    recs = store.snapshot_records(owner="m@1")
    topic = dict(recs.chunks)
    assert JoinStore.from_records(recs.store, topic.get, owner="m@1").snapshot() == store.snapshot()
    with pytest.raises(SnapshotError):  # another store's chunk under the same name
        JoinStore.from_records(recs.store, topic.get, owner="m@2")
    meta, arrays, _ = unpack(topic["pred/0/0"], CHUNK_KIND)
    on = np.unpackbits(arrays["seq.bits"], count=8)
    assert on.tolist() == [1, 0, 1, 0, 1, 1, 1, 1]  # 8 numbered, a1 and a3 joined before
    older = {k: v for k, v in arrays.items() if k != "seq.bits"}  # entry numbers, not bits
    older["seq"] = np.flatnonzero(on).astype(np.int64)
    topic_older = {**topic, "pred/0/0": pack(CHUNK_KIND, meta, older)}
    assert JoinStore.from_records(recs.store, topic_older.get, owner="m@1").snapshot() == \
        store.snapshot()
    unsorted = {**older, "seq": older["seq"][[0, 2, 1, 3, 4, 5]]}
    short = {**arrays, "score": arrays["score"][:-1]}
    bits_short = {**arrays, "seq.bits": np.packbits(np.arange(8) % 2 == 0)}  # 4 of 6 entries
    bits_wide = {**arrays, "seq.bits": np.zeros(2, dtype=np.uint8)}  # a chunk of 16
    bits_all = {**arrays, "seq.bits": np.full(1, 0xFF, dtype=np.uint8)}  # 8 of 6 entries
    for bad in (unsorted, short, bits_short, bits_wide, bits_all):  # the rest looks fine
        with pytest.raises(SnapshotError):
            JoinStore.from_records(recs.store, {**topic, "pred/0/0": pack(CHUNK_KIND, meta, bad)}.get,
                                   owner="m@1")


def test_hostile_chunk_records_are_refused_before_their_size_is_allocated() -> None:
    import tracemalloc

    from driftline.detectors.label_join import RECORDS_KIND
    store = JoinStore(JoinConfig(), chunk_entries=8)
    store.add_predictions([f"a{i}" for i in range(10)], [0.5] * 10, None, [1.0] * 10)
    recs = store.snapshot_records(owner="m@1")
    topic = dict(recs.chunks)
    meta, arrays, _ = unpack(recs.store, RECORDS_KIND)
    far = "pred/99999999999999999999/0"  # a chunk number past int64
    data = pack(RECORDS_KIND, {**meta, "pred": {**meta["pred"], "chunks": [far]}}, arrays)
    with pytest.raises(SnapshotError):
        JoinStore.from_records(data, {**topic, far: topic["pred/0/0"]}.get, owner="m@1")
    # a chunk the store calls 2**27 entries wide: 16 MiB of bits, all set, for its 8
    size = 2**27
    cmeta, carrays, _ = unpack(topic["pred/0/0"], CHUNK_KIND)
    carrays["seq.bits"] = np.full(size // 8, 0xFF, dtype=np.uint8)
    wide = pack(RECORDS_KIND, {**meta, "pred": {**meta["pred"], "size": size,
                                                "next_seq": 2 * size}}, arrays)
    load = {**topic, "pred/0/0": pack(CHUNK_KIND, cmeta, carrays)}.get
    tracemalloc.start()  # numpy's buffers are traced too
    try:
        with pytest.raises(SnapshotError):
            JoinStore.from_records(wide, load, owner="m@1")
        peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak_mib < 100  # copies of the 16 MiB record, not a byte (or int64) per entry
