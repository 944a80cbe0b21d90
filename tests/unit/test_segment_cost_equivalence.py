"""The cheaper per-segment path against the code as first written: the reference terms
computed once per monitor (stats.ReferenceTerms) against the statistics computed from
scratch per call, and the segment grouping (factorisation by object ids, histograms of
the batch's bins by row block) against the per-row dicts and gathered bins. Random
streams (count and event-time panes, pooled values, rows without a segment, late rows,
tiny histogram blocks) give the same panes, evaluations, alerts and snapshot bytes.

The window statistics run on numpy here (the same operations as first written, so the
same bits); the compiled scores agree with them to ~1e-13 (test_kernels.py). The
factorisation runs compiled when built: its codes are exact either way."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import special
from synth import make_batch

from driftline.detectors import segments as seg_mod
from driftline.detectors import stats as stats_mod
from driftline.detectors.monitor import Evaluation, ModelMonitor, MonitorConfig
from driftline.detectors.quality import MISMATCH, MISSING, OUT_OF_RANGE, UNSEEN, DataQuality, is_set
from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.detectors.segments import _NONE, OTHER, SEGMENT_SHARE, Segments, canonical
from driftline.detectors.stats import (
    SPARSE_EXPECTED,
    ChiSquare,
    ReferenceTerms,
    chi_square,
    jensen_shannon,
    ks_binned,
    psi,
    sparse_terms,
    wasserstein_binned,
)
from driftline.detectors.windows import CountRule, Pane, PaneRing, TimeRule
from driftline.schemas.models import EventBatch, WindowInfo


@pytest.fixture(autouse=True)
def _numpy_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_mod, "_kernels", None)


# -- the statistics as first written ------------------------------------------------------
_EPS = 1e-4


def _old_proportions(counts: Any) -> NDArray[np.float64]:
    c = np.asarray(counts, dtype=np.float64)
    tot = c.sum(axis=-1, keepdims=True)
    out: NDArray[np.float64] = np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)
    return out


def old_psi(ref: Any, win: Any) -> Any:
    p, q = _old_proportions(ref) + _EPS, _old_proportions(win) + _EPS
    p /= p.sum(axis=-1, keepdims=True)
    q /= q.sum(axis=-1, keepdims=True)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1))


def old_js(ref: Any, win: Any) -> Any:
    p, q = _old_proportions(ref), _old_proportions(win)
    m = 0.5 * (p + q)
    js = 0.5 * special.rel_entr(p, m).sum(axis=-1) + 0.5 * special.rel_entr(q, m).sum(axis=-1)
    return np.asarray(np.sqrt(np.clip(js / np.log(2.0), 0.0, 1.0)))


def old_chi_square(ref: Any, win: Any) -> ChiSquare:
    r = np.asarray(ref, dtype=np.float64)
    w = np.asarray(win, dtype=np.float64)
    nr = r.sum(axis=-1, keepdims=True)
    nw = w.sum(axis=-1, keepdims=True)
    both = r + w
    below = np.minimum(SPARSE_EXPECTED, 0.5 * nw / np.maximum((r > 0).sum(-1, keepdims=True), 1))
    sparse = r * nw < below * nr  # each with its own exact term (test_sparse_bins.py)
    used = (both > 0) & ~sparse
    k1 = np.sqrt(np.divide(nw, nr, out=np.zeros_like(nr), where=nr > 0))
    k2 = np.sqrt(np.divide(nr, nw, out=np.zeros_like(nw), where=nw > 0))
    terms = np.divide((k1 * r - k2 * w) ** 2, both, out=np.zeros_like(both), where=used)
    cells = sparse & (both > 0)
    extra = np.zeros(r.shape)
    if cells.any():
        extra[cells] = sparse_terms(r[cells], w[cells], np.broadcast_to(nr, r.shape)[cells],
                                    np.broadcast_to(nw, r.shape)[cells])
    stat = terms.sum(axis=-1) + extra.sum(axis=-1)
    df = np.maximum(used.sum(axis=-1) + cells.sum(axis=-1) - 1, 0).astype(np.float64)
    valid = (df > 0) & (nr[:, 0] > 0) & (nw[:, 0] > 0)
    p = np.where(valid, special.chdtrc(np.maximum(df, 1.0), stat), 1.0)
    return ChiSquare(np.where(valid, stat, 0.0), df, np.asarray(p, dtype=np.float64))


def _old_value_cdfs(ref: Any, win: Any, n_bins: Any) -> tuple[Any, Any]:
    width = np.asarray(ref).shape[-1]
    mask = np.arange(width)[None, :] < n_bins[:, None]
    r = np.where(mask, ref, 0).astype(np.float64)
    w = np.where(mask, win, 0).astype(np.float64)
    return np.cumsum(_old_proportions(r), axis=-1), np.cumsum(_old_proportions(w), axis=-1)


def old_ks(ref: Any, win: Any, n_bins: Any, numeric: Any) -> tuple[Any, Any]:
    cr, cw = _old_value_cdfs(ref, win, n_bins)
    d = np.max(np.abs(cr - cw), axis=-1)
    nr = np.asarray(ref, dtype=np.float64).sum(axis=-1)
    nw = np.asarray(win, dtype=np.float64).sum(axis=-1)
    en = np.divide(nr * nw, nr + nw, out=np.zeros_like(nr), where=(nr + nw) > 0)
    p = special.kolmogorov(d * np.sqrt(en))
    return np.where(numeric, d, np.nan), np.where(numeric & (en > 0), p, np.nan)


def old_wasserstein(ref: Any, win: Any, n_bins: Any, widths: Any, scale: Any) -> Any:
    cr, cw = _old_value_cdfs(ref, win, n_bins)
    w1 = np.sum(np.abs(cr - cw) * widths, axis=-1)
    return np.asarray(np.divide(w1, scale, out=np.full_like(w1, np.nan), where=scale > 0))


class OldTerms:
    """ReferenceTerms' interface on the statistics as first written (nothing cached)."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def psi(self, win: Any) -> Any:
        return old_psi(self.ref, win)

    def jensen_shannon(self, win: Any) -> Any:
        return old_js(self.ref, win)

    def chi_square(self, win: Any) -> ChiSquare:
        return old_chi_square(self.ref, win)

    def scores(self, win: Any) -> tuple[Any, Any, Any, Any]:
        chi = old_chi_square(self.ref, win)
        return chi.statistic, chi.df, old_psi(self.ref, win), old_js(self.ref, win)

    def ks_binned(self, win: Any, n_bins: Any, numeric: Any) -> tuple[Any, Any]:
        return old_ks(self.ref, win, n_bins, numeric)

    def wasserstein_binned(self, win: Any, n_bins: Any, widths: Any, scale: Any) -> Any:
        return old_wasserstein(self.ref, win, n_bins, widths, scale)


