"""Exact two-sample KS and Cramér-von Mises tests on raw values (checked against scipy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

Vec = NDArray[np.float64]


@dataclass(frozen=True)
class TestResult:
    """Statistic and p-value of one two-sample test."""

    statistic: float
    p_value: float


def _clean(x: NDArray[np.float64]) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    return np.sort(a[np.isfinite(a)])


def ks_2samp(x: Vec, y: Vec) -> TestResult:
    """Two-sample KS: exact statistic, asymptotic p-value (scipy's ``method="asymp"``)."""
    a, b = _clean(x), _clean(y)
    n, m = a.size, b.size
    if n == 0 or m == 0:
        return TestResult(float("nan"), float("nan"))
    both = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, both, side="right") / n
    cdf_b = np.searchsorted(b, both, side="right") / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = n * m / (n + m)
    p = float(stats.kstwo.sf(d, round(en)))
    return TestResult(d, min(max(p, 0.0), 1.0))


def _cvm_cdf_inf(x: float) -> float:
    """Limit distribution of the Cramér-von Mises statistic (Csörgő & Faraway 1996)."""
    if x <= 0:
        return 0.0
    total = 0.0
    for k in range(4):
        y = 4 * k + 1
        q = y**2 / (16 * x)
        b = special.kv(0.25, q)
        term = (
            special.gamma(k + 0.5) / (special.gamma(0.5) * special.gamma(k + 1))
            * np.sqrt(y) * np.exp(-q) * b / (np.pi * np.sqrt(x))
        )
        total += float(term)
    return min(max(total, 0.0), 1.0)


def cvm_2samp(x: Vec, y: Vec) -> TestResult:
    """Two-sample Cramér-von Mises: exact statistic (Anderson 1962), asymptotic p-value."""
    a, b = _clean(x), _clean(y)
    n, m = a.size, b.size
    if n == 0 or m == 0:
        return TestResult(float("nan"), float("nan"))
    ranks = stats.rankdata(np.concatenate([a, b]))
    rx, ry = ranks[:n], ranks[n:]
    u = n * np.sum((rx - np.arange(1, n + 1)) ** 2) + m * np.sum((ry - np.arange(1, m + 1)) ** 2)
    nm = n + m
    t = float(u / (n * m * nm) - (4 * m * n - 1) / (6 * nm))
    # moments of T (Anderson 1962), standardised onto the limit distribution, as scipy does
    et = (1 + 1 / nm) / 6
    vt = (nm + 1) * (4 * m * n * nm - 3 * (m**2 + n**2) - 2 * m * n) / (45 * nm**2 * 4 * m * n)
    tn = 1 / 6 + (t - et) / np.sqrt(45 * vt)
    return TestResult(t, 1.0 - _cvm_cdf_inf(float(tn)))


def ks_many(window: NDArray[np.float64], samples: list[Vec]) -> list[TestResult]:
    """KS of every column of ``window`` (n, f) against its reference sample."""
    return [ks_2samp(window[:, j], s) for j, s in enumerate(samples)]


def cvm_many(window: NDArray[np.float64], samples: list[Vec]) -> list[TestResult]:
    """Cramér-von Mises of every column of ``window`` against its reference sample."""
    return [cvm_2samp(window[:, j], s) for j, s in enumerate(samples)]
