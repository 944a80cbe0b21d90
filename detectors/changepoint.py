"""Change-point estimates on a series of per-pane statistics (pure numpy).

``cusum`` finds the single most likely change in mean: the split maximising the
standardised CUSUM statistic ``|S_k - k/T S_T| / sqrt(k (T-k) / T)`` scaled by the
series' robust spread (the least-squares / Gaussian likelihood-ratio estimate of one
mean shift). ``binary_segmentation`` applies it recursively to find several changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class ChangePoint:
    """A change in mean: ``index`` is the first element of the new regime."""

    index: int
    statistic: float  # standardised CUSUM (about N(0,1)-scaled under no change)
    before: float  # mean of the segment before
    after: float  # mean of the segment after


def _spread(x: NDArray[np.float64]) -> float:
    """Noise scale from successive differences (robust to the mean shift itself)."""
    if x.size < 3:
        return 1.0
    d = np.abs(np.diff(x))
    s = float(np.median(d)) / (0.6745 * np.sqrt(2.0))
    return s if s > 0 and np.isfinite(s) else float(np.std(x)) or 1.0


def cusum(values: ArrayLike, *, min_size: int = 1, scale: float | None = None
          ) -> ChangePoint | None:
    """The most likely single change in mean of ``values`` (None when too short)."""
    x = np.asarray(values, dtype=np.float64)
    x = np.where(np.isfinite(x), x, np.nan)
    if np.isnan(x).any():
        x = np.where(np.isnan(x), np.nanmean(x) if np.isfinite(x).any() else 0.0, x)
    t = x.size
    if t < 2 * min_size or t < 2:
        return None
    s = np.cumsum(x)
    k = np.arange(1, t, dtype=np.float64)
    stat = np.abs(s[:-1] - k / t * s[-1]) / np.sqrt(k * (t - k) / t)
    lo, hi = min_size - 1, t - min_size  # splits after element k-1, both sides >= min_size
    window = stat[lo:hi]
    if window.size == 0:
        return None
    best = lo + int(np.argmax(window))
    idx = best + 1
    sigma = scale if scale is not None else _spread(x)
    return ChangePoint(idx, float(stat[best] / sigma), float(x[:idx].mean()), float(x[idx:].mean()))


def binary_segmentation(values: ArrayLike, *, threshold: float = 4.0, min_size: int = 2,
                        max_points: int = 5) -> list[ChangePoint]:
    """Changes in mean whose standardised CUSUM exceeds ``threshold``, by position."""
    x = np.asarray(values, dtype=np.float64)
    sigma = _spread(x[np.isfinite(x)]) if np.isfinite(x).any() else 1.0
    found: list[ChangePoint] = []
    stack = [(0, x.size)]
    while stack and len(found) < max_points:
        a, b = stack.pop()
        cp = cusum(x[a:b], min_size=min_size, scale=sigma)
        if cp is None or cp.statistic < threshold:
            continue
        found.append(ChangePoint(a + cp.index, cp.statistic, cp.before, cp.after))
        stack += [(a, a + cp.index), (a + cp.index, b)]
    return sorted(found, key=lambda c: c.index)
