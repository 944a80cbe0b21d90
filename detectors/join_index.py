"""The label join's index from event id to ring slot: compiled when the package was
built with a C compiler (``detectors/_id_index.c``), else a dict with the same methods.

Both take a batch of ids in with one call (``put``) and let a list of ids leave
(``discard``), each returning the slots that left as int64 bytes (so the FIFO keeps a
per-slot flag of its entries instead of asking the index). The compiled one keeps one
flat table and prefetches the buckets of a batch ahead of writing them: a model's index
is large (up to ``max_entries`` ids) and mostly out of cache between batches, so a dict
insert per prediction paid a cache miss or two in turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


class DictIdIndex(dict[str, int]):
    """The index as a dict: the semantics, and the stand-in when the extension is absent.

    The join only ever passes ``str`` ids in lists; beyond that the two differ: the
    compiled index treats any key that is not exactly ``str`` as absent (a dict also
    finds ``str`` subclasses and raises on unhashable keys), takes ids as a list or
    tuple only and slots as a contiguous int64 buffer only, and cannot be copied or
    pickled."""

    def put(self, ids: Sequence[str], slots: Any) -> bytes:
        """Take ``ids`` in at ``slots`` (int64); an id already in takes its new slot.
        Returns the slots taken over (int64 bytes), in order."""
        if not all(type(i) is str for i in ids):
            raise TypeError("event ids must be str")
        if len(ids) != len(slots):
            raise ValueError("ids and slots differ in length")
        at = np.asarray(slots, dtype=np.int64)
        if at.size and (at.min() < 0 or at.max() >= 2**32):
            raise ValueError("slots must be in [0, 2**32)")
        old: list[int] = []
        for eid, slot in zip(ids, at.tolist(), strict=True):
            was = self.get(eid)
            if was is not None:
                old.append(was)
            self[eid] = slot
        return np.asarray(old, dtype=np.int64).tobytes()

    def discard(self, ids: Sequence[str]) -> bytes:
        """Let these ids leave (ids that are not in are ignored); returns their slots
        (int64 bytes), in order."""
        gone: list[int] = []
        ids = ids if isinstance(ids, list | tuple) else list(ids)
        if self and not self.keys().isdisjoint(ids):
            for eid in ids:
                slot = self.pop(eid, None) if type(eid) is str else None
                if slot is not None:
                    gone.append(slot)
        return np.asarray(gone, dtype=np.int64).tobytes()

    def get_slots(self, ids: Sequence[str]) -> bytes:
        """Each id's slot, -1 when it is not in (int64 bytes)."""
        if not isinstance(ids, list | tuple):
            raise TypeError("ids must be a list or a tuple")
        return np.asarray([self.get(i, -1) if type(i) is str else -1 for i in ids],
                          dtype=np.int64).tobytes()


class DictKeyIndex(dict[bytes, int]):
    """The key index (fixed-width byte keys: hex event ids as their bytes) as a dict:
    the semantics of the compiled ``KeyIndex``, and its stand-in. It is bound to the
    ring's key column (``bind``) and ``put`` takes in the keys the column holds at the
    slots given; lookups take keys as one buffer of ``n * width`` bytes; slots go out as
    int64 bytes.

    The join passes keys as C-contiguous uint8 arrays and slots as int64 arrays; beyond
    that the two differ: this one takes slots of any integer array-like (the compiled
    one an aligned, contiguous int64 buffer only), keeps a copy of each key (the
    compiled one reads the column: the column must hold an entry's key at its slot while
    the entry is in), and errors may differ in type."""

    def __init__(self, width: int, seed: bytes) -> None:
        super().__init__()
        if not 1 <= width <= 16 or len(seed) != 32:
            raise ValueError("KeyIndex(width in 1..16, seed of 32 bytes)")
        self.width = width
        self._column: NDArray[np.uint8] | None = None

    def _keys(self, keys: Any) -> list[bytes]:
        view = memoryview(keys)
        if not view.c_contiguous:
            raise ValueError("keys must be a C-contiguous buffer")
        raw = view.tobytes()
        w = self.width
        if len(raw) % w:
            raise ValueError(f"keys must be a buffer of n * {w} bytes")
        return [raw[i:i + w] for i in range(0, len(raw), w)]

    def bind(self, column: Any) -> None:
        """Read keys from ``column`` (n * width bytes) from now on; every entry's slot
        must be within it."""
        view = memoryview(column)
        if not view.c_contiguous:
            raise ValueError("the key column must be a C-contiguous buffer")
        flat = np.frombuffer(view, dtype=np.uint8)  # the column's bytes, not a copy
        if flat.size % self.width:
            raise ValueError("the key column must be a buffer of n * width bytes")
        if self and max(self.values()) >= flat.size // self.width:
            raise ValueError("an entry's slot is past the new key column (clear the index first)")
        self._column = flat

    def put(self, slots: Any) -> bytes:
        """Take in the keys the column holds at ``slots`` (int64); returns the slots
        taken over."""
        at = np.asarray(slots, dtype=np.int64)
        col, w = self._column, self.width
        if at.size and (col is None or at.min() < 0 or at.max() >= len(col) // w):
            raise ValueError("put needs a key column (bind one first)" if col is None
                             else "slots must be within the key column")
        raw = col.reshape(-1, w)[at].tobytes() if at.size else b""  # type: ignore[union-attr]
        old: list[int] = []
        for k, s in zip((raw[i:i + w] for i in range(0, len(raw), w)), at.tolist(), strict=True):
            was = self.get(k)
            if was is not None:
                old.append(was)
            self[k] = s
        return np.asarray(old, dtype=np.int64).tobytes()

    def discard(self, keys: Any) -> bytes:
        """These keys leave; returns the slots of those that were in."""
        return np.asarray([s for k in self._keys(keys) if (s := self.pop(k, None)) is not None],
                          dtype=np.int64).tobytes()

    def pop_slots(self, keys: Any) -> bytes:
        """Each key's slot (-1: not in); the keys found leave."""
        return np.asarray([self.pop(k, -1) for k in self._keys(keys)], dtype=np.int64).tobytes()

    def get_slots(self, keys: Any) -> bytes:
        """Each key's slot (-1: not in)."""
        return np.asarray([self.get(k, -1) for k in self._keys(keys)],
                          dtype=np.int64).tobytes()


try:  # built from detectors/_id_index.c when the package is installed with a C compiler
    from driftline.detectors._id_index import IdIndex as _CompiledIdIndex
    from driftline.detectors._id_index import KeyIndex as _CompiledKeyIndex
except ImportError:  # pragma: no cover - exercised by installs without a compiler
    _CompiledIdIndex = None  # type: ignore[assignment,misc]
    _CompiledKeyIndex = None  # type: ignore[assignment,misc]

#: Whether the compiled indexes are built (the dict stand-ins give the same results).
COMPILED = _CompiledIdIndex is not None
#: The index classes the join uses.
IdIndex: type[Any] = _CompiledIdIndex if _CompiledIdIndex is not None else DictIdIndex
KeyIndex: type[Any] = _CompiledKeyIndex if _CompiledKeyIndex is not None else DictKeyIndex
