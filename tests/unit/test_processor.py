"""The transport-free batch processor: exactly-once effect, dead letters, limits."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.schemas.codecs import encode_envelope_rows
from driftline.schemas.limits import Limits
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_state import ModelState
from driftline.streams.processor import Incoming, Processor
from driftline.streams.synthetic import DriftSpec, SyntheticModels

TOPIC = "inference"


def processor(**kw: object) -> Processor:
    args: dict[str, object] = dict(
        config=MonitorConfig(pane_size=500, min_samples=1000, calibration_rounds=50),
        limits=Limits(), metrics=WorkerMetrics(CollectorRegistry()), auto_reference_events=2000)
    args.update(kw)
    return Processor(**args)  # type: ignore[arg-type]


def envelopes(gen: SyntheticModels, rounds: int, per: int = 250, partition_of=None):
    msgs, off = [], {}
    for _ in range(rounds):
        for m in gen.models:
            p = partition_of(m) if partition_of else 0
            evs = [{k: v for k, v in e.items() if k != "model"} for e in gen.events(m, per)]
            o = off.get(p, 0)
            off[p] = o + 1
            msgs.append(Incoming(TOPIC, p, o, encode_envelope_rows(m, evs)))
    return msgs


def test_replayed_messages_are_applied_once() -> None:
    gen = SyntheticModels(2, seed=3)
    msgs = envelopes(gen, 40, partition_of=lambda m: int(m[-1]))
    p = processor()
    first = p.process(msgs[:50])
    again = p.process(msgs[:60])  # a replay from an older committed offset
    rest = p.process(msgs[60:])
    assert first.applied == 50 * 250
    assert again.applied == 10 * 250 and again.skipped_replays == 50 * 250
    assert first.applied + again.applied + rest.applied == 80 * 250
    assert {st.model: st.events_applied for st in p.models.values()} == {"model-0": 10_000,
                                                                          "model-1": 10_000}


def test_reference_built_from_exactly_the_first_n_events() -> None:
    gen = SyntheticModels(1, seed=1)
    p = processor()
    msgs = envelopes(gen, 3, per=1500)  # the second envelope straddles N = 2,000
    out = p.process(msgs)
    (ref,) = out.references
    assert ref.size == 2000 and ref.source == "first-events"
    st = p.models["model-0@0"]
    assert st.monitor is not None and st.monitor.ring.seq == 2500
    assert st.events_applied == 4500


def _wide(model: str, rng: np.random.Generator, n: int, names: list[str]) -> bytes:
    x = rng.normal(size=(n, len(names)))
    return encode_envelope_rows(model, [{"features": dict(zip(names, row.tolist(), strict=True))}
                                        for row in x])


def test_wide_events_fill_the_reference_buffer_with_fewer_rows() -> None:
    """200 numeric features: 5,000 buffered events would snapshot to ~17 MB, past the
    16 MiB a state record may be. The buffer holds at most PENDING_BYTES_MAX; the
    reference is built from the events that fit, the rest of the batch goes on to the
    windows, and every event is counted once."""
    from driftline.streams.model_state import PENDING_BYTES_MAX

    rng = np.random.default_rng(2)
    names = [f"f{i}" for i in range(200)]
    p = processor(auto_reference_events=5000)
    sizes = []
    for k in range(30):
        out = p.process([Incoming(TOPIC, 0, k, _wide("wide", rng, 100, names))])
        st = p.models["wide@0"]
        sizes.append(len(st.snapshot()))
        if out.references:
            (ref,) = out.references
    assert max(sizes) < PENDING_BYTES_MAX + 2**20
    assert 1500 < ref.size < 5000 and len(ref.columns) == 200
    st = p.models["wide@0"]
    assert st.events_applied == 3000 and st.pending_rows == 0
    assert st.monitor is not None and st.monitor.ring.seq == 3000 - ref.size


def test_feature_names_changing_every_event_cannot_grow_the_buffer() -> None:
    """Each batch brings 512 new names (one value per event): the dense buffer would grow
    by ~16 MiB a batch. It stops at its size bound and the reference is built."""
    rng = np.random.default_rng(3)
    p = processor(auto_reference_events=5000)
    for k in range(3):
        evs = [{"features": {f"n{k}_{i % 512}": float(rng.normal())}} for i in range(2000)]
        p.process([Incoming(TOPIC, 0, k, encode_envelope_rows("churn", evs))])
    st = p.models["churn@0"]
    assert st.reference is not None and st.pending_rows == 0 and st.events_applied == 6000
    assert len(st.snapshot()) < 2**20


def test_snapshot_round_trip_of_model_state_is_exact() -> None:
    gen = SyntheticModels(1, seed=5, drift=(DriftSpec("model-0", "f2", 6000, 1.0),))
    msgs = envelopes(gen, 40)
    a = processor()
    a.process(msgs[:20])
    st = a.models["model-0@0"]
    blob = st.snapshot()
    restored = ModelState.restore(blob, st.reference, a.config)
    assert restored.snapshot() == blob
    b = processor(snapshot_loader={"model-0@0": blob}.get)
    b.references["model-0"] = st.reference  # as read from the references topic
    out_a = a.process(msgs[20:])
    out_b = b.process(msgs[20:])
    assert [x.alert_id for x in out_a.alerts] == [x.alert_id for x in out_b.alerts]
    assert out_a.alerts, "the drift after 6,000 events should alert"
    assert a.models["model-0@0"].snapshot() == b.models["model-0@0"].snapshot()


def test_a_restored_state_republishes_its_firing_alerts_and_resolves_them_by_name() -> None:
    """A worker restart or partition move: the new worker's driftline_drift_state is 1 for
    the alerts still firing, with the feature they fired with; the resolution later names
    that same feature (and so sets that series to 0), whichever column leads then."""
    from prometheus_client import generate_latest

    gen = SyntheticModels(1, seed=5, drift=(DriftSpec("model-0", "f2", 6000, 1.0),))
    a = processor()
    fired = [x for x in a.process(envelopes(gen, 40)).alerts if x.state == "firing"]
    assert fired and fired[0].feature == "f2"
    st = a.models["model-0@0"]
    assert st.monitor is not None and ("data", "f2") in st.monitor.firing_alerts()
    reg = CollectorRegistry()
    b = processor(snapshot_loader={"model-0@0": st.snapshot()}.get, metrics=WorkerMetrics(reg))
    b.references["model-0"] = st.reference
    assert b.state_of("model-0", 0) is not None
    text = generate_latest(reg).decode()
    assert 'driftline_drift_state{feature="f2",kind="data",model="model-0"} 1.0' in text
    mon = b.models["model-0@0"].monitor
    assert mon is not None
    back = ModelState.restore(b.models["model-0@0"].snapshot(), st.reference, b.config)
    assert back.monitor is not None and back.monitor.firing_features == mon.firing_features
    # the drift ends: the alert resolves under the feature it fired with
    calm = SyntheticModels(1, seed=5)  # the same distribution, no drift
    resolved = [x for k in range(20) for x in b.process(
        [Incoming(TOPIC, 0, 1000 + k, m.value) for m in envelopes(calm, 1)]).alerts
        if x.state == "resolved" and x.kind == "data" and x.segment is None]
    assert resolved and resolved[0].feature == "f2"
    text = generate_latest(reg).decode()
    assert 'driftline_drift_state{feature="f2",kind="data",model="model-0"} 0.0' in text


def test_segment_calibration_is_computed_when_a_reference_arrives_once_per_reference(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The small-window bootstrap of segment windows (~20 ms a model) runs when the
    reference is set, once for all of the model's partitions and its restored states;
    never at a first segment evaluation, where it held up that batch."""
    gen = SyntheticModels(1, seed=4)
    built = processor()
    built.process(envelopes(gen, 10))
    ref = built.references["model-0"]
    calls: list[str] = []
    real = ModelMonitor.small_window_scale

    def counted(self: ModelMonitor) -> np.ndarray:
        calls.append(self.reference.reference_id)
        return real(self)

    monkeypatch.setattr(ModelMonitor, "small_window_scale", counted)
    p = processor()
    assert p.set_reference(ref) and calls == [ref.reference_id]
    states = [p.state_of("model-0", part) for part in (0, 1, 2)]
    snapshot = states[0].snapshot()  # type: ignore[union-attr]
    q = processor(snapshot_loader={"model-0@0": snapshot}.get)
    q._small_scales = p._small_scales  # the same worker's cache
    q.references["model-0"] = ref
    states.append(q.state_of("model-0", 0))  # restored from its snapshot
    assert calls == [ref.reference_id]
    lazy = ModelMonitor(ref, p.config).segment_calibration  # computed at first use
    for st in states:
        assert st is not None and st.monitor is not None
        assert st.monitor._segment_calibration is not None  # set already
        assert np.array_equal(st.monitor.segment_calibration.scale, lazy.scale)


