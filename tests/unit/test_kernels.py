"""The compiled kernels (detectors/_kernels.c) against the numpy code they stand in for:
window scores to ~1e-13 (sums in another order), factorisation exactly, and a monitor
with segments deciding the same on a drifting stream either way."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from synth import make_batch

from driftline.detectors import binning as bin_mod
from driftline.detectors import segments as seg_mod
from driftline.detectors import stats as stats_mod
from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import build_profile
from driftline.detectors.stats import ReferenceTerms

pytestmark = pytest.mark.skipif(not stats_mod.KERNELS, reason="kernels not built")


def _numpy_scores(ref: np.ndarray, win: np.ndarray, monkeypatch: pytest.MonkeyPatch
                  ) -> tuple[np.ndarray, ...]:
    with monkeypatch.context() as m:
        m.setattr(stats_mod, "_kernels", None)
        return ReferenceTerms(ref).scores(win)


def _close(got: np.ndarray, want: np.ndarray, where: str) -> None:
    assert got.dtype == want.dtype == np.float64 and got.shape == want.shape, where
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=where)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=where)
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=1e-15, err_msg=where)


def test_compiled_window_scores_agree_with_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chi-square, degrees of freedom, PSI and Jensen-Shannon of random windows: empty
    reference and window columns, all-empty windows, float counts, large counts, one
    column, wide histograms."""
    rng = np.random.default_rng(0)
    for trial in range(400):
        c, w = int(rng.integers(1, 12)), int(rng.integers(2, 70))
        scale = 10 ** int(rng.integers(1, 7))
        ref = rng.integers(0, scale, (c, w)) * (rng.random((c, w)) < 0.7)
        win = rng.integers(0, scale, (c, w)) * (rng.random((c, w)) < 0.6)
        if trial % 5 == 0:
            ref[0] = 0
        if trial % 7 == 0:
            win[-1] = 0
        if trial % 13 == 0:
            win[:] = 0
        if trial % 3 == 0:
            win = win.astype(np.float64)
        got = ReferenceTerms(ref).scores(win)
        want = _numpy_scores(ref, win, monkeypatch)
        assert len(got) == len(want) == 4
        for i, (g, v) in enumerate(zip(got, want, strict=True)):
            _close(g, v, f"trial {trial} statistic {i}")
        np.testing.assert_array_equal(got[1], want[1])  # degrees of freedom: counts


def test_compiled_scores_check_their_buffers() -> None:
    from driftline.detectors import _kernels

    ref = np.ones((3, 4))
    out = np.empty((5, 3))
    with pytest.raises(ValueError, match="win holds"):
        _kernels.window_scores(ref, ref, ref, np.ones(3), np.ones((3, 3)), out, 3, 4, 5.0)
    with pytest.raises(ValueError, match="out holds"):
        _kernels.window_scores(ref, ref, ref, np.ones(3), ref, np.empty(3), 3, 4, 5.0)
    with pytest.raises((ValueError, BufferError)):
        _kernels.window_scores(ref, ref, ref, np.ones(3), ref, np.empty((3, 4))[:, :2], 3, 4, 5.0)
    empty = np.empty(0)  # sizes that would overflow are refused before any buffer is read
    with pytest.raises(ValueError, match="bad shape"):
        _kernels.window_scores(empty, empty, empty, np.zeros(1), empty, np.zeros(4), 2**61 + 1, 0, 5.0)


