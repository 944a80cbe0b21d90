"""Data quality (kind "quality") and confidence spikes (kind "prediction") in ModelMonitor."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from synth import make_batch

from driftline.detectors.monitor import SNAPSHOT_KIND, ModelMonitor, MonitorConfig
from driftline.detectors.quality import QualityConfig, increase_p_value, increase_p_values
from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.detectors.serialization import pack, unpack
from driftline.schemas.models import EventBatch

F = 8
CATS = ("a", "b", "c", "d")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    """Eight numeric features (f5 has 10% missing), one categorical, a probability score."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20_000, F))
    x[rng.random(20_000) < 0.1, 5] = np.nan
    cols: dict[str, object] = {f"f{i}": x[:, i] for i in range(F)}
    cols["cat"] = np.asarray(rng.choice(CATS, 20_000), dtype=object)
    return build_profile("m", cols, prediction=sigmoid(x[:, 0]), created_at=0.0)


def stream(rng: np.random.Generator, n: int, offset0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, F))
    x[rng.random(n) < 0.1, 5] = np.nan
    return x, np.asarray(rng.choice(CATS, n), dtype=object)


def batch(x: np.ndarray, cats: np.ndarray, offset0: int = 0,
          score: np.ndarray | None = None) -> EventBatch:
    """Numeric features f0..f7 plus the categorical ``cat`` (strings, or numbers)."""
    n = x.shape[0]
    num = np.column_stack([x, np.full(n, np.nan)])
    text = np.full((n, F + 1), None, dtype=object)
    is_text = np.asarray([isinstance(c, str) for c in cats.tolist()])
    text[is_text, F] = cats[is_text]
    num[~is_text, F] = [float(c) for c in cats[~is_text].tolist()]
    b = make_batch(num, offset0=offset0, names=(*[f"f{i}" for i in range(F)], "cat"),
                   prediction=sigmoid(x[:, 0]) if score is None else score)
    return replace(b, text=text)


def quality_firing(evals) -> list[tuple[int, str, str, str | None]]:
    return [(e.index, a.kind, a.statistic, a.feature) for e in evals for a in e.alerts
            if a.state == "firing" and a.kind in ("quality", "prediction")]


def test_no_drift_stream_is_silent(profile: ReferenceProfile) -> None:
    """1M clean events: no quality alert and no confidence spike (the drift tests may
    spend their own part of the budget)."""
    mon = ModelMonitor(profile)
    rng = np.random.default_rng(11)
    fired = []
    for _ in range(200):
        x, c = stream(rng, 5000)
        fired += quality_firing(mon.update(batch(x, c)))
    assert mon.evaluations == 1000
    assert fired == []
    ev = mon.last_evaluations[-1]
    assert ev.quality is not None and ev.confidence is not None
    assert abs(ev.quality.rate[5, 0] - 0.1) < 0.02  # f5's missing rate as in the reference


def test_thirty_percent_missing_names_feature_and_metric(profile: ReferenceProfile) -> None:
    mon = ModelMonitor(profile)
    rng = np.random.default_rng(3)
    fired = []
    for k in range(0, 30_000, 1000):
        x, c = stream(rng, 1000)
        if k >= 20_000:
            x[rng.random(1000) < 0.3, 2] = np.nan
        fired += quality_firing(mon.update(batch(x, c, offset0=k)))
    assert fired, "missing values were not flagged"
    index, kind, statistic, feature = fired[0]
    assert (kind, statistic, feature) == ("quality", "missing_rate", "f2")
    assert 20_000 <= index < 23_000