# -- the segment grouping as first written ------------------------------------------------
def _old_histograms(b: Any, starts: Any, g0: int, g1: int, c: int, w: int) -> Any:
    lo = int(starts[g0])
    hi = int(starts[g1]) if g1 < starts.size else b.shape[0]
    block = np.repeat(np.arange(g1 - g0, dtype=np.int64),
                      np.diff(np.append(starts[g0:g1], hi)))
    flat = b[lo:hi] + (block[:, None] * c + np.arange(c, dtype=np.int64)) * w
    return np.bincount(flat.ravel(), minlength=(g1 - g0) * c * w).reshape(g1 - g0, c, w)


class OldSegments(Segments):
    """Segments with ``add`` and its helpers as first written."""

    def add(self, segment: Any, rows: Any, bins: Any, ts: Any, offsets: Any, seq0: int,
            pane_of: Any, max_ts: float) -> Iterator[tuple[str, Pane]]:
        self.last_events = {}
        if rows.size:
            codes = self._codes(segment, rows)
            keep = codes != _NONE
            rows, codes = rows[keep], codes[keep]
        if rows.size:
            order = np.argsort(codes, kind="stable")
            r, code = rows[order], codes[order]
            change = np.flatnonzero(code[1:] != code[:-1]) + 1
            first = np.concatenate(([0], change))
            slots = code[first].tolist()
            sizes = np.diff(np.concatenate((first, [r.size]))).tolist()
            for c, size in zip(slots, sizes, strict=True):
                label = self.labels[c]
                self.events[label] += size
                self.last_events[label] = size
                if label == OTHER:
                    self.overflow_events += size
            if pane_of is not None:
                pid = pane_of[r]
                order = np.argsort(pid, kind="stable")
                order = order[np.argsort(code[order], kind="stable")]
                r, code, pid = r[order], code[order], pid[order]
            else:
                rank = np.arange(r.size, dtype=np.int64) - np.repeat(first, sizes)
                seq = np.asarray([self.rings[self.labels[c]].seq for c in slots], dtype=np.int64)
                size_of = np.asarray([self.rings[self.labels[c]].rule.pane_size
                                      for c in slots], dtype=np.int64)
                pid = (np.repeat(seq, sizes) + rank) // np.repeat(size_of, sizes)
            yield from self._old_add_panes(r, code, pid, bins, ts, offsets, seq0,
                                           None if pane_of is not None
                                           else dict(zip(slots, sizes, strict=True)))
        if pane_of is not None:
            for label in list(self.labels):
                ring = self.rings[label]
                ring.advance(0, max_ts)
                for p in ring.due():
                    yield label, ring.close(p)

    def _old_add_panes(self, r: Any, code: Any, pid: Any, bins: Any, ts: Any, offsets: Any,
                       seq0: int, sizes: Any) -> Iterator[tuple[str, Pane]]:
        starts = np.concatenate(([0], np.flatnonzero((code[1:] != code[:-1])
                                                     | (pid[1:] != pid[:-1])) + 1))
        t = ts[r]
        fin = np.isfinite(t)
        lo, hi = (t, t) if fin.all() else (np.where(fin, t, np.inf), np.where(fin, t, -np.inf))
        t_lo = np.minimum.reduceat(lo, starts).tolist()
        t_hi = np.maximum.reduceat(hi, starts).tolist()
        off = offsets[r]
        valid = off >= 0
        if valid.all():
            o_lo = np.minimum.reduceat(off, starts).tolist()
            o_hi = np.maximum.reduceat(off, starts).tolist()
        else:
            o_lo = np.where(np.logical_or.reduceat(valid, starts), np.minimum.reduceat(
                np.where(valid, off, np.iinfo(np.int64).max), starts), -1).tolist()
            o_hi = np.maximum.reduceat(np.where(valid, off, -1), starts).tolist()
        last = np.maximum.reduceat(r, starts).tolist()
        n_at = np.diff(np.append(starts, r.size)).tolist()
        code_at, pid_at = code[starts].tolist(), pid[starts].tolist()
        b = bins[r]
        (c, w), _ = self.rings[self.labels[code_at[0]]].shapes["hist"]
        step = max(1, seg_mod._HIST_CELLS // (c * w))
        hist = np.zeros((0, c, w), dtype=np.int64)
        for g in range(starts.size):
            if g % step == 0:
                hist = _old_histograms(b, starts, g, min(g + step, starts.size), c, w)
            label = self.labels[code_at[g]]
            ring = self.rings[label]
            n = n_at[g]
            ring.pane(pid_at[g]).merge({"hist": hist[g % step]}, n, t_lo[g], t_hi[g],
                                       o_lo[g], o_hi[g], seq0 + last[g])
            self.since_eval[label] += n
            if sizes is not None:
                full = ring.rule.pane_size
                for p in sorted(p for p, pane in ring.open.items() if pane.n >= full):
                    yield label, ring.close(p)
                if g + 1 == starts.size or code_at[g + 1] != code_at[g]:
                    ring.seq += sizes[code_at[g]]

    def _codes(self, segment: Any, rows: Any) -> Any:
        col = segment[rows].tolist()
        ids = list(map(id, col))
        distinct = dict(zip(ids, col, strict=True))
        pos = dict(zip(distinct, range(len(distinct)), strict=True))
        return self._slots(list(distinct.values()))[
            np.fromiter(map(pos.__getitem__, ids), dtype=np.int64, count=len(ids))]



class UniqueSegments(Segments):
    """Segments with ``_codes`` as it was before the object addresses were read from the
    array's buffer (``id`` per row, ``np.unique`` of the ids), and ``_slots`` before the
    slots of seen segment objects were remembered."""

    def _codes(self, segment: Any, rows: Any) -> Any:
        col = (segment if rows.size == segment.size else segment[rows]).tolist()
        ids = np.fromiter(map(id, col), dtype=np.uint64, count=len(col))
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        sight = np.argsort(first, kind="stable")
        slot = np.empty(first.size, dtype=np.int64)
        slot[sight] = self._slots([col[i] for i in first[sight].tolist()])
        return slot[inverse.reshape(-1)]

    def _slots(self, objs: list[Any]) -> Any:
        """As before the slots of seen objects were remembered by their items."""
        if len(objs) <= seg_mod._FEW:
            return np.asarray([self._slot(canonical(
                {k: v for k, v in d.items() if v is not None}, self.keys))
                if d is not None else _NONE for d in objs], dtype=np.int64)
        return super()._slots(objs)

# -- the quality flags as first written ----------------------------------------------------
class OldQuality(DataQuality):
    """DataQuality with ``flags`` as first written (decisions per batch, not per feature set)."""

    def flags(self, batch: Any, bins: Any) -> Any:
        n, f = len(batch), len(self.names)
        if batch.feature_names != self._names_seen:
            index = {name: i for i, name in enumerate(batch.feature_names)}
            self._where = np.asarray([index.get(name, -1) for name in self.names], dtype=np.int64)
            self._names_seen = batch.feature_names
        where = self._where
        have = where >= 0
        if have.all() and np.array_equal(where, np.arange(batch.numeric.shape[1])):
            num = batch.numeric
        else:
            num = np.full((n, f), np.nan)
            num[:, have] = batch.numeric[:, where[have]]
        out = np.empty((4, f, n), dtype=bool)
        b = bins[:, :f]
        cats = np.flatnonzero(~self.numeric & ~self.numbers_ok)
        if (batch.text is None or not self.numeric.any()) and not cats.size:
            out[MISMATCH] = False
            out[MISSING] = (b == self.missing_bin).T
            out[UNSEEN] = (b == self.other).T
        else:
            mismatch = np.zeros((n, f), dtype=bool)
            if batch.text is not None and self.numeric.any():
                cols = np.flatnonzero(have & self.numeric)
                mismatch[:, cols] = is_set(batch.text[:, where[cols]])
            if cats.size:
                mismatch[:, cats] = np.isfinite(num[:, cats])
            out[MISMATCH] = mismatch.T
            out[MISSING] = ((b == self.missing_bin) & ~mismatch).T
            out[UNSEEN] = ((b == self.other) & ~mismatch).T
        with np.errstate(invalid="ignore"):
            out[OUT_OF_RANGE] = ((num < self.lo) | (num > self.hi)).T
        return out


# -- helpers ---------------------------------------------------------------------------------
F = 6
REGIONS = ("eu", "us", "apac", "latam", "mea", "anz", "cn")


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(8_000, F))
    return build_profile("m", {f"f{i}": ref[:, i] for i in range(F)}, created_at=0.0,
                         prediction=rng.uniform(0, 1, 8_000))


