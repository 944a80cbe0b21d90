"""Two-sample statistics on binned counts, vectorised over all columns at once.

Every function takes reference counts ``ref`` and window counts ``win`` of shape
``(columns, bins)`` and returns one value per column. Binned KS and Wasserstein work
on ordered (numeric) value bins only; their resolution is the reference's quantile
bins, so they are the distance between binned CDFs, not the exact one.

Sparse bins in the chi-square: the term of a bin the window is expected to fill fewer
than ``SPARSE_EXPECTED`` times (by the reference's proportion; fewer than half its
average bin's count in windows too small for five per bin) is the smaller of Pearson's
and the chi-square(1) quantile of the bin's exact conditional test (given its count in
reference and window together, the window's share is binomial under no drift). Pearson's
term of a bin expected 0.02 times is ~50 when it shows up once (a 2% event), so small
windows with rare categories or a stray missing value had false alarms far above their
budget. Each such bin keeps its own term and degree of freedom: pooling them, tried
first, hid a new category or first missing values at 0.5-2% among the rare categories
in windows of a few hundred events. Bins filled as expected score as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

try:  # built from detectors/_kernels.c when the package is installed with a C compiler
    from driftline.detectors import _kernels
except ImportError:  # pragma: no cover - exercised by installs without a compiler
    _kernels = None  # type: ignore[assignment]

Counts = NDArray[np.int64] | NDArray[np.float64]
Vec = NDArray[np.float64]
_EPS = 1e-4  # also in _kernels.c
#: Expected window count below which a bin is tested exactly (also in _kernels.c).
SPARSE_EXPECTED = 5.0
#: A sparse bin's Pearson term up to which it is kept without the exact test (p ~ 0.05).
_EXACT_FROM = 4.0
#: Whether the compiled window scores are built (numpy computes the same values, to the
#: last bits or so: its sums run in another order).
KERNELS = _kernels is not None


def sparse_terms(rp: Vec, wp: Vec, nr: Vec, nw: Vec) -> Vec:
    """The chi-square term of sparse bins, elementwise: ``rp`` of the reference's ``nr``
    and ``wp`` of the window's ``nw`` counts. Pearson's term, or where that is above
    ``_EXACT_FROM`` the smaller of it and the chi-square(1) quantile of the two-sided
    exact test (the window's share of the ``rp + wp`` counts is binomial with
    ``nw / (nr + nw)`` under no drift); 0 without counts."""
    rp, wp, nr, nw = np.broadcast_arrays(rp, wp, nr, nw)
    t = rp + wp
    has = (t > 0) & (nr > 0) & (nw > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.sqrt(nw / nr)
        out = np.where(has, (k * rp - wp / k) ** 2 / t, 0.0)
    big = out > _EXACT_FROM  # a smaller term is below the exact one's scale: kept as it is
    if big.any():
        rp, wp, t, share = rp[big], wp[big], t[big], (nw / (nr + nw))[big]
        # P(X >= wp) = I_share(wp, t - wp + 1); P(X <= wp) = I_(1-share)(t - wp, wp + 1)
        up = np.where(wp >= 1, special.betainc(np.maximum(wp, 1.0), t - wp + 1.0, share), 1.0)
        low = np.where(wp < t, special.betainc(np.maximum(t - wp, 1.0), wp + 1.0, 1.0 - share),
                       1.0)
        p = np.minimum(1.0, 2.0 * np.minimum(up, low))
        # the chi-square(1) quantile: z(p / 2) squared (chdtri takes ~50 µs near p = 1)
        out[big] = np.minimum(out[big], special.ndtri(0.5 * p) ** 2)
    return np.asarray(out)


def _sparse_bins(r: Vec, w: Vec, nr: Vec, nw: Vec,
                 sparse: NDArray[np.bool_]) -> tuple[Vec, Vec]:
    """Per column, the sum of the sparse bins' own terms (:func:`sparse_terms`, each bin
    alone) and how many sparse bins are used (counts in reference or window)."""
    cells = sparse & (r + w > 0)
    n = cells.sum(axis=-1).astype(np.float64)
    if not n.any():
        return np.zeros(n.shape), n
    nr_b, nw_b = np.broadcast_to(nr, r.shape), np.broadcast_to(nw, r.shape)
    terms = np.zeros(r.shape)
    terms[cells] = sparse_terms(r[cells], w[cells], nr_b[cells], nw_b[cells])
    return np.asarray(terms.sum(axis=-1)), n


def _sparse_below(ref_bins: NDArray[np.int64], nw: Vec) -> Vec:
    """The expected window count below which a bin is sparse: ``SPARSE_EXPECTED``, or half
    the window's events per reference bin where that is less (a window too small for
    five per bin keeps Pearson's terms for its ordinary bins). ``ref_bins``: each
    column's non-empty reference bins, at least 1 (``ReferenceTerms.ref_bins``)."""
    return np.asarray(np.minimum(SPARSE_EXPECTED, 0.5 * nw / ref_bins), dtype=np.float64)


