"""A FIFO of the label join written as records of bounded size: sealed chunks, once each.

A join store holds up to ``max_entries`` predictions and as many ids that left it;
written whole with every snapshot of its model, a full store is ~6 MiB every few seconds
for each busy model. Written as records, each entry is written about once:

- entries carry sequence numbers, never reused; chunk ``c`` is the entries numbered
  ``c * size`` to ``(c + 1) * size - 1``, *sealed* once the next number is past it;
- the entries of a sealed chunk still in the FIFO are written once, as a record of their
  own named ``<fifo>/<c>/<w>`` (``w`` counts the writes: no name is written twice, so a
  store record already on the topic never sees its chunks change);
- the store's own record names the chunks in use, with one bit per entry of each chunk
  record (still in or not), and holds the open chunk's entries itself;
- a chunk none of whose entries is left is no longer named: its record can be deleted
  once a store record that does not name it is acknowledged.

The caller writes the new chunk records, and has them acknowledged, before the store
record that names them. A chunk's record may be written as soon as it is sealed
(:meth:`ChunkBook.seal`), between store records: the next store record then names it,
and the wait for acknowledgements before that record finds most of them done. Restoring
reads the store record, then each chunk it names: the entries whose bit is set, in
sequence order, then the open ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.errors import SnapshotError
from driftline.detectors.serialization import pack, unpack

CHUNK_KIND = "driftline.labeljoin.chunk"
#: Entries per chunk: a chunk record of predictions is ~135 kB (uuid4().hex ids).
CHUNK_ENTRIES = 4096

Arrays = dict[str, NDArray[Any]]
_NAME = re.compile(r"(pred|gone)/[0-9]+/[0-9]+")


def is_chunk_name(name: str) -> bool:
    """Whether ``name`` is a chunk record's name (``<fifo>/<chunk>/<write>``)."""
    return _NAME.fullmatch(name) is not None


