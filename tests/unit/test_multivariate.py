"""Multivariate statistics: accuracy, calibration, detection, explanations, exact state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from scipy import stats

from driftline.detectors.checks import ALL_CHECKS, DetectorCase
from driftline.detectors.errors import ProfileError, SnapshotError
from driftline.detectors.monitor import ModelMonitor, MonitorConfig, multivariate_for
from driftline.detectors.multivariate import MultivariateModel
from driftline.detectors.mv_encode import CategoricalInput, NumericInput
from driftline.detectors.mv_null import WeightedChiSquare
from driftline.detectors.mv_rff import (
    DEFAULT_D,
    feature_rows,
    feature_sums,
    median_bandwidth,
    weights,
)
from driftline.detectors.offline import compare
from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.detectors.serialization import pack, unpack
from driftline.detectors.tables import Table
from driftline.schemas.models import EventBatch
from driftline.schemas.validation import validator

F = 10
RHO = 0.8
CATS = np.array(["a", "b", "c"], dtype=object)


def correlated(rng: np.random.Generator, n: int, rho: float = RHO) -> np.ndarray:
    """``F`` standard normal features; f0 and f1 correlated ``rho``, marginals N(0, 1)."""
    x = rng.normal(size=(n, F))
    x[:, 1] = rho * x[:, 0] + np.sqrt(1.0 - rho**2) * x[:, 1]
    return x


def mixed_batch(x: np.ndarray, cat: np.ndarray, offset0: int = 0) -> EventBatch:
    """Numeric f0..f{F-1} (NaN = missing) plus a categorical column ``cat``."""
    n = x.shape[0]
    names = (*[f"f{i}" for i in range(F)], "cat")
    numeric = np.concatenate([x, np.full((n, 1), np.nan)], axis=1)
    text = np.full((n, F + 1), None, dtype=object)
    text[:, F] = cat
    nan = np.full(n, np.nan)
    none = np.full(n, None, dtype=object)
    return EventBatch("mv", names, numeric, text, nan, nan.copy(), None, none, none, none,
                      nan.copy(), np.zeros(n, np.int64), np.arange(offset0, offset0 + n))


def mixed_rows(rng: np.random.Generator, n: int, rho: float = RHO) -> tuple[np.ndarray, np.ndarray]:
    x = correlated(rng, n, rho)
    x[rng.random(n) < 0.05, 4] = np.nan  # f4 is missing 5 % of the time
    cat = CATS[rng.choice(3, size=n, p=[0.5, 0.3, 0.2])]
    cat[rng.random(n) < 0.02] = None
    return x, cat


def mixed_profile(seed: int, n: int = 20_000) -> ReferenceProfile:
    x, cat = mixed_rows(np.random.default_rng(seed), n)
    cols: dict[str, Any] = {f"f{i}": x[:, i] for i in range(F)}
    cols["cat"] = cat
    return build_profile("mv", cols, categorical=["cat"], created_at=0.0, seed=seed)


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return mixed_profile(3)


def firing(evals: list[Any]) -> list[tuple[int, Any]]:
    return [(e.index, a) for e in evals for a in e.alerts if a.state == "firing"]


# -- null laws and the feature map ---------------------------------------------------------
def test_weighted_chi_square_tail_matches_exact_and_monte_carlo() -> None:
    for m in (2, 5, 30):  # equal weights: an exact (scaled) chi-square
        law = WeightedChiSquare(np.full(m, 0.3))
        for p in (0.05, 1e-4, 1e-8, 1e-15):
            q = 0.3 * stats.chi2.isf(p, m)
            assert law.sf(q) == pytest.approx(p, rel=0.05)
            assert law.isf(p) == pytest.approx(q, rel=0.01)
    lam = np.array([5.0, 2.0, 1.0, 0.5, 0.5, 0.2, 0.1, 0.05])
    law = WeightedChiSquare(lam)
    draws = (np.random.default_rng(0).chisquare(1, size=(1_000_000, lam.size)) * lam).sum(axis=1)
    for p in (0.1, 1e-2, 1e-3, 1e-4):
        assert (draws > law.isf(p)).mean() == pytest.approx(p, rel=0.15)


def exact_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Biased (V-statistic) MMD² with the two-scale kernel (k_σ + k_σ/2) / 2, quadratic time."""
    def k(a: np.ndarray, b: np.ndarray) -> float:
        d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)
        return float((0.5 * (np.exp(-d2 / (2 * sigma**2)) + np.exp(-2 * d2 / sigma**2))).mean())
    return k(x, x) + k(y, y) - 2 * k(x, y)


