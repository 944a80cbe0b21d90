"""Null laws of the multivariate statistics: weighted chi-square tails and Gaussian maxima.

Under no drift, the window mean of a bounded feature map is close to Gaussian around the
reference mean, with covariance ``Σ (1/n + 1/N)`` (window of ``n`` events, reference of
``N`` rows). A squared distance of two mean embeddings is then ``(1/n + 1/N) Q`` with
``Q = Σ λ_i χ²_1`` and ``λ`` the eigenvalues of ``Σ``; its upper tail is taken from the
Lugannani-Rice saddlepoint approximation (accurate far into the tail, where the
two-moment Satterthwaite fit is anti-conservative), tabulated once and interpolated in
log space. Standardised scalar statistics use the normal law; a maximum over ``k`` of them
uses the Bonferroni bound ``k · P(|Z| > z)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import special

Vec = NDArray[np.float64]
_LOG_HALF_PI = 0.5 * math.log(math.pi / 2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _saddlepoint_logsf(lam: Vec, q: Vec, iterations: int = 60) -> Vec:
    """log P(Σ λ_i χ²_1 > q) for every q > 0 (Lugannani-Rice); NaN where it degenerates."""
    lmax = float(lam.max())
    # K'(t) = Σ λ/(1-2tλ) is convex and increasing on (-inf, 1/(2 lmax)); starting right of
    # the root (K'(t0) >= λmax/(1-2 t0 λmax) = q), Newton's iterates decrease to it.
    t = (1.0 - lmax / q) / (2.0 * lmax)
    lam_ = lam[None, :]
    for _ in range(iterations):
        d = 1.0 - 2.0 * t[:, None] * lam_
        k1 = (lam_ / d).sum(axis=1)
        k2 = (2.0 * lam_**2 / d**2).sum(axis=1)
        step = (k1 - q) / k2
        t = t - step
        if np.all(np.abs(step) <= 1e-13 * (np.abs(t) + 1.0 / lmax)):
            break
    d = 1.0 - 2.0 * t[:, None] * lam_
    kt = -0.5 * np.log(d).sum(axis=1)
    k2 = (2.0 * lam_**2 / d**2).sum(axis=1)
    w = np.sign(t) * np.sqrt(np.maximum(2.0 * (t * q - kt), 0.0))
    u = t * np.sqrt(k2)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = 1.0 / u - 1.0 / w
        # P = φ(w) [R(w) + 1/u - 1/w], R the Mills ratio sqrt(pi/2) erfcx(w/sqrt 2)
        mills = np.exp(_LOG_HALF_PI) * special.erfcx(w / math.sqrt(2.0))
        log_phi = -0.5 * w**2 - _LOG_SQRT_2PI
        out = np.where(w > 1.0, log_phi + np.log(mills + corr),
                       np.log(special.ndtr(-w) + np.exp(log_phi) * corr))
    bad = (np.abs(w) < 0.05) | ~np.isfinite(out)
    return np.asarray(np.where(bad, np.nan, np.minimum(out, 0.0)))


class WeightedChiSquare:
    """Upper tail of ``Q = Σ λ_i χ²_1``, tabulated on a grid and interpolated in log space.

    Beyond the grid the log tail is extended with its exact asymptotic slope
    ``-1 / (2 max λ)``. Building the table takes a few milliseconds; a saved table
    (:meth:`table`, :meth:`from_table`) loads in microseconds.
    """

    def __init__(self, weights: Vec, points: int = 240,
                 table: tuple[Vec, Vec] | None = None) -> None:
        lam = np.asarray(weights, dtype=np.float64)
        lam = lam[np.isfinite(lam) & (lam > 0)]
        if lam.size == 0:
            raise ValueError("a weighted chi-square needs at least one positive weight")
        lam = lam[lam >= lam.max() * 1e-9]
        self.weights = lam
        self.mean = float(lam.sum())
        self.sd = float(math.sqrt(2.0 * float((lam**2).sum())))
        self.lmax = float(lam.max())
        self.slope = -1.0 / (2.0 * self.lmax)
        if table is not None:
            q, logsf = (np.asarray(a, dtype=np.float64) for a in table)
            if q.ndim != 1 or q.shape != logsf.shape or q.size < 2 \
                    or not (np.all(np.isfinite(q)) and np.all(np.isfinite(logsf))) \
                    or np.any(np.diff(q) <= 0) or np.any(np.diff(logsf) > 0) or logsf[0] > 0:
                raise ValueError("a weighted chi-square table needs increasing q and a "
                                 "non-increasing, non-positive log tail")
            self._q, self._logsf = q, logsf
            return
        lo = max(self.mean - 6.0 * self.sd, self.mean * 1e-3)
        hi = self.mean + 8.0 * self.sd + 160.0 * self.lmax  # log tail below about -80
        q = np.linspace(lo, hi, points)
        logsf = _saddlepoint_logsf(lam, q)
        ok = np.isfinite(logsf)
        # the tabulated log tail must decrease; keep the running minimum
        self._q = q[ok]
        self._logsf = np.minimum.accumulate(logsf[ok])

    def table(self) -> tuple[Vec, Vec]:
        """The tabulated ``(q, log P(Q > q))``."""
        return self._q, self._logsf

    def logsf(self, q: float) -> float:
        """log P(Q > q)."""
        if not math.isfinite(q):
            return -math.inf if q > 0 else (0.0 if q < 0 else math.nan)
        if q > self._q[-1]:
            return float(self._logsf[-1] + self.slope * (q - self._q[-1]))
        return float(np.interp(q, self._q, self._logsf, left=0.0))

    def sf(self, q: float) -> float:
        return math.exp(self.logsf(q))

    def isf(self, p: float) -> float:
        """The q with P(Q > q) = p (0 < p < 1)."""
        lp = math.log(min(max(p, 1e-300), 1.0))
        if lp < self._logsf[-1]:
            return float(self._q[-1] + (lp - self._logsf[-1]) / self.slope)
        # the table decreases: interpolate on the reversed arrays
        return float(np.interp(lp, self._logsf[::-1], self._q[::-1]))


def ref_rows(v: object) -> int:
    """A reference row count read from a profile (an integer >= 2)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v < 2**53:
        raise ValueError(f"reference rows must be an integer >= 2, not {v!r}")
    return v