def _proportions(counts: Counts) -> Vec:
    c = np.asarray(counts, dtype=np.float64)
    tot = c.sum(axis=-1, keepdims=True)
    out: Vec = np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)
    return out


@dataclass(frozen=True)
class ChiSquare:
    """Two-sample chi-square test of homogeneity per column."""

    statistic: Vec
    df: Vec
    p_value: Vec


class ReferenceTerms:
    """The reference side of the statistics, computed once per reference and reused for
    every window tested against it (the whole model's and each segment's).

    Each method computes what the module function of the same name computes, with the
    same operations on the same values (so the same bits); the functions build the
    terms afresh for one call.
    """

    def __init__(self, ref: Counts) -> None:
        r = np.ascontiguousarray(ref, dtype=np.float64)
        self.counts = r
        self.total = r.sum(axis=-1, keepdims=True)  # (columns, 1)
        #: non-empty reference bins per column (at least 1), for :func:`_sparse_below`
        self.ref_bins = np.maximum((r > 0).sum(axis=-1, keepdims=True), 1)
        self._proportions: Vec | None = None
        self._smoothed: Vec | None = None
        self._cdf: tuple[NDArray[np.int64], NDArray[np.bool_], Vec] | None = None

    @property
    def proportions(self) -> Vec:
        if self._proportions is None:
            self._proportions = _proportions(self.counts)
        return self._proportions

    @property
    def smoothed(self) -> Vec:
        """PSI's reference proportions (floored per bin, renormalised)."""
        if self._smoothed is None:
            p = _proportions(self.counts) + _EPS
            p /= p.sum(axis=-1, keepdims=True)
            self._smoothed = p
        return self._smoothed

    def psi(self, win: Counts) -> Vec:
        """Population stability index (smoothed with a small floor per bin)."""
        return self._psi(_proportions(win))

    def _psi(self, q: Vec) -> Vec:
        p, q = self.smoothed, q + _EPS
        q /= q.sum(axis=-1, keepdims=True)
        return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1))

    def jensen_shannon(self, win: Counts) -> Vec:
        """Jensen-Shannon distance, base 2 (0 = same, 1 = disjoint)."""
        return self._jensen_shannon(_proportions(win))

    def _jensen_shannon(self, q: Vec) -> Vec:
        p = self.proportions
        m = 0.5 * (p + q)
        js = 0.5 * special.rel_entr(p, m).sum(axis=-1) + 0.5 * special.rel_entr(q, m).sum(axis=-1)
        return np.asarray(np.sqrt(np.clip(js / np.log(2.0), 0.0, 1.0)))

    def scores(self, win: Counts) -> tuple[Vec, Vec, Vec, Vec]:
        """Chi-square statistic and degrees of freedom (as :meth:`chi_square`, without
        the asymptotic p-value: a caller that calibrates takes its own), PSI and
        Jensen-Shannon of one window, sharing its proportions (in one compiled pass per
        column when the kernels are built)."""
        w = np.asarray(win, dtype=np.float64)
        if _kernels is not None and w.shape == self.counts.shape and w.ndim == 2:
            out = np.empty((5, w.shape[0]))
            _kernels.window_scores(self.counts, self.smoothed, self.proportions, self.total,
                                   np.ascontiguousarray(w), out, w.shape[0], w.shape[1],
                                   SPARSE_EXPECTED)
            nw = out[4][:, None]
            sparse = self.counts * nw < _sparse_below(self.ref_bins, nw) * self.total
            extra, sparse_used = _sparse_bins(self.counts, w, self.total, nw, sparse)
            stat, used = out[0] + extra, out[1] + sparse_used
            df = np.maximum(used - 1, 0.0)
            stat = np.where((df > 0) & (self.total[:, 0] > 0) & (nw[:, 0] > 0), stat, 0.0)
            return stat, df, out[2], out[3]
        nw = w.sum(axis=-1, keepdims=True)
        q: Vec = np.divide(w, nw, out=np.zeros_like(w), where=nw > 0)  # _proportions(win)
        stat, df, _ = self._chi_square(w, nw, p_value=False)
        return stat, df, self._psi(q), self._jensen_shannon(q)

    def chi_square(self, win: Counts) -> ChiSquare:
        """Chi-square homogeneity test of two histograms (bins empty in both are dropped)."""
        w = np.asarray(win, dtype=np.float64)
        return ChiSquare(*self._chi_square(w, w.sum(axis=-1, keepdims=True)))

    def _chi_square(self, w: Vec, nw: Vec, p_value: bool = True) -> tuple[Vec, Vec, Vec]:
        r, nr = self.counts, self.total
        both = r + w
        sparse = r * nw < _sparse_below(self.ref_bins, nw) * nr  # expected: nw * r / nr
        used = (both > 0) & ~sparse
        k1 = np.sqrt(np.divide(nw, nr, out=np.zeros_like(nr), where=nr > 0))
        k2 = np.sqrt(np.divide(nr, nw, out=np.zeros_like(nw), where=nw > 0))
        terms = np.divide((k1 * r - k2 * w) ** 2, both, out=np.zeros_like(both), where=used)
        extra, sparse_used = _sparse_bins(r, w, nr, nw, sparse)
        stat = terms.sum(axis=-1) + extra
        df = np.maximum(used.sum(axis=-1) + sparse_used - 1, 0).astype(np.float64)
        valid = (df > 0) & (nr[:, 0] > 0) & (nw[:, 0] > 0)
        p = np.where(valid, special.chdtrc(np.maximum(df, 1.0), stat), 1.0) if p_value \
            else stat
        return np.where(valid, stat, 0.0), df, np.asarray(p, dtype=np.float64)

    def value_cdfs(self, win: Counts, n_bins: NDArray[np.int64]) -> tuple[Vec, Vec]:
        """CDFs over value bins only (missing bin and padding dropped)."""
        cached = self._cdf
        if cached is None or not np.array_equal(cached[0], n_bins):
            mask = np.arange(self.counts.shape[-1])[None, :] < n_bins[:, None]
            r = np.where(mask, self.counts, 0).astype(np.float64)
            cached = self._cdf = (np.array(n_bins), mask, np.cumsum(_proportions(r), axis=-1))
        _, mask, cr = cached
        w = np.where(mask, win, 0).astype(np.float64)
        return cr, np.cumsum(_proportions(w), axis=-1)

    def ks_binned(self, win: Counts, n_bins: NDArray[np.int64],
                  numeric: NDArray[np.bool_]) -> tuple[Vec, Vec]:
        """Binned KS distance and its asymptotic p-value (see :func:`ks_binned`)."""
        cr, cw = self.value_cdfs(win, n_bins)
        d = np.max(np.abs(cr - cw), axis=-1)
        nr = self.total[:, 0]
        nw = np.asarray(win, dtype=np.float64).sum(axis=-1)
        en = np.divide(nr * nw, nr + nw, out=np.zeros_like(nr), where=(nr + nw) > 0)
        p = special.kolmogorov(d * np.sqrt(en))
        return np.where(numeric, d, np.nan), np.where(numeric & (en > 0), p, np.nan)

    def wasserstein_binned(self, win: Counts, n_bins: NDArray[np.int64], widths: Vec,
                           scale: Vec) -> Vec:
        """1-Wasserstein distance in units of ``scale`` (see :func:`wasserstein_binned`)."""
        cr, cw = self.value_cdfs(win, n_bins)
        w1 = np.sum(np.abs(cr - cw) * widths, axis=-1)
        return np.asarray(np.divide(w1, scale, out=np.full_like(w1, np.nan), where=scale > 0))