def test_pending_reference_buffer_survives_a_restart() -> None:
    gen = SyntheticModels(1, seed=2)
    msgs = envelopes(gen, 12)
    a = processor()
    a.process(msgs[:4])  # 1,000 of 2,000 reference events
    blob = a.models["model-0@0"].snapshot()
    b = processor(snapshot_loader={"model-0@0": blob}.get)
    out = b.process(msgs[4:8])
    assert len(out.references) == 1 and out.references[0].size == 2000
    ref_a = a.process(msgs[4:8]).references[0]
    assert ref_a.reference_id == out.references[0].reference_id


def test_bad_input_is_dead_lettered_and_counted_once() -> None:
    p = processor()
    bad = [Incoming(TOPIC, 0, 0, b"{oops"), Incoming(TOPIC, 0, 1, b"[]"),
           Incoming(TOPIC, 0, 2, orjson.dumps({"model": "m", "features": {"x": {"a": 1}}}))]
    out = p.process(bad)
    assert len(out.dead_letters) == 3
    assert all(d.reason and d.offset in (0, 1, 2) for d in out.dead_letters)
    again = p.process(bad)
    assert again.dead_letters == [] and again.skipped_replays == 3
    total = sum(st.events_deadlettered for st in p.models.values())
    assert total == 3


