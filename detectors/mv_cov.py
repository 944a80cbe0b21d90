"""Covariance (correlation) drift from per-pane sums of ``u`` and ``u uᵀ``.

``u`` is the encoded row when it has at most ``MAX_DIM`` (32) dimensions, otherwise a
seeded Gaussian random projection of it to 32 dimensions (pairs then name projected
coordinates ``rp<i>``). The window covariance ``S2/n - m mᵀ`` is compared with the
reference covariance pair by pair::

    z_ij = (C_w,ij - C_r,ij) / sqrt(V_ij (1/n + 1/N)),   V_ij = Var(u_i u_j) on the reference

(the fourth-moment variance of a covariance estimate, so no normality is assumed). The
statistic is ``max |z_ij|`` over cross-feature pairs (pairs within one feature, such as two
one-hot columns of the same category, only restate its marginal and are left to the
per-feature tests); its p-value is the Bonferroni bound ``P · P(|Z| > max)`` over the
``P`` pairs, and the pairs with the largest ``|z_ij|`` explain an alert. Variances (the
diagonal) are the per-feature tests' business.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.mv_blas import gram, matmul
from driftline.detectors.mv_json import flags, texts
from driftline.detectors.mv_null import (
    Contribution,
    max_normal_p,
    max_normal_threshold,
    ref_rows,
    top_normal,
)

Vec = NDArray[np.float64]
NAME = "covariance"
KEY_U = "mv_u"
KEY_UU = "mv_uu"
MAX_DIM = 32


def projection(dim: int, out: int, seed: int) -> Vec:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((dim, out)) / math.sqrt(out)


def _fingerprint(a: Vec) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class CovarianceDrift:
    """Reference side of the covariance statistic."""

    names: tuple[str, ...]  # the q coordinates
    cov: Vec  # (q, q) reference covariance of u
    var: Vec  # (q, q) reference variance of the products u_i u_j
    pairs: NDArray[np.bool_]  # (q, q) tested pairs (upper triangle)
    proj: Vec | None  # (p, q) random projection, or None
    proj_seed: int
    rows: int  # reference rows of ``cov``
    _inv_sd: Vec = field(init=False, repr=False, compare=False)  # 1/sqrt(var) on tested pairs

    def __post_init__(self) -> None:
        inv = np.zeros_like(self.var)
        inv[self.pairs] = 1.0 / np.sqrt(self.var[self.pairs])
        object.__setattr__(self, "_inv_sd", inv)

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def count(self) -> int:
        return int(self.pairs.sum())

    @classmethod
    def fit(cls, z: Vec, names: Sequence[str], sources: Sequence[str], *, seed: int = 0,
            max_dim: int = MAX_DIM) -> CovarianceDrift | None:
        p = z.shape[1]
        proj: Vec | None = None
        if p > max_dim:
            proj = projection(p, max_dim, seed + 2)
            u = z @ proj
            coords = tuple(f"rp{i}" for i in range(max_dim))
            same = np.zeros((max_dim, max_dim), dtype=bool)
        else:
            u = z
            coords = tuple(names)
            src = np.asarray(sources, dtype=object)
            same = src[:, None] == src[None, :]
        u = u - u.mean(axis=0)
        n = u.shape[0]
        cov = gram(u) / n
        var = gram(u**2) / n - cov**2
        q = u.shape[1]
        floor = 1e-12 * float(np.max(np.abs(np.diag(cov)), initial=0.0)) ** 2
        pairs = np.triu(np.ones((q, q), dtype=bool), 1) & ~same & (var > floor)
        if not pairs.any():
            return None
        return cls(coords, cov, var, pairs, proj, seed + 2, n)

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "cov": self.cov.tolist(), "var": self.var.tolist(),
                "pairs": self.pairs.astype(int).tolist(), "rows": self.rows,
                "projection": None if self.proj is None else {
                    "seed": self.proj_seed, "fingerprint": _fingerprint(self.proj)}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], dim: int) -> CovarianceDrift:
        names = texts(d["names"], "covariance coordinate names")
        q = len(names)
        cov = np.asarray(d["cov"], dtype=np.float64)
        var = np.asarray(d["var"], dtype=np.float64)
        pairs = flags(d["pairs"], q, "covariance pairs")
        if cov.shape != (q, q) or var.shape != (q, q) \
                or not (np.all(np.isfinite(cov)) and np.all(np.isfinite(var))):
            raise ValueError("bad covariance reference")
        mask = pairs & np.triu(np.ones((q, q), dtype=bool), 1) & (var > 0)
        proj: Vec | None = None
        seed = 0
        spec = d["projection"]
        if spec is not None:
            seed = spec["seed"]
            if not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise ValueError("bad projection seed")
            proj = projection(dim, q, seed)
            if _fingerprint(proj) != spec["fingerprint"]:
                raise ValueError("projection differs from the one the reference was built with")
        elif q != dim:
            raise ValueError("covariance coordinates do not match the encoding")
        if not mask.any():
            raise ValueError("no covariance pairs to test")
        return cls(names, cov, var, mask, proj, seed, ref_rows(d["rows"]))

    # -- streaming ------------------------------------------------------------------------
    def _u(self, z: Vec) -> Vec:
        return z if self.proj is None else matmul(z, self.proj)

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        q = self.dim
        return {KEY_U: ((q,), "<f8"), KEY_UU: ((q, q), "<f8")}

    def pane_sums(self, z: Vec) -> dict[str, Vec]:
        u = self._u(z)
        return {KEY_U: u.sum(axis=0), KEY_UU: u.T @ u}

    def row_moments(self, z: Vec) -> dict[str, NDArray[Any]]:
        """Per-row ``u`` and the products of the tested pairs only (``(n, P)``)."""
        u = self._u(z)
        i, j = np.nonzero(self.pairs)
        return {KEY_U: u, KEY_UU: (u[:, i] * u[:, j]).astype(np.float32)}

    def recentre(self, z: Vec) -> CovarianceDrift:
        """The same statistic with the covariance of ``z`` as the reference."""
        u = self._u(z)
        u = u - u.mean(axis=0)
        return replace(self, cov=gram(u) / u.shape[0])

    def zscores(self, sums: Mapping[str, NDArray[Any]], n: Vec, var_factor: Vec) -> Vec:
        """``(..., q, q)`` standardised covariance changes (0 outside the tested pairs)."""
        nn = np.asarray(n, dtype=np.float64)[..., None, None]
        m = np.asarray(sums[KEY_U], dtype=np.float64)[..., :, None] / nn
        s2 = np.asarray(sums[KEY_UU], dtype=np.float64)
        if s2.shape[-2:] != self.pairs.shape:  # tested pairs only (see row_moments)
            full = np.zeros((*s2.shape[:-1], *self.pairs.shape))
            full[..., self.pairs] = s2
            s2 = full
        cw = s2 / nn - m * np.swapaxes(m, -1, -2)
        vf = np.asarray(var_factor, dtype=np.float64)[..., None, None]
        return np.asarray((cw - self.cov) * self._inv_sd / np.sqrt(vf))

    def statistic(self, sums: Mapping[str, NDArray[Any]], n: Vec, var_factor: Vec) -> Vec:
        z = self.zscores(sums, n, var_factor)
        return np.asarray(np.abs(z).max(axis=(-2, -1)))

    def log_p(self, score: float, var_factor: float, scale: float) -> float:
        p = max_normal_p(score / math.sqrt(scale), self.count)
        return math.log(p) if p > 0 else -math.inf

    def threshold(self, alpha: float, var_factor: float, scale: float) -> float:
        return max_normal_threshold(alpha, self.count) * math.sqrt(scale)

    def calibration_value(self, score: Vec, var_factor: float) -> tuple[Vec, float, float]:
        return score**2, math.nan, max_normal_threshold(0.05, self.count) ** 2

    def contributors(self, sums: Mapping[str, NDArray[Any]], n: int, var_factor: float,
                     alpha: float, scale: float, k: int) -> list[Contribution]:
        """The ``k`` tested pairs with the largest ``|z_ij|``, named ``a:b``."""
        z = self.zscores(sums, np.asarray(float(n)), np.asarray(var_factor))
        i, j = np.nonzero(self.pairs)
        names = [f"{self.names[a]}:{self.names[b]}" for a, b in zip(i.tolist(), j.tolist(),
                                                                      strict=True)]
        return top_normal(names, names, z[i, j], NAME, alpha, k, scale)
