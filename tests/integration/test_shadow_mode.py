"""Shadow mode on a real broker: a candidate with a shifted score function is flagged
(a ``shadow`` alert on the alerts topic), an identical one is not, and the status topic
tells ``driftline shadow report`` which one is safe to promote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from integration.test_pipeline import make_settings
from typer.testing import CliRunner
from workers import wait_for

from driftline.streams.admin import ensure_topics
from driftline.streams.cli.main import app
from driftline.streams.cli.shadow import shadow_report
from driftline.streams.producer import DriftlineProducer
from driftline.streams.subscriber import AlertSubscriber
from driftline.streams.worker import topic_specs

pytestmark = pytest.mark.integration


def test_shifted_candidate_flagged_identical_one_safe(
    kafka_bootstrap: str, unique_name: Callable[[str], str], start_worker: Any
) -> None:
    s = make_settings(kafka_bootstrap, unique_name, shadow_min_pairs=1000,
                      shadow_pane_pairs=500)
    ensure_topics(s.kafka(), topic_specs(s))
    w = start_worker(s)
    wait_for(lambda: w.worker.ready, 30, "worker ready")
    rng = np.random.default_rng(8)
    n = 4000
    x = rng.normal(size=(n, 3))
    score = 1.0 / (1.0 + np.exp(-x @ np.array([0.8, -0.5, 0.3])))
    with DriftlineProducer(s.kafka(), s.inference_topic, batch_size=250) as p:
        for i in range(n):
            feats = {"a": float(x[i, 0]), "b": float(x[i, 1]), "c": float(x[i, 2])}
            eid = f"req-{i}"
            assert p.emit("live", feats, float(score[i]), event_id=eid)
            assert p.emit("cand-same", feats, float(score[i]), event_id=eid, shadow_of="live")
            assert p.emit("cand-shift", feats, float(min(score[i] + 0.15, 1.0)), event_id=eid,
                          shadow_of="live")
        assert p.flush(30) == 0
    wait_for(lambda: w.worker.stats.applied >= 3 * n, 90, "events applied")

    def reported() -> list[dict[str, Any]]:
        return shadow_report(s, "live")

    wait_for(lambda: sum(r["pairs_total"] for r in reported()) >= 2 * n, 60,
             "shadow summaries on the status topic")
    alerts = list(AlertSubscriber(s.kafka(), s.alerts_topic, kinds="shadow", timeout=30))
    firing = [a for a in alerts if a.state == "firing"]
    assert [(a.model, a.feature) for a in firing] == [("live", "cand-shift")]
    assert firing[0].score < 0.95 and firing[0].window.n >= 1000

    rows = {r["candidate"]: r for r in reported()}
    assert rows["cand-same"]["verdict"] == "safe" and rows["cand-same"]["agreement"] == 1.0
    assert rows["cand-shift"]["verdict"] == "diverged"
    assert rows["cand-shift"]["score_diff_mean"] > 0.05
    assert rows["cand-same"]["pairs_total"] == rows["cand-shift"]["pairs_total"] == n

    # the command: exit 1 while a candidate diverged, 0 for the safe one alone
    runner = CliRunner()
    env = {"DRIFTLINE_STATUS_TOPIC": s.status_topic}
    res = runner.invoke(app, ["shadow", "report", "--model", "live", "-b", kafka_bootstrap,
                              "--json"], env=env)
    assert res.exit_code == 1, res.output
    verdicts = {c["candidate"]: c["verdict"] for c in orjson.loads(res.output)["candidates"]}
    assert verdicts == {"cand-same": "safe", "cand-shift": "diverged"}
    res = runner.invoke(app, ["shadow", "report", "-m", "live", "-c", "cand-same", "-b",
                              kafka_bootstrap], env=env)
    assert res.exit_code == 0 and "safe" in res.output, res.output
    w.stop()