def test_model_limit_dead_letters_new_models() -> None:
    p = processor(max_models=2)
    gen = SyntheticModels(3, seed=0)
    out = p.process(envelopes(gen, 1))
    assert sorted(st.model for st in p.models.values() if not st.model.startswith("~")) == [
        "model-0", "model-1"]
    assert [d.reason.split(":")[0] for d in out.dead_letters] == ["too_many_models"]


def test_model_limit_counts_models_not_states_and_frees_on_drop() -> None:
    """One model on two partitions is one model of the budget; dropping a model's last
    state frees its place."""
    p = processor(max_models=2)
    gen = SyntheticModels(3, seed=0)
    p.process(envelopes(gen, 1, partition_of=lambda m: 0)[:1])  # model-0 on partition 0
    p.process([Incoming(TOPIC, 1, 0, m.value) for m in envelopes(gen, 1)[:2]])  # 0 and 1 on 1
    assert sorted(p.models) == ["model-0@0", "model-0@1", "model-1@1"]
    out = p.process([Incoming(TOPIC, 2, 0, envelopes(gen, 1)[2].value)])
    assert [d.reason.split(":")[0] for d in out.dead_letters] == ["too_many_models"]
    p.drop(["model-0@0"])  # model-0 still has partition 1: no place is free
    out = p.process([Incoming(TOPIC, 2, 1, envelopes(gen, 1)[2].value)])
    assert [d.reason.split(":")[0] for d in out.dead_letters] == ["too_many_models"]
    p.drop(["model-0@1"])
    out = p.process([Incoming(TOPIC, 2, 2, envelopes(gen, 1)[2].value)])
    assert out.dead_letters == [] and "model-2@2" in p.models


