"""Seeded synthetic streams shared by the unit tests."""

from __future__ import annotations

import numpy as np

from driftline.schemas.models import EventBatch


def make_batch(
    x: np.ndarray,
    *,
    model: str = "m",
    ts: np.ndarray | None = None,
    offset0: int = 0,
    prediction: np.ndarray | None = None,
    names: tuple[str, ...] | None = None,
) -> EventBatch:
    """An EventBatch of numeric features ``f0..f{k-1}`` (or ``names``)."""
    n, f = x.shape
    nan = np.full(n, np.nan)
    none = np.full(n, None, dtype=object)
    return EventBatch(
        model=model,
        feature_names=names or tuple(f"f{i}" for i in range(f)),
        numeric=np.asarray(x, dtype=np.float64),
        text=None,
        ts=nan.copy() if ts is None else np.asarray(ts, dtype=np.float64),
        prediction_score=nan.copy() if prediction is None else prediction,
        prediction_label=None,
        event_id=none,
        model_version=none,
        segment=none,
        latency_ms=nan.copy(),
        partition=np.zeros(n, dtype=np.int64),
        offset=np.arange(offset0, offset0 + n, dtype=np.int64),
    )
