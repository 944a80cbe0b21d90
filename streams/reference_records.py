"""The exact references-topic record of each model's reference, kept on local disk.

A worker keeps its references without their feature samples (see
:meth:`~driftline.detectors.reference.ReferenceProfile.without_samples`), so it cannot
write them back out. After the Kafka cluster lost its data it re-publishes these records
instead: the bytes it read from the topic (signed records included) or the bytes it
published itself, byte for byte. One entry per model, the latest replacing the one
before, so the store holds at most as many records as the worker holds references.

Each record is written zlib-compressed to a file of its own (temp file, then
``os.replace``) in a directory private to this store; only a small index (key,
reference id, path, sizes) stays in memory. The file's name is a hash of the model's
name, never the name itself. A record that cannot be written (disk full, read-only
directory) is kept compressed in memory instead, so it can still be re-published.
:meth:`ReferenceRecords.close` removes the directory the store created, nothing else.

The directory holds a lock file, locked (``flock``) for as long as its store is open.
A process that dies without closing its store releases the lock, so the next store
made beside it removes the directory it left behind (e.g. a container restarted after
an out-of-memory kill, its ``emptyDir`` kept): only directories with such a lock file,
and only while nobody holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger("driftline.reference_records")

#: zlib level 1: a ~0.9 MB reference record packs to ~0.36 MB in ~15 ms (level 6 packs
#: ~10 % smaller at ~6 times the CPU, which every reference read at start-up would pay).
LEVEL = 1
PREFIX = "driftline-"
SUFFIX = ".ref"
LOCK = ".lock"


def file_name(model: str) -> str:
    """The record file's name for ``model``: a hash, safe for any model name."""
    digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()
    return digest + SUFFIX


@dataclass(frozen=True)
class ReferenceRecord:
    """One model's reference record: its Kafka key, and where its value is kept.

    ``path``: the file holding the compressed value; ``None`` when it is held in
    memory (``packed``) because it could not be written.
    """

    model: str
    reference_id: str
    key: bytes
    size: int  # of the uncompressed value
    packed_size: int  # of the compressed value
    path: Path | None = None
    packed: bytes | None = None

    @property
    def value(self) -> bytes:
        """The record's value exactly as it was read or published (reads the file)."""
        if self.packed is not None:
            return zlib.decompress(self.packed)
        assert self.path is not None
        return zlib.decompress(self.path.read_bytes())


class ReferenceRecords:
    """The latest reference record per model, one compressed file each.

    ``directory``: where to create this store's own directory (``None`` or empty: the
    system's temporary directory). The directory is made at the first record.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None,
                 level: int = LEVEL) -> None:
        self.level = level
        self.parent = Path(directory) if directory else None
        self.path: Path | None = None  # this store's directory, once made
        self._records: dict[str, ReferenceRecord] = {}
        self._warned = False
        self._lock: int | None = None  # fd of the directory's lock file, held while open

    # -- writing -------------------------------------------------------------------------
    def put(self, model: str, reference_id: str, value: bytes, key: bytes | None = None) -> None:
        """Keep ``value`` as the record of ``model``'s reference ``reference_id`` (``key``:
        the record's Kafka key, default the model's name), replacing the one before."""
        packed = zlib.compress(bytes(value), self.level)
        key = model.encode() if key is None else bytes(key)
        try:
            path = self._write(file_name(model), packed)
        except OSError as exc:
            self._fallback(model, exc)
            self._records[model] = ReferenceRecord(model, reference_id, key, len(value),
                                                   len(packed), packed=packed)
            return
        self._records[model] = ReferenceRecord(model, reference_id, key, len(value),
                                               len(packed), path=path)

    def _write(self, name: str, data: bytes) -> Path:
        directory = self._directory()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            target = directory / name
            os.replace(tmp, target)  # a replaced reference's file goes with it
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def _directory(self) -> Path:
        if self.path is None:
            if self.parent is not None:
                self.parent.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.parent))
            try:
                self._lock = _locked_file(path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            self.path = path
            remove_abandoned(path.parent, keep=path)
        return self.path

    def _fallback(self, model: str, exc: OSError) -> None:
        old = self._records.get(model)
        if old is not None and old.path is not None:  # the file of the replaced reference
            old.path.unlink(missing_ok=True)
        if not self._warned:
            self._warned = True
            log.warning("cannot write reference records to %s (%s); keeping them in memory",
                        self.path or self.parent or tempfile.gettempdir(), exc)

    # -- reading -------------------------------------------------------------------------
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
    def in_memory(self) -> int:
        """Records held in memory because they could not be written."""
        return sum(r.packed is not None for r in self._records.values())

    @property
    def nbytes(self) -> int:
        """Compressed bytes held, on disk and in memory."""
        return sum(r.packed_size for r in self._records.values())

    @property
    def memory_bytes(self) -> int:
        """Compressed bytes held in memory."""
        return sum(len(r.packed) for r in self._records.values() if r.packed is not None)

    # -- cleanup -------------------------------------------------------------------------
    def close(self) -> None:
        """Forget every record and remove the directory this store made (a later record
        makes a new one)."""
        self._records.clear()
        path, self.path = self.path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> ReferenceRecords:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _locked_file(directory: Path) -> int:
    """Make ``directory``'s lock file, locked from the moment it has its name."""
    fd, tmp = tempfile.mkstemp(prefix=".lock-", dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, directory / LOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_abandoned(parent: Path, keep: Path | None = None) -> list[Path]:
    """Remove the store directories in ``parent`` whose lock nobody holds (their
    process died without closing them); directories without a lock file are left."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        if path == keep or not path.name.startswith(PREFIX) or path.is_symlink():
            continue
        try:
            fd = os.open(path / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # not a store directory, or not one of ours
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live store
            continue
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed reference records left behind in %s", path)
        finally:
            os.close(fd)
    return removed
