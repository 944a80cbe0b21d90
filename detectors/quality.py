"""Data quality against the reference (TFDV-style), as pane-additive counters.

Per feature, every window counts four things and compares their rates with the
reference's own:

- ``missing_rate``: null or absent values, of all events;
- ``type_mismatch_rate``: a numeric feature receiving strings or bools, or a categorical
  feature receiving numbers when none of its reference categories is a number, of all events;
- ``unseen_category_rate``: categorical values outside the reference's kept categories,
  of the feature's present values;
- ``out_of_range_rate``: numbers outside the reference ``[min, max]`` widened by
  ``range_tolerance`` of its span, of the feature's present values.

Each (feature, metric) is a one-sided two-proportion test of the window rate against the
reference rate (both are samples), joined to the monitor's family of tests so that the
quality checks spend the same false-alarm budget as the drift tests. A test can only
reject when the window rate also exceeds the reference rate by ``min_increase``: tiny
but significant changes are not worth an alert.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

try:  # built from detectors/_kernels.c when the package is installed with a C compiler
    from driftline.detectors import _kernels
except ImportError:  # pragma: no cover - exercised by installs without a compiler
    _kernels = None  # type: ignore[assignment]
from driftline.detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile
from driftline.schemas.models import EventBatch

METRICS = ("missing_rate", "type_mismatch_rate", "unseen_category_rate", "out_of_range_rate")
MISSING, MISMATCH, UNSEEN, OUT_OF_RANGE = range(4)
DETECTOR = "data_quality"


@dataclass(frozen=True)
class QualityConfig:
    """Data-quality and confidence-spike checks of one model."""

    enabled: bool = True
    min_increase: float = 0.02  # absolute floor: window rate minus reference rate
    range_tolerance: float = 0.05  # share of the reference span allowed beyond min/max
    confidence: bool = True  # high-confidence share of the predictions (kind "prediction")
    confidence_threshold: float = 0.9  # a prediction is confident at score >= this
    confidence_min_increase: float = 0.05  # absolute floor of the share's rise
    confidence_baseline_events: int = 5000  # learned baseline when the reference has no scores

    def __post_init__(self) -> None:
        for name in ("enabled", "confidence"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        for name in ("min_increase", "range_tolerance", "confidence_threshold",
                     "confidence_min_increase"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {v!r}")
        v = self.confidence_baseline_events
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 2**40:
            raise ValueError(f"confidence_baseline_events must be a positive integer, not {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def increase_p_values(k: NDArray[np.float64], n: NDArray[np.float64], k_ref: NDArray[np.float64],
                      n_ref: NDArray[np.float64]) -> NDArray[np.float64]:
    """One-sided p-values of "the window rate k/n exceeds the reference rate k_ref/n_ref"
    (two-proportion z-test, pooled variance); 1.0 where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = k / n
        ref = k_ref / n_ref
        pooled = (k + k_ref) / (n + n_ref)
        se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n + 1.0 / n_ref))
        z = (rate - ref) / se
    p = special.ndtr(-z)
    ok = (n > 0) & (n_ref > 0) & np.isfinite(p)
    return np.asarray(np.where(ok, p, 1.0), dtype=np.float64)


def increase_p_value(k: float, n: float, k_ref: float, n_ref: float) -> float:
    """:func:`increase_p_values` of one rate, in floats (the same operations, the same
    result, without the arrays' overhead: a confidence check runs it at every window)."""
    if not (n > 0 and n_ref > 0):
        return 1.0
    rate, ref = k / n, k_ref / n_ref
    pooled = (k + k_ref) / (n + n_ref)
    var = pooled * (1.0 - pooled) * (1.0 / n + 1.0 / n_ref)
    if not var >= 0.0:  # NaN (or a negative rounding residue): as numpy's sqrt, no test
        return 1.0
    diff = rate - ref
    se = math.sqrt(var)
    if se == 0.0:  # numpy's division: +-inf, or NaN for 0 / 0
        z = math.copysign(math.inf, diff) if diff else math.nan
    else:
        z = diff / se
    p = float(special.ndtr(-z))
    return p if math.isfinite(p) else 1.0


