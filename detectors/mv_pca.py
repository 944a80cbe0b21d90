"""Data reconstruction drift: PCA fitted on the reference, mean reconstruction error per window.

The principal subspace keeps the fewest components that explain 90 % of the encoded
reference variance (at most 32, at least 1, fewer than the dimension). An event's squared
reconstruction error is ``e = |r|²`` with ``r = Π c`` (``c`` the row centred on the
reference, ``Π = I - V Vᵀ`` the projection off the subspace). Its window sum is linear in
the window's second moments: ``Σ e = tr(Π M Π)`` and ``Σ r_j² = (Π M Π)_jj`` with
``M = Σ c cᵀ``. When the covariance statistic keeps the pane sums of ``z`` and ``z zᵀ``
(up to 32 encoded dimensions) ``M`` comes from them and this statistic costs nothing per
event; otherwise panes carry ``Σ e``, ``Σ e²`` and the Gram of the residual coordinates.
The window's mean error is compared with the reference's mean error::

    z = (mean e - E_ref e) / sqrt(Var_ref(e) (1/n + 1/N))

two-sided (an error that falls is a change too). The dimensions whose mean ``r_j²``
grew the most, standardised the same way, say which features left the reference's
principal subspace. This catches changes in how features move together that keep every
marginal, such as a feature that stops following the others (what NannyML calls data
reconstruction drift).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.mv_blas import gram, matmul
from driftline.detectors.mv_cov import KEY_U, KEY_UU
from driftline.detectors.mv_json import number
from driftline.detectors.mv_null import (
    Contribution,
    max_normal_threshold,
    normal_two_sided_logsf,
    ref_rows,
    top_normal,
)

Vec = NDArray[np.float64]
NAME = "pca_recon"
KEY_R2 = "mv_r2"  # per-dimension sums of r_j² (basis mode)
KEY_YY = "mv_yy"  # Gram of the complement coordinates y = c U (complement mode)
KEY_E = "mv_e"
EXPLAINED = 0.9
MAX_COMPONENTS = 32


def _residual_maps(basis: Vec) -> tuple[Vec, Vec, bool]:
    """``(A, B, complement)``: the residual is ``c A B`` (complement) or ``c - c A B``.

    With ``k`` principal directions of ``p``, whichever of the basis and its orthogonal
    complement is thinner gives the cheaper product (2·p·min(k, p-k) per row).
    """
    p, k = basis.shape
    if k <= p - k:
        return basis, np.ascontiguousarray(basis.T), False
    _, vecs = np.linalg.eigh(np.eye(p) - basis @ basis.T)  # eigenvalues 0 (k) then 1 (p - k)
    comp = np.ascontiguousarray(vecs[:, k:])
    return comp, np.ascontiguousarray(comp.T), True


@dataclass(frozen=True)
class PCARecon:
    """Reference side of the reconstruction-error statistic."""

    mean: Vec  # (p,) centre
    basis: Vec  # (p, k) principal directions
    e_mean: float
    e_var: float
    r2_mean: Vec  # (p,)
    r2_var: Vec  # (p,)
    rows: int  # held-out reference rows the error moments come from
    #: read the window's second moments from the covariance statistic's sums of z, z zᵀ
    shared: bool = False

    @cached_property
    def _maps(self) -> tuple[Vec, Vec, bool]:
        return _residual_maps(self.basis)

    @cached_property
    def _proj(self) -> Vec:
        """Π, the projection off the principal subspace."""
        return np.asarray(np.eye(self.mean.size) - self.basis @ self.basis.T)

    @classmethod
    def fit(cls, a: Vec, b: Vec, *, explained: float = EXPLAINED,
            max_components: int = MAX_COMPONENTS) -> PCARecon | None:
        """Basis from rows ``a``, reference error moments from held-out rows ``b``.

        Errors measured on the rows the basis was fitted on are biased low (the fitted
        directions absorb those rows' own noise), by several standard errors of a window
        mean at common sizes; held-out rows give unbiased reference errors (as long as
        they did not shape the encoding either).
        """
        p = a.shape[1]
        if p < 2 or a.shape[0] < 2 or b.shape[0] < 2:
            return None
        mean = a.mean(axis=0)
        c = a - mean
        vals, vecs = np.linalg.eigh(gram(c) / a.shape[0])
        vals, vecs = vals[::-1], vecs[:, ::-1]
        total = float(vals.sum())
        if total <= 0:
            return None
        k = int(np.searchsorted(np.cumsum(vals) / total, explained) + 1)
        k = max(1, min(k, max_components, p - 1))
        basis = np.ascontiguousarray(vecs[:, :k])
        floor = (1e-9 * total) ** 2
        out = cls(mean, basis, 0.0, 1.0, np.zeros(p), np.ones(p), int(b.shape[0]))
        r2 = out._residual2(b)
        e = r2.sum(axis=1)
        return replace(out, e_mean=float(e.mean()), e_var=max(float(e.var()), floor),
                       r2_mean=r2.mean(axis=0), r2_var=np.maximum(r2.var(axis=0), floor))

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "basis": self.basis.tolist(), "e_mean": self.e_mean,
                "e_var": self.e_var, "r2_mean": self.r2_mean.tolist(),
                "r2_var": self.r2_var.tolist(), "rows": self.rows}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], dim: int) -> PCARecon:
        mean = np.asarray(d["mean"], dtype=np.float64)
        basis = np.asarray(d["basis"], dtype=np.float64)
        r2m = np.asarray(d["r2_mean"], dtype=np.float64)
        r2v = np.asarray(d["r2_var"], dtype=np.float64)
        em, ev = number(d["e_mean"], "PCA e_mean"), number(d["e_var"], "PCA e_var")
        arrays = (mean, basis, r2m, r2v)
        if mean.shape != (dim,) or basis.ndim != 2 or basis.shape[0] != dim \
                or not 1 <= basis.shape[1] < dim or r2m.shape != (dim,) or r2v.shape != (dim,) \
                or not all(np.all(np.isfinite(a)) for a in arrays) or not math.isfinite(em) \
                or not (math.isfinite(ev) and ev > 0) or np.any(r2v <= 0):
            raise ValueError("bad PCA reference")
        return cls(mean, np.ascontiguousarray(basis), em, ev, r2m, r2v, ref_rows(d["rows"]))

    # -- streaming ------------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        if self.shared:
            return {}
        a, _, complement = self._maps
        if complement:  # r = y Uᵀ with y = c U: the Gram of y gives every Σ r_j²
            m = a.shape[1]
            return {KEY_YY: ((m, m), "<f8"), KEY_E: ((2,), "<f8")}
        return {KEY_R2: ((self.mean.size,), "<f8"), KEY_E: ((2,), "<f8")}

    def _residual2(self, z: Vec) -> Vec:
        c = z - self.mean
        a, b, complement = self._maps
        proj = matmul(matmul(c, a), b)
        r = proj if complement else c - proj
        return np.asarray(r * r)

    def pane_sums(self, z: Vec) -> dict[str, Vec]:
        if self.shared:
            return {}
        a, _, complement = self._maps
        if complement:
            y = matmul(z - self.mean, a)
            e = np.einsum("ij,ij->i", y, y)
            return {KEY_YY: matmul(np.ascontiguousarray(y.T), y),
                    KEY_E: np.array([e.sum(), e @ e])}
        r2 = self._residual2(z)
        e = r2.sum(axis=1)
        return {KEY_R2: r2.sum(axis=0), KEY_E: np.array([e.sum(), e @ e])}

    def row_moments(self, z: Vec) -> dict[str, NDArray[Any]]:
        e = self._residual2(z).sum(axis=1)
        return {KEY_E: np.column_stack([e, e * e])}  # all the statistic needs

    def recentre(self, z: Vec) -> PCARecon:
        """The same statistic with the error levels of ``z`` as the reference."""
        r2 = self._residual2(z)
        return replace(self, e_mean=float(r2.sum(axis=1).mean()), r2_mean=r2.mean(axis=0))

    def _residual_moments(self, sums: Mapping[str, NDArray[Any]], n: float) -> Vec:
        """``Π M Π`` from the covariance statistic's window sums of z and z zᵀ."""
        s1 = np.asarray(sums[KEY_U], dtype=np.float64)
        s2 = np.asarray(sums[KEY_UU], dtype=np.float64)
        mu = self.mean
        m = s2 - np.outer(mu, s1) - np.outer(s1, mu) + n * np.outer(mu, mu)
        return np.asarray(self._proj @ m @ self._proj)

    def zscore(self, sums: Mapping[str, NDArray[Any]], n: Vec, var_factor: Vec) -> Vec:
        if KEY_E in sums:
            e = np.asarray(sums[KEY_E], dtype=np.float64)[..., 0] / n
        else:
            e = np.trace(self._residual_moments(sums, float(n))) / n
        return np.asarray((e - self.e_mean) / np.sqrt(self.e_var * var_factor))

    def statistic(self, sums: Mapping[str, NDArray[Any]], n: Vec, var_factor: Vec) -> Vec:
        return np.abs(self.zscore(sums, n, var_factor))

    def log_p(self, score: float, var_factor: float, scale: float) -> float:
        return float(normal_two_sided_logsf(score / math.sqrt(scale)))

    def threshold(self, alpha: float, var_factor: float, scale: float) -> float:
        return max_normal_threshold(alpha, 1) * math.sqrt(scale)

    def calibration_value(self, score: Vec, var_factor: float) -> tuple[Vec, float, float]:
        return score**2, 1.0, 1.959963984540054**2

    def contributors(self, sums: Mapping[str, NDArray[Any]], n: int, var_factor: float,
                     alpha: float, names: Sequence[str], sources: Sequence[str],
                     k: int) -> list[Contribution]:
        """Dimensions whose mean squared residual moved the most (standardised)."""
        if KEY_E not in sums:
            r2 = np.diag(self._residual_moments(sums, float(n))) / n
        elif self._maps[2]:  # complement mode
            a = self._maps[0]
            yy = np.asarray(sums[KEY_YY], dtype=np.float64)
            r2 = np.einsum("ij,jk,ik->i", a, yy, a) / n  # diag(U YᵀY Uᵀ)
        else:
            r2 = np.asarray(sums[KEY_R2], dtype=np.float64) / n
        z = (r2 - self.r2_mean) / np.sqrt(self.r2_var * var_factor)
        return top_normal(names, sources, z, "pca_residual", alpha, k)
