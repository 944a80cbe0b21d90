"""Upstream changes (detection, replay idempotency, the bounded log, snapshots) and the
exemplar ids alerts carry, on the transport-free processor."""

from __future__ import annotations

import urllib.request
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from driftline.detectors.errors import SnapshotError
from driftline.detectors.monitor import MonitorConfig
from driftline.schemas.codecs import decode_alert, decode_change, encode_alert, encode_envelope_rows
from driftline.schemas.limits import Limits
from driftline.streams.changes import (
    FEATURE_GONE_AFTER,
    ChangeEvent,
    ChangeLog,
    UpstreamSchema,
    annotation,
)
from driftline.streams.metrics import MetricsServer, WorkerMetrics
from driftline.streams.model_state import ModelState
from driftline.streams.processor import Incoming, Processor

TOPIC = "inference"
T0 = 1_700_000_000.0


def processor(**kw: Any) -> Processor:
    args: dict[str, Any] = dict(
        config=MonitorConfig(pane_size=500, min_samples=1000, calibration_rounds=50),
        limits=Limits(), metrics=WorkerMetrics(CollectorRegistry()), auto_reference_events=2000)
    args.update(kw)
    return Processor(**args)


class Stream:
    """Envelopes of one model, 250 events each, one per offset, 1 event per second."""

    def __init__(self, model: str = "m", seed: int = 0) -> None:
        self.model, self.rng, self.i, self.offset = model, np.random.default_rng(seed), 0, 0

    def envelope(self, n: int = 250, *, version: str | None = "v1", shift: float = 0.0,
                 shifted: float = 1.0, features: tuple[str, ...] = ("f0", "f1", "f2", "f3"),
                 as_text: tuple[str, ...] = ()) -> Incoming:
        evs = []
        for _ in range(n):
            k = self.i
            self.i += 1
            drifted = shift != 0 and self.rng.random() < shifted
            feats: dict[str, Any] = {}
            for name in features:
                v = float(self.rng.normal()) + (shift if drifted and name == "f1" else 0.0)
                feats[name] = f"c{int(abs(v) * 2)}" if name in as_text else round(v, 5)
            ev: dict[str, Any] = {"ts": T0 + k, "features": feats, "event_id": f"e{k}",
                                  "trace_id": f"{'drift' if drifted else 'ok'}-{k}",
                                  "latency_ms": 5.0}
            if version is not None:
                ev["model_version"] = version
            evs.append(ev)
        msg = Incoming(TOPIC, 0, self.offset, encode_envelope_rows(self.model, evs))
        self.offset += 1
        return msg


def kinds(changes: list[ChangeEvent]) -> list[str]:
    return [c.kind for c in changes]


# ----------------------------------------------------------------------------- detection


