"""The FastAPI example server, run in-process, emits its predictions onto a real topic."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pytest
from envelopes import as_rows

from driftline.streams.admin import TopicSpec, ensure_topics, iter_to_end

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("sklearn")
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parents[2] / "examples" / "fastapi_model_server" / "app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("driftline_example_fastapi_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the request models through it
    spec.loader.exec_module(module)
    return module


def read_events(config: dict[str, str], topic: str) -> list[dict[str, Any]]:
    """Every event of every envelope on ``topic``, with its envelope's model fields."""
    events: list[dict[str, Any]] = []
    for msg in iter_to_end(config, topic):
        env = as_rows(orjson.loads(msg.value()))
        assert msg.key().decode() == env["model"]
        events += [{**ev, "model": env["model"], "model_version": env.get("model_version")}
                   for ev in env["events"]]
    return events


def test_predictions_are_emitted_to_the_topic(
    kafka_client_config: dict[str, str], unique_name: Any
) -> None:
    topic = unique_name("inference")
    ensure_topics(kafka_client_config, [TopicSpec(topic, 2)])
    example = load_example()
    app = example.create_app(kafka_client_config, topic, model_id="credit-risk")
    x = np.random.default_rng(3).normal(size=(50, 20))
    with TestClient(app) as client:
        answers = []
        for row in x:
            r = client.post("/predict", json={"features": row.tolist(),
                                              "segment": {"region": "eu"}})
            assert r.status_code == 200
            answers.append(r.json())
        assert client.post("/predict", json={"features": [1.0] * 19}).status_code == 422
        health = client.get("/healthz").json()
        assert health["driftline"]["emitted"] == 50 and health["driftline"]["dropped"] == 0
    # leaving the client ran the lifespan shutdown: the producer flushed and closed

    events = {ev["event_id"]: ev for ev in read_events(kafka_client_config, topic)}
    assert set(events) == {a["event_id"] for a in answers} and len(events) == 50
    for row, answer in zip(x, answers, strict=True):
        ev = events[answer["event_id"]]
        assert (ev["model"], ev["model_version"]) == ("credit-risk", "v1")
        assert ev["features"] == {f"f{i}": float(v) for i, v in enumerate(row)}
        assert ev["prediction"] == answer["score"]
        assert answer["label"] == int(answer["score"] >= 0.5)
        assert ev["segment"] == {"region": "eu"} and ev["outcome"] == "ok"
        assert ev["latency_ms"] >= 0 and abs(ev["ts"] - time.time()) < 300
