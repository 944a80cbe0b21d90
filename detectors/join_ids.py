"""The ids of a label-join FIFO, in one of two forms: as their bytes, when they are hex
or UUIDs, or as strings.

Event ids are mostly ``uuid4().hex`` (lowercase hex of one even length) or
``str(uuid4())`` (the canonical lowercase UUID form, with dashes). While every id a FIFO
took in is of one such kind (hex of one width of at most 32 characters, or UUIDs), it
keeps them as their bytes (:class:`HexColumn`: 16 per uuid, a uint8 column of its ring)
indexed by a ``KeyIndex`` bound to that column (its entries are a slot and a hash; keys
are compared in the column): no str object per entry is kept (~90 bytes each) and
hashing and comparing them touch no Python object. The first id of another kind (another length,
upper case, any other string) turns the FIFO to strings for good (:class:`StrColumn`: an
object column indexed by an ``IdIndex``). Both columns have the same methods; the FIFO
holds one.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.join_index import IdIndex, KeyIndex
from driftline.detectors.serialization import hex_bytes, put_strs, uuid_bytes

Moves = tuple[tuple[NDArray[np.intp] | slice, slice], ...]
MAX_WIDTH = 16  # bytes of a hex id kept as bytes (32 hex characters: uuid4().hex)


@dataclass(frozen=True, slots=True)
class HexIds:
    """Ids that are lowercase hex of one even length (or canonical UUID strings:
    ``dashed``), as their bytes: one row each."""

    keys: NDArray[np.uint8]  # (n, width), C-contiguous
    dashed: bool = False

    @property
    def width(self) -> int:
        return int(self.keys.shape[1])

    @property
    def form(self) -> tuple[int, bool]:
        """What ids of another batch must share to be compared by their bytes."""
        return int(self.keys.shape[1]), self.dashed

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def __getitem__(self, part: slice) -> HexIds:
        return HexIds(self.keys[part], self.dashed)

    def strs(self) -> list[str]:
        """The ids as strings."""
        text, w = self.keys.tobytes().hex(), 2 * self.width
        if self.dashed:
            return [f"{text[i:i + 8]}-{text[i + 8:i + 12]}-{text[i + 12:i + 16]}-"
                    f"{text[i + 16:i + 20]}-{text[i + 20:i + 32]}" for i in range(0, len(text), w)]
        return [text[i:i + w] for i in range(0, len(text), w)]


#: A batch of ids: strings, or hex ids as their bytes.
Ids = list[str] | HexIds
#: Ring slots: an array, or one run of consecutive slots as a slice (read as views).
Slots = NDArray[np.intp] | slice


def hex_ids(ids: Sequence[Any]) -> HexIds | None:
    """``ids`` as :class:`HexIds` when all are lowercase hex strings of one even length
    of at most 32 characters, or all canonical lowercase UUID strings (else None; also
    for no ids)."""
    vals = ids if isinstance(ids, list) else list(ids)
    if not vals:
        return None
    raw = hex_bytes(vals)
    if raw is not None and len(raw) <= MAX_WIDTH * len(vals):
        return HexIds(np.frombuffer(raw, dtype=np.uint8).reshape(len(vals), -1))
    raw = uuid_bytes(vals) if raw is None else None
    if raw is not None:
        return HexIds(np.frombuffer(raw, dtype=np.uint8).reshape(len(vals), 16), True)
    return None


def as_strs(ids: Ids) -> list[str]:
    return ids.strs() if isinstance(ids, HexIds) else ids


class StrColumn:
    """Ids as str objects in an object column, indexed by an ``IdIndex``."""

    def __init__(self, cap: int) -> None:
        self.ids: NDArray[Any] = np.empty(cap, dtype=object)
        self.index = IdIndex()

    def __len__(self) -> int:
        return len(self.index)

    def resize(self, cap: int, moves: Moves) -> None:
        ids = np.empty(cap, dtype=object)
        for src, dst in moves:
            if dst.stop > dst.start:
                ids[dst] = self.ids[src]
        self.ids = ids

    def write(self, at: int, ids: Ids, a: int, b: int, id_array: NDArray[Any] | None) -> None:
        """Ids ``a..b`` of the batch (as strings) into slots ``at..`` (``id_array``: the
        same ids as an object array, faster to copy)."""
        src: Any = id_array if id_array is not None else ids
        self.ids[at:at + b - a] = src[a:b]

    def put(self, ids: Ids, slots: NDArray[np.int64]) -> bytes:
        return cast(bytes, self.index.put(as_strs(ids), slots))

    def put_at(self, slots: NDArray[np.int64]) -> bytes:
        """Index the ids held at these slots."""
        return cast(bytes, self.index.put(self.ids[slots].tolist(), slots))

    def discard_at(self, slots: NDArray[np.intp]) -> None:
        self.index.discard(self.ids[slots].tolist())

    def pop(self, ids: Ids) -> NDArray[np.int64]:
        """Each id's slot, -1 when it is not in; those found leave."""
        pop = self.index.pop
        return np.fromiter((pop(i, -1) for i in as_strs(ids)), dtype=np.int64, count=len(ids))

    def get(self, eid: str) -> int | None:
        return cast("int | None", self.index.get(eid))

    def get_many(self, ids: Ids) -> NDArray[np.int64]:
        return np.frombuffer(self.index.get_slots(as_strs(ids)), dtype=np.int64)

    def at(self, slots: Slots) -> list[str]:
        return cast(list[str], self.ids[slots].tolist())

    def batch_at(self, slots: NDArray[np.intp]) -> Ids:
        return self.at(slots)

    def put_strs(self, arrays: dict[str, NDArray[Any]], name: str, slots: Slots) -> None:
        put_strs(arrays, name, self.at(slots))

    def clear(self) -> None:
        self.index.clear()

    def items(self) -> list[tuple[str, int]]:
        return list(self.index.items())


