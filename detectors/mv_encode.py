"""Encoding of mixed feature rows into one numeric vector for the multivariate statistics.

Numeric features are clipped to the reference's 0.1 % / 99.9 % quantiles (so one wild
value cannot dominate a window's moments) and standardised by the clipped reference mean
and standard deviation; a missing value encodes as the mean (0). Categorical features
enter through a one-hot encoding of their most frequent categories (top ``k``, each with
a reference share between 1 % and 99 %), centred by the reference share. A feature whose
reference missing rate lies in the same range also gets a centred missing indicator.
Every encoded dimension has reference mean 0.

The reference side encodes raw columns; the stream side encodes an ``EventBatch`` with the
bin indices the :class:`~driftline.detectors.binning.Binner` already computed, so
categories are looked up once per event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.mv_json import number, text
from driftline.schemas.models import EventBatch

Vec = NDArray[np.float64]
MIN_SHARE = 0.01  # one-hot categories and missing indicators need this share (and 1 - it)
TOP_CATEGORIES = 8
CLIP_QUANTILE = 0.001


@dataclass(frozen=True)
class NumericInput:
    """A numeric reference column (NaN = missing)."""

    name: str
    values: Vec


@dataclass(frozen=True)
class CategoricalInput:
    """A categorical reference column as codes: index into ``categories``,
    ``len(categories)`` for any other value, -1 for missing."""

    name: str
    codes: NDArray[np.int64]
    categories: tuple[str, ...]


ColumnInput = NumericInput | CategoricalInput


@dataclass(frozen=True)
class Encoding:
    """The encoded dimensions: numeric block, then one-hot dims, then missing indicators."""

    num_names: tuple[str, ...]
    num_lo: Vec
    num_hi: Vec
    num_center: Vec
    num_scale: Vec
    cat_source: tuple[str, ...]  # per one-hot dim: the feature
    cat_value: tuple[str, ...]  # per one-hot dim: the category
    cat_center: Vec
    miss_source: tuple[str, ...]  # per missing-indicator dim: the feature
    miss_center: Vec
    _inv_scale: Vec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inv_scale", 1.0 / self.num_scale)

    @property
    def dim(self) -> int:
        return len(self.num_names) + len(self.cat_source) + len(self.miss_source)

    @property
    def names(self) -> tuple[str, ...]:
        """Readable names of the encoded dimensions: ``f``, ``f=value``, ``f.missing``."""
        return (*self.num_names, *(f"{s}={v}" for s, v in zip(self.cat_source, self.cat_value,
                                                                strict=True)),
                *(f"{s}.missing" for s in self.miss_source))

    @property
    def sources(self) -> tuple[str, ...]:
        """The feature each encoded dimension comes from."""
        return (*self.num_names, *self.cat_source, *self.miss_source)

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": [{"name": n, "lo": float(lo), "hi": float(hi), "center": float(c),
                         "scale": float(s)}
                        for n, lo, hi, c, s in zip(self.num_names, self.num_lo, self.num_hi,
                                                   self.num_center, self.num_scale, strict=True)],
            "onehot": [{"name": n, "category": v, "center": float(c)}
                       for n, v, c in zip(self.cat_source, self.cat_value, self.cat_center,
                                          strict=True)],
            "missing": [{"name": n, "center": float(c)}
                        for n, c in zip(self.miss_source, self.miss_center, strict=True)],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Encoding:
        num, cat, miss = d["numeric"], d["onehot"], d["missing"]
        if not all(isinstance(x, list) and all(isinstance(e, dict) for e in x)
                   for x in (num, cat, miss)):
            raise ValueError("an encoding holds lists of objects")
        enc = cls(
            num_names=tuple(text(e["name"], "encoded feature name") for e in num),
            num_lo=_floats([e["lo"] for e in num]),
            num_hi=_floats([e["hi"] for e in num]),
            num_center=_floats([e["center"] for e in num]),
            num_scale=_floats([e["scale"] for e in num]),
            cat_source=tuple(text(e["name"], "encoded feature name") for e in cat),
            cat_value=tuple(text(e["category"], "encoded category") for e in cat),
            cat_center=_floats([e["center"] for e in cat]),
            miss_source=tuple(text(e["name"], "encoded feature name") for e in miss),
            miss_center=_floats([e["center"] for e in miss]),
        )
        if np.any(enc.num_scale <= 0) or np.any(enc.num_hi < enc.num_lo):
            raise ValueError("numeric encodings need scale > 0 and lo <= hi")
        return enc

    # -- encoding -----------------------------------------------------------------------
    def _assemble(self, num: Vec, cat_codes: Sequence[NDArray[np.bool_]],
                  missing: Sequence[NDArray[np.bool_]]) -> Vec:
        n = num.shape[0]
        out = np.empty((n, self.dim), dtype=np.float64)
        k = len(self.num_names)
        if k:
            x = out[:, :k]
            np.maximum(num, self.num_lo, out=x)  # NaN stays NaN
            np.minimum(x, self.num_hi, out=x)
            x -= self.num_center
            x *= self._inv_scale
            np.copyto(x, 0.0, where=~np.isfinite(num))  # missing (NaN, ±inf) -> the mean
        for i, hot in enumerate(cat_codes):
            out[:, k + i] = hot
            out[:, k + i] -= self.cat_center[i]
        k += len(cat_codes)
        for i, m in enumerate(missing):
            out[:, k + i] = m
            out[:, k + i] -= self.miss_center[i]
        return out

    def encode_columns(self, columns: Mapping[str, ColumnInput]) -> Vec:
        """``(N, dim)`` encoding of reference columns."""
        n = rows_of(next(iter(columns.values())))
        num = np.column_stack([_as_numeric(columns[c]) for c in self.num_names]) \
            if self.num_names else np.zeros((n, 0))
        hot = []
        for src, val in zip(self.cat_source, self.cat_value, strict=True):
            col = columns[src]
            assert isinstance(col, CategoricalInput)
            hot.append(col.codes == col.categories.index(val))
        miss = [_missing(columns[src]) for src in self.miss_source]
        return self._assemble(num, hot, miss)


def _floats(values: Sequence[Any]) -> Vec:
    return np.asarray([number(v, "an encoding parameter") for v in values], dtype=np.float64)


def rows_of(col: ColumnInput) -> int:
    """Number of rows of a reference column."""
    return int(col.values.shape[0] if isinstance(col, NumericInput) else col.codes.shape[0])


def _as_numeric(col: ColumnInput) -> Vec:
    if not isinstance(col, NumericInput):
        raise ValueError(f"column {col.name!r} is not numeric")
    return np.asarray(col.values, dtype=np.float64)


def _missing(col: ColumnInput) -> NDArray[np.bool_]:
    if isinstance(col, NumericInput):
        return np.asarray(~np.isfinite(col.values))
    return np.asarray(col.codes < 0)


def fit_encoding(columns: Sequence[ColumnInput], *, top_k: int = TOP_CATEGORIES) -> Encoding:
    """Choose and fit the encoded dimensions on reference columns."""
    num_names: list[str] = []
    lo: list[float] = []
    hi: list[float] = []
    center: list[float] = []
    scale: list[float] = []
    cat_source: list[str] = []
    cat_value: list[str] = []
    cat_center: list[float] = []
    miss_source: list[str] = []
    miss_center: list[float] = []
    for col in columns:
        missing = _missing(col)
        n = missing.size
        rate = float(missing.mean()) if n else 0.0
        if isinstance(col, NumericInput):
            v = col.values[~missing]
            if v.size >= 2:
                a, b = np.quantile(v, [CLIP_QUANTILE, 1.0 - CLIP_QUANTILE])
                c = np.clip(v, a, b)
                with np.errstate(over="ignore", invalid="ignore"):  # near the float limit:
                    sd, mid = float(c.std()), float(c.mean())  # not encoded (NaN, inf)
                if math.isfinite(sd) and math.isfinite(mid) and sd > 1e-12 * (abs(mid) + 1.0):
                    num_names.append(col.name)
                    lo.append(float(a))
                    hi.append(float(b))
                    center.append(mid)
                    scale.append(sd)
        else:
            counts = np.bincount(col.codes[col.codes >= 0], minlength=len(col.categories) + 1)
            shares = counts[: len(col.categories)] / max(n, 1)
            ranked = sorted(range(len(col.categories)), key=lambda i: (-counts[i], i))
            for i in ranked[:top_k]:
                if MIN_SHARE <= shares[i] <= 1.0 - MIN_SHARE:
                    cat_source.append(col.name)
                    cat_value.append(col.categories[i])
                    cat_center.append(float(shares[i]))
        if MIN_SHARE <= rate <= 1.0 - MIN_SHARE:
            miss_source.append(col.name)
            miss_center.append(rate)
    return Encoding(
        tuple(num_names), np.asarray(lo), np.asarray(hi), np.asarray(center), np.asarray(scale),
        tuple(cat_source), tuple(cat_value), np.asarray(cat_center), tuple(miss_source),
        np.asarray(miss_center),
    )


class BatchEncoder:
    """Encodes :class:`EventBatch` rows with the bins the Binner computed for them."""

    def __init__(self, encoding: Encoding, layout_names: Sequence[str],
                 categories: Mapping[str, tuple[str, ...]], missing_bin: int) -> None:
        self.encoding = encoding
        col = {name: j for j, name in enumerate(layout_names)}
        try:
            self._cat = [(col[s], categories[s].index(v))
                         for s, v in zip(encoding.cat_source, encoding.cat_value, strict=True)]
            self._miss = [col[s] for s in encoding.miss_source]
            unknown = [name for name in encoding.num_names if name not in col]
            if unknown:
                raise KeyError(f"features not in the profile: {unknown}")
        except (KeyError, ValueError) as exc:
            raise ValueError(f"encoding does not fit the profile: {exc!r}") from None
        self._missing_bin = missing_bin

        self._names: tuple[str, ...] | None = None  # the last batch layout seen ...
        self._pos: list[int] = []  # ... and where the numeric features sit in it

    def encode(self, batch: EventBatch, bins: NDArray[np.int64],
               rows: NDArray[np.int64] | None = None) -> Vec:
        """``(n, dim)`` encoding of a batch's ``rows`` (all by default; ``bins`` from
        ``Binner.bins(batch)``)."""
        enc = self.encoding
        if batch.feature_names is not self._names:
            index = {name: i for i, name in enumerate(batch.feature_names)}
            self._pos = [index.get(name, -1) for name in enc.num_names]
            self._names = batch.feature_names
        pos = self._pos
        sel: slice | NDArray[np.int64] = slice(None)
        if rows is not None:  # consecutive rows (count panes) select without a copy
            contiguous = rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size
            sel = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
        numeric, codes = batch.numeric[sel], bins[sel]
        if pos == list(range(len(pos))):
            num = numeric[:, : len(pos)]  # the usual case: no copy
        elif all(p >= 0 for p in pos):
            num = numeric[:, pos]
        else:
            num = np.full((numeric.shape[0], len(pos)), np.nan)
            for k, p in enumerate(pos):
                if p >= 0:
                    num[:, k] = numeric[:, p]
        hot = [codes[:, j] == code for j, code in self._cat]
        miss = [codes[:, j] == self._missing_bin for j in self._miss]
        return enc._assemble(num, hot, miss)
