"""False-alarm calibration: from a target run length to per-test thresholds.

The target is an expected number of events between false alerts of one model (default
1,000,000). An evaluation after ``k`` new events may then raise a false alert with
probability ``alpha_eval = k / target``; that budget is split over the family of tests
(every column, plus any multivariate statistic) by Bonferroni or Benjamini-Hochberg.

Each column's chi-square null is checked by a parametric bootstrap on the reference
profile itself: reference and window histograms are redrawn from the reference's bin
proportions, at the reference's size and the window's size, and the chi-square
statistics are compared with the asymptotic law. Where small counts or sparse bins make
the statistic heavier than the asymptotic law, the column's statistic is deflated by
the measured factor (``scale``) before its p-value is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from driftline.detectors.stats import chi_square

Vec = NDArray[np.float64]
#: the range calibrate() clips every column's scale to
SCALE_MIN, SCALE_MAX = 1.0, 5.0


@dataclass(frozen=True)
class Calibration:
    """Per-column scale factors and the family-wise budget rule."""

    target_run_length: float
    scale: Vec  # (C,) in [SCALE_MIN, SCALE_MAX]
    correction: str = "bonferroni"  # or "bh"
    rounds: int = 0
    #: share of the budget spent per evaluation: overlapping windows and a reference of
    #: finite size make the per-reference false-alarm rate vary around its mean, so the
    #: default keeps half of the budget in reserve.
    spend: float = 0.5

    def alpha_eval(self, new_events: int) -> float:
        """False-alert probability one evaluation may spend after ``new_events`` events."""
        return float(min(0.5, self.spend * max(new_events, 1) / self.target_run_length))

    def p_values(self, statistic: Vec, df: Vec) -> Vec:
        return np.asarray(special.chdtrc(np.maximum(df, 1.0), statistic / self.scale))

    def thresholds(self, df: Vec, alpha: float | Vec, family: int) -> Vec:
        """Chi-square thresholds at the Bonferroni level (reported in alerts and metrics);
        ``alpha`` may be an array that broadcasts against ``df``."""
        return np.asarray(self.scale * special.chdtri(np.maximum(df, 1.0), alpha / max(family, 1)))

    def decide(self, p: Vec, alpha: float) -> NDArray[np.bool_]:
        """Which tests reject at family-wise level ``alpha`` (NaN p-values never reject)."""
        q = np.where(np.isfinite(p), p, 1.0)
        m = q.size
        if m == 0:
            return np.zeros(0, dtype=bool)
        if self.correction == "bh":
            order = np.argsort(q)
            ok = q[order] <= alpha * np.arange(1, m + 1) / m
            k = int(np.max(np.flatnonzero(ok))) + 1 if ok.any() else 0
            out = np.zeros(m, dtype=bool)
            out[order[:k]] = True
            return out
        return np.asarray(q <= alpha / m)

    def decide_rows(self, p: Vec, alpha: Vec) -> NDArray[np.bool_]:
        """:meth:`decide` of each row of ``p`` (windows, tests) at its own ``alpha[i]``."""
        k, m = p.shape
        if self.correction == "bh" or m == 0:
            out = np.zeros((k, m), dtype=bool)
            for i in range(k):
                out[i] = self.decide(p[i], float(alpha[i]))
            return out
        q = np.where(np.isfinite(p), p, 1.0)
        return np.asarray(q <= (alpha / m)[:, None])


def calibrate(
    ref_counts: NDArray[np.int64],
    window_size: int,
    *,
    target_run_length: float = 1e6,
    correction: str = "bonferroni",
    rounds: int = 400,
    seed: int = 0,
) -> Calibration:
    """Bootstrap the chi-square null of every column at the given window size."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    n_ref = ref.sum(axis=1)
    probs = np.divide(ref, n_ref[:, None], out=np.zeros_like(ref), where=n_ref[:, None] > 0)
    scale = np.ones(ref.shape[0])
    if rounds > 0 and window_size > 0:
        rng = np.random.default_rng(seed)
        n = n_ref.astype(np.int64)
        draws = [(rng.multinomial(n, probs), rng.multinomial(window_size, probs))
                 for _ in range(rounds)]
        # every round's columns in one test: rows are independent, the results identical
        res = chi_square(np.concatenate([r for r, _ in draws]),
                         np.concatenate([w for _, w in draws]))
        s = res.statistic.reshape(rounds, -1)
        df = np.maximum(res.df.reshape(rounds, -1).mean(axis=0), 1.0)
        mean_ratio = s.mean(axis=0) / df
        tail_ratio = np.quantile(s, 0.99, axis=0) / stats.chi2.isf(0.01, df)
        scale = np.clip(np.maximum(mean_ratio, tail_ratio), SCALE_MIN, SCALE_MAX)
        scale = np.where(n_ref > 0, scale, 1.0)
    return Calibration(target_run_length, np.asarray(scale, dtype=np.float64), correction, rounds)
