"""Segment windows closing in one batch are tested together: the stacked scores,
decisions and thresholds of several windows are, row by row, each window's own."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.detectors import stats as stats_mod
from driftline.detectors.calibration import Calibration
from driftline.detectors.stats import ReferenceTerms


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=pytest.mark.skipif(
    not stats_mod.KERNELS, reason="kernels not built")), False])
def test_scores_of_many_windows_are_each_windows_scores(
        compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row ``i`` of ``scores_many`` is ``scores(wins[i])`` to the bit, compiled or not;
    int and float windows mixed, an empty window, no windows."""
    if not compiled:
        monkeypatch.setattr(stats_mod, "_kernels", None)
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 400, (6, 9)) * (rng.random((6, 9)) < 0.7)
    terms = ReferenceTerms(ref)
    wins = [rng.integers(0, 50, (6, 9)) for _ in range(5)]
    wins[1] = wins[1].astype(np.float64)
    wins[3][:] = 0
    got = terms.scores_many(wins)
    for i, win in enumerate(wins):
        for j, want in enumerate(terms.scores(win)):
            assert got[j][i].tobytes() == want.tobytes(), (i, j)
    assert [s.shape for s in terms.scores_many([])] == [(0, 6)] * 4


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