@dataclass(frozen=True)
class QualityEvaluation:
    """The window's quality rates and their tests, per feature and metric."""

    names: tuple[str, ...]
    rate: NDArray[np.float64]  # (F, 4) window rates (NaN when not applicable / no data)
    reference_rate: NDArray[np.float64]  # (F, 4)
    p_value: NDArray[np.float64]  # (F, 4) 1.0 below the floor, NaN when not applicable
    applicable: NDArray[np.bool_]  # (F, 4)
    drift: NDArray[np.bool_]  # (F, 4) set by the monitor's family decision

    @property
    def tests(self) -> NDArray[np.float64]:
        """The applicable p-values, flat (their place in the monitor's family)."""
        return np.asarray(self.p_value[self.applicable], dtype=np.float64)

    def with_decisions(self, decided: NDArray[np.bool_]) -> QualityEvaluation:
        drift = np.zeros(self.applicable.shape, dtype=bool)
        drift[self.applicable] = decided
        return QualityEvaluation(self.names, self.rate, self.reference_rate, self.p_value,
                                 self.applicable, drift)

    def findings(self) -> list[tuple[int, int]]:
        """(feature, metric) pairs that rejected, strongest first."""
        hits = [(int(j), int(m)) for j, m in zip(*np.nonzero(self.drift), strict=True)]
        return sorted(hits, key=lambda h: (self.p_value[h], -self.rate[h]))

    def ranked(self) -> list[tuple[int, int]]:
        """Every applicable (feature, metric), smallest p-value first."""
        cells = [(int(j), int(m)) for j, m in zip(*np.nonzero(self.applicable), strict=True)]
        return sorted(cells, key=lambda h: (self.p_value[h], -self.rate[h]))


