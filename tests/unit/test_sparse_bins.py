"""Sparse bins in the chi-square: each tested exactly (``stats.SPARSE_EXPECTED``).

A bin a window is expected to fill less than five times gives Pearson's statistic a
tail far heavier than the chi-square law: one appearance of a 0.02% category in a
100-event window adds ~50. These tests hold the statistic to its false-alarm level on
such windows, check that drift of the rare bins and a new category among them are
still found, and that windows without sparse bins score as before.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from driftline.detectors.stats import SPARSE_EXPECTED, ReferenceTerms, chi_square, sparse_terms

#: Three common categories, two rare ones and the unseen bin (empty in the reference).
PROBS = np.array([0.5, 0.3, 0.1988, 0.001, 0.0002, 0.0])


def _pearson(ref: np.ndarray, win: np.ndarray) -> np.ndarray:
    """The p-values of Pearson's two-sample statistic over every used bin."""
    r, w = ref.astype(float), win.astype(float)
    nr, nw = r.sum(-1, keepdims=True), w.sum(-1, keepdims=True)
    both = r + w
    t = np.divide((np.sqrt(nw / nr) * r - np.sqrt(nr / nw) * w) ** 2, both,
                  out=np.zeros_like(both), where=both > 0)
    return np.asarray(special.chdtrc((both > 0).sum(-1) - 1, t.sum(-1)))


def test_sparse_term_is_the_smaller_of_pearson_and_the_exact_binomial_test() -> None:
    """(Pearson's terms up to 4 are kept: the exact test matters in the tail.)"""
    rng = np.random.default_rng(0)
    nr = rng.integers(1, 10_000, 300).astype(float)
    nw = rng.integers(1, 2_000, 300).astype(float)
    rp = np.floor(rng.random(300) * 0.01 * nr)
    wp = rng.integers(0, 30, 300).astype(float)
    got = sparse_terms(rp, wp, nr, nw)
    for i in range(300):
        t, share = int(rp[i] + wp[i]), nw[i] / (nr[i] + nw[i])
        if t == 0:
            assert got[i] == 0.0
            continue
        p = min(1.0, 2 * min(stats.binom.sf(wp[i] - 1, t, share), stats.binom.cdf(wp[i], t, share)))
        pearson = (np.sqrt(nw[i] / nr[i]) * rp[i] - np.sqrt(nr[i] / nw[i]) * wp[i]) ** 2 / t
        want = min(pearson, stats.chi2.isf(p, 1)) if pearson > 4 and p > 0 else pearson
        np.testing.assert_allclose(got[i], want, rtol=1e-7, atol=1e-9, err_msg=str(i))
    # nothing to pool, or an empty side: no term
    assert sparse_terms(np.zeros(2), np.zeros(2), np.ones(2), np.ones(2)).tolist() == [0.0, 0.0]
    assert sparse_terms(np.ones(1), np.ones(1), np.ones(1), np.zeros(1)).tolist() == [0.0]


def test_rare_categories_in_small_windows_keep_their_false_alarm_level() -> None:
    """20,000 no-drift windows of 100 events against a 5,000-event reference: the pooled
    statistic rejects at most at its level (Pearson's: 240x at 1e-4, 25x at 1e-3)."""
    rng = np.random.default_rng(1)
    ref = rng.multinomial(5000, PROBS)[None, :]
    win = rng.multinomial(100, PROBS, size=20_000)
    refs = np.repeat(ref, len(win), axis=0)
    p = chi_square(refs, win).p_value
    old = _pearson(refs, win)
    for level in (1e-2, 1e-3, 1e-4):
        assert (p < level).mean() <= 1.5 * level, level
    assert (old < 1e-3).mean() > 10 * 1e-3  # the heavy tail the pooling removes


def test_drift_of_rare_and_unseen_categories_is_still_found() -> None:
    rng = np.random.default_rng(2)
    ref = rng.multinomial(5000, PROBS)[None, :]
    for probs in ([0.5, 0.3, 0.1488, 0.05, 0.0002, 0.0],  # 0.1% -> 5%
                  [0.5, 0.3, 0.0988, 0.001, 0.0002, 0.1]):  # a new category at 10%
        win = rng.multinomial(100, probs, size=500)
        p = chi_square(np.repeat(ref, 500, axis=0), win).p_value
        assert np.median(p) < 1e-4
        win = rng.multinomial(5000, probs, size=50)  # the model's window
        assert chi_square(np.repeat(ref, 50, axis=0), win).p_value.max() < 1e-12


def test_windows_without_sparse_bins_score_as_pearson() -> None:
    rng = np.random.default_rng(3)
    probs = np.full(16, 1 / 16)
    ref = rng.multinomial(5000, probs, size=40)
    win = rng.multinomial(1000, probs, size=40)  # 62.5 expected per bin
    assert (ref * 1000 >= SPARSE_EXPECTED * 5000).all()
    np.testing.assert_allclose(chi_square(ref, win).p_value, _pearson(ref, win), rtol=1e-12)
    terms = ReferenceTerms(ref)
    np.testing.assert_allclose(terms.scores(win)[0], terms.chi_square(win).statistic,
                               rtol=1e-12)


def test_a_stray_value_in_a_bin_empty_in_the_reference_is_no_alarm() -> None:
    """One missing value in a 100-event window, none in the 5,000-event reference: a 2%
    event (100 of the 5,100 values), not the p ~ 1e-12 Pearson's term of 50 gives."""
    ref = np.array([[2500, 2500, 0]])
    win = np.array([[50, 49, 1]])
    p = float(chi_square(ref, win).p_value[0])
    assert p > 0.01
    assert float(_pearson(ref, win)[0]) < 1e-10


def test_a_window_too_small_for_every_bin_is_not_pooled_into_one() -> None:
    """16 equal bins and a 30-event window (1.9 expected per bin): still 15 degrees of
    freedom, a 16-bin test, not one pooled bin that nothing could fail."""
    rng = np.random.default_rng(4)
    ref = rng.multinomial(5000, np.full(16, 1 / 16), size=20)
    win = rng.multinomial(30, np.full(16, 1 / 16), size=20)
    res = chi_square(ref, win)
    assert (res.df == (ref + win > 0).sum(-1) - 1).all()
    np.testing.assert_allclose(res.p_value, _pearson(ref, win), rtol=1e-12)
    terms = ReferenceTerms(ref)
    np.testing.assert_array_equal(terms.scores(win)[1], res.df)
    shifted = np.zeros_like(win)
    shifted[:, :4] = 30 // 4  # all in the lowest quarter
    assert chi_square(ref, shifted).p_value.max() < 1e-6


def test_a_new_category_among_rare_ones_is_found_in_a_small_window() -> None:
    """300-event windows, a reference with 1%, 1%, 0.5% and 0.1% categories and none
    unseen: a new category at 2% (6 events) rejects at 1e-6 in every window (pooled with
    the rare categories it gave p ~ 0.7), and the same windows without it stay at level."""
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.074, 0.01, 0.01, 0.005, 0.001, 0.0])
    rng = np.random.default_rng(3)
    ref = rng.multinomial(20_000, probs)[None, :]
    win = rng.multinomial(294, probs, size=200)
    win[:, -1] += 6
    assert chi_square(np.repeat(ref, 200, axis=0), win).p_value.max() < 1e-6
    calm = rng.multinomial(300, probs, size=20_000)
    p = chi_square(np.repeat(ref, len(calm), axis=0), calm).p_value
    for level in (1e-2, 1e-3, 1e-4):
        assert (p < level).mean() <= 1.5 * level, level
