"""Exemplars of an alert: the events of a batch that moved most against the reference.

For the alert's feature, every bin gets its lift, log(pane share / reference share),
from the closed pane's histogram (both smoothed by half a count); a row scores the lift
of its bin, ties broken by its distance from the reference mean in standard deviations
(numeric columns). The rows with the highest scores are the exemplars: for a shifted
mean they are the rows in the far tail the shift moved mass into; for a new category,
the rows of that category. Cost: one column of one batch per firing alert.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.monitor import ModelMonitor
from driftline.detectors.reference import NumericProfile
from driftline.schemas.models import EventBatch

EXEMPLARS = 3


def exemplar_rows(
    monitor: ModelMonitor,
    batch: EventBatch,
    rows: NDArray[np.int64],
    feature: str,
    pane: int,
    k: int = EXEMPLARS,
) -> NDArray[np.int64]:
    """Up to ``k`` of ``rows`` (indices into ``batch``) whose ``feature`` values sit where
    pane ``pane`` gained most mass against the reference, most telling first."""
    layout = monitor.binner.layout
    if rows.size == 0 or feature not in layout.names:
        return rows[:0]
    j = layout.names.index(feature)
    hist = next((p.sums["hist"][j] for p in reversed(monitor.ring.closed) if p.pane_id == pane),
                monitor.ring.totals["hist"][j]).astype(np.float64)
    ref = layout.ref_counts[j].astype(np.float64)
    w = float(layout.width)
    lift = np.log((hist + 0.5) / (hist.sum() + 0.5 * w)) - np.log((ref + 0.5) / (ref.sum() + 0.5 * w))
    bins = monitor.binner.column_bins(batch, j)[rows]
    score = lift[bins]
    ref_cols = [c for c in (*monitor.reference.columns, monitor.reference.prediction)
                if c is not None]
    col = ref_cols[j]
    if isinstance(col, NumericProfile) and col.std > 0:
        values = (batch.prediction_score if layout.kinds[j] == "prediction"
                  else batch.column(feature))[rows]
        z = np.abs(values - col.mean) / col.std
        z = np.where(np.isfinite(z), z, 0.0)
    else:
        z = np.zeros(rows.size)
    order = np.lexsort((-z, -score))  # the last key sorts first
    return rows[order[:k]]


def row_ids(batch: EventBatch, rows: NDArray[np.int64]) -> list[tuple[str, bool]]:
    """(id, is a trace id) of the given rows: the trace id, else the event id; rows with
    neither are left out."""
    traces = batch.trace_id
    out: list[tuple[str, bool]] = []
    for r in rows.tolist():
        t = traces[r] if traces is not None else None
        if isinstance(t, str) and t:
            out.append((t, True))
            continue
        e = batch.event_id[r]
        if isinstance(e, str) and e:
            out.append((e, False))
    return out


def identified(batch: EventBatch) -> NDArray[np.bool_]:
    """Rows that carry a trace id or an event id."""
    def has(a: NDArray[np.object_] | None) -> NDArray[np.bool_]:
        if a is None:
            return np.zeros(len(batch), dtype=bool)
        return np.fromiter((isinstance(v, str) and v != "" for v in a.tolist()), dtype=bool,
                           count=len(batch))

    return has(batch.trace_id) | has(batch.event_id)
