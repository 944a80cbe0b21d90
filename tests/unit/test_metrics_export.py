"""What a worker's registry exports after real evaluations: per-column and multivariate
statistics, their thresholds, and their removal when a model leaves."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from driftline.detectors.monitor import MonitorConfig
from driftline.schemas.codecs import encode_envelope_rows
from driftline.schemas.limits import Limits
from driftline.streams.metrics import MULTIVARIATE_FEATURE, WorkerMetrics
from driftline.streams.processor import Incoming, Processor
from driftline.streams.synthetic import SyntheticModels

MV_STATISTICS = {"mmd_rff", "covariance", "pca_recon"}


def _run(multivariate: bool) -> tuple[Processor, WorkerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    proc = Processor(config=MonitorConfig(pane_size=500, min_samples=1000, calibration_rounds=50,
                                          multivariate=multivariate),
                     limits=Limits(), metrics=metrics, auto_reference_events=2000)
    gen = SyntheticModels(1, n_features=6, seed=4)
    model = gen.models[0]
    msgs = []
    for off in range(16):  # 2,000 reference events, then 2,000 events = 4 panes
        evs = [{k: v for k, v in e.items() if k != "model"} for e in gen.events(model, 250)]
        msgs.append(Incoming("inference", 0, off, encode_envelope_rows(model, evs)))
    proc.process(msgs)
    return proc, metrics, registry


def _series(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == name:
                out[(s.labels["feature"], s.labels["statistic"])] = s.value
    return out


def test_multivariate_statistics_are_exported_as_a_pseudo_feature() -> None:
    _, metrics, registry = _run(multivariate=True)
    scores = _series(registry, "driftline_drift_score")
    thresholds = _series(registry, "driftline_drift_threshold")
    mv_scores = {stat: v for (feat, stat), v in scores.items() if feat == MULTIVARIATE_FEATURE}
    mv_thresholds = {stat: v for (feat, stat), v in thresholds.items()
                     if feat == MULTIVARIATE_FEATURE}
    assert set(mv_scores) == set(mv_thresholds) == MV_STATISTICS
    assert all(math.isfinite(v) and v >= 0 for v in mv_scores.values())
    assert all(math.isfinite(v) and v > 0 for v in mv_thresholds.values())
    # no drift in this stream: every statistic sits below its calibrated threshold
    assert all(mv_scores[s] < mv_thresholds[s] for s in MV_STATISTICS), (mv_scores, mv_thresholds)
    # the per-column series are still there, one chi2/psi/js per feature
    columns = {feat for feat, stat in scores if stat == "chi2"}
    assert MULTIVARIATE_FEATURE not in columns and len(columns) >= 6

    metrics.forget_model("model-0")
    assert _series(registry, "driftline_drift_score") == {}
    assert _series(registry, "driftline_drift_threshold") == {}


def test_no_multivariate_series_when_the_statistics_are_off() -> None:
    _, _, registry = _run(multivariate=False)
    scores = _series(registry, "driftline_drift_score")
    assert scores and all(feat != MULTIVARIATE_FEATURE for feat, _ in scores)


def test_multivariate_setting_reaches_the_monitor_config(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from driftline.streams.settings import Settings

    assert Settings().monitor_config().multivariate is True
    for value, expected in (("off", False), ("on", True), ("false", False), ("1", True)):
        monkeypatch.setenv("DRIFTLINE_MULTIVARIATE", value)
        assert Settings().monitor_config().multivariate is expected


def test_alert_counters_exist_at_zero_before_the_first_alert() -> None:
    _, _, registry = _run(multivariate=True)
    counters = {(s.labels["kind"], s.labels["state"]): s.value
                for family in registry.collect() for s in family.samples
                if s.name == "driftline_alerts_total"}
    # no drift in the stream: every kind of the model is there, at zero
    assert counters == {("data", "firing"): 0.0, ("data", "resolved"): 0.0,
                        ("prediction", "firing"): 0.0, ("prediction", "resolved"): 0.0,
                        ("quality", "firing"): 0.0, ("quality", "resolved"): 0.0}


def test_concept_and_shadow_counters_exist_at_zero_before_their_first_alert() -> None:
    """The label join and the shadow pairing make their kinds' counters at 0 when they
    first run for a model, so that its first concept or shadow alert is an increase."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.expect_alerts("m", ("concept", "shadow"))
    metrics.alerts.labels("m", "concept", "firing").inc()
    counters = {(s.labels["kind"], s.labels["state"]): s.value
                for family in registry.collect() for s in family.samples
                if s.name == "driftline_alerts_total"}
    assert counters == {("concept", "firing"): 1.0, ("concept", "resolved"): 0.0,
                        ("shadow", "firing"): 0.0, ("shadow", "resolved"): 0.0}


def test_forgetting_a_model_removes_its_table_series_and_keeps_the_others() -> None:
    """The score, threshold, segment and quality tables forget a model by its label: every
    series of the model goes, every series of another model stays."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    for model in ("gone", "kept"):
        metrics.score.set_many([((model, "f0", "chi2"), 1.0), ((model, "f1", "psi"), 0.5)])
        metrics.threshold.set_many([((model, "f0", "chi2"), 9.0)])
        metrics.segment_score.set_many([((model, "region=eu", "f0"), 2.0)])
        metrics.quality.set_many([((model, "f0", "missing"), 0.1)])
    metrics.forget_model("gone")
    text = generate_latest(registry).decode()
    assert 'model="gone"' not in text
    for name in ("driftline_drift_score", "driftline_drift_threshold",
                 "driftline_segment_drift_score", "driftline_quality_metric"):
        assert any(line.startswith(name + "{") and 'model="kept"' in line
                   for line in text.splitlines()), name
