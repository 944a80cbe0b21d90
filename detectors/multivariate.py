"""Multivariate drift statistics that ride the pane ring, calibrated with the per-feature tests.

Three statistics on the encoded rows (see :mod:`~driftline.detectors.mv_encode`):

- ``mmd_rff``: kernel MMD² of the window's mean embedding (random Fourier features,
  :mod:`~driftline.detectors.mv_rff`), explained by the encoded features whose window
  mean moved the most (``mean_shift``);
- ``covariance``: largest standardised change of a cross-feature covariance
  (:mod:`~driftline.detectors.mv_cov`), explained by the pairs that changed the most;
- ``pca_recon``: mean PCA reconstruction error (:mod:`~driftline.detectors.mv_pca`),
  explained by the features that left the principal subspace.

Each pane keeps sums only (pane-additive, evicted with the ring), so an evaluation costs
O(D + q² + p) whatever the window length. Each statistic's p-value comes from the
Gaussian law of a window mean with the reference's (co)variance scaled by ``1/n + 1/N``;
when the profile is built, the statistics of windows bootstrapped from the reference rows
check that law, and a statistic whose bootstrap exceeds its nominal 5 % tail by more than
sampling noise is deflated by the measured factor (``scale``), like the chi-square columns.
The p-values then join the per-column chi-square p-values in one Bonferroni / BH family
(:meth:`Calibration.decide`), so the false-alarm target holds for all tests together.

The reference side lives in ``ReferenceProfile.multivariate`` (plain JSON); random
weights are regenerated from their seed and checked by fingerprint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.mv_blas import matmul, rows_per_block
from driftline.detectors.mv_cov import KEY_U as mv_cov_u
from driftline.detectors.mv_cov import KEY_UU as mv_cov_uu
from driftline.detectors.mv_cov import CovarianceDrift
from driftline.detectors.mv_encode import (
    ColumnInput,
    Encoding,
    NumericInput,
    fit_encoding,
    rows_of,
)
from driftline.detectors.mv_json import number
from driftline.detectors.mv_null import Contribution, ref_rows, top_normal
from driftline.detectors.mv_pca import KEY_E as mv_pca_e
from driftline.detectors.mv_pca import PCARecon
from driftline.detectors.mv_rff import DEFAULT_D, RFFMMD
from driftline.detectors.mv_rff import KEY as mv_rff_key

Vec = NDArray[np.float64]
VERSION = 1
KEY_Z = "mv_z"
MIN_ROWS = 200  # smaller references get no multivariate statistics
FIT_ROWS = 50_000  # rows used to fit (a seeded subsample beyond)
POOL = 5_000  # rows for the RFF covariance spectrum and the calibration bootstrap
BOOT_ROUNDS = 150
CAL_WINDOW = 5_000  # bootstrap window size (the default window: 5 panes of 1,000)
NAMES = ("mmd_rff", "covariance", "pca_recon")


class Statistic(Protocol):
    """What the model needs of one statistic's reference side."""

    @property
    def rows(self) -> int: ...  # reference rows behind the statistic's reference moments

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]: ...

    def pane_sums(self, z: Vec) -> Mapping[str, NDArray[Any]]: ...

    def row_moments(self, z: Vec) -> Mapping[str, NDArray[Any]]: ...

    def recentre(self, z: Vec) -> Statistic: ...

    def statistic(self, sums: Mapping[str, NDArray[Any]], n: Vec, var_factor: Vec) -> Vec: ...

    def log_p(self, score: float, var_factor: float, scale: float) -> float: ...

    def threshold(self, alpha: float, var_factor: float, scale: float) -> float: ...

    def calibration_value(self, score: Vec, var_factor: float) -> tuple[Vec, float, float]: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class MultivariateModel:
    """Encoding, the three statistics' reference sides and their bootstrap scales."""

    encoding: Encoding
    n_ref: int  # reference rows the statistics were fitted on
    dim_mean: Vec
    dim_var: Vec
    statistics: tuple[tuple[str, Statistic], ...]
    scale: tuple[float, ...]
    calibration: dict[str, Any] = field(default_factory=dict)
    # derived once (the hot path asks for them at every pane)
    names: tuple[str, ...] = field(init=False, compare=False)
    _shapes: dict[str, tuple[tuple[int, ...], str]] = field(init=False, repr=False, compare=False)
    _chunk: int = field(init=False, repr=False, compare=False)
    #: thresholds by (level, window size): both rarely change between evaluations
    _thresholds: dict[tuple[float, int], Vec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the covariance sums of z and z zᵀ (when not projected) also give Σz for the
        # mean-shift explanation and the PCA's reconstruction errors
        if self.z_key != KEY_Z:
            object.__setattr__(self, "statistics", tuple(
                (name, replace(stat, shared=True) if isinstance(stat, PCARecon) else stat)
                for name, stat in self.statistics))
        shapes: dict[str, tuple[tuple[int, ...], str]] = {}
        if self.z_key == KEY_Z:
            shapes[KEY_Z] = ((self.encoding.dim,), "<f8")
        # rows per block on the hot path, so that every product stays on one BLAS thread
        # (the RFF map, the widest, splits its blocks further itself)
        widths = [self.encoding.dim]
        for _, stat in self.statistics:
            shapes.update(stat.shapes())
            if isinstance(stat, CovarianceDrift):
                widths.append(max(stat.dim**2, self.encoding.dim * stat.dim))
            elif isinstance(stat, PCARecon):
                widths.append(stat.basis.size)
        object.__setattr__(self, "names", tuple(name for name, _ in self.statistics))
        object.__setattr__(self, "_shapes", shapes)
        object.__setattr__(self, "_chunk", rows_per_block(max(widths), low=256))
        object.__setattr__(self, "_thresholds", {})

    # -- fitting ------------------------------------------------------------------------
    @classmethod
    def fit(cls, columns: Sequence[ColumnInput], *, seed: int = 0, d: int = DEFAULT_D,
            rounds: int = BOOT_ROUNDS, window: int = CAL_WINDOW) -> MultivariateModel | None:
        """Fit on reference columns; None when there is too little to be multivariate about."""
        if not columns:
            return None
        n = rows_of(columns[0])
        if n < MIN_ROWS:
            return None
        rng = np.random.default_rng(seed)
        keep = np.arange(n) if n <= FIT_ROWS else np.sort(rng.choice(n, FIT_ROWS, replace=False))
        # one half fits the encoding and the PCA basis, the other half gives the PCA's
        # reference errors: errors of rows that shaped the basis (or the standardisation
        # the basis was found in) are biased, by several standard errors of a window mean
        perm = rng.permutation(keep.size)
        half_a = np.sort(perm[: keep.size // 2])
        half_b = np.sort(perm[keep.size // 2 :])
        enc = fit_encoding([_subset(c, keep[half_a]) for c in columns])
        if enc.dim < 2 or len(set(enc.sources)) < 2:
            return None
        z = enc.encode_columns({c.name: _subset(c, keep) for c in columns})
        stats: list[tuple[str, Statistic]] = [
            ("mmd_rff", RFFMMD.fit(z, d=d, seed=seed, cov_rows=POOL))]
        cov = CovarianceDrift.fit(z, enc.names, enc.sources, seed=seed)
        if cov is not None:
            stats.append(("covariance", cov))
        pca = PCARecon.fit(z[half_a], z[half_b])
        if pca is not None:
            stats.append(("pca_recon", pca))
        model = cls(enc, int(z.shape[0]), z.mean(axis=0), np.maximum(z.var(axis=0), 1e-300),
                    tuple(stats), tuple(1.0 for _ in stats))
        return model._bootstrap(z[half_b], rounds=rounds, window=window, seed=seed)

    def _bootstrap(self, z: Vec, *, rounds: int, window: int, seed: int) -> MultivariateModel:
        """Check each statistic's null law on windows resampled from reference rows ``z``
        (the held-out half: rows that shaped neither the encoding nor the PCA basis)."""
        if rounds < 20:
            return replace(self, calibration={"method": "none"})
        rng = np.random.default_rng(seed + 3)
        pool = z if z.shape[0] <= POOL else z[np.sort(rng.choice(z.shape[0], POOL, replace=False))]
        n_cal = int(min(window, z.shape[0]))
        counts = rng.multinomial(n_cal, np.full(pool.shape[0], 1.0 / pool.shape[0]),
                                 size=rounds).astype(np.float32)
        n = np.full(rounds, float(n_cal))
        vf = 1.0 / n_cal
        scales: list[float] = []
        exceed: dict[str, float] = {}
        for name, stat in self.statistics:
            centred = stat.recentre(pool)  # bootstrap windows vary around the pool's moments
            sums = {k: matmul(counts, np.ascontiguousarray(m.reshape(m.shape[0], -1),
                                                          dtype=np.float32))
                    .reshape(rounds, *m.shape[1:])
                    for k, m in centred.row_moments(pool).items()}
            x, mean, q95 = centred.calibration_value(
                centred.statistic(sums, n, np.full(rounds, vf)), vf)
            rate = float(np.mean(x > q95))
            tail = float(np.quantile(x, 0.95) / q95) \
                if rate > 0.05 + 2.0 * math.sqrt(0.05 * 0.95 / rounds) else 1.0
            ratio = 1.0
            if math.isfinite(mean) and mean > 0:
                r, se = float(x.mean() / mean), float(x.std() / math.sqrt(rounds) / mean)
                ratio = r if r > 1.0 + 2.0 * se else 1.0
            scales.append(float(min(max(tail, ratio, 1.0), 5.0)))
            exceed[name] = rate
        return replace(self, scale=tuple(scales), calibration={
            "method": "bootstrap", "window": n_cal, "rounds": rounds, "pool": int(pool.shape[0]),
            "exceed_5pct": exceed})

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "rows": self.n_ref,
            "encoding": self.encoding.to_dict(),
            "dims": {"mean": self.dim_mean.tolist(), "var": self.dim_var.tolist()},
            "statistics": {name: {**stat.to_dict(), "scale": s}
                           for (name, stat), s in zip(self.statistics, self.scale, strict=True)},
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultivariateModel:
        """Inverse of :meth:`to_dict`; raises ValueError on anything malformed."""
        try:
            if d["version"] != VERSION:
                raise ValueError(f"unknown multivariate profile version {d['version']!r}")
            n_ref = ref_rows(d["rows"])
            enc = Encoding.from_dict(d["encoding"])
            p = enc.dim
            mean = np.asarray(d["dims"]["mean"], dtype=np.float64)
            var = np.asarray(d["dims"]["var"], dtype=np.float64)
            if mean.shape != (p,) or var.shape != (p,) or not np.all(np.isfinite(mean)) \
                    or not np.all(np.isfinite(var)) or np.any(var <= 0):
                raise ValueError("bad encoded dimension moments")
            loaders: dict[str, Any] = {"mmd_rff": RFFMMD, "covariance": CovarianceDrift,
                                       "pca_recon": PCARecon}
            specs = d["statistics"]
            if not specs or any(name not in loaders for name in specs):
                raise ValueError(f"multivariate statistics must be some of {NAMES}")
            stats: list[tuple[str, Statistic]] = []
            scales: list[float] = []
            for name in (n for n in NAMES if n in specs):
                s = number(specs[name]["scale"], "statistic scale")
                if not 1.0 <= s <= 5.0:
                    raise ValueError("scale must be within [1, 5]")
                stats.append((name, loaders[name].from_dict(specs[name], p)))
                scales.append(s)
            cal = d.get("calibration") or {}
            if not isinstance(cal, dict):
                raise ValueError("calibration must be an object")
            return cls(enc, n_ref, mean, var, tuple(stats), tuple(scales), dict(cal))
        except (KeyError, TypeError, AttributeError, IndexError, OverflowError,
                RecursionError) as exc:  # never repr() a hostile value: it may nest deeply
            raise ValueError(f"malformed multivariate profile: {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from None

    # -- streaming ------------------------------------------------------------------------
    @property
    def z_key(self) -> str:
        """The pane sum that holds Σz."""
        for _, stat in self.statistics:
            if isinstance(stat, CovarianceDrift) and stat.proj is None:
                return mv_cov_u
        return KEY_Z

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype) of every pane sum."""
        return dict(self._shapes)

    def row_bounds(self) -> dict[str, float]:
        """Largest magnitude any one row can add to each pane sum (encoded rows are bounded:
        numeric features are clipped, indicators are 0/1); a snapshot whose sums exceed
        ``n`` times these is corrupt."""
        enc = self.encoding
        reach = np.concatenate([np.maximum(np.abs(enc.num_lo - enc.num_center),
                                           np.abs(enc.num_hi - enc.num_center)) / enc.num_scale,
                                np.ones(len(enc.cat_source) + len(enc.miss_source))])
        length = float(np.sqrt((reach**2).sum())) + 1.0  # |z| (+ slack for rounding)
        out = {KEY_Z: length} if KEY_Z in self._shapes else {}
        for _, stat in self.statistics:
            if isinstance(stat, RFFMMD):
                out[mv_rff_key] = 1.0 + 1e-6
            elif isinstance(stat, CovarianceDrift):
                u = length * (1.0 if stat.proj is None else float(np.linalg.norm(stat.proj)))
                out.update({mv_cov_u: u, mv_cov_uu: u * u})
            elif isinstance(stat, PCARecon):
                r = (length + float(np.linalg.norm(stat.mean))) ** 2
                out.update({k: r * r if k == mv_pca_e else r for k in stat.shapes()})
        return out

    @property
    def block_rows(self) -> int:
        """Rows per block on the hot path: every product stays on one BLAS thread, and the
        encoded block (float64) stays near 64 KiB, below the size numpy gets from fresh
        memory-mapped pages (whose page faults would cost more than the statistics)."""
        return max(16, min(self._chunk, 8192 // max(self.encoding.dim, 1)))

    def pane_sums(self, z: Vec) -> dict[str, NDArray[Any]]:
        """Pane-additive sums of encoded rows."""
        step = self.block_rows
        return self.block_sums(z[k : k + step] for k in range(0, max(z.shape[0], 1), step))

    def block_sums(self, blocks: Iterable[Vec]) -> dict[str, NDArray[Any]]:
        """Pane-additive sums over blocks of encoded rows (of at most ``block_rows``)."""
        out: dict[str, NDArray[Any]] = {}
        first = True
        for block in blocks:
            parts: list[Mapping[str, NDArray[Any]]] = [stat.pane_sums(block)
                                                       for _, stat in self.statistics]
            if KEY_Z in self._shapes:
                parts.append({KEY_Z: block.sum(axis=0)})
            for part in parts:
                for key, v in part.items():
                    if first:
                        out[key] = v  # a new array of the block's sums
                    else:
                        out[key] += v
            first = False
        if first:
            out = {k: np.zeros(s) for k, (s, _) in self._shapes.items()}
        return out

    def evaluate(self, sums: Mapping[str, NDArray[Any]], n: int) -> MVEvaluation:
        """Scores and p-values of a window with sums ``sums`` over ``n`` events."""
        k = len(self.statistics)
        if n <= 0:
            nan = np.full(k, np.nan)
            return MVEvaluation(self.names, nan, nan.copy(), nan.copy(), np.zeros(k, bool),
                                0.0, self, sums, n, nan.copy())
        nn = np.asarray(float(n))
        vf = np.asarray([1.0 / n + 1.0 / stat.rows for _, stat in self.statistics])
        score = np.empty(k)
        p = np.empty(k)
        for i, ((_, stat), s) in enumerate(zip(self.statistics, self.scale, strict=True)):
            score[i] = float(stat.statistic(sums, nn, vf[i]))
            p[i] = math.exp(stat.log_p(score[i], float(vf[i]), s)) \
                if math.isfinite(score[i]) else math.nan
        return MVEvaluation(self.names, score, p, np.full(k, np.nan), np.zeros(k, bool), 0.0,
                            self, sums, n, vf)


def _subset(col: ColumnInput, keep: NDArray[np.int64]) -> ColumnInput:
    if isinstance(col, NumericInput):
        return replace(col, values=col.values[keep])
    return replace(col, codes=col.codes[keep])


@dataclass(frozen=True)
class MVEvaluation:
    """The multivariate statistics of one window; ``threshold``/``drift`` once decided."""

    names: tuple[str, ...]
    score: Vec
    p_value: Vec
    threshold: Vec
    drift: NDArray[np.bool_]
    alpha: float  # per-test level the thresholds are for
    model: MultivariateModel = field(repr=False, compare=False)
    sums: Mapping[str, NDArray[Any]] = field(repr=False, compare=False)
    n: int = 0
    var_factor: Vec = field(default_factory=lambda: np.zeros(0))  # 1/n + 1/N per statistic

    def decided(self, drift: NDArray[np.bool_], alpha: float) -> MVEvaluation:
        """With the family's decisions and the thresholds at per-test level ``alpha``."""
        cache = self.model._thresholds
        thr = cache.get((alpha, self.n))
        if thr is None:
            thr = np.asarray([stat.threshold(alpha, float(vf), s) if self.n > 0 else math.nan
                              for (_, stat), s, vf in zip(self.model.statistics, self.model.scale,
                                                          self.var_factor, strict=True)])
            if len(cache) > 64:
                cache.clear()
            cache[(alpha, self.n)] = thr
        return MVEvaluation(self.names, self.score, self.p_value, thr,
                            np.asarray(drift, dtype=bool), alpha, self.model, self.sums, self.n,
                            self.var_factor)

    def contributors(self, i: int, k: int = 3) -> list[Contribution]:
        """What explains statistic ``i``: encoded features (mean shift, residual) or pairs."""
        if self.n <= 0:
            return []
        stat = self.model.statistics[i][1]
        enc = self.model.encoding
        a = self.alpha if self.alpha > 0 else 0.05
        vf = float(self.var_factor[i])
        if isinstance(stat, CovarianceDrift):
            return stat.contributors(self.sums, self.n, vf, a, self.model.scale[i], k)
        if isinstance(stat, PCARecon):
            return stat.contributors(self.sums, self.n, vf, a, enc.names, enc.sources, k)
        shift = (np.asarray(self.sums[self.model.z_key]) / self.n - self.model.dim_mean) / np.sqrt(
            self.model.dim_var * (1.0 / self.n + 1.0 / self.model.n_ref))
        return top_normal(enc.names, enc.sources, shift, "mean_shift", a, k)

    def to_dicts(self, k: int = 3) -> list[dict[str, Any]]:
        """JSON-able rows: every statistic with score, threshold, p-value and explanation."""
        return [{"name": n, "kind": "data", "drift": bool(self.drift[i]),
                 "score": _num(self.score[i]), "threshold": _num(self.threshold[i]),
                 "p_value": _num(self.p_value[i]),
                 "top": [{"name": c.name, "statistic": c.statistic, "score": _num(c.score),
                          "threshold": _num(c.threshold), "p_value": _num(c.p_value)}
                         for c in self.contributors(i, k)]}
                for i, n in enumerate(self.names)]


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