class HexColumn:
    """Hex ids of one width (or UUIDs: ``dashed``) as their bytes in a uint8 column,
    indexed by a ``KeyIndex`` that reads them there: an entry's key stays at its slot
    while the entry is in (the ring writes a batch before it puts it, and reuses only
    slots whose entries left)."""

    def __init__(self, cap: int, width: int, dashed: bool = False) -> None:
        self.width, self.dashed = width, dashed
        self.keys: NDArray[np.uint8] = np.empty((cap, width), dtype=np.uint8)
        self.index = KeyIndex(width, secrets.token_bytes(32))
        self.index.bind(self.keys)  # the index reads its keys here (entries: slot + hash)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def form(self) -> tuple[int, bool]:
        """What a batch of :class:`HexIds` must share to be kept here."""
        return self.width, self.dashed

    def resize(self, cap: int, moves: Moves) -> None:
        """A column of ``cap`` slots with the keys moved. A larger one also keeps every key
        at its former slot, where the index finds it until the entry is put at its new
        slot (the ring puts the moved entries again); a smaller one empties the index."""
        old = self.keys
        keys = np.empty((cap, self.width), dtype=np.uint8)
        if cap >= len(old):
            keys[:len(old)] = old
        else:
            self.index.clear()
        for src, dst in moves:
            if dst.stop > dst.start:
                keys[dst] = old[src]
        self.keys = keys
        self.index.bind(keys)

    def write(self, at: int, ids: Ids, a: int, b: int, id_array: NDArray[Any] | None) -> None:
        assert isinstance(ids, HexIds)
        self.keys[at:at + b - a] = ids.keys[a:b]

    def put(self, ids: Ids, slots: NDArray[np.int64]) -> bytes:
        """Index ``ids``, written at ``slots`` (:meth:`write`) first."""
        assert isinstance(ids, HexIds)
        return cast(bytes, self.index.put(slots))

    def put_at(self, slots: NDArray[np.int64]) -> bytes:
        return cast(bytes, self.index.put(slots))

    def _ours(self, ids: Ids) -> tuple[NDArray[np.uint8], NDArray[np.intp] | None]:
        """The keys of those ``ids`` that can be in (of this column's form) and their
        positions (None: all of them)."""
        if not isinstance(ids, HexIds):
            hexed = hex_ids(ids)
            if hexed is None:  # some are not of one such form: one by one
                return self._some(ids)
            ids = hexed
        if ids.form != self.form:
            return np.empty((0, self.width), dtype=np.uint8), np.zeros(0, dtype=np.intp)
        return ids.keys, None

    def _some(self, ids: list[str]) -> tuple[NDArray[np.uint8], NDArray[np.intp]]:
        size = 36 if self.dashed else 2 * self.width
        keep = [i for i, e in enumerate(ids) if type(e) is str and len(e) == size]
        hexed = hex_ids([ids[i] for i in keep]) if keep else None
        if hexed is not None and hexed.form == self.form:  # the others: another length
            return hexed.keys, np.asarray(keep, dtype=np.intp)
        keep, raw = [], []
        for i, e in enumerate(ids):
            key = self.key_of(e)
            if key is not None:
                keep.append(i)
                raw.append(key)
        return (np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(keep), self.width),
                np.asarray(keep, dtype=np.intp))

    def discard_at(self, slots: NDArray[np.intp]) -> None:
        self.index.discard(self.keys[slots])

    def pop(self, ids: Ids) -> NDArray[np.int64]:
        return self._slots(ids, self.index.pop_slots)

    def get_many(self, ids: Ids) -> NDArray[np.int64]:
        return self._slots(ids, self.index.get_slots)

    def _slots(self, ids: Ids, lookup: Any) -> NDArray[np.int64]:
        """``lookup``'s slot of each id (-1: not in; ids of another form are not in)."""
        keys, where = self._ours(ids)
        found = np.frombuffer(lookup(keys), dtype=np.int64)
        if where is None:
            return found
        out = np.full(len(ids), -1, dtype=np.int64)
        out[where] = found
        return out

    def key_of(self, eid: object) -> bytes | None:
        """The bytes of one id of this column's form, else None (no arrays: for one id)."""
        raw = (uuid_bytes if self.dashed else hex_bytes)([eid])  # type: ignore[list-item]
        return raw if raw is not None and len(raw) == self.width else None

    def get(self, eid: str) -> int | None:
        key = self.key_of(eid)
        if key is None or not len(self.index):
            return None
        slot = int.from_bytes(self.index.get_slots(key), sys.byteorder, signed=True)
        return None if slot < 0 else slot

    def at(self, slots: Slots) -> list[str]:
        return HexIds(self.keys[slots], self.dashed).strs()

    def batch_at(self, slots: NDArray[np.intp]) -> Ids:
        return HexIds(self.keys[slots], self.dashed)

    def put_strs(self, arrays: dict[str, NDArray[Any]], name: str, slots: Slots) -> None:
        """As :func:`put_strs` writes these ids (hex ids: their bytes, the ``.hex`` form;
        a view of the column for a slice)."""
        keys = self.keys[slots]
        if len(keys) and not self.dashed:
            arrays[f"{name}.hex"] = keys
        else:
            put_strs(arrays, name, HexIds(keys, self.dashed).strs())

    def clear(self) -> None:
        self.index.clear()

    def items(self) -> list[tuple[str, int]]:
        pairs = self.index.items()
        keys = np.frombuffer(b"".join(k for k, _ in pairs), dtype=np.uint8)
        strs = HexIds(keys.reshape(len(pairs), self.width), self.dashed).strs()
        return list(zip(strs, (s for _, s in pairs), strict=True))
