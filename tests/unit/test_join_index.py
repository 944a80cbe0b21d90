"""The label join's id index: the compiled one behaves exactly as a dict.

Random runs of every operation (batches with ids repeated within and across them, gets,
pops, discards, deletions, clears) on ``IdIndex`` and on a plain dict give the same
results and contents after every step; large runs with many deletions exercise the
table's growth and its backward shifts. The dict stand-in (``DictIdIndex``, used when the
extension is not built) runs the same checks.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.detectors import join_index
from driftline.detectors.join_index import DictIdIndex

KINDS: list[Any] = [DictIdIndex]
if join_index.COMPILED:
    KINDS.append(join_index.IdIndex)


def _ids(rng: np.random.Generator, n: int, pool: int) -> list[str]:
    """Ids from a pool of ``pool``; some of other string kinds (Latin-1, UCS-2, UCS-4)."""
    marks = ["", "é", "✓", "\U0001f600"]
    return [f"e{int(i)}{marks[int(i) % 4]}" for i in rng.integers(0, pool, n)]


def _same(ix: Any, ref: dict[str, int]) -> None:
    assert len(ix) == len(ref)
    assert sorted(ix.items()) == sorted(ref.items())


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_a_dict(kind: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ix, ref = kind(), {}
    pool = int(rng.choice([50, 2000, 20000]))
    slot = 0
    for _ in range(400):
        op = rng.random()
        if op < 0.45:  # a batch in (ids may repeat: the last wins)
            ids = _ids(rng, int(rng.choice([0, 1, 5, 64, 700])), pool)
            slots = np.arange(slot, slot + len(ids), dtype=np.int64)
            slot += len(ids)
            old = []  # the slots taken over, in order (an id twice in the batch too)
            for eid, at in zip(ids, slots.tolist(), strict=True):
                if eid in ref:
                    old.append(ref[eid])
                ref[eid] = at
            assert np.frombuffer(ix.put(ids, slots), dtype=np.int64).tolist() == old
        elif op < 0.6:
            for eid in _ids(rng, 40, pool):
                assert ix.pop(eid, None) == ref.pop(eid, None)
        elif op < 0.7:
            ids = _ids(rng, int(rng.integers(0, 300)), pool)
            gone = [s for s in (ref.pop(eid, None) for eid in ids) if s is not None]
            assert np.frombuffer(ix.discard(ids), dtype=np.int64).tolist() == gone
        elif op < 0.8:
            some = _ids(rng, int(rng.choice([0, 1, 40, 300])), pool)
            assert np.frombuffer(ix.get_slots(some), dtype=np.int64).tolist() == \
                [ref.get(eid, -1) for eid in some]
            for eid in _ids(rng, 40, pool):
                assert ix.get(eid) == ref.get(eid)
                assert ix.get(eid, -1) == ref.get(eid, -1)
                assert (eid in ix) == (eid in ref)
                if eid in ref:
                    assert ix[eid] == ref[eid]
                    del ix[eid]
                    del ref[eid]
                    with pytest.raises(KeyError):
                        del ix[eid]
        elif op < 0.82:
            ix.clear()
            ref.clear()
        elif ref:  # take out most of what is in: long runs of backward shifts
            keys = sorted(ref)
            for eid in rng.choice(keys, int(len(keys) * 0.8), replace=False).tolist():
                assert ix.pop(eid) == ref.pop(eid)
        _same(ix, ref)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_equal_text_is_one_key_whatever_the_object(kind: Any) -> None:
    ix = kind()
    a = "".join(["ev", "ent-1"])
    b = "event-" + str(1)
    assert a is not b
    ix.put([a], np.array([3], dtype=np.int64))
    ix.put([b], np.array([9], dtype=np.int64))
    assert len(ix) == 1 and ix.get("event-1") == 9
    assert ix.pop(b) == 9 and len(ix) == 0


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_bad_input_is_refused_and_changes_nothing(kind: Any) -> None:
    ix = kind()
    ix.put(["a", "b"], np.array([0, 1], dtype=np.int64))
    with pytest.raises(TypeError):
        ix.put(["c", 7], np.array([2, 3], dtype=np.int64))
    with pytest.raises(ValueError):
        ix.put(["c"], np.array([2, 3], dtype=np.int64))
    for bad in (-1, 2**32):  # slots of a ring: below 2**32
        with pytest.raises(ValueError):
            ix.put(["c"], np.array([bad], dtype=np.int64))
    ix.put(["c"], np.array([2**32 - 1], dtype=np.int64))
    assert ix.pop("c") == 2**32 - 1
    assert sorted(ix.items()) == [("a", 0), ("b", 1)]
    assert ix.get(7) is None and ix.get(7, -1) == -1 and 7 not in ix
    assert ix.pop(7, None) is None
    with pytest.raises(KeyError):
        ix.pop("zz")
    assert ix.discard([]) == b"" and ix.discard([7, None, "zz"]) == b""
    assert np.frombuffer(ix.get_slots([7, None, "zz", "b"]), dtype=np.int64).tolist() == \
        [-1, -1, -1, 1]
    with pytest.raises(TypeError):
        ix.get_slots(iter(["a"]))


@pytest.mark.skipif(not join_index.COMPILED, reason="the compiled index is not built")
def test_compiled_index_checks_its_arguments_and_holds_its_keys() -> None:
    ix = join_index.IdIndex()
    with pytest.raises(TypeError):
        ix.put(["a"], np.array([0], dtype=np.int32))  # slots are int64
    with pytest.raises(TypeError):
        ix.put(iter(["a"]), np.array([0], dtype=np.int64))  # a list or a tuple
    with pytest.raises(TypeError):
        ix["a"] = 1  # keys go in with put
    key = "".join(["held", "-key"])
    before = sys.getrefcount(key)
    ix.put((key,), np.array([5], dtype=np.int64))
    assert sys.getrefcount(key) == before + 1  # the table holds a reference
    ix.put([key], np.array([6], dtype=np.int64))
    assert sys.getrefcount(key) == before + 1  # taken in again: no second one
    ix.discard([key])
    assert sys.getrefcount(key) == before
    ix.put([key], np.array([7], dtype=np.int64))
    del ix
    gc.collect()
    assert sys.getrefcount(key) == before  # freed with the index


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "pop", "discard"]),
                          st.lists(st.text(max_size=6), max_size=30)), max_size=40))
def test_generated_operations_match_a_dict(ops: list[tuple[str, list[str]]]) -> None:
    for kind in KINDS:
        ix, ref, slot = kind(), {}, 0
        for op, ids in ops:
            if op == "put":
                slots = np.arange(slot, slot + len(ids), dtype=np.int64)
                slot += len(ids)
                ix.put(ids, slots)
                ref.update(zip(ids, slots.tolist(), strict=True))
            elif op == "pop":
                for eid in ids:
                    assert ix.pop(eid, None) == ref.pop(eid, None)
            else:
                gone = [s for s in (ref.pop(eid, None) for eid in ids) if s is not None]
                assert np.frombuffer(ix.discard(ids), dtype=np.int64).tolist() == gone
            _same(ix, ref)


@pytest.mark.skipif(not join_index.COMPILED, reason="the compiled index is not built")
def test_items_survive_a_collection_that_changes_the_index() -> None:
    """A garbage collection during ``items()`` may run a finalizer that empties the
    index: the pairs handed out stay valid (the table is read into a snapshot first)."""
    ix = join_index.IdIndex()
    keys = [f"k{i}-" for i in range(200)]  # made at run time, freed with the index
    ix.put(keys, np.arange(200, dtype=np.int64))
    del keys

    class Finalizer:
        def __del__(self) -> None:
            ix.clear()

    gc.collect()
    gc.disable()
    f = Finalizer()
    f.self = f  # type: ignore[attr-defined]  # a cycle: only a collection frees it
    del f
    before = gc.get_threshold()
    gc.set_threshold(30)
    gc.enable()
    try:
        items = ix.items()
    finally:
        gc.set_threshold(*before)
    gc.collect()
    assert len(ix) == 0
    assert sorted(items) == sorted((f"k{i}-", i) for i in range(200))


@pytest.mark.skipif(not join_index.COMPILED or sys.version_info < (3, 12),
                    reason="Python code runs while exporting a buffer from 3.12 on")
def test_put_reads_the_ids_after_exporting_the_slots() -> None:
    ids = [f"key-{i}" + "!" * 40 for i in range(1000)]

    class Slots:
        def __buffer__(self, flags: int) -> memoryview:
            ids.clear()  # the list changes while put() asks for the slots
            return memoryview(np.arange(1000, dtype=np.int64))

    ix = join_index.IdIndex()
    with pytest.raises(ValueError):  # read after the export: 0 ids, 1000 slots
        ix.put(ids, Slots())
    assert len(ix) == 0


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_missing_key_errors_and_discard_of_an_iterator(kind: Any) -> None:
    ix = kind()
    ix.put(["a", "b"], np.array([0, 1], dtype=np.int64))
    with pytest.raises(KeyError) as err:
        ix.pop("zz")
    assert err.value.args == ("zz",)
    with pytest.raises(KeyError) as err:  # the key is the one argument, even a tuple
        del ix[(1, 2)]
    assert err.value.args == ((1, 2),)
    ids = iter(["a"]) if kind is DictIdIndex else ["a"]  # the compiled one takes lists
    assert np.frombuffer(ix.discard(ids), dtype=np.int64).tolist() == [0]
    assert sorted(ix.items()) == [("b", 1)]


# -- the key index: hex ids as their bytes ---------------------------------------------
KEY_KINDS: list[Any] = [join_index.DictKeyIndex]
if join_index.COMPILED:
    KEY_KINDS.append(join_index.KeyIndex)


def _keys(rng: np.random.Generator, n: int, pool: int, width: int) -> np.ndarray:
    """``n`` keys of ``width`` bytes from a pool of ``pool`` (zero bytes among them)."""
    raw = rng.integers(0, pool, n).astype(">u8").view(np.uint8).reshape(n, 8)
    keys = np.zeros((n, width), dtype=np.uint8)
    keys[:, -min(8, width):] = raw[:, -min(8, width):]
    return keys


def _slots(b: bytes) -> list[int]:
    return np.frombuffer(b, dtype=np.int64).tolist()


@pytest.mark.parametrize("kind", KEY_KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("width", [1, 7, 8, 16])
@pytest.mark.parametrize("seed", range(4))
def test_key_index_random_operations_match_a_dict(kind: Any, width: int, seed: int) -> None:
    """Batches in (keys repeated within and across them; written to the bound column
    first), pops, discards, gets, clears, mass removals and new columns (the keys copied
    over, as a growing ring does): the same slots out and the same contents as a dict of
    bytes."""
    rng = np.random.default_rng(seed)
    ix, ref = kind(width, bytes(range(32))), {}
    column = np.zeros((220_000, width), dtype=np.uint8)
    ix.bind(column)
    pool = int(rng.choice([50, 2000, 20000])) if width > 1 else 256
    slot = 0
    for _ in range(300):
        op = rng.random()
        if op < 0.45:
            keys = _keys(rng, int(rng.choice([0, 1, 5, 64, 700])), pool, width)
            slots = np.arange(slot, slot + len(keys), dtype=np.int64)
            slot += len(keys)
            column[slots] = keys
            old = []
            for k, at in zip((r.tobytes() for r in keys), slots.tolist(), strict=True):
                if k in ref:
                    old.append(ref[k])
                ref[k] = at
            assert _slots(ix.put(slots)) == old
        elif op < 0.6:
            keys = _keys(rng, 40, pool, width)
            assert _slots(ix.pop_slots(keys)) == [ref.pop(r.tobytes(), -1) for r in keys]
        elif op < 0.7:
            keys = _keys(rng, int(rng.integers(0, 300)), pool, width)
            gone = [s for s in (ref.pop(r.tobytes(), None) for r in keys) if s is not None]
            assert _slots(ix.discard(keys)) == gone
        elif op < 0.8:
            keys = _keys(rng, 40, pool, width)
            assert _slots(ix.get_slots(keys)) == [ref.get(r.tobytes(), -1) for r in keys]
        elif op < 0.82:
            ix.clear()
            ref.clear()
        elif op < 0.85:  # a new column with the same keys: the old one may change freely
            old_column, column = column, column.copy()
            ix.bind(column)
            old_column[:] = 0
        elif ref:  # most of what is in leaves: long runs of backward shifts
            keys = sorted(ref)
            out = [keys[i] for i in rng.choice(len(keys), int(len(keys) * 0.8), replace=False)]
            assert _slots(ix.discard(b"".join(out))) == [ref.pop(k) for k in out]
        assert len(ix) == len(ref)
        assert sorted(ix.items()) == sorted(ref.items())


@pytest.mark.parametrize("kind", KEY_KINDS, ids=lambda k: k.__name__)
def test_key_index_refuses_bad_input_and_changes_nothing(kind: Any) -> None:
    for width, seed in ((0, bytes(32)), (17, bytes(32)), (16, bytes(31))):
        with pytest.raises(ValueError):
            kind(width, seed)
    ix = kind(4, bytes(32))
    with pytest.raises(ValueError):  # no column to read the keys from
        ix.put(np.array([0], dtype=np.int64))
    ix.put(np.zeros(0, dtype=np.int64))  # nothing to read
    column = np.frombuffer(bytearray(b"abcdwxyzefgh"), dtype=np.uint8).reshape(3, 4)
    with pytest.raises(ValueError):
        ix.bind(np.zeros(7, dtype=np.uint8))  # not whole keys
    ix.bind(column)
    ix.put(np.array([0, 1], dtype=np.int64))
    for slots in ([3], [2, 3], [-1], [2**32]):  # past the column, negative, too large
        with pytest.raises(ValueError):
            ix.put(np.array(slots, dtype=np.int64))
    for call in (ix.discard, ix.pop_slots, ix.get_slots):
        with pytest.raises(ValueError):
            call(b"abcde")
    with pytest.raises(ValueError):  # a column without the slot of an entry in
        ix.bind(column[:1].copy())
    longer = np.concatenate([column, column])
    ix.bind(longer)  # a longer column keeps every entry's slot
    with pytest.raises(ValueError):  # and a shorter one after it is still looked at
        ix.bind(longer[:1].copy())
    ix.bind(column)
    assert sorted(ix.items()) == [(b"abcd", 0), (b"wxyz", 1)]
    ix.put(np.array([2], dtype=np.int64))
    assert _slots(ix.pop_slots(b"efghefgh")) == [2, -1]  # twice: in the first time only
    assert ix.discard(b"") == b"" and ix.get_slots(b"") == b""
    ix.clear()
    ix.bind(column[:1].copy())  # an empty index takes any column
    assert len(ix) == 0 and not list(ix.items())


@pytest.mark.skipif(not join_index.COMPILED, reason="the compiled index is not built")
def test_compiled_key_index_checks_its_arguments() -> None:
    ix = join_index.KeyIndex(16, bytes(32))
    assert ix.width == 16
    ix.bind(np.zeros((4, 16), dtype=np.uint8))
    with pytest.raises(TypeError):
        ix.put(np.array([0], dtype=np.int32))  # slots are int64
    with pytest.raises(TypeError):
        ix.get_slots("0" * 16)  # keys are a buffer
    with pytest.raises(ValueError):
        ix.get_slots(np.zeros((4, 8), dtype=np.uint8)[:, ::2])
    with pytest.raises(ValueError):
        ix.bind(np.zeros((4, 32), dtype=np.uint8)[:, ::2])  # not contiguous


@pytest.mark.skipif(not join_index.COMPILED, reason="the compiled index is not built")
def test_key_index_keeps_its_slots_through_growth_and_many_removals() -> None:
    """100,000 keys in and out in batches (the table grows past 2**18 entries, and most
    keys leave again): every slot found is the one put."""
    rng = np.random.default_rng(3)
    ix = join_index.KeyIndex(16, rng.bytes(32))
    keys = rng.integers(0, 256, (100_000, 16), dtype=np.uint8)
    ix.bind(keys)
    for a in range(0, 100_000, 3000):
        ix.put(np.arange(a, min(a + 3000, 100_000), dtype=np.int64))
    assert len(ix) == 100_000
    assert _slots(ix.get_slots(np.ascontiguousarray(keys[::7]))) == list(range(0, 100_000, 7))
    out = rng.permutation(100_000)[:90_000]
    assert sorted(_slots(ix.discard(keys[out]))) == sorted(out.tolist())
    rest = np.setdiff1d(np.arange(100_000), out)
    assert _slots(ix.get_slots(keys[rest])) == rest.tolist() and len(ix) == 10_000
