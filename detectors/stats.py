"""Two-sample statistics on binned counts, vectorised over all columns at once.

Every function takes reference counts ``ref`` and window counts ``win`` of shape
``(columns, bins)`` and returns one value per column. Binned KS and Wasserstein work
on ordered (numeric) value bins only; their resolution is the reference's quantile
bins, so they are the distance between binned CDFs, not the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

Counts = NDArray[np.int64] | NDArray[np.float64]
Vec = NDArray[np.float64]
_EPS = 1e-4


def _proportions(counts: Counts) -> Vec:
    c = np.asarray(counts, dtype=np.float64)
    tot = c.sum(axis=-1, keepdims=True)
    out: Vec = np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)
    return out


def psi(ref: Counts, win: Counts) -> Vec:
    """Population stability index (smoothed with a small floor per bin)."""
    p, q = _proportions(ref) + _EPS, _proportions(win) + _EPS
    p /= p.sum(axis=-1, keepdims=True)
    q /= q.sum(axis=-1, keepdims=True)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1))


def jensen_shannon(ref: Counts, win: Counts) -> Vec:
    """Jensen-Shannon distance, base 2 (0 = same, 1 = disjoint)."""
    p, q = _proportions(ref), _proportions(win)
    m = 0.5 * (p + q)
    js = 0.5 * special.rel_entr(p, m).sum(axis=-1) + 0.5 * special.rel_entr(q, m).sum(axis=-1)
    return np.asarray(np.sqrt(np.clip(js / np.log(2.0), 0.0, 1.0)))


@dataclass(frozen=True)
class ChiSquare:
    """Two-sample chi-square test of homogeneity per column."""

    statistic: Vec
    df: Vec
    p_value: Vec


def chi_square(ref: Counts, win: Counts) -> ChiSquare:
    """Chi-square homogeneity test of two histograms (bins empty in both are dropped)."""
    r = np.asarray(ref, dtype=np.float64)
    w = np.asarray(win, dtype=np.float64)
    nr = r.sum(axis=-1, keepdims=True)
    nw = w.sum(axis=-1, keepdims=True)
    both = r + w
    used = both > 0
    k1 = np.sqrt(np.divide(nw, nr, out=np.zeros_like(nr), where=nr > 0))
    k2 = np.sqrt(np.divide(nr, nw, out=np.zeros_like(nw), where=nw > 0))
    terms = np.divide((k1 * r - k2 * w) ** 2, both, out=np.zeros_like(both), where=used)
    stat = terms.sum(axis=-1)
    df = np.maximum(used.sum(axis=-1) - 1, 0).astype(np.float64)
    valid = (df > 0) & (nr[:, 0] > 0) & (nw[:, 0] > 0)
    p = np.where(valid, special.chdtrc(np.maximum(df, 1.0), stat), 1.0)
    return ChiSquare(np.where(valid, stat, 0.0), df, np.asarray(p, dtype=np.float64))


def _value_cdfs(ref: Counts, win: Counts, n_bins: NDArray[np.int64]) -> tuple[Vec, Vec]:
    """CDFs over value bins only (missing bin and padding dropped)."""
    width = np.asarray(ref).shape[-1]
    mask = np.arange(width)[None, :] < n_bins[:, None]
    r = np.where(mask, ref, 0).astype(np.float64)
    w = np.where(mask, win, 0).astype(np.float64)
    return np.cumsum(_proportions(r), axis=-1), np.cumsum(_proportions(w), axis=-1)


def ks_binned(
    ref: Counts, win: Counts, n_bins: NDArray[np.int64], numeric: NDArray[np.bool_]
) -> tuple[Vec, Vec]:
    """Binned Kolmogorov-Smirnov distance and its asymptotic p-value (NaN for categorical).

    The distance is taken at the reference's quantile bin edges only, so it is a lower
    bound of the exact KS distance; the p-value is therefore conservative.
    """
    cr, cw = _value_cdfs(ref, win, n_bins)
    d = np.max(np.abs(cr - cw), axis=-1)
    nr = np.asarray(ref, dtype=np.float64).sum(axis=-1)
    nw = np.asarray(win, dtype=np.float64).sum(axis=-1)
    en = np.divide(nr * nw, nr + nw, out=np.zeros_like(nr), where=(nr + nw) > 0)
    p = special.kolmogorov(d * np.sqrt(en))
    return np.where(numeric, d, np.nan), np.where(numeric & (en > 0), p, np.nan)


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
    cr, cw = _value_cdfs(ref, win, n_bins)
    w1 = np.sum(np.abs(cr - cw) * widths, axis=-1)
    return np.asarray(np.divide(w1, scale, out=np.full_like(w1, np.nan), where=scale > 0))
