"""Exact two-sample tests against scipy, and the alert policy's hysteresis."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from driftline.detectors.exact import cvm_2samp, ks_2samp
from driftline.detectors.policy import AlertPolicy, PolicyConfig


@pytest.mark.parametrize(("n", "m", "shift"), [(300, 500, 0.0), (1000, 800, 0.1), (50, 70, 0.3),
                                               (2000, 5000, 0.05)])
def test_exact_tests_match_scipy(n: int, m: int, shift: float) -> None:
    rng = np.random.default_rng(n + m)
    x, y = rng.normal(size=n), rng.normal(shift, 1.0, size=m)
    ours, ref = ks_2samp(x, y), stats.ks_2samp(x, y, method="asymp")
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)
    ours, ref = cvm_2samp(x, y), stats.cramervonmises_2samp(x, y, method="asymptotic")
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-9)


def test_exact_tests_ignore_missing_values() -> None:
    x = np.array([1.0, np.nan, 2.0, 3.0, np.inf])
    assert ks_2samp(x, np.array([1.0, 2.0, 3.0])).statistic == 0.0


def test_m_of_n_fires_resolves_and_cools_down() -> None:
    pol = AlertPolicy(PolicyConfig(fire_m=2, fire_n=3, clear_after=2, cooldown=2))
    seq = [True, False, True, True, False, False, True, True, True]
    got = [pol.step("data", d) for d in seq]
    assert got == [None, None, "firing", None, None, "resolved", None, None, "firing"]


def test_policy_round_trip_and_validation() -> None:
    pol = AlertPolicy(PolicyConfig(fire_m=1, fire_n=2))
    pol.step("data", True)
    other = AlertPolicy(PolicyConfig(fire_m=1, fire_n=2))
    other.load(pol.to_dict())
    assert other.to_dict() == pol.to_dict() and other.firing("data")
    with pytest.raises(ValueError):
        PolicyConfig(fire_m=3, fire_n=2)
