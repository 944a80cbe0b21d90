"""Synthetic inference traffic for demos, tests and benchmarks, with drift injection."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DriftSpec:
    """Shift ``feature`` of ``model`` by ``shift`` standard deviations from ``at`` on.

    ``at`` counts that model's events (``unit="events"``) or seconds since the stream
    started (``unit="seconds"``).
    """

    model: str
    feature: str = "f7"
    at: float = 0.0
    shift: float = 1.0
    unit: str = "events"


#: Seed of the models' parameters (feature means, score weights): the same for every
#: ``seed``, so traffic produced with another seed matches references built before.
PARAMETER_SEED = 0


class SyntheticModels:
    """``n_models`` models with ``n_features`` numeric features and a score each.

    A model's distribution depends only on its position and ``n_features``; ``seed``
    picks the draws (values, segments, latencies), not the distributions."""

    def __init__(self, n_models: int = 3, n_features: int = 20, *, seed: int = 0,
                 prefix: str = "model-", drift: tuple[DriftSpec, ...] = (),
                 segments: tuple[str, ...] = ("eu", "us", "apac"),
                 error_rate: float | None = None) -> None:
        """``error_rate``: events carry ``outcome`` (``"error"`` at this rate, else
        ``"ok"``) for the serving golden signals; None: no ``outcome``."""
        self.models = [f"{prefix}{i}" for i in range(n_models)]
        self.n_features = n_features
        self.names = [f"f{i}" for i in range(n_features)]
        self.rng = np.random.default_rng(seed)
        params = np.random.default_rng(PARAMETER_SEED)
        self._weights = params.normal(0, 0.3, n_features)
        self._means = {m: params.normal(0, 1, n_features) for m in self.models}
        self._count = dict.fromkeys(self.models, 0)
        self.drift = drift
        self.segments = segments
        if error_rate is not None and not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must lie in [0, 1], not {error_rate!r}")
        self.error_rate = error_rate
        self.started = time.time()

    def features(self, model: str, n: int) -> np.ndarray:
        """``(n, n_features)`` values for the model's next ``n`` events, drift applied."""
        x = self.rng.normal(size=(n, self.n_features)) + self._means[model]
        start = self._count[model]
        self._count[model] += n
        elapsed = time.time() - self.started
        for d in self.drift:
            if d.model != model or d.feature not in self.names:
                continue
            j = self.names.index(d.feature)
            if d.unit == "seconds":
                if elapsed >= d.at:
                    x[:, j] += d.shift
            else:
                idx = np.arange(start, start + n)
                x[idx >= d.at, j] += d.shift
        return x

    def events(self, model: str, n: int, *, ts: float | None = None) -> list[dict[str, object]]:
        """The model's next ``n`` events as InferenceEvent dicts."""
        x = self.features(model, n)
        score = 1.0 / (1.0 + np.exp(-(x - self._means[model]) @ self._weights))
        now = time.time() if ts is None else ts
        seg = self.rng.integers(0, len(self.segments), n)
        lat = self.rng.gamma(2.0, 4.0, n)
        rows = x.round(5).tolist()
        out: list[dict[str, object]] = []
        for i in range(n):
            out.append({
                "model": model,
                "model_version": "v1",
                "event_id": uuid.uuid4().hex,
                "ts": now,
                "features": dict(zip(self.names, rows[i], strict=True)),
                "prediction": round(float(score[i]), 5),
                "segment": {"region": self.segments[int(seg[i])]},
                "latency_ms": round(float(lat[i]), 3),
            })
        if self.error_rate is not None:
            failed = self.rng.random(n) < self.error_rate
            for ev, bad in zip(out, failed.tolist(), strict=True):
                ev["outcome"] = "error" if bad else "ok"
        return out

    def round_robin(self, batch: int) -> Iterator[tuple[str, list[dict[str, object]]]]:
        """Endless ``(model, events)`` batches, one model after the other."""
        while True:
            for m in self.models:
                yield m, self.events(m, batch)
