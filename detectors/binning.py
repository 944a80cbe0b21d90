"""Map a columnar batch onto the reference's bins, for every profiled column at once.

Columns are the reference features followed by the prediction (when profiled). Every
column gets ``width`` bins: its value bins first, unused padding, and the last bin for
missing values, so histograms of all columns stack into one ``(columns, width)`` array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

try:  # built from detectors/_kernels.c when the package is installed with a C compiler
    from driftline.detectors import _kernels
except ImportError:  # pragma: no cover - exercised by installs without a compiler
    _kernels = None  # type: ignore[assignment]

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


#: Numeric columns with at most this many edges are binned together, by comparing every
#: value with each column's k-th edge at once; columns with more edges one by one.
_COMPARE_EDGES = 32
#: Up to this many value-edge comparisons a batch makes them in one broadcast (a boolean
#: array of that many bytes); larger batches one edge rank at a time.
_BROADCAST_CELLS = 1 << 20
#: Feature orders whose binning plan a Binner keeps (a producer sends one; ~3 KB each).
_PLANS = 8


@dataclass(frozen=True)
class _Plan:
    """How one feature order maps onto the profiled columns."""

    num_j: NDArray[np.intp]  # profiled numeric columns binned together
    num_i: NDArray[np.intp]  # their batch columns (-1: the prediction score, the last one)
    edges: NDArray[np.float64]  # (K, len(num_j)) their edges, padded with +inf
    other: tuple[tuple[int, int], ...]  # (profiled column, batch column or -1), one by one


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
        self._plans: dict[tuple[str, ...], _Plan] = {}

    def _plan(self, names: tuple[str, ...]) -> _Plan:
        plan = self._plans.get(names)
        if plan is not None:
            return plan
        index = {name: i for i, name in enumerate(names)}
        together: list[tuple[int, int, NDArray[np.float64]]] = []
        other: list[tuple[int, int]] = []
        for j, col in enumerate(self._columns):
            i = -1 if self.layout.kinds[j] == "prediction" else index.get(col.name)
            if i is None:
                continue  # not in this batch: every row is missing
            if isinstance(col, NumericProfile) and col.edges.size <= _COMPARE_EDGES:
                together.append((j, i, col.edges))
            else:
                other.append((j, i))
        edges = np.full((max((e.size for *_, e in together), default=0), len(together)), np.inf)
        for c, (*_, e) in enumerate(together):
            edges[: e.size, c] = e
        plan = _Plan(np.asarray([j for j, *_ in together], dtype=np.intp),
                     np.asarray([i for _, i, _ in together], dtype=np.intp), edges, tuple(other))
        if len(self._plans) >= _PLANS:
            self._plans.clear()
        self._plans[names] = plan
        return plan

    def bins(self, batch: EventBatch) -> NDArray[np.int64]:
        """``(n, C)`` bin index of every row and column (missing -> the last bin).

        A numeric value's bin is the number of its column's edges at or below it
        (``searchsorted(edges, value, side="right")``); for columns with few edges that
        count is taken for all of them at once, one comparison per edge rank.
        """
        n = len(batch)
        missing = self.layout.missing_bin
        out = np.full((n, len(self._columns)), missing, dtype=np.int64)
        plan = self._plan(batch.feature_names)
        if plan.num_j.size:
            if plan.num_i[-1] < 0:  # the prediction is the last profiled column
                values = np.empty((n, plan.num_i.size))
                values[:, :-1] = batch.numeric[:, plan.num_i[:-1]]
                values[:, -1] = batch.prediction_score
            else:
                values = batch.numeric[:, plan.num_i]
            # +inf padding is above every finite value; counts are at most _COMPARE_EDGES
            if values.size * len(plan.edges) <= _BROADCAST_CELLS:
                count = (values[None] >= plan.edges[:, None]).sum(axis=0, dtype=np.uint8)
            else:
                count = np.zeros(values.shape, dtype=np.uint8)
                at_or_above = np.empty(values.shape, dtype=bool)
                for kth in plan.edges:
                    np.greater_equal(values, kth, out=at_or_above)
                    count += at_or_above.view(np.uint8)
            out[:, plan.num_j] = np.where(np.isfinite(values), count, missing)
        for j, i in plan.other:
            col = self._columns[j]
            if i < 0:
                values, texts = batch.prediction_score, batch.prediction_label
            else:
                values = batch.numeric[:, i]
                texts = batch.text[:, i] if batch.text is not None else None
            if isinstance(col, NumericProfile):
                b = np.searchsorted(col.edges, values, side="right")
                out[:, j] = np.where(np.isfinite(values), b, missing)
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
        """``(C, width)`` counts of a block of bin indices."""
        counts: NDArray[np.int64] = block_histograms(bins, None, 0, 1, len(self._columns),
                                                     self.layout.width)[0]
        return counts


def block_histograms(bins: NDArray[np.int64], block: NDArray[np.int64] | None, first: int,
                     blocks: int, columns: int, width: int) -> NDArray[np.int64]:
    """``(blocks, columns, width)`` counts of each column's bin indices (``bins``:
    ``(n, columns)``, each in ``[0, width)``) over the rows whose ``block - first`` is a
    block in ``[0, blocks)`` (``block`` None: every row, in block 0). One compiled pass
    when the kernels are built, else one ``bincount`` over shifted indices (rows of no
    block go to a spare block)."""
    if _kernels is not None and bins.dtype == np.int64 and \
            (block is None or block.dtype == np.int64):
        out = np.zeros((blocks, columns, width), dtype=np.int64)
        _kernels.bin_counts(np.ascontiguousarray(bins),
                            None if block is None else np.ascontiguousarray(block), out,
                            bins.shape[0], columns, width, first, blocks)
        return out
    cells = columns * width
    flat = bins + np.arange(0, cells, width, dtype=np.int64)
    if block is None:
        out = np.zeros((blocks, columns, width), dtype=np.int64)
        if blocks:
            out[0] = np.bincount(flat.ravel(), minlength=cells).reshape(columns, width)
        return out
    b = block - first
    b[(b < 0) | (b > blocks)] = blocks
    flat += (b * cells)[:, None]
    return np.bincount(flat.ravel(), minlength=(blocks + 1) * cells)[: blocks * cells] \
        .reshape(blocks, columns, width)
