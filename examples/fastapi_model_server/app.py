"""A FastAPI model server that reports every prediction to driftline.

At startup it trains a small scikit-learn classifier on synthetic data (20 numeric
features, no downloads) and opens a :class:`DriftlineProducer`; ``POST /predict``
answers a prediction and emits the inference event without waiting on Kafka; shutdown
flushes and closes the producer. Kafka settings come from ``DRIFTLINE_*`` variables
(``DRIFTLINE_BOOTSTRAP_SERVERS``, ``DRIFTLINE_INFERENCE_TOPIC``, security settings).

Run: ``DRIFTLINE_BOOTSTRAP_SERVERS=127.0.0.1:9092 uvicorn app:app``
"""

import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from driftline.streams.producer import DriftlineProducer

N_FEATURES = 20
FEATURE_NAMES = tuple(f"f{i}" for i in range(N_FEATURES))


class PredictRequest(BaseModel):
    features: Annotated[list[float], Field(min_length=N_FEATURES, max_length=N_FEATURES)]
    segment: dict[str, str] | None = None


class PredictResponse(BaseModel):
    event_id: str  # send the ground truth later as a LabelEvent with this id
    model: str
    model_version: str
    label: int
    score: float


def train_model(seed: int = 7) -> Pipeline:
    """A logistic regression on synthetic data: the same model on every start."""
    x, y = make_classification(n_samples=5000, n_features=N_FEATURES, n_informative=8,
                               n_redundant=4, random_state=seed)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)


def create_app(
    kafka_config: Mapping[str, Any] | None = None,
    topic: str | None = None,
    *,
    model_id: str | None = None,
    model_version: str = "v1",
) -> FastAPI:
    """The app; Kafka settings default to :class:`driftline.streams.settings.Settings`."""
    model_id = model_id or os.environ.get("DRIFTLINE_EXAMPLE_MODEL", "credit-risk")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config, inference_topic = kafka_config, topic
        if config is None or inference_topic is None:
            from driftline.streams.settings import Settings

            settings = Settings()
            config = config if config is not None else settings.kafka()
            inference_topic = inference_topic or settings.inference_topic
        app.state.model = train_model()
        with DriftlineProducer(config, inference_topic) as producer:
            app.state.producer = producer
            yield
        # leaving the `with` flushed and closed the producer

    app = FastAPI(title="driftline example model server", lifespan=lifespan)

    @app.post("/predict", response_model=PredictResponse)
    def predict(body: PredictRequest, request: Request) -> PredictResponse:
        t0 = time.perf_counter()
        x = np.asarray(body.features, dtype=np.float64).reshape(1, -1)
        score = float(request.app.state.model.predict_proba(x)[0, 1])
        latency_ms = (time.perf_counter() - t0) * 1000.0
        event_id = uuid.uuid4().hex
        request.app.state.producer.emit(
            model_id,
            dict(zip(FEATURE_NAMES, body.features, strict=True)),
            score,
            event_id=event_id,
            segment=body.segment,
            latency_ms=latency_ms,
            model_version=model_version,
            outcome="ok",
        )  # non-blocking; returns False (and counts it) if the SDK's buffer is full
        return PredictResponse(event_id=event_id, model=model_id, model_version=model_version,
                               label=int(score >= 0.5), score=score)

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, Any]:
        return {"status": "ok", "driftline": asdict(request.app.state.producer.stats())}

    return app


app = create_app()
