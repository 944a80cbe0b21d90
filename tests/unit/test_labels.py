"""Delayed labels: the bounded join store, concept metrics and alerts, the processor path."""

from __future__ import annotations

import math
import subprocess
import sys
import uuid

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from driftline.detectors.concept import ConceptConfig, ConceptMonitor, ConceptRule, quality
from driftline.detectors.errors import SnapshotError
from driftline.detectors.join_ids import StrColumn
from driftline.detectors.label_join import (
    JoinConfig,
    Joined,
    JoinStore,
    canonical_label,
)
from driftline.detectors.monitor import MonitorConfig
from driftline.detectors.serialization import get_strs, put_strs
from driftline.schemas.codecs import encode_envelope_rows
from driftline.schemas.limits import Limits
from driftline.streams.metrics import WorkerMetrics
from driftline.streams.model_state import ModelState
from driftline.streams.processor import Processor
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings

UNREACHABLE = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 60_000}


def preds(store: JoinStore, ids: list[str], ts: list[float], score: float = 0.9) -> Joined:
    return store.add_predictions(ids, [score] * len(ids), None, ts)


def labels(store: JoinStore, ids: list[str], ts: list[float], label: str = "1") -> Joined:
    return store.add_labels(ids, [label] * len(ids), ts)


# -- join store ------------------------------------------------------------------------
def test_labels_join_their_predictions_in_either_order() -> None:
    s = JoinStore(JoinConfig(ttl_seconds=100))
    preds(s, ["a", "b"], [10.0, 11.0])
    j = labels(s, ["a"], [15.0])
    assert j.event_id == ("a",) and j.delay.tolist() == [5.0] and j.label == ("1",)
    early = labels(s, ["c"], [20.0])  # label before its prediction: waits
    assert len(early) == 0 and s.pending == 1
    j = s.add_predictions(["c", None, "d"], [0.2, 0.5, 0.7], ["0", None, "1"], [12.0, 12.0, 13.0])
    assert j.event_id == ("c",) and j.predicted == ("0",) and j.delay.tolist() == [8.0]
    assert s.pending == 0 and len(s) == 2  # b, d wait; the row without an id was ignored
    assert s.counts.predictions == 4 and s.counts.joined == 2 and s.counts.labels == 2


@pytest.mark.parametrize("form", ["hex", "uuid", "other"])
def test_ids_of_str_subclasses_join_like_the_str_they_equal(form: str) -> None:
    """numpy's ``str_`` ids (an object column of them, or a list) on either side."""
    ids = [{"hex": uuid.uuid4().hex, "uuid": str(uuid.uuid4())}.get(form, f"req-{i}")
           for i in range(6)]
    s = JoinStore(JoinConfig(ttl_seconds=100))
    preds(s, np.array([np.str_(e) for e in ids[:3]], dtype=object), [1.0] * 3)  # type: ignore[arg-type]
    preds(s, ids[3:], [2.0] * 3)
    assert len(s) == 6 and s.counts.predictions == 6
    j = labels(s, [*(np.str_(e) for e in ids[::2]), ids[1]], [5.0] * 4)
    assert sorted(j.event_id) == sorted([*ids[::2], ids[1]])
    assert all(type(e) is str for e in j.event_id)
    assert len(s) == 2 and s.counts.joined == 4


def test_store_is_bounded_and_counts_what_it_drops() -> None:
    s = JoinStore(JoinConfig(ttl_seconds=1e6, max_entries=100, max_pending=10))
    preds(s, [f"p{i}" for i in range(150)], [float(i) for i in range(150)])
    assert len(s) == 100 and s.counts.evicted == 50
    assert len(labels(s, ["p0"], [200.0])) == 0  # its prediction was evicted
    assert s.counts.unmatched == 1 and s.pending == 0
    assert len(labels(s, ["p149"], [200.0])) == 1
    assert len(labels(s, ["p149"], [201.0])) == 0  # a second label for a joined prediction
    assert s.counts.unmatched == 2
    labels(s, [f"x{i}" for i in range(25)], [300.0] * 25)  # never predicted: pending, bounded
    assert s.pending == 10 and s.counts.unmatched == 2 + 15


