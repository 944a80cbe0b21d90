"""The exact references-topic record of each model's reference, compressed in memory.

A worker keeps its references without their feature samples (see
:meth:`~driftline.detectors.reference.ReferenceProfile.without_samples`), so it cannot
write them back out. After the Kafka cluster lost its data it re-publishes these records
instead: the bytes it read from the topic (signed records included) or the bytes it
published itself, byte for byte. One entry per model, the latest replacing the one
before, so the archive holds at most as many entries as the worker holds references.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

#: zlib level 1: a ~0.9 MB reference record packs to ~0.36 MB in ~15 ms (level 6 packs
#: ~10 % smaller at ~6 times the CPU, which every reference read at start-up would pay).
LEVEL = 1


@dataclass(frozen=True)
class ReferenceRecord:
    """One model's reference record: its Kafka key and its value, compressed."""

    model: str
    reference_id: str
    key: bytes
    packed: bytes
    size: int  # of the uncompressed value

    @property
    def value(self) -> bytes:
        """The record's value exactly as it was read or published."""
        return zlib.decompress(self.packed)


class ReferenceRecords:
    """The latest reference record per model (zlib-compressed)."""

    def __init__(self, level: int = LEVEL) -> None:
        self.level = level
        self._records: dict[str, ReferenceRecord] = {}

    def put(self, model: str, reference_id: str, value: bytes, key: bytes | None = None) -> None:
        """Keep ``value`` as the record of ``model``'s reference ``reference_id`` (``key``:
        the record's Kafka key, default the model's name), replacing the one before."""
        self._records[model] = ReferenceRecord(
            model, reference_id, model.encode() if key is None else bytes(key),
            zlib.compress(bytes(value), self.level), len(value))

    def get(self, model: str, reference_id: str | None = None) -> ReferenceRecord | None:
        """The record of ``model`` (of its reference ``reference_id`` when given)."""
        rec = self._records.get(model)
        if rec is None or (reference_id is not None and rec.reference_id != reference_id):
            return None
        return rec

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[ReferenceRecord]:
        return iter(list(self._records.values()))

    @property
    def nbytes(self) -> int:
        """Compressed bytes held."""
        return sum(len(r.packed) for r in self._records.values())