def test_rff_mmd_matches_exact_quadratic_mmd() -> None:
    """The default D = 128 against the exact MMD² of the same kernel, 400 + 400 rows, 8 dims.

    Measured over these seeded draws: mean relative error 14 % without drift (exact MMD²
    about 0.003), 11 % for a 0.5 σ shift of one feature (0.011), 25 % for a correlation flip
    (0.013); largest absolute error 0.0065; rank correlation 0.81. (D = 256: 12 %, 12 %,
    19 %.) The statistic's null law is that of the RFF statistic itself, so the test stays
    calibrated whatever D.
    """
    rng = np.random.default_rng(0)
    rel: dict[str, list[float]] = {"null": [], "shift": [], "flip": []}
    pairs: list[tuple[float, float]] = []
    for trial in range(12):
        for kind in rel:
            x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
            if kind == "shift":
                y[:, 0] += 0.5
            if kind == "flip":
                x[:, 1] = 0.8 * x[:, 0] + 0.6 * x[:, 1]
                y[:, 1] = -0.8 * y[:, 0] + 0.6 * y[:, 1]
            sigma = median_bandwidth(np.vstack([x, y]), 0)
            w = weights(8, DEFAULT_D, sigma, trial)
            fx = feature_rows(x, w).astype(np.float64).mean(0)
            fy = feature_rows(y, w).astype(np.float64).mean(0)
            approx = float(((fx - fy) ** 2).sum() * 2 / DEFAULT_D)
            exact = exact_mmd2(x, y, sigma)
            rel[kind].append(abs(approx - exact) / exact)
            pairs.append((approx, exact))
    assert np.mean(rel["null"]) < 0.2 and np.mean(rel["shift"]) < 0.2
    assert np.mean(rel["flip"]) < 0.3
    assert max(abs(a - e) for a, e in pairs) < 0.01
    assert stats.spearmanr(*zip(*pairs, strict=True)).statistic > 0.75  # 0.81 measured
    z = np.random.default_rng(1).normal(size=(3000, 8))
    w = weights(8, 256, 3.0, 0)
    np.testing.assert_allclose(feature_sums(z, w), feature_rows(z, w).sum(0, dtype=np.float64),
                               rtol=1e-5, atol=5e-3)  # float32 map and sums


# -- the reference side --------------------------------------------------------------------
def test_profile_round_trip_is_exact_and_valid(profile: ReferenceProfile) -> None:
    d = profile.to_dict()
    validator("reference_profile.v1").validate(d)
    back = ReferenceProfile.from_json(orjson.dumps(d))
    assert back.to_dict() == d and back.reference_id == profile.reference_id
    mv = MultivariateModel.from_dict(back.multivariate or {})
    assert mv.names == ("mmd_rff", "covariance", "pca_recon")
    assert mv.to_dict() == d["multivariate"]
    names = mv.encoding.names
    assert {"f0", "f9", "cat=a", "cat=b", "cat=c", "f4.missing", "cat.missing"} <= set(names)
    assert all(1.0 <= s <= 5.0 for s in mv.scale)
    assert mv.calibration["method"] == "bootstrap" and mv.calibration["window"] == 5000


def test_batch_encoding_equals_reference_encoding(profile: ReferenceProfile) -> None:
    mon = ModelMonitor(profile, MonitorConfig(calibration_rounds=0))
    found = multivariate_for(profile, mon.binner)
    assert found is not None
    model, encoder = found
    x, cat = mixed_rows(np.random.default_rng(9), 500)
    batch = mixed_batch(x, cat)
    z = encoder.encode(batch, mon.binner.bins(batch))
    codes = np.asarray([-1 if c is None else list(CATS).index(c) for c in cat], dtype=np.int64)
    cols = {f"f{i}": NumericInput(f"f{i}", x[:, i]) for i in range(F)}
    cols["cat"] = CategoricalInput("cat", codes, tuple(CATS))
    np.testing.assert_array_equal(z, model.encoding.encode_columns(cols))
    # pane sums are additive over any split of the rows
    a, b, whole = model.pane_sums(z[:123]), model.pane_sums(z[123:]), model.pane_sums(z)
    for key, v in whole.items():
        np.testing.assert_allclose(a[key] + b[key], v, rtol=1e-5, atol=1e-4)  # float32 map


def test_malformed_multivariate_part_is_a_profile_error(profile: ReferenceProfile) -> None:
    d = profile.to_dict()
    bad_fp = orjson.loads(orjson.dumps(d))
    bad_fp["multivariate"]["statistics"]["mmd_rff"]["fingerprint"] = "0" * 16
    bad_shape = orjson.loads(orjson.dumps(d))
    bad_shape["multivariate"]["statistics"]["covariance"]["cov"] = [[1.0]]
    unknown = orjson.loads(orjson.dumps(d))
    unknown["multivariate"]["encoding"]["numeric"][0]["name"] = "nope"
    for doc in (bad_fp, bad_shape, unknown, {**d, "multivariate": {"version": 99}}):
        with pytest.raises(ProfileError):
            ModelMonitor(ReferenceProfile.from_dict(doc), MonitorConfig(calibration_rounds=0))