def _segment_column(rng: np.random.Generator, n: int, regions: int, shared: bool) -> Any:
    """Segments as decoders hand them over: equal ones sharing a dict, or one per row;
    some rows without one, some with two keys."""
    pool = {r: {"region": r} for r in REGIONS}
    out: list[Any] = []
    for i in rng.integers(0, min(regions, len(REGIONS)), n).tolist():
        u = rng.random()
        if u < 0.05:
            out.append(None)
        elif u < 0.1:
            out.append({"region": REGIONS[i], "tier": "gold"})
        elif u < 0.12:
            out.append({"region": None})
        else:
            out.append(pool[REGIONS[i]] if shared else {"region": REGIONS[i]})
    col = np.empty(n, dtype=object)
    col[:] = out
    return col


def _batches(seed: int, timed: bool, sizes: list[int]) -> list[Any]:
    rng = np.random.default_rng(seed)
    out = []
    k = 0
    for i, n in enumerate(sizes):
        x = rng.normal(size=(n, F))
        x[:, 1] += 0.8 * (k > 3000)  # drift: alerts fire
        x[rng.random(n) < 0.05, 2] = np.nan
        ts = (1000.0 + (k + np.arange(n)) * 0.01 + rng.normal(0, 0.05, n)) if timed else None
        if timed and n > 10:
            ts[rng.integers(0, n, 3)] = 990.0  # late rows
            ts[rng.integers(0, n, 1)] = np.nan
        pred = np.clip(rng.uniform(0, 1, n) + 0.3 * (k > 3000), 0, 1)
        b = make_batch(x, ts=ts, offset0=k, prediction=pred)
        if i % 4 == 3:
            b = replace(b, offset=np.where(rng.random(n) < 0.1, -1, b.offset))
        out.append(replace(b, segment=_segment_column(rng, n, 2 + seed % 6, i % 2 == 0)))
        k += n
    return out


