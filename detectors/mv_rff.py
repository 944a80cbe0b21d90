"""Kernel MMD with random Fourier features, on the encoded (standardised) rows.

The kernel is a two-scale Gaussian, ``k = (k_σ + k_σ/2) / 2`` with
``k_s(x, y) = exp(-|x - y|² / (2 s²))`` and ``σ`` the median pairwise distance of reference
rows (median heuristic; the half scale adds sensitivity to local structure, which one
median-heuristic scale misses in many dimensions). It is approximated by the inner product
of the random Fourier features (Rahimi & Recht)::

    φ(x) = sqrt(2/D) [cos θ, sin θ, cos 2θ, sin 2θ],   θ = xW,   W ~ N(0, σ⁻² I), D/4 columns

``E[φ(x)·φ(y)] = k(x, y)``: the frequencies ``2W`` are those of ``k_σ/2``, and the
double-angle identities give their features from ``cos θ`` and ``sin θ`` with two products,
so D features cost D/2 sines and cosines. Each pane keeps the sum of ``φ`` over its rows;
the window's mean embedding is pane-additive and

    MMD² = |mean φ(window) - mean φ(reference)|²

costs O(D) per evaluation whatever the window length. Under no drift it is distributed as
``(1/n + 1/N) Σ λ_i χ²_1`` with ``λ`` the eigenvalues of the reference covariance of
``φ`` (:class:`~driftline.detectors.mv_null.WeightedChiSquare`).

``D = 128`` by default (32 base frequencies: 64 sines and cosines per event, the bulk of the
multivariate statistics' cost; the default keeps them within 2x of the per-column pane
path). Against the exact (quadratic-time) MMD² of the same kernel, on 400 + 400 rows in 8
dimensions (tests/unit/test_multivariate.py): mean relative error 14 % without drift,
11 % for a 0.5 σ shift, 25 % for a correlation flip (D = 256: 12 %, 12 %, 19 %); the
error falls as 1/sqrt(D), and as the null law is that of the RFF statistic itself, the
test is calibrated whatever D.

The feature map runs in float32 (numpy's float32 sin/cos are vectorised, float64's are
not on common CPUs; the rounding, ~1e-7, is far below the window's sampling noise); sums
are float64. ``W`` is regenerated from its seed and checked against a stored fingerprint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.mv_blas import gram, matmul, rows_per_block
from driftline.detectors.mv_json import number
from driftline.detectors.mv_null import WeightedChiSquare, ref_rows

Vec = NDArray[np.float64]
NAME = "mmd_rff"
KEY = "mv_rff"
DEFAULT_D = 128
_BANDWIDTH_ROWS = 1000


def weights(dim: int, d: int, bandwidth: float, seed: int) -> NDArray[np.float32]:
    """The ``(dim, d/4)`` random base frequencies for one seed and bandwidth."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((dim, d // 4)) / bandwidth).astype(np.float32)


def fingerprint(w: NDArray[np.float32]) -> str:
    return hashlib.sha1(np.ascontiguousarray(w).tobytes()).hexdigest()[:16]


def feature_rows(z: Vec, w: NDArray[np.float32]) -> NDArray[np.float32]:
    """Unnormalised map ``[cos θ, sin θ, cos 2θ, sin 2θ]`` of every row, ``(n, D)`` float32."""
    m = w.shape[1]
    out = np.empty((z.shape[0], 4 * m), dtype=np.float32)
    step = rows_per_block(w.size)
    for k in range(0, z.shape[0], step):
        p = z[k : k + step].astype(np.float32) @ w
        c, s = out[k : k + step, :m], out[k : k + step, m : 2 * m]
        np.cos(p, out=c)
        np.sin(p, out=s)
        out[k : k + step, 2 * m : 3 * m] = 2.0 * c * c - 1.0
        out[k : k + step, 3 * m :] = 2.0 * s * c
    return out


