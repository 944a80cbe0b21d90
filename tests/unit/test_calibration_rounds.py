"""The chi-square bootstrap of :func:`calibrate` tests all rounds in one call; its scales
equal those of testing each round on its own (the previous code, kept as the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from driftline.detectors.calibration import SCALE_MAX, SCALE_MIN, calibrate
from driftline.detectors.stats import chi_square


def _scale_round_by_round(ref_counts: np.ndarray, window_size: int, rounds: int,
                          seed: int) -> np.ndarray:
    ref = np.asarray(ref_counts, dtype=np.float64)
    n_ref = ref.sum(axis=1)
    probs = np.divide(ref, n_ref[:, None], out=np.zeros_like(ref), where=n_ref[:, None] > 0)
    rng = np.random.default_rng(seed)
    stats_, dfs = [], []
    for _ in range(rounds):
        r = rng.multinomial(n_ref.astype(np.int64), probs)
        w = rng.multinomial(window_size, probs)
        res = chi_square(r, w)
        stats_.append(res.statistic)
        dfs.append(res.df)
    s = np.stack(stats_)
    df = np.maximum(np.stack(dfs).mean(axis=0), 1.0)
    scale = np.maximum(s.mean(axis=0) / df,
                       np.quantile(s, 0.99, axis=0) / stats.chi2.isf(0.01, df))
    return np.where(n_ref > 0, np.clip(scale, SCALE_MIN, SCALE_MAX), 1.0)


@pytest.mark.parametrize("case", range(30))
def test_scales_equal_round_by_round_testing(case: int) -> None:
    rng = np.random.default_rng(case)
    cols, bins = int(rng.integers(1, 30)), int(rng.integers(2, 40))
    ref = rng.integers(0, 500, size=(cols, bins)).astype(np.int64)
    if case % 3 == 0:
        ref[rng.integers(0, cols)] = 0  # a column never seen
    if case % 4 == 0:
        ref[:, rng.integers(0, bins)] = 0  # a bin empty everywhere
    if case % 5 == 0:
        ref[:, 1:] = 0  # one bin only: no degree of freedom
    window, rounds = int(rng.integers(1, 20_000)), int(rng.integers(1, 120))
    got = calibrate(ref, window, rounds=rounds, seed=case).scale
    want = _scale_round_by_round(ref, window, rounds, case)
    assert got.tobytes() == want.tobytes()