def test_quality_alert_is_explained_and_resolves(profile: ReferenceProfile) -> None:
    mon = ModelMonitor(profile)
    rng = np.random.default_rng(5)
    alerts = []
    for k in range(0, 60_000, 1000):
        x, c = stream(rng, 1000)
        if 10_000 <= k < 20_000:
            x[rng.random(1000) < 0.3, 2] = np.nan
        for e in mon.update(batch(x, c, offset0=k)):
            alerts += [a for a in e.alerts if a.kind == "quality"]
    assert [a.state for a in alerts] == ["firing", "resolved"]
    a = alerts[0]
    assert a.detector == "data_quality" and a.feature == "f2"
    assert a.top_features[0].name == "f2" and a.top_features[0].statistic == "missing_rate"
    assert a.score > a.threshold and a.p_value is not None and a.p_value < 1e-6
    assert "quality" not in mon.firing_keys


@pytest.mark.parametrize("metric", ["type_mismatch_rate", "unseen_category_rate",
                                    "out_of_range_rate"])
def test_each_metric_detected(profile: ReferenceProfile, metric: str) -> None:
    mon = ModelMonitor(profile)
    rng = np.random.default_rng(9)
    fired = []
    for k in range(0, 20_000, 1000):
        x, c = stream(rng, 1000)
        if k >= 10_000:
            hit = rng.random(1000) < 0.1
            if metric == "out_of_range_rate":
                x[hit, 4] = 50.0
            elif metric == "unseen_category_rate":
                c[hit] = "zz"
            else:
                c[hit] = 7  # a number in a categorical feature whose categories are words
        fired += quality_firing(mon.update(batch(x, c, offset0=k)))
    assert fired, metric
    _, kind, statistic, feature = fired[0]
    assert (kind, statistic) == ("quality", metric)
    assert feature == ("f4" if metric == "out_of_range_rate" else "cat")


def test_strings_in_a_numeric_feature_are_type_mismatches(profile: ReferenceProfile) -> None:
    mon = ModelMonitor(profile)
    rng = np.random.default_rng(2)
    fired = []
    for k in range(0, 20_000, 1000):
        x, c = stream(rng, 1000)
        b = batch(x, c, offset0=k)
        if k >= 10_000:
            hit = rng.random(1000) < 0.2
            num, text = b.numeric.copy(), b.text.copy()
            num[hit, 1] = np.nan
            text[hit, 1] = "n/a"
            b = replace(b, numeric=num, text=text)
        fired += quality_firing(mon.update(b))
    assert fired and fired[0][1:] == ("quality", "type_mismatch_rate", "f1")


def test_confidence_spike_detected_and_no_spike_silent(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(21)
    for spike in (False, True):
        mon = ModelMonitor(profile)
        fired = []
        for k in range(0, 40_000, 1000):
            x, c = stream(rng, 1000)
            score = sigmoid(x[:, 0])
            if spike and k >= 20_000:
                hot = rng.random(1000) < 0.15
                score[hot] = 0.97  # an overconfident slice, features unchanged
            fired += quality_firing(mon.update(batch(x, c, offset0=k, score=score)))
        conf = [f for f in fired if f[2] == "confidence_spike"]
        if spike:
            assert conf, "confidence spike missed"
            index, kind, _, feature = conf[0]
            assert kind == "prediction" and feature == "prediction.confidence"
            assert 20_000 <= index < 24_000
        else:
            assert conf == []


def test_class_probability_predictions_learn_their_baseline() -> None:
    """{class: prob} predictions: the reference profiles labels, so the baseline share is
    learned from the first events; a later spike fires, and the snapshot keeps it exact."""
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(10_000, 3))
    labels = np.asarray(np.where(ref[:, 0] > 0, "yes", "no"), dtype=object)
    prof = build_profile("m", {f"f{i}": ref[:, i] for i in range(3)}, prediction=labels,
                         created_at=0.0)
    cfg = MonitorConfig(quality=QualityConfig(confidence_baseline_events=3000))
    mon = ModelMonitor(prof, cfg)
    fired = []
    for k in range(0, 30_000, 1000):
        x = rng.normal(size=(1000, 3))
        top = 0.5 + 0.5 * rng.beta(2, 5, 1000)  # the winning class probability
        if k >= 15_000:
            top[rng.random(1000) < 0.2] = 0.99
        lab = np.asarray(np.where(x[:, 0] > 0, "yes", "no"), dtype=object)
        b = replace(make_batch(x, offset0=k, prediction=top), prediction_label=lab)
        fired += quality_firing(mon.update(b))
        if k == 5000:
            blob = mon.snapshot()
            twin, _ = ModelMonitor.from_snapshot(prof, blob)
            assert twin.snapshot() == blob
            assert twin.confidence is not None and twin.confidence.ready
    conf = [f for f in fired if f[2] == "confidence_spike"]
    assert conf and conf[0][0] >= 15_000