@pytest.mark.parametrize("seed", range(6))
def test_compiled_block_histograms_are_the_bincount_ones(seed: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    n, c, w = int(rng.integers(0, 400)), int(rng.integers(1, 25)), int(rng.integers(1, 20))
    bins = rng.integers(0, w, (n, c)).astype(np.int64)
    bins[:, 0] = w - 1  # the last bin (missing values) used too
    blocks = int(rng.integers(1, 12))
    block = rng.integers(0, blocks + 1, n).astype(np.int64)  # blocks: rows of none
    for args in ((None, 0, 1), (block, 0, blocks), (block, 2, 3), (block, blocks, 1),
                 (bins[:, 1].copy(), 1, w)):
        got = bin_mod.block_histograms(bins, *args, c, w)
        with monkeypatch.context() as m:
            m.setattr(bin_mod, "_kernels", None)
            want = bin_mod.block_histograms(bins, *args, c, w)
        assert got.dtype == np.int64 and got.shape == (args[2], c, w)
        np.testing.assert_array_equal(got, want)
    for blocks in (0, 1, 3):  # every row in block 0, the others empty: either way
        got = bin_mod.block_histograms(bins, None, 0, blocks, c, w)
        with monkeypatch.context() as m:
            m.setattr(bin_mod, "_kernels", None)
            np.testing.assert_array_equal(got, bin_mod.block_histograms(bins, None, 0, blocks,
                                                                        c, w))
    # no columns: nothing to count, however many rows (no buffer bounds them)
    assert bin_mod.block_histograms(np.empty((2**60 - 1, 0), np.int64), None, 0, 1, 0, 4).shape \
        == (1, 0, 4)
    np.testing.assert_array_equal(  # strided rows (a column slice) are read as values
        bin_mod.block_histograms(bins[::2], None, 0, 1, c, w)[0],
        bin_mod.block_histograms(np.ascontiguousarray(bins[::2]), None, 0, 1, c, w)[0])


def test_compiled_block_histograms_check_their_input() -> None:
    from driftline.detectors import _kernels

    bins = np.zeros((4, 3), dtype=np.int64)
    out = np.zeros((2, 3, 5), dtype=np.int64)
    for bad in (5, -1, 2**63 - 1):  # a bin index outside [0, width): refused, not written
        b = bins.copy()
        b[2, 1] = bad
        with pytest.raises(ValueError, match="bin index"):
            _kernels.bin_counts(b, None, out, 4, 3, 5, 0, 2)
    with pytest.raises(ValueError, match="bins holds"):
        _kernels.bin_counts(bins, None, out, 4, 4, 5, 0, 2)  # 4 columns of 3
    with pytest.raises(ValueError, match="block holds"):
        _kernels.bin_counts(bins, np.zeros(3, dtype=np.int64), out, 4, 3, 5, 0, 2)
    with pytest.raises(ValueError, match="out holds"):
        _kernels.bin_counts(bins, None, np.zeros(30, dtype=np.int64), 4, 3, 5, 0, 3)
    read_only = np.zeros((2, 3, 5), dtype=np.int64)
    read_only.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        _kernels.bin_counts(bins, None, read_only, 4, 3, 5, 0, 2)
    empty = np.empty(0, dtype=np.int64)  # sizes that would overflow: refused first
    for shape in ((2**61, 2**3, 1, 1), (1, 2**61, 2**4, 1), (1, 1, 2**61, 2**4),
                  (-1, 1, 1, 1)):
        rows, columns, width, blocks = shape
        with pytest.raises(ValueError, match="bad shape"):
            _kernels.bin_counts(empty, None, empty, rows, columns, width, 0, blocks)
    block = np.array([-5, 2**62, 1, 0], dtype=np.int64)  # far outside first..: skipped
    out = np.zeros((1, 3, 5), dtype=np.int64)
    _kernels.bin_counts(bins, block, out, 4, 3, 5, 1, 1)
    assert out.sum() == 3 and out[0, :, 0].tolist() == [1, 1, 1]


@pytest.mark.parametrize("distinct", [1, 3, 18, 200, 3000, 9000])
def test_compiled_factorisation_is_the_sorted_one(distinct: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows numbered by key in order of first sight, exactly as the sort numbers them:
    few and many distinct keys (past the first table's size), keys differing in high
    bits only and in low bits only (as addresses of objects allocated together do), one
    row, strided input."""
    rng = np.random.default_rng(distinct)
    pool = rng.integers(0, 2**63, distinct, dtype=np.int64).astype(np.uint64)
    half, quarter = distinct // 2, distinct // 4
    pool[:quarter] = (pool[:quarter] >> np.uint64(40)) << np.uint64(40)
    pool[quarter:half] = 0x7F0000001000 + np.arange(half - quarter, dtype=np.uint64)
    for n in (1, 2, 5000, 20000):
        keys = pool[rng.integers(0, distinct, n)]
        for arr in (keys, np.repeat(keys, 2)[::2]):
            got = seg_mod._factorise(arr)
            with monkeypatch.context() as m:
                m.setattr(seg_mod, "_kernels", None)
                want = seg_mod._factorise(arr)
            for g, v in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, v)
            assert got[1].dtype == np.int64
            assert sorted(set(arr.tolist())) == sorted(arr[got[0]].tolist())


def test_monitor_with_segments_decides_the_same_either_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A drifting stream with three segments, one of which drifts alone: the same panes
    are evaluated and the same alerts fire with the kernels and with numpy."""
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(8_000, 6))
    prof = build_profile("m", {f"f{i}": ref[:, i] for i in range(6)}, created_at=0.0,
                         prediction=rng.uniform(0, 1, 8_000))
    cfg = MonitorConfig(pane_size=200, panes=4, min_samples=400, segment_max=3,
                        calibration_rounds=20)
    seg_pool = [{"region": r} for r in ("eu", "us", "apac")]
    batches = []
    for k in range(40):
        n = 300
        x = rng.normal(size=(n, 6))
        which = rng.integers(0, 3, n)
        if k >= 15:
            x[which == 2, 3] += 1.0  # one segment's feature drifts
        if k >= 30:
            x[:, 1] += 0.5  # then a feature of every segment
        seg = np.empty(n, dtype=object)
        seg[:] = [seg_pool[i] for i in which.tolist()]
        batches.append(replace(make_batch(x, offset0=k * n), segment=seg))

    def run() -> list[tuple[str, str, str | None, tuple[bool, ...], tuple[float, ...]]]:
        mon = ModelMonitor(prof, cfg)
        out = []
        for b in batches:
            for ev in mon.update(b):
                out.append((ev.segment, ",".join(a.alert_id for a in ev.alerts),
                            None if ev.insufficient else "tested",
                            tuple(ev.drift.tolist()), tuple(ev.chi2.tolist())))
        return out

    compiled = run()
    with monkeypatch.context() as m:
        m.setattr(stats_mod, "_kernels", None)
        m.setattr(bin_mod, "_kernels", None)
        plain = run()
    assert [e[:4] for e in compiled] == [e[:4] for e in plain]
    np.testing.assert_allclose([e[4] for e in compiled], [e[4] for e in plain], rtol=1e-12)
    fired = [e for e in compiled if e[1]]
    assert any(e[0] == "region=apac" for e in fired)  # the segment's drift was found
    assert any(e[0] == "" for e in fired)


@pytest.mark.parametrize("seed", range(4))
def test_compiled_string_columns_are_the_python_ones(seed: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """put_strs writes the same arrays (and records the same bytes) with the compiled pass
    as without it: ASCII ids, None among them, all None, empty strings, an empty list; a
    non-ASCII or non-str value sends the whole column to the Python encoding."""
    from driftline.detectors import serialization as ser

    rng = np.random.default_rng(seed)
    ids = [f"{int(v):x}" * int(k) for v, k in zip(rng.integers(0, 2**60, 300),
                                                  rng.integers(0, 4, 300), strict=True)]
    cases: list[list[str | None]] = [
        ids, [None if rng.random() < 0.3 else v for v in ids], [None] * 50, [], ["", ""],
        [*ids[:10], "é", None], [*ids[:5], "\udc80"]]
    for values in cases:
        got: dict[str, np.ndarray] = {}
        ser.put_strs(got, "c", list(values))
        want: dict[str, np.ndarray] = {}
        with monkeypatch.context() as m:
            m.setattr(ser, "_kernels", None)
            ser.put_strs(want, "c", list(values))
        assert got.keys() == want.keys()
        for k in got:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            np.testing.assert_array_equal(got[k], want[k])
        assert ser.pack("t", {}, got) == ser.pack("t", {}, want)
        assert ser.get_strs(got, "c") == values
    from driftline.detectors import _kernels

    assert _kernels.ascii_column(["a", 1]) is None and _kernels.ascii_column(["é"]) is None
    with pytest.raises(TypeError):
        _kernels.ascii_column(("a",))  # type: ignore[arg-type]