# -- calibration ---------------------------------------------------------------------------
def test_no_drift_p_values_and_two_sample_family_are_calibrated() -> None:
    """Over fresh references and independent windows of 5,000: each multivariate p-value is
    uniform (or conservative), and the combined two-sample family (chi-square per column +
    multivariate, Bonferroni) keeps its 0.05 family-wise level."""
    p_values, family = [], []
    for r in range(8):
        prof = mixed_profile(100 + r, n=10_000)
        rng = np.random.default_rng(200 + r)
        for _ in range(25):
            x, cat = mixed_rows(rng, 5000)
            feats: dict[str, Any] = {f"f{i}": x[:, i] for i in range(F)}
            feats["cat"] = cat
            rep = compare(prof, Table(feats, None, {}, None))
            p_values.append([s["p_value"] for s in rep.multivariate])
            family.append(rep.drift)
            assert rep.tests == F + 1 + 3
    p = np.asarray(p_values)
    assert np.all((p[:, :] < 0.1).mean(axis=0) < 0.17)  # 200 windows: 0.1 + 3.5 sd
    assert np.all((p < 0.01).mean(axis=0) < 0.04)
    assert np.mean(family) < 0.1  # family-wise 0.05, 200 windows


def test_evaluate_cli_json_lists_every_statistic(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from driftline.streams.cli.main import app

    rng = np.random.default_rng(4)
    for name, n, rho in (("ref.csv", 4000, RHO), ("cur.csv", 3000, -RHO)):
        x = correlated(rng, n, rho)
        lines = ["a,b,c"] + [f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f}" for r in x]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                   str(tmp_path / "cur.csv"), "--json", "-"])
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.output)
    assert out["drift"] is True and out["tests"] == 3 + 3
    assert not any(f["drift"] for f in out["features"])  # the marginals did not move
    stats_ = {s["name"]: s for s in out["multivariate"]}
    assert set(stats_) == {"mmd_rff", "covariance", "pca_recon"}
    for s in stats_.values():
        assert {"score", "threshold", "p_value", "drift", "top"} <= set(s)
    cov = stats_["covariance"]
    assert cov["drift"] and cov["score"] > cov["threshold"] and cov["top"][0]["name"] == "a:b"

    # the terminal report lists the same statistics with their scores and thresholds
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                   str(tmp_path / "cur.csv")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "multivariate statistics" in res.output
    for name, s in stats_.items():
        line = next(ln for ln in res.output.splitlines() if name in ln)
        assert f"{s['score']:.3g}" in line and f"{s['threshold']:.3g}" in line
        assert ("DRIFT" in line) == s["drift"]
    assert "a:b" in next(ln for ln in res.output.splitlines() if "covariance" in ln)


# -- detection and explanation -------------------------------------------------------------
def test_correlation_flip_is_caught_by_multivariate_and_missed_per_feature(
        profile: ReferenceProfile) -> None:
    """f0-f1 correlation +0.8 -> -0.8 at event 15,000; every marginal is unchanged."""
    rng = np.random.default_rng(21)
    x, cat = mixed_rows(rng, 30_000)
    flipped = correlated(rng, 15_000, -RHO)
    x[15_000:, :2] = flipped[:, :2]
    combined = ModelMonitor(profile)
    per_feature = ModelMonitor(profile, MonitorConfig(multivariate=False))
    hits, uni_hits = [], []
    for k in range(0, 30_000, 700):
        b = mixed_batch(x[k : k + 700], cat[k : k + 700], k)
        hits += firing(combined.update(b))
        uni_hits += firing(per_feature.update(b))
    assert uni_hits == []  # the per-feature chi-square tests see nothing
    assert hits and 15_000 <= hits[0][0] < 17_000  # within two panes of the change
    alert = hits[0][1]
    assert alert.kind == "data" and alert.statistic in ("covariance", "pca_recon", "mmd_rff")
    assert alert.detector == "pane_multivariate"
    names = [f.name for f in alert.top_features if f.score > f.threshold]
    assert "f0:f1" in names  # the covariance pair explains it
    assert {"f0", "f1"} <= set(names)  # and the features that left the principal subspace
    ev = combined.last_evaluations[-1] if combined.last_evaluations else None
    assert ev is None or ev.multivariate is not None
    # per-feature KS + Bonferroni (alibi-detect's KSDrift rule) on the drifted window: silent
    ref_x, _ = mixed_rows(np.random.default_rng(3), 5000)
    window = x[-5000:]
    pks = [stats.ks_2samp(window[:, j], ref_x[:, j], nan_policy="omit").pvalue for j in range(F)]
    assert min(pks) > 0.05 / F


