"""Confidence spikes: the share of high-confidence predictions against a baseline.

A prediction is confident when its score (the probability of a score prediction, or the
top class probability of a ``{class: prob}`` prediction, as the decoder puts it in
``EventBatch.prediction_score``) is at least ``confidence_threshold``. The window's share
of confident predictions is tested against the baseline share by a one-sided
two-proportion test in the monitor's family (same false-alarm budget), and must also rise
by ``confidence_min_increase``.

The baseline is the reference's own share when the reference profiles the prediction as
a probability (a score within [0, 1], with its raw sample); when the reference profiles
class labels (the scores of ``{class: prob}`` predictions are not in it), the baseline is
learned from the first ``confidence_baseline_events`` scored events the monitor sees,
and kept in its snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.detectors.quality import QualityConfig, increase_p_value
from driftline.detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile
from driftline.schemas.models import EventBatch

STATISTIC = "confidence_spike"
DETECTOR = "confidence_share"
FEATURE = "prediction.confidence"  # the alert's feature (apart from the prediction's own drift)


@dataclass(frozen=True)
class ConfidenceEvaluation:
    """The window's confident share against the baseline."""

    share: float  # NaN without scored predictions
    baseline: float  # NaN while the baseline is being learned
    scored: int
    p_value: NDArray[np.float64]  # (1,) NaN while no test is possible
    drift: bool = False


class ConfidenceCheck:
    """Counting confident predictions per pane, and the baseline they are compared with."""

    def __init__(self, reference: ReferenceProfile, config: QualityConfig) -> None:
        self.config = config
        self.threshold = float(config.confidence_threshold)
        pred = reference.prediction
        self.learned = isinstance(pred, CategoricalProfile)
        self.base_n = 0  # baseline: scored predictions and confident ones
        self.base_high = 0
        if isinstance(pred, NumericProfile):
            sample = pred.sample[np.isfinite(pred.sample)]
            self.base_n, self.base_high = int(sample.size), int((sample >= self.threshold).sum())

    @classmethod
    def applies(cls, reference: ReferenceProfile) -> bool:
        """Whether the model's predictions carry probabilities to check."""
        pred = reference.prediction
        if isinstance(pred, CategoricalProfile):
            return True
        return (isinstance(pred, NumericProfile) and pred.sample.size > 0
                and 0.0 <= pred.min and pred.max <= 1.0)

    @property
    def ready(self) -> bool:
        return not self.learned or self.base_n >= self.config.confidence_baseline_events

    @staticmethod
    def shapes() -> dict[str, tuple[tuple[int, ...], str]]:
        return {"confidence": ((2,), "<i8")}

    def flags(self, batch: EventBatch) -> NDArray[np.bool_]:
        """``(n, 2)``: scored, confident."""
        s = batch.prediction_score
        ok = np.isfinite(s)
        with np.errstate(invalid="ignore"):
            return np.stack([ok, ok & (s >= self.threshold)], axis=1)

    def learn(self, flags: NDArray[np.bool_]) -> None:
        """Add the first scored rows of a batch to a learned baseline until it is full."""
        if self.ready:
            return
        scored = np.flatnonzero(flags[:, 0])
        take = scored[: self.config.confidence_baseline_events - self.base_n]
        self.base_n += int(take.size)
        self.base_high += int(flags[take, 1].sum())

    def evaluate(self, counts: NDArray[Any]) -> ConfidenceEvaluation:
        scored, high = int(counts[0]), int(counts[1])
        share = high / scored if scored else float("nan")
        baseline = self.base_high / self.base_n if self.ready and self.base_n else float("nan")
        p = np.full(1, np.nan)
        if scored and self.ready and self.base_n:
            p[0] = increase_p_value(float(high), float(scored), float(self.base_high),
                                    float(self.base_n))
            if not share - baseline >= self.config.confidence_min_increase:
                p[0] = 1.0
        return ConfidenceEvaluation(share, baseline, scored, p)

    def state(self) -> dict[str, Any]:
        return {"n": self.base_n, "high": self.base_high}

    def load(self, d: dict[str, Any]) -> None:
        n, high = d["n"], d["high"]
        for v in (n, high):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
                raise ValueError(f"bad confidence baseline counter {v!r}")
        if high > n:
            raise ValueError("confidence baseline has more confident than scored predictions")
        if self.learned:
            self.base_n, self.base_high = n, high