def _same(u: Any, v: Any, where: str) -> None:
    if isinstance(u, np.ndarray):
        assert isinstance(v, np.ndarray) and u.dtype == v.dtype, where
        np.testing.assert_array_equal(u, v, err_msg=where, strict=True)
        assert u.tobytes() == v.tobytes(), where  # the same bits (NaN payloads, -0.0)
    elif hasattr(u, "__dataclass_fields__"):
        assert type(u) is type(v), where
        for f in fields(u):
            _same(getattr(u, f.name), getattr(v, f.name), f"{where}.{f.name}")
    elif isinstance(u, (list, tuple)):
        assert len(u) == len(v), where
        for i, (a, b) in enumerate(zip(u, v, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(u, dict):
        assert u.keys() == v.keys(), where
        for k in u:
            _same(u[k], v[k], f"{where}[{k!r}]")
    elif isinstance(u, float) and np.isnan(u):
        assert isinstance(v, float) and np.isnan(v), where
    else:
        assert u == v, where


def _old_segment_evaluation(mon: ModelMonitor, pane: Pane, batch: EventBatch | None,
                            segment: str) -> Evaluation:
    """One segment window tested as its pane closes, as first written (the model's
    evaluation code, its segment branch)."""
    layout, segs = mon.binner.layout, mon.segments
    assert segs is not None
    timed = isinstance(mon.ring.rule, TimeRule)
    ring = segs.rings[segment]
    new_events = pane.n if timed else max(segs.since_eval[segment], pane.n)
    segs.since_eval[segment] = 0
    win, n = ring.totals["hist"], ring.total_n
    chi2, df, psi_, js = mon._terms.scores(win)
    cal = mon.segment_calibration  # segment windows' calibration (added since; same rule)
    p = cal.p_values(chi2, df)
    p_all = np.concatenate([p])
    alpha = cal.alpha_eval(new_events) * SEGMENT_SHARE
    insufficient = n < mon.config.min_samples
    decided = (np.zeros(p_all.size, dtype=bool) if insufficient
               else cal.decide(p_all, alpha))
    thr = cal.thresholds(df, alpha, p_all.size)
    ks = wd = np.full(len(layout.names), np.nan)
    start, end, first, last = ring.window_bounds()
    info = WindowInfo(start_ts=None if math.isnan(start) else start,
                      end_ts=None if math.isnan(end) else end, n=int(n),
                      first_offset=first, last_offset=last, pane=pane.pane_id)
    ev = Evaluation(window=info, index=pane.last_seq, insufficient=insufficient,
                    names=layout.names, kinds=layout.kinds, chi2=chi2, threshold=thr,
                    p_value=p, drift=decided[: p.size], psi=psi_, js=js, ks=ks,
                    wasserstein=wd, segment=segment, alpha=alpha)
    if insufficient:
        return ev
    alerts = tuple(mon._alerts(ev, batch)) + tuple(mon._check_alerts(ev, batch))
    return replace(ev, alerts=alerts) if alerts else ev


def _old_monitor(mon: ModelMonitor) -> ModelMonitor:
    """The monitor on the code as first written: old statistics, old segment grouping,
    segment windows evaluated one at a time as each pane closes."""
    mon._terms = OldTerms(mon.binner.layout.ref_counts)  # type: ignore[assignment]
    segs = mon.segments
    if segs is not None:
        mon.segments = OldSegments(segs.max_segments, segs.keys, segs.make_ring)

    def one_by_one(closing: Any, batch: EventBatch | None) -> list[Evaluation]:
        return [_old_segment_evaluation(mon, pane, batch, label) for label, pane in closing]

    mon._evaluate_segments = one_by_one  # type: ignore[method-assign]
    return mon


# -- the tests -------------------------------------------------------------------------------
def test_reference_terms_give_the_same_bits_as_the_statistics_from_scratch() -> None:
    rng = np.random.default_rng(0)
    for trial in range(60):
        c, w = int(rng.integers(1, 9)), int(rng.integers(2, 20))
        ref = rng.integers(0, 50, (c, w)) * (rng.random((c, w)) < 0.7)
        win = rng.integers(0, 30, (c, w)) * (rng.random((c, w)) < 0.6)
        if trial % 5 == 0:
            ref[0] = 0  # an empty reference column
        if trial % 7 == 0:
            win[-1] = 0  # an empty window column
        if trial % 3 == 0:
            win = win.astype(np.float64)
        n_bins = rng.integers(0, w, c)
        numeric = rng.random(c) < 0.7
        widths, scale = rng.uniform(0, 2, (c, w)), rng.uniform(-0.5, 2, c)
        terms = ReferenceTerms(ref)
        for _ in range(2):  # cached terms reused
            for new, old in ((terms.psi(win), old_psi(ref, win)), (psi(ref, win), old_psi(ref, win)),
                             (terms.jensen_shannon(win), old_js(ref, win)),
                             (jensen_shannon(ref, win), old_js(ref, win)),
                             (terms.chi_square(win), old_chi_square(ref, win)),
                             (chi_square(ref, win), old_chi_square(ref, win)),
                             (terms.scores(win), (old_chi_square(ref, win).statistic,
                                                  old_chi_square(ref, win).df,
                                                  old_psi(ref, win), old_js(ref, win))),
                             (terms.ks_binned(win, n_bins, numeric),
                              old_ks(ref, win, n_bins, numeric)),
                             (ks_binned(ref, win, n_bins, numeric),
                              old_ks(ref, win, n_bins, numeric)),
                             (terms.wasserstein_binned(win, n_bins, widths, scale),
                              old_wasserstein(ref, win, n_bins, widths, scale)),
                             (wasserstein_binned(ref, win, n_bins, widths, scale),
                              old_wasserstein(ref, win, n_bins, widths, scale))):
                _same(new, old, f"trial {trial}")


@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("tiny_blocks", [False, True])
def test_segment_grouping_closes_the_same_panes_as_first_written(
        timed: bool, seed: int, tiny_blocks: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if tiny_blocks:  # several bincounts per batch (a few blocks each)
        monkeypatch.setattr(seg_mod, "_HIST_CELLS", 3 * 7 * 5)
    c, w = 7, 5
    rule = TimeRule(2.0, 0.5) if timed else CountRule(37)

    def ring() -> PaneRing:
        return PaneRing(3, rule, {"hist": ((c, w), "<i8")})

    new, old = Segments(4, (), ring), OldSegments(4, (), ring)
    rng = np.random.default_rng(seed)
    seq0 = 0
    max_ts = -np.inf
    for n in [1, 5, 300, 2, 64, 129, 3, 500, 17, 250]:
        segment = _segment_column(rng, n, 2 + seed * 2, n % 2 == 0)
        rows = np.flatnonzero(rng.random(n) < 0.9)  # some rows dropped (late)
        bins = rng.integers(0, w, (n, c))
        ts = 100.0 + seq0 * 0.01 + rng.uniform(0, 3, n)
        offsets = np.where(rng.random(n) < 0.05, -1, np.arange(seq0, seq0 + n))
        pane_of = rule.pane_ids(0, n, ts) if timed else None
        if rows.size:
            max_ts = max(max_ts, float(ts[rows].max()))
        got = list(new.add(segment, rows, bins, ts, offsets, seq0, pane_of, max_ts))
        want = list(old.add(segment, rows, bins, ts, offsets, seq0, pane_of, max_ts))
        assert [lbl for lbl, _ in got] == [lbl for lbl, _ in want]
        for (_, p), (_, q) in zip(got, want, strict=True):
            assert p.meta() == q.meta()
            _same(p.sums["hist"], q.sums["hist"], "pane")
        assert new.last_events == old.last_events and new.events == old.events
        assert new.since_eval == old.since_eval
        assert new.overflow_events == old.overflow_events
        seq0 += n
    assert OTHER in new.labels  # values were pooled
    (m1, a1), (m2, a2) = new.state(), old.state()
    assert m1 == m2 and a1.keys() == a2.keys()
    for k in a1:
        _same(a1[k], a2[k], k)



class _LoadableRing:
    """A stand-in ring for the label tables alone (no panes)."""

    def load(self, meta: Any, arrays: Any) -> None:
        pass


@pytest.mark.parametrize("seed", range(6))
def test_segment_codes_match_the_previous_factorisation(seed: int) -> None:
    """Slots of rows (and the labels given rings, in order of first sight) from the
    addresses read off the array and the remembered slots of seen segment values against
    ``id`` per row and every value written out: shared and per-row dicts, None, ``{}``
    and ``{"region": None}``, many distinct objects (the columnar path), values pooled
    beyond the maximum, strided columns and row subsets, empty ones, a loaded state."""
    rng = np.random.default_rng(seed)
    max_segments = [1, 3, 4, 40][seed % 4]
    new = Segments(max_segments, ("region",) if seed % 3 == 0 else (), object)
    prev = UniqueSegments(max_segments, new.keys, object)
    first = OldSegments(max_segments, new.keys, object)
    for k in range(40):
        n = int(rng.choice([0, 1, 2, 7, 64, 300, 1000]))
        col = _segment_column(rng, n, int(rng.integers(1, 8)), bool(rng.random() < 0.5))
        if k % 5 == 1 and n:
            col[:] = None
        if k % 7 == 2 and n:  # many distinct values: past the few written out one by one
            col[:] = [{"region": f"r{int(i)}"} for i in rng.integers(0, 60, n)]
        if k % 4 == 3:
            col = np.repeat(col, 2)[::2]  # a strided view
        rows = np.arange(n) if k % 3 else np.flatnonzero(rng.random(n) < 0.6)
        got = new._codes(col, rows)
        assert got.dtype == np.int64 and got.shape == rows.shape
        _same(got, prev._codes(col, rows), f"codes {k}")
        _same(got, first._codes(col, rows), f"codes {k} (as first written)")
        assert new.labels == prev.labels == first.labels
        assert list(new.rings) == list(prev.rings)
        if k == 20:  # a loaded state replaces the slots seen so far (other labels, order)
            other = UniqueSegments(max_segments, new.keys, object)
            other._codes(_segment_column(rng, 50, 7, False)[::-1].copy(), np.arange(50))
            meta = {"labels": list(other.labels), "since_eval": [0] * len(other.labels),
                    "events": [0] * len(other.labels), "overflow_events": 0,
                    "rings": [{}] * len(other.labels)}
            for seg in (new, prev, first):
                seg.make_ring = _LoadableRing
                seg.load(meta, {})
            assert new.known == {}
    assert OTHER in new.labels or max_segments == 40

@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("seed", [4, 5])
def test_monitor_evaluations_alerts_and_snapshots_match_the_first_written_code(
        profile: ReferenceProfile, timed: bool, seed: int) -> None:
    cfg = MonitorConfig(pane_size=150, panes=3, min_samples=200, segment_max=3,
                        calibration_rounds=20, correction="bh" if seed % 2 else "bonferroni",
                        pane_seconds=1.5 if timed else None, allowed_lateness=0.2)
    new = ModelMonitor(profile, cfg)
    old = _old_monitor(ModelMonitor(profile, cfg, calibration=new.calibration,
                                    multivariate=new.mv))
    evaluations = alerts = 0
    for b in _batches(seed, timed, [40, 300, 7, 512, 1, 260, 999, 33, 700, 150, 1200, 64]):
        ev_new: list[Evaluation] = new.update(b)
        ev_old: list[Evaluation] = old.update(b)
        _same(ev_new, ev_old, "update")
        _same(new.last_late_rows, old.last_late_rows, "late rows")
        assert new.snapshot() == old.snapshot()
        evaluations += sum(bool(e.segment) for e in ev_new)
        alerts += sum(len(e.alerts) for e in ev_new if e.segment)
    _same(new.tick(10**7, 1.0, 0.0), old.tick(10**7, 1.0, 0.0), "tick")
    assert new.snapshot() == old.snapshot()
    assert evaluations > 10 and alerts > 0  # segment windows were evaluated and alerted


@pytest.mark.parametrize("numbers", [False, True])
def test_quality_counts_match_the_first_written_flags(numbers: bool) -> None:
    """Feature sets in and out of the reference's order, missing and extra features,
    strings in numeric features, numbers and unseen words in a categorical one: the
    counts of all rows, of a run of rows and of scattered rows (read off the histogram
    when no value can be a mismatch) are the sums of the flags as first written."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4_000, 4))
    cats = ["1", "2", "3"] if numbers else ["a", "b", "c"]
    prof = build_profile("m", {**{f"f{i}": x[:, i] for i in range(4)},
                               "cat": np.asarray(rng.choice(cats, 4_000), dtype=object)},
                         created_at=0.0)
    mon = ModelMonitor(prof, MonitorConfig(calibration_rounds=5))
    assert mon.quality is not None
    new = mon.quality
    old = OldQuality(prof, new.missing_bin, new.config)
    orders = [("f0", "f1", "f2", "f3", "cat"), ("f0", "f1", "f2", "f3", "cat"),
              ("cat", "f3", "f2", "f1", "f0"), ("f0", "f1", "cat"),
              ("f0", "f1", "f2", "f3", "cat", "extra"), ("f0", "f1", "f2", "f3", "cat")]
    fast = 0
    for k, names in enumerate(orders * 2):
        n = int(rng.integers(1, 300))
        num = rng.normal(size=(n, len(names))) * 3
        num[rng.random((n, len(names))) < 0.1] = np.nan
        text = None
        if k % 3:
            text = np.full((n, len(names)), None, dtype=object)
            text[rng.random((n, len(names))) < 0.05] = "oops"
            j = names.index("cat")
            words = rng.choice([*cats, "zz"], n)
            is_word = rng.random(n) < 0.8
            text[:, j] = np.where(is_word, words, None)
            num[:, j] = np.where(is_word, np.nan, rng.integers(0, 5, n))
        b = replace(make_batch(num, names=names), text=text)
        bins = mon.binner.bins(b)
        flags, first = new.flags(b, bins), old.flags(b, bins)
        fast += flags.all is None
        for rows in (np.arange(n), np.arange(n // 3, n), np.flatnonzero(rng.random(n) < 0.5)):
            if rows.size:
                counts = new.sums(flags, rows, mon.binner.histogram(bins[rows]))
                assert counts.dtype == np.int64
                _same(counts, first[:, :, rows].sum(axis=2, dtype=np.int64).T, f"batch {k}")
    assert fast == (4 if numbers else 0)  # both ways of counting were compared


def test_the_old_grouping_is_really_different_code(profile: ReferenceProfile) -> None:
    """The comparisons above compare two implementations (the old one is not the new
    one under another name)."""
    mon = _old_monitor(ModelMonitor(profile, MonitorConfig(calibration_rounds=5)))
    assert type(mon.segments) is OldSegments
    assert OldSegments._codes is not Segments._codes and OldSegments.add is not Segments.add
    assert UniqueSegments._codes is not Segments._codes
    assert isinstance(mon._terms, OldTerms)
    assert OldQuality.flags is not DataQuality.flags


def test_segment_slot_memo_is_bounded() -> None:
    """The memo of slots by segment items holds at most ``_KNOWN`` short segments (a
    segment may carry 16 keys and values of 1,024 characters); the rest are written out
    each time, with the same slots."""
    from driftline.detectors import segments as sg

    segs = sg.Segments(3, (), lambda: None)
    plain = sg.Segments(3, (), lambda: None)
    values = [{"user": f"u{i}"} for i in range(200)] + [{"k": "x" * 2000}, {"user": "u5"}]
    got = [segs._slot_of(v) for v in values]
    assert len(segs.known) == sg._KNOWN
    assert (("k", "x" * 2000),) not in segs.known
    assert got == [plain._slot(sg.canonical(v)) for v in values]
