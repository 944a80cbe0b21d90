"""The label join's FIFO: entries in arrival order in a ring of numpy columns, with an
index from id to ring slot (see :class:`Fifo`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.join_ids import HexColumn, HexIds, Ids, StrColumn, as_strs, hex_ids


class Fifo:
    """Entries in arrival order in a ring of numpy columns (ids and values), with an
    index from id to ring slot for the entries still in (:mod:`.join_index`). The ids are
    kept as their bytes while all are hex ids of one width or all UUIDs, else as strings
    (:mod:`.join_ids`).

    Taking a batch in is one slice assignment per column and one ``put`` of the ids and
    their slots into the index. An entry that leaves (or is taken in again: the newest
    counts, at the end) leaves the index and clears its slot's flag in ``live`` (the
    index returns the slots that left); a slot without the flag is skipped when the
    oldest are dropped, and the ring is rebuilt without such slots when it is full, so
    it stays within a small multiple of the entries in. ``bound``: the most entries the
    owner keeps (it drops the oldest past it); the ring grows by doubling while it fills,
    and the growth that passes the bound stops a little past it, not at twice the entries.
    """

    def __init__(self, columns: dict[str, Any], bound: int | None = None) -> None:
        self.bound = bound
        self.idcol: HexColumn | StrColumn | None = None  # the first entries choose the form
        self.cap = 0
        self.cols: dict[str, NDArray[Any]] = {k: np.empty(0, dtype=dt) for k, dt in
                                              {**columns, "seq": np.int64}.items()}
        self.live = np.zeros(0, dtype=bool)  # per slot: it holds an entry that is in
        self.head = self.tail = 0  # counters; slot = counter % cap; head..tail may hold entries
        self.next_seq = 0  # each entry's "seq": its number, never reused (chunk records)

    def __len__(self) -> int:
        return 0 if self.idcol is None else len(self.idcol)

    def _column(self, ids: Ids) -> tuple[HexColumn | StrColumn, Ids]:
        """The id column for a batch, and the batch in its form: the first batch chooses
        the form; one not of the column's form turns it to strings."""
        col = self.idcol
        if isinstance(col, StrColumn):
            return col, as_strs(ids)
        if isinstance(col, HexColumn) and isinstance(ids, list) and len(ids) == 1:
            key = col.key_of(ids[0])  # one id (a label that joined): no batch conversion
            if key is not None:
                return col, HexIds(np.frombuffer(key, dtype=np.uint8).reshape(1, -1), col.dashed)
        hexed = ids if isinstance(ids, HexIds) else hex_ids(ids)
        if col is None:
            col = HexColumn(self.cap, *hexed.form) if hexed is not None else StrColumn(self.cap)
        elif hexed is None or hexed.form != col.form:
            col = self._to_strs(col)
        self.idcol = col
        return col, (hexed if isinstance(col, HexColumn) and hexed is not None else
                     as_strs(ids))

    def _to_strs(self, col: HexColumn) -> StrColumn:
        """The entries' ids as strings, indexed afresh."""
        new = StrColumn(self.cap)
        slots = np.flatnonzero(self.live).astype(np.int64)
        new.ids[slots] = col.at(slots)
        new.put_at(slots)
        return new

    def append(self, ids: Ids, values: dict[str, Any],
               id_array: NDArray[Any] | None = None,
               seqs: NDArray[np.int64] | None = None) -> None:
        """Take entries in at the end (an id already in moves to the end); ``ids``: strings,
        or hex ids / UUIDs as their bytes; ``id_array``: the same ids as an object array, when
        there is one (faster to store as strings); ``seqs``: their numbers (increasing,
        from ``next_seq`` on; default: the next ones)."""
        n = len(ids)
        if not n:
            return
        col, ids = self._column(ids)
        if seqs is None:
            seqs = np.arange(self.next_seq, self.next_seq + n, dtype=np.int64)
        self.next_seq = max(self.next_seq, int(seqs[-1]) + 1)
        values = {**values, "seq": seqs}
        if self.tail + n - self.head > self.cap:
            self._room(n)
        s = self.tail % self.cap
        k = min(n, self.cap - s)  # before the end of the ring; the rest wraps to its start
        pieces = ((s, 0, k), (0, k, n)) if k < n else ((s, 0, n),)
        for at, a, b in pieces:  # (growing the ring resized the id column in place)
            col.write(at, ids, a, b, id_array)
            for name, v in values.items():
                self.cols[name][at:at + b - a] = v[a:b] if isinstance(v, list | np.ndarray) else v
        slots = np.arange(s, s + n, dtype=np.int64)
        if k < n:
            slots[k:] -= self.cap
        self.live[slots] = True
        # an id already in (or twice in this batch) leaves its former slot: the last wins
        self._leave(col.put(ids, slots))
        self.tail += n

    def _leave(self, slots: bytes) -> None:
        """Clear the flags of these slots (int64 bytes, as the index returns them)."""
        if slots:
            self.live[np.frombuffer(slots, dtype=np.int64)] = False

    def _slots(self, start: int, stop: int) -> NDArray[np.intp]:
        """Slots of the counters ``start`` to ``stop - 1`` (at most ``cap`` of them)."""
        s = start % self.cap if self.cap else 0
        slots = np.arange(s, s + stop - start)
        if s + stop - start > self.cap:  # wraps to the ring's start
            slots[self.cap - s:] -= self.cap
        return slots

    def _live(self, slots: NDArray[np.intp]) -> NDArray[np.bool_]:
        """Which of these slots hold entries that are in."""
        live: NDArray[np.bool_] = self.live[slots]
        return live

    def positions(self) -> NDArray[np.intp]:
        """Slots of the entries in, oldest first (the index's slots, in ring order)."""
        slots = self._slots(self.head, self.tail)
        if not len(self):
            return slots[:0]
        return slots[self.live[slots]]

    def positions_in(self, lo: int, hi: int) -> NDArray[np.intp]:
        """Slots of the entries in numbered ``lo`` to ``hi - 1``, oldest first (numbers
        increase along the ring from its head: two binary searches, not a scan)."""
        span = self.tail - self.head
        if not len(self) or not span or hi <= lo:
            return np.zeros(0, dtype=np.intp)
        h = self.head % self.cap
        first = min(span, self.cap - h)  # head .. the ring's end, then its start
        seq = self.cols["seq"]
        parts = []
        for start, stop in ((h, h + first), (0, span - first)):
            piece = seq[start:stop]
            a, b = np.searchsorted(piece, (lo, hi)).tolist()
            parts.append(np.arange(start + a, start + b, dtype=np.intp))
        slots: NDArray[np.intp] = np.concatenate(parts)
        return slots[self.live[slots]]

    def _room(self, n: int) -> None:
        """A larger ring with room for ``n`` more. Mostly left slots: rebuilt with the
        entries in only, renumbered; else the slots keep their numbers, but for the part
        that wrapped around to the ring's start, which moves behind the rest."""
        live, span, cap = len(self), self.tail - self.head, self.cap
        if cap and span > 2 * live + 64:
            pos = self.positions()
            new_cap = max(64, 2 * (live + n))
            self._resize(new_cap, ((pos, slice(0, live)),))
            self.head, self.tail = 0, live
            # every entry in is renumbered: a fresh index (sized for them, not twice)
            assert self.idcol is not None
            self.idcol.clear()
            self.idcol.put_at(np.arange(live, dtype=np.int64))
            return
        h = self.head % cap if cap else 0
        first = min(span, cap - h)
        rest = span - first  # at the ring's start; moves to cap.. (so h + span slots at least)
        new_cap = max(64, 2 * (span + n))
        bound = self.bound
        if bound is not None and cap < bound < new_cap:  # filling: up to the bound and a
            # few batches' room (the owner drops the oldest past it), not twice past it
            new_cap = max(span + n, h + span, bound + max(n, bound // 16, 64))
        self._resize(new_cap, ((slice(h, h + first), slice(h, h + first)),
                               (slice(0, rest), slice(cap, cap + rest))))
        self.head, self.tail = h, h + span
        if rest:  # renumber the entries in among the moved slots (their flags moved along;
            # the former slots put returns are outside the new ring's head..tail)
            kept = np.flatnonzero(self.live[cap:cap + rest]) + cap
            assert self.idcol is not None
            self.idcol.put_at(kept.astype(np.int64))

    def _resize(self, cap: int, moves: tuple[tuple[NDArray[np.intp] | slice, slice], ...]
                ) -> None:
        """New arrays of ``cap`` slots; each (from, to) pair is copied: slots (an array of
        them or a range, as a slice) to a range of as many."""
        cols = {name: np.empty(cap, dtype=col.dtype) for name, col in self.cols.items()}
        live = np.zeros(cap, dtype=bool)
        for src, dst in moves:
            if dst.stop > dst.start:
                live[dst] = self.live[src]
                for name, col in self.cols.items():
                    cols[name][dst] = col[src]
        if self.idcol is not None:
            self.idcol.resize(cap, moves)
        self.cols, self.cap, self.live = cols, cap, live

    def pop(self, eid: str) -> int:
        """Slot of ``eid``'s entry, which leaves; -1 when it is not in."""
        hit, slots = self.pop_many([eid])
        return int(slots[0]) if hit[0] else -1

    def pop_many(self, ids: Ids) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
        """Which of ``ids`` are in, and the slots of those, which leave (an id given twice
        is in the first time only)."""
        if self.idcol is None or not len(ids):
            return np.zeros(len(ids), dtype=bool), np.zeros(0, dtype=np.int64)
        found = self.idcol.pop(ids if isinstance(ids, HexIds | list) else list(ids))
        hit = found >= 0
        slots = found[hit]
        self.live[slots] = False
        return hit, slots

    @property
    def keeps_bytes(self) -> bool:
        """Whether hex ids are (or may yet be) kept as their bytes."""
        return not isinstance(self.idcol, StrColumn)

    def get(self, eid: str) -> int | None:
        """Slot of ``eid``'s entry, None when it is not in."""
        return None if self.idcol is None else self.idcol.get(eid)

    def get_many(self, ids: Ids) -> NDArray[np.int64]:
        """Slot of each id's entry, -1 when it is not in."""
        if self.idcol is None or not len(self.idcol) or not ids:
            return np.full(len(ids), -1, dtype=np.int64)
        return self.idcol.get_many(ids)

    def ids_at(self, slots: NDArray[np.intp]) -> list[str]:
        """The ids held at these slots, as strings."""
        return [] if self.idcol is None else self.idcol.at(slots)

    def batch_at(self, slots: NDArray[np.intp]) -> Ids:
        """The ids held at these slots, in the column's form (to append elsewhere)."""
        return [] if self.idcol is None else self.idcol.batch_at(slots)

    def items(self) -> list[tuple[str, int]]:
        """(id, slot) of the entries in, in no order."""
        return [] if self.idcol is None else self.idcol.items()

    def pop_oldest(self, k: int) -> NDArray[np.intp]:
        """Slots of the ``k`` oldest entries, which leave."""
        out: list[NDArray[np.intp]] = []
        pos, block = self.head, 16
        while k > 0 and pos < self.tail:
            stop = min(self.tail, pos + max(block, k))
            slots = self._slots(pos, stop)
            idx = np.flatnonzero(self._live(slots))[:k]
            out.append(slots[idx])
            k -= idx.size
            pos = pos + int(idx[-1]) + 1 if k == 0 else stop
            block *= 4
        return self._drop(pos, out)

    def pop_before(self, column: str, cutoff: float) -> NDArray[np.intp]:
        """Slots of the oldest entries up to the first whose ``column`` is at or after
        ``cutoff`` (NaN counts as before), which leave."""
        pos, col = self.head, self.cols[column]
        if pos < self.tail:  # the common case: the oldest slot holds an entry in time
            i = pos % self.cap
            if self.live[i] and col[i] >= cutoff:
                return np.zeros(0, dtype=np.intp)
        out: list[NDArray[np.intp]] = []
        block = 16
        while pos < self.tail:
            stop = min(self.tail, pos + block)
            slots = self._slots(pos, stop)
            live = self._live(slots)
            keep = np.flatnonzero(live & (col[slots] >= cutoff))
            if keep.size:
                j = int(keep[0])
                out.append(slots[:j][live[:j]])
                pos += j
                break
            out.append(slots[live])
            pos = stop
            block *= 4
        return self._drop(pos, out)

    def _drop(self, head: int, out: list[NDArray[np.intp]]) -> NDArray[np.intp]:
        """Move the head; the entries at the slots ``out`` leave."""
        self.head = head
        res = np.concatenate(out) if out else np.zeros(0, dtype=np.intp)
        self.live[res] = False
        if self.idcol is not None and res.size:
            self.idcol.discard_at(res)
        return res
