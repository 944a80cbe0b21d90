"""Typed messages of the driftline contracts: frozen dataclasses, columnar where it matters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
ObjectArray = NDArray[np.object_]

#: Envelope marker of the batch format (one Kafka message, many events of one model).
ENVELOPE_V1 = "driftline.batch/v1"


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Columnar inference events of one model, as the detectors consume them.

    Row ``i`` of every array is one event. Feature values are split by type:
    ``numeric[i, j]`` holds a number (NaN when the value is null, missing or not a
    number) and ``text[i, j]`` holds a string for string/bool values (``"true"`` /
    ``"false"`` for bools) and ``None`` otherwise; ``text`` is ``None`` when no event
    of the batch carried a string.
    """

    model: str
    feature_names: tuple[str, ...]
    numeric: FloatArray  # (n, f)
    text: ObjectArray | None  # (n, f) str | None
    ts: FloatArray  # (n,) event time, epoch seconds; NaN when absent
    prediction_score: FloatArray  # (n,) numeric score / top probability; NaN when absent
    prediction_label: ObjectArray | None  # (n,) class label str | None
    event_id: ObjectArray  # (n,) str | None
    model_version: ObjectArray  # (n,) str | None
    segment: ObjectArray  # (n,) dict[str, str] | None
    latency_ms: FloatArray  # (n,) NaN when absent
    partition: IntArray  # (n,) source partition, -1 offline
    offset: IntArray  # (n,) source offset, -1 offline (all events of an envelope share it)
    shadow_of: ObjectArray | None = None  # (n,) str | None
    trace_id: ObjectArray | None = None  # (n,) str | None
    outcome: ObjectArray | None = None  # (n,) "ok" | "error" | None

    def __len__(self) -> int:
        return int(self.numeric.shape[0])

    def column(self, name: str) -> FloatArray:
        """The numeric column of one feature (all NaN when the batch lacks it)."""
        try:
            return self.numeric[:, self.feature_names.index(name)]
        except ValueError:
            return np.full(len(self), np.nan)

    def take(self, rows: IntArray) -> EventBatch:
        """The sub-batch of the given rows (indices, in their order)."""
        def pick(a: ObjectArray | None) -> ObjectArray | None:
            return None if a is None else a[rows]

        return EventBatch(
            model=self.model, feature_names=self.feature_names, numeric=self.numeric[rows],
            text=pick(self.text), ts=self.ts[rows], prediction_score=self.prediction_score[rows],
            prediction_label=pick(self.prediction_label), event_id=self.event_id[rows],
            model_version=self.model_version[rows], segment=self.segment[rows],
            latency_ms=self.latency_ms[rows], partition=self.partition[rows],
            offset=self.offset[rows], shadow_of=pick(self.shadow_of),
            trace_id=pick(self.trace_id), outcome=pick(self.outcome),
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input that could not be used, with the reason; becomes a dead letter."""

    reason: str
    payload: bytes
    topic: str = ""
    partition: int = -1
    offset: int = -1
    model: str | None = None


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """What decoding a list of raw messages gives: per-model batches and rejections."""

    batches: dict[str, EventBatch]
    rejections: list[Rejection]
    events: int  # events decoded into batches (envelopes count every event)


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """Ground truth for one earlier prediction, joined by ``event_id``."""

    model: str
    event_id: str
    label: str | float | int | bool
    ts: float


@dataclass(frozen=True, slots=True)
class FeatureScore:
    """One feature's (or one multivariate statistic's) part in an alert."""

    name: str
    statistic: str
    score: float
    threshold: float
    p_value: float | None = None


@dataclass(frozen=True, slots=True)
class WindowInfo:
    """Which events an evaluation covered."""

    start_ts: float | None
    end_ts: float | None
    n: int
    first_offset: int = -1
    last_offset: int = -1
    pane: int = -1


#: Kinds of alerts (DriftAlert ``kind``, the schema's enum).
ALERT_KINDS = ("data", "prediction", "concept", "quality", "shadow")


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """DriftAlert v1: a self-explaining firing or resolved alert."""

    alert_id: str
    model: str
    kind: str  # data | prediction | concept | quality | shadow
    state: str  # firing | resolved
    detector: str
    statistic: str
    score: float
    threshold: float
    window: WindowInfo
    model_version: str | None = None
    feature: str | None = None
    p_value: float | None = None
    reference: str | None = None
    segment: dict[str, str] | None = None
    severity: str = "warning"
    top_features: tuple[FeatureScore, ...] = ()
    created_at: float = 0.0
    changes: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    exemplars: tuple[str, ...] = ()
