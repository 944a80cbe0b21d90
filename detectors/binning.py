"""Map a columnar batch onto the reference's bins, for every profiled column at once.

Columns are the reference features followed by the prediction (when profiled). Every
column gets ``width`` bins: its value bins first, unused padding, and the last bin for
missing values, so histograms of all columns stack into one ``(columns, width)`` array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.reference import (
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    ReferenceProfile,
)
from driftline.schemas.models import EventBatch


@dataclass(frozen=True)
class ColumnLayout:
    """Where each profiled column sits and what kind of drift it signals."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]  # "data" for features, "prediction" for the model output
    numeric: NDArray[np.bool_]  # (C,) numeric columns (ordered bins)
    n_bins: NDArray[np.int64]  # (C,) value bins per column (missing bin excluded)
    width: int  # bins per column incl. padding and the final missing bin
    ref_counts: NDArray[np.int64]  # (C, width)

    @property
    def missing_bin(self) -> int:
        return self.width - 1


class Binner:
    """Vectorised binning of :class:`EventBatch` rows against one reference profile."""

    def __init__(self, reference: ReferenceProfile) -> None:
        self.reference = reference
        cols: list[ColumnProfile] = list(reference.columns)
        kinds = ["data"] * len(cols)
        if reference.prediction is not None:
            cols.append(reference.prediction)
            kinds.append("prediction")
        self._columns = cols
        n_bins = np.asarray([c.n_bins for c in cols], dtype=np.int64)
        width = int(n_bins.max()) + 1
        ref = np.zeros((len(cols), width), dtype=np.int64)
        for j, c in enumerate(cols):
            ref[j, : c.n_bins] = c.counts
            ref[j, width - 1] = c.missing
        self.layout = ColumnLayout(
            names=tuple(c.name for c in cols),
            kinds=tuple(kinds),
            numeric=np.asarray([isinstance(c, NumericProfile) for c in cols]),
            n_bins=n_bins,
            width=width,
            ref_counts=ref,
        )
        self._lookup = [
            {cat: i for i, cat in enumerate(c.categories)}
            if isinstance(c, CategoricalProfile)
            else None
            for c in cols
        ]

    def bins(self, batch: EventBatch) -> NDArray[np.int64]:
        """``(n, C)`` bin index of every row and column (missing -> the last bin)."""
        n = len(batch)
        out = np.full((n, len(self._columns)), self.layout.missing_bin, dtype=np.int64)
        index = {name: i for i, name in enumerate(batch.feature_names)}
        columns = np.ascontiguousarray(batch.numeric.T)  # one copy; rows are then contiguous
        for j, col in enumerate(self._columns):
            if self.layout.kinds[j] == "prediction":
                values = batch.prediction_score
                texts = batch.prediction_label
            else:
                i = index.get(col.name)
                if i is None:
                    continue
                values = columns[i]
                texts = batch.text[:, i] if batch.text is not None else None
            if isinstance(col, NumericProfile):
                ok = np.isfinite(values)
                b = np.searchsorted(col.edges, values, side="right")
                out[:, j] = np.where(ok, b, self.layout.missing_bin)
            else:
                out[:, j] = self._categorical_bins(j, col, values, texts)
        return out

    def column_bins(self, batch: EventBatch, j: int) -> NDArray[np.int64]:
        """``(n,)`` bin index of every row for column ``j`` only (as :meth:`bins` gives)."""
        col = self._columns[j]
        if self.layout.kinds[j] == "prediction":
            values, texts = batch.prediction_score, batch.prediction_label
        else:
            try:
                i = batch.feature_names.index(col.name)
            except ValueError:
                return np.full(len(batch), self.layout.missing_bin, dtype=np.int64)
            values = batch.numeric[:, i]
            texts = batch.text[:, i] if batch.text is not None else None
        if isinstance(col, NumericProfile):
            b = np.searchsorted(col.edges, values, side="right")
            return np.where(np.isfinite(values), b, self.layout.missing_bin).astype(np.int64)
        return self._categorical_bins(j, col, values, texts)

    def _categorical_bins(
        self,
        j: int,
        col: CategoricalProfile,
        values: NDArray[np.float64],
        texts: NDArray[np.object_] | None,
    ) -> NDArray[np.int64]:
        lookup = self._lookup[j]
        assert lookup is not None
        other = len(col.categories)
        missing = self.layout.missing_bin
        res = np.full(values.shape[0], missing, dtype=np.int64)
        if texts is not None:
            res[:] = [
                missing if t is None else lookup.get(t, other) for t in texts.tolist()
            ]
        finite = np.isfinite(values)
        if finite.any():  # numbers in a categorical column: their text form
            for i in np.flatnonzero(finite):
                v = float(values[i])
                token = str(int(v)) if v.is_integer() else str(v)
                res[i] = lookup.get(token, other)
        return res

    def histogram(self, bins: NDArray[np.int64]) -> NDArray[np.int64]:
        """``(C, width)`` counts of a block of bin indices, one bincount for all columns."""
        c, w = len(self._columns), self.layout.width
        flat = bins + np.arange(c, dtype=np.int64) * w
        return np.bincount(flat.ravel(), minlength=c * w).reshape(c, w)
