"""References kept without their feature samples: the same detection, never serialised."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from driftline.detectors.errors import ProfileError
from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import NumericProfile, ReferenceProfile, build_profile
from driftline.schemas.codecs import decode_inference, encode_alert, encode_envelope_rows
from driftline.schemas.limits import Limits
from driftline.schemas.models import EventBatch
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_state import ModelState
from driftline.streams.processor import Incoming, Processor
from driftline.streams.synthetic import DriftSpec, SyntheticModels

TOPIC = "inference"
CONFIG = MonitorConfig(pane_size=500, min_samples=1000, calibration_rounds=50)


def processor() -> Processor:
    return Processor(config=CONFIG, limits=Limits(), metrics=WorkerMetrics(CollectorRegistry()),
                     auto_reference_events=2000)


def envelopes(gen: SyntheticModels, rounds: int, per: int = 250) -> list[Incoming]:
    msgs, off = [], 0
    for _ in range(rounds):
        for m in gen.models:
            evs = [{k: v for k, v in e.items() if k != "model"} for e in gen.events(m, per)]
            msgs.append(Incoming(TOPIC, 0, off, encode_envelope_rows(m, evs)))
            off += 1
    return msgs


def mixed_reference() -> ReferenceProfile:
    """Numeric and categorical features, a score in [0, 1], the multivariate part."""
    rng = np.random.default_rng(4)
    n = 3000
    x = rng.normal(size=(n, 3))
    return build_profile(
        "m", {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
              "kind": rng.choice(["x", "y", "z"], n).tolist()},
        prediction=1.0 / (1.0 + np.exp(-x[:, 0])), created_at=1.0)


def test_without_samples_drops_only_the_feature_samples() -> None:
    full = mixed_reference()
    slim = full.without_samples()
    assert slim.samples_dropped and not full.samples_dropped
    assert slim.reference_id == full.reference_id and slim.model == full.model
    assert slim.multivariate is full.multivariate and slim.size == full.size
    for a, b in zip(full.columns, slim.columns, strict=True):
        assert a.name == b.name and np.array_equal(a.counts, b.counts)
        if isinstance(a, NumericProfile):
            assert isinstance(b, NumericProfile)
            assert a.sample.size == 3000 and b.sample.size == 0
            assert np.array_equal(a.edges, b.edges)
            assert (a.mean, a.std, a.min, a.max) == (b.mean, b.std, b.min, b.max)
        else:
            assert b is a
    assert slim.prediction is full.prediction  # the confidence baseline reads its sample
    assert isinstance(slim.prediction, NumericProfile) and slim.prediction.sample.size == 3000
    assert slim.without_samples() is slim
    # the full profile is untouched: it still round-trips
    assert ReferenceProfile.from_json(full.to_json()).to_json() == full.to_json()


def test_a_profile_without_samples_refuses_to_serialise() -> None:
    slim = mixed_reference().without_samples()
    with pytest.raises(ProfileError, match="no feature samples"):
        slim.to_json()
    with pytest.raises(ProfileError, match="no feature samples"):
        slim.to_dict()


def _plain(x: Any) -> Any:
    """An evaluation as nested dicts, lists and arrays, every object by its fields."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if hasattr(x, "__dict__") and not isinstance(x, np.ndarray):
        return {"type": type(x).__name__, **_plain(vars(x))}
    return x


def _evaluations(ref: ReferenceProfile, batches: list[EventBatch]
                 ) -> tuple[list[Any], ModelMonitor]:
    mon = ModelMonitor(ref, CONFIG)
    evals = []
    for b in batches:
        evals += mon.update(b)
    return [_plain(e) for e in evals], mon


def test_monitor_evaluations_are_identical_without_samples() -> None:
    gen = SyntheticModels(1, seed=11, drift=(DriftSpec("model-0", "f4", 9000, 0.5),))
    head = processor().process(envelopes(gen, 8))  # the reference: the first 2,000 events
    (full,) = head.references
    msgs = envelopes(gen, 40)
    batches = [decode_inference([m.value], limits=Limits(), topic=TOPIC, partitions=[0],
                                offsets=[m.offset], timestamps=[float("nan")]
                                ).batches["model-0"] for m in msgs]
    with_samples, mon_full = _evaluations(full, batches)
    without, mon_slim = _evaluations(full.without_samples(), batches)
    assert mon_full.confidence is not None and mon_slim.confidence is not None
    assert mon_slim.confidence.base_n == mon_full.confidence.base_n == 2000
    assert len(without) == len(with_samples) > 20  # the model's and its segments'
    np.testing.assert_equal(without, with_samples)  # NaNs equal, arrays exactly
    assert any(a["state"] == "firing" for e in without for a in e["alerts"])
    assert mon_slim.snapshot() == mon_full.snapshot()


def test_processor_detection_is_identical_with_slim_references() -> None:
    gen = SyntheticModels(2, seed=7, drift=(DriftSpec("model-0", "f3", 5000, 0.6),
                                            DriftSpec("model-1", "f5", 7000, 1.0)))
    refs = {r.model: r for r in processor().process(envelopes(gen, 8)).references}
    assert len(refs) == 2
    rest = envelopes(gen, 40)
    full_p, slim_p = processor(), processor()
    for r in refs.values():
        full_p.references[r.model] = r  # what the processor held before: the full profile
        assert slim_p.set_reference(r)
    out_full, out_slim = full_p.process(rest), slim_p.process(rest)
    assert [encode_alert(a) for a in out_slim.alerts] == [encode_alert(a) for a in out_full.alerts]
    assert {a.model for a in out_slim.alerts if a.state == "firing"} == {"model-0", "model-1"}
    assert out_slim.applied == out_full.applied == 2 * 40 * 250
    assert sorted(slim_p.models) == sorted(full_p.models)
    for key, st in slim_p.models.items():
        assert st.reference is not None and st.reference.samples_dropped
        assert st.snapshot() == full_p.models[key].snapshot()


def test_processor_holds_slim_references_and_outputs_full_ones() -> None:
    gen = SyntheticModels(1, seed=1)
    p = processor()
    out = p.process(envelopes(gen, 12))
    (full,) = out.references
    assert not full.samples_dropped
    assert all(c.sample.size == 2000 for c in full.columns if isinstance(c, NumericProfile))
    assert ReferenceProfile.from_json(full.to_json()).reference_id == full.reference_id
    held = p.references["model-0"]
    assert held.samples_dropped and held.reference_id == full.reference_id
    assert all(c.sample.size == 0 for c in held.columns if isinstance(c, NumericProfile))
    st = p.models["model-0@0"]
    assert st.reference is held and st.monitor is not None and st.monitor.reference is held
    # a snapshot names the reference; the restore gets the processor's (slim) copy
    restored = ModelState.restore(st.snapshot(), held, CONFIG)
    assert restored.snapshot() == st.snapshot() and restored.reference is held
    # a reference from the topic is kept slim too; the same one again changes nothing
    q = processor()
    assert q.set_reference(full) and q.references["model-0"].samples_dropped
    kept = q.references["model-0"]
    assert not q.set_reference(full) and q.references["model-0"] is kept