def test_ttl_in_event_time_expires_predictions_and_pending_labels() -> None:
    s = JoinStore(JoinConfig(ttl_seconds=60))
    preds(s, ["a", "b"], [0.0, 50.0])
    labels(s, ["orphan"], [55.0])
    preds(s, ["c"], [100.0])  # event time 100: a (t=0) is older than the TTL
    assert s.counts.expired == 1 and len(s) == 2
    assert len(labels(s, ["a"], [101.0])) == 0 and s.counts.late == 1  # after its TTL
    j = labels(s, ["b"], [105.0])  # within 60 s of b
    assert j.event_id == ("b",) and j.delay.tolist() == [55.0]
    preds(s, ["d"], [200.0])
    assert s.counts.unmatched == 1  # the orphan label waited past the TTL
    assert s.counts.expired == 2  # c
    s2 = JoinStore(JoinConfig(ttl_seconds=60))
    preds(s2, ["e"], [0.0])
    j = labels(s2, ["e"], [61.0])  # still stored (no newer prediction) but past the TTL
    assert len(j) == 0 and s2.counts.late == 1


def test_join_store_snapshot_round_trip_is_exact() -> None:
    rng = np.random.default_rng(3)
    a = JoinStore(JoinConfig(ttl_seconds=500, max_entries=300, max_pending=40))
    for k in range(6):
        ids = [f"id-{k}-{i}-é" for i in range(100)]
        a.add_predictions(ids, rng.random(100).tolist(),
                          [None if i % 3 else "cls" for i in range(100)],
                          (k * 100 + np.arange(100.0)).tolist())
        a.add_labels([f"id-{k}-{i}-é" for i in range(0, 100, 7)] + [f"zz{k}{i}" for i in range(9)],
                     [canonical_label(i % 2) for i in range(15 + 9)], [k * 100 + 50.0] * 24)
    blob = a.snapshot()
    b = JoinStore.from_snapshot(blob)
    assert b.snapshot() == blob and b.counts == a.counts
    more_ids = [f"id-5-{i}-é" for i in range(100)] + [f"zz5{i}" for i in range(9)]
    ja = a.add_labels(more_ids, ["1"] * len(more_ids), [640.0] * len(more_ids))
    jb = b.add_labels(more_ids, ["1"] * len(more_ids), [640.0] * len(more_ids))
    assert ja.event_id == jb.event_id and np.array_equal(ja.delay, jb.delay)
    assert a.snapshot() == b.snapshot()
    with pytest.raises(SnapshotError):
        JoinStore.from_snapshot(blob[:-5])
    with pytest.raises(SnapshotError):
        JoinStore.from_snapshot(b"DLS1" + b"\x00\x00\x00\x02{}")


def _strs_oracle(values: list[str | None]) -> tuple[bytes, list[int]]:
    enc = [None if v is None else v.encode("utf-8", "surrogatepass") for v in values]
    return b"".join(e for e in enc if e is not None), [-1 if e is None else len(e) for e in enc]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=6),
                          st.text(alphabet=st.characters(codec="ascii"), max_size=40)),
                max_size=30))