def normal_two_sided_logsf(z: Vec | float) -> Vec:
    """log P(|Z| > |z|) for a standard normal Z."""
    return np.asarray(math.log(2.0) + special.log_ndtr(-np.abs(np.asarray(z, dtype=np.float64))))


def max_normal_p(z: float, count: int) -> float:
    """Bonferroni p-value of the largest of ``count`` standard normal ``|z|``."""
    if not math.isfinite(z):
        return math.nan if math.isnan(z) else 0.0
    return float(min(1.0, max(count, 1) * math.exp(float(normal_two_sided_logsf(z)))))


def max_normal_threshold(alpha: float, count: int) -> float:
    """``|z|`` above which the Bonferroni maximum of ``count`` normals rejects at ``alpha``."""
    a = min(max(alpha / (2.0 * max(count, 1)), 1e-300), 0.5)
    return float(-special.ndtri(a))


class Contribution(NamedTuple):
    """One part of a multivariate statistic that explains it (a pair, a feature)."""

    name: str  # e.g. "f1:f2" (a pair), "f3", "plan=pro", "f7.missing"
    statistic: str  # what ``score`` measures
    score: float  # |z| of this part
    threshold: float  # |z| above which this part alone rejects at the test's level
    p_value: float
    source: str  # the feature (or pair) an alert names


def top_normal(names: Sequence[str], sources: Sequence[str], z: Vec, label: str, alpha: float,
               k: int, scale: float = 1.0) -> list[Contribution]:
    """The ``k`` largest ``|z|`` as contributions, with Bonferroni thresholds over all of ``z``."""
    a = np.abs(np.where(np.isfinite(z), z, 0.0))
    count = int(a.size)
    thr = max_normal_threshold(alpha, count) * math.sqrt(scale)
    order = np.argsort(-a, kind="stable")[:k]
    return [Contribution(names[i], label, float(a[i]), thr,
                         max_normal_p(float(a[i]) / math.sqrt(scale), count), sources[i])
            for i in order.tolist()]