def test_snapshot_round_trip_with_quality_is_exact(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(13)
    a = ModelMonitor(profile)
    for k in range(0, 7_300, 900):
        x, c = stream(rng, 900)
        x[rng.random(900) < 0.3, 2] = np.nan
        a.update(batch(x, c, offset0=k))
    blob = a.snapshot()
    b, _ = ModelMonitor.from_snapshot(profile, blob)
    assert b.snapshot() == blob
    for k in range(7_300, 20_000, 900):
        x, c = stream(rng, 900)
        x[rng.random(900) < 0.3, 2] = np.nan
        ea, eb = a.update(batch(x, c, offset0=k)), b.update(batch(x, c, offset0=k))
        for u, v in zip(ea, eb, strict=True):
            np.testing.assert_array_equal(u.quality.p_value, v.quality.p_value)
            assert [z.alert_id for z in u.alerts] == [z.alert_id for z in v.alerts]
    assert a.snapshot() == b.snapshot()


def test_snapshot_without_quality_counters_still_loads(profile: ReferenceProfile) -> None:
    """A snapshot written before the checks existed (no quality config, no counters)
    restores with empty counters and keeps its windows."""
    rng = np.random.default_rng(1)
    old = ModelMonitor(profile, MonitorConfig(quality=QualityConfig(enabled=False,
                                                                     confidence=False)))
    x, c = stream(rng, 2500)
    old.update(batch(x, c))
    meta, arrays, _ = unpack(old.snapshot(), SNAPSHOT_KIND)
    del meta["config"]["quality"]
    legacy = pack(SNAPSHOT_KIND, meta, arrays)
    mon, _ = ModelMonitor.from_snapshot(profile, legacy)
    assert mon.quality is not None and mon.confidence is not None
    assert mon.ring.total_n == old.ring.total_n == 2000
    assert int(mon.ring.totals["quality"].sum()) == 0
    x, c = stream(rng, 3000)
    assert mon.update(batch(x, c))  # evaluates on


def test_disabled_checks_leave_the_family_unchanged(profile: ReferenceProfile) -> None:
    off = ModelMonitor(profile, MonitorConfig(quality=QualityConfig(enabled=False,
                                                                     confidence=False)))
    rng = np.random.default_rng(6)
    x, c = stream(rng, 6000)
    ev = off.update(batch(x, c))[-1]
    assert ev.quality is None and ev.confidence is None


def test_the_float_increase_test_gives_the_array_test_bit_for_bit() -> None:
    """The confidence check's one-rate test (floats) against the quality checks' array
    test: the same p-value to the last bit, edge cases included (empty windows, rates of
    0 and 1, equal rates, no reference)."""
    rng = np.random.default_rng(5)
    cases = [(0.0, 0.0, 0.0, 0.0), (0.0, 10.0, 0.0, 10.0), (10.0, 10.0, 10.0, 10.0),
             (5.0, 10.0, 0.0, 0.0), (0.0, 0.0, 3.0, 9.0), (10.0, 10.0, 0.0, 10.0),
             (0.0, 10.0, 10.0, 10.0), (3.0, 7.0, 3.0, 7.0)]
    for small in (True, False):
        for _ in range(20_000):
            n_ref = float(rng.integers(0, 6 if small else 10**9))
            n = float(rng.integers(0, 6 if small else 10**6))
            cases.append((float(rng.integers(0, int(n) + 1)), n,
                          float(rng.integers(0, int(n_ref) + 1)), n_ref))
    k, n, k_ref, n_ref = (np.asarray(c) for c in zip(*cases, strict=True))
    arrays = increase_p_values(k, n, k_ref, n_ref)
    floats = np.asarray([increase_p_value(*c) for c in cases])
    assert np.array_equal(arrays, floats)
    assert arrays.min() < 1e-6 and (arrays == 1.0).sum() > 100  # both tails were reached


def test_out_of_range_counts_compiled_and_numpy_agree(profile: ReferenceProfile) -> None:
    """Out-of-range counts over a pane's rows: the compiled pass and the numpy fallback
    give the same counts (NaN and infinities included, rows in any order, repeated or
    not), and the compiled one refuses a row outside the batch."""
    from driftline.detectors import quality

    if quality._kernels is None:
        pytest.skip("compiled kernels not built")
    dq = quality.DataQuality(profile, 0)
    f = len(dq.names)
    rng = np.random.default_rng(2)
    num = rng.normal(size=(500, f)) * 4
    num[rng.random(num.shape) < 0.1] = np.nan
    num[rng.random(num.shape) < 0.02] = np.inf
    kernels = quality._kernels
    for rows in (np.arange(500), np.arange(100, 340), rng.permutation(500)[:77],
                 np.zeros(0, dtype=np.int64), np.asarray([3, 3, 499])):
        compiled = dq._out_of_range(num, rows)
        quality._kernels = None
        try:
            plain = dq._out_of_range(num, rows)
        finally:
            quality._kernels = kernels
        assert np.array_equal(compiled, plain) and compiled.dtype == np.int64
    assert dq._out_of_range(num, np.arange(500)).sum() > 0
    with pytest.raises(ValueError, match="outside"):
        dq._out_of_range(num, np.asarray([500]))


def _wide_categorical(rng: np.random.Generator, n: int) -> np.ndarray:
    """A column of 40 equally likely categories: more than the 32 a profile keeps."""
    return np.asarray([f"v{i}" for i in rng.integers(0, 40, n)], dtype=object)


def test_unseen_rate_of_a_wide_categorical_is_estimated_without_the_top_k_bias() -> None:
    """8 of 40 equally likely categories fall outside the kept 32: new data shows 0.2
    unseen. Counted on the rows that chose the 32, the `other` share was biased low
    (0.176): the kept were those rows' favourites. Chosen on every eighth row and counted
    on the rest, it is not; nor is the held-out estimate."""
    own, held_out = [], []
    for seed in range(20):
        col = build_profile("m", {"c": _wide_categorical(np.random.default_rng(seed), 5000)},
                            created_at=0.0).columns[0]
        assert col.unseen_rate is not None
        own.append(col.counts[-1] / col.counts.sum())
        held_out.append(col.unseen_rate)
    assert abs(np.mean(own) - 0.2) < 0.01  # counted on the choosing rows: 0.176
    assert abs(np.mean(held_out) - 0.2) < 0.01


def test_a_wide_categorical_stays_quiet_without_drift() -> None:
    """The auto-reference's 5,000 rows and 600,000 clean events: no unseen-category
    alert (with the reference's own `other` share: about 10 per million)."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(5000, 2))
    ref = build_profile("m", {"f0": x[:, 0], "f1": x[:, 1], "c": _wide_categorical(rng, 5000)},
                        created_at=0.0)
    mon = ModelMonitor(ref)
    fired = []
    for i in range(120):
        x = rng.normal(size=(5000, 2))
        text = np.full((5000, 3), None, dtype=object)
        text[:, 2] = _wide_categorical(rng, 5000)
        num = np.column_stack([x, np.full(5000, np.nan)])
        b = replace(make_batch(num, offset0=i * 5000, names=("f0", "f1", "c")), text=text)
        fired += quality_firing(mon.update(b))
    assert mon.evaluations == 600
    assert fired == []