@example(["ab", "0f"]).via("hex ids")
@example(["ab", "0F"]).via("upper case: not hex")
def test_snapshot_string_columns_are_the_per_string_encoding(values: list[str | None]) -> None:
    # the joined ASCII fast path writes what encoding each string on its own writes
    # (lone surrogates, empty strings, None, all-None and mixed columns), and reads it back
    arrays: dict[str, np.ndarray] = {}
    put_strs(arrays, "c", values)
    raw, lens = _strs_oracle(values)
    if "c.hex" in arrays:  # one even length of lowercase hex digits: their bytes instead
        assert arrays["c.hex"].tobytes().hex() == raw.decode() and -1 not in lens
        assert len(set(lens)) == 1 and arrays["c.hex"].shape == (len(values), lens[0] // 2)
    else:
        assert arrays["c.bytes"].tobytes() == raw and arrays["c.len"].tolist() == lens
        assert arrays["c.bytes"].dtype == np.uint8 and arrays["c.len"].dtype == np.int8
    assert get_strs(arrays, "c") == values


@pytest.mark.parametrize("compiled", [True, False])
def test_string_columns_take_the_smallest_form(compiled: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from driftline.detectors import serialization
    if compiled and serialization._kernels is None:
        pytest.skip("detectors/_kernels was not built")
    if not compiled:
        monkeypatch.setattr(serialization, "_kernels", None)
    ids = [uuid.uuid4().hex for _ in range(50)]
    arrays: dict[str, np.ndarray] = {}
    put_strs(arrays, "id", ids)  # uuid4().hex: 16 bytes each, no lengths
    assert set(arrays) == {"id.hex"} and arrays["id.hex"].shape == (50, 16)
    assert bytes(arrays["id.hex"][7]) == bytes.fromhex(ids[7])
    assert get_strs(arrays, "id") == ids
    a, b, c = ids[:3]
    not_hex = [[a, b, c.upper()], [a, b, c[:-2]], [a, b, None], [a, b, c[:-1] + "g"],
               [a, b, " " + c[1:]], ["abc"], [""], [], [a, b, c[:-1] + "é"]]
    for values in not_hex:  # another length, a None, upper case, a non-hex character
        arrays = {}
        put_strs(arrays, "id", values)
        assert "id.hex" not in arrays and get_strs(arrays, "id") == values
    for size, dtype in ((127, np.int8), (128, np.int16), (40_000, np.int32)):
        arrays = {}
        put_strs(arrays, "c", ["x" * size, None])  # lengths in the narrowest type
        assert arrays["c.len"].dtype == dtype and get_strs(arrays, "c") == ["x" * size, None]
    older = {"c.bytes": np.frombuffer(b"abcd", dtype=np.uint8),  # int64 lengths: older records
             "c.len": np.array([1, -1, 3], dtype=np.int64)}
    assert get_strs(older, "c") == ["a", None, "bcd"]
    for bad in ({"c.hex": np.zeros((2, 0), dtype=np.uint8)}, {"c.hex": np.zeros(4, np.uint8)},
                {"c.hex": np.zeros((2, 2), dtype=np.int8)},
                {**older, "c.len": np.array([1, -1, 3], dtype=np.float64)},
                # lengths whose int64 sum wraps around to the bytes' size
                {"c.bytes": np.frombuffer(b"ab", dtype=np.uint8),
                 "c.len": np.array([2**63 - 1, 2**63 - 1, 4], dtype=np.int64)}):
        with pytest.raises(ValueError):
            get_strs(bad, "c")
    with pytest.raises(ValueError):  # not as many as the record's other columns
        get_strs({"c.hex": np.zeros((5, 16), dtype=np.uint8)}, "c", 4)
    with pytest.raises(ValueError):
        get_strs(older, "c", 2)
    assert get_strs(older, "c", 3) == ["a", None, "bcd"]


def test_canonical_labels_agree_across_types() -> None:
    assert canonical_label(True) == canonical_label(1) == canonical_label(1.0) == "1"
    assert canonical_label("true") == "1" and canonical_label(False) == "0"
    assert canonical_label("fraud") == "fraud" and canonical_label(0.25) == "0.25"


# -- concept metrics --------------------------------------------------------------------
def stream(rng: np.random.Generator, n: int, fpr: float, fnr: float, start: int = 0,
           base: float = 0.3) -> Joined:
    actual = rng.random(n) < base
    flip = np.where(actual, rng.random(n) < fnr, rng.random(n) < fpr)
    pred = actual ^ flip
    score = np.where(pred, rng.uniform(0.5, 1, n), rng.uniform(0, 0.5, n))
    ts = np.arange(start, start + n, dtype=np.float64)
    return Joined(tuple(f"e{start + i}" for i in range(n)), score, (None,) * n,
                  tuple("1" if x else "0" for x in actual), ts, ts + 30.0)


def test_window_metrics_equal_a_direct_computation() -> None:
    rng = np.random.default_rng(7)
    cm = ConceptMonitor("m", ConceptConfig(window=1000, eval_every=100, min_labelled=100))
    rows = [stream(rng, int(k), 0.1, 0.2, 10_000 * i) for i, k in
            enumerate(rng.integers(1, 700, 12))]
    for r in rows:
        cm.update(r)
    actual = np.concatenate([[x == "1" for x in r.label] for r in rows])[-1000:]
    pred = np.concatenate([r.score >= 0.5 for r in rows])[-1000:]
    tn = int((~actual & ~pred).sum())
    fp = int((~actual & pred).sum())
    fn = int((actual & ~pred).sum())
    tp = int((actual & pred).sum())
    q = quality(cm.counts, "binary")
    assert cm.counts.tolist() == [tn, fp, fn, tp]
    assert q["accuracy"] == pytest.approx((tn + tp) / 1000)
    assert q["fpr"] == pytest.approx(fp / (fp + tn)) and q["fnr"] == pytest.approx(fn / (fn + tp))
    assert q["error_rate"] == pytest.approx((fp + fn) / 1000)


def test_multiclass_error_rate_and_class_predictions() -> None:
    cm = ConceptMonitor("m", ConceptConfig(task="multiclass", window=4, min_labelled=1,
                                           eval_every=1, detector="none"))
    rows = Joined(("a", "b", "c", "d", "e"), np.array([0.9, np.nan, 2.0, np.nan, 0.7]),
                  ("cat", "dog", None, None, "cat"), ("cat", "cat", "2", "1", "cow"),
                  np.zeros(5), np.zeros(5))
    cm.update(rows)
    assert cm.unscored == 1 and cm.n == 4  # "d" has no prediction
    assert quality(cm.counts, "multiclass") == {"accuracy": 0.5, "error_rate": 0.5}
    with pytest.raises(ValueError):
        ConceptConfig(task="multiclass").with_rule("fpr > 0.1")


def test_binary_positive_class_and_score_threshold() -> None:
    cm = ConceptMonitor("m", ConceptConfig(positive_label="fraud", score_threshold=0.8))
    rows = Joined(("a", "b", "c", "d"), np.array([0.9, 0.7, np.nan, 0.95]),
                  (None, None, "fraud", "ok"), ("fraud", "fraud", "ok", "ok"),
                  np.zeros(4), np.zeros(4))
    codes, ok = cm.outcomes(rows)
    # tp (0.9 >= 0.8), fn (0.7), fp (class fraud, truth ok), tn (class ok)
    assert ok.all() and codes.tolist() == [3, 2, 1, 0]


def test_rule_parsing() -> None:
    rule, window = ConceptRule.parse("fpr > 0.05 over 10,000 labelled events")
    assert (rule.metric, rule.op, rule.threshold, window) == ("fpr", ">", 0.05, 10_000)
    assert ConceptRule.parse("accuracy < 0.9")[1] is None
    cfg = ConceptConfig().with_rule("fnr > 0.2 over 5000")
    assert cfg.window == 5000 and cfg.min_labelled == 5000 and cfg.rule is not None
    for bad in ("fpr >> 0.1", "auc > 0.5", "fpr > 2"):
        with pytest.raises(ValueError):
            ConceptConfig().with_rule(bad)
    setup = Settings(concept_rules="fraud=fpr > 0.05 over 10000; churn = accuracy < 0.9",
                     concept_threshold=0.3).label_setup()
    assert str(setup.concept_for("fraud").rule) == "fpr > 0.05"
    assert setup.concept_for("churn").window == 10_000  # no "over": the default window
    assert str(setup.concept_for("other").rule) == "error_rate > 0.3"
    assert setup.keeps_from_start("fraud") and not setup.keeps_from_start("other")
    for bad_env in ({"concept_rules": "fraud: fpr > 0.05"},
                    {"concept_task": "multiclass", "concept_metric": "fpr",
                     "concept_threshold": 0.1},
                    {"label_ttl_seconds": float("inf")}):
        with pytest.raises(ValidationError):
            Settings(**bad_env)  # type: ignore[arg-type]


def run(cm: ConceptMonitor, rows: list[Joined]) -> list:
    out = []
    for r in rows:
        out += cm.update(r)
    return out


def test_threshold_rule_fires_when_fpr_rises_and_resolves_when_it_falls() -> None:
    rng = np.random.default_rng(11)
    cfg = ConceptConfig(window=2000, eval_every=250, detector="none").with_rule(
        "fpr > 0.1 over 2000")
    cm = ConceptMonitor("fraud", cfg)
    phases = [(0.03, 6000), (0.25, 4000), (0.03, 6000)]
    rows, start = [], 0
    for fpr, n in phases:
        for _ in range(n // 500):
            rows.append(stream(rng, 500, fpr, 0.1, start))
            start += 500
    alerts = run(cm, rows)
    states = [(a.state, a.statistic, a.kind, a.detector) for a in alerts]
    assert states == [("firing", "fpr", "concept", "threshold"),
                      ("resolved", "fpr", "concept", "threshold")]
    fire, res = alerts
    assert 6000 < fire.window.pane * 250 <= 8000  # fired within the rising phase
    assert fire.score > 0.1 and fire.threshold == 0.1 and fire.window.n == 2000
    assert res.score <= 0.1 and res.window.pane > fire.window.pane
    assert fire.exemplars and all(e.startswith("e") for e in fire.exemplars)
    assert {f.name for f in fire.top_features} == {"accuracy", "fpr", "fnr", "error_rate"}
    # batching does not matter: the same stream in other chunks gives the same alerts
    cm2 = ConceptMonitor("fraud", cfg)
    alerts2 = run(cm2, [_concat(rows[i:i + 3]) for i in range(0, len(rows), 3)])
    assert [a.alert_id for a in alerts2] == [a.alert_id for a in alerts]
    assert cm2.snapshot() == cm.snapshot()


def _concat(rows: list[Joined]) -> Joined:
    return Joined(sum((r.event_id for r in rows), ()), np.concatenate([r.score for r in rows]),
                  sum((r.predicted for r in rows), ()), sum((r.label for r in rows), ()),
                  np.concatenate([r.prediction_ts for r in rows]),
                  np.concatenate([r.label_ts for r in rows]))


@pytest.mark.parametrize("detector", ["adwin", "ddm"])
def test_no_drift_stays_silent_and_error_detector_catches_a_rise(detector: str) -> None:
    rng = np.random.default_rng(5)
    cfg = ConceptConfig(detector=detector).with_rule("fpr > 0.08 over 10000")
    quiet = ConceptMonitor("m", cfg)
    assert run(quiet, [stream(rng, 1000, 0.05, 0.1, 1000 * k) for k in range(100)]) == []
    assert quiet.labelled == 100_000 and quiet.quality["fpr"] < 0.08
    loud = ConceptMonitor("m", ConceptConfig(detector=detector, window=5000, min_labelled=2000))
    before = run(loud, [stream(rng, 1000, 0.05, 0.1, 1000 * k) for k in range(20)])
    after = run(loud, [stream(rng, 1000, 0.3, 0.1, 1000 * k) for k in range(20, 30)])
    assert before == []
    assert [(a.state, a.detector, a.statistic) for a in after][:1] == [
        ("firing", detector, "error_rate")]
    assert after[0].score > after[0].threshold


def test_concept_snapshot_round_trip_is_exact() -> None:
    rng = np.random.default_rng(2)
    cm = ConceptMonitor("m", ConceptConfig(window=3000, eval_every=200).with_rule("fpr > 0.1"))
    rows = [stream(rng, 700, 0.05 if k < 6 else 0.3, 0.1, 700 * k) for k in range(14)]
    run(cm, rows[:7])
    blob = cm.snapshot()
    back = ConceptMonitor.from_snapshot(blob)
    assert back.snapshot() == blob
    assert [a.alert_id for a in run(cm, rows[7:])] == [a.alert_id for a in run(back, rows[7:])]
    assert back.snapshot() == cm.snapshot()
    with pytest.raises(SnapshotError):
        ConceptMonitor.from_snapshot(blob[: len(blob) // 2])


# -- processor ----------------------------------------------------------------------------
def setup_processor(**settings: object) -> tuple[Processor, CollectorRegistry]:
    s = Settings(**{"label_join": "all", "concept_eval_every": 250, **settings})  # type: ignore[arg-type]
    reg = CollectorRegistry()
    p = Processor(config=MonitorConfig(pane_size=500, min_samples=1000, calibration_rounds=50),
                  limits=Limits(), metrics=WorkerMetrics(reg), auto_reference_events=2000,
                  labels=s.label_setup())
    return p, reg


def predictions(p: Processor, n: int, seed: int = 1, partition: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    evs = [{"features": {"a": float(rng.normal())}, "prediction": float(score[i]),
            "event_id": f"e{i}", "ts": 1000.0 + i} for i in range(n)]
    vals = [encode_envelope_rows("m", evs[i:i + 500]) for i in range(0, n, 500)]
    p.process_columns("inf", vals, [partition] * len(vals), list(range(len(vals))),
                      [0.0] * len(vals))
    return score


def label_msgs(score: np.ndarray, fp_from: int, seed: int = 2, delay: float = 30.0,
               step: float = 1.0) -> list[bytes]:
    """Truth = score >= 0.5, except that from ``fp_from`` on 40% of predicted positives
    are negatives (the false positive rate rises)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(score.tolist()):
        truth = int(s >= 0.5)
        if i >= fp_from and truth and rng.random() < 0.4:
            truth = 0
        out.append(orjson.dumps({"model": "m", "event_id": f"e{i}", "label": bool(truth),
                                 "ts": 1000.0 + i * step + delay}))
    return out


def test_processor_joins_labels_and_raises_a_concept_alert() -> None:
    from driftline.streams.changes import annotation

    p, reg = setup_processor(concept_rules="m=fpr > 0.1 over 1000")
    score = predictions(p, 6000)
    p.changes.add(annotation("m", "deploy", "new scorer", 1.0))
    msgs = [*label_msgs(score, 3000), b"{not json", orjson.dumps({"model": "m", "label": 1})]
    out = p.process_labels("lab", msgs, [0] * len(msgs), list(range(len(msgs))),
                           [0.0] * len(msgs))
    assert out.labels_applied == 6000
    assert sorted(d.reason.split(":")[0] for d in out.dead_letters) == ["invalid_json", "schema"]
    rule = [a for a in out.alerts if a.detector == "threshold"]
    assert [(a.kind, a.state, a.statistic) for a in rule] == [("concept", "firing", "fpr")]
    assert rule[0].score > 0.1 and rule[0].model == "m" and rule[0].window.n == 1000
    assert "new scorer" in [c["text"] for c in rule[0].changes]  # as data alerts carry them
    st = p.models["m@0"]
    assert st.joins is not None and st.joins.counts.joined == 6000
    again = p.process_labels("lab", msgs, [0] * len(msgs), list(range(len(msgs))),
                             [0.0] * len(msgs))
    assert again.labels_applied == 0 and again.skipped_replays == len(msgs) and not again.alerts
    blob = st.snapshot()
    back = ModelState.restore(blob, st.reference, p.config)
    assert back.snapshot() == blob and back.joins is not None and back.concept is not None
    text = generate_latest(reg).decode()
    assert 'driftline_labels_joined_total{model="m"} 6000.0' in text
    assert 'driftline_label_coverage_ratio{model="m"} 1.0' in text
    assert 'driftline_model_quality{metric="fpr",model="m"}' in text
    assert 'driftline_label_delay_seconds_count{model="m"} 6000.0' in text
    assert 'driftline_drift_state{feature="fpr",kind="concept",model="m"} 1.0' in text
    p.drop(["m@0"])
    text = generate_latest(reg).decode()
    assert 'model="m"' not in "\n".join(
        line for line in text.splitlines() if "label" in line or "quality" in line
        or "drift_state" in line)


def test_processor_no_drift_is_silent_and_late_labels_are_counted() -> None:
    score = np.random.default_rng(0).random(5000)
    msgs = label_msgs(score, 10**9, delay=30.0, step=0.01)  # 100 predictions a second
    # labels and predictions interleave: each 500 labels follow their 500 predictions
    p2, reg = setup_processor(concept_rules="m=fpr > 0.1 over 1000", label_ttl_seconds=60)
    rng = np.random.default_rng(1)
    alerts = []
    for k in range(10):
        evs = [{"features": {"a": float(rng.normal())}, "prediction": float(score[i]),
                "event_id": f"e{i}", "ts": 1000.0 + i * 0.01}
               for i in range(500 * k, 500 * k + 500)]
        alerts += p2.process_columns("inf", [encode_envelope_rows("m", evs)], [0], [k],
                                     [0.0]).alerts
        chunk = msgs[500 * k:500 * k + 500]
        if k == 9:  # the last 100 labels come 500 s after their predictions: late
            chunk = chunk[:400] + [orjson.dumps({"model": "m", "event_id": f"e{i}", "label": 1,
                                                 "ts": 1000.0 + i * 0.01 + 500})
                                   for i in range(4900, 5000)]
        out = p2.process_labels("lab", chunk, [0] * 500, list(range(500 * k, 500 * k + 500)),
                                [0.0] * 500)
        assert out.labels_applied == 500
        alerts += out.alerts
    assert [a for a in alerts if a.kind == "concept"] == []
    st = p2.models["m@0"]
    assert st.joins is not None and st.joins.counts.joined == 4900
    assert st.joins.counts.late == 100
    assert st.concept is not None and st.concept.quality["fpr"] == 0.0
    text = generate_latest(reg).decode()
    assert 'driftline_labels_unmatched_total{model="m",reason="late"} 100.0' in text
    # no concept alert yet: its counters are there at 0, so the first one is an increase
    assert 'driftline_alerts_total{kind="concept",model="m",state="firing"} 0.0' in text


def test_labels_on_another_partition_are_counted_unmatched() -> None:
    p, _ = setup_processor(label_ttl_seconds=1000)
    score = predictions(p, 1000, partition=0)
    msgs = label_msgs(score, 10**9)[:200]
    p.process_labels("lab", msgs, [1] * len(msgs), list(range(len(msgs))), [0.0] * len(msgs))
    other = p.models["m@1"]
    assert other.joins is not None and other.joins.counts.joined == 0 and other.joins.pending == 200
    later = [orjson.dumps({"model": "m", "event_id": "x", "label": 0, "ts": 5000.0})]
    p.process_labels("lab", later, [1], [200], [0.0])
    assert other.joins.counts.unmatched == 200  # waited past the TTL


def test_a_label_time_far_ahead_of_the_clock_is_dead_lettered_and_the_join_goes_on() -> None:
    """One label a day or more ahead of the worker's clock would expire every waiting
    prediction (and make every later label late): it is dead-lettered instead."""
    p, reg = setup_processor()
    score = predictions(p, 2000)
    msgs = label_msgs(score, 10**9)
    bad = [orjson.dumps({"model": "m", "event_id": "e0", "label": 1, "ts": 1e12}),
           orjson.dumps({"model": "m", "event_id": "e1", "label": 1, "ts": -1.0})]
    out = p.process_labels("lab", bad + msgs[2:1000], [0] * 1000, list(range(1000)), [0.0] * 1000)
    assert [d.reason.split(":")[0] for d in out.dead_letters] == ["ts_out_of_range"] * 2
    assert out.dead_letters[0].payload == bad[0] and out.labels_applied == 998
    out = p.process_labels("lab", msgs[1000:], [0] * 1000, list(range(1000, 2000)), [0.0] * 1000)
    st = p.models["m@0"]
    assert st.joins is not None and st.joins.counts.joined == 1998
    assert st.joins.counts.late == 0 and st.joins.counts.expired == 0
    text = generate_latest(reg).decode()
    assert 'driftline_worker_deadletter_total{reason="ts_out_of_range"} 2.0' in text


def test_auto_mode_keeps_predictions_from_the_first_label_on() -> None:
    p, _ = setup_processor(label_join="auto")
    predictions(p, 1000)
    st = p.models["m@0"]
    assert st.joins is None  # no label yet: nothing kept
    first = label_msgs(np.full(1, 0.9), 10**9)
    p.process_labels("lab", first, [0], [0], [0.0])
    assert st.joins is not None and st.joins.pending == 1  # its prediction came before


def test_sdk_emit_label_refuses_invalid_input() -> None:
    p = DriftlineProducer(UNREACHABLE, labels_topic="t.labels")
    try:
        assert p.emit_label("m", "e1", 1) and p.emit_label("m", "e2", "fraud", ts=5.0)
        assert not p.emit_label("m", "", 1) and not p.emit_label("m", "e3", math.nan)
        assert not p.emit_label("m", "e4", [1])  # type: ignore[arg-type]
        st = p.stats()
        assert st.emitted == 2 and st.dropped_reasons == {"invalid": 3}
    finally:
        p.close(timeout=0.5)


def test_concept_preload_imports_the_error_stream_detectors() -> None:
    # the worker calls it at start: river is imported then, not in a model's first
    # labelled batch (~0.15 s, or ~0.7 s in a fresh process)
    code = ("import sys\nfrom driftline.detectors import concept\n"
            "assert 'river.drift' not in sys.modules\nconcept.preload()\n"
            "assert {'river.drift', 'river.drift.binary'} <= set(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_model_state_records_restore_and_drop_chunks_no_snapshot_names() -> None:
    # the worker's form of a model's state: the join store's chunks as records of their
    # own; restored from them, and chunk records of the state that its snapshot does not
    # name (left by a worker that stopped before deleting them) are deleted next time
    st = ModelState("m", 3)
    st.joins = JoinStore(JoinConfig(), chunk_entries=8)
    st.joins.add_predictions([f"e{i}" for i in range(30)], [0.5] * 30, None, [1.0] * 30)
    recs = st.snapshot_records()
    assert recs.chunks and all(k.startswith("m@3/joins/") for k in recs.chunks)
    topic = {**recs.chunks, st.key: recs.snapshot, "m@3/joins/pred/0/77": b"left behind",
             "m@30/joins/pred/0/0": b"another state's",
             "m@3/joins/x@1": b"model 'm@3/joins/x' on partition 1",
             "m@3/joins/x@1/joins/pred/0/0": b"its chunk"}
    with pytest.raises(SnapshotError):  # the store's chunks are needed
        ModelState.restore(recs.snapshot, None, MonitorConfig())
    back = ModelState.restore(recs.snapshot, None, MonitorConfig(), records=topic.get,
                              record_keys=lambda p: [k for k in topic if k.startswith(p)])
    assert back.joins is not None and back.joins.snapshot() == st.joins.snapshot()
    back.joins.add_predictions([f"f{i}" for i in range(30)], [0.5] * 30, None, [2.0] * 30)
    again = back.snapshot_records()
    assert again.dropped == ["m@3/joins/pred/0/77"]
    # its new chunks are named past the one left behind: never written, then deleted
    assert again.chunks and all(int(k.rsplit("/", 1)[1]) > 77 for k in again.chunks)


def _uuid_oracle(values: list[object]) -> bytes | None:
    """16 bytes per value when every value is a canonical lowercase UUID string."""
    if not values or not all(type(v) is str and len(v) == 36 for v in values):
        return None
    out = b""
    for v in values:
        assert isinstance(v, str)
        if not all(c in "0123456789abcdef-" for c in v) or \
                [i for i, c in enumerate(v) if c == "-"] != [8, 13, 18, 23]:
            return None
        out += bytes.fromhex(v.replace("-", ""))
    return out


_UUID_CHARS = "0123456789abcdefABCDEF-g é٣"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.text(alphabet=_UUID_CHARS, min_size=35, max_size=37),
    st.none()), min_size=0, max_size=8))
@example([str(uuid.UUID(int=0)), str(uuid.UUID(int=2**128 - 1))]).via("all digits")
@example(["00000000-0000-0000-0000-00000000000-"]).via("a dash for the last digit")
@example(["0000000-00000-0000-0000-000000000000"]).via("a dash moved")
def test_uuid_ids_as_bytes_compiled_and_in_python(values: list[str | None]) -> None:
    """Canonical lowercase UUID strings (what str(uuid4()) gives) become their 16 bytes,
    compiled and in Python alike; anything else (upper case, a dash out of place, other
    lengths and characters, None) gives None. Kept as bytes, they come back as they were."""
    from driftline.detectors import serialization
    from driftline.detectors.join_ids import hex_ids
    want = _uuid_oracle(values)
    kernels = serialization._kernels
    if kernels is not None:
        assert kernels.uuid_column(values) == want
    serialization._kernels = None
    try:
        assert serialization.uuid_bytes(values) == want
    finally:
        serialization._kernels = kernels
    hexed = hex_ids(values)
    if want is not None:
        assert hexed is not None and hexed.form == (16, True) and hexed.strs() == values


def test_a_store_of_uuid_ids_keeps_their_bytes_and_turns_to_strings_for_other_ids() -> None:
    """str(uuid4()) ids are kept as their bytes (joined, evicted, snapshot and restored
    as strings); uuid4().hex ids after them turn the store to strings, the same results."""
    s = JoinStore(JoinConfig(ttl_seconds=1e9, max_entries=500))
    ids = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(800)]
    for k in range(0, 800, 100):
        s.add_predictions(ids[k:k + 100], [0.5] * 100, None, [float(k)] * 100)
    assert s._pred.idcol is not None and s._pred.idcol.form == (16, True)
    assert len(s) == 500 and s.counts.evicted == 300
    assert s.add_labels(ids[250:260], ["1"] * 10, [900.0] * 10).event_id == ()  # evicted
    assert s.add_labels(ids[700:705], ["1"] * 5, [900.0] * 5).event_id == tuple(ids[700:705])
    back = JoinStore.from_snapshot(s.snapshot())
    assert back.snapshot() == s.snapshot() and back._pred.ids_at(back._pred.positions()) == \
        s._pred.ids_at(s._pred.positions())
    hexed = [uuid.UUID(int=10**6 + i).hex for i in range(50)]
    s.add_predictions(hexed, [0.5] * 50, None, [1000.0] * 50)
    assert isinstance(s._pred.idcol, StrColumn) and len(s) == 500
    assert s.add_labels([ids[790], hexed[3]], ["0", "1"], [1001.0] * 2).event_id == \
        (ids[790], hexed[3])
    assert s.counts.unmatched == 10 and s.counts.joined == 7


def test_a_shadow_candidates_labels_join_its_own_predictions() -> None:
    """A candidate's predictions (``shadow_of`` the live model, keyed by it, so on the
    live model's partition) and labels for both models: each label joins the
    predictions of its own model, the candidate's too, nothing is unmatched."""
    from prometheus_client import generate_latest

    p, reg = setup_processor()
    rng = np.random.default_rng(5)
    live = [{"features": {"a": float(rng.normal())}, "prediction": float(rng.random()),
             "event_id": f"e{i}", "ts": 1000.0 + i} for i in range(3000)]
    cand = [{**e, "prediction": min(1.0, float(e["prediction"]) + 0.1), "shadow_of": "m"}
            for e in live]
    vals = [encode_envelope_rows(model, evs[i:i + 500]) for i in range(0, 3000, 500)
            for model, evs in (("m", live), ("m-candidate", cand))]
    out = p.process_columns("inf", vals, [3] * len(vals), list(range(len(vals))),
                            [0.0] * len(vals))
    assert out.dead_letters == [] and out.applied == 6000
    labels = [orjson.dumps({"model": model, "event_id": f"e{i}", "label": i % 3 == 0,
                            "ts": 1100.0 + i})
              for i in range(0, 3000, 2) for model in ("m", "m-candidate")]
    out = p.process_labels("lab", labels, [3] * len(labels), list(range(len(labels))),
                           [0.0] * len(labels))
    assert out.dead_letters == [] and out.labels_applied == 3000
    text = generate_latest(reg).decode()
    for model in ("m", "m-candidate"):
        assert f'driftline_labels_joined_total{{model="{model}"}} 1500.0' in text
    states = {st.model: st for st in p.models.values()}
    for model in ("m", "m-candidate"):
        joins = states[model].joins
        assert joins is not None and states[model].partition == 3
        assert (joins.counts.joined, joins.counts.unmatched, joins.counts.late) == (1500, 0, 0)