def feature_sums(z: Vec, w: NDArray[np.float32]) -> Vec:
    """``feature_rows(z, w).sum(axis=0)`` without forming the double-angle rows.

    Rows go in blocks whose float32 work arrays stay near 64 KiB: larger ones are
    fresh memory-mapped pages on every call, and their page faults cost more than the
    sines and cosines.
    """
    m = w.shape[1]
    total = np.zeros(4 * m)
    block = min(rows_per_block(w.size), max(16, 16384 // m))
    z32 = z.astype(np.float32)
    for k in range(0, z.shape[0], block):
        p = z32[k : k + block] @ w
        c, s = np.cos(p), np.sin(p)
        total[:m] += c.sum(axis=0)
        total[m : 2 * m] += s.sum(axis=0)
        total[2 * m : 3 * m] += 2.0 * np.einsum("ij,ij->j", c, c) - p.shape[0]
        total[3 * m :] += 2.0 * np.einsum("ij,ij->j", s, c)
    return total


def median_bandwidth(z: Vec, seed: int) -> float:
    """Median pairwise distance of (up to 1,000) rows; distances of 0 are ignored."""
    rng = np.random.default_rng(seed)
    rows = z if z.shape[0] <= _BANDWIDTH_ROWS else z[
        np.sort(rng.choice(z.shape[0], _BANDWIDTH_ROWS, replace=False))]
    sq = (rows**2).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * matmul(rows, np.ascontiguousarray(rows.T))
    iu = np.triu_indices(rows.shape[0], 1)
    dist = np.sqrt(np.maximum(d2[iu], 0.0))
    dist = dist[dist > 1e-9]
    return float(np.median(dist)) if dist.size else float(math.sqrt(z.shape[1]))


@dataclass(frozen=True)
class RFFMMD:
    """Reference side of the RFF MMD statistic."""

    d: int
    seed: int
    bandwidth: float
    mean: Vec  # (D,) reference mean of the unnormalised feature map
    eigenvalues: Vec  # of the reference covariance of the unnormalised map
    w: NDArray[np.float32]
    rows: int  # reference rows of the mean embedding
    null: WeightedChiSquare | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.null is None:
            object.__setattr__(self, "null", WeightedChiSquare(self.eigenvalues * (2.0 / self.d)))

    @property
    def law(self) -> WeightedChiSquare:
        """The null law of ``MMD² / (1/n + 1/N)``."""
        assert self.null is not None
        return self.null

    @classmethod
    def fit(cls, z: Vec, *, d: int = DEFAULT_D, seed: int = 0, cov_rows: int = 20_000) -> RFFMMD:
        if d < 4 or d % 4:
            raise ValueError("D must be a multiple of 4")
        bw = median_bandwidth(z, seed)
        w = weights(z.shape[1], d, bw, seed)
        mean = feature_sums(z, w) / z.shape[0]
        rows = z if z.shape[0] <= cov_rows else z[
            np.sort(np.random.default_rng(seed + 1).choice(z.shape[0], cov_rows, replace=False))]
        phi = feature_rows(rows, w).astype(np.float64)
        phi -= phi.mean(axis=0)
        eig = np.linalg.eigvalsh(gram(phi) / rows.shape[0])[::-1]
        eig = eig[eig > max(float(eig[0]), 1e-300) * 1e-9]
        return cls(d, seed, bw, mean, eig, w, int(z.shape[0]))

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"d": self.d, "seed": self.seed, "bandwidth": self.bandwidth,
                "fingerprint": fingerprint(self.w), "mean": self.mean.tolist(),
                "eigenvalues": self.eigenvalues.tolist(), "rows": self.rows,
                "null_q": self.law.table()[0].tolist(), "null_logsf": self.law.table()[1].tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], dim: int) -> RFFMMD:
        D, seed, bw = d["d"], d["seed"], number(d["bandwidth"], "RFF bandwidth")
        if not (type(D) is int and type(seed) is int and 4 <= D <= 65536 and D % 4 == 0
                and 0 <= seed < 2**63 and math.isfinite(bw) and bw > 0):
            raise ValueError("bad RFF parameters")
        w = weights(dim, D, bw, seed)
        if fingerprint(w) != d["fingerprint"]:
            raise ValueError("RFF weights differ from the ones the reference was built with")
        mean = np.asarray(d["mean"], dtype=np.float64)
        eig = np.asarray(d["eigenvalues"], dtype=np.float64)
        if mean.shape != (D,) or eig.ndim != 1 or not eig.size or not np.all(np.isfinite(eig)) \
                or not np.all(np.isfinite(mean)) or np.any(eig < 0):
            raise ValueError("bad RFF reference embedding")
        null = WeightedChiSquare(eig * (2.0 / D), table=(d["null_q"], d["null_logsf"]))
        return cls(D, seed, bw, mean, eig, w, ref_rows(d["rows"]), null)

    # -- streaming ------------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {KEY: ((self.d,), "<f8")}

    def pane_sums(self, z: Vec) -> dict[str, Vec]:
        return {KEY: feature_sums(z, self.w)}

    def row_moments(self, z: Vec) -> dict[str, NDArray[np.float32]]:
        return {KEY: feature_rows(z, self.w)}

    def recentre(self, z: Vec) -> RFFMMD:
        """The same statistic with the mean embedding of ``z`` as the reference."""
        return replace(self, mean=feature_rows(z, self.w).mean(axis=0, dtype=np.float64))

    def statistic(self, sums: Mapping[str, NDArray[Any]], n: Vec, var_factor: Vec) -> Vec:
        """MMD² of the window(s) against the reference (leading axes of ``sums`` = windows)."""
        nn = np.asarray(n, dtype=np.float64)
        delta = np.asarray(sums[KEY], dtype=np.float64) / nn[..., None] - self.mean
        return np.asarray((delta**2).sum(axis=-1) * (2.0 / self.d))

    def log_p(self, score: float, var_factor: float, scale: float) -> float:
        return self.law.logsf(score / (var_factor * scale))

    def threshold(self, alpha: float, var_factor: float, scale: float) -> float:
        return float(var_factor * scale * self.law.isf(alpha))

    def calibration_value(self, score: Vec, var_factor: float) -> tuple[Vec, float, float]:
        """Bootstrap check: statistics in null units, the null's mean and 95 % quantile."""
        return score / var_factor, self.law.mean, self.law.isf(0.05)