def test_half_sigma_shift_still_named_by_its_feature(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(5)
    x, cat = mixed_rows(rng, 30_000)
    x[20_000:, 7] += 0.5
    mon = ModelMonitor(profile)
    hits = []
    for k in range(0, 30_000, 700):
        hits += firing(mon.update(mixed_batch(x[k : k + 700], cat[k : k + 700], k)))
    after = [(i, a) for i, a in hits if i >= 20_000]
    assert after and after[0][0] < 25_000 and after[0][1].feature == "f7"
    assert all(i >= 20_000 for i, _ in hits)


# -- state ---------------------------------------------------------------------------------
def test_snapshot_round_trip_is_exact_with_multivariate_sums(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(8)
    x, cat = mixed_rows(rng, 12_345)
    x[8000:, 1] = -x[8000:, 1]  # decorrelate (and flip) f1 from f0
    a = ModelMonitor(profile)
    a.update(mixed_batch(x[:6_500], cat[:6_500]))
    blob = a.snapshot()
    b = ModelMonitor(profile, calibration=a.calibration)
    b.restore(blob)
    assert b.snapshot() == blob
    ea = a.update(mixed_batch(x[6_500:], cat[6_500:], 6_500))
    eb = b.update(mixed_batch(x[6_500:], cat[6_500:], 6_500))
    assert len(ea) == len(eb) > 0
    for u, v in zip(ea, eb, strict=True):
        assert u.multivariate is not None and v.multivariate is not None
        np.testing.assert_array_equal(u.multivariate.score, v.multivariate.score)
        np.testing.assert_array_equal(u.multivariate.p_value, v.multivariate.p_value)
        assert [x.alert_id for x in u.alerts] == [x.alert_id for x in v.alerts]
    assert any(e.multivariate is not None and e.multivariate.drift.any() for e in ea)
    assert a.snapshot() == b.snapshot()


def test_non_finite_pane_sums_are_refused(profile: ReferenceProfile) -> None:
    mon = ModelMonitor(profile, MonitorConfig(calibration_rounds=0))
    x, cat = mixed_rows(np.random.default_rng(1), 2500)
    mon.update(mixed_batch(x, cat))
    meta, arrays, _ = unpack(mon.snapshot(), "driftline.monitor")
    arrays["closed.mv_rff"] = np.full_like(arrays["closed.mv_rff"], np.nan)
    with pytest.raises(SnapshotError):
        ModelMonitor(profile, MonitorConfig(calibration_rounds=0)).restore(
            pack("driftline.monitor", meta, arrays))


# -- the shared battery on a mixed profile whose change only the joint statistics see ------
def _battery_case() -> DetectorCase:
    prof = mixed_profile(11, n=10_000)
    cfg = MonitorConfig(calibration_rounds=50)

    def chunks(x: np.ndarray, cat: np.ndarray) -> list[Any]:
        return [mixed_batch(x[k : k + 700], cat[k : k + 700], k) for k in range(0, len(x), 700)]

    def no_drift(rng: np.random.Generator) -> list[Any]:
        return chunks(*mixed_rows(rng, 20_000))

    def drift(rng: np.random.Generator) -> tuple[list[Any], int]:
        x, cat = mixed_rows(rng, 16_000)
        x[10_000:, :2] = correlated(rng, 6_000, -RHO)[:, :2]
        return chunks(x, cat), 10_000

    def positions(det: ModelMonitor, chunk: Any) -> list[int]:
        start = det.ring.seq - len(chunk)
        return [e.index - start for e in det.last_evaluations
                for a in e.alerts if a.state == "firing"]

    def output(det: ModelMonitor, returned: Any) -> Any:
        return [(e.index, e.chi2.round(9).tolist(),
                 None if e.multivariate is None else e.multivariate.score.tolist(),
                 [a.alert_id for a in e.alerts]) for e in returned]

    return DetectorCase(
        name="pane_chi2+multivariate[mixed]",
        make=lambda: ModelMonitor(prof, cfg),
        no_drift=no_drift,
        drift=drift,
        max_delay=3000,
        max_false_alarms=1,
        bad_inputs=[np.zeros(5), "not a batch", None],
        drift_positions=positions,  # type: ignore[arg-type]
        output_of=output,
    )


CASE = _battery_case()


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_battery(check: Callable[[DetectorCase, int], object]) -> None:
    check(CASE, 4)