def psi(ref: Counts, win: Counts) -> Vec:
    """Population stability index (smoothed with a small floor per bin)."""
    return ReferenceTerms(ref).psi(win)


def jensen_shannon(ref: Counts, win: Counts) -> Vec:
    """Jensen-Shannon distance, base 2 (0 = same, 1 = disjoint)."""
    return ReferenceTerms(ref).jensen_shannon(win)


def chi_square(ref: Counts, win: Counts) -> ChiSquare:
    """Chi-square homogeneity test of two histograms (bins empty in both are dropped)."""
    return ReferenceTerms(ref).chi_square(win)


def ks_binned(
    ref: Counts, win: Counts, n_bins: NDArray[np.int64], numeric: NDArray[np.bool_]
) -> tuple[Vec, Vec]:
    """Binned Kolmogorov-Smirnov distance and its asymptotic p-value (NaN for categorical).

    The distance is taken at the reference's quantile bin edges only, so it is a lower
    bound of the exact KS distance; the p-value is therefore conservative.
    """
    return ReferenceTerms(ref).ks_binned(win, n_bins, numeric)


def bin_widths(edges: list[NDArray[np.float64]], lows: Vec, highs: Vec, width: int) -> Vec:
    """``(columns, width)`` widths of the value bins, outer bins closed by the data range."""
    out = np.zeros((len(edges), width))
    for j, e in enumerate(edges):
        bounds = np.concatenate(([min(lows[j], e[0]) if e.size else lows[j]], e,
                                 [max(highs[j], e[-1]) if e.size else highs[j]]))
        out[j, : bounds.size - 1] = np.diff(bounds)
    return out


def wasserstein_binned(
    ref: Counts, win: Counts, n_bins: NDArray[np.int64], widths: Vec, scale: Vec
) -> Vec:
    """1-Wasserstein distance between binned distributions, in units of ``scale`` (ref std)."""
    return ReferenceTerms(ref).wasserstein_binned(win, n_bins, widths, scale)