def test_version_bump_feature_changes_and_reference_are_detected_once() -> None:
    s, p = Stream(), processor()
    first = p.process([s.envelope() for _ in range(8)])  # 2,000 events: the reference
    assert kinds(first.changes) == ["reference"]  # the baseline itself is silent
    assert "first-events" in first.changes[0].text
    assert p.process([s.envelope() for _ in range(4)]).changes == []

    bump = p.process([s.envelope(), s.envelope(version="v2")])
    (c,) = bump.changes
    assert c.kind == "model_version" and "v2" in c.text and "v1" in c.text
    assert c.ts == T0 + 13 * 250  # the first v2 event
    assert p.process([s.envelope(version="v2")]).changes == []
    assert p.process([s.envelope(version="v1")]).changes == []  # known: no flapping

    new = p.process([s.envelope(version="v2", features=("f0", "f1", "f2", "f3", "f9"))])
    (c,) = new.changes
    assert c.kind == "schema" and c.text == "features appeared: f9"

    gone_at = s.i  # f9 is absent from here on
    retyped = p.process([s.envelope(version="v2", as_text=("f3",))])
    (c,) = retyped.changes
    assert c.kind == "schema" and c.text == "feature types changed: f3 numeric -> string"

    # a feature counts as gone once absent from FEATURE_GONE_AFTER events in a row
    outs = [p.process([s.envelope(version="v2", as_text=("f3",))])
            for _ in range(FEATURE_GONE_AFTER // 250)]
    found = [c for o in outs for c in o.changes]
    assert [c.text for c in found] == [
        f"features disappeared (absent from {FEATURE_GONE_AFTER}+ events): f9"]
    assert found[0].ts == T0 + gone_at
    assert len({c.id for c in p.changes.of("m")}) == len(p.changes.of("m")) == 5


def test_a_version_bump_inside_the_first_batch_is_a_change() -> None:
    s, p = Stream(seed=7), processor()
    out = p.process([s.envelope() for _ in range(4)] + [s.envelope(version="v2")]
                    + [s.envelope(version="v1")])
    assert [(c.kind, c.ts) for c in out.changes] == [("model_version", T0 + 1000)]
    assert p.models["m@0"].upstream.versions == ["v2", "v1"]  # most recently seen last
    # unversioned events mixed in change nothing; the version seen last moves last
    later = p.process([s.envelope(version=None), s.envelope(version="v2")]).changes
    assert kinds(later) == ["reference"]  # built from the first 2,000 events, no version
    assert p.models["m@0"].upstream.versions == ["v1", "v2"]


def test_replayed_batches_never_record_a_change_twice() -> None:
    s = Stream(seed=1)
    msgs = [s.envelope() for _ in range(10)] + [s.envelope(version="v2") for _ in range(4)]
    a = processor()
    a.process(msgs[:10])
    blob = a.models["m@0"].snapshot()  # the snapshot before the bump
    out = a.process(msgs[10:])
    assert kinds(out.changes) == ["model_version"]
    assert a.process(msgs).changes == []  # a replay from an older offset: rows skipped

    # a crash after the change was produced, before the next snapshot: the next worker
    # restores the older snapshot and replays; it read the change back from the topic
    b = processor(snapshot_loader={"m@0": blob}.get)
    b.references["m"] = a.references["m"]
    for c in a.changes.of("m"):
        b.changes.add(ChangeEvent.decode(c.encode()), live=False)
    again = b.process(msgs[10:])
    assert again.applied == 4 * 250 and again.changes == []
    # without the topic's record it re-detects exactly the same change (same id)
    c = processor(snapshot_loader={"m@0": blob}.get)
    c.references["m"] = a.references["m"]
    assert [x.id for x in c.process(msgs[10:]).changes] == [x.id for x in out.changes]


def test_change_log_is_bounded_and_newest_first() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    log = ChangeLog(per_model=20, max_models=2, metrics=metrics)
    evs = [annotation("m", "deploy", f"release {i}", T0 + i) for i in range(30)]
    for ev in reversed(evs):  # any arrival order
        assert log.add(ev)
    assert not log.add(evs[29]) and not log.add(annotation("m", "deploy", "release 29", T0 + 29))
    assert [c.text for c in log.of("m")] == [f"release {i}" for i in range(10, 30)]
    assert [c["text"] for c in log.recent("m", T0 + 25.5, 5)] == [
        f"release {i}" for i in (25, 24, 23, 22, 21)]
    assert log.recent("m", T0 - 1) == ()
    assert set(log.recent("m", None, 1)[0]) == {"kind", "ts", "text", "source", "id"}
    reg = metrics.registry
    assert reg.get_sample_value("driftline_change_events_total",
                                {"model": "m", "kind": "deploy"}) == 30
    assert reg.get_sample_value("driftline_change_last_timestamp_seconds",
                                {"model": "m", "kind": "deploy"}) == T0 + 29
    log.add(annotation("a", "pipeline", "x", T0), live=False)  # history: gauge only
    assert reg.get_sample_value("driftline_change_events_total",
                                {"model": "a", "kind": "pipeline"}) is None
    log.add(annotation("b", "other", "y", T0))  # a third model: the oldest model goes
    assert log.of("m") == [] and log.recent("b")
    assert reg.get_sample_value("driftline_change_last_timestamp_seconds",
                                {"model": "m", "kind": "deploy"}) is None


def test_annotations_validate_and_round_trip_through_the_topic_format() -> None:
    a = annotation("m", "deploy", "v3 rollout", "2024-05-01T12:00:00Z", "ci")
    assert a.ts == 1714564800.0 and a == annotation("m", "deploy", "v3 rollout", 1714564800, "ci")
    assert ChangeEvent.decode(a.encode()) == a
    assert decode_change(a.encode())["id"] == a.id
    # a foreign producer's JSON without id gets the same id as the same annotation
    bare = {"model": "m", "kind": "deploy", "ts": 1714564800.0, "text": "v3 rollout"}
    assert ChangeEvent.decode(orjson.dumps(bare)).id == a.id
    for bad in (dict(kind="party"), dict(ts="soon"), dict(model=""), dict(text="x" * 5000)):
        args: dict[str, Any] = {"model": "m", "kind": "deploy", "text": "t", "ts": 1.0, **bad}
        with pytest.raises(ValueError):
            annotation(args["model"], args["kind"], args["text"], args["ts"])


def test_annotation_times_must_be_plausible_and_the_text_not_empty() -> None:
    """Before 1970, or a millisecond epoch (years ahead), would stretch every
    investigation timeline: refused, as event and label times are."""
    import time

    from driftline.streams.cli.main import app

    now = time.time()
    for ts, says in ((-5.0, "before 1970"), (now * 1000, "not milliseconds"),
                     (now + 2 * 86400, "ahead of now")):
        with pytest.raises(ValueError, match=says):
            annotation("m", "deploy", "v3", ts)
    assert annotation("m", "deploy", "v3", now + 3600).ts == now + 3600  # a scheduled deploy
    assert annotation("m", "deploy", "v3", now + 5 * 86400, max_future_s=7 * 86400)
    for text in ("", "   "):
        with pytest.raises(ValueError, match="must not be empty"):
            annotation("m", "deploy", text, now)
    res = CliRunner().invoke(app, ["annotate", "-m", "m", "-k", "deploy", "-t", "v3",  # exit 2,
                                   "--ts", "-5", "-b", "127.0.0.1:1"])  # nothing sent
    assert res.exit_code == 2 and "before 1970" in res.output


def test_annotate_cli_refuses_an_invalid_change_without_a_broker() -> None:
    from driftline.streams.cli.main import app

    res = CliRunner().invoke(app, ["annotate", "--model", "m", "--kind", "party", "--text",
                                   "x", "--bootstrap", "127.0.0.1:1"])
    assert res.exit_code == 2 and "kind must be one of" in res.output


def test_upstream_schema_round_trips_in_the_model_snapshot() -> None:
    s, p = Stream(seed=2), processor()
    p.process([s.envelope(features=("f0", "f1", "f2", "f3", "f5")) for _ in range(9)])
    p.process([s.envelope(version="v2")])
    st = p.models["m@0"]
    up = st.upstream
    assert up.versions == ["v1", "v2"] and up.reference == st.reference.reference_id
    assert set(up.features) == {"f0", "f1", "f2", "f3", "f5"} and up.absent["f5"][0] == 250
    blob = st.snapshot()
    back = ModelState.restore(blob, st.reference, p.config)
    assert back.upstream == up and back.snapshot() == blob
    assert UpstreamSchema.from_dict(up.to_dict()) == up
    meta_bad = {**up.to_dict(), "features": {"f0": "blob"}}
    with pytest.raises(ValueError):
        UpstreamSchema.from_dict(meta_bad)
    from driftline.detectors.serialization import pack, unpack

    meta, arrays, _ = unpack(blob, "driftline.model")
    broken = pack("driftline.model", {**meta, "upstream": {"absent": {"f5": [1]}}}, arrays)
    with pytest.raises(SnapshotError):
        ModelState.restore(broken, st.reference, p.config)


# ----------------------------------------------------------------------------- alerts


def drifted_run(p: Processor, s: Stream, annotate_at: float | None = None) -> list[Any]:
    p.process([s.envelope() for _ in range(8)])  # reference: events 0..1999
    p.process([s.envelope() for _ in range(8)])  # 2000..3999, quiet
    p.process([s.envelope(version="v2") for _ in range(4)])  # 4000..4999: the bump
    if annotate_at is not None:
        p.changes.add(annotation("m", "deploy", "feature store backfill", annotate_at))
        p.changes.add(annotation("m", "pipeline", "in the future", T0 + 10**6))
    alerts = []
    for _ in range(8):  # drift: half the events' f1 moves by 4 sd
        alerts += p.process([s.envelope(version="v2", shift=4.0, shifted=0.5)]).alerts
    return [a for a in alerts if a.state == "firing"]


def test_alerts_carry_recent_changes_before_the_window_end() -> None:
    p = processor()
    firing = drifted_run(p, Stream(seed=3), annotate_at=T0 + 4500)
    assert firing and firing[0].feature == "f1"
    a = decode_alert(encode_alert(firing[0]))  # what the alerts topic carries
    assert [(c["kind"], c["ts"]) for c in a.changes] == [
        ("deploy", T0 + 4500), ("model_version", T0 + 4000), ("reference", T0 + 1999)]
    assert "v2" in a.changes[1]["text"] and a.changes[0]["text"] == "feature store backfill"
    assert all(c["ts"] <= a.window.end_ts for c in a.changes)


def test_exemplars_are_the_drifted_rows_of_the_closing_batch() -> None:
    p = processor()
    firing = drifted_run(p, Stream(seed=4))
    a = firing[0]
    assert len(a.exemplars) == 3
    assert all(e.startswith("drift-") for e in a.exemplars)
    # rows of the pane the alert closed (count panes of 500: pane k holds events
    # 2000 + 500 k .. of the monitor's sequence, i.e. stream events shifted by the reference)
    rows = [int(e.split("-")[1]) for e in a.exemplars]
    assert all(2000 + a.window.pane * 500 <= r < 2000 + (a.window.pane + 1) * 500 for r in rows)
    reg = p.metrics.registry
    assert reg.get_sample_value("driftline_alerts_total",
                                {"model": "m", "kind": "data", "state": "firing"}) >= 1


def test_event_ids_stand_in_when_events_have_no_trace_id() -> None:
    p = processor()
    s = Stream(seed=5)
    real = s.envelope

    def untraced(*args: Any, **kw: Any) -> Incoming:
        msg = real(*args, **kw)
        body = orjson.loads(msg.value)
        for ev in body["events"]:
            ev.pop("trace_id")
        return Incoming(msg.topic, msg.partition, msg.offset, orjson.dumps(body))

    s.envelope = untraced  # type: ignore[method-assign]
    firing = drifted_run(p, s)
    assert firing and all(e.startswith("e") for e in firing[0].exemplars)
    assert len(firing[0].exemplars) == 3


def test_metrics_serve_exemplars_in_openmetrics_when_asked() -> None:
    p = processor()
    drifted_run(p, Stream(seed=6))
    server = MetricsServer(p.metrics.registry, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        plain = urllib.request.urlopen(url, timeout=10).read().decode()
        req = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            ctype = resp.headers["Content-Type"]
            om = resp.read().decode()
    finally:
        server.stop()
    assert "# {" not in plain
    assert ctype.startswith("application/openmetrics-text")
    lat = [ln for ln in om.splitlines()
           if ln.startswith("driftline_serving_latency_seconds_bucket") and " # {" in ln]
    assert lat and all('trace_id="' in ln for ln in lat)
    fired = [ln for ln in om.splitlines() if ln.startswith("driftline_alerts_total")
             and 'state="firing"' in ln]
    assert fired and ' # {trace_id="drift-' in fired[0]
    assert 'driftline_change_events_total{kind="model_version",model="m"} 1.0' in om


def _batch(rows: list[dict[str, Any]]) -> Any:
    from driftline.schemas.codecs import decode_inference

    msgs = [orjson.dumps({"model": "c", **r}) for r in rows]
    res = decode_inference(msgs, partitions=[0] * len(msgs), offsets=list(range(len(msgs))))
    assert not res.rejections
    return res.batches["c"]


def test_exemplars_of_a_categorical_feature_are_the_rows_of_the_new_category() -> None:
    from driftline.detectors.exemplars import exemplar_rows, row_ids
    from driftline.detectors.monitor import ModelMonitor
    from driftline.detectors.reference import build_profile

    rng = np.random.default_rng(8)
    ref = build_profile("c", {"city": rng.choice(["paris", "rome", "oslo"], 3000).astype(object),
                              "x": rng.normal(size=3000)}, multivariate=False)
    mon = ModelMonitor(ref, MonitorConfig(pane_size=300, min_samples=300, calibration_rounds=20))
    rows = [{"features": {"city": str(rng.choice(["paris", "rome", "oslo"])),
                          "x": float(rng.normal())}, "trace_id": f"ok-{i}", "prediction": 0.5}
            for i in range(300)]
    for i in rng.choice(300, 40, replace=False):
        rows[i]["features"]["city"] = "atlantis"
        rows[i]["trace_id"] = f"new-{i}"
    batch = _batch(rows)
    (ev,) = mon.update(batch)
    # the column's own binning agrees with the whole-batch binning, for every column
    full = mon.binner.bins(batch)
    for j in range(len(mon.binner.layout.names)):
        assert (mon.binner.column_bins(batch, j) == full[:, j]).all()
    picked = exemplar_rows(mon, batch, np.arange(300), "city", ev.window.pane, k=5)
    assert [t.split("-")[0] for t, _ in row_ids(batch, picked)] == ["new"] * 5
    assert row_ids(batch, picked)[0][1] is True  # a trace id
    assert exemplar_rows(mon, batch, np.arange(300), "no-such-feature", ev.window.pane).size == 0
