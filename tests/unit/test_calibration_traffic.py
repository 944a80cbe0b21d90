"""False-alarm calibration under bursty, diurnal traffic with event-time panes.

Event rates swing 100x over a simulated day (plus minute-to-minute bursts), so a 1 h
window of 5 min panes holds anything from a few dozen to tens of thousands of events.
Every evaluation may spend ``alpha = spend * new_events / target_run_length``; the sum
of those alphas over a set of evaluations is the number of false alerts the target
allows them. Without drift the count of rejecting evaluations must stay within that
budget overall and in every band of window sizes, the quiet night windows included.
A calibration blind to the window size (one alpha per evaluation, whatever it holds)
spends the same total but puts far too much of it on the quiet windows: the test
shows it would fail from the same p-values.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from synth import make_batch

from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import build_profile

F = 6
DAY = 86400.0
TARGET = 1000.0  # small, so that the budget is counted in dozens of alerts, not fractions
SEEDS = 6
DAYS = 3
BANDS = ((30, 300), (300, 3000), (3000, 10**9))  # window sizes (events)


def diurnal_times(rng: np.random.Generator, days: int, peak_per_min: float) -> np.ndarray:
    """Sorted event times: a 100x day/night swing times lognormal per-minute bursts."""
    minute = np.arange(days * 1440)
    phase = (minute % 1440) / 1440
    rate = peak_per_min * 10 ** (-(1 + np.cos(2 * np.pi * phase)))  # peak .. peak/100
    rate = rate * rng.lognormal(0.0, 0.7, size=minute.size)
    counts = rng.poisson(rate)
    ts = np.repeat(minute * 60.0, counts) + rng.uniform(0, 60, counts.sum())
    return np.sort(ts) + 1_699_920_000.0  # a midnight


@pytest.fixture(scope="module")
def evaluations() -> np.ndarray:
    """(window n, alpha, rejected, min p-value x family) of every decided
    evaluation over all seeds."""
    rows = []
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        ref = build_profile("m", {f"f{i}": rng.normal(size=20_000) for i in range(F)},
                            created_at=0.0, multivariate=False)
        cfg = MonitorConfig(panes=12, pane_seconds=300, min_samples=BANDS[0][0],
                            target_run_length=TARGET, calibration_rounds=200, seed=seed)
        mon = ModelMonitor(ref, cfg)
        ts = diurnal_times(rng, DAYS, peak_per_min=100.0)
        x = rng.normal(size=(ts.size, F))
        k = 0
        while k < ts.size:  # batches of random size, as a consumer would see them
            step = int(rng.integers(1, 3000))
            before = mon.evaluations
            for e in mon.update(make_batch(x[k : k + step], ts=ts[k : k + step], offset0=k)):
                if not e.insufficient:
                    rows.append((e.window.n, e.alpha, bool(e.drift.any()),
                                 float(np.min(e.p_value)) * len(e.p_value)))
            assert mon.evaluations >= before
            k += step
    return np.asarray(rows, dtype=np.float64)


def upper(budget: float) -> float:
    """99.9 % Poisson bound on false alerts when the expected count is ``budget``."""
    return float(stats.poisson.ppf(0.999, budget))


def test_traffic_swings_over_two_orders_of_magnitude(evaluations: np.ndarray) -> None:
    n = evaluations[:, 0]
    assert n.max() / n.min() > 100
    for lo, hi in BANDS:
        assert ((n >= lo) & (n < hi)).sum() >= 300


def test_false_alerts_within_budget_overall_and_for_every_window_size(
        evaluations: np.ndarray) -> None:
    n, alpha, rejected = evaluations[:, 0], evaluations[:, 1], evaluations[:, 2]
    assert rejected.sum() <= upper(alpha.sum()), (rejected.sum(), alpha.sum())
    for lo, hi in BANDS:
        band = (n >= lo) & (n < hi)
        budget = alpha[band].sum()
        assert budget >= 5, (lo, hi, budget)  # enough expected alerts to test against
        assert rejected[band].sum() <= upper(budget), (lo, hi, rejected[band].sum(), budget)


def test_a_window_size_blind_alpha_would_fail(evaluations: np.ndarray) -> None:
    """Same p-values, one alpha for every evaluation (the same total budget): the quiet
    windows' false alerts then exceed what the target allows them."""
    n, alpha, min_p = evaluations[:, 0], evaluations[:, 1], evaluations[:, 3]
    blind = np.full(alpha.size, alpha.mean())
    quiet = n < BANDS[0][1]
    assert (min_p[quiet] <= blind[quiet]).sum() > upper(alpha[quiet].sum())
    # and the size-aware decisions are exactly the recorded ones
    assert np.array_equal(min_p <= alpha, evaluations[:, 2].astype(bool))
