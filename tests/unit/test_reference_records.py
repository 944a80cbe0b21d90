"""Reference records on local disk: byte-for-byte round trips, one file per model, the
store's own directory removed at close, safe file names, and memory when disk fails."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.detectors.serialization import sign_record
from driftline.streams.reference_records import LOCK, PREFIX, ReferenceRecords, file_name


def reference(model: str = "m") -> ReferenceProfile:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 3))
    return build_profile(
        model, {"a": x[:, 0], "b": x[:, 1], "kind": rng.choice(["x", "y"], 3000).tolist()},
        prediction=1.0 / (1.0 + np.exp(-x[:, 2])), created_at=1.0)


def files(path: Path) -> set[str]:
    """The names in ``path``, without a store's lock file."""
    return set(os.listdir(path)) - {LOCK}


def test_records_round_trip_from_disk_byte_for_byte(tmp_path: Path) -> None:
    ref = reference()
    plain = ref.to_json()
    signed = sign_record(plain, b"k" * 32)
    with ReferenceRecords(tmp_path) as recs:
        recs.put("m", ref.reference_id, signed, b"m-key")
        recs.put("other", "other@1", plain)
        assert recs.path is not None and recs.path.parent == tmp_path
        assert files(recs.path) == {file_name("m"), file_name("other")}
        rec = recs.get("m", ref.reference_id)
        assert rec is not None and rec.packed is None  # only the index is in memory
        assert rec.value == signed and rec.key == b"m-key" and rec.size == len(signed)
        assert rec.path == recs.path / file_name("m")
        stored = rec.path.read_bytes()
        assert zlib.decompress(stored) == signed and len(stored) == rec.packed_size
        assert rec.packed_size < len(signed) // 2  # compressed
        other = recs.get("other")
        assert other is not None and other.value == plain and other.key == b"other"
        assert recs.get("m", "m@another") is None and recs.get("missing") is None
        assert recs.in_memory == 0 and recs.memory_bytes == 0
        assert recs.nbytes == sum(len(zlib.compress(v, 1)) for v in (signed, plain))


def test_a_replaced_reference_leaves_one_file_per_model(tmp_path: Path) -> None:
    plain = reference().to_json()
    with ReferenceRecords(tmp_path) as recs:
        recs.put("keep", "keep@1", b"kept")
        for i in range(5):
            recs.put("m", f"m@{i}", plain + b" " * i)
        assert len(recs) == 2
        assert recs.path is not None and files(recs.path) == {file_name("m"), file_name("keep")}
        latest = recs.get("m")
        assert latest is not None and latest.reference_id == "m@4"
        assert latest.value == plain + b"    " and recs.get("m", "m@3") is None
        keep = recs.get("keep")
        assert keep is not None and keep.value == b"kept"


def test_close_removes_only_the_directory_the_store_made(tmp_path: Path) -> None:
    (tmp_path / "someone-else.txt").write_bytes(b"x")
    a, b = ReferenceRecords(tmp_path), ReferenceRecords(tmp_path)
    assert a.path is None  # nothing made before the first record
    a.put("m", "m@1", b"a")
    b.put("m", "m@1", b"b")
    assert a.path is not None and b.path is not None and a.path != b.path
    assert a.path.name.startswith(PREFIX) and b.path.name.startswith(PREFIX)
    a_path = a.path
    a.close()
    assert not a_path.exists() and a.path is None
    assert files(tmp_path) == {"someone-else.txt", b.path.name} and len(a) == 0
    rec = b.get("m")
    assert rec is not None and rec.value == b"b"
    b.close()
    assert files(tmp_path) == {"someone-else.txt"}
    b.close()  # twice: nothing left to do


def test_without_a_directory_the_store_uses_a_private_temporary_one() -> None:
    recs = ReferenceRecords()
    recs.put("m", "m@1", b"value")
    path = recs.path
    assert path is not None and path.is_dir()
    assert path.parent == Path(tempfile.gettempdir()) and path.name.startswith(PREFIX)
    assert files(path) == {file_name("m")}
    recs.close()
    assert not path.exists() and recs.get("m") is None