@dataclass
class ChunkBook:
    """The chunk records of one FIFO that its store's records may name."""

    fifo: str  # "pred" or "gone": part of each record's name
    size: int = CHUNK_ENTRIES
    written: dict[int, tuple[str, NDArray[np.int64]]] = field(default_factory=dict)
    writes: int = 0  # records written (the next name's last part)
    stale: list[str] = field(default_factory=list)  # names to drop with the next records
    dropping: list[str] = field(default_factory=list)  # dropped by the last records
    sealed: int = 0  # chunks before this one were sealed when last written (seal, records)

    def rewrite(self) -> None:
        """Write every chunk again, under new names, with the next records (those written
        may not be on the topic: a failed write, a new cluster); the old names, and those
        the failed records dropped, are dropped by the next ones."""
        self.stale += self.dropping + [name for name, _ in self.written.values()]
        self.dropping = []
        self.written = {}

    def due(self, next_seq: int) -> tuple[int, int] | None:
        """The numbers ``[lo, hi)`` of the entries of chunks sealed since the last records
        written (None when no chunk was sealed since)."""
        upto = next_seq // self.size
        return None if upto <= self.sealed else (self.sealed * self.size, upto * self.size)

    def seal(self, seq: NDArray[np.int64], next_seq: int, encode: Callable[[Any], Arrays],
             key: bytes | None, owner: str = "") -> dict[str, bytes]:
        """Records of the chunks sealed since the last records written, by name
        (``seq``: the numbers of their entries still in, oldest first, within
        :meth:`due`'s range; ``encode`` as for :meth:`records`). The next store record
        names them; they must be acknowledged before it is written."""
        new: dict[str, bytes] = {}
        for c, a, b in _chunk_runs(seq, self.size):
            if c < self.sealed or c in self.written or (c + 1) * self.size > next_seq:
                raise RuntimeError(f"{self.fifo} chunk {c} is not newly sealed")
            name, blob = self._write(c, seq[a:b], encode(np.arange(a, b)), key, owner)
            new[name] = blob
        self.sealed = max(self.sealed, next_seq // self.size)
        return new

    def _write(self, c: int, live: NDArray[np.int64], arrays: Arrays, key: bytes | None,
               owner: str) -> tuple[str, bytes]:
        """The record of sealed chunk ``c`` (``live``: its entries' numbers, ``arrays``:
        their columns) under the next name, noted as written."""
        name = f"{self.fifo}/{c}/{self.writes}"
        self.writes += 1
        on = np.zeros(self.size, dtype=bool)
        on[live - c * self.size] = True
        arrays["seq.bits"] = np.packbits(on)  # 1 bit per entry of the chunk, not 64
        blob = pack(CHUNK_KIND, {"fifo": self.fifo, "chunk": c, "name": name,
                                 "owner": owner}, arrays, key=key)
        self.written[c] = (name, live.copy())
        return name, blob

    def records(self, seq: NDArray[np.int64], next_seq: int, encode: Callable[[Any], Arrays],
                key: bytes | None, owner: str = ""
                ) -> tuple[dict[str, Any], Arrays, dict[str, bytes], list[str]]:
        """The FIFO's live entries (``seq``: their numbers, oldest first; ``encode(i)``:
        the arrays of the entries at those indices into ``seq``) as (meta, arrays of the
        store record, new chunk records by name, names no longer needed). ``owner``:
        whose store it is (in each chunk record, checked on restore)."""
        size = self.size
        k = int(np.searchsorted(seq, next_seq - next_seq % size))  # sealed: before k
        names: list[str] = []
        sizes: list[int] = []
        bits: list[NDArray[np.bool_]] = []
        new: dict[str, bytes] = {}
        used: set[int] = set()
        for c, a, b in _chunk_runs(seq[:k], size):
            live = seq[a:b]
            if c in self.written:
                name, rec = self.written[c]
                on = _still_in(rec, live, c * size, size)
                if on is None:
                    raise RuntimeError(f"entries joined sealed chunk {name}")
            else:
                name, blob = self._write(c, live, encode(np.arange(a, b)), key, owner)
                new[name] = blob
                rec = live
                on = np.ones(rec.size, dtype=bool)
            used.add(c)
            names.append(name)
            sizes.append(int(rec.size))
            bits.append(on)
        dropped = self.stale + [self.written.pop(c)[0] for c in list(self.written)
                                if c not in used]
        self.stale, self.dropping = [], dropped
        self.sealed = max(self.sealed, next_seq // size)
        meta = {"size": size, "chunks": names, "sizes": sizes, "next_seq": int(next_seq),
                "writes": self.writes}
        arrays = encode(np.arange(k, seq.size))
        arrays["seq"] = seq[k:]
        arrays["bits"] = np.packbits(np.concatenate(bits) if bits else np.zeros(0, dtype=bool))
        return meta, arrays, new, dropped

    @classmethod
    def restore(cls, fifo: str, meta: dict[str, Any], arrays: Arrays,
                load: Callable[[str], bytes | None], key: bytes | None,
                decode: Callable[[Arrays], dict[str, Any]], owner: str = ""
                ) -> tuple[ChunkBook, list[dict[str, Any]], NDArray[np.int64], int]:
        """The book of one FIFO from its part of a store record, with the entries in use:
        (book, decoded columns of each part in order, their sequence numbers, the next
        sequence number). ``load(name)``: a chunk record, None when it is missing.
        Raises SnapshotError, ValueError, KeyError, TypeError on anything inconsistent."""
        size, names, sizes = meta["size"], meta["chunks"], meta["sizes"]
        next_seq, writes = meta["next_seq"], meta["writes"]
        for v in (size, next_seq, writes, *sizes):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
                raise ValueError(f"bad chunk counter {v!r}")
        if size < 1 or not isinstance(names, list) or len(names) != len(sizes):
            raise ValueError("chunk names and sizes do not line up")
        bits, total = arrays["bits"], sum(sizes)
        if bits.dtype != np.uint8 or bits.size != -(-total // 8):
            raise ValueError("chunk bits do not match the chunk sizes")
        on = np.unpackbits(bits, count=total).astype(bool)
        book = cls(fifo, size, writes=writes, sealed=next_seq // size)
        parts: list[dict[str, Any]] = []
        seqs: list[NDArray[np.int64]] = []
        at = 0
        for name, n in zip(names, sizes, strict=True):
            if not isinstance(name, str) or not is_chunk_name(name):
                raise ValueError(f"bad chunk name {name!r}")
            head, c, w = name.split("/")
            if head != fifo or int(w) >= writes:
                raise ValueError(f"bad chunk name {name!r}")
            blob = load(name)
            if blob is None:
                raise SnapshotError(f"chunk record {name!r} is missing")
            cmeta, carrays, _ = unpack(blob, CHUNK_KIND, key=key)
            seq = _chunk_seq(carrays, int(c), size, n)
            if cmeta.get("fifo") != fifo or cmeta.get("chunk") != int(c) or \
                    cmeta.get("name") != name or cmeta.get("owner") != owner or \
                    seq.dtype != np.int64 or seq.shape != (n,) or n == 0 or \
                    int(seq[0]) < int(c) * size or int(seq[-1]) >= (int(c) + 1) * size or \
                    (np.diff(seq) <= 0).any():
                raise ValueError(f"chunk record {name!r} does not match its name")
            cols = decode(carrays)
            if any(len(v) != n for v in cols.values()):
                raise ValueError(f"chunk record {name!r}: columns of different lengths")
            keep = on[at:at + n]
            at += n
            book.written[int(c)] = (name, seq.copy())
            idx = np.flatnonzero(keep)
            parts.append({k: _take(v, idx) for k, v in cols.items()})
            seqs.append(seq[idx])
        opened = arrays["seq"]
        if opened.dtype != np.int64 or opened.ndim != 1:
            raise ValueError("bad open chunk numbers")
        opened_cols = decode(arrays)
        if any(len(v) != opened.size for v in opened_cols.values()):
            raise ValueError("open chunk: columns of different lengths")
        parts.append(opened_cols)
        seqs.append(opened)
        seq = np.concatenate(seqs)
        if len(book.written) != len(names):
            raise ValueError("a chunk is named twice")
        if seq.size and ((np.diff(seq) <= 0).any() or int(seq[0]) < 0
                         or int(seq[-1]) >= next_seq):
            raise ValueError("chunk entries out of order")
        if opened.size and int(opened[0]) < next_seq - next_seq % size:
            raise ValueError("sealed entries in the open chunk")
        return book, parts, seq, next_seq


def _chunk_seq(arrays: Arrays, c: int, size: int, n: int) -> NDArray[np.int64]:
    """The numbers of the ``n`` entries in chunk record ``c``: from one bit per entry of
    the chunk (``seq.bits``) or, as older records hold them, the numbers themselves.
    Checked before anything of the chunk's size is allocated (the size is the store
    record's word)."""
    bits = arrays.get("seq.bits")
    if bits is None:
        return arrays["seq"]
    if not 0 < n <= size or (c + 1) * size > 2**62:
        raise ValueError(f"chunk {c} of {size} entries cannot hold {n}")
    if bits.dtype != np.uint8 or bits.shape != (-(-size // 8),):
        raise ValueError(f"chunk {c}: entry bits do not match the chunk size")
    if int(np.count_nonzero(bits)) > n:  # each byte with a bit set holds an entry
        raise ValueError(f"chunk {c}: more entries than {n}")
    at = np.flatnonzero(bits)  # only the bytes with entries are unpacked: memory ~ n
    byte, bit = np.nonzero(np.unpackbits(bits[at, None], axis=1))
    seq = at[byte] * 8 + bit  # in order: a byte's first bit is its first entry
    if seq.size != n or int(seq[-1]) >= size:
        raise ValueError(f"chunk {c}: entry bits do not match its {n} entries")
    return seq.astype(np.int64, copy=False) + c * size


def _chunk_runs(seq: NDArray[np.int64], size: int) -> Iterator[tuple[int, int, int]]:
    """``(chunk, a, b)`` for each run ``seq[a:b]`` of the (increasing) entry numbers
    ``seq`` that belong to one chunk of ``size`` entries (one binary search per chunk)."""
    if not seq.size:
        return
    first, last = int(seq[0]) // size, int(seq[-1]) // size
    ends = np.searchsorted(seq, np.arange(first + 1, last + 1, dtype=np.int64) * size).tolist()
    a = 0
    for c, b in zip(range(first, last + 1), [*ends, seq.size], strict=True):
        if b > a:
            yield c, a, b
        a = b


def _still_in(rec: NDArray[np.int64], live: NDArray[np.int64], base: int,
              size: int) -> NDArray[np.bool_] | None:
    """Which entries of a chunk record (numbers ``rec``) are among ``live`` (the chunk's
    entries still in, numbers from ``base``), or None when ``live`` holds one it does not
    (entries never join a sealed chunk). Both are increasing."""
    if live.size == rec.size and np.array_equal(live, rec):
        return np.ones(rec.size, dtype=bool)  # the chunk as written: nothing left it
    mask = np.zeros(size, dtype=bool)
    mask[live - base] = True
    on: NDArray[np.bool_] = mask[rec - base]
    return on if int(np.count_nonzero(on)) == live.size else None


def _take(v: Any, idx: NDArray[np.intp]) -> Any:
    if isinstance(v, np.ndarray):
        return v[idx]
    return [v[i] for i in idx.tolist()]
