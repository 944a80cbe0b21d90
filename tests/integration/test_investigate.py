"""``driftline investigate`` against a real broker: drift confined to one segment."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from driftline.detectors.reference import build_profile
from driftline.schemas.codecs import encode_change, encode_envelope_rows
from driftline.streams.admin import ensure_topics
from driftline.streams.cli.main import app
from driftline.streams.settings import Settings
from driftline.streams.worker import topic_specs

pytestmark = pytest.mark.integration

F = 6
REGIONS = ("eu", "us", "apac", "latam")
N, START, STEP = 24_000, 12_000, 0.05  # events, first drifted event, seconds between events


def test_investigate_finds_the_segment_drift_its_start_and_the_change_before_it(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    prefix = unique_name("inv")
    s = Settings(bootstrap_servers=kafka_bootstrap, inference_topic=f"{prefix}.inference",
                 references_topic=f"{prefix}.references", changes_topic=f"{prefix}.changes",
                 partitions=2)
    ensure_topics(s.kafka(), topic_specs(s))
    model = "churn"
    rng = np.random.default_rng(21)
    ref = rng.normal(size=(20_000, F))
    profile = build_profile(model, {f"f{i}": ref[:, i] for i in range(F)}, source="test")

    t0 = time.time() - 1800.0
    x = rng.normal(size=(N, F))
    region = rng.integers(0, len(REGIONS), N)
    eu_drifted = (region == 0) & (np.arange(N) >= START)
    x[eu_drifted, 3] += 0.5
    ts = t0 + STEP * np.arange(N)
    true_start = float(ts[START])

    p = Producer(s.kafka())
    p.produce(s.references_topic, profile.to_json(), model.encode())
    for k in range(0, N, 500):
        events = [{"ts": float(ts[i]), "features": {f"f{j}": float(v) for j, v in enumerate(x[i])},
                   "segment": {"region": REGIONS[region[i]], "user": f"u{i}"}}
                  for i in range(k, k + 500)]
        p.produce(s.inference_topic, encode_envelope_rows(model, events), model.encode())
    for kind, at, text in (("pipeline", t0 - 60, "nightly backfill"),
                           ("deploy", true_start - 25, "feature store v2 for eu"),
                           ("schema", true_start + 400, "added a column later")):
        p.produce(s.changes_topic, encode_change({"model": model, "kind": kind, "ts": at,
                                                  "text": text}), model.encode())
    p.produce(s.changes_topic, encode_change({"model": "other", "kind": "deploy",
                                              "ts": true_start - 1, "text": "not this model"}))
    p.produce(s.changes_topic, b"{not a change event")
    assert p.flush(30) == 0
    del p  # no client left to reconnect once the broker stops

    env = {"DRIFTLINE_INFERENCE_TOPIC": s.inference_topic,
           "DRIFTLINE_REFERENCES_TOPIC": s.references_topic,
           "DRIFTLINE_CHANGES_TOPIC": s.changes_topic}
    report = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["investigate", "--model", model, "--segment", "region=eu",
                                   "--since", "1h", "--bootstrap", kafka_bootstrap, "--json",
                                   "--html", str(report)], env=env)
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    n_eu = int((region == 0).sum())
    assert out["n_events"] == n_eu and out["segment"] == {"region": "eu"}
    assert out["drifted_features"] == ["f3"] and out["top_feature"] == "f3"
    assert not out["prediction_drift"]
    cp = out["change_point"]
    true_pane = int((region[:START] == 0).sum()) // out["pane_size"]
    assert cp["significant"] and abs(cp["pane"] - true_pane) <= 1, (cp, true_pane)
    assert abs(cp["ts"] - true_start) <= out["pane_size"] * STEP * len(REGIONS) * 1.5
    assert [c["text"] for c in out["changes"]] == ["feature store v2 for eu", "nightly backfill"]
    assert out["changes"][0]["kind"] == "deploy"
    page = report.read_text()
    assert "f3" in page and "feature store v2 for eu" in page
    # the terminal summary: the drifted column first, with every statistic of the JSON
    res = CliRunner().invoke(app, ["investigate", "--model", model, "--segment", "region=eu",
                                   "--since", "1h", "--bootstrap", kafka_bootstrap],
                             env={**env, "COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    header = next(line for line in res.output.splitlines() if "chi2" in line)
    assert all(col in header for col in ("p-value", "PSI", "JS", "KS")), header
    first = next(line for line in res.output.splitlines() if "DRIFT" in line)
    assert "f3" in first, res.output

    # the other segments did not drift
    res = CliRunner().invoke(app, ["investigate", "--model", model, "--segment", "region=us",
                                   "--bootstrap", kafka_bootstrap, "--json"], env=env)
    assert res.exit_code == 0, res.output
    us = orjson.loads(res.stdout)
    assert us["n_events"] == int((region == 1).sum()) and us["drifted_features"] == []