def test_a_configured_directory_that_does_not_exist_yet_is_made(tmp_path: Path) -> None:
    with ReferenceRecords(tmp_path / "a" / "b") as recs:
        recs.put("m", "m@1", b"value")
        assert recs.path is not None and recs.path.parent == tmp_path / "a" / "b"
        path = recs.path
    assert not path.exists() and (tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize("hostile", [
    "../x", "../../etc/passwd", "/abs/path", "a/b\\c", ".", "..", "", "x" * 10_000,
    "modèle-ü-模型-🙂", "nul\x00byte", "new\nline", "\udcff-lone-surrogate",
])
def test_file_names_are_safe_for_any_model_name(tmp_path: Path, hostile: str) -> None:
    key = hostile.encode("utf-8", "surrogatepass")
    with ReferenceRecords(tmp_path) as recs:
        recs.put(hostile, "r@1", b"value of " + key, key)
        assert recs.path is not None
        assert files(tmp_path) == {recs.path.name}  # nothing written beside the store
        (name,) = files(recs.path)
        assert name == file_name(hostile) and len(name) == 68 and name.isascii()
        rec = recs.get(hostile)
        assert rec is not None and rec.value == b"value of " + key and rec.key == key
        assert recs.in_memory == 0


def test_distinct_models_get_distinct_files(tmp_path: Path) -> None:
    names = ["../x", "..x", "x", "X", "x ", "/x", "x" * 300, "x" * 301]
    with ReferenceRecords(tmp_path) as recs:
        for i, m in enumerate(names):
            recs.put(m, f"r@{i}", str(i).encode())
        assert recs.path is not None and len(files(recs.path)) == len(names)
        for i, m in enumerate(names):
            rec = recs.get(m)
            assert rec is not None and rec.value == str(i).encode()


def test_records_that_cannot_be_written_are_kept_in_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    signed = sign_record(reference().to_json(), b"k" * 32)
    with caplog.at_level(logging.WARNING, logger="driftline.reference_records"):
        recs = ReferenceRecords(not_a_dir)
        recs.put("m", "m@1", signed, b"m-key")
        recs.put("n", "n@1", b"n-value")
    assert len([r for r in caplog.records if "in memory" in r.getMessage()]) == 1  # once
    assert recs.in_memory == 2 and recs.path is None
    rec = recs.get("m", "m@1")
    assert rec is not None and rec.path is None and rec.packed is not None
    assert rec.value == signed and rec.key == b"m-key"  # still re-publishable exactly
    assert recs.memory_bytes == recs.nbytes == len(zlib.compress(signed, 1)) + len(
        zlib.compress(b"n-value", 1))
    recs.close()
    assert not_a_dir.read_bytes() == b"" and len(recs) == 0


def test_one_record_failing_to_write_falls_back_alone_and_recovers(tmp_path: Path) -> None:
    with ReferenceRecords(tmp_path) as recs:
        recs.put("ok", "ok@1", b"on disk")
        assert recs.path is not None
        blocker = recs.path / file_name("m")  # a directory where the file would go
        blocker.mkdir()
        (blocker / "inside").write_bytes(b"")
        recs.put("m", "m@1", b"in memory")
        assert recs.in_memory == 1
        assert files(recs.path) == {file_name("ok"), file_name("m")}  # no temp file left
        rec = recs.get("m")
        assert rec is not None and rec.path is None and rec.value == b"in memory"
        (blocker / "inside").unlink()
        blocker.rmdir()
        recs.put("m", "m@2", b"on disk too")  # the next reference is written again
        rec = recs.get("m")
        assert rec is not None and rec.path is not None and rec.value == b"on disk too"
        assert recs.in_memory == 0 and recs.memory_bytes == 0


def test_the_worker_counts_records_kept_in_memory(tmp_path: Path) -> None:
    from driftline.streams.settings import Settings
    from driftline.streams.worker import Worker

    registry = CollectorRegistry()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    gauge = "driftline_worker_reference_records_in_memory"
    w = Worker(Settings(data_dir=str(not_a_dir)), registry)
    assert registry.get_sample_value(gauge) == 0
    w._keep_record("m", "m@1", b"value", b"m")
    assert registry.get_sample_value(gauge) == 1
    rec = w._reference_records.get("m")
    assert rec is not None and rec.value == b"value"
    ok = Worker(Settings(data_dir=str(tmp_path / "data")), CollectorRegistry())
    ok._keep_record("m", "m@1", b"value", b"m")
    assert ok._reference_records.in_memory == 0
    assert len(list((tmp_path / "data").iterdir())) == 1
    ok._reference_records.close()
    assert list((tmp_path / "data").iterdir()) == []


def test_a_directory_left_by_a_dead_process_is_removed_by_the_next_store(
        tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", (
        "import os, sys\n"
        "from driftline.streams.reference_records import ReferenceRecords\n"
        "r = ReferenceRecords(sys.argv[1]); r.put('m', 'm@1', b'v')\n"
        "print(r.path); sys.stdout.flush(); os._exit(0)  # killed: no close\n"),
        str(tmp_path)], capture_output=True, text=True, check=True, timeout=60)
    left = Path(dead.stdout.strip())
    assert left.parent == tmp_path and (left / file_name("m")).exists()
    foreign = tmp_path / (PREFIX + "not-a-store")  # no lock file: not ours, kept
    foreign.mkdir()
    (tmp_path / (PREFIX + "a-file")).write_bytes(b"")
    with ReferenceRecords(tmp_path) as live, ReferenceRecords(tmp_path) as recs:
        live.put("m", "m@1", b"live")
        assert not left.exists()  # removed when the next store made its directory
        assert live.path is not None
        recs.put("m", "m@1", b"v")  # the live store's directory is locked: kept
        assert recs.path is not None and live.path.exists()
        rec = live.get("m")
        assert rec is not None and rec.value == b"live"
        assert files(tmp_path) == {foreign.name, PREFIX + "a-file", live.path.name,
                                   recs.path.name}
    assert files(tmp_path) == {foreign.name, PREFIX + "a-file"}
