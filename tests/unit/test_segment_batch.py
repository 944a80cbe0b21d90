"""Segment windows closing in one batch are tested together: the decisions and
thresholds of several windows' stacked scores are, row by row, each window's own."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.detectors.calibration import Calibration


@pytest.mark.parametrize("correction", ["bonferroni", "bh"])
def test_decisions_of_many_windows_are_each_windows_decisions(correction: str) -> None:
    rng = np.random.default_rng(4)
    cal = Calibration(1e6, np.ones(8), correction=correction)
    p = rng.random((40, 8)) ** 6
    p[3, 2] = np.nan
    alpha = rng.uniform(1e-4, 0.2, 40)
    got = cal.decide_rows(p, alpha)
    want = np.stack([cal.decide(p[i], float(alpha[i])) for i in range(40)])
    np.testing.assert_array_equal(got, want)
    assert want.any() and not want.all()  # some tests rejected, not all
    assert cal.decide_rows(np.zeros((3, 0)), np.ones(3)).shape == (3, 0)


def test_thresholds_take_one_level_per_window() -> None:
    cal = Calibration(1e6, np.linspace(1.0, 2.0, 5))
    df = np.array([[1.0, 4.0, 0.0, 9.0, 2.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    alpha = np.array([0.01, 0.2])
    got = cal.thresholds(df, alpha[:, None], 5)
    for i in range(2):
        assert got[i].tobytes() == cal.thresholds(df[i], float(alpha[i]), 5).tobytes()