class DataQuality:
    """The reference side of the quality checks, and the per-row counting."""

    def __init__(self, reference: ReferenceProfile, missing_bin: int,
                 config: QualityConfig | None = None) -> None:
        self.config = cfg = config or QualityConfig()
        cols = reference.columns
        f = len(cols)
        self.names = tuple(c.name for c in cols)
        self.missing_bin = missing_bin
        self.numeric = np.asarray([isinstance(c, NumericProfile) for c in cols], dtype=bool)
        lo = np.full(f, -np.inf)
        hi = np.full(f, np.inf)
        other = np.full(f, -1, dtype=np.int64)
        numbers_ok = np.zeros(f, dtype=bool)  # categorical columns whose categories are numbers
        k_ref = np.zeros((f, 4))
        n_ref = np.zeros((f, 4))
        for j, c in enumerate(cols):
            present = float(c.counts.sum())
            total = present + c.missing
            k_ref[j, MISSING], n_ref[j, MISSING] = c.missing, total
            n_ref[j, MISMATCH] = total  # reference columns are typed: no mismatches
            if isinstance(c, NumericProfile):
                if present > 0:
                    span = (c.max - c.min) * cfg.range_tolerance
                    lo[j], hi[j] = c.min - span, c.max + span
                n_ref[j, OUT_OF_RANGE] = present
            elif isinstance(c, CategoricalProfile):
                other[j] = len(c.categories)
                numbers_ok[j] = any(_is_number(t) for t in c.categories)
                # the held-out estimate: counts[-1] is biased low (see CategoricalProfile)
                unseen = float(c.counts[-1]) if c.unseen_rate is None else max(
                    c.unseen_rate * present, float(c.counts[-1]))
                k_ref[j, UNSEEN], n_ref[j, UNSEEN] = unseen, present
        self.lo, self.hi, self.other, self.numbers_ok = lo, hi, other, numbers_ok
        self.k_ref, self.n_ref = k_ref, n_ref
        app = np.ones((f, 4), dtype=bool)
        app[:, UNSEEN] = ~self.numeric
        app[:, OUT_OF_RANGE] = self.numeric & np.isfinite(lo)
        app[:, MISMATCH] = self.numeric | ~numbers_ok
        app &= n_ref > 0
        self.applicable = app
        with np.errstate(divide="ignore", invalid="ignore"):
            self._ref_rate = np.where(app, k_ref / n_ref, np.nan)  # what evaluate compares with
        self._ref_rate.flags.writeable = False  # shared by every evaluation
        self._names_seen: tuple[str, ...] | None = None
        self._where = np.zeros(0, dtype=np.int64)
        self._have = np.zeros(0, dtype=bool)
        self._in_order = False  # the batch's features are the reference's, in its order
        self._cats = np.flatnonzero(~self.numeric & ~numbers_ok)  # numbers are mismatches
        self._any_numeric = bool(self.numeric.any())

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"quality": ((len(self.names), 4), "<i8")}

    def flags(self, batch: EventBatch, bins: NDArray[np.int64]) -> RowFlags:
        """Per-row flags of the batch (``bins`` from the monitor's binner), rows last, so
        that summing a pane's rows is a contiguous reduction. When no value of the batch
        can be a type mismatch (no strings in numeric features, no categorical feature
        whose categories are all text), a row is missing or unseen exactly when its bin is
        the missing bin or the "other" bin: those two counts are then read off the pane's
        histogram, and out-of-range values are counted over each pane's rows
        (:meth:`sums`): no per-row flags at all."""
        n, f = len(batch), len(self.names)
        if batch.feature_names != self._names_seen:
            index = {name: i for i, name in enumerate(batch.feature_names)}
            self._where = np.asarray([index.get(name, -1) for name in self.names], dtype=np.int64)
            self._have = self._where >= 0
            self._in_order = bool(self._have.all()) and np.array_equal(
                self._where, np.arange(len(batch.feature_names)))
            self._names_seen = batch.feature_names
        where, have = self._where, self._have
        if self._in_order and batch.numeric.shape[1] == f:
            num = batch.numeric  # the common case: the reference's features, in its order
        else:
            num = np.full((n, f), np.nan)
            num[:, have] = batch.numeric[:, where[have]]
        cats = self._cats
        if (batch.text is None or not self._any_numeric) and not cats.size:
            return RowFlags(None, num)  # no mismatch possible
        with np.errstate(invalid="ignore"):  # NaN compares False; lo/hi are +-inf if unused
            oor = ((num < self.lo) | (num > self.hi)).T
        # computed row-major like the inputs, stored rows-last (one transposing copy each)
        out = np.empty((4, f, n), dtype=bool)
        b = bins[:, :f]
        mismatch = np.zeros((n, f), dtype=bool)
        if batch.text is not None and self._any_numeric:
            cols = np.flatnonzero(have & self.numeric)
            mismatch[:, cols] = is_set(batch.text[:, where[cols]])
        if cats.size:
            mismatch[:, cats] = np.isfinite(num[:, cats])
        out[MISMATCH] = mismatch.T
        out[MISSING] = ((b == self.missing_bin) & ~mismatch).T
        out[UNSEEN] = ((b == self.other) & ~mismatch).T
        out[OUT_OF_RANGE] = oor
        return RowFlags(out, num)

    def sums(self, flags: RowFlags, rows: NDArray[np.int64],
             hist: NDArray[np.int64]) -> NDArray[np.int64]:
        """``(F, 4)`` counts of some rows (pane-additive); ``hist``: those rows' histogram
        (the monitor's, ``(columns, bins)``, the features first)."""
        if flags.all is not None:
            return _row_sums(flags.all, rows).T
        f = len(self.names)
        out = np.zeros((f, 4), dtype=np.int64)
        out[:, OUT_OF_RANGE] = self._out_of_range(flags.values, rows)
        out[:, MISSING] = hist[:f, self.missing_bin]
        cat = self.other >= 0
        out[cat, UNSEEN] = hist[:f][cat, self.other[cat]]
        return out

    def _out_of_range(self, num: NDArray[np.float64], rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """Per feature, how many of ``rows`` are below ``lo`` or above ``hi`` (NaN is
        neither): one compiled pass over those rows, else numpy."""
        f = len(self.names)
        if _kernels is not None and num.dtype == np.float64 and num.shape[1] == f:
            counts = np.zeros(f, dtype=np.int64)
            _kernels.range_counts(np.ascontiguousarray(num), self.lo, self.hi,
                                  np.ascontiguousarray(rows, dtype=np.int64), counts,
                                  num.shape[0], f)
            return counts
        part = num[rows]
        with np.errstate(invalid="ignore"):
            return np.asarray(((part < self.lo) | (part > self.hi)).sum(axis=0, dtype=np.int64))

    def evaluate(self, counts: NDArray[Any], n: int) -> QualityEvaluation:
        """Rates and p-values of a window of ``n`` events with these counts."""
        k = np.asarray(counts, dtype=np.float64)
        present = n - k[:, MISSING] - k[:, MISMATCH]
        den = np.empty_like(k)
        den[:, MISSING] = den[:, MISMATCH] = n
        den[:, UNSEEN] = den[:, OUT_OF_RANGE] = present
        ref_rate = self._ref_rate
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(self.applicable & (den > 0), k / den, np.nan)
            p = increase_p_values(k, den, self.k_ref, self.n_ref)
            p[~(rate - ref_rate >= self.config.min_increase)] = 1.0
        p[~self.applicable] = np.nan
        return QualityEvaluation(self.names, rate, ref_rate, p, self.applicable,
                                 np.zeros(self.applicable.shape, dtype=bool))


@dataclass(frozen=True)
class RowFlags:
    """Per-row quality flags of a batch: all four ``(4, F, n)``, or (when no value can be
    a type mismatch) None, the counts being taken per pane (missing and unseen from the
    histogram, out-of-range from ``values``); ``values``: the batch's numbers ``(n, F)``
    in the reference's feature order."""

    all: NDArray[np.bool_] | None
    values: NDArray[np.float64]


def _row_sums(flags: NDArray[np.bool_], rows: NDArray[np.int64]) -> NDArray[np.int64]:
    """Sums over the last axis at ``rows`` (a contiguous slice when they are one run)."""
    part = flags[..., rows[0] : rows[-1] + 1] if rows[-1] - rows[0] + 1 == rows.size \
        else flags[..., rows]
    return np.asarray(part.view(np.uint8).sum(axis=-1, dtype=np.int64))


def is_set(values: NDArray[Any]) -> NDArray[np.bool_]:
    """Elementwise ``is not None`` of an object array (one C-level comparison pass)."""
    return np.asarray(values != None, dtype=bool)  # noqa: E711


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
