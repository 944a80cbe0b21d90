"""Synthetic traffic: the seed picks the draws, not the models' distributions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from driftline.streams.synthetic import DriftSpec, SyntheticModels


def _column(gen: SyntheticModels, model: str, feature: str, n: int) -> np.ndarray:
    return np.asarray([e["features"][feature] for e in gen.events(model, n)])  # type: ignore[index]


def test_another_seed_draws_from_the_same_distributions() -> None:
    a, b = SyntheticModels(4, seed=0), SyntheticModels(4, seed=7)
    for model in ("model-0", "model-2"):
        for feature in ("f0", "f7"):
            x, y = _column(a, model, feature, 3000), _column(b, model, feature, 3000)
            assert not np.array_equal(x, y)  # other draws
            assert stats.ks_2samp(x, y).pvalue > 1e-3, (model, feature)
        pa = np.asarray([e["prediction"] for e in a.events(model, 3000)])
        pb = np.asarray([e["prediction"] for e in b.events(model, 3000)])
        assert stats.ks_2samp(pa, pb).pvalue > 1e-3, model


def test_a_model_keeps_its_distribution_whatever_the_number_of_models() -> None:
    few, many = SyntheticModels(3), SyntheticModels(10)
    assert np.array_equal(few._means["model-2"], many._means["model-2"])
    assert np.array_equal(few._weights, many._weights)
    assert not np.array_equal(many._means["model-2"], many._means["model-3"])


def test_drift_shifts_the_feature_from_its_event() -> None:
    gen = SyntheticModels(2, seed=3, drift=(DriftSpec("model-1", "f7", at=500, shift=2.0),))
    x = _column(gen, "model-1", "f7", 1000)
    assert x[500:].mean() - x[:500].mean() > 1.5
    y = _column(gen, "model-0", "f7", 1000)
    assert abs(y[500:].mean() - y[:500].mean()) < 0.3


def test_outcomes_at_the_error_rate_only_when_asked() -> None:
    assert all("outcome" not in e for e in SyntheticModels(1).events("model-0", 100))
    evs = SyntheticModels(1, seed=2, error_rate=0.01).events("model-0", 20_000)
    outcomes = [e["outcome"] for e in evs]
    assert set(outcomes) == {"ok", "error"}
    assert 0.007 < outcomes.count("error") / len(outcomes) < 0.013
    with pytest.raises(ValueError, match="error_rate"):
        SyntheticModels(1, error_rate=1.5)