def test_candidates_beyond_the_limit_are_counted_for_their_live_model() -> None:
    """Two candidates of one live model, one allowed: the second's events are not paired,
    counted in driftline_shadow_ignored_total{model=live}, and its series go with the
    live model's."""
    from prometheus_client import generate_latest

    from driftline.detectors.shadow import ShadowConfig

    reg = CollectorRegistry()
    p = processor(metrics=WorkerMetrics(reg), shadow=ShadowConfig(max_candidates=1))
    live = [{"features": {"a": 0.1 * j}, "prediction": 0.5, "event_id": str(j)}
            for j in range(30)]
    msgs = [Incoming(TOPIC, 0, 0, encode_envelope_rows("live", live))]
    for k, cand in enumerate(("cand-a", "cand-b")):
        evs = [{**e, "shadow_of": "live"} for e in live]
        msgs.append(Incoming(TOPIC, 0, 1 + k, encode_envelope_rows(cand, evs)))
    out = p.process(msgs)
    assert out.dead_letters == [] and out.applied == 90
    book = p.models[next(k for k, st in p.models.items() if st.model == "live")].shadow
    assert book is not None and list(book.candidates) == ["cand-a"] and book.ignored == 30
    text = generate_latest(reg).decode()
    assert 'driftline_shadow_ignored_total{model="live"} 30.0' in text
    assert 'driftline_shadow_pairs_total{candidate="cand-a",model="live"} 30.0' in text
    p.drop([k for k, st in p.models.items() if st.model == "live"])
    assert "driftline_shadow_ignored_total{" not in generate_latest(reg).decode()


def test_shadow_of_a_model_never_seen_makes_no_live_state() -> None:
    """Candidates naming live models that send nothing are monitored and counted
    unpaired; they do not take the budget, and real models still get theirs."""
    from prometheus_client import generate_latest

    reg = CollectorRegistry()
    p = processor(max_models=5, metrics=WorkerMetrics(reg))
    rng = np.random.default_rng(0)
    msgs = []
    for i in range(20):
        evs = [{"features": {"a": float(rng.normal())}, "prediction": 0.5, "event_id": str(j),
                "shadow_of": f"ghost-{i}"} for j in range(10)]
        msgs.append(Incoming(TOPIC, 0, i, encode_envelope_rows("cand", evs)))
    out = p.process(msgs)
    assert out.dead_letters == [] and out.applied == 200
    assert [st.model for st in p.models.values()] == ["cand"]
    text = generate_latest(reg).decode()
    assert 'driftline_shadow_without_live_total{model="cand"} 200.0' in text
    gen = SyntheticModels(4, seed=1)
    out = p.process([Incoming(TOPIC, 0, 20 + k, m.value) for k, m in enumerate(envelopes(gen, 1))])
    assert out.dead_letters == [] and len(p.models) == 5


def test_detector_error_is_dead_lettered_and_the_partition_keeps_flowing() -> None:
    gen = SyntheticModels(2, seed=0)
    p = processor()
    p.process(envelopes(gen, 8))
    st = p.models["model-0@0"]

    def boom(batch: object) -> list[object]:
        raise ValueError("reference/feature mismatch")

    st.monitor.update = boom  # type: ignore[method-assign,union-attr]
    msgs = envelopes(gen, 2)
    msgs = [Incoming(TOPIC, 0, 100 + i, m.value) for i, m in enumerate(msgs)]
    out = p.process(msgs)
    assert {d.reason.split(":")[0] for d in out.dead_letters} == {"detector_error"}
    assert out.applied == 2 * 250  # model-1 still applied


def test_late_events_dead_lettered_in_event_time_mode() -> None:
    cfg = MonitorConfig(pane_seconds=60, panes=3, min_samples=10, calibration_rounds=10)
    p = processor(config=cfg, auto_reference_events=200)
    gen = SyntheticModels(1, seed=0)
    t0 = 1_700_000_040.0
    evs = gen.events("model-0", 600)
    for i, e in enumerate(evs):
        e["ts"] = t0 + i * 0.5
    late = dict(gen.events("model-0", 1)[0], ts=t0 + 1)
    msgs = [Incoming(TOPIC, 0, 0, encode_envelope_rows("model-0", [
        {k: v for k, v in e.items() if k != "model"} for e in evs])),
        Incoming(TOPIC, 0, 1, orjson.dumps(late))]
    assert p.process(msgs[:1]).dead_letters == []
    out = p.process(msgs[1:])  # its pane closed with the first batch's watermark
    assert [d.reason.split(":")[0] for d in out.dead_letters] == ["late"]
    st = p.models["model-0@0"]
    assert st.events_applied + st.events_deadlettered == 601
    assert np.isfinite(st.monitor.ring.max_ts)  # type: ignore[union-attr]
